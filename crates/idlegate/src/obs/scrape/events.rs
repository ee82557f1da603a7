//! Server-Sent Events (the WHATWG HTML standard, section 9.2): the ring of the last events the
//! server keeps, and what each stream still has to send.
//!
//! Contract: the server numbers events from 1 (`id:`) as they come from the service and keeps
//! the last [`EVENT_RING`](crate::obs::http::EVENT_RING) framed, once, for every stream. A
//! stream starts after the newest event, or with `Last-Event-ID: N` after event N; each stream
//! copies from the ring into its own buffer of at most [`STREAM_BUFFER`] bytes and writes from
//! there, so a stream whose client reads slowly only falls behind in the ring. One that falls
//! out of the ring (its next event dropped from it) is sent `lagged` with `{"missed": n,
//! "cause": "ring"}` and goes on from the oldest event held; that event has the id of the last
//! one missed, so that a reconnect from it does not hear of the same loss twice.

use crate::obs::http::StreamEvent;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes a stream holds ready to write at most; the rest waits in the ring.
pub const STREAM_BUFFER: usize = 64 * 1024;

/// The events kept, framed.
pub(super) struct Ring {
    /// The framed events, the oldest first; the front one has id `first`.
    events: VecDeque<Box<[u8]>>,
    first: u64,
    capacity: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring {
            events: VecDeque::with_capacity(capacity.min(1024)),
            first: 1,
            capacity: capacity.max(1),
        }
    }

    /// The id the next event gets.
    pub fn next_id(&self) -> u64 {
        self.first + self.events.len() as u64
    }

    /// Numbers, frames and keeps `event`, dropping the oldest when full.
    pub fn push(&mut self, event: &StreamEvent) {
        let id = self.next_id();
        if self.events.len() == self.capacity {
            self.events.pop_front();
            self.first += 1;
        }
        self.events
            .push_back(frame(Some(id), event.name, &event.data).into_boxed_slice());
    }

    /// Where a new stream starts: after `Last-Event-ID` if it names an event of this run,
    /// else after the newest event.
    pub fn start(&self, last_event_id: Option<&str>) -> u64 {
        match last_event_id.and_then(|id| id.trim().parse::<u64>().ok()) {
            Some(last) if last < self.next_id() => last + 1,
            _ => self.next_id(),
        }
    }
}

/// One event as sent: `id:`, `event:` and one `data:` line, and the empty line that ends it.
pub(super) fn frame(id: Option<u64>, name: &str, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + name.len() + 32);
    if let Some(id) = id {
        out.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // One line: a newline would end the field (a service never sends one; said here anyway).
    for b in data.bytes() {
        out.push(if b == b'\n' || b == b'\r' { b' ' } else { b });
    }
    out.extend_from_slice(b"\n\n");
    out
}

/// The comment line sent when a stream has been quiet: proxies and clients see it alive.
pub(super) const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// What one stream still has to send.
pub(super) struct Stream {
    /// The id of the next event to copy from the ring.
    pub next: u64,
    /// Bytes copied and not yet written, from `at`.
    pub out: Vec<u8>,
    pub at: usize,
    /// When the socket last took bytes (or the stream started, or had nothing to send).
    pub progress: Instant,
    /// When something was last put in `out`.
    pub queued: Instant,
}

impl Stream {
    /// A stream that starts with its head in `out`, at event `next`.
    pub fn new(head: Vec<u8>, next: u64, now: Instant) -> Stream {
        Stream {
            next,
            out: head,
            at: 0,
            progress: now,
            queued: now,
        }
    }

    pub fn pending(&self) -> bool {
        self.at < self.out.len()
    }

    /// Copies from `ring` what fits in the buffer; a `lagged` event first if the ring dropped
    /// events this stream had not sent; `at_ms` for that event from `epoch`.
    pub fn fill(&mut self, ring: &Ring, now: Instant, epoch: Instant) {
        if !self.pending() {
            // Nothing was waiting for the socket: its stall starts now, if at all.
            self.progress = now;
        }
        if self.at == self.out.len() {
            self.out.clear();
            self.at = 0;
        } else if self.at > STREAM_BUFFER {
            self.out.drain(..self.at);
            self.at = 0;
        }
        let before = self.out.len();
        if self.next < ring.first && self.out.len() < STREAM_BUFFER {
            let missed = ring.first - self.next;
            let at_ms = now.saturating_duration_since(epoch).as_millis();
            let data = format!("{{\"missed\":{missed},\"cause\":\"ring\",\"at_ms\":{at_ms}}}");
            self.out
                .extend_from_slice(&frame(Some(ring.first - 1), "lagged", &data));
            self.next = ring.first;
        }
        while self.out.len() - self.at < STREAM_BUFFER {
            let Some(event) = self
                .next
                .checked_sub(ring.first)
                .and_then(|i| ring.events.get(i as usize))
            else {
                break;
            };
            self.out.extend_from_slice(event);
            self.next += 1;
        }
        if self.out.len() > before {
            self.queued = now;
        }
    }

