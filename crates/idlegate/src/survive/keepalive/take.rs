//! Linux's part of keepalive: reading a socket's keepalive back, and taking another process's
//! TCP sockets with `pidfd_getfd(2)` to set keepalive on them (`idlegate keepalive`, `run`).
//! Re-exported by [`super`], so its items are `survive::keepalive::…` as before.

use super::Keepalive;
use crate::sys::tcp_info::TcpInfo;
use crate::sys::{errno, file, poll, proc, process};
use anyhow::{Context, Result};
use socket2::SockRef;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;
use thiserror::Error;

/// What a socket really has, read back with getsockopt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketKeepalive {
    pub enabled: bool,
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
    /// TCP_USER_TIMEOUT; zero is the kernel's default (about 15 min of retransmissions).
    pub user_timeout: Duration,
}

impl SocketKeepalive {
    pub fn read(socket: &impl AsFd) -> io::Result<SocketKeepalive> {
        let sock = SockRef::from(socket);
        Ok(SocketKeepalive {
            enabled: sock.keepalive()?,
            idle: sock.tcp_keepalive_time()?,
            interval: sock.tcp_keepalive_interval()?,
            count: sock.tcp_keepalive_retries()?,
            user_timeout: sock.tcp_user_timeout()?.unwrap_or_default(),
        })
    }
}

impl std::fmt::Display for SocketKeepalive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = if self.enabled { "on" } else { "off" };
        write!(
            f,
            "keepalive {on} {}s/{}s/{}, user timeout {}",
            self.idle.as_secs(),
            self.interval.as_secs(),
            self.count,
            if self.user_timeout.is_zero() {
                "default".to_string()
            } else {
                format!("{}s", self.user_timeout.as_secs())
            }
        )
    }
}

/// Why another process's sockets could not be taken.
#[derive(Debug, Error)]
pub enum TakeError {
    #[error("no process {0}")]
    NoProcess(i32),
    #[error("permission denied for process {0}: taking its sockets needs ptrace access")]
    Permission(i32),
    #[error("this kernel has no pidfd_getfd (Linux 5.6 or later is needed)")]
    KernelTooOld,
    #[error("process {pid}: {source}")]
    Io { pid: i32, source: io::Error },
}

/// A running process, held by a pidfd (so its pid cannot be reused under us).
pub struct Process {
    pid: i32,
    pidfd: OwnedFd,
}

/// A TCP socket of another process, as a duplicate in this one.
pub struct ForeignSocket {
    /// Its descriptor number in the other process.
    pub fd: RawFd,
    /// The socket's inode: the same socket under any descriptor.
    pub inode: u64,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// LISTEN, ESTABLISHED, … (from TCP_INFO).
    pub state: &'static str,
    dup: OwnedFd,
}

impl AsFd for ForeignSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dup.as_fd()
    }
}

impl std::fmt::Display for ForeignSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |a: &Option<SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
        write!(
            f,
            "fd {} {} → {} {}",
            self.fd,
            show(&self.local),
            show(&self.peer),
            self.state
        )
    }
}

fn errno_error(pid: i32, e: io::Error) -> TakeError {
    match e.raw_os_error() {
        Some(errno::ESRCH | errno::ENOENT) => TakeError::NoProcess(pid),
        Some(errno::EPERM | errno::EACCES) => TakeError::Permission(pid),
        Some(errno::ENOSYS) => TakeError::KernelTooOld,
        _ => TakeError::Io { pid, source: e },
    }
}

