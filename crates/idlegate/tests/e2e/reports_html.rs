//! The HTML reports, `lab demo --html` and `probe --html`, opened in headless Chromium
//! ([`crate::common::browser`]): each loads with no console error, its screenshot is kept as a
//! test artifact and is not blank, and what the page shows (read back from its DOM's `data-*`
//! attributes) is what the JSON of the same run says. And `--html` is checked before anything
//! runs: a missing directory or an existing file is a usage error. Root only (the lab).

use crate::common::browser::{non_blank, Browser};
use crate::common::{echo_lab, require_root, unique};
use idlegate::lab::{Lab, INTERNET};
use idlegate::measure::echo::Echo;
use idlegate::sys::netns;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Opens `file` in a fresh browser and checks that it loaded with no console error; returns
/// the browser and the page (the page works while the browser lives).
fn open_report(file: &Path) -> (Browser, crate::common::browser::Page) {
    let browser = Browser::start().expect("starting chromium");
    let page = browser
        .open(&format!("file://{}", file.display()))
        .expect("opening the report");
    page.wait_until(
        "document.readyState === 'complete'",
        Duration::from_secs(20),
    )
    .expect("the report loads");
    assert_eq!(
        page.console_errors(),
        Vec::<String>::new(),
        "console errors"
    );
    (browser, page)
}

/// The report's own text names no URL but the SVG namespace: nothing is fetched.
fn assert_self_contained(file: &Path) {
    let html = std::fs::read_to_string(file).expect("reading the report");
    let rest = html.replace("http://www.w3.org/2000/svg", "");
    assert!(!rest.contains("http"), "the report names a URL");
    assert!(!rest.contains("<script"), "the report has a script");
    assert!(!rest.contains("<link"), "the report links a resource");
}

/// Checks that the command said on stderr, in one line of its own, that it wrote `file`.
fn assert_wrote(out: &Output, file: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = format!("wrote {}", file.display());
    assert_eq!(
        stderr.lines().filter(|l| *l == line).count(),
        1,
        "no line {line:?} on stderr:\n{stderr}"
    );
}

/// `value` with every number as a float: JavaScript's 7 and the JSON's 7.0 compare equal.
fn floats(value: Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.into_iter().map(floats).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, floats(v))).collect()),
        other => other,
    }
}

fn json_of(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed ({}):\n{stderr}", out.status);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}); stderr:\n{stderr}"))
}

/// Runs `idlegate lab demo --json --html FILE extra…`, opens the page and checks it against
/// the JSON: the settings on the page's root, each connection's section (name, verdict,
/// expiry, messages, errors, one diagram, the heading). Keeps a screenshot `shot` and checks
/// that it is not blank. Returns the JSON.
fn demo_page_is_its_json(extra: &[&str], shot: &str) -> Value {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("demo.html");
    let out = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args(["lab", "demo", "--json", "--name", &unique("dh"), "--html"])
        .arg(&file)
        .args(extra)
        .output()
        .expect("running idlegate lab demo");
    let report = json_of(&out);
    assert_wrote(&out, &file);
    assert_self_contained(&file);
    let (_browser, page) = open_report(&file);

    let root = page
        .eval(
            "(() => { const m = document.querySelector('main.report'); \
             return {report: m.dataset.report, rule: m.dataset.rule, profile: m.dataset.profile, \
             expiry: m.dataset.expiry, time_scale: Number(m.dataset.timeScale), \
             idle_timeout_ms: Number(m.dataset.idleTimeoutMs)}; })()",
        )
        .expect("the report's figures");
    let idle_ms = (report["idle_timeout_s"].as_f64().expect("idle_timeout_s") * 1000.0).round();
    assert_eq!(
        floats(root),
        floats(
            json!({"report": "lab-demo", "rule": report["rule"]["name"].as_str().unwrap_or(""),
               "profile": report["profile"], "expiry": report["expiry"],
               "time_scale": report["time_scale"], "idle_timeout_ms": idle_ms})
        )
    );

    let shown = page
        .eval(
            "[...document.querySelectorAll('section.connection')].map(s => ({\
             name: s.dataset.name, verdict: s.dataset.verdict, expiry: s.dataset.expiry, \
             sent: s.dataset.sent, delivered: s.dataset.delivered, \
             client_error: s.dataset.clientError, server_error: s.dataset.serverError, \
             diagrams: s.querySelectorAll('svg').length, \
             heading: s.querySelector('h2').innerText}))",
        )
        .expect("the connections' sections");
    let words = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let expected: Vec<Value> = report["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| {
            json!({
                "name": c["name"], "verdict": c["verdict"], "expiry": c["expiry"],
                "sent": words(&c["sent"]), "delivered": words(&c["delivered"]),
                "client_error": c["client_error"].as_str().unwrap_or(""),
                "server_error": c["server_error"].as_str().unwrap_or(""),
                "diagrams": 1,
                "heading": format!("{}{}", c["name"].as_str().unwrap_or(""),
                                   c["verdict"].as_str().unwrap_or("")),
            })
        })
        .collect();
    // innerText of "<h2>name<span>verdict</span></h2>": the two, spacing aside.
    let shown: Vec<Value> = shown
        .as_array()
        .expect("an array")
        .iter()
        .map(|s| {
            let mut s = s.clone();
            let heading = s["heading"].as_str().unwrap_or("").replace([' ', '\n'], "");
            s["heading"] = json!(heading);
            s
        })
        .collect();
    assert_eq!(shown, expected);
    let shot = page.screenshot(shot).expect("a screenshot");
    non_blank(&shot).expect("the demo's screenshot shows something");
    report
}

