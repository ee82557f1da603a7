//! Flows: the gateway's memory of each connection, found from either direction.
//!
//! A [`Flow`] joins three endpoints. `remote` is the peer on the outside; `public` is the
//! gateway's frontend address and port as the remote sees it; `private` is the backend pool
//! member's address and port. Load-balanced and SNAT flows have the same shape: an LB flow's
//! `public` is the rule's frontend, an outbound flow's `public` is the frontend with a lent SNAT
//! port. Packets from the outside are `remote → public`, packets from the inside are
//! `private → remote`: those are the flow's two keys.
//!
//! [`FlowTable`] keeps flows in a [`slab`] of chunks that never move, each flow in a cache line
//! of its own, and indexes both keys in one [`index::Index`] whose entries hold a 32-bit tag of
//! the key's hash and a 32-bit reference (slab index and key side); the key itself is read from
//! the flow. A flow costs its
//! 64 bytes plus two 8-byte entries with the index's spare room (18 to 37 bytes a flow). No
//! flow allocates on its own. A lookup is two cache lines, the index's and the flow's, and
//! [`FlowTable::prefetch_index`] and [`FlowTable::prefetch_flow`] ask for them ahead, so a
//! batch of packets can overlap its misses ([`crate::Engine::handle_batch`]).

use crate::state::timer::{Link, SlotId, Tick, Timers};
pub mod index;
pub mod slab;
pub mod window;

use crate::wire::family::Endpoint;
use crate::wire::packet::{Protocol, TcpFlags};
use index::{prefetch, Index};
use slab::{Line, Slab};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddrV4;
use window::{OpenEnds, SynSpan, Windows};

/// The side of the gateway a packet arrives on or leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interface {
    /// The backend pool's side.
    Inside,
    /// The internet's side.
    Outside,
}

impl Interface {
    /// The other side.
    pub fn opposite(self) -> Interface {
        match self {
            Interface::Inside => Interface::Outside,
            Interface::Outside => Interface::Inside,
        }
    }
}

/// What the gateway knows of a flow: for TCP, the connection state it tracks (a subset of
/// conntrack's); for UDP, whether the flow has been answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowState {
    /// The initiator's SYN went through.
    SynSent,
    /// The responder's SYN-ACK went through.
    SynReceived,
    /// The initiator acknowledged the SYN-ACK (or, under loose pickup, an ACK of a connection
    /// already under way opened the flow): the only state with the rule's idle timeout.
    Established,
    /// A FIN went through, in either direction.
    FinWait,
    /// An ACK followed the FIN: one side is done, the other may still send (half-closed).
    CloseWait,
    /// FINs went both ways; the last ACK is awaited.
    LastAck,
    /// The last ACK went through.
    TimeWait,
    /// A RST went through.
    Closed,
    /// Expired under `ack-and-discard`: the gateway answers what the endpoints send with ACKs
    /// and delivers nothing, until the flow has been quiet for another idle timeout.
    Discarding,
    /// UDP: datagrams went one way only.
    Unreplied,
    /// UDP: the responder answered.
    Replied,
}

impl FlowState {
    /// The state a new flow of `protocol` starts in.
    pub fn initial(protocol: Protocol) -> FlowState {
        match protocol {
            Protocol::Tcp => FlowState::SynSent,
            Protocol::Udp => FlowState::Unreplied,
        }
    }

    /// A UDP flow's state after a datagram from the initiator or the responder.
    pub fn after_datagram(self, from_initiator: bool) -> FlowState {
        if from_initiator {
            self
        } else {
            FlowState::Replied
        }
    }

    /// The state after a segment with `flags`, sent by the initiator or the responder. The
    /// closing states follow conntrack's table (nf_conntrack_proto_tcp.c): a FIN moves on
    /// from ESTABLISHED or a FIN state, any other ACK moves a FIN state on, whoever sends it.
    pub fn after(self, flags: TcpFlags, from_initiator: bool) -> FlowState {
        use FlowState::*;
        if flags.rst() {
            return Closed;
        }
        let (fin, ack) = (flags.fin(), flags.ack() && !flags.syn());
        match self {
            SynSent if !from_initiator && flags.syn() && flags.ack() => SynReceived,
            SynReceived if fin => FinWait,
            SynReceived if from_initiator && ack => Established,
            Established if fin => FinWait,
            FinWait | CloseWait if fin => LastAck,
            FinWait if ack => CloseWait,
            LastAck if ack && !fin => TimeWait,
            state => state,
        }
    }

