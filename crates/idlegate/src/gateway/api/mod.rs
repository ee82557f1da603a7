//! `--api ADDR`: the HTTP API and the live page, the [`Service`] the one HTTP server of `obs/`
//! serves on a thread of its own.
//!
//! Contract: every JSON answer and event is the shape the API's documentation gives
//! (snake_case keys, durations as `*_s` seconds or `at_ms` milliseconds, enums kebab-case).
//! What the gateway holds is asked of every worker through its contact, as `idlegate flows`
//! and the metrics ask (all answer within their timeout, or the request fails with 503); a
//! rule's idle settings are changed by [`Config::with_rule_change`], which validates them as
//! the config file is validated, and each worker runs them from its next turn
//! ([`idlegate_core::Engine::retime`]). Events come from the workers through the feed
//! (`feed.rs`) and are handed to the server, which numbers and streams them. The page and its
//! assets are embedded in the binary.

mod events;

use super::ask::Asker;
use super::control::{FlowRow, Shards};
use super::feed::Intake;
use crate::gateway::metrics::{self, Snapshot};
use crate::obs::http::{Answer, Method, Request, Response, Service, StreamEvent};
use idlegate_core::config::{RuleChange, RuleChangeError};
use idlegate_core::{precedence, Config, DropReason};
use serde::Deserialize;
use serde_json::json;
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// The live page and its assets, embedded.
const INDEX_HTML: &str = include_str!("../page/index.html");
const APP_JS: &str = include_str!("../page/app.js");
const STYLE_CSS: &str = include_str!("../page/style.css");

/// A packet on a flow idle at least this long (lab time: the engine's) is said as `refreshed`.
pub const REFRESHED_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// `GET /api/flows` answers at most this many flows unless `limit` says fewer.
pub const FLOWS_LIMIT: usize = 10_000;
/// The most `limit` may ask.
pub const FLOWS_LIMIT_MAX: usize = 100_000;

/// Every endpoint: method, path, what it does (`GET /api`).
const ENDPOINTS: [(&str, &str, &str); 11] = [
    ("GET", "/", "the live page"),
    ("GET", "/api", "this list"),
    (
        "GET",
        "/api/flows",
        "every flow with its state, idle time and deadline (?limit=N)",
    ),
    (
        "GET",
        "/api/counters",
        "what the gateway counted, as the metrics show it",
    ),
    (
        "GET",
        "/api/rules",
        "every rule's timers and why (gateway --explain --json)",
    ),
    (
        "POST",
        "/api/rules/{name}",
        "change a rule's idle_timeout and/or expiry, as the config writes them",
    ),
    (
        "POST",
        "/api/expire",
        "expire now the flows of {\"rule\": name} or {\"all\": true}",
    ),
    ("GET", "/api/events", "the events, as Server-Sent Events"),
    ("GET", "/metrics", "the Prometheus metrics"),
    ("GET", "/assets/app.js", "the live page's script"),
    ("GET", "/assets/style.css", "the live page's style"),
];

/// How a changed rule's idle settings apply, said in the answer to a change.
pub const APPLIES: &str = "a new expiry action applies to every flow of the rule at its expiry from now; a new idle timeout applies to new flows and to each existing flow from its next packet (its current deadline stands), as Linux conntrack applies a changed timeout sysctl";

/// What the API holds: how to ask the workers, the config as it runs now, and the events.
pub(super) struct Api {
    asker: Asker,
    config: Arc<Config>,
    started: Instant,
    intake: Intake,
    /// Feed events already dropped and said (`lagged`).
    lost_said: u64,
    /// Events the API makes itself (`rule-changed`), for the next [`Service::poll_events`].
    pending: VecDeque<StreamEvent>,
}

impl Api {
    pub(super) fn new(asker: Asker, config: Config, started: Instant, intake: Intake) -> Api {
        Api {
            asker,
            config: Arc::new(config),
            started,
            intake,
            lost_said: 0,
            pending: VecDeque::new(),
        }
    }

    fn flows(&self, query: &str) -> Response {
        let limit = match param(query, "limit") {
            None => FLOWS_LIMIT,
            Some(n) => match n.parse::<usize>() {
                Ok(n) if n <= FLOWS_LIMIT_MAX => n,
                _ => {
                    return Response::error(
                        400,
                        &format!("limit={n}: give a whole number up to {FLOWS_LIMIT_MAX}"),
                    )
                }
            },
        };
        let mut rows: Vec<FlowRow> = match self.asker.view().flows() {
            Ok(rows) => rows,
            Err(e) => return Response::error(503, &e),
        };
        let count = rows.len();
        rows.truncate(limit);
        Response::json(
            200,
            &json!({
                "flows": rows.iter().map(flow_json).collect::<Vec<_>>(),
                "count": count,
                "truncated": count > limit,
                "time_scale": self.config.time_scale,
            }),
        )
    }