/// The connections' verdicts in the JSON.
fn verdicts(report: &Value) -> Vec<&str> {
    report["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .filter_map(|c| c["verdict"].as_str())
        .collect()
}

#[test]
fn lab_demo_html_draws_each_connection_with_the_verdict_and_figures_of_its_json() {
    let report = demo_page_is_its_json(&[], "lab-demo.png");
    // The three fates of the default demo, which the page was just found to show.
    assert_eq!(verdicts(&report), ["lost-silently", "survived", "reset"]);
    // Each connection's expiry (tcp-reset's rule resets) and keepalive (half of 4 s).
    let settings: Vec<Value> = report["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| json!([c["name"], c["expiry"], c["keepalive_s"]]))
        .collect();
    assert_eq!(
        settings,
        [
            json!(["no-keepalive", "silent", null]),
            json!(["keepalive", "silent", 2]),
            json!(["tcp-reset", "reset", null])
        ]
    );
}

#[test]
fn lab_demo_html_with_config_draws_the_rules_connections_as_its_json_says() {
    // examples/azure-lb.toml's rule app-with-reset: Azure's TCP reset on idle.
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/azure-lb.toml")
        .display()
        .to_string();
    let report = demo_page_is_its_json(
        &["--config", &config, "--rule", "app-with-reset"],
        "lab-demo-config.png",
    );
    assert_eq!(verdicts(&report), ["reset", "survived"]);
    assert_eq!(report["rule"]["name"], "app-with-reset");
}

#[test]
fn probe_html_marks_each_idle_time_tried_and_the_bracket_of_its_json() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("probe.html");
    // Azure LB's idle timeout set to 438 s, scaled 1/60: 7.3 s, silent at expiry.
    let config = echo_lab("azure-lb", 60, "438s", "silent");
    let (out, _) = Lab::with_gateway(&unique("ph"), &config, |lab| {
        let listen = "0.0.0.0:9300".parse()?;
        let echo = netns::spawn_in(&lab.namespace_of("vm1")?, move || Echo::bind(listen))?
            .join()
            .expect("echo bind thread")?;
        let stop = echo.stop_flag();
        let server = std::thread::spawn(move || echo.run());
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.namespace_of(INTERNET)?])
            .arg(env!("CARGO_BIN_EXE_idlegate"))
            .args(["probe", "203.0.113.10:9300", "--json", "--wait", "1s"])
            .args(["--max", "20s", "--html"])
            .arg(&file)
            .output();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        server.join().expect("echo thread")?;
        Ok(out?)
    })
    .expect("lab run");
    let report = json_of(&out);
    assert_wrote(&out, &file);
    assert_self_contained(&file);
    let (_browser, page) = open_report(&file);

    let root = page
        .eval(
            "(() => { const m = document.querySelector('main.report'); \
             return {low: Number(m.dataset.lowS), high: Number(m.dataset.highS), \
             trusted: m.dataset.trusted === 'true', doubts: m.dataset.doubts, \
             client_to_server: m.dataset.clientToServer, \
             server_to_client: m.dataset.serverToClient}; })()",
        )
        .expect("the report's figures");
    let doubts: Vec<&str> = report["doubts"]
        .as_array()
        .expect("doubts")
        .iter()
        .filter_map(|d| d["code"].as_str())
        .collect();
    assert_eq!(
        floats(root),
        floats(
            json!({"low": report["idle_timeout_s"]["low"], "high": report["idle_timeout_s"]["high"],
               "trusted": report["trusted"], "doubts": doubts.join(" "),
               "client_to_server": report["client_to_server"],
               "server_to_client": report["server_to_client"]})
        )
    );
    let high = report["idle_timeout_s"]["high"]
        .as_f64()
        .expect("a timeout found");
    assert!(high >= 7.3, "{report:#}");

    // Each test a mark, with what it saw: the same set as the JSON's `tried`.
    let marks = page
        .eval(
            "[...document.querySelectorAll('g.mark')].map(g => [g.dataset.direction, \
             Number(g.dataset.idleS), g.dataset.part, g.dataset.alive === 'true', g.dataset.seen])",
        )
        .expect("the marks");
    let key = |v: &Value| v.to_string();
    let mut shown: Vec<Value> = marks
        .as_array()
        .expect("an array")
        .iter()
        .cloned()
        .map(floats)
        .collect();
    let mut tried: Vec<Value> = report["tried"]
        .as_array()
        .expect("tried")
        .iter()
        .map(|t| {
            floats(json!([
                t["direction"],
                t["idle_s"],
                t["part"],
                t["alive"],
                t["seen"]
            ]))
        })
        .collect();
    shown.sort_by_key(key);
    tried.sort_by_key(key);
    assert!(!tried.is_empty(), "{report:#}");
    assert_eq!(shown, tried);
    assert!(
        tried.iter().any(|t| t[3] == false) && tried.iter().any(|t| t[3] == true),
        "alive and dead tests: {report:#}"
    );
    // The JSON's own fields: the coarse round both ways, a silent death client to server, and
    // the keepalive test (Azure: keepalive refreshes the flow) with its interval.
    let list = report["tried"].as_array().expect("tried");
    for direction in ["client-to-server", "server-to-client"] {
        assert!(
            list.iter()
                .any(|t| t["direction"] == direction && t["part"] == "coarse"),
            "{direction}: {report:#}"
        );
    }
    assert!(
        list.iter().any(|t| t["direction"] == "client-to-server"
            && t["alive"] == false
            && t["seen"] == "silent"),
        "{report:#}"
    );
    let keepalive: Vec<&Value> = list.iter().filter(|t| t["part"] == "keepalive").collect();
    assert_eq!(keepalive.len(), 1, "{report:#}");
    assert!(
        keepalive[0]["keepalive_s"]
            .as_f64()
            .is_some_and(|k| k >= 1.0),
        "{report:#}"
    );
    assert_eq!(
        keepalive[0]["alive"], report["keepalive_refreshes"],
        "{report:#}"
    );
    // The bracket is drawn with its bounds.
    let text = page.text("svg").expect("the drawing's text");
    let low = report["idle_timeout_s"]["low"].as_f64().expect("low");
    assert!(
        text.contains(&format!("timeout in ({low:.1} s, {high:.1} s]")),
        "{text}"
    );

    let shot = page.screenshot("probe.png").expect("a screenshot");
    non_blank(&shot).expect("the probe's screenshot shows something");
}

