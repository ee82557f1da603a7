//! The validator: the file as written ([`super::raw`]) in, a [`Config`] the engine runs as is
//! (or the first mistake, with where it is) out.

use super::*;

/// A mistake: where it is (`None` for the whole file) and what it is.
pub(super) type Invalid = (Option<Range<usize>>, String);

/// Frontend ports `first..=last` of `frontend`, for `protocol`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    pub(super) frontend: usize,
    pub(super) protocol: Protocols,
    pub(super) first: u16,
    pub(super) last: u16,
}

impl Claim {
    pub(super) fn overlaps(&self, other: &Claim) -> bool {
        self.frontend == other.frontend
            && self.protocol.overlaps(other.protocol)
            && self.first <= other.last
            && other.first <= self.last
    }
}

#[derive(Default)]
pub(super) struct Validator {
    pub(super) frontends: HashMap<String, usize>,
    pub(super) pools: HashMap<String, usize>,
    pub(super) rules: std::collections::HashSet<String>,
    /// Frontend ports claimed by inbound rules, and by which.
    pub(super) claimed: Vec<(Claim, String)>,
}

pub(super) fn invalid<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Invalid> {
    Err((Some(span), message.into()))
}

pub(super) fn names_list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let mut v: Vec<&str> = names.map(String::as_str).collect();
    v.sort_unstable();
    if v.is_empty() {
        "none is defined".to_string()
    } else {
        format!("defined: {}", v.join(", "))
    }
}

impl Validator {
    pub(super) fn validate(mut self, raw: RawConfig) -> Result<Config, Invalid> {
        let profile = match &raw.profile {
            None => profile::default_profile(),
            Some(p) => find_profile(p.get_ref()).map_err(|unknown| {
                let message = format!("profile = \"{}\": {unknown}", p.get_ref());
                (Some(p.span()), message)
            })?,
        };
        let time_scale = match &raw.time_scale {
            None => 1,
            Some(t) if *t.get_ref() == 0 => {
                return invalid(t.span(), "time_scale = 0: must be at least 1")
            }
            Some(t) => {
                let max = max_time_scale(profile);
                if *t.get_ref() > max {
                    let message = format!(
                        "time_scale = {}: at most {max} with profile {}, so that no timer (the shortest is {}) runs under {}",
                        t.get_ref(),
                        profile.name,
                        human(shortest_timer(profile)),
                        human(MIN_SCALED_TIMER)
                    );
                    return invalid(t.span(), message);
                }
                *t.get_ref()
            }
        };
        let pickup = match &raw.loose_pickup {
            None => profile.pickup.default,
            Some(l) if profile.pickup.knob == profile::PickupKnob::Fixed => {
                let message = format!(
                    "loose_pickup: {} (profile {}) has no such setting; it is Linux conntrack's (profiles linux-conntrack, kube-proxy)",
                    profile.title, profile.name
                );
                return invalid(l.span(), message);
            }
            Some(l) if *l.get_ref() => Pickup::Loose,
            Some(_) => Pickup::SynOnly,
        };
        let max_flows = match &raw.max_flows {
            None => DEFAULT_MAX_FLOWS,
            Some(m) if (1..=MAX_MAX_FLOWS as u64).contains(m.get_ref()) => *m.get_ref() as usize,
            Some(m) => {
                let message = format!(
                    "max_flows = {}: from 1 to {MAX_MAX_FLOWS} (the table numbers its flows in 31 bits)",
                    m.get_ref()
                );
                return invalid(m.span(), message);
            }
        };
        let frontends = self.frontends(&raw.frontend, profile)?;
        let backend_pools = self.pools(&raw.backend_pool, &frontends)?;
        let mut lb_rules = Vec::new();
        for r in &raw.lb_rule {
            lb_rules.push(self.lb_rule(r, profile)?);
        }
        let mut inbound_nat_rules = Vec::new();
        for r in &raw.inbound_nat_rule {
            inbound_nat_rules.push(self.inbound_nat_rule(r, profile, &backend_pools)?);
        }
        let mut outbound_rules = Vec::new();
        for r in &raw.outbound_rule {
            outbound_rules.push(self.outbound_rule(r, profile, &outbound_rules)?);
        }
        let mut nat_gateways = Vec::new();
        for g in &raw.nat_gateway {
            nat_gateways.push(self.nat_gateway(
                g,
                profile,
                &nat_gateways,
                &lb_rules,
                &inbound_nat_rules,
                &outbound_rules,
            )?);
        }
        let rules =
            lb_rules.len() + inbound_nat_rules.len() + outbound_rules.len() + nat_gateways.len();
        if rules > usize::from(u16::MAX) {
            let message = format!("{rules} rules: at most {} in one config", u16::MAX);
            return Err((None, message));
        }
        if lb_rules.is_empty()
            && inbound_nat_rules.is_empty()
            && outbound_rules.is_empty()
            && nat_gateways.is_empty()
        {
            let message = "no [[lb_rule]], [[inbound_nat_rule]], [[outbound_rule]] or [[nat_gateway]]: the gateway would drop every packet";
            return Err((None, message.to_string()));
        }
        let config = Config {
            profile,
            time_scale,
            pickup,
            max_flows,
            frontends,
            backend_pools,
            lb_rules,
            inbound_nat_rules,
            outbound_rules,
            nat_gateways,
            source: Source::default(),
        };
        check_families(&raw, &config)?;
        check_snat_totals(&raw.outbound_rule, &config)?;
        Ok(config)
    }

