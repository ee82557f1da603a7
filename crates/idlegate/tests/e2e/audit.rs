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
        let out = Command::new(IDLEGATE)
            .args([
                "audit",
                "--netns",
                &internet,
                "--idle-timeout",
                "3s",
                "--json",
            ])
            .output()?;
        stop.store(true, Ordering::Relaxed);
        chatter.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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

#[test]
fn without_privilege_audit_still_judges_but_says_the_timers_are_unknown() {
    require_root();
    use std::os::unix::process::CommandExt;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let with = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let _peer1 = listener.accept().unwrap();
    let params = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    socket2::SockRef::from(&with)
        .set_tcp_keepalive(&params)
        .unwrap();
    let without = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let _peer2 = listener.accept().unwrap();
    let (_dir, idlegate) = common::runnable_by_anyone(IDLEGATE);
    let out = Command::new(idlegate)
        .args(["audit", "--idle-timeout", "4m", "--json"])
        .uid(65534) // nobody: may list sockets, may not take them
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
