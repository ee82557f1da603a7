//! `idlegate keepalive --pid` and `idlegate run`: an unmodified Python client without
//! keepalive, idle 5 s behind a gateway that forgets flows silently after 3 s (Azure's 4 min
//! scaled 1/80), loses its connection; fixed from outside while it runs, or started under
//! `run`, it keeps it. Also the errors: no such process, no permission, a process that exits.
//!
//! Root is needed (namespaces, TUN devices, pidfd_getfd on other users' processes); the tests
//! fail loudly without it.

use crate::common;

use common::{require_root, unique};
use idlegate::lab::{Lab, INTERNET};
use idlegate::survive::keepalive::{Process, SocketKeepalive};
use idlegate::sys::netns;
use idlegate_core::Config;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");
const WAIT: Duration = Duration::from_secs(20);

/// Connects to the frontend, checks the path with "a", says `ready`, waits for a line on
/// stdin, idles 5 s, sends "b" and prints the reply or the error (6 s at most).
const CLIENT: &str = r#"
import socket, sys, time
c = socket.create_connection(("203.0.113.10", 7000), timeout=5)
c.settimeout(6)
c.sendall(b"a\n")
print("reply", c.recv(100).decode().strip(), flush=True)
print("ready", flush=True)
sys.stdin.readline()
time.sleep(5)
c.sendall(b"b\n")
try:
    print("reply", c.recv(100).decode().strip(), flush=True)
except Exception as e:
    print("error", type(e).__name__, flush=True)
"#;

fn config() -> Config {
    common::one_rule_lab("silent")
}

/// A server in `vm1` that answers each line with "ok LINE", for any number of connections.
fn serve(vm1: &str) {
    let listener = netns::spawn_in(vm1, || TcpListener::bind("0.0.0.0:7000"))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let _ = conn.write_all(format!("ok {}\n", line.trim()).as_bytes());
                    line.clear();
                }
            });
        }
    });
}

/// Lines a child prints on stdout and stderr, as they come.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let forward = |out: Box<dyn Read + Send>, tx: mpsc::Sender<String>| {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    };
    forward(Box::new(child.stdout.take().unwrap()), tx.clone());
    if let Some(err) = child.stderr.take() {
        forward(Box::new(err), tx);
    }
    rx
}

/// Waits for a line starting with one of `prefixes`; returns it and the lines before it.
fn expect(rx: &mpsc::Receiver<String>, prefixes: &[&str]) -> (String, Vec<String>) {
    let mut before = Vec::new();
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(line) if prefixes.iter().any(|p| line.starts_with(p)) => return (line, before),
            Ok(line) => before.push(line),
            Err(e) => panic!("no line {prefixes:?} ({e}); got {before:?}"),
        }
    }
}

/// Runs the client (plain, or under `idlegate run`), lets `fix` act on its pid when it is
/// ready, and returns its last line and every line printed before it.
fn idle_client(under_run: Option<&str>, fix: impl FnOnce(u32)) -> (String, Vec<String>) {
    require_root();
    let mut outcome = None;
    Lab::with_gateway(&unique("ka"), &config(), |lab| {
        let internet = lab.namespace_of(INTERNET)?;
        serve(&lab.namespace_of("vm1")?);
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &internet]);
        if let Some(keepalive) = under_run {
            command.args([IDLEGATE, "run", "--keepalive", keepalive, "--"]);
        }
        let mut child = command
            .args(["python3", "-c", CLIENT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let rx = lines(&mut child);
        let (_, mut seen) = expect(&rx, &["ready"]);
        fix(child.id());
        child.stdin.take().unwrap().write_all(b"go\n")?;
        let (last, more) = expect(&rx, &["reply", "error"]);
        seen.extend(more);
        let _ = child.kill();
        let _ = child.wait();
        outcome = Some((last, seen));
        Ok(())
    })
    .expect("lab run");
    outcome.unwrap()
}