    /// Whether a FIN has gone through (FIN_WAIT to TIME_WAIT).
    pub fn is_closing(self) -> bool {
        matches!(
            self,
            FlowState::FinWait | FlowState::CloseWait | FlowState::LastAck | FlowState::TimeWait
        )
    }

    /// Established flows use the rule's idle timeout; the others their state's timer.
    pub fn is_established(self) -> bool {
        self == FlowState::Established
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::SynSent => "SYN_SENT",
            FlowState::SynReceived => "SYN_RECV",
            FlowState::Established => "ESTABLISHED",
            FlowState::FinWait => "FIN_WAIT",
            FlowState::CloseWait => "CLOSE_WAIT",
            FlowState::LastAck => "LAST_ACK",
            FlowState::TimeWait => "TIME_WAIT",
            FlowState::Closed => "CLOSED",
            FlowState::Discarding => "DISCARDING",
            FlowState::Unreplied => "UNREPLIED",
            FlowState::Replied => "REPLIED",
        }
    }
}

/// Index of a rule in the engine's rule table.
pub type RuleId = u16;

/// One connection through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow<E: Endpoint = SocketAddrV4> {
    pub remote: E,
    pub public: E,
    pub private: E,
    pub protocol: Protocol,
    pub state: FlowState,
    pub rule: RuleId,
    /// The remote's SND.NXT as last seen: the sequence number the member expects next.
    pub remote_next_seq: u32,
    /// The member's SND.NXT as last seen: the sequence number the remote expects next.
    pub private_next_seq: u32,
    /// TCP: the largest window each side has advertised ([`crate::state::flow::window`]).
    pub windows: Windows,
    /// TCP: the initiator's latest SYN, tracked or ignored ([`crate::state::flow::window`]).
    pub syn: SynSpan,
    /// TCP: the side of a SYN the flow ignored (conntrack's `TCP_CONNTRACK_IGNORE`), whose
    /// span is `syn`: a SYN-ACK from the other side that acknowledges it starts tracking over.
    pub ignored_syn: Option<Interface>,
    /// TCP: the sides whose tracked end came from a first fragment ([`crate::state::flow::window`]).
    pub open_ends: OpenEnds,
    /// When the flow expires unless a packet refreshes it.
    pub deadline: Tick,
    // The timer wheel's links, kept flat so the flow packs into 64 bytes.
    wheel_prev: u32,
    wheel_next: u32,
    wheel_slot: SlotId,
}

impl<E: Endpoint> Flow<E> {
    pub fn new(protocol: Protocol, remote: E, public: E, private: E, rule: RuleId) -> Flow<E> {
        Flow {
            remote,
            public,
            private,
            protocol,
            state: FlowState::initial(protocol),
            rule,
            remote_next_seq: 0,
            private_next_seq: 0,
            windows: Windows::default(),
            syn: SynSpan::default(),
            ignored_syn: None,
            open_ends: OpenEnds::default(),
            deadline: 0,
            wheel_prev: Link::UNFILED.prev,
            wheel_next: Link::UNFILED.next,
            wheel_slot: Link::UNFILED.slot,
        }
    }

    /// The sequence numbers a receiver on each side of a segment from `from` expects next:
    /// (the sender's SND.NXT, the other side's SND.NXT).
    pub fn next_seqs(&self, from: Interface) -> (u32, u32) {
        match from {
            Interface::Outside => (self.remote_next_seq, self.private_next_seq),
            Interface::Inside => (self.private_next_seq, self.remote_next_seq),
        }
    }

    /// The flow's key as seen in packets arriving on `side`: (source, destination).
    fn key(&self, side: Interface) -> (E, E) {
        match side {
            Interface::Outside => (self.remote, self.public),
            Interface::Inside => (self.private, self.remote),
        }
    }
}

/// Reference to a flow in the table.
pub type FlowId = u32;

/// Index entries keep the key side in the low bit, so ids must fit in 31 bits, and the index
/// takes the two highest references for its own marks.
const MAX_FLOWS: usize = (1 << 31) - 1;
const _: () = assert!(((MAX_FLOWS - 1) << 1 | 1) < index::MAX_REF as usize);

/// All flows, found by either key.
pub struct FlowTable<E: Endpoint = SocketAddrV4> {
    flows: Slab<Flow<E>>,
    free: Vec<FlowId>,
    /// Entries are `id << 1 | side`, side 1 for the outside key.
    index: Index,
    hasher: foldhash::fast::FixedState,
}

