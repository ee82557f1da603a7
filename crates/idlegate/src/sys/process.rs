//! Processes: who this one runs as, signals to others, and pidfds.
//!
//! Contract: [`is_root`] and [`uid`] say who this process is; [`signal`] sends a signal to a
//! process; [`pidfd_open`] holds a process by a descriptor (readable once it exits: wait on
//! it with [`super::poll`]) and [`pidfd_getfd`] duplicates one of its descriptors (Linux 5.6+,
//! ptrace access needed). Errors are the kernel's, as `io::Error`. [`exit_code`] is the one
//! mapping of a child's status to idlegate's own exit code, as a shell does: the program's code,
//! or 128 + the signal that killed it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// This process's real uid.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// Sends `signal` to process `pid` (kill(2)).
pub fn signal(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes a pid and a signal number; a wrong one is an error, not UB.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd of process `pid` (pidfd_open(2)).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that the caller now owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A duplicate of descriptor `fd` of the process behind `pidfd` (pidfd_getfd(2)).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags; it returns a new
    // descriptor or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that the caller now owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
}

/// The exit code that passes on a program's `status`: its own code, or 128 + the signal that
/// ended it (137 for SIGKILL), clamped to 0–255; 1 if the status says neither.
pub fn exit_code(status: ExitStatus) -> u8 {
    exit_code_of(status.code(), status.signal())
}

fn exit_code_of(code: Option<i32>, signal: Option<i32>) -> u8 {
    let code = match (code, signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => return signal_exit_code(signal),
        (None, None) => 1,
    };
    code.clamp(0, 255) as u8
}

/// The exit code of a program ended by `signal`, as shells report it: 128 + the signal (130
/// for SIGINT, 143 for SIGTERM), clamped to 0–255.
pub fn signal_exit_code(signal: i32) -> u8 {
    (128 + signal).clamp(0, 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn root_is_uid_zero() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(is_root(), unsafe { libc::geteuid() } == 0);
    }

    #[test]
    fn a_signalled_child_exits_and_its_pidfd_says_so() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid).unwrap();
        let fd = pidfd.as_raw_fd();
        assert!(!super::super::poll::wait_readable(fd, Some(Duration::ZERO)).unwrap());
        signal(pid, libc::SIGTERM).unwrap();
        assert!(super::super::poll::wait_readable(fd, Some(Duration::from_secs(10))).unwrap());
        let _ = child.wait();
        let e = pidfd_open(pid).map(drop).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
        let _ = pidfd.as_fd();
    }

    #[test]
    fn a_descriptor_of_this_process_duplicated_through_its_pidfd_is_the_same_file() {
        let me = pidfd_open(std::process::id() as i32).unwrap();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let dup = pidfd_getfd(me.as_fd(), file.as_raw_fd()).unwrap();
        assert_eq!(
            super::super::file::inode(&dup),
            super::super::file::inode(&file)
        );
    }

    /// A wait(2) status: the exit code in bits 8–15, or the terminating signal in bits 0–6.
    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn exit_code_passes_on_a_programs_own_code() {
        assert_eq!(exit_code(exited(0)), 0);
        assert_eq!(exit_code(exited(3)), 3);
        assert_eq!(exit_code(exited(255)), 255);
    }

    #[test]
    fn exit_code_of_a_program_killed_by_a_signal_is_128_plus_the_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }

    #[test]
    fn signal_exit_code_is_128_plus_the_signal_as_shells_report_it() {
        assert_eq!(signal_exit_code(libc::SIGINT), 130);
        assert_eq!(signal_exit_code(libc::SIGKILL), 137);
        assert_eq!(signal_exit_code(libc::SIGTERM), 143);
        assert_eq!(signal_exit_code(1000), 255);
    }

    #[test]
    fn exit_code_clamps_codes_no_exit_status_can_carry() {
        assert_eq!(exit_code_of(Some(300), None), 255);
        assert_eq!(exit_code_of(Some(-1), None), 0);
        assert_eq!(exit_code_of(None, None), 1);
    }
}
