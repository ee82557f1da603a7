//! Engine tests of a flow's life in virtual time: idle timers to the millisecond, what refreshes a flow, each expiry action, TCP states and their timers, forced expiry.

use super::*;

#[test]
fn idle_flow_expires_exactly_at_deadline() {
    let mut h = Harness::new("silent");
    h.advance_to(1_000);
    let (mut client, server) = h.connect_inbound(40_000);
    h.advance_to(1_000 + IDLE_MS - 1);
    assert_eq!(h.engine.flow_count(), 1, "not a millisecond early");
    h.advance_to(1_000 + IDLE_MS);
    assert_eq!(h.engine.flow_count(), 0);
    assert_eq!(h.expired(), vec![(1_000 + IDLE_MS, Expiry::Silent)]);
    let (v, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"c",
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    assert_eq!(h.engine.counters().dropped(DropReason::NoFlow), 1);
    assert!(h.sent.is_empty(), "silent: nothing is sent");
}

// virtio-net VIRTIO_NET_HDR_F_NEEDS_CSUM: a TCP super-segment read from a TUN device with
// offloads carries only the pseudo-header's sum, which the other device completes.
#[test]
fn a_super_segment_with_a_partial_checksum_is_translated_once_both_ways() {
    let mut h = Harness::new("silent");
    let (client, server) = h.connect_inbound(40_000);
    let forwarded = h.engine.counters().forwarded;
    let payload = vec![0x5a; 60_000];
    for (from, to) in [(client, FRONTEND_7000), (server, client.addr)] {
        let mut p = tcp_packet(from.addr, to, TcpFlags::ACK, from.snd_nxt, 1, &payload);
        to_partial(&mut p);
        let verdict = h.engine.handle_packet_with(
            h.at(h.now),
            from.iface,
            &mut p,
            TransportChecksum::Partial,
        );
        assert_eq!(verdict.interface(), Some(from.iface.opposite()));
        complete(&mut p);
        assert!(checksums_valid(&p), "completes to a valid checksum");
        let out = Headers::<SocketAddrV4>::parse(&p).unwrap();
        let expected = match from.iface {
            Interface::Outside => (client.addr, server.addr),
            Interface::Inside => (FRONTEND_7000, client.addr),
        };
        assert_eq!((out.src, out.dst), expected);
    }
    assert_eq!(
        h.engine.counters().forwarded,
        forwarded + 2,
        "one packet each"
    );
}

#[test]
fn a_flow_past_its_deadline_is_dead_even_before_the_timer_runs() {
    let mut h = Harness::new("silent");
    let (mut client, server) = h.connect_inbound(40_000);
    h.now = IDLE_MS; // no handle_timeout call in between
    let (v, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"c",
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn a_flow_refreshed_between_two_milliseconds_never_expires_early() {
    let mut h = Harness::new("silent");
    let (mut client, server) = h.connect_inbound(40_000);
    let (_, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    // A packet 0.3 ms into millisecond 1000: the flow may not die before 1000.3 ms + 4 s.
    let mut p = tcp_packet(
        client.addr,
        FRONTEND_7000,
        TcpFlags::ACK,
        client.snd_nxt,
        server.snd_nxt,
        b"",
    );
    let at = h.at(1_000) + Duration::from_micros(300);
    assert_eq!(
        h.engine
            .handle_packet(at, Interface::Outside, &mut p)
            .interface(),
        Some(Interface::Inside)
    );
    h.engine.handle_timeout(at + Duration::from_millis(IDLE_MS));
    assert_eq!(h.engine.flow_count(), 1, "not before 4 s have passed");
    h.engine.handle_timeout(h.at(1_001 + IDLE_MS));
    assert_eq!(h.engine.flow_count(), 0, "and at most one tick late");
}

#[test]
fn pure_ack_refreshes_the_flow() {
    let mut h = Harness::new("silent");
    let (mut client, server) = h.connect_inbound(40_000);
    h.advance_to(IDLE_MS - 1);
    let (v, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    assert_eq!(v.interface(), Some(Interface::Inside));
    h.advance_to(2 * IDLE_MS - 2);
    assert_eq!(h.engine.flow_count(), 1);
    h.advance_to(2 * IDLE_MS - 1);
    assert_eq!(h.expired(), vec![(2 * IDLE_MS - 1, Expiry::Silent)]);
}

#[test]
fn keepalive_probes_refresh_the_flow() {
    // RFC 9293 §3.8.4 / RFC 1122 §4.2.3.6: a probe is SEG.SEQ = SND.NXT − 1 with 0 or 1 byte.
    let mut h = Harness::new("silent");
    let (client, server) = h.connect_inbound(40_000);
    for round in 1..=5u64 {
        h.advance_to(round * (IDLE_MS / 2));
        let payload: &[u8] = if round % 2 == 0 { b"" } else { b"\0" };
        let v = h.send_seq(
            &client,
            FRONTEND_7000,
            TcpFlags::ACK,
            client.snd_nxt.wrapping_sub(1),
            server.snd_nxt,
            payload,
        );
        assert_eq!(v.interface(), Some(Interface::Inside), "probe {round}");
    }
    assert_eq!(h.engine.flow_count(), 1);
    assert!(h.expired().is_empty());
    // The probes did not move the tracked sequence back: a reset would still be accepted.
    assert_eq!(
        h.engine.v4.flows.iter().next().unwrap().1.remote_next_seq,
        client.snd_nxt
    );
}

#[test]
fn packets_from_the_member_refresh_the_flow_too() {
    let mut h = Harness::new("silent");
    let (client, mut server) = h.connect_inbound(40_000);
    h.advance_to(IDLE_MS - 1);
    let (v, out) = h.send(
        &mut server,
        client.addr,
        TcpFlags::ACK,
        client.snd_nxt,
        b"pong",
    );
    assert_eq!(v.interface(), Some(Interface::Outside));
    assert_eq!(
        Headers::<SocketAddrV4>::parse(&out).unwrap().src,
        FRONTEND_7000,
        "leaves from the frontend"
    );
    h.advance_to(2 * IDLE_MS - 2);
    assert_eq!(h.engine.flow_count(), 1);
}

#[test]
fn expiry_reset_sends_exactly_one_rst_to_each_endpoint_with_the_expected_sequence() {
    let mut h = Harness::new("reset");
    let (mut client, mut server) = h.connect_inbound(40_000);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"a",
    );
    h.send(
        &mut server,
        client.addr,
        TcpFlags::ACK,
        client.snd_nxt,
        b"ok",
    );
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    h.advance_to(IDLE_MS);
    assert_eq!(h.expired(), vec![(IDLE_MS, Expiry::Reset)]);
    assert_eq!(h.sent.len(), 2);
    for (iface, packet) in &h.sent {
        assert!(checksums_valid(packet));
        let hd = Headers::<SocketAddrV4>::parse(packet).unwrap();
        let seg = hd.tcp.unwrap();
        assert!(seg.flags.rst() && seg.flags.ack() && !seg.flags.syn() && !seg.flags.fin());
        assert_eq!(seg.len, 0);
        match iface {
            // Azure TCP reset ("Load Balancer TCP Reset and Idle Timeout"): to the client, from the frontend, at the client's RCV.NXT.
            Interface::Outside => {
                assert_eq!((hd.src, hd.dst), (FRONTEND_7000, client.addr));
                assert_eq!((seg.seq, seg.ack), (server.snd_nxt, client.snd_nxt));
            }
            // ... and to the member, from the client's address, at the member's RCV.NXT.
            Interface::Inside => {
                assert_eq!((hd.src, hd.dst), (client.addr, server.addr));
                assert_eq!((seg.seq, seg.ack), (client.snd_nxt, server.snd_nxt));
            }
        }
    }
    assert_eq!(h.engine.counters().resets_sent, 2);
}

#[test]
fn expiry_silent_sends_nothing_and_later_packets_vanish_both_ways() {
    let mut h = Harness::new("silent");
    let (mut client, mut server) = h.connect_inbound(40_000);
    h.advance_to(IDLE_MS);
    let (v1, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"c",
    );
    let (v2, _) = h.send(
        &mut server,
        client.addr,
        TcpFlags::ACK,
        client.snd_nxt,
        b"d",
    );
    assert_eq!(
        (v1, v2),
        (
            Verdict::Drop(DropReason::NoFlow),
            Verdict::Drop(DropReason::NoFlow)
        )
    );
    assert!(h.sent.is_empty());
}

#[test]
fn expiry_reset_on_next_is_silent_then_resets_whoever_sends_next() {
    let mut h = Harness::new("reset-on-next");
    let (mut client, mut server) = h.connect_inbound(40_000);
    h.advance_to(IDLE_MS);
    assert_eq!(h.expired(), vec![(IDLE_MS, Expiry::ResetOnNext)]);
    assert!(h.sent.is_empty(), "nothing at the moment of expiry");

    let (v, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK | TcpFlags::FIN,
        server.snd_nxt,
        b"c",
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    let (iface, rst) = h.sent.pop().unwrap();
    let hd = Headers::<SocketAddrV4>::parse(&rst).unwrap();
    let seg = hd.tcp.unwrap();
    // RFC 9293 §3.10.7.1: <SEQ=SEG.ACK><CTL=RST>, which is exactly the sender's RCV.NXT.
    assert_eq!(
        (iface, hd.src, hd.dst),
        (Interface::Outside, FRONTEND_7000, client.addr)
    );
    assert_eq!(
        (seg.seq, seg.flags.rst(), seg.flags.ack()),
        (server.snd_nxt, true, false)
    );

    let (v, _) = h.send(
        &mut server,
        client.addr,
        TcpFlags::ACK,
        client.snd_nxt,
        b"d",
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    let (iface, rst) = h.sent.pop().unwrap();
    let hd = Headers::<SocketAddrV4>::parse(&rst).unwrap();
    assert_eq!(
        (iface, hd.src, hd.dst),
        (Interface::Inside, client.addr, server.addr)
    );

    // A RST is never answered with a RST.
    h.send(&mut client, FRONTEND_7000, TcpFlags::RST, 0, b"");
    assert!(h.sent.is_empty());
}

#[test]
fn ack_and_discard_acknowledges_what_the_sender_sends_and_delivers_nothing() {
    // After the timeout the data is ACKed, and never reaches the server: what a router or ISP
    // box that keeps answering for a forgotten flow shows.
    let mut h = Harness::new("ack-and-discard");
    let (mut client, mut server) = h.connect_inbound(40_000);
    h.advance_to(IDLE_MS);
    assert_eq!(h.expired(), vec![(IDLE_MS, Expiry::AckAndDiscard)]);
    assert!(h.sent.is_empty(), "nothing is sent at the moment of expiry");
    assert_eq!(h.engine.flow_count(), 1, "the flow is kept, discarding");

    let (v, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"c",
    );
    assert_eq!(v, Verdict::Drop(DropReason::Discarded), "never delivered");
    let (iface, ack) = h.sent.pop().expect("an ACK");
    assert!(checksums_valid(&ack));
    let hd = Headers::<SocketAddrV4>::parse(&ack).unwrap();
    let seg = hd.tcp.unwrap();
    assert_eq!(
        (iface, hd.src, hd.dst),
        (Interface::Outside, FRONTEND_7000, client.addr)
    );
    assert!(seg.flags.ack() && !seg.flags.rst() && !seg.flags.syn() && !seg.flags.fin());
    // Exactly what the server would have acknowledged: everything, "c" included.
    assert_eq!((seg.seq, seg.ack), (server.snd_nxt, client.snd_nxt));

    // A keepalive probe is answered like a live peer would, so keepalive is fooled too.
    let v = h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::ACK,
        client.snd_nxt.wrapping_sub(1),
        server.snd_nxt,
        b"",
    );
    assert_eq!(v, Verdict::Drop(DropReason::Discarded));
    let (_, ack) = h.sent.pop().expect("an ACK of the probe");
    assert_eq!(
        Headers::<SocketAddrV4>::parse(&ack)
            .unwrap()
            .tcp
            .unwrap()
            .ack,
        client.snd_nxt
    );
    // A pure ACK gets no answer (no ACK ping-pong); the server's side is discarded likewise.
    h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::ACK,
        client.snd_nxt,
        server.snd_nxt,
        b"",
    );
    assert!(h.sent.is_empty());
    let (v, _) = h.send(
        &mut server,
        client.addr,
        TcpFlags::ACK,
        client.snd_nxt,
        b"d",
    );
    assert_eq!(v, Verdict::Drop(DropReason::Discarded));
    assert_eq!(
        h.sent.pop().map(|(iface, _)| iface),
        Some(Interface::Inside)
    );

    // Quiet for another idle timeout, it is forgotten for good.
    let last = h.now;
    h.advance_to(last + IDLE_MS);
    assert_eq!(h.engine.flow_count(), 0);
    assert_eq!(h.expired().len(), 1, "one expiry, not two");
}

#[test]
fn flows_shows_each_flow_with_its_state_idle_time_and_time_left() {
    let mut h = Harness::new("silent");
    h.connect_inbound(40_000);
    h.advance_to(1_500);
    let flows: Vec<FlowInfo> = h.engine.flows(h.at(1_500)).collect();
    assert_eq!(flows.len(), 1);
    let f = flows[0];
    assert_eq!(
        (f.flow.remote, f.flow.public, f.flow.private),
        (
            ep(CLIENT, 40_000).into(),
            FRONTEND_7000.into(),
            ep(VM1, 7000).into()
        )
    );
    assert_eq!(h.engine.rule_name(f.flow.rule), "app");
    assert_eq!(f.state, FlowState::Established);
    assert_eq!(
        (f.idle_for, f.expires_in),
        (
            Duration::from_millis(1_500),
            Duration::from_millis(IDLE_MS - 1_500)
        )
    );
}

#[test]
fn expire_now_applies_each_matching_rules_expiry_action_at_once() {
    // As a platform event would: the flows of rule "app" go now, with its action (reset).
    let mut h = Harness::new("reset");
    let (client, _) = h.connect_inbound(40_000);
    let mut vm = Peer {
        addr: ep(VM1, 33_000),
        iface: Interface::Inside,
        snd_nxt: 5,
    };
    h.send(&mut vm, ep(CLIENT, 8_000), TcpFlags::SYN, 0, b"");
    assert_eq!(h.engine.flow_count(), 2);
    assert_eq!(h.engine.expire_now(h.at(10), |rule| rule == "app"), 1);
    h.drain();
    assert_eq!(
        h.engine.flow_count(),
        1,
        "the outbound flow is another rule's"
    );
    assert_eq!(h.sent.len(), 2, "RST to both ends");
    assert!(h
        .sent
        .iter()
        .any(|(_, p)| Headers::<SocketAddrV4>::parse(p).unwrap().dst == client.addr));
    assert_eq!(h.engine.expire_now(h.at(10), |_| true), 1);
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn a_discarding_flow_ends_at_a_rst_and_gives_way_to_a_new_connection() {
    let mut h = Harness::new("ack-and-discard");
    let (mut client, server) = h.connect_inbound(40_000);
    h.advance_to(IDLE_MS);
    assert_eq!(
        h.engine.flows(h.at(IDLE_MS)).next().unwrap().state,
        FlowState::Discarding
    );
    // A new connection on the same tuple replaces the discarding flow.
    client.snd_nxt = 555;
    let (v, _) = h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"");
    assert_eq!(v.interface(), Some(Interface::Inside));
    assert_eq!(
        h.engine.flows(h.at(IDLE_MS)).next().unwrap().state,
        FlowState::SynSent
    );
    // And a RST ends a discarding flow at once.
    let (mut other, other_server) = h.connect_inbound(40_001);
    h.advance_to(2 * IDLE_MS + 1);
    let discarding = |h: &Harness| {
        h.engine
            .flows(h.at(h.now))
            .filter(|f| f.state == FlowState::Discarding)
            .count()
    };
    assert_eq!(discarding(&h), 1);
    h.send(
        &mut other,
        FRONTEND_7000,
        TcpFlags::RST,
        other_server.snd_nxt,
        b"",
    );
    assert_eq!(discarding(&h), 0);
    let _ = server;
}

#[test]
fn reset_is_sent_only_for_established_flows() {
    // Azure: "TCP reset only sent during TCP connection in ESTABLISHED state" ("Load Balancer
    // TCP Reset and Idle Timeout", "Limitations").
    let mut h = Harness::new("reset");
    let mut client = Peer {
        addr: ep(CLIENT, 40_000),
        iface: Interface::Outside,
        snd_nxt: 7,
    };
    h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"");
    h.advance_to(TRANSITORY_MS);
    assert_eq!(h.expired(), vec![(TRANSITORY_MS, Expiry::Silent)]);
    assert!(h.sent.is_empty());
}

#[test]
fn half_open_flow_expires_at_the_transitory_timeout() {
    let mut h = Harness::new("silent");
    let mut client = Peer {
        addr: ep(CLIENT, 40_000),
        iface: Interface::Outside,
        snd_nxt: 7,
    };
    h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"");
    h.advance_to(TRANSITORY_MS - 1);
    assert_eq!(h.engine.flow_count(), 1);
    h.advance_to(TRANSITORY_MS);
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn closing_and_closed_flows_use_the_transitory_timeout() {
    for last in [TcpFlags::FIN | TcpFlags::ACK, TcpFlags::RST] {
        let mut h = Harness::new("silent");
        let (mut client, server) = h.connect_inbound(40_000);
        h.advance_to(1_000);
        h.send(&mut client, FRONTEND_7000, last, server.snd_nxt, b"");
        let state = h.engine.v4.flows.iter().next().unwrap().1.state;
        assert!(
            matches!(state, FlowState::FinWait | FlowState::Closed),
            "{state:?}"
        );
        h.advance_to(1_000 + TRANSITORY_MS - 1);
        assert_eq!(h.engine.flow_count(), 1);
        h.advance_to(1_000 + TRANSITORY_MS);
        assert_eq!(h.engine.flow_count(), 0, "after {last:?}");
    }
}

#[test]
fn a_rst_outside_the_receivers_window_is_passed_on_but_does_not_end_the_flow() {
    // RFC 5961 §3.2: a RST whose SEG.SEQ is not exactly RCV.NXT is not accepted by the receiver.
    let mut h = Harness::new("silent");
    let (client, server) = h.connect_inbound(40_000);
    let v = h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::RST,
        client.snd_nxt.wrapping_add(5_000),
        server.snd_nxt,
        b"",
    );
    assert_eq!(v.interface(), Some(Interface::Inside));
    h.advance_to(TRANSITORY_MS + 1);
    assert_eq!(
        h.engine.flow_count(),
        1,
        "still established: the idle timeout applies"
    );
    let v = h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::RST,
        client.snd_nxt,
        0,
        b"",
    );
    assert_eq!(v.interface(), Some(Interface::Inside));
    h.advance_to(2 * TRANSITORY_MS + 2);
    assert_eq!(h.engine.flow_count(), 0, "an acceptable RST closes it");
}

#[test]
fn a_rst_refusing_the_syn_closes_the_flow() {
    // RFC 9293 §3.10.7.3: in SYN-SENT a RST is acceptable if it acknowledges the SYN.
    let mut h = Harness::new("silent");
    let mut client = Peer {
        addr: ep(CLIENT, 40_000),
        iface: Interface::Outside,
        snd_nxt: 7,
    };
    let (_, syn) = h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"");
    let server = Peer {
        addr: Headers::<SocketAddrV4>::parse(&syn).unwrap().dst,
        iface: Interface::Inside,
        snd_nxt: 0,
    };
    let v = h.send_seq(
        &server,
        client.addr,
        TcpFlags::RST | TcpFlags::ACK,
        0,
        client.snd_nxt,
        b"",
    );
    assert_eq!(v.interface(), Some(Interface::Outside));
    assert_eq!(
        h.engine.v4.flows.iter().next().unwrap().1.state,
        FlowState::Closed
    );
}

