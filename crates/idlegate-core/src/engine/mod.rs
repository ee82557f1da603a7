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

use crate::model::config::{Config, NatGateway, Protocols};
use crate::model::expiry::Expiry;
use crate::model::precedence;
use crate::model::profile::{self, Allocation, Fragments, Pickup, Refresh, ResetTarget, TcpTimers};
use crate::state::flow::{Flow, FlowId, FlowState, FlowTable, RuleId};
use crate::state::fragment::FragmentTable;
use crate::state::snat::{Ending, Holds, SnatPorts};
use crate::state::timer::{Tick, TimerWheel};
use crate::wire::family::Endpoint;
use crate::wire::icmp::{self, IcmpError, QuotedSide};
use crate::wire::packet::{
    self, Control, ControlKind, Headers, ParseError, Parsed, Protocol, TcpSegment,
    TransportChecksum,
};
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub mod counters;
pub use crate::state::flow::Interface;
pub use counters::{Counters, DropReason};

/// What to do with a packet the driver handed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) packet out of `interface`, to `destination`: the IP destination
    /// address of the packet as rewritten, so a driver with several devices on one side picks
    /// the one that leads there without reading the packet again.
    Forward {
        interface: Interface,
        destination: IpAddr,
    },
    /// Discard it.
    Drop(DropReason),
    /// Kept: a fragment ahead of its first one, copied; the engine sends it (translated) with
    /// [`Engine::poll_transmit`] once the first fragment has come ([`crate::state::fragment`]).
    Held,
}

impl Verdict {
    /// The interface a forwarded packet leaves by; `None` for a drop or a held fragment.
    pub fn interface(&self) -> Option<Interface> {
        match self {
            Verdict::Forward { interface, .. } => Some(*interface),
            Verdict::Drop(_) | Verdict::Held => None,
        }
    }
}

/// The endpoints and rule of a flow, as reported in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSummary {
    pub rule: RuleId,
    pub protocol: Protocol,
    pub remote: SocketAddr,
    pub public: SocketAddr,
    pub private: SocketAddr,
}

/// The SNAT ports of one frontend address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatUsage {
    pub frontend: IpAddr,
    /// Lent to flows.
    pub lent: usize,
    /// Waiting out their hold after a flow ended.
    pub held: usize,
    /// Ready to lend (held ports whose hold is over count as held until lent again).
    pub free: usize,
}

/// A flow as `idlegate flows` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo {
    pub flow: FlowSummary,
    pub state: FlowState,
    /// Since the flow's last packet.
    pub idle_for: Duration,
    /// Until it expires, unless a packet comes.
    pub expires_in: Duration,
}

/// Why a flow expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryCause {
    /// Its idle timeout ran out.
    Idle,
    /// The driver asked, whatever the flow's idle time ([`Engine::expire_now`]).
    Forced,
}

/// Something that happened to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Created {
        flow: FlowSummary,
    },
    Expired {
        flow: FlowSummary,
        /// The state the flow expired in.
        state: FlowState,
        /// The timeout of that state (scaled): what ran out, for an idle expiry.
        timeout: Duration,
        /// How long the flow had been idle when it expired.
        idle_for: Duration,
        /// Whether its timeout ran out or the driver asked.
        cause: ExpiryCause,
        /// What was done: `Reset` only when RSTs were actually sent.
        action: Expiry,
    },
    /// A member's new outbound connection found no free SNAT port; its SYN was dropped.
    PortExhausted {
        rule: RuleId,
        frontend: IpAddr,
        member: IpAddr,
    },
    /// The gateway holds `max_flows` flows (all shards together): new ones are refused until
    /// some end. Said once, and again only after the table has drained below nine tenths.
    TableFull {
        max_flows: usize,
    },
}

/// A packet the engine sends on its own: one it makes (a RST, an ACK), or a fragment it held
/// until its first fragment came ([`crate::state::fragment`]).
#[derive(Debug)]
enum Outgoing<E: Endpoint> {
    Control(Control<E>),
    Packet(Vec<u8>),
}

/// A packet the engine generated, written into the driver's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Send it out of this interface.
    pub interface: Interface,
    /// Its length in the buffer.
    pub len: usize,
}

/// How a rule translates.
#[derive(Debug, Clone)]
enum Translation<E: Endpoint> {
    /// Inbound: frontend → one of `members` at `backend_port`.
    LoadBalance {
        frontend: E,
        members: Vec<E::Ip>,
        backend_port: u16,
    },
    /// Inbound NAT: frontend ports from `first_port` map one to one onto `members`, each at
    /// `backend_port`.
    InboundNat {
        frontend: E::Ip,
        first_port: u16,
        members: Vec<E::Ip>,
        backend_port: u16,
    },
    /// Outbound: members leave from `frontend` with a port from `snat[pool]`.
    Outbound {
        frontend: E::Ip,
        members: Vec<E::Ip>,
        snat: usize,
    },
}

/// A rule as the engine runs it: timers already scaled to ticks.
#[derive(Debug, Clone)]
struct Rule<E: Endpoint> {
    /// The rule's place in the whole config (both families).
    id: RuleId,
    translation: Translation<E>,
    protocols: Protocols,
    idle: Tick,
    tcp: TcpTicks,
    udp: UdpTicks,
    expiry: Expiry,
}

/// A profile's timers of TCP states other than ESTABLISHED, in ticks.
#[derive(Debug, Clone, Copy)]
struct TcpTicks {
    syn_sent: Tick,
    syn_received: Tick,
    fin_wait: Tick,
    close_wait: Tick,
    last_ack: Tick,
    time_wait: Tick,
    close: Tick,
}

impl TcpTicks {
    fn new(t: &TcpTimers, ticks: &impl Fn(Duration) -> Tick) -> TcpTicks {
        TcpTicks {
            syn_sent: ticks(t.syn_sent),
            syn_received: ticks(t.syn_received),
            fin_wait: ticks(t.fin_wait),
            close_wait: ticks(t.close_wait),
            last_ack: ticks(t.last_ack),
            time_wait: ticks(t.time_wait),
            close: ticks(t.close),
        }
    }
}

