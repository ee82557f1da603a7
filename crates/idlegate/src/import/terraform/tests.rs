//! Unit tests of the terraform reader: each resource type's values read with their paths,
//! units, plan completion from `resource_changes`, and the platform choice.

use super::read;
use crate::import::draft::{Address, Expiry, NatTarget, Origin, Platform, Protocol, Sourced};
use serde_json::{json, Value};
use std::time::Duration;

/// A state (`values.root_module`) with these `(type, name, values)` resources.
fn state(resources: &[(&str, &str, Value)]) -> Value {
    let rs: Vec<Value> = resources
        .iter()
        .map(|(t, n, v)| json!({"address": format!("{t}.{n}"), "mode": "managed", "type": t, "name": n, "values": v}))
        .collect();
    json!({"format_version": "1.0", "terraform_version": "1.9.8", "values": {"root_module": {"resources": rs}}})
}

fn at<T>(s: &Sourced<T>) -> &str {
    match &s.from {
        Origin::Input(p) => p,
        Origin::Chosen(why) => panic!("chosen, not read: {why}"),
    }
}

fn azure_lb() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "azurerm_public_ip",
            "pip",
            json!({"name": "pip", "id": "/pip", "ip_address": "20.1.2.3", "idle_timeout_in_minutes": 9}),
        ),
        (
            "azurerm_lb",
            "lb",
            json!({"name": "lb", "id": "/lb", "sku": "Standard", "frontend_ip_configuration": [{"name": "fe", "public_ip_address_id": "/pip"}]}),
        ),
        (
            "azurerm_lb_backend_address_pool",
            "pool",
            json!({"name": "pool", "id": "/pool"}),
        ),
        (
            "azurerm_lb_backend_address_pool_address",
            "a1",
            json!({"name": "a1", "backend_address_pool_id": "/pool", "ip_address": "10.0.0.4"}),
        ),
        (
            "azurerm_lb_rule",
            "r",
            json!({"name": "r", "frontend_ip_configuration_name": "fe", "protocol": "Tcp", "frontend_port": 443, "backend_port": 8443, "backend_address_pool_ids": ["/pool"], "idle_timeout_in_minutes": 30, "enable_tcp_reset": true, "enable_floating_ip": true, "probe_id": "/probe"}),
        ),
        (
            "azurerm_lb_nat_rule",
            "ssh",
            json!({"name": "ssh", "frontend_ip_configuration_name": "fe", "protocol": "Tcp", "frontend_port_start": 50000, "frontend_port_end": 50009, "backend_port": 22, "backend_address_pool_id": "/pool", "idle_timeout_in_minutes": 5}),
        ),
        (
            "azurerm_lb_outbound_rule",
            "out",
            json!({"name": "out", "protocol": "All", "backend_address_pool_id": "/pool", "allocated_outbound_ports": 2048, "idle_timeout_in_minutes": 20, "tcp_reset_enabled": false, "frontend_ip_configuration": [{"name": "fe"}]}),
        ),
    ]
}

#[test]
fn azurerm_lb_rule_values_are_read_in_minutes_at_their_resource_address() {
    let d = read(&state(&azure_lb()), None).unwrap();
    assert_eq!(d.profile.as_ref().unwrap().value, "azure-lb");
    let r = &d.lb_rules[0];
    assert_eq!(
        r.idle.timeout.as_ref().unwrap().value,
        Duration::from_secs(30 * 60)
    );
    assert_eq!(
        at(r.idle.timeout.as_ref().unwrap()),
        "azurerm_lb_rule.r.idle_timeout_in_minutes"
    );
    assert_eq!(r.idle.expiry.as_ref().unwrap().value, Expiry::Reset);
    assert_eq!(
        at(r.idle.expiry.as_ref().unwrap()),
        "azurerm_lb_rule.r.enable_tcp_reset"
    );
    assert_eq!((r.frontend_port.value, r.backend_port.value), (443, 8443));
    assert_eq!(at(&r.backend_port), "azurerm_lb_rule.r.backend_port");
    assert_eq!(
        (r.frontend.as_str(), r.backend_pool.as_str()),
        ("fe", "pool")
    );
    assert_eq!(r.protocol.value, Protocol::Tcp);
    assert!(d.notes.iter().any(|n| n.text.starts_with("floating IP")
        && n.from == Origin::Input("azurerm_lb_rule.r.enable_floating_ip".into())));
    assert!(d
        .ignored
        .iter()
        .any(|i| i.path == "azurerm_lb_rule.r.probe_id"));
}

