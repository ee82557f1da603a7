//! What the engine remembers between packets: flows and their table, the timing wheel, SNAT
//! ports, TCP windows (a part of the flow, in `flow/window.rs`), IPv4 fragments, and which shard owns a packet.

pub mod flow;
pub mod fragment;
pub mod shard;
pub mod snat;
pub mod timer;
