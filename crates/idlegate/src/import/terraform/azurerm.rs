//! `azurerm_*` resources to an Azure LB (profile azure-lb) or a NAT gateway alone
//! (profile azure-natgw).
//!
//! Load balancer frontends come from `azurerm_lb.frontend_ip_configuration` blocks (their
//! address from `private_ip_address`, or the `azurerm_public_ip` they name), pools from
//! `azurerm_lb_backend_address_pool` with their `azurerm_lb_backend_address_pool_address`
//! members, and the rules from `azurerm_lb_rule`, `azurerm_lb_nat_rule` and
//! `azurerm_lb_outbound_rule`. References between resources are ids, which a plan knows only
//! after apply: where an id does not settle it, the one candidate is taken, or the first with
//! a note saying so.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::{number_at, port_at, protocol, Res};
use crate::import::draft::{
    Address, Draft, Expiry, Family, Frontend, Idle, Ignored, InboundNatRule, LbRule, Member,
    NatGateway, NatTarget, Note, Origin, OutboundRule, Pool, Sourced,
};
use crate::import::ImportError;

/// Azure's default idle timeout (Azure "Load Balancer TCP Reset and Idle Timeout").
const DEFAULT_IDLE: Duration = Duration::from_secs(4 * 60);

/// Said on an LB rule at 30 min: older azurerm releases validated the rule's
/// `idle_timeout_in_minutes` as 4-30 (`validation.IntBetween(4, 30)` in
/// internal/services/loadbalancer/rule_resource.go), later ones as 4-100, Azure's own range.
const PROVIDER_CAP_NOTE: &str = "30 min was the most older azurerm releases accepted for an LB rule (they validated idle_timeout_in_minutes as 4-30); Azure and later releases accept 4-100: if a longer timeout was meant, a newer provider can set it";