#[test]
fn azurerm_frontend_takes_its_public_ip_address_and_idle_timeout() {
    let d = read(&state(&azure_lb()), None).unwrap();
    let f = &d.frontends[0];
    assert_eq!(f.address.value, Address::Ip("20.1.2.3".parse().unwrap()));
    assert_eq!(at(&f.address), "azurerm_public_ip.pip.ip_address");
    let t = f.idle_timeout.as_ref().unwrap();
    assert_eq!(
        (t.value, at(t)),
        (
            Duration::from_secs(9 * 60),
            "azurerm_public_ip.pip.idle_timeout_in_minutes"
        )
    );
    let m = &d.backend_pools[0].members[0];
    assert_eq!(m.address.value, Address::Ip("10.0.0.4".parse().unwrap()));
    assert_eq!(
        at(&m.address),
        "azurerm_lb_backend_address_pool_address.a1.ip_address"
    );
}

#[test]
fn azurerm_nat_rule_port_range_and_outbound_rule_are_read() {
    let d = read(&state(&azure_lb()), None).unwrap();
    let n = &d.inbound_nat_rules[0];
    match &n.target {
        NatTarget::Range {
            first_port,
            last_port,
            backend_pool,
        } => {
            assert_eq!(
                (first_port.value, last_port.value, backend_pool.as_str()),
                (50000, 50009, "pool")
            );
            assert_eq!(
                at(first_port),
                "azurerm_lb_nat_rule.ssh.frontend_port_start"
            );
        }
        other => panic!("{other:?}"),
    }
    let o = &d.outbound_rules[0];
    assert_eq!(
        o.ports_per_member.as_ref().map(|p| (p.value, at(p))),
        Some((
            2048,
            "azurerm_lb_outbound_rule.out.allocated_outbound_ports"
        ))
    );
    assert_eq!(
        o.idle.timeout.as_ref().unwrap().value,
        Duration::from_secs(20 * 60)
    );
    // azurerm 4 spells it tcp_reset_enabled.
    assert_eq!(
        o.idle.expiry.as_ref().map(|e| (e.value, at(e))),
        Some((
            Expiry::Silent,
            "azurerm_lb_outbound_rule.out.tcp_reset_enabled"
        ))
    );
    assert_eq!(o.protocol.value, Protocol::All);
}

#[test]
fn a_nat_gateway_alone_is_profile_azure_natgw_with_its_idle_timeout() {
    let d = read(
        &state(&[(
            "azurerm_nat_gateway",
            "ng",
            json!({"name": "ng", "idle_timeout_in_minutes": 10}),
        )]),
        None,
    )
    .unwrap();
    assert_eq!(d.profile.as_ref().unwrap().value, "azure-natgw");
    let t = d.outbound_rules[0].idle.timeout.as_ref().unwrap();
    assert_eq!(
        (t.value, at(t)),
        (
            Duration::from_secs(600),
            "azurerm_nat_gateway.ng.idle_timeout_in_minutes"
        )
    );
}

