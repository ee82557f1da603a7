//! `idlegate lab demo`: the idle-drop experiment of seed 004, replayed in seconds.
//!
//! A lab with one backend member (`vm1`) and the `internet` host, and a gateway whose idle
//! timeout is the profile's (Azure LB: 4 min) divided by `--time-scale`. Three connections from
//! `internet` to a server in `vm1` run in parallel, each through its own LB rule: each sends
//! "a", waits ¼ of the timeout, sends "b", waits 1⅛ of the timeout (so the flow expires), and
//! sends "c". `no-keepalive` does nothing more; `keepalive` turns on TCP keepalive at half the
//! timeout; `tcp-reset` goes through a rule with `expiry = "reset"`. The report is a timeline
//! and a verdict per connection, or one JSON object with `--json`.

use crate::lab::{Lab, INTERNET, INTERNET_ADDRESS};
use crate::scenario::{self, Outcome, Script};
use anyhow::{bail, Result};
use idlegate_core::engine::Counters;
use idlegate_core::expiry::Expiry;
use idlegate_core::{config, precedence, Config};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// Options of `idlegate lab demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Print one JSON object instead of the timeline.
    #[arg(long)]
    pub json: bool,
    /// The middlebox to emulate.
    #[arg(long, default_value = "azure-lb")]
    pub profile: String,
    /// What the gateway does when the first two connections' flows expire.
    #[arg(long, default_value = "silent", value_parser = parse_expiry)]
    pub expiry: Expiry,
    /// Divide every timer by this: 60 turns Azure's 4 minutes into 4 seconds.
    #[arg(long, default_value_t = 60)]
    pub time_scale: u32,
    /// Lab name, so demos can run side by side.
    #[arg(long, default_value = "demo")]
    pub name: String,
}

fn parse_expiry(s: &str) -> Result<Expiry, String> {
    s.parse().map_err(|e| format!("{e}"))
}

const FRONTEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VM1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const CONNECTIONS: [(&str, u16); 3] = [
    ("no-keepalive", 7000),
    ("keepalive", 7001),
    ("tcp-reset", 7002),
];

/// The demo's result, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub profile: String,
    pub expiry: String,
    pub time_scale: u32,
    pub idle_timeout_s: f64,
    pub connections: Vec<ConnectionReport>,
    pub gateway: GatewayReport,
}

#[derive(Debug, Serialize)]
pub struct ConnectionReport {
    pub name: String,
    pub sent: Vec<String>,
    pub delivered: Vec<String>,
    pub client_error: Option<String>,
    pub server_error: Option<String>,
    /// Segments the client sent that its peer never acknowledged, at the end.
    pub unacknowledged_at_end: u32,
    pub verdict: String,
}

#[derive(Debug, Serialize)]
pub struct GatewayReport {
    pub flows_created: u64,
    pub flows_expired: u64,
    pub resets_sent: u64,
    /// Packets dropped because their flow was gone: the silent drop, counted.
    pub dropped_no_flow: u64,
}

/// Runs the demo and prints its report.
pub fn run(options: &Options) -> Result<()> {
    crate::lab::ensure_root()?;
    let config = Config::from_toml(&config_text(options), "demo config")?;
    let idle = config.scaled(precedence::lb_rule(&config, 0).timeout);
    if idle < Duration::from_secs(2) {
        bail!(
            "--time-scale {} makes the idle timeout {idle:?}; the demo needs at least 2 s, because TCP keepalive counts whole seconds and must fire at half the timeout",
            options.time_scale
        );
    }
    if !options.json {
        println!("{}", header(options, &config, idle));
    }
    let (outcomes, counters) = run_in_lab(options, &config, idle)?;
    let report = report(options, idle, &outcomes, &counters);
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("timeline");
        print!("{}", scenario::render_timeline(&outcomes));
        println!("\nverdicts");
        let width = CONNECTIONS.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for c in &report.connections {
            println!("  {:width$}  {}", c.name, c.verdict);
        }
        println!(
            "\ngateway: {} flows created, {} expired, {} RSTs sent, {} packets dropped for want of a flow",
            counters.flows_created,
            counters.flows_expired,
            counters.resets_sent,
            counters.dropped(idlegate_core::DropReason::NoFlow)
        );
    }
    Ok(())
}

/// The lab's config: one rule per connection, all to `vm1`.
fn config_text(options: &Options) -> String {
    let mut text = format!(
        "profile = \"{}\"\ntime_scale = {}\n[[frontend]]\nname = \"public\"\naddress = \"{FRONTEND}\"\n\
         [[backend_pool]]\nname = \"vms\"\nmembers = [{{ name = \"vm1\", address = \"{VM1}\" }}]\n",
        options.profile, options.time_scale
    );
    for (name, port) in CONNECTIONS {
        let expiry = if name == "tcp-reset" {
            Expiry::Reset
        } else {
            options.expiry
        };
        text += &format!(
            "[[lb_rule]]\nname = \"{name}\"\nfrontend = \"public\"\nfrontend_port = {port}\n\
             backend_pool = \"vms\"\nbackend_port = {port}\nexpiry = \"{expiry}\"\n"
        );
    }
    text
}

