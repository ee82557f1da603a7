//! Moving bytes from one socket to another through a bounded buffer of the process's own: a
//! [`Pipe`]. On Linux a kernel pipe and splice(2), so the bytes never pass through user space;
//! on Windows, which has no splice, a buffer in memory and a plain read and write.
//!
//! Contract: [`Pipe::new`] makes an empty pipe of [`Pipe::capacity`] bytes (Linux: a
//! non-blocking, close-on-exec pipe); [`Pipe::grow`] asks for a larger one and may be refused;
//! [`Pipe::fill_from`] moves up to `len` bytes from a socket into an empty pipe and
//! [`Pipe::drain_to`] up to `len` of them on to a socket, each without blocking (`WouldBlock`
//! when the socket has nothing or takes nothing; 0 from `fill_from` at EOF), retrying when
//! interrupted. The pipe holds at most its capacity: a slow reader slows the writer, never
//! grows a buffer. What all pipes hold together is bounded as Linux bounds an unprivileged
//! user's pipes (pipe(7)): there, pipe-max-size (1 MiB) caps one pipe and, once the user's
//! pipes hold pipe-user-pages-soft (64 MiB by default), a new pipe gets one page and none
//! grows (a root relay, with CAP_SYS_RESOURCE, is exempt from both); on Windows the same
//! rule, with a budget of 64 MiB for the process.

#[cfg(target_os = "linux")]
use crate::sys::socket::{raw, Handle};
#[cfg(target_os = "linux")]
use std::io;

/// A bounded buffer between two sockets (see the module's contract).
#[cfg(target_os = "linux")]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

#[cfg(target_os = "linux")]
impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = pipe()?;
        // The kernel's default pipe: 16 pages.
        Ok(Pipe {
            read,
            write,
            capacity: 1 << 16,
        })
    }

    /// The most bytes the pipe holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Asks for a pipe of `bytes` (F_SETPIPE_SZ); the size it now has, or `None` if refused.
    pub fn grow(&mut self, bytes: usize) -> Option<usize> {
        let size = set_size(&self.write, bytes)?;
        self.capacity = size;
        Some(size)
    }

    /// Up to `len` bytes from `from` into the pipe (splice(2)).
    pub fn fill_from(&mut self, from: &impl Handle, len: usize) -> io::Result<usize> {
        splice(raw(from), self.write.as_raw_fd(), len)
    }

    /// Up to `len` bytes of the pipe's on to `to` (splice(2)).
    pub fn drain_to(&mut self, to: &impl Handle, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), raw(to), len)
    }
}

#[cfg(windows)]
pub use copy::Pipe;

/// The Windows side: a buffer and a copy, within a process-wide budget. It builds for the
/// Linux build's unit tests too (a copy works on any socket), so they test it.
#[cfg(any(windows, test))]
mod copy {
    use crate::sys::socket::Handle;
    use std::io::{self, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// What a new pipe holds: Linux's default pipe, 16 pages.
    const DEFAULT: usize = 1 << 16;
    /// What a new pipe holds past the budget: one page, as Linux gives then.
    const LEAST: usize = 1 << 12;

    /// The bytes all of a process's pipes may hold together before new ones get [`LEAST`] and
    /// none grows: Linux's default pipe-user-pages-soft for an unprivileged user, 16,384 pages
    /// (pipe(7)).
    pub const BUDGET: usize = 64 << 20;

    /// Bytes the pipes of a process hold, against a limit.
    pub struct Budget {
        limit: usize,
        held: AtomicUsize,
    }

    impl Budget {
        pub const fn new(limit: usize) -> Budget {
            Budget {
                limit,
                held: AtomicUsize::new(0),
            }
        }

        /// Takes `bytes` if they fit under the limit.
        fn take(&self, bytes: usize) -> bool {
            self.held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    held.checked_add(bytes).filter(|&after| after <= self.limit)
                })
                .is_ok()
        }

        /// Takes `bytes` whatever the limit (a pipe past the budget still gets [`LEAST`]).
        fn take_anyway(&self, bytes: usize) {
            self.held.fetch_add(bytes, Ordering::AcqRel);
        }

