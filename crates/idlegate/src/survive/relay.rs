//! `idlegate relay`: keeps unmodified applications' connections alive through boxes that
//! forget idle flows.
//!
//! Contract: a [`Relay`] listens where the application connects (or accepts its clients) and
//! forwards each connection to `connect`, byte for byte in both directions. Both of its sockets
//! carry TCP keepalive ([`Keepalive`], set by `sys::socket::set_keepalive`: SO_KEEPALIVE,
//! TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT on Linux, SIO_KEEPALIVE_VALS and TCP_KEEPCNT on
//! Windows) and a matching user timeout (TCP_USER_TIMEOUT on Linux, TCP_MAXRT on Windows), so
//! the kernel refreshes the path under an idle application and a dead peer is found in bounded
//! time. Connections run on a few event-loop workers (one per core, mio): each direction moves
//! through a small stack buffer until it proves bulky, then through a [`Pipe`] of its own
//! (`sys::pipe`: non-blocking splice(2) through a kernel pipe on Linux, zero-copy; a buffer and
//! a copy on Windows), which bounds what the relay holds to one pipe per direction: a slow
//! reader slows the writer, never grows a buffer. A socket is watched for writing only while
//! bytes wait for it (and the server's until its connect completes), and for reading only
//! while its direction may read: mio's Windows selector re-arms every interest of a socket
//! after each read that would block, so a socket watched for writing all the time would wake
//! its worker at once, for ever. A FIN one way is passed on as a FIN (the other way keeps
//! flowing); a RST from either side, or a failure to deliver to it, reaches the other as a RST.
//! A connection costs no thread: setting one up is an accept, a connect and a few socket
//! options.

use crate::sys::pipe::Pipe;
use crate::sys::poll::STOP_CHECK;
use crate::sys::{errno, resolve, socket};
use anyhow::{Context, Result};
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::obs::prometheus::{Kind, Writer};
use crate::survive::endpoint::{endpoint_of, Endpoint};

pub use crate::survive::keepalive::Keepalive;
pub use crate::survive::stats::Stats;

/// What a relay config looks like, for the hint of a file that has none.
pub const CONFIG_SHAPE: &str = "write one [[relay]] table per relay, each with listen, connect and keepalive or profile, e.g. \
     [[relay]] listen = \"127.0.0.1:15432\" connect = \"db.example.com:5432\" keepalive = \"120s,30s,8\" \
     (each key on its own line)";

