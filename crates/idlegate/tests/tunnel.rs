//! `idlegate relay --tunnel` / `--tunnel-listen`: a pair that carries unmodified
//! applications' connections across legs that break, without losing a byte.
//!
//! Over loopback (no root): exact bytes with half-close, a leg cut again and again, the key and
//! resume rules, the time limit, backpressure and a thousand sessions. In the lab (root): the
//! gateway kills the leg with each expiry action while 100 MB cross each way, with an idle gap
//! longer than its timeout, and the SHA-256 on arrival must equal the SHA-256 sent.

mod common;

use common::{require_root, unique};
use idlegate::control::{self, Request, Response};
use idlegate::lab::{self, Lab, INTERNET};
use idlegate::netns;
use idlegate::relay::{Keepalive, Stats};
use idlegate::tunnel::frame::{Frame, Refusal, SessionId, Token, MAX_PLAINTEXT};
use idlegate::tunnel::key::Key;
use idlegate::tunnel::leg::Leg;
use idlegate::tunnel::{Entry, Exit, Settings};
use sha2::{Digest, Sha256};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn settings(heartbeat_ms: u64, resume_within: Duration) -> Settings {
    Settings {
        heartbeat: Duration::from_millis(heartbeat_ms),
        resume_within,
        replay_buffer: 4 << 20,
        keepalive: Keepalive::parse("1s,1s,3").unwrap(),
        max_sessions: 10_000,
    }
}

struct Running {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn start_exit(
    connect: SocketAddr,
    key: &Key,
    s: Settings,
) -> (Running, impl Fn() -> Vec<SessionId>) {
    let exit = Exit::bind("127.0.0.1:0".parse().unwrap(), connect, key.clone(), s).unwrap();
    let running = Running {
        addr: exit.local_addr().unwrap(),
        stats: exit.stats(),
        stop: exit.stop_flag(),
    };
    let ids = exit.session_ids();
    std::thread::spawn(move || exit.run());
    (running, ids)
}

fn start_entry(tunnel: SocketAddr, key: &Key, s: Settings) -> Running {
    let entry = Entry::bind("127.0.0.1:0".parse().unwrap(), tunnel, key.clone(), s).unwrap();
    let running = Running {
        addr: entry.local_addr().unwrap(),
        stats: entry.stats(),
        stop: entry.stop_flag(),
    };
    std::thread::spawn(move || entry.run());
    running
}

/// A listener for the server application at a fresh loopback port.
fn loopback_server() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Polls `done` every 10 ms until it holds or `within` passes; says whether it held.
fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// Random bytes from a seeded xorshift: fast, and different in each direction.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// What one application saw: the SHA-256 of what it sent and of what it received, how much
/// it received, and the first error any of its calls returned.
#[derive(Debug)]
struct Seen {
    sent: [u8; 32],
    received: [u8; 32],
    received_len: u64,
    error: Option<String>,
}

/// An unmodified application's side: writes `bytes` random bytes (pausing `gap` once, half
/// way) then a FIN, while reading to EOF; hashes both.
fn exchange(conn: TcpStream, bytes: u64, seed: u64, gap: Duration) -> Seen {
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.set_write_timeout(Some(WAIT)).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || -> (Sha256, Option<String>) {
        let mut noise = Noise(seed | 1);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut left = bytes;
        let mut paused = gap.is_zero();
        while left > 0 {
            if !paused && left <= bytes / 2 {
                paused = true;
                std::thread::sleep(gap);
            }
            let n = left.min(buf.len() as u64) as usize;
            noise.fill(&mut buf[..n]);
            if let Err(e) = writer.write_all(&buf[..n]) {
                return (hash, Some(format!("write: {e}")));
            }
            hash.update(&buf[..n]);
            left -= n as u64;
        }
        let error = writer
            .shutdown(Shutdown::Write)
            .err()
            .map(|e| format!("shutdown: {e}"));
        (hash, error)
    });
    let mut reader = conn;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received_len = 0u64;
    let mut error = None;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                received_len += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                error = Some(format!("read: {e}"));
                break;
            }
        }
    }
    let (sent, send_error) = sender.join().unwrap();
    Seen {
        sent: sent.finalize().into(),
        received: hash.finalize().into(),
        received_len,
        error: error.or(send_error),
    }
}

