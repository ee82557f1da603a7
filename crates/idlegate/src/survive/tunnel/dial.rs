//! The entry's dials: one leg to an exit, for a new session or to resume one.
//!
//! Contract: [`Dial::carry`] takes an application connection, dials until an exit takes a
//! new session ([`Dial::first_leg`]), carries the session, and dials again each time its leg
//! is lost ([`Dial::resume`]), until `resume_within`. Dials wait between tries ([`Backoff`]).
//! What is tried again and what is final is said at each; the application's connection is
//! reset (never closed with a FIN) whenever the session cannot go on.

use super::frame::{Frame, Refusal, SessionId, Token, MAX_PLAINTEXT};
use super::leg::{EntryKeys, Leg, LegError};
use super::session::{self, LegEnd, Session, Side};
use super::{Open, Settings};
use crate::survive::stats::Stats;
use anyhow::Result;
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
    /// One leg: connect, handshake, Hello; the exit's answer.
    fn open(
        &self,
        session: SessionId,
        token: Token,
        received: u64,
    ) -> Result<(Leg, Frame<'static>), DialError> {
        let timeout = self.settings.dial_timeout();
        let stream =
            TcpStream::connect_timeout(&self.tunnel, timeout).map_err(DialError::Connect)?;
        let mut leg = Leg::initiate(stream, &*self.keys, timeout).map_err(dropped)?;
        leg.send_now(&Frame::Hello {
            session,
            token,
            received,
        })
        .map_err(dropped)?;
        let mut plain = vec![0u8; MAX_PLAINTEXT];
        let n = leg.recv_now(&mut plain).map_err(dropped)?;
        let answer = match Frame::decode(&plain[..n]).map_err(LegError::from)? {
            Frame::Welcome {
                session,
                token,
                received,
            } => Frame::Welcome {
                session,
                token,
                received,
            },
            Frame::Refuse(reason) => Frame::Refuse(reason),
            other => {
                return Err(DialError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )))
            }
        };
        leg.go_nonblocking().map_err(LegError::from)?;
        Ok((leg, answer))
    }

    /// Carries one application connection until it ends.
    pub(super) fn carry(&self, app: TcpStream, stats: &Arc<Stats>) -> Result<()> {
        let _ = self.settings.keepalive.apply_relayed(&app);
        let (mut leg, session, token) = match self.first_leg() {
            Ok(opened) => opened,
            Err(e) => {
                // Dropped here: a RST, no FIN.
                session::reset_app(&app);
                return Err(e);
            }
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let _open = Open(stats);
        let mut s = Session::new(
            session,
            token,
            app,
            Side::Entry,
            self.settings.replay_buffer,
            self.settings.heartbeat,
            stats.clone(),
        )?;
        loop {
            match s.run_leg(&mut leg, None) {
                LegEnd::Done => {
                    leg.close_in_order(self.settings.leg_timeout());
                    return Ok(());
                }
                LegEnd::AppReset | LegEnd::PeerReset => return Ok(()),
                LegEnd::Violation(why) => {
                    s.reset_app();
                    anyhow::bail!("session {}: the exit broke the protocol: {why}", s.id);
                }
                // Only the exit's sessions are given a wake descriptor.
                LegEnd::Replaced => {}
                LegEnd::Lost(why) => {
                    tracing::info!("tunnel: session {}: leg lost ({why}); resuming", s.id);
                    match self.resume(&mut s, stats)? {
                        Some(new) => leg = new,
                        None => return Ok(()),
                    }
                }
            }
        }
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

    /// Dials until an exit takes a new session. A dial that reaches no exit, one that an exit
    /// resets or closes before its Welcome (its gate drops connections when crowded or late,
    /// as it drops a wrong key: the entry cannot tell them apart), and an exit that is full
    /// or cannot reach its target are tried again until `resume_within` (behind a balancer
    /// the next dial may reach another exit). Only a failure that proves a wrong key or a
    /// broken protocol ([`DialError::is_final`]) ends at once. The key hint (which key to
    /// check, in either mode) comes with the wait's warning and the last error, when a dial
    /// had reached an exit.
    fn first_leg(&self) -> Result<(Leg, SessionId, Token)> {
        let started = Instant::now();
        let mut backoff = Backoff::new(self.settings.heartbeat);
        let mut tries = 0u32;
        // A dial connected to an exit and was then dropped.
        let mut reached = false;
        // The wait was logged.
        let mut told = false;
        loop {
            tries += 1;
            let why = match self.open(SessionId::NEW, Token::default(), 0) {
                Ok((leg, Frame::Welcome { session, token, .. })) => {
                    // A dial or two that a balancer sent to an exit that is down is routine
                    // (one line per connection would flood the log); a wait is not.
                    let took = started.elapsed();
                    if took >= self.settings.heartbeat {
                        tracing::info!(
                            "tunnel: session {session} opened after {tries} tries ({took:.1?})"
                        );
                    } else if tries > 1 {
                        tracing::debug!(
                            "tunnel: session {session} opened after {tries} tries ({took:.1?})"
                        );
                    }
                    return Ok((leg, session, token));
                }
                Ok((_, answer @ Frame::Refuse(Refusal::Full | Refusal::TargetUnreachable))) => {
                    refusal(&answer)
                }
                Ok((_, answer)) => {
                    anyhow::bail!("the tunnel refused a new session: {}", refusal(&answer))
                }
                Err(e) if e.is_final() => {
                    let why = self.dial_failure(e);
                    anyhow::bail!("opening the tunnel to {}: {why}", self.tunnel);
                }
                Err(e) => {
                    reached |= matches!(e, DialError::Leg(_) | DialError::Dropped(_));
                    self.dial_failure(e)
                }
            };
            let wait = backoff.take();
            if started.elapsed() + wait > self.settings.resume_within {
                let err = anyhow::anyhow!(
                    "no exit at {} took the connection within {:?} ({tries} tries, the last: \
                     {why}); the application's connection was reset",
                    self.tunnel,
                    self.settings.resume_within
                );
                return Err(if reached {
                    crate::obs::report::hinted(err, self.key_hint())
                } else {
                    err
                });
            }
            if !told && started.elapsed() >= self.settings.heartbeat {
                // Once per connection, when its wait stops being routine: a wrong key looks
                // like this too, and would otherwise be silent until `resume_within`.
                told = true;
                tracing::warn!(
                    "tunnel: a new connection waits: {tries} dials to {} failed (the last: \
                     {why}); trying again until {:?} have passed{}",
                    self.tunnel,
                    self.settings.resume_within,
                    if reached {
                        format!(" (hint: {})", self.key_hint())
                    } else {
                        String::new()
                    }
                );
            } else {
                tracing::debug!("tunnel: {}: try {tries}: {why}", self.tunnel);
            }
            std::thread::sleep(wait);
        }
    }

    /// Opens legs until one resumes `s`, or `resume_within` has passed. An exit that does
    /// not know the session is not the last word (another exit may hold it); one that ended
    /// it is. None: the exit finished the session in order, and so did this end.
    fn resume(&self, s: &mut Session, stats: &Stats) -> Result<Option<Leg>> {
        let lost_at = Instant::now();
        let mut backoff = Backoff::new(self.settings.heartbeat);
        let mut tries = 0u32;
        let mut unknown = 0u32;
        loop {
            tries += 1;
            match self.open(s.id, s.token, s.received()) {
                Ok((leg, Frame::Welcome { received, .. })) => {
                    let replayed = s.resume(received).map_err(|e| {
                        s.reset_app();
                        anyhow::anyhow!("session {}: cannot resume: {e}", s.id)
                    })?;
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        "tunnel: session {} resumed after {:.1?} ({tries} tries, {unknown} at \
                         an exit that does not hold it); {replayed} bytes sent again",
                        s.id,
                        lost_at.elapsed()
                    );
                    return Ok(Some(leg));
                }
                Ok((_, Frame::Refuse(Refusal::UnknownSession))) => {
                    if unknown == 0 {
                        tracing::info!(
                            "tunnel: session {}: an exit does not hold it; trying again (another \
                             may) until {:?} have passed",
                            s.id,
                            self.settings.resume_within
                        );
                    }
                    unknown += 1;
                }
                Ok((_, Frame::Refuse(Refusal::Finished))) if s.finish_without_leg() => {
                    tracing::info!(
                        "tunnel: session {}: the exit had finished it in order; so has this end",
                        s.id
                    );
                    return Ok(None);
                }
                Ok((_, answer)) => {
                    s.reset_app();
                    stats.expired.fetch_add(1, Ordering::Relaxed);
                    anyhow::bail!("session {}: resume refused: {}", s.id, refusal(&answer));
                }
                Err(e) => tracing::debug!("tunnel: session {}: try {tries}: {e}", s.id),
            }
            let wait = backoff.take();
            if lost_at.elapsed() + wait > self.settings.resume_within {
                s.reset_app();
                stats.expired.fetch_add(1, Ordering::Relaxed);
                anyhow::bail!(
                    "session {}: no new leg within {:?} ({tries} tries, {unknown} at an exit \
                     that does not hold it); the application's connection was reset",
                    s.id,
                    self.settings.resume_within
                );
            }
            std::thread::sleep(wait);
        }
    }
}

fn refusal(answer: &Frame) -> String {
    match answer {
        Frame::Refuse(reason) => reason.to_string(),
        other => format!("{other:?}"),
    }
}
