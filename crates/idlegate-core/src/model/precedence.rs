//! Which idle timeout a rule's flows get when several settings name one.
//!
//! Azure's "Order of precedence" ("Load Balancer TCP Reset and Idle Timeout",
//! <https://learn.microsoft.com/en-us/azure/load-balancer/load-balancer-tcp-reset>): for inbound
//! flows, a frontend IP's own idle timeout beats the load-balancing rule's; for outbound flows, the outbound rule's idle timeout beats
//! the public IP's outbound idle timeout, which is locked at 4 minutes (a frontend's own
//! `idle_timeout` does not reach outbound flows). [`lb_rule`] and [`outbound_rule`] resolve one
//! rule and say which setting won and why; the engine runs exactly what they say, and
//! [`explain`] prints it for `--explain` from [`explanation`], the same report as data (for
//! `--explain --json`).

use crate::model::config::{Config, ExpiryFrom, Idle, Protocols, TimeoutFrom};
use crate::model::expiry::Expiry;
use crate::model::profile;
use crate::model::units::human;
use serde::Serialize;
use std::fmt::Write;
use std::time::Duration;

/// The setting that decided a rule's idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Winner {
    /// The rule's own `idle_timeout`.
    Rule,
    /// The frontend's `idle_timeout`, which beats the rule's for inbound flows.
    Frontend,
    /// Nobody set one: the profile's default.
    ProfileDefault,
    /// A NAT gateway serves the rule's pool: its timeout applies, not the rule's.
    NatGateway,
    /// Changed while the gateway runs, through the HTTP API: it beats every setting of the
    /// file.
    Api,
}

/// What `--explain` says of a timeout changed through the API.
pub const CHANGED_THROUGH_THE_API: &str = "changed through the API while the gateway runs";

/// `applied` with its reason saying what was changed through the API, once: the idle timeout
/// (its reason is then only that), the expiry action (added to the reason the timeout has), or
/// both in one clause.
fn noting_expiry(mut applied: Applied, idle: &Idle) -> Applied {
    let timeout = applied.winner == Winner::Api;
    let expiry = idle.expiry_from == ExpiryFrom::Api;
    match (timeout, expiry) {
        (true, true) => {
            applied.reason = format!(
                "idle timeout and expiry {} {CHANGED_THROUGH_THE_API}",
                applied.expiry
            )
        }
        (true, false) => applied.reason = format!("idle timeout {CHANGED_THROUGH_THE_API}"),
        (false, true) => {
            let _ = write!(
                applied.reason,
                "; expiry {} {CHANGED_THROUGH_THE_API}",
                applied.expiry
            );
        }
        (false, false) => {}
    }
    applied
}

/// The idle timeout and expiry action a rule's flows get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Unscaled.
    pub timeout: Duration,
    pub expiry: Expiry,
    pub winner: Winner,
    /// Why, in a sentence.
    pub reason: String,
}

/// The idle timeout of load-balancing rule `i`'s flows.
pub fn lb_rule(config: &Config, i: usize) -> Applied {
    let rule = &config.lb_rules[i];
    noting_expiry(
        inbound(config, rule.frontend, &rule.idle, "LB rule"),
        &rule.idle,
    )
}

/// The idle timeout of inbound NAT rule `i`'s flows.
pub fn inbound_nat_rule(config: &Config, i: usize) -> Applied {
    let rule = &config.inbound_nat_rules[i];
    noting_expiry(
        inbound(config, rule.frontend, &rule.idle, "inbound NAT rule"),
        &rule.idle,
    )
}

