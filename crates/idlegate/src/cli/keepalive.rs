//! `idlegate keepalive` and `idlegate run`: TCP keepalive given to a running program's
//! sockets, or to every socket of a program started under a watch (whose exit status `run`
//! passes on); one line printed per socket changed, or with `keepalive --json` one JSON
//! document. Also the keepalive choice (explicit timers or a profile's) that `relay` shares.

use super::keepalive_choice;
use anyhow::Result;
use clap::Args;
use idlegate::obs::report::Report;
use idlegate::survive::keepalive::{
    fix, watch, Change, Keepalive, Process, SocketKeepalive, TakeError,
};
use serde::Serialize;
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
    /// Print one JSON document on stdout instead of a line per socket: the keepalive given
    /// and, per socket, what it had and has now (with --watch, once the process has exited).
    #[arg(long)]
    json: bool,
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
    change: &std::io::Result<Change>,
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

/// `keepalive --json`: what was asked and what each socket had and has.
#[derive(Serialize)]
struct KeepaliveReport {
    pid: i32,
    command: String,
    keepalive: Settings,
    sockets: Vec<SocketReport>,
    /// With --watch: the process exited (the watch's end).
    exited: bool,
}

/// Keepalive settings, in whole seconds as the kernel takes them.
#[derive(Serialize)]
struct Settings {
    enabled: bool,
    idle_s: u64,
    interval_s: u64,
    count: u32,
    /// TCP_USER_TIMEOUT; 0 is the kernel's default.
    user_timeout_s: u64,
}

impl Settings {
    fn asked(k: &Keepalive) -> Settings {
        Settings {
            enabled: true,
            idle_s: k.idle.as_secs(),
            interval_s: k.interval.as_secs(),
            count: k.count,
            user_timeout_s: k.user_timeout().as_secs(),
        }
    }

    fn read(k: &SocketKeepalive) -> Settings {
        Settings {
            enabled: k.enabled,
            idle_s: k.idle.as_secs(),
            interval_s: k.interval.as_secs(),
            count: k.count,
            user_timeout_s: k.user_timeout.as_secs(),
        }
    }
}

/// What happened to one socket.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
enum Outcome {
    /// Given keepalive; `after` is what it has now, read back.
    Changed,
    /// It could not be changed: `error` says why.
    Failed,
}

#[derive(Serialize)]
struct SocketReport {
    pid: i32,
    command: String,
    outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    fd: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inode: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<Settings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<Settings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl SocketReport {
    fn of(pid: i32, command: &str, change: &std::io::Result<Change>) -> SocketReport {
        let mut report = SocketReport {
            pid,
            command: command.to_string(),
            outcome: Outcome::Failed,
            fd: None,
            inode: None,
            local: None,
            peer: None,
            state: None,
            before: None,
            after: None,
            error: None,
        };
        match change {
            Ok(c) => {
                report.outcome = Outcome::Changed;
                report.fd = Some(c.socket.fd);
                report.inode = Some(c.socket.inode);
                report.local = c.socket.local.map(|a| a.to_string());
                report.peer = c.socket.peer.map(|a| a.to_string());
                report.state = Some(c.socket.state);
                report.before = Some(Settings::read(&c.before));
                report.after = Some(Settings::read(&c.after));
            }
            Err(e) => report.error = Some(e.to_string()),
        }
        report
    }
}

/// What the user can do about a process whose sockets could not be taken.
fn take_hint<T>(result: Result<T, TakeError>) -> Result<T> {
    match result {
        Err(TakeError::Permission(pid)) => Err(TakeError::Permission(pid)).hint(
            "run as root, or as the process's user with kernel.yama.ptrace_scope = 0, or give \
             the binary CAP_SYS_PTRACE",
        ),
        Err(TakeError::KernelTooOld) => Err(TakeError::KernelTooOld)
            .hint("use `idlegate relay` in front of the program instead: it needs no pidfd_getfd"),
        other => Ok(other?),
    }
}

/// `idlegate keepalive --pid`: fixes a running program's sockets (once, or as they come).
pub fn run_keepalive(args: &KeepaliveArgs) -> Result<ExitCode> {
    let keepalive = args.choice.resolve()?;
    let process = take_hint(Process::open(args.pid))?;
    let command = process.command();
    let mut failed = false;
    let mut sockets = Vec::new();
    let mut heard = |pid: i32, command: &str, change: std::io::Result<Change>| {
        if args.json {
            sockets.push(SocketReport::of(pid, command, &change));
            change.is_ok()
        } else {
            print_change(&mut std::io::stdout(), pid, command, &change)
        }
    };
    if args.watch {
        take_hint(watch(
            &process,
            &keepalive,
            args.fd,
            false,
            |pid, command, change| {
                failed |= !heard(pid, command, change);
            },
        ))?;
        if !args.json {
            println!("pid {} ({command}) exited", args.pid);
        }
    } else {
        let found = take_hint(process.tcp_sockets(args.fd))?;
        if found.is_empty() {
            if let Some(fd) = args.fd {
                anyhow::bail!("pid {} ({command}): fd {fd} is not a TCP socket", args.pid);
            }
            tracing::info!(target: idlegate::LOG_TARGET, "pid {} ({command}): no TCP sockets", args.pid);
        }
        for socket in found {
            failed |= !heard(args.pid, &command, fix(socket, &keepalive));
        }
    }
    if args.json {
        let report = KeepaliveReport {
            pid: args.pid,
            command,
            keepalive: Settings::asked(&keepalive),
            sockets,
            exited: args.watch,
        };
        let text = serde_json::to_string_pretty(&report)? + "\n";
        std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())?;
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
            print_change(&mut std::io::stderr(), pid, command, &change);
        },
        |warning| tracing::warn!(target: idlegate::LOG_TARGET, "{warning}"),
    )?;
    Ok(ExitCode::from(code))
}
