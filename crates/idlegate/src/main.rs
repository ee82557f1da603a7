//! `idlegate`: emulate, measure and survive the middleboxes that silently forget idle TCP
//! connections. This file is the command line's top only: the commands, logging, and the
//! dispatch to `cli/`, one file per command (its arguments, their check, its printing); the
//! work is in the library modules.

#![deny(unsafe_code)]

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cli::advise::AdviseArgs;
#[cfg(target_os = "linux")]
use cli::audit::AuditArgs;
#[cfg(target_os = "linux")]
use cli::flows::FlowsArgs;
#[cfg(target_os = "linux")]
use cli::gateway::GatewayArgs;
use cli::generate::{CompletionsArgs, ManArgs};
use cli::import::ImportArgs;
#[cfg(target_os = "linux")]
use cli::keepalive::{KeepaliveArgs, RunArgs};
#[cfg(target_os = "linux")]
use cli::lab::LabCommand;
use cli::measure::{EchoArgs, ProbeArgs};
use cli::profiles::ProfilesArgs;
use cli::relay::RelayArgs;
#[cfg(windows)]
use cli::service::ServiceCommand;
use idlegate::obs::report;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "idlegate",
    version,
    about = "Emulate, measure and survive the middleboxes that silently forget idle TCP connections"
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per run. Without the Linux-only commands, `relay`'s (its tunnel's flags) is much
// the largest.
#[cfg_attr(not(target_os = "linux"), allow(clippy::large_enum_variant))]
enum Command {
    #[cfg(target_os = "linux")]
    /// Run the emulated middlebox between two TUN devices.
    Gateway(GatewayArgs),
    #[cfg(target_os = "linux")]
    /// Build network namespaces around the gateway: real hosts to test applications with.
    #[command(subcommand)]
    Lab(LabCommand),
    #[cfg(target_os = "linux")]
    /// Show a running gateway's flows (or expire them: `flows expire`).
    Flows(FlowsArgs),
    /// Serve as the far end of `idlegate probe`: confirm what arrives, answer after a delay.
    Echo(EchoArgs),
    /// Measure a path's idle timeout to the second, and what it does at expiry.
    Probe(ProbeArgs),
    /// Forward an application's connections with TCP keepalive on both sockets, or through a
    /// resumable tunnel (a pair: --tunnel on the application's side, --tunnel-listen on the
    /// server's) that outlives the path under it.
    Relay(RelayArgs),
    #[cfg(target_os = "linux")]
    /// Give TCP keepalive to the sockets of a running program, without restarting it
    /// (pidfd_getfd: root, or ptrace access to the process).
    Keepalive(KeepaliveArgs),
    #[cfg(target_os = "linux")]
    /// Start a program and give keepalive to every TCP socket it (or a process it starts)
    /// opens, within 100 ms: no LD_PRELOAD, so static binaries too.
    Run(RunArgs),
    #[cfg(target_os = "linux")]
    /// Every TCP connection of the host (or a namespace), judged against a box's idle timeout:
    /// safe, at-risk or stalled, with the owner and the reason.
    Audit(AuditArgs),
    /// The keepalive settings that keep connections alive through a box: system settings and
    /// library code, each with its source.
    Advise(AdviseArgs),
    /// Write an idlegate config from a box's own configuration: an ARM template or `az network
    /// … show` JSON, `terraform show -json`, or Kubernetes Service manifests.
    Import(ImportArgs),
    /// Write a new tunnel key to FILE (mode 0600) for both ends of a `relay` tunnel pair, or
    /// with --pair an end's own key pair for the per-peer mode.
    #[cfg_attr(windows, command(about = cli::keygen::WINDOWS_ABOUT, after_help = cli::keygen::WINDOWS_KEYS))]
    Keygen {
        /// Where to write it; an existing file is never overwritten.
        file: PathBuf,
        /// Write a key pair: the private key to FILE (mode 0600), the public key to FILE.pub
        /// (a line for an exit's --peers file, named after FILE), and print the public key.
        #[cfg_attr(windows, arg(help = cli::keygen::WINDOWS_PAIR))]
        #[arg(long)]
        pair: bool,
    },
    #[cfg(windows)]
    /// Run the keepalive relay as a Windows service that starts at boot: `service install
    /// --name NAME -- RELAY_ARGS`, `service uninstall --name NAME`.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// List the middlebox profiles with their timers and behaviour (`profiles show NAME`
    /// prints one as a config; --json and --markdown print them all for scripts and the book).
    Profiles(ProfilesArgs),
    /// Print the shell completions for SHELL (bash, zsh, fish, elvish, powershell), made from
    /// these very commands.
    Completions(CompletionsArgs),
    /// Print the manual page idlegate(1), or with --out DIR write one page per command.
    Man(ManArgs),
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) => {
            use clap::CommandFactory;
            let words: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
            match cli::parse_error::render(&error, &Cli::command(), &words) {
                Some(text) => {
                    eprintln!("{text}");
                    return ExitCode::from(report::Status::Usage.code());
                }
                // --help, --version: printed as clap prints them.
                None => error.exit(),
            }
        }
    };
    #[cfg(target_os = "linux")]
    let quiet = matches!(cli.command, Command::Lab(LabCommand::Demo(_)));
    #[cfg(not(target_os = "linux"))]
    let quiet = false;
    #[cfg(windows)]
    let event_source = match &cli.command {
        Command::Service(command) => cli::service::event_source(command).map(str::to_string),
        _ => None,
    };
    #[cfg(not(windows))]
    let event_source: Option<String> = None;
    init_logging(cli.verbose, quiet, event_source.as_deref());
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", report::render(&e));
            ExitCode::from(report::status(&e).code())
        }
    }
}