    pub(super) fn frontends(
        &mut self,
        raw: &[S<RawFrontend>],
        profile: &Profile,
    ) -> Result<Vec<Frontend>, Invalid> {
        let mut out: Vec<Frontend> = Vec::new();
        for f in raw {
            let f = f.get_ref();
            let name = unique_name(&mut self.frontends, &f.name, out.len(), "frontend")?;
            let address = ip(&f.address)?;
            if let Some(other) = out.iter().find(|o| o.address == address) {
                return invalid(
                    f.address.span(),
                    format!("address {address} is already frontend \"{}\"'s", other.name),
                );
            }
            let idle_timeout = match (&f.idle_timeout, &profile.frontend_idle) {
                (None, _) => None,
                (Some(t), Some(range)) => Some(timeout(t, range, profile)?),
                (Some(t), None) => {
                    let message = format!(
                        "idle_timeout: a {} frontend has no idle timeout of its own",
                        profile.title
                    );
                    return invalid(t.span(), message);
                }
            };
            out.push(Frontend {
                name,
                address,
                idle_timeout,
            });
        }
        Ok(out)
    }

    pub(super) fn pools(
        &mut self,
        raw: &[S<RawPool>],
        frontends: &[Frontend],
    ) -> Result<Vec<BackendPool>, Invalid> {
        let mut out = Vec::new();
        let mut members_seen: HashMap<String, usize> = HashMap::new();
        let mut addresses: HashMap<IpAddr, String> = HashMap::new();
        for p in raw {
            let p = p.get_ref();
            let name = unique_name(&mut self.pools, &p.name, out.len(), "backend_pool")?;
            if p.members.is_empty() {
                return invalid(
                    p.name.span(),
                    format!("backend_pool \"{name}\" has no members"),
                );
            }
            let mut members = Vec::new();
            for m in &p.members {
                let m = m.get_ref();
                let member_name = unique_name(&mut members_seen, &m.name, 0, "member")?;
                let address = ip(&m.address)?;
                if let Some(f) = frontends.iter().find(|f| f.address == address) {
                    return invalid(
                        m.address.span(),
                        format!(
                            "address {address} is frontend \"{}\"'s; a member needs its own",
                            f.name
                        ),
                    );
                }
                if let Some(other) = addresses.insert(address, member_name.clone()) {
                    return invalid(
                        m.address.span(),
                        format!("address {address} is already member \"{other}\"'s"),
                    );
                }
                members.push(Member {
                    name: member_name,
                    address,
                });
            }
            out.push(BackendPool { name, members });
        }
        Ok(out)
    }

