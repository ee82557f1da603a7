//! Profiles: the timers and allowed ranges of a real middlebox, with their sources.
//!
//! A profile supplies the defaults a config leaves out and the ranges a config must stay
//! within, checked before `time_scale` divides them. Every figure cites the vendor document it
//! comes from (the profile's `sources`, printed by `idlegate profiles`); where a vendor documents no
//! value, the doc comment says so and which figure idlegate uses instead.

use crate::model::expiry::Expiry;
use std::time::Duration;

mod azure;
mod example;
mod linux;
mod sources;

pub use azure::{AZURE_APPSERVICE, AZURE_FIREWALL, AZURE_FIREWALL_EAST_WEST};
pub use example::example_config;
use linux::MASQUERADE;
pub use linux::{IPVS, KUBE_PROXY, LINUX_CONNTRACK};

/// A configurable timeout: its default and the range the vendor accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutRange {
    pub default: Duration,
    pub min: Duration,
    pub max: Duration,
}

/// The behaviour of one kind of middlebox.
#[derive(Debug, PartialEq, Eq)]
pub struct Profile {
    /// The name used in configs and on the command line, e.g. `azure-lb`.
    pub name: &'static str,
    /// The product's name as its vendor writes it, for messages.
    pub title: &'static str,
    /// Which rules the box has.
    pub rules: Rules,
    /// Idle timeout of load-balancing rules.
    pub lb_rule_idle: TimeoutRange,
    /// Idle timeout of outbound (SNAT) rules.
    pub outbound_rule_idle: TimeoutRange,
    /// Idle timeout a frontend address may carry for its inbound flows, if the box has one.
    pub frontend_idle: Option<TimeoutRange>,
    /// The public IP's own outbound idle timeout, which an outbound rule's beats (Azure: locked
    /// at 4 min), if the box has one.
    pub public_ip_outbound_idle: Option<Duration>,
    /// Who gets the RST under `reset-on-next`.
    pub reset_on_next: ResetTarget,
    /// Timeouts of TCP flows that are not established: handshake, closing (FIN) and closed
    /// (RST).
    pub tcp: TcpTimers,
    /// The range an outbound rule's `time_wait` may set TIME_WAIT to, where the vendor lets it
    /// be set (`tcp.time_wait` is its default). Where it may, the port's hold after a FIN
    /// follows it too.
    pub time_wait_range: Option<TimeoutRange>,
    /// Which segments may open a flow.
    pub pickup: PickupPolicy,
    /// Which packets keep a flow alive.
    pub refresh: Refresh,
    /// What the box does with IPv4 fragments.
    pub fragments: Fragments,
    /// The expiry action of a rule that names none.
    pub default_expiry: Expiry,
    /// Whether a rule may choose another.
    pub expiry_knob: ExpiryKnob,
    /// Outbound SNAT ports.
    pub snat: SnatPolicy,
    /// Idle timeouts of UDP flows, which have no connection state.
    pub udp: UdpTimeouts,
    /// The public documents the figures come from.
    pub sources: &'static [Source],
}

/// A public document a profile's figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The document's title, as its publisher writes it (and the section that matters).
    pub title: &'static str,
    pub url: &'static str,
}

/// The rules a box offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// Load-balancing and inbound NAT rules, and outbound rules (Azure LB).
    InboundAndOutbound,
    /// Only inbound rules (a load balancer without SNAT for its members).
    InboundOnly,
    /// Only outbound rules (a NAT gateway).
    OutboundOnly,
}

impl Rules {
    pub fn inbound(self) -> bool {
        self != Rules::OutboundOnly
    }
    pub fn outbound(self) -> bool {
        self != Rules::InboundOnly
    }
}

/// Who gets the RST when a dead flow's next packet arrives under `reset-on-next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// Whoever sent it, from either side.
    Sender,
    /// Only a sender on the inside; packets from the outside are dropped silently.
    InsideOnly,
}

/// How long a TCP flow lives without a segment in each state but ESTABLISHED (whose timeout is
/// the rule's). The states are conntrack's; a box that documents one transitory timer has it in
/// every field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpTimers {
    /// The initiator's SYN went through.
    pub syn_sent: Duration,
    /// The responder's SYN-ACK went through.
    pub syn_received: Duration,
    /// A FIN went through, not yet acknowledged.
    pub fin_wait: Duration,
    /// A FIN was acknowledged; the other side may still send (half-closed).
    pub close_wait: Duration,
    /// FINs went both ways; the last ACK is awaited.
    pub last_ack: Duration,
    /// The last ACK went through.
    pub time_wait: Duration,
    /// A RST went through.
    pub close: Duration,
}

