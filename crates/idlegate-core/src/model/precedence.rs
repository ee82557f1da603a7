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

use crate::model::config::{Config, Idle, Protocols, TimeoutFrom};
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
    inbound(config, rule.frontend, &rule.idle, "LB rule")
}

/// The idle timeout of inbound NAT rule `i`'s flows.
pub fn inbound_nat_rule(config: &Config, i: usize) -> Applied {
    let rule = &config.inbound_nat_rules[i];
    inbound(config, rule.frontend, &rule.idle, "inbound NAT rule")
}

/// An inbound rule's own idle timeout against its frontend's.
fn inbound(config: &Config, frontend: usize, idle: &Idle, kind: &str) -> Applied {
    let frontend = &config.frontends[frontend];
    let own = idle.timeout;
    let (timeout, winner, reason) = match (frontend.idle_timeout, idle.timeout_from) {
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
    Applied {
        timeout,
        expiry: rule.idle.expiry,
        winner,
        reason,
    }
}

/// The idle timeout of NAT gateway `i`'s flows.
pub fn nat_gateway(config: &Config, i: usize) -> Applied {
    let g = &config.nat_gateways[i];
    let (winner, reason) = match g.idle.timeout_from {
        TimeoutFrom::Rule => (Winner::Rule, "the NAT gateway's own".to_string()),
        TimeoutFrom::ProfileDefault => (
            Winner::ProfileDefault,
            "Azure NAT Gateway's default".to_string(),
        ),
    };
    Applied {
        timeout: g.idle.timeout,
        expiry: g.idle.expiry,
        winner,
        reason,
    }
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
mod tests {
    use super::*;

    fn config(
        frontend_idle: Option<&str>,
        lb_idle: Option<&str>,
        outbound_idle: Option<&str>,
    ) -> Config {
        let line =
            |key: &str, v: Option<&str>| v.map_or(String::new(), |v| format!("{key} = \"{v}\"\n"));
        let text = format!(
            "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n{}\
             [[backend_pool]]\nname = \"vms\"\nmembers = [{{ name = \"vm1\", address = \"192.0.2.11\" }}]\n\
             [[lb_rule]]\nname = \"app\"\nfrontend = \"public\"\nfrontend_port = 7000\nbackend_pool = \"vms\"\nbackend_port = 7000\n{}\
             [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n{}",
            line("idle_timeout", frontend_idle),
            line("idle_timeout", lb_idle),
            line("idle_timeout", outbound_idle),
        );
        Config::from_toml(&text, "test").unwrap()
    }

    /// Azure "Load Balancer TCP Reset and Idle Timeout", "Order of precedence", pair by pair.
    #[test]
    #[rustfmt::skip]
    fn every_precedence_pair_of_azures_list_resolves_as_documented() {
        let min = |m: u64| Duration::from_secs(m * 60);
        // (frontend, lb_rule, outbound_rule idle_timeout) → (minutes, winner) for each rule.
        type Settings<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
        type Expected = (u64, Winner);
        let cases: &[(Settings, Expected, Expected)] = &[
            // Inbound: "the load balancer frontend IP idle timeout takes precedence" over the LB rule's.
            ((Some("10m"), Some("20m"), None), (10, Winner::Frontend), (4, Winner::ProfileDefault)),
            ((Some("10m"), None, None), (10, Winner::Frontend), (4, Winner::ProfileDefault)),
            ((Some("10m"), Some("10m"), None), (10, Winner::Rule), (4, Winner::ProfileDefault)),
            ((None, Some("20m"), None), (20, Winner::Rule), (4, Winner::ProfileDefault)),
            ((None, None, None), (4, Winner::ProfileDefault), (4, Winner::ProfileDefault)),
            // Outbound: "the outbound rule idle timeout takes precedence" over the public IP's locked 4 min,
            // and the frontend's own idle timeout does not reach outbound flows.
            ((None, None, Some("30m")), (4, Winner::ProfileDefault), (30, Winner::Rule)),
            ((Some("10m"), None, Some("30m")), (10, Winner::Frontend), (30, Winner::Rule)),
            ((Some("10m"), None, None), (10, Winner::Frontend), (4, Winner::ProfileDefault)),
            ((None, None, Some("4m")), (4, Winner::ProfileDefault), (4, Winner::Rule)),
        ];
        for ((frontend, lb, outbound), (lb_min, lb_winner), (out_min, out_winner)) in cases {
            let c = config(*frontend, *lb, *outbound);
            let (l, o) = (lb_rule(&c, 0), outbound_rule(&c, 0));
            let case = format!("frontend {frontend:?}, lb_rule {lb:?}, outbound_rule {outbound:?}");
            assert_eq!((l.timeout, l.winner), (min(*lb_min), *lb_winner), "lb_rule, {case}: {}", l.reason);
            assert_eq!((o.timeout, o.winner), (min(*out_min), *out_winner), "outbound_rule, {case}: {}", o.reason);
        }
    }

    #[test]
    fn a_frontends_idle_timeout_beats_an_inbound_nat_rules() {
        // Azure, "Order of precedence": "If there's an inbound NAT rule with an idle timeout value set differently than
        // the idle timeout of the frontend IP it references, the frontend IP idle timeout takes precedence."
        let text = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\nidle_timeout = \"10m\"\n\
                    [[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n\
                    [[inbound_nat_rule]]\nname = \"ssh\"\nfrontend = \"public\"\nfrontend_port = 50001\nmember = \"vm1\"\nbackend_port = 22\nidle_timeout = \"20m\"\n";
        let c = Config::from_toml(text, "test").unwrap();
        let applied = inbound_nat_rule(&c, 0);
        assert_eq!(
            (applied.timeout, applied.winner),
            (Duration::from_secs(600), Winner::Frontend)
        );
        assert!(
            applied.reason.contains("over the inbound NAT rule's"),
            "{}",
            applied.reason
        );
        assert!(explain(&c).contains("inbound_nat_rule ssh: idle timeout 10 min"));
    }

    #[test]
    fn a_nat_gateway_beats_the_outbound_rule_of_the_pools_it_serves() {
        // Azure, "Order of precedence": "a NAT gateway will always take precedence over load
        // balancer outbound rules".
        let text = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
                    [[frontend]]\nname = \"natgw-ip\"\naddress = \"203.0.113.20\"\n\
                    [[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n\
                    [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\nidle_timeout = \"30m\"\n\
                    [[nat_gateway]]\nname = \"natgw\"\nfrontend = \"natgw-ip\"\nbackend_pools = [\"vms\"]\nidle_timeout = \"10m\"\n";
        let c = Config::from_toml(text, "test").unwrap();
        let applied = outbound_rule(&c, 0);
        assert_eq!(
            (applied.timeout, applied.winner),
            (Duration::from_secs(600), Winner::NatGateway)
        );
        assert_eq!(
            applied.expiry,
            Expiry::ResetOnNext,
            "the NAT gateway's behaviour"
        );
        let report = explain(&c);
        assert!(
            report.contains("nat_gateway natgw: idle timeout 10 min"),
            "{report}"
        );
        assert!(
            report.contains("takes precedence over outbound rules"),
            "{report}"
        );
    }

    #[test]
    fn the_explanation_holds_what_the_text_says_per_rule() {
        let c = config(Some("10m"), Some("20m"), Some("30m"));
        let e = explanation(&c);
        assert_eq!(e.profile, "azure-lb");
        assert_eq!(e.tcp_not_established.len(), 7);
        let app = e.rules.iter().find(|r| r.kind == "lb_rule").unwrap();
        let tcp = app.tcp.as_ref().unwrap();
        assert_eq!(tcp.idle_timeout, lb_rule(&c, 0).timeout);
        assert_eq!(tcp.winner, lb_rule(&c, 0).winner);
        assert_eq!(tcp.runs, c.scaled(tcp.idle_timeout));
        let text = explain(&c);
        for rule in &e.rules {
            assert!(
                text.contains(&format!("{} {}: ", rule.kind, rule.name)),
                "{text}"
            );
        }
    }

    #[test]
    fn an_azure_outbound_rule_above_100_min_is_explained_with_the_two_pages_ranges() {
        // Azure "Outbound rules": 4–120 min; "Load Balancer TCP Reset and Idle Timeout": 4–100.
        let c = config(None, None, Some("110m"));
        let text = explain(&c);
        let line = text
            .lines()
            .skip_while(|l| !l.starts_with("outbound_rule egress:"))
            .nth(1)
            .unwrap_or_default()
            .to_string();
        assert!(
            line.contains("\"Load Balancer TCP Reset and Idle Timeout\" page says 4–100 min; idlegate enforces 120 min"),
            "{text}"
        );
        // `--explain --json` serialises this report: the same reason, with the timeout.
        let e = explanation(&c);
        let egress = e.rules.iter().find(|r| r.kind == "outbound_rule").unwrap();
        let tcp = egress.tcp.as_ref().unwrap();
        assert_eq!(tcp.idle_timeout, Duration::from_secs(6600));
        assert!(tcp.reason.contains("idlegate enforces 120 min"), "{tcp:?}");
        // At 100 min both pages agree: no note.
        let agreed = explain(&config(None, None, Some("100m")));
        assert!(!agreed.contains("enforces 120 min"), "{agreed}");
    }

    #[test]
    fn explain_tells_gcp_nats_time_wait_its_default_and_the_rules_own() {
        let gcp = |setting: &str| {
            let text = format!(
                "profile = \"gcp-nat\"\n[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
                 [[backend_pool]]\nname = \"vms\"\nmembers = [{{ name = \"vm1\", address = \"192.0.2.11\" }}]\n\
                 [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n{setting}\n"
            );
            Config::from_toml(&text, "test").unwrap()
        };
        let c = gcp("");
        let text = explain(&c);
        assert!(
            text.contains("outbound_rule egress: TIME_WAIT 30 s (runs 30s)\n    because: GCP Cloud NAT's default, what a gateway created on or after 30 September 2026 gets"),
            "{text}"
        );
        assert!(text.contains("set time_wait = \"120s\" for it"), "{text}");
        let e = explanation(&c);
        let t = e.rules[0].tcp.as_ref().unwrap().time_wait.as_ref().unwrap();
        assert_eq!(
            (t.time_wait, t.winner),
            (Duration::from_secs(30), Winner::ProfileDefault)
        );
        let e = explanation(&gcp("time_wait = \"120s\""));
        let t = e.rules[0].tcp.as_ref().unwrap().time_wait.as_ref().unwrap();
        assert_eq!(
            (t.time_wait, t.winner),
            (Duration::from_secs(120), Winner::Rule)
        );
        // Where TIME_WAIT cannot be set, the explanation has none.
        let e = explanation(&config(None, None, None));
        assert!(e
            .rules
            .iter()
            .all(|r| r.tcp.as_ref().unwrap().time_wait.is_none()));
    }

    #[test]
    fn an_azure_outbound_rule_above_120_min_is_refused_naming_both_pages() {
        let text = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
             [[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n\
             [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\nidle_timeout = \"121m\"\n";
        let err = Config::from_toml(text, "test").unwrap_err().to_string();
        assert!(
            err.contains("idle_timeout = 121m is above Azure LB's maximum of 120 min (allowed: 4 min to 120 min; Azure's \"Outbound rules\" page allows 4–120 min, its \"Load Balancer TCP Reset and Idle Timeout\" page says 4–100 min; idlegate enforces 120 min, the outbound rules page's)"),
            "{err}"
        );
    }

    #[test]
    fn explain_names_every_rule_its_timeout_and_the_winning_setting() {
        let report = explain(&config(Some("10m"), Some("20m"), Some("30m")));
        assert!(
            report.contains("lb_rule app: idle timeout 10 min"),
            "{report}"
        );
        assert!(
            report.contains("frontend \"public\" sets 10 min, which beats the rule's 20 min"),
            "{report}"
        );
        assert!(
            report.contains("outbound_rule egress: idle timeout 30 min"),
            "{report}"
        );
        assert!(report.contains("locked at 4 min"), "{report}");
        // The outbound rule takes UDP too ("all"): its UDP flows are told apart.
        assert!(
            report.contains("outbound_rule egress: UDP flows live 4 min"),
            "{report}"
        );
        assert!(
            !report.contains("lb_rule app: UDP"),
            "the LB rule is TCP only: {report}"
        );
    }

    #[test]
    fn a_frontend_idle_timeout_outside_the_public_ips_range_is_refused() {
        let text = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\nidle_timeout = \"31m\"\n\
                    [[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n\
                    [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n";
        let err = Config::from_toml(text, "t.toml").unwrap_err();
        assert_eq!(err.line, 4);
        assert!(
            err.message
                .contains("idle_timeout = 31m is above Azure LB's maximum of 30 min"),
            "{err}"
        );
    }

    #[test]
    fn explain_tells_the_per_state_timers_pickup_and_refresh_of_the_profile() {
        let conntrack = Config::from_toml(
            &crate::model::profile::example_config(&crate::model::profile::LINUX_CONNTRACK),
            "ct.toml",
        )
        .unwrap();
        let report = explain(&conntrack);
        assert!(report.contains("CLOSE_WAIT 1 min"), "{report}");
        assert!(report.contains("loose pickup"), "{report}");
        let alb = Config::from_toml(
            &crate::model::profile::example_config(&crate::model::profile::AWS_ALB),
            "alb",
        )
        .unwrap();
        let report = explain(&alb);
        assert!(
            report.contains("only new data keeps a flow alive"),
            "{report}"
        );
        assert!(!report.contains("loose pickup"), "{report}");
    }

    #[test]
    fn explain_says_which_timers_run_at_the_floor_and_why() {
        // Azure LB at time_scale 60: the 30 s handshake timer would run 500 ms, under TCP's
        // unscaled 1 s initial retransmission timeout (RFC 6298 §2.1).
        let c = config(None, Some("4m"), None);
        let c = Config {
            time_scale: 60,
            ..c
        };
        let report = explain(&c);
        assert!(
            report.contains(
                "SYN_RECV 30 s: 500 ms scaled, runs 3 s (floor: TCP's retransmission timeout is not scaled)"
            ),
            "{report}"
        );
        assert!(
            report.contains("SNAT hold after RST 15 s: 250 ms scaled, runs 3 s"),
            "{report}"
        );
        let e = explanation(&c);
        let syn_recv = &e.tcp_not_established[1];
        assert_eq!(syn_recv.state, "SYN_RECV");
        assert!(syn_recv.timer.floored);
        assert_eq!(syn_recv.timer.runs, Duration::from_secs(3));
        // The established idle timeout stays purely scaled.
        assert_eq!(
            e.rules[0].tcp.as_ref().unwrap().runs,
            Duration::from_secs(4)
        );
        // Unscaled, nothing runs at the floor.
        assert!(floored_timers(&Config { time_scale: 1, ..c }).is_empty());
    }

    fn at_scale_60(profile: &str, tables: &str) -> Config {
        let text = format!(
            "profile = \"{profile}\"\ntime_scale = 60\n\
             [[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
             [[frontend]]\nname = \"natgw-ip\"\naddress = \"203.0.113.20\"\n\
             [[backend_pool]]\nname = \"vms\"\nmembers = [{{ name = \"vm1\", address = \"192.0.2.11\" }}]\n\
             {tables}"
        );
        Config::from_toml(&text, "test").unwrap()
    }

    fn hold<'a>(holds: &'a [SnatHold], after: &str) -> &'a RacingTimer {
        &holds
            .iter()
            .find(|h| h.after == after)
            .unwrap_or_else(|| panic!("no hold after {after} in {holds:?}"))
            .timer
    }

    #[test]
    fn a_nat_gateways_own_timers_and_holds_are_explained_at_the_floor() {
        let c = at_scale_60(
            "azure-lb",
            "[[nat_gateway]]\nname = \"natgw\"\nfrontend = \"natgw-ip\"\nbackend_pools = [\"vms\"]\n",
        );
        let e = explanation(&c);
        let natgw = e.rules.iter().find(|r| r.kind == "nat_gateway").unwrap();
        let holds = natgw
            .snat_holds
            .as_deref()
            .expect("the NAT gateway's holds");
        let fin = hold(holds, "fin");
        assert_eq!(fin.timeout, Duration::from_secs(65), "not azure-lb's 240 s");
        assert_eq!(fin.runs, Duration::from_secs(3));
        assert!(fin.floored);
        assert_eq!(hold(holds, "idle").timeout, Duration::from_secs(16));
        assert_eq!(hold(holds, "idle").runs, Duration::from_secs(3));
        let states = natgw
            .tcp_not_established
            .as_deref()
            .expect("its TCP timers");
        assert_eq!(states.len(), 7);
        assert!(states.iter().all(|s| s.timer.floored));
        let floored = floored_timers(&c);
        assert!(
            floored.iter().any(|f| f.starts_with(
                "nat_gateway natgw: SNAT hold after FIN 65 s: 1083 ms scaled, runs 3 s"
            )),
            "{floored:?}"
        );
        // No outbound rule: no pool runs azure-lb's own 15 s hold after a RST.
        assert!(
            !floored
                .iter()
                .any(|f| f.starts_with("SNAT hold after RST 15 s")),
            "{floored:?}"
        );
        assert!(
            natgw
                .udp
                .as_ref()
                .unwrap()
                .reason
                .starts_with("Azure NAT Gateway's UDP timeout"),
            "{natgw:?}"
        );
        let text = explain(&c);
        assert!(
            text.contains("nat_gateway natgw: TCP flows not established: 30 s; SNAT port held 65 s after a FIN, 16 s after a RST, 16 s after an idle expiry"),
            "{text}"
        );
    }

    #[test]
    fn the_hold_after_an_idle_expiry_is_explained_at_the_floor() {
        let c = at_scale_60(
            "azure-natgw",
            "[[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n",
        );
        let e = explanation(&c);
        let idle = hold(&e.snat_holds, "idle");
        assert_eq!(idle.timeout, Duration::from_secs(16));
        assert_eq!(idle.runs, Duration::from_secs(3));
        assert!(idle.floored);
        let floored = floored_timers(&c);
        assert!(
            floored
                .iter()
                .any(|f| f
                    .starts_with("SNAT hold after an idle expiry 16 s: 266 ms scaled, runs 3 s")),
            "{floored:?}"
        );
    }

    #[test]
    fn a_gcp_rules_hold_after_a_fin_follows_its_time_wait() {
        let c = at_scale_60(
            "gcp-nat",
            "[[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\ntime_wait = \"120s\"\n",
        );
        let e = explanation(&c);
        let egress = &e.rules[0];
        let fin = hold(egress.snat_holds.as_deref().unwrap(), "fin");
        assert_eq!(
            fin.timeout,
            Duration::from_secs(120),
            "the rule's time_wait"
        );
        assert_eq!(fin.runs, Duration::from_secs(3));
        assert_eq!(
            outbound_holds(&c, 0).after_fin,
            Duration::from_secs(120),
            "what the engine holds"
        );
        let floored = floored_timers(&c);
        assert!(
            floored.iter().any(|f| f.starts_with(
                "outbound_rule egress: SNAT hold after FIN 2 min: 2 s scaled, runs 3 s"
            )),
            "{floored:?}"
        );
    }
}
