//! `idlegate`: emulate, measure and survive the middleboxes that silently forget idle TCP
//! connections. This file is the command line only; the work is in the library modules.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use idlegate::gateway::control::{self, FlowRow, Request, Response};
use idlegate::gateway::{Gateway, Options, Port, Stopper};
use idlegate::lab::demo;
use idlegate::lab::Extras;
use idlegate::lab::{self, Lab};
use idlegate::sys::netns;
use idlegate::sys::tun::Tun;
use idlegate_core::config::human;
use idlegate_core::Interface;
use idlegate_core::{precedence, profile, Config};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(
    name = "idlegate",
    version,
    about = "Emulate, measure and survive the middleboxes that silently forget idle TCP connections"
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the emulated middlebox between two TUN devices.
    Gateway(GatewayArgs),
    /// Build network namespaces around the gateway: real hosts to test applications with.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Show a running gateway's flows (or expire them: `flows expire`).
    Flows(FlowsArgs),
    /// Serve as the far end of `idlegate probe`: confirm what arrives, answer after a delay.
    Echo(EchoArgs),
    /// Measure a path's idle timeout to the second, and what it does at expiry.
    Probe(ProbeArgs),
    /// Forward an application's connections with TCP keepalive on both sockets, or through a
    /// resumable tunnel (a pair: --tunnel on the application's side, --tunnel-listen on the
    /// server's) that outlives the path under it.
    Relay(RelayArgs),
    /// Give TCP keepalive to the sockets of a running program, without restarting it
    /// (pidfd_getfd: root, or ptrace access to the process).
    Keepalive(KeepaliveArgs),
    /// Start a program and give keepalive to every TCP socket it (or a process it starts)
    /// opens, within 100 ms: no LD_PRELOAD, so static binaries too.
    Run(RunArgs),
    /// Every TCP connection of the host (or a namespace), judged against a box's idle timeout:
    /// safe, at-risk or stalled, with the owner and the reason.
    Audit(AuditArgs),
    /// The keepalive settings that keep connections alive through a box: system settings and
    /// library code, each with its source.
    Advise(AdviseArgs),
    /// Write a new tunnel key to FILE (mode 0600) for both ends of a `relay` tunnel pair, or
    /// with --pair an end's own key pair for the per-peer mode.
    Keygen {
        /// Where to write it; an existing file is never overwritten.
        file: PathBuf,
        /// Write a key pair: the private key to FILE (mode 0600), the public key to FILE.pub
        /// (a line for an exit's --peers file, named after FILE), and print the public key.
        #[arg(long)]
        pair: bool,
    },
    /// List the middlebox profiles with their timers and behaviour (`profiles show NAME`
    /// prints one as a config).
    Profiles {
        #[command(subcommand)]
        action: Option<ProfilesAction>,
    },
}

/// The keepalive to give: explicit timers, or a profile's.
#[derive(Args)]
struct KeepaliveChoice {
    /// IDLE,INTERVAL,COUNT, e.g. 120s,30s,8.
    #[arg(long, conflicts_with = "profile")]
    keepalive: Option<String>,
    /// Derive it from this middlebox profile's idle timeout (first probe at half) [default:
    /// azure-lb: 120s,30s,8].
    #[arg(long)]
    profile: Option<String>,
}

impl KeepaliveChoice {
    fn resolve(&self) -> Result<idlegate::survive::keepalive::Keepalive> {
        use idlegate::survive::keepalive::Keepalive;
        Ok(match (&self.keepalive, &self.profile) {
            (Some(k), _) => Keepalive::parse(k)?,
            (None, Some(p)) => Keepalive::for_profile(
                profile::find(p).with_context(|| format!("--profile {p}: no such profile"))?,
            ),
            (None, None) => Keepalive::for_profile(profile::default_profile()),
        })
    }
}

#[derive(Args)]
struct AuditArgs {
    /// The box's idle timeout, e.g. 4m.
    #[arg(long, value_parser = parse_duration, conflicts_with = "profile")]
    idle_timeout: Option<std::time::Duration>,
    /// Take the idle timeout from this middlebox profile [default: azure-lb].
    #[arg(long)]
    profile: Option<String>,
    /// The connections of this network namespace (a name `ip netns list` shows).
    #[arg(long)]
    netns: Option<String>,
    /// Print one JSON object.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Refresh every 2 s, like top, until interrupted.
    #[arg(long)]
    watch: bool,
}

#[derive(Args)]
struct AdviseArgs {
    /// The box's idle timeout, e.g. 4m.
    #[arg(long, value_parser = parse_duration, conflicts_with = "profile")]
    idle_timeout: Option<std::time::Duration>,
    /// Take the idle timeout from this middlebox profile [default: azure-lb].
    #[arg(long)]
    profile: Option<String>,
    /// The operating system whose settings to write.
    #[arg(long, value_enum, default_value = "linux")]
    os: idlegate::survive::advise::Os,
    /// Also the code for this client library.
    #[arg(long = "for", value_enum)]
    library: Option<idlegate::survive::advise::Library>,
}

