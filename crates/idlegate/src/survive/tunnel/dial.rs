//! The entry's dials: one leg to an exit, for a new session or to resume one, on the worker
//! that carries the session, without blocking.
//!
//! Contract: [`Dial::carry`] takes an application connection and hands it to a worker as a
//! session with no leg yet; its [`EntryCarried`] dials until an exit takes the new session
//! (`First`), and again each time its leg is lost (`Resume`), until `resume_within`. A dial
//! ([`Dialing`]) is a non-blocking connect, the Noise handshake ([`Initiator`]), the Hello
//! and the exit's answer, each stepped when its socket reports, within the dial's timeout;
//! dials wait between tries ([`Backoff`]) as deadlines of the worker, not sleeps. Before each
//! dial, a free leg of the worker's [`super::pool`] is taken if there is one: the Hello is
//! sealed on it and the exit's answer awaited as a dial's; one that fails (the exit closed or
//! reset it, or did not answer in time) is no try: the next free leg is taken, or a dial made,
//! at once. A leg on which a session ended whole goes back to the pool. What is tried again and
//! what is final is said at each; the application's connection is reset (never closed with a
//! FIN) whenever the session cannot go on.

use super::frame::{Frame, Refusal, SessionId, Token};
use super::leg::{EntryKeys, Filled, Initiator, Leg, LegError};
use super::session::{LegEnd, Session, Side, Whole};
use super::worker::{Carried, Closer, Job, Woken, Workers};
use super::{Held, Open, Settings};
use crate::survive::stats::Stats;
use crate::sys::socket::{self, Raw};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the entry needs to open legs.
pub(super) struct Dial {
    pub(super) tunnel: SocketAddr,
    pub(super) keys: Arc<EntryKeys>,
    pub(super) settings: Settings,
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    /// No connection to an exit: none listens where the dial landed (one exit of several is
    /// down), or the path is down. Another dial may reach another exit.
    #[error("connecting: {0}")]
    Connect(io::Error),
    /// Connected, but the leg failed (after the exit's answer, or in a way that is not the
    /// exit dropping the handshake: that is [`DialError::Dropped`]). Only
    /// [`DialError::is_final`] failures say the exit will never take this entry.
    #[error(transparent)]
    Leg(#[from] LegError),
    /// The exit closed or reset the connection before its answer to the Hello: its gate
    /// refused the handshake (the likely cause: a key it does not accept), or it was crowded
    /// or the Hello late; the entry cannot tell which (the gate says nothing to a peer it does
    /// not trust).
    #[error("the exit dropped the connection during the handshake ({0}): it refused the handshake, most likely because this entry's key is not one the exit accepts")]
    Dropped(String),
    /// The exit answered the Hello with something else than a Welcome or a refusal.
    #[error("the exit broke the protocol: {0}")]
    Protocol(String),
}

impl DialError {
    /// A failure no other try would mend: the exit's answer failed authentication or the
    /// handshake (a wrong key, or not an idlegate tunnel), or made no sense. A reset, close or
    /// time-out is not: the exit's gate drops connections that way under load, and cannot be
    /// told apart from a refused key (the gate says nothing to a peer it does not trust).
    fn is_final(&self) -> bool {
        match self {
            DialError::Connect(_) | DialError::Dropped(_) => false,
            DialError::Leg(LegError::Io(_) | LegError::Closed) => false,
            DialError::Leg(_) | DialError::Protocol(_) => true,
        }
    }
}

/// A leg error before the exit's answer: a close or a reset is the exit dropping the
/// handshake ([`DialError::Dropped`]); anything else is the leg's own failure.
fn dropped(e: LegError) -> DialError {
    let reset = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        )
    };
    match e {
        LegError::Closed => DialError::Dropped("it closed the connection".to_string()),
        LegError::Io(e) if reset(&e) => DialError::Dropped(e.to_string()),
        other => DialError::Leg(other),
    }
}

