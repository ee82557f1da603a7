//! The engine fed packets on either interface, valid and not, with time moving and flows
//! expired on command, under three profiles (Azure LB with few SNAT ports, Linux conntrack with
//! masquerade and loose pickup, kube-proxy), as one engine or as two shards that share SNAT
//! pools and `max_flows` (each packet to the shard that owns it, as the gateway's workers do).
//! After every step the invariants must hold ([`Engine::check_shards`]: every flow reachable
//! from both of its keys, no SNAT port lent twice, each pool lending exactly its flows' ports,
//! `max_flows` counting exactly the flows, the timer wheel holding exactly the live flows), and
//! nothing panics.
//!
//! Packets are mostly built from a few addresses and ports (so that they meet flows, SYNs open
//! them and RSTs end them) and sometimes raw bytes.
#![no_main]
use arbitrary::Arbitrary;
use idlegate_core::{Config, Engine, Interface, Sharding};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PROFILES: [&str; 3] = [
    r#"profile = "azure-lb"
time_scale = 60
"#,
    r#"profile = "linux-conntrack"
"#,
    r#"profile = "kube-proxy"
"#,
];

const RULES: &str = r#"
[[frontend]]
name = "public4"
address = "203.0.113.10"
[[frontend]]
name = "public6"
address = "fd00:203::10"
[[backend_pool]]
name = "vms4"
members = [{ name = "vm1", address = "192.0.2.11" }, { name = "vm2", address = "192.0.2.12" }]
[[backend_pool]]
name = "vms6"
members = [{ name = "vm6", address = "fd00:192::11" }]
[[lb_rule]]
name = "app4"
frontend = "public4"
protocol = "all"
frontend_port = 7000
backend_pool = "vms4"
backend_port = 7000
expiry = "EXPIRY"
[[lb_rule]]
name = "app6"
frontend = "public6"
frontend_port = 7000
backend_pool = "vms6"
backend_port = 7000
[[outbound_rule]]
name = "egress4"
frontend = "public4"
backend_pool = "vms4"
expiry = "EXPIRY"
PORTS
[[outbound_rule]]
name = "egress6"
frontend = "public6"
backend_pool = "vms6"
"#;

const EXPIRIES: [&str; 4] = ["silent", "reset", "reset-on-next", "ack-and-discard"];

#[derive(Arbitrary, Debug)]
enum Op {
    Tcp {
        inside: bool,
        v6: bool,
        src: u8,
        dst: u8,
        sport: u8,
        dport: u8,
        flags: u8,
        seq: u32,
        ack: u32,
        len: u8,
    },
    Udp {
        inside: bool,
        v6: bool,
        src: u8,
        dst: u8,
        sport: u8,
        dport: u8,
        len: u8,
    },
    Raw {
        inside: bool,
        bytes: Vec<u8>,
    },
    /// An ICMP error about a packet built like `Tcp`, from a router on that side.
    Icmp {
        inside: bool,
        src: u8,
        dst: u8,
        sport: u8,
        dport: u8,
        quote: u8,
    },
    Advance {
        ms: u16,
    },
    ExpireAll,
}

#[derive(Arbitrary, Debug)]
struct Input {
    profile: u8,
    expiry: u8,
    /// A small `max_flows`, so that a full table is reached and refused.
    max_flows: u8,
    /// Two shards instead of one engine.
    sharded: bool,
    ops: Vec<Op>,
}

fn addr(v6: bool, pick: u8) -> IpAddr {
    let v4 = [
        Ipv4Addr::new(203, 0, 113, 10),
        Ipv4Addr::new(203, 0, 113, 100),
        Ipv4Addr::new(203, 0, 113, 101),
        Ipv4Addr::new(192, 0, 2, 11),
        Ipv4Addr::new(192, 0, 2, 12),
    ];
    let n = usize::from(pick) % v4.len();
    if v6 {
        let v6 = [
            "fd00:203::10",
            "fd00:203::100",
            "fd00:203::101",
            "fd00:192::11",
            "fd00:192::12",
        ];
        IpAddr::V6(v6[n].parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::LOCALHOST))
    } else {
        IpAddr::V4(v4[n])
    }
}

fn port(pick: u8) -> u16 {
    match pick % 6 {
        0 | 1 => 7000,
        2 => 8000,
        _ => 40_000 + u16::from(pick % 8),
    }
}

/// A packet with valid headers (checksums included) and `len` bytes of payload.
fn packet(src: IpAddr, dst: IpAddr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + l4.len()) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let sum = !fold(sum16(&p));
            p[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[protocol, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => return p,
    }
    let l4_at = p.len();
    p.extend_from_slice(l4);
    // The transport checksum over the pseudo-header (ICMPv4's covers the message only).
    let (src_b, dst_b): (Vec<u8>, Vec<u8>) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        _ => return p,
    };
    let field = match protocol {
        6 => 16,
        17 => 6,
        _ => 2,
    };
    let mut pseudo = Vec::new();
    if protocol != 1 {
        pseudo.extend_from_slice(&src_b);
        pseudo.extend_from_slice(&dst_b);
        pseudo.extend_from_slice(&[0, protocol]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    }
    if p.len() >= l4_at + field + 2 {
        p[l4_at + field..l4_at + field + 2].fill(0);
        pseudo.extend_from_slice(&p[l4_at..]);
        let sum = !fold(sum16(&pseudo));
        p[l4_at + field..l4_at + field + 2].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

fn tcp(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, len: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + usize::from(len));
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[5 << 4, flags & 0x3f, 0xff, 0xff, 0, 0, 0, 0]);
    t.resize(20 + usize::from(len), 0x61);
    t
}

