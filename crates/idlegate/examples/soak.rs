//! Soak, for `scripts/soak` (root): thousands of concurrent connections through a lab's
//! gateway and as many through `idlegate relay` (and the gateway after it), for minutes, with
//! idle gaps shorter and longer than the box's idle timeout.
//!
//! `soak --idlegate PATH --connections N --seconds S`
//!
//! It brings up `idlegate lab up` (Azure LB, 4 min scaled to 4 s, the demo's scale of 60, silent
//! expiry), a relay in the
//! lab's internet host and an echo server in `vm1` (`soak echo ADDR CONNECTIONS`, a process of
//! its own so that each side has its own descriptor limit), then runs N connections through
//! the relay and N straight to the gateway, a third each of the other three kinds, every one
//! sending 64-byte numbered messages whose echo must come back byte for byte:
//! - `steady`: gaps of 0.2–2 s, under the idle timeout: every message must come back;
//! - `keepalive`: gaps of 5.5–8 s with TCP keepalive every second: every message must come
//!   back;
//! - `relay`: gaps of 5.5–8 s through the relay, no keepalive of their own: every message must
//!   come back;
//! - `expiring`: one gap of 5.5–8 s without keepalive: the box forgets the flow, so the message
//!   after the gap is lost and the connection times out, as designed (counted, not a failure).
//!
//! It samples the gateway's and the relay's memory (RSS) and open descriptors once every
//! connection is up and again at the end, prints a table, and fails unless both stayed flat:
//! no more descriptors at the end, and RSS grown by at most 5% + 1 MiB.
//!
//! Then come the faults, mid-traffic, with the soak's connections still open:
//! 1. `kill -9` of the relay while each of its clients has a message out: every client is
//!    told (end of stream or reset) within 10 s, none is left hanging, and a relay started again
//!    on the same port carries new connections;
//! 2. `kill -9` of `lab up` while the gateway's connections have messages out: its TUN devices
//!    vanish with it, the next `lab up` of the same name removes the namespaces it left and
//!    stops the programs in them (the old echo server), its gateway starts with no flows, and
//!    new connections through it are echoed.
//!
//! (The kill -9 of a standalone `idlegate gateway` under a resumable tunnel, which must lose no
//! byte, is the test `a_tunnel_through_the_gateway_resumes_after_the_gateway_is_killed_and_restarted`.)
//!
//! It exits 1 if a promised message was lost, a connection of the first three kinds failed, or
//! a fault did not end as described; after the last `lab up` stops, no namespace of the soak's
//! lab may be left.

use idlegate::survive::keepalive::Keepalive;
use idlegate::sys::netns;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::BinaryHeap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

const MESSAGE: usize = 64;
/// The box's idle timeout: Azure's 4 min divided by the config's `time_scale` of 60, the
/// demo's (examples/azure-lb.toml). The scale divides the handshake timer (30 s) too, but the
/// engine floors the timers that race TCP's own, unscaled retransmissions at 3 s
/// (`TCP_RETRANSMISSION_FLOOR`): a handshake that loses a packet in the first second's burst of
/// 20,000 connects is recovered by its retransmission 1 s later, as in real time.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// TCP keepalive for the `keepalive` connections and the relay's: a probe after 1 s idle, then
/// every second, 9 unanswered (Linux's default count) before the connection is given up. With 3,
/// ten thousand connections made in the same second probe in step, and this 2-core machine's
/// kernel dropped bursts of them (softnet backlog, 1,000 packets): 3 lost in a row killed 85 of
/// 9,700 relayed connections in ten minutes. Any probe that reaches the gateway refreshes the
/// flow, lost afterwards or not. With the 4 s idle timeout three probes (1, 2 and 3 s into a
/// gap) must all be lost for a flow to expire; 1 s is the shortest idle time TCP_KEEPIDLE
/// takes.
const KEEPALIVE: &str = "1s,1s,9";
/// How long a fault may take to show (a client told, a process gone, a lab up).
const FAULT_WAIT: Duration = Duration::from_secs(10);
/// New connections made after each fault, each of which must be echoed.
const AFTER_FAULT: usize = 100;
const LISTENER: Token = Token(usize::MAX);
const CONFIG: &str = r#"profile = "azure-lb"
time_scale = 60
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

