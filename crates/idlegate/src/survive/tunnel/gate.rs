//! The exit's gate: accepts connections and holds each one, without a thread of its own, until
//! it has sent a Hello inside an authenticated leg; only then is it handed on.
//!
//! Contract: one thread, one [`Sockets`] set (`mio` on Linux, WSAPoll on Windows); every
//! socket it is given is read until it would block, and the listener, while accepts fail (out
//! of descriptors, say), is out of the set and tried again every 50 ms, so the gate never
//! spins on a socket the set reports level-triggered. A connection gets
//! [`FIRST_MESSAGE_WITHIN`] from its accept to deliver the initiator's whole first Noise
//! message (the initiator sends it as soon as it has connected, so it is due within a round
//! trip), then [`HELLO_WITHIN`] after the answer to deliver its Hello. At most
//! [`MAX_PENDING`] connections wait at once, and at most [`PER_SOURCE`] of those still owing
//! their first message come from one source (an IPv4 address, or an IPv6 /64). A connection beyond the per-source bound takes the place of
//! its source's oldest one still owing its first message, so idle connections can delay
//! nobody: a connection that sends its first message at once is never the oldest. At the
//! total bound, the source that holds the most places gives one up: its oldest connection
//! still owing its first message, or if none does (a recorded first message replayed by the
//! thousand, say), its oldest; so one source cannot keep the others out. Every connection
//! dropped before its Hello ends with a RST (no TIME_WAIT kept for it). Refusals are counted
//! and logged once per episode ([`Episode`]): a line when the first comes, a summary each
//! [`REPORT_EVERY`] while they go on, and one when a quiet [`REPORT_EVERY`] ends them.

use super::frame::{Frame, SessionId, Token, MAX_PLAINTEXT};
use super::leg::{Filled, Leg, LegError, Responding};
use crate::sys::readiness::Sockets;
use crate::sys::socket::{self, Raw};
use slab::Slab;
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long after its accept a connection may take to deliver its first handshake message.
pub const FIRST_MESSAGE_WITHIN: Duration = Duration::from_secs(2);
/// How long after the exit's answer the initiator may take to deliver its Hello.
pub const HELLO_WITHIN: Duration = Duration::from_secs(2);
/// The most connections waiting for their first message or Hello at once.
pub const MAX_PENDING: usize = 1024;
/// The most connections from one source still owing their first message.
pub const PER_SOURCE: usize = 16;
/// How often an episode of refusals is summed up in the log.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);
/// The longest the gate sleeps: it looks at its stop flag and calls `tick` this often.
const TICK: Duration = Duration::from_millis(200);
/// The longest first message of either mode, with its length.
const FIRST_BUF: usize = 2 + 128;

/// The listener's key in the gate's [`Sockets`].
const LISTENER: usize = usize::MAX;

/// A connection that sent a Hello in an authenticated leg.
pub struct Greeted {
    pub leg: Leg,
    pub from: SocketAddr,
    pub session: SessionId,
    pub token: Token,
    pub received: u64,
}

/// What the gate needs from the exit.
pub trait Responder {
    /// The credentials in force now (the peer list may have been reread).
    fn responding(&self) -> Responding<'_>;
    /// Takes a connection that sent its Hello.
    fn greeted(&self, greeted: Greeted);
    /// Called about every 200 ms (`TICK`).
    fn tick(&self);
}

/// Where a connection comes from, for the per-source bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4([u8; 4]),
    /// The /64.
    V6([u8; 8]),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Source::V6(prefix)
                }
            },
        }
    }
}

enum Stage {
    /// Reading the first message: `buf[..got]` so far.
    First {
        /// Taken by the leg once the message is whole.
        stream: Option<TcpStream>,
        buf: [u8; FIRST_BUF],
        got: usize,
    },
    /// Answered; waiting for the Hello.
    Hello { leg: Leg },
}

