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
//! exit's [`gate`] holds connections without a thread each until they have said Hello.
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
//! | [`session`] | one application connection on whichever leg is alive |
//! | `dial` | the entry's legs: a new session's, and each resume's |
//! | [`ended`] | the sessions an exit ended lately, for the entries that come back |

mod dial;
pub mod ended;
pub mod frame;
pub mod gate;
pub mod key;
pub mod leg;
pub mod peers;
pub mod session;
pub mod stream;

use crate::survive::endpoint::{endpoint_of, Endpoint};
use crate::survive::keepalive::Keepalive;
use crate::survive::stats::Stats;
use crate::sys::socket::accept_until_stopped;
use crate::sys::wake::{self, Wakeable, Waker};
use anyhow::{Context, Result};
use ended::Ended;
use frame::{Frame, Refusal, SessionId, Token};
use leg::{EntryKeys, ExitKeys, Leg, Peer, Responding};
use session::{LegEnd, Session, Side};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream::StreamError;

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
        Ok(Entry {
            endpoint: Endpoint::bind(listen)?,
            tunnel,
            keys: Arc::new(keys.into()),
            settings,
        })
    }

    /// Accepts the application's connections and carries each through the tunnel, until
    /// stopped.
    pub fn run(&self) -> Result<()> {
        // Application connections taken and not yet ended, counted from the accept (a burst,
        // or an exit that cannot be reached, must not outrun the limit while legs dial).
        let held = Arc::new(AtomicUsize::new(0));
        Ok(accept_until_stopped(
            &self.endpoint.listener,
            &self.endpoint.stop,
            "tunnel entry",
            // At the session limit, new application connections wait in the listen queue.
            || held.load(Ordering::Relaxed) < self.settings.max_sessions,
            |app, peer| {
                let dial = dial::Dial {
                    tunnel: self.tunnel,
                    keys: self.keys.clone(),
                    settings: self.settings.clone(),
                };
                let stats = self.endpoint.stats.clone();
                // Given back when the session's thread ends, however it ends (a panic too),
                // or when it could not start (the closure is dropped).
                let place = Held::take(&held);
                std::thread::Builder::new()
                    .name(format!("tunnel {peer}"))
                    .spawn(move || {
                        let _place = place;
                        if let Err(e) = dial.carry(app, &stats) {
                            match crate::obs::report::hint_of(&e) {
                                Some(hint) => {
                                    tracing::info!("tunnel: {peer}: {e:#} (hint: {hint})")
                                }
                                None => tracing::info!("tunnel: {peer}: {e:#}"),
                            }
                        }
                    })
                    .map(drop)
            },
        )?)
    }
}

/// One place of a tunnel entry's session limit, taken from the accept; given back when
/// dropped.
struct Held(Arc<AtomicUsize>);

