//! Checks of single fields and of totals across rules, which the validator calls: names,
//! addresses and families, ports, protocols, timeouts against the profile's ranges.

use super::*;

pub(super) fn unique_name(
    seen: &mut HashMap<String, usize>,
    name: &S<String>,
    index: usize,
    what: &str,
) -> Result<String, Invalid> {
    let n = name.get_ref();
    if n.is_empty() {
        return invalid(name.span(), format!("{what} name is empty"));
    }
    if seen.insert(n.clone(), index).is_some() {
        return invalid(name.span(), format!("{what} name \"{n}\" is used twice"));
    }
    Ok(n.clone())
}

pub(super) fn ip(address: &S<String>) -> Result<IpAddr, Invalid> {
    let a = address.get_ref();
    let ip: IpAddr = a.parse().or_else(|_| {
        invalid(
            address.span(),
            format!("address = \"{a}\" is not an IPv4 or IPv6 address"),
        )
    })?;
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || broadcast || ip.is_multicast() || ip.is_loopback() {
        return invalid(address.span(), format!("address = \"{a}\" cannot be a host's address (unspecified, broadcast, multicast or loopback)"));
    }
    Ok(ip)
}

pub(super) fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Refuses a rule whose frontend and members are not all of one address family: idlegate
/// translates addresses, never families (no NAT64).
pub(super) fn same_family<'a>(
    kind: &str,
    rule: &str,
    frontend: &Frontend,
    members: impl IntoIterator<Item = &'a Member>,
    span: Range<usize>,
) -> Result<(), Invalid> {
    match members
        .into_iter()
        .find(|m| m.address.is_ipv4() != frontend.address.is_ipv4())
    {
        None => Ok(()),
        Some(m) => invalid(
            span,
            format!(
                "{kind} \"{rule}\": frontend \"{}\" is {} but member \"{}\" ({}) is {}; a rule's frontend and members must be of one address family",
                frontend.name,
                family(frontend.address),
                m.name,
                m.address,
                family(m.address)
            ),
        ),
    }
}

/// Every rule's frontend and members are of one family (see [`same_family`]).
pub(super) fn check_families(raw: &RawConfig, c: &Config) -> Result<(), Invalid> {
    let pool = |i: usize| &c.backend_pools[i].members;
    for (r, raw) in c.lb_rules.iter().zip(&raw.lb_rule) {
        let span = raw.get_ref().backend_pool.span();
        same_family(
            "lb_rule",
            &r.name,
            &c.frontends[r.frontend],
            pool(r.backend_pool),
            span,
        )?;
    }
    for (r, raw) in c.inbound_nat_rules.iter().zip(&raw.inbound_nat_rule) {
        same_family(
            "inbound_nat_rule",
            &r.name,
            &c.frontends[r.frontend],
            &r.members,
            raw.span(),
        )?;
    }
    for (r, raw) in c.outbound_rules.iter().zip(&raw.outbound_rule) {
        let span = raw.get_ref().backend_pool.span();
        same_family(
            "outbound_rule",
            &r.name,
            &c.frontends[r.frontend],
            pool(r.backend_pool),
            span,
        )?;
    }
    for (g, raw) in c.nat_gateways.iter().zip(&raw.nat_gateway) {
        let members = g.backend_pools.iter().flat_map(|&p| pool(p));
        let span = raw.get_ref().backend_pools.span();
        same_family(
            "nat_gateway",
            &g.name,
            &c.frontends[g.frontend],
            members,
            span,
        )?;
    }
    Ok(())
}

/// Refuses a kind of rule the profile's box does not have.
pub(super) fn offers(
    has: bool,
    name: &S<String>,
    kind: &str,
    profile: &Profile,
) -> Result<(), Invalid> {
    if has {
        return Ok(());
    }
    let what = if profile.rules.inbound() {
        "only inbound rules"
    } else {
        "only outbound rules"
    };
    invalid(
        name.span(),
        format!(
            "{kind} \"{}\": {} (profile {}) has {what}",
            name.get_ref(),
            profile.title,
            profile.name
        ),
    )
}

