//! `idlegate service` (the Windows build only): the keepalive relay as a Windows service that
//! starts at boot. `install --name NAME -- RELAY_ARGS` checks the relay's arguments exactly as
//! `idlegate relay` would (and refuses relative file paths, `--exit-public-key`'s too when it
//! names a file: a service starts in
//! C:\Windows\System32), then registers `idlegate.exe service run --name NAME -- RELAY_ARGS`;
//! bad input installs nothing. `run` is what the service manager starts: the relay, stopped by
//! the service's Stop control or the machine's shutdown, its log lines and its error written
//! to the Windows Event Log (Application, source NAME). `uninstall` stops and deletes it.
//! The checks build everywhere (the Linux build's unit tests run them); the commands exist in
//! the Windows build only.

use super::relay::RelayArgs;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use idlegate::obs::report::{Report, Status};
#[cfg(windows)]
use idlegate::survive::serve;
use idlegate::survive::serve::Options;
#[cfg(test)]
use idlegate::survive::serve::Plan;
use idlegate::survive::tunnel::key::PublicKey;
#[cfg(windows)]
use idlegate::sys::service;
use std::ffi::OsString;
use std::path::PathBuf;

/// The service name when none is given.
pub const DEFAULT_NAME: &str = "idlegate-relay";

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Register the relay as a service that starts at boot (an Administrator prompt): `service
    /// install --name NAME -- --listen ... --connect ... --keepalive ...`, the relay's own
    /// arguments after `--`, checked first.
    Install(InstallArgs),
    /// Stop the service if it runs and delete it.
    Uninstall(NameArg),
    /// What the service manager starts (the command line `install` registers); by hand it
    /// fails, as it was not started by the service manager.
    Run(RunArgs),
}

#[derive(Args)]
pub struct NameArg {
    /// The service's name.
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
}

/// The relay's own arguments, the last of `install`'s and `run`'s.
#[derive(Args)]
pub struct RelayWords {
    /// The relay's arguments, as `idlegate relay` takes them, after `--` (or without it:
    /// Windows PowerShell 5.1 drops a bare `--` on its way to a program).
    #[arg(
        id = "relay",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "RELAY_ARGS"
    )]
    words: Vec<OsString>,
}

#[derive(Args)]
pub struct InstallArgs {
    #[command(flatten)]
    name: NameArg,
    /// The name the Services console shows [default: "idlegate relay (NAME)"].
    #[arg(long)]
    display_name: Option<String>,
    #[command(flatten)]
    relay: RelayWords,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    name: NameArg,
    #[command(flatten)]
    relay: RelayWords,
}

/// `idlegate relay`'s arguments on their own, to check them as the relay would.
#[derive(Parser)]
#[command(name = "idlegate relay")]
struct Relay {
    #[command(flatten)]
    args: RelayArgs,
}

/// The relay's options from its arguments, checked as `idlegate relay` checks them, with no
/// relative path (the service manager starts a service in C:\Windows\System32).
pub fn relay_options(relay: &[OsString]) -> Result<Options> {
    let line = std::iter::once(OsString::from("idlegate relay")).chain(relay.iter().cloned());
    let parsed = Relay::try_parse_from(line)
        .map_err(|e| {
            anyhow::anyhow!(
                "the relay's arguments: {}",
                e.render().to_string().trim_end()
            )
        })
        .status(Status::Usage)?;
    let options = parsed
        .args
        .options()
        .context("the relay's arguments")
        .status(Status::Usage)?;
    if let Some((flag, path)) = relative_path(relay) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(anyhow::anyhow!(
            "the relay's arguments: {flag} {}: a relative path, which a service would read \
             from C:\\Windows\\System32",
            path.display()
        ))
        .hint(format!(
            "give the full path, e.g. C:\\ProgramData\\idlegate\\{name}"
        ))
        .status(Status::Usage);
    }
    Ok(options)
}

/// The relay's flags that name a file.
const PATH_FLAGS: [&str; 4] = ["--config", "--key", "--private-key", "--peers"];
/// The relay's flag that names a file unless its value is a key itself.
const KEY_OR_PATH_FLAG: &str = "--exit-public-key";

