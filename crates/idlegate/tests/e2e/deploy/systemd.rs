//! `deploy/systemd`: each unit passes `systemd-analyze verify` without a word of warning, keeps
//! a low exposure by `systemd-analyze security`, and starts idlegate with flags idlegate has;
//! the gateway tells systemd it is ready (Type=notify) once its TUN devices are up. All offline: no running systemd is needed, and no unit is started.

use super::*;

/// The units, and the most exposure `systemd-analyze security` may give each (its scale: 0
/// is the safest, 10 the least safe; `--threshold` counts tenths).
const UNITS: [(&str, u32); 4] = [
    ("idlegate-relay.service", 20),
    // Other users' /proc/PID/fd and pidfd_getfd: CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, and
    // the host's processes and network namespace in view.
    ("idlegate-audit.service", 30),
    ("idlegate-tunnel-exit.service", 20),
    // TUN devices need CAP_NET_ADMIN and /dev/net/tun, and netlink.
    ("idlegate-gateway.service", 30),
];
/// Where the units start idlegate from.
const INSTALLED: &str = "/usr/local/bin/idlegate";

/// The units as shipped, but starting the binary these tests built (verify checks that
/// ExecStart's program exists), in a directory of their own, with idlegate's manual pages
/// (verify checks that each `Documentation=man:` page exists) under `man/`.
fn units_here() -> tempfile::TempDir {
    require_tool("systemd-analyze", "it checks the systemd units offline");
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (unit, _) in UNITS {
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit))
            .unwrap_or_else(|e| panic!("deploy/systemd/{unit}: {e}"));
        assert!(
            text.contains(INSTALLED),
            "{unit} does not start {INSTALLED}"
        );
        std::fs::write(dir.path().join(unit), text.replace(INSTALLED, IDLEGATE)).unwrap();
    }
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    let pages = run(
        Command::new(IDLEGATE).args(["man", "--out"]).arg(&man1),
        COMMAND_TIMEOUT,
    );
    assert!(pages.status.success(), "idlegate man: {}", said(&pages));
    dir
}

#[test]
fn systemd_units_pass_systemd_analyze_verify_without_a_warning() {
    let dir = units_here();
    for (unit, _) in UNITS {
        let output = run(
            Command::new("systemd-analyze")
                .args(["verify", unit])
                .env("MANPATH", dir.path().join("man"))
                .current_dir(dir.path()),
            COMMAND_TIMEOUT,
        );
        assert!(
            output.status.success() && output.stderr.is_empty() && output.stdout.is_empty(),
            "systemd-analyze verify {unit}: {}",
            said(&output)
        );
    }
}

#[test]
fn systemd_units_keep_their_exposure_low_by_systemd_analyze_security() {
    let dir = units_here();
    for (unit, most) in UNITS {
        let output = run(
            Command::new("systemd-analyze")
                .args(["security", "--offline=yes", "--no-pager"])
                .arg(format!("--threshold={most}"))
                .arg(unit)
                .current_dir(dir.path()),
            COMMAND_TIMEOUT,
        );
        assert!(
            output.status.success(),
            "{unit}: exposure above {}.{}: {}",
            most / 10,
            most % 10,
            said(&output)
        );
    }
}

/// ExecStart's arguments after the program, with the unit's environment filled in with the
/// values its comments show, and `$IDLEGATE_*_ARGS` (optional extra flags)
/// left out.
fn exec_start_args(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit)).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{unit} has no ExecStart="));
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some(INSTALLED), "{unit}: {line}");
    words
        .filter(|w| !(w.starts_with("$IDLEGATE_") && w.ends_with("_ARGS")))
        .map(|w| {
            w.replace("${IDLEGATE_LISTEN}", "0.0.0.0:7443")
                .replace("${IDLEGATE_CONNECT}", "127.0.0.1:5432")
                .replace("${IDLEGATE_METRICS}", "0.0.0.0:9477")
                .replace("${IDLEGATE_INTERVAL}", "15s")
        })
        .collect()
}

#[test]
fn systemd_units_exec_start_flags_exist_in_idlegate_help() {
    for (unit, _) in UNITS {
        let args = exec_start_args(unit);
        assert!(
            !args.iter().any(|a| a.contains('$') || a.contains('%')),
            "{unit}: a variable or specifier this test does not fill in: {args:?}"
        );
        // clap reads the flags in order and answers --help at the end, once every flag before
        // it is one the command has, with a value it parses. No more: --help stops clap before
        // its conflict and required-flag checks and the command's own validation.
        let output = run(
            Command::new(IDLEGATE).args(&args).arg("--help"),
            COMMAND_TIMEOUT,
        );
        assert!(
            output.status.success(),
            "{unit}: idlegate {args:?}: {}",
            said(&output)
        );
    }
}

