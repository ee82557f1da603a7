//! `idlegate relay`: its arguments turned into [`idlegate::survive::serve::Options`] (which
//! relays or which tunnel end, the keys, the tunnel's settings), then served until SIGINT or
//! SIGTERM (Windows: Ctrl-C, Ctrl-Break, the console closed). The tunnel's limits
//! (heartbeat, replay buffer) are checked in one place, `tunnel::Settings`, before anything
//! listens. (`idlegate keygen`, which writes the tunnel's keys, is `cli/keygen.rs`.)

use super::keepalive_choice;
use super::{parse_duration, parse_size};
use anyhow::{Context, Result};
use clap::Args;
use idlegate::obs::report::{Report, Status};
use idlegate::survive::serve::KeyFiles;
use idlegate::survive::serve::{self, Limit, Options, Plan};
use idlegate::survive::tunnel::Settings;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Sessions a tunnel end holds at once unless told.
const DEFAULT_MAX_SESSIONS: usize = 10_000;

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
    /// application connections waiting in its listen queue until one ends. [default: 10000,
    /// or as many as the descriptor limit holds if fewer]
    #[arg(long)]
    max_sessions: Option<usize>,
    /// Keepalive relay: the most connections held at once; new ones wait in the listen queue
    /// until one ends. [default: 10000, or as many as the descriptor limit holds if fewer]
    #[arg(long)]
    max_connections: Option<usize>,
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
    pub(super) fn options(&self) -> Result<Options> {
        let keepalive = keepalive_choice(self.keepalive.as_deref(), self.profile.as_deref())?;
        let settings = Settings {
            heartbeat: self.heartbeat,
            resume_within: self.resume_within,
            replay_buffer: self.replay_buffer,
            keepalive,
            max_sessions: self.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS),
        };
        // A usage error, here: before anything is logged or listens.
        settings.check()?;
        Ok(Options {
            plan: self.plan()?,
            keepalive,
            keys: KeyFiles {
                key: self.key.clone(),
                private_key: self.private_key.clone(),
                peers: self.peers.clone(),
                exit_public_key: self.exit_public_key.clone(),
            },
            settings,
            max_connections: self
                .max_connections
                .unwrap_or(idlegate::survive::relay::DEFAULT_MAX_CONNECTIONS),
            limit: if self.max_sessions.is_some() || self.max_connections.is_some() {
                Limit::Asked
            } else {
                Limit::Default
            },
            metrics: self.metrics,
        })
    }

    fn plan(&self) -> Result<Plan> {
        Ok(match (
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
        })
    }
}

/// `idlegate relay`: runs every relay asked for until SIGINT or SIGTERM (Windows: a console
/// control event).
pub fn run(args: &RelayArgs) -> Result<()> {
    let options = args.options().status(Status::Usage)?;
    let stop = Arc::new(AtomicBool::new(false));
    idlegate::sys::signal::stop_on_interrupt(&stop).context("installing signal handlers")?;
    serve::serve(&options, stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Relay {
        #[command(flatten)]
        args: RelayArgs,
    }

    fn options(args: &[&str]) -> Result<Options> {
        let line = std::iter::once("relay").chain(args.iter().copied());
        Relay::try_parse_from(line)
            .expect("arguments clap accepts")
            .args
            .options()
    }

    #[test]
    fn each_pair_of_flags_picks_its_relay_or_tunnel_end() {
        let listen: std::net::SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let relay = options(&["--listen", "127.0.0.1:15000", "--connect", "192.0.2.1:80"]).unwrap();
        assert!(
            matches!(&relay.plan, Plan::Relay { listen: l, connect } if *l == listen && connect == "192.0.2.1:80")
        );
        let entry =
            options(&["--listen", "127.0.0.1:15000", "--tunnel", "192.0.2.1:7000"]).unwrap();
        assert!(
            matches!(&entry.plan, Plan::Entry { listen: l, tunnel } if *l == listen && tunnel == "192.0.2.1:7000")
        );
        let exit = options(&[
            "--tunnel-listen",
            "127.0.0.1:15000",
            "--connect",
            "192.0.2.1:80",
        ])
        .unwrap();
        assert!(
            matches!(&exit.plan, Plan::Exit { listen: l, connect } if *l == listen && connect == "192.0.2.1:80")
        );
        let config = options(&["--config", "relays.toml"]).unwrap();
        assert!(
            matches!(&config.plan, Plan::Config(p) if p == std::path::Path::new("relays.toml"))
        );
    }

    #[test]
    fn the_keepalive_is_azure_lbs_unless_given_and_a_bad_one_is_refused() {
        let azure = options(&["--listen", "127.0.0.1:1", "--connect", "192.0.2.1:80"]).unwrap();
        assert_eq!(
            azure.settings.keepalive,
            idlegate::survive::keepalive::Keepalive::parse("120s,30s,8").unwrap()
        );
        let given = options(&[
            "--listen",
            "127.0.0.1:1",
            "--connect",
            "192.0.2.1:80",
            "--keepalive",
            "60s,10s,3",
        ])
        .unwrap();
        assert_eq!(
            given.settings.keepalive,
            idlegate::survive::keepalive::Keepalive::parse("60s,10s,3").unwrap()
        );
        let unknown = options(&[
            "--listen",
            "127.0.0.1:1",
            "--connect",
            "192.0.2.1:80",
            "--profile",
            "nope",
        ]);
        assert_eq!(
            format!("{:#}", unknown.expect_err("refused")),
            "--profile nope: no such profile"
        );
    }

    #[test]
    fn a_heartbeat_the_tunnel_cannot_run_with_is_refused_with_the_arguments() {
        let short = options(&[
            "--listen",
            "127.0.0.1:1",
            "--tunnel",
            "192.0.2.1:7000",
            "--heartbeat",
            "50ms",
        ]);
        assert_eq!(
            format!("{:#}", short.expect_err("refused")),
            "--heartbeat 50ms: at least 100ms"
        );
    }

    #[test]
    fn the_tunnel_settings_carry_the_flags_and_their_defaults() {
        let entry = options(&["--listen", "127.0.0.1:1", "--tunnel", "192.0.2.1:7000"]).unwrap();
        assert_eq!(entry.settings.heartbeat, std::time::Duration::from_secs(5));
        assert_eq!(
            entry.settings.resume_within,
            std::time::Duration::from_secs(120)
        );
        assert_eq!(entry.settings.replay_buffer, 4 << 20);
        assert_eq!(entry.settings.max_sessions, 10_000);
        assert_eq!(
            entry.max_connections,
            idlegate::survive::relay::DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(entry.metrics, None);
    }
}
