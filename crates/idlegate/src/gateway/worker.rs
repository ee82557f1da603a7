//! One gateway worker: a shard of the engine and a queue of every device, in an event loop.
//!
//! [`Worker::run`] waits (with `mio`) until one of its queues is readable, its shard's next
//! deadline comes or its waker rings, reads the clock once, and takes one [`Worker::turn`] at
//! that instant: it reads packets (at most [`BUDGET`] per device), parses each once
//! ([`Parsed`]), hands it to its shard or, if another worker owns its flow, over to that worker
//! ([`super::handoff`]); the packets its own shard owns go to it in batches of up to
//! [`BATCH`] ([`Engine::handle_batch`], whose flow lookups overlap), each batch read into
//! frames of its own; then it writes what is forwarded to its queue of the device that leads to the
//! destination the verdict names (single packets in
//! batches with offloads), runs the timers, sends the RSTs the shard made and logs flow creation
//! and expiry with `tracing`. The worker is generic over its devices ([`PacketIo`]) and gets
//! the time from its caller, so tests drive [`Worker::turn`] over in-memory devices in virtual
//! time.

use super::feed::Feed;
use super::handoff::{Answer, Contact, Handoff, Mailbox, Query};
use super::io::PacketIo;
use super::{Stopper, Tally};
use crate::gateway::control::FlowRow;
use crate::gateway::metrics::{Direction, Snapshot, Traffic};
use crate::obs::capture::{self, Capture};
use crate::sys::tun::{Received, Shape};
use anyhow::{Context, Result};
use idlegate_core::packet::{self, Parsed, TransportChecksum};
use idlegate_core::Expiry;
use idlegate_core::Sharding;
use idlegate_core::{Batch, Engine, Event, ExpiryCause, FlowInfo, Interface, Verdict, BATCH};
use mio::{Events, Poll, Token};
use std::collections::BinaryHeap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Largest IPv4 packet, or TCP super-segment.
const BUF_LEN: usize = 65_535;
/// Packets read from one device before the others get their turn.
pub(super) const BUDGET: usize = 64;
/// The room of one single-packet buffer: a header and a full-sized packet.
const SINGLE_LEN: usize = crate::sys::tun::HEADER + 1600;

/// A worker's queue of one device, and where the device leads.
pub(super) struct DeviceQueue<D> {
    pub(super) io: D,
    pub(super) interface: Interface,
    /// The host behind the device, or `None` for a device that takes every destination on
    /// its side.
    pub(super) host: Option<IpAddr>,
}

/// Everything a worker is built from.
pub(super) struct WorkerSetup<D> {
    pub(super) index: usize,
    pub(super) engine: Engine,
    /// Its queue of every device; all with the same header (offloads on or off).
    pub(super) queues: Vec<DeviceQueue<D>>,
    /// Its event loop, the queues registered under their index, the waker as
    /// [`super::handoff::WAKER`].
    pub(super) poll: Poll,
    pub(super) mailbox: Mailbox,
    /// Every worker's contact, this one's included.
    pub(super) peers: Vec<Contact>,
    pub(super) sharding: Sharding,
    pub(super) capture: Option<Arc<Mutex<Capture>>>,
    /// Member addresses and names, for log lines.
    pub(super) member_names: Vec<(IpAddr, String)>,
    pub(super) stopper: Stopper,
    /// Where its events go to the API thread (`--api`), if it runs.
    pub(super) feed: Option<Feed>,
}

/// A worker's devices: its queues, the frames it reads into, and what waits to be written.
struct Devices<D> {
    queues: Vec<DeviceQueue<D>>,
    /// Which devices may still hold packets.
    readable: Vec<bool>,
    /// The bytes before each packet in a frame: the virtio-net header with offloads, else none.
    header: usize,
    /// What one read brings: a frame, its packet at `header`; [`BATCH`] of them, a batch for
    /// the shard (a handed-over packet comes into the first): 2 MiB a worker at most, of
    /// which pages no packet reached may stay unbacked (zeroed by the allocator).
    frames: Vec<Vec<u8>>,
    /// The packets of the batch being read for the shard: the first `held.len()` frames.
    held: Vec<Arrival>,
    /// Offloads: single packets waiting to be written in a batch, each a header and the
    /// packet; the first `pending` hold packets.
    singles: Vec<Vec<u8>>,
    pending: usize,
    /// Offloads: which of `singles` go out of each device.
    outgoing: Vec<Vec<usize>>,
    /// Offloads: the packets one device writes, moved out of `singles` and back.
    batch: Vec<Vec<u8>>,
    /// Offloads: tun-rs's coalescing state.
    gro: tun_rs::GROTable,
}

