//! `idlegate relay`'s wiring: binds what [`Options`] asks for (keepalive relays from the
//! arguments or a config file, a tunnel entry or a tunnel exit), serves their metrics, and
//! runs them until the stop flag is set.
//!
//! Contract: nothing listens before every input is checked (the keys read, the addresses
//! resolved, the descriptor limit raised for the connections asked for); an error names what
//! failed. The caller decides what sets the stop flag (`idlegate relay`: SIGINT or SIGTERM;
//! Ctrl-C or the console closing on Windows; `idlegate service run`: the service's Stop control,
//! and it reports Running once [`serve_then`] says everything is bound).

use crate::obs::report::{Report, Status};
use crate::survive::relay::{parse_config, Keepalive, Relay};
use crate::survive::stats::Stats;
use crate::survive::tunnel::leg::{EntryKeys, ExitKeys};
use crate::survive::tunnel::{Entry, Exit, Settings};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::LOG_TARGET as LOG;

/// What to run.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Keepalive relays, one per `[[relay]]` table of this TOML file.
    Config(PathBuf),
    /// One keepalive relay from `listen` to `connect` (HOST:PORT).
    Relay { listen: SocketAddr, connect: String },
    /// A tunnel entry: connections accepted on `listen` go to the exit at `tunnel` (HOST:PORT).
    Entry { listen: SocketAddr, tunnel: String },
    /// A tunnel exit: legs accepted on `listen`, each session connected to `connect`.
    Exit { listen: SocketAddr, connect: String },
}

/// Where a tunnel end's keys come from (see [`crate::survive::tunnel::key`]).
#[derive(Debug, Clone, Default)]
pub struct KeyFiles {
    /// The pair's shared key file.
    pub key: Option<PathBuf>,
    /// Per-peer mode: this end's private key file.
    pub private_key: Option<PathBuf>,
    /// Per-peer mode, exit: the file of the entries it accepts.
    pub peers: Option<PathBuf>,
    /// Per-peer mode, entry: the exit's public key, or a file that holds it.
    pub exit_public_key: Option<String>,
}

/// Where the connection limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The default: nobody asked for that many.
    Default,
    /// Asked for (`--max-connections`, `--max-sessions`).
    Asked,
}

/// Everything `idlegate relay` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub plan: Plan,
    /// The keepalive on a keepalive relay's sockets (a config file's relays each name theirs).
    pub keepalive: Keepalive,
    pub keys: KeyFiles,
    /// The tunnel's settings (their keepalive, on the application's sockets, is the same as
    /// `keepalive`).
    pub settings: Settings,
    /// Keepalive relay: the most connections held at once.
    pub max_connections: usize,
    /// Whether the limit that applies (`max_connections`, or a tunnel's `max_sessions`) was
    /// asked for or is the default: a default the descriptor limit cannot hold is lowered to
    /// what it holds, quietly; an asked-for one is lowered with a warning.
    pub limit: Limit,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    pub metrics: Option<SocketAddr>,
}

impl Options {
    /// The most connections (or sessions) each listener holds, and how many more descriptors
    /// it may hold besides (a tunnel entry's free legs; a tunnel exit's connections that have
    /// not said Hello yet and its idle legs).
    fn most(&self) -> (usize, u64) {
        use crate::survive::tunnel;
        match self.plan {
            Plan::Config(_) | Plan::Relay { .. } => (self.max_connections, 0),
            Plan::Entry { .. } => (
                self.settings.max_sessions,
                tunnel::entry_descriptors_besides_sessions() as u64,
            ),
            Plan::Exit { .. } => (
                self.settings.max_sessions,
                tunnel::exit_descriptors_besides_sessions() as u64,
            ),
        }
    }

