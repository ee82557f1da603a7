//! Rule compilation: the config's rules, of one address family, turned into what the packet
//! path runs (translations, timers in ticks, SNAT port pools), numbered by [`RuleId`].

use super::*;

const MEMBER_HASH_SEED: u64 = 0x1d1e_9a7e;

/// How a rule translates.
#[derive(Debug, Clone)]
pub(super) enum Translation<E: Endpoint> {
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
    /// What no other rule claims from the inside, routed on as it is (a Linux router:
    /// [`profile::Unmatched::Routed`]); always the last rule, with no name in the config.
    Untranslated,
}

/// A rule as the engine runs it: timers already scaled to ticks.
#[derive(Debug, Clone)]
pub(super) struct Rule<E: Endpoint> {
    /// The rule's place in the whole config (both families).
    pub(super) id: RuleId,
    pub(super) translation: Translation<E>,
    pub(super) protocols: Protocols,
    pub(super) idle: Tick,
    pub(super) tcp: TcpTicks,
    pub(super) udp: UdpTicks,
    pub(super) expiry: Expiry,
}

/// A profile's timers of TCP states other than ESTABLISHED, in ticks. Each races a timer of
/// the endpoints' TCP, which `time_scale` does not shorten, so each is scaled with the floor
/// ([`Config::scaled_racing_tcp`]):
/// - SYN_SENT, SYN_RECV: a lost SYN, SYN-ACK or handshake ACK is recovered by a retransmission
///   1 s later (RFC 6298 §2.1), which must find the flow.
/// - FIN_WAIT, LAST_ACK: a lost FIN or its lost ACK is recovered by the FIN's retransmission.
/// - CLOSE_WAIT: the half-closed side may still send data, retransmitted after its RTO.
/// - TIME_WAIT: the last ACK may be lost; the peer's FIN comes again and must reach the host
///   whose TIME_WAIT answers it.
/// - CLOSE: a lost RST is answered when the peer retransmits and the host resets again; the
///   flow must still carry that retransmission.
#[derive(Debug, Clone, Copy)]
pub(super) struct TcpTicks {
    pub(super) syn_sent: Tick,
    pub(super) syn_received: Tick,
    pub(super) fin_wait: Tick,
    pub(super) close_wait: Tick,
    pub(super) last_ack: Tick,
    pub(super) time_wait: Tick,
    pub(super) close: Tick,
}

