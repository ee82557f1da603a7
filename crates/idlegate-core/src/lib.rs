//! The sans-IO core of idlegate: a stateful NAT / L4 load balancer that forgets idle flows the
//! way real middleboxes do (Azure Load Balancer and SNAT first).
//!
//! Packets and `Instant`s go in; rewritten packets with a verdict, generated packets, events and
//! the next deadline come out. Nothing here reads a clock, makes a syscall or spawns a thread, so
//! tests drive it in virtual time. Start at [`Engine`]; the driver with TUN devices lives in the
//! `idlegate` crate.
//!
//! The modules are private, in four layers; what is public is re-exported here (as
//! `quinn-proto` does), and nothing else:
//!
//! | layer | what | depends on |
//! |---|---|---|
//! | `engine/` | the state machine: rule compilation, the packet path, expiry, checks | all below |
//! | `state/` | flows and their table, TCP windows, the timing wheel, SNAT ports, fragments, shards | `wire`, `model` |
//! | `model/` | the TOML config (raw, validated), profiles, precedence, expiry actions, units | `wire` (protocols) |
//! | `wire/` | typed views of IPv4/IPv6, TCP, UDP, ICMP; checksums | nothing |

// No unsafe code, but for one prefetch hint (`state/flow/index.rs`, `prefetch`), which
// allows it where it stands with its SAFETY comment.
#![deny(unsafe_code)]

mod engine;
mod model;
mod state;
mod wire;

#[cfg(any(test, fuzzing))]
pub use engine::InvariantError;
pub use engine::{
    Batch, BatchPacket, Counters, DropReason, Engine, Event, ExpiryCause, FlowInfo, FlowSummary,
    MadeSegment, Retiming, SnatUsage, Transmit, Verdict, BATCH, UNTRANSLATED,
};
pub use model::config::Config;
pub use model::expiry::Expiry;
/// Which idle timeout wins when several settings name one, and why.
pub use model::precedence;
/// The real middleboxes' timers and behaviours, with their public sources.
pub use model::profile;
pub use state::flow::{FlowState, Interface, RuleId};
pub use state::shard::Sharding;

/// The hash [`Sharding`] spreads packets with, for a steering program that computes the same.
pub mod shard {
    pub use crate::state::shard::{endpoint_hash, FINAL_MULTIPLIER, FINAL_SHIFT, ROUND_MULTIPLIER};
}

/// The TOML config: [`Config`] and what it is made of, the largest time scale a profile allows, and
/// how its durations read.
pub mod config {
    pub use crate::model::config::{
        find_profile, BackendPool, Config, ConfigError, ExpiryFrom, Frontend, Idle, InboundNatRule,
        LbRule, Member, NatGateway, OutboundRule, Protocols, RuleChange, RuleChangeError, Source,
        TimeoutFrom, UnknownProfile, LAB_ENV, TCP_RETRANSMISSION_FLOOR, TIME_SCALE_ENV,
    };
    pub use crate::model::profile::max_time_scale;
    pub use crate::model::units::{half_the_idle_timeout, human, whole_seconds};
}

/// Typed views of the packets the engine reads, the rewrites it makes, and the buffer sizes
/// [`Engine::poll_transmit`] needs.
pub mod packet {
    pub use crate::state::fragment::HELD_LEN;
    pub use crate::wire::error::ParseError;
    pub use crate::wire::packet::{
        rewrite_dst, rewrite_src, Headers, Parsed, Protocol, TcpFlags, TcpSegment,
        TransportChecksum, CONTROL_LEN,
    };
}