    /// Before anything listens: room for two descriptors a connection (client and server, or
    /// application and leg) on each of `listeners`. Returns the most connections (sessions)
    /// each listener holds: what was asked, or what the descriptor limit holds if less. Only
    /// an asked-for limit that does not fit is warned about (with the numbers and the fix).
    fn fit(&self, listeners: usize) -> Result<usize> {
        let (most, gate) = self.most();
        let want = (listeners as u64)
            .saturating_mul(2 * most as u64)
            .saturating_add(64 + gate);
        let soft = crate::sys::rlimit::raise_descriptor_limit(want)?;
        if soft >= want {
            return Ok(most);
        }
        let fits = soft.saturating_sub(64 + gate) / 2 / listeners.max(1) as u64;
        let fits = usize::try_from(fits).unwrap_or(usize::MAX).clamp(1, most);
        let flag = match self.plan {
            Plan::Config(_) | Plan::Relay { .. } => "--max-connections",
            Plan::Entry { .. } | Plan::Exit { .. } => "--max-sessions",
        };
        match self.limit {
            Limit::Default => tracing::info!(target: LOG,
                "descriptors: the limit is {soft}, so each listener holds at most {fits} connections (for more: raise the hard limit, ulimit -Hn or LimitNOFILE=, and give {flag})"
            ),
            Limit::Asked => tracing::warn!(target: LOG,
                "descriptors: {flag} {most} needs {want} descriptors but the limit is {soft} (the hard limit), so each listener holds at most {fits} connections (raise the hard limit: ulimit -Hn, or LimitNOFILE= in the systemd unit; or give a smaller {flag})"
            ),
        }
        Ok(fits)
    }
}

/// `flag v` as an address: the first HOST:PORT resolves to.
fn resolve(flag: &str, v: &str) -> Result<SocketAddr> {
    resolve_as(&format!("{flag} {v}"), v)
}

/// What to write where text is not HOST:PORT.
pub const HOST_PORT_HINT: &str =
    "give HOST:PORT, e.g. db.example.com:5432, 192.0.2.10:5432 or [fd00::10]:5432";

/// `v` (HOST:PORT) as the first address it resolves to, an error saying `what` it was. Text
/// that is not HOST:PORT is a usage error; a name that does not resolve says so, with what to
/// check. (`idlegate probe TARGET` resolves its target so too.)
pub fn resolve_as(what: &str, v: &str) -> Result<SocketAddr> {
    use crate::sys::resolve::{host_port, Unresolved};
    let e = match host_port(v) {
        Ok(addr) => return Ok(addr),
        Err(e) => e,
    };
    let (hint, status) = match &e {
        Unresolved::NotHostPort(_) => (HOST_PORT_HINT.to_string(), Status::Usage),
        Unresolved::Lookup { host, .. } => (
            format!(
                "check the name, and that this machine's resolver knows it: getent hosts {host}"
            ),
            Status::Runtime,
        ),
        Unresolved::NoAddress => (
            "the name resolves to no address: give one it does, or an IP address".to_string(),
            Status::Runtime,
        ),
    };
    Err(e)
        .with_context(|| what.to_string())
        .hint(hint)
        .status(status)
}

/// Binds every relay `options` asks for and runs them until `stop` is set; each one stops
/// on its own once it sees the flag.
pub fn serve(options: &Options, stop: Arc<AtomicBool>) -> Result<()> {
    serve_then(options, stop, || {})
}

