//! Engine micro-benchmark: one established-flow packet (lookup, TCP tracking, rewrite with
//! checksum update, timer refresh) with 10 k, 1 M and 1.8 M active flows, visited in random
//! order so the flow table is not all in cache; and bytes of memory per flow. The flow index
//! doubles by powers of two and holds two keys a flow, so at 1 M flows it is just past a
//! doubling (2 M keys in 4 Mi slots, 48 % full) and at 1.8 M just before the next (86 %, its
//! bound being 7/8): the two ends of the probe lengths a table of that size sees.
//!
//! Each iteration first aims the one packet buffer at the next flow (two in-place rewrites
//! with incremental checksum updates, as a stand-in for the kernel handing in a new packet);
//! `aim only` measures that part alone so it can be subtracted:
//! engine cost per packet = `handle_packet` − `aim only`. `reference/…` measures one load that
//! misses every cache, the floor for a lookup in a table that does not fit in them.
//!
//! `aim + handle_batch` is the same work with the packets handed in batches of [`BATCH`]
//! ([`Engine::handle_batch`], which overlaps the flow lookups' cache misses), each packet
//! parsed by the caller as the gateway's worker does; its figure is per packet (the time of
//! one batch over [`BATCH`]), so it compares with `aim + handle_packet` directly.
//!
//! The sharded path (one engine per worker, [`Engine::sharded`]): `sharding/owner` is what a
//! worker adds per packet to find the shard that owns it, and `… 2 shards/…` is one packet of
//! an established flow through the owner found that way (`aim + owner + handle_packet`: two
//! parses; `aim + parse once + …`: the gateway worker's way, one `Parsed` serving both).
//! `super-segment` is a 60 KB TCP packet
//! with a partial checksum (as read from a TUN device with offloads): its cost does not grow
//! with its size, since only the headers are touched.

use criterion::{criterion_group, criterion_main, Criterion};
use idlegate_core::packet::{self, Headers, Parsed, TransportChecksum};
use idlegate_core::Config;
use idlegate_core::Sharding;
use idlegate_core::{Batch, Engine, Interface, Verdict, BATCH};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
max_flows = 2000000
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }, { name = "vm2", address = "192.0.2.12" }]
[[lb_rule]]
name = "app"
frontend = "public"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
"#;

const FRONTEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 7000);

fn remote(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(198, 51, 100, (i / 64_000) as u8),
        1024 + (i % 64_000) as u16,
    )
}

