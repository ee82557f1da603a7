//! Engine tests in virtual time: no sleeping, every `Instant` is made up.

use super::*;
use crate::wire::packet::tests::{checksums_valid, complete, tcp_packet, to_partial, udp_packet};
use crate::wire::packet::TcpFlags;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

pub(super) const FRONTEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub(super) const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
pub(super) const VM1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const VM2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

/// Azure LB, 4 min idle scaled by 60 to 4 s; transitory 30 s scaled to 500 ms.
pub(super) const IDLE_MS: u64 = 4_000;
pub(super) const TRANSITORY_MS: u64 = 500;

pub(super) fn config(expiry: &str, members: &str) -> Config {
    let text = format!(
        r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{members}]
[[lb_rule]]
name = "app"
frontend = "public"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
idle_timeout = "4m"
expiry = "{expiry}"
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
expiry = "{expiry}"
"#
    );
    Config::from_toml(&text, "test.toml").unwrap()
}

pub(super) const ONE_VM: &str = r#"{ name = "vm1", address = "192.0.2.11" }"#;
const TWO_VMS: &str =
    r#"{ name = "vm1", address = "192.0.2.11" }, { name = "vm2", address = "192.0.2.12" }"#;

pub(super) fn ep(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// An engine, a virtual clock, and what came out of it.
pub(super) struct Harness {
    pub(super) engine: Engine,
    t0: Instant,
    pub(super) now: u64,
    pub(super) sent: Vec<(Interface, Vec<u8>)>,
    pub(super) events: Vec<(u64, Event)>,
}

/// One side of a TCP connection, tracking its own SND.NXT like a real stack.
#[derive(Clone, Copy)]
pub(super) struct Peer {
    pub(super) addr: SocketAddrV4,
    pub(super) iface: Interface,
    pub(super) snd_nxt: u32,
}

impl Harness {
    pub(super) fn new(expiry: &str) -> Harness {
        Harness::with(config(expiry, ONE_VM))
    }

    pub(super) fn with(config: Config) -> Harness {
        let t0 = Instant::now();
        Harness {
            engine: Engine::new(&config, t0, 1),
            t0,
            now: 0,
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    pub(super) fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Advances the clock to `ms`, waking the engine at every deadline it asks for on the way.
    pub(super) fn advance_to(&mut self, ms: u64) {
        while let Some(t) = self.engine.poll_timeout().filter(|&t| t <= self.at(ms)) {
            self.engine.handle_timeout(t);
            self.now = (t - self.t0).as_millis() as u64;
            self.drain();
        }
        self.now = ms;
        self.engine.handle_timeout(self.at(ms));
        self.drain();
    }

    pub(super) fn drain(&mut self) {
        let mut buf = [0u8; 64];
        while let Some(tx) = self.engine.poll_transmit(&mut buf) {
            self.sent.push((tx.interface, buf[..tx.len].to_vec()));
        }
        while let Some(e) = self.engine.poll_event() {
            self.events.push((self.now, e));
        }
    }

    /// Sends a segment from `peer` to `dst` now; returns the verdict and the packet as it left.
    pub(super) fn send(
        &mut self,
        peer: &mut Peer,
        dst: SocketAddrV4,
        flags: TcpFlags,
        ack: u32,
        payload: &[u8],
    ) -> (Verdict, Vec<u8>) {
        let mut p = tcp_packet(peer.addr, dst, flags, peer.snd_nxt, ack, payload);
        let seg_len = payload.len() as u32 + u32::from(flags.syn()) + u32::from(flags.fin());
        peer.snd_nxt = peer.snd_nxt.wrapping_add(seg_len);
        let verdict = self
            .engine
            .handle_packet(self.at(self.now), peer.iface, &mut p);
        self.drain();
        (verdict, p)
    }

    /// Sends a raw segment with an explicit sequence number (a keepalive probe, say).
    pub(super) fn send_seq(
        &mut self,
        peer: &Peer,
        dst: SocketAddrV4,
        flags: TcpFlags,
        seq: u32,
        ack: u32,
        payload: &[u8],
    ) -> Verdict {
        let mut p = tcp_packet(peer.addr, dst, flags, seq, ack, payload);
        let verdict = self
            .engine
            .handle_packet(self.at(self.now), peer.iface, &mut p);
        self.drain();
        verdict
    }

    /// A member opens a connection from `vm_port` to the server at 203.0.113.100:8000; returns
    /// (member, server, the SYN's verdict, the SNAT endpoint it left from) after the three-way
    /// handshake. The SNAT endpoint is the member's own address if the SYN was dropped.
    pub(super) fn connect_outbound(&mut self, vm_port: u16) -> (Peer, Peer, Verdict, SocketAddrV4) {
        let server_addr = ep(CLIENT, 8_000);
        let mut vm = Peer {
            addr: ep(VM1, vm_port),
            iface: Interface::Inside,
            snd_nxt: 5,
        };
        let (v, syn) = self.send(&mut vm, server_addr, TcpFlags::SYN, 0, b"");
        let public = Headers::<SocketAddrV4>::parse(&syn).unwrap().src;
        let mut server = Peer {
            addr: server_addr,
            iface: Interface::Outside,
            snd_nxt: 900,
        };
        self.send(
            &mut server,
            public,
            TcpFlags::SYN | TcpFlags::ACK,
            vm.snd_nxt,
            b"",
        );
        self.send(&mut vm, server_addr, TcpFlags::ACK, server.snd_nxt, b"");
        (vm, server, v, public)
    }

    /// A client on the internet connects to the frontend; returns (client, server) peers after
    /// the three-way handshake, both in ESTABLISHED.
    pub(super) fn connect_inbound(&mut self, client_port: u16) -> (Peer, Peer) {
        let mut client = Peer {
            addr: ep(CLIENT, client_port),
            iface: Interface::Outside,
            snd_nxt: 1_000,
        };
        let frontend = ep(FRONTEND, 7000);
        let (v, syn) = self.send(&mut client, frontend, TcpFlags::SYN, 0, b"");
        assert_eq!(v.interface(), Some(Interface::Inside));
        let member = Headers::<SocketAddrV4>::parse(&syn).unwrap().dst;
        let mut server = Peer {
            addr: member,
            iface: Interface::Inside,
            snd_nxt: 50_000,
        };
        let (v, _) = self.send(
            &mut server,
            client.addr,
            TcpFlags::SYN | TcpFlags::ACK,
            client.snd_nxt,
            b"",
        );
        assert_eq!(v.interface(), Some(Interface::Outside));
        let (v, _) = self.send(&mut client, frontend, TcpFlags::ACK, server.snd_nxt, b"");
        assert_eq!(v.interface(), Some(Interface::Inside));
        (client, server)
    }

    pub(super) fn expired(&self) -> Vec<(u64, Expiry)> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Expired { action, .. } => Some((*t, *action)),
                _ => None,
            })
            .collect()
    }
}

