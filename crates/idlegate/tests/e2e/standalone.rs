//! End-to-end tests of `idlegate gateway` run as a router in a network namespace of its own,
//! wired the way the book's gateway page (docs/src/commands/gateway.md) and
//! `examples/gateway-in-a-namespace.sh` describe:
//!
//! ```text
//! vm1 192.0.2.11 ── 192.0.2.1  gw  203.0.113.1 ── 203.0.113.100 internet
//!                     idlegate gateway: frontend 203.0.113.10
//! ```
//!
//! The real binary runs in `gw` (`ip netns exec GW idlegate gateway --config …`); policy
//! routing by incoming interface sends every packet from a host into one of its TUN devices,
//! and the kernel routes what it writes back by destination. The hosts are real Linux TCP
//! stacks.
//!
//! Needs root (namespaces, veth pairs, TUN devices) and `ip` and `sysctl`: without them these
//! tests fail loudly, they never skip. Each test builds its own three namespaces with unique
//! names; the [`Router`] guard stops the gateway and removes them even when an assertion
//! fails. The TUN devices have fixed names: they live in the test's own `gw` namespace.

use crate::common;

use anyhow::{bail, ensure, Context, Result};
use idlegate::lab::scenario::{self, Script};
use idlegate::sys::netns::{self, Namespace};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use tempfile::NamedTempFile;

const MEMBER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
const FRONTEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// `gw`'s own addresses on its two veths.
const GW_INSIDE: &str = "192.0.2.1";
const GW_OUTSIDE: &str = "203.0.113.1";
/// The gateway's TUN devices, passed with `--inside` / `--outside`.
const TUN_INSIDE: &str = "tun-inside";
const TUN_OUTSIDE: &str = "tun-outside";
/// `gw`'s veths and the routing tables that send their traffic into the TUN devices.
const TO_VM1: &str = "to-vm1";
const TO_INTERNET: &str = "to-internet";
const TABLE_OUTSIDE: &str = "100";
const TABLE_INSIDE: &str = "101";

/// Azure's 4 min scaled by `time_scale = 60`.
const IDLE: Duration = Duration::from_secs(4);
/// Bound on every wait for the network or the gateway.
const TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

const CONFIG: &str = r#"
profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[lb_rule]]
name = "app"
frontend = "public"
protocol = "tcp"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
idle_timeout = "4m"
expiry = "silent"
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
idle_timeout = "4m"
expiry = "silent"
"#;

/// A fresh namespace name: `igr` + pid + counter + role.
fn unique(role: &str) -> String {
    format!("{}-{role}", common::unique("igr"))
}

use common::require_root;

/// `ip -n NS ARGS…`.
fn ip(ns: &Namespace, args: &[&str]) -> Result<()> {
    crate::common::ip(&[&["-n", ns.name()], args].concat())
}

