//! The gateway's configuration: a TOML file named after Azure's resource model.
//!
//! [`Config::from_toml`] parses and validates in one step and returns either a [`Config`] the
//! engine can run as is, or the first [`ConfigError`], which names the file, line and field
//! and says what is allowed. Timeouts are checked against the profile's ranges *before*
//! `time_scale` divides them; [`Config::scaled`] gives the timer the engine actually runs.
//!
//! ```toml
//! profile = "azure-lb"      # defaults and allowed ranges
//! time_scale = 60           # divide every timer by 60: 4 min become 4 s
//! max_flows = 1048576       # new flows past this are refused (the default)
//! [[frontend]]
//! name = "public"
//! address = "203.0.113.10"
//! [[backend_pool]]
//! name = "vms"
//! members = [{ name = "vm1", address = "192.0.2.11" }]
//! [[lb_rule]]
//! name = "app"
//! frontend = "public"
//! protocol = "tcp"
//! frontend_port = 7000
//! backend_pool = "vms"
//! backend_port = 7000
//! idle_timeout = "4m"
//! expiry = "silent"         # or "reset", "reset-on-next"
//! [[outbound_rule]]
//! name = "egress"
//! frontend = "public"
//! backend_pool = "vms"
//! ```

use crate::model::expiry::Expiry;
use crate::model::profile::{self, Pickup, Profile, TimeoutRange};
use crate::wire::packet::Protocol;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub profile: &'static Profile,
    /// Every timer is divided by this (≥ 1).
    pub time_scale: u32,
    /// Which TCP segments open a flow: the profile's, or `loose_pickup` where the profile
    /// lets a config choose.
    pub pickup: Pickup,
    /// Flows the gateway holds at most; a new flow past it is refused and counted
    /// (`table-full`), established ones are unaffected.
    pub max_flows: usize,
    pub frontends: Vec<Frontend>,
    pub backend_pools: Vec<BackendPool>,
    pub lb_rules: Vec<LbRule>,
    pub inbound_nat_rules: Vec<InboundNatRule>,
    pub outbound_rules: Vec<OutboundRule>,
    pub nat_gateways: Vec<NatGateway>,
}

/// An Azure NAT gateway: the pools it serves leave through its own frontend, whatever their
/// outbound rules say (seed 002: "a NAT gateway will always take precedence over load balancer
/// outbound rules"). It runs with the `azure-natgw` profile's timers and SNAT policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatGateway {
    pub name: String,
    pub frontend: usize,
    pub backend_pools: Vec<usize>,
    pub idle: Idle,
}

/// A public address of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub name: String,
    /// IPv4 or IPv6; a rule's frontend and members are of one family.
    pub address: IpAddr,
    /// The frontend's own idle timeout for inbound flows, if it sets one (unscaled).
    pub idle_timeout: Option<Duration>,
}

/// A set of inside hosts that rules balance to and translate for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPool {
    pub name: String,
    pub members: Vec<Member>,
}

/// One inside host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub address: IpAddr,
}

/// How long an established flow may stay idle, and what happens when it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    /// Unscaled, as written in the config (or the profile's default).
    pub timeout: Duration,
    /// Whether the rule sets `timeout` or takes the profile's default.
    pub timeout_from: TimeoutFrom,
    pub expiry: Expiry,
}

/// Where a rule's own idle timeout comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutFrom {
    Rule,
    ProfileDefault,
}

/// The transport protocols a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    Tcp,
    Udp,
    /// TCP and UDP.
    All,
}

impl Protocols {
    pub fn matches(self, protocol: Protocol) -> bool {
        matches!(
            (self, protocol),
            (Protocols::All, _) | (Protocols::Tcp, Protocol::Tcp) | (Protocols::Udp, Protocol::Udp)
        )
    }

    /// Whether two rules with these protocols could claim the same packets.
    pub fn overlaps(self, other: Protocols) -> bool {
        self == Protocols::All || other == Protocols::All || self == other
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocols::Tcp => "tcp",
            Protocols::Udp => "udp",
            Protocols::All => "all",
        }
    }
}

