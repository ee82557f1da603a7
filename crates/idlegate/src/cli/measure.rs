//! `idlegate echo` and `idlegate probe`: their arguments checked, then the far end served or
//! the path measured and the report printed.

use super::parse_duration;
use anyhow::{Context, Result};
use clap::Args;
use idlegate::measure::{echo, probe};
use idlegate::obs::html::Output;
use idlegate::obs::report::{Report, Status};
use std::time::Duration;

#[derive(Args)]
pub struct EchoArgs {
    /// Where to listen, e.g. 0.0.0.0:9300 or [::]:9300.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The most probe connections served at once; more are refused with an error frame.
    #[arg(long, default_value_t = idlegate::measure::echo::MAX_CONNECTIONS)]
    max_connections: usize,
}

#[derive(Args)]
pub struct ProbeArgs {
    /// The far end: `idlegate echo` for every check, or any TCP server for some.
    target: String,
    /// The longest idle time to try, e.g. 30m.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    max: Duration,
    /// The width of the bracket wanted, e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    resolution: Duration,
    /// How long a test waits for an answer before calling the path silent (longer than the
    /// path's round trip).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    wait: Duration,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// At most this many connections open at once, for a box that lends few ports (GCP Cloud
    /// NAT: 64 per VM by default); the bracket may then be wider than --resolution.
    #[arg(long)]
    connections: Option<usize>,
    /// Also write the report as one self-contained HTML page: each idle time tried, per
    /// direction, alive or dead on a time axis, with the bracket found. Refused if FILE
    /// exists, unless --force.
    #[arg(long, value_name = "FILE")]
    html: Option<std::path::PathBuf>,
    /// With --html: overwrite FILE if it exists.
    #[arg(long, requires = "html")]
    force: bool,
}

impl EchoArgs {
    /// Every limit of `idlegate echo`'s options.
    fn check(&self) -> Result<()> {
        if self.max_connections == 0 {
            anyhow::bail!("--max-connections 0: must be at least 1");
        }
        Ok(())
    }
}

/// `idlegate echo`: serves until SIGINT or SIGTERM.
pub fn run_echo(args: &EchoArgs) -> Result<()> {
    args.check().status(Status::Usage)?;
    // Each connection is a descriptor; a few dozen more for refusals and the rest.
    let want = u64::try_from(args.max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(256);
    let limit = idlegate::sys::rlimit::raise_descriptor_limit(want)?;
    if limit < want {
        tracing::warn!(target: idlegate::LOG_TARGET,
            "echo: only {limit} descriptors may be open; --max-connections {} will not be reached",
            args.max_connections
        );
    }
    let mut echo =
        idlegate::obs::report::listening(echo::Echo::bind(args.listen), "--listen", args.listen)?;
    echo.set_max_connections(args.max_connections);
    idlegate::sys::signal::stop_on_interrupt(&echo.stop_flag())
        .context("installing signal handlers")?;
    tracing::info!(target: idlegate::LOG_TARGET, "echo listening on {}", echo.local_addr()?);
    echo.run()
}

impl ProbeArgs {
    /// Every limit of `idlegate probe`'s options.
    fn check(&self) -> Result<()> {
        let (day, ms100) = (Duration::from_secs(86_400), Duration::from_millis(100));
        if self.max > day {
            anyhow::bail!("--max {:?}: at most 24 h", self.max);
        }
        if self.resolution < ms100 || self.resolution > self.max {
            anyhow::bail!(
                "--resolution {:?}: from 100 ms to --max ({:?})",
                self.resolution,
                self.max
            );
        }
        if self.wait < Duration::from_millis(10) || self.wait > Duration::from_secs(600) {
            anyhow::bail!("--wait {:?}: from 10 ms to 10 min", self.wait);
        }
        if let Some(n) = self.connections.filter(|n| *n < 16) {
            return Err(anyhow::anyhow!("--connections {n}: must be at least 16")).hint(
                "the probe takes 4 connections for its behaviour and keepalive tests and 2 for \
                 each idle time it tries, and needs a few idle times per round: give 16 or more",
            );
        }
        Ok(())
    }

    /// The probe's options: the target resolved, then every limit checked.
    fn options(&self) -> Result<probe::Options> {
        let target = idlegate::survive::serve::resolve_as(&self.target, &self.target)?;
        self.check().status(Status::Usage)?;
        Ok(probe::Options {
            target,
            max: self.max,
            resolution: self.resolution,
            wait: self.wait,
            connections: self.connections,
            progress: probe::ProgressTo::stderr(),
        })
    }
}

/// `idlegate probe`: runs the search and prints the report.
pub fn run_probe(args: &ProbeArgs) -> Result<()> {
    // Checked before anything runs, as every other argument.
    let html = args
        .html
        .as_deref()
        .map(|path| Output::check(path, args.force, "--html"))
        .transpose()?;
    let report = probe::run(&args.options()?)?;
    if let Some(html) = html {
        html.write(&probe::html::render(&report))?;
        // One line on stderr (stdout is the report, or one JSON document).
        eprintln!("wrote {}", html.path().display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", probe::summary(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        args: ProbeArgs,
    }

    #[derive(Parser)]
    struct Echo {
        #[command(flatten)]
        args: EchoArgs,
    }

    /// `idlegate probe 192.0.2.1:9300 ARGS…`'s check: Ok, or the error's text.
    fn probe_check(args: &[&str]) -> Result<(), String> {
        let line = ["probe", "192.0.2.1:9300"].iter().chain(args).copied();
        let probe = Probe::try_parse_from(line).expect("arguments clap accepts");
        probe.args.check().map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn probe_limits_refuse_each_bad_value_with_its_flag_and_range() {
        assert_eq!(probe_check(&[]), Ok(()));
        assert_eq!(
            probe_check(&["--max", "25h"]),
            Err("--max 90000s: at most 24 h".into())
        );
        assert_eq!(
            probe_check(&["--resolution", "50ms"]),
            Err("--resolution 50ms: from 100 ms to --max (1800s)".into())
        );
        assert_eq!(
            probe_check(&["--max", "10s", "--resolution", "11s"]),
            Err("--resolution 11s: from 100 ms to --max (10s)".into())
        );
        assert_eq!(
            probe_check(&["--wait", "5ms"]),
            Err("--wait 5ms: from 10 ms to 10 min".into())
        );
        assert_eq!(
            probe_check(&["--wait", "11m"]),
            Err("--wait 660s: from 10 ms to 10 min".into())
        );
        assert_eq!(
            probe_check(&["--connections", "15"]),
            Err("--connections 15: must be at least 16".into())
        );
        assert_eq!(
            probe_check(&["--connections", "16", "--max", "24h"]),
            Ok(())
        );
    }

    #[test]
    fn echo_refuses_zero_connections_and_takes_one() {
        let check = |n: &str| {
            let echo =
                Echo::try_parse_from(["echo", "--listen", "127.0.0.1:0", "--max-connections", n])
                    .expect("arguments clap accepts");
            echo.args.check().map_err(|e| format!("{e:#}"))
        };
        assert_eq!(
            check("0"),
            Err("--max-connections 0: must be at least 1".into())
        );
        assert_eq!(check("1"), Ok(()));
    }
}
