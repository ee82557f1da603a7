//! Precedence pair by pair, the explanation and the timers it says run at the floor.

use super::*;

fn config(
    frontend_idle: Option<&str>,
    lb_idle: Option<&str>,
    outbound_idle: Option<&str>,
) -> Config {
    let line =
        |key: &str, v: Option<&str>| v.map_or(String::new(), |v| format!("{key} = \"{v}\"\n"));
    let text = format!(
        "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n{}\
         [[backend_pool]]\nname = \"vms\"\nmembers = [{{ name = \"vm1\", address = \"192.0.2.11\" }}]\n\
         [[lb_rule]]\nname = \"app\"\nfrontend = \"public\"\nfrontend_port = 7000\nbackend_pool = \"vms\"\nbackend_port = 7000\n{}\
         [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n{}",
        line("idle_timeout", frontend_idle),
        line("idle_timeout", lb_idle),
        line("idle_timeout", outbound_idle),
    );
    Config::from_toml(&text, "test").unwrap()
}

/// Azure "Load Balancer TCP Reset and Idle Timeout", "Order of precedence", pair by pair.
#[test]
#[rustfmt::skip]
fn every_precedence_pair_of_azures_list_resolves_as_documented() {
    let min = |m: u64| Duration::from_secs(m * 60);
    // (frontend, lb_rule, outbound_rule idle_timeout) → (minutes, winner) for each rule.
    type Settings<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
    type Expected = (u64, Winner);
    let cases: &[(Settings, Expected, Expected)] = &[
        // Inbound: "the load balancer frontend IP idle timeout takes precedence" over the LB rule's.
        ((Some("10m"), Some("20m"), None), (10, Winner::Frontend), (4, Winner::ProfileDefault)),
        ((Some("10m"), None, None), (10, Winner::Frontend), (4, Winner::ProfileDefault)),
        ((Some("10m"), Some("10m"), None), (10, Winner::Rule), (4, Winner::ProfileDefault)),
        ((None, Some("20m"), None), (20, Winner::Rule), (4, Winner::ProfileDefault)),
        ((None, None, None), (4, Winner::ProfileDefault), (4, Winner::ProfileDefault)),
        // Outbound: "the outbound rule idle timeout takes precedence" over the public IP's locked 4 min,
        // and the frontend's own idle timeout does not reach outbound flows.
        ((None, None, Some("30m")), (4, Winner::ProfileDefault), (30, Winner::Rule)),
        ((Some("10m"), None, Some("30m")), (10, Winner::Frontend), (30, Winner::Rule)),
        ((Some("10m"), None, None), (10, Winner::Frontend), (4, Winner::ProfileDefault)),
        ((None, None, Some("4m")), (4, Winner::ProfileDefault), (4, Winner::Rule)),
    ];
    for ((frontend, lb, outbound), (lb_min, lb_winner), (out_min, out_winner)) in cases {
        let c = config(*frontend, *lb, *outbound);
        let (l, o) = (lb_rule(&c, 0), outbound_rule(&c, 0));
        let case = format!("frontend {frontend:?}, lb_rule {lb:?}, outbound_rule {outbound:?}");
        assert_eq!((l.timeout, l.winner), (min(*lb_min), *lb_winner), "lb_rule, {case}: {}", l.reason);
        assert_eq!((o.timeout, o.winner), (min(*out_min), *out_winner), "outbound_rule, {case}: {}", o.reason);
    }
}

#[test]
fn a_frontends_idle_timeout_beats_an_inbound_nat_rules() {
    // Azure, "Order of precedence": "If there's an inbound NAT rule with an idle timeout value set differently than
    // the idle timeout of the frontend IP it references, the frontend IP idle timeout takes precedence."
    let text = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\nidle_timeout = \"10m\"\n\
                [[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n\
                [[inbound_nat_rule]]\nname = \"ssh\"\nfrontend = \"public\"\nfrontend_port = 50001\nmember = \"vm1\"\nbackend_port = 22\nidle_timeout = \"20m\"\n";
    let c = Config::from_toml(text, "test").unwrap();
    let applied = inbound_nat_rule(&c, 0);
    assert_eq!(
        (applied.timeout, applied.winner),
        (Duration::from_secs(600), Winner::Frontend)
    );
    assert!(
        applied.reason.contains("over the inbound NAT rule's"),
        "{}",
        applied.reason
    );
    assert!(explain(&c).contains("inbound_nat_rule ssh: idle timeout 10 min"));
}

