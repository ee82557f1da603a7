//! The kubernetes reader: Service manifests of `type: LoadBalancer`, on AKS or on AWS.
//!
//! [`parse`] reads YAML (several documents separated by `---`, a `kind: List` with `items`) or
//! JSON into one JSON array of the documents. [`read`] turns each Service of type
//! LoadBalancer into a frontend (its `spec.loadBalancerIP` or `status.loadBalancer.ingress[].ip`),
//! a rule per port, and the idle settings of the annotations:
//!
//! - AKS (cloud-provider-azure): `service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout`
//!   (minutes) is the rule's idle timeout; AKS makes its Standard LB rules with TCP reset on.
//! - AWS Load Balancer Controller: `service.beta.kubernetes.io/aws-load-balancer-type`
//!   (`external` or `nlb`) makes an NLB, and `service.beta.kubernetes.io/aws-load-balancer-listener-attributes.<PROTOCOL>-<port>`
//!   carries `tcp.idle_timeout.seconds=N` for that listener.
//!
//! The nodes or pods behind the Service are not in a manifest: each Service gets a pool with
//! no member, for which the writer adds a stand-in. Paths are
//! `Service/<namespace>/<name>.metadata.annotations["…"]`.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::draft::{
    Address, Draft, Expiry, Family, Frontend, Idle, Ignored, LbRule, Note, Origin, Platform, Pool,
    Protocol, Sourced,
};
use super::ImportError;

const AKS_IDLE: &str = "service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout";
const AKS_DISABLE_RESET: &str = "service.beta.kubernetes.io/azure-load-balancer-disable-tcp-reset";
const AKS_INTERNAL: &str = "service.beta.kubernetes.io/azure-load-balancer-internal";
const AWS_TYPE: &str = "service.beta.kubernetes.io/aws-load-balancer-type";
const AWS_TARGET_TYPE: &str = "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type";
const AWS_LISTENER_ATTRS: &str =
    "service.beta.kubernetes.io/aws-load-balancer-listener-attributes.";
const AWS_CLB_IDLE: &str = "service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout";

/// YAML or JSON manifests to one JSON array of documents (`kind: List` unfolded).
pub fn parse(text: &str) -> Result<Value, ImportError> {
    let mut docs = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| {
            ImportError::at(
                format!("line {} column {}", e.line(), e.column()),
                format!("not valid JSON: {e}"),
            )
        })?;
        match v {
            Value::Array(items) => docs.extend(items),
            other => docs.push(other),
        }
    } else {
        let yaml = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| {
            let at = e.marker();
            ImportError::at(
                format!("line {} column {}", at.line(), at.col() + 1),
                format!("not valid YAML: {}", e.info()),
            )
        })?;
        docs.extend(yaml.iter().map(to_json).filter(|v| !v.is_null()));
    }
    let mut out = Vec::new();
    for d in docs {
        if d.get("kind").and_then(Value::as_str) == Some("List") {
            out.extend(
                d.get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
        } else {
            out.push(d);
        }
    }
    Ok(Value::Array(out))
}

/// A YAML value as JSON (keys that are not strings are written as their text).
fn to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(r.clone()), Value::Number),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

/// One Service of type LoadBalancer, with the platform its annotations say.
struct Service<'a> {
    /// `Service/<namespace>/<name>`.
    at: String,
    name: String,
    doc: &'a Value,
    platform: Option<Platform>,
}

impl Service<'_> {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.doc
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    }

    fn annotation_path(&self, key: &str) -> String {
        format!("{}.metadata.annotations[\"{key}\"]", self.at)
    }

    fn annotations(&self) -> impl Iterator<Item = (&str, &str)> {
        self.doc
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
    }
}

