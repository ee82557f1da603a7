//! The writer and the Azure reader: each value read at its path and written with its source,
//! refusals at the input path, what is ignored.

use super::draft::*;
use super::*;

const LB_SHOW: &str = include_str!("../../../../examples/import/azure/lb-show.json");
const ARM: &str = include_str!("../../../../examples/import/azure/arm-template.json");
const NATGW: &str = include_str!("../../../../examples/import/azure/natgw-show.json");
const PUBLIC_IP: &str = include_str!("../../../../examples/import/azure/public-ip-show.json");

fn imported(text: &str) -> Imported {
    import(text, "in.json", &Options::default()).expect("imports")
}

fn refused(text: &str) -> ImportError {
    import(text, "in.json", &Options::default()).expect_err("refused")
}

fn changed(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?}");
    text.replacen(from, to, 1)
}

#[test]
fn each_value_of_the_az_lb_show_example_is_written_with_its_source_path() {
    let toml = imported(LB_SHOW).toml;
    for line in [
        "name = \"web-frontend\"  # frontendIPConfigurations[0].name = \"web-frontend\"",
        "  { name = \"web-vm1\", address = \"192.0.2.11\" },  # name: backendAddressPools[0].loadBalancerBackendAddresses[0].name = \"web-vm1\"; address: backendAddressPools[0].loadBalancerBackendAddresses[0].ipAddress = \"10.1.0.4\"",
        "protocol = \"tcp\"  # loadBalancingRules[0].protocol = \"Tcp\"",
        "frontend_port = 443  # loadBalancingRules[0].frontendPort = 443",
        "backend_port = 8080  # loadBalancingRules[0].backendPort = 8080",
        "idle_timeout = \"30m\"  # loadBalancingRules[0].idleTimeoutInMinutes = 30",
        "expiry = \"reset\"  # loadBalancingRules[0].enableTcpReset = true",
        "frontend_port_range = [50000, 50009]  # inboundNatRules[0].frontendPortRangeStart = 50000; inboundNatRules[0].frontendPortRangeEnd = 50009",
        "backend_port = 22  # inboundNatRules[0].backendPort = 22",
        "expiry = \"silent\"  # inboundNatRules[0].enableTcpReset = false",
        "protocol = \"all\"  # outboundRules[0].protocol = \"All\"",
        "ports_per_member = 1024  # outboundRules[0].allocatedOutboundPorts = 1024",
        "idle_timeout = \"15m\"  # outboundRules[0].idleTimeoutInMinutes = 15",
        "profile = \"azure-lb\"  # not in the input: the input has an Azure load balancer",
        "# ignored: probes[0]: health probes do not change what an idle flow meets (the lab's members are always up)",
        "# note: disableOutboundSnat: this rule's frontend gives the members no outbound SNAT (an outbound rule or NAT gateway does) (loadBalancingRules[0].disableOutboundSnat = true)",
        "#   10.1.0.5 (member web-vm2) → 192.0.2.12",
        "#   web-lb-ip (frontend web-frontend) → 203.0.113.10",
    ] {
        assert!(toml.lines().any(|l| l == line), "missing {line:?} in\n{toml}");
    }
}

#[test]
fn every_value_line_names_a_source() {
    for text in [LB_SHOW, ARM, NATGW, PUBLIC_IP] {
        let toml = imported(text).toml;
        for line in toml
            .lines()
            .filter(|l| l.contains(" = ") && !l.starts_with('#'))
        {
            assert!(line.contains("  # "), "no source on {line:?}");
        }
    }
}

#[test]
fn the_arm_template_resolves_parameters_variables_and_resource_ids() {
    let toml = imported(ARM).toml;
    for line in [
        "name = \"app-frontend\"  # resources[1].properties.frontendIPConfigurations[0].name = \"[variables('frontendName')]\"",
        "idle_timeout = \"10m\"  # resources[0].properties.idleTimeoutInMinutes = 10",
        "idle_timeout = \"15m\"  # resources[1].properties.loadBalancingRules[0].properties.idleTimeoutInMinutes = \"[parameters('ruleIdleMinutes')]\"",
        "frontend = \"app-frontend\"  # as resources[1].properties.loadBalancingRules[0] refers to it",
        "backend_pool = \"app-pool\"  # as resources[1].properties.loadBalancingRules[0] refers to it",
    ] {
        assert!(toml.lines().any(|l| l == line), "missing {line:?} in\n{toml}");
    }
    // allocatedOutboundPorts 0 is Azure's default allocation: left to the profile.
    assert!(!toml.contains("ports_per_member"), "{toml}");
}