#[test]
fn a_plan_reads_child_modules_completes_from_resource_changes_and_chooses_after_unknown_values() {
    let plan = json!({
        "format_version": "1.2", "terraform_version": "1.9.8",
        "planned_values": {"root_module": {"child_modules": [{"address": "module.net", "child_modules": [{"address": "module.net.module.lb", "resources": [
            {"address": "module.net.module.lb.azurerm_lb.main", "mode": "managed", "type": "azurerm_lb", "name": "main", "values": {"name": "lb", "frontend_ip_configuration": [{"name": "fe"}]}},
            {"address": "module.net.module.lb.azurerm_lb_backend_address_pool.p", "mode": "managed", "type": "azurerm_lb_backend_address_pool", "name": "p", "values": {"name": "p"}},
            {"address": "module.net.module.lb.azurerm_lb_rule.app", "mode": "managed", "type": "azurerm_lb_rule", "name": "app", "values": {"name": "app", "frontend_ip_configuration_name": "fe", "protocol": "Tcp", "frontend_port": 80}},
            {"address": "module.net.module.lb.azurerm_lb_rule.web", "mode": "managed", "type": "azurerm_lb_rule", "name": "web", "values": {"name": "web", "frontend_ip_configuration_name": "fe", "protocol": "Tcp", "frontend_port": 81, "backend_port": 81}}
        ]}]}]}},
        "resource_changes": [
            {"address": "module.net.module.lb.azurerm_lb_rule.app", "change": {"after": {"backend_port": 8080, "idle_timeout_in_minutes": 5}, "after_unknown": {"id": true}}},
            {"address": "module.net.module.lb.azurerm_lb_rule.web", "change": {"after": {}, "after_unknown": {"idle_timeout_in_minutes": true}}}
        ]
    });
    let d = read(&plan, None).unwrap();
    let app = d.lb_rules.iter().find(|r| r.name.value == "app").unwrap();
    assert_eq!(
        (app.backend_port.value, at(&app.backend_port)),
        (
            8080,
            "module.net.module.lb.azurerm_lb_rule.app.backend_port"
        )
    );
    assert_eq!(
        at(app.idle.timeout.as_ref().unwrap()),
        "module.net.module.lb.azurerm_lb_rule.app.idle_timeout_in_minutes"
    );
    let web = d.lb_rules.iter().find(|r| r.name.value == "web").unwrap();
    let t = web.idle.timeout.as_ref().unwrap();
    assert_eq!(t.value, Duration::from_secs(240));
    assert!(
        matches!(&t.from, Origin::Chosen(why) if why.contains("known only after apply")),
        "{t:?}"
    );
}

#[test]
fn aws_listener_idle_timeout_is_read_in_seconds_with_the_target_group_and_attachment() {
    let d = read(&state(&[
        ("aws_lb", "nlb", json!({"name": "nlb", "arn": "arn:lb", "load_balancer_type": "network"})),
        ("aws_lb_target_group", "tg", json!({"name": "tg", "arn": "arn:tg", "port": 9000, "protocol": "TCP", "deregistration_delay": "300", "connection_termination": true})),
        ("aws_lb_target_group_attachment", "t1", json!({"target_group_arn": "arn:tg", "target_id": "10.0.0.9"})),
        ("aws_lb_listener", "l", json!({"load_balancer_arn": "arn:lb", "port": 443, "protocol": "TCP_UDP", "tcp_idle_timeout_seconds": 900, "default_action": [{"type": "forward", "target_group_arn": "arn:tg"}]})),
        ("aws_lb", "alb", json!({"name": "alb", "load_balancer_type": "application"})),
    ]), None).unwrap();
    assert_eq!(d.profile.as_ref().unwrap().value, "aws-nlb");
    let r = &d.lb_rules[0];
    let t = r.idle.timeout.as_ref().unwrap();
    assert_eq!(
        (t.value, at(t)),
        (
            Duration::from_secs(900),
            "aws_lb_listener.l.tcp_idle_timeout_seconds"
        )
    );
    assert_eq!(r.protocol.value, Protocol::All);
    assert_eq!((r.frontend_port.value, r.backend_port.value), (443, 9000));
    assert_eq!(at(&r.backend_port), "aws_lb_target_group.tg.port");
    assert_eq!(
        d.backend_pools[0].members[0].address.value,
        Address::Ip("10.0.0.9".parse().unwrap())
    );
    assert!(d
        .ignored
        .iter()
        .any(|i| i.path == "aws_lb_target_group.tg.deregistration_delay"));
    assert!(d
        .ignored
        .iter()
        .any(|i| i.path == "aws_lb.alb.load_balancer_type"));
    assert!(d
        .notes
        .iter()
        .any(|n| n.from == Origin::Input("aws_lb_target_group.tg.connection_termination".into())));
}

