//! The legs between two sessions, on a worker: a leg whose session ended whole carries the
//! next one, as an HTTP/1.1 connection carries its next request, saving a connect and a Noise
//! handshake per session.
//!
//! Contract: one session per leg at a time, and the two ends agree the leg is free with an
//! exchange that leaves no doubt. The exit, once its session on a leg has ended whole (both
//! streams' bytes and FINs delivered and acknowledged), seals a Done frame on it and keeps it
//! idle ([`Pool::idle`]) until the entry's next Hello, which it serves as its gate serves one
//! after a handshake ([`Greeter`]); an Ack of the old session that arrives meanwhile is
//! dropped, anything else closes the leg. The entry, once its session ended whole, waits for
//! that Done ([`Pool::await_done`]; its session may have read it already: [`Pool::free`]),
//! and only then may a session take the leg ([`Pool::take`]) and send its Hello: no late frame
//! of the old session is ever read as the new one's. A leg that ended otherwise (a Reset, a
//! refusal, an error) never comes here. Bounds: the entry keeps at most [`AT_ENTRY`] legs per
//! worker, each free for at most [`KEEP_FREE`] (far below any middlebox's idle timeout, so
//! no heartbeat is needed) and never past [`MAX_AGE`] from its handshake (so keys still
//! change: sessions opened on one leg share its keys); it waits a leg timeout for a Done. The
//! exit keeps at most [`AT_EXIT`] idle legs per worker, each for [`IDLE_AT_EXIT`] (longer than
//! the entry keeps one, so the entry closes first) and none past [`MAX_AGE_AT_EXIT`] from its
//! handshake (so an entry that ignores the age limit does not keep one leg's keys forever),
//! and closes those of a peer taken off its list within [`LOOK_EVERY`]. Both ends count a
//! leg's age from the end of its handshake (the leg's, [`Leg::handshaken`]). A leg past its
//! time is closed in order; one full pool closes the newcomer in order. Nothing blocks: each leg is read when its socket reports, at its
//! deadline, and when it arrives (its buffer may hold frames already).

use super::frame::{Frame, SessionId, Token, MAX_PLAINTEXT};
use super::gate::Greeted;
use super::leg::{Filled, Leg, LegError, Peer};
use super::worker::Bell;
use crate::survive::stats::Stats;
use crate::sys::interest::Interests;
use slab::Slab;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the entry keeps a free leg for the next session.
pub const KEEP_FREE: Duration = Duration::from_secs(3);
/// How long after its handshake a leg may still be given a new session.
pub const MAX_AGE: Duration = Duration::from_secs(120);
/// How long the exit keeps an idle leg for the entry's next Hello: longer than [`KEEP_FREE`]
/// and the round trips before it, so that the entry, which knows when it is done with a leg,
/// closes first.
pub const IDLE_AT_EXIT: Duration = Duration::from_secs(10);
/// How long after its handshake the exit still keeps a leg for a next session: the entry's
/// [`MAX_AGE`] and a margin. The exit's handshake ends half a round trip before the entry's,
/// and the entry's last Hello takes another half to arrive: the margin covers both, so an
/// entry that stops using a leg at its own limit never finds it closed under that Hello.
pub const MAX_AGE_AT_EXIT: Duration = Duration::from_secs(120 + 10);
/// The most legs an entry's worker keeps between sessions (free, or waiting for a Done).
pub const AT_ENTRY: usize = 32;
/// The most idle legs an exit's worker keeps.
pub const AT_EXIT: usize = 256;
/// How long a leg between sessions is given to close in order.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);
/// How often the exit looks whether its idle legs' peers are still listed.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The exit's side of an idle leg: who serves its next Hello.
pub(super) trait Greeter: Send + Sync {
    /// A Hello on an idle leg: served as the gate's are, a new session on the worker `here`
    /// (the leg's).
    fn greeted(self: Arc<Self>, greeted: Greeted, here: &Arc<Bell>);
    /// Whether `peer` may still open sessions (on the peers list in force).
    fn keeps(&self, peer: &Peer) -> bool;
}

/// What a leg between sessions waits for.
enum Between {
    /// Entry: its session ended whole here; the exit's Done is awaited.
    AwaitingDone,
    /// Entry: free for the next session.
    Free,
    /// Exit: Done sent; the entry's next Hello is awaited.
    Idle {
        greeter: Arc<dyn Greeter>,
        from: SocketAddr,
    },
}

