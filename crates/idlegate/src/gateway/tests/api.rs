//! The API's routes over workers of in-memory devices in virtual time: each request is
//! answered on a thread of its own (as the API's thread would) while the test turns the
//! workers, which answer its questions between two packets.

use super::*;
use crate::gateway::api::{Api, APPLIES};
use crate::gateway::ask::Asker;
use crate::gateway::feed;
use crate::obs::http::{Answer, Method, Request, Service, StreamEvent};
use mio::{Poll, Waker};
use serde_json::Value;

/// A rig of one worker fed to an API, and the API.
struct Served {
    rig: Rig,
    api: Option<Api>,
    /// The API server's event loop, whose waker the feed rings.
    _poll: Poll,
    /// The rig's virtual time, in ms.
    now: u64,
}

impl Served {
    fn new(expiry: &str) -> Served {
        Served::with_feed_of(expiry, feed::FEED_CAPACITY)
    }

    /// A rig whose feed holds at most `capacity` events in flight.
    fn with_feed_of(expiry: &str, capacity: usize) -> Served {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (feed, intake) = feed::feed_of(waker, capacity);
        let rig = Rig::fed(expiry, 1, false, 1024, Some(feed));
        let asker = Asker {
            contacts: rig.contacts.clone(),
            rule_names: vec!["app".to_string()],
        };
        let api = Api::new(asker, config(expiry), rig.t0, intake);
        Served {
            rig,
            api: Some(api),
            _poll: poll,
            now: 0,
        }
    }

    /// `method path?query` with `body`, answered while the worker turns at the current time.
    fn request(&mut self, method: Method, target: &str, body: &str) -> Answer {
        let mut api = self.api.take().unwrap();
        let (target, body) = (target.to_string(), body.as_bytes().to_vec());
        let thread = std::thread::spawn(move || {
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let request = Request {
                method,
                path,
                query,
                body: &body,
            };
            let answer = api.answer(&request);
            (api, answer)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the API did not answer within 10 s"
            );
            self.rig.turn(0, self.now);
            std::thread::yield_now();
        }
        let (api, answer) = thread.join().unwrap();
        self.api = Some(api);
        answer
    }

    /// The status and JSON body of a whole answer.
    fn json(&mut self, method: Method, target: &str, body: &str) -> (u16, Value) {
        match self.request(method, target, body) {
            Answer::Full(r) => {
                assert_eq!(r.content_type, "application/json", "{target}");
                (r.status, serde_json::from_slice(&r.body).unwrap())
            }
            Answer::Events => panic!("{target}: a stream, not JSON"),
        }
    }

    /// The worker's turn at `ms`.
    fn at(&mut self, ms: u64) {
        self.now = ms;
        self.rig.turn(0, ms);
    }

    /// Every event the API hands the server now, as (name, data).
    fn events(&mut self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        self.api
            .as_mut()
            .unwrap()
            .poll_events(&mut |e: StreamEvent| {
                assert!(!e.data.contains('\n'), "one line of JSON: {}", e.data);
                out.push((e.name, serde_json::from_str(&e.data).unwrap()));
            });
        out
    }
}

fn named<'a>(events: &'a [(&'static str, Value)], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, d)| d)
        .collect()
}

#[test]
fn api_lists_its_endpoints_and_serves_the_embedded_page_uncached() {
    let mut s = Served::new("silent");
    let (status, body) = s.json(Method::Get, "/api", "");
    assert_eq!(status, 200);
    let paths: Vec<&str> = body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for path in [
        "/api/flows",
        "/api/counters",
        "/api/rules",
        "/api/expire",
        "/api/events",
        "/metrics",
    ] {
        assert!(paths.contains(&path), "{path} in {paths:?}");
    }
    for (path, kind) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
    ] {
        let Answer::Full(r) = s.request(Method::Get, path, "") else {
            panic!("{path}: a stream");
        };
        assert_eq!(r.status, 200);
        assert!(
            r.content_type.starts_with(kind),
            "{path}: {}",
            r.content_type
        );
        assert!(r
            .headers
            .contains(&("Cache-Control", "no-cache".to_string())));
        assert!(!r.body.is_empty());
    }
    assert!(matches!(
        s.request(Method::Get, "/api/events", ""),
        Answer::Events
    ));
    let (status, body) = s.json(Method::Get, "/api/nothing", "");
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/api/nothing"));
    let (status, _) = s.json(Method::Post, "/api/flows", "{}");
    assert_eq!(status, 405);
}

