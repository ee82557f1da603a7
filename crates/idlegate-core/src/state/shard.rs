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

use crate::state::flow::Interface;
use crate::wire::error::ParseError;
use crate::wire::family::Endpoint;
use crate::wire::icmp::{self, IcmpError};
use crate::wire::packet::{Headers, Parsed};
use std::hash::BuildHasher;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

/// How packets are spread over `count` shards.
#[derive(Debug, Clone)]
pub struct Sharding {
    count: usize,
    hasher: foldhash::fast::FixedState,
}

impl Sharding {
    /// `count` shards (at least one); `seed` keys the hash so outsiders cannot aim a flood at
    /// one shard.
    pub fn new(count: usize, seed: u64) -> Sharding {
        Sharding {
            count: count.max(1),
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    pub fn count(&self) -> usize {
        self.count
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
        (self.hasher.hash_one(remote) % self.count as u64) as usize
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
