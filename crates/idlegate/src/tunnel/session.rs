//! A session: one application connection carried by the tunnel, on whichever leg is alive.
//!
//! Contract: [`Session::run_leg`] moves bytes between the application's socket and one leg
//! until the session is over or the leg is lost, and says which ([`LegEnd`]). The session
//! outlives its legs: its [`Outbox`] keeps what the peer has not acknowledged (bounded by the
//! replay buffer: a full outbox stops reading the application), its [`Inbox`] knows where the
//! peer must resume, and [`Session::resume`] rewinds the outbox on a new leg. Heartbeats (Ack
//! frames) leave whenever the leg has been quiet for a heartbeat interval; a leg on which
//! nothing arrives for three intervals (while the session is reading it) is lost. Memory per
//! session is bounded: the outbox, one leg's buffers, and at most [`APP_HIGH`] bytes waiting
//! for a slow application.

use super::frame::{Frame, SessionId, Token, MAX_DATA, MAX_PLAINTEXT};
use super::leg::{Filled, Leg, LegError};
use super::stream::{Inbox, Next, Outbox, StreamError};
use crate::relay::Stats;
use socket2::SockRef;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sealed bytes a leg may hold before the session stops taking from the outbox.
const TX_HIGH: usize = 1 << 18;
/// Bytes from the peer waiting for a slow application before the session stops reading the leg.
pub const APP_HIGH: usize = 1 << 20;
/// How many heartbeat intervals of silence lose a leg.
pub const MISSED_HEARTBEATS: u32 = 3;
/// How long a finished session may take to hand its last bytes to a slow application.
const LAST_WRITE: Duration = Duration::from_secs(120);

/// Why [`Session::run_leg`] returned.
#[derive(Debug)]
pub enum LegEnd {
    /// Both applications finished writing and every byte was acknowledged.
    Done,
    /// The application here reset its connection; the peer was told.
    AppReset,
    /// The peer's application reset its connection; the one here was reset too.
    PeerReset,
    /// The leg is gone: the session waits for a new one.
    Lost(Lost),
    /// A new leg arrived for this session (the responder's side).
    Replaced,
    /// The peer broke the protocol: the session cannot go on.
    Violation(String),
}

/// How a leg was lost.
#[derive(Debug)]
pub enum Lost {
    /// Nothing arrived for [`MISSED_HEARTBEATS`] heartbeat intervals.
    HeartbeatMissed(Duration),
    /// The far end (or the path) closed the leg.
    Closed,
    /// A socket error: a reset, most likely.
    Error(io::Error),
    /// A record failed authentication: bytes injected or corrupted on the path. Only the leg
    /// is lost; the session resumes on a new one.
    Unauthenticated,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::HeartbeatMissed(silent) => write!(f, "heartbeat missed: silent for {silent:.1?}"),
            Lost::Closed => f.write_str("closed by the far end or the path"),
            Lost::Error(e) => write!(f, "{e}"),
            Lost::Unauthenticated => f.write_str("a record failed authentication"),
        }
    }
}

/// Which end of the tunnel a session is at: which way its application's bytes count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Next to the client application (`--listen … --tunnel …`).
    Entry,
    /// Next to the server (`--tunnel-listen … --connect …`).
    Exit,
}

/// One application connection and its stream state.
pub struct Session {
    pub id: SessionId,
    pub token: Token,
    app: TcpStream,
    side: Side,
    outbox: Outbox,
    inbox: Inbox,
    /// Bytes from the peer not yet written to the application: `to_app[to_app_start..]`.
    to_app: Vec<u8>,
    to_app_start: usize,
    app_eof: bool,
    app_shut: bool,
    /// The last `received` told to the peer.
    acked_to_peer: u64,
    heartbeat: Duration,
    read_buf: Vec<u8>,
    plain: Vec<u8>,
    stats: Arc<Stats>,
    /// Ended in order; any other end resets the application when the session is dropped. The
    /// application's socket comes armed to reset (`Keepalive::apply_relayed`), so a killed
    /// process resets it too.
    done: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.done {
            self.reset_app();
        }
    }
}

