//! `idlegate lab demo`: the idle-drop experiment (a connection left idle past a load
//! balancer's idle timeout loses its next message without either end being told), replayed in
//! seconds.
//!
//! A lab with one backend member (`vm1`) and the `internet` host, and a gateway whose idle
//! timeout is the profile's (Azure LB: 4 min) divided by `--time-scale`. Three connections from
//! `internet` to a server in `vm1` run in parallel, each through its own LB rule: each sends
//! "a", waits ¼ of the timeout, sends "b", waits 1⅛ of the timeout (so the flow expires), and
//! sends "c". `no-keepalive` does nothing more; `keepalive` turns on TCP keepalive at half the
//! timeout; `tcp-reset` goes through a rule with `expiry = "reset"`. The report is a timeline
//! and a verdict per connection, or one JSON object with `--json` ([`Report`]: a [`Verdict`]
//! per connection and the timeline, in real and in lab-scaled milliseconds).

use crate::lab::scenario::{self, Outcome, Script};
use crate::lab::{Lab, INTERNET, INTERNET_ADDRESS};
use crate::obs::html::Output;
use crate::obs::report::{Report as _, Status};
use anyhow::{bail, Result};
use idlegate_core::profile::Profile;
use idlegate_core::Counters;
use idlegate_core::Expiry;
use idlegate_core::{config, precedence, Config};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// Options of `idlegate lab demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Print one JSON object instead: the settings, a verdict per connection (survived,
    /// lost-silently, lost-acknowledged, reset, failed) and the timeline in ms.
    #[arg(long)]
    pub json: bool,
    /// The middlebox to emulate.
    #[arg(long, default_value = "azure-lb")]
    pub profile: String,
    /// What the gateway does when the first two connections' flows expire (default: the
    /// profile's).
    #[arg(long, value_parser = parse_expiry)]
    pub expiry: Option<Expiry>,
    /// Divide every timer by this (default: whatever brings the profile's idle timeout to
    /// about 4 s; 60 for Azure's 4 minutes; with --config, the config's time_scale).
    #[arg(long)]
    pub time_scale: Option<u32>,
    /// Run the demo's connections through one rule of this config (the TOML `lab up` takes,
    /// e.g. from `idlegate import`): its profile, timeouts and expiry, not --profile's.
    #[arg(long, conflicts_with_all = ["profile", "expiry"], value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// With --config: the rule (default: the first TCP LB rule, else the first outbound rule,
    /// else the first NAT gateway).
    #[arg(long, requires = "config", value_name = "NAME")]
    pub rule: Option<String>,
    /// Lab name, so demos can run side by side: 1–32 letters, digits or '_' (no '-').
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// Also write the report as one self-contained HTML page: a sequence diagram per
    /// connection (client, box, server; the messages, the idle gaps, the expiry, what was lost
    /// or reset). Refused if FILE exists, unless --force.
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
    /// With --html: overwrite FILE if it exists.
    #[arg(long, requires = "html")]
    pub force: bool,
}

impl Options {
    /// The `--html` file, checked before anything runs (its directory exists; it does not,
    /// unless `--force`).
    pub fn html_output(&self) -> Result<Option<Output>> {
        self.html
            .as_deref()
            .map(|path| Output::check(path, self.force, "--html"))
            .transpose()
    }
}

fn parse_expiry(s: &str) -> Result<Expiry, String> {
    s.parse().map_err(|e| format!("{e}"))
}

const FRONTEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VM1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const VM2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
/// The idle timeout the automatic time scale aims at.
const DEMO_IDLE: Duration = Duration::from_secs(4);

/// The demo as it will run: the options resolved against the profile.
struct Plan {
    profile: &'static Profile,
    expiry: Expiry,
    time_scale: u32,
    /// The rules' `idle_timeout`, when the profile's default is too long to scale down to a
    /// demo (Linux conntrack's 5 days); else the rules take the default.
    idle_timeout: Option<Duration>,
    /// Inbound through LB rules, or outbound through outbound rules for a box with no inbound
    /// rules (a NAT gateway).
    direction: Direction,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Inbound,
    Outbound,
}

