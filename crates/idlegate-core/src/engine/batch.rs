//! Batches: many packets handed in at once so that their flow lookups' cache misses overlap.
//!
//! At a million flows the table is far larger than the caches, and one packet's lookup is two
//! dependent misses (the index line, then the flow's line) that nothing overlaps when packets
//! come one at a time. [`Engine::handle_batch`] takes up to [`BATCH`] packets at a time in three
//! passes: it hashes every packet's key and asks for its index line
//! ([`FlowTable::prefetch_index`]); it reads those lines and asks for the flow each most likely
//! finds ([`FlowTable::prefetch_flow`]); then it handles each packet in order exactly as
//! [`Engine::handle_parsed`] would, with the hash taken in the first pass. The first two
//! passes only read and hint: a packet that makes a flow that a later packet of the same batch
//! belongs to is handled the same as one at a time, since the third pass looks every packet up
//! again (now in the caches). Nothing is allocated: the passes keep their hashes in an array
//! of [`BATCH`] on the stack.

use super::*;
use crate::state::flow::Interface;

/// Packets whose lookups overlap in [`Engine::handle_batch`]: 32 lines of index and 32 of
/// flows are 4 KiB, well within a first-level cache, and 32 outstanding misses are more than
/// a core keeps in flight (10 to 20 line fill buffers), so a larger batch would gain nothing.
pub const BATCH: usize = 32;

/// Packets handed to [`Engine::handle_batch`]: the driver's own buffers, read in order.
pub trait Batch {
    /// How many packets.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Packet `i`'s side and parse ([`Parsed::new`] of its bytes), as
    /// [`Engine::handle_parsed`] takes them; the one parse the engine reads of it.
    fn headers(&self, i: usize) -> (Interface, &Parsed);
    /// Packet `i`'s bytes to rewrite in place, and what its transport checksum field holds.
    fn packet(&mut self, i: usize) -> (&mut [u8], TransportChecksum);
    /// What became of packet `i`: what [`Engine::handle_parsed`] would have returned.
    fn verdict(&mut self, i: usize, verdict: Verdict);
}

/// What the first pass learnt of a packet.
#[derive(Clone, Copy)]
enum Hint {
    /// Not a packet with a flow key (a parse error, an ICMP error, a fragment).
    None,
    V4(u64),
    V6(u64),
}

impl Engine {
    /// Handles every packet of `batch` at `now`, in order, with the same verdicts, rewrites,
    /// generated packets, events and state as [`Engine::handle_parsed`] of each in turn, but
    /// with the flow lookups of up to [`BATCH`] packets overlapping (see `engine/batch.rs`).
    pub fn handle_batch<B: Batch + ?Sized>(&mut self, now: Instant, batch: &mut B) {
        let mut start = 0;
        while start < batch.len() {
            let end = (start + BATCH).min(batch.len());
            let mut hints = [Hint::None; BATCH];
            for (i, hint) in (start..end).zip(hints.iter_mut()) {
                let (from, parsed) = batch.headers(i);
                *hint = match parsed {
                    Parsed::V4(Ok(h)) => {
                        let hash = self.v4.flows.hash(from, h.src, h.dst, h.protocol);
                        self.v4.flows.prefetch_index(hash);
                        Hint::V4(hash)
                    }
                    Parsed::V6(Ok(h)) => {
                        let hash = self.v6.flows.hash(from, h.src, h.dst, h.protocol);
                        self.v6.flows.prefetch_index(hash);
                        Hint::V6(hash)
                    }
                    _ => Hint::None,
                };
            }
            for hint in &hints[..end - start] {
                match *hint {
                    Hint::V4(hash) => self.v4.flows.prefetch_flow(hash),
                    Hint::V6(hash) => self.v6.flows.prefetch_flow(hash),
                    Hint::None => {}
                }
            }
            for (i, hint) in (start..end).zip(hints) {
                let (from, parsed) = batch.headers(i);
                let parsed = *parsed;
                let (packet, checksum) = batch.packet(i);
                let verdict = match (parsed, hint) {
                    (Parsed::V4(h), Hint::V4(hash)) => {
                        self.v4
                            .handle_packet(now, from, packet, h, checksum, Some(hash))
                    }
                    (Parsed::V6(h), Hint::V6(hash)) => {
                        self.v6
                            .handle_packet(now, from, packet, h, checksum, Some(hash))
                    }
                    (Parsed::V6(h), _) => {
                        self.v6.handle_packet(now, from, packet, h, checksum, None)
                    }
                    (Parsed::V4(h), _) => {
                        self.v4.handle_packet(now, from, packet, h, checksum, None)
                    }
                };
                batch.verdict(i, verdict);
            }
            start = end;
        }
    }
}

/// One packet of a batch held as a slice ([`Batch`] for `[BatchPacket]`), for callers that
/// have their packets as separate mutable slices (tests, benchmarks).
#[derive(Debug)]
pub struct BatchPacket<'a> {
    pub from: Interface,
    pub packet: &'a mut [u8],
    pub parsed: Parsed,
    pub checksum: TransportChecksum,
    /// Set by [`Engine::handle_batch`].
    pub verdict: Option<Verdict>,
}

impl<'a> BatchPacket<'a> {
    /// A packet with a complete checksum, read from `packet`.
    pub fn new(from: Interface, packet: &'a mut [u8]) -> BatchPacket<'a> {
        let parsed = Parsed::new(packet);
        BatchPacket {
            from,
            packet,
            parsed,
            checksum: TransportChecksum::Complete,
            verdict: None,
        }
    }
}

impl Batch for [BatchPacket<'_>] {
    fn len(&self) -> usize {
        <[BatchPacket<'_>]>::len(self)
    }
    fn headers(&self, i: usize) -> (Interface, &Parsed) {
        (self[i].from, &self[i].parsed)
    }
    fn packet(&mut self, i: usize) -> (&mut [u8], TransportChecksum) {
        let p = &mut self[i];
        (&mut *p.packet, p.checksum)
    }
    fn verdict(&mut self, i: usize, verdict: Verdict) {
        self[i].verdict = Some(verdict);
    }
}
