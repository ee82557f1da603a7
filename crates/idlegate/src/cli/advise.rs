//! `idlegate advise`: the box's idle timeout (given, a profile's, or each rule's of a config)
//! checked, then the keepalive settings for it printed. On every platform; `audit` shares the
//! idle timeout's check and the config's reading.

use super::parse_duration;
use anyhow::Result;
use clap::Args;
use idlegate::obs::report::{Report, Status};
use idlegate::survive::timeouts::{RuleTimeout, Timeouts};
use idlegate_core::config::human;
use idlegate_core::profile;

#[derive(Args)]
pub struct AdviseArgs {
    /// The box's idle timeout, e.g. 4m.
    #[arg(long, value_parser = parse_duration, conflicts_with = "profile")]
    idle_timeout: Option<std::time::Duration>,
    /// Take the idle timeout from this middlebox profile [default: azure-lb].
    #[arg(long)]
    profile: Option<String>,
    /// Judge by this idlegate config's own rules (e.g. written by `idlegate import`): each
    /// rule's timeout and keepalive, and the system-wide settings that fit them all.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["idle_timeout", "profile"])]
    config: Option<std::path::PathBuf>,
    /// With --config: the member of the config this host is (a VM's or NIC's name, as
    /// `idlegate import` names members): only the rules that carry its connections count.
    #[arg(long, value_name = "NAME", requires = "config")]
    member: Option<String>,
    /// The operating system whose settings to write [default: this build's own].
    #[arg(long, value_enum, default_value_t = idlegate::survive::advise::Os::this_build())]
    os: idlegate::survive::advise::Os,
    /// Also the code for this client library.
    #[arg(long = "for", value_enum)]
    library: Option<idlegate::survive::advise::Library>,
    /// Print one JSON object instead of the text: the system, the profile, the idle timeout,
    /// the timers, and every setting with its value, unit, where it goes and its source.
    #[arg(long)]
    json: bool,
}

/// The idle timeout asked for (at least 2 s), or the profile's (azure-lb by default), and
/// where it came from; either mistake is a usage error.
pub(super) fn idle_timeout(
    given: Option<std::time::Duration>,
    profile_name: Option<&str>,
) -> Result<(std::time::Duration, String)> {
    if let Some(t) = given {
        if t < std::time::Duration::from_secs(2) {
            return Err(anyhow::anyhow!(
                "--idle-timeout {}: at least 2 s (keepalive timers are whole seconds)",
                human(t)
            ))
            .hint("give --idle-timeout 2s or more")
            .status(Status::Usage);
        }
        return Ok((t, "--idle-timeout".to_string()));
    }
    let name = profile_name.unwrap_or(profile::default_profile().name);
    let p = super::profile_named(name)?;
    Ok((
        idlegate::survive::keepalive::profile_idle_timeout(p),
        format!("profile {name}"),
    ))
}

/// The rules' timeouts of config `path` (only those of `member` if given) and the shortest,
/// refused (a usage error) for a member the config does not have, or if no TCP rule is left
/// or one has a timeout keepalive cannot beat (under 2 s).
pub(super) fn config_timeouts(
    path: &std::path::Path,
    member: Option<&str>,
) -> Result<(Timeouts, RuleTimeout)> {
    let config = super::load_config(path)?;
    let mut timeouts = Timeouts::of(&config);
    let shown = path.display();
    if let Some(name) = member {
        let all = timeouts.members.join(", ");
        timeouts = timeouts
            .for_member(name)
            .ok_or_else(|| anyhow::anyhow!("--member {name}: {shown} has no such member"))
            .with_hint(|| format!("the members of {shown}: {all}"))
            .status(Status::Usage)?;
    }
    let Some(shortest) = timeouts.shortest().cloned() else {
        let whose = member.map_or(String::new(), |m| {
            format!(" carries member {m}'s connections")
        });
        return Err(anyhow::anyhow!(
            "{shown}: no TCP rule (lb_rule, inbound_nat_rule, outbound_rule or nat_gateway){whose}: nothing to judge by"
        ))
        .hint("give a config with a TCP rule, or --idle-timeout or --profile instead of --config")
        .status(Status::Usage);
    };
    if shortest.idle_timeout < std::time::Duration::from_secs(2) {
        return Err(anyhow::anyhow!(
            "{shown}: {} has {}: keepalive timers are whole seconds, at least 2 s",
            shortest.name(),
            human(shortest.idle_timeout)
        ))
        .with_hint(|| format!("raise {}'s idle_timeout to 2s or more", shortest.name()))
        .status(Status::Usage);
    }
    Ok((timeouts, shortest))
}

/// `idlegate advise`: prints the settings.
pub fn run_advise(args: &AdviseArgs) -> Result<()> {
    use idlegate::survive::advise::Advice;
    if let Some(path) = &args.config {
        let (timeouts, shortest) = config_timeouts(path, args.member.as_deref())?;
        let shown = path.display().to_string();
        let whose = args
            .member
            .as_deref()
            .map_or(String::new(), |m| format!(" of member {m}'s rules"));
        let from = format!("{} of {shown}, the shortest{whose}", shortest.name());
        let advice = Advice::new(shortest.idle_timeout, from, args.os, args.library);
        if args.json {
            let json = advice.json_rules(&shown, &timeouts);
            println!("{}", serde_json::to_string_pretty(&json)?);
        } else {
            print!("{}", advice.render_rules(&shown, &timeouts));
        }
        return Ok(());
    }
    let (timeout, from) = idle_timeout(args.idle_timeout, args.profile.as_deref())?;
    let advice = Advice::new(timeout, from, args.os, args.library);
    if args.json {
        // The profile the idle timeout was taken from (none when --idle-timeout gave it).
        let profile = match args.idle_timeout {
            Some(_) => None,
            None => Some(
                args.profile
                    .as_deref()
                    .unwrap_or(profile::default_profile().name),
            ),
        };
        println!("{}", serde_json::to_string_pretty(&advice.json(profile))?);
    } else {
        print!("{}", advice.render());
    }
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
            "--idle-timeout 1 s: at least 2 s (keepalive timers are whole seconds)"
        );
        assert_eq!(
            idle_timeout(Some(Duration::from_secs(2)), None).unwrap(),
            (Duration::from_secs(2), "--idle-timeout".to_string())
        );
        let (timeout, from) = idle_timeout(None, None).unwrap();
        assert_eq!(from, "profile azure-lb");
        assert_eq!(timeout, Duration::from_secs(240));
    }

    #[test]
    fn an_unknown_profile_is_refused_with_every_real_name() {
        let message = idlegate::obs::report::render(
            &idle_timeout(None, Some("aws-nat-gateway")).unwrap_err(),
        );
        assert!(
            message.starts_with(
                "idlegate: --profile aws-nat-gateway: no such profile\n\
                 hint: did you mean aws-natgw? The profiles are "
            ),
            "{message}"
        );
        for p in profile::ALL.iter() {
            assert!(message.contains(p.name), "{} in {message}", p.name);
        }
    }
}
