//! The tunnel where the issue 16 review broke it: both applications sending at once through a
//! server that echoes as it reads (flow control must never stop the reading of
//! acknowledgements), a stalled session made visible, 1 % packet loss with a cut leg, and
//! several exits behind a load balancer (resumes and first dials that reach the wrong exit, or
//! none). SHA-256 of what was sent against what arrived, both ways.

use crate::common;

use common::tunnel::*;
use common::{require_root, unique};
use idlegate::lab::{self, Lab, INTERNET};
use idlegate::survive::relay::{Keepalive, Stats};
use idlegate::survive::tunnel::frame::{Frame, Refusal, SessionId, Token, MAX_PLAINTEXT};
use idlegate::survive::tunnel::key::Key;
use idlegate::survive::tunnel::leg::Leg;
use idlegate::sys::netns;
use sha2::{Digest, Sha256};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server that echoes as it reads, as simple ones do: `recv` up to 256 KiB, then `sendall`
/// it back, until EOF; then a FIN. While it blocks in `sendall` it reads nothing.
fn echo_as_it_reads_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// The client of [`echo_as_it_reads_server`]: sends `bytes` random bytes and a FIN on one
/// thread while another, after `pause`, reads the echo to EOF. A call that makes no progress
/// for `stall` fails. Returns (SHA-256 sent, SHA-256 received, bytes received, first error).
fn echo_client(
    addr: SocketAddr,
    bytes: u64,
    pause: Duration,
    stall: Duration,
) -> ([u8; 32], [u8; 32], u64, Option<String>) {
    let conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(stall)).unwrap();
    conn.set_write_timeout(Some(stall)).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || -> ([u8; 32], Option<String>) {
        let mut noise = Noise(bytes | 1);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            noise.fill(&mut buf[..n]);
            if let Err(e) = writer.write_all(&buf[..n]) {
                let sent = bytes - left;
                return (
                    hash.finalize().into(),
                    Some(format!("write after {sent} bytes: {e}")),
                );
            }
            hash.update(&buf[..n]);
            left -= n as u64;
        }
        let error = writer.shutdown(Shutdown::Write).err();
        (
            hash.finalize().into(),
            error.map(|e| format!("shutdown: {e}")),
        )
    });
    std::thread::sleep(pause);
    let (arrived, received, error) = read_to_end_hashed(conn);
    let (sent, send_error) = sender.join().unwrap();
    (sent, arrived, received, error.or(send_error))
}

#[test]
fn two_way_bulk_through_a_server_that_echoes_as_it_reads_never_deadlocks() {
    // Issue 16, item 1: the client sends while its echo comes back, and starts reading 0.3 s
    // late. Every leg buffer fills both ways; acknowledgements must still be read, or each end
    // waits for the other for ever.
    const BYTES: u64 = 200_000_000;
    const RUNS: usize = 6;
    let key = Key::random().unwrap();
    let server = echo_as_it_reads_server();
    let (exit, _) = start_exit(server, &key, settings(500, WAIT));
    let entry = start_entry(exit.addr, &key, settings(500, WAIT));
    for run in 1..=RUNS {
        let started = Instant::now();
        let (sent, received, len, error) = echo_client(
            entry.addr,
            BYTES,
            Duration::from_millis(300),
            Duration::from_secs(20),
        );
        let counters = |s: &Stats| {
            format!(
                "heartbeat misses {}, resumes {}, expired {}, resets {}",
                s.heartbeat_misses.load(Ordering::Relaxed),
                s.reconnects.load(Ordering::Relaxed),
                s.expired.load(Ordering::Relaxed),
                s.resets.load(Ordering::Relaxed)
            )
        };
        assert_eq!(
            error,
            None,
            "run {run}: the client's calls stalled or failed; entry: {}; exit: {}",
            counters(&entry.stats),
            counters(&exit.stats)
        );
        assert_eq!(len, BYTES, "run {run}: bytes echoed back");
        assert!(sent == received, "run {run}: SHA-256 of the echo differs");
        eprintln!("run {run}: {:.1?}", started.elapsed());
    }
    assert_eq!(entry.stats.heartbeat_misses.load(Ordering::Relaxed), 0);
    assert_eq!(entry.stats.reconnects.load(Ordering::Relaxed), 0);
}