/// A profile's UDP timeouts, in ticks.
#[derive(Debug, Clone, Copy)]
struct UdpTicks {
    unreplied: Tick,
    replied: Tick,
}

impl<E: Endpoint> Rule<E> {
    /// The side that opens this rule's connections.
    fn origin(&self) -> Interface {
        match self.translation {
            Translation::LoadBalance { .. } | Translation::InboundNat { .. } => Interface::Outside,
            Translation::Outbound { .. } => Interface::Inside,
        }
    }

    fn timeout(&self, state: FlowState) -> Tick {
        match state {
            FlowState::Established | FlowState::Discarding => self.idle,
            FlowState::SynSent => self.tcp.syn_sent,
            FlowState::SynReceived => self.tcp.syn_received,
            FlowState::FinWait => self.tcp.fin_wait,
            FlowState::CloseWait => self.tcp.close_wait,
            FlowState::LastAck => self.tcp.last_ack,
            FlowState::TimeWait => self.tcp.time_wait,
            FlowState::Closed => self.tcp.close,
            FlowState::Unreplied => self.udp.unreplied,
            FlowState::Replied => self.udp.replied,
        }
    }
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

const MEMBER_HASH_SEED: u64 = 0x1d1e_9a7e;
/// Ports masquerade tries, after the member's own, before it gives up on a new connection.
const MASQUERADE_TRIES: usize = 64;

/// A NAT gateway's ports: its frontend's whole range, lent on demand to the members of the
/// pools it serves, held as Azure NAT Gateway holds them.
fn nat_gateway_ports<E: Endpoint>(
    config: &Config,
    g: &NatGateway,
    frontend: E::Ip,
    ticks: &impl Fn(Duration) -> Tick,
) -> SnatPorts<E::Ip> {
    let policy = &profile::AZURE_NATGW.snat;
    let holds = Holds {
        after_fin: ticks(policy.hold_after_fin),
        after_rst: ticks(policy.hold_after_rst),
    };
    let members: Vec<E::Ip> = g
        .backend_pools
        .iter()
        .flat_map(|&p| members_of::<E>(config, p))
        .collect();
    SnatPorts::shared(
        frontend,
        &members,
        config.snat_port_candidates(g.frontend),
        holds,
    )
}

/// The SNAT ports of frontend `frontend`: a block per member of every pool whose outbound rule
/// leaves from it, in rule order, from the ports its inbound rules do not claim.
fn snat_ports<E: Endpoint>(
    config: &Config,
    frontend: usize,
    address: E::Ip,
    ticks: &impl Fn(Duration) -> Tick,
) -> SnatPorts<E::Ip> {
    let members = config
        .outbound_rules
        .iter()
        .filter(|r| r.frontend == frontend)
        .flat_map(|r| {
            members_of::<E>(config, r.backend_pool).map(|m| (m, usize::from(r.ports_per_member)))
        });
    let blocks: Vec<(E::Ip, usize)> = members.collect();
    let ports = config.snat_port_candidates(frontend);
    let policy = &config.profile.snat;
    let holds = Holds {
        after_fin: ticks(policy.hold_after_fin),
        after_rst: ticks(policy.hold_after_rst),
    };
    match policy.allocation {
        Allocation::PerMember => SnatPorts::new(address, &blocks, ports, holds),
        Allocation::Shared | Allocation::PreservePort => {
            let members: Vec<E::Ip> = blocks.iter().map(|&(m, _)| m).collect();
            SnatPorts::shared(address, &members, ports, holds)
        }
    }
}

/// The addresses of pool `pool`'s members of family `E` (a rule's members are all of its
/// frontend's family: the config sees to it).
fn members_of<E: Endpoint>(config: &Config, pool: usize) -> impl Iterator<Item = E::Ip> + '_ {
    config.backend_pools[pool]
        .members
        .iter()
        .filter_map(|m| E::ip_of(m.address))
}

/// The rules' names in the engine's order, which is their [`RuleId`]: LB rules, inbound NAT
/// rules, NAT gateways (before outbound rules: for the pools they serve they take precedence),
/// outbound rules. [`Core::new`] numbers the rules in the same order.
fn rule_names(config: &Config) -> Vec<String> {
    let lb = config.lb_rules.iter().map(|r| &r.name);
    let nat = config.inbound_nat_rules.iter().map(|r| &r.name);
    let gw = config.nat_gateways.iter().map(|g| &g.name);
    let out = config.outbound_rules.iter().map(|r| &r.name);
    lb.chain(nat).chain(gw).chain(out).cloned().collect()
}

