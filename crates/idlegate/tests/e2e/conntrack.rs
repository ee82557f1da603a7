//! Differential tests: the `linux-conntrack` profile against the kernel it models.
//!
//! The same scripted connections run twice: once through a real Linux router (a namespace
//! with nftables masquerade and conntrack's sysctls set to the same short timeout), once
//! through an idlegate lab with the `linux-conntrack` profile. For each connection both runs
//! must give the same outcome: what the server received, the errno each side saw, and
//! whether the client was left with data nobody acknowledged.
//!
//! The reference router is a typical one: the forward chain drops what conntrack calls
//! invalid, the input chain takes only what belongs to the router's own connections. Root only.

use crate::common;

use common::kernel_router::KernelRouter;
use common::{require_root, unique};
use idlegate::lab::scenario::{self, Outcome, Script};
use idlegate::lab::{Lab, INTERNET, INTERNET_ADDRESS};
use idlegate_core::profile::Pickup;
use idlegate_core::Config;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// The established timeout both sides run: short, and in whole seconds as the sysctl takes it.
const ESTABLISHED_S: u64 = 2;
const ESTABLISHED: Duration = Duration::from_secs(ESTABLISHED_S);
const MEMBER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

/// The connections both runs play, from the member to the server on the outside.
fn scripts(client_ns: &str, server_ns: &str) -> Vec<Script> {
    let script = |name: &str, port: u16, keepalive: Option<Duration>, late: Duration| Script {
        name: name.to_string(),
        client_ns: client_ns.to_string(),
        server_ns: server_ns.to_string(),
        listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into(),
        connect: SocketAddrV4::new(INTERNET_ADDRESS, port).into(),
        keepalive,
        sends: vec![(Duration::ZERO, "a".into()), (late, "b".into())],
        observe: Duration::from_secs(2),
    };
    vec![
        script("within-timeout", 8100, None, ESTABLISHED / 2),
        script("after-expiry", 8101, None, ESTABLISHED * 2),
        script(
            "keepalive",
            8102,
            Some(Duration::from_secs(1)),
            ESTABLISHED * 2,
        ),
    ]
}

/// What must agree: delivered messages, each side's errno, data left unacknowledged.
fn fate(o: &Outcome) -> (Vec<String>, Option<String>, Option<String>, bool) {
    (
        o.delivered.clone(),
        o.client_error.clone(),
        o.server_error.clone(),
        o.unacked_at_end > 0,
    )
}

fn through_the_kernel(pickup: Pickup) -> Vec<Outcome> {
    let router = KernelRouter::new(ESTABLISHED_S, pickup);
    scenario::run(scripts(&router.client, &router.server)).expect("kernel run")
}

fn through_idlegate(pickup: Pickup) -> Vec<Outcome> {
    let loose = pickup == Pickup::Loose;
    let text = format!(
        r#"profile = "linux-conntrack"
loose_pickup = {loose}
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{{ name = "vm1", address = "{MEMBER}" }}]
[[outbound_rule]]
name = "masquerade"
frontend = "public"
backend_pool = "vms"
idle_timeout = "{ESTABLISHED_S}s"
"#
    );
    let config = Config::from_toml(&text, "conntrack test config").unwrap();
    let (outcomes, _) = Lab::with_gateway(&unique("ct"), &config, |lab| {
        scenario::run(scripts(
            &lab.namespace_of("vm1")?,
            &lab.namespace_of(INTERNET)?,
        ))
    })
    .expect("lab run");
    outcomes
}

/// Runs both and checks that each connection met the same fate; returns the kernel's.
fn compare(pickup: Pickup) -> Vec<Outcome> {
    require_root();
    let kernel = through_the_kernel(pickup);
    let emulated = through_idlegate(pickup);
    for k in &kernel {
        let e = emulated.iter().find(|e| e.name == k.name).unwrap();
        assert_eq!(
            fate(e),
            fate(k),
            "{} ({pickup:?} pickup): idlegate (left) and the kernel (right) disagree\nkernel:\n{}\nidlegate:\n{}",
            k.name,
            scenario::render_timeline(std::slice::from_ref(k)),
            scenario::render_timeline(std::slice::from_ref(e)),
        );
    }
    kernel
}

fn outcome<'a>(outcomes: &'a [Outcome], name: &str) -> &'a Outcome {
    outcomes.iter().find(|o| o.name == name).unwrap()
}

#[test]
fn with_loose_pickup_the_kernel_and_idlegate_both_let_the_member_carry_on_after_expiry() {
    // nf_conntrack_tcp_loose=1 (the default): the member's next segment after the
    // established timeout makes a new entry, and masquerade keeps its source port.
    let kernel = compare(Pickup::Loose);
    for name in ["within-timeout", "after-expiry", "keepalive"] {
        assert_eq!(
            fate(outcome(&kernel, name)),
            (vec!["a".into(), "b".into()], None, None, false),
            "{name}"
        );
    }
}

#[test]
fn without_loose_pickup_the_kernel_and_idlegate_both_drop_the_late_segment_silently() {
    // nf_conntrack_tcp_loose=0: the late segment is invalid and the forward chain drops it.
    let kernel = compare(Pickup::SynOnly);
    assert_eq!(
        fate(outcome(&kernel, "after-expiry")),
        (vec!["a".into()], None, None, true)
    );
    for name in ["within-timeout", "keepalive"] {
        assert_eq!(
            fate(outcome(&kernel, name)),
            (vec!["a".into(), "b".into()], None, None, false),
            "{name}"
        );
    }
}
