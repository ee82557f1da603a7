//! Unit tests of the kubernetes reader: YAML and JSON parsing, each annotation read with its
//! path and unit, and the platform choice.

use super::{parse, read};
use crate::import::draft::{Address, Expiry, Origin, Platform, Sourced};
use std::time::Duration;

fn at<T>(s: &Sourced<T>) -> &str {
    match &s.from {
        Origin::Input(p) => p,
        Origin::Chosen(why) => panic!("chosen, not read: {why}"),
    }
}

const AKS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout: "15"
    service.beta.kubernetes.io/azure-load-balancer-disable-tcp-reset: "true"
    service.beta.kubernetes.io/azure-load-balancer-internal: "true"
spec:
  type: LoadBalancer
  loadBalancerIP: 10.240.0.25
  ports:
  - port: 443
    targetPort: 8443
    protocol: TCP
"#;

#[test]
fn yaml_documents_and_lists_parse_into_one_array() {
    let text = format!("{AKS}---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {{name: c}}\n");
    let v = parse(&text).unwrap();
    let kinds: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["Service", "ConfigMap"]);
}

#[test]
fn json_manifests_parse_too() {
    let v = parse(
        r#"{"apiVersion": "v1", "kind": "List", "items": [{"kind": "Service"}, {"kind": "Pod"}]}"#,
    )
    .unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
}

#[test]
fn broken_yaml_is_refused_at_its_line_and_column() {
    let e = parse("apiVersion: v1\nkind: Service\nmetadata: [\n").unwrap_err();
    assert!(e.path.starts_with("line "), "{e}");
    assert!(e.message.starts_with("not valid YAML"), "{e}");
}

#[test]
fn the_aks_idle_timeout_annotation_is_minutes_on_every_port_with_tcp_reset() {
    let d = read(&parse(AKS).unwrap(), None).unwrap();
    assert_eq!(d.profile.as_ref().unwrap().value, "azure-lb");
    let r = &d.lb_rules[0];
    let t = r.idle.timeout.as_ref().unwrap();
    assert_eq!(t.value, Duration::from_secs(15 * 60));
    assert_eq!(at(t), "Service/default/web.metadata.annotations[\"service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout\"]");
    assert_eq!(r.idle.expiry.as_ref().unwrap().value, Expiry::Reset);
    assert_eq!(
        (r.frontend_port.value, at(&r.frontend_port)),
        (443, "Service/default/web.spec.ports[0].port")
    );
    assert_eq!(
        d.frontends[0].address.value,
        Address::Ip("10.240.0.25".parse().unwrap())
    );
    assert_eq!(
        at(&d.frontends[0].address),
        "Service/default/web.spec.loadBalancerIP"
    );
    assert!(d.ignored.iter().any(
        |i| i.path.ends_with("azure-load-balancer-disable-tcp-reset\"]")
            && i.why.contains("deprecated")
    ));
    assert!(d.notes.iter().any(|n| n.text.starts_with("internal")));
    assert!(
        d.backend_pools[0].members.is_empty(),
        "the nodes are not in the manifest"
    );
}

#[test]
fn an_aks_idle_timeout_that_is_not_a_number_is_refused_at_the_annotation() {
    let e = read(&parse(&AKS.replace("\"15\"", "\"15m\"")).unwrap(), None).unwrap_err();
    assert!(
        e.path.ends_with("azure-load-balancer-tcp-idle-timeout\"]"),
        "{e}"
    );
}

const AWS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: prod
  annotations:
    service.beta.kubernetes.io/aws-load-balancer-type: external
    service.beta.kubernetes.io/aws-load-balancer-nlb-target-type: ip
    service.beta.kubernetes.io/aws-load-balancer-listener-attributes.TCP-80: tcp.idle_timeout.seconds=600
    service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout: "60"
spec:
  type: LoadBalancer
  ports:
  - port: 80
  - port: 53
    protocol: UDP
status:
  loadBalancer:
    ingress:
    - ip: 52.1.2.3
"#;

#[test]
fn the_aws_listener_attribute_annotation_is_seconds_for_its_listener_only() {
    let d = read(&parse(AWS).unwrap(), None).unwrap();
    assert_eq!(d.profile.as_ref().unwrap().value, "aws-nlb");
    let tcp = &d.lb_rules[0];
    let t = tcp.idle.timeout.as_ref().unwrap();
    assert_eq!(t.value, Duration::from_secs(600));
    assert_eq!(at(t), "Service/prod/api.metadata.annotations[\"service.beta.kubernetes.io/aws-load-balancer-listener-attributes.TCP-80\"]");
    assert_eq!(
        d.lb_rules[1].idle.timeout, None,
        "the UDP listener has none"
    );
    assert_eq!(
        at(&d.frontends[0].address),
        "Service/prod/api.status.loadBalancer.ingress[0].ip"
    );
    assert!(d.ignored.iter().any(|i| i
        .path
        .ends_with("aws-load-balancer-connection-idle-timeout\"]")));
}