#[test]
fn api_flows_shows_a_flow_with_its_state_idle_time_and_deadline() {
    let mut s = Served::new("silent");
    handshake(&mut s.rig, 0);
    s.at(1_000);
    let (status, body) = s.json(Method::Get, "/api/flows", "");
    assert_eq!(status, 200);
    assert_eq!(body["count"], 1);
    assert_eq!(body["truncated"], false);
    assert_eq!(body["time_scale"], 60);
    let f = &body["flows"][0];
    assert_eq!(f["rule"], "app");
    assert_eq!(f["protocol"], "tcp");
    assert_eq!(f["remote"], format!("{CLIENT}:40000"));
    assert_eq!(f["public"], format!("{FRONTEND}:{PORT}"));
    assert_eq!(f["private"], format!("{VM}:{PORT}"));
    assert_eq!(f["state"], "established");
    assert_eq!(f["timeout_s"], 4.0);
    assert_eq!(f["idle_for_s"], 1.0);
    assert_eq!(f["expires_in_s"], 3.0);
    let (_, body) = s.json(Method::Get, "/api/flows?limit=0", "");
    assert_eq!(
        (body["count"].as_u64(), body["truncated"].as_bool()),
        (Some(1), Some(true))
    );
    let (status, _) = s.json(Method::Get, "/api/flows?limit=100001", "");
    assert_eq!(status, 400);
}

#[test]
fn api_counters_say_what_the_metrics_say() {
    let mut s = Served::new("silent");
    handshake(&mut s.rig, 0);
    let (status, body) = s.json(Method::Get, "/api/counters", "");
    assert_eq!(status, 200);
    assert_eq!(body["flows"], 1);
    assert_eq!(body["flows_created"], 1);
    assert_eq!(body["forwarded"], 3);
    assert_eq!(body["drops"]["no-flow"], 0);
    let Answer::Full(metrics) = s.request(Method::Get, "/metrics", "") else {
        panic!("a stream");
    };
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(text.contains("idlegate_flows_created_total 1"), "{text}");
}

#[test]
fn a_rule_changed_through_the_api_runs_from_each_flows_next_packet() {
    let mut s = Served::new("silent");
    let (client, vm) = handshake(&mut s.rig, 0);
    s.at(1_000);
    let (status, body) = s.json(Method::Post, "/api/rules/app", r#"{"idle_timeout": "10m"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rule"], "app");
    assert_eq!(body["idle_timeout_s"], 10.0, "10 min scaled by 60");
    assert_eq!(body["expiry"], "silent");
    assert_eq!(body["applies"], APPLIES);
    let (_, rules) = s.json(Method::Get, "/api/rules", "");
    let reason = rules["rules"][0]["tcp"]["reason"].as_str().unwrap();
    assert!(reason.contains("changed through the API"), "{reason}");
    // The flow's deadline stands until its next packet, which runs the new timeout.
    let (_, flows) = s.json(Method::Get, "/api/flows", "");
    assert_eq!(flows["flows"][0]["timeout_s"], 4.0);
    s.at(2_000);
    s.rig.outside[0].push_packet(&tcp(
        (CLIENT, 40_000),
        (FRONTEND, PORT),
        PSH_ACK,
        client,
        vm,
        b"a",
    ));
    s.at(2_000);
    s.at(2_000 + IDLE_MS);
    let (_, flows) = s.json(Method::Get, "/api/flows", "");
    assert_eq!(flows["count"], 1, "the old timeout no longer applies");
    assert_eq!(flows["flows"][0]["timeout_s"], 10.0);
    s.at(12_000);
    let events = s.events();
    let changed = named(&events, "rule-changed");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["idle_timeout_s"], 10.0);
    let refreshed = named(&events, "refreshed");
    assert_eq!(refreshed.len(), 1, "{events:?}");
    assert_eq!(refreshed[0]["idle_for_s"], 2.0);
    assert_eq!(refreshed[0]["timeout_s"], 10.0);
    let expired = named(&events, "expired");
    assert_eq!(expired.len(), 1, "{events:?}");
    assert_eq!(expired[0]["at_ms"], 12_000);
    assert_eq!(expired[0]["cause"], "idle");
    assert_eq!(expired[0]["timeout_s"], 10.0);
}

