//! IPv4 fragments: how the pieces of a datagram find their flow.
//!
//! Only a datagram's first fragment carries the transport header, so only it can be matched to
//! a flow (or open one). Where the profile's box passes fragments ([`Fragments`]), the engine
//! translates the first fragment as it would the whole datagram (the transport checksum it
//! carries covers the whole datagram, and an incremental update of addresses and ports stays
//! right), and remembers the translation under the datagram's identity: the addresses,
//! protocol and IP ID of RFC 791, and the side it came from. Every later fragment with that
//! identity gets the same addresses, and goes the same way.
//!
//! A later fragment that comes before its first one is held until the first is in, then
//! passed on translated (the reordering buffer RFC 4787 REQ-14 asks of a NAT). The receiver
//! reassembles the datagram, as it would one that a Linux box reassembled and fragmented again
//! on its way out.
//!
//! Bounds, so that fragments cannot exhaust the gateway: [`DATAGRAMS`] translations
//! remembered, each for [`TIMEOUT`] (Linux's `ipfrag_time`), the oldest replaced first; at
//! most [`HELD`] fragments of at most [`HELD_LEN`] bytes held, each for [`TIMEOUT`] at most;
//! what does not fit is dropped and counted. The table is allocated for IPv4 only and only
//! if the profile passes fragments, and is touched by fragments alone: a packet that is not a
//! fragment never reaches it. Shards of one gateway share it (locked per fragment), since a
//! later fragment has no ports to tell which shard owns its flow.

use crate::model::profile::Fragments;
use crate::state::flow::Interface;
use crate::state::timer::Tick;
use crate::wire::packet::Protocol;

/// Datagrams whose translation is remembered at once.
pub const DATAGRAMS: usize = 256;
/// How long the fragments of one datagram may take to arrive, in milliseconds: 30 s, Linux's
/// `net.ipv4.ipfrag_time` (not scaled: it bounds one datagram's pieces, not an idle flow).
pub const TIMEOUT: Tick = 30_000;
/// Fragments held, waiting for their first fragment.
pub const HELD: usize = 64;
/// The longest fragment held.
pub const HELD_LEN: usize = 2048;

/// A datagram's identity: the side its fragments arrive on, and RFC 791's (source,
/// destination, protocol, identification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<Ip> {
    pub from: Interface,
    pub src: Ip,
    pub dst: Ip,
    pub protocol: Protocol,
    pub id: u16,
}

/// What a datagram's first fragment became: its addresses as it left, and where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation<Ip> {
    pub src: Ip,
    pub dst: Ip,
    pub out: Interface,
}

#[derive(Debug, Clone, Copy)]
struct Remembered<Ip> {
    datagram: Datagram<Ip>,
    translation: Translation<Ip>,
    expires: Tick,
}

/// A fragment waiting for its first one.
#[derive(Debug)]
struct Held<Ip> {
    datagram: Datagram<Ip>,
    expires: Tick,
    packet: Vec<u8>,
}

/// What became of a later fragment looked up in the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Later<Ip> {
    /// Its first fragment went by: translate it so.
    Translate(Translation<Ip>),
    /// Held until its first fragment comes.
    Held,
    /// Neither: no room, too long.
    Refused,
}

/// The translations of datagrams under way and the fragments held for them.
#[derive(Debug)]
pub struct FragmentTable<Ip> {
    policy: Fragments,
    remembered: Vec<Remembered<Ip>>,
    /// Where the next translation goes once `remembered` is full: the oldest.
    next: usize,
    held: Vec<Held<Ip>>,
    /// Held fragments that expired before their first fragment came, not yet counted.
    expired: u64,
}

impl<Ip: Copy + Eq> FragmentTable<Ip> {
    /// A table for `policy`; it holds nothing and allocates nothing until a fragment passes.
    pub fn new(policy: Fragments) -> FragmentTable<Ip> {
        FragmentTable {
            policy,
            remembered: Vec::new(),
            next: 0,
            held: Vec::new(),
            expired: 0,
        }
    }

    /// Whether the box passes fragments of `protocol`.
    pub fn passes(&self, protocol: Protocol) -> bool {
        match self.policy {
            Fragments::Drop => false,
            Fragments::ForwardUdp => protocol == Protocol::Udp,
            Fragments::Forward => true,
        }
    }