/// The capabilities `idlegate-audit.service` hands its made-up user (AmbientCapabilities=).
fn audit_unit_capabilities() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo().join("deploy/systemd/idlegate-audit.service")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("idlegate-audit.service has AmbientCapabilities=");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// Runs `audit --json` in network namespace `ns` (entered as root by `ip netns exec`) as a
/// user of its own (not root) holding `capabilities` (as the unit's DynamicUser= would), and
/// returns what it says of the connections to or from `port`.
fn audit_as_unprivileged_user(
    ns: &str,
    capabilities: &[String],
    port: u16,
) -> Vec<serde_json::Value> {
    require_tool(
        "setpriv",
        "it runs the audit as another user with given capabilities",
    );
    let caps: Vec<String> = capabilities.iter().map(|c| format!("+{c}")).collect();
    let caps = caps.join(",");
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, "setpriv"]);
    command.args(["--reuid=61477", "--regid=61477", "--clear-groups"]);
    if !caps.is_empty() {
        command.arg(format!("--inh-caps={caps}"));
        command.arg(format!("--ambient-caps={caps}"));
    }
    // The checkout may be under a directory other users cannot enter (/root is 0700): the
    // binary runs from a copy in a directory everyone can search.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("idlegate");
    std::fs::copy(IDLEGATE, &binary).expect("copying the binary");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = run(
        command
            .arg(&binary)
            .args(["audit", "--idle-timeout", "4m", "--json"]),
        COMMAND_TIMEOUT,
    );
    assert!(output.status.success(), "audit: {}", said(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    report["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            let ends = format!("{} {}", c["local"], c["remote"]);
            ends.contains(&format!(":{port}\""))
        })
        .cloned()
        .collect()
}

#[test]
fn systemd_audit_unit_capabilities_are_enough_to_name_another_users_connection_and_read_its_keepalive(
) {
    // A connection of this (root) process, without keepalive: another user's, seen from the
    // unit's made-up user. Between two addresses that are not loopback (the audit leaves
    // loopback connections out), in a namespace of this test's own.
    crate::common::require_root();
    let ns = idlegate::sys::netns::Namespace::create(&crate::common::unique("sd"))
        .expect("a network namespace");
    let [server, _] = crate::common::non_loopback_pair(ns.name());
    let listener =
        idlegate::sys::netns::spawn_in(ns.name(), move || std::net::TcpListener::bind((server, 0)))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
    let port = listener.local_addr().unwrap().port();
    let _client = idlegate::sys::netns::spawn_in(ns.name(), move || {
        std::net::TcpStream::connect((server, port))
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    let _server = listener.accept().unwrap();

    let seen = audit_as_unprivileged_user(ns.name(), &audit_unit_capabilities(), port);
    assert_eq!(seen.len(), 2, "both ends of the connection: {seen:#?}");
    for connection in &seen {
        assert!(
            connection["command"].is_string() && connection["keepalive"] == false,
            "with the unit's capabilities the owner is named and keepalive read: {connection:#}"
        );
        assert_eq!(connection["verdict"], "at-risk", "{connection:#}");
    }
    // And they are needed: without them the same user names no owner.
    let seen = audit_as_unprivileged_user(ns.name(), &[], port);
    assert!(
        seen.iter().all(|c| c["command"].is_null()),
        "without capabilities another user's process stays unnamed: {seen:#?}"
    );
}

/// A process this test started, ended (SIGTERM, then SIGKILL) when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let pid = libc::pid_t::try_from(self.0.id()).unwrap_or(libc::pid_t::MAX);
        // SAFETY: plain syscall; `pid` is our child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
        while std::time::Instant::now() < deadline {
            match self.0.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                _ => return,
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ip -o link show DEVICE` in `ns`: the device's line, or what `ip` said.
fn link_line(ns: &str, device: &str) -> String {
    let output = run(
        Command::new("ip").args(["-n", ns, "-o", "link", "show", device]),
        COMMAND_TIMEOUT,
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn systemd_gateway_unit_is_type_notify_and_the_gateway_sends_ready_once_its_tun_devices_are_up() {
    crate::common::require_root();
    require_tool("ip", "the test reads the TUN devices' state with it");
    let text =
        std::fs::read_to_string(repo().join("deploy/systemd/idlegate-gateway.service")).unwrap();
    for line in ["Type=notify", "NotifyAccess=main"] {
        assert!(
            text.lines().any(|l| l == line),
            "idlegate-gateway.service has {line}"
        );
    }

    // The service manager's side: a datagram socket named in NOTIFY_SOCKET.
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let manager = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    manager.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
    // In a namespace of its own, where its devices are alone.
    let ns = idlegate::sys::netns::Namespace::create(&crate::common::unique("ign")).unwrap();
    let (inside, outside) = ("igw-in-n", "igw-out-n");
    let config = repo().join("examples/azure-lb.toml");
    let _gateway = Running(
        Command::new("ip")
            .args(["netns", "exec", ns.name(), IDLEGATE, "gateway", "--config"])
            .arg(&config)
            .args(["--inside", inside, "--outside", outside, "--control"])
            .arg(dir.path().join("control.sock"))
            .env("NOTIFY_SOCKET", &notify)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting idlegate gateway"),
    );

    let mut buffer = [0u8; 256];
    let n = manager.recv(&mut buffer).unwrap_or_else(|e| {
        panic!("no notification within {COMMAND_TIMEOUT:?} on NOTIFY_SOCKET: {e}")
    });
    assert_eq!(String::from_utf8_lossy(&buffer[..n]), "READY=1");
    // Told only once both devices exist and are up: what ExecStartPost= routes need.
    for device in [inside, outside] {
        let line = link_line(ns.name(), device);
        let flags = line.split(['<', '>']).nth(1).unwrap_or_default();
        assert!(
            flags.split(',').any(|f| f == "UP"),
            "{device} up when READY=1 arrives: {line}"
        );
    }
}
