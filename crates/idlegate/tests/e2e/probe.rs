//! `idlegate probe` against real middleboxes: the lab's gateway under each expiry action with
//! an idle timeout that is not a round number (7.3 s), and a real kernel NAT (nftables
//! masquerade). `idlegate echo` runs on the far side; the probe must bracket the true timeout
//! within the resolution and name what each direction does at expiry. Root only.

use crate::common;

use common::kernel_router::{Invalid, KernelRouter};
use common::{require_root, unique};
use idlegate::lab::{Lab, INTERNET};
use idlegate::measure::echo::Echo;
use idlegate::measure::probe::{self, Behaviour, Options, Report};
use idlegate::sys::netns;
use idlegate_core::profile::Pickup;
use std::net::SocketAddr;
use std::time::Duration;

const RESOLUTION: Duration = Duration::from_secs(1);

/// Runs echo in `server_ns` at `listen`, the probe in `client_ns` against `target`, and
/// returns the report.
fn probe_between(
    client_ns: &str,
    server_ns: &str,
    listen: SocketAddr,
    target: SocketAddr,
) -> Report {
    let echo = netns::spawn_in(server_ns, move || Echo::bind(listen))
        .expect("echo thread")
        .join()
        .expect("echo bind")
        .expect("echo listening");
    let stop = echo.stop_flag();
    let server = std::thread::spawn(move || echo.run());
    let options = Options {
        target,
        max: Duration::from_secs(20),
        resolution: RESOLUTION,
        wait: Duration::from_secs(1),
        connections: None,
        progress: probe::ProgressTo::Off,
    };
    let report = netns::spawn_in(client_ns, move || probe::run(&options))
        .expect("probe thread")
        .join()
        .expect("probe");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().expect("echo thread").expect("echo");
    report.expect("probe run")
}

/// The probe through the lab gateway: Azure LB, idle timeout 438 s scaled 1/60 to 7.3 s.
fn probe_lab(expiry: &str) -> Report {
    probe_profile("azure-lb", 60, "438s", expiry)
}

/// The probe through the lab gateway under `profile`, its LB rule's idle timeout `idle`
/// divided by `time_scale`.
fn probe_profile(profile: &str, time_scale: u32, idle: &str, expiry: &str) -> Report {
    require_root();
    let config = common::echo_lab(profile, time_scale, idle, expiry);
    let (report, _) = Lab::with_gateway(&unique("pr"), &config, |lab| {
        Ok(probe_between(
            &lab.namespace_of(INTERNET)?,
            &lab.namespace_of("vm1")?,
            "0.0.0.0:9300".parse()?,
            "203.0.113.10:9300".parse()?,
        ))
    })
    .expect("lab run");
    report
}

/// The bracket holds `truth` and is no wider than the resolution.
fn assert_bracket(r: &Report, truth: f64) {
    let high = r.idle_timeout_s.high.expect("a timeout found");
    assert!(
        r.idle_timeout_s.low < truth && truth <= high,
        "{truth} s not in ({}, {high}]: {r:#?}",
        r.idle_timeout_s.low
    );
    assert!(
        high - r.idle_timeout_s.low <= RESOLUTION.as_secs_f64() + 1e-9,
        "{r:#?}"
    );
    assert!(r.consistent, "{r:#?}");
    assert!(r.echo);
}

#[test]
fn probe_finds_a_silent_drop_in_both_directions() {
    let r = probe_lab("silent");
    assert_bracket(&r, 7.3);
    assert_eq!(
        (r.client_to_server, r.server_to_client),
        (Behaviour::Silent, Some(Behaviour::Silent)),
        "{r:#?}"
    );
    assert_eq!(
        r.keepalive_refreshes,
        Some(true),
        "Azure: keepalive refreshes the flow"
    );
}

#[test]
fn probe_finds_a_reset_at_expiry() {
    let r = probe_lab("reset");
    assert_bracket(&r, 7.3);
    assert_eq!(
        (r.client_to_server, r.server_to_client),
        (Behaviour::Reset, Some(Behaviour::Reset)),
        "{r:#?}"
    );
    assert!(
        r.details
            .iter()
            .any(|d| d.contains("at the moment of expiry")),
        "{r:#?}"
    );
}

