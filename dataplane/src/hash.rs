//! Hashes for the packet path.
//!
//! Two kinds: [`table_hash`] spreads keys over limpet's own tables (fast, and
//! only ever compared within one process), while [`stable_hash`] picks
//! backends and must give every limpet instance, on every machine and
//! version, the same answer for the same client, so a tier of limpet nodes
//! behind ECMP agrees on each client's backend without sharing state. The
//! stable hash is XXH3 with a fixed seed: specified, portable and fast on
//! the 4- and 16-byte inputs addresses make.

use std::net::IpAddr;

/// Seed for backend selection. Changing it moves every client; never do.
const SELECTION_SEED: u64 = 0x6c69_6d70_6574_0001; // "limpet" + 1

/// XXH3 over `bytes` with limpet's fixed selection seed.
#[inline]
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, SELECTION_SEED)
}

/// The stable hash of a client address, as used for `ClientIP` selection.
#[inline]
pub fn client_hash(addr: IpAddr) -> u64 {
    match addr {
        IpAddr::V4(a) => stable_hash(&a.octets()),
        IpAddr::V6(a) => stable_hash(&a.octets()),
    }
}

/// Folded 64x64->128 multiply: the mixing step of wyhash and foldhash.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

const K0: u64 = 0x243f_6a88_85a3_08d3;
const K1: u64 = 0x1319_8a2e_0370_7344;

/// A fast hash of a few machine words for in-process tables. Both halves of
/// the result are well mixed: tables take bucket bits from the bottom and
/// signature bits from the top.
#[inline(always)]
pub fn table_hash(words: &[u64]) -> u64 {
    let mut h = K0;
    for &w in words {
        h = fold_mul(h ^ w, K1);
    }
    fold_mul(h, K0 ^ words.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_pinned() {
        // A change here moves every sticky client of every deployed tier.
        let a = client_hash("198.18.0.1".parse().unwrap());
        let b = client_hash("198.18.0.1".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(
            stable_hash(b"limpet"),
            xxhash_rust::xxh3::xxh3_64_with_seed(b"limpet", SELECTION_SEED)
        );
        assert_ne!(
            client_hash("198.18.0.1".parse().unwrap()),
            client_hash("198.18.0.2".parse().unwrap())
        );
    }

    #[test]
    fn table_hash_spreads_low_and_high_bits() {
        let mut low = [0u32; 64];
        let mut high = [0u32; 64];
        for i in 0..64_000u64 {
            let h = table_hash(&[i, 7]);
            low[(h & 63) as usize] += 1;
            high[(h >> 58) as usize] += 1;
        }
        for c in low.iter().chain(high.iter()) {
            assert!((800..1200).contains(c), "skewed bucket count {c}");
        }
    }
}
