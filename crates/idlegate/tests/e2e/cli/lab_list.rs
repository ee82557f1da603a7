//! `lab list` and `lab down NAME`, `lab demo --json`'s verdicts and timeline, and a profile's
//! keepalive in a lab host (`relay --profile`, `run --profile`), scaled by the lab's time
//! scale.

use super::*;

#[test]
fn lab_list_shows_a_running_lab_and_lab_down_name_takes_it_down() {
    let mut lab = Lab::up(&lab_name());
    let listed = idlegate(&["lab", "list", "--json"], COMMAND_TIMEOUT);
    assert_eq!(listed.status.code(), Some(0), "{}", listed.stderr);
    let labs: serde_json::Value = serde_json::from_str(&listed.stdout).expect("one JSON array");
    let this = labs
        .as_array()
        .expect("an array")
        .iter()
        .find(|l| l["name"] == lab.name.as_str())
        .unwrap_or_else(|| panic!("{} not listed: {}", lab.name, listed.stdout));
    assert_eq!(this["state"], "ready");
    assert_eq!(this["pid"], lab.pid());
    assert_eq!(this["time_scale"], 60, "examples/azure-lb.toml's");
    let hosts: Vec<&str> = this["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["vm1", "vm2", "internet"]);
    let config = this["config"].as_str().unwrap();
    assert!(config.ends_with("examples/azure-lb.toml"), "{config}");
    assert_eq!(this["api"], serde_json::Value::Null, "no --api");

    let down = idlegate(&["lab", "down", &lab.name], COMMAND_TIMEOUT);
    assert_eq!(down.status.code(), Some(0), "{}", down.stderr);
    // `lab down` returns once the lab is gone: its `lab up` has exited, cleanly.
    let status = wait_bounded(&mut lab.child, STOP_TIMEOUT).expect("lab up exited");
    assert_eq!(status.code(), Some(0), "{}", lab.stderr());
    assert_eq!(namespaces_of(&lab.name), Vec::<String>::new());
    let listed = idlegate(&["lab", "list", "--json"], COMMAND_TIMEOUT);
    let labs: serde_json::Value = serde_json::from_str(&listed.stdout).expect("one JSON array");
    assert!(
        !labs
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == lab.name.as_str()),
        "{}",
        listed.stdout
    );
}

#[test]
fn lab_list_json_says_where_a_labs_api_is_served() {
    let addr = common::free_port();
    let name = lab_name();
    // Dropped at the end (or on a failed assertion): the lab is taken down.
    let lab = Lab::up_with_args(&name, &example_config(), &["--api", &addr.to_string()]);
    // `lab up` says it on stdout too, right after `ready`.
    let said = lab.stdout.recv_timeout(COMMAND_TIMEOUT);
    assert_eq!(
        said.as_deref(),
        Ok(format!("api and live view on http://{addr}/").as_str()),
        "{}",
        lab.stderr()
    );
    let listed = idlegate(&["lab", "list", "--json"], COMMAND_TIMEOUT);
    assert_eq!(listed.status.code(), Some(0), "{}", listed.stderr);
    let labs: serde_json::Value = serde_json::from_str(&listed.stdout).expect("one JSON array");
    let this = labs
        .as_array()
        .expect("an array")
        .iter()
        .find(|l| l["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not listed: {}", listed.stdout));
    assert_eq!(this["api"], format!("http://{addr}/"));
    // And the table, in its API column.
    let table = idlegate(&["lab", "list"], COMMAND_TIMEOUT);
    assert_eq!(table.status.code(), Some(0), "{}", table.stderr);
    let header: Vec<&str> = table
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "STATE", "PID", "TIME", "SCALE", "HOSTS", "API", "CONFIG"]
    );
    let row: Vec<&str> = table
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .unwrap_or_else(|| panic!("{name} not in the table: {}", table.stdout))
        .split_whitespace()
        .collect();
    assert_eq!(row[5], format!("http://{addr}/"), "{}", table.stdout);
}

