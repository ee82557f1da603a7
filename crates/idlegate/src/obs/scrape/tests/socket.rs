//! The server over a real loopback socket: streams, their ids, resumption, keepalives,
//! stalls, a stream that does not hold up a plain request, the client bound, the request and
//! answer timeouts, a body sent in pieces, the session cookies of two servers on one host.

use super::*;
use crate::obs::http::Guard;
use std::sync::atomic::{AtomicBool, Ordering};

/// A server serving [`Echo`] on its own thread; stopped and joined when dropped.
struct Serving {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    events: mpsc::Sender<StreamEvent>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Serving {
    fn start(limits: Limits) -> Serving {
        Serving::start_with(limits, Guard::default())
    }

    fn start_with(limits: Limits, guard: Guard) -> Serving {
        let mut server = Server::bind("127.0.0.1:0".parse().unwrap()).expect("binding");
        server.limits = limits;
        let addr = server.local_addr().unwrap();
        let waker = server.waker();
        let stop = Arc::new(AtomicBool::new(false));
        let (events, rx) = mpsc::channel();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut echo = Echo { events: rx };
            server.serve(&|| stopped.load(Ordering::SeqCst), &mut echo, &guard)
        });
        Serving {
            addr,
            stop,
            waker,
            events,
            thread: Some(thread),
        }
    }

    /// Hands the server `n` events named `name` with `data`, and wakes it.
    fn send(&self, name: &'static str, data: &str, n: usize) {
        for _ in 0..n {
            self.events
                .send(StreamEvent {
                    name,
                    data: data.to_string(),
                })
                .unwrap();
        }
        self.waker.wake().unwrap();
    }

    fn connect(&self) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(self.addr).expect("connecting");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream
    }

    /// Opens `GET /events` (with `Last-Event-ID`) and reads its head.
    fn stream(&self, last_event_id: Option<u64>) -> Sse {
        let mut stream = self.connect();
        let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        write!(
            stream,
            "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n{resume}\r\n"
        )
        .unwrap();
        let mut sse = Sse {
            stream,
            text: String::new(),
        };
        sse.until("\r\n\r\n");
        sse
    }
}

/// An event stream as read so far.
struct Sse {
    stream: std::net::TcpStream,
    /// Everything read, the head included.
    text: String,
}

impl Sse {
    /// Reads until the text after the head holds `needle` (or fails the test after [`WAIT`]).
    fn until(&mut self, needle: &str) -> &str {
        let mut buf = [0u8; 4096];
        while !self.text.contains(needle) {
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("closed before {needle:?}; got {:?}", self.text),
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) => panic!("{e} before {needle:?}; got {:?}", self.text),
            }
        }
        &self.text
    }

    fn head(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(h, _)| h)
    }

    fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let served = thread.join();
            if !std::thread::panicking() {
                served.expect("the server thread").expect("serving");
            }
        }
    }
}

/// How long a socket test waits for anything.
const WAIT: Duration = Duration::from_secs(10);

/// Sends `request` and reads the whole answer, to the server's FIN.
fn exchange(serving: &Serving, request: &str) -> String {
    let mut stream = serving.connect();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("the whole answer");
    answer
}

#[test]
fn an_event_stream_is_text_event_stream_no_cache_with_numbered_events() {
    let serving = Serving::start(Limits::DEFAULT);
    let mut stream = serving.stream(None);
    let head = stream.head().to_string();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("Cache-Control: no-cache\r\n"), "{head}");
    assert!(!head.contains("Content-Length"), "{head}");
    serving.send("created", "{\"rule\":\"web\"}", 2);
    stream.until("id: 2\nevent: created\ndata: {\"rule\":\"web\"}\n\n");
    assert_eq!(
        stream.body(),
        "id: 1\nevent: created\ndata: {\"rule\":\"web\"}\n\n\
         id: 2\nevent: created\ndata: {\"rule\":\"web\"}\n\n"
    );
}

#[test]
fn last_event_id_resumes_a_stream_from_the_ring_whatwg_html_9_2_4() {
    let serving = Serving::start(Limits::DEFAULT);
    // A stream, to know when the server holds the events.
    let mut first = serving.stream(None);
    serving.send("expired", "{}", 3);
    first.until("id: 3\n");
    let mut resumed = serving.stream(Some(1));
    resumed.until("id: 3\n");
    let text = resumed.body();
    assert!(
        text.starts_with("id: 2\nevent: expired\ndata: {}\n\nid: 3\n"),
        "{text}"
    );
}

