//! The HTTP side of `--metrics`, for the gateway, the relay and `audit --metrics`: one thread
//! of its own, non-blocking (mio), serving many scrapers at once so that none can hold up
//! another, and none can hold up anything else the process serves (the gateway's control
//! socket has its own thread).
//!
//! Contract: [`Server::run`] serves until its stop check says so (wake it with the
//! [`Server::waker`]). `GET /metrics` (with or without a query: Prometheus may add parameters)
//! is answered 200 with what the render function gives (`None`: 503, so that no counter ever
//! seems to go down), and `HEAD /metrics` with the same head and no body (RFC 9110, section
//! 9.3.2, as Go's net/http answers HEAD for a GET handler); any other path, `/` included, 404
//! with a one-line body naming the path served; any other method 405 with `Allow: GET, HEAD`;
//! a request line without an HTTP version (an HTTP/0.9 "simple request") 400, as Go's net/http answers it ("malformed HTTP request"), which serves
//! Prometheus's own exporters (client_golang's promhttp, node_exporter): an HTTP/0.9 answer
//! would have no status line and no headers, and Prometheus always scrapes with HTTP/1.1; a
//! request head longer than [`MAX_REQUEST`] 431 (RFC 6585). Every answer says
//! `Connection: close` and ends in order: the answer, a FIN, then whatever the client still
//! sends is read and thrown away, for up to [`LINGER`], until its own FIN, so that request
//! bytes left unread never turn the close into a RST that destroys the answer.
//!
//! Bounds: at most [`MAX_CLIENTS`] connections at once; when full, a new one displaces a
//! connection already answered and lingering, else the one that has waited longest for its
//! request (never one whose answer is being written). A client has [`REQUEST_TIMEOUT`] from
//! its accept to send its request head and [`ANSWER_TIMEOUT`] to read the answer; at most
//! [`READS_PER_TURN`] reads per client before the others get their turn.

use anyhow::{Context, Result};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections served at once at most.
pub const MAX_CLIENTS: usize = 256;
/// The longest request head read; a longer one is answered 431.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client has from its accept to send its whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has to read its answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answered client's input is read and thrown away, waiting for its FIN.
pub const LINGER: Duration = Duration::from_secs(1);
/// Reads of one client before the others get their turn.
pub const READS_PER_TURN: usize = 16;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
/// How long to wait before accepting again after accept failed (out of descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The metrics HTTP server.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    waker: Arc<Waker>,
    clients: Slab<Client>,
}

/// One scraper's connection.
struct Client {
    stream: TcpStream,
    phase: Phase,
    accepted: Instant,
    /// When the current phase gives up.
    deadline: Instant,
}

/// Where a connection is.
enum Phase {
    /// Reading the request head.
    Reading { head: Vec<u8> },
    /// Writing the answer, from `at`.
    Writing { answer: Vec<u8>, at: usize },
    /// Answered and FIN sent: reading and throwing away until the client's FIN.
    Lingering,
}

/// The methods served: HEAD answers as GET does, without the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
}

/// What a request asks, once its head is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// `/metrics`.
    Metrics(Method),
    /// Any other path.
    NotFound(Method),
    MethodNotAllowed,
    /// A request line without an HTTP version: HTTP/0.9.
    Simple,
    Malformed,
    VersionNotSupported,
    TooLarge,
}

/// Whether a client may be served more now.
enum Turn {
    /// Waiting for the socket.
    Blocked,
    /// Its turn ended with more to read.
    More,
    /// Done with: close it.
    Close,
}

