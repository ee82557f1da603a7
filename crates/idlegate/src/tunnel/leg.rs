//! A leg: one TCP connection between the two ends of a tunnel, authenticated and encrypted
//! with Noise (the `snow` crate, with `ring`'s AES-GCM; no cryptography of our own).
//!
//! Contract: the pattern is `Noise_NNpsk0_25519_AESGCM_BLAKE2s` with the pair's [`Key`] as
//! the pre-shared key and the protocol's name and version as the prologue. The initiator's
//! first message already depends on the key, so the responder refuses a peer without it after
//! one message; fresh ephemeral keys give every leg its own session keys (forward secrecy). A
//! recorded first message replayed later gets an answer, but the replayer cannot derive the
//! keys, so its next message (which must be the encrypted Hello) fails and the leg is closed:
//! nothing happens before a Hello has been decrypted. On the wire every Noise message is
//! preceded by its length (2 bytes, big-endian).
//!
//! After the handshake a leg is non-blocking: [`Leg::fill`] reads what the socket has,
//! [`Leg::next_frame`] opens one message at a time, [`Leg::send`] seals a frame into the
//! outgoing buffer and [`Leg::flush`] writes what the socket takes. Buffers are reused: no
//! allocation per frame.

use super::frame::{Frame, FrameError, MAX_PLAINTEXT};
use super::key::Key;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use thiserror::Error;

const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
const PROLOGUE: &[u8] = b"idlegate tunnel 2";
const MAX_RECORD: usize = 65_535;
/// How much a leg reads per call.
const READ_CHUNK: usize = 1 << 18;

/// Why a leg failed.
#[derive(Debug, Error)]
pub enum LegError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the far end closed the leg")]
    Closed,
    #[error("handshake failed (a wrong key, another version of the tunnel, or not an idlegate tunnel): {0}")]
    Handshake(snow::Error),
    #[error("a message failed authentication: {0}")]
    Decrypt(snow::Error),
    #[error("a malformed message: {0}")]
    Frame(#[from] FrameError),
}

/// One authenticated, encrypted connection.
pub struct Leg {
    stream: TcpStream,
    noise: snow::TransportState,
    /// Received bytes not yet opened: `rx[rx_start..rx_end]`.
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    /// Sealed bytes not yet written: `tx[tx_start..]`.
    tx: Vec<u8>,
    tx_start: usize,
    /// A frame's plaintext while it is being sealed.
    plain: Vec<u8>,
    /// Until the leg goes non-blocking: when the handshake, Hello and Welcome must be done.
    deadline: Instant,
}

impl std::fmt::Debug for Leg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Leg({:?})", self.stream.peer_addr().ok())
    }
}

/// How a [`Leg::fill`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    Bytes(usize),
    WouldBlock,
    Eof,
}

fn builder(key: &Key) -> Result<snow::Builder<'_>, LegError> {
    let params = PATTERN.parse().map_err(LegError::Handshake)?;
    snow::Builder::new(params)
        .prologue(PROLOGUE)
        .and_then(|b| b.psk(0, &key.0))
        .map_err(LegError::Handshake)
}

impl Leg {
    /// Runs the initiator's handshake on a connected stream. The handshake and the first
    /// message each way ([`Leg::send_now`], [`Leg::recv_now`]) must be done within `timeout`
    /// in all, however slowly the peer trickles its bytes.
    pub fn initiate(stream: TcpStream, key: &Key, timeout: Duration) -> Result<Leg, LegError> {
        let deadline = Instant::now() + timeout;
        let mut hs = builder(key)?
            .build_initiator()
            .map_err(LegError::Handshake)?;
        let mut buf = vec![0u8; MAX_RECORD];
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(LegError::Handshake)?;
        write_record(&stream, &buf[..n], deadline)?;
        let msg = read_record(&stream, deadline)?;
        hs.read_message(&msg, &mut buf)
            .map_err(LegError::Handshake)?;
        let noise = hs.into_transport_mode().map_err(LegError::Handshake)?;
        Ok(Leg::new(stream, noise, deadline))
    }

