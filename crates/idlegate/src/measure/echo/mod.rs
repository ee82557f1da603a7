//! `idlegate echo`: the cooperating far end of `idlegate probe`.
//!
//! Contract: [`Echo::bind`] listens on a TCP address; [`Echo::run`] accepts until stopped,
//! serving each connection on its own thread, so many probe connections (of one or several
//! probes) run at once. A connection speaks the protocol of [`frame`]: echo confirms every
//! `Data` it really read, sends `LaterReply` once a `Later` request's delay has passed in
//! silence, and keeps a [`Report`] per named connection for `Status` queries from other
//! connections, so a probe can tell data that never arrived from a reply that never came
//! back. A connection that breaks the protocol gets an `Error` frame and a log line naming the
//! peer and the fault, and is closed; nothing else is affected. Reports are kept for an hour,
//! at most [`MAX_REPORTS`] of them. Bounds on what peers can hold: [`MAX_CONNECTIONS`] at once
//! (or [`Echo::set_max_connections`]), a connection closed after [`MAX_SILENCE`] with nothing
//! pending, writes that give up after 10 s, a decoder that refuses bodies over 1 KiB.
//!
//! A connection past the limit is refused, never just closed: it gets an `Error` frame, then a
//! FIN, and what the peer sends (its hello) is read and discarded for up to [`REFUSAL_LINGER`]
//! until its own FIN, so that no RST can overtake the frame and the probe learns that echo is
//! full rather than taking a bare FIN for a path that closes connections. At most
//! [`MAX_REFUSING`] refusals linger at once; beyond them the frame and FIN are sent and the
//! socket closed at once.

pub mod frame;

use crate::sys::evidence::{self, Acknowledgement};
use crate::sys::poll::wait_readable;
use crate::sys::socket::{self, accept_until_stopped};
use anyhow::{Context, Result};
use frame::{ConnId, Decoder, Frame, LaterOutcome, ProtocolError, Report};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Reports kept at most; when full, those older than an hour go, then the oldest.
pub const MAX_REPORTS: usize = 65_536;
/// How long a report is kept.
const REPORT_LIFETIME: Duration = Duration::from_secs(3600);
/// Connections served at once at most; more are refused with an `Error` frame.
pub const MAX_CONNECTIONS: usize = 4096;
/// A connection silent this long with nothing pending is closed: longer than any probe's
/// idle time, and the only way to free one whose peer vanished behind a silent box (echo never
/// sends keepalives: they would refresh the very flows being measured).
pub const MAX_SILENCE: Duration = Duration::from_secs(2 * 3600);
/// How long a write may block (a peer that never reads).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long echo watches for TCP's acknowledgement of a delayed reply.
const ACK_WAIT: Duration = Duration::from_secs(1);
/// How long a refused connection is read (and what comes discarded) after its error frame.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(2);
/// Refused connections lingering at once at most (each on a short-lived thread).
pub const MAX_REFUSING: usize = 64;
/// The error text of a refusal for want of room.
pub const FULL: &str = "echo is serving as many connections as it may; try again later";

/// What echo knows of every named connection.
#[derive(Debug, Default)]
struct Reports {
    by_conn: Mutex<HashMap<ConnId, (Report, Instant)>>,
}

impl Reports {
    fn lock(&self) -> MutexGuard<'_, HashMap<ConnId, (Report, Instant)>> {
        // A thread that panicked holding the lock left a map that is still consistent.
        self.by_conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the report of `id`.
    fn open(&self, id: ConnId) {
        let mut map = self.lock();
        if map.len() >= MAX_REPORTS {
            map.retain(|_, (_, at)| at.elapsed() < REPORT_LIFETIME);
        }
        if map.len() >= MAX_REPORTS {
            // Still full of recent ones: the oldest goes.
            let oldest = map.iter().min_by_key(|(_, (_, at))| *at).map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        let fresh = Report {
            last_received: None,
            later: LaterOutcome::Pending,
        };
        map.insert(id, (fresh, Instant::now()));
    }

    fn update(&self, id: ConnId, change: impl FnOnce(&mut Report)) {
        if let Some((report, at)) = self.lock().get_mut(&id) {
            change(report);
            *at = Instant::now();
        }
    }

    fn get(&self, id: ConnId) -> Option<Report> {
        self.lock().get(&id).map(|(r, _)| *r)
    }
}

/// A running echo server.
pub struct Echo {
    listener: TcpListener,
    reports: Arc<Reports>,
    stop: Arc<AtomicBool>,
    max_connections: usize,
}

impl Echo {
    /// Listens on `addr` (port 0 picks one: see [`Echo::local_addr`]).
    pub fn bind(addr: SocketAddr) -> Result<Echo> {
        let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        Ok(Echo {
            listener,
            reports: Arc::default(),
            stop: Arc::default(),
            max_connections: MAX_CONNECTIONS,
        })
    }

