//! The gateway: the sans-IO engine driven by TUN devices and the monotonic clock, one worker
//! thread per core.
//!
//! Every TUN device has one queue per worker, and every worker runs one shard of the engine
//! ([`Engine::sharded`]) in its own event loop. It waits (with `mio`) until one of its queues is
//! readable, its shard's next deadline comes or a message arrives; it then reads packets, hands
//! each to its shard, writes what is forwarded to its queue of the device that leads to the
//! destination, runs the timers, sends the RSTs the shard made and logs flow creation and
//! expiry with `tracing`.
//!
//! A packet belongs to the shard [`Sharding::owner`] names: a hash of the flow's remote
//! endpoint, the same both ways. The kernel picks the queue by its own hash of the flow and
//! then by the queue the flow was last written from, so once a flow's first packets have
//! passed nearly every packet is read by its owner. One that is not is copied into a buffer
//! from a bounded pool and handed over through the owner's inbox; the buffer comes back the
//! same way. There is no lock on the per-packet path (except with `--pcap`, whose one file the
//! workers share), and no allocation once the pools are warm.
//!
//! The thread that calls [`Gateway::run`] serves the control socket; the metrics (`--metrics`)
//! have a thread of their own ([`crate::obs::scrape`]), so that no one who can reach the metrics
//! address can hold up `idlegate flows`. Both ask every worker through its inbox and add up
//! the answers.

mod ask;
pub mod control;
pub mod metrics;

use crate::gateway::control::{Control, FlowRow};
use crate::gateway::metrics::{DeviceCounters, Direction, Snapshot, Traffic};
use crate::obs::capture::Capture;
use crate::obs::scrape;
use crate::sys::tun::{Received, Shape, Tun};
use anyhow::{anyhow, bail, Context, Result};
use ask::{Ask, Asker};
use idlegate_core::packet;
use idlegate_core::Config;
use idlegate_core::Expiry;
use idlegate_core::Sharding;
use idlegate_core::{Counters, Engine, Event, ExpiryCause, Interface, Verdict};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A TUN device attached to one side of the gateway.
pub struct Port {
    /// One queue per worker, all made by [`Tun::create_queues`].
    pub queues: Vec<Tun>,
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

/// Most workers a gateway runs.
pub const MAX_WORKERS: usize = 64;

/// How many workers a gateway runs unless told: `IDLEGATE_WORKERS` if set (so that the whole
/// suite can run with one), else one per core.
pub fn default_workers() -> usize {
    std::env::var("IDLEGATE_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, MAX_WORKERS)
}

/// Stops the gateway when dropped: when a worker returns, fails or panics.
struct StopOnDrop(Stopper);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Stops a running gateway from another thread or a signal handler thread.
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    /// The serving thread's and every worker's.
    wakers: Vec<Arc<Waker>>,
}

impl Stopper {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        for waker in &self.wakers {
            // A failed wake only delays the stop until the next packet or deadline.
            let _ = waker.wake();
        }
    }

    fn stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

const WAKER: Token = Token(usize::MAX);
const CONTROL: Token = Token(usize::MAX - 1);
/// Largest IPv4 packet, or TCP super-segment.
const BUF_LEN: usize = 65_535;
/// Packets read from one device before the others get their turn.
const BUDGET: usize = 64;
/// The room of one single-packet buffer: a header and a full-sized packet.
const SINGLE_LEN: usize = crate::sys::tun::HEADER + 1600;
/// Packets a worker may have handed over and not yet got back: about what a device's own
/// transmit queue holds (1,000). Past it, a packet read by the wrong worker is dropped and counted (a
/// flood of new flows cannot grow the pools).
const HANDOFF_LIMIT: usize = 1024;
/// How long one snapshot of the workers answers scrapes: at most one a second is taken.
const SNAPSHOT_REUSE: Duration = Duration::from_secs(1);
/// How long the serving thread waits for a worker's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A packet one worker read for another: its frame, as read, and who to give the buffer back
/// to.
struct Handover {
    interface: Interface,
    received: Received,
    frame: Vec<u8>,
    from: usize,
}

enum Query {
    Flows,
    Expire(Option<String>),
    Snapshot,
}

enum Answer {
    Flows(Vec<FlowRow>),
    Expired(usize),
    Snapshot(Box<Snapshot>),
}

/// How to reach one worker. The bounded channels hold as many entries as can ever be in flight
/// (each worker lends at most [`HANDOFF_LIMIT`] buffers), so sending never blocks nor fails
/// while the worker runs, and nothing is allocated per message.
#[derive(Clone)]
struct Inbox {
    /// Packets handed over to it.
    packets: SyncSender<Handover>,
    /// Buffers of the packets it handed over, back for reuse.
    spares: SyncSender<Vec<u8>>,
    /// Questions from the control socket and the metrics, with where to answer.
    queries: Sender<(Query, Sender<Answer>)>,
    waker: Arc<Waker>,
}

/// A worker's ends of its [`Inbox`].
struct Mailbox {
    packets: Receiver<Handover>,
    spares: Receiver<Vec<u8>>,
    queries: Receiver<(Query, Sender<Answer>)>,
}

/// What a worker did, logged when the gateway stops.
#[derive(Debug, Clone, Default)]
struct Tally {
    counters: Counters,
    device: DeviceCounters,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.counters.add(&other.counters);
        self.device.add(&other.device);
    }
}