impl Plan {
    fn new(options: &Options) -> Result<Plan> {
        let profile = match idlegate_core::config::find_profile(&options.profile) {
            Ok(profile) => profile,
            Err(unknown) => {
                return Err(anyhow::anyhow!("--profile {}: {unknown}", options.profile))
                    .hint(unknown.hint())
                    .status(Status::Usage)
            }
        };
        let direction = if profile.rules.inbound() {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        let range = match direction {
            Direction::Inbound => profile.lb_rule_idle,
            Direction::Outbound => profile.outbound_rule_idle,
        };
        if options.time_scale == Some(0) {
            return Err(anyhow::anyhow!("--time-scale 0: must be at least 1"))
                .status(Status::Usage);
        }
        let auto = (range.default.as_secs_f64() / DEMO_IDLE.as_secs_f64()).round() as u32;
        let time_scale = options
            .time_scale
            .unwrap_or_else(|| auto.clamp(1, config::max_time_scale(profile)));
        let too_long = range.default / time_scale > DEMO_IDLE * 2;
        let idle_timeout = (options.time_scale.is_none() && too_long)
            .then(|| (DEMO_IDLE * time_scale).clamp(range.min, range.max));
        if let Some(expiry) = options.expiry.filter(|&e| !profile.accepts_expiry(e)) {
            return Err(anyhow::anyhow!(
                "--expiry {expiry}: {} cannot do that; at expiry it {}",
                profile.title,
                profile.at_expiry()
            ))
            .with_hint(|| {
                format!(
                    "leave --expiry out, or give --expiry {}",
                    profile.default_expiry
                )
            })
            .status(Status::Usage);
        }
        Ok(Plan {
            profile,
            expiry: options.expiry.unwrap_or(profile.default_expiry),
            time_scale,
            idle_timeout,
            direction,
        })
    }
}
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
    /// The keepalive connection's first probe (and interval), in whole seconds.
    pub keepalive_s: u64,
    pub connections: Vec<ConnectionReport>,
    /// Every connection's moments, in time order.
    pub timeline: Vec<Event>,
    pub gateway: GatewayReport,
    /// With --config: the config and the rule the connections went through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<super::demo_rule::RuleReport>,
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
    pub verdict: Verdict,
    /// The verdict as a sentence.
    pub explanation: String,
    /// What the box does when this connection's flow expires (`tcp-reset`'s rule resets
    /// whatever the others do).
    pub expiry: String,
    /// The connection's TCP keepalive (first probe and interval) in whole seconds; `null`
    /// without.
    pub keepalive_s: Option<u64>,
}

/// What became of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every message delivered, no error on either side.
    Survived,
    /// A message never arrived and neither side was told: the client's write succeeded, its
    /// data went unacknowledged.
    LostSilently,
    /// A message never arrived though it was acknowledged; neither side was told.
    LostAcknowledged,
    /// A side saw the connection reset (ECONNRESET, or EPIPE writing after one).
    Reset,
    /// A side saw another error.
    Failed,
}

/// One moment of the timeline.
#[derive(Debug, Serialize)]
pub struct Event {
    /// Since the demo's connections started, in real milliseconds.
    pub at_ms: u64,
    /// The same in the emulated box's time: `at_ms` × `time_scale`.
    pub lab_at_ms: u64,
    pub connection: String,
    /// `client` or `server`.
    pub side: String,
    pub what: String,
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
    let html = options.html_output()?;
    crate::lab::ensure_root()?;
    let plan = Plan::new(options)?;
    let mut config = Config::from_toml(&config_text(&plan), "demo config")?;
    reset_for_comparison(&mut config, plan.direction);
    let idle = config.scaled(match plan.direction {
        Direction::Inbound => precedence::lb_rule(&config, 0).timeout,
        Direction::Outbound => precedence::outbound_rule(&config, 0).timeout,
    });
    if idle < Duration::from_secs(2) {
        bail!(
            "--time-scale {} makes the idle timeout {idle:?}; the demo needs at least 2 s, because TCP keepalive counts whole seconds and must fire at half the timeout",
            plan.time_scale
        );
    }
    if !options.json {
        println!("{}", header(&plan, idle));
    }
    let (outcomes, counters) = Lab::with_gateway(&options.name, &config, |lab| {
        scenario::run(scripts(&plan, lab, idle)?)
    })?;
    let report = report(&plan, idle, &outcomes, &counters);
    print_report(options.json, html.as_ref(), &report, &outcomes)
}