/// An inbound rule's own idle timeout against its frontend's.
fn inbound(config: &Config, frontend: usize, idle: &Idle, kind: &str) -> Applied {
    let frontend = &config.frontends[frontend];
    let own = idle.timeout;
    let (timeout, winner, reason) = match (frontend.idle_timeout, idle.timeout_from) {
        (_, TimeoutFrom::Api) => (own, Winner::Api, CHANGED_THROUGH_THE_API.to_string()),
        (Some(f), TimeoutFrom::Rule) if f != own => (
            f,
            Winner::Frontend,
            format!(
                "frontend \"{}\" sets {}, which beats the rule's {} (Azure: a frontend IP's idle timeout takes precedence over the {kind}'s)",
                frontend.name,
                human(f),
                human(own)
            ),
        ),
        (Some(f), TimeoutFrom::Rule) => (f, Winner::Rule, format!("the rule and frontend \"{}\" both set {}", frontend.name, human(f))),
        (Some(f), TimeoutFrom::ProfileDefault) => (
            f,
            Winner::Frontend,
            format!("frontend \"{}\" sets {}; the rule sets none", frontend.name, human(f)),
        ),
        (None, TimeoutFrom::Rule) => (own, Winner::Rule, format!("the rule's own; frontend \"{}\" sets none", frontend.name)),
        (None, TimeoutFrom::ProfileDefault) => (
            own,
            Winner::ProfileDefault,
            format!("{}'s default: neither the rule nor frontend \"{}\" sets one", config.profile.title, frontend.name),
        ),
    };
    Applied {
        timeout,
        expiry: idle.expiry,
        winner,
        reason,
    }
}

/// The idle timeout of outbound rule `i`'s flows.
pub fn outbound_rule(config: &Config, i: usize) -> Applied {
    let rule = &config.outbound_rules[i];
    // Azure, "Order of precedence": "a NAT gateway will always take precedence over load
    // balancer outbound rules".
    if let Some(g) = config
        .nat_gateways
        .iter()
        .find(|g| g.backend_pools.contains(&rule.backend_pool))
    {
        let reason = format!(
            "nat_gateway \"{}\" serves pool \"{}\" and takes precedence over outbound rules (Azure): its {} applies, not the rule's {}",
            g.name,
            config.backend_pools[rule.backend_pool].name,
            human(g.idle.timeout),
            human(rule.idle.timeout)
        );
        return Applied {
            timeout: g.idle.timeout,
            expiry: g.idle.expiry,
            winner: Winner::NatGateway,
            reason,
        };
    }
    let frontend = &config.frontends[rule.frontend];
    let timeout = rule.idle.timeout;
    let title = config.profile.title;
    let (winner, mut reason) = match (rule.idle.timeout_from, config.profile.public_ip_outbound_idle) {
        (TimeoutFrom::Api, _) => (Winner::Api, CHANGED_THROUGH_THE_API.to_string()),
        (TimeoutFrom::Rule, Some(locked)) if timeout != locked => (
            Winner::Rule,
            format!(
                "the rule's {}, which beats the public IP's outbound idle timeout, locked at {} (Azure: the outbound rule's takes precedence)",
                human(timeout),
                human(locked)
            ),
        ),
        (TimeoutFrom::Rule, Some(locked)) => {
            (Winner::Rule, format!("the rule's own, the same as the public IP's locked {}", human(locked)))
        }
        (TimeoutFrom::Rule, None) => (Winner::Rule, "the rule's own".to_string()),
        (TimeoutFrom::ProfileDefault, Some(locked)) => (
            Winner::ProfileDefault,
            format!("{title}'s default: the public IP's outbound idle timeout, locked at {}", human(locked)),
        ),
        (TimeoutFrom::ProfileDefault, None) => (Winner::ProfileDefault, format!("{title}'s default")),
    };
    if let Some(f) = frontend.idle_timeout {
        let _ = write!(
            reason,
            "; frontend \"{}\"'s {} applies to inbound flows only",
            frontend.name,
            human(f)
        );
    }
    if config.profile.name == profile::AZURE_LB.name
        && timeout > profile::AZURE_OUTBOUND_DISPUTED_ABOVE
    {
        let _ = write!(reason, "; note: {}", profile::AZURE_OUTBOUND_MAXIMUM);
    }
    noting_expiry(
        Applied {
            timeout,
            expiry: rule.idle.expiry,
            winner,
            reason,
        },
        &rule.idle,
    )
}

/// The idle timeout of NAT gateway `i`'s flows.
pub fn nat_gateway(config: &Config, i: usize) -> Applied {
    let g = &config.nat_gateways[i];
    let (winner, reason) = match g.idle.timeout_from {
        TimeoutFrom::Rule => (Winner::Rule, "the NAT gateway's own".to_string()),
        TimeoutFrom::Api => (Winner::Api, CHANGED_THROUGH_THE_API.to_string()),
        TimeoutFrom::ProfileDefault => (
            Winner::ProfileDefault,
            "Azure NAT Gateway's default".to_string(),
        ),
    };
    noting_expiry(
        Applied {
            timeout: g.idle.timeout,
            expiry: g.idle.expiry,
            winner,
            reason,
        },
        &g.idle,
    )
}

