//! The engine: a stateful NAT / L4 load balancer that forgets idle flows, driven from outside.
//!
//! In the manner of `quinn-proto`, the engine performs no I/O and reads no clock. The driver
//! hands it each packet with the [`Interface`] it came from and the current `Instant`;
//! [`Engine::handle_packet`] rewrites the packet in place and returns a [`Verdict`]: forward it
//! out of the other interface, or drop it for a counted [`DropReason`]. Between packets the
//! driver sleeps until [`Engine::poll_timeout`], then calls [`Engine::handle_timeout`], which
//! expires idle flows. Packets the engine makes itself (RSTs) are taken with
//! [`Engine::poll_transmit`], and what happened to flows with [`Engine::poll_event`].
//!
//! Timers run in whole milliseconds: a flow refreshed at `t` expires at the first millisecond
//! at or after `t + timeout`, never before.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`Engine`] and the per-family core it runs twice |
//! | `api.rs` | what comes out: [`Verdict`], [`Transmit`], [`Event`], flow reports |
//! | `rules.rs` | rule compilation: the config's rules as the packet path runs them |
//! | `path.rs` | the packet path: flow lookup or creation, TCP tracking, translation |
//! | `batch.rs` | batches of packets whose flow lookups overlap ([`Engine::handle_batch`]) |
//! | `fragments.rs` | IPv4 fragments on the packet path |
//! | `expire.rs` | expiry: forgetting flows, with their rules' expiry actions |
//! | `checks.rs` | invariant checks for tests and fuzzing |
//! | `counters.rs` | what the engine did, and why it dropped what it dropped |

use crate::model::config::{Config, NatGateway, Protocols};
use crate::model::expiry::Expiry;
use crate::model::precedence;
use crate::model::profile::{self, Allocation, Fragments, Pickup, Refresh, ResetTarget, TcpTimers};
use crate::state::flow::{Flow, FlowId, FlowState, FlowTable, RuleId};
use crate::state::fragment::FragmentTable;
use crate::state::snat::{Ending, Holds, SnatPorts};
use crate::state::timer::{Tick, TimerWheel};
use crate::wire::error::ParseError;
use crate::wire::family::Endpoint;
use crate::wire::icmp::{self, IcmpError, QuotedSide};
use crate::wire::packet::{
    self, ControlKind, ControlSegment, Headers, Parsed, Protocol, TcpSegment, TransportChecksum,
};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

mod api;
mod batch;
#[cfg(any(test, fuzzing))]
mod checks;
pub mod counters;
mod expire;
mod fragments;
mod path;
mod rules;
#[cfg(test)]
mod tests;

pub use crate::state::flow::Interface;
pub use api::{
    Event, ExpiryCause, FlowInfo, FlowSummary, MadeSegment, Retiming, SnatUsage, Transmit, Verdict,
};
pub use batch::{Batch, BatchPacket, BATCH};
#[cfg(any(test, fuzzing))]
pub use checks::InvariantError;
pub use counters::{Counters, DropReason};
use rules::{rule_names, Rule, Translation};

/// What `idlegate flows`, events and metrics call the flows no rule claims, which a Linux
/// router routes on untranslated ([`crate::profile::Unmatched::Routed`]).
pub const UNTRANSLATED: &str = "(untranslated)";

/// A packet the engine sends on its own: one it makes (a RST, an ACK), or a fragment it held
/// until its first fragment came ([`crate::state::fragment`]).
#[derive(Debug)]
enum Outgoing<E: Endpoint> {
    ControlSegment(ControlSegment<E>),
    Packet(Vec<u8>),
}

