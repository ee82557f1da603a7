//! Many sockets, each watched by a token for reading, writing or both, and which of them
//! reported: what the tunnel's workers wait on.
//!
//! Contract: [`Interests::set`] watches a socket (which the caller keeps open while it is
//! watched) under a token for what is asked, [`Interests::forget`] stops, [`Interests::wait`]
//! gives the tokens of the sockets that reported ([`Seen`]) within a timeout (a signal ends it
//! early, reporting nothing). A socket that is ready when it is set is reported at the next
//! wait, on both systems, and so is one that becomes ready later; one that was reported and not
//! set again is reported again only when something new arrives (Linux) or at every wait while
//! it stays ready (Windows): a caller that reads a socket until it is empty (a read that comes
//! short, or would block; or to the end of the stream once [`Seen::fin`] said the FIN had
//! come) needs to set nothing again and sees the same on both; one that stopped before (a
//! budget) sets it again, which re-arms it. On Linux it is `mio` (epoll, edge-triggered;
//! setting a socket again re-arms it, one `epoll_ctl`, and the set remembers by descriptor
//! what it registered, so a socket new to it costs one too), so a wait costs what reported,
//! not what is watched; a socket closed is forgotten by the system, and
//! [`Interests::forget`] costs nothing ([`Interests::closing`] has the set forget its
//! descriptor too). Linux alone: [`Interests::share`] watches a listener several sets share,
//! EPOLLEXCLUSIVE, so one new connection wakes one of their threads ([`Interests::unshare`]
//! stops). On Windows, where `mio` registers only its own socket
//! types, it is [`super::poll`] (WSAPoll, level-triggered) over every socket set, rebuilt at
//! each wait (a wait costs what is watched there); a socket must be forgotten before it is
//! closed, before the next wait.

use super::socket::Raw;
use std::io;
use std::time::Duration;

/// What a socket reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Something a read will tell: data, an end of stream, an error.
    pub readable: bool,
    /// Room to write (or an error a write will tell).
    pub writable: bool,
    /// Hung up: both directions are closed (Linux), or the peer's FIN arrived (Windows).
    pub hangup: bool,
    /// The peer's FIN had arrived (or the socket failed): a read, once the bytes before it
    /// are taken, ends the stream. On Linux no new report follows for it, so a reader that
    /// stops at a short read reads on when it sees this. Also set on Linux when urgent data
    /// (`MSG_OOB`) is there: a read stops short at its mark with bytes still queued after it,
    /// and no new report follows for those either.
    pub fin: bool,
}

/// Sockets watched by token.
pub struct Interests {
    #[cfg(unix)]
    poll: mio::Poll,
    #[cfg(unix)]
    events: mio::Events,
    /// By descriptor: whether it was last registered here (a descriptor closed and reused
    /// reads as registered: the first `set` then costs the failed re-arm it would cost
    /// anyway). So that a socket new to the set costs one `epoll_ctl`, not a failed re-arm
    /// and an add.
    #[cfg(unix)]
    registered: Vec<bool>,
    #[cfg(windows)]
    watched: std::collections::HashMap<usize, (Raw, bool, bool)>,
    #[cfg(windows)]
    tokens: Vec<usize>,
    #[cfg(windows)]
    watches: Vec<super::poll::Watch>,
}

#[cfg(unix)]
impl Interests {
    /// An empty set, reporting up to `capacity` sockets per wait.
    pub fn new(capacity: usize) -> io::Result<Interests> {
        Ok(Interests {
            poll: mio::Poll::new()?,
            events: mio::Events::with_capacity(capacity),
            registered: Vec::new(),
        })
    }

