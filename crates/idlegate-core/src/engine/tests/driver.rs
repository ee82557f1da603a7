//! Engine tests of what a driver reads off the engine: the destination in a forward verdict, and one parse shared by the shard owner and the engine.

use super::*;

#[test]
fn a_forward_verdict_names_the_interface_and_the_destination_the_packet_leaves_for() {
    use crate::wire::icmp::tests::icmp_error;
    let mut h = Harness::new("silent");
    let forward = |interface, destination: Ipv4Addr| Verdict::Forward {
        interface,
        destination: destination.into(),
    };
    // Inbound: the SYN leaves for the member, the member's answer for the client.
    let mut client = Peer {
        addr: ep(CLIENT, 40_000),
        iface: Interface::Outside,
        snd_nxt: 1,
    };
    let (v, syn) = h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"");
    assert_eq!(v, forward(Interface::Inside, VM1));
    assert_eq!(ip_destination(&syn), IpAddr::V4(VM1));
    let mut server = Peer {
        addr: ep(VM1, 7000),
        iface: Interface::Inside,
        snd_nxt: 500,
    };
    let flags = TcpFlags::SYN | TcpFlags::ACK;
    let (v, answer) = h.send(&mut server, client.addr, flags, client.snd_nxt, b"");
    assert_eq!(v, forward(Interface::Outside, CLIENT));
    assert_eq!(ip_destination(&answer), IpAddr::V4(CLIENT));
    // Outbound: the member's segment leaves for the server, the reply for the member.
    let (vm, mut far, v, public) = h.connect_outbound(33_000);
    assert_eq!(v, forward(Interface::Outside, *far.addr.ip()));
    let (v, reply) = h.send(&mut far, public, TcpFlags::ACK, vm.snd_nxt, b"r");
    assert_eq!(v, forward(Interface::Inside, VM1));
    assert_eq!(ip_destination(&reply), IpAddr::V4(VM1));
    // An ICMP error from a router about the translated packet leaves for the member.
    let mut sent = tcp_packet(vm.addr, far.addr, TcpFlags::ACK, vm.snd_nxt, 0, b"y");
    let headers = Headers::<SocketAddrV4>::parse(&sent).unwrap();
    packet::rewrite_src(&mut sent, &headers, public);
    let router = Ipv4Addr::new(203, 0, 113, 1);
    let error = icmp_error(router, *public.ip(), 3, 4, &sent, 48);
    let (v, out) = pass(&mut h, 0, Interface::Outside, error);
    assert_eq!(v, forward(Interface::Inside, VM1));
    assert_eq!(ip_destination(&out), IpAddr::V4(VM1));
    // Drops and held fragments name no interface.
    let junk = h.send_seq(&client, FRONTEND_7000, TcpFlags::default(), 9, 0, b"");
    assert_eq!(junk.interface(), None);
}

#[test]
fn one_parse_serves_the_shard_owner_and_the_engine_as_two_parses_would() {
    use crate::state::shard::Sharding;
    use crate::wire::icmp::tests::icmp_error;
    let sharding = Sharding::new(4, 7);
    let (t0, seed) = (Instant::now(), 1);
    let mut twice = Engine::new(&config("reset-on-next", ONE_VM), t0, seed);
    let mut once = Engine::new(&config("reset-on-next", ONE_VM), t0, seed);
    let client = ep(CLIENT, 40_000);
    let member = ep(VM1, 7000);
    let v6 = SocketAddrV6::new("fd00:203::100".parse().unwrap(), 1, 0, 0);
    let delivered = tcp_packet(client, member, TcpFlags::ACK, 2, 2, b"y");
    let packets: Vec<(Interface, Vec<u8>)> = vec![
        (
            Interface::Outside,
            tcp_packet(client, FRONTEND_7000, TcpFlags::SYN, 1, 0, b""),
        ),
        (
            Interface::Inside,
            tcp_packet(member, client, TcpFlags::SYN | TcpFlags::ACK, 9, 2, b""),
        ),
        (
            Interface::Outside,
            tcp_packet(client, FRONTEND_7000, TcpFlags::ACK, 2, 10, b"x"),
        ),
        (
            Interface::Inside,
            icmp_error(VM1, CLIENT, 3, 3, &delivered, 28),
        ),
        // No flow: dropped, and answered with a RST under reset-on-next.
        (
            Interface::Outside,
            tcp_packet(ep(CLIENT, 1), FRONTEND_7000, TcpFlags::ACK, 5, 5, b"z"),
        ),
        (
            Interface::Outside,
            tcp_packet(v6, v6, TcpFlags::SYN, 1, 0, b""),
        ),
        (Interface::Outside, b"\x45junk".to_vec()),
        (Interface::Inside, Vec::new()),
    ];
    for (i, (from, packet)) in packets.into_iter().enumerate() {
        let (mut a, mut b) = (packet.clone(), packet);
        let parsed = Parsed::new(&b);
        assert_eq!(
            sharding.owner_of(&b, &parsed, from),
            sharding.owner(&a, from),
            "packet {i}: one owner"
        );
        let checksum = TransportChecksum::Complete;
        let expected = twice.handle_packet(t0, from, &mut a);
        assert_eq!(
            once.handle_parsed(t0, from, &mut b, &parsed, checksum),
            expected,
            "packet {i}: one verdict"
        );
        assert_eq!(a, b, "packet {i}: the same bytes out");
    }
    assert_eq!(once.counters(), twice.counters());
    let (mut x, mut y) = ([0u8; 64], [0u8; 64]);
    while let Some(tx) = twice.poll_transmit(&mut x) {
        assert_eq!(once.poll_transmit(&mut y), Some(tx));
        assert_eq!(x[..tx.len], y[..tx.len]);
    }
    assert_eq!(once.poll_transmit(&mut y), None);
}