/// The engine of one address family, over the rules whose addresses are of that family.
struct Core<E: Endpoint> {
    epoch: Instant,
    rules: Vec<Rule<E>>,
    flows: FlowTable<E>,
    wheel: TimerWheel,
    /// One SNAT port pool per frontend address that has an outbound rule, shared by the
    /// shards of a sharded engine (locked when a flow with a lent port starts or ends).
    snat: Arc<Mutex<Vec<SnatPorts<E::Ip>>>>,
    /// Picks a member from the 5-tuple; fixed, so the choice does not depend on the seed.
    member_hash: foldhash::fast::FixedState,
    /// Who `reset-on-next` answers.
    reset_target: ResetTarget,
    /// Which segments open a flow.
    pickup: Pickup,
    /// Which packets keep a flow alive.
    refresh: Refresh,
    /// How outbound rules pick a flow's public port.
    snat_allocation: Allocation,
    /// Which IPv4 fragments pass, and the translations of the datagrams under way; shared by
    /// the shards of a sharded engine (locked per fragment, never for other packets).
    fragments: Arc<Mutex<FragmentTable<E::Ip>>>,
    transmits: VecDeque<(Interface, Outgoing<E>)>,
    events: VecDeque<Event>,
    counters: Counters,
    /// How many flows all cores (both families, every shard) may hold, and hold now.
    limit: Arc<FlowLimit>,
    /// [`Event::Refreshed`] for a packet on a flow idle at least this long; `None`: none.
    refreshed_after: Option<Tick>,
    /// Flows whose deadline was set under an idle timeout changed since
    /// ([`Engine::retime`]): the deadline it was, and the timeout that set it. An entry holds
    /// while the flow's deadline is still that one (its next packet makes it stale).
    retimed: HashMap<FlowId, (Tick, Tick)>,
}

/// The flows an engine (or all the shards of one) may hold: `max_flows`, counted across both
/// families and every shard, reserved when a flow is created and given back when it is
/// forgotten (not per packet). A full table is said once per episode: again only after it has
/// drained below nine tenths.
#[derive(Debug)]
struct FlowLimit {
    max: usize,
    held: AtomicUsize,
    reported: AtomicBool,
}

impl FlowLimit {
    fn new(max: usize) -> FlowLimit {
        FlowLimit {
            max,
            held: AtomicUsize::new(0),
            reported: AtomicBool::new(false),
        }
    }

    /// Whether the limit is reached (a cheap look, before any work for a new flow).
    fn reached(&self) -> bool {
        self.held.load(Ordering::Relaxed) >= self.max
    }

    /// Takes a place for a new flow, or says there is none.
    fn reserve(&self) -> bool {
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            });
        taken.is_ok()
    }

    /// Gives a forgotten flow's place back.
    fn release(&self) {
        let before = self.held.fetch_sub(1, Ordering::AcqRel);
        if before.saturating_sub(1) < self.max - self.max / 10 {
            self.reported.store(false, Ordering::Relaxed);
        }
    }

    /// Whether this refusal is the first of its episode, the one to say.
    fn first_refusal(&self) -> bool {
        !self.reported.swap(true, Ordering::Relaxed)
    }
}

impl<E: Endpoint> Core<E> {
    /// What events and `idlegate flows` say of a flow.
    fn summary(&self, f: &Flow<E>) -> FlowSummary {
        FlowSummary {
            rule: self.rules[usize::from(f.rule)].id,
            protocol: f.protocol,
            remote: f.remote.into(),
            public: f.public.into(),
            private: f.private.into(),
        }
    }

    /// The next time [`Engine::handle_timeout`] has work to do.
    fn poll_timeout(&self) -> Option<Instant> {
        self.wheel
            .next_wakeup()
            .map(|t| self.epoch + Duration::from_millis(t))
    }