/// What `--explain` says, as data: the profile's timers and, for every rule, what its flows
/// get and why. [`explain`] renders it as text; `--explain --json` serializes it (durations in
/// seconds, unscaled as configured and `runs_*` as the engine runs them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub profile: &'static str,
    pub profile_title: &'static str,
    pub time_scale: u32,
    /// The per-state timers of TCP flows not established (handshake, FIN, RST).
    pub tcp_not_established: Vec<StateTimer>,
    /// How long the profile holds a SNAT port after its flow ends, per way of ending. A rule
    /// that lends ports says what its pool runs in its own `snat_holds` (a NAT gateway's are
    /// Azure NAT Gateway's; a GCP rule's hold after a FIN follows its `time_wait`).
    pub snat_holds: Vec<SnatHold>,
    /// `TCP_RETRANSMISSION_FLOOR`: the shortest the timers above may run (unless their real
    /// timer is shorter), because TCP's retransmission timeout is not scaled.
    #[serde(rename = "floor_s", serialize_with = "seconds")]
    pub floor: Duration,
    /// An ACK of a forgotten connection from its initiator's side opens a new flow.
    pub loose_pickup: bool,
    /// Only new data keeps a flow alive: ACKs and keepalive probes do not.
    pub data_only_refresh: bool,
    pub rules: Vec<RuleExplanation>,
}

/// One TCP state's timer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateTimer {
    /// `SYN_SENT`, `SYN_RECV`, `FIN_WAIT`, `CLOSE_WAIT`, `LAST_ACK`, `TIME_WAIT`, `CLOSE`.
    pub state: &'static str,
    #[serde(flatten)]
    pub timer: RacingTimer,
}

/// How long a SNAT port is held after its flow ends one way.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnatHold {
    /// `fin`, `rst` or `idle` (an idle expiry): how the flow ended.
    pub after: &'static str,
    #[serde(flatten)]
    pub timer: RacingTimer,
}

/// A timer that races TCP's own, unscaled retransmission timers: as configured, divided by
/// `time_scale`, and as the engine runs it (the floor applied).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RacingTimer {
    /// Unscaled.
    #[serde(rename = "timeout_s", serialize_with = "seconds")]
    pub timeout: Duration,
    /// Divided by `time_scale`.
    #[serde(rename = "scaled_s", serialize_with = "seconds")]
    pub scaled: Duration,
    /// What the engine runs: `scaled`, or the floor where that is longer.
    #[serde(rename = "runs_s", serialize_with = "seconds")]
    pub runs: Duration,
    /// Whether the floor lifted it.
    pub floored: bool,
}

impl RacingTimer {
    pub fn new(config: &Config, timeout: Duration) -> RacingTimer {
        RacingTimer {
            timeout,
            scaled: config.scaled(timeout),
            runs: config.scaled_racing_tcp(timeout),
            floored: config.floored(timeout),
        }
    }

    /// "500 ms scaled, runs 3 s (floor: TCP's retransmission timeout is not scaled)".
    pub fn floor_note(&self) -> String {
        format!(
            "{} scaled, runs {} (floor: TCP's retransmission timeout is not scaled)",
            human(self.scaled),
            human(self.runs)
        )
    }
}

/// The timers of `config` that run at the floor, each as "`name` `real`: `note`" (for the
/// lab's log and `--explain`): the profile's (its SNAT holds where a rule's pool runs them),
/// then a rule's own where they differ from the profile's, as "`kind` `rule`: `name` `real`:
/// `note`".
pub fn floored_timers(config: &Config) -> Vec<String> {
    let e = explanation(config);
    let named = |states: &[StateTimer], holds: &[SnatHold]| -> Vec<(String, RacingTimer)> {
        let states = states.iter().map(|t| (t.state.to_string(), t.timer));
        let holds = holds.iter().map(|h| {
            let after = match h.after {
                "idle" => "an idle expiry".to_string(),
                other => other.to_uppercase(),
            };
            (format!("SNAT hold after {after}"), h.timer)
        });
        states.chain(holds).collect()
    };
    let line = |(name, t): &(String, RacingTimer)| {
        format!("{name} {}: {}", human(t.timeout), t.floor_note())
    };
    // The profile's TCP timers run for every flow; its holds only where a rule's pool runs them.
    let states = named(&e.tcp_not_established, &[]);
    let holds = named(&[], &e.snat_holds);
    let mut own_lines = Vec::new();
    let mut holds_run = Vec::new();
    for rule in &e.rules {
        let own = named(
            rule.tcp_not_established.as_deref().unwrap_or_default(),
            rule.snat_holds.as_deref().unwrap_or_default(),
        );
        for timer in own.iter().filter(|n| n.1.floored) {
            if holds.contains(timer) {
                holds_run.push(timer.clone());
            } else if !states.contains(timer) {
                own_lines.push(format!("{} {}: {}", rule.kind, rule.name, line(timer)));
            }
        }
    }
    let profile = states.iter().filter(|(_, t)| t.floored);
    let run = holds.iter().filter(|h| holds_run.contains(h));
    profile.chain(run).map(line).chain(own_lines).collect()
}

