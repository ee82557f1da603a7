//! End-to-end tests of the command line: the real `idlegate` binary, `lab up` and `lab exec`,
//! with unmodified programs (`python3 -c` one-liners) as servers and clients in the lab's
//! hosts, real Linux TCP stacks in network namespaces, and the emulated Azure Load Balancer of
//! `examples/azure-lb.toml` (4 min scaled to 4 s) between them.
//!
//! They must run as root (network namespaces and TUN devices) with `ip` (iproute2) and
//! `python3`. They never skip: without root, or when a lab does not come up, they fail loudly.
//! Every test uses its own lab name (`cli` + pid + `x` + counter), so they run in parallel;
//! the [`Lab`] guard stops its `lab up` (SIGTERM, then SIGKILL) and deletes any `ig-NAME-*`
//! namespace left behind, and the [`Programs`] guard kills the programs a test started, even
//! when an assertion fails.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");
/// How long `lab up` may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `lab up` may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a short command (`lab exec … true`, a refused `lab up`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to print `listening`.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// The frontend and the internet host of `examples/azure-lb.toml`'s lab.
const FRONTEND: &str = "203.0.113.10";
const INTERNET: &str = "203.0.113.100";
const VM1: &str = "192.0.2.11";

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/azure-lb.toml")
}

/// A fresh lab name; fails the test at once unless we are root.
fn lab_name() -> String {
    common::require_root();
    common::unique("cli")
}

/// The names `ip netns list` shows.
fn netns_list() -> Vec<String> {
    let output = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("running `ip netns list`");
    assert!(
        output.status.success(),
        "`ip netns list` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The namespaces of lab `lab` that exist.
fn namespaces_of(lab: &str) -> Vec<String> {
    let prefix = format!("ig-{lab}-");
    let mut names: Vec<String> = netns_list()
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

/// Every host of the example lab has its namespace.
fn assert_lab_namespaces(lab: &str) {
    let expected: Vec<String> = ["internet", "vm1", "vm2"]
        .iter()
        .map(|host| format!("ig-{lab}-{host}"))
        .collect();
    assert_eq!(namespaces_of(lab), expected);
}

/// Polls `child` every [`POLL`] until it exits (its status) or `timeout` passes (`None`).
/// Never panics: the guards' `Drop` use it.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) => return None,
            Err(e) => {
                eprintln!("waiting for process {}: {e}", child.id());
                return None;
            }
        }
    }
}

fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; `pid` is a child (or group) we started
    // and have not reaped yet.
    unsafe { libc::kill(pid, signal) };
}

/// Collects everything `reader` yields into a string another thread can look at.
fn collect(mut reader: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, thread)
}

/// A finished command.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `idlegate ARGS…` to completion; fails the test if it runs longer than `timeout`.
fn idlegate(args: &[&str], timeout: Duration) -> Finished {
    run_bounded(IDLEGATE, args, timeout)
}

