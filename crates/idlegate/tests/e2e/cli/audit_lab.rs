//! `idlegate audit --metrics` in a lab host, scraped by a real Prometheus (Debian's
//! `prometheus` package) in that host loading the real rules file of `deploy/prometheus/`: an
//! unmodified client in `vm1` holds a connection without keepalive, through the gateway's
//! outbound rule, to a server in `internet`, idle; the at-risk alert fires with the client's
//! command; once the client closes it, its series go. The audit (9477) and Prometheus (9090)
//! listen on 127.0.0.1 inside `vm1`, a namespace only this test uses: no port race. The lab,
//! and every process the test starts, go when it ends, pass or fail (guards).

use super::*;
use crate::audit_prometheus::{
    api, deploy_dir, firing, require_tool, wait_for, Running, CHANGE_TIMEOUT,
};
use serde_json::Value;
use std::net::SocketAddr;

/// The alert the test fires, as the rules file names it.
const AT_RISK: &str = "IdlegateAuditConnectionAtRisk";
/// How long Prometheus may take to start, scrape and fire (1 s scans, scrapes and
/// evaluations; the alert needs an idle time over half the 4 s timeout): generous for a
/// loaded 2-core machine.
const FIRE_TIMEOUT: Duration = Duration::from_secs(90);
/// The lab's idle timeout (`examples/azure-lb.toml`: Azure's 4 minutes scaled to 4 s).
const LAB_IDLE_TIMEOUT: &str = "4s";

/// Server in `internet`: accepts one connection on argv[1]:argv[2], prints `accepted`, reads
/// until the end and prints `end`. Ends itself after 120 s whatever happens.
const HOLD_SERVER: &str = r#"
import signal, socket, sys
signal.alarm(120)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening")
c, peer = s.accept()
print("accepted")
while c.recv(100):
    pass
print("end")
"#;

/// Client in `vm1`: connects to argv[1]:argv[2] without keepalive, sends "a", prints
/// `connected COMM` (its /proc/self/comm, what the audit labels it with), stays idle until the
/// file argv[3] exists, then closes and prints `closed`. Ends itself after 120 s.
const IDLE_UNTIL_TOLD_CLIENT: &str = r#"
import os, signal, socket, sys, time
signal.alarm(120)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall(b"a")
print("connected " + open("/proc/self/comm").read().strip())
while not os.path.exists(sys.argv[3]):
    time.sleep(0.1)
c.close()
print("closed")
"#;

/// `lab exec --name LAB vm1 -- PROGRAM ARGS…` in the background, its stderr in `log`.
fn start_in_vm1(lab: &Lab, program: &str, args: &[String], log: PathBuf) -> Running {
    Running::start(
        Command::new(IDLEGATE)
            .args(["lab", "exec", "--name", &lab.name, "vm1", "--", program])
            .args(args),
        log,
    )
}

/// Prometheus's answer to `target` (under /api/v1/), asked from inside network namespace `ns`.
fn api_in(ns: &str, prometheus: SocketAddr, target: &str) -> Option<Value> {
    let target = target.to_string();
    idlegate::sys::netns::spawn_in(ns, move || api(prometheus, &target))
        .ok()?
        .join()
        .ok()?
}

/// The firing alerts named `name`, asked from inside `ns`.
fn firing_in(ns: &str, prometheus: SocketAddr, name: &'static str) -> Vec<Value> {
    idlegate::sys::netns::spawn_in(ns, move || firing(prometheus, name))
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or_default()
}