/// A packet read for the worker's own shard, in the frame of the same index.
#[derive(Clone, Copy)]
struct Arrival {
    interface: Interface,
    received: Received,
    parsed: Parsed,
    /// What the shard made of it (set by [`Engine::handle_batch`]).
    verdict: Verdict,
}

/// The held packets and their frames, as [`Engine::handle_batch`] takes them.
struct HeldBatch<'a> {
    frames: &'a mut [Vec<u8>],
    held: &'a mut [Arrival],
    header: usize,
}

impl Batch for HeldBatch<'_> {
    fn len(&self) -> usize {
        self.held.len()
    }
    fn headers(&self, i: usize) -> (Interface, &Parsed) {
        (self.held[i].interface, &self.held[i].parsed)
    }
    fn packet(&mut self, i: usize) -> (&mut [u8], TransportChecksum) {
        let a = &self.held[i];
        let h = self.header;
        (
            &mut self.frames[i][h..h + a.received.len],
            a.received.shape.checksum(),
        )
    }
    fn verdict(&mut self, i: usize, verdict: Verdict) {
        self.held[i].verdict = verdict;
    }
}

/// A worker's shard of the engine, and the instant of its current turn.
struct Shard {
    index: usize,
    engine: Engine,
    sharding: Sharding,
    /// The clock, read once per turn.
    now: Instant,
    /// Where the engine writes the packets it generates.
    /// (Fragments the engine held are longer than the packets it makes.)
    tx_buf: Vec<u8>,
    /// Member addresses and names, for log lines.
    member_names: Vec<(IpAddr, String)>,
    /// Where its events go to the API thread, if it runs.
    feed: Option<Feed>,
}

/// What a worker counts and records.
struct Books {
    traffic: Traffic,
    tally: Tally,
    /// Where `--pcap` records packets; shared by the workers.
    capture: Option<Arc<Mutex<Capture>>>,
}

impl Books {
    /// Records `packet`, crossing a device on `side` `direction`, if there is a capture.
    fn record(&mut self, side: Interface, direction: capture::Direction, packet: &[u8]) {
        let Some(capture) = &self.capture else {
            return;
        };
        let recorded = capture
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(side, direction, packet);
        self.stop_capture_if(recorded);
    }

    /// Lets go of the capture once it has stopped: a failed write stops it for every worker
    /// (in [`Capture`], under its lock), and the worker that met the failure logs it, once.
    fn stop_capture_if(&mut self, recorded: Result<capture::Recording>) {
        match recorded {
            Ok(capture::Recording::On) => {}
            Ok(capture::Recording::Stopped) => self.capture = None,
            Err(e) => {
                tracing::warn!(target: crate::LOG_TARGET, "{e:#}; capture stopped");
                self.capture = None;
            }
        }
    }
}

/// One worker: a shard of the engine and a queue of every device.
pub(super) struct Worker<D> {
    devices: Devices<D>,
    shard: Shard,
    books: Books,
    handoff: Handoff,
    poll: Poll,
    stopper: Stopper,
}

impl<D: PacketIo> Worker<D> {
    pub(super) fn new(setup: WorkerSetup<D>) -> Worker<D> {
        let header = setup.queues.first().map_or(0, |q| q.io.header_len());
        let count = setup.queues.len();
        Worker {
            devices: Devices {
                queues: setup.queues,
                readable: vec![false; count],
                header,
                frames: (0..BATCH).map(|_| vec![0; header + BUF_LEN]).collect(),
                held: Vec::with_capacity(BATCH),
                singles: (0..tun_rs::IDEAL_BATCH_SIZE)
                    .map(|_| Vec::with_capacity(SINGLE_LEN))
                    .collect(),
                pending: 0,
                outgoing: vec![Vec::new(); count],
                batch: Vec::with_capacity(tun_rs::IDEAL_BATCH_SIZE),
                gro: tun_rs::GROTable::default(),
            },
            shard: Shard {
                index: setup.index,
                engine: setup.engine,
                sharding: setup.sharding,
                now: Instant::now(),
                tx_buf: vec![0; packet::CONTROL_LEN.max(packet::HELD_LEN)],
                member_names: setup.member_names,
                feed: setup.feed,
            },
            books: Books {
                traffic: Traffic::default(),
                tally: Tally::default(),
                capture: setup.capture,
            },
            handoff: Handoff::new(setup.index, setup.mailbox, setup.peers),
            poll: setup.poll,
            stopper: setup.stopper,
        }
    }

