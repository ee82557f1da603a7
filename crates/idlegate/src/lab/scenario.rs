//! Scripted TCP conversations between two network namespaces, observed from both ends.
//!
//! Contract: [`run`] plays every [`Script`] in parallel. For each, a server thread in
//! `server_ns` binds `listen` (SO_REUSEADDR) and reports readiness through a channel;
//! only then does a client thread in `client_ns` connect to `connect` (5 s timeout,
//! TCP_NODELAY, optional keepalive) and send each message at its offset from the moment
//! the connection was established. Each script makes and accepts exactly one connection;
//! if the client cannot connect, it records why and the script ends at once.
//!
//! Framing: the server records **every byte it receives as one message** (the demo
//! sends single ASCII letters), so 1-byte messages stay distinguishable even when TCP
//! coalesces them; longer messages arrive split into their bytes.
//!
//! Neither side ever sleeps blindly while its socket is alive: both wait with `poll()`
//! until their next deadline, so data, EOF and socket errors (e.g. a RST arriving while
//! idle) are recorded as [`Moment`]s when they happen, on one timeline shared by all
//! scripts (offsets from the start of [`run`]; a send is stamped just before its write).
//! A socket error ends watching that socket (TCP errors are fatal); the client still
//! attempts its later sends and records how each write fails, but
//! [`Outcome::client_error`] keeps the first error. Both sides watch until the same end
//! (connection start + last send offset + `observe`); then the client reads `TCP_INFO`,
//! so a write that succeeded but was never acknowledged (a silent drop) shows as
//! `unacked_at_end > 0`, and each side closes only once both stopped watching (neither
//! side's final FIN is part of the story). Setup failures (namespace, bind, threads) are
//! errors of [`run`]; everything that happens to the connections is data in [`Outcome`].

use crate::sys::errno::errno_name;
use crate::sys::poll::{self, Ready};
use crate::sys::tcp_info::TcpInfo;
use crate::sys::{netns, socket};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Serialize, Serializer};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the client waits for its connection to be established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one side waits for a signal from the other side's thread.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes sent without answer before a keepalive-enabled client gives up (TCP_KEEPCNT).
const KEEPALIVE_PROBES: u32 = 3;

/// One scripted connection.
#[derive(Debug, Clone)]
pub struct Script {
    /// Names the connection in the timeline, e.g. `no-keepalive`.
    pub name: String,
    pub client_ns: String,
    pub server_ns: String,
    /// The server binds here, inside `server_ns`.
    pub listen: SocketAddr,
    /// The client connects here (may differ from `listen` when a gateway translates).
    pub connect: SocketAddr,
    /// Client keepalive: SO_KEEPALIVE with TCP_KEEPIDLE = TCP_KEEPINTVL = this, in whole
    /// seconds (truncated, at least 1 s), and TCP_KEEPCNT 3.
    pub keepalive: Option<Duration>,
    /// `(offset from the connection's establishment, message)`, in increasing offsets;
    /// a message whose offset has already passed is sent at once.
    pub sends: Vec<(Duration, String)>,
    /// How long after the last send's offset both sides keep watching.
    pub observe: Duration,
}

/// What both ends of one script saw.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: String,
    /// Messages the client tried to send, in order (including writes that failed).
    pub sent: Vec<String>,
    /// Messages (bytes, see the module doc) the server received, in order.
    pub delivered: Vec<String>,
    /// Name of the first error the client saw (`ECONNRESET`, `ETIMEDOUT`, `EPIPE`...).
    pub client_error: Option<String>,
    /// Name of the first error the server saw.
    pub server_error: Option<String>,
    /// The client's `tcpi_unacked` at the end: segments sent but never acknowledged.
    pub unacked_at_end: u32,
    /// The client's `tcpi_total_retrans` at the end.
    pub retransmits_at_end: u32,
    /// This script's moments, in time order.
    pub timeline: Vec<Moment>,
}

/// Which end of a connection saw a [`Moment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Something one end saw, e.g. `sent "a"`, `received "a"`, `socket error ECONNRESET`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moment {
    /// Since the start of [`run`]; serialized as seconds.
    #[serde(serialize_with = "as_secs")]
    pub at: Duration,
    /// The script's name.
    pub connection: String,
    pub side: Side,
    pub what: String,
}

