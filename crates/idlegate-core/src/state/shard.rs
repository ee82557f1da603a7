//! Shards: which of several engines owns a packet, so that a gateway can run one engine per
//! core with no lock on the per-packet path.
//!
//! The engine rewrites one endpoint of a packet and never the other: inbound it changes the
//! destination (frontend → member) and leaves the source, the remote; outbound it changes the
//! source (member → frontend) and leaves the destination, the remote again. So the *remote
//! endpoint* is the same in both directions of a flow, before and after translation, and
//! [`Sharding::owner`] hashes it: both directions of every flow, and the ICMP errors about
//! it (by the packet they quote), land on the same shard. Every flow to one remote endpoint
//! lives in one shard, so the checks that span flows (a translated tuple already in use, a
//! masquerade port free for this remote) stay shard-local. SNAT ports, which a member's flows
//! to every remote share, are the one piece of state the shards share
//! ([`crate::Engine::sharded`]); they are touched when a flow starts or ends, not per packet.
//!
//! A packet the engine cannot read has no owner: whoever read it lets its own engine drop and
//! count it. Nor has a fragment after a datagram's first: it carries no ports, and whoever
//! reads it finds its translation in the fragment table all shards share. Nothing here allocates or panics on any input.
//!
//! The hash is [`endpoint_hash`], not a general-purpose hasher, because a second party computes
//! it too: the steering program the gateway loads onto its TUN devices (the binary crate's
//! `sys/steer.rs`), so that the kernel delivers each packet to the queue of the worker that owns
//! it. It is defined over what that program's loads see: the remote endpoint as 32-bit words,
//! each the big-endian reading of its bytes (an IPv4 address and the port; an IPv6 address's
//! four words and the port), keyed with the seed, mixed word by word with 64-bit multiplies and
//! xor-shifts, and reduced `% count`. Change it only together with that program.

