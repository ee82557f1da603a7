//! A leg: one TCP connection between the two ends of a tunnel, authenticated and encrypted
//! with Noise (the `snow` crate, with `ring`'s AES-GCM; no cryptography of our own).
//!
//! Contract: two modes, each end configured for one.
//! - PSK: the pattern is `Noise_NNpsk0_25519_AESGCM_BLAKE2s` with the pair's [`Key`] as the
//!   pre-shared key. The initiator's first message already depends on the key, so the
//!   responder refuses a peer without it after one message.
//! - Per-peer: the pattern is `Noise_IK_25519_AESGCM_BLAKE2s` (WireGuard's, without its
//!   pre-shared key): the initiator knows the responder's [`PublicKey`] beforehand and sends
//!   its own, encrypted, in its first message, which the responder decrypts and looks up in
//!   its [`PeerList`]; a key not on the list is refused at that first message. The leg then
//!   knows its [`Peer`].
//!
//! In both, the protocol's name and version are the prologue, and fresh ephemeral keys give
//! every leg its own session keys (forward secrecy). A recorded first message replayed later
//! gets an answer, but the replayer cannot derive the keys, so its next message (which must
//! be the encrypted Hello) fails and the leg is closed: nothing happens before a Hello has
//! been decrypted. On the wire every Noise message is preceded by its length (2 bytes,
//! big-endian); the first one has a fixed length per mode ([`Responding::first_message_len`]).
//!
//! The responder's side comes in two steps so that an exit can wait for first messages
//! without a thread each (see [`super::gate`]): [`Leg::answer`] takes a first message already
//! read; [`Leg::respond`] reads it and answers, blocking.
//!
//! After the handshake a leg is non-blocking: [`Leg::fill`] reads what the socket has,
//! [`Leg::next_frame`] opens one message at a time, [`Leg::seal`] seals a frame into the
//! outgoing buffer and [`Leg::flush`] writes what the socket takes. A leg's buffers hold only
//! what is in flight: they start small, grow (by doubling, up to a read of [`READ_CHUNK`] and
//! one whole record) only when the bytes need the room, are reused with no allocation per
//! frame, and [`Leg::trim`] gives the room back once they are empty. The plaintext of a frame
//! is the caller's scratch (its worker's), not the leg's; [`Leg::send`], for the few frames
//! outside a session's data path (Hello, Welcome, Done, Reset, Refuse), encodes into a small
//! buffer of its own.

use super::frame::{Frame, FrameError, MAX_PLAINTEXT};
use super::key::{Key, PrivateKey, PublicKey};
use super::peers::{PeerList, Peers};
use crate::sys::socket::{self, Raw};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

const PSK_PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
const PEER_PATTERN: &str = "Noise_IK_25519_AESGCM_BLAKE2s";
/// The initiator's first message: its ephemeral key and an empty payload's tag (PSK); and in
/// the per-peer mode its static key, encrypted, with its tag.
const PSK_FIRST_LEN: usize = 32 + 16;
const PEER_FIRST_LEN: usize = 32 + (32 + 16) + 16;
const PROLOGUE: &[u8] = b"idlegate tunnel 3";
const MAX_RECORD: usize = 65_535;
/// How much a leg reads per call, at most.
pub const READ_CHUNK: usize = 1 << 18;
/// The receive buffer at its largest: a read's worth after a partial record.
const RX_MAX: usize = READ_CHUNK + 2 + MAX_RECORD;
/// The receive buffer at its smallest (a leg's first read, and after [`Leg::trim`]): a few
/// heartbeats' or a short exchange's records.
pub const RX_MIN: usize = 1 << 11;
/// What [`Leg::trim`] leaves of the send buffer: room for a heartbeat or a short frame.
pub const TX_MIN: usize = 1 << 8;
/// A frame outside the data path, encoded: the longest is a Hello or Welcome.
const CONTROL_MAX: usize = 96;

/// Why a leg failed.
#[derive(Debug, Error)]
pub enum LegError {
    /// The socket's error, said once: its text is the error's, its cause the error's cause.
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the far end closed the leg")]
    Closed,
    #[error("handshake failed (a wrong key, another version of the tunnel, or not an idlegate tunnel): {0}")]
    Handshake(snow::Error),
    #[error("a message failed authentication: {0}")]
    Decrypt(snow::Error),
    /// The frame's fault is said here, and so is not also the cause (said once).
    #[error("a malformed message: {0}")]
    Frame(FrameError),
    #[error("peer key {0} is not on the list of peers")]
    NotListed(PublicKey),
}

