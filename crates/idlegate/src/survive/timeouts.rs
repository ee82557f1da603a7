//! The idle timeouts a config's box applies, rule by rule, and which of them a host's
//! connection meets: what `advise --config` and `audit --config` judge by.
//!
//! Contract: pure. [`Timeouts::of`] resolves each rule's effective idle timeout with the
//! config's own precedence ([`idlegate_core::precedence`]: a frontend's beats an LB rule's, a
//! NAT gateway beats an outbound rule), unscaled (a lab's `time_scale` only speeds up the
//! lab). Rules that take no TCP are left out: keepalive is TCP's. A config from
//! `idlegate import` has lab addresses, so a connection is matched by what survives the import,
//! its ports and direction ([`Timeouts::for_connection`]): one whose local port is an inbound
//! (LB or inbound NAT) rule's backend port is that rule's, the shortest of them if several;
//! any other is on the outbound path, judged by the shortest outbound rule or NAT gateway.

use idlegate_core::config::Config;
use idlegate_core::packet::Protocol;
use idlegate_core::precedence::{self, Winner};
use serde::Serialize;
use std::time::Duration;

/// Which way a rule's connections are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From the outside to a member: LB and inbound NAT rules.
    Inbound,
    /// From a member to the outside: outbound rules and NAT gateways.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// What kind of rule of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    LbRule,
    InboundNatRule,
    OutboundRule,
    NatGateway,
}

impl Kind {
    /// As the config's tables call it.
    pub fn table(self) -> &'static str {
        match self {
            Kind::LbRule => "lb_rule",
            Kind::InboundNatRule => "inbound_nat_rule",
            Kind::OutboundRule => "outbound_rule",
            Kind::NatGateway => "nat_gateway",
        }
    }
}

/// One rule's effective idle timeout and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleTimeout {
    pub rule: String,
    pub kind: Kind,
    pub direction: Direction,
    /// The member port an inbound rule forwards to (what a member's listening socket has).
    pub backend_port: Option<u16>,
    #[serde(rename = "idle_timeout_s", serialize_with = "secs")]
    pub idle_timeout: Duration,
    /// The setting that decided it.
    pub winner: Winner,
    /// Why, in a sentence.
    pub reason: String,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl RuleTimeout {
    /// `lb_rule "app"`.
    pub fn name(&self) -> String {
        format!("{} \"{}\"", self.kind.table(), self.rule)
    }
}

/// The rule a connection was matched to, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'a> {
    pub rule: &'a RuleTimeout,
    /// How many rules could have carried it (several outbound paths, or inbound rules on the
    /// same backend port): it is judged by the shortest.
    pub among: usize,
    /// What those rules are.
    pub of: Among,
}

/// What a connection's rule was the shortest of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Among {
    /// Inbound rules forwarding to its local port.
    InboundRules,
    /// The config's outbound rules and NAT gateways.
    OutboundPaths,
    /// Every rule: the config has no outbound path, so nothing says which one it meets.
    AllRules,
}

/// Every TCP rule's effective idle timeout, in the config's order: LB rules, inbound NAT rules,
/// NAT gateways, outbound rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub rules: Vec<RuleTimeout>,
}

impl Timeouts {
    pub fn of(config: &Config) -> Timeouts {
        let tcp = |p: idlegate_core::config::Protocols| p.matches(Protocol::Tcp);
        let mut rules = Vec::new();
        let mut push =
            |rule: &str, kind, backend_port: Option<u16>, applied: precedence::Applied| {
                rules.push(RuleTimeout {
                    rule: rule.to_string(),
                    kind,
                    direction: if backend_port.is_some() {
                        Direction::Inbound
                    } else {
                        Direction::Outbound
                    },
                    backend_port,
                    idle_timeout: applied.timeout,
                    winner: applied.winner,
                    reason: applied.reason,
                })
            };
        for (i, r) in config.lb_rules.iter().enumerate() {
            if tcp(r.protocol) {
                let applied = precedence::lb_rule(config, i);
                push(&r.name, Kind::LbRule, Some(r.backend_port), applied);
            }
        }
        for (i, r) in config.inbound_nat_rules.iter().enumerate() {
            if tcp(r.protocol) {
                let applied = precedence::inbound_nat_rule(config, i);
                push(&r.name, Kind::InboundNatRule, Some(r.backend_port), applied);
            }
        }
        for g in &config.nat_gateways {
            let applied = precedence::Applied {
                timeout: g.idle.timeout,
                expiry: g.idle.expiry,
                winner: Winner::NatGateway,
                reason: "the NAT gateway's own".to_string(),
            };
            push(&g.name, Kind::NatGateway, None, applied);
        }
        for (i, r) in config.outbound_rules.iter().enumerate() {
            if tcp(r.protocol) {
                let applied = precedence::outbound_rule(config, i);
                push(&r.name, Kind::OutboundRule, None, applied);
            }
        }
        Timeouts { rules }
    }

