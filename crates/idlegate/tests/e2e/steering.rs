//! The steering eBPF program on the gateway's TUN devices: the kernel runs it
//! (`BPF_PROG_TEST_RUN`) on many packets and it names the shard [`Sharding::owner`] names, or
//! for what it cannot place the queue its two addresses hash to; and through a lab of two workers, short TCP connections
//! cost (almost) no handovers with it, while without it (`IDLEGATE_TUN_STEERING=off`) they are
//! handed over and still carried whole.
//!
//! Root: loading a BPF program needs CAP_BPF, and the lab namespaces and TUN devices. Each lab
//! has its own name and is taken down even when an assertion fails.

use crate::common;

use idlegate::sys::steer::{unplaced_queue, Program};
use idlegate_core::{Interface, Sharding};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// SplitMix64: a seeded stream of test values, the same every run.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.next() as u8;
        }
        out
    }
}

/// The internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP (protocol 6) or UDP (17) header from `sport` to `dport`, with a payload of 4 bytes.
fn transport(protocol: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if protocol == 6 {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&12u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(b"data");
    l4
}

/// An IPv4 packet with `options` words of IP options, `fragment` as its flags and offset field.
fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    options: usize,
    fragment: u16,
    l4: &[u8],
) -> Vec<u8> {
    let header = 20 + 4 * options;
    let mut p = vec![0u8; header];
    p[0] = 0x40 | (header / 4) as u8;
    p[2..4].copy_from_slice(&((header + l4.len()) as u16).to_be_bytes());
    p[6..8].copy_from_slice(&fragment.to_be_bytes());
    p[8] = 64;
    p[9] = protocol;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    // No-operation options.
    p[20..header].fill(1);
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    p[6] = next;
    p[7] = 64;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

/// `packet` in an Ethernet frame, as BPF_PROG_TEST_RUN takes it.
fn frame(packet: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(if packet[0] >> 4 == 6 {
        &[0x86, 0xdd]
    } else {
        &[0x08, 0x00]
    });
    f.extend_from_slice(packet);
    f
}

#[test]
fn the_steering_program_names_the_shard_the_engine_names_for_every_packet_it_can_place() {
    common::require_root();
    let mut rng = Stream(23);
    let mut checked = 0;
    for count in 2..=8usize {
        let sharding = Sharding::new(count, rng.next());
        for side in [Interface::Outside, Interface::Inside] {
            let program = Program::load(&sharding, side)
                .unwrap_or_else(|e| panic!("loading the {side:?} program: {e:#}"));
            let run = |packet: &[u8]| -> u32 {
                program.test_run(&frame(packet)).expect("BPF_PROG_TEST_RUN")
            };
            let mut seen = vec![0usize; count];
            for i in 0..400 {
                let protocol = if i % 2 == 0 { 6 } else { 17 };
                let l4 = transport(protocol, rng.next() as u16, rng.next() as u16);
                let packet = if i % 4 < 2 {
                    // Options on some, a first fragment (more to come, offset 0) on others.
                    let options = if i % 8 == 0 {
                        (rng.next() % 11) as usize
                    } else {
                        0
                    };
                    let fragment = if i % 16 == 1 { 0x2000 } else { 0x4000 };
                    ipv4(rng.bytes(), rng.bytes(), protocol, options, fragment, &l4)
                } else {
                    ipv6(rng.bytes(), rng.bytes(), protocol, &l4)
                };
                let owner = sharding.owner(&packet, side).expect("an owner");
                let steered = run(&packet);
                assert_eq!(
                    steered as usize, owner,
                    "{side:?}, {count} shards, packet {packet:02x?}"
                );
                seen[owner] += 1;
                checked += 1;
            }
            assert!(seen.iter().all(|&n| n > 0), "every queue used: {seen:?}");

            // What it cannot place goes where its two addresses hash to: spread, not aimed.
            let icmp = ipv4(
                [192, 0, 2, 1],
                [203, 0, 113, 9],
                1,
                0,
                0,
                &[3, 1, 0, 0, 0, 0, 0, 0],
            );
            let later_fragment = ipv4(
                [192, 0, 2, 1],
                [203, 0, 113, 9],
                17,
                0,
                0x0010,
                &transport(17, 1, 2),
            );
            let mut hop_by_hop = vec![17, 0, 1, 4, 0, 0, 0, 0];
            hop_by_hop.extend_from_slice(&transport(17, 1, 2));
            let extension = ipv6([0xfd; 16], [0xfd; 16], 0, &hop_by_hop);
            for packet in [icmp, later_fragment, extension] {
                let queue = unplaced_queue(&sharding, &packet).expect("addresses");
                assert_eq!(run(&packet) as usize, queue, "{side:?}: {packet:02x?}");
            }
        }
    }
    assert_eq!(checked, 7 * 2 * 400);
}

/// The lab: frontend 203.0.113.10 port 80 to vm1 (192.0.2.11) port 7000.
const CONFIG: &str = r#"profile = "azure-lb"
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[lb_rule]]
name = "app"
frontend = "public"
protocol = "tcp"
frontend_port = 80
backend_pool = "vms"
backend_port = 7000
"#;
/// Connections each run makes, one after another.
const CONNECTIONS: usize = 300;
/// Bytes each connection carries to the server.
const SENT: usize = 2_000;
const READY: Duration = Duration::from_secs(20);
const STALL: Duration = Duration::from_secs(10);