/// The first file named by a relative path in the relay's arguments (`--key FILE` or
/// `--key=FILE`; `--exit-public-key` when its value is not a public key), if any.
fn relative_path(relay: &[OsString]) -> Option<(&'static str, PathBuf)> {
    let mut words = relay.iter();
    while let Some(word) = words.next() {
        let text = word.to_string_lossy();
        for flag in PATH_FLAGS.into_iter().chain([KEY_OR_PATH_FLAG]) {
            let value = if text == flag {
                words.next().map(|w| w.to_string_lossy().into_owned())
            } else {
                text.strip_prefix(flag)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(str::to_string)
            };
            let Some(value) = value else { continue };
            if flag == KEY_OR_PATH_FLAG && PublicKey::parse(&value).is_ok() {
                continue;
            }
            let path = PathBuf::from(value);
            if !path.is_absolute() {
                return Some((flag, path));
            }
        }
    }
    None
}

/// The command line the service manager runs: `service run --name NAME -- RELAY_ARGS`.
pub fn run_line(name: &str, relay: &[OsString]) -> Vec<OsString> {
    let mut line: Vec<OsString> = ["service", "run", "--name", name, "--"]
        .into_iter()
        .map(OsString::from)
        .collect();
    line.extend(relay.iter().cloned());
    line
}

/// The Event Log source a command's log lines go to instead of stderr: `service run`'s
/// service name (a service has no console).
#[cfg(windows)]
pub fn event_source(command: &ServiceCommand) -> Option<&str> {
    match command {
        ServiceCommand::Run(args) => Some(&args.name.name),
        _ => None,
    }
}

