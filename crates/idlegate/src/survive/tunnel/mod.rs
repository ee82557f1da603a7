//! The resumable tunnel of `idlegate relay`: an application's connection that outlives the
//! network path under it.
//!
//! Contract: the *entry* ([`Entry`], `--listen … --tunnel HOST:PORT`) accepts the
//! application's connections and opens a leg to the *exit* ([`Exit`], `--tunnel-listen …
//! --connect HOST:PORT`), which connects to the real server. Each application connection is a
//! [`session::Session`] with its own leg. When a leg is lost (reset, closed, or silent past
//! its heartbeat deadline), the entry opens a new one and resumes the session: each end sends
//! again exactly the bytes the other has not acknowledged, so the applications see no error
//! and no byte lost, doubled or reordered. A session that cannot resume within
//! `resume_within` is ended on both ends with a RST to the application (a FIN would claim the
//! stream ended whole). Legs are authenticated and encrypted ([`leg`]), with the pair's
//! pre-shared key or with per-peer key pairs (the exit then knows which listed entry each
//! session belongs to, and a session is resumed only by the peer that opened it); a resume
//! needs the session's id and its secret token, given only inside an encrypted leg. The
//! exit's [`gate`] holds connections without a thread each until they have said Hello. No
//! session has a thread: each end runs its sessions, their dials, handshakes and
//! cryptography on a few event-loop workers (`worker`, one per core, as the relay's), so a
//! session costs its sockets and buffers; on Linux the entry's workers also accept its
//! application connections, from its listener (which holds the options its accepted sockets
//! inherit), with no accept thread. A leg whose session ended whole carries the entry's
//! next session (the exit says Done on it first; see [`pool`]), so a short connection costs
//! no handshake when one ended lately.
//!
//! Several exits may share a key behind a load balancer; each holds its own sessions. The
//! entry dials again, until `resume_within`, when a dial reaches no exit, when an exit resets
//! or closes it before its answer (its [`gate`] does so under load, as to a wrong key), when
//! an exit is full or cannot reach its target (a new session), and when an exit does not know
//! the session it resumes (another may hold it) (`dial`). An exit that ended a session says
//! so ([`ended`]), and the entry stops at once.
//!
//! | module | what |
//! |---|---|
//! | [`stream`] | exactly-once bytes across broken legs, and the window (pure) |
//! | [`frame`] | the messages on a leg |
//! | [`key`] | key files: the pair's key, an end's key pair |
//! | [`peers`] | the exit's list of entries' public keys |
//! | [`leg`] | one authenticated, encrypted connection (Noise) |
//! | [`gate`] | the exit's accept: bounded, per source, until a Hello |
//! | [`session`] | one application connection on whichever leg is alive (a state machine) |
//! | `worker` | the event-loop workers that carry an end's sessions (a token per socket, ordered deadlines), and close legs in order |
//! | `dial` | the entry's legs, dialed without blocking: a new session's, and each resume's |
//! | `exit` | the exit's greeted legs: a new session (its target's connect on the worker), a resume |
//! | [`pool`] | the legs between two sessions: Done, the entry's free legs, the exit's idle ones |
//! | [`ended`] | the sessions an exit ended lately, for the entries that come back |

mod dial;
pub mod ended;
mod exit;
pub mod frame;
pub mod gate;
pub mod key;
pub mod leg;
pub mod peers;
pub mod pool;
pub mod session;
pub mod stream;
mod worker;

use crate::survive::endpoint::{endpoint_of, Endpoint};
use crate::survive::keepalive::Keepalive;
use crate::survive::stats::Stats;
#[cfg(not(target_os = "linux"))]
use crate::sys::socket::accept_until_stopped;
use anyhow::{Context, Result};
use ended::Ended;
use frame::{SessionId, Token};
use leg::{EntryKeys, ExitKeys, Leg, Peer, Responding};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use worker::{Bell, Workers};