/// What one rule's flows get.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleExplanation {
    /// `lb_rule`, `inbound_nat_rule`, `nat_gateway`, `outbound_rule`: the config's table.
    pub kind: &'static str,
    pub name: String,
    /// `tcp`, `udp` or `all`.
    pub protocol: &'static str,
    /// TCP flows' idle timeout and expiry (absent for a UDP-only rule).
    pub tcp: Option<TcpIdle>,
    /// A NAT gateway's own timers for TCP flows not established (Azure NAT Gateway's, whatever
    /// the profile); absent for the other kinds, whose flows get the profile's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_not_established: Option<Vec<StateTimer>>,
    /// The holds of the SNAT ports this rule's flows take (outbound rules and NAT gateways).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_holds: Option<Vec<SnatHold>>,
    /// UDP flows' timeouts (absent for a TCP-only rule).
    pub udp: Option<UdpIdle>,
}

/// The idle timeout and expiry a rule's TCP flows get, and the setting that won.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpIdle {
    #[serde(rename = "idle_timeout_s", serialize_with = "seconds")]
    pub idle_timeout: Duration,
    #[serde(rename = "runs_s", serialize_with = "seconds")]
    pub runs: Duration,
    #[serde(serialize_with = "expiry_name")]
    pub expiry: Expiry,
    pub winner: Winner,
    pub reason: String,
    /// TIME_WAIT, for an outbound rule of a profile that lets a rule set it (GCP Cloud NAT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_wait: Option<TimeWait>,
}

/// An outbound rule's TIME_WAIT, where the profile lets a rule set it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeWait {
    #[serde(rename = "time_wait_s", serialize_with = "seconds")]
    pub time_wait: Duration,
    #[serde(rename = "runs_s", serialize_with = "seconds")]
    pub runs: Duration,
    /// `rule` (its own `time_wait`) or `profile-default`.
    pub winner: Winner,
    pub reason: String,
}

/// Outbound rule `i`'s TIME_WAIT, if its profile lets a rule set it.
fn time_wait(config: &Config, i: usize) -> Option<TimeWait> {
    let p = config.profile;
    p.time_wait_range?;
    let rule = &config.outbound_rules[i];
    let time_wait = rule.time_wait(p);
    let (winner, reason) = match rule.time_wait {
        Some(_) => (
            Winner::Rule,
            "the rule's own time_wait; it is also the port's hold after a FIN (the longest of the rules sharing its frontend)".to_string(),
        ),
        None => (
            Winner::ProfileDefault,
            format!(
                "{}'s default, what a gateway created on or after 30 September 2026 gets (Cloud NAT release notes, 31 March 2026); one created before keeps 120 s: set time_wait = \"120s\" for it. It is also the port's hold after a FIN (the longest of the rules sharing its frontend)",
                p.title
            ),
        ),
    };
    Some(TimeWait {
        time_wait,
        runs: config.scaled_racing_tcp(time_wait),
        winner,
        reason,
    })
}

/// A rule's UDP flows: the profile's UDP timeouts; they end silently.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UdpIdle {
    #[serde(rename = "replied_s", serialize_with = "seconds")]
    pub replied: Duration,
    #[serde(rename = "unreplied_s", serialize_with = "seconds")]
    pub unreplied: Duration,
    #[serde(rename = "runs_s", serialize_with = "seconds")]
    pub runs: Duration,
    #[serde(serialize_with = "expiry_name")]
    pub expiry: Expiry,
    pub reason: String,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn expiry_name<S: serde::Serializer>(e: &Expiry, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(e.as_str())
}

