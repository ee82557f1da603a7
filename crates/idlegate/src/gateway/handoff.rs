//! How workers reach each other: every worker has a [`Contact`] (the senders of its bounded
//! channels and its waker, which anyone may hold) and a [`Mailbox`] (their receivers, which it
//! alone holds).
//!
//! A packet read by a worker that does not own its flow is copied into a buffer from that
//! worker's bounded pool and sent to the owner's contact ([`Handoff::lend`]); the owner
//! forwards it and sends the buffer back ([`Handoff::give_back`]), and the lender takes it into
//! its pool again ([`Handoff::take_spares`]). At most [`HANDOFF_LIMIT`] buffers are out per
//! worker: past it a packet read by the wrong worker is dropped and counted, so a flood of new
//! flows cannot grow the pools. The channels hold as many entries as can ever be in flight,
//! so sending never blocks nor fails while the owner runs, and nothing is allocated per
//! message once the pool is warm. The serving threads' questions ([`Query`]) come the same way (the API's too: flows, counters,
//! expiry, a rule's idle settings changed).

use crate::gateway::control::FlowRow;
use crate::gateway::metrics::{DeviceCounters, Snapshot};
use crate::sys::tun::Received;
use anyhow::{Context, Result};
use idlegate_core::Interface;
use mio::{Poll, Token, Waker};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;

/// Packets a worker may have handed over and not yet got back: about what a device's own
/// transmit queue holds (1,000). Past it, a packet read by the wrong worker is dropped and
/// counted (a flood of new flows cannot grow the pools).
pub(super) const HANDOFF_LIMIT: usize = 1024;

/// The token of a worker's waker in its event loop.
pub(super) const WAKER: Token = Token(usize::MAX);

/// A packet one worker read for another: its frame, as read, and who to give the buffer back
/// to.
pub(super) struct Handover {
    pub(super) interface: Interface,
    pub(super) received: Received,
    pub(super) frame: Vec<u8>,
    pub(super) from: usize,
}

/// A question from the control socket, the metrics or the API to one worker.
pub(super) enum Query {
    /// Its flows: all of them, or with a limit at most that many, the soonest to expire.
    Flows {
        limit: Option<usize>,
    },
    Expire(Option<String>),
    Snapshot,
    /// Run these rules' idle settings from now on, the change alone
    /// ([`idlegate_core::Engine::retime`]).
    Retime(Arc<[idlegate_core::Retiming]>),
}

/// A worker's answer to a [`Query`].
pub(super) enum Answer {
    /// The rows asked for, sorted by how soon they expire when a limit was given, and how
    /// many flows the shard holds.
    Flows {
        rows: Vec<FlowRow>,
        count: usize,
    },
    Expired(usize),
    Snapshot(Box<Snapshot>),
    Retimed,
}

/// How to reach one worker. The bounded channels hold as many entries as can ever be in flight
/// (each worker lends at most [`HANDOFF_LIMIT`] buffers), so sending never blocks nor fails
/// while the worker runs, and nothing is allocated per message.
#[derive(Clone)]
pub(super) struct Contact {
    /// Packets handed over to it.
    pub(super) packets: SyncSender<Handover>,
    /// Buffers of the packets it handed over, back for reuse.
    pub(super) spares: SyncSender<Vec<u8>>,
    /// Questions from the control socket and the metrics, with where to answer.
    pub(super) queries: Sender<(Query, Sender<Answer>)>,
    pub(super) waker: Arc<Waker>,
}

/// A worker's ends of its [`Contact`].
pub(super) struct Mailbox {
    packets: Receiver<Handover>,
    spares: Receiver<Vec<u8>>,
    queries: Receiver<(Query, Sender<Answer>)>,
}

