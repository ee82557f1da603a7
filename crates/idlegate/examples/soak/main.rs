//! Soak, for `scripts/soak` (root): thousands of concurrent connections through a lab's
//! gateway and as many through `idlegate relay` (and the gateway after it), for minutes, with
//! idle gaps shorter and longer than the box's idle timeout.
//!
//! `soak --idlegate PATH --connections N --seconds S`
//!
//! It brings up `idlegate lab up` (Azure LB, 4 min scaled to 4 s, the demo's scale of 60, silent
//! expiry), a relay in the
//! lab's internet host and an echo server in `vm1` (`soak echo ADDR CONNECTIONS`, a process of
//! its own so that each side has its own descriptor limit), then runs N connections through
//! the relay and N straight to the gateway, a third each of the other three kinds, every one
//! sending 64-byte numbered messages whose echo must come back byte for byte:
//! - `steady`: gaps of 0.2–2 s, under the idle timeout: every message must come back;
//! - `keepalive`: gaps of 5.5–8 s with TCP keepalive every second: every message must come
//!   back;
//! - `relay`: gaps of 5.5–8 s through the relay, no keepalive of their own: every message must
//!   come back;
//! - `expiring`: one gap of 5.5–8 s without keepalive: the box forgets the flow, so the message
//!   after the gap is lost and the connection times out, as designed (counted, not a failure).
//!
//! It samples the gateway's and the relay's memory (RSS) and open descriptors once every
//! connection is up and again at the end, prints a table, and fails unless both stayed flat:
//! no more descriptors at the end, and RSS grown by at most 5% + 1 MiB.
//!
//! Then come the faults, mid-traffic, with the soak's connections still open:
//! 1. `kill -9` of the relay while each of its clients has a message out: every client is
//!    told (end of stream or reset) within 10 s, none is left hanging, and a relay started again
//!    on the same port carries new connections;
//! 2. `kill -9` of `lab up` while the gateway's connections have messages out: its TUN devices
//!    vanish with it, the next `lab up` of the same name removes the namespaces it left and
//!    stops the programs in them (the old echo server), its gateway starts with no flows, and
//!    new connections through it are echoed.
//!
//! (The kill -9 of a standalone `idlegate gateway` under a resumable tunnel, which must lose no
//! byte, is the test `a_tunnel_through_the_gateway_resumes_after_the_gateway_is_killed_and_restarted`.)
//!
//! It exits 1 if a promised message was lost, a connection of the first three kinds failed, or
//! a fault did not end as described; after the last `lab up` stops, no namespace of the soak's
//! lab may be left.

// Linux only (network namespaces, `lab up`): built for another target it says so and exits 2.
#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

#[cfg(target_os = "linux")]
mod client;
#[cfg(target_os = "linux")]
mod echo;
#[cfg(target_os = "linux")]
mod faults;
#[cfg(target_os = "linux")]
mod processes;
#[cfg(target_os = "linux")]
mod traffic;

#[cfg(target_os = "linux")]
use client::Load;
#[cfg(target_os = "linux")]
use echo::echo_server;
#[cfg(target_os = "linux")]
use processes::{namespaces_of, stop, Soak};
use std::net::SocketAddr;
use std::time::Duration;

type Error = Box<dyn std::error::Error>;