/// The workers, and what the serving thread holds.
pub struct Gateway {
    workers: Vec<Worker>,
    inboxes: Vec<Inbox>,
    poll: Poll,
    stopper: Stopper,
    /// Where `idlegate flows` asks.
    control: Option<Control>,
    /// Where `--metrics` serves Prometheus, on its own thread while the gateway runs.
    metrics: Option<scrape::Server>,
    rule_names: Vec<String>,
    /// The workers' counters, added up once they have stopped.
    tally: Tally,
}

impl Gateway {
    /// A gateway running `config` on `ports` (at least one per side, each with one queue per
    /// worker), with the extras `options` ask for.
    pub fn new(config: &Config, ports: Vec<Port>, options: &Options) -> Result<Gateway> {
        for side in [Interface::Inside, Interface::Outside] {
            if !ports.iter().any(|p| p.interface == side) {
                bail!("the gateway needs a TUN device on the {side:?} side");
            }
        }
        let workers = ports.first().map_or(0, |p| p.queues.len());
        if workers == 0 || ports.iter().any(|p| p.queues.len() != workers) {
            bail!("every TUN device needs one queue per worker");
        }
        let offload = ports[0].queues[0].offload();
        if ports
            .iter()
            .flat_map(|p| &p.queues)
            .any(|q| q.offload() != offload)
        {
            bail!("the TUN devices differ in offloads");
        }
        tracing::info!(
            profile = config.profile.name,
            "IPv4 fragments: {} (IPv6 fragments: dropped)",
            config.profile.fragments.as_str()
        );
        let poll = Poll::new().context("creating the event loop")?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).context("creating the waker")?);
        let metrics = match options.metrics {
            Some(addr) => {
                let metrics = scrape::Server::bind(addr)?;
                tracing::info!(
                    "metrics on http://{}/metrics",
                    metrics.local_addr().unwrap_or(addr)
                );
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
        let capture = options
            .pcap
            .as_deref()
            .map(Capture::create)
            .transpose()?
            .map(|c| Arc::new(Mutex::new(c)));

        let engines = Engine::sharded(config, Instant::now(), random_seed(), workers);
        let rule_names = engines[0].rule_names().map(str::to_string).collect();
        let sharding = Sharding::new(workers, random_seed());
        let mut polls = Vec::with_capacity(workers);
        let mut inboxes = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let poll = Poll::new().context("creating a worker's event loop")?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (packets, packets_in) = mpsc::sync_channel(HANDOFF_LIMIT * workers);
            let (spares, spares_in) = mpsc::sync_channel(HANDOFF_LIMIT);
            let (queries, queries_in) = mpsc::channel();
            inboxes.push(Inbox {
                packets,
                spares,
                queries,
                waker,
            });
            receivers.push(Mailbox {
                packets: packets_in,
                spares: spares_in,
                queries: queries_in,
            });
            polls.push(poll);
        }
        let stopper = Stopper {
            flag: Arc::new(AtomicBool::new(false)),
            wakers: std::iter::once(waker)
                .chain(metrics.as_ref().map(scrape::Server::waker))
                .chain(inboxes.iter().map(|i| Arc::clone(&i.waker)))
                .collect(),
        };
        let member_names: Vec<(IpAddr, String)> = config
            .backend_pools
            .iter()
            .flat_map(|p| &p.members)
            .map(|m| (m.address, m.name.clone()))
            .collect();

        // Deal the queues: worker w takes queue w of every device.
        let mut queues: Vec<Vec<WorkerPort>> = (0..workers).map(|_| Vec::new()).collect();
        for port in ports {
            for (w, tun) in port.queues.into_iter().enumerate() {
                queues[w].push(WorkerPort {
                    tun,
                    interface: port.interface,
                    host: port.host,
                });
            }
        }
        let mut built = Vec::with_capacity(workers);
        let shards = polls.into_iter().zip(receivers).zip(engines);
        for (index, (ports, ((poll, inbox), engine))) in queues.into_iter().zip(shards).enumerate()
        {
            for (i, port) in ports.iter().enumerate() {
                poll.registry()
                    .register(
                        &mut SourceFd(&port.tun.as_raw_fd()),
                        Token(i),
                        Interest::READABLE,
                    )
                    .with_context(|| format!("watching TUN device {}", port.tun.name()))?;
            }
            built.push(Worker::new(
                index,
                engine,
                ports,
                poll,
                inbox,
                inboxes.clone(),
                sharding.clone(),
                offload,
                capture.clone(),
                member_names.clone(),
                stopper.clone(),
            ));
        }
        Ok(Gateway {
            workers: built,
            inboxes,
            poll,
            stopper,
            control,
            metrics,
            rule_names,
            tally: Tally::default(),
        })
    }

    /// A handle that stops [`Gateway::run`].
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// What the workers' shards did, added up; complete once [`Gateway::run`] has returned.
    pub fn counters(&self) -> Counters {
        self.tally.counters.clone()
    }

    /// Runs the workers and serves the control socket and metrics until stopped; fails if a
    /// device disappears.
    pub fn run(&mut self) -> Result<()> {
        let workers = std::mem::take(&mut self.workers);
        let count = workers.len();
        let mut failure = None;
        std::thread::scope(|scope| {
            let mut threads = Vec::with_capacity(count);
            for worker in workers {
                let stopper = self.stopper.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("gateway-{}", worker.index))
                    .spawn_scoped(scope, move || {
                        // A worker that fails or panics stops the others and the serving thread.
                        let _stop = StopOnDrop(stopper);
                        worker.run()
                    });
                match spawned {
                    Ok(thread) => threads.push(thread),
                    Err(e) => {
                        failure = Some(anyhow!(e).context("starting a gateway worker"));
                        self.stopper.stop();
                    }
                }
            }
            let metrics = self.metrics.take().map(|mut server| {
                let ask = Asker {
                    inboxes: self.inboxes.clone(),
                    rule_names: self.rule_names.clone(),
                };
                let stopper = self.stopper.clone();
                std::thread::Builder::new()
                    .name("gateway-metrics".into())
                    .spawn_scoped(scope, move || {
                        let shards = ask.view();
                        // Scrapes close together share one snapshot: whoever reaches the
                        // metrics address makes the workers take at most one a second.
                        let mut last: Option<(Instant, String)> = None;
                        server.run(&|| stopper.stopped(), &mut || {
                            if let Some((at, text)) = &last {
                                if at.elapsed() < SNAPSHOT_REUSE {
                                    return Some(text.clone());
                                }
                            }
                            let text = crate::gateway::metrics::render(&shards.snapshot()?);
                            last = Some((Instant::now(), text.clone()));
                            Some(text)
                        })
                    })
            });
            let metrics = match metrics.transpose() {
                Ok(thread) => thread,
                Err(e) => {
                    failure = Some(anyhow!(e).context("starting the metrics thread"));
                    self.stopper.stop();
                    None
                }
            };
            if let Err(e) = self.serve() {
                failure.get_or_insert(e);
            }
            self.stopper.stop();
            // Metrics that failed leave the gateway forwarding: said, not fatal.
            match metrics.map(|t| t.join()) {
                Some(Ok(Err(e))) => tracing::error!("metrics stopped: {e:#}"),
                Some(Err(_)) => tracing::error!("the metrics thread panicked"),
                _ => {}
            }
            for thread in threads {
                match thread.join() {
                    Ok(Ok(tally)) => self.tally.add(&tally),
                    Ok(Err(e)) => {
                        failure.get_or_insert(e);
                    }
                    Err(_) => {
                        failure.get_or_insert(anyhow!("a gateway worker panicked"));
                    }
                }
            }
        });
        self.log_tally(count);
        failure.map_or(Ok(()), Err)
    }

    /// The serving thread's loop: the control socket, until stopped.
    fn serve(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(16);
        while !self.stopper.stopped() {
            match self.poll.poll(&mut events, None) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.context("waiting for control clients")?,
            }
            // Only the control socket and the waker are registered here.
            if events.iter().any(|e| e.token() == CONTROL) {
                let mut shards = Ask {
                    inboxes: &self.inboxes,
                    rule_names: &self.rule_names,
                };
                if let Some(control) = &mut self.control {
                    control.serve(&mut shards);
                }
            }
        }
        Ok(())
    }

    fn log_tally(&self, workers: usize) {
        let t = &self.tally.device;
        let c = &self.tally.counters;
        let drops: Vec<String> = c
            .drops()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect();
        tracing::info!(
            workers,
            forwarded = c.forwarded,
            flows_created = c.flows_created,
            flows_expired = c.flows_expired,
            resets_sent = c.resets_sent,
            out_of_window = c.out_of_window,
            fragments_forwarded = c.fragments_forwarded,
            tx_errors = t.tx_errors,
            undeliverable = t.undeliverable,
            malformed = t.malformed,
            handed_over = t.handed_over,
            handover_dropped = t.handover_dropped,
            "gateway stopped; drops: {}",
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops.join(" ")
            }
        );
    }
}

