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

mod change;
mod fields;
mod lookup;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

use crate::model::expiry::Expiry;
use crate::model::profile::{
    self, max_time_scale, shortest_timer, Pickup, Profile, TimeoutRange, MIN_SCALED_TIMER,
};
use crate::model::units::human;
use crate::wire::packet::Protocol;
pub use change::{RuleChange, RuleChangeError};
use fields::*;
pub use lookup::{find_profile, UnknownProfile};
use raw::*;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;
use validate::*;

/// The environment variable a lab gives the programs it runs (`idlegate lab exec`): the lab's
/// `time_scale`, a whole number ≥ 1. Every timer of the lab runs 1/time_scale as long, so an
/// idlegate command that derives a timer from a profile in such a program divides it by this.
pub const TIME_SCALE_ENV: &str = "IDLEGATE_TIME_SCALE";
/// The environment variable that names the lab a program runs in (`idlegate lab exec`).
pub const LAB_ENV: &str = "IDLEGATE_LAB";

/// The shortest a scaled timer that races TCP's own timers may run (unless the real timer is
/// shorter still): 3 s.
///
/// `time_scale` divides idlegate's timers, not the endpoints' TCP. A SYN, SYN-ACK or FIN that is
/// lost is sent again after the retransmission timeout, which starts at 1 s (RFC 6298 §2.1;
/// Linux `TCP_TIMEOUT_INIT`, which also times the SYN-ACK's retransmissions) and doubles on
/// each retry (RFC 6298 §5.5): the first retransmission leaves 1 s after the original, the
/// second 3 s after it. Azure's 30 s handshake timer scaled by 60 runs 500 ms, so a handshake
/// that lost one packet would outlive its flow. A 3 s floor lets one loss and the loss of its
/// first retransmission be recovered, as they are in real time. A FIN's retransmission follows
/// the connection's measured RTO (at least 200 ms on Linux, `TCP_RTO_MIN`), so the handshake's
/// 1 s start is the longest first wait the floor has to cover.
pub const TCP_RETRANSMISSION_FLOOR: Duration = Duration::from_secs(3);

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
    /// The TOML it was read from, and the file's name, with the changes made since
    /// ([`Config::with_rule_change`] validates a change by reading it again).
    pub source: Source,
}

/// The text a [`Config`] was read from. After a rule's change ([`Config::with_rule_change`])
/// `text` is the config re-serialised with the change (comments dropped, keys re-ordered), not
/// the file as written: `file` still names the file, which was not read again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub text: std::sync::Arc<str>,
    pub file: std::sync::Arc<str>,
}

/// An Azure NAT gateway: the pools it serves leave through its own frontend, whatever their
/// outbound rules say (Azure "Load Balancer TCP Reset and Idle Timeout", "Order of precedence":
/// "a NAT gateway will always take precedence over load balancer outbound rules"). It runs with the `azure-natgw` profile's timers and SNAT policy.
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
    /// Whether `expiry` is the config's (or the profile's default) or was changed since.
    pub expiry_from: ExpiryFrom,
}

/// Where a rule's own idle timeout comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutFrom {
    Rule,
    ProfileDefault,
    /// Changed while the gateway runs (the HTTP API, [`Config::with_rule_change`]): it beats
    /// every setting of the file.
    Api,
}

/// Where a rule's expiry action comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryFrom {
    /// The rule's `expiry`, or the profile's default.
    Config,
    /// Changed while the gateway runs ([`Config::with_rule_change`]).
    Api,
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
    /// The rule's own `time_wait`, where the profile lets TIME_WAIT be set; `None`: the
    /// profile's.
    pub time_wait: Option<Duration>,
}

impl OutboundRule {
    /// The TIME_WAIT its TCP flows get: its own, or `profile`'s.
    pub fn time_wait(&self, profile: &Profile) -> Duration {
        self.time_wait.unwrap_or(profile.tcp.time_wait)
    }
}

impl Config {
    /// The timer the engine runs for a configured duration: divided by `time_scale`. For the
    /// idle timeouts of established TCP flows and for UDP flows, which race no timer of TCP's.
    pub fn scaled(&self, d: Duration) -> Duration {
        d / self.time_scale
    }

    /// The timer the engine runs for a timer that races TCP's own, unscaled retransmission
    /// timers (the handshake and closing states, SNAT port holds): divided by `time_scale`, but
    /// never below [`TCP_RETRANSMISSION_FLOOR`] and never above the real timer,
    /// `max(d / time_scale, min(d, floor))`.
    pub fn scaled_racing_tcp(&self, d: Duration) -> Duration {
        self.scaled(d).max(d.min(TCP_RETRANSMISSION_FLOOR))
    }

