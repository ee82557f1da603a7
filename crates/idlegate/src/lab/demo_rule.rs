//! `idlegate lab demo --config FILE [--rule NAME]`: the demo's conversation through one rule of
//! the user's own config, with that rule's idle timeout (precedence applied: a frontend's
//! idle timeout may beat an inbound rule's, a NAT gateway an outbound rule's) and its own
//! expiry action.
//!
//! Two connections, one after the other (both go through the same frontend port and backend
//! port): `no-keepalive`, a plain socket, whose verdict the rule's expiry decides, and
//! `keepalive`, with TCP keepalive at half the timeout. Inbound rules (LB, inbound NAT): from
//! `internet` to the rule's frontend and port, the server in the rule's first member on its
//! backend port (an LB rule's pool is narrowed to its first member in the demo's lab, so that
//! the balancer cannot pick a member without the server). Outbound rules and NAT gateways:
//! from the first member of the pool to a server in `internet`. The default rule: the first
//! LB rule that carries TCP, else the first such outbound rule, else the first NAT gateway.

use crate::lab::demo::{self, Options, Report};
use crate::lab::scenario::{self, Outcome, Script};
use crate::lab::{Lab, INTERNET, INTERNET_ADDRESS, INTERNET_ADDRESS_V6};
use crate::obs::report::{Report as _, Status};
use anyhow::{anyhow, Result};
use idlegate_core::config::human;
use idlegate_core::precedence::{self, Applied, Winner};
use idlegate_core::Config;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

/// The outside server's port for outbound rules.
const OUTSIDE_PORT: u16 = 8000;

/// A rule of the config, by table and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleRef {
    LbRule(usize),
    InboundNatRule(usize),
    NatGateway(usize),
    OutboundRule(usize),
}

impl RuleRef {
    /// The config's table: `lb_rule`, `inbound_nat_rule`, `nat_gateway`, `outbound_rule`.
    pub fn kind(self) -> &'static str {
        match self {
            RuleRef::LbRule(_) => "lb_rule",
            RuleRef::InboundNatRule(_) => "inbound_nat_rule",
            RuleRef::NatGateway(_) => "nat_gateway",
            RuleRef::OutboundRule(_) => "outbound_rule",
        }
    }
}

/// Every rule of `config`, with its name and whether it carries TCP, in the config's order of
/// tables.
fn rules(config: &Config) -> Vec<(RuleRef, &str, bool)> {
    let tcp = |p: idlegate_core::config::Protocols| p != idlegate_core::config::Protocols::Udp;
    let lb = config.lb_rules.iter().enumerate();
    let nat = config.inbound_nat_rules.iter().enumerate();
    let out = config.outbound_rules.iter().enumerate();
    let gw = config.nat_gateways.iter().enumerate();
    lb.map(|(i, r)| (RuleRef::LbRule(i), r.name.as_str(), tcp(r.protocol)))
        .chain(nat.map(|(i, r)| (RuleRef::InboundNatRule(i), r.name.as_str(), tcp(r.protocol))))
        .chain(out.map(|(i, r)| (RuleRef::OutboundRule(i), r.name.as_str(), tcp(r.protocol))))
        .chain(gw.map(|(i, g)| (RuleRef::NatGateway(i), g.name.as_str(), true)))
        .collect()
}

/// "app (lb_rule), dns (lb_rule, UDP only), egress (outbound_rule)".
fn listing(config: &Config) -> String {
    let names: Vec<String> = rules(config)
        .into_iter()
        .map(|(r, name, tcp)| match tcp {
            true => format!("{name} ({})", r.kind()),
            false => format!("{name} ({}, UDP only)", r.kind()),
        })
        .collect();
    names.join(", ")
}