#[derive(Args)]
struct KeepaliveArgs {
    /// The process whose TCP sockets get keepalive.
    #[arg(long)]
    pid: i32,
    /// Only this descriptor of the process.
    #[arg(long)]
    fd: Option<i32>,
    #[command(flatten)]
    choice: KeepaliveChoice,
    /// Keep watching: give keepalive to new sockets as the process opens them, until it exits.
    #[arg(long)]
    watch: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    choice: KeepaliveChoice,
    /// The program and its arguments, after `--`.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct RelayArgs {
    /// Where the application connects (or where its clients connect).
    #[arg(long, required_unless_present_any = ["config", "tunnel_listen"])]
    listen: Option<std::net::SocketAddr>,
    /// Where its connections go, HOST:PORT.
    #[arg(long, required_unless_present_any = ["config", "tunnel"], conflicts_with = "tunnel")]
    connect: Option<String>,
    /// Tunnel entry: carry the connections accepted on --listen to the exit at HOST:PORT.
    #[arg(long, conflicts_with = "tunnel_listen")]
    tunnel: Option<String>,
    /// Tunnel exit: accept the entry's legs here and connect each session to --connect.
    #[arg(long, conflicts_with = "listen")]
    tunnel_listen: Option<std::net::SocketAddr>,
    /// The tunnel pair's key file (made by `idlegate keygen FILE`), the same on both ends.
    #[arg(long, conflicts_with = "private_key")]
    key: Option<PathBuf>,
    /// Per-peer mode: this end's private key file (made by `idlegate keygen --pair FILE`).
    /// An exit also needs --peers, an entry --exit-public-key.
    #[arg(long)]
    private_key: Option<PathBuf>,
    /// Per-peer mode, exit: the entries it accepts, one `PUBLIC_KEY [NAME]` a line (`#`
    /// comments). Read every second; a change is used once two reads agree: a key taken off
    /// is refused from its next handshake on, and its open sessions are reset.
    #[arg(long, requires = "private_key", conflicts_with = "tunnel")]
    peers: Option<PathBuf>,
    /// Per-peer mode, entry: the exit's public key (44 characters of base64), or a file that
    /// holds it (the exit's FILE.pub).
    #[arg(long, requires = "private_key", conflicts_with = "tunnel_listen")]
    exit_public_key: Option<String>,
    /// Tunnel: send a heartbeat when a leg has been quiet this long; three missed lose the
    /// leg and start a resume. Both ends should agree.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat: std::time::Duration,
    /// Tunnel: how long a session may wait for a leg (its first one included; the entry dials
    /// again meanwhile) before both ends reset its application connection.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    resume_within: std::time::Duration,
    /// Tunnel: the most unacknowledged bytes kept per direction of a session, e.g. 4MiB
    /// (a full buffer stops reading the application; nothing is dropped); also the window:
    /// the most bytes from the far end waiting for a slow application here.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    replay_buffer: usize,
    /// Tunnel: the most sessions held at once; the exit refuses more, the entry leaves new
    /// application connections waiting in its listen queue until one ends.
    #[arg(long, default_value_t = 10_000)]
    max_sessions: usize,
    /// Keepalive relay: the most connections held at once; new ones wait in the listen queue
    /// until one ends.
    #[arg(long, default_value_t = idlegate::survive::relay::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// TCP keepalive on both sockets: IDLE,INTERVAL,COUNT.
    #[arg(long, conflicts_with = "profile")]
    keepalive: Option<String>,
    /// Derive the keepalive from this middlebox profile's idle timeout (first probe at half).
    #[arg(long)]
    profile: Option<String>,
    /// Several relays from a TOML file of [[relay]] tables (listen, connect, keepalive or
    /// profile).
    #[arg(long, conflicts_with_all = ["listen", "connect", "keepalive", "profile"])]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9465).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct ProbeArgs {
    /// The far end: `idlegate echo` for every check, or any TCP server for some.
    target: String,
    /// The longest idle time to try, e.g. 30m.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    max: std::time::Duration,
    /// The width of the bracket wanted, e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    resolution: std::time::Duration,
    /// How long a test waits for an answer before calling the path silent (longer than the
    /// path's round trip).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    wait: std::time::Duration,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// At most this many connections open at once, for a box that lends few ports (GCP Cloud
    /// NAT: 64 per VM by default); the bracket may then be wider than --resolution.
    #[arg(long)]
    connections: Option<usize>,
}

/// A byte count: `65536`, `64KiB`, `4MiB` (or KB/MB, the same powers of two).
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 4MiB"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        other => return Err(format!("{s:?}: unknown unit {other:?} (B, KiB, MiB, GiB)")),
    };
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?}: too large"))?;
    if !(1 << 16..=1 << 34).contains(&bytes) {
        return Err(format!("{s:?}: must be 64KiB to 16GiB"));
    }
    Ok(bytes)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(d)
}

#[derive(Args)]
struct EchoArgs {
    /// Where to listen, e.g. 0.0.0.0:9300 or [::]:9300.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The most probe connections served at once; more are refused with an error frame.
    #[arg(long, default_value_t = idlegate::measure::echo::MAX_CONNECTIONS)]
    max_connections: usize,
}

#[derive(Subcommand)]
enum ProfilesAction {
    /// Print a complete config for the profile, every default written out, that --config accepts.
    Show { name: String },
}

