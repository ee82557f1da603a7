//! Address families: what IPv4 and IPv6 do differently on the wire, behind one trait.
//!
//! The engine keeps one flow table per family and is generic over [`Endpoint`]:
//! `SocketAddrV4` for IPv4, `SocketAddrV6` for IPv6. A flow never mixes them (the config refuses
//! a rule whose frontend and members differ in family), so IPv4 flows keep their 64 bytes.
//! Here lives what differs: the IP header (IPv4 has a header checksum, IPv6 a fixed 40-byte
//! header with no checksum and extension headers idlegate does not follow), and the words of
//! the pseudo-header that an address change moves in a TCP or UDP checksum (RFC 1624 for both).

use crate::wire::checksum;
use crate::wire::error::ParseError;
use smoltcp::wire::{Icmpv4Packet, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet};
use std::fmt::{Debug, Display};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Which address of an IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// The IP header of a packet, as far as the engine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader<A> {
    pub src: A,
    pub dst: A,
    pub protocol: IpProtocol,
    /// Offset of the transport header.
    pub l4: usize,
    /// End of the packet as its header says (trailing bytes are ignored).
    pub end: usize,
}

/// What an IPv4 fragment's header says of it (see [`crate::state::fragment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader<A> {
    pub ip: IpHeader<A>,
    /// The IP ID that all fragments of one datagram share.
    pub id: u16,
    /// Where this fragment's bytes sit in the datagram's payload.
    pub offset: usize,
    /// Whether more fragments follow.
    pub more: bool,
}

/// A transport endpoint of one address family: an address and a port.
pub trait Endpoint:
    Copy + Eq + Hash + Debug + Display + Into<SocketAddr> + Send + Sync + 'static
{
    /// The family's address.
    type Ip: Copy
        + Eq
        + Hash
        + Ord
        + Debug
        + Display
        + Into<IpAddr>
        + Into<IpAddress>
        + Send
        + Sync
        + 'static;

    /// The IP version number.
    const VERSION: u8;
    /// Length of the IP header of the packets the gateway writes itself.
    const IP_HEADER_LEN: usize;

    fn at(ip: Self::Ip, port: u16) -> Self;
    fn addr(&self) -> Self::Ip;
    fn port(&self) -> u16;
    /// `ip` if it is of this family.
    fn ip_of(ip: IpAddr) -> Option<Self::Ip>;
    /// Feeds two addresses into a flow-key hash.
    fn hash_addrs(h: &mut impl Hasher, src: Self::Ip, dst: Self::Ip);
    /// A TCP or UDP checksum after one pseudo-header address changed from `old` to `new`.
    fn update_checksum(sum: u16, old: Self::Ip, new: Self::Ip) -> u16;
    /// Validates the IP header of `packet` (version, lengths, checksum, no fragment).
    fn parse_ip(packet: &[u8]) -> Result<IpHeader<Self::Ip>, ParseError>;
    /// The fragment header of a packet [`Endpoint::parse_ip`] called a fragment: IPv4 only
    /// (IPv6 fragments are not followed).
    fn fragment_of(packet: &[u8]) -> Option<FragmentHeader<Self::Ip>>;
    /// Sets one address of the IP header, patching the header checksum if it has one.
    fn set_ip(packet: &mut [u8], side: Side, old: Self::Ip, new: Self::Ip);
    /// Writes an IP header for a packet of `payload_len` transport bytes into `buf`.
    fn write_ip_header(
        buf: &mut [u8],
        src: Self::Ip,
        dst: Self::Ip,
        protocol: IpProtocol,
        payload_len: usize,
    );

    /// The family's ICMP: ICMP for IPv4, ICMPv6 for IPv6.
    const ICMP: IpProtocol;
    /// Whether an ICMP message type reports a failed packet and quotes it.
    fn is_icmp_error(message_type: u8) -> bool;
    /// Whether an ICMP message's checksum is right (ICMPv6's covers a pseudo-header).
    fn verify_icmp(message: &[u8], src: Self::Ip, dst: Self::Ip) -> bool;
    /// Computes an ICMP message's checksum anew.
    fn fill_icmp(message: &mut [u8], src: Self::Ip, dst: Self::Ip);
    /// Reads the IP header an ICMP error quotes, which may be cut short after it: only the
    /// header itself is checked (and, for IPv4, its checksum).
    fn parse_quoted_ip(bytes: &[u8]) -> Result<IpHeader<Self::Ip>, ParseError>;
}

