//! Gateway workers over in-memory devices ([`MemoryIo`]), in virtual time: no root, no thread,
//! no sleep. Every instant is made up from `t0`, and a test turns each worker's loop itself.

use super::handoff::{self, Contact, HANDOFF_LIMIT};
use super::io::memory::MemoryIo;
use super::worker::{DeviceQueue, Worker, WorkerSetup, BUDGET};
use super::Stopper;
use crate::sys::tun::HEADER;
use idlegate_core::Config;
use idlegate_core::DropReason;
use idlegate_core::Sharding;
use idlegate_core::{Engine, Interface};
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FRONTEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const PORT: u16 = 7000;
/// Azure LB's 4 min idle timeout, scaled by 60 to 4 s.
const IDLE_MS: u64 = 4_000;
const SEED: u64 = 17;

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH_ACK: u8 = 0x18;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;

/// Index of each device in a worker's queues.
const INSIDE: usize = 0;
const OUTSIDE: usize = 1;

fn config(expiry: &str) -> Config {
    let text = format!(
        r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "{FRONTEND}"
[[backend_pool]]
name = "vms"
members = [{{ name = "vm1", address = "{VM}" }}]
[[lb_rule]]
name = "app"
frontend = "public"
frontend_port = {PORT}
backend_pool = "vms"
backend_port = {PORT}
idle_timeout = "4m"
expiry = "{expiry}"
"#
    );
    Config::from_toml(&text, "test.toml").unwrap()
}

/// The ones' complement sum of `data`, folded to 16 bits, added to `sum`.
fn fold(data: &[u8], mut sum: u32) -> u16 {
    for pair in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The IPv4 pseudo-header of a TCP segment of `tcp_len` bytes, summed.
fn pseudo(packet: &[u8], tcp_len: usize) -> u16 {
    let mut p = packet[12..20].to_vec();
    p.extend_from_slice(&[0, 6]);
    p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    fold(&p, 0)
}

/// An IPv4/TCP segment with valid checksums.
fn tcp(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: u8,
    seq: u32,
    ack: u32,
    data: &[u8],
) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((40 + data.len()) as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.0.octets());
    p[16..20].copy_from_slice(&dst.0.octets());
    p[20..22].copy_from_slice(&src.1.to_be_bytes());
    p[22..24].copy_from_slice(&dst.1.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&ack.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&65_535u16.to_be_bytes());
    p.extend_from_slice(data);
    let ip = !fold(&p[..20], 0);
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    let sum = !fold(&p[20..], u32::from(pseudo(&p, p.len() - 20)));
    p[36..38].copy_from_slice(&sum.to_be_bytes());
    p
}

fn source(p: &[u8]) -> (Ipv4Addr, u16) {
    let ip: [u8; 4] = p[12..16].try_into().unwrap();
    (ip.into(), u16::from_be_bytes([p[20], p[21]]))
}

fn destination(p: &[u8]) -> (Ipv4Addr, u16) {
    let ip: [u8; 4] = p[16..20].try_into().unwrap();
    (ip.into(), u16::from_be_bytes([p[22], p[23]]))
}

fn flags(p: &[u8]) -> u8 {
    p[33]
}

/// RFC 791 and RFC 793: the IP header and the segment with its pseudo-header sum to all ones.
fn checksums_valid(p: &[u8]) -> bool {
    fold(&p[..20], 0) == 0xffff && fold(&p[20..], u32::from(pseudo(p, p.len() - 20))) == 0xffff
}

/// Workers, each with a queue of an inside and an outside device (each a catch-all for its
/// side), wired to each other as the gateway wires them.
struct Rig {
    workers: Vec<Worker<MemoryIo>>,
    /// How to reach each worker.
    contacts: Vec<Contact>,
    /// Per worker: its queue of the inside device, of the outside device.
    inside: Vec<MemoryIo>,
    outside: Vec<MemoryIo>,
    sharding: Sharding,
    t0: Instant,
}

impl Rig {
    fn new(expiry: &str, workers: usize, offload: bool, capacity: usize) -> Rig {
        Rig::fed(expiry, workers, offload, capacity, None)
    }

