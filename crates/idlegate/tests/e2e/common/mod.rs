//! Helpers every end-to-end test file shares (each includes this module with `mod common;`).

pub mod browser;
pub mod kernel_router;
pub mod tunnel;

use std::sync::atomic::{AtomicU32, Ordering};

/// Runs iproute2's `ip ARGS...` (the tests' independent tool: idlegate itself never runs it);
/// the error carries the command line, exit status and stderr, or says `ip` is missing.
#[allow(dead_code)] // not every test file wires links by hand
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_stdout(args).map(drop)
}

/// [`ip`], returning what it printed.
#[allow(dead_code)] // not every test file reads what `ip` shows
pub fn ip_stdout(args: &[&str]) -> anyhow::Result<String> {
    let cmdline = format!("ip {}", args.join(" "));
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "could not run `{cmdline}`: {e} (the tests need iproute2: scripts/setup)"
            )
        })?;
    anyhow::ensure!(
        output.status.success(),
        "`{cmdline}` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Fails the test at once, loudly, unless it runs as root: the end-to-end tests build network
/// namespaces and TUN devices, and must never pass by skipping.
#[allow(dead_code)] // not every test file needs root
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these end-to-end tests build network namespaces and TUN devices: run them as root"
    );
}

/// A name unique to this test process and call: `prefix` + pid + `x` + counter. With a prefix
/// of up to 3 characters it is also a valid interface name (≤ 15 bytes), and it has no '-', so
/// it is a valid lab name.
#[allow(dead_code)] // not every test file names things
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:05}x{n}", std::process::id() % 100_000)
}

/// Sends `bytes` bytes over one TCP connection from namespace `client_ns` to a server that
/// this function runs at `address` in `server_ns`, and returns how many the server read
/// before the client's FIN (15 s at most without progress on either side).
/// A loopback address nobody listens on: a port bound once and let go, for a program the test
/// starts to bind next.
#[allow(dead_code)] // not every test file starts a listener of its own
pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free loopback port")
        .local_addr()
        .expect("its address")
}

#[allow(dead_code)] // not every test file moves bulk data
pub fn transfer(
    client_ns: &str,
    server_ns: &str,
    address: std::net::SocketAddr,
    bytes: usize,
) -> anyhow::Result<usize> {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::Duration;
    let stall = Duration::from_secs(15);
    let listener = idlegate::sys::netns::spawn_in(server_ns, move || TcpListener::bind(address))?
        .join()
        .expect("bind thread")?;
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(stall))?;
        let mut received = Vec::new();
        conn.read_to_end(&mut received)?;
        Ok(received.len())
    });
    let client = idlegate::sys::netns::spawn_in(client_ns, move || -> std::io::Result<()> {
        let mut conn = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        conn.set_write_timeout(Some(stall))?;
        conn.write_all(&vec![0x5a; bytes])?;
        conn.shutdown(Shutdown::Write)
    })?;
    client.join().expect("client thread")?;
    Ok(server.join().expect("server thread")?)
}

/// Which IP version a [`narrow_link`] carries.
#[allow(dead_code)] // not every test file builds one
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ip {
    V4,
    V6,
}

/// A namespace `far_ns` behind `internet_ns` over a link whose near end has MTU 1280 while the
/// far end (and so the MSS it announces) is at 1500: only path MTU discovery gets full-sized
/// segments across. Addresses 198.51.100.1 and .5 (IPv4) or fd00:198::1 and ::5 (IPv6), the
/// far end's default route through the near one, forwarding on in `internet_ns`.
#[allow(dead_code)]
pub fn narrow_link(internet_ns: &str, far_ns: &str, ip: Ip) {
    let run = |args: &[&str]| self::ip(args).unwrap_or_else(|e| panic!("{e:#}"));
    let (near, far, gateway, family, forwarding) = match ip {
        Ip::V4 => (
            "198.51.100.1/24",
            "198.51.100.5/24",
            "198.51.100.1",
            "-4",
            "net.ipv4.ip_forward=1",
        ),
        Ip::V6 => (
            "fd00:198::1/64",
            "fd00:198::5/64",
            "fd00:198::1",
            "-6",
            "net.ipv6.conf.all.forwarding=1",
        ),
    };
    run(&[
        "-n",
        internet_ns,
        "link",
        "add",
        "narrow0",
        "mtu",
        "1280",
        "type",
        "veth",
        "peer",
        "name",
        "far0",
        "netns",
        far_ns,
    ]);
    // IPv6 addresses usable at once, without duplicate address detection.
    let nodad: &[&str] = if ip == Ip::V6 { &["nodad"] } else { &[] };
    run(&[
        &["-n", internet_ns, "addr", "add", near, "dev", "narrow0"][..],
        nodad,
    ]
    .concat());
    run(&["-n", internet_ns, "link", "set", "narrow0", "up"]);
    run(&[
        &["-n", far_ns, "addr", "add", far, "dev", "far0"][..],
        nodad,
    ]
    .concat());
    run(&["-n", far_ns, "link", "set", "far0", "up"]);
    run(&[
        "-n", far_ns, family, "route", "add", "default", "via", gateway,
    ]);
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", internet_ns, "sysctl", "-qw", forwarding])
        .status()
        .expect("sysctl");
    assert!(status.success(), "enabling forwarding in {internet_ns}");
}