    /// Serves at most `max` connections at once (at least one); more are refused.
    pub fn set_max_connections(&mut self, max: usize) {
        self.max_connections = max.max(1);
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// A flag that stops [`Echo::run`] when set (within [`STOP_CHECK`](crate::sys::poll::STOP_CHECK)).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Accepts and serves connections until the stop flag is set.
    pub fn run(&self) -> Result<()> {
        let live = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(AtomicUsize::new(0));
        accept_until_stopped(
            &self.listener,
            &self.stop,
            "echo",
            || true,
            |stream, peer| {
                if live.load(Ordering::Relaxed) >= self.max_connections {
                    tracing::warn!(
                        "echo: refusing {peer}: {} connections already",
                        self.max_connections
                    );
                    refuse(stream, peer, &refusing);
                    return Ok(());
                }
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                let (reports, count) = (self.reports.clone(), live.clone());
                count.fetch_add(1, Ordering::Relaxed);
                let spawned = std::thread::Builder::new()
                    .name(format!("echo {peer}"))
                    .spawn(move || {
                        Connection::new(stream, peer, reports).serve();
                        count.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    live.fetch_sub(1, Ordering::Relaxed);
                }
                spawned.map(drop)
            },
        )
        .context("waiting for connections")
    }
}

/// Refuses `stream` for want of room: an error frame, a FIN, then (on a thread of its own, if
/// fewer than [`MAX_REFUSING`] are) what the peer sends is read and discarded until its FIN or
/// [`REFUSAL_LINGER`]. Closing a socket with unread input sends a RST, which may overtake the
/// frame; reading the peer's hello first avoids it.
fn refuse(stream: TcpStream, peer: SocketAddr, refusing: &Arc<AtomicUsize>) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = (&stream).write_all(&Frame::Error(FULL.into()).encode());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    if refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let count = refusing.clone();
    let lingering = std::thread::Builder::new()
        .name(format!("echo refusing {peer}"))
        .spawn(move || {
            let until = Instant::now() + REFUSAL_LINGER;
            let mut sink = [0u8; 1024];
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                    break;
                }
                match (&stream).read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            count.fetch_sub(1, Ordering::Relaxed);
        });
    if lingering.is_err() {
        refusing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One probe connection on echo's side.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    reports: Arc<Reports>,
    name: Option<ConnId>,
    /// A `Later` request: its sequence number and when to answer.
    later: Option<(u32, Instant)>,
    /// A `LaterReply` was written: an error after it still belongs in the report.
    replied: bool,
}

/// Why serving a connection stopped early.
enum Stop {
    /// The peer broke the protocol.
    Protocol(ProtocolError),
    /// A frame that is valid but not what echo accepts here.
    Unexpected(&'static str),
    /// The socket failed or closed.
    Io,
}

impl Connection {
    fn new(stream: TcpStream, peer: SocketAddr, reports: Arc<Reports>) -> Connection {
        Connection {
            stream,
            peer,
            reports,
            name: None,
            later: None,
            replied: false,
        }
    }

