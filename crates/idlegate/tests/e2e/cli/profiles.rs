//! `profiles`: the list, and a config printed by `profiles show` that `lab up --explain` accepts.

use super::*;

#[test]
fn profiles_lists_each_profile_and_show_prints_a_config_that_is_accepted() {
    let listed = idlegate(&["profiles"], COMMAND_TIMEOUT);
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

    let shown = idlegate(&["profiles", "show", "azure-lb"], COMMAND_TIMEOUT);
    assert!(shown.status.success(), "{}", shown.stderr);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, shown.stdout.as_bytes()).unwrap();
    let path = file.path().to_str().unwrap();
    let explained = idlegate(
        &["lab", "up", "--explain", "--config", path],
        COMMAND_TIMEOUT,
    );
    assert!(explained.status.success(), "{}", explained.stderr);
    assert!(
        explained.stdout.contains("lb_rule app: idle timeout 4 min"),
        "{}",
        explained.stdout
    );

    let unknown = idlegate(&["profiles", "show", "azure-lbb"], COMMAND_TIMEOUT);
    assert!(!unknown.status.success());
    assert!(
        unknown
            .stderr
            .contains("no profile \"azure-lbb\"; known: azure-lb"),
        "{}",
        unknown.stderr
    );
}
