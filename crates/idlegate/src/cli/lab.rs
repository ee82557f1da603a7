//! `idlegate lab`: `up` builds the lab's namespaces around a gateway and runs it until SIGINT
//! or SIGTERM (the lab is taken down on the way out), `exec` runs a program in one of its
//! hosts and exits with the program's status, `list` shows the labs that are up, `down` takes
//! one down, `demo` replays the idle-drop experiment.

use super::gateway::{explain, load_config, ApiArgs};
use super::{print_ready, workers_in_range};
use anyhow::{Context, Result};
use clap::Subcommand;
use idlegate::lab::demo;
use idlegate::lab::{self, Extras, Lab};
use idlegate::obs::report::{Report, Status};
use idlegate::sys::signal::Interrupt;
use idlegate_core::precedence;
use idlegate_core::Interface;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum LabCommand {
    /// Create the lab's hosts and run the gateway between them until SIGINT/SIGTERM.
    Up {
        /// The gateway config (TOML: profile, time_scale, frontends, backend pools, rules),
        /// e.g. examples/azure-lb.toml; every backend pool member becomes a host.
        #[arg(long)]
        config: PathBuf,
        /// Print, for every rule, the idle timeout and expiry action that will apply and which
        /// setting won, then exit without starting.
        #[arg(long)]
        explain: bool,
        /// With --explain: print it as one JSON document.
        #[arg(long, requires = "explain")]
        json: bool,
        /// Lab name, so several labs can run at once: 1–32 letters, digits or '_' (no '-').
        #[arg(long, default_value = "lab")]
        name: String,
        /// Write every packet the gateway sees or makes to this file, as pcapng (whatever its
        /// name): one interface per side (inside, outside), each packet marked inbound or
        /// outbound. Open it in Wireshark or tshark.
        #[arg(long)]
        pcap: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// Gateway worker threads [default: IDLEGATE_WORKERS, else one fewer than the cores,
        /// at least one].
        #[arg(long, value_parser = workers_in_range)]
        workers: Option<usize>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Run a program in a host of a running lab (a member's name, or `internet`); exits with
    /// the program's status, passes signals on to it, and gives it the lab's time scale in
    /// IDLEGATE_TIME_SCALE.
    Exec {
        /// The lab to run in: the --name it was started with.
        #[arg(long, default_value = "lab")]
        name: String,
        /// The host: a backend pool member's name, or `internet`.
        host: String,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List the labs that are up: name, state, pid of their `lab up`, time scale, hosts, where
    /// their API is served (with --api) and config.
    List {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Take a lab down (SIGTERM to its `lab up`) and wait until it is gone.
    Down {
        /// The lab: the --name it was started with (without one, the default lab, `lab`).
        #[arg(conflicts_with = "name_flag", value_name = "NAME")]
        name: Option<String>,
        /// The lab, as a flag (the same as NAME).
        #[arg(long = "name", id = "name_flag", value_name = "NAME")]
        name_flag: Option<String>,
    },
    /// Replay the idle-drop experiment in seconds (send, wait, send past the idle timeout):
    /// three connections, three fates; with --config, through one rule of your own config.
    Demo(demo::Options),
}

fn lab_up(config_path: &Path, name: &str, workers: usize, extras: Extras) -> Result<()> {
    let config = load_config(config_path)?;
    // What makes the file unfit for a lab is the file's: named, and a usage error.
    lab::check(&config)
        .with_context(|| config_path.display().to_string())
        .status(Status::Usage)?;
    // Handled from here on, so a signal while the lab is being built still takes it down.
    let interrupt = Interrupt::install().context("installing signal handlers")?;
    // Not blamed on the config file: what fails here (privileges, a lab already up) is not
    // in it, and what is in it was checked by `load_config`.
    let mut lab = Lab::up_with_workers(name, &config, workers)?;
    let mut gateway = lab.gateway(&config, extras)?;
    let stopper = gateway.stopper();
    if interrupt.attach(move || stopper.stop()) {
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
        tracing::info!(target: idlegate::LOG_TARGET,
            "host {} ({side}) at {address} in namespace {}",
            host.name,
            lab::namespace(name, &host.name)
        );
    }
    for rule in &config.lb_rules {
        let frontend = &config.frontends[rule.frontend];
        let pool = &config.backend_pools[rule.backend_pool].name;
        tracing::info!(target: idlegate::LOG_TARGET,
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
            tracing::info!(target: idlegate::LOG_TARGET,
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
        tracing::info!(target: idlegate::LOG_TARGET,
            "nat_gateway {}: pools {} leave from {}",
            g.name,
            pools.join(", "),
            config.frontends[g.frontend].address
        );
    }
    for rule in &config.outbound_rules {
        let pool = &config.backend_pools[rule.backend_pool].name;
        tracing::info!(target: idlegate::LOG_TARGET,
            "outbound_rule {}: pool {pool} leaves from {}",
            rule.name,
            config.frontends[rule.frontend].address
        );
    }
    // The timers at the floor are said once, in one line, by the gateway as it starts.
    let floored: Vec<String> = precedence::floored_timers(&config)
        .iter()
        .map(|f| format!("    {f}"))
        .collect();
    for line in precedence::explain(&config).lines() {
        if !floored.iter().any(|f| f == line) {
            tracing::info!(target: idlegate::LOG_TARGET, "{line}");
        }
    }
    print_ready()?;
    if let Some(addr) = gateway.api_addr() {
        // After `ready`, which scripts wait for as the first line: where to open the API.
        print_line(&api_line(addr))?;
    }
    gateway.run()?;
    drop(gateway);
    drop(lab);
    tracing::info!(target: idlegate::LOG_TARGET, "{} removed", lab::called(name));
    Ok(())
}

/// The line `lab up --api` prints on stdout after `ready`: the API's and the live page's URL,
/// with the bound port. A wildcard address is no place to open: the URL from this host is given.
fn api_line(addr: std::net::SocketAddr) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    if !addr.ip().is_unspecified() {
        return format!("api and live view on http://{addr}/");
    }
    let here = match addr.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    format!(
        "api and live view on every address ({}), port {}: from this host http://{}/",
        addr.ip(),
        addr.port(),
        SocketAddr::new(here, addr.port())
    )
}

/// `line` and a newline on stdout, flushed (a script reads it as it comes).
fn print_line(line: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// `idlegate lab up`, `lab exec` (which exits with the program's status) and `lab demo`.
pub fn run(command: LabCommand) -> Result<ExitCode> {
    match command {
        LabCommand::Up {
            config,
            explain: true,
            json,
            ..
        } => explain(&config, json).map(|()| ExitCode::SUCCESS),
        LabCommand::Up {
            config,
            name,
            pcap,
            metrics,
            workers,
            api,
            ..
        } => {
            let workers = workers.unwrap_or_else(idlegate::gateway::default_workers);
            let extras = Extras {
                pcap,
                metrics,
                config_path: Some(std::path::absolute(&config).unwrap_or(config.clone())),
                api: api.options()?,
            };
            lab_up(&config, &name, workers, extras).map(|()| ExitCode::SUCCESS)
        }
        LabCommand::Exec {
            name,
            host,
            command,
        } => {
            let (program, args) = command.split_first().context("no command given after --")?;
            let status = lab::exec(&name, &host, program, args)?;
            // The program's own status, not a failure of ours: passed on as it is.
            Ok(ExitCode::from(idlegate::sys::process::exit_code(status)))
        }
        LabCommand::List { json } => list(json).map(|()| ExitCode::SUCCESS),
        LabCommand::Down { name, name_flag } => {
            let name = name.or(name_flag).unwrap_or_else(|| "lab".to_string());
            lab::down(&name)?;
            tracing::info!(target: idlegate::LOG_TARGET, "{} is down", lab::called(&name));
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Demo(options) => match &options.config {
            Some(path) => {
                let config = load_config(path)?;
                lab::check(&config)
                    .with_context(|| path.display().to_string())
                    .status(Status::Usage)?;
                idlegate::lab::demo_rule::run(&options, config, path).map(|()| ExitCode::SUCCESS)
            }
            None => demo::run(&options).map(|()| ExitCode::SUCCESS),
        },
    }
}

/// `idlegate lab list`: a table, or with `json` one JSON array, of the labs that are up.
fn list(json: bool) -> Result<()> {
    let labs = lab::list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&labs)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:>8} {:>10}  {:<24} {:<24} CONFIG",
        "NAME", "STATE", "PID", "TIME SCALE", "HOSTS", "API"
    );
    for l in &labs {
        let hosts: Vec<&str> = l.hosts.iter().map(|h| h.name.as_str()).collect();
        println!(
            "{:<20} {:<8} {:>8} {:>10}  {:<24} {:<24} {}",
            l.name,
            l.state,
            l.pid.map_or("-".to_string(), |p| p.to_string()),
            l.time_scale.map_or("-".to_string(), |t| format!("1/{t}")),
            if hosts.is_empty() {
                "-".to_string()
            } else {
                hosts.join(",")
            },
            l.api.as_deref().unwrap_or("-"),
            l.config
                .as_ref()
                .map_or("-".to_string(), |c| c.display().to_string())
        );
    }
    println!("{} lab(s) up", labs.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::api_line;

    #[test]
    fn the_api_line_gives_the_url_to_open_and_for_a_wildcard_the_one_from_this_host() {
        let line = |addr: &str| api_line(addr.parse().unwrap());
        assert_eq!(
            line("127.0.0.1:41234"),
            "api and live view on http://127.0.0.1:41234/"
        );
        assert_eq!(
            line("[::1]:9466"),
            "api and live view on http://[::1]:9466/"
        );
        assert_eq!(
            line("192.0.2.1:9466"),
            "api and live view on http://192.0.2.1:9466/"
        );
        assert_eq!(
            line("0.0.0.0:9467"),
            "api and live view on every address (0.0.0.0), port 9467: \
             from this host http://127.0.0.1:9467/"
        );
        assert_eq!(
            line("[::]:9467"),
            "api and live view on every address (::), port 9467: from this host http://[::1]:9467/"
        );
    }
}
