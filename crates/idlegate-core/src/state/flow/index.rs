//! The flow index: finds a flow's slab reference from the hash of one of its keys, in one
//! cache line, and says which line that is before it is read, so that a batch of lookups can
//! ask for all their lines first and have the cache misses overlap ([`prefetch`]).
//!
//! Contract: [`Index::find`] returns the first live reference, along the hash's probe
//! sequence, whose tag matches and that the caller's `eq` accepts; [`Index::insert`] adds a
//! reference the caller knows is not there yet (it grows the index first if needed);
//! [`Index::remove`] takes out the reference it is given. The index never reads a flow itself:
//! it calls back (`eq`, and `rehash` when it grows) with references.
//!
//! Layout: open addressing over groups of one 64-byte line each, a group holding eight
//! entries as eight 32-bit tags (the hash's high half) and eight 32-bit references. A key's
//! home group is the hash's low bits; a lookup reads the home group and goes on to the next
//! group only while the group it read has no never-used slot (linear probing by lines, so the
//! next line is the adjacent one). Removal leaves a tombstone only in a group that has no
//! never-used slot (a probe may have gone past it); anywhere else the slot becomes never-used
//! again (hashbrown's rule). The load, tombstones included, stays at most 7/8: at one flow's
//! two keys per 8-byte entry, 18 bytes per flow at 7/8 load and about 37 just after a doubling.
//!
//! Why hand-written: `hashbrown` 0.15+ has no raw API (removed) and no way to learn where a
//! key's bucket or control bytes are without reading them, so nothing can be prefetched; and
//! it keeps control bytes and buckets apart, so one lookup is two cache misses before the
//! flow's own. Here a lookup is one line of index and the flow's line, and both are known
//! from the hash alone (the flow's from the first tag that matches in the home group).

/// Entries per group: 8 tags and 8 references fill one 64-byte line.
const SLOTS: usize = 8;
/// A slot never used since the index was (re)built.
const EMPTY: u32 = u32::MAX;
/// A slot whose entry was removed from a group a probe may have gone past.
const DELETED: u32 = u32::MAX - 1;
/// References must stay below this.
pub const MAX_REF: u32 = DELETED;

/// One cache line of the index.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Group {
    tags: [u32; SLOTS],
    refs: [u32; SLOTS],
}

const NEVER_USED: Group = Group {
    tags: [0; SLOTS],
    refs: [EMPTY; SLOTS],
};

impl Group {
    fn has_empty(&self) -> bool {
        self.refs.contains(&EMPTY)
    }

    /// The slots whose tag is `tag`, a bit each (written so the compiler compares the eight
    /// tags at once).
    #[inline]
    fn matches(&self, tag: u32) -> u32 {
        let mut bits = 0;
        for (i, &t) in self.tags.iter().enumerate() {
            bits |= u32::from(t == tag) << i;
        }
        bits
    }
}

/// The index of the flow table: see the module documentation.
pub struct Index {
    groups: Vec<Group>,
    /// Live entries.
    len: usize,
    /// Tombstones.
    deleted: usize,
}

