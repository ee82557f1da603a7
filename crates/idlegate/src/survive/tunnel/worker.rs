//! The workers that carry a tunnel end's sessions: a few threads (one per core, as the
//! relay's), each running many sessions as state machines; no thread per session.
//!
//! Contract: [`Workers::start`] starts the threads; [`Workers::give`] hands one a session
//! (the one holding the fewest), never blocking. A worker waits on its sessions' sockets
//! with `sys::interest` (mio, epoll, on Linux; WSAPoll on Windows): each socket has its own
//! token (a session's application, its leg, the socket it watches without a leg; a closing
//! leg's), and is watched only for what its session waits for, set again only when that
//! changes, when its session's read of it stopped at its budget (which re-arms it, so bytes
//! left are reported again), or, for what a session watches without a leg, when it reported.
//! The watch is edge-triggered on Linux: a session reads its application and its leg until a
//! read comes short (the socket is then empty: what comes after is a new report) or to the FIN
//! the report said had come, so a socket that reported needs no re-arm, and no read is spent
//! to find nothing; deadlines are in an ordered set of timers. A wake-up so costs what became
//! ready or due, not every session. A session on a leg is turned ([`Session::turn`]) when one
//! of its sockets reported or its own deadline (a heartbeat, a silent leg, the stall watch) has
//! come. What a session does without a leg is its end's ([`Carried`]): the exit's connects to
//! its target, then waits for a new leg until `resume_within`; the entry's dials (connect,
//! handshake, Hello, the exit's answer, none of it blocking) with waits between dials: each is
//! stepped when the socket it watches reports, at its deadline, and when its [`Bell`] is rung
//! for it (an exit's session offered a new leg, or its peer revoked). Sealing and opening
//! frames, the handshake's cryptography too, happen on the worker that owns the session. A
//! leg that ended in order (or after a Reset, or carrying an exit's refusal) is closed on the
//! worker without blocking, and a session that ended whole without a leg hands its last bytes
//! to its application there ([`Closer`]): nothing blocks a worker. A worker ends once its end
//! is stopped and it holds nothing.

use super::frame::Frame;
use super::leg::Leg;
use super::pool::{self, Pool};
use super::session::{LegEnd, Ready, Scratch, Session, Wants, LAST_WRITE};
use crate::sys::interest::{Interests, Seen};
use crate::sys::poll::STOP_CHECK;
use crate::sys::socket::Raw;
use crate::sys::wake::{self, Wakeable, Waker};
#[cfg(target_os = "linux")]
use accept::{Accept, LISTEN};
use slab::Slab;
use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
mod accept;
#[cfg(target_os = "linux")]
pub(super) use accept::Accepting;

/// A session's place on its worker before it has one (and after it left).
pub(super) const NOWHERE: usize = usize::MAX;
/// The token of a worker's wake socket.
const WAKE: usize = usize::MAX;
/// What a token's low bits say its socket is: a session's application, its leg, the socket it
/// watches without a leg; a closing leg (the rest of the token is then the closer's number for
/// it); a leg between sessions (its key in the [`Pool`]); else the session's key.
const APP: usize = 0;
const LEG: usize = 1;
const OWN: usize = 2;
const CLOSING: usize = 3;
const POOLED: usize = 4;
const KINDS: usize = 3;
/// How often a finishing session's last bytes are tried again (see [`Closer`]).
const WRITE_AGAIN: Duration = Duration::from_millis(10);
/// How many socket events a worker takes per wait.
const EVENTS: usize = 1024;

/// Wakes a worker for one of its sessions (or for new jobs), from any thread, never waiting
/// for the worker: the session's place goes on a list the worker reads at its next wake.
pub(super) struct Bell {
    waker: Waker,
    rung: Mutex<Vec<usize>>,
    /// The worker's thread, once it runs: a ring from there (its pool greeting a Hello on an
    /// idle leg, say) needs no wake, only a look before the worker next waits.
    owner: OnceLock<ThreadId>,
    /// Rung from the worker's own thread since it last looked.
    rung_within: AtomicBool,
}

impl Bell {
    pub(super) fn new(waker: Waker) -> Bell {
        Bell {
            waker,
            rung: Mutex::new(Vec::new()),
            owner: OnceLock::new(),
            rung_within: AtomicBool::new(false),
        }
    }

