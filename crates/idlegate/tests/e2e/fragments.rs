//! End-to-end tests of IPv4 fragments (issue 16, item 7): a 3,000-byte UDP datagram, which the
//! internet host's stack sends in three fragments (the lab's devices have MTU 1500), through
//! a UDP rule arrives at the member's socket whole where the profile's box passes fragments,
//! and never where it drops them. Real Linux stacks fragment and reassemble; the gateway runs
//! its default number of workers, so a datagram's fragments may be read by different shards.
//!
//! Needs root; each test builds its own lab and removes it, even on failure.

use crate::common;

use common::{require_root, unique};
use idlegate::lab::{Lab, INTERNET};
use idlegate::sys::netns::spawn_in;
use idlegate_core::DropReason;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

const BIG: usize = 3_000;
/// Sent after the big datagram; small enough to need no fragments.
const MARKER: &[u8] = b"end";

/// The datagram sizes the member's socket received, in order, and the gateway's counters,
/// after the internet host sent a `BIG` datagram and then `MARKER` to the frontend's UDP rule
/// under `profile`. The member waits for the marker (5 s at most), then 1 s more for a late big
/// datagram, which only a held fragment could make late.
fn send_big_datagram(profile: &str) -> (Vec<usize>, idlegate_core::Counters) {
    require_root();
    let config = common::one_member_lab(
        &format!("profile = \"{profile}\""),
        r#"[[lb_rule]]
name = "udp"
frontend = "public"
protocol = "udp"
frontend_port = 5300
backend_pool = "vms"
backend_port = 5300
"#,
    );
    Lab::with_gateway(&unique("fr"), &config, |lab| {
        let socket = spawn_in(&lab.namespace_of("vm1")?, || {
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5300))
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("bind thread panicked"))??;
        let member = std::thread::spawn(move || -> std::io::Result<Vec<usize>> {
            let mut sizes = Vec::new();
            let mut buf = vec![0u8; 65_536];
            let mut deadline = Instant::now() + Duration::from_secs(5);
            let mut marker_seen = false;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                let n = match socket.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                };
                if n == BIG {
                    assert!(buf[..n].iter().all(|&b| b == 0x5a), "the datagram intact");
                }
                sizes.push(n);
                if &buf[..n] == MARKER && !marker_seen {
                    marker_seen = true;
                    deadline = Instant::now() + Duration::from_secs(1);
                }
                if marker_seen && sizes.contains(&BIG) {
                    break;
                }
            }
            Ok(sizes)
        });
        spawn_in(&lab.namespace_of(INTERNET)?, || -> std::io::Result<()> {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.connect((Ipv4Addr::new(203, 0, 113, 10), 5300))?;
            socket.send(&[0x5a; BIG])?;
            socket.send(MARKER)?;
            Ok(())
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        Ok(member
            .join()
            .map_err(|_| anyhow::anyhow!("member thread panicked"))??)
    })
    .expect("lab run")
}

#[test]
fn a_fragmented_udp_datagram_reaches_the_member_through_linux_conntrack() {
    // Linux conntrack reassembles (nf_defrag_ipv4) before it tracks and translates.
    let (sizes, counters) = send_big_datagram("linux-conntrack");
    assert!(sizes.contains(&BIG), "received {sizes:?}");
    assert!(counters.fragments_forwarded >= 3, "{counters:?}");
}

#[test]
fn a_fragmented_udp_datagram_reaches_the_member_through_an_aws_nlb() {
    // Not documented by AWS; idlegate forwards (see the profile).
    let (sizes, _) = send_big_datagram("aws-nlb");
    assert!(sizes.contains(&BIG), "received {sizes:?}");
}

#[test]
fn azure_lb_never_delivers_a_fragmented_udp_datagram() {
    // Azure Load Balancer components, Limitations: "Load-balancing rules don't support
    // forwarding IP fragments."
    let (sizes, counters) = send_big_datagram("azure-lb");
    assert_eq!(
        sizes,
        [MARKER.len()],
        "only the unfragmented datagram arrives"
    );
    assert!(
        counters.dropped(DropReason::Fragment) >= 3,
        "each fragment dropped and counted: {counters:?}"
    );
}
