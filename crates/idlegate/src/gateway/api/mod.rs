//! `--api ADDR`: the HTTP API and the live page, the [`Service`] the one HTTP server of `obs/`
//! serves on a thread of its own.
//!
//! Contract: every JSON answer and event is the shape the API's documentation gives
//! (snake_case keys, durations as `*_s` seconds or `at_ms` milliseconds, enums kebab-case).
//! What the gateway holds is asked of every worker through its contact, as `idlegate flows`
//! and the metrics ask (all answer within their timeout, or the request fails with 503); a
//! flows answer asks each worker for at most `limit` flows, the soonest to expire, and a
//! snapshot (`/api/counters`, `/metrics`) or a flows answer is reused for a while
//! ([`SNAPSHOT_REUSE`](super::SNAPSHOT_REUSE), [`FLOWS_REUSE`]), so that no client makes the
//! workers do more than that however often it asks. A rule's idle settings are changed by
//! [`Config::with_rule_change`], which validates them as the config file is validated and
//! refuses a change that cannot alter what the flows run; the change alone
//! ([`idlegate_core::Retiming`]) is queued to every worker, which runs it from its next turn
//! ([`idlegate_core::Engine::retime`]), and once queued it is the API's config whatever the
//! wait for the workers' confirmations gives. Events come from the workers through the feed
//! (`feed.rs`) and are handed to the server, which numbers and streams them. The page and its
//! assets are embedded in the binary.

mod events;

