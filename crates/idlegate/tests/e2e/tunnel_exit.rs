//! The tunnel exit (`idlegate relay --tunnel-listen`, the real binary) facing peers it must
//! not trust: hundreds of idle unauthenticated connections must not stop it serving keyed
//! entries or resuming their sessions, nor fill its log; in the per-peer mode it serves the
//! entries on its `--peers` list, refuses the others at their first message, and cuts off an
//! entry taken off the list. The pre-shared-key mode keeps its wire format.
//!
//! Everything runs on loopback (no root): the attackers use other loopback source addresses
//! (127.0.0.2, 127.0.1.x) than the entry (127.0.0.1), as hosts elsewhere would.

use crate::common;

use common::tunnel::{settings, start_entry_with, wait_until, CutPath, WAIT};

use idlegate::survive::tunnel::frame::{Frame, SessionId, Token, MAX_PLAINTEXT};
use idlegate::survive::tunnel::key::{Key, PrivateKey, PublicKey};
use idlegate::survive::tunnel::leg::{EntryKeys, Leg, LegError};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");

/// An echo server on loopback that counts the connections it accepted.
fn echo_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Sends `msg` on `conn` and reads it back: what the echo behind the tunnel returned, or
/// the error the application saw.
fn round_trip(conn: &mut TcpStream, msg: &[u8]) -> Result<Vec<u8>, ErrorKind> {
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.write_all(msg).map_err(|e| e.kind())?;
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back).map_err(|e| e.kind())?;
    Ok(back)
}

/// The exit, as the binary; its log lines as they come; killed when dropped.
struct ExitProcess {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ExitProcess {
    fn start(connect: SocketAddr, auth: &[&str]) -> ExitProcess {
        let connect = connect.to_string();
        let mut args = vec![
            "relay",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--connect",
            &connect,
            "--heartbeat",
            "1s",
            "--resume-within",
            "60s",
        ];
        args.extend_from_slice(auth);
        let mut child = Command::new(IDLEGATE)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting idlegate relay");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        let mut exit = ExitProcess {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            lines,
        };
        let mut addr = None;
        assert!(
            wait_until(WAIT, || {
                addr = exit.lines().iter().find_map(|l| {
                    let rest = &l[l.find("tunnel exit 127.0.0.1:")? + "tunnel exit ".len()..];
                    rest.split_whitespace().next()?.parse().ok()
                });
                addr.is_some()
            }),
            "the exit did not start: {:#?}",
            exit.lines()
        );
        exit.addr = addr.unwrap();
        exit
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn said(&self, what: &str) -> bool {
        self.lines().iter().any(|l| l.contains(what))
    }
}

impl Drop for ExitProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connections that send `payload` (perhaps nothing) and then nothing more, each reopened
/// 100 ms after the far end drops it.
struct Attack {
    stop: Arc<AtomicBool>,
    /// Connections opened, in all.
    opened: Arc<AtomicU64>,
    /// Places whose connection was dropped and opened again at least once.
    reopened: Arc<AtomicU64>,
    places: u64,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Attack {
    /// One connection per entry of `sources`, from that address.
    fn start(target: SocketAddr, sources: Vec<Ipv4Addr>, payload: Vec<u8>) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let reopened = Arc::new(AtomicU64::new(0));
        let places = sources.len() as u64;
        let (stopped, counted, again) = (stop.clone(), opened.clone(), reopened.clone());
        let thread = std::thread::spawn(move || {
            let n = sources.len();
            // Each place's connection, and whether it has sent the payload.
            let mut conns: Vec<Option<(socket2::Socket, bool)>> = (0..n).map(|_| None).collect();
            let mut reopen_at = vec![Instant::now(); n];
            let mut opens = vec![0u32; n];
            while !stopped.load(Ordering::Relaxed) {
                let now = Instant::now();
                for i in 0..n {
                    if conns[i].is_some() || now < reopen_at[i] {
                        continue;
                    }
                    reopen_at[i] = now + Duration::from_millis(100);
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .unwrap();
                    let from = SocketAddr::V4(SocketAddrV4::new(sources[i], 0));
                    if s.bind(&from.into()).is_err() || s.set_nonblocking(true).is_err() {
                        continue;
                    }
                    match s.connect(&target.into()) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                        Err(_) => continue,
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                    opens[i] += 1;
                    if opens[i] == 2 {
                        again.fetch_add(1, Ordering::Relaxed);
                    }
                    conns[i] = Some((s, payload.is_empty()));
                }
                // Any event on a connection that never sends is its end (a FIN or a RST).
                let mut fds: Vec<libc::pollfd> = Vec::with_capacity(n);
                let mut which = Vec::with_capacity(n);
                for (i, c) in conns.iter().enumerate() {
                    if let Some((s, sent)) = c {
                        use std::os::fd::AsRawFd;
                        fds.push(libc::pollfd {
                            fd: s.as_raw_fd(),
                            events: if *sent {
                                libc::POLLIN
                            } else {
                                libc::POLLIN | libc::POLLOUT
                            },
                            revents: 0,
                        });
                        which.push(i);
                    }
                }
                // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
                let now = Instant::now();
                for (fd, i) in fds.iter().zip(which) {
                    let Some((s, sent)) = &mut conns[i] else {
                        continue;
                    };
                    let mut ended = fd.revents & (libc::POLLERR | libc::POLLHUP) != 0;
                    if !ended && fd.revents & libc::POLLOUT != 0 && !*sent {
                        // Connected: the payload, at once (a few bytes always fit).
                        ended = !matches!(s.send(&payload), Ok(n) if n == payload.len());
                        *sent = true;
                    }
                    if !ended && fd.revents & libc::POLLIN != 0 {
                        // An answer is read and ignored; the end of the stream ends it.
                        let mut scratch = [std::mem::MaybeUninit::new(0u8); 256];
                        ended = match s.recv(&mut scratch) {
                            Ok(n) => n == 0,
                            Err(e) => e.kind() != ErrorKind::WouldBlock,
                        };
                    }
                    if ended {
                        conns[i] = None;
                        reopen_at[i] = now + Duration::from_millis(100);
                    }
                }
            }
        });
        Attack {
            stop,
            opened,
            reopened,
            places,
            thread: Some(thread),
        }
    }

    fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Whether every place's connection has been dropped and opened again.
    fn all_reopened(&self) -> bool {
        self.reopened.load(Ordering::Relaxed) == self.places
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_key(dir: &Path) -> (Key, PathBuf) {
    let path = dir.join("pair.key");
    (Key::generate(&path).unwrap(), path)
}

/// The exit (pre-shared key, `--heartbeat 1s`) with a live session; then `attack` on it. While
/// the attack goes on, a new session must be served and the live one, its leg cut, must
/// resume with its bytes; the exit's log must stay at a few lines.
fn keyed_clients_are_served_during(what: &str, attack: impl FnOnce(SocketAddr, &Path) -> Attack) {
    common::raise_fd_limit(8192);
    let dir = tempfile::tempdir().unwrap();
    let (key, key_path) = write_key(dir.path());
    let (echo, _) = echo_server();
    let exit = ExitProcess::start(echo, &["--key", key_path.to_str().unwrap()]);
    let path = CutPath::new(exit.addr);
    let s = settings(1000, Duration::from_secs(60));
    let entry = start_entry_with(path.addr, key.clone(), s);
    // A session that is up before the attack.
    let mut live = TcpStream::connect(entry.addr).unwrap();
    assert_eq!(round_trip(&mut live, b"before"), Ok(b"before".to_vec()));
    let quiet_lines = exit.lines().len();

    let attack = attack(exit.addr, &key_path);
    // Every attacking connection opened, dropped and opened again: the exit has been under
    // attack for longer than any handshake deadline.
    assert!(
        wait_until(Duration::from_secs(120), || attack.all_reopened()),
        "the attack got going: {} opened",
        attack.opened()
    );

    // A new session while the attack goes on.
    let started = Instant::now();
    let mut client = TcpStream::connect(entry.addr).unwrap();
    let served = round_trip(&mut client, b"during the attack");
    let serve_took = started.elapsed();
    assert_eq!(
        served,
        Ok(b"during the attack".to_vec()),
        "a keyed client is served during the attack"
    );

    // The live session's leg is cut: it resumes during the attack, and its bytes cross.
    let started = Instant::now();
    path.cut();
    assert!(
        wait_until(Duration::from_secs(20), || entry
            .stats
            .reconnects
            .load(Ordering::Relaxed)
            >= 1),
        "the live session resumed during the attack; entry expired {}",
        entry.stats.expired.load(Ordering::Relaxed)
    );
    let resume_took = started.elapsed();
    assert_eq!(round_trip(&mut live, b"after"), Ok(b"after".to_vec()));
    assert_eq!(entry.stats.expired.load(Ordering::Relaxed), 0);

    // The log: a few lines, however many connections were refused.
    let opened = attack.opened();
    drop(attack);
    let lines = exit.lines()[quiet_lines..].to_vec();
    eprintln!(
        "{what}: {opened} connections opened; new session served in {serve_took:.1?}, resumed in {resume_took:.1?}; {} log lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("refused a connection from")),
        "the attack is logged"
    );
    assert!(
        lines.len() <= 10,
        "{} log lines for {opened} refused connections",
        lines.len()
    );
}

#[test]
fn hundreds_of_idle_connections_do_not_stop_the_exit_serving_keyed_clients_and_resumes_or_fill_its_log(
) {
    keyed_clients_are_served_during("600 idle", |exit, _| {
        // 600 idle connections: 200 from one source (127.0.0.2), 400 from 200 others.
        let mut sources = vec![Ipv4Addr::new(127, 0, 0, 2); 200];
        for i in 0..200u32 {
            let host = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 1, 1)) + i);
            sources.extend([host, host]);
        }
        Attack::start(exit, sources, Vec::new())
    });
}