#[test]
fn aws_tls_listener_keeps_350_s_whatever_it_says() {
    let d = read(
        &state(&[
            (
                "aws_lb",
                "nlb",
                json!({"name": "nlb", "load_balancer_type": "network"}),
            ),
            (
                "aws_lb_target_group",
                "tg",
                json!({"name": "tg", "port": 443}),
            ),
            (
                "aws_lb_listener",
                "l",
                json!({"port": 443, "protocol": "TLS", "tcp_idle_timeout_seconds": 900}),
            ),
        ]),
        None,
    )
    .unwrap();
    let t = d.lb_rules[0].idle.timeout.as_ref().unwrap();
    assert_eq!(t.value, Duration::from_secs(350));
    assert!(d
        .ignored
        .iter()
        .any(|i| i.path == "aws_lb_listener.l.tcp_idle_timeout_seconds"));
}

#[test]
fn google_router_nat_reads_the_established_timeout_and_time_wait_in_seconds_and_lists_the_fixed_timers(
) {
    let d = read(&state(&[
        ("google_compute_address", "ip", json!({"name": "ip", "address": "34.1.2.3", "self_link": "https://x/addresses/ip"})),
        ("google_compute_router_nat", "nat", json!({"name": "nat", "nat_ips": ["https://x/addresses/ip"], "tcp_established_idle_timeout_sec": 600, "tcp_transitory_idle_timeout_sec": 30, "tcp_time_wait_timeout_sec": 120, "udp_idle_timeout_sec": 30, "min_ports_per_vm": 256, "enable_dynamic_port_allocation": true, "max_ports_per_vm": 4096})),
    ]), None).unwrap();
    assert_eq!(d.profile.as_ref().unwrap().value, "gcp-nat");
    let o = &d.outbound_rules[0];
    let t = o.idle.timeout.as_ref().unwrap();
    assert_eq!(
        (t.value, at(t)),
        (
            Duration::from_secs(600),
            "google_compute_router_nat.nat.tcp_established_idle_timeout_sec"
        )
    );
    assert_eq!(o.ports_per_member.as_ref().map(|p| p.value), Some(256));
    let tw = o.time_wait.as_ref().unwrap();
    assert_eq!(
        (tw.value, at(tw)),
        (
            Duration::from_secs(120),
            "google_compute_router_nat.nat.tcp_time_wait_timeout_sec"
        )
    );
    assert_eq!(
        d.frontends[0].address.value,
        Address::Ip("34.1.2.3".parse().unwrap())
    );
    assert!(!d
        .ignored
        .iter()
        .any(|i| i.path.ends_with("tcp_time_wait_timeout_sec")));
    for attr in ["tcp_transitory_idle_timeout_sec", "udp_idle_timeout_sec"] {
        let i = d
            .ignored
            .iter()
            .find(|i| i.path == format!("google_compute_router_nat.nat.{attr}"))
            .unwrap();
        assert!(
            i.why
                .starts_with("idlegate's gcp-nat profile runs its own figure for this: "),
            "{}",
            i.why
        );
    }
    assert!(d.notes.iter().any(|n| n.text.contains("4096")));
}

fn mixed() -> Value {
    state(&[
        (
            "azurerm_nat_gateway",
            "ng",
            json!({"name": "ng", "idle_timeout_in_minutes": 10}),
        ),
        ("google_compute_router_nat", "nat", json!({"name": "nat"})),
    ])
}

#[test]
fn mixed_platforms_are_refused_without_platform_naming_what_was_found() {
    let e = read(&mixed(), None).unwrap_err();
    assert!(e.message.contains("several platforms (azure, gcp)"), "{e}");
    assert_eq!(
        e.hint.as_deref(),
        Some("pick one with --platform azure|gcp")
    );
}

#[test]
fn with_platform_only_that_platforms_resources_are_kept_and_the_others_listed_as_ignored() {
    let d = read(&mixed(), Some(Platform::Gcp)).unwrap();
    assert_eq!(d.profile.as_ref().unwrap().value, "gcp-nat");
    assert!(d
        .ignored
        .iter()
        .any(|i| i.path == "azurerm_nat_gateway.ng" && i.why.contains("--platform gcp")));
}

