//! End-to-end tests of the gateway with real Linux TCP stacks in network namespaces.
//!
//! Needs root (namespaces, TUN devices): without it these tests fail loudly, they never skip.
//! Each test builds its own lab with a unique name, and the lab removes its namespaces when it
//! is dropped, even if an assertion fails. Idle timeouts are Azure's 4 minutes scaled by 60 to
//! 4 s, with margins of a second or more on either side of every expiry.

use crate::common;

use idlegate::lab::scenario::{self, Outcome, Script};
use idlegate::lab::{Lab, INTERNET, INTERNET_ADDRESS};
use idlegate_core::{Config, DropReason};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

/// The scaled idle timeout every test here uses.
const IDLE: Duration = Duration::from_secs(4);

use common::{require_root, unique};

/// Runs `idlegate lab demo --json` with `args` and returns its report.
fn demo(args: &[&str]) -> Value {
    require_root();
    let name = unique("dm");
    let output = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args(["lab", "demo", "--json", "--name", &name])
        .args(args)
        .output()
        .expect("running idlegate lab demo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "lab demo failed: {stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("demo printed no JSON ({e}): {stderr}"))
}

fn connection<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn demo_shows_silent_loss_survival_with_keepalive_and_reset_on_both_sides() {
    let report = demo(&[]);
    assert_eq!(report["idle_timeout_s"], 4.0);

    // Azure's default: the flow is forgotten and "c" vanishes, nobody is told (Azure "Load Balancer TCP Reset
    // and Idle Timeout": the default is to "silently drop flows").
    let plain = connection(&report, "no-keepalive");
    assert_eq!(strings(&plain["sent"]), ["a", "b", "c"]);
    assert_eq!(strings(&plain["delivered"]), ["a", "b"]);
    assert_eq!(
        (&plain["client_error"], &plain["server_error"]),
        (&Value::Null, &Value::Null)
    );

    // Keepalive probes refresh the flow (Azure "Load Balancer TCP Reset and Idle Timeout": TCP
    // keep-alive packets keep the idle timeout from being reached).
    let keepalive = connection(&report, "keepalive");
    assert_eq!(strings(&keepalive["delivered"]), ["a", "b", "c"]);
    assert_eq!(
        (&keepalive["client_error"], &keepalive["server_error"]),
        (&Value::Null, &Value::Null)
    );

    // Azure "TCP reset on idle": both endpoints get a RST at expiry ("Load Balancer TCP Reset
    // and Idle Timeout").
    let reset = connection(&report, "tcp-reset");
    assert_eq!(strings(&reset["delivered"]), ["a", "b"]);
    assert_eq!(reset["client_error"], "ECONNRESET");
    assert_eq!(reset["server_error"], "ECONNRESET");

    assert_eq!(report["gateway"]["flows_expired"], 2);
    assert_eq!(report["gateway"]["resets_sent"], 2);
    assert!(
        report["gateway"]["dropped_no_flow"].as_u64().unwrap() >= 1,
        "the silent drop is counted"
    );
}

#[test]
fn reset_on_next_answers_the_senders_next_packet_with_a_rst() {
    // AWS NAT gateway / NLB: silent at expiry, RST to whoever sends next.
    let report = demo(&["--expiry", "reset-on-next"]);
    let plain = connection(&report, "no-keepalive");
    assert_eq!(strings(&plain["delivered"]), ["a", "b"]);
    assert_eq!(
        plain["client_error"], "ECONNRESET",
        "the client sent \"c\" and was reset"
    );
    assert_eq!(
        plain["server_error"],
        Value::Null,
        "the idle server is never told"
    );
    let keepalive = connection(&report, "keepalive");
    assert_eq!(strings(&keepalive["delivered"]), ["a", "b", "c"]);
}

/// Two pools so that one outbound rule is silent and the other resets.
fn outbound_config() -> Config {
    let text = r#"
profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "quiet"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[backend_pool]]
name = "loud"
members = [{ name = "vm2", address = "192.0.2.12" }]
[[outbound_rule]]
name = "egress-silent"
frontend = "public"
backend_pool = "quiet"
idle_timeout = "4m"
expiry = "silent"
[[outbound_rule]]
name = "egress-reset"
frontend = "public"
backend_pool = "loud"
idle_timeout = "4m"
expiry = "reset"
"#;
    Config::from_toml(text, "outbound test config").unwrap()
}

fn outcome<'a>(outcomes: &'a [Outcome], name: &str) -> &'a Outcome {
    outcomes.iter().find(|o| o.name == name).unwrap()
}