impl<E: Endpoint> Core<E> {
    /// The engine of family `E`: the rules of `config` whose frontend is of that family.
    fn new(config: &Config, now: Instant, seed: u64) -> Core<E> {
        let mut snat_frontends: Vec<usize> = Vec::new();
        let mut snat = Vec::new();
        // Rounded up: a scaled timer never runs short.
        let ticks = |d: Duration| config.scaled(d).as_nanos().div_ceil(1_000_000) as Tick;
        let tcp = TcpTicks::new(&config.profile.tcp, &ticks);
        let udp = UdpTicks {
            unreplied: ticks(config.profile.udp.unreplied),
            replied: ticks(config.profile.udp.replied),
        };
        let ours = |i: usize| E::ip_of(config.frontends[i].address);
        let members = |pool: usize| members_of::<E>(config, pool).collect();
        let mut rules = Vec::new();
        let mut id: RuleId = 0;
        for (i, r) in config.lb_rules.iter().enumerate() {
            id += 1;
            let Some(address) = ours(r.frontend) else {
                continue;
            };
            rules.push(Rule {
                id: id - 1,
                translation: Translation::LoadBalance {
                    frontend: E::at(address, r.frontend_port),
                    members: members(r.backend_pool),
                    backend_port: r.backend_port,
                },
                protocols: r.protocol,
                idle: ticks(precedence::lb_rule(config, i).timeout),
                tcp,
                udp,
                expiry: r.idle.expiry,
            });
        }
        for (i, r) in config.inbound_nat_rules.iter().enumerate() {
            id += 1;
            let Some(address) = ours(r.frontend) else {
                continue;
            };
            rules.push(Rule {
                id: id - 1,
                translation: Translation::InboundNat {
                    frontend: address,
                    first_port: r.first_port,
                    members: r
                        .members
                        .iter()
                        .filter_map(|m| E::ip_of(m.address))
                        .collect(),
                    backend_port: r.backend_port,
                },
                protocols: r.protocol,
                idle: ticks(precedence::inbound_nat_rule(config, i).timeout),
                tcp,
                udp,
                expiry: r.idle.expiry,
            });
        }
        let natgw = &profile::AZURE_NATGW;
        for g in &config.nat_gateways {
            id += 1;
            let Some(address) = ours(g.frontend) else {
                continue;
            };
            let members = g
                .backend_pools
                .iter()
                .flat_map(|&p| members_of::<E>(config, p));
            let pool = snat.len();
            snat_frontends.push(g.frontend);
            snat.push(nat_gateway_ports::<E>(config, g, address, &ticks));
            rules.push(Rule {
                id: id - 1,
                translation: Translation::Outbound {
                    frontend: address,
                    members: members.collect(),
                    snat: pool,
                },
                protocols: Protocols::All,
                idle: ticks(g.idle.timeout),
                tcp: TcpTicks::new(&natgw.tcp, &ticks),
                udp: UdpTicks {
                    unreplied: ticks(natgw.udp.unreplied),
                    replied: ticks(natgw.udp.replied),
                },
                expiry: g.idle.expiry,
            });
        }
        for (i, r) in config.outbound_rules.iter().enumerate() {
            id += 1;
            let Some(address) = ours(r.frontend) else {
                continue;
            };
            let pool = match snat_frontends.iter().position(|&f| f == r.frontend) {
                Some(i) => i,
                None => {
                    snat_frontends.push(r.frontend);
                    snat.push(snat_ports::<E>(config, r.frontend, address, &ticks));
                    snat.len() - 1
                }
            };
            rules.push(Rule {
                id: id - 1,
                translation: Translation::Outbound {
                    frontend: address,
                    members: members(r.backend_pool),
                    snat: pool,
                },
                protocols: r.protocol,
                idle: ticks(precedence::outbound_rule(config, i).timeout),
                tcp,
                udp,
                expiry: r.idle.expiry,
            });
        }
        Core {
            epoch: now,
            rules,
            flows: FlowTable::new(seed),
            wheel: TimerWheel::default(),
            snat: Arc::new(Mutex::new(snat)),
            member_hash: foldhash::fast::FixedState::with_seed(MEMBER_HASH_SEED),
            reset_target: config.profile.reset_on_next,
            pickup: config.pickup,
            refresh: config.profile.refresh,
            snat_allocation: config.profile.snat.allocation,
            fragments: Arc::new(Mutex::new(FragmentTable::new(if E::VERSION == 4 {
                config.profile.fragments
            } else {
                Fragments::Drop
            }))),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            limit: Arc::new(FlowLimit::new(config.max_flows)),
        }
    }

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

    /// Processes one packet that arrived on `from` at `now`, rewriting it in place.
    fn handle_packet(
        &mut self,
        now: Instant,
        from: Interface,
        packet: &mut [u8],
        parsed: Result<Headers<E>, ParseError>,
        checksum: TransportChecksum,
    ) -> Verdict {
        let headers = match parsed {
            Ok(mut h) => {
                h.checksum = checksum;
                h
            }
            Err(ParseError::UnsupportedProtocol) if icmp::is_icmp(packet) => {
                return self.icmp_error(now, from, packet)
            }
            Err(ParseError::Fragment) => return self.fragment(now, from, packet),
            Err(e) => return self.drop(e.into()),
        };
        self.handle_headers(now, from, &headers, packet)
    }

    /// A packet whose headers are read: the flow it belongs to, or a new one, or a drop.
    #[inline]
    fn handle_headers(
        &mut self,
        now: Instant,
        from: Interface,
        headers: &Headers<E>,
        packet: &mut [u8],
    ) -> Verdict {
        if headers.tcp.is_some_and(|s| !s.flags.is_valid()) {
            return self.drop(DropReason::InvalidFlags);
        }
        // Expired means deadline <= now (rounded down); timeouts run from now rounded up, so
        // neither ever cuts a flow short.
        let (now, since) = self.ticks(now);
        match self
            .flows
            .find(from, headers.src, headers.dst, headers.protocol)
        {
            Some(id) if self.flows.get(id).deadline > now => {
                self.forward(id, from, headers, packet, since)
            }
            Some(id) => {
                // Past its deadline but not yet reaped: it is dead, whatever comes now (or,
                // under ack-and-discard, it is discarding).
                if self.expire(id, now, ExpiryCause::Idle) {
                    self.no_flow(from, headers, packet, since)
                } else {
                    self.forward(id, from, headers, packet, since)
                }
            }
            None => self.no_flow(from, headers, packet, since),
        }
    }

    /// The next time [`Engine::handle_timeout`] has work to do.
    fn poll_timeout(&self) -> Option<Instant> {
        self.wheel
            .next_wakeup()
            .map(|t| self.epoch + Duration::from_millis(t))
    }

    /// Expires every flow whose deadline is at or before `now`.
    fn handle_timeout(&mut self, now: Instant) {
        let now = self.tick(now);
        while let Some(id) = self.wheel.poll_expired(&mut self.flows, now) {
            self.expire(id, now, ExpiryCause::Idle);
        }
    }

