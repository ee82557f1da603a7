//! ICMP errors about translated packets, and their translation (RFC 5508).
//!
//! A router that cannot deliver a packet (port unreachable, fragmentation needed, time
//! exceeded) sends an ICMP error to the packet's source, quoting its IP header and at least the
//! first 8 bytes of its transport header. Behind a NAT that source is the translated one, so the
//! gateway must carry the error to the real endpoint and put the quoted packet back as that
//! endpoint sent it: otherwise path MTU discovery breaks and a refused UDP datagram goes unseen.
//!
//! [`IcmpError::parse`] validates an ICMP or ICMPv6 error (outer header, ICMP checksum, the
//! quoted IP header and, for IPv4, its checksum: RFC 5508 REQ-3) and reads the quoted
//! endpoints. ICMPv6 errors (RFC 4443: packet too big is how IPv6 finds its path MTU) are
//! translated the same way.
//! [`IcmpError::translate`] rewrites one quoted endpoint and the outer address on the same
//! side, patching the quoted IP and transport checksums (when quoted) incrementally and then
//! the ICMP checksum over the message. Nothing here allocates or panics on any input.

use crate::wire::checksum;
use crate::wire::error::ParseError;
use crate::wire::family::{Endpoint, Side};
use crate::wire::packet::Protocol;
use smoltcp::wire::IpProtocol;
use std::net::SocketAddrV4;

/// An ICMP header before the quoted packet.
const ICMP_HEADER: usize = 8;
/// Transport bytes an error must quote: ports, and for TCP the sequence number (RFC 792,
/// RFC 4443).
const QUOTED_TRANSPORT: usize = 8;

/// Whether `packet` is (or claims to be) ICMP or ICMPv6, without a routing header in front;
/// cheap, for routing a packet that [`crate::wire::packet::Headers::parse`] found to be neither TCP
/// nor UDP.
pub fn is_icmp(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.get(9) == Some(&1),
        Some(6) => packet.get(6) == Some(&58),
        _ => false,
    }
}

/// Which endpoint of the quoted packet a translation replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotedSide {
    /// The quoted packet's source, and the outer destination (an error coming in from the
    /// outside about a packet the gateway sent out).
    Source,
    /// The quoted packet's destination, and the outer source (an error from the inside about
    /// a packet the gateway delivered in).
    Destination,
}

/// A validated ICMP error about a TCP or UDP packet of family `E`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpError<E: Endpoint = SocketAddrV4> {
    /// The quoted packet's endpoints and protocol.
    pub quoted_src: E,
    pub quoted_dst: E,
    pub protocol: Protocol,
    /// The error's own addresses.
    outer_src: E::Ip,
    outer_dst: E::Ip,
    /// Offsets in the packet: the ICMP header, the quoted IP header, the quoted transport
    /// header, and the end of the ICMP message.
    icmp: usize,
    quoted_ip: usize,
    quoted_l4: usize,
    end: usize,
}

impl<E: Endpoint> IcmpError<E> {
    /// Validates `packet` as an ICMP error of family `E` quoting a TCP or UDP packet.
    pub fn parse(packet: &[u8]) -> Result<IcmpError<E>, ParseError> {
        let ip = E::parse_ip(packet)?;
        if ip.protocol != E::ICMP {
            return Err(ParseError::UnsupportedProtocol);
        }
        let message = packet.get(ip.l4..ip.end).ok_or(ParseError::Truncated)?;
        let message_type = *message.first().ok_or(ParseError::Truncated)?;
        if message.len() < ICMP_HEADER {
            return Err(ParseError::Truncated);
        }
        if !E::is_icmp_error(message_type) {
            return Err(ParseError::UnsupportedProtocol);
        }
        // RFC 5508 REQ-3: an error whose ICMP checksum fails is dropped.
        if !E::verify_icmp(message, ip.src, ip.dst) {
            return Err(ParseError::BadChecksum);
        }
        let quoted_ip = ip.l4 + ICMP_HEADER;
        // RFC 5508 REQ-3 a): so is one whose quoted IP header checksum fails (IPv4).
        let quoted = E::parse_quoted_ip(&packet[quoted_ip..ip.end])?;
        let protocol = match quoted.protocol {
            IpProtocol::Tcp => Protocol::Tcp,
            IpProtocol::Udp => Protocol::Udp,
            _ => return Err(ParseError::UnsupportedProtocol),
        };
        let quoted_l4 = quoted_ip + quoted.l4;
        let l4 = packet
            .get(quoted_l4..quoted_l4 + QUOTED_TRANSPORT)
            .filter(|_| quoted_l4 + QUOTED_TRANSPORT <= ip.end)
            .ok_or(ParseError::Truncated)?;
        let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
        Ok(IcmpError {
            quoted_src: E::at(quoted.src, port(0)),
            quoted_dst: E::at(quoted.dst, port(2)),
            protocol,
            outer_src: ip.src,
            outer_dst: ip.dst,
            icmp: ip.l4,
            quoted_ip,
            quoted_l4,
            end: ip.end,
        })
    }