/// The waits between dials: 50 ms, doubling, at most a heartbeat.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(heartbeat: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(50),
            max: heartbeat.max(Duration::from_millis(50)),
        }
    }

    /// The next wait; the one after is twice as long (up to the most).
    fn take(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

impl Dial {
    /// Takes an application connection: a session with no leg yet, handed to a worker that
    /// dials for it. `place` is the session's place in the entry's limit, given back when the
    /// session ends. Returns the application's connection's failure to become a session. For
    /// an entry that accepts on a thread of its own (not Linux, where its workers accept).
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    pub(super) fn carry(
        self: &Arc<Self>,
        app: TcpStream,
        from: SocketAddr,
        stats: &Arc<Stats>,
        workers: &Workers,
        place: Held,
    ) -> io::Result<()> {
        let job = self.job(app, from, stats, place)?;
        let Some(to) = workers.next() else {
            return Err(io::Error::other("the tunnel entry has no worker"));
        };
        // A job given back is dropped: its application's connection is reset.
        workers
            .give(&to, job)
            .map_err(|_| io::Error::other("the tunnel entry's workers have stopped"))
    }

    /// An application connection as a session with no leg yet, for the worker that will dial
    /// for it (see [`Dial::carry`]). On Linux `app` comes accepted non-blocking from the
    /// entry's listener, with the options an application's socket takes (the abortive
    /// linger, TCP_NODELAY, keepalive and its user timeout) inherited from it; elsewhere they
    /// are set here.
    pub(super) fn job(
        self: &Arc<Self>,
        app: TcpStream,
        from: SocketAddr,
        stats: &Arc<Stats>,
        place: Held,
    ) -> io::Result<Job> {
        let _ = self.settings.keepalive.apply_relayed_accepted(&app);
        #[cfg(not(target_os = "linux"))]
        app.set_nonblocking(true)?;
        // Its id and token come with the exit's Welcome.
        let s = Session::new(
            SessionId::NEW,
            Token::default(),
            app,
            Side::Entry,
            self.settings.replay_buffer,
            self.settings.heartbeat,
            stats.clone(),
        )?;
        let now = Instant::now();
        let carried = EntryCarried {
            dial: self.clone(),
            stats: stats.clone(),
            _place: place,
            open: None,
            from,
            purpose: Purpose::First {
                started: now,
                reached: false,
                told: false,
            },
            tries: 0,
            backoff: Backoff::new(self.settings.heartbeat),
            phase: Phase::Wait(now),
        };
        Ok(Job {
            session: s,
            leg: None,
            place: None,
            carried: Box::new(carried),
        })
    }

    /// A dial's failure, in words: one that ran out of time says `timed out after …`, not
    /// EAGAIN's `Resource temporarily unavailable`.
    fn dial_failure(&self, e: DialError) -> String {
        match e {
            DialError::Leg(LegError::Io(e)) => {
                crate::sys::timeout::explain(e, self.settings.dial_timeout()).to_string()
            }
            other => other.to_string(),
        }
    }

    /// What to tell the operator when dials that reached an exit all failed: a refused key
    /// is the likely cause, and the exit does not say so to the entry.
    fn key_hint(&self) -> String {
        match &*self.keys {
            EntryKeys::Peer { own, .. } => format!(
                "if the exit refused the handshake: this entry's public key {} must be on the exit's --peers list, and --exit-public-key must be the exit's",
                own.public()
            ),
            EntryKeys::Psk(_) => "if the exit refused the handshake: both ends need the same --key file (made once with `idlegate keygen FILE`, then copied to the other end)".to_string(),
        }
    }
}

/// One dial under way.
enum Dialing {
    /// The connect: writable once made.
    Connecting(TcpStream),
    /// The handshake's two messages.
    Handshake(Box<Initiator>),
    /// The Hello sealed (and being written); the exit's answer awaited.
    Answer(Box<Leg>),
    /// Between two states (never seen outside [`Dialing::step`]).
    Gone,
}

impl Dialing {
    fn start(tunnel: SocketAddr) -> Result<Dialing, DialError> {
        socket::connect_started(tunnel)
            .map(Dialing::Connecting)
            .map_err(DialError::Connect)
    }

    /// The socket to watch, for reading and for writing.
    fn watch(&self) -> Option<(Raw, bool, bool)> {
        match self {
            Dialing::Connecting(stream) => Some((socket::raw(stream), false, true)),
            Dialing::Handshake(hs) => Some((hs.raw(), !hs.writing(), hs.writing())),
            Dialing::Answer(leg) => Some((leg.raw(), true, leg.pending() > 0)),
            Dialing::Gone => None,
        }
    }

    /// Moves the dial on as far as its socket allows: the leg and the exit's answer once it
    /// has come. `hello` is said once the handshake is done; `plain` holds a message opened.
    fn step(
        &mut self,
        keys: &EntryKeys,
        hello: &Frame,
        plain: &mut [u8],
    ) -> Result<Option<(Box<Leg>, Frame<'static>)>, DialError> {
        loop {
            match std::mem::replace(self, Dialing::Gone) {
                Dialing::Connecting(stream) => match socket::connected(&stream) {
                    Ok(true) => {
                        *self = Dialing::Handshake(Box::new(Initiator::start(stream, keys)?))
                    }
                    Ok(false) => {
                        *self = Dialing::Connecting(stream);
                        return Ok(None);
                    }
                    Err(e) => return Err(DialError::Connect(e)),
                },
                Dialing::Handshake(mut hs) => {
                    if !hs.step().map_err(dropped)? {
                        *self = Dialing::Handshake(hs);
                        return Ok(None);
                    }
                    let mut leg = Box::new((*hs).finish().map_err(dropped)?);
                    leg.send(hello).map_err(dropped)?;
                    *self = Dialing::Answer(leg);
                }
                Dialing::Answer(mut leg) => {
                    leg.flush().map_err(|e| dropped(e.into()))?;
                    loop {
                        if let Some(n) = leg.next_frame(plain).map_err(dropped)? {
                            return Ok(Some((leg, answer_in(&plain[..n])?)));
                        }
                        match leg.fill().map_err(|e| dropped(e.into()))? {
                            Filled::Eof => return Err(dropped(LegError::Closed)),
                            Filled::Bytes(_) => {}
                            Filled::WouldBlock => {
                                *self = Dialing::Answer(leg);
                                return Ok(None);
                            }
                        }
                    }
                }
                Dialing::Gone => return Ok(None),
            }
        }
    }

    /// The dial ran out of time: as the connect's failure if it was still connecting.
    fn timed_out(&self) -> DialError {
        let e = io::Error::from(io::ErrorKind::TimedOut);
        match self {
            Dialing::Connecting(_) => DialError::Connect(e),
            _ => DialError::Leg(LegError::Io(e)),
        }
    }
}

/// The exit's answer to a Hello: a Welcome or a refusal.
fn answer_in(plain: &[u8]) -> Result<Frame<'static>, DialError> {
    match Frame::decode(plain).map_err(LegError::from)? {
        Frame::Welcome {
            session,
            token,
            received,
        } => Ok(Frame::Welcome {
            session,
            token,
            received,
        }),
        Frame::Refuse(reason) => Ok(Frame::Refuse(reason)),
        other => Err(DialError::Protocol(format!(
            "expected Welcome, got {other:?}"
        ))),
    }
}

