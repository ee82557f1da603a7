//! `idlegate lab demo --config FILE --rule NAME`: the demo through one rule of a user's config,
//! whose own idle timeout and expiry decide the verdicts (examples/azure-lb.toml: `app` expires
//! silently, `app-with-reset` resets both ends; Azure "Load Balancer TCP Reset and Idle
//! Timeout"). Needs root.

use crate::common::{self, require_root, unique};
use serde_json::Value;
use std::process::Command;

fn example() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/azure-lb.toml")
        .display()
        .to_string()
}

fn demo_config(extra: &[&str]) -> std::process::Output {
    let config = example();
    let name = unique("dc");
    Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args([
            "lab", "demo", "--json", "--name", &name, "--config", &config,
        ])
        .args(extra)
        .output()
        .expect("running idlegate lab demo --config")
}

fn report(extra: &[&str]) -> Value {
    require_root();
    let out = demo_config(extra);
    common::assert_success(&out, extra);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn verdicts(report: &Value) -> Vec<(String, String)> {
    report["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("verdict"))
        })
        .collect()
}

#[test]
fn demo_through_a_rule_with_tcp_reset_resets_the_idle_connection_and_keepalive_survives() {
    let r = report(&["--rule", "app-with-reset"]);
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        verdicts(&r),
        [pair("no-keepalive", "reset"), pair("keepalive", "survived")],
        "{r}"
    );
    assert_eq!(r["expiry"], "reset");
    assert_eq!(r["time_scale"], 60);
    assert_eq!(r["idle_timeout_s"], 4.0);
    let rule = &r["rule"];
    assert_eq!(rule["name"], "app-with-reset");
    assert_eq!(rule["kind"], "lb_rule");
    assert_eq!(rule["real_idle_timeout_s"], 240.0);
    assert_eq!(rule["timeout_from"], "rule");
    assert!(
        rule["config"]
            .as_str()
            .is_some_and(|c| c.ends_with("azure-lb.toml")),
        "{rule}"
    );
}

#[test]
fn demo_through_a_silent_rule_loses_the_idle_connections_message_silently() {
    let r = report(&["--rule", "app"]);
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        verdicts(&r),
        [
            pair("no-keepalive", "lost-silently"),
            pair("keepalive", "survived")
        ],
        "{r}"
    );
    assert_eq!(r["expiry"], "silent");
    assert_eq!(r["rule"]["name"], "app");
}

#[test]
fn demo_with_an_unknown_rule_exits_2_listing_the_configs_rules() {
    require_root();
    let out = demo_config(&["--rule", "no-such-rule"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("idlegate: --rule no-such-rule: no such rule in "),
        "{stderr}"
    );
    assert!(
        stderr.contains("app (lb_rule), app-with-reset (lb_rule), egress (outbound_rule)"),
        "{stderr}"
    );
}

#[test]
fn demo_with_config_and_profile_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args([
            "lab",
            "demo",
            "--config",
            &example(),
            "--profile",
            "aws-nlb",
        ])
        .output()
        .expect("running idlegate lab demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'--config <FILE>' cannot be used with '--profile <PROFILE>'"),
        "{stderr}"
    );
}

/// The child process, killed if the test fails before it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `lab demo --config` ran for about 100 s with nothing printed between its header and its
/// timeline, and `lab list` showed no config for its lab (issue 21): the header now says how
/// long the run takes and why the connections go one after the other, a line says when each
/// starts, and `lab list` names the file.
#[test]
fn demo_with_config_says_how_long_it_runs_and_lab_list_names_its_config() {
    use std::io::BufRead;
    require_root();
    let name = unique("dl");
    let child = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args(["lab", "demo", "--name", &name, "--config", &example()])
        .args(["--rule", "app"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running idlegate lab demo --config");
    let mut running = Running(child);
    let stdout = running.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The idle timeout runs 4 s: each connection 11/8 of it and 2 s of watching.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut lines = Vec::new();
    let mut listed = None;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        if line.contains("connection no-keepalive starts") && listed.is_none() {
            let out = Command::new(env!("CARGO_BIN_EXE_idlegate"))
                .args(["lab", "list", "--json"])
                .output()
                .expect("lab list");
            let labs: Value = serde_json::from_slice(&out.stdout).expect("one JSON array");
            listed = labs
                .as_array()
                .and_then(|a| a.iter().find(|l| l["name"] == name.as_str()).cloned());
        }
        lines.push(line);
    }
    let status = running.0.wait().expect("lab demo exited");
    let text = lines.join("\n");
    assert!(status.success(), "{text}");
    assert!(
        text.contains(
            "the run takes about 15s: 2 connections of 8s each, one after the other, because both need the rule's one server port"
        ),
        "{text}"
    );
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
    };
    assert!(at("the run takes about") < at("connection no-keepalive starts (1 of 2)"));
    assert!(at("connection no-keepalive starts") < at("connection keepalive starts (2 of 2)"));
    assert!(at("connection keepalive starts") < at("timeline"), "{text}");
    let lab = listed.unwrap_or_else(|| panic!("{name} not in lab list while it ran"));
    let config = lab["config"].as_str().unwrap_or_default();
    assert!(config.ends_with("examples/azure-lb.toml"), "{lab}");
}
