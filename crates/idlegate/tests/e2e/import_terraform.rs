//! End-to-end tests of `idlegate import` on the terraform examples: the real binary imports
//! each example with a time scale, a lab runs the config it wrote, and a connection through the
//! imported rule meets the expiry the input set, while one idle for less survives.
//!
//! Needs root (namespaces, TUN devices). Scaled timeouts are 4 s, with the late message sent
//! 4.5 s after the last one and the survivor's idle 1 s.

use crate::common::{require_root, unique};

use idlegate::lab::scenario::{self, Outcome, Script};
use idlegate::lab::{Lab, INTERNET, INTERNET_ADDRESS};
use idlegate_core::Config;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Every imported rule's timeout, once scaled.
pub(crate) const IDLE: Duration = Duration::from_secs(4);

/// The lab address the writer gives the first frontend.
pub(crate) const FRONTEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// A temporary directory removed when dropped, even when the test fails.
pub(crate) struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `idlegate import examples/import/EXAMPLE --time-scale N -o OUT` and returns the config
/// it wrote (checked to name `source` as the source of a value) and its text.
pub(crate) fn import_example(example: &str, scale: u32, source: &str) -> (Config, String) {
    let input = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/import")
        .join(example);
    let dir = TempDir(std::env::temp_dir().join(unique("imp")));
    std::fs::create_dir_all(&dir.0).expect("create the temporary directory");
    let out = dir.0.join("imported.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .arg("import")
        .arg(&input)
        .args(["--time-scale", &scale.to_string(), "-o"])
        .arg(&out)
        .output()
        .expect("run idlegate import");
    assert!(
        output.status.success(),
        "idlegate import {example} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("read the imported config");
    assert!(
        text.contains(&format!("# {source}")),
        "the config names {source}:\n{text}"
    );
    let config = Config::from_toml(&text, "imported config").expect("the imported config loads");
    (config, text)
}

/// An inbound connection from the internet host to the frontend's `port`, served by `member`:
/// "a", then "b" after an idle of a quarter of the timeout (it survives), then "c" after an
/// idle of 9/8 of it (past the expiry).
pub(crate) fn inbound(lab: &Lab, member: &str, port: u16) -> anyhow::Result<Script> {
    Ok(Script {
        name: "imported".to_string(),
        client_ns: lab.namespace_of(INTERNET)?,
        server_ns: lab.namespace_of(member)?,
        listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into(),
        connect: SocketAddr::V4(SocketAddrV4::new(FRONTEND, port)),
        keepalive: None,
        sends: sends(),
        observe: Duration::from_millis(1500),
    })
}

pub(crate) fn sends() -> Vec<(Duration, String)> {
    vec![
        (Duration::ZERO, "a".into()),
        (IDLE / 4, "b".into()),
        (IDLE / 4 + IDLE * 9 / 8, "c".into()),
    ]
}

pub(crate) fn only(outcomes: Vec<Outcome>) -> Outcome {
    outcomes.into_iter().next().expect("one outcome")
}

#[test]
fn an_imported_azurerm_plan_resets_a_flow_idle_past_its_30_min_rule() {
    require_root();
    // 30 min / 450 = 4 s.
    let (config, _) = import_example(
        "terraform/azure-lb-plan.json",
        450,
        "module.net.azurerm_lb_rule.app.idle_timeout_in_minutes",
    );
    let (outcomes, _) = Lab::with_gateway(&unique("it"), &config, |lab| {
        scenario::run(vec![inbound(lab, "vm1", 7000)?])
    })
    .expect("lab run");
    let o = only(outcomes);
    assert_eq!(
        o.delivered,
        ["a", "b"],
        "b after 1 s idle survives; c after 4.5 s does not"
    );
    assert_eq!(
        (o.client_error.as_deref(), o.server_error.as_deref()),
        (Some("ECONNRESET"), Some("ECONNRESET")),
        "enable_tcp_reset = true: a RST to both ends at the expiry"
    );
}

#[test]
fn an_imported_aws_nlb_plan_resets_the_next_sender_after_its_listener_idle_timeout() {
    require_root();
    // tcp_idle_timeout_seconds = 120; 120 s / 30 = 4 s.
    let (config, _) = import_example(
        "terraform/aws-nlb-plan.json",
        30,
        "aws_lb_listener.app.tcp_idle_timeout_seconds",
    );
    let (outcomes, _) = Lab::with_gateway(&unique("ia"), &config, |lab| {
        scenario::run(vec![inbound(lab, "app0", 7000)?])
    })
    .expect("lab run");
    let o = only(outcomes);
    assert_eq!(o.delivered, ["a", "b"]);
    assert_eq!(
        (o.client_error.as_deref(), o.server_error.as_deref()),
        (Some("ECONNRESET"), None),
        "the NLB answers the late sender with a RST and tells the idle target nothing"
    );
}

#[test]
fn an_imported_gcp_router_nat_state_forgets_an_outbound_flow_silently() {
    require_root();
    // tcp_established_idle_timeout_sec = 300; 300 s / 75 = 4 s.
    let (config, _) = import_example(
        "terraform/gcp-router-nat-state.json",
        75,
        "google_compute_router_nat.nat.tcp_established_idle_timeout_sec",
    );
    let (outcomes, _) = Lab::with_gateway(&unique("ig"), &config, |lab| {
        scenario::run(vec![Script {
            name: "outbound".to_string(),
            client_ns: lab.namespace_of("vm1")?,
            server_ns: lab.namespace_of(INTERNET)?,
            listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8000).into(),
            connect: SocketAddrV4::new(INTERNET_ADDRESS, 8000).into(),
            keepalive: None,
            sends: sends(),
            observe: Duration::from_millis(1500),
        }])
    })
    .expect("lab run");
    let o = only(outcomes);
    assert_eq!(o.delivered, ["a", "b"]);
    assert_eq!(
        (o.client_error.as_deref(), o.server_error.as_deref()),
        (None, None)
    );
    assert!(
        o.unacked_at_end > 0,
        "\"c\" was written but never acknowledged"
    );
}