    /// Its index among the workers.
    pub(super) fn index(&self) -> usize {
        self.shard.index
    }

    /// Runs until stopped; fails if a device disappears.
    pub(super) fn run(mut self) -> Result<Tally> {
        let mut events = Events::with_capacity(64);
        while !self.stopper.stopped() {
            // A device left with packets (budget spent) is served again without waiting.
            let timeout = if self.devices.readable.contains(&true) {
                Some(Duration::ZERO)
            } else {
                self.shard
                    .engine
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            };
            match self.poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.context("waiting for packets")?,
            }
            for event in events.iter() {
                let Token(i) = event.token();
                self.mark_readable(i);
            }
            self.turn(Instant::now())?;
        }
        Ok(self.finish())
    }

    /// Notes that device `i` may hold packets (its event loop said so).
    pub(super) fn mark_readable(&mut self, i: usize) {
        if let Some(readable) = self.devices.readable.get_mut(i) {
            *readable = true;
        }
    }

    /// One step of the loop at `now`: what other workers handed over, the devices marked
    /// readable (each up to [`BUDGET`] packets), the questions, the timers; then wakes the
    /// workers it handed packets to. Fails if a device disappears.
    pub(super) fn turn(&mut self, now: Instant) -> Result<()> {
        self.shard.now = now;
        for i in 0..self.devices.queues.len() {
            // Packets handed over first: they were read before what the drain reads now.
            self.serve_inbox();
            if self.devices.readable[i] {
                self.devices.readable[i] = self.drain(i)?;
            }
        }
        self.serve_inbox();
        self.shard.engine.handle_timeout(now);
        self.flush();
        self.handoff.wake_peers();
        self.flush_capture();
        if let Some(feed) = &mut self.shard.feed {
            feed.wake();
        }
        Ok(())
    }

    /// What it did: its shard's counters and its own.
    pub(super) fn finish(mut self) -> Tally {
        self.books.tally.counters = self.shard.engine.counters();
        self.books.tally
    }

    /// Reads the frames queued on device `i`, at most [`BUDGET`] so that one busy device
    /// cannot starve the others, the timers or a stop; each goes to its owner. True if frames
    /// may be left (the devices are edge-triggered, so the caller must come back without
    /// waiting).
    fn drain(&mut self, i: usize) -> Result<bool> {
        let mut more = true;
        for _ in 0..BUDGET {
            let queue = &mut self.devices.queues[i];
            let slot = self.devices.held.len();
            let received = match queue.io.recv_frame(&mut self.devices.frames[slot]) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.books.tally.device.malformed += 1;
                    tracing::debug!(device = queue.io.name(), "unreadable packet: {e}");
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "reading TUN device {} (was its namespace deleted?)",
                            queue.io.name()
                        )
                    })
                }
            };
            let interface = queue.interface;
            let h = self.devices.header;
            let packet = &self.devices.frames[slot][h..h + received.len];
            // The one parse of this packet: it finds the owner and serves the engine.
            let parsed = Parsed::new(packet);
            match self.shard.sharding.owner_of(packet, &parsed, interface) {
                Some(owner) if owner != self.shard.index => self.handoff.lend(
                    owner,
                    interface,
                    received,
                    &self.devices.frames[slot][..h + received.len],
                    &mut self.books.tally.device,
                ),
                _ => {
                    self.devices.held.push(Arrival {
                        interface,
                        received,
                        parsed,
                        verdict: Verdict::Held,
                    });
                    if self.devices.held.len() == BATCH {
                        self.forward_held();
                    }
                }
            }
        }
        self.forward_held();
        self.send_batches();
        self.flush();
        Ok(more)
    }

    /// Takes what the other workers and the serving thread sent.
    fn serve_inbox(&mut self) {
        self.handoff.take_spares();
        while let Some(mut handover) = self.handoff.next_packet() {
            std::mem::swap(&mut self.devices.frames[0], &mut handover.frame);
            // Parsed again by its owner: the lender's parse stayed with the lender.
            let h = self.devices.header;
            let parsed = Parsed::new(&self.devices.frames[0][h..h + handover.received.len]);
            self.forward(handover.interface, handover.received, &parsed);
            std::mem::swap(&mut self.devices.frames[0], &mut handover.frame);
            self.handoff.give_back(handover);
        }
        while let Some((query, reply)) = self.handoff.next_query() {
            let _ = reply.send(self.answer(query));
        }
        self.send_batches();
        self.flush();
    }

    fn answer(&mut self, query: Query) -> Answer {
        let now = self.shard.now;
        match query {
            Query::Flows { limit } => {
                let engine = &self.shard.engine;
                let (kept, count) = soonest(engine.flows(now), limit);
                Answer::Flows {
                    rows: kept.iter().map(|f| FlowRow::new(engine, f)).collect(),
                    count,
                }
            }
            Query::Expire(rule) => {
                let count = self
                    .shard
                    .engine
                    .expire_now(now, |name| rule.as_deref().is_none_or(|r| r == name));
                self.flush();
                Answer::Expired(count)
            }
            Query::Retime(changes) => {
                self.shard.engine.retime(&changes);
                Answer::Retimed
            }
            Query::Snapshot => Answer::Snapshot(Box::new(Snapshot::of(
                &self.shard.engine,
                &self.books.traffic,
                &self.books.tally.device,
                now,
            ))),
        }
    }

    /// Hands the packet in the first frame, `parsed`, to the shard and sends or queues what
    /// it forwards.
    fn forward(&mut self, interface: Interface, received: Received, parsed: &Parsed) {
        let (h, len) = (self.devices.header, received.len);
        self.books.traffic.count(interface, Direction::In, len);
        self.record(interface, capture::Direction::Inbound, 0, h, len);
        let packet = &mut self.devices.frames[0][h..h + len];
        let verdict = self.shard.engine.handle_parsed(
            self.shard.now,
            interface,
            packet,
            parsed,
            received.shape.checksum(),
        );
        self.deliver(0, interface, received, verdict);
    }

    /// Hands the batch held in the first frames to the shard in one [`Engine::handle_batch`]
    /// and sends or queues what it forwards, in the order the packets came.
    fn forward_held(&mut self) {
        let h = self.devices.header;
        for k in 0..self.devices.held.len() {
            let Arrival {
                interface,
                received,
                ..
            } = self.devices.held[k];
            self.books
                .traffic
                .count(interface, Direction::In, received.len);
            self.record(interface, capture::Direction::Inbound, k, h, received.len);
        }
        let mut batch = HeldBatch {
            frames: &mut self.devices.frames,
            held: &mut self.devices.held,
            header: h,
        };
        self.shard.engine.handle_batch(self.shard.now, &mut batch);
        for k in 0..self.devices.held.len() {
            let Arrival {
                interface,
                received,
                verdict,
                ..
            } = self.devices.held[k];
            self.deliver(k, interface, received, verdict);
        }
        self.devices.held.clear();
    }

    /// Sends or queues the packet in frame `k`, which came in on `interface`, as `verdict`
    /// says.
    fn deliver(&mut self, k: usize, interface: Interface, received: Received, verdict: Verdict) {
        let (h, len) = (self.devices.header, received.len);
        let (out, dst) = match verdict {
            Verdict::Forward {
                interface,
                destination,
            } => (interface, destination),
            Verdict::Drop(reason) => {
                tracing::trace!(?interface, reason = reason.as_str(), "packet dropped");
                return;
            }
            // A fragment the engine keeps until its first fragment comes, then sends itself.
            Verdict::Held => return,
        };
        let Some(j) = queue_for(&self.devices.queues, out, dst) else {
            self.books.tally.device.undeliverable += 1;
            tracing::debug!(%dst, "no device leads to this destination; packet dropped");
            return;
        };
        self.record(out, capture::Direction::Outbound, k, h, len);
        self.books.traffic.count(out, Direction::Out, len);
        // With offloads (a header), single packets wait to be coalesced.
        if h > 0 && received.shape == Shape::Single && h + len <= SINGLE_LEN {
            let devices = &mut self.devices;
            let single = &mut devices.singles[devices.pending];
            single.clear();
            single.extend_from_slice(&devices.frames[k][..h + len]);
            devices.outgoing[j].push(devices.pending);
            devices.pending += 1;
            if devices.pending == devices.singles.len() {
                self.send_batches();
            }
        } else {
            // What waits for this device goes first: a flow's packets keep their order.
            self.send_batch(j);
            let devices = &mut self.devices;
            let queue = &mut devices.queues[j];
            if let Err(e) = queue.io.send_frame(&devices.frames[k][..h + len]) {
                self.books.tally.device.tx_errors += 1;
                tracing::debug!(device = queue.io.name(), "write failed: {e}");
            }
        }
    }

    /// Writes every device's waiting single packets.
    fn send_batches(&mut self) {
        for j in 0..self.devices.queues.len() {
            self.send_batch(j);
        }
        self.devices.pending = 0;
    }

    /// Writes the single packets waiting for device `j` in one batch, which the device
    /// coalesces per TCP flow.
    fn send_batch(&mut self, j: usize) {
        let devices = &mut self.devices;
        if devices.outgoing[j].is_empty() {
            return;
        }
        // The buffers move into the device's batch and back: no copy, no allocation.
        for &k in &devices.outgoing[j] {
            devices.batch.push(std::mem::take(&mut devices.singles[k]));
        }
        let queue = &mut devices.queues[j];
        if let Err(e) = queue.io.send_batch(&mut devices.gro, &mut devices.batch) {
            self.books.tally.device.tx_errors += 1;
            tracing::debug!(device = queue.io.name(), "write failed: {e}");
        }
        for (&k, single) in devices.outgoing[j].iter().zip(devices.batch.drain(..)) {
            devices.singles[k] = single;
        }
        devices.outgoing[j].clear();
    }

    /// Records the packet in frame `k`, crossing a device on `side` `direction`, if there is
    /// a capture.
    fn record(
        &mut self,
        side: Interface,
        direction: capture::Direction,
        k: usize,
        h: usize,
        len: usize,
    ) {
        self.books
            .record(side, direction, &self.devices.frames[k][h..h + len]);
    }

    fn flush_capture(&mut self) {
        let Some(capture) = &self.books.capture else {
            return;
        };
        let flushed = capture
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush();
        self.books.stop_capture_if(flushed);
    }

    /// Sends the packets the shard generated and logs its events.
    fn flush(&mut self) {
        while let Some(tx) = self.shard.engine.poll_transmit(&mut self.shard.tx_buf) {
            self.send_generated(tx.interface, tx.destination, tx.len);
        }
        while let Some(event) = self.shard.engine.poll_event() {
            if let Some(feed) = &mut self.shard.feed {
                feed.offer(self.shard.now, event);
            }
            self.shard.log(event);
        }
    }

    /// Writes the first `len` bytes of `tx_buf` out of the device that leads to their
    /// destination `dst` on side `out`.
    fn send_generated(&mut self, out: Interface, dst: IpAddr, len: usize) {
        let packet = &self.shard.tx_buf[..len];
        let Some(j) = queue_for(&self.devices.queues, out, dst) else {
            self.books.tally.device.undeliverable += 1;
            tracing::debug!(%dst, "no device leads to this destination; packet dropped");
            return;
        };
        self.books.record(out, capture::Direction::Outbound, packet);
        self.books.traffic.count(out, Direction::Out, len);
        // After what waits for the device: a RST follows the data before it.
        self.send_batch(j);
        let queue = &mut self.devices.queues[j];
        if let Err(e) = queue.io.send_packet(&self.shard.tx_buf[..len]) {
            self.books.tally.device.tx_errors += 1;
            tracing::debug!(device = queue.io.name(), "write failed: {e}");
        }
    }

    /// What it did so far: its shard's counters and its own.
    #[cfg(test)]
    pub(super) fn tally(&self) -> Tally {
        let mut tally = self.books.tally.clone();
        tally.counters = self.shard.engine.counters();
        tally
    }

    /// Its side of the handoff.
    #[cfg(test)]
    pub(super) fn handoff(&self) -> &Handoff {
        &self.handoff
    }

    /// The deadline its shard asks to be woken at.
    #[cfg(test)]
    pub(super) fn deadline(&mut self) -> Option<Instant> {
        self.shard.engine.poll_timeout()
    }
}

