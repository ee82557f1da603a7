//! Engine tests of the rules: SNAT ports (uniqueness, exhaustion, holds), outbound flows, member choice, inbound NAT rules, tuples already in use.

use super::*;

#[test]
fn non_syn_segment_without_a_flow_is_dropped_and_counted() {
    let mut h = Harness::new("silent");
    let mut stray = Peer {
        addr: ep(CLIENT, 40_001),
        iface: Interface::Outside,
        snd_nxt: 99,
    };
    let (v, _) = h.send(&mut stray, FRONTEND_7000, TcpFlags::ACK, 1, b"x");
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    let (v, _) = h.send(&mut stray, ep(FRONTEND, 7001), TcpFlags::SYN, 0, b"");
    assert_eq!(v, Verdict::Drop(DropReason::NoRule), "no rule on port 7001");
    assert_eq!(h.engine.counters().dropped(DropReason::NoFlow), 1);
    assert_eq!(h.engine.counters().dropped(DropReason::NoRule), 1);
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn outbound_flow_leaves_from_the_frontend_and_replies_find_their_way_back() {
    let mut h = Harness::new("silent");
    let server_addr = ep(CLIENT, 8_000);
    let mut vm = Peer {
        addr: ep(VM1, 33_000),
        iface: Interface::Inside,
        snd_nxt: 5,
    };
    let (v, syn) = h.send(&mut vm, server_addr, TcpFlags::SYN, 0, b"");
    assert_eq!(v.interface(), Some(Interface::Outside));
    assert!(checksums_valid(&syn));
    let public = Headers::<SocketAddrV4>::parse(&syn).unwrap().src;
    assert_eq!(*public.ip(), FRONTEND);
    let mut server = Peer {
        addr: server_addr,
        iface: Interface::Outside,
        snd_nxt: 900,
    };
    let (v, reply) = h.send(
        &mut server,
        public,
        TcpFlags::SYN | TcpFlags::ACK,
        vm.snd_nxt,
        b"",
    );
    assert_eq!(v.interface(), Some(Interface::Inside));
    assert!(checksums_valid(&reply));
    assert_eq!(Headers::<SocketAddrV4>::parse(&reply).unwrap().dst, vm.addr);
}

#[test]
fn snat_ports_are_unique_per_active_flow_and_come_back_after_expiry_and_hold() {
    let mut h = Harness::new("silent");
    // Every port of vm1's block, then one more.
    let lend_all = |h: &mut Harness, from_port: u16| -> Vec<u16> {
        let mut ports = Vec::new();
        for i in 0u16.. {
            let mut vm = Peer {
                addr: ep(VM1, from_port + i),
                iface: Interface::Inside,
                snd_nxt: 5,
            };
            let (v, syn) = h.send(&mut vm, ep(CLIENT, 8_000), TcpFlags::SYN, 0, b"");
            match v {
                Verdict::Forward { .. } => {
                    ports.push(Headers::<SocketAddrV4>::parse(&syn).unwrap().src.port())
                }
                Verdict::Drop(DropReason::PortExhausted) => return ports,
                other => panic!("{other:?}"),
            }
        }
        unreachable!()
    };
    let ports = lend_all(&mut h, 1);
    let unique: std::collections::HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(unique.len(), ports.len(), "no port lent twice");
    // Azure's default: 1,024 ports per member; none of them the LB rule's frontend port.
    assert_eq!(ports.len(), 1024);
    assert!(!unique.contains(&7000));
    // The half-open flows expire at the transitory timeout; their ports are then held like
    // after a RST (15 s scaled to 250 ms, which races TCP's retransmissions and so runs at
    // the 3 s floor) before they can be lent again.
    h.advance_to(TRANSITORY_MS);
    assert_eq!(h.engine.flow_count(), 0);
    assert!(lend_all(&mut h, 2_000).is_empty(), "still held");
    h.advance_to(TRANSITORY_MS + 3_000 - 1);
    assert!(
        lend_all(&mut h, 3_000).is_empty(),
        "still held at the floor"
    );
    h.advance_to(TRANSITORY_MS + 3_000);
    let again: std::collections::HashSet<u16> = lend_all(&mut h, 4_000).into_iter().collect();
    assert_eq!(again, unique, "every port came back");
}

#[test]
fn snat_port_exhaustion_drops_the_syn_says_so_and_spares_other_members_and_flows() {
    // Azure: on SNAT port exhaustion the new connection fails; existing flows are unaffected.
    let mut config = config("silent", TWO_VMS);
    config.outbound_rules[0].ports_per_member = 8;
    let mut h = Harness::with(config);
    let mut first = Peer {
        addr: ep(VM1, 30_000),
        iface: Interface::Inside,
        snd_nxt: 5,
    };
    h.send(&mut first, ep(CLIENT, 8_000), TcpFlags::SYN, 0, b"");
    for port in 30_001..30_008 {
        let mut vm = Peer {
            addr: ep(VM1, port),
            iface: Interface::Inside,
            snd_nxt: 5,
        };
        assert!(matches!(
            h.send(&mut vm, ep(CLIENT, 8_000), TcpFlags::SYN, 0, b"").0,
            Verdict::Forward { .. }
        ));
    }
    let mut ninth = Peer {
        addr: ep(VM1, 30_008),
        iface: Interface::Inside,
        snd_nxt: 5,
    };
    let (v, _) = h.send(&mut ninth, ep(CLIENT, 8_000), TcpFlags::SYN, 0, b"");
    assert_eq!(v, Verdict::Drop(DropReason::PortExhausted));
    let exhausted = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::PortExhausted { member, .. } if *member == VM1))
        .count();
    assert_eq!(exhausted, 1);
    let mut other = Peer {
        addr: ep(VM2, 30_000),
        iface: Interface::Inside,
        snd_nxt: 5,
    };
    assert!(
        matches!(
            h.send(&mut other, ep(CLIENT, 8_000), TcpFlags::SYN, 0, b"")
                .0,
            Verdict::Forward { .. }
        ),
        "vm2 has its own block"
    );
    let (v, _) = h.send(
        &mut first,
        ep(CLIENT, 8_000),
        TcpFlags::ACK,
        1,
        b"still here",
    );
    assert_eq!(
        v.interface(),
        Some(Interface::Outside),
        "existing flows are unaffected"
    );
}