#[test]
fn a_client_resuming_from_before_the_ring_is_told_lagged_with_how_many_it_missed() {
    let serving = Serving::start(Limits {
        ring: 4,
        ..Limits::DEFAULT
    });
    let mut first = serving.stream(None);
    serving.send("created", "{}", 10);
    first.until("id: 10\n");
    // Held: 7 to 10. After 1, events 2 to 6 are gone: five missed.
    let mut resumed = serving.stream(Some(1));
    resumed.until("id: 7\n");
    let text = resumed.body();
    assert!(
        text.starts_with("id: 6\nevent: lagged\ndata: {\"missed\":5,\"cause\":\"ring\",\"at_ms\":"),
        "{text}"
    );
}

#[test]
fn a_quiet_stream_is_sent_a_keepalive_comment() {
    let serving = Serving::start(Limits {
        keepalive: Duration::from_millis(200),
        ..Limits::DEFAULT
    });
    let mut stream = serving.stream(None);
    stream.until(": keepalive\n\n");
    assert_eq!(stream.body(), ": keepalive\n\n");
}

/// A stream whose client never reads: the socket's receive buffer made small, and 8 MiB of
/// events handed to the server, more than the kernel buffers of both ends hold.
fn stuck_stream(serving: &Serving) -> Sse {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&serving.addr.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut sse = Sse {
        stream,
        text: String::new(),
    };
    sse.until("\r\n\r\n");
    let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(4096));
    serving.send("created", &data, 2048);
    sse
}

#[test]
fn a_stream_its_client_does_not_read_does_not_hold_up_a_plain_request() {
    let serving = Serving::start(Limits::DEFAULT);
    let _stuck = stuck_stream(&serving);
    let answer = exchange(
        &serving,
        "GET /hello?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("{\"path\":\"/hello\",\"query\":\"x=1\"}"),
        "{answer}"
    );
}