/// Runs `program ARGS…` to completion; fails the test if it runs longer than `timeout`.
fn run_bounded(program: &str, args: &[&str], timeout: Duration) -> Finished {
    let out = common::output_within(
        Command::new(program).args(args).stdin(Stdio::null()),
        timeout,
    );
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `idlegate lab exec --name LAB HOST -- COMMAND…`, run to completion.
fn lab_exec(lab: &str, host: &str, command: &[&str]) -> Finished {
    let mut args = vec!["lab", "exec", "--name", lab, host, "--"];
    args.extend_from_slice(command);
    idlegate(&args, COMMAND_TIMEOUT)
}

/// A running `idlegate lab up`. Dropping it stops the lab (SIGTERM, then SIGKILL) and deletes
/// whatever namespaces of the lab are left.
struct Lab {
    name: String,
    child: Child,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Ends at the end of `lab up`'s stderr.
    stderr_reader: Option<JoinHandle<()>>,
}

impl Lab {
    /// Starts `lab up` of the example config and waits until it prints `ready`.
    fn up(name: &str) -> Lab {
        Lab::up_with(name, &example_config())
    }

    fn up_with(name: &str, config: &Path) -> Lab {
        Lab::up_with_args(name, config, &[])
    }

    fn up_with_args(name: &str, config: &Path, extra: &[&str]) -> Lab {
        let mut child = Command::new(IDLEGATE)
            .args(["lab", "up", "--config"])
            .arg(config)
            .args(["--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting idlegate lab up");
        let (tx, stdout) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (stderr, stderr_reader) = collect(child.stderr.take().unwrap());
        let mut lab = Lab {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            stderr_reader: Some(stderr_reader),
        };
        match lab.stdout.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line == "ready" => lab,
            Ok(line) => panic!(
                "lab {name}: `lab up` printed {line:?} instead of \"ready\"; stderr:\n{}",
                lab.stderr()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = wait_bounded(&mut lab.child, STOP_TIMEOUT);
                if status.is_some() {
                    lab.stderr_reader.take().map(JoinHandle::join);
                }
                panic!(
                    "lab {name}: `lab up` closed its stdout without printing \"ready\" \
                     (exit: {status:?}); stderr:\n{}",
                    lab.stderr()
                )
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "lab {name}: `lab up` did not print \"ready\" within {READY_TIMEOUT:?}; stderr:\n{}",
                lab.stderr()
            ),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits (bounded) for `lab up` to exit.
    fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        match wait_bounded(&mut self.child, STOP_TIMEOUT) {
            Some(status) => status,
            None => panic!(
                "lab {}: `lab up` still running {STOP_TIMEOUT:?} after SIGTERM; stderr:\n{}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// Kills `lab up` with SIGKILL, giving it no chance to clean up.
    fn kill(&mut self) -> ExitStatus {
        signal(self.pid(), libc::SIGKILL);
        wait_bounded(&mut self.child, STOP_TIMEOUT).expect("a SIGKILLed process exits")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // No panics here: this also runs while a failed assertion unwinds.
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid(), libc::SIGTERM);
            if wait_bounded(&mut self.child, STOP_TIMEOUT).is_none() {
                signal(self.pid(), libc::SIGKILL);
                let _ = self.child.wait();
            }
        }
        let prefix = format!("ig-{}-", self.name);
        for line in Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            if let Some(ns) = line
                .split_whitespace()
                .next()
                .filter(|ns| ns.starts_with(&prefix))
            {
                let deleted = Command::new("ip").args(["netns", "delete", ns]).status();
                if !deleted.is_ok_and(|s| s.success()) {
                    eprintln!("lab {}: could not delete namespace {ns}", self.name);
                }
            }
        }
        let _ = std::fs::remove_file(format!("/run/idlegate/lab-{}.lock", self.name));
    }
}

/// Programs started with `lab exec` in the background, their stdout lines merged into one
/// stream tagged with each program's tag. Dropping it kills those still running.
struct Programs {
    lab: String,
    running: Vec<Program>,
    tx: Sender<(String, String)>,
    rx: Receiver<(String, String)>,
    /// Every line received so far, with its program's tag.
    seen: Vec<(String, String)>,
}

struct Program {
    tag: String,
    child: Child,
    /// Ends at the end of the program's stdout.
    stdout_reader: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
}

impl Programs {
    fn new(lab: &Lab) -> Programs {
        let (tx, rx) = mpsc::channel();
        Programs {
            lab: lab.name.clone(),
            running: Vec::new(),
            tx,
            rx,
            seen: Vec::new(),
        }
    }

    /// Starts `python3 -u -c SCRIPT ARGS…` in `host`, in its own process group.
    fn python(&mut self, tag: &str, host: &str, script: &str, args: &[&str]) {
        let mut child = Command::new(IDLEGATE)
            .args(["lab", "exec", "--name", &self.lab, host, "--"])
            .args(["python3", "-u", "-c", script])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("starting idlegate lab exec");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, owner) = (self.tx.clone(), tag.to_string());
        let stdout_reader = std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send((owner.clone(), line)).is_err() {
                    break;
                }
            }
        });
        let (stderr, _) = collect(child.stderr.take().unwrap());
        self.running.push(Program {
            tag: tag.to_string(),
            child,
            stdout_reader: Some(stdout_reader),
            stderr,
        });
    }

    /// Everything seen so far, for failure messages.
    fn report(&self) -> String {
        let mut report = String::new();
        for (tag, line) in &self.seen {
            report.push_str(&format!("  {tag}: {line}\n"));
        }
        for program in &self.running {
            let stderr = program.stderr.lock().unwrap();
            if !stderr.is_empty() {
                report.push_str(&format!("  {} stderr: {}\n", program.tag, stderr.trim()));
            }
        }
        report
    }

    /// Waits until a program whose tag is in `tags` prints a line satisfying `wanted`;
    /// returns its tag and the line.
    fn wait_line(
        &mut self,
        tags: &[&str],
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> (String, String) {
        let matches = |(tag, line): &(String, String)| tags.contains(&tag.as_str()) && wanted(line);
        if let Some(found) = self.seen.iter().find(|seen| matches(seen)) {
            return found.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(seen) => {
                    self.seen.push(seen.clone());
                    if matches(&seen) {
                        return seen;
                    }
                }
                Err(_) => panic!(
                    "no matching line from {tags:?} within {timeout:?}; output so far:\n{}",
                    self.report()
                ),
            }
        }
    }

    /// Waits until every program in `tags` has printed `line`.
    fn wait_each(&mut self, tags: &[&str], line: &str, timeout: Duration) {
        for tag in tags {
            self.wait_line(&[tag], |l| l == line, timeout);
        }
    }

    /// Waits (bounded) for program `tag` to exit; returns its status and every line it printed.
    fn finish(&mut self, tag: &str, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let i = self
            .running
            .iter()
            .position(|p| p.tag == tag)
            .unwrap_or_else(|| panic!("no program {tag}"));
        let Some(status) = wait_bounded(&mut self.running[i].child, timeout) else {
            panic!(
                "{tag} still running after {timeout:?}; output so far:\n{}",
                self.report()
            )
        };
        // `lab exec` waited for python3: its stdout is closed, so the reader ends and every
        // line it read is on the channel.
        if let Some(reader) = self.running[i].stdout_reader.take() {
            reader.join().expect("the stdout reader panicked");
        }
        (status, self.lines_of(&[tag]))
    }

    /// Every line the programs in `tags` printed so far (in arrival order).
    fn lines_of(&mut self, tags: &[&str]) -> Vec<String> {
        while let Ok(seen) = self.rx.try_recv() {
            self.seen.push(seen);
        }
        self.seen
            .iter()
            .filter(|(tag, _)| tags.contains(&tag.as_str()))
            .map(|(_, line)| line.clone())
            .collect()
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        for program in &mut self.running {
            if let Ok(None) = program.child.try_wait() {
                // The whole group: `idlegate lab exec` and the python3 it runs.
                signal(-(program.child.id() as i32), libc::SIGKILL);
                let _ = program.child.wait();
            }
        }
    }
}