#[test]
fn probe_finds_a_reset_on_the_next_packet_for_each_sender() {
    let r = probe_lab("reset-on-next");
    assert_bracket(&r, 7.3);
    assert_eq!(
        (r.client_to_server, r.server_to_client),
        (Behaviour::Reset, Some(Behaviour::Reset)),
        "{r:#?}"
    );
    assert!(
        r.details.iter().any(|d| d.contains("next packet")),
        "{r:#?}"
    );
    assert!(
        r.details.iter().any(|d| d.contains("server's packet")),
        "{r:#?}"
    );
}

#[test]
fn probe_finds_data_acknowledged_but_never_delivered() {
    // Data ACKed and never delivered (a router or ISP box answering for a forgotten flow): the
    // gateway's ack-and-discard.
    let r = probe_lab("ack-and-discard");
    assert_bracket(&r, 7.3);
    assert_eq!(
        (r.client_to_server, r.server_to_client),
        (
            Behaviour::AckedNotDelivered,
            Some(Behaviour::AckedNotDelivered)
        ),
        "{r:#?}"
    );
}

#[test]
fn probe_finds_the_timeout_of_a_real_kernel_nat() {
    // An independent middlebox: nftables masquerade with nf_conntrack_tcp_timeout_established
    // = 5 and loose pickup off, so a late packet in either direction is dropped. Conntrack
    // keeps time in jiffies and checks expiry when a packet comes, so 5 s is the truth.
    require_root();
    let router = KernelRouter::new(5, Pickup::SynOnly);
    let r = probe_between(
        &router.client,
        &router.server,
        "0.0.0.0:9300".parse().unwrap(),
        "203.0.113.100:9300".parse().unwrap(),
    );
    assert_bracket(&r, 5.0);
    assert_eq!(
        (r.client_to_server, r.server_to_client),
        (Behaviour::Silent, Some(Behaviour::Silent)),
        "{r:#?}"
    );
    assert_eq!(r.keepalive_refreshes, Some(true));
}

#[test]
fn with_loose_pickup_only_the_server_to_client_direction_dies() {
    // Linux conntrack with nf_conntrack_tcp_loose=1, a DNAT rule and no masquerade: the
    // client's late packet opens a new entry and carries on; the server's opens one no NAT
    // rule binds, leaves untranslated, and the client's stack answers it with a RST that
    // resets the server (what a real router does: the next test).
    let r = probe_profile("linux-conntrack", 1, "7300ms", "silent");
    assert_bracket(&r, 7.3);
    assert_eq!(
        (r.client_to_server, r.server_to_client),
        (Behaviour::Alive, Some(Behaviour::Reset)),
        "{r:#?}"
    );
}

#[test]
fn through_a_real_kernel_port_forward_without_masquerade_the_server_to_client_direction_is_reset() {
    // The reference for the test above: nft dnat of port 9300 to the server, no masquerade,
    // nf_conntrack_tcp_timeout_established = 5 and loose pickup on.
    require_root();
    let router = KernelRouter::dnat_only(5, Pickup::Loose, 9300);
    let r = probe_between(
        &router.server,
        &router.client,
        "0.0.0.0:9300".parse().unwrap(),
        "203.0.113.10:9300".parse().unwrap(),
    );
    // Within a resolution of 5 s (seen: (5, 6], the kernel's jiffies past the 5 s); what
    // matters here is each direction's fate.
    let b = &r.idle_timeout_s;
    assert!(b.low >= 4.0 && b.high.is_some_and(|h| h <= 6.0), "{r:#?}");
    assert_eq!(
        (r.client_to_server, r.server_to_client),
        (Behaviour::Alive, Some(Behaviour::Reset)),
        "{r:#?}"
    );
}

