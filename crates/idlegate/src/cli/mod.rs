//! The command line: one file per command (or family of commands), each with its clap
//! arguments, the check that turns them into the options its feature runs with (bad input is
//! refused before anything starts), and its printing. The work itself is in the library.
//!
//! | file | commands |
//! |---|---|
//! | [`gateway`] | `gateway` (and `--explain`) |
//! | [`lab`] | `lab up`, `lab exec`, `lab demo` |
//! | [`flows`] | `flows`, `flows expire` |
//! | [`measure`] | `echo`, `probe` |
//! | [`relay`] | `relay` (keepalive relays, tunnel entry and exit) |
//! | [`keygen`] | `keygen` (the tunnel's keys) |
//! | [`keepalive`] | `keepalive`, `run` |
//! | [`audit`] | `audit` |
//! | [`advise`] | `advise` |
//! | [`import`] | `import` (a box's own configuration as a config) |
//! | [`profiles`] | `profiles`, `profiles show` |
//! | [`service`] | `service install`, `service uninstall`, `service run` (the Windows build only) |
//! | [`generate`] | `completions`, `man`: made from these definitions |
//! | [`parse_error`] | what the command-line parser refuses, in the one error style |
//!
//! A command whose feature is Linux-only (gateway, lab, flows, audit, keepalive, run) is
//! `#[cfg(target_os = "linux")]` here and in `main.rs`, and `service` is `#[cfg(windows)]`:
//! other builds do not have it at all, so it is absent from their `--help`.

pub mod advise;
#[cfg(target_os = "linux")]
pub mod audit;
#[cfg(target_os = "linux")]
pub mod flows;
#[cfg(target_os = "linux")]
pub mod gateway;
pub mod generate;
pub mod import;
#[cfg(target_os = "linux")]
pub mod keepalive;
pub mod keygen;
#[cfg(target_os = "linux")]
pub mod lab;
pub mod measure;
pub mod parse_error;
pub mod profiles;
pub mod relay;
#[cfg(any(windows, test))]
pub mod service;

use anyhow::Result;
#[cfg(target_os = "linux")]
use std::io::Write;

/// A byte count: `65536`, `64KiB`, `4MiB` (or KB/MB, the same powers of two).
pub fn parse_size(s: &str) -> Result<usize, String> {
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

/// `--keepalive IDLE,INTERVAL,COUNT` if given, else `--profile`'s (azure-lb by default). A
/// bad one is a usage error.
pub fn keepalive_choice(
    keepalive: Option<&str>,
    profile_name: Option<&str>,
) -> Result<idlegate::survive::keepalive::Keepalive> {
    use idlegate::obs::report::{Report, Status};
    use idlegate::survive::keepalive::Keepalive;
    use idlegate_core::profile;
    Ok(match (keepalive, profile_name) {
        (Some(k), _) => Keepalive::parse(k)
            .map_err(|e| anyhow::anyhow!("--keepalive {k:?}: {e}"))
            .hint("give IDLE,INTERVAL,COUNT, e.g. --keepalive 120s,30s,8")
            .status(Status::Usage)?,
        (None, Some(p)) => Keepalive::for_profile_here(profile_named(p)?)?,
        (None, None) => Keepalive::for_profile_here(profile::default_profile())?,
    })
}

/// Reads and validates a config file; nothing starts on a bad one (a usage error with the
/// file:line:column of the mistake, as is a file that cannot be read).
pub fn load_config(path: &std::path::Path) -> Result<idlegate_core::Config> {
    use anyhow::Context;
    use idlegate::obs::report::{self, Report, Status};
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))
        .status(Status::Usage)?;
    match idlegate_core::Config::from_toml(&text, &path.display().to_string()) {
        Ok(config) => Ok(config),
        Err(mistake) => report::refused(mistake),
    }
}

/// The profile `--profile NAME` names, or a usage error whose hint lists every profile (and
/// the one meant, for a close name): the one way every command refuses an unknown profile.
pub fn profile_named(name: &str) -> Result<&'static idlegate_core::profile::Profile> {
    use idlegate::obs::report::{Report, Status};
    match idlegate_core::config::find_profile(name) {
        Ok(profile) => Ok(profile),
        Err(unknown) => Err(anyhow::anyhow!("--profile {name}: {unknown}"))
            .hint(unknown.hint())
            .status(Status::Usage),
    }
}

pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    // clap names the flag and the value; this says only what is wrong with it.
    let d =
        humantime::parse_duration(s).map_err(|_| "not a duration (like 30s or 2m)".to_string())?;
    if d.is_zero() {
        return Err("must be longer than zero".to_string());
    }
    Ok(d)
}

#[cfg(target_os = "linux")]
/// `--workers`: 1 to [`idlegate::gateway::MAX_WORKERS`].
pub fn workers_in_range(text: &str) -> Result<usize, String> {
    let max = idlegate::gateway::MAX_WORKERS;
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of workers from 1 to {max}")),
    }
}

#[cfg(target_os = "linux")]
pub const DEFAULT_CONTROL: &str = "/run/idlegate/gateway.sock";

#[cfg(target_os = "linux")]
/// Tells a script on stdout that traffic can flow.
pub fn print_ready() -> Result<()> {
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    Ok(())
}
