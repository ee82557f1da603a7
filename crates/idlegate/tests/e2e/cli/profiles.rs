//! `profiles`: the list, a config printed by `profiles show` that `lab up --explain` accepts,
//! `--json`, and `--markdown`, which is the book's committed reference page.

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
    assert_eq!(unknown.status.code(), Some(2), "{}", unknown.stderr);
    assert!(
        unknown
            .stderr
            .starts_with("idlegate: profiles show azure-lbb: no such profile\nhint: did you mean azure-lb? The profiles are azure-lb, "),
        "{}",
        unknown.stderr
    );
}

/// The book's profile reference page is `profiles --markdown`'s output, committed: when the
/// tables change and the page does not, this fails and says how to regenerate it.
#[test]
fn the_books_profile_page_is_what_profiles_markdown_prints() {
    let page_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/src/reference/profile-figures.md");
    let generated = idlegate(&["profiles", "--markdown"], COMMAND_TIMEOUT);
    assert!(generated.status.success(), "{}", generated.stderr);
    let committed = std::fs::read_to_string(&page_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", page_path.display()));
    assert!(
        committed == generated.stdout,
        "docs/src/reference/profile-figures.md differs from `idlegate profiles --markdown`; \
         regenerate it from the repository's root with\n  cargo run -q -p idlegate -- profiles \
         --markdown > docs/src/reference/profile-figures.md\nand commit it"
    );
}

/// `profiles --json`: one document on stdout, every profile with its figures in seconds.
#[test]
fn profiles_json_holds_every_profile_with_its_figures_and_sources() {
    let listed = idlegate(&["profiles", "--json"], COMMAND_TIMEOUT);
    assert!(listed.status.success(), "{}", listed.stderr);
    let doc: serde_json::Value = serde_json::from_str(&listed.stdout)
        .unwrap_or_else(|e| panic!("not JSON: {e}\n{}", listed.stdout));
    let profiles = doc["profiles"].as_array().expect("a profiles array");
    assert_eq!(profiles.len(), 15, "{}", listed.stdout);
    let find = |name: &str| {
        profiles
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {}", listed.stdout))
    };
    // Azure LB: LB rules 4 min by default, 4–100 min; silent at expiry; 1,024 SNAT ports per
    // member in multiples of 8 (Azure "Load Balancer TCP Reset and Idle Timeout", "Outbound
    // rules").
    let azure = find("azure-lb");
    assert_eq!(azure["rules"], "inbound-and-outbound");
    assert_eq!(azure["lb_rule_idle_s"]["default"], 240.0);
    assert_eq!(azure["lb_rule_idle_s"]["max"], 6000.0);
    assert_eq!(azure["default_expiry"], "silent");
    assert_eq!(azure["snat"]["ports_per_member"], 1024);
    assert_eq!(azure["snat"]["ports_per_member_step"], 8);
    assert!(azure["sources"][0]["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("https://learn.microsoft.com/")));
    // AWS NAT gateway: 350 s fixed, a RST to the inside host on the next packet, no LB rules.
    let natgw = find("aws-natgw");
    assert_eq!(natgw["rules"], "outbound-only");
    assert!(natgw["lb_rule_idle_s"].is_null());
    assert_eq!(natgw["outbound_rule_idle_s"]["min"], 350.0);
    assert_eq!(natgw["outbound_rule_idle_s"]["max"], 350.0);
    assert_eq!(natgw["default_expiry"], "reset-on-next");
    assert_eq!(natgw["reset_on_next_to"], "inside-host-only");
    // Azure "SNAT for outbound connections": when the idle timeout is reached the port is
    // released; after a RST it is held.
    assert_eq!(azure["snat"]["hold_after_rst_s"], 15.0);
    assert_eq!(azure["snat"]["hold_after_idle_s"], 0.0);
    // App Service: 128 preallocated SNAT ports per instance, 4 min hold after a close.
    let app = find("azure-appservice");
    assert_eq!(app["rules"], "outbound-only");
    assert_eq!(app["snat"]["ports_per_member"], 128);
    assert_eq!(app["snat"]["hold_after_fin_s"], 240.0);
    // Azure Firewall: north-south raisable to 15 min with a RST to both; east-west 5 min fixed,
    // silent.
    let north_south = find("azure-firewall");
    assert_eq!(north_south["outbound_rule_idle_s"]["max"], 900.0);
    assert_eq!(north_south["default_expiry"], "reset");
    let east_west = find("azure-firewall-east-west");
    assert_eq!(east_west["outbound_rule_idle_s"]["min"], 300.0);
    assert_eq!(east_west["outbound_rule_idle_s"]["max"], 300.0);
    assert_eq!(east_west["default_expiry"], "silent");
    // GCP Cloud NAT: TIME_WAIT 30 s for gateways created from 30 September 2026, settable.
    let gcp = find("gcp-nat");
    assert_eq!(gcp["time_wait_s"]["default"], 30.0);
    assert_eq!(gcp["snat"]["hold_after_fin_s"], 30.0);
    assert!(azure["time_wait_s"].is_null());
    // AWS ALB: only data refreshes a flow.
    assert_eq!(find("aws-alb")["refresh"], "data-only");
    for p in profiles {
        assert!(!p["sources"].as_array().is_none_or(|s| s.is_empty()), "{p}");
    }
}

/// `profiles show <NAME>`'s help said nothing of NAME (issue 20, item 13).
#[test]
fn profiles_show_help_says_what_name_is() {
    let help = idlegate(&["profiles", "show", "--help"], COMMAND_TIMEOUT);
    assert!(help.status.success(), "{}", help.stderr);
    assert!(
        help.stdout
            .contains("<NAME>  The profile's name, as `idlegate profiles` lists them"),
        "{}",
        help.stdout
    );
}
