//! A load balancer: its frontends, pools, load-balancing, inbound NAT and outbound rules.

use super::super::draft::*;
use super::super::ImportError;
use super::*;
use serde_json::Value;
use std::net::IpAddr;

impl<'a> Azure<'a> {
    pub(super) fn load_balancer(&mut self, base: &str, lb: &'a Value) -> Result<(), ImportError> {
        for key in ["sku", "zones", "tags"] {
            if let Some(path) = (lb.get(key).is_some()).then(|| join(base, key)) {
                let why = match key {
                    "sku" => {
                        "idlegate's azure-lb profile is the Standard load balancer's behaviour"
                    }
                    "zones" => "zones do not change what an idle flow meets",
                    _ => "tags do not change what an idle flow meets",
                };
                self.ignore(&path, why);
            }
        }
        for (fe, path) in self.items(lb, base, "frontendIPConfigurations") {
            let name = self.name(
                fe,
                &path,
                format!("frontend{}", self.draft.frontends.len() + 1),
            )?;
            if let Some((_, p)) = self.prop(fe, &path, "gatewayLoadBalancer") {
                self.ignore(&p, "gateway load balancer chaining is not emulated");
            }
            let frontend =
                if let Some((ip, id_path)) = self.reference(fe, &path, "publicIPAddress")? {
                    self.frontend_of_ip(name, &ip, &id_path)?
                } else if let Some(a) = self.string(fe, &path, "privateIPAddress")? {
                    let addr = a.value.parse::<IpAddr>().map_err(|_| {
                        ImportError::at(
                            path_of(&a.from),
                            format!("{:?} is not an IP address", a.value),
                        )
                    })?;
                    Frontend {
                        address: Sourced {
                            value: Address::Ip(addr),
                            from: a.from,
                        },
                        name,
                        idle_timeout: None,
                    }
                } else {
                    let label = name.value.clone();
                    Frontend {
                        address: Sourced::chosen(
                            Address::Named {
                                name: label,
                                family: Family::V4,
                            },
                            "the input gives no address",
                        ),
                        name,
                        idle_timeout: None,
                    }
                };
            self.draft.frontends.push(frontend);
        }
        for (pool, path) in self.items(lb, base, "backendAddressPools") {
            let name = self.name(
                pool,
                &path,
                format!("pool{}", self.draft.backend_pools.len() + 1),
            )?;
            let mut members = Vec::new();
            for (addr, a_path) in self.items(pool, &path, "loadBalancerBackendAddresses") {
                let fallback = format!("{}-{}", name.value, members.len() + 1);
                let m_name = self.name(addr, &a_path, fallback)?;
                let address = match self.string(addr, &a_path, "ipAddress")? {
                    Some(a) => match a.value.parse::<IpAddr>() {
                        Ok(ip) => Sourced {
                            value: Address::Ip(ip),
                            from: a.from,
                        },
                        Err(_) => {
                            return Err(ImportError::at(
                                path_of(&a.from),
                                format!("{:?} is not an IP address", a.value),
                            ))
                        }
                    },
                    None => Sourced::at(
                        Address::Named {
                            name: m_name.value.clone(),
                            family: Family::V4,
                        },
                        a_path.clone(),
                    ),
                };
                members.push(Member {
                    name: m_name,
                    address,
                });
            }
            for (ipc, i_path) in self.items(pool, &path, "backendIPConfigurations") {
                let id_path = join(&i_path, "id");
                let Some(id) = ipc.get("id") else { continue };
                let id_text = id.as_str().unwrap_or_default();
                let nic = nic_name(id_text).unwrap_or_else(|| last_segment(id_text));
                let nic = if is_expression(id_text) {
                    self.arm.reference(id, &id_path)?
                } else {
                    nic
                };
                members.push(Member {
                    name: Sourced::at(nic.clone(), id_path.clone()),
                    address: Sourced::at(
                        Address::Named {
                            name: nic,
                            family: Family::V4,
                        },
                        id_path,
                    ),
                });
            }
            self.draft.backend_pools.push(Pool { name, members });
        }
        for (rule, path) in self.items(lb, base, "loadBalancingRules") {
            self.lb_rule(rule, &path)?;
        }
        for (rule, path) in self.items(lb, base, "inboundNatRules") {
            self.inbound_nat_rule(rule, &path)?;
        }
        for (rule, path) in self.items(lb, base, "outboundRules") {
            self.outbound_rule(rule, &path)?;
        }
        for (_, path) in self.items(lb, base, "probes") {
            self.ignore(&path, "health probes do not change what an idle flow meets (the lab's members are always up)");
        }
        for (_, path) in self.items(lb, base, "inboundNatPools") {
            self.ignore(&path, "inbound NAT pools (classic scale sets) are not imported; give inbound NAT rules with a port range instead");
        }
        Ok(())
    }

