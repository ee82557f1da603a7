//! `idlegate import` end to end: each Azure example under examples/import/azure/ imported by
//! the real binary with `--time-scale`, a lab brought up on the config it wrote, and a
//! connection through the imported rule left idle past the rule's scaled timeout (it meets
//! the expiry the input asked for) and another idle for less (it survives). The command's own
//! refusals: an out-of-range value (exit 2, the input path and the range, no file written), an
//! existing output, and stdin.

use crate::common;

use common::{require_root, unique};
use idlegate::lab::{Lab, INTERNET, INTERNET_ADDRESS};
use idlegate_core::precedence::{self, Applied};
use idlegate_core::{Config, Expiry};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/import/azure")
        .join(name)
}

fn idlegate(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running idlegate");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("writing stdin");
    }
    drop(input);
    child.wait_with_output().expect("waiting for idlegate")
}

/// `idlegate import EXAMPLE --time-scale SCALE -o DIR/imported.toml`, and the config read back.
fn import(name: &str, scale: u32) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("imported.toml");
    let input = example(name);
    let args = [
        "import",
        input.to_str().expect("path"),
        "--time-scale",
        &scale.to_string(),
        "-o",
        out.to_str().expect("path"),
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = idlegate(&args, None);
    common::assert_success(&output, &args);
    assert!(
        output.stdout.is_empty(),
        "the config went to {out:?}, not stdout"
    );
    let text = std::fs::read_to_string(&out).expect("the imported config");
    let config = Config::from_toml(&text, "imported.toml").expect("the imported config loads");
    (dir, config)
}

/// What became of a connection's late message.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Echoed back: the flow was still there.
    Survived,
    /// The client's socket was reset (a RST at expiry, or in answer to the late message).
    Reset,
    /// Neither echoed nor reset within 3 s: dropped silently.
    Lost,
}

fn fate_of(expiry: Expiry) -> Fate {
    match expiry {
        Expiry::Reset | Expiry::ResetOnNext => Fate::Reset,
        _ => Fate::Lost,
    }
}

/// An echo server on `port` in namespace `ns`, one connection at a time, until `stop`.
fn echo_server(
    ns: &str,
    port: u16,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    idlegate::sys::netns::spawn_in(ns, move || {
        let listener =
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        while !stop.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
            let mut buf = [0u8; 100];
            while !stop.load(Ordering::SeqCst) {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let _ = c.write_all(&buf[..n]);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        }
    })
}