/// `ip netns exec NS sysctl -qw SETTING`.
fn sysctl(ns: &Namespace, setting: &str) -> Result<()> {
    let output = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sysctl", "-qw", setting])
        .output()
        .with_context(|| format!("running sysctl in {}", ns.name()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "sysctl -w {setting} in {} failed: {stderr}",
        ns.name()
    );
    Ok(())
}

/// The three namespaces and the gateway running in `gw`. Dropping it stops the gateway
/// (SIGTERM, SIGKILL after a bounded wait), then removes the namespaces.
struct Router {
    gateway: Child,
    log: NamedTempFile,
    _control: tempfile::TempDir,
    _config: NamedTempFile,
    /// The arguments `idlegate gateway` was started with, for a restart.
    extra: Vec<String>,
    /// What starts `idlegate gateway` inside `gw` (empty: nothing, it runs as root).
    launcher: Vec<String>,
    gw: Namespace,
    vm1: Namespace,
    internet: Namespace,
}

impl Router {
    /// Builds the topology, starts `idlegate gateway` in `gw` and routes into its devices.
    fn start() -> Result<Router> {
        Router::start_with(&[])
    }

    /// [`Router::start`] with `extra` arguments for `idlegate gateway`.
    fn start_with(extra: &[&str]) -> Result<Router> {
        Router::start_as(None, extra)
    }

    /// [`Router::start`] with the gateway started by user and group `id` holding only the
    /// ambient capabilities `caps` (`setpriv`'s syntax), as systemd's `User=` with
    /// `AmbientCapabilities=` starts a service.
    fn start_unprivileged(id: u32, caps: &str) -> Result<Router> {
        Router::start_as(Some((id, caps)), &[])
    }

    fn start_as(unprivileged: Option<(u32, &str)>, extra: &[&str]) -> Result<Router> {
        require_root();
        let gw = Namespace::create(&unique("gw"))?;
        let vm1 = Namespace::create(&unique("vm1"))?;
        let internet = Namespace::create(&unique("inet"))?;

        // gw forwards. Strict reverse-path filtering (the strictest value a host may hand
        // down to new namespaces) is set on purpose: the recipe must work with it.
        sysctl(&gw, "net.ipv4.ip_forward=1")?;
        sysctl(&gw, "net.ipv4.conf.all.rp_filter=1")?;
        for (dev, host, gw_addr, host_addr) in [
            (TO_VM1, &vm1, GW_INSIDE, MEMBER),
            (TO_INTERNET, &internet, GW_OUTSIDE, INTERNET),
        ] {
            #[rustfmt::skip]
            ip(&gw, &["link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", host.name()])?;
            ip(&gw, &["addr", "add", &format!("{gw_addr}/24"), "dev", dev])?;
            ip(&gw, &["link", "set", dev, "up"])?;
            ip(
                host,
                &["addr", "add", &format!("{host_addr}/24"), "dev", "eth0"],
            )?;
            ip(host, &["link", "set", "eth0", "up"])?;
        }
        ip(&vm1, &["route", "add", "default", "via", GW_INSIDE])?;
        // The frontend is no address of gw, so nobody answers ARP for it: route it via gw.
        let frontend = format!("{FRONTEND}/32");
        ip(&internet, &["route", "add", &frontend, "via", GW_OUTSIDE])?;

        // Everything from a host goes into a TUN; what the gateway writes back is routed by
        // destination (main table). Blackholes: no untranslated forwarding without it.
        for (dev, table) in [(TO_INTERNET, TABLE_OUTSIDE), (TO_VM1, TABLE_INSIDE)] {
            ip(&gw, &["rule", "add", "iif", dev, "lookup", table])?;
            #[rustfmt::skip]
            ip(&gw, &["route", "add", "blackhole", "default", "table", table, "metric", "100"])?;
        }

        let mut config = NamedTempFile::new().context("creating the config file")?;
        config.write_all(CONFIG.as_bytes())?;
        let log = NamedTempFile::new().context("creating the gateway's log file")?;
        // Each test's gateway has its own control socket: they run side by side.
        let control = tempfile::tempdir().context("creating the control socket's directory")?;
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut launcher = Vec::new();
        if let Some((id, caps)) = unprivileged {
            // The user reads the config and makes its socket; nothing else is theirs.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(config.path(), std::fs::Permissions::from_mode(0o644))?;
            std::os::unix::fs::chown(control.path(), Some(id), Some(id))?;
            launcher = [
                "setpriv",
                &format!("--reuid={id}"),
                &format!("--regid={id}"),
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--clear-groups".to_string(),
                format!("--inh-caps=-all,{caps}"),
                format!("--ambient-caps=-all,{caps}"),
            ])
            .collect();
        }
        let gateway = spawn_gateway(&gw, &launcher, config.path(), control.path(), &extra, &log)?;
        let mut router = Router {
            gateway,
            log,
            _control: control,
            _config: config,
            extra,
            launcher,
            gw,
            vm1,
            internet,
        };
        router.route_into_devices()?;
        Ok(router)
    }

    /// Waits for the gateway's devices, then routes each host's traffic into them (the routes
    /// go with the devices).
    fn route_into_devices(&mut self) -> Result<()> {
        self.wait_for_devices()?;
        for (tun, table) in [(TUN_OUTSIDE, TABLE_OUTSIDE), (TUN_INSIDE, TABLE_INSIDE)] {
            ip(
                &self.gw,
                &["route", "add", "default", "dev", tun, "table", table],
            )?;
        }
        Ok(())
    }

    /// Kills the gateway with SIGKILL, giving it no chance to clean up.
    fn kill_gateway(&mut self) -> Result<()> {
        self.gateway.kill()?;
        self.gateway.wait()?;
        Ok(())
    }

    /// Starts the gateway again, as it was started, and routes into its new devices.
    fn restart_gateway(&mut self) -> Result<()> {
        self.gateway = spawn_gateway(
            &self.gw,
            &self.launcher,
            self._config.path(),
            self._control.path(),
            &self.extra,
            &self.log,
        )?;
        self.route_into_devices()
    }

    /// Whether `gw` has a device called `name`.
    fn has_device(&self, name: &str) -> bool {
        ip(&self.gw, &["link", "show", name]).is_ok()
    }

    /// Waits (≤ [`TIMEOUT`]) until both TUN devices exist in `gw` and are up.
    fn wait_for_devices(&mut self) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.gateway.try_wait()? {
                bail!("idlegate gateway exited ({status}): {}", self.log());
            }
            let output = Command::new("ip")
                .args(["-n", self.gw.name(), "-o", "link", "show", "up"])
                .output()
                .context("listing gw's devices")?;
            let up = String::from_utf8_lossy(&output.stdout);
            let has = |dev: &str| up.lines().any(|l| l.contains(&format!(": {dev}:")));
            if has(TUN_INSIDE) && has(TUN_OUTSIDE) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("no TUN devices up in gw after {TIMEOUT:?}: {}", self.log());
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits (≤ [`TIMEOUT`]) until the gateway has logged `line`.
    fn wait_for_log(&mut self, line: &str) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        while !self.log().contains(line) {
            if let Some(status) = self.gateway.try_wait()? {
                bail!("idlegate gateway exited ({status}): {}", self.log());
            }
            ensure!(
                Instant::now() < deadline,
                "no {line:?} in the gateway's log after {TIMEOUT:?}: {}",
                self.log()
            );
            thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    }

    /// A field of the /proc status of every thread of the gateway, e.g. `CapEff`:
    /// credentials and capabilities are per thread.
    fn status(&self, field: &str) -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.gateway.id()))
            .expect("the gateway's threads");
        tasks
            .map(|task| {
                let path = task.expect("a thread").path().join("status");
                let status = std::fs::read_to_string(&path).expect("a thread's status");
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{field}:")))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_else(|| panic!("no {field} in {}", path.display()))
            })
            .collect()
    }

    /// Asserts that every thread of the gateway has `value` in `field`, once its workers
    /// run (it logs the drop before it starts them: wait for them, within [`TIMEOUT`]). Its
    /// threads then are the main one, the signal handler's and at least one worker.
    fn assert_every_thread(&self, field: &str, value: &str) {
        let deadline = Instant::now() + TIMEOUT;
        let mut values = self.status(field);
        while values.len() < 3 && Instant::now() < deadline {
            thread::sleep(POLL_INTERVAL);
            values = self.status(field);
        }
        assert!(values.len() >= 3, "the workers are running: {values:?}");
        assert!(values.iter().all(|v| v == value), "{field}: {values:?}");
    }

    /// What the gateway logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