    /// A rig whose workers offer their events to `feed` (as with `--api`), refreshes past
    /// [`super::api::REFRESHED_AFTER`] among them.
    fn fed(
        expiry: &str,
        workers: usize,
        offload: bool,
        capacity: usize,
        feed: Option<super::feed::Feed>,
    ) -> Rig {
        Rig::of(&config(expiry), workers, offload, capacity, feed)
    }

    /// A rig of `config`'s rules, fed as [`Rig::fed`].
    fn of(
        config: &Config,
        workers: usize,
        offload: bool,
        capacity: usize,
        feed: Option<super::feed::Feed>,
    ) -> Rig {
        let t0 = Instant::now();
        let mut engines = Engine::sharded(config, t0, SEED, workers);
        if feed.is_some() {
            for engine in &mut engines {
                engine.report_refreshes(Some(super::api::REFRESHED_AFTER));
            }
        }
        let sharding = Sharding::new(workers, SEED);
        let wired = handoff::wire(workers).unwrap();
        let contacts: Vec<Contact> = wired.iter().map(|(_, c, _)| c.clone()).collect();
        let stopper = Stopper {
            flag: Arc::new(AtomicBool::new(false)),
            wakers: Vec::new(),
        };
        let mut rig = Rig {
            workers: Vec::new(),
            contacts: contacts.clone(),
            inside: Vec::new(),
            outside: Vec::new(),
            sharding: sharding.clone(),
            t0,
        };
        for (index, ((poll, _, mailbox), engine)) in wired.into_iter().zip(engines).enumerate() {
            let inside = MemoryIo::new(&format!("in{index}"), offload, capacity);
            let outside = MemoryIo::new(&format!("out{index}"), offload, capacity);
            rig.workers.push(Worker::new(WorkerSetup {
                index,
                engine,
                queues: vec![
                    DeviceQueue {
                        io: inside.clone(),
                        interface: Interface::Inside,
                        host: None,
                    },
                    DeviceQueue {
                        io: outside.clone(),
                        interface: Interface::Outside,
                        host: None,
                    },
                ],
                poll,
                mailbox,
                peers: contacts.clone(),
                sharding: sharding.clone(),
                capture: None,
                member_names: Vec::new(),
                stopper: stopper.clone(),
                feed: feed.clone(),
            }));
            rig.inside.push(inside);
            rig.outside.push(outside);
        }
        rig
    }

    /// Turns worker `w`'s loop at `ms` virtual milliseconds, both its devices readable.
    fn turn(&mut self, w: usize, ms: u64) {
        let now = self.t0 + Duration::from_millis(ms);
        let worker = &mut self.workers[w];
        worker.mark_readable(INSIDE);
        worker.mark_readable(OUTSIDE);
        worker.turn(now).unwrap();
    }

    fn owner(&self, packet: &[u8], from: Interface) -> usize {
        self.sharding.owner(packet, from).unwrap()
    }
}

/// The client's handshake with the VM through worker 0 at `ms`; returns the client's and the
/// VM's next sequence numbers.
fn handshake(rig: &mut Rig, ms: u64) -> (u32, u32) {
    let client = (CLIENT, 40_000);
    rig.outside[0].push_packet(&tcp(client, (FRONTEND, PORT), SYN, 1000, 0, b""));
    rig.turn(0, ms);
    assert_eq!(
        rig.inside[0].take_packets().len(),
        1,
        "the SYN is forwarded"
    );
    rig.inside[0].push_packet(&tcp((VM, PORT), client, SYN_ACK, 5000, 1001, b""));
    rig.turn(0, ms);
    assert_eq!(
        rig.outside[0].take_packets().len(),
        1,
        "the SYN-ACK is forwarded"
    );
    rig.outside[0].push_packet(&tcp(client, (FRONTEND, PORT), ACK, 1001, 5001, b""));
    rig.turn(0, ms);
    assert_eq!(
        rig.inside[0].take_packets().len(),
        1,
        "the ACK is forwarded"
    );
    (1001, 5001)
}