/// A worker's queue of one device.
struct WorkerPort {
    tun: Tun,
    interface: Interface,
    host: Option<IpAddr>,
}

/// One worker: a shard of the engine and a queue of every device.
struct Worker {
    index: usize,
    engine: Engine,
    ports: Vec<WorkerPort>,
    poll: Poll,
    mailbox: Mailbox,
    /// Every worker's inbox, this one's included.
    peers: Vec<Inbox>,
    /// Which peers were handed packets since they were last woken.
    to_wake: Vec<bool>,
    sharding: Sharding,
    stopper: Stopper,
    /// The bytes before each packet in a frame: the virtio-net header with offloads, else none.
    header: usize,
    /// What one read brings: a frame, its packet at `header`.
    frame: Vec<u8>,
    /// Which devices may still hold packets.
    readable: Vec<bool>,
    /// Handover buffers back from their owners, and how many are out.
    spare: Vec<Vec<u8>>,
    lent: usize,
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
    /// Where the engine writes the packets it generates.
    /// (Fragments the engine held are longer than the packets it makes.)
    tx_buf: Vec<u8>,
    /// Where `--pcap` records packets; shared by the workers.
    capture: Option<Arc<Mutex<Capture>>>,
    traffic: Traffic,
    /// Member addresses and names, for log lines.
    member_names: Vec<(IpAddr, String)>,
    tally: Tally,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn new(
        index: usize,
        engine: Engine,
        ports: Vec<WorkerPort>,
        poll: Poll,
        mailbox: Mailbox,
        peers: Vec<Inbox>,
        sharding: Sharding,
        offload: bool,
        capture: Option<Arc<Mutex<Capture>>>,
        member_names: Vec<(IpAddr, String)>,
        stopper: Stopper,
    ) -> Worker {
        let header = if offload { crate::sys::tun::HEADER } else { 0 };
        Worker {
            index,
            engine,
            readable: vec![false; ports.len()],
            outgoing: vec![Vec::new(); ports.len()],
            ports,
            poll,
            mailbox,
            to_wake: vec![false; peers.len()],
            peers,
            sharding,
            stopper,
            header,
            frame: vec![0; header + BUF_LEN],
            spare: Vec::new(),
            lent: 0,
            singles: (0..tun_rs::IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(SINGLE_LEN))
                .collect(),
            pending: 0,
            batch: Vec::with_capacity(tun_rs::IDEAL_BATCH_SIZE),
            gro: tun_rs::GROTable::default(),
            tx_buf: vec![0; packet::CONTROL_LEN.max(packet::HELD_LEN)],
            capture,
            traffic: Traffic::default(),
            member_names,
            tally: Tally::default(),
        }
    }