/// The shortest heartbeat a tunnel takes (`--heartbeat`'s minimum): shorter ones would spend
/// the path on Ack frames and lose legs to a scheduling delay of three heartbeats.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// How a tunnel behaves; the same on both ends of a pair.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A heartbeat leaves when a leg has been quiet this long; three missed ones lose the leg.
    pub heartbeat: Duration,
    /// How long a session waits for a new leg before it ends.
    pub resume_within: Duration,
    /// The most unacknowledged bytes a session keeps per direction.
    pub replay_buffer: usize,
    /// TCP keepalive on the application's sockets.
    pub keepalive: Keepalive,
    /// The most sessions an end holds: the exit refuses more, the entry stops accepting
    /// application connections until one ends.
    pub max_sessions: usize,
}

impl Settings {
    /// Refuses settings a tunnel cannot run with: a heartbeat under [`MIN_HEARTBEAT`] (a zero
    /// one would spin), a replay buffer smaller than one frame (it would never send).
    pub fn check(&self) -> Result<()> {
        if self.heartbeat < MIN_HEARTBEAT {
            anyhow::bail!(
                "--heartbeat {:?}: at least {:?}",
                self.heartbeat,
                MIN_HEARTBEAT
            );
        }
        if self.replay_buffer < frame::MAX_DATA {
            anyhow::bail!(
                "tunnel replay buffer {} bytes: at least {} (one frame)",
                self.replay_buffer,
                frame::MAX_DATA
            );
        }
        Ok(())
    }

    /// How long a leg may go unheard.
    fn leg_timeout(&self) -> Duration {
        self.heartbeat * session::MISSED_HEARTBEATS
    }

    /// How long the exit may take to connect to its target for a new session; its answer
    /// (Welcome, or TargetUnreachable) has as long again to leave.
    fn target_connect_timeout(&self) -> Duration {
        self.leg_timeout().max(Duration::from_secs(1))
    }

    /// How long the entry gives one dial: the connect, then the handshake, the Hello and the
    /// exit's answer. Longer than the exit's [`Settings::target_connect_timeout`] by a leg
    /// timeout (the handshake's round trips, the gate, the exit's thread), so that an exit
    /// slow to reach its target answers before the entry gives up on the leg; else the entry
    /// would count a working exit as failed and the exit would hold a server connection for a
    /// leg already dead.
    fn dial_timeout(&self) -> Duration {
        self.target_connect_timeout() + self.leg_timeout().max(Duration::from_secs(1))
    }
}

pub use gate::MAX_PENDING;

/// The event-loop workers an end runs: one per core this process may run on, at least one.
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Descriptors an entry holds besides its sessions' two each (the application's socket and
/// its leg): the free legs its workers keep between sessions ([`pool::AT_ENTRY`] each).
pub fn entry_descriptors_besides_sessions() -> usize {
    pool::AT_ENTRY * workers()
}

/// Descriptors an exit holds besides its sessions' two each (the leg and the target's
/// socket): the connections its gate holds until their Hello ([`MAX_PENDING`]) and the idle
/// legs its workers keep between sessions ([`pool::AT_EXIT`] each).
pub fn exit_descriptors_besides_sessions() -> usize {
    MAX_PENDING + pool::AT_EXIT * workers()
}

/// The end next to the client application.
pub struct Entry {
    endpoint: Endpoint,
    tunnel: SocketAddr,
    keys: Arc<EntryKeys>,
    settings: Settings,
}

endpoint_of!(Entry);
endpoint_of!(Exit);

impl Entry {
    pub fn bind(
        listen: SocketAddr,
        tunnel: SocketAddr,
        keys: impl Into<EntryKeys>,
        settings: Settings,
    ) -> Result<Entry> {
        settings.check()?;
        let endpoint = Endpoint::bind(listen)?;
        // The application's sockets take their options from it where they inherit them.
        settings
            .keepalive
            .apply_relayed_listener(&endpoint.listener)
            .context("setting keepalive on the tunnel entry's listener")?;
        Ok(Entry {
            endpoint,
            tunnel,
            keys: Arc::new(keys.into()),
            settings,
        })
    }