/// How many connections go straight to the gateway and how many through the relay.
#[derive(Debug, Clone, Copy)]
struct Load {
    straight: usize,
    relayed: usize,
}

impl Load {
    fn total(self) -> usize {
        self.straight + self.relayed
    }

    /// Connection `i`'s kind, in the order they connect: the relayed ones first (the relay
    /// keeps its own connections alive while the rest connect), then the straight ones a third
    /// each, the steady ones last.
    fn kind_of(self, i: usize) -> Kind {
        let third = self.straight / 3;
        match i.checked_sub(self.relayed) {
            None => Kind::Relay,
            Some(j) if j < third => Kind::Keepalive,
            Some(j) if j < 2 * third => Kind::Expiring,
            Some(_) => Kind::Steady,
        }
    }
}

/// Message `seq`: its number, then filler.
fn message(seq: u64) -> [u8; MESSAGE] {
    let mut m = [0x5a; MESSAGE];
    m[..8].copy_from_slice(&seq.to_be_bytes());
    m
}

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
            // Past the 4 s idle timeout by 1.5 s at least, a margin a loaded machine holds.
            _ => Duration::from_secs_f64(5.5 + 2.5 * draw),
        }
    }
}

/// One client connection and what it is waiting for.
struct Client {
    kind: Kind,
    stream: TcpStream,
    seq: u64,
    /// The echo of message `seq` received so far: `echo[..echoed]`.
    echo: [u8; MESSAGE],
    echoed: usize,
    /// A message is out and not yet echoed whole.
    waiting: bool,
    done: bool,
    failed: Option<String>,
    /// When the soak saw it fail.
    failed_at: Option<Instant>,
}

impl Client {
    /// Sends the next message; false, and the connection done, if it could not.
    fn send_next(&mut self) -> bool {
        self.seq += 1;
        match self.stream.write(&message(self.seq)) {
            Ok(MESSAGE) => {
                self.waiting = true;
                self.echoed = 0;
                return true;
            }
            Ok(n) => self.failed = Some(format!("wrote {n} of {MESSAGE} bytes")),
            Err(e) => self.failed = Some(e.to_string()),
        }
        self.done = true;
        false
    }
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
        let connections: u64 = args.get(3).ok_or("echo ADDR CONNECTIONS")?.parse()?;
        idlegate::sys::rlimit::raise_descriptor_limit(connections + 1024)?;
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
    // their own, and inherit the limit. The client holds one descriptor a connection, the
    // relay two for each of its own (and those made after its kill): as many go through the
    // relay as both can hold, up to N.
    let have =
        idlegate::sys::rlimit::raise_descriptor_limit(4 * connections as u64 + 1024)? as usize;
    let room_client = have.saturating_sub(connections + 300);
    let room_relay = (have.saturating_sub(100) / 2).saturating_sub(2 * AFTER_FAULT);
    let load = Load {
        straight: connections,
        relayed: connections.min(room_client).min(room_relay),
    };
    if load.relayed < connections {
        println!(
            "the descriptor limit here is {have} (and cannot be raised: ulimit -Hn): {} connections through the relay, not {connections}",
            load.relayed
        );
    }

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("soak.toml");
    std::fs::write(&config, CONFIG)?;
    let mut soak = Soak {
        idlegate,
        lab: format!("soak{}", std::process::id() % 100_000),
        config,
        logs: dir.path().to_path_buf(),
        load,
        processes: Vec::new(),
    };
    let result = soak.run(Duration::from_secs(seconds));
    // Every process the soak started, the last lab up last: it removes its namespaces.
    for mut child in soak.processes.drain(..).rev() {
        stop(&mut child);
    }
    let result = result.and_then(|()| {
        let left = namespaces_of(&soak.lab)?;
        if left.is_empty() {
            println!(
                "after the last lab up stopped: no namespace of lab {} left",
                soak.lab
            );
            Ok(())
        } else {
            Err(format!("namespaces left after lab up stopped: {}", left.join(" ")).into())
        }
    });
    if result.is_err() {
        for log in ["lab.log", "lab-again.log", "relay.log"] {
            if let Ok(text) = std::fs::read_to_string(dir.path().join(log)) {
                eprintln!("{log}:\n{text}");
            }
        }
    }
    result
}

