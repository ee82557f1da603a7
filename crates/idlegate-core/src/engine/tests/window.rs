//! Engine tests of TCP window tracking and flag validity ([`crate::state::flow::window`], issue 16 items 4
//! to 6): off-path segments must not end, move or refresh a flow, and flag combinations no
//! stack sends create nothing; a connection reopened on a tuple the gateway still holds, or
//! one whose SYN-ACK acknowledges only part of a SYN, is tracked. Virtual time, as in
//! `engine/tests/mod.rs`.

use super::*;
use super::{Harness, Peer, FRONTEND_7000, IDLE_MS, TRANSITORY_MS};
use crate::wire::packet::tests::tcp_packet;
use crate::wire::packet::TcpFlags;

/// A connection that exchanged a little data both ways; the last packet at `now`.
fn talking(h: &mut Harness) -> (Peer, Peer) {
    let (mut client, mut server) = h.connect_inbound(40_000);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"ping",
    );
    h.send(
        &mut server,
        client.addr,
        TcpFlags::ACK,
        client.snd_nxt,
        b"pong",
    );
    (client, server)
}

/// The state of the only flow.
fn state(h: &Harness) -> FlowState {
    let flows: Vec<FlowInfo> = h.engine.flows(h.at(h.now)).collect();
    assert_eq!(flows.len(), 1, "one flow");
    flows[0].state
}

/// The RST the engine sent out of `iface`: (sequence, acknowledgement).
fn reset_to(h: &Harness, iface: Interface) -> (u32, u32) {
    let (_, packet) = h
        .sent
        .iter()
        .find(|(i, _)| *i == iface)
        .expect("a RST that way");
    let seg = Headers::<SocketAddrV4>::parse(packet).unwrap().tcp.unwrap();
    assert!(seg.flags.rst());
    (seg.seq, seg.ack)
}

#[test]
fn a_blind_fin_with_any_numbers_neither_closes_nor_refreshes_an_established_flow() {
    // Issue 16 item 4: FIN+ACK, seq 0x12345, ack 0x54321, from the client's address. conntrack's
    // tcp_in_window finds it out of window (INVALID: no state change, no refresh); RFC 5961's
    // receiver would not take it either.
    let mut h = Harness::new("reset");
    let (client, server) = talking(&mut h);
    h.advance_to(500);
    let v = h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::FIN | TcpFlags::ACK,
        0x12345,
        0x54321,
        b"",
    );
    assert_eq!(v.interface(), Some(Interface::Inside), "passed on");
    assert_eq!(state(&h), FlowState::Established);
    assert_eq!(h.engine.counters().out_of_window, 1);
    // Not closing: the transitory timer does not cut it short.
    h.advance_to(500 + TRANSITORY_MS + 1);
    assert_eq!(h.engine.flow_count(), 1);
    // Not refreshed: it expires an idle timeout after the last real packet, and the rule's
    // `reset` reaches both ends at their exact sequence numbers.
    h.advance_to(IDLE_MS);
    assert_eq!(h.expired(), vec![(IDLE_MS, Expiry::Reset)]);
    assert_eq!(
        reset_to(&h, Interface::Inside),
        (client.snd_nxt, server.snd_nxt)
    );
}

#[test]
fn a_fin_in_the_window_still_closes_the_flow() {
    let mut h = Harness::new("reset");
    let (mut client, server) = talking(&mut h);
    let (v, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::FIN | TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    assert_eq!(v.interface(), Some(Interface::Inside));
    assert_eq!(state(&h), FlowState::FinWait);
    assert_eq!(h.engine.counters().out_of_window, 0);
}

#[test]
fn a_blind_data_segment_does_not_move_the_sequence_the_expiry_rst_carries() {
    // Issue 16 item 5: a forged segment 2^30 ahead of the client's SND.NXT. Tracked, it would
    // make the member's RST carry a sequence number its stack does not accept (RFC 5961 §3.2).
    let mut h = Harness::new("reset");
    let (client, server) = talking(&mut h);
    let forged = client.snd_nxt.wrapping_add(0x4000_0000);
    let v = h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::ACK,
        forged,
        server.snd_nxt,
        b"forged",
    );
    assert_eq!(v.interface(), Some(Interface::Inside));
    assert_eq!(h.engine.counters().out_of_window, 1);
    h.advance_to(IDLE_MS);
    assert_eq!(h.expired(), vec![(IDLE_MS, Expiry::Reset)]);
    assert_eq!(
        reset_to(&h, Interface::Inside),
        (client.snd_nxt, server.snd_nxt),
        "the member's RST at the client's real SND.NXT"
    );
    assert_eq!(
        reset_to(&h, Interface::Outside),
        (server.snd_nxt, client.snd_nxt)
    );
}

