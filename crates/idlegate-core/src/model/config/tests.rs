//! Config tests: what is accepted, what is refused and how the refusal reads.

use super::*;

const VALID: &str = r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }, { name = "vm2", address = "192.0.2.12" }]
[[lb_rule]]
name = "app"
frontend = "public"
protocol = "tcp"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
idle_timeout = "4m"
expiry = "silent"
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
idle_timeout = "4m"
expiry = "silent"
"#;

#[test]
fn the_documented_example_is_valid_and_scaled() {
    let c = Config::from_toml(VALID, "gw.toml").unwrap();
    assert_eq!(c.profile.name, "azure-lb");
    assert_eq!(c.backend_pools[0].members.len(), 2);
    let rule = &c.lb_rules[0];
    assert_eq!(
        (rule.frontend_port, rule.backend_port, rule.idle.expiry),
        (7000, 7000, Expiry::Silent)
    );
    assert_eq!(c.scaled(rule.idle.timeout), Duration::from_secs(4));
    assert_eq!(c.outbound_rules[0].name, "egress");
}

#[test]
fn omitted_settings_take_the_profiles_defaults() {
    let text = VALID
        .replace("idle_timeout = \"4m\"\n", "")
        .replace("expiry = \"silent\"\n", "");
    let c = Config::from_toml(&text, "gw.toml").unwrap();
    // Azure LB: 4 min, silent drop by default (Azure "Load Balancer TCP Reset and Idle Timeout").
    assert_eq!(
        c.lb_rules[0].idle,
        Idle {
            timeout: Duration::from_secs(240),
            timeout_from: TimeoutFrom::ProfileDefault,
            expiry: Expiry::Silent,
            expiry_from: ExpiryFrom::Config,
        }
    );
    // Azure's default: 1,024 SNAT ports per member.
    assert_eq!(c.outbound_rules[0].ports_per_member, 1024);
}