#[test]
fn lab_up_api_on_every_address_prints_the_url_from_this_host_and_warns_the_token_is_in_clear() {
    let name = lab_name();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let token = dir.path().join("token");
    std::fs::write(&token, "a-token-of-more-than-16-bytes\n").expect("writing the token");
    let token = token.to_str().unwrap();
    let lab = Lab::up_with_args(
        &name,
        &example_config(),
        &["--api", "0.0.0.0:0", "--api-token-file", token],
    );
    let listed = idlegate(&["lab", "list", "--json"], COMMAND_TIMEOUT);
    let labs: serde_json::Value = serde_json::from_str(&listed.stdout).expect("one JSON array");
    let api = labs
        .as_array()
        .expect("an array")
        .iter()
        .find(|l| l["name"] == name.as_str())
        .and_then(|l| l["api"].as_str())
        .unwrap_or_else(|| panic!("{name} not listed with its api: {}", listed.stdout))
        .to_string();
    let port = api
        .strip_prefix("http://0.0.0.0:")
        .and_then(|p| p.strip_suffix('/'))
        .unwrap_or_else(|| panic!("{api}"));
    let said = lab.stdout.recv_timeout(COMMAND_TIMEOUT);
    assert_eq!(
        said.as_deref(),
        Ok(format!(
            "api and live view on every address (0.0.0.0), port {port}: \
             from this host http://127.0.0.1:{port}/"
        )
        .as_str()),
        "{}",
        lab.stderr()
    );
    // The reminder, once, on stderr (logged before `ready`; read by a thread of its own).
    let warning = "--api 0.0.0.0:0: not on loopback, and the API is plain HTTP: the token and \
                   everything the API serves travel in clear";
    let until = std::time::Instant::now() + COMMAND_TIMEOUT;
    while !lab.stderr().contains(warning) && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lab.stderr().matches(warning).count(), 1, "{}", lab.stderr());
}

#[test]
fn lab_demo_json_gives_each_connections_verdict_and_the_timeline_and_nothing_else() {
    let name = lab_name();
    let demo = idlegate(
        &["lab", "demo", "--json", "--name", &name],
        Duration::from_secs(60),
    );
    assert_eq!(demo.status.code(), Some(0), "{}", demo.stderr);
    // The whole of stdout is one JSON document.
    let report: serde_json::Value = serde_json::from_str(&demo.stdout).expect("one JSON object");
    let verdicts: Vec<(&str, &str)> = report["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("no-keepalive", "lost-silently"),
            ("keepalive", "survived"),
            ("tcp-reset", "reset"),
        ]
    );
    assert_eq!(report["time_scale"], 60);
    // Azure LB's 4 min scaled 1/60: 4 s, keepalive at half of it.
    assert_eq!(report["keepalive_s"], 2);
    let timeline = report["timeline"].as_array().unwrap();
    assert!(!timeline.is_empty());
    let mut last = 0;
    for event in timeline {
        let at = event["at_ms"].as_u64().unwrap();
        assert!(at >= last, "in time order: {event}");
        assert_eq!(event["lab_at_ms"].as_u64().unwrap(), at * 60);
        last = at;
    }
    assert!(timeline.iter().any(|e| e["connection"] == "no-keepalive"
        && e["side"] == "client"
        && e["what"] == "sent \"c\""));
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
}

/// Client: connects to argv[1]:argv[2] (retrying for 10 s while a relay starts), sends "a",
/// stays idle 6 s (past the lab's 4 s idle timeout: the scenario), sends "b", prints `sent b`.
const IDLE_CLIENT: &str = r#"
import signal, socket, sys, time
signal.alarm(30)
deadline = time.monotonic() + 10
while True:
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
c.sendall(b"a")
print("sent a")
time.sleep(6)
c.sendall(b"b")
print("sent b")
time.sleep(1)
"#;