pub(super) fn read(all: &[Res]) -> Result<Draft, ImportError> {
    let of = |k: &'static str| all.iter().filter(move |r| r.kind == k);
    let mut d = Draft::default();
    let pips: Vec<&Res> = of("azurerm_public_ip").collect();
    let lbs: Vec<&Res> = of("azurerm_lb").collect();
    let natgws: Vec<&Res> = of("azurerm_nat_gateway").collect();
    for r in of("azurerm_lb_probe") {
        d.ignored.push(Ignored {
            path: r.address.clone(),
            why: "health probes do not change what an idle flow meets".into(),
        });
    }

    // Frontends.
    for lb in &lbs {
        if let Some(sku) = lb.str("sku") {
            if sku != "Standard" {
                d.notes.push(Note {
                    on: None,
                    text: format!("sku = \"{sku}\": idlegate's azure-lb profile follows the Standard SKU (Basic is retired)"),
                    from: super::super::draft::Origin::Input(lb.path("sku")),
                });
            }
        }
        let blocks = lb
            .get("frontend_ip_configuration")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, b) in blocks.iter().enumerate() {
            let base = format!("{}.frontend_ip_configuration[{i}]", lb.address);
            let Some(name) = b.get("name").and_then(Value::as_str) else {
                return Err(ImportError::at(
                    format!("{base}.name"),
                    "a frontend IP configuration without a name",
                ));
            };
            let (address, idle_timeout) = frontend_address(b, &base, &pips, name, &mut d)?;
            d.frontends.push(Frontend {
                name: Sourced::at(name.to_string(), format!("{base}.name")),
                address,
                idle_timeout,
            });
        }
    }

    // Pools and their members.
    let pools: Vec<&Res> = of("azurerm_lb_backend_address_pool").collect();
    for p in &pools {
        d.backend_pools.push(Pool {
            name: Sourced::at(p.name(), p.path("name")),
            members: Vec::new(),
        });
    }
    for a in of("azurerm_lb_backend_address_pool_address") {
        let Some(pi) = pick(&pools, a, "backend_address_pool_id", &mut d) else {
            d.ignored.push(Ignored {
                path: a.address.clone(),
                why: "no azurerm_lb_backend_address_pool in the input for it".into(),
            });
            continue;
        };
        let address = match a.str("ip_address").map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => Sourced::at(Address::Ip(ip), a.path("ip_address")),
            Some(Err(e)) => {
                return Err(ImportError::at(
                    a.path("ip_address"),
                    format!("not an IP address: {e}"),
                ))
            }
            None => Sourced::chosen(
                Address::Named {
                    name: a.name(),
                    family: Family::V4,
                },
                "ip_address is known only after apply",
            ),
        };
        d.backend_pools[pi].members.push(Member {
            name: Sourced::at(a.name(), a.path("name")),
            address,
        });
    }

    // Load-balancing rules.
    for r in of("azurerm_lb_rule") {
        let frontend = required_str(r, "frontend_ip_configuration_name")?;
        let pool = match r
            .get("backend_address_pool_ids")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            Some(Value::String(id)) => pick_id(&pools, id, r, &mut d),
            _ => pick(&pools, r, "backend_address_pool_ids", &mut d),
        };
        let Some(pool) = pool else {
            d.ignored.push(Ignored {
                path: r.address.clone(),
                why: "no backend pool: a rule without one forwards nothing".into(),
            });
            continue;
        };
        for (attr, text) in [
            ("enable_floating_ip", "floating IP: Azure delivers the frontend's address to the member unchanged; the lab's member sees its own address"),
            ("floating_ip_enabled", "floating IP: Azure delivers the frontend's address to the member unchanged; the lab's member sees its own address"),
            ("disable_outbound_snat", "disable_outbound_snat: the members' outbound flows do not use this rule's frontend (idlegate takes outbound SNAT from [[outbound_rule]] only)"),
        ] {
            if r.bool(attr)? == Some(true) {
                d.notes.push(Note { on: Some(r.name()), text: text.into(), from: super::super::draft::Origin::Input(r.path(attr)) });
            }
        }
        if r.get("probe_id").is_some() || r.is_unknown("probe_id") {
            d.ignored.push(Ignored {
                path: r.path("probe_id"),
                why: "health probes do not change what an idle flow meets".into(),
            });
        }
        let idle = idle(r, &mut d, true)?;
        d.lb_rules.push(LbRule {
            name: Sourced::at(r.name(), r.path("name")),
            frontend,
            protocol: Sourced::at(
                protocol(&required_str(r, "protocol")?, &r.path("protocol"))?,
                r.path("protocol"),
            ),
            frontend_port: port(r, "frontend_port")?,
            backend_pool: d.backend_pools[pool].name.value.clone(),
            backend_port: port(r, "backend_port")?,
            idle,
        });
    }

    // Inbound NAT rules: a port range over a pool, or one port (whose member is set by an
    // azurerm_network_interface_nat_rule_association, which idlegate does not read).
    for r in of("azurerm_lb_nat_rule") {
        let frontend = required_str(r, "frontend_ip_configuration_name")?;
        let target = match (
            r.number("frontend_port_start")?,
            r.number("frontend_port_end")?,
        ) {
            (Some(first), Some(last)) => {
                let Some(pool) = pick(&pools, r, "backend_address_pool_id", &mut d) else {
                    d.ignored.push(Ignored {
                        path: r.address.clone(),
                        why: "a port-range NAT rule without a backend pool in the input".into(),
                    });
                    continue;
                };
                NatTarget::Range {
                    first_port: Sourced::at(
                        port_at(first, &r.path("frontend_port_start"))?,
                        r.path("frontend_port_start"),
                    ),
                    last_port: Sourced::at(
                        port_at(last, &r.path("frontend_port_end"))?,
                        r.path("frontend_port_end"),
                    ),
                    backend_pool: d.backend_pools[pool].name.value.clone(),
                }
            }
            _ => {
                let member = d
                    .backend_pools
                    .iter()
                    .flat_map(|p| p.members.first())
                    .next()
                    .map(|m| m.name.value.clone());
                let Some(member) = member else {
                    d.ignored.push(Ignored {
                        path: r.address.clone(),
                        why: "a single-port NAT rule: its VM is set by azurerm_network_interface_nat_rule_association, and the input has no pool member to stand for it".into(),
                    });
                    continue;
                };
                d.notes.push(Note {
                    on: Some(r.name()),
                    text: format!("the rule's VM is set by an azurerm_network_interface_nat_rule_association, which idlegate does not read: member \"{member}\" stands for it"),
                    from: super::super::draft::Origin::Input(r.address.clone()),
                });
                NatTarget::Single {
                    frontend_port: port(r, "frontend_port")?,
                    member,
                }
            }
        };
        let idle = idle(r, &mut d, false)?;
        d.inbound_nat_rules.push(InboundNatRule {
            name: Sourced::at(r.name(), r.path("name")),
            frontend,
            protocol: Sourced::at(
                protocol(&required_str(r, "protocol")?, &r.path("protocol"))?,
                r.path("protocol"),
            ),
            target,
            backend_port: port(r, "backend_port")?,
            idle,
        });
    }

    // Outbound rules.
    for r in of("azurerm_lb_outbound_rule") {
        let frontend = match r
            .get("frontend_ip_configuration")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            Some(b) => match b.get("name").and_then(Value::as_str) {
                Some(n) => n.to_string(),
                None => {
                    return Err(ImportError::at(
                        format!("{}.frontend_ip_configuration[0].name", r.address),
                        "missing",
                    ))
                }
            },
            None => {
                return Err(ImportError::at(
                    r.path("frontend_ip_configuration"),
                    "an outbound rule needs a frontend_ip_configuration block",
                ))
            }
        };
        let Some(pool) = pick(&pools, r, "backend_address_pool_id", &mut d) else {
            d.ignored.push(Ignored {
                path: r.address.clone(),
                why: "no backend pool in the input for it".into(),
            });
            continue;
        };
        let ports = match r.number("allocated_outbound_ports")? {
            None | Some(0) => None,
            Some(n) => Some(Sourced::at(
                u32::try_from(n).map_err(|_| {
                    ImportError::at(
                        r.path("allocated_outbound_ports"),
                        format!("{n} ports is more than any frontend has"),
                    )
                })?,
                r.path("allocated_outbound_ports"),
            )),
        };
        let idle = idle(r, &mut d, false)?;
        d.outbound_rules.push(OutboundRule {
            refs_from: Default::default(),
            name: Sourced::at(r.name(), r.path("name")),
            frontend,
            backend_pool: d.backend_pools[pool].name.value.clone(),
            protocol: Sourced::at(
                protocol(&required_str(r, "protocol")?, &r.path("protocol"))?,
                r.path("protocol"),
            ),
            ports_per_member: ports,
            time_wait: None,
            idle,
        });
    }

    // NAT gateways: the public IP comes from an azurerm_nat_gateway_public_ip_association.
    // A NAT gateway serves subnets, not pools: beside a load balancer, each subnet an
    // azurerm_subnet_nat_gateway_association gives it becomes a stand-in pool, as the Azure
    // reader does (members are not known by subnet), or one stand-in pool without one.
    let assocs: Vec<&Res> = of("azurerm_nat_gateway_public_ip_association").collect();
    let subnet_assocs: Vec<&Res> = of("azurerm_subnet_nat_gateway_association").collect();
    let subnets: Vec<&Res> = of("azurerm_subnet").collect();
    for g in &natgws {
        let name = g.name();
        let fe_name = format!("{name}-ip");
        let pip = assocs
            .iter()
            .find(|a| a.str("nat_gateway_id").is_some_and(|id| g.is(id)))
            .and_then(|a| a.str("public_ip_address_id"))
            .and_then(|id| pips.iter().find(|p| p.is(id)).copied())
            .or_else(|| {
                if lbs.is_empty() && pips.len() == 1 {
                    Some(pips[0])
                } else {
                    None
                }
            });
        let address = pip_address(pip, &fe_name);
        d.frontends.push(Frontend {
            name: Sourced::chosen(
                fe_name.clone(),
                format!("the public IP of NAT gateway {name}"),
            ),
            address,
            idle_timeout: None,
        });
        let idle = Idle {
            timeout: minutes(g, "idle_timeout_in_minutes", &mut d)?,
            expiry: None,
        };
        if lbs.is_empty() {
            let pool = format!("{name}-subnet");
            d.backend_pools.push(Pool { name: Sourced::chosen(pool.clone(), "the subnets a NAT gateway serves are set by azurerm_subnet_nat_gateway_association, which idlegate does not read"), members: Vec::new() });
            d.outbound_rules.push(OutboundRule {
                refs_from: Default::default(),
                name: Sourced::at(name, g.path("name")),
                frontend: fe_name,
                backend_pool: pool,
                protocol: Sourced::chosen(
                    super::super::draft::Protocol::All,
                    "a NAT gateway translates TCP and UDP",
                ),
                ports_per_member: None,
                time_wait: None,
                idle,
            });
        } else {
            let (pools, pools_from) =
                subnet_pools(g, &subnet_assocs, &subnets, natgws.len() == 1, &mut d);
            d.nat_gateways.push(NatGateway {
                refs_from: Default::default(),
                name: Sourced::at(name, g.path("name")),
                frontend: fe_name,
                backend_pools: pools,
                pools_from,
                idle,
            });
        }
    }

    d.profile = Some(if !lbs.is_empty() {
        Sourced::at("azure-lb", lbs[0].address.clone())
    } else if !natgws.is_empty() {
        Sourced::at("azure-natgw", natgws[0].address.clone())
    } else {
        return Err(ImportError::at("", "no azurerm_lb or azurerm_nat_gateway: idlegate emulates a load balancer or a NAT gateway, not a public IP alone")
            .with_hint("import the plan or state that declares the load balancer (azurerm_lb) or NAT gateway (azurerm_nat_gateway) the public IP belongs to"));
    });
    for p in &pips {
        if p.get("idle_timeout_in_minutes").is_some() && !d.frontends.iter().any(|f| f.idle_timeout.as_ref().is_some_and(|t| matches!(&t.from, super::super::draft::Origin::Input(path) if path.starts_with(&p.address)))) {
            d.ignored.push(Ignored { path: p.path("idle_timeout_in_minutes"), why: "no LB frontend in the input is known to use this public IP (a plan knows the ids only after apply, and there are several): its idle timeout is not applied".into() });
        }
    }
    Ok(d)
}