use super::ask::{Asker, Recent};
use super::control::{FlowRow, Shards};
use super::feed::Intake;
use crate::gateway::metrics::{self, Snapshot};
use crate::obs::http::{clipped, Answer, Method, Request, Response, Service, StreamEvent};
use idlegate_core::config::{human, RuleChange, RuleChangeError, TimeoutFrom};
use idlegate_core::{precedence, Config, DropReason, Retiming};
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
/// How long a flows answer is given again to whoever asks the same `limit`.
pub const FLOWS_REUSE: std::time::Duration = std::time::Duration::from_millis(250);

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
    /// The last snapshot of the workers (`/api/counters`, `/metrics`).
    snapshots: Recent<(), Arc<Snapshot>>,
    /// The last flows answer's body, by `limit`.
    flows_answers: Recent<usize, Arc<[u8]>>,
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
            snapshots: Recent::new(super::SNAPSHOT_REUSE),
            flows_answers: Recent::new(FLOWS_REUSE),
        }
    }

    /// The API with every answer asked of the workers anew (the tests' virtual time moves
    /// faster than the reuse's real one).
    #[cfg(test)]
    pub(super) fn without_reuse(mut self) -> Api {
        self.snapshots = Recent::new(std::time::Duration::ZERO);
        self.flows_answers = Recent::new(std::time::Duration::ZERO);
        self
    }

    fn flows(&mut self, query: &str) -> Response {
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
        let (asker, time_scale) = (&self.asker, self.config.time_scale);
        let body = self.flows_answers.get(limit, || {
            let (rows, count) = asker.view().soonest_flows(limit)?;
            let body = json!({
                "flows": rows.iter().map(flow_json).collect::<Vec<_>>(),
                "count": count,
                "truncated": count > rows.len(),
                "time_scale": time_scale,
            });
            Ok::<_, String>(Arc::from(body.to_string().into_bytes()))
        });
        match body {
            Ok(body) => Response {
                status: 200,
                content_type: "application/json",
                headers: Vec::new(),
                body: Cow::Owned(body.to_vec()),
            },
            Err(e) => Response::error(503, &e),
        }
    }

    fn snapshot(&mut self) -> Result<Arc<Snapshot>, Response> {
        let asker = &self.asker;
        self.snapshots
            .get((), || asker.view().snapshot().map(Arc::new).ok_or(()))
            .map_err(|()| Response::error(503, "a gateway worker did not answer"))
    }

    fn counters(&mut self) -> Response {
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

    fn metrics(&mut self) -> Response {
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
            Ok(next) => next,
            Err(RuleChangeError::UnknownRule { known, .. }) => {
                return Response::json(
                    404,
                    &json!({
                        "error": clipped(&format!("no rule is named \"{name}\"")),
                        "rules": known,
                    }),
                )
            }
            Err(RuleChangeError::Invalid { message, hint }) => {
                let mut body = json!({ "error": clipped(&message) });
                if let Some(hint) = hint {
                    body["hint"] = hint.into();
                }
                return Response::json(400, &body);
            }
            Err(e @ RuleChangeError::NoEffect(_)) => return Response::error(409, &e.to_string()),
        };
        let changes: Arc<[Retiming]> = Retiming::between(&self.config, &next).into();
        let view = self.asker.view();
        let asked = match view.retime(&changes) {
            Ok(asked) => asked,
            Err(e) => return Response::error(503, &e),
        };
        // Queued to every worker: each runs it from its queue, in order, however late; so it
        // is the config from now, and a later change is worked out from it.
        self.config = Arc::new(next);
        self.snapshots.forget();
        self.flows_answers.forget();
        let confirmed = view.confirmed(&asked);
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
        let mut body = json!({
            "rule": name,
            "idle_timeout_s": idle_timeout_s,
            "expiry": expiry,
            "applies": self.applies(name),
            "confirmed_by": confirmed,
            "workers": asked.workers,
        });
        if confirmed < asked.workers {
            body["message"] = format!(
                "sent to every worker; {confirmed} of {} confirmed within {:?}, the others run it when they next take their questions",
                asked.workers, self.asker.timeout
            )
            .into();
            return Response::json(202, &body);
        }
        Response::json(200, &body)
    }

    /// Rule `name`'s idle timeout as it runs (scaled, seconds) and expiry action: its TCP
    /// flows' (every rule a change is accepted for has them).
    fn rule_now(&self, name: &str) -> (f64, &'static str) {
        let e = precedence::explanation(&self.config);
        let tcp = e
            .rules
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.tcp.as_ref());
        match tcp {
            Some(t) => (t.runs.as_secs_f64(), t.expiry.as_str()),
            // A rule with no TCP flows: what it is set to (a change to it is refused, so this
            // is only said of a rule named that the config has).
            None => self.config.idle_of(name).map_or((0.0, "silent"), |idle| {
                (
                    self.config.scaled(idle.timeout).as_secs_f64(),
                    idle.expiry.as_str(),
                )
            }),
        }
    }

    /// How the change to rule `name` applies: [`APPLIES`], and, for an inbound rule whose
    /// frontend sets its own idle timeout, that the API's beats it (on the platform the
    /// frontend's wins over the rule's).
    fn applies(&self, name: &str) -> String {
        let c = &self.config;
        let lb = c.lb_rules.iter().map(|r| (&r.name, r.frontend, &r.idle));
        let nat = c
            .inbound_nat_rules
            .iter()
            .map(|r| (&r.name, r.frontend, &r.idle));
        let beaten = lb
            .chain(nat)
            .find(|(n, _, idle)| *n == name && idle.timeout_from == TimeoutFrom::Api)
            .and_then(|(_, f, _)| {
                let frontend = &c.frontends[f];
                frontend.idle_timeout.map(|t| (&frontend.name, t))
            });
        match beaten {
            Some((frontend, t)) => format!(
                "{APPLIES}. This idle timeout beats frontend {frontend}'s own idle_timeout of {}, which on the platform would win over the rule's",
                human(t)
            ),
            None => APPLIES.to_string(),
        }
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
        self.snapshots.forget();
        self.flows_answers.forget();
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
            (Method::Post, "/api/rules/") => Response::json(
                404,
                &json!({
                    "error": "give a rule name: POST /api/rules/NAME",
                    "rules": self.asker.rule_names,
                }),
            ),
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
            // `cause: feed`: the workers' feed was full, whatever this client did (the server's
            // own `lagged` says `cause: ring`: this client fell behind).
            out(StreamEvent {
                name: "lagged",
                data: json!({ "missed": lost - self.lost_said, "cause": "feed", "at_ms": at_ms })
                    .to_string(),
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
