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
//!
//! The helpers and the scripts more than one area runs are here; the tests are in one file per
//! command family: `lab_up` (`lab up`, `lab exec`, `explain`), `gateway_run` (`flows`,
//! `--metrics`, `--pcap`, `--workers`, `--user`), `audit_lab` (`audit --metrics` in a lab host, scraped
//! by a real Prometheus), `profiles` (`profiles`), `tunnel_keys` (`keygen`, a
//! tunnel's key and `--heartbeat`), `generate` (`completions`, `man`), `no_ip` (the lab with
//! no `ip` program to be found).

mod advise;
mod audit_lab;
mod gateway_run;
mod generate;
mod lab_exec;
mod lab_list;
mod lab_up;
mod no_ip;
mod profiles;
mod tunnel_keys;

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

/// `idlegate lab up --config CONFIG --name NAME`, run to completion: for a `lab up` that is
/// refused (one that starts runs until stopped: [`Lab::up_with`]).
fn lab_up_once(config: &Path, name: &str) -> Finished {
    let config = config.to_str().expect("a UTF-8 path");
    idlegate(
        &["lab", "up", "--config", config, "--name", name],
        COMMAND_TIMEOUT,
    )
}

/// `text` written to `file_name` in a new temporary directory (removed when the first is
/// dropped), and the file's path.
fn temp_file(file_name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(file_name);
    std::fs::write(&path, text).expect("writing the file");
    (dir, path)
}

/// `idlegate lab exec --name LAB HOST -- COMMAND…` to start in the background: stdin from
/// /dev/null, in a process group of its own (the test kills the group: `lab exec` and what it
/// runs).
fn lab_exec_in_background(lab: &str, host: &str, command: &[&str]) -> Command {
    let mut exec = Command::new(IDLEGATE);
    exec.args(["lab", "exec", "--name", lab, host, "--"])
        .args(command)
        .stdin(Stdio::null())
        .process_group(0);
    exec
}

/// Reads `reader` line by line on a thread of its own, sending `wrap(line)` on `tx` until the
/// reader ends, a line is not UTF-8, or the receiver is gone; the handle ends with the thread.
fn forward_lines<T: Send + 'static>(
    reader: impl Read + Send + 'static,
    tx: Sender<T>,
    wrap: impl Fn(String) -> T + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(wrap(line)).is_err() {
                break;
            }
        }
    })
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
        Lab::up_in(name, config, extra, &mut Command::new(IDLEGATE))
    }

    /// `lab up` run as `command` (the binary, with whatever environment the test gave it).
    fn up_in(name: &str, config: &Path, extra: &[&str], command: &mut Command) -> Lab {
        let mut child = command
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
        forward_lines(child.stdout.take().unwrap(), tx, |line| line);
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
        let mut command = vec!["python3", "-u", "-c", script];
        command.extend_from_slice(args);
        self.start(tag, host, &command);
    }

    /// Starts `command` (a program, then its arguments) in `host`, in its own process group.
    fn start(&mut self, tag: &str, host: &str, command: &[&str]) {
        let mut child = lab_exec_in_background(&self.lab, host, command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting idlegate lab exec");
        let owner = tag.to_string();
        let stdout_reader =
            forward_lines(child.stdout.take().unwrap(), self.tx.clone(), move |line| {
                (owner.clone(), line)
            });
        let (stderr, _) = collect(child.stderr.take().unwrap());
        self.running.push(Program {
            tag: tag.to_string(),
            child,
            stdout_reader: Some(stdout_reader),
            stderr,
        });
    }

    /// What program `tag` wrote to stderr so far.
    fn stderr_of(&self, tag: &str) -> String {
        let program = self.running.iter().find(|p| p.tag == tag);
        let program = program.unwrap_or_else(|| panic!("no program {tag}"));
        let stderr = program.stderr.lock().unwrap();
        stderr.clone()
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

/// Client: connects to argv[1]:argv[2], sends argv[3] + "\n", prints the line it gets back.
const LINE_CLIENT: &str = r#"
import signal, socket, sys
signal.alarm(20)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall((sys.argv[3] + "\n").encode())
print(c.makefile("rb").readline().decode().strip())
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
