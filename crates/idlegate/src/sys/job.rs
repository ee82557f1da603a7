//! Job control for a program run in the foreground (`lab exec`), as sudo does: the program
//! runs in a process group of its own, so that a signal sent to idlegate's group reaches it
//! once (through idlegate), not twice; and, when idlegate's group holds the terminal, the
//! program's group takes it before the program starts, so that the terminal's keys (Ctrl-C,
//! Ctrl-\, Ctrl-Z) and a resize reach the program alone, and it may read the terminal.
//!
//! Contract: [`Terminal::controlling`] opens the controlling terminal (`/dev/tty`), and
//! [`Terminal::is_ours`] says whether this process's group is its foreground group;
//! [`own_group`] sets a command up to start in its own group, given the terminal first when
//! this group holds it; [`wait`] waits for the program doing a shell's part:
//! when the program stops (Ctrl-Z, SIGSTOP, reading the terminal in the background), this
//! process takes the terminal back and stops with the same signal, so the shell sees the job
//! stopped; continued (`fg`, `bg`), it gives the terminal back if its group has it again and
//! continues the program. When the program has ended the terminal returns to this group.
//! tcsetpgrp(3) from a group that is not the foreground one raises SIGTTOU, so SIGTTOU is
//! blocked around each call, as POSIX allows.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

/// The controlling terminal (`/dev/tty`), open.
pub struct Terminal(File);

impl Terminal {
    /// The controlling terminal; none when this process has none.
    pub fn controlling() -> Option<Terminal> {
        let tty = File::options()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        Some(Terminal(tty))
    }

    /// Whether this process's group is the terminal's foreground group (runs in the
    /// foreground).
    pub fn is_ours(&self) -> bool {
        // SAFETY: tcgetpgrp and getpgrp take an open descriptor or nothing.
        unsafe { libc::tcgetpgrp(self.0.as_raw_fd()) == libc::getpgrp() }
    }

    /// Gives the terminal to `group`, if it is held by `from` (never taking it from a group
    /// that is not ours to take it from: the shell's, after `bg`).
    fn hand(&self, from: libc::pid_t, group: libc::pid_t) {
        let fd = self.0.as_raw_fd();
        // SAFETY: tcgetpgrp takes an open descriptor.
        if unsafe { libc::tcgetpgrp(fd) } == from {
            give(fd, group);
        }
    }
}

/// tcsetpgrp(3) with SIGTTOU blocked in this thread, so that a background group may call it.
/// Async-signal-safe (sigprocmask, tcsetpgrp): also used between fork and exec.
fn give(fd: RawFd, group: libc::pid_t) -> libc::c_int {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset; sigprocmask and
    // tcsetpgrp take it, a descriptor and a group id.
    unsafe {
        let mut ttou = std::mem::zeroed::<libc::sigset_t>();
        let mut before = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut ttou);
        libc::sigaddset(&mut ttou, libc::SIGTTOU);
        libc::sigprocmask(libc::SIG_BLOCK, &ttou, &mut before);
        let r = libc::tcsetpgrp(fd, group);
        libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
        r
    }
}

/// Makes `command` start in a process group of its own, which first takes `terminal` if this
/// process's group holds it now. Call it before any other pre_exec setup of the command (it
/// then runs first between fork and exec).
pub fn own_group(command: &mut Command, terminal: Option<&Terminal>) {
    let tty = terminal.filter(|t| t.is_ours()).map(|t| t.0.as_raw_fd());
    // SAFETY: the closure runs in the child between fork and exec and makes only
    // async-signal-safe calls (setpgid, getpid, sigprocmask, tcsetpgrp) on a descriptor open
    // before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = tty {
                // Without the terminal the program still runs; it is then in the background.
                give(fd, libc::getpid());
            }
            Ok(())
        });
    }
}

/// Takes the terminal back for this process's group after a program that may have been given
/// it could not be started (its group is gone: the terminal has no foreground group then, or
/// still ours).
pub fn take_back(terminal: Option<&Terminal>) {
    let Some(t) = terminal else {
        return;
    };
    // SAFETY: getpgrp has no preconditions; tcgetpgrp takes an open descriptor.
    let (ours, holder) = unsafe { (libc::getpgrp(), libc::tcgetpgrp(t.0.as_raw_fd())) };
    if holder != ours && !group_exists(holder) {
        give(t.0.as_raw_fd(), ours);
    }
}

/// Whether a process group `group` has a member (kill(2) with signal 0).
fn group_exists(group: libc::pid_t) -> bool {
    group > 0 && super::process::signal(-group, 0).is_ok()
}

/// Waits until `pid` (the leader of its own group, started with [`own_group`]) ends, doing a
/// shell's part when it stops (see the module's contract), and returns how it ended. The
/// terminal, if the program had it, returns to this process's group.
pub fn wait(pid: i32, terminal: Option<&Terminal>) -> io::Result<ExitStatus> {
    // SAFETY: getpgrp has no preconditions.
    let ours = unsafe { libc::getpgrp() };
    loop {
        let mut status = 0;
        // SAFETY: waitpid fills `status`, an int alive for the call.
        if unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if !libc::WIFSTOPPED(status) {
            if let Some(t) = terminal {
                t.hand(pid, ours);
            }
            return Ok(ExitStatus::from_raw(status));
        }
        if let Some(t) = terminal {
            t.hand(pid, ours);
        }
        // Stop as the program did; this returns once continued (the kernel discards SIGTSTP,
        // SIGTTIN and SIGTTOU for an orphaned group: then it returns at once).
        // SAFETY: raise takes a signal number.
        unsafe { libc::raise(libc::WSTOPSIG(status)) };
        if let Some(t) = terminal {
            // Continued in the foreground (`fg`): the terminal is ours again to hand on.
            t.hand(ours, pid);
        }
        // The program may have ended meanwhile; then the next wait says so.
        let _ = super::process::signal(-pid, libc::SIGCONT);
    }
}