/// A server application at a fresh loopback port that runs [`exchange`] on its first
/// connection.
fn exchange_server(bytes: u64, gap: Duration) -> (SocketAddr, std::thread::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        exchange(conn, bytes, 0x5eed_5e77e7, gap)
    });
    (addr, handle)
}

fn assert_whole(client: &Seen, server: &Seen, bytes: u64) {
    assert_eq!(client.error, None, "the client application saw an error");
    assert_eq!(server.error, None, "the server application saw an error");
    assert_eq!(server.received_len, bytes, "bytes the server received");
    assert_eq!(client.received_len, bytes, "bytes the client received");
    assert!(
        server.received == client.sent,
        "client → server: SHA-256 differs"
    );
    assert!(
        client.received == server.sent,
        "server → client: SHA-256 differs"
    );
}

/// A TCP path between entry and exit that the test can cut: each connection is forwarded by
/// two threads; `cut` closes every connection on it, `block` refuses new ones with a RST. It
/// records what the first connection carried from the entry. Built with several targets, it
/// is a balancer: connection n goes to target n modulo their number.
struct CutPath {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    blocked: Arc<AtomicBool>,
    recorded: Arc<Mutex<Vec<u8>>>,
    accepted: Arc<AtomicU64>,
}

impl CutPath {
    fn new(to: SocketAddr) -> CutPath {
        CutPath::balancing(vec![to])
    }

    fn balancing(targets: Vec<SocketAddr>) -> CutPath {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let path = CutPath {
            addr: listener.local_addr().unwrap(),
            conns: Arc::default(),
            blocked: Arc::default(),
            recorded: Arc::default(),
            accepted: Arc::default(),
        };
        let (conns, blocked, recorded, accepted) = (
            path.conns.clone(),
            path.blocked.clone(),
            path.recorded.clone(),
            path.accepted.clone(),
        );
        std::thread::spawn(move || {
            for near in listener.incoming().flatten() {
                if blocked.load(Ordering::Relaxed) {
                    let _ = socket2::SockRef::from(&near).set_linger(Some(Duration::ZERO));
                    continue;
                }
                let n = accepted.fetch_add(1, Ordering::Relaxed);
                let Ok(far) = TcpStream::connect(targets[n as usize % targets.len()]) else {
                    continue;
                };
                let first = n == 0;
                conns
                    .lock()
                    .unwrap()
                    .extend([near.try_clone().unwrap(), far.try_clone().unwrap()]);
                let (n2, f2) = (near.try_clone().unwrap(), far.try_clone().unwrap());
                let rec = first.then(|| recorded.clone());
                std::thread::spawn(move || forward(near, far, rec));
                std::thread::spawn(move || forward(f2, n2, None));
            }
        });
        path
    }

    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn forward(mut from: TcpStream, mut to: TcpStream, record: Option<Arc<Mutex<Vec<u8>>>>) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(r) = &record {
                    r.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn bytes_and_a_half_close_cross_the_tunnel_exactly() {
    let key = Key::random().unwrap();
    let (listener, server_addr) = loopback_server();
    let (exit, _) = start_exit(server_addr, &key, settings(500, WAIT));
    let entry = start_entry(exit.addr, &key, settings(500, WAIT));
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap(); // until the client's FIN
        conn.write_all(&got).unwrap(); // the other way still flows
        conn.write_all(b"end").unwrap();
    });
    let mut client = TcpStream::connect(entry.addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut up = vec![0u8; 3 << 20];
    Noise(7).fill(&mut up);
    client.write_all(&up).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    server.join().unwrap();
    assert_eq!(got.len(), up.len() + 3);
    assert!(got[..up.len()] == up[..] && &got[up.len()..] == b"end");
    assert!(
        wait_until(WAIT, || exit.stats.open.load(Ordering::Relaxed) == 0),
        "the session ended on the exit"
    );
}

#[test]
fn a_session_that_ends_while_the_client_reads_slowly_still_delivers_its_last_bytes() {
    // The exit finishes first (the server wrote everything and closed; the client had sent
    // its FIN) while the entry still holds bytes for a client that is slow to read.
    const BYTES: usize = 6 << 20;
    let key = Key::random().unwrap();
    let (listener, server_addr) = loopback_server();
    let (exit, _) = start_exit(server_addr, &key, settings(500, WAIT));
    let entry = start_entry(exit.addr, &key, settings(500, WAIT));
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        conn.write_all(&vec![0xab; BYTES]).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
    });
    let mut client = TcpStream::connect(entry.addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    server.join().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), BYTES);
    assert_eq!(entry.stats.resets.load(Ordering::Relaxed), 0);
    assert_eq!(entry.stats.expired.load(Ordering::Relaxed), 0);
}

