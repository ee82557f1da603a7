//! `idlegate audit --metrics` as an operator runs it: scraped by a real Prometheus (Debian's
//! `prometheus` package) loading the real alerting rules of `deploy/prometheus/`, which fires
//! the at-risk alert for a connection this test holds open, idle and without keepalive, in a
//! network namespace of its own; and the rules' own unit tests run by `promtool test rules`.
//! Prometheus listens on 127.0.0.1 only. Every process the test starts is killed, and the
//! namespace deleted, when the test ends, pass or fail (guards).

use crate::common;

use common::{free_port, output_within, require_root, unique};
use idlegate::sys::netns::{self, Namespace};
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");
/// The alert the test fires, as the rules file names it.
const AT_RISK: &str = "IdlegateAuditConnectionAtRisk";
/// How long Prometheus may take to start, scrape and fire (1 s scrapes and evaluations, a
/// `for:` of 2 s): generous for a loaded 2-core machine.
const FIRE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the audit may take to show a change (1 s scans) in Prometheus (1 s scrapes).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// `deploy/prometheus/` of this checkout.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

/// The program `name` from PATH; fails the test naming it (and the package that has it) if
/// missing.
fn require_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs `{name}` (Debian package `prometheus`; scripts/setup installs it), \
                 and it is not on PATH"
            )
        })
}

