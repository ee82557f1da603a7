//! `idlegate audit` in a namespace of the lab: connections made by this test, with and without
//! keepalive, idle and busy, and one whose data is stuck behind the gateway's silent drop; each
//! gets the right verdict, owner and reason. Root is needed (namespaces, TUN devices).

use crate::common;

use common::{require_root, unique};
use idlegate::lab::{Lab, INTERNET};
use idlegate::sys::netns;
use idlegate_core::Config;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");

fn config() -> Config {
    common::one_rule_lab("silent")
}

/// A connection from `internet` to the frontend, made in that namespace, with keepalive
/// `IDLE,INTERVAL,COUNT` in seconds if given.
fn connect(ns: &str, keepalive: Option<(u64, u64, u32)>) -> TcpStream {
    let conn = netns::spawn_in(ns, || TcpStream::connect("203.0.113.10:7000"))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    if let Some((idle, interval, count)) = keepalive {
        let params = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(idle))
            .with_interval(Duration::from_secs(interval))
            .with_retries(count);
        socket2::SockRef::from(&conn)
            .set_tcp_keepalive(&params)
            .unwrap();
    }
    conn
}

#[test]
fn audit_gives_each_connection_its_verdict_owner_and_reason() {
    require_root();
    let report = Lab::with_gateway(&unique("au"), &config(), |lab| {
        let internet = lab.namespace_of(INTERNET)?;
        let vm1 = lab.namespace_of("vm1")?;
        let listener = netns::spawn_in(&vm1, || TcpListener::bind("0.0.0.0:7000"))?
            .join()
            .unwrap()?;
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut conn = conn;
                    let mut sink = [0u8; 1024];
                    while conn.read(&mut sink).is_ok_and(|n| n > 0) {}
                });
            }
        });
        let safe = connect(&internet, Some((1, 1, 3)));
        let slow = connect(&internet, Some((10, 5, 3)));
        let idle = connect(&internet, None);
        let busy = connect(&internet, None);
        let mut stuck = connect(&internet, None);
        let stop = Arc::new(AtomicBool::new(false));
        let chatter = {
            let (stop, mut busy) = (stop.clone(), busy.try_clone()?);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = busy.write_all(b"tick");
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        // Past the 3 s timeout: the gateway forgets every flow without keepalive or traffic;
        // then `stuck` writes into the void.
        std::thread::sleep(Duration::from_secs(4));
        stuck.write_all(b"lost")?;
        std::thread::sleep(Duration::from_millis(800));
        let args = [
            "audit",
            "--netns",
            internet.as_str(),
            "--idle-timeout",
            "3s",
            "--json",
        ];
        let out = Command::new(IDLEGATE).args(args).output()?;
        stop.store(true, Ordering::Relaxed);
        chatter.join().unwrap();
        common::assert_success(&out, &args);
        let report: Value = serde_json::from_slice(&out.stdout)?;
        let ports =
            [&safe, &slow, &idle, &busy, &stuck].map(|c| c.local_addr().unwrap().to_string());
        Ok((report, ports))
    })
    .expect("lab run")
    .0;
    let (report, ports) = report;
    let conns = report["connections"].as_array().unwrap();
    let find = |local: &str| {
        conns
            .iter()
            .find(|c| c["local"] == local)
            .unwrap_or_else(|| panic!("{local} not in {report:#}"))
    };
    let me = std::process::id();
    for (local, verdict, reason) in [
        (&ports[0], "safe", "probes after 1 s"),
        (&ports[1], "at-risk", "only after 10 s"),
        (&ports[2], "at-risk", "no keepalive"),
        (&ports[3], "at-risk", "no keepalive"),
        (&ports[4], "stalled", "unacknowledged and retransmitting"),
    ] {
        let c = find(local);
        assert_eq!(c["verdict"], verdict, "{c:#}");
        assert!(c["reason"].as_str().unwrap().contains(reason), "{c:#}");
        assert_eq!(c["pid"], me, "the owner: this test process");
        assert_eq!(c["remote"], "203.0.113.10:7000");
    }
    // Read from the sockets themselves (this audit runs as root).
    let safe = find(&ports[0]);
    assert_eq!(
        (
            safe["keepalive_idle_s"].clone(),
            safe["keepalive_interval_s"].clone(),
            safe["keepalive_count"].clone()
        ),
        (1.into(), 1.into(), 3.into())
    );
    assert!(
        find(&ports[3])["idle_s"].as_f64().unwrap() < 1.0,
        "busy is not idle"
    );
    assert!(
        find(&ports[2])["idle_s"].as_f64().unwrap() > 3.0,
        "idle is idle"
    );
    assert!(find(&ports[4])["unacked"].as_u64().unwrap() >= 1);
    // Worst first.
    assert_eq!(conns[0]["verdict"], "stalled");
    assert_eq!(report["sysctl"]["tcp_keepalive_time"], 7200);
    assert_eq!(report["sysctl_verdict"], "at-risk");
}