pub(super) const FRONTEND_7000: SocketAddrV4 = SocketAddrV4::new(FRONTEND, 7000);

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
            // Azure TCP reset (seed 002): to the client, from the frontend, at the client's RCV.NXT.
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
    // Seed 004: after the timeout the data was ACKed, and never reached the server.
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
    // Azure: "TCP reset only sent during TCP connection in ESTABLISHED state" (seed 002).
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
    // after a RST (15 s scaled to 250 ms) before they can be lent again.
    h.advance_to(TRANSITORY_MS);
    assert_eq!(h.engine.flow_count(), 0);
    assert!(lend_all(&mut h, 2_000).is_empty(), "still held");
    h.advance_to(TRANSITORY_MS + 250);
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

pub(super) fn udp_config(expiry: &str) -> Config {
    let text = format!(
        r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{{ name = "vm1", address = "192.0.2.11" }}]
[[lb_rule]]
name = "dns"
frontend = "public"
protocol = "all"
frontend_port = 53
backend_pool = "vms"
backend_port = 5353
idle_timeout = "10m"
expiry = "{expiry}"
[[lb_rule]]
name = "udp-only"
frontend = "public"
protocol = "udp"
frontend_port = 54
backend_pool = "vms"
backend_port = 5454
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
expiry = "{expiry}"
"#
    );
    Config::from_toml(&text, "udp.toml").unwrap()
}

