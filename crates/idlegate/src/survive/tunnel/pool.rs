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
//! the entry keeps one, so the entry closes first), and closes those of a peer taken off its
//! list within [`LOOK_EVERY`]. A leg past its time is closed in order; one full pool closes the
//! newcomer in order. Nothing blocks: each leg is read when its socket reports, at its
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
    /// Entry: a leg whose session ended whole here, handshaken at `born`; the exit's Done is
    /// awaited for `within`. Closed in order within that instead if it is too old to carry
    /// another session or the pool is full.
    pub(super) fn await_done(
        &mut self,
        leg: Leg,
        born: Instant,
        within: Duration,
        stats: &Arc<Stats>,
    ) {
        let now = Instant::now();
        let until = now + within;
        self.add(leg, born, until, Between::AwaitingDone, stats, within);
    }

    /// Entry: a leg on which the exit said Done: free now (closed in order if too old, or
    /// the pool is full).
    pub(super) fn free(&mut self, leg: Leg, born: Instant, stats: &Arc<Stats>) {
        let now = Instant::now();
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
        let between = Between::Idle { greeter, from };
        self.add(leg, now, now + IDLE_AT_EXIT, between, stats, within);
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
        let bound = match between {
            Between::Idle { .. } => AT_EXIT,
            _ => AT_ENTRY,
        };
        if self.legs.len() >= bound || Instant::now() >= born + MAX_AGE {
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

    /// Exit: whether a leg given to [`Pool::idle`] now would be kept (so that Done is said
    /// only on a leg that will wait for the next Hello).
    pub(super) fn has_room_to_idle(&self) -> bool {
        self.legs.len() < AT_EXIT
    }

    /// Entry: the most recently freed leg still free, and when its handshake was done.
    pub(super) fn take(&mut self) -> Option<(Leg, Instant)> {
        let now = Instant::now();
        while let Some(key) = self.free.pop() {
            let ok = self
                .legs
                .get(key)
                .is_some_and(|p| matches!(p.between, Between::Free) && now < p.until);
            if ok {
                let p = self.remove(key);
                return Some((p.leg, p.born));
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