#[test]
fn a_leg_cut_again_and_again_is_resumed_without_losing_a_byte() {
    const BYTES: u64 = 64 << 20;
    const CUTS: u64 = 5;
    let key = Key::random().unwrap();
    let (server_addr, server) = exchange_server(BYTES, Duration::ZERO);
    let (exit, _) = start_exit(server_addr, &key, settings(300, WAIT));
    let path = CutPath::new(exit.addr);
    let entry = start_entry(path.addr, &key, settings(300, WAIT));
    let client = TcpStream::connect(entry.addr).unwrap();
    let client = std::thread::spawn(move || exchange(client, BYTES, 42, Duration::ZERO));
    for cut in 1..=CUTS {
        // Cut while bytes flow: each after another share has been read from the client, so
        // the rest must cross a new leg.
        wait_until(WAIT, || {
            entry.stats.bytes_to_server.load(Ordering::Relaxed) >= cut * BYTES / (CUTS + 1)
                || client.is_finished()
        });
        path.cut();
        assert!(
            wait_until(WAIT, || entry.stats.reconnects.load(Ordering::Relaxed)
                >= cut
                || client.is_finished()),
            "resume {cut}"
        );
    }
    let (client, server) = (client.join().unwrap(), server.join().unwrap());
    assert_whole(&client, &server, BYTES);
    assert_eq!(
        entry.stats.reconnects.load(Ordering::Relaxed),
        CUTS,
        "every cut was resumed"
    );
    assert_eq!(
        entry.stats.reconnects.load(Ordering::Relaxed),
        exit.stats.reconnects.load(Ordering::Relaxed),
        "both ends count each resume"
    );
    // The metrics say so too: resumes, bytes sent again, no session lost.
    let text = idlegate::relay::render_metrics(&[(entry.addr, entry.stats.clone())]);
    let resumes = entry.stats.reconnects.load(Ordering::Relaxed);
    for line in [
        format!(
            "idlegate_relay_reconnects_total{{listen=\"{}\"}} {resumes}",
            entry.addr
        ),
        format!(
            "idlegate_relay_sessions_expired_total{{listen=\"{}\"}} 0",
            entry.addr
        ),
    ] {
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    assert!(text.contains("idlegate_relay_replayed_bytes_total"));
}

#[test]
fn a_peer_with_the_wrong_key_is_refused_before_any_byte_moves() {
    let (listener, server_addr) = loopback_server();
    listener.set_nonblocking(true).unwrap();
    let (exit, _) = start_exit(server_addr, &Key::random().unwrap(), settings(300, WAIT));
    let entry = start_entry(exit.addr, &Key::random().unwrap(), settings(300, WAIT));
    let mut client = TcpStream::connect(entry.addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let _ = client.write_all(b"secret application bytes");
    let mut buf = [0u8; 16];
    let seen = client.read(&mut buf).map_err(|e| e.kind());
    assert_eq!(
        seen,
        Err(ErrorKind::ConnectionReset),
        "the application is told at once"
    );
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(ErrorKind::WouldBlock),
        "the exit never connected to the server"
    );
    assert_eq!(exit.stats.connections.load(Ordering::Relaxed), 0);
    assert_eq!(exit.stats.bytes_to_server.load(Ordering::Relaxed), 0);
}

#[test]
fn malformed_handshakes_to_a_running_exit_open_nothing_and_leave_it_serving() {
    let key = Key::random().unwrap();
    let (listener, server_addr) = loopback_server();
    listener.set_nonblocking(true).unwrap();
    let (exit, _) = start_exit(server_addr, &key, settings(300, WAIT));
    let noise_sized: Vec<u8> = [0x00, 0x30].into_iter().chain([0xa5; 48]).collect();
    let claims_more: Vec<u8> = [0xff, 0xff].into_iter().chain([0x01; 10]).collect();
    let malformed: [(&str, Vec<u8>, bool); 7] = [
        ("nothing", vec![], true),
        ("half a length", vec![0x00], true),
        ("an empty record", vec![0x00, 0x00], true),
        ("a record cut short", claims_more, true),
        ("garbage the size of a first message", noise_sized, true),
        ("64 KiB of text", vec![b'A'; 64 << 10], true),
        // The peer sends half a length and then nothing, holding the connection open.
        ("a peer that stalls", vec![0x00], false),
    ];
    for (what, bytes, close) in malformed {
        let mut peer = TcpStream::connect(exit.addr).unwrap();
        peer.set_read_timeout(Some(WAIT)).unwrap();
        let _ = peer.write_all(&bytes);
        if close {
            let _ = peer.shutdown(Shutdown::Write);
        }
        // The exit ends the connection: no hang, and no more than a refusal comes back.
        let mut answer = Vec::new();
        let ended = peer.read_to_end(&mut answer).map_err(|e| e.kind());
        assert!(
            matches!(ended, Ok(_) | Err(ErrorKind::ConnectionReset)),
            "{what}: {ended:?}"
        );
        assert!(answer.len() < 100, "{what}: {} bytes back", answer.len());
    }
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(ErrorKind::WouldBlock),
        "the exit never connected to the server"
    );
    assert_eq!(exit.stats.connections.load(Ordering::Relaxed), 0);
    // A peer with the key is served as if nothing had happened.
    listener.set_nonblocking(false).unwrap();
    let entry = start_entry(exit.addr, &key, settings(300, WAIT));
    let mut client = TcpStream::connect(entry.addr).unwrap();
    client.write_all(b"hello").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let (mut served, _) = listener.accept().unwrap();
    served.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    served.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
}

