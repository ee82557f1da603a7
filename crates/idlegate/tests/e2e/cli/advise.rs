//! `idlegate advise --json`: one JSON document on stdout a script can read, for each system.

use std::process::Command;

#[test]
fn advise_json_is_one_document_with_every_setting_its_unit_place_and_source() {
    for (os, first) in [
        ("linux", "net.ipv4.tcp_keepalive_time"),
        ("windows", "KeepAliveTime"),
        ("macos", "net.inet.tcp.keepidle"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_idlegate"))
            .args(["advise", "--profile", "azure-lb", "--os", os, "--json"])
            .output()
            .expect("running idlegate advise");
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{os}: stdout is not one JSON document: {e}"));
        assert_eq!(report["os"], os);
        assert_eq!(report["profile"], "azure-lb");
        assert_eq!(report["idle_timeout_s"], 240.0);
        assert_eq!(report["keepalive"]["idle_s"], 120);
        assert_eq!(report["keepalive"]["interval_s"], 30);
        assert_eq!(report["keepalive"]["count"], 8);
        let settings = report["settings"].as_array().expect("settings");
        assert_eq!(settings[0]["name"], first, "{report:#}");
        for s in settings {
            for field in ["name", "unit", "where", "source"] {
                assert!(
                    s[field].as_str().is_some_and(|v| !v.is_empty()),
                    "{os}: {field} of {s}"
                );
            }
            assert!(s["value"].as_u64().is_some(), "{os}: {s}");
        }
    }
    let windows = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args([
            "advise",
            "--idle-timeout",
            "350s",
            "--os",
            "windows",
            "--json",
        ])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&windows.stdout).unwrap();
    assert_eq!(report["profile"], serde_json::Value::Null);
    assert_eq!(report["settings"][0]["value"], 175_000);
    assert_eq!(report["settings"][0]["unit"], "milliseconds");
}

/// A config whose rules have three different timeouts: a frontend's beating an LB rule's, an
/// inbound NAT rule's own (on a frontend without one), an outbound rule's own.
const THREE_TIMEOUTS: &str = r#"profile = "azure-lb"
[[frontend]]
name = "public"
address = "203.0.113.10"
idle_timeout = "20m"
[[frontend]]
name = "admin"
address = "203.0.113.11"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[lb_rule]]
name = "web"
frontend = "public"
frontend_port = 443
backend_pool = "vms"
backend_port = 8443
idle_timeout = "30m"
[[inbound_nat_rule]]
name = "ssh"
frontend = "admin"
frontend_port_range = [50000, 50000]
backend_pool = "vms"
backend_port = 22
idle_timeout = "10m"
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
idle_timeout = "15m"
"#;

#[test]
fn advise_by_a_config_gives_each_rules_timeout_its_source_and_keepalive_and_one_setting_for_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("box.toml");
    std::fs::write(&path, THREE_TIMEOUTS).unwrap();
    let path = path.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args(["advise", "--config", path, "--os", "linux", "--json"])
        .output()
        .expect("running idlegate advise");
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(report["config"], path);
    let rules: Vec<_> = report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_string(),
                r["direction"].as_str().unwrap().to_string(),
                r["idle_timeout_s"].as_u64().unwrap(),
                r["winner"].as_str().unwrap().to_string(),
                r["keepalive"]["idle_s"].as_u64().unwrap(),
            )
        })
        .collect();
    let row = |rule: &str, direction: &str, t: u64, winner: &str| {
        (
            rule.to_string(),
            direction.to_string(),
            t,
            winner.to_string(),
            t / 2,
        )
    };
    assert_eq!(
        rules,
        vec![
            row("web", "inbound", 1200, "frontend"),
            row("ssh", "inbound", 600, "rule"),
            row("egress", "outbound", 900, "rule"),
        ],
        "{report:#}"
    );
    assert!(report["rules"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("sets 20 min, which beats the rule's 30 min"));
    // The one system-wide setting fits the shortest.
    assert_eq!(report["system_wide_rule"], "ssh");
    assert_eq!(report["idle_timeout_s"], 600.0);
    assert_eq!(report["settings"][0]["name"], "net.ipv4.tcp_keepalive_time");
    assert_eq!(report["settings"][0]["value"], 300);
}

