//! `idlegate audit`: the box's idle timeout (given, a profile's, or each rule's of a config)
//! checked, then the host's connections judged against it. Linux only (sock_diag, procfs).

use super::advise::{config_timeouts, idle_timeout};
use super::parse_duration;
use anyhow::{Context, Result};
use clap::Args;
use idlegate::survive::audit::metrics::{self, Settings};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args)]
pub struct AuditArgs {
    /// The box's idle timeout, e.g. 4m.
    #[arg(long, value_parser = parse_duration, conflicts_with = "profile")]
    idle_timeout: Option<std::time::Duration>,
    /// Take the idle timeout from this middlebox profile [default: azure-lb].
    #[arg(long)]
    profile: Option<String>,
    /// Judge by this idlegate config's own rules (e.g. written by `idlegate import`): a
    /// connection from a rule's backend port by that rule's timeout, any other by the outbound
    /// path's.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["idle_timeout", "profile", "metrics"])]
    config: Option<std::path::PathBuf>,
    /// With --config: the member of the config this host is (a VM's or NIC's name, as
    /// `idlegate import` names members): its connections are judged by its own rules, an
    /// outbound one by its pool's NAT gateway or outbound rule.
    #[arg(long, value_name = "NAME", requires = "config")]
    member: Option<String>,
    /// The connections of this network namespace (a name `ip netns list` shows).
    #[arg(long)]
    netns: Option<String>,
    /// Print one JSON object.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Refresh every 2 s, like top, until interrupted.
    #[arg(long)]
    watch: bool,
    /// Keep scanning and serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9477)
    /// until interrupted.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["json", "watch"])]
    metrics: Option<std::net::SocketAddr>,
    /// With --metrics: scan this often (at least 1s) [default: 15s].
    #[arg(long, value_parser = parse_duration, requires = "metrics")]
    interval: Option<std::time::Duration>,
}

impl AuditArgs {
    /// The settings of `--metrics`, checked; None without it.
    fn metrics(&self, timeout: std::time::Duration) -> Result<Option<Settings>> {
        let Some(listen) = self.metrics else {
            return Ok(None);
        };
        let interval = self.interval.unwrap_or(metrics::DEFAULT_INTERVAL);
        if interval < metrics::MIN_INTERVAL {
            use idlegate::obs::report::{Report, Status};
            use idlegate_core::config::human;
            return Err(anyhow::anyhow!(
                "--interval {}: at least {} (each scan reads every process's descriptors)",
                human(interval),
                human(metrics::MIN_INTERVAL)
            ))
            .with_hint(|| {
                let least = humantime::format_duration(metrics::MIN_INTERVAL);
                format!("give --interval {least} or more")
            })
            .status(Status::Usage);
        }
        Ok(Some(Settings {
            listen,
            interval,
            idle_timeout: timeout,
            netns: self.netns.clone(),
        }))
    }
}

/// `idlegate audit`: the table (or JSON), once or refreshed.
pub fn run_audit(args: &AuditArgs) -> Result<()> {
    use idlegate::survive::audit::{audit_by, Basis};
    let basis = match &args.config {
        Some(path) => Basis::Config {
            path: path.display().to_string(),
            timeouts: config_timeouts(path, args.member.as_deref())?.0,
        },
        None => {
            let (timeout, _) = idle_timeout(args.idle_timeout, args.profile.as_deref())?;
            if let Some(settings) = args.metrics(timeout)? {
                return serve_metrics(settings);
            }
            Basis::One(timeout)
        }
    };
    let netns = args.netns.as_deref();
    if args.json {
        let report = audit_by(&basis, netns)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if !args.watch {
        print!("{}", audit_by(&basis, netns)?.render());
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    idlegate::sys::signal::stop_on_interrupt(&stop).context("installing signal handlers")?;
    while !stop.load(Ordering::Relaxed) {
        let text = audit_by(&basis, netns)?.render();
        print!("\x1b[H\x1b[2J{text}");
        std::io::stdout().flush()?;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Ok(())
}

/// `idlegate audit --metrics`: scans and serves until SIGINT or SIGTERM.
fn serve_metrics(settings: Settings) -> Result<()> {
    // Caught from before the first scan, so that none is lost while it runs.
    let interrupt =
        idlegate::sys::signal::Interrupt::install().context("installing signal handlers")?;
    let (interval, netns) = (settings.interval, settings.netns.clone());
    let exporter = metrics::Exporter::start(settings)?;
    tracing::info!(
        target: idlegate::LOG_TARGET,
        "serving the audit of {} at http://{}/metrics, scanning every {}",
        netns.map_or("this host".to_string(), |ns| format!("network namespace {ns}")),
        exporter.local_addr()?,
        humantime::format_duration(interval)
    );
    let stopper = exporter.stopper();
    if interrupt.attach(move || stopper.stop()) {
        return Ok(());
    }
    exporter.run()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Audit {
        #[command(flatten)]
        args: AuditArgs,
    }

    fn parse(args: &[&str]) -> Result<AuditArgs, clap::Error> {
        Audit::try_parse_from(std::iter::once("audit").chain(args.iter().copied())).map(|a| a.args)
    }

    #[test]
    fn metrics_flags_are_checked_before_anything_starts() {
        let timeout = Duration::from_secs(240);
        let settings = parse(&["--metrics", "127.0.0.1:9477", "--netns", "n1"])
            .unwrap()
            .metrics(timeout)
            .unwrap()
            .unwrap();
        assert_eq!(settings.listen, "127.0.0.1:9477".parse().unwrap());
        assert_eq!(settings.interval, metrics::DEFAULT_INTERVAL);
        assert_eq!(settings.netns.as_deref(), Some("n1"));
        assert_eq!(settings.idle_timeout, timeout);
        let one = parse(&["--metrics", "[::1]:9477", "--interval", "1s"]).unwrap();
        assert_eq!(
            one.metrics(timeout).unwrap().unwrap().interval,
            Duration::from_secs(1)
        );
        assert!(parse(&[]).unwrap().metrics(timeout).unwrap().is_none());
        assert_eq!(
            format!(
                "{:#}",
                parse(&["--metrics", "127.0.0.1:9477", "--interval", "500ms"])
                    .unwrap()
                    .metrics(timeout)
                    .unwrap_err()
            ),
            "--interval 500 ms: at least 1 s (each scan reads every process's descriptors)"
        );
        for refused in [
            &["--metrics", "localhost:9477"][..],
            &["--metrics", "127.0.0.1"],
            &["--metrics", "127.0.0.1:9477", "--json"],
            &["--metrics", "127.0.0.1:9477", "--watch"],
            &["--interval", "5s"],
            &["--metrics", "127.0.0.1:9477", "--interval", "0s"],
        ] {
            assert!(parse(refused).is_err(), "{refused:?} accepted");
        }
    }
}