#[test]
fn a_nat_gateway_beats_the_outbound_rule_of_the_pools_it_serves() {
    // Azure, "Order of precedence": "a NAT gateway will always take precedence over load
    // balancer outbound rules".
    let text = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
                [[frontend]]\nname = \"natgw-ip\"\naddress = \"203.0.113.20\"\n\
                [[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n\
                [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\nidle_timeout = \"30m\"\n\
                [[nat_gateway]]\nname = \"natgw\"\nfrontend = \"natgw-ip\"\nbackend_pools = [\"vms\"]\nidle_timeout = \"10m\"\n";
    let c = Config::from_toml(text, "test").unwrap();
    let applied = outbound_rule(&c, 0);
    assert_eq!(
        (applied.timeout, applied.winner),
        (Duration::from_secs(600), Winner::NatGateway)
    );
    assert_eq!(
        applied.expiry,
        Expiry::ResetOnNext,
        "the NAT gateway's behaviour"
    );
    let report = explain(&c);
    assert!(
        report.contains("nat_gateway natgw: idle timeout 10 min"),
        "{report}"
    );
    assert!(
        report.contains("takes precedence over outbound rules"),
        "{report}"
    );
}

#[test]
fn the_explanation_holds_what_the_text_says_per_rule() {
    let c = config(Some("10m"), Some("20m"), Some("30m"));
    let e = explanation(&c);
    assert_eq!(e.profile, "azure-lb");
    assert_eq!(e.tcp_not_established.len(), 7);
    let app = e.rules.iter().find(|r| r.kind == "lb_rule").unwrap();
    let tcp = app.tcp.as_ref().unwrap();
    assert_eq!(tcp.idle_timeout, lb_rule(&c, 0).timeout);
    assert_eq!(tcp.winner, lb_rule(&c, 0).winner);
    assert_eq!(tcp.runs, c.scaled(tcp.idle_timeout));
    let text = explain(&c);
    for rule in &e.rules {
        assert!(
            text.contains(&format!("{} {}: ", rule.kind, rule.name)),
            "{text}"
        );
    }
}

#[test]
fn an_azure_outbound_rule_above_100_min_is_explained_with_the_two_pages_ranges() {
    // Azure "Outbound rules": 4–120 min; "Load Balancer TCP Reset and Idle Timeout": 4–100.
    let c = config(None, None, Some("110m"));
    let text = explain(&c);
    let line = text
        .lines()
        .skip_while(|l| !l.starts_with("outbound_rule egress:"))
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("\"Load Balancer TCP Reset and Idle Timeout\" page says 4–100 min; idlegate enforces 120 min"),
        "{text}"
    );
    // `--explain --json` serialises this report: the same reason, with the timeout.
    let e = explanation(&c);
    let egress = e.rules.iter().find(|r| r.kind == "outbound_rule").unwrap();
    let tcp = egress.tcp.as_ref().unwrap();
    assert_eq!(tcp.idle_timeout, Duration::from_secs(6600));
    assert!(tcp.reason.contains("idlegate enforces 120 min"), "{tcp:?}");
    // At 100 min both pages agree: no note.
    let agreed = explain(&config(None, None, Some("100m")));
    assert!(!agreed.contains("enforces 120 min"), "{agreed}");
}

#[test]
fn explain_tells_gcp_nats_time_wait_its_default_and_the_rules_own() {
    let gcp = |setting: &str| {
        let text = format!(
            "profile = \"gcp-nat\"\n[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
             [[backend_pool]]\nname = \"vms\"\nmembers = [{{ name = \"vm1\", address = \"192.0.2.11\" }}]\n\
             [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n{setting}\n"
        );
        Config::from_toml(&text, "test").unwrap()
    };
    let c = gcp("");
    let text = explain(&c);
    assert!(
        text.contains("outbound_rule egress: TIME_WAIT 30 s (runs 30s)\n    because: GCP Cloud NAT's default, what a gateway created on or after 30 September 2026 gets"),
        "{text}"
    );
    assert!(text.contains("set time_wait = \"120s\" for it"), "{text}");
    let e = explanation(&c);
    let t = e.rules[0].tcp.as_ref().unwrap().time_wait.as_ref().unwrap();
    assert_eq!(
        (t.time_wait, t.winner),
        (Duration::from_secs(30), Winner::ProfileDefault)
    );
    let e = explanation(&gcp("time_wait = \"120s\""));
    let t = e.rules[0].tcp.as_ref().unwrap().time_wait.as_ref().unwrap();
    assert_eq!(
        (t.time_wait, t.winner),
        (Duration::from_secs(120), Winner::Rule)
    );
    // Where TIME_WAIT cannot be set, the explanation has none.
    let e = explanation(&config(None, None, None));
    assert!(e
        .rules
        .iter()
        .all(|r| r.tcp.as_ref().unwrap().time_wait.is_none()));
}