/// `idlegate audit ARGS…` as user nobody (a copy of the binary it may run), inside network
/// namespace `ns` if given (entered as root by `ip netns exec`, then the user dropped with
/// setpriv), else in this one.
fn audit_as_nobody(ns: Option<&str>, args: &[&str]) -> std::process::Output {
    let (_dir, idlegate) = common::runnable_by_anyone(IDLEGATE);
    let mut command = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "setpriv"]);
            c
        }
        None => Command::new("setpriv"),
    };
    command
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(idlegate)
        .arg("audit")
        .args(args)
        .output()
        .expect("setpriv (util-linux) runs idlegate as nobody")
}

/// Two connections made in `ns` from the second of its two non-loopback addresses to a
/// listener on the first: the first connection, its peer, the second, its peer.
fn pair_in(ns: &str) -> [TcpStream; 4] {
    let [server, client] = common::non_loopback_pair(ns);
    let listener = netns::spawn_in(ns, move || TcpListener::bind((server, 7000)))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let connect = move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&std::net::SocketAddr::from((client, 0)).into())?;
        socket.connect(&std::net::SocketAddr::from((server, 7000)).into())?;
        Ok::<TcpStream, std::io::Error>(socket.into())
    };
    let first = netns::spawn_in(ns, connect)
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let (peer1, _) = listener.accept().unwrap();
    let second = netns::spawn_in(ns, connect)
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let (peer2, _) = listener.accept().unwrap();
    [first, peer1, second, peer2]
}

#[test]
fn without_privilege_audit_still_judges_but_says_the_timers_are_unknown() {
    require_root();
    // Two connections between non-loopback addresses (loopback ones are not judged), in a
    // namespace of this test's own.
    let ns = netns::Namespace::create(&unique("an")).expect("a network namespace");
    let [with, _peer1, without, _peer2] = pair_in(ns.name());
    let params = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    socket2::SockRef::from(&with)
        .set_tcp_keepalive(&params)
        .unwrap();
    // nobody: may list sockets, may not take them.
    let args = ["--idle-timeout", "4m", "--json"];
    let out = audit_as_nobody(Some(ns.name()), &args);
    common::assert_success(&out, &args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |s: &TcpStream| {
        let local = s.local_addr().unwrap().to_string();
        report["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["local"] == local.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{local} not in {report:#}"))
    };
    let (with, without) = (find(&with), find(&without));
    // From the armed timer alone: on; its timers unknown, so never called safe on a guess.
    assert_eq!(with["keepalive"], true);
    assert_eq!(
        with["keepalive_idle_s"],
        Value::Null,
        "its own timers are unknown"
    );
    assert!(with["next_probe_s"].as_f64().unwrap() > 30.0, "{with:#}");
    assert_eq!(with["verdict"], "at-risk");
    assert!(
        with["reason"].as_str().unwrap().contains("cannot be read"),
        "{with:#}"
    );
    assert_eq!(without["keepalive"], false);
    assert_eq!(without["verdict"], "at-risk");
}

