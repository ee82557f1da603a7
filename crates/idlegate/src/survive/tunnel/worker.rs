//! The workers that carry a tunnel end's sessions: a few threads (one per core, as the
//! relay's), each running many sessions as state machines; no thread per session.
//!
//! Contract: [`Workers::start`] starts the threads; [`Workers::give`] hands one a session
//! (the one holding the fewest), never blocking. A worker waits on every socket of its
//! sessions at once (`sys::poll`: poll(2), WSAPoll on Windows; level-triggered, so a session
//! that reads one chunk per wake never misses bytes) and on its wake descriptor. A session on
//! a leg is turned ([`Session::turn`]) when one of its sockets reported or its own deadline
//! (a heartbeat, a silent leg, the stall watch) has come. What a session does without a leg
//! is its end's ([`Carried`]): the exit's connects to its target, then waits for a new leg
//! until `resume_within`; the entry's dials (connect, handshake, Hello, the exit's answer,
//! none of it blocking) with waits between dials: each is stepped when the socket it watches
//! reports, at its deadline, and at every wake of the worker (an exit's session offered a
//! new leg, or its peer revoked; cheap for the others). Sealing and opening frames, the
//! handshake's cryptography too, happen on the worker that owns the session. A leg that
//! ended in order (or after a Reset) is closed on the worker without blocking ([`Closer`]).
//! A worker ends once its end is stopped and it holds nothing.

use super::frame::Frame;
use super::leg::Leg;
use super::session::{LegEnd, Ready, Session, Wants};
use crate::sys::poll::{poll, Watch, STOP_CHECK};
use crate::sys::socket::Raw;
use crate::sys::wake::{self, Wakeable, Waker};
use slab::Slab;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an end does with its session around its legs.
pub(super) trait Carried: Send {
    /// The leg ended; a leg that may be closed in order goes to `closer`. Returns the
    /// session if it stays on the worker without a leg (for a new one); None when it is over
    /// (dropped: the application reset unless it ended in order).
    fn leg_ended(
        &mut self,
        s: Session,
        end: LegEnd,
        leg: Leg,
        closer: &mut Closer,
    ) -> Option<Session>;
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

/// A session and its end, as handed to a worker.
pub(super) struct Job {
    pub(super) session: Session,
    /// Its leg, if it has one yet.
    pub(super) leg: Option<Leg>,
    pub(super) carried: Box<dyn Carried>,
}

/// Legs being closed in order on a worker, without blocking: what is sealed is written, then
/// a FIN, then whatever the peer still sends is read until its FIN or the leg's deadline.
#[derive(Default)]
pub(super) struct Closer {
    legs: Vec<(Leg, Instant, bool)>,
}

impl Closer {
    /// Closes `leg` in order by `until`.
    pub(super) fn close(&mut self, leg: Leg, until: Instant) {
        self.legs.push((leg, until, false));
    }

    /// Moves every closing leg on; drops those done or past their deadline.
    fn turn(&mut self, now: Instant) {
        self.legs.retain_mut(|(leg, until, shut)| {
            if now >= *until || leg.flush().is_err() {
                return false;
            }
            if leg.pending() > 0 {
                return true;
            }
            if !*shut {
                *shut = true;
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
        });
    }
}

/// One session on a worker.
struct OnWorker {
    /// Always there but while its leg's end is handled.
    session: Option<Session>,
    leg: Option<Leg>,
    carried: Box<dyn Carried>,
    /// What the last turn or step asked for; None: turn it at the next round.
    wants: Option<Wants>,
}

/// The workers of one tunnel end.
pub(super) struct Workers {
    each: Vec<Handle>,
}

struct Handle {
    jobs: Sender<Job>,
    waker: Arc<Waker>,
    held: Arc<AtomicUsize>,
}

impl Workers {
    /// One worker per core (at least one); each ends once `stop` is set and it holds nothing.
    pub(super) fn start(name: &str, stop: Arc<AtomicBool>) -> io::Result<Workers> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut each = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::channel();
            let (waker, wakeable) = wake::pair()?;
            let held = Arc::new(AtomicUsize::new(0));
            let worker = Worker {
                jobs: rx,
                wakeable,
                stop: stop.clone(),
                held: held.clone(),
                sessions: Slab::new(),
                closer: Closer::default(),
                watches: Vec::new(),
                keys: Vec::new(),
                ready: Vec::new(),
                due: Vec::new(),
            };
            std::thread::Builder::new()
                .name(format!("{name} worker {i}"))
                .spawn(move || worker.run())?;
            each.push(Handle {
                jobs: tx,
                waker: Arc::new(waker),
                held,
            });
        }
        Ok(Workers { each })
    }

