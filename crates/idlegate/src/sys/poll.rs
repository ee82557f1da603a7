//! Waiting on sockets: the one poll wrapper (poll(2) on Linux, WSAPoll on Windows).
//!
//! Contract: [`poll`] waits on a set of [`Watch`]es for at most a timeout and says how many
//! reported something; [`one`] and [`wait_readable`] are the one-socket forms. A timeout is
//! rounded **up** to the next whole millisecond (both calls count milliseconds), so a wait
//! never ends before its deadline and a loop waiting for that deadline never spins; `None`
//! waits without limit. A call interrupted by a signal counts as a timeout (nothing reported).
//! [`read_within`] is a read with a time limit after which the socket may be read again.
//! [`STOP_CHECK`] is how long every loop that waits on a socket between looks at its stop
//! flag waits at most. On Linux any descriptor may be watched (a pipe, a Unix socket); on
//! Windows only sockets (WSAPoll's limit), and a set that watches none just sleeps out its
//! timeout (WSAPoll refuses an empty set).

use crate::sys::socket::Raw;
use std::io;
use std::time::Duration;

/// How often a loop waiting on a descriptor (an accept loop) looks at its stop flag.
pub const STOP_CHECK: Duration = Duration::from_millis(200);

/// The system's side: its poll entry, its event bits, its call.
#[cfg(unix)]
mod os {
    use super::Raw;
    use std::io;

    pub type Entry = libc::pollfd;
    pub type Events = libc::c_short;
    pub const READ: Events = libc::POLLIN;
    pub const WRITE: Events = libc::POLLOUT;
    pub const ERROR: Events = libc::POLLERR;
    pub const HANGUP: Events = libc::POLLHUP;
    pub const INVALID: Events = libc::POLLNVAL;
    /// What a slot that watches nothing holds: poll(2) ignores a negative descriptor.
    pub const NOTHING: Raw = -1;

    pub fn entry(socket: Raw, events: Events) -> Entry {
        libc::pollfd {
            fd: socket,
            events,
            revents: 0,
        }
    }

    pub fn revents(entry: &Entry) -> Events {
        entry.revents
    }