/// The rule the demo runs through: `wanted` by name, else the default (module doc). Errors
/// are usage errors naming the config file, with the config's rules in the hint.
pub fn choose(config: &Config, file: &str, wanted: Option<&str>) -> Result<RuleRef> {
    let all = rules(config);
    let listed = || format!("the rules of {file}: {}", listing(config));
    match wanted {
        Some(name) => match all.iter().find(|(_, n, _)| *n == name) {
            Some(&(r, _, true)) => Ok(r),
            Some(&(r, _, false)) => Err(anyhow!(
                "--rule {name}: {} {name} of {file} is UDP only; the demo's connections are TCP (their verdicts rest on TCP's acknowledgements, keepalive and resets)",
                r.kind()
            ))
            .with_hint(|| format!("pick a TCP rule: {}", listed()))
            .status(Status::Usage),
            None => Err(anyhow!("--rule {name}: no such rule in {file}"))
                .with_hint(|| format!("--rule NAME, one of {}", listed()))
                .status(Status::Usage),
        },
        None => {
            let first = |kind: fn(RuleRef) -> bool| {
                all.iter()
                    .find(|&&(r, _, tcp)| tcp && kind(r))
                    .map(|&(r, _, _)| r)
            };
            first(|r| matches!(r, RuleRef::LbRule(_)))
                .or_else(|| first(|r| matches!(r, RuleRef::OutboundRule(_))))
                .or_else(|| first(|r| matches!(r, RuleRef::NatGateway(_))))
                .ok_or_else(|| {
                    anyhow!("{file} has no TCP LB rule, outbound rule or NAT gateway to run the demo through")
                })
                .with_hint(|| format!("--rule NAME, one of {}", listed()))
                .status(Status::Usage)
        }
    }
}

/// The config file and the rule, as `--json` reports them.
#[derive(Debug, Serialize)]
pub struct RuleReport {
    /// The config file, as given.
    pub config: String,
    pub name: String,
    /// `lb_rule`, `inbound_nat_rule`, `nat_gateway`, `outbound_rule`.
    pub kind: &'static str,
    /// The real (unscaled) idle timeout the rule's flows get.
    pub real_idle_timeout_s: f64,
    /// The setting that decided it.
    pub timeout_from: Winner,
    /// Why, in a sentence.
    pub reason: String,
}

/// Where the demo's connections go for a rule.
struct Route {
    client: String,
    server: String,
    listen: SocketAddr,
    connect: SocketAddr,
}

/// The unspecified address of `ip`'s family.
fn any_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// The applied timeout of `rule`, and where its connections go; narrows an LB rule's pool in
/// `config` to its first member.
fn resolve(config: &mut Config, rule: RuleRef) -> Result<(Applied, Route)> {
    let internet_of = |ip: IpAddr| -> IpAddr {
        match ip {
            IpAddr::V4(_) => INTERNET_ADDRESS.into(),
            IpAddr::V6(_) => INTERNET_ADDRESS_V6.into(),
        }
    };
    let outbound = |config: &Config, pool: usize, frontend: usize| -> Result<Route> {
        let member = config.backend_pools[pool]
            .members
            .first()
            .ok_or_else(|| anyhow!("pool {} has no member", config.backend_pools[pool].name))?;
        let internet = internet_of(config.frontends[frontend].address);
        Ok(Route {
            client: member.name.clone(),
            server: INTERNET.to_string(),
            listen: SocketAddr::new(any_of(internet), OUTSIDE_PORT),
            connect: SocketAddr::new(internet, OUTSIDE_PORT),
        })
    };
    Ok(match rule {
        RuleRef::LbRule(i) => {
            let r = config.lb_rules[i].clone();
            let pool = &mut config.backend_pools[r.backend_pool];
            pool.members.truncate(1);
            let member = pool
                .members
                .first()
                .ok_or_else(|| anyhow!("pool {} has no member", pool.name))?;
            let path = Route {
                client: INTERNET.to_string(),
                server: member.name.clone(),
                listen: SocketAddr::new(any_of(member.address), r.backend_port),
                connect: SocketAddr::new(config.frontends[r.frontend].address, r.frontend_port),
            };
            (precedence::lb_rule(config, i), path)
        }
        RuleRef::InboundNatRule(i) => {
            let r = &config.inbound_nat_rules[i];
            let member = r
                .members
                .first()
                .ok_or_else(|| anyhow!("inbound NAT rule {} has no member", r.name))?;
            let path = Route {
                client: INTERNET.to_string(),
                server: member.name.clone(),
                listen: SocketAddr::new(any_of(member.address), r.backend_port),
                connect: SocketAddr::new(config.frontends[r.frontend].address, r.first_port),
            };
            (precedence::inbound_nat_rule(config, i), path)
        }
        RuleRef::OutboundRule(i) => {
            let r = &config.outbound_rules[i];
            let path = outbound(config, r.backend_pool, r.frontend)?;
            (precedence::outbound_rule(config, i), path)
        }
        RuleRef::NatGateway(i) => {
            let g = &config.nat_gateways[i];
            let pool = *g
                .backend_pools
                .first()
                .ok_or_else(|| anyhow!("NAT gateway {} serves no pool", g.name))?;
            let path = outbound(config, pool, g.frontend)?;
            (precedence::nat_gateway(config, i), path)
        }
    })
}