struct Pooled {
    leg: Leg,
    /// When its handshake was done.
    born: Instant,
    /// When it is closed if nothing came.
    until: Instant,
    between: Between,
    /// Acknowledgements of the session before read since it came here.
    late_acks: u32,
    stats: Arc<Stats>,
}

/// The most acknowledgements of the session before a leg takes between sessions; past them
/// it is closed. A few cross a Done legitimately (a heartbeat, a grant as the far application
/// reads its last bytes); a peer that keeps sending them would otherwise keep its worker
/// reading for as long as it likes.
const LATE_ACKS: u32 = 16;

impl Pooled {
    fn counts_free(&self) -> bool {
        !matches!(self.between, Between::AwaitingDone)
    }
}

/// The legs a worker keeps between sessions; each watched under a token of its own kind
/// (its key in the pool, see `super::worker`).
#[derive(Default)]
pub(super) struct Pool {
    legs: Slab<Pooled>,
    /// Entry: the free legs' keys, the most recently freed last (taken first, so that legs
    /// in use stay warm and the rest age out).
    free: Vec<usize>,
    /// Keys whose socket reported since the last turn, and those just added.
    due: Vec<usize>,
    /// Keys taken off since the last turn: their tokens are forgotten then.
    gone: Vec<usize>,
    /// When the exit next looks at its idle legs' peers.
    look_at: Option<Instant>,
    /// The earliest of the legs' deadlines (none earlier; perhaps one of a leg gone).
    earliest: Option<Instant>,
    /// A message opened (allocated at the first); also the worker's entry sessions' while
    /// they dial ([`Pool::scratch`]).
    plain: Vec<u8>,
    /// Legs not kept (the pool full, or too old): closed at the next turn.
    refused: Vec<Out>,
}

/// What a turn of the pool leaves to its caller.
pub(super) enum Out {
    /// Close in order within the duration.
    Close(Leg, Duration),
}

impl Pool {
    /// Entry: a leg whose session ended whole here; the exit's Done is awaited for `within`.
    /// Closed in order within that instead if it is too old to carry another session or the
    /// pool is full.
    pub(super) fn await_done(&mut self, leg: Leg, within: Duration, stats: &Arc<Stats>) {
        let now = Instant::now();
        let until = now + within;
        let born = leg.handshaken();
        self.add(leg, born, until, Between::AwaitingDone, stats, within);
    }

    /// Entry: a leg on which the exit said Done: free now (closed in order if too old, or
    /// the pool is full).
    pub(super) fn free(&mut self, leg: Leg, stats: &Arc<Stats>) {
        let now = Instant::now();
        let born = leg.handshaken();
        let until = (now + KEEP_FREE).min(born + MAX_AGE);
        self.add(leg, born, until, Between::Free, stats, CLOSE_WITHIN);
    }

    /// Exit: a leg on which Done is sealed; its next Hello goes to `greeter` (closed in order
    /// within `within` instead if the pool is full).
    pub(super) fn idle(
        &mut self,
        leg: Leg,
        greeter: Arc<dyn Greeter>,
        from: SocketAddr,
        stats: &Arc<Stats>,
        within: Duration,
    ) {
        let now = Instant::now();
        let born = leg.handshaken();
        let until = (now + IDLE_AT_EXIT).min(born + MAX_AGE_AT_EXIT);
        let between = Between::Idle { greeter, from };
        self.add(leg, born, until, between, stats, within);
    }

    fn add(
        &mut self,
        leg: Leg,
        born: Instant,
        until: Instant,
        between: Between,
        stats: &Arc<Stats>,
        or_close_within: Duration,
    ) {
        let (bound, max_age) = match between {
            Between::Idle { .. } => (AT_EXIT, MAX_AGE_AT_EXIT),
            _ => (AT_ENTRY, MAX_AGE),
        };
        if self.legs.len() >= bound || Instant::now() >= born + max_age {
            self.refused.push(Out::Close(leg, or_close_within));
            return;
        }
        // Between sessions: what its last session grew is given back (what it holds stays).
        let mut leg = leg;
        leg.trim();
        let pooled = Pooled {
            leg,
            born,
            until,
            between,
            late_acks: 0,
            stats: stats.clone(),
        };
        if pooled.counts_free() {
            stats.legs_free.fetch_add(1, Ordering::Relaxed);
        }
        let idle = matches!(pooled.between, Between::Idle { .. });
        self.earliest = Some(self.earliest.map_or(until, |e| e.min(until)));
        let key = self.legs.insert(pooled);
        if matches!(self.legs[key].between, Between::Free) {
            self.free.push(key);
        }
        if idle && self.look_at.is_none() {
            self.look_at = Some(Instant::now() + LOOK_EVERY);
        }
        // Its buffer may hold frames already: looked at in the next turn.
        self.due.push(key);
    }

