//! `--api` and `--api-token-file` refused before anything starts: an address not on loopback
//! without a token, and a token file too short, end `gateway` and `lab up` with exit status 2
//! and the one message for each, before any TUN device or namespace is made.
//!
//! Needs root: without it a gateway that failed to refuse would fail later, for want of
//! privilege, and the test could not tell.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");
/// How long a command that must refuse may run (it starts nothing).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/azure-lb.toml")
}

/// Runs `idlegate ARGS…` to completion (bounded): (exit code, stderr).
fn idlegate(args: &[&str]) -> (Option<i32>, String) {
    let out = common::output_within(
        Command::new(IDLEGATE).args(args).stdin(Stdio::null()),
        COMMAND_TIMEOUT,
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn device_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Runs `gateway` with devices of unique names and `extra`; returns (exit code, stderr) and
/// checks that neither device was made.
fn gateway(extra: &[&str]) -> (Option<i32>, String) {
    common::require_root();
    let name = common::unique("ap");
    let (inside, outside) = (format!("{name}i"), format!("{name}o"));
    let control = tempfile::tempdir().unwrap();
    let control = control.path().join("gateway.sock");
    let config = example_config();
    let mut args = vec![
        "gateway",
        "--config",
        config.to_str().unwrap(),
        "--inside",
        &inside,
        "--outside",
        &outside,
        "--control",
        control.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let answer = idlegate(&args);
    assert!(
        !device_exists(&inside) && !device_exists(&outside),
        "a device was made: {answer:?}"
    );
    answer
}

#[test]
fn gateway_api_on_a_non_loopback_address_without_a_token_exits_2_before_making_any_device() {
    let (code, stderr) = gateway(&["--api", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "idlegate: --api 0.0.0.0:0: not a loopback address, and no token\n\
         hint: give --api-token-file FILE (every request then carries it), or serve on 127.0.0.1\n"
    );
}

#[test]
fn gateway_with_a_15_byte_token_file_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "0123456789abcde\n").unwrap();
    let (code, stderr) = gateway(&[
        "--api",
        "0.0.0.0:0",
        "--api-token-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "idlegate: --api-token-file {}: the token is 15 bytes long; at least 16 are needed",
            file.display()
        )
    );
}

#[test]
fn lab_up_api_on_a_non_loopback_address_without_a_token_exits_2_and_makes_no_namespace() {
    common::require_root();
    let name = common::unique("ap");
    let config = example_config();
    let (code, stderr) = idlegate(&[
        "lab",
        "up",
        "--config",
        config.to_str().unwrap(),
        "--name",
        &name,
        "--api",
        "[::]:9466",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("idlegate: --api [::]:9466: not a loopback address, and no token\n"),
        "{stderr}"
    );
    let prefix = format!("ig-{name}-");
    let made: Vec<String> = idlegate::sys::netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect();
    for ns in &made {
        let _ = idlegate::sys::netns::delete(ns);
    }
    assert!(made.is_empty(), "namespaces made: {made:?}");
}
