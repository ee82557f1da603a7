//! `idlegate audit` and `idlegate advise`: the box's idle timeout (given, or a profile's)
//! checked, then the host's connections judged against it, or the keepalive settings for it
//! printed.

use super::parse_duration;
use anyhow::{Context, Result};
use clap::Args;
use idlegate_core::profile;
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
pub struct AdviseArgs {
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

/// `idlegate audit`: the table (or JSON), once or refreshed.
pub fn run_audit(args: &AuditArgs) -> Result<()> {
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
    idlegate::sys::signal::stop_on_interrupt(&stop).context("installing signal handlers")?;
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
pub fn run_advise(args: &AdviseArgs) -> Result<()> {
    use idlegate::survive::advise::Advice;
    let (timeout, from) = idle_timeout(args.idle_timeout, args.profile.as_deref())?;
    print!(
        "{}",
        Advice::new(timeout, from, args.os, args.library).render()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_idle_timeout_under_2s_is_refused_and_the_default_is_azure_lbs() {
        assert_eq!(
            format!(
                "{:#}",
                idle_timeout(Some(Duration::from_secs(1)), None).unwrap_err()
            ),
            "--idle-timeout 1s: at least 2s (keepalive timers are whole seconds)"
        );
        assert_eq!(
            idle_timeout(Some(Duration::from_secs(2)), None).unwrap(),
            (Duration::from_secs(2), "--idle-timeout".to_string())
        );
        let (timeout, from) = idle_timeout(None, None).unwrap();
        assert_eq!(from, "profile azure-lb");
        assert_eq!(timeout, Duration::from_secs(240));
    }
}
