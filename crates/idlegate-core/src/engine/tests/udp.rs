//! Engine tests of UDP flows and of which rule takes which protocol.

use super::*;

#[test]
fn a_udp_datagram_opens_a_flow_the_reply_finds_and_idleness_ends_silently() {
    let mut h = Harness::with(udp_config("reset"));
    let client = ep(CLIENT, 40_000);
    let mut query = udp_packet(client, ep(FRONTEND, 53), b"query");
    assert_eq!(
        h.engine
            .handle_packet(h.at(0), Interface::Outside, &mut query)
            .interface(),
        Some(Interface::Inside)
    );
    assert!(checksums_valid(&query));
    assert_eq!(
        Headers::<SocketAddrV4>::parse(&query).unwrap().dst,
        ep(VM1, 5353)
    );
    assert_eq!(
        h.engine.flows(h.at(0)).next().unwrap().state,
        FlowState::Unreplied
    );
    h.advance_to(1_000);
    let mut answer = udp_packet(ep(VM1, 5353), client, b"answer");
    assert_eq!(
        h.engine
            .handle_packet(h.at(1_000), Interface::Inside, &mut answer)
            .interface(),
        Some(Interface::Outside)
    );
    assert_eq!(
        Headers::<SocketAddrV4>::parse(&answer).unwrap().src,
        ep(FRONTEND, 53)
    );
    assert_eq!(
        h.engine.flows(h.at(1_000)).next().unwrap().state,
        FlowState::Replied
    );
    h.advance_to(1_000 + UDP_MS - 1);
    assert_eq!(h.engine.flow_count(), 1);
    h.advance_to(1_000 + UDP_MS);
    assert_eq!(h.engine.flow_count(), 0);
    // The rule says reset after 10 min, but a UDP flow lives the UDP timeout and ends silently.
    assert_eq!(h.expired(), vec![(1_000 + UDP_MS, Expiry::Silent)]);
    assert!(h.sent.is_empty());
    // A late answer is a new outbound datagram now: it leaves from a SNAT port, not from the
    // frontend port the client asked, so the client's socket never takes it.
    let mut late = udp_packet(ep(VM1, 5353), client, b"late");
    assert_eq!(
        h.engine
            .handle_packet(h.at(6_000), Interface::Inside, &mut late)
            .interface(),
        Some(Interface::Outside)
    );
    assert_ne!(
        Headers::<SocketAddrV4>::parse(&late).unwrap().src,
        ep(FRONTEND, 53)
    );
}

#[test]
fn a_members_udp_datagrams_leave_from_the_frontend_with_a_snat_port() {
    let mut h = Harness::with(udp_config("silent"));
    let mut out = udp_packet(ep(VM1, 33_000), ep(CLIENT, 123), b"ntp");
    assert_eq!(
        h.engine
            .handle_packet(h.at(0), Interface::Inside, &mut out)
            .interface(),
        Some(Interface::Outside)
    );
    let public = Headers::<SocketAddrV4>::parse(&out).unwrap().src;
    assert_eq!(*public.ip(), FRONTEND);
    let mut back = udp_packet(ep(CLIENT, 123), public, b"time");
    assert_eq!(
        h.engine
            .handle_packet(h.at(1), Interface::Outside, &mut back)
            .interface(),
        Some(Interface::Inside)
    );
    assert_eq!(
        Headers::<SocketAddrV4>::parse(&back).unwrap().dst,
        ep(VM1, 33_000)
    );
    assert!(checksums_valid(&back));
}

#[test]
fn a_rules_protocol_decides_which_packets_it_takes() {
    let mut h = Harness::with(udp_config("silent"));
    let mut client = Peer {
        addr: ep(CLIENT, 40_000),
        iface: Interface::Outside,
        snd_nxt: 1,
    };
    let (v, _) = h.send(&mut client, ep(FRONTEND, 54), TcpFlags::SYN, 0, b"");
    assert_eq!(
        v,
        Verdict::Drop(DropReason::NoRule),
        "the UDP rule takes no TCP"
    );
    let (v, _) = h.send(&mut client, ep(FRONTEND, 53), TcpFlags::SYN, 0, b"");
    assert_eq!(
        v.interface(),
        Some(Interface::Inside),
        "the \"all\" rule takes TCP too"
    );
}

#[test]
fn aws_nat_gateway_resets_only_the_inside_host() {
    // AWS NAT gateway: after the 350 s idle timeout the inside host's next packet gets a RST;
    // packets from the outside are dropped silently.
    let text = r#"profile = "aws-natgw"
time_scale = 70
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
"#;
    let mut h = Harness::with(Config::from_toml(text, "aws.toml").unwrap());
    let (mut vm, mut server, _, public) = h.connect_outbound(33_000);
    h.advance_to(5_000); // 350 s / 70
    assert_eq!(h.expired(), vec![(5_000, Expiry::ResetOnNext)]);
    h.send(
        &mut server,
        public,
        TcpFlags::ACK,
        vm.snd_nxt,
        b"from outside",
    );
    assert!(h.sent.is_empty(), "the outside sender is not told");
    h.send(
        &mut vm,
        ep(CLIENT, 8_000),
        TcpFlags::ACK,
        server.snd_nxt,
        b"from inside",
    );
    let (iface, rst) = h.sent.pop().expect("a RST to the inside host");
    assert_eq!(
        (iface, Headers::<SocketAddrV4>::parse(&rst).unwrap().dst),
        (Interface::Inside, vm.addr)
    );
}

#[test]
fn udp_without_a_rule_is_dropped_and_counted() {
    let mut h = Harness::new("silent");
    let mut p = udp_packet(ep(CLIENT, 53), FRONTEND_7000, b"q");
    assert_eq!(
        h.engine.handle_packet(h.at(0), Interface::Outside, &mut p),
        Verdict::Drop(DropReason::NoRule)
    );
}