/// `idlegate gateway` in `gw`, logging to `log`.
fn spawn_gateway(
    gw: &Namespace,
    launcher: &[String],
    config: &std::path::Path,
    control: &std::path::Path,
    extra: &[String],
    log: &NamedTempFile,
) -> Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", gw.name()])
        .args(launcher)
        .arg(env!("CARGO_BIN_EXE_idlegate"))
        .args(["gateway", "--config"])
        .arg(config)
        .args(["--inside", TUN_INSIDE, "--outside", TUN_OUTSIDE])
        .arg("--control")
        .arg(control.join("control.sock"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().append(true).open(log.path())?)
        .spawn()
        .context("starting idlegate gateway")
}

impl Drop for Router {
    fn drop(&mut self) {
        let pid = libc::pid_t::try_from(self.gateway.id()).unwrap_or(libc::pid_t::MAX);
        // SAFETY: plain syscall; `pid` is our child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.gateway.try_wait() {
                Ok(None) => thread::sleep(POLL_INTERVAL),
                _ => return,
            }
        }
        eprintln!("idlegate gateway ignored SIGTERM for {TIMEOUT:?}; killing it");
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
    }
}

/// What the server saw of one connection.
struct Received {
    bytes: Vec<u8>,
    peer: SocketAddr,
}