#[test]
fn a_port_closed_with_fin_is_held_longer_than_one_closed_with_rst() {
    // Azure LB SNAT: 240 s after FIN, 15 s after RST (scaled by 60: 4 s and 250 ms).
    let mut config = config("silent", ONE_VM);
    config.outbound_rules[0].ports_per_member = 8;
    let mut h = Harness::with(config);
    // An established outbound connection from vm1's `port`: (vm, server, verdict, SNAT port).
    let open = |h: &mut Harness, port: u16| {
        let (vm, server, v, public) = h.connect_outbound(port);
        (vm, server, v, public.port())
    };
    let mut conns: Vec<(Peer, Peer, Verdict, u16)> =
        (0..8).map(|i| open(&mut h, 31_000 + i)).collect();
    let (fin_port, rst_port) = (conns[0].3, conns[1].3);
    let (vm, server, ..) = &mut conns[0];
    h.send(
        vm,
        ep(CLIENT, 8_000),
        TcpFlags::FIN | TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    let (vm, server, ..) = &mut conns[1];
    h.send(vm, ep(CLIENT, 8_000), TcpFlags::RST, server.snd_nxt, b"");
    // Both flows are gone at the transitory timeout (500 ms); the other six idle until 4 s.
    h.advance_to(249);
    assert_eq!(
        open(&mut h, 32_000).2,
        Verdict::Drop(DropReason::PortExhausted)
    );
    h.advance_to(TRANSITORY_MS);
    let (.., v, port) = open(&mut h, 32_001);
    assert_eq!(
        (v.interface(), port),
        (Some(Interface::Outside), rst_port),
        "RST: held 250 ms"
    );
    h.advance_to(3_999);
    assert_eq!(
        open(&mut h, 32_002).2,
        Verdict::Drop(DropReason::PortExhausted)
    );
    h.advance_to(4_000);
    let (.., v, port) = open(&mut h, 32_003);
    assert_eq!(
        (v.interface(), port),
        (Some(Interface::Outside), fin_port),
        "FIN: held 4 s"
    );
}

#[test]
fn lb_member_is_chosen_by_5_tuple_hash_and_fixed_for_the_flows_life() {
    let mut h = Harness::with(config("silent", TWO_VMS));
    let mut chosen = std::collections::HashMap::new();
    for port in 40_000..40_064 {
        let (mut client, server) = h.connect_inbound(port);
        chosen.insert(port, *server.addr.ip());
        for _ in 0..3 {
            let (_, p) = h.send(
                &mut client,
                FRONTEND_7000,
                TcpFlags::ACK,
                server.snd_nxt,
                b"x",
            );
            assert_eq!(
                Headers::<SocketAddrV4>::parse(&p).unwrap().dst,
                server.addr,
                "same member for the flow's life"
            );
        }
    }
    let vm1 = chosen.values().filter(|&&m| m == VM1).count();
    let vm2 = chosen.values().filter(|&&m| m == VM2).count();
    assert_eq!(vm1 + vm2, 64);
    assert!(vm1 > 10 && vm2 > 10, "both members get flows: {vm1}/{vm2}");
}

#[test]
fn syn_reusing_a_closed_tuple_starts_a_new_connection() {
    let mut h = Harness::new("silent");
    let (mut client, server) = h.connect_inbound(40_000);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::RST,
        server.snd_nxt,
        b"",
    );
    client.snd_nxt = 777_777;
    let (v, _) = h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"");
    assert_eq!(v.interface(), Some(Interface::Inside));
    assert_eq!(
        h.engine.v4.flows.iter().next().unwrap().1.state,
        FlowState::SynSent
    );
}

