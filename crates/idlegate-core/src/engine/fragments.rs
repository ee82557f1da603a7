//! The engine's side of IPv4 fragments ([`crate::state::fragment`]): the first fragment of a datagram
//! goes through the flow table like a whole packet, and what it became is remembered for the
//! later fragments, which get the same addresses (or wait for it, held).

use super::*;
use crate::state::fragment::{Datagram, Later, Translation};
use crate::wire::family::Side;
use smoltcp::wire::IpProtocol;

impl<E: Endpoint> Core<E> {
    /// A packet [`Headers::parse`] found to be a fragment, arriving on `from` at `now`.
    pub(super) fn fragment(&mut self, now: Instant, from: Interface, packet: &mut [u8]) -> Verdict {
        // IPv6 fragments are not followed (nor are IPv4 ones under a box that drops them).
        let Some(fragment) = E::fragment_of(packet) else {
            return self.drop(DropReason::Fragment);
        };
        let protocol = match fragment.ip.protocol {
            IpProtocol::Tcp => Protocol::Tcp,
            IpProtocol::Udp => Protocol::Udp,
            _ => return self.drop(DropReason::UnsupportedProtocol),
        };
        if !self.fragment_table().passes(protocol) {
            return self.drop(DropReason::Fragment);
        }
        let datagram = Datagram {
            from,
            src: fragment.ip.src,
            dst: fragment.ip.dst,
            protocol,
            id: fragment.id,
        };
        let tick = self.tick(now);
        if fragment.offset > 0 {
            return self.later_fragment(datagram, packet, tick);
        }
        let headers = match Headers::<E>::parse_first_fragment(&fragment.ip, packet) {
            Ok(h) => h,
            Err(e) => return self.drop(e.into()),
        };
        let verdict = self.handle_headers(now, from, &headers, packet, None);
        let Verdict::Forward { interface: out, .. } = verdict else {
            return verdict;
        };
        self.counters.fragments_forwarded += 1;
        let Some(after) = E::fragment_of(packet) else {
            return verdict;
        };
        let translation = Translation {
            src: after.ip.src,
            dst: after.ip.dst,
            out,
        };
        let (released, expired) = {
            let mut table = self.fragment_table();
            let released = table.remember(datagram, translation, tick);
            (released, table.take_expired())
        };
        self.counters.drops[DropReason::FragmentWithoutFirst as usize] += expired;
        for mut held in released {
            translate_fragment::<E>(&mut held, &datagram, &translation);
            self.counters.forwarded += 1;
            self.counters.fragments_forwarded += 1;
            self.transmits.push_back((out, Outgoing::Packet(held)));
        }
        verdict
    }

    /// A fragment other than the first: translated as its first fragment was, or held for it.
    fn later_fragment(
        &mut self,
        datagram: Datagram<E::Ip>,
        packet: &mut [u8],
        now: Tick,
    ) -> Verdict {
        let (later, expired) = {
            let mut table = self.fragment_table();
            let later = table.later(datagram, packet, now);
            (later, table.take_expired())
        };
        self.counters.drops[DropReason::FragmentWithoutFirst as usize] += expired;
        match later {
            Later::Translate(translation) => {
                translate_fragment::<E>(packet, &datagram, &translation);
                self.counters.forwarded += 1;
                self.counters.fragments_forwarded += 1;
                Verdict::Forward {
                    interface: translation.out,
                    destination: translation.dst.into(),
                }
            }
            // Copied, to be sent when its first fragment comes: nothing to forward now.
            Later::Held => Verdict::Held,
            Later::Refused => self.drop(DropReason::FragmentWithoutFirst),
        }
    }

    /// The fragment table. A shard that panicked while holding it left it consistent (each
    /// operation completes or changes nothing), so a poisoned lock is taken as is.
    fn fragment_table(&self) -> MutexGuard<'_, FragmentTable<E::Ip>> {
        self.fragments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Gives a fragment of `datagram` the addresses its first fragment left with.
fn translate_fragment<E: Endpoint>(
    packet: &mut [u8],
    datagram: &Datagram<E::Ip>,
    translation: &Translation<E::Ip>,
) {
    if translation.src != datagram.src {
        E::set_ip(packet, Side::Src, datagram.src, translation.src);
    }
    if translation.dst != datagram.dst {
        E::set_ip(packet, Side::Dst, datagram.dst, translation.dst);
    }
}