/// A server in `server_ns` listening on `0.0.0.0:port` accepts one connection; a client in
/// `client_ns` connects to `connect`, sends `message` and closes. Every wait is bounded.
fn exchange(
    server_ns: &Namespace,
    port: u16,
    client_ns: &Namespace,
    connect: SocketAddrV4,
    message: &'static [u8],
) -> Result<Received> {
    let listen = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    let listener = netns::spawn_in(server_ns.name(), move || TcpListener::bind(listen))?
        .join()
        .map_err(|_| anyhow::anyhow!("listener thread panicked"))??;
    let client = netns::spawn_in(client_ns.name(), move || -> std::io::Result<()> {
        let mut stream = TcpStream::connect_timeout(&connect.into(), TIMEOUT)?;
        stream.write_all(message)
    })?;
    let received = accept_and_read(&listener);
    let sent = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    sent.with_context(|| format!("client connecting to {connect}"))?;
    received
}

/// Accepts one connection (≤ [`TIMEOUT`]) and reads it to its end.
fn accept_and_read(listener: &TcpListener) -> Result<Received> {
    let ready = idlegate::sys::poll::wait_readable(listener.as_raw_fd(), Some(TIMEOUT))?;
    ensure!(ready, "no connection arrived within {TIMEOUT:?}");
    let (mut stream, peer) = listener.accept()?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    Ok(Received { bytes, peer })
}

fn ipv4(peer: SocketAddr) -> Option<Ipv4Addr> {
    match peer {
        SocketAddr::V4(v4) => Some(*v4.ip()),
        SocketAddr::V6(_) => None,
    }
}

#[test]
fn standalone_gateway_balances_inbound_connections_to_the_member() {
    let router = Router::start().expect("building the router");
    let frontend = SocketAddrV4::new(FRONTEND, 7000);
    let received = exchange(&router.vm1, 7000, &router.internet, frontend, b"hello")
        .unwrap_or_else(|e| panic!("{e:#}\ngateway log:\n{}", router.log()));
    assert_eq!(received.bytes, b"hello");
    assert_eq!(
        ipv4(received.peer),
        Some(INTERNET),
        "the load balancer does not translate the client's address"
    );
}

#[test]
fn standalone_gateway_translates_outbound_connections_to_the_frontend_address() {
    let router = Router::start().expect("building the router");
    let server = SocketAddrV4::new(INTERNET, 8000);
    let received = exchange(&router.internet, 8000, &router.vm1, server, b"hello")
        .unwrap_or_else(|e| panic!("{e:#}\ngateway log:\n{}", router.log()));
    assert_eq!(received.bytes, b"hello");
    assert_eq!(
        ipv4(received.peer),
        Some(FRONTEND),
        "the member's connection leaves from the frontend address"
    );
}