/// The soak's settings and the processes it started (stopped in reverse order at the end).
struct Soak {
    idlegate: String,
    lab: String,
    config: std::path::PathBuf,
    logs: std::path::PathBuf,
    load: Load,
    processes: Vec<Child>,
}

const FRONTEND: &str = "203.0.113.10:7000";
const RELAY_AT: &str = "127.0.0.1:9000";
const SERVER: &str = "192.0.2.11:7000";

impl Soak {
    fn run(&mut self, length: Duration) -> Result<(), Error> {
        let lab = self.start_lab("lab.log")?;
        let echo = self.start_echo()?;
        let relay = self.start_relay()?;
        let (lab_pid, relay_pid) = (self.processes[lab].id(), self.processes[relay].id());
        let mut live = soak(
            &self.namespace("internet"),
            self.load,
            length,
            lab_pid,
            relay_pid,
        )?;
        self.kill_relay(&mut live, relay)?;
        self.kill_lab(&mut live, lab, echo)
    }

    fn namespace(&self, host: &str) -> String {
        format!("ig-{}-{host}", self.lab)
    }

    /// Starts `lab up` and waits for its "ready"; returns its index in `processes`.
    fn start_lab(&mut self, log: &str) -> Result<usize, Error> {
        let mut lab = Command::new(&self.idlegate)
            .args(["lab", "up", "--name", &self.lab, "--config"])
            .arg(&self.config)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.logs.join(log))?)
            .spawn()?;
        let stdout = lab.stdout.take().ok_or("lab up's stdout")?;
        self.processes.push(lab);
        let ready = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l == "ready");
        if !ready {
            return Err("lab up did not print ready".into());
        }
        Ok(self.processes.len() - 1)
    }

    /// Starts the echo server in vm1 and waits for it to listen.
    fn start_echo(&mut self) -> Result<usize, Error> {
        let mut echo = Command::new("ip")
            .args(["netns", "exec", &self.namespace("vm1")])
            .arg(std::env::current_exe()?)
            .args(["echo", SERVER, &self.load.total().to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        let out = echo.stdout.take();
        self.processes.push(echo);
        let listening = out.is_some_and(|out| {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .any(|l| l == "listening")
        });
        if !listening {
            return Err("the echo server did not start".into());
        }
        Ok(self.processes.len() - 1)
    }

    /// Starts `idlegate relay` in the internet host and waits for it to listen.
    fn start_relay(&mut self) -> Result<usize, Error> {
        let internet = self.namespace("internet");
        let relay = Command::new("ip")
            .args(["netns", "exec", &internet, &self.idlegate, "relay"])
            .args(["--listen", RELAY_AT, "--connect", FRONTEND])
            .args(["--keepalive", KEEPALIVE, "--max-connections"])
            .arg((self.load.relayed + 2 * AFTER_FAULT).to_string())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.logs.join("relay.log"))?,
            )
            .spawn()?;
        self.processes.push(relay);
        let relay_at: SocketAddr = RELAY_AT.parse()?;
        let deadline = Instant::now() + FAULT_WAIT;
        while netns::spawn_in(&internet, move || std::net::TcpStream::connect(relay_at))?
            .join()
            .map_err(|_| "probe thread")?
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("the relay did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(self.processes.len() - 1)
    }

    /// Fault 1: `kill -9` of the relay while each of its clients has a message out.
    fn kill_relay(&mut self, live: &mut Live, relay: usize) -> Result<(), Error> {
        let out = live.send(|kind| kind == Kind::Relay);
        kill(&mut self.processes[relay])?;
        let (told, hanging) = live.wait_told(|kind| kind == Kind::Relay, FAULT_WAIT)?;
        self.start_relay()?;
        let echoed = echoes(&self.namespace("internet"), RELAY_AT.parse()?, AFTER_FAULT)?;
        println!(
            "kill -9 relay: {out} clients with a message out, {told} told within {} s, {hanging} left hanging; relay restarted on the same port: {echoed} of {AFTER_FAULT} new connections echoed",
            FAULT_WAIT.as_secs()
        );
        if hanging > 0 || echoed < AFTER_FAULT {
            return Err("the relay's kill -9 did not end as it must".into());
        }
        Ok(())
    }

    /// Fault 2: `kill -9` of `lab up` while the gateway's connections have messages out.
    fn kill_lab(&mut self, live: &mut Live, lab: usize, echo: usize) -> Result<(), Error> {
        let held = lab_devices(&self.lab)?;
        let out = live.send(|kind| kind != Kind::Relay);
        kill(&mut self.processes[lab])?;
        let left = namespaces_of(&self.lab)?;
        let devices = lab_devices(&self.lab)?;
        println!(
            "kill -9 lab up ({held} TUN devices): {out} connections with a message out; {} namespaces left with {devices} TUN devices in them",
            left.len()
        );
        if held == 0 || devices > 0 {
            return Err("TUN devices outlived the killed lab up (or there were none)".into());
        }
        live.clients.clear();
        self.start_lab("lab-again.log")?;
        let log = std::fs::read_to_string(self.logs.join("lab-again.log"))?;
        let removed = log.matches("left by an earlier run").count();
        let echo_gone = exits_within(&mut self.processes[echo], FAULT_WAIT);
        let flows = Command::new(&self.idlegate)
            .args(["flows", "--lab", &self.lab, "--json"])
            .output()?;
        let no_flows =
            flows.status.success() && String::from_utf8_lossy(&flows.stdout).trim() == "[]";
        self.start_echo()?;
        let echoed = echoes(&self.namespace("internet"), FRONTEND.parse()?, AFTER_FAULT)?;
        println!(
            "lab up again: removed {removed} namespaces left by the killed one, the old echo server {}, the gateway {}, {echoed} of {AFTER_FAULT} new connections echoed",
            if echo_gone { "stopped" } else { "STILL RUNNING" },
            if no_flows { "started with no flows" } else { "DID NOT START EMPTY" },
        );
        if removed != left.len() || !echo_gone || !no_flows || echoed < AFTER_FAULT {
            return Err("the restart after lab up's kill -9 did not end as it must".into());
        }
        Ok(())
    }
}

