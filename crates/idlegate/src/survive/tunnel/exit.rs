//! The exit's legs once greeted: a new session is started and handed to a worker; a resume
//! is offered to the session it names.
//!
//! Contract: [`ExitLeg::serve`] runs on the gate's thread and never blocks. A new session is
//! put in the table and goes to a [`super::worker`] with an [`ExitCarried`] while its
//! connection to the target is being made; on that worker it says Welcome once connected (or
//! refuses, the target unreachable), waits, when its leg is lost, for a new one until
//! `resume_within` (the offer wakes the worker), and ends when its peer is taken off the list.
//! A resume is checked (token, peer, still listed) and offered to the session's slot, or
//! refused (ended here lately, or unknown). A refusal is sealed in the leg, which a worker then
//! closes in order, never blocking the gate's thread nor lost to a RST. A session that ends
//! whole on its leg says Done there and leaves the leg idle in its worker's [`super::pool`],
//! whose next Hello is served here as the gate's are ([`Greeter`]), on that worker.

use super::ended::Ended;
use super::frame::{Frame, Refusal, SessionId, Token};
use super::leg::{ExitKeys, Leg, Peer};
use super::pool::Greeter;
use super::session::{LegEnd, Session, Side, Whole};
use super::stream::StreamError;
use super::worker::{Bell, Carried, Closer, Job, Woken, Workers};
use super::{gate, random, still_listed, Open, Settings, Slot};
use crate::survive::stats::Stats;
use crate::sys::socket;
use crate::sys::socket::Raw;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the exit needs to serve one leg.
pub(super) struct ExitLeg {
    pub(super) workers: Arc<Workers>,
    pub(super) connect: SocketAddr,
    pub(super) keys: Arc<ExitKeys>,
    pub(super) settings: Settings,
    pub(super) stats: Arc<Stats>,
    pub(super) sessions: Arc<Mutex<HashMap<SessionId, Arc<Slot>>>>,
    pub(super) ended: Arc<Mutex<Ended>>,
}

impl ExitLeg {
    /// Starts the session a leg greeted in the gate asks for, or hands the leg to the session
    /// it resumes (if that session is its peer's).
    pub(super) fn serve(self: &Arc<Self>, greeted: gate::Greeted) -> Result<()> {
        greeted.leg.go_nonblocking()?;
        self.stats.legs_dialed.fetch_add(1, Ordering::Relaxed);
        self.hello(greeted, None)
    }

    /// Serves a Hello on a non-blocking leg (greeted in the gate, or idle after a session on
    /// the worker whose bell is `here`: a new session stays there).
    fn hello(self: &Arc<Self>, greeted: gate::Greeted, here: Option<&Arc<Bell>>) -> Result<()> {
        let gate::Greeted {
            leg,
            from,
            session,
            token,
            received,
        } = greeted;
        if session == SessionId::NEW {
            return self.start(leg, from, here);
        }
        let slot = self
            .sessions
            .lock()
            .map_err(|_| anyhow::anyhow!("session table poisoned"))?
            .get(&session)
            .cloned();
        match slot {
            Some(slot) if slot.token.matches(&token) && slot.peer.key() == leg.peer().key() => {
                // The gate answered under the list in force then; the peer may have been
                // taken off it since. (If it was, the reread marks the session revoked too.)
                if !still_listed(&self.keys, &slot.peer) {
                    self.refuse(leg, Refusal::Ended);
                    anyhow::bail!(
                        "resume of session {session} refused: {} was taken off the peers list",
                        slot.peer
                    );
                }
                if let Ok(mut offer) = slot.offer.lock() {
                    *offer = Some((leg, received));
                }
                slot.wake().context("waking the session")?;
                Ok(())
            }
            _ => {
                // Not held here: ended here lately (said so), or unknown (another exit may
                // hold it).
                let refusal = self.ended.lock().map_or(Refusal::UnknownSession, |e| {
                    e.refusal(session, &token, Instant::now())
                });
                self.refuse(leg, refusal);
                anyhow::bail!("resume of session {session} refused: {refusal}");
            }
        }
    }

    /// Answers a leg with a refusal, then closes it in order on a worker: the refusal arrives
    /// before the FIN, and is never lost to a RST (a socket closed with unread bytes resets).
    fn refuse(&self, mut leg: Leg, refusal: Refusal) {
        if leg.send(&Frame::Refuse(refusal)).is_ok() {
            self.workers.close(leg, self.settings.leg_timeout());
        }
    }

