//! `deploy/systemd`: each unit passes `systemd-analyze verify` without a word of warning, keeps
//! a low exposure by `systemd-analyze security`, and starts idlegate with a command line
//! idlegate accepts. All offline: no running systemd is needed, and no unit is started.

use super::*;

/// The units, and the most exposure `systemd-analyze security` may give each (its scale: 0
/// is the safest, 10 the least safe; `--threshold` counts tenths).
const UNITS: [(&str, u32); 3] = [
    ("idlegate-relay.service", 20),
    ("idlegate-tunnel-exit.service", 20),
    // TUN devices need CAP_NET_ADMIN and /dev/net/tun, and netlink.
    ("idlegate-gateway.service", 30),
];
/// Where the units start idlegate from.
const INSTALLED: &str = "/usr/local/bin/idlegate";

/// The units as shipped, but starting the binary these tests built (verify checks that
/// ExecStart's program exists), in a directory of their own, with idlegate's manual pages
/// (verify checks that each `Documentation=man:` page exists) under `man/`.
fn units_here() -> tempfile::TempDir {
    require_tool("systemd-analyze", "it checks the systemd units offline");
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (unit, _) in UNITS {
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit))
            .unwrap_or_else(|e| panic!("deploy/systemd/{unit}: {e}"));
        assert!(
            text.contains(INSTALLED),
            "{unit} does not start {INSTALLED}"
        );
        std::fs::write(dir.path().join(unit), text.replace(INSTALLED, IDLEGATE)).unwrap();
    }
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    let pages = run(
        Command::new(IDLEGATE).args(["man", "--out"]).arg(&man1),
        COMMAND_TIMEOUT,
    );
    assert!(pages.status.success(), "idlegate man: {}", said(&pages));
    dir
}

#[test]
fn systemd_units_pass_systemd_analyze_verify_without_a_warning() {
    let dir = units_here();
    for (unit, _) in UNITS {
        let output = run(
            Command::new("systemd-analyze")
                .args(["verify", unit])
                .env("MANPATH", dir.path().join("man"))
                .current_dir(dir.path()),
            COMMAND_TIMEOUT,
        );
        assert!(
            output.status.success() && output.stderr.is_empty() && output.stdout.is_empty(),
            "systemd-analyze verify {unit}: {}",
            said(&output)
        );
    }
}

#[test]
fn systemd_units_keep_their_exposure_low_by_systemd_analyze_security() {
    let dir = units_here();
    for (unit, most) in UNITS {
        let output = run(
            Command::new("systemd-analyze")
                .args(["security", "--offline=yes", "--no-pager"])
                .arg(format!("--threshold={most}"))
                .arg(unit)
                .current_dir(dir.path()),
            COMMAND_TIMEOUT,
        );
        assert!(
            output.status.success(),
            "{unit}: exposure above {}.{}: {}",
            most / 10,
            most % 10,
            said(&output)
        );
    }
}

/// ExecStart's arguments after the program, with the unit's environment filled in with the
/// values its comments show, and `$IDLEGATE_*_ARGS` (optional extra flags)
/// left out.
fn exec_start_args(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit)).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{unit} has no ExecStart="));
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some(INSTALLED), "{unit}: {line}");
    words
        .filter(|w| !(w.starts_with("$IDLEGATE_") && w.ends_with("_ARGS")))
        .map(|w| {
            w.replace("${IDLEGATE_LISTEN}", "0.0.0.0:7443")
                .replace("${IDLEGATE_CONNECT}", "127.0.0.1:5432")
        })
        .collect()
}

#[test]
fn systemd_units_start_idlegate_with_flags_it_accepts() {
    for (unit, _) in UNITS {
        let args = exec_start_args(unit);
        assert!(
            !args.iter().any(|a| a.contains('$') || a.contains('%')),
            "{unit}: a variable or specifier this test does not fill in: {args:?}"
        );
        // clap reads the flags in order and answers --help at the end, once every flag before
        // it is one the command has, with a value it parses.
        let output = run(
            Command::new(IDLEGATE).args(&args).arg("--help"),
            COMMAND_TIMEOUT,
        );
        assert!(
            output.status.success(),
            "{unit}: idlegate {args:?}: {}",
            said(&output)
        );
    }
}
