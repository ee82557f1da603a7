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
//! on a host that is not a member (no `--member`), one whose remote port is an inbound rule's
//! frontend port is a client's connection through that rule; any other is on the outbound
//! path. Which outbound path depends on the host's pool, which
//! addresses cannot tell: [`Timeouts::for_member`] keeps only the rules that hold the member
//! the user named (its pools' NAT gateway, which beats their outbound rules, or those rules);
//! without a member, an outbound connection is judged by the shortest outbound path, and
//! [`Timeouts::member_hint`] says so when there are several.

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
    /// The frontend ports an inbound rule listens on (what a client's remote port is).
    #[serde(skip)]
    pub frontend_ports: Option<std::ops::RangeInclusive<u16>>,
    #[serde(rename = "idle_timeout_s", serialize_with = "secs")]
    pub idle_timeout: Duration,
    /// The setting that decided it.
    pub winner: Winner,
    /// Why, in a sentence.
    pub reason: String,
    /// The members whose connections the rule carries (its pool's, or its pools').
    #[serde(skip)]
    pub members: Vec<String>,
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
    /// Inbound rules listening on its remote port: a client's connection through the box.
    FrontendRules,
    /// The config's outbound rules and NAT gateways.
    OutboundPaths,
    /// Every rule: the config has no outbound path, so nothing says which one it meets.
    AllRules,
    /// Every rule of the member: no outbound rule or NAT gateway serves its pools.
    MemberRules,
}

/// Every TCP rule's effective idle timeout, in the config's order: LB rules, inbound NAT rules,
/// NAT gateways, outbound rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub rules: Vec<RuleTimeout>,
    /// The member whose rules these are ([`Timeouts::for_member`]); None: every rule.
    pub member: Option<String>,
    /// Every member's name in the config, each once, in the config's order.
    pub members: Vec<String>,
}

impl Timeouts {
    pub fn of(config: &Config) -> Timeouts {
        let tcp = |p: idlegate_core::config::Protocols| p.matches(Protocol::Tcp);
        let names = |members: &[idlegate_core::config::Member]| {
            members.iter().map(|m| m.name.clone()).collect::<Vec<_>>()
        };
        let pool = |i: usize| names(&config.backend_pools[i].members);
        let mut members: Vec<String> = Vec::new();
        let all = config
            .backend_pools
            .iter()
            .flat_map(|p| &p.members)
            .chain(config.inbound_nat_rules.iter().flat_map(|r| &r.members));
        for m in all {
            if !members.contains(&m.name) {
                members.push(m.name.clone());
            }
        }
        let mut rules = Vec::new();
        let mut push = |rule: &str,
                        kind,
                        ports: Option<(u16, std::ops::RangeInclusive<u16>)>,
                        applied: precedence::Applied,
                        members: Vec<String>| {
            let (backend_port, frontend_ports) = ports.unzip();
            rules.push(RuleTimeout {
                rule: rule.to_string(),
                kind,
                direction: if backend_port.is_some() {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                },
                backend_port,
                frontend_ports,
                idle_timeout: applied.timeout,
                winner: applied.winner,
                reason: applied.reason,
                members,
            })
        };
        for (i, r) in config.lb_rules.iter().enumerate() {
            if tcp(r.protocol) {
                let applied = precedence::lb_rule(config, i);
                let members = pool(r.backend_pool);
                let ports = (r.backend_port, r.frontend_port..=r.frontend_port);
                push(&r.name, Kind::LbRule, Some(ports), applied, members);
            }
        }
        for (i, r) in config.inbound_nat_rules.iter().enumerate() {
            if tcp(r.protocol) {
                let applied = precedence::inbound_nat_rule(config, i);
                let ports = (r.backend_port, r.first_port..=r.last_port);
                let members = names(&r.members);
                push(&r.name, Kind::InboundNatRule, Some(ports), applied, members);
            }
        }
        for g in &config.nat_gateways {
            let applied = precedence::Applied {
                timeout: g.idle.timeout,
                expiry: g.idle.expiry,
                winner: Winner::NatGateway,
                reason: "the NAT gateway's own".to_string(),
            };
            let members = g.backend_pools.iter().flat_map(|&i| pool(i)).collect();
            push(&g.name, Kind::NatGateway, None, applied, members);
        }
        for (i, r) in config.outbound_rules.iter().enumerate() {
            if tcp(r.protocol) {
                let applied = precedence::outbound_rule(config, i);
                let members = pool(r.backend_pool);
                push(&r.name, Kind::OutboundRule, None, applied, members);
            }
        }
        Timeouts {
            rules,
            member: None,
            members,
        }
    }

