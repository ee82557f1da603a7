//! One direction of a resumable tunnel: the application's bytes, delivered exactly once and in
//! order across a leg that may break at any moment. Pure: no sockets.
//!
//! Every byte has an offset in the direction's stream. The sending side keeps an [`Outbox`]:
//! bytes written by the application and not yet acknowledged by the other end, bounded, so a
//! full outbox stops the relay from reading the application (backpressure, never a drop). The
//! receiving side keeps an [`Inbox`]: the offset it expects next. Data frames carry their
//! offset; acknowledgements carry the receiver's next offset. When a leg breaks, whatever was in
//! flight may be lost: on the new leg the receiver says where it stands, the sender rewinds to
//! that point ([`Outbox::resume_from`]) and sends again. The inbox drops what it already has,
//! so a byte is never delivered twice, and refuses a gap, so none is skipped.

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
}

/// Bytes written by the application, kept until the other end acknowledges them.
#[derive(Debug)]
pub struct Outbox {
    /// Unacknowledged bytes; `buf[0]` is at offset `acked`.
    buf: VecDeque<u8>,
    acked: u64,
    /// The next offset to send (on this leg).
    sent: u64,
    limit: usize,
}

impl Outbox {
    /// An outbox that holds at most `limit` unacknowledged bytes.
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            buf: VecDeque::with_capacity(limit.min(1 << 20)),
            acked: 0,
            sent: 0,
            limit,
        }
    }

    /// How many more bytes the application may write now.
    pub fn room(&self) -> usize {
        self.limit - self.buf.len()
    }

    /// Takes as much of `bytes` as there is room for; returns how much.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.buf.extend(&bytes[..n]);
        n
    }

    /// The next bytes to send, at most `max`, with their offset; they count as sent.
    pub fn next_frame(&mut self, max: usize) -> Option<(u64, Vec<u8>)> {
        let start = usize::try_from(self.sent - self.acked).ok()?;
        let end = self.buf.len().min(start.saturating_add(max));
        if start >= end {
            return None;
        }
        let bytes: Vec<u8> = self.buf.range(start..end).copied().collect();
        let offset = self.sent;
        self.sent += bytes.len() as u64;
        Some((offset, bytes))
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
            let n = (offset - self.acked) as usize;
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

/// Where the receiving side of a direction stands.
#[derive(Debug, Default)]
pub struct Inbox {
    next: u64,
}

impl Inbox {
    /// Takes a data frame at `offset`: returns the part not delivered before (empty for a
    /// replay of what the inbox has), or an error for a gap.
    pub fn accept<'a>(&mut self, offset: u64, bytes: &'a [u8]) -> Result<&'a [u8], StreamError> {
        if offset > self.next {
            return Err(StreamError::Gap {
                offset,
                expected: self.next,
            });
        }
        let skip = usize::try_from(self.next - offset).unwrap_or(usize::MAX);
        let new = bytes.get(skip..).unwrap_or(&[]);
        self.next += new.len() as u64;
        Ok(new)
    }

    /// Every byte before this offset has been delivered: what acknowledgements and resumes say.
    pub fn received(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_outbox_takes_nothing_more_until_acknowledged() {
        let mut out = Outbox::new(8);
        assert_eq!(out.push(b"abcdefghij"), 8);
        assert_eq!(out.room(), 0);
        let (offset, bytes) = out.next_frame(5).unwrap();
        assert_eq!((offset, bytes.as_slice()), (0, &b"abcde"[..]));
        out.ack(5).unwrap();
        assert_eq!(out.room(), 5);
        assert_eq!(out.push(b"ij"), 2);
    }

    #[test]
    fn the_inbox_drops_a_replay_and_refuses_a_gap() {
        let mut inbox = Inbox::default();
        assert_eq!(inbox.accept(0, b"abc").unwrap(), b"abc");
        assert_eq!(inbox.accept(1, b"bcde").unwrap(), b"de", "overlap trimmed");
        assert_eq!(inbox.accept(0, b"ab").unwrap(), b"", "a whole replay");
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
    fn a_peer_that_breaks_the_rules_is_refused() {
        let mut out = Outbox::new(16);
        out.push(b"abcdef");
        out.next_frame(4).unwrap();
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
    }

    proptest! {
        // Whatever the leg loses when it breaks, every byte arrives once and in order.
        #[test]
        fn bytes_arrive_exactly_once_in_order_across_any_breaks(
            data in proptest::collection::vec(any::<u8>(), 1..4000),
            steps in proptest::collection::vec((1usize..300, 0u8..10), 1..200),
        ) {
            let mut out = Outbox::new(512);
            let mut inbox = Inbox::default();
            let mut delivered = Vec::new();
            let mut written = 0;
            let mut in_flight: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
            let mut step = steps.iter().cycle();
            let mut rounds = 0;
            while delivered.len() < data.len() {
                rounds += 1;
                prop_assert!(rounds < 100_000, "no progress");
                let &(size, action) = step.next().unwrap();
                written += out.push(&data[written..]);
                // Some progress every round, whatever the random step: a frame leaves, and
                // every other round the oldest one arrives and is acknowledged.
                if let Some(frame) = out.next_frame(size) {
                    in_flight.push_back(frame);
                }
                if rounds % 2 == 0 {
                    if let Some((offset, bytes)) = in_flight.pop_front() {
                        delivered.extend_from_slice(inbox.accept(offset, &bytes).unwrap());
                        out.ack(inbox.received()).unwrap();
                    }
                }
                match action {
                    // The leg breaks: what is in flight is lost; resume from the inbox.
                    0 => {
                        in_flight.clear();
                        out.resume_from(inbox.received()).unwrap();
                    }
                    // A frame arrives; sometimes its acknowledgement too.
                    1..=4 => {
                        if let Some((offset, bytes)) = in_flight.pop_front() {
                            delivered.extend_from_slice(inbox.accept(offset, &bytes).unwrap());
                            if action % 2 == 0 {
                                out.ack(inbox.received()).unwrap();
                            }
                        }
                    }
                    // A frame leaves.
                    _ => {
                        if let Some(frame) = out.next_frame(size) {
                            in_flight.push_back(frame);
                        }
                    }
                }
                prop_assert!(out.unacked() <= 512, "bounded");
            }
            prop_assert_eq!(delivered, data);
        }
    }
}