#[test]
fn advise_and_audit_refuse_a_config_with_a_profile_or_a_timeout_and_a_bad_config_by_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "profile = \"azure-lb\"\n[[frontend]]\nname = 3\n").unwrap();
    let bad = bad.to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_idlegate"))
            .args(args)
            .output()
            .unwrap()
    };
    for command in ["advise", "audit"] {
        for clash in [&["--profile", "azure-lb"][..], &["--idle-timeout", "4m"]] {
            let mut args = vec![command, "--config", bad];
            args.extend_from_slice(clash);
            let out = run(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
                "{args:?}: {out:?}"
            );
        }
        let out = run(&[command, "--config", bad]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).lines().next(),
            Some(
                format!(
                    "idlegate: {bad}:3:8: name: expected a name string in quotes, found integer 3"
                )
                .as_str()
            )
        );
    }
}

#[test]
fn advise_for_a_member_takes_only_its_pools_rules_and_without_one_says_which_members_there_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.toml");
    std::fs::write(&path, crate::common::TWO_POOLS).unwrap();
    let path = path.to_str().unwrap();
    let advise = |extra: &[&str], json: bool| {
        let mut args = vec!["advise", "--config", path, "--os", "linux"];
        args.extend_from_slice(extra);
        if json {
            args.push("--json");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_idlegate"))
            .args(&args)
            .output()
            .expect("running idlegate advise");
        assert!(out.status.success(), "{args:?}: {out:?}");
        out.stdout
    };
    let json = |extra: &[&str]| -> serde_json::Value {
        serde_json::from_slice(&advise(extra, true)).expect("stdout is one JSON document")
    };
    let rules = |report: &serde_json::Value| -> Vec<String> {
        report["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap().to_string())
            .collect()
    };
    // vm1 leaves by its own pool's outbound rule: its shortest is its LB rule's 25 min, not
    // the other pool's NAT gateway's 4 min.
    let vm1 = json(&["--member", "vm1"]);
    assert_eq!(vm1["member"], "vm1");
    assert_eq!(vm1["member_hint"], serde_json::Value::Null);
    assert_eq!(rules(&vm1), ["web-app", "web-out"], "{vm1:#}");
    assert_eq!(vm1["system_wide_rule"], "web-app");
    assert_eq!(vm1["idle_timeout_s"], 1500.0);
    // vm2 leaves by the NAT gateway, which beats its pool's outbound rule.
    let vm2 = json(&["--member", "vm2"]);
    assert_eq!(rules(&vm2), ["workers-app", "natgw"], "{vm2:#}");
    assert_eq!(vm2["system_wide_rule"], "natgw");
    assert_eq!(vm2["idle_timeout_s"], 240.0);
    // Without a member: every rule, the shortest, and the hint naming --member and both.
    let all = json(&[]);
    assert_eq!(all["member"], serde_json::Value::Null);
    assert_eq!(all["system_wide_rule"], "natgw");
    let hint = "3 outbound paths: an outbound connection is judged by the shortest, \
                nat_gateway \"natgw\"; say which member this host is with --member NAME \
                (the members: vm1, vm2)";
    assert_eq!(all["member_hint"], hint);
    let text = String::from_utf8(advise(&[], false)).unwrap();
    assert!(text.contains(&format!("\nNote: {hint}.\n")), "{text}");
    let text = String::from_utf8(advise(&["--member", "vm1"], false)).unwrap();
    assert!(
        text.starts_with(&format!(
            "Idle timeouts of {path} for member vm1, rule by rule:\n"
        )),
        "{text}"
    );
    assert!(!text.contains("Note:"), "{text}");
}
