//! Typed views of the IPv4 and IPv6 packets the engine reads and rewrites in place.
//!
//! [`Headers::parse`] validates a raw packet once (version, lengths, IPv4 header checksum, no
//! fragment, TCP or UDP) and keeps what the engine needs: the two endpoints, the protocol and,
//! for TCP, the segment's flags and sequence space. [`rewrite_src`] and [`rewrite_dst`] change an
//! endpoint in place and patch the IPv4 header and transport checksums incrementally, as a
//! complete checksum or, for a packet handed over with checksum offload, as the partial
//! pseudo-header sum a device completes ([`TransportChecksum`]).
//! [`ControlSegment`] builds the RST and ACK segments the gateway itself sends. What differs between
//! the families is in [`crate::wire::family`]. Field access goes through `smoltcp::wire`; nothing
//! here allocates or panics on any input.

use crate::wire::checksum;
use crate::wire::error::ParseError;
use crate::wire::family::{Endpoint, Side};
use smoltcp::wire::{IpProtocol, TcpPacket, TcpSeqNumber, UdpPacket};
use std::net::{SocketAddrV4, SocketAddrV6};

/// The transport protocols the engine translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Protocol {
    Tcp = 6,
    Udp = 17,
}

/// What a packet's transport checksum field holds, which decides how a rewrite patches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChecksum {
    /// The checksum of the whole segment, as on the wire.
    #[default]
    Complete,
    /// Only the pseudo-header's sum, folded and not complemented: a packet handed over with
    /// checksum offload (Linux `CHECKSUM_PARTIAL`, `VIRTIO_NET_HDR_F_NEEDS_CSUM`), such as a
    /// TCP super-segment read from a TUN device. The device or the receiving stack completes
    /// it from the bytes, so a rewrite patches the addresses alone: the ports are summed then.
    Partial,
}

/// TCP control flags, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags(u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const ACK: TcpFlags = TcpFlags(0x10);

    pub fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn syn(self) -> bool {
        self.contains(Self::SYN)
    }
    pub fn ack(self) -> bool {
        self.contains(Self::ACK)
    }
    pub fn fin(self) -> bool {
        self.contains(Self::FIN)
    }
    pub fn rst(self) -> bool {
        self.contains(Self::RST)
    }
    /// Flags from their wire bits (the low byte of the TCP flags field).
    pub fn from_bits(bits: u8) -> TcpFlags {
        TcpFlags(bits)
    }

    /// A connection request: SYN without ACK.
    pub fn is_connect(self) -> bool {
        self.syn() && !self.ack()
    }

    /// Whether a stack could have sent this combination of FIN, SYN, RST and ACK. The valid
    /// ones are conntrack's (`tcp_valid_flags` in nf_conntrack_proto_tcp.c, with PSH, URG, ECE
    /// and CWR left aside): SYN, SYN+ACK, RST, RST+ACK, FIN+ACK and ACK. SYN+FIN, SYN+RST, a
    /// FIN without ACK and a segment with none of the four are not, and endpoints discard them.
    #[inline]
    pub fn is_valid(self) -> bool {
        // One bit per combination of the four flags (their bits are 0x17 at most).
        const VALID: u32 = 1 << 0x02 | 1 << 0x12 | 1 << 0x04 | 1 << 0x14 | 1 << 0x11 | 1 << 0x10;
        VALID >> (self.0 & 0x17) & 1 == 1
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// The largest window scale (RFC 7323 §2.3: a larger one is taken as 14).
pub const MAX_WINDOW_SCALE: u8 = 14;

/// The sequence-space facts of one TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment {
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    /// Sequence space the segment occupies: payload bytes, plus one each for SYN and FIN.
    pub len: u32,
    /// The window field as sent (scaled by the sender's window scale, except on a SYN).
    pub window: u16,
    /// A SYN's window scale option (RFC 7323 §2.2), at most 14; other segments' is not read.
    pub window_scale: Option<u8>,
    /// The segment is the first fragment of an IPv4 datagram: `len` counts only the bytes that
    /// fragment carries, and the segment runs on past its end.
    pub first_fragment: bool,
}

impl TcpSegment {
    /// The sequence number just after this segment: the sender's SND.NXT once it is sent.
    pub fn end(&self) -> u32 {
        self.seq.wrapping_add(self.len)
    }
}