    /// Writes the next packet the engine generated into `buf` (at least [`packet::CONTROL_LEN`]
    /// bytes) and says where it goes.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let (interface, outgoing) = self.transmits.pop_front()?;
            let len = match outgoing {
                Outgoing::Control(control) => control.write(buf),
                Outgoing::Packet(packet) => buf.get_mut(..packet.len()).map(|b| {
                    b.copy_from_slice(&packet);
                    packet.len()
                }),
            };
            // A buffer too short for a held fragment loses it, and only it.
            if let Some(len) = len {
                return Some(Transmit { interface, len });
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
        self.flows.iter().map(move |(_, f)| {
            let timeout = self.rules[usize::from(f.rule)].timeout(f.state);
            let last_packet = f.deadline.saturating_sub(timeout);
            FlowInfo {
                flow: self.summary(f),
                state: f.state,
                idle_for: Duration::from_millis(now.saturating_sub(last_packet)),
                expires_in: Duration::from_millis(f.deadline.saturating_sub(now)),
            }
        })
    }

    /// Expires now, with their rules' expiry actions, the flows whose rule `matches` (as a
    /// platform event would: a load balancer redeployed, a NAT gateway swapped). Returns how
    /// many. Not for the per-packet path: it collects the matching flows first.
    fn expire_now(&mut self, now: Instant, matches: impl Fn(RuleId) -> bool) -> usize {
        let now = self.tick(now);
        let ids: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| matches(self.rules[usize::from(f.rule)].id))
            .map(|(id, _)| id)
            .collect();
        for &id in &ids {
            self.expire(id, now, ExpiryCause::Forced);
        }
        ids.len()
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

    /// The SNAT ports this core's flows hold, by pool, failing if one is held twice or is not
    /// marked lent in its pool (see [`Engine::check_shards`]).
    fn snat_ports_held(
        &self,
        pools: &[SnatPorts<E::Ip>],
        held: &mut std::collections::HashSet<(usize, u16)>,
        users: &mut [usize],
    ) -> Result<(), String> {
        for (id, flow) in self.flows.iter() {
            let Some(snat) = self.snat_of(flow.rule) else {
                continue;
            };
            users[snat] += 1;
            if self.snat_allocation == Allocation::PreservePort {
                continue;
            }
            let port = flow.public.port();
            if !pools[snat].is_lent(port) || !held.insert((snat, port)) {
                return Err(format!("flow {id}'s SNAT port {port} is not its own"));
            }
        }
        Ok(())
    }

