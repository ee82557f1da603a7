//! The one HTTP server of idlegate: `--metrics` for the gateway, the relay and
//! `audit --metrics` ([`Server::run`]), and the gateway's API and live page
//! ([`Server::serve`], an [`obs::http::Service`](crate::obs::http::Service)). One thread of its
//! own, non-blocking (mio), serving many clients at once so that none can hold up another,
//! and none can hold up anything else the process serves (the gateway's control socket has
//! its own thread).
//!
//! Contract: both serve until their stop check says so (wake them with the
//! [`Server::waker`]). [`Server::run`]: `GET /metrics` (with or without a query: Prometheus may
//! add parameters) is answered 200 with what the render function gives (`None`: 503, so that
//! no counter ever seems to go down), and `HEAD /metrics` with the same head and no body (RFC
//! 9110, section 9.3.2, as Go's net/http answers HEAD for a GET handler); any other path, `/`
//! included, 404 with a one-line body naming the path served; any other method 405 with
//! `Allow: GET, HEAD`. [`Server::serve`]: GET, HEAD (as GET, without the body) and POST (a
//! body of at most [`MAX_BODY`] bytes, by Content-Length: 413 beyond, 411 for a
//! Transfer-Encoding) go to the service once the [`Guard`] let them through
//! (`guard.rs`: 403, 401, 303, 415); another method 405 with `Allow: GET, HEAD, POST`; the
//! server's own refusals have a JSON body `{"error": …}`. An [`Answer::Events`] turns the
//! connection into a `text/event-stream` (`events.rs`: ids, `Last-Event-ID`, `lagged`, a
//! `: keepalive` comment after [`KEEPALIVE`] of quiet); a stream whose socket takes no byte
//! for [`STREAM_STALL`] while it has some to send is closed.
//!
//! For both: a request line without an HTTP version (an HTTP/0.9 "simple request") 400, as
//! Go's net/http answers it ("malformed HTTP request"), which serves Prometheus's own
//! exporters (client_golang's promhttp, node_exporter): an HTTP/0.9 answer would have no
//! status line and no headers, and Prometheus always scrapes with HTTP/1.1; a request head
//! longer than [`MAX_REQUEST`] 431 (RFC 6585). Every whole answer says `Connection: close`
//! and ends in order: the answer, a FIN, then whatever the client still sends is read and
//! thrown away, for up to [`LINGER`], until its own FIN, so that request bytes left unread
//! never turn the close into a RST that destroys the answer.
//!
//! Bounds: at most [`MAX_CLIENTS`] connections at once for the metrics, [`MAX_API_CLIENTS`]
//! for a service, of which at most [`MAX_STREAMS`] streams (one more is answered 503, so that
//! plain requests always find room). When full, a new connection displaces one already
//! answered and lingering, else the one that has waited longest for its request (never one
//! whose answer is being written, never a stream: an unauthenticated flood cannot end a
//! stream). A client has [`REQUEST_TIMEOUT`] from its accept to send its request (head and
//! body; the head is judged once, when whole, and the body only counted until whole) and
//! [`ANSWER_TIMEOUT`] to read a whole answer (a client out of time before its answer is
//! written is reset); at most [`READS_PER_TURN`] reads per client before the others get
//! their turn. Writes never block: a stream copies from the
//! event ring into its own buffer ([`STREAM_BUFFER`]) and falls behind in the ring
//! when its client reads slowly.

mod events;
mod guard;
mod request;
#[cfg(test)]
mod tests;

pub use events::STREAM_BUFFER;
pub use guard::token_is_sendable;
pub use request::MAX_REQUEST;