impl Endpoint for SocketAddrV4 {
    type Ip = Ipv4Addr;
    const VERSION: u8 = 4;
    const IP_HEADER_LEN: usize = 20;
    const ICMP: IpProtocol = IpProtocol::Icmp;

    /// Destination unreachable (fragmentation needed included), time exceeded, parameter
    /// problem (RFC 792).
    fn is_icmp_error(message_type: u8) -> bool {
        matches!(message_type, 3 | 11 | 12)
    }
    fn verify_icmp(message: &[u8], _: Ipv4Addr, _: Ipv4Addr) -> bool {
        Icmpv4Packet::new_checked(message).is_ok_and(|m| m.verify_checksum())
    }
    fn fill_icmp(message: &mut [u8], _: Ipv4Addr, _: Ipv4Addr) {
        Icmpv4Packet::new_unchecked(message).fill_checksum();
    }
    fn parse_quoted_ip(bytes: &[u8]) -> Result<IpHeader<Ipv4Addr>, ParseError> {
        let first = *bytes.first().ok_or(ParseError::Truncated)?;
        let header_len = usize::from(first & 0x0f) * 4;
        if first >> 4 != 4 {
            return Err(ParseError::NotIp);
        }
        if header_len < 20 || bytes.len() < header_len {
            return Err(ParseError::Truncated);
        }
        if checksum::of(&bytes[..header_len]) != 0 {
            return Err(ParseError::BadChecksum);
        }
        let ip = Ipv4Packet::new_unchecked(bytes);
        if ip.frag_offset() != 0 {
            return Err(ParseError::Fragment);
        }
        Ok(IpHeader {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            protocol: ip.next_header(),
            l4: header_len,
            end: bytes.len(),
        })
    }