    /// The outer destination address: where the error is going.
    pub fn outer_dst(&self) -> E::Ip {
        self.outer_dst
    }

    /// Puts `new` in place of the quoted endpoint on `side`, and `new`'s address in place of
    /// the outer address on the same side (RFC 5508 REQ-4 and REQ-5: the error goes to the
    /// quoted packet's real sender, about the packet as it sent it). `packet` must be the one
    /// parsed; a packet too short for it is left unchanged.
    pub fn translate(&self, packet: &mut [u8], side: QuotedSide, new: E) {
        if packet.len() < self.end {
            return;
        }
        let old = match side {
            QuotedSide::Source => self.quoted_src,
            QuotedSide::Destination => self.quoted_dst,
        };
        self.patch_quoted(packet, side, old, new);
        // The error now goes to (or comes from) the real endpoint.
        let (outer_src, outer_dst) = match side {
            QuotedSide::Source => {
                E::set_ip(packet, Side::Dst, self.outer_dst, new.addr());
                (self.outer_src, new.addr())
            }
            QuotedSide::Destination => {
                E::set_ip(packet, Side::Src, self.outer_src, new.addr());
                (new.addr(), self.outer_dst)
            }
        };
        // The ICMP checksum covers the whole message, quoted packet included (and for
        // ICMPv6 the outer addresses).
        E::fill_icmp(&mut packet[self.icmp..self.end], outer_src, outer_dst);
    }