impl Shard {
    fn log(&self, event: Event) {
        match event {
            Event::Created { flow, .. } => tracing::info!(
                rule = self.engine.rule_name(flow.rule),
                "flow created: {} → {} → {}",
                flow.remote,
                flow.public,
                flow.private
            ),
            Event::Expired {
                flow,
                state,
                timeout,
                idle_for,
                cause,
                action,
            } => tracing::info!(
                rule = self.engine.rule_name(flow.rule),
                "{}: {} ↔ {} ↔ {}; {}",
                expiry_reason(cause, timeout, idle_for, state.as_str()),
                flow.remote,
                flow.public,
                flow.private,
                expiry_action(action)
            ),
            Event::PortExhausted {
                rule,
                frontend,
                member,
            } => {
                let name = self
                    .member_names
                    .iter()
                    .find(|(a, _)| *a == member)
                    .map_or("?", |(_, n)| n.as_str());
                tracing::warn!(
                    rule = self.engine.rule_name(rule),
                    "SNAT port exhaustion on frontend {frontend} for member {name} ({member}): its new connection's SYN was dropped"
                );
            }
            Event::Refreshed { flow, idle_for, .. } => tracing::debug!(
                rule = self.engine.rule_name(flow.rule),
                "flow refreshed after {idle_for:?} idle: {} → {} → {}",
                flow.remote,
                flow.public,
                flow.private
            ),
            Event::Sent {
                flow,
                segment,
                interface,
            } => tracing::debug!(
                rule = self.engine.rule_name(flow.rule),
                "{} sent {interface:?}: {} ↔ {} ↔ {}",
                segment.as_str(),
                flow.remote,
                flow.public,
                flow.private
            ),
            Event::TableFull { max_flows } => tracing::warn!(
                worker = self.index,
                "flow table full: max_flows ({max_flows}) flows held by all workers together; new flows are refused until some end, established ones are unaffected"
            ),
        }
    }
}