    /// See [`Engine::check_invariants`].
    fn check_invariants(&self) -> Result<(), String> {
        self.flows.check()?;
        let live: Vec<FlowId> = self.flows.iter().map(|(id, _)| id).collect();
        self.wheel.check(&self.flows, &live)?;
        let pools = self.snat_pools();
        let mut users = vec![0usize; pools.len()];
        self.snat_ports_held(&pools, &mut Default::default(), &mut users)?;
        for (pool, users) in pools.iter().zip(users) {
            pool.check()?;
            // Shards share the pools: only a lone engine sees every user of a port.
            if Arc::strong_count(&self.snat) == 1 && pool.lent() != users {
                return Err(format!(
                    "a SNAT pool counts {} ports in use for {users} flows",
                    pool.lent()
                ));
            }
        }
        Ok(())
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

    fn drop(&mut self, reason: DropReason) -> Verdict {
        self.counters.drops[reason as usize] += 1;
        Verdict::Drop(reason)
    }

    /// A packet of a live flow: track it, refresh the flow, translate, forward.
    fn forward(
        &mut self,
        id: FlowId,
        from: Interface,
        headers: &Headers<E>,
        packet: &mut [u8],
        since: Tick,
    ) -> Verdict {
        if self.flows.get(id).state == FlowState::Discarding {
            return self.discard(id, from, headers, packet, since);
        }
        let rule = &self.rules[usize::from(self.flows.get(id).rule)];
        let from_initiator = from == rule.origin();
        let flow = self.flows.get_mut(id);
        let before = flow.state;
        // Only a box that counts data alone (AWS ALB) asks whether a segment is new data.
        let data_only = self.refresh == Refresh::DataOnly;
        let mut new_data = true;
        if headers.tcp.is_none() {
            flow.state = flow.state.after_datagram(from_initiator);
        }
        let mut in_window = true;
        if let Some(segment) = headers.tcp {
            if data_only {
                let (expected, _) = flow.next_seqs(from);
                // A RST counts only if accepted, which changes the state below.
                new_data =
                    !segment.flags.rst() && (segment.end().wrapping_sub(expected) as i32) > 0;
            }
            // A segment out of the windows (a blind FIN, RST or data segment; see
            // [`crate::state::window`]) is passed on but changes nothing here and, as conntrack's
            // INVALID packets, does not refresh the flow.
            in_window = flow.track(from, &segment, from_initiator);
        }
        // A box that counts only data (AWS ALB) lets ACKs and keepalive probes through
        // without refreshing the flow; a change of state always restarts its timer.
        if in_window && (new_data || flow.state != before) {
            let deadline = since + rule.timeout(flow.state);
            self.set_deadline(id, deadline);
        }
        if !in_window {
            self.counters.out_of_window += 1;
        }
        self.translate(id, from, headers, packet)
    }

    /// Rewrites a packet of flow `id` for the other side: DNAT inbound, SNAT outbound.
    fn translate(
        &mut self,
        id: FlowId,
        from: Interface,
        headers: &Headers<E>,
        packet: &mut [u8],
    ) -> Verdict {
        let flow = self.flows.get(id);
        let destination = match from {
            Interface::Outside => {
                packet::rewrite_dst(packet, headers, flow.private);
                flow.private.addr()
            }
            Interface::Inside => {
                packet::rewrite_src(packet, headers, flow.public);
                headers.dst.addr()
            }
        };
        self.counters.forwarded += 1;
        Verdict::Forward {
            interface: from.opposite(),
            destination: destination.into(),
        }
    }

    /// A segment of a flow expired under `ack-and-discard`: what it carries is acknowledged as a
    /// receiver would (data, FIN, a keepalive probe), and dropped. Pure ACKs and RSTs get no
    /// answer. A segment in the flow's windows ([`crate::state::window`]) keeps the discarding flow for
    /// another idle timeout; one outside them (a blind segment) is answered with the flow's
    /// numbers as they were, as a receiver answers an unacceptable segment (RFC 9293
    /// §3.10.7.4), and changes nothing.
    fn discard(
        &mut self,
        id: FlowId,
        from: Interface,
        headers: &Headers<E>,
        packet: &mut [u8],
        since: Tick,
    ) -> Verdict {
        let from_initiator = from == self.rules[usize::from(self.flows.get(id).rule)].origin();
        match headers.tcp {
            // A RST its receiver would accept ends it; a new connection on the tuple replaces it.
            Some(segment) if segment.flags.rst() => {
                if !self
                    .flows
                    .get(id)
                    .accepts_reset(from, &segment, from_initiator)
                {
                    self.counters.out_of_window += 1;
                    return self.drop(DropReason::Discarded);
                }
                self.wheel.remove(&mut self.flows, id);
                self.forget(id, since);
                return self.drop(DropReason::Discarded);
            }
            Some(segment) if segment.flags.is_connect() && from_initiator => {
                self.wheel.remove(&mut self.flows, id);
                self.forget(id, since);
                return self.no_flow(from, headers, packet, since);
            }
            _ => {}
        }
        if let Some(segment) = headers.tcp {
            let flow = self.flows.get_mut(id);
            let (expected, _) = flow.next_seqs(from);
            // The state stays DISCARDING: no other SYN is taken, and nothing else moves it.
            let in_window = !segment.flags.syn() && flow.track(from, &segment, from_initiator);
            if segment.len > 0 || segment.seq != expected || !in_window {
                let (sender_next, own_next) = flow.next_seqs(from);
                let ack = Control {
                    ack: Some(sender_next),
                    ..Control::ack_of(headers, &segment, own_next)
                };
                self.queue(from, ack);
            }
            if !in_window {
                self.counters.out_of_window += 1;
                return self.drop(DropReason::Discarded);
            }
        }
        let rule = &self.rules[usize::from(self.flows.get(id).rule)];
        self.set_deadline(id, since + rule.idle);
        self.drop(DropReason::Discarded)
    }

    /// An ICMP error arriving on `from` about a packet of a live flow: the quoted packet is put
    /// back as the flow's endpoint on that side sent it and the error goes on to that endpoint
    /// (RFC 5508 REQ-4, REQ-5). It neither refreshes nor ends the flow. Errors about no live
    /// flow are dropped (RFC 5508: "SHOULD silently drop").
    fn icmp_error(&mut self, now: Instant, from: Interface, packet: &mut [u8]) -> Verdict {
        let error = match IcmpError::<E>::parse(packet) {
            Ok(e) => e,
            Err(e) => return self.drop(e.into()),
        };
        // The quoted packet went the other way: from the outside, it is one the gateway sent
        // out (public → remote); from the inside, one it delivered in (remote → private).
        let (src, dst) = (error.quoted_dst, error.quoted_src);
        let now = self.tick(now);
        let Some(id) = self.flows.find(from, src, dst, error.protocol) else {
            return self.drop(DropReason::NoFlow);
        };
        let flow = self.flows.get(id);
        if flow.deadline <= now || flow.state == FlowState::Discarding {
            return self.drop(DropReason::NoFlow);
        }
        let destination = match from {
            Interface::Outside => {
                error.translate(packet, QuotedSide::Source, flow.private);
                flow.private.addr()
            }
            Interface::Inside => {
                error.translate(packet, QuotedSide::Destination, flow.public);
                error.outer_dst()
            }
        };
        self.counters.icmp_errors_translated += 1;
        self.counters.forwarded += 1;
        Verdict::Forward {
            interface: from.opposite(),
            destination: destination.into(),
        }
    }

    /// Moves a flow's deadline. Later: just stored, the wheel re-files lazily. Earlier: re-filed.
    fn set_deadline(&mut self, id: FlowId, deadline: Tick) {
        let flow = self.flows.get_mut(id);
        let earlier = deadline < flow.deadline;
        flow.deadline = deadline;
        if earlier {
            self.wheel.remove(&mut self.flows, id);
            self.wheel.insert(&mut self.flows, id, deadline);
        }
    }

    /// A packet that belongs to no flow: a new connection, or the silent drop.
    fn no_flow(
        &mut self,
        from: Interface,
        headers: &Headers<E>,
        packet: &mut [u8],
        since: Tick,
    ) -> Verdict {
        let Some(segment) = headers.tcp else {
            // UDP has no handshake: any datagram a rule accepts opens a flow.
            return self.connect(from, headers, None, packet, since);
        };
        if segment.flags.is_connect() || self.picks_up(from, headers, &segment) {
            return self.connect(from, headers, Some(&segment), packet, since);
        }
        if !segment.flags.rst() && self.resets_unknown(from, headers) {
            self.queue(from, Control::reset_answering(headers, &segment));
        }
        self.drop(DropReason::NoFlow)
    }

    /// Whether loose pickup makes `segment`, of a connection the gateway does not know, open a
    /// flow: a plain ACK (conntrack's NONE + ACK → ESTABLISHED) that a rule would accept as a
    /// new connection from `from`.
    fn picks_up(&self, from: Interface, headers: &Headers<E>, segment: &TcpSegment) -> bool {
        let flags = segment.flags;
        self.pickup == Pickup::Loose
            && flags.ack()
            && !(flags.syn() || flags.fin() || flags.rst())
            && self.owner(from, headers, true).is_some()
    }

    /// Gives back the SNAT port just lent for a flow that was not made after all.
    fn give_back_unused(&mut self, rule: RuleId, private: E, public: E) {
        if let Some(snat) = self.snat_of(rule) {
            self.snat_pools()[snat].release_unused(private.addr(), public.port());
        }
    }

    /// A SYN (or a UDP datagram, or a segment loose pickup takes up): find the rule that
    /// accepts it and create the flow.
    fn connect(
        &mut self,
        from: Interface,
        headers: &Headers<E>,
        segment: Option<&TcpSegment>,
        packet: &mut [u8],
        since: Tick,
    ) -> Verdict {
        let Some((rule_id, public, private)) = self.match_rule(from, headers) else {
            return self.drop(DropReason::NoRule);
        };
        if self.limit.reached() || self.flows.is_full() {
            return self.table_full();
        }
        let remote = match from {
            Interface::Outside => headers.src,
            Interface::Inside => headers.dst,
        };
        let public = public.or_else(|| self.lend_port(rule_id, headers, since));
        let Some(public) = public else {
            return self.port_exhausted(rule_id, private.addr());
        };
        let mut flow = Flow::new(headers.protocol, remote, public, private, rule_id);
        if self.flows.either_key_taken(&flow) {
            self.give_back_unused(rule_id, private, public);
            return self.drop(DropReason::TupleInUse);
        }
        if !self.limit.reserve() {
            // Another shard took the last place since the look above.
            self.give_back_unused(rule_id, private, public);
            return self.table_full();
        }
        if let Some(segment) = segment {
            if segment.flags.syn() {
                flow.start(from, segment);
            } else {
                flow.pick_up(from, segment);
            }
        }
        flow.deadline = since + self.rules[usize::from(rule_id)].timeout(flow.state);
        let id = self.flows.insert(flow);
        self.wheel.insert(&mut self.flows, id, flow.deadline);
        self.counters.flows_created += 1;
        if let Some(snat) = self.snat_of(rule_id) {
            if self.snat_allocation == Allocation::PreservePort {
                self.snat_pools()[snat].tuple_opened();
            }
        }
        self.events.push_back(Event::Created {
            flow: self.summary(&flow),
        });
        self.translate(id, from, headers, packet)
    }

    /// The rule a packet belongs to. Inbound rules come first (they are first in `rules`): on
    /// the outside a packet belongs to the rule of its destination (an LB or inbound NAT
    /// frontend port, else an outbound rule's frontend address), on the inside to the rule of
    /// its source (a member at an inbound rule's backend port, else a member of a pool with an
    /// outbound rule). A new connection (`connect`) from the outside is only ever inbound, from
    /// the inside only outbound.
    fn owner(&self, from: Interface, headers: &Headers<E>, connect: bool) -> Option<RuleId> {
        let (src, dst) = (headers.src, headers.dst);
        let position = self.rules.iter().position(|rule| {
            rule.protocols.matches(headers.protocol)
                && match (&rule.translation, from) {
                    (Translation::LoadBalance { frontend, .. }, Interface::Outside) => {
                        *frontend == dst
                    }
                    (
                        Translation::LoadBalance {
                            members,
                            backend_port,
                            ..
                        },
                        Interface::Inside,
                    ) => !connect && src.port() == *backend_port && members.contains(&src.addr()),
                    (
                        Translation::InboundNat {
                            frontend,
                            first_port,
                            members,
                            ..
                        },
                        Interface::Outside,
                    ) => {
                        *frontend == dst.addr()
                            && dst
                                .port()
                                .checked_sub(*first_port)
                                .is_some_and(|i| usize::from(i) < members.len())
                    }
                    (
                        Translation::InboundNat {
                            members,
                            backend_port,
                            ..
                        },
                        Interface::Inside,
                    ) => !connect && src.port() == *backend_port && members.contains(&src.addr()),
                    (Translation::Outbound { frontend, .. }, Interface::Outside) => {
                        !connect && *frontend == dst.addr()
                    }
                    (Translation::Outbound { members, .. }, Interface::Inside) => {
                        members.contains(&src.addr())
                    }
                }
        });
        position.map(|i| i as RuleId)
    }

    /// The rule for a new connection and its endpoints: `(rule, public, private)`, with
    /// `public` left `None` when a SNAT port must still be lent.
    fn match_rule(&self, from: Interface, headers: &Headers<E>) -> Option<(RuleId, Option<E>, E)> {
        let id = self.owner(from, headers, true)?;
        match &self.rules[usize::from(id)].translation {
            Translation::LoadBalance {
                frontend,
                members,
                backend_port,
            } => {
                let member = members[self.pick_member(headers, members.len())];
                Some((id, Some(*frontend), E::at(member, *backend_port)))
            }
            Translation::InboundNat {
                first_port,
                members,
                backend_port,
                ..
            } => {
                let member = members[usize::from(headers.dst.port() - first_port)];
                Some((id, Some(headers.dst), E::at(member, *backend_port)))
            }
            Translation::Outbound { .. } => Some((id, None, headers.src)),
        }
    }

    /// Azure-style distribution: a hash of the 5-tuple picks the member.
    fn pick_member(&self, headers: &Headers<E>, members: usize) -> usize {
        let tuple = (headers.src, headers.dst, headers.protocol as u8);
        (self.member_hash.hash_one(tuple) % members as u64) as usize
    }

    /// The SNAT port pool of an outbound rule.
    fn snat_of(&self, rule: RuleId) -> Option<usize> {
        match self.rules[usize::from(rule)].translation {
            Translation::Outbound { snat, .. } => Some(snat),
            Translation::LoadBalance { .. } | Translation::InboundNat { .. } => None,
        }
    }

    /// A public address for a member's new outbound connection (`headers` is its first
    /// packet): a port lent from the rule's pool, or under masquerade a port whose tuple is
    /// free.
    fn lend_port(&mut self, rule: RuleId, headers: &Headers<E>, now: Tick) -> Option<E> {
        let Translation::Outbound { frontend, snat, .. } =
            self.rules[usize::from(rule)].translation
        else {
            return None;
        };
        if self.snat_allocation == Allocation::PreservePort {
            return self.masquerade_port(frontend, snat, headers);
        }
        self.snat_pools()[snat]
            .allocate(headers.src.addr(), now)
            .map(|port| E::at(frontend, port))
    }

    /// Linux masquerade: the member's own source port if no flow to the same remote holds it
    /// on the frontend, else the next port of the frontend's range whose tuple is free, at most
    /// [`MASQUERADE_TRIES`] tried. Ports are not lent: as in Linux, one port may serve many
    /// remotes at once, and only the whole tuple must be unique.
    fn masquerade_port(&mut self, frontend: E::Ip, snat: usize, headers: &Headers<E>) -> Option<E> {
        let free = |flows: &FlowTable<E>, port: u16| {
            let public = E::at(frontend, port);
            (flows.find(Interface::Outside, headers.dst, public, headers.protocol)).is_none()
        };
        if free(&self.flows, headers.src.port()) {
            return Some(E::at(frontend, headers.src.port()));
        }
        let mut pools = self.snat.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..MASQUERADE_TRIES {
            let port = pools[snat].next_candidate()?;
            if free(&self.flows, port) {
                return Some(E::at(frontend, port));
            }
        }
        None
    }

    /// The gateway holds `max_flows`: the new flow is refused and counted; flows it holds are
    /// unaffected. Said once per episode, as port exhaustion is.
    fn table_full(&mut self) -> Verdict {
        if self.limit.first_refusal() {
            self.events.push_back(Event::TableFull {
                max_flows: self.limit.max,
            });
        }
        self.drop(DropReason::TableFull)
    }

    /// Azure: the new connection's SYN is dropped; existing flows are unaffected.
    /// Every refused connection is counted; the event (and so the log line) comes once per
    /// exhaustion, not on every packet.
    fn port_exhausted(&mut self, rule: RuleId, member: E::Ip) -> Verdict {
        if let Translation::Outbound { frontend, snat, .. } =
            self.rules[usize::from(rule)].translation
        {
            if self.snat_pools()[snat].newly_exhausted(member) {
                self.events.push_back(Event::PortExhausted {
                    rule: self.rules[usize::from(rule)].id,
                    frontend: frontend.into(),
                    member: member.into(),
                });
            }
        }
        self.drop(DropReason::PortExhausted)
    }

    /// Gives an expired outbound flow's port back. A connection closed with FIN or RST holds it
    /// from its last packet; one forgotten while open, which its remote may still believe in,
    /// holds it like a RST from the moment of expiry.
    fn release_port(&mut self, flow: &Flow<E>, now: Tick) {
        let Some(snat) = self.snat_of(flow.rule) else {
            return;
        };
        if self.snat_allocation == Allocation::PreservePort {
            self.snat_pools()[snat].tuple_closed();
            return;
        }
        let last_packet = flow
            .deadline
            .saturating_sub(self.rules[usize::from(flow.rule)].timeout(flow.state));
        let (ending, ended) = match flow.state {
            state if state.is_closing() => (Ending::Fin, last_packet),
            FlowState::Closed => (Ending::Rst, last_packet),
            _ => (Ending::Rst, now),
        };
        self.snat_pools()[snat].release(flow.private.addr(), flow.public.port(), ending, ended);
    }

    /// Whether an unknown segment arriving on `from` falls under a `reset-on-next` rule.
    fn resets_unknown(&self, from: Interface, headers: &Headers<E>) -> bool {
        if self.reset_target == ResetTarget::InsideOnly && from == Interface::Outside {
            return false;
        }
        self.owner(from, headers, false)
            .is_some_and(|id| self.rules[usize::from(id)].expiry == Expiry::ResetOnNext)
    }

    fn queue(&mut self, interface: Interface, control: Control<E>) {
        match control.kind {
            ControlKind::Reset => self.counters.resets_sent += 1,
            ControlKind::Ack => self.counters.acks_sent += 1,
        }
        self.transmits
            .push_back((interface, Outgoing::Control(control)));
    }

    // ---- expiry ----------------------------------------------------------------------------

    /// Forgets a flow whose deadline has passed, carrying out its rule's expiry action.
    /// Returns whether the flow is gone (under `ack-and-discard` it stays, discarding).
    fn expire(&mut self, id: FlowId, now: Tick, cause: ExpiryCause) -> bool {
        self.wheel.remove(&mut self.flows, id);
        let flow = *self.flows.get(id);
        let rule = &self.rules[usize::from(flow.rule)];
        let (idle, timeout) = (rule.idle, Duration::from_millis(rule.timeout(flow.state)));
        // The deadline is the last packet plus the state's timeout (as `flows` shows it).
        let last_packet = flow.deadline.saturating_sub(rule.timeout(flow.state));
        let idle_for = Duration::from_millis(now.saturating_sub(last_packet));
        // Azure: "TCP reset only sent during TCP connection in ESTABLISHED state" (seed 002);
        // idlegate holds ack-and-discard to the same.
        let action = match (rule.expiry, flow.state) {
            (_, FlowState::Discarding) => {
                // A discarding flow quiet for an idle timeout: now it is forgotten for good.
                self.forget(id, now);
                return true;
            }
            // UDP flows end silently: there is no connection to reset or to acknowledge.
            (_, FlowState::Unreplied | FlowState::Replied) => Expiry::Silent,
            (Expiry::Reset | Expiry::AckAndDiscard, state) if !state.is_established() => {
                Expiry::Silent
            }
            (action, _) => action,
        };
        self.counters.flows_expired += 1;
        self.counters.expiries[action as usize] += 1;
        let summary = self.summary(&flow);
        self.events.push_back(Event::Expired {
            flow: summary,
            state: flow.state,
            timeout,
            idle_for,
            cause,
            action,
        });
        match action {
            Expiry::AckAndDiscard => {
                let deadline = now + idle;
                let ghost = self.flows.get_mut(id);
                (ghost.state, ghost.deadline) = (FlowState::Discarding, deadline);
                self.wheel.insert(&mut self.flows, id, deadline);
                false
            }
            Expiry::Reset => {
                self.reset_both(&flow);
                self.forget(id, now);
                true
            }
            Expiry::Silent | Expiry::ResetOnNext => {
                self.forget(id, now);
                true
            }
        }
    }

    /// Removes a flow for good and gives its SNAT port back.
    fn forget(&mut self, id: FlowId, now: Tick) {
        let flow = self.flows.remove(id);
        self.limit.release();
        self.release_port(&flow, now);
    }

    /// RSTs to both endpoints, each with the exact sequence number its stack expects next
    /// (RFC 5961 §3.2 accepts a RST only if SEG.SEQ = RCV.NXT).
    fn reset_both(&mut self, flow: &Flow<E>) {
        let to_remote = Control {
            kind: ControlKind::Reset,
            src: flow.public,
            dst: flow.remote,
            seq: flow.private_next_seq,
            ack: Some(flow.remote_next_seq),
        };
        let to_private = Control {
            kind: ControlKind::Reset,
            src: flow.remote,
            dst: flow.private,
            seq: flow.remote_next_seq,
            ack: Some(flow.private_next_seq),
        };
        self.queue(Interface::Outside, to_remote);
        self.queue(Interface::Inside, to_private);
    }
}

/// The engine. See the module documentation. It runs one [`Core`] per address family, each
/// over the rules of its family; a packet goes to the core of its IP version.
pub struct Engine {
    v4: Core<SocketAddrV4>,
    v6: Core<SocketAddrV6>,
    /// Every rule's name, by [`RuleId`].
    rule_names: Vec<String>,
}

impl Engine {
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
    /// [`crate::state::shard::Sharding::owner`] gives it, and all share the SNAT port pools and the
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
        let parsed = Parsed::new(packet);
        self.handle_parsed(now, from, packet, &parsed, checksum)
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
            Parsed::V6(headers) => self.v6.handle_packet(now, from, packet, headers, checksum),
            // IPv4, or nothing the IPv4 core will take: it counts the drop.
            Parsed::V4(headers) => self.v4.handle_packet(now, from, packet, headers, checksum),
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
    /// [`crate::state::fragment::HELD_LEN`] for the fragments it held; one that does not fit is lost.
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

