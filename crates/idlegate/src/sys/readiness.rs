//! Many sockets, and which of them have something to read: the tunnel exit's gate watches a
//! listener and up to a thousand connections with one thread.
//!
//! Contract: [`Sockets`] holds sockets by key; [`Sockets::wait`] waits at most a timeout (a
//! signal ends it early, reporting nothing) and gives the keys of those that became readable
//! (data, a connection to accept, EOF, an error). A caller reads each one it is given until
//! it would block. On Linux it is `mio` (epoll, edge-triggered: a socket is reported when
//! something new arrives); on Windows, where `mio` registers only its own socket types, it is
//! [`super::poll`] (WSAPoll, level-triggered: a socket is reported as long as it is readable),
//! so a caller that reads until it would block sees the same on both. The two differ for a
//! socket left readable (an accept that failed for want of descriptors): Linux reports it
//! again only when something new arrives, Windows at every wait, at once. Such a socket is
//! [`Sockets::remove`]d until the caller tries it again, and [`Sockets::add`]ed back: a socket
//! added while readable is reported at the next wait on both systems.

use super::socket::Raw;
use std::io;
use std::time::Duration;

/// Sockets watched for reading, by key.
pub struct Sockets {
    #[cfg(unix)]
    poll: mio::Poll,
    #[cfg(unix)]
    events: mio::Events,
    #[cfg(windows)]
    watched: Vec<(Raw, usize)>,
    #[cfg(windows)]
    watches: Vec<super::poll::Watch>,
}

#[cfg(unix)]
impl Sockets {
    /// An empty set, with room to report `capacity` sockets per wait.
    pub fn new(capacity: usize) -> io::Result<Sockets> {
        Ok(Sockets {
            poll: mio::Poll::new()?,
            events: mio::Events::with_capacity(capacity),
        })
    }

    /// Watches `socket` (which the caller keeps open until [`Sockets::remove`]) as `key`.
    pub fn add(&mut self, socket: Raw, key: usize) -> io::Result<()> {
        self.poll.registry().register(
            &mut mio::unix::SourceFd(&socket),
            mio::Token(key),
            mio::Interest::READABLE,
        )
    }

    /// Stops watching `socket`.
    pub fn remove(&mut self, socket: Raw, _key: usize) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&socket));
    }

    /// Waits up to `timeout` and puts the keys of the sockets that became readable in
    /// `ready` (emptied first).
    pub fn wait(&mut self, timeout: Option<Duration>, ready: &mut Vec<usize>) -> io::Result<()> {
        ready.clear();
        match self.poll.poll(&mut self.events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            other => other?,
        }
        ready.extend(self.events.iter().map(|e| e.token().0));
        Ok(())
    }
}

#[cfg(windows)]
impl Sockets {
    /// An empty set, with room for `capacity` sockets before it grows.
    pub fn new(capacity: usize) -> io::Result<Sockets> {
        Ok(Sockets {
            watched: Vec::with_capacity(capacity),
            watches: Vec::with_capacity(capacity),
        })
    }

    /// Watches `socket` (which the caller keeps open until [`Sockets::remove`]) as `key`.
    pub fn add(&mut self, socket: Raw, key: usize) -> io::Result<()> {
        self.watched.push((socket, key));
        Ok(())
    }

    /// Stops watching `socket`.
    pub fn remove(&mut self, socket: Raw, key: usize) {
        self.watched.retain(|&w| w != (socket, key));
    }

    /// Waits up to `timeout` and puts the keys of the sockets that are readable in `ready`
    /// (emptied first).
    pub fn wait(&mut self, timeout: Option<Duration>, ready: &mut Vec<usize>) -> io::Result<()> {
        use super::poll::{poll, Watch};
        ready.clear();
        self.watches.clear();
        self.watches.extend(
            self.watched
                .iter()
                .map(|&(socket, _)| Watch::new(socket, true, false)),
        );
        if poll(&mut self.watches, timeout)? == 0 {
            return Ok(());
        }
        ready.extend(
            self.watched
                .iter()
                .zip(&self.watches)
                .filter(|(_, w)| w.ready().any())
                .map(|(&(_, key), _)| key),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::socket::raw;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_socket_with_bytes_or_a_connection_waiting_is_reported_by_its_key() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sockets = Sockets::new(16).unwrap();
        sockets.add(raw(&listener), 7).unwrap();
        let mut ready = Vec::new();
        sockets
            .wait(Some(Duration::from_millis(10)), &mut ready)
            .unwrap();
        assert!(ready.is_empty(), "{ready:?}");
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        sockets
            .wait(Some(Duration::from_secs(5)), &mut ready)
            .unwrap();
        assert_eq!(ready, [7]);
        let (conn, _) = listener.accept().unwrap();
        sockets.add(raw(&conn), 8).unwrap();
        client.write_all(b"x").unwrap();
        sockets
            .wait(Some(Duration::from_secs(5)), &mut ready)
            .unwrap();
        assert_eq!(ready, [8]);
        sockets.remove(raw(&conn), 8);
        client.write_all(b"y").unwrap();
        sockets
            .wait(Some(Duration::from_millis(50)), &mut ready)
            .unwrap();
        assert!(ready.is_empty(), "removed: {ready:?}");
    }

    #[test]
    fn a_readable_socket_removed_is_not_reported_and_added_back_is_reported_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sockets = Sockets::new(16).unwrap();
        sockets.add(raw(&listener), 1).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut ready = Vec::new();
        sockets
            .wait(Some(Duration::from_secs(5)), &mut ready)
            .unwrap();
        assert_eq!(ready, [1]);
        // Not accepted (as when accept fails): out of the set, it is not reported.
        sockets.remove(raw(&listener), 1);
        sockets
            .wait(Some(Duration::from_millis(50)), &mut ready)
            .unwrap();
        assert!(ready.is_empty(), "removed: {ready:?}");
        // Back in the set with the connection still waiting: reported without anything new.
        sockets.add(raw(&listener), 1).unwrap();
        sockets
            .wait(Some(Duration::from_secs(5)), &mut ready)
            .unwrap();
        assert_eq!(ready, [1]);
    }
}