fn as_secs<S: Serializer>(at: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(at.as_secs_f64())
}

/// Plays all `scripts` in parallel; the outcomes come back in input order.
pub fn run(scripts: Vec<Script>) -> Result<Vec<Outcome>> {
    run_with(scripts, |_| {})
}

/// Like [`run`], also calling `on_moment` (from the scripts' threads) as each moment is
/// recorded, e.g. to change the network at a precise point of a conversation; the side
/// that recorded the moment waits for it to return.
///
/// If starting a script fails, the scripts already started finish on their own (all
/// their waits are bounded) and the error is returned at once.
pub fn run_with(
    scripts: Vec<Script>,
    on_moment: impl Fn(&Moment) + Send + Sync + 'static,
) -> Result<Vec<Outcome>> {
    let observer: Observer = Arc::new(on_moment);
    let start = Instant::now();
    let mut running = Vec::with_capacity(scripts.len());
    for script in scripts {
        let log = Log::new(start, &script.name, Arc::clone(&observer));
        let name = script.name.clone();
        running.push(start_script(script, log).with_context(|| format!("script {name}"))?);
    }
    running.into_iter().map(Running::finish).collect()
}

/// A human-readable timeline of all outcomes, one aligned line per moment, by time:
/// `   1.02s  no-keepalive  client  sent "b"`.
pub fn render_timeline(outcomes: &[Outcome]) -> String {
    let mut moments: Vec<&Moment> = outcomes.iter().flat_map(|o| &o.timeline).collect();
    moments.sort_by_key(|m| m.at);
    let width = moments.iter().map(|m| m.connection.chars().count()).max();
    let width = width.unwrap_or(0);
    let line = |m: &&Moment| {
        let at = m.at.as_secs_f64();
        format!(
            "{at:>7.2}s  {:<width$}  {:<6}  {}\n",
            m.connection, m.side, m.what
        )
    };
    moments.iter().map(line).collect()
}

// ---------------------------------------------------------------------------------------
// Orchestration

type Observer = Arc<dyn Fn(&Moment) + Send + Sync>;

/// Records the moments of one script, stamping them on the run's shared clock.
#[derive(Clone)]
struct Log {
    start: Instant,
    connection: String,
    moments: Arc<Mutex<Vec<Moment>>>,
    observer: Observer,
}

impl Log {
    fn new(start: Instant, connection: &str, observer: Observer) -> Log {
        let moments = Arc::default();
        let connection = connection.to_owned();
        Log {
            start,
            connection,
            moments,
            observer,
        }
    }

    /// Records `what` as happening now.
    fn record(&self, side: Side, what: impl Into<String>) {
        self.record_at(Instant::now(), side, what);
    }

    /// Records `what` as happening at `when` (e.g. just before the syscall that did it).
    fn record_at(&self, when: Instant, side: Side, what: impl Into<String>) {
        let moment = Moment {
            at: when.saturating_duration_since(self.start),
            connection: self.connection.clone(),
            side,
            what: what.into(),
        };
        self.lock().push(moment.clone());
        (self.observer)(&moment);
    }