impl From<FrameError> for LegError {
    fn from(e: FrameError) -> LegError {
        LegError::Frame(e)
    }
}

/// What an entry authenticates with.
#[derive(Debug, Clone)]
pub enum EntryKeys {
    /// The pair's pre-shared key.
    Psk(Key),
    /// Its own key pair, and the exit's public key.
    Peer { own: PrivateKey, exit: PublicKey },
}

impl From<Key> for EntryKeys {
    fn from(key: Key) -> EntryKeys {
        EntryKeys::Psk(key)
    }
}

/// What an exit authenticates its peers with.
#[derive(Debug, Clone)]
pub enum ExitKeys {
    /// The pair's pre-shared key: every holder is the same peer.
    Psk(Key),
    /// Its own key pair, and the entries it accepts.
    Peers { own: PrivateKey, peers: Arc<Peers> },
}

impl From<Key> for ExitKeys {
    fn from(key: Key) -> ExitKeys {
        ExitKeys::Psk(key)
    }
}

impl ExitKeys {
    /// The credentials of a responder now (with the peer list in force).
    pub fn responding(&self) -> Responding<'_> {
        match self {
            ExitKeys::Psk(key) => Responding::Psk(key),
            ExitKeys::Peers { own, peers } => Responding::Peers {
                own,
                list: peers.list(),
            },
        }
    }
}

/// An initiator's credentials, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum Initiating<'a> {
    Psk(&'a Key),
    Peer {
        own: &'a PrivateKey,
        exit: &'a PublicKey,
    },
}

impl<'a> From<&'a Key> for Initiating<'a> {
    fn from(key: &'a Key) -> Initiating<'a> {
        Initiating::Psk(key)
    }
}

impl<'a> From<&'a EntryKeys> for Initiating<'a> {
    fn from(keys: &'a EntryKeys) -> Initiating<'a> {
        match keys {
            EntryKeys::Psk(key) => Initiating::Psk(key),
            EntryKeys::Peer { own, exit } => Initiating::Peer { own, exit },
        }
    }
}

/// A responder's credentials: borrowed, with the peer list in force.
#[derive(Debug, Clone)]
pub enum Responding<'a> {
    Psk(&'a Key),
    Peers {
        own: &'a PrivateKey,
        list: Arc<PeerList>,
    },
}

impl<'a> From<&'a Key> for Responding<'a> {
    fn from(key: &'a Key) -> Responding<'a> {
        Responding::Psk(key)
    }
}

impl Responding<'_> {
    /// The length of the initiator's first message in this mode.
    pub fn first_message_len(&self) -> usize {
        match self {
            Responding::Psk(_) => PSK_FIRST_LEN,
            Responding::Peers { .. } => PEER_FIRST_LEN,
        }
    }
}

/// Who is at the far end of a leg, as the responder knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A holder of the pair's pre-shared key.
    Psk,
    /// An entry on the peer list.
    Listed { key: PublicKey, name: Arc<str> },
}

impl Peer {
    /// For a log line about a session: the peer's name in the per-peer mode, else nothing.
    pub fn tag(&self) -> String {
        match self {
            Peer::Psk => String::new(),
            Peer::Listed { name, .. } => format!(" (peer {name})"),
        }
    }

    /// The listed key, if any.
    pub fn key(&self) -> Option<PublicKey> {
        match self {
            Peer::Psk => None,
            Peer::Listed { key, .. } => Some(*key),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Psk => f.write_str("the pair's key"),
            Peer::Listed { name, .. } => write!(f, "peer {name}"),
        }
    }
}