#[test]
fn reset_on_next_of_one_rule_does_not_reset_another_rules_packets() {
    // The outbound rule resets on next; the LB rule on the same frontend and members is silent.
    let text = r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[lb_rule]]
name = "app"
frontend = "public"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
expiry = "silent"
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
expiry = "reset-on-next"
"#;
    let mut h = Harness::with(Config::from_toml(text, "test.toml").unwrap());
    let (mut client, mut server) = h.connect_inbound(40_000);
    h.advance_to(IDLE_MS);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"c",
    );
    h.send(
        &mut server,
        client.addr,
        TcpFlags::ACK,
        client.snd_nxt,
        b"d",
    );
    assert!(
        h.sent.is_empty(),
        "the LB rule's dead flow stays silent on both sides"
    );
    // A stray segment of the outbound rule (to a SNAT port, or from vm1's ephemeral port) is reset.
    let mut stray = Peer {
        addr: ep(CLIENT, 8_000),
        iface: Interface::Outside,
        snd_nxt: 1,
    };
    h.send(&mut stray, ep(FRONTEND, 40_123), TcpFlags::ACK, 1, b"x");
    let mut vm = Peer {
        addr: ep(VM1, 40_321),
        iface: Interface::Inside,
        snd_nxt: 1,
    };
    h.send(&mut vm, ep(CLIENT, 8_000), TcpFlags::ACK, 1, b"y");
    assert_eq!(h.sent.len(), 2);
}