use crate::obs::http::{
    Answer, Guard, Method, Request, Response, Service, StreamEvent, EVENT_RING, POLL_EVENTS,
};
use anyhow::{Context, Result};
use events::{Ring, Stream};
use guard::Access;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use request::{Parse, Refusal, Verb};
use slab::Slab;
use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections served at once at most by the metrics server.
pub const MAX_CLIENTS: usize = 256;
/// Connections served at once at most by a service's server (the API), streams included.
pub const MAX_API_CLIENTS: usize = 64;
/// Event streams served at once at most (of [`MAX_API_CLIENTS`]).
pub const MAX_STREAMS: usize = 48;
/// The longest body read (a POST's); a longer one is answered 413.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a client has from its accept to send its whole request, head and body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has to read a whole answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answered client's input is read and thrown away, waiting for its FIN.
pub const LINGER: Duration = Duration::from_secs(1);
/// Reads (and a stream's writes) of one client before the others get their turn.
pub const READS_PER_TURN: usize = 16;
/// How long a stream with bytes to send may go without its socket taking any.
pub const STREAM_STALL: Duration = Duration::from_secs(10);
/// How long a stream may be quiet before it is sent `: keepalive`.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
/// How long to wait before accepting again after accept failed (out of descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The timers and sizes a server runs with: the constants above (tests shorten them).
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// From the accept to the whole request, head and body ([`REQUEST_TIMEOUT`]).
    request: Duration,
    /// To write a whole answer ([`ANSWER_TIMEOUT`]).
    answer: Duration,
    stall: Duration,
    keepalive: Duration,
    ring: usize,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        request: REQUEST_TIMEOUT,
        answer: ANSWER_TIMEOUT,
        stall: STREAM_STALL,
        keepalive: KEEPALIVE,
        ring: EVENT_RING,
    };
}

/// The HTTP server.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    waker: Arc<Waker>,
    clients: Slab<Client>,
    /// When it was bound: `at_ms` of the events the server makes itself (`lagged`).
    bound: Instant,
    limits: Limits,
}

/// One client's connection.
struct Client {
    stream: TcpStream,
    phase: Phase,
    accepted: Instant,
    /// When the current phase gives up (a stream's own timers are in its [`Stream`]).
    deadline: Instant,
}

/// Where a connection is.
enum Phase {
    /// Reading the request's head: `data` so far, at most `want` bytes in all.
    Reading { data: Vec<u8>, want: usize },
    /// The head read and let through, reading its body: `data` so far, `end` bytes in all
    /// (nothing is parsed again until the body is whole).
    Body {
        data: Vec<u8>,
        end: usize,
        pending: Pending,
    },
    /// Writing the answer, from `at`.
    Writing { answer: Vec<u8>, at: usize },
    /// Writing events as they come.
    Streaming(Stream),
    /// Answered and FIN sent: reading and throwing away until the client's FIN.
    Lingering,
}

/// What is served.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `/metrics` alone, GET and HEAD, no guard.
    Metrics,
    /// A service, with the guard; `loopback`: the listener is on a loopback address.
    Service { loopback: bool },
}

/// Who answers: the metrics' render function or a service.
enum Target<'a> {
    Metrics(&'a mut dyn FnMut() -> Option<String>),
    Service(&'a mut dyn Service),
}

impl Target<'_> {
    fn answer(&mut self, request: &Request<'_>) -> Answer {
        match self {
            Target::Service(service) => service.answer(request),
            Target::Metrics(render) => Answer::Full(metrics(request.path, render)),
        }
    }
}

/// The metrics' answers: `/metrics`, or 404.
fn metrics(path: &str, render: &mut dyn FnMut() -> Option<String>) -> Response {
    let text = |status: u16, body: String| Response {
        status,
        content_type: "text/plain; charset=utf-8",
        headers: Vec::new(),
        body: Cow::Owned(body.into_bytes()),
    };
    if path != "/metrics" {
        return text(404, "idlegate serves GET /metrics\n".to_string());
    }
    match render() {
        Some(body) => Response {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..text(200, body)
        },
        None => text(
            503,
            "the metrics could not be gathered now; try again\n".to_string(),
        ),
    }
}

/// What a serving loop holds besides its clients.
struct State<'a> {
    target: Target<'a>,
    /// The token and this server's session cookie (a service's server with a token).
    access: Option<Access>,
    mode: Mode,
    ring: Ring,
    epoch: Instant,
    limits: Limits,
}

/// A request whose head was read and let through by the guard, waiting for its body.
#[derive(Debug)]
struct Pending {
    method: Method,
    /// HEAD: the answer without its body.
    head_only: bool,
    /// The request target as sent.
    target: String,
    /// Where the body starts in the bytes read.
    head_len: usize,
    last_event_id: Option<String>,
}