    /// Writes the next packet the engine generated into `buf` (at least [`packet::CONTROL_LEN`]
    /// bytes) and says where it goes.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let (interface, outgoing) = self.transmits.pop_front()?;
            let (len, destination) = match outgoing {
                Outgoing::ControlSegment(control) => {
                    (control.write(buf), Some(control.dst.addr().into()))
                }
                // A held fragment (IPv4 only) whose header the engine read when it came.
                Outgoing::Packet(packet) => (
                    buf.get_mut(..packet.len()).map(|b| {
                        b.copy_from_slice(&packet);
                        packet.len()
                    }),
                    E::fragment_of(&packet).map(|f| f.ip.dst.into()),
                ),
            };
            // A buffer too short for a held fragment loses it, and only it.
            if let (Some(len), Some(destination)) = (len, destination) {
                return Some(Transmit {
                    interface,
                    destination,
                    len,
                });
            }
        }
    }

    /// The next flow event, oldest first.
    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Number of flows the gateway remembers.
    fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Every flow the gateway remembers, as it stands at `now`.
    fn flows(&self, now: Instant) -> impl Iterator<Item = FlowInfo> + '_ {
        let now = self.tick(now);
        self.flows.iter().map(move |(id, f)| {
            let timeout = self.running_timeout(id, f);
            let last_packet = f.deadline.saturating_sub(timeout);
            FlowInfo {
                flow: self.summary(f),
                state: f.state,
                idle_for: Duration::from_millis(now.saturating_sub(last_packet)),
                expires_in: Duration::from_millis(f.deadline.saturating_sub(now)),
                timeout: Duration::from_millis(timeout),
            }
        })
    }

    /// The timeout that set flow `id`'s current deadline: its rule's for its state, unless the
    /// rule's idle timeout changed since its last packet ([`Engine::retime`]).
    fn running_timeout(&self, id: FlowId, f: &Flow<E>) -> Tick {
        match self.retimed.get(&id) {
            Some(&(deadline, timeout)) if deadline == f.deadline => timeout,
            _ => self.rules[usize::from(f.rule)].timeout(f.state),
        }
    }

    /// Runs `changes` (a rule's idle timeout in ticks and expiry action) from now on; the
    /// rules they do not name keep theirs. A flow's current deadline stands; the timeout it
    /// ran under is kept for what it reports.
    fn retime(&mut self, changes: &[(RuleId, Tick, Expiry)]) {
        for &(id, idle, expiry) in changes {
            let Some(index) = self.rules.iter().position(|r| r.id == id) else {
                continue;
            };
            let old = self.rules[index].idle;
            if idle != old {
                for (flow_id, f) in self.flows.iter() {
                    let under_idle =
                        matches!(f.state, FlowState::Established | FlowState::Discarding);
                    if usize::from(f.rule) == index && under_idle {
                        let stale = self
                            .retimed
                            .get(&flow_id)
                            .is_none_or(|&(d, _)| d != f.deadline);
                        if stale {
                            self.retimed.insert(flow_id, (f.deadline, old));
                        }
                    }
                }
            }
            let rule = &mut self.rules[index];
            rule.idle = idle;
            rule.expiry = expiry;
        }
    }

    /// SNAT ports per frontend address with outbound rules.
    fn snat_usage(&self) -> Vec<SnatUsage> {
        self.snat_pools()
            .iter()
            .map(|s| SnatUsage {
                frontend: s.frontend().into(),
                lent: s.lent(),
                held: s.held(),
                free: s.total().saturating_sub(s.lent() + s.held()),
            })
            .collect()
    }

    /// The SNAT port pools. A shard that panicked while holding them left them consistent
    /// (each pool operation completes or changes nothing), so a poisoned lock is taken as is.
    fn snat_pools(&self) -> MutexGuard<'_, Vec<SnatPorts<E::Ip>>> {
        self.snat.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes held by the flow table (slab and index), for the memory benchmark.
    fn flow_memory_bytes(&self) -> usize {
        self.flows.memory_bytes()
    }

    // ---- the per-packet path ---------------------------------------------------------------

    /// `now` in ticks, rounded down.
    fn tick(&self, now: Instant) -> Tick {
        now.saturating_duration_since(self.epoch).as_millis() as Tick
    }

    /// `now` in ticks, rounded down and rounded up.
    fn ticks(&self, now: Instant) -> (Tick, Tick) {
        let elapsed = now.saturating_duration_since(self.epoch);
        let down = elapsed.as_millis() as Tick;
        (
            down,
            down + Tick::from(!elapsed.subsec_nanos().is_multiple_of(1_000_000)),
        )
    }
}

/// The engine. See the module documentation. It runs one `Core` per address family, each
/// over the rules of its family; a packet goes to the core of its IP version.
pub struct Engine {
    v4: Core<SocketAddrV4>,
    v6: Core<SocketAddrV6>,
    /// Every rule's name, by [`RuleId`].
    rule_names: Vec<String>,
}

impl Engine {
    /// Bytes of one IPv4 flow's record in the flow table (for the memory benchmark).
    pub const FLOW_BYTES: usize = std::mem::size_of::<Flow<SocketAddrV4>>();

