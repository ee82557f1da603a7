//! Counters: what the engine has done, and why it dropped what it dropped.
//!
//! Every drop has a [`DropReason`] with a counter of its own; [`Counters`] adds up the rest
//! (flows made and expired, RSTs and ACKs sent, segments out of window, fragments passed).
//! Shards' and families' counters add up with [`Counters::add`].

use crate::model::expiry::Expiry;
use crate::wire::error::ParseError;

/// Why a packet was dropped. Each reason has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    NotIp,
    Truncated,
    BadChecksum,
    /// An IP fragment the profile's box drops (every IPv6 fragment, and under some profiles
    /// every IPv4 one: see [`crate::profile::Fragments`]).
    Fragment,
    UnsupportedProtocol,
    /// A new connection (or a UDP datagram) that no rule accepts.
    NoRule,
    /// A TCP segment other than a SYN that belongs to no flow: never seen, or expired and
    /// forgotten. This is the middlebox's silent drop. Also an ICMP error about no live flow.
    NoFlow,
    /// A SYN from a member whose outbound rule has no SNAT port left.
    PortExhausted,
    /// A SYN whose translated tuple is already another flow's.
    TupleInUse,
    /// A new flow (a SYN, a UDP datagram, a segment loose pickup takes up) while the gateway
    /// holds `max_flows` flows.
    TableFull,
    /// A segment of a flow expired under `ack-and-discard`: acknowledged, never delivered.
    Discarded,
    /// A TCP segment whose flags no stack sends together (SYN+FIN, SYN+RST, FIN without
    /// ACK, none of SYN, ACK, RST: conntrack's `tcp_valid_flags`). It creates nothing.
    InvalidFlags,
    /// A later IPv4 fragment whose first fragment (with the ports) did not come in time, or
    /// that found no room to wait for it (`crate::state::fragment`).
    FragmentWithoutFirst,
}

impl DropReason {
    pub const ALL: [DropReason; 13] = [
        DropReason::NotIp,
        DropReason::Truncated,
        DropReason::BadChecksum,
        DropReason::Fragment,
        DropReason::UnsupportedProtocol,
        DropReason::NoRule,
        DropReason::NoFlow,
        DropReason::PortExhausted,
        DropReason::TupleInUse,
        DropReason::TableFull,
        DropReason::Discarded,
        DropReason::InvalidFlags,
        DropReason::FragmentWithoutFirst,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NotIp => "not-ip",
            DropReason::Truncated => "truncated",
            DropReason::BadChecksum => "bad-checksum",
            DropReason::Fragment => "fragment",
            DropReason::UnsupportedProtocol => "unsupported-protocol",
            DropReason::NoRule => "no-rule",
            DropReason::NoFlow => "no-flow",
            DropReason::PortExhausted => "snat-port-exhausted",
            DropReason::TupleInUse => "tuple-in-use",
            DropReason::TableFull => "table-full",
            DropReason::Discarded => "ack-and-discard",
            DropReason::InvalidFlags => "invalid-tcp-flags",
            DropReason::FragmentWithoutFirst => "fragment-without-first",
        }
    }
}

impl From<ParseError> for DropReason {
    fn from(e: ParseError) -> DropReason {
        match e {
            ParseError::NotIp => DropReason::NotIp,
            ParseError::Truncated => DropReason::Truncated,
            ParseError::BadChecksum => DropReason::BadChecksum,
            ParseError::Fragment => DropReason::Fragment,
            ParseError::UnsupportedProtocol => DropReason::UnsupportedProtocol,
        }
    }
}

/// What the engine has done, for the driver's counters and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub forwarded: u64,
    pub flows_created: u64,
    pub flows_expired: u64,
    /// RSTs the engine generated (expiry `reset` and `reset-on-next`).
    pub resets_sent: u64,
    /// ICMP errors about a flow's packet, translated and passed on (RFC 5508).
    pub icmp_errors_translated: u64,
    /// ACKs the engine generated for data it discarded (expiry `ack-and-discard`).
    pub acks_sent: u64,
    /// IPv4 fragments passed on, translated, as the profile's box does (`crate::state::fragment`).
    pub fragments_forwarded: u64,
    /// TCP segments of a flow outside its windows (`crate::state::flow::window`): passed on, but they
    /// changed nothing and did not refresh the flow.
    pub out_of_window: u64,
    pub(crate) drops: [u64; DropReason::ALL.len()],
    pub(crate) expiries: [u64; Expiry::ALL.len()],
}

impl Counters {
    /// Flows expired with `action` (as carried out: a `reset` rule's non-established flows
    /// count as `silent`).
    pub fn expired(&self, action: Expiry) -> u64 {
        self.expiries[action as usize]
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Every drop reason with its count.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.dropped(r)))
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Counters) {
        self.forwarded += other.forwarded;
        self.flows_created += other.flows_created;
        self.flows_expired += other.flows_expired;
        self.resets_sent += other.resets_sent;
        self.acks_sent += other.acks_sent;
        self.out_of_window += other.out_of_window;
        self.fragments_forwarded += other.fragments_forwarded;
        self.icmp_errors_translated += other.icmp_errors_translated;
        for (a, b) in self.drops.iter_mut().zip(other.drops) {
            *a += b;
        }
        for (a, b) in self.expiries.iter_mut().zip(other.expiries) {
            *a += b;
        }
    }
}
