//! The per-packet path allocates nothing: a counting global allocator watches the engine while
//! it forwards packets of established flows in both directions.

use idlegate_core::packet::{self, Headers};
use idlegate_core::Config;
use idlegate_core::{BatchPacket, Engine, Interface, Verdict};
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONFIG: &str = r#"
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
expiry = "reset"
"#;

const FRONTEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 7000);
const VM1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 7000);

fn client(i: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 1024 + i)
}

/// A 40-byte TCP segment with valid checksums (built once; the test rewrites it in place).
fn segment(src: SocketAddrV4, dst: SocketAddrV4, syn: bool, ack: bool) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[3] = 40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[27] = 1; // seq 1
    p[31] = 1; // ack 1
    p[32] = 5 << 4;
    p[33] = u8::from(syn) << 1 | u8::from(ack) << 4;
    let sum = |b: &[u8]| {
        b.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum::<u32>()
    };
    let fold = |mut s: u32| {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    };
    let ip = fold(sum(&p[..20]));
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    let tcp = fold(sum(&p[12..20]) + 6 + 20 + sum(&p[20..40]));
    p[36..38].copy_from_slice(&tcp.to_be_bytes());
    p
}

#[test]
fn forwarding_packets_of_established_flows_allocates_nothing() {
    let config = Config::from_toml(CONFIG, "test").unwrap();
    let t0 = Instant::now();
    let mut engine = Engine::new(&config, t0, 3);
    for i in 0..1000 {
        let mut syn = segment(client(i), FRONTEND, true, false);
        assert!(matches!(
            engine.handle_packet(t0, Interface::Outside, &mut syn),
            Verdict::Forward { .. }
        ));
        let mut syn_ack = segment(VM1, client(i), true, true);
        engine.handle_packet(t0, Interface::Inside, &mut syn_ack);
        let mut ack = segment(client(i), FRONTEND, false, true);
        engine.handle_packet(t0, Interface::Outside, &mut ack);
    }
    while engine.poll_event().is_some() {}
    let mut inbound = segment(client(0), FRONTEND, false, true);
    let mut outbound = segment(VM1, client(0), false, true);
    let now = t0 + Duration::from_secs(1);

    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for round in 0..10_000u16 {
        let i = round % 1000;
        // Aim both packets at flow i, as the kernel would hand in a new packet.
        let h = Headers::parse(&inbound).unwrap();
        packet::rewrite_src(&mut inbound, &h, client(i));
        let h = Headers::parse(&inbound).unwrap();
        packet::rewrite_dst(&mut inbound, &h, FRONTEND);
        let h = Headers::parse(&outbound).unwrap();
        packet::rewrite_dst(&mut outbound, &h, client(i));
        let h = Headers::parse(&outbound).unwrap();
        packet::rewrite_src(&mut outbound, &h, VM1);
        // One at a time, and every other round as a batch on the stack.
        let interfaces = if round % 2 == 0 {
            [
                engine.handle_packet(now, Interface::Outside, &mut inbound),
                engine.handle_packet(now, Interface::Inside, &mut outbound),
            ]
            .map(|v| v.interface())
        } else {
            let mut batch = [
                BatchPacket::new(Interface::Outside, &mut inbound),
                BatchPacket::new(Interface::Inside, &mut outbound),
            ];
            engine.handle_batch(now, &mut batch[..]);
            batch.map(|p| p.verdict.and_then(|v| v.interface()))
        };
        assert_eq!(
            interfaces,
            [Some(Interface::Inside), Some(Interface::Outside)]
        );
    }
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(after - before, 0, "allocations on the per-packet path");
    assert_eq!(engine.flow_count(), 1000);
}