#[test]
fn after_a_blind_data_segment_the_clients_real_rst_still_ends_the_flow() {
    // RFC 5961 §3.2: the gateway takes a RST at exactly the receiver's RCV.NXT; a forged
    // segment must not move what it expects.
    let mut h = Harness::new("silent");
    let (client, server) = talking(&mut h);
    h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::ACK,
        client.snd_nxt.wrapping_add(0x7000_0000),
        server.snd_nxt,
        b"forged",
    );
    h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::RST,
        client.snd_nxt,
        0,
        b"",
    );
    assert_eq!(state(&h), FlowState::Closed);
}

#[test]
fn an_acknowledgement_of_data_never_sent_changes_nothing() {
    // conntrack tcp_in_window: the ACK may not run ahead of what the other side has sent.
    let mut h = Harness::new("reset");
    let (client, server) = talking(&mut h);
    h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::FIN | TcpFlags::ACK,
        client.snd_nxt,
        server.snd_nxt.wrapping_add(100_000),
        b"",
    );
    assert_eq!(state(&h), FlowState::Established);
    assert_eq!(h.engine.counters().out_of_window, 1);
}

#[test]
fn syn_fin_syn_rst_and_other_invalid_flags_create_nothing_and_are_counted() {
    // conntrack tcp_valid_flags: SYN+FIN, SYN+RST, a FIN without ACK and no flags at all are
    // INVALID; endpoints discard them.
    let mut h = Harness::new("silent");
    let client = SocketAddrV4::new(super::CLIENT, 40_000);
    let invalid = [
        TcpFlags::SYN | TcpFlags::FIN,
        TcpFlags::SYN | TcpFlags::RST,
        TcpFlags::SYN | TcpFlags::FIN | TcpFlags::ACK,
        TcpFlags::FIN,
        TcpFlags::default(),
    ];
    for flags in invalid {
        let mut p = tcp_packet(client, FRONTEND_7000, flags, 1_000, 0, b"");
        let v = h.engine.handle_packet(h.at(0), Interface::Outside, &mut p);
        assert_eq!(v, Verdict::Drop(DropReason::InvalidFlags), "{flags:?}");
    }
    assert_eq!(h.engine.flow_count(), 0);
    assert_eq!(
        h.engine.counters().dropped(DropReason::InvalidFlags),
        invalid.len() as u64
    );
    assert_eq!(h.engine.counters().flows_created, 0);
    // The valid SYN still opens the flow.
    let mut syn = tcp_packet(client, FRONTEND_7000, TcpFlags::SYN, 1_000, 0, b"");
    let v = h
        .engine
        .handle_packet(h.at(0), Interface::Outside, &mut syn);
    assert_eq!(v.interface(), Some(Interface::Inside));
}

#[test]
fn a_syn_fin_on_a_live_flow_is_dropped_and_changes_nothing() {
    let mut h = Harness::new("silent");
    let (client, server) = talking(&mut h);
    let v = h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::SYN | TcpFlags::FIN,
        client.snd_nxt,
        server.snd_nxt,
        b"",
    );
    assert_eq!(v, Verdict::Drop(DropReason::InvalidFlags));
    assert_eq!(state(&h), FlowState::Established);
}

/// Client and server exchange a byte each way every `IDLE_MS / 2`, up to `until`; every packet
/// must be forwarded.
fn keep_talking(h: &mut Harness, client: &mut Peer, server: &mut Peer, until: u64) {
    while h.now + IDLE_MS / 2 <= until {
        h.advance_to(h.now + IDLE_MS / 2);
        let (v, _) = h.send(client, FRONTEND_7000, TcpFlags::ACK, server.snd_nxt, b"q");
        assert_eq!(v.interface(), Some(Interface::Inside), "at {}", h.now);
        let (v, _) = h.send(server, client.addr, TcpFlags::ACK, client.snd_nxt, b"a");
        assert_eq!(v.interface(), Some(Interface::Outside), "at {}", h.now);
    }
}