#[test]
fn a_stream_whose_socket_takes_nothing_for_the_stall_time_is_closed() {
    let stall = Duration::from_millis(300);
    let serving = Serving::start(Limits {
        stall,
        ..Limits::DEFAULT
    });
    let since = Instant::now();
    let mut stuck = stuck_stream(&serving);
    // Not read: the server gives up on it and resets it, which the client sees without
    // reading (a stream still served would never end: the wait fails after WAIT).
    assert!(
        hung_up(&stuck.stream, WAIT),
        "the stream still open after {WAIT:?}"
    );
    assert!(
        since.elapsed() >= stall,
        "closed after {:?}",
        since.elapsed()
    );
    // What the kernel held ends there.
    let mut sink = Vec::new();
    match stuck.stream.read_to_end(&mut sink) {
        Ok(_) => assert!(sink.len() < 8 * 1024 * 1024, "{} bytes", sink.len()),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// Whether the peer closed or reset `stream` within `within`, found without reading from it
/// (epoll's `EPOLLRDHUP`, `EPOLLHUP` or `EPOLLERR`, through mio).
fn hung_up(stream: &std::net::TcpStream, within: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let mut source = mio::unix::SourceFd(&fd);
    let mut poll = Poll::new().expect("a poll");
    poll.registry()
        .register(&mut source, Token(0), Interest::READABLE)
        .expect("watching the client");
    let mut events = Events::with_capacity(4);
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match poll.poll(&mut events, Some(left)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other.expect("polling"),
        }
        if events.iter().any(|e| e.is_read_closed() || e.is_error()) {
            return true;
        }
        if left.is_zero() {
            return false;
        }
    }
}

/// A client whose receive buffer is small, connected to `serving`.
fn small_client(serving: &Serving) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&serving.addr.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

#[test]
fn a_client_that_does_not_read_its_answer_is_reset_after_the_answer_timeout() {
    let limit = Duration::from_millis(300);
    let serving = Serving::start(Limits {
        answer: limit,
        ..Limits::DEFAULT
    });
    let mut client = small_client(&serving);
    let since = Instant::now();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    assert!(hung_up(&client, WAIT), "still open after {WAIT:?}");
    assert!(
        since.elapsed() >= limit,
        "closed after {:?}",
        since.elapsed()
    );
    let mut sink = Vec::new();
    match client.read_to_end(&mut sink) {
        Ok(_) => assert!(sink.len() < BIG, "the whole answer: {} bytes", sink.len()),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn a_post_whose_body_never_completes_is_closed_after_the_request_timeout_unanswered() {
    let limit = Duration::from_millis(300);
    let serving = Serving::start(Limits {
        request: limit,
        ..Limits::DEFAULT
    });
    let since = Instant::now();
    let mut client = serving.connect();
    client
        .write_all(
            b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 10\r\n\r\n{\"a\"",
        )
        .unwrap();
    assert!(hung_up(&client, WAIT), "still open after {WAIT:?}");
    assert!(
        since.elapsed() >= limit,
        "closed after {:?}",
        since.elapsed()
    );
    let mut got = Vec::new();
    match client.read_to_end(&mut got) {
        Ok(_) => assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got)),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn a_body_trickled_in_many_writes_is_answered_once_and_whole() {
    let serving = Serving::start(Limits::DEFAULT);
    let body = format!("{{\"pad\": \"{}\"}}", "y".repeat(2000));
    let mut client = serving.connect();
    client.set_nodelay(true).unwrap();
    write!(
        client,
        "POST /api/rules/web HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    for piece in body.as_bytes().chunks(7) {
        client.write_all(piece).unwrap();
    }
    let mut answer = String::new();
    client
        .read_to_string(&mut answer)
        .expect("the whole answer");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let json: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(json["body"], body.as_str());
}

#[test]
fn past_64_clients_a_new_one_displaces_the_oldest_waiting_for_its_request_never_a_stream() {
    let serving = Serving::start(Limits {
        request: Duration::from_secs(60),
        ..Limits::DEFAULT
    });
    // The oldest client of all is a stream.
    let mut stream = serving.stream(None);
    let waiting: Vec<std::net::TcpStream> =
        (1..MAX_API_CLIENTS).map(|_| serving.connect()).collect();
    // The 65th is served: the server accepted every one before it, in order.
    let answer = exchange(&serving, "GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // The first of those waiting for their request was closed to make room; the next not.
    assert!(hung_up(&waiting[0], WAIT), "the oldest waiting still open");
    for (i, client) in waiting.iter().enumerate().skip(1) {
        assert!(!hung_up(client, Duration::ZERO), "client {i} closed");
    }
    // The stream is still served.
    serving.send("created", "{}", 1);
    stream.until("id: 1\nevent: created\n");
}

#[test]
fn two_servers_on_one_host_give_cookies_of_their_own_that_open_only_themselves() {
    let guard = || Guard {
        token: Some(TOKEN.to_string()),
    };
    let (a, b) = (
        Serving::start_with(Limits::DEFAULT, guard()),
        Serving::start_with(Limits::DEFAULT, guard()),
    );
    // `name=value` of the cookie `/?token=` sets.
    let cookie = |serving: &Serving| {
        let answer = exchange(
            serving,
            &format!("GET /?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        );
        assert!(answer.starts_with("HTTP/1.1 303 See Other\r\n"), "{answer}");
        let line = answer
            .lines()
            .find_map(|l| l.strip_prefix("Set-Cookie: "))
            .expect("a Set-Cookie")
            .to_string();
        line.split_once(';').expect("attributes").0.to_string()
    };
    let (in_a, in_b) = (cookie(&a), cookie(&b));
    let (name_a, value_a) = in_a.split_once('=').unwrap();
    let (name_b, value_b) = in_b.split_once('=').unwrap();
    assert_eq!(name_a, format!("idlegate_{}", a.addr.port()));
    assert_eq!(name_b, format!("idlegate_{}", b.addr.port()));
    assert_ne!(value_a, value_b);
    assert!(value_a != TOKEN && value_b != TOKEN);
    let status = |serving: &Serving, cookies: &str| {
        let answer = exchange(
            serving,
            &format!("GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookies}\r\n\r\n"),
        );
        answer.lines().next().unwrap_or_default().to_string()
    };
    // A browser sends both cookies to both servers: each finds its own.
    let both = format!("{in_a}; {in_b}");
    assert_eq!(status(&a, &both), "HTTP/1.1 200 OK");
    assert_eq!(status(&b, &both), "HTTP/1.1 200 OK");
    // A's cookie opens only A, under either name.
    assert_eq!(status(&b, &in_a), "HTTP/1.1 401 Unauthorized");
    assert_eq!(
        status(&b, &format!("{name_b}={value_a}")),
        "HTTP/1.1 401 Unauthorized"
    );
}

#[test]
fn a_post_over_the_socket_is_answered_with_what_the_service_made_of_its_body() {
    let serving = Serving::start(Limits::DEFAULT);
    let answer = exchange(
        &serving,
        "POST /api/rules/web HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: 23\r\n\r\n{\"idle_timeout\": \"10m\"}",
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["body"], "{\"idle_timeout\": \"10m\"}");
}

#[test]
fn past_48_streams_another_is_503_and_a_plain_request_still_finds_room() {
    let serving = Serving::start(Limits::DEFAULT);
    let _streams: Vec<Sse> = (0..MAX_STREAMS).map(|_| serving.stream(None)).collect();
    let answer = exchange(&serving, "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    let answer = exchange(&serving, "GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}