/// Each kind of mistake, the line it is on, and the words of its message.
#[test]
#[rustfmt::skip]
fn each_mistake_is_refused_with_file_line_and_field() {
    let cases: &[(&str, &str, usize, &str)] = &[
        ("idle_timeout = \"4m\"", "idle_timeout = \"2m\"", 16, "idle_timeout = 2m is outside Azure LB's range: 4 min to 100 min"),
        ("idle_timeout = \"4m\"", "idle_timeout = \"101m\"", 16, "idle_timeout = 101m is outside Azure LB's range: 4 min to 100 min"),
        ("idle_timeout = \"4m\"", "idle_timeout = \"4 parsecs\"", 16, "is not a duration"),
        ("expiry = \"silent\"", "expiry = \"rst\"", 17, "expiry = \"rst\": must be one of \"silent\", \"reset\", \"reset-on-next\""),
        ("profile = \"azure-lb\"", "profile = \"azure-lbb\"", 1, "profile = \"azure-lbb\": no such profile"),
        ("time_scale = 60", "time_scale = 0", 2, "time_scale = 0: must be at least 1"),
        ("time_scale = 60", "time_scale = 60\nmax_flows = 0", 3, "max_flows = 0: from 1 to 2147483647"),
        ("time_scale = 60", "time_scale = 60\nmax_flows = 2147483648", 3, "max_flows = 2147483648: from 1 to 2147483647"),
        ("time_scale = 60", "time_scale = 60\nloose_pickup = true", 3, "loose_pickup: Azure LB (profile azure-lb) has no such setting; it is Linux conntrack's"),
        ("time_scale = 60", "time_scale = 60\nloose_pickup = 1", 3, "loose_pickup: expected true or false, found integer 1"),
        ("time_scale = 60", "time_scale = -1", 2, "time_scale: expected a whole number from 1 up to the profile's limit (every timer is divided by it; `idlegate profiles` shows the limit), found integer -1"),
        ("time_scale = 60", "time_scale = 3001", 2, "time_scale = 3001: at most 3000 with profile azure-lb, so that no timer (the shortest is 30 s) runs under 10 ms"),
        ("address = \"203.0.113.10\"", "address = \"203.0.113.300\"", 5, "address = \"203.0.113.300\" is not an IPv4 or IPv6 address"),
        ("address = \"192.0.2.12\"", "address = \"fd00::12\"", 14, "lb_rule \"app\": frontend \"public\" is IPv4 but member \"vm2\" (fd00::12) is IPv6; a rule's frontend and members must be of one address family"),
        ("address = \"203.0.113.10\"", "address = \"ff02::1\"", 5, "cannot be a host's address"),
        ("frontend = \"public\"\nprotocol", "frontend = \"pub\"\nprotocol", 11, "frontend = \"pub\" names no [[frontend]] (defined: public)"),
        ("backend_pool = \"vms\"\nbackend_port", "backend_pool = \"vm\"\nbackend_port", 14, "backend_pool = \"vm\" names no [[backend_pool]] (defined: vms)"),
        ("protocol = \"tcp\"", "protocol = \"sctp\"", 12, "protocol = \"sctp\": must be one of \"tcp\", \"udp\", \"all\""),
        ("frontend_port = 7000", "frontend_port = 70000", 13, "frontend_port: expected a port number from 1 to 65535, found integer 70000"),
        ("frontend_port = 7000", "frontend_port = \"x\"", 13, "frontend_port: expected a port number from 1 to 65535, found string \"x\""),
        ("idle_timeout = \"4m\"", "idle_timeout = 240", 16, "idle_timeout: expected a duration string like \"240s\" or \"4m\", found integer 240"),
        ("frontend_port = 7000", "frontend_port = 0", 13, "frontend_port = 0: must be 1–65535"),
        ("idle_timeout = \"4m\"\nexpiry = \"silent\"\n[[outbound", "idel_timeout = \"4m\"\nexpiry = \"silent\"\n[[outbound", 16, "unknown field `idel_timeout`"),
        ("{ name = \"vm2\", address = \"192.0.2.12\" }", "{ name = \"vm1\", address = \"192.0.2.12\" }", 8, "member name \"vm1\" is used twice"),
        ("{ name = \"vm2\", address = \"192.0.2.12\" }", "{ name = \"vm2\", address = \"192.0.2.11\" }", 8, "address 192.0.2.11 is already member \"vm1\"'s"),
        ("{ name = \"vm2\", address = \"192.0.2.12\" }", "{ name = \"vm2\", address = \"203.0.113.10\" }", 8, "is frontend \"public\"'s"),
        ("name = \"egress\"", "name = \"app\"", 19, "rule name \"app\" is used twice"),
        ("time_scale = 60", "time_scale = 60\nbogus = 1", 3, "unknown field `bogus`"),
        ("name = \"egress\"", "name = \"egress\"\nports_per_member = 12", 20, "ports_per_member = 12: Azure LB allocates SNAT ports in multiples of 8, from 8 to 64000"),
        ("name = \"egress\"", "name = \"egress\"\nports_per_member = 40000", 20, "outbound rules on frontend \"public\" need 80000 SNAT ports up to rule \"egress\" (ports_per_member × members); Azure LB allows at most 64000 on it"),
    ];
    for (from, to, line, words) in cases {
        assert!(VALID.contains(from), "case {to:?}: base text lacks {from:?}");
        let text = VALID.replacen(from, to, 1);
        let err = Config::from_toml(&text, "gw.toml").expect_err(to);
        assert_eq!(err.file, "gw.toml");
        assert_eq!(err.line, *line, "case {to:?}: {err}");
        assert!(err.message.contains(words), "case {to:?}: got {err}");
        assert!(err.to_string().starts_with(&format!("gw.toml:{line}:")), "{err}");
    }
}