/// Runs the demo through one rule of `config` (read from `file`) and prints its report.
pub fn run(options: &Options, mut config: Config, file: &Path) -> Result<()> {
    let html = options.html_output()?;
    crate::lab::ensure_root()?;
    let shown = file.display().to_string();
    let rule = choose(&config, &shown, options.rule.as_deref())?;
    if let Some(scale) = options.time_scale {
        let max = idlegate_core::config::max_time_scale(config.profile);
        if !(1..=max).contains(&scale) {
            return Err(anyhow!(
                "--time-scale {scale}: must be from 1 to {max} with profile {}",
                config.profile.name
            ))
            .status(Status::Usage);
        }
        config.time_scale = scale;
    }
    let name = rules(&config)
        .into_iter()
        .find(|&(r, _, _)| r == rule)
        .map(|(_, n, _)| n.to_string())
        .unwrap_or_default();
    let (applied, path) = resolve(&mut config, rule)?;
    let idle = config.scaled(applied.timeout);
    if idle < Duration::from_secs(2) {
        return Err(anyhow!(
            "{} {name}: its idle timeout {} scaled 1/{} runs {idle:?}; the demo needs at least 2 s, because TCP keepalive counts whole seconds and must fire at half the timeout",
            rule.kind(),
            human(applied.timeout),
            config.time_scale
        ))
        .hint("--time-scale N with a smaller N")
        .status(Status::Usage);
    }
    if !options.json {
        println!(
            "{}",
            header(&config, &shown, rule, &name, &applied, idle, &path)
        );
    }
    // `lab list` shows the file the demo's lab was built from.
    let extras = crate::lab::Extras {
        config_path: Some(std::path::absolute(file).unwrap_or(file.to_path_buf())),
        ..Default::default()
    };
    let (outcomes, counters) = Lab::with_gateway_and(&options.name, &config, extras, |lab| {
        one_after_the_other(lab, &path, idle, !options.json)
    })?;
    let mut report = Report::new(
        (config.profile.name, applied.expiry, config.time_scale),
        idle,
        &outcomes,
        &counters,
    );
    report.rule = Some(RuleReport {
        config: shown,
        name,
        kind: rule.kind(),
        real_idle_timeout_s: applied.timeout.as_secs_f64(),
        timeout_from: applied.winner,
        reason: applied.reason,
    });
    demo::print_report(options.json, html.as_ref(), &report, &outcomes)
}

