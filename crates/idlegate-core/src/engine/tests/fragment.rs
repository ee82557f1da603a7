//! Engine tests of IPv4 fragments ([`crate::state::fragment`], issue 16 item 7): each profile does
//! with them what its box does, by the vendor's public documentation (see the profiles).

use super::*;
use crate::wire::packet::tests::{checksums_valid, tcp_packet, udp_packet};
use crate::wire::packet::TcpFlags;
use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet};
use std::net::{Ipv4Addr, Ipv6Addr};

const FRONTEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 100), 40_000);
const VM1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 100), 5300);

/// `profile` with a UDP LB rule on 5300 (if the box has inbound rules) and an outbound rule.
fn config(profile: &str, inbound: bool) -> Config {
    let lb = if inbound {
        "[[lb_rule]]\nname = \"udp\"\nfrontend = \"public\"\nprotocol = \"udp\"\n\
         frontend_port = 5300\nbackend_pool = \"vms\"\nbackend_port = 5300\n"
    } else {
        ""
    };
    let text = format!(
        "profile = \"{profile}\"\n[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
         [[backend_pool]]\nname = \"vms\"\nmembers = [{{ name = \"vm1\", address = \"192.0.2.11\" }}]\n\
         {lb}[[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n"
    );
    Config::from_toml(&text, "fragments.toml").unwrap()
}

/// Cuts an IPv4 packet into fragments of at most `size` payload bytes (a multiple of 8), all
/// with IP ID `id`, as a sending stack does.
fn fragments(packet: &[u8], size: usize, id: u16) -> Vec<Vec<u8>> {
    let payload = &packet[20..];
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = packet[..20].to_vec();
            f.extend_from_slice(chunk);
            let mut ip = Ipv4Packet::new_unchecked(&mut f[..]);
            ip.set_total_len((20 + chunk.len()) as u16);
            ip.set_ident(id);
            ip.set_dont_frag(false);
            ip.set_more_frags((i + 1) * size < payload.len());
            ip.set_frag_offset((i * size) as u16);
            ip.fill_checksum();
            f
        })
        .collect()
}

/// Puts fragments (in any order) back together, as the receiving stack does.
fn reassemble(mut pieces: Vec<Vec<u8>>) -> Vec<u8> {
    pieces.sort_by_key(|p| Ipv4Packet::new_unchecked(&p[..]).frag_offset());
    let mut whole = pieces[0][..20].to_vec();
    for p in &pieces {
        assert!(Ipv4Packet::new_checked(&p[..]).unwrap().verify_checksum());
        whole.extend_from_slice(&p[20..]);
    }
    let len = whole.len() as u16;
    let mut ip = Ipv4Packet::new_unchecked(&mut whole[..]);
    ip.set_total_len(len);
    ip.set_more_frags(false);
    ip.set_frag_offset(0);
    ip.fill_checksum();
    whole
}

/// Hands each fragment to `engine` from `from`; returns the verdicts and what was forwarded.
fn pass(engine: &mut Engine, from: Interface, pieces: &[Vec<u8>]) -> (Vec<Verdict>, Vec<Vec<u8>>) {
    let now = Instant::now();
    let mut verdicts = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        let mut p = piece.clone();
        let v = engine.handle_packet(now, from, &mut p);
        if let Verdict::Forward { .. } = v {
            out.push(p);
        }
        verdicts.push(v);
        let mut buf = [0u8; crate::state::fragment::HELD_LEN];
        while let Some(tx) = engine.poll_transmit(&mut buf) {
            out.push(buf[..tx.len].to_vec());
        }
    }
    (verdicts, out)
}

/// The verdict on a fragment of the inbound datagram: forwarded to the member.
fn inbound() -> Verdict {
    Verdict::Forward {
        interface: Interface::Inside,
        destination: VM1.into(),
    }
}

/// A 3,000-byte datagram from the client to the frontend, in three fragments.
fn inbound_datagram() -> Vec<Vec<u8>> {
    let datagram = udp_packet(CLIENT, SocketAddrV4::new(FRONTEND, 5300), &[0x5a; 3_000]);
    fragments(&datagram, 1_480, 0x4242)
}

