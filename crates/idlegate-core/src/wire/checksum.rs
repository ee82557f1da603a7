//! Incremental Internet checksum update (RFC 1624).
//!
//! A NAT changes a few 16-bit words of a packet (addresses, ports); recomputing the whole
//! checksum would touch every payload byte. RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`, updates
//! it from the old and new words alone. Hand-written because neither `smoltcp` nor `etherparse`
//! offers an incremental update; it is a handful of lines, property-tested in `tests` against a
//! full recomputation.

/// Checksum `checksum` after the 16-bit word `old` became `new`.
#[inline]
pub fn update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// Checksum `checksum` after the 32-bit word `old` (e.g. an IPv4 address) became `new`.
#[inline]
pub fn update_u32(checksum: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!checksum)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!old as u16)
        + (new >> 16)
        + (new & 0xffff);
    !fold(sum)
}

/// The Internet checksum (RFC 1071) of `bytes`: zero for a header whose own checksum field
/// is right. For short headers off the per-packet path (a quoted IP header in an ICMP error).
pub fn of(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = match pair {
            [hi, lo] => u16::from_be_bytes([*hi, *lo]),
            [hi] => u16::from_be_bytes([*hi, 0]),
            _ => 0,
        };
        sum += u32::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !fold(sum)
}

#[inline]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain RFC 1071 sum over big-endian 16-bit words.
    fn full(words: &[u16]) -> u16 {
        let sum: u32 = words.iter().map(|&w| u32::from(w)).sum();
        !fold(sum)
    }

    proptest! {
        // RFC 1624: the incremental update must equal a full recomputation.
        #[test]
        fn incremental_u16_matches_full_recomputation(
            mut words in proptest::collection::vec(any::<u16>(), 1..64),
            pick in any::<prop::sample::Index>(),
            new in any::<u16>(),
        ) {
            let before = full(&words);
            let i = pick.index(words.len());
            let old = std::mem::replace(&mut words[i], new);
            let after = full(&words);
            // 0x0000 and 0xffff are the same number in ones' complement; RFC 1624 eqn. 3
            // never produces -0 from a non-zero sum, so compare as ones' complement values.
            let got = update_u16(before, old, new);
            prop_assert!(got == after || (got == 0xffff && after == 0) || (got == 0 && after == 0xffff));
        }

        #[test]
        fn incremental_u32_matches_full_recomputation(
            mut words in proptest::collection::vec(any::<u16>(), 2..64),
            pick in any::<prop::sample::Index>(),
            new in any::<u32>(),
        ) {
            let before = full(&words);
            let i = pick.index(words.len() - 1);
            let old = (u32::from(words[i]) << 16) | u32::from(words[i + 1]);
            words[i] = (new >> 16) as u16;
            words[i + 1] = new as u16;
            let after = full(&words);
            let got = update_u32(before, old, new);
            prop_assert!(got == after || (got == 0xffff && after == 0) || (got == 0 && after == 0xffff));
        }
    }
}