#[test]
fn promtool_passes_the_audit_rules_unit_tests() {
    let promtool = require_tool("promtool");
    for args in [
        &["test", "rules", "idlegate-audit.rules.test.yml"][..],
        &["check", "config", "prometheus.yml"],
    ] {
        let out = output_within(
            Command::new(&promtool).args(args).current_dir(deploy_dir()),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The rules file with the `for:` of `alert` made `for_`, the rest as written (so that the
/// expression under test is the real one).
fn rules_with_shorter_for(alert: &str, for_: &str) -> String {
    let text = std::fs::read_to_string(deploy_dir().join("idlegate-audit.rules.yml"))
        .expect("reading deploy/prometheus/idlegate-audit.rules.yml");
    let mut inside = false;
    let mut replaced = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if let Some(name) = line.trim_start().strip_prefix("- alert:") {
                inside = name.trim() == alert;
            } else if inside && line.trim_start().starts_with("for:") {
                replaced += 1;
                let indent = &line[..line.len() - line.trim_start().len()];
                return format!("{indent}for: {for_}");
            }
            line.to_string()
        })
        .collect();
    assert_eq!(replaced, 1, "one `for:` of {alert} in the rules file");
    lines.join("\n") + "\n"
}

/// A process the test started: killed and reaped when dropped; its stderr in a file.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(command: &mut Command, log: PathBuf) -> Running {
        let file = File::create(&log).expect("creating a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Running { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET target` from `addr`: the status and the body.
fn get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// Asks until `check` gives a value, for at most `timeout`; fails with `what` and `state()`.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    state: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\n{}",
            state()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Prometheus's answer to `api` (a path under /api/v1/), if it gave one.
fn api(prometheus: SocketAddr, target: &str) -> Option<Value> {
    let (status, body) = get(prometheus, &format!("/api/v1/{target}")).ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// The firing alerts named `name`.
fn firing(prometheus: SocketAddr, name: &str) -> Vec<Value> {
    api(prometheus, "alerts")
        .and_then(|v| v["data"]["alerts"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
        .collect()
}

/// An idle connection without keepalive in `ns` (and its listener): both its ends are this
/// process's, so both are at risk and owned by this process's command.
fn idle_connection(ns: &Namespace) -> (TcpListener, TcpStream, TcpStream) {
    let listener = netns::spawn_in(ns.name(), || TcpListener::bind("127.0.0.1:7000"))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let client = netns::spawn_in(ns.name(), || TcpStream::connect("127.0.0.1:7000"))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let (server, _) = listener.accept().unwrap();
    (listener, client, server)
}

/// This process's command, as /proc/PID/comm says it (what the audit labels it with).
fn this_command() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim_end()
        .to_string()
}

/// `idlegate audit --netns NS --metrics ADDR --interval 1s --idle-timeout 3s`, logging into
/// `dir`.
fn start_audit(ns: &Namespace, metrics: SocketAddr, dir: &Path) -> Running {
    Running::start(
        Command::new(IDLEGATE).args([
            "audit",
            "--netns",
            ns.name(),
            "--metrics",
            &metrics.to_string(),
            "--interval",
            "1s",
            "--idle-timeout",
            "3s",
        ]),
        dir.join("audit.log"),
    )
}

/// The line of the metrics that counts `command`'s at-risk connections as 2.
fn at_risk_line(command: &str) -> String {
    format!("idlegate_audit_command_connections{{command=\"{command}\",verdict=\"at-risk\"}} 2")
}

/// The audit's metrics text, if it answered 200.
fn scrape(metrics: SocketAddr) -> Option<String> {
    get(metrics, "/metrics")
        .ok()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
}

/// The value of the sample `series` (name and labels as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until the audit at `metrics` shows the two ends of [`idle_connection`] at risk.
fn wait_for_at_risk(metrics: SocketAddr, command: &str, audit: &Running) {
    let line = at_risk_line(command);
    wait_for(
        "audit --metrics serving the two ends of the connection as at-risk",
        CHANGE_TIMEOUT,
        || scrape(metrics).filter(|body| body.lines().any(|l| l == line)),
        || {
            format!(
                "metrics: {:?}\naudit log:\n{}",
                scrape(metrics),
                audit.log()
            )
        },
    );
}

#[test]
fn a_real_prometheus_fires_the_at_risk_alert_for_an_idle_connection_without_keepalive() {
    require_root();
    let prometheus_bin = require_tool("prometheus");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ns = Namespace::create(&unique("ap")).expect("a network namespace");
    let (listener, client, server) = idle_connection(&ns);
    let command = this_command();
    let metrics = free_port();
    let mut audit = start_audit(&ns, metrics, dir.path());
    wait_for_at_risk(metrics, &command, &audit);

    let rules = dir.path().join("idlegate-audit.rules.yml");
    std::fs::write(&rules, rules_with_shorter_for(AT_RISK, "2s")).unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: idlegate-audit\n    static_configs:\n      \
             - targets: ['{metrics}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let web = free_port();
    let prometheus = Running::start(
        Command::new(prometheus_bin).args([
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={web}"),
        ]),
        dir.path().join("prometheus.log"),
    );
    let diagnosis = || {
        format!(
            "alerts: {:?}\nprometheus log:\n{}\naudit log:\n{}",
            api(web, "alerts"),
            prometheus.log(),
            audit.log()
        )
    };
    let alerts = wait_for(
        "Prometheus firing IdlegateAuditConnectionAtRisk",
        FIRE_TIMEOUT,
        || Some(firing(web, AT_RISK)).filter(|a| !a.is_empty()),
        diagnosis,
    );
    assert_eq!(alerts.len(), 1, "one command, one alert: {alerts:#?}");
    let labels = &alerts[0]["labels"];
    assert_eq!(labels["command"], command.as_str(), "{alerts:#?}");
    assert_eq!(labels["verdict"], "at-risk", "{alerts:#?}");
    assert_eq!(labels["job"], "idlegate-audit", "{alerts:#?}");
    assert!(
        alerts[0]["annotations"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("idlegate advise"),
        "the alert says what to do: {alerts:#?}"
    );

    // The converse: the connection closed, the at-risk gauge drops to 0 and the alert ends.
    drop((client, server, listener));
    let query = "query?query=idlegate_audit_connections%7Bverdict%3D%22at-risk%22%7D";
    wait_for(
        "idlegate_audit_connections{verdict=\"at-risk\"} back to 0 in Prometheus",
        CHANGE_TIMEOUT,
        || {
            let answer = api(web, query)?;
            let value = answer["data"]["result"][0]["value"][1]
                .as_str()?
                .to_string();
            (value == "0").then_some(())
        },
        || format!("query: {:?}\n{}", api(web, query), diagnosis()),
    );
    wait_for(
        "IdlegateAuditConnectionAtRisk no longer firing",
        CHANGE_TIMEOUT,
        || firing(web, AT_RISK).is_empty().then_some(()),
        diagnosis,
    );

    // SIGTERM stops the audit cleanly.
    // SAFETY: kill(2) on a child this test started and has not reaped.
    let sent = unsafe { libc::kill(audit.child.id() as i32, libc::SIGTERM) };
    assert_eq!(sent, 0, "sending SIGTERM to the audit");
    let status = wait_for(
        "audit --metrics exiting after SIGTERM",
        Duration::from_secs(10),
        || audit.child.try_wait().expect("waiting for the audit"),
        String::new,
    );
    assert!(status.success(), "{status:?}\n{}", audit.log());
}

#[test]
fn when_scans_fail_the_metrics_keep_the_last_good_scan_and_count_the_failures() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ns = Namespace::create(&unique("ap")).expect("a network namespace");
    let _connection = idle_connection(&ns);
    let command = this_command();
    let metrics = free_port();
    let mut audit = start_audit(&ns, metrics, dir.path());
    wait_for_at_risk(metrics, &command, &audit);
    // The namespace's name gone: every scan from now on fails to enter it.
    netns::delete(ns.name()).expect("deleting the namespace");
    let errors = "idlegate_audit_scan_errors_total";
    let last_scan = "idlegate_audit_last_scan_timestamp_seconds";
    let state = || {
        format!(
            "metrics: {:?}\naudit log:\n{}",
            scrape(metrics),
            audit.log()
        )
    };
    let failing = wait_for(
        "a failed scan counted",
        CHANGE_TIMEOUT,
        || scrape(metrics).filter(|text| sample(text, errors) >= Some(1.0)),
        state,
    );
    let failed_at_first = sample(&failing, errors).unwrap();
    let later = wait_for(
        "two more failed scans counted",
        CHANGE_TIMEOUT,
        || scrape(metrics).filter(|text| sample(text, errors) >= Some(failed_at_first + 2.0)),
        state,
    );
    assert!(
        later.lines().any(|l| l == at_risk_line(&command)),
        "the last good scan's values stay:\n{later}"
    );
    assert_eq!(
        sample(&later, last_scan),
        sample(&failing, last_scan),
        "no successful scan since"
    );
    assert!(
        audit.child.try_wait().unwrap().is_none(),
        "the audit keeps running"
    );
    assert!(
        audit.log().contains("audit scan failed"),
        "each failure is logged:\n{}",
        audit.log()
    );
}
