//! `idlegate keepalive` and `idlegate run`: TCP keepalive given to a running program's
//! sockets, or to every socket of a program started under a watch (whose exit status `run`
//! passes on); one line printed per socket changed. Also the keepalive choice (explicit timers
//! or a profile's) that `relay` shares.

use super::keepalive_choice;
use anyhow::Result;
use clap::Args;
use idlegate::survive::keepalive::Keepalive;
use std::process::ExitCode;

/// The keepalive to give: explicit timers, or a profile's.
#[derive(Args)]
pub struct KeepaliveChoice {
    /// IDLE,INTERVAL,COUNT, e.g. 120s,30s,8.
    #[arg(long, conflicts_with = "profile")]
    keepalive: Option<String>,
    /// Derive it from this middlebox profile's idle timeout (first probe at half) [default:
    /// azure-lb: 120s,30s,8].
    #[arg(long)]
    profile: Option<String>,
}

impl KeepaliveChoice {
    fn resolve(&self) -> Result<Keepalive> {
        keepalive_choice(self.keepalive.as_deref(), self.profile.as_deref())
    }
}

#[derive(Args)]
pub struct KeepaliveArgs {
    /// The process whose TCP sockets get keepalive.
    #[arg(long)]
    pid: i32,
    /// Only this descriptor of the process.
    #[arg(long)]
    fd: Option<i32>,
    #[command(flatten)]
    choice: KeepaliveChoice,
    /// Keep watching: give keepalive to new sockets as the process opens them, until it exits.
    #[arg(long)]
    watch: bool,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    choice: KeepaliveChoice,
    /// The program and its arguments, after `--`.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

/// One line per socket given keepalive: what it had and what it has now, read back; on
/// `out` (stderr under `run`, whose stdout is the program's). Says whether it was changed.
fn print_change(
    out: &mut dyn std::io::Write,
    pid: i32,
    command: &str,
    change: std::io::Result<idlegate::survive::keepalive::Change>,
) -> bool {
    let (line, changed) = match change {
        Ok(c) => (
            format!(
                "pid {pid} ({command}) {}: {} → {}",
                c.socket, c.before, c.after
            ),
            true,
        ),
        Err(e) => (
            format!("pid {pid} ({command}): a socket could not be changed: {e}"),
            false,
        ),
    };
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    changed
}

/// `idlegate keepalive --pid`: fixes a running program's sockets (once, or as they come).
pub fn run_keepalive(args: &KeepaliveArgs) -> Result<ExitCode> {
    use idlegate::survive::keepalive::{fix, watch, Process};
    let keepalive = args.choice.resolve()?;
    let process = Process::open(args.pid)?;
    let command = process.command();
    let mut failed = false;
    if args.watch {
        watch(
            &process,
            &keepalive,
            args.fd,
            false,
            |pid, command, change| {
                failed |= !print_change(&mut std::io::stdout(), pid, command, change);
            },
        )?;
        println!("pid {} ({command}) exited", args.pid);
    } else {
        let sockets = process.tcp_sockets(args.fd)?;
        if sockets.is_empty() {
            let what = args.fd.map_or("no TCP sockets".to_string(), |fd| {
                format!("fd {fd} is not a TCP socket")
            });
            eprintln!("pid {} ({command}): {what}", args.pid);
            failed = args.fd.is_some();
        }
        for socket in sockets {
            failed |= !print_change(
                &mut std::io::stdout(),
                args.pid,
                &command,
                fix(socket, &keepalive),
            );
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `idlegate run -- CMD…`: starts the program under a watch and exits with its status
/// ([`idlegate::survive::keepalive::run_program`]); each socket changed is printed on stderr,
/// as is a watch that fails (the program runs on).
pub fn run_watched(args: &RunArgs) -> Result<ExitCode> {
    let keepalive = args.choice.resolve()?;
    let code = idlegate::survive::keepalive::run_program(
        &args.command,
        &keepalive,
        |pid, command, change| {
            print_change(&mut std::io::stderr(), pid, command, change);
        },
        |warning| eprintln!("idlegate run: {warning}"),
    )?;
    Ok(ExitCode::from(code))
}