    pub(super) fn lb_rule(
        &mut self,
        r: &S<RawLbRule>,
        profile: &Profile,
    ) -> Result<LbRule, Invalid> {
        let r = r.get_ref();
        offers(profile.rules.inbound(), &r.name, "lb_rule", profile)?;
        let name = self.rule_name(&r.name)?;
        let frontend = self.frontend_ref(&r.frontend)?;
        let backend_pool = self.pool_ref(&r.backend_pool)?;
        let protocol = protocol(r.protocol.as_ref(), Protocols::Tcp)?;
        let frontend_port = port(&r.frontend_port, "frontend_port")?;
        let backend_port = port(&r.backend_port, "backend_port")?;
        let claim = Claim {
            frontend,
            protocol,
            first: frontend_port,
            last: frontend_port,
        };
        let idle = self.inbound_ports_and_idle(
            claim,
            &name,
            (&r.frontend_port.span(), "frontend_port"),
            (r.idle_timeout.as_ref(), r.expiry.as_ref()),
            profile,
        )?;
        Ok(LbRule {
            name,
            frontend,
            protocol,
            frontend_port,
            backend_pool,
            backend_port,
            idle,
        })
    }

    pub(super) fn inbound_nat_rule(
        &mut self,
        r: &S<RawInboundNatRule>,
        profile: &Profile,
        pools: &[BackendPool],
    ) -> Result<InboundNatRule, Invalid> {
        let whole = r.span();
        let r = r.get_ref();
        offers(
            profile.rules.inbound(),
            &r.name,
            "inbound_nat_rule",
            profile,
        )?;
        let name = self.rule_name(&r.name)?;
        let frontend = self.frontend_ref(&r.frontend)?;
        let protocol = protocol(r.protocol.as_ref(), Protocols::Tcp)?;
        let backend_port = port(&r.backend_port, "backend_port")?;
        let (first_port, last_port, members, span, field) = match (
            &r.frontend_port,
            &r.member,
            &r.frontend_port_range,
            &r.backend_pool,
        ) {
            (Some(p), Some(m), None, None) => {
                let port = port(p, "frontend_port")?;
                let member = pools
                    .iter()
                    .flat_map(|pool| &pool.members)
                    .find(|x| &x.name == m.get_ref())
                    .ok_or_else(|| {
                        let known: Vec<&String> = pools
                            .iter()
                            .flat_map(|pool| &pool.members)
                            .map(|x| &x.name)
                            .collect();
                        (
                            Some(m.span()),
                            format!(
                                "member = \"{}\" is no backend pool's member ({})",
                                m.get_ref(),
                                names_list(known.into_iter())
                            ),
                        )
                    })?;
                (port, port, vec![member.clone()], p.span(), "frontend_port")
            }
            (None, None, Some(range), Some(pool)) => {
                let [first, last] = *range.get_ref();
                if first == 0 || last < first {
                    return invalid(range.span(), format!("frontend_port_range = [{first}, {last}]: give [first, last] with 1 ≤ first ≤ last ≤ 65535"));
                }
                let members = &pools[self.pool_ref(pool)?].members;
                if usize::from(last - first) + 1 < members.len() {
                    let message = format!(
                        "frontend_port_range = [{first}, {last}] has {} port(s) for the {} members of backend_pool \"{}\": one port per member",
                        last - first + 1,
                        members.len(),
                        pool.get_ref()
                    );
                    return invalid(range.span(), message);
                }
                (
                    first,
                    last,
                    members.clone(),
                    range.span(),
                    "frontend_port_range",
                )
            }
            _ => {
                let message = format!(
                    "inbound_nat_rule \"{name}\": give either frontend_port and member, or frontend_port_range and backend_pool"
                );
                return invalid(whole, message);
            }
        };
        let claim = Claim {
            frontend,
            protocol,
            first: first_port,
            last: last_port,
        };
        let idle = self.inbound_ports_and_idle(
            claim,
            &name,
            (&span, field),
            (r.idle_timeout.as_ref(), r.expiry.as_ref()),
            profile,
        )?;
        Ok(InboundNatRule {
            name,
            frontend,
            protocol,
            first_port,
            last_port,
            members,
            backend_port,
            idle,
        })
    }