/// What the entry's dials are for.
enum Purpose {
    /// A new session: until an exit takes it.
    First {
        started: Instant,
        /// A dial connected to an exit and was then dropped.
        reached: bool,
        /// The wait was logged.
        told: bool,
    },
    /// A lost leg: until a new one resumes the session.
    Resume {
        lost_at: Instant,
        /// Answers from an exit that does not hold the session.
        unknown: u32,
    },
}

/// Where a leg came from, and when its handshake was done.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Dialed,
    /// A free leg of the worker's pool.
    Pooled,
}

/// Where an entry's session stands.
enum Phase {
    /// On a leg (the worker holds it).
    Live,
    /// A dial under way (or a Hello on a pooled leg), until its timeout.
    Dial(Dialing, Instant, Origin),
    /// Between dials: the next one starts then.
    Wait(Instant),
}

/// An entry's session on its worker: its dials, and what it keeps until it ends.
struct EntryCarried {
    dial: Arc<Dial>,
    stats: Arc<Stats>,
    /// The session's place in the entry's limit.
    _place: Held,
    /// Counted as open from its Welcome.
    open: Option<Open>,
    /// The application's address, for the log.
    from: SocketAddr,
    purpose: Purpose,
    tries: u32,
    backoff: Backoff,
    phase: Phase,
}

