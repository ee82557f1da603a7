//! `aws_lb*` resources to an AWS Network Load Balancer (profile aws-nlb).
//!
//! An `aws_lb` of `load_balancer_type = "network"` is the frontend; each `aws_lb_listener` a
//! rule (its `port`, `protocol`, and `tcp_idle_timeout_seconds`, the provider's argument for
//! the listener attribute `tcp.idle_timeout.seconds`); each `aws_lb_target_group` a pool
//! whose `aws_lb_target_group_attachment`s are the members.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::{port_at, protocol, Res};
use crate::import::draft::{
    Address, Draft, Family, Frontend, Idle, Ignored, LbRule, Member, Note, Origin, Pool, Protocol,
    Sourced,
};
use crate::import::ImportError;

/// The NLB's default TCP idle timeout (AWS "Update the TCP idle timeout for your Network Load
/// Balancer listener").
const DEFAULT_IDLE: Duration = Duration::from_secs(350);

pub(super) fn read(all: &[Res]) -> Result<Draft, ImportError> {
    let of = |k: &'static str| all.iter().filter(move |r| r.kind == k);
    let mut d = Draft::default();
    let mut nlbs = Vec::new();
    for lb in of("aws_lb") {
        let kind = lb.str("load_balancer_type").unwrap_or("application");
        if kind != "network" {
            d.ignored.push(Ignored {
                path: lb.path("load_balancer_type"),
                why: format!("a load balancer of type \"{kind}\": idlegate models the NLB (\"network\"), whose listeners pass TCP and UDP flows through; an ALB ends them as an HTTP proxy"),
            });
            continue;
        }
        d.frontends.push(Frontend {
            name: Sourced::at(lb.name(), lb.path("name")),
            address: Sourced::chosen(
                Address::Named {
                    name: lb.name(),
                    family: Family::V4,
                },
                "an NLB's addresses are AWS's (per subnet), not in the configuration",
            ),
            idle_timeout: None,
        });
        nlbs.push(lb);
    }
    if nlbs.is_empty() {
        return Err(ImportError::at(
            "",
            "no aws_lb with load_balancer_type = \"network\": idlegate emulates the NLB",
        )
        .with_hint("import the plan or state that declares the Network Load Balancer"));
    }
    let groups: Vec<&Res> = of("aws_lb_target_group").collect();
    for g in &groups {
        d.backend_pools.push(Pool {
            name: Sourced::at(g.name(), g.path("name")),
            members: Vec::new(),
        });
        if let Some(v) = g.get("connection_termination") {
            if v == &Value::Bool(true) {
                d.notes.push(Note {
                    on: Some(g.name()),
                    text: "connection_termination: AWS closes a deregistered target's connections at the end of the deregistration delay (not an idle expiry)".into(),
                    from: Origin::Input(g.path("connection_termination")),
                });
            }
        }
        if g.get("deregistration_delay").is_some() {
            d.ignored.push(Ignored {
                path: g.path("deregistration_delay"),
                why: "the deregistration delay governs a target being removed, not what an idle flow meets".into(),
            });
        }
    }
    for a in of("aws_lb_target_group_attachment") {
        let gi = a
            .str("target_group_arn")
            .and_then(|id| groups.iter().position(|g| g.is(id)))
            .or(if groups.len() == 1 { Some(0) } else { None });
        let Some(gi) = gi else {
            d.ignored.push(Ignored {
                path: a.address.clone(),
                why: "its target group is not in the input".into(),
            });
            continue;
        };
        let address = match a.str("target_id").map(|t| (t, t.parse::<IpAddr>())) {
            Some((_, Ok(ip))) => Sourced::at(Address::Ip(ip), a.path("target_id")),
            Some((t, Err(_))) => Sourced::chosen(
                Address::Named {
                    name: t.to_string(),
                    family: Family::V4,
                },
                format!(
                    "{} is an instance, not an IP: the lab gives it an address",
                    a.path("target_id")
                ),
            ),
            None => Sourced::chosen(
                Address::Named {
                    name: a.name(),
                    family: Family::V4,
                },
                "target_id is known only after apply",
            ),
        };
        d.backend_pools[gi].members.push(Member {
            name: Sourced::chosen(
                a.address
                    .rsplit('.')
                    .next()
                    .unwrap_or("target")
                    .replace(['[', ']', '"'], ""),
                "the attachment's address label",
            ),
            address,
        });
    }
    for l in of("aws_lb_listener") {
        let lb = l
            .str("load_balancer_arn")
            .and_then(|id| nlbs.iter().position(|n| n.is(id)))
            .or(if nlbs.len() == 1 { Some(0) } else { None });
        let Some(lb) = lb else {
            d.ignored.push(Ignored {
                path: l.address.clone(),
                why: "its load balancer is not an NLB in the input".into(),
            });
            continue;
        };
        let action = l
            .get("default_action")
            .and_then(Value::as_array)
            .and_then(|a| a.first());
        let tg_id = action
            .and_then(|a| a.get("target_group_arn"))
            .and_then(Value::as_str);
        let gi = tg_id
            .and_then(|id| groups.iter().position(|g| g.is(id)))
            .or(if groups.len() == 1 { Some(0) } else { None });
        let Some(gi) = gi else {
            d.ignored.push(Ignored { path: l.address.clone(), why: "its target group is not in the input (or is known only after apply and several are)".into() });
            continue;
        };
        let proto_s = l.str("protocol").unwrap_or("TCP").to_string();
        let proto = protocol(&proto_s, &l.path("protocol"))?;
        let port_n = l.number("port")?.ok_or_else(|| {
            ImportError::at(
                l.path("port"),
                "missing (a required argument of a listener)",
            )
        })?;
        let port = Sourced::at(port_at(port_n, &l.path("port"))?, l.path("port"));
        let g = groups[gi];
        let backend_port = match g.number("port")? {
            Some(n) => Sourced::at(port_at(n, &g.path("port"))?, g.path("port")),
            None => Sourced::chosen(port.value, "the target group gives no port: the listener's"),
        };
        let timeout = if proto_s.eq_ignore_ascii_case("tls") {
            if l.get("tcp_idle_timeout_seconds").is_some() {
                d.ignored.push(Ignored {
                    path: l.path("tcp_idle_timeout_seconds"),
                    why: "a TLS listener's idle timeout is 350 s and cannot be modified (AWS)"
                        .into(),
                });
            }
            Some(Sourced::chosen(
                DEFAULT_IDLE,
                "a TLS listener's idle timeout is 350 s and cannot be modified (AWS)",
            ))
        } else if proto == Protocol::Udp {
            None
        } else if l.is_unknown("tcp_idle_timeout_seconds") {
            Some(Sourced::chosen(
                DEFAULT_IDLE,
                format!(
                    "{} is known only after apply; AWS's default, 350 s",
                    l.path("tcp_idle_timeout_seconds")
                ),
            ))
        } else {
            l.number("tcp_idle_timeout_seconds")?
                .map(|s| Sourced::at(Duration::from_secs(s), l.path("tcp_idle_timeout_seconds")))
        };
        d.lb_rules.push(LbRule {
            name: Sourced::chosen(
                listener_name(l, &proto_s, port.value),
                "the listener's address label, protocol and port",
            ),
            frontend: d.frontends[lb].name.value.clone(),
            protocol: Sourced::at(proto, l.path("protocol")),
            frontend_port: port,
            backend_pool: d.backend_pools[gi].name.value.clone(),
            backend_port,
            idle: Idle {
                timeout,
                expiry: None,
            },
        });
    }
    d.profile = Some(Sourced::at("aws-nlb", nlbs[0].path("load_balancer_type")));
    Ok(d)
}

fn listener_name(l: &Res, proto: &str, port: u16) -> String {
    let label = l
        .address
        .rsplit('.')
        .next()
        .unwrap_or("listener")
        .replace(['[', ']', '"'], "");
    format!("{label}-{}-{port}", proto.to_ascii_lowercase())
}