/// Prints `report`: one JSON document on stdout with `json`, else the timeline, a verdict per
/// connection and the gateway's counters; and with `html`, writes it there as a page
/// ([`super::demo_html`]).
pub(super) fn print_report(
    json: bool,
    html: Option<&Output>,
    report: &Report,
    outcomes: &[Outcome],
) -> Result<()> {
    if let Some(html) = html {
        html.write(&super::demo_html::render(report))?;
        // One line on stderr (stdout is the timeline, or one JSON document).
        eprintln!("wrote {}", html.path().display());
    }
    if json {
        // One document on stdout, nothing else.
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("timeline");
        print!("{}", scenario::render_timeline(outcomes));
        println!("\nverdicts");
        let width = report
            .connections
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0);
        for c in &report.connections {
            println!("  {:width$}  {}", c.name, c.explanation);
        }
        let g = &report.gateway;
        println!(
            "\ngateway: {} flows created, {} expired, {} RSTs sent, {} packets dropped for want of a flow",
            g.flows_created, g.flows_expired, g.resets_sent, g.dropped_no_flow
        );
    }
    Ok(())
}

/// The lab's config. Inbound: one LB rule per connection, all to a server in `vm1`. Outbound:
/// `vm1`'s pool leaves through a rule with the plan's expiry, `vm2`'s through one that resets.
fn config_text(plan: &Plan) -> String {
    let mut text = format!(
        "profile = \"{}\"\ntime_scale = {}\n[[frontend]]\nname = \"public\"\naddress = \"{FRONTEND}\"\n",
        plan.profile.name, plan.time_scale
    );
    let idle = match plan.idle_timeout {
        Some(d) => format!("idle_timeout = \"{}s\"\n", d.as_secs()),
        None => String::new(),
    };
    match plan.direction {
        Direction::Inbound => {
            text += &format!("[[backend_pool]]\nname = \"vms\"\nmembers = [{{ name = \"vm1\", address = \"{VM1}\" }}]\n");
            for (name, port) in CONNECTIONS {
                let expiry = if name == "tcp-reset" {
                    Expiry::Reset
                } else {
                    plan.expiry
                };
                text += &format!(
                    "[[lb_rule]]\nname = \"{name}\"\nfrontend = \"public\"\nfrontend_port = {port}\n\
                     backend_pool = \"vms\"\nbackend_port = {port}\n{}{idle}",
                    expiry_line(plan.profile, expiry)
                );
            }
        }
        Direction::Outbound => {
            for (pool, member, address, expiry) in [
                ("vms", "vm1", VM1, plan.expiry),
                ("reset-vms", "vm2", VM2, Expiry::Reset),
            ] {
                text += &format!(
                    "[[backend_pool]]\nname = \"{pool}\"\nmembers = [{{ name = \"{member}\", address = \"{address}\" }}]\n\
                     [[outbound_rule]]\nname = \"{pool}-out\"\nfrontend = \"public\"\nbackend_pool = \"{pool}\"\n{}{idle}",
                    expiry_line(plan.profile, expiry)
                );
            }
        }
    }
    text
}