/// One authenticated, encrypted connection.
pub struct Leg {
    stream: TcpStream,
    noise: snow::TransportState,
    /// Received bytes not yet opened: `rx[rx_start..rx_end]`. Its length (all initialized)
    /// grows from [`RX_MIN`] to [`RX_MAX`] as reads fill it (`rx_full`).
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    /// The last read filled the buffer: the next one gets twice the room.
    rx_full: bool,
    /// See [`Leg::drained`].
    drained: bool,
    /// Sealed bytes not yet written: `tx[tx_start..tx_end]`. Its length is the most it ever
    /// held (initialized once, so sealing never zero-fills).
    tx: Vec<u8>,
    tx_start: usize,
    tx_end: usize,
    /// Until the leg goes non-blocking: when the handshake, Hello and Welcome must be done.
    deadline: Instant,
    /// Who is at the far end (the initiator knows its responder already: `Peer::Psk`).
    peer: Peer,
    /// When its handshake was done: sessions opened on a leg share its keys, so its age
    /// bounds how long it is reused (`super::pool`).
    handshaken: Instant,
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

fn params(pattern: &str) -> Result<snow::params::NoiseParams, LegError> {
    pattern.parse().map_err(LegError::Handshake)
}

/// The initiator's handshake state for `keys`.
fn initiator(keys: Initiating) -> Result<snow::HandshakeState, LegError> {
    match keys {
        Initiating::Psk(key) => snow::Builder::new(params(PSK_PATTERN)?)
            .prologue(PROLOGUE)
            .and_then(|b| b.psk(0, &key.0))
            .and_then(|b| b.build_initiator()),
        Initiating::Peer { own, exit } => snow::Builder::new(params(PEER_PATTERN)?)
            .prologue(PROLOGUE)
            .and_then(|b| b.local_private_key(&own.secret))
            .and_then(|b| b.remote_public_key(&exit.0))
            .and_then(|b| b.build_initiator()),
    }
    .map_err(LegError::Handshake)
}

/// The longest answer to a first message, with its length: the responder's ephemeral key
/// and an empty payload's tag, in both modes.
const ANSWER_MAX: usize = 2 + 32 + 16;

/// The initiator's handshake without blocking, for an event loop: [`Initiator::step`] writes
/// the first message as the socket takes it and reads the answer as it arrives; once it is
/// whole, [`Initiator::finish`] checks it and gives the leg. The caller bounds it in time.
pub struct Initiator {
    stream: TcpStream,
    hs: snow::HandshakeState,
    /// The first message with its length; `out[sent..]` is still to be written.
    out: [u8; 2 + PEER_FIRST_LEN],
    out_len: usize,
    sent: usize,
    /// The answer with its length, as it arrives: `answer[..got]`.
    answer: [u8; ANSWER_MAX],
    got: usize,
}

impl Initiator {
    /// Starts the handshake on a connected, non-blocking stream: the first message is made
    /// (and written by [`Initiator::step`]).
    pub fn start<'a>(
        stream: TcpStream,
        keys: impl Into<Initiating<'a>>,
    ) -> Result<Initiator, LegError> {
        let mut hs = initiator(keys.into())?;
        let mut out = [0u8; 2 + PEER_FIRST_LEN];
        let n = hs
            .write_message(&[], &mut out[2..])
            .map_err(LegError::Handshake)?;
        // n ≤ PEER_FIRST_LEN: the buffer would have been too small otherwise.
        out[..2].copy_from_slice(&(n as u16).to_be_bytes());
        Ok(Initiator {
            stream,
            hs,
            out,
            out_len: 2 + n,
            sent: 0,
            answer: [0; ANSWER_MAX],
            got: 0,
        })
    }

    /// The socket, to watch it: for writing while the first message is not all written,
    /// then for reading.
    pub fn raw(&self) -> Raw {
        socket::raw(&self.stream)
    }

    /// Whether the first message is still being written.
    pub fn writing(&self) -> bool {
        self.sent < self.out_len
    }