fn a_flow_is_forwarded_both_ways_with_the_nat_rewrite(offload: bool) {
    let mut rig = Rig::new("silent", 1, offload, 1024);
    let client = (CLIENT, 40_000);
    rig.outside[0].push_packet(&tcp(client, (FRONTEND, PORT), SYN, 1000, 0, b""));
    rig.turn(0, 0);
    let syn = rig.inside[0].take_packets();
    assert_eq!(syn.len(), 1);
    assert_eq!(source(&syn[0]), client, "the client's address is kept");
    assert_eq!(
        destination(&syn[0]),
        (VM, PORT),
        "the frontend is rewritten to the VM"
    );
    assert_eq!(flags(&syn[0]), SYN);
    assert!(checksums_valid(&syn[0]));
    assert!(
        rig.outside[0].take_packets().is_empty(),
        "nothing goes back out"
    );

    rig.inside[0].push_packet(&tcp((VM, PORT), client, SYN_ACK, 5000, 1001, b""));
    rig.turn(0, 10);
    let reply = rig.outside[0].take_packets();
    assert_eq!(reply.len(), 1);
    assert_eq!(
        source(&reply[0]),
        (FRONTEND, PORT),
        "the VM is rewritten to the frontend"
    );
    assert_eq!(destination(&reply[0]), client);
    assert_eq!(flags(&reply[0]), SYN_ACK);
    assert!(checksums_valid(&reply[0]));

    rig.outside[0].push_packet(&tcp(
        client,
        (FRONTEND, PORT),
        PSH_ACK,
        1001,
        5001,
        b"hello",
    ));
    rig.turn(0, 20);
    let data = rig.inside[0].take_packets();
    assert_eq!(data.len(), 1);
    assert_eq!(&data[0][40..], b"hello");
    assert!(checksums_valid(&data[0]));
    let tally = rig.workers[0].tally();
    assert_eq!(tally.counters.forwarded, 3);
    assert_eq!(tally.counters.flows_created, 1);
    assert_eq!(tally.device.tx_errors, 0);
}

#[test]
fn a_flow_is_forwarded_both_ways_with_the_nat_rewrite_with_offloads() {
    a_flow_is_forwarded_both_ways_with_the_nat_rewrite(true);
}

#[test]
fn a_flow_is_forwarded_both_ways_with_the_nat_rewrite_without_offloads() {
    a_flow_is_forwarded_both_ways_with_the_nat_rewrite(false);
}

#[test]
fn a_silent_expiry_drops_the_next_packet_once_the_idle_timeout_passes_in_virtual_time() {
    let mut rig = Rig::new("silent", 1, true, 1024);
    let (seq, ack) = handshake(&mut rig, 0);
    let client = (CLIENT, 40_000);
    // Just before the timeout the flow lives.
    rig.outside[0].push_packet(&tcp(client, (FRONTEND, PORT), PSH_ACK, seq, ack, b"a"));
    rig.turn(0, IDLE_MS - 100);
    assert_eq!(
        rig.inside[0].take_packets().len(),
        1,
        "still forwarded before the timeout"
    );
    // The worker asks to be woken at the flow's deadline; its turn then expires it.
    let deadline = rig.workers[0].deadline().expect("a flow's deadline");
    assert!(deadline <= rig.t0 + Duration::from_millis(2 * IDLE_MS));
    rig.turn(0, 2 * IDLE_MS);
    assert_eq!(rig.workers[0].tally().counters.flows_expired, 1);
    assert!(
        rig.inside[0].take_packets().is_empty(),
        "a silent expiry sends nothing"
    );
    assert!(
        rig.outside[0].take_packets().is_empty(),
        "a silent expiry sends nothing"
    );
    rig.outside[0].push_packet(&tcp(client, (FRONTEND, PORT), PSH_ACK, seq + 1, ack, b"b"));
    rig.turn(0, 2 * IDLE_MS + 10);
    assert!(
        rig.inside[0].take_packets().is_empty(),
        "the packet after expiry is dropped"
    );
    let tally = rig.workers[0].tally();
    assert_eq!(tally.counters.dropped(DropReason::NoFlow), 1);
}