impl TcpTimers {
    /// One timeout for every state but ESTABLISHED.
    pub const fn transitory(d: Duration) -> TcpTimers {
        TcpTimers {
            syn_sent: d,
            syn_received: d,
            fin_wait: d,
            close_wait: d,
            last_ack: d,
            time_wait: d,
            close: d,
        }
    }

    /// The conntrack names of the states, in the order of [`TcpTimers::all`].
    pub const STATES: [&'static str; 7] = [
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "TIME_WAIT",
        "CLOSE",
    ];

    /// Every state's conntrack name with its timer, in the order of [`TcpTimers::all`].
    pub fn named(&self) -> impl Iterator<Item = (&'static str, Duration)> {
        Self::STATES.into_iter().zip(self.all())
    }

    /// Every timer, for finding the shortest.
    pub fn all(&self) -> [Duration; 7] {
        [
            self.syn_sent,
            self.syn_received,
            self.fin_wait,
            self.close_wait,
            self.last_ack,
            self.time_wait,
            self.close,
        ]
    }

    /// The shortest of them.
    pub fn shortest(&self) -> Duration {
        self.all().into_iter().min().unwrap_or(Duration::ZERO)
    }

    /// The longest of them.
    pub fn longest(&self) -> Duration {
        self.all().into_iter().max().unwrap_or(Duration::ZERO)
    }

    /// "30 s" when one timer serves every state, else each state with its timer.
    pub fn summary(&self) -> String {
        use crate::model::units::human;
        if self.shortest() == self.longest() {
            return human(self.syn_sent);
        }
        let parts: Vec<String> = self
            .named()
            .map(|(name, d)| format!("{name} {}", human(d)))
            .collect();
        parts.join(", ")
    }
}

/// Which TCP segments may open a flow that the box does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pickup {
    /// Only a SYN; any other segment of an unknown connection is dropped.
    SynOnly,
    /// Also an ACK of a connection already under way (Linux `nf_conntrack_tcp_loose=1`): a
    /// flow forgotten at its idle timeout comes back with the next packet its initiator's side
    /// sends, in ESTABLISHED.
    Loose,
}

/// Whether a box's pickup can be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickupKnob {
    /// It cannot.
    Fixed,
    /// A sysctl sets it (`nf_conntrack_tcp_loose`): the config's `loose_pickup` may.
    Sysctl,
}

/// A box's pickup and whether a config may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickupPolicy {
    pub default: Pickup,
    /// Whether the config's `loose_pickup` may change it.
    pub knob: PickupKnob,
}

const SYN_ONLY: PickupPolicy = PickupPolicy {
    default: Pickup::SynOnly,
    knob: PickupKnob::Fixed,
};

/// Whether a rule may choose its expiry action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryKnob {
    /// The vendor offers no choice: a rule's `expiry` may only repeat the profile's default.
    Fixed,
    /// A rule chooses (Azure LB's per-rule TCP reset; a Linux box's own firewall rules): every
    /// action is accepted, `ack-and-discard` as the test double it is.
    Rule,
}

impl Profile {
    /// Whether a rule of this box may have `expiry`.
    pub fn accepts_expiry(&self, expiry: Expiry) -> bool {
        self.expiry_knob == ExpiryKnob::Rule || expiry == self.default_expiry
    }

    /// What the box does by default when it forgets an idle flow, as the end of a sentence
    /// ("at expiry it …").
    pub fn at_expiry(&self) -> &'static str {
        match (self.default_expiry, self.reset_on_next) {
            (Expiry::Silent, _) => "drops the flow silently, with no RST to either end",
            (Expiry::Reset, _) => "sends a RST to both ends",
            (Expiry::ResetOnNext, ResetTarget::Sender) => {
                "drops the flow silently and answers its next packet, from either end, with a RST"
            }
            (Expiry::ResetOnNext, ResetTarget::InsideOnly) => {
                "drops the flow silently and answers the inside host's next packet with a RST"
            }
            (Expiry::AckAndDiscard, _) => "acknowledges what either end sends and discards it",
        }
    }
}

/// What a box does with a packet from the inside that no rule of its claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// Dropped: the box forwards only what its rules translate (a cloud load balancer or NAT
    /// gateway).
    Dropped,
    /// Routed on untranslated, as a Linux router does: conntrack makes an entry (a SYN, or a
    /// mid-stream ACK under loose pickup), no NAT rule binds it, and the packet, and the
    /// replies that match the entry, go on as they are.
    Routed,
}

