//! `completions` and `man`: made from the command line's own definitions, so they offer and
//! describe every command there is, and render with the tools a user has.

use super::*;

/// Every top-level command, as `idlegate --help` lists them.
const COMMANDS: [&str; 15] = [
    "gateway",
    "lab",
    "flows",
    "echo",
    "probe",
    "relay",
    "keepalive",
    "run",
    "audit",
    "advise",
    "import",
    "keygen",
    "profiles",
    "completions",
    "man",
];

#[test]
fn bash_completions_parse_and_offer_every_command_after_idlegate() {
    let out = idlegate(&["completions", "bash"], COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}", out.stderr);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, out.stdout.as_bytes()).unwrap();
    let path = file.path().to_str().unwrap();
    let parsed = run_bounded("bash", &["-n", path], COMMAND_TIMEOUT);
    assert!(parsed.status.success(), "bash -n: {}", parsed.stderr);
    // What bash offers for `idlegate <TAB>`: the completion function, called as bash calls it.
    let tab = format!(
        "source {path}; COMP_WORDS=(idlegate ''); COMP_CWORD=1; COMP_LINE='idlegate '; \
         COMP_POINT=9; _idlegate idlegate '' idlegate; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    );
    let offered = run_bounded("bash", &["-c", &tab], COMMAND_TIMEOUT);
    assert!(offered.status.success(), "{}", offered.stderr);
    for command in COMMANDS {
        assert!(
            offered.stdout.lines().any(|l| l == command),
            "`idlegate <TAB>` does not offer {command}: {}",
            offered.stdout
        );
    }
}

#[test]
fn zsh_and_fish_completions_name_every_command() {
    let zsh = idlegate(&["completions", "zsh"], COMMAND_TIMEOUT);
    assert!(zsh.status.success(), "{}", zsh.stderr);
    assert!(
        zsh.stdout.starts_with("#compdef idlegate"),
        "{}",
        zsh.stdout
    );
    let fish = idlegate(&["completions", "fish"], COMMAND_TIMEOUT);
    assert!(fish.status.success(), "{}", fish.stderr);
    for command in COMMANDS {
        assert!(
            zsh.stdout.contains(&format!("'{command}:")),
            "zsh: no {command}"
        );
        assert!(
            fish.stdout.contains(&format!("-a \"{command}\"")),
            "fish: no {command}"
        );
    }
    let unknown = idlegate(&["completions", "tcsh"], COMMAND_TIMEOUT);
    assert_eq!(unknown.status.code(), Some(2), "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("invalid value 'tcsh'"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn man_writes_a_page_per_command_that_man_renders_with_its_options() {
    let page = idlegate(&["man"], COMMAND_TIMEOUT);
    assert!(page.status.success(), "{}", page.stderr);
    assert!(page.stdout.contains(".TH idlegate 1"), "{}", page.stdout);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let wrote = idlegate(&["man", "--out", out], COMMAND_TIMEOUT);
    assert!(wrote.status.success(), "{}", wrote.stderr);
    for name in [
        "idlegate",
        "idlegate-lab-up",
        "idlegate-relay",
        "idlegate-profiles-show",
    ] {
        assert!(
            dir.path().join(format!("{name}.1")).is_file(),
            "no {name}.1: {}",
            wrote.stdout
        );
    }
    for command in COMMANDS {
        assert!(
            dir.path().join(format!("idlegate-{command}.1")).is_file(),
            "no page for {command}"
        );
    }
    let rendered = common::output_within(
        Command::new("man")
            .args(["-l", dir.path().join("idlegate-relay.1").to_str().unwrap()])
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .stdin(Stdio::null()),
        COMMAND_TIMEOUT,
    );
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(rendered.status.success(), "man -l: {text}");
    assert!(text.contains("idlegate-relay"), "{text}");
    assert!(text.contains("--heartbeat"), "{text}");
}

#[test]
fn man_into_a_directory_that_does_not_exist_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("man1");
    let missing = missing.to_str().unwrap();
    let refused = idlegate(&["man", "--out", missing], COMMAND_TIMEOUT);
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .starts_with(&format!("idlegate: --out {missing}: not a directory")),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("hint: create it first"),
        "{}",
        refused.stderr
    );
    assert!(!dir.path().join("man1").exists());
}
