//! The gateway: the sans-IO engine driven by TUN devices and the monotonic clock, one worker
//! thread per core.
//!
//! Every TUN device has one queue per worker, and every worker runs one shard of the engine
//! ([`Engine::sharded`]) in its own event loop (`worker.rs`): it reads packets from its queues,
//! hands each to its shard, writes what is forwarded to its queue of the device that leads to
//! the destination, runs the timers, sends the RSTs the shard made and logs flow creation and
//! expiry with `tracing`. Its devices are seen through the [`io::PacketIo`] seam and the clock
//! is read once per turn of its loop, so unit tests drive workers over in-memory devices in
//! virtual time.
//!
//! A packet belongs to the shard [`Sharding::owner`] names: a hash of the flow's remote
//! endpoint, the same both ways. A steering eBPF program on every device (`steering.rs`,
//! [`crate::sys::steer`]) computes the same hash in the kernel and puts each packet on its
//! owner's queue: queue `w` of every device is worker `w`'s. Where the kernel refuses the
//! program (or `IDLEGATE_TUN_STEERING=off`), it picks the queue by its own hash of the flow and
//! then by the queue the flow was last written from, for at most 4,096 flows a device for 3 s.
//! A packet read by another worker than its owner (any, without steering; with it, only what
//! the program cannot place: ICMP errors, later fragments, IPv6 extension headers) is copied
//! into a buffer from a bounded pool and handed over to the owner (`handoff.rs`); the buffer
//! comes back the same way. There is no lock on the per-packet path (except with `--pcap`, whose one file the
//! workers share), and no allocation once the pools are warm.
//!
//! The thread that calls [`Gateway::run`] serves the control socket; the metrics (`--metrics`)
//! and the HTTP API (`--api`, `api/`, fed the workers' events by `feed.rs`) each have a thread
//! of their own ([`crate::obs::scrape`]), so that no one who can reach the metrics
//! address can hold up `idlegate flows`. Both ask every worker through its contact and add up
//! the answers.

mod api;
mod ask;
pub mod control;
mod feed;
mod handoff;
pub mod io;
pub mod metrics;
pub mod steering;
mod worker;

use crate::gateway::control::Control;
use crate::gateway::metrics::DeviceCounters;
use crate::obs::capture::{self, Capture};
use crate::obs::scrape;
use crate::sys::tun::Tun;
use anyhow::{anyhow, bail, Context, Result};
use ask::{Ask, Asker, Recent};
use handoff::{Contact, WAKER};
use idlegate_core::Config;
use idlegate_core::Sharding;
use idlegate_core::{Counters, Engine, Interface};
use io::PacketIo;
use mio::{Events, Interest, Poll, Token, Waker};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use steering::Steering;
use worker::{DeviceQueue, Worker, WorkerSetup};

/// A TUN device attached to one side of the gateway.
pub struct Attachment {
    /// One queue per worker, all made by [`Tun::create_queues`].
    pub queues: Vec<Tun>,
    pub interface: Interface,
    /// The address of the host behind it, or `None` for a device that takes every destination
    /// on its side (a router-style attachment).
    pub host: Option<IpAddr>,
}

/// What a gateway offers besides forwarding.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The control socket `idlegate flows` talks to.
    pub control: Option<PathBuf>,
    /// A capture file (pcapng) of every packet seen and made, on its side, in or out.
    pub pcap: Option<PathBuf>,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// Where to serve the HTTP API and the live page (`--api`).
    pub api: Option<ApiOptions>,
}

/// The HTTP API and live page (`--api ADDR`, `--api-token-file FILE`): where, and the token
/// every request must carry (required by the command line for an address not on loopback).
#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub addr: std::net::SocketAddr,
    pub token: Option<String>,
}

/// Most workers a gateway runs.
pub const MAX_WORKERS: usize = 64;