    /// Watches `socket` as `token` for reading (`read`) and writing (`write`); neither stops
    /// watching it (its errors then go unreported until it is set again). Re-arms it: what is
    /// ready now is reported at the next wait.
    pub fn set(&mut self, token: usize, socket: Raw, read: bool, write: bool) -> io::Result<()> {
        let registry = self.poll.registry();
        let mut source = mio::unix::SourceFd(&socket);
        // Urgent data is watched with the bytes (EPOLLPRI): see `Seen::fin`.
        #[cfg(target_os = "linux")]
        let readable = mio::Interest::READABLE | mio::Interest::PRIORITY;
        #[cfg(not(target_os = "linux"))]
        let readable = mio::Interest::READABLE;
        let interest = match (read, write) {
            (true, true) => readable | mio::Interest::WRITABLE,
            (true, false) => readable,
            (false, true) => mio::Interest::WRITABLE,
            (false, false) => {
                if let Some(known) = usize::try_from(socket)
                    .ok()
                    .and_then(|fd| self.registered.get_mut(fd))
                {
                    *known = false;
                }
                return match registry.deregister(&mut source) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    other => other,
                };
            }
        };
        let token = mio::Token(token);
        let fd = usize::try_from(socket)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a negative descriptor"))?;
        if fd >= self.registered.len() {
            self.registered.resize(fd + 1, false);
        }
        let done = if self.registered[fd] {
            match registry.reregister(&mut source, token, interest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    registry.register(&mut source, token, interest)
                }
                other => other,
            }
        } else {
            match registry.register(&mut source, token, interest) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    registry.reregister(&mut source, token, interest)
                }
                other => other,
            }
        };
        self.registered[fd] = done.is_ok();
        done
    }

    /// Stops watching what `token` watched, as its socket is closed or handed on: nothing to
    /// do on Linux (a closed socket leaves the set; one handed on is set under its new token).
    pub fn forget(&mut self, _token: usize) {}

    /// Watches `listener`, which several sets share (each of a tunnel entry's workers has
    /// one), as `token` for new connections: edge-triggered and EPOLLEXCLUSIVE, so that a
    /// connection wakes one of the sets' waiting threads, not each of them (a set nobody waits
    /// on is told too, so a connection is never left unreported). Never set again: it stays
    /// watched until [`Interests::unshare`]. Outside mio's registry (mio has no
    /// EPOLLEXCLUSIVE); its events come through the same wait.
    pub fn share(&mut self, token: usize, listener: Raw) -> io::Result<()> {
        self.shared(libc::EPOLL_CTL_ADD, token, listener)
    }

    /// Stops watching a listener [`Interests::share`] watches (it stays open elsewhere).
    pub fn unshare(&mut self, listener: Raw) -> io::Result<()> {
        self.shared(libc::EPOLL_CTL_DEL, 0, listener)
    }

    fn shared(&mut self, op: libc::c_int, token: usize, listener: Raw) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let flags = libc::EPOLLIN | libc::EPOLLEXCLUSIVE | libc::EPOLLET;
        let mut event = libc::epoll_event {
            events: flags as u32,
            u64: token as u64,
        };
        // SAFETY: `event` is one valid epoll_event for the call; the descriptors are the
        // set's own epoll instance and a listener the caller holds open.
        let rc = unsafe { libc::epoll_ctl(self.poll.as_raw_fd(), op, listener, &mut event) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The socket watched under `from` is the one `to` watches from now, for the same: it
    /// stays in the set as it is, no system call, and what it reports still comes under
    /// `from` (the caller takes it as `to`'s, until it sets it under `to`).
    pub fn hand_over(&mut self, _from: usize, _to: usize) {}

    /// `socket`, watched until now, is about to be closed without being set to nothing: the
    /// system drops it from the set as it closes, and the set forgets it too, so that a new
    /// socket given its descriptor costs one `epoll_ctl` (an add), not a failed re-arm
    /// first. Costs no system call.
    pub fn closing(&mut self, socket: Raw) {
        if let Some(known) = usize::try_from(socket)
            .ok()
            .and_then(|fd| self.registered.get_mut(fd))
        {
            *known = false;
        }
    }

    /// Waits up to `timeout` and puts the tokens of the sockets that reported, and what, in
    /// `out` (emptied first).
    pub fn wait(&mut self, timeout: Duration, out: &mut Vec<(usize, Seen)>) -> io::Result<()> {
        out.clear();
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            other => other?,
        }
        out.extend(self.events.iter().map(|e| {
            (
                e.token().0,
                Seen {
                    readable: e.is_readable() || e.is_read_closed() || e.is_error(),
                    writable: e.is_writable() || e.is_write_closed(),
                    hangup: e.is_read_closed() && e.is_write_closed(),
                    fin: e.is_read_closed() || e.is_error() || e.is_priority(),
                },
            )
        }));
        Ok(())
    }
}