/// The UDP timeout of azure-lb (4 min) scaled by 60.
const UDP_MS: u64 = 4_000;

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

#[test]
fn poll_timeout_is_none_when_no_flow_exists() {
    let mut h = Harness::new("silent");
    assert_eq!(h.engine.poll_timeout(), None);
    h.connect_inbound(40_000);
    assert!(h.engine.poll_timeout().is_some());
    h.advance_to(10 * IDLE_MS);
    assert_eq!(h.engine.poll_timeout(), None);
}

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

/// A config of `profile` with one member, an LB rule (port 7000) and an outbound rule, both
/// with `idle`, and `extra` top-level settings.
pub(super) fn profile_config(profile: &str, idle: &str, extra: &str) -> Config {
    let text = format!(
        r#"profile = "{profile}"
{extra}
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{TWO_VMS}]
[[lb_rule]]
name = "app"
frontend = "public"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
idle_timeout = "{idle}"
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
idle_timeout = "{idle}"
"#
    );
    Config::from_toml(&text, "profile.toml").unwrap()
}

/// The state of the only flow.
pub(super) fn only_state(h: &Harness) -> FlowState {
    let mut flows = h.engine.v4.flows.iter();
    let state = flows.next().expect("a flow").1.state;
    assert!(flows.next().is_none(), "one flow only");
    state
}

