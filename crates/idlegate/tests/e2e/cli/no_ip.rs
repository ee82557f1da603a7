//! The lab on a machine without iproute2: `lab demo`, `lab up` and `lab exec` run with a
//! `PATH` that is one empty directory, so no `ip` (or any other program) can be found by name.
//! idlegate speaks netlink and makes namespaces with syscalls itself; a run of `ip` would fail
//! with "No such file or directory".

use super::*;

/// An empty directory to be the whole `PATH`; removed when dropped.
fn empty_path() -> tempfile::TempDir {
    tempfile::tempdir().expect("making an empty directory for PATH")
}

#[test]
fn lab_demo_runs_with_no_program_on_path_and_gives_the_three_verdicts() {
    let lab = lab_name();
    let path = empty_path();
    let out = common::output_within(
        Command::new(IDLEGATE)
            .args(["lab", "demo", "--json", "--name", &lab])
            .env("PATH", path.path())
            .stdin(Stdio::null()),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab demo failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("lab demo printed no JSON ({e}): {stderr}"));
    // The three verdicts, as with iproute2 (tests/e2e/gateway.rs): the flow forgotten in
    // silence, kept by keepalive, reset on both sides.
    let delivered = |name: &str| -> Vec<String> {
        let c = report["connections"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no connection {name} in {report}"));
        serde_json::from_value(c["delivered"].clone()).expect("a list of messages")
    };
    assert_eq!(delivered("no-keepalive"), ["a", "b"], "{report}");
    assert_eq!(delivered("keepalive"), ["a", "b", "c"], "{report}");
    assert_eq!(delivered("tcp-reset"), ["a", "b"], "{report}");
    assert_eq!(report["gateway"]["resets_sent"], 2, "{report}");
    assert_eq!(
        namespaces_of(&lab),
        Vec::<String>::new(),
        "the demo left namespaces"
    );
}

#[test]
fn lab_up_and_lab_exec_run_with_no_program_on_path_and_exec_sees_only_its_hosts_devices() {
    let name = lab_name();
    let path = empty_path();
    let lab = Lab::up_in(
        &name,
        &example_config(),
        &[],
        Command::new(IDLEGATE).env("PATH", path.path()),
    );
    let out = common::output_within(
        Command::new(IDLEGATE)
            .args(["lab", "exec", "--name", &name, "vm1", "--"])
            .args(["/bin/sh", "-c", "echo /sys/class/net/*"])
            .env("PATH", path.path())
            .stdin(Stdio::null()),
        COMMAND_TIMEOUT,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "lab exec failed: {stderr}");
    // /sys is mounted afresh for the namespace, as `ip netns exec` does: its loopback and
    // the one TUN device of the host, none of the machine's own devices.
    let devices: Vec<&str> = stdout
        .split_whitespace()
        .filter_map(|d| d.strip_prefix("/sys/class/net/"))
        .collect();
    assert_eq!(devices.len(), 2, "{stdout}");
    assert!(devices.contains(&"lo"), "{stdout}");
    assert!(devices.iter().any(|d| d.starts_with("ig")), "{stdout}");
    drop(lab);
    assert_eq!(
        namespaces_of(&name),
        Vec::<String>::new(),
        "lab up left namespaces"
    );
}