#[test]
fn an_idle_client_without_keepalive_loses_its_connection_silently() {
    let (last, _) = idle_client(None, |_| {});
    assert_eq!(
        last, "error TimeoutError",
        "\"b\" vanished: no reply, no error but a timeout"
    );
}

#[test]
fn the_same_client_given_keepalive_from_outside_keeps_its_connection() {
    let mut report = String::new();
    let (last, _) = idle_client(None, |pid| {
        let pid = pid.to_string();
        let out = common::idlegate_ok(&["keepalive", "--pid", &pid, "--keepalive", "1s,1s,3"]);
        report = String::from_utf8_lossy(&out).into_owned();
    });
    assert_eq!(last, "reply ok b", "the flow was kept alive");
    // Before → after, as read back from the socket.
    let line = report
        .lines()
        .find(|l| l.contains("→ 203.0.113.10:7000 ESTABLISHED"))
        .unwrap_or_else(|| panic!("no line for the connection in {report:?}"));
    assert!(
        line.ends_with(
            "keepalive off 7200s/75s/9, user timeout default → keepalive on 1s/1s/3, user timeout 4s"
        ),
        "{line}"
    );
}

#[test]
fn the_same_client_started_under_run_keeps_its_connection() {
    let (last, before) = idle_client(Some("1s,1s,3"), |_| {});
    assert_eq!(last, "reply ok b");
    assert!(
        before
            .iter()
            .any(|l| l.contains("203.0.113.10:7000 ESTABLISHED")
                && l.ends_with("keepalive on 1s/1s/3, user timeout 4s")),
        "run reported the fix: {before:?}"
    );
}

#[test]
fn the_linux_settings_advise_derives_for_the_gateways_timeout_keep_the_client_alive() {
    // The lab's box forgets flows after 3 s: ask advise for that timeout, apply its sysctl
    // values to the client's sockets, and the idle client keeps its connection.
    let out = common::idlegate_ok(&["advise", "--idle-timeout", "3s", "--os", "linux"]);
    let text = String::from_utf8_lossy(&out).into_owned();
    let value = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("net.ipv4.{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
            .to_string()
    };
    let keepalive = format!(
        "{}s,{}s,{}",
        value("tcp_keepalive_time"),
        value("tcp_keepalive_intvl"),
        value("tcp_keepalive_probes")
    );
    assert_eq!(keepalive, "1s,1s,8");
    let (last, _) = idle_client(Some(&keepalive), |_| {});
    assert_eq!(last, "reply ok b");
}

#[test]
fn without_permission_the_error_says_what_is_needed_and_nothing_changes() {
    require_root();
    let holder = common::Holder::start();
    let (_dir, idlegate) = common::runnable_by_anyone(IDLEGATE);
    let out = Command::new(idlegate)
        .args(["keepalive", "--pid", &holder.pid().to_string()])
        .uid(65534) // nobody
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied for process"), "{stderr}");
    assert!(stderr.contains("CAP_SYS_PTRACE"), "{stderr}");
    let process = Process::open(holder.pid() as i32).unwrap();
    for socket in process.tcp_sockets(None).unwrap() {
        assert!(
            !SocketKeepalive::read(&socket).unwrap().enabled,
            "{socket} unchanged"
        );
    }
}

#[test]
fn a_process_that_is_gone_or_exits_during_a_watch_is_reported_plainly() {
    require_root();
    let out = Command::new(IDLEGATE)
        .args(["keepalive", "--pid", "2147483647"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process 2147483647"));
    let mut holder = common::Holder::start();
    let mut watch = Command::new(IDLEGATE)
        .args(["keepalive", "--watch", "--pid", &holder.pid().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut watch);
    let next_with = |text: &str| loop {
        let line = rx.recv_timeout(WAIT).expect("a line from the watch");
        if line.contains(text) {
            return line;
        }
    };
    next_with("ESTABLISHED");
    // The holder exits now, while the watch runs.
    holder.exit_now();
    assert!(next_with("exited").starts_with(&format!("pid {}", holder.pid())));
    assert!(watch.wait().unwrap().success());
}
