//! The API's routes over workers of in-memory devices in virtual time: each request is
//! answered on a thread of its own (as the API's thread would) while the test turns the
//! workers, which answer its questions between two packets.

use super::*;
use crate::gateway::api::{Api, APPLIES};
use crate::gateway::ask::Asker;
use crate::gateway::feed;
use crate::gateway::steering::Steering;
use crate::gateway::ANSWER_TIMEOUT;
use crate::obs::http::{Answer, Method, Request, Service, StreamEvent};
use mio::{Poll, Waker};
use serde_json::Value;

/// A rig of workers fed to an API, and the API.
struct Served {
    rig: Rig,
    api: Option<Api>,
    /// The API server's event loop, whose waker the feed rings.
    _poll: Poll,
    /// The rig's virtual time, in ms.
    now: u64,
    /// A worker that takes no turn while a request waits (it answers nothing).
    deaf: Option<usize>,
}

/// Three rules on a frontend that sets its own idle timeout (5 min, which beats the rules'
/// 4 min): `app` and `web` TCP, `dns` UDP.
fn three_rules() -> Config {
    let text = format!(
        r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "{FRONTEND}"
idle_timeout = "5m"
[[backend_pool]]
name = "vms"
members = [{{ name = "vm1", address = "{VM}" }}]
[[lb_rule]]
name = "app"
frontend = "public"
frontend_port = {PORT}
backend_pool = "vms"
backend_port = {PORT}
idle_timeout = "4m"
[[lb_rule]]
name = "web"
frontend = "public"
frontend_port = 8000
backend_pool = "vms"
backend_port = 8000
idle_timeout = "4m"
[[lb_rule]]
name = "dns"
protocol = "udp"
frontend = "public"
frontend_port = 53
backend_pool = "vms"
backend_port = 53
"#
    );
    Config::from_toml(&text, "test.toml").unwrap()
}

impl Served {
    fn new(expiry: &str) -> Served {
        Served::with_feed_of(expiry, feed::FEED_CAPACITY)
    }

    /// A rig whose feed holds at most `capacity` events in flight.
    fn with_feed_of(expiry: &str, capacity: usize) -> Served {
        let served = Served::of(&config(expiry), 1, capacity, ANSWER_TIMEOUT);
        served.without_reuse()
    }

    /// `workers` workers running `config`, whose API waits `timeout` for their answers and
    /// reuses answers as the gateway's does.
    fn of(config: &Config, workers: usize, capacity: usize, timeout: Duration) -> Served {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (feed, intake) = feed::feed_of(waker, capacity);
        let rig = Rig::of(config, workers, false, 1024, Some(feed));
        let names = config.rule_names().map(str::to_string).collect();
        let mut asker = Asker::new(rig.contacts.clone(), names, Steering::Ebpf);
        asker.timeout = timeout;
        let api = Api::new(asker, config.clone(), rig.t0, intake);
        Served {
            rig,
            api: Some(api),
            _poll: poll,
            now: 0,
            deaf: None,
        }
    }

