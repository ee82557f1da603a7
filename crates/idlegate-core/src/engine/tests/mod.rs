//! Engine tests in virtual time: no sleeping, every `Instant` is made up.

use super::*;
use crate::wire::packet::tests::{checksums_valid, complete, tcp_packet, to_partial, udp_packet};
use crate::wire::packet::TcpFlags;
use std::net::{Ipv4Addr, Ipv6Addr};

pub(super) const FRONTEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub(super) const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
pub(super) const VM1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const VM2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

/// Azure LB, 4 min idle scaled by 60 to 4 s; transitory 30 s scaled to 500 ms, which races
/// TCP's unscaled retransmissions and so runs at the 3 s floor (`TCP_RETRANSMISSION_FLOOR`).
pub(super) const IDLE_MS: u64 = 4_000;
pub(super) const TRANSITORY_MS: u64 = 3_000;

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

// ---- sharding: one engine per core ------------------------------------------------------------

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

mod batch;
mod driver;
mod fragment;
mod icmp_ipv6;
mod lifecycle;
mod malformed;
mod profiles;
mod retime;
mod rules;
mod shards;
mod udp;
mod untranslated;
mod window;