/// The `tcp-reset` connection's rule resets at expiry even on a box that cannot (its config
/// refuses the setting, so the demo's config leaves it out and it is set here): it shows what
/// the reset would change, beside the box's own action.
fn reset_for_comparison(config: &mut Config, direction: Direction) {
    let idle = match direction {
        Direction::Inbound => config
            .lb_rules
            .iter_mut()
            .find(|r| r.name == "tcp-reset")
            .map(|r| &mut r.idle),
        Direction::Outbound => config
            .outbound_rules
            .iter_mut()
            .find(|r| r.name == "reset-vms-out")
            .map(|r| &mut r.idle),
    };
    if let Some(idle) = idle {
        idle.expiry = Expiry::Reset;
    }
}

/// The `expiry` line of a demo rule, left out where the profile refuses it.
fn expiry_line(profile: &Profile, expiry: Expiry) -> String {
    match profile.accepts_expiry(expiry) {
        true => format!("expiry = \"{expiry}\"\n"),
        false => String::new(),
    }
}

fn header(plan: &Plan, idle: Duration) -> String {
    let t = idle.as_secs_f64();
    let path = match plan.direction {
        Direction::Inbound => format!("client in `{INTERNET}` ({INTERNET_ADDRESS}) → frontend {FRONTEND}:7000-7002 → server in `vm1` ({VM1})"),
        Direction::Outbound => format!(
            "clients in `vm1` ({VM1}; `vm2` for tcp-reset) → SNAT from {FRONTEND} → server in `{INTERNET}` ({INTERNET_ADDRESS}):8000-8002"
        ),
    };
    let default_idle = match plan.direction {
        Direction::Inbound => plan.profile.lb_rule_idle.default,
        Direction::Outbound => plan.profile.outbound_rule_idle.default,
    };
    let timeout = match plan.idle_timeout {
        Some(d) => format!(
            "idle timeout set to {} (the default, {}, would take {} here)",
            config::human(d),
            config::human(default_idle),
            config::human(Duration::from_secs(
                (default_idle / plan.time_scale).as_secs()
            ))
        ),
        None => format!("idle timeout {}", config::human(default_idle)),
    };
    format!(
        "idlegate lab demo: {} (profile {}), {timeout} scaled 1/{} to {t:.1}s, expiry {}\n{path}\n\
         each connection sends \"a\", idles {:.1}s (¼ of the timeout), sends \"b\", idles {:.1}s (1⅛), sends \"c\"\n\
         no-keepalive: plain socket · keepalive: SO_KEEPALIVE every {:.0}s · tcp-reset: rule with expiry = \"reset\"{}\n",
        plan.profile.title,
        plan.profile.name,
        plan.time_scale,
        plan.expiry,
        t / 4.0,
        t * 9.0 / 8.0,
        keepalive_interval(idle).as_secs_f64(),
        match plan.profile.accepts_expiry(Expiry::Reset) {
            true => String::new(),
            false => format!(
                ", for comparison ({} cannot: a config refuses it)",
                plan.profile.name
            ),
        },
    )
}

/// Keepalive at half the idle timeout, in whole seconds as the kernel takes it (rounded to the
/// nearest, below the timeout: [`config::half_the_idle_timeout`]).
pub(super) fn keepalive_interval(idle: Duration) -> Duration {
    config::half_the_idle_timeout(idle)
}

/// The demo's conversation for idle timeout `idle`: "a" at once, "b" after ¼ of the timeout,
/// "c" 1⅛ of the timeout later (past the expiry); and how long both sides watch after "c".
pub(super) fn conversation(idle: Duration) -> (Vec<(Duration, String)>, Duration) {
    let b = idle / 4;
    let c = b + idle * 9 / 8;
    let observe = (idle / 2).max(Duration::from_millis(1500));
    let sends = vec![
        (Duration::ZERO, "a".into()),
        (b, "b".into()),
        (c, "c".into()),
    ];
    (sends, observe)
}