/// What to do with the bytes a client sent so far.
#[derive(Debug)]
enum Decision {
    /// Read more, up to this many bytes in all.
    More(usize),
    /// Read the body: `end` bytes in all, then answer `pending`.
    Body { end: usize, pending: Pending },
    /// Write this whole answer.
    Answer(Vec<u8>),
    /// Stream events: this head first, then from event `start`.
    Stream { head: Vec<u8>, start: u64 },
}

/// Whether a client may be served more now.
enum Turn {
    /// Waiting for the socket.
    Blocked,
    /// Its turn ended with more to do.
    More,
    /// Done with: close it.
    Close,
}

impl Server {
    /// Listens on `addr` for the metrics (a failure says `listening for metrics on ADDR`).
    pub fn bind(addr: SocketAddr) -> Result<Server> {
        Server::bind_for(addr, "metrics")
    }

    /// Listens on `addr` for `what` (`the API`): a failure says `listening for WHAT on ADDR`.
    pub fn bind_for(addr: SocketAddr, what: &str) -> Result<Server> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("listening for {what} on {addr}"))?;
        Server::with(listener)
    }

    /// Serves on a listener already bound.
    pub fn from_std(listener: std::net::TcpListener) -> Result<Server> {
        listener.set_nonblocking(true)?;
        Server::with(TcpListener::from_std(listener))
    }

    fn with(mut listener: TcpListener) -> Result<Server> {
        let poll = Poll::new().context("creating the HTTP server's event loop")?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Server {
            poll,
            listener,
            waker,
            clients: Slab::new(),
            bound: Instant::now(),
            limits: Limits::DEFAULT,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Wakes [`Server::run`] or [`Server::serve`] so that it looks at its stop check (and a
    /// service's events).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Serves the metrics until `stopped()` says so, answering scrapes with `render()`.
    pub fn run(
        &mut self,
        stopped: &dyn Fn() -> bool,
        render: &mut dyn FnMut() -> Option<String>,
    ) -> Result<()> {
        let context = State {
            target: Target::Metrics(render),
            access: None,
            mode: Mode::Metrics,
            ring: Ring::new(1),
            epoch: self.bound,
            limits: self.limits,
        };
        self.serve_with(stopped, context)
    }

    /// Serves `service` behind `guard` until `stopped()` says so.
    pub fn serve(
        &mut self,
        stopped: &dyn Fn() -> bool,
        service: &mut dyn Service,
        guard: &Guard,
    ) -> Result<()> {
        let local = self.local_addr()?;
        let access = match &guard.token {
            Some(token) => Some(Access::new(token, local.port())?),
            None => None,
        };
        let loopback = local.ip().is_loopback();
        let context = State {
            target: Target::Service(service),
            access,
            mode: Mode::Service { loopback },
            ring: Ring::new(self.limits.ring),
            epoch: self.bound,
            limits: self.limits,
        };
        self.serve_with(stopped, context)
    }

    fn serve_with(&mut self, stopped: &dyn Fn() -> bool, mut cx: State<'_>) -> Result<()> {
        let mut events = Events::with_capacity(256);
        // Clients whose turn ended with more to do, and when accepting may be retried.
        let mut again: Vec<usize> = Vec::new();
        let mut accept_at: Option<Instant> = None;
        let with_events = matches!(cx.target, Target::Service(_));
        let mut poll_at = Instant::now();
        while !stopped() {
            let now = Instant::now();
            let next = self
                .clients
                .iter()
                .map(|(_, c)| c.due(&cx.limits))
                .chain(accept_at)
                .chain(with_events.then_some(poll_at))
                .min();
            let timeout = if again.is_empty() {
                next.map(|at| at.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.context("waiting for HTTP clients")?,
            }
            let mut ready: Vec<usize> = std::mem::take(&mut again);
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => accept_at = Some(Instant::now()),
                    WAKER => woken = true,
                    Token(key) => ready.push(key),
                }
            }
            if with_events && (woken || Instant::now() >= poll_at) {
                if self.take_events(&mut cx) {
                    ready.extend(self.streams());
                }
                poll_at = Instant::now() + POLL_EVENTS;
            }
            if accept_at.is_some_and(|at| at <= Instant::now()) {
                accept_at = self.accept(cx.mode, &cx.limits);
            }
            ready.extend(self.expire(Instant::now(), &cx.limits));
            ready.sort_unstable();
            ready.dedup();
            for key in ready {
                match self.turn(key, &mut cx) {
                    Turn::More => again.push(key),
                    Turn::Blocked => {}
                    Turn::Close => self.close(key),
                }
            }
        }
        Ok(())
    }

    /// Takes the service's new events into the ring; whether there were any.
    fn take_events(&mut self, cx: &mut State<'_>) -> bool {
        let Target::Service(service) = &mut cx.target else {
            return false;
        };
        let before = cx.ring.next_id();
        let ring = &mut cx.ring;
        service.poll_events(&mut |event: StreamEvent| ring.push(&event));
        cx.ring.next_id() != before
    }

    /// The keys of the streaming clients.
    fn streams(&self) -> Vec<usize> {
        self.clients
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Streaming(_)))
            .map(|(k, _)| k)
            .collect()
    }

    /// Accepts every waiting connection. Returns when to try again if accepting failed.
    fn accept(&mut self, mode: Mode, limits: &Limits) -> Option<Instant> {
        let most = match mode {
            Mode::Metrics => MAX_CLIENTS,
            Mode::Service { .. } => MAX_API_CLIENTS,
        };
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    tracing::warn!("HTTP listener: {e}");
                    return Some(Instant::now() + ACCEPT_RETRY);
                }
            };
            if self.clients.len() >= most && !self.make_room() {
                tracing::debug!("HTTP: {peer} turned away: every client is being answered");
                continue;
            }
            let now = Instant::now();
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            let registered = self.poll.registry().register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            );
            if let Err(e) = registered {
                tracing::warn!("HTTP: cannot watch {peer}: {e}");
                continue;
            }
            entry.insert(Client {
                stream,
                phase: Phase::Reading {
                    data: Vec::with_capacity(512),
                    want: MAX_REQUEST + 1,
                },
                accepted: now,
                deadline: now + limits.request,
            });
        }
    }

    /// Closes a lingering client, else the one waiting longest for its request; false if
    /// every client is being answered or streamed to.
    fn make_room(&mut self) -> bool {
        let lingering = self
            .clients
            .iter()
            .find(|(_, c)| matches!(c.phase, Phase::Lingering))
            .map(|(k, _)| k);
        let victim = lingering.or_else(|| {
            self.clients
                .iter()
                .filter(|(_, c)| matches!(c.phase, Phase::Reading { .. } | Phase::Body { .. }))
                .min_by_key(|(_, c)| c.accepted)
                .map(|(k, _)| k)
        });
        match victim {
            Some(key) => {
                self.close(key);
                true
            }
            None => false,
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut client) = self.clients.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut client.stream);
        }
    }

    /// Closes every client whose phase ran out of time, and every stream stalled; gives a
    /// quiet stream its keepalive. Returns the streams that now have something to write.
    ///
    /// A client given up on before its answer was written (its request, its answer or its
    /// stream too slow) is reset (`SO_LINGER` 0): a plain close would leave the kernel
    /// holding what the client does not read, in a socket of nobody's, for minutes of
    /// zero-window probes. A lingering client, whose answer is written, is closed plainly.
    fn expire(&mut self, now: Instant, limits: &Limits) -> Vec<usize> {
        let mut late = Vec::new();
        let mut write = Vec::new();
        for (key, client) in self.clients.iter_mut() {
            match &mut client.phase {
                Phase::Streaming(stream) if stream.pending() => {
                    let stalled = now.saturating_duration_since(stream.progress) >= limits.stall;
                    if stalled {
                        late.push(key);
                    }
                }
                Phase::Streaming(stream) => {
                    stream.keepalive(now, limits.keepalive);
                    if stream.pending() {
                        write.push(key);
                    }
                }
                _ if client.deadline <= now => late.push(key),
                _ => {}
            }
        }
        for key in late {
            if let Some(client) = self.clients.get(key) {
                if !matches!(client.phase, Phase::Lingering) {
                    let _ = socket2::SockRef::from(&client.stream).set_linger(Some(Duration::ZERO));
                }
            }
            self.close(key);
        }
        write
    }

    /// Moves one client on as far as its socket lets it.
    fn turn(&mut self, key: usize, cx: &mut State<'_>) -> Turn {
        let streams = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Streaming(_)))
            .count();
        let Some(client) = self.clients.get_mut(key) else {
            return Turn::Blocked;
        };
        let mut buf = [0u8; 4096];
        let mut reads = 0;
        loop {
            match &mut client.phase {
                Phase::Reading { data, want: wanted }
                | Phase::Body {
                    data, end: wanted, ..
                } => {
                    if reads == READS_PER_TURN {
                        return Turn::More;
                    }
                    reads += 1;
                    let room = buf.len().min(wanted.saturating_sub(data.len()));
                    match client.stream.read(&mut buf[..room]) {
                        // Closed before a whole request: nothing to answer.
                        Ok(0) => return Turn::Close,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Blocked,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return Turn::Close,
                    }
                    match received(cx, &mut client.phase, streams) {
                        Decision::More(_) | Decision::Body { .. } => {}
                        Decision::Answer(answer) => {
                            client.phase = Phase::Writing { answer, at: 0 };
                            client.deadline = Instant::now() + cx.limits.answer;
                        }
                        Decision::Stream { head, start } => {
                            client.phase =
                                Phase::Streaming(Stream::new(head, start, Instant::now()));
                        }
                    }
                }
                Phase::Writing { answer, at } => {
                    match client.stream.write(&answer[*at..]) {
                        Ok(n) => *at += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Blocked,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return Turn::Close,
                    }
                    if *at == answer.len() {
                        if client.stream.shutdown(Shutdown::Write).is_err() {
                            return Turn::Close;
                        }
                        client.phase = Phase::Lingering;
                        client.deadline = Instant::now() + LINGER;
                    }
                }
                Phase::Streaming(stream) => {
                    return stream_turn(&mut client.stream, stream, cx);
                }
                Phase::Lingering => {
                    if reads == READS_PER_TURN {
                        return Turn::More;
                    }
                    reads += 1;
                    match client.stream.read(&mut buf) {
                        Ok(0) => return Turn::Close,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Blocked,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Turn::Close,
                    }
                }
            }
        }
    }
}