#[test]
fn a_fragmented_udp_datagram_reaches_the_member_whole_through_linux_conntrack() {
    // Linux conntrack reassembles before it tracks (nf_defrag_ipv4), then NATs the datagram.
    let mut engine = Engine::new(&config("linux-conntrack", true), Instant::now(), 1);
    let (verdicts, out) = pass(&mut engine, Interface::Outside, &inbound_datagram());
    assert_eq!(verdicts, vec![inbound(); 3]);
    let whole = reassemble(out);
    assert!(checksums_valid(&whole), "the UDP checksum verifies");
    let h = Headers::<SocketAddrV4>::parse(&whole).unwrap();
    assert_eq!((h.src, h.dst), (CLIENT, SocketAddrV4::new(VM1, 5300)));
    assert_eq!(whole.len(), 20 + 8 + 3_000);
    assert_eq!(engine.counters().fragments_forwarded, 3);
    assert_eq!(engine.flow_count(), 1);
    engine.check_invariants().unwrap();
}

#[test]
fn azure_lb_drops_every_fragment_as_its_documentation_says() {
    // Azure Load Balancer components, Limitations: "Load-balancing rules don't support
    // forwarding IP fragments."
    let mut engine = Engine::new(&config("azure-lb", true), Instant::now(), 1);
    let (verdicts, out) = pass(&mut engine, Interface::Outside, &inbound_datagram());
    assert_eq!(verdicts, vec![Verdict::Drop(DropReason::Fragment); 3]);
    assert!(out.is_empty());
    assert_eq!(engine.flow_count(), 0);
    assert_eq!(engine.counters().dropped(DropReason::Fragment), 3);
}

#[test]
fn aws_nat_gateway_forwards_udp_fragments_and_drops_tcp_ones() {
    // AWS "Compare NAT gateways and NAT instances": "Supports forwarding of IP fragmented
    // packets for the UDP protocol. Does not support fragmentation for the TCP and ICMP
    // protocols."
    let mut engine = Engine::new(&config("aws-natgw", false), Instant::now(), 1);
    let member = SocketAddrV4::new(VM1, 33_000);
    let udp = udp_packet(member, SERVER, &[7; 2_000]);
    let (verdicts, out) = pass(&mut engine, Interface::Inside, &fragments(&udp, 1_480, 9));
    assert_eq!(
        verdicts,
        vec![
            Verdict::Forward {
                interface: Interface::Outside,
                destination: (*SERVER.ip()).into()
            };
            2
        ]
    );
    let whole = reassemble(out);
    assert!(checksums_valid(&whole));
    let h = Headers::<SocketAddrV4>::parse(&whole).unwrap();
    assert_eq!((h.src.ip(), h.dst), (&FRONTEND, SERVER));
    let tcp = tcp_packet(member, SERVER, TcpFlags::ACK, 1, 1, &[7; 2_000]);
    let (verdicts, _) = pass(&mut engine, Interface::Inside, &fragments(&tcp, 1_480, 10));
    assert_eq!(verdicts, vec![Verdict::Drop(DropReason::Fragment); 2]);
}

#[test]
fn fragments_ahead_of_their_first_are_held_and_sent_once_it_comes() {
    // RFC 4787 REQ-14: a NAT must take out-of-order fragments (reassembly or a reordering
    // buffer).
    let mut engine = Engine::new(&config("linux-conntrack", true), Instant::now(), 1);
    let mut pieces = inbound_datagram();
    pieces.rotate_left(1); // second, third, then first
    let (verdicts, out) = pass(&mut engine, Interface::Outside, &pieces);
    assert_eq!(verdicts, vec![Verdict::Held, Verdict::Held, inbound(),]);
    assert_eq!(out.len(), 3);
    let whole = reassemble(out);
    assert!(checksums_valid(&whole));
    assert_eq!(
        Headers::<SocketAddrV4>::parse(&whole).unwrap().dst,
        SocketAddrV4::new(VM1, 5300)
    );
}

#[test]
fn a_later_fragment_read_by_another_shard_takes_the_translation_its_first_got() {
    // A later fragment has no ports to tell its flow's shard: the shards share the table.
    let config = config("linux-conntrack", true);
    let mut shards = Engine::sharded(&config, Instant::now(), 1, 2);
    let pieces = inbound_datagram();
    let sharding = crate::state::shard::Sharding::new(2, 5);
    let owner = sharding
        .owner(&pieces[0], Interface::Outside)
        .expect("the first fragment has an owner");
    assert_eq!(sharding.owner(&pieces[1], Interface::Outside), None);
    let (first, _) = pass(&mut shards[owner], Interface::Outside, &pieces[..1]);
    let (later, out) = pass(&mut shards[1 - owner], Interface::Outside, &pieces[1..]);
    assert_eq!(first, vec![inbound()]);
    assert_eq!(later, vec![inbound(); 2]);
    for p in out {
        assert_eq!(Ipv4Packet::new_unchecked(&p[..]).dst_addr(), VM1);
    }
    Engine::check_shards(&shards).unwrap();
}