#[test]
fn conntrack_closing_states_each_run_their_own_timer() {
    // Linux nf_conntrack_tcp_timeout_*: FIN_WAIT 120 s, CLOSE_WAIT 60 s, LAST_ACK 30 s,
    // TIME_WAIT 120 s (nf_conntrack-sysctl.rst); the transitions are conntrack's table.
    let mut h = Harness::with(profile_config("linux-conntrack", "1h", ""));
    let (mut client, mut server) = h.connect_inbound(40_000);
    let frontend = FRONTEND_7000;
    h.send(
        &mut client,
        frontend,
        TcpFlags::FIN | TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    assert_eq!(only_state(&h), FlowState::FinWait);
    h.send(&mut server, client.addr, TcpFlags::ACK, client.snd_nxt, b"");
    assert_eq!(only_state(&h), FlowState::CloseWait);
    // Half-closed: the server may still send, and each segment gives another 60 s.
    h.advance_to(59_999);
    h.send(
        &mut server,
        client.addr,
        TcpFlags::ACK,
        client.snd_nxt,
        b"more",
    );
    h.advance_to(59_999 + 59_999);
    assert_eq!(h.engine.flow_count(), 1);
    h.send(
        &mut server,
        client.addr,
        TcpFlags::FIN | TcpFlags::ACK,
        client.snd_nxt,
        b"",
    );
    assert_eq!(only_state(&h), FlowState::LastAck);
    h.send(&mut client, frontend, TcpFlags::ACK, server.snd_nxt, b"");
    assert_eq!(only_state(&h), FlowState::TimeWait);
    let t = h.now;
    h.advance_to(t + 119_999);
    assert_eq!(h.engine.flow_count(), 1);
    h.advance_to(t + 120_000);
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn a_half_closed_conntrack_flow_is_forgotten_after_close_wait() {
    // nf_conntrack_tcp_timeout_close_wait = 60 s, however long the established timeout.
    let mut h = Harness::with(profile_config("linux-conntrack", "1h", ""));
    let (mut client, mut server) = h.connect_inbound(40_000);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::FIN | TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    h.send(&mut server, client.addr, TcpFlags::ACK, client.snd_nxt, b"");
    h.advance_to(h.now + 60_000);
    assert_eq!(h.engine.flow_count(), 0);
    assert_eq!(h.expired(), vec![(60_000, Expiry::Silent)]);
}

#[test]
fn loose_pickup_brings_a_forgotten_outbound_flow_back_on_the_members_next_ack() {
    // nf_conntrack_tcp_loose=1: an ACK of an unknown connection makes a new ESTABLISHED
    // entry, and masquerade keeps the member's source port, so the server sees no change.
    let mut h = Harness::with(profile_config("linux-conntrack", "2s", ""));
    let (mut vm, mut server, _, public) = h.connect_outbound(33_000);
    assert_eq!(public, ep(FRONTEND, 33_000), "masquerade keeps the port");
    h.advance_to(2_000);
    assert_eq!(h.engine.flow_count(), 0);
    let (v, p) = h.send(&mut vm, server.addr, TcpFlags::ACK, server.snd_nxt, b"late");
    assert_eq!(v.interface(), Some(Interface::Outside));
    assert_eq!(Headers::<SocketAddrV4>::parse(&p).unwrap().src, public);
    assert_eq!(only_state(&h), FlowState::Established);
    let (v, _) = h.send(&mut server, public, TcpFlags::ACK, vm.snd_nxt, b"reply");
    assert_eq!(v.interface(), Some(Interface::Inside));
}

#[test]
fn loose_pickup_takes_no_fin_rst_or_packet_from_the_outside_of_an_outbound_flow() {
    // conntrack: NONE + FIN or RST is invalid; a server's packet to the router is not a
    // forwarded connection.
    let mut h = Harness::with(profile_config("linux-conntrack", "2s", ""));
    let (mut vm, mut server, _, public) = h.connect_outbound(33_000);
    h.advance_to(2_000);
    let (v, _) = h.send(&mut server, public, TcpFlags::ACK, vm.snd_nxt, b"first");
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    for flags in [TcpFlags::FIN | TcpFlags::ACK, TcpFlags::RST] {
        let v = h.send_seq(&vm, server.addr, flags, vm.snd_nxt, server.snd_nxt, b"");
        assert_eq!(v, Verdict::Drop(DropReason::NoFlow), "{flags:?}");
    }
    assert_eq!(h.engine.flow_count(), 0);
    let (v, _) = h.send(&mut vm, server.addr, TcpFlags::ACK, server.snd_nxt, b"");
    assert_eq!(v.interface(), Some(Interface::Outside));
}

#[test]
fn without_loose_pickup_a_forgotten_flow_stays_dead() {
    // nf_conntrack_tcp_loose=0: mid-stream packets of unknown connections are invalid.
    let config = profile_config("linux-conntrack", "2s", "loose_pickup = false");
    let mut h = Harness::with(config);
    let (mut vm, server, _, _) = h.connect_outbound(33_000);
    h.advance_to(2_000);
    let (v, _) = h.send(&mut vm, server.addr, TcpFlags::ACK, server.snd_nxt, b"late");
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn loose_pickup_of_an_inbound_flow_returns_to_the_same_member() {
    let mut h = Harness::with(profile_config("linux-conntrack", "2s", ""));
    let (mut client, server) = h.connect_inbound(40_000);
    h.advance_to(2_000);
    let (v, p) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"x",
    );
    assert_eq!(v.interface(), Some(Interface::Inside));
    assert_eq!(Headers::<SocketAddrV4>::parse(&p).unwrap().dst, server.addr);
}

#[test]
fn masquerade_changes_a_source_port_only_when_the_tuple_would_clash() {
    let mut h = Harness::with(profile_config("linux-conntrack", "1h", ""));
    let (_, _, _, first) = h.connect_outbound(33_000);
    assert_eq!(first.port(), 33_000);
    // The other member, same source port, same server: the tuple would clash.
    let server = ep(CLIENT, 8_000);
    let mut vm2 = Peer {
        addr: ep(VM2, 33_000),
        iface: Interface::Inside,
        snd_nxt: 5,
    };
    let (v, syn) = h.send(&mut vm2, server, TcpFlags::SYN, 0, b"");
    assert_eq!(v.interface(), Some(Interface::Outside));
    let second = Headers::<SocketAddrV4>::parse(&syn).unwrap().src;
    assert_eq!(*second.ip(), FRONTEND);
    assert_ne!(second.port(), 33_000);
}

#[test]
fn aws_alb_keepalive_probes_do_not_refresh_a_flow_data_does() {
    // AWS ALB: only data bytes refresh the idle timeout; TCP keepalive does not.
    let mut h = Harness::with(
        Config::from_toml(&profile::example_config(&profile::AWS_ALB), "alb").unwrap(),
    );
    let idle = 1_000; // 60 s / 60
    let (mut client, server) = h.connect_inbound(40_000);
    h.advance_to(600);
    let probe = h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::ACK,
        client.snd_nxt.wrapping_sub(1),
        server.snd_nxt,
        b"",
    );
    assert_eq!(
        probe.interface(),
        Some(Interface::Inside),
        "passed on, not counted"
    );
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    h.advance_to(idle - 1);
    assert_eq!(h.engine.flow_count(), 1);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"data",
    );
    h.advance_to(2 * idle - 2);
    assert_eq!(h.engine.flow_count(), 1, "data refreshed it");
    h.advance_to(2 * idle - 1);
    assert_eq!(h.expired(), vec![(2 * idle - 1, Expiry::Reset)]);
}

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