/// Server: accepts one connection on port argv[1], reads a line, answers "pong:" + line,
/// prints it. Every script ends itself after 20 s whatever happens (`signal.alarm`).
const PONG_SERVER: &str = r#"
import signal, socket, sys
signal.alarm(20)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("listening")
c, peer = s.accept()
c.settimeout(5)
line = c.makefile("rb").readline().decode()
c.sendall(("pong:" + line).encode())
print("received " + line.strip())
c.close()
"#;

/// Client: connects to argv[1]:argv[2], sends argv[3] + "\n", prints the line it gets back.
const LINE_CLIENT: &str = r#"
import signal, socket, sys
signal.alarm(20)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall((sys.argv[3] + "\n").encode())
print(c.makefile("rb").readline().decode().strip())
"#;

/// Server: on argv[1]:argv[2], accepts one connection, prints the peer's IP, echoes one line.
const ECHO_SERVER: &str = r#"
import signal, socket, sys
signal.alarm(20)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening")
c, peer = s.accept()
print("peer " + peer[0])
c.settimeout(5)
line = c.makefile("rb").readline()
c.sendall(line)
print("echoed " + line.decode().strip())
c.close()
"#;

/// Server: accepts one connection on port argv[1] and prints every chunk it receives for 8 s,
/// then how it ended: `end deadline`, `end eof` or `end <exception>`.
const CHUNK_SERVER: &str = r#"
import signal, socket, sys, time
signal.alarm(20)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("listening")
c, peer = s.accept()
print("accepted")
deadline = time.monotonic() + 8
while True:
    left = deadline - time.monotonic()
    if left <= 0:
        print("end deadline")
        break
    c.settimeout(left)
    try:
        data = c.recv(100)
    except socket.timeout:
        print("end deadline")
        break
    except OSError as e:
        print("end " + type(e).__name__)
        break
    if not data:
        print("end eof")
        break
    print("got " + data.decode())
"#;

/// Client: connects to argv[1]:argv[2], sends "a", stays idle 5.5 s (longer than the lab's
/// 4 s idle timeout: this is the scenario, not a wait), sends "b", waits up to 2 s for a reply,
/// and prints `reply data`, `reply eof`, `reply timeout` or `error <exception>`.
const IDLE_CLIENT: &str = r#"
import signal, socket, sys, time
signal.alarm(20)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall(b"a")
print("sent a")
time.sleep(5.5)
try:
    c.sendall(b"b")
    print("sent b")
    c.settimeout(2)
    data = c.recv(100)
    print("reply " + ("data" if data else "eof"))
except socket.timeout:
    print("reply timeout")
except OSError as e:
    print("error " + type(e).__name__)
"#;

#[test]
fn lab_up_prints_ready_and_an_unmodified_client_reaches_a_server_through_the_frontend() {
    let lab = Lab::up(&lab_name());
    let mut programs = Programs::new(&lab);
    // The LB's hash picks either member: both serve.
    programs.python("vm1", "vm1", PONG_SERVER, &["7000"]);
    programs.python("vm2", "vm2", PONG_SERVER, &["7000"]);
    programs.wait_each(&["vm1", "vm2"], "listening", LISTEN_TIMEOUT);

    programs.python(
        "client",
        "internet",
        LINE_CLIENT,
        &[FRONTEND, "7000", "hello"],
    );
    let (status, lines) = programs.finish("client", Duration::from_secs(10));
    let report = programs.report();
    assert!(status.success(), "client failed: {status}\n{report}");
    assert_eq!(lines, ["pong:hello"], "\n{report}");
    programs.wait_line(
        &["vm1", "vm2"],
        |l| l == "received hello",
        Duration::from_secs(5),
    );
}

#[test]
fn outbound_rule_lets_a_member_reach_the_internet_from_the_frontend_address() {
    let lab = Lab::up(&lab_name());
    let mut programs = Programs::new(&lab);
    programs.python("server", "internet", ECHO_SERVER, &[INTERNET, "8000"]);
    programs.wait_each(&["server"], "listening", LISTEN_TIMEOUT);

    programs.python("client", "vm1", LINE_CLIENT, &[INTERNET, "8000", "ping"]);
    let (status, client) = programs.finish("client", Duration::from_secs(10));
    let (server_status, server) = programs.finish("server", Duration::from_secs(10));
    let report = programs.report();
    assert!(status.success(), "client failed: {status}\n{report}");
    assert!(
        server_status.success(),
        "server failed: {server_status}\n{report}"
    );
    assert_eq!(client, ["ping"], "\n{report}");
    assert_eq!(
        server,
        ["listening", &format!("peer {FRONTEND}"), "echoed ping"],
        "the internet host must see the frontend address, not {VM1}\n{report}"
    );
}