#[derive(Args)]
struct GatewayArgs {
    /// The gateway's TOML config.
    #[arg(long)]
    config: PathBuf,
    /// TUN device on the backend pool's side.
    #[arg(long, default_value = "igw-inside")]
    inside: String,
    /// TUN device on the internet's side.
    #[arg(long, default_value = "igw-outside")]
    outside: String,
    /// Print, for every rule, the idle timeout and expiry action that will apply and which
    /// setting won, then exit without starting.
    #[arg(long)]
    explain: bool,
    /// The control socket `idlegate flows` talks to.
    #[arg(long, default_value = DEFAULT_CONTROL)]
    control: PathBuf,
    /// Write every packet the gateway sees or makes to this pcap file.
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// Worker threads, each with a shard of the flows and a queue of every device
    /// [default: IDLEGATE_WORKERS, else one per core].
    #[arg(long, value_parser = workers_in_range)]
    workers: Option<usize>,
    /// Run as this user once the devices are open and the sockets bound (the control socket
    /// is handed to it). Without it the gateway stays root but drops every capability.
    #[arg(long)]
    user: Option<String>,
}

/// `--workers`: 1 to [`idlegate::gateway::MAX_WORKERS`].
fn workers_in_range(text: &str) -> Result<usize, String> {
    let max = idlegate::gateway::MAX_WORKERS;
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of workers from 1 to {max}")),
    }
}

const DEFAULT_CONTROL: &str = "/run/idlegate/gateway.sock";