fn udp(sport: u16, dport: u16, len: u8) -> Vec<u8> {
    let total = 8 + u16::from(len);
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&total.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.resize(usize::from(total), 0x62);
    u
}

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Every profile with every expiry, parsed once: parsing is not what this target tests, and
/// doing it per input took half the time.
fn configs() -> &'static [Config] {
    static CONFIGS: OnceLock<Vec<Config>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let mut all = Vec::new();
        for profile in PROFILES {
            // Few SNAT ports, so that exhaustion and reuse happen (linux-conntrack masquerades).
            let ports = if profile.contains("azure") {
                "ports_per_member = 8"
            } else {
                ""
            };
            for expiry in EXPIRIES {
                let text = format!(
                    "{profile}{}",
                    RULES.replace("EXPIRY", expiry).replace("PORTS", ports)
                );
                all.push(Config::from_toml(&text, "fuzz.toml").expect("the fuzz config is valid"));
            }
        }
        all
    })
}

fn config(input: &Input) -> Config {
    let profile = usize::from(input.profile) % PROFILES.len();
    let expiry = usize::from(input.expiry) % EXPIRIES.len();
    let mut config = configs()[profile * EXPIRIES.len() + expiry].clone();
    config.max_flows = 1 + usize::from(input.max_flows % 16);
    config
}

fuzz_target!(|input: Input| {
    let config = config(&input);
    let t0 = Instant::now();
    let mut now = t0;
    let mut engines = if input.sharded {
        Engine::sharded(&config, t0, 1, 2)
    } else {
        vec![Engine::new(&config, t0, 1)]
    };
    let sharding = Sharding::new(engines.len(), 7);
    // Each packet to the shard that owns it; one that cannot be read to the first, as a worker
    // that read it would keep it.
    let deliver = |engines: &mut [Engine], now: Instant, side: Interface, p: &mut Vec<u8>| {
        let owner = sharding.owner(p, side).unwrap_or(0);
        engines[owner].handle_packet(now, side, p);
    };
    let mut tx = [0u8; idlegate_core::packet::CONTROL_LEN];
    for op in input.ops.iter().take(256) {
        let side = |inside: bool| {
            if inside {
                Interface::Inside
            } else {
                Interface::Outside
            }
        };
        match op {
            Op::Tcp {
                inside,
                v6,
                src,
                dst,
                sport,
                dport,
                flags,
                seq,
                ack,
                len,
            } => {
                let l4 = tcp(port(*sport), port(*dport), *flags, *seq, *ack, *len);
                let mut p = packet(addr(*v6, *src), addr(*v6, *dst), 6, &l4);
                deliver(&mut engines, now, side(*inside), &mut p);
            }
            Op::Udp {
                inside,
                v6,
                src,
                dst,
                sport,
                dport,
                len,
            } => {
                let l4 = udp(port(*sport), port(*dport), *len);
                let mut p = packet(addr(*v6, *src), addr(*v6, *dst), 17, &l4);
                deliver(&mut engines, now, side(*inside), &mut p);
            }
            Op::Raw { inside, bytes } => {
                let mut p = bytes.clone();
                deliver(&mut engines, now, side(*inside), &mut p);
            }
            Op::Icmp {
                inside,
                src,
                dst,
                sport,
                dport,
                quote,
            } => {
                let quoted = packet(
                    addr(false, *src),
                    addr(false, *dst),
                    6,
                    &tcp(port(*sport), port(*dport), 0x10, 1, 1, 0),
                );
                let cut = (usize::from(*quote) % quoted.len().max(1))
                    .max(20)
                    .min(quoted.len());
                let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
                icmp.extend_from_slice(&quoted[..cut]);
                let router = if *inside {
                    addr(false, 3)
                } else {
                    addr(false, 2)
                };
                let mut p = packet(router, addr(false, *src), 1, &icmp);
                deliver(&mut engines, now, side(*inside), &mut p);
            }
            Op::Advance { ms } => {
                now += Duration::from_millis(u64::from(*ms) * 16);
                for engine in engines.iter_mut() {
                    engine.handle_timeout(now);
                }
            }
            Op::ExpireAll => {
                for engine in engines.iter_mut() {
                    engine.expire_now(now, |_| true);
                }
            }
        }
        for engine in engines.iter_mut() {
            while engine.poll_transmit(&mut tx).is_some() {}
            while engine.poll_event().is_some() {}
        }
        if let Err(broken) = Engine::check_shards(&engines) {
            panic!("after {op:?}: {broken}");
        }
    }
});