    /// Exit: whether `leg`, given to [`Pool::idle`] now, would be kept (so that Done is said
    /// only on a leg that will wait for the next Hello).
    pub(super) fn would_idle(&self, leg: &Leg) -> bool {
        self.legs.len() < AT_EXIT && leg.handshaken().elapsed() < MAX_AGE_AT_EXIT
    }

    /// Entry: the most recently freed leg still free.
    pub(super) fn take(&mut self) -> Option<Leg> {
        let now = Instant::now();
        while let Some(key) = self.free.pop() {
            let ok = self
                .legs
                .get(key)
                .is_some_and(|p| matches!(p.between, Between::Free) && now < p.until);
            if ok {
                return Some(self.remove(key).leg);
            }
        }
        None
    }

    /// A buffer for one opened message, the worker's (allocated once).
    pub(super) fn scratch(&mut self) -> &mut [u8] {
        if self.plain.is_empty() {
            self.plain = vec![0; MAX_PLAINTEXT];
        }
        &mut self.plain
    }

    /// A leg's socket reported.
    pub(super) fn reported(&mut self, key: usize) {
        if let Some(p) = self.legs.get_mut(key) {
            p.leg.reported();
        }
        self.due.push(key);
    }

    /// Whether a turn is needed now: a socket reported, a leg came or went, or a deadline
    /// has come.
    pub(super) fn wants_turn(&self, now: Instant) -> bool {
        !self.due.is_empty()
            || !self.gone.is_empty()
            || !self.refused.is_empty()
            || self.next_deadline().is_some_and(|d| d <= now)
    }

    /// The earliest deadline: a leg's, or the next look at the exit's peers.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.earliest.into_iter().chain(self.look_at).min()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    /// Entry: how many legs are free (perhaps a few past their time, not yet taken off), for
    /// the workers that accept (Linux: `worker/accept.rs`).
    #[cfg(target_os = "linux")]
    pub(super) fn free_legs(&self) -> usize {
        self.free.len()
    }

    fn remove(&mut self, key: usize) -> Pooled {
        let p = self.legs.remove(key);
        if p.counts_free() {
            p.stats.legs_free.fetch_sub(1, Ordering::Relaxed);
        }
        self.gone.push(key);
        p
    }

