//! One direction of a resumable tunnel: the application's bytes, delivered exactly once and in
//! order across a leg that may break at any moment. Pure: no sockets.
//!
//! Every byte has an offset in the direction's stream. The sending side keeps an [`Outbox`]:
//! bytes written by the application and not yet acknowledged by the other end, bounded, so a
//! full outbox stops the relay from reading the application (backpressure, never a drop). The
//! receiving side keeps an [`Inbox`]: the offset it expects next, and the bytes that arrived
//! but the application has not taken yet. Data frames carry their offset; acknowledgements
//! carry the receiver's next offset. When a leg breaks, whatever was in flight may be lost: on
//! the new leg the receiver says where it stands, the sender rewinds to that point
//! ([`Outbox::resume_from`]) and sends again. The inbox drops what it already has, so a byte is
//! never delivered twice, and refuses a gap, so none is skipped.
//!
//! Flow control is a window per direction, as in TCP: the receiver grants the offset up to
//! which the sender may send ([`Inbox::limit`]: what its application has taken, plus the
//! window), the sender never sends past the last grant it heard ([`Outbox::grant`]), and data
//! past it is a broken peer ([`StreamError::BeyondWindow`]). So the receiver can always read
//! its leg to the end, and with it every acknowledgement and heartbeat behind the data, while
//! what waits for a slow application stays within the window. Grants only grow (what the
//! application took stays taken), so a grant outlives the leg that carried it. Until the first
//! grant arrives the sender may send [`INITIAL_WINDOW`] bytes.
//!
//! The application's FIN (it finished writing) takes one offset after its last byte, as in
//! TCP's sequence space: it is sent, acknowledged and replayed like a byte, so a half-close
//! survives a broken leg too. It needs no room in the window.

use std::collections::VecDeque;
use thiserror::Error;

/// A peer that breaks the stream's rules: the tunnel must end, not guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StreamError {
    #[error("acknowledgement of offset {ack}, but only {sent} bytes were sent")]
    AckBeyondSent { ack: u64, sent: u64 },
    #[error("resume from offset {from}, but bytes before {acked} were already acknowledged")]
    ResumeBeforeAcked { from: u64, acked: u64 },
    #[error("resume from offset {from}, beyond the {sent} bytes sent")]
    ResumeBeyondSent { from: u64, sent: u64 },
    #[error("data at offset {offset} while expecting {expected}: a gap")]
    Gap { offset: u64, expected: u64 },
    #[error("data at offset {offset} after the FIN at {fin}")]
    DataAfterFin { offset: u64, fin: u64 },
    #[error("FIN at offset {offset} while expecting {expected}")]
    FinMisplaced { offset: u64, expected: u64 },
    #[error("data up to offset {end}, past the window granted up to {limit}")]
    BeyondWindow { end: u64, limit: u64 },
}

/// What a sender may send before the receiver's first grant: one frame's worth, the smallest
/// window a receiver may have.
pub const INITIAL_WINDOW: u64 = crate::survive::tunnel::frame::MAX_DATA as u64;

/// What an outbox sends next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    /// Bytes at `offset`, in one or two slices (the outbox is a ring).
    Data {
        offset: u64,
        bytes: (&'a [u8], &'a [u8]),
    },
    /// The application finished writing: nothing follows `offset`.
    Fin { offset: u64 },
}

/// Makes room in `ring` for `more` bytes: its capacity doubles, up to `bound` (or what is
/// needed, if more).
fn grow(ring: &mut VecDeque<u8>, more: usize, bound: usize) {
    let needed = ring.len() + more;
    if needed > ring.capacity() {
        let grown = (ring.capacity() * 2).clamp(needed, bound.max(needed));
        ring.reserve_exact(grown - ring.len());
    }
}

/// Bytes written by the application, kept until the other end acknowledges them.
#[derive(Debug)]
pub struct Outbox {
    /// Unacknowledged bytes; `buf[0]` is at offset `acked`.
    buf: VecDeque<u8>,
    acked: u64,
    /// The next offset to send (on this leg).
    sent: u64,
    /// The offset of the application's FIN, once it finished writing.
    fin_at: Option<u64>,
    limit: usize,
    /// The receiver's window: data may be sent below this offset.
    granted: u64,
}