    /// Runs the responder's handshake on an accepted stream, within `timeout` in all.
    pub fn respond(stream: TcpStream, key: &Key, timeout: Duration) -> Result<Leg, LegError> {
        let deadline = Instant::now() + timeout;
        let mut hs = builder(key)?
            .build_responder()
            .map_err(LegError::Handshake)?;
        let mut buf = vec![0u8; MAX_RECORD];
        let msg = read_record(&stream, deadline)?;
        hs.read_message(&msg, &mut buf)
            .map_err(LegError::Handshake)?;
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(LegError::Handshake)?;
        write_record(&stream, &buf[..n], deadline)?;
        let noise = hs.into_transport_mode().map_err(LegError::Handshake)?;
        Ok(Leg::new(stream, noise, deadline))
    }

    fn new(stream: TcpStream, noise: snow::TransportState, deadline: Instant) -> Leg {
        Leg {
            stream,
            noise,
            // Zeroed by the allocator's fresh pages: an idle leg touches little of it.
            rx: vec![0; READ_CHUNK + 2 + MAX_RECORD].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(READ_CHUNK),
            tx_start: 0,
            plain: Vec::with_capacity(MAX_PLAINTEXT),
            deadline,
        }
    }

    /// Seals `frame` into the outgoing buffer.
    pub fn send(&mut self, frame: &Frame) -> Result<(), LegError> {
        self.plain.clear();
        frame.encode(&mut self.plain);
        debug_assert!(self.plain.len() <= MAX_PLAINTEXT);
        let at = self.tx.len();
        self.tx.resize(at + 2 + self.plain.len() + 16, 0);
        let n = self
            .noise
            .write_message(&self.plain, &mut self.tx[at + 2..])
            .map_err(LegError::Decrypt)?;
        // n ≤ 65,535: the plaintext is bounded by MAX_PLAINTEXT.
        self.tx[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
        self.tx.truncate(at + 2 + n);
        Ok(())
    }

    /// Bytes sealed and not yet written to the socket.
    pub fn pending(&self) -> usize {
        self.tx.len() - self.tx_start
    }

    /// Writes what the socket takes without blocking.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.tx_start < self.tx.len() {
            match (&self.stream).write(&self.tx[self.tx_start..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.tx_start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.tx_start == self.tx.len() {
            self.tx.clear();
            self.tx_start = 0;
        }
        Ok(())
    }

    /// Reads what the socket has (one call).
    pub fn fill(&mut self) -> io::Result<Filled> {
        self.make_room();
        let result = (&self.stream).read(&mut self.rx[self.rx_end..]);
        match result {
            Ok(0) => Ok(Filled::Eof),
            Ok(n) => {
                self.rx_end += n;
                Ok(Filled::Bytes(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Filled::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Filled::WouldBlock),
            Err(e) => Err(e),
        }
    }

    /// Opens the next whole message received, into `plain`; returns its length, or None
    /// until more bytes arrive.
    /// Moves what is held to the front of the buffer when a whole record might not fit after
    /// it. Whole records are always opened before the next read, so what is held is less than
    /// one record and a read always has room.
    fn make_room(&mut self) {
        if self.rx_start == self.rx_end {
            (self.rx_start, self.rx_end) = (0, 0);
        } else if self.rx.len() - self.rx_end < 2 + MAX_RECORD {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            (self.rx_start, self.rx_end) = (0, self.rx_end - self.rx_start);
        }
    }

    pub fn next_frame(&mut self, plain: &mut [u8]) -> Result<Option<usize>, LegError> {
        let held = &self.rx[self.rx_start..self.rx_end];
        let Some(len) = held
            .get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        else {
            return Ok(None);
        };
        let Some(record) = held.get(2..2 + len) else {
            return Ok(None);
        };
        let n = self
            .noise
            .read_message(record, plain)
            .map_err(LegError::Decrypt)?;
        self.rx_start += 2 + len;
        Ok(Some(n))
    }

    /// Blocking: sends one frame now (during Hello and Welcome), by the handshake's deadline.
    pub fn send_now(&mut self, frame: &Frame) -> Result<(), LegError> {
        self.send(frame)?;
        self.stream.set_write_timeout(Some(left(self.deadline)?))?;
        let result = (&self.stream).write_all(&self.tx[self.tx_start..]);
        self.tx.clear();
        self.tx_start = 0;
        Ok(result?)
    }

    /// Blocking: waits (up to the handshake's deadline) for one message, into `plain`.
    pub fn recv_now(&mut self, plain: &mut [u8]) -> Result<usize, LegError> {
        loop {
            if let Some(n) = self.next_frame(plain)? {
                return Ok(n);
            }
            self.make_room();
            self.stream.set_read_timeout(Some(left(self.deadline)?))?;
            match (&self.stream).read(&mut self.rx[self.rx_end..]) {
                Ok(0) => return Err(LegError::Closed),
                Ok(n) => self.rx_end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// From here on the leg does not block. (No TCP_USER_TIMEOUT: the heartbeats find a
    /// dead leg, and a zero window held by a slow application must not abort it.)
    pub fn go_nonblocking(&self) -> io::Result<()> {
        socket2::SockRef::from(&self.stream).set_tcp_nodelay(true)?;
        self.stream.set_read_timeout(None)?;
        self.stream.set_write_timeout(None)?;
        self.stream.set_nonblocking(true)
    }

    /// Ends the leg in order, waiting at most `timeout`: what is sealed is written, then a
    /// FIN, then whatever the peer still sends is read until its FIN, so that closing never
    /// turns into a RST that would discard the last frames on either side.
    pub fn close_in_order(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let _ = self.stream.set_nonblocking(false);
        let _ = self.stream.set_write_timeout(Some(timeout));
        let _ = (&self.stream).write_all(&self.tx[self.tx_start..]);
        let _ = self.stream.shutdown(Shutdown::Write);
        let mut sink = [0u8; 4096];
        while let Ok(wait) = left(deadline) {
            let _ = self.stream.set_read_timeout(Some(wait));
            match (&self.stream).read(&mut sink) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

impl AsRawFd for Leg {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// The time left until `deadline`, or a timeout error once it has passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

fn write_record(mut stream: &TcpStream, msg: &[u8], deadline: Instant) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("record too long"))?;
    let mut record = Vec::with_capacity(2 + msg.len());
    record.extend_from_slice(&len.to_be_bytes());
    record.extend_from_slice(msg);
    stream.set_write_timeout(Some(left(deadline)?))?;
    stream.write_all(&record)
}

fn read_record(stream: &TcpStream, deadline: Instant) -> Result<Vec<u8>, LegError> {
    let mut len = [0u8; 2];
    read_exact_by(stream, &mut len, deadline)?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    read_exact_by(stream, &mut msg, deadline)?;
    Ok(msg)
}

/// read_exact, but the whole of it by `deadline`: a peer that trickles a byte at a time
/// cannot hold the handshake open.
fn read_exact_by(
    mut stream: &TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), LegError> {
    let mut at = 0;
    while at < buf.len() {
        stream.set_read_timeout(Some(left(deadline)?))?;
        match stream.read(&mut buf[at..]) {
            Ok(0) => return Err(LegError::Closed),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(client_key: &Key, server_key: &Key) -> (Result<Leg, LegError>, Result<Leg, LegError>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server_key = server_key.clone();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            Leg::respond(s, &server_key, Duration::from_secs(5))
        });
        let client = Leg::initiate(
            TcpStream::connect(addr).unwrap(),
            client_key,
            Duration::from_secs(5),
        );
        (client, server.join().unwrap())
    }

    #[test]
    fn frames_cross_a_leg_sealed_and_in_order() {
        let key = Key::random().unwrap();
        let (client, server) = pair(&key, &key);
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        client
            .send_now(&Frame::Ack {
                received: 5,
                limit: 9,
            })
            .unwrap();
        client
            .send_now(&Frame::Data {
                offset: 0,
                bytes: &[1; 60_000],
            })
            .unwrap();
        let mut plain = vec![0u8; MAX_PLAINTEXT];
        let n = server.recv_now(&mut plain).unwrap();
        assert_eq!(
            Frame::decode(&plain[..n]),
            Ok(Frame::Ack {
                received: 5,
                limit: 9
            })
        );
        let n = server.recv_now(&mut plain).unwrap();
        assert!(
            matches!(Frame::decode(&plain[..n]), Ok(Frame::Data { offset: 0, bytes }) if bytes.len() == 60_000)
        );
    }

    #[test]
    fn a_peer_with_the_wrong_key_is_refused_at_the_first_message() {
        let (client, server) = pair(&Key::random().unwrap(), &Key::random().unwrap());
        assert!(matches!(server, Err(LegError::Handshake(_))), "{server:?}");
        assert!(client.is_err(), "the initiator sees the leg closed");
    }
}
