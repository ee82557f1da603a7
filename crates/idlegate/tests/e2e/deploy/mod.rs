//! The ways idlegate reaches a user, tested as a user would meet them: the static binary of
//! `scripts/build-static` (`static_build`), the container image of `scripts/build-image` run
//! with podman (`container`), the systemd units of `deploy/systemd` checked offline with
//! `systemd-analyze` (`systemd`) and the manifests of `deploy/kubernetes` checked against
//! Kubernetes' schemas with `kubernetes-validate` (`kubernetes`).
//!
//! A tool these tests need and do not find (musl-gcc, podman, runc, systemd-analyze,
//! kubernetes-validate) fails the test, naming it and `scripts/setup`, which installs them;
//! nothing here passes by skipping. The static build runs once per test process
//! ([`static_binary`]): `scripts/test` builds it before the tests, so here it only checks that
//! nothing changed (seconds); from a fresh clone the first test to need it builds it (minutes).

mod container;
mod kubernetes;
mod static_build;
mod systemd;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

/// The debug binary cargo built for these tests: enough where only the command line counts.
const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");
/// How long a short command (a `--help`, a validation, `systemd-analyze verify`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the static build may take: a few seconds when `scripts/test` built it already,
/// several minutes from scratch (LTO on 2 busy cores).
const STATIC_BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The checkout's top directory.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the checkout's top directory")
}

/// Fails the test unless `program` is on PATH (or is a path that exists), saying what is
/// missing and what installs it.
fn require_tool(program: &str, why: &str) {
    let found = if program.contains('/') {
        Path::new(program).exists()
    } else {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        })
    };
    assert!(
        found,
        "{program} is missing: {why}\nhint: run scripts/setup as root (it installs what the tests need)"
    );
}

/// Runs `command` within `timeout`, failing the test if it runs longer.
fn run(command: &mut Command, timeout: Duration) -> Output {
    crate::common::output_within(command, timeout)
}

/// `output` as text, for messages.
fn said(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `script` of the checkout's `scripts/`, to run as from a shell in the checkout: without the
/// variables cargo sets for a test about the test's own package. They would reach the cargo
/// that the script runs, and ring's build script reruns when CARGO_MANIFEST_DIR changes, so
/// the static build would be redone here and again after each `scripts/build-static` outside.
fn script(script: &str) -> Command {
    let mut command = Command::new(repo().join("scripts").join(script));
    command.current_dir(repo());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let of_the_test = [
            "CARGO",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
        ]
        .contains(&name.as_ref())
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_");
        if of_the_test {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// The static binary `scripts/build-static` wrote (built once per test process).
fn static_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        require_tool(
            "musl-gcc",
            "the static build compiles ring's C code with it",
        );
        let output = run(&mut script("build-static"), STATIC_BUILD_TIMEOUT);
        assert!(
            output.status.success(),
            "scripts/build-static failed: {}",
            said(&output)
        );
        let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        assert!(
            path.is_file(),
            "scripts/build-static printed {path:?}, not a file"
        );
        path
    })
}

/// The workspace's version, which the static binary's name and `--version` carry.
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Whether process `pid` is gone (or dead, waiting to be reaped by whoever inherited it).
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[test]
fn a_command_that_runs_too_long_is_killed_with_every_process_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // A script whose own child (as a build script's cargo would be) outlives the timeout.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("sleep 600 & echo $! > \"$1\"; wait")
        .arg("sh")
        .arg(&pid_file);
    let timed_out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&mut command, Duration::from_secs(5))
    }));
    assert!(timed_out.is_err(), "the command outlived its timeout");
    let pid = std::fs::read_to_string(&pid_file).expect("the script's child's pid");
    let pid = pid.trim();
    let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
    while !gone(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !gone(pid) {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
        panic!("the script's child {pid} still ran after its script was killed");
    }
}