    /// Remembers what `datagram`'s first fragment became at `now`, and gives back the
    /// fragments held for it (untranslated: the caller translates and sends them).
    pub fn remember(
        &mut self,
        datagram: Datagram<Ip>,
        translation: Translation<Ip>,
        now: Tick,
    ) -> Vec<Vec<u8>> {
        let entry = Remembered {
            datagram,
            translation,
            expires: now + TIMEOUT,
        };
        if let Some(same) = self.remembered.iter_mut().find(|r| r.datagram == datagram) {
            *same = entry;
        } else if self.remembered.len() < DATAGRAMS {
            self.remembered.push(entry);
        } else {
            self.remembered[self.next] = entry;
            self.next = (self.next + 1) % DATAGRAMS;
        }
        self.expire_held(now);
        let mut released = Vec::new();
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].datagram == datagram {
                released.push(self.held.swap_remove(i).packet);
            } else {
                i += 1;
            }
        }
        released
    }

    /// A later fragment of `datagram` at `now`: the translation of its first fragment, or,
    /// if that has not come yet, the fragment is held (a copy of `packet`) if there is room.
    pub fn later(&mut self, datagram: Datagram<Ip>, packet: &[u8], now: Tick) -> Later<Ip> {
        let known = self
            .remembered
            .iter()
            .find(|r| r.datagram == datagram && r.expires > now);
        if let Some(r) = known {
            return Later::Translate(r.translation);
        }
        self.expire_held(now);
        if packet.len() > HELD_LEN || self.held.len() >= HELD {
            return Later::Refused;
        }
        self.held.push(Held {
            datagram,
            expires: now + TIMEOUT,
            packet: packet.to_vec(),
        });
        Later::Held
    }

    /// Held fragments whose first fragment never came in time, since the last call: each is a
    /// drop to count.
    pub fn take_expired(&mut self) -> u64 {
        std::mem::take(&mut self.expired)
    }

    /// How many fragments are held now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn expire_held(&mut self, now: Tick) {
        let before = self.held.len();
        self.held.retain(|h| h.expires > now);
        self.expired += (before - self.held.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn datagram(id: u16) -> Datagram<Ipv4Addr> {
        Datagram {
            from: Interface::Outside,
            src: Ipv4Addr::new(203, 0, 113, 100),
            dst: Ipv4Addr::new(203, 0, 113, 10),
            protocol: Protocol::Udp,
            id,
        }
    }

    const TO_VM1: Translation<Ipv4Addr> = Translation {
        src: Ipv4Addr::new(203, 0, 113, 100),
        dst: Ipv4Addr::new(192, 0, 2, 11),
        out: Interface::Inside,
    };

    #[test]
    fn a_later_fragment_takes_its_first_fragments_translation_until_the_timeout() {
        let mut table = FragmentTable::new(Fragments::Forward);
        assert!(table.remember(datagram(7), TO_VM1, 0).is_empty());
        assert_eq!(
            table.later(datagram(7), b"x", TIMEOUT - 1),
            Later::Translate(TO_VM1)
        );
        // Another IP ID is another datagram.
        assert_eq!(table.later(datagram(8), b"x", 0), Later::Held);
        // Past the timeout the translation is forgotten.
        assert_eq!(table.later(datagram(7), b"y", TIMEOUT), Later::Held);
    }

    #[test]
    fn fragments_ahead_of_their_first_are_held_within_bounds_and_released_with_it() {
        let mut table = FragmentTable::new(Fragments::Forward);
        for i in 0..HELD {
            assert_eq!(table.later(datagram(1), &[i as u8], 0), Later::Held);
        }
        assert_eq!(table.later(datagram(2), b"z", 0), Later::Refused, "full");
        let too_long = vec![0u8; HELD_LEN + 1];
        let released = table.remember(datagram(1), TO_VM1, 5);
        assert_eq!(released.len(), HELD);
        assert_eq!(table.held(), 0);
        assert_eq!(table.later(datagram(3), &too_long, 5), Later::Refused);
        // A held fragment whose first never comes is dropped after the timeout, and counted.
        assert_eq!(table.later(datagram(4), b"w", 10), Later::Held);
        assert!(table.remember(datagram(5), TO_VM1, 10 + TIMEOUT).is_empty());
        assert_eq!((table.held(), table.take_expired()), (0, 1));
    }

    #[test]
    fn the_oldest_translation_gives_way_when_the_table_is_full() {
        let mut table = FragmentTable::new(Fragments::Forward);
        for id in 0..DATAGRAMS as u16 {
            table.remember(datagram(id), TO_VM1, 0);
        }
        table.remember(datagram(u16::MAX), TO_VM1, 0);
        assert_eq!(table.later(datagram(0), b"a", 1), Later::Held);
        assert_eq!(table.later(datagram(1), b"b", 1), Later::Translate(TO_VM1));
    }
}