#[test]
fn on_aws_alb_probe_says_keepalive_does_not_refresh_the_path() {
    // AWS ALB: only data refreshes the idle timeout; at expiry both ends are closed.
    let r = probe_profile("aws-alb", 1, "7300ms", "reset");
    assert_bracket(&r, 7.3);
    assert_eq!(r.keepalive_refreshes, Some(false), "{r:#?}");
    assert_eq!(r.client_to_server, Behaviour::Reset, "{r:#?}");
}

#[test]
fn against_a_server_that_is_not_echo_probe_checks_what_it_can_and_says_what_it_cannot() {
    // Any TCP server: here one that reads and never answers. The client-to-server checks
    // still work from TCP's acknowledgements; the server-to-client ones cannot be made.
    require_root();
    let config = common::one_member_lab(
        "profile = \"azure-lb\"\ntime_scale = 60",
        r#"[[lb_rule]]
name = "plain"
frontend = "public"
frontend_port = 9400
backend_pool = "vms"
backend_port = 9400
idle_timeout = "438s"
"#,
    );
    let (report, _) = Lab::with_gateway(&unique("pp"), &config, |lab| {
        let listener = netns::spawn_in(&lab.namespace_of("vm1")?, || {
            std::net::TcpListener::bind("0.0.0.0:9400")
        })?
        .join()
        .expect("bind thread")?;
        // Reads whatever comes on every connection, answers nothing, until the lab goes.
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut sink = std::io::sink();
                    let _ = std::io::copy(&mut &conn, &mut sink);
                });
            }
        });
        let options = Options {
            target: "203.0.113.10:9400".parse()?,
            max: Duration::from_secs(20),
            resolution: RESOLUTION,
            wait: Duration::from_secs(1),
            connections: None,
            progress: probe::ProgressTo::Off,
        };
        netns::spawn_in(&lab.namespace_of(INTERNET)?, move || probe::run(&options))?
            .join()
            .expect("probe thread")
    })
    .expect("lab run");
    assert!(!report.echo);
    let high = report.idle_timeout_s.high.expect("a timeout found");
    assert!(
        report.idle_timeout_s.low < 7.3 && 7.3 <= high,
        "{report:#?}"
    );
    assert_eq!(report.client_to_server, Behaviour::Silent, "{report:#?}");
    assert_eq!(report.server_to_client, None);
    assert!(
        report
            .not_checked
            .iter()
            .any(|n| n.contains("not idlegate echo")),
        "{report:#?}"
    );
}

#[test]
fn probe_reports_an_icmp_error_at_expiry() {
    // A kernel NAT whose forward chain answers a forgotten connection's packets with ICMP
    // "administratively prohibited", as many firewalls do: the client reads it through
    // IP_RECVERR.
    require_root();
    let router = KernelRouter::with(5, Pickup::SynOnly, Invalid::RejectWithIcmp);
    let r = probe_between(
        &router.client,
        &router.server,
        "0.0.0.0:9300".parse().unwrap(),
        "203.0.113.100:9300".parse().unwrap(),
    );
    assert_bracket(&r, 5.0);
    assert_eq!(r.client_to_server, Behaviour::Icmp, "{r:#?}");
    assert!(
        r.details.iter().any(|d| d.contains("EHOSTUNREACH")),
        "{r:#?}"
    );
}

#[test]
fn a_far_end_that_closes_idle_connections_is_reported_as_closed_not_reset() {
    // A server that is not echo and closes every connection after 3 s with a FIN (as many
    // servers and proxies do): the probe finds its timeout and calls it `closed`. Loopback,
    // so no root needed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(3));
                drop(conn);
            });
        }
    });
    let r = probe::run(&Options {
        target,
        max: Duration::from_secs(10),
        resolution: RESOLUTION,
        wait: Duration::from_millis(500),
        connections: None,
        progress: probe::ProgressTo::Off,
    })
    .unwrap();
    let high = r.idle_timeout_s.high.expect("a timeout found");
    assert!(r.idle_timeout_s.low < 3.0 && 3.0 <= high + 0.5, "{r:#?}");
    assert_eq!(r.client_to_server, Behaviour::Closed, "{r:#?}");
    assert!(!r.echo);
}