/// A config with an IPv4 and an IPv6 frontend, each with an LB rule (port 7000) to its own
/// pool, and an IPv6 outbound rule.
fn dual_stack_config(expiry: &str) -> Config {
    let text = format!(
        r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public4"
address = "203.0.113.10"
[[frontend]]
name = "public6"
address = "fd00:203::10"
[[backend_pool]]
name = "vms4"
members = [{{ name = "vm1", address = "192.0.2.11" }}]
[[backend_pool]]
name = "vms6"
members = [{{ name = "vm6", address = "fd00:192::11" }}]
[[lb_rule]]
name = "app4"
frontend = "public4"
frontend_port = 7000
backend_pool = "vms4"
backend_port = 7000
expiry = "{expiry}"
[[lb_rule]]
name = "app6"
frontend = "public6"
frontend_port = 7000
backend_pool = "vms6"
backend_port = 7000
expiry = "{expiry}"
[[outbound_rule]]
name = "egress6"
frontend = "public6"
backend_pool = "vms6"
expiry = "{expiry}"
"#
    );
    Config::from_toml(&text, "dual.toml").unwrap()
}

fn ep6(ip: &str, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip.parse().unwrap(), port, 0, 0)
}

/// Hands `packet` to the engine at `ms`; returns the verdict and the packet as it left.
fn pass(h: &mut Harness, ms: u64, from: Interface, mut packet: Vec<u8>) -> (Verdict, Vec<u8>) {
    let v = h.engine.handle_packet(h.at(ms), from, &mut packet);
    h.drain();
    (v, packet)
}