impl Process {
    /// Holds process `pid`.
    pub fn open(pid: i32) -> Result<Process, TakeError> {
        let pidfd = process::pidfd_open(pid).map_err(|e| errno_error(pid, e))?;
        Ok(Process { pid, pidfd })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfd: readable once the process has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The process's command name (`/proc/PID/comm`).
    pub fn command(&self) -> String {
        proc::comm(self.pid).unwrap_or_else(|| "?".into())
    }

    /// Duplicates of every TCP socket the process holds (or only descriptor `only`).
    pub fn tcp_sockets(&self, only: Option<RawFd>) -> Result<Vec<ForeignSocket>, TakeError> {
        let mut found = Vec::new();
        self.each_tcp_socket(only, |_, _| true, |s| found.push(s))?;
        found.sort_by_key(|s| s.fd);
        Ok(found)
    }

    /// Hands each TCP socket of the process (or only descriptor `only`) that `wanted(fd,
    /// inode)` accepts to `each`, one duplicate at a time. A descriptor that closes meanwhile
    /// (or now names another socket) is skipped; running out of descriptors is an error.
    pub fn each_tcp_socket(
        &self,
        only: Option<RawFd>,
        wanted: impl Fn(RawFd, u64) -> bool,
        mut each: impl FnMut(ForeignSocket),
    ) -> Result<(), TakeError> {
        let sockets = proc::socket_fds(self.pid).map_err(|e| errno_error(self.pid, e))?;
        for (fd, inode) in sockets {
            if only.is_some_and(|o| o != fd) {
                continue;
            }
            if !wanted(fd, inode) {
                continue;
            }
            let dup = match self.duplicate(fd) {
                Ok(dup) => dup,
                Err(TakeError::Io { source, .. })
                    if matches!(source.raw_os_error(), Some(errno::EMFILE | errno::ENFILE)) =>
                {
                    return Err(TakeError::Io {
                        pid: self.pid,
                        source,
                    })
                }
                Err(TakeError::Io { .. }) => continue,
                Err(e) => return Err(e),
            };
            if file::inode(&dup) != Some(inode) {
                continue;
            }
            if let Some(socket) = tcp_socket(fd, inode, dup) {
                each(socket);
            }
        }
        Ok(())
    }

    /// pidfd_getfd: a duplicate of the process's descriptor `fd`.
    pub fn duplicate(&self, fd: RawFd) -> Result<OwnedFd, TakeError> {
        process::pidfd_getfd(self.pidfd.as_fd(), fd).map_err(|e| errno_error(self.pid, e))
    }
}

/// The socket behind `dup`, if it is TCP.
fn tcp_socket(fd: RawFd, inode: u64, dup: OwnedFd) -> Option<ForeignSocket> {
    let sock = SockRef::from(&dup);
    if sock.protocol().ok()?? != socket2::Protocol::TCP {
        return None;
    }
    let local = sock.local_addr().ok().and_then(|a| a.as_socket());
    let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
    let state = tcp_state(&dup);
    Some(ForeignSocket {
        fd,
        inode,
        local,
        peer,
        state,
        dup,
    })
}

/// The TCP state's name, from TCP_INFO (`?` if it cannot be read).
fn tcp_state(socket: &impl AsFd) -> &'static str {
    TcpInfo::read(socket.as_fd().as_raw_fd()).map_or("?", |info| info.state.name())
}

/// One socket given keepalive: what it had and what it has now, both read back.
pub struct Change {
    pub socket: ForeignSocket,
    pub before: SocketKeepalive,
    pub after: SocketKeepalive,
}

/// Sets `keepalive` on `socket` and reads it back.
pub fn fix(socket: ForeignSocket, keepalive: &Keepalive) -> io::Result<Change> {
    let before = SocketKeepalive::read(&socket)?;
    keepalive.apply(&socket)?;
    let after = SocketKeepalive::read(&socket)?;
    Ok(Change {
        socket,
        before,
        after,
    })
}