/// How many workers a gateway runs unless told: `IDLEGATE_WORKERS` if set (so that the whole
/// suite can run with one), else [`workers_for`] the cores this process may run on.
pub fn default_workers() -> usize {
    std::env::var("IDLEGATE_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| workers_for(std::thread::available_parallelism().map_or(1, usize::from)))
        .clamp(1, MAX_WORKERS)
}

/// The workers for `cores` cores: one core fewer, at least one. A worker is not the only one
/// a packet costs: the kernel's TUN transmit, the wake-up of the worker and, inside the
/// worker's write, the receiving stack's input all run on some core too, as do the endpoints
/// when they share the machine (`lab up`). A worker on every core fights them for it: on two
/// cores shared with a client and a server, two workers carried ~9,500 new TCP connections/s
/// where one carried ~13,200 (each sleeps and is woken more often: 1.5 context switches per
/// connection instead of 0.4).
pub fn workers_for(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
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

const CONTROL: Token = Token(usize::MAX - 1);
/// How long one snapshot of the workers answers scrapes (`--metrics`, and the API's
/// `/metrics` and `/api/counters`): at most one a second is taken for each.
const SNAPSHOT_REUSE: Duration = Duration::from_secs(1);
/// How long the serving thread waits for a worker's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

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
    workers: Vec<Worker<Tun>>,
    /// How to reach each worker.
    contacts: Vec<Contact>,
    poll: Poll,
    stopper: Stopper,
    /// Where `idlegate flows` asks.
    control: Option<Control>,
    /// Where `--metrics` serves Prometheus, on its own thread while the gateway runs.
    metrics: Option<scrape::Server>,
    /// Where `--api` serves the HTTP API and the live page, on its own thread while the
    /// gateway runs, with what it serves.
    api: Option<(scrape::Server, api::Api, crate::obs::http::Guard)>,
    rule_names: Vec<String>,
    /// How packets reach their owner's queue.
    steering: Steering,
    /// The workers' counters, added up once they have stopped.
    tally: Tally,
}

impl Gateway {
    /// A gateway running `config` on `attachments` (at least one per side, each with one queue per
    /// worker), with the extras `options` ask for.
    pub fn new(
        config: &Config,
        attachments: Vec<Attachment>,
        options: &Options,
    ) -> Result<Gateway> {
        for side in [Interface::Inside, Interface::Outside] {
            if !attachments.iter().any(|a| a.interface == side) {
                bail!("the gateway needs a TUN device on the {side:?} side");
            }
        }
        let workers = attachments.first().map_or(0, |a| a.queues.len());
        if workers == 0 || attachments.iter().any(|a| a.queues.len() != workers) {
            bail!("every TUN device needs one queue per worker");
        }
        let offload = attachments[0].queues[0].offload();
        if attachments
            .iter()
            .flat_map(|a| &a.queues)
            .any(|q| q.offload() != offload)
        {
            bail!("the TUN devices differ in offloads");
        }
        tracing::info!(
            profile = config.profile.name,
            "IPv4 fragments: {} (IPv6 fragments: dropped)",
            config.profile.fragments.as_str()
        );
        let floored = idlegate_core::precedence::floored_timers(config);
        if !floored.is_empty() {
            tracing::info!(
                "time_scale {}: {} timer(s) race TCP's own and run at the floor: {}",
                config.time_scale,
                floored.len(),
                floored.join("; ")
            );
        }
        let poll = Poll::new().context("creating the event loop")?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).context("creating the waker")?);
        let metrics = match options.metrics {
            Some(addr) => {
                let metrics =
                    crate::obs::report::listening(scrape::Server::bind(addr), "--metrics", addr)?;
                tracing::info!(
                    "metrics on http://{}/metrics",
                    metrics.local_addr().unwrap_or(addr)
                );
                Some(metrics)
            }
            None => None,
        };
        let api_server = match &options.api {
            Some(api) => {
                let server = crate::obs::report::listening(
                    scrape::Server::bind_for(api.addr, "the API"),
                    "--api",
                    api.addr,
                )?;
                tracing::info!(
                    "api and live view on http://{}/",
                    server.local_addr().unwrap_or(api.addr)
                );
                Some(server)
            }
            None => None,
        };
        let (feed, intake) = match &api_server {
            Some(server) => {
                let (feed, intake) = feed::feed(server.waker());
                (Some(feed), Some(intake))
            }
            None => (None, None),
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
        let capture = match &options.pcap {
            Some(path) => {
                let mut devices = capture::Devices::default();
                for attachment in &attachments {
                    let names = match attachment.interface {
                        Interface::Inside => &mut devices.inside,
                        Interface::Outside => &mut devices.outside,
                    };
                    if let Some(tun) = attachment.queues.first() {
                        names.push(tun.name().to_string());
                    }
                }
                Some(Arc::new(Mutex::new(Capture::create(path, &devices)?)))
            }
            None => None,
        };

        let started = Instant::now();
        let mut engines = Engine::sharded(config, started, random_seed(), workers);
        if api_server.is_some() {
            // The live view draws a flow's bar anew after a gap, not at every packet.
            for engine in &mut engines {
                engine.report_refreshes(Some(api::REFRESHED_AFTER));
            }
        }
        let rule_names: Vec<String> = engines[0].rule_names().map(str::to_string).collect();
        let sharding = Sharding::new(workers, random_seed());
        let steering = steering::steer(&attachments, &sharding);
        let (polls, (contacts, mailboxes)): (Vec<_>, (Vec<_>, Vec<_>)) = handoff::wire(workers)?
            .into_iter()
            .map(|(poll, contact, mailbox)| (poll, (contact, mailbox)))
            .unzip();
        let stopper = Stopper {
            flag: Arc::new(AtomicBool::new(false)),
            wakers: std::iter::once(waker)
                .chain(metrics.as_ref().map(scrape::Server::waker))
                .chain(api_server.as_ref().map(scrape::Server::waker))
                .chain(contacts.iter().map(|c| Arc::clone(&c.waker)))
                .collect(),
        };
        let member_names: Vec<(IpAddr, String)> = config
            .backend_pools
            .iter()
            .flat_map(|p| &p.members)
            .map(|m| (m.address, m.name.clone()))
            .collect();

        // Deal the queues: worker w takes queue w of every device.
        let mut queues: Vec<Vec<DeviceQueue<Tun>>> = (0..workers).map(|_| Vec::new()).collect();
        for attachment in attachments {
            for (w, tun) in attachment.queues.into_iter().enumerate() {
                queues[w].push(DeviceQueue {
                    io: tun,
                    interface: attachment.interface,
                    host: attachment.host,
                });
            }
        }
        let mut built = Vec::with_capacity(workers);
        let shards = polls.into_iter().zip(mailboxes).zip(engines);
        for (index, (mut queues, ((poll, mailbox), engine))) in
            queues.into_iter().zip(shards).enumerate()
        {
            for (i, queue) in queues.iter_mut().enumerate() {
                queue
                    .io
                    .register(poll.registry(), Token(i))
                    .with_context(|| format!("watching TUN device {}", queue.io.name()))?;
            }
            built.push(Worker::new(WorkerSetup {
                index,
                engine,
                queues,
                poll,
                mailbox,
                peers: contacts.clone(),
                sharding: sharding.clone(),
                capture: capture.clone(),
                member_names: member_names.clone(),
                stopper: stopper.clone(),
                feed: feed.clone(),
            }));
        }
        let api = match (api_server, intake, &options.api) {
            (Some(server), Some(intake), Some(options)) => {
                let asker = Asker::new(contacts.clone(), rule_names.clone(), steering);
                let guard = crate::obs::http::Guard {
                    token: options.token.clone(),
                };
                Some((
                    server,
                    api::Api::new(asker, config.clone(), started, intake),
                    guard,
                ))
            }
            _ => None,
        };
        Ok(Gateway {
            api,
            workers: built,
            contacts,
            poll,
            stopper,
            control,
            metrics,
            rule_names,
            steering,
            tally: Tally::default(),
        })
    }

    /// How packets reach their owner's queue: steered by eBPF, or handed over.
    pub fn steering(&self) -> Steering {
        self.steering
    }

    /// Packets one worker read and handed to their owner; complete once [`Gateway::run`] has
    /// returned.
    pub fn handovers(&self) -> u64 {
        self.tally.device.handed_over
    }

    /// Where the API and live page are served (the port bound, for `--api HOST:0`), until
    /// [`Gateway::run`] takes the server to its thread.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api
            .as_ref()
            .and_then(|(server, _, _)| server.local_addr().ok())
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
                    .name(format!("gateway-{}", worker.index()))
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
                let ask = Asker::new(
                    self.contacts.clone(),
                    self.rule_names.clone(),
                    self.steering,
                );
                let stopper = self.stopper.clone();
                std::thread::Builder::new()
                    .name("gateway-metrics".into())
                    .spawn_scoped(scope, move || {
                        let shards = ask.view();
                        // Scrapes close together share one snapshot: whoever reaches the
                        // metrics address makes the workers take at most one a second.
                        let mut last: Recent<(), String> = Recent::new(SNAPSHOT_REUSE);
                        server.run(&|| stopper.stopped(), &mut || {
                            last.get((), || {
                                let s = shards.snapshot().ok_or(())?;
                                Ok::<_, ()>(crate::gateway::metrics::render(&s))
                            })
                            .ok()
                        })
                    })
            });
            let api = self.api.take().map(|(mut server, mut service, guard)| {
                let stopper = self.stopper.clone();
                std::thread::Builder::new()
                    .name("gateway-api".into())
                    .spawn_scoped(scope, move || {
                        server.serve(&|| stopper.stopped(), &mut service, &guard)
                    })
            });
            let api = match api.transpose() {
                Ok(thread) => thread,
                Err(e) => {
                    failure = Some(anyhow!(e).context("starting the API thread"));
                    self.stopper.stop();
                    None
                }
            };
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
            // So does an API that failed.
            match api.map(|t| t.join()) {
                Some(Ok(Err(e))) => tracing::error!("the API stopped: {e:#}"),
                Some(Err(_)) => tracing::error!("the API thread panicked"),
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
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => other.context("waiting for control clients")?,
            }
            // Only the control socket and the waker are registered here.
            if events.iter().any(|e| e.token() == CONTROL) {
                let mut shards = Ask {
                    contacts: &self.contacts,
                    rule_names: &self.rule_names,
                    timeout: ANSWER_TIMEOUT,
                    steering: self.steering,
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
            steering = self.steering.as_str(),
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

/// A seed for the flow table's and the sharding's hash, so outsiders cannot aim collisions.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

#[cfg(test)]
mod tests;