impl Outbox {
    /// An outbox that holds at most `limit` unacknowledged bytes.
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            buf: VecDeque::new(),
            acked: 0,
            sent: 0,
            fin_at: None,
            limit,
            granted: INITIAL_WINDOW,
        }
    }

    /// How many more bytes the application may write now (none after its FIN).
    pub fn room(&self) -> usize {
        if self.fin_at.is_some() {
            return 0;
        }
        self.limit - self.buf.len()
    }

    /// Takes as much of `bytes` as there is room for; returns how much. The ring grows (by
    /// doubling) to the limit at most, as it is needed.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        grow(&mut self.buf, n, self.limit);
        self.buf.extend(&bytes[..n]);
        n
    }

    /// Gives back the ring's room if it is empty (every byte acknowledged).
    pub fn trim(&mut self) {
        if self.buf.is_empty() {
            self.buf = VecDeque::new();
        }
    }

    /// The bytes the ring holds allocated.
    pub fn buffered(&self) -> usize {
        self.buf.capacity()
    }

    /// The application finished writing: a FIN follows its last byte.
    pub fn finish(&mut self) {
        if self.fin_at.is_none() {
            self.fin_at = Some(self.acked + self.buf.len() as u64);
        }
    }

    /// What to send next, at most `max` bytes and nothing past the receiver's window; it
    /// counts as sent.
    pub fn next(&mut self, max: usize) -> Option<Next<'_>> {
        if self.fin_at == Some(self.sent) {
            self.sent += 1;
            return Some(Next::Fin {
                offset: self.sent - 1,
            });
        }
        let start = usize::try_from(self.sent - self.acked).ok()?;
        let window = usize::try_from(self.granted.saturating_sub(self.sent)).unwrap_or(usize::MAX);
        let end = self.buf.len().min(start.saturating_add(max.min(window)));
        if start >= end {
            return None;
        }
        let offset = self.sent;
        self.sent += (end - start) as u64;
        let (a, b) = self.buf.as_slices();
        let bytes = if end <= a.len() {
            (&a[start..end], &b[..0])
        } else if start >= a.len() {
            (&b[start - a.len()..end - a.len()], &b[..0])
        } else {
            (&a[start..], &b[..end - a.len()])
        };
        Some(Next::Data { offset, bytes })
    }

    /// The receiver took its application's bytes up to where it may now receive `limit`:
    /// grants only grow, so an older one (from a leg given up on) changes nothing.
    pub fn grant(&mut self, limit: u64) {
        self.granted = self.granted.max(limit);
    }

    /// Whether something may be sent now: bytes within the receiver's window, or the FIN.
    pub fn sendable(&self) -> bool {
        let unsent = self.acked + self.buf.len() as u64;
        self.fin_at == Some(self.sent) || self.sent < unsent.min(self.granted)
    }

    /// Whether bytes wait that the receiver's window does not let out: its application is
    /// not reading.
    pub fn window_closed(&self) -> bool {
        self.sent >= self.granted && self.sent < self.acked + self.buf.len() as u64
    }

    /// Whether the other end has acknowledged the FIN (and so every byte).
    pub fn fin_acked(&self) -> bool {
        self.fin_at.is_some_and(|fin| self.acked > fin)
    }

    /// The offset after the last thing sent on this leg.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The other end has every byte before `offset`: they leave the outbox.
    pub fn ack(&mut self, offset: u64) -> Result<(), StreamError> {
        if offset > self.sent {
            return Err(StreamError::AckBeyondSent {
                ack: offset,
                sent: self.sent,
            });
        }
        if offset > self.acked {
            let n = usize::try_from(offset - self.acked)
                .map_or(self.buf.len(), |n| n.min(self.buf.len()));
            self.buf.drain(..n);
            self.acked = offset;
        }
        Ok(())
    }

    /// On a new leg, the other end has every byte before `offset`: send again from there.
    pub fn resume_from(&mut self, offset: u64) -> Result<(), StreamError> {
        if offset < self.acked {
            return Err(StreamError::ResumeBeforeAcked {
                from: offset,
                acked: self.acked,
            });
        }
        if offset > self.sent {
            return Err(StreamError::ResumeBeyondSent {
                from: offset,
                sent: self.sent,
            });
        }
        self.ack(offset)?;
        self.sent = offset;
        Ok(())
    }

    /// Bytes written and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.buf.len()
    }

    /// The offset of the first unacknowledged byte.
    pub fn acked(&self) -> u64 {
        self.acked
    }
}