    /// Wakes the worker, which steps the session at `place` ([`NOWHERE`]: none; a session not
    /// yet on the worker is stepped when it arrives).
    pub(super) fn ring(&self, place: usize) -> io::Result<()> {
        if place != NOWHERE {
            if let Ok(mut rung) = self.rung.lock() {
                rung.push(place);
            }
        }
        if self.owner.get() == Some(&std::thread::current().id()) {
            // The worker is running (it rang): it looks before it waits.
            self.rung_within.store(true, Ordering::Relaxed);
            return Ok(());
        }
        self.waker.wake()
    }

    /// Whether the worker rang itself since it last looked (called on its thread).
    fn take_rung_within(&self) -> bool {
        self.rung_within.swap(false, Ordering::Relaxed)
    }
}

/// What an end does with its session around its legs.
pub(super) trait Carried: Send {
    /// The leg ended; a leg that may be closed in order goes to `closer`. Says whether the
    /// session stays on the worker without a leg (for a new one); if not, it is over (dropped:
    /// the application reset unless it ended in order, or handed to the closer while it
    /// finishes, see [`Session::finishing`]).
    fn leg_ended(&mut self, s: &mut Session, end: LegEnd, leg: Leg, closer: &mut Closer) -> bool;
    /// Moves on what the session does without a leg (a connect, a dial, a wait), or looks
    /// whether a live one (`live`) was offered a newer leg or must end. Called at every wake
    /// of the worker (so it must be cheap when nothing is for this session), when the socket
    /// of [`Carried::watch`] reported, and at its deadline.
    fn step(&mut self, s: &mut Session, live: bool, closer: &mut Closer) -> Woken;
    /// While the session has no leg: the socket to watch (for reading, for writing), if any,
    /// and when to step again at the latest.
    fn watch(&self, s: &Session) -> (Option<(Raw, bool, bool)>, Instant);
}

/// What a step brought a session.
pub(super) enum Woken {
    Nothing,
    /// A leg: the session moves to it (any old one is dropped).
    Leg(Box<Leg>),
    /// The session's streams were rewound for a new leg that then failed: it goes on without
    /// a leg (its old one, if any, is dropped).
    Wait,
    /// Over: drop it. With a duration: tell the peer on the live leg (a Reset frame), then
    /// close that leg in order within it.
    Over(Option<Duration>),
}

/// Legs being closed in order on a worker, without blocking: what is sealed is written, then
/// a FIN, then whatever the peer still sends is read until its FIN or the leg's deadline. And
/// sessions that ended whole without a leg, handing their last bytes to their application
/// ([`Session::write_last`]), tried again every [`WRITE_AGAIN`] (not watched: WSAPoll would
/// report the application's FIN, which has come, at every wait) until [`LAST_WRITE`], then
/// reset. And the legs kept between sessions ([`Pool`]), which a session may take.
#[derive(Default)]
pub(super) struct Closer {
    pub(super) pool: Pool,
    legs: Vec<Closing>,
    finishing: Vec<(Session, Instant)>,
    /// When the finishing sessions are tried again.
    write_again: Option<Instant>,
    /// The number the next closing leg's token carries.
    next: usize,
    /// Legs or sessions were added since the last turn.
    added: bool,
}

struct Closing {
    leg: Leg,
    until: Instant,
    shut: bool,
    token: usize,
}

impl Closer {
    /// Closes `leg` in order by `until`.
    pub(super) fn close(&mut self, leg: Leg, until: Instant) {
        let token = (self.next << KINDS) | CLOSING;
        // Never WAKE: the numbers wrap below it.
        self.next = (self.next + 1) % (NOWHERE >> (KINDS + 1));
        self.legs.push(Closing {
            leg,
            until,
            shut: false,
            token,
        });
        self.added = true;
    }

    /// Hands the application of a session that ended whole its last bytes by `until`.
    pub(super) fn finish(&mut self, s: Session, until: Instant) {
        self.finishing.push((s, until));
        self.added = true;
    }

    /// Nothing is being closed or kept.
    fn is_empty(&self) -> bool {
        self.legs.is_empty() && self.finishing.is_empty() && self.pool.is_empty()
    }

    /// The earliest deadline of a closing leg, or when the finishing sessions write again.
    fn next_deadline(&self) -> Option<Instant> {
        self.legs
            .iter()
            .map(|c| c.until)
            .chain(self.write_again)
            .min()
    }