    fn serve(mut self) {
        let mut decoder = Decoder::default();
        let mut buf = [0u8; 4096];
        let stop = loop {
            // Wait (poll, to the millisecond) until the delayed reply is due, or for
            // MAX_SILENCE; read only a socket that has something to say. No read timeout: on
            // Windows a receive that timed out leaves the socket "indeterminate" (SO_RCVTIMEO,
            // Microsoft's SOL_SOCKET options page), and on Linux it runs late.
            let timeout = Some(match self.later {
                Some((_, at)) => at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
                None => MAX_SILENCE,
            });
            match wait_readable(socket::raw(&self.stream), timeout) {
                Ok(true) => {}
                Ok(false) if self.later.is_none() => {
                    tracing::info!("echo: closing {}: silent for {MAX_SILENCE:?}", self.peer);
                    break Stop::Io;
                }
                Ok(false) => {
                    self.answer_later();
                    continue;
                }
                Err(_) => break Stop::Io,
            }
            match self.stream.read(&mut buf) {
                // An end of stream that was a RST (Wine reads one as an end of stream).
                Ok(0) if evidence::ended_by_reset(&self.stream) => {
                    self.reset_seen(u16::try_from(crate::sys::errno::ECONNRESET).unwrap_or(0));
                    break Stop::Io;
                }
                Ok(0) => {
                    if decoder.pending() > 0 {
                        tracing::info!(
                            "echo: {} closed in the middle of a frame ({} bytes)",
                            self.peer,
                            decoder.pending()
                        );
                    }
                    break Stop::Io;
                }
                Ok(n) => {
                    if let Err(e) = decoder.feed(&buf[..n]) {
                        break Stop::Protocol(e);
                    }
                    if let Err(stop) = self.frames(&mut decoder) {
                        break stop;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.answer_later();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.reset_seen(e.raw_os_error().unwrap_or(0) as u16);
                    break Stop::Io;
                }
            }
        };
        let fault = match stop {
            Stop::Protocol(e) => Some(e.to_string()),
            Stop::Unexpected(what) => Some(what.to_string()),
            Stop::Io => None,
        };
        if let Some(fault) = fault {
            tracing::warn!("echo: closing {}: {fault}", self.peer);
            let _ = self.stream.write_all(&Frame::Error(fault).encode());
        }
        if let (Some(name), Some(_)) = (self.name, self.later) {
            self.reports
                .update(name, |r| r.later = LaterOutcome::Closed);
        }
    }

    /// The connection failed with `errno` (a RST): if a reply was due or went out, the report
    /// says so.
    fn reset_seen(&mut self, errno: u16) {
        if let (Some(name), true) = (self.name, self.later.is_some() || self.replied) {
            self.reports
                .update(name, |r| r.later = LaterOutcome::Failed(errno));
            self.later = None;
        }
    }

    /// Handles every whole frame the decoder holds.
    fn frames(&mut self, decoder: &mut Decoder) -> Result<(), Stop> {
        while let Some(frame) = decoder.decode().map_err(Stop::Protocol)? {
            let reply = self.handle(frame)?;
            if let Some(reply) = reply {
                self.stream
                    .write_all(&reply.encode())
                    .map_err(|_| Stop::Io)?;
            }
        }
        Ok(())
    }

    fn handle(&mut self, frame: Frame) -> Result<Option<Frame>, Stop> {
        match (frame, self.name) {
            (Frame::Hello(id), None) => {
                self.reports.open(id);
                self.name = Some(id);
                Ok(Some(Frame::Welcome(id)))
            }
            (Frame::Hello(_), Some(_)) => Err(Stop::Unexpected("a second hello")),
            (Frame::Status(id), _) => Ok(Some(Frame::Report(self.reports.get(id)))),
            (Frame::Data { seq, .. }, Some(name)) => {
                self.reports.update(name, |r| {
                    r.last_received = Some(r.last_received.map_or(seq, |s| s.max(seq)));
                });
                Ok(Some(Frame::Received { seq }))
            }
            (Frame::Later { seq, delay_ms }, Some(name)) => {
                let at = Instant::now() + Duration::from_millis(u64::from(delay_ms));
                self.later = Some((seq, at));
                self.reports
                    .update(name, |r| r.later = LaterOutcome::Pending);
                Ok(Some(Frame::Received { seq }))
            }
            (Frame::Data { .. } | Frame::Later { .. }, None) => {
                Err(Stop::Unexpected("data before hello"))
            }
            (
                Frame::Welcome(_)
                | Frame::Received { .. }
                | Frame::LaterReply { .. }
                | Frame::Report(_)
                | Frame::Error(_),
                _,
            ) => Err(Stop::Unexpected("a frame only echo sends")),
        }
    }

    /// Sends the `LaterReply` whose delay has run out, and records how the write went.
    fn answer_later(&mut self) {
        let Some((seq, at)) = self.later else {
            return;
        };
        if Instant::now() < at {
            return;
        }
        self.later = None;
        self.replied = true;
        let outcome = match self.stream.write_all(&Frame::LaterReply { seq }.encode()) {
            Ok(()) => LaterOutcome::Sent,
            Err(e) => LaterOutcome::Failed(e.raw_os_error().unwrap_or(0) as u16),
        };
        if let Some(name) = self.name {
            self.reports.update(name, |r| r.later = outcome);
            if outcome == LaterOutcome::Sent && self.acknowledged_within(ACK_WAIT) {
                self.reports.update(name, |r| {
                    if r.later == LaterOutcome::Sent {
                        r.later = LaterOutcome::Acknowledged;
                    }
                });
            }
        }
    }

    /// Whether TCP acknowledges everything echo wrote within `limit` (watched through
    /// TCP_INFO or SIO_TCP_INFO): a reply acknowledged and never seen by the probe was taken in
    /// by the box. Where the system does not say, never (the reply stays `Sent`).
    fn acknowledged_within(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            match evidence::acknowledgement(&self.stream) {
                Acknowledgement::All => return true,
                Acknowledgement::Pending if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => return false,
            }
        }
    }
}