/// Inbound NAT rule mistakes, each with its message and line.
#[test]
#[rustfmt::skip]
fn each_inbound_nat_rule_mistake_is_refused() {
    let head = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n[[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }, { name = \"vm2\", address = \"192.0.2.12\" }]\n[[lb_rule]]\nname = \"app\"\nfrontend = \"public\"\nfrontend_port = 7000\nbackend_pool = \"vms\"\nbackend_port = 7000\n[[inbound_nat_rule]]\nname = \"nat\"\nfrontend = \"public\"\nbackend_port = 22\n";
    let cases: &[(&str, usize, &str)] = &[
        ("frontend_port = 50001\nmember = \"vm3\"\n", 18, "member = \"vm3\" is no backend pool's member (defined: vm1, vm2)"),
        ("frontend_port = 7000\nmember = \"vm1\"\n", 17, "frontend_port: port 7000 of frontend \"public\" already belongs to rule \"app\""),
        ("frontend_port_range = [6990, 7010]\nbackend_pool = \"vms\"\n", 17, "ports 6990–7010 of frontend \"public\" overlap rule \"app\"'s"),
        ("frontend_port_range = [50000, 50000]\nbackend_pool = \"vms\"\n", 17, "has 1 port(s) for the 2 members of backend_pool \"vms\": one port per member"),
        ("frontend_port_range = [50010, 50000]\nbackend_pool = \"vms\"\n", 17, "give [first, last] with 1 ≤ first ≤ last ≤ 65535"),
        ("frontend_port = 50001\nbackend_pool = \"vms\"\n", 13, "give either frontend_port and member, or frontend_port_range and backend_pool"),
    ];
    for (tail, line, words) in cases {
        let err = Config::from_toml(&format!("{head}{tail}"), "nat.toml").expect_err(tail);
        assert_eq!(err.line, *line, "{tail:?}: {err}");
        assert!(err.message.contains(words), "{tail:?}: {err}");
    }
}

#[test]
fn tcp_and_udp_rules_may_share_a_port_but_all_claims_both() {
    let rule = |name: &str, protocol: &str| {
        format!("[[lb_rule]]\nname = \"{name}\"\nfrontend = \"public\"\nprotocol = \"{protocol}\"\nfrontend_port = 7000\nbackend_pool = \"vms\"\nbackend_port = 7000\n")
    };
    let head = VALID.split("[[lb_rule]]").next().unwrap();
    let both = format!("{head}{}{}", rule("t", "tcp"), rule("u", "udp"));
    let c = Config::from_toml(&both, "gw.toml").unwrap();
    assert_eq!(c.lb_rules[1].protocol, Protocols::Udp);
    let clash = format!("{head}{}{}", rule("t", "tcp"), rule("a", "all"));
    let err = Config::from_toml(&clash, "gw.toml").unwrap_err();
    assert!(
        err.message
            .contains("port 7000 of frontend \"public\" already belongs to rule \"t\""),
        "{err}"
    );
}

#[test]
fn each_profile_refuses_what_its_box_does_not_have() {
    let natgw = VALID.replace("profile = \"azure-lb\"", "profile = \"aws-natgw\"");
    let err = Config::from_toml(&natgw, "gw.toml").unwrap_err();
    assert!(
        err.message.contains(
            "lb_rule \"app\": AWS NAT Gateway (profile aws-natgw) has only outbound rules"
        ),
        "{err}"
    );
    let head = natgw.split("[[lb_rule]]").next().unwrap();
    let fixed = format!("{head}[[outbound_rule]]\nname = \"e\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\nidle_timeout = \"10m\"\n");
    let err = Config::from_toml(&fixed, "gw.toml").unwrap_err();
    assert!(
        err.message
            .contains("idle_timeout = 10m: AWS NAT Gateway's idle timeout is fixed at 350 s"),
        "{err}"
    );
    let shared = format!("{head}[[outbound_rule]]\nname = \"e\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\nports_per_member = 64\n");
    let err = Config::from_toml(&shared, "gw.toml").unwrap_err();
    assert!(err.message.contains("lends ports on demand"), "{err}");
}

#[test]
fn a_udp_rule_takes_no_idle_timeout_or_expiry() {
    let udp = VALID.replace("protocol = \"tcp\"", "protocol = \"udp\"");
    let err = Config::from_toml(&udp, "gw.toml").unwrap_err();
    assert_eq!(err.line, 16);
    assert!(
        err.message.contains(
            "a UDP rule's flows live Azure LB's UDP timeout (4 min); it takes no idle_timeout"
        ),
        "{err}"
    );
}

#[test]
fn a_config_without_rules_is_refused() {
    let text = VALID.split("[[lb_rule]]").next().unwrap();
    let err = Config::from_toml(text, "gw.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "gw.toml: no [[lb_rule]], [[inbound_nat_rule]], [[outbound_rule]] or [[nat_gateway]]: the gateway would drop every packet"
    );
}

#[test]
fn two_rules_on_one_frontend_port_are_refused() {
    let second = "[[lb_rule]]\nname = \"app2\"\nfrontend = \"public\"\nfrontend_port = 7000\nbackend_pool = \"vms\"\nbackend_port = 8000\n";
    let err = Config::from_toml(&format!("{VALID}{second}"), "gw.toml").unwrap_err();
    assert!(
        err.message.contains(
            "frontend_port: port 7000 of frontend \"public\" already belongs to rule \"app\""
        ),
        "{err}"
    );
    assert_eq!(err.line, 27);
}

/// `lb_rule` and `inbound_nat_rule` both claim their frontend ports first, then read their
/// idle settings against the profile's inbound range (Azure LB: 4–100 min).
#[test]
fn inbound_rules_are_refused_for_their_ports_before_their_idle_settings() {
    let head = VALID.split("[[outbound_rule]]").next().unwrap();
    let port_taken =
        "frontend_port: port 7000 of frontend \"public\" already belongs to rule \"app\"";
    let too_short = "idle_timeout = 2m is outside Azure LB's range: 4 min to 100 min";
    let cases = [
        ("[[lb_rule]]\nname = \"b\"\nfrontend = \"public\"\nfrontend_port = 7000\nbackend_pool = \"vms\"\nbackend_port = 7000\nidle_timeout = \"2m\"\n", 21, port_taken),
        ("[[lb_rule]]\nname = \"b\"\nfrontend = \"public\"\nfrontend_port = 7001\nbackend_pool = \"vms\"\nbackend_port = 7000\nidle_timeout = \"2m\"\n", 24, too_short),
        ("[[inbound_nat_rule]]\nname = \"n\"\nfrontend = \"public\"\nbackend_port = 22\nfrontend_port = 7000\nmember = \"vm1\"\nidle_timeout = \"2m\"\n", 22, port_taken),
        ("[[inbound_nat_rule]]\nname = \"n\"\nfrontend = \"public\"\nbackend_port = 22\nfrontend_port = 7001\nmember = \"vm1\"\nidle_timeout = \"2m\"\n", 24, too_short),
    ];
    for (rule, line, words) in cases {
        let err = Config::from_toml(&format!("{head}{rule}"), "gw.toml").unwrap_err();
        assert_eq!(err.line, line, "{rule:?}: {err}");
        assert!(err.message.contains(words), "{rule:?}: {err}");
    }
}

// Moved from the profiles: every profile's example config is a valid config.
#[test]
fn every_profiles_example_config_is_accepted_and_holds_its_defaults() {
    for profile in profile::ALL {
        let text = profile::example_config(profile);
        let config =
            Config::from_toml(&text, profile.name).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.profile, profile);
        if let Some(rule) = config.lb_rules.first() {
            assert_eq!(rule.idle.timeout, profile.lb_rule_idle.default);
        }
        if let Some(rule) = config.outbound_rules.first() {
            assert_eq!(rule.idle.timeout, profile.outbound_rule_idle.default);
            assert_eq!(rule.ports_per_member, profile.snat.ports_per_member);
        }
        assert_eq!(config.lb_rules.is_empty(), !profile.rules.inbound());
        assert_eq!(config.outbound_rules.is_empty(), !profile.rules.outbound());
    }
}

#[test]
fn an_unknown_profile_is_refused_with_every_name_and_the_close_one_as_hint() {
    let text = VALID.replacen("profile = \"azure-lb\"", "profile = \"aws-nat-gateway\"", 1);
    let err = Config::from_toml(&text, "gw.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "gw.toml:1:11: profile = \"aws-nat-gateway\": no such profile"
    );
    let hint = err.hint.unwrap_or_default();
    assert!(
        hint.starts_with("did you mean aws-natgw? The profiles are azure-lb, "),
        "{hint}"
    );
}

/// A value in an inline table is explained by its own key, as a top-level key's is.
#[test]
fn a_value_in_an_inline_table_is_explained_by_its_key_as_a_top_level_value_is() {
    let text = VALID.replacen("address = \"192.0.2.12\"", "address = 12", 1);
    let err = Config::from_toml(&text, "gw.toml").unwrap_err();
    assert_eq!(
        err.message,
        "address: expected an IP address string like \"203.0.113.10\", found integer 12",
        "{err}"
    );
    assert_eq!(err.line, 8, "{err}");
}

#[test]
fn timers_racing_tcp_are_floored_at_3_s_and_never_run_longer_than_the_real_timer() {
    // RFC 6298 §2.1: TCP's initial retransmission timeout is 1 s whatever the lab's scale.
    let secs = Duration::from_secs;
    let ms = Duration::from_millis;
    let c = Config::from_toml(VALID, "gw.toml").unwrap();
    assert_eq!(c.time_scale, 60);
    // Azure's 30 s handshake timer: 500 ms scaled, lifted to the floor.
    assert_eq!(c.scaled(secs(30)), ms(500));
    assert_eq!(c.scaled_racing_tcp(secs(30)), TCP_RETRANSMISSION_FLOOR);
    assert!(c.floored(secs(30)));
    // A long timer whose scaled value is above the floor stays purely scaled.
    assert_eq!(c.scaled_racing_tcp(secs(240)), secs(4));
    assert!(!c.floored(secs(240)));
    // A real timer shorter than the floor runs as it really does, never longer.
    assert_eq!(c.scaled_racing_tcp(secs(2)), secs(2));
    assert_eq!(c.scaled_racing_tcp(ms(10)), ms(10));
    for d in [
        ms(1),
        secs(1),
        secs(3),
        secs(10),
        secs(30),
        secs(120),
        secs(7_200),
    ] {
        let runs = c.scaled_racing_tcp(d);
        assert!(runs <= d, "{d:?} runs {runs:?}, longer than the real timer");
        assert!(
            runs >= c.scaled(d),
            "{d:?} runs {runs:?}, under its scaled value"
        );
    }
    // Unscaled, the floor changes nothing.
    let real = Config::from_toml(
        &VALID.replace("time_scale = 60", "time_scale = 1"),
        "gw.toml",
    )
    .unwrap();
    assert_eq!(real.scaled_racing_tcp(secs(30)), secs(30));
    assert!(!real.floored(secs(30)));
}

#[test]
fn established_idle_timeouts_and_udp_timers_stay_purely_scaled() {
    let c = Config::from_toml(VALID, "gw.toml").unwrap();
    assert_eq!(c.scaled(c.lb_rules[0].idle.timeout), Duration::from_secs(4));
    assert_eq!(
        c.scaled(c.profile.udp.unreplied),
        c.profile.udp.unreplied / 60
    );
}

/// Azure Firewall's east-west path sends no RST, and its north-south path always resets
/// both ends: no setting changes either, so a rule's `expiry` may only repeat it, as a fixed
/// idle timeout is refused (issue 21).
#[test]
fn an_expiry_the_box_cannot_do_is_refused_with_what_it_does_instead() {
    let east_west = VALID
        .replacen(
            "profile = \"azure-lb\"",
            "profile = \"azure-firewall-east-west\"",
            1,
        )
        .replace("idle_timeout = \"4m\"", "idle_timeout = \"5m\"")
        .replacen("expiry = \"silent\"", "expiry = \"reset\"", 1);
    let err = Config::from_toml(&east_west, "ew.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "ew.toml:17:10: expiry = \"reset\": Azure Firewall (east-west) cannot do that; at expiry it drops the flow silently, with no RST to either end, and no setting changes it (leave expiry out, or write \"silent\")"
    );
    let north_south = VALID
        .replacen("profile = \"azure-lb\"", "profile = \"azure-firewall\"", 1)
        .replacen("expiry = \"silent\"", "expiry = \"reset\"", 1);
    let err = Config::from_toml(&north_south, "ns.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "ns.toml:23:10: expiry = \"silent\": Azure Firewall (north-south) cannot do that; at expiry it sends a RST to both ends, and no setting changes it (leave expiry out, or write \"reset\")"
    );
    // Repeating the box's own action is accepted.
    let ok = east_west.replace("expiry = \"reset\"", "expiry = \"silent\"");
    assert!(Config::from_toml(&ok, "ew.toml").is_ok());
}

/// Every profile with a fixed expiry refuses each other action; Azure LB, whose rules choose,
/// and the Linux and RFC profiles, where the box's own rules may, accept every action.
#[test]
fn only_the_profiles_whose_rules_choose_their_expiry_accept_every_action() {
    for profile in crate::model::profile::ALL {
        for expiry in Expiry::ALL {
            let accepted = profile.accepts_expiry(expiry);
            let choosable = matches!(
                profile.name,
                "azure-lb" | "linux-conntrack" | "kube-proxy" | "ipvs" | "rfc5382"
            );
            assert_eq!(
                accepted,
                choosable || expiry == profile.default_expiry,
                "{} {expiry}",
                profile.name
            );
        }
    }
    // AWS NAT gateway answers only the inside host's next packet.
    let aws = crate::model::profile::find("aws-natgw").unwrap();
    let text = VALID
        .replacen("profile = \"azure-lb\"", "profile = \"aws-natgw\"", 1)
        .replacen("[[lb_rule]]", "[[unused]]", 1);
    let text = text
        .split("[[unused]]")
        .next()
        .unwrap()
        .to_string()
        + "[[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\nexpiry = \"reset\"\n";
    let err = Config::from_toml(&text, "aws.toml").unwrap_err();
    assert!(
        err.message.ends_with(&format!(
            "at expiry it {}, and no setting changes it (leave expiry out, or write \"reset-on-next\")",
            aws.at_expiry()
        )),
        "{}",
        err.message
    );
    assert!(aws.at_expiry().contains("inside host's next packet"));
}

/// A NAT gateway in an Azure LB config is Azure NAT Gateway, whose expiry is fixed.
#[test]
fn a_nat_gateway_refuses_an_expiry_azure_nat_gateway_cannot_do() {
    let text = VALID.to_string()
        + "[[frontend]]\nname = \"nat\"\naddress = \"203.0.113.20\"\n\
           [[backend_pool]]\nname = \"other\"\nmembers = [{ name = \"vm3\", address = \"192.0.2.13\" }]\n\
           [[nat_gateway]]\nname = \"natgw\"\nfrontend = \"nat\"\nbackend_pools = [\"other\"]\nexpiry = \"reset\"\n";
    let err = Config::from_toml(&text, "gw.toml").unwrap_err();
    assert!(
        err.message
            .starts_with("expiry = \"reset\": Azure NAT Gateway cannot do that"),
        "{}",
        err.message
    );
}

/// Found by the config fuzz target: a TOML error after a line whose last non-key character
/// before `=` is wider than a byte used to panic (a slice inside the character).
#[test]
fn a_toml_error_after_a_wide_character_before_the_equals_sign_is_an_error_not_a_panic() {
    for text in [
        "# aӝb =\u{18}1\n",
        "ӝ =\u{18}\n",
        "[[lb_rule]]\nnameӝ = 5x\n",
    ] {
        let e = Config::from_toml(text, "t.toml").unwrap_err();
        assert!(e.line >= 1, "{text:?}: {e}");
    }
}
