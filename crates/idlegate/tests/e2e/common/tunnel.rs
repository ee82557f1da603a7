//! The tunnel tests' shared parts: settings, an exit and an entry on loopback, two unmodified
//! applications that hash what they send and receive, and a path between entry and exit that
//! the test can cut (or that balances between several exits).

#![allow(dead_code)] // each test file uses what it needs

use idlegate::gateway::control::{self, Request, Response};
use idlegate::survive::relay::{Keepalive, Stats};
use idlegate::survive::tunnel::frame::SessionId;
use idlegate::survive::tunnel::key::Key;
use idlegate::survive::tunnel::leg::{EntryKeys, ExitKeys};
use idlegate::survive::tunnel::{Entry, Exit, Settings};
use idlegate::sys::netns;
use sha2::{Digest, Sha256};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(30);

pub fn settings(heartbeat_ms: u64, resume_within: Duration) -> Settings {
    Settings {
        heartbeat: Duration::from_millis(heartbeat_ms),
        resume_within,
        replay_buffer: 4 << 20,
        keepalive: Keepalive::parse("1s,1s,3").unwrap(),
        max_sessions: 10_000,
    }
}

pub struct Running {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    pub stop: Arc<AtomicBool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn start_exit(
    connect: SocketAddr,
    key: &Key,
    s: Settings,
) -> (Running, impl Fn() -> Vec<SessionId>) {
    start_exit_with(connect, key.clone(), s)
}

/// An exit with any keys (the pair's key, or its own key pair and the peers it serves).
pub fn start_exit_with(
    connect: SocketAddr,
    keys: impl Into<ExitKeys>,
    s: Settings,
) -> (Running, impl Fn() -> Vec<SessionId>) {
    let exit = Exit::bind("127.0.0.1:0".parse().unwrap(), connect, keys, s).unwrap();
    let running = Running {
        addr: exit.local_addr().unwrap(),
        stats: exit.stats(),
        stop: exit.stop_flag(),
    };
    let ids = exit.session_ids();
    std::thread::spawn(move || exit.run());
    (running, ids)
}

pub fn start_entry(tunnel: SocketAddr, key: &Key, s: Settings) -> Running {
    start_entry_with(tunnel, key.clone(), s)
}

/// An entry with any keys (the pair's key, or its own key pair and the exit's public key).
pub fn start_entry_with(tunnel: SocketAddr, keys: impl Into<EntryKeys>, s: Settings) -> Running {
    let entry = Entry::bind("127.0.0.1:0".parse().unwrap(), tunnel, keys, s).unwrap();
    let running = Running {
        addr: entry.local_addr().unwrap(),
        stats: entry.stats(),
        stop: entry.stop_flag(),
    };
    std::thread::spawn(move || entry.run());
    running
}

/// A listener for the server application at a fresh loopback port.
pub fn loopback_server() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Polls `done` every 10 ms until it holds or `within` passes; says whether it held.
pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
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
pub struct Noise(pub u64);

impl Noise {
    pub fn fill(&mut self, buf: &mut [u8]) {
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
pub struct Seen {
    pub sent: [u8; 32],
    pub received: [u8; 32],
    pub received_len: u64,
    pub error: Option<String>,
}

/// An unmodified application's side: writes `bytes` random bytes (pausing `gap` once, half
/// way) then a FIN, while reading to EOF; hashes both.
pub fn exchange(conn: TcpStream, bytes: u64, seed: u64, gap: Duration) -> Seen {
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
    let (received, received_len, error) = read_to_end_hashed(conn);
    let (sent, send_error) = sender.join().unwrap();
    Seen {
        sent: sent.finalize().into(),
        received,
        received_len,
        error: error.or(send_error),
    }
}

/// Reads `reader` to its end: the SHA-256 of what came, how many bytes, and the error that
/// ended it early, if one did.
pub fn read_to_end_hashed(mut reader: TcpStream) -> ([u8; 32], u64, Option<String>) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return (hash.finalize().into(), received, None),
            Ok(n) => {
                hash.update(&buf[..n]);
                received += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                let error = format!("read after {received} bytes: {e}");
                return (hash.finalize().into(), received, Some(error));
            }
        }
    }
}

/// A server application at a fresh loopback port that runs [`exchange`] on its first
/// connection.
pub fn exchange_server(bytes: u64, gap: Duration) -> (SocketAddr, std::thread::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        exchange(conn, bytes, 0x5eed_5e77e7, gap)
    });
    (addr, handle)
}