    /// All moments so far, in time order.
    fn moments(&self) -> Vec<Moment> {
        let mut moments = self.lock().clone();
        moments.sort_by_key(|m| m.at); // stable: same-time moments keep recording order
        moments
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Moment>> {
        self.moments
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A script whose threads are running.
struct Running {
    name: String,
    log: Log,
    server: JoinHandle<ServerSeen>,
    client: JoinHandle<ClientSeen>,
}

impl Running {
    fn finish(self) -> Result<Outcome> {
        let name = self.name;
        let server = self
            .server
            .join()
            .map_err(|_| anyhow!("{name}: server thread panicked"))?;
        let client = self
            .client
            .join()
            .map_err(|_| anyhow!("{name}: client thread panicked"))?;
        Ok(Outcome {
            name,
            sent: client.sent,
            delivered: server.delivered,
            client_error: client.error,
            server_error: server.error,
            unacked_at_end: client.unacked,
            retransmits_at_end: client.retransmits,
            timeline: self.log.moments(),
        })
    }
}

/// Starts the server, waits until it listens, then starts the client.
fn start_script(script: Script, log: Log) -> Result<Running> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (end_tx, end_rx) = mpsc::channel();
    let (server_hangup, client_hangup) = Hangup::pair();
    let server = {
        let (log, listen) = (log.clone(), script.listen);
        let links = ServerLinks {
            ready: ready_tx,
            end: end_rx,
            hangup: server_hangup,
        };
        netns::spawn_in(&script.server_ns, move || serve(listen, links, &log))?
    };
    await_ready(&ready_rx, script.listen)?;
    let name = script.name.clone();
    let client = {
        let log = log.clone();
        let links = ClientLinks {
            end: end_tx,
            hangup: client_hangup,
        };
        let ns = script.client_ns.clone();
        netns::spawn_in(&ns, move || converse(&script, links, &log))?
    };
    Ok(Running {
        name,
        log,
        server,
        client,
    })
}

/// Lets each side close only once both stopped watching, so neither records the
/// other's FIN as part of the script.
struct Hangup {
    stopped: Sender<()>,
    peer_stopped: Receiver<()>,
}

impl Hangup {
    fn pair() -> (Hangup, Hangup) {
        let (a_tx, a_rx) = mpsc::channel();
        let (b_tx, b_rx) = mpsc::channel();
        let a = Hangup {
            stopped: a_tx,
            peer_stopped: b_rx,
        };
        let b = Hangup {
            stopped: b_tx,
            peer_stopped: a_rx,
        };
        (a, b)
    }

    /// Says this side stopped watching, then waits (bounded) for the other side.
    fn stopped_watching(self) {
        let _ = self.stopped.send(());
        let _ = self.peer_stopped.recv_timeout(SIGNAL_TIMEOUT);
    }
}

fn await_ready(ready: &Receiver<io::Result<()>>, listen: SocketAddr) -> Result<()> {
    match ready.recv_timeout(SIGNAL_TIMEOUT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err).with_context(|| format!("listening on {listen}")),
        Err(_) => bail!("the server for {listen} did not report readiness"),
    }
}

// ---------------------------------------------------------------------------------------
// Server side

struct ServerLinks {
    ready: Sender<io::Result<()>>,
    end: Receiver<Instant>,
    hangup: Hangup,
}

#[derive(Default)]
struct ServerSeen {
    delivered: Vec<String>,
    error: Option<String>,
}

fn serve(listen: SocketAddr, links: ServerLinks, log: &Log) -> ServerSeen {
    let listener = match listener(listen) {
        Ok(listener) => listener,
        Err(err) => {
            let _ = links.ready.send(Err(err));
            return ServerSeen::default();
        }
    };
    let _ = links.ready.send(Ok(()));
    // The client reports its schedule once connected, or drops the sender if it could not.
    let Ok(end) = links.end.recv_timeout(CONNECT_TIMEOUT + SIGNAL_TIMEOUT) else {
        return ServerSeen::default(); // the client recorded why
    };
    let sock = match accept_one(&listener, log) {
        Ok(sock) => sock,
        Err(error) => {
            return ServerSeen {
                error,
                ..ServerSeen::default()
            }
        }
    };
    drop(listener);
    let mut peer = Peer::new(sock, Side::Server, log.clone());
    peer.watch_until(end);
    links.hangup.stopped_watching();
    ServerSeen {
        delivered: peer.received,
        error: peer.first_error,
    }
}

fn listener(addr: SocketAddr) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1)?;
    Ok(sock)
}