/// Runs `idlegate ARGS…` and returns (exit code, stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args(args)
        .output()
        .expect("running idlegate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn html_into_a_missing_directory_is_a_usage_error_before_anything_runs() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("no-such-dir/report.html");
    let file = file.to_str().expect("a UTF-8 path");
    let missing = dir.path().join("no-such-dir");
    // Before anything runs: the demo builds no lab, the probe resolves and reaches no target.
    for args in [
        vec!["lab", "demo", "--name", "never", "--html", file],
        vec!["probe", "192.0.2.1:9", "--html", file],
    ] {
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "idlegate: --html {file}: the directory {} does not exist\n\
                 hint: create it, or give another --html\n",
                missing.display()
            ),
            "{args:?}"
        );
    }
}

#[test]
fn html_over_an_existing_file_is_refused_without_force_and_the_file_kept() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("report.html");
    std::fs::write(&file, "mine").expect("writing the file");
    let shown = file.to_str().expect("a UTF-8 path");
    for args in [
        vec!["lab", "demo", "--name", "never", "--html", shown],
        vec!["probe", "192.0.2.1:9", "--html", shown],
    ] {
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "idlegate: --html {shown}: it exists\n\
                 hint: give --force to overwrite it, or another --html\n"
            ),
            "{args:?}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).expect("reading"), "mine");
    let (code, stderr) = run(&["probe", "192.0.2.1:9", "--force"]);
    assert_eq!(code, Some(2), "--force alone: {stderr}");
    assert!(stderr.contains("--html"), "{stderr}");
}