/// For each of `workers` workers: its event loop (with its waker registered as [`WAKER`]), its
/// contact and its mailbox.
pub(super) fn wire(workers: usize) -> Result<Vec<(Poll, Contact, Mailbox)>> {
    let mut wired = Vec::with_capacity(workers);
    for _ in 0..workers {
        let poll = Poll::new().context("creating a worker's event loop")?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (packets, packets_in) = mpsc::sync_channel(HANDOFF_LIMIT * workers);
        let (spares, spares_in) = mpsc::sync_channel(HANDOFF_LIMIT);
        let (queries, queries_in) = mpsc::channel();
        let contact = Contact {
            packets,
            spares,
            queries,
            waker,
        };
        let mailbox = Mailbox {
            packets: packets_in,
            spares: spares_in,
            queries: queries_in,
        };
        wired.push((poll, contact, mailbox));
    }
    Ok(wired)
}

/// One worker's side of the handoff: its mailbox, every worker's contact and its pool of
/// buffers.
pub(super) struct Handoff {
    /// This worker's index in `peers`.
    index: usize,
    mailbox: Mailbox,
    /// Every worker's contact, this one's included.
    peers: Vec<Contact>,
    /// Which peers were handed packets since they were last woken.
    to_wake: Vec<bool>,
    /// Buffers back from their owners, and how many are out.
    spare: Vec<Vec<u8>>,
    lent: usize,
}

impl Handoff {
    pub(super) fn new(index: usize, mailbox: Mailbox, peers: Vec<Contact>) -> Handoff {
        Handoff {
            index,
            mailbox,
            to_wake: vec![false; peers.len()],
            peers,
            spare: Vec::new(),
            lent: 0,
        }
    }

    /// Hands a copy of `frame` (a header and the packet `received` describes, read on
    /// `interface`) to worker `owner`, which is woken at the next [`Handoff::wake_peers`].
    /// Counted in `device` as handed over, or as dropped when the pool is spent or the owner
    /// gone.
    pub(super) fn lend(
        &mut self,
        owner: usize,
        interface: Interface,
        received: Received,
        frame: &[u8],
        device: &mut DeviceCounters,
    ) {
        if self.lent >= HANDOFF_LIMIT {
            device.handover_dropped += 1;
            return;
        }
        // A buffer grows to the largest frame it has carried, once: no allocation when warm.
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(frame);
        let handover = Handover {
            interface,
            received,
            frame: buffer,
            from: self.index,
        };
        match self.peers[owner].packets.try_send(handover) {
            Ok(()) => {
                self.lent += 1;
                device.handed_over += 1;
                self.to_wake[owner] = true;
            }
            // The owner is gone (the gateway is stopping): the packet is lost, and counted.
            Err(TrySendError::Full(h) | TrySendError::Disconnected(h)) => {
                self.spare.push(h.frame);
                device.handover_dropped += 1;
            }
        }
    }

    /// Wakes the workers handed packets since the last time, once each.
    pub(super) fn wake_peers(&mut self) {
        for (peer, wake) in self.peers.iter().zip(&mut self.to_wake) {
            if std::mem::take(wake) {
                let _ = peer.waker.wake();
            }
        }
    }

    /// Takes back into the pool the buffers the owners have returned.
    pub(super) fn take_spares(&mut self) {
        while let Ok(frame) = self.mailbox.spares.try_recv() {
            self.lent = self.lent.saturating_sub(1);
            self.spare.push(frame);
        }
    }

    /// The next packet another worker handed over, if any.
    pub(super) fn next_packet(&mut self) -> Option<Handover> {
        self.mailbox.packets.try_recv().ok()
    }

    /// Returns the buffer of a handed-over packet, once forwarded, to its lender.
    pub(super) fn give_back(&mut self, handover: Handover) {
        // Never full: the lender has at most HANDOFF_LIMIT out.
        let _ = self.peers[handover.from].spares.try_send(handover.frame);
    }

    /// The next question from a serving thread, with where to answer, if any.
    pub(super) fn next_query(&mut self) -> Option<(Query, Sender<Answer>)> {
        self.mailbox.queries.try_recv().ok()
    }

    /// How many buffers are out, and how many wait in the pool.
    #[cfg(test)]
    pub(super) fn pool(&self) -> (usize, usize) {
        (self.lent, self.spare.len())
    }
}