#[test]
fn a_reset_expiry_writes_a_rst_to_both_ends_when_the_idle_timeout_passes_in_virtual_time() {
    let mut rig = Rig::new("reset", 1, true, 1024);
    handshake(&mut rig, 0);
    rig.turn(0, IDLE_MS - 1);
    assert!(
        rig.outside[0].take_packets().is_empty(),
        "nothing before the timeout"
    );
    rig.turn(0, IDLE_MS + 1_000);
    let to_client = rig.outside[0].take_packets();
    let to_vm = rig.inside[0].take_packets();
    assert_eq!(to_client.len(), 1, "one RST to the client");
    assert_eq!(to_vm.len(), 1, "one RST to the VM");
    assert_eq!(flags(&to_client[0]) & RST, RST);
    assert_eq!(source(&to_client[0]), (FRONTEND, PORT));
    assert_eq!(destination(&to_client[0]), (CLIENT, 40_000));
    assert_eq!(flags(&to_vm[0]) & RST, RST);
    assert_eq!(destination(&to_vm[0]), (VM, PORT));
    assert!(checksums_valid(&to_client[0]) && checksums_valid(&to_vm[0]));
    let tally = rig.workers[0].tally();
    assert_eq!(tally.counters.flows_expired, 1);
    assert_eq!(tally.counters.resets_sent, 2);
}

#[test]
fn a_packet_read_by_another_worker_reaches_its_owner_and_the_buffer_returns_to_the_pool() {
    let mut rig = Rig::new("silent", 2, true, 1024);
    // A client whose flow worker 1 owns; its SYN read by worker 0.
    let client = (40_000..41_000)
        .map(|port| (CLIENT, port))
        .find(|&c| {
            let syn = tcp(c, (FRONTEND, PORT), SYN, 1000, 0, b"");
            rig.owner(&syn, Interface::Outside) == 1
        })
        .unwrap();
    let syn = tcp(client, (FRONTEND, PORT), SYN, 1000, 0, b"");
    rig.outside[0].push_packet(&syn);
    rig.turn(0, 0);
    assert_eq!(rig.outside[0].unread(), 0, "worker 0 read it");
    assert!(
        rig.inside[0].take_packets().is_empty(),
        "worker 0 does not forward it"
    );
    assert_eq!(rig.workers[0].tally().device.handed_over, 1);
    assert_eq!(rig.workers[0].handoff().pool(), (1, 0), "one buffer lent");

    rig.turn(1, 0);
    let forwarded = rig.inside[1].take_packets();
    assert_eq!(forwarded.len(), 1, "the owner forwards it on its queue");
    assert_eq!(destination(&forwarded[0]), (VM, PORT));
    assert!(checksums_valid(&forwarded[0]));
    assert_eq!(rig.workers[1].tally().counters.flows_created, 1);
    assert_eq!(rig.workers[0].tally().counters.flows_created, 0);

    rig.turn(0, 1);
    assert_eq!(
        rig.workers[0].handoff().pool(),
        (0, 1),
        "the buffer is back in the pool"
    );

    // The reply, read by worker 0 too, reaches the owner the same way, in the same buffer.
    let reply = tcp((VM, PORT), client, SYN_ACK, 5000, 1001, b"");
    assert_eq!(
        rig.owner(&reply, Interface::Inside),
        1,
        "the owner is the same both ways"
    );
    rig.inside[0].push_packet(&reply);
    rig.turn(0, 2);
    assert_eq!(
        rig.workers[0].handoff().pool(),
        (1, 0),
        "the pooled buffer is reused"
    );
    rig.turn(1, 2);
    let back = rig.outside[1].take_packets();
    assert_eq!(back.len(), 1);
    assert_eq!(source(&back[0]), (FRONTEND, PORT));
    rig.turn(0, 3);
    assert_eq!(rig.workers[0].handoff().pool(), (0, 1));
    assert_eq!(rig.workers[0].tally().device.handed_over, 2);
    assert_eq!(rig.workers[0].tally().device.handover_dropped, 0);
}