    /// Looks at the legs that reported, arrived, or whose time has come; watches those kept.
    /// `token` makes a key's token; `here` is the worker's bell. Legs to close are handed back
    /// in `out`.
    pub(super) fn turn(
        &mut self,
        now: Instant,
        interests: &mut Interests,
        token: impl Fn(usize) -> usize,
        here: &Arc<Bell>,
        out: &mut Vec<Out>,
    ) {
        for key in self.gone.drain(..) {
            interests.forget(token(key));
        }
        out.append(&mut self.refused);
        let mut due = std::mem::take(&mut self.due);
        if self.earliest.is_some_and(|at| now >= at) {
            for (key, p) in &self.legs {
                if now >= p.until {
                    due.push(key);
                }
            }
        }
        if self.look_at.is_some_and(|at| now >= at) {
            self.look_at = None;
            for (key, p) in &self.legs {
                if let Between::Idle { greeter, .. } = &p.between {
                    if !greeter.keeps(p.leg.peer()) {
                        due.push(key);
                    }
                    self.look_at = Some(now + LOOK_EVERY);
                }
            }
        }
        due.sort_unstable();
        due.dedup();
        for &key in &due {
            if !self.legs.contains(key) {
                continue;
            }
            match self.look(key, now) {
                Keep::Yes => {
                    let p = &self.legs[key];
                    let write = p.leg.pending() > 0;
                    if let Err(e) = interests.set(token(key), p.leg.raw(), true, write) {
                        tracing::debug!("tunnel worker: watching a leg between sessions: {e}");
                        drop(self.remove(key));
                    }
                }
                Keep::Close(within) => {
                    let p = self.remove(key);
                    out.push(Out::Close(p.leg, within));
                }
                Keep::Drop(why) => {
                    tracing::debug!("tunnel: a leg between sessions dropped: {why}");
                    drop(self.remove(key));
                }
                Keep::Greeted(hello) => {
                    let p = self.remove(key);
                    // Its session may be carried by another worker (a resume's), which watches
                    // it then: this one no longer does.
                    let _ = interests.set(token(key), p.leg.raw(), false, false);
                    if let Between::Idle { greeter, from } = p.between {
                        p.stats.legs_reused.fetch_add(1, Ordering::Relaxed);
                        let greeted = Greeted {
                            leg: p.leg,
                            from,
                            session: hello.0,
                            token: hello.1,
                            received: hello.2,
                        };
                        greeter.greeted(greeted, here);
                    }
                }
            }
        }
        due.clear();
        self.due = due;
        // Before the worker waits: a leg dropped here is closed.
        for key in self.gone.drain(..) {
            interests.forget(token(key));
        }
        self.earliest = self.legs.iter().map(|(_, p)| p.until).min();
        if self.free.len() > 2 * AT_ENTRY {
            let legs = &self.legs;
            self.free.retain(|&k| {
                legs.get(k)
                    .is_some_and(|p| matches!(p.between, Between::Free))
            });
        }
    }

    /// Every leg, to close in order (the end is stopping).
    pub(super) fn drain(&mut self, out: &mut Vec<Out>) {
        let keys: Vec<usize> = self.legs.iter().map(|(k, _)| k).collect();
        for key in keys {
            let p = self.remove(key);
            out.push(Out::Close(p.leg, CLOSE_WITHIN));
        }
        self.free.clear();
        self.look_at = None;
        self.earliest = None;
    }

    /// Moves one leg on: writes what is sealed, reads what came.
    fn look(&mut self, key: usize, now: Instant) -> Keep {
        self.scratch();
        let p = &mut self.legs[key];
        if let Between::Idle { greeter, .. } = &p.between {
            if !greeter.keeps(p.leg.peer()) {
                return Keep::Drop("its peer was taken off the peers list".to_string());
            }
        }
        if now >= p.until {
            return Keep::Close(CLOSE_WITHIN);
        }
        if let Err(e) = p.leg.flush() {
            return Keep::Drop(e.to_string());
        }
        // A leg whose last read (its session's, most often) emptied its socket, and which has
        // not reported since, is not read: nothing is there (see `Leg::drained`); what comes
        // is reported (the leg is set under its token here before the worker waits, which
        // re-arms it). One that reported is read until its socket is empty.
        let read = !p.leg.drained();
        loop {
            loop {
                let n = match p.leg.next_frame(&mut self.plain) {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    Err(e) => return Keep::Drop(e.to_string()),
                };
                let frame = match Frame::decode(&self.plain[..n]) {
                    Ok(frame) => frame,
                    Err(e) => return Keep::Drop(LegError::from(e).to_string()),
                };
                match (&p.between, frame) {
                    // A late acknowledgement or heartbeat of the session that ended.
                    (Between::AwaitingDone | Between::Idle { .. }, Frame::Ack { .. }) => {
                        p.late_acks += 1;
                        if p.late_acks > LATE_ACKS {
                            return Keep::Close(CLOSE_WITHIN);
                        }
                    }
                    (Between::AwaitingDone, Frame::Done) => {
                        if now >= p.born + MAX_AGE {
                            return Keep::Close(CLOSE_WITHIN);
                        }
                        p.between = Between::Free;
                        p.until = (now + KEEP_FREE).min(p.born + MAX_AGE);
                        p.stats.legs_free.fetch_add(1, Ordering::Relaxed);
                        self.free.push(key);
                    }
                    (
                        Between::Idle { .. },
                        Frame::Hello {
                            session,
                            token,
                            received,
                        },
                    ) => return Keep::Greeted((session, token, received)),
                    // A Reset of the session that ended (its application failed after the
                    // end here), or a frame out of turn: the leg is not reused.
                    (_, other) => {
                        tracing::debug!("tunnel: a leg between sessions closed: {other:?}");
                        return Keep::Close(CLOSE_WITHIN);
                    }
                }
            }
            if !read {
                return Keep::Yes;
            }
            match p.leg.fill() {
                Ok(Filled::Bytes(_)) => {}
                Ok(Filled::WouldBlock) => return Keep::Yes,
                // The far end closed it: closed here too, in order.
                Ok(Filled::Eof) => return Keep::Close(CLOSE_WITHIN),
                Err(e) => return Keep::Drop(e.to_string()),
            }
        }
    }
}

