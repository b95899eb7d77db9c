//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Partial sums travel as `u32` so a pseudo-header, a header and a payload
//! can be summed separately and added before one final [`fold`]. Every
//! function returning a partial sum returns it already folded to at most
//! `0xffff`, so adding up to 65 536 of them cannot overflow.
//!
//! A checksum field holds `!fold(sum)`. Because `fold` of a non-zero sum is
//! never 0, a correctly computed checksum is never `0xffff` (the all-zero
//! data case aside). The incremental updates below preserve that: given a
//! field computed from scratch they return exactly what a from-scratch
//! computation over the rewritten data would, which is what lets the tests
//! compare rewritten packets byte for byte with freshly built ones.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Ones-complement sum of `data` as big-endian 16-bit words, an odd final
/// byte padded with zero on the right. Returns a partial sum (`<= 0xffff`).
///
/// `data` must start at an even offset of the checksummed region for the
/// result to be addable to other partial sums.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    // 64-bit words with end-around carry give the same ones-complement sum
    // as 16-bit words (2^16 = 1 modulo 0xffff) at a quarter of the adds.
    // The sum is byte-order independent (RFC 1071 section 2(B)): words are
    // loaded little-endian, with no swap per word, and the folded result is
    // swapped once at the end.
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let (s, carry) = acc.overflowing_add(u64::from_le_bytes(w));
        acc = s + u64::from(carry);
    }
    // The tail, up to seven bytes, with fixed-size loads (copying it into a
    // zeroed word and loading that stalls on store forwarding). A 16-bit
    // word contributes the same wherever it sits in a wider word, so the
    // pieces are simply added.
    let mut rem = chunks.remainder();
    let mut tail: u64 = 0;
    if let Some((w, rest)) = rem.split_first_chunk::<4>() {
        tail += u64::from(u32::from_le_bytes(*w));
        rem = rest;
    }
    if let Some((w, rest)) = rem.split_first_chunk::<2>() {
        tail += u64::from(u16::from_le_bytes(*w));
        rem = rest;
    }
    if let Some(&b) = rem.first() {
        // Padded with zero on the right: the high byte of a big-endian
        // word, the low byte of a little-endian one.
        tail += u64::from(b);
    }
    let (s, carry) = acc.overflowing_add(tail);
    acc = s + u64::from(carry);
    u32::from(fold64(acc).swap_bytes())
}

/// [`sum`] of exactly 20 bytes (an IPv4 header without options, a TCP
/// header without options): three loads, no loop.
#[inline(always)]
pub fn sum20(data: &[u8; 20]) -> u32 {
    let (a, rest) = data
        .split_first_chunk::<8>()
        .map_or(([0; 8], &[][..]), |(a, r)| (*a, r));
    let (b, rest) = rest
        .split_first_chunk::<8>()
        .map_or(([0; 8], &[][..]), |(b, r)| (*b, r));
    let c = rest.first_chunk::<4>().copied().unwrap_or([0; 4]);
    let a = u128::from(u64::from_le_bytes(a));
    let b = u128::from(u64::from_le_bytes(b));
    let c = u128::from(u32::from_le_bytes(c));
    let wide = a + b + c;
    let acc = (wide as u64) as u128 + (wide >> 64);
    let acc = (acc as u64).wrapping_add((acc >> 64) as u64);
    u32::from(fold64(acc).swap_bytes())
}

/// Folds the carries of a 32-bit accumulator into 16 bits (end-around
/// carry). Does not complement: a checksum field is `!fold(..)`.
#[inline]
pub const fn fold(acc: u32) -> u16 {
    // Two rounds suffice: after the first the value is at most 0x1_fffe,
    // whose folding cannot carry again.
    let a = (acc & 0xffff) + (acc >> 16);
    let a = (a & 0xffff) + (a >> 16);
    a as u16
}

#[inline]
const fn fold64(acc: u64) -> u16 {
    let a = (acc & 0xffff_ffff) + (acc >> 32);
    let a = (a & 0xffff) + (a >> 16);
    let a = (a & 0xffff) + (a >> 16);
    let a = (a & 0xffff) + (a >> 16);
    a as u16
}