    /// Rewrites the quoted address, port, IP checksum (IPv4) and, if quoted, transport
    /// checksum.
    fn patch_quoted(&self, packet: &mut [u8], side: QuotedSide, old: E, new: E) {
        let ip_side = match side {
            QuotedSide::Source => Side::Src,
            QuotedSide::Destination => Side::Dst,
        };
        E::set_ip(
            &mut packet[self.quoted_ip..self.quoted_l4],
            ip_side,
            old.addr(),
            new.addr(),
        );
        let l4 = &mut packet[self.quoted_l4..self.end];
        let port_at = match side {
            QuotedSide::Source => 0,
            QuotedSide::Destination => 2,
        };
        l4[port_at..port_at + 2].copy_from_slice(&new.port().to_be_bytes());
        // TCP's checksum is at 16, UDP's at 6; an error may quote too little to include it.
        let checksum_at = match self.protocol {
            Protocol::Tcp => 16,
            Protocol::Udp => 6,
        };
        let Some(field) = l4.get_mut(checksum_at..checksum_at + 2) else {
            return;
        };
        let old_sum = u16::from_be_bytes([field[0], field[1]]);
        if self.protocol == Protocol::Udp && old_sum == 0 {
            return; // RFC 768: no checksum.
        }
        let sum = E::update_checksum(old_sum, old.addr(), new.addr());
        let mut sum = checksum::update_u16(sum, old.port(), new.port());
        if self.protocol == Protocol::Udp && sum == 0 {
            sum = 0xffff;
        }
        field.copy_from_slice(&sum.to_be_bytes());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::packet::tests::{checksums_valid, tcp_packet, udp_packet};
    use crate::wire::packet::TcpFlags;
    use proptest::prelude::*;
    use smoltcp::wire::{Icmpv4Packet, Ipv4Packet};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    /// An ICMP error of `icmp_type`/`code` from `from` to `to`, quoting the first `quote`
    /// bytes of `original`.
    pub fn icmp_error(
        from: Ipv4Addr,
        to: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        original: &[u8],
        quote: usize,
    ) -> Vec<u8> {
        let quoted = &original[..quote.min(original.len())];
        let total = 20 + ICMP_HEADER + quoted.len();
        let mut p = vec![0u8; total];
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len(total as u16);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Icmp);
            ip.set_src_addr(from);
            ip.set_dst_addr(to);
            ip.fill_checksum();
        }
        p[20] = icmp_type;
        p[21] = code;
        if (icmp_type, code) == (3, 4) {
            p[26..28].copy_from_slice(&1280u16.to_be_bytes()); // next-hop MTU
        }
        p[28..].copy_from_slice(quoted);
        Icmpv4Packet::new_unchecked(&mut p[20..]).fill_checksum();
        p
    }

    /// An ICMPv6 error of `icmp_type`/`code` from `from` to `to`, quoting the first `quote`
    /// bytes of `original` (an IPv6 packet).
    pub fn icmpv6_error(
        from: Ipv6Addr,
        to: Ipv6Addr,
        icmp_type: u8,
        code: u8,
        original: &[u8],
        quote: usize,
    ) -> Vec<u8> {
        let quoted = &original[..quote.min(original.len())];
        let mut p = vec![0u8; 40 + ICMP_HEADER + quoted.len()];
        SocketAddrV6::write_ip_header(
            &mut p,
            from,
            to,
            IpProtocol::Icmpv6,
            ICMP_HEADER + quoted.len(),
        );
        p[40] = icmp_type;
        p[41] = code;
        if icmp_type == 2 {
            p[44..48].copy_from_slice(&1280u32.to_be_bytes()); // the MTU
        }
        p[48..].copy_from_slice(quoted);
        SocketAddrV6::fill_icmp(&mut p[40..], from, to);
        p
    }

    fn ep(a: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), port)
    }

    /// Whether the outer header, the ICMP message and the quoted IP header all verify.
    fn all_checksums_valid(p: &[u8]) -> bool {
        IcmpError::<SocketAddrV4>::parse(p).is_ok()
    }

    #[test]
    fn parses_a_fragmentation_needed_error_and_its_quoted_endpoints() {
        let public = ep([203, 0, 113, 10], 33_000);
        let server = ep([198, 51, 100, 5], 8000);
        let original = tcp_packet(public, server, TcpFlags::ACK, 1, 1, &[0; 1400]);
        let p = icmp_error(
            Ipv4Addr::new(203, 0, 113, 100),
            *public.ip(),
            3,
            4,
            &original,
            28,
        );
        let e = IcmpError::<SocketAddrV4>::parse(&p).unwrap();
        assert_eq!(
            (e.quoted_src, e.quoted_dst, e.protocol),
            (public, server, Protocol::Tcp)
        );
    }

    #[test]
    fn refuses_what_rfc_5508_says_to_drop() {
        let (a, b) = (ep([192, 0, 2, 11], 5000), ep([203, 0, 113, 100], 53));
        let original = udp_packet(a, b, b"query");
        let good = icmp_error(*b.ip(), *a.ip(), 3, 3, &original, 28);
        assert!(IcmpError::<SocketAddrV4>::parse(&good).is_ok());
        // REQ-3: a bad ICMP checksum, a bad quoted IP checksum.
        let mut bad = good.clone();
        bad[22] ^= 0xff;
        assert_eq!(
            IcmpError::<SocketAddrV4>::parse(&bad),
            Err(ParseError::BadChecksum)
        );
        let mut quoted_bad = good.clone();
        quoted_bad[28 + 10] ^= 0xff;
        Icmpv4Packet::new_unchecked(&mut quoted_bad[20..]).fill_checksum();
        assert_eq!(
            IcmpError::<SocketAddrV4>::parse(&quoted_bad),
            Err(ParseError::BadChecksum)
        );
        // Too little quoted to hold the ports.
        let short = icmp_error(*b.ip(), *a.ip(), 3, 3, &original, 24);
        assert_eq!(
            IcmpError::<SocketAddrV4>::parse(&short),
            Err(ParseError::Truncated)
        );
        // An echo request is not an error.
        let echo = icmp_error(*b.ip(), *a.ip(), 8, 0, &original, 28);
        assert_eq!(
            IcmpError::<SocketAddrV4>::parse(&echo),
            Err(ParseError::UnsupportedProtocol)
        );
    }

    #[test]
    fn translation_restores_the_quoted_packet_as_its_sender_sent_it() {
        // RFC 5508 REQ-5: an error from the outside about an SNATed packet goes to the member,
        // quoting the member's own packet.
        let (member, public) = (ep([192, 0, 2, 11], 40_000), ep([203, 0, 113, 10], 1024));
        let server = ep([198, 51, 100, 5], 8000);
        let sent = tcp_packet(member, server, TcpFlags::ACK, 7, 9, &[1; 100]);
        let mut seen_outside = sent.clone();
        let h = crate::wire::packet::Headers::<SocketAddrV4>::parse(&seen_outside).unwrap();
        crate::wire::packet::rewrite_src(&mut seen_outside, &h, public);
        let router = Ipv4Addr::new(203, 0, 113, 100);
        let mut p = icmp_error(router, *public.ip(), 3, 4, &seen_outside, 20 + 20);
        let e = IcmpError::<SocketAddrV4>::parse(&p).unwrap();
        e.translate(&mut p, QuotedSide::Source, member);
        assert!(all_checksums_valid(&p));
        assert_eq!(
            &p[28..68],
            &sent[..40],
            "the quoted headers are the member's, checksum too"
        );
        let outer = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!((outer.src_addr(), outer.dst_addr()), (router, *member.ip()));
        assert_eq!(&p[24..28], &[0, 0, 5, 0], "the next-hop MTU is untouched");
    }

    proptest! {
        // Any translation keeps every checksum valid, however much of the packet is quoted.
        #[test]
        fn translated_errors_keep_valid_checksums(
            src in any::<u32>(), dst in any::<u32>(), new in any::<u32>(),
            sport in any::<u16>(), dport in any::<u16>(), nport in any::<u16>(),
            quote in 28usize..80, tcp in any::<bool>(), inbound in any::<bool>(),
        ) {
            let (s, d) = (SocketAddrV4::new(src.into(), sport), SocketAddrV4::new(dst.into(), dport));
            let original = if tcp {
                tcp_packet(s, d, TcpFlags::ACK, 1, 2, b"payload bytes")
            } else {
                udp_packet(s, d, b"payload bytes")
            };
            let mut p = icmp_error(Ipv4Addr::new(203, 0, 113, 1), *s.ip(), 3, 3, &original, quote);
            let e = IcmpError::<SocketAddrV4>::parse(&p).unwrap();
            let side = if inbound { QuotedSide::Destination } else { QuotedSide::Source };
            let new = SocketAddrV4::new(new.into(), nport);
            e.translate(&mut p, side, new);
            let t = IcmpError::<SocketAddrV4>::parse(&p).unwrap();
            prop_assert_eq!(if inbound { t.quoted_dst } else { t.quoted_src }, new);
            if quote >= original.len() {
                prop_assert!(checksums_valid(&p[28..]));
            }
        }

        #[test]
        fn parsing_random_errors_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let mut p = icmp_error(Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8), 3, 3, &bytes, 96);
            let _ = IcmpError::<SocketAddrV4>::parse(&p);
            if let Ok(e) = IcmpError::<SocketAddrV4>::parse(&p) {
                e.translate(&mut p, QuotedSide::Source, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));
            }
        }
    }
}