    pub fn call(entries: &mut [Entry], timeout_ms: i32) -> io::Result<usize> {
        let n = entries.len() as libc::nfds_t;
        // SAFETY: `entries` is a valid slice of pollfds for the duration of the call.
        let rc = unsafe { libc::poll(entries.as_mut_ptr(), n, timeout_ms) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
}

/// The system's side: its poll entry, its event bits, its call.
#[cfg(windows)]
mod os {
    use super::Raw;
    use std::io;
    use windows_sys::Win32::Networking::WinSock as ws;

    pub type Entry = ws::WSAPOLLFD;
    pub type Events = i16;
    // POLLIN is POLLRDNORM | POLLRDBAND; WSAPoll refuses POLLPRI, and POLLRDNORM is what
    // Microsoft's documentation asks for: data, a connection to accept, EOF.
    pub const READ: Events = ws::POLLRDNORM;
    pub const WRITE: Events = ws::POLLWRNORM;
    pub const ERROR: Events = ws::POLLERR;
    pub const HANGUP: Events = ws::POLLHUP;
    pub const INVALID: Events = ws::POLLNVAL;
    /// What a slot that watches nothing holds: WSAPoll ignores INVALID_SOCKET.
    pub const NOTHING: Raw = ws::INVALID_SOCKET as Raw;

    pub fn entry(socket: Raw, events: Events) -> Entry {
        ws::WSAPOLLFD {
            fd: socket as ws::SOCKET,
            events,
            revents: 0,
        }
    }

    pub fn revents(entry: &Entry) -> Events {
        entry.revents
    }

    pub fn watches_something(entry: &Entry) -> bool {
        entry.fd != ws::INVALID_SOCKET
    }

    pub fn call(entries: &mut [Entry], timeout_ms: i32) -> io::Result<usize> {
        if !entries.iter().any(watches_something) {
            // WSAPoll fails (WSAEINVAL) on a set with no socket in it: wait as poll(2) would.
            match timeout_ms {
                t if t < 0 => loop {
                    std::thread::park();
                },
                t => std::thread::sleep(std::time::Duration::from_millis(t as u64)),
            }
            return Ok(0);
        }
        let n = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        // SAFETY: `entries` is a valid slice of WSAPOLLFDs for the duration of the call.
        let rc = unsafe { ws::WSAPoll(entries.as_mut_ptr(), n, timeout_ms) };
        if rc < 0 {
            // SAFETY: a plain call, reading this thread's last Winsock error.
            return Err(io::Error::from_raw_os_error(unsafe {
                ws::WSAGetLastError()
            }));
        }
        // Measured under Wine 8.0: a slot holding INVALID_SOCKET comes back with POLLNVAL,
        // though it is neither counted nor ends the wait. A slot that watches nothing never
        // reports (the contract of `Watch::nothing`), whatever the system says.
        for entry in entries.iter_mut().filter(|e| !watches_something(e)) {
            entry.revents = 0;
        }
        Ok(rc as usize)
    }
}

/// One socket to watch, and (after [`poll`]) what it reported.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Watch(os::Entry);

impl Watch {
    /// Watches `socket` for readability (`read`) and writability (`write`). Errors and hangups
    /// are reported even when neither is asked for.
    pub fn new(socket: Raw, read: bool, write: bool) -> Watch {
        let mut events = 0;
        if read {
            events |= os::READ;
        }
        if write {
            events |= os::WRITE;
        }
        Watch(os::entry(socket, events))
    }

    /// A slot that watches nothing and never reports.
    pub fn nothing() -> Watch {
        Watch::new(os::NOTHING, false, false)
    }

    /// What the socket reported in the last [`poll`].
    pub fn ready(&self) -> Ready {
        Ready(os::revents(&self.0))
    }
}

/// What a watched socket reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready(os::Events);

impl Ready {
    /// Anything at all.
    pub fn any(self) -> bool {
        self.0 != 0
    }

    /// Anything but writability: data, EOF, an error or a hangup (something a read will tell).
    pub fn beyond_writable(self) -> bool {
        self.0 & !os::WRITE != 0
    }

    /// Room to write.
    pub fn writable(self) -> bool {
        self.0 & os::WRITE != 0
    }

    /// POLLERR: the socket has an error pending.
    pub fn error(self) -> bool {
        self.0 & os::ERROR != 0
    }

    /// POLLHUP: the connection is hung up.
    pub fn hangup(self) -> bool {
        self.0 & os::HANGUP != 0
    }

    /// POLLNVAL: the descriptor is not open.
    pub fn invalid(self) -> bool {
        self.0 & os::INVALID != 0
    }
}

/// The timeout argument for `timeout`: whole milliseconds rounded up (so the wait never ends
/// early), at most `i32::MAX`; -1 (no limit) for `None`.
fn timeout_ms(timeout: Option<Duration>) -> i32 {
    let Some(t) = timeout else { return -1 };
    let ms = t.as_nanos().div_ceil(1_000_000);
    i32::try_from(ms).unwrap_or(i32::MAX)
}

/// Waits until one of `watches` reports something or `timeout` passes; returns how many
/// reported (0 on timeout or signal).
pub fn poll(watches: &mut [Watch], timeout: Option<Duration>) -> io::Result<usize> {
    // `Watch` is a transparent entry: the slice is one of entries.
    let entries: &mut [os::Entry] =
        // SAFETY: `Watch` is `#[repr(transparent)]` over `os::Entry`: same size, alignment and
        // layout, so the slice may be viewed as one of entries for as long as it is borrowed.
        unsafe { std::slice::from_raw_parts_mut(watches.as_mut_ptr().cast(), watches.len()) };
    match os::call(entries, timeout_ms(timeout)) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        other => other,
    }
}

/// Waits on one socket (see [`Watch::new`]); returns what it reported (nothing on timeout or
/// signal).
pub fn one(socket: Raw, read: bool, timeout: Option<Duration>) -> io::Result<Ready> {
    let mut watch = [Watch::new(socket, read, false)];
    poll(&mut watch, timeout)?;
    Ok(watch[0].ready())
}

/// Whether `socket` is readable (or has an error or EOF to report) within `timeout` (`None`:
/// without limit). poll(2) keeps time to the millisecond; a socket's SO_RCVTIMEO, rounded to
/// jiffies at every wake-up, was seen to run a percent late.
pub fn wait_readable(socket: Raw, timeout: Option<Duration>) -> io::Result<bool> {
    Ok(one(socket, true, timeout)?.any())
}

/// Reads what `stream` has within `timeout` (more than zero): the bytes read (0 at an end of
/// stream), or an error of kind `WouldBlock` or `TimedOut` if nothing came in time, on which
/// the caller may read the socket again. Linux: SO_RCVTIMEO and the read, as `probe` always
/// read (the wait ends on a jiffy: a little late). Windows: [`wait_readable`], then the read
/// of a socket that has something to say: after a receive that timed out "the socket state is
/// indeterminate, and should not be used" (Microsoft's SOL_SOCKET page, SO_RCVTIMEO).
pub fn read_within(
    stream: &std::net::TcpStream,
    buf: &mut [u8],
    timeout: Duration,
) -> io::Result<usize> {
    use std::io::Read;
    #[cfg(unix)]
    {
        stream.set_read_timeout(Some(timeout))?;
    }
    #[cfg(windows)]
    {
        if !wait_readable(crate::sys::socket::raw(stream), Some(timeout))? {
            return Err(io::ErrorKind::TimedOut.into());
        }
    }
    let mut stream = stream;
    stream.read(buf)
}

#[cfg(all(test, unix))]
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
        assert_eq!(timeout_ms(Some(Duration::from_secs(u64::MAX))), i32::MAX);
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