/// Reads the documents [`parse`] made into a draft.
pub fn read(input: &Value, platform: Option<Platform>) -> Result<Draft, ImportError> {
    let docs: Vec<&Value> = match input {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let docs: Vec<&Value> = docs
        .into_iter()
        .flat_map(|d| {
            match (
                d.get("kind").and_then(Value::as_str),
                d.get("items").and_then(Value::as_array),
            ) {
                (Some("List"), Some(items)) => items.iter().collect(),
                _ => vec![d],
            }
        })
        .collect();
    let mut d = Draft::default();
    let mut services = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ns = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let at = if name.is_empty() {
            format!("[{i}]")
        } else {
            format!("{kind}/{ns}/{name}")
        };
        if kind != "Service" {
            d.ignored.push(Ignored {
                path: at,
                why: format!(
                    "a {}: idlegate reads Services of type LoadBalancer",
                    if kind.is_empty() {
                        "document without a kind"
                    } else {
                        kind
                    }
                ),
            });
            continue;
        }
        let ty = doc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP");
        if ty != "LoadBalancer" {
            d.ignored.push(Ignored {
                path: format!("{at}.spec.type"),
                why: format!("a Service of type {ty} gets no cloud load balancer"),
            });
            continue;
        }
        let mut s = Service {
            at,
            name,
            doc,
            platform: None,
        };
        let annotations = doc
            .pointer("/metadata/annotations")
            .and_then(Value::as_object);
        if let Some((k, v)) = annotations
            .into_iter()
            .flatten()
            .find(|(_, v)| !v.is_string())
        {
            return Err(ImportError::at(
                s.annotation_path(k),
                format!("{v}: an annotation's value is a string (Kubernetes refuses others)"),
            )
            .with_hint(format!("quote it: \"{v}\"")));
        }
        let aks = s
            .annotations()
            .any(|(k, _)| k.starts_with("service.beta.kubernetes.io/azure-"));
        let aws = s
            .annotations()
            .any(|(k, _)| k.starts_with("service.beta.kubernetes.io/aws-"));
        s.platform = match (aks, aws) {
            (true, false) => Some(Platform::Azure),
            (false, true) => Some(Platform::Aws),
            _ => None,
        };
        services.push(s);
    }
    if services.is_empty() {
        return Err(ImportError::at("", "no Service of type LoadBalancer in the input")
            .with_hint("import the manifest of the Service that gets the cloud load balancer (kubectl get service NAME -o yaml)"));
    }
    let mut found: Vec<Platform> = Vec::new();
    for p in services.iter().filter_map(|s| s.platform) {
        if !found.contains(&p) {
            found.push(p);
        }
    }
    let chosen = match (platform, found.as_slice()) {
        (Some(Platform::Gcp), _) => {
            return Err(ImportError::at("", "--platform gcp: idlegate reads the Services of AKS and of the AWS Load Balancer Controller only")
                .with_hint("use --platform azure or --platform aws"))
        }
        (Some(p), _) => p,
        (None, [one]) => *one,
        (None, []) => {
            return Err(ImportError::at(services[0].at.clone(), "no AKS (service.beta.kubernetes.io/azure-*) or AWS (service.beta.kubernetes.io/aws-*) annotation: which cloud's load balancer is it?")
                .with_hint("say it with --platform azure or --platform aws"))
        }
        (None, several) => {
            return Err(ImportError::at("", format!(
                "the input has Services for several platforms ({}); idlegate emulates one box at a time",
                several.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
            ))
            .with_hint("pick one with --platform azure|aws"))
        }
    };
    let mut any = false;
    for s in &services {
        if let Some(p) = s.platform.filter(|p| *p != chosen) {
            d.ignored.push(Ignored {
                path: s.at.clone(),
                why: format!(
                    "{} Service; --platform {} keeps only {}'s",
                    p.a_title(),
                    chosen.as_str(),
                    chosen.title()
                ),
            });
            continue;
        }
        any |= match chosen {
            Platform::Aws => aws_service(s, &mut d)?,
            _ => aks_service(s, &mut d)?,
        };
    }
    if !any {
        return Err(ImportError::at(
            "",
            "no Service idlegate can emulate (see the ignored ones above)",
        ));
    }
    d.profile = Some(Sourced::chosen(
        if chosen == Platform::Aws {
            "aws-nlb"
        } else {
            "azure-lb"
        },
        if chosen == Platform::Aws {
            "an NLB made by the AWS Load Balancer Controller"
        } else {
            "AKS's Standard Load Balancer"
        },
    ));
    Ok(d)
}

/// The frontend and pool of a Service (the nodes or pods behind it are not in the manifest).
fn frontend_and_pool(s: &Service, d: &mut Draft) -> Result<(), ImportError> {
    let ip = [
        ("/spec/loadBalancerIP", "spec.loadBalancerIP"),
        (
            "/status/loadBalancer/ingress/0/ip",
            "status.loadBalancer.ingress[0].ip",
        ),
    ]
    .into_iter()
    .find_map(|(p, path)| {
        s.doc
            .pointer(p)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(|v| (v, path))
    });
    let address = match ip {
        Some((v, path)) => {
            let path = format!("{}.{path}", s.at);
            Sourced::at(Address::Ip(v.parse::<IpAddr>().map_err(|e| ImportError::at(path.clone(), format!("not an IP address: {e}")))?), path)
        }
        None => Sourced::chosen(Address::Named { name: s.name.clone(), family: Family::V4 }, "the Service has no address yet (no spec.loadBalancerIP, no status.loadBalancer.ingress)"),
    };
    d.frontends.push(Frontend {
        name: Sourced::at(s.name.clone(), format!("{}.metadata.name", s.at)),
        address,
        idle_timeout: None,
    });
    d.backend_pools.push(Pool {
        name: Sourced::chosen(
            format!("{}-backends", s.name),
            "the nodes or pods behind a Service are not in its manifest: a stand-in",
        ),
        members: Vec::new(),
    });
    Ok(())
}