#[cfg(windows)]
impl Interests {
    /// An empty set, with room for `capacity` sockets before it grows.
    pub fn new(capacity: usize) -> io::Result<Interests> {
        Ok(Interests {
            watched: std::collections::HashMap::with_capacity(capacity),
            tokens: Vec::with_capacity(capacity),
            watches: Vec::with_capacity(capacity),
        })
    }

    /// Watches `socket` as `token` for reading (`read`) and writing (`write`); neither stops
    /// watching it.
    pub fn set(&mut self, token: usize, socket: Raw, read: bool, write: bool) -> io::Result<()> {
        if read || write {
            self.watched.insert(token, (socket, read, write));
        } else {
            self.watched.remove(&token);
        }
        Ok(())
    }

    /// Stops watching what `token` watched (before its socket is closed).
    pub fn forget(&mut self, token: usize) {
        self.watched.remove(&token);
    }

    /// The socket watched under `from` is watched under `to` from now, for the same.
    pub fn hand_over(&mut self, from: usize, to: usize) {
        if let Some(watched) = self.watched.remove(&from) {
            self.watched.insert(to, watched);
        }
    }

    /// `socket` is about to be closed: its token is forgotten by [`Interests::forget`], which
    /// every caller calls too (nothing else to do here).
    pub fn closing(&mut self, _socket: Raw) {}