/// The validated headers of one packet of family `E` (`SocketAddrV4` or `SocketAddrV6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers<E: Endpoint = SocketAddrV4> {
    pub src: E,
    pub dst: E,
    pub protocol: Protocol,
    /// TCP only: flags and sequence numbers.
    pub tcp: Option<TcpSegment>,
    /// What the transport checksum field holds: [`Headers::parse`] says complete, a driver
    /// that read the packet with checksum offload says partial.
    pub checksum: TransportChecksum,
    /// Offset of the transport header.
    l4: usize,
}

impl<E: Endpoint> Headers<E> {
    /// Validates `packet` and reads its headers. Trailing bytes past the IP header's length
    /// are ignored, as a receiving stack would.
    pub fn parse(packet: &[u8]) -> Result<Headers<E>, ParseError> {
        let ip = E::parse_ip(packet)?;
        let l4_bytes = packet.get(ip.l4..ip.end).ok_or(ParseError::Truncated)?;
        match ip.protocol {
            IpProtocol::Tcp => Self::parse_tcp(ip.src, ip.dst, ip.l4, l4_bytes),
            IpProtocol::Udp => Self::parse_udp(ip.src, ip.dst, ip.l4, l4_bytes),
            _ => Err(ParseError::UnsupportedProtocol),
        }
    }

    /// The headers of a datagram's first fragment (see `crate::state::fragment`), from its IP
    /// header as `Endpoint::fragment_of` read it: the transport header must be whole in it
    /// (RFC 1858 refuses a first fragment too short for TCP's flags). The UDP length and a TCP
    /// segment's length count this fragment's bytes only.
    pub fn parse_first_fragment(
        ip: &crate::wire::family::IpHeader<E::Ip>,
        packet: &[u8],
    ) -> Result<Headers<E>, ParseError> {
        let l4_bytes = packet.get(ip.l4..ip.end).ok_or(ParseError::Truncated)?;
        match ip.protocol {
            IpProtocol::Tcp => {
                let mut headers = Self::parse_tcp(ip.src, ip.dst, ip.l4, l4_bytes)?;
                if let Some(segment) = headers.tcp.as_mut() {
                    segment.first_fragment = true;
                }
                Ok(headers)
            }
            IpProtocol::Udp => {
                // Its length field is the whole datagram's, longer than this fragment.
                let udp = UdpPacket::new_unchecked(l4_bytes.get(..8).ok_or(ParseError::Truncated)?);
                Ok(Headers {
                    src: E::at(ip.src, udp.src_port()),
                    dst: E::at(ip.dst, udp.dst_port()),
                    protocol: Protocol::Udp,
                    tcp: None,
                    checksum: TransportChecksum::Complete,
                    l4: ip.l4,
                })
            }
            _ => Err(ParseError::UnsupportedProtocol),
        }
    }

    fn parse_tcp(src: E::Ip, dst: E::Ip, l4: usize, bytes: &[u8]) -> Result<Self, ParseError> {
        let tcp = TcpPacket::new_checked(bytes).map_err(|_| ParseError::Truncated)?;
        let mut flags = TcpFlags::default();
        for (set, flag) in [
            (tcp.fin(), TcpFlags::FIN),
            (tcp.syn(), TcpFlags::SYN),
            (tcp.rst(), TcpFlags::RST),
            (tcp.ack(), TcpFlags::ACK),
        ] {
            if set {
                flags = flags | flag;
            }
        }
        // Options are read on SYNs only: the window scale is announced there or never.
        let window_scale = if flags.syn() {
            tcp.options_summary()
                .ok()
                .and_then(|o| o.window_scale)
                .map(|s| s.min(MAX_WINDOW_SCALE))
        } else {
            None
        };
        let segment = TcpSegment {
            flags,
            seq: tcp.seq_number().0 as u32,
            ack: tcp.ack_number().0 as u32,
            len: tcp.segment_len() as u32,
            window: tcp.window_len(),
            window_scale,
            first_fragment: false,
        };
        Ok(Headers {
            src: E::at(src, tcp.src_port()),
            dst: E::at(dst, tcp.dst_port()),
            protocol: Protocol::Tcp,
            tcp: Some(segment),
            checksum: TransportChecksum::Complete,
            l4,
        })
    }

