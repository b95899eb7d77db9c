//! IPv4 and IPv6 as type parameters, so each table holds only the address
//! size it needs (an IPv4 affinity entry is 16 bytes, an IPv6 one 28) while
//! the code that uses them is written once.

use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP address family: [`Ipv4Addr`] or [`Ipv6Addr`].
pub trait Family: Copy + Eq + Debug + Send + Sync + 'static {
    /// Length of an address in bytes.
    const LEN: usize;
    /// The all-zero address, for unused table entries.
    const UNSPECIFIED: Self;
    /// Full prefix length (32 or 128).
    const MAX_PREFIX: u8;
    /// How the connection table stores this family's entries: an IPv4 flow
    /// and its stamp (56 bytes) get a cache line each rather than
    /// straddling two half the time; an IPv6 one spans two lines anyway.
    type FlowAlign: Copy + Default + Send + Sync + 'static;
    /// The address in one or two words, for in-process hashing.
    fn words(self) -> [u64; 2];
    /// The address with all but its first `prefix` bits cleared.
    #[must_use]
    fn masked(self, prefix: u8) -> Self;
    fn ip(self) -> IpAddr;
    /// Network byte order, padded with zeros to 16 bytes.
    fn octets16(self) -> [u8; 16];
    /// The inverse of [`octets16`](Self::octets16).
    fn from_octets16(octets: &[u8; 16]) -> Self;
}

/// `addr` as family `A`, or `None` if it is of the other family.
#[inline(always)]
pub fn from_ip<A: Family>(addr: IpAddr) -> Option<A> {
    match addr {
        IpAddr::V4(a) if A::LEN == 4 => Some(A::from_octets16(&a.octets16())),
        IpAddr::V6(a) if A::LEN == 16 => Some(A::from_octets16(&a.octets())),
        _ => None,
    }
}

impl Family for Ipv4Addr {
    const LEN: usize = 4;
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    const MAX_PREFIX: u8 = 32;
    type FlowAlign = crate::table::LineAligned;

    #[inline(always)]
    fn words(self) -> [u64; 2] {
        [u64::from(self.to_bits()), 0]
    }

    #[inline(always)]
    fn masked(self, prefix: u8) -> Self {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0);
        Ipv4Addr::from_bits(self.to_bits() & mask)
    }

    fn ip(self) -> IpAddr {
        IpAddr::V4(self)
    }

    #[inline(always)]
    fn octets16(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&self.octets());
        out
    }

    #[inline(always)]
    fn from_octets16(o: &[u8; 16]) -> Self {
        Ipv4Addr::new(o[0], o[1], o[2], o[3])
    }
}

impl Family for Ipv6Addr {
    const LEN: usize = 16;
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    const MAX_PREFIX: u8 = 128;
    type FlowAlign = ();

    #[inline(always)]
    fn words(self) -> [u64; 2] {
        let bits = self.to_bits();
        [(bits >> 64) as u64, bits as u64]
    }

    #[inline(always)]
    fn masked(self, prefix: u8) -> Self {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(prefix.min(128)))
            .unwrap_or(0);
        Ipv6Addr::from_bits(self.to_bits() & mask)
    }

    fn ip(self) -> IpAddr {
        IpAddr::V6(self)
    }

    #[inline(always)]
    fn octets16(self) -> [u8; 16] {
        self.octets()
    }

    #[inline(always)]
    fn from_octets16(o: &[u8; 16]) -> Self {
        Ipv6Addr::from(*o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        let a: Ipv4Addr = "198.18.201.77".parse().unwrap();
        assert_eq!(a.masked(32), a);
        assert_eq!(a.masked(24), "198.18.201.0".parse::<Ipv4Addr>().unwrap());
        assert_eq!(a.masked(0), Ipv4Addr::UNSPECIFIED);
        let b: Ipv6Addr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(b.masked(128), b);
        assert_eq!(b.masked(64), "2001:db8:1:2::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(b.masked(0), Ipv6Addr::UNSPECIFIED);
    }
}