    /// Only the rules that carry member `name`'s connections, an outbound rule left out where
    /// a NAT gateway of the member's pool beats it (Azure: a NAT gateway takes precedence over
    /// outbound rules); None when the config has no such member.
    pub fn for_member(&self, name: &str) -> Option<Timeouts> {
        if !self.members.iter().any(|m| m == name) {
            return None;
        }
        let holds = |r: &&RuleTimeout| r.members.iter().any(|m| m == name);
        let beaten =
            |r: &&RuleTimeout| r.kind == Kind::OutboundRule && r.winner == Winner::NatGateway;
        Some(Timeouts {
            rules: self
                .rules
                .iter()
                .filter(holds)
                .filter(|r| !beaten(r))
                .cloned()
                .collect(),
            member: Some(name.to_string()),
            members: self.members.clone(),
        })
    }

    /// The outbound rules and NAT gateways.
    pub fn outbound_paths(&self) -> impl Iterator<Item = &RuleTimeout> {
        self.rules
            .iter()
            .filter(|r| r.direction == Direction::Outbound)
    }

    /// Without a member, when the config has several outbound paths: that an outbound
    /// connection is judged by the shortest, and how to name the host's member instead.
    pub fn member_hint(&self) -> Option<String> {
        let paths = self.outbound_paths().count();
        if self.member.is_some() || paths < 2 {
            return None;
        }
        let shortest = self.outbound_paths().min_by_key(|r| r.idle_timeout)?;
        Some(format!(
            "{paths} outbound paths: an outbound connection is judged by the shortest, {}; \
             say which member this host is with --member NAME (the members: {})",
            shortest.name(),
            self.members.join(", ")
        ))
    }

    /// The shortest timeout of all: the one system-wide keepalive setting that fits every rule.
    pub fn shortest(&self) -> Option<&RuleTimeout> {
        self.rules.iter().min_by_key(|r| r.idle_timeout)
    }