/// What becomes of a leg looked at.
enum Keep {
    Yes,
    Close(Duration),
    Drop(String),
    /// A Hello on an idle leg: its session, token and `received`.
    Greeted((SessionId, Token, u64)),
}

#[cfg(test)]
mod tests {
    use super::super::key::Key;
    use super::super::leg::tests::pair;
    use super::*;
    use std::sync::Mutex;

    /// Legs over loopback: the initiator's end (as the entry holds it) and the responder's
    /// (as the exit does).
    fn legs(key: &Key) -> (Leg, Leg) {
        let (entry, exit) = pair(key, key);
        let (entry, exit) = (entry.unwrap(), exit.unwrap());
        // As a worker holds them.
        entry.socket().set_nonblocking(true).unwrap();
        exit.socket().set_nonblocking(true).unwrap();
        (entry, exit)
    }

    /// An exit's greeter that takes every peer and keeps the Hellos it is given.
    #[derive(Default)]
    struct Greets(Mutex<Vec<SessionId>>);

    impl Greeter for Greets {
        fn greeted(self: Arc<Self>, greeted: Greeted, _: &Arc<Bell>) {
            self.0.lock().unwrap().push(greeted.session);
        }
        fn keeps(&self, _: &Peer) -> bool {
            true
        }
    }

    struct Turns {
        interests: Interests,
        bell: Arc<Bell>,
        _woken: crate::sys::wake::Wakeable,
        closed: usize,
    }

    impl Turns {
        fn new() -> Turns {
            let (waker, woken) = crate::sys::wake::pair().unwrap();
            Turns {
                interests: Interests::new(16).unwrap(),
                bell: Arc::new(Bell::new(waker)),
                _woken: woken,
                closed: 0,
            }
        }

        /// Turns the pool, its legs' sockets waited on between turns, until `done` or 5 s.
        fn until(&mut self, pool: &mut Pool, mut done: impl FnMut(&Pool, usize) -> bool) {
            let give_up = Instant::now() + Duration::from_secs(5);
            let mut out = Vec::new();
            let mut seen = Vec::new();
            loop {
                pool.turn(
                    Instant::now(),
                    &mut self.interests,
                    |k| k,
                    &self.bell,
                    &mut out,
                );
                self.closed += out.drain(..).count();
                if done(pool, self.closed) {
                    return;
                }
                assert!(Instant::now() < give_up, "the pool did not get there");
                self.interests
                    .wait(Duration::from_millis(50), &mut seen)
                    .unwrap();
                for (token, _) in seen.drain(..) {
                    pool.reported(token);
                }
            }
        }
    }

    fn local_port(leg: &Leg) -> u16 {
        leg.socket()
            .local_addr()
            .unwrap()
            .as_socket()
            .unwrap()
            .port()
    }