/// An initiator of the pre-shared-key mode built from its documented format alone
/// (Noise_NNpsk0_25519_AESGCM_BLAKE2s, prologue "idlegate tunnel 3", the key file's 32 bytes,
/// in hex, as the PSK), not from idlegate's own code.
fn psk_initiator(key_path: &Path) -> snow::HandshakeState {
    let hex = std::fs::read_to_string(key_path).unwrap();
    let hex = hex.trim();
    let mut psk = [0u8; 32];
    for (i, byte) in psk.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    snow::Builder::new("Noise_NNpsk0_25519_AESGCM_BLAKE2s".parse().unwrap())
        .prologue(b"idlegate tunnel 3")
        .unwrap()
        .psk(0, &psk)
        .unwrap()
        .build_initiator()
        .unwrap()
}

/// A first message made with the key in `key_path`, as an observer of a real entry's leg
/// would have recorded it, with its length.
fn recorded_first_message(key_path: &Path) -> Vec<u8> {
    let mut hs = psk_initiator(key_path);
    let mut buf = vec![0u8; 1024];
    let n = hs.write_message(&[], &mut buf).unwrap();
    let mut record = (n as u16).to_be_bytes().to_vec();
    record.extend_from_slice(&buf[..n]);
    record
}

#[test]
fn a_recorded_first_message_replayed_by_the_thousand_from_one_source_keeps_no_one_else_out() {
    keyed_clients_are_served_during("1,100 replays", |exit, key_path| {
        // More replays than the exit has places, all from 127.0.0.3: each is answered (the
        // message is valid) and then owes a Hello it cannot make.
        let sources = vec![Ipv4Addr::new(127, 0, 0, 3); 1_100];
        Attack::start(exit, sources, recorded_first_message(key_path))
    });
}