    /// Checks what must hold between any two calls, walking every table (for tests and
    /// fuzzing, not the packet path): every flow is found by both of its keys and the index
    /// holds nothing else; the timing wheel holds exactly the live flows, each once and well
    /// linked; no SNAT port is lent to two flows, every outbound flow's port is lent, and (for
    /// an engine that is not one of several shards) each pool counts its users exactly.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.v4.check_invariants()?;
        self.v6.check_invariants()?;
        let limit = &self.v4.limit;
        let held = limit.held.load(Ordering::Relaxed);
        // One engine (its two families hold the limit) must account for every flow exactly;
        // shards share it, so each sees only a part.
        let alone = Arc::strong_count(limit) == 2;
        if held > limit.max || (alone && held != self.flow_count()) {
            return Err(format!(
                "{} flows, {held} places taken, max_flows {}",
                self.flow_count(),
                limit.max
            ));
        }
        Ok(())
    }

    /// Checks shards made together by [`Engine::sharded`] (for tests and fuzzing): each one's
    /// own invariants, and across them the shared `max_flows` count taken by exactly their
    /// flows, and each shared SNAT pool lending exactly the ports their flows hold, none twice.
    pub fn check_shards(shards: &[Engine]) -> Result<(), String> {
        let Some(first) = shards.first() else {
            return Ok(());
        };
        for shard in shards {
            shard.check_invariants()?;
            if !Arc::ptr_eq(&shard.v4.limit, &first.v4.limit) {
                return Err("shards that do not share one max_flows".into());
            }
        }
        let held = first.v4.limit.held.load(Ordering::Relaxed);
        let flows: usize = shards.iter().map(Engine::flow_count).sum();
        if held != flows {
            return Err(format!(
                "{flows} flows in {} shards, {held} places taken",
                shards.len()
            ));
        }
        let v4: Vec<&Core<SocketAddrV4>> = shards.iter().map(|s| &s.v4).collect();
        let v6: Vec<&Core<SocketAddrV6>> = shards.iter().map(|s| &s.v6).collect();
        check_shared_snat(&v4)?;
        check_shared_snat(&v6)
    }