/// A frontend's address and the public IP's idle timeout.
fn frontend_address(
    b: &Value,
    base: &str,
    pips: &[&Res],
    name: &str,
    d: &mut Draft,
) -> Result<(Sourced<Address>, Option<Sourced<Duration>>), ImportError> {
    if let Some(ip) = b
        .get("private_ip_address")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        let ip: IpAddr = ip.parse().map_err(|e| {
            ImportError::at(
                format!("{base}.private_ip_address"),
                format!("not an IP address: {e}"),
            )
        })?;
        return Ok((
            Sourced::at(Address::Ip(ip), format!("{base}.private_ip_address")),
            None,
        ));
    }
    let pip = match b.get("public_ip_address_id").and_then(Value::as_str) {
        Some(id) => pips.iter().find(|p| p.is(id)).copied(),
        None => None,
    }
    .or_else(|| if pips.len() == 1 { Some(pips[0]) } else { None });
    let timeout = match pip {
        Some(p) => minutes(p, "idle_timeout_in_minutes", d)?,
        None => None,
    };
    Ok((pip_address(pip, name), timeout))
}

/// A public IP's address, or a name for it when it is known only after apply.
fn pip_address(pip: Option<&Res>, name: &str) -> Sourced<Address> {
    match pip {
        Some(p) => match p.str("ip_address").and_then(|s| s.parse::<IpAddr>().ok()) {
            Some(ip) => Sourced::at(Address::Ip(ip), p.path("ip_address")),
            None => Sourced::chosen(
                Address::Named {
                    name: p.name(),
                    family: family(p),
                },
                format!("{} is known only after apply", p.path("ip_address")),
            ),
        },
        None => Sourced::chosen(
            Address::Named {
                name: name.to_string(),
                family: Family::V4,
            },
            "the input gives no address for this frontend",
        ),
    }
}