/// Where the receiving side of a direction stands, and the bytes that arrived and wait for the
/// application (at most the window).
#[derive(Debug)]
pub struct Inbox {
    next: u64,
    fin: bool,
    /// Arrived, not yet taken by the application: the stream's bytes just before `next`. A
    /// ring that grows (by doubling) to the window at most, as it is needed.
    held: VecDeque<u8>,
    window: usize,
}

impl Inbox {
    /// An inbox that lets the sender get at most `window` bytes ahead of the application
    /// (at least [`INITIAL_WINDOW`], which a sender assumes before it hears a grant).
    pub fn new(window: usize) -> Inbox {
        Inbox {
            next: 0,
            fin: false,
            held: VecDeque::new(),
            window,
        }
    }

    /// Takes a data frame at `offset`: keeps the part not received before (none for a replay
    /// of what the inbox has) and returns its length. A gap, data past the window or past the
    /// FIN is an error, and nothing is kept.
    pub fn accept(&mut self, offset: u64, bytes: &[u8]) -> Result<usize, StreamError> {
        if offset > self.next {
            return Err(StreamError::Gap {
                offset,
                expected: self.next,
            });
        }
        let skip = usize::try_from(self.next - offset).unwrap_or(usize::MAX);
        let new = bytes.get(skip..).unwrap_or(&[]);
        if new.is_empty() {
            return Ok(0);
        }
        if self.fin {
            return Err(StreamError::DataAfterFin {
                offset,
                fin: self.next,
            });
        }
        let end = self.next + new.len() as u64;
        if end > self.limit() {
            return Err(StreamError::BeyondWindow {
                end,
                limit: self.limit(),
            });
        }
        grow(&mut self.held, new.len(), self.window);
        self.held.extend(new);
        self.next = end;
        Ok(new.len())
    }

    /// Takes the peer's FIN at `offset`: true the first time, false for a replay of it.
    pub fn accept_fin(&mut self, offset: u64) -> Result<bool, StreamError> {
        match (self.fin, offset == self.next) {
            (false, true) => {
                self.fin = true;
                Ok(true)
            }
            (true, true) => Ok(false),
            _ => Err(StreamError::FinMisplaced {
                offset,
                expected: self.next,
            }),
        }
    }

    /// Gives back the ring's room if it is empty (the application took every byte).
    pub fn trim(&mut self) {
        if self.held.is_empty() {
            self.held = VecDeque::new();
        }
    }

    /// The bytes the ring holds allocated.
    pub fn buffered(&self) -> usize {
        self.held.capacity()
    }

    /// How many bytes wait for the application.
    pub fn pending(&self) -> usize {
        self.held.len()
    }

    /// The oldest bytes waiting for the application, in one piece (more may follow once they
    /// are taken); empty when none wait.
    pub fn pending_front(&self) -> &[u8] {
        match self.held.as_slices() {
            ([], back) => back,
            (front, _) => front,
        }
    }

    /// The application took the first `n` pending bytes.
    pub fn consume(&mut self, n: usize) {
        self.held.drain(..n.min(self.held.len()));
    }

    /// The window's end: the sender may send the bytes before this offset. It only grows.
    pub fn limit(&self) -> u64 {
        self.next - self.held.len() as u64 + self.window as u64
    }

    /// How many bytes the sender may be ahead of the application.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Whether the peer's application has finished writing.
    pub fn finished(&self) -> bool {
        self.fin
    }

