//! `examples/api/scenario.py`, the Python example of the HTTP API, run against a real lab: `lab
//! up --api` of `examples/azure-lb.toml` (4 min scaled to 4 s) with a token file, servers and
//! clients in the lab's hosts through `lab exec`, and the script as a user runs it.
//!
//! Needs root (namespaces, TUN devices) and `python3`; fails loudly without them. The lab has
//! its own name and API port; the guards stop `lab up`, delete its namespaces and kill the
//! programs even when an assertion fails. The script's refusals (no API there, a URL that is
//! not http://) need no lab.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");
/// How long `lab up` may take to print `ready`, or a program its first line.
pub(crate) const READY: Duration = Duration::from_secs(30);
/// How long the scenario waits for its expiry (a 5 s timeout, on a loaded machine).
const SCENARIO_WAIT_S: &str = "30";
/// How long the scenario may run in all.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "an-api-token-of-32-bytes-for-tests";

pub(crate) fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// A child killed with its whole process group when dropped (`lab exec` and what it runs).
pub(crate) struct Group(pub(crate) Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill has no memory-safety preconditions; the group is our unreaped child's.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

/// Lines from many children, tagged, kept in arrival order: a wait looks at every line so far,
/// then at the lines still to come.
pub(crate) struct Lines {
    /// Told of each new line.
    tx: Sender<()>,
    rx: Receiver<()>,
    all: Arc<Mutex<Vec<(String, String)>>>,
}

impl Lines {
    pub(crate) fn new() -> Lines {
        let (tx, rx) = mpsc::channel();
        Lines {
            tx,
            rx,
            all: Arc::default(),
        }
    }

    /// Keeps `pipe`'s lines as (`tag`, line).
    pub(crate) fn follow(&self, tag: &str, pipe: impl Read + Send + 'static) {
        let (tx, all, tag) = (self.tx.clone(), Arc::clone(&self.all), tag.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                all.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((tag.clone(), line));
                if tx.send(()).is_err() {
                    break;
                }
            }
        });
    }

    /// The first line of `tag` that `wanted` accepts, among those so far or within `limit`.
    pub(crate) fn wait(&self, tag: &str, wanted: impl Fn(&str) -> bool, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            let found = self
                .all
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(t, line)| t == tag && wanted(line))
                .map(|(_, line)| line.clone());
            if let Some(line) = found {
                return line;
            }
            let left = until.saturating_duration_since(Instant::now());
            if self.rx.recv_timeout(left).is_err() {
                let so_far = self.everything();
                panic!("no such line from {tag} within {limit:?}; everything so far:\n{so_far}");
            }
        }
    }

    pub(crate) fn everything(&self) -> String {
        let all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .map(|(tag, line)| format!("{tag}: {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A running `lab up`; dropping it stops the lab and deletes whatever namespaces are left.
pub(crate) struct LabUp {
    pub(crate) name: String,
    pub(crate) child: Group,
}

impl Drop for LabUp {
    fn drop(&mut self) {
        crate::common::take_lab_down(&mut self.child.0, &self.name);
    }
}

/// `idlegate lab exec --name LAB HOST -- python3 -u -c SCRIPT ARGS…`, its lines to `lines`.
pub(crate) fn python_in(
    lab: &str,
    host: &str,
    tag: &str,
    script: &str,
    args: &[&str],
    lines: &Lines,
) -> Group {
    let mut child = Command::new(IDLEGATE)
        .args([
            "lab", "exec", "--name", lab, host, "--", "python3", "-u", "-c", script,
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("starting idlegate lab exec");
    lines.follow(tag, child.stdout.take().unwrap());
    lines.follow(&format!("{tag} stderr"), child.stderr.take().unwrap());
    Group(child)
}

/// Server: on port argv[1], accepts one connection, prints `accepted`, reads until it ends.
const SERVER: &str = r#"
import signal, socket, sys
signal.alarm(90)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("listening")
c, _ = s.accept()
print("accepted")
while c.recv(100):
    pass
"#;

/// Client: connects to argv[1]:argv[2], sends a byte, prints `connected`; then, with argv[3]
/// `busy`, sends a byte every 0.5 s (the flow never idles) or, with `idle`, sends nothing;
/// prints `end <exception>` when the connection fails (a RST: ConnectionResetError).
const CLIENT: &str = r#"
import select, signal, socket, sys
signal.alarm(90)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"a")
print("connected")
try:
    while True:
        if select.select([c], [], [], 0.5)[0]:
            print("end eof" if not c.recv(100) else "end data")
            break
        if sys.argv[3] == "busy":
            c.sendall(b"b")
except OSError as e:
    print("end " + type(e).__name__)
"#;

/// A lab of `examples/azure-lb.toml` up with `--api` on a free port and `token` in a file,
/// its output followed in `lines` ("lab", "lab stderr") until `ready`, and `server` (a Python
/// script taking the port) listening on each rule's port, 7000 and 7001, in both members
/// (tags "vm1:7000", …). Fields drop in order: the servers, the lab, the token's directory.
pub(crate) struct ApiLab {
    pub(crate) servers: Vec<Group>,
    pub(crate) lab: LabUp,
    pub(crate) name: String,
    pub(crate) api: std::net::SocketAddr,
    pub(crate) token_file: PathBuf,
    pub(crate) dir: tempfile::TempDir,
}

/// Brings an [`ApiLab`] up, named after `prefix`.
pub(crate) fn api_lab(prefix: &str, token: &str, server: &str, lines: &Lines) -> ApiLab {
    let name = common::unique(prefix);
    let api = common::free_port();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("writing the token");
    let mut up = Command::new(IDLEGATE);
    up.args(["lab", "up", "--config"])
        .arg(repo("examples/azure-lb.toml"))
        .args([
            "--name",
            &name,
            "--api",
            &api.to_string(),
            "--api-token-file",
        ])
        .arg(&token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = up.spawn().expect("starting idlegate lab up");
    lines.follow("lab", child.stdout.take().expect("stdout"));
    lines.follow("lab stderr", child.stderr.take().expect("stderr"));
    let lab = LabUp {
        name: name.clone(),
        child: Group(child),
    };
    lines.wait("lab", |l| l == "ready", READY);
    let mut servers = Vec::new();
    for (vm, port) in [
        ("vm1", "7000"),
        ("vm2", "7000"),
        ("vm1", "7001"),
        ("vm2", "7001"),
    ] {
        let tag = format!("{vm}:{port}");
        servers.push(python_in(&name, vm, &tag, server, &[port], lines));
        lines.wait(&tag, |l| l == "listening", READY);
    }
    ApiLab {
        servers,
        lab,
        name,
        api,
        token_file,
        dir,
    }
}

#[test]
fn the_python_example_changes_a_rule_sees_a_flow_expire_and_expires_the_rest() {
    common::require_root();
    let lines = Lines::new();
    let ApiLab {
        name: _,
        api,
        token_file,
        dir: _dir,
        lab,
        servers: mut programs,
    } = api_lab("api", TOKEN, SERVER, &lines);
    // A busy flow under the reset rule: it never idles out, so only the redeploy ends it.
    programs.push(python_in(
        &lab.name,
        "internet",
        "busy",
        CLIENT,
        &["203.0.113.10", "7001", "busy"],
        &lines,
    ));
    lines.wait("busy", |l| l == "connected", READY);

    let mut scenario = Command::new("python3");
    scenario
        .arg(repo("examples/api/scenario.py"))
        .arg(format!("http://{api}/"))
        .arg("app")
        .arg(&token_file)
        .args(["--idle-timeout", "5m", "--wait", SCENARIO_WAIT_S])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = scenario
        .spawn()
        .expect("starting python3 examples/api/scenario.py");
    lines.follow("scenario", child.stdout.take().unwrap());
    lines.follow("scenario stderr", child.stderr.take().unwrap());
    let mut scenario = Group(child);
    // The script listens and has changed the rule: a connection opened now gets the new timeout
    // (5 min, run as 5 s) and is left idle until the box forgets it.
    let listed = lines.wait("scenario", |l| l.starts_with("flows: "), READY);
    assert_eq!(
        listed,
        "flows: 1 (0 of rule app); time scale 60",
        "{}",
        lines.everything()
    );
    lines.wait("scenario", |l| l.starts_with("waiting up to"), READY);
    programs.push(python_in(
        &lab.name,
        "internet",
        "idle",
        CLIENT,
        &["203.0.113.10", "7000", "idle"],
        &lines,
    ));
    lines.wait("idle", |l| l == "connected", READY);

    let until = Instant::now() + SCENARIO_LIMIT;
    let status = loop {
        if let Some(status) = scenario.0.try_wait().expect("waiting for the scenario") {
            break status;
        }
        assert!(
            Instant::now() < until,
            "the scenario still runs after {SCENARIO_LIMIT:?}:\n{}",
            lines.everything()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let expired = lines.wait("scenario", |l| l.starts_with("expired: app: "), READY);
    assert!(
        expired.contains("-> 203.0.113.10:7000 -> ")
            && expired.contains("(idle, timeout 5.0 s), action silent"),
        "the idle flow expired after the rule's new timeout, silently: {expired}\n{}",
        lines.everything()
    );
    lines.wait(
        "scenario",
        |l| l == "the load balancer is redeployed: expired 1 more flow(s)",
        READY,
    );
    // The rule gets back the 4 min it had (examples/azure-lb.toml), before `ok`.
    lines.wait(
        "scenario",
        |l| l == "rule app: idle timeout back to 240s, as before the scenario",
        READY,
    );
    lines.wait("scenario", |l| l == "ok", READY);
    assert!(
        status.success(),
        "scenario: {status}\n{}",
        lines.everything()
    );
    // The redeploy expired the busy flow with its rule's action: a RST.
    lines.wait("busy", |l| l == "end ConnectionResetError", READY);
    drop(programs);
    drop(lab);
}

/// `python3 examples/api/scenario.py ARGS…`, run to its end (bounded).
fn scenario_alone(args: &[&str]) -> std::process::Output {
    let mut child = Command::new("python3")
        .arg(repo("examples/api/scenario.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("starting python3 examples/api/scenario.py (is python3 installed?)");
    let until = Instant::now() + SCENARIO_LIMIT;
    while child
        .try_wait()
        .expect("waiting for the scenario")
        .is_none()
    {
        if Instant::now() >= until {
            // SAFETY: kill has no memory-safety preconditions; the group is our unreaped child's.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("the scenario still runs after {SCENARIO_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("the scenario's output")
}

#[test]
fn the_python_example_says_in_one_line_that_the_api_cannot_be_reached_and_exits_1() {
    // Nothing listens there: the connection is refused, as without --api or on a wrong port.
    let url = format!("http://{}/", common::free_port());
    let out = scenario_alone(&[&url, "app"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "scenario failed: cannot reach {url}: Connection refused (is the lab up with --api?)\n"
        ),
        "one line, no traceback"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

#[test]
fn the_python_example_refuses_a_url_that_is_not_http_as_a_usage_error() {
    for (url, said) in [
        (
            "127.0.0.1:9466",
            "127.0.0.1:9466: not an http:// URL, the API serves plain HTTP \
             (did you mean http://127.0.0.1:9466/?)",
        ),
        (
            "ftp://127.0.0.1:9466/",
            "ftp://127.0.0.1:9466/: not an http:// URL, the API serves plain HTTP",
        ),
    ] {
        let out = scenario_alone(&[url, "app"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(
            stderr.ends_with(&format!("scenario.py: error: {said}\n")),
            "{url}: {stderr}"
        );
    }
}
