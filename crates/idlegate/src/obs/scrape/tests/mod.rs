//! The server's tests: what it answers to a request's bytes ([`decide`], [`received`]), for
//! the metrics and for a service behind its guard; over a real loopback socket in `socket.rs`.

use super::*;
use crate::obs::http::StreamEvent;
use std::sync::mpsc;

/// How much `/big` is: more than the kernel buffers of both ends hold.
const BIG: usize = 8 * 1024 * 1024;

/// A service for the tests: `/events` streams, `/big` is 8 MiB, a POST echoes its body, a GET
/// its path and query; events come from a channel.
struct Echo {
    events: mpsc::Receiver<StreamEvent>,
}

impl Service for Echo {
    fn answer(&mut self, request: &Request<'_>) -> Answer {
        match (request.method, request.path) {
            (_, "/events") => Answer::Events,
            (_, "/big") => Answer::Full(Response {
                status: 200,
                content_type: "text/plain",
                headers: Vec::new(),
                body: Cow::Owned(vec![b'x'; BIG]),
            }),
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
    let mut render = || Some("idlegate_up 1\n".to_string());
    let mut cx = State {
        target: Target::Metrics(&mut render),
        access: None,
        mode: Mode::Metrics,
        ring: Ring::new(1),
        epoch: Instant::now(),
        limits: Limits::DEFAULT,
    };
    match decide(&mut cx, data, 0) {
        Decision::More(_) | Decision::Body { .. } => None,
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

/// The access of a server with [`TOKEN`] on port 9466 (a new session secret each time).
fn access() -> Access {
    Access::new(TOKEN, 9466).expect("random bytes")
}

/// What a service's server, on loopback or not, with or without [`TOKEN`], makes of `data`.
fn served(token: bool, loopback: bool, data: &[u8], streams: usize) -> Decision {
    served_by(token.then(access), loopback, data, streams)
}

/// What a service's server with `access` makes of `data`.
fn served_by(access: Option<Access>, loopback: bool, data: &[u8], streams: usize) -> Decision {
    let (_events, rx) = mpsc::channel();
    let mut echo = Echo { events: rx };
    let mut cx = State {
        target: Target::Service(&mut echo),
        access,
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
        Decision::Body { end, .. } if end == head.len() + 12
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
        Decision::Body { .. }
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
        // The token is not the session cookie's value, under any name.
        "Cookie: idlegate_9466=0123456789abcdef-token\r\n",
        "Cookie: idlegate_token=0123456789abcdef-token\r\n",
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

/// The status line a service's server with `access` gives `data`.
fn status_by(access: &Access, data: &str) -> String {
    match served_by(Some(access.clone()), true, data.as_bytes(), 0) {
        Decision::Answer(answer) => split(&answer).0,
        other => panic!("{data:?}: {other:?}"),
    }
}

#[test]
fn the_token_is_taken_as_a_bearer_token_and_the_session_secret_as_the_port_s_cookie() {
    let access = access();
    let secret = &access.secret;
    for auth in [
        format!("Authorization: Bearer {TOKEN}\r\n"),
        format!("Authorization: bearer {TOKEN}\r\n"),
        format!("Cookie: idlegate_9466={secret}\r\n"),
        format!("Cookie: theme=dark; idlegate_9467=x; idlegate_9466={secret}\r\n"),
    ] {
        let status = status_by(
            &access,
            &format!("GET /api/flows HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n"),
        );
        assert_eq!(status, "HTTP/1.1 200 OK", "{auth}");
    }
    // The secret is no bearer token, and is read only under this port's name.
    for auth in [
        format!("Authorization: Bearer {secret}\r\n"),
        format!("Cookie: idlegate_token={secret}\r\n"),
        format!("Cookie: idlegate_9467={secret}\r\n"),
    ] {
        let status = status_by(
            &access,
            &format!("GET /api/flows HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n"),
        );
        assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{auth}");
    }
}

#[test]
fn a_session_cookie_of_an_earlier_run_on_the_same_port_is_401() {
    let (earlier, now) = (access(), access());
    assert_eq!(earlier.cookie, now.cookie);
    assert_ne!(earlier.secret, now.secret);
    let status = status_by(
        &now,
        &format!(
            "GET /api/flows HTTP/1.1\r\nHost: localhost\r\nCookie: idlegate_9466={}\r\n\r\n",
            earlier.secret
        ),
    );
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
}

#[test]
fn slash_with_the_right_token_is_303_to_slash_with_the_port_s_httponly_strict_session_cookie() {
    let access = access();
    let Decision::Answer(whole) = served_by(
        Some(access.clone()),
        true,
        format!("GET /?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:9466\r\n\r\n").as_bytes(),
        0,
    ) else {
        panic!("an answer")
    };
    let (status, headers, _) = split(&whole);
    assert_eq!(status, "HTTP/1.1 303 See Other");
    assert!(headers.contains("Location: /\r\n"), "{headers}");
    assert!(
        headers.contains(&format!(
            "Set-Cookie: idlegate_9466={}; HttpOnly; SameSite=Strict; Path=/\r\n",
            access.secret
        )),
        "{headers}"
    );
    // The value is 32 random bytes in hex, not the token.
    assert_eq!(access.secret.len(), 64);
    assert!(access.secret.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!headers.contains(TOKEN), "{headers}");
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

/// A service that counts the requests it answers and echoes their bodies.
struct Counting(usize);

impl Service for Counting {
    fn answer(&mut self, request: &Request<'_>) -> Answer {
        self.0 += 1;
        Answer::Full(Response::json(
            200,
            &serde_json::json!({ "body": String::from_utf8_lossy(request.body) }),
        ))
    }

    fn poll_events(&mut self, _out: &mut dyn FnMut(StreamEvent)) {}
}

#[test]
fn a_body_sent_byte_by_byte_is_judged_once_counted_and_answered_once() {
    let mut counting = Counting(0);
    let mut cx = State {
        target: Target::Service(&mut counting),
        access: Some(access()),
        mode: Mode::Service { loopback: true },
        ring: Ring::new(16),
        epoch: Instant::now(),
        limits: Limits::DEFAULT,
    };
    let body = "{\"idle_timeout\": \"10m\"}".repeat(40);
    let head = format!(
        "POST /api/rules/web HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let parses = || request::PARSES.with(|p| p.get());
    let before = parses();
    let mut phase = Phase::Reading {
        data: head.clone().into_bytes(),
        want: MAX_REQUEST + 1,
    };
    assert!(matches!(
        received(&mut cx, &mut phase, 0),
        Decision::More(n) if n == head.len() + body.len()
    ));
    let mut answered = None;
    for (i, byte) in body.bytes().enumerate() {
        let (Phase::Reading { data, .. } | Phase::Body { data, .. }) = &mut phase else {
            panic!("still reading")
        };
        data.push(byte);
        match received(&mut cx, &mut phase, 0) {
            Decision::More(_) => assert!(i + 1 < body.len(), "not answered"),
            Decision::Answer(answer) => {
                assert_eq!(i + 1, body.len(), "answered early");
                answered = Some(answer);
            }
            other => panic!("{other:?}"),
        }
    }
    // The head parsed (and the guard run) once, not once per byte of the body.
    assert_eq!(parses() - before, 1);
    drop(cx);
    assert_eq!(counting.0, 1);
    let (status, _, answer) = split(&answered.expect("an answer"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(json["body"], body.as_str());
}

// Unix only: its hangup check watches a socket through mio's `SourceFd` (epoll); the
// server's Windows build is exercised end to end under Wine (tests/e2e/windows).
#[cfg(unix)]
mod socket;