impl Profile {
    /// What the box does with an inside packet no rule claims. The boxes whose pickup a sysctl
    /// sets (`nf_conntrack_tcp_loose`) are Linux routers, and a Linux router routes it: NAT
    /// rules only rewrite what they match (nft(8), "NAT STATEMENTS"; kube-proxy's iptables and
    /// nftables rules match only Service addresses, and a node routes the rest).
    pub fn unmatched(&self) -> Unmatched {
        match self.pickup.knob {
            PickupKnob::Sysctl => Unmatched::Routed,
            PickupKnob::Fixed => Unmatched::Dropped,
        }
    }
}

/// Which packets keep a flow alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Every packet in either direction, TCP keepalive probes included.
    AnyPacket,
    /// Only segments that carry new data, or change the flow's state (SYN, FIN, an accepted
    /// RST): a proxy that terminates TCP answers keepalive probes itself and never counts them
    /// (AWS ALB).
    DataOnly,
}

/// What a box does with the IPv4 fragments of the datagrams it translates. Only the first
/// fragment carries the ports; idlegate matches the others to it by addresses, protocol and
/// IP ID, and holds those that come ahead of it (`crate::state::fragment`). A box that reassembles
/// (Linux conntrack) and one that forwards fragments as they come deliver the same datagram:
/// idlegate forwards both ways. IPv6 fragments are dropped in every profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragments {
    /// Every fragment is dropped: the datagram never arrives.
    Drop,
    /// UDP fragments pass; TCP fragments are dropped (AWS NAT gateway).
    ForwardUdp,
    /// Fragments of both protocols pass.
    Forward,
}

impl Fragments {
    pub fn as_str(self) -> &'static str {
        match self {
            Fragments::Drop => "dropped",
            Fragments::ForwardUdp => "UDP fragments forwarded, TCP fragments dropped",
            Fragments::Forward => "forwarded",
        }
    }
}

/// How long a UDP flow lives without a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpTimeouts {
    /// While only the initiator has sent.
    pub unreplied: Duration,
    /// Once the responder has answered.
    pub replied: Duration,
}

/// How a middlebox lends SNAT ports to the members behind an outbound rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatPolicy {
    /// Whether members own fixed blocks of ports or draw from one pool.
    pub allocation: Allocation,
    /// Ports each member gets when the rule names no `ports_per_member`.
    pub ports_per_member: u16,
    /// `ports_per_member` must be a multiple of this.
    pub ports_per_member_step: u16,
    /// All outbound rules on one frontend address may lend at most this many ports.
    pub ports_per_frontend: u32,
    /// How long a port is held before reuse after its flow ended with a FIN...
    pub hold_after_fin: Duration,
    /// ... after a RST, or a handshake forgotten half-open ...
    pub hold_after_rst: Duration,
    /// ... and after its open flow was forgotten at its idle timeout, counted from the expiry.
    pub hold_after_idle: Duration,
}

/// How SNAT ports are shared among the members behind a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Each member owns `ports_per_member` ports (Azure LB, GCP Cloud NAT's minimum).
    PerMember,
    /// Every member draws from the frontend's whole range on demand (Azure NAT Gateway).
    Shared,
    /// The member's own source port when no other flow to the same remote holds it, else one
    /// on demand from the frontend's range (Linux masquerade, which changes a source port only
    /// to keep tuples unique).
    PreservePort,
}

impl Allocation {
    /// Whether ports are lent on demand rather than from a block per member.
    pub fn on_demand(self) -> bool {
        self != Allocation::PerMember
    }
}

const fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// Azure Standard Load Balancer.
///
/// - LB rules and inbound NAT rules: idle timeout 4 min by default, configurable 4–100 min
///   ("Configure load balancer TCP reset and idle timeout"; older API docs say 4–30 min, the
///   newest page is taken: Azure "Load Balancer TCP Reset and Idle Timeout").
/// - Outbound rules: 4 min default, 4–120 min (Azure "Outbound rules",
///   <https://learn.microsoft.com/en-us/azure/load-balancer/outbound-rules>). Azure's "Load
///   Balancer TCP Reset and Idle Timeout" says 4–100 min: idlegate enforces 120, and says so in
///   the error above 120 min and in `--explain` above 100 min ([`AZURE_OUTBOUND_MAXIMUM`]).
/// - Frontend (public IP address) idle timeout: 4 min default, 4–30 min (the public IP
///   address resource's `idleTimeoutInMinutes`); it beats the LB rule's for inbound flows
///   ("Load Balancer TCP Reset and Idle Timeout", "Order of precedence"). Its outbound idle timeout is locked at 4 min.
/// - At expiry: silent drop by default; "TCP reset" per rule ("Load Balancer TCP Reset and Idle Timeout").
///   idlegate accepts every expiry action here, so that a lab can try each.
/// - Transitory: Azure LB documents no timer for half-open or closing flows. idlegate uses
///   30 s, the half-open (SYN only) timer Azure documents for NAT Gateway ("NAT gateway timers").
/// - SNAT ("Outbound rules", "SNAT for outbound connections"): 64,000 ports per frontend IP,
///   allocated per member in multiples of 8; 1,024 per member by default (pools of up to 50);
///   a port is held 240 s after a FIN and 15 s after a RST before reuse. A flow forgotten at
///   its idle timeout gives its port back at once: the port is released when the idle timeout
///   is reached (Azure "Source Network Address Translation (SNAT) for outbound connections",
///   <https://learn.microsoft.com/en-us/azure/load-balancer/load-balancer-outbound-connections>).
///   A handshake forgotten half-open (idlegate's 30 s, below) holds its port like a RST. One
///   port per concurrent flow, whatever its destination: Azure's sharing of a port among flows
///   to different destinations (the same page, "Port reuse") is not modelled.
/// - UDP: the configurable idle timeout does not apply to UDP rules ("Load Balancer TCP Reset and
///   Idle Timeout", "Limitations").
///   Azure LB documents no UDP figure; idlegate uses 4 min, the fixed UDP idle timeout Azure
///   documents for NAT Gateway. At expiry UDP flows are always silent.
/// - IPv4 fragments: dropped ("Azure Load Balancer components", Limitations: "Load-balancing
///   rules don't support forwarding IP fragments"; idlegate applies it to every rule, and does
///   not model HA-ports rules, which forward them).
pub static AZURE_LB: Profile = Profile {
    name: "azure-lb",
    title: "Azure LB",
    sources: sources::AZURE_LB_SOURCES,
    rules: Rules::InboundAndOutbound,
    lb_rule_idle: TimeoutRange {
        default: minutes(4),
        min: minutes(4),
        max: minutes(100),
    },
    outbound_rule_idle: TimeoutRange {
        default: minutes(4),
        min: minutes(4),
        max: minutes(120),
    },
    frontend_idle: Some(TimeoutRange {
        default: minutes(4),
        min: minutes(4),
        max: minutes(30),
    }),
    public_ip_outbound_idle: Some(minutes(4)),
    reset_on_next: ResetTarget::Sender,
    tcp: TcpTimers::transitory(Duration::from_secs(30)),
    time_wait_range: None,
    pickup: SYN_ONLY,
    refresh: Refresh::AnyPacket,
    fragments: Fragments::Drop,
    default_expiry: Expiry::Silent,
    expiry_knob: ExpiryKnob::Rule,
    snat: SnatPolicy {
        allocation: Allocation::PerMember,
        ports_per_member: 1024,
        ports_per_member_step: 8,
        ports_per_frontend: 64_000,
        hold_after_fin: Duration::from_secs(240),
        hold_after_rst: Duration::from_secs(15),
        hold_after_idle: Duration::ZERO,
    },
    udp: UdpTimeouts {
        unreplied: minutes(4),
        replied: minutes(4),
    },
};

const fn fixed(d: Duration) -> TimeoutRange {
    TimeoutRange {
        default: d,
        min: d,
        max: d,
    }
}

