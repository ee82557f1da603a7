//! The sans-IO core of idlegate: a stateful NAT / L4 load balancer that forgets idle flows the
//! way real middleboxes do (Azure Load Balancer and SNAT first).
//!
//! Packets and `Instant`s go in; rewritten packets with a verdict, generated packets, events and
//! the next deadline come out. Nothing here reads a clock, makes a syscall or spawns a thread, so
//! tests drive it in virtual time. Start at [`Engine`]; the driver with TUN devices lives in the
//! `idlegate` crate.
//!
//! | module | domain word |
//! |---|---|
//! | [`engine`] | the state machine: verdicts, timeouts, transmits, events |
//! | [`counters`] | what the engine did, and why it dropped what it dropped |
//! | [`flow`] | flows, their TCP state and the two-key flow table |
//! | [`fragment`] | IPv4 fragments: how the pieces of a datagram find their flow |
//! | [`timer`] | the timing wheel behind every idle timeout |
//! | [`window`] | TCP window tracking: which segments may change a flow |
//! | [`snat`] | SNAT ports lent to outbound flows |
//! | [`shard`] | which of several engines (one per core) owns a packet |
//! | [`expiry`] | what happens when a flow is forgotten |
//! | [`config`] | the TOML config, validated |
//! | [`precedence`] | which idle timeout wins when several settings name one |
//! | [`profile`] | the real middleboxes' timers, with sources |
//! | [`packet`] | typed views of IPv4/TCP/UDP, in-place rewriting, RSTs |
//! | [`icmp`] | ICMP errors about translated packets, translated back (RFC 5508) |
//! | [`checksum`] | RFC 1624 incremental checksum update |

pub mod engine;
pub mod model;
pub mod state;
pub mod wire;

pub use engine::counters;
pub use model::{expiry, precedence, profile};
pub mod config {
    pub use crate::model::config::*;
    pub use crate::model::profile::{max_time_scale, MIN_SCALED_TIMER};
    pub use crate::model::units::human;
}
pub use state::flow::window;
pub use state::{flow, fragment, shard, snat, timer};
pub use wire::{checksum, family, icmp, packet};

pub use config::Config;
pub use engine::{Counters, DropReason, Engine, Event, FlowSummary, Transmit, Verdict};
pub use expiry::Expiry;
pub use flow::{FlowState, Interface};