fn header(options: &Options, config: &Config, idle: Duration) -> String {
    let t = idle.as_secs_f64();
    format!(
        "idlegate lab demo: {} (profile {}), idle timeout {} scaled 1/{} to {t:.1}s, expiry {}\n\
         client in `{INTERNET}` ({INTERNET_ADDRESS}) → frontend {FRONTEND}:7000-7002 → server in `vm1` ({VM1})\n\
         each connection sends \"a\", idles {:.1}s (¼ of the timeout), sends \"b\", idles {:.1}s (1⅛), sends \"c\"\n\
         no-keepalive: plain socket · keepalive: SO_KEEPALIVE every {:.0}s · tcp-reset: rule with expiry = \"reset\"\n",
        config.profile.title,
        config.profile.name,
        config::human(config.lb_rules[0].idle.timeout),
        options.time_scale,
        options.expiry,
        t / 4.0,
        t * 9.0 / 8.0,
        keepalive_interval(idle).as_secs_f64(),
    )
}

/// Keepalive at half the timeout, in whole seconds as the kernel takes it.
fn keepalive_interval(idle: Duration) -> Duration {
    Duration::from_secs((idle.as_secs() / 2).max(1))
}

fn run_in_lab(
    options: &Options,
    config: &Config,
    idle: Duration,
) -> Result<(Vec<Outcome>, Counters)> {
    Lab::with_gateway(&options.name, config, |lab| {
        scenario::run(scripts(lab, idle)?)
    })
}

fn scripts(lab: &Lab, idle: Duration) -> Result<Vec<Script>> {
    let (client_ns, server_ns) = (lab.namespace_of(INTERNET)?, lab.namespace_of("vm1")?);
    let b = idle / 4;
    let c = b + idle * 9 / 8;
    let observe = (idle / 2).max(Duration::from_millis(1500));
    Ok(CONNECTIONS
        .iter()
        .map(|&(name, port)| Script {
            name: name.to_string(),
            client_ns: client_ns.clone(),
            server_ns: server_ns.clone(),
            listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            connect: SocketAddrV4::new(FRONTEND, port),
            keepalive: (name == "keepalive").then(|| keepalive_interval(idle)),
            sends: vec![
                (Duration::ZERO, "a".into()),
                (b, "b".into()),
                (c, "c".into()),
            ],
            observe,
        })
        .collect())
}

fn report(options: &Options, idle: Duration, outcomes: &[Outcome], counters: &Counters) -> Report {
    Report {
        profile: options.profile.clone(),
        expiry: options.expiry.to_string(),
        time_scale: options.time_scale,
        idle_timeout_s: idle.as_secs_f64(),
        connections: outcomes
            .iter()
            .map(|o| ConnectionReport {
                name: o.name.clone(),
                sent: o.sent.clone(),
                delivered: o.delivered.clone(),
                client_error: o.client_error.clone(),
                server_error: o.server_error.clone(),
                unacknowledged_at_end: o.unacked_at_end,
                verdict: verdict(o),
            })
            .collect(),
        gateway: GatewayReport {
            flows_created: counters.flows_created,
            flows_expired: counters.flows_expired,
            resets_sent: counters.resets_sent,
            dropped_no_flow: counters.dropped(idlegate_core::DropReason::NoFlow),
        },
    }
}

/// One line a person reads at a glance.
pub fn verdict(o: &Outcome) -> String {
    let lost: Vec<String> = o
        .sent
        .iter()
        .filter(|m| !o.delivered.contains(m))
        .map(|m| format!("\"{m}\""))
        .collect();
    if lost.is_empty() && o.client_error.is_none() && o.server_error.is_none() {
        return format!(
            "survived: all {} messages delivered, no error on either side",
            o.sent.len()
        );
    }
    let lost = if lost.is_empty() {
        "nothing lost".to_string()
    } else {
        format!("LOST {}", lost.join(" "))
    };
    match (&o.client_error, &o.server_error) {
        (None, None) if o.unacked_at_end == 0 => format!(
            "{lost}: acknowledged, so the client believes it was delivered, but the server never got it; neither side was told"
        ),
        (None, None) => format!(
            "{lost} silently: the client's write succeeded, the server never got it, neither side was told ({} segment(s) never acknowledged, {} retransmissions)",
            o.unacked_at_end, o.retransmits_at_end
        ),
        (client, server) => format!(
            "{lost}; client saw {}, server saw {}",
            client.as_deref().unwrap_or("no error"),
            server.as_deref().unwrap_or("no error")
        ),
    }
}