/// Runs `idlegate ARGS` to its end (within 30 s): its status, stdout and stderr.
fn idlegate(args: &[&str]) -> (bool, String, String) {
    let out = common::output_within(Command::new(IDLEGATE).args(args), WAIT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn per_peer_keys_serve_a_listed_entry_refuse_an_unlisted_one_at_its_first_message_and_cut_off_a_revoked_one(
) {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    // The exit's and one site's pairs from the command line; two more from the library.
    let (ok, exit_public, said) = idlegate(&["keygen", "--pair", path_str(&at("exit.key"))]);
    assert!(ok, "{said}");
    let exit_public = PublicKey::parse(exit_public.trim()).unwrap();
    let (ok, _, said) = idlegate(&["keygen", "--pair", path_str(&at("site-a.key"))]);
    assert!(ok, "{said}");
    let site_b = PrivateKey::generate(&at("site-b.key")).unwrap();
    let stranger = PrivateKey::random().unwrap();
    let read = |name: &str| std::fs::read_to_string(at(name)).unwrap();
    let peers = at("peers");
    std::fs::write(
        &peers,
        format!(
            "# the sites this exit serves\n{}{}",
            read("site-a.key.pub"),
            read("site-b.key.pub")
        ),
    )
    .unwrap();
    let (echo, accepted) = echo_server();
    let exit = ExitProcess::start(
        echo,
        &[
            "--private-key",
            path_str(&at("exit.key")),
            "--peers",
            path_str(&peers),
        ],
    );
    let s = settings(1000, WAIT);
    // For the entries the exit refuses: it resets them unanswered (as its gate drops a
    // crowded source), so they dial again until their resume limit, then reset the client.
    let short = settings(1000, Duration::from_secs(3));
    let as_peer = |own: PrivateKey, exit: PublicKey| EntryKeys::Peer { own, exit };
    let site_a = PrivateKey::load(&at("site-a.key")).unwrap();

    // A listed entry is served.
    let entry_a = start_entry_with(exit.addr, as_peer(site_a.clone(), exit_public), s.clone());
    let mut a = TcpStream::connect(entry_a.addr).unwrap();
    assert_eq!(round_trip(&mut a, b"site a"), Ok(b"site a".to_vec()));
    let entry_b = start_entry_with(
        exit.addr,
        as_peer(site_b.clone(), exit_public),
        short.clone(),
    );
    let mut b = TcpStream::connect(entry_b.addr).unwrap();
    assert_eq!(round_trip(&mut b, b"site b"), Ok(b"site b".to_vec()));
    assert_eq!(accepted.load(Ordering::Relaxed), 2);

    // An entry not on the list, and a listed one that has the exit's key wrong, are refused
    // before the exit opens anything.
    let entry_c = start_entry_with(
        exit.addr,
        as_peer(stranger.clone(), exit_public),
        short.clone(),
    );
    let mut c = TcpStream::connect(entry_c.addr).unwrap();
    assert_eq!(
        round_trip(&mut c, b"let me in"),
        Err(ErrorKind::ConnectionReset)
    );
    let wrong_exit = PrivateKey::random().unwrap().public();
    let entry_w = start_entry_with(
        exit.addr,
        as_peer(site_a.clone(), wrong_exit),
        short.clone(),
    );
    let mut w = TcpStream::connect(entry_w.addr).unwrap();
    assert_eq!(
        round_trip(&mut w, b"hello?"),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        2,
        "nothing opened for them"
    );
    assert!(
        wait_until(WAIT, || exit.said("key not on the peers list")
            && exit.said(&stranger.public().to_string())),
        "the exit names the unlisted key: {:#?}",
        exit.lines()
    );

    // Site b is taken off the list: its open session is reset, and it gets no new one.
    std::fs::write(
        &peers,
        format!("# site-b revoked\n{}", read("site-a.key.pub")),
    )
    .unwrap();
    let mut buf = [0u8; 16];
    b.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(
        b.read(&mut buf).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset),
        "the revoked site's session is reset"
    );
    assert!(
        wait_until(WAIT, || exit.said("revoked: site-b")),
        "{:#?}",
        exit.lines()
    );
    let mut b2 = TcpStream::connect(entry_b.addr).unwrap();
    assert_eq!(
        round_trip(&mut b2, b"again"),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(accepted.load(Ordering::Relaxed), 2, "nothing opened for it");

    // Site a carries on, on its open session and on a new one.
    assert_eq!(
        round_trip(&mut a, b"still here"),
        Ok(b"still here".to_vec())
    );
    let mut a2 = TcpStream::connect(entry_a.addr).unwrap();
    assert_eq!(round_trip(&mut a2, b"a new one"), Ok(b"a new one".to_vec()));
    assert_eq!(accepted.load(Ordering::Relaxed), 3);
    eprintln!("the exit's log:\n{}", exit.lines().join("\n"));
}

#[test]
fn a_leg_answered_before_its_peer_was_revoked_and_greeted_after_starts_no_session() {
    // The gate answers a first message under the peers list in force; the Hello may come up
    // to 2 s later. A peer taken off the list in between must not get a session, which no
    // later reread would end.
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let exit_key = PrivateKey::generate(&at("exit.key")).unwrap();
    let site = PrivateKey::generate(&at("site-r.key")).unwrap();
    PrivateKey::generate(&at("site-s.key")).unwrap();
    let read = |name: &str| std::fs::read_to_string(at(name)).unwrap();
    let peers = at("peers");
    std::fs::write(
        &peers,
        format!("{}{}", read("site-r.key.pub"), read("site-s.key.pub")),
    )
    .unwrap();
    let (echo, accepted) = echo_server();
    let exit = ExitProcess::start(
        echo,
        &[
            "--private-key",
            path_str(&at("exit.key")),
            "--peers",
            path_str(&peers),
        ],
    );
    let keys = EntryKeys::Peer {
        own: site,
        exit: exit_key.public(),
    };
    // Site r is taken off the list; until the exit has reread it, legs keep being answered.
    std::fs::write(&peers, read("site-s.key.pub")).unwrap();
    let mut answered: Vec<(Instant, Leg)> = Vec::new();
    assert!(
        wait_until(WAIT, || {
            if exit.said("revoked: site-r") {
                return true;
            }
            let leg = TcpStream::connect(exit.addr)
                .map_err(LegError::from)
                .and_then(|s| Leg::initiate(s, &keys, Duration::from_secs(1)));
            if let Ok(leg) = leg {
                answered.push((Instant::now(), leg));
            }
            std::thread::sleep(Duration::from_millis(40));
            false
        }),
        "the exit rereads its peers list: {:#?}",
        exit.lines()
    );
    // The legs answered shortly before the reread still have time for their Hello (2 s).
    let fresh: Vec<Leg> = answered
        .into_iter()
        .filter(|(when, _)| when.elapsed() < Duration::from_millis(1200))
        .map(|(_, leg)| leg)
        .collect();
    assert!(!fresh.is_empty(), "a leg was answered before the reread");
    let tried = fresh.len();
    for mut leg in fresh {
        let hello = Frame::Hello {
            session: SessionId::NEW,
            token: Token::default(),
            received: 0,
        };
        if leg.send_now(&hello).is_err() {
            continue;
        }
        let mut plain = vec![0u8; MAX_PLAINTEXT];
        let answer = leg
            .recv_now(&mut plain)
            .map(|n| format!("{:?}", Frame::decode(&plain[..n])));
        assert!(
            !matches!(&answer, Ok(a) if a.contains("Welcome")),
            "a revoked peer was welcomed: {answer:?}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        0,
        "nothing opened for a revoked peer ({tried} legs greeted after the reread)"
    );
}

/// Reads one length-prefixed record.
fn read_record(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut record = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut record).unwrap();
    record
}

fn write_record(stream: &mut TcpStream, record: &[u8]) {
    let mut out = (record.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(record);
    stream.write_all(&out).unwrap();
}

/// Reads the exit's next message on `stream` and checks it is a Welcome to a new session.
fn welcomed(stream: &mut TcpStream, noise: &mut snow::TransportState, plain: &mut [u8]) {
    let sealed = read_record(stream);
    let n = noise.read_message(&sealed, plain).unwrap();
    assert!(
        matches!(
            Frame::decode(&plain[..n]),
            Ok(Frame::Welcome { received: 0, .. })
        ),
        "{:?}",
        Frame::decode(&plain[..n])
    );
}

#[test]
fn the_pre_shared_key_mode_keeps_its_documented_wire_format() {
    // An initiator written from the documented format alone (Noise_NNpsk0_25519_AESGCM_BLAKE2s,
    // prologue "idlegate tunnel 3", the key file's 32 bytes as the PSK, 2-byte lengths) opens
    // a session on today's exit (the per-peer mode left the pre-shared-key mode as it was),
    // ends it whole, and opens the next one on the same leg after the exit's Done.
    let dir = tempfile::tempdir().unwrap();
    let (_, key_path) = write_key(dir.path());
    let (echo, accepted) = echo_server();
    let exit = ExitProcess::start(echo, &["--key", path_str(&key_path)]);
    let mut stream = TcpStream::connect(exit.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut hs = psk_initiator(&key_path);
    let mut buf = vec![0u8; 65_535];
    let n = hs.write_message(&[], &mut buf).unwrap();
    write_record(&mut stream, &buf[..n]);
    let answer = read_record(&mut stream);
    hs.read_message(&answer, &mut buf).unwrap();
    let mut noise = hs.into_transport_mode().unwrap();
    let mut hello = Vec::new();
    Frame::Hello {
        session: SessionId::NEW,
        token: Token::default(),
        received: 0,
    }
    .encode(&mut hello);
    let n = noise.write_message(&hello, &mut buf).unwrap();
    write_record(&mut stream, &buf[..n]);
    let mut plain = vec![0u8; MAX_PLAINTEXT];
    welcomed(&mut stream, &mut noise, &mut plain);
    assert!(wait_until(WAIT, || accepted.load(Ordering::Relaxed) == 1));
    // The session, whole: "ping" and a FIN each way, each acknowledged (a FIN takes the offset
    // after the last byte); then the exit's Done frees the leg for a new Hello.
    let mut stream_w = stream.try_clone().unwrap();
    let mut send = |noise: &mut snow::TransportState, frame: Frame| {
        let mut plain = Vec::new();
        frame.encode(&mut plain);
        let n = noise.write_message(&plain, &mut buf).unwrap();
        write_record(&mut stream_w, &buf[..n]);
    };
    send(
        &mut noise,
        Frame::Data {
            offset: 0,
            bytes: b"ping",
        },
    );
    send(&mut noise, Frame::Fin { offset: 4 });
    let (mut echoed, mut done) = (Vec::new(), false);
    while !done {
        let sealed = read_record(&mut stream);
        let n = noise.read_message(&sealed, &mut plain).unwrap();
        match Frame::decode(&plain[..n]).unwrap() {
            Frame::Data { bytes, .. } => echoed.extend_from_slice(bytes),
            Frame::Fin { offset } => {
                assert_eq!(offset, 4);
                send(
                    &mut noise,
                    Frame::Ack {
                        received: 5,
                        limit: 1 << 22,
                    },
                );
            }
            Frame::Ack { .. } => {}
            Frame::Done => done = true,
            other => panic!("{other:?} before Done"),
        }
    }
    assert_eq!(echoed, b"ping");
    send(
        &mut noise,
        Frame::Hello {
            session: SessionId::NEW,
            token: Token::default(),
            received: 0,
        },
    );
    welcomed(&mut stream, &mut noise, &mut plain);
    assert!(wait_until(WAIT, || accepted.load(Ordering::Relaxed) == 2));
}

#[test]
fn bad_key_and_peers_files_are_refused_before_the_tunnel_starts_with_the_file_line_and_a_hint() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let (ok, _, said) = idlegate(&["keygen", "--pair", path_str(&at("exit.key"))]);
    assert!(ok, "{said}");
    let good = PrivateKey::generate(&at("site.key")).unwrap().public();
    let (_, pair_key) = write_key(dir.path());
    std::fs::copy(at("exit.key"), at("open.key")).unwrap();
    std::fs::set_permissions(at("open.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        at("bad-line"),
        format!("# sites\n{good} site\nnot-a-key x\n"),
    )
    .unwrap();
    std::fs::write(at("twice"), format!("{good} a\n\n{good} b\n")).unwrap();
    std::fs::write(at("peers"), format!("{good} site\n")).unwrap();
    let (exit_key, peers) = (at("exit.key"), at("peers"));
    let (exit_key, peers) = (path_str(&exit_key), path_str(&peers));
    let exit = |key: &str, peers: &str| -> Vec<String> {
        [
            "relay",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:9",
            "--private-key",
            key,
            "--peers",
            peers,
        ]
        .map(String::from)
        .to_vec()
    };
    let entry = |key: &str, exit_public: &str| -> Vec<String> {
        [
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:9",
            "--private-key",
            key,
            "--exit-public-key",
            exit_public,
        ]
        .map(String::from)
        .to_vec()
    };
    let open = at("open.key");
    let bad_line = at("bad-line");
    let twice = at("twice");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            exit(path_str(&open), peers),
            format!(
                "idlegate: --private-key: {}: mode 644 lets others read the private key\nhint: chmod 600 {}",
                open.display(),
                open.display()
            ),
        ),
        (
            exit(exit_key, path_str(&bad_line)),
            format!(
                "idlegate: --peers: {}:3: not a public key: expected 44 characters of base64",
                bad_line.display()
            ),
        ),
        (
            exit(exit_key, path_str(&twice)),
            format!(
                "idlegate: --peers: {}:3: the key of line 1 again",
                twice.display()
            ),
        ),
        (
            exit(path_str(&pair_key), peers),
            format!(
                "idlegate: --private-key: {}:1: not a private key (a tunnel key made by `idlegate keygen FILE` goes to --key)",
                pair_key.display()
            ),
        ),
        (
            entry(exit_key, "no-such-key"),
            "idlegate: --exit-public-key no-such-key: not a public key".to_string(),
        ),
        (
            exit(exit_key, peers)[..7].to_vec(),
            "idlegate: --private-key on a tunnel exit: --peers is missing".to_string(),
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, said) = idlegate(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(
            said.starts_with(&want),
            "{args:?}:\n{said}\nshould start with\n{want}"
        );
        assert!(said.contains("\nhint: "), "{args:?}: no hint in\n{said}");
    }
}