#[test]
fn outbound_flows_die_silently_survive_with_keepalive_and_reset_both_sides() {
    require_root();
    let config = outbound_config();
    let (outcomes, counters) = Lab::with_gateway(&unique("ob"), &config, |lab| {
        let server_ns = lab.namespace_of(INTERNET)?;
        let script = |name: &str,
                      member: &str,
                      port: u16,
                      keepalive: Option<Duration>|
         -> anyhow::Result<Script> {
            Ok(Script {
                name: name.to_string(),
                client_ns: lab.namespace_of(member)?,
                server_ns: server_ns.clone(),
                listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into(),
                connect: SocketAddrV4::new(INTERNET_ADDRESS, port).into(),
                keepalive,
                sends: vec![
                    (Duration::ZERO, "a".into()),
                    (IDLE / 4, "b".into()),
                    (IDLE / 4 + IDLE * 9 / 8, "c".into()),
                ],
                observe: Duration::from_millis(1500),
            })
        };
        scenario::run(vec![
            script("no-keepalive", "vm1", 8000, None)?,
            script("keepalive", "vm1", 8001, Some(IDLE / 2))?,
            script("tcp-reset", "vm2", 8002, None)?,
        ])
    })
    .expect("lab run");

    let plain = outcome(&outcomes, "no-keepalive");
    assert_eq!(plain.delivered, ["a", "b"]);
    assert_eq!(
        (plain.client_error.as_deref(), plain.server_error.as_deref()),
        (None, None)
    );
    assert!(
        plain.unacked_at_end > 0,
        "\"c\" was written but never acknowledged"
    );

    let keepalive = outcome(&outcomes, "keepalive");
    assert_eq!(keepalive.delivered, ["a", "b", "c"]);
    assert_eq!(
        (
            keepalive.client_error.as_deref(),
            keepalive.server_error.as_deref()
        ),
        (None, None)
    );

    let reset = outcome(&outcomes, "tcp-reset");
    assert_eq!(reset.delivered, ["a", "b"]);
    assert_eq!(
        reset.client_error.as_deref(),
        Some("ECONNRESET"),
        "the member is reset"
    );
    assert_eq!(
        reset.server_error.as_deref(),
        Some("ECONNRESET"),
        "the internet server is reset"
    );

    assert_eq!(counters.flows_created, 3);
    assert_eq!(counters.flows_expired, 2);
    assert!(counters.dropped(DropReason::NoFlow) >= 1);
}

const SNAT_CONFIG: &str = r#"
profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
ports_per_member = 8
"#;

