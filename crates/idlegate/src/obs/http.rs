//! What the one HTTP server of `obs/` ([`crate::obs::scrape`]) asks of whoever it serves: a
//! [`Service`] answers each request, whole ([`Answer::Full`]) or as a stream of Server-Sent
//! Events ([`Answer::Events`]), and hands the server the events to stream
//! ([`Service::poll_events`]).
//!
//! Contract: the server parses and bounds requests (head, body, time, clients), checks the
//! [`Guard`] (the token, compared in constant time; the `Host` header of a loopback address;
//! `Content-Type: application/json` on a request that changes something) before a service
//! sees anything, and owns the streams: it numbers every event, keeps the last
//! [`EVENT_RING`] of them so that a client that reconnects with `Last-Event-ID` misses
//! nothing, and tells a client that fell further behind how many it missed (`lagged`). A
//! service never blocks for long: it answers from what it holds, or asks the gateway's
//! workers (bounded by their answer timeout).

use std::borrow::Cow;

/// Events the server keeps for streams, oldest dropped first.
pub const EVENT_RING: usize = 16 * 1024;

/// The methods a service may be asked. HEAD is answered by the server as GET without the
/// body; any other method is answered 405 before a service sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// One request, as the server read it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: Method,
    /// The path, percent-decoding not done, without the query (`/api/flows`).
    pub path: &'a str,
    /// What follows `?`, or empty.
    pub query: &'a str,
    /// The body of a POST (at most the server's bound); empty for GET.
    pub body: &'a [u8],
}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// 200, 400, 404, …
    pub status: u16,
    pub content_type: &'static str,
    /// Headers besides Content-Type, Content-Length and Connection (Allow, Cache-Control, …).
    pub headers: Vec<(&'static str, String)>,
    /// Embedded assets are borrowed, answers made now are owned.
    pub body: Cow<'static, [u8]>,
}

impl Response {
    /// `status` with a JSON body.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        let body = serde_json::to_vec(value).unwrap_or_else(|e| {
            format!("{{\"error\":\"the answer could not be written: {e}\"}}").into_bytes()
        });
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: Cow::Owned(body),
        }
    }

    /// `status` with `{"error": message}`; a message longer than [`MAX_ERROR`] bytes (one that
    /// quotes a huge value back) is cut there, saying how much was left out.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": clipped(message) }))
    }
}

/// The longest error message an answer quotes whole.
pub const MAX_ERROR: usize = 512;

/// `message`, or its first [`MAX_ERROR`] bytes (to a character boundary) and how many more
/// there were.
pub fn clipped(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_ERROR {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut end = MAX_ERROR;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}… ({} more bytes left out)",
        &message[..end],
        message.len() - end
    ))
}

/// How a service answers a request.
#[derive(Debug, Clone)]
pub enum Answer {
    Full(Response),
    /// Turn the connection into a `text/event-stream`: every event the service hands the
    /// server from now on (and, with `Last-Event-ID`, those after that id still held).
    Events,
}

/// One event for the streams: `event: <name>` and `data: <data>` (one line of JSON); the
/// server adds `id:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// kebab-case: `created`, `expired`, …
    pub name: &'static str,
    /// One line of JSON (no newline in it).
    pub data: String,
}

/// What the server checks before a service sees a request.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// The bearer token every request must carry (`Authorization: Bearer …`, or the cookie
    /// the page sets from `/?token=…`); `None`: no token (loopback only).
    pub token: Option<String>,
}

/// Whoever the server serves.
pub trait Service: Send {
    /// Answers one request.
    fn answer(&mut self, request: &Request<'_>) -> Answer;
    /// Hands the server every event for the streams that came since the last call; called
    /// when the server is woken (its waker) and at least every [`POLL_EVENTS`].
    fn poll_events(&mut self, out: &mut dyn FnMut(StreamEvent));
}

/// How often the server asks a service for events even when not woken.
pub const POLL_EVENTS: std::time::Duration = std::time::Duration::from_millis(100);

// The server side (`obs/scrape/`): `Server::bind(addr)` as today, then
// `Server::serve(&mut self, stopped: &dyn Fn() -> bool, service: &mut dyn Service,
// guard: &Guard) -> Result<()>` serves a service until stopped; `Server::run` (metrics only)
// stays as it is for the relay and `audit --metrics`, served through the same code.

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_quoting_a_huge_value_is_cut_saying_how_much_was_left_out() {
        let message = format!(
            "idle_timeout = \"{}é\" is not a duration",
            "x".repeat(60_000)
        );
        let r = Response::error(400, &message);
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
        let text = v["error"].as_str().expect("error");
        assert!(text.len() < MAX_ERROR + 64, "{} bytes", text.len());
        assert!(text.ends_with(" more bytes left out)"), "{text}");
        assert_eq!(
            Response::error(400, "short").body.as_ref(),
            br#"{"error":"short"}"#
        );
    }
}