    /// What every inbound rule (`lb_rule`, `inbound_nat_rule`) ends with: its frontend ports
    /// claimed (`at`: where they are written, and as which field), then its idle settings as
    /// written (`idle_timeout`, `expiry`) read against the profile's inbound range. In this
    /// order: a rule with both mistakes is refused for its ports.
    fn inbound_ports_and_idle(
        &mut self,
        claim: Claim,
        rule: &str,
        (span, field): (&Range<usize>, &str),
        (idle_timeout, expiry): (Option<&S<String>>, Option<&S<String>>),
        profile: &Profile,
    ) -> Result<Idle, Invalid> {
        self.claim_ports(claim, rule, span, field)?;
        idle(
            claim.protocol,
            idle_timeout,
            expiry,
            &profile.lb_rule_idle,
            profile,
        )
    }

    /// Claims frontend ports for rule `rule`, refusing an overlap with another rule's.
    pub(super) fn claim_ports(
        &mut self,
        claim: Claim,
        rule: &str,
        span: &Range<usize>,
        field: &str,
    ) -> Result<(), Invalid> {
        let Claim {
            frontend,
            first,
            last,
            ..
        } = claim;
        if let Some((_, other)) = self.claimed.iter().find(|(c, _)| c.overlaps(&claim)) {
            let name = self
                .frontends
                .iter()
                .find(|(_, &i)| i == frontend)
                .map_or("?", |(n, _)| n.as_str());
            let message = if first == last {
                format!("{field}: port {first} of frontend \"{name}\" already belongs to rule \"{other}\"")
            } else {
                format!("{field}: ports {first}–{last} of frontend \"{name}\" overlap rule \"{other}\"'s")
            };
            return invalid(span.clone(), message);
        }
        self.claimed.push((claim, rule.to_string()));
        Ok(())
    }

    pub(super) fn outbound_rule(
        &mut self,
        r: &S<RawOutboundRule>,
        profile: &Profile,
        earlier: &[OutboundRule],
    ) -> Result<OutboundRule, Invalid> {
        let r = r.get_ref();
        offers(profile.rules.outbound(), &r.name, "outbound_rule", profile)?;
        let name = self.rule_name(&r.name)?;
        let frontend = self.frontend_ref(&r.frontend)?;
        let backend_pool = self.pool_ref(&r.backend_pool)?;
        if let Some(other) = earlier.iter().find(|o| o.backend_pool == backend_pool) {
            return invalid(r.backend_pool.span(), format!("backend_pool \"{}\" already has outbound_rule \"{}\"; a pool's outbound connections can follow only one", r.backend_pool.get_ref(), other.name));
        }
        let protocol = protocol(r.protocol.as_ref(), Protocols::All)?;
        let range = &profile.outbound_rule_idle;
        let idle = idle(
            protocol,
            r.idle_timeout.as_ref(),
            r.expiry.as_ref(),
            range,
            profile,
        )
        .map_err(|(span, message)| {
            // Azure LB: above the maximum, say which of Azure's two ranges is enforced.
            let above = r
                .idle_timeout
                .as_ref()
                .and_then(|t| humantime::parse_duration(t.get_ref()).ok())
                .is_some_and(|d| d > range.max);
            match above && profile.name == profile::AZURE_LB.name {
                // After the range: "… range: 4 min to 120 min (Azure's … page's)".
                true => (
                    span,
                    format!("{message} ({})", profile::AZURE_OUTBOUND_MAXIMUM),
                ),
                false => (span, message),
            }
        })?;
        let ports_per_member = ports_per_member(r.ports_per_member.as_ref(), profile)?;
        let time_wait = time_wait(r.time_wait.as_ref(), profile)?;
        Ok(OutboundRule {
            name,
            frontend,
            backend_pool,
            protocol,
            ports_per_member,
            idle,
            time_wait,
        })
    }