    /// The waker of the worker that holds the fewest sessions: an exit's session is woken
    /// through it, so it is known before the session is handed on ([`Workers::give`]).
    pub(super) fn next(&self) -> Option<Arc<Waker>> {
        self.each
            .iter()
            .min_by_key(|h| h.held.load(Ordering::Relaxed))
            .map(|h| h.waker.clone())
    }

    /// Hands `job` to the worker whose waker is `to` (from [`Workers::next`]); the job back
    /// if that worker has ended.
    pub(super) fn give(&self, to: &Arc<Waker>, job: Job) -> Result<(), Box<Job>> {
        let Some(h) = self.each.iter().find(|h| Arc::ptr_eq(&h.waker, to)) else {
            return Err(Box::new(job));
        };
        h.held.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::SendError(job)) = h.jobs.send(job) {
            h.held.fetch_sub(1, Ordering::Relaxed);
            return Err(Box::new(job));
        }
        let _ = h.waker.wake();
        Ok(())
    }
}

/// What a watch in a worker's poll set belongs to.
#[derive(Clone, Copy)]
enum Key {
    Wake,
    App(usize),
    Leg(usize),
    /// The socket a session without a leg watches (its end's: a dial, a connect).
    Own(usize),
    Closing,
}

struct Worker {
    jobs: Receiver<Job>,
    wakeable: Wakeable,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    sessions: Slab<OnWorker>,
    closer: Closer,
    /// Reused each round: the poll set and whose each watch is, the sessions whose sockets
    /// reported, the sessions to turn.
    watches: Vec<Watch>,
    keys: Vec<Key>,
    ready: Vec<(usize, Ready)>,
    due: Vec<usize>,
}

impl Worker {
    fn run(mut self) {
        let mut woken = true;
        loop {
            if woken {
                self.take_jobs();
            }
            // Turned: those whose sockets reported or that are new (no wants), those whose
            // deadline has come; then those the first turns put on a new leg, so that their
            // sockets are watched in the wait.
            for _ in 0..2 {
                let now = Instant::now();
                self.due.extend(
                    self.sessions
                        .iter()
                        .filter(|(_, h)| h.wants.is_none_or(|w| w.until <= now))
                        .map(|(key, _)| key),
                );
                let mut due = std::mem::take(&mut self.due);
                for key in due.drain(..) {
                    self.turn(key);
                }
                self.due = due;
            }
            self.closer.turn(Instant::now());
            if self.stop.load(Ordering::Relaxed)
                && self.sessions.is_empty()
                && self.closer.legs.is_empty()
            {
                // Jobs given since are dropped with the receiver: their applications reset.
                return;
            }
            let timeout = self
                .sessions
                .iter()
                .filter_map(|(_, h)| h.wants.map(|w| w.until))
                .min()
                .map_or(STOP_CHECK, |u| u.saturating_duration_since(Instant::now()))
                .min(STOP_CHECK);
            self.fill_watches();
            if let Err(e) = poll(&mut self.watches, Some(timeout)) {
                tracing::warn!("tunnel worker: poll: {e}");
                std::thread::sleep(STOP_CHECK);
            }
            woken = self.take_ready();
        }
    }

