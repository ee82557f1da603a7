//! `lab up`, `lab exec` and `explain` end to end: traffic through the lab's frontend and its
//! outbound rule, the idle timeout, exit statuses, clean-up after SIGTERM and SIGKILL, and
//! what is refused before anything starts.

use super::*;

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
    let second = lab_up_once(&example_config(), &lab.name);
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
    let (_dir, path) = temp_file("gw.toml", &bad);

    let refused = lab_up_once(&path, &name);
    assert!(!refused.status.success());
    assert_eq!(refused.stdout, "");
    let lines: Vec<&str> = refused.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", refused.stderr);
    let prefix = format!("{}:{line}:", path.display());
    assert!(lines[0].contains(&prefix), "want {prefix}: {}", lines[0]);
    assert!(
        lines[0].contains("idle_timeout = 2m is outside Azure LB's range: 4 min to 100 min"),
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

#[test]
fn the_start_log_says_a_nat_gateways_own_holds_run_at_the_floor() {
    let name = lab_name();
    let (_dir, config) = temp_file(
        "natgw.toml",
        r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "natgw-ip"
address = "203.0.113.20"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[nat_gateway]]
name = "natgw"
frontend = "natgw-ip"
backend_pools = ["vms"]
"#,
    );
    let mut lab = Lab::up_with(&name, &config);
    // Azure NAT Gateway's 65 s hold after a FIN (not azure-lb's 240 s) is 1083 ms at 1/60, and
    // the engine runs it at the 3 s floor: the log says so once, in the gateway's start line.
    let expected = "nat_gateway natgw: SNAT hold after FIN 65 s: 1083 ms scaled, runs 3 s";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !lab.stderr().contains(expected) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = lab.stderr();
    let start = stderr
        .lines()
        .find(|l| l.contains("race TCP's own and run at the floor"))
        .unwrap_or_else(|| panic!("no line of floored timers in the log:\n{stderr}"));
    assert!(start.contains(expected), "{start}");
    assert!(
        start.contains(
            "nat_gateway natgw: SNAT hold after an idle expiry 16 s: 266 ms scaled, runs 3 s"
        ),
        "{start}"
    );
    // No outbound rule: no pool runs azure-lb's own 15 s hold after a RST.
    assert!(!start.contains("SNAT hold after RST 15 s"), "{start}");
    assert_eq!(lab.terminate().code(), Some(0), "{}", lab.stderr());
}