    #[test]
    fn the_entry_takes_the_leg_freed_last_first_and_none_past_the_age_limit() {
        let key = Key::random().unwrap();
        let stats = Arc::new(Stats::default());
        let mut pool = Pool::default();
        let mut turns = Turns::new();
        let (a, _far_a) = legs(&key);
        let (b, _far_b) = legs(&key);
        let (old, _far_old) = legs(&key);
        let b_port = local_port(&b);
        pool.free(a, &stats);
        pool.free(b, &stats);
        pool.free(old.aged(MAX_AGE + Duration::from_secs(1)), &stats);
        turns.until(&mut pool, |_, closed| closed == 1);
        assert_eq!(
            stats.legs_free.load(Ordering::Relaxed),
            2,
            "the old leg is not kept"
        );
        let taken = pool.take().unwrap();
        assert_eq!(
            local_port(&taken),
            b_port,
            "the leg freed last is taken first"
        );
        assert_eq!(stats.legs_free.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_entry_worker_keeps_at_most_its_bound_of_free_legs_and_closes_the_rest_in_order() {
        let key = Key::random().unwrap();
        let stats = Arc::new(Stats::default());
        let mut pool = Pool::default();
        let mut turns = Turns::new();
        let mut far = Vec::new();
        for _ in 0..AT_ENTRY + 2 {
            let (leg, far_end) = legs(&key);
            far.push(far_end);
            pool.free(leg, &stats);
        }
        turns.until(&mut pool, |_, closed| closed == 2);
        assert_eq!(stats.legs_free.load(Ordering::Relaxed), AT_ENTRY as u64);
    }

    #[test]
    fn an_exit_keeps_no_idle_leg_older_than_its_age_limit() {
        let key = Key::random().unwrap();
        let stats = Arc::new(Stats::default());
        let greets = Arc::new(Greets::default());
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut pool = Pool::default();
        let mut turns = Turns::new();
        let (_far_young, young) = legs(&key);
        let (_far_old, old) = legs(&key);
        let old = old.aged(MAX_AGE_AT_EXIT);
        assert!(pool.would_idle(&young));
        assert!(
            !pool.would_idle(&old),
            "Done is not said on a leg too old to keep"
        );
        let within = Duration::from_secs(1);
        pool.idle(young, greets.clone(), from, &stats, within);
        pool.idle(old, greets.clone(), from, &stats, within);
        turns.until(&mut pool, |_, closed| closed == 1);
        assert_eq!(
            stats.legs_free.load(Ordering::Relaxed),
            1,
            "the young leg is kept"
        );
    }

    #[test]
    fn a_hello_on_an_idle_leg_goes_to_the_greeter_and_a_stream_of_late_acks_closes_one() {
        let key = Key::random().unwrap();
        let stats = Arc::new(Stats::default());
        let greets = Arc::new(Greets::default());
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut pool = Pool::default();
        let mut turns = Turns::new();
        let (mut entry_1, exit_1) = legs(&key);
        let (mut entry_2, exit_2) = legs(&key);
        let within = Duration::from_secs(1);
        pool.idle(exit_1, greets.clone(), from, &stats, within);
        pool.idle(exit_2, greets.clone(), from, &stats, within);
        // A few late acknowledgements cross a Done legitimately; then the next Hello.
        let ack = Frame::Ack {
            received: 1,
            limit: 1 << 20,
        };
        for _ in 0..3 {
            entry_1.send_now(&ack).unwrap();
        }
        let session = SessionId([7; 16]);
        let hello = Frame::Hello {
            session,
            token: Token::default(),
            received: 0,
        };
        entry_1.send_now(&hello).unwrap();
        // A peer that keeps sending them holds no worker reading.
        for _ in 0..=LATE_ACKS {
            entry_2.send_now(&ack).unwrap();
        }
        turns.until(&mut pool, |pool, closed| closed == 1 && pool.is_empty());
        assert_eq!(*greets.0.lock().unwrap(), vec![session]);
        assert_eq!(stats.legs_reused.load(Ordering::Relaxed), 1);
        assert_eq!(stats.legs_free.load(Ordering::Relaxed), 0);
    }
    #[test]
    fn a_leg_its_last_read_emptied_is_not_read_again_until_its_socket_reports() {
        let key = Key::random().unwrap();
        let stats = Arc::new(Stats::default());
        let mut pool = Pool::default();
        let mut turns = Turns::new();
        let (mut entry, mut exit) = legs(&key);
        // Its session's last read found the socket empty; the exit's Done comes after it.
        assert!(matches!(entry.fill().unwrap(), Filled::WouldBlock));
        exit.send_now(&Frame::Done).unwrap();
        pool.await_done(entry, Duration::from_secs(5), &stats);
        let mut out = Vec::new();
        pool.turn(
            Instant::now(),
            &mut turns.interests,
            |k| k,
            &turns.bell,
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(
            stats.legs_free.load(Ordering::Relaxed),
            0,
            "no read before its socket reported"
        );
        // It is watched: the Done is reported, read, and the leg is free.
        turns.until(&mut pool, |_, _| {
            stats.legs_free.load(Ordering::Relaxed) == 1
        });
    }
}