    fn parse_udp(src: E::Ip, dst: E::Ip, l4: usize, bytes: &[u8]) -> Result<Self, ParseError> {
        let udp = UdpPacket::new_checked(bytes).map_err(|_| ParseError::Truncated)?;
        Ok(Headers {
            src: E::at(src, udp.src_port()),
            dst: E::at(dst, udp.dst_port()),
            protocol: Protocol::Udp,
            tcp: None,
            checksum: TransportChecksum::Complete,
            l4,
        })
    }
}

/// A packet of either family read once: what [`Headers::parse`] made of it, for its IP version
/// (6, or else 4, whose parse refuses anything that is not IPv4). A driver parses each packet
/// once into this view and hands it both to [`crate::Sharding::owner_of`] and to
/// [`crate::Engine::handle_parsed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    V4(Result<Headers<SocketAddrV4>, ParseError>),
    V6(Result<Headers<SocketAddrV6>, ParseError>),
}

impl Parsed {
    /// Reads `packet`'s headers; never fails, an unreadable packet is an `Err` inside.
    #[inline]
    pub fn new(packet: &[u8]) -> Parsed {
        match packet.first().map(|b| b >> 4) {
            Some(6) => Parsed::V6(Headers::parse(packet)),
            _ => Parsed::V4(Headers::parse(packet)),
        }
    }
}

/// Replaces the packet's source endpoint with `new` (SNAT), patching checksums. `headers` must
/// be the packet's own, from [`Headers::parse`]; a packet too short for them is left unchanged.
pub fn rewrite_src<E: Endpoint>(packet: &mut [u8], headers: &Headers<E>, new: E) {
    rewrite(packet, headers, Side::Src, headers.src, new);
}

/// Replaces the packet's destination endpoint with `new` (DNAT), patching checksums. `headers`
/// must be the packet's own; a packet too short for them is left unchanged.
pub fn rewrite_dst<E: Endpoint>(packet: &mut [u8], headers: &Headers<E>, new: E) {
    rewrite(packet, headers, Side::Dst, headers.dst, new);
}

fn rewrite<E: Endpoint>(packet: &mut [u8], headers: &Headers<E>, side: Side, old: E, new: E) {
    let l4_len = match headers.protocol {
        Protocol::Tcp => 20,
        Protocol::Udp => 8,
    };
    if packet.len() < headers.l4 + l4_len {
        return; // `headers` are not this packet's: leave it alone rather than panic.
    }
    E::set_ip(packet, side, old.addr(), new.addr());

    // A complete transport checksum covers the pseudo-header's addresses and the port; a
    // partial one holds the pseudo-header's sum alone, not complemented.
    let l4 = &mut packet[headers.l4..];
    let patch = |sum: u16| match headers.checksum {
        TransportChecksum::Complete => {
            let sum = E::update_checksum(sum, old.addr(), new.addr());
            checksum::update_u16(sum, old.port(), new.port())
        }
        TransportChecksum::Partial => !E::update_checksum(!sum, old.addr(), new.addr()),
    };
    match headers.protocol {
        Protocol::Tcp => {
            let mut tcp = TcpPacket::new_unchecked(l4);
            match side {
                Side::Src => tcp.set_src_port(new.port()),
                Side::Dst => tcp.set_dst_port(new.port()),
            }
            tcp.set_checksum(patch(tcp.checksum()));
        }
        Protocol::Udp => {
            let mut udp = UdpPacket::new_unchecked(l4);
            match side {
                Side::Src => udp.set_src_port(new.port()),
                Side::Dst => udp.set_dst_port(new.port()),
            }
            // RFC 768: zero means "no checksum"; a computed zero is sent as all ones. A partial
            // sum is completed later, so it is patched whatever its value.
            match headers.checksum {
                TransportChecksum::Complete if udp.checksum() == 0 => {}
                TransportChecksum::Complete => {
                    let sum = patch(udp.checksum());
                    udp.set_checksum(if sum == 0 { 0xffff } else { sum });
                }
                TransportChecksum::Partial => udp.set_checksum(patch(udp.checksum())),
            }
        }
    }
}

/// What a [`ControlSegment`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    /// A RST, with the ACK flag if it carries an acknowledgment number.
    Reset,
    /// A bare ACK with an open window.
    Ack,
}

/// A TCP segment without data that the gateway sends on its own behalf: a RST or a bare ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlSegment<E: Endpoint = SocketAddrV4> {
    pub kind: ControlKind,
    pub src: E,
    pub dst: E,
    pub seq: u32,
    /// With `Some`, the ACK flag is set and this is the acknowledgment number.
    pub ack: Option<u32>,
}