/// The relays of a config file: `[[relay]]` tables with `listen`, `connect`, and `keepalive`
/// (`"120s,30s,8"`) or `profile` (`"azure-lb"`). A mistake is a usage error that names
/// `file:line:column` and the key, as the gateway's config does
/// ([`idlegate_core::config::ConfigError`]).
pub fn parse_config(text: &str, file: &str) -> Result<Vec<(SocketAddr, SocketAddr, Keepalive)>> {
    use crate::obs::report::refused;
    use crate::survive::serve::{resolve_as, HOST_PORT_HINT};
    use idlegate_core::config::{find_profile, ConfigError};
    use toml::Spanned;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        relay: Vec<Spanned<Entry>>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        listen: Spanned<String>,
        connect: Spanned<String>,
        keepalive: Option<Spanned<String>>,
        profile: Option<Spanned<String>>,
    }
    let at = |span: std::ops::Range<usize>, message: String| {
        ConfigError::at(file, text, Some(span), message)
    };
    let parsed: File = match toml::from_str(text) {
        Ok(parsed) => parsed,
        Err(e) => return refused(ConfigError::of_toml(file, text, &e)),
    };
    if parsed.relay.is_empty() {
        let mistake = ConfigError::at(file, text, None, "no [[relay]] table".to_string());
        return refused(mistake.with_hint(CONFIG_SHAPE.to_string()));
    }
    let mut out = Vec::new();
    for r in &parsed.relay {
        let r = r.get_ref();
        let addr = |what: &str, v: &Spanned<String>| -> Result<SocketAddr> {
            match resolve::host_port(v.get_ref()) {
                Ok(addr) => Ok(addr),
                // Text that is not HOST:PORT is the file's mistake: said with what is wrong.
                Err(e @ resolve::Unresolved::NotHostPort(_)) => {
                    let why = format!("{:#}", anyhow::Error::from(e));
                    let message = format!("{what} = {:?}: {why}", v.get_ref());
                    refused(at(v.span(), message).with_hint(HOST_PORT_HINT.to_string()))
                }
                // HOST:PORT whose name does not resolve: a runtime failure, said and hinted as
                // the command line's is, at the place in the file the name came from.
                Err(_) => {
                    let place = at(v.span(), format!("{what} = {:?}", v.get_ref()));
                    resolve_as(&place.to_string(), v.get_ref())
                }
            }
        };
        let keepalive = match (&r.keepalive, &r.profile) {
            (Some(k), None) => match Keepalive::parse(k.get_ref()) {
                Ok(keepalive) => keepalive,
                Err(e) => {
                    let message = format!("keepalive = {:?}: {e}", k.get_ref());
                    let hint = "write IDLE,INTERVAL,COUNT, e.g. keepalive = \"120s,30s,8\"";
                    return refused(at(k.span(), message).with_hint(hint.to_string()));
                }
            },
            (None, Some(p)) => match find_profile(p.get_ref()) {
                Ok(profile) => Keepalive::for_profile_here(profile)?,
                Err(unknown) => {
                    let message = format!("profile = {:?}: {unknown}", p.get_ref());
                    return refused(at(p.span(), message).with_hint(unknown.hint()));
                }
            },
            (None, None) => Keepalive::for_profile_here(idlegate_core::profile::default_profile())?,
            (Some(_), Some(p)) => {
                return refused(at(p.span(), "keepalive and profile: give one".to_string()))
            }
        };
        out.push((
            addr("listen", &r.listen)?,
            addr("connect", &r.connect)?,
            keepalive,
        ));
    }
    Ok(out)
}

/// Connections a relay holds at once unless told ([`Relay::set_max_connections`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// A relay: one listener and where its connections go. It dereferences to its [`Endpoint`]
/// (`local_addr`, `stats`, `stop_flag`: when set, [`Relay::run`] ends and the connections it
/// holds are reset, as they did not end whole).
pub struct Relay {
    endpoint: Endpoint,
    connect: SocketAddr,
    keepalive: Keepalive,
    /// At this many open connections it stops accepting: new clients wait in the listen
    /// queue (and the kernel's backlog bounds that) until one ends.
    max_connections: usize,
}

endpoint_of!(Relay);

impl Relay {
    pub fn bind(listen: SocketAddr, connect: SocketAddr, keepalive: Keepalive) -> Result<Relay> {
        let endpoint = Endpoint::bind(listen)?;
        endpoint.listener.set_nonblocking(true)?;
        // Its clients' sockets take their options from it where they inherit them (Linux).
        keepalive
            .apply_relayed_listener(&endpoint.listener)
            .context("setting keepalive on the relay's listener")?;
        Ok(Relay {
            endpoint,
            connect,
            keepalive,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        })
    }

    /// Holds at most `max` connections at once (at least one).
    pub fn set_max_connections(&mut self, max: usize) {
        self.max_connections = max.max(1);
    }

    /// Accepts and relays until stopped, on one worker per core (at most [`MAX_WORKERS`]).
    pub fn run(&self) -> Result<()> {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WORKERS);
        std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for i in 1..workers {
                let listener = self.endpoint.listener.try_clone()?;
                handles.push(
                    std::thread::Builder::new()
                        .name(format!("relay worker {i}"))
                        .spawn_scoped(scope, move || self.worker(listener))?,
                );
            }
            let mut result = self.worker(self.endpoint.listener.try_clone()?);
            for h in handles {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a relay worker panicked")));
                result = result.and(r);
            }
            result
        })
    }

    fn worker(&self, listener: TcpListener) -> Result<()> {
        Worker::new(self, listener)?.run()
    }
}

