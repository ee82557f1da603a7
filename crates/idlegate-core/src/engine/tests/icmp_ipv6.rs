//! Engine tests of ICMP errors about live flows (RFC 5508) and of IPv6 flows beside IPv4 ones.

use super::*;

#[test]
fn an_icmp_error_about_an_snat_packet_reaches_the_member_as_about_its_own_packet() {
    // RFC 5508 REQ-5: the quoted packet is put back as the member sent it, the error goes to
    // the member, and it neither refreshes nor ends the flow.
    use crate::wire::icmp::tests::icmp_error;
    let mut h = Harness::new("silent");
    let (vm, server, _, public) = h.connect_outbound(33_000);
    h.advance_to(1_000);
    let sent = tcp_packet(vm.addr, server.addr, TcpFlags::ACK, vm.snd_nxt, 0, &[7; 64]);
    let mut seen_outside = sent.clone();
    let headers = Headers::<SocketAddrV4>::parse(&seen_outside).unwrap();
    packet::rewrite_src(&mut seen_outside, &headers, public);
    let router = Ipv4Addr::new(203, 0, 113, 1);
    let mut error = icmp_error(router, *public.ip(), 3, 4, &seen_outside, 48);
    let verdict = h
        .engine
        .handle_packet(h.at(1_000), Interface::Outside, &mut error);
    assert_eq!(verdict.interface(), Some(Interface::Inside));
    let translated = IcmpError::<SocketAddrV4>::parse(&error).unwrap();
    assert_eq!(
        (translated.quoted_src, translated.quoted_dst),
        (vm.addr, server.addr)
    );
    assert_eq!(&error[28..76], &sent[..48]);
    assert_eq!(h.engine.counters().icmp_errors_translated, 1);
    h.advance_to(IDLE_MS);
    assert_eq!(
        h.engine.flow_count(),
        0,
        "the error did not refresh the flow"
    );
}

#[test]
fn an_icmp_error_from_a_member_leaves_from_the_frontend() {
    // RFC 5508 REQ-4: an error from the inside about an inbound packet goes to the remote,
    // from the public address, quoting the packet the remote sent.
    use crate::wire::icmp::tests::icmp_error;
    let mut h = Harness::with(udp_config("silent"));
    let client = ep(CLIENT, 5353);
    let mut query = udp_packet(client, ep(FRONTEND, 53), b"q");
    let original = query.clone();
    let v = h
        .engine
        .handle_packet(h.at(0), Interface::Outside, &mut query);
    assert_eq!(v.interface(), Some(Interface::Inside));
    let member = Headers::<SocketAddrV4>::parse(&query).unwrap().dst;
    let mut unreachable = icmp_error(*member.ip(), *client.ip(), 3, 3, &query, 28);
    let v = h
        .engine
        .handle_packet(h.at(10), Interface::Inside, &mut unreachable);
    assert_eq!(v.interface(), Some(Interface::Outside));
    let outer = smoltcp::wire::Ipv4Packet::new_checked(&unreachable[..]).unwrap();
    assert_eq!((outer.src_addr(), outer.dst_addr()), (FRONTEND, CLIENT));
    let quoted = IcmpError::<SocketAddrV4>::parse(&unreachable).unwrap();
    assert_eq!(
        (quoted.quoted_src, quoted.quoted_dst),
        (client, ep(FRONTEND, 53))
    );
    assert_eq!(&unreachable[28..56], &original[..28]);
}

#[test]
fn an_icmp_error_about_no_live_flow_is_dropped() {
    // RFC 5508 REQ-4/REQ-5: no active mapping, silently dropped.
    use crate::wire::icmp::tests::icmp_error;
    let mut h = Harness::new("silent");
    let (vm, server, _, public) = h.connect_outbound(33_000);
    let seen = tcp_packet(public, server.addr, TcpFlags::ACK, vm.snd_nxt, 0, b"x");
    let mut stranger = seen.clone();
    let headers = Headers::<SocketAddrV4>::parse(&stranger).unwrap();
    packet::rewrite_src(&mut stranger, &headers, ep(FRONTEND, 9));
    let mut unknown = icmp_error(*server.addr.ip(), FRONTEND, 3, 3, &stranger, 28);
    let v = h
        .engine
        .handle_packet(h.at(0), Interface::Outside, &mut unknown);
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    h.advance_to(IDLE_MS);
    let mut late = icmp_error(*server.addr.ip(), FRONTEND, 3, 3, &seen, 28);
    let v = h
        .engine
        .handle_packet(h.at(IDLE_MS), Interface::Outside, &mut late);
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
}