impl Session {
    pub fn new(
        id: SessionId,
        token: Token,
        app: TcpStream,
        side: Side,
        replay_buffer: usize,
        heartbeat: Duration,
        stats: Arc<Stats>,
    ) -> io::Result<Session> {
        app.set_nonblocking(true)?;
        Ok(Session {
            id,
            token,
            app,
            side,
            outbox: Outbox::new(replay_buffer),
            inbox: Inbox::default(),
            to_app: Vec::new(),
            to_app_start: 0,
            app_eof: false,
            app_shut: false,
            acked_to_peer: 0,
            heartbeat,
            read_buf: vec![0; MAX_DATA],
            plain: vec![0; MAX_PLAINTEXT],
            stats,
            done: false,
        })
    }

    /// Where the peer must resume sending: every byte before it has arrived.
    pub fn received(&self) -> u64 {
        self.inbox.received()
    }

    /// On a new leg the peer has everything before `peer_received`: send again from there.
    /// Returns how many bytes will be sent a second time.
    pub fn resume(&mut self, peer_received: u64) -> Result<u64, StreamError> {
        let replayed = self.outbox.sent().saturating_sub(peer_received);
        self.outbox.resume_from(peer_received)?;
        self.acked_to_peer = 0;
        self.stats
            .replayed_bytes
            .fetch_add(replayed, Ordering::Relaxed);
        Ok(replayed)
    }

    /// Ends the application's connection with a RST, sent when the session (and so the
    /// socket) is dropped; no FIN before it, which would claim the stream ended whole.
    pub fn reset_app(&self) {
        let _ = SockRef::from(&self.app).set_linger(Some(Duration::ZERO));
        let _ = self.app.shutdown(Shutdown::Read);
    }

    /// Both streams ended whole: the application's socket may now close with a FIN (until
    /// here it was armed to reset, so that an end killed mid-stream never looks like one
    /// that finished).
    fn end_in_order(&mut self) -> LegEnd {
        self.done = true;
        crate::keepalive::ended_in_order(&self.app);
        LegEnd::Done
    }

    /// Runs the session on `leg` until it ends or the leg is lost. `wake` (the responder's)
    /// becomes readable when a newer leg arrives for this session.
    pub fn run_leg(&mut self, leg: &mut Leg, wake: Option<RawFd>) -> LegEnd {
        let mut last_rx = Instant::now();
        let mut last_tx = Instant::now();
        // Frames that arrived with the Welcome or Hello are already in the leg's buffer.
        if let Some(end) = self.open_frames(leg) {
            return end;
        }
        loop {
            if let Err(e) = self.fill_leg(leg, &mut last_tx) {
                return LegEnd::Violation(e.to_string());
            }
            if let Err(e) = leg.flush() {
                return self.lost(Lost::Error(e));
            }
            if let Err(end) = self.write_app(leg) {
                return end;
            }
            if self.is_done(leg) {
                return self.end_in_order();
            }
            let reading_leg = self.pending_to_app() < APP_HIGH;
            let now = Instant::now();
            if !reading_leg {
                last_rx = now;
            }
            let dead_at = last_rx + self.heartbeat * MISSED_HEARTBEATS;
            if now >= dead_at {
                self.stats.heartbeat_misses.fetch_add(1, Ordering::Relaxed);
                return LegEnd::Lost(Lost::HeartbeatMissed(now - last_rx));
            }
            // A heartbeat waits behind unsent bytes: they will tell the peer as much.
            let beat_at = if leg.pending() == 0 {
                last_tx + self.heartbeat
            } else {
                dead_at
            };
            let timeout = dead_at.min(beat_at).saturating_duration_since(now);
            let mut fds = [
                pollfd(
                    self.app.as_raw_fd(),
                    (
                        self.outbox.room() > 0 && !self.app_eof,
                        self.pending_to_app() > 0,
                    ),
                ),
                pollfd(leg.as_raw_fd(), (reading_leg, leg.pending() > 0)),
                pollfd(wake.unwrap_or(-1), (true, false)),
            ];
            if let Err(e) = poll(&mut fds, timeout) {
                return self.lost(Lost::Error(e));
            }
            if fds[2].revents != 0 {
                return LegEnd::Replaced;
            }
            if fds[0].revents != 0 {
                if let Err(end) = self.read_app(leg) {
                    return end;
                }
            }
            if fds[1].revents != 0 && reading_leg {
                last_rx = Instant::now();
                if let Some(end) = self.read_leg(leg) {
                    return end;
                }
            }
        }
    }