    /// An engine for `config`, with its clock starting at `now`. `seed` keys the flow tables'
    /// hash; take it from a random source in production.
    pub fn new(config: &Config, now: Instant, seed: u64) -> Engine {
        let v4 = Core::new(config, now, seed);
        let mut v6 = Core::new(config, now, seed.rotate_left(17));
        // One limit over both families.
        v6.limit = Arc::clone(&v4.limit);
        Engine {
            v4,
            v6,
            rule_names: rule_names(config),
        }
    }

    /// `shards` engines for `config` that together act as one: each owns the flows
    /// [`crate::Sharding::owner`] gives it, and all share the SNAT port pools and the
    /// `max_flows` limit, so a member's ports and the table run out exactly when they would in
    /// one engine. Both are touched when a flow starts or ends, not per packet.
    pub fn sharded(config: &Config, now: Instant, seed: u64, shards: usize) -> Vec<Engine> {
        let first = Engine::new(config, now, seed);
        let mut engines = Vec::with_capacity(shards.max(1));
        for i in 1..shards.max(1) {
            let mut engine = Engine::new(config, now, seed.wrapping_add(i as u64));
            engine.v4.snat = Arc::clone(&first.v4.snat);
            engine.v4.fragments = Arc::clone(&first.v4.fragments);
            engine.v6.snat = Arc::clone(&first.v6.snat);
            engine.v4.limit = Arc::clone(&first.v4.limit);
            engine.v6.limit = Arc::clone(&first.v6.limit);
            engines.push(engine);
        }
        engines.insert(0, first);
        engines
    }

    /// Processes one packet that arrived on `from` at `now`, rewriting it in place.
    #[inline]
    pub fn handle_packet(&mut self, now: Instant, from: Interface, packet: &mut [u8]) -> Verdict {
        self.handle_packet_with(now, from, packet, TransportChecksum::Complete)
    }

    /// [`Engine::handle_packet`] for a packet whose transport checksum field holds what
    /// `checksum` says: a driver that reads with checksum offload hands TCP super-segments of
    /// up to 64 KiB with a partial checksum, and each is translated once, as one packet.
    pub fn handle_packet_with(
        &mut self,
        now: Instant,
        from: Interface,
        packet: &mut [u8],
        checksum: TransportChecksum,
    ) -> Verdict {
        // As `handle_parsed` of `Parsed::new(packet)`, each family parsing into its own result.
        match packet.first().map(|b| b >> 4) {
            Some(6) => {
                let headers = Headers::parse(packet);
                self.v6
                    .handle_packet(now, from, packet, headers, checksum, None)
            }
            // IPv4, or nothing the IPv4 core will take: it counts the drop.
            _ => {
                let headers = Headers::parse(packet);
                self.v4
                    .handle_packet(now, from, packet, headers, checksum, None)
            }
        }
    }

    /// [`Engine::handle_packet_with`] for a packet the driver has already read into `parsed`
    /// ([`Parsed::new`] of these very bytes, unchanged since), so that finding its shard
    /// ([`crate::Sharding::owner_of`]) and handling it share one parse.
    #[inline]
    pub fn handle_parsed(
        &mut self,
        now: Instant,
        from: Interface,
        packet: &mut [u8],
        parsed: &Parsed,
        checksum: TransportChecksum,
    ) -> Verdict {
        match *parsed {
            Parsed::V6(headers) => self
                .v6
                .handle_packet(now, from, packet, headers, checksum, None),
            // IPv4, or nothing the IPv4 core will take: it counts the drop.
            Parsed::V4(headers) => self
                .v4
                .handle_packet(now, from, packet, headers, checksum, None),
        }
    }

