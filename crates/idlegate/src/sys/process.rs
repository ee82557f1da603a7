//! Processes: who we run as, signalling a process, and the exit code a command passes on
//! from a program it ran.
//!
//! Contract: [`exit_code`] is the one mapping of a child's status to idlegate's own exit code,
//! as a shell does: the program's code, or 128 + the signal that killed it.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// The real user id of this process.
pub fn uid() -> libc::uid_t {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The exit code that passes on a program's `status`: its own code, or 128 + the signal that
/// ended it (137 for SIGKILL), clamped to 0–255; 1 if the status says neither.
pub fn exit_code(status: ExitStatus) -> u8 {
    exit_code_of(status.code(), status.signal())
}

fn exit_code_of(code: Option<i32>, signal: Option<i32>) -> u8 {
    let code = match (code, signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    code.clamp(0, 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn exit_code_clamps_codes_no_exit_status_can_carry() {
        assert_eq!(exit_code_of(Some(300), None), 255);
        assert_eq!(exit_code_of(Some(-1), None), 0);
        assert_eq!(exit_code_of(None, None), 1);
    }

    #[test]
    fn uid_is_the_real_user_id() {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .expect("Uid line");
        let real: libc::uid_t = line
            .split_whitespace()
            .nth(1)
            .expect("real")
            .parse()
            .expect("uid");
        assert_eq!(uid(), real);
    }

    #[test]
    fn kill_with_signal_zero_finds_this_process() {
        assert!(kill(std::process::id() as i32, 0).is_ok());
    }
}