impl EntryCarried {
    /// Starts dialing for `purpose`.
    fn dial_for(&mut self, purpose: Purpose) {
        self.purpose = purpose;
        self.tries = 0;
        self.backoff = Backoff::new(self.dial.settings.heartbeat);
        self.phase = Phase::Wait(Instant::now());
    }

    /// The session is over: said in the log as the entry always said it.
    fn over(&self, e: anyhow::Error) -> Woken {
        match crate::obs::report::hint_of(&e) {
            Some(hint) => tracing::info!("tunnel: {}: {e:#} (hint: {hint})", self.from),
            None => tracing::info!("tunnel: {}: {e:#}", self.from),
        }
        Woken::Over(None)
    }

    /// The exit answered a dial.
    fn answered(&mut self, s: &mut Session, leg: Box<Leg>, answer: Frame, origin: Origin) -> Woken {
        let took_tries = self.tries;
        if let Frame::Welcome { .. } = answer {
            let counter = match origin {
                Origin::Dialed => &self.stats.legs_dialed,
                Origin::Pooled => &self.stats.legs_reused,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        match (&mut self.purpose, answer) {
            (Purpose::First { started, .. }, Frame::Welcome { session, token, .. }) => {
                // A dial or two that a balancer sent to an exit that is down is routine
                // (one line per connection would flood the log); a wait is not.
                let took = started.elapsed();
                if took >= self.dial.settings.heartbeat {
                    tracing::info!(
                        "tunnel: session {session} opened after {took_tries} tries ({took:.1?})"
                    );
                } else if took_tries > 1 {
                    tracing::debug!(
                        "tunnel: session {session} opened after {took_tries} tries ({took:.1?})"
                    );
                }
                s.id = session;
                s.token = token;
                self.stats.connections.fetch_add(1, Ordering::Relaxed);
                self.stats.open.fetch_add(1, Ordering::Relaxed);
                self.open = Some(Open(self.stats.clone()));
                self.phase = Phase::Live;
                Woken::Leg(leg)
            }
            (
                Purpose::First { .. },
                answer @ Frame::Refuse(Refusal::Full | Refusal::TargetUnreachable),
            ) => self.failed(s, refusal(&answer), false),
            (Purpose::First { .. }, answer) => {
                s.reset_app();
                let why = refusal(&answer);
                self.over(anyhow::anyhow!("the tunnel refused a new session: {why}"))
            }
            (Purpose::Resume { lost_at, unknown }, Frame::Welcome { received, .. }) => {
                let (lost_at, unknown) = (*lost_at, *unknown);
                let replayed = match s.resume(received) {
                    Ok(n) => n,
                    Err(e) => {
                        s.reset_app();
                        return self.over(anyhow::anyhow!("session {}: cannot resume: {e}", s.id));
                    }
                };
                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "tunnel: session {} resumed after {:.1?} ({took_tries} tries, {unknown} at \
                     an exit that does not hold it); {replayed} bytes sent again",
                    s.id,
                    lost_at.elapsed()
                );
                self.phase = Phase::Live;
                Woken::Leg(leg)
            }
            (Purpose::Resume { unknown, .. }, Frame::Refuse(Refusal::UnknownSession)) => {
                if *unknown == 0 {
                    tracing::info!(
                        "tunnel: session {}: an exit does not hold it; trying again (another \
                         may) until {:?} have passed",
                        s.id,
                        self.dial.settings.resume_within
                    );
                }
                *unknown += 1;
                self.failed(s, "unknown session".to_string(), false)
            }
            (Purpose::Resume { .. }, Frame::Refuse(Refusal::Finished))
                if s.finish_without_leg() =>
            {
                tracing::info!(
                    "tunnel: session {}: the exit had finished it in order; so has this end",
                    s.id
                );
                Woken::Over(None)
            }
            (Purpose::Resume { .. }, answer) => {
                s.reset_app();
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                let why = refusal(&answer);
                self.over(anyhow::anyhow!("session {}: resume refused: {why}", s.id))
            }
        }
    }

    /// A dial failed (`why`; `reached`: it had reached an exit that then dropped it): the
    /// next one after a wait, or the end if `resume_within` would pass first.
    fn failed(&mut self, s: &mut Session, why: String, reached_now: bool) -> Woken {
        let settings = &self.dial.settings;
        let wait = self.backoff.take();
        let tries = self.tries;
        let tunnel = self.dial.tunnel;
        match &mut self.purpose {
            Purpose::First {
                started,
                reached,
                told,
            } => {
                *reached |= reached_now;
                if started.elapsed() + wait > settings.resume_within {
                    let err = anyhow::anyhow!(
                        "no exit at {tunnel} took the connection within {:?} ({tries} tries, \
                         the last: {why}); the application's connection was reset",
                        settings.resume_within
                    );
                    let err = if *reached {
                        crate::obs::report::hinted(err, self.dial.key_hint())
                    } else {
                        err
                    };
                    s.reset_app();
                    return self.over(err);
                }
                if !*told && started.elapsed() >= settings.heartbeat {
                    // Once per connection, when its wait stops being routine: a wrong key
                    // looks like this too, and would otherwise be silent until
                    // `resume_within`.
                    *told = true;
                    tracing::warn!(
                        "tunnel: a new connection waits: {tries} dials to {tunnel} failed (the \
                         last: {why}); trying again until {:?} have passed{}",
                        settings.resume_within,
                        if *reached {
                            format!(" (hint: {})", self.dial.key_hint())
                        } else {
                            String::new()
                        }
                    );
                } else {
                    tracing::debug!("tunnel: {tunnel}: try {tries}: {why}");
                }
            }
            Purpose::Resume { lost_at, unknown } => {
                tracing::debug!("tunnel: session {}: try {tries}: {why}", s.id);
                if lost_at.elapsed() + wait > settings.resume_within {
                    s.reset_app();
                    self.stats.expired.fetch_add(1, Ordering::Relaxed);
                    let err = anyhow::anyhow!(
                        "session {}: no new leg within {:?} ({tries} tries, {unknown} at an exit \
                         that does not hold it); the application's connection was reset",
                        s.id,
                        settings.resume_within
                    );
                    return self.over(err);
                }
            }
        }
        self.phase = Phase::Wait(Instant::now() + wait);
        Woken::Nothing
    }

    /// A dial's error: final (a wrong key, a broken protocol) or tried again.
    fn dial_failed(&mut self, s: &mut Session, e: DialError) -> Woken {
        if e.is_final() {
            if let Purpose::First { .. } = self.purpose {
                let why = self.dial.dial_failure(e);
                s.reset_app();
                let tunnel = self.dial.tunnel;
                return self.over(anyhow::anyhow!("opening the tunnel to {tunnel}: {why}"));
            }
        }
        let reached = matches!(e, DialError::Leg(_) | DialError::Dropped(_));
        let why = match &self.purpose {
            Purpose::First { .. } => self.dial.dial_failure(e),
            Purpose::Resume { .. } => e.to_string(),
        };
        self.failed(s, why, reached)
    }
}

impl Carried for EntryCarried {
    fn leg_ended(&mut self, s: &mut Session, end: LegEnd, leg: Leg, closer: &mut Closer) -> bool {
        let settings = &self.dial.settings;
        match end {
            // The exit says Done when it has finished with the session on the leg: only then
            // may another session take it.
            LegEnd::Done(Whole::OnLeg) => {
                let within = settings.leg_timeout();
                closer.pool.await_done(leg, within, &self.stats);
            }
            LegEnd::Done(Whole::Freed) => closer.pool.free(leg, &self.stats),
            LegEnd::Done(Whole::WithoutLeg) => {
                closer.close(leg, Instant::now() + settings.leg_timeout())
            }
            LegEnd::AppReset { told } => {
                if told {
                    closer.close(leg, Instant::now() + settings.heartbeat);
                }
            }
            LegEnd::PeerReset => {}
            LegEnd::Violation(why) => {
                s.reset_app();
                tracing::info!(
                    "tunnel: {}: session {}: the exit broke the protocol: {why}",
                    self.from,
                    s.id
                );
            }
            LegEnd::Lost(why) => {
                tracing::info!("tunnel: session {}: leg lost ({why}); resuming", s.id);
                drop(leg);
                self.dial_for(Purpose::Resume {
                    lost_at: Instant::now(),
                    unknown: 0,
                });
                return true;
            }
        }
        false
    }