/// The Service's ports: (path of the entry, `port`, its protocol, and `protocol` as written,
/// TCP when absent). `targetPort` is not read here.
fn ports(s: &Service) -> Result<Vec<(String, u16, Protocol, String)>, ImportError> {
    let mut out = Vec::new();
    let list = s
        .doc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, p) in list.iter().enumerate() {
        let at = format!("{}.spec.ports[{i}]", s.at);
        let port = p
            .get("port")
            .and_then(Value::as_u64)
            .ok_or_else(|| ImportError::at(format!("{at}.port"), "missing or not a number"))?;
        let port = u16::try_from(port).map_err(|_| {
            ImportError::at(
                format!("{at}.port"),
                format!("{port} is not a port (0-65535)"),
            )
        })?;
        let proto_s = p
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP")
            .to_string();
        let proto = match proto_s.as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                return Err(ImportError::at(
                    format!("{at}.protocol"),
                    format!("\"{other}\": idlegate models TCP and UDP flows only"),
                ))
            }
        };
        out.push((at, port, proto, proto_s));
    }
    if out.is_empty() {
        return Err(ImportError::at(
            format!("{}.spec.ports", s.at),
            "a LoadBalancer Service without ports",
        ));
    }
    Ok(out)
}

fn rule_name(s: &Service, proto: Protocol, port: u16) -> String {
    let p = if proto == Protocol::Udp { "udp" } else { "tcp" };
    format!("{}-{p}-{port}", s.name)
}

fn aks_service(s: &Service, d: &mut Draft) -> Result<bool, ImportError> {
    frontend_and_pool(s, d)?;
    let timeout = match s.annotation(AKS_IDLE) {
        Some(v) => {
            let path = s.annotation_path(AKS_IDLE);
            let m: u64 = v.trim().parse().map_err(|_| {
                ImportError::at(
                    path.clone(),
                    format!("\"{v}\": expected a whole number of minutes"),
                )
            })?;
            Some(Sourced::at(Duration::from_secs(m.saturating_mul(60)), path))
        }
        None => None,
    };
    if s.annotation(AKS_DISABLE_RESET).is_some() {
        d.ignored.push(Ignored {
            path: s.annotation_path(AKS_DISABLE_RESET),
            why: "deprecated in Kubernetes 1.18 and removed as of 1.20: cloud-provider-azure always enables TCP reset on the Standard LB's TCP rules".into(),
        });
    }
    if let Some(v) = s.annotation(AKS_INTERNAL) {
        d.notes.push(Note {
            on: Some(s.name.clone()),
            text: format!("internal = {v}: AKS puts the frontend on a private IP of the cluster's subnet; the lab's frontend is reached from its client namespace either way"),
            from: Origin::Input(s.annotation_path(AKS_INTERNAL)),
        });
    }
    for (at, port, proto, _) in ports(s)? {
        d.lb_rules.push(LbRule {
            name: Sourced::chosen(rule_name(s, proto, port), "the Service's name, protocol and port"),
            frontend: s.name.clone(),
            protocol: Sourced::at(proto, format!("{at}.protocol")),
            frontend_port: Sourced::at(port, format!("{at}.port")),
            backend_pool: format!("{}-backends", s.name),
            backend_port: Sourced::chosen(port, "AKS's rules use floating IP, so the node receives the Service's port (kube-proxy forwards it to targetPort)"),
            idle: Idle {
                timeout: timeout.clone(),
                expiry: (proto == Protocol::Tcp).then(|| Sourced::chosen(Expiry::Reset, "cloud-provider-azure makes the Standard LB's TCP rules with TCP reset enabled")),
            },
        });
    }
    Ok(true)
}