#[test]
fn idle_connection_through_the_lab_is_silently_dropped_after_the_idle_timeout() {
    let lab = Lab::up(&lab_name());
    let mut programs = Programs::new(&lab);
    // Port 7000's rule drops silently, 7001's resets; both run side by side.
    let servers = [
        ("vm1:7000", "vm1", "7000"),
        ("vm2:7000", "vm2", "7000"),
        ("vm1:7001", "vm1", "7001"),
        ("vm2:7001", "vm2", "7001"),
    ];
    for (tag, host, port) in servers {
        programs.python(tag, host, CHUNK_SERVER, &[port]);
    }
    programs.wait_each(&servers.map(|s| s.0), "listening", LISTEN_TIMEOUT);
    programs.python("silent", "internet", IDLE_CLIENT, &[FRONTEND, "7000"]);
    programs.python("reset", "internet", IDLE_CLIENT, &[FRONTEND, "7001"]);

    // Silent: "b" is lost, the client's write succeeds and its read times out; the server hears
    // nothing more until its own deadline.
    let (status, client) = programs.finish("silent", Duration::from_secs(15));
    let silent_servers = ["vm1:7000", "vm2:7000"];
    let (_, end) = programs.wait_line(
        &silent_servers,
        |l| l.starts_with("end "),
        Duration::from_secs(10),
    );
    let server = programs.lines_of(&silent_servers);
    let report = programs.report();
    assert!(status.success(), "client failed: {status}\n{report}");
    assert_eq!(client, ["sent a", "sent b", "reply timeout"], "\n{report}");
    assert!(server.contains(&"got a".to_string()), "\n{report}");
    assert!(!server.contains(&"got b".to_string()), "\n{report}");
    assert_eq!(end, "end deadline", "\n{report}");

    // Reset: at expiry the gateway resets both ends; the client learns it at its next write
    // (or read), the server at once.
    let (status, client) = programs.finish("reset", Duration::from_secs(15));
    let reset_servers = ["vm1:7001", "vm2:7001"];
    let (_, end) = programs.wait_line(
        &reset_servers,
        |l| l.starts_with("end "),
        Duration::from_secs(10),
    );
    let server = programs.lines_of(&reset_servers);
    let report = programs.report();
    assert!(status.success(), "client failed: {status}\n{report}");
    assert_eq!(client[0], "sent a", "\n{report}");
    let last = client.last().map(String::as_str);
    assert!(
        matches!(
            last,
            Some("error ConnectionResetError" | "error BrokenPipeError")
        ),
        "the client must see the reset, got {last:?}\n{report}"
    );
    assert!(server.contains(&"got a".to_string()), "\n{report}");
    assert!(!server.contains(&"got b".to_string()), "\n{report}");
    assert_eq!(end, "end ConnectionResetError", "\n{report}");
}