    /// Number of flows the gateway remembers.
    pub fn flow_count(&self) -> usize {
        self.v4.flow_count() + self.v6.flow_count()
    }

    /// The names of all rules, as written in the config.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rule_names.iter().map(String::as_str)
    }

    /// The name of rule `id` as written in the config.
    pub fn rule_name(&self, id: RuleId) -> &str {
        self.rule_names
            .get(usize::from(id))
            .map_or("?", String::as_str)
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
}

#[cfg(test)]
mod tests;

mod fragments;

/// The SNAT pools one family's shards share lend exactly the ports of the shards' flows.
fn check_shared_snat<E: Endpoint>(cores: &[&Core<E>]) -> Result<(), String> {
    let Some(first) = cores.first() else {
        return Ok(());
    };
    let pools = first.snat_pools();
    let mut users = vec![0usize; pools.len()];
    let mut held = std::collections::HashSet::new();
    for core in cores {
        if !Arc::ptr_eq(&core.snat, &first.snat) {
            return Err("shards that do not share their SNAT pools".into());
        }
        core.snat_ports_held(&pools, &mut held, &mut users)?;
    }
    for (pool, users) in pools.iter().zip(users) {
        if pool.lent() != users {
            return Err(format!(
                "a shared SNAT pool counts {} ports in use for {users} flows",
                pool.lent()
            ));
        }
    }
    Ok(())
}