    fn snapshot(&self) -> Result<Snapshot, Response> {
        self.asker
            .view()
            .snapshot()
            .ok_or_else(|| Response::error(503, "a gateway worker did not answer"))
    }

    fn counters(&self) -> Response {
        let s = match self.snapshot() {
            Ok(s) => s,
            Err(r) => return r,
        };
        let c = s.counters();
        let drops: BTreeMap<&str, u64> = DropReason::ALL
            .iter()
            .map(|&r| (r.as_str(), c.dropped(r)))
            .collect();
        let d = s.device();
        Response::json(
            200,
            &json!({
                "flows": s.flow_count(),
                "forwarded": c.forwarded,
                "flows_created": c.flows_created,
                "flows_expired": c.flows_expired,
                "resets_sent": c.resets_sent,
                "acks_sent": c.acks_sent,
                "out_of_window": c.out_of_window,
                "drops": drops,
                "device_drops": {
                    "malformed": d.malformed,
                    "write-failed": d.tx_errors,
                    "undeliverable": d.undeliverable,
                    "handover-full": d.handover_dropped,
                },
                "events_dropped": self.intake.lost(),
                "snat": s.snat().iter().map(|u| json!({
                    "frontend": u.frontend.to_string(),
                    "in_use": u.lent,
                    "held": u.held,
                    "free": u.free,
                })).collect::<Vec<_>>(),
            }),
        )
    }

    fn metrics(&self) -> Response {
        match self.snapshot() {
            Ok(s) => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                headers: Vec::new(),
                body: Cow::Owned(metrics::render(&s).into_bytes()),
            },
            Err(r) => r,
        }
    }

    fn rules(&self) -> Response {
        Response::json(200, &precedence::explanation(&self.config))
    }

    fn change_rule(&mut self, name: &str, body: &[u8]) -> Response {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            idle_timeout: Option<String>,
            expiry: Option<String>,
        }
        let body: Body = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                return Response::error(
                    400,
                    &format!("the body: {e} (give {{\"idle_timeout\": \"10m\"}} and/or {{\"expiry\": \"reset\"}})"),
                )
            }
        };
        if body.idle_timeout.is_none() && body.expiry.is_none() {
            return Response::error(
                400,
                "the body names nothing to change: give \"idle_timeout\" and/or \"expiry\"",
            );
        }
        let change = RuleChange {
            idle_timeout: body.idle_timeout,
            expiry: body.expiry,
        };
        let next = match self.config.with_rule_change(name, &change) {
            Ok(next) => Arc::new(next),
            Err(RuleChangeError::UnknownRule { known, .. }) => {
                return Response::json(
                    404,
                    &json!({ "error": format!("no rule is named \"{name}\""), "rules": known }),
                )
            }
            Err(e @ RuleChangeError::Invalid(_)) => return Response::error(400, &e.to_string()),
        };
        if let Err(e) = self.asker.view().retime(&next) {
            return Response::error(503, &e);
        }
        self.config = next;
        let (idle_timeout_s, expiry) = self.rule_now(name);
        let at_ms = self.started.elapsed().as_millis() as u64;
        self.pending.push_back(StreamEvent {
            name: "rule-changed",
            data: json!({
                "rule": name,
                "idle_timeout_s": idle_timeout_s,
                "expiry": expiry,
                "at_ms": at_ms,
            })
            .to_string(),
        });
        Response::json(
            200,
            &json!({
                "rule": name,
                "idle_timeout_s": idle_timeout_s,
                "expiry": expiry,
                "applies": APPLIES,
            }),
        )
    }

    /// Rule `name`'s idle timeout as it runs (scaled, seconds) and expiry action.
    fn rule_now(&self, name: &str) -> (Option<f64>, Option<&'static str>) {
        let e = precedence::explanation(&self.config);
        e.rules
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.tcp.as_ref())
            .map_or((None, None), |t| {
                (Some(t.runs.as_secs_f64()), Some(t.expiry.as_str()))
            })
    }

    fn expire(&mut self, body: &[u8]) -> Response {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            rule: Option<String>,
            #[serde(default)]
            all: bool,
        }
        let body: Body = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                return Response::error(
                    400,
                    &format!("the body: {e} (give {{\"rule\": \"NAME\"}} or {{\"all\": true}})"),
                )
            }
        };
        let rule = match (body.rule, body.all) {
            (Some(rule), false) => Some(rule),
            (None, true) => None,
            _ => {
                return Response::error(400, "give either {\"rule\": \"NAME\"} or {\"all\": true}")
            }
        };
        let known = &self.asker.rule_names;
        if let Some(rule) = &rule {
            if !known.iter().any(|n| n == rule) {
                return Response::json(
                    404,
                    &json!({ "error": format!("no rule is named \"{rule}\""), "rules": known }),
                );
            }
        }
        match self.asker.view().expire(rule.as_deref()) {
            Ok(n) => Response::json(200, &json!({ "expired": n })),
            Err(e) => Response::error(503, &e),
        }
    }
}