pub(super) fn ports_per_member(p: Option<&S<u32>>, profile: &Profile) -> Result<u16, Invalid> {
    let policy = &profile.snat;
    let Some(p) = p else {
        return Ok(policy.ports_per_member);
    };
    if policy.allocation.on_demand() {
        let message = format!(
            "ports_per_member: {} lends ports on demand from the frontend's range; it takes no ports_per_member",
            profile.title
        );
        return invalid(p.span(), message);
    }
    let n = *p.get_ref();
    let step = u32::from(policy.ports_per_member_step);
    if n == 0 || n % step != 0 || n > policy.ports_per_frontend {
        let message = format!(
            "ports_per_member = {n}: {} allocates SNAT ports in multiples of {step}, from {step} to {}",
            profile.title, policy.ports_per_frontend
        );
        return invalid(p.span(), message);
    }
    Ok(n as u16)
}

/// All outbound rules on one frontend together may lend at most the profile's ports per
/// frontend IP, and no more than its port range holds besides its LB rules' ports.
pub(super) fn check_snat_totals(
    raw: &[S<RawOutboundRule>],
    config: &Config,
) -> Result<(), Invalid> {
    let mut totals = vec![0u32; config.frontends.len()];
    if config.profile.snat.allocation.on_demand() {
        return Ok(());
    }
    for (raw, rule) in raw.iter().zip(&config.outbound_rules) {
        let total = &mut totals[rule.frontend];
        *total += u32::from(rule.ports_per_member)
            * config.backend_pools[rule.backend_pool].members.len() as u32;
        let free = config.snat_port_candidates(rule.frontend).count() as u32;
        let room = free.min(config.profile.snat.ports_per_frontend);
        if *total > room {
            let frontend = &config.frontends[rule.frontend].name;
            let span = raw
                .get_ref()
                .ports_per_member
                .as_ref()
                .map_or(raw.get_ref().name.span(), |p| p.span());
            let message = format!(
                "outbound rules on frontend \"{frontend}\" need {} SNAT ports up to rule \"{}\" (ports_per_member × members); {} allows at most {room} on it",
                *total, rule.name, config.profile.title
            );
            return invalid(span, message);
        }
    }
    Ok(())
}

/// The first port SNAT lends: below it are the well-known and registered ports of the gateway.
pub const SNAT_PORTS_FROM: u16 = 1024;

pub(super) fn port(p: &S<u16>, field: &str) -> Result<u16, Invalid> {
    match *p.get_ref() {
        0 => invalid(p.span(), format!("{field} = 0: must be 1–65535")),
        n => Ok(n),
    }
}

/// UDP flows live the profile's UDP timeout and end silently: a UDP-only rule's own
/// `idle_timeout` or `expiry` would do nothing, so it is refused.
pub(super) fn udp_takes_no_idle_settings(
    protocol: Protocols,
    timeout: Option<&S<String>>,
    expiry: Option<&S<String>>,
    profile: &Profile,
) -> Result<(), Invalid> {
    if protocol != Protocols::Udp {
        return Ok(());
    }
    let udp = human(profile.udp.replied);
    if let Some(t) = timeout {
        return invalid(t.span(), format!("idle_timeout: a UDP rule's flows live {}'s UDP timeout ({udp}); it takes no idle_timeout", profile.title));
    }
    if let Some(e) = expiry {
        return invalid(
            e.span(),
            "expiry: UDP flows always end silently; a UDP rule takes no expiry",
        );
    }
    Ok(())
}

/// A rule's `protocol`; `default` when it names none.
pub(super) fn protocol(p: Option<&S<String>>, default: Protocols) -> Result<Protocols, Invalid> {
    let Some(p) = p else { return Ok(default) };
    match p.get_ref().as_str() {
        "tcp" => Ok(Protocols::Tcp),
        "udp" => Ok(Protocols::Udp),
        "all" => Ok(Protocols::All),
        other => invalid(
            p.span(),
            format!("protocol = \"{other}\": must be one of \"tcp\", \"udp\", \"all\""),
        ),
    }
}