fn scripts(plan: &Plan, lab: &Lab, idle: Duration) -> Result<Vec<Script>> {
    let (sends, observe) = conversation(idle);
    let mut scripts = Vec::new();
    for &(name, port) in &CONNECTIONS {
        let (client, server, connect, port) = match plan.direction {
            Direction::Inbound => (INTERNET, "vm1", FRONTEND, port),
            Direction::Outbound => {
                let client = if name == "tcp-reset" { "vm2" } else { "vm1" };
                (client, INTERNET, INTERNET_ADDRESS, port + 1000)
            }
        };
        scripts.push(Script {
            name: name.to_string(),
            client_ns: lab.namespace_of(client)?,
            server_ns: lab.namespace_of(server)?,
            listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into(),
            connect: SocketAddrV4::new(connect, port).into(),
            keepalive: (name == "keepalive").then(|| keepalive_interval(idle)),
            sends: sends.clone(),
            observe,
        });
    }
    Ok(scripts)
}

fn report(plan: &Plan, idle: Duration, outcomes: &[Outcome], counters: &Counters) -> Report {
    let mut report = Report::new(
        (plan.profile.name, plan.expiry, plan.time_scale),
        idle,
        outcomes,
        counters,
    );
    // Its rule resets at expiry, whatever the others do (`config_text`, `reset_for_comparison`).
    for c in report
        .connections
        .iter_mut()
        .filter(|c| c.name == "tcp-reset")
    {
        c.expiry = Expiry::Reset.to_string();
    }
    report
}

impl Report {
    /// The report of `outcomes` under `(profile, expiry, time_scale)` with scaled idle
    /// timeout `idle`; `rule` left out.
    pub(super) fn new(
        (profile, expiry, time_scale): (&str, Expiry, u32),
        idle: Duration,
        outcomes: &[Outcome],
        counters: &Counters,
    ) -> Report {
        let mut moments: Vec<&scenario::Moment> =
            outcomes.iter().flat_map(|o| &o.timeline).collect();
        moments.sort_by_key(|m| m.at);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Report {
            profile: profile.to_string(),
            expiry: expiry.to_string(),
            time_scale,
            idle_timeout_s: idle.as_secs_f64(),
            keepalive_s: keepalive_interval(idle).as_secs(),
            timeline: moments
                .into_iter()
                .map(|m| Event {
                    at_ms: ms(m.at),
                    lab_at_ms: ms(m.at).saturating_mul(u64::from(time_scale)),
                    connection: m.connection.clone(),
                    side: m.side.as_str().to_string(),
                    what: m.what.clone(),
                })
                .collect(),
            connections: outcomes
                .iter()
                .map(|o| ConnectionReport {
                    name: o.name.clone(),
                    sent: o.sent.clone(),
                    delivered: o.delivered.clone(),
                    client_error: o.client_error.clone(),
                    server_error: o.server_error.clone(),
                    unacknowledged_at_end: o.unacked_at_end,
                    verdict: Verdict::of(o),
                    explanation: verdict(o),
                    expiry: expiry.to_string(),
                    // Both demos give the connection named so keepalive at half the timeout.
                    keepalive_s: (o.name == "keepalive")
                        .then(|| keepalive_interval(idle).as_secs()),
                })
                .collect(),
            gateway: GatewayReport {
                flows_created: counters.flows_created,
                flows_expired: counters.flows_expired,
                resets_sent: counters.resets_sent,
                dropped_no_flow: counters.dropped(idlegate_core::DropReason::NoFlow),
            },
            rule: None,
        }
    }
}

impl Verdict {
    /// The verdict on `o`.
    pub fn of(o: &Outcome) -> Verdict {
        let lost = o.sent.iter().any(|m| !o.delivered.contains(m));
        let errors: Vec<&str> = [&o.client_error, &o.server_error]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if errors
            .iter()
            .any(|e| e.contains("ECONNRESET") || e.contains("EPIPE"))
        {
            Verdict::Reset
        } else if !errors.is_empty() {
            Verdict::Failed
        } else if !lost {
            Verdict::Survived
        } else if o.unacked_at_end == 0 {
            Verdict::LostAcknowledged
        } else {
            Verdict::LostSilently
        }
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