#[test]
fn an_ipv6_flow_is_translated_and_reset_at_expiry_like_an_ipv4_one() {
    let mut h = Harness::with(dual_stack_config("reset"));
    let client = ep6("fd00:203::100", 40_000);
    let member = connect_inbound6(&mut h, client);
    assert_eq!(member, ep6("fd00:192::11", 7000));
    h.advance_to(IDLE_MS);
    assert_eq!(h.expired(), vec![(IDLE_MS, Expiry::Reset)]);
    assert_eq!(h.sent.len(), 2);
    for (iface, rst) in &h.sent {
        assert!(checksums_valid(rst), "{iface:?}");
        let rst_headers = Headers::<SocketAddrV6>::parse(rst).unwrap();
        let expected = match iface {
            Interface::Outside => (ep6("fd00:203::10", 7000), client, 501),
            Interface::Inside => (client, member, 101),
        };
        assert_eq!(
            (
                rst_headers.src,
                rst_headers.dst,
                rst_headers.tcp.unwrap().seq
            ),
            expected
        );
    }
}

#[test]
fn ipv4_and_ipv6_rules_run_side_by_side_and_keep_their_names() {
    let mut h = Harness::with(dual_stack_config("silent"));
    let (client4, _) = h.connect_inbound(40_000);
    connect_inbound6(&mut h, ep6("fd00:203::100", 40_001));
    let mut flows: Vec<(String, SocketAddr)> = h
        .engine
        .flows(h.at(0))
        .map(|f| (h.engine.rule_name(f.flow.rule).to_string(), f.flow.remote))
        .collect();
    flows.sort();
    assert_eq!(
        flows,
        [
            ("app4".to_string(), client4.addr.into()),
            ("app6".to_string(), ep6("fd00:203::100", 40_001).into())
        ]
    );
    assert_eq!(h.engine.counters().flows_created, 2);
    h.engine.expire_now(h.at(10), |rule| rule == "app6");
    assert_eq!(h.engine.flow_count(), 1);
}

#[test]
fn an_icmpv6_packet_too_big_reaches_the_ipv6_member_translated() {
    // RFC 5508 REQ-5, with RFC 4443's packet too big: IPv6 finds its path MTU only this way.
    use crate::wire::icmp::tests::icmpv6_error;
    let mut h = Harness::with(dual_stack_config("silent"));
    let (member, server) = (ep6("fd00:192::11", 33_000), ep6("fd00:198::5", 8000));
    let syn = tcp_packet(member, server, TcpFlags::SYN, 1, 0, b"");
    let (v, out) = pass(&mut h, 0, Interface::Inside, syn);
    assert_eq!(v.interface(), Some(Interface::Outside));
    let public = Headers::<SocketAddrV6>::parse(&out).unwrap().src;
    assert_eq!(*public.ip(), "fd00:203::10".parse::<Ipv6Addr>().unwrap());
    let big = tcp_packet(public, server, TcpFlags::ACK, 2, 1, &[0; 1400]);
    let router: Ipv6Addr = "fd00:203::1".parse().unwrap();
    let error = icmpv6_error(router, *public.ip(), 2, 0, &big, 1232);
    let (v, out) = pass(&mut h, 5, Interface::Outside, error);
    assert_eq!(v.interface(), Some(Interface::Inside));
    let e = IcmpError::<SocketAddrV6>::parse(&out).expect("valid after translation");
    assert_eq!((e.quoted_src, e.quoted_dst), (member, server));
    let outer = smoltcp::wire::Ipv6Packet::new_checked(&out[..]).unwrap();
    assert_eq!((outer.src_addr(), outer.dst_addr()), (router, *member.ip()));
}