    /// The shortest timeout of all: the one system-wide keepalive setting that fits every rule.
    pub fn shortest(&self) -> Option<&RuleTimeout> {
        self.rules.iter().min_by_key(|r| r.idle_timeout)
    }

    /// The rule whose timeout a connection from `local_port` to an outside remote meets: an
    /// inbound rule whose backend port is `local_port`, else the outbound path. None when the
    /// config has no rule for it (no outbound rule or NAT gateway).
    pub fn for_connection(&self, local_port: u16) -> Option<Match<'_>> {
        let inbound = |r: &&RuleTimeout| r.backend_port == Some(local_port);
        let outbound = |r: &&RuleTimeout| r.direction == Direction::Outbound;
        shortest_of(
            self.rules.iter().filter(inbound).collect(),
            Among::InboundRules,
        )
        .or_else(|| {
            shortest_of(
                self.rules.iter().filter(outbound).collect(),
                Among::OutboundPaths,
            )
        })
    }

    /// As [`Timeouts::for_connection`], and when the config has no outbound path, the shortest
    /// of all its rules (said so). None only for a config without a TCP rule.
    pub fn judging(&self, local_port: u16) -> Option<Match<'_>> {
        self.for_connection(local_port).or_else(|| {
            self.shortest().map(|rule| Match {
                rule,
                among: self.rules.len(),
                of: Among::AllRules,
            })
        })
    }
}

/// The rule of shortest timeout among `among`.
fn shortest_of(among: Vec<&RuleTimeout>, of: Among) -> Option<Match<'_>> {
    let n = among.len();
    among
        .into_iter()
        .min_by_key(|r| r.idle_timeout)
        .map(|rule| Match { rule, among: n, of })
}

impl Match<'_> {
    /// `lb_rule "app" (240 s, the rule's own; ...)` and, when several could carry it, that
    /// the shortest was taken.
    pub fn describe(&self) -> String {
        let r = self.rule;
        let mut text = format!("{} ({} s", r.name(), r.idle_timeout.as_secs());
        let what = match self.of {
            Among::InboundRules => "inbound rules on this backend port",
            Among::OutboundPaths => "outbound paths",
            Among::AllRules => "rules: the config has no outbound rule or NAT gateway",
        };
        if self.among > 1 || self.of == Among::AllRules {
            text += &format!(", the shortest of {} {what}", self.among);
        }
        text + ")"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"profile = "azure-lb"
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{{ name = "vm1", address = "192.0.2.11" }}]
[[lb_rule]]
name = "app"
frontend = "public"
frontend_port = 443
backend_pool = "vms"
backend_port = 8443
idle_timeout = "30m"
[[inbound_nat_rule]]
name = "ssh"
frontend = "public"
frontend_port_range = [50000, 50000]
backend_pool = "vms"
backend_port = 22
idle_timeout = "10m"
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
idle_timeout = "15m"
{extra}"#
        );
        Config::from_toml(&text, "t.toml").unwrap()
    }

    #[test]
    fn each_connection_meets_the_timeout_of_the_rule_its_ports_and_direction_name() {
        let t = Timeouts::of(&config(""));
        let by = |port| {
            t.for_connection(port)
                .map(|m| (m.rule.rule.clone(), m.among))
        };
        assert_eq!(by(8443), Some(("app".into(), 1)), "a backend port: inbound");
        assert_eq!(by(22), Some(("ssh".into(), 1)));
        assert_eq!(
            by(40000),
            Some(("egress".into(), 1)),
            "anything else: outbound"
        );
        assert_eq!(
            t.rules
                .iter()
                .map(|r| r.idle_timeout.as_secs())
                .collect::<Vec<_>>(),
            vec![1800, 600, 900]
        );
        assert_eq!(t.shortest().unwrap().rule, "ssh");
    }

    #[test]
    fn a_frontends_timeout_beats_the_lb_rules_and_a_udp_rule_is_left_out() {
        let text = config("").lb_rules.len();
        assert_eq!(text, 1);
        let with_udp = config(
            r#"[[lb_rule]]
name = "dns"
frontend = "public"
protocol = "udp"
frontend_port = 53
backend_pool = "vms"
backend_port = 53
"#,
        );
        let t = Timeouts::of(&with_udp);
        assert!(t.rules.iter().all(|r| r.rule != "dns"), "{t:?}");
        let mut framed = config("");
        framed.frontends[0].idle_timeout = Some(Duration::from_secs(420));
        let t = Timeouts::of(&framed);
        let app = &t.for_connection(8443).unwrap().rule;
        assert_eq!(
            (app.idle_timeout.as_secs(), app.winner),
            (420, Winner::Frontend)
        );
        let egress = &t.for_connection(1).unwrap().rule;
        assert_eq!(
            egress.idle_timeout.as_secs(),
            900,
            "a frontend's never reaches outbound"
        );
    }

    #[test]
    fn without_an_outbound_path_an_outbound_connection_meets_no_rule() {
        let mut c = config("");
        c.outbound_rules.clear();
        assert_eq!(Timeouts::of(&c).for_connection(40000), None);
    }
}