    /// Writes and reads what the socket takes and has; says whether the answer is whole.
    pub fn step(&mut self) -> Result<bool, LegError> {
        while self.writing() {
            match (&self.stream).write(&self.out[self.sent..self.out_len]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            let want = match self.got {
                0 | 1 => 2,
                _ => 2 + u16::from_be_bytes([self.answer[0], self.answer[1]]) as usize,
            };
            if want > ANSWER_MAX {
                return Err(LegError::Handshake(snow::Error::Input));
            }
            if self.got == want {
                return Ok(true);
            }
            match (&self.stream).read(&mut self.answer[self.got..want]) {
                Ok(0) => return Err(LegError::Closed),
                Ok(n) => self.got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The answer (whole: [`Initiator::step`] said so) checked: the leg, non-blocking.
    pub fn finish(mut self) -> Result<Leg, LegError> {
        let mut buf = [0u8; ANSWER_MAX];
        self.hs
            .read_message(&self.answer[2..self.got], &mut buf)
            .map_err(LegError::Handshake)?;
        let noise = self.hs.into_transport_mode().map_err(LegError::Handshake)?;
        socket2::SockRef::from(&self.stream).set_tcp_nodelay(true)?;
        Ok(Leg::new(self.stream, noise, Instant::now(), Peer::Psk))
    }
}

impl Leg {
    /// Runs the initiator's handshake on a connected stream. The handshake and the first
    /// message each way ([`Leg::send_now`], [`Leg::recv_now`]) must be done within `timeout`
    /// in all, however slowly the peer trickles its bytes.
    pub fn initiate<'a>(
        stream: TcpStream,
        keys: impl Into<Initiating<'a>>,
        timeout: Duration,
    ) -> Result<Leg, LegError> {
        let deadline = Instant::now() + timeout;
        let mut hs = initiator(keys.into())?;
        let mut buf = vec![0u8; MAX_RECORD];
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(LegError::Handshake)?;
        write_record(&stream, &buf[..n], deadline)?;
        let msg = read_record(&stream, deadline)?;
        hs.read_message(&msg, &mut buf)
            .map_err(LegError::Handshake)?;
        let noise = hs.into_transport_mode().map_err(LegError::Handshake)?;
        Ok(Leg::new(stream, noise, deadline, Peer::Psk))
    }

    /// Runs the responder's handshake on an accepted stream, within `timeout` in all.
    pub fn respond<'a>(
        stream: TcpStream,
        keys: impl Into<Responding<'a>>,
        timeout: Duration,
    ) -> Result<Leg, LegError> {
        let deadline = Instant::now() + timeout;
        let msg = read_record(&stream, deadline)?;
        Leg::answer(stream, &msg, &keys.into(), deadline)
    }

    /// The responder's handshake, given the initiator's first message (without its length):
    /// checks it (and in the per-peer mode, that the initiator is listed), then writes the
    /// answer by `deadline`, which also bounds the Hello and Welcome that follow. A stream in
    /// non-blocking mode stays so; a fresh connection's send buffer always takes the answer.
    pub fn answer(
        stream: TcpStream,
        first: &[u8],
        keys: &Responding,
        deadline: Instant,
    ) -> Result<Leg, LegError> {
        let mut hs = match keys {
            Responding::Psk(key) => snow::Builder::new(params(PSK_PATTERN)?)
                .prologue(PROLOGUE)
                .and_then(|b| b.psk(0, &key.0))
                .and_then(|b| b.build_responder()),
            Responding::Peers { own, .. } => snow::Builder::new(params(PEER_PATTERN)?)
                .prologue(PROLOGUE)
                .and_then(|b| b.local_private_key(&own.secret))
                .and_then(|b| b.build_responder()),
        }
        .map_err(LegError::Handshake)?;
        if first.len() != keys.first_message_len() {
            // Not even worth the cryptography.
            return Err(LegError::Handshake(snow::Error::Input));
        }
        let mut buf = [0u8; 256];
        hs.read_message(first, &mut buf)
            .map_err(LegError::Handshake)?;
        let peer = match keys {
            Responding::Psk(_) => Peer::Psk,
            Responding::Peers { list, .. } => {
                let key = hs
                    .get_remote_static()
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .map(PublicKey)
                    .ok_or(LegError::Handshake(snow::Error::Input))?;
                match list.name(&key) {
                    Some(name) => Peer::Listed { key, name },
                    None => return Err(LegError::NotListed(key)),
                }
            }
        };
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(LegError::Handshake)?;
        write_record(&stream, &buf[..n], deadline)?;
        let noise = hs.into_transport_mode().map_err(LegError::Handshake)?;
        Ok(Leg::new(stream, noise, deadline, peer))
    }

    /// Who is at the far end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// When its handshake was done.
    pub fn handshaken(&self) -> Instant {
        self.handshaken
    }

    /// A leg made to look `age` older, for the pool's tests.
    #[cfg(test)]
    pub(super) fn aged(mut self, age: Duration) -> Leg {
        self.handshaken = self
            .handshaken
            .checked_sub(age)
            .expect("an instant that old");
        self
    }

    /// The leg's socket, for its options.
    pub fn socket(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(&self.stream)
    }

    fn new(stream: TcpStream, noise: snow::TransportState, deadline: Instant, peer: Peer) -> Leg {
        Leg {
            stream,
            noise,
            // Both allocated by the first bytes that need them.
            rx: Vec::new(),
            rx_start: 0,
            rx_end: 0,
            rx_full: false,
            drained: false,
            tx: Vec::new(),
            tx_start: 0,
            tx_end: 0,
            handshaken: Instant::now(),
            deadline,
            peer,
        }
    }

    /// Seals `frame` into the outgoing buffer, encoding it in `plain` (a scratch buffer, the
    /// caller's: reused, it costs no allocation once it has held a whole frame).
    pub fn seal(&mut self, frame: &Frame, plain: &mut Vec<u8>) -> Result<(), LegError> {
        plain.clear();
        frame.encode(plain);
        debug_assert!(plain.len() <= MAX_PLAINTEXT);
        let at = self.tx_end;
        let end = at + 2 + plain.len() + 16;
        if self.tx.len() < end {
            // Only past the most it ever held: what was initialized once is sealed over.
            self.tx.resize(end, 0);
        }
        let n = self
            .noise
            .write_message(plain, &mut self.tx[at + 2..end])
            .map_err(LegError::Decrypt)?;
        // n ≤ 65,535: the plaintext is bounded by MAX_PLAINTEXT.
        self.tx[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
        self.tx_end = at + 2 + n;
        Ok(())
    }

    /// Seals a frame outside a session's data path (Hello, Welcome, Done, Reset, Refuse: a
    /// few per session), encoded in a small buffer of its own.
    pub fn send(&mut self, frame: &Frame) -> Result<(), LegError> {
        let mut plain = Vec::with_capacity(CONTROL_MAX);
        self.seal(frame, &mut plain)
    }

    /// Bytes sealed and not yet written to the socket.
    pub fn pending(&self) -> usize {
        self.tx_end - self.tx_start
    }

    /// Writes what the socket takes without blocking.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.tx_start < self.tx_end {
            match (&self.stream).write(&self.tx[self.tx_start..self.tx_end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.tx_start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.tx_start == self.tx_end {
            (self.tx_start, self.tx_end) = (0, 0);
        }
        Ok(())
    }

    /// Gives back the room of empty buffers, down to [`RX_MIN`] and [`TX_MIN`]: for a leg
    /// gone idle (its session calls it when it sends a heartbeat), not after every frame,
    /// which would allocate again at the next burst.
    pub fn trim(&mut self) {
        if self.rx_start == self.rx_end && self.rx.len() > RX_MIN {
            (self.rx_start, self.rx_end, self.rx_full) = (0, 0, false);
            self.rx.truncate(RX_MIN);
            self.rx.shrink_to_fit();
        }
        if self.tx_start == self.tx_end && self.tx.len() > TX_MIN {
            (self.tx_start, self.tx_end) = (0, 0);
            self.tx.truncate(TX_MIN);
            self.tx.shrink_to_fit();
        }
    }

    /// The bytes the leg's buffers hold allocated (for tests and the debug view).
    pub fn buffered(&self) -> usize {
        self.rx.capacity() + self.tx.capacity()
    }

    /// Reads what the socket has (one call; again if a signal interrupted it). A read short
    /// of its room took everything the socket had: the leg is then [`Leg::drained`].
    pub fn fill(&mut self) -> io::Result<Filled> {
        self.make_room();
        loop {
            let room = self.rx.len() - self.rx_end;
            match (&self.stream).read(&mut self.rx[self.rx_end..]) {
                Ok(0) => return Ok(Filled::Eof),
                Ok(n) => {
                    self.rx_end += n;
                    self.rx_full = self.rx_end == self.rx.len();
                    self.drained = n < room;
                    return Ok(Filled::Bytes(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.drained = true;
                    return Ok(Filled::WouldBlock);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the last read emptied the socket (it came short: a non-blocking read is not
    /// cut short by a signal, it never sleeps; or would block) and it has not reported since:
    /// bytes after it are a new report (epoll, edge-triggered; WSAPoll's next wait).
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// Its socket reported something to read (its watcher says so).
    pub fn reported(&mut self) {
        self.drained = false;
    }

    /// Makes room for the next read: the whole record begun must fit, and a read that filled
    /// the buffer gets twice the room next time (up to [`RX_MAX`]). What is held moves to the
    /// front of the buffer when the rest of its record would not fit after it. Whole records
    /// are always opened before the next read, so what is held is less than one record and a
    /// read always has room.
    fn make_room(&mut self) {
        if self.rx_start == self.rx_end {
            (self.rx_start, self.rx_end) = (0, 0);
        }
        let held = self.rx_end - self.rx_start;
        let record = match self.rx.get(self.rx_start..self.rx_start + 2) {
            Some(b) if held >= 2 => 2 + u16::from_be_bytes([b[0], b[1]]) as usize,
            _ => 2,
        };
        let mut len = self.rx.len().max(RX_MIN).max(record);
        if self.rx_full {
            self.rx_full = false;
            len = len.max((self.rx.len() * 2).min(RX_MAX));
        }
        let rest = record.saturating_sub(held).max(1);
        if self.rx_start > 0 && (self.rx.len() - self.rx_end < rest || len > self.rx.len()) {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            (self.rx_start, self.rx_end) = (0, held);
        }
        if len > self.rx.len() {
            self.rx.resize(len, 0);
        }
        if self.rx_end == self.rx.len() {
            // Only if a whole record was left unopened: a read must have room all the same.
            self.rx.resize(self.rx.len() + RX_MIN, 0);
        }
    }

    /// Opens the next whole message received, into `plain`; returns its length, or None
    /// until more bytes arrive.
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
        let result = (&self.stream).write_all(&self.tx[self.tx_start..self.tx_end]);
        (self.tx_start, self.tx_end) = (0, 0);
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

    /// Back to blocking, with `timeout` from now for the Hello and Welcome (a leg that waited
    /// for its Hello without blocking, handed on).
    pub fn go_blocking(&mut self, timeout: Duration) -> io::Result<()> {
        self.deadline = Instant::now() + timeout;
        self.stream.set_nonblocking(false)
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
        let _ = (&self.stream).write_all(&self.tx[self.tx_start..self.tx_end]);
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

impl Leg {
    /// Reads the socket itself, past the records (a leg being closed: what arrives is thrown
    /// away).
    pub fn socket_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.stream).read(buf)
    }

    /// Sends the FIN (a leg being closed, once what is sealed is written).
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }

    /// The leg's socket, to watch it with [`crate::sys::poll`].
    pub fn raw(&self) -> Raw {
        socket::raw(&self.stream)
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
pub(super) mod tests {
    use super::*;

    #[test]
    fn a_socket_error_in_a_chain_is_said_once() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let once = format!("opening the tunnel to 192.0.2.1:7000: {refused}");
        let e = anyhow::Error::from(LegError::from(refused))
            .context("opening the tunnel to 192.0.2.1:7000");
        assert_eq!(format!("{e:#}"), once);
    }

    #[test]
    fn a_malformed_message_in_a_chain_says_its_fault_once() {
        let e = anyhow::Error::from(LegError::from(FrameError::Empty)).context("a leg");
        let text = format!("{e:#}");
        let fault = FrameError::Empty.to_string();
        assert_eq!(text.matches(&fault).count(), 1, "{text}");
    }
    use std::net::TcpListener;

    pub(in crate::survive::tunnel) fn pair(
        client_key: &Key,
        server_key: &Key,
    ) -> (Result<Leg, LegError>, Result<Leg, LegError>) {
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
    fn a_leg_holds_no_buffer_until_bytes_need_one_and_gives_the_room_back_once_idle() {
        const FRAMES: usize = 70;
        const EACH: usize = 60_000;
        let key = Key::random().unwrap();
        let (client, server) = pair(&key, &key);
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        assert_eq!(client.buffered(), 0, "a new leg holds no buffer");
        assert_eq!(server.buffered(), 0, "a new leg holds no buffer");
        // 4 MiB across, sealed into a send buffer reused for each frame.
        let sender = std::thread::spawn(move || {
            let mut plain = Vec::new();
            let bytes = vec![9u8; EACH];
            for i in 0..FRAMES {
                let offset = (i * EACH) as u64;
                client
                    .seal(
                        &Frame::Data {
                            offset,
                            bytes: &bytes,
                        },
                        &mut plain,
                    )
                    .unwrap();
                client.stream.set_nonblocking(false).unwrap();
                client.flush().unwrap();
            }
            client
        });
        let mut plain = vec![0u8; MAX_PLAINTEXT];
        for i in 0..FRAMES {
            let n = server.recv_now(&mut plain).unwrap();
            assert!(matches!(
                Frame::decode(&plain[..n]),
                Ok(Frame::Data { offset, bytes }) if offset == (i * EACH) as u64 && bytes.len() == EACH
            ));
        }
        let mut client = sender.join().unwrap();
        assert!(client.buffered() >= EACH, "the send buffer grew to a frame");
        assert!(client.buffered() < 2 * (EACH + 64), "and no further");
        assert!(
            server.buffered() >= EACH,
            "the receive buffer grew to a record"
        );
        client.trim();
        server.trim();
        assert!(client.buffered() <= TX_MIN, "{}", client.buffered());
        assert!(server.buffered() <= RX_MIN, "{}", server.buffered());
    }

    /// A per-peer handshake: `entry` dials an exit that holds `exit` and lists `listed`.
    fn peer_pair(
        entry: &PrivateKey,
        exit_public: PublicKey,
        exit: &PrivateKey,
        listed: &[PublicKey],
    ) -> (Result<Leg, LegError>, Result<Leg, LegError>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let text: String = listed.iter().map(|k| format!("{k}\n")).collect();
        let list = Arc::new(PeerList::parse(&text, "peers").unwrap());
        let exit = exit.clone();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let keys = Responding::Peers { own: &exit, list };
            Leg::respond(s, keys, Duration::from_secs(5))
        });
        let keys = EntryKeys::Peer {
            own: entry.clone(),
            exit: exit_public,
        };
        let client = Leg::initiate(
            TcpStream::connect(addr).unwrap(),
            &keys,
            Duration::from_secs(5),
        );
        (client, server.join().unwrap())
    }

    #[test]
    fn a_listed_peer_gets_a_leg_that_knows_it() {
        let (entry, exit) = (PrivateKey::random().unwrap(), PrivateKey::random().unwrap());
        let (client, server) = peer_pair(&entry, exit.public(), &exit, &[entry.public()]);
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        assert_eq!(server.peer().key(), Some(entry.public()));
        client
            .send_now(&Frame::Ack {
                received: 7,
                limit: 1 << 20,
            })
            .unwrap();
        let mut plain = vec![0u8; MAX_PLAINTEXT];
        let n = server.recv_now(&mut plain).unwrap();
        assert_eq!(
            Frame::decode(&plain[..n]),
            Ok(Frame::Ack {
                received: 7,
                limit: 1 << 20
            })
        );
    }

    #[test]
    fn an_unlisted_peer_is_refused_at_its_first_message() {
        let (entry, exit) = (PrivateKey::random().unwrap(), PrivateKey::random().unwrap());
        let other = PrivateKey::random().unwrap().public();
        let (client, server) = peer_pair(&entry, exit.public(), &exit, &[other]);
        assert!(
            matches!(&server, Err(LegError::NotListed(k)) if *k == entry.public()),
            "{server:?}"
        );
        assert!(client.is_err());
    }

    #[test]
    fn an_entry_with_the_wrong_exit_key_is_refused_at_its_first_message() {
        let (entry, exit) = (PrivateKey::random().unwrap(), PrivateKey::random().unwrap());
        let wrong = PrivateKey::random().unwrap().public();
        let (client, server) = peer_pair(&entry, wrong, &exit, &[entry.public()]);
        assert!(matches!(server, Err(LegError::Handshake(_))), "{server:?}");
        assert!(client.is_err());
    }

    #[test]
    fn a_peer_with_the_wrong_key_is_refused_at_the_first_message() {
        let (client, server) = pair(&Key::random().unwrap(), &Key::random().unwrap());
        assert!(matches!(server, Err(LegError::Handshake(_))), "{server:?}");
        assert!(client.is_err(), "the initiator sees the leg closed");
    }
}