    fn pending_to_app(&self) -> usize {
        self.to_app.len() - self.to_app_start
    }

    /// Seals what the outbox has to send (up to the leg's high mark), then an acknowledgement
    /// if the peer's data has not been acknowledged, or a heartbeat if the leg is quiet.
    fn fill_leg(&mut self, leg: &mut Leg, last_tx: &mut Instant) -> Result<(), LegError> {
        let before = leg.pending();
        while leg.pending() < TX_HIGH {
            match self.outbox.next(MAX_DATA) {
                Some(Next::Data { offset, bytes }) => {
                    leg.send(&Frame::Data {
                        offset,
                        bytes: bytes.0,
                    })?;
                    if !bytes.1.is_empty() {
                        leg.send(&Frame::Data {
                            offset: offset + bytes.0.len() as u64,
                            bytes: bytes.1,
                        })?;
                    }
                }
                Some(Next::Fin { offset }) => leg.send(&Frame::Fin { offset })?,
                None => break,
            }
        }
        let received = self.inbox.received();
        let quiet = last_tx.elapsed() >= self.heartbeat && leg.pending() == 0;
        if received != self.acked_to_peer || quiet {
            leg.send(&Frame::Ack { received })?;
            self.acked_to_peer = received;
        }
        if leg.pending() > before {
            *last_tx = Instant::now();
        }
        Ok(())
    }

    /// Writes what the peer sent to the application, then its FIN once all is written.
    fn write_app(&mut self, leg: &mut Leg) -> Result<(), LegEnd> {
        while self.pending_to_app() > 0 {
            match (&self.app).write(&self.to_app[self.to_app_start..]) {
                Ok(n) => self.to_app_start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(self.app_was_reset(leg)),
            }
        }
        if self.pending_to_app() == 0 {
            self.to_app.clear();
            self.to_app_start = 0;
            if self.inbox.finished() && !self.app_shut {
                self.app_shut = true;
                let _ = self.app.shutdown(Shutdown::Write);
            }
        }
        Ok(())
    }