    pub(super) fn lb_rule(&mut self, rule: &'a Value, path: &str) -> Result<(), ImportError> {
        let name = self.name(rule, path, format!("rule{}", self.draft.lb_rules.len() + 1))?;
        let Some(frontend_port) = self.port(rule, path, "frontendPort")? else {
            return Err(ImportError::at(
                path,
                "a load-balancing rule without frontendPort",
            ));
        };
        if frontend_port.value == 0 {
            self.ignore(path_of(&frontend_port.from), "an HA-ports rule (frontendPort 0: every port of an internal load balancer) is not emulated");
            return Ok(());
        }
        let backend_port = self.port(rule, path, "backendPort")?.unwrap_or_else(|| {
            Sourced::chosen(frontend_port.value, "Azure uses the frontend port")
        });
        let frontend = self.required_ref(rule, path, "frontendIPConfiguration")?;
        let backend_pool = match self.reference(rule, path, "backendAddressPool")? {
            Some((p, _)) => p,
            None => match self.items(rule, path, "backendAddressPools").first() {
                Some((r, p)) => self.arm.reference(&r["id"], &join(p, "id"))?,
                None => {
                    return Err(ImportError::at(
                        path,
                        "a load-balancing rule without backendAddressPool",
                    ))
                }
            },
        };
        for (key, text) in [
            ("enableFloatingIP", "floating IP (direct server return) is on: the member sees the frontend's address as the destination; idlegate's lab translates it"),
            ("disableOutboundSnat", "disableOutboundSnat: this rule's frontend gives the members no outbound SNAT (an outbound rule or NAT gateway does)"),
        ] {
            if let Some(b) = self.boolean(rule, path, key)? {
                if b.value {
                    self.note(&name.value, text, path_of(&b.from).to_string());
                }
            }
        }
        if let Some((_, p)) = self.prop(rule, path, "probe") {
            self.ignore(&p, "health probes do not change what an idle flow meets");
        }
        if let Some((_, p)) = self.prop(rule, path, "loadDistribution") {
            self.ignore(&p, "the lab spreads new flows over the members by its own hash; idle expiry does not depend on it");
        }
        self.draft.lb_rules.push(LbRule {
            protocol: self.protocol(rule, path)?,
            idle: self.idle(rule, path)?,
            name,
            frontend,
            frontend_port,
            backend_pool,
            backend_port,
        });
        Ok(())
    }

    pub(super) fn required_ref(
        &self,
        obj: &'a Value,
        path: &str,
        key: &str,
    ) -> Result<String, ImportError> {
        match self.reference(obj, path, key)? {
            Some((name, _)) => Ok(name),
            None => Err(ImportError::at(path, format!("no {key}"))),
        }
    }