    /// A new session: connect to the target, welcome the entry, and hand the session to a
    /// worker (`here` if given, else the one that holds the fewest).
    fn start(self: &Arc<Self>, leg: Leg, from: SocketAddr, here: Option<&Arc<Bell>>) -> Result<()> {
        // One call for both.
        let drawn: [u8; 48] = random()?;
        let (mut id, mut token) = (SessionId::default(), Token::default());
        id.0.copy_from_slice(&drawn[..16]);
        token.0.copy_from_slice(&drawn[16..]);
        let peer = leg.peer().clone();
        let tag = peer.tag();
        let bell = match here {
            Some(here) => here.clone(),
            None => self
                .workers
                .next()
                .context("the tunnel exit has no worker")?,
        };
        let slot = Arc::new(Slot::new(token, peer.clone(), bell.clone()));
        {
            let mut sessions = self
                .sessions
                .lock()
                .map_err(|_| anyhow::anyhow!("session table poisoned"))?;
            // Checked with the table locked: a reread that takes the peer off the list after
            // this finds the session in the table and ends it; one before, and the peer gets
            // nothing (the gate answered it under the list in force then). Closed unanswered,
            // as the gate refuses a key it does not know.
            if !still_listed(&self.keys, &peer) {
                drop(sessions);
                drop(leg);
                anyhow::bail!("refused a new session: {peer} was taken off the peers list");
            }
            if sessions.len() >= self.settings.max_sessions {
                drop(sessions);
                self.refuse(leg, Refusal::Full);
                anyhow::bail!("refused a new session: {} held", self.settings.max_sessions);
            }
            sessions.insert(id, slot.clone());
        }
        let forget = Forget {
            sessions: self.sessions.clone(),
            ended: self.ended.clone(),
            id,
            token,
            welcomed: false,
            whole: false,
        };
        let app = match socket::connect_started(self.connect) {
            Ok(app) => app,
            Err(e) => {
                self.refuse(leg, Refusal::TargetUnreachable);
                return Err(e).with_context(|| format!("connecting to {}", self.connect));
            }
        };
        let _ = self.settings.keepalive.apply_relayed(&app);
        let session = Session::new(
            id,
            token,
            app,
            Side::Exit,
            self.settings.replay_buffer,
            self.settings.heartbeat,
            self.stats.clone(),
        )?;
        let carried = ExitCarried {
            serving: self.clone(),
            slot,
            forget,
            open: None,
            settings: self.settings.clone(),
            stats: self.stats.clone(),
            id,
            tag,
            peer,
            from,
            connect: self.connect,
            phase: Phase::Connecting(
                Box::new(leg),
                Instant::now() + self.settings.target_connect_timeout(),
            ),
        };
        let place = carried.slot.place.clone();
        let job = Job {
            session,
            leg: None,
            place: Some(place),
            carried: Box::new(carried),
        };
        if self.workers.give(&bell, job).is_err() {
            anyhow::bail!("session {id}: the tunnel exit's workers have stopped");
        }
        Ok(())
    }
}

/// Where an exit's session stands.
enum Phase {
    /// Its connection to the target being made, until then at the latest; its first leg
    /// waits for the Welcome.
    Connecting(Box<Leg>, Instant),
    /// On a leg (the worker holds it).
    Live,
    /// Without a leg since then, for a new one until `resume_within`.
    Waiting(Instant),
    /// Over (a step after this is never asked for).
    Gone,
}

impl Greeter for ExitLeg {
    fn greeted(self: Arc<Self>, greeted: gate::Greeted, here: &Arc<Bell>) {
        let from = greeted.from;
        // Never blocks: a new session's connect is the worker's.
        if let Err(e) = self.hello(greeted, Some(here)) {
            tracing::info!("tunnel: leg from {from}: {e:#}");
        }
    }

    fn keeps(&self, peer: &Peer) -> bool {
        still_listed(&self.keys, peer)
    }
}

/// An exit's session on its worker.
struct ExitCarried {
    /// What serves the next Hello on its leg once it ended whole there.
    serving: Arc<ExitLeg>,
    slot: Arc<Slot>,
    forget: Forget,
    /// Counted as open from its Welcome.
    open: Option<Open>,
    settings: Settings,
    stats: Arc<Stats>,
    id: SessionId,
    tag: String,
    peer: Peer,
    /// Where its first leg came from, and its target.
    from: SocketAddr,
    connect: SocketAddr,
    phase: Phase,
}

