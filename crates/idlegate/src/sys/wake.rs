//! Waking a thread that waits in [`super::poll`]: a [`Waker`] that any thread may call
//! without ever blocking, and the [`Wakeable`] end the waiting thread watches among its
//! sockets.
//!
//! Contract: [`pair`] makes the two ends, both non-blocking. [`Waker::wake`] makes the
//! [`Wakeable`] readable; when wakes pile up unread (the buffer between them is full) it
//! returns at once, since one pending wake is as good as many. [`Wakeable::drain`] reads every
//! pending wake. On Unix the pair is a Unix socket pair; on Windows, which has no socket pair,
//! it is a TCP connection over 127.0.0.1 made for the purpose (a connection from anyone else
//! that reaches the listener first is dropped; the listener is closed once the pair is made).

use std::io::{self, Read, Write};
use std::time::Duration;

#[cfg(unix)]
type Stream = std::os::unix::net::UnixStream;
#[cfg(windows)]
type Stream = std::net::TcpStream;

/// The writing end: wakes the thread that watches the [`Wakeable`].
#[derive(Debug)]
pub struct Waker(Stream);

/// The reading end, watched by the thread to wake.
#[derive(Debug)]
pub struct Wakeable(Stream);

/// A new pair, both ends non-blocking.
pub fn pair() -> io::Result<(Waker, Wakeable)> {
    let (tx, rx) = connected()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    Ok((Waker(tx), Wakeable(rx)))
}

#[cfg(unix)]
fn connected() -> io::Result<(Stream, Stream)> {
    Stream::pair()
}

/// How many strangers' connections [`connected`] drops before it gives up.
#[cfg(windows)]
const STRANGERS: usize = 16;

#[cfg(windows)]
fn connected() -> io::Result<(Stream, Stream)> {
    use std::net::{Ipv4Addr, TcpListener};
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let tx = Stream::connect(listener.local_addr()?)?;
    let ours = tx.local_addr()?;
    for _ in 0..STRANGERS {
        let (rx, from) = listener.accept()?;
        if from == ours {
            // A wake is one byte, to be seen at once.
            tx.set_nodelay(true)?;
            return Ok((tx, rx));
        }
    }
    Err(io::Error::other(
        "a wake pair over 127.0.0.1: other connections kept reaching its listener first",
    ))
}

impl Waker {
    /// Makes the [`Wakeable`] readable. Never blocks: when the pair's buffer is full, a wake
    /// is pending already.
    pub fn wake(&self) -> io::Result<()> {
        match (&self.0).write(&[1]) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }
}

impl Wakeable {
    /// Reads every wake pending. On Unix a read that does not fill the buffer took them all
    /// (a wake after it is a new one, reported anew); on Windows, where the pair is a TCP
    /// connection whose bytes may still be on their way, it reads until none is there.
    pub fn drain(&self) {
        let mut drained = [0u8; 64];
        let full = if cfg!(unix) { drained.len() } else { 1 };
        while (&self.0).read(&mut drained).is_ok_and(|n| n >= full) {}
    }

    /// Whether a wake is pending, or comes within `timeout`.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        super::poll::wait_readable(self.raw(), timeout)
    }

    /// What [`super::poll::Watch::new`] takes to watch this end.
    pub fn raw(&self) -> super::socket::Raw {
        super::socket::raw(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_is_seen_and_drained_and_a_million_never_block() {
        let (waker, wakeable) = pair().unwrap();
        assert!(!wakeable.wait(Some(Duration::ZERO)).unwrap());
        waker.wake().unwrap();
        assert!(wakeable.wait(Some(Duration::from_secs(5))).unwrap());
        wakeable.drain();
        assert!(!wakeable.wait(Some(Duration::ZERO)).unwrap());
        // The buffer fills long before a million: the wakes past it return at once.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..1_000_000 {
                waker.wake().unwrap();
            }
            let _ = done_tx.send(waker);
        });
        let _waker = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a million wakes went through without blocking");
        assert!(wakeable.wait(Some(Duration::ZERO)).unwrap());
        wakeable.drain();
        assert!(!wakeable.wait(Some(Duration::ZERO)).unwrap());
    }
}