    fn at(ip: Ipv4Addr, port: u16) -> Self {
        SocketAddrV4::new(ip, port)
    }
    fn addr(&self) -> Ipv4Addr {
        *self.ip()
    }
    fn port(&self) -> u16 {
        SocketAddrV4::port(self)
    }
    fn ip_of(ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
    #[inline]
    fn hash_addrs(h: &mut impl Hasher, src: Ipv4Addr, dst: Ipv4Addr) {
        h.write_u64(u64::from(u32::from(src)) << 32 | u64::from(u32::from(dst)));
    }
    #[inline]
    fn update_checksum(sum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
        checksum::update_u32(sum, old.into(), new.into())
    }

    fn parse_ip(packet: &[u8]) -> Result<IpHeader<Ipv4Addr>, ParseError> {
        let ip = Ipv4Packet::new_checked(packet).map_err(|_| match packet.first() {
            Some(b) if b >> 4 != 4 => ParseError::NotIp,
            _ => ParseError::Truncated,
        })?;
        if ip.version() != 4 {
            return Err(ParseError::NotIp);
        }
        if !ip.verify_checksum() {
            return Err(ParseError::BadChecksum);
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            return Err(ParseError::Fragment);
        }
        Ok(IpHeader {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            protocol: ip.next_header(),
            l4: usize::from(ip.header_len()),
            end: usize::from(ip.total_len()),
        })
    }

    fn fragment_of(packet: &[u8]) -> Option<FragmentHeader<Ipv4Addr>> {
        let ip = Ipv4Packet::new_checked(packet).ok()?;
        (ip.version() == 4 && ip.verify_checksum()).then(|| FragmentHeader {
            ip: IpHeader {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
                protocol: ip.next_header(),
                l4: usize::from(ip.header_len()),
                end: usize::from(ip.total_len()),
            },
            id: ip.ident(),
            offset: usize::from(ip.frag_offset()),
            more: ip.more_frags(),
        })
    }

    #[inline]
    fn set_ip(packet: &mut [u8], side: Side, old: Ipv4Addr, new: Ipv4Addr) {
        let mut ip = Ipv4Packet::new_unchecked(packet);
        match side {
            Side::Src => ip.set_src_addr(new),
            Side::Dst => ip.set_dst_addr(new),
        }
        let sum = checksum::update_u32(ip.checksum(), old.into(), new.into());
        ip.set_checksum(sum);
    }

    fn write_ip_header(
        buf: &mut [u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: IpProtocol,
        payload_len: usize,
    ) {
        let mut ip = Ipv4Packet::new_unchecked(buf);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len((20 + payload_len) as u16);
        ip.set_dont_frag(true);
        ip.set_hop_limit(64);
        ip.set_next_header(protocol);
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
    }
}

impl Endpoint for SocketAddrV6 {
    type Ip = Ipv6Addr;
    const VERSION: u8 = 6;
    const IP_HEADER_LEN: usize = 40;
    const ICMP: IpProtocol = IpProtocol::Icmpv6;

    /// Destination unreachable, packet too big, time exceeded, parameter problem (RFC 4443).
    fn is_icmp_error(message_type: u8) -> bool {
        matches!(message_type, 1..=4)
    }
    fn verify_icmp(message: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        Icmpv6Packet::new_checked(message).is_ok_and(|m| m.verify_checksum(&src, &dst))
    }
    fn fill_icmp(message: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) {
        Icmpv6Packet::new_unchecked(message).fill_checksum(&src, &dst);
    }
    fn parse_quoted_ip(bytes: &[u8]) -> Result<IpHeader<Ipv6Addr>, ParseError> {
        if bytes.len() < 40 {
            return Err(ParseError::Truncated);
        }
        let ip = Ipv6Packet::new_unchecked(bytes);
        if ip.version() != 6 {
            return Err(ParseError::NotIp);
        }
        if ip.next_header() == IpProtocol::Ipv6Frag {
            return Err(ParseError::Fragment);
        }
        Ok(IpHeader {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            protocol: ip.next_header(),
            l4: 40,
            end: bytes.len(),
        })
    }

    fn at(ip: Ipv6Addr, port: u16) -> Self {
        SocketAddrV6::new(ip, port, 0, 0)
    }
    fn addr(&self) -> Ipv6Addr {
        *self.ip()
    }
    fn port(&self) -> u16 {
        SocketAddrV6::port(self)
    }
    fn ip_of(ip: IpAddr) -> Option<Ipv6Addr> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
    #[inline]
    fn hash_addrs(h: &mut impl Hasher, src: Ipv6Addr, dst: Ipv6Addr) {
        h.write_u128(u128::from(src));
        h.write_u128(u128::from(dst));
    }
    #[inline]
    fn update_checksum(mut sum: u16, old: Ipv6Addr, new: Ipv6Addr) -> u16 {
        for (o, n) in old.segments().into_iter().zip(new.segments()) {
            sum = checksum::update_u16(sum, o, n);
        }
        sum
    }

    fn parse_ip(packet: &[u8]) -> Result<IpHeader<Ipv6Addr>, ParseError> {
        let ip = Ipv6Packet::new_checked(packet).map_err(|_| match packet.first() {
            Some(b) if b >> 4 != 6 => ParseError::NotIp,
            _ => ParseError::Truncated,
        })?;
        if ip.version() != 6 {
            return Err(ParseError::NotIp);
        }
        // Extension headers are not followed: a fragment header is a fragment, the others
        // (hop-by-hop, routing, destination options) leave the transport header unknown.
        if ip.next_header() == IpProtocol::Ipv6Frag {
            return Err(ParseError::Fragment);
        }
        Ok(IpHeader {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            protocol: ip.next_header(),
            l4: 40,
            end: 40 + usize::from(ip.payload_len()),
        })
    }

    /// IPv6 fragments are not followed: every profile drops them.
    fn fragment_of(_: &[u8]) -> Option<FragmentHeader<Ipv6Addr>> {
        None
    }
    #[inline]
    fn set_ip(packet: &mut [u8], side: Side, _old: Ipv6Addr, new: Ipv6Addr) {
        let mut ip = Ipv6Packet::new_unchecked(packet);
        match side {
            Side::Src => ip.set_src_addr(new),
            Side::Dst => ip.set_dst_addr(new),
        }
    }

    fn write_ip_header(
        buf: &mut [u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        protocol: IpProtocol,
        payload_len: usize,
    ) {
        let mut ip = Ipv6Packet::new_unchecked(buf);
        ip.set_version(6);
        ip.set_traffic_class(0);
        ip.set_flow_label(0);
        ip.set_payload_len(payload_len as u16);
        ip.set_next_header(protocol);
        ip.set_hop_limit(64);
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
    }
}