    /// Runs until stopped; fails if a device disappears.
    fn run(mut self) -> Result<Tally> {
        let mut events = Events::with_capacity(64);
        while !self.stopper.stopped() {
            // A device left with packets (budget spent) is served again without waiting.
            let timeout = if self.readable.contains(&true) {
                Some(Duration::ZERO)
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
                let Token(i) = event.token();
                if let Some(readable) = self.readable.get_mut(i) {
                    *readable = true;
                }
            }
            for i in 0..self.ports.len() {
                // Packets handed over first: they were read before what the drain reads now.
                self.serve_inbox();
                if self.readable[i] {
                    self.readable[i] = self.drain(i)?;
                }
            }
            self.serve_inbox();
            self.engine.handle_timeout(Instant::now());
            self.flush();
            self.wake_peers();
            self.flush_capture();
        }
        self.tally.counters = self.engine.counters();
        Ok(self.tally)
    }

    /// Reads the frames queued on port `i`, at most [`BUDGET`] so that one busy device cannot
    /// starve the others, the timers or a stop; each goes to its owner. True if frames may be
    /// left (the devices are edge-triggered, so the caller must come back without waiting).
    fn drain(&mut self, i: usize) -> Result<bool> {
        let mut more = true;
        for _ in 0..BUDGET {
            let port = &self.ports[i];
            let received = match port.tun.recv_frame(&mut self.frame) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.tally.device.malformed += 1;
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
            let interface = port.interface;
            let packet = &self.frame[self.header..self.header + received.len];
            match self.sharding.owner(packet, interface) {
                Some(owner) if owner != self.index => self.hand_over(owner, interface, received),
                _ => self.forward(interface, received),
            }
        }
        self.send_batches();
        self.flush();
        Ok(more)
    }

