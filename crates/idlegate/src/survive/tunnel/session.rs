//! A session: one application connection carried by the tunnel, on whichever leg is alive.
//!
//! Contract: a state machine, driven by its worker (see `worker`), that moves bytes between
//! the application's socket and one leg until the session is over or the leg is lost, and
//! says which ([`LegEnd`]): [`Session::attach`] puts it on a new leg, [`Session::turn`] moves
//! what can move without waiting and says what to wait for and until when ([`Wants`]),
//! [`Session::on_ready`] takes what the sockets reported ([`Ready`]). Nothing blocks: a
//! session whose leg was lost after both streams ended whole, with bytes still for its
//! application, ends all the same and hands them on ([`Session::write_last`], which its worker
//! calls again until they are written or [`LAST_WRITE`] has passed). The session
//! outlives its legs: its [`Outbox`] keeps what the peer has not acknowledged (bounded by the
//! replay buffer: a full outbox stops reading the application), its [`Inbox`] knows where the
//! peer must resume and holds what waits for the application here, and [`Session::resume`]
//! rewinds the outbox on a new leg. The leg is always read, whatever the applications do:
//! what the peer may send is bounded by the window this end grants in its Ack frames (the
//! replay buffer's size, from what the application here has read), so acknowledgements and
//! heartbeats behind the data are never held up by a slow application. A turn writes to the
//! application before it seals, so the Ack that grants what the application just took leaves
//! in the same turn, and it seals and writes until the leg's socket is full or nothing may be
//! sent: no grant and no byte waits for a heartbeat. Heartbeats (Ack
//! frames) leave whenever the leg has been quiet for a heartbeat interval; a leg on which
//! nothing arrives for three intervals is lost. A live leg on which no byte moves for
//! [`STALL_HEARTBEATS`] intervals while bytes wait is reported stalled (a warning, and the
//! `stalled` gauge) until bytes move again. Memory per session is bounded: the outbox, the
//! window (bytes waiting for a slow application), and one leg's buffers; each starts empty,
//! grows only as bytes need it, and gives its room back once empty and the leg has been quiet
//! for a heartbeat interval (see `trim`). What a session uses only within a turn (a read from
//! the application, a message opened or sealed) is its worker's [`Scratch`]. Its worker never
//! spins on it: once the application's socket reports a hangup (on Windows, as soon as the
//! application's FIN arrives), bytes for it are tried again every `WRITE_RETRY` instead of
//! waiting for it to be writable.

use super::frame::{Frame, SessionId, Token, MAX_DATA, MAX_PLAINTEXT};
use super::leg::{Filled, Leg, LegError};
use super::stream::{Inbox, Next, Outbox, StreamError, INITIAL_WINDOW};
use crate::survive::stats::Stats;
use crate::sys::socket::{self, Raw};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sealed bytes a leg may hold before the session stops taking from the outbox.
const TX_HIGH: usize = 1 << 18;
/// The most bytes a session reads from its application per wake: bounded, so that one busy
/// session cannot keep its worker's others waiting; more than one read, so that a wake is not
/// spent on one chunk.
const APP_READ_BUDGET: usize = 1 << 20;
/// The most bytes a session reads from its leg per wake (as [`APP_READ_BUDGET`]).
const LEG_READ_BUDGET: usize = 1 << 20;
/// How many heartbeat intervals of silence lose a leg.
pub const MISSED_HEARTBEATS: u32 = 3;
/// How many heartbeat intervals a live leg may move no byte, while bytes wait, before the
/// session is reported stalled.
pub const STALL_HEARTBEATS: u32 = 12;
/// How long a finished session may take to hand its last bytes to a slow application.
pub const LAST_WRITE: Duration = Duration::from_secs(120);
/// How often bytes for the application are tried again once its socket reported a hangup
/// (see [`Session::turn`]): writability can no longer be waited for there.
const WRITE_RETRY: Duration = Duration::from_millis(10);
/// How long an acknowledgement with nothing else to go with it waits for something to ride
/// with (the application's answer, its FIN): a pure Ack is a segment, and a wake-up at the
/// peer, of its own. Much shorter than a heartbeat interval; an Ack that grants window, that
/// acknowledges [`ACK_AT`] bytes or more, or that is the last thing the session waits for
/// leaves at once.
const ACK_DELAY: Duration = Duration::from_millis(5);
/// How many bytes received unacknowledged make an acknowledgement leave at once.
const ACK_AT: u64 = MAX_DATA as u64;