/// An IPv6 client connects to the IPv6 frontend; returns the member it reached.
fn connect_inbound6(h: &mut Harness, client: SocketAddrV6) -> SocketAddrV6 {
    let frontend = ep6("fd00:203::10", 7000);
    let syn = tcp_packet(client, frontend, TcpFlags::SYN, 100, 0, b"");
    let (v, out) = pass(h, 0, Interface::Outside, syn);
    assert_eq!(v.interface(), Some(Interface::Inside));
    assert!(checksums_valid(&out));
    let member = Headers::<SocketAddrV6>::parse(&out).unwrap().dst;
    let synack = tcp_packet(member, client, TcpFlags::SYN | TcpFlags::ACK, 500, 101, b"");
    let (v, out) = pass(h, 0, Interface::Inside, synack);
    assert_eq!(v.interface(), Some(Interface::Outside));
    assert_eq!(Headers::<SocketAddrV6>::parse(&out).unwrap().src, frontend);
    assert!(checksums_valid(&out));
    let ack = tcp_packet(client, frontend, TcpFlags::ACK, 101, 501, b"");
    assert_eq!(
        pass(h, 0, Interface::Outside, ack).0.interface(),
        Some(Interface::Inside)
    );
    member
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

#[test]
fn a_flow_picked_up_at_any_sequence_number_knows_both_sides_and_takes_an_exact_rst() {
    // Loose pickup learns the sender's SND.NXT from the segment, whatever its value, so the
    // endpoint's own RST (RFC 5961 §3.2: SEG.SEQ = RCV.NXT) ends the flow.
    for start in [5u32, 0x9000_0000, u32::MAX - 1] {
        let mut h = Harness::with(profile_config("linux-conntrack", "2s", ""));
        let (mut vm, mut server, _, public) = h.connect_outbound(33_000);
        h.advance_to(2_000);
        assert_eq!(h.engine.flow_count(), 0);
        vm.snd_nxt = start;
        server.snd_nxt = start.wrapping_add(1_000);
        h.send(&mut vm, server.addr, TcpFlags::ACK, server.snd_nxt, b"late");
        assert_eq!(only_state(&h), FlowState::Established, "start {start:#x}");
        let (v, _) = h.send(&mut server, public, TcpFlags::RST, 0, b"");
        assert_eq!(v.interface(), Some(Interface::Inside));
        assert_eq!(only_state(&h), FlowState::Closed, "start {start:#x}");
    }
}

#[test]
fn masquerade_finds_another_port_whatever_the_member_ports_and_counts_its_flows() {
    // Linux masquerade: only the whole tuple must be unique. vm1 holds F:1024 to the server;
    // vm2 from its own port 1024 to the same server gets another port, and so does the next.
    let mut h = Harness::with(profile_config("linux-conntrack", "1h", ""));
    let (_, _, _, first) = h.connect_outbound(1024);
    assert_eq!(first.port(), 1024);
    let server = ep(CLIENT, 8_000);
    let mut ports = vec![first.port()];
    // Each of vm2's own ports is already another flow's tuple by the time it connects.
    for port in [1024, 1025, 1026] {
        let mut vm2 = Peer {
            addr: ep(VM2, port),
            iface: Interface::Inside,
            snd_nxt: u32::from(port),
        };
        let (v, syn) = h.send(&mut vm2, server, TcpFlags::SYN, 0, b"");
        assert_eq!(v.interface(), Some(Interface::Outside), "from port {port}");
        ports.push(Headers::<SocketAddrV4>::parse(&syn).unwrap().src.port());
    }
    let mut unique = ports.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ports.len(), "every tuple unique: {ports:?}");
    let usage: Vec<SnatUsage> = h.engine.snat_usage().collect();
    assert_eq!(usage[0].lent, 4, "four flows use the frontend's ports");
}

#[test]
fn a_syn_in_a_closing_state_other_than_time_wait_changes_nothing() {
    // conntrack: FIN_WAIT, CLOSE_WAIT, LAST_ACK + SYN → ignored; TIME_WAIT, CLOSE + SYN →
    // SYN_SENT (nf_conntrack_proto_tcp.c).
    let mut h = Harness::with(profile_config("kube-proxy", "1h", ""));
    let (mut client, mut server) = h.connect_inbound(40_000);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::FIN | TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    h.send(&mut server, client.addr, TcpFlags::ACK, client.snd_nxt, b"");
    assert_eq!(only_state(&h), FlowState::CloseWait);
    h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"");
    assert_eq!(only_state(&h), FlowState::CloseWait);
}

// ---- sharding: one engine per core ------------------------------------------------------------

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

/// The IP destination address of a packet as it leaves (TCP, UDP or ICMP, either family).
fn ip_destination(packet: &[u8]) -> IpAddr {
    match packet[0] >> 4 {
        6 => smoltcp::wire::Ipv6Packet::new_checked(packet)
            .unwrap()
            .dst_addr()
            .into(),
        _ => smoltcp::wire::Ipv4Packet::new_checked(packet)
            .unwrap()
            .dst_addr()
            .into(),
    }
}

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

mod fragment;
mod window;