struct Pending {
    socket: Raw,
    from: SocketAddr,
    source: Source,
    accepted: Instant,
    deadline: Instant,
    stage: Stage,
}

impl Pending {
    fn owes_first(&self) -> bool {
        matches!(self.stage, Stage::First { .. })
    }
}

/// Why a connection was dropped before its Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// No whole first message within [`FIRST_MESSAGE_WITHIN`].
    Slow,
    /// Closed before its Hello.
    Closed,
    /// A first message of the wrong length, or one that fails (a wrong key).
    Handshake,
    /// A per-peer initiator whose key is not listed.
    NotListed,
    /// No valid Hello within [`HELLO_WITHIN`] of the answer (a replayed first message, say).
    NoHello,
    /// Pushed out by a newer connection from its source ([`PER_SOURCE`]).
    Crowded,
    /// Pushed out at [`MAX_PENDING`].
    Full,
}

const REFUSALS: [DropCause; 7] = [
    DropCause::Slow,
    DropCause::Closed,
    DropCause::Handshake,
    DropCause::NotListed,
    DropCause::NoHello,
    DropCause::Crowded,
    DropCause::Full,
];

impl DropCause {
    fn label(self) -> &'static str {
        match self {
            DropCause::Slow => "no first message within 2s",
            DropCause::Closed => "closed early",
            DropCause::Handshake => "failed handshake (wrong key, or not an idlegate tunnel)",
            DropCause::NotListed => "key not on the peers list",
            DropCause::NoHello => "no Hello after the answer",
            DropCause::Crowded => "pushed out by newer ones from the same source",
            DropCause::Full => "pushed out with every place taken",
        }
    }
}

/// Refusals logged by episode: a few lines however many refusals. Returns the lines to log,
/// so that a test can count them.
#[derive(Debug, Default)]
pub struct Episode {
    /// While an episode lasts: when it began and its last refusal.
    open: Option<(Instant, Instant)>,
    last_report: Option<Instant>,
    counts: [u64; REFUSALS.len()],
    since_report: u64,
    total: u64,
    /// The most recent unlisted key, for the summary.
    unlisted: Option<String>,
}

impl Episode {
    /// Counts a refusal; the line to log if it opens an episode.
    pub fn note(
        &mut self,
        why: DropCause,
        from: SocketAddr,
        detail: &str,
        now: Instant,
    ) -> Option<String> {
        let at = REFUSALS.iter().position(|r| *r == why).unwrap_or(0);
        self.counts[at] += 1;
        self.since_report += 1;
        self.total += 1;
        if why == DropCause::NotListed && !detail.is_empty() {
            self.unlisted = Some(detail.to_string());
        }
        match &mut self.open {
            Some((_, last)) => {
                *last = now;
                None
            }
            None => {
                self.open = Some((now, now));
                self.last_report = Some(now);
                self.since_report = 0;
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                };
                Some(format!(
                    "tunnel exit: refused a connection from {from} before its Hello: {}{detail}; \
                     further refusals are counted and summed up every {}s",
                    why.label(),
                    REPORT_EVERY.as_secs()
                ))
            }
        }
    }

    /// The summary to log, if one is due.
    pub fn report(&mut self, now: Instant) -> Option<String> {
        let (began, last) = self.open?;
        let reported = self.last_report.unwrap_or(began);
        if now.saturating_duration_since(last) >= REPORT_EVERY {
            let line = format!(
                "tunnel exit: refusals over; {} in {:.0?} ({})",
                self.total,
                last.saturating_duration_since(began),
                self.breakdown()
            );
            *self = Episode::default();
            return Some(line);
        }
        if now.saturating_duration_since(reported) >= REPORT_EVERY && self.since_report > 0 {
            self.last_report = Some(now);
            let line = format!(
                "tunnel exit: {} connections refused before their Hello in the last {}s, {} since {:.0?} ago ({})",
                self.since_report,
                REPORT_EVERY.as_secs(),
                self.total,
                now.saturating_duration_since(began),
                self.breakdown()
            );
            self.since_report = 0;
            return Some(line);
        }
        None
    }

    fn breakdown(&self) -> String {
        let mut parts: Vec<String> = REFUSALS
            .iter()
            .zip(self.counts)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{n} {}", r.label()))
            .collect();
        if let Some(key) = &self.unlisted {
            parts.push(format!("last unlisted: {key}"));
        }
        parts.join(", ")
    }
}