/// Why a session left its leg.
#[derive(Debug)]
pub enum LegEnd {
    /// Both applications finished writing and every byte was acknowledged; what follows for
    /// the leg.
    Done(Whole),
    /// The application here reset its connection; the peer was told (`told`: a Reset frame
    /// is sealed on the leg, which should now be closed in order so that it arrives).
    AppReset { told: bool },
    /// The peer's application reset its connection; the one here was reset too.
    PeerReset,
    /// The leg is gone: the session waits for a new one.
    Lost(Lost),
    /// The peer broke the protocol: the session cannot go on.
    Violation(String),
}

/// Where a session that ended whole leaves its leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whole {
    /// Sound, and every whole frame on it read: it may carry another session once both ends
    /// agree it is free (the exit says Done, see `super::pool`).
    OnLeg,
    /// The peer said Done on it: it is free now (the entry's side).
    Freed,
    /// The leg failed (closed, reset) after both streams were whole: it is closed.
    WithoutLeg,
}

/// What a session waits for after a [`Session::turn`]; its leg is always read.
#[derive(Debug, Clone, Copy)]
pub struct Wants {
    pub app_read: bool,
    pub app_write: bool,
    pub leg_write: bool,
    /// When to turn again, whatever the sockets say.
    pub until: Instant,
}

/// What the sockets reported, for [`Session::on_ready`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    /// The application's socket: anything (readable, a hangup, an error).
    pub app: bool,
    /// The application's socket reported a hangup.
    pub app_hangup: bool,
    /// Bytes (or an EOF, an error) arrived on the leg: not merely writable.
    pub leg: bool,
    /// The application's FIN had come when its socket reported (no new report follows it).
    pub app_fin: bool,
    /// The peer's FIN had come when the leg reported.
    pub leg_fin: bool,
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

/// What a session uses only within one turn: its worker's, lent to each session it turns
/// (one at a time), so that a session holds no buffer for it.
pub struct Scratch {
    /// Bytes read from the application, on their way to the outbox.
    read: Box<[u8]>,
    /// A message opened from the leg.
    opened: Box<[u8]>,
    /// A frame's plaintext while it is being sealed.
    sealing: Vec<u8>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            read: vec![0; MAX_DATA].into_boxed_slice(),
            opened: vec![0; MAX_PLAINTEXT].into_boxed_slice(),
            sealing: Vec::with_capacity(MAX_PLAINTEXT),
        }
    }
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
}

