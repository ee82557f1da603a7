//! Resource limits: the descriptor limit a process with many connections needs.
//!
//! Contract: [`raise_descriptor_limit`] raises RLIMIT_NOFILE's soft limit (and the hard one
//! where it may) and says what the soft limit is now; it never lowers either. Windows has no
//! such limit to raise: a socket is a kernel handle, and a process may hold about 16 million
//! of them (2^24, bounded by memory first: Mark Russinovich, "Pushing the Limits of Windows:
//! Handles", Microsoft's Windows blog, 2009), so there it answers that `want` fits.

#[cfg(unix)]
use anyhow::Context;
use anyhow::Result;
#[cfg(unix)]
use std::io;

/// Windows: nothing to raise (see the module's note); `want` fits.
#[cfg(windows)]
pub fn raise_descriptor_limit(want: u64) -> Result<u64> {
    Ok(want)
}

/// Raises this process's soft limit on open descriptors to `want` (the soft limit is often
/// 1,024: about 500 relayed connections), the hard limit too where it may (CAP_SYS_RESOURCE),
/// else as far as the hard limit allows; returns the soft limit now. Children inherit it.
#[cfg(unix)]
pub fn raise_descriptor_limit(want: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error()).context("reading the descriptor limit");
        }
        if limit.rlim_cur >= want {
            return Ok(limit.rlim_cur);
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: limit.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return Ok(want);
        }
        limit.rlim_cur = want.min(limit.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(io::Error::last_os_error()).context("raising the descriptor limit");
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_for_less_than_the_soft_limit_keeps_it() {
        let now = raise_descriptor_limit(0).unwrap();
        assert!(now > 0);
        assert_eq!(raise_descriptor_limit(1).unwrap(), now);
        assert_eq!(raise_descriptor_limit(now).unwrap(), now);
    }
}