/// The stand-in pools of NAT gateway `g`, one per subnet its
/// `azurerm_subnet_nat_gateway_association`s name (the subnet's `name` where the
/// `azurerm_subnet` is in the input, else the id's last segment), each with a note; one
/// stand-in pool, with a note, when none names it (an id known only after apply is the
/// input's only NAT gateway when it has one). With where the list comes from.
fn subnet_pools(
    g: &Res,
    assocs: &[&Res],
    subnets: &[&Res],
    only: bool,
    d: &mut Draft,
) -> (Vec<String>, Origin) {
    let gateway = g.name();
    let mine: Vec<&&Res> = assocs
        .iter()
        .filter(|a| match a.str("nat_gateway_id") {
            Some(id) => g.is(id),
            // Known only after apply: the one NAT gateway of the input.
            None => only && a.is_unknown("nat_gateway_id"),
        })
        .collect();
    let mut pools = Vec::new();
    for a in &mine {
        let at = a.path("subnet_id");
        let subnet = match a.str("subnet_id") {
            Some(id) => subnets
                .iter()
                .find(|s| s.is(id))
                .map(|s| s.name())
                .unwrap_or_else(|| id.rsplit('/').next().unwrap_or(id).to_string()),
            None => a.name(),
        };
        if pools.contains(&subnet) {
            continue;
        }
        d.notes.push(Note {
            on: Some(gateway.clone()),
            text: format!("NAT gateways attach to subnets, not pools: pool {subnet} stands in for subnet {subnet}; give it the members of that subnet"),
            from: Origin::Input(at.clone()),
        });
        d.backend_pools.push(Pool {
            name: Sourced::at(subnet.clone(), at),
            members: Vec::new(),
        });
        pools.push(subnet);
    }
    if !pools.is_empty() {
        let names: Vec<&str> = mine.iter().map(|a| a.address.as_str()).collect();
        return (pools, Origin::Input(names.join(", ")));
    }
    let pool = format!("{gateway}-subnet");
    d.notes.push(Note {
        on: Some(gateway.clone()),
        text: format!("NAT gateways attach to subnets, not pools, and no azurerm_subnet_nat_gateway_association in the input names this one: pool {pool} stands in for its subnets; give it their members"),
        from: Origin::Input(g.address.clone()),
    });
    let why = format!("a stand-in for the subnets NAT gateway {gateway} serves");
    d.backend_pools.push(Pool {
        name: Sourced::chosen(pool.clone(), why.clone()),
        members: Vec::new(),
    });
    (vec![pool], Origin::Chosen(why))
}