/// An echo server on `port` in the current namespace, until `stop`.
pub(crate) fn echo_server(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(Duration::from_millis(200)))?;
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::SeqCst) {
                        match conn.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
            // No pending connection: wait on the listener for at most 50 ms, then look again.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                use std::os::fd::AsRawFd;
                let _ = idlegate::sys::poll::wait_readable(
                    listener.as_raw_fd(),
                    Some(std::time::Duration::from_millis(50)),
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn echoes(conn: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    let mut buf = [0u8; 1];
    conn.set_read_timeout(Some(Duration::from_secs(3))).is_ok()
        && conn.write_all(b"x").is_ok()
        && conn.read_exact(&mut buf).is_ok()
        && &buf == b"x"
}

#[test]
fn snat_port_exhaustion_refuses_the_extra_connection_spares_the_others_and_the_port_comes_back() {
    // Azure: with every SNAT port of a member lent, its new connection fails and the existing
    // ones keep working; a port is reused 15 s after a RST (scaled by 60: 250 ms).
    require_root();
    let config = Config::from_toml(SNAT_CONFIG, "snat test config").unwrap();
    let target = SocketAddrV4::new(INTERNET_ADDRESS, 8000);
    let ((ninth, all_echo, reconnected), counters) =
        Lab::with_gateway(&unique("sn"), &config, |lab| {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let server_stop = stop.clone();
            let server = idlegate::sys::netns::spawn_in(&lab.namespace_of(INTERNET)?, move || {
                echo_server(8000, server_stop)
            })?;
            let client = idlegate::sys::netns::spawn_in(&lab.namespace_of("vm1")?, move || {
                let connect =
                    |timeout| std::net::TcpStream::connect_timeout(&target.into(), timeout);
                // The server may need a moment to listen: retry the first connection briefly.
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                let first = loop {
                    match connect(Duration::from_secs(1)) {
                        Ok(c) => break c,
                        Err(e) if std::time::Instant::now() > deadline => {
                            panic!("first connection: {e}")
                        }
                        Err(_) => {}
                    }
                };
                let mut conns = vec![first];
                for _ in 1..8 {
                    conns.push(
                        connect(Duration::from_secs(2)).expect("connections 2 to 8 get ports"),
                    );
                }
                let ninth = connect(Duration::from_millis(1500))
                    .map(|_| ())
                    .map_err(|e| e.kind());
                let all_echo = conns.iter_mut().all(echoes);
                // Close one with a RST (linger 0); its port comes back after the hold.
                socket2::SockRef::from(&conns[0])
                    .set_linger(Some(Duration::ZERO))
                    .expect("linger");
                drop(conns.remove(0));
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                let reconnected = loop {
                    match connect(Duration::from_millis(500)) {
                        Ok(mut c) => break echoes(&mut c),
                        Err(_) if std::time::Instant::now() < deadline => {}
                        Err(_) => break false,
                    }
                };
                (ninth, all_echo, reconnected)
            })?;
            let result = client
                .join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = server.join();
            result
        })
        .expect("lab run");
    assert_eq!(
        ninth,
        Err(std::io::ErrorKind::TimedOut),
        "the ninth connection's SYN is dropped"
    );
    assert!(all_echo, "the eight existing connections keep working");
    assert!(
        reconnected,
        "the port came back after the hold and a new connection works"
    );
    assert!(counters.dropped(DropReason::PortExhausted) >= 1);
}

#[test]
fn a_frontends_idle_timeout_beats_its_lb_rules() {
    // Azure "Load Balancer TCP Reset and Idle Timeout", "Order of precedence": "the load
    // balancer frontend IP idle timeout takes precedence".
    require_root();
    let text = r#"
profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "short"
address = "203.0.113.10"
idle_timeout = "4m"
[[frontend]]
name = "plain"
address = "203.0.113.11"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[lb_rule]]
name = "via-short"
frontend = "short"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
idle_timeout = "10m"
[[lb_rule]]
name = "via-plain"
frontend = "plain"
frontend_port = 7001
backend_pool = "vms"
backend_port = 7001
idle_timeout = "10m"
"#;
    let config = Config::from_toml(text, "precedence test config").unwrap();
    let (outcomes, _) = Lab::with_gateway(&unique("pr"), &config, |lab| {
        let script = |name: &str, frontend: Ipv4Addr, port: u16| -> anyhow::Result<Script> {
            Ok(Script {
                name: name.to_string(),
                client_ns: lab.namespace_of(INTERNET)?,
                server_ns: lab.namespace_of("vm1")?,
                listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into(),
                connect: SocketAddrV4::new(frontend, port).into(),
                keepalive: None,
                // Idle 5.5 s: past the frontend's 4 min (4 s), well within the rule's 10 min (10 s).
                sends: vec![
                    (Duration::ZERO, "a".into()),
                    (Duration::from_millis(5500), "b".into()),
                ],
                observe: Duration::from_millis(1500),
            })
        };
        scenario::run(vec![
            script("via-short", Ipv4Addr::new(203, 0, 113, 10), 7000)?,
            script("via-plain", Ipv4Addr::new(203, 0, 113, 11), 7001)?,
        ])
    })
    .expect("lab run");
    assert_eq!(
        outcome(&outcomes, "via-short").delivered,
        ["a"],
        "the frontend's 4 min won"
    );
    assert_eq!(
        outcome(&outcomes, "via-plain").delivered,
        ["a", "b"],
        "the rule's 10 min applies"
    );
}

/// A server on `port` that answers every connection with `name` and closes, until `stop`.
fn name_server(
    port: u16,
    name: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<()> {
    use std::io::Write;
    let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    listener.set_nonblocking(true)?;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false)?;
                conn.write_all(name.as_bytes())?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                use std::os::fd::AsRawFd;
                let _ = idlegate::sys::poll::wait_readable(
                    listener.as_raw_fd(),
                    Some(std::time::Duration::from_millis(50)),
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[test]
fn inbound_nat_rules_reach_the_one_member_each_frontend_port_names() {
    require_root();
    let text = r#"
profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }, { name = "vm2", address = "192.0.2.12" }]
[[inbound_nat_rule]]
name = "to-vm2"
frontend = "public"
frontend_port = 50001
member = "vm2"
backend_port = 2222
[[inbound_nat_rule]]
name = "range"
frontend = "public"
frontend_port_range = [50100, 50101]
backend_pool = "vms"
backend_port = 2222
"#;
    let config = Config::from_toml(text, "inbound NAT test config").unwrap();
    let (answers, _) = Lab::with_gateway(&unique("nt"), &config, |lab| {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut servers = Vec::new();
        for name in ["vm1", "vm2"] {
            let s = stop.clone();
            servers.push(idlegate::sys::netns::spawn_in(
                &lab.namespace_of(name)?,
                move || name_server(2222, name, s),
            )?);
        }
        let client = idlegate::sys::netns::spawn_in(&lab.namespace_of(INTERNET)?, || {
            [50001u16, 50100, 50101].map(|port| {
                use std::io::Read;
                let target = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), port);
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                loop {
                    // The servers may need a moment to listen.
                    match std::net::TcpStream::connect_timeout(
                        &target.into(),
                        Duration::from_secs(1),
                    ) {
                        Ok(mut c) => {
                            let mut answer = String::new();
                            let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                            let _ = c.read_to_string(&mut answer);
                            break answer;
                        }
                        Err(e) if std::time::Instant::now() > deadline => {
                            break format!("error: {e}")
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
        })?;
        let answers = client
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in servers {
            let _ = s.join();
        }
        answers
    })
    .expect("lab run");
    assert_eq!(answers, ["vm2", "vm1", "vm2"]);
}

#[test]
fn ack_and_discard_acknowledges_the_clients_data_and_the_server_never_gets_it() {
    // ACKed but never delivered (what a router or ISP box can do), as a test double.
    let report = demo(&["--expiry", "ack-and-discard"]);
    assert_eq!(plain_fate(&report), (vec!["a", "b"], None, None));
    let plain = connection(&report, "no-keepalive");
    assert_eq!(
        plain["unacknowledged_at_end"], 0,
        "the gateway acknowledged \"c\""
    );
    let reset = connection(&report, "tcp-reset");
    assert_eq!(
        reset["client_error"], "ECONNRESET",
        "the tcp-reset rule is unchanged"
    );
}

#[test]
fn a_udp_answer_after_the_idle_timeout_never_reaches_the_client() {
    // UDP flows live the profile's UDP timeout (azure-lb: 4 min, scaled to 4 s) and end silently.
    require_root();
    let text = r#"
profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[lb_rule]]
name = "udp"
frontend = "public"
protocol = "udp"
frontend_port = 5300
backend_pool = "vms"
backend_port = 5300
[[lb_rule]]
name = "udp-late"
frontend = "public"
protocol = "udp"
frontend_port = 5301
backend_pool = "vms"
backend_port = 5301
"#;
    let config = Config::from_toml(text, "UDP test config").unwrap();
    let (answers, _) = Lab::with_gateway(&unique("ud"), &config, |lab| {
        // The server answers each datagram after `delay`: 1 s on 5300, 5.5 s on 5301.
        let mut servers = Vec::new();
        for (port, delay) in [(5300u16, 1000u64), (5301, 5500)] {
            servers.push(idlegate::sys::netns::spawn_in(
                &lab.namespace_of("vm1")?,
                move || -> std::io::Result<()> {
                    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
                    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut buf = [0u8; 64];
                    let (n, peer) = socket.recv_from(&mut buf)?;
                    std::thread::sleep(Duration::from_millis(delay)); // the scenario's idle time
                    socket.send_to(&buf[..n], peer)?;
                    Ok(())
                },
            )?);
        }
        let client = idlegate::sys::netns::spawn_in(&lab.namespace_of(INTERNET)?, || {
            [5300u16, 5301]
                .map(|port| {
                    std::thread::spawn(move || -> std::io::Result<bool> {
                        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                        socket.connect((Ipv4Addr::new(203, 0, 113, 10), port))?;
                        socket.set_read_timeout(Some(Duration::from_secs(8)))?;
                        socket.send(b"q")?;
                        let mut buf = [0u8; 64];
                        Ok(socket.recv(&mut buf).is_ok())
                    })
                })
                .map(|t| {
                    t.join()
                        .map_err(|_| "client thread panicked")
                        .and_then(|r| r.map_err(|_| "client socket error"))
                })
        })?;
        let answers = client
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        for s in servers {
            let _ = s.join();
        }
        Ok(answers)
    })
    .expect("lab run");
    assert_eq!(
        answers,
        [Ok(true), Ok(false)],
        "answered in time; answered after the UDP timeout"
    );
}

/// The plain connection's fate in a demo report: what arrived, and the errno each side saw.
fn plain_fate(report: &Value) -> (Vec<&str>, Option<&str>, Option<&str>) {
    let plain = connection(report, "no-keepalive");
    (
        strings(&plain["delivered"]),
        plain["client_error"].as_str(),
        plain["server_error"].as_str(),
    )
}

/// The demo under `profile` with its defaults: the plain connection's fate, and the other two.
fn profile_demo(profile: &str) -> Value {
    let report = demo(&["--profile", profile]);
    assert_eq!(report["profile"], profile);
    let keepalive = connection(&report, "keepalive");
    assert_eq!(
        strings(&keepalive["delivered"]),
        ["a", "b", "c"],
        "{profile}: keepalive keeps the flow"
    );
    let reset = connection(&report, "tcp-reset");
    assert_eq!(
        (&reset["client_error"], &reset["server_error"]),
        (&Value::from("ECONNRESET"), &Value::from("ECONNRESET"))
    );
    report
}

#[test]
fn gcp_cloud_nat_forgets_an_idle_outbound_flow_silently() {
    // GCP Cloud NAT "NAT timeouts": 1200 s established, silent.
    let report = profile_demo("gcp-nat");
    assert_eq!(plain_fate(&report), (vec!["a", "b"], None, None));
}

#[test]
fn azure_nat_gateway_resets_the_next_sender_of_an_expired_outbound_flow() {
    // Azure NAT Gateway: silent at expiry, then a RST to the next sender.
    let report = profile_demo("azure-natgw");
    assert_eq!(
        plain_fate(&report),
        (vec!["a", "b"], Some("ECONNRESET"), None)
    );
}

#[test]
fn aws_nat_gateway_resets_the_inside_host_that_sends_after_350_s() {
    // AWS NAT gateway: 350 s fixed; RST to the inside host on its next packet.
    let report = profile_demo("aws-natgw");
    assert_eq!(
        plain_fate(&report),
        (vec!["a", "b"], Some("ECONNRESET"), None)
    );
}

#[test]
fn aws_nlb_resets_the_client_that_sends_on_an_expired_inbound_flow() {
    // AWS NLB: 350 s default; the next packet of the dead flow is answered with a RST.
    let report = profile_demo("aws-nlb");
    assert_eq!(
        plain_fate(&report),
        (vec!["a", "b"], Some("ECONNRESET"), None)
    );
}

#[test]
fn a_nat_gateway_beats_the_outbound_rule_of_the_pool_it_serves() {
    // Azure, "Order of precedence": "a NAT gateway will always take precedence over load
    // balancer outbound rules".
    require_root();
    let text = r#"
profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[frontend]]
name = "natgw-ip"
address = "203.0.113.20"
[[backend_pool]]
name = "served"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[backend_pool]]
name = "unserved"
members = [{ name = "vm2", address = "192.0.2.12" }]
[[outbound_rule]]
name = "egress-served"
frontend = "public"
backend_pool = "served"
idle_timeout = "30m"
[[outbound_rule]]
name = "egress-unserved"
frontend = "public"
backend_pool = "unserved"
idle_timeout = "30m"
[[nat_gateway]]
name = "natgw"
frontend = "natgw-ip"
backend_pools = ["served"]
idle_timeout = "4m"
"#;
    let config = Config::from_toml(text, "NAT gateway test config").unwrap();
    let (outcomes, _) = Lab::with_gateway(&unique("ng"), &config, |lab| {
        let script = |name: &str, member: &str, port: u16| -> anyhow::Result<Script> {
            Ok(Script {
                name: name.to_string(),
                client_ns: lab.namespace_of(member)?,
                server_ns: lab.namespace_of(INTERNET)?,
                listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into(),
                connect: SocketAddrV4::new(INTERNET_ADDRESS, port).into(),
                keepalive: None,
                // Idle 5.5 s: past the NAT gateway's 4 min (4 s), within the rules' 30 min.
                sends: vec![
                    (Duration::ZERO, "a".into()),
                    (Duration::from_millis(5500), "b".into()),
                ],
                observe: Duration::from_millis(1500),
            })
        };
        scenario::run(vec![
            script("via-natgw", "vm1", 8000)?,
            script("via-outbound-rule", "vm2", 8001)?,
        ])
    })
    .expect("lab run");
    let served = outcome(&outcomes, "via-natgw");
    assert_eq!(
        served.delivered,
        ["a"],
        "the NAT gateway's 4 min won over the rule's 30 min"
    );
    assert_eq!(
        served.client_error.as_deref(),
        Some("ECONNRESET"),
        "and its reset to the next sender"
    );
    assert_eq!(
        outcome(&outcomes, "via-outbound-rule").delivered,
        ["a", "b"]
    );
}

#[test]
fn azure_default_outbound_access_forgets_an_idle_flow_silently_after_4_min() {
    // Azure "SNAT for outbound connections": default outbound access, 4 min fixed, no RST.
    let report = profile_demo("azure-snat");
    assert_eq!(plain_fate(&report), (vec!["a", "b"], None, None));
}

#[test]
fn azure_firewall_resets_both_ends_of_an_idle_flow() {
    // Azure "Understanding Azure Firewall TCP session management": north-south 4 min, then a
    // RST to both endpoints.
    let report = profile_demo("azure-firewall");
    assert_eq!(
        plain_fate(&report),
        (vec!["a", "b"], Some("ECONNRESET"), Some("ECONNRESET"))
    );
}

#[test]
fn azure_firewall_east_west_forgets_an_idle_flow_after_5_min_and_tells_no_one() {
    // Same page: east-west 5 min fixed, and no RST: "c" is lost and neither end is told.
    let report = profile_demo("azure-firewall-east-west");
    assert_eq!(plain_fate(&report), (vec!["a", "b"], None, None));
}

#[test]
fn azure_app_service_outbound_forgets_an_idle_flow_silently_after_4_min() {
    // Azure "Troubleshooting intermittent outbound connection errors in Azure App Service":
    // Azure's outbound SNAT, 4 min, silent.
    let report = profile_demo("azure-appservice");
    assert_eq!(plain_fate(&report), (vec!["a", "b"], None, None));
}

#[test]
fn an_rfc_5382_nat_forgets_an_idle_flow_no_sooner_than_2_h_4_min() {
    // RFC 5382 REQ-5: at least 2 h 4 min established; scaled here to about 4 s.
    let report = profile_demo("rfc5382");
    assert!(
        report["idle_timeout_s"].as_f64().unwrap() >= 3.9,
        "{report}"
    );
    assert_eq!(plain_fate(&report), (vec!["a", "b"], None, None));
}

#[test]
fn linux_conntrack_forgets_an_idle_flow_and_loose_pickup_lets_the_client_carry_on() {
    // nf_conntrack_tcp_loose=1: the client's next segment after the established timeout makes
    // a new entry to the same member, so "c" arrives; the gateway counted the expiry.
    let report = profile_demo("linux-conntrack");
    assert_eq!(plain_fate(&report), (vec!["a", "b", "c"], None, None));
    assert!(report["gateway"]["flows_expired"].as_u64().unwrap() >= 2);
    assert!(report["gateway"]["flows_created"].as_u64().unwrap() >= 4);
}

#[test]
fn kube_proxy_is_linux_conntrack_with_its_own_established_timeout() {
    // kube-proxy: --conntrack-tcp-timeout-established 24 h, otherwise the kernel's conntrack.
    let report = profile_demo("kube-proxy");
    assert_eq!(plain_fate(&report), (vec!["a", "b", "c"], None, None));
}

#[test]
fn ipvs_forgets_an_idle_flow_silently() {
    // ipvsadm(8): 900 s established by default; silent.
    let report = profile_demo("ipvs");
    assert_eq!(plain_fate(&report), (vec!["a", "b"], None, None));
}

#[test]
fn gcp_vpc_firewall_forgets_an_idle_flow_silently_after_10_min() {
    // GCP VPC firewall connection tracking: 10 min, silent.
    let report = profile_demo("gcp-firewall");
    assert_eq!(report["idle_timeout_s"], 4.0);
    assert_eq!(plain_fate(&report), (vec!["a", "b"], None, None));
}

#[test]
fn aws_alb_closes_idle_connections_even_with_tcp_keepalive() {
    // AWS ALB: only data refreshes the idle timeout, so keepalive probes do not save the
    // connection; at expiry both ends are closed (reset, for an L4 gateway).
    let report = demo(&["--profile", "aws-alb"]);
    for name in ["no-keepalive", "keepalive"] {
        let c = connection(&report, name);
        assert_eq!(strings(&c["delivered"]), ["a", "b"], "{name}");
        assert_eq!(
            (&c["client_error"], &c["server_error"]),
            (&Value::from("ECONNRESET"), &Value::from("ECONNRESET")),
            "{name}"
        );
    }
}
