//! Soak, for `scripts/soak` (root): thousands of concurrent connections through a lab's
//! gateway, and a quarter of them through `idlegate relay`, for minutes, with idle gaps
//! shorter and longer than the box's idle timeout.
//!
//! `soak --idlegate PATH --connections N --seconds S`
//!
//! It brings up `idlegate lab up` (Azure LB, 4 min scaled to 3 s, silent expiry), a relay in the
//! lab's internet host and an echo server in `vm1` (`soak echo ADDR CONNECTIONS`, a process of
//! its own so that each side has its own descriptor limit), then runs four kinds of
//! connection, a quarter each, every one sending 64-byte numbered messages that are echoed:
//! - `steady`: gaps of 0.2–2 s, under the idle timeout: every message must come back;
//! - `keepalive`: gaps of 4–8 s with TCP keepalive every second: every message must come back;
//! - `relay`: gaps of 4–8 s through the relay, no keepalive of their own: every message must
//!   come back;
//! - `expiring`: one gap of 4–8 s without keepalive: the box forgets the flow, so the message
//!   after the gap is lost and the connection times out, as designed (counted, not a failure).
//!
//! It samples the gateway's and the relay's memory (RSS) and open descriptors once every
//! connection is up and again at the end, prints a table, and exits 1 if a promised message
//! was lost or a connection of the first three kinds failed.

use idlegate::keepalive::Keepalive;
use idlegate::netns;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::BinaryHeap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

const MESSAGE: usize = 64;
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const LISTENER: Token = Token(usize::MAX);
const CONFIG: &str = r#"profile = "azure-lb"
time_scale = 80
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[lb_rule]]
name = "soak"
frontend = "public"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
expiry = "silent"
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Steady,
    Keepalive,
    Relay,
    Expiring,
}

const KINDS: [Kind; 4] = [Kind::Steady, Kind::Keepalive, Kind::Relay, Kind::Expiring];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Steady => "steady",
            Kind::Keepalive => "keepalive",
            Kind::Relay => "relay",
            Kind::Expiring => "expiring",
        }
    }

    /// The gap before the next message, from a 0..1 draw.
    fn gap(self, draw: f64) -> Duration {
        match self {
            Kind::Steady => Duration::from_secs_f64(0.2 + 1.8 * draw),
            _ => Duration::from_secs_f64(4.0 + 4.0 * draw),
        }
    }
}

/// One client connection and what it is waiting for.
struct Client {
    kind: Kind,
    stream: TcpStream,
    seq: u64,
    /// Bytes of the echo of message `seq` received so far.
    echoed: usize,
    /// A message is out and not yet echoed whole.
    waiting: bool,
    done: bool,
    failed: Option<String>,
}

/// One server-side connection: echoes what it reads.
struct Echo {
    stream: TcpStream,
    pending: Vec<u8>,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    connections: usize,
    messages: u64,
    bytes: u64,
    lost: u64,
    failed: usize,
}

/// xorshift, fixed seed: the same run every time.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("echo") {
        // The server side, a process of its own (its own descriptor limit), in vm1.
        let addr: SocketAddr = args.get(2).ok_or("echo ADDR")?.parse()?;
        raise_fd_limit(args.get(3).ok_or("echo ADDR CONNECTIONS")?.parse::<u64>()? + 1024)?;
        return echo_server(addr);
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let idlegate = value("--idlegate").ok_or("--idlegate PATH")?;
    let connections: usize = value("--connections").unwrap_or("10000".into()).parse()?;
    let seconds: u64 = value("--seconds").unwrap_or("600".into()).parse()?;
    // The client end of every connection; the echo server and the relay are processes of
    // their own.
    raise_fd_limit(connections as u64 + 1024)?;

    let name = format!("soak{}", std::process::id() % 100_000);
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("soak.toml");
    std::fs::write(&config, CONFIG)?;
    let mut lab = Command::new(&idlegate)
        .args(["lab", "up", "--name", &name, "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("lab.log"))?)
        .spawn()?;
    let stdout = lab.stdout.take().ok_or("lab up's stdout")?;
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "ready");
    let result = if ready {
        soak(
            &idlegate,
            &name,
            connections,
            Duration::from_secs(seconds),
            &lab,
        )
    } else {
        Err("lab up did not print ready".into())
    };
    stop(&mut lab);
    if result.is_err() {
        eprintln!(
            "{}",
            std::fs::read_to_string(dir.path().join("lab.log")).unwrap_or_default()
        );
    }
    result
}

