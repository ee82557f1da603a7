//! The server's tests: what it answers to a request's bytes ([`decide`]), for the metrics and
//! for a service behind its guard, and over a real loopback socket (streams, their ids,
//! resumption, keepalives, stalls, and a stream that does not hold up a plain request).

use super::*;
use crate::obs::http::{Guard, StreamEvent};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// A service for the tests: `/events` streams, a POST echoes its body, a GET its path and
/// query; events come from a channel.
struct Echo {
    events: mpsc::Receiver<StreamEvent>,
}

impl Service for Echo {
    fn answer(&mut self, request: &Request<'_>) -> Answer {
        match (request.method, request.path) {
            (_, "/events") => Answer::Events,
            (Method::Post, path) => Answer::Full(Response::json(
                200,
                &serde_json::json!({
                    "path": path,
                    "body": String::from_utf8_lossy(request.body),
                }),
            )),
            (Method::Get, path) => Answer::Full(Response::json(
                200,
                &serde_json::json!({ "path": path, "query": request.query }),
            )),
        }
    }

    fn poll_events(&mut self, out: &mut dyn FnMut(StreamEvent)) {
        while let Ok(event) = self.events.try_recv() {
            out(event);
        }
    }
}

/// An answer split: (status line, header lines, body).
fn split(answer: &[u8]) -> (String, String, String) {
    let answer = String::from_utf8_lossy(answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let (status, headers) = head.split_once("\r\n").expect("a status line");
    (status.to_string(), headers.to_string(), body.to_string())
}

// ---- The metrics (`Server::run`): unchanged since they were a server of their own. ----

/// What the metrics server answers to `data`: `None` while it waits for more.
fn scrape(data: &[u8]) -> Option<(String, String, String)> {
    let guard = Guard::default();
    let mut render = || Some("idlegate_up 1\n".to_string());
    let mut cx = State {
        target: Target::Metrics(&mut render),
        guard: &guard,
        mode: Mode::Metrics,
        ring: Ring::new(1),
        epoch: Instant::now(),
        limits: Limits::DEFAULT,
    };
    match decide(&mut cx, data, 0) {
        Decision::More(_) => None,
        Decision::Answer(answer) => Some(split(&answer)),
        Decision::Stream { .. } => panic!("the metrics never stream"),
    }
}

/// The status code of an answer.
fn code(answered: &(String, String, String)) -> u16 {
    answered.0[9..12].parse().expect("a status code")
}

#[test]
fn requests_are_read_as_go_net_http_reads_them() {
    // (request, the status it gets and a piece of its body; `None` while it waits for more)
    type Case<'a> = (&'a [u8], Option<(u16, &'a str)>);
    let cases: [Case; 14] = [
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            Some((200, "idlegate_up 1")),
        ),
        (
            b"GET /metrics HTTP/1.0\r\n\r\n",
            Some((200, "idlegate_up 1")),
        ),
        (
            b"\r\nGET /metrics?x=1 HTTP/1.1\r\n\r\n",
            Some((200, "idlegate_up 1")),
        ),
        (
            b"GET /metrics?name[]=up HTTP/1.1\n\n",
            Some((200, "idlegate_up 1")),
        ),
        (
            b"GET /nothing HTTP/1.1\r\n\r\n",
            Some((404, "serves GET /metrics")),
        ),
        (
            b"POST /metrics HTTP/1.1\r\n\r\n",
            Some((405, "serves GET /metrics")),
        ),
        // HTTP/0.9: Go's net/http answers 400 ("malformed HTTP request").
        (b"GET /metrics\r\n", Some((400, "HTTP/0.9"))),
        (
            b"GET /metrics HTTP/2.0\r\n\r\n",
            Some((505, "HTTP/1.0 and HTTP/1.1")),
        ),
        (
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            Some((400, "not an HTTP/1.x request")),
        ),
        (b"hello\r\n", Some((400, "not an HTTP/1.x request"))),
        (b"\xff\xfe\r\n", Some((400, "not an HTTP/1.x request"))),
        // Not yet whole.
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", None),
        (b"GET /metr", None),
        (b"", None),
    ];
    for (head, want) in cases {
        let got = scrape(head);
        let text = String::from_utf8_lossy(head);
        match (want, got) {
            (None, None) => {}
            (Some((status, body)), Some(got)) => {
                assert_eq!(code(&got), status, "{text:?}: {got:?}");
                assert!(got.2.contains(body), "{text:?}: {got:?}");
            }
            (want, got) => panic!("{text:?}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn only_slash_metrics_is_served_and_only_to_get_and_head() {
    let cases: [(&str, u16); 10] = [
        ("GET /metrics", 200),
        ("GET /metrics?", 200),
        ("HEAD /metrics", 200),
        ("GET /", 404),
        ("GET /?x=1", 404),
        ("GET /metrics/", 404),
        ("GET /metricsx", 404),
        ("HEAD /", 404),
        ("PUT /metrics", 405),
        ("DELETE /", 405),
    ];
    for (line, want) in cases {
        let head = format!("{line} HTTP/1.1\r\nHost: x\r\n\r\n");
        let got = scrape(head.as_bytes()).expect("a whole request");
        assert_eq!(code(&got), want, "{line}");
    }
}

#[test]
fn the_metrics_are_200_head_is_their_head_alone_another_path_404_another_method_405() {
    let request = |line: &str| {
        scrape(format!("{line} HTTP/1.1\r\n\r\n").as_bytes()).expect("a whole request")
    };
    let (status, headers, body) = request("GET /metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("Content-Length: 14\r\n"), "{headers}");
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{headers}"
    );
    assert_eq!(body, "idlegate_up 1\n");
    let (status, headers, body) = request("HEAD /metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("Content-Length: 14\r\n"), "{headers}");
    assert_eq!(body, "");
    let (status, _, body) = request("GET /nothing");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert_eq!(body, "idlegate serves GET /metrics\n");
    assert_eq!(request("HEAD /nothing").2, "");
    let (status, headers, _) = request("POST /metrics");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.contains("Allow: GET, HEAD\r\n"), "{headers}");
}

#[test]
fn a_head_longer_than_the_limit_is_too_large_whether_or_not_its_line_ended() {
    let mut long_line = b"GET /".to_vec();
    long_line.resize(MAX_REQUEST + 1, b'a');
    assert_eq!(code(&scrape(&long_line).unwrap()), 431);
    let mut long_headers = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    long_headers.resize(MAX_REQUEST + 1, b'a');
    assert_eq!(code(&scrape(&long_headers).unwrap()), 431);
    // At the limit exactly, still waiting.
    long_headers.truncate(MAX_REQUEST);
    assert_eq!(scrape(&long_headers), None);
}

// ---- A service behind its guard: what `decide` makes of a request's bytes. ----

const TOKEN: &str = "0123456789abcdef-token";

/// What a service's server, on loopback or not, with or without [`TOKEN`], makes of `data`.
fn served(token: bool, loopback: bool, data: &[u8], streams: usize) -> Decision {
    let (_events, rx) = mpsc::channel();
    let mut echo = Echo { events: rx };
    let guard = Guard {
        token: token.then(|| TOKEN.to_string()),
    };
    let mut cx = State {
        target: Target::Service(&mut echo),
        guard: &guard,
        mode: Mode::Service { loopback },
        ring: Ring::new(16),
        epoch: Instant::now(),
        limits: Limits::DEFAULT,
    };
    decide(&mut cx, data, streams)
}

/// The whole answer a service's server gives `data` (on loopback, with or without a token).
fn answer(token: bool, data: &str) -> (String, String, String) {
    match served(token, true, data.as_bytes(), 0) {
        Decision::Answer(answer) => split(&answer),
        other => panic!("{data:?}: {other:?}"),
    }
}

#[test]
fn a_post_body_is_read_by_content_length_and_given_to_the_service() {
    let head = "POST /api/expire HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Content-Length: 12\r\n\r\n";
    // Waits for the whole body, then answers.
    assert!(matches!(
        served(false, true, format!("{head}{{\"all\"").as_bytes(), 0),
        Decision::More(n) if n == head.len() + 12
    ));
    let (status, headers, body) = answer(false, &format!("{head}{{\"all\":true}}"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("Content-Type: application/json\r\n"),
        "{headers}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["body"], "{\"all\":true}");
    assert_eq!(body["path"], "/api/expire");
}

#[test]
fn a_chunked_body_is_411_one_over_64_kib_413_and_both_lengths_400() {
    // RFC 9110, section 15.5.12 (411) and 15.5.14 (413); RFC 9112, section 6.1.
    let post = "POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n";
    let (status, _, body) = answer(false, &format!("{post}Transfer-Encoding: chunked\r\n\r\n"));
    assert_eq!(status, "HTTP/1.1 411 Length Required");
    assert!(body.contains("Content-Length"), "{body}");
    let (status, _, body) = answer(
        false,
        &format!("{post}Content-Length: {}\r\n\r\n", MAX_BODY + 1),
    );
    assert_eq!(status, "HTTP/1.1 413 Content Too Large");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "a body of at most 65536 bytes"
    );
    let (status, _, _) = answer(
        false,
        &format!("{post}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"),
    );
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    // At the bound exactly, the body is read.
    assert!(matches!(
        served(
            false,
            true,
            format!("{post}Content-Length: {MAX_BODY}\r\n\r\n").as_bytes(),
            0
        ),
        Decision::More(_)
    ));
}

#[test]
fn head_is_answered_as_get_without_the_body_rfc_9110_9_3_2() {
    let (status, headers, body) = answer(false, "HEAD /api HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (_, get_headers, get_body) = answer(false, "GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(headers, get_headers);
    assert!(headers.contains(&format!("Content-Length: {}\r\n", get_body.len())));
    assert_eq!(body, "");
}

#[test]
fn another_method_is_405_with_allow_rfc_9110_15_5_6() {
    for method in ["PUT", "DELETE", "OPTIONS", "PATCH"] {
        let (status, headers, body) = answer(
            false,
            &format!("{method} /api HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        );
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed", "{method}");
        assert!(headers.contains("Allow: GET, HEAD, POST\r\n"), "{headers}");
        assert!(body.contains("\"error\""), "{body}");
    }
}

#[test]
fn a_host_that_is_not_loopback_is_403_on_a_loopback_address_dns_rebinding() {
    let (status, _, body) = answer(
        false,
        "GET /api/flows HTTP/1.1\r\nHost: rebind.example:9466\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert!(body.contains("rebind.example"), "{body}");
    for host in ["127.0.0.1:9466", "localhost:1", "[::1]:9466", "localhost"] {
        let (status, _, _) = answer(
            false,
            &format!("GET /api/flows HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        );
        assert_eq!(status, "HTTP/1.1 200 OK", "{host}");
    }
    // RFC 9112, section 3.2: an HTTP/1.1 request without Host is 400.
    let (status, _, _) = answer(false, "GET /api/flows HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    // Off loopback, any name: the token is what guards it there.
    let data = format!(
        "GET /api HTTP/1.1\r\nHost: gateway.example\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    let Decision::Answer(answer) = served(true, false, data.as_bytes(), 0) else {
        panic!("an answer")
    };
    assert_eq!(split(&answer).0, "HTTP/1.1 200 OK");
}

#[test]
fn without_the_token_a_request_is_401_with_www_authenticate_bearer() {
    for auth in [
        "",
        "Authorization: Bearer wrong-token-0123456\r\n",
        "Authorization: Basic MDEyMzQ1Njc4OWFiY2RlZg==\r\n",
        "Cookie: idlegate_token=wrong\r\n",
        "Cookie: other=0123456789abcdef-token\r\n",
    ] {
        let (status, headers, body) = answer(
            true,
            &format!("GET /api/flows HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n"),
        );
        assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{auth}");
        assert!(
            headers.contains("WWW-Authenticate: Bearer\r\n"),
            "{headers}"
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string(),
            "{body}"
        );
    }
}

#[test]
fn the_token_is_taken_as_a_bearer_token_or_a_cookie() {
    for auth in [
        format!("Authorization: Bearer {TOKEN}\r\n"),
        format!("Authorization: bearer {TOKEN}\r\n"),
        format!("Cookie: idlegate_token={TOKEN}\r\n"),
        format!("Cookie: theme=dark; idlegate_token={TOKEN}\r\n"),
    ] {
        let (status, _, _) = answer(
            true,
            &format!("GET /api/flows HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n"),
        );
        assert_eq!(status, "HTTP/1.1 200 OK", "{auth}");
    }
}

#[test]
fn slash_with_the_right_token_is_303_to_slash_with_an_httponly_strict_cookie() {
    let (status, headers, _) = answer(
        true,
        &format!("GET /?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:9466\r\n\r\n"),
    );
    assert_eq!(status, "HTTP/1.1 303 See Other");
    assert!(headers.contains("Location: /\r\n"), "{headers}");
    assert!(
        headers.contains(&format!(
            "Set-Cookie: idlegate_token={TOKEN}; HttpOnly; SameSite=Strict; Path=/\r\n"
        )),
        "{headers}"
    );
    let (status, headers, _) = answer(
        true,
        "GET /?token=wrong-0123456789 HTTP/1.1\r\nHost: 127.0.0.1:9466\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    assert!(!headers.contains("Set-Cookie"), "{headers}");
}

#[test]
fn a_post_without_content_type_json_is_415() {
    for content_type in [
        "",
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
    ] {
        let (status, _, _) = answer(
            false,
            &format!(
                "POST /api/expire HTTP/1.1\r\nHost: localhost\r\n{content_type}Content-Length: 2\r\n\r\n{{}}"
            ),
        );
        assert_eq!(
            status, "HTTP/1.1 415 Unsupported Media Type",
            "{content_type}"
        );
    }
}

#[test]
fn the_guard_answers_before_the_body_is_judged() {
    // Without the token, a chunked or oversized POST learns only that it needs the token.
    let (status, _, _) = answer(
        true,
        "POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
}

#[test]
fn an_event_stream_beyond_the_bound_is_503_and_head_of_a_stream_is_its_head_alone() {
    let get = b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert!(matches!(
        served(false, true, get, MAX_STREAMS - 1),
        Decision::Stream { .. }
    ));
    let Decision::Answer(answer) = served(false, true, get, MAX_STREAMS) else {
        panic!("503")
    };
    assert_eq!(split(&answer).0, "HTTP/1.1 503 Service Unavailable");
    let Decision::Answer(answer) = served(
        false,
        true,
        b"HEAD /events HTTP/1.1\r\nHost: localhost\r\n\r\n",
        0,
    ) else {
        panic!("a head")
    };
    let (status, headers, body) = split(&answer);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("Content-Type: text/event-stream"),
        "{headers}"
    );
    assert_eq!(body, "");
}

// ---- Over a real loopback socket. ----

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
        let mut server = Server::bind("127.0.0.1:0".parse().unwrap()).expect("binding");
        server.limits = limits;
        let addr = server.local_addr().unwrap();
        let waker = server.waker();
        let stop = Arc::new(AtomicBool::new(false));
        let (events, rx) = mpsc::channel();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut echo = Echo { events: rx };
            server.serve(
                &|| stopped.load(Ordering::SeqCst),
                &mut echo,
                &Guard::default(),
            )
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
    let mut stuck = stuck_stream(&serving);
    // Not read for many stall times: the server gives up on it. (There is nothing to wait
    // on from outside: the client must not read meanwhile.)
    std::thread::sleep(stall * 8);
    // Then what the kernel held is read to the server's FIN; a stream still served would
    // never end (the read times out after WAIT and fails the test).
    let mut sink = Vec::new();
    stuck
        .stream
        .read_to_end(&mut sink)
        .expect("the stream closed by the server");
    assert!(sink.len() < 8 * 1024 * 1024, "{} bytes", sink.len());
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