#[test]
fn an_idle_loopback_connection_is_counted_not_judged() {
    require_root();
    // Loopback in every form a socket shows: 127.0.0.0/8, ::1, and 127.0.0.1 as a
    // dual-stack listener sees it (::ffff:127.0.0.1); all idle and without keepalive, which
    // through a box would be at-risk.
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let dual = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    dual.set_only_v6(false).unwrap();
    dual.bind(&"[::]:0".parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    dual.listen(8).unwrap();
    let dual: TcpListener = dual.into();
    let dual_port = dual.local_addr().unwrap().port();
    let mut ends = Vec::new();
    for (listener, to) in [
        (&v4, v4.local_addr().unwrap()),
        (&v6, v6.local_addr().unwrap()),
        (
            &dual,
            std::net::SocketAddr::from(([127, 0, 0, 1], dual_port)),
        ),
    ] {
        let client = TcpStream::connect(to).unwrap();
        let (server, _) = listener.accept().unwrap();
        ends.push(client);
        ends.push(server);
    }
    let locals: Vec<String> = ends
        .iter()
        .map(|s| s.local_addr().unwrap().to_string())
        .collect();
    assert!(
        locals.iter().any(|l| l.starts_with("[::ffff:127.0.0.1]:")),
        "a v4-mapped end: {locals:?}"
    );
    let out = common::idlegate_ok(&["audit", "--idle-timeout", "4m", "--json"]);
    let report: Value = serde_json::from_slice(&out).unwrap();
    for c in report["connections"].as_array().unwrap() {
        let local = c["local"].as_str().unwrap();
        assert!(!locals.iter().any(|l| l == local), "{local} judged: {c:#}");
    }
    let counted = report["loopback_connections"].as_u64().expect("a count");
    assert!(
        counted >= 6,
        "{counted} loopback connections counted, 6 made"
    );
    let text = Command::new(IDLEGATE)
        .args(["audit", "--idle-timeout", "4m"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("not through a box: ")
            && l.ends_with(" loopback connections, not judged (no box sits on loopback)")),
        "{text}"
    );
    for local in &locals {
        assert!(!text.contains(local.as_str()), "{local} in\n{text}");
    }
}

#[test]
fn audit_of_another_namespace_as_an_ordinary_user_says_it_needs_root() {
    require_root();
    let ns = netns::Namespace::create(&unique("ap")).expect("a network namespace");
    let out = audit_as_nobody(None, &["--netns", ns.name()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "idlegate: setns into network namespace {}: Operation not permitted (os error 1)",
                ns.name()
            ),
            format!(
                "hint: entering another network namespace needs CAP_SYS_ADMIN: run the audit as root: sudo idlegate audit --netns {}",
                ns.name()
            ),
        ],
        "{stderr}"
    );
}

/// The example config a user would import or write: an LB rule on port 7000 (and one on 7001)
/// and an outbound rule.
const AZURE_LB_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/azure-lb.toml");