#[test]
fn a_replayed_handshake_opens_nothing() {
    let key = Key::random().unwrap();
    let (listener, server_addr) = loopback_server();
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::Relaxed);
            let mut sink = Vec::new();
            let _ = conn.read_to_end(&mut sink);
        }
    });
    let (exit, _) = start_exit(server_addr, &key, settings(300, WAIT));
    let path = CutPath::new(exit.addr);
    let entry = start_entry(path.addr, &key, settings(300, WAIT));
    // A legitimate session, recorded on the path.
    let mut client = TcpStream::connect(entry.addr).unwrap();
    client.write_all(b"hello").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert!(wait_until(WAIT, || exit
        .stats
        .bytes_to_server
        .load(Ordering::Relaxed)
        == 5));
    let recorded = path.recorded.lock().unwrap().clone();
    assert!(recorded.len() > 48, "the path saw the handshake");
    // Everything the entry sent, replayed to the exit by someone without the key.
    let mut replay = TcpStream::connect(exit.addr).unwrap();
    replay.set_read_timeout(Some(WAIT)).unwrap();
    let _ = replay.write_all(&recorded);
    let mut answer = Vec::new();
    let _ = replay.read_to_end(&mut answer); // the exit closes the leg
    assert!(
        answer.len() < 100,
        "only the handshake's answer, {} bytes",
        answer.len()
    );
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "no second connection to the server"
    );
    assert_eq!(exit.stats.connections.load(Ordering::Relaxed), 1);
    assert_eq!(
        exit.stats.bytes_to_server.load(Ordering::Relaxed),
        5,
        "no byte replayed"
    );
}

