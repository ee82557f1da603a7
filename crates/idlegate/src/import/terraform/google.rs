//! `google_compute_router_nat` to GCP Cloud NAT (profile gcp-nat).
//!
//! The NAT is an outbound rule: its established-TCP idle timeout (`tcp_established_idle_timeout_sec`)
//! and `min_ports_per_vm` are the rule's; its first `nat_ips` entry (a `google_compute_address`)
//! the frontend. The VMs it serves are set by subnetworks, which idlegate does not read: a
//! stand-in pool is written. `tcp_time_wait_timeout_sec` is the rule's `time_wait`. Cloud NAT's
//! transitory and UDP timers have no key in idlegate's config: they are listed as ignored with
//! the figure the gcp-nat profile runs instead.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::Res;
use crate::import::draft::{
    Address, Draft, Family, Frontend, Idle, Ignored, Note, Origin, OutboundRule, Pool, Protocol,
    Sourced,
};
use crate::import::ImportError;

/// The timers the config cannot set, with the figure the gcp-nat profile runs.
const FIXED: [(&str, &str); 2] = [
    ("tcp_transitory_idle_timeout_sec", "30 s"),
    ("udp_idle_timeout_sec", "30 s"),
];

pub(super) fn read(all: &[Res]) -> Result<Draft, ImportError> {
    let mut d = Draft::default();
    let addresses: Vec<&Res> = all
        .iter()
        .filter(|r| r.kind == "google_compute_address")
        .collect();
    let nats: Vec<&Res> = all
        .iter()
        .filter(|r| r.kind == "google_compute_router_nat")
        .collect();
    if nats.is_empty() {
        return Err(ImportError::at(
            "",
            "no google_compute_router_nat: idlegate emulates Cloud NAT",
        )
        .with_hint("import the plan or state that declares the router NAT"));
    }
    for n in &nats {
        let name = n.name();
        let fe = format!("{name}-ip");
        let ip = n
            .get("nat_ips")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str);
        let address = match ip.and_then(|id| {
            addresses
                .iter()
                .find(|a| a.is(id) || a.str("address") == Some(id))
        }) {
            Some(a) => match a.str("address").and_then(|s| s.parse::<IpAddr>().ok()) {
                Some(ip) => Sourced::at(Address::Ip(ip), a.path("address")),
                None => Sourced::chosen(
                    Address::Named {
                        name: a.name(),
                        family: Family::V4,
                    },
                    format!("{} is known only after apply", a.path("address")),
                ),
            },
            None => Sourced::chosen(
                Address::Named {
                    name: fe.clone(),
                    family: Family::V4,
                },
                "the NAT's IPs are allocated by Google (AUTO_ONLY) or not in the input",
            ),
        };
        d.frontends.push(Frontend {
            name: Sourced::chosen(fe.clone(), format!("the NAT IP of {name}")),
            address,
            idle_timeout: None,
        });
        let pool = format!("{name}-vms");
        d.backend_pools.push(Pool {
            name: Sourced::chosen(pool.clone(), "the VMs a Cloud NAT serves are set by its subnetworks, which idlegate does not read"),
            members: Vec::new(),
        });
        let timeout = if n.is_unknown("tcp_established_idle_timeout_sec") {
            Some(Sourced::chosen(
                Duration::from_secs(1200),
                "known only after apply; Cloud NAT's default, 1200 s",
            ))
        } else {
            n.number("tcp_established_idle_timeout_sec")?.map(|s| {
                Sourced::at(
                    Duration::from_secs(s),
                    n.path("tcp_established_idle_timeout_sec"),
                )
            })
        };
        let ports = match n.number("min_ports_per_vm")? {
            Some(p) => Some(Sourced::at(
                u32::try_from(p).map_err(|_| {
                    ImportError::at(
                        n.path("min_ports_per_vm"),
                        format!("{p} ports is more than an IP has"),
                    )
                })?,
                n.path("min_ports_per_vm"),
            )),
            None => None,
        };
        if n.bool("enable_dynamic_port_allocation")? == Some(true) {
            d.notes.push(Note {
                on: Some(name.clone()),
                text: format!(
                    "dynamic port allocation: a VM may grow past min_ports_per_vm up to max_ports_per_vm ({}); idlegate gives each VM min_ports_per_vm",
                    n.number("max_ports_per_vm")?.map_or("unset".to_string(), |m| m.to_string())
                ),
                from: Origin::Input(n.path("enable_dynamic_port_allocation")),
            });
        }
        let time_wait = if n.is_unknown("tcp_time_wait_timeout_sec") {
            None
        } else {
            n.number("tcp_time_wait_timeout_sec")?
                .map(|s| Sourced::at(Duration::from_secs(s), n.path("tcp_time_wait_timeout_sec")))
        };
        for (attr, figure) in FIXED {
            if n.get(attr).is_some() {
                d.ignored.push(Ignored {
                    path: n.path(attr),
                    why: format!(
                        "idlegate's gcp-nat profile runs its own figure for this: {figure}"
                    ),
                });
            }
        }
        d.outbound_rules.push(OutboundRule {
            refs_from: Default::default(),
            name: Sourced::at(name, n.path("name")),
            frontend: fe,
            backend_pool: pool,
            protocol: Sourced::chosen(Protocol::All, "Cloud NAT translates TCP and UDP"),
            ports_per_member: ports,
            time_wait,
            idle: Idle {
                timeout,
                expiry: None,
            },
        });
    }
    d.profile = Some(Sourced::at("gcp-nat", nats[0].address.clone()));
    Ok(d)
}
