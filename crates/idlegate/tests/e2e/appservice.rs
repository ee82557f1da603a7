//! Azure App Service's outbound SNAT in the lab: a connection-per-request client in one instance
//! runs out of the instance's preallocated ports to one destination, and gets them back only
//! after the load balancer's hold of closed connections' ports (Azure "Troubleshooting
//! intermittent outbound connection errors in Azure App Service").

use crate::common::{require_root, unique};
use crate::gateway::{echo_server, echoes};
use idlegate::lab::{Lab, INTERNET, INTERNET_ADDRESS};
use idlegate_core::{profile, Config, DropReason};
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

/// One instance (`vm1`) behind App Service's outbound SNAT, at a scale that keeps 128 open
/// connections inside their idle timeout (4 min / 30 = 8 s) on a loaded machine.
const CONFIG: &str = r#"
profile = "azure-appservice"
time_scale = 30
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "instances"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "instances"
"#;

/// What the client in the instance saw.
struct Seen {
    /// How many connections it opened before one failed.
    opened: usize,
    /// How the next one failed.
    next: Result<(), std::io::ErrorKind>,
    /// Whether all the open ones still echoed.
    all_echo: bool,
    /// How long after closing every connection a new one to the same destination got through.
    came_back_after: Option<Duration>,
}

#[test]
fn an_app_service_instance_runs_out_of_its_snat_ports_and_gets_them_back_after_the_hold() {
    require_root();
    let config = Config::from_toml(CONFIG, "app service test config").unwrap();
    let per_instance = usize::from(profile::AZURE_APPSERVICE.snat.ports_per_member);
    assert_eq!(per_instance, 128, "Azure: 128 preallocated SNAT ports");
    let hold = config.scaled(profile::AZURE_APPSERVICE.snat.hold_after_fin);
    let target = SocketAddrV4::new(INTERNET_ADDRESS, 8000);
    let (seen, counters) = Lab::with_gateway(&unique("as"), &config, |lab| {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server_stop = stop.clone();
        let server = idlegate::sys::netns::spawn_in(&lab.namespace_of(INTERNET)?, move || {
            echo_server(8000, server_stop)
        })?;
        let client = idlegate::sys::netns::spawn_in(&lab.namespace_of("vm1")?, move || {
            let connect = |timeout| TcpStream::connect_timeout(&target.into(), timeout);
            // The server may need a moment to listen: retry the first connection briefly.
            let deadline = Instant::now() + Duration::from_secs(5);
            let first = loop {
                match connect(Duration::from_secs(1)) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => panic!("first connection: {e}"),
                    Err(_) => {}
                }
            };
            // A connection per request, none reused: every one holds a port while open.
            let mut conns = vec![first];
            let next = loop {
                match connect(Duration::from_millis(1500)) {
                    Ok(c) if conns.len() < 1000 => conns.push(c),
                    Ok(_) => break Ok(()),
                    Err(e) => break Err(e.kind()),
                }
            };
            let opened = conns.len();
            let all_echo = conns.iter_mut().all(echoes);
            // Close them all with FIN: the ports come back only after the hold.
            drop(conns);
            let closed = Instant::now();
            let deadline = closed + hold * 3 + Duration::from_secs(10);
            let came_back_after = loop {
                let echoed = connect(Duration::from_millis(500)).is_ok_and(|mut c| echoes(&mut c));
                if echoed {
                    break Some(closed.elapsed());
                }
                if Instant::now() > deadline {
                    break None;
                }
            };
            Seen {
                opened,
                next,
                all_echo,
                came_back_after,
            }
        })?;
        let result = client
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = server.join();
        result
    })
    .expect("lab run");
    assert_eq!(seen.opened, per_instance, "one port per open connection");
    assert_eq!(
        seen.next,
        Err(std::io::ErrorKind::TimedOut),
        "the 129th connection's SYN is dropped: the client's connect times out"
    );
    assert!(seen.all_echo, "the 128 open connections keep working");
    assert!(counters.dropped(DropReason::PortExhausted) >= 1);
    let after = seen
        .came_back_after
        .expect("a new connection got through after the hold");
    // Each port is held from its flow's last packet, which is no earlier than the close; a
    // quarter of the hold is left as margin for the close's own packets on a loaded machine.
    assert!(
        after >= hold * 3 / 4,
        "a port came back {after:?} after the close, before the hold of {hold:?}"
    );
}