    /// Accepts the application's connections and carries each through the tunnel, until
    /// stopped: each is a session on a `worker`, which dials for it. On Linux the workers
    /// accept, each from the shared listener ([`worker::Accepting`]), and this thread only
    /// waits for the stop flag; elsewhere this thread accepts and hands each connection to the
    /// worker holding the fewest sessions.
    pub fn run(&self) -> Result<()> {
        // Application connections taken and not yet ended, counted from the accept (a burst,
        // or an exit that cannot be reached, must not outrun the limit while legs dial).
        let held = Arc::new(AtomicUsize::new(0));
        let dial = Arc::new(dial::Dial {
            tunnel: self.tunnel,
            keys: self.keys.clone(),
            settings: self.settings.clone(),
        });
        #[cfg(target_os = "linux")]
        {
            self.endpoint.listener.set_nonblocking(true)?;
            let accepting = Arc::new(EntryAccept {
                listener: self.endpoint.listener.try_clone()?,
                held,
                max: self.settings.max_sessions,
                dial,
                stats: self.endpoint.stats.clone(),
            });
            let _workers = Workers::start_accepting(
                "tunnel entry",
                self.endpoint.stop.clone(),
                Some(accepting.clone()),
            )
            .context("starting the tunnel entry's workers")?;
            let check = crate::sys::poll::STOP_CHECK;
            while !self.endpoint.stop.load(Ordering::Relaxed) {
                std::thread::sleep(check);
            }
            // Each worker lets the listener go at its next round (within STOP_CHECK): once
            // they have, the port closes with the entry, as it did when a thread accepted.
            let since = std::time::Instant::now();
            while Arc::strong_count(&accepting) > 1 && since.elapsed() < check * 5 {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            let workers = Workers::start("tunnel entry", self.endpoint.stop.clone())
                .context("starting the tunnel entry's workers")?;
            Ok(accept_until_stopped(
                &self.endpoint.listener,
                &self.endpoint.stop,
                "tunnel entry",
                // At the session limit, new application connections wait in the listen queue.
                || held.load(Ordering::Relaxed) < self.settings.max_sessions,
                |app, peer| {
                    // Given back when the session ends, however it ends, or when it could not
                    // start.
                    let place = Held::take(&held);
                    dial.carry(app, peer, &self.endpoint.stats, &workers, place)
                },
            )?)
        }
    }
}

/// What a tunnel entry's workers accept with (Linux): its listener, its session limit, and
/// the dial each connection's session starts with.
#[cfg(target_os = "linux")]
struct EntryAccept {
    listener: std::net::TcpListener,
    held: Arc<AtomicUsize>,
    max: usize,
    dial: Arc<dial::Dial>,
    stats: Arc<Stats>,
}

#[cfg(target_os = "linux")]
impl worker::Accepting for EntryAccept {
    fn listener(&self) -> &std::net::TcpListener {
        &self.listener
    }

    fn reserve(&self) -> Option<Held> {
        Held::reserve(&self.held, self.max)
    }

    fn job(
        &self,
        app: std::net::TcpStream,
        peer: SocketAddr,
        place: Held,
    ) -> io::Result<worker::Job> {
        self.dial.job(app, peer, &self.stats, place)
    }
}

/// One place of a tunnel entry's session limit, taken from the accept; given back when
/// dropped.
struct Held(Arc<AtomicUsize>);

impl Held {
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    fn take(count: &Arc<AtomicUsize>) -> Held {
        count.fetch_add(1, Ordering::Relaxed);
        Held(count.clone())
    }

