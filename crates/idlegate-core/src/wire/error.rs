//! Why a packet could not be read: the one error every parser of the wire layer returns, so
//! that the family layer and the packet views share it without depending on each other.

/// Why a packet could not be parsed. Each maps to a counted drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not of the family it was handed to, or not IP at all (the version nibble).
    NotIp,
    /// Shorter than its headers or its own length fields say.
    Truncated,
    /// A checksum is wrong: the IPv4 header's, or an ICMP error's own or its quoted header's.
    BadChecksum,
    /// An IPv4 fragment or an IPv6 packet with a fragment header: ports are not in every
    /// fragment, so it cannot be matched to a flow.
    Fragment,
    /// Neither TCP nor UDP.
    UnsupportedProtocol,
}