/// The gate's state.
struct Gate<'a, E: Responder> {
    exit: &'a E,
    sockets: Sockets,
    pending: Slab<Pending>,
    /// Connections still owing their first message, by source.
    owing: HashMap<Source, usize>,
    episode: Episode,
    /// Decrypted Hellos land here.
    plain: Vec<u8>,
}

/// Runs the gate on `listener` until `stop` is set.
pub fn run<E: Responder>(listener: &TcpListener, stop: &AtomicBool, exit: &E) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut sockets = Sockets::new(1024)?;
    sockets.add(socket::raw(listener), LISTENER)?;
    let mut gate = Gate {
        exit,
        sockets,
        pending: Slab::with_capacity(MAX_PENDING),
        owing: HashMap::new(),
        episode: Episode::default(),
        plain: vec![0u8; MAX_PLAINTEXT],
    };
    let mut ready = Vec::with_capacity(1024);
    // After an accept error (out of descriptors, say) the listener is tried again every
    // 50 ms, since an edge-triggered poll (Linux) would not say so again. Meanwhile it is out
    // of the set: a level-triggered one (WSAPoll, Windows) would report it at once, again and
    // again, and the gate would spin.
    let mut accept_again = true;
    let mut listener_watched = true;
    let mut next_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if accept_again {
            accept_again = gate.accept(listener);
        }
        if accept_again == listener_watched {
            if accept_again {
                gate.sockets.remove(socket::raw(listener), LISTENER);
            } else {
                // Added back while connections wait, it is reported at the next wait.
                gate.sockets.add(socket::raw(listener), LISTENER)?;
            }
            listener_watched = !accept_again;
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + TICK;
            exit.tick();
            if let Some(line) = gate.episode.report(now) {
                tracing::warn!("{line}");
            }
        }
        let wake = gate.expire(now).min(next_tick);
        let mut timeout = wake.saturating_duration_since(now);
        if accept_again {
            timeout = timeout.min(Duration::from_millis(50));
        }
        gate.sockets.wait(Some(timeout), &mut ready)?;
        for &key in &ready {
            match key {
                LISTENER => accept_again = true,
                key => gate.drive(key),
            }
        }
    }
    Ok(())
}

