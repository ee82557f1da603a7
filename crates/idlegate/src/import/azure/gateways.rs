//! NAT gateways (their subnets become stand-in pools) and public IPs alone.

use super::super::draft::*;
use super::super::ImportError;
use super::*;
use serde_json::Value;

impl<'a> Azure<'a> {
    pub(super) fn nat_gateway(&mut self, base: &str, g: &'a Value) -> Result<(), ImportError> {
        let name = self.name(
            g,
            base,
            format!("natgw{}", self.draft.nat_gateways.len() + 1),
        )?;
        for key in ["sku", "zones", "tags"] {
            if g.get(key).is_some() {
                self.ignore(&join(base, key), "does not change what an idle flow meets");
            }
        }
        let ips = self.items(g, base, "publicIpAddresses");
        let mut refs_from = RefsFrom::default();
        let frontend = match ips.first() {
            Some((r, p)) => {
                let id_path = join(p, "id");
                refs_from.frontend = Some(Origin::Input(id_path.clone()));
                let ip = self.arm.reference(&r["id"], &id_path)?;
                if !self.draft.frontends.iter().any(|f| f.name.value == ip) {
                    let fe = self.frontend_of_ip(
                        Sourced::at(ip.clone(), id_path.clone()),
                        &ip,
                        &id_path,
                    )?;
                    // A NAT gateway's idle timeout is its own; the public IP's is for inbound.
                    self.draft.frontends.push(Frontend {
                        idle_timeout: None,
                        ..fe
                    });
                }
                ip
            }
            None => {
                let fe = format!("{}-ip", name.value);
                refs_from.frontend = Some(Origin::Chosen(
                    "the input names no public IP of the NAT gateway: a stand-in".into(),
                ));
                self.draft.frontends.push(Frontend {
                    name: Sourced::chosen(
                        fe.clone(),
                        "the input names no public IP of the NAT gateway",
                    ),
                    address: Sourced::chosen(
                        Address::Named {
                            name: fe.clone(),
                            family: Family::V4,
                        },
                        "a stand-in public IP",
                    ),
                    idle_timeout: None,
                });
                fe
            }
        };
        for (_, p) in ips.iter().skip(1) {
            self.ignore(p, "the lab gives a NAT gateway its first public IP");
        }
        for (_, p) in self.items(g, base, "publicIpPrefixes") {
            self.ignore(
                &p,
                "public IP prefixes are not emulated; the lab gives the NAT gateway one address",
            );
        }
        let mut pools = Vec::new();
        for (s, p) in self.items(g, base, "subnets") {
            let id_path = join(&p, "id");
            let subnet = self.arm.reference(&s["id"], &id_path)?;
            self.note(&name.value, format!("NAT gateways attach to subnets, not pools: pool {subnet} stands in for subnet {subnet}"), id_path.clone());
            self.draft.backend_pools.push(Pool {
                name: Sourced::at(subnet.clone(), id_path.clone()),
                members: Vec::new(),
            });
            refs_from.backend_pools.push(Origin::Input(id_path.clone()));
            pools.push(subnet);
        }
        if pools.is_empty() {
            let pool = format!("{}-subnet", name.value);
            self.draft.backend_pools.push(Pool {
                name: Sourced::chosen(
                    pool.clone(),
                    "the input attaches the NAT gateway to no subnet: a stand-in",
                ),
                members: Vec::new(),
            });
            refs_from.backend_pools.push(Origin::Chosen(
                "the input attaches the NAT gateway to no subnet: a stand-in".into(),
            ));
            pools.push(pool);
        }
        let idle = Idle {
            timeout: self.minutes(g, base)?,
            expiry: None,
        };
        let pools_from = name.from.clone();
        self.draft.nat_gateways.push(NatGateway {
            name,
            frontend,
            backend_pools: pools,
            pools_from,
            idle,
            refs_from,
        });
        Ok(())
    }

    /// A public IP no frontend took: a frontend of its own, with a stand-in pool and rule so
    /// that the lab carries connections through it.
    pub(super) fn public_ip_alone(&mut self, base: &str, ip: &'a Value) -> Result<(), ImportError> {
        let name = self.name(ip, base, format!("ip{}", self.draft.frontends.len() + 1))?;
        for key in ["sku", "zones", "tags"] {
            if ip.get(key).is_some() {
                self.ignore(&join(base, key), "does not change what an idle flow meets");
            }
        }
        let label = name.value.clone();
        let fe = self.frontend_of_ip(name, &label, base)?;
        self.draft.frontends.push(fe);
        let pool = format!("{label}-members");
        self.draft.backend_pools.push(Pool {
            name: Sourced::chosen(
                pool.clone(),
                "a stand-in pool: a public IP alone names no backend",
            ),
            members: Vec::new(),
        });
        let why = "a stand-in rule, so that the lab carries connections through this public IP";
        self.draft.lb_rules.push(LbRule {
            name: Sourced::chosen(format!("{label}-tcp"), why),
            frontend: label,
            protocol: Sourced::chosen(Protocol::Tcp, why),
            frontend_port: Sourced::chosen(7000, why),
            backend_pool: pool,
            backend_port: Sourced::chosen(7000, why),
            idle: Idle::default(),
        });
        Ok(())
    }
}