/// The longest packet `ControlSegment::write` produces: IPv6 and TCP headers without options
/// (IPv4: 40 bytes).
pub const CONTROL_LEN: usize = 60;

impl<E: Endpoint> ControlSegment<E> {
    /// The RST that answers `segment`, sent from the packet's destination to its source, as
    /// RFC 9293 §3.10.7.1 prescribes for a segment that belongs to no connection: if it
    /// carried an ACK, `<SEQ=SEG.ACK><CTL=RST>`, else `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`.
    pub fn reset_answering(headers: &Headers<E>, segment: &TcpSegment) -> ControlSegment<E> {
        let (seq, ack) = if segment.flags.ack() {
            (segment.ack, None)
        } else {
            (0, Some(segment.end()))
        };
        ControlSegment {
            kind: ControlKind::Reset,
            src: headers.dst,
            dst: headers.src,
            seq,
            ack,
        }
    }

    /// The ACK a receiver at `seq` would send for `segment`: everything up to its end.
    pub fn ack_of(headers: &Headers<E>, segment: &TcpSegment, seq: u32) -> ControlSegment<E> {
        ControlSegment {
            kind: ControlKind::Ack,
            src: headers.dst,
            dst: headers.src,
            seq,
            ack: Some(segment.end()),
        }
    }

    /// Writes the packet into `buf` and returns its length, or `None` if `buf` is too short.
    pub fn write(&self, buf: &mut [u8]) -> Option<usize> {
        let len = E::IP_HEADER_LEN + 20;
        let buf = buf.get_mut(..len)?;
        buf.fill(0);
        E::write_ip_header(buf, self.src.addr(), self.dst.addr(), IpProtocol::Tcp, 20);
        let mut tcp = TcpPacket::new_unchecked(&mut buf[E::IP_HEADER_LEN..]);
        tcp.set_src_port(self.src.port());
        tcp.set_dst_port(self.dst.port());
        tcp.set_seq_number(TcpSeqNumber(self.seq as i32));
        tcp.set_header_len(20);
        match self.kind {
            ControlKind::Reset => tcp.set_rst(true),
            ControlKind::Ack => tcp.set_window_len(u16::MAX),
        }
        if let Some(ack) = self.ack {
            tcp.set_ack(true);
            tcp.set_ack_number(TcpSeqNumber(ack as i32));
        }
        tcp.fill_checksum(&self.src.addr().into(), &self.dst.addr().into());
        Some(len)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    /// Builds a valid TCP packet of `src`'s family (checksums filled) for tests.
    pub fn tcp_packet<E: Endpoint>(
        src: E,
        dst: E,
        flags: TcpFlags,
        seq: u32,
        ack: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let h = E::IP_HEADER_LEN;
        let mut buf = vec![0u8; h + 20 + payload.len()];
        E::write_ip_header(
            &mut buf,
            src.addr(),
            dst.addr(),
            IpProtocol::Tcp,
            20 + payload.len(),
        );
        let mut tcp = TcpPacket::new_unchecked(&mut buf[h..]);
        tcp.set_src_port(src.port());
        tcp.set_dst_port(dst.port());
        tcp.set_seq_number(TcpSeqNumber(seq as i32));
        tcp.set_ack_number(TcpSeqNumber(ack as i32));
        tcp.set_header_len(20);
        tcp.set_syn(flags.syn());
        tcp.set_ack(flags.ack());
        tcp.set_fin(flags.fin());
        tcp.set_rst(flags.rst());
        tcp.set_window_len(65535);
        tcp.payload_mut().copy_from_slice(payload);
        tcp.fill_checksum(&src.addr().into(), &dst.addr().into());
        buf
    }

    /// Builds a valid UDP packet of `src`'s family for tests.
    pub fn udp_packet<E: Endpoint>(src: E, dst: E, payload: &[u8]) -> Vec<u8> {
        let h = E::IP_HEADER_LEN;
        let mut buf = vec![0u8; h + 8 + payload.len()];
        E::write_ip_header(
            &mut buf,
            src.addr(),
            dst.addr(),
            IpProtocol::Udp,
            8 + payload.len(),
        );
        let mut udp = UdpPacket::new_unchecked(&mut buf[h..]);
        udp.set_src_port(src.port());
        udp.set_dst_port(dst.port());
        udp.set_len((8 + payload.len()) as u16);
        udp.payload_mut().copy_from_slice(payload);
        udp.fill_checksum(&src.addr().into(), &dst.addr().into());
        buf
    }

    /// Full verification of the IPv4 header checksum (if any) and the transport checksum, as
    /// a receiving stack would do.
    pub fn checksums_valid(packet: &[u8]) -> bool {
        let (src, dst, protocol, l4, header_ok): (IpAddress, IpAddress, _, _, _) =
            if packet[0] >> 4 == 6 {
                let ip = Ipv6Packet::new_checked(packet).expect("ipv6");
                let end = 40 + usize::from(ip.payload_len());
                (
                    ip.src_addr().into(),
                    ip.dst_addr().into(),
                    ip.next_header(),
                    &packet[40..end],
                    true,
                )
            } else {
                let ip = Ipv4Packet::new_checked(packet).expect("ipv4");
                let l4 = &packet[usize::from(ip.header_len())..usize::from(ip.total_len())];
                (
                    ip.src_addr().into(),
                    ip.dst_addr().into(),
                    ip.next_header(),
                    l4,
                    ip.verify_checksum(),
                )
            };
        header_ok
            && match protocol {
                IpProtocol::Tcp => TcpPacket::new_checked(l4)
                    .expect("tcp")
                    .verify_checksum(&src, &dst),
                IpProtocol::Udp => UdpPacket::new_checked(l4)
                    .expect("udp")
                    .verify_checksum(&src, &dst),
                _ => false,
            }
    }

    /// The transport header's offset, its checksum field's offset in it, and the
    /// pseudo-header as the checksum sums it.
    fn transport_layout(packet: &[u8]) -> (usize, usize, Vec<u8>) {
        let (l4, protocol, mut pseudo) = if packet[0] >> 4 == 6 {
            (40, packet[6], [&packet[8..24], &packet[24..40]].concat())
        } else {
            (20, packet[9], packet[12..20].to_vec())
        };
        let len = (packet.len() - l4) as u16;
        pseudo.extend_from_slice(&[0, protocol]);
        pseudo.extend_from_slice(&len.to_be_bytes());
        (l4, if protocol == 6 { 16 } else { 6 }, pseudo)
    }

    /// What a stack with checksum offload hands over: the pseudo-header's sum in the field.
    pub fn to_partial(packet: &mut [u8]) {
        let (l4, field, pseudo) = transport_layout(packet);
        let partial = !checksum::of(&pseudo);
        packet[l4 + field..l4 + field + 2].copy_from_slice(&partial.to_be_bytes());
    }

    /// What the device does with a partial checksum: sums the transport bytes from the
    /// transport header on, the field included, and writes the complement.
    pub fn complete(packet: &mut [u8]) {
        let (l4, field, _) = transport_layout(packet);
        let sum = checksum::of(&packet[l4..]);
        packet[l4 + field..l4 + field + 2].copy_from_slice(&sum.to_be_bytes());
    }

    fn endpoint6() -> impl Strategy<Value = SocketAddrV6> {
        (any::<u128>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0))
    }

