//! IPv6 end to end: frontends, members and the internet host with fd00::/8 addresses, real
//! Linux TCP stacks in namespaces, the same expiry behaviour as IPv4, and path MTU discovery
//! through ICMPv6 "packet too big". Root only.

use crate::common;

use common::{narrow_link, require_root, transfer, unique, Ip};
use idlegate::lab::scenario::{self, Outcome, Script};
use idlegate::lab::{Lab, INTERNET, INTERNET_ADDRESS_V6};
use idlegate::sys::netns::Namespace;
use idlegate_core::Config;

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

/// Azure LB's 4 min, scaled by 60.
const IDLE: Duration = Duration::from_secs(4);
const FRONTEND: &str = "fd00:203::10";

fn config() -> Config {
    let text = format!(
        r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public6"
address = "{FRONTEND}"
[[backend_pool]]
name = "vms6"
members = [{{ name = "vm6", address = "fd00:192::11" }}]
[[lb_rule]]
name = "plain"
frontend = "public6"
frontend_port = 7000
backend_pool = "vms6"
backend_port = 7000
[[lb_rule]]
name = "keepalive"
frontend = "public6"
frontend_port = 7001
backend_pool = "vms6"
backend_port = 7001
[[lb_rule]]
name = "reset"
frontend = "public6"
frontend_port = 7002
backend_pool = "vms6"
backend_port = 7002
expiry = "reset"
[[outbound_rule]]
name = "egress6"
frontend = "public6"
backend_pool = "vms6"
"#
    );
    Config::from_toml(&text, "ipv6 test config").unwrap()
}

fn v6(ip: &str, port: u16) -> SocketAddr {
    SocketAddrV6::new(ip.parse().unwrap(), port, 0, 0).into()
}

fn outcome<'a>(outcomes: &'a [Outcome], name: &str) -> &'a Outcome {
    outcomes.iter().find(|o| o.name == name).unwrap()
}

#[test]
fn ipv6_flows_expire_silently_survive_with_keepalive_and_reset_both_sides() {
    require_root();
    let (outcomes, counters) = Lab::with_gateway(&unique("v6"), &config(), |lab| {
        let (internet, vm6) = (lab.namespace_of(INTERNET)?, lab.namespace_of("vm6")?);
        let script = |name: &str, port: u16, keepalive: Option<Duration>| Script {
            name: name.to_string(),
            client_ns: internet.clone(),
            server_ns: vm6.clone(),
            listen: v6("::", port),
            connect: v6(FRONTEND, port),
            keepalive,
            sends: vec![
                (Duration::ZERO, "a".into()),
                (IDLE / 4, "b".into()),
                (IDLE / 4 + IDLE * 9 / 8, "c".into()),
            ],
            observe: Duration::from_millis(1500),
        };
        // The outbound one: the member calls a server on the internet host.
        let outbound = Script {
            client_ns: vm6.clone(),
            server_ns: internet.clone(),
            listen: v6("::", 8000),
            connect: SocketAddrV6::new(INTERNET_ADDRESS_V6, 8000, 0, 0).into(),
            ..script("outbound", 8000, None)
        };
        scenario::run(vec![
            script("plain", 7000, None),
            script("keepalive", 7001, Some(IDLE / 2)),
            script("reset", 7002, None),
            outbound,
        ])
    })
    .expect("lab run");

    for name in ["plain", "outbound"] {
        let silent = outcome(&outcomes, name);
        assert_eq!(silent.delivered, ["a", "b"], "{name}");
        assert_eq!((&silent.client_error, &silent.server_error), (&None, &None));
        assert!(
            silent.unacked_at_end > 0,
            "{name}: \"c\" never acknowledged"
        );
    }
    let keepalive = outcome(&outcomes, "keepalive");
    assert_eq!(keepalive.delivered, ["a", "b", "c"]);
    let reset = outcome(&outcomes, "reset");
    assert_eq!(reset.delivered, ["a", "b"]);
    assert_eq!(
        (reset.client_error.as_deref(), reset.server_error.as_deref()),
        (Some("ECONNRESET"), Some("ECONNRESET"))
    );
    assert_eq!(counters.flows_created, 4);
    assert_eq!(counters.resets_sent, 2);
}

#[test]
fn ipv6_path_mtu_discovery_works_through_the_gateway() {
    // RFC 5508 REQ-5 with RFC 4443 "packet too big": routers never fragment IPv6, so without
    // the translated error the member's full-sized segments vanish and the transfer stalls.
    require_root();
    const BYTES: usize = 256 * 1024;
    let far = Namespace::create(&format!("ig-{}-far", unique("p6"))).expect("namespace");
    let far_name = far.name().to_string();
    let (received, counters) = Lab::with_gateway(&unique("p6"), &config(), |lab| {
        narrow_link(&lab.namespace_of(INTERNET)?, &far_name, Ip::V6);
        let address = SocketAddr::from(SocketAddrV6::new(
            "fd00:198::5".parse::<Ipv6Addr>()?,
            8200,
            0,
            0,
        ));
        transfer(&lab.namespace_of("vm6")?, &far_name, address, BYTES)
    })
    .expect("lab run");
    drop(far);
    assert_eq!(received, BYTES, "every byte crossed the narrow link");
    assert!(
        counters.icmp_errors_translated >= 1,
        "the member learned the path MTU from a translated ICMPv6 error"
    );
}
