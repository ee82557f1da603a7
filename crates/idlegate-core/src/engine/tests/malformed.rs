//! Engine property tests: malformed and random packets are dropped and counted, never a
//! panic, and every invariant holds after each.

use super::*;
use proptest::prelude::*;

proptest! {
    #[test]
    fn malformed_packets_are_dropped_and_counted_never_a_panic(
        packets in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..80), any::<bool>()), 1..64),
        mutations in proptest::collection::vec((any::<u8>(), any::<prop::sample::Index>(), any::<u8>(), any::<bool>(), any::<bool>()), 1..64),
    ) {
        let mut h = Harness::new("reset-on-next");
        let (client, server) = h.connect_inbound(40_000);
        let mut drops = 0;
        // Random bytes (which rarely get past the IPv4 checks), then packets of the live flow
        // with a byte changed, truncated or not, and the IPv4 checksum mended so that the
        // damage reaches the TCP parser and the flow logic.
        let mangled = mutations.into_iter().map(|(cut, at, byte, mend, inside)| {
            let (src, dst) = if inside { (server.addr, client.addr) } else { (client.addr, FRONTEND_7000) };
            let mut p = tcp_packet(src, dst, TcpFlags::ACK, client.snd_nxt, server.snd_nxt, b"payload");
            let i = at.index(p.len());
            p[i] = byte;
            p.truncate(p.len() - usize::from(cut) % 24);
            if mend && p.len() >= 20 {
                p[10] = 0;
                p[11] = 0;
                let sum: u32 = p[..20].chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
                let folded = (sum & 0xffff) + (sum >> 16);
                let folded = !(((folded & 0xffff) + (folded >> 16)) as u16);
                p[10..12].copy_from_slice(&folded.to_be_bytes());
            }
            (p, inside)
        });
        let all: Vec<(Vec<u8>, bool)> = packets.into_iter().chain(mangled).collect();
        for (mut p, inside) in all {
            let iface = if inside { Interface::Inside } else { Interface::Outside };
            if let Verdict::Drop(_) = h.engine.handle_packet(h.at(0), iface, &mut p) {
                drops += 1;
            }
        }
        let counted: u64 = h.engine.counters().drops().map(|(_, n)| n).sum();
        prop_assert_eq!(counted, drops);
        prop_assert_eq!(h.engine.check_invariants(), Ok(()));
    }

    #[test]
    fn random_valid_segments_keep_checksums_valid_and_never_panic(
        segments in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u32>(), any::<bool>()), 1..64),
    ) {
        let mut h = Harness::new("reset");
        for (flags, port, seq, inside) in segments {
            let flags = TcpFlags::from_bits(flags & 0x17);
            let (src, dst, iface) = if inside {
                (ep(VM1, 7000), ep(CLIENT, port), Interface::Inside)
            } else {
                (ep(CLIENT, port), FRONTEND_7000, Interface::Outside)
            };
            let mut p = tcp_packet(src, dst, flags, seq, seq ^ 0x5555, b"data");
            if let Verdict::Forward { .. } = h.engine.handle_packet(h.at(h.now), iface, &mut p) {
                prop_assert!(checksums_valid(&p));
            }
            h.now += 100;
            h.advance_to(h.now);
            prop_assert_eq!(h.engine.check_invariants(), Ok(()));
        }
    }
}