#[test]
fn an_expression_that_cannot_be_resolved_is_refused_at_its_path_with_a_hint() {
    let text = changed(
        ARM,
        "\"[parameters('ruleIdleMinutes')]\"",
        "\"[add(parameters('ruleIdleMinutes'), 1)]\"",
    );
    let e = refused(&text);
    assert_eq!(
        e.path,
        "resources[1].properties.loadBalancingRules[0].properties.idleTimeoutInMinutes"
    );
    assert!(
        e.message
            .contains("[add(parameters('ruleIdleMinutes'), 1)] cannot be resolved"),
        "{e}"
    );
    assert!(e.hint.unwrap_or_default().contains("az network lb show"));
}

#[test]
fn out_of_range_values_are_refused_at_their_input_path_with_the_range() {
    let cases = [
        (
            changed(LB_SHOW, "\"idleTimeoutInMinutes\": 30", "\"idleTimeoutInMinutes\": 120"),
            "loadBalancingRules[0].idleTimeoutInMinutes = 120",
            "idle_timeout = 120m is outside Azure LB's range: 4 min to 100 min",
        ),
        (
            changed(ARM, "\"idleTimeoutInMinutes\": 10", "\"idleTimeoutInMinutes\": 45"),
            "resources[0].properties.idleTimeoutInMinutes = 45",
            "idle_timeout = 45m is outside Azure LB's range: 4 min to 30 min",
        ),
        (
            changed(LB_SHOW, "\"idleTimeoutInMinutes\": 15", "\"idleTimeoutInMinutes\": 130"),
            "outboundRules[0].idleTimeoutInMinutes = 130",
            "idle_timeout = 130m is outside Azure LB's range: 4 min to 120 min (Azure's \"Outbound rules\" page allows 4–120 min, its \"Load Balancer TCP Reset and Idle Timeout\" page says 4–100 min; idlegate enforces 120 min, the outbound rules page's)",
        ),
    ];
    for (text, path, message) in cases {
        let e = refused(&text);
        assert_eq!((e.path.as_str(), e.message.as_str()), (path, message));
    }
}

#[test]
fn ignored_items_are_returned_and_listed_at_the_end() {
    let i = imported(LB_SHOW);
    let paths: Vec<&str> = i.ignored.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "sku",
            "loadBalancingRules[0].probe",
            "loadBalancingRules[0].loadDistribution",
            "probes[0]"
        ]
    );
    let tail: Vec<&str> = i.toml.lines().rev().take(4).collect();
    assert!(
        tail.iter().all(|l| l.starts_with("# ignored: ")),
        "{tail:?}"
    );
}

#[test]
fn a_nat_gateway_alone_is_profile_azure_natgw_with_a_stand_in_pool_for_its_subnet() {
    let i = imported(NATGW);
    assert_eq!(i.profile, "azure-natgw");
    let config = idlegate_core::Config::from_toml(&i.toml, "t").unwrap();
    assert_eq!(config.outbound_rules[0].name, "egress-nat");
    assert_eq!(config.backend_pools[0].name, "app");
    assert_eq!(config.backend_pools[0].members[0].name, "vm1");
    assert!(i.toml.contains(
        "# note: NAT gateways attach to subnets, not pools: pool app stands in for subnet app"
    ));
    assert!(i
        .toml
        .contains("the input names no member of pool app: vm1 stands in for one"));
    assert!(i
        .toml
        .contains("idle_timeout = \"10m\"  # idleTimeoutInMinutes = 10"));
}

#[test]
fn the_json_of_several_az_outputs_joins_the_public_ip_to_the_frontend() {
    // jq -s of `az network lb show` and `az network public-ip show` for its frontend's IP.
    let ip = changed(PUBLIC_IP, "\"name\": \"api-ip\"", "\"name\": \"web-lb-ip\"");
    let both = format!("[{LB_SHOW}, {ip}]");
    let i = imported(&both);
    assert!(
        i.toml
            .contains("address = \"203.0.113.10\"  # [1].ipAddress = \"198.51.100.24\""),
        "{}",
        i.toml
    );
    assert!(
        i.toml
            .contains("idle_timeout = \"20m\"  # [1].idleTimeoutInMinutes = 20"),
        "{}",
        i.toml
    );
    assert_eq!(
        i.mapping[0],
        (
            "198.51.100.24 (frontend web-frontend)".to_string(),
            "203.0.113.10".to_string()
        )
    );
}