/// The soak's client connections, still open after the timed run.
struct Live {
    poll: Poll,
    clients: Vec<Client>,
}

impl Live {
    /// Sends one message on every open connection of the kinds `which` picks that is not
    /// waiting for an echo; returns how many went out.
    fn send(&mut self, which: impl Fn(Kind) -> bool) -> usize {
        let mut out = 0;
        for c in self.clients.iter_mut().filter(|c| which(c.kind) && !c.done) {
            if c.waiting || c.send_next() {
                out += 1;
            }
        }
        out
    }

    /// Reads until every open connection of the kinds `which` picks has ended (been told),
    /// or `within` has passed; returns how many were told and how many were not.
    fn wait_told(
        &mut self,
        which: impl Fn(Kind) -> bool,
        within: Duration,
    ) -> Result<(usize, usize), Error> {
        let picked: Vec<usize> = (0..self.clients.len())
            .filter(|&i| which(self.clients[i].kind) && !self.clients[i].done)
            .collect();
        let deadline = Instant::now() + within;
        let mut events = Events::with_capacity(1024);
        let mut buf = [0u8; 4096];
        let mut scratch = Tally::default();
        while picked.iter().any(|&i| !self.clients[i].done) && Instant::now() < deadline {
            self.poll
                .poll(&mut events, Some(Duration::from_millis(100)))?;
            for event in events.iter() {
                let c = &mut self.clients[event.token().0 / 2];
                receive(c, &mut buf, &mut scratch);
            }
        }
        let told = picked.iter().filter(|&&i| self.clients[i].done).count();
        Ok((told, picked.len() - told))
    }
}