impl ExitCarried {
    /// The connect to the target is over (`outcome`): the Welcome on the first leg, or a
    /// refusal (the leg closed in order, so that it arrives).
    fn connected(
        &mut self,
        s: &mut Session,
        mut leg: Box<Leg>,
        outcome: io::Result<()>,
        closer: &mut Closer,
    ) -> Woken {
        let id = self.id;
        let said = match outcome {
            Err(e) => {
                let e = crate::sys::timeout::explain(e, self.settings.target_connect_timeout());
                Err(anyhow::Error::from(e).context(format!("connecting to {}", self.connect)))
            }
            Ok(()) => leg
                .send(&Frame::Welcome {
                    session: id,
                    token: s.token,
                    received: 0,
                })
                .map_err(anyhow::Error::from),
        };
        if let Err(e) = said {
            let _ = leg.send(&Frame::Refuse(Refusal::TargetUnreachable));
            closer.close(*leg, Instant::now() + self.settings.leg_timeout());
            tracing::info!("tunnel: leg from {}: {e:#}", self.from);
            self.phase = Phase::Gone;
            return Woken::Over(None);
        }
        tracing::debug!(
            "tunnel: session {id} opened for {} from {}",
            self.peer,
            self.from
        );
        self.forget.welcomed = true;
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.open = Some(Open(self.stats.clone()));
        self.phase = Phase::Live;
        Woken::Leg(leg)
    }

    /// A new leg offered, or the session revoked or expired.
    fn offered(&mut self, s: &mut Session, waiting: Option<Instant>, closer: &mut Closer) -> Woken {
        let id = self.id;
        let expired =
            waiting.is_some_and(|since| Instant::now() >= since + self.settings.resume_within);
        if !self.slot.woken.swap(false, Ordering::AcqRel) && !expired {
            return Woken::Nothing;
        }
        let offer = self.slot.offer.lock().ok().and_then(|mut o| o.take());
        if self.slot.revoked.load(Ordering::Relaxed) {
            s.reset_app();
            if let Some((mut new_leg, _)) = offer {
                // Offered before the reread: told the session is over.
                if new_leg.send(&Frame::Refuse(Refusal::Ended)).is_ok() {
                    closer.close(new_leg, Instant::now() + self.settings.leg_timeout());
                }
            }
            self.stats.resets.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                "tunnel: session {id}: {} was taken off the peers list; session reset",
                self.peer
            );
            self.phase = Phase::Gone;
            return Woken::Over(waiting.is_none().then_some(self.settings.heartbeat));
        }
        let Some((mut new_leg, received)) = offer else {
            if expired {
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "tunnel: session {id}: not resumed within {:?}; the server's connection was \
                     reset",
                    self.settings.resume_within
                );
                self.phase = Phase::Gone;
                return Woken::Over(None);
            }
            return Woken::Nothing;
        };
        let replayed = match s.resume(received) {
            Ok(n) => n,
            // A leg the entry gave up on, overtaken by a newer one: drop it.
            Err(StreamError::ResumeBeforeAcked { .. }) => {
                tracing::debug!("tunnel: session {id}: a stale leg dropped");
                return Woken::Nothing;
            }
            Err(e) => {
                tracing::info!("tunnel: session {id}: cannot resume: {e}");
                self.phase = Phase::Gone;
                return Woken::Over(None);
            }
        };
        // Written by the worker's next turn, ahead of everything else on the leg.
        let welcomed = new_leg.send(&Frame::Welcome {
            session: id,
            token: s.token,
            received: s.received(),
        });
        if let Err(e) = welcomed {
            tracing::debug!("tunnel: session {id}: a new leg failed at once: {e}");
            self.phase = Phase::Waiting(waiting.unwrap_or_else(Instant::now));
            return Woken::Wait;
        }
        match waiting {
            Some(since) => tracing::info!(
                "tunnel: session {id}{} resumed after {:.1?}; {replayed} bytes sent again",
                self.tag,
                since.elapsed()
            ),
            None => tracing::info!(
                "tunnel: session {id} moved to a newer leg; {replayed} bytes sent again"
            ),
        }
        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        self.phase = Phase::Live;
        Woken::Leg(Box::new(new_leg))
    }
}