#[test]
fn an_azure_outbound_rule_above_120_min_is_refused_naming_both_pages() {
    let text = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
         [[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n\
         [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\nidle_timeout = \"121m\"\n";
    let err = Config::from_toml(text, "test").unwrap_err().to_string();
    assert!(
        err.contains("idle_timeout = 121m is outside Azure LB's range: 4 min to 120 min (Azure's \"Outbound rules\" page allows 4–120 min, its \"Load Balancer TCP Reset and Idle Timeout\" page says 4–100 min; idlegate enforces 120 min, the outbound rules page's)"),
        "{err}"
    );
}

#[test]
fn explain_names_every_rule_its_timeout_and_the_winning_setting() {
    let report = explain(&config(Some("10m"), Some("20m"), Some("30m")));
    assert!(
        report.contains("lb_rule app: idle timeout 10 min"),
        "{report}"
    );
    assert!(
        report.contains("frontend \"public\" sets 10 min, which beats the rule's 20 min"),
        "{report}"
    );
    assert!(
        report.contains("outbound_rule egress: idle timeout 30 min"),
        "{report}"
    );
    assert!(report.contains("locked at 4 min"), "{report}");
    // The outbound rule takes UDP too ("all"): its UDP flows are told apart.
    assert!(
        report.contains("outbound_rule egress: UDP flows live 4 min"),
        "{report}"
    );
    assert!(
        !report.contains("lb_rule app: UDP"),
        "the LB rule is TCP only: {report}"
    );
}

#[test]
fn a_frontend_idle_timeout_outside_the_public_ips_range_is_refused() {
    let text = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\nidle_timeout = \"31m\"\n\
                [[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n\
                [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n";
    let err = Config::from_toml(text, "t.toml").unwrap_err();
    assert_eq!(err.line, 4);
    assert!(
        err.message
            .contains("idle_timeout = 31m is outside Azure LB's range: 4 min to 30 min"),
        "{err}"
    );
}

#[test]
fn explain_tells_the_per_state_timers_pickup_and_refresh_of_the_profile() {
    let conntrack = Config::from_toml(
        &crate::model::profile::example_config(&crate::model::profile::LINUX_CONNTRACK),
        "ct.toml",
    )
    .unwrap();
    let report = explain(&conntrack);
    assert!(report.contains("CLOSE_WAIT 1 min"), "{report}");
    assert!(report.contains("loose pickup"), "{report}");
    let alb = Config::from_toml(
        &crate::model::profile::example_config(&crate::model::profile::AWS_ALB),
        "alb",
    )
    .unwrap();
    let report = explain(&alb);
    assert!(
        report.contains("only new data keeps a flow alive"),
        "{report}"
    );
    assert!(!report.contains("loose pickup"), "{report}");
}

#[test]
fn explain_says_which_timers_run_at_the_floor_and_why() {
    // Azure LB at time_scale 60: the 30 s handshake timer would run 500 ms, under TCP's
    // unscaled 1 s initial retransmission timeout (RFC 6298 §2.1).
    let c = config(None, Some("4m"), None);
    let c = Config {
        time_scale: 60,
        ..c
    };
    let report = explain(&c);
    assert!(
        report.contains(
            "SYN_RECV 30 s: 500 ms scaled, runs 3 s (floor: TCP's retransmission timeout is not scaled)"
        ),
        "{report}"
    );
    assert!(
        report.contains("SNAT hold after RST 15 s: 250 ms scaled, runs 3 s"),
        "{report}"
    );
    let e = explanation(&c);
    let syn_recv = &e.tcp_not_established[1];
    assert_eq!(syn_recv.state, "SYN_RECV");
    assert!(syn_recv.timer.floored);
    assert_eq!(syn_recv.timer.runs, Duration::from_secs(3));
    // The established idle timeout stays purely scaled.
    assert_eq!(
        e.rules[0].tcp.as_ref().unwrap().runs,
        Duration::from_secs(4)
    );
    // Unscaled, nothing runs at the floor.
    assert!(floored_timers(&Config { time_scale: 1, ..c }).is_empty());
}

fn at_scale_60(profile: &str, tables: &str) -> Config {
    let text = format!(
        "profile = \"{profile}\"\ntime_scale = 60\n\
         [[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
         [[frontend]]\nname = \"natgw-ip\"\naddress = \"203.0.113.20\"\n\
         [[backend_pool]]\nname = \"vms\"\nmembers = [{{ name = \"vm1\", address = \"192.0.2.11\" }}]\n\
         {tables}"
    );
    Config::from_toml(&text, "test").unwrap()
}

fn hold<'a>(holds: &'a [SnatHold], after: &str) -> &'a RacingTimer {
    &holds
        .iter()
        .find(|h| h.after == after)
        .unwrap_or_else(|| panic!("no hold after {after} in {holds:?}"))
        .timer
}

#[test]
fn a_nat_gateways_own_timers_and_holds_are_explained_at_the_floor() {
    let c = at_scale_60(
        "azure-lb",
        "[[nat_gateway]]\nname = \"natgw\"\nfrontend = \"natgw-ip\"\nbackend_pools = [\"vms\"]\n",
    );
    let e = explanation(&c);
    let natgw = e.rules.iter().find(|r| r.kind == "nat_gateway").unwrap();
    let holds = natgw
        .snat_holds
        .as_deref()
        .expect("the NAT gateway's holds");
    let fin = hold(holds, "fin");
    assert_eq!(fin.timeout, Duration::from_secs(65), "not azure-lb's 240 s");
    assert_eq!(fin.runs, Duration::from_secs(3));
    assert!(fin.floored);
    assert_eq!(hold(holds, "idle").timeout, Duration::from_secs(16));
    assert_eq!(hold(holds, "idle").runs, Duration::from_secs(3));
    let states = natgw
        .tcp_not_established
        .as_deref()
        .expect("its TCP timers");
    assert_eq!(states.len(), 7);
    assert!(states.iter().all(|s| s.timer.floored));
    let floored = floored_timers(&c);
    assert!(
        floored.iter().any(|f| f
            .starts_with("nat_gateway natgw: SNAT hold after FIN 65 s: 1083 ms scaled, runs 3 s")),
        "{floored:?}"
    );
    // No outbound rule: no pool runs azure-lb's own 15 s hold after a RST.
    assert!(
        !floored
            .iter()
            .any(|f| f.starts_with("SNAT hold after RST 15 s")),
        "{floored:?}"
    );
    assert!(
        natgw
            .udp
            .as_ref()
            .unwrap()
            .reason
            .starts_with("Azure NAT Gateway's UDP timeout"),
        "{natgw:?}"
    );
    let text = explain(&c);
    assert!(
        text.contains("nat_gateway natgw: TCP flows not established: 30 s; SNAT port held 65 s after a FIN, 16 s after a RST, 16 s after an idle expiry"),
        "{text}"
    );
}

#[test]
fn the_hold_after_an_idle_expiry_is_explained_at_the_floor() {
    let c = at_scale_60(
        "azure-natgw",
        "[[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n",
    );
    let e = explanation(&c);
    let idle = hold(&e.snat_holds, "idle");
    assert_eq!(idle.timeout, Duration::from_secs(16));
    assert_eq!(idle.runs, Duration::from_secs(3));
    assert!(idle.floored);
    let floored = floored_timers(&c);
    assert!(
        floored
            .iter()
            .any(|f| f.starts_with("SNAT hold after an idle expiry 16 s: 266 ms scaled, runs 3 s")),
        "{floored:?}"
    );
}

#[test]
fn a_gcp_rules_hold_after_a_fin_follows_its_time_wait() {
    let c = at_scale_60(
        "gcp-nat",
        "[[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\ntime_wait = \"120s\"\n",
    );
    let e = explanation(&c);
    let egress = &e.rules[0];
    let fin = hold(egress.snat_holds.as_deref().unwrap(), "fin");
    assert_eq!(
        fin.timeout,
        Duration::from_secs(120),
        "the rule's time_wait"
    );
    assert_eq!(fin.runs, Duration::from_secs(3));
    assert_eq!(
        outbound_holds(&c, 0).after_fin,
        Duration::from_secs(120),
        "what the engine holds"
    );
    let floored = floored_timers(&c);
    assert!(
        floored.iter().any(|f| f
            .starts_with("outbound_rule egress: SNAT hold after FIN 2 min: 2 s scaled, runs 3 s")),
        "{floored:?}"
    );
}