use crate::state::flow::Interface;
use crate::wire::error::ParseError;
use crate::wire::family::Endpoint;
use crate::wire::icmp::{self, IcmpError};
use crate::wire::packet::{Headers, Parsed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

/// What each word is multiplied in with: 2^64 / φ, odd.
pub const ROUND_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
/// The finaliser's multiplier (SplitMix64's last).
pub const FINAL_MULTIPLIER: u64 = 0x94d0_49bb_1331_11eb;
/// The finaliser's first shift.
pub const FINAL_SHIFT: u32 = 29;

/// The hash of a remote endpoint given as `words` (see the module's text), keyed with `seed`:
///
/// ```text
/// h = seed
/// for w in words:  h = (h ^ w) * ROUND_MULTIPLIER;  h ^= h >> 32
/// h = (h ^ (h >> FINAL_SHIFT)) * FINAL_MULTIPLIER;  h ^= h >> 32
/// ```
///
/// (all arithmetic on u64, wrapping). Each round's multiply carries the word's bits upwards and
/// its shift brings the high half back down, so every bit of every word reaches the low bits
/// the `% count` keeps.
#[inline]
pub fn endpoint_hash(seed: u64, words: &[u32]) -> u64 {
    let mut h = seed;
    for &w in words {
        h = (h ^ u64::from(w)).wrapping_mul(ROUND_MULTIPLIER);
        h ^= h >> 32;
    }
    h = (h ^ (h >> FINAL_SHIFT)).wrapping_mul(FINAL_MULTIPLIER);
    h ^ (h >> 32)
}

/// How packets are spread over `count` shards.
#[derive(Debug, Clone)]
pub struct Sharding {
    count: usize,
    seed: u64,
}

impl Sharding {
    /// `count` shards (at least one); `seed` keys the hash so outsiders cannot aim a flood at
    /// one shard.
    pub fn new(count: usize, seed: u64) -> Sharding {
        Sharding {
            count: count.max(1),
            seed,
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The key of [`endpoint_hash`], for a steering program that must compute the same.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The shard that owns `packet`, which arrived on `from`; `None` if it cannot be read.
    pub fn owner(&self, packet: &[u8], from: Interface) -> Option<usize> {
        if self.count == 1 {
            return Some(0);
        }
        // Each family's parse straight into its own result: no [`Parsed`] made and copied.
        let remote =
            match packet.first()? >> 4 {
                6 => remote_of::<SocketAddrV6>(packet, &Headers::parse(packet), from)
                    .map(SocketAddr::V6),
                _ => remote_of::<SocketAddrV4>(packet, &Headers::parse(packet), from)
                    .map(SocketAddr::V4),
            }?;
        Some(self.shard_of(remote))
    }

    /// [`Sharding::owner`] of a packet already read into `parsed` ([`Parsed::new`] of
    /// `packet`), which the driver then hands to [`crate::Engine::handle_parsed`].
    #[inline]
    pub fn owner_of(&self, packet: &[u8], parsed: &Parsed, from: Interface) -> Option<usize> {
        if self.count == 1 {
            return Some(0);
        }
        let remote = remote_endpoint(packet, parsed, from)?;
        Some(self.shard_of(remote))
    }

    #[inline]
    fn shard_of(&self, remote: SocketAddr) -> usize {
        let hash = match remote {
            SocketAddr::V4(a) => {
                endpoint_hash(self.seed, &[u32::from(*a.ip()), u32::from(a.port())])
            }
            SocketAddr::V6(a) => {
                let o = a.ip().octets();
                let word = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                endpoint_hash(
                    self.seed,
                    &[word(0), word(4), word(8), word(12), u32::from(a.port())],
                )
            }
        };
        (hash % self.count as u64) as usize
    }
}

/// The endpoint on the outside of the flow `packet` belongs to.
fn remote_endpoint(packet: &[u8], parsed: &Parsed, from: Interface) -> Option<SocketAddr> {
    match parsed {
        Parsed::V6(headers) => remote_of::<SocketAddrV6>(packet, headers, from).map(SocketAddr::V6),
        Parsed::V4(headers) => remote_of::<SocketAddrV4>(packet, headers, from).map(SocketAddr::V4),
    }
}

fn remote_of<E: Endpoint>(
    packet: &[u8],
    parsed: &Result<Headers<E>, ParseError>,
    from: Interface,
) -> Option<E> {
    match parsed {
        Ok(h) => return Some(remote_in(h, from)),
        Err(ParseError::Fragment) => return first_fragment_remote(packet, from),
        Err(_) => {}
    }
    if !icmp::is_icmp(packet) {
        return None;
    }
    // An error from the outside quotes a packet the gateway sent out (to the remote); one from
    // the inside quotes a packet it delivered in (from the remote).
    let error = IcmpError::<E>::parse(packet).ok()?;
    Some(match from {
        Interface::Outside => error.quoted_dst,
        Interface::Inside => error.quoted_src,
    })
}

fn remote_in<E: Endpoint>(h: &Headers<E>, from: Interface) -> E {
    match from {
        Interface::Outside => h.src,
        Interface::Inside => h.dst,
    }
}

/// A datagram's first fragment has the ports: it goes where its flow is. A later one has none:
/// whoever reads it looks it up in the table the shards share ([`crate::state::fragment`]).
#[cold]
fn first_fragment_remote<E: Endpoint>(packet: &[u8], from: Interface) -> Option<E> {
    let fragment = E::fragment_of(packet).filter(|f| f.offset == 0)?;
    let h = Headers::<E>::parse_first_fragment(&fragment.ip, packet).ok()?;
    Some(remote_in(&h, from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn owner_of_endpoint(sharding: &Sharding, remote: SocketAddr) -> usize {
        sharding.shard_of(remote)
    }

    /// The ports of one address, one after another: the input a weak mix spreads worst.
    #[test]
    fn consecutive_ports_of_one_address_spread_evenly_over_the_shards() {
        for count in [2, 3, 4, 8] {
            let sharding = Sharding::new(count, 0x5eed);
            let mut seen = vec![0u32; count];
            for port in 1024..41_024u16 {
                let remote = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 7), port));
                seen[owner_of_endpoint(&sharding, remote)] += 1;
            }
            let mean = 40_000 / count as u32;
            for n in &seen {
                assert!(n.abs_diff(mean) < mean / 20, "{count} shards: {seen:?}");
            }
        }
    }

    #[test]
    fn another_seed_deals_the_endpoints_anew() {
        let (a, b) = (Sharding::new(4, 1), Sharding::new(4, 2));
        let same = (0..10_000u32)
            .filter(|&i| {
                let remote = SocketAddr::from((Ipv4Addr::from(0xc633_6400 + i), 443));
                owner_of_endpoint(&a, remote) == owner_of_endpoint(&b, remote)
            })
            .count();
        // One in four by chance.
        assert!(
            (2_200..2_800).contains(&same),
            "{same} of 10,000 kept their shard"
        );
    }

    #[test]
    fn every_word_and_its_order_count() {
        let h = |words: &[u32]| endpoint_hash(7, words);
        assert_ne!(h(&[1, 2]), h(&[2, 1]));
        assert_ne!(h(&[1, 2]), h(&[1, 3]));
        assert_ne!(h(&[0, 0, 0, 0, 0]), h(&[0, 0, 0, 1, 0]));
        assert_ne!(endpoint_hash(7, &[1, 2]), endpoint_hash(8, &[1, 2]));
    }
}