/// `lab up` with two workers and metrics; taken down when dropped.
struct Lab {
    name: String,
    child: Child,
}

impl Lab {
    fn up(steering: Option<&str>, metrics: SocketAddr, config: &std::path::Path) -> Lab {
        let name = common::unique("st");
        let mut command = Command::new(env!("CARGO_BIN_EXE_idlegate"));
        command
            .args(["lab", "up", "--workers", "2", "--config"])
            .arg(config)
            .args(["--name", &name, "--metrics", &metrics.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        match steering {
            Some(value) => command.env("IDLEGATE_TUN_STEERING", value),
            None => command.env_remove("IDLEGATE_TUN_STEERING"),
        };
        let mut child = command.spawn().expect("starting idlegate lab up");
        let stdout = child.stdout.take().expect("its stdout");
        let mut lab = Lab { name, child };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            match lines.recv_timeout(READY) {
                Ok(line) if line == "ready" => return lab,
                Ok(_) => continue,
                Err(e) => {
                    common::take_lab_down(&mut lab.child, &lab.name);
                    panic!("lab {}: `lab up` did not print ready: {e}", lab.name)
                }
            }
        }
    }

    fn namespace(&self, host: &str) -> String {
        format!("ig-{}-{host}", self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        common::take_lab_down(&mut self.child, &self.name);
    }
}

/// The value of the sample `name` (with its labels, as written) in the metrics at `addr`.
fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut stream = TcpStream::connect(addr).expect("connecting to the metrics");
    stream.set_read_timeout(Some(STALL)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("the metrics");
    answer
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// [`CONNECTIONS`] connections from the lab's internet host through the frontend, each sending
/// [`SENT`] bytes and reading back how many the server got: the bytes the server got in all.
fn connections(lab: &Lab) -> usize {
    let listen: SocketAddr = "0.0.0.0:7000".parse().unwrap();
    let listener =
        idlegate::sys::netns::spawn_in(&lab.namespace("vm1"), move || TcpListener::bind(listen))
            .expect("a thread in vm1")
            .join()
            .expect("bind thread")
            .expect("listening in vm1");
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut total = 0;
        for _ in 0..CONNECTIONS {
            let (mut conn, _) = listener.accept()?;
            conn.set_read_timeout(Some(STALL))?;
            let mut got = Vec::new();
            conn.read_to_end(&mut got)?;
            conn.write_all(&(got.len() as u32).to_be_bytes())?;
            total += got.len();
        }
        Ok(total)
    });
    let frontend: SocketAddr = "203.0.113.10:80".parse().unwrap();
    idlegate::sys::netns::spawn_in(&lab.namespace("internet"), move || {
        for i in 0..CONNECTIONS {
            let mut conn = TcpStream::connect_timeout(&frontend, STALL)
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            conn.set_read_timeout(Some(STALL)).unwrap();
            conn.write_all(&[0x5a; SENT]).unwrap();
            conn.shutdown(Shutdown::Write).unwrap();
            let mut echoed = [0u8; 4];
            conn.read_exact(&mut echoed)
                .unwrap_or_else(|e| panic!("connection {i}: the server's count: {e}"));
            assert_eq!(u32::from_be_bytes(echoed) as usize, SENT, "connection {i}");
        }
    })
    .expect("a thread in internet")
    .join()
    .expect("the clients");
    server.join().expect("server thread").expect("the server")
}

/// Handovers per connection over [`CONNECTIONS`] connections through a lab of two workers, with
/// `steering` as `IDLEGATE_TUN_STEERING`; and the mode the metrics say.
fn handovers_per_connection(steering: Option<&str>) -> (f64, &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lab.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let metrics = common::free_port();
    let lab = Lab::up(steering, metrics, &config);
    assert_eq!(
        connections(&lab),
        CONNECTIONS * SENT,
        "every byte delivered"
    );
    let handovers = metric(metrics, "idlegate_handovers_total").expect("the handover counter");
    let mode = ["ebpf", "handover", "one-queue"]
        .into_iter()
        .find(|m| {
            metric(
                metrics,
                &format!("idlegate_gateway_steering{{mode=\"{m}\"}}"),
            ) == Some(1.0)
        })
        .expect("a steering mode in force");
    drop(lab);
    let per_connection = handovers / CONNECTIONS as f64;
    eprintln!("steering {mode}: {handovers} handovers, {per_connection} per connection");
    (per_connection, mode)
}

#[test]
fn with_steering_new_connections_through_two_workers_are_almost_never_handed_over() {
    common::require_root();
    let (per_connection, mode) = handovers_per_connection(None);
    assert_eq!(mode, "ebpf");
    assert!(
        per_connection < 0.1,
        "{per_connection} handovers per connection"
    );
}

#[test]
fn without_steering_connections_are_handed_over_and_still_carried_whole() {
    common::require_root();
    let (per_connection, mode) = handovers_per_connection(Some("off"));
    assert_eq!(mode, "handover");
    assert!(
        per_connection > 0.0,
        "{per_connection} handovers per connection"
    );
}