#[derive(Args)]
struct FlowsArgs {
    #[command(subcommand)]
    action: Option<FlowsAction>,
    /// Ask the gateway of this running lab.
    #[arg(long, global = true, conflicts_with = "control")]
    lab: Option<String>,
    /// Ask the gateway with this control socket.
    #[arg(long, global = true, default_value = DEFAULT_CONTROL)]
    control: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum FlowsAction {
    /// Expire flows now, with their rules' expiry actions, as a platform event would.
    Expire {
        /// Only the flows of this rule.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        rule: Option<String>,
        /// Every flow.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Create the lab's hosts and run the gateway between them until SIGINT/SIGTERM.
    Up {
        #[arg(long)]
        config: PathBuf,
        /// Print, for every rule, the idle timeout and expiry action that will apply and which
        /// setting won, then exit without starting.
        #[arg(long)]
        explain: bool,
        /// Lab name, so several labs can run at once.
        #[arg(long, default_value = "lab")]
        name: String,
        /// Write every packet the gateway sees or makes to this pcap file.
        #[arg(long)]
        pcap: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// Gateway worker threads [default: IDLEGATE_WORKERS, else one per core].
        #[arg(long, value_parser = workers_in_range)]
        workers: Option<usize>,
    },
    /// Run a program in a host of a running lab (a member's name, or `internet`).
    Exec {
        #[arg(long, default_value = "lab")]
        name: String,
        /// The host: a backend pool member's name, or `internet`.
        host: String,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Replay the idle-drop experiment (seed 004) in seconds: three connections, three fates.
    Demo(demo::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Lab(LabCommand::Demo(_)));
    init_logging(cli.verbose, quiet);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("idlegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (verbose, quiet) {
        (0, true) => "warn",
        (0, false) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Gateway(GatewayArgs {
            config,
            explain: true,
            ..
        }) => explain(&config).map(|()| ExitCode::SUCCESS),
        Command::Gateway(args) => gateway(args).map(|()| ExitCode::SUCCESS),
        Command::Lab(LabCommand::Up {
            config,
            explain: true,
            ..
        }) => explain(&config).map(|()| ExitCode::SUCCESS),
        Command::Lab(LabCommand::Up {
            config,
            name,
            pcap,
            metrics,
            workers,
            ..
        }) => {
            let workers = workers.unwrap_or_else(idlegate::gateway::default_workers);
            lab_up(&config, &name, workers, Extras { pcap, metrics }).map(|()| ExitCode::SUCCESS)
        }
        Command::Lab(LabCommand::Exec {
            name,
            host,
            command,
        }) => {
            let (program, args) = command.split_first().context("no command given after --")?;
            let status = lab::exec(&name, &host, program, args)?;
            Ok(exit_code(status))
        }
        Command::Lab(LabCommand::Demo(options)) => demo::run(&options).map(|()| ExitCode::SUCCESS),
        Command::Flows(args) => flows(args).map(|()| ExitCode::SUCCESS),
        Command::Echo(args) => echo(&args).map(|()| ExitCode::SUCCESS),
        Command::Probe(args) => probe(&args).map(|()| ExitCode::SUCCESS),
        Command::Relay(args) => relay(&args).map(|()| ExitCode::SUCCESS),
        Command::Keepalive(args) => keepalive(&args),
        Command::Advise(args) => advise(&args).map(|()| ExitCode::SUCCESS),
        Command::Audit(args) => audit(&args).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run_watched(&args),
        Command::Keygen { file, pair: false } => {
            idlegate::survive::tunnel::key::Key::generate(&file).map(|_| {
                println!(
                "wrote a new tunnel key to {} (mode 0600); copy it to the other end of the pair",
                file.display()
            );
                ExitCode::SUCCESS
            })
        }
        Command::Keygen { file, pair: true } => {
            use idlegate::survive::tunnel::key::PrivateKey;
            PrivateKey::generate(&file).map(|key| {
                println!("{}", key.public());
                eprintln!(
                    "wrote a private key to {} (mode 0600; keep it there) and its public key, above, to {}: \
                     an exit lists an entry's public key in its --peers file, an entry names its exit's with --exit-public-key",
                    file.display(),
                    PrivateKey::public_path(&file).display()
                );
                ExitCode::SUCCESS
            })
        }
        Command::Profiles { action: None } => {
            print!("{}", profiles_table());
            Ok(ExitCode::SUCCESS)
        }
        Command::Profiles {
            action: Some(ProfilesAction::Show { name }),
        } => {
            let Some(p) = profile::find(&name) else {
                let known: Vec<&str> = profile::ALL.iter().map(|p| p.name).collect();
                anyhow::bail!("no profile {name:?}; known: {}", known.join(", "));
            };
            print!("{}", profile::example_config(p));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `idlegate flows` and `idlegate flows expire`.
fn flows(args: FlowsArgs) -> Result<()> {
    let path = args.lab.as_deref().map_or(args.control, lab::control_path);
    let request = match &args.action {
        None => Request::Flows,
        Some(FlowsAction::Expire { rule, all }) => Request::Expire {
            rule: rule.clone(),
            all: *all,
        },
    };
    match control::ask(&path, &request)? {
        Response::Error { message } => anyhow::bail!("the gateway refused: {message}"),
        Response::Expired { count } if args.json => {
            println!("{}", serde_json::json!({ "expired": count }))
        }
        Response::Expired { count } => println!("expired {count} flow(s)"),
        Response::Flows { flows } if args.json => {
            println!("{}", serde_json::to_string_pretty(&flows)?)
        }
        Response::Flows { flows } => print!("{}", flow_table(&flows)),
    }
    Ok(())
}

fn flow_table(flows: &[FlowRow]) -> String {
    let mut out = format!(
        "{:<16} {:<5} {:<22} {:<22} {:<22} {:<12} {:>9} {:>11}\n",
        "RULE", "PROTO", "REMOTE", "PUBLIC", "PRIVATE", "STATE", "IDLE FOR", "EXPIRES IN"
    );
    for f in flows {
        out += &format!(
            "{:<16} {:<5} {:<22} {:<22} {:<22} {:<12} {:>8.1}s {:>10.1}s\n",
            f.rule,
            f.protocol,
            f.remote,
            f.public,
            f.private,
            f.state,
            f.idle_for_s,
            f.expires_in_s
        );
    }
    out += &format!("{} flow(s)\n", flows.len());
    out
}

/// `idlegate profiles`: one line per profile.
fn profiles_table() -> String {
    let range = |r: &profile::TimeoutRange| {
        if r.min == r.max {
            format!("{} (fixed)", human(r.default))
        } else {
            format!("{} ({}–{})", human(r.default), human(r.min), human(r.max))
        }
    };
    let mut out = String::new();
    for p in profile::ALL {
        out += &format!("{} ({})\n", p.name, p.title);
        let mut line = |what: &str, value: String| out += &format!("  {what:<43}{value}\n");
        if p.rules.inbound() {
            line(
                "lb_rule and inbound_nat_rule idle timeout",
                range(&p.lb_rule_idle),
            );
        }
        if p.rules.outbound() {
            line("outbound_rule idle timeout", range(&p.outbound_rule_idle));
        }
        if let Some(f) = &p.frontend_idle {
            line("frontend idle timeout (inbound)", range(f));
        }
        line("TCP not established (SYN, FIN, RST)", p.tcp.summary());
        if p.pickup.default == profile::Pickup::Loose {
            let configurable = if p.pickup.knob == profile::PickupKnob::Sysctl {
                " (loose_pickup = false turns it off)"
            } else {
                ""
            };
            line(
                "unknown connections",
                format!("an ACK re-opens a forgotten flow{configurable}"),
            );
        }
        if p.refresh == profile::Refresh::DataOnly {
            line(
                "kept alive by",
                "data only: TCP keepalive does not refresh".to_string(),
            );
        }
        line(
            "UDP (unanswered / answered)",
            format!("{} / {}", human(p.udp.unreplied), human(p.udp.replied)),
        );
        line("IPv4 fragments", p.fragments.as_str().to_string());
        let reset_next = match p.reset_on_next {
            profile::ResetTarget::Sender => "",
            profile::ResetTarget::InsideOnly => ", to the inside host only",
        };
        line(
            "at expiry, by default",
            format!("{}{reset_next}", p.default_expiry),
        );
        if p.rules.outbound() {
            let ports = match p.snat.allocation {
                profile::Allocation::PerMember => format!(
                    "{} per member (multiples of {}, ≤ {} per frontend)",
                    p.snat.ports_per_member,
                    p.snat.ports_per_member_step,
                    p.snat.ports_per_frontend
                ),
                profile::Allocation::Shared => "on demand from the frontend's range".to_string(),
                profile::Allocation::PreservePort => {
                    "the member's own, unless the tuple clashes".to_string()
                }
            };
            line("SNAT ports", ports);
            line(
                "SNAT port held after FIN / RST",
                format!(
                    "{} / {}",
                    human(p.snat.hold_after_fin),
                    human(p.snat.hold_after_rst)
                ),
            );
        }
    }
    out
}

/// `--explain`: what every rule's flows will get, and why.
fn explain(path: &Path) -> Result<()> {
    print!("{}", precedence::explain(&load_config(path)?));
    Ok(())
}

/// Reads and validates a config file; nothing starts on a bad one.
fn load_config(path: &Path) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Config::from_toml(&text, &path.display().to_string())?)
}

fn gateway(args: GatewayArgs) -> Result<()> {
    let config = load_config(&args.config)?;
    let user = args
        .user
        .as_deref()
        .map(idlegate::sys::privilege::User::lookup)
        .transpose()?;
    let workers = args
        .workers
        .unwrap_or_else(idlegate::gateway::default_workers);
    let mut ports = Vec::new();
    for (name, interface) in [
        (&args.inside, Interface::Inside),
        (&args.outside, Interface::Outside),
    ] {
        let queues = Tun::create_queues(name, workers)?;
        // No IPv6 link-local address: the kernel would send router solicitations into it.
        netns::ip(&["link", "set", name, "addrgenmode", "none"])?;
        netns::ip(&["link", "set", name, "up"])?;
        ports.push(Port {
            queues,
            interface,
            host: None,
        });
    }
    tracing::info!(
        "TUN {} (inside) and {} (outside) are up: route every packet arriving from the backend pool into {} \
         and every packet arriving from the internet into {} (policy routing by incoming interface; see the README)",
        args.inside,
        args.outside,
        args.inside,
        args.outside
    );
    let options = Options {
        control: Some(args.control.clone()),
        pcap: args.pcap,
        metrics: args.metrics,
    };
    let mut gateway = Gateway::new(&config, ports, &options)?;
    // Forwarding needs no privilege: the devices are open and the sockets bound. This is
    // still the only thread (capabilities and no_new_privs are per thread; threads started
    // later inherit them), so the signal handler's thread starts only after the drop. Until
    // then SIGINT and SIGTERM end the process as they always do, and the devices go with it.
    if let Some(user) = user {
        idlegate::sys::privilege::give(&args.control, user)?;
    }
    idlegate::sys::privilege::drop_all(user)?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    tracing::info!(
        "privileges dropped: running as uid {uid} with no capabilities{}",
        if uid == 0 {
            " (still uid 0, which owns root's files: give --user for less)"
        } else {
            ""
        }
    );
    let interrupt = Interrupt::install()?;
    if interrupt.attach(gateway.stopper()) {
        return Ok(());
    }
    print_ready()?;
    gateway.run()
}

/// Tells a script on stdout that traffic can flow.
fn print_ready() -> Result<()> {
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    Ok(())
}

fn lab_up(config_path: &Path, name: &str, workers: usize, extras: Extras) -> Result<()> {
    let config = load_config(config_path)?;
    // Handled from here on, so a signal while the lab is being built still takes it down.
    let interrupt = Interrupt::install()?;
    let mut lab = Lab::up_with_workers(name, &config, workers)
        .with_context(|| format!("{}", config_path.display()))?;
    let mut gateway = lab.gateway(&config, extras)?;
    if interrupt.attach(gateway.stopper()) {
        return Ok(());
    }
    for host in lab.hosts() {
        let side = if host.interface == Interface::Inside {
            "backend pool member"
        } else {
            "outside host"
        };
        let address = match host.interface {
            Interface::Inside => host.address.to_string(),
            Interface::Outside => format!("{} and {}", host.address, lab::INTERNET_ADDRESS_V6),
        };
        tracing::info!(
            "host {} ({side}) at {address} in namespace {}",
            host.name,
            lab::namespace(name, &host.name)
        );
    }
    for rule in &config.lb_rules {
        let frontend = &config.frontends[rule.frontend];
        let pool = &config.backend_pools[rule.backend_pool].name;
        tracing::info!(
            "lb_rule {}: {} → pool {pool} port {}",
            rule.name,
            std::net::SocketAddr::new(frontend.address, rule.frontend_port),
            rule.backend_port
        );
    }
    for rule in &config.inbound_nat_rules {
        let address = config.frontends[rule.frontend].address;
        for (i, member) in rule.members.iter().enumerate() {
            let port = usize::from(rule.first_port) + i;
            let frontend = std::net::SocketAddr::new(address, port as u16);
            tracing::info!(
                "inbound_nat_rule {}: {frontend} → {} port {}",
                rule.name,
                member.name,
                rule.backend_port
            );
        }
    }
    for g in &config.nat_gateways {
        let pools: Vec<&str> = g
            .backend_pools
            .iter()
            .map(|&p| config.backend_pools[p].name.as_str())
            .collect();
        tracing::info!(
            "nat_gateway {}: pools {} leave from {}",
            g.name,
            pools.join(", "),
            config.frontends[g.frontend].address
        );
    }
    for rule in &config.outbound_rules {
        let pool = &config.backend_pools[rule.backend_pool].name;
        tracing::info!(
            "outbound_rule {}: pool {pool} leaves from {}",
            rule.name,
            config.frontends[rule.frontend].address
        );
    }
    for line in precedence::explain(&config).lines() {
        tracing::info!("{line}");
    }
    print_ready()?;
    gateway.run()?;
    drop(gateway);
    drop(lab);
    tracing::info!("lab {name} removed");
    Ok(())
}

/// SIGINT and SIGTERM for the whole run: the first stops the gateway (or, during setup, the
/// command as soon as setup ends), so the lab is always taken down; a second exits at once.
struct Interrupt {
    received: Arc<AtomicBool>,
    stopper: Arc<Mutex<Option<Stopper>>>,
}

impl Interrupt {
    fn install() -> Result<Interrupt> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .context("installing signal handlers")?;
        let interrupt = Interrupt {
            received: Arc::default(),
            stopper: Arc::default(),
        };
        let (received, stopper) = (interrupt.received.clone(), interrupt.stopper.clone());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if received.swap(true, Ordering::SeqCst) {
                        eprintln!("idlegate: signal {signal} again: exiting without cleaning up");
                        std::process::exit(128 + signal);
                    }
                    tracing::info!("signal {signal}: stopping (send it again to exit at once)");
                    if let Some(stopper) = lock(&stopper).as_ref() {
                        stopper.stop();
                    }
                }
            })
            .context("starting the signal thread")?;
        Ok(interrupt)
    }

