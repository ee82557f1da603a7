//! Engine tests of sharded engines (one per core) and of the shared limits: SNAT ports, max_flows.

use super::*;

#[test]
fn both_directions_of_a_flow_and_its_icmp_errors_have_one_owner() {
    use crate::state::shard::Sharding;
    use crate::wire::icmp::tests::icmp_error;
    let sharding = Sharding::new(4, 7);
    let mut h = Harness::new("silent");
    let mut owners = std::collections::HashSet::new();
    for port in 40_000..40_064 {
        // Inbound: the client's SYN to the frontend, and the member's answer to the client.
        let syn = tcp_packet(ep(CLIENT, port), FRONTEND_7000, TcpFlags::SYN, 1, 0, b"");
        let owner = sharding.owner(&syn, Interface::Outside).unwrap();
        let (client, server) = h.connect_inbound(port);
        let answer = tcp_packet(server.addr, client.addr, TcpFlags::ACK, 2, 2, b"x");
        assert_eq!(sharding.owner(&answer, Interface::Inside), Some(owner));
        // A member's ICMP error about a packet delivered to it names the client as its source.
        let delivered = tcp_packet(client.addr, server.addr, TcpFlags::ACK, 2, 2, b"y");
        let error = icmp_error(*server.addr.ip(), *client.addr.ip(), 3, 3, &delivered, 28);
        assert_eq!(sharding.owner(&error, Interface::Inside), Some(owner));
        owners.insert(owner);

        // IPv6: the remote endpoint decides too.
        let remote6 = SocketAddrV6::new("fd00:203::100".parse().unwrap(), port, 0, 0);
        let frontend6 = SocketAddrV6::new("fd00:203::10".parse().unwrap(), 7000, 0, 0);
        let member6 = SocketAddrV6::new("fd00:192::11".parse().unwrap(), 7000, 0, 0);
        let inbound = tcp_packet(remote6, frontend6, TcpFlags::SYN, 1, 0, b"");
        let reply = tcp_packet(member6, remote6, TcpFlags::ACK, 1, 2, b"");
        assert_eq!(
            sharding.owner(&inbound, Interface::Outside),
            sharding.owner(&reply, Interface::Inside)
        );

        // Outbound: the member's SYN, the server's answer to the frontend, and an ICMP error
        // from a router about the translated packet.
        let (vm, server, _, public) = h.connect_outbound(port);
        let sent = tcp_packet(vm.addr, server.addr, TcpFlags::ACK, 9, 0, b"y");
        let owner = sharding.owner(&sent, Interface::Inside).unwrap();
        let answer = tcp_packet(server.addr, public, TcpFlags::ACK, 9, 0, b"z");
        assert_eq!(sharding.owner(&answer, Interface::Outside), Some(owner));
        let mut seen_outside = sent.clone();
        let headers = Headers::<SocketAddrV4>::parse(&seen_outside).unwrap();
        packet::rewrite_src(&mut seen_outside, &headers, public);
        let error = icmp_error(
            Ipv4Addr::new(203, 0, 113, 1),
            *public.ip(),
            3,
            4,
            &seen_outside,
            48,
        );
        assert_eq!(sharding.owner(&error, Interface::Outside), Some(owner));
    }
    assert_eq!(owners.len(), 4, "flows spread over every shard");
    assert_eq!(sharding.owner(b"\x45junk", Interface::Outside), None);
    assert_eq!(sharding.owner(b"", Interface::Inside), None);
}