    #[test]
    fn an_ipv6_packet_is_read_by_the_ipv6_view_only() {
        let a = SocketAddrV6::new("fd00:203::100".parse().unwrap(), 40000, 0, 0);
        let b = SocketAddrV6::new("fd00:203::10".parse().unwrap(), 7000, 0, 0);
        let p = tcp_packet(a, b, TcpFlags::SYN, 1000, 0, b"");
        let h = Headers::<SocketAddrV6>::parse(&p).unwrap();
        assert_eq!((h.src, h.dst, h.protocol), (a, b, Protocol::Tcp));
        assert_eq!(Headers::<SocketAddrV4>::parse(&p), Err(ParseError::NotIp));
        let v4 = tcp_packet(
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 1),
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 2),
            TcpFlags::SYN,
            1,
            0,
            b"",
        );
        assert_eq!(Headers::<SocketAddrV6>::parse(&v4), Err(ParseError::NotIp));
        // A fragment header: ports may not be in this packet.
        let mut frag = p.clone();
        Ipv6Packet::new_unchecked(&mut frag[..]).set_next_header(IpProtocol::Ipv6Frag);
        assert_eq!(
            Headers::<SocketAddrV6>::parse(&frag),
            Err(ParseError::Fragment)
        );
        assert_eq!(
            Headers::<SocketAddrV6>::parse(&p[..50]),
            Err(ParseError::Truncated)
        );
    }

    #[test]
    fn an_ipv6_reset_carries_valid_checksums() {
        let a = SocketAddrV6::new("fd00:203::100".parse().unwrap(), 40000, 0, 0);
        let b = SocketAddrV6::new("fd00:192::11".parse().unwrap(), 7000, 0, 0);
        let rst = ControlSegment {
            kind: ControlKind::Reset,
            src: a,
            dst: b,
            seq: 5,
            ack: Some(9),
        };
        let mut buf = [0u8; CONTROL_LEN];
        let n = rst.write(&mut buf).unwrap();
        assert_eq!(n, 60);
        assert!(checksums_valid(&buf[..n]));
        let seg = Headers::<SocketAddrV6>::parse(&buf[..n])
            .unwrap()
            .tcp
            .unwrap();
        assert!(seg.flags.rst() && seg.flags.ack());
    }

    fn endpoint() -> impl Strategy<Value = SocketAddrV4> {
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddrV4::new(Ipv4Addr::from(ip), port))
    }

    #[test]
    fn parses_tcp_syn_with_its_sequence_space() {
        let a = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 100), 40000);
        let b = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 7000);
        let p = tcp_packet(a, b, TcpFlags::SYN, 1000, 0, b"");
        let h = Headers::<SocketAddrV4>::parse(&p).unwrap();
        assert_eq!((h.src, h.dst, h.protocol), (a, b, Protocol::Tcp));
        let seg = h.tcp.unwrap();
        assert!(seg.flags.is_connect());
        assert_eq!((seg.seq, seg.len, seg.end()), (1000, 1, 1001));
    }

    #[test]
    fn rejects_what_it_cannot_translate() {
        let a = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 1);
        let b = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 12), 2);
        let good = tcp_packet(a, b, TcpFlags::ACK, 1, 1, b"hello");
        assert_eq!(
            Headers::<SocketAddrV4>::parse(&good[..30]),
            Err(ParseError::Truncated)
        );
        assert_eq!(
            Headers::<SocketAddrV4>::parse(&[0x60; 60]),
            Err(ParseError::NotIp)
        );
        assert_eq!(
            Headers::<SocketAddrV4>::parse(&[]),
            Err(ParseError::Truncated)
        );
        let mut bad_sum = good.clone();
        bad_sum[10] ^= 0xff;
        assert_eq!(
            Headers::<SocketAddrV4>::parse(&bad_sum),
            Err(ParseError::BadChecksum)
        );
        let mut frag = good.clone();
        Ipv4Packet::new_unchecked(&mut frag[..]).set_more_frags(true);
        Ipv4Packet::new_unchecked(&mut frag[..]).fill_checksum();
        assert_eq!(
            Headers::<SocketAddrV4>::parse(&frag),
            Err(ParseError::Fragment)
        );
        let mut icmp = good.clone();
        Ipv4Packet::new_unchecked(&mut icmp[..]).set_next_header(IpProtocol::Icmp);
        Ipv4Packet::new_unchecked(&mut icmp[..]).fill_checksum();
        assert_eq!(
            Headers::<SocketAddrV4>::parse(&icmp),
            Err(ParseError::UnsupportedProtocol)
        );
    }

    #[test]
    fn reset_answering_an_ack_takes_its_sequence_from_the_ack() {
        // RFC 9293 §3.10.7.1: <SEQ=SEG.ACK><CTL=RST> when the segment had an ACK.
        let a = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 100), 40000);
        let b = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 7000);
        let p = tcp_packet(a, b, TcpFlags::ACK, 5000, 9000, b"c");
        let h = Headers::<SocketAddrV4>::parse(&p).unwrap();
        let rst = ControlSegment::reset_answering(&h, &h.tcp.unwrap());
        assert_eq!(
            rst,
            ControlSegment {
                kind: ControlKind::Reset,
                src: b,
                dst: a,
                seq: 9000,
                ack: None
            }
        );
        let mut buf = [0u8; 64];
        let n = rst.write(&mut buf).unwrap();
        assert!(checksums_valid(&buf[..n]));
        let seg = Headers::<SocketAddrV4>::parse(&buf[..n])
            .unwrap()
            .tcp
            .unwrap();
        assert!(seg.flags.rst() && !seg.flags.ack());
        assert_eq!(seg.seq, 9000);
    }

    proptest! {
        // RFC 1624 in place: after any rewrite both checksums verify like a full recomputation.
        #[test]
        fn rewritten_tcp_packets_keep_valid_checksums(
            src in endpoint(), dst in endpoint(), new in endpoint(),
            seq in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..64),
            dnat in any::<bool>(),
        ) {
            let mut p = tcp_packet(src, dst, TcpFlags::ACK, seq, 7, &payload);
            let h = Headers::<SocketAddrV4>::parse(&p).unwrap();
            if dnat { rewrite_dst(&mut p, &h, new) } else { rewrite_src(&mut p, &h, new) }
            prop_assert!(checksums_valid(&p));
            let h2 = Headers::<SocketAddrV4>::parse(&p).unwrap();
            prop_assert_eq!(if dnat { h2.dst } else { h2.src }, new);
        }

        #[test]
        fn rewritten_udp_packets_keep_valid_checksums(
            src in endpoint(), dst in endpoint(), new in endpoint(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut p = udp_packet(src, dst, &payload);
            let h = Headers::<SocketAddrV4>::parse(&p).unwrap();
            rewrite_src(&mut p, &h, new);
            prop_assert!(checksums_valid(&p));
        }

        // A super-segment read with checksum offload carries the pseudo-header's sum only
        // (virtio-net VIRTIO_NET_HDR_F_NEEDS_CSUM): the rewrite must leave the sum that, once
        // the device completes it, verifies for the translated packet.
        #[test]
        fn rewritten_partial_checksums_complete_to_valid_ones(
            src in endpoint(), dst in endpoint(), new in endpoint(),
            src6 in endpoint6(), dst6 in endpoint6(), new6 in endpoint6(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            dnat in any::<bool>(), tcp in any::<bool>(), v6 in any::<bool>(),
        ) {
            let mut p = match (v6, tcp) {
                (false, true) => tcp_packet(src, dst, TcpFlags::ACK, 9, 7, &payload),
                (false, false) => udp_packet(src, dst, &payload),
                (true, true) => tcp_packet(src6, dst6, TcpFlags::ACK, 9, 7, &payload),
                (true, false) => udp_packet(src6, dst6, &payload),
            };
            to_partial(&mut p);
            if v6 {
                let mut h = Headers::<SocketAddrV6>::parse(&p).unwrap();
                h.checksum = TransportChecksum::Partial;
                if dnat { rewrite_dst(&mut p, &h, new6) } else { rewrite_src(&mut p, &h, new6) }
            } else {
                let mut h = Headers::<SocketAddrV4>::parse(&p).unwrap();
                h.checksum = TransportChecksum::Partial;
                if dnat { rewrite_dst(&mut p, &h, new) } else { rewrite_src(&mut p, &h, new) }
            }
            let translated = p.clone();
            complete(&mut p);
            prop_assert!(checksums_valid(&p));
            // The rewrite left the partial sum of the translated packet's own pseudo-header.
            let mut expected = translated.clone();
            to_partial(&mut expected);
            let (l4, field, _) = transport_layout(&p);
            let as_ones = |b: &[u8]| match u16::from_be_bytes([b[0], b[1]]) { 0xffff => 0, v => v };
            prop_assert_eq!(
                as_ones(&translated[l4 + field..l4 + field + 2]),
                as_ones(&expected[l4 + field..l4 + field + 2])
            );
        }

        #[test]
        fn parsing_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Headers::<SocketAddrV4>::parse(&bytes);
            let _ = Headers::<SocketAddrV6>::parse(&bytes);
        }

        // RFC 1624 over IPv6's pseudo-header: eight address words change, no header checksum.
        #[test]
        fn rewritten_ipv6_packets_keep_valid_checksums(
            src in endpoint6(), dst in endpoint6(), new in endpoint6(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            dnat in any::<bool>(), tcp in any::<bool>(),
        ) {
            let mut p = if tcp {
                tcp_packet(src, dst, TcpFlags::ACK, 9, 7, &payload)
            } else {
                udp_packet(src, dst, &payload)
            };
            let h = Headers::<SocketAddrV6>::parse(&p).unwrap();
            if dnat { rewrite_dst(&mut p, &h, new) } else { rewrite_src(&mut p, &h, new) }
            prop_assert!(checksums_valid(&p));
            let h2 = Headers::<SocketAddrV6>::parse(&p).unwrap();
            prop_assert_eq!(if dnat { h2.dst } else { h2.src }, new);
        }
    }
}