    /// Gives the frame just read to the worker that owns its flow.
    fn hand_over(&mut self, owner: usize, interface: Interface, received: Received) {
        if self.lent >= HANDOFF_LIMIT {
            self.tally.device.handover_dropped += 1;
            return;
        }
        // A buffer grows to the largest frame it has carried, once: no allocation when warm.
        let mut frame = self.spare.pop().unwrap_or_default();
        frame.clear();
        frame.extend_from_slice(&self.frame[..self.header + received.len]);
        let handover = Handover {
            interface,
            received,
            frame,
            from: self.index,
        };
        match self.peers[owner].packets.try_send(handover) {
            Ok(()) => {
                self.lent += 1;
                self.tally.device.handed_over += 1;
                self.to_wake[owner] = true;
            }
            // The owner is gone (the gateway is stopping): the packet is lost, and counted.
            Err(TrySendError::Full(h) | TrySendError::Disconnected(h)) => {
                self.spare.push(h.frame);
                self.tally.device.handover_dropped += 1;
            }
        }
    }

    /// Wakes the workers handed packets since the last time, once each.
    fn wake_peers(&mut self) {
        for (peer, wake) in self.peers.iter().zip(&mut self.to_wake) {
            if std::mem::take(wake) {
                let _ = peer.waker.wake();
            }
        }
    }

    /// Takes what the other workers and the serving thread sent.
    fn serve_inbox(&mut self) {
        while let Ok(frame) = self.mailbox.spares.try_recv() {
            self.lent = self.lent.saturating_sub(1);
            self.spare.push(frame);
        }
        while let Ok(mut handover) = self.mailbox.packets.try_recv() {
            std::mem::swap(&mut self.frame, &mut handover.frame);
            self.forward(handover.interface, handover.received);
            std::mem::swap(&mut self.frame, &mut handover.frame);
            // Never full: the lender has at most HANDOFF_LIMIT out.
            let _ = self.peers[handover.from].spares.try_send(handover.frame);
        }
        while let Ok((query, reply)) = self.mailbox.queries.try_recv() {
            let _ = reply.send(self.answer(query));
        }
        self.send_batches();
        self.flush();
    }

    fn answer(&mut self, query: Query) -> Answer {
        let now = Instant::now();
        match query {
            Query::Flows => Answer::Flows(
                self.engine
                    .flows(now)
                    .map(|f| FlowRow::new(&self.engine, &f))
                    .collect(),
            ),
            Query::Expire(rule) => {
                let count = self
                    .engine
                    .expire_now(now, |name| rule.as_deref().is_none_or(|r| r == name));
                self.flush();
                Answer::Expired(count)
            }
            Query::Snapshot => Answer::Snapshot(Box::new(Snapshot::of(
                &self.engine,
                &self.traffic,
                &self.tally.device,
                now,
            ))),
        }
    }