#[inline]
fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl Index {
    pub fn new() -> Index {
        Index {
            groups: Vec::new(),
            len: 0,
            deleted: 0,
        }
    }

    #[cfg(any(test, fuzzing))]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The home group of `hash`; the index must have groups.
    #[inline]
    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.groups.len() - 1)
    }

    /// Asks the CPU for the line of `hash`'s home group, without waiting for it.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if !self.groups.is_empty() {
            prefetch(&self.groups[self.home(hash)]);
        }
    }

    /// The first live reference in `hash`'s home group whose tag matches: almost always the
    /// one [`Index::find`] will return (the tag is 32 bits of the hash), or `None`.
    #[inline]
    pub fn first_candidate(&self, hash: u64) -> Option<u32> {
        if self.groups.is_empty() {
            return None;
        }
        let g = &self.groups[self.home(hash)];
        let mut bits = g.matches(tag(hash));
        while bits != 0 {
            let r = g.refs[bits.trailing_zeros() as usize];
            if r < DELETED {
                return Some(r);
            }
            bits &= bits - 1;
        }
        None
    }

    /// The first live reference with `hash`'s tag along its probe sequence that `eq` accepts.
    #[inline]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.groups.is_empty() {
            return None;
        }
        let (mask, t) = (self.groups.len() - 1, tag(hash));
        let mut at = self.home(hash);
        // The load bound leaves never-used slots, so this ends; the count is a safety net.
        for _ in 0..self.groups.len() {
            let g = &self.groups[at];
            let mut bits = g.matches(t);
            while bits != 0 {
                let r = g.refs[bits.trailing_zeros() as usize];
                if r < DELETED && eq(r) {
                    return Some(r);
                }
                bits &= bits - 1;
            }
            if g.has_empty() {
                return None;
            }
            at = (at + 1) & mask;
        }
        None
    }

    /// Adds `entry` under `hash`; `rehash` gives the hash of any entry already in, for when
    /// the index grows. The caller knows `entry`'s key is not in yet.
    pub fn insert(&mut self, hash: u64, entry: u32, rehash: impl Fn(u32) -> u64) {
        debug_assert!(entry < MAX_REF);
        let capacity = self.groups.len() * SLOTS;
        if (self.len + self.deleted + 1) * 8 > capacity * 7 {
            // Mostly tombstones: rebuilt at the same size; else twice as large.
            let groups = if (self.len + 1) * 16 <= capacity * 7 {
                self.groups.len()
            } else {
                (self.groups.len() * 2).max(2)
            };
            self.rebuild(groups, &rehash);
        }
        self.place(hash, entry);
    }

    /// Puts `entry` in the first free slot along `hash`'s probe sequence (room is known).
    fn place(&mut self, hash: u64, entry: u32) {
        let mask = self.groups.len() - 1;
        let mut at = self.home(hash);
        loop {
            let g = &mut self.groups[at];
            if let Some(i) = (0..SLOTS).find(|&i| g.refs[i] >= DELETED) {
                if g.refs[i] == DELETED {
                    self.deleted -= 1;
                }
                g.refs[i] = entry;
                g.tags[i] = tag(hash);
                self.len += 1;
                return;
            }
            at = (at + 1) & mask;
        }
    }

    /// Moves every live entry into `groups` fresh groups.
    fn rebuild(&mut self, groups: usize, rehash: &impl Fn(u32) -> u64) {
        let old = std::mem::replace(&mut self.groups, vec![NEVER_USED; groups]);
        (self.len, self.deleted) = (0, 0);
        for g in &old {
            for &r in g.refs.iter().filter(|&&r| r < DELETED) {
                self.place(rehash(r), r);
            }
        }
    }

    /// Takes `entry`, filed under `hash`, out; false if it was not there.
    pub fn remove(&mut self, hash: u64, entry: u32) -> bool {
        if self.groups.is_empty() {
            return false;
        }
        let mask = self.groups.len() - 1;
        let mut at = self.home(hash);
        for _ in 0..self.groups.len() {
            let g = &mut self.groups[at];
            if let Some(i) = (0..SLOTS).find(|&i| g.refs[i] == entry) {
                // A group with a never-used slot stopped every probe: none went past it.
                if g.has_empty() {
                    g.refs[i] = EMPTY;
                } else {
                    g.refs[i] = DELETED;
                    self.deleted += 1;
                }
                self.len -= 1;
                return true;
            }
            if g.has_empty() {
                return false;
            }
            at = (at + 1) & mask;
        }
        false
    }

    /// Every live entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.groups
            .iter()
            .flat_map(|g| g.refs.iter().copied())
            .filter(|&r| r < DELETED)
    }

    /// Bytes of the groups.
    pub fn allocation_size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<Group>()
    }

    /// Checks the counts and the load bound (for tests and fuzzing).
    #[cfg(any(test, fuzzing))]
    pub fn check(&self) -> Result<(), String> {
        let slots = || self.groups.iter().flat_map(|g| g.refs.iter().copied());
        let live = slots().filter(|&r| r < DELETED).count();
        let deleted = slots().filter(|&r| r == DELETED).count();
        if (live, deleted) != (self.len, self.deleted) {
            return Err(format!(
                "the index counts {} entries and {} tombstones but holds {live} and {deleted}",
                self.len, self.deleted
            ));
        }
        if !self.groups.is_empty() && !self.groups.iter().any(Group::has_empty) {
            return Err("the index has no never-used slot left".into());
        }
        Ok(())
    }
}

/// Asks the CPU to bring the line holding `value` into the caches without waiting for it: a
/// hint, with no effect on what any code computes. A no-op where there is no prefetch
/// instruction to reach without `unsafe` beyond this function.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has (it is in the target's
    // baseline); a prefetch never faults, and the address is of a live reference anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>());
    }
    #[cfg(target_arch = "aarch64")]
    #[allow(unsafe_code)]
    // SAFETY: PRFM is a hint: it reads nothing architecturally visible, writes no register or
    // memory and never faults; the address is of a live reference.
    unsafe {
        std::arch::asm!(
            "prfm pldl1keep, [{0}]",
            in(reg) value as *const T,
            options(nostack, readonly, preserves_flags)
        );
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A hash that files many keys in few groups, so probes, tombstones and growth all happen.
    fn crowded(key: u32) -> u64 {
        let h = u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h & 0xffff_ffff_0000_0000) | (h >> 61)
    }

    proptest! {
        #[test]
        fn index_finds_exactly_what_was_inserted_and_not_removed(
            ops in proptest::collection::vec((any::<bool>(), 0u32..300), 1..2000)
        ) {
            let mut index = Index::new();
            let mut model: HashMap<u32, ()> = HashMap::new();
            for (add, key) in ops {
                if add && !model.contains_key(&key) {
                    index.insert(crowded(key), key, crowded);
                    model.insert(key, ());
                } else if !add && model.remove(&key).is_some() {
                    prop_assert!(index.remove(crowded(key), key));
                }
                prop_assert_eq!(index.check(), Ok(()));
                prop_assert_eq!(index.len(), model.len());
            }
            for key in 0..300 {
                let found = index.find(crowded(key), |r| r == key);
                prop_assert_eq!(found.is_some(), model.contains_key(&key));
            }
            let mut all: Vec<u32> = index.iter().collect();
            all.sort_unstable();
            let mut expected: Vec<u32> = model.keys().copied().collect();
            expected.sort_unstable();
            prop_assert_eq!(all, expected);
        }
    }

    #[test]
    fn a_group_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Group>(), 64);
        assert_eq!(std::mem::align_of::<Group>(), 64);
    }
}
