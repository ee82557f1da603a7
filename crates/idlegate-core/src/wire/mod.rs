//! The packets on the wire: typed views of IPv4/IPv6 with TCP, UDP and ICMP, what differs
//! between the two families, and checksum arithmetic. No state, no allocation on any input.

pub mod checksum;
pub mod error;
pub mod family;
pub mod icmp;
pub mod packet;