/// Raises RLIMIT_NOFILE's soft limit to at least `want` (as the relay raises its own); fails
/// the test loudly if the hard limit does not allow it.
///
/// The tests share one process (one test binary), so the limit is for all of them: every
/// test's `want` is added to what the tests before it asked for, under a lock, so that tests
/// running at once each have their descriptors and the limit only ever goes up.
#[allow(dead_code)] // not every test file opens thousands
pub fn raise_fd_limit(want: u64) {
    static ASKED: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
    let mut asked = ASKED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *asked += want;
    let have = idlegate::sys::rlimit::raise_descriptor_limit(*asked)
        .expect("raising the descriptor limit");
    assert!(
        have >= want,
        "this test needs {want} file descriptors; the hard limit allows {have}"
    );
}

/// A copy of the binary at `path` that any user may run (the checkout may sit in a directory
/// only root can enter), in a directory that lives as long as the returned guard.
#[allow(dead_code)] // only the tests that run as another user
pub fn runnable_by_anyone(path: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("idlegate");
    std::fs::copy(path, &copy).expect("copying the binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, copy)
}

/// A lab config: the top-level lines `head` (the profile, a time scale), frontend "public" at
/// 203.0.113.10, pool "vms" with one member `vm1` at 192.0.2.11, then `rules` (the TOML of
/// the rules from that frontend to that pool).
#[allow(dead_code)] // not every test file uses it
pub fn one_member_lab(head: &str, rules: &str) -> idlegate_core::Config {
    let text = format!(
        r#"{head}
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{{ name = "vm1", address = "192.0.2.11" }}]
{rules}"#
    );
    idlegate_core::Config::from_toml(&text, "lab test config").expect("a valid config")
}

/// A lab config with Azure LB's timers scaled 1/80 (its 4 min become 3 s): frontend
/// 203.0.113.10, one member `vm1` at 192.0.2.11, and a TCP rule for each `(name, port)`
/// (frontend and backend port the same) with `expiry`.
#[allow(dead_code)] // not every test file uses it
pub fn lab_config(expiry: &str, rules: &[(&str, u16)]) -> idlegate_core::Config {
    let mut text = String::new();
    for (name, port) in rules {
        text += &format!(
            "[[lb_rule]]\nname = \"{name}\"\nfrontend = \"public\"\nfrontend_port = {port}\n\
             backend_pool = \"vms\"\nbackend_port = {port}\nexpiry = \"{expiry}\"\n"
        );
    }
    one_member_lab("profile = \"azure-lb\"\ntime_scale = 80", &text)
}

/// The probe's lab config: `profile` scaled by `time_scale`, frontend 203.0.113.10, one member
/// `vm1` at 192.0.2.11, and one TCP rule `echo` on port 9300 (frontend and backend) with idle
/// timeout `idle` and `expiry`.
#[allow(dead_code)] // not every test file uses it
pub fn echo_lab(profile: &str, time_scale: u32, idle: &str, expiry: &str) -> idlegate_core::Config {
    one_member_lab(
        &format!("profile = \"{profile}\"\ntime_scale = {time_scale}"),
        &format!(
            r#"[[lb_rule]]
name = "echo"
frontend = "public"
frontend_port = 9300
backend_pool = "vms"
backend_port = 9300
idle_timeout = "{idle}"
expiry = "{expiry}"
"#
        ),
    )
}

/// [`lab_config`] with one rule `app` on port 7000.
#[allow(dead_code)] // not every test file uses it
pub fn one_rule_lab(expiry: &str) -> idlegate_core::Config {
    lab_config(expiry, &[("app", 7000)])
}

