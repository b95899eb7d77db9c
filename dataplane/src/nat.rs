//! In-place header rewrites for forwarding: destination NAT towards a
//! backend, source NAT of its replies, and the hop count, all with
//! incremental checksum updates (RFC 1624) so no byte of payload is read.

use crate::family::Family;
use crate::wire::IpProtocol;
use crate::wire::checksum::{fold, sum};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The IP header operations a forwarding family needs.
pub trait IpRewrite: Family {
    /// Decrements the TTL or hop limit of the header at the start of `ip`
    /// and replaces the address at `end` with `new`, updating the header
    /// checksum (IPv4) in one step. Returns what the address change adds
    /// to a transport checksum's pseudo-header as a partial sum (`!old +
    /// new`), or `None` (nothing written) if `ip` is shorter than a header.
    fn rewrite_ip(ip: &mut [u8], end: End, new: Self) -> Option<u32>;

    /// Replaces the address at `end` only (no hop count), updating the
    /// header checksum (IPv4); returns the pseudo-header change as
    /// [`rewrite_ip`](Self::rewrite_ip) does.
    fn set_addr(ip: &mut [u8], end: End, new: Self) -> Option<u32>;
}

/// The ones-complement sum of a 32-bit word's two 16-bit halves.
#[inline(always)]
fn sum32(x: u32) -> u32 {
    (x >> 16) + (x & 0xffff)
}

/// `!fold(!csum + delta)`: RFC 1624 eqn. 3 with every change summed into
/// `delta` first.
#[inline(always)]
fn apply(csum: u16, delta: u32) -> u16 {
    !fold(u32::from(!csum) + u32::from(fold(delta)))
}

/// Writes `new` over the IPv4 header's address at `end`; returns the
/// change as a partial sum (`!old + new`), checksum not yet updated.
#[inline(always)]
fn swap_v4(h: &mut [u8; 20], end: End, new: Ipv4Addr) -> u32 {
    let at = match end {
        End::Source => 12,
        End::Destination => 16,
    };
    let old = u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let new = new.to_bits();
    h[at..at + 4].copy_from_slice(&new.to_be_bytes());
    u32::from(!fold(sum32(old))) + sum32(new)
}

impl IpRewrite for Ipv4Addr {
    #[inline(always)]
    fn rewrite_ip(ip: &mut [u8], end: End, new: Self) -> Option<u32> {
        let h = ip.first_chunk_mut::<20>()?;
        let addr = swap_v4(h, end, new);
        // TTL is the high byte of the 16-bit word it shares with protocol.
        // A TTL of 0 is left alone: the parser drops anything at or below 1.
        let ttl = h[8];
        let new_ttl = ttl.saturating_sub(1);
        h[8] = new_ttl;
        let proto = u32::from(h[9]);
        let hops = u32::from(!((u16::from(ttl) << 8) | proto as u16))
            + ((u32::from(new_ttl) << 8) | proto);
        let csum = u16::from_be_bytes([h[10], h[11]]);
        [h[10], h[11]] = apply(csum, addr + hops).to_be_bytes();
        Some(addr)
    }

    #[inline(always)]
    fn set_addr(ip: &mut [u8], end: End, new: Self) -> Option<u32> {
        let h = ip.first_chunk_mut::<20>()?;
        let addr = swap_v4(h, end, new);
        let csum = u16::from_be_bytes([h[10], h[11]]);
        [h[10], h[11]] = apply(csum, addr).to_be_bytes();
        Some(addr)
    }
}

impl IpRewrite for Ipv6Addr {
    #[inline(always)]
    fn rewrite_ip(ip: &mut [u8], end: End, new: Self) -> Option<u32> {
        // No header checksum: the hop limit costs nothing else.
        let h = ip.first_chunk_mut::<40>()?;
        h[7] = h[7].saturating_sub(1);
        Self::set_addr(ip, end, new)
    }

    #[inline(always)]
    fn set_addr(ip: &mut [u8], end: End, new: Self) -> Option<u32> {
        let h = ip.first_chunk_mut::<40>()?;
        let field: &mut [u8; 16] = match end {
            End::Source => h[8..24].as_mut_array()?,
            End::Destination => h[24..40].as_mut_array()?,
        };
        let new = new.octets();
        let addr = u32::from(!fold(sum(&field[..]))) + sum(&new);
        *field = new;
        Some(addr)
    }
}

/// Which end of the tuple a rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Forwards a TCP or UDP packet one hop: decrements its TTL or hop limit
/// and rewrites one end's address and port in place, with incremental
/// checksum updates. `ip` starts at the IP header, `l4` is the transport
/// header's offset within it; both were validated by the parser.
#[inline(always)]
pub fn rewrite<A: IpRewrite>(ip: &mut [u8], l4: usize, protocol: u8, end: End, new: A, port: u16) {
    let Some(addr) = A::rewrite_ip(ip, end, new) else {
        return;
    };
    let at = match end {
        End::Source => 0,
        End::Destination => 2,
    };
    set_ports(ip, l4, protocol, addr, [(at, port)]);
}

/// [`rewrite`] of both ends at once (source NAT as well as destination):
/// one hop, both addresses and both ports, one update of each checksum.
#[inline]
pub fn rewrite_both<A: IpRewrite>(
    ip: &mut [u8],
    l4: usize,
    protocol: u8,
    (src, src_port): (A, u16),
    (dst, dst_port): (A, u16),
) {
    let Some(to_dst) = A::rewrite_ip(ip, End::Destination, dst) else {
        return;
    };
    let Some(to_src) = A::set_addr(ip, End::Source, src) else {
        return;
    };
    set_ports(
        ip,
        l4,
        protocol,
        to_dst + to_src,
        [(0, src_port), (2, dst_port)],
    );
}

/// Writes each `(offset, port)` into the transport header at `l4` and
/// updates its checksum by those changes and `addr`, the pseudo-header's.
#[inline(always)]
fn set_ports<const N: usize>(
    ip: &mut [u8],
    l4: usize,
    protocol: u8,
    addr: u32,
    ports: [(usize, u16); N],
) {
    let (header, csum_at) = match protocol {
        IpProtocol::TCP => (18, 16),
        IpProtocol::UDP => (8, 6),
        _ => return,
    };
    let Some(h) = ip.get_mut(l4..l4 + header) else {
        return;
    };
    let mut delta = addr;
    for (at, port) in ports {
        let old = u16::from_be_bytes([h[at], h[at + 1]]);
        [h[at], h[at + 1]] = port.to_be_bytes();
        delta += u32::from(!old) + u32::from(port);
    }
    let csum = u16::from_be_bytes([h[csum_at], h[csum_at + 1]]);
    let new = if protocol == IpProtocol::UDP {
        // A zero UDP checksum means "none" and stays zero; a computed
        // zero is sent as 0xffff.
        if csum == 0 {
            return;
        }
        match apply(csum, delta) {
            0 => 0xffff,
            c => c,
        }
    } else {
        apply(csum, delta)
    };
    [h[csum_at], h[csum_at + 1]] = new.to_be_bytes();
}