    /// Takes the jobs handed on, then steps every session: a wake may be for any of them.
    fn take_jobs(&mut self) {
        self.wakeable.drain();
        while let Ok(job) = self.jobs.try_recv() {
            let has_leg = job.leg.is_some();
            let key = self.sessions.insert(OnWorker {
                session: Some(job.session),
                leg: job.leg,
                carried: job.carried,
                wants: None,
            });
            if has_leg {
                self.attach(key);
            }
        }
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        due.extend(self.sessions.iter().map(|(key, _)| key));
        for key in due.drain(..) {
            self.step(key);
        }
        self.due = due;
    }

    /// Puts every socket to watch in the poll set.
    fn fill_watches(&mut self) {
        self.watches.clear();
        self.keys.clear();
        self.watches
            .push(Watch::new(self.wakeable.raw(), true, false));
        self.keys.push(Key::Wake);
        for (key, held) in self.sessions.iter() {
            let (Some(s), Some(w)) = (&held.session, held.wants) else {
                continue;
            };
            let Some(leg) = &held.leg else {
                if let (Some((socket, read, write)), _) = held.carried.watch(s) {
                    self.watches.push(Watch::new(socket, read, write));
                    self.keys.push(Key::Own(key));
                }
                continue;
            };
            if w.app_read || w.app_write {
                self.watches
                    .push(Watch::new(s.app_raw(), w.app_read, w.app_write));
                self.keys.push(Key::App(key));
            }
            self.watches.push(Watch::new(leg.raw(), true, w.leg_write));
            self.keys.push(Key::Leg(key));
        }
        for (leg, _, _) in &self.closer.legs {
            self.watches
                .push(Watch::new(leg.raw(), true, leg.pending() > 0));
            self.keys.push(Key::Closing);
        }
    }

    /// Reads what the poll reported: the sessions' sockets. Says whether the worker was
    /// woken.
    fn take_ready(&mut self) -> bool {
        let mut woken = false;
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        for (watch, key) in self.watches.iter().zip(&self.keys) {
            let r = watch.ready();
            if !r.any() {
                continue;
            }
            let (key, at) = match *key {
                Key::Wake => {
                    woken = true;
                    continue;
                }
                Key::Closing => continue,
                Key::App(key) => (
                    key,
                    Ready {
                        app: true,
                        app_hangup: r.hangup(),
                        leg: false,
                    },
                ),
                // Only bytes that arrive count as the peer alive (not the leg being writable).
                Key::Leg(key) => (
                    key,
                    Ready {
                        app: false,
                        app_hangup: false,
                        leg: r.beyond_writable(),
                    },
                ),
                Key::Own(key) => (key, Ready::default()),
            };
            // A session's watches are next to each other: one entry for all of them.
            match ready.last_mut().filter(|(k, _)| *k == key) {
                Some((_, r)) => {
                    r.app |= at.app;
                    r.app_hangup |= at.app_hangup;
                    r.leg |= at.leg;
                }
                None => ready.push((key, at)),
            }
        }
        for &(key, r) in &ready {
            let Some(held) = self.sessions.get_mut(key) else {
                continue;
            };
            // Turned (or stepped) at the next round.
            held.wants = None;
            let (Some(leg), Some(s)) = (held.leg.as_mut(), held.session.as_mut()) else {
                continue;
            };
            if let Some(end) = s.on_ready(leg, r) {
                self.ended(key, end);
            }
        }
        self.ready = ready;
        woken
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
        if let Some(end) = s.attach(leg) {
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
        match s.turn(leg) {
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
        let (Some(leg), Some(s)) = (held.leg.take(), held.session.take()) else {
            return;
        };
        held.wants = None;
        match held.carried.leg_ended(s, end, leg, &mut self.closer) {
            // Stepped at the next round.
            Some(s) => held.session = Some(s),
            None => self.drop_session(key),
        }
    }

    fn drop_session(&mut self, key: usize) {
        if self.sessions.try_remove(key).is_some() {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