/// [`serve`], calling `serving` once everything is bound (every listener, and the metrics')
/// and before anything runs: a Windows service reports Running then, not before.
pub fn serve_then(options: &Options, stop: Arc<AtomicBool>, serving: impl FnOnce()) -> Result<()> {
    use crate::obs::report::listening;
    let mut runs: Vec<Run> = Vec::new();
    let mut stats = Vec::new();
    // Bound before any relay is, so that a port in use is refused before a relay says in
    // the log that it runs.
    let metrics = match options.metrics {
        Some(addr) => Some(listening(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("listening for metrics on {addr}")),
            "--metrics",
            addr,
        )?),
        None => None,
    };
    match &options.plan {
        Plan::Config(path) => {
            // A file the command line names that cannot be read is a usage error, as
            // `gateway --config`'s.
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))
                .status(Status::Usage)?;
            let relays = parse_config(&text, &path.display().to_string())?;
            let most = options.fit(relays.len())?;
            for (listen, connect, keepalive) in relays {
                let (local, relay_stats, run) = listening(
                    bind_relay(listen, connect, keepalive, most, &stop),
                    "listen",
                    listen,
                )?;
                stats.push((local, relay_stats));
                runs.push(run);
            }
        }
        Plan::Entry { listen, tunnel } => {
            let keys = &options.keys;
            let keys = crate::survive::tunnel::key::entry_keys(
                keys.key.as_deref(),
                keys.private_key.as_deref(),
                keys.exit_public_key.as_deref(),
            )?;
            let tunnel = resolve("--tunnel", tunnel)?;
            let settings = &Settings {
                max_sessions: options.fit(1)?,
                ..options.settings.clone()
            };
            if let EntryKeys::Peer { own, exit } = &keys {
                tracing::info!(target: LOG,
                    "tunnel entry: per-peer keys, this entry's public key {}, the exit's {exit}",
                    own.public()
                );
            }
            let mut entry = listening(
                Entry::bind(*listen, tunnel, keys, settings.clone()),
                "--listen",
                *listen,
            )?;
            entry.set_stop_flag(stop.clone());
            stats.push((entry.local_addr()?, entry.stats()));
            tracing::info!(target: LOG,
                "tunnel entry {} → exit {tunnel}, heartbeat {:?}, resume within {:?}, replay buffer {} KiB",
                entry.local_addr()?,
                settings.heartbeat,
                settings.resume_within,
                settings.replay_buffer >> 10
            );
            runs.push(Box::new(move || entry.run()));
        }
        Plan::Exit { listen, connect } => {
            let keys = &options.keys;
            let keys = crate::survive::tunnel::key::exit_keys(
                keys.key.as_deref(),
                keys.private_key.as_deref(),
                keys.peers.as_deref(),
            )?;
            let connect = resolve("--connect", connect)?;
            let settings = &Settings {
                max_sessions: options.fit(1)?,
                ..options.settings.clone()
            };
            if let ExitKeys::Peers { own, peers } = &keys {
                if peers.list().is_empty() {
                    tracing::warn!(target: LOG,
                        "tunnel exit: {} lists no peer: every handshake is refused until it does",
                        peers.path().display()
                    );
                }
                tracing::info!(target: LOG,
                    "tunnel exit: per-peer keys, this exit's public key {}, {} peers listed in {} (read again every second)",
                    own.public(),
                    peers.list().len(),
                    peers.path().display()
                );
            }
            let mut exit = listening(
                Exit::bind(*listen, connect, keys, settings.clone()),
                "--tunnel-listen",
                *listen,
            )?;
            exit.set_stop_flag(stop.clone());
            stats.push((exit.local_addr()?, exit.stats()));
            tracing::info!(target: LOG,
                "tunnel exit {} → {connect}, heartbeat {:?}, resume within {:?}",
                exit.local_addr()?,
                settings.heartbeat,
                settings.resume_within
            );
            runs.push(Box::new(move || exit.run()));
        }
        Plan::Relay { listen, connect } => {
            let connect = resolve("--connect", connect)?;
            let most = options.fit(1)?;
            let (local, relay_stats, run) = listening(
                bind_relay(*listen, connect, options.keepalive, most, &stop),
                "--listen",
                *listen,
            )?;
            stats.push((local, relay_stats));
            runs.push(run);
        }
    }
    if let (Some(listener), Some(addr)) = (metrics, options.metrics) {
        tracing::info!(target: LOG, "metrics on http://{addr}/metrics");
        crate::survive::relay::serve_metrics(listener, move || {
            crate::survive::relay::render_metrics(&stats)
        });
    }
    serving();
    let threads: Vec<_> = runs.into_iter().map(std::thread::spawn).collect();
    for t in threads {
        match t.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("a relay thread panicked"),
        }
    }
    Ok(())
}

/// A relay or tunnel end, bound, waiting to be run on a thread of its own.
type Run = Box<dyn FnOnce() -> Result<()> + Send>;

/// Binds one keepalive relay from `listen` to `connect` holding at most `most` connections,
/// with the stop flag, says so in the log, and gives its address, its counters and its run.
fn bind_relay(
    listen: SocketAddr,
    connect: SocketAddr,
    keepalive: Keepalive,
    most: usize,
    stop: &Arc<AtomicBool>,
) -> Result<(SocketAddr, Arc<Stats>, Run)> {
    let mut relay = Relay::bind(listen, connect, keepalive)?;
    relay.set_stop_flag(stop.clone());
    relay.set_max_connections(most);
    let local = relay.local_addr()?;
    log_relay(local, connect, &keepalive);
    Ok((local, relay.stats(), Box::new(move || relay.run())))
}

fn log_relay(listen: SocketAddr, connect: SocketAddr, k: &Keepalive) {
    tracing::info!(target: LOG,
        "relay {listen} → {connect}, keepalive {:?}/{:?}/{}, {} {:?}",
        k.idle,
        k.interval,
        k.count,
        crate::sys::socket::USER_TIMEOUT,
        k.user_timeout()
    );
}