#[test]
fn sharded_engines_share_snat_ports_so_a_member_runs_out_as_one_engine_would() {
    // Azure: a member owns one block of SNAT ports for all its destinations; running the
    // engine on two cores must not give it two blocks.
    use crate::state::shard::Sharding;
    let mut config = config("silent", TWO_VMS);
    config.outbound_rules[0].ports_per_member = 8;
    let t0 = Instant::now();
    let mut shards = Engine::sharded(&config, t0, 1, 2);
    let sharding = Sharding::new(2, 3);
    let syn = |server: u16| {
        let (vm, remote) = (ep(VM1, 30_000 + server), ep(CLIENT, server));
        tcp_packet(vm, remote, TcpFlags::SYN, 5, 0, b"")
    };
    let owner_of = |server: u16| sharding.owner(&syn(server), Interface::Inside).unwrap();
    let syn_to = |shards: &mut Vec<Engine>, server: u16| {
        shards[owner_of(server)].handle_packet(t0, Interface::Inside, &mut syn(server))
    };
    for server in 8_000..8_008 {
        assert_eq!(
            syn_to(&mut shards, server).interface(),
            Some(Interface::Outside)
        );
    }
    assert_eq!(
        syn_to(&mut shards, 8_008),
        Verdict::Drop(DropReason::PortExhausted)
    );
    // The other shard refuses too, and the exhaustion is reported once, not once per shard.
    let other = (8_009..9_000)
        .find(|&s| owner_of(s) != owner_of(8_008))
        .unwrap();
    assert_eq!(
        syn_to(&mut shards, other),
        Verdict::Drop(DropReason::PortExhausted)
    );
    let mut reported = 0;
    for shard in shards.iter_mut() {
        while let Some(event) = shard.poll_event() {
            reported += usize::from(matches!(event, Event::PortExhausted { .. }));
        }
    }
    assert_eq!(reported, 1);
    let flows: Vec<usize> = shards.iter().map(Engine::flow_count).collect();
    assert!(
        flows.iter().all(|&n| n > 0),
        "both shards hold flows: {flows:?}"
    );
    assert_eq!(flows.iter().sum::<usize>(), 8);
    let lent: usize = shards[1].snat_usage().map(|u| u.lent).sum();
    assert_eq!(lent, 8, "every shard sees the one pool");
    assert_eq!(Engine::check_shards(&shards), Ok(()));
}

#[test]
fn the_cross_shard_check_refuses_an_engine_that_is_not_one_of_the_shards() {
    let mut config = config("silent", TWO_VMS);
    config.outbound_rules[0].ports_per_member = 8;
    let t0 = Instant::now();
    let mut shards = Engine::sharded(&config, t0, 1, 2);
    let mut syn = tcp_packet(ep(VM1, 30_000), ep(CLIENT, 8_000), TcpFlags::SYN, 5, 0, b"");
    shards[0].handle_packet(t0, Interface::Inside, &mut syn);
    assert_eq!(Engine::check_shards(&shards), Ok(()));
    // A shard made apart, with a pool of its own, is not one of them.
    shards.push(Engine::new(&config, t0, 9));
    assert!(Engine::check_shards(&shards).is_err());
}

#[test]
fn the_invariant_checks_say_what_is_broken_as_a_typed_error() {
    let config = config("silent", ONE_VM);
    let t0 = Instant::now();
    let mut shards = Engine::sharded(&config, t0, 1, 2);
    // Engines made apart share neither max_flows nor SNAT pools: the first found is named.
    shards.push(Engine::new(&config, t0, 9));
    assert_eq!(
        Engine::check_shards(&shards),
        Err(InvariantError::UnsharedFlowLimit)
    );
    // Counted apart, one engine holds more places than max_flows allows.
    let mut config = config.clone();
    config.max_flows = 1;
    let mut h = Harness::with(config);
    h.connect_inbound(40_000);
    h.engine.v4.limit.held.store(2, Ordering::Relaxed);
    let broken = h.engine.check_invariants().unwrap_err();
    assert_eq!(
        broken,
        InvariantError::FlowLimit {
            flows: 1,
            held: 2,
            max: 1
        }
    );
    assert_eq!(broken.to_string(), "1 flows, 2 places taken, max_flows 1");
}