#[test]
fn lab_exec_passes_the_exit_status_through() {
    let lab = Lab::up(&lab_name());
    let exited = lab_exec(&lab.name, "vm1", &["sh", "-c", "exit 3"]);
    assert_eq!(exited.status.code(), Some(3), "stderr: {}", exited.stderr);
    let killed = lab_exec(&lab.name, "vm1", &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(
        killed.status.code(),
        Some(128 + libc::SIGTERM),
        "stderr: {}",
        killed.stderr
    );
    let ok = lab_exec(
        &lab.name,
        "internet",
        &["sh", "-c", "echo out; echo err >&2"],
    );
    assert_eq!(ok.status.code(), Some(0), "stderr: {}", ok.stderr);
    assert_eq!(ok.stdout, "out\n");
    assert_eq!(ok.stderr, "err\n");
}

#[test]
fn lab_exec_names_the_hosts_when_the_host_is_unknown() {
    let lab = Lab::up(&lab_name());
    let refused = lab_exec(&lab.name, "vm3", &["true"]);
    assert!(!refused.status.success());
    assert_eq!(refused.status.signal(), None);
    for word in ["vm3", "vm1", "vm2", "internet"] {
        assert!(refused.stderr.contains(word), "{word}: {}", refused.stderr);
    }
}

#[test]
fn lab_exec_says_the_lab_is_not_up() {
    let name = lab_name();
    let refused = lab_exec(&name, "vm1", &["true"]);
    assert!(!refused.status.success());
    assert_eq!(refused.status.signal(), None);
    assert!(refused.stderr.contains("is not up"), "{}", refused.stderr);
    assert!(refused.stderr.contains(&name), "{}", refused.stderr);
}

#[test]
fn sigterm_removes_every_namespace_of_the_lab() {
    let mut lab = Lab::up(&lab_name());
    assert_lab_namespaces(&lab.name);
    let status = lab.terminate();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", lab.stderr());
    assert_eq!(namespaces_of(&lab.name), Vec::<String>::new());
}

#[test]
fn a_lab_killed_with_sigkill_is_cleaned_up_by_the_next_up() {
    let name = lab_name();
    // Declared first, dropped last: its clean-up cannot touch the second lab's namespaces.
    let mut killed = Lab::up(&name);
    assert_eq!(killed.kill().signal(), Some(libc::SIGKILL));
    assert_lab_namespaces(&name);

    let mut again = Lab::up(&name);
    assert_lab_namespaces(&name);
    // The new lab's namespaces are fresh and wired: a program runs in them.
    let ok = lab_exec(&name, "vm1", &["true"]);
    assert_eq!(ok.status.code(), Some(0), "stderr: {}", ok.stderr);
    assert_eq!(again.terminate().code(), Some(0), "{}", again.stderr());
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
}

#[test]
fn a_second_up_of_a_running_lab_is_refused() {
    let mut lab = Lab::up(&lab_name());
    let config = example_config();
    let second = idlegate(
        &[
            "lab",
            "up",
            "--config",
            config.to_str().unwrap(),
            "--name",
            &lab.name,
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!second.status.success());
    assert!(second.stderr.contains("already up"), "{}", second.stderr);
    assert!(!second.stdout.contains("ready"), "{}", second.stdout);
    // The first lab is untouched.
    assert_eq!(lab.child.try_wait().unwrap(), None, "{}", lab.stderr());
    assert_lab_namespaces(&lab.name);
    let ok = lab_exec(&lab.name, "vm1", &["true"]);
    assert_eq!(ok.status.code(), Some(0), "stderr: {}", ok.stderr);
}

#[test]
fn a_bad_config_is_refused_with_file_line_and_field_before_anything_starts() {
    let name = lab_name();
    let good = std::fs::read_to_string(example_config()).unwrap();
    // The first lb_rule's idle timeout, below the profile's minimum.
    let bad = good.replacen("idle_timeout = \"4m\"", "idle_timeout = \"2m\"", 1);
    assert_ne!(good, bad);
    let line = bad
        .lines()
        .position(|l| l.contains("idle_timeout = \"2m\""))
        .unwrap()
        + 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, bad).unwrap();

    let refused = idlegate(
        &[
            "lab",
            "up",
            "--config",
            path.to_str().unwrap(),
            "--name",
            &name,
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!refused.status.success());
    assert_eq!(refused.stdout, "");
    let lines: Vec<&str> = refused.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", refused.stderr);
    let prefix = format!("{}:{line}:", path.display());
    assert!(lines[0].contains(&prefix), "want {prefix}: {}", lines[0]);
    assert!(
        lines[0].contains("idle_timeout = 2m is below Azure LB's minimum of 4 min"),
        "{}",
        lines[0]
    );
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
}

#[test]
fn a_lab_name_that_could_collide_with_another_labs_namespaces_is_refused() {
    // `ig-t-u-vm1` could be lab "t-u" host "vm1" or lab "t" host "u-vm1": '-' is refused.
    let base = lab_name();
    let output = Command::new(IDLEGATE)
        .args(["lab", "up", "--config"])
        .arg(example_config())
        .args(["--name", &format!("{base}-u")])
        .output()
        .expect("running idlegate lab up");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("use 1–32 letters, digits or '_'"),
        "{stderr}"
    );
    assert!(namespaces_of(&base).is_empty(), "nothing was created");
}

#[test]
fn explain_prints_every_rules_timeout_and_why_without_starting_anything() {
    let output = Command::new(IDLEGATE)
        .args(["lab", "up", "--explain", "--config"])
        .arg(example_config())
        .output()
        .expect("running idlegate lab up --explain");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("lb_rule app: idle timeout 4 min (runs 4s), expiry silent"),
        "{stdout}"
    );
    assert!(
        stdout.contains("lb_rule app-with-reset: idle timeout 4 min (runs 4s), expiry reset"),
        "{stdout}"
    );
    assert!(
        stdout.contains("outbound_rule egress: idle timeout 4 min"),
        "{stdout}"
    );
    assert!(stdout.contains("because:"), "{stdout}");
}

/// Connects to argv[1]:argv[2], sends "a", then waits up to 10 s for anything; says how it ended
/// and how long after connecting.
const HOLD_CLIENT: &str = r#"
import signal, socket, sys, time
signal.alarm(20)
start = time.monotonic()
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall(b"a")
print("sent a", flush=True)
c.settimeout(10)
try:
    data = c.recv(100)
    print("got " + repr(data))
except OSError as e:
    print("%s after %.1fs" % (type(e).__name__, time.monotonic() - start))
"#;

/// A server on `port` in both members and a client in `internet` that has sent "a" through
/// the frontend and holds the connection open; returns once a server got the "a".
fn hold_connection(programs: &mut Programs, port: &str) {
    let servers =
        [("vm1", "vm1"), ("vm2", "vm2")].map(|(tag, host)| (format!("{tag}:{port}"), host));
    for (tag, host) in &servers {
        programs.python(tag, host, CHUNK_SERVER, &[port]);
    }
    let tags = [servers[0].0.as_str(), servers[1].0.as_str()];
    programs.wait_each(&tags, "listening", LISTEN_TIMEOUT);
    programs.python("client", "internet", HOLD_CLIENT, &[FRONTEND, port]);
    programs.wait_line(&tags, |l| l == "got a", Duration::from_secs(10));
}