#[test]
fn a_stalled_session_is_counted_while_it_stalls_and_no_longer_once_bytes_move() {
    // Heartbeats of 300 ms: a session whose bytes do not move for 3.6 s is stalled. TCP's user
    // timeout on the applications' sockets (keepalive) is far longer than the test.
    let mut s = settings(300, WAIT);
    s.keepalive = Keepalive::parse("60s,10s,3").unwrap();
    const BYTES: usize = 32 << 20;
    let key = Key::random().unwrap();
    let (listener, server_addr) = loopback_server();
    let (exit, _) = start_exit(server_addr, &key, s.clone());
    let entry = start_entry(exit.addr, &key, s);
    let mut client = TcpStream::connect(entry.addr).unwrap(); // does not read, for now
    client.set_read_timeout(Some(WAIT)).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_write_timeout(Some(WAIT)).unwrap();
        conn.write_all(&vec![0x5a; BYTES]).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    });
    let stalled = |r: &Running| r.stats.stalled.load(Ordering::Relaxed);
    assert!(
        wait_until(WAIT, || stalled(&entry) == 1 && stalled(&exit) == 1),
        "both ends report the session stalled: entry {}, exit {}",
        stalled(&entry),
        stalled(&exit)
    );
    let text = idlegate::survive::relay::render_metrics(&[(entry.addr, entry.stats.clone())]);
    let line = format!(
        "idlegate_relay_sessions_stalled{{listen=\"{}\"}} 1",
        entry.addr
    );
    assert!(text.contains(&line), "{line} in\n{text}");
    // The client reads: every byte arrives, and the session is no longer stalled.
    client.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), BYTES);
    server.join().unwrap();
    assert!(
        wait_until(WAIT, || stalled(&entry) == 0 && stalled(&exit) == 0),
        "no longer stalled: entry {}, exit {}",
        stalled(&entry),
        stalled(&exit)
    );
    assert_eq!(entry.stats.stalls.load(Ordering::Relaxed), 1);
    assert_eq!(entry.stats.heartbeat_misses.load(Ordering::Relaxed), 0);
}