impl Carried for ExitCarried {
    fn leg_ended(&mut self, _: &mut Session, end: LegEnd, leg: Leg, closer: &mut Closer) -> bool {
        let id = self.id;
        match end {
            LegEnd::Done(Whole::OnLeg) => {
                self.forget.whole = true;
                // Nothing of this session follows Done on the leg: the entry may send its
                // next Hello there. Said only if the leg will wait for it (else the entry
                // would send a Hello into a leg closing: without Done it sees the close).
                let mut leg = leg;
                let within = self.settings.leg_timeout();
                if closer.pool.would_idle(&leg) && leg.send(&Frame::Done).is_ok() {
                    let serving: Arc<dyn Greeter> = self.serving.clone();
                    let from = self.from;
                    closer.pool.idle(leg, serving, from, &self.stats, within);
                } else {
                    closer.close(leg, Instant::now() + within);
                }
            }
            LegEnd::Done(Whole::Freed | Whole::WithoutLeg) => {
                self.forget.whole = true;
                closer.close(leg, Instant::now() + self.settings.leg_timeout());
            }
            LegEnd::AppReset { told } => {
                if told {
                    closer.close(leg, Instant::now() + self.settings.heartbeat);
                }
            }
            LegEnd::PeerReset => {}
            LegEnd::Violation(why) => {
                tracing::info!("tunnel: session {id}: the entry broke the protocol: {why}");
            }
            LegEnd::Lost(why) => {
                tracing::info!(
                    "tunnel: session {id}{}: leg lost ({why}); waiting for the entry",
                    self.tag
                );
                self.phase = Phase::Waiting(Instant::now());
                return true;
            }
        }
        self.phase = Phase::Gone;
        false
    }

    fn step(&mut self, s: &mut Session, _live: bool, closer: &mut Closer) -> Woken {
        match std::mem::replace(&mut self.phase, Phase::Gone) {
            Phase::Connecting(leg, until) => {
                // Stepped when it came to the worker: a wake before then (its peer revoked;
                // no leg can be offered before the Welcome) is seen here.
                self.slot.woken.store(false, Ordering::Release);
                if self.slot.revoked.load(Ordering::Relaxed) {
                    // Closed unanswered, as the gate refuses a key it does not know.
                    drop(leg);
                    tracing::info!(
                        "tunnel: leg from {}: refused a new session: {} was taken off the peers \
                         list",
                        self.from,
                        self.peer
                    );
                    return Woken::Over(None);
                }
                let outcome = match socket::connected(s.app()) {
                    Ok(true) => Ok(()),
                    Ok(false) if Instant::now() < until => {
                        self.phase = Phase::Connecting(leg, until);
                        return Woken::Nothing;
                    }
                    Ok(false) => Err(io::Error::from(io::ErrorKind::TimedOut)),
                    Err(e) => Err(e),
                };
                self.connected(s, leg, outcome, closer)
            }
            Phase::Live => {
                self.phase = Phase::Live;
                self.offered(s, None, closer)
            }
            Phase::Waiting(since) => {
                self.phase = Phase::Waiting(since);
                self.offered(s, Some(since), closer)
            }
            Phase::Gone => Woken::Nothing,
        }
    }

    fn watch(&self, s: &Session) -> (Option<(Raw, bool, bool)>, Instant) {
        match &self.phase {
            // Writable (or failed) once the connect is over.
            Phase::Connecting(_, until) => (Some((s.app_raw(), false, true)), *until),
            Phase::Waiting(since) => (None, *since + self.settings.resume_within),
            Phase::Live | Phase::Gone => (None, Instant::now() + self.settings.heartbeat),
        }
    }
}

/// Removes a session from the exit's table when it is dropped, however it ends, and notes
/// how it ended for an entry that comes to resume it (if the entry was told of it at all).
struct Forget {
    sessions: Arc<Mutex<HashMap<SessionId, Arc<Slot>>>>,
    ended: Arc<Mutex<Ended>>,
    id: SessionId,
    token: Token,
    /// The entry was given the id and token.
    welcomed: bool,
    /// Finished in order.
    whole: bool,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(&self.id);
        }
        if !self.welcomed {
            return;
        }
        if let Ok(mut ended) = self.ended.lock() {
            ended.note(self.id, self.token, self.whole, Instant::now());
        }
    }
}