#[cfg(windows)]
pub fn run(command: ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Install(args) => install(&args),
        ServiceCommand::Uninstall(NameArg { name }) => {
            let was_running = service::uninstall(&name)?;
            println!(
                "uninstalled service {name}{}",
                if was_running {
                    " (stopped it first)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        ServiceCommand::Run(args) => {
            let name = args.name.name.clone();
            let outcome = relay_options(&args.relay.words).and_then(|options| {
                service::run_as_service(&name, move |stop, running| {
                    serve::serve_then(&options, stop, running)
                })
            });
            // A service has no console: the error goes to the Event Log too (main's line on
            // stderr reaches someone only when run by hand).
            if let Err(e) = &outcome {
                tracing::error!(target: idlegate::LOG_TARGET, "idlegate: service {name}: {e:#}");
            }
            outcome
        }
    }
}

#[cfg(windows)]
fn install(args: &InstallArgs) -> Result<()> {
    let name = &args.name.name;
    service::check_name(name)?;
    relay_options(&args.relay.words)?;
    let executable = std::env::current_exe().context("finding idlegate.exe's own path")?;
    let recovery = service::install(&service::Install {
        name: name.clone(),
        display_name: args
            .display_name
            .clone()
            .unwrap_or_else(|| format!("idlegate relay ({name})")),
        description: "idlegate keepalive relay: forwards connections with TCP keepalive on both \
                      sockets, so that idle ones outlive a load balancer's or NAT's idle timeout"
            .to_string(),
        executable: executable.clone(),
        arguments: run_line(name, &args.relay.words),
    })?;
    println!(
        "installed service {name}: starts at boot and runs {} {}",
        executable.display(),
        run_line(name, &args.relay.words)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    match recovery {
        service::Recovery::Set => println!(
            "restarted when it fails, also when it stops with an error: after {}",
            service::RESTART_AFTER
                .iter()
                .map(|d| humantime::format_duration(*d).to_string())
                .collect::<Vec<_>>()
                .join(", then ")
                + " each time after that (failures forgotten after a day without one)"
        ),
        service::Recovery::Refused(why) => tracing::warn!(target: idlegate::LOG_TARGET,
            "{why:#}: the service is installed without all of its recovery settings (a restart \
             after it fails); set them with: sc.exe failure {name} reset= 86400 actions= \
             restart/10000/restart/10000/restart/60000 and: sc.exe failureflag {name} 1"
        ),
    }
    println!("start it now with: sc.exe start {name}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn relay_arguments_are_checked_as_the_relay_checks_them() {
        let good = relay_options(&os(&[
            "--listen",
            "0.0.0.0:5001",
            "--connect",
            "127.0.0.1:5000",
            "--keepalive",
            "120s,30s,8",
        ]))
        .unwrap();
        assert!(matches!(good.plan, Plan::Relay { .. }));
        let unknown = relay_options(&os(&[
            "--listen",
            "0.0.0.0:5001",
            "--connect",
            "127.0.0.1:5000",
            "--profile",
            "nope",
        ]))
        .unwrap_err();
        assert!(format!("{unknown:#}").contains("--profile nope: no such profile"));
        let bad_flag =
            relay_options(&os(&["--listen", "0.0.0.0:5001", "--conect", "x"])).unwrap_err();
        assert!(format!("{bad_flag:#}").contains("--conect"), "{bad_flag:#}");
    }

    #[test]
    fn a_relative_file_path_is_refused_for_a_service_in_either_spelling() {
        for (args, said) in [
            (
                &["--config", "relays.toml"][..],
                "--config relays.toml: a relative path",
            ),
            (
                &["--config=conf\\relays.toml"][..],
                "--config conf\\relays.toml: a relative path",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:15000",
                    "--tunnel",
                    "192.0.2.1:7000",
                    "--key",
                    "tunnel.key",
                ][..],
                "--key tunnel.key: a relative path",
            ),
        ] {
            let refused = relay_options(&os(args)).unwrap_err();
            assert!(format!("{refused:#}").contains(said), "{refused:#}");
            let hint = idlegate::obs::report::hint_of(&refused).unwrap_or_default();
            assert!(hint.starts_with("give the full path, e.g. "), "{hint}");
            assert_eq!(idlegate::obs::report::status(&refused).code(), 2);
        }
        // What is absolute depends on the system the build is for.
        let absolute = if cfg!(windows) {
            "C:\\ProgramData\\idlegate\\relays.toml"
        } else {
            "/etc/idlegate/relays.toml"
        };
        assert_eq!(relative_path(&os(&["--config", absolute])), None);
        assert!(relay_options(&os(&["--config", absolute])).is_ok());
        if !cfg!(windows) {
            // Not absolute on Windows: no drive.
            assert!(relative_path(&os(&["--config", "\\relays.toml"])).is_some());
        }
    }

    #[test]
    fn an_exit_public_key_given_as_a_relative_file_is_refused_for_a_service_and_a_key_is_not() {
        let entry = |value: &str| {
            os(&[
                "--listen",
                "127.0.0.1:15000",
                "--tunnel",
                "192.0.2.1:7000",
                "--private-key",
                if cfg!(windows) {
                    "C:\\ProgramData\\idlegate\\entry.key"
                } else {
                    "/etc/idlegate/entry.key"
                },
                "--exit-public-key",
                value,
            ])
        };
        assert_eq!(
            relative_path(&entry("exit.key.pub")),
            Some(("--exit-public-key", PathBuf::from("exit.key.pub")))
        );
        assert_eq!(
            relative_path(&entry(&format!("{}", PublicKey([7; 32])))),
            None
        );
        let refused = relay_options(&entry("exit.key.pub")).unwrap_err();
        assert!(
            format!("{refused:#}").contains("--exit-public-key exit.key.pub: a relative path"),
            "{refused:#}"
        );
    }

    #[derive(Parser)]
    struct Service {
        #[command(subcommand)]
        command: ServiceCommand,
    }

    fn install_args(line: &[&str]) -> (String, Vec<OsString>) {
        let words = ["service"].iter().chain(line);
        match Service::try_parse_from(words)
            .expect("clap accepts it")
            .command
        {
            ServiceCommand::Install(args) => (args.name.name, args.relay.words),
            _ => panic!("not install"),
        }
    }

    #[test]
    fn install_takes_the_relay_arguments_with_or_without_the_double_dash() {
        // Windows PowerShell 5.1 drops a bare `--` before it reaches the program.
        let relay = os(&["--listen", "0.0.0.0:5001", "--connect", "127.0.0.1:5000"]);
        for line in [
            &[
                "install",
                "--name",
                "r1",
                "--",
                "--listen",
                "0.0.0.0:5001",
                "--connect",
                "127.0.0.1:5000",
            ][..],
            &[
                "install",
                "--name",
                "r1",
                "--listen",
                "0.0.0.0:5001",
                "--connect",
                "127.0.0.1:5000",
            ][..],
        ] {
            assert_eq!(
                install_args(line),
                ("r1".to_string(), relay.clone()),
                "{line:?}"
            );
        }
        assert_eq!(
            install_args(&[
                "install",
                "--",
                "--listen",
                "0.0.0.0:5001",
                "--connect",
                "127.0.0.1:5000"
            ])
            .0,
            DEFAULT_NAME
        );
    }

    #[test]
    fn the_service_runs_the_relay_line_after_service_run() {
        assert_eq!(
            run_line("r1", &os(&["--listen", "0.0.0.0:1"])),
            os(&[
                "service",
                "run",
                "--name",
                "r1",
                "--",
                "--listen",
                "0.0.0.0:1"
            ])
        );
    }
}
