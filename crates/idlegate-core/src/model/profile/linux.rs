//! The Linux profiles: netfilter connection tracking with NAT, kube-proxy (conntrack with its
//! own two timers) and IPVS. Their figures are the kernel's defaults, from its documentation
//! and sources, and the sysctls or tools that set them.

use super::{
    fixed, sources, Allocation, ExpiryKnob, Fragments, Pickup, PickupKnob, PickupPolicy, Profile,
    Refresh, ResetTarget, Rules, SnatPolicy, TcpTimers, TimeoutRange, UdpTimeouts, NO_SNAT,
    SYN_ONLY,
};
use crate::model::expiry::Expiry;
use std::time::Duration;

/// The largest timeout a Linux conntrack or IPVS sysctl holds: INT_MAX jiffies at HZ=1000.
const SYSCTL_MAX: Duration = Duration::from_secs(2_147_483);

/// What the kernel's conntrack does, as `net.netfilter.nf_conntrack_*` sets it.
const CONNTRACK_TCP: TcpTimers = TcpTimers {
    syn_sent: Duration::from_secs(120),
    syn_received: Duration::from_secs(60),
    fin_wait: Duration::from_secs(120),
    close_wait: Duration::from_secs(60),
    last_ack: Duration::from_secs(30),
    time_wait: Duration::from_secs(120),
    close: Duration::from_secs(10),
};

/// Linux masquerade: a member keeps its source port unless the tuple would clash; the port is
/// free again the moment its entry is gone.
pub(super) const MASQUERADE: SnatPolicy = SnatPolicy {
    allocation: Allocation::PreservePort,
    ports_per_member: 0,
    ports_per_member_step: 1,
    ports_per_frontend: 64_512,
    hold_after_fin: Duration::ZERO,
    hold_after_rst: Duration::ZERO,
    hold_after_idle: Duration::ZERO,
};

/// Linux netfilter connection tracking with NAT (nftables or iptables `dnat` and `masquerade`),
/// at the kernel's defaults (Documentation/networking/nf_conntrack-sysctl.rst).
///
/// - `nf_conntrack_tcp_timeout_established` 432,000 s (5 days). A sysctl sets it for the whole
///   namespace; an nftables `ct timeout` object sets it per rule, which is what a rule's
///   `idle_timeout` here stands for. Accepted: 1 s up to what the sysctl holds (2,147,483 s).
/// - Other states: SYN_SENT 120 s, SYN_RECV 60 s, FIN_WAIT 120 s, CLOSE_WAIT 60 s (a
///   half-closed connection dies after a minute), LAST_ACK 30 s, TIME_WAIT 120 s, CLOSE 10 s.
///   Not modelled: `timeout_unacknowledged` and `timeout_max_retrans` (300 s while data waits
///   for an ACK), which shorten a dead connection's entry, not an idle one's.
/// - UDP: `nf_conntrack_udp_timeout` 30 s, `nf_conntrack_udp_timeout_stream` 120 s once
///   answered (the kernel waits 2 s of two-way traffic before granting it; idlegate at once).
/// - At expiry: silent; the entry is simply gone. A rule may choose another action (the
///   router's own firewall rules may answer a dead flow's packet with a RST). With `nf_conntrack_tcp_loose=1` (the
///   default; `loose_pickup = false` turns it off) the next ACK segment from the side that
///   opened the connection makes a new entry in ESTABLISHED, so a client that speaks first
///   after the timeout carries on. A server on the outside that speaks first is dropped (a
///   router's input chain drops what is not its own); a member that speaks first is picked up
///   by its pool's outbound rule, if it has one, and leaves masqueraded.
/// - What no rule claims from the inside is routed on untranslated, as the kernel does (no NAT
///   rule binds the new entry): a member's SYN, and under loose pickup a member's mid-stream
///   segment of a connection whose entry has expired, e.g. a server behind an `lb_rule` and
///   without masquerade that speaks first after the timeout. The packet leaves with the
///   member's own address, and replies matching the entry come back (the remote's stack
///   answers a segment of no socket of its own with a RST, which reaches the member). Such a
///   flow is kept for the profile's default established timeout (the sysctl's), and is
///   called `(untranslated)` in `idlegate flows`. Packets from the outside that no rule
///   claims are dropped (a router's input chain).
/// - Masquerade keeps the member's source port when the tuple stays unique, and frees it as
///   soon as the entry is gone.
/// - IPv4 fragments: reassembled before tracking (conntrack enables `nf_defrag_ipv4`, whose hook
///   at `NF_IP_PRI_CONNTRACK_DEFRAG` runs before conntrack and NAT) and fragmented again on
///   output; idlegate forwards each fragment translated, which delivers the same datagram.
pub static LINUX_CONNTRACK: Profile = CONNTRACK;