/// Inbound load balancing: `frontend:frontend_port` → a pool member's `backend_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbRule {
    pub name: String,
    /// Index into [`Config::frontends`].
    pub frontend: usize,
    pub protocol: Protocols,
    pub frontend_port: u16,
    /// Index into [`Config::backend_pools`].
    pub backend_pool: usize,
    pub backend_port: u16,
    pub idle: Idle,
}

/// Inbound NAT: frontend ports mapped one to one onto members, `first_port` onto the first.
/// The single form (`frontend_port` and `member`) is a range of one; the range form
/// (`frontend_port_range` and `backend_pool`) gives each member of the pool, in order, the next
/// port of the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundNatRule {
    pub name: String,
    pub frontend: usize,
    pub protocol: Protocols,
    pub first_port: u16,
    /// The last port the rule claims on the frontend (a range may be longer than the pool).
    pub last_port: u16,
    pub members: Vec<Member>,
    pub backend_port: u16,
    pub idle: Idle,
}

/// Outbound SNAT: the pool's connections leave from the frontend address and a gateway port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    pub name: String,
    pub frontend: usize,
    pub backend_pool: usize,
    pub protocol: Protocols,
    /// SNAT ports each member of the pool owns on the frontend.
    pub ports_per_member: u16,
    pub idle: Idle,
}

impl Config {
    /// The timer the engine runs for a configured duration: divided by `time_scale`.
    pub fn scaled(&self, d: Duration) -> Duration {
        d / self.time_scale
    }

    /// The ports of `frontend` that inbound rules (LB and inbound NAT) claim.
    pub fn inbound_ports(
        &self,
        frontend: usize,
    ) -> impl Iterator<Item = std::ops::RangeInclusive<u16>> + '_ {
        let lb = self
            .lb_rules
            .iter()
            .filter(move |r| r.frontend == frontend)
            .map(|r| r.frontend_port..=r.frontend_port);
        let nat = self
            .inbound_nat_rules
            .iter()
            .filter(move |r| r.frontend == frontend)
            .map(|r| r.first_port..=r.last_port);
        lb.chain(nat)
    }

    /// The ports of `frontend` SNAT may lend, in order: from [`SNAT_PORTS_FROM`] up, less the
    /// ports inbound rules claim.
    pub fn snat_port_candidates(&self, frontend: usize) -> impl Iterator<Item = u16> + '_ {
        let claimed: Vec<std::ops::RangeInclusive<u16>> = self.inbound_ports(frontend).collect();
        (SNAT_PORTS_FROM..=u16::MAX).filter(move |p| !claimed.iter().any(|r| r.contains(p)))
    }

    /// Parses and validates `text`; `file` names it in error messages.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let at = |span: Option<Range<usize>>, message: String| {
            ConfigError::at(file, text, span, message)
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = match e.span().and_then(|s| setting_at(text, s.start)) {
                Some(setting) => format!("{setting}: {}", e.message()),
                None => e.message().to_string(),
            };
            at(e.span(), message)
        })?;
        Validator::default()
            .validate(raw)
            .map_err(|(span, message)| at(span, message))
    }
}

/// A configuration mistake, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.located())]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the position is unknown.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ConfigError {
    /// `file:line:column: message`, or `file: message` for a mistake of the whole file.
    fn located(&self) -> String {
        match self.line {
            0 => format!("{}: {}", self.file, self.message),
            line => format!("{}:{line}:{}: {}", self.file, self.column, self.message),
        }
    }

    fn at(file: &str, text: &str, span: Option<Range<usize>>, message: String) -> ConfigError {
        let (line, column) = span.map_or((0, 0), |s| line_column(text, s.start));
        ConfigError {
            file: file.to_string(),
            line,
            column,
            message,
        }
    }
}

/// The `key = value` line around `offset`, to name the field in a TOML syntax or type error.
fn setting_at(text: &str, offset: usize) -> Option<&str> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?.trim();
    (line.contains('=') && line.len() <= 60).then_some(line)
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// No timer may be scaled below this: a flow must outlive its own handshake.
pub const MIN_SCALED_TIMER: Duration = Duration::from_millis(10);

fn shortest_timer(profile: &Profile) -> Duration {
    profile
        .tcp
        .shortest()
        .min(profile.udp.unreplied)
        .min(profile.udp.replied)
        .min(profile.lb_rule_idle.min)
        .min(profile.outbound_rule_idle.min)
}