    /// Moves the legs kept between sessions on (see [`Pool::turn`]), or closes them all if
    /// the end is stopping.
    fn turn_pool(
        &mut self,
        now: Instant,
        stopping: bool,
        interests: &mut Interests,
        here: &Arc<Bell>,
    ) {
        let mut out = Vec::new();
        if stopping {
            self.pool.drain(&mut out);
        }
        let token = |key| (key << KINDS) | POOLED;
        self.pool.turn(now, interests, token, here, &mut out);
        for pool::Out::Close(leg, within) in out {
            self.close(leg, now + within);
        }
    }

    /// Moves every closing leg on and watches it for what it waits for; drops those done or
    /// past their deadline. Tries the finishing sessions' writes again.
    fn turn(&mut self, now: Instant, interests: &mut Interests) {
        self.added = false;
        // Dropped unless still writing: one not ended in order resets its application.
        self.finishing
            .retain_mut(|(s, until)| now < *until && matches!(s.write_last(), Ok(false)));
        self.write_again = (!self.finishing.is_empty()).then(|| now + WRITE_AGAIN);
        self.legs.retain_mut(|c| {
            let keep = c.step(now);
            if keep {
                if let Err(e) = interests.set(c.token, c.leg.raw(), true, c.leg.pending() > 0) {
                    tracing::debug!("tunnel worker: watching a closing leg: {e}");
                    interests.forget(c.token);
                    return false;
                }
            } else {
                interests.forget(c.token);
            }
            keep
        });
    }
}

