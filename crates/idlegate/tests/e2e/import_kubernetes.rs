//! End-to-end tests of `idlegate import` on the Kubernetes examples: the real binary imports
//! each Service manifest with a time scale, a lab runs the config it wrote, and a connection
//! through the Service's rule meets the expiry its annotations set, while one idle for less
//! survives; an out-of-range annotation is refused with the range, at its path.
//!
//! Needs root (namespaces, TUN devices) for the lab runs.

use crate::common::{require_root, unique};
use crate::import_terraform::{import_example, inbound, only, TempDir};

use idlegate::lab::scenario;
use idlegate::lab::Lab;
use std::process::Command;

#[test]
fn an_imported_aks_service_resets_a_flow_idle_past_its_annotated_timeout() {
    require_root();
    // azure-load-balancer-tcp-idle-timeout: "10" (minutes); 600 s / 150 = 4 s.
    let (config, _) = import_example(
        "kubernetes/aks-service.yaml",
        150,
        "Service/shop/web.metadata.annotations[\"service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout\"]",
    );
    let (outcomes, _) = Lab::with_gateway(&unique("ik"), &config, |lab| {
        scenario::run(vec![inbound(lab, "vm1", 7000)?])
    })
    .expect("lab run");
    let o = only(outcomes);
    assert_eq!(o.delivered, ["a", "b"]);
    assert_eq!(
        (o.client_error.as_deref(), o.server_error.as_deref()),
        (Some("ECONNRESET"), Some("ECONNRESET")),
        "AKS's rules have TCP reset: a RST to both ends"
    );
}

#[test]
fn an_imported_aws_load_balancer_controller_service_resets_the_next_sender() {
    require_root();
    // listener-attributes.TCP-7000: tcp.idle_timeout.seconds=120; 120 s / 30 = 4 s.
    let (config, _) = import_example(
        "kubernetes/aws-nlb-service.yaml",
        30,
        "Service/default/api.metadata.annotations[\"service.beta.kubernetes.io/aws-load-balancer-listener-attributes.TCP-7000\"]",
    );
    let (outcomes, _) = Lab::with_gateway(&unique("il"), &config, |lab| {
        scenario::run(vec![inbound(lab, "vm1", 7000)?])
    })
    .expect("lab run");
    let o = only(outcomes);
    assert_eq!(o.delivered, ["a", "b"]);
    assert_eq!(
        (o.client_error.as_deref(), o.server_error.as_deref()),
        (Some("ECONNRESET"), None)
    );
}

#[test]
fn an_aks_idle_timeout_annotation_above_100_min_is_refused_with_the_range_at_its_path() {
    let dir = TempDir(std::env::temp_dir().join(unique("imp")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/import/kubernetes/aks-service.yaml"
    ))
    .unwrap();
    let input = dir.0.join("aks-120.yaml");
    std::fs::write(
        &input,
        example.replace("tcp-idle-timeout: \"10\"", "tcp-idle-timeout: \"120\""),
    )
    .unwrap();
    let out = dir.0.join("out.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .arg("import")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Service/shop/web.metadata.annotations[\"service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout\"] = \"120\": idle_timeout = 120m is outside Azure LB's range: 4 min to 100 min"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written");
}