/// Flows a gateway holds unless the config says `max_flows`: 1 Mi, about 40 to 100 MB.
pub const DEFAULT_MAX_FLOWS: usize = 1 << 20;
/// The most `max_flows` may be: the flow table numbers its flows in 31 bits.
pub const MAX_MAX_FLOWS: usize = 1 << 31;

/// The largest `time_scale` that keeps every timer of `profile` at or above [`MIN_SCALED_TIMER`].
pub fn max_time_scale(profile: &Profile) -> u32 {
    u32::try_from(shortest_timer(profile).as_millis() / MIN_SCALED_TIMER.as_millis())
        .unwrap_or(u32::MAX)
}

/// A duration as people write it in these messages: "5 days", "24 h", "4 min", "30 s",
/// "500 ms".
pub fn human(d: Duration) -> String {
    const HOUR: u128 = 3_600_000;
    let ms = d.as_millis();
    if ms.is_multiple_of(24 * HOUR) && ms >= 48 * HOUR {
        format!("{} days", ms / (24 * HOUR))
    } else if ms.is_multiple_of(HOUR) && ms >= 3 * HOUR {
        format!("{} h", ms / HOUR)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

// ---- the file as written -------------------------------------------------------------------

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    profile: Option<S<String>>,
    time_scale: Option<S<u32>>,
    loose_pickup: Option<S<bool>>,
    max_flows: Option<S<u64>>,
    #[serde(default)]
    frontend: Vec<S<RawFrontend>>,
    #[serde(default)]
    backend_pool: Vec<S<RawPool>>,
    #[serde(default)]
    lb_rule: Vec<S<RawLbRule>>,
    #[serde(default)]
    inbound_nat_rule: Vec<S<RawInboundNatRule>>,
    #[serde(default)]
    outbound_rule: Vec<S<RawOutboundRule>>,
    #[serde(default)]
    nat_gateway: Vec<S<RawNatGateway>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNatGateway {
    name: S<String>,
    frontend: S<String>,
    backend_pools: S<Vec<String>>,
    idle_timeout: Option<S<String>>,
    expiry: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrontend {
    name: S<String>,
    address: S<String>,
    idle_timeout: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: S<String>,
    members: Vec<S<RawMember>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: S<String>,
    address: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLbRule {
    name: S<String>,
    frontend: S<String>,
    protocol: Option<S<String>>,
    frontend_port: S<u16>,
    backend_pool: S<String>,
    backend_port: S<u16>,
    idle_timeout: Option<S<String>>,
    expiry: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInboundNatRule {
    name: S<String>,
    frontend: S<String>,
    protocol: Option<S<String>>,
    frontend_port: Option<S<u16>>,
    member: Option<S<String>>,
    frontend_port_range: Option<S<[u16; 2]>>,
    backend_pool: Option<S<String>>,
    backend_port: S<u16>,
    idle_timeout: Option<S<String>>,
    expiry: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutboundRule {
    name: S<String>,
    frontend: S<String>,
    backend_pool: S<String>,
    protocol: Option<S<String>>,
    ports_per_member: Option<S<u32>>,
    idle_timeout: Option<S<String>>,
    expiry: Option<S<String>>,
}

// ---- validation ----------------------------------------------------------------------------

/// A mistake: where it is (`None` for the whole file) and what it is.
type Invalid = (Option<Range<usize>>, String);

/// Frontend ports `first..=last` of `frontend`, for `protocol`.
#[derive(Debug, Clone, Copy)]
struct Claim {
    frontend: usize,
    protocol: Protocols,
    first: u16,
    last: u16,
}

impl Claim {
    fn overlaps(&self, other: &Claim) -> bool {
        self.frontend == other.frontend
            && self.protocol.overlaps(other.protocol)
            && self.first <= other.last
            && other.first <= self.last
    }
}

#[derive(Default)]
struct Validator {
    frontends: HashMap<String, usize>,
    pools: HashMap<String, usize>,
    rules: std::collections::HashSet<String>,
    /// Frontend ports claimed by inbound rules, and by which.
    claimed: Vec<(Claim, String)>,
}

fn invalid<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Invalid> {
    Err((Some(span), message.into()))
}

fn names_list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let mut v: Vec<&str> = names.map(String::as_str).collect();
    v.sort_unstable();
    if v.is_empty() {
        "none is defined".to_string()
    } else {
        format!("defined: {}", v.join(", "))
    }
}

impl Validator {
    fn validate(mut self, raw: RawConfig) -> Result<Config, Invalid> {
        let profile = match &raw.profile {
            None => profile::default_profile(),
            Some(p) => profile::find(p.get_ref()).ok_or_else(|| {
                let known: Vec<&str> = profile::ALL.iter().map(|p| p.name).collect();
                (
                    Some(p.span()),
                    format!(
                        "profile = \"{}\" is not a known profile; known: {}",
                        p.get_ref(),
                        known.join(", ")
                    ),
                )
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
        };
        check_families(&raw, &config)?;
        check_snat_totals(&raw.outbound_rule, &config)?;
        Ok(config)
    }

    fn frontends(
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

    fn pools(
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

    fn lb_rule(&mut self, r: &S<RawLbRule>, profile: &Profile) -> Result<LbRule, Invalid> {
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
        self.claim_ports(claim, &name, &r.frontend_port.span(), "frontend_port")?;
        let idle = idle(
            protocol,
            r.idle_timeout.as_ref(),
            r.expiry.as_ref(),
            &profile.lb_rule_idle,
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

    fn inbound_nat_rule(
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
        self.claim_ports(claim, &name, &span, field)?;
        let idle = idle(
            protocol,
            r.idle_timeout.as_ref(),
            r.expiry.as_ref(),
            &profile.lb_rule_idle,
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

    /// Claims frontend ports for rule `rule`, refusing an overlap with another rule's.
    fn claim_ports(
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

    fn outbound_rule(
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
        let idle = idle(
            protocol,
            r.idle_timeout.as_ref(),
            r.expiry.as_ref(),
            &profile.outbound_rule_idle,
            profile,
        )?;
        let ports_per_member = ports_per_member(r.ports_per_member.as_ref(), profile)?;
        Ok(OutboundRule {
            name,
            frontend,
            backend_pool,
            protocol,
            ports_per_member,
            idle,
        })
    }

    fn nat_gateway(
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

    fn rule_name(&mut self, name: &S<String>) -> Result<String, Invalid> {
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

    fn frontend_ref(&self, name: &S<String>) -> Result<usize, Invalid> {
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

    fn pool_ref(&self, name: &S<String>) -> Result<usize, Invalid> {
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

fn unique_name(
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

fn ip(address: &S<String>) -> Result<IpAddr, Invalid> {
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

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Refuses a rule whose frontend and members are not all of one address family: idlegate
/// translates addresses, never families (no NAT64).
fn same_family<'a>(
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
fn check_families(raw: &RawConfig, c: &Config) -> Result<(), Invalid> {
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
fn offers(has: bool, name: &S<String>, kind: &str, profile: &Profile) -> Result<(), Invalid> {
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

fn ports_per_member(p: Option<&S<u32>>, profile: &Profile) -> Result<u16, Invalid> {
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
fn check_snat_totals(raw: &[S<RawOutboundRule>], config: &Config) -> Result<(), Invalid> {
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

fn port(p: &S<u16>, field: &str) -> Result<u16, Invalid> {
    match *p.get_ref() {
        0 => invalid(p.span(), format!("{field} = 0: must be 1–65535")),
        n => Ok(n),
    }
}

/// UDP flows live the profile's UDP timeout and end silently: a UDP-only rule's own
/// `idle_timeout` or `expiry` would do nothing, so it is refused.
fn udp_takes_no_idle_settings(
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
fn protocol(p: Option<&S<String>>, default: Protocols) -> Result<Protocols, Invalid> {
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
fn idle(
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
        Some(e) => e
            .get_ref()
            .parse()
            .or_else(|err| invalid(e.span(), format!("expiry = \"{}\": {err}", e.get_ref())))?,
    };
    Ok(Idle {
        timeout,
        timeout_from,
        expiry,
    })
}

/// An `idle_timeout` setting, parsed and checked against the profile's range.
fn timeout(t: &S<String>, range: &TimeoutRange, profile: &Profile) -> Result<Duration, Invalid> {
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
    if d < range.min {
        return invalid(
            t.span(),
            format!(
                "idle_timeout = {text} is below {}'s minimum of {}",
                profile.title,
                human(range.min)
            ),
        );
    }
    if d > range.max {
        return invalid(
            t.span(),
            format!(
                "idle_timeout = {text} is above {}'s maximum of {}",
                profile.title,
                human(range.max)
            ),
        );
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"profile = "azure-lb"
time_scale = 60
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }, { name = "vm2", address = "192.0.2.12" }]
[[lb_rule]]
name = "app"
frontend = "public"
protocol = "tcp"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
idle_timeout = "4m"
expiry = "silent"
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
idle_timeout = "4m"
expiry = "silent"
"#;

    #[test]
    fn the_documented_example_is_valid_and_scaled() {
        let c = Config::from_toml(VALID, "gw.toml").unwrap();
        assert_eq!(c.profile.name, "azure-lb");
        assert_eq!(c.backend_pools[0].members.len(), 2);
        let rule = &c.lb_rules[0];
        assert_eq!(
            (rule.frontend_port, rule.backend_port, rule.idle.expiry),
            (7000, 7000, Expiry::Silent)
        );
        assert_eq!(c.scaled(rule.idle.timeout), Duration::from_secs(4));
        assert_eq!(c.outbound_rules[0].name, "egress");
    }

    #[test]
    fn omitted_settings_take_the_profiles_defaults() {
        let text = VALID
            .replace("idle_timeout = \"4m\"\n", "")
            .replace("expiry = \"silent\"\n", "");
        let c = Config::from_toml(&text, "gw.toml").unwrap();
        // Azure LB: 4 min, silent drop by default (seed 002).
        assert_eq!(
            c.lb_rules[0].idle,
            Idle {
                timeout: Duration::from_secs(240),
                timeout_from: TimeoutFrom::ProfileDefault,
                expiry: Expiry::Silent
            }
        );
        // Azure's default: 1,024 SNAT ports per member.
        assert_eq!(c.outbound_rules[0].ports_per_member, 1024);
    }

    /// Each kind of mistake, the line it is on, and the words of its message.
    #[test]
    #[rustfmt::skip]
    fn each_mistake_is_refused_with_file_line_and_field() {
        let cases: &[(&str, &str, usize, &str)] = &[
            ("idle_timeout = \"4m\"", "idle_timeout = \"2m\"", 16, "idle_timeout = 2m is below Azure LB's minimum of 4 min"),
            ("idle_timeout = \"4m\"", "idle_timeout = \"101m\"", 16, "idle_timeout = 101m is above Azure LB's maximum of 100 min"),
            ("idle_timeout = \"4m\"", "idle_timeout = \"4 parsecs\"", 16, "is not a duration"),
            ("expiry = \"silent\"", "expiry = \"rst\"", 17, "expiry = \"rst\": must be one of \"silent\", \"reset\", \"reset-on-next\""),
            ("profile = \"azure-lb\"", "profile = \"azure-lbb\"", 1, "profile = \"azure-lbb\" is not a known profile; known: azure-lb"),
            ("time_scale = 60", "time_scale = 0", 2, "time_scale = 0: must be at least 1"),
            ("time_scale = 60", "time_scale = 60\nmax_flows = 0", 3, "max_flows = 0: from 1 to 2147483648"),
            ("time_scale = 60", "time_scale = 60\nmax_flows = 2147483649", 3, "max_flows = 2147483649: from 1 to 2147483648"),
            ("time_scale = 60", "time_scale = 60\nloose_pickup = true", 3, "loose_pickup: Azure LB (profile azure-lb) has no such setting; it is Linux conntrack's"),
            ("time_scale = 60", "time_scale = 60\nloose_pickup = 1", 3, "loose_pickup"),
            ("time_scale = 60", "time_scale = -1", 2, "time_scale"),
            ("time_scale = 60", "time_scale = 3001", 2, "time_scale = 3001: at most 3000 with profile azure-lb, so that no timer (the shortest is 30 s) runs under 10 ms"),
            ("address = \"203.0.113.10\"", "address = \"203.0.113.300\"", 5, "address = \"203.0.113.300\" is not an IPv4 or IPv6 address"),
            ("address = \"192.0.2.12\"", "address = \"fd00::12\"", 14, "lb_rule \"app\": frontend \"public\" is IPv4 but member \"vm2\" (fd00::12) is IPv6; a rule's frontend and members must be of one address family"),
            ("address = \"203.0.113.10\"", "address = \"ff02::1\"", 5, "cannot be a host's address"),
            ("frontend = \"public\"\nprotocol", "frontend = \"pub\"\nprotocol", 11, "frontend = \"pub\" names no [[frontend]] (defined: public)"),
            ("backend_pool = \"vms\"\nbackend_port", "backend_pool = \"vm\"\nbackend_port", 14, "backend_pool = \"vm\" names no [[backend_pool]] (defined: vms)"),
            ("protocol = \"tcp\"", "protocol = \"sctp\"", 12, "protocol = \"sctp\": must be one of \"tcp\", \"udp\", \"all\""),
            ("frontend_port = 7000", "frontend_port = 70000", 13, "frontend_port"),
            ("frontend_port = 7000", "frontend_port = 0", 13, "frontend_port = 0: must be 1–65535"),
            ("idle_timeout = \"4m\"\nexpiry = \"silent\"\n[[outbound", "idel_timeout = \"4m\"\nexpiry = \"silent\"\n[[outbound", 16, "unknown field `idel_timeout`"),
            ("{ name = \"vm2\", address = \"192.0.2.12\" }", "{ name = \"vm1\", address = \"192.0.2.12\" }", 8, "member name \"vm1\" is used twice"),
            ("{ name = \"vm2\", address = \"192.0.2.12\" }", "{ name = \"vm2\", address = \"192.0.2.11\" }", 8, "address 192.0.2.11 is already member \"vm1\"'s"),
            ("{ name = \"vm2\", address = \"192.0.2.12\" }", "{ name = \"vm2\", address = \"203.0.113.10\" }", 8, "is frontend \"public\"'s"),
            ("name = \"egress\"", "name = \"app\"", 19, "rule name \"app\" is used twice"),
            ("time_scale = 60", "time_scale = 60\nbogus = 1", 3, "unknown field `bogus`"),
            ("name = \"egress\"", "name = \"egress\"\nports_per_member = 12", 20, "ports_per_member = 12: Azure LB allocates SNAT ports in multiples of 8, from 8 to 64000"),
            ("name = \"egress\"", "name = \"egress\"\nports_per_member = 40000", 20, "outbound rules on frontend \"public\" need 80000 SNAT ports up to rule \"egress\" (ports_per_member × members); Azure LB allows at most 64000 on it"),
        ];
        for (from, to, line, words) in cases {
            assert!(VALID.contains(from), "case {to:?}: base text lacks {from:?}");
            let text = VALID.replacen(from, to, 1);
            let err = Config::from_toml(&text, "gw.toml").expect_err(to);
            assert_eq!(err.file, "gw.toml");
            assert_eq!(err.line, *line, "case {to:?}: {err}");
            assert!(err.message.contains(words), "case {to:?}: got {err}");
            assert!(err.to_string().starts_with(&format!("gw.toml:{line}:")), "{err}");
        }
    }

    /// Inbound NAT rule mistakes, each with its message and line.
    #[test]
    #[rustfmt::skip]
    fn each_inbound_nat_rule_mistake_is_refused() {
        let head = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n[[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }, { name = \"vm2\", address = \"192.0.2.12\" }]\n[[lb_rule]]\nname = \"app\"\nfrontend = \"public\"\nfrontend_port = 7000\nbackend_pool = \"vms\"\nbackend_port = 7000\n[[inbound_nat_rule]]\nname = \"nat\"\nfrontend = \"public\"\nbackend_port = 22\n";
        let cases: &[(&str, usize, &str)] = &[
            ("frontend_port = 50001\nmember = \"vm3\"\n", 18, "member = \"vm3\" is no backend pool's member (defined: vm1, vm2)"),
            ("frontend_port = 7000\nmember = \"vm1\"\n", 17, "frontend_port: port 7000 of frontend \"public\" already belongs to rule \"app\""),
            ("frontend_port_range = [6990, 7010]\nbackend_pool = \"vms\"\n", 17, "ports 6990–7010 of frontend \"public\" overlap rule \"app\"'s"),
            ("frontend_port_range = [50000, 50000]\nbackend_pool = \"vms\"\n", 17, "has 1 port(s) for the 2 members of backend_pool \"vms\": one port per member"),
            ("frontend_port_range = [50010, 50000]\nbackend_pool = \"vms\"\n", 17, "give [first, last] with 1 ≤ first ≤ last ≤ 65535"),
            ("frontend_port = 50001\nbackend_pool = \"vms\"\n", 13, "give either frontend_port and member, or frontend_port_range and backend_pool"),
        ];
        for (tail, line, words) in cases {
            let err = Config::from_toml(&format!("{head}{tail}"), "nat.toml").expect_err(tail);
            assert_eq!(err.line, *line, "{tail:?}: {err}");
            assert!(err.message.contains(words), "{tail:?}: {err}");
        }
    }

    #[test]
    fn tcp_and_udp_rules_may_share_a_port_but_all_claims_both() {
        let rule = |name: &str, protocol: &str| {
            format!("[[lb_rule]]\nname = \"{name}\"\nfrontend = \"public\"\nprotocol = \"{protocol}\"\nfrontend_port = 7000\nbackend_pool = \"vms\"\nbackend_port = 7000\n")
        };
        let head = VALID.split("[[lb_rule]]").next().unwrap();
        let both = format!("{head}{}{}", rule("t", "tcp"), rule("u", "udp"));
        let c = Config::from_toml(&both, "gw.toml").unwrap();
        assert_eq!(c.lb_rules[1].protocol, Protocols::Udp);
        let clash = format!("{head}{}{}", rule("t", "tcp"), rule("a", "all"));
        let err = Config::from_toml(&clash, "gw.toml").unwrap_err();
        assert!(
            err.message
                .contains("port 7000 of frontend \"public\" already belongs to rule \"t\""),
            "{err}"
        );
    }

    #[test]
    fn each_profile_refuses_what_its_box_does_not_have() {
        let natgw = VALID.replace("profile = \"azure-lb\"", "profile = \"aws-natgw\"");
        let err = Config::from_toml(&natgw, "gw.toml").unwrap_err();
        assert!(
            err.message.contains(
                "lb_rule \"app\": AWS NAT Gateway (profile aws-natgw) has only outbound rules"
            ),
            "{err}"
        );
        let head = natgw.split("[[lb_rule]]").next().unwrap();
        let fixed = format!("{head}[[outbound_rule]]\nname = \"e\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\nidle_timeout = \"10m\"\n");
        let err = Config::from_toml(&fixed, "gw.toml").unwrap_err();
        assert!(
            err.message
                .contains("idle_timeout = 10m: AWS NAT Gateway's idle timeout is fixed at 350 s"),
            "{err}"
        );
        let shared = format!("{head}[[outbound_rule]]\nname = \"e\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\nports_per_member = 64\n");
        let err = Config::from_toml(&shared, "gw.toml").unwrap_err();
        assert!(err.message.contains("lends ports on demand"), "{err}");
    }

    #[test]
    fn a_udp_rule_takes_no_idle_timeout_or_expiry() {
        let udp = VALID.replace("protocol = \"tcp\"", "protocol = \"udp\"");
        let err = Config::from_toml(&udp, "gw.toml").unwrap_err();
        assert_eq!(err.line, 16);
        assert!(
            err.message.contains(
                "a UDP rule's flows live Azure LB's UDP timeout (4 min); it takes no idle_timeout"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_config_without_rules_is_refused() {
        let text = VALID.split("[[lb_rule]]").next().unwrap();
        let err = Config::from_toml(text, "gw.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "gw.toml: no [[lb_rule]], [[inbound_nat_rule]], [[outbound_rule]] or [[nat_gateway]]: the gateway would drop every packet"
        );
    }

    #[test]
    fn two_rules_on_one_frontend_port_are_refused() {
        let second = "[[lb_rule]]\nname = \"app2\"\nfrontend = \"public\"\nfrontend_port = 7000\nbackend_pool = \"vms\"\nbackend_port = 8000\n";
        let err = Config::from_toml(&format!("{VALID}{second}"), "gw.toml").unwrap_err();
        assert!(
            err.message.contains(
                "frontend_port: port 7000 of frontend \"public\" already belongs to rule \"app\""
            ),
            "{err}"
        );
        assert_eq!(err.line, 27);
    }
}
