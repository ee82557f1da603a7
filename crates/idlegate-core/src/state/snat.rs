//! SNAT ports: the frontend ports outbound rules lend to their members' connections.
//!
//! Each frontend address has one [`SnatPorts`]. As on Azure, every member owns a fixed block of
//! `ports_per_member` ports of that frontend, so one busy member exhausts its own block and no
//! other's. A port is lent to exactly one flow at a time. When the flow ends the port is *held*
//! before it can be lent again (Azure LB: 240 s after a FIN, 15 s after a RST, none after an idle
//! expiry), so a remote that
//! still remembers the old connection never sees the port reused too soon; held ports return to
//! the free list lazily, when their member next asks for one. Free ports are lent oldest first.
//! All storage is allocated up front.

use crate::state::timer::Tick;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::Ipv4Addr;

/// How a flow holding a port ended, which decides how long the port is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Closed with FIN.
    Fin,
    /// Reset, or forgotten before it was established.
    Rst,
    /// Forgotten at its idle timeout while open (established, or a UDP flow).
    Idle,
}

/// How long a port is held after each kind of ending, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Holds {
    pub after_fin: Tick,
    pub after_rst: Tick,
    pub after_idle: Tick,
}

/// One member's block of ports.
#[derive(Debug, Clone)]
struct Block {
    free: VecDeque<u16>,
    /// Ports held after a FIN and after a RST, each in order of release: (port, free again at).
    held_fin: VecDeque<(u16, Tick)>,
    held_rst: VecDeque<(u16, Tick)>,
    /// Exhaustion was reported and no port has been lent since.
    exhausted: bool,
}

/// The SNAT ports of one frontend address.
#[derive(Debug, Clone)]
pub struct SnatPorts<A = Ipv4Addr> {
    frontend: A,
    blocks: Vec<Block>,
    /// Ports in all blocks, and how many of them are lent.
    total: usize,
    lent_count: usize,
    /// Flows using a port under masquerade, which lends nothing.
    tuples: usize,
    by_member: HashMap<A, usize>,
    holds: Holds,
    lent: Box<[u64; 1024]>,
}

impl<A: Copy + Eq + Hash> SnatPorts<A> {
    /// A frontend whose members each own a block of ports: `(member, block size)`, the blocks
    /// taken in order from `ports` (which leaves out what the caller reserves, such as LB
    /// frontend ports). If `ports` run out, the last blocks are short: the config's validation
    /// sees to it that they do not.
    pub fn new(
        frontend: A,
        members: &[(A, usize)],
        mut ports: impl Iterator<Item = u16>,
        holds: Holds,
    ) -> SnatPorts<A> {
        let blocks: Vec<Block> = members
            .iter()
            .map(|&(_, size)| {
                let free: VecDeque<u16> = ports.by_ref().take(size).collect();
                let capacity = free.len();
                Block {
                    free,
                    held_fin: VecDeque::with_capacity(capacity),
                    held_rst: VecDeque::with_capacity(capacity),
                    exhausted: false,
                }
            })
            .collect();
        let by_member = members
            .iter()
            .enumerate()
            .map(|(i, &(m, _))| (m, i))
            .collect();
        let total = blocks.iter().map(|b| b.free.len()).sum();
        SnatPorts {
            frontend,
            blocks,
            total,
            lent_count: 0,
            tuples: 0,
            by_member,
            holds,
            lent: Box::new([0; 1024]),
        }
    }

    /// A frontend whose `members` all draw from one pool of `ports` on demand.
    pub fn shared(
        frontend: A,
        members: &[A],
        ports: impl Iterator<Item = u16>,
        holds: Holds,
    ) -> SnatPorts<A> {
        let all = usize::from(u16::MAX);
        let mut pool = SnatPorts::new(frontend, &[(frontend, all)], ports, holds);
        pool.by_member = members.iter().map(|&m| (m, 0)).collect();
        pool
    }

    /// The frontend address these ports belong to.
    pub fn frontend(&self) -> A {
        self.frontend
    }

    /// How many ports all blocks hold.
    pub fn total(&self) -> usize {
        self.total
    }

    /// How many ports are lent to flows now (held ports are not lent); under masquerade, how
    /// many flows use a port of the frontend.
    pub fn lent(&self) -> usize {
        self.lent_count + self.tuples
    }