/// The most worker threads per relay.
pub const MAX_WORKERS: usize = 4;

const LISTENER: Token = Token(usize::MAX);

/// One event loop: its share of the listener's connections.
struct Worker<'r> {
    relay: &'r Relay,
    poll: Poll,
    listener: mio::net::TcpListener,
    conns: Slab<Conn>,
    /// Accepting stopped on a lack of resources (descriptors) or at the connection limit: try
    /// again at every wake-up, since the edge-triggered listener will not say so again for
    /// connections already queued.
    accept_again: bool,
    /// The connection limit was reached and said so.
    at_limit: bool,
}

/// One relayed connection: the client's socket, the server's, and a direction each way.
struct Conn {
    client: mio::net::TcpStream,
    server: mio::net::TcpStream,
    /// The server's connect has completed.
    connected: bool,
    up: Direction,
    down: Direction,
    /// What each socket is registered for now ([`Conn::watch`]).
    client_watch: Interest,
    server_watch: Interest,
}

/// One way of a connection: what the source sent, moved to the destination. Until a read
/// fills [`SMALL`] bytes, through a small buffer on the stack (a read and a write: most
/// connections exchange little); after that, through a [`Pipe`] of its own.
#[derive(Default)]
struct Direction {
    /// Bytes read and not yet written because the destination took only part of them (at
    /// most one small read).
    held: Vec<u8>,
    pipe: Option<Pipe>,
    /// Bytes in the pipe, not yet written to the destination.
    in_pipe: usize,
    /// The most one move through the pipe takes: its size.
    chunk: usize,
    /// The pipe was offered a larger size.
    grown: bool,
    /// A read filled the small buffer: through the pipe from now on.
    bulk: bool,
    /// The source's EOF was passed on as a FIN.
    done: bool,
}

/// How a direction's pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pump {
    /// Both sockets would block: wait for the next event.
    Blocked,
    /// The source reset (or timed out): the destination gets a RST.
    SourceFailed,
    /// The destination failed: the source gets a RST.
    DestinationFailed,
    /// The relay itself ran out (no pipe): both sides get a RST.
    Exhausted,
}

impl<'r> Worker<'r> {
    fn new(relay: &'r Relay, listener: TcpListener) -> Result<Worker<'r>> {
        let poll = Poll::new()?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Worker {
            relay,
            poll,
            listener,
            conns: Slab::new(),
            accept_again: false,
            at_limit: false,
        })
    }

    fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            if self.relay.endpoint.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if let Err(e) = self.poll.poll(&mut events, Some(STOP_CHECK)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    Token(t) => self.on_event(t / 2),
                }
            }
            if self.accept_again {
                self.accept_all();
            }
        }
    }

    fn accept_all(&mut self) {
        self.accept_again = false;
        loop {
            if !self.reserve() {
                // Clients wait in the listen queue; look again at the next wake-up (at
                // most STOP_CHECK away), since the listener will not say so again.
                if !self.at_limit {
                    tracing::warn!(
                        "relay: {} connections open, the most it holds; new ones wait",
                        self.relay.max_connections
                    );
                }
                self.at_limit = true;
                self.accept_again = true;
                return;
            }
            let accepted = self.listener.accept();
            if accepted.is_err() {
                self.release();
            }
            match accepted {
                Ok((client, peer)) => {
                    if let Err(e) = self.open(client) {
                        self.release();
                        tracing::info!("relay: {peer}: {e:#}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Below the limit with nobody waiting: the episode is over.
                    self.at_limit = false;
                    return;
                }
                Err(e) => match e.raw_os_error() {
                    Some(code) if errno::out_of_resources(code) => {
                        // The connection waits in the queue until descriptors are free.
                        tracing::warn!("relay: accept failed: {e}; retrying");
                        self.accept_again = true;
                        return;
                    }
                    // One connection's trouble (aborted before accept, a protocol error):
                    // the next may be fine.
                    _ => tracing::debug!("relay: accept: {e}"),
                },
            }
        }
    }

    /// Takes a place for one more connection, unless the relay holds its most. Workers share
    /// the count, so the limit is exact however many accept at once.
    fn reserve(&self) -> bool {
        let max = self.relay.max_connections as u64;
        self.relay
            .stats
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a place [`Worker::reserve`] took for a connection that did not open.
    fn release(&self) {
        self.relay
            .endpoint
            .stats
            .open
            .fetch_sub(1, Ordering::AcqRel);
    }

    /// Starts the connection to the server for a newly accepted client, in a place
    /// [`Worker::reserve`] took.
    fn open(&mut self, mut client: mio::net::TcpStream) -> Result<()> {
        let keepalive = self.relay.keepalive;
        keepalive.apply_relayed_accepted(&client)?;
        let mut server = match mio::net::TcpStream::connect(self.relay.connect) {
            Ok(server) => server,
            Err(e) => {
                let _ = socket::reset(&client);
                return Err(e).with_context(|| format!("connecting to {}", self.relay.connect));
            }
        };
        keepalive.apply_relayed(&server)?;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        // The client for reading; the server for reading and for its connect's completion.
        let client_watch = interest(true, false);
        let server_watch = interest(true, true);
        let registry = self.poll.registry();
        registry.register(&mut client, Token(2 * key), client_watch)?;
        registry.register(&mut server, Token(2 * key + 1), server_watch)?;
        entry.insert(Conn {
            client,
            server,
            connected: false,
            up: Direction::default(),
            down: Direction::default(),
            client_watch,
            server_watch,
        });
        Ok(())
    }

    /// Something happened on connection `key`: move what can be moved both ways.
    fn on_event(&mut self, key: usize) {
        let stats = &self.relay.endpoint.stats;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.connected {
            match conn.server.take_error() {
                Ok(None) if conn.server.peer_addr().is_ok() => {
                    conn.connected = true;
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => return, // still connecting
                failed => {
                    // Refused or unreachable: the application is told as a refused
                    // connection would tell it.
                    let why = match failed {
                        Ok(Some(e)) | Err(e) => crate::sys::errno::reason(&e),
                        Ok(None) => "the connection ended before it was made".to_string(),
                    };
                    tracing::info!("relay: connecting to {} failed: {why}", self.relay.connect);
                    let _ = socket::reset(&conn.client);
                    self.close(key);
                    return;
                }
            }
        }
        let up = conn
            .up
            .pump(&conn.client, &conn.server, &stats.bytes_to_server);
        let down = conn
            .down
            .pump(&conn.server, &conn.client, &stats.bytes_to_client);
        // A side that sent its FIN may still reset later (or time out): its pump no longer
        // reads it, so ask the socket.
        let up = reset_after_fin(up, &conn.up, &conn.client);
        let down = reset_after_fin(down, &conn.down, &conn.server);
        if up == Pump::Exhausted || down == Pump::Exhausted {
            let _ = socket::reset(&conn.client);
            let _ = socket::reset(&conn.server);
            stats.resets.fetch_add(1, Ordering::Relaxed);
            self.close(key);
            return;
        }
        let failed = match (up, down) {
            (Pump::SourceFailed, _) | (_, Pump::DestinationFailed) => Some(&conn.server),
            (_, Pump::SourceFailed) | (Pump::DestinationFailed, _) => Some(&conn.client),
            _ => None,
        };
        if let Some(peer) = failed {
            // A RST from one side (or a failure to deliver to it) reaches the other as a RST.
            let _ = socket::reset(peer);
            stats.resets.fetch_add(1, Ordering::Relaxed);
            self.close(key);
        } else if conn.up.done && conn.down.done {
            crate::survive::keepalive::ended_in_order(&conn.client);
            crate::survive::keepalive::ended_in_order(&conn.server);
            self.close(key);
        } else if let Err(e) = conn.watch(self.poll.registry(), key) {
            tracing::warn!("relay: watching a connection's sockets: {e}");
            let _ = socket::reset(&conn.client);
            let _ = socket::reset(&conn.server);
            stats.resets.fetch_add(1, Ordering::Relaxed);
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        // Closing the sockets (their only descriptors) takes them out of the poll set.
        if self.conns.try_remove(key).is_some() {
            self.relay
                .endpoint
                .stats
                .open
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Conn {
    /// Registers each socket of connection `key` for what it waits for now, where that
    /// changed: reading while its direction may read, writing while bytes wait for it (the
    /// server also until its connect completes).
    fn watch(&mut self, registry: &Registry, key: usize) -> io::Result<()> {
        let client = interest(self.up.reading(), self.down.waiting());
        if client != self.client_watch {
            registry.reregister(&mut self.client, Token(2 * key), client)?;
            self.client_watch = client;
        }
        let server = interest(self.down.reading(), !self.connected || self.up.waiting());
        if server != self.server_watch {
            registry.reregister(&mut self.server, Token(2 * key + 1), server)?;
            self.server_watch = server;
        }
        Ok(())
    }
}

/// What to register a socket for: `read`, `write`, or both. A socket waiting for neither is
/// registered for reading (mio needs an interest; both systems report an error or a hang-up
/// whatever the interest, and no read or write of it can re-arm it on Windows meanwhile).
fn interest(read: bool, write: bool) -> Interest {
    match (read, write) {
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, true) => Interest::WRITABLE,
        (_, false) => Interest::READABLE,
    }
}

impl Direction {
    /// Bytes read from the source wait for the destination.
    fn waiting(&self) -> bool {
        !self.held.is_empty() || self.in_pipe > 0
    }

    /// The source is to be read: it has not ended, and nothing it sent waits.
    fn reading(&self) -> bool {
        !self.done && !self.waiting()
    }

    /// Moves bytes from `from` to `to` until one of them would block; passes an EOF on as a
    /// FIN.
    fn pump(
        &mut self,
        from: &mio::net::TcpStream,
        to: &mio::net::TcpStream,
        counter: &AtomicU64,
    ) -> Pump {
        if self.done {
            return Pump::Blocked;
        }
        loop {
            while self.in_pipe > 0 {
                let Some(pipe) = &mut self.pipe else { break };
                // try_io: on Windows a write that would block re-arms the socket's events in
                // mio, as mio's own writes do (on Linux it only calls the closure).
                match to.try_io(|| pipe.drain_to(to, self.in_pipe)) {
                    Ok(0) => return Pump::DestinationFailed,
                    Ok(n) => self.in_pipe -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pump::Blocked,
                    Err(_) => return Pump::DestinationFailed,
                }
            }
            while !self.held.is_empty() {
                match (&*to).write(&self.held) {
                    Ok(0) => return Pump::DestinationFailed,
                    Ok(n) => drop(self.held.drain(..n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pump::Blocked,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Pump::DestinationFailed,
                }
            }
            if !self.bulk {
                match self.pump_small(from, to, counter) {
                    Some(end) => return end,
                    None => continue,
                }
            }
            if self.pipe.is_none() {
                match Pipe::new() {
                    Ok(pipe) => {
                        self.chunk = pipe.capacity();
                        self.pipe = Some(pipe);
                    }
                    Err(e) => {
                        tracing::warn!("relay: no pipe: {e}");
                        return Pump::Exhausted;
                    }
                }
            }
            let Some(pipe) = &mut self.pipe else {
                return Pump::SourceFailed;
            };
            match from.try_io(|| pipe.fill_from(from, self.chunk)) {
                Ok(0) if socket::ended_by_reset(from) => return Pump::SourceFailed,
                Ok(0) => {
                    self.done = true;
                    let _ = to.shutdown(Shutdown::Write);
                    return Pump::Blocked;
                }
                Ok(n) => {
                    self.in_pipe = n;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    if n == self.chunk && !self.grown {
                        self.grow();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pump::Blocked,
                Err(_) => return Pump::SourceFailed,
            }
        }
    }

    /// One small read and its write; None to go on pumping.
    fn pump_small(
        &mut self,
        mut from: &mio::net::TcpStream,
        mut to: &mio::net::TcpStream,
        counter: &AtomicU64,
    ) -> Option<Pump> {
        let mut buf = [0u8; SMALL];
        let n = match from.read(&mut buf) {
            Ok(0) if socket::ended_by_reset(from) => return Some(Pump::SourceFailed),
            Ok(0) => {
                self.done = true;
                let _ = to.shutdown(Shutdown::Write);
                return Some(Pump::Blocked);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(Pump::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return None,
            Err(_) => return Some(Pump::SourceFailed),
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        self.bulk = n == SMALL;
        match to.write(&buf[..n]) {
            Ok(m) => self.held.extend_from_slice(&buf[m..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                self.held.extend_from_slice(&buf[..n])
            }
            Err(_) => return Some(Pump::DestinationFailed),
        }
        None
    }

    /// A connection that fills the default 64 KiB pipe (bulk data) gets a larger one, which
    /// moves more per system call; short connections never pay for it. `sys::pipe` may refuse
    /// (Linux's pipe-max-size and pipe-user-pages-soft, or the Windows build's budget): the
    /// pipe it has then serves.
    fn grow(&mut self) {
        self.grown = true;
        if let Some(pipe) = &mut self.pipe {
            if let Some(size) = pipe.grow(PIPE_SIZE) {
                self.chunk = size;
            }
        }
    }
}

/// A direction whose source finished with a FIN, and whose source has since failed (a RST, a
/// timeout: [`socket::failed_after_end`]), counts as a failed source.
fn reset_after_fin(pump: Pump, dir: &Direction, source: &mio::net::TcpStream) -> Pump {
    if pump == Pump::Blocked && dir.done && socket::failed_after_end(source) {
        return Pump::SourceFailed;
    }
    pump
}

/// The Prometheus text of `relays` (each named by its listening address), written by
/// [`crate::obs::prometheus`].
pub fn render_metrics(relays: &[(SocketAddr, Arc<Stats>)]) -> String {
    /// A family with one sample per relay, labelled with its listening address: its type,
    /// name and help, and the counter it shows.
    type PerRelay = (Kind, &'static str, &'static str, fn(&Stats) -> &AtomicU64);
    fn per_relay(w: &mut Writer, relays: &[(String, &Stats)], families: &[PerRelay]) {
        for &(kind, name, help, value) in families {
            let mut family = w.family(name, kind, help);
            for (listen, stats) in relays {
                family.sample(&[("listen", listen)], value(stats).load(Ordering::Relaxed));
            }
        }
    }
    let relays: Vec<(String, &Stats)> = relays
        .iter()
        .map(|(listen, stats)| (listen.to_string(), &**stats))
        .collect();
    let mut w = Writer::new();
    per_relay(
        &mut w,
        &relays,
        &[
            (
                Kind::Counter,
                "idlegate_relay_connections_total",
                "Connections relayed.",
                |s| &s.connections,
            ),
            (
                Kind::Gauge,
                "idlegate_relay_connections_open",
                "Connections being relayed now.",
                |s| &s.open,
            ),
        ],
    );
    let mut bytes = w.family(
        "idlegate_relay_bytes_total",
        Kind::Counter,
        "Bytes relayed, by direction.",
    );
    for (listen, stats) in &relays {
        for (direction, n) in [
            ("to_server", &stats.bytes_to_server),
            ("to_client", &stats.bytes_to_client),
        ] {
            bytes.sample(
                &[("listen", listen), ("direction", direction)],
                n.load(Ordering::Relaxed),
            );
        }
    }
    per_relay(
        &mut w,
        &relays,
        &[
            (
                Kind::Counter,
                "idlegate_relay_resets_total",
                "Connections that ended with a RST passed on.",
                |s| &s.resets,
            ),
            (
                Kind::Counter,
                "idlegate_relay_reconnects_total",
                "Tunnel sessions resumed on a new leg.",
                |s| &s.reconnects,
            ),
            (
                Kind::Counter,
                "idlegate_relay_replayed_bytes_total",
                "Tunnel bytes sent again after a resume.",
                |s| &s.replayed_bytes,
            ),
            (
                Kind::Counter,
                "idlegate_relay_heartbeat_misses_total",
                "Tunnel legs lost because no heartbeat arrived in time.",
                |s| &s.heartbeat_misses,
            ),
            (
                Kind::Counter,
                "idlegate_relay_sessions_expired_total",
                "Tunnel sessions ended unresumed (time limit, or unknown to the far end).",
                |s| &s.expired,
            ),
            (
                Kind::Gauge,
                "idlegate_relay_sessions_stalled",
                "Tunnel sessions on a live leg that moved no byte for 12 heartbeats while bytes wait.",
                |s| &s.stalled,
            ),
            (
                Kind::Counter,
                "idlegate_relay_stalls_total",
                "Times a tunnel session was reported stalled.",
                |s| &s.stalls,
            ),
        ],
    );
    let mut legs = w.family(
        "idlegate_relay_legs_total",
        Kind::Counter,
        "Tunnel sessions started or resumed, by their leg: dialed for them, or reused after a session that ended whole.",
    );
    for (listen, stats) in &relays {
        for (how, n) in [
            ("dialed", &stats.legs_dialed),
            ("reused", &stats.legs_reused),
        ] {
            legs.sample(
                &[("listen", listen), ("how", how)],
                n.load(Ordering::Relaxed),
            );
        }
    }
    per_relay(
        &mut w,
        &relays,
        &[(
            Kind::Gauge,
            "idlegate_relay_legs_free",
            "Tunnel legs kept between sessions now (the entry's free ones, the exit's idle ones).",
            |s| &s.legs_free,
        )],
    );
    w.finish()
}

/// Serves `render()` at http://ADDR/metrics on a thread of its own until the process ends
/// ([`crate::obs::scrape`]: many scrapers at once, none able to stall another).
pub fn serve_metrics(listener: TcpListener, render: impl Fn() -> String + Send + 'static) {
    std::thread::spawn(move || {
        let served = crate::obs::scrape::Server::from_std(listener)
            .and_then(|mut server| server.run(&|| false, &mut || Some(render())));
        if let Err(e) = served {
            tracing::error!("metrics stopped: {e:#}");
        }
    });
}

/// A read this large means bulk data: the direction moves to its pipe.
const SMALL: usize = 16 << 10;

/// The pipe size asked for per direction: what the relay holds at most (`sys::pipe` may give
/// less: Linux's pipe-max-size and pipe-user-pages-soft, or the Windows build's budget).
const PIPE_SIZE: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::report;

    const GOOD: &str = "[[relay]]\nlisten = \"127.0.0.1:15432\"\nconnect = \"127.0.0.1:5432\"\n\
                        keepalive = \"60s,10s,3\"\n";

    #[test]
    fn a_relay_config_gives_each_relay_its_addresses_and_keepalive() {
        let relays = parse_config(GOOD, "relays.toml").unwrap();
        assert_eq!(relays.len(), 1);
        assert_eq!(relays[0].2, Keepalive::parse("60s,10s,3").unwrap());
    }

    /// Each mistake in a relay config: its whole message (file:line:column, the key, why), its
    /// hint, and exit status 2.
    #[test]
    fn a_relay_config_mistake_names_file_line_column_and_key() {
        for (text, said, hint) in [
            (
                "",
                "relays.toml: no [[relay]] table",
                Some("write one [[relay]] table per relay"),
            ),
            (
                &GOOD.replace("60s,10s,3", "2m,abc")[..],
                "relays.toml:4:13: keepalive = \"2m,abc\": INTERVAL \"abc\" is not a duration (like 30s or 2m)",
                Some("write IDLE,INTERVAL,COUNT, e.g. keepalive = \"120s,30s,8\""),
            ),
            (
                &GOOD.replace("keepalive = \"60s,10s,3\"", "profile = \"aws-nat-gateway\"")[..],
                "relays.toml:4:11: profile = \"aws-nat-gateway\": no such profile",
                Some("did you mean aws-natgw? The profiles are azure-lb, "),
            ),
            (
                &GOOD.replace("keepalive = \"60s,10s,3\"", "keepalive = 60")[..],
                "relays.toml:4:13: keepalive: expected an IDLE,INTERVAL,COUNT string like \"120s,30s,8\", found integer 60",
                None,
            ),
            (
                &GOOD.replace("\"127.0.0.1:5432\"", "\"127.0.0.1\"")[..],
                "relays.toml:3:11: connect = \"127.0.0.1\": not HOST:PORT: no :PORT",
                Some("give HOST:PORT, e.g. db.example.com:5432"),
            ),
        ] {
            let e = parse_config(text, "relays.toml").unwrap_err();
            assert_eq!(format!("{e:#}"), said, "{text}");
            match hint {
                Some(hint) => {
                    let got = report::hint_of(&e).unwrap_or_default();
                    assert!(got.starts_with(hint), "{got}");
                }
                None => assert_eq!(report::hint_of(&e), None),
            }
            assert_eq!(report::status(&e), report::Status::Usage, "{said}");
        }
    }

    /// A name in the file that does not resolve is not the file's syntax: it fails as
    /// `--connect` does (exit 1, the resolver's reason, what to check), at the name's place.
    #[test]
    fn a_relay_config_name_that_does_not_resolve_is_a_runtime_failure_with_the_lookup_hint() {
        // .invalid never resolves (RFC 2606, section 2).
        let text = GOOD.replace("127.0.0.1:5432", "db.example.invalid:5432");
        let e = parse_config(&text, "relays.toml").unwrap_err();
        let said = format!("{e:#}");
        let start = "relays.toml:3:11: connect = \"db.example.invalid:5432\": looking up db.example.invalid: ";
        assert!(said.starts_with(start), "{said}");
        assert!(
            said.len() > start.len(),
            "the resolver's reason is missing: {said}"
        );
        assert!(!said.contains("not HOST:PORT"), "{said}");
        assert_eq!(report::status(&e), report::Status::Runtime, "{said}");
        let hint = report::hint_of(&e).unwrap_or_default();
        assert_eq!(
            hint,
            "check the name, and that this machine's resolver knows it: getent hosts db.example.invalid"
        );
    }

    #[test]
    fn metrics_of_two_relays_are_unchanged() {
        let a = Arc::new(Stats::default());
        let b = Arc::new(Stats::default());
        for (i, field) in [
            &a.connections,
            &a.open,
            &a.bytes_to_server,
            &a.bytes_to_client,
            &a.resets,
            &a.reconnects,
            &a.replayed_bytes,
            &a.heartbeat_misses,
            &a.expired,
            &a.stalled,
            &a.stalls,
            &a.legs_dialed,
            &a.legs_reused,
            &a.legs_free,
        ]
        .into_iter()
        .enumerate()
        {
            field.store(i as u64 + 1, Ordering::Relaxed);
        }
        b.bytes_to_client.store(1 << 40, Ordering::Relaxed);
        let relays = [
            ("127.0.0.1:9000".parse().unwrap(), a),
            ("[fd00::1]:443".parse().unwrap(), b),
        ];
        // What `render_metrics` wrote before it used `crate::obs::prometheus`, and the tunnel's
        // legs since.
        assert_eq!(
            render_metrics(&relays),
            include_str!("testdata/relay-metrics.prom")
        );
    }
}