#[test]
fn a_new_connection_whose_translation_is_another_flows_is_refused() {
    // vm1 opened an outbound connection from its port 7000 to the client's port 40000; an
    // inbound connection from that client port would map onto the very same inside tuple.
    let mut h = Harness::new("silent");
    let mut vm = Peer {
        addr: ep(VM1, 7000),
        iface: Interface::Inside,
        snd_nxt: 5,
    };
    let (v, _) = h.send(&mut vm, ep(CLIENT, 40_000), TcpFlags::SYN, 0, b"");
    assert_eq!(v.interface(), Some(Interface::Outside));
    let mut client = Peer {
        addr: ep(CLIENT, 40_000),
        iface: Interface::Outside,
        snd_nxt: 1,
    };
    let (v, _) = h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"");
    assert_eq!(v, Verdict::Drop(DropReason::TupleInUse));
    assert_eq!(h.engine.flow_count(), 1);
}

#[test]
fn inbound_nat_rules_map_each_frontend_port_to_its_one_member() {
    // Azure inbound NAT rules: frontend IP:port → one member:port; the range form gives each
    // member of the pool, in order, the next frontend port.
    let text = r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }, { name = "vm2", address = "192.0.2.12" }]
[[inbound_nat_rule]]
name = "ssh-vm2"
frontend = "public"
frontend_port = 50001
member = "vm2"
backend_port = 22
[[inbound_nat_rule]]
name = "ssh-range"
frontend = "public"
frontend_port_range = [50100, 50109]
backend_pool = "vms"
backend_port = 2222
expiry = "reset-on-next"
"#;
    let mut h = Harness::with(Config::from_toml(text, "test.toml").unwrap());
    let mut client = Peer {
        addr: ep(CLIENT, 40_000),
        iface: Interface::Outside,
        snd_nxt: 1,
    };
    let to_member = |vm: Ipv4Addr| Verdict::Forward {
        interface: Interface::Inside,
        destination: vm.into(),
    };
    let mut to = |h: &mut Harness, port: u16| {
        let (v, p) = h.send(&mut client, ep(FRONTEND, port), TcpFlags::SYN, 0, b"");
        (v, Headers::<SocketAddrV4>::parse(&p).unwrap().dst)
    };
    assert_eq!(to(&mut h, 50001), (to_member(VM2), ep(VM2, 22)));
    assert_eq!(to(&mut h, 50100), (to_member(VM1), ep(VM1, 2222)));
    assert_eq!(to(&mut h, 50101), (to_member(VM2), ep(VM2, 2222)));
    assert_eq!(
        to(&mut h, 50102).0,
        Verdict::Drop(DropReason::NoRule),
        "no third member"
    );
    // A stray segment to a port of the range is that rule's: reset-on-next answers it.
    let mut stray = Peer {
        addr: ep(CLIENT, 40_001),
        iface: Interface::Outside,
        snd_nxt: 1,
    };
    h.send(&mut stray, ep(FRONTEND, 50101), TcpFlags::ACK, 1, b"x");
    let (iface, rst) = h.sent.pop().expect("a RST");
    let hd = Headers::<SocketAddrV4>::parse(&rst).unwrap();
    assert!(hd.tcp.unwrap().flags.rst());
    assert_eq!(
        (iface, hd.src, hd.dst),
        (Interface::Outside, ep(FRONTEND, 50101), stray.addr)
    );
}

#[test]
fn after_an_idle_expiry_under_azure_lb_the_members_next_connection_takes_the_port_at_once() {
    // Azure "SNAT for outbound connections": the port is released when the idle timeout is
    // reached; no hold, unlike after a RST (15 s) or a FIN (240 s).
    let mut config = config("silent", TWO_VMS);
    config.outbound_rules[0].ports_per_member = 8;
    let mut h = Harness::with(config);
    let mut ports = Vec::new();
    for i in 0..8 {
        let (_, _, v, public) = h.connect_outbound(31_000 + i);
        assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        ports.push(public.port());
    }
    let mut ninth = Peer {
        addr: ep(VM1, 31_100),
        iface: Interface::Inside,
        snd_nxt: 5,
    };
    let (v, _) = h.send(&mut ninth, ep(CLIENT, 8_000), TcpFlags::SYN, 0, b"");
    assert_eq!(v, Verdict::Drop(DropReason::PortExhausted));
    // Every established flow is forgotten at its idle timeout, and its port is free that instant.
    h.advance_to(IDLE_MS);
    assert_eq!(h.engine.flow_count(), 0);
    let (_, _, v, public) = h.connect_outbound(31_200);
    assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    assert!(
        ports.contains(&public.port()),
        "{public} is one of {ports:?}"
    );
}
