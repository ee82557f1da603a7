//! The Azure reader: ARM templates (and compiled Bicep) and the JSON of `az network lb show`,
//! `az network nat gateway show`, `az network public-ip show` (one object, or an array of
//! several resources, as `jq -s` makes of several outputs).
//!
//! Both shapes are read: the REST/ARM one, whose settings are under `properties`, and the
//! Azure CLI's, which flattens them; every path said is the one in the input. In a template,
//! `[parameters('x')]` and `[variables('x')]` are resolved where they lead to a plain value;
//! any other expression is refused at its path with a hint to give the deployed resource's
//! JSON instead. References (`resourceId(...)`, ids) are matched by their last name segment.
//!
//! Read: frontend IP configurations (with their public IP's address and idle timeout when the
//! input has the public IP), backend pools (addresses, or NIC IP configurations as members),
//! load-balancing rules, inbound NAT rules (single and port range), outbound rules, NAT
//! gateways (their subnets become stand-in pools), public IPs alone. Everything else is listed
//! as ignored, with why. Ranges are not checked here: the written config is.

mod arm;
mod gateways;
mod lb;
mod values;

use super::draft::*;
use super::ImportError;
use arm::{is_expression, last_segment, Arm};
use serde_json::Value;

const HINT_DEPLOYED: &str = "give the deployed resource's JSON instead: az network lb show -g RG -n LB -o json (or the template compiled with its parameters: az deployment group export)";

/// Reads the parsed input into a draft.
pub fn read(input: &Value, platform: Option<Platform>) -> Result<Draft, ImportError> {
    if let Some(p @ (Platform::Aws | Platform::Gcp)) = platform {
        return Err(ImportError::at(
            "",
            format!(
                "--platform {}: this input holds Azure resources only",
                p.as_str()
            ),
        )
        .with_hint("leave out --platform, or give --platform azure"));
    }
    let arm = Arm::of(input);
    let mut resources = Vec::new();
    match input {
        Value::Object(o) if o.get("resources").is_some_and(Value::is_array) => {
            for (i, r) in input["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                resources.push((format!("resources[{i}]"), r));
            }
        }
        Value::Array(items) => {
            for (i, r) in items.iter().enumerate() {
                resources.push((format!("[{i}]"), r));
            }
        }
        _ => resources.push((String::new(), input)),
    }
    let mut reader = Azure {
        arm,
        draft: Draft::default(),
        public_ips: Vec::new(),
        used_ips: Vec::new(),
    };
    let mut lbs = Vec::new();
    let mut natgws = Vec::new();
    for (path, r) in &resources {
        match kind(r) {
            Kind::LoadBalancer => lbs.push((path.clone(), *r)),
            Kind::NatGateway => natgws.push((path.clone(), *r)),
            Kind::PublicIp => reader.public_ips.push((path.clone(), *r)),
            Kind::Other(t) => reader.ignore(
                path,
                format!("{t}: not a load balancer, NAT gateway or public IP"),
            ),
        }
    }
    if lbs.is_empty() && natgws.is_empty() && reader.public_ips.is_empty() {
        return Err(ImportError::at(
            "",
            "no load balancer, NAT gateway or public IP in the input",
        )
        .with_hint("give az network lb show / nat gateway show / public-ip show -o json, or an ARM template with such resources"));
    }
    for (path, lb) in &lbs {
        reader.load_balancer(path, lb)?;
    }
    for (path, g) in &natgws {
        reader.nat_gateway(path, g)?;
    }
    let alone: Vec<(String, &Value)> = reader
        .public_ips
        .iter()
        .filter(|(p, _)| !reader.used_ips.contains(p))
        .cloned()
        .collect();
    for (path, ip) in &alone {
        reader.public_ip_alone(path, ip)?;
    }
    if lbs.is_empty() && !natgws.is_empty() {
        // Profile azure-natgw models a NAT gateway as the outbound rule of each pool it serves.
        for g in std::mem::take(&mut reader.draft.nat_gateways) {
            let several = g.backend_pools.len() > 1;
            for (i, pool) in g.backend_pools.iter().enumerate() {
                let name = match several {
                    true => Sourced {
                        value: format!("{}-{pool}", g.name.value),
                        from: g.name.from.clone(),
                    },
                    false => g.name.clone(),
                };
                reader.draft.notes.push(Note {
                    on: Some(name.value.clone()),
                    text: format!("NAT gateway {}: with profile azure-natgw a NAT gateway is the outbound rule of each subnet it serves", g.name.value),
                    from: g.name.from.clone(),
                });
                reader.draft.outbound_rules.push(OutboundRule {
                    name,
                    frontend: g.frontend.clone(),
                    backend_pool: pool.clone(),
                    protocol: Sourced::chosen(
                        Protocol::All,
                        "a NAT gateway translates TCP and UDP",
                    ),
                    ports_per_member: None,
                    time_wait: None,
                    idle: g.idle.clone(),
                    refs_from: RefsFrom {
                        frontend: g.refs_from.frontend.clone(),
                        backend_pools: g
                            .refs_from
                            .backend_pools
                            .get(i)
                            .cloned()
                            .into_iter()
                            .collect(),
                    },
                });
            }
        }
    }
    let profile = if lbs.is_empty() && !natgws.is_empty() {
        Sourced::chosen(
            "azure-natgw",
            "the input has NAT gateways and no load balancer",
        )
    } else if lbs.is_empty() {
        Sourced::chosen(
            "azure-lb",
            "public IPs alone: their idle timeout is the one Azure LB's frontends have",
        )
    } else {
        Sourced::chosen("azure-lb", "the input has an Azure load balancer")
    };
    reader.draft.profile = Some(profile);
    Ok(reader.draft)
}

enum Kind {
    LoadBalancer,
    NatGateway,
    PublicIp,
    Other(String),
}

fn kind(r: &Value) -> Kind {
    let has = |k: &str| r.get(k).is_some() || r.get("properties").and_then(|p| p.get(k)).is_some();
    match r
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
    {
        Some(t) if t == "microsoft.network/loadbalancers" => Kind::LoadBalancer,
        Some(t) if t == "microsoft.network/natgateways" => Kind::NatGateway,
        Some(t) if t == "microsoft.network/publicipaddresses" => Kind::PublicIp,
        Some(_) => Kind::Other(r["type"].as_str().unwrap_or_default().to_string()),
        None if has("frontendIPConfigurations") || has("loadBalancingRules") => Kind::LoadBalancer,
        None if has("publicIpAddresses") || has("subnets") => Kind::NatGateway,
        None if has("ipAddress") || has("publicIPAllocationMethod") => Kind::PublicIp,
        None => Kind::Other("a resource without a type".into()),
    }
}

/// `base.key`, or `key` at the top.
fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

struct Azure<'a> {
    arm: Arm<'a>,
    draft: Draft,
    public_ips: Vec<(String, &'a Value)>,
    /// Paths of the public IPs a frontend or NAT gateway took.
    used_ips: Vec<String>,
}

fn path_of(o: &Origin) -> &str {
    match o {
        Origin::Input(p) => p,
        Origin::Chosen(_) => "",
    }
}

/// The NIC's name in a NIC IP configuration's id (`…/networkInterfaces/NIC/ipConfigurations/…`).
fn nic_name(id: &str) -> Option<String> {
    let mut parts = id.split('/');
    while let Some(p) = parts.next() {
        if p.eq_ignore_ascii_case("networkInterfaces") {
            return parts.next().map(str::to_string);
        }
    }
    None
}