/// Makes `count` new connections to `to` from namespace `ns`, sends a message on each and
/// returns how many were echoed whole within [`FAULT_WAIT`].
fn echoes(ns: &str, to: SocketAddr, count: usize) -> Result<usize, Error> {
    let echoed = netns::spawn_in(ns, move || {
        (0..count)
            .filter(|_| {
                let once = || -> std::io::Result<()> {
                    let mut s = std::net::TcpStream::connect_timeout(&to, FAULT_WAIT)?;
                    s.set_read_timeout(Some(FAULT_WAIT))?;
                    s.write_all(&[0x5a; MESSAGE])?;
                    let mut back = [0u8; MESSAGE];
                    s.read_exact(&mut back)?;
                    if back == [0x5a; MESSAGE] {
                        Ok(())
                    } else {
                        Err(std::io::Error::other("a different echo"))
                    }
                };
                once().is_ok()
            })
            .count()
    })?
    .join()
    .map_err(|_| "echo thread")?;
    Ok(echoed)
}

/// The namespaces of lab `lab` that exist now.
fn namespaces_of(lab: &str) -> Result<Vec<String>, Error> {
    let prefix = format!("ig-{lab}-");
    Ok(netns::list()?
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect())
}

/// How many TUN devices the namespaces of lab `lab` hold.
fn lab_devices(lab: &str) -> Result<usize, Error> {
    namespaces_of(lab)?.iter().map(|ns| devices_in(ns)).sum()
}