#[test]
fn poll_timeout_is_none_when_no_flow_exists() {
    let mut h = Harness::new("silent");
    assert_eq!(h.engine.poll_timeout(), None);
    h.connect_inbound(40_000);
    assert!(h.engine.poll_timeout().is_some());
    h.advance_to(10 * IDLE_MS);
    assert_eq!(h.engine.poll_timeout(), None);
}

#[test]
fn a_handshake_whose_last_ack_is_lost_recovers_at_the_syn_acks_retransmission_under_time_scale_60()
{
    // Azure's 30 s SYN_RECV timer scaled by 60 would run 500 ms; the server resends its SYN-ACK
    // after TCP's initial retransmission timeout, 1 s (RFC 6298 §2.1), which no scale changes.
    let mut h = Harness::new("silent");
    let mut client = Peer {
        addr: ep(CLIENT, 40_000),
        iface: Interface::Outside,
        snd_nxt: 1_000,
    };
    let (v, syn) = h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"");
    assert_eq!(v.interface(), Some(Interface::Inside));
    let member = Headers::<SocketAddrV4>::parse(&syn).unwrap().dst;
    let mut server = Peer {
        addr: member,
        iface: Interface::Inside,
        snd_nxt: 50_000,
    };
    let synack = TcpFlags::SYN | TcpFlags::ACK;
    let (v, _) = h.send(&mut server, client.addr, synack, client.snd_nxt, b"");
    assert_eq!(v.interface(), Some(Interface::Outside));
    // The client's ACK is lost: nothing reaches the engine for 1 s.
    h.advance_to(1_000);
    assert!(
        h.expired().is_empty(),
        "the flow expired before the SYN-ACK's retransmission"
    );
    server.snd_nxt -= 1;
    let (v, _) = h.send(&mut server, client.addr, synack, client.snd_nxt, b"");
    assert_eq!(
        v.interface(),
        Some(Interface::Outside),
        "the retransmitted SYN-ACK"
    );
    let (v, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    assert_eq!(v.interface(), Some(Interface::Inside), "the client's ACK");
    let (v, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"hi",
    );
    assert_eq!(
        v.interface(),
        Some(Interface::Inside),
        "data after the handshake"
    );
}