/// A minimal IPv4/TCP segment with valid checksums.
fn segment(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = !fold(sum(&p[..20]));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&ack.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = Vec::from(&p[12..20]);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let tcp_sum = !fold(sum(&pseudo) + sum(&p[20..40]));
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

fn sum(b: &[u8]) -> u32 {
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

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// An engine holding `n` established flows, and the time they were made.
fn engine_with(n: u32) -> (Engine, Instant) {
    let config = Config::from_toml(CONFIG, "bench").expect("config");
    let t0 = Instant::now();
    let mut engine = Engine::new(&config, t0, 42);
    for i in 0..n {
        let mut syn = segment(remote(i), FRONTEND, SYN, 1, 0);
        assert!(matches!(
            engine.handle_packet(t0, Interface::Outside, &mut syn),
            Verdict::Forward { .. }
        ));
        let member = Headers::parse(&syn).expect("syn").dst;
        let mut syn_ack = segment(member, remote(i), SYN | ACK, 100, 2);
        engine.handle_packet(t0, Interface::Inside, &mut syn_ack);
        let mut ack = segment(remote(i), FRONTEND, ACK, 2, 101);
        engine.handle_packet(t0, Interface::Outside, &mut ack);
        while engine.poll_event().is_some() {}
    }
    assert_eq!(engine.flow_count(), n as usize);
    (engine, t0)
}

/// `shards` engines sharing `n` established flows, each flow in the shard that owns it.
fn shards_with(n: u32, shards: usize) -> (Vec<Engine>, Sharding, Instant) {
    let config = Config::from_toml(CONFIG, "bench").expect("config");
    let t0 = Instant::now();
    let mut engines = Engine::sharded(&config, t0, 42, shards);
    let sharding = Sharding::new(shards, 7);
    for i in 0..n {
        let mut syn = segment(remote(i), FRONTEND, SYN, 1, 0);
        let owner = sharding.owner(&syn, Interface::Outside).expect("owner");
        let engine = &mut engines[owner];
        engine.handle_packet(t0, Interface::Outside, &mut syn);
        let member = Headers::parse(&syn).expect("syn").dst;
        let mut syn_ack = segment(member, remote(i), SYN | ACK, 100, 2);
        engine.handle_packet(t0, Interface::Inside, &mut syn_ack);
        let mut ack = segment(remote(i), FRONTEND, ACK, 2, 101);
        engine.handle_packet(t0, Interface::Outside, &mut ack);
        while engine.poll_event().is_some() {}
    }
    (engines, sharding, t0)
}

/// A random visiting order (xorshift), fixed between runs.
fn order(n: u32) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Points the packet at flow `i`: source = its remote, destination = the frontend again.
#[inline]
fn aim(buf: &mut [u8], i: u32) {
    let h = Headers::parse(buf).expect("valid");
    packet::rewrite_src(buf, &h, remote(i));
    let h = Headers::parse(buf).expect("valid");
    packet::rewrite_dst(buf, &h, FRONTEND);
}

/// [`BATCH`] packet buffers, each with its parse and verdict: a batch as a driver holds it.
struct Packets {
    bufs: Vec<Vec<u8>>,
    parsed: Vec<Parsed>,
    verdicts: Vec<Verdict>,
}

impl Packets {
    fn new() -> Packets {
        let buf = segment(remote(0), FRONTEND, ACK, 2, 101);
        Packets {
            parsed: vec![Parsed::new(&buf); BATCH],
            bufs: vec![buf; BATCH],
            verdicts: vec![Verdict::Held; BATCH],
        }
    }

    /// Aims the batch at the next [`BATCH`] flows of `order` from `k`, and parses it.
    #[inline]
    fn aim(&mut self, order: &[u32], k: &mut usize) {
        for (buf, parsed) in self.bufs.iter_mut().zip(self.parsed.iter_mut()) {
            *k = (*k + 1) % order.len();
            aim(buf, order[*k]);
            *parsed = Parsed::new(buf);
        }
    }
}

impl Batch for Packets {
    fn len(&self) -> usize {
        self.bufs.len()
    }
    fn headers(&self, i: usize) -> (Interface, &Parsed) {
        (Interface::Outside, &self.parsed[i])
    }
    fn packet(&mut self, i: usize) -> (&mut [u8], TransportChecksum) {
        (&mut self.bufs[i], TransportChecksum::Complete)
    }
    fn verdict(&mut self, i: usize, verdict: Verdict) {
        self.verdicts[i] = verdict;
    }
}

fn bench(c: &mut Criterion) {
    for n in [10_000u32, 1_000_000, 1_800_000] {
        let (mut engine, t0) = engine_with(n);
        let per_flow = engine.flow_memory_bytes() as f64 / f64::from(n);
        eprintln!(
            "flows: {n:>9}  flow table: {:>11} bytes  = {per_flow:.1} bytes/flow (Flow itself: {} bytes)",
            engine.flow_memory_bytes(),
            Engine::FLOW_BYTES
        );
        let order = order(n);
        let mut buf = segment(remote(0), FRONTEND, ACK, 2, 101);
        let mut k = 0usize;
        let now = t0 + Duration::from_secs(1);
        let mut group = c.benchmark_group(format!("{n} flows"));
        group.bench_function("aim only", |b| {
            b.iter(|| {
                k = (k + 1) % order.len();
                aim(&mut buf, order[k]);
                black_box(&buf);
            })
        });
        group.bench_function("aim + handle_packet", |b| {
            b.iter(|| {
                k = (k + 1) % order.len();
                aim(&mut buf, order[k]);
                black_box(engine.handle_packet(now, Interface::Outside, &mut buf))
            })
        });
        let mut packets = Packets::new();
        packets.aim(&order, &mut k);
        engine.handle_batch(now, &mut packets);
        assert!(packets
            .verdicts
            .iter()
            .all(|v| matches!(v, Verdict::Forward { .. })));
        group.bench_function(
            format!("aim + handle_batch (per packet, batches of {BATCH})"),
            |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        packets.aim(&order, &mut k);
                        engine.handle_batch(now, &mut packets);
                        black_box(&packets.verdicts);
                    }
                    start.elapsed() / BATCH as u32
                })
            },
        );
        if n == 10_000 {
            // The flow's next segment as one 60 KB super-segment with a partial checksum.
            let mut big = segment(remote(0), FRONTEND, ACK, 2, 101);
            big.resize(40 + 60_000, 0x5a);
            big[2..4].copy_from_slice(&(40u16 + 60_000).to_be_bytes());
            big[10..12].fill(0);
            let ip_sum = !fold(sum(&big[..20]));
            big[10..12].copy_from_slice(&ip_sum.to_be_bytes());
            let mut seq = 2u32;
            group.bench_function("super-segment (60 KB, partial checksum)", |b| {
                b.iter(|| {
                    // Back to the frontend, and on to the next 60 KB of the stream.
                    let h = Headers::parse(&big).expect("valid");
                    packet::rewrite_dst(&mut big, &h, FRONTEND);
                    seq = seq.wrapping_add(60_000);
                    big[24..28].copy_from_slice(&seq.to_be_bytes());
                    black_box(engine.handle_packet_with(
                        now,
                        Interface::Outside,
                        &mut big,
                        TransportChecksum::Partial,
                    ))
                })
            });
        }
        group.finish();
        engine.handle_timeout(now + Duration::from_secs(60));
        while engine.poll_event().is_some() {}
    }
}