    fn read_app(&mut self, leg: &mut Leg) -> Result<(), LegEnd> {
        let room = self.outbox.room().min(self.read_buf.len());
        if room == 0 || self.app_eof {
            return Ok(());
        }
        match (&self.app).read(&mut self.read_buf[..room]) {
            Ok(0) => {
                self.app_eof = true;
                self.outbox.finish();
            }
            Ok(n) => {
                self.outbox.push(&self.read_buf[..n]);
                self.count_from_app(n);
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(self.app_was_reset(leg)),
        }
        Ok(())
    }

    fn count_from_app(&self, n: usize) {
        let counter: &AtomicU64 = match self.side {
            Side::Entry => &self.stats.bytes_to_server,
            Side::Exit => &self.stats.bytes_to_client,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The application here failed: tell the peer (best effort; if the leg is gone, the peer
    /// learns when its resume is refused) and reset.
    fn app_was_reset(&mut self, leg: &mut Leg) -> LegEnd {
        self.reset_app();
        if leg.send(&Frame::Reset).is_ok() {
            leg.close_in_order(self.heartbeat);
        }
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        LegEnd::AppReset
    }

    /// The leg is gone. If both applications had finished and the peer has everything, the
    /// session is over all the same: what is left for the application here is written, and
    /// it gets its FIN. Otherwise the session waits for a new leg.
    fn lost(&mut self, why: Lost) -> LegEnd {
        if !(self.outbox.fin_acked() && self.inbox.finished()) {
            return LegEnd::Lost(why);
        }
        let _ = self.app.set_nonblocking(false);
        let _ = self.app.set_write_timeout(Some(LAST_WRITE));
        let tail = &self.to_app[self.to_app_start..];
        if (&self.app).write_all(tail).is_ok() {
            let _ = self.app.shutdown(Shutdown::Write);
            return self.end_in_order();
        }
        LegEnd::AppReset
    }

    /// Reads the leg and handles every whole message in it.
    fn read_leg(&mut self, leg: &mut Leg) -> Option<LegEnd> {
        let filled = match leg.fill() {
            Ok(filled) => filled,
            Err(e) => return Some(self.lost(Lost::Error(e))),
        };
        if let Some(end) = self.open_frames(leg) {
            return Some(end);
        }
        (filled == Filled::Eof).then(|| self.lost(Lost::Closed))
    }

    /// Handles every whole message the leg holds.
    fn open_frames(&mut self, leg: &mut Leg) -> Option<LegEnd> {
        loop {
            let n = match leg.next_frame(&mut self.plain) {
                Ok(Some(n)) => n,
                Ok(None) => return None,
                Err(LegError::Decrypt(_)) => return Some(self.lost(Lost::Unauthenticated)),
                Err(e) => return Some(LegEnd::Violation(e.to_string())),
            };
            if let Err(end) = self.handle(n) {
                return Some(end);
            }
        }
    }

    /// Handles the message in `self.plain[..n]`.
    fn handle(&mut self, n: usize) -> Result<(), LegEnd> {
        let frame =
            Frame::decode(&self.plain[..n]).map_err(|e| LegEnd::Violation(e.to_string()))?;
        let violation = |e: StreamError| LegEnd::Violation(e.to_string());
        match frame {
            Frame::Data { offset, bytes } => {
                let new = self.inbox.accept(offset, bytes).map_err(violation)?;
                self.to_app.extend_from_slice(new);
                let counter: &AtomicU64 = match self.side {
                    Side::Entry => &self.stats.bytes_to_client,
                    Side::Exit => &self.stats.bytes_to_server,
                };
                counter.fetch_add(new.len() as u64, Ordering::Relaxed);
            }
            Frame::Fin { offset } => {
                self.inbox.accept_fin(offset).map_err(violation)?;
            }
            Frame::Ack { received } => self.outbox.ack(received).map_err(violation)?,
            Frame::Reset => {
                self.reset_app();
                self.stats.resets.fetch_add(1, Ordering::Relaxed);
                return Err(LegEnd::PeerReset);
            }
            other @ (Frame::Hello { .. } | Frame::Welcome { .. } | Frame::Refuse(_)) => {
                return Err(LegEnd::Violation(format!(
                    "{other:?} in the middle of a session"
                )));
            }
        }
        Ok(())
    }

    /// Both applications finished writing, the peer has every byte and its FIN, and this end
    /// has told it so.
    fn is_done(&self, leg: &Leg) -> bool {
        self.outbox.fin_acked()
            && self.inbox.finished()
            && self.pending_to_app() == 0
            && self.acked_to_peer == self.inbox.received()
            && leg.pending() == 0
    }
}

fn pollfd(fd: RawFd, (read, write): (bool, bool)) -> libc::pollfd {
    let mut events = 0;
    if read {
        events |= libc::POLLIN;
    }
    if write {
        events |= libc::POLLOUT;
    }
    libc::pollfd {
        fd: if events == 0 { -1 } else { fd },
        events,
        revents: 0,
    }
}

/// poll(2) over `fds` for at most `timeout` (an interrupted call counts as a timeout).
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // Round up so a wait never ends just before its deadline and spins.
    let ms = if Duration::from_millis(ms as u64) < timeout {
        ms.saturating_add(1)
    } else {
        ms
    };
    // SAFETY: `fds` is a valid slice of pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}