/// Kubernetes kube-proxy in iptables or nftables mode: Linux conntrack, with the two timers
/// kube-proxy sets at start-up (kube-proxy reference: `--conntrack-tcp-timeout-established`
/// 24 h, `--conntrack-tcp-timeout-close-wait` 1 h). Everything else is the kernel's, as in
/// `linux-conntrack`. A Service is an `lb_rule` (DNAT to its endpoints), masquerade an
/// `outbound_rule`; what no Service rule claims is routed on untranslated, and its
/// `KUBE-FORWARD` chain drops what conntrack calls invalid, as in `linux-conntrack`. IPv4
/// fragments as in `linux-conntrack`.
pub static KUBE_PROXY: Profile = Profile {
    name: "kube-proxy",
    title: "kube-proxy",
    sources: sources::KUBE_PROXY_SOURCES,
    rules: Rules::InboundAndOutbound,
    lb_rule_idle: TimeoutRange {
        default: Duration::from_secs(86_400),
        min: Duration::from_secs(1),
        max: SYSCTL_MAX,
    },
    outbound_rule_idle: TimeoutRange {
        default: Duration::from_secs(86_400),
        min: Duration::from_secs(1),
        max: SYSCTL_MAX,
    },
    tcp: TcpTimers {
        close_wait: Duration::from_secs(3600),
        ..CONNTRACK_TCP
    },
    ..CONNTRACK
};

/// Plain conntrack, as a `const` so that kube-proxy can start from it.
const CONNTRACK: Profile = Profile {
    name: "linux-conntrack",
    title: "Linux conntrack",
    sources: sources::LINUX_CONNTRACK_SOURCES,
    rules: Rules::InboundAndOutbound,
    lb_rule_idle: TimeoutRange {
        default: Duration::from_secs(432_000),
        min: Duration::from_secs(1),
        max: SYSCTL_MAX,
    },
    outbound_rule_idle: TimeoutRange {
        default: Duration::from_secs(432_000),
        min: Duration::from_secs(1),
        max: SYSCTL_MAX,
    },
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::Sender,
    tcp: CONNTRACK_TCP,
    time_wait_range: None,
    pickup: PickupPolicy {
        default: Pickup::Loose,
        knob: PickupKnob::Sysctl,
    },
    refresh: Refresh::AnyPacket,
    fragments: Fragments::Forward,
    default_expiry: Expiry::Silent,
    expiry_knob: ExpiryKnob::Rule,
    snat: MASQUERADE,
    udp: UdpTimeouts {
        unreplied: Duration::from_secs(30),
        replied: Duration::from_secs(120),
    },
};

/// Linux IPVS, the kernel's L4 load balancer (ipvsadm(8), `--set tcp tcpfin udp`; the
/// kernel's `ip_vs_proto_tcp.c` and `ip_vs_proto_udp.c` for the other states).
///
/// - Inbound only (virtual services). ESTABLISHED 900 s, set by `ipvsadm --set` to any number
///   of seconds (idlegate: 1 s up to 2,147,483 s).
/// - FIN_WAIT 120 s (`tcpfin`); the kernel's other states: SYN_SENT 120 s, SYN_RECV 60 s,
///   CLOSE_WAIT 60 s, LAST_ACK 30 s, TIME_WAIT 120 s, CLOSE 10 s. UDP 300 s (`udp`).
/// - At expiry: silent. Only a SYN schedules a new connection (`net.ipv4.vs.sloppy_tcp=0`).
///   Note: a director whose firewall lets a dead flow's next packet reach its own stack
///   answers it with a RST; `expiry = "reset-on-next"` models that director.
/// - IPv4 fragments: reassembled (IPVS's hooks run after the kernel's defragmentation, and
///   `ip_vs_core.c` gathers fragments itself: `ip_vs_gather_frags`); idlegate forwards them.
pub static IPVS: Profile = Profile {
    name: "ipvs",
    title: "Linux IPVS",
    sources: sources::IPVS_SOURCES,
    rules: Rules::InboundOnly,
    lb_rule_idle: TimeoutRange {
        default: Duration::from_secs(900),
        min: Duration::from_secs(1),
        max: SYSCTL_MAX,
    },
    outbound_rule_idle: fixed(Duration::from_secs(900)),
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::Sender,
    tcp: CONNTRACK_TCP,
    time_wait_range: None,
    pickup: SYN_ONLY,
    refresh: Refresh::AnyPacket,
    fragments: Fragments::Forward,
    default_expiry: Expiry::Silent,
    expiry_knob: ExpiryKnob::Rule,
    snat: NO_SNAT,
    udp: UdpTimeouts {
        unreplied: Duration::from_secs(300),
        replied: Duration::from_secs(300),
    },
};