/// A rule's idle settings, or the profile's defaults. A UDP-only rule takes none (see
/// [`udp_takes_no_idle_settings`]).
pub(super) fn idle(
    protocol: Protocols,
    timeout_setting: Option<&S<String>>,
    expiry: Option<&S<String>>,
    range: &TimeoutRange,
    profile: &Profile,
) -> Result<Idle, Invalid> {
    udp_takes_no_idle_settings(protocol, timeout_setting, expiry, profile)?;
    let (timeout, timeout_from) = match timeout_setting {
        None => (range.default, TimeoutFrom::ProfileDefault),
        Some(t) => (timeout(t, range, profile)?, TimeoutFrom::Rule),
    };
    let expiry = match expiry {
        None => profile.default_expiry,
        Some(e) => {
            let expiry: Expiry = e
                .get_ref()
                .parse()
                .or_else(|err| invalid(e.span(), format!("expiry = \"{}\": {err}", e.get_ref())))?;
            if !profile.accepts_expiry(expiry) {
                return invalid(e.span(), expiry_refused(expiry, profile));
            }
            expiry
        }
    };
    Ok(Idle {
        timeout,
        timeout_from,
        expiry,
        expiry_from: ExpiryFrom::Config,
    })
}

/// Why `expiry` is refused on `profile`, whose expiry is fixed: what its box does instead.
fn expiry_refused(expiry: Expiry, profile: &Profile) -> String {
    let default = profile.default_expiry;
    format!(
        "expiry = \"{expiry}\": {} cannot do that; at expiry it {}, and no setting changes it (leave expiry out, or write \"{default}\")",
        profile.title,
        profile.at_expiry()
    )
}

/// An `idle_timeout` setting, parsed and checked against the profile's range.
pub(super) fn timeout(
    t: &S<String>,
    range: &TimeoutRange,
    profile: &Profile,
) -> Result<Duration, Invalid> {
    let text = t.get_ref();
    let d = humantime::parse_duration(text).or_else(|_| {
        invalid(t.span(), format!("idle_timeout = \"{text}\" is not a duration (write e.g. \"4m\", \"30s\", \"1h 30m\")"))
    })?;
    if range.min == range.max && d != range.min {
        let message = format!(
            "idle_timeout = {text}: {}'s idle timeout is fixed at {}",
            profile.title,
            human(range.min)
        );
        return invalid(t.span(), message);
    }
    if d < range.min || d > range.max {
        let message = format!(
            "idle_timeout = {text} is outside {}'s range: {} to {}",
            profile.title,
            human(range.min),
            human(range.max)
        );
        return invalid(t.span(), message);
    }
    Ok(d)
}

/// An outbound rule's `time_wait`: refused where the profile's TIME_WAIT cannot be set, else
/// parsed and checked against its range.
pub(super) fn time_wait(
    t: Option<&S<String>>,
    profile: &Profile,
) -> Result<Option<Duration>, Invalid> {
    let Some(t) = t else { return Ok(None) };
    let text = t.get_ref();
    let Some(range) = profile.time_wait_range else {
        let settable: Vec<&str> = crate::model::profile::ALL
            .iter()
            .filter(|p| p.time_wait_range.is_some())
            .map(|p| p.name)
            .collect();
        let message = format!(
            "time_wait = \"{text}\": {}'s TIME_WAIT is not configurable (it is {}); only {} lets a rule set it",
            profile.title,
            human(profile.tcp.time_wait),
            settable.join(", ")
        );
        return invalid(t.span(), message);
    };
    let d = humantime::parse_duration(text).or_else(|_| {
        invalid(
            t.span(),
            format!("time_wait = \"{text}\" is not a duration (write e.g. \"30s\", \"2m\")"),
        )
    })?;
    if d < range.min || d > range.max {
        let message = format!(
            "time_wait = {text} is outside {}'s TIME_WAIT range of {}–{}",
            profile.title,
            human(range.min),
            human(range.max)
        );
        return invalid(t.span(), message);
    }
    Ok(Some(d))
}
