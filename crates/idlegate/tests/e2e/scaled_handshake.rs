//! A time-scaled lab stays faithful to a handshake that loses a packet: the timers that race
//! TCP's own, unscaled retransmission timers run at least `TCP_RETRANSMISSION_FLOOR`.
//!
//! Azure LB's 30 s handshake timer scaled by 60 would run 500 ms, under TCP's initial
//! retransmission timeout of 1 s (RFC 6298 §2.1; Linux `TCP_TIMEOUT_INIT`): without the floor,
//! a handshake whose last ACK is lost outlives its flow and the server's retransmitted SYN-ACK
//! finds none (the engine test
//! `a_handshake_whose_last_ack_is_lost_recovers_at_the_syn_acks_retransmission_under_time_scale_60`
//! shows that in virtual time). Needs root and `nft`.

use crate::common::{self, require_root, unique};

use idlegate::lab::{Lab, INTERNET};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PORT: u16 = 7000;

/// Runs `program args` in namespace `ns`, feeding it `stdin`; returns its stdout, or fails
/// the test naming what is missing.
fn run_in(ns: &str, program: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running `ip netns exec {ns} {program}`: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "`ip netns exec {ns} {program} {}` failed ({}); scripts/setup installs nftables: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Drops, in the client's namespace, the handshake's last ACK once: the pure ACK that is the
/// connection's second packet in its original direction (conntrack's accounting counts it
/// before the filter hook sees it, so its retransmission is the third and passes).
fn drop_the_handshakes_ack_once(ns: &str) {
    run_in(
        ns,
        "sysctl",
        &["-qw", "net.netfilter.nf_conntrack_acct=1"],
        "",
    );
    let rules = format!(
        "table ip idlegate_scaled {{\n\
           chain out {{\n\
             type filter hook output priority filter; policy accept;\n\
             tcp dport {PORT} tcp flags == ack ct original packets 2 counter drop\n\
           }}\n\
         }}\n"
    );
    run_in(ns, "nft", &["-f", "-"], &rules);
}

/// How many packets the drop rule dropped.
fn dropped(ns: &str) -> u64 {
    let listing = run_in(ns, "nft", &["list", "table", "ip", "idlegate_scaled"], "");
    let at = listing
        .find("counter packets ")
        .unwrap_or_else(|| panic!("no counter in {listing}"));
    listing[at + "counter packets ".len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {listing}"))
}

#[test]
fn a_handshake_whose_last_ack_is_dropped_once_still_comes_up_at_time_scale_60() {
    require_root();
    let config = common::one_member_lab(
        "profile = \"azure-lb\"\ntime_scale = 60",
        &format!(
            "[[lb_rule]]\nname = \"app\"\nfrontend = \"public\"\nfrontend_port = {PORT}\n\
             backend_pool = \"vms\"\nbackend_port = {PORT}\n"
        ),
    );
    let (result, _) = Lab::with_gateway(&unique("sh"), &config, |lab| {
        let client_ns = lab.namespace_of(INTERNET)?;
        drop_the_handshakes_ack_once(&client_ns);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // The server greets first: the client sends nothing of its own before the server has
        // accepted, so only the retransmitted SYN-ACK can complete the handshake.
        let server = idlegate::sys::netns::spawn_in(&lab.namespace_of("vm1")?, move || {
            let listener = TcpListener::bind(("0.0.0.0", PORT)).expect("listening in vm1");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            // SYN-ACK retransmissions leave 1 s, 3 s, 7 s after the first: 10 s is plenty.
            let deadline = Instant::now() + Duration::from_secs(10);
            let (mut conn, _) = loop {
                match listener.accept() {
                    Ok(accepted) => break accepted,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err("the server never accepted".to_string());
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            let accepted_at = Instant::now();
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            conn.write_all(b"hello").map_err(|e| e.to_string())?;
            let mut reply = [0u8; 5];
            conn.read_exact(&mut reply).map_err(|e| e.to_string())?;
            Ok((accepted_at, reply))
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow::anyhow!("the server never listened"))?;
        let client = idlegate::sys::netns::spawn_in(&client_ns, || {
            let target = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), PORT);
            let started = Instant::now();
            let mut conn = TcpStream::connect_timeout(&target.into(), Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut greeting = [0u8; 5];
            conn.read_exact(&mut greeting).map_err(|e| e.to_string())?;
            conn.write_all(b"world").map_err(|e| e.to_string())?;
            Ok::<_, String>((started, greeting))
        })?;
        let client = client
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        let server = server
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
        Ok((client, server, dropped(&client_ns)))
    })
    .expect("lab run");
    let (client, server, dropped) = result;
    assert_eq!(dropped, 1, "the handshake's ACK was dropped exactly once");
    let (started, greeting) = client.expect("the client's side");
    let (accepted_at, reply) = server.expect("the server's side");
    assert_eq!(&greeting, b"hello", "server to client");
    assert_eq!(&reply, b"world", "client to server");
    // The connection came up through the SYN-ACK's retransmission, after the 500 ms the
    // scaled handshake timer would have given the flow.
    let waited = accepted_at - started;
    assert!(
        waited >= Duration::from_millis(900),
        "accepted after {waited:?}: the ACK was not the one dropped"
    );
}

#[test]
fn explain_json_shows_the_timers_that_run_at_the_floor() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/azure-lb.toml")
        .display()
        .to_string();
    let stdout = common::idlegate_ok(&["gateway", "--explain", "--json", "--config", &config]);
    let e: Value = serde_json::from_slice(&stdout).expect("one JSON document");
    assert_eq!(e["time_scale"], 60);
    assert_eq!(e["floor_s"], 3.0);
    let syn_recv = &e["tcp_not_established"][1];
    assert_eq!(syn_recv["state"], "SYN_RECV");
    assert_eq!(syn_recv["timeout_s"], 30.0);
    assert_eq!(syn_recv["scaled_s"], 0.5);
    assert_eq!(syn_recv["runs_s"], 3.0);
    assert_eq!(syn_recv["floored"], true);
    let rst = &e["snat_holds"][1];
    assert_eq!(
        (&rst["after"], &rst["runs_s"]),
        (&"rst".into(), &3.0.into())
    );
    // The rule's established idle timeout stays purely scaled.
    assert_eq!(e["rules"][0]["tcp"]["runs_s"], 4.0);
    let text = String::from_utf8(common::idlegate_ok(&[
        "gateway",
        "--explain",
        "--config",
        &config,
    ]))
    .unwrap();
    assert!(
        text.contains(
            "SYN_RECV 30 s: 500 ms scaled, runs 3 s (floor: TCP's retransmission timeout is not scaled)"
        ),
        "{text}"
    );
}
