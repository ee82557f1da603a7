//! The Windows build's commands under Wine: the ones it has, and that they run.

use super::idlegate_exe;

/// Commands that exist on Linux only (TUN devices, namespaces, procfs, sock_diag, pidfds):
/// the Windows build must not offer them at all.
const LINUX_ONLY: [&str; 6] = ["gateway", "lab", "flows", "audit", "keepalive", "run"];

/// The command names `--help` lists (the first word of each line under "Commands:").
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn windows_build_under_wine_lists_the_profiles() {
    let listed = idlegate_exe(&["profiles"]);
    assert!(listed.status.success(), "{}", listed.stderr);
    assert!(
        listed.stdout.contains("azure-lb (Azure LB)"),
        "{}",
        listed.stdout
    );
    assert!(
        listed.stdout.contains("4 min (4 min–100 min)"),
        "{}",
        listed.stdout
    );
}

#[test]
fn windows_build_under_wine_offers_no_linux_only_command() {
    let help = idlegate_exe(&["--help"]);
    assert!(help.status.success(), "{}", help.stderr);
    let listed = commands(&help.stdout);
    for present in [
        "relay",
        "keygen",
        "echo",
        "probe",
        "advise",
        "import",
        "profiles",
        "service",
        "completions",
        "man",
    ] {
        assert!(
            listed.iter().any(|c| c == present),
            "{present} missing from:\n{}",
            help.stdout
        );
    }
    for absent in LINUX_ONLY {
        assert!(
            !listed.iter().any(|c| c == absent),
            "{absent} offered by the Windows build:\n{}",
            help.stdout
        );
        // Not hidden either: clap does not know the word.
        let asked = idlegate_exe(&[absent, "--help"]);
        assert!(!asked.status.success(), "{absent} --help succeeded");
        assert!(
            asked.stderr.contains("unrecognized subcommand"),
            "{absent}: {}",
            asked.stderr
        );
    }
}

#[test]
fn windows_build_under_wine_advises_the_windows_registry_values() {
    let advice = idlegate_exe(&["advise", "--os", "windows", "--profile", "azure-lb"]);
    assert!(advice.status.success(), "{}", advice.stderr);
    for line in ["KeepAliveTime = 120000", "KeepAliveInterval = 30000"] {
        assert!(
            advice.stdout.contains(line),
            "{line} missing:\n{}",
            advice.stdout
        );
    }
}

#[test]
fn windows_build_under_wine_advises_the_relay_by_default_and_no_linux_command() {
    // No --os: the Windows build's own system. Windows has no `keepalive --pid`, `run` or
    // sysctl; a program that never sets SO_KEEPALIVE gets the relay, as a service.
    let advice = idlegate_exe(&["advise", "--profile", "azure-lb"]);
    assert!(advice.status.success(), "{}", advice.stderr);
    for line in [
        "KeepAliveTime = 120000",
        "idlegate relay --listen 0.0.0.0:PORT --connect 127.0.0.1:APP_PORT --keepalive 120s,30s,8",
        "idlegate service install --name idlegate-relay -- --listen 0.0.0.0:PORT --connect 127.0.0.1:APP_PORT --keepalive 120s,30s,8",
    ] {
        assert!(
            advice.stdout.lines().any(|l| l == line),
            "{line} missing:\n{}",
            advice.stdout
        );
    }
    for linux in ["keepalive --pid", "idlegate run", "sysctl"] {
        assert!(
            !advice.stdout.contains(linux),
            "{linux} in:\n{}",
            advice.stdout
        );
    }
}

#[test]
fn windows_build_under_wine_prints_powershell_completions() {
    let script = idlegate_exe(&["completions", "powershell"]);
    assert!(script.status.success(), "{}", script.stderr);
    assert!(
        script.stdout.contains("Register-ArgumentCompleter"),
        "{}",
        script.stdout
    );
    assert!(script.stdout.contains("'profiles'"), "{}", script.stdout);
    assert!(!script.stdout.contains("'gateway'"), "{}", script.stdout);
}