#[test]
fn relay_with_a_profile_in_a_lab_host_keeps_an_idle_flow_alive_in_the_labs_time_scale() {
    let lab = Lab::up(&lab_name());
    let mut programs = serving_app(&lab);
    // No --keepalive: the profile's, which the lab's time scale (60) brings to 2 s, 1 s, 8.
    let relay_command = [
        IDLEGATE,
        "relay",
        "--profile",
        "azure-lb",
        "--listen",
        "127.0.0.1:15000",
        "--connect",
        "203.0.113.10:7000",
    ];
    let mut relay = lab_exec_in_background(&lab.name, "internet", &relay_command)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the relay");
    let (relay_log, _) = collect(relay.stderr.take().unwrap());
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            signal(-(self.0.id() as i32), libc::SIGKILL);
            let _ = self.0.wait();
        }
    }
    let _relay = Kill(relay);
    programs.python("client", "internet", IDLE_CLIENT, &["127.0.0.1", "15000"]);
    idle_flow_kept(&mut programs);
    let log = relay_log.lock().unwrap().clone();
    assert!(
        log.contains("time scale 1/60") && log.contains("keepalive 2s,1s,8"),
        "the relay must say how it scaled the profile: {log}"
    );
}

/// Programs in vm1 and vm2 of `lab` serving rule `app` (port 7000, which the box drops
/// silently once idle 4 s); the LB's hash picks either member, so both serve.
fn serving_app(lab: &Lab) -> Programs {
    let mut programs = Programs::new(lab);
    programs.python("vm1", "vm1", CHUNK_SERVER, &["7000"]);
    programs.python("vm2", "vm2", CHUNK_SERVER, &["7000"]);
    programs.wait_each(&["vm1", "vm2"], "listening", LISTEN_TIMEOUT);
    programs
}

/// Waits for [`IDLE_CLIENT`] (tag `client`) to end, and for "b", which it sent after 6 s
/// idle, past the box's 4 s timeout, to reach a server: only a keepalive keeps the flow.
fn idle_flow_kept(programs: &mut Programs) {
    let (status, client) = programs.finish("client", Duration::from_secs(20));
    let report = programs.report();
    assert!(status.success(), "client failed: {status}\n{report}");
    assert_eq!(client, ["sent a", "sent b"], "\n{report}");
    programs.wait_line(&["vm1", "vm2"], |l| l == "got b", Duration::from_secs(5));
}

#[test]
fn run_with_a_profile_in_a_lab_host_keeps_an_idle_flow_alive_in_the_labs_time_scale() {
    let lab = Lab::up(&lab_name());
    let mut programs = serving_app(&lab);
    // No --keepalive: the profile's, which the lab's time scale (60) brings to 2 s, 1 s, 8,
    // given by `run` to the client's socket; the client talks to the LB itself.
    programs.start(
        "client",
        "internet",
        &[
            IDLEGATE,
            "run",
            "--profile",
            "azure-lb",
            "--",
            "python3",
            "-u",
            "-c",
            IDLE_CLIENT,
            "203.0.113.10",
            "7000",
        ],
    );
    idle_flow_kept(&mut programs);
    let log = programs.stderr_of("client");
    assert!(
        log.contains("time scale 1/60") && log.contains("keepalive 2s,1s,8"),
        "run must say how it scaled the profile: {log}"
    );
}

/// A lab name with a '-' is refused; `--help` did not say the rule (issue 21).
#[test]
fn lab_demo_and_lab_up_help_state_the_lab_name_rule() {
    for command in [["lab", "demo", "--help"], ["lab", "up", "--help"]] {
        let help = idlegate(&command, COMMAND_TIMEOUT);
        assert_eq!(help.status.code(), Some(0), "{}", help.stderr);
        let flat = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains("1–32 letters, digits or '_' (no '-')"),
            "{command:?}: {}",
            help.stdout
        );
    }
}