/// Azure NAT Gateway (Azure NAT Gateway "resource" and "timers" docs).
///
/// - Outbound only. TCP idle timeout 4 min by default, 4–120 min. It beats outbound rules and
///   public IPs (Azure "Load Balancer TCP Reset and Idle Timeout", "Order of precedence"),
///   which a profile of its own makes moot here.
/// - At expiry: silent, then a RST to the next sender.
/// - Half-open (SYN only) 30 s, used for every transitory state: the docs give no other.
/// - A port is reused 65 s after a FIN, 16 s after a RST; ports are allocated on demand from
///   the public IP's range, not in fixed blocks per VM. After an idle expiry: NAT Gateway's
///   pages give no figure of their own; idlegate holds the port 16 s as after a RST, because
///   its remote, which saw no close, may still hold the old connection.
/// - UDP idle timeout 4 min, fixed.
/// - IPv4 fragments: dropped ("Troubleshoot Azure NAT Gateway connectivity": "NAT gateway does
///   not support IP fragmentation").
pub static AZURE_NATGW: Profile = Profile {
    name: "azure-natgw",
    title: "Azure NAT Gateway",
    sources: sources::AZURE_NATGW_SOURCES,
    rules: Rules::OutboundOnly,
    lb_rule_idle: fixed(minutes(4)),
    outbound_rule_idle: TimeoutRange {
        default: minutes(4),
        min: minutes(4),
        max: minutes(120),
    },
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::Sender,
    tcp: TcpTimers::transitory(Duration::from_secs(30)),
    time_wait_range: None,
    pickup: SYN_ONLY,
    refresh: Refresh::AnyPacket,
    fragments: Fragments::Drop,
    default_expiry: Expiry::ResetOnNext,
    expiry_knob: ExpiryKnob::Fixed,
    snat: SnatPolicy {
        allocation: Allocation::Shared,
        ports_per_member: 0,
        ports_per_member_step: 8,
        ports_per_frontend: 64_512,
        hold_after_fin: Duration::from_secs(65),
        hold_after_rst: Duration::from_secs(16),
        hold_after_idle: Duration::from_secs(16),
    },
    udp: UdpTimeouts {
        unreplied: minutes(4),
        replied: minutes(4),
    },
};

/// AWS Network Load Balancer ("Update the TCP idle timeout for your Network Load Balancer
/// listener").
///
/// - Inbound only (listeners). TCP idle timeout 350 s by default, 60–6000 s per listener.
/// - At expiry: silent; the next packet of the dead flow is answered with a RST.
/// - UDP flows: 120 s.
/// - Transitory: AWS documents none; idlegate uses 30 s, as for the other boxes.
/// - IPv4 fragments: AWS documents nothing found; idlegate forwards them.
pub static AWS_NLB: Profile = Profile {
    name: "aws-nlb",
    title: "AWS NLB",
    sources: sources::AWS_NLB_SOURCES,
    rules: Rules::InboundOnly,
    lb_rule_idle: TimeoutRange {
        default: Duration::from_secs(350),
        min: Duration::from_secs(60),
        max: Duration::from_secs(6000),
    },
    outbound_rule_idle: fixed(Duration::from_secs(350)),
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::Sender,
    tcp: TcpTimers::transitory(Duration::from_secs(30)),
    time_wait_range: None,
    pickup: SYN_ONLY,
    refresh: Refresh::AnyPacket,
    fragments: Fragments::Forward,
    default_expiry: Expiry::ResetOnNext,
    expiry_knob: ExpiryKnob::Fixed,
    snat: NO_SNAT,
    udp: UdpTimeouts {
        unreplied: Duration::from_secs(120),
        replied: Duration::from_secs(120),
    },
};

/// AWS NAT Gateway (AWS VPC "NAT gateways" troubleshooting docs).
///
/// - Outbound only. TCP idle timeout 350 s, fixed.
/// - At expiry: silent; the inside host's next packet is answered with a RST (only toward the
///   inside host: packets from the outside are dropped silently).
/// - Transitory and UDP: AWS documents none here; idlegate uses 30 s transitory and 350 s UDP.
/// - Ports on demand from the public IP's range (AWS documents connection, not port, limits).
/// - IPv4 fragments: UDP forwarded, TCP dropped (AWS "Compare NAT gateways and NAT
///   instances": "Supports forwarding of IP fragmented packets for the UDP protocol. Does not
///   support fragmentation for the TCP and ICMP protocols.").
pub static AWS_NATGW: Profile = Profile {
    name: "aws-natgw",
    title: "AWS NAT Gateway",
    sources: sources::AWS_NATGW_SOURCES,
    rules: Rules::OutboundOnly,
    lb_rule_idle: fixed(Duration::from_secs(350)),
    outbound_rule_idle: fixed(Duration::from_secs(350)),
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::InsideOnly,
    tcp: TcpTimers::transitory(Duration::from_secs(30)),
    time_wait_range: None,
    pickup: SYN_ONLY,
    refresh: Refresh::AnyPacket,
    fragments: Fragments::ForwardUdp,
    default_expiry: Expiry::ResetOnNext,
    expiry_knob: ExpiryKnob::Fixed,
    snat: SnatPolicy {
        allocation: Allocation::Shared,
        ports_per_member: 0,
        ports_per_member_step: 1,
        ports_per_frontend: 64_512,
        hold_after_fin: Duration::ZERO,
        hold_after_rst: Duration::ZERO,
        hold_after_idle: Duration::ZERO,
    },
    udp: UdpTimeouts {
        unreplied: Duration::from_secs(350),
        replied: Duration::from_secs(350),
    },
};