#[test]
fn standalone_gateway_forgets_an_idle_flow() {
    let router = Router::start().expect("building the router");
    let script = Script {
        name: "idle".into(),
        client_ns: router.internet.name().into(),
        server_ns: router.vm1.name().into(),
        listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7000).into(),
        connect: SocketAddrV4::new(FRONTEND, 7000).into(),
        keepalive: None,
        sends: vec![
            (Duration::ZERO, "a".into()),
            (IDLE / 4, "b".into()),
            (IDLE / 4 + IDLE * 9 / 8, "c".into()),
        ],
        observe: Duration::from_millis(1500),
    };
    let outcomes = scenario::run(vec![script]).expect("running the script");
    let outcome = &outcomes[0];
    let context = format!(
        "{}gateway log:\n{}",
        scenario::render_timeline(&outcomes),
        router.log()
    );
    assert_eq!(outcome.sent, ["a", "b", "c"], "{context}");
    assert_eq!(outcome.delivered, ["a", "b"], "\"c\" is lost: {context}");
    assert_eq!(
        (
            outcome.client_error.as_deref(),
            outcome.server_error.as_deref()
        ),
        (None, None),
        "nobody is told: {context}"
    );
    assert!(
        outcome.unacked_at_end > 0,
        "\"c\" was written but never acknowledged: {context}"
    );
}

#[test]
fn standalone_gateway_runs_as_the_given_user_without_any_capability_and_still_forwards() {
    let mut router = Router::start_with(&["--user", "nobody"]).expect("building the router");
    router
        .wait_for_log("privileges dropped")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let nobody = idlegate::sys::privilege::User::lookup("nobody").expect("a nobody user");
    let uid = nobody.uid.to_string();
    let uids = [uid.as_str(); 4].join("\t"); // real, effective, saved, fs
    router.assert_every_thread("Uid", &uids);
    router.assert_every_thread("CapEff", "0000000000000000");
    router.assert_every_thread("CapPrm", "0000000000000000");
    router.assert_every_thread("NoNewPrivs", "1");
    // The control socket is the user's alone.
    let control = router._control.path().join("control.sock");
    let meta = std::fs::metadata(&control).expect("the control socket");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.uid(), nobody.uid);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let frontend = SocketAddrV4::new(FRONTEND, 7000);
    let received = exchange(&router.vm1, 7000, &router.internet, frontend, b"hello")
        .unwrap_or_else(|e| panic!("{e:#}\ngateway log:\n{}", router.log()));
    assert_eq!(received.bytes, b"hello");
}

#[test]
fn standalone_gateway_started_by_a_user_with_only_the_capabilities_it_needs_drops_them() {
    // As systemd starts a service with User= and AmbientCapabilities=: CAP_NET_ADMIN for the
    // TUN devices, CAP_DAC_OVERRIDE where /dev/net/tun is root's alone (0600 here).
    let nobody = idlegate::sys::privilege::User::lookup("nobody").expect("a nobody user");
    let mut router = Router::start_unprivileged(nobody.uid, "+net_admin,+dac_override")
        .expect("building the router");
    router
        .wait_for_log("privileges dropped")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let uid = nobody.uid.to_string();
    router.assert_every_thread("Uid", &[uid.as_str(); 4].join("\t"));
    router.assert_every_thread("CapEff", "0000000000000000");
    router.assert_every_thread("CapPrm", "0000000000000000");
    router.assert_every_thread("CapAmb", "0000000000000000");
    router.assert_every_thread("NoNewPrivs", "1");
    let frontend = SocketAddrV4::new(FRONTEND, 7000);
    let received = exchange(&router.vm1, 7000, &router.internet, frontend, b"hello")
        .unwrap_or_else(|e| panic!("{e:#}\ngateway log:\n{}", router.log()));
    assert_eq!(received.bytes, b"hello");
}

#[test]
fn standalone_gateway_without_a_user_stays_root_with_every_capability_dropped() {
    let mut router = Router::start().expect("building the router");
    router
        .wait_for_log("privileges dropped")
        .unwrap_or_else(|e| panic!("{e:#}"));
    router.assert_every_thread("CapEff", "0000000000000000");
    router.assert_every_thread("CapPrm", "0000000000000000");
    router.assert_every_thread("CapBnd", "0000000000000000");
    router.assert_every_thread("NoNewPrivs", "1");
    let frontend = SocketAddrV4::new(FRONTEND, 7000);
    let received = exchange(&router.vm1, 7000, &router.internet, frontend, b"hello")
        .unwrap_or_else(|e| panic!("{e:#}\ngateway log:\n{}", router.log()));
    assert_eq!(received.bytes, b"hello");
}