/// Log lines to stderr, or for a Windows service (`event_source`) to the Event Log.
fn init_logging(verbose: u8, quiet: bool, event_source: Option<&str>) {
    let default = match (verbose, quiet) {
        (0, true) => "warn",
        (0, false) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    #[cfg(windows)]
    if let Some(log) = event_source.and_then(idlegate::sys::service::EventLog::open) {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(idlegate::sys::service::EventLogWriter::new(log))
            .with_ansi(false)
            .without_time()
            .init();
        return;
    }
    #[cfg(not(windows))]
    let _ = event_source;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(command: Command) -> Result<ExitCode> {
    let done = |()| ExitCode::SUCCESS;
    match command {
        #[cfg(target_os = "linux")]
        Command::Gateway(args) => cli::gateway::run(args).map(done),
        #[cfg(target_os = "linux")]
        Command::Lab(command) => cli::lab::run(command),
        #[cfg(target_os = "linux")]
        Command::Flows(args) => cli::flows::run(args).map(done),
        Command::Echo(args) => cli::measure::run_echo(&args).map(done),
        Command::Probe(args) => cli::measure::run_probe(&args).map(done),
        Command::Relay(args) => cli::relay::run(&args).map(done),
        #[cfg(target_os = "linux")]
        Command::Keepalive(args) => cli::keepalive::run_keepalive(&args),
        Command::Advise(args) => cli::advise::run_advise(&args).map(done),
        #[cfg(target_os = "linux")]
        Command::Audit(args) => cli::audit::run_audit(&args).map(done),
        #[cfg(target_os = "linux")]
        Command::Run(args) => cli::keepalive::run_watched(&args),
        Command::Import(args) => cli::import::run(&args).map(done),
        Command::Keygen { file, pair } => cli::keygen::keygen(&file, pair).map(done),
        #[cfg(windows)]
        Command::Service(command) => cli::service::run(command).map(done),
        Command::Profiles(args) => cli::profiles::run(args).map(done),
        Command::Completions(args) => cli::generate::completions(&args).map(done),
        Command::Man(args) => cli::generate::man(&args).map(done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_service_command_exists_in_the_windows_build_only() {
        let found = Cli::command().find_subcommand("service").is_some();
        assert_eq!(found, cfg!(windows));
    }
}
