//! SNAT ports: the frontend ports an outbound rule lends to its members' connections.
//!
//! Each frontend address has one [`SnatPorts`]. A port is lent to exactly one active flow and
//! comes back when the flow ends or expires. Free ports are handed out oldest-freed first, so a
//! port returns to use as late as possible and a remote still holding the old connection in
//! TIME_WAIT rarely sees it again soon. All storage is allocated up front.

use std::collections::VecDeque;

/// The free and lent ports of one frontend address.
#[derive(Debug, Clone)]
pub struct SnatPorts {
    free: VecDeque<u16>,
    lent: Box<[u64; 1024]>,
}

impl SnatPorts {
    /// A pool of `ports`, skipping the ones `reserved` claims (e.g. load-balancing ports).
    pub fn new(ports: impl IntoIterator<Item = u16>, reserved: impl Fn(u16) -> bool) -> SnatPorts {
        let free: VecDeque<u16> = ports.into_iter().filter(|&p| !reserved(p)).collect();
        SnatPorts {
            free,
            lent: Box::new([0; 1024]),
        }
    }

    /// Lends a port, or `None` when every port is lent (port exhaustion).
    pub fn allocate(&mut self) -> Option<u16> {
        let port = self.free.pop_front()?;
        self.lent[usize::from(port) / 64] |= 1 << (port % 64);
        Some(port)
    }

    /// Takes a lent port back. A port that is not lent is ignored.
    pub fn release(&mut self, port: u16) {
        let (word, bit) = (usize::from(port) / 64, 1u64 << (port % 64));
        if self.lent[word] & bit != 0 {
            self.lent[word] &= !bit;
            self.free.push_back(port);
        }
    }

    /// How many ports are free.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_until_released_and_reused_oldest_first() {
        let mut pool = SnatPorts::new(1024..=1027, |p| p == 1025);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        let c = pool.allocate().unwrap();
        assert_eq!([a, b, c], [1024, 1026, 1027]);
        assert_eq!(pool.allocate(), None, "exhausted");
        pool.release(b);
        pool.release(b); // a second release of the same port changes nothing
        pool.release(a);
        assert_eq!(pool.allocate(), Some(b));
        assert_eq!(pool.allocate(), Some(a));
        assert_eq!(pool.allocate(), None);
    }
}