/// The demo's two connections: each with its keepalive interval.
fn connections(idle: Duration) -> [(&'static str, Option<Duration>); 2] {
    [
        ("no-keepalive", None),
        ("keepalive", Some(demo::keepalive_interval(idle))),
    ]
}

/// How long one connection of the conversation for `idle` runs: its last send, then the
/// watch after it.
fn one_connection(idle: Duration) -> Duration {
    let (sends, observe) = demo::conversation(idle);
    sends.last().map_or(Duration::ZERO, |(at, _)| *at) + observe
}

/// The two connections, one after the other, on one timeline; with `progress`, a line on
/// stdout as each starts.
fn one_after_the_other(
    lab: &Lab,
    path: &Route,
    idle: Duration,
    progress: bool,
) -> Result<Vec<Outcome>> {
    let (sends, observe) = demo::conversation(idle);
    let start = Instant::now();
    let mut outcomes = Vec::new();
    let all = connections(idle);
    for (n, (name, keepalive)) in all.into_iter().enumerate() {
        let offset = start.elapsed();
        if progress {
            println!(
                "{:.1}s: connection {name} starts ({} of {}), {:.0}s to run",
                offset.as_secs_f64(),
                n + 1,
                all.len(),
                one_connection(idle).as_secs_f64()
            );
        }
        let script = Script {
            name: name.to_string(),
            client_ns: lab.namespace_of(&path.client)?,
            server_ns: lab.namespace_of(&path.server)?,
            listen: path.listen,
            connect: path.connect,
            keepalive,
            sends: sends.clone(),
            observe,
        };
        for mut outcome in scenario::run(vec![script])? {
            for moment in &mut outcome.timeline {
                moment.at += offset;
            }
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

fn header(
    config: &Config,
    file: &str,
    rule: RuleRef,
    name: &str,
    applied: &Applied,
    idle: Duration,
    path: &Route,
) -> String {
    let t = idle.as_secs_f64();
    format!(
        "idlegate lab demo: {} {name} of {file} (profile {}, {})\n\
         idle timeout {} ({}) scaled 1/{} to {t:.1}s, expiry {}\n\
         client in `{}` → {} → server in `{}` on {}\n\
         each connection sends \"a\", idles {:.1}s (¼ of the timeout), sends \"b\", idles {:.1}s (1⅛), sends \"c\"; one after the other\n\
         no-keepalive: plain socket · keepalive: SO_KEEPALIVE every {:.0}s\n\
         the run takes about {:.0}s: {} connections of {:.0}s each, one after the other, because both need the rule's one server port\n",
        rule.kind(),
        config.profile.name,
        config.profile.title,
        human(applied.timeout),
        applied.reason,
        config.time_scale,
        applied.expiry,
        path.client,
        path.connect,
        path.server,
        path.listen,
        t / 4.0,
        t * 9.0 / 8.0,
        demo::keepalive_interval(idle).as_secs_f64(),
        one_connection(idle).as_secs_f64() * connections(idle).len() as f64,
        connections(idle).len(),
        one_connection(idle).as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rules: &str) -> Config {
        let text = format!(
            "profile = \"azure-lb\"\ntime_scale = 60\n\
             [[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
             [[backend_pool]]\nname = \"vms\"\nmembers = [{{ name = \"vm1\", address = \"192.0.2.11\" }}]\n{rules}"
        );
        Config::from_toml(&text, "t.toml").unwrap()
    }

    const DNS: &str = "[[lb_rule]]\nname = \"dns\"\nfrontend = \"public\"\nprotocol = \"udp\"\nfrontend_port = 53\nbackend_pool = \"vms\"\nbackend_port = 53\n";
    const EGRESS: &str =
        "[[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n";

    #[test]
    fn the_default_rule_skips_udp_only_lb_rules_for_the_first_outbound_rule() {
        let c = config(&format!("{DNS}{EGRESS}"));
        assert_eq!(
            choose(&c, "t.toml", None).unwrap(),
            RuleRef::OutboundRule(0)
        );
    }

    #[test]
    fn a_udp_only_rule_is_refused_with_why_as_a_usage_error() {
        let c = config(&format!("{DNS}{EGRESS}"));
        let e = choose(&c, "t.toml", Some("dns")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--rule dns: lb_rule dns of t.toml is UDP only; the demo's connections are TCP (their verdicts rest on TCP's acknowledgements, keepalive and resets)"
        );
        assert_eq!(crate::obs::report::status(&e), Status::Usage);
    }

    #[test]
    fn a_config_with_no_tcp_rule_names_its_rules_in_the_hint() {
        let c = config(DNS);
        let e = choose(&c, "t.toml", None).unwrap_err();
        assert!(e.to_string().contains("t.toml has no TCP LB rule"), "{e}");
        assert_eq!(
            crate::obs::report::hint_of(&e),
            Some("--rule NAME, one of the rules of t.toml: dns (lb_rule, UDP only)")
        );
    }
}