    /// The next port of a shared pool's range, in turn, without lending it: masquerade's
    /// candidates when a member's own port would clash. `None` for an empty pool.
    pub fn next_candidate(&mut self) -> Option<u16> {
        let block = self.blocks.first_mut()?;
        let port = block.free.pop_front()?;
        block.free.push_back(port);
        Some(port)
    }

    /// A masquerade flow began using a port of the frontend (counted, not lent)...
    pub fn tuple_opened(&mut self) {
        self.tuples += 1;
    }

    /// ... and ended.
    pub fn tuple_closed(&mut self) {
        self.tuples = self.tuples.saturating_sub(1);
    }

    /// Lends one of `member`'s ports at `now`, or `None` when its block is exhausted (or it has
    /// none here).
    pub fn allocate(&mut self, member: A, now: Tick) -> Option<u16> {
        let block = &mut self.blocks[*self.by_member.get(&member)?];
        for held in [&mut block.held_fin, &mut block.held_rst] {
            while let Some(&(port, until)) = held.front() {
                if until > now {
                    break;
                }
                held.pop_front();
                block.free.push_back(port);
            }
        }
        let port = block.free.pop_front()?;
        block.exhausted = false;
        self.lent[usize::from(port) / 64] |= 1 << (port % 64);
        self.lent_count += 1;
        Some(port)
    }

    /// Takes back `member`'s `port`, from a flow that ended with `ending` at tick `ended`.
    /// A port that is not lent is ignored.
    pub fn release(&mut self, member: A, port: u16, ending: Ending, ended: Tick) {
        if !self.take_lent(port) {
            return;
        }
        let Some(&i) = self.by_member.get(&member) else {
            return;
        };
        let block = &mut self.blocks[i];
        let (held, until) = match ending {
            Ending::Fin => (&mut block.held_fin, ended + self.holds.after_fin),
            Ending::Rst => (&mut block.held_rst, ended + self.holds.after_rst),
            // Kept with the RST holds: the queue stays ordered by the tick each comes free.
            Ending::Idle => (&mut block.held_rst, ended + self.holds.after_idle),
        };
        // Kept in order of release, so `allocate` need only look at the front: flows end at
        // their last packet or at their expiry, which are not always in order.
        let at = held.partition_point(|&(_, u)| u <= until);
        held.insert(at, (port, until));
    }

    /// Whether `member`'s block has run out, the first time since it last lent a port: for
    /// telling of exhaustion once, not on every packet.
    pub fn newly_exhausted(&mut self, member: A) -> bool {
        let Some(&i) = self.by_member.get(&member) else {
            return false;
        };
        !std::mem::replace(&mut self.blocks[i].exhausted, true)
    }