#[test]
fn a_resource_another_platform_keeps_out_is_said_with_the_platforms_proper_name() {
    let d = read(&mixed(), Some(Platform::Gcp)).unwrap();
    let i = d
        .ignored
        .iter()
        .find(|i| i.path == "azurerm_nat_gateway.ng")
        .expect("listed as ignored");
    assert_eq!(
        i.why,
        "an Azure resource; --platform gcp keeps only Google Cloud's"
    );
}

#[test]
fn an_input_that_is_not_terraform_show_json_is_refused_with_the_command_to_run() {
    let e = read(&json!({"format_version": "1.0"}), None).unwrap_err();
    assert!(
        e.message.contains("not the JSON of `terraform show -json`"),
        "{e}"
    );
    assert!(e.hint.unwrap().contains("terraform show -json"));
}

#[test]
fn a_timeout_that_is_not_a_number_is_refused_at_its_path() {
    let e = read(
        &state(&[(
            "azurerm_nat_gateway",
            "ng",
            json!({"name": "ng", "idle_timeout_in_minutes": "soon"}),
        )]),
        None,
    )
    .unwrap_err();
    assert_eq!(e.path, "azurerm_nat_gateway.ng.idle_timeout_in_minutes");
}

#[test]
fn the_examples_read() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/import/terraform/"
    );
    for (file, profile) in [
        ("azure-lb-plan.json", "azure-lb"),
        ("aws-nlb-plan.json", "aws-nlb"),
        ("gcp-router-nat-state.json", "gcp-nat"),
    ] {
        let text = std::fs::read_to_string(format!("{dir}{file}")).unwrap();
        let d = read(&serde_json::from_str(&text).unwrap(), None).unwrap();
        assert_eq!(d.profile.unwrap().value, profile, "{file}");
    }
}

#[test]
fn an_azurerm_idle_timeout_too_large_for_any_clock_is_refused_at_its_attribute_with_the_range() {
    // 307445734561825861 min is more seconds than a u64 holds: it must not wrap to a valid value.
    let mut resources = azure_lb();
    resources[4].2["idle_timeout_in_minutes"] = json!(307445734561825861u64);
    let text = state(&resources).to_string();
    let e = crate::import::import(&text, "plan.json", &Default::default()).unwrap_err();
    assert_eq!(
        e.path,
        "azurerm_lb_rule.r.idle_timeout_in_minutes = 307445734561825861"
    );
    assert!(
        e.message
            .ends_with("is outside Azure LB's range: 4 min to 100 min"),
        "{e}"
    );
}

/// The azurerm LB with a NAT gateway, and these extra resources.
fn lb_with_nat_gateway(extra: &[(&'static str, &'static str, Value)]) -> String {
    let mut resources = azure_lb();
    resources.push((
        "azurerm_nat_gateway",
        "ng",
        json!({"name": "ng", "id": "/ng", "idle_timeout_in_minutes": 10}),
    ));
    resources.extend(extra.iter().cloned());
    state(&resources).to_string()
}

fn backend_pools_line(toml: &str) -> &str {
    let gateway = &toml[toml.find("[[nat_gateway]]").expect("a [[nat_gateway]]")..];
    gateway
        .lines()
        .find(|l| l.starts_with("backend_pools = "))
        .expect("its backend_pools line")
}