/// How many TUN devices namespace `ns` holds.
fn devices_in(ns: &str) -> Result<usize, Error> {
    let listed = Command::new("ip")
        .args(["-n", ns, "-d", "-o", "link", "show"])
        .output()?;
    if !listed.status.success() {
        return Err(format!(
            "ip -n {ns} link show: {}",
            String::from_utf8_lossy(&listed.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.contains(" tun "))
        .count())
}

/// SIGKILL, no chance to clean up; waits for the process to be gone.
fn kill(child: &mut Child) -> Result<(), Error> {
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// Whether `child` exits (by anyone's hand) within `within`.
fn exits_within(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return false,
        }
    }
}

/// The timed run: connects every client from the internet host, exchanges messages for
/// `length`, prints the table and returns the connections, still open.
fn soak(
    internet: &str,
    load: Load,
    length: Duration,
    lab_pid: u32,
    relay_pid: u32,
) -> Result<Live, Error> {
    let frontend: SocketAddr = FRONTEND.parse()?;
    let relay_at: SocketAddr = RELAY_AT.parse()?;
    let mut poll = Poll::new()?;
    let keepalive = Keepalive::parse(KEEPALIVE)?;
    let mut clients: Vec<Client> = Vec::with_capacity(load.total());
    let relay_base = sample(relay_pid).1;
    let drops_before = backlog_drops();
    // The relayed connections first, all of them, from the internet host's namespace: the
    // relay keeps its own connections to the gateway alive meanwhile.
    let (batches, connected) = std::sync::mpsc::channel();
    connect_all(
        internet,
        0..load.relayed,
        load,
        relay_at,
        frontend,
        keepalive,
        batches,
    );
    for made in connected.iter() {
        register(&mut poll, &mut clients, made?)?;
    }
    // A connect returns once the kernel has the connection, before the relay accepts it: go
    // on once the relay holds them all (two descriptors each), or has taken no more for a
    // second (the table will show what it did not carry).
    let (mut held, mut since) = (0, Instant::now());
    while held < relay_base + 2 * load.relayed && since.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(100));
        let now = sample(relay_pid).1;
        if now != held {
            (held, since) = (now, Instant::now());
        }
    }
    // Then the straight ones, in the background while the soak runs: each sends its first
    // message within a second of connecting, or four for those kept alive (all at once, 20,000
    // first messages in one second overflowed this 2-core machine's kernel backlog).
    let (batches, connected) = std::sync::mpsc::channel();
    let straight = load.relayed..load.total();
    let ns = internet.to_string();
    std::thread::spawn(move || {
        connect_all(&ns, straight, load, relay_at, frontend, keepalive, batches)
    });
    let mut connecting = Some(connected);
    let mut start = None;

    let mut draw = Draw(0x2545_f491_4f6c_dd1d);
    let mut due: BinaryHeap<std::cmp::Reverse<(Instant, usize)>> = BinaryHeap::new();
    let first = |kind: Kind, draw: &mut Draw| match kind {
        Kind::Steady | Kind::Expiring => Duration::from_secs_f64(draw.next()),
        Kind::Keepalive | Kind::Relay => Duration::from_secs_f64(4.0 * draw.next()),
    };
    let begin = Instant::now();
    for (i, c) in clients.iter().enumerate() {
        due.push(std::cmp::Reverse((begin + first(c.kind, &mut draw), i)));
    }
    let end = begin + length;
    let mut tally = [Tally::default(); 4];
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(connected) = &connecting {
            match connected.try_recv() {
                Ok(made) => {
                    let now = Instant::now();
                    for i in register(&mut poll, &mut clients, made?)? {
                        let kind = clients[i].kind;
                        due.push(std::cmp::Reverse((now + first(kind, &mut draw), i)));
                    }
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    // Every connection is up: the figures at the start.
                    connecting = None;
                    println!(
                        "connected: {} through the relay, then {} straight in {:.1} s of the soak",
                        load.relayed,
                        load.straight,
                        begin.elapsed().as_secs_f64()
                    );
                    start = Some((sample(lab_pid), sample(relay_pid)));
                }
            }
        }
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
            if c.send_next() {
                tally[c.kind as usize].messages += 1;
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
            if c.done && c.failed_at.is_none() {
                c.failed_at = Some(Instant::now());
            }
            if !c.done && !c.waiting {
                let gap = c.kind.gap(draw.next());
                due.push(std::cmp::Reverse((Instant::now() + gap, t / 2)));
            }
        }
    }
    let ((start_gateway, start_relay), end_gateway, end_relay) = match start {
        Some(start) => (start, sample(lab_pid), sample(relay_pid)),
        None => return Err("the soak ended before every connection was up".into()),
    };
    for c in &clients {
        tally[c.kind as usize].connections += 1;
    }

    // A message still out at the end is lost, except on a connection that expired as designed.
    let mut expired_as_designed = 0;
    for c in &clients {
        let t = &mut tally[c.kind as usize];
        match (c.kind, &c.failed) {
            (Kind::Expiring, Some(_)) => expired_as_designed += 1,
            (Kind::Expiring, None) => {}
            (_, Some(e)) => {
                t.failed += 1;
                let at = c
                    .failed_at
                    .map_or(0.0, |at| at.duration_since(begin).as_secs_f64());
                eprintln!(
                    "{} connection failed {at:.1} s into the soak: {e}",
                    c.kind.name()
                );
            }
            (_, None) => t.lost += u64::from(c.waiting),
        }
    }
    println!(
        "soak: {} connections through the relay and {} straight, all through the lab's gateway, for {} s (idle timeout {} s)",
        load.relayed,
        load.straight,
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
    println!(
        "kernel backlog drops (softnet, whole machine) while connecting and running: {}",
        backlog_drops() - drops_before
    );
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
    for (what, start, end) in [
        ("gateway", start_gateway, end_gateway),
        ("relay", start_relay, end_relay),
    ] {
        if end.1 > start.1 || end.0 > start.0 + start.0 / 20 + 1024 {
            return Err(format!("the {what}'s descriptors or memory grew").into());
        }
    }
    Ok(Live { poll, clients })
}

/// Connects the clients `range` names from namespace `ns`, in batches of 250, eight batches at
/// once, and sends each batch on `batches` as it is made (one after another, 10,000 took over
/// 5 s), or the first failure; returns when all are made or one failed.
fn connect_all(
    ns: &str,
    range: std::ops::Range<usize>,
    load: Load,
    relay_at: SocketAddr,
    frontend: SocketAddr,
    keepalive: Keepalive,
    batches: std::sync::mpsc::Sender<Result<Vec<(Kind, std::net::TcpStream)>, String>>,
) {
    let indices: Vec<usize> = range.collect();
    let all: Vec<Vec<usize>> = indices.chunks(250).map(<[usize]>::to_vec).collect();
    for group in all.chunks(8) {
        let mut threads = Vec::with_capacity(group.len());
        for batch in group {
            let batch = batch.clone();
            let thread = netns::spawn_in(ns, move || {
                connect_batch(&batch, load, relay_at, frontend, keepalive)
            });
            match thread {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    let _ = batches.send(Err(format!("entering {ns}: {e}")));
                    return;
                }
            }
        }
        for thread in threads {
            let made = match thread.join() {
                Ok(made) => made.map_err(|e| format!("connecting: {e}")),
                Err(_) => Err("a connect thread panicked".to_string()),
            };
            let failed = made.is_err();
            if batches.send(made).is_err() || failed {
                return;
            }
        }
    }
}