/// GCP Cloud NAT (Google Cloud "Tune NAT configuration", NAT timeouts).
///
/// - Outbound only. TCP established idle timeout 1200 s (20 min) by default; GCP lets it be
///   set, idlegate accepts 30 s–24 h.
/// - At expiry: silent.
/// - Transitory (SYN, FIN) 30 s; UDP 30 s.
/// - TIME_WAIT 30 s by default, which idlegate applies both to the flow after its last ACK and
///   as the hold of its port after a FIN. Cloud NAT's release notes of 31 March 2026
///   (<https://cloud.google.com/nat/docs/release-notes>) announce that gateways created on or
///   after 30 September 2026 get a 30 s default (from 30 June, 30 or 120 s by region), while
///   gateways created before keep 120 s and a custom value stays. The default here is what a
///   gateway created today gets; an outbound rule's `time_wait` sets another (`"120s"` for a
///   gateway made before), as `tcpTimeWaitTimeoutSec` (`--tcp-time-wait-timeout`) does. Google
///   documents no range found: idlegate accepts 1 s–24 h, the established timeout's maximum.
/// - Ports: each VM gets a minimum of 64 (Cloud NAT's default `minPortsPerVm`). After a RST
///   or an idle expiry the port is free again at once: Google documents no hold but TIME_WAIT's,
///   which follows a FIN.
/// - IPv4 fragments: GCP documents nothing found; idlegate forwards them.
pub static GCP_NAT: Profile = Profile {
    name: "gcp-nat",
    title: "GCP Cloud NAT",
    sources: sources::GCP_NAT_SOURCES,
    rules: Rules::OutboundOnly,
    lb_rule_idle: fixed(Duration::from_secs(1200)),
    outbound_rule_idle: TimeoutRange {
        default: Duration::from_secs(1200),
        min: Duration::from_secs(30),
        max: Duration::from_secs(86_400),
    },
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::Sender,
    tcp: TcpTimers::transitory(Duration::from_secs(30)),
    time_wait_range: Some(TimeoutRange {
        default: Duration::from_secs(30),
        min: Duration::from_secs(1),
        max: Duration::from_secs(86_400),
    }),
    pickup: SYN_ONLY,
    refresh: Refresh::AnyPacket,
    fragments: Fragments::Forward,
    default_expiry: Expiry::Silent,
    expiry_knob: ExpiryKnob::Fixed,
    snat: SnatPolicy {
        allocation: Allocation::PerMember,
        ports_per_member: 64,
        ports_per_member_step: 1,
        ports_per_frontend: 64_512,
        hold_after_fin: Duration::from_secs(30),
        hold_after_rst: Duration::ZERO,
        hold_after_idle: Duration::ZERO,
    },
    udp: UdpTimeouts {
        unreplied: Duration::from_secs(30),
        replied: Duration::from_secs(30),
    },
};

/// Azure default outbound access: a VM without an outbound rule or NAT gateway, SNATed by the
/// platform (Azure "SNAT for outbound connections" and "Default outbound access").
///
/// - Outbound only. Idle timeout 4 min, fixed: outbound SNAT's timeout "is set to 4
///   minutes, and cannot be adjusted" (Azure "TCP settings for Azure VMs"). Silent.
/// - 1,024 SNAT ports per VM (pools of 1–50 VMs), held as for Azure LB outbound rules (240 s
///   after FIN, 15 s after RST, released at once at an idle expiry: the same SNAT page),
///   multiples of 8 as Azure allocates them; one per concurrent flow, as in `azure-lb`.
/// - Transitory and UDP: not documented; idlegate uses Azure LB's figures (30 s, 4 min).
/// - IPv4 fragments: not documented for default outbound access; dropped as Azure LB drops them.
pub static AZURE_SNAT: Profile = Profile {
    name: "azure-snat",
    title: "Azure default outbound access",
    sources: sources::AZURE_SNAT_SOURCES,
    rules: Rules::OutboundOnly,
    lb_rule_idle: fixed(minutes(4)),
    outbound_rule_idle: fixed(minutes(4)),
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::Sender,
    tcp: TcpTimers::transitory(Duration::from_secs(30)),
    time_wait_range: None,
    pickup: SYN_ONLY,
    refresh: Refresh::AnyPacket,
    fragments: Fragments::Drop,
    default_expiry: Expiry::Silent,
    expiry_knob: ExpiryKnob::Fixed,
    snat: SnatPolicy {
        allocation: Allocation::PerMember,
        ports_per_member: 1024,
        ports_per_member_step: 8,
        ports_per_frontend: 64_000,
        hold_after_fin: Duration::from_secs(240),
        hold_after_rst: Duration::from_secs(15),
        hold_after_idle: Duration::ZERO,
    },
    udp: UdpTimeouts {
        unreplied: minutes(4),
        replied: minutes(4),
    },
};