/// How long a pool of SNAT ports keeps a port after its flow ends, per way of ending
/// (unscaled). The engine builds its pools' holds from these, so `--explain` says what it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldTimes {
    pub after_fin: Duration,
    pub after_rst: Duration,
    /// After an idle expiry: the flow ended without a close either end saw.
    pub after_idle: Duration,
}

impl HoldTimes {
    /// A profile's own holds.
    pub fn of(policy: &profile::SnatPolicy) -> HoldTimes {
        HoldTimes {
            after_fin: policy.hold_after_fin,
            after_rst: policy.hold_after_rst,
            after_idle: policy.hold_after_idle,
        }
    }

    /// Each hold with the JSON name of its way of ending: `fin`, `rst`, `idle`.
    pub fn named(&self) -> [(&'static str, Duration); 3] {
        [
            ("fin", self.after_fin),
            ("rst", self.after_rst),
            ("idle", self.after_idle),
        ]
    }
}

/// The holds of the ports that outbound rules lend from frontend `frontend`: the profile's,
/// except where a rule may set TIME_WAIT (GCP Cloud NAT): there the hold after a FIN follows it,
/// the longest `time_wait` of the rules leaving from that frontend (they share its ports).
pub fn outbound_holds(config: &Config, frontend: usize) -> HoldTimes {
    let p = config.profile;
    let own = HoldTimes::of(&p.snat);
    if p.time_wait_range.is_none() {
        return own;
    }
    let after_fin = config
        .outbound_rules
        .iter()
        .filter(|r| r.frontend == frontend)
        .map(|r| r.time_wait(p))
        .max()
        .unwrap_or(own.after_fin);
    HoldTimes { after_fin, ..own }
}

/// The holds of a `[[nat_gateway]]`'s ports: Azure NAT Gateway's, whatever the config's profile.
pub fn nat_gateway_holds() -> HoldTimes {
    HoldTimes::of(&profile::AZURE_NATGW.snat)
}

fn racing_holds(config: &Config, holds: HoldTimes) -> Vec<SnatHold> {
    holds
        .named()
        .into_iter()
        .map(|(after, timeout)| SnatHold {
            after,
            timer: RacingTimer::new(config, timeout),
        })
        .collect()
}

fn racing_states(config: &Config, tcp: &profile::TcpTimers) -> Vec<StateTimer> {
    tcp.named()
        .map(|(state, timeout)| StateTimer {
            state,
            timer: RacingTimer::new(config, timeout),
        })
        .collect()
}

/// For every rule, the timeout and expiry action its flows get and which setting won.
pub fn explanation(config: &Config) -> Explanation {
    let p = config.profile;
    let tcp_not_established = racing_states(config, &p.tcp);
    let snat_holds = racing_holds(config, HoldTimes::of(&p.snat));
    // Per rule: its kind, name, protocols, idle timeout, TIME_WAIT, and, where they are not the
    // profile's, its own timers for flows not established; and the holds of its SNAT ports.
    let rules = (0..config.lb_rules.len())
        .map(|i| {
            let rule = &config.lb_rules[i];
            let applied = lb_rule(config, i);
            (
                "lb_rule",
                &rule.name,
                rule.protocol,
                applied,
                None,
                None,
                None,
            )
        })
        .chain((0..config.inbound_nat_rules.len()).map(|i| {
            let rule = &config.inbound_nat_rules[i];
            let applied = inbound_nat_rule(config, i);
            let kind = "inbound_nat_rule";
            (kind, &rule.name, rule.protocol, applied, None, None, None)
        }))
        .chain((0..config.nat_gateways.len()).map(|i| {
            let gateway = &config.nat_gateways[i];
            let applied = nat_gateway(config, i);
            (
                "nat_gateway",
                &gateway.name,
                Protocols::All,
                applied,
                None,
                Some(racing_states(config, &profile::AZURE_NATGW.tcp)),
                Some(racing_holds(config, nat_gateway_holds())),
            )
        }))
        .chain((0..config.outbound_rules.len()).map(|i| {
            let rule = &config.outbound_rules[i];
            let applied = outbound_rule(config, i);
            let time_wait = time_wait(config, i);
            let holds = racing_holds(config, outbound_holds(config, rule.frontend));
            (
                "outbound_rule",
                &rule.name,
                rule.protocol,
                applied,
                time_wait,
                None,
                Some(holds),
            )
        }))
        .map(
            |(kind, name, protocols, applied, time_wait, states, holds)| {
                // A NAT gateway's UDP flows get Azure NAT Gateway's timeouts, as in the engine.
                let box_of = if kind == "nat_gateway" {
                    &profile::AZURE_NATGW
                } else {
                    p
                };
                let udp = &box_of.udp;
                RuleExplanation {
                    kind,
                    name: name.clone(),
                    protocol: protocols.as_str(),
                    tcp_not_established: states,
                    snat_holds: holds,
                    tcp: (protocols != Protocols::Udp).then(|| TcpIdle {
                        idle_timeout: applied.timeout,
                        runs: config.scaled(applied.timeout),
                        expiry: applied.expiry,
                        winner: applied.winner,
                        reason: applied.reason.clone(),
                        time_wait,
                    }),
                    udp: (protocols != Protocols::Tcp).then(|| UdpIdle {
                        replied: udp.replied,
                        unreplied: udp.unreplied,
                        runs: config.scaled(udp.replied),
                        expiry: Expiry::Silent,
                        reason: format!(
                            "{}'s UDP timeout; the rule's idle settings are for TCP",
                            box_of.title
                        ),
                    }),
                }
            },
        )
        .collect();
    Explanation {
        profile: p.name,
        profile_title: p.title,
        time_scale: config.time_scale,
        tcp_not_established,
        snat_holds,
        floor: crate::model::config::TCP_RETRANSMISSION_FLOOR,
        loose_pickup: config.pickup == crate::model::profile::Pickup::Loose,
        data_only_refresh: p.refresh == crate::model::profile::Refresh::DataOnly,
        rules,
    }
}

/// For every rule, the timeout and expiry action its flows get and which setting won: the
/// report of `--explain`, rendered from [`explanation`].
pub fn explain(config: &Config) -> String {
    let e = explanation(config);
    let mut out = format!(
        "profile {} ({}), time_scale {}: every timer below runs 1/{} as long, except that \
         the timers racing TCP's own (not-established states, SNAT holds) run at least {}\n\
         TCP flows not established (handshake, FIN, RST): {}\n",
        e.profile,
        e.profile_title,
        e.time_scale,
        e.time_scale,
        human(e.floor),
        config.profile.tcp.summary()
    );
    for floored in floored_timers(config) {
        let _ = writeln!(out, "    {floored}");
    }
    if e.loose_pickup {
        out += "loose pickup: an ACK of a forgotten connection from its initiator's side opens a new flow (loose_pickup = false turns it off)\n";
    }
    if e.data_only_refresh {
        out += "only new data keeps a flow alive: ACKs and TCP keepalive probes do not\n";
    }
    for rule in &e.rules {
        let (kind, name) = (rule.kind, &rule.name);
        if rule.kind == "nat_gateway" {
            let natgw = &profile::AZURE_NATGW;
            let holds = nat_gateway_holds();
            let _ = writeln!(
                out,
                "{kind} {name}: TCP flows not established: {}; SNAT port held {} after a FIN, {} after a RST, {} after an idle expiry\n    because: a NAT gateway runs {}'s timers, whatever the profile",
                natgw.tcp.summary(),
                human(holds.after_fin),
                human(holds.after_rst),
                human(holds.after_idle),
                natgw.title
            );
        }
        if let Some(tcp) = &rule.tcp {
            let _ = writeln!(
                out,
                "{kind} {name}: idle timeout {} (runs {:?}), expiry {}\n    because: {}",
                human(tcp.idle_timeout),
                tcp.runs,
                tcp.expiry,
                tcp.reason
            );
            if let Some(t) = &tcp.time_wait {
                let _ = writeln!(
                    out,
                    "{kind} {name}: TIME_WAIT {} (runs {:?})\n    because: {}",
                    human(t.time_wait),
                    t.runs,
                    t.reason
                );
            }
        }
        if let Some(udp) = &rule.udp {
            let _ = writeln!(
                out,
                "{kind} {name}: UDP flows live {} ({} while unanswered), runs {:?}, and end silently\n    because: {}",
                human(udp.replied),
                human(udp.unreplied),
                udp.runs,
                udp.reason
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
