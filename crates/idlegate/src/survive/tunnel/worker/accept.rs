//! A tunnel end's workers accepting its connections themselves (Linux; the entry's).
//!
//! Contract: an end gives its workers an [`Accepting`]: its listener (non-blocking), watched
//! by each worker's interest set with EPOLLEXCLUSIVE (`Interests::share`), so that a new
//! connection wakes one waiting worker, which takes the waiting connections (`accept4` with
//! SOCK_NONBLOCK, up to [`ACCEPTS_PER_ROUND`] before it turns its sessions, then again
//! before it waits) as sessions of its own, turned in the same round: no accept thread, no
//! wake through a worker's wake pair, no call on the socket after its accept (its options
//! come from the listener). At the end's session limit connections wait in the listen queue
//! and the worker looks again every [`LIMIT_CHECK`]; out of descriptors, every
//! [`STOP_CHECK`]. Once the end is stopping each worker lets the listener go.

use super::{Handle, Job, Worker};
use crate::survive::tunnel::Held;
use crate::sys::poll::STOP_CHECK;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The token of the listener an accepting worker shares (its kind, 6, is no socket's).
pub(super) const LISTEN: usize = usize::MAX - 1;
/// How many connections a worker accepts per round before it turns its sessions (it accepts
/// again before it next waits).
const ACCEPTS_PER_ROUND: usize = 64;
/// How soon a worker that stopped accepting at its end's session limit looks again.
const LIMIT_CHECK: Duration = Duration::from_millis(10);
/// A worker hands a new session to the one holding the fewest when that one holds fewer than
/// half as many as it, less this (see [`Worker::keep_or_hand_on`]): the workers' loads kept
/// within a factor of two without a wake per session while the counts are small.
const BALANCE_SLACK: usize = 8;
/// How often a worker at most says that its end reached its session limit.
const LIMIT_SAID_EVERY: Duration = Duration::from_secs(60);

/// What an end whose workers accept its connections gives them (Linux; the tunnel entry):
/// its listener, shared, and what makes each connection a session there.
pub(in crate::survive::tunnel) trait Accepting: Send + Sync {
    /// The listener (non-blocking), watched by every worker.
    fn listener(&self) -> &std::net::TcpListener;
    /// A place for one more session, unless the end holds its most (then new connections
    /// wait in the listen queue); given back when the job is dropped.
    fn reserve(&self) -> Option<Held>;
    /// The connection (accepted non-blocking) as a session for this worker.
    fn job(
        &self,
        app: std::net::TcpStream,
        peer: std::net::SocketAddr,
        place: Held,
    ) -> io::Result<Job>;
}

/// A worker's share of its end's accepting.
pub(super) struct Accept {
    pub(super) with: Arc<dyn Accepting>,
    /// When to accept even without the listener reporting (it reports only new connections):
    /// now after a round's worth, soon at the session limit or out of descriptors.
    pub(super) again: Option<Instant>,
    /// At the session limit.
    pub(super) at_limit: bool,
    /// When this worker last said it reached the limit (once a [`LIMIT_SAID_EVERY`] at
    /// most: an end near its limit with sessions ending and starting reaches it again and
    /// again).
    pub(super) limit_said: Option<Instant>,
    /// This worker's free legs, as it says them to the others before each wait.
    pub(super) free: Arc<AtomicUsize>,
    /// Every worker of its end (set once all have started).
    pub(super) all: Arc<OnceLock<Vec<Handle>>>,
}

impl Worker {
    /// When this worker accepts again without the listener reporting, if it does.
    pub(super) fn accept_again(&self) -> Option<Instant> {
        self.accept.as_ref().and_then(|a| a.again)
    }

    /// Accepts the connections waiting (up to [`ACCEPTS_PER_ROUND`]), each a session on this
    /// worker, turned in this round. Stops accepting for good once its end is stopping (the
    /// listener closes when the last worker lets it go).
    pub(super) fn accept(&mut self, now: Instant) {
        if self.stop.load(Ordering::Relaxed) {
            self.stop_accepting();
            return;
        }
        let Some(with) = self.accept.as_ref().map(|a| a.with.clone()) else {
            return;
        };
        let (again, at_limit) = self.accept_round(&*with, now);
        if let Some(accept) = self.accept.as_mut() {
            let said_lately = accept
                .limit_said
                .is_some_and(|at| now.saturating_duration_since(at) < LIMIT_SAID_EVERY);
            if at_limit && !accept.at_limit && !said_lately {
                tracing::warn!(
                    "tunnel entry: at its most sessions; new connections wait in the listen queue"
                );
                accept.limit_said = Some(now);
            }
            (accept.again, accept.at_limit) = (again, at_limit);
        }
    }

    /// One round of [`Worker::accept`]: when to accept again without the listener reporting,
    /// and whether it stopped at the session limit.
    fn accept_round(&mut self, with: &dyn Accepting, now: Instant) -> (Option<Instant>, bool) {
        for _ in 0..ACCEPTS_PER_ROUND {
            let Some(place) = with.reserve() else {
                return (Some(now + LIMIT_CHECK), true);
            };
            match crate::sys::socket::accept_nonblocking(with.listener()) {
                Ok((app, peer)) => match with.job(app, peer, place) {
                    Ok(job) => self.keep_or_hand_on(job),
                    Err(e) => tracing::warn!("tunnel entry: {peer} not taken: {e}"),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (None, false),
                Err(e) => match e.raw_os_error() {
                    Some(code) if crate::sys::errno::out_of_resources(code) => {
                        // The connection waits in the queue until descriptors are free.
                        tracing::warn!("tunnel entry: accept failed: {e}; retrying");
                        return (Some(now + STOP_CHECK), false);
                    }
                    // One connection's trouble (aborted before accept): the next may be fine.
                    Some(code) if crate::sys::errno::accept_retry_at_once(code) => {
                        tracing::debug!("tunnel entry: accept: {e}");
                    }
                    // What may fail the same way again (a security module's EPERM): no spin.
                    _ => {
                        tracing::warn!("tunnel entry: accept failed: {e}; retrying");
                        return (Some(now + STOP_CHECK), false);
                    }
                },
            }
        }
        // More may wait: taken before the next wait, which does not wait.
        (Some(now), false)
    }

    /// Keeps a session accepted here, unless another worker should carry it (one wake,
    /// through its bell): one with a free leg when this one has none, so that a session costs
    /// no handshake while a leg is free on another worker (sessions one after another find
    /// the one leg whichever worker the kernel woke for each); or the one holding the fewest
    /// when this one holds many more ([`BALANCE_SLACK`]), because the kernel wakes the
    /// workers of a shared listener in the order they joined, so a worker often waiting
    /// would otherwise take nearly every session.
    fn keep_or_hand_on(&mut self, job: Job) {
        let here = self.held.load(Ordering::Relaxed);
        let free_here = self.closer.pool.free_legs();
        let elsewhere = self.accept.as_ref().and_then(|a| {
            let others = || {
                a.all
                    .get()
                    .into_iter()
                    .flatten()
                    .filter(|h| !Arc::ptr_eq(&h.bell, &self.bell))
            };
            let loads = others().map(|h| {
                (
                    h.held.load(Ordering::Relaxed),
                    h.free.load(Ordering::Relaxed),
                )
            });
            carrier(here, free_here, loads).and_then(|i| others().nth(i).cloned())
        });
        if let Some(other) = elsewhere {
            match other.give(job) {
                Ok(()) => return,
                // That worker has ended: carried here.
                Err(job) => return self.keep(*job),
            }
        }
        self.keep(job);
    }

    fn keep(&mut self, job: Job) {
        self.held.fetch_add(1, Ordering::Relaxed);
        self.take(job);
    }

    /// Tells the other workers how many legs are free here (before each wait).
    pub(super) fn say_free(&self) {
        if let Some(a) = &self.accept {
            a.free
                .store(self.closer.pool.free_legs(), Ordering::Relaxed);
        }
    }

    /// Lets the shared listener go (its end is stopping): the listener closes when the last
    /// worker has, and the entry's connections still queued are refused with it.
    pub(super) fn stop_accepting(&mut self) {
        if let Some(accept) = self.accept.take() {
            let listener = crate::sys::socket::raw(accept.with.listener());
            if let Err(e) = self.interests.unshare(listener) {
                tracing::debug!("tunnel worker: no longer watching the listener: {e}");
            }
        }
    }
}

/// Which of the other workers (each as (sessions held, legs free), in order) should carry a
/// session accepted by one holding `here` sessions with `free_here` free legs, if any: the one
/// holding the fewest when it holds fewer than half as many, less [`BALANCE_SLACK`]; else, when
/// none is free here, the first with a free leg; else none (kept here).
fn carrier(
    here: usize,
    free_here: usize,
    others: impl Iterator<Item = (usize, usize)> + Clone,
) -> Option<usize> {
    let fewest = others
        .clone()
        .enumerate()
        .min_by_key(|&(_, (held, _))| held);
    match fewest {
        Some((i, (held, _))) if held + BALANCE_SLACK < here / 2 => Some(i),
        _ if free_here == 0 => others
            .enumerate()
            .find(|&(_, (_, free))| free > 0)
            .map(|(i, _)| i),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survive::tunnel::worker::Workers;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    /// Accepts for the workers' tests: records which thread took each connection; refuses
    /// to make it a session (so the job fails, and the connection is dropped); takes places
    /// only while `open`.
    struct Recording {
        listener: std::net::TcpListener,
        open: AtomicBool,
        held: Arc<AtomicUsize>,
        taken_by: Mutex<Vec<String>>,
    }

    impl Accepting for Recording {
        fn listener(&self) -> &std::net::TcpListener {
            &self.listener
        }
        fn reserve(&self) -> Option<Held> {
            self.open
                .load(Ordering::Relaxed)
                .then(|| Held::take(&self.held))
        }
        fn job(
            &self,
            _app: std::net::TcpStream,
            _peer: std::net::SocketAddr,
            _place: Held,
        ) -> io::Result<Job> {
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.taken_by.lock().unwrap().push(name);
            Err(io::Error::other("recorded"))
        }
    }

    fn recording(open: bool) -> (Arc<Recording>, std::net::SocketAddr) {
        let listener = crate::sys::socket::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let with = Arc::new(Recording {
            listener,
            open: AtomicBool::new(open),
            held: Arc::default(),
            taken_by: Mutex::default(),
        });
        (with, addr)
    }

    fn wait_for(within: Duration, done: impl Fn() -> bool) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        done()
    }

    #[test]
    fn workers_accept_concurrent_connections_themselves_each_on_one_worker_thread() {
        let (with, addr) = recording(true);
        let stop = Arc::new(AtomicBool::new(false));
        let _workers =
            Workers::start_accepting("acceptors", stop.clone(), Some(with.clone())).unwrap();
        const CLIENTS: usize = 200;
        let clients: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..CLIENTS / 4)
                        .map(|_| std::net::TcpStream::connect(addr).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let _clients: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        assert!(
            wait_for(Duration::from_secs(10), || with
                .taken_by
                .lock()
                .unwrap()
                .len()
                == CLIENTS),
            "{} of {CLIENTS} accepted",
            with.taken_by.lock().unwrap().len()
        );
        // Each by a worker, none by another thread (no accept thread between).
        let taken_by = with.taken_by.lock().unwrap().clone();
        assert!(
            taken_by.iter().all(|n| n.starts_with("acceptors worker ")),
            "{taken_by:?}"
        );
        stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn workers_at_their_ends_limit_leave_connections_queued_and_take_them_once_below_it() {
        let (with, addr) = recording(false);
        let stop = Arc::new(AtomicBool::new(false));
        let _workers =
            Workers::start_accepting("limited", stop.clone(), Some(with.clone())).unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        assert!(!wait_for(Duration::from_millis(300), || !with
            .taken_by
            .lock()
            .unwrap()
            .is_empty()));
        // Below the limit again: taken without a new connection to report it.
        with.open.store(true, Ordering::Relaxed);
        assert!(wait_for(Duration::from_secs(10), || with
            .taken_by
            .lock()
            .unwrap()
            .len()
            == 1));
        // Stopped: the workers let the listener go, and connections are no longer taken.
        stop.store(true, Ordering::Relaxed);
        assert!(wait_for(Duration::from_secs(10), || Arc::strong_count(
            &with
        ) == 1));
    }

    #[test]
    fn a_session_goes_to_a_free_leg_elsewhere_or_to_a_worker_holding_under_half_as_many() {
        // Kept: a free leg here, loads close.
        assert_eq!(carrier(10, 1, [(9, 0), (4, 3)].into_iter()), None);
        // No free leg here: the first worker with one.
        assert_eq!(carrier(10, 0, [(9, 0), (8, 2)].into_iter()), Some(1));
        assert_eq!(carrier(10, 0, [(9, 0)].into_iter()), None);
        // Far more here than the fewest (the kernel woke this one for nearly every
        // connection): the fewest, free leg or not.
        assert_eq!(carrier(100, 3, [(60, 1), (20, 0)].into_iter()), Some(1));
        assert_eq!(carrier(100, 3, [(60, 1), (42, 0)].into_iter()), None);
        // Few sessions: no hand-on for balance alone.
        assert_eq!(carrier(17, 1, [(0, 0)].into_iter()), None);
        assert_eq!(carrier(18, 1, [(0, 0)].into_iter()), Some(0));
    }
}