#[test]
fn audit_by_a_config_judges_each_connection_by_the_rule_its_port_and_direction_name() {
    require_root();
    let text = std::fs::read_to_string(AZURE_LB_EXAMPLE).expect("examples/azure-lb.toml");
    let config = Config::from_toml(&text, AZURE_LB_EXAMPLE).unwrap();
    let ((json, table, inbound, outbound), _) = Lab::with_gateway(&unique("auc"), &config, |lab| {
        let internet = lab.namespace_of(INTERNET)?;
        // Both members serve the LB rule's backend port (the rule picks one by a hash);
        // internet serves the outbound connection of the member that was picked.
        let mut backends = Vec::new();
        for vm in ["vm1", "vm2"] {
            let ns = lab.namespace_of(vm)?;
            let listener = netns::spawn_in(&ns, || TcpListener::bind("0.0.0.0:7000"))?
                .join()
                .unwrap()?;
            listener.set_nonblocking(true)?;
            backends.push((ns, listener));
        }
        let remote = netns::spawn_in(&internet, || TcpListener::bind("0.0.0.0:8000"))?
            .join()
            .unwrap()?;
        let _from_outside = connect(&internet, None);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let (member, inbound) = loop {
            if let Some(found) = backends
                .iter()
                .find_map(|(ns, l)| l.accept().ok().map(|(c, _)| (ns.clone(), c)))
            {
                break found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no member accepted the connection from internet"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let outbound = netns::spawn_in(&member, || TcpStream::connect("203.0.113.100:8000"))?
            .join()
            .unwrap()?;
        let (_outbound_peer, _) = remote.accept()?;
        let run = |json: bool| {
            let mut args = vec![
                "audit",
                "--netns",
                member.as_str(),
                "--config",
                AZURE_LB_EXAMPLE,
            ];
            if json {
                args.push("--json");
            }
            let out = Command::new(IDLEGATE).args(&args).output().unwrap();
            common::assert_success(&out, &args);
            out.stdout
        };
        let json: Value = serde_json::from_slice(&run(true))?;
        let table = String::from_utf8(run(false))?;
        Ok((
            json,
            table,
            inbound.local_addr()?.to_string(),
            outbound.local_addr()?.to_string(),
        ))
    })
    .expect("lab run");
    assert_eq!(json["config"], AZURE_LB_EXAMPLE);
    let rules: Vec<&str> = json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["app", "app-with-reset", "egress"]);
    let conns = json["connections"].as_array().unwrap();
    let find = |local: &str| {
        conns
            .iter()
            .find(|c| c["local"] == local)
            .unwrap_or_else(|| panic!("{local} not in {json:#}"))
    };
    for (local, rule, kind) in [
        (&inbound, "app", "lb-rule"),
        (&outbound, "egress", "outbound-rule"),
    ] {
        let c = find(local);
        assert_eq!(c["judged_by"]["rule"], rule, "{c:#}");
        assert_eq!(c["judged_by"]["kind"], kind, "{c:#}");
        // The box's own 4 minutes, not the lab's scaled 4 seconds.
        assert_eq!(c["idle_timeout_s"], 240, "{c:#}");
        assert_eq!(c["verdict"], "at-risk", "{c:#}");
    }
    let line = |local: &str| {
        table
            .lines()
            .find(|l| l.contains(&format!(" {local} ")))
            .unwrap_or_else(|| panic!("{local} not in\n{table}"))
            .to_string()
    };
    assert!(
        line(&inbound).ends_with("judged by lb_rule \"app\" (240 s)"),
        "{table}"
    );
    assert!(
        line(&outbound).ends_with("judged by outbound_rule \"egress\" (240 s)"),
        "{table}"
    );
    assert!(
        table.starts_with(&format!("idle timeouts of {AZURE_LB_EXAMPLE}:\n")),
        "{table}"
    );
}

#[test]
fn audit_for_a_member_judges_its_outbound_connection_by_its_own_pools_path() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("two.toml");
    std::fs::write(&config, common::TWO_POOLS).unwrap();
    let config = config.to_str().unwrap();
    // A connection to a listener on port 7000 (both pools' LB rules' backend port): the
    // listener's end is inbound, the connecting end (an ephemeral port) outbound.
    let ns = netns::Namespace::create(&unique("am")).expect("a network namespace");
    let [client, server, _, _] = pair_in(ns.name());
    let audit = |extra: &[&str], json: bool| {
        let mut args = vec!["audit", "--netns", ns.name(), "--config", config];
        args.extend_from_slice(extra);
        if json {
            args.push("--json");
        }
        let out = Command::new(IDLEGATE).args(&args).output().unwrap();
        common::assert_success(&out, &args);
        out.stdout
    };
    let judged = |report: &Value, end: &TcpStream| {
        let local = end.local_addr().unwrap().to_string();
        let c = report["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["local"] == local.as_str())
            .unwrap_or_else(|| panic!("{local} not in {report:#}"));
        (
            c["judged_by"]["rule"].as_str().unwrap().to_string(),
            c["judged_by"]["among"].as_u64().unwrap(),
            c["idle_timeout_s"].as_u64().unwrap(),
        )
    };
    let json = |extra: &[&str]| -> Value { serde_json::from_slice(&audit(extra, true)).unwrap() };
    let vm1 = json(&["--member", "vm1"]);
    assert_eq!(vm1["member"], "vm1");
    assert_eq!(vm1["member_hint"], Value::Null);
    assert_eq!(judged(&vm1, &client), ("web-out".into(), 1, 1800));
    assert_eq!(judged(&vm1, &server), ("web-app".into(), 1, 1500));
    let vm2 = json(&["--member", "vm2"]);
    assert_eq!(judged(&vm2, &client), ("natgw".into(), 1, 240));
    assert_eq!(judged(&vm2, &server), ("workers-app".into(), 1, 300));
    // Without a member: the shortest of the three outbound paths, said so, with the hint.
    let all = json(&[]);
    assert_eq!(all["member"], Value::Null);
    assert_eq!(judged(&all, &client), ("natgw".into(), 3, 240));
    assert_eq!(judged(&all, &server), ("workers-app".into(), 2, 300));
    let hint = all["member_hint"].as_str().expect("a hint");
    assert!(
        hint.ends_with("say which member this host is with --member NAME (the members: vm1, vm2)"),
        "{hint}"
    );
    let table = String::from_utf8(audit(&["--member", "vm1"], false)).unwrap();
    assert!(
        table.starts_with(&format!("idle timeouts of {config} for member vm1:\n")),
        "{table}"
    );
    let local = client.local_addr().unwrap().to_string();
    let line = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
        .unwrap_or_else(|| panic!("{local} not in\n{table}"));
    assert!(
        line.ends_with("judged by outbound_rule \"web-out\" (1800 s)"),
        "{table}"
    );
    let table = String::from_utf8(audit(&[], false)).unwrap();
    assert!(table.contains(&format!("\nnote: {hint}\n")), "{table}");
}