impl Client {
    /// When this client needs the loop's attention without its socket.
    fn due(&self, limits: &Limits) -> Instant {
        match &self.phase {
            Phase::Streaming(s) if s.pending() => s.progress + limits.stall,
            Phase::Streaming(s) => s.queued + limits.keepalive,
            _ => self.deadline,
        }
    }
}

/// One turn of a stream: what the client sends is read and thrown away (its FIN ends the
/// stream), then events are written until the socket takes no more or none are left.
fn stream_turn(socket: &mut TcpStream, stream: &mut Stream, cx: &State<'_>) -> Turn {
    let mut buf = [0u8; 1024];
    for _ in 0..READS_PER_TURN {
        match socket.read(&mut buf) {
            Ok(0) => return Turn::Close,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Turn::Close,
        }
    }
    for _ in 0..READS_PER_TURN {
        let now = Instant::now();
        stream.fill(&cx.ring, now, cx.epoch);
        if !stream.pending() {
            return Turn::Blocked;
        }
        match socket.write(&stream.out[stream.at..]) {
            Ok(n) => {
                stream.at += n;
                stream.progress = now;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Turn::Close,
        }
    }
    Turn::More
}

/// What a client still sending its request makes of the bytes it sent so far (in `phase`,
/// [`Phase::Reading`] or [`Phase::Body`]), while `streams` streams are served: a head let
/// through whose body is still to come turns `phase` into [`Phase::Body`], which then only
/// counts bytes until the body is whole and the service is asked, once. `More` and `Body`:
/// keep reading.
fn received(cx: &mut State<'_>, phase: &mut Phase, streams: usize) -> Decision {
    match phase {
        Phase::Reading { data, want } => match decide(cx, data, streams) {
            Decision::More(more) => {
                *want = more;
                Decision::More(more)
            }
            Decision::Body { end, pending } => {
                let data = std::mem::take(data);
                *phase = Phase::Body { data, end, pending };
                Decision::More(end)
            }
            decided => decided,
        },
        Phase::Body { data, end, pending } if data.len() >= *end => {
            respond(cx, pending, &data[pending.head_len..*end], streams)
        }
        Phase::Body { end, .. } => Decision::More(*end),
        _ => Decision::More(0),
    }
}

/// What to do with `data`, all a client sent so far, while `streams` streams are served:
/// the head judged (and the guard's checks made) once, when it is whole.
fn decide(cx: &mut State<'_>, data: &[u8], streams: usize) -> Decision {
    let head = match request::parse(data) {
        Parse::Incomplete => return Decision::More(MAX_REQUEST + 1),
        Parse::Refused(refusal) => {
            return Decision::Answer(encode(&refused(cx.mode, refusal), false))
        }
        Parse::Whole(head) => head,
    };
    let head_only = head.verb == Verb::Head;
    let answer = |response: Response| Decision::Answer(encode(&response, head_only));
    let method = match (head.verb, cx.mode) {
        (Verb::Get | Verb::Head, _) => Method::Get,
        (Verb::Post, Mode::Service { .. }) => Method::Post,
        _ => return answer(refused(cx.mode, Refusal::MethodNotAllowed)),
    };
    let mut pending = Pending {
        method,
        head_only,
        target: head.target.clone(),
        head_len: head.len,
        last_event_id: None,
    };
    if let Mode::Service { loopback } = cx.mode {
        let fields = match request::fields(&data[head.fields.clone()]) {
            Ok(fields) => fields,
            Err(refusal) => return answer(refused(cx.mode, refusal)),
        };
        if let guard::Verdict::Answer(response) =
            guard::check(cx.access.as_ref(), loopback, &head, &fields)
        {
            return answer(response);
        }
        let length = match method {
            Method::Post => match request::body_length(&fields, MAX_BODY) {
                Ok(length) => Some(length),
                Err(refusal) => return answer(refused(cx.mode, refusal)),
            },
            Method::Get => None,
        };
        pending.last_event_id = fields.last_event_id;
        if let Some(length) = length {
            let end = head.len + length;
            if data.len() < end {
                return Decision::Body { end, pending };
            }
            return respond(cx, &pending, &data[head.len..end], streams);
        }
    }
    respond(cx, &pending, &[], streams)
}

/// The service's (or the metrics') answer to a request let through, with its whole `body`.
fn respond(cx: &mut State<'_>, pending: &Pending, body: &[u8], streams: usize) -> Decision {
    let head_only = pending.head_only;
    let answer = |response: Response| Decision::Answer(encode(&response, head_only));
    let (path, query) = pending
        .target
        .split_once('?')
        .unwrap_or((&pending.target, ""));
    let request = Request {
        method: pending.method,
        path,
        query,
        body,
    };
    match cx.target.answer(&request) {
        Answer::Full(response) => answer(response),
        Answer::Events if head_only => Decision::Answer(stream_head()),
        Answer::Events if streams >= MAX_STREAMS => answer(Response::error(
            503,
            &format!("at most {MAX_STREAMS} event streams at once: close one and retry"),
        )),
        Answer::Events => Decision::Stream {
            head: stream_head(),
            start: cx.ring.start(pending.last_event_id.as_deref()),
        },
    }
}

/// The head of an event stream (WHATWG HTML, 9.2: `text/event-stream`); its end is the
/// connection's.
fn stream_head() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
      Connection: close\r\n\r\n"
        .to_vec()
}