#[test]
fn a_later_fragment_whose_first_never_came_is_dropped_when_its_time_is_up() {
    let t0 = Instant::now();
    let mut engine = Engine::new(&config("linux-conntrack", true), t0, 1);
    let pieces = inbound_datagram();
    let mut orphan = pieces[1].clone();
    assert_eq!(
        engine.handle_packet(t0, Interface::Outside, &mut orphan),
        Verdict::Held
    );
    // Another datagram's first fragment, after the timeout, finds the orphan expired.
    let later = t0 + Duration::from_millis(crate::state::fragment::TIMEOUT + 1);
    let other = udp_packet(CLIENT, SocketAddrV4::new(FRONTEND, 5300), &[1; 2_000]);
    let mut first = fragments(&other, 1_480, 7).remove(0);
    engine.handle_packet(later, Interface::Outside, &mut first);
    assert_eq!(
        engine.counters().dropped(DropReason::FragmentWithoutFirst),
        1
    );
}

#[test]
fn ipv6_fragments_are_dropped_in_every_profile() {
    let a = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 0x100), 1, 0, 0);
    let b = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 0x10), 2, 0, 0);
    let mut p = udp_packet(a, b, b"x");
    Ipv6Packet::new_unchecked(&mut p[..]).set_next_header(IpProtocol::Ipv6Frag);
    let mut engine = Engine::new(&config("linux-conntrack", true), Instant::now(), 1);
    assert_eq!(
        engine.handle_packet(Instant::now(), Interface::Outside, &mut p),
        Verdict::Drop(DropReason::Fragment)
    );
}

#[test]
fn replies_to_a_fragmented_tcp_segment_are_in_window_and_refresh_the_flow() {
    // The first fragment alone is tracked, so the server's ACK of the whole segment runs past
    // what the gateway counted: it is taken (up to a datagram past it) and moves the member's
    // tracked end there. Before, both sides' segments stayed out of window from then on, each
    // acknowledging data the gateway had not counted, and the flow expired while in use.
    let mut engine = Engine::new(&config("linux-conntrack", false), Instant::now(), 1);
    let now = Instant::now();
    let member = SocketAddrV4::new(VM1, 41_000);
    let send = |engine: &mut Engine, from, src, dst, flags, seq, ack, data: &[u8]| {
        let mut p = tcp_packet(src, dst, flags, seq, ack, data);
        let v = engine.handle_packet(now, from, &mut p);
        assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        Headers::<SocketAddrV4>::parse(&p).unwrap().src
    };
    let (inside, outside) = (Interface::Inside, Interface::Outside);
    let public = send(
        &mut engine,
        inside,
        member,
        SERVER,
        TcpFlags::SYN,
        100,
        0,
        b"",
    );
    let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
    send(&mut engine, outside, SERVER, public, syn_ack, 900, 101, b"");
    send(
        &mut engine,
        inside,
        member,
        SERVER,
        TcpFlags::ACK,
        101,
        901,
        b"",
    );
    let segment = tcp_packet(member, SERVER, TcpFlags::ACK, 101, 901, &[7; 3_000]);
    let (verdicts, _) = pass(&mut engine, inside, &fragments(&segment, 1_480, 11));
    assert!(verdicts
        .iter()
        .all(|v| matches!(v, Verdict::Forward { .. })));
    send(
        &mut engine,
        outside,
        SERVER,
        public,
        TcpFlags::ACK,
        901,
        3_101,
        b"r",
    );
    send(
        &mut engine,
        inside,
        member,
        SERVER,
        TcpFlags::ACK,
        3_101,
        902,
        b"",
    );
    send(
        &mut engine,
        outside,
        SERVER,
        public,
        TcpFlags::ACK,
        902,
        3_101,
        b"s",
    );
    send(
        &mut engine,
        inside,
        member,
        SERVER,
        TcpFlags::ACK,
        3_101,
        903,
        b"t",
    );
    assert_eq!(engine.counters().out_of_window, 0);
    // The open end is closed by the member's next segment: an ACK a datagram ahead is not.
    let mut ahead = tcp_packet(SERVER, public, TcpFlags::ACK, 903, 3_102 + 30_000, b"");
    engine.handle_packet(now, outside, &mut ahead);
    assert_eq!(engine.counters().out_of_window, 1);
}
