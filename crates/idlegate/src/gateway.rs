//! The gateway: the sans-IO engine driven by TUN devices and the monotonic clock.
//!
//! One thread runs one event loop. It waits (with `mio`) until a TUN device is readable, the
//! engine's next deadline comes, or [`Stopper::stop`] is called; it then drains every readable
//! device through [`Engine::handle_packet`], writes each forwarded packet to the device that
//! leads to its destination, runs [`Engine::handle_timeout`], sends the RSTs the engine made
//! and logs flow creation and expiry with `tracing`. The packet buffer is reused: nothing is
//! allocated per packet.

use crate::capture::Capture;
use crate::control::Control;
use crate::metrics::{Direction, Metrics, Traffic};
use crate::tun::Tun;
use anyhow::{bail, Context, Result};
use idlegate_core::engine::{Counters, Engine, Event, Interface, Verdict};
use idlegate_core::expiry::Expiry;
use idlegate_core::packet;
use idlegate_core::Config;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A TUN device attached to one side of the gateway.
pub struct Port {
    pub tun: Tun,
    pub interface: Interface,
    /// The address of the host behind it, or `None` for a port that takes every destination
    /// on its side (a router-style attachment).
    pub host: Option<IpAddr>,
}

/// What a gateway offers besides forwarding.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The control socket `idlegate flows` talks to.
    pub control: Option<PathBuf>,
    /// A pcap file of every packet seen and made.
    pub pcap: Option<PathBuf>,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Stops a running gateway from another thread or a signal handler thread.
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Stopper {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // A failed wake only delays the stop until the next packet or deadline.
        let _ = self.waker.wake();
    }
}

const WAKER: Token = Token(usize::MAX);
const CONTROL: Token = Token(usize::MAX - 1);
const METRICS: Token = Token(usize::MAX - 2);
/// Largest IPv4 packet; TUN devices hand out at most their MTU.
const BUF_LEN: usize = 65_535;
/// Packets read from one device before the others get their turn.
const BUDGET: usize = 64;

/// The engine and its devices.
pub struct Gateway {
    engine: Engine,
    ports: Vec<Port>,
    poll: Poll,
    stopper: Stopper,
    /// Where `idlegate flows` asks.
    control: Option<Control>,
    /// Where `--pcap` records packets.
    capture: Option<Capture>,
    /// Where `--metrics` serves Prometheus.
    metrics: Option<Metrics>,
    /// Packets and bytes per interface and direction, counted only for `--metrics`.
    traffic: Option<Traffic>,
    buf: Box<[u8; BUF_LEN]>,
    /// Member addresses and names, for log lines.
    member_names: Vec<(IpAddr, String)>,
    /// Which devices may still hold packets.
    readable: Vec<bool>,
    /// Where the engine writes the packets it generates.
    tx_buf: [u8; packet::CONTROL_LEN],
    /// Packets the kernel refused to take (full queue): counted, not fatal.
    tx_errors: u64,
    /// Forwarded packets for a destination no device leads to.
    undeliverable: u64,
    /// Reads with a virtio-net header the kernel would never write: dropped.
    malformed: u64,
    /// Offloads: what one read brings (a packet or a super-segment, after its header).
    whole: Vec<u8>,
    /// Offloads: single packets waiting to be written in a batch, each a header and the
    /// packet; the first `pending` hold packets.
    singles: Vec<Vec<u8>>,
    pending: usize,
    /// Offloads: which of `singles` go out of each port.
    outgoing: Vec<Vec<usize>>,
    /// Offloads: the packets one port writes, moved out of `singles` and back.
    batch: Vec<Vec<u8>>,
    /// Offloads: tun-rs's coalescing state.
    gro: tun_rs::GROTable,
}

/// The room of one single-packet buffer: a header and a full-sized packet.
const SINGLE_LEN: usize = crate::tun::HEADER + 1600;