    /// Everything before this offset has been received (the FIN counts one): what
    /// acknowledgements and resumes say.
    pub fn received(&self) -> u64 {
        self.next + u64::from(self.fin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame on the leg, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Frame {
        Data(u64, Vec<u8>),
        Fin(u64),
    }

    #[test]
    fn an_outbox_holds_no_room_until_bytes_need_it_and_gives_it_back_once_acknowledged() {
        let mut out = Outbox::new(16 << 20);
        assert_eq!(out.buffered(), 0, "a new session's outbox holds nothing");
        out.grant(u64::MAX);
        let chunk = vec![7u8; 64 << 10];
        for _ in 0..64 {
            assert_eq!(out.push(&chunk), chunk.len());
            while out.next(usize::MAX).is_some() {}
        }
        assert!(out.buffered() >= 4 << 20);
        assert!(out.buffered() <= 8 << 20, "it doubles, no further");
        out.ack(4 << 20).unwrap();
        out.trim();
        assert_eq!(out.buffered(), 0, "an empty outbox gives its room back");
        // It takes bytes again, from nothing.
        assert_eq!(out.push(b"again"), 5);
        assert!(out.buffered() < 1 << 10);
    }

    #[test]
    fn an_outbox_grows_no_further_than_its_limit() {
        let mut out = Outbox::new(100_000);
        let chunk = vec![1u8; 60_000];
        assert_eq!(out.push(&chunk), 60_000);
        assert_eq!(out.push(&chunk), 40_000);
        assert!(out.buffered() <= 100_000 + 16, "{}", out.buffered());
    }

    #[test]
    fn an_inbox_gives_its_room_back_once_the_application_took_every_byte() {
        let mut inbox = Inbox::new(8 << 20);
        inbox.accept(0, &vec![3u8; 4 << 20]).unwrap();
        inbox.trim();
        assert!(inbox.buffered() >= 4 << 20, "bytes waiting keep their room");
        inbox.consume(4 << 20);
        inbox.trim();
        assert_eq!(inbox.buffered(), 0);
    }

    fn take(out: &mut Outbox, max: usize) -> Option<Frame> {
        Some(match out.next(max)? {
            Next::Data { offset, bytes } => Frame::Data(offset, [bytes.0, bytes.1].concat()),
            Next::Fin { offset } => Frame::Fin(offset),
        })
    }

    /// An outbox whose receiver's first grant was `window` bytes (small, for tests).
    fn outbox(limit: usize, window: u64) -> Outbox {
        let mut out = Outbox::new(limit);
        out.granted = window;
        out
    }

    fn arrive(inbox: &mut Inbox, frame: Frame) {
        match frame {
            Frame::Data(offset, bytes) => {
                inbox.accept(offset, &bytes).unwrap();
            }
            Frame::Fin(offset) => {
                inbox.accept_fin(offset).unwrap();
            }
        }
    }

    /// The application takes up to `n` bytes the inbox holds.
    fn deliver(inbox: &mut Inbox, n: usize, delivered: &mut Vec<u8>) {
        let mut left = n.min(inbox.pending());
        while left > 0 {
            let front = inbox.pending_front();
            let k = front.len().min(left);
            delivered.extend_from_slice(&front[..k]);
            inbox.consume(k);
            left -= k;
        }
    }

    /// Everything the inbox holds, without taking it.
    fn held(inbox: &Inbox) -> Vec<u8> {
        inbox.held.iter().copied().collect()
    }

    #[test]
    fn a_full_outbox_takes_nothing_more_until_acknowledged() {
        let mut out = Outbox::new(8);
        assert_eq!(out.push(b"abcdefghij"), 8);
        assert_eq!(out.room(), 0);
        assert_eq!(take(&mut out, 5), Some(Frame::Data(0, b"abcde".to_vec())));
        out.ack(5).unwrap();
        assert_eq!(out.room(), 5);
        assert_eq!(out.push(b"ij"), 2);
    }

    #[test]
    fn a_frame_across_the_rings_end_comes_in_two_slices() {
        let mut out = Outbox::new(8);
        out.push(b"abcdef");
        take(&mut out, 6);
        out.ack(6).unwrap();
        out.push(b"ghijkl");
        match out.next(8) {
            Some(Next::Data { offset: 6, bytes }) => {
                assert_eq!([bytes.0, bytes.1].concat(), b"ghijkl")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_inbox_drops_a_replay_and_refuses_a_gap() {
        let mut inbox = Inbox::new(64);
        assert_eq!(inbox.accept(0, b"abc").unwrap(), 3);
        assert_eq!(inbox.accept(1, b"bcde").unwrap(), 2, "overlap trimmed");
        assert_eq!(inbox.accept(0, b"ab").unwrap(), 0, "a whole replay");
        assert_eq!(held(&inbox), b"abcde");
        assert_eq!(
            inbox.accept(9, b"x"),
            Err(StreamError::Gap {
                offset: 9,
                expected: 5
            })
        );
        assert_eq!(inbox.received(), 5);
    }

    #[test]
    fn the_fin_takes_one_offset_and_is_acknowledged_like_a_byte() {
        let mut out = Outbox::new(16);
        out.push(b"abc");
        out.finish();
        assert_eq!(out.room(), 0, "nothing after the FIN");
        assert_eq!(take(&mut out, 16), Some(Frame::Data(0, b"abc".to_vec())));
        assert_eq!(take(&mut out, 16), Some(Frame::Fin(3)));
        assert_eq!(take(&mut out, 16), None);
        let mut inbox = Inbox::new(64);
        inbox.accept(0, b"abc").unwrap();
        assert_eq!(inbox.accept_fin(3), Ok(true));
        assert_eq!(inbox.accept_fin(3), Ok(false), "a replayed FIN");
        assert_eq!(inbox.received(), 4);
        assert!(inbox.accept(3, b"x").is_err(), "data after the FIN");
        out.ack(3).unwrap();
        assert!(!out.fin_acked());
        out.ack(4).unwrap();
        assert!(out.fin_acked());
        // A FIN replayed on a new leg after the peer lost it.
        let mut out = Outbox::new(16);
        out.push(b"ab");
        out.finish();
        take(&mut out, 16);
        take(&mut out, 16);
        out.resume_from(2).unwrap();
        assert_eq!(take(&mut out, 16), Some(Frame::Fin(2)));
    }

    #[test]
    fn a_peer_that_breaks_the_rules_is_refused() {
        let mut out = Outbox::new(16);
        out.push(b"abcdef");
        take(&mut out, 4).unwrap();
        assert_eq!(
            out.ack(5),
            Err(StreamError::AckBeyondSent { ack: 5, sent: 4 })
        );
        out.ack(2).unwrap();
        assert_eq!(
            out.resume_from(1),
            Err(StreamError::ResumeBeforeAcked { from: 1, acked: 2 })
        );
        assert_eq!(
            out.resume_from(6),
            Err(StreamError::ResumeBeyondSent { from: 6, sent: 4 })
        );
        let mut inbox = Inbox::new(64);
        inbox.accept(0, b"ab").unwrap();
        assert!(inbox.accept_fin(5).is_err(), "a FIN past a gap");
        assert!(inbox.accept_fin(1).is_err(), "a FIN inside the data");
    }

    #[test]
    fn the_sender_stops_at_the_window_and_goes_on_as_the_application_reads() {
        let mut out = outbox(64, 8);
        let mut inbox = Inbox::new(8);
        out.push(b"abcdefghijkl");
        assert_eq!(
            take(&mut out, 64),
            Some(Frame::Data(0, b"abcdefgh".to_vec()))
        );
        assert_eq!(take(&mut out, 64), None, "the window is full");
        assert!(out.window_closed());
        arrive(&mut inbox, Frame::Data(0, b"abcdefgh".to_vec()));
        // Received and acknowledged, but the application has not read: no more room.
        out.ack(inbox.received()).unwrap();
        out.grant(inbox.limit());
        assert_eq!(take(&mut out, 64), None, "acknowledged is not read");
        let mut delivered = Vec::new();
        deliver(&mut inbox, 3, &mut delivered);
        out.grant(inbox.limit());
        assert_eq!(take(&mut out, 64), Some(Frame::Data(8, b"ijk".to_vec())));
        assert!(out.window_closed());
        // The FIN needs no room.
        out.finish();
        deliver(&mut inbox, 8, &mut delivered);
        out.grant(inbox.limit());
        assert_eq!(take(&mut out, 64), Some(Frame::Data(11, b"l".to_vec())));
        assert_eq!(take(&mut out, 64), Some(Frame::Fin(12)));
        assert!(!out.window_closed());
    }

    #[test]
    fn data_past_the_window_is_refused_and_nothing_kept() {
        let mut inbox = Inbox::new(4);
        assert_eq!(inbox.limit(), 4);
        assert_eq!(
            inbox.accept(0, b"abcde"),
            Err(StreamError::BeyondWindow { end: 5, limit: 4 })
        );
        assert_eq!(inbox.pending(), 0);
        assert_eq!(inbox.received(), 0);
        assert_eq!(inbox.accept(0, b"abcd"), Ok(4));
        inbox.consume(1);
        assert_eq!(inbox.limit(), 5);
        assert_eq!(inbox.accept(4, b"e"), Ok(1));
        assert_eq!(held(&inbox), b"bcde");
    }

    #[test]
    fn a_grant_never_shrinks() {
        let mut out = outbox(64, 8);
        out.grant(20);
        out.grant(10);
        out.push(&[7; 64]);
        assert!(matches!(take(&mut out, 64), Some(Frame::Data(0, b)) if b.len() == 20));
    }

    proptest! {
        // Whatever the leg loses when it breaks, and however slowly the receiving application
        // reads, every byte arrives once and in order, and the FIN after them; the sender
        // never overruns the window, so the receiver never holds more than it.
        #[test]
        fn bytes_arrive_exactly_once_in_order_across_any_breaks(
            data in proptest::collection::vec(any::<u8>(), 1..4000),
            window in 1usize..700,
            steps in proptest::collection::vec((1usize..300, 0u8..10), 1..200),
        ) {
            let mut out = outbox(512, window as u64);
            let mut inbox = Inbox::new(window);
            let mut delivered = Vec::new();
            let mut written = 0;
            let mut in_flight: VecDeque<Frame> = VecDeque::new();
            let mut step = steps.iter().cycle();
            let mut rounds = 0;
            while !out.fin_acked() {
                rounds += 1;
                prop_assert!(rounds < 100_000, "no progress");
                let &(size, action) = step.next().unwrap();
                written += out.push(&data[written..]);
                if written == data.len() {
                    out.finish();
                }
                // Some progress every round, whatever the random step: a frame leaves, and
                // every other round the oldest one arrives and an acknowledgement (a heartbeat,
                // if nothing else) goes back.
                if let Some(frame) = take(&mut out, size) {
                    in_flight.push_back(frame);
                }
                if rounds % 2 == 0 {
                    if let Some(frame) = in_flight.pop_front() {
                        arrive(&mut inbox, frame);
                    }
                    deliver(&mut inbox, size, &mut delivered);
                    out.ack(inbox.received()).unwrap();
                    out.grant(inbox.limit());
                }
                match action {
                    // The leg breaks: what is in flight is lost; resume from the inbox.
                    0 => {
                        in_flight.clear();
                        out.resume_from(inbox.received()).unwrap();
                    }
                    // A frame arrives; sometimes its acknowledgement too (with the window).
                    1..=4 => {
                        if let Some(frame) = in_flight.pop_front() {
                            arrive(&mut inbox, frame);
                            if action % 2 == 0 {
                                out.ack(inbox.received()).unwrap();
                                out.grant(inbox.limit());
                            }
                        }
                    }
                    // The application reads, and says nothing yet.
                    5 => deliver(&mut inbox, size, &mut delivered),
                    // A frame leaves.
                    _ => {
                        if let Some(frame) = take(&mut out, size) {
                            in_flight.push_back(frame);
                        }
                    }
                }
                prop_assert!(out.unacked() <= 512, "bounded");
                prop_assert!(inbox.pending() <= window, "within the window");
                prop_assert!(inbox.held.capacity() <= window.max(8), "memory within the window");
            }
            deliver(&mut inbox, usize::MAX, &mut delivered);
            prop_assert!(inbox.finished());
            prop_assert_eq!(delivered, data);
        }
    }
}