#[test]
fn a_connection_reopened_on_a_tuple_still_held_open_is_tracked_and_outlives_the_idle_timeout() {
    // The gateway missed a close (or both hosts rebooted): it still holds the tuple as
    // ESTABLISHED, FIN_WAIT or CLOSE_WAIT when the client opens a new connection on it.
    // conntrack ignores the SYN (TCP_CONNTRACK_IGNORE) and, when the server's SYN-ACK
    // acknowledges it, tracks the flow over as new (nf_conntrack_proto_tcp.c).
    for closing in [
        vec![],
        vec![Interface::Outside],
        vec![Interface::Outside, Interface::Inside],
    ] {
        let mut h = Harness::new("reset");
        let (mut client, mut server) = talking(&mut h);
        for from in &closing {
            let (peer, dst, ack) = match from {
                Interface::Outside => (&mut client, FRONTEND_7000, server.snd_nxt),
                Interface::Inside => (&mut server, client.addr, client.snd_nxt),
            };
            let flags = if closing.len() > 1 && *from == Interface::Inside {
                TcpFlags::ACK
            } else {
                TcpFlags::FIN | TcpFlags::ACK
            };
            h.send(peer, dst, flags, ack, b"");
        }
        let held = state(&h);
        client.snd_nxt = 3_000_000;
        server.snd_nxt = 7_000_000;
        let (v, _) = h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"");
        assert_eq!(v.interface(), Some(Interface::Inside), "{held:?}");
        assert_eq!(state(&h), held, "the SYN alone changes nothing");
        let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
        let (v, _) = h.send(&mut server, client.addr, syn_ack, client.snd_nxt, b"");
        assert_eq!(v.interface(), Some(Interface::Outside), "{held:?}");
        assert_eq!(state(&h), FlowState::SynReceived, "{held:?}");
        h.send(
            &mut client,
            FRONTEND_7000,
            TcpFlags::ACK,
            server.snd_nxt,
            b"",
        );
        assert_eq!(state(&h), FlowState::Established, "{held:?}");
        keep_talking(&mut h, &mut client, &mut server, 3 * IDLE_MS);
        assert_eq!(state(&h), FlowState::Established, "{held:?}");
        assert!(h.expired().is_empty(), "{held:?}: {:?}", h.expired());
        assert_eq!(h.engine.counters().out_of_window, 1, "{held:?}: the SYN");
    }
}

#[test]
fn a_syn_with_data_answered_by_a_syn_ack_of_only_iss_plus_one_is_tracked() {
    // TCP Fast Open (RFC 7413 §4.2): a server that does not take the data of the SYN
    // acknowledges only ISS+1, which RFC 9293 §3.10.7.3 accepts (ISS < SEG.ACK <= SND.NXT);
    // the client sends the data again after the handshake.
    let mut h = Harness::new("reset");
    let mut client = Peer {
        addr: SocketAddrV4::new(super::CLIENT, 40_000),
        iface: Interface::Outside,
        snd_nxt: 1_000,
    };
    let (v, syn) = h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"early data");
    assert_eq!(v.interface(), Some(Interface::Inside));
    let member = Headers::<SocketAddrV4>::parse(&syn).unwrap().dst;
    let mut server = Peer {
        addr: member,
        iface: Interface::Inside,
        snd_nxt: 50_000,
    };
    let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
    let (v, _) = h.send(&mut server, client.addr, syn_ack, 1_001, b"");
    assert_eq!(v.interface(), Some(Interface::Outside));
    assert_eq!(state(&h), FlowState::SynReceived);
    client.snd_nxt = 1_001;
    let (v, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"early data",
    );
    assert_eq!(v.interface(), Some(Interface::Inside));
    assert_eq!(state(&h), FlowState::Established);
    keep_talking(&mut h, &mut client, &mut server, 2 * IDLE_MS);
    assert!(h.expired().is_empty(), "{:?}", h.expired());
    assert_eq!(h.engine.counters().out_of_window, 0);
}

#[test]
fn under_ack_and_discard_a_blind_segment_or_rst_changes_nothing() {
    // A discarding flow checks segments as a live one does: a blind data segment neither moves
    // the sequence its ACKs carry nor keeps it, and a blind RST does not end it.
    let mut h = Harness::new("ack-and-discard");
    let (mut client, server) = talking(&mut h);
    let last = h.now;
    h.advance_to(last + IDLE_MS);
    assert_eq!(h.expired(), vec![(last + IDLE_MS, Expiry::AckAndDiscard)]);
    h.advance_to(last + IDLE_MS + 100);
    let (v, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"c",
    );
    assert_eq!(v, Verdict::Drop(DropReason::Discarded));
    let kept_until = h.now + IDLE_MS;
    h.sent.clear();
    h.advance_to(kept_until - 100);
    let forged = client.snd_nxt.wrapping_add(0x4000_0000);
    let v = h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::ACK,
        forged,
        server.snd_nxt,
        b"x",
    );
    assert_eq!(v, Verdict::Drop(DropReason::Discarded));
    let blind_rst = client.snd_nxt.wrapping_add(1_000);
    let v = h.send_seq(&client, FRONTEND_7000, TcpFlags::RST, blind_rst, 0, b"");
    assert_eq!(v, Verdict::Drop(DropReason::Discarded));
    assert_eq!(h.engine.counters().out_of_window, 2);
    assert_eq!(h.engine.flow_count(), 1, "the blind RST did not end it");
    // The blind segment is answered with the numbers as they were.
    let (_, ack) = h.sent.pop().expect("an ACK of the blind segment");
    let seg = Headers::<SocketAddrV4>::parse(&ack).unwrap().tcp.unwrap();
    assert_eq!((seg.seq, seg.ack), (server.snd_nxt, client.snd_nxt));
    // Not kept either: forgotten an idle timeout after the last real segment.
    h.advance_to(kept_until);
    assert_eq!(h.engine.flow_count(), 0);
}