#[test]
fn a_real_prometheus_in_a_lab_host_fires_the_at_risk_alert_for_an_idle_connection_without_keepalive(
) {
    let prometheus_bin = require_tool("prometheus");
    let lab = Lab::up(&lab_name());
    let vm1 = format!("ig-{}-vm1", lab.name);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let close_now = dir.path().join("close-now");

    let mut programs = Programs::new(&lab);
    programs.python("server", "internet", HOLD_SERVER, &[INTERNET, "8000"]);
    programs.wait_each(&["server"], "listening", LISTEN_TIMEOUT);
    programs.python(
        "client",
        "vm1",
        IDLE_UNTIL_TOLD_CLIENT,
        &[INTERNET, "8000", &close_now.display().to_string()],
    );
    let (_, connected) =
        programs.wait_line(&["client"], |l| l.starts_with("connected "), LISTEN_TIMEOUT);
    let command = connected["connected ".len()..].to_string();
    programs.wait_line(&["server"], |l| l == "accepted", LISTEN_TIMEOUT);

    let metrics: SocketAddr = "127.0.0.1:9477".parse().unwrap();
    let web: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    let audit = start_in_vm1(
        &lab,
        IDLEGATE,
        &[
            "audit",
            "--metrics",
            &metrics.to_string(),
            "--interval",
            "1s",
            "--idle-timeout",
            LAB_IDLE_TIMEOUT,
        ]
        .map(String::from),
        dir.path().join("audit.log"),
    );
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: idlegate-audit\n    static_configs:\n      \
             - targets: ['{metrics}']\n",
            deploy_dir().join("idlegate-audit.rules.yml").display()
        ),
    )
    .unwrap();
    let prometheus = start_in_vm1(
        &lab,
        &prometheus_bin.display().to_string(),
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={web}"),
        ],
        dir.path().join("prometheus.log"),
    );
    let diagnosis = || {
        format!(
            "alerts: {:?}\nprometheus log:\n{}\naudit log:\n{}",
            api_in(&vm1, web, "alerts"),
            prometheus.log(),
            audit.log()
        )
    };
    let of_client = |alerts: Vec<Value>| -> Option<Vec<Value>> {
        let mine: Vec<Value> = alerts
            .into_iter()
            .filter(|a| a["labels"]["command"] == command.as_str())
            .collect();
        (!mine.is_empty()).then_some(mine)
    };
    let alerts = wait_for(
        "Prometheus in vm1 firing IdlegateAuditConnectionAtRisk for the client",
        FIRE_TIMEOUT,
        || of_client(firing_in(&vm1, web, AT_RISK)),
        diagnosis,
    );
    assert_eq!(alerts.len(), 1, "one command, one alert: {alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert["labels"]["verdict"], "at-risk", "{alerts:#?}");
    assert_eq!(alert["labels"]["job"], "idlegate-audit", "{alerts:#?}");
    assert_eq!(
        alert["labels"]["instance"],
        metrics.to_string(),
        "{alerts:#?}"
    );
    let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("A connection of {command} on {metrics}")),
        "{alerts:#?}"
    );
    assert!(
        alert["annotations"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("idlegate advise"),
        "the alert says what to do: {alerts:#?}"
    );

    // The converse: the client closes its connection; its series go from Prometheus.
    std::fs::write(&close_now, b"").unwrap();
    programs.wait_line(&["client"], |l| l == "closed", LISTEN_TIMEOUT);
    let query =
        format!("query?query=idlegate_audit_command_connections%7Bcommand%3D%22{command}%22%7D");
    wait_for(
        "the client's idlegate_audit_command_connections gone from Prometheus",
        CHANGE_TIMEOUT,
        || {
            let answer = api_in(&vm1, web, &query)?;
            answer["data"]["result"]
                .as_array()
                .is_some_and(Vec::is_empty)
                .then_some(())
        },
        || format!("query: {:?}\n{}", api_in(&vm1, web, &query), diagnosis()),
    );

    // SIGTERM stops the audit cleanly: `lab exec` passes its exit status through.
    let mut audit = audit;
    let lab_exec = audit.child.id() as i32;
    let audit_pid = wait_for(
        "the audit's pid, the child of its `lab exec`",
        COMMAND_TIMEOUT,
        || idlegate::sys::proc::children(lab_exec).first().copied(),
        || audit.log(),
    );
    signal(audit_pid, libc::SIGTERM);
    let status = wait_bounded(&mut audit.child, COMMAND_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "audit --metrics after SIGTERM: {status:?}\n{}",
        audit.log()
    );
}