    /// Hands the packet in `frame` to the shard and sends or queues what it forwards.
    fn forward(&mut self, interface: Interface, received: Received) {
        let (h, len) = (self.header, received.len);
        self.traffic.count(interface, Direction::In, len);
        self.record(h, len);
        let packet = &mut self.frame[h..h + len];
        let verdict = self.engine.handle_packet_with(
            Instant::now(),
            interface,
            packet,
            received.shape.checksum(),
        );
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
        let Some(j) = port_for(&self.ports, out, dst) else {
            self.tally.device.undeliverable += 1;
            tracing::debug!(%dst, "no device leads to this destination; packet dropped");
            return;
        };
        self.record(h, len);
        self.traffic.count(out, Direction::Out, len);
        // With offloads (a header), single packets wait to be coalesced.
        if h > 0 && received.shape == Shape::Single && h + len <= SINGLE_LEN {
            let single = &mut self.singles[self.pending];
            single.clear();
            single.extend_from_slice(&self.frame[..h + len]);
            self.outgoing[j].push(self.pending);
            self.pending += 1;
            if self.pending == self.singles.len() {
                self.send_batches();
            }
        } else {
            // What waits for this port goes first: a flow's packets keep their order.
            self.send_batch(j);
            if let Err(e) = self.ports[j].tun.send_frame(&self.frame[..h + len]) {
                self.tally.device.tx_errors += 1;
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
            self.tally.device.tx_errors += 1;
            tracing::debug!(device = self.ports[j].tun.name(), "write failed: {e}");
        }
        for (&k, single) in self.outgoing[j].iter().zip(self.batch.drain(..)) {
            self.singles[k] = single;
        }
        self.outgoing[j].clear();
    }

    /// Records the packet in the frame, if there is a capture.
    fn record(&mut self, h: usize, len: usize) {
        let Some(capture) = &self.capture else {
            return;
        };
        let mut capture = capture.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = capture.record(&self.frame[h..h + len]) {
            tracing::warn!("{e:#}; capture stopped");
            drop(capture);
            self.capture = None;
        }
    }

    fn flush_capture(&mut self) {
        let Some(capture) = &self.capture else {
            return;
        };
        let flushed = capture
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush();
        if let Err(e) = flushed {
            tracing::warn!("{e:#}; capture stopped");
            self.capture = None;
        }
    }

    /// Sends the packets the shard generated and logs its events.
    fn flush(&mut self) {
        while let Some(tx) = self.engine.poll_transmit(&mut self.tx_buf) {
            self.send_generated(tx.interface, tx.len);
        }
        while let Some(event) = self.engine.poll_event() {
            self.log(event);
        }
    }

    /// Writes the first `len` bytes of `tx_buf` out of the port that leads to their
    /// destination on side `out`.
    fn send_generated(&mut self, out: Interface, len: usize) {
        let packet = &self.tx_buf[..len];
        let Some(dst) = destination(packet) else {
            return;
        };
        let Some(j) = port_for(&self.ports, out, dst) else {
            self.tally.device.undeliverable += 1;
            tracing::debug!(%dst, "no device leads to this destination; packet dropped");
            return;
        };
        if let Some(capture) = &self.capture {
            let mut capture = capture.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = capture.record(packet) {
                tracing::warn!("{e:#}; capture stopped");
            }
        }
        self.traffic.count(out, Direction::Out, len);
        // After what waits for the port: a RST follows the data before it.
        self.send_batch(j);
        if let Err(e) = self.ports[j].tun.send(&self.tx_buf[..len]) {
            self.tally.device.tx_errors += 1;
            tracing::debug!(device = self.ports[j].tun.name(), "write failed: {e}");
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

/// The port of `ports` that leads to `dst` on side `out`: the device of that host, else
/// the side's catch-all device.
fn port_for(ports: &[WorkerPort], out: Interface, dst: IpAddr) -> Option<usize> {
    ports
        .iter()
        .position(|p| p.interface == out && p.host == Some(dst))
        .or_else(|| {
            ports
                .iter()
                .position(|p| p.interface == out && p.host.is_none())
        })
}

/// The destination of a packet the engine accepted (so its header is valid).
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

/// A seed for the flow table's and the sharding's hash, so outsiders cannot aim collisions.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