fn family(p: &Res) -> Family {
    if p.str("ip_version") == Some("IPv6") {
        Family::V6
    } else {
        Family::V4
    }
}

/// A timeout in minutes; the default, with why, where the plan knows it only after apply.
fn minutes(r: &Res, attr: &str, _d: &mut Draft) -> Result<Option<Sourced<Duration>>, ImportError> {
    if r.is_unknown(attr) {
        return Ok(Some(Sourced::chosen(
            DEFAULT_IDLE,
            format!(
                "{} is known only after apply; Azure's default, 4 min",
                r.path(attr)
            ),
        )));
    }
    Ok(r.number(attr)?
        .map(|m| Sourced::at(Duration::from_secs(m.saturating_mul(60)), r.path(attr))))
}

/// A rule's idle timeout and TCP reset (`enable_tcp_reset`, `tcp_reset_enabled` in azurerm 4).
fn idle(r: &Res, d: &mut Draft, lb_rule: bool) -> Result<Idle, ImportError> {
    let timeout = minutes(r, "idle_timeout_in_minutes", d)?;
    if lb_rule {
        if let Some(t) = &timeout {
            if matches!(t.from, super::super::draft::Origin::Input(_))
                && t.value == Duration::from_secs(30 * 60)
            {
                d.notes.push(Note {
                    on: Some(r.name()),
                    text: PROVIDER_CAP_NOTE.into(),
                    from: t.from.clone(),
                });
            }
        }
    }
    let expiry = match r.bool_any(&["enable_tcp_reset", "tcp_reset_enabled"])? {
        Some((true, a)) => Some(Sourced::at(Expiry::Reset, r.path(a))),
        Some((false, a)) => Some(Sourced::at(Expiry::Silent, r.path(a))),
        None => Some(Sourced::chosen(
            Expiry::Silent,
            "TCP reset is not set: Azure's default is off (silent)",
        )),
    };
    Ok(Idle { timeout, expiry })
}

fn required_str(r: &Res, attr: &str) -> Result<String, ImportError> {
    match r.str(attr) {
        Some(s) => Ok(s.to_string()),
        None => Err(ImportError::at(
            r.path(attr),
            "missing (a required argument of the resource)",
        )),
    }
}

fn port(r: &Res, attr: &str) -> Result<Sourced<u16>, ImportError> {
    match number_at(r.get(attr), &r.path(attr))? {
        Some(n) => Ok(Sourced::at(port_at(n, &r.path(attr))?, r.path(attr))),
        None => Err(ImportError::at(
            r.path(attr),
            "missing (a required argument of the resource)",
        )),
    }
}

/// The pool a resource's `attr` (an id) names: by id, else the one pool, else the first with
/// a note.
fn pick(pools: &[&Res], r: &Res, attr: &str, d: &mut Draft) -> Option<usize> {
    match r.str(attr) {
        Some(id) => pick_id(pools, id, r, d),
        None => pick_id(pools, "", r, d),
    }
}

fn pick_id(pools: &[&Res], id: &str, r: &Res, d: &mut Draft) -> Option<usize> {
    if let Some(i) = pools.iter().position(|p| !id.is_empty() && p.is(id)) {
        return Some(i);
    }
    match pools.len() {
        0 => None,
        1 => Some(0),
        _ => {
            d.notes.push(Note {
                on: Some(r.name()),
                text: format!("its backend pool is an id known only after apply; idlegate took the first pool, {}", pools[0].name()),
                from: super::super::draft::Origin::Input(r.address.clone()),
            });
            Some(0)
        }
    }
}