impl Held {
    fn take(count: &Arc<AtomicUsize>) -> Held {
        count.fetch_add(1, Ordering::Relaxed);
        Held(count.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a session as no longer open when dropped.
struct Open<'a>(&'a Arc<Stats>);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A session of the exit, as the acceptor of a new leg finds it.
struct Slot {
    token: Token,
    /// Who opened the session: only they may resume it.
    peer: Peer,
    /// Set when the peer was taken off the list: the session ends at its next wake.
    revoked: AtomicBool,
    /// A new leg and the `received` of its Hello, waiting for the session to take it.
    offer: Mutex<Option<(Leg, u64)>>,
    /// Never blocks: see [`Slot::wake`].
    waker: Waker,
}

impl Slot {
    /// A session's slot, and the end its thread watches for wakes.
    fn new(token: Token, peer: Peer) -> io::Result<(Slot, Wakeable)> {
        let (waker, wake_rx) = wake::pair()?;
        let slot = Slot {
            token,
            peer,
            revoked: AtomicBool::new(false),
            offer: Mutex::new(None),
            waker,
        };
        Ok((slot, wake_rx))
    }

    /// Wakes the session's thread. Never blocks (the gate's thread and the legs' threads call
    /// it): when wakes pile up unread one is pending already, and one is enough, since the
    /// session looks at its offer and its revoked flag each time it wakes.
    fn wake(&self) -> io::Result<()> {
        self.waker.wake()
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

    /// Accepts legs until stopped: each one is authenticated in the [`gate`], then starts or
    /// resumes a session on a thread of its own.
    pub fn run(&self) -> Result<()> {
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
        let this = ExitLeg {
            connect: self.connect,
            keys: self.keys.clone(),
            settings: self.settings.clone(),
            stats: self.endpoint.stats.clone(),
            sessions: self.sessions.clone(),
            ended: self.ended.clone(),
        };
        let from = greeted.from;
        let spawned = std::thread::Builder::new()
            .name(format!("tunnel leg {from}"))
            .spawn(move || {
                if let Err(e) = this.serve(greeted) {
                    tracing::info!("tunnel: leg from {from}: {e:#}");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("tunnel exit: no thread for {from}: {e}");
        }
    }

    fn tick(&self) {
        self.refresh_peers();
    }
}

/// What the exit needs to serve one leg.
struct ExitLeg {
    connect: SocketAddr,
    keys: Arc<ExitKeys>,
    settings: Settings,
    stats: Arc<Stats>,
    sessions: Arc<Mutex<HashMap<SessionId, Arc<Slot>>>>,
    ended: Arc<Mutex<Ended>>,
}

impl ExitLeg {
    /// Starts the session a greeted leg asks for, or hands the leg to the session it resumes
    /// (if that session is its peer's).
    fn serve(self, greeted: gate::Greeted) -> Result<()> {
        let gate::Greeted {
            mut leg,
            from,
            session,
            token,
            received,
        } = greeted;
        leg.go_blocking(self.settings.target_connect_timeout())?;
        if session == SessionId::NEW {
            return self.start(leg, from);
        }
        let slot = self
            .sessions
            .lock()
            .map_err(|_| anyhow::anyhow!("session table poisoned"))?
            .get(&session)
            .cloned();
        match slot {
            Some(slot) if slot.token.matches(&token) && slot.peer.key() == leg.peer().key() => {
                // The gate answered under the list in force then; the peer may have been
                // taken off it since. (If it was, the reread marks the session revoked too.)
                if !still_listed(&self.keys, &slot.peer) {
                    let _ = leg.send_now(&Frame::Refuse(Refusal::Ended));
                    anyhow::bail!(
                        "resume of session {session} refused: {} was taken off the peers list",
                        slot.peer
                    );
                }
                if let Ok(mut offer) = slot.offer.lock() {
                    *offer = Some((leg, received));
                }
                slot.wake().context("waking the session")?;
                Ok(())
            }
            _ => {
                // Not held here: ended here lately (said so), or unknown (another exit may
                // hold it).
                let refusal = self.ended.lock().map_or(Refusal::UnknownSession, |e| {
                    e.refusal(session, &token, Instant::now())
                });
                let _ = leg.send_now(&Frame::Refuse(refusal));
                anyhow::bail!("resume of session {session} refused: {refusal}");
            }
        }
    }

    /// A new session: connect to the target, welcome the entry, and carry it.
    fn start(self, mut leg: Leg, from: SocketAddr) -> Result<()> {
        let (id, token) = (SessionId(random()?), Token(random()?));
        let peer = leg.peer().clone();
        let tag = peer.tag();
        let (slot, wake_rx) = Slot::new(token, peer.clone())?;
        let slot = Arc::new(slot);
        {
            let mut sessions = self
                .sessions
                .lock()
                .map_err(|_| anyhow::anyhow!("session table poisoned"))?;
            // Checked with the table locked: a reread that takes the peer off the list after
            // this finds the session in the table and ends it; one before, and the peer gets
            // nothing (the gate answered it under the list in force then). Closed unanswered,
            // as the gate refuses a key it does not know.
            if !still_listed(&self.keys, &peer) {
                drop(sessions);
                drop(leg);
                anyhow::bail!("refused a new session: {peer} was taken off the peers list");
            }
            if sessions.len() >= self.settings.max_sessions {
                drop(sessions);
                let _ = leg.send_now(&Frame::Refuse(Refusal::Full));
                anyhow::bail!("refused a new session: {} held", self.settings.max_sessions);
            }
            sessions.insert(id, slot.clone());
        }
        let mut forget = Forget {
            sessions: &self.sessions,
            ended: &self.ended,
            id,
            token,
            welcomed: false,
            whole: false,
        };
        let app = TcpStream::connect_timeout(&self.connect, self.settings.target_connect_timeout());
        // The answer has its own deadline, however long the connect took.
        leg.go_blocking(self.settings.target_connect_timeout())?;
        let app = match app {
            Ok(app) => app,
            Err(e) => {
                let _ = leg.send_now(&Frame::Refuse(Refusal::TargetUnreachable));
                return Err(e).with_context(|| format!("connecting to {}", self.connect));
            }
        };
        let _ = self.settings.keepalive.apply_relayed(&app);
        leg.send_now(&Frame::Welcome {
            session: id,
            token,
            received: 0,
        })?;
        tracing::debug!("tunnel: session {id} opened for {peer} from {from}");
        forget.welcomed = true;
        leg.go_nonblocking()?;
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        let _open = Open(&self.stats);
        let mut s = Session::new(
            id,
            token,
            app,
            Side::Exit,
            self.settings.replay_buffer,
            self.settings.heartbeat,
            self.stats.clone(),
        )?;
        // While the session has no live leg: since when.
        let mut waiting: Option<Instant> = None;
        loop {
            if waiting.is_none() {
                match s.run_leg(&mut leg, Some(&wake_rx)) {
                    LegEnd::Done => {
                        forget.whole = true;
                        leg.close_in_order(self.settings.leg_timeout());
                        return Ok(());
                    }
                    LegEnd::AppReset | LegEnd::PeerReset => return Ok(()),
                    LegEnd::Violation(why) => {
                        anyhow::bail!("session {id}: the entry broke the protocol: {why}")
                    }
                    LegEnd::Replaced => {}
                    LegEnd::Lost(why) => {
                        tracing::info!(
                            "tunnel: session {id}{tag}: leg lost ({why}); waiting for the entry"
                        );
                        waiting = Some(Instant::now());
                    }
                }
            }
            let offer = match waiting {
                None => take_offer(&wake_rx, &slot),
                Some(since) => wait_for_offer(&wake_rx, &slot, since + self.settings.resume_within),
            };
            if slot.revoked.load(Ordering::Relaxed) {
                s.reset_app();
                if waiting.is_none() && leg.send(&Frame::Reset).is_ok() {
                    leg.close_in_order(self.settings.heartbeat);
                } else if let Some((mut new_leg, _)) = offer {
                    // Offered before the reread: told the session is over.
                    let _ = new_leg.send_now(&Frame::Refuse(Refusal::Ended));
                }
                self.stats.resets.fetch_add(1, Ordering::Relaxed);
                anyhow::bail!("session {id}: {peer} was taken off the peers list; session reset");
            }
            let Some((mut new_leg, received)) = offer else {
                if waiting.is_none() {
                    continue;
                }
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                anyhow::bail!(
                    "session {id}: not resumed within {:?}; the server's connection was reset",
                    self.settings.resume_within
                );
            };
            let replayed = match s.resume(received) {
                Ok(n) => n,
                // A leg the entry gave up on, overtaken by a newer one: drop it.
                Err(StreamError::ResumeBeforeAcked { .. }) => {
                    tracing::debug!("tunnel: session {id}: a stale leg dropped");
                    continue;
                }
                Err(e) => anyhow::bail!("session {id}: cannot resume: {e}"),
            };
            let welcomed = new_leg
                .send_now(&Frame::Welcome {
                    session: id,
                    token,
                    received: s.received(),
                })
                .and_then(|()| Ok(new_leg.go_nonblocking()?));
            if let Err(e) = welcomed {
                tracing::debug!("tunnel: session {id}: a new leg failed at once: {e}");
                waiting.get_or_insert_with(Instant::now);
                continue;
            }
            leg = new_leg;
            if let Some(since) = waiting.take() {
                tracing::info!(
                    "tunnel: session {id}{tag} resumed after {:.1?}; {replayed} bytes sent again",
                    since.elapsed()
                );
            } else {
                tracing::info!(
                    "tunnel: session {id} moved to a newer leg; {replayed} bytes sent again"
                );
            }
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Waits until `deadline` for a leg offered to the session.
fn wait_for_offer(wake_rx: &Wakeable, slot: &Slot, deadline: Instant) -> Option<(Leg, u64)> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        if wake_rx.wait(Some(left)).unwrap_or(false) {
            if let Some(offer) = take_offer(wake_rx, slot) {
                return Some(offer);
            }
            if slot.revoked.load(Ordering::Relaxed) {
                return None;
            }
        }
    }
}

/// The newest leg offered to a session, if any (older offers were replaced and closed).
fn take_offer(wake_rx: &Wakeable, slot: &Slot) -> Option<(Leg, u64)> {
    wake_rx.drain();
    slot.offer.lock().ok().and_then(|mut offer| offer.take())
}

/// Removes a session from the exit's table when its thread ends, however it ends, and notes
/// how it ended for an entry that comes to resume it (if the entry was told of it at all).
struct Forget<'a> {
    sessions: &'a Mutex<HashMap<SessionId, Arc<Slot>>>,
    ended: &'a Mutex<Ended>,
    id: SessionId,
    token: Token,
    /// The entry was given the id and token.
    welcomed: bool,
    /// Finished in order.
    whole: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(&self.id);
        }
        if !self.welcomed {
            return;
        }
        if let Ok(mut ended) = self.ended.lock() {
            ended.note(self.id, self.token, self.whole, Instant::now());
        }
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
        // The gate's thread wakes sessions (a revoked peer); a session thread busy elsewhere
        // reads none of them meanwhile. The socket's buffer fills after some 100,000 wakes.
        let (slot, wake_rx) = Slot::new(Token([1; 32]), Peer::Psk).unwrap();
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
        // The session still finds a wake pending, and nothing after it has drained them.
        assert!(wake_rx.wait(Some(Duration::ZERO)).unwrap());
        assert!(take_offer(&wake_rx, &slot).is_none());
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