#[test]
fn a_tunnel_through_the_gateway_resumes_after_the_gateway_is_killed_and_restarted() {
    use idlegate::survive::relay::Keepalive;
    use idlegate::survive::tunnel::key::Key;
    use idlegate::survive::tunnel::{Entry, Exit, Settings};
    use std::sync::atomic::Ordering;

    const BYTES: usize = 24 << 20;
    let mut router = Router::start().expect("building the router");
    let settings = Settings {
        heartbeat: Duration::from_millis(200),
        resume_within: Duration::from_secs(30),
        replay_buffer: 4 << 20,
        keepalive: Keepalive::parse("1s,1s,3").unwrap(),
        max_sessions: 100,
    };
    let key = Key::random().unwrap();
    // The server application in vm1 reads everything and says what it got.
    let server_at: SocketAddr = "192.0.2.11:8100".parse().unwrap();
    let listener = netns::spawn_in(router.vm1.name(), move || TcpListener::bind(server_at))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let server = thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut got = Vec::with_capacity(BYTES);
        conn.read_to_end(&mut got)?;
        Ok(got)
    });
    // The exit in vm1 behind the LB rule's port, the entry in internet.
    let (k, s) = (key.clone(), settings.clone());
    let exit = netns::spawn_in(router.vm1.name(), move || {
        Exit::bind("0.0.0.0:7000".parse().unwrap(), server_at, k, s)
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    let exit_stop = exit.stop_flag();
    netns::spawn_in(router.vm1.name(), move || exit.run()).unwrap();
    let (k, s) = (key.clone(), settings.clone());
    let entry = netns::spawn_in(router.internet.name(), move || {
        Entry::bind(
            "127.0.0.1:7100".parse().unwrap(),
            SocketAddrV4::new(FRONTEND, 7000).into(),
            k,
            s,
        )
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    let entry_stats = entry.stats();
    let entry_stop = entry.stop_flag();
    netns::spawn_in(router.internet.name(), move || entry.run()).unwrap();

    // The client application sends a known pattern, paced so that the kill lands mid-stream.
    let sent: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
    let to_send = sent.clone();
    let client = netns::spawn_in(router.internet.name(), move || -> std::io::Result<()> {
        let mut conn = TcpStream::connect("127.0.0.1:7100")?;
        // A tunnel that never resumed would stop taking bytes: fail, don't hang.
        conn.set_write_timeout(Some(Duration::from_secs(60)))?;
        for chunk in to_send.chunks(256 << 10) {
            conn.write_all(chunk)?;
            thread::sleep(Duration::from_millis(20));
        }
        conn.shutdown(std::net::Shutdown::Write)
    })
    .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while entry_stats.bytes_to_server.load(Ordering::Relaxed) < (BYTES / 4) as u64 {
        assert!(Instant::now() < deadline, "no bytes through the tunnel");
        thread::sleep(POLL_INTERVAL);
    }
    router.kill_gateway().unwrap();
    // Killed, it leaves nothing behind: its devices went with it.
    assert!(!router.has_device(TUN_INSIDE) && !router.has_device(TUN_OUTSIDE));
    router
        .restart_gateway()
        .unwrap_or_else(|e| panic!("{e:#}\ngateway log:\n{}", router.log()));
    client.join().unwrap().unwrap();
    let got = server.join().unwrap().unwrap();
    assert!(
        got.len() == BYTES && got == sent,
        "{} of {BYTES} bytes, in order?",
        got.len()
    );
    assert!(
        entry_stats.reconnects.load(Ordering::Relaxed) >= 1,
        "the tunnel resumed"
    );
    entry_stop.store(true, Ordering::Relaxed);
    exit_stop.store(true, Ordering::Relaxed);
}
