//! `idlegate gateway`: the config read and checked, two TUN devices made and brought up,
//! privileges dropped, systemd told it is ready (`READY=1` to `$NOTIFY_SOCKET`, when set), then
//! the gateway run until SIGINT or SIGTERM; `--explain` prints what every rule's flows will get
//! instead. Also the config loading `lab up` shares.

use super::{print_ready, workers_in_range, DEFAULT_CONTROL};
use anyhow::{Context, Result};
use clap::Args;
use idlegate::gateway::{Attachment, Gateway, Options};
use idlegate::obs::report::{Report, Status};
use idlegate::sys::signal::Interrupt;
use idlegate::sys::tun::Tun;
use idlegate_core::Interface;
use idlegate_core::{precedence, Config};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct GatewayArgs {
    /// The gateway's TOML config.
    #[arg(long)]
    pub config: PathBuf,
    /// TUN device on the backend pool's side.
    #[arg(long, default_value = "igw-inside")]
    pub inside: String,
    /// TUN device on the internet's side.
    #[arg(long, default_value = "igw-outside")]
    pub outside: String,
    /// Print, for every rule, the idle timeout and expiry action that will apply and which
    /// setting won, then exit without starting.
    #[arg(long)]
    pub explain: bool,
    /// With --explain: print it as one JSON document (the profile's timers, and per rule the
    /// TCP and UDP timeouts in seconds, the expiry, the setting that won and why).
    #[arg(long, requires = "explain")]
    pub json: bool,
    /// The control socket `idlegate flows` talks to.
    #[arg(long, default_value = DEFAULT_CONTROL)]
    pub control: PathBuf,
    /// Write every packet the gateway sees or makes to this file, as pcapng (whatever its
    /// name): one interface per side (inside, outside), each packet marked inbound or
    /// outbound. Open it in Wireshark or tshark.
    #[arg(long)]
    pub pcap: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Worker threads, each with a shard of the flows and a queue of every device
    /// [default: IDLEGATE_WORKERS, else one per core].
    #[arg(long, value_parser = workers_in_range)]
    pub workers: Option<usize>,
    /// Run as this user once the devices are open and the sockets bound (the control socket
    /// is handed to it). Without it the gateway stays root but drops every capability.
    #[arg(long)]
    pub user: Option<String>,
}

/// `--explain`: what every rule's flows will get, and why; as text or one JSON document.
pub fn explain(path: &Path, json: bool) -> Result<()> {
    use std::io::Write;
    let config = load_config(path)?;
    let text = if json {
        let explanation = precedence::explanation(&config);
        serde_json::to_string_pretty(&explanation)? + "\n"
    } else {
        precedence::explain(&config)
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing to stdout")
}

/// Reads and validates a config file; nothing starts on a bad one (a usage error, as is a
/// file that cannot be read).
pub fn load_config(path: &Path) -> Result<Config> {
    super::load_config(path)
}

/// `--user NAME` looked up, its errors named after the flag.
fn lookup_user(name: &str) -> Result<idlegate::sys::privilege::User> {
    use idlegate::sys::privilege::{LookupError, User};
    User::lookup(name).map_err(|e| match e {
        LookupError::Nul => anyhow::anyhow!("{e}"),
        LookupError::Root => anyhow::anyhow!(
            "--user {name}: {e} (leave --user out to stay root with no capabilities)"
        ),
        _ => anyhow::anyhow!("--user {name}: {e}"),
    })
}

/// What to do when the TUN devices could not be made for want of privilege. Opening
/// `/dev/net/tun` is checked against its mode (EACCES, "Permission denied"), making a device
/// against CAP_NET_ADMIN (EPERM, "Operation not permitted"); the gateway needs both, and
/// after them write access to its control socket's directory (`/run/idlegate` by default).
fn privilege_hint<T>(error: anyhow::Error) -> Result<T> {
    let errno = idlegate::obs::report::io_cause(&error).and_then(std::io::Error::raw_os_error);
    let binary = std::env::current_exe()
        .map_or_else(|_| "idlegate".to_string(), |p| p.display().to_string());
    let hint = match errno {
        Some(libc::EACCES) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(TUN_DEVICE)
                .map(|m| format!(" (its mode is {:04o})", m.permissions().mode() & 0o7777))
                .unwrap_or_default();
            format!(
                "run it as root: this user may not open {TUN_DEVICE}{mode}; the gateway needs \
                 read-write access to it and CAP_NET_ADMIN"
            )
        }
        Some(libc::EPERM) => format!(
            "run it as root, or give the binary CAP_NET_ADMIN (sudo setcap cap_net_admin+ep \
             {binary}) and a --control path this user can write"
        ),
        _ => return Err(error),
    };
    Err(error).hint(hint)
}

/// The device every TUN device is made through.
const TUN_DEVICE: &str = "/dev/net/tun";

/// `idlegate gateway`: runs until SIGINT or SIGTERM (or, with `--explain`, prints and exits).
pub fn run(args: GatewayArgs) -> Result<()> {
    if args.explain {
        return explain(&args.config, args.json);
    }
    let config = load_config(&args.config)?;
    let user = args
        .user
        .as_deref()
        .map(lookup_user)
        .transpose()
        .status(Status::Usage)?;
    idlegate::gateway::control::check_directory(&args.control)?;
    let workers = args
        .workers
        .unwrap_or_else(idlegate::gateway::default_workers);
    let mut ports = Vec::new();
    for (name, interface) in [
        (&args.inside, Interface::Inside),
        (&args.outside, Interface::Outside),
    ] {
        let queues = Tun::create_queues(name, workers).or_else(privilege_hint)?;
        // No IPv6 link-local address: the kernel would send router solicitations into it.
        queues.first().context("tun-rs made no queue")?.bring_up()?;
        ports.push(Attachment {
            queues,
            interface,
            host: None,
        });
    }
    tracing::info!(target: idlegate::LOG_TARGET,
        "TUN {} (inside) and {} (outside) are up: route every packet arriving from the backend pool into {} \
         and every packet arriving from the internet into {} (policy routing by incoming interface; see docs/src/commands/gateway.md)",
        args.inside,
        args.outside,
        args.inside,
        args.outside
    );
    let options = Options {
        control: Some(args.control.clone()),
        pcap: args.pcap,
        metrics: args.metrics,
        api: None,
    };
    let mut gateway = Gateway::new(&config, ports, &options)?;
    // Connected while still privileged; told only once the devices are up and the gateway is
    // built, so a unit's ExecStartPost= (the host's routes into the devices) runs after.
    let notifier = idlegate::sys::notify::Notifier::from_env()?;
    // Forwarding needs no privilege: the devices are open and the sockets bound. This is
    // still the only thread (capabilities and no_new_privs are per thread; threads started
    // later inherit them), so the signal handler's thread starts only after the drop. Until
    // then SIGINT and SIGTERM end the process as they always do, and the devices go with it.
    if let Some(user) = user {
        idlegate::sys::privilege::give(&args.control, user)?;
    }
    idlegate::sys::privilege::drop_all(user)?;
    let uid = idlegate::sys::process::uid();
    tracing::info!(target: idlegate::LOG_TARGET,
        "privileges dropped: running as uid {uid} with no capabilities{}",
        if uid == 0 {
            " (still uid 0, which owns root's files: give --user for less)"
        } else {
            ""
        }
    );
    let interrupt = Interrupt::install().context("installing signal handlers")?;
    let stopper = gateway.stopper();
    if interrupt.attach(move || stopper.stop()) {
        return Ok(());
    }
    if let Some(notifier) = &notifier {
        notifier.ready()?;
    }
    print_ready()?;
    gateway.run()
}