impl Server {
    /// Listens on `addr`.
    pub fn bind(addr: SocketAddr) -> Result<Server> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("listening for metrics on {addr}"))?;
        Server::with(listener)
    }

    /// Serves on a listener already bound.
    pub fn from_std(listener: std::net::TcpListener) -> Result<Server> {
        listener.set_nonblocking(true)?;
        Server::with(TcpListener::from_std(listener))
    }

    fn with(mut listener: TcpListener) -> Result<Server> {
        let poll = Poll::new().context("creating the metrics event loop")?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Server {
            poll,
            listener,
            waker,
            clients: Slab::new(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Wakes [`Server::run`] so that it looks at its stop check.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Serves until `stopped()` says so, answering scrapes with `render()`.
    pub fn run(
        &mut self,
        stopped: &dyn Fn() -> bool,
        render: &mut dyn FnMut() -> Option<String>,
    ) -> Result<()> {
        let mut events = Events::with_capacity(256);
        // Clients whose turn ended with more to read, and when accepting may be retried.
        let mut again: Vec<usize> = Vec::new();
        let mut accept_at: Option<Instant> = None;
        while !stopped() {
            let now = Instant::now();
            let next = self
                .clients
                .iter()
                .map(|(_, c)| c.deadline)
                .chain(accept_at)
                .min();
            let timeout = if again.is_empty() {
                next.map(|at| at.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.context("waiting for metrics clients")?,
            }
            let mut ready: Vec<usize> = std::mem::take(&mut again);
            for event in events.iter() {
                match event.token() {
                    LISTENER => accept_at = Some(Instant::now()),
                    WAKER => {}
                    Token(key) => ready.push(key),
                }
            }
            if accept_at.is_some_and(|at| at <= Instant::now()) {
                accept_at = self.accept();
            }
            ready.sort_unstable();
            ready.dedup();
            for key in ready {
                match self.turn(key, render) {
                    Turn::More => again.push(key),
                    Turn::Blocked => {}
                    Turn::Close => self.close(key),
                }
            }
            self.expire(Instant::now());
        }
        Ok(())
    }

    /// Accepts every waiting connection. Returns when to try again if accepting failed.
    fn accept(&mut self) -> Option<Instant> {
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
                    tracing::warn!("metrics listener: {e}");
                    return Some(Instant::now() + ACCEPT_RETRY);
                }
            };
            if self.clients.len() >= MAX_CLIENTS && !self.make_room() {
                tracing::debug!("metrics: {peer} turned away: every client is being answered");
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
                tracing::warn!("metrics: cannot watch {peer}: {e}");
                continue;
            }
            entry.insert(Client {
                stream,
                phase: Phase::Reading {
                    head: Vec::with_capacity(512),
                },
                accepted: now,
                deadline: now + REQUEST_TIMEOUT,
            });
        }
    }

    /// Closes a lingering client, else the one waiting longest for its request; false if
    /// every client is being answered.
    fn make_room(&mut self) -> bool {
        let lingering = self
            .clients
            .iter()
            .find(|(_, c)| matches!(c.phase, Phase::Lingering))
            .map(|(k, _)| k);
        let victim = lingering.or_else(|| {
            self.clients
                .iter()
                .filter(|(_, c)| matches!(c.phase, Phase::Reading { .. }))
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

    /// Closes every client whose phase ran out of time.
    fn expire(&mut self, now: Instant) {
        let late: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| k)
            .collect();
        for key in late {
            self.close(key);
        }
    }

    /// Moves one client on as far as its socket lets it.
    fn turn(&mut self, key: usize, render: &mut dyn FnMut() -> Option<String>) -> Turn {
        let Some(client) = self.clients.get_mut(key) else {
            return Turn::Blocked;
        };
        let mut buf = [0u8; 4096];
        let mut reads = 0;
        loop {
            match &mut client.phase {
                Phase::Reading { head } => {
                    if reads == READS_PER_TURN {
                        return Turn::More;
                    }
                    reads += 1;
                    let room = buf.len().min(MAX_REQUEST + 1 - head.len());
                    match client.stream.read(&mut buf[..room]) {
                        // Closed before a whole request: nothing to answer.
                        Ok(0) => return Turn::Close,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Blocked,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return Turn::Close,
                    }
                    let Some(request) = parse(head) else {
                        continue;
                    };
                    client.phase = Phase::Writing {
                        answer: answer(request, render),
                        at: 0,
                    };
                    client.deadline = Instant::now() + ANSWER_TIMEOUT;
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

/// What the request head `head` asks, once that is known: `None` while more is needed.
fn parse(head: &[u8]) -> Option<Request> {
    // Empty lines before the request line are ignored (RFC 9112, section 2.2).
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    let head = &head[start..];
    let Some(line_end) = head.iter().position(|&b| b == b'\n') else {
        return (head.len() + start > MAX_REQUEST).then_some(Request::TooLarge);
    };
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let Ok(line) = std::str::from_utf8(line) else {
        return Some(Request::Malformed);
    };
    // Split as Go's net/http does: method, target and version separated by single spaces.
    let (method, target, version) = match line.split_once(' ') {
        Some((method, rest)) => match rest.split_once(' ') {
            Some((target, version)) => (method, target, Some(version)),
            None => (method, rest, None),
        },
        None => return Some(Request::Malformed),
    };
    let Some(version) = version else {
        return Some(if method.is_empty() || target.is_empty() {
            Request::Malformed
        } else {
            Request::Simple
        });
    };
    if method.is_empty() || target.is_empty() || version.contains(' ') {
        return Some(Request::Malformed);
    }
    match version {
        "HTTP/1.0" | "HTTP/1.1" => {}
        v if v.starts_with("HTTP/") => return Some(Request::VersionNotSupported),
        _ => return Some(Request::Malformed),
    }
    // The whole head: up to its empty line.
    let rest = &head[line_end + 1..];
    let ended = rest.starts_with(b"\r\n")
        || rest.starts_with(b"\n")
        || rest.windows(4).any(|w| w == b"\r\n\r\n")
        || rest.windows(2).any(|w| w == b"\n\n");
    if !ended {
        return (head.len() + start > MAX_REQUEST).then_some(Request::TooLarge);
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return Some(Request::MethodNotAllowed),
    };
    Some(match path {
        "/metrics" => Request::Metrics(method),
        _ => Request::NotFound(method),
    })
}

/// The whole answer to `request`.
fn answer(request: Request, render: &mut dyn FnMut() -> Option<String>) -> Vec<u8> {
    let (status, extra, body) = match request {
        Request::Metrics(_) => match render() {
            Some(text) => ("200 OK", "", text),
            None => (
                "503 Service Unavailable",
                "",
                "the metrics could not be gathered now; try again\n".to_string(),
            ),
        },
        Request::NotFound(_) => (
            "404 Not Found",
            "",
            "idlegate serves GET /metrics\n".to_string(),
        ),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "idlegate serves GET /metrics\n".to_string(),
        ),
        Request::Simple => (
            "400 Bad Request",
            "",
            "a request line without an HTTP version (HTTP/0.9) is not served: send GET /metrics HTTP/1.1\n"
                .to_string(),
        ),
        Request::Malformed => (
            "400 Bad Request",
            "",
            "not an HTTP/1.x request; idlegate serves GET /metrics\n".to_string(),
        ),
        Request::VersionNotSupported => (
            "505 HTTP Version Not Supported",
            "",
            "idlegate serves HTTP/1.0 and HTTP/1.1\n".to_string(),
        ),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "",
            format!("a request head of at most {MAX_REQUEST} bytes\n"),
        ),
    };
    let content_type = if matches!(request, Request::Metrics(_)) && status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !matches!(
        request,
        Request::Metrics(Method::Head) | Request::NotFound(Method::Head)
    ) {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_as_go_net_http_reads_them() {
        let cases: [(&[u8], Option<Request>); 14] = [
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Some(Request::Metrics(Method::Get)),
            ),
            (
                b"GET /metrics HTTP/1.0\r\n\r\n",
                Some(Request::Metrics(Method::Get)),
            ),
            (
                b"\r\nGET /metrics?x=1 HTTP/1.1\r\n\r\n",
                Some(Request::Metrics(Method::Get)),
            ),
            (
                b"GET /metrics?name[]=up HTTP/1.1\n\n",
                Some(Request::Metrics(Method::Get)),
            ),
            (
                b"GET /nothing HTTP/1.1\r\n\r\n",
                Some(Request::NotFound(Method::Get)),
            ),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                Some(Request::MethodNotAllowed),
            ),
            // HTTP/0.9: Go's net/http answers 400 ("malformed HTTP request").
            (b"GET /metrics\r\n", Some(Request::Simple)),
            (
                b"GET /metrics HTTP/2.0\r\n\r\n",
                Some(Request::VersionNotSupported),
            ),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Some(Request::Malformed)),
            (b"hello\r\n", Some(Request::Malformed)),
            (b"\xff\xfe\r\n", Some(Request::Malformed)),
            // Not yet whole.
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", None),
            (b"GET /metr", None),
            (b"", None),
        ];
        for (head, want) in cases {
            assert_eq!(parse(head), want, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn only_slash_metrics_is_served_and_only_to_get_and_head() {
        let cases: [(&str, Option<Request>); 10] = [
            ("GET /metrics", Some(Request::Metrics(Method::Get))),
            ("GET /metrics?", Some(Request::Metrics(Method::Get))),
            ("HEAD /metrics", Some(Request::Metrics(Method::Head))),
            ("GET /", Some(Request::NotFound(Method::Get))),
            ("GET /?x=1", Some(Request::NotFound(Method::Get))),
            ("GET /metrics/", Some(Request::NotFound(Method::Get))),
            ("GET /metricsx", Some(Request::NotFound(Method::Get))),
            ("HEAD /", Some(Request::NotFound(Method::Head))),
            ("PUT /metrics", Some(Request::MethodNotAllowed)),
            ("DELETE /", Some(Request::MethodNotAllowed)),
        ];
        for (line, want) in cases {
            let head = format!("{line} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(parse(head.as_bytes()), want, "{line}");
        }
    }

    /// The answer as text: (status line, headers, body).
    fn answered(request: Request) -> (String, String, String) {
        let mut render = || Some("idlegate_up 1\n".to_string());
        let answer = String::from_utf8(answer(request, &mut render)).expect("UTF-8");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        let (status, headers) = head.split_once("\r\n").expect("a status line");
        (status.to_string(), headers.to_string(), body.to_string())
    }

    #[test]
    fn the_metrics_are_200_head_is_their_head_alone_another_path_404_another_method_405() {
        let (status, headers, body) = answered(Request::Metrics(Method::Get));
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("Content-Length: 14\r\n"), "{headers}");
        assert_eq!(body, "idlegate_up 1\n");
        let (status, headers, body) = answered(Request::Metrics(Method::Head));
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("Content-Length: 14\r\n"), "{headers}");
        assert_eq!(body, "");
        let (status, _, body) = answered(Request::NotFound(Method::Get));
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert_eq!(body, "idlegate serves GET /metrics\n");
        assert_eq!(answered(Request::NotFound(Method::Head)).2, "");
        let (status, headers, _) = answered(Request::MethodNotAllowed);
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(headers.contains("Allow: GET, HEAD\r\n"), "{headers}");
    }

    #[test]
    fn a_head_longer_than_the_limit_is_too_large_whether_or_not_its_line_ended() {
        let mut long_line = b"GET /".to_vec();
        long_line.resize(MAX_REQUEST + 1, b'a');
        assert_eq!(parse(&long_line), Some(Request::TooLarge));
        let mut long_headers = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long_headers.resize(MAX_REQUEST + 1, b'a');
        assert_eq!(parse(&long_headers), Some(Request::TooLarge));
        // At the limit exactly, still waiting.
        long_headers.truncate(MAX_REQUEST);
        assert_eq!(parse(&long_headers), None);
    }
}