/// How often a watch looks for new sockets: the longest a new connection goes without
/// keepalive.
pub const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Gives `keepalive` to the TCP sockets of `root` (and, with `descendants`, of the processes it
/// starts) as they appear, until `root` exits; `report` hears of each socket fixed. Sockets are
/// known by process and inode, so each is fixed once.
pub fn watch(
    root: &Process,
    keepalive: &Keepalive,
    only_fd: Option<RawFd>,
    descendants: bool,
    mut report: impl FnMut(i32, &str, io::Result<Change>),
) -> Result<(), TakeError> {
    let mut seen = std::collections::HashSet::new();
    let mut others: Vec<Process> = Vec::new();
    loop {
        if descendants {
            for pid in self::descendants(root.pid) {
                if !others.iter().any(|p| p.pid == pid) {
                    if let Ok(p) = Process::open(pid) {
                        others.push(p);
                    }
                }
            }
        }
        for process in std::iter::once(root).chain(others.iter()) {
            let command = process.command();
            let pid = process.pid;
            let mut fresh = Vec::new();
            let result = process.each_tcp_socket(
                only_fd,
                |fd, inode| !seen.contains(&(pid, fd, inode)),
                |socket| {
                    fresh.push((pid, socket.fd, socket.inode));
                    report(pid, &command, fix(socket, keepalive));
                },
            );
            seen.extend(fresh);
            match result {
                Ok(()) => {}
                Err(TakeError::NoProcess(_)) if pid == root.pid => return Ok(()),
                // A process the program started may be gone, or out of reach (setuid, not
                // dumpable): the others are still watched.
                Err(_) if pid != root.pid => {}
                Err(e) => return Err(e),
            }
        }
        others.retain(|p| !exited(p));
        // Forget the sockets of processes no longer watched.
        seen.retain(|(pid, _, _)| *pid == root.pid || others.iter().any(|p| p.pid == *pid));
        if wait_exit(root, WATCH_EVERY) {
            return Ok(());
        }
    }
}

/// `idlegate run`: starts `command` (the program, then its arguments) under a [`watch`] that
/// gives `keepalive` to every TCP socket of it and of the processes it starts, waits for it and
/// returns the exit code that passes on its status ([`process::exit_code`]). SIGINT and
/// SIGQUIT reach the program from the terminal, not us; SIGTERM and SIGHUP sent to us are
/// passed on to it. `report` hears of each socket fixed; `warn` of what fails without stopping
/// the program (a watch that stopped): it runs on.
pub fn run_program(
    command: &[String],
    keepalive: &Keepalive,
    mut report: impl FnMut(i32, &str, io::Result<Change>),
    mut warn: impl FnMut(&str),
) -> Result<u8> {
    use crate::sys::signal::{ChildSignals, SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let (program, rest) = command
        .split_first()
        .context("run: the program to start, after --")?;
    let signals = ChildSignals::catch(&[SIGINT, SIGQUIT, SIGTERM, SIGHUP], &[SIGTERM, SIGHUP])
        .context("run: installing signal handlers")?;
    let mut child = match std::process::Command::new(program).args(rest).spawn() {
        Ok(child) => child,
        Err(e) => return cannot_start(program, e),
    };
    let pid = child.id() as i32;
    signals.forward_to(pid);
    let watched = Process::open(pid)
        .map_err(anyhow::Error::from)
        .and_then(|process| Ok(watch(&process, keepalive, None, true, &mut report)?));
    if let Err(e) = watched {
        warn(&format!("keepalive watch stopped: {e:#}"));
    }
    let status = child.wait().context("run: waiting for the program")?;
    Ok(process::exit_code(status))
}

/// A program that could not be started: 127 or 126, as a shell, said as `lab exec` says it
/// ([`crate::obs::report::cannot_start`]).
fn cannot_start<T>(program: &str, e: io::Error) -> Result<T> {
    let reason = errno::reason(&e);
    Err(crate::obs::report::cannot_start(program, e.kind(), reason))
        .with_context(|| format!("starting {program:?}"))
}

/// Whether `process` has exited (its pidfd is readable).
pub fn exited(process: &Process) -> bool {
    wait_exit(process, Duration::ZERO)
}

/// Waits up to `timeout` for `process` to exit; says whether it did.
fn wait_exit(process: &Process, timeout: Duration) -> bool {
    poll::wait_readable(process.pidfd.as_raw_fd(), Some(timeout)).unwrap_or(false)
}

/// The pids of `pid`'s descendants (children, their children, …).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for child in proc::children(p) {
            if !out.contains(&child) {
                out.push(child);
                queue.push(child);
            }
        }
    }
    out
}