    pub(super) fn inbound_nat_rule(
        &mut self,
        rule: &'a Value,
        path: &str,
    ) -> Result<(), ImportError> {
        let name = self.name(
            rule,
            path,
            format!("nat{}", self.draft.inbound_nat_rules.len() + 1),
        )?;
        let frontend = self.required_ref(rule, path, "frontendIPConfiguration")?;
        let Some(backend_port) = self.port(rule, path, "backendPort")? else {
            return Err(ImportError::at(
                path,
                "an inbound NAT rule without backendPort",
            ));
        };
        let first = self.port(rule, path, "frontendPortRangeStart")?;
        let last = self.port(rule, path, "frontendPortRangeEnd")?;
        let target = match (first, last, self.port(rule, path, "frontendPort")?) {
            (Some(first_port), Some(last_port), _) => {
                let Some((pool, _)) = self.reference(rule, path, "backendAddressPool")? else {
                    return Err(ImportError::at(
                        path,
                        "a port-range inbound NAT rule without backendAddressPool",
                    ));
                };
                NatTarget::Range {
                    first_port,
                    last_port,
                    backend_pool: pool,
                }
            }
            (_, _, Some(frontend_port)) => {
                let member = match self.prop(rule, path, "backendIPConfiguration") {
                    Some((r, p)) if r.get("id").is_some() => {
                        let id = r["id"].as_str().unwrap_or_default();
                        match nic_name(id) {
                            Some(nic) if !is_expression(id) => nic,
                            _ => self.arm.reference(&r["id"], &join(&p, "id"))?,
                        }
                    }
                    _ => {
                        self.ignore(
                            path,
                            "an inbound NAT rule with no backend IP configuration sends nowhere",
                        );
                        return Ok(());
                    }
                };
                NatTarget::Single {
                    frontend_port,
                    member,
                }
            }
            _ => {
                return Err(ImportError::at(
                    path,
                    "an inbound NAT rule without frontendPort or frontendPortRangeStart/End",
                ))
            }
        };
        if let Some(b) = self.boolean(rule, path, "enableFloatingIP")? {
            if b.value {
                self.note(&name.value, "floating IP (direct server return) is on: the member sees the frontend's address as the destination; idlegate's lab translates it", path_of(&b.from).to_string());
            }
        }
        self.draft.inbound_nat_rules.push(InboundNatRule {
            protocol: self.protocol(rule, path)?,
            idle: self.idle(rule, path)?,
            name,
            frontend,
            target,
            backend_port,
        });
        Ok(())
    }

    pub(super) fn outbound_rule(&mut self, rule: &'a Value, path: &str) -> Result<(), ImportError> {
        let name = self.name(
            rule,
            path,
            format!("outbound{}", self.draft.outbound_rules.len() + 1),
        )?;
        let fronts = self.items(rule, path, "frontendIPConfigurations");
        let Some((first, first_path)) = fronts.first() else {
            return Err(ImportError::at(
                path,
                "an outbound rule without frontendIPConfigurations",
            ));
        };
        let frontend = self.arm.reference(&first["id"], &join(first_path, "id"))?;
        if fronts.len() > 1 {
            let rest: Vec<String> = fronts[1..].iter().map(|(_, p)| p.clone()).collect();
            self.note(&name.value, format!("the rule has {} frontends; the lab gives it the first (more frontends multiply Azure's SNAT ports; not emulated): {}", fronts.len(), rest.join(", ")), first_path.clone());
        }
        let backend_pool = self.required_ref(rule, path, "backendAddressPool")?;
        let ports_per_member = self
            .number(rule, path, "allocatedOutboundPorts")?
            .and_then(|n| {
                (n.value != 0).then(|| Sourced {
                    value: u32::try_from(n.value).unwrap_or(u32::MAX),
                    from: n.from,
                })
            });
        self.draft.outbound_rules.push(OutboundRule {
            refs_from: RefsFrom::default(),
            protocol: self.protocol(rule, path)?,
            time_wait: None,
            idle: self.idle(rule, path)?,
            name,
            frontend,
            backend_pool,
            ports_per_member,
        });
        Ok(())
    }
}