#[test]
fn a_full_table_refuses_new_flows_says_so_once_and_spares_the_flows_it_holds() {
    let mut config = config("silent", ONE_VM);
    config.max_flows = 2;
    let mut h = Harness::with(config);
    let (mut first, server) = h.connect_inbound(40_000);
    h.connect_inbound(40_001);
    for port in [40_002, 40_003] {
        let mut late = Peer {
            addr: ep(CLIENT, port),
            iface: Interface::Outside,
            snd_nxt: 1,
        };
        let (v, _) = h.send(&mut late, FRONTEND_7000, TcpFlags::SYN, 0, b"");
        assert_eq!(v, Verdict::Drop(DropReason::TableFull));
    }
    // An outbound flow is refused the same way.
    let mut vm = Peer {
        addr: ep(VM1, 33_000),
        iface: Interface::Inside,
        snd_nxt: 1,
    };
    let (v, _) = h.send(&mut vm, ep(CLIENT, 8_000), TcpFlags::SYN, 0, b"");
    assert_eq!(v, Verdict::Drop(DropReason::TableFull));
    assert_eq!(h.engine.counters().dropped(DropReason::TableFull), 3);
    let said = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::TableFull { max_flows: 2 }))
        .count();
    assert_eq!(said, 1, "once per episode");
    // The flows it holds carry on.
    let (v, _) = h.send(
        &mut first,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"x",
    );
    assert_eq!(v.interface(), Some(Interface::Inside));
    assert_eq!(h.engine.check_invariants(), Ok(()));
    // Once flows end, new ones are taken again, and the next episode is said again.
    h.advance_to(2 * IDLE_MS);
    let (v, _) = h.send(&mut vm, ep(CLIENT, 8_000), TcpFlags::SYN, 0, b"");
    assert_eq!(v.interface(), Some(Interface::Outside));
    h.connect_inbound(40_010);
    let mut late = Peer {
        addr: ep(CLIENT, 40_011),
        iface: Interface::Outside,
        snd_nxt: 1,
    };
    let (v, _) = h.send(&mut late, FRONTEND_7000, TcpFlags::SYN, 0, b"");
    assert_eq!(v, Verdict::Drop(DropReason::TableFull));
    let said = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::TableFull { .. }))
        .count();
    assert_eq!(said, 2);
    assert_eq!(h.engine.check_invariants(), Ok(()));
}

#[test]
fn shards_share_one_max_flows_and_say_it_is_reached_once() {
    use crate::state::shard::Sharding;
    let mut config = config("silent", ONE_VM);
    config.max_flows = 4;
    let t0 = Instant::now();
    let mut shards = Engine::sharded(&config, t0, 1, 2);
    let sharding = Sharding::new(2, 3);
    let mut verdicts = Vec::new();
    for port in 40_000..40_012 {
        let mut syn = tcp_packet(ep(CLIENT, port), FRONTEND_7000, TcpFlags::SYN, 1, 0, b"");
        let owner = sharding.owner(&syn, Interface::Outside).unwrap();
        verdicts.push(shards[owner].handle_packet(t0, Interface::Outside, &mut syn));
    }
    let taken = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Forward { .. }))
        .count();
    assert_eq!(taken, 4, "{verdicts:?}");
    let flows: Vec<usize> = shards.iter().map(Engine::flow_count).collect();
    assert!(
        flows.iter().all(|&n| n > 0),
        "both shards hold flows: {flows:?}"
    );
    let mut said = 0;
    for shard in shards.iter_mut() {
        while let Some(event) = shard.poll_event() {
            said += usize::from(matches!(event, Event::TableFull { max_flows: 4 }));
        }
        assert_eq!(shard.check_invariants(), Ok(()));
    }
    assert_eq!(said, 1);
    assert_eq!(Engine::check_shards(&shards), Ok(()));
}

#[test]
fn a_forced_expiry_is_told_from_an_idle_one_and_carries_the_flows_true_idle_time() {
    // `idlegate flows expire` 2.5 s after the last packet: the event says forced and 2.5 s,
    // not the 4 s timeout that did not run out.
    let mut h = Harness::new("silent");
    h.advance_to(1_000);
    let _ = h.connect_inbound(40_000);
    h.advance_to(3_500);
    assert_eq!(h.engine.expire_now(h.at(3_500), |_| true), 1);
    h.drain();
    // And an idle expiry of a second flow says idle, after its timeout.
    let _ = h.connect_inbound(40_001);
    h.advance_to(3_500 + IDLE_MS);
    let expiries: Vec<(ExpiryCause, Duration, Duration)> = h
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Expired {
                cause,
                idle_for,
                timeout,
                ..
            } => Some((*cause, *idle_for, *timeout)),
            _ => None,
        })
        .collect();
    let idle = Duration::from_millis(IDLE_MS);
    assert_eq!(
        expiries,
        [
            (ExpiryCause::Forced, Duration::from_millis(2_500), idle),
            (ExpiryCause::Idle, idle, idle),
        ]
    );
}