#[test]
fn past_the_handoff_limit_a_packet_for_another_worker_is_dropped_and_counted() {
    let mut rig = Rig::new("silent", 2, false, 4 * HANDOFF_LIMIT);
    // Distinct clients owned by worker 1, all read by worker 0, while worker 1 does not run.
    let syns: Vec<Vec<u8>> = (1..=u16::MAX)
        .map(|port| tcp((CLIENT, port), (FRONTEND, PORT), SYN, 1000, 0, b""))
        .filter(|syn| rig.owner(syn, Interface::Outside) == 1)
        .take(HANDOFF_LIMIT + 3)
        .collect();
    for syn in &syns {
        rig.outside[0].push_packet(syn);
    }
    let mut ms = 0;
    while rig.outside[0].unread() > 0 {
        rig.turn(0, ms);
        ms += 1;
    }
    let device = rig.workers[0].tally().device;
    assert_eq!(device.handed_over, HANDOFF_LIMIT as u64);
    assert_eq!(device.handover_dropped, 3);
    rig.turn(1, ms);
    assert_eq!(rig.inside[1].take_packets().len(), HANDOFF_LIMIT);
    rig.turn(0, ms);
    assert_eq!(rig.workers[0].handoff().pool(), (0, HANDOFF_LIMIT));
}

#[test]
fn a_turn_reads_at_most_its_budget_from_one_device() {
    let mut rig = Rig::new("silent", 1, false, 1024);
    for port in 0..(BUDGET as u16 + 10) {
        rig.outside[0].push_packet(&tcp((CLIENT, 1 + port), (FRONTEND, PORT), SYN, 1, 0, b""));
    }
    rig.turn(0, 0);
    assert_eq!(rig.outside[0].unread(), 10, "one turn reads one budget");
    // Each packet written from its own frame of the batch, in the order read.
    let ports: Vec<u16> = rig.inside[0]
        .take_packets()
        .iter()
        .map(|p| source(p).1)
        .collect();
    assert_eq!(ports, (1..=BUDGET as u16).collect::<Vec<_>>());
}