/// The server's own answer to a request it refuses: as the metrics always said it (plain
/// text), or `{"error": …}` for a service.
fn refused(mode: Mode, refusal: Refusal) -> Response {
    let metrics = mode == Mode::Metrics;
    let (status, message): (u16, String) = match refusal {
        Refusal::Simple => (
            400,
            format!(
                "a request line without an HTTP version (HTTP/0.9) is not served: send GET {} HTTP/1.1",
                if metrics { "/metrics" } else { "/" }
            ),
        ),
        Refusal::Malformed if metrics => (
            400,
            "not an HTTP/1.x request; idlegate serves GET /metrics".into(),
        ),
        Refusal::Malformed => (400, "not an HTTP/1.x request".into()),
        Refusal::VersionNotSupported => (505, "idlegate serves HTTP/1.0 and HTTP/1.1".into()),
        Refusal::TooLarge => (431, format!("a request head of at most {MAX_REQUEST} bytes")),
        Refusal::MethodNotAllowed if metrics => (405, "idlegate serves GET /metrics".into()),
        Refusal::MethodNotAllowed => (405, "idlegate serves GET, HEAD and POST".into()),
        Refusal::BadField(why) => (400, format!("{why} (RFC 9112)")),
        Refusal::LengthRequired => (
            411,
            "send the body with a Content-Length (a Transfer-Encoding such as chunked is not read)"
                .into(),
        ),
        Refusal::BodyTooLarge => (413, format!("a body of at most {MAX_BODY} bytes")),
    };
    let mut response = if metrics {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: Cow::Owned(format!("{message}\n").into_bytes()),
        }
    } else {
        Response::error(status, &message)
    };
    if refusal == Refusal::MethodNotAllowed {
        let allow = if metrics {
            "GET, HEAD"
        } else {
            "GET, HEAD, POST"
        };
        response.headers.push(("Allow", allow.to_string()));
    }
    response
}