#[test]
fn flows_lists_the_live_flow_and_flows_expire_resets_it_at_once_as_the_pcap_shows() {
    let pcap = tempfile::NamedTempFile::new().expect("a capture file");
    let pcap_path = pcap.path().to_str().expect("a UTF-8 path").to_string();
    let mut lab = Lab::up_with_args(&lab_name(), &example_config(), &["--pcap", &pcap_path]);
    let mut programs = Programs::new(&lab);
    hold_connection(&mut programs, "7001");

    let listed = idlegate(&["flows", "--lab", &lab.name, "--json"], COMMAND_TIMEOUT);
    assert!(listed.status.success(), "{}", listed.stderr);
    let flows: serde_json::Value =
        serde_json::from_str(&listed.stdout).expect("flows --json prints JSON");
    let flows = flows.as_array().expect("an array of flows");
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0]["rule"], "app-with-reset");
    assert_eq!(flows[0]["state"], "ESTABLISHED");
    assert_eq!(flows[0]["public"], format!("{FRONTEND}:7001"));

    // The rule resets on expiry: expiring its flows now resets both ends now, long before the
    // 4 s idle timeout.
    let expired = idlegate(
        &[
            "flows",
            "expire",
            "--lab",
            &lab.name,
            "--rule",
            "app-with-reset",
        ],
        COMMAND_TIMEOUT,
    );
    assert!(expired.status.success(), "{}", expired.stderr);
    assert_eq!(expired.stdout.trim(), "expired 1 flow(s)");
    let (_, client) = programs.finish("client", Duration::from_secs(15));
    let report = programs.report();
    let seconds: f64 = client
        .last()
        .and_then(|l| l.strip_prefix("ConnectionResetError after "))
        .and_then(|l| l.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("the client must be reset\n{report}"));
    assert!(
        seconds < 3.0,
        "reset by the expiry, not by the idle timeout\n{report}"
    );

    let refused = idlegate(&["flows", "expire", "--lab", &lab.name], COMMAND_TIMEOUT);
    assert!(!refused.status.success(), "expire needs --rule or --all");

    // The capture holds both sides of the translation and the two RSTs the gateway made.
    assert!(lab.terminate().success());
    let file = std::fs::File::open(pcap.path()).expect("the capture file");
    let mut reader = pcap_file::pcap::PcapReader::new(file).expect("a pcap file");
    let mut headers = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.expect("a readable packet");
        if let Ok(h) = idlegate_core::packet::Headers::parse(&packet.data) {
            headers.push(h);
        }
    }
    let frontend: std::net::SocketAddrV4 = format!("{FRONTEND}:7001").parse().unwrap();
    let syn = |h: &idlegate_core::packet::Headers| h.tcp.is_some_and(|t| t.flags.is_connect());
    assert!(
        headers.iter().any(|h| syn(h) && h.dst == frontend),
        "the SYN as it came in"
    );
    assert!(
        headers
            .iter()
            .any(|h| syn(h) && h.dst.port() == 7001 && h.dst != frontend),
        "the SYN as it left, translated"
    );
    let resets: Vec<_> = headers
        .iter()
        .filter(|h| h.tcp.is_some_and(|t| t.flags.rst()))
        .collect();
    assert!(
        resets.iter().any(|h| h.src == frontend),
        "the RST to the client: {resets:?}"
    );
    assert!(
        resets
            .iter()
            .any(|h| h.dst.port() == 7001 && h.dst != frontend),
        "the RST to the member: {resets:?}"
    );
}

/// `GET path` from the metrics listener at `addr`: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::Write;
    let mut stream =
        std::net::TcpStream::connect(addr).expect("connecting to the metrics listener");
    stream.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

#[test]
fn metrics_show_flows_by_rule_and_state_snat_ports_and_traffic() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let lab = Lab::up_with_args(&lab_name(), &example_config(), &["--metrics", &addr]);
    let mut programs = Programs::new(&lab);
    hold_connection(&mut programs, "7000");

    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let value = |series: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    assert_eq!(
        value("idlegate_flows{rule=\"app\",state=\"ESTABLISHED\"}"),
        1
    );
    assert_eq!(value("idlegate_flows_created_total"), 1);
    // Two members with Azure's default 1,024 SNAT ports each, none lent.
    assert_eq!(
        value("idlegate_snat_ports{frontend=\"203.0.113.10\",state=\"free\"}"),
        2048
    );
    assert_eq!(
        value("idlegate_snat_ports{frontend=\"203.0.113.10\",state=\"in_use\"}"),
        0
    );
    assert_eq!(
        value("idlegate_snat_ports{frontend=\"203.0.113.10\",state=\"held\"}"),
        0
    );
    assert!(
        value("idlegate_packets_total{interface=\"outside\",direction=\"in\"}") >= 3,
        "SYN, ACK, data"
    );
    assert!(value("idlegate_bytes_total{interface=\"inside\",direction=\"out\"}") >= 120);
    assert_eq!(value("idlegate_expiries_total{action=\"silent\"}"), 0);
    assert!(
        body.contains("# TYPE idlegate_drops_total counter"),
        "{body}"
    );
    assert_eq!(http_get(&addr, "/nothing").0, "HTTP/1.1 404 Not Found");
}