#[test]
fn an_azurerm_nat_gateway_beside_an_lb_serves_a_stand_in_pool_per_associated_subnet() {
    let text = lb_with_nat_gateway(&[
        (
            "azurerm_subnet",
            "web",
            json!({"name": "web", "id": "/vnet/subnets/web"}),
        ),
        (
            "azurerm_subnet_nat_gateway_association",
            "a",
            json!({"nat_gateway_id": "/ng", "subnet_id": "/vnet/subnets/web"}),
        ),
    ]);
    let d = read(&serde_json::from_str(&text).unwrap(), None).unwrap();
    assert_eq!(d.nat_gateways[0].backend_pools, ["web"]);
    let pool = d
        .backend_pools
        .iter()
        .find(|p| p.name.value == "web")
        .unwrap();
    assert_eq!(
        at(&pool.name),
        "azurerm_subnet_nat_gateway_association.a.subnet_id"
    );
    assert!(d.notes.iter().any(|n| n.on.as_deref() == Some("ng")
        && n.text.starts_with(
            "NAT gateways attach to subnets, not pools: pool web stands in for subnet web"
        )));
    let toml = crate::import::import(&text, "plan.json", &Default::default())
        .unwrap()
        .toml;
    assert_eq!(
        backend_pools_line(&toml),
        "backend_pools = [\"web\"]  # as azurerm_subnet_nat_gateway_association.a refers to it"
    );
}

#[test]
fn an_azurerm_nat_gateway_without_a_subnet_association_gets_one_stand_in_pool_said_as_chosen() {
    // Without the outbound rule, the LB's pool is served by none: still not guessed to be
    // the NAT gateway's (a NAT gateway serves subnets, which the input does not say).
    let mut value: Value = serde_json::from_str(&lb_with_nat_gateway(&[])).unwrap();
    value["values"]["root_module"]["resources"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["type"] != "azurerm_lb_outbound_rule");
    let text = value.to_string();
    let d = read(&value, None).unwrap();
    assert_eq!(d.nat_gateways[0].backend_pools, ["ng-subnet"]);
    assert!(d.notes.iter().any(|n| n.on.as_deref() == Some("ng")
        && n.text
            .contains("no azurerm_subnet_nat_gateway_association in the input names this one")));
    let toml = crate::import::import(&text, "plan.json", &Default::default())
        .unwrap()
        .toml;
    assert_eq!(
        backend_pools_line(&toml),
        "backend_pools = [\"ng-subnet\"]  # not in the input: a stand-in for the subnets NAT gateway ng serves"
    );
}

#[test]
fn an_azurerm_udp_lb_rule_imports_without_its_idle_timeout_which_is_listed_as_ignored() {
    // azurerm's idle_timeout_in_minutes defaults to 4 on every rule, UDP ones too.
    let mut rs = azure_lb();
    rs.push((
        "azurerm_lb_rule",
        "dns",
        json!({"name": "dns", "frontend_ip_configuration_name": "fe", "protocol": "Udp", "frontend_port": 53, "backend_port": 53, "backend_address_pool_ids": ["/pool"], "idle_timeout_in_minutes": 4}),
    ));
    let got = crate::import::import(&state(&rs).to_string(), "plan.json", &Default::default())
        .expect("imports");
    let rule = got
        .toml
        .split("[[lb_rule]]")
        .nth(2)
        .expect("a second lb_rule");
    let rule = rule.split("\n[").next().unwrap_or(rule);
    assert!(rule.contains("protocol = \"udp\""), "{rule}");
    assert!(
        !rule.contains("idle_timeout =") && !rule.contains("expiry ="),
        "{rule}"
    );
    let ignored = got
        .ignored
        .iter()
        .find(|i| i.path == "azurerm_lb_rule.dns.idle_timeout_in_minutes")
        .expect("the UDP rule's idle timeout listed as ignored");
    assert_eq!(ignored.why, "rule dns is UDP: a UDP rule's flows live the profile's UDP timeout; Azure's idle timeout applies to TCP");
}

#[test]
fn a_terraform_source_comment_gives_the_value_at_its_resource_address() {
    let got = crate::import::import(
        &state(&azure_lb()).to_string(),
        "plan.json",
        &Default::default(),
    )
    .expect("imports");
    for line in [
        "idle_timeout = \"30m\"  # azurerm_lb_rule.r.idle_timeout_in_minutes = 30",
        "frontend_port = 443  # azurerm_lb_rule.r.frontend_port = 443",
        "name = \"fe\"  # azurerm_lb.lb.frontend_ip_configuration[0].name = \"fe\"",
    ] {
        assert!(
            got.toml.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            got.toml
        );
    }
}