/// A whole answer as sent: the head always (Content-Length the body's), the body unless
/// `head_only` (HEAD).
fn encode(response: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        out.push_str(name);
        out.push_str(": ");
        // A value never holds a line break (one would start a header of its own).
        out.extend(value.chars().filter(|c| *c != '\r' && *c != '\n'));
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(&response.body);
    }
    out
}

/// The reason phrase of a status (RFC 9110, section 15).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        303 => "See Other",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// The fuzzer's way in (`fuzz/fuzz_targets/http_request.rs`): `data`, what a client sends,
/// given to a service's server in pieces of `piece` bytes (never more than the server asked to
/// read), as the event loop gives it, until the server answers, streams or asks for nothing
/// more. The server behind `/api/events` streams; any other request it lets through is
/// answered 200. `token`: the server has one; `loopback`: it listens on loopback.
///
/// Panics when the server breaks its contract: asking to read past the request head's and
/// body's bounds, asking for nothing while wanting more, or answering with anything but an
/// HTTP/1.1 status line.
pub fn fuzz_client(data: &[u8], piece: usize, token: bool, loopback: bool) {
    struct Answering;
    impl Service for Answering {
        fn answer(&mut self, request: &Request<'_>) -> Answer {
            if request.path == "/api/events" {
                return Answer::Events;
            }
            Answer::Full(Response::json(200, &request.body.len()))
        }
        fn poll_events(&mut self, _: &mut dyn FnMut(StreamEvent)) {}
    }
    let mut service = Answering;
    let access = if token {
        Access::new("0123456789abcdef", 9466).ok()
    } else {
        None
    };
    let mut cx = State {
        target: Target::Service(&mut service),
        access,
        mode: Mode::Service { loopback },
        ring: Ring::new(16),
        epoch: Instant::now(),
        limits: Limits::DEFAULT,
    };
    let mut phase = Phase::Reading {
        data: Vec::new(),
        want: MAX_REQUEST + 1,
    };
    let mut rest = data;
    while !rest.is_empty() {
        let (Phase::Reading { data, want }
        | Phase::Body {
            data, end: want, ..
        }) = &mut phase
        else {
            return;
        };
        let room = want.saturating_sub(data.len());
        assert!(
            room > 0,
            "the server wants {want} bytes and has them, but decided nothing"
        );
        let (taken, left) = rest.split_at(rest.len().min(piece.max(1)).min(room));
        data.extend_from_slice(taken);
        rest = left;
        match received(&mut cx, &mut phase, 0) {
            Decision::More(want) => assert!(
                want <= MAX_REQUEST + 1 + MAX_BODY,
                "the server asked to read {want} bytes"
            ),
            Decision::Answer(answer) => {
                assert!(answer.starts_with(b"HTTP/1.1 "), "{answer:?}");
                return;
            }
            Decision::Stream { head, .. } => {
                assert!(head.starts_with(b"HTTP/1.1 200 "), "{head:?}");
                return;
            }
            Decision::Body { .. } => panic!("received() turns a body to read into More"),
        }
    }
}