/// Runs `nft -f -` with `rules` in namespace `ns`; returns what `nft` printed.
fn nft_in(ns: &str, args: &[&str], rules: Option<&str>) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nft (scripts/setup installs nftables)");
    if let Some(rules) = rules {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn two_hundred_mb_each_way_cross_one_percent_loss_and_a_cut_leg_exactly() {
    // In a namespace of its own, nftables drops 1 % of the legs' packets at random both ways
    // (`numgen random mod 100 < 1`: this kernel has no sch_netem); half way, the leg is cut.
    require_root();
    const BYTES: u64 = 200_000_000;
    let ns = netns::Namespace::create(&unique("tl")).unwrap();
    // Ethernet-sized packets, one segment each (nftables sees a segmentation offload
    // super-packet as one), so that the loss falls on as many packets as on a real path.
    crate::common::ip(&[
        "-n",
        ns.name(),
        "link",
        "set",
        "lo",
        "mtu",
        "1500",
        "gso_max_segs",
        "1",
        "up",
    ])
    .unwrap();
    let name = ns.name().to_string();
    let run = netns::spawn_in(ns.name(), move || {
        let key = Key::random().unwrap();
        let (server_addr, server) = exchange_server(BYTES, Duration::ZERO);
        // Heartbeats every 1 s: a leg is declared lost after 3 s without a byte from its
        // peer. At 300 ms (lost after 0.9 s), 1 % loss over 200 MB (some 140,000 segments each
        // way) loses the same segment three times in a row (TCP backs off 0.2 + 0.4 + 0.8 s)
        // about once in seven runs: a second, legitimate resume that is not the cut's.
        let (exit, _) = start_exit(server_addr, &key, settings(1000, WAIT));
        let path = CutPath::new(exit.addr);
        let entry = start_entry(path.addr, &key, settings(1000, WAIT));
        let (p, e) = (path.addr.port(), exit.addr.port());
        let rules = format!(
            "table inet loss {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  \
             tcp dport {{ {p}, {e} }} numgen random mod 100 < 1 counter drop\n  \
             tcp sport {{ {p}, {e} }} numgen random mod 100 < 1 counter drop\n }}\n}}\n"
        );
        nft_in(&name, &["-f", "-"], Some(&rules));
        let started = Instant::now();
        let client = TcpStream::connect(entry.addr).unwrap();
        let client = std::thread::spawn(move || exchange(client, BYTES, 7, Duration::ZERO));
        assert!(
            wait_until(2 * WAIT, || entry.stats.bytes_to_server.load(Ordering::Relaxed)
                >= BYTES / 2
                && entry.stats.bytes_to_client.load(Ordering::Relaxed) >= BYTES / 2),
            "half way each way"
        );
        path.cut();
        let (client, server) = (client.join().unwrap(), server.join().unwrap());
        eprintln!("200 MB each way under 1 % loss: {:.1?}", started.elapsed());
        let dropped: u64 = nft_in(&name, &["list", "table", "inet", "loss"], None)
            .split("packets ")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        (client, server, entry.stats.clone(), exit.stats.clone(), dropped)
    })
    .unwrap();
    let (client, server, entry, exit, dropped) = run.join().unwrap();
    assert_whole(&client, &server, BYTES);
    assert!(dropped > 0, "nftables dropped {dropped} packets");
    // The cut resumed once; any other resume is a leg the loss silenced for three heartbeats,
    // which one end counted as missed.
    let misses = entry.heartbeat_misses.load(Ordering::Relaxed)
        + exit.heartbeat_misses.load(Ordering::Relaxed);
    for (end, stats) in [("entry", &entry), ("exit", &exit)] {
        let resumes = stats.reconnects.load(Ordering::Relaxed);
        assert!(
            resumes >= 1 && resumes - 1 <= misses,
            "the {end} resumed {resumes} time(s) for one cut and {misses} missed heartbeat(s)"
        );
    }
    eprintln!("nftables dropped {dropped} packets");
}

#[test]
fn a_resume_that_reaches_an_exit_without_the_session_dials_again_until_it_reaches_its_own() {
    // Issue 16, item 3: two exits with the same key behind a balancer that takes turns, so
    // every resume reaches the exit without the session first ("no such session"), which is
    // not the last word.
    const BYTES: u64 = 32 << 20;
    const CUTS: u64 = 3;
    let key = Key::random().unwrap();
    let (server_addr, server) = exchange_server(BYTES, Duration::ZERO);
    let (a, a_ids) = start_exit(server_addr, &key, settings(300, WAIT));
    let (b, b_ids) = start_exit(server_addr, &key, settings(300, WAIT));
    let path = CutPath::balancing(vec![a.addr, b.addr]);
    let entry = start_entry(path.addr, &key, settings(300, WAIT));
    let client = TcpStream::connect(entry.addr).unwrap();
    let client = std::thread::spawn(move || exchange(client, BYTES, 11, Duration::ZERO));
    kill_as_bytes_flow(&entry.stats, BYTES, CUTS, &client, |_| {
        // Checked before each cut (after the previous resume), and after the last resume.
        assert_eq!(b_ids().len(), 0, "exit b never held the session");
        path.cut();
        Ok(())
    })
    .unwrap();
    assert_eq!(b_ids().len(), 0, "exit b never held the session");
    let (client, server) = (client.join().unwrap(), server.join().unwrap());
    assert_whole(&client, &server, BYTES);
    assert_eq!(entry.stats.reconnects.load(Ordering::Relaxed), CUTS);
    assert_eq!(a.stats.reconnects.load(Ordering::Relaxed), CUTS);
    assert_eq!(b.stats.connections.load(Ordering::Relaxed), 0);
    assert!(
        path.accepted.load(Ordering::Relaxed) > 2 * CUTS,
        "the first leg, and each resume reached exit b first: {} legs",
        path.accepted.load(Ordering::Relaxed)
    );
    assert_eq!(entry.stats.expired.load(Ordering::Relaxed), 0);
    drop(a_ids);
}

/// `examples/azure-lb.toml`: two members, `vm1` and `vm2`, behind the rule `app` on port
/// 7000 (5-tuple hash; idle timeout 4 s, `silent`).
fn two_member_lab() -> idlegate_core::Config {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/azure-lb.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    idlegate_core::Config::from_toml(&text, "examples/azure-lb.toml").unwrap()
}

/// A server application on 127.0.0.1:9000 in each of `namespaces`; the first connection any
/// of them accepts runs [`exchange`], and its result comes on the channel.
fn exchange_server_in_each(
    namespaces: &[String],
    bytes: u64,
) -> anyhow::Result<std::sync::mpsc::Receiver<Seen>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let taken = Arc::new(AtomicBool::new(false));
    for ns in namespaces {
        let listener = netns::spawn_in(ns, || TcpListener::bind("127.0.0.1:9000"))?
            .join()
            .unwrap()?;
        listener.set_nonblocking(true)?;
        let (tx, taken) = (tx.clone(), taken.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + 4 * WAIT;
            while !taken.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => {
                        taken.store(true, Ordering::Relaxed);
                        conn.set_nonblocking(false).unwrap();
                        let _ = tx.send(exchange(conn, bytes, 0x5eed, Duration::ZERO));
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
    }
    Ok(rx)
}

#[test]
fn a_tunnel_to_two_exits_behind_a_balancer_survives_expiries_whichever_exit_a_leg_reaches() {
    // Issue 16, item 3: exits with the same key on vm1 and vm2 behind examples/azure-lb.toml's
    // rule (a 5-tuple hash picks the member of each new leg); the gateway forgets the leg's
    // flow 7 times as bytes flow, and each resume lands on either exit.
    require_root();
    const BYTES: u64 = 100 << 20;
    const KILLS: u64 = 7;
    let config = two_member_lab();
    let name = unique("tb");
    let control_path = lab::control_path(&name);
    let key = Key::random().unwrap();
    let ((client, server, entry, exits), _) = Lab::with_gateway(&name, &config, |lab| {
        let vms = [lab.namespace_of("vm1")?, lab.namespace_of("vm2")?];
        let server = exchange_server_in_each(&vms, BYTES)?;
        let exits = [
            exit_in(
                &vms[0],
                "0.0.0.0:7000".parse()?,
                "127.0.0.1:9000".parse()?,
                &key,
            )?,
            exit_in(
                &vms[1],
                "0.0.0.0:7000".parse()?,
                "127.0.0.1:9000".parse()?,
                &key,
            )?,
        ];
        let internet = lab.namespace_of(INTERNET)?;
        let (entry, entry_stop) = entry_in(
            &internet,
            "127.0.0.1:7100".parse()?,
            "203.0.113.10:7000".parse()?,
            &key,
        )?;
        let client = exchange_client_in(
            &internet,
            "127.0.0.1:7100".parse()?,
            BYTES,
            0xc11e47,
            Duration::ZERO,
        )?;
        kill_as_bytes_flow(&entry, BYTES, KILLS, &client, |kill| {
            expire_rule(&control_path, "app", kill)
        })?;
        let client = client.join().unwrap();
        let server = server.recv_timeout(WAIT)?;
        entry_stop.store(true, Ordering::Relaxed);
        for (_, stop) in &exits {
            stop.store(true, Ordering::Relaxed);
        }
        Ok((client, server, entry, exits.map(|(stats, _)| stats)))
    })
    .expect("lab run");
    assert_whole(&client, &server, BYTES);
    let resumes = entry.reconnects.load(Ordering::Relaxed);
    assert!(resumes >= KILLS, "{resumes} resumes for {KILLS} kills");
    let [one, two] = exits.map(|s| {
        (
            s.connections.load(Ordering::Relaxed),
            s.reconnects.load(Ordering::Relaxed),
        )
    });
    assert_eq!(one.0 + two.0, 1, "one exit held the session");
    assert_eq!(one.1 + two.1, resumes, "and took every resume");
    assert_eq!(entry.expired.load(Ordering::Relaxed), 0);
}

#[test]
fn new_connections_through_a_balancer_with_one_exit_down_dial_again_and_are_carried() {
    // Issue 16, item 3: only vm1 runs an exit; a new leg the balancer sends to vm2 is refused
    // there (nothing listens). The entry dials again; no application connection is reset.
    require_root();
    const CONNECTIONS: usize = 12;
    let config = two_member_lab();
    let name = unique("td");
    let key = Key::random().unwrap();
    let (outcomes, _) = Lab::with_gateway(&name, &config, |lab| {
        let vm1 = lab.namespace_of("vm1")?;
        let listener = netns::spawn_in(&vm1, || TcpListener::bind("127.0.0.1:9000"))?
            .join()
            .unwrap()?;
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut conn = conn;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let (_, exit_stop) = exit_in(
            &vm1,
            "0.0.0.0:7000".parse()?,
            "127.0.0.1:9000".parse()?,
            &key,
        )?;
        let internet = lab.namespace_of(INTERNET)?;
        let (entry, entry_stop) = entry_in(
            &internet,
            "127.0.0.1:7100".parse()?,
            "203.0.113.10:7000".parse()?,
            &key,
        )?;
        let outcomes = netns::spawn_in(&internet, move || {
            (0..CONNECTIONS)
                .map(|i| -> Result<(), String> {
                    let mut conn =
                        TcpStream::connect("127.0.0.1:7100").map_err(|e| e.to_string())?;
                    conn.set_read_timeout(Some(WAIT)).unwrap();
                    let msg = format!("connection {i:02}");
                    conn.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
                    let mut back = vec![0u8; msg.len()];
                    conn.read_exact(&mut back)
                        .map_err(|e| format!("connection {i}: {e}"))?;
                    assert_eq!(back, msg.as_bytes());
                    Ok(())
                })
                .collect::<Vec<_>>()
        })?
        .join()
        .unwrap();
        assert_eq!(
            entry.connections.load(Ordering::Relaxed),
            CONNECTIONS as u64
        );
        entry_stop.store(true, Ordering::Relaxed);
        exit_stop.store(true, Ordering::Relaxed);
        Ok(outcomes)
    })
    .expect("lab run");
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {CONNECTIONS} failed: {failed:?}",
        failed.len()
    );
}

/// A leg to `exit` with the right key, as an entry would open it.
fn open_leg(exit: SocketAddr, key: &Key) -> Leg {
    Leg::initiate(TcpStream::connect(exit).unwrap(), key, WAIT).unwrap()
}

/// Sends `hello` on a new leg; returns the exit's answer, as text.
fn answer_to(exit: SocketAddr, key: &Key, hello: Frame) -> String {
    let mut leg = open_leg(exit, key);
    leg.send_now(&hello).unwrap();
    let mut plain = vec![0u8; MAX_PLAINTEXT];
    let n = leg.recv_now(&mut plain).unwrap();
    format!("{:?}", Frame::decode(&plain[..n]).unwrap())
}

/// Starts a session by hand: its id and token, and the leg.
fn new_session(exit: SocketAddr, key: &Key) -> (SessionId, Token, Leg) {
    let mut leg = open_leg(exit, key);
    leg.send_now(&Frame::Hello {
        session: SessionId::NEW,
        token: Token::default(),
        received: 0,
    })
    .unwrap();
    let mut plain = vec![0u8; MAX_PLAINTEXT];
    let n = leg.recv_now(&mut plain).unwrap();
    match Frame::decode(&plain[..n]).unwrap() {
        Frame::Welcome { session, token, .. } => (session, token, leg),
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[test]
fn an_exit_tells_the_resume_of_a_session_it_finished_or_ended_so_and_nobody_else() {
    // Issue 16, item 3: behind a balancer "no such session" sends the entry on to another exit;
    // the exit that held the session answers for it instead, to the right token only.
    let key = Key::random().unwrap();
    let (listener, server_addr) = loopback_server();
    let server = std::thread::spawn(move || {
        // The first connection: one byte, then EOF, then a FIN back. The second: reset.
        let (mut first, _) = listener.accept().unwrap();
        first.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = Vec::new();
        first.read_to_end(&mut got).unwrap();
        first.shutdown(Shutdown::Write).unwrap();
        let (mut second, _) = listener.accept().unwrap();
        second.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 8];
        (got, second.read(&mut buf).map_err(|e| e.kind()))
    });
    let (exit, ids) = start_exit(server_addr, &key, settings(300, WAIT));
    // A session that finishes in order: a byte and a FIN each way, every one acknowledged.
    let (finished, finished_token, mut leg) = new_session(exit.addr, &key);
    let limit = 1 << 20;
    for frame in [
        Frame::Ack { received: 0, limit },
        Frame::Data {
            offset: 0,
            bytes: b"x",
        },
        Frame::Fin { offset: 1 },
    ] {
        leg.send_now(&frame).unwrap();
    }
    let mut plain = vec![0u8; MAX_PLAINTEXT];
    loop {
        let n = leg.recv_now(&mut plain).unwrap();
        if let Frame::Fin { offset: 0 } = Frame::decode(&plain[..n]).unwrap() {
            break;
        }
    }
    leg.send_now(&Frame::Ack { received: 1, limit }).unwrap();
    assert!(
        wait_until(WAIT, || ids().is_empty()),
        "the session finished"
    );
    drop(leg);
    // A session the entry's application reset.
    let (reset, reset_token, mut leg) = new_session(exit.addr, &key);
    leg.send_now(&Frame::Reset).unwrap();
    let (got, second) = server.join().unwrap();
    assert_eq!(got, b"x");
    assert_eq!(second, Err(ErrorKind::ConnectionReset));
    assert!(wait_until(WAIT, || ids().is_empty()), "the session ended");
    let resume = |session, token| Frame::Hello {
        session,
        token,
        received: 1,
    };
    let refused = |why| format!("{:?}", Frame::Refuse(why));
    assert_eq!(
        answer_to(exit.addr, &key, resume(finished, finished_token)),
        refused(Refusal::Finished)
    );
    assert_eq!(
        answer_to(exit.addr, &key, resume(reset, reset_token)),
        refused(Refusal::Ended)
    );
    for (what, session, token) in [
        ("a wrong token", finished, reset_token),
        ("another wrong token", reset, Token([7; 32])),
        ("an id never given", SessionId([9; 16]), finished_token),
    ] {
        assert_eq!(
            answer_to(exit.addr, &key, resume(session, token)),
            refused(Refusal::UnknownSession),
            "{what}"
        );
    }
}