/// The checksum field value for `data` alone (no pseudo-header).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Completes a transport checksum its sender left to offload (Linux's
/// `CHECKSUM_PARTIAL`, `TP_STATUS_CSUMNOTREADY` on an `AF_PACKET` ring):
/// `segment` is the TCP or UDP header and payload, whose checksum field at
/// `field` holds the pseudo-header's folded sum in place of a checksum, as
/// the kernel leaves it for the device. Writes what the device would have:
/// the complement of the sum over the whole segment, field included (UDP's
/// zero written as `0xffff`, `udp`). The result is what [`checksum`] over
/// the pseudo-header and segment gives from scratch. A `field` outside
/// `segment` changes nothing.
#[inline]
pub fn complete_partial(segment: &mut [u8], field: usize, udp: bool) {
    if segment.len() < field + 2 {
        return;
    }
    let mut c = !fold(sum(segment));
    if udp && c == 0 {
        c = 0xffff;
    }
    segment[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Partial sum of the IPv4 pseudo-header (RFC 793 / RFC 768): source,
/// destination, zero, protocol, upper-layer length.
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u32) -> u32 {
    let s = src.to_bits();
    let d = dst.to_bits();
    // Adding the length's high half keeps this exact for the (invalid) case
    // of a length above 0xffff instead of silently truncating it.
    let acc = (s >> 16)
        + (s & 0xffff)
        + (d >> 16)
        + (d & 0xffff)
        + u32::from(protocol)
        + (length >> 16)
        + (length & 0xffff);
    u32::from(fold(acc))
}

/// Partial sum of the IPv6 pseudo-header (RFC 8200 section 8.1): source,
/// destination, 32-bit upper-layer length, next header.
#[inline]
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> u32 {
    let acc = sum(&src.octets())
        + sum(&dst.octets())
        + u32::from(next_header)
        + (length >> 16)
        + (length & 0xffff);
    u32::from(fold(acc))
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word of the covered data
/// changes from `old` to `new`: `HC' = ~(~HC + ~m + m')`.
#[inline]
pub const fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    !fold((!csum) as u32 + (!old) as u32 + new as u32)
}

/// RFC 1624 eqn. 3 for a field of several words (a 4- or 16-byte address):
/// the checksum after the covered bytes `old` are replaced by `new`.
///
/// `old` and `new` must have the same length, and the field must start at
/// an even offset of the checksummed data (true of every address field and
/// of the pseudo-header).
#[inline]
pub fn update_bytes(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    // ~(a + b) = ~a + ~b in ones-complement arithmetic, so complementing the
    // folded sum of `old` equals summing its complemented words.
    !fold(u32::from(!csum) + u32::from(!fold(sum(old))) + sum(new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Textbook 16-bit-at-a-time sum, the oracle for the 64-bit fast path.
    fn naive_sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map_or(0, u32::from);
            acc += hi | lo;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn ipv4_header_golden() {
        // Well-known example header; its checksum field (b861) zeroed.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0xb861);
    }

    #[test]
    fn odd_length_pads_right() {
        assert_eq!(fold(sum(&[0xab])), 0xab00);
        assert_eq!(fold(sum(&[0x12, 0x34, 0xab])), 0x1234 + 0xab00);
        assert_eq!(fold(sum(&[])), 0);
    }

    #[test]
    fn fold_carries() {
        assert_eq!(fold(0x0001_fffe), 0xffff);
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(fold(0x0002_0001), 0x0003);
        assert_eq!(fold64(u64::MAX), 0xffff);
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285
        // gives HC' = 0x0000 (the RFC's point: eqn. 3 never yields -0).
        assert_eq!(update_u16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn pseudo_headers_match_flat_sum() {
        let s4 = Ipv4Addr::new(192, 0, 2, 1);
        let d4 = Ipv4Addr::new(198, 51, 100, 7);
        let flat4 = [192, 0, 2, 1, 198, 51, 100, 7, 0, 6, 0x05, 0xdc];
        assert_eq!(pseudo_header_v4(s4, d4, 6, 1500), sum(&flat4));

        let s6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d6: Ipv6Addr = "2001:db8::ffff:2".parse().unwrap();
        let mut flat6 = Vec::new();
        flat6.extend_from_slice(&s6.octets());
        flat6.extend_from_slice(&d6.octets());
        flat6.extend_from_slice(&70_000u32.to_be_bytes());
        flat6.extend_from_slice(&[0, 0, 0, 17]);
        assert_eq!(pseudo_header_v6(s6, d6, 17, 70_000), sum(&flat6));
    }

    proptest! {
        #[test]
        fn sum_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(fold(sum(&data)), naive_sum(&data));
        }

        #[test]
        fn sum20_matches_sum(data in proptest::array::uniform20(any::<u8>())) {
            prop_assert_eq!(sum20(&data), sum(&data));
        }

        #[test]
        fn split_sums_add_up(data in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..100) {
            let cut = (cut * 2).min(data.len() & !1);
            let (a, b) = data.split_at(cut);
            prop_assert_eq!(fold(sum(a) + sum(b)), fold(sum(&data)));
        }

        /// Incremental update equals recomputation from scratch, for a word
        /// and for a 4/16-byte field anywhere (even offset) in the data.
        #[test]
        fn incremental_equals_recompute(
            mut data in proptest::collection::vec(any::<u8>(), 32..80),
            at in 0usize..8,
            new16 in any::<u16>(),
            new_field in proptest::collection::vec(any::<u8>(), 16),
            wide in any::<bool>(),
        ) {
            // A real checksum never covers all-zero data, the one input where
            // -0 and +0 differ; keep a non-zero word out of the rewrite's way.
            data[0] |= 0x40;
            let at = 2 + at * 2;
            let before = checksum(&data);

            let old16 = u16::from_be_bytes([data[at], data[at + 1]]);
            let mut d1 = data.clone();
            d1[at..at + 2].copy_from_slice(&new16.to_be_bytes());
            prop_assert_eq!(update_u16(before, old16, new16), checksum(&d1));

            let n = if wide { 16 } else { 4 };
            let old = data[at..at + n].to_vec();
            let mut d2 = data.clone();
            d2[at..at + n].copy_from_slice(&new_field[..n]);
            prop_assert_eq!(update_bytes(before, &old, &new_field[..n]), checksum(&d2));
        }
    }
}