#[test]
fn a_change_the_config_would_refuse_is_refused_with_the_configs_words() {
    let mut s = Served::new("silent");
    let (status, body) = s.json(
        Method::Post,
        "/api/rules/app",
        r#"{"idle_timeout": "120m"}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "idle_timeout = 120m is outside Azure LB's range: 4 min to 100 min"
    );
    let (status, body) = s.json(Method::Post, "/api/rules/web", r#"{"expiry": "reset"}"#);
    assert_eq!(status, 404);
    assert_eq!(body["rules"], serde_json::json!(["app"]));
    let (status, _) = s.json(Method::Post, "/api/rules/app", r#"{"idle": "5m"}"#);
    assert_eq!(status, 400, "an unknown key");
    let (status, _) = s.json(Method::Post, "/api/rules/app", "{}");
    assert_eq!(status, 400, "nothing to change");
    assert!(named(&s.events(), "rule-changed").is_empty());
}

#[test]
fn api_expire_resets_a_reset_rules_flows_and_streams_created_expired_and_sent() {
    let mut s = Served::new("reset");
    handshake(&mut s.rig, 0);
    s.at(500);
    let (status, body) = s.json(Method::Post, "/api/expire", r#"{"rule": "other"}"#);
    assert_eq!(status, 404);
    assert_eq!(body["rules"], serde_json::json!(["app"]));
    let (status, body) = s.json(Method::Post, "/api/expire", r#"{"rule": "app"}"#);
    assert_eq!((status, &body["expired"]), (200, &serde_json::json!(1)));
    let to_client = s.rig.outside[0].take_packets();
    let to_vm = s.rig.inside[0].take_packets();
    assert!(
        to_client.iter().any(|p| flags(p) & RST != 0),
        "a RST to the client"
    );
    assert!(to_vm.iter().any(|p| flags(p) & RST != 0), "a RST to the VM");
    let events = s.events();
    let created = named(&events, "created");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["rule"], "app");
    assert_eq!(created[0]["at_ms"], 0);
    assert_eq!(
        created[0]["timeout_s"], 3.0,
        "SYN_SENT's 30 s at the 3 s floor"
    );
    let expired = named(&events, "expired");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["cause"], "forced");
    assert_eq!(expired[0]["action"], "reset");
    assert_eq!(expired[0]["state"], "established");
    let mut sent: Vec<(&str, &str)> = named(&events, "sent")
        .iter()
        .map(|d| (d["segment"].as_str().unwrap(), d["to"].as_str().unwrap()))
        .collect();
    sent.sort_unstable();
    assert_eq!(sent, vec![("rst", "inside"), ("rst", "outside")]);
    let (status, body) = s.json(Method::Post, "/api/expire", r#"{"all": true}"#);
    assert_eq!((status, &body["expired"]), (200, &serde_json::json!(0)));
}

#[test]
fn events_the_api_thread_cannot_take_are_dropped_and_said_as_lagged_never_waited_for() {
    // Room for one event: the handshake makes one (created), the expiry three (expired and
    // two RSTs sent); the worker goes on regardless.
    let mut s = Served::with_feed_of("reset", 1);
    handshake(&mut s.rig, 0);
    s.at(IDLE_MS);
    assert_eq!(
        s.rig.workers[0].tally().counters.resets_sent,
        2,
        "the worker did not wait"
    );
    let events = s.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["created", "lagged"]);
    assert_eq!(events[1].1["missed"], 3);
    let (_, counters) = s.json(Method::Get, "/api/counters", "");
    assert_eq!(counters["events_dropped"], 3);
    assert!(s.events().is_empty(), "said once");
}