    fn step(&mut self, s: &mut Session, live: bool, closer: &mut Closer) -> Woken {
        if live {
            return Woken::Nothing;
        }
        let now = Instant::now();
        let hello = Frame::Hello {
            session: s.id,
            token: s.token,
            received: s.received(),
        };
        match &mut self.phase {
            Phase::Live => Woken::Nothing,
            Phase::Wait(until) => {
                if now < *until {
                    return Woken::Nothing;
                }
                // A free leg first: the Hello goes out on it at once.
                while let Some(mut leg) = closer.pool.take() {
                    if leg.send(&hello).is_ok() {
                        let until = now + self.dial.settings.dial_timeout();
                        // Its socket was emptied by the last read and has not reported since
                        // (`Leg::drained`): its Hello is written now, and the answer read once
                        // its socket reports (watched under its new token, which re-arms it),
                        // not looked for at once by a read that would find nothing.
                        let drained = leg.drained() && leg.flush().is_ok() && leg.pending() == 0;
                        let answer = Dialing::Answer(Box::new(leg));
                        self.phase = Phase::Dial(answer, until, Origin::Pooled);
                        if drained {
                            return Woken::Nothing;
                        }
                        return self.step(s, false, closer);
                    }
                }
                self.tries += 1;
                match Dialing::start(self.dial.tunnel) {
                    Ok(dialing) => {
                        // The connect has the dial's timeout; the handshake, the Hello and
                        // the answer as long again from then (as a blocking dial had).
                        let until = now + self.dial.settings.dial_timeout();
                        self.phase = Phase::Dial(dialing, until, Origin::Dialed);
                        self.step(s, false, closer)
                    }
                    Err(e) => self.dial_failed(s, e),
                }
            }
            Phase::Dial(dialing, until, origin) => {
                let origin = *origin;
                let stepped = if now >= *until {
                    Err(dialing.timed_out())
                } else {
                    let was_connecting = matches!(dialing, Dialing::Connecting(_));
                    // The worker's buffer: none allocated per session.
                    let plain = closer.pool.scratch();
                    let stepped = dialing.step(&self.dial.keys, &hello, plain);
                    if was_connecting && !matches!(dialing, Dialing::Connecting(_)) {
                        *until = now + self.dial.settings.dial_timeout();
                    }
                    stepped
                };
                match (stepped, origin) {
                    (Ok(Some((leg, answer))), _) => self.answered(s, leg, answer, origin),
                    (Ok(None), _) => Woken::Nothing,
                    // A pooled leg the exit closed, reset or left unanswered: no try; the
                    // next free leg, or a dial, at once.
                    (Err(e), Origin::Pooled) => {
                        tracing::debug!("tunnel: {}: a free leg failed: {e}", self.from);
                        self.phase = Phase::Wait(now);
                        self.step(s, false, closer)
                    }
                    (Err(e), Origin::Dialed) => self.dial_failed(s, e),
                }
            }
        }
    }

    fn watch(&self, _: &Session) -> (Option<(Raw, bool, bool)>, Instant) {
        match &self.phase {
            Phase::Dial(dialing, until, _) => (dialing.watch(), *until),
            Phase::Wait(until) => (None, *until),
            // Not asked while live.
            Phase::Live => (None, Instant::now() + self.dial.settings.heartbeat),
        }
    }
}

fn refusal(answer: &Frame) -> String {
    match answer {
        Frame::Refuse(reason) => reason.to_string(),
        other => format!("{other:?}"),
    }
}
