//! `idlegate relay`: its arguments turned into [`idlegate::survive::serve::Options`] (which
//! relays or which tunnel end, the keys, the tunnel's settings), then served until SIGINT or
//! SIGTERM. The tunnel's limits (heartbeat, replay buffer) are checked in one place,
//! `tunnel::Settings`, before anything listens.

use super::keepalive::keepalive_choice;
use super::{parse_duration, parse_size};
use anyhow::{Context, Result};
use clap::Args;
use idlegate::survive::serve::{self, KeyFiles, Options, Plan};
use idlegate::survive::tunnel::Settings;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Args)]
pub struct RelayArgs {
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

impl RelayArgs {
    /// What to run: a keepalive relay, a tunnel entry or exit, or the relays of a config file;
    /// the keepalive read first, as every plan uses it.
    fn options(&self) -> Result<Options> {
        let keepalive = keepalive_choice(self.keepalive.as_deref(), self.profile.as_deref())?;
        let plan = match (
            &self.config,
            self.listen,
            &self.tunnel,
            self.tunnel_listen,
            &self.connect,
        ) {
            (Some(path), ..) => Plan::Config(path.clone()),
            (None, Some(listen), Some(tunnel), None, None) => Plan::Entry {
                listen,
                tunnel: tunnel.clone(),
            },
            (None, None, None, Some(listen), Some(connect)) => Plan::Exit {
                listen,
                connect: connect.clone(),
            },
            (None, Some(listen), None, None, Some(connect)) => Plan::Relay {
                listen,
                connect: connect.clone(),
            },
            _ => anyhow::bail!(
                "give --listen and --connect (keepalive relay), --listen and --tunnel (tunnel entry), \
                 --tunnel-listen and --connect (tunnel exit), or --config"
            ),
        };
        Ok(Options {
            plan,
            keys: KeyFiles {
                key: self.key.clone(),
                private_key: self.private_key.clone(),
                peers: self.peers.clone(),
                exit_public_key: self.exit_public_key.clone(),
            },
            settings: Settings {
                heartbeat: self.heartbeat,
                resume_within: self.resume_within,
                replay_buffer: self.replay_buffer,
                keepalive,
                max_sessions: self.max_sessions,
            },
            max_connections: self.max_connections,
            metrics: self.metrics,
        })
    }
}

/// `idlegate relay`: runs every relay asked for until SIGINT or SIGTERM.
pub fn run(args: &RelayArgs) -> Result<()> {
    let options = args.options()?;
    let stop = Arc::new(AtomicBool::new(false));
    idlegate::sys::signal::stop_on_interrupt(&stop).context("installing signal handlers")?;
    serve::serve(&options, stop)
}