    fn without_reuse(mut self) -> Served {
        self.api = self.api.map(Api::without_reuse);
        self
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
            for w in 0..self.rig.workers.len() {
                if self.deaf != Some(w) {
                    self.rig.turn(w, self.now);
                }
            }
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

    /// Every worker's turn at `ms`.
    fn at(&mut self, ms: u64) {
        self.now = ms;
        for w in 0..self.rig.workers.len() {
            self.rig.turn(w, ms);
        }
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
    assert_eq!(events[1].1["cause"], "feed", "not this client's fault");
    let (_, counters) = s.json(Method::Get, "/api/counters", "");
    assert_eq!(counters["events_dropped"], 3);
    assert!(s.events().is_empty(), "said once");
}

/// A connection from the client's `port` to the frontend's `to` through the worker that owns
/// it, at the rig's current time: opened (SYN, SYN-ACK, ACK), so established.
fn open(s: &mut Served, port: u16, to: u16) -> usize {
    let client = (CLIENT, port);
    let syn = tcp(client, (FRONTEND, to), SYN, 1000, 0, b"");
    let w = s.rig.owner(&syn, Interface::Outside);
    s.rig.outside[w].push_packet(&syn);
    s.rig.turn(w, s.now);
    assert_eq!(
        s.rig.inside[w].take_packets().len(),
        1,
        "the SYN is forwarded"
    );
    s.rig.inside[w].push_packet(&tcp((VM, to), client, SYN_ACK, 5000, 1001, b""));
    s.rig.turn(w, s.now);
    assert_eq!(s.rig.outside[w].take_packets().len(), 1);
    s.rig.outside[w].push_packet(&tcp(client, (FRONTEND, to), ACK, 1001, 5001, b""));
    s.rig.turn(w, s.now);
    assert_eq!(s.rig.inside[w].take_packets().len(), 1);
    w
}

#[test]
fn api_flows_with_a_limit_gives_the_soonest_to_expire_of_more_and_counts_them_all() {
    let mut s = Served::new("silent");
    // Eight flows, one opened every 250 ms: the first opened expires first.
    for i in 0..8u16 {
        s.at(u64::from(i) * 250);
        open(&mut s, 41_000 + i, PORT);
    }
    s.at(2_000);
    let (status, body) = s.json(Method::Get, "/api/flows?limit=3", "");
    assert_eq!(status, 200);
    assert_eq!(body["count"], 8, "every flow counted");
    assert_eq!(body["truncated"], true);
    let remotes: Vec<&str> = body["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["remote"].as_str().unwrap())
        .collect();
    let soonest: Vec<String> = (0..3).map(|i| format!("{CLIENT}:{}", 41_000 + i)).collect();
    assert_eq!(
        remotes, soonest,
        "the three soonest to expire, soonest first"
    );
    assert_eq!(body["flows"][0]["expires_in_s"], 2.0);
}

#[test]
fn a_worker_keeps_at_most_the_limit_of_its_flows_the_soonest_to_expire() {
    use idlegate_core::{FlowInfo, FlowState, FlowSummary};
    let flow = |secs: u64| FlowInfo {
        flow: FlowSummary {
            rule: 0,
            protocol: idlegate_core::packet::Protocol::Tcp,
            remote: std::net::SocketAddr::from((CLIENT, 40_000)),
            public: std::net::SocketAddr::from((FRONTEND, PORT)),
            private: std::net::SocketAddr::from((VM, PORT)),
        },
        state: FlowState::Established,
        idle_for: Duration::ZERO,
        expires_in: Duration::from_secs(secs),
        timeout: Duration::from_secs(10),
    };
    let all = [7, 3, 9, 1, 5, 2].map(flow);
    let secs =
        |kept: &[FlowInfo]| -> Vec<u64> { kept.iter().map(|f| f.expires_in.as_secs()).collect() };
    let (kept, count) = crate::gateway::worker::soonest(all.into_iter(), Some(3));
    assert_eq!((secs(&kept), count), (vec![1, 2, 3], 6));
    let (kept, count) = crate::gateway::worker::soonest(all.into_iter(), Some(0));
    assert_eq!((kept.len(), count), (0, 6));
    let (kept, count) = crate::gateway::worker::soonest(all.into_iter(), Some(100));
    assert_eq!((secs(&kept), count), (vec![1, 2, 3, 5, 7, 9], 6));
    let (kept, count) = crate::gateway::worker::soonest(all.into_iter(), None);
    assert_eq!(
        (kept.len(), count),
        (6, 6),
        "without a limit: all, as the control socket asks"
    );
}

#[test]
fn answers_close_together_reuse_what_the_workers_said_instead_of_asking_again() {
    let mut s = Served::of(
        &config("silent"),
        1,
        feed::FEED_CAPACITY,
        Duration::from_millis(200),
    );
    open(&mut s, 40_000, PORT);
    let (_, first) = s.json(Method::Get, "/api/flows?limit=5", "");
    let (_, counters) = s.json(Method::Get, "/api/counters", "");
    assert_eq!(counters["flows"], 1);
    // The worker answers nothing now: within the reuse, the answers come all the same, and
    // /metrics takes the snapshot /api/counters took.
    s.deaf = Some(0);
    let (status, again) = s.json(Method::Get, "/api/flows?limit=5", "");
    assert_eq!((status, &again), (200, &first));
    let (status, _) = s.json(Method::Get, "/api/counters", "");
    assert_eq!(status, 200);
    let Answer::Full(metrics) = s.request(Method::Get, "/metrics", "") else {
        panic!("a stream");
    };
    assert_eq!(metrics.status, 200);
    // Another limit is another question: the deaf worker makes it fail.
    let (status, _) = s.json(Method::Get, "/api/flows?limit=6", "");
    assert_eq!(status, 503);
}

#[test]
fn a_change_a_late_worker_has_not_confirmed_still_holds_on_every_shard_after_the_next() {
    let mut s = Served::of(
        &three_rules(),
        2,
        feed::FEED_CAPACITY,
        Duration::from_millis(200),
    );
    // Worker 1 takes no turn: it does not confirm in time, but the change is in its queue.
    s.deaf = Some(1);
    let (status, body) = s.json(Method::Post, "/api/rules/app", r#"{"idle_timeout": "10m"}"#);
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (&body["confirmed_by"], &body["workers"]),
        (&1.into(), &2.into())
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("1 of 2 confirmed"),
        "{body}"
    );
    assert_eq!(body["idle_timeout_s"], 10.0);
    // The API runs the change from now: a change to another rule leaves it in place.
    s.deaf = None;
    let (status, body) = s.json(Method::Post, "/api/rules/web", r#"{"expiry": "reset"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["confirmed_by"], &body["workers"]),
        (&2.into(), &2.into())
    );
    let (_, rules) = s.json(Method::Get, "/api/rules", "");
    let app = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "app")
        .unwrap();
    assert_eq!(app["tcp"]["runs_s"], 10.0, "{app}");
    // A new app flow on each shard runs 10 s.
    let mut shards = std::collections::BTreeSet::new();
    let mut port = 42_000;
    while shards.len() < 2 {
        assert!(port < 42_100, "no port of 100 lands on both shards");
        shards.insert(open(&mut s, port, PORT));
        port += 1;
    }
    let (_, flows) = s.json(Method::Get, "/api/flows", "");
    for f in flows["flows"].as_array().unwrap() {
        assert_eq!(f["timeout_s"], 10.0, "{f}");
    }
    let events = s.events();
    assert_eq!(named(&events, "rule-changed").len(), 2, "both changes said");
}

#[test]
fn a_change_that_cannot_alter_the_flows_is_refused_and_one_beating_the_frontend_says_so() {
    let mut s = Served::of(&three_rules(), 1, feed::FEED_CAPACITY, ANSWER_TIMEOUT).without_reuse();
    let (status, body) = s.json(Method::Post, "/api/rules/dns", r#"{"idle_timeout": "10m"}"#);
    assert_eq!(status, 409);
    assert_eq!(
        body["error"],
        "rule dns is udp: its flows run the profile's UDP timeouts, not idle_timeout"
    );
    assert!(named(&s.events(), "rule-changed").is_empty());
    let (status, body) = s.json(Method::Post, "/api/rules/app", r#"{"expiry": "reset"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["idle_timeout_s"], 5.0,
        "the frontend's 5 min still wins"
    );
    assert_eq!(body["applies"], APPLIES);
    let (status, body) = s.json(Method::Post, "/api/rules/app", r#"{"idle_timeout": "6m"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["idle_timeout_s"], 6.0);
    let applies = body["applies"].as_str().unwrap();
    assert!(
        applies.starts_with(APPLIES)
            && applies.contains("beats frontend public's own idle_timeout of 5 min"),
        "{applies}"
    );
}

#[test]
fn a_rule_change_without_a_rule_name_is_404_naming_the_rules_and_a_huge_value_is_quoted_cut() {
    let mut s = Served::new("silent");
    let (status, body) = s.json(Method::Post, "/api/rules/", r#"{"expiry":"silent"}"#);
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "give a rule name: POST /api/rules/NAME");
    assert!(
        body["rules"].as_array().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    let huge = format!(r#"{{"idle_timeout":"{}"}}"#, "x".repeat(60_000));
    let (status, body) = s.json(Method::Post, "/api/rules/app", &huge);
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.len() < 1_000, "{} bytes", error.len());
    assert!(error.ends_with("more bytes left out)"), "{error}");
}
