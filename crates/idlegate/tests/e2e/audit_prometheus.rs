//! `idlegate audit --metrics` as an operator runs it: the rules' own unit tests run by
//! `promtool test rules`; scans that fail (in a network namespace of the test's own) keep the
//! last good values; and the helpers of the test where a real Prometheus (Debian's
//! `prometheus` package) in a lab host scrapes it and fires the at-risk alert
//! (`cli::audit_lab`). The audit listens on a port the kernel picks (127.0.0.1:0), read from
//! its log. Every process a test starts is killed, and the namespace deleted, when the test
//! ends, pass or fail (guards).

use crate::common;

use common::{output_within, require_root, unique};
use idlegate::sys::netns::{self, Namespace};
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");
/// How long the audit may take to show a change (1 s scans), or Prometheus (1 s scrapes):
/// generous for a loaded 2-core machine.
pub(crate) const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// `deploy/prometheus/` of this checkout.
pub(crate) fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

/// The program `name` from PATH; fails the test naming it (and the package that has it) if
/// missing.
pub(crate) fn require_tool(name: &str) -> PathBuf {
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

/// A process the test started, in a process group of its own: the group (the process and
/// whatever it started, e.g. `lab exec` and its program) killed and reaped when dropped; its
/// stderr in a file.
pub(crate) struct Running {
    pub(crate) child: Child,
    log: PathBuf,
}

impl Running {
    pub(crate) fn start(command: &mut Command, log: PathBuf) -> Running {
        let file = File::create(&log).expect("creating a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Running { child, log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the process group of a child this test started and has not
            // reaped (so its pid, the group's id, is not reused).
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// `GET target` from `addr`: the status and the body.
pub(crate) fn get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
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
pub(crate) fn wait_for<T>(
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
pub(crate) fn api(prometheus: SocketAddr, target: &str) -> Option<Value> {
    let (status, body) = get(prometheus, &format!("/api/v1/{target}")).ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// The firing alerts named `name`.
pub(crate) fn firing(prometheus: SocketAddr, name: &str) -> Vec<Value> {
    api(prometheus, "alerts")
        .and_then(|v| v["data"]["alerts"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
        .collect()
}

/// An idle connection without keepalive in `ns` (and its listener), between two addresses
/// that are not loopback (the audit leaves loopback connections out): both its ends are this
/// process's, so both are at risk and owned by this process's command.
fn idle_connection(ns: &Namespace) -> (TcpListener, TcpStream, TcpStream) {
    let [server, _] = common::non_loopback_pair(ns.name());
    let listener = netns::spawn_in(ns.name(), move || TcpListener::bind((server, 7000)))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let client = netns::spawn_in(ns.name(), move || TcpStream::connect((server, 7000)))
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

/// `idlegate audit --netns NS --metrics 127.0.0.1:0 --interval 1s --idle-timeout 3s`,
/// logging into `dir`, and the address it serves at (from its log).
fn start_audit(ns: &Namespace, dir: &Path) -> (Running, SocketAddr) {
    let audit = Running::start(
        Command::new(IDLEGATE).args([
            "audit",
            "--netns",
            ns.name(),
            "--metrics",
            "127.0.0.1:0",
            "--interval",
            "1s",
            "--idle-timeout",
            "3s",
        ]),
        dir.join("audit.log"),
    );
    let addr = wait_for(
        "audit --metrics logging the address it serves at",
        CHANGE_TIMEOUT,
        || {
            let log = audit.log();
            let (_, rest) = log.split_once(" at http://")?;
            rest.split_once("/metrics")?.0.parse().ok()
        },
        || audit.log(),
    );
    (audit, addr)
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
fn when_scans_fail_the_metrics_keep_the_last_good_scan_and_count_the_failures() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ns = Namespace::create(&unique("ap")).expect("a network namespace");
    let _connection = idle_connection(&ns);
    let command = this_command();
    let (mut audit, metrics) = start_audit(&ns, dir.path());
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

#[test]
fn the_metrics_count_loopback_connections_apart_and_judge_only_the_others() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ns = Namespace::create(&unique("al")).expect("a network namespace");
    let _connection = idle_connection(&ns);
    // An idle loopback connection without keepalive in the same namespace: through a box it
    // would be at risk; on loopback it is only counted.
    let listener = netns::spawn_in(ns.name(), || TcpListener::bind("127.0.0.1:7001"))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let _loopback_client = netns::spawn_in(ns.name(), || TcpStream::connect("127.0.0.1:7001"))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let _loopback_server = listener.accept().unwrap();
    let command = this_command();
    let (audit, metrics) = start_audit(&ns, dir.path());
    wait_for_at_risk(metrics, &command, &audit);
    let text = scrape(metrics).expect("the metrics");
    assert_eq!(
        sample(&text, "idlegate_audit_loopback_connections"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "idlegate_audit_connections{verdict=\"at-risk\"}"),
        Some(2.0),
        "only the two ends of the non-loopback connection are judged:\n{text}"
    );
}