    /// A place unless `count` is at `max` already: exact however many workers take at once.
    #[cfg(target_os = "linux")]
    fn reserve(count: &Arc<AtomicUsize>, max: usize) -> Option<Held> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Held(count.clone()))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a session as no longer open when dropped.
struct Open(Arc<Stats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A session of the exit, as the acceptor of a new leg finds it.
struct Slot {
    token: Token,
    /// Who opened the session: only they may resume it.
    peer: Peer,
    /// Set when the peer was taken off the list: the session ends at its next step.
    revoked: AtomicBool,
    /// A new leg and the `received` of its Hello, waiting for the session to take it.
    offer: Mutex<Option<(Leg, u64)>>,
    /// Set by [`Slot::wake`]: something for this session; cleared when its worker looks.
    woken: AtomicBool,
    /// The bell of the worker that carries the session, and its place there. Never blocks:
    /// see [`Slot::wake`].
    bell: Arc<Bell>,
    place: Arc<AtomicUsize>,
}

impl Slot {
    /// A session's slot, woken through the bell of the worker that will carry it.
    fn new(token: Token, peer: Peer, bell: Arc<Bell>) -> Slot {
        Slot {
            token,
            peer,
            revoked: AtomicBool::new(false),
            offer: Mutex::new(None),
            woken: AtomicBool::new(false),
            bell,
            place: Arc::new(AtomicUsize::new(worker::NOWHERE)),
        }
    }

    /// Has the session's worker step it (the worker alone, not its other sessions). Never
    /// blocks (the gate's thread calls it): a wake already pending for the session (its flag
    /// set) is enough, and the worker's wake socket, when full, has a wake pending too. A
    /// session not yet on its worker is stepped when it arrives, and looks at its flags then.
    fn wake(&self) -> io::Result<()> {
        if self.woken.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.bell.ring(self.place.load(Ordering::Acquire))
    }
}

/// How many ended sessions an exit remembers per session it may hold (see [`ended`]).
const ENDED_PER_SESSION: usize = 10;
/// The fewest ended sessions an exit remembers.
const ENDED_AT_LEAST: usize = 100_000;

/// Whether `peer` is on the exit's peers list in force now (every holder of the pre-shared
/// key is).
fn still_listed(keys: &ExitKeys, peer: &Peer) -> bool {
    match (keys, peer.key()) {
        (ExitKeys::Peers { peers, .. }, Some(key)) => peers.list().name(&key).is_some(),
        (ExitKeys::Peers { .. }, None) => false,
        (ExitKeys::Psk(_), _) => true,
    }
}

/// The end next to the server.
pub struct Exit {
    endpoint: Endpoint,
    connect: SocketAddr,
    keys: Arc<ExitKeys>,
    settings: Settings,
    sessions: Arc<Mutex<HashMap<SessionId, Arc<Slot>>>>,
    ended: Arc<Mutex<Ended>>,
    /// Started by [`Exit::run`], with what serves the legs greeted.
    serving: OnceLock<Arc<exit::ExitLeg>>,
}

impl Exit {
    pub fn bind(
        listen: SocketAddr,
        connect: SocketAddr,
        keys: impl Into<ExitKeys>,
        settings: Settings,
    ) -> Result<Exit> {
        settings.check()?;
        let endpoint = Endpoint::bind(listen)?;
        let ended = Ended::new(
            settings.resume_within,
            settings
                .max_sessions
                .saturating_mul(ENDED_PER_SESSION)
                .max(ENDED_AT_LEAST),
        );
        Ok(Exit {
            endpoint,
            connect,
            keys: Arc::new(keys.into()),
            settings,
            sessions: Arc::default(),
            ended: Arc::new(Mutex::new(ended)),
            serving: OnceLock::new(),
        })
    }

    /// The ids of the sessions held now (for monitoring and tests).
    pub fn session_ids(&self) -> impl Fn() -> Vec<SessionId> + Send + 'static {
        let sessions = self.sessions.clone();
        move || {
            sessions
                .lock()
                .map(|s| s.keys().copied().collect())
                .unwrap_or_default()
        }
    }

    /// Accepts legs until stopped: each one is authenticated in the [`gate`], then starts a
    /// session (on a short-lived thread that connects to the target and says Welcome, then
    /// hands the session to a [`worker`]) or is offered to the session it resumes.
    pub fn run(&self) -> Result<()> {
        let workers = Workers::start("tunnel exit", self.endpoint.stop.clone())
            .context("starting the tunnel exit's workers")?;
        let _ = self.serving.set(Arc::new(exit::ExitLeg {
            workers: Arc::new(workers),
            connect: self.connect,
            keys: self.keys.clone(),
            settings: self.settings.clone(),
            stats: self.endpoint.stats.clone(),
            sessions: self.sessions.clone(),
            ended: self.ended.clone(),
        }));
        gate::run(&self.endpoint.listener, &self.endpoint.stop, self)?;
        Ok(())
    }

    /// Rereads the peers list if it is time; ends the sessions of peers taken off it.
    fn refresh_peers(&self) {
        let ExitKeys::Peers { peers, .. } = &*self.keys else {
            return;
        };
        match peers.refresh() {
            peers::Change::None => {}
            peers::Change::Refused(why) => tracing::error!("tunnel exit: --peers: {why}"),
            peers::Change::Replaced { revoked } => {
                let names: Vec<&str> = revoked.iter().map(|(_, name)| &**name).collect();
                tracing::info!(
                    "tunnel exit: {} reread: {} peers listed{}",
                    peers.path().display(),
                    peers.list().len(),
                    if names.is_empty() {
                        String::new()
                    } else {
                        format!("; revoked: {}", names.join(", "))
                    }
                );
                let Ok(sessions) = self.sessions.lock() else {
                    return;
                };
                for slot in sessions.values() {
                    let key = slot.peer.key();
                    if revoked.iter().any(|(k, _)| Some(*k) == key) {
                        slot.revoked.store(true, Ordering::Relaxed);
                        if let Err(e) = slot.wake() {
                            tracing::warn!("tunnel exit: waking a revoked session: {e}");
                        }
                    }
                }
            }
        }
    }
}

impl gate::Responder for Exit {
    fn responding(&self) -> Responding<'_> {
        self.keys.responding()
    }