    /// Whether the floor lifts this timer above its plain scaled value.
    pub fn floored(&self, d: Duration) -> bool {
        self.scaled_racing_tcp(d) > self.scaled(d)
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

    /// The ports of `frontend` SNAT may lend, in order: from `SNAT_PORTS_FROM` up, less the
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
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::of_toml(file, text, &e))?;
        if let Some(p) = &raw.profile {
            if let Err(unknown) = find_profile(p.get_ref()) {
                let message = format!("profile = \"{}\": {unknown}", p.get_ref());
                return Err(at(Some(p.span()), message).with_hint(unknown.hint()));
            }
        }
        let mut config = Validator::default()
            .validate(raw)
            .map_err(|(span, message)| at(span, message))?;
        config.source = Source {
            text: text.into(),
            file: file.into(),
        };
        Ok(config)
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
    /// What to write instead, where the mistake suggests it (a close profile name).
    pub hint: Option<String>,
}

impl ConfigError {
    /// `file:line:column: message`, or `file: message` for a mistake of the whole file.
    fn located(&self) -> String {
        match self.line {
            0 => format!("{}: {}", self.file, self.message),
            line => format!("{}:{line}:{}: {}", self.file, self.column, self.message),
        }
    }

    /// A mistake in `file` (whose text is `text`) at byte range `span` (None: the whole file).
    /// Other TOML files (the relay's) report theirs the same way.
    pub fn at(file: &str, text: &str, span: Option<Range<usize>>, message: String) -> ConfigError {
        let (line, column) = span.map_or((0, 0), |s| line_column(text, s.start));
        ConfigError {
            file: file.to_string(),
            line,
            column,
            message,
            hint: None,
        }
    }

    /// A TOML syntax or type error in `file`, at the value it is about; a wrong type is said
    /// as `key: expected <what the key takes, with an example>, found <what is there>`.
    pub fn of_toml(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
        let message = match e.span() {
            Some(span) => explain_toml_error(
                setting_at(text, span.start),
                key_before(text, span.start),
                e.message(),
            ),
            None => e.message().to_string(),
        };
        ConfigError::at(file, text, e.span(), message)
    }

    /// The same mistake with what to write instead.
    pub fn with_hint(self, hint: String) -> ConfigError {
        ConfigError {
            hint: Some(hint),
            ..self
        }
    }
}

/// A TOML or type error in the value of `key` (top-level or in an inline table) said the way
/// the other mistakes are: `key: expected <what the key takes, with an example>, found <what
/// is there>`. Errors that are not about a value's type (an unknown or missing key) keep
/// toml's words, after the line `setting` (`key = value`) they are on when it is short.
fn explain_toml_error(setting: Option<&str>, key: Option<&str>, message: &str) -> String {
    let found = ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once(", expected "));
    match (found, key.and_then(|key| Some((key, expects(key)?)))) {
        (Some((found, _)), Some((key, expected))) => {
            format!(
                "{key}: expected {expected}, found {}",
                found.replace('`', "")
            )
        }
        _ => match setting {
            Some(setting) => format!("{setting}: {message}"),
            None => message.to_string(),
        },
    }
}

/// What a config key takes, said for a person; None for a key of no config.
fn expects(key: &str) -> Option<&'static str> {
    Some(match key {
        "idle_timeout" => "a duration string like \"240s\" or \"4m\"",
        "frontend_port" | "backend_port" => "a port number from 1 to 65535",
        "frontend_port_range" => "two port numbers from 1 to 65535, like [50000, 50099]",
        "time_scale" => {
            "a whole number from 1 up to the profile's limit (every timer is divided by it; `idlegate profiles` shows the limit)"
        }
        "max_flows" => "a whole number of flows, like 1048576",
        "ports_per_member" => "a whole number of SNAT ports, like 1024",
        "loose_pickup" => "true or false",
        "expiry" => "a string: \"silent\", \"reset\" or \"reset-on-next\"",
        "protocol" => "a string: \"tcp\", \"udp\" or \"all\"",
        "address" => "an IP address string like \"203.0.113.10\"",
        "profile" => "a profile name string like \"azure-lb\"",
        "name" | "frontend" | "backend_pool" | "member" => "a name string in quotes",
        "backend_pools" | "members" => "a list in brackets",
        "listen" | "connect" => "a HOST:PORT string like \"127.0.0.1:5432\"",
        "keepalive" => "an IDLE,INTERVAL,COUNT string like \"120s,30s,8\"",
        _ => return None,
    })
}

/// The key whose value starts at `offset`: the last `key =` before it on its line, so that a
/// value in an inline table (`members = [{ name = "vm1", address = 5 }]`) is said by its own
/// key. None when the text before `offset` does not end in `key =`.
fn key_before(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset)?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let rest = line.trim_end().strip_suffix('=')?.trim_end();
    // After the last character that cannot be in a key (any width: a comment may hold
    // anything, and the slice must start on a character's boundary).
    let start = rest
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let key = &rest[start..];
    (!key.is_empty()).then_some(key)
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

/// Flows a gateway holds unless the config says `max_flows`: 1 Mi, about 40 to 100 MB.
pub const DEFAULT_MAX_FLOWS: usize = 1 << 20;
/// The most `max_flows` may be: the flow table numbers its flows in 31 bits (2^31 − 1 of them:
/// its index keeps two references of its own).
pub const MAX_MAX_FLOWS: usize = (1 << 31) - 1;