    /// The rule whose timeout a connection from `local_port` to `remote_port` meets: an
    /// inbound rule whose backend port is `local_port`; else, on a host that is not a member
    /// (no `--member`), an inbound rule whose frontend port is `remote_port` (a client of the
    /// box); else the outbound path. None when the config has no rule for it (no outbound rule
    /// or NAT gateway).
    pub fn for_connection(&self, local_port: u16, remote_port: u16) -> Option<Match<'_>> {
        let inbound = |r: &&RuleTimeout| r.backend_port == Some(local_port);
        let through = |r: &&RuleTimeout| {
            self.member.is_none()
                && r.frontend_ports
                    .as_ref()
                    .is_some_and(|p| p.contains(&remote_port))
        };
        let outbound = |r: &&RuleTimeout| r.direction == Direction::Outbound;
        shortest_of(
            self.rules.iter().filter(inbound).collect(),
            Among::InboundRules,
        )
        .or_else(|| {
            shortest_of(
                self.rules.iter().filter(through).collect(),
                Among::FrontendRules,
            )
        })
        .or_else(|| {
            shortest_of(
                self.rules.iter().filter(outbound).collect(),
                Among::OutboundPaths,
            )
        })
    }

    /// As [`Timeouts::for_connection`], and when the config has no outbound path, the shortest
    /// of all its rules (said so). None only for a config without a TCP rule.
    pub fn judging(&self, local_port: u16, remote_port: u16) -> Option<Match<'_>> {
        self.for_connection(local_port, remote_port).or_else(|| {
            self.shortest().map(|rule| Match {
                rule,
                among: self.rules.len(),
                of: match self.member {
                    Some(_) => Among::MemberRules,
                    None => Among::AllRules,
                },
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
            Among::FrontendRules => "inbound rules on this frontend port",
            Among::OutboundPaths => "outbound paths",
            Among::AllRules => "rules: the config has no outbound rule or NAT gateway",
            Among::MemberRules => {
                "rules of the member: no outbound rule or NAT gateway serves its pools"
            }
        };
        if self.of == Among::MemberRules && self.among == 1 {
            text += ", the member's only rule: no outbound rule or NAT gateway serves its pools";
        } else if self.among > 1 || matches!(self.of, Among::AllRules | Among::MemberRules) {
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
            t.for_connection(port, 1)
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
        let app = &t.for_connection(8443, 1).unwrap().rule;
        assert_eq!(
            (app.idle_timeout.as_secs(), app.winner),
            (420, Winner::Frontend)
        );
        let egress = &t.for_connection(1, 1).unwrap().rule;
        assert_eq!(
            egress.idle_timeout.as_secs(),
            900,
            "a frontend's never reaches outbound"
        );
    }

    #[test]
    fn a_clients_connection_to_an_inbound_rules_frontend_port_is_judged_by_that_rule() {
        let t = Timeouts::of(&config(""));
        let m = t.for_connection(40000, 443).unwrap();
        assert_eq!((m.rule.rule.as_str(), m.of), ("app", Among::FrontendRules));
        assert!(
            m.describe().starts_with("lb_rule \"app\" (1800 s"),
            "{}",
            m.describe()
        );
        let ssh = t.for_connection(40000, 50000).unwrap();
        assert_eq!(ssh.rule.rule, "ssh");
        assert_eq!(t.for_connection(40000, 80).unwrap().rule.rule, "egress");
        let vm1 = t.for_member("vm1").unwrap();
        assert_eq!(
            vm1.for_connection(40000, 443).unwrap().rule.rule,
            "egress",
            "a member's connection to port 443 leaves by its outbound path"
        );
    }

    #[test]
    fn without_an_outbound_path_an_outbound_connection_meets_no_rule() {
        let mut c = config("");
        c.outbound_rules.clear();
        assert_eq!(Timeouts::of(&c).for_connection(40000, 1), None);
    }

    /// Two pools: "web" (vm1) leaves by outbound rule "web-out" at 30 min; "workers" (vm2) by
    /// NAT gateway "natgw" at 4 min, which beats its outbound rule "workers-out" at 20 min.
    /// Both pools serve an LB rule on backend port 8080.
    fn two_pools() -> Config {
        let text = r#"profile = "azure-lb"
[[frontend]]
name = "public"
address = "203.0.113.10"
[[frontend]]
name = "natgw-ip"
address = "203.0.113.20"
[[backend_pool]]
name = "web"
members = [{ name = "vm1", address = "192.0.2.11" }]
[[backend_pool]]
name = "workers"
members = [{ name = "vm2", address = "192.0.2.12" }]
[[lb_rule]]
name = "web-app"
frontend = "public"
frontend_port = 80
backend_pool = "web"
backend_port = 8080
idle_timeout = "25m"
[[lb_rule]]
name = "workers-app"
frontend = "public"
frontend_port = 81
backend_pool = "workers"
backend_port = 8080
idle_timeout = "5m"
[[outbound_rule]]
name = "web-out"
frontend = "public"
backend_pool = "web"
idle_timeout = "30m"
[[outbound_rule]]
name = "workers-out"
frontend = "public"
backend_pool = "workers"
idle_timeout = "20m"
[[nat_gateway]]
name = "natgw"
frontend = "natgw-ip"
backend_pools = ["workers"]
idle_timeout = "4m"
"#;
        Config::from_toml(text, "two.toml").unwrap()
    }

    fn judged(t: &Timeouts, port: u16) -> (String, u64, usize, Among) {
        let m = t.judging(port, 1).unwrap();
        (
            m.rule.rule.clone(),
            m.rule.idle_timeout.as_secs(),
            m.among,
            m.of,
        )
    }

    #[test]
    fn a_members_connections_meet_its_own_pools_rules_and_a_nat_gateway_beats_its_outbound_rule() {
        let all = Timeouts::of(&two_pools());
        assert_eq!(all.members, ["vm1", "vm2"]);
        let vm1 = all.for_member("vm1").unwrap();
        assert_eq!(vm1.member.as_deref(), Some("vm1"));
        assert_eq!(
            judged(&vm1, 40000),
            ("web-out".into(), 1800, 1, Among::OutboundPaths),
            "vm1 leaves by its pool's outbound rule, not by the other pool's NAT gateway"
        );
        assert_eq!(
            judged(&vm1, 8080),
            ("web-app".into(), 1500, 1, Among::InboundRules),
            "the LB rule of vm1's pool, not the other pool's on the same port"
        );
        let vm2 = all.for_member("vm2").unwrap();
        assert_eq!(
            judged(&vm2, 40000),
            ("natgw".into(), 240, 1, Among::OutboundPaths),
            "the NAT gateway, its pool's outbound rule left out"
        );
        assert!(vm2.rules.iter().all(|r| r.rule != "workers-out"), "{vm2:?}");
        assert_eq!(
            judged(&vm2, 8080),
            ("workers-app".into(), 300, 1, Among::InboundRules)
        );
        assert_eq!(vm1.member_hint(), None);
        assert_eq!(all.for_member("vm9"), None);
    }

    #[test]
    fn without_a_member_several_outbound_paths_are_judged_by_the_shortest_and_the_hint_names_the_members(
    ) {
        let all = Timeouts::of(&two_pools());
        let (rule, secs, among, of) = judged(&all, 40000);
        assert_eq!((secs, among, of), (240, 3, Among::OutboundPaths), "{rule}");
        assert_eq!(
            all.member_hint().as_deref(),
            Some(
                "3 outbound paths: an outbound connection is judged by the shortest, \
                 nat_gateway \"natgw\"; say which member this host is with --member NAME \
                 (the members: vm1, vm2)"
            )
        );
        assert_eq!(
            Timeouts::of(&config("")).member_hint(),
            None,
            "one path: no hint"
        );
    }

    #[test]
    fn a_member_without_an_outbound_path_is_judged_by_the_shortest_of_its_own_rules() {
        let mut c = two_pools();
        c.outbound_rules.retain(|r| r.name != "web-out");
        let vm1 = Timeouts::of(&c).for_member("vm1").unwrap();
        let m = vm1.judging(40000, 7000).unwrap();
        assert_eq!(
            (m.rule.rule.as_str(), m.of),
            ("web-app", Among::MemberRules)
        );
        assert_eq!(
            m.describe(),
            "lb_rule \"web-app\" (1500 s, the member's only rule: no outbound rule or NAT gateway serves its pools)"
        );
    }
}