/// From namespace `ns`: connect to `to`, have "early" echoed, stay idle for `idle`, send
/// "late" and see what becomes of it.
fn conversation(ns: &str, to: SocketAddr, idle: Duration) -> anyhow::Result<Fate> {
    let handle = idlegate::sys::netns::spawn_in(ns, move || -> anyhow::Result<Fate> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut c = loop {
            // The servers may need a moment to listen.
            match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => anyhow::bail!("connecting to {to}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        c.write_all(b"early")?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf)?;
        anyhow::ensure!(
            &buf == b"early",
            "the echo of \"early\" came back as {buf:?}"
        );
        std::thread::sleep(idle);
        let reset = |e: &std::io::Error| {
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
        };
        if let Err(e) = c.write_all(b"late") {
            return if reset(&e) {
                Ok(Fate::Reset)
            } else {
                Err(e.into())
            };
        }
        let mut buf = [0u8; 4];
        match c.read(&mut buf) {
            Ok(n) if n > 0 => Ok(Fate::Survived),
            Ok(_) => anyhow::bail!("the server closed the connection"),
            Err(e) if reset(&e) => Ok(Fate::Reset),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Ok(Fate::Lost)
            }
            Err(e) => Err(e.into()),
        }
    })?;
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

/// Brings a lab up on `config`, runs echo servers on `port` in `servers`, and from `client`
/// has one conversation idle for a third of `scaled` and one idle 2.5 s past it.
fn short_and_long(
    config: &Config,
    client: &str,
    servers: &[&str],
    port: u16,
    to: SocketAddr,
    scaled: Duration,
) -> (Fate, Fate) {
    let (fates, _) = Lab::with_gateway(&unique("im"), config, |lab| {
        let stop = Arc::new(AtomicBool::new(false));
        let mut running = Vec::new();
        for s in servers {
            running.push(echo_server(&lab.namespace_of(s)?, port, stop.clone())?);
        }
        let client_ns = lab.namespace_of(client)?;
        let short = conversation(&client_ns, to, scaled / 3);
        let long = conversation(&client_ns, to, scaled + Duration::from_millis(2500));
        stop.store(true, Ordering::SeqCst);
        for r in running {
            let _ = r.join();
        }
        Ok((short?, long?))
    })
    .expect("lab run on the imported config");
    fates
}

/// The rule's real timeout (from the input, unscaled) and that it runs ≥ 2 s in the lab.
fn check_timeout(config: &Config, applied: &Applied, real: Duration) -> Duration {
    assert_eq!(
        applied.timeout, real,
        "the lab runs the input's timeout: {applied:?}"
    );
    let scaled = config.scaled(applied.timeout);
    assert!(
        scaled >= Duration::from_secs(2),
        "scaled to {scaled:?}: too short for a loaded machine"
    );
    scaled
}

const FRONTEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

#[test]
fn the_az_lb_show_example_runs_its_30_minute_rule_with_tcp_reset() {
    require_root();
    let (_dir, config) = import("lb-show.json", 600);
    let rule = precedence::lb_rule(&config, 0);
    let scaled = check_timeout(&config, &rule, Duration::from_secs(30 * 60));
    assert_eq!(rule.expiry, Expiry::Reset, "enableTcpReset = true");
    let to = SocketAddrV4::new(FRONTEND, 443).into();
    let fates = short_and_long(&config, INTERNET, &["web-vm1", "web-vm2"], 8080, to, scaled);
    assert_eq!(fates, (Fate::Survived, Fate::Reset));
}

#[test]
fn the_arm_template_example_runs_its_public_ips_10_minutes_silently() {
    require_root();
    let (_dir, config) = import("arm-template.json", 200);
    // The public IP's own 10 min beat the rule's 15 min for inbound flows.
    let rule = precedence::lb_rule(&config, 0);
    let scaled = check_timeout(&config, &rule, Duration::from_secs(10 * 60));
    assert_eq!(rule.expiry, Expiry::Silent, "enableTcpReset = false");
    let to = SocketAddrV4::new(FRONTEND, 7000).into();
    let fates = short_and_long(&config, INTERNET, &["app-vm1"], 7000, to, scaled);
    assert_eq!(fates, (Fate::Survived, Fate::Lost));
}

#[test]
fn the_public_ip_example_runs_its_20_minutes_through_a_stand_in_rule() {
    require_root();
    let (_dir, config) = import("public-ip-show.json", 400);
    let rule = precedence::lb_rule(&config, 0);
    let scaled = check_timeout(&config, &rule, Duration::from_secs(20 * 60));
    let to = SocketAddrV4::new(FRONTEND, 7000).into();
    let fates = short_and_long(&config, INTERNET, &["vm1"], 7000, to, scaled);
    assert_eq!(fates, (Fate::Survived, fate_of(rule.expiry)));
}

#[test]
fn the_nat_gateway_example_runs_its_10_minutes_on_outbound_connections() {
    require_root();
    let (_dir, config) = import("natgw-show.json", 200);
    assert_eq!(config.profile.name, "azure-natgw");
    let rule = precedence::outbound_rule(&config, 0);
    let scaled = check_timeout(&config, &rule, Duration::from_secs(10 * 60));
    let to = SocketAddrV4::new(INTERNET_ADDRESS, 7100).into();
    let fates = short_and_long(&config, "vm1", &[INTERNET], 7100, to, scaled);
    assert_eq!(fates, (Fate::Survived, fate_of(rule.expiry)));
}

/// lb-show.json with one value changed, written to a temporary directory.
fn changed_lb_show(dir: &std::path::Path, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(example("lb-show.json")).expect("example");
    assert!(text.contains(from), "lb-show.json has {from:?}");
    let path = dir.join("lb.json");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("writing the input");
    path
}

#[test]
fn an_lb_rule_at_120_minutes_is_refused_at_its_input_path_with_the_range_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let input = changed_lb_show(
        dir.path(),
        "\"idleTimeoutInMinutes\": 30",
        "\"idleTimeoutInMinutes\": 120",
    );
    let out = dir.path().join("lb.toml");
    let output = idlegate(
        &[
            "import",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains(": loadBalancingRules[0].idleTimeoutInMinutes = 120: idle_timeout = 120m is outside Azure LB's range: 4 min to 100 min"),
        "{stderr}"
    );
    assert!(first.starts_with("idlegate: import "), "{stderr}");
    assert!(!out.exists(), "nothing is written for a refused input");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
}

#[test]
fn an_existing_output_is_kept_without_force_and_replaced_with_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("lb.toml");
    std::fs::write(&out, "keep me\n").unwrap();
    let input = example("lb-show.json");
    let args = [
        "import",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let output = idlegate(&args, None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("exists"), "{stderr}");
    assert!(
        stderr.contains("hint: give --force to overwrite it"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me\n");
    let output = idlegate(&[&args[..], &["--force"]].concat(), None);
    common::assert_success(&output, &args);
    let text = std::fs::read_to_string(&out).unwrap();
    Config::from_toml(&text, "lb.toml").expect("the replaced file is the imported config");
}

#[test]
fn an_output_in_a_missing_directory_is_refused_naming_out_with_a_hint() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("missing").join("lb.toml");
    let input = example("lb-show.json");
    let args = [
        "import",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let output = idlegate(&args, None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "idlegate: import: writing {}: No such file or directory (os error 2)",
                out.display()
            ),
            format!(
                "hint: the directory {} must exist: create it, or give another -o",
                dir.path().join("missing").display()
            ),
        ],
        "{stderr}"
    );
}

#[test]
fn a_failed_write_to_stdout_says_what_was_being_written() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full is needed: a device whose writes fail with ENOSPC");
    let input = example("lb-show.json");
    let output = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args(["import", input.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .expect("running idlegate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().next(),
        Some(
            "idlegate: import: writing the config to stdout: No space left on device (os error 28)"
        ),
        "{stderr}"
    );
}

#[test]
fn stdin_is_read_with_a_dash_and_the_ignored_items_go_to_stderr() {
    let input = std::fs::read(example("lb-show.json")).unwrap();
    let output = idlegate(&["import", "-"], Some(&input));
    common::assert_success(&output, &["import", "-"]);
    let text = String::from_utf8(output.stdout).unwrap();
    let config = Config::from_toml(&text, "stdout").expect("stdout is the config");
    assert_eq!(config.lb_rules[0].name, "https");
    assert!(
        text.contains(
            "idle_timeout = \"30m\"  # loadBalancingRules[0].idleTimeoutInMinutes = 30\n"
        ),
        "{text}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ignored: probes[0]: health probes"),
        "{stderr}"
    );
    assert!(
        stderr.contains("10.1.0.4 (member web-vm1) → 192.0.2.11"),
        "{stderr}"
    );
}

#[test]
fn an_lb_show_with_a_udp_rule_imports_and_lists_its_idle_timeout_as_ignored() {
    // Azure gives every rule idleTimeoutInMinutes (4 unless set), UDP rules too.
    let mut lb: serde_json::Value =
        serde_json::from_slice(&std::fs::read(example("lb-show.json")).unwrap()).unwrap();
    let mut dns = lb["loadBalancingRules"][0].clone();
    for (key, value) in [
        ("name", serde_json::json!("dns")),
        ("protocol", serde_json::json!("Udp")),
        ("frontendPort", serde_json::json!(53)),
        ("backendPort", serde_json::json!(53)),
        ("idleTimeoutInMinutes", serde_json::json!(4)),
        ("enableTcpReset", serde_json::json!(false)),
    ] {
        dns[key] = value;
    }
    lb["loadBalancingRules"].as_array_mut().unwrap().push(dns);
    let input = lb.to_string();
    let args = ["import", "-", "--time-scale", "60"];
    let output = idlegate(&args, Some(input.as_bytes()));
    common::assert_success(&output, &args);
    let text = String::from_utf8(output.stdout).unwrap();
    let config = Config::from_toml(&text, "stdout").expect("stdout is the config");
    let names: Vec<&str> = config.lb_rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["https", "dns"], "{text}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ignored: loadBalancingRules[1].idleTimeoutInMinutes: rule dns is UDP: a UDP rule's flows live the profile's UDP timeout; Azure's idle timeout applies to TCP"),
        "{stderr}"
    );
}

#[test]
fn the_manual_lists_the_import_command() {
    let output = idlegate(&["man"], None);
    common::assert_success(&output, &["man"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("import"));
}