/// One application connection and its stream state.
pub struct Session {
    pub id: SessionId,
    pub token: Token,
    app: TcpStream,
    side: Side,
    outbox: Outbox,
    inbox: Inbox,
    app_eof: bool,
    app_shut: bool,
    /// The application's socket reported a hangup (its FIN, on Windows): it is no longer
    /// watched for writing.
    app_hung_up: bool,
    /// Both streams ended whole without a leg: what is left for the application is written,
    /// then its FIN ([`Session::write_last`]).
    finishing: bool,
    /// The last `received` told to the peer.
    acked_to_peer: u64,
    /// The last window limit told to the peer.
    told_limit: u64,
    /// Since when bytes received are owed an acknowledgement that has not left (see
    /// [`ACK_DELAY`]).
    ack_owed_since: Option<Instant>,
    heartbeat: Duration,
    /// On the current leg: when bytes last arrived, and when a frame last left.
    last_rx: Instant,
    last_tx: Instant,
    stall: StallWatch,
    stats: Arc<Stats>,
    /// A read stopped at its budget with bytes perhaps left: the application's socket, the
    /// leg's (see [`Session::take_unread`]).
    unread: (bool, bool),
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
        if self.stall.stalled.is_some() {
            self.stats.stalled.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether bytes move: where the session's streams stood when it last saw them move.
struct StallWatch {
    /// The sum of every offset that grows as bytes move (see [`Session::position`]).
    position: u64,
    /// Since when the position has not changed.
    since: Instant,
    /// Reported stalled (counted in the `stalled` gauge) since this instant.
    stalled: Option<Instant>,
}

impl Session {
    /// A session of `app`, which comes non-blocking (accepted or connected so on Linux: no
    /// system call here).
    pub fn new(
        id: SessionId,
        token: Token,
        app: TcpStream,
        side: Side,
        replay_buffer: usize,
        heartbeat: Duration,
        stats: Arc<Stats>,
    ) -> io::Result<Session> {
        Ok(Session {
            id,
            token,
            app,
            side,
            outbox: Outbox::new(replay_buffer),
            // The window granted to the peer: as much as this end keeps unacknowledged the
            // other way, and never less than what the peer may send before it hears of it.
            inbox: Inbox::new(replay_buffer.max(INITIAL_WINDOW as usize)),
            app_eof: false,
            app_shut: false,
            app_hung_up: false,
            finishing: false,
            acked_to_peer: 0,
            told_limit: 0,
            ack_owed_since: None,
            heartbeat,
            last_rx: Instant::now(),
            last_tx: Instant::now(),
            stall: StallWatch {
                position: 0,
                since: Instant::now(),
                stalled: None,
            },
            stats,
            unread: (false, false),
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
        // The new leg's first Ack tells the peer where this end stands and its window.
        self.acked_to_peer = 0;
        self.told_limit = 0;
        self.ack_owed_since = None;
        self.stats
            .replayed_bytes
            .fetch_add(replayed, Ordering::Relaxed);
        Ok(replayed)
    }

    /// Ends the application's connection with a RST, sent when the session (and so the
    /// socket) is dropped; no FIN before it, which would claim the stream ended whole.
    pub fn reset_app(&self) {
        reset_app(&self.app);
    }

    /// Both streams ended whole: the application's socket may now close with a FIN (until
    /// here it was armed to reset, so that an end killed mid-stream never looks like one
    /// that finished).
    fn end_in_order(&mut self) -> LegEnd {
        self.done = true;
        crate::survive::keepalive::ended_in_order(&self.app);
        LegEnd::Done(Whole::OnLeg)
    }

    /// Starts the session on a new leg (its clocks start now) and handles the frames that
    /// arrived with the Welcome or Hello.
    pub fn attach(&mut self, leg: &mut Leg, scratch: &mut Scratch) -> Option<LegEnd> {
        let now = Instant::now();
        self.last_rx = now;
        self.last_tx = now;
        if self.stall.stalled.is_none() {
            // A new leg: the time spent waiting for it was a lost leg, not a stall.
            self.stall.since = now;
        }
        self.open_frames(leg, &mut scratch.opened)
    }

    /// Moves what can move without waiting: seals frames into the leg, writes the leg and
    /// the application; finds the session done or its leg silent too long. Returns what to
    /// wait for and until when (a heartbeat, the leg's deadline, the stall watch).
    pub fn turn(&mut self, leg: &mut Leg, scratch: &mut Scratch) -> Result<Wants, LegEnd> {
        // The application here first: what it takes opens the window, and the Ack sealed
        // next tells the peer so. (Sealed before it, the grant of the last bytes the
        // application took waited for whatever turned the session next: with the peer
        // waiting for that very grant, only the heartbeat did.)
        self.write_app(leg)?;
        self.send_leg(leg, &mut scratch.sealing)?;
        if self.is_done(leg) {
            return Err(self.end_in_order());
        }
        let now = Instant::now();
        let dead_at = self.last_rx + self.heartbeat * MISSED_HEARTBEATS;
        if now >= dead_at {
            self.stats.heartbeat_misses.fetch_add(1, Ordering::Relaxed);
            // Whole both ways, with bytes left only for the application here (a server slow
            // to read them): the peer, done, has stopped speaking on this leg (it waits for
            // Done, or has let the leg go), and nothing more is needed from it, so the
            // session ends whole and hands the bytes on without the leg, as for a leg lost
            // any other way.
            return Err(self.lost(Lost::HeartbeatMissed(now - self.last_rx)));
        }
        let look_again_at = self.watch_stall(now);
        // A heartbeat waits behind unsent bytes: they will tell the peer as much.
        let beat_at = if leg.pending() == 0 {
            self.last_tx + self.heartbeat
        } else {
            dead_at
        };
        let mut until = dead_at.min(beat_at).min(look_again_at);
        // The leg is always read: the window bounds what the peer may send. The application
        // is not watched for writing once its socket reported a hangup: WSAPoll (Windows)
        // reports POLLHUP as soon as the application's FIN arrives, and then at every wait,
        // at once, whatever was asked (Linux only once both directions are closed, or on a
        // reset, when the next write fails), which would spin the loop while a slow
        // application reads; its writes are then tried again every WRITE_RETRY.
        let app_write = self.inbox.pending() > 0;
        if app_write && self.app_hung_up {
            until = until.min(now + WRITE_RETRY);
        }
        if let Some(since) = self.ack_owed_since {
            until = until.min(since + ACK_DELAY);
        }
        Ok(Wants {
            app_read: self.outbox.room() > 0 && !self.app_eof,
            app_write: app_write && !self.app_hung_up,
            leg_write: leg.pending() > 0,
            until,
        })
    }

    /// Takes what the sockets reported: reads the application and the leg.
    pub fn on_ready(
        &mut self,
        leg: &mut Leg,
        ready: Ready,
        scratch: &mut Scratch,
    ) -> Option<LegEnd> {
        if ready.app_hangup {
            self.app_hung_up = true;
        }
        if ready.app {
            if let Err(end) = self.read_app(leg, &mut scratch.read, ready.app_fin) {
                return Some(end);
            }
        }
        if ready.leg {
            leg.reported();
            match self.read_leg(leg, &mut scratch.opened, ready.leg_fin) {
                Ok(true) => self.last_rx = Instant::now(),
                Ok(false) => {}
                Err(end) => return Some(end),
            }
        }
        None
    }

    /// Which reads stopped at their budget, or (the application's) at a full outbox, with
    /// bytes perhaps left (the application's, the leg's) since the last call: their sockets will not report those bytes again (their
    /// watch is edge-triggered), so the worker has them reported again (it sets them anew).
    pub fn take_unread(&mut self) -> (bool, bool) {
        std::mem::take(&mut self.unread)
    }

    /// The application finished writing (its FIN was read): its socket has nothing more to
    /// report but an error.
    pub fn app_finished(&self) -> bool {
        self.app_eof
    }

    /// Whether a session put on a new leg reads its application at once, before its socket
    /// reports: the entry's client has most often sent its request already; the exit's
    /// target was connected a moment ago (or, on a resume, its socket is watched anew), and
    /// what it says first is reported when its socket is watched.
    pub fn reads_app_at_attach(&self) -> bool {
        self.side == Side::Entry
    }

    /// The application's connection (one being made, for its outcome).
    pub fn app(&self) -> &TcpStream {
        &self.app
    }

    /// The application's socket, to watch it.
    pub fn app_raw(&self) -> Raw {
        socket::raw(&self.app)
    }

    /// The sum of every offset that grows as bytes move: read from the application here,
    /// acknowledged by the peer, received from the peer, taken by the application here (the
    /// window's limit). It changes exactly when something moved.
    fn position(&self) -> u64 {
        let read_from_app = self.outbox.acked() + self.outbox.unacked() as u64;
        read_from_app
            .wrapping_add(self.outbox.acked())
            .wrapping_add(self.inbox.received())
            .wrapping_add(self.inbox.limit())
    }

    /// Notes whether bytes moved since the last look; reports the session stalled when none
    /// has for [`STALL_HEARTBEATS`] intervals while some wait, and moving again when they
    /// do. Returns when to look again.
    fn watch_stall(&mut self, now: Instant) -> Instant {
        let bound = self.heartbeat * STALL_HEARTBEATS;
        let position = self.position();
        let waiting = self.outbox.unacked() > 0 || self.inbox.pending() > 0;
        if position != self.stall.position || !waiting {
            self.stall.position = position;
            self.stall.since = now;
            if let Some(since) = self.stall.stalled.take() {
                self.stats.stalled.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(
                    "tunnel: session {}: bytes move again after a stall of {:.1?}",
                    self.id,
                    now - since
                );
            }
            return now + bound;
        }
        if self.stall.stalled.is_none() && now >= self.stall.since + bound {
            self.stall.stalled = Some(self.stall.since);
            self.stats.stalled.fetch_add(1, Ordering::Relaxed);
            self.stats.stalls.fetch_add(1, Ordering::Relaxed);
            let far = if self.outbox.window_closed() {
                "its window is closed: the application there is not reading"
            } else {
                "not acknowledged"
            };
            tracing::warn!(
                "tunnel: session {}: stalled: no byte has moved for {:.1?}; {} bytes wait for \
                 the application here to read them, {} for the far end ({far})",
                self.id,
                now - self.stall.since,
                self.inbox.pending(),
                self.outbox.unacked(),
            );
        }
        match self.stall.stalled {
            Some(_) => now + bound,
            None => self.stall.since + bound,
        }
    }

    /// Seals and writes to the leg until its socket takes no more or nothing is left to send
    /// (the window, the outbox): a leg whose socket took everything sealed is not watched for
    /// writing, so what stayed in the outbox must not wait for the next event.
    fn send_leg(&mut self, leg: &mut Leg, plain: &mut Vec<u8>) -> Result<(), LegEnd> {
        loop {
            if let Err(e) = self.fill_leg(leg, plain) {
                return Err(LegEnd::Violation(e.to_string()));
            }
            if self.side == Side::Exit && self.whole_and_told() {
                // Its last acknowledgement leaves with the Done its end seals next, in one
                // write (the leg's next owner writes it: the pool, or the closer).
                return Ok(());
            }
            if let Err(e) = leg.flush() {
                return Err(self.lost(Lost::Error(e)));
            }
            if leg.pending() > 0 || !self.outbox.sendable() {
                return Ok(());
            }
        }
    }

    /// Seals what the outbox has to send (up to the leg's high mark), then an acknowledgement
    /// if the peer's data has not been acknowledged, or a heartbeat if the leg is quiet.
    fn fill_leg(&mut self, leg: &mut Leg, plain: &mut Vec<u8>) -> Result<(), LegError> {
        let before = leg.pending();
        while leg.pending() < TX_HIGH {
            match self.outbox.next(MAX_DATA) {
                Some(Next::Data { offset, bytes }) => {
                    leg.seal(
                        &Frame::Data {
                            offset,
                            bytes: bytes.0,
                        },
                        plain,
                    )?;
                    if !bytes.1.is_empty() {
                        leg.seal(
                            &Frame::Data {
                                offset: offset + bytes.0.len() as u64,
                                bytes: bytes.1,
                            },
                            plain,
                        )?;
                    }
                }
                Some(Next::Fin { offset }) => leg.seal(&Frame::Fin { offset }, plain)?,
                None => break,
            }
        }
        let received = self.inbox.received();
        let limit = self.inbox.limit();
        // The window is told again once the application here has read a quarter of it (the
        // peer may be waiting for it), not after every read.
        let opened = limit >= self.told_limit + (self.inbox.window() / 4) as u64;
        let quiet = self.last_tx.elapsed() >= self.heartbeat && leg.pending() == 0;
        if quiet {
            // Idle for a heartbeat interval: empty buffers give their room back.
            self.trim(leg);
        }
        let owed = received != self.acked_to_peer;
        if owed || opened || quiet {
            // An acknowledgement alone waits (up to ACK_DELAY) for something to ride with,
            // unless it grants window, acknowledges much, or is all the session waits for.
            let now = Instant::now();
            let since = *self.ack_owed_since.get_or_insert(now);
            let now_or_never = leg.pending() > before
                || opened
                || quiet
                || received - self.acked_to_peer >= ACK_AT
                || now >= since + ACK_DELAY
                || (self.outbox.fin_acked() && self.inbox.finished());
            if now_or_never {
                leg.seal(&Frame::Ack { received, limit }, plain)?;
                self.acked_to_peer = received;
                self.told_limit = limit;
                self.ack_owed_since = None;
            }
        }
        if leg.pending() > before {
            self.last_tx = Instant::now();
        }
        Ok(())
    }

    /// Writes what the peer sent to the application, then its FIN once all is written.
    fn write_app(&mut self, leg: &mut Leg) -> Result<(), LegEnd> {
        while self.inbox.pending() > 0 {
            match (&self.app).write(self.inbox.pending_front()) {
                Ok(n) => self.inbox.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(self.app_was_reset(leg)),
            }
        }
        if self.inbox.pending() == 0 && self.inbox.finished() && !self.app_shut {
            self.app_shut = true;
            let _ = self.app.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// Reads the application until it has nothing more, the outbox is full or
    /// [`APP_READ_BUDGET`] bytes were read (either noted, see [`Session::take_unread`]). A
    /// read shorter than its room emptied the socket (see [`Leg::drained`]): what comes
    /// after it is a new report, so no read is spent to find nothing, unless the socket's
    /// report said its FIN had come (`fin`), which no new report follows: it is read.
    fn read_app(&mut self, leg: &mut Leg, read_buf: &mut [u8], fin: bool) -> Result<(), LegEnd> {
        let mut budget = APP_READ_BUDGET;
        while !self.app_eof {
            if budget == 0 {
                self.unread.0 = true;
                break;
            }
            let room = self.outbox.room().min(read_buf.len());
            if room == 0 {
                // Full with bytes perhaps left: an acknowledgement read next in this same
                // turn may make room, and then no new report would say they are there.
                self.unread.0 = true;
                break;
            }
            match (&self.app).read(&mut read_buf[..room]) {
                Ok(0) => {
                    self.app_eof = true;
                    self.outbox.finish();
                }
                Ok(n) => {
                    self.outbox.push(&read_buf[..n]);
                    self.count_from_app(n);
                    budget = budget.saturating_sub(n);
                    if n < room && !fin {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(self.app_was_reset(leg)),
            }
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
    /// learns when its resume is refused) and reset. The caller closes the leg in order.
    fn app_was_reset(&mut self, leg: &mut Leg) -> LegEnd {
        self.reset_app();
        let told = leg.send(&Frame::Reset).is_ok();
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        LegEnd::AppReset { told }
    }

    /// The leg is gone. If both applications had finished and the peer has everything, the
    /// session is over all the same: what is left for the application here is written, and
    /// it gets its FIN. Otherwise the session waits for a new leg.
    fn lost(&mut self, why: Lost) -> LegEnd {
        if !(self.outbox.fin_acked() && self.inbox.finished()) {
            return LegEnd::Lost(why);
        }
        self.end_whole(Whole::WithoutLeg)
    }

    /// The peer finished the session in order while it had no leg: it had every byte and the
    /// FIN from here (its acknowledgement was lost with the leg). If this end has the peer's
    /// FIN too, the session ends in order here as well; says whether it did.
    pub fn finish_without_leg(&mut self) -> bool {
        self.inbox.finished() && matches!(self.end_whole(Whole::WithoutLeg), LegEnd::Done(_))
    }

    /// Both directions are whole: what is left for the application here is written, and it
    /// gets its FIN; what its socket does not take at once is written by
    /// [`Session::write_last`] later ([`Session::finishing`]). Ends in order (`how`: what
    /// follows for the leg), unless the application's socket failed.
    fn end_whole(&mut self, how: Whole) -> LegEnd {
        self.finishing = true;
        match self.write_last() {
            Ok(_) => LegEnd::Done(how),
            Err(_) => LegEnd::AppReset { told: false },
        }
    }

    /// Ended whole without a leg, with bytes still for the application: its worker calls
    /// [`Session::write_last`] until they are written, or resets it after [`LAST_WRITE`].
    pub fn finishing(&self) -> bool {
        self.finishing && !self.done
    }

    /// Writes what is left for the application without blocking, then its FIN; says whether
    /// all was written (the session then ended in order). An error: the application is gone
    /// (the session resets it when dropped).
    pub fn write_last(&mut self) -> io::Result<bool> {
        while self.inbox.pending() > 0 {
            match (&self.app).write(self.inbox.pending_front()) {
                Ok(n) => self.inbox.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !self.app_shut {
            self.app_shut = true;
            let _ = self.app.shutdown(Shutdown::Write);
        }
        self.end_in_order();
        Ok(true)
    }

    /// Reads the leg and handles every whole message in it; says whether bytes arrived.
    /// Reads until the socket has nothing more ([`Leg::drained`]: a short read; the rest of
    /// a frame cut short comes as a new report) or [`LEG_READ_BUDGET`] bytes were read (then
    /// noted, see [`Session::take_unread`]); what the peer may send is bounded by the
    /// window. With the peer's FIN reported (`fin`), it reads on to it: no new report would
    /// say it.
    fn read_leg(&mut self, leg: &mut Leg, plain: &mut [u8], fin: bool) -> Result<bool, LegEnd> {
        let (mut arrived, mut budget) = (false, LEG_READ_BUDGET);
        loop {
            if budget == 0 {
                self.unread.1 = true;
                break;
            }
            let filled = match leg.fill() {
                Ok(filled) => filled,
                Err(e) => return Err(self.lost(Lost::Error(e))),
            };
            if let Some(end) = self.open_frames(leg, plain) {
                return Err(end);
            }
            match filled {
                Filled::Eof => return Err(self.lost(Lost::Closed)),
                Filled::Bytes(n) => {
                    arrived = true;
                    budget = budget.saturating_sub(n);
                    if leg.drained() && !fin {
                        break;
                    }
                }
                Filled::WouldBlock => break,
            }
        }
        Ok(arrived)
    }

    /// Handles every whole message the leg holds.
    fn open_frames(&mut self, leg: &mut Leg, plain: &mut [u8]) -> Option<LegEnd> {
        loop {
            let n = match leg.next_frame(plain) {
                Ok(Some(n)) => n,
                Ok(None) => return None,
                Err(LegError::Decrypt(_)) => return Some(self.lost(Lost::Unauthenticated)),
                Err(e) => return Some(LegEnd::Violation(e.to_string())),
            };
            if let Err(end) = self.handle(&plain[..n]) {
                return Some(end);
            }
        }
    }

    /// Handles one opened message.
    fn handle(&mut self, msg: &[u8]) -> Result<(), LegEnd> {
        let frame = Frame::decode(msg).map_err(|e| LegEnd::Violation(e.to_string()))?;
        let violation = |e: StreamError| LegEnd::Violation(e.to_string());
        match frame {
            Frame::Data { offset, bytes } => {
                let new = self.inbox.accept(offset, bytes).map_err(violation)?;
                let counter: &AtomicU64 = match self.side {
                    Side::Entry => &self.stats.bytes_to_client,
                    Side::Exit => &self.stats.bytes_to_server,
                };
                counter.fetch_add(new as u64, Ordering::Relaxed);
            }
            Frame::Fin { offset } => {
                self.inbox.accept_fin(offset).map_err(violation)?;
            }
            Frame::Ack { received, limit } => {
                self.outbox.ack(received).map_err(violation)?;
                self.outbox.grant(limit);
            }
            Frame::Reset => {
                self.reset_app();
                self.stats.resets.fetch_add(1, Ordering::Relaxed);
                return Err(LegEnd::PeerReset);
            }
            // The exit ended the session whole: this end has every byte and the exit's FIN,
            // and the exit has this end's. What is left for the application is written here.
            Frame::Done
                if self.side == Side::Entry && self.outbox.fin_acked() && self.inbox.finished() =>
            {
                return Err(self.end_whole(Whole::Freed));
            }
            other @ (Frame::Hello { .. }
            | Frame::Welcome { .. }
            | Frame::Refuse(_)
            | Frame::Done) => {
                return Err(LegEnd::Violation(format!(
                    "{other:?} in the middle of a session"
                )));
            }
        }
        Ok(())
    }

    /// Gives back the room of the session's empty buffers (the outbox, the inbox, the leg's):
    /// called when the leg has been quiet for a heartbeat interval, so a burst's buffers are
    /// reused for the next burst, not allocated again.
    fn trim(&mut self, leg: &mut Leg) {
        self.outbox.trim();
        self.inbox.trim();
        leg.trim();
    }

    /// The bytes the session's buffers hold allocated, with its leg's (for tests and the
    /// debug view).
    pub fn buffered(&self, leg: Option<&Leg>) -> usize {
        self.outbox.buffered() + self.inbox.buffered() + leg.map_or(0, Leg::buffered)
    }

    /// Both applications finished writing, the peer has every byte and its FIN, and this end
    /// has told it so (the exit: sealed it, to leave with its Done).
    fn is_done(&self, leg: &Leg) -> bool {
        self.whole_and_told() && (self.side == Side::Exit || leg.pending() == 0)
    }

    /// Both applications finished writing, the peer has every byte and its FIN, and this end
    /// has sealed its acknowledgement of the peer's (written or not).
    fn whole_and_told(&self) -> bool {
        self.outbox.fin_acked()
            && self.inbox.finished()
            && self.inbox.pending() == 0
            && self.acked_to_peer == self.inbox.received()
    }
}

/// Arms `app` to end with a RST when dropped (SO_LINGER 0), with no FIN before it, which
/// would claim the stream ended whole. For an application connection with no session yet too.
pub fn reset_app(app: &TcpStream) {
    let _ = socket::reset(app);
    let _ = app.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests;