impl<E: Endpoint> FlowTable<E> {
    /// An empty table; `seed` keys the hash so outsiders cannot aim collisions at it.
    pub fn new(seed: u64) -> FlowTable<E> {
        FlowTable {
            flows: Slab::new(),
            free: Vec::new(),
            index: Index::new(),
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.flows.len() - self.free.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flow whose `side` key is `src → dst`.
    #[inline]
    pub fn find(&self, side: Interface, src: E, dst: E, protocol: Protocol) -> Option<FlowId> {
        self.find_hashed(
            self.hash(side, src, dst, protocol),
            side,
            src,
            dst,
            protocol,
        )
    }

    /// [`FlowTable::find`] with the key's hash already taken ([`FlowTable::hash`]).
    #[inline]
    pub fn find_hashed(
        &self,
        hash: u64,
        side: Interface,
        src: E,
        dst: E,
        protocol: Protocol,
    ) -> Option<FlowId> {
        let flows = &self.flows;
        self.index
            .find(hash, |entry| {
                let (id, entry_side) = decode(entry);
                entry_side == side && {
                    let f = &flows[id as usize].0;
                    f.protocol == protocol && f.key(side) == (src, dst)
                }
            })
            .map(|entry| decode(entry).0)
    }

    /// Asks for the index line a lookup of `hash` reads first (a hint: changes nothing).
    #[inline]
    pub fn prefetch_index(&self, hash: u64) {
        self.index.prefetch(hash);
    }

    /// Asks for the line of the flow a lookup of `hash` will most likely find (a hint: changes
    /// nothing). Reads the index line, so it comes after [`FlowTable::prefetch_index`].
    #[inline]
    pub fn prefetch_flow(&self, hash: u64) {
        if let Some(f) = self
            .index
            .first_candidate(hash)
            .and_then(|entry| self.flows.get(decode(entry).0 as usize))
        {
            prefetch(f);
        }
    }

    /// Whether another flow already has one of `flow`'s keys.
    pub fn either_key_taken(&self, flow: &Flow<E>) -> bool {
        [Interface::Inside, Interface::Outside]
            .into_iter()
            .any(|side| {
                let (src, dst) = flow.key(side);
                self.find(side, src, dst, flow.protocol).is_some()
            })
    }

    /// Whether the table holds as many flows as its references can number.
    pub fn is_full(&self) -> bool {
        self.free.is_empty() && self.flows.len() >= MAX_FLOWS
    }

    /// Adds `flow` under both keys. The caller checks first that neither key is taken and
    /// that the table is not full.
    pub fn insert(&mut self, flow: Flow<E>) -> FlowId {
        let id = match self.free.pop() {
            Some(id) => {
                self.flows[id as usize] = Line(flow);
                id
            }
            None => {
                self.flows.push(flow);
                (self.flows.len() - 1) as FlowId
            }
        };
        for side in [Interface::Inside, Interface::Outside] {
            let (src, dst) = flow.key(side);
            let hash = self.hash(side, src, dst, flow.protocol);
            let (flows, hasher) = (&self.flows, &self.hasher);
            self.index
                .insert(hash, encode(id, side), |e| rehash(hasher, flows, e));
        }
        id
    }

    /// Removes the flow and returns it. It must already be out of the timer wheel.
    pub fn remove(&mut self, id: FlowId) -> Flow<E> {
        let flow = self.flows[id as usize].0;
        for side in [Interface::Inside, Interface::Outside] {
            let (src, dst) = flow.key(side);
            let hash = self.hash(side, src, dst, flow.protocol);
            let removed = self.index.remove(hash, encode(id, side));
            debug_assert!(
                removed,
                "flow {id} was not in the index under its {side:?} key"
            );
        }
        self.free.push(id);
        flow
    }

    pub fn get(&self, id: FlowId) -> &Flow<E> {
        &self.flows[id as usize].0
    }

    pub fn get_mut(&mut self, id: FlowId) -> &mut Flow<E> {
        &mut self.flows[id as usize].0
    }

    /// Every flow, with its id.
    pub fn iter(&self) -> impl Iterator<Item = (FlowId, &Flow<E>)> {
        self.index
            .iter()
            .filter(|&e| decode(e).1 == Interface::Outside)
            .map(|e| {
                let id = decode(e).0;
                (id, &self.flows[id as usize].0)
            })
    }

    /// Checks that every flow is found by both of its keys and the index holds nothing else
    /// (for tests and fuzzing: it walks the whole table).
    #[cfg(any(test, fuzzing))]
    pub fn check(&self) -> Result<(), String> {
        let free: std::collections::HashSet<FlowId> = self.free.iter().copied().collect();
        if free.len() != self.free.len() {
            return Err("a flow id is free twice".into());
        }
        for id in (0..self.flows.len() as FlowId).filter(|id| !free.contains(id)) {
            let flow = &self.flows[id as usize].0;
            for side in [Interface::Inside, Interface::Outside] {
                let (src, dst) = flow.key(side);
                if self.find(side, src, dst, flow.protocol) != Some(id) {
                    return Err(format!("flow {id} is not found by its {side:?} key"));
                }
            }
        }
        self.index.check()?;
        if self.index.len() != 2 * self.len() {
            return Err(format!(
                "the index holds {} keys for {} flows",
                self.index.len(),
                self.len()
            ));
        }
        Ok(())
    }

    /// Bytes the table holds: slab, free list and index (for the memory benchmark).
    pub fn memory_bytes(&self) -> usize {
        self.flows.allocation_size()
            + self.free.capacity() * std::mem::size_of::<FlowId>()
            + self.index.allocation_size()
    }

    /// The hash of a key, which [`FlowTable::find_hashed`] and the prefetches take.
    #[inline]
    pub fn hash(&self, side: Interface, src: E, dst: E, protocol: Protocol) -> u64 {
        key_hash(&self.hasher, side, src, dst, protocol)
    }
}

#[inline]
fn key_hash<E: Endpoint>(
    hasher: &foldhash::fast::FixedState,
    side: Interface,
    src: E,
    dst: E,
    protocol: Protocol,
) -> u64 {
    let mut h = hasher.build_hasher();
    E::hash_addrs(&mut h, src.addr(), dst.addr());
    h.write_u64(
        u64::from(src.port()) << 32
            | u64::from(dst.port()) << 16
            | (protocol as u64) << 8
            | side as u64,
    );
    h.finish()
}

fn rehash<E: Endpoint>(
    hasher: &foldhash::fast::FixedState,
    flows: &Slab<Flow<E>>,
    entry: u32,
) -> u64 {
    let (id, side) = decode(entry);
    let f = &flows[id as usize].0;
    let (src, dst) = f.key(side);
    key_hash(hasher, side, src, dst, f.protocol)
}

fn encode(id: FlowId, side: Interface) -> u32 {
    id << 1 | u32::from(side == Interface::Outside)
}

fn decode(entry: u32) -> (FlowId, Interface) {
    let side = if entry & 1 == 1 {
        Interface::Outside
    } else {
        Interface::Inside
    };
    (entry >> 1, side)
}

impl<E: Endpoint> Timers for FlowTable<E> {
    #[inline]
    fn link(&self, id: u32) -> Link {
        let f = &self.flows[id as usize].0;
        Link {
            prev: f.wheel_prev,
            next: f.wheel_next,
            slot: f.wheel_slot,
        }
    }
    #[inline]
    fn set_link(&mut self, id: u32, link: Link) {
        let f = &mut self.flows[id as usize].0;
        (f.wheel_prev, f.wheel_next, f.wheel_slot) = (link.prev, link.next, link.slot);
    }
    fn deadline(&self, id: u32) -> Tick {
        self.flows[id as usize].0.deadline
    }
}

// The memory budget per flow (issue: < 128 bytes at 1 M flows, index included).
const _: () = assert!(std::mem::size_of::<Flow<SocketAddrV4>>() == 64);

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ep(a: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, a), port)
    }

    #[test]
    fn flow_is_found_by_both_keys_and_forgotten_after_removal() {
        let mut table = FlowTable::new(7);
        let flow = Flow::new(Protocol::Tcp, ep(100, 40000), ep(10, 7000), ep(11, 7000), 0);
        let id = table.insert(flow);
        assert_eq!(
            table.find(
                Interface::Outside,
                ep(100, 40000),
                ep(10, 7000),
                Protocol::Tcp
            ),
            Some(id)
        );
        assert_eq!(
            table.find(
                Interface::Inside,
                ep(11, 7000),
                ep(100, 40000),
                Protocol::Tcp
            ),
            Some(id)
        );
        assert_eq!(
            table.find(
                Interface::Inside,
                ep(100, 40000),
                ep(10, 7000),
                Protocol::Tcp
            ),
            None
        );
        assert_eq!(
            table.find(
                Interface::Outside,
                ep(100, 40000),
                ep(10, 7000),
                Protocol::Udp
            ),
            None
        );
        table.remove(id);
        assert_eq!(
            table.find(
                Interface::Outside,
                ep(100, 40000),
                ep(10, 7000),
                Protocol::Tcp
            ),
            None
        );
        assert!(table.is_empty());
    }
}