fn aws_service(s: &Service, d: &mut Draft) -> Result<bool, ImportError> {
    match s.annotation(AWS_TYPE) {
        Some("external") | Some("nlb") | Some("nlb-ip") => {}
        other => {
            let why = match other {
                Some(t) => format!("aws-load-balancer-type \"{t}\": not an NLB"),
                None => "without aws-load-balancer-type (external or nlb) AWS's in-tree controller makes a Classic Load Balancer, a proxy idlegate does not model".to_string(),
            };
            d.ignored.push(Ignored {
                path: if other.is_some() {
                    s.annotation_path(AWS_TYPE)
                } else {
                    s.at.clone()
                },
                why,
            });
            if s.annotation(AWS_CLB_IDLE).is_some() {
                d.ignored.push(Ignored {
                    path: s.annotation_path(AWS_CLB_IDLE),
                    why: "the Classic Load Balancer's idle timeout: not an NLB's".into(),
                });
            }
            return Ok(false);
        }
    }
    if s.annotation(AWS_CLB_IDLE).is_some() {
        d.ignored.push(Ignored { path: s.annotation_path(AWS_CLB_IDLE), why: "a Classic Load Balancer setting: an NLB has no such attribute (its listeners' tcp.idle_timeout.seconds is the NLB's)".into() });
    }
    if let Some(t) = s.annotation(AWS_TARGET_TYPE) {
        d.notes.push(Note {
            on: Some(s.name.clone()),
            text: format!(
                "target type {t}: the NLB sends to {}; the lab's stand-in member is either",
                if t == "ip" {
                    "the pods' IPs directly"
                } else {
                    "the nodes' nodePorts"
                }
            ),
            from: Origin::Input(s.annotation_path(AWS_TARGET_TYPE)),
        });
    }
    frontend_and_pool(s, d)?;
    for (at, port, proto, proto_s) in ports(s)? {
        let key = format!("{AWS_LISTENER_ATTRS}{proto_s}-{port}");
        let mut timeout = None;
        if let Some(v) = s.annotation(&key) {
            let path = s.annotation_path(&key);
            for kv in v.split(',') {
                let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
                if k.trim() == "tcp.idle_timeout.seconds" {
                    let n: u64 = val.trim().parse().map_err(|_| ImportError::at(path.clone(), format!("tcp.idle_timeout.seconds=\"{val}\": expected a whole number of seconds")))?;
                    timeout = Some(Sourced::at(Duration::from_secs(n), path.clone()));
                } else {
                    d.ignored.push(Ignored {
                        path: path.clone(),
                        why: format!("listener attribute {}: not an idle setting", k.trim()),
                    });
                }
            }
        }
        d.lb_rules.push(LbRule {
            name: Sourced::chosen(
                rule_name(s, proto, port),
                "the Service's name, protocol and port",
            ),
            frontend: s.name.clone(),
            protocol: Sourced::at(proto, format!("{at}.protocol")),
            frontend_port: Sourced::at(port, format!("{at}.port")),
            backend_pool: format!("{}-backends", s.name),
            backend_port: Sourced::chosen(
                port,
                "the stand-in member listens on the Service's port",
            ),
            idle: Idle {
                timeout,
                expiry: None,
            },
        });
    }
    for (k, _) in s.annotations() {
        if let Some(listener) = k.strip_prefix(AWS_LISTENER_ATTRS) {
            if !d.lb_rules.iter().any(|r| {
                r.frontend == s.name
                    && format!(
                        "{}-{}",
                        if r.protocol.value == Protocol::Udp {
                            "UDP"
                        } else {
                            "TCP"
                        },
                        r.frontend_port.value
                    ) == listener
            }) {
                d.ignored.push(Ignored {
                    path: s.annotation_path(k),
                    why: format!("no port of the Service is listener {listener}"),
                });
            }
        }
    }
    Ok(true)
}

/// The value at `path` (`Service/<namespace>/<name>.` and a JSON path in that document, or
/// `[i].` for a document without a name, as the reader says them) in the documents [`parse`]
/// made; None when there is no such document or value.
pub(super) fn value_at<'a>(input: &'a Value, path: &str) -> Option<&'a Value> {
    let docs: Vec<&'a Value> = match input {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let docs: Vec<&'a Value> = docs
        .into_iter()
        .flat_map(|d| match d.get("items").and_then(Value::as_array) {
            Some(items) if d.get("kind").and_then(Value::as_str) == Some("List") => {
                items.iter().collect()
            }
            _ => vec![d],
        })
        .collect();
    if let Some(rest) = path.strip_prefix('[') {
        let (i, rest) = rest.split_once(']')?;
        return super::emit::lookup(docs.get(i.parse::<usize>().ok()?)?, rest);
    }
    let mut parts = path.splitn(3, '/');
    let (kind, ns, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let end = rest.find(['.', '['])?;
    let (name, rest) = rest.split_at(end);
    let doc = docs.into_iter().find(|d| {
        let text = |p: &str| d.pointer(p).and_then(Value::as_str);
        text("/kind") == Some(kind)
            && text("/metadata/name") == Some(name)
            && text("/metadata/namespace").unwrap_or("default") == ns
    })?;
    super::emit::lookup(doc, rest)
}

#[cfg(test)]
mod tests;