#[test]
fn profiles_lists_each_profile_and_show_prints_a_config_that_is_accepted() {
    let listed = idlegate(&["profiles"], COMMAND_TIMEOUT);
    assert!(listed.status.success(), "{}", listed.stderr);
    assert!(
        listed.stdout.contains("azure-lb (Azure LB)"),
        "{}",
        listed.stdout
    );
    assert!(
        listed.stdout.contains("4 min (4 min–100 min)"),
        "{}",
        listed.stdout
    );

    let shown = idlegate(&["profiles", "show", "azure-lb"], COMMAND_TIMEOUT);
    assert!(shown.status.success(), "{}", shown.stderr);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, shown.stdout.as_bytes()).unwrap();
    let path = file.path().to_str().unwrap();
    let explained = idlegate(
        &["lab", "up", "--explain", "--config", path],
        COMMAND_TIMEOUT,
    );
    assert!(explained.status.success(), "{}", explained.stderr);
    assert!(
        explained.stdout.contains("lb_rule app: idle timeout 4 min"),
        "{}",
        explained.stdout
    );

    let unknown = idlegate(&["profiles", "show", "azure-lbb"], COMMAND_TIMEOUT);
    assert!(!unknown.status.success());
    assert!(
        unknown
            .stderr
            .contains("no profile \"azure-lbb\"; known: azure-lb"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tunnel.key");
    let key_arg = key.to_str().unwrap();
    let made = idlegate(&["keygen", key_arg], COMMAND_TIMEOUT);
    assert!(made.status.success(), "{}", made.stderr);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&key).unwrap();
    assert_eq!(first.trim().len(), 64);
    let again = idlegate(&["keygen", key_arg], COMMAND_TIMEOUT);
    assert!(!again.status.success());
    assert!(again.stderr.contains("tunnel.key"), "{}", again.stderr);
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        first,
        "the key is kept"
    );
}