    /// The next time [`Engine::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.v4.poll_timeout(), self.v6.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires every flow whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.v4.handle_timeout(now);
        self.v6.handle_timeout(now);
    }

    /// Writes the next packet the engine generated into `buf` and says where it goes. `buf`
    /// must hold [`packet::CONTROL_LEN`] bytes for the packets the engine makes, and
    /// [`crate::packet::HELD_LEN`] for the fragments it held; one that does not fit is lost.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        self.v4
            .poll_transmit(buf)
            .or_else(|| self.v6.poll_transmit(buf))
    }

    /// The next flow event, oldest first within each family.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.v4.poll_event().or_else(|| self.v6.poll_event())
    }

    /// What both families' cores have done.
    pub fn counters(&self) -> Counters {
        let mut sum = self.v4.counters().clone();
        sum.add(self.v6.counters());
        sum
    }

    /// Number of flows the gateway remembers.
    pub fn flow_count(&self) -> usize {
        self.v4.flow_count() + self.v6.flow_count()
    }

    /// The names of all rules, as written in the config.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rule_names.iter().map(String::as_str)
    }

    /// The name of rule `id` as written in the config, or [`UNTRANSLATED`] for the flows a
    /// Linux router routes on untranslated.
    pub fn rule_name(&self, id: RuleId) -> &str {
        match self.rule_names.get(usize::from(id)) {
            Some(name) => name,
            None if usize::from(id) == self.rule_names.len() => UNTRANSLATED,
            None => "?",
        }
    }

    /// Every flow the gateway remembers, as it stands at `now`.
    pub fn flows(&self, now: Instant) -> impl Iterator<Item = FlowInfo> + '_ {
        self.v4.flows(now).chain(self.v6.flows(now))
    }

    /// Expires now, with their rules' expiry actions, the flows whose rule `matches` (as a
    /// platform event would: a load balancer redeployed, a NAT gateway swapped). Returns how
    /// many. Not for the per-packet path: it collects the matching flows first.
    pub fn expire_now(&mut self, now: Instant, matches: impl Fn(&str) -> bool) -> usize {
        let names = &self.rule_names;
        let by_id = |id: RuleId| names.get(usize::from(id)).is_some_and(|n| matches(n));
        self.v4.expire_now(now, by_id) + self.v6.expire_now(now, by_id)
    }

    /// SNAT ports per frontend address with outbound rules.
    pub fn snat_usage(&self) -> impl Iterator<Item = SnatUsage> {
        self.v4.snat_usage().into_iter().chain(self.v6.snat_usage())
    }

    /// Bytes held by the flow tables (slab and index), for the memory benchmark.
    pub fn flow_memory_bytes(&self) -> usize {
        self.v4.flow_memory_bytes() + self.v6.flow_memory_bytes()
    }

    /// Runs `changes` from now on ([`Retiming::between`] the config the engine runs and the
    /// one with a rule's idle settings changed, [`Config::with_rule_change`]); every rule they
    /// do not name keeps what it runs, so changes made one after another each hold. How a
    /// change applies, as Linux conntrack applies a changed timeout sysctl (a timeout is read
    /// when a packet sets a deadline; the vendors do not document what their boxes do):
    /// - a new expiry action applies to every flow of the rule at its expiry from now on;
    /// - a new idle timeout applies to new flows, and to each existing flow from its next
    ///   packet: its current deadline stands.
    pub fn retime(&mut self, changes: &[Retiming]) {
        let in_ticks = |d: Duration| d.as_nanos().div_ceil(1_000_000) as Tick;
        for r in changes {
            let change = [(r.rule, in_ticks(r.idle_timeout), r.expiry)];
            self.v4.retime(&change);
            self.v6.retime(&change);
        }
    }

    /// Says [`Event::Refreshed`] for every packet that refreshes a flow idle at least `after`
    /// (in the engine's time, scaled timers and all); `None` (the default): never, and the
    /// per-packet cost is one branch.
    pub fn report_refreshes(&mut self, after: Option<Duration>) {
        let ticks = after.map(|d| d.as_millis() as Tick);
        self.v4.refreshed_after = ticks;
        self.v6.refreshed_after = ticks;
    }
}

impl Retiming {
    /// What differs between the idle settings `before` runs and those `after` runs, rule by
    /// rule (by [`RuleId`]; `after` is `before` with rules' idle settings changed, the same
    /// rules in the same order), scaled as the engine scales its rules when it is made. A
    /// change to a NAT gateway names the outbound rules whose pools it serves too, whose
    /// timeout is its.
    pub fn between(before: &Config, after: &Config) -> Vec<Retiming> {
        let old = rules::idle_settings(before);
        rules::idle_settings(after)
            .into_iter()
            .enumerate()
            .filter(|(i, setting)| old.get(*i) != Some(setting))
            .map(|(i, (timeout, expiry))| Retiming {
                rule: i as RuleId,
                idle_timeout: after.scaled(timeout),
                expiry,
            })
            .collect()
    }
}
