//! `deploy/kubernetes`: the manifests validate strictly (no field Kubernetes does not know)
//! against the schemas of a stated Kubernetes version, offline, with kubernetes-validate, and
//! every idlegate container's flags are ones idlegate has (checked with `--help`).

use super::*;
use serde_json::Value;

/// The Kubernetes version the manifests are checked against (the oldest the book's Kubernetes page promises).
const KUBERNETES: &str = "1.33.0";
/// Where scripts/setup installs kubernetes-validate (a virtualenv: Debian's pip refuses to
/// install into the system's Python).
const VENV: &str = "/opt/idlegate-venv";
const MANIFESTS: [&str; 3] = [
    "audit-daemonset.yaml",
    "relay-sidecar.yaml",
    "tunnel-exit.yaml",
];
/// The image the manifests name (a placeholder for the user's own).
const IMAGE: &str = "ghcr.io/idlegate/idlegate:";

fn manifest(name: &str) -> PathBuf {
    repo().join("deploy/kubernetes").join(name)
}

#[test]
fn kubernetes_manifests_validate_strictly_against_the_stated_version() {
    let validate = format!("{VENV}/bin/kubernetes-validate");
    require_tool(
        &validate,
        "it validates deploy/kubernetes against Kubernetes' schemas",
    );
    for name in MANIFESTS {
        let output = run(
            Command::new(&validate)
                .args(["--strict", "--kubernetes-version", KUBERNETES])
                .arg(manifest(name)),
            COMMAND_TIMEOUT,
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("passed") && !stdout.contains("ERROR"),
            "kubernetes-validate {name}: {}",
            said(&output)
        );
    }
}

/// Every document of a manifest, as JSON (read by the virtualenv's PyYAML, which
/// kubernetes-validate brings).
fn documents(name: &str) -> Vec<Value> {
    let python = format!("{VENV}/bin/python3");
    require_tool(&python, "its PyYAML reads the manifests");
    let output = run(
        Command::new(&python)
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            ])
            .arg(manifest(name)),
        COMMAND_TIMEOUT,
    );
    assert!(output.status.success(), "reading {name}: {}", said(&output));
    serde_json::from_slice(&output.stdout).expect("JSON from PyYAML")
}

/// The arguments of every idlegate container in a manifest.
fn idlegate_args(name: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for document in documents(name) {
        let pod = &document["spec"]["template"]["spec"];
        // Native sidecars (Kubernetes 1.29+) are init containers.
        let containers = [&pod["initContainers"], &pod["containers"]];
        for container in containers
            .into_iter()
            .flat_map(|c| c.as_array().into_iter().flatten())
        {
            if container["image"]
                .as_str()
                .is_some_and(|i| i.starts_with(IMAGE))
            {
                let args = container["args"]
                    .as_array()
                    .expect("an idlegate container's args");
                found.push(
                    args.iter()
                        .map(|a| a.as_str().unwrap().to_string())
                        .collect(),
                );
            }
        }
    }
    assert!(!found.is_empty(), "{name} runs no {IMAGE}* container");
    found
}

/// Fails unless every flag of `args` is one the command has, with a value it parses: clap reads
/// the flags in order and answers `--help` at the end. No more: `--help` stops clap before its
/// conflict and required-flag checks and before the command's own validation.
fn assert_flags_in_help(name: &str, args: &[String]) {
    let output = run(
        Command::new(IDLEGATE).args(args).arg("--help"),
        COMMAND_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "{name}: idlegate {args:?}: {}",
        said(&output)
    );
}

#[test]
fn kubernetes_relay_and_tunnel_exit_container_flags_exist_in_idlegate_help() {
    for name in ["relay-sidecar.yaml", "tunnel-exit.yaml"] {
        for args in idlegate_args(name) {
            assert_eq!(args[0], "relay", "{name}: {args:?}");
            assert_flags_in_help(name, &args);
        }
    }
}

#[test]
fn kubernetes_audit_daemonset_flags_exist_in_idlegate_help() {
    for args in idlegate_args("audit-daemonset.yaml") {
        assert_eq!(args[0], "audit", "{args:?}");
        assert_flags_in_help("audit-daemonset.yaml", &args);
    }
}