#[test]
fn an_aws_service_without_the_nlb_type_is_a_classic_load_balancer_and_not_imported() {
    let text = AWS.replace(
        "    service.beta.kubernetes.io/aws-load-balancer-type: external\n",
        "",
    );
    let e = read(&parse(&text).unwrap(), None).unwrap_err();
    assert!(e.message.contains("no Service idlegate can emulate"), "{e}");
}

#[test]
fn services_of_aks_and_aws_together_are_refused_without_platform() {
    let both = format!("{AKS}---{AWS}");
    let e = read(&parse(&both).unwrap(), None).unwrap_err();
    assert!(e.message.contains("several platforms (azure, aws)"), "{e}");
    assert_eq!(
        e.hint.as_deref(),
        Some("pick one with --platform azure|aws")
    );
    let d = read(&parse(&both).unwrap(), Some(Platform::Aws)).unwrap();
    assert!(d.ignored.iter().any(|i| i.path == "Service/default/web"));
}

#[test]
fn a_service_without_cloud_annotations_needs_platform_and_other_kinds_are_ignored() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {type: LoadBalancer, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: y}\nspec: {ports: [{port: 80}]}\n";
    let e = read(&parse(text).unwrap(), None).unwrap_err();
    assert_eq!(
        e.hint.as_deref(),
        Some("say it with --platform azure or --platform aws")
    );
    let d = read(&parse(text).unwrap(), Some(Platform::Azure)).unwrap();
    assert_eq!(d.lb_rules.len(), 1);
    assert!(d
        .ignored
        .iter()
        .any(|i| i.path == "Service/default/y.spec.type"));
}

#[test]
fn an_unquoted_annotation_value_is_refused_at_its_path_with_the_quoting_hint() {
    let e = read(&parse(&AKS.replace("\"15\"", "15")).unwrap(), None).unwrap_err();
    assert!(
        e.path.ends_with("azure-load-balancer-tcp-idle-timeout\"]"),
        "{e}"
    );
    assert_eq!(e.hint.as_deref(), Some("quote it: \"15\""));
}

#[test]
fn an_aks_udp_port_gets_no_tcp_reset() {
    let text = AKS.replace("    protocol: TCP\n", "    protocol: UDP\n");
    let d = read(&parse(&text).unwrap(), None).unwrap();
    assert_eq!(d.lb_rules[0].idle.expiry, None);
}

#[test]
fn an_aks_idle_timeout_too_large_for_any_clock_is_refused_at_the_annotation_with_the_range() {
    // 307445734561825861 min is more seconds than a u64 holds: it must not wrap to a valid value.
    let text = AKS.replace("\"15\"", "\"307445734561825861\"");
    let e = crate::import::import(&text, "svc.yaml", &Default::default()).unwrap_err();
    assert_eq!(
        e.path,
        "Service/default/web.metadata.annotations[\"service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout\"] = \"307445734561825861\""
    );
    assert!(
        e.message
            .ends_with("is outside Azure LB's range: 4 min to 100 min"),
        "{e}"
    );
}

#[test]
fn an_aks_service_with_a_udp_port_gives_the_tcp_idle_timeout_annotation_to_its_tcp_rule_only() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns\n  namespace: shop\n  annotations:\n    service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout: \"10\"\nspec:\n  type: LoadBalancer\n  ports:\n  - port: 53\n    protocol: UDP\n  - port: 53\n    protocol: TCP\n";
    let got = crate::import::import(text, "dns.yaml", &Default::default()).expect("imports");
    let rules: Vec<&str> = got
        .toml
        .split("[[lb_rule]]")
        .skip(1)
        .map(|r| r.split("\n[").next().unwrap_or(r))
        .collect();
    assert_eq!(rules.len(), 2, "{}", got.toml);
    let (udp, tcp) = match rules[0].contains("protocol = \"udp\"") {
        true => (rules[0], rules[1]),
        false => (rules[1], rules[0]),
    };
    assert!(
        !udp.contains("idle_timeout =") && !udp.contains("expiry ="),
        "{udp}"
    );
    assert!(tcp.contains("idle_timeout = \"10m\""), "{tcp}");
    let ignored = got
        .ignored
        .iter()
        .find(|i| i.why.starts_with("rule dns-udp-53 is UDP"))
        .expect("the annotation listed as ignored for the UDP rule");
    assert_eq!(
        ignored.path,
        "Service/shop/dns.metadata.annotations[\"service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout\"]"
    );
}

#[test]
fn a_kubernetes_source_comment_gives_the_value_at_its_path() {
    let got = crate::import::import(AKS, "web.yaml", &Default::default()).expect("imports");
    for line in [
        "idle_timeout = \"15m\"  # Service/default/web.metadata.annotations[\"service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout\"] = \"15\"",
        "frontend_port = 443  # Service/default/web.spec.ports[0].port = 443",
    ] {
        assert!(got.toml.lines().any(|l| l == line), "missing {line:?} in\n{}", got.toml);
    }
}
