//! Waiting on descriptors: the one poll(2) wrapper.
//!
//! Contract: [`poll`] waits on a set of [`Watch`]es for at most a timeout and says how many
//! reported something; [`one`] and [`wait_readable`] are the one-descriptor forms. A timeout is
//! rounded **up** to the next whole millisecond (poll(2) counts milliseconds), so a wait never
//! ends before its deadline and a loop waiting for that deadline never spins; `None` waits
//! without limit. A call interrupted by a signal counts as a timeout (nothing reported).
//! [`STOP_CHECK`] is how long every loop that waits on a descriptor between looks at its stop
//! flag waits at most.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// How often a loop waiting on a descriptor (an accept loop) looks at its stop flag.
pub const STOP_CHECK: Duration = Duration::from_millis(200);

/// One descriptor to watch, and (after [`poll`]) what it reported.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Watch(libc::pollfd);

impl Watch {
    /// Watches `fd` for readability (`read`) and writability (`write`). Errors and hangups are
    /// reported even when neither is asked for. A negative `fd` is ignored.
    pub fn new(fd: RawFd, read: bool, write: bool) -> Watch {
        let mut events = 0;
        if read {
            events |= libc::POLLIN;
        }
        if write {
            events |= libc::POLLOUT;
        }
        Watch(libc::pollfd {
            fd,
            events,
            revents: 0,
        })
    }

    /// A slot that watches nothing and never reports.
    pub fn nothing() -> Watch {
        Watch::new(-1, false, false)
    }

    /// What the descriptor reported in the last [`poll`].
    pub fn ready(&self) -> Ready {
        Ready(self.0.revents)
    }
}

/// What a watched descriptor reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready(i16);

impl Ready {
    /// Anything at all.
    pub fn any(self) -> bool {
        self.0 != 0
    }

    /// Anything but writability: data, EOF, an error or a hangup (something a read will tell).
    pub fn beyond_writable(self) -> bool {
        self.0 & !libc::POLLOUT != 0
    }

    /// POLLERR: the socket has an error pending.
    pub fn error(self) -> bool {
        self.0 & libc::POLLERR != 0
    }

    /// POLLHUP: the connection is hung up.
    pub fn hangup(self) -> bool {
        self.0 & libc::POLLHUP != 0
    }

    /// POLLNVAL: the descriptor is not open.
    pub fn invalid(self) -> bool {
        self.0 & libc::POLLNVAL != 0
    }
}

/// poll(2)'s timeout argument for `timeout`: whole milliseconds rounded up (so the wait never
/// ends early), at most `c_int::MAX`; -1 (no limit) for `None`.
fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    let Some(t) = timeout else { return -1 };
    let ms = t.as_nanos().div_ceil(1_000_000);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

/// Waits until one of `watches` reports something or `timeout` passes; returns how many
/// reported (0 on timeout or signal).
pub fn poll(watches: &mut [Watch], timeout: Option<Duration>) -> io::Result<usize> {
    let n = watches.len() as libc::nfds_t;
    // SAFETY: `Watch` is a transparent pollfd, and `watches` is a valid slice of them for the
    // duration of the call.
    let rc = unsafe {
        libc::poll(
            watches.as_mut_ptr().cast::<libc::pollfd>(),
            n,
            timeout_ms(timeout),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(rc as usize)
}

/// Waits on one descriptor (see [`Watch::new`]); returns what it reported (nothing on timeout
/// or signal).
pub fn one(fd: RawFd, read: bool, timeout: Option<Duration>) -> io::Result<Ready> {
    let mut watch = [Watch::new(fd, read, false)];
    poll(&mut watch, timeout)?;
    Ok(watch[0].ready())
}

/// Whether `fd` is readable (or has an error or EOF to report) within `timeout` (`None`:
/// without limit). poll(2) keeps time to the millisecond; a socket's SO_RCVTIMEO, rounded to
/// jiffies at every wake-up, was seen to run a percent late.
pub fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    Ok(one(fd, true, timeout)?.any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    #[test]
    fn timeouts_round_up_to_the_next_millisecond_and_none_waits_without_limit() {
        let ms = |nanos| timeout_ms(Some(Duration::from_nanos(nanos)));
        assert_eq!(ms(0), 0);
        assert_eq!(ms(1), 1);
        assert_eq!(ms(999_999), 1);
        assert_eq!(ms(1_000_000), 1);
        assert_eq!(ms(1_000_001), 2);
        assert_eq!(ms(1_500_000), 2);
        assert_eq!(timeout_ms(Some(Duration::from_millis(200))), 200);
        assert_eq!(
            timeout_ms(Some(Duration::from_secs(u64::MAX))),
            libc::c_int::MAX
        );
        assert_eq!(timeout_ms(None), -1);
    }

    #[test]
    fn a_wait_that_times_out_never_ends_before_its_deadline() {
        let (a, _b) = UnixStream::pair().unwrap();
        for timeout in [Duration::from_micros(300), Duration::from_micros(2_500)] {
            let started = Instant::now();
            assert!(!wait_readable(a.as_raw_fd(), Some(timeout)).unwrap());
            assert!(
                started.elapsed() >= timeout,
                "{timeout:?}: {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn readable_data_eof_and_hangup_are_reported_and_writability_is_told_apart() {
        let (a, mut b) = UnixStream::pair().unwrap();
        assert!(!wait_readable(a.as_raw_fd(), Some(Duration::ZERO)).unwrap());
        b.write_all(b"x").unwrap();
        assert!(wait_readable(a.as_raw_fd(), Some(Duration::ZERO)).unwrap());

        let (c, d) = UnixStream::pair().unwrap();
        let mut watches = [Watch::new(c.as_raw_fd(), true, true), Watch::nothing()];
        assert_eq!(poll(&mut watches, Some(Duration::ZERO)).unwrap(), 1);
        assert!(watches[0].ready().any() && !watches[0].ready().beyond_writable());
        assert!(!watches[1].ready().any());
        drop(d);
        assert_eq!(poll(&mut watches, Some(Duration::ZERO)).unwrap(), 1);
        assert!(watches[0].ready().beyond_writable() && watches[0].ready().hangup());
        // Errors and hangups are reported even when nothing is asked for.
        assert!(one(c.as_raw_fd(), false, Some(Duration::ZERO))
            .unwrap()
            .hangup());
    }
}
