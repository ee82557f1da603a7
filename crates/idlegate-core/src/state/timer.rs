//! One hierarchical timing wheel for every flow's deadline.
//!
//! Time is counted in [`Tick`]s, milliseconds since the engine's epoch. Seven levels of 64 slots
//! (level `l` slots are 64^l ms wide) span 2^42 ms, 139 years of uptime; a deadline more than
//! 2^36 ms (two years) ahead is filed at that horizon and filed again when it comes. Entries are the flows
//! themselves, linked through a [`Link`] stored in each flow, so filing a timer never allocates.
//!
//! Refreshing a flow only moves its deadline later, so the engine does not re-file it: the wheel
//! checks the real deadline when the slot comes due and files the flow again if it has moved on
//! (lazy re-filing). Only a deadline that moves *earlier* needs [`TimerWheel::remove`] and
//! [`TimerWheel::insert`]. The invariant: a flow is filed at a slot that starts no later than its
//! deadline, so a flow never expires late by more than one tick, and never early.

/// Milliseconds since the engine's epoch.
pub type Tick = u64;

const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
const LEVELS: usize = 7;
/// Deadlines further out than this are filed at the horizon and re-filed when it comes.
const HORIZON: Tick = (1 << 36) - 1;
const NIL: u32 = u32::MAX;

/// Where a flow is filed: level × 64 + slot, or [`Link::UNFILED`].
pub type SlotId = u16;

/// The intrusive list links a flow carries for the wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub prev: u32,
    pub next: u32,
    pub slot: SlotId,
}

impl Link {
    pub const UNFILED_SLOT: SlotId = SlotId::MAX;
    /// The links of an entry that is in no slot.
    pub const UNFILED: Link = Link {
        prev: NIL,
        next: NIL,
        slot: Self::UNFILED_SLOT,
    };

    pub fn is_filed(&self) -> bool {
        self.slot != Self::UNFILED_SLOT
    }
}

/// Storage of the timed entries: the wheel reaches their links and deadlines by id.
pub trait Timers {
    fn link(&self, id: u32) -> Link;
    fn set_link(&mut self, id: u32, link: Link);
    fn deadline(&self, id: u32) -> Tick;
}

