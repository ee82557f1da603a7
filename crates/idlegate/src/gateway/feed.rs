//! The workers' events on their way to the HTTP API's thread (`--api`): every event a shard
//! makes is offered, with the instant of the worker's turn, to one bounded channel all workers
//! share, and the API thread is woken at most once per turn of a worker that offered any.
//!
//! Contract: a worker never blocks nor allocates for an event ([`Feed::offer`] is a
//! `try_send` into a channel whose buffer was allocated when it was made); when the API
//! thread falls behind, an event that does not fit is dropped and counted ([`Intake::lost`]),
//! and the API says so to its streams (`lagged`).

use idlegate_core::Event;
use mio::Waker;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

/// Events in flight between the workers and the API thread, all workers together.
pub(super) const FEED_CAPACITY: usize = 64 * 1024;

/// One event, and the instant of the turn it was made in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fed {
    pub(super) at: Instant,
    pub(super) event: Event,
}

/// A worker's end of the feed.
#[derive(Clone)]
pub(super) struct Feed {
    events: SyncSender<Fed>,
    /// The API server's waker.
    waker: Arc<Waker>,
    lost: Arc<AtomicU64>,
    /// Whether an event was offered since the last wake.
    offered: bool,
}

/// The API thread's end.
pub(super) struct Intake {
    pub(super) events: Receiver<Fed>,
    pub(super) lost: Arc<AtomicU64>,
}

/// A feed for the workers (clone one per worker) and its intake, waking `waker`.
pub(super) fn feed(waker: Arc<Waker>) -> (Feed, Intake) {
    feed_of(waker, FEED_CAPACITY)
}

/// [`feed`] holding at most `capacity` events in flight.
pub(super) fn feed_of(waker: Arc<Waker>, capacity: usize) -> (Feed, Intake) {
    let (events, received) = mpsc::sync_channel(capacity);
    let lost = Arc::new(AtomicU64::new(0));
    let feed = Feed {
        events,
        waker,
        lost: Arc::clone(&lost),
        offered: false,
    };
    (
        feed,
        Intake {
            events: received,
            lost,
        },
    )
}

impl Feed {
    /// Offers `event`, made at `at`; dropped and counted if the API thread is behind.
    pub(super) fn offer(&mut self, at: Instant, event: Event) {
        match self.events.try_send(Fed { at, event }) {
            Ok(()) => self.offered = true,
            Err(TrySendError::Full(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
            // The API thread has stopped (the gateway is stopping).
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Wakes the API thread if an event was offered since the last time.
    pub(super) fn wake(&mut self) {
        if std::mem::take(&mut self.offered) {
            let _ = self.waker.wake();
        }
    }
}

impl Intake {
    /// Events dropped so far because the API thread was behind.
    pub(super) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}