pub fn assert_whole(client: &Seen, server: &Seen, bytes: u64) {
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
/// two threads; `cut` closes every connection on it, `swallow` has every connection on it
/// acknowledge and discard what it carries from then on (new ones still forward), `blocked`
/// resets new ones once accepted
/// (as an exit's gate drops a connection: the dial connects, then sees a RST), counted in
/// `refused`. It
/// records what the first connection carried from the entry. Built with several targets, it
/// is a balancer: connection n goes to target n modulo their number.
pub struct CutPath {
    pub addr: SocketAddr,
    pub conns: Arc<Mutex<Vec<TcpStream>>>,
    pub blocked: Arc<AtomicBool>,
    pub refused: Arc<AtomicU64>,
    pub recorded: Arc<Mutex<Vec<u8>>>,
    pub accepted: Arc<AtomicU64>,
    /// Each connection's flag: it discards what it carries.
    pub swallowing: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl CutPath {
    pub fn new(to: SocketAddr) -> CutPath {
        CutPath::balancing(vec![to])
    }

    pub fn balancing(targets: Vec<SocketAddr>) -> CutPath {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let path = CutPath {
            addr: listener.local_addr().unwrap(),
            conns: Arc::default(),
            blocked: Arc::default(),
            refused: Arc::default(),
            recorded: Arc::default(),
            accepted: Arc::default(),
            swallowing: Arc::default(),
        };
        let swallowing = path.swallowing.clone();
        let (conns, blocked, refused, recorded, accepted) = (
            path.conns.clone(),
            path.blocked.clone(),
            path.refused.clone(),
            path.recorded.clone(),
            path.accepted.clone(),
        );
        std::thread::spawn(move || {
            for near in listener.incoming().flatten() {
                if blocked.load(Ordering::Relaxed) {
                    let _ = socket2::SockRef::from(&near).set_linger(Some(Duration::ZERO));
                    refused.fetch_add(1, Ordering::Relaxed);
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
                let swallow = Arc::new(AtomicBool::new(false));
                swallowing.lock().unwrap().push(swallow.clone());
                let swallow2 = swallow.clone();
                std::thread::spawn(move || forward_unless(near, far, rec, &swallow));
                std::thread::spawn(move || forward_unless(f2, n2, None, &swallow2));
            }
        });
        path
    }

    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Every connection on the path now acknowledges and discards what it carries, both ways,
    /// and stays open (a box that forgot the flows and answers them still).
    pub fn swallow(&self) {
        for s in self.swallowing.lock().unwrap().drain(..) {
            s.store(true, Ordering::Relaxed);
        }
    }
}

pub fn forward(from: TcpStream, to: TcpStream, record: Option<Arc<Mutex<Vec<u8>>>>) {
    forward_unless(from, to, record, &AtomicBool::new(false))
}

/// Forwards until `from` ends; once `swallow` is set, discards what it reads instead.
fn forward_unless(
    mut from: TcpStream,
    mut to: TcpStream,
    record: Option<Arc<Mutex<Vec<u8>>>>,
    swallow: &AtomicBool,
) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) if swallow.load(Ordering::Relaxed) => {}
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

/// The stats and stop flag of an end started in a namespace.
pub type EndIn = (Arc<Stats>, Arc<AtomicBool>);

/// Starts an exit in namespace `ns` on `listen` that connects to `connect` (heartbeat
/// 300 ms); returns its stats and stop flag.
pub fn exit_in(
    ns: &str,
    listen: SocketAddr,
    connect: SocketAddr,
    key: &Key,
) -> anyhow::Result<EndIn> {
    let k = key.clone();
    let exit = netns::spawn_in(ns, move || {
        Exit::bind(listen, connect, k, settings(300, WAIT))
    })?
    .join()
    .unwrap()?;
    let running = (exit.stats(), exit.stop_flag());
    netns::spawn_in(ns, move || exit.run())?;
    Ok(running)
}

/// Starts an entry in namespace `ns` on `listen` towards `tunnel` (heartbeat 300 ms); returns
/// its stats and stop flag.
pub fn entry_in(
    ns: &str,
    listen: SocketAddr,
    tunnel: SocketAddr,
    key: &Key,
) -> anyhow::Result<EndIn> {
    let k = key.clone();
    let entry = netns::spawn_in(ns, move || {
        Entry::bind(listen, tunnel, k, settings(300, WAIT))
    })?
    .join()
    .unwrap()?;
    let running = (entry.stats(), entry.stop_flag());
    netns::spawn_in(ns, move || entry.run())?;
    Ok(running)
}

/// The client application in namespace `ns`: connects to `to` and runs [`exchange`].
pub fn exchange_client_in(
    ns: &str,
    to: SocketAddr,
    bytes: u64,
    seed: u64,
    gap: Duration,
) -> anyhow::Result<std::thread::JoinHandle<Seen>> {
    netns::spawn_in(ns, move || {
        let conn = TcpStream::connect(to).unwrap();
        exchange(conn, bytes, seed, gap)
    })
}

/// Breaks a session's leg `kills` times while `bytes` cross: each time another share has
/// reached the server (`entry.bytes_to_server`), `kill(n)`, then asserts that the entry
/// resumed for the nth time. Once `client` has finished there is nothing left to break (its
/// bytes are checked after).
pub fn kill_as_bytes_flow<T>(
    entry: &Stats,
    bytes: u64,
    kills: u64,
    client: &std::thread::JoinHandle<T>,
    mut kill: impl FnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for n in 1..=kills {
        // Break while bytes flow: each time after another share of the transfer has crossed.
        wait_until(WAIT, || {
            entry.bytes_to_server.load(Ordering::Relaxed) >= n * bytes / (kills + 1)
                || client.is_finished()
        });
        kill(n)?;
        assert!(
            wait_until(WAIT, || entry.reconnects.load(Ordering::Relaxed) >= n
                || client.is_finished()),
            "resume after kill {n}"
        );
    }
    Ok(())
}

/// Has the lab's gateway (control socket `control_path`) expire the flows of `rule`, as its
/// timeout would; asserts that it expired at least one.
pub fn expire_rule(control_path: &Path, rule: &str, kill: u64) -> anyhow::Result<()> {
    let answer = control::ask(
        control_path,
        &Request::Expire {
            rule: Some(rule.into()),
            all: false,
        },
    )?;
    assert!(
        matches!(answer, Response::Expired { count: 1.. }),
        "kill {kill}: {answer:?}"
    );
    Ok(())
}