/// The connection the client made, or the error name (`None` when none arrived in time).
fn accept_one(listener: &Socket, log: &Log) -> Result<Socket, Option<String>> {
    let patience = SIGNAL_TIMEOUT;
    let accepted = match poll::one(listener.as_raw_fd(), true, Some(patience)) {
        Ok(ready) if !ready.any() => {
            log.record(Side::Server, format!("no connection within {patience:?}"));
            return Err(None);
        }
        Ok(_) => listener.accept(),
        Err(err) => Err(err),
    };
    match accepted {
        Ok((sock, _)) => {
            log.record(Side::Server, "accepted");
            Ok(sock)
        }
        Err(err) => {
            let name = errno_name(&err);
            log.record(Side::Server, format!("accept failed: {name}"));
            Err(Some(name))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client side

struct ClientLinks {
    end: Sender<Instant>,
    hangup: Hangup,
}

#[derive(Default)]
struct ClientSeen {
    sent: Vec<String>,
    error: Option<String>,
    unacked: u32,
    retransmits: u32,
}

fn converse(script: &Script, links: ClientLinks, log: &Log) -> ClientSeen {
    let sock = match connect(script) {
        Ok(sock) => sock,
        Err(err) => {
            let name = errno_name(&err);
            log.record(Side::Client, format!("connect failed: {name}"));
            return ClientSeen {
                error: Some(name),
                ..ClientSeen::default()
            };
        }
    };
    log.record(Side::Client, "connected");
    let base = Instant::now();
    let last = script.sends.iter().map(|(offset, _)| *offset).max();
    let end = base + last.unwrap_or_default() + script.observe;
    let _ = links.end.send(end);
    let mut peer = Peer::new(sock, Side::Client, log.clone());
    let (sent, written) = follow(&mut peer, base, &script.sends);
    peer.watch_until(end);
    let (unacked, retransmits) = report_unacked(&peer, &written);
    links.hangup.stopped_watching();
    ClientSeen {
        sent,
        error: peer.first_error,
        unacked,
        retransmits,
    }
}

fn connect(script: &Script) -> io::Result<Socket> {
    let sock = Socket::new(
        Domain::for_address(script.connect),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    sock.set_tcp_nodelay(true)?;
    if let Some(keepalive) = script.keepalive {
        let every = Duration::from_secs(keepalive.as_secs().max(1));
        let params = TcpKeepalive::new()
            .with_time(every)
            .with_interval(every)
            .with_retries(KEEPALIVE_PROBES);
        sock.set_tcp_keepalive(&params)?;
    }
    sock.connect_timeout(&script.connect.into(), CONNECT_TIMEOUT)?;
    Ok(sock)
}

/// Sends each message at its time; returns (attempted, successfully written) messages.
fn follow(
    peer: &mut Peer,
    base: Instant,
    sends: &[(Duration, String)],
) -> (Vec<String>, Vec<String>) {
    let (mut sent, mut written) = (Vec::new(), Vec::new());
    for (offset, message) in sends {
        peer.watch_until(base + *offset);
        if peer.send(message) {
            written.push(message.clone());
        }
        sent.push(message.clone());
    }
    (sent, written)
}

/// Reads the client's TCP_INFO and records which written messages the peer never ACKed.
fn report_unacked(peer: &Peer, written: &[String]) -> (u32, u32) {
    let fd = peer.sock.as_raw_fd();
    let info = match TcpInfo::read(fd) {
        Ok(info) => info,
        Err(err) => {
            peer.log.record(
                Side::Client,
                format!("TCP_INFO failed: {}", errno_name(&err)),
            );
            return (0, 0);
        }
    };
    let (unacked, retransmits) = (info.unacked, info.total_retrans);
    if unacked > 0 {
        let pending = unacked_messages(written, socket::unsent_bytes(fd).unwrap_or(0));
        let what = format!(
            "{} not acknowledged: {} unacked, {}",
            pending.join(", "),
            plural(unacked, "segment"),
            plural(retransmits, "retransmission"),
        );
        peer.log.record(Side::Client, what);
    }
    (unacked, retransmits)
}

/// The quoted trailing messages covering the `outq` bytes still in the send queue.
fn unacked_messages(written: &[String], outq: usize) -> Vec<String> {
    let mut left = outq;
    let mut pending = Vec::new();
    for message in written.iter().rev() {
        if left == 0 {
            break;
        }
        left = left.saturating_sub(message.len());
        pending.push(format!("{message:?}"));
    }
    pending.reverse();
    if pending.is_empty() {
        pending.push("data".to_owned());
    }
    pending
}

fn plural(n: u32, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

// ---------------------------------------------------------------------------------------
// One end of a connection, watched with poll()

struct Peer {
    sock: Socket,
    side: Side,
    log: Log,
    /// Each received byte, as a message.
    received: Vec<String>,
    first_error: Option<String>,
    /// The peer's FIN arrived: only errors and hang-ups are left to watch for.
    eof: bool,
    /// The socket is dead (error or hang-up): nothing more can happen on it.
    dead: bool,
}

impl Peer {
    fn new(sock: Socket, side: Side, log: Log) -> Peer {
        Peer {
            sock,
            side,
            log,
            received: Vec::new(),
            first_error: None,
            eof: false,
            dead: false,
        }
    }

    /// Records everything the socket reports until `deadline`.
    fn watch_until(&mut self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if self.dead {
                return thread::sleep(left);
            }
            match poll::one(self.sock.as_raw_fd(), !self.eof, Some(left)) {
                Ok(ready) if !ready.any() => {}
                Ok(ready) => self.on_ready(ready),
                Err(err) => self.fail("poll failed:", &err),
            }
        }
    }

    fn on_ready(&mut self, ready: Ready) {
        if ready.invalid() {
            self.dead = true;
        } else if !self.eof {
            self.read_once(); // reports data, EOF or the pending error, in that order
        } else if ready.error() {
            self.take_error();
        } else if ready.hangup() {
            self.dead = true;
        }
    }

    fn read_once(&mut self) {
        let mut buf = [0u8; 4096];
        match socket::recv_nowait(self.sock.as_raw_fd(), &mut buf) {
            Ok(0) => {
                self.eof = true;
                self.log
                    .record(self.side, "connection closed by peer (EOF)");
            }
            Ok(n) => self.on_data(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.take_error(),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => self.fail("socket error", &err),
        }
    }

    fn on_data(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            let message = byte_message(byte);
            self.log.record(self.side, format!("received {message:?}"));
            self.received.push(message);
        }
    }

    /// Takes SO_ERROR; a POLLERR without a pending error still ends the watch.
    fn take_error(&mut self) {
        match self.sock.take_error() {
            Ok(Some(err)) | Err(err) => self.fail("socket error", &err),
            Ok(None) => self.dead = true,
        }
    }

    /// Sends all of `message`; false (with the error recorded) if the write failed.
    /// A successful send is stamped with the time before the write: on a veth the
    /// peer may well record its reception before the write call returns.
    fn send(&mut self, message: &str) -> bool {
        let before = Instant::now();
        match socket::send_all(&self.sock, message.as_bytes()) {
            Ok(()) => {
                let what = format!("sent {message:?}");
                self.log.record_at(before, self.side, what);
                true
            }
            Err(err) => {
                self.fail("write failed:", &err);
                false
            }
        }
    }

    fn fail(&mut self, what: &str, err: &io::Error) {
        let name = errno_name(err);
        self.log.record(self.side, format!("{what} {name}"));
        self.first_error.get_or_insert(name);
        self.dead = true;
    }
}

/// One received byte as a message: the ASCII character, or `\xNN`.
fn byte_message(byte: u8) -> String {
    if byte.is_ascii() {
        char::from(byte).to_string()
    } else {
        format!("\\x{byte:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unacked_messages_cover_the_send_queue_from_the_end() {
        let written: Vec<String> = ["a", "bc", "d"].map(String::from).to_vec();
        assert_eq!(unacked_messages(&written, 1), ["\"d\""]);
        assert_eq!(unacked_messages(&written, 2), ["\"bc\"", "\"d\""]);
        assert_eq!(unacked_messages(&written, 0), ["data"]);
    }

    #[test]
    fn timeline_is_sorted_and_aligned() {
        let moment = |ms, connection: &str, side, what: &str| Moment {
            at: Duration::from_millis(ms),
            connection: connection.to_owned(),
            side,
            what: what.to_owned(),
        };
        let outcome = |name: &str, timeline| Outcome {
            name: name.to_owned(),
            sent: vec![],
            delivered: vec![],
            client_error: None,
            server_error: None,
            unacked_at_end: 0,
            retransmits_at_end: 0,
            timeline,
        };
        let outcomes = [
            outcome(
                "long-name",
                vec![moment(1020, "long-name", Side::Client, "sent \"b\"")],
            ),
            outcome("x", vec![moment(10, "x", Side::Server, "accepted")]),
        ];
        let json = serde_json::to_value(&outcomes[1]).map_err(|e| e.to_string());
        let first = json.map(|j| j["timeline"][0].clone());
        let expected = serde_json::json!({"at": 0.01, "connection": "x", "side": "server", "what": "accepted"});
        assert_eq!(first, Ok(expected));
        let text = render_timeline(&outcomes);
        let expected =
            "   0.01s  x          server  accepted\n   1.02s  long-name  client  sent \"b\"\n";
        assert_eq!(text, expected);
    }
}