fn soak(
    idlegate: &str,
    lab: &str,
    connections: usize,
    length: Duration,
    lab_process: &Child,
) -> Result<(), Error> {
    let vm1 = format!("ig-{lab}-vm1");
    let internet = format!("ig-{lab}-internet");
    let frontend: SocketAddr = "203.0.113.10:7000".parse()?;
    let relay_at: SocketAddr = "127.0.0.1:9000".parse()?;
    let server: SocketAddr = "192.0.2.11:7000".parse()?;

    let me = std::env::current_exe()?;
    let mut echo = Command::new("ip")
        .args(["netns", "exec", &vm1])
        .arg(&me)
        .args(["echo", &server.to_string(), &connections.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let listening = echo
        .stdout
        .take()
        .map(|out| {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .any(|l| l == "listening")
        })
        .unwrap_or(false);
    if !listening {
        stop(&mut echo);
        return Err("the echo server did not start".into());
    }

    let mut relay = Command::new("ip")
        .args(["netns", "exec", &internet, idlegate, "relay"])
        .args([
            "--listen",
            "127.0.0.1:9000",
            "--connect",
            "203.0.113.10:7000",
        ])
        .args(["--keepalive", "1s,1s,3", "--max-connections"])
        .arg((connections + 100).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let outcome = run(
        &internet,
        connections,
        length,
        frontend,
        relay_at,
        lab_process.id(),
        relay.id(),
    );
    stop(&mut relay);
    stop(&mut echo);
    outcome
}

#[allow(clippy::too_many_arguments)]
fn run(
    internet: &str,
    connections: usize,
    length: Duration,
    frontend: SocketAddr,
    relay_at: SocketAddr,
    lab_pid: u32,
    relay_pid: u32,
) -> Result<(), Error> {
    // The relay listens once its namespace has it up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while netns::spawn_in(internet, move || std::net::TcpStream::connect(relay_at))?
        .join()
        .map_err(|_| "probe thread")?
        .is_err()
    {
        if Instant::now() > deadline {
            return Err("the relay did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut poll = Poll::new()?;
    let keepalive = Keepalive::parse("1s,1s,3")?;
    let mut clients: Vec<Client> = Vec::with_capacity(connections);
    // Connect in batches, each from the internet host's namespace.
    for batch in (0..connections).collect::<Vec<_>>().chunks(500) {
        let batch = batch.to_vec();
        let made = netns::spawn_in(
            internet,
            move || -> std::io::Result<Vec<(Kind, std::net::TcpStream)>> {
                batch
                    .iter()
                    .map(|&i| {
                        let kind = KINDS[i % KINDS.len()];
                        let to = if kind == Kind::Relay {
                            relay_at
                        } else {
                            frontend
                        };
                        let stream =
                            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
                        match kind {
                            Kind::Keepalive => keepalive.apply(&stream)?,
                            // The message after the gap must fail, not hang: 3 s for an ACK.
                            Kind::Expiring => socket2::SockRef::from(&stream)
                                .set_tcp_user_timeout(Some(Duration::from_secs(3)))?,
                            _ => {}
                        }
                        stream.set_nodelay(true)?;
                        Ok((kind, stream))
                    })
                    .collect()
            },
        )?
        .join()
        .map_err(|_| "connect thread")??;
        for (kind, stream) in made {
            stream.set_nonblocking(true)?;
            let mut stream = TcpStream::from_std(stream);
            let token = Token(2 * clients.len());
            poll.registry()
                .register(&mut stream, token, Interest::READABLE)?;
            clients.push(Client {
                kind,
                stream,
                seq: 0,
                echoed: 0,
                waiting: false,
                done: false,
                failed: None,
            });
        }
    }
    let start_gateway = sample(lab_pid);
    let start_relay = sample(relay_pid);

    let mut draw = Draw(0x2545_f491_4f6c_dd1d);
    let mut due: BinaryHeap<std::cmp::Reverse<(Instant, usize)>> = BinaryHeap::new();
    let begin = Instant::now();
    for i in 0..clients.len() {
        let at = begin + Duration::from_secs_f64(draw.next());
        due.push(std::cmp::Reverse((at, i)));
    }
    let end = begin + length;
    let mut tally = [Tally::default(); 4];
    for c in &clients {
        tally[c.kind as usize].connections += 1;
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        // Send what is due, unless the soak is over.
        while let Some(std::cmp::Reverse((at, i))) = due.peek().copied() {
            if at > now {
                break;
            }
            due.pop();
            let c = &mut clients[i];
            if c.done || c.waiting || now >= end {
                continue;
            }
            c.seq += 1;
            let mut message = [0x5au8; MESSAGE];
            message[..8].copy_from_slice(&c.seq.to_be_bytes());
            match c.stream.write(&message) {
                Ok(MESSAGE) => {
                    c.waiting = true;
                    c.echoed = 0;
                    tally[c.kind as usize].messages += 1;
                }
                Ok(n) => c.failed = Some(format!("wrote {n} of {MESSAGE} bytes")),
                Err(e) => c.failed = Some(e.to_string()),
            }
            if c.failed.is_some() {
                c.done = true;
            }
        }
        let all_idle = clients.iter().all(|c| c.done || !c.waiting);
        if now >= end && (all_idle || now >= end + Duration::from_secs(10)) {
            break;
        }
        let next = due
            .peek()
            .map(|std::cmp::Reverse((at, _))| at.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        poll.poll(&mut events, Some(next))?;
        for event in events.iter() {
            let Token(t) = event.token();
            let c = &mut clients[t / 2];
            receive(c, &mut buf, &mut tally[c.kind as usize]);
            if !c.done && !c.waiting {
                let gap = c.kind.gap(draw.next());
                due.push(std::cmp::Reverse((Instant::now() + gap, t / 2)));
            }
        }
    }
    let end_gateway = sample(lab_pid);
    let end_relay = sample(relay_pid);

    // A message still out at the end is lost, except on a connection that expired as designed.
    let mut expired_as_designed = 0;
    for c in &clients {
        let t = &mut tally[c.kind as usize];
        match (c.kind, &c.failed) {
            (Kind::Expiring, Some(_)) => expired_as_designed += 1,
            (Kind::Expiring, None) => {}
            (_, Some(e)) => {
                t.failed += 1;
                eprintln!("{} connection failed: {e}", c.kind.name());
            }
            (_, None) => t.lost += u64::from(c.waiting),
        }
    }
    println!(
        "soak: {connections} connections for {} s through the lab's gateway (idle timeout {} s), a quarter through the relay",
        length.as_secs(),
        IDLE_TIMEOUT.as_secs()
    );
    println!(
        "{:<10} {:>11} {:>10} {:>12} {:>6} {:>7}",
        "kind", "connections", "messages", "bytes echoed", "lost", "failed"
    );
    for kind in KINDS {
        let t = tally[kind as usize];
        println!(
            "{:<10} {:>11} {:>10} {:>12} {:>6} {:>7}",
            kind.name(),
            t.connections,
            t.messages,
            t.bytes,
            if kind == Kind::Expiring {
                "-".to_string()
            } else {
                t.lost.to_string()
            },
            if kind == Kind::Expiring {
                "-".to_string()
            } else {
                t.failed.to_string()
            }
        );
    }
    let expiring = tally[Kind::Expiring as usize].connections;
    println!("expiring: {expired_as_designed} of {expiring} lost their connection after the long gap, as the box promises");
    for (what, start, end) in [
        ("gateway (lab up)", start_gateway, end_gateway),
        ("relay", start_relay, end_relay),
    ] {
        println!(
            "{what:<17} RSS {} → {} KiB, open descriptors {} → {}",
            start.0, end.0, start.1, end.1
        );
    }
    let broken: u64 = [Kind::Steady, Kind::Keepalive, Kind::Relay]
        .iter()
        .map(|&k| tally[k as usize].lost + tally[k as usize].failed as u64)
        .sum();
    if broken > 0 {
        return Err(format!("{broken} promised messages or connections lost").into());
    }
    Ok(())
}

/// The echo server: every byte read on every connection is written back, until killed.
fn echo_server(addr: SocketAddr) -> Result<(), Error> {
    let std_listener = idlegate::relay::listen(addr)?;
    std_listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(std_listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening");
    let mut echoes: Vec<Echo> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            match event.token() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let token = Token(echoes.len());
                            poll.registry()
                                .register(&mut stream, token, Interest::READABLE)?;
                            echoes.push(Echo {
                                stream,
                                pending: Vec::new(),
                            });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                },
                Token(t) => serve(&mut echoes[t], &mut buf),
            }
        }
    }
}

/// Echoes what the server side of a connection can read.
fn serve(echo: &mut Echo, buf: &mut [u8]) {
    loop {
        match echo.stream.read(buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => echo.pending.extend_from_slice(&buf[..n]),
        }
        while !echo.pending.is_empty() {
            match echo.stream.write(&echo.pending) {
                Ok(n) => {
                    echo.pending.drain(..n);
                }
                Err(_) => return,
            }
        }
    }
}

/// Reads a client's echo; a whole one ends the wait for it.
fn receive(c: &mut Client, buf: &mut [u8], tally: &mut Tally) {
    loop {
        match c.stream.read(buf) {
            Ok(0) => {
                c.failed
                    .get_or_insert_with(|| "closed by the far end".into());
                c.done = true;
                return;
            }
            Ok(n) => {
                c.echoed += n;
                tally.bytes += n as u64;
                if c.echoed >= MESSAGE {
                    c.waiting = false;
                    c.echoed = 0;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                c.failed.get_or_insert_with(|| e.to_string());
                c.done = true;
                return;
            }
        }
    }
}

/// A process's resident memory (KiB) and open descriptors.
fn sample(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

fn stop(child: &mut Child) {
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Raises this process's soft descriptor limit to at least `want` (within the hard limit);
/// children inherit it.
fn raise_fd_limit(want: u64) -> Result<(), Error> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if limit.rlim_max < want {
            return Err(format!(
                "{want} descriptors needed, the hard limit is {} (ulimit -Hn)",
                limit.rlim_max
            )
            .into());
        }
        limit.rlim_cur = limit.rlim_cur.max(want);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}