#[test]
fn a_tunnel_with_a_missing_or_unprotected_key_is_refused_before_it_listens() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tunnel.key");
    let key_arg = key.to_str().unwrap();
    // No --key at all: clap names the missing flag.
    let no_key = idlegate(
        &[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:9",
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!no_key.status.success());
    assert!(no_key.stderr.contains("--key"), "{}", no_key.stderr);
    // A key file others may read.
    assert!(idlegate(&["keygen", key_arg], COMMAND_TIMEOUT)
        .status
        .success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = idlegate(
        &[
            "relay",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:9",
            "--key",
            key_arg,
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!open.status.success());
    assert!(open.stderr.contains("chmod 600"), "{}", open.stderr);
    // A file that is not a key.
    std::fs::write(&key, "not a key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bad = idlegate(
        &[
            "relay",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:9",
            "--key",
            key_arg,
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("not a tunnel key"), "{}", bad.stderr);
    // Both ends at once make no sense.
    let both = idlegate(
        &[
            "relay",
            "--tunnel",
            "127.0.0.1:9",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--key",
            key_arg,
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!both.status.success());
    assert!(both.stderr.contains("--tunnel"), "{}", both.stderr);
}

/// `--heartbeat`'s minimum is the tunnel's own (`tunnel::MIN_HEARTBEAT`, 100 ms), checked in
/// that one place: a shorter heartbeat is refused before the entry listens, and a 100 ms one
/// starts the entry, which a SIGTERM then stops with status 0.
#[test]
fn the_heartbeat_minimum_is_the_tunnel_settings_one_and_checked_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tunnel.key");
    let key_arg = key.to_str().unwrap();
    assert!(idlegate(&["keygen", key_arg], COMMAND_TIMEOUT)
        .status
        .success());
    let entry = |heartbeat: &'static str| {
        vec![
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:9",
            "--key",
            key_arg,
            "--heartbeat",
            heartbeat,
        ]
    };
    let short = idlegate(&entry("50ms"), COMMAND_TIMEOUT);
    assert_eq!(short.status.code(), Some(1), "stderr: {}", short.stderr);
    assert!(
        short.stderr.contains("--heartbeat 50ms: at least 100ms"),
        "{}",
        short.stderr
    );
    assert!(
        !short.stderr.contains("tunnel entry 127."),
        "{}",
        short.stderr
    );

    /// Kills the entry if the test fails before it stops.
    struct Running(Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut running = Running(
        Command::new(IDLEGATE)
            .args(entry("100ms"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting idlegate relay"),
    );
    let (stderr, _reader) = collect(running.0.stderr.take().unwrap());
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while !stderr.lock().unwrap().contains("heartbeat 100ms")
        && running.0.try_wait().unwrap().is_none()
        && Instant::now() < deadline
    {
        std::thread::sleep(POLL);
    }
    assert!(
        stderr.lock().unwrap().contains("heartbeat 100ms"),
        "the entry did not start: {}",
        stderr.lock().unwrap()
    );
    signal(running.0.id() as i32, libc::SIGTERM);
    let status = wait_bounded(&mut running.0, STOP_TIMEOUT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        stderr.lock().unwrap()
    );
}

/// Server: on port argv[1], echoes every byte on every connection it accepts, one thread each,
/// and closes when the client has.
const MANY_ECHO_SERVER: &str = r#"
import signal, socket, sys, threading
signal.alarm(30)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(256)
print("listening")
def echo(c):
    while True:
        data = c.recv(1 << 16)
        if not data:
            break
        c.sendall(data)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"#;

/// Client: opens argv[3] connections to argv[1]:argv[2], sends a line of its own on each,
/// prints how many came back whole, then holds them open (until killed, at most 20 s).
const MANY_CLIENT: &str = r#"
import signal, socket, sys, time
signal.alarm(30)
conns = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
         for _ in range(int(sys.argv[3]))]
for i, c in enumerate(conns):
    c.sendall(b"line %d\n" % i)
ok = sum(c.makefile("rb").readline() == b"line %d\n" % i for i, c in enumerate(conns))
print("echoed %d" % ok)
time.sleep(20)
"#;

/// Client: sends 16 MiB of random bytes to argv[1]:argv[2] while reading what comes back, and
/// prints `bulk ok` if exactly those bytes came back (SHA-256), else `bulk mismatch N`.
const BULK_CLIENT: &str = r#"
import hashlib, os, signal, socket, sys, threading
signal.alarm(30)
data = os.urandom(16 << 20)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
def send():
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
threading.Thread(target=send, daemon=True).start()
h, n = hashlib.sha256(), 0
while True:
    chunk = c.recv(1 << 16)
    if not chunk:
        break
    h.update(chunk)
    n += len(chunk)
same = n == len(data) and h.digest() == hashlib.sha256(data).digest()
print("bulk ok" if same else "bulk mismatch %d" % n)
"#;

#[test]
fn a_gateway_of_four_workers_carries_every_flow_and_answers_for_all_its_shards() {
    // Flows are spread over the workers by their remote endpoint; the kernel's queue choice
    // does not follow it, so packets read by another worker are handed over. The control
    // socket must see every shard.
    let lab = Lab::up_with_args(&lab_name(), &example_config(), &["--workers", "4"]);
    let mut programs = Programs::new(&lab);
    for (tag, host) in [("vm1", "vm1"), ("vm2", "vm2"), ("internet", "internet")] {
        let port = if host == "internet" { "8000" } else { "7000" };
        programs.python(tag, host, MANY_ECHO_SERVER, &[port]);
    }
    programs.wait_each(&["vm1", "vm2", "internet"], "listening", LISTEN_TIMEOUT);
    programs.python(
        "inbound",
        "internet",
        MANY_CLIENT,
        &[FRONTEND, "7000", "40"],
    );
    programs.python("outbound", "vm1", MANY_CLIENT, &[INTERNET, "8000", "20"]);
    programs.wait_line(&["inbound"], |l| l == "echoed 40", Duration::from_secs(15));
    programs.wait_line(&["outbound"], |l| l == "echoed 20", Duration::from_secs(15));

    let listed = idlegate(&["flows", "--lab", &lab.name, "--json"], COMMAND_TIMEOUT);
    assert!(listed.status.success(), "{}", listed.stderr);
    let flows: serde_json::Value =
        serde_json::from_str(&listed.stdout).expect("flows --json prints JSON");
    let flows = flows.as_array().expect("an array of flows");
    let of_rule = |rule: &str| flows.iter().filter(|f| f["rule"] == rule).count();
    assert_eq!((of_rule("app"), of_rule("egress")), (40, 20), "{flows:?}");

    let expired = idlegate(
        &["flows", "expire", "--lab", &lab.name, "--all"],
        COMMAND_TIMEOUT,
    );
    assert!(expired.status.success(), "{}", expired.stderr);
    assert_eq!(expired.stdout.trim(), "expired 60 flow(s)");
    let listed = idlegate(&["flows", "--lab", &lab.name, "--json"], COMMAND_TIMEOUT);
    assert_eq!(listed.stdout.trim(), "[]", "{}", listed.stderr);

    // Bulk both ways at once, in super-segments with offloads: every byte, in order.
    programs.python("bulk-in", "internet", BULK_CLIENT, &[FRONTEND, "7000"]);
    programs.python("bulk-out", "vm1", BULK_CLIENT, &[INTERNET, "8000"]);
    for tag in ["bulk-in", "bulk-out"] {
        let (_, lines) = programs.finish(tag, Duration::from_secs(30));
        assert_eq!(lines, ["bulk ok"], "{tag}\n{}", programs.report());
    }

    // The gateway's closing line counts the packets one worker read for another.
    drop(programs);
    let mut lab = lab;
    assert!(lab.terminate().success());
    lab.stderr_reader.take().map(JoinHandle::join);
    let stderr = lab.stderr();
    let handed_over: u64 = stderr
        .split_once("handed_over=")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no handed_over count in the log:\n{stderr}"));
    assert!(handed_over > 0, "{stderr}");
    assert!(stderr.contains("workers=4"), "{stderr}");
}

#[test]
fn workers_out_of_range_are_refused_before_anything_starts() {
    let refused = idlegate(
        &[
            "lab",
            "up",
            "--config",
            "examples/azure-lb.toml",
            "--workers",
            "0",
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!refused.status.success());
    assert!(
        refused
            .stderr
            .contains("expected a number of workers from 1 to 64"),
        "{}",
        refused.stderr
    );
}

#[test]
fn an_unknown_user_or_root_is_refused_before_the_gateway_makes_any_device() {
    common::require_root();
    let config = example_config();
    for (user, why) in [
        (
            "no-such-user-here",
            "--user no-such-user-here: no such user",
        ),
        ("root", "--user root: has uid 0, which gives nothing up"),
    ] {
        // In a namespace of its own: had it made its devices, they would be there alone.
        let ns = idlegate::sys::netns::Namespace::create(&common::unique("igu")).unwrap();
        let refused = run_bounded(
            "ip",
            &[
                "netns",
                "exec",
                ns.name(),
                IDLEGATE,
                "gateway",
                "--config",
                config.to_str().expect("a UTF-8 path"),
                "--user",
                user,
            ],
            COMMAND_TIMEOUT,
        );
        assert!(!refused.status.success());
        assert!(refused.stderr.contains(why), "{}", refused.stderr);
        let links = Command::new("ip")
            .args(["-n", ns.name(), "-o", "link", "show"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        assert_eq!(links.lines().count(), 1, "only lo: {links}");
    }
}
