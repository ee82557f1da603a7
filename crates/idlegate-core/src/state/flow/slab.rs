//! The flows' slab: where each flow lives, numbered from 0, in a cache line of its own.
//!
//! Contract: [`Slab::push`] appends a value and returns nothing (its number is the old
//! [`Slab::len`]); indexing by number reads or overwrites it; nothing is ever removed (the
//! flow table keeps its own free list of numbers to reuse). Values sit in chunks of
//! [`CHUNK`] lines that are allocated once, at their full size, and never move: growing the
//! slab copies nothing and frees nothing. A `Vec` of 64-byte-aligned lines would grow by
//! allocating anew, copying and freeing (an alignment above 16 bytes cannot use `realloc`),
//! which holds three times the old table at the moment it grows and leaves the freed blocks
//! below glibc's mmap threshold in the process's heap. The price is one more load per access,
//! of a chunk's address from a short table that stays in the caches.

use std::ops::{Index, IndexMut};

/// A value in a cache line of its own (two for an IPv6 flow): a 64-byte flow that straddled
/// two lines would cost a lookup a second miss.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Line<T>(pub T);

const CHUNK_BITS: u32 = 12;
/// Lines per chunk: 4,096, 256 KiB of 64-byte flows.
pub const CHUNK: usize = 1 << CHUNK_BITS;

/// See the module documentation.
pub struct Slab<T> {
    chunks: Vec<Vec<Line<T>>>,
    len: usize,
}

impl<T> Slab<T> {
    pub fn new() -> Slab<T> {
        Slab {
            chunks: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends `value` as number [`Slab::len`].
    pub fn push(&mut self, value: T) {
        let chunk = self.len >> CHUNK_BITS;
        if chunk == self.chunks.len() {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks[chunk].push(Line(value));
        self.len += 1;
    }

    pub fn get(&self, number: usize) -> Option<&Line<T>> {
        self.chunks
            .get(number >> CHUNK_BITS)?
            .get(number & (CHUNK - 1))
    }

    /// Bytes allocated: every chunk at its full size, and the table of chunks.
    pub fn allocation_size(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<Line<T>>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<Line<T>>>()
    }
}

impl<T> Default for Slab<T> {
    fn default() -> Slab<T> {
        Slab::new()
    }
}

impl<T> Index<usize> for Slab<T> {
    type Output = Line<T>;
    #[inline]
    fn index(&self, number: usize) -> &Line<T> {
        &self.chunks[number >> CHUNK_BITS][number & (CHUNK - 1)]
    }
}

impl<T> IndexMut<usize> for Slab<T> {
    #[inline]
    fn index_mut(&mut self, number: usize) -> &mut Line<T> {
        &mut self.chunks[number >> CHUNK_BITS][number & (CHUNK - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_numbers_across_chunks_and_never_move() {
        let mut slab = Slab::new();
        for i in 0..(2 * CHUNK + 5) {
            slab.push(i as u32);
        }
        let first: *const Line<u32> = &slab[0];
        for i in 0..CHUNK {
            slab.push(i as u32);
        }
        assert_eq!(slab.len(), 3 * CHUNK + 5);
        assert!(std::ptr::eq(first, &slab[0]), "a chunk moved");
        assert_eq!(slab[CHUNK + 7].0, (CHUNK + 7) as u32);
        assert_eq!(
            slab.get(2 * CHUNK + 4).map(|l| l.0),
            Some((2 * CHUNK + 4) as u32)
        );
        assert!(slab.get(4 * CHUNK).is_none());
        slab[3].0 = 99;
        assert_eq!(slab[3].0, 99);
        assert_eq!(std::mem::align_of::<Line<u32>>(), 64);
        assert_eq!(slab.allocation_size() / CHUNK / 64, 4);
    }
}