impl TcpTicks {
    /// `ticks` must be the floored scaling ([`Config::scaled_racing_tcp`]).
    pub(super) fn new(t: &TcpTimers, ticks: &impl Fn(Duration) -> Tick) -> TcpTicks {
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
pub(super) struct UdpTicks {
    pub(super) unreplied: Tick,
    pub(super) replied: Tick,
}

impl<E: Endpoint> Rule<E> {
    /// The side that opens this rule's connections.
    pub(super) fn origin(&self) -> Interface {
        match self.translation {
            Translation::LoadBalance { .. } | Translation::InboundNat { .. } => Interface::Outside,
            Translation::Outbound { .. } | Translation::Untranslated => Interface::Inside,
        }
    }

    pub(super) fn timeout(&self, state: FlowState) -> Tick {
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

/// `holds` as the engine runs them: `ticks` must be the floored scaling.
fn held(holds: precedence::HoldTimes, ticks: &impl Fn(Duration) -> Tick) -> Holds {
    Holds {
        after_fin: ticks(holds.after_fin),
        after_rst: ticks(holds.after_rst),
        after_idle: ticks(holds.after_idle),
    }
}

/// A NAT gateway's ports: its frontend's whole range, lent on demand to the members of the
/// pools it serves, held as Azure NAT Gateway holds them. `ticks` must be the floored scaling
/// ([`Config::scaled_racing_tcp`]): a hold keeps the port from a new connection while the old
/// one's retransmissions may still arrive.
pub(super) fn nat_gateway_ports<E: Endpoint>(
    config: &Config,
    g: &NatGateway,
    frontend: E::Ip,
    ticks: &impl Fn(Duration) -> Tick,
) -> SnatPorts<E::Ip> {
    let holds = held(precedence::nat_gateway_holds(), ticks);
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
/// leaves from it, in rule order, from the ports its inbound rules do not claim. `ticks` must
/// be the floored scaling, as for [`nat_gateway_ports`].
pub(super) fn snat_ports<E: Endpoint>(
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
    // Where TIME_WAIT can be set, the hold after a FIN follows it (`outbound_holds`).
    let holds = held(precedence::outbound_holds(config, frontend), ticks);
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
pub(super) fn members_of<E: Endpoint>(
    config: &Config,
    pool: usize,
) -> impl Iterator<Item = E::Ip> + '_ {
    config.backend_pools[pool]
        .members
        .iter()
        .filter_map(|m| E::ip_of(m.address))
}

/// The rules' names in the engine's order, which is their [`RuleId`]: LB rules, inbound NAT
/// rules, NAT gateways (before outbound rules: for the pools they serve they take precedence),
/// outbound rules. [`Core::new`] numbers the rules in the same order; the untranslated rule of
/// a Linux router, when there is one, comes after them all ([`UNTRANSLATED`]).
pub(super) fn rule_names(config: &Config) -> Vec<String> {
    let lb = config.lb_rules.iter().map(|r| &r.name);
    let nat = config.inbound_nat_rules.iter().map(|r| &r.name);
    let gw = config.nat_gateways.iter().map(|g| &g.name);
    let out = config.outbound_rules.iter().map(|r| &r.name);
    lb.chain(nat).chain(gw).chain(out).cloned().collect()
}

/// Every rule's idle timeout (unscaled, as [`precedence`] resolves it) and expiry action, by
/// [`RuleId`], as [`Core::new`] gives them to its rules.
pub(super) fn idle_settings(config: &Config) -> Vec<(Duration, Expiry)> {
    let lb = (0..config.lb_rules.len()).map(|i| {
        (
            precedence::lb_rule(config, i).timeout,
            config.lb_rules[i].idle.expiry,
        )
    });
    let nat = (0..config.inbound_nat_rules.len()).map(|i| {
        let timeout = precedence::inbound_nat_rule(config, i).timeout;
        (timeout, config.inbound_nat_rules[i].idle.expiry)
    });
    let gw = config
        .nat_gateways
        .iter()
        .map(|g| (g.idle.timeout, g.idle.expiry));
    let out = (0..config.outbound_rules.len()).map(|i| {
        let timeout = precedence::outbound_rule(config, i).timeout;
        (timeout, config.outbound_rules[i].idle.expiry)
    });
    lb.chain(nat).chain(gw).chain(out).collect()
}

impl<E: Endpoint> Core<E> {
    /// The engine of family `E`: the rules of `config` whose frontend is of that family.
    pub(super) fn new(config: &Config, now: Instant, seed: u64) -> Core<E> {
        let mut snat_frontends: Vec<usize> = Vec::new();
        let mut snat = Vec::new();
        // Rounded up: a scaled timer never runs short.
        let in_ticks = |d: Duration| d.as_nanos().div_ceil(1_000_000) as Tick;
        // Idle timeouts and UDP timers: purely scaled.
        let ticks = |d: Duration| in_ticks(config.scaled(d));
        // Timers that race TCP's unscaled retransmissions: scaled with the floor.
        let racing = |d: Duration| in_ticks(config.scaled_racing_tcp(d));
        let tcp = TcpTicks::new(&config.profile.tcp, &racing);
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
            snat.push(nat_gateway_ports::<E>(config, g, address, &racing));
            rules.push(Rule {
                id: id - 1,
                translation: Translation::Outbound {
                    frontend: address,
                    members: members.collect(),
                    snat: pool,
                },
                protocols: Protocols::All,
                idle: ticks(g.idle.timeout),
                tcp: TcpTicks::new(&natgw.tcp, &racing),
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
                    snat.push(snat_ports::<E>(config, r.frontend, address, &racing));
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
                // The rule's own TIME_WAIT, where the profile lets it be set (GCP Cloud NAT).
                tcp: TcpTicks {
                    time_wait: racing(r.time_wait(config.profile)),
                    ..tcp
                },
                udp,
                expiry: r.idle.expiry,
            });
        }
        if config.profile.unmatched() == profile::Unmatched::Routed {
            // Kept as the namespace-wide sysctl keeps an entry no `ct timeout` names.
            rules.push(Rule {
                id,
                translation: Translation::Untranslated,
                protocols: Protocols::All,
                idle: ticks(config.profile.lb_rule_idle.default),
                tcp,
                udp,
                expiry: config.profile.default_expiry,
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
            refreshed_after: None,
            retimed: HashMap::new(),
        }
    }
}