/// Registers new client connections for reading; returns their indices.
fn register(
    poll: &mut Poll,
    clients: &mut Vec<Client>,
    made: Vec<(Kind, std::net::TcpStream)>,
) -> Result<std::ops::Range<usize>, Error> {
    let from = clients.len();
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
            echo: [0; MESSAGE],
            echoed: 0,
            waiting: false,
            done: false,
            failed: None,
            failed_at: None,
        });
    }
    Ok(from..clients.len())
}

/// Connects the clients `batch` names, from the calling thread's namespace.
fn connect_batch(
    batch: &[usize],
    load: Load,
    relay_at: SocketAddr,
    frontend: SocketAddr,
    keepalive: Keepalive,
) -> std::io::Result<Vec<(Kind, std::net::TcpStream)>> {
    batch
        .iter()
        .map(|&i| {
            let kind = load.kind_of(i);
            let to = if kind == Kind::Relay {
                relay_at
            } else {
                frontend
            };
            let stream = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
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
}

/// The echo server: every byte read on every connection is written back, until killed.
fn echo_server(addr: SocketAddr) -> Result<(), Error> {
    let std_listener = idlegate::sys::socket::listen(addr)?;
    std_listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(std_listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening");
    // By token; a connection that ended is closed and its place stays empty.
    let mut echoes: Vec<Option<Echo>> = Vec::new();
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
                            poll.registry().register(
                                &mut stream,
                                token,
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            echoes.push(Some(Echo {
                                stream,
                                pending: Vec::new(),
                            }));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                },
                Token(t) => {
                    if let Some(echo) = echoes.get_mut(t).and_then(Option::as_mut) {
                        if !serve(echo, &mut buf) {
                            poll.registry().deregister(&mut echo.stream)?;
                            echoes[t] = None;
                        }
                    }
                }
            }
        }
    }
}

/// Echoes what the server side of a connection can read, keeping what it cannot write yet
/// until the socket is writable again (and reading no more meanwhile); false once the
/// connection has ended.
fn serve(echo: &mut Echo, buf: &mut [u8]) -> bool {
    loop {
        while !echo.pending.is_empty() {
            match echo.stream.write(&echo.pending) {
                Ok(n) => drop(echo.pending.drain(..n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        match echo.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => echo.pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

/// Reads a client's echo; a whole one, byte for byte the message sent, ends the wait for it.
fn receive(c: &mut Client, buf: &mut [u8], tally: &mut Tally) {
    loop {
        let room = MESSAGE - c.echoed;
        match c.stream.read(buf) {
            Ok(0) => {
                c.failed
                    .get_or_insert_with(|| "closed by the far end".into());
                c.done = true;
                return;
            }
            Ok(n) if !c.waiting || n > room => {
                c.failed = Some(format!("{n} bytes more than message {} was", c.seq));
                c.done = true;
                return;
            }
            Ok(n) => {
                c.echo[c.echoed..c.echoed + n].copy_from_slice(&buf[..n]);
                c.echoed += n;
                tally.bytes += n as u64;
                if c.echoed == MESSAGE {
                    if c.echo != message(c.seq) {
                        c.failed = Some(format!("the echo of message {} differs from it", c.seq));
                        c.done = true;
                        return;
                    }
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

/// Packets this machine's kernel dropped for a full backlog (softnet), all CPUs.
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .sum()
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
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = idlegate::sys::process::signal(child.id() as i32, idlegate::sys::signal::SIGTERM);
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