    fn greeted(&self, greeted: gate::Greeted) {
        let Some(this) = self.serving.get() else {
            return;
        };
        let from = greeted.from;
        // Never blocks: a new session's connect is the worker's.
        if let Err(e) = this.serve(greeted) {
            tracing::info!("tunnel: leg from {from}: {e:#}");
        }
    }

    fn tick(&self) {
        self.refresh_peers();
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waking_a_session_never_blocks_however_many_wakes_pile_up() {
        // The gate's thread wakes sessions (a revoked peer); a worker busy elsewhere reads
        // none of them meanwhile. The socket's buffer fills after some 100,000 wakes.
        let (waker, wake_rx) = crate::sys::wake::pair().unwrap();
        let slot = Slot::new(Token([1; 32]), Peer::Psk, Arc::new(Bell::new(waker)));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..1_000_000 {
                slot.wake().unwrap();
            }
            let _ = done_tx.send(slot);
        });
        let slot = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a million wakes went through without blocking");
        // The worker still finds a wake pending, and the session's flag set; nothing is
        // pending after the worker has drained them.
        assert!(wake_rx.wait(Some(Duration::ZERO)).unwrap());
        assert!(slot.woken.load(Ordering::Acquire));
        wake_rx.drain();
        assert!(!wake_rx.wait(Some(Duration::ZERO)).unwrap());
    }

    #[test]
    fn heartbeats_under_the_minimum_are_refused_and_the_minimum_is_taken() {
        let with = |heartbeat| Settings {
            heartbeat,
            resume_within: Duration::from_secs(120),
            replay_buffer: 4 << 20,
            keepalive: Keepalive::parse("1s,1s,3").unwrap(),
            max_sessions: 10,
        };
        assert_eq!(MIN_HEARTBEAT, Duration::from_millis(100));
        let e = with(Duration::from_millis(99)).check().unwrap_err();
        assert_eq!(e.to_string(), "--heartbeat 99ms: at least 100ms");
        assert!(with(Duration::ZERO).check().is_err());
        with(MIN_HEARTBEAT).check().unwrap();
        with(Duration::from_secs(5)).check().unwrap();
    }

    #[test]
    fn the_entry_waits_for_a_welcome_longer_than_the_exit_may_take_to_reach_its_target() {
        for heartbeat_ms in [10, 100, 300, 1000, 5000] {
            let s = Settings {
                heartbeat: Duration::from_millis(heartbeat_ms),
                resume_within: Duration::from_secs(120),
                replay_buffer: 4 << 20,
                keepalive: Keepalive::parse("1s,1s,3").unwrap(),
                max_sessions: 10,
            };
            // The exit's clock starts after the handshake and the Hello; its answer may leave
            // a whole connect timeout later. The entry's clock started before the handshake.
            let margin = s.dial_timeout() - s.target_connect_timeout();
            assert!(
                margin >= s.leg_timeout() && margin >= Duration::from_secs(1),
                "heartbeat {heartbeat_ms}ms: the entry waits only {margin:?} past the exit's \
                 connect timeout {:?}",
                s.target_connect_timeout()
            );
        }
    }
}