impl Gateway {
    /// A gateway running `config` on `ports` (at least one per side), with the extras `options`
    /// ask for.
    pub fn new(config: &Config, ports: Vec<Port>, options: &Options) -> Result<Gateway> {
        for side in [Interface::Inside, Interface::Outside] {
            if !ports.iter().any(|p| p.interface == side) {
                bail!("the gateway needs a TUN device on the {side:?} side");
            }
        }
        let poll = Poll::new().context("creating the event loop")?;
        for (i, port) in ports.iter().enumerate() {
            poll.registry()
                .register(
                    &mut SourceFd(&port.tun.as_raw_fd()),
                    Token(i),
                    Interest::READABLE,
                )
                .with_context(|| format!("watching TUN device {}", port.tun.name()))?;
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).context("creating the waker")?);
        let capture = options.pcap.as_deref().map(Capture::create).transpose()?;
        let metrics = match options.metrics {
            Some(addr) => {
                let mut metrics = Metrics::bind(addr)?;
                poll.registry()
                    .register(metrics.listener(), METRICS, Interest::READABLE)?;
                Some(metrics)
            }
            None => None,
        };
        let control = match &options.control {
            Some(path) => {
                let mut control = Control::bind(path)?;
                poll.registry()
                    .register(control.listener(), CONTROL, Interest::READABLE)?;
                Some(control)
            }
            None => None,
        };
        let stopper = Stopper {
            flag: Arc::new(AtomicBool::new(false)),
            waker,
        };
        let engine = Engine::new(config, Instant::now(), random_seed());
        Ok(Gateway {
            engine,
            control,
            capture,
            metrics,
            traffic: options.metrics.map(|_| Traffic::default()),
            readable: vec![false; ports.len()],
            member_names: config
                .backend_pools
                .iter()
                .flat_map(|p| &p.members)
                .map(|m| (m.address, m.name.clone()))
                .collect(),
            ports,
            poll,
            stopper,
            buf: Box::new([0; BUF_LEN]),
            tx_buf: [0; packet::CONTROL_LEN],
            whole: vec![0; crate::tun::HEADER + BUF_LEN],
            singles: (0..tun_rs::IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(SINGLE_LEN))
                .collect(),
            pending: 0,
            outgoing: Vec::new(),
            batch: Vec::with_capacity(tun_rs::IDEAL_BATCH_SIZE),
            gro: tun_rs::GROTable::default(),
            tx_errors: 0,
            undeliverable: 0,
            malformed: 0,
        })
    }

    /// A handle that stops [`Gateway::run`].
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    pub fn counters(&self) -> Counters {
        self.engine.counters()
    }

    /// Runs until stopped; fails if a device disappears.
    pub fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(64);
        while !self.stopper.flag.load(Ordering::SeqCst) {
            // A device left with packets (budget spent) is served again without waiting.
            let timeout = if self.readable.contains(&true) {
                Some(std::time::Duration::ZERO)
            } else {
                self.engine
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            };
            match self.poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.context("waiting for packets")?,
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    CONTROL => {
                        if let Some(control) = &mut self.control {
                            control.serve(&mut self.engine);
                        }
                    }
                    METRICS => {
                        if let (Some(metrics), Some(traffic)) = (&mut self.metrics, &self.traffic) {
                            metrics.serve(&self.engine, traffic);
                        }
                    }
                    Token(i) => self.readable[i] = true,
                }
            }
            for i in 0..self.ports.len() {
                if self.readable[i] {
                    self.readable[i] = self.drain(i)?;
                }
            }
            self.engine.handle_timeout(Instant::now());
            self.flush();
            if let Some(Err(e)) = self.capture.as_mut().map(Capture::flush) {
                tracing::warn!("{e:#}; capture stopped");
                self.capture = None;
            }
        }
        self.log_counters();
        Ok(())
    }

    /// Reads the packets queued on port `i`, at most [`BUDGET`] so that one busy device cannot
    /// starve the others, the timers or a stop. True if packets may be left (the devices are
    /// edge-triggered, so the caller must come back without waiting for another event).
    fn drain(&mut self, i: usize) -> Result<bool> {
        if self.ports[i].tun.offload() {
            return self.drain_offloaded(i);
        }
        for _ in 0..BUDGET {
            let port = &self.ports[i];
            let n = match port.tun.recv(&mut self.buf[..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "reading TUN device {} (was its namespace deleted?)",
                            port.tun.name()
                        )
                    })
                }
            };
            let interface = port.interface;
            if let Some(traffic) = &mut self.traffic {
                traffic.count(interface, Direction::In, n);
            }
            self.record(n);
            match self
                .engine
                .handle_packet(Instant::now(), interface, &mut self.buf[..n])
            {
                Verdict::Forward(out) => self.send(out, n),
                Verdict::Drop(reason) => {
                    tracing::trace!(?interface, reason = reason.as_str(), "packet dropped")
                }
            }
            self.flush();
        }
        Ok(true)
    }

    /// With offloads: reads packets and super-segments from port `i` and hands each to the
    /// engine once. A super-segment goes out at once with its header; single packets wait
    /// in per-port batches, written when the reads stop, which the device coalesces.
    fn drain_offloaded(&mut self, i: usize) -> Result<bool> {
        self.outgoing.resize_with(self.ports.len(), Vec::new);
        let mut more = true;
        for _ in 0..BUDGET {
            let port = &self.ports[i];
            let received = match port.tun.recv_offloaded(&mut self.whole) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.malformed += 1;
                    tracing::debug!(device = port.tun.name(), "unreadable packet: {e}");
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "reading TUN device {} (was its namespace deleted?)",
                            port.tun.name()
                        )
                    })
                }
            };
            self.forward_offloaded(i, received);
        }
        self.send_batches();
        self.flush();
        Ok(more)
    }

    /// Hands the packet in `whole` to the engine and sends or queues what it forwards.
    fn forward_offloaded(&mut self, i: usize, received: crate::tun::Received) {
        const H: usize = crate::tun::HEADER;
        let interface = self.ports[i].interface;
        let len = received.len;
        let packet = &mut self.whole[H..H + len];
        if let Some(traffic) = &mut self.traffic {
            traffic.count(interface, Direction::In, len);
        }
        if let Some(capture) = &mut self.capture {
            if let Err(e) = capture.record(packet) {
                tracing::warn!("{e:#}; capture stopped");
                self.capture = None;
            }
        }
        let checksum = received.shape.checksum();
        let out = match self
            .engine
            .handle_packet_with(Instant::now(), interface, packet, checksum)
        {
            Verdict::Forward(out) => out,
            Verdict::Drop(reason) => {
                tracing::trace!(?interface, reason = reason.as_str(), "packet dropped");
                return;
            }
        };
        let dst = destination(&self.whole[H..]);
        let Some(j) = dst.and_then(|dst| port_for(&self.ports, out, dst)) else {
            self.undeliverable += 1;
            return;
        };
        let packet = &self.whole[H..H + len];
        if let Some(capture) = &mut self.capture {
            if let Err(e) = capture.record(packet) {
                tracing::warn!("{e:#}; capture stopped");
                self.capture = None;
            }
        }
        if let Some(traffic) = &mut self.traffic {
            traffic.count(out, Direction::Out, len);
        }
        if received.shape == crate::tun::Shape::Single && H + len <= SINGLE_LEN {
            let single = &mut self.singles[self.pending];
            single.clear();
            single.extend_from_slice(&self.whole[..H + len]);
            self.outgoing[j].push(self.pending);
            self.pending += 1;
            if self.pending == self.singles.len() {
                self.send_batches();
            }
        } else {
            // What waits for this port goes first: a flow's packets keep their order.
            self.send_batch(j);
            if let Err(e) = self.ports[j].tun.send_offloaded(&self.whole[..H + len]) {
                self.tx_errors += 1;
                tracing::debug!(device = self.ports[j].tun.name(), "write failed: {e}");
            }
        }
    }

    /// Writes every port's waiting single packets.
    fn send_batches(&mut self) {
        for j in 0..self.ports.len() {
            self.send_batch(j);
        }
        self.pending = 0;
    }

    /// Writes the single packets waiting for port `j` in one batch, which the device
    /// coalesces per TCP flow.
    fn send_batch(&mut self, j: usize) {
        if self.outgoing[j].is_empty() {
            return;
        }
        // The buffers move into the port's batch and back: no copy, no allocation.
        for &k in &self.outgoing[j] {
            self.batch.push(std::mem::take(&mut self.singles[k]));
        }
        if let Err(e) = self.ports[j].tun.send_batch(&mut self.gro, &mut self.batch) {
            self.tx_errors += 1;
            tracing::debug!(device = self.ports[j].tun.name(), "write failed: {e}");
        }
        for (&k, single) in self.outgoing[j].iter().zip(self.batch.drain(..)) {
            self.singles[k] = single;
        }
        self.outgoing[j].clear();
    }

    /// Writes the first `len` bytes of the buffer out of the port that leads to their
    /// destination on side `out`.
    fn send(&mut self, out: Interface, len: usize) {
        let packet = &self.buf[..len];
        let Some(dst) = destination(packet) else {
            return;
        };
        let port = port_for(&self.ports, out, dst).map(|j| &self.ports[j]);
        match port {
            Some(port) => {
                if let Some(capture) = &mut self.capture {
                    if let Err(e) = capture.record(packet) {
                        tracing::warn!("{e:#}; capture stopped");
                        self.capture = None;
                    }
                }
                if let Some(traffic) = &mut self.traffic {
                    traffic.count(out, Direction::Out, len);
                }
                if let Err(e) = port.tun.send(packet) {
                    self.tx_errors += 1;
                    tracing::debug!(device = port.tun.name(), "write failed: {e}");
                }
            }
            None => {
                self.undeliverable += 1;
                tracing::debug!(%dst, "no device leads to this destination; packet dropped");
            }
        }
    }

    /// Records the first `len` bytes of the buffer in the capture, if there is one.
    fn record(&mut self, len: usize) {
        if let Some(capture) = &mut self.capture {
            if let Err(e) = capture.record(&self.buf[..len]) {
                tracing::warn!("{e:#}; capture stopped");
                self.capture = None;
            }
        }
    }

    /// Sends the packets the engine generated and logs its events.
    fn flush(&mut self) {
        while let Some(tx) = self.engine.poll_transmit(&mut self.tx_buf) {
            self.buf[..tx.len].copy_from_slice(&self.tx_buf[..tx.len]);
            self.send(tx.interface, tx.len);
        }
        while let Some(event) = self.engine.poll_event() {
            self.log(event);
        }
    }

    fn log(&self, event: Event) {
        match event {
            Event::Created { flow } => tracing::info!(
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
                action,
            } => {
                let what = match action {
                    Expiry::Silent => "silent: its packets will be dropped",
                    Expiry::Reset => "RST sent to both ends",
                    Expiry::ResetOnNext => "silent: the next packet will be answered with a RST",
                    Expiry::AckAndDiscard => {
                        "what either end sends now is acknowledged and discarded"
                    }
                };
                tracing::info!(
                    rule = self.engine.rule_name(flow.rule),
                    "flow expired after {:?} idle in {}: {} ↔ {} ↔ {}; {what}",
                    timeout,
                    state.as_str(),
                    flow.remote,
                    flow.public,
                    flow.private
                );
            }
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
        }
    }

    fn log_counters(&self) {
        let c = self.engine.counters();
        let drops: Vec<String> = c
            .drops()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect();
        tracing::info!(
            forwarded = c.forwarded,
            flows_created = c.flows_created,
            flows_expired = c.flows_expired,
            resets_sent = c.resets_sent,
            tx_errors = self.tx_errors,
            undeliverable = self.undeliverable,
            malformed = self.malformed,
            "gateway stopped; drops: {}",
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops.join(" ")
            }
        );
    }
}

/// The destination of a packet the engine accepted (so its header is valid).
/// The port of `ports` that leads to `dst` on side `out`: the device of that host, else
/// the side's catch-all device.
fn port_for(ports: &[Port], out: Interface, dst: IpAddr) -> Option<usize> {
    ports
        .iter()
        .position(|p| p.interface == out && p.host == Some(dst))
        .or_else(|| {
            ports
                .iter()
                .position(|p| p.interface == out && p.host.is_none())
        })
}

fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let bytes: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(Ipv4Addr::from(bytes).into())
        }
        6 => {
            let bytes: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(Ipv6Addr::from(bytes).into())
        }
        _ => None,
    }
}

/// A seed for the flow table's hash, so outsiders cannot aim collisions at it.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