impl Closing {
    /// Says whether the leg is still closing.
    fn step(&mut self, now: Instant) -> bool {
        let leg = &mut self.leg;
        if now >= self.until || leg.flush().is_err() {
            return false;
        }
        if leg.pending() > 0 {
            return true;
        }
        if !self.shut {
            self.shut = true;
            let _ = leg.shutdown_write();
        }
        let mut sink = [0u8; 4096];
        loop {
            match leg.socket_read(&mut sink) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// A session and its end, as handed to a worker.
pub(super) struct Job {
    pub(super) session: Session,
    /// Its leg, if it has one yet.
    pub(super) leg: Option<Leg>,
    pub(super) carried: Box<dyn Carried>,
    /// Where the worker puts the session's place (its key), for its [`Bell`]; [`NOWHERE`]
    /// again once it is gone.
    pub(super) place: Option<Arc<AtomicUsize>>,
}

/// What one of a session's tokens watches: its socket, for reading, for writing.
type Watching = Option<(Raw, bool, bool)>;

/// One session on a worker.
struct OnWorker {
    /// Always there but while its leg's end is handled.
    session: Option<Session>,
    leg: Option<Leg>,
    carried: Box<dyn Carried>,
    /// What the last turn or step asked for; None: turn it at the next round.
    wants: Option<Wants>,
    /// Its deadline in the worker's timers.
    timer: Option<Instant>,
    /// What its application, leg and own tokens watch now.
    watching: [Watching; 3],
    /// Which of its tokens reported since they were last set (a bit per kind).
    fresh: u8,
    /// Its own token (a dial's socket) reported a FIN or an error since it was last set: a
    /// leg made of it is set anew (a re-arm reports it again), not handed over as it is.
    own_fin: bool,
    /// What its sockets reported, for the next turn.
    ready: Ready,
    /// In the worker's list of sessions to turn.
    queued: bool,
    place: Option<Arc<AtomicUsize>>,
}

/// The workers of one tunnel end.
pub(super) struct Workers {
    each: Vec<Handle>,
}

/// What a worker is handed.
enum Given {
    Job(Box<Job>),
    /// A leg to close in order within the duration (a refusal sealed in it).
    Close(Box<Leg>, Duration),
}

#[derive(Clone)]
struct Handle {
    jobs: Sender<Given>,
    bell: Arc<Bell>,
    held: Arc<AtomicUsize>,
    /// Its free legs, as it last said (only workers that accept say: see `accept`).
    #[cfg(target_os = "linux")]
    free: Arc<AtomicUsize>,
}

impl Handle {
    /// Hands `job` to this worker; the job back if it has ended.
    fn give(&self, job: Job) -> Result<(), Box<Job>> {
        self.held.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::SendError(given)) = self.jobs.send(Given::Job(Box::new(job))) {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return match given {
                Given::Job(job) => Err(job),
                Given::Close(..) => Ok(()),
            };
        }
        let _ = self.bell.ring(NOWHERE);
        Ok(())
    }
}

impl Workers {
    /// [`super::workers`] of them (one per core); each ends once `stop` is set and it holds
    /// nothing.
    pub(super) fn start(name: &str, stop: Arc<AtomicBool>) -> io::Result<Workers> {
        Workers::start_accepting(name, stop, None)
    }

    /// [`Workers::start`], each also accepting the end's connections from `accepting`'s
    /// listener (Linux): registered in each worker's interest set, each connection taken by
    /// whichever worker the kernel wakes, with one `accept4` (and an `accept4` that finds
    /// none at the end of a burst), no thread between.
    pub(super) fn start_accepting(
        name: &str,
        stop: Arc<AtomicBool>,
        #[cfg(target_os = "linux")] accepting: Option<Arc<dyn Accepting>>,
        #[cfg(not(target_os = "linux"))] accepting: Option<std::convert::Infallible>,
    ) -> io::Result<Workers> {
        let n = super::workers();
        let mut each = Vec::with_capacity(n);
        // Each accepting worker's view of the others (set once they have all started).
        #[cfg(target_os = "linux")]
        let all: Arc<OnceLock<Vec<Handle>>> = Arc::default();
        for i in 0..n {
            let (tx, rx) = mpsc::channel();
            let (waker, wakeable) = wake::pair()?;
            let bell = Arc::new(Bell::new(waker));
            let held = Arc::new(AtomicUsize::new(0));
            #[cfg(target_os = "linux")]
            let free = Arc::new(AtomicUsize::new(0));
            let mut interests = Interests::new(EVENTS)?;
            interests.set(WAKE, wakeable.raw(), true, false)?;
            #[cfg(target_os = "linux")]
            let accept = match &accepting {
                Some(with) => {
                    interests.share(LISTEN, crate::sys::socket::raw(with.listener()))?;
                    Some(Accept {
                        with: with.clone(),
                        again: Some(Instant::now()),
                        at_limit: false,
                        limit_said: None,
                        free: free.clone(),
                        all: all.clone(),
                    })
                }
                None => None,
            };
            #[cfg(not(target_os = "linux"))]
            let _ = &accepting;
            let worker = Worker {
                jobs: rx,
                wakeable,
                bell: bell.clone(),
                stop: stop.clone(),
                held: held.clone(),
                sessions: Slab::new(),
                closer: Closer::default(),
                interests,
                events: Vec::with_capacity(EVENTS),
                timers: BTreeSet::new(),
                due: Vec::new(),
                turning: Vec::new(),
                rung: Vec::new(),
                scratch: Scratch::new(),
                #[cfg(target_os = "linux")]
                accept,
            };
            std::thread::Builder::new()
                .name(format!("{name} worker {i}"))
                .spawn(move || worker.run())?;
            each.push(Handle {
                jobs: tx,
                bell,
                held,
                #[cfg(target_os = "linux")]
                free,
            });
        }
        #[cfg(target_os = "linux")]
        if accepting.is_some() {
            let _ = all.set(each.clone());
        }
        Ok(Workers { each })
    }

    /// The bell of the worker that holds the fewest sessions: an exit's session is woken
    /// through it, so it is known before the session is handed on ([`Workers::give`]).
    pub(super) fn next(&self) -> Option<Arc<Bell>> {
        self.each
            .iter()
            .min_by_key(|h| h.held.load(Ordering::Relaxed))
            .map(|h| h.bell.clone())
    }

    /// Hands `job` to the worker whose bell is `to` (from [`Workers::next`]); the job back if
    /// that worker has ended.
    pub(super) fn give(&self, to: &Arc<Bell>, job: Job) -> Result<(), Box<Job>> {
        let Some(h) = self.each.iter().find(|h| Arc::ptr_eq(&h.bell, to)) else {
            return Err(Box::new(job));
        };
        h.give(job)
    }

    /// Has a worker close `leg` in order within `within`, so that what is sealed in it (a
    /// refusal) arrives whole and before the FIN, never lost to a RST; never blocks. Dropped
    /// (reset) if every worker has ended.
    pub(super) fn close(&self, leg: Leg, within: Duration) {
        let Some(h) = self
            .each
            .iter()
            .min_by_key(|h| h.held.load(Ordering::Relaxed))
        else {
            return;
        };
        if h.jobs.send(Given::Close(Box::new(leg), within)).is_ok() {
            let _ = h.bell.ring(NOWHERE);
        }
    }
}

struct Worker {
    jobs: Receiver<Given>,
    wakeable: Wakeable,
    bell: Arc<Bell>,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    sessions: Slab<OnWorker>,
    closer: Closer,
    interests: Interests,
    /// Reused each round: what the wait reported.
    events: Vec<(usize, Seen)>,
    /// Each session's deadline, earliest first.
    timers: BTreeSet<(Instant, usize)>,
    /// The sessions to turn, and (swapped with it) those being turned; the places rung.
    due: Vec<usize>,
    turning: Vec<usize>,
    rung: Vec<usize>,
    /// What the session being turned uses only within its turn (sessions hold none).
    scratch: Scratch,
    /// Its share of its end's accepting, if its end's workers accept.
    #[cfg(target_os = "linux")]
    accept: Option<Accept>,
}

impl Worker {
    fn run(mut self) {
        let _ = self.bell.owner.set(std::thread::current().id());
        // Jobs or rings to take; and whether the wake pair reported (then it is drained).
        let (mut woken, mut wake_reported) = (true, true);
        let mut closing_reported = false;
        // The shared listener reported (Linux).
        #[cfg(target_os = "linux")]
        let mut listen_reported = false;
        loop {
            if woken {
                if wake_reported {
                    self.wakeable.drain();
                }
                self.take_jobs();
            }
            let now = Instant::now();
            #[cfg(target_os = "linux")]
            if listen_reported
                || self
                    .accept
                    .as_ref()
                    .and_then(|a| a.again)
                    .is_some_and(|at| at <= now)
            {
                self.accept(now);
            }
            while let Some(&(at, key)) = self.timers.first() {
                if at > now {
                    break;
                }
                self.timers.pop_first();
                if let Some(held) = self.sessions.get_mut(key) {
                    held.timer = None;
                }
                self.queue(key);
            }
            // Turned: those whose sockets reported, whose deadline has come, that are new;
            // then those the first turns put on a new leg, so that their sockets are watched
            // in the wait (any left are turned after a wait that does not wait).
            for _ in 0..2 {
                self.turn_due();
            }
            let now = Instant::now();
            let stopping = self.stop.load(Ordering::Relaxed);
            #[cfg(target_os = "linux")]
            if stopping {
                self.stop_accepting();
            }
            if self.closer.pool.wants_turn(now) || (stopping && !self.closer.pool.is_empty()) {
                self.closer
                    .turn_pool(now, stopping, &mut self.interests, &self.bell);
            }
            if closing_reported
                || self.closer.added
                || self.closer.next_deadline().is_some_and(|d| d <= now)
            {
                self.closer.turn(now, &mut self.interests);
            }
            if stopping && self.sessions.is_empty() && self.closer.is_empty() {
                // Jobs given since are dropped with the receiver: their applications reset.
                return;
            }
            let timeout = if self.due.is_empty() {
                self.timers
                    .first()
                    .map(|&(at, _)| at)
                    .into_iter()
                    .chain(self.closer.next_deadline())
                    .chain(self.closer.pool.next_deadline())
                    .chain(self.accept_again())
                    .min()
                    .map_or(STOP_CHECK, |at| at.saturating_duration_since(now))
                    .min(STOP_CHECK)
            } else {
                Duration::ZERO
            };
            #[cfg(target_os = "linux")]
            self.say_free();
            if self.bell.take_rung_within() {
                // Jobs this thread gave itself, or sessions it rang: taken without a wait.
                (woken, wake_reported) = (true, false);
                closing_reported = false;
                #[cfg(target_os = "linux")]
                {
                    listen_reported = false;
                }
                continue;
            }
            let mut events = std::mem::take(&mut self.events);
            if let Err(e) = self.interests.wait(timeout, &mut events) {
                tracing::warn!("tunnel worker: waiting on sockets: {e}");
                std::thread::sleep(STOP_CHECK);
            }
            (woken, wake_reported) = (false, false);
            closing_reported = false;
            #[cfg(target_os = "linux")]
            {
                listen_reported = false;
            }
            for &(token, seen) in &events {
                if token == WAKE {
                    (woken, wake_reported) = (true, true);
                    continue;
                }
                #[cfg(target_os = "linux")]
                if token == LISTEN {
                    listen_reported = true;
                    continue;
                }
                let (key, kind) = (token >> KINDS, token & ((1 << KINDS) - 1));
                if kind == CLOSING {
                    closing_reported = true;
                    continue;
                }
                if kind == POOLED {
                    self.closer.pool.reported(key);
                    continue;
                }
                let Some(held) = self.sessions.get_mut(key) else {
                    continue;
                };
                // A session on a leg watches nothing under its own token but the leg its dial
                // handed on (see `settle`); a report there from what the dial watched before
                // the session was settled on its leg costs a look at the leg.
                let kind = if kind == OWN && held.leg.is_some() {
                    LEG
                } else {
                    kind
                };
                // The application's and the leg's sockets are read until a read finds them
                // empty (or comes short) by their session, which says when it stopped before
                // (`Session::take_unread`): they need no re-arm. What the session's end
                // watches without a leg (a connect, a handshake) is set again.
                match kind {
                    APP => {
                        held.ready.app = true;
                        held.ready.app_hangup |= seen.hangup;
                        held.ready.app_fin |= seen.fin;
                    }
                    // Only bytes that arrive count as the peer alive (not the leg being
                    // writable).
                    LEG => {
                        held.ready.leg |= seen.readable;
                        held.ready.leg_fin |= seen.fin;
                    }
                    _ => {
                        held.fresh |= 1 << kind;
                        held.own_fin |= kind == OWN && seen.fin;
                    }
                }
                self.queue(key);
            }
            self.events = events;
        }
    }

    /// When this worker accepts again without the listener reporting: never where its
    /// workers do not accept.
    #[cfg(not(target_os = "linux"))]
    fn accept_again(&self) -> Option<Instant> {
        None
    }

    /// Puts a session on the list to turn (once).
    fn queue(&mut self, key: usize) {
        if let Some(held) = self.sessions.get_mut(key) {
            if !held.queued {
                held.queued = true;
                self.due.push(key);
            }
        }
    }

    /// Takes the jobs handed on, and steps the sessions whose bell was rung.
    fn take_jobs(&mut self) {
        while let Ok(given) = self.jobs.try_recv() {
            let job = match given {
                Given::Job(job) => *job,
                Given::Close(leg, within) => {
                    self.closer.close(*leg, Instant::now() + within);
                    continue;
                }
            };
            self.take(job);
        }
        let mut rung = std::mem::take(&mut self.rung);
        if let Ok(mut list) = self.bell.rung.lock() {
            std::mem::swap(&mut *list, &mut rung);
        }
        for key in rung.drain(..) {
            self.step(key);
            self.settle(key);
        }
        self.rung = rung;
    }

    /// Puts a session handed on (or accepted here) on this worker, to be turned this round.
    fn take(&mut self, job: Job) {
        {
            let has_leg = job.leg.is_some();
            let key = self.sessions.insert(OnWorker {
                session: Some(job.session),
                leg: job.leg,
                carried: job.carried,
                wants: None,
                timer: None,
                watching: [None; 3],
                fresh: 0,
                own_fin: false,
                ready: Ready::default(),
                queued: false,
                place: job.place,
            });
            if let Some(place) = self.sessions.get(key).and_then(|h| h.place.as_ref()) {
                place.store(key, Ordering::Release);
            }
            if has_leg {
                self.attach(key);
            }
            self.queue(key);
        }
    }

    /// Turns the sessions due, each with what its sockets reported; watches each for what
    /// it then waits for.
    fn turn_due(&mut self) {
        let mut turning = std::mem::take(&mut self.turning);
        std::mem::swap(&mut turning, &mut self.due);
        for key in turning.drain(..) {
            let Some(held) = self.sessions.get_mut(key) else {
                continue;
            };
            held.queued = false;
            let r = std::mem::take(&mut held.ready);
            if r.app || r.leg {
                // Turned now, whatever it waited for.
                held.wants = None;
                if let (Some(leg), Some(s)) = (held.leg.as_mut(), held.session.as_mut()) {
                    let end = s.on_ready(leg, r, &mut self.scratch);
                    // A read stopped at its budget: its socket is set again (re-armed), so
                    // that what is left is reported at the next wait.
                    let (app, leg) = s.take_unread();
                    held.fresh |= (u8::from(app) << APP) | (u8::from(leg) << LEG);
                    if let Some(end) = end {
                        self.ended(key, end);
                    }
                }
            }
            self.turn(key);
            self.settle(key);
        }
        self.turning = turning;
    }

    /// After a session was turned or stepped: watches its sockets for what it waits for
    /// (setting again those that reported, which re-arms them) and sets its deadline; one
    /// that asked for nothing yet (on a new leg) is turned again. One still to be turned
    /// (what its sockets reported not yet taken) is settled after that turn.
    fn settle(&mut self, key: usize) {
        let Some(held) = self.sessions.get_mut(key) else {
            return;
        };
        if held.queued {
            return;
        }
        let Some(w) = held.wants else {
            held.queued = true;
            self.due.push(key);
            return;
        };
        let want: [Watching; 3] = match (&held.leg, &held.session) {
            (Some(leg), Some(s)) => [
                (w.app_read || w.app_write).then(|| (s.app_raw(), w.app_read, w.app_write)),
                // The leg is always read.
                Some((leg.raw(), true, w.leg_write)),
                None,
            ],
            (None, Some(s)) => [None, None, held.carried.watch(s).0],
            _ => [None; 3],
        };
        // The socket the session's dial watched became its leg, watched for the same and
        // emptied by its last read: it stays in the set as it is, no `epoll_ctl`; its reports
        // still come under the dial's token and are the leg's (see `run`). (A leg its dial
        // did not empty, or whose FIN or error was reported to the dial (its reader stopped at
        // the frame it waited for, and no new report follows), is set under its own token,
        // which re-arms it.)
        let drained = held.leg.as_ref().is_some_and(Leg::drained);
        if drained
            && !held.own_fin
            && want[LEG].is_some()
            && want[OWN].is_none()
            && held.watching[LEG].is_none()
            && held.watching[OWN] == want[LEG]
        {
            self.interests
                .hand_over((key << KINDS) | OWN, (key << KINDS) | LEG);
            held.watching[LEG] = want[LEG];
            held.watching[OWN] = None;
        }
        let app_raw = held.session.as_ref().map(|s| s.app_raw());
        // An application that finished writing, on a leg, stays in the set (it reports
        // nothing more but an error) until it is closed: no `epoll_ctl` to take it out.
        let app_stays =
            held.leg.is_some() && held.session.as_ref().is_some_and(|s| s.app_finished());
        for kind in [APP, LEG, OWN] {
            let token = (key << KINDS) | kind;
            let (was, now) = (held.watching[kind], want[kind]);
            let fresh = held.fresh & (1 << kind) != 0;
            match (was, now) {
                (_, Some((raw, read, write))) if was != now || fresh => {
                    if let Err(e) = self.interests.set(token, raw, read, write) {
                        tracing::warn!("tunnel worker: watching a socket: {e}");
                    }
                }
                (Some((raw, _, _)), None) => {
                    // The application's socket (the exit's connect, too) stays open: it is
                    // no longer watched unless another token watches it now. A leg's or a
                    // dial's socket was dropped or handed on (to a closer, to the leg).
                    let elsewhere = want.iter().flatten().any(|&(r, _, _)| r == raw);
                    if Some(raw) == app_raw && !elsewhere && !(kind == APP && app_stays) {
                        let _ = self.interests.set(token, raw, false, false);
                    }
                    self.interests.forget(token);
                }
                _ => {}
            }
        }
        held.watching = want;
        held.fresh = 0;
        held.own_fin = false;
        // A deadline only moves earlier: one that comes before it is needed costs a turn
        // that finds nothing due and asks again, and most turns (a frame that left, bytes
        // that arrived) only push the deadline later, which then costs nothing here.
        match held.timer {
            Some(at) if at <= w.until => {}
            old => {
                if let Some(at) = old {
                    self.timers.remove(&(at, key));
                }
                self.timers.insert((w.until, key));
                held.timer = Some(w.until);
            }
        }
    }

    /// Puts a session on its (new) leg.
    fn attach(&mut self, key: usize) {
        let Some(held) = self.sessions.get_mut(key) else {
            return;
        };
        held.wants = None;
        let (Some(leg), Some(s)) = (held.leg.as_mut(), held.session.as_mut()) else {
            return;
        };
        // The entry's application is read at its first turn on the leg: bytes that came
        // while it had none (a client's first request) leave with the first frames, not a
        // wait later. The exit's is reported when it is watched (see
        // `Session::reads_app_at_attach`).
        held.ready.app = s.reads_app_at_attach();
        if let Some(end) = s.attach(leg, &mut self.scratch) {
            self.ended(key, end);
        }
    }

    /// Turns a session on its leg, or steps one without.
    fn turn(&mut self, key: usize) {
        let Some(held) = self.sessions.get_mut(key) else {
            return;
        };
        let (Some(leg), Some(s)) = (held.leg.as_mut(), held.session.as_mut()) else {
            self.step(key);
            return;
        };
        match s.turn(leg, &mut self.scratch) {
            Ok(wants) => held.wants = Some(wants),
            Err(end) => self.ended(key, end),
        }
    }

    /// Steps what the session's end does (see [`Carried::step`]).
    fn step(&mut self, key: usize) {
        let Some(held) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(s) = held.session.as_mut() else {
            return;
        };
        let live = held.leg.is_some();
        match held.carried.step(s, live, &mut self.closer) {
            Woken::Nothing => {
                if !live {
                    let (_, until) = held.carried.watch(s);
                    held.wants = Some(Wants {
                        app_read: false,
                        app_write: false,
                        leg_write: false,
                        until,
                    });
                }
            }
            Woken::Leg(leg) => {
                held.leg = Some(*leg);
                self.attach(key);
            }
            Woken::Wait => {
                held.leg = None;
                held.wants = None;
            }
            Woken::Over(tell) => {
                if let (Some(within), Some(mut leg)) = (tell, held.leg.take()) {
                    if leg.send(&Frame::Reset).is_ok() {
                        self.closer.close(leg, Instant::now() + within);
                    }
                }
                self.drop_session(key);
            }
        }
    }

    /// The session's leg ended: its end says what follows.
    fn ended(&mut self, key: usize, end: LegEnd) {
        let Some(held) = self.sessions.get_mut(key) else {
            return;
        };
        let (Some(leg), Some(s)) = (held.leg.take(), held.session.as_mut()) else {
            return;
        };
        held.wants = None;
        // If it stays, it is stepped at the next round.
        if !held.carried.leg_ended(s, end, leg, &mut self.closer) {
            self.drop_session(key);
        }
    }

    fn drop_session(&mut self, key: usize) {
        let Some(mut held) = self.sessions.try_remove(key) else {
            return;
        };
        self.held.fetch_sub(1, Ordering::Relaxed);
        if let Some(leg) = &held.leg {
            self.interests.closing(leg.raw());
        }
        match held.session.take() {
            Some(s) if s.finishing() => {
                // No longer watched under its key, which a new session may take.
                let _ = self
                    .interests
                    .set((key << KINDS) | APP, s.app_raw(), false, false);
                self.closer.finish(s, Instant::now() + LAST_WRITE);
            }
            // Closed as it is dropped: watched or not (see `settle`), it leaves the set then.
            Some(s) => self.interests.closing(s.app_raw()),
            None => {}
        }
        if let Some(at) = held.timer {
            self.timers.remove(&(at, key));
        }
        for kind in [APP, LEG, OWN] {
            if held.watching[kind].is_some() {
                self.interests.forget((key << KINDS) | kind);
            }
        }
        if let Some(place) = &held.place {
            place.store(NOWHERE, Ordering::Release);
        }
        // A key queued to turn or rung may be taken by a new session meanwhile: it is then
        // turned once more than it needed, which costs a look.
        if held.queued {
            self.due.retain(|&k| k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_rings_its_own_bell_is_not_woken_through_the_pair_and_another_thread_wakes_it()
    {
        let (waker, wakeable) = wake::pair().unwrap();
        let bell = Arc::new(Bell::new(waker));
        bell.owner.set(std::thread::current().id()).unwrap();
        // From the worker's own thread: noted for its next look, nothing through the pair.
        bell.ring(5).unwrap();
        assert!(!wakeable.wait(Some(Duration::ZERO)).unwrap());
        assert!(bell.take_rung_within());
        assert!(!bell.take_rung_within(), "taken once");
        // From another thread: woken.
        let other = bell.clone();
        std::thread::spawn(move || other.ring(6).unwrap())
            .join()
            .unwrap();
        assert!(wakeable.wait(Some(Duration::from_secs(5))).unwrap());
        assert!(!bell.take_rung_within());
        wakeable.drain();
        assert!(!wakeable.wait(Some(Duration::ZERO)).unwrap(), "drained");
        assert_eq!(*bell.rung.lock().unwrap(), [5, 6]);
    }
}