pub const MESSAGE: usize = 64;
/// The box's idle timeout: Azure's 4 min divided by the config's `time_scale` of 60, the
/// demo's (examples/azure-lb.toml). The scale divides the handshake timer (30 s) too, but the
/// engine floors the timers that race TCP's own, unscaled retransmissions at 3 s
/// (`TCP_RETRANSMISSION_FLOOR`): a handshake that loses a packet in the first second's burst of
/// 20,000 connects is recovered by its retransmission 1 s later, as in real time.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// TCP keepalive for the `keepalive` connections and the relay's: a probe after 1 s idle, then
/// every second, 9 unanswered (Linux's default count) before the connection is given up. With 3,
/// ten thousand connections made in the same second probe in step, and this 2-core machine's
/// kernel dropped bursts of them (softnet backlog, 1,000 packets): 3 lost in a row killed 85 of
/// 9,700 relayed connections in ten minutes. Any probe that reaches the gateway refreshes the
/// flow, lost afterwards or not. With the 4 s idle timeout three probes (1, 2 and 3 s into a
/// gap) must all be lost for a flow to expire; 1 s is the shortest idle time TCP_KEEPIDLE
/// takes.
pub const KEEPALIVE: &str = "1s,1s,9";
/// How long a fault may take to show (a client told, a process gone, a lab up).
pub const FAULT_WAIT: Duration = Duration::from_secs(10);
/// New connections made after each fault, each of which must be echoed.
pub const AFTER_FAULT: usize = 100;
pub const CONFIG: &str = r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[lb_rule]]
name = "soak"
frontend = "public"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
expiry = "silent"
"#;
pub const FRONTEND: &str = "203.0.113.10:7000";
pub const RELAY_AT: &str = "127.0.0.1:9000";
pub const SERVER: &str = "192.0.2.11:7000";

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("idlegate: soak: runs on Linux only (it needs network namespaces)");
    std::process::exit(2);
}

#[cfg(target_os = "linux")]
fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("echo") {
        // The server side, a process of its own (its own descriptor limit), in vm1.
        let addr: SocketAddr = args.get(2).ok_or("echo ADDR")?.parse()?;
        let connections: u64 = args.get(3).ok_or("echo ADDR CONNECTIONS")?.parse()?;
        idlegate::sys::rlimit::raise_descriptor_limit(connections + 1024)?;
        return echo_server(addr);
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let idlegate = value("--idlegate").ok_or("--idlegate PATH")?;
    let connections: usize = value("--connections").unwrap_or("10000".into()).parse()?;
    let seconds: u64 = value("--seconds").unwrap_or("600".into()).parse()?;
    // The client end of every connection; the echo server and the relay are processes of
    // their own, and inherit the limit. The client holds one descriptor a connection, the
    // relay two for each of its own (and those made after its kill): as many go through the
    // relay as both can hold, up to N.
    let have =
        idlegate::sys::rlimit::raise_descriptor_limit(4 * connections as u64 + 1024)? as usize;
    let room_client = have.saturating_sub(connections + 300);
    let room_relay = (have.saturating_sub(100) / 2).saturating_sub(2 * AFTER_FAULT);
    let load = Load {
        straight: connections,
        relayed: connections.min(room_client).min(room_relay),
    };
    if load.relayed < connections {
        println!(
            "the descriptor limit here is {have} (and cannot be raised: ulimit -Hn): {} connections through the relay, not {connections}",
            load.relayed
        );
    }

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("soak.toml");
    std::fs::write(&config, CONFIG)?;
    let mut soak = Soak {
        idlegate,
        lab: format!("soak{}", std::process::id() % 100_000),
        config,
        logs: dir.path().to_path_buf(),
        load,
        processes: Vec::new(),
    };
    let result = soak.run(Duration::from_secs(seconds));
    // Every process the soak started, the last lab up last: it removes its namespaces.
    for mut child in soak.processes.drain(..).rev() {
        stop(&mut child);
    }
    let result = result.and_then(|()| {
        let left = namespaces_of(&soak.lab)?;
        if left.is_empty() {
            println!(
                "after the last lab up stopped: no namespace of lab {} left",
                soak.lab
            );
            Ok(())
        } else {
            Err(format!("namespaces left after lab up stopped: {}", left.join(" ")).into())
        }
    });
    if result.is_err() {
        for log in ["lab.log", "lab-again.log", "relay.log"] {
            if let Ok(text) = std::fs::read_to_string(dir.path().join(log)) {
                eprintln!("{log}:\n{text}");
            }
        }
    }
    result
}
