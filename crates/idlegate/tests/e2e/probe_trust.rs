//! The `idlegate probe` binary through the lab's gateway, as a user runs it: its progress
//! lines on stderr name each direction and never show an empty or inverted bracket, agree
//! with the final result, and a result the probe cannot trust (the box's timeout below the
//! shortest idle it tries: every connection opens, the first idle already fails) says so in
//! the JSON and the text. Root only.

use crate::common::{echo_lab, require_root, unique};
use idlegate::lab::{Lab, INTERNET};
use idlegate::measure::echo::Echo;
use idlegate::sys::netns;
use idlegate_core::Config;
use std::process::Command;

/// Runs `idlegate probe 203.0.113.10:9300 --json extra…` from the lab's internet host, with
/// echo on vm1; gives the JSON report and the stderr lines.
fn probe_binary(config: &Config, extra: &[&str]) -> (serde_json::Value, Vec<String>) {
    require_root();
    let (out, _) = Lab::with_gateway(&unique("pt"), config, |lab| {
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
            .args(extra)
            .output();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        server.join().expect("echo thread")?;
        Ok(out?)
    })
    .expect("lab run");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "probe failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}); stderr:\n{stderr}"));
    (report, stderr.lines().map(str::to_owned).collect())
}

/// The progress lines (`probe: [round …] …`).
fn progress(stderr: &[String]) -> Vec<&String> {
    stderr
        .iter()
        .filter(|l| l.starts_with("probe: [round "))
        .collect()
}

/// Every `(a s, b s]` bracket in `line`, as numbers.
fn brackets(line: &str) -> Vec<(f64, f64)> {
    line.split("timeout in (")
        .skip(1)
        .map(|rest| {
            let inner = rest.split(']').next().unwrap_or_default();
            let (a, b) = inner.split_once(", ").unwrap_or_else(|| panic!("{line}"));
            let n = |v: &str| -> f64 { v.trim_end_matches(" s").parse().unwrap() };
            (n(a), n(b))
        })
        .collect()
}

#[test]
fn the_progress_names_each_direction_never_shows_an_empty_bracket_and_ends_where_the_result_does() {
    // Linux conntrack with loose pickup: the client's late packets open a new entry (that
    // direction never dies), the server's leave untranslated after 7.3 s and are reset (no
    // masquerade in this lab). The two directions disagree,
    // which is what once made one line say `timeout in (4 s, 4 s]`.
    let (report, stderr) = probe_binary(
        &echo_lab("linux-conntrack", 1, "7300ms", "silent"),
        &["--max", "20s"],
    );
    let lines = progress(&stderr);
    assert!(
        !lines.is_empty(),
        "no progress lines:\n{}",
        stderr.join("\n")
    );
    for line in &lines {
        assert!(
            line.contains("client to server: ") && line.contains("; server to client: "),
            "{line}"
        );
        for (low, high) in brackets(line) {
            assert!(low < high, "an empty or inverted bracket: {line}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("probe: [round 1, coarse] ")),
        "{lines:#?}"
    );
    let low = report["idle_timeout_s"]["low"].as_f64().expect("low");
    let high = report["idle_timeout_s"]["high"].as_f64().expect("high");
    assert!(low < 7.3 && 7.3 <= high, "{report:#}");
    if report["consistent"] == false {
        // Seen once under CI load: a server-to-client idle past the timer survived (cause not
        // yet found). The probe must then widen its result and say it cannot be trusted, which
        // is what a user is shown; the progress, which keeps each direction's own bracket,
        // cannot end where the widened result does.
        assert_eq!(report["trusted"], false, "{report:#}");
        assert!(
            report["doubts"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["code"] == "longer-idle-survived")),
            "{report:#}"
        );
        return;
    }
    // The last line's server-to-client bracket is the result.
    let last = lines.last().unwrap();
    let s2c = last.split("server to client: ").nth(1).unwrap();
    assert!(
        s2c.starts_with(&format!(
            "survived {low:.1} s, failed at {high:.1} s: timeout in ({low:.1} s, {high:.1} s] ("
        )),
        "{last}\nresult ({low}, {high}]"
    );
    assert_eq!(report["trusted"], true, "{report:#}");
    assert_eq!(report["doubts"], serde_json::json!([]), "{report:#}");
}

#[test]
fn a_timeout_below_the_shortest_idle_tried_is_reported_as_not_to_be_trusted() {
    // Azure LB's 4 minutes scaled 1/600: 0.4 s, below the probe's shortest idle (2 s at the default 1 s resolution): every
    // connection opens, and the first idle time already fails.
    let (report, stderr) = probe_binary(
        &echo_lab("azure-lb", 600, "240s", "silent"),
        &["--max", "8s"],
    );
    assert_eq!(report["trusted"], false, "{report:#}");
    let doubts = report["doubts"].as_array().expect("doubts");
    let doubt = doubts
        .iter()
        .find(|d| d["code"] == "failed-at-the-shortest-idle")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert!(
        doubt["message"].as_str().unwrap().contains(
            "the path may drop everything after the handshake, or its idle timeout is below 2.0 s"
        ),
        "{doubt:#}"
    );
    assert_eq!(report["idle_timeout_s"]["low"], 0.0, "{report:#}");
    for line in progress(&stderr) {
        assert!(line.contains("client to server: "), "{line}");
        for (low, high) in brackets(line) {
            assert!(low < high, "{line}");
        }
    }
    assert!(
        progress(&stderr)
            .iter()
            .any(|l| l.contains("client to server: failed at 2.0 s: timeout ≤ 2.0 s")),
        "{}",
        stderr.join("\n")
    );
}