/// Opens a leg with the right key and sends `hello`; returns the exit's answer.
fn hello(exit: SocketAddr, key: &Key, session: SessionId, token: Token) -> String {
    let stream = TcpStream::connect(exit).unwrap();
    let mut leg = Leg::initiate(stream, key, WAIT).unwrap();
    leg.send_now(&Frame::Hello {
        session,
        token,
        received: 0,
    })
    .unwrap();
    let mut plain = vec![0u8; MAX_PLAINTEXT];
    let n = leg.recv_now(&mut plain).unwrap();
    format!("{:?}", Frame::decode(&plain[..n]).unwrap())
}

#[test]
fn a_session_is_resumed_only_with_its_id_and_token() {
    let key = Key::random().unwrap();
    let (listener, server_addr) = loopback_server();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        let _ = conn.read_to_end(&mut sink);
    });
    let (exit, ids) = start_exit(server_addr, &key, settings(300, WAIT));
    let entry = start_entry(exit.addr, &key, settings(300, WAIT));
    let _client = TcpStream::connect(entry.addr).unwrap();
    assert!(wait_until(WAIT, || ids().len() == 1));
    let id = ids()[0];
    let refused = format!("{:?}", Frame::Refuse(Refusal::UnknownSession));
    assert_eq!(
        hello(exit.addr, &key, id, Token([0; 32])),
        refused,
        "the right id, a wrong token"
    );
    assert_eq!(
        hello(exit.addr, &key, SessionId([9; 16]), Token([0; 32])),
        refused,
        "an id never given"
    );
    assert_eq!(exit.stats.reconnects.load(Ordering::Relaxed), 0);
    assert_eq!(ids(), vec![id], "the session is untouched");
}

