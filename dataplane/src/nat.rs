//! In-place header rewrites for forwarding: destination NAT towards a
//! backend, source NAT of its replies, and the hop count, all with
//! incremental checksum updates (RFC 1624) so no byte of payload is read.

use crate::family::Family;
use crate::wire::{IpProtocol, ipv4, ipv6, tcp, udp};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The IP header operations a forwarding family needs.
pub trait IpRewrite: Family {
    /// Decrements the TTL or hop limit of the header at the start of `ip`.
    fn decrement_hops(ip: &mut [u8]);
    fn set_src(ip: &mut [u8], addr: Self);
    fn set_dst(ip: &mut [u8], addr: Self);
    /// The address as network-order bytes for pseudo-header updates.
    fn bytes(self) -> [u8; 16];
}

impl IpRewrite for Ipv4Addr {
    #[inline(always)]
    fn decrement_hops(ip: &mut [u8]) {
        ipv4::Packet::new_unchecked(ip).decrement_ttl_update_checksum();
    }

    #[inline(always)]
    fn set_src(ip: &mut [u8], addr: Self) {
        ipv4::Packet::new_unchecked(ip).set_src_addr_update_checksum(addr);
    }

    #[inline(always)]
    fn set_dst(ip: &mut [u8], addr: Self) {
        ipv4::Packet::new_unchecked(ip).set_dst_addr_update_checksum(addr);
    }

    #[inline(always)]
    fn bytes(self) -> [u8; 16] {
        self.octets16()
    }
}

impl IpRewrite for Ipv6Addr {
    #[inline(always)]
    fn decrement_hops(ip: &mut [u8]) {
        let mut p = ipv6::Packet::new_unchecked(ip);
        let hops = p.hop_limit();
        p.set_hop_limit(hops.saturating_sub(1));
    }

    #[inline(always)]
    fn set_src(ip: &mut [u8], addr: Self) {
        ipv6::Packet::new_unchecked(ip).set_src_addr(addr);
    }

    #[inline(always)]
    fn set_dst(ip: &mut [u8], addr: Self) {
        ipv6::Packet::new_unchecked(ip).set_dst_addr(addr);
    }

    #[inline(always)]
    fn bytes(self) -> [u8; 16] {
        self.octets16()
    }
}

/// Which end of the tuple a rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Rewrites one end's address and port of a TCP or UDP packet in place.
/// `ip` starts at the IP header, `l4` is the transport header's offset
/// within it; both were validated by the parser.
#[inline]
pub fn rewrite<A: IpRewrite>(
    ip: &mut [u8],
    l4: usize,
    protocol: u8,
    end: End,
    old: A,
    new: A,
    port: u16,
) {
    match end {
        End::Source => A::set_src(ip, new),
        End::Destination => A::set_dst(ip, new),
    }
    let (old, new) = (old.bytes(), new.bytes());
    let (old, new) = (&old[..A::LEN], &new[..A::LEN]);
    let Some(l4) = ip.get_mut(l4..) else {
        return;
    };
    match protocol {
        IpProtocol::TCP => {
            let mut t = tcp::Packet::new_unchecked(l4);
            t.update_checksum_for_addr_change(old, new);
            match end {
                End::Source => t.set_src_port_update_checksum(port),
                End::Destination => t.set_dst_port_update_checksum(port),
            }
        }
        IpProtocol::UDP => {
            let mut u = udp::Packet::new_unchecked(l4);
            u.update_checksum_for_addr_change(old, new);
            match end {
                End::Source => u.set_src_port_update_checksum(port),
                End::Destination => u.set_dst_port_update_checksum(port),
            }
        }
        _ => {}
    }
}