/// Why a flow expired, for the log: its timeout ran out, or `idlegate flows expire` forced it
/// (with how long it had really been idle).
fn expiry_reason(cause: ExpiryCause, timeout: Duration, idle_for: Duration, state: &str) -> String {
    match cause {
        ExpiryCause::Idle => format!("flow expired after {timeout:?} idle in {state}"),
        ExpiryCause::Forced => format!(
            "flow expired on request (flows expire) after {:.1}s idle in {state}",
            idle_for.as_secs_f64()
        ),
    }
}

/// What an expiry did, for the log.
fn expiry_action(action: Expiry) -> &'static str {
    match action {
        Expiry::Silent => "silent: its packets will be dropped",
        Expiry::Reset => "RST sent to both ends",
        Expiry::ResetOnNext => "silent: the next packet will be answered with a RST",
        Expiry::AckAndDiscard => "what either end sends now is acknowledged and discarded",
    }
}

/// `flows` (all of them without a `limit`; with one, at most that many, the soonest to
/// expire, sorted soonest first) and how many there were. With a limit only `limit` of the
/// Copy [`FlowInfo`]s are held at a time (a bounded heap), so what a client asks for bounds
/// what the worker keeps and formats, whatever the table holds.
pub(super) fn soonest(
    flows: impl Iterator<Item = FlowInfo>,
    limit: Option<usize>,
) -> (Vec<FlowInfo>, usize) {
    let Some(limit) = limit else {
        let all: Vec<FlowInfo> = flows.collect();
        let count = all.len();
        return (all, count);
    };
    /// A flow ordered by how soon it expires: the heap's top is the latest of those kept.
    struct BySoonest(FlowInfo);
    impl PartialEq for BySoonest {
        fn eq(&self, other: &Self) -> bool {
            self.0.expires_in == other.0.expires_in
        }
    }
    impl Eq for BySoonest {}
    impl PartialOrd for BySoonest {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for BySoonest {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.0.expires_in.cmp(&other.0.expires_in)
        }
    }
    let mut kept: BinaryHeap<BySoonest> = BinaryHeap::new();
    let mut count = 0;
    for f in flows {
        count += 1;
        if kept.len() < limit {
            kept.push(BySoonest(f));
        } else if let Some(mut latest) = kept.peek_mut() {
            if f.expires_in < latest.0.expires_in {
                *latest = BySoonest(f);
            }
        }
    }
    let sorted = kept.into_sorted_vec().into_iter().map(|b| b.0).collect();
    (sorted, count)
}

/// The queue of `queues` that leads to `dst` on side `out`: the device of that host, else
/// the side's catch-all device.
fn queue_for<D>(queues: &[DeviceQueue<D>], out: Interface, dst: IpAddr) -> Option<usize> {
    queues
        .iter()
        .position(|q| q.interface == out && q.host == Some(dst))
        .or_else(|| {
            queues
                .iter()
                .position(|q| q.interface == out && q.host.is_none())
        })
}