    /// Waits up to `timeout` and puts the tokens of the sockets that reported, and what, in
    /// `out` (emptied first).
    pub fn wait(&mut self, timeout: Duration, out: &mut Vec<(usize, Seen)>) -> io::Result<()> {
        use super::poll::{poll, Watch};
        out.clear();
        self.watches.clear();
        self.tokens.clear();
        for (&token, &(socket, read, write)) in &self.watched {
            self.tokens.push(token);
            self.watches.push(Watch::new(socket, read, write));
        }
        if poll(&mut self.watches, Some(timeout))? == 0 {
            return Ok(());
        }
        for (&token, watch) in self.tokens.iter().zip(&self.watches) {
            let r = watch.ready();
            if r.any() {
                out.push((
                    token,
                    Seen {
                        readable: r.beyond_writable(),
                        writable: r.writable() || r.error(),
                        hangup: r.hangup(),
                        fin: r.hangup() || r.error(),
                    },
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::socket::raw;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn a_socket_left_readable_is_reported_again_once_set_again() {
        let (mut a, mut b) = pair();
        let mut set = Interests::new(16).unwrap();
        let mut out = Vec::new();
        set.set(7, raw(&b), true, false).unwrap();
        set.wait(Duration::from_millis(10), &mut out).unwrap();
        assert!(out.is_empty(), "{out:?}");
        a.write_all(b"0123456789").unwrap();
        set.wait(Duration::from_secs(5), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 7);
        assert!(out[0].1.readable);
        // Read a part only: set again, it is reported again at once.
        let mut buf = [0u8; 4];
        let _ = b.read(&mut buf).unwrap();
        set.set(7, raw(&b), true, false).unwrap();
        set.wait(Duration::from_secs(5), &mut out).unwrap();
        assert_eq!(out.iter().map(|e| e.0).collect::<Vec<_>>(), [7]);
        // Under another token, and for writing too.
        set.set(9, raw(&b), true, true).unwrap();
        set.wait(Duration::from_secs(5), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 9);
        assert!(out[0].1.writable);
        // Watching nothing: not reported.
        set.set(9, raw(&b), false, false).unwrap();
        set.forget(9);
        set.wait(Duration::from_millis(10), &mut out).unwrap();
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_socket_read_until_a_short_read_reports_what_comes_next_without_being_set_again() {
        // What the tunnel's sessions rely on: no re-arm after a report they read empty.
        let (mut a, mut b) = pair();
        let mut set = Interests::new(16).unwrap();
        let mut out = Vec::new();
        set.set(7, raw(&b), true, false).unwrap();
        a.write_all(b"first").unwrap();
        set.wait(Duration::from_secs(5), &mut out).unwrap();
        assert_eq!(out.iter().map(|e| e.0).collect::<Vec<_>>(), [7]);
        let mut buf = [0u8; 64];
        assert_eq!(b.read(&mut buf).unwrap(), 5, "short: the socket is empty");
        a.write_all(b"next").unwrap();
        set.wait(Duration::from_secs(5), &mut out).unwrap();
        assert_eq!(out.iter().map(|e| e.0).collect::<Vec<_>>(), [7]);
        assert_eq!(b.read(&mut buf).unwrap(), 4);
        // The FIN after it: reported as such.
        a.shutdown(std::net::Shutdown::Write).unwrap();
        set.wait(Duration::from_secs(5), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].1.fin);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn urgent_data_says_read_on_for_a_read_stops_short_at_its_mark_with_bytes_after_it() {
        // TCP urgent data (RFC 9293, 3.8.5; Linux keeps the urgent byte out of the stream):
        // a read stops at the urgent mark, short, while bytes sent after it are queued.
        let (a, mut b) = pair();
        let mut set = Interests::new(16).unwrap();
        let mut out = Vec::new();
        set.set(7, raw(&b), true, false).unwrap();
        let a = socket2::SockRef::from(&a);
        assert_eq!(a.send(b"abc").unwrap(), 3);
        assert_eq!(a.send_out_of_band(b"X").unwrap(), 1);
        assert_eq!(a.send(b"def").unwrap(), 3);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut read_on = false;
        while !read_on && std::time::Instant::now() < deadline {
            set.wait(Duration::from_millis(100), &mut out).unwrap();
            read_on = out.iter().any(|(_, s)| s.fin);
        }
        assert!(read_on, "urgent data not reported as a reason to read on");
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(b.read(&mut buf).unwrap(), 3, "short, at the mark");
        assert_eq!(b.read(&mut buf).unwrap(), 3, "and bytes after it");
        assert_eq!(&buf[..3], b"def");
    }

    #[test]
    fn a_socket_handed_over_keeps_reporting_for_its_new_holder() {
        let (mut a, b) = pair();
        let mut set = Interests::new(16).unwrap();
        let mut out = Vec::new();
        set.set(3, raw(&b), true, false).unwrap();
        set.hand_over(3, 5);
        a.write_all(b"x").unwrap();
        set.wait(Duration::from_secs(5), &mut out).unwrap();
        // Under the old token on Linux (no system call), the new one on Windows.
        let expected = if cfg!(unix) { 3 } else { 5 };
        assert_eq!(out.iter().map(|e| e.0).collect::<Vec<_>>(), [expected]);
    }

    #[cfg(unix)]
    #[test]
    fn a_socket_closed_and_its_descriptor_reused_by_a_new_one_is_watched_anew() {
        let mut set = Interests::new(16).unwrap();
        let mut out = Vec::new();
        let (_a, b) = pair();
        let fd = raw(&b);
        set.set(3, fd, true, false).unwrap();
        // A new socket takes the descriptor of the one watched (closed by `dup2` without being
        // set to nothing: the set still counts it as registered).
        let (mut c, d) = pair();
        // SAFETY: both descriptors are open and ours; `fd` is replaced atomically by a copy of
        // `d`'s, and `b`, which owned it, is forgotten rather than closed.
        assert_eq!(unsafe { libc::dup2(raw(&d), fd) }, fd);
        std::mem::forget(b);
        drop(d);
        set.set(4, fd, true, false).unwrap();
        c.write_all(b"x").unwrap();
        set.wait(Duration::from_secs(5), &mut out).unwrap();
        assert_eq!(out.iter().map(|e| e.0).collect::<Vec<_>>(), [4]);
        // SAFETY: `fd` is open (the copy of `d`'s) and owned by nothing else.
        unsafe { libc::close(fd) };
    }
}