impl<E: Responder> Gate<'_, E> {
    /// Accepts until the queue is empty; true if it should be tried again after an error.
    fn accept(&mut self, listener: &TcpListener) -> bool {
        loop {
            match listener.accept() {
                Ok((stream, from)) => self.admit(stream, from),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    tracing::debug!("tunnel exit: accept failed: {e}");
                    return true;
                }
            }
        }
    }

    fn admit(&mut self, stream: TcpStream, from: SocketAddr) {
        // Until its Hello, a connection dropped is reset.
        if socket::reset(&stream).is_err() || stream.set_nonblocking(true).is_err() {
            return;
        }
        let source = Source::of(from.ip());
        let now = Instant::now();
        if self.owing.get(&source).copied().unwrap_or(0) >= PER_SOURCE {
            if let Some(oldest) = self.oldest_owing(Some(source)) {
                self.drop_pending(oldest, DropCause::Crowded, "", now);
            }
        }
        if self.pending.len() >= MAX_PENDING {
            match self.oldest_of_the_largest_source() {
                Some(oldest) => self.drop_pending(oldest, DropCause::Full, "", now),
                None => {
                    self.refused(DropCause::Full, from, "", now);
                    return;
                }
            }
        }
        let raw = socket::raw(&stream);
        let key = self.pending.insert(Pending {
            socket: raw,
            from,
            source,
            accepted: now,
            deadline: now + FIRST_MESSAGE_WITHIN,
            stage: Stage::First {
                stream: Some(stream),
                buf: [0; FIRST_BUF],
                got: 0,
            },
        });
        *self.owing.entry(source).or_insert(0) += 1;
        if self.sockets.add(raw, key).is_err() {
            self.remove(key);
            return;
        }
        // Its first message is often there already.
        self.drive(key);
    }

    /// The connection of `source` owing its first message that was accepted first.
    fn oldest_owing(&self, source: Option<Source>) -> Option<usize> {
        self.pending
            .iter()
            .filter(|(_, p)| p.owes_first() && source.is_none_or(|s| s == p.source))
            .min_by_key(|(_, p)| p.accepted)
            .map(|(key, _)| key)
    }

    /// The connection the source that holds the most places gives up: its oldest still owing
    /// its first message, else its oldest.
    fn oldest_of_the_largest_source(&self) -> Option<usize> {
        let mut held: HashMap<Source, usize> = HashMap::new();
        for (_, p) in self.pending.iter() {
            *held.entry(p.source).or_insert(0) += 1;
        }
        let (largest, _) = held.into_iter().max_by_key(|(_, n)| *n)?;
        self.oldest_owing(Some(largest)).or_else(|| {
            self.pending
                .iter()
                .filter(|(_, p)| p.source == largest)
                .min_by_key(|(_, p)| p.accepted)
                .map(|(key, _)| key)
        })
    }

    /// Takes a connection out of the gate (deregistered; the caller drops or hands it on).
    fn remove(&mut self, key: usize) -> Pending {
        let p = self.pending.remove(key);
        self.sockets.remove(p.socket, key);
        if p.owes_first() {
            self.forget_owing(p.source);
        }
        p
    }

    fn forget_owing(&mut self, source: Source) {
        if let Some(n) = self.owing.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.owing.remove(&source);
            }
        }
    }

    fn drop_pending(&mut self, key: usize, why: DropCause, detail: &str, now: Instant) {
        let p = self.remove(key);
        self.refused(why, p.from, detail, now);
    }

    fn refused(&mut self, why: DropCause, from: SocketAddr, detail: &str, now: Instant) {
        tracing::debug!("tunnel exit: {from}: {}{detail}", why.label());
        if let Some(line) = self.episode.note(why, from, detail, now) {
            tracing::warn!("{line}");
        }
    }

    /// Drops the connections past their deadline; returns the next deadline.
    fn expire(&mut self, now: Instant) -> Instant {
        let late: Vec<(usize, DropCause)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(key, p)| {
                let why = if p.owes_first() {
                    DropCause::Slow
                } else {
                    DropCause::NoHello
                };
                (key, why)
            })
            .collect();
        for (key, why) in late {
            self.drop_pending(key, why, "", now);
        }
        self.pending
            .iter()
            .map(|(_, p)| p.deadline)
            .min()
            .unwrap_or(now + TICK)
    }

    /// Reads what connection `key` has sent and moves it on as far as that allows.
    fn drive(&mut self, key: usize) {
        let now = Instant::now();
        loop {
            let Some(p) = self.pending.get_mut(key) else {
                return;
            };
            match &mut p.stage {
                Stage::First { stream, buf, got } => {
                    let want = if *got < 2 {
                        2
                    } else {
                        2 + u16::from_be_bytes([buf[0], buf[1]]) as usize
                    };
                    if *got == want {
                        self.answer(key, now);
                        continue;
                    }
                    if want > FIRST_BUF {
                        self.drop_pending(key, DropCause::Handshake, "", now);
                        return;
                    }
                    let Some(stream) = stream else {
                        // Never left so (`answer` takes it and moves on); if it were, it
                        // would be reported readable again and again: drop it.
                        return self.drop_pending(key, DropCause::Handshake, "", now);
                    };
                    match stream.read(&mut buf[*got..want]) {
                        Ok(0) => return self.drop_pending(key, DropCause::Closed, "", now),
                        Ok(n) => *got += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return self.drop_pending(key, DropCause::Closed, "", now),
                    }
                }
                Stage::Hello { leg } => {
                    match leg.next_frame(&mut self.plain) {
                        Ok(Some(n)) => return self.hello(key, n, now),
                        Ok(None) => {}
                        Err(_) => return self.drop_pending(key, DropCause::NoHello, "", now),
                    }
                    match leg.fill() {
                        Ok(Filled::Bytes(_)) => {}
                        Ok(Filled::WouldBlock) => return,
                        Ok(Filled::Eof) | Err(_) => {
                            return self.drop_pending(key, DropCause::Closed, "", now)
                        }
                    }
                }
            }
        }
    }

    /// Connection `key` delivered its whole first message: answer it, or drop it.
    fn answer(&mut self, key: usize, now: Instant) {
        let Some(p) = self.pending.get_mut(key) else {
            return;
        };
        let Stage::First { stream, buf, got } = &mut p.stage else {
            return;
        };
        let (first, len) = (*buf, *got);
        let Some(stream) = stream.take() else {
            return self.drop_pending(key, DropCause::Handshake, "", now);
        };
        let keys = self.exit.responding();
        match Leg::answer(stream, &first[2..len], &keys, now + HELLO_WITHIN) {
            Ok(leg) => {
                let source = p.source;
                p.stage = Stage::Hello { leg };
                p.deadline = now + HELLO_WITHIN;
                self.forget_owing(source);
            }
            Err(LegError::NotListed(peer)) => {
                self.drop_pending(key, DropCause::NotListed, &format!("key {peer}"), now)
            }
            Err(_) => self.drop_pending(key, DropCause::Handshake, "", now),
        }
    }

    /// Connection `key` sent its first frame (`n` bytes in `plain`): a Hello is handed on.
    fn hello(&mut self, key: usize, n: usize, now: Instant) {
        let (session, token, received) = match Frame::decode(&self.plain[..n]) {
            Ok(Frame::Hello {
                session,
                token,
                received,
            }) => (session, token, received),
            _ => return self.drop_pending(key, DropCause::NoHello, "", now),
        };
        let p = self.remove(key);
        let Stage::Hello { leg } = p.stage else {
            return;
        };
        // From here on an orderly close.
        let _ = socket::orderly(&*leg.socket());
        self.exit.greeted(Greeted {
            leg,
            from: p.from,
            session,
            token,
            received,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_refusals_in_an_episode_make_three_log_lines() {
        let mut e = Episode::default();
        let t0 = Instant::now();
        let from: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let mut lines = Vec::new();
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_millis(i * 9); // 90 s of refusals
            lines.extend(e.note(DropCause::Slow, from, "", now));
            lines.extend(e.report(now));
        }
        let end = t0 + Duration::from_millis(90_000);
        lines.extend(e.report(end + REPORT_EVERY));
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].contains("192.0.2.1:4000"), "{}", lines[0]);
        assert!(
            lines[1].contains("refused before their Hello"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("refusals over; 10000"), "{}", lines[2]);
        assert_eq!(e.report(end + REPORT_EVERY * 3), None, "quiet");
        assert!(
            e.note(DropCause::Closed, from, "", end).is_some(),
            "a new episode"
        );
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let a = Source::of("fd00:1:2:3::1".parse().unwrap());
        let b = Source::of("fd00:1:2:3:ffff::9".parse().unwrap());
        let c = Source::of("fd00:1:2:4::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            Source::of("::ffff:192.0.2.7".parse().unwrap()),
            Source::of("192.0.2.7".parse().unwrap())
        );
    }
}