    /// Ports of all blocks that are held, not yet free again.
    pub fn held(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| b.held_fin.len() + b.held_rst.len())
            .sum()
    }

    /// Takes back a port that was lent but never used (its connection was refused at once).
    pub fn release_unused(&mut self, member: A, port: u16) {
        if !self.take_lent(port) {
            return;
        }
        if let Some(&i) = self.by_member.get(&member) {
            self.blocks[i].free.push_front(port);
        }
    }

    /// Ports `member` could be lent at `now`: free, or held with the hold over (for tests).
    #[cfg(test)]
    pub fn available(&self, member: A, now: Tick) -> usize {
        self.by_member.get(&member).map_or(0, |&i| {
            let b = &self.blocks[i];
            let matured =
                |q: &VecDeque<(u16, Tick)>| q.iter().filter(|&&(_, until)| until <= now).count();
            b.free.len() + matured(&b.held_fin) + matured(&b.held_rst)
        })
    }

    /// Whether `port` is lent to a flow now (for the invariant checks).
    #[cfg(any(test, fuzzing))]
    pub fn is_lent(&self, port: u16) -> bool {
        self.lent[usize::from(port) / 64] & (1 << (port % 64)) != 0
    }

    /// Checks that the lent ports and their count agree (for tests and fuzzing).
    #[cfg(any(test, fuzzing))]
    pub fn check(&self) -> Result<(), String> {
        let marked: u32 = self.lent.iter().map(|w| w.count_ones()).sum();
        if marked as usize != self.lent_count {
            return Err(format!(
                "SNAT pool of {:?}: {marked} ports marked lent, {} counted",
                std::any::type_name::<A>(),
                self.lent_count
            ));
        }
        Ok(())
    }

    fn take_lent(&mut self, port: u16) -> bool {
        let (word, bit) = (usize::from(port) / 64, 1u64 << (port % 64));
        let was = self.lent[word] & bit != 0;
        self.lent[word] &= !bit;
        self.lent_count -= usize::from(was);
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
    const HOLDS: Holds = Holds {
        after_fin: 240,
        after_rst: 15,
        after_idle: 0,
    };

    #[test]
    fn each_member_owns_its_own_block() {
        let mut pool = SnatPorts::new(
            Ipv4Addr::new(203, 0, 113, 10),
            &[(A, 2), (B, 2)],
            (1024..).filter(|&p| p != 1025),
            HOLDS,
        );
        assert_eq!(
            [pool.allocate(A, 0), pool.allocate(A, 0)],
            [Some(1024), Some(1026)]
        );
        assert_eq!(pool.allocate(A, 0), None, "A's block is exhausted");
        assert_eq!(
            [pool.allocate(B, 0), pool.allocate(B, 0)],
            [Some(1027), Some(1028)],
            "B's is not A's"
        );
        assert_eq!(
            pool.allocate(Ipv4Addr::new(192, 0, 2, 99), 0),
            None,
            "not a member here"
        );
    }

    #[test]
    fn blocks_may_differ_in_size_and_run_short_when_ports_run_out() {
        let mut pool = SnatPorts::new(
            Ipv4Addr::new(203, 0, 113, 10),
            &[(A, 1), (B, 8)],
            1024..1030,
            HOLDS,
        );
        assert_eq!(pool.available(A, 0), 1);
        assert_eq!(pool.available(B, 0), 5);
        assert_eq!(pool.allocate(A, 0), Some(1024));
        assert_eq!(pool.allocate(B, 0), Some(1025));
    }

    #[test]
    fn a_released_port_is_held_for_its_endings_time_then_lent_again() {
        // Azure LB SNAT: a port is reused 240 s after a FIN, 15 s after a RST.
        let mut pool = SnatPorts::new(Ipv4Addr::new(203, 0, 113, 10), &[(A, 2)], 1024.., HOLDS);
        let (p, q) = (pool.allocate(A, 0).unwrap(), pool.allocate(A, 0).unwrap());
        pool.release(A, p, Ending::Fin, 100);
        pool.release(A, q, Ending::Rst, 100);
        pool.release(A, q, Ending::Rst, 100); // a second release changes nothing
        assert_eq!(pool.allocate(A, 114), None);
        assert_eq!(pool.available(A, 115), 1);
        assert_eq!(pool.allocate(A, 115), Some(q));
        assert_eq!(pool.allocate(A, 339), None);
        assert_eq!(pool.allocate(A, 340), Some(p));
    }

    #[test]
    fn shared_ports_go_to_whichever_member_asks_first() {
        let mut pool =
            SnatPorts::shared(Ipv4Addr::new(203, 0, 113, 10), &[A, B], 1024..1027, HOLDS);
        assert_eq!(
            [
                pool.allocate(A, 0),
                pool.allocate(A, 0),
                pool.allocate(B, 0)
            ],
            [Some(1024), Some(1025), Some(1026)]
        );
        assert_eq!(pool.allocate(B, 0), None);
        assert_eq!((pool.total(), pool.lent()), (3, 3));
    }

    #[test]
    fn a_port_whose_hold_ended_first_is_lent_first_whatever_the_release_order() {
        // A half-open flow expiring at 130 holds its port to 145; a flow reset at 101 and
        // released at 131 holds its port only to 116.
        let mut pool = SnatPorts::new(Ipv4Addr::new(203, 0, 113, 10), &[(A, 2)], 1024.., HOLDS);
        let (p, q) = (pool.allocate(A, 0).unwrap(), pool.allocate(A, 0).unwrap());
        pool.release(A, p, Ending::Rst, 130);
        pool.release(A, q, Ending::Rst, 101);
        assert_eq!(pool.held(), 2);
        assert_eq!(pool.allocate(A, 131), Some(q));
        assert_eq!(pool.allocate(A, 131), None);
        assert_eq!(pool.allocate(A, 145), Some(p));
    }

    #[test]
    fn an_unused_port_comes_back_at_once() {
        let mut pool = SnatPorts::new(Ipv4Addr::new(203, 0, 113, 10), &[(A, 1)], 1024.., HOLDS);
        let p = pool.allocate(A, 0).unwrap();
        pool.release_unused(A, p);
        assert_eq!(pool.allocate(A, 0), Some(p));
    }
}