#[test]
fn a_session_not_resumed_in_time_is_reset_on_both_ends() {
    let key = Key::random().unwrap();
    let (listener, server_addr) = loopback_server();
    let (exit, ids) = start_exit(server_addr, &key, settings(200, Duration::from_secs(2)));
    let path = CutPath::new(exit.addr);
    let entry = start_entry(path.addr, &key, settings(200, Duration::from_secs(2)));
    let mut client = TcpStream::connect(entry.addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    server.read_exact(&mut one).unwrap();
    path.blocked.store(true, Ordering::Relaxed);
    path.cut();
    let mut buf = [0u8; 8];
    assert_eq!(
        client.read(&mut buf).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(
        server.read(&mut buf).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset)
    );
    assert!(
        wait_until(WAIT, || ids().is_empty()),
        "the exit forgot the session"
    );
    assert_eq!(entry.stats.expired.load(Ordering::Relaxed), 1);
    assert_eq!(exit.stats.expired.load(Ordering::Relaxed), 1);
}

#[test]
fn a_resume_of_a_session_the_exit_expired_is_refused_and_the_application_reset() {
    let key = Key::random().unwrap();
    let (listener, server_addr) = loopback_server();
    // The exit gives up after 1 s; the entry would keep trying for 30.
    let (exit, ids) = start_exit(server_addr, &key, settings(200, Duration::from_secs(1)));
    let path = CutPath::new(exit.addr);
    let entry = start_entry(path.addr, &key, settings(200, WAIT));
    let mut client = TcpStream::connect(entry.addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let (server, _) = listener.accept().unwrap();
    assert!(
        wait_until(WAIT, || entry.stats.open.load(Ordering::Relaxed) == 1),
        "the session is up"
    );
    path.blocked.store(true, Ordering::Relaxed);
    path.cut();
    assert!(
        wait_until(WAIT, || ids().is_empty()),
        "the exit expired the session"
    );
    path.blocked.store(false, Ordering::Relaxed);
    let mut buf = [0u8; 8];
    assert_eq!(
        client.read(&mut buf).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset)
    );
    assert!(
        wait_until(WAIT, || entry.stats.expired.load(Ordering::Relaxed) == 1),
        "expired: {}, reconnects: {}",
        entry.stats.expired.load(Ordering::Relaxed),
        entry.stats.reconnects.load(Ordering::Relaxed)
    );
    assert_eq!(entry.stats.reconnects.load(Ordering::Relaxed), 0);
    drop(server);
}

#[test]
fn a_client_that_never_reads_stops_the_server_with_bounded_memory() {
    let key = Key::random().unwrap();
    let (listener, server_addr) = loopback_server();
    let (exit, _) = start_exit(server_addr, &key, settings(1000, WAIT));
    let entry = start_entry(exit.addr, &key, settings(1000, WAIT));
    let client = TcpStream::connect(entry.addr).unwrap(); // never reads
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 1 << 16];
    let mut written = 0usize;
    let mut stalled_since = Instant::now();
    while stalled_since.elapsed() < Duration::from_secs(1) {
        match conn.write(&chunk) {
            Ok(n) => {
                written += n;
                stalled_since = Instant::now();
                assert!(
                    written < 256 << 20,
                    "the tunnel kept taking bytes: {written}"
                );
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    // Socket buffers on four sockets, a 4 MiB replay buffer, 1 MiB waiting for the client,
    // the leg's buffers: far below this.
    assert!(
        written < 64 << 20,
        "{written} bytes accepted before the writer stalled"
    );
    assert_eq!(
        entry.stats.heartbeat_misses.load(Ordering::Relaxed),
        0,
        "a stalled leg is not a dead one"
    );
    drop(client);
}

#[test]
fn a_thousand_sessions_at_once() {
    const N: usize = 1000;
    common::raise_fd_limit(16 * N as u64);
    let key = Key::random().unwrap();
    let listener = idlegate::relay::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = listener.local_addr().unwrap();
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
    let (exit, ids) = start_exit(server_addr, &key, settings(1000, WAIT));
    let entry = start_entry(exit.addr, &key, settings(1000, WAIT));
    let mut clients: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(entry.addr).unwrap())
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(WAIT)).unwrap();
        let msg = format!("session {i:04}");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes(), "session {i}");
    }
    assert_eq!(ids().len(), N);
    assert_eq!(entry.stats.open.load(Ordering::Relaxed), N as u64);
    drop(clients);
    assert!(wait_until(WAIT, || ids().is_empty()), "every session ended");
}