impl Service for Api {
    fn answer(&mut self, request: &Request<'_>) -> Answer {
        let path = request.path;
        let rule = path.strip_prefix("/api/rules/").filter(|n| !n.is_empty());
        let response = match (request.method, path) {
            (Method::Get, "/") => asset("text/html; charset=utf-8", INDEX_HTML),
            (Method::Get, "/assets/app.js") => asset("text/javascript; charset=utf-8", APP_JS),
            (Method::Get, "/assets/style.css") => asset("text/css; charset=utf-8", STYLE_CSS),
            (Method::Get, "/api") => Response::json(
                200,
                &json!({ "endpoints": ENDPOINTS.iter().map(|(method, path, what)| json!({
                    "method": method, "path": path, "what": what,
                })).collect::<Vec<_>>() }),
            ),
            (Method::Get, "/api/events") => return Answer::Events,
            (Method::Get, "/api/flows") => self.flows(request.query),
            (Method::Get, "/api/counters") => self.counters(),
            (Method::Get, "/api/rules") => self.rules(),
            (Method::Get, "/metrics") => self.metrics(),
            (Method::Post, "/api/expire") => self.expire(request.body),
            (Method::Post, _) if rule.is_some() => {
                let name = percent_decoded(rule.unwrap_or_default());
                self.change_rule(&name, request.body)
            }
            (method, _) => match allowed(path) {
                Some(allow) => {
                    let mut r = Response::error(
                        405,
                        &format!("{path} takes {allow}, not {}", method_name(method)),
                    );
                    r.headers.push(("Allow", allow.to_string()));
                    r
                }
                None => Response::error(
                    404,
                    &format!("no such endpoint: {path} (GET /api lists them)"),
                ),
            },
        };
        Answer::Full(response)
    }

    fn poll_events(&mut self, out: &mut dyn FnMut(StreamEvent)) {
        while let Some(e) = self.pending.pop_front() {
            out(e);
        }
        let rules = &self.asker.rule_names;
        while let Ok(fed) = self.intake.events.try_recv() {
            if let Some(e) = events::stream_event(rules, self.started, &fed) {
                out(e);
            }
        }
        let lost = self.intake.lost();
        if lost > self.lost_said {
            let at_ms = self.started.elapsed().as_millis() as u64;
            out(StreamEvent {
                name: "lagged",
                data: json!({ "missed": lost - self.lost_said, "at_ms": at_ms }).to_string(),
            });
            self.lost_said = lost;
        }
    }
}

/// An embedded asset, which the browser asks again every time.
fn asset(content_type: &'static str, text: &'static str) -> Response {
    Response {
        status: 200,
        content_type,
        headers: vec![("Cache-Control", "no-cache".to_string())],
        body: Cow::Borrowed(text.as_bytes()),
    }
}

/// The method `path` takes, if it is an endpoint.
fn allowed(path: &str) -> Option<&'static str> {
    match path {
        "/api/expire" => Some("POST"),
        p if p.starts_with("/api/rules/") => Some("POST"),
        p if ENDPOINTS.iter().any(|(m, e, _)| *m == "GET" && *e == p) => Some("GET"),
        _ => None,
    }
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Post => "POST",
    }
}

/// The value of `key` in a query string, if given.
fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `%XX` decoded (a rule's name in a path); anything malformed is left as it is.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A TCP state as the API says it: kebab-case (`ESTABLISHED` → `established`, `SYN_SENT` →
/// `syn-sent`).
pub(super) fn state_name(state: &str) -> String {
    state.to_ascii_lowercase().replace('_', "-")
}

/// A flow as `GET /api/flows` gives it.
fn flow_json(f: &FlowRow) -> serde_json::Value {
    json!({
        "rule": f.rule,
        "protocol": f.protocol,
        "remote": f.remote,
        "public": f.public,
        "private": f.private,
        "state": state_name(&f.state),
        "idle_for_s": f.idle_for_s,
        "expires_in_s": f.expires_in_s,
        "timeout_s": f.timeout_s,
    })
}