fn bench_sharded(c: &mut Criterion) {
    for n in [10_000u32, 1_000_000] {
        let (mut engines, sharding, t0) = shards_with(n, 2);
        let held: Vec<usize> = engines.iter().map(Engine::flow_count).collect();
        eprintln!("flows: {n:>9}  in 2 shards: {held:?}");
        let order = order(n);
        let mut buf = segment(remote(0), FRONTEND, ACK, 2, 101);
        let mut k = 0usize;
        let now = t0 + Duration::from_secs(1);
        let mut group = c.benchmark_group(format!("{n} flows, 2 shards"));
        group.bench_function("aim + owner + handle_packet", |b| {
            b.iter(|| {
                k = (k + 1) % order.len();
                aim(&mut buf, order[k]);
                let owner = sharding.owner(&buf, Interface::Outside).unwrap_or(0);
                black_box(engines[owner].handle_packet(now, Interface::Outside, &mut buf))
            })
        });
        // What the gateway's worker does: one parse serves the owner and the engine.
        group.bench_function("aim + parse once + owner_of + handle_parsed", |b| {
            b.iter(|| {
                k = (k + 1) % order.len();
                aim(&mut buf, order[k]);
                let parsed = Parsed::new(&buf);
                let owner = sharding
                    .owner_of(&buf, &parsed, Interface::Outside)
                    .unwrap_or(0);
                black_box(engines[owner].handle_parsed(
                    now,
                    Interface::Outside,
                    &mut buf,
                    &parsed,
                    TransportChecksum::Complete,
                ))
            })
        });
        group.finish();
    }
    let sharding = Sharding::new(2, 7);
    let buf = segment(remote(0), FRONTEND, ACK, 2, 101);
    c.bench_function("sharding/owner", |b| {
        b.iter(|| black_box(sharding.owner(black_box(&buf), Interface::Outside)))
    });
}

/// Reference: one dependent load from memory too large for the caches (a pointer chase through
/// a random cycle over 64 MiB, like the flow table at 1 M flows). A flow lookup that misses the
/// caches costs at least one of these, so this is the floor for unbatched random lookups.
fn memory_latency(c: &mut Criterion) {
    let n = 8 << 20; // 8 Mi entries × 8 bytes = 64 MiB
    let order = order(n as u32);
    let mut next = vec![0usize; n];
    for w in order.windows(2) {
        next[w[0] as usize] = w[1] as usize;
    }
    next[order[n - 1] as usize] = order[0] as usize;
    let mut at = order[0] as usize;
    c.bench_function("reference/one dependent load from 64 MiB", |b| {
        b.iter(|| {
            at = next[at];
            black_box(at)
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench, bench_sharded, memory_latency
}
criterion_main!(benches);
