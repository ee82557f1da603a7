//! Pipes and splice(2): moving bytes between sockets without copying them through user space.
//!
//! Contract: [`pipe`] makes a non-blocking, close-on-exec pipe; [`set_size`] asks the kernel
//! for a larger one (it may refuse: pipe-max-size); [`splice`] moves up to `len` bytes from
//! one descriptor to another without blocking, one of them a pipe, retrying when interrupted.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors this function now owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for a pipe of `bytes` (F_SETPIPE_SZ); returns the size the pipe now has, or `None` if
/// the kernel refused.
pub fn set_size(pipe: &OwnedFd, bytes: usize) -> Option<usize> {
    let want = libc::c_int::try_from(bytes).ok()?;
    // SAFETY: fcntl on a descriptor the caller owns.
    let size = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    usize::try_from(size).ok().filter(|&s| s > 0)
}

/// One non-blocking splice(2) of up to `len` bytes.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
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

#[cfg(test)]
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