    /// Adds a keepalive comment if nothing was queued for `every`.
    pub fn keepalive(&mut self, now: Instant, every: Duration) {
        if now.saturating_duration_since(self.queued) >= every {
            if !self.pending() {
                self.progress = now;
            }
            if self.at == self.out.len() {
                self.out.clear();
                self.at = 0;
            }
            self.out.extend_from_slice(KEEPALIVE);
            self.queued = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> StreamEvent {
        StreamEvent {
            name: "created",
            data: format!("{{\"n\":{n}}}"),
        }
    }

    fn sent(stream: &mut Stream) -> String {
        let text = String::from_utf8(stream.out[stream.at..].to_vec()).unwrap();
        stream.at = stream.out.len();
        text
    }

    #[test]
    fn an_event_is_framed_as_id_event_and_one_data_line_ended_by_an_empty_line() {
        // WHATWG HTML, 9.2.6 "Interpreting an event stream": fields `id`, `event`, `data`,
        // and an empty line dispatches the event.
        assert_eq!(
            frame(Some(7), "expired", "{\"a\":1}"),
            b"id: 7\nevent: expired\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(frame(None, "x", "a\nb"), b"event: x\ndata: a b\n\n");
    }

    #[test]
    fn events_are_numbered_from_1_and_a_stream_starts_after_the_newest() {
        let mut ring = Ring::new(8);
        let now = Instant::now();
        ring.push(&event(1));
        let mut stream = Stream::new(Vec::new(), ring.start(None), now);
        ring.push(&event(2));
        stream.fill(&ring, now, now);
        assert_eq!(
            sent(&mut stream),
            "id: 2\nevent: created\ndata: {\"n\":2}\n\n"
        );
    }

    #[test]
    fn last_event_id_resumes_after_that_event_and_an_unknown_one_starts_now() {
        let mut ring = Ring::new(8);
        let now = Instant::now();
        for n in 1..=4 {
            ring.push(&event(n));
        }
        let mut stream = Stream::new(Vec::new(), ring.start(Some("2")), now);
        stream.fill(&ring, now, now);
        let text = sent(&mut stream);
        assert!(text.starts_with("id: 3\n"), "{text}");
        assert!(
            text.contains("id: 4\n") && !text.contains("id: 2\n"),
            "{text}"
        );
        // An id from a later run (or not a number): from now on.
        assert_eq!(ring.start(Some("99")), 5);
        assert_eq!(ring.start(Some("x")), 5);
    }

    #[test]
    fn a_stream_that_fell_out_of_the_ring_is_told_how_many_it_missed() {
        let mut ring = Ring::new(4);
        let now = Instant::now();
        let mut stream = Stream::new(Vec::new(), ring.start(None), now);
        for n in 1..=10 {
            ring.push(&event(n));
        }
        // Events 1 to 6 are gone; 7 to 10 are held.
        stream.fill(&ring, now, now);
        let text = sent(&mut stream);
        assert!(
            text.starts_with("id: 6\nevent: lagged\ndata: {\"missed\":6,\"cause\":\"ring\",\"at_ms\":0}\n\nid: 7\n"),
            "{text}"
        );
        assert!(text.ends_with("id: 10\nevent: created\ndata: {\"n\":10}\n\n"));
        // Resuming from the lagged event's id misses nothing more.
        assert_eq!(ring.start(Some("6")), 7);
    }

    #[test]
    fn a_stream_holds_at_most_its_buffer_and_takes_the_rest_later() {
        let mut ring = Ring::new(100_000);
        let now = Instant::now();
        let mut stream = Stream::new(Vec::new(), ring.start(None), now);
        for n in 0..10_000 {
            ring.push(&event(n));
        }
        stream.fill(&ring, now, now);
        let first = stream.out.len();
        assert!(
            (STREAM_BUFFER..STREAM_BUFFER + 100).contains(&first),
            "{first}"
        );
        let next = stream.next;
        assert!(next < ring.next_id());
        stream.at = stream.out.len();
        stream.fill(&ring, now, now);
        assert!(stream.next > next);
    }

    #[test]
    fn a_quiet_stream_gets_a_keepalive_comment() {
        let now = Instant::now();
        let mut stream = Stream::new(Vec::new(), 1, now);
        stream.keepalive(now + Duration::from_secs(14), Duration::from_secs(15));
        assert!(!stream.pending());
        stream.keepalive(now + Duration::from_secs(15), Duration::from_secs(15));
        assert_eq!(sent(&mut stream), ": keepalive\n\n");
    }
}