/// The lab: the entry in `internet`, the exit on `vm1` behind the gateway's rule "tunnel"
/// (3 s idle timeout, `expiry`), 100 MB each way with an idle gap of 4 s, while the gateway
/// expires the leg's flow `kills` times as bytes flow.
fn survives_the_gateway(expiry: &str) {
    require_root();
    const BYTES: u64 = 100 << 20;
    const KILLS: u64 = 3;
    let config = common::lab_config(expiry, &[("tunnel", 7443)]);
    let name = unique("tn");
    let control_path = lab::control_path(&name);
    let key = Key::random().unwrap();
    let ((client, server, entry, exit), _) = Lab::with_gateway(&name, &config, |lab| {
        let internet = lab.namespace_of(INTERNET)?;
        let vm1 = lab.namespace_of("vm1")?;
        let gap = Duration::from_secs(4);
        let (server_addr, server) = netns::spawn_in(&vm1, move || exchange_server(BYTES, gap))?
            .join()
            .unwrap();
        let k = key.clone();
        let exit = netns::spawn_in(&vm1, move || {
            Exit::bind(
                "0.0.0.0:7443".parse().unwrap(),
                server_addr,
                k,
                settings(300, WAIT),
            )
        })?
        .join()
        .unwrap()?;
        let exit_stats = exit.stats();
        let exit_stop = exit.stop_flag();
        netns::spawn_in(&vm1, move || exit.run())?;
        let k = key.clone();
        let entry = netns::spawn_in(&internet, move || {
            Entry::bind(
                "127.0.0.1:7100".parse().unwrap(),
                "203.0.113.10:7443".parse().unwrap(),
                k,
                settings(300, WAIT),
            )
        })?
        .join()
        .unwrap()?;
        let entry_stats = entry.stats();
        let entry_stop = entry.stop_flag();
        netns::spawn_in(&internet, move || entry.run())?;
        let client = netns::spawn_in(&internet, move || {
            let conn = TcpStream::connect("127.0.0.1:7100").unwrap();
            exchange(conn, BYTES, 0xc11e47, gap)
        })?;
        for kill in 1..=KILLS {
            // Kill while bytes flow: each after another share of the transfer has crossed.
            wait_until(WAIT, || {
                entry_stats.bytes_to_server.load(Ordering::Relaxed) >= kill * BYTES / (KILLS + 1)
                    || client.is_finished()
            });
            let answer = control::ask(
                &control_path,
                &Request::Expire {
                    rule: Some("tunnel".into()),
                    all: false,
                },
            )?;
            assert!(
                matches!(answer, Response::Expired { count: 1.. }),
                "kill {kill}: {answer:?}"
            );
            assert!(
                wait_until(WAIT, || entry_stats.reconnects.load(Ordering::Relaxed)
                    >= kill
                    || client.is_finished()),
                "resume after kill {kill}"
            );
        }
        let seen = (client.join().unwrap(), server.join().unwrap());
        entry_stop.store(true, Ordering::Relaxed);
        exit_stop.store(true, Ordering::Relaxed);
        Ok((seen.0, seen.1, entry_stats, exit_stats))
    })
    .expect("lab run");
    assert_whole(&client, &server, BYTES);
    let reconnects = entry.reconnects.load(Ordering::Relaxed);
    assert!(
        reconnects >= KILLS,
        "{reconnects} resumes for {KILLS} kills"
    );
    assert_eq!(exit.reconnects.load(Ordering::Relaxed), reconnects);
    if matches!(expiry, "silent" | "ack-and-discard") {
        assert!(
            entry.heartbeat_misses.load(Ordering::Relaxed) >= 1,
            "a silent leg is found by its heartbeat"
        );
    }
}

#[test]
fn the_tunnel_carries_100_mb_each_way_through_silent_expiries() {
    survives_the_gateway("silent");
}

#[test]
fn the_tunnel_carries_100_mb_each_way_through_resets_at_expiry() {
    survives_the_gateway("reset");
}

#[test]
fn the_tunnel_carries_100_mb_each_way_through_resets_on_the_next_packet() {
    survives_the_gateway("reset-on-next");
}