/// Runs `command` to completion with its output captured, as `Command::output` does, but
/// kills it, and every process it started, and fails the test if it runs longer than
/// `timeout`. It runs in a process group of its own, which the kill takes whole: a script's
/// `cargo build` or `podman build` ends with it.
#[allow(dead_code)] // not every test file runs one
pub fn output_within(
    command: &mut std::process::Command,
    timeout: std::time::Duration,
) -> std::process::Output {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut child = command
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the command");
    // Each pipe read to its end by a thread of its own, which hands over what it read.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        let (sender, read) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = sender.send(bytes);
        });
        read
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the command") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let group = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
            // SAFETY: plain syscall; the group is the child's own (process_group(0)), which
            // is not yet reaped, so the id is not reused.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            // What it said so far, to tell why it hung (a process it started may still hold
            // the pipe: wait for that no more than a second).
            let said = stderr
                .recv_timeout(std::time::Duration::from_secs(1))
                .unwrap_or_default();
            panic!(
                "{command:?} still running after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&said)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.recv().expect("stdout reader"),
        stderr: stderr.recv().expect("stderr reader"),
    }
}

/// The two addresses of a veth pair made inside namespace `ns`: 198.51.100.1 on one end,
/// 198.51.100.2 on the other, neither loopback, so a connection between them is one `audit`
/// judges (it leaves loopback connections out) while it stays inside the namespace.
#[allow(dead_code)] // not every test file uses it
pub fn non_loopback_pair(ns: &str) -> [std::net::Ipv4Addr; 2] {
    let pair = [
        std::net::Ipv4Addr::new(198, 51, 100, 1),
        std::net::Ipv4Addr::new(198, 51, 100, 2),
    ];
    ip(&[
        "-n", ns, "link", "add", "pair0", "type", "veth", "peer", "name", "pair1",
    ])
    .expect("a veth pair in the test namespace (ip link add … type veth)");
    for (device, a) in ["pair0", "pair1"].into_iter().zip(pair) {
        ip(&["-n", ns, "addr", "add", &format!("{a}/32"), "dev", device]).expect("an address");
        ip(&["-n", ns, "link", "set", device, "up"]).expect("the veth end up");
    }
    pair
}

/// A python3 process holding one idle TCP connection to its own listener on loopback; it
/// exits when told ([`Holder::exit_now`]) and is killed when dropped.
#[allow(dead_code)] // not every test file holds a connection
pub struct Holder(std::process::Child);