/// The minimums the IETF requires of NATs: RFC 5382 (TCP) and RFC 4787 (UDP).
///
/// - Outbound only. Established idle timeout at least 2 h 4 min (RFC 5382 REQ-5), so 2 h 4 min
///   by default and up to 5 days; transitory at least 4 min (REQ-5); UDP mappings at least
///   2 min (RFC 4787 REQ-5; 5 min recommended).
/// - At expiry: the RFCs prescribe nothing; idlegate drops silently, and a rule may choose any
///   action.
/// - Ports on demand, released without a hold.
/// - IPv4 fragments: forwarded, out-of-order ones held (RFC 4787 REQ-14: "A NAT MUST support
///   receiving in-order and out-of-order fragments").
pub static RFC5382: Profile = Profile {
    name: "rfc5382",
    title: "an RFC 5382 NAT",
    sources: sources::RFC5382_SOURCES,
    rules: Rules::OutboundOnly,
    lb_rule_idle: fixed(Duration::from_secs(7440)),
    outbound_rule_idle: TimeoutRange {
        default: Duration::from_secs(7440),
        min: Duration::from_secs(7440),
        max: Duration::from_secs(432_000),
    },
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::Sender,
    tcp: TcpTimers::transitory(minutes(4)),
    time_wait_range: None,
    pickup: SYN_ONLY,
    refresh: Refresh::AnyPacket,
    fragments: Fragments::Forward,
    default_expiry: Expiry::Silent,
    expiry_knob: ExpiryKnob::Rule,
    snat: SnatPolicy {
        allocation: Allocation::Shared,
        ports_per_member: 0,
        ports_per_member_step: 1,
        ports_per_frontend: 64_512,
        hold_after_fin: Duration::ZERO,
        hold_after_rst: Duration::ZERO,
        hold_after_idle: Duration::ZERO,
    },
    udp: UdpTimeouts {
        unreplied: minutes(2),
        replied: minutes(2),
    },
};

/// GCP VPC firewall rules' connection tracking (GCP VPC firewall docs).
///
/// - Tracked connections are forgotten after 10 min idle, not configurable; silently.
/// - GCP documents one figure; idlegate applies it to UDP too, and uses 30 s for transitory
///   TCP states, as for the other boxes.
/// - The firewall translates nothing: idlegate still maps its frontend to the members, which
///   changes nothing of what an idle flow meets. Outbound, members keep their source ports
///   unless the tuple clashes.
/// - IPv4 fragments: GCP documents nothing found; idlegate forwards them.
pub static GCP_FIREWALL: Profile = Profile {
    name: "gcp-firewall",
    title: "GCP VPC firewall",
    sources: sources::GCP_FIREWALL_SOURCES,
    rules: Rules::InboundAndOutbound,
    lb_rule_idle: fixed(minutes(10)),
    outbound_rule_idle: fixed(minutes(10)),
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::Sender,
    tcp: TcpTimers::transitory(Duration::from_secs(30)),
    time_wait_range: None,
    pickup: SYN_ONLY,
    refresh: Refresh::AnyPacket,
    fragments: Fragments::Forward,
    default_expiry: Expiry::Silent,
    expiry_knob: ExpiryKnob::Fixed,
    snat: MASQUERADE,
    udp: UdpTimeouts {
        unreplied: minutes(10),
        replied: minutes(10),
    },
};