#[test]
fn the_format_is_recognised_from_the_inputs_shape() {
    let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
    assert_eq!(detect(&json(LB_SHOW)), Some(Format::Azure));
    assert_eq!(detect(&json(ARM)), Some(Format::Azure));
    assert_eq!(detect(&json(NATGW)), Some(Format::Azure));
    assert_eq!(detect(&json(PUBLIC_IP)), Some(Format::Azure));
    assert_eq!(
        detect(&json(
            r#"{"format_version":"1.2","terraform_version":"1.9.0"}"#
        )),
        Some(Format::Terraform)
    );
    assert_eq!(
        detect(&json(r#"{"apiVersion":"v1","kind":"Service"}"#)),
        Some(Format::Kubernetes)
    );
    assert_eq!(detect(&json(r#"{"a":1}"#)), None);
    let e = refused(r#"{"a":1}"#);
    assert!(e.hint.unwrap().contains("--format"));
}

#[test]
fn the_writer_maps_addresses_once_makes_names_unique_and_writes_time_scale() {
    let address = |ip: &str, path: &str| Sourced::at(Address::Ip(ip.parse().unwrap()), path);
    let member = |name: &str, ip: &str, path: &str| Member {
        name: Sourced::at(name.to_string(), path),
        address: address(ip, path),
    };
    let draft = Draft {
        frontends: vec![
            Frontend {
                name: Sourced::at("fe one".into(), "f0"),
                address: address("20.0.0.1", "f0.ip"),
                idle_timeout: None,
            },
            Frontend {
                name: Sourced::at("v6".into(), "f1"),
                address: address("2001:db8::1", "f1.ip"),
                idle_timeout: None,
            },
        ],
        backend_pools: vec![
            Pool {
                name: Sourced::at("p".into(), "p0"),
                members: vec![member("a", "10.0.0.4", "m0"), member("a", "10.0.0.5", "m1")],
            },
            Pool {
                name: Sourced::at("p".into(), "p1"),
                members: vec![member("c", "10.0.0.4", "m2")],
            },
        ],
        lb_rules: vec![LbRule {
            name: Sourced::at("r".into(), "r0"),
            frontend: "fe one".into(),
            protocol: Sourced::chosen(Protocol::Tcp, "test"),
            frontend_port: Sourced::at(80, "r0.fp"),
            backend_pool: "p".into(),
            backend_port: Sourced::at(80, "r0.bp"),
            idle: Idle::default(),
        }],
        ..Draft::default()
    };
    let options = Options {
        time_scale: Some(60),
        ..Options::default()
    };
    let i = emit::write(
        &draft,
        &serde_json::Value::Null,
        Format::Azure,
        "x.json",
        &options,
    )
    .unwrap();
    let pairs: Vec<(&str, &str)> = i
        .mapping
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("20.0.0.1 (frontend fe-one)", "203.0.113.10"),
            ("2001:db8::1 (frontend v6)", "fd00:0:113::b"),
            ("10.0.0.4 (member a)", "192.0.2.11"),
            ("10.0.0.5 (member a-2)", "192.0.2.12"),
            ("10.0.0.4 again (member c)", "192.0.2.13"),
        ]
    );
    // 10.0.0.4 in two pools is two lab hosts.
    let again = "#   10.0.0.4 is also member a: a lab host is in one pool, so this pool has its own\n  { name = \"c\", address = \"192.0.2.13\" },";
    assert!(i.toml.contains(again), "{}", i.toml);
    assert!(i.toml.contains("name = \"p-2\"  # p1\n"), "{}", i.toml);
    assert!(i.toml.contains(
        "time_scale = 60  # not in the input: --time-scale 60: the lab divides every timer by 60\n"
    ));
}

#[test]
fn a_path_leads_to_its_value() {
    let v: serde_json::Value = serde_json::from_str(r#"{"a":[{"b":{"c.d":5}}]}"#).unwrap();
    assert_eq!(
        emit::lookup(&v, "a[0].b[\"c.d\"]"),
        Some(&serde_json::json!(5))
    );
    assert_eq!(emit::lookup(&v, "a[1]"), None);
    let arr: serde_json::Value = serde_json::from_str(r#"[{"x":1}]"#).unwrap();
    assert_eq!(emit::lookup(&arr, "[0].x"), Some(&serde_json::json!(1)));
}

/// An LB in the REST shape: NIC IP configurations as members, a single-port inbound NAT rule,
/// an HA-ports rule, floating IP, an outbound rule with two frontends.
const REST_LB: &str = r#"{
  "name": "lb", "type": "Microsoft.Network/loadBalancers",
  "properties": {
    "frontendIPConfigurations": [
      {"name": "fe1", "properties": {"privateIPAddress": "10.0.0.100"}},
      {"name": "fe2", "properties": {"privateIPAddress": "10.0.0.101"}}
    ],
    "backendAddressPools": [{"name": "pool", "properties": {"backendIPConfigurations": [
      {"id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkInterfaces/vm7-nic/ipConfigurations/ipconfig1"}
    ]}}],
    "loadBalancingRules": [
      {"name": "ha", "properties": {"frontendIPConfiguration": {"id": "x/frontendIPConfigurations/fe1"},
        "backendAddressPool": {"id": "x/backendAddressPools/pool"}, "protocol": "All", "frontendPort": 0, "backendPort": 0}},
      {"name": "dsr", "properties": {"frontendIPConfiguration": {"id": "x/frontendIPConfigurations/fe1"},
        "backendAddressPool": {"id": "x/backendAddressPools/pool"}, "protocol": "Udp", "frontendPort": 53, "backendPort": 53,
        "enableFloatingIP": true}}
    ],
    "inboundNatRules": [
      {"name": "rdp", "properties": {"frontendIPConfiguration": {"id": "x/frontendIPConfigurations/fe1"},
        "backendIPConfiguration": {"id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkInterfaces/vm7-nic/ipConfigurations/ipconfig1"},
        "protocol": "Tcp", "frontendPort": 50001, "backendPort": 3389, "idleTimeoutInMinutes": 5}}
    ],
    "outboundRules": [
      {"name": "out", "properties": {"frontendIPConfigurations": [{"id": "x/frontendIPConfigurations/fe1"}, {"id": "x/frontendIPConfigurations/fe2"}],
        "backendAddressPool": {"id": "x/backendAddressPools/pool"}, "protocol": "Tcp", "allocatedOutboundPorts": 8000}}
    ],
    "inboundNatPools": [{"name": "classic"}]
  }
}"#;

#[test]
fn the_rest_shape_reads_nic_members_single_nat_rules_and_notes_what_it_cannot_emulate() {
    let i = imported(REST_LB);
    let toml = &i.toml;
    for line in [
        "member = \"vm7-nic\"  # as properties.inboundNatRules[0] refers to it",
        "frontend_port = 50001  # properties.inboundNatRules[0].properties.frontendPort = 50001",
        "idle_timeout = \"5m\"  # properties.inboundNatRules[0].properties.idleTimeoutInMinutes = 5",
        "protocol = \"udp\"  # properties.loadBalancingRules[1].properties.protocol = \"Udp\"",
        "ports_per_member = 8000  # properties.outboundRules[0].properties.allocatedOutboundPorts = 8000",
        "#   10.0.0.100 (frontend fe1) → 203.0.113.10",
    ] {
        assert!(toml.lines().any(|l| l == line), "missing {line:?} in\n{toml}");
    }
    assert!(
        toml.contains("# note: floating IP (direct server return) is on"),
        "{toml}"
    );
    assert!(
        toml.contains("# note: the rule has 2 frontends; the lab gives it the first"),
        "{toml}"
    );
    let paths: Vec<&str> = i.ignored.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "properties.loadBalancingRules[0].properties.frontendPort",
            "properties.inboundNatPools[0]"
        ]
    );
}

#[test]
fn a_time_scale_too_large_for_the_profile_is_said_as_the_flags() {
    let options = Options {
        time_scale: Some(5000),
        ..Options::default()
    };
    let e = import(LB_SHOW, "in.json", &options).unwrap_err();
    assert_eq!(e.path, "");
    assert!(
        e.message
            .starts_with("--time-scale: time_scale = 5000: at most 3000 with profile azure-lb"),
        "{e}"
    );
}

#[test]
fn another_platform_than_the_inputs_is_refused_with_a_hint() {
    let options = Options {
        platform: Some(Platform::Aws),
        ..Options::default()
    };
    let e = import(LB_SHOW, "in.json", &options).unwrap_err();
    assert_eq!(
        e.message,
        "--platform aws: this input holds Azure resources only"
    );
    assert!(e.hint.unwrap().contains("--platform azure"));
}

#[test]
fn text_that_is_not_json_is_refused_with_the_position_said_once() {
    let e = refused("{\n  \"a\": 1,\n  oops\n}");
    assert_eq!(
        e.message,
        "not JSON (key must be a string at line 3 column 3), nor Kubernetes YAML"
    );
}

#[test]
fn an_azure_udp_rule_imports_without_its_idle_timeout_which_is_listed_as_ignored() {
    // Azure returns idleTimeoutInMinutes (4 unless set) and enableTcpReset on every rule,
    // UDP ones too; the config refuses both on a UDP rule.
    let mut lb: serde_json::Value = serde_json::from_str(LB_SHOW).unwrap();
    let mut dns = lb["loadBalancingRules"][0].clone();
    dns["name"] = "dns".into();
    dns["protocol"] = "Udp".into();
    dns["frontendPort"] = 53.into();
    dns["backendPort"] = 53.into();
    dns["idleTimeoutInMinutes"] = 4.into();
    dns["enableTcpReset"] = false.into();
    lb["loadBalancingRules"].as_array_mut().unwrap().push(dns);
    let got = imported(&lb.to_string());
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
    // The TCP rule keeps its own.
    assert!(got
        .toml
        .contains("idle_timeout = \"30m\"  # loadBalancingRules[0].idleTimeoutInMinutes = 30"));
    for line in [
        "# ignored: loadBalancingRules[1].idleTimeoutInMinutes: rule dns is UDP: a UDP rule's flows live the profile's UDP timeout; Azure's idle timeout applies to TCP",
        "# ignored: loadBalancingRules[1].enableTcpReset: rule dns is UDP: a UDP rule's flows end silently; Azure's TCP reset applies to TCP",
    ] {
        assert!(got.toml.lines().any(|l| l == line), "missing {line:?} in\n{}", got.toml);
    }
}

#[test]
fn an_azure_rule_of_protocol_all_keeps_its_idle_timeout_for_its_tcp_flows() {
    let toml = imported(LB_SHOW).toml;
    assert!(toml
        .lines()
        .any(|l| l == "protocol = \"all\"  # outboundRules[0].protocol = \"All\""));
    assert!(
        toml.lines()
            .any(|l| l == "idle_timeout = \"15m\"  # outboundRules[0].idleTimeoutInMinutes = 15"),
        "{toml}"
    );
}

#[test]
fn a_long_id_in_a_source_comment_keeps_its_last_segments() {
    let toml = imported(NATGW).toml;
    let line = toml
        .lines()
        .find(|l| l.contains("# publicIpAddresses[0].id = "))
        .unwrap_or_else(|| panic!("no public IP source in\n{toml}"));
    assert!(
        line.ends_with("/publicIPAddresses/egress-nat-ip\""),
        "{line}"
    );
    assert!(line.contains("= \"…/"), "{line}");
    assert!(!line.contains("..."), "{line}");
}

#[test]
fn a_nat_gateways_references_name_the_public_ip_and_subnet_they_come_from() {
    let toml = imported(NATGW).toml;
    let line = |key: &str| {
        toml.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{toml}"))
            .to_string()
    };
    let frontend = line("frontend");
    assert!(
        frontend.starts_with("frontend = \"egress-nat-ip\"  # publicIpAddresses[0].id = \"…/")
            && frontend.ends_with("/publicIPAddresses/egress-nat-ip\""),
        "{frontend}"
    );
    let pool = line("backend_pool");
    assert!(
        pool.starts_with("backend_pool = \"app\"  # subnets[0].id = \"…/")
            && pool.ends_with("/virtualNetworks/web-vnet/subnets/app\""),
        "{pool}"
    );
    assert!(!toml.contains("as name refers to it"), "{toml}");
}

#[test]
fn a_yaml_input_that_is_not_a_manifest_gets_a_hint_naming_a_service_manifest() {
    let e = refused("hello: world\n");
    assert!(e.message.contains("nor Kubernetes YAML"), "{e}");
    assert!(
        e.hint
            .as_deref()
            .is_some_and(|h| h.contains("kubectl get service NAME -o yaml")),
        "{:?}",
        e.hint
    );
    // Text that is neither keeps the JSON hint.
    let e = refused("{ not json");
    assert!(
        e.hint.as_deref().is_some_and(|h| !h.contains("kubectl")),
        "{:?}",
        e.hint
    );
}