#[allow(dead_code)] // not every test file holds a connection
impl Holder {
    /// Starts the process and waits until its connection is up.
    pub fn start() -> Holder {
        use std::io::Read;
        use std::process::{Command, Stdio};
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import socket,time\nl=socket.socket(); l.bind(('127.0.0.1',0)); l.listen()\n\
                 c=socket.create_connection(l.getsockname()); print('ready', flush=True)\n\
                 time.sleep(float(input()))",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/setup installs it)");
        let mut ready = [0u8; 6];
        child
            .stdout
            .as_mut()
            .expect("its stdout")
            .read_exact(&mut ready)
            .expect("python3 said ready");
        Holder(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Tells the process to exit now (it does not wait for it).
    pub fn exit_now(&mut self) {
        use std::io::Write;
        let mut stdin = self.0.stdin.take().expect("the holder's stdin, once");
        stdin.write_all(b"0\n").expect("telling the holder to exit");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `idlegate ARGS…` to completion; fails the test, with the arguments and its stderr,
/// unless it succeeds; gives its stdout.
#[allow(dead_code)] // not every test file runs the binary
pub fn idlegate_ok(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args(args)
        .output()
        .expect("running idlegate");
    assert_success(&out, args);
    out.stdout
}

/// Fails the test, with `what` (the command's arguments) and the program's stderr, unless
/// `out` is of a program that succeeded.
#[allow(dead_code)] // not every test file runs programs
pub fn assert_success(out: &std::process::Output, what: &[&str]) {
    assert!(
        out.status.success(),
        "{what:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where the relay tests' relay listens in the lab's `internet` host: it relays to the
/// frontend's rule `relayed` ([`RELAYED_RULE`]).
#[allow(dead_code)] // not every test file relays
pub const RELAY_LISTEN: &str = "127.0.0.1:7101";
/// The frontend's rule `relayed` of [`direct_and_relayed_lab`].
#[allow(dead_code)] // not every test file relays
pub const RELAYED_RULE: &str = "203.0.113.10:7001";

/// [`lab_config`] with `expiry` and two rules to vm1: `direct` on port 7000 and `relayed` on
/// port 7001. Its gateway forgets idle flows after 3 s (Azure's 4 min scaled 1/80).
#[allow(dead_code)] // not every test file relays
pub fn direct_and_relayed_lab(expiry: &str) -> idlegate_core::Config {
    lab_config(expiry, &[("direct", 7000), ("relayed", 7001)])
}

/// What a client that idles longer than the gateway's timeout gets, directly and through a
/// relay: in `lab` (of [`direct_and_relayed_lab`], with a relay at [`RELAY_LISTEN`] in its
/// `internet` host, namespace `internet`), a client there without keepalive sends "a", idles
/// 5 s, sends "b", both to the rule `direct` and through the relay, each to a server in vm1 on
/// its rule's port. Gives what the server got and the client's error, direct then relayed.
#[allow(dead_code)] // not every test file relays
pub fn idle_direct_and_relayed(
    lab: &idlegate::lab::Lab,
    internet: &str,
) -> anyhow::Result<[(Vec<String>, Option<String>); 2]> {
    use idlegate::lab::scenario::{self, Script};
    use std::time::Duration;
    let server_ns = lab.namespace_of("vm1")?;
    let script = |name: &str, connect: &str, port: u16| -> anyhow::Result<Script> {
        Ok(Script {
            name: name.to_string(),
            client_ns: internet.to_string(),
            server_ns: server_ns.clone(),
            listen: format!("0.0.0.0:{port}").parse()?,
            connect: connect.parse()?,
            keepalive: None,
            sends: vec![
                (Duration::ZERO, "a".into()),
                (Duration::from_secs(5), "b".into()),
            ],
            observe: Duration::from_secs(2),
        })
    };
    let outcomes = scenario::run(vec![
        script("direct", "203.0.113.10:7000", 7000)?,
        script("relayed", RELAY_LISTEN, 7001)?,
    ])?;
    let seen = |name: &str| -> anyhow::Result<(Vec<String>, Option<String>)> {
        let o = outcomes
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| anyhow::anyhow!("no outcome of the {name} client"))?;
        Ok((o.delivered.clone(), o.client_error.clone()))
    };
    Ok([seen("direct")?, seen("relayed")?])
}

/// A config of two pools, for `--member`: "web" (vm1) has LB rule "web-app" (25 min) and
/// leaves by outbound rule "web-out" (30 min); "workers" (vm2) has LB rule "workers-app"
/// (5 min) and leaves by NAT gateway "natgw" (4 min), which beats its outbound rule
/// "workers-out" (20 min). Both LB rules forward to backend port 7000.
pub const TWO_POOLS: &str = r#"profile = "azure-lb"
[[frontend]]
name = "public"
address = "203.0.113.10"
[[frontend]]
name = "natgw-ip"
address = "203.0.113.20"
[[backend_pool]]
name = "web"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[backend_pool]]
name = "workers"
members = [{ name = "vm2", address = "192.0.2.12" }]
[[lb_rule]]
name = "web-app"
frontend = "public"
frontend_port = 80
backend_pool = "web"
backend_port = 7000
idle_timeout = "25m"
[[lb_rule]]
name = "workers-app"
frontend = "public"
frontend_port = 81
backend_pool = "workers"
backend_port = 7000
idle_timeout = "5m"
[[outbound_rule]]
name = "web-out"
frontend = "public"
backend_pool = "web"
idle_timeout = "30m"
[[outbound_rule]]
name = "workers-out"
frontend = "public"
backend_pool = "workers"
idle_timeout = "20m"
[[nat_gateway]]
name = "natgw"
frontend = "natgw-ip"
backend_pools = ["workers"]
idle_timeout = "4m"
"#;

/// Takes down the lab `name` that `child` (its `idlegate lab up`) runs: SIGTERM first, so the
/// lab removes its namespaces itself, up to 10 s; then whatever namespaces and lock file it
/// left are removed, so a failed test leaves nothing behind.
pub fn take_lab_down(child: &mut std::process::Child, name: &str) {
    // SAFETY: kill has no memory-safety preconditions; the pid is the caller's unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let prefix = format!("ig-{name}-");
    for ns in idlegate::sys::netns::list().unwrap_or_default() {
        if ns.starts_with(&prefix) {
            let _ = idlegate::sys::netns::delete(&ns);
        }
    }
    let _ = std::fs::remove_file(format!("/run/idlegate/lab-{name}.lock"));
}

/// Asserts what the relay and the tunnel promise of an application's socket, as `socket` (a
/// copy of one this process holds) has it: keepalive `1s,1s,3` (the tests' setting) with a
/// user timeout of 1 + 3 × 1 s, TCP_NODELAY, and SO_LINGER 0 (a RST if the process is killed).
pub fn assert_relayed_socket_options(
    socket: &idlegate::survive::keepalive::ForeignSocket,
    side: &str,
) {
    let k = idlegate::survive::keepalive::SocketKeepalive::read(socket).unwrap();
    assert!(k.enabled, "{side}: {k}");
    assert_eq!(
        (k.idle, k.interval, k.count, k.user_timeout),
        (
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(1),
            3,
            std::time::Duration::from_secs(4)
        ),
        "{side}: {k}"
    );
    let s = socket2::SockRef::from(socket);
    assert!(s.tcp_nodelay().unwrap(), "{side}");
    assert_eq!(
        s.linger().unwrap(),
        Some(std::time::Duration::ZERO),
        "{side}: armed to reset"
    );
}