/// AWS Application Load Balancer (AWS ALB docs, "Connection idle timeout").
///
/// - Inbound only. Idle timeout 60 s by default, 1–4000 s.
/// - Only data refreshes it: the ALB terminates TCP and answers keepalive probes itself, so
///   TCP keepalive does not keep a connection open; idlegate counts only segments that carry
///   new bytes or change the flow's state.
/// - At expiry the ALB closes both connections. An L4 gateway cannot close a TCP connection
///   it is not an end of without a RST, so idlegate resets both ends: the application sees
///   ECONNRESET where an ALB's client would read an end of stream.
/// - Transitory: AWS documents none; idlegate uses 30 s. No UDP (idlegate: 60 s, unused by
///   HTTP).
/// - IPv4 fragments: forwarded (the ALB terminates TCP; its own stack reassembles; AWS
///   documents nothing).
pub static AWS_ALB: Profile = Profile {
    name: "aws-alb",
    title: "AWS ALB",
    sources: sources::AWS_ALB_SOURCES,
    rules: Rules::InboundOnly,
    lb_rule_idle: TimeoutRange {
        default: Duration::from_secs(60),
        min: Duration::from_secs(1),
        max: Duration::from_secs(4000),
    },
    outbound_rule_idle: fixed(Duration::from_secs(60)),
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::Sender,
    tcp: TcpTimers::transitory(Duration::from_secs(30)),
    time_wait_range: None,
    pickup: SYN_ONLY,
    refresh: Refresh::DataOnly,
    fragments: Fragments::Forward,
    default_expiry: Expiry::Reset,
    expiry_knob: ExpiryKnob::Fixed,
    snat: NO_SNAT,
    udp: UdpTimeouts {
        unreplied: Duration::from_secs(60),
        replied: Duration::from_secs(60),
    },
};

/// The SNAT policy of a box that does no SNAT (never used: its outbound rules are refused).
const NO_SNAT: SnatPolicy = SnatPolicy {
    allocation: Allocation::Shared,
    ports_per_member: 0,
    ports_per_member_step: 1,
    ports_per_frontend: 0,
    hold_after_fin: Duration::ZERO,
    hold_after_rst: Duration::ZERO,
    hold_after_idle: Duration::ZERO,
};

/// Every profile idlegate knows.
pub static ALL: [&Profile; 15] = [
    &AZURE_LB,
    &AZURE_SNAT,
    &AZURE_NATGW,
    &AZURE_APPSERVICE,
    &AZURE_FIREWALL,
    &AZURE_FIREWALL_EAST_WEST,
    &AWS_NLB,
    &AWS_NATGW,
    &AWS_ALB,
    &GCP_NAT,
    &GCP_FIREWALL,
    &LINUX_CONNTRACK,
    &KUBE_PROXY,
    &IPVS,
    &RFC5382,
];

/// The profile called `name`.
pub fn find(name: &str) -> Option<&'static Profile> {
    ALL.iter().copied().find(|p| p.name == name)
}

/// No timer may be scaled below this: a flow must outlive its own handshake.
pub const MIN_SCALED_TIMER: Duration = Duration::from_millis(10);

pub(crate) fn shortest_timer(profile: &Profile) -> Duration {
    profile
        .tcp
        .shortest()
        .min(profile.udp.unreplied)
        .min(profile.udp.replied)
        .min(profile.lb_rule_idle.min)
        .min(profile.outbound_rule_idle.min)
}

/// The largest `time_scale` that keeps every timer of `profile` at or above 10 ms (no timer is
/// scaled below that: a flow must outlive its own handshake).
///
/// It still counts the timers that run at `TCP_RETRANSMISSION_FLOOR` (the not-established TCP
/// states), although the floor keeps them above 10 ms: dropping them would raise the limit of
/// every profile whose shortest timer is one of them (Azure LB's from 3000 to 24000), so that
/// configs refused before would be accepted and the limits the docs and `profiles` print would
/// change, for scales no lab needs.
pub fn max_time_scale(profile: &Profile) -> u32 {
    u32::try_from(shortest_timer(profile).as_millis() / MIN_SCALED_TIMER.as_millis())
        .unwrap_or(u32::MAX)
}

/// Azure's two pages disagree on an outbound rule's maximum: what idlegate enforces, and why,
/// for the config's error and `--explain`.
pub const AZURE_OUTBOUND_MAXIMUM: &str = "Azure's \"Outbound rules\" page allows 4–120 min, its \"Load Balancer TCP Reset and Idle Timeout\" page says 4–100 min; idlegate enforces 120 min, the outbound rules page's";

/// Above this an Azure LB outbound rule is within one Azure page's range and outside the
/// other's ([`AZURE_OUTBOUND_MAXIMUM`]).
pub const AZURE_OUTBOUND_DISPUTED_ABOVE: Duration = minutes(100);

/// The profile used when a config names none.
pub fn default_profile() -> &'static Profile {
    &AZURE_LB
}