#[test]
fn the_tunnel_carries_100_mb_each_way_through_ack_and_discard() {
    survives_the_gateway("ack-and-discard");
}

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
    let mut reader = conn;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    let mut error = None;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                received += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                error = Some(format!("read after {received} bytes: {e}"));
                break;
            }
        }
    }
    let (sent, send_error) = sender.join().unwrap();
    (sent, hash.finalize().into(), received, error.or(send_error))
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
    // Heartbeats of 100 ms: a session whose bytes do not move for 1.2 s is stalled. TCP's user
    // timeout on the applications' sockets (keepalive) is far longer than the test.
    let mut s = settings(100, WAIT);
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
    let text = idlegate::relay::render_metrics(&[(entry.addr, entry.stats.clone())]);
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
    netns::ip(&[
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
        let (exit, _) = start_exit(server_addr, &key, settings(300, WAIT));
        let path = CutPath::new(exit.addr);
        let entry = start_entry(path.addr, &key, settings(300, WAIT));
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
            wait_until(WAIT, || entry.stats.bytes_to_server.load(Ordering::Relaxed)
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
    assert_eq!(
        entry.reconnects.load(Ordering::Relaxed),
        1,
        "the cut resumed"
    );
    assert_eq!(exit.reconnects.load(Ordering::Relaxed), 1);
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
    for cut in 1..=CUTS {
        wait_until(WAIT, || {
            entry.stats.bytes_to_server.load(Ordering::Relaxed) >= cut * BYTES / (CUTS + 1)
                || client.is_finished()
        });
        path.cut();
        assert!(
            wait_until(WAIT, || entry.stats.reconnects.load(Ordering::Relaxed)
                >= cut
                || client.is_finished()),
            "resume {cut}"
        );
        assert_eq!(b_ids().len(), 0, "exit b never held the session");
    }
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

/// Starts an exit in namespace `ns` on 0.0.0.0:7000 that connects to `connect`; returns its
/// stats and stop flag.
fn exit_in(
    ns: &str,
    connect: SocketAddr,
    key: &Key,
) -> anyhow::Result<(Arc<Stats>, Arc<AtomicBool>)> {
    let k = key.clone();
    let exit = netns::spawn_in(ns, move || {
        Exit::bind(
            "0.0.0.0:7000".parse().unwrap(),
            connect,
            k,
            settings(300, WAIT),
        )
    })?
    .join()
    .unwrap()?;
    let running = (exit.stats(), exit.stop_flag());
    netns::spawn_in(ns, move || exit.run())?;
    Ok(running)
}

/// Starts an entry in namespace `ns` on 127.0.0.1:7100 towards the lab's frontend port 7000.
fn entry_in(ns: &str, key: &Key) -> anyhow::Result<(Arc<Stats>, Arc<AtomicBool>)> {
    let k = key.clone();
    let entry = netns::spawn_in(ns, move || {
        Entry::bind(
            "127.0.0.1:7100".parse().unwrap(),
            "203.0.113.10:7000".parse().unwrap(),
            k,
            settings(300, WAIT),
        )
    })?
    .join()
    .unwrap()?;
    let running = (entry.stats(), entry.stop_flag());
    netns::spawn_in(ns, move || entry.run())?;
    Ok(running)
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
            exit_in(&vms[0], "127.0.0.1:9000".parse()?, &key)?,
            exit_in(&vms[1], "127.0.0.1:9000".parse()?, &key)?,
        ];
        let internet = lab.namespace_of(INTERNET)?;
        let (entry, entry_stop) = entry_in(&internet, &key)?;
        let client = netns::spawn_in(&internet, move || {
            let conn = TcpStream::connect("127.0.0.1:7100").unwrap();
            exchange(conn, BYTES, 0xc11e47, Duration::ZERO)
        })?;
        for kill in 1..=KILLS {
            wait_until(WAIT, || {
                entry.bytes_to_server.load(Ordering::Relaxed) >= kill * BYTES / (KILLS + 1)
                    || client.is_finished()
            });
            let answer = control::ask(
                &control_path,
                &Request::Expire {
                    rule: Some("app".into()),
                    all: false,
                },
            )?;
            assert!(
                matches!(answer, Response::Expired { count: 1.. }),
                "kill {kill}: {answer:?}"
            );
            assert!(
                wait_until(WAIT, || entry.reconnects.load(Ordering::Relaxed) >= kill
                    || client.is_finished()),
                "resume after kill {kill}"
            );
        }
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
        let (_, exit_stop) = exit_in(&vm1, "127.0.0.1:9000".parse()?, &key)?;
        let internet = lab.namespace_of(INTERNET)?;
        let (entry, entry_stop) = entry_in(&internet, &key)?;
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