/// A TCP super-segment as a stack with offloads writes it: a virtio-net header (TCPv4
/// segmentation in `mss`-byte segments, checksum partial from the TCP header) and an IPv4
/// packet of the whole payload whose checksum field holds the pseudo-header's sum.
fn super_segment(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    ack: u32,
    payload: &[u8],
    mss: u16,
) -> Vec<u8> {
    let mut p = tcp(src, dst, PSH_ACK, seq, ack, payload);
    let partial = pseudo(&p, p.len() - 20);
    p[36..38].copy_from_slice(&partial.to_be_bytes());
    let mut frame = vec![0u8; HEADER];
    frame[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    frame[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    frame[2..4].copy_from_slice(&40u16.to_le_bytes()); // hdr_len
    frame[4..6].copy_from_slice(&mss.to_le_bytes()); // gso_size
    frame[6..8].copy_from_slice(&20u16.to_le_bytes()); // csum_start
    frame[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    frame.extend_from_slice(&p);
    frame
}

#[test]
fn a_super_segment_is_forwarded_whole_with_its_header_and_a_rewritten_partial_checksum() {
    let mut rig = Rig::new("silent", 1, true, 1024);
    let (seq, ack) = handshake(&mut rig, 0);
    let payload: Vec<u8> = (0..4_000u32).map(|i| (i % 251) as u8).collect();
    let frame = super_segment(
        (CLIENT, 40_000),
        (FRONTEND, PORT),
        seq,
        ack,
        &payload,
        1_448,
    );
    rig.outside[0].push_frame(frame.clone());
    let writes = rig.inside[0].writes();
    rig.turn(0, 10);
    let out = rig.inside[0].take_frames();
    assert_eq!(out.len(), 1, "one write, not one per segment");
    assert_eq!(rig.inside[0].writes(), writes + 1);
    let (header, packet) = out[0].split_at(HEADER);
    assert_eq!(
        header,
        &frame[..HEADER],
        "the virtio-net header goes out as it came"
    );
    assert_eq!(packet.len(), 40 + payload.len());
    assert_eq!(source(packet), (CLIENT, 40_000));
    assert_eq!(
        destination(packet),
        (VM, PORT),
        "the frontend is rewritten to the VM"
    );
    assert_eq!(
        fold(&packet[..20], 0),
        0xffff,
        "the IPv4 header checksum is valid"
    );
    let field = u16::from_be_bytes([packet[36], packet[37]]);
    assert_eq!(
        field,
        pseudo(packet, packet.len() - 20),
        "the partial checksum is the new pseudo-header's sum, for the device to complete"
    );
    assert_eq!(&packet[40..], &payload[..]);
    assert_eq!(rig.workers[0].tally().device.tx_errors, 0);
}

#[test]
fn a_full_output_queue_drops_the_packet_and_counts_a_tx_error() {
    for offload in [true, false] {
        let mut rig = Rig::new("silent", 1, offload, 0);
        let client = (CLIENT, 40_000);
        rig.outside[0].push_packet(&tcp(client, (FRONTEND, PORT), SYN, 1000, 0, b""));
        rig.turn(0, 0);
        assert!(rig.inside[0].take_packets().is_empty(), "nothing fits");
        let tally = rig.workers[0].tally();
        assert_eq!(tally.device.tx_errors, 1, "offload {offload}");
        assert_eq!(tally.counters.forwarded, 1, "the engine forwarded it");
    }
}

#[test]
fn a_failing_write_is_counted_and_the_next_one_goes_through() {
    let mut rig = Rig::new("silent", 1, true, 1024);
    rig.inside[0].fail_writes(1);
    let client = (CLIENT, 40_000);
    rig.outside[0].push_packet(&tcp(client, (FRONTEND, PORT), SYN, 1000, 0, b""));
    rig.turn(0, 0);
    assert!(rig.inside[0].take_packets().is_empty());
    assert_eq!(rig.workers[0].tally().device.tx_errors, 1);
    // The client retransmits its SYN.
    rig.outside[0].push_packet(&tcp(client, (FRONTEND, PORT), SYN, 1000, 0, b""));
    rig.turn(0, 1_000);
    assert_eq!(rig.inside[0].take_packets().len(), 1);
    assert_eq!(rig.workers[0].tally().device.tx_errors, 1);
}

#[test]
fn a_frame_with_a_header_the_kernel_never_writes_is_dropped_and_counted_as_malformed() {
    let mut rig = Rig::new("silent", 1, true, 1024);
    let client = (CLIENT, 40_000);
    let mut bad = vec![0u8; HEADER];
    bad[1] = 1; // segmentation asked for without a partial checksum
    bad.extend_from_slice(&tcp(client, (FRONTEND, PORT), SYN, 1000, 0, b""));
    rig.outside[0].push_frame(bad);
    rig.outside[0].push_packet(&tcp(client, (FRONTEND, PORT), SYN, 1000, 0, b""));
    rig.turn(0, 0);
    assert_eq!(rig.workers[0].tally().device.malformed, 1);
    assert_eq!(
        rig.inside[0].take_packets().len(),
        1,
        "the good packet after it passes"
    );
}

#[test]
fn a_truncated_packet_is_dropped_and_counted_and_the_loop_goes_on() {
    let mut rig = Rig::new("silent", 1, false, 1024);
    let client = (CLIENT, 40_000);
    let syn = tcp(client, (FRONTEND, PORT), SYN, 1000, 0, b"");
    rig.outside[0].push_packet(&syn[..30]);
    rig.outside[0].push_error(io::ErrorKind::Interrupted);
    rig.outside[0].push_packet(&syn);
    rig.turn(0, 0);
    let tally = rig.workers[0].tally();
    assert_eq!(tally.counters.dropped(DropReason::Truncated), 1);
    assert_eq!(
        rig.inside[0].take_packets().len(),
        1,
        "the good packet after it passes"
    );
}

#[test]
fn a_read_error_other_than_would_block_stops_the_worker_with_the_device_named() {
    let mut rig = Rig::new("silent", 1, false, 1024);
    rig.outside[0].push_error(io::ErrorKind::BrokenPipe);
    rig.workers[0].mark_readable(OUTSIDE);
    let err = rig.workers[0].turn(rig.t0).unwrap_err();
    assert!(
        format!("{err:#}").contains("reading TUN device out0"),
        "{err:#}"
    );
}

#[test]
fn a_two_core_machine_runs_one_worker_and_a_bigger_one_leaves_one_core_to_the_kernel() {
    assert_eq!(super::workers_for(0), 1);
    assert_eq!(super::workers_for(1), 1);
    assert_eq!(super::workers_for(2), 1);
    assert_eq!(super::workers_for(4), 3);
    assert_eq!(super::workers_for(64), 63);
}

#[cfg(test)]
mod api;