        fn give(&self, bytes: usize) {
            self.held.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Every pipe of the process.
    #[cfg_attr(not(windows), allow(dead_code))] // the Linux build's tests use their own
    static PIPES: Budget = Budget::new(BUDGET);

    /// A bounded buffer between two sockets (see the module's contract).
    pub struct Pipe {
        buf: Vec<u8>,
        /// The bytes held are `buf[start..end]`.
        start: usize,
        end: usize,
        budget: &'static Budget,
    }

    impl Pipe {
        /// An empty pipe of 64 KiB, or of one page once the process's pipes hold [`BUDGET`].
        #[cfg_attr(not(windows), allow(dead_code))]
        pub fn new() -> io::Result<Pipe> {
            Ok(Pipe::within(&PIPES))
        }

        fn within(budget: &'static Budget) -> Pipe {
            let size = if budget.take(DEFAULT) {
                DEFAULT
            } else {
                budget.take_anyway(LEAST);
                LEAST
            };
            Pipe {
                buf: vec![0; size],
                start: 0,
                end: 0,
                budget,
            }
        }

        /// The most bytes the pipe holds.
        pub fn capacity(&self) -> usize {
            self.buf.len()
        }

        /// Grows the buffer to `bytes` if the budget has room; the size it now has, or `None`
        /// if refused.
        pub fn grow(&mut self, bytes: usize) -> Option<usize> {
            let more = bytes.checked_sub(self.buf.len()).filter(|&m| m > 0)?;
            if !self.budget.take(more) {
                return None;
            }
            self.buf.resize(bytes, 0);
            Some(self.buf.len())
        }

        /// Up to `len` bytes from `from` into the pipe (one read, after what it holds).
        pub fn fill_from(&mut self, from: &impl Handle, len: usize) -> io::Result<usize> {
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            }
            let until = self.buf.len().min(self.end.saturating_add(len));
            let sock = socket2::SockRef::from(from);
            loop {
                match (&*sock).read(&mut self.buf[self.end..until]) {
                    Ok(n) => {
                        self.end += n;
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }

        /// Up to `len` of the bytes the pipe holds on to `to` (one write).
        pub fn drain_to(&mut self, to: &impl Handle, len: usize) -> io::Result<usize> {
            let until = self.end.min(self.start.saturating_add(len));
            let sock = socket2::SockRef::from(to);
            loop {
                match (&*sock).write(&self.buf[self.start..until]) {
                    Ok(n) => {
                        self.start += n;
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    impl Drop for Pipe {
        fn drop(&mut self) {
            self.budget.give(self.buf.len());
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn budget(limit: usize) -> &'static Budget {
            Box::leak(Box::new(Budget::new(limit)))
        }

        #[test]
        fn pipes_grow_within_the_budget_and_past_it_get_a_page_and_do_not_grow() {
            let budget = budget(1 << 20);
            let mut first = Pipe::within(budget);
            assert_eq!(first.capacity(), DEFAULT);
            assert_eq!(
                first.grow(1 << 20),
                Some(1 << 20),
                "room for one grown pipe"
            );
            let mut second = Pipe::within(budget);
            assert_eq!(second.capacity(), LEAST, "past the budget: one page");
            assert_eq!(second.grow(1 << 20), None, "and it does not grow");
            drop(first);
            assert_eq!(
                second.grow(1 << 20),
                Some(1 << 20),
                "a dropped pipe gave its bytes back"
            );
            drop(second);
            assert_eq!(budget.held.load(Ordering::Acquire), 0);
        }

        #[test]
        fn bytes_copied_through_a_pipe_come_out_whole_and_an_empty_socket_would_block() {
            use crate::sys::poll::wait_readable;
            use crate::sys::socket::raw;
            use std::net::{TcpListener, TcpStream};
            use std::time::Duration;
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let pair = || {
                let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                let (far, _) = listener.accept().unwrap();
                (near, far)
            };
            let (mut sender, from) = pair();
            let (to, mut receiver) = pair();
            from.set_nonblocking(true).unwrap();
            let mut pipe = Pipe::within(budget(BUDGET));
            let e = pipe.fill_from(&from, 64).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            sender.write_all(b"copied").unwrap();
            assert!(wait_readable(raw(&from), Some(Duration::from_secs(10))).unwrap());
            assert_eq!(pipe.fill_from(&from, 64).unwrap(), 6);
            assert_eq!(pipe.drain_to(&to, 64).unwrap(), 6);
            let mut out = [0u8; 6];
            receiver.read_exact(&mut out).unwrap();
            assert_eq!(&out, b"copied");
        }
    }
}

#[cfg(target_os = "linux")]
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[cfg(target_os = "linux")]
/// A non-blocking, close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors this function now owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(target_os = "linux")]
/// Asks for a pipe of `bytes` (F_SETPIPE_SZ); returns the size the pipe now has, or `None` if
/// the kernel refused.
fn set_size(pipe: &OwnedFd, bytes: usize) -> Option<usize> {
    let want = libc::c_int::try_from(bytes).ok()?;
    // SAFETY: fcntl on a descriptor the caller owns.
    let size = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    usize::try_from(size).ok().filter(|&s| s > 0)
}

#[cfg(target_os = "linux")]
/// One non-blocking splice(2) of up to `len` bytes.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: a plain syscall on descriptors the caller holds open.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn bytes_spliced_into_a_pipe_come_out_whole_and_an_empty_pipe_would_block() {
        let (r, w) = pipe().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"spliced").unwrap();
        let n = splice(b.as_raw_fd(), w.as_raw_fd(), 64).unwrap();
        assert_eq!(n, 7);
        let mut out = [0u8; 7];
        std::fs::File::from(r.try_clone().unwrap())
            .read_exact(&mut out)
            .unwrap();
        assert_eq!(&out, b"spliced");
        let e = splice(r.as_raw_fd(), a.as_raw_fd(), 64).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_pipe_can_be_grown_to_a_megabyte() {
        let (_r, w) = pipe().unwrap();
        // pipe-max-size is 1 MiB by default; root may exceed it anyway.
        assert_eq!(set_size(&w, 1 << 20), Some(1 << 20));
    }
}