    /// Lets a signal stop `stopper`'s gateway; true if one already came.
    fn attach(&self, stopper: Stopper) -> bool {
        let mut slot = lock(&self.stopper);
        *slot = Some(stopper);
        self.received.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The exit code of a program run in the lab: its own, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// `idlegate echo`: serves until SIGINT or SIGTERM.
fn echo(args: &EchoArgs) -> Result<()> {
    if args.max_connections == 0 {
        anyhow::bail!("--max-connections: at least 1");
    }
    // Each connection is a descriptor; a few dozen more for refusals and the rest.
    let want = u64::try_from(args.max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(256);
    let limit = idlegate::survive::relay::raise_descriptor_limit(want)?;
    if limit < want {
        tracing::warn!(
            "echo: only {limit} descriptors may be open; --max-connections {} will not be reached",
            args.max_connections
        );
    }
    let mut echo = idlegate::measure::echo::Echo::bind(args.listen)?;
    echo.set_max_connections(args.max_connections);
    let stop = echo.stop_flag();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    tracing::info!("echo listening on {}", echo.local_addr()?);
    echo.run()
}

/// `idlegate probe`: runs the search and prints the report.
fn probe(args: &ProbeArgs) -> Result<()> {
    use std::net::ToSocketAddrs;
    let target = args
        .target
        .to_socket_addrs()
        .with_context(|| format!("{}: not HOST:PORT", args.target))?
        .next()
        .with_context(|| format!("{}: no address", args.target))?;
    use std::time::Duration;
    let (day, ms100) = (Duration::from_secs(86_400), Duration::from_millis(100));
    if args.max > day {
        anyhow::bail!("--max {:?}: at most 24 h", args.max);
    }
    if args.resolution < ms100 || args.resolution > args.max {
        anyhow::bail!(
            "--resolution {:?}: from 100 ms to --max ({:?})",
            args.resolution,
            args.max
        );
    }
    if args.wait < Duration::from_millis(10) || args.wait > Duration::from_secs(600) {
        anyhow::bail!("--wait {:?}: from 10 ms to 10 min", args.wait);
    }
    let options = idlegate::measure::probe::Options {
        target,
        max: args.max,
        resolution: args.resolution,
        wait: args.wait,
        connections: args.connections,
    };
    if args.connections.is_some_and(|n| n < 16) {
        anyhow::bail!("--connections: at least 16");
    }
    let report = idlegate::measure::probe::run(&options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", idlegate::measure::probe::summary(&report));
    }
    Ok(())
}

/// `idlegate audit`: the table (or JSON), once or refreshed.
fn audit(args: &AuditArgs) -> Result<()> {
    let (timeout, _) = idle_timeout(args.idle_timeout, args.profile.as_deref())?;
    let netns = args.netns.as_deref();
    if args.json {
        let report = idlegate::survive::audit::audit(timeout, netns)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if !args.watch {
        print!(
            "{}",
            idlegate::survive::audit::audit(timeout, netns)?.render()
        );
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    while !stop.load(Ordering::Relaxed) {
        let text = idlegate::survive::audit::audit(timeout, netns)?.render();
        print!("\x1b[H\x1b[2J{text}");
        std::io::stdout().flush()?;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Ok(())
}

/// The idle timeout asked for (at least 2 s), or the profile's (azure-lb by default), and
/// where it came from.
fn idle_timeout(
    given: Option<std::time::Duration>,
    profile_name: Option<&str>,
) -> Result<(std::time::Duration, String)> {
    if let Some(t) = given {
        if t < std::time::Duration::from_secs(2) {
            anyhow::bail!("--idle-timeout {t:?}: at least 2s (keepalive timers are whole seconds)");
        }
        return Ok((t, "--idle-timeout".to_string()));
    }
    let name = profile_name.unwrap_or(profile::default_profile().name);
    let p = profile::find(name).with_context(|| format!("--profile {name}: no such profile"))?;
    Ok((
        idlegate::survive::keepalive::profile_idle_timeout(p),
        format!("profile {name}"),
    ))
}

/// `idlegate advise`: prints the settings.
fn advise(args: &AdviseArgs) -> Result<()> {
    use idlegate::survive::advise::Advice;
    let (timeout, from) = idle_timeout(args.idle_timeout, args.profile.as_deref())?;
    print!(
        "{}",
        Advice::new(timeout, from, args.os, args.library).render()
    );
    Ok(())
}

/// One line per socket given keepalive: what it had and what it has now, read back; on
/// `out` (stderr under `run`, whose stdout is the program's). Says whether it was changed.
fn print_change(
    out: &mut dyn std::io::Write,
    pid: i32,
    command: &str,
    change: std::io::Result<idlegate::survive::keepalive::Change>,
) -> bool {
    let (line, changed) = match change {
        Ok(c) => (
            format!(
                "pid {pid} ({command}) {}: {} → {}",
                c.socket, c.before, c.after
            ),
            true,
        ),
        Err(e) => (
            format!("pid {pid} ({command}): a socket could not be changed: {e}"),
            false,
        ),
    };
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    changed
}

/// `idlegate keepalive --pid`: fixes a running program's sockets (once, or as they come).
fn keepalive(args: &KeepaliveArgs) -> Result<ExitCode> {
    use idlegate::survive::keepalive::{fix, watch, Process};
    let keepalive = args.choice.resolve()?;
    let process = Process::open(args.pid)?;
    let command = process.command();
    let mut failed = false;
    if args.watch {
        watch(
            &process,
            &keepalive,
            args.fd,
            false,
            |pid, command, change| {
                failed |= !print_change(&mut std::io::stdout(), pid, command, change);
            },
        )?;
        println!("pid {} ({command}) exited", args.pid);
    } else {
        let sockets = process.tcp_sockets(args.fd)?;
        if sockets.is_empty() {
            let what = args.fd.map_or("no TCP sockets".to_string(), |fd| {
                format!("fd {fd} is not a TCP socket")
            });
            eprintln!("pid {} ({command}): {what}", args.pid);
            failed = args.fd.is_some();
        }
        for socket in sockets {
            failed |= !print_change(
                &mut std::io::stdout(),
                args.pid,
                &command,
                fix(socket, &keepalive),
            );
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `idlegate run -- CMD…`: starts the program under a watch and exits with its status. Ctrl-C
/// and SIGQUIT reach the program from the terminal, not us; SIGTERM and SIGHUP sent to us are
/// passed on to it. A watch that fails says so at once; the program runs on.
fn run_watched(args: &RunArgs) -> Result<ExitCode> {
    use idlegate::survive::keepalive::{watch, Process};
    use std::os::unix::process::ExitStatusExt;
    let keepalive = args.choice.resolve()?;
    let (program, rest) = args
        .command
        .split_first()
        .context("run: the program to start, after --")?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGQUIT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("run: installing signal handlers")?;
    let mut child = std::process::Command::new(program)
        .args(rest)
        .spawn()
        .with_context(|| format!("run: cannot start {program:?}"))?;
    let pid = child.id() as i32;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == signal_hook::consts::SIGTERM || signal == signal_hook::consts::SIGHUP {
                // SAFETY: kill with a pid we started and a valid signal number.
                unsafe { libc::kill(pid, signal) };
            }
        }
    });
    let watched = Process::open(pid)
        .map_err(anyhow::Error::from)
        .and_then(|process| {
            Ok(watch(
                &process,
                &keepalive,
                None,
                true,
                |pid, command, change| {
                    print_change(&mut std::io::stderr(), pid, command, change);
                },
            )?)
        });
    if let Err(e) = watched {
        eprintln!("idlegate run: keepalive watch stopped: {e:#}");
    }
    let status = child.wait().context("run: waiting for the program")?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
        (None, Some(signal)) => ExitCode::from((128 + signal).clamp(0, 255) as u8),
        _ => ExitCode::FAILURE,
    })
}

/// `idlegate relay`: runs every relay asked for until SIGINT or SIGTERM.
fn relay(args: &RelayArgs) -> Result<()> {
    use idlegate::survive::relay::{parse_config, Keepalive, Relay};
    use idlegate::survive::tunnel::leg::{EntryKeys, ExitKeys};
    use idlegate::survive::tunnel::{Entry, Exit, Settings};
    let resolve = |flag: &str, v: &str| -> Result<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        v.to_socket_addrs()
            .with_context(|| format!("{flag} {v}: not HOST:PORT"))?
            .next()
            .with_context(|| format!("{flag} {v}: no address"))
    };
    let keepalive = match (&args.keepalive, &args.profile) {
        (Some(k), _) => Keepalive::parse(k)?,
        (None, Some(p)) => Keepalive::for_profile(
            profile::find(p).with_context(|| format!("--profile {p}: no such profile"))?,
        ),
        (None, None) => Keepalive::for_profile(profile::default_profile()),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    type Run = Box<dyn FnOnce() -> Result<()> + Send>;
    let mut runs: Vec<Run> = Vec::new();
    // Before anything listens: room for two descriptors a connection (client and server, or
    // application and leg) on each of `listeners`.
    let fit = |listeners: usize| -> Result<()> {
        let most = if args.tunnel.is_some() || args.tunnel_listen.is_some() {
            args.max_sessions
        } else {
            args.max_connections
        };
        // A tunnel exit also holds connections that have not said Hello yet.
        let gate = if args.tunnel_listen.is_some() {
            idlegate::survive::tunnel::MAX_PENDING as u64
        } else {
            0
        };
        let want = (listeners as u64)
            .saturating_mul(2 * most as u64)
            .saturating_add(64 + gate);
        let soft = idlegate::survive::relay::raise_descriptor_limit(want)?;
        if soft < want {
            tracing::warn!(
                "descriptors: at most {soft} (the hard limit), so about {} connections per listener fit, not {most} (raise it: ulimit -Hn, LimitNOFILE=)",
                soft.saturating_sub(64) / 2 / listeners.max(1) as u64
            );
        }
        Ok(())
    };
    let mut stats = Vec::new();
    let tunnel_settings = || -> Result<Settings> {
        if args.heartbeat < std::time::Duration::from_millis(100) {
            anyhow::bail!("--heartbeat {:?}: at least 100ms", args.heartbeat);
        }
        Ok(Settings {
            heartbeat: args.heartbeat,
            resume_within: args.resume_within,
            replay_buffer: args.replay_buffer,
            keepalive,
            max_sessions: args.max_sessions,
        })
    };
    let entry_keys = || {
        idlegate::survive::tunnel::key::entry_keys(
            args.key.as_deref(),
            args.private_key.as_deref(),
            args.exit_public_key.as_deref(),
        )
    };
    let exit_keys = || {
        idlegate::survive::tunnel::key::exit_keys(
            args.key.as_deref(),
            args.private_key.as_deref(),
            args.peers.as_deref(),
        )
    };
    match (
        &args.config,
        args.listen,
        &args.tunnel,
        args.tunnel_listen,
        &args.connect,
    ) {
        (Some(path), ..) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let relays = parse_config(&text, &path.display().to_string())?;
            fit(relays.len())?;
            for (listen, connect, keepalive) in relays {
                let mut relay = Relay::bind(listen, connect, keepalive)?;
                relay.set_stop_flag(stop.clone());
                relay.set_max_connections(args.max_connections);
                stats.push((relay.local_addr()?, relay.stats()));
                log_relay(relay.local_addr()?, connect, &keepalive);
                runs.push(Box::new(move || relay.run()));
            }
        }
        (None, Some(listen), Some(tunnel), None, None) => {
            let settings = tunnel_settings()?;
            let keys = entry_keys()?;
            let tunnel = resolve("--tunnel", tunnel)?;
            fit(1)?;
            if let EntryKeys::Peer { own, exit } = &keys {
                tracing::info!(
                    "tunnel entry: per-peer keys, this entry's public key {}, the exit's {exit}",
                    own.public()
                );
            }
            let mut entry = Entry::bind(listen, tunnel, keys, settings.clone())?;
            entry.set_stop_flag(stop.clone());
            stats.push((entry.local_addr()?, entry.stats()));
            tracing::info!(
                "tunnel entry {} → exit {tunnel}, heartbeat {:?}, resume within {:?}, replay buffer {} KiB",
                entry.local_addr()?,
                settings.heartbeat,
                settings.resume_within,
                settings.replay_buffer >> 10
            );
            runs.push(Box::new(move || entry.run()));
        }
        (None, None, None, Some(listen), Some(connect)) => {
            let settings = tunnel_settings()?;
            let keys = exit_keys()?;
            let connect = resolve("--connect", connect)?;
            fit(1)?;
            if let ExitKeys::Peers { own, peers } = &keys {
                if peers.list().is_empty() {
                    tracing::warn!(
                        "tunnel exit: {} lists no peer: every handshake is refused until it does",
                        peers.path().display()
                    );
                }
                tracing::info!(
                    "tunnel exit: per-peer keys, this exit's public key {}, {} peers listed in {} (read again every second)",
                    own.public(),
                    peers.list().len(),
                    peers.path().display()
                );
            }
            let mut exit = Exit::bind(listen, connect, keys, settings.clone())?;
            exit.set_stop_flag(stop.clone());
            stats.push((exit.local_addr()?, exit.stats()));
            tracing::info!(
                "tunnel exit {} → {connect}, heartbeat {:?}, resume within {:?}",
                exit.local_addr()?,
                settings.heartbeat,
                settings.resume_within
            );
            runs.push(Box::new(move || exit.run()));
        }
        (None, Some(listen), None, None, Some(connect)) => {
            let connect = resolve("--connect", connect)?;
            fit(1)?;
            let mut relay = Relay::bind(listen, connect, keepalive)?;
            relay.set_stop_flag(stop.clone());
            relay.set_max_connections(args.max_connections);
            stats.push((relay.local_addr()?, relay.stats()));
            log_relay(relay.local_addr()?, connect, &keepalive);
            runs.push(Box::new(move || relay.run()));
        }
        _ => anyhow::bail!(
            "give --listen and --connect (keepalive relay), --listen and --tunnel (tunnel entry), \
             --tunnel-listen and --connect (tunnel exit), or --config"
        ),
    }
    if let Some(addr) = args.metrics {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("--metrics {addr}: cannot listen"))?;
        tracing::info!("metrics on http://{addr}/metrics");
        idlegate::survive::relay::serve_metrics(listener, move || {
            idlegate::survive::relay::render_metrics(&stats)
        });
    }
    let threads: Vec<_> = runs.into_iter().map(std::thread::spawn).collect();
    for t in threads {
        match t.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("a relay thread panicked"),
        }
    }
    Ok(())
}

fn log_relay(
    listen: std::net::SocketAddr,
    connect: std::net::SocketAddr,
    k: &idlegate::survive::relay::Keepalive,
) {
    tracing::info!(
        "relay {listen} → {connect}, keepalive {:?}/{:?}/{}, TCP_USER_TIMEOUT {:?}",
        k.idle,
        k.interval,
        k.count,
        k.user_timeout()
    );
}