    pub(super) fn nat_gateway(
        &mut self,
        g: &S<RawNatGateway>,
        profile: &Profile,
        earlier: &[NatGateway],
        lb_rules: &[LbRule],
        nat_rules: &[InboundNatRule],
        outbound_rules: &[OutboundRule],
    ) -> Result<NatGateway, Invalid> {
        let g = g.get_ref();
        if profile.name != profile::AZURE_LB.name {
            let message = format!("nat_gateway \"{}\": a NAT gateway belongs to the Azure LB model (profile azure-lb); for a NAT gateway alone use profile azure-natgw", g.name.get_ref());
            return invalid(g.name.span(), message);
        }
        let name = self.rule_name(&g.name)?;
        let frontend = self.frontend_ref(&g.frontend)?;
        let used = lb_rules.iter().any(|r| r.frontend == frontend)
            || nat_rules.iter().any(|r| r.frontend == frontend)
            || outbound_rules.iter().any(|r| r.frontend == frontend)
            || earlier.iter().any(|n| n.frontend == frontend);
        if used {
            let message = format!(
                "frontend = \"{}\": a NAT gateway needs a frontend of its own, which no rule uses",
                g.frontend.get_ref()
            );
            return invalid(g.frontend.span(), message);
        }
        let mut backend_pools = Vec::new();
        for pool in g.backend_pools.get_ref() {
            let Some(&i) = self.pools.get(pool) else {
                let message = format!(
                    "backend_pools: \"{pool}\" names no [[backend_pool]] ({})",
                    names_list(self.pools.keys())
                );
                return invalid(g.backend_pools.span(), message);
            };
            if let Some(other) = earlier.iter().find(|n| n.backend_pools.contains(&i)) {
                return invalid(
                    g.backend_pools.span(),
                    format!(
                        "backend_pools: \"{pool}\" is already served by nat_gateway \"{}\"",
                        other.name
                    ),
                );
            }
            backend_pools.push(i);
        }
        let natgw = &profile::AZURE_NATGW;
        let idle = idle(
            Protocols::All,
            g.idle_timeout.as_ref(),
            g.expiry.as_ref(),
            &natgw.outbound_rule_idle,
            natgw,
        )?;
        Ok(NatGateway {
            name,
            frontend,
            backend_pools,
            idle,
        })
    }

    pub(super) fn rule_name(&mut self, name: &S<String>) -> Result<String, Invalid> {
        if self.rules.contains(name.get_ref()) {
            return invalid(
                name.span(),
                format!(
                    "rule name \"{}\" is used twice; rule names must be unique",
                    name.get_ref()
                ),
            );
        }
        self.rules.insert(name.get_ref().clone());
        Ok(name.get_ref().clone())
    }

    pub(super) fn frontend_ref(&self, name: &S<String>) -> Result<usize, Invalid> {
        self.frontends.get(name.get_ref()).copied().ok_or_else(|| {
            (
                Some(name.span()),
                format!(
                    "frontend = \"{}\" names no [[frontend]] ({})",
                    name.get_ref(),
                    names_list(self.frontends.keys())
                ),
            )
        })
    }

    pub(super) fn pool_ref(&self, name: &S<String>) -> Result<usize, Invalid> {
        self.pools.get(name.get_ref()).copied().ok_or_else(|| {
            (
                Some(name.span()),
                format!(
                    "backend_pool = \"{}\" names no [[backend_pool]] ({})",
                    name.get_ref(),
                    names_list(self.pools.keys())
                ),
            )
        })
    }
}
