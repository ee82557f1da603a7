//! What `idlegate relay` tells its operator, read from the real binary's stderr: a name that
//! does not resolve is a failed lookup (not bad syntax), a refused upstream connection says
//! why, a tunnel entry with the wrong key says the exit refused its handshake and what to
//! check, and the descriptor limit is warned about only when it cannot hold the connections
//! asked for; `idlegate probe` resolves its target the same way. Everything on loopback (or in
//! a network namespace with no interface up, for the lookups).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

/// A running `idlegate` and its stderr lines; killed however the test ends.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Starts `idlegate args…` logging at info, its descriptor limit (soft and hard) set to
    /// `nofile` first if given.
    fn start(args: &[&str], nofile: Option<u64>) -> Running {
        let mut command = Command::new(env!("CARGO_BIN_EXE_idlegate"));
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("starting idlegate");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stderr line (from now) that contains `text`; fails after [`WAIT`] with
    /// everything it said.
    fn line_with(&mut self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {text:?} within {WAIT:?}; it said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// A loopback port nothing listens on (it did a moment ago).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Runs `idlegate args…` to its end in a network namespace of its own with no interface up
/// (so a lookup goes nowhere), and gives its exit code and stderr.
fn run_isolated(args: &[&str]) -> (i32, String) {
    let out = Command::new("unshare")
        .arg("--net")
        .arg(env!("CARGO_BIN_EXE_idlegate"))
        .args(args)
        .output()
        .expect("unshare (util-linux) runs idlegate in a new network namespace");
    (
        out.status.code().expect("an exit code"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A failed lookup of db.example.invalid as the relay reports it: exit 1; a first line that is
/// `start` and then the resolver's reason; never "not HOST:PORT" (bad syntax); the hint next.
fn assert_failed_lookup(code: i32, stderr: &str, start: &str) {
    assert_eq!(code, 1, "{stderr}");
    let mut lines = stderr.lines();
    let error = lines.next().unwrap_or_default();
    assert!(error.starts_with(start), "{stderr}");
    assert!(error.len() > start.len(), "the resolver's reason: {stderr}");
    assert!(!stderr.contains("not HOST:PORT"), "{stderr}");
    assert_eq!(
        lines.next(),
        Some("hint: check the name, and that this machine's resolver knows it: getent hosts db.example.invalid"),
        "{stderr}"
    );
}

#[test]
fn a_connect_name_that_does_not_resolve_is_a_failed_lookup_with_a_hint_not_bad_syntax() {
    crate::common::require_root();
    let (code, stderr) = run_isolated(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        "db.example.invalid:5432",
    ]);
    assert_failed_lookup(
        code,
        &stderr,
        "idlegate: --connect db.example.invalid:5432: looking up db.example.invalid: ",
    );
}

/// A name in a relay config that does not resolve fails as `--connect` does (exit 1, the
/// resolver's reason, the same hint), at the name's place in the file, not as a mistake of its
/// syntax.
#[test]
fn a_relay_config_name_that_does_not_resolve_exits_1_with_the_lookup_hint_as_connect_does() {
    crate::common::require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("relays.toml");
    std::fs::write(
        &config,
        "[[relay]]\nlisten = \"127.0.0.1:0\"\nconnect = \"db.example.invalid:5432\"\n\
         keepalive = \"2m,30s,8\"\n",
    )
    .expect("writing the relay config");
    let config = config.display().to_string();
    let (code, stderr) = run_isolated(&["relay", "--config", &config]);
    let start = format!(
        "idlegate: {config}:3:11: connect = \"db.example.invalid:5432\": looking up db.example.invalid: "
    );
    assert_failed_lookup(code, &stderr, &start);
}

#[test]
fn a_connect_value_that_is_not_host_port_is_a_usage_error_saying_what_is_wrong() {
    crate::common::require_root();
    let (code, stderr) = run_isolated(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        "db.example.invalid",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.lines().next(),
        Some("idlegate: --connect db.example.invalid: not HOST:PORT: no :PORT"),
        "{stderr}"
    );
}

#[test]
fn a_relay_whose_server_refuses_logs_why_connecting_failed() {
    let upstream = closed_port();
    let listen = closed_port();
    let mut relay = Running::start(
        &[
            "relay",
            "--listen",
            &listen.to_string(),
            "--connect",
            &upstream.to_string(),
            "--max-connections",
            "10",
        ],
        None,
    );
    relay.line_with(&format!("relay {listen} → {upstream}"));
    let _client = TcpStream::connect(listen).expect("the relay listens");
    let line = relay.line_with("connecting to");
    assert!(
        line.ends_with(&format!(
            "relay: connecting to {upstream} failed: Connection refused"
        )),
        "{line}"
    );
}

/// A directory removed however the test ends, holding a key made by `idlegate keygen` under
/// each of `names`; their paths, in order.
fn keys(names: &[&str]) -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let paths: Vec<_> = names.iter().map(|n| dir.path().join(n)).collect();
    for key in &paths {
        let made = Command::new(env!("CARGO_BIN_EXE_idlegate"))
            .arg("keygen")
            .arg(key)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
    }
    (dir, paths)
}

/// A tunnel exit at `tunnel` (to a closed port) with the pair's key file `key`, under a
/// descriptor limit of `nofile` if given, once it has said its start line.
fn keyed_exit(tunnel: SocketAddr, key: &std::path::Path, nofile: Option<u64>) -> Running {
    let target = closed_port();
    let args = [
        "relay",
        "--tunnel-listen",
        &tunnel.to_string(),
        "--connect",
        &target.to_string(),
        "--key",
        key.to_str().unwrap(),
    ];
    let mut exit = Running::start(&args, nofile);
    exit.line_with(&format!("tunnel exit {tunnel}"));
    exit
}

#[test]
fn a_tunnel_entry_with_the_wrong_key_says_the_exit_refused_its_handshake_and_what_to_check() {
    let (_dir, keys) = keys(&["entry.key", "exit.key"]);
    let (entry_key, exit_key) = (&keys[0], &keys[1]);
    let (tunnel, listen) = (closed_port(), closed_port());
    let _exit = keyed_exit(tunnel, exit_key, None);
    let mut entry = Running::start(
        &[
            "relay",
            "--listen",
            &listen.to_string(),
            "--tunnel",
            &tunnel.to_string(),
            "--key",
            entry_key.to_str().unwrap(),
            "--heartbeat",
            "1s",
            "--resume-within",
            "4s",
        ],
        None,
    );
    entry.line_with(&format!("tunnel entry {listen}"));
    let _app = TcpStream::connect(listen).expect("the entry listens");
    let waits = entry.line_with("a new connection waits");
    assert!(
        waits.contains("the exit dropped the connection during the handshake"),
        "{waits}"
    );
    assert!(
        waits.contains("most likely because this entry's key is not one the exit accepts"),
        "{waits}"
    );
    assert!(
        waits.contains(
            "hint: if the exit refused the handshake: both ends need the same --key file"
        ),
        "{waits}"
    );
    let gave_up = entry.line_with("took the connection within");
    assert!(
        gave_up.contains(
            "(hint: if the exit refused the handshake: both ends need the same --key file"
        ),
        "{gave_up}"
    );
    assert!(!gave_up.contains("the far end closed the leg"), "{gave_up}");
}

/// The start lines of a relay to a closed port, up to its start line, under a descriptor
/// limit of `nofile`, with `extra` arguments.
fn relay_start(nofile: u64, extra: &[&str]) -> Vec<String> {
    let listen = closed_port();
    let upstream = closed_port();
    let mut args = vec![
        "relay".to_string(),
        "--listen".to_string(),
        listen.to_string(),
        "--connect".to_string(),
        upstream.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut relay = Running::start(&args, Some(nofile));
    relay.line_with(&format!("relay {listen} → {upstream}"));
    relay.seen.clone()
}

#[test]
fn a_relay_whose_descriptors_hold_its_connection_limit_says_nothing_about_descriptors() {
    let lines = relay_start(1024, &["--max-connections", "10"]);
    assert!(
        !lines.iter().any(|l| l.contains("descriptors")),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn a_relay_with_the_default_limit_under_a_small_descriptor_limit_holds_what_fits_without_a_warning()
{
    // 1,024 descriptors: 64 kept aside, two a connection: 480 connections.
    let lines = relay_start(1024, &[]);
    assert!(
        !lines.iter().any(|l| l.contains("WARN")),
        "{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.contains(
            "INFO idlegate: descriptors: the limit is 1024, so each listener holds at most 480 connections"
        )),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn a_relay_asked_for_more_connections_than_its_descriptors_hold_warns_with_the_numbers_and_the_fix()
{
    let lines = relay_start(1024, &["--max-connections", "2000"]);
    let warning = lines
        .iter()
        .find(|l| l.contains("WARN") && l.contains("descriptors"))
        .unwrap_or_else(|| panic!("no descriptor warning:\n{}", lines.join("\n")));
    assert!(
        warning.ends_with(
            "descriptors: --max-connections 2000 needs 4064 descriptors but the limit is 1024 (the hard limit), so each listener holds at most 480 connections (raise the hard limit: ulimit -Hn, or LimitNOFILE= in the systemd unit; or give a smaller --max-connections)"
        ),
        "{warning}"
    );
}

#[test]
fn a_tunnel_exit_keeps_descriptors_aside_for_its_gate_and_its_idle_legs() {
    // 4,096 descriptors: 64 kept aside, 1,024 for connections owing their Hello, 256 a core
    // (a worker each) for the legs kept idle between sessions, two a session.
    let (_dir, keys) = keys(&["pair.key"]);
    let key = &keys[0];
    let exit = keyed_exit(closed_port(), key, Some(4096));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let fits = (4096 - 64 - 1024 - 256 * cores) / 2;
    let expected = format!(
        "descriptors: the limit is 4096, so each listener holds at most {fits} connections"
    );
    assert!(
        exit.seen.iter().any(|l| l.contains(&expected)),
        "no {expected:?} in:\n{}",
        exit.seen.join("\n")
    );
}

#[test]
fn a_probe_target_is_resolved_as_the_relay_resolves_its_addresses() {
    crate::common::require_root();
    let (code, stderr) = run_isolated(&["probe", "db.example.invalid"]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.lines().next(),
        Some("idlegate: db.example.invalid: not HOST:PORT: no :PORT"),
        "{stderr}"
    );
    let (code, stderr) = run_isolated(&["probe", "db.example.invalid:9300"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("idlegate: db.example.invalid:9300: looking up db.example.invalid: "),
        "{stderr}"
    );
}
