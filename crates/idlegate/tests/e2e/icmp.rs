//! ICMP errors through the gateway (RFC 5508), with real Linux stacks: a refused UDP datagram
//! and path MTU discovery over a narrower link behind the internet host. Root only.

use crate::common;

use common::{narrow_link, require_root, transfer, unique, Ip};
use idlegate::lab::{Lab, INTERNET};
use idlegate::sys::netns::{self, Namespace};
use idlegate_core::Config;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

fn config() -> Config {
    let text = r#"profile = "azure-lb"
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
"#;
    Config::from_toml(text, "icmp test config").unwrap()
}

#[test]
fn a_member_sees_econnrefused_when_the_server_refuses_its_udp_datagram() {
    // The internet host answers a datagram to a closed port with ICMP port unreachable, sent
    // to the frontend; translated, it reaches the member's connected socket as ECONNREFUSED.
    require_root();
    let (errors, counters) = Lab::with_gateway(&unique("iu"), &config(), |lab| {
        let vm1 = lab.namespace_of("vm1")?;
        let client = netns::spawn_in(&vm1, || -> std::io::Result<Vec<ErrorKind>> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect("203.0.113.100:9")?;
            socket.set_read_timeout(Some(Duration::from_secs(3)))?;
            socket.send(b"anyone?")?;
            let mut buf = [0u8; 16];
            Ok(vec![socket.recv(&mut buf).expect_err("no answer").kind()])
        })?;
        Ok(client.join().expect("client thread")?)
    })
    .expect("lab run");
    assert_eq!(errors, [ErrorKind::ConnectionRefused]);
    assert_eq!(counters.icmp_errors_translated, 1);
}

#[test]
fn path_mtu_discovery_works_through_the_gateway() {
    // RFC 5508 REQ-5 for "fragmentation needed": without the translated error the member's
    // full-sized segments vanish in the narrow link and the transfer stalls.
    require_root();
    const BYTES: usize = 256 * 1024;
    let far = Namespace::create(&format!("ig-{}-far", unique("pm"))).expect("namespace");
    let far_name = far.name().to_string();
    let (received, counters) = Lab::with_gateway(&unique("pm"), &config(), |lab| {
        narrow_link(&lab.namespace_of(INTERNET)?, &far_name, Ip::V4);
        let address: SocketAddr = "198.51.100.5:8200".parse()?;
        transfer(&lab.namespace_of("vm1")?, &far_name, address, BYTES)
    })
    .expect("lab run");
    drop(far);
    assert_eq!(received, BYTES, "every byte crossed the narrow link");
    assert!(
        counters.icmp_errors_translated >= 1,
        "the member learned the path MTU from a translated error"
    );
}