/// The wheel. See the module documentation.
#[derive(Debug)]
pub struct TimerWheel {
    /// Every slot that starts at or before this tick has been processed.
    elapsed: Tick,
    heads: [[u32; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    /// Entries taken from a due slot and not yet examined, linked through `next`.
    due: u32,
}

impl Default for TimerWheel {
    fn default() -> Self {
        TimerWheel {
            elapsed: 0,
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            due: NIL,
        }
    }
}

impl TimerWheel {
    /// Files `id` to come due at `deadline`.
    pub fn insert<T: Timers + ?Sized>(&mut self, store: &mut T, id: u32, deadline: Tick) {
        let (level, index) = self.position(deadline);
        let head = self.heads[level][index];
        if head != NIL {
            store.set_link(
                head,
                Link {
                    prev: id,
                    ..store.link(head)
                },
            );
        }
        store.set_link(
            id,
            Link {
                prev: NIL,
                next: head,
                slot: (level * SLOTS + index) as SlotId,
            },
        );
        self.heads[level][index] = id;
        self.occupied[level] |= 1 << index;
    }

    /// Takes `id` out of its slot; nothing happens if it is not filed.
    pub fn remove<T: Timers + ?Sized>(&mut self, store: &mut T, id: u32) {
        let link = store.link(id);
        if !link.is_filed() {
            return;
        }
        let (level, index) = (
            usize::from(link.slot) / SLOTS,
            usize::from(link.slot) % SLOTS,
        );
        if link.prev == NIL {
            self.heads[level][index] = link.next;
            if link.next == NIL {
                self.occupied[level] &= !(1 << index);
            }
        } else {
            store.set_link(
                link.prev,
                Link {
                    next: link.next,
                    ..store.link(link.prev)
                },
            );
        }
        if link.next != NIL {
            store.set_link(
                link.next,
                Link {
                    prev: link.prev,
                    ..store.link(link.next)
                },
            );
        }
        store.set_link(id, Link::UNFILED);
    }

    /// Checks the wheel against `live`, the entries that must be filed (for tests and fuzzing:
    /// it walks every slot): each slot's list is well linked and marked occupied, each entry
    /// records its slot, every live entry is filed exactly once, and nothing else is.
    #[cfg(any(test, fuzzing))]
    pub fn check<T: Timers + ?Sized>(&self, store: &T, live: &[u32]) -> Result<(), String> {
        if self.due != NIL {
            return Err("entries left due between calls".into());
        }
        let mut filed = std::collections::HashSet::new();
        for level in 0..LEVELS {
            for index in 0..SLOTS {
                let head = self.heads[level][index];
                if (head != NIL) != (self.occupied[level] & (1 << index) != 0) {
                    return Err(format!("slot {level}/{index}: occupied bit is wrong"));
                }
                let (mut prev, mut id) = (NIL, head);
                while id != NIL {
                    let link = store.link(id);
                    if link.prev != prev || usize::from(link.slot) != level * SLOTS + index {
                        return Err(format!("entry {id} in slot {level}/{index} is mislinked"));
                    }
                    if !filed.insert(id) {
                        return Err(format!("entry {id} is filed twice"));
                    }
                    (prev, id) = (id, link.next);
                }
            }
        }
        if let Some(id) = live.iter().find(|id| !filed.contains(id)) {
            return Err(format!("live entry {id} is not filed"));
        }
        if filed.len() != live.len() {
            return Err(format!(
                "{} entries filed for {} live ones",
                filed.len(),
                live.len()
            ));
        }
        Ok(())
    }

    /// The tick at which [`TimerWheel::poll_expired`] has work next: an expiry, or a slot to
    /// re-file. `None` when nothing is filed.
    pub fn next_wakeup(&self) -> Option<Tick> {
        if self.due != NIL {
            return Some(self.elapsed);
        }
        self.next_slot().map(|(_, _, tick)| tick)
    }

    /// The next entry whose deadline is at or before `now`, unfiled; `None` once there is none.
    /// Call it until it returns `None`.
    pub fn poll_expired<T: Timers + ?Sized>(&mut self, store: &mut T, now: Tick) -> Option<u32> {
        loop {
            if self.due != NIL {
                let id = self.due;
                self.due = store.link(id).next;
                store.set_link(id, Link::UNFILED);
                let deadline = store.deadline(id);
                if deadline <= now {
                    return Some(id);
                }
                self.insert(store, id, deadline);
                continue;
            }
            match self.next_slot() {
                Some((level, index, tick)) if tick <= now => {
                    self.elapsed = self.elapsed.max(tick);
                    self.due = std::mem::replace(&mut self.heads[level][index], NIL);
                    self.occupied[level] &= !(1 << index);
                }
                _ => break,
            }
        }
        self.elapsed = self.elapsed.max(now);
        None
    }

    fn position(&self, deadline: Tick) -> (usize, usize) {
        let deadline = deadline.clamp(self.elapsed, self.elapsed + HORIZON);
        let differing = (self.elapsed ^ deadline) | (SLOTS as u64 - 1);
        // Below LEVELS until the 2^42 ms of uptime the wheel spans; clamped rather than trusted.
        let level = (((63 - differing.leading_zeros()) / BITS) as usize).min(LEVELS - 1);
        let index = (deadline >> (level as u32 * BITS)) as usize % SLOTS;
        (level, index)
    }

    /// The earliest occupied slot: (level, index, the tick it starts at).
    fn next_slot(&self) -> Option<(usize, usize, Tick)> {
        (0..LEVELS).find_map(|level| {
            let bits = self.occupied[level];
            if bits == 0 {
                return None;
            }
            let shift = level as u32 * BITS;
            let current = (self.elapsed >> shift) as usize % SLOTS;
            let ahead = bits & (!0u64 << current);
            if ahead == 0 {
                // Behind the current position: overdue, process at once.
                return Some((level, bits.trailing_zeros() as usize, self.elapsed));
            }
            let index = ahead.trailing_zeros() as usize;
            let level_start = self.elapsed & !((1u64 << (shift + BITS)) - 1);
            let tick = (level_start + ((index as u64) << shift)).max(self.elapsed);
            Some((level, index, tick))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct Store {
        links: Vec<Link>,
        deadlines: Vec<Tick>,
    }

    impl Timers for Store {
        fn link(&self, id: u32) -> Link {
            self.links[id as usize]
        }
        fn set_link(&mut self, id: u32, link: Link) {
            self.links[id as usize] = link;
        }
        fn deadline(&self, id: u32) -> Tick {
            self.deadlines[id as usize]
        }
    }

    impl Store {
        fn add(&mut self, wheel: &mut TimerWheel, deadline: Tick) -> u32 {
            let id = self.links.len() as u32;
            self.links.push(Link::UNFILED);
            self.deadlines.push(deadline);
            wheel.insert(self, id, deadline);
            id
        }
    }

    /// Polls like the engine does: wake at each wakeup up to `until`, collecting expiries.
    fn run_until(
        wheel: &mut TimerWheel,
        store: &mut Store,
        until: Tick,
        fired: &mut Vec<(u32, Tick)>,
    ) {
        while let Some(t) = wheel.next_wakeup().filter(|&t| t <= until) {
            while let Some(id) = wheel.poll_expired(store, t) {
                fired.push((id, t));
            }
        }
        while let Some(id) = wheel.poll_expired(store, until) {
            fired.push((id, until));
        }
    }

    #[test]
    fn entry_fires_exactly_at_its_deadline() {
        let (mut wheel, mut store) = (TimerWheel::default(), Store::default());
        let id = store.add(&mut wheel, 240_000);
        let mut fired = Vec::new();
        run_until(&mut wheel, &mut store, 239_999, &mut fired);
        assert!(fired.is_empty());
        run_until(&mut wheel, &mut store, 240_000, &mut fired);
        assert_eq!(fired, vec![(id, 240_000)]);
        assert_eq!(wheel.next_wakeup(), None);
    }

    #[test]
    fn extended_deadline_is_refiled_lazily_and_fires_late_not_early() {
        let (mut wheel, mut store) = (TimerWheel::default(), Store::default());
        let id = store.add(&mut wheel, 4_000);
        store.deadlines[id as usize] = 9_000; // refreshed without touching the wheel
        let mut fired = Vec::new();
        run_until(&mut wheel, &mut store, 8_999, &mut fired);
        assert!(fired.is_empty());
        run_until(&mut wheel, &mut store, 20_000, &mut fired);
        assert_eq!(fired, vec![(id, 9_000)]);
    }

    #[test]
    fn removed_entry_never_fires() {
        let (mut wheel, mut store) = (TimerWheel::default(), Store::default());
        let a = store.add(&mut wheel, 100);
        let b = store.add(&mut wheel, 100);
        wheel.remove(&mut store, a);
        let mut fired = Vec::new();
        run_until(&mut wheel, &mut store, 1_000, &mut fired);
        assert_eq!(fired, vec![(b, 100)]);
    }

    proptest! {
        #[test]
        fn every_entry_fires_once_at_the_first_wakeup_at_or_after_its_deadline(
            deadlines in proptest::collection::vec(0u64..5_000_000, 1..200),
            extend in proptest::collection::vec(0u64..100_000, 1..200),
            removed in proptest::collection::vec(any::<bool>(), 1..200),
            start in prop_oneof![0u64..1_000_000, (1u64 << 36) - 10_000..(1u64 << 36) + 10_000],
            far in any::<bool>(),
        ) {
            let (mut wheel, mut store) = (TimerWheel::default(), Store::default());
            let mut fired = Vec::new();
            run_until(&mut wheel, &mut store, start, &mut fired);
            // Far deadlines reach the top levels and the horizon (days to years ahead).
            let scale = if far { 20_000 } else { 1 };
            let ids: Vec<u32> = deadlines.iter().map(|d| store.add(&mut wheel, start + d * scale)).collect();
            for (i, &id) in ids.iter().enumerate() {
                store.deadlines[id as usize] += extend[i % extend.len()];
                if removed[i % removed.len()] { wheel.remove(&mut store, id); }
            }
            run_until(&mut wheel, &mut store, start + 5_000_000 * scale + 200_000, &mut fired);
            let mut expected: Vec<(u32, Tick)> = ids.iter().enumerate()
                .filter(|(i, _)| !removed[i % removed.len()])
                .map(|(_, &id)| (id, store.deadlines[id as usize])).collect();
            expected.sort();
            fired.sort();
            prop_assert_eq!(fired, expected);
        }
    }
}
