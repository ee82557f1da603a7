//! What the engine remembers between packets: flows and their table, the timing wheel, SNAT
//! ports, TCP windows, IPv4 fragments, and which shard owns a packet.

pub mod flow;
pub mod fragment;
pub mod shard;
pub mod snat;
pub mod timer;
pub mod window;
