//! Encapsulated direct server return (`--forward ipip`, `--forward gue`):
//! the client's packet, untouched, inside a new IP header addressed to the
//! endpoint, which decapsulates it with its kernel's own tunnel device
//! (it holds the service address, as under L2 `dsr`) and answers the client
//! directly. Unlike L2 `dsr` the endpoint may be anywhere IP reaches, behind
//! routers, as Katran and Maglev forward.
//!
//! - **`ipip`**: IPv4 in IPv4 (protocol 4) or IPv6 in IPv6 (next header
//!   41), what Linux's `ipip` / `ip6tnl` devices take.
//! - **`gue`**: the same packet in UDP to a configured port (GUE variant 1,
//!   RFC draft-ietf-intarea-gue: the UDP payload *is* the inner IP packet,
//!   its version nibble telling IPv4 from IPv6), what Linux's `fou` port in
//!   `gue` mode takes. The outer IPv4 UDP checksum is zero (allowed, and
//!   Linux's default); the outer IPv6 one is computed (RFC 8200 forbids
//!   zero), from the inner transport checksum rather than a pass over the
//!   payload.
//!
//! **Spreading.** A receiving NIC's RSS hashes the outer header, so every
//! flow from one outer source would land on one of its queues. As Katran
//! does, the outer source is derived from the inner flow: the host bits of
//! the configured source prefix (`--tunnel-source`) are taken from the
//! flow's hash, and so is the GUE source port and the outer IPv6 flow
//! label. All packets of a flow (and ICMP errors about it) share them, so a
//! flow stays on one receive queue.
//!
//! **Carried.** The outer TTL / hop limit and DSCP/ECN are the inner
//! packet's, so traceroute and traffic classes see through the tunnel. The outer IPv4
//! header has DF set: the tunnel path's MTU is learnt, not fragmented
//! around.
//!
//! **Size.** The outer packet must fit the tunnel path's MTU (`--tunnel-mtu`,
//! and the interface's in any case). A packet that would not is refused
//! with [`Refused::TooBig`] and the MTU the client must use, which the
//! pipeline answers as a router would: "fragmentation needed" (IPv4, DF
//! set) or "packet too big" (IPv6) to the client, so its path MTU
//! discovery shrinks its packets by the tunnel's overhead.

use crate::io::PacketBuf;
use crate::wire::checksum::{fold, pseudo_header_v6, sum};
use crate::wire::{IpProtocol, ipv4, ipv6, udp};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// GUE's port (IANA's assignment for GUE).
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// How a connection's packets are wrapped on their way to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Tunnel {
    /// Not at all (`nat`, `fullnat`, L2 `dsr`).
    #[default]
    None = 0,
    /// IP in IP of the same family.
    Ipip = 1,
    /// GUE variant 1: IP in UDP.
    Gue = 2,
}

impl Tunnel {
    /// Bytes the outer headers add to a packet of the family given.
    #[inline]
    pub fn overhead(self, v6: bool) -> usize {
        let ip = if v6 {
            ipv6::HEADER_LEN
        } else {
            ipv4::HEADER_LEN
        };
        match self {
            Tunnel::None => 0,
            Tunnel::Ipip => ip,
            Tunnel::Gue => ip + udp::HEADER_LEN,
        }
    }

    /// The value a state file stores.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(v: u8) -> Option<Tunnel> {
        match v {
            0 => Some(Tunnel::None),
            1 => Some(Tunnel::Ipip),
            2 => Some(Tunnel::Gue),
            _ => None,
        }
    }
}

/// A worker's tunnel settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// GUE's UDP destination port.
    pub gue_port: u16,
    /// Outer IPv4 sources: this prefix, its host bits from the flow's
    /// hash. `None`: IPv4 connections cannot be tunnelled (counted).
    pub source_v4: Option<(Ipv4Addr, u8)>,
    /// The same for IPv6 (at most the low 64 bits vary).
    pub source_v6: Option<(Ipv6Addr, u8)>,
    /// The largest outer IP packet the path to endpoints carries; 0: the
    /// interface's MTU is the only limit.
    pub mtu: u16,
    /// Workers sharing the interface: a GUE source port is one the
    /// client's worker owns (see [`TunnelConfig::gue_source_port`]).
    pub workers: u16,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            gue_port: DEFAULT_GUE_PORT,
            source_v4: None,
            source_v6: None,
            mtu: 0,
            workers: 1,
        }
    }
}

impl TunnelConfig {
    /// The outer source of a flow whose hash is `hash`, to an endpoint of
    /// `dst`'s family.
    #[inline]
    pub fn source(&self, dst: IpAddr, hash: u64) -> Option<IpAddr> {
        // The table's buckets use the hash's low bits; these are others.
        let bits = hash.rotate_right(29);
        match dst {
            IpAddr::V4(_) => {
                let (base, len) = self.source_v4?;
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(len.min(32)))
                    .unwrap_or(0);
                let host = bits as u32 & !mask;
                Some(IpAddr::V4(Ipv4Addr::from_bits(
                    base.to_bits() & mask | host,
                )))
            }
            IpAddr::V6(_) => {
                let (base, len) = self.source_v6?;
                let len = len.clamp(64, 128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                let host = u128::from(bits) & !mask;
                Some(IpAddr::V6(Ipv6Addr::from_bits(
                    base.to_bits() & mask | host,
                )))
            }
        }
    }

    /// GUE's source port for a flow whose hash is `hash` and whose client
    /// address ends in the 32 bits `client` (what steering keys on): in
    /// the dynamic range, 49152-65535, and congruent to the client's
    /// worker modulo `workers`, so a router's error about the outer packet,
    /// addressed to limpet and steered by the port it quotes (see
    /// [`crate::snat::port_owner`]), reaches the worker holding the
    /// connection.
    #[inline]
    pub fn gue_source_port(hash: u64, client: u32, workers: u16) -> u16 {
        let w = u32::from(workers.max(1));
        let base = 0xc000 | ((hash >> 40) as u32 & 0x3fff);
        let mut port = base - base % w + client % w;
        if port < 0xc000 {
            port += w;
        }
        if port > 0xffff {
            port -= w;
        }
        port as u16
    }
}

/// Why a packet was not encapsulated; the buffer is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The outer packet would exceed the tunnel path's MTU. `mtu` is the
    /// largest inner packet that fits; `dont_fragment` says whether the
    /// sender asked to learn it (IPv6 always does).
    TooBig { mtu: u16, dont_fragment: bool },
    /// No tunnel source address of the endpoint's family is configured.
    NoSource,
    /// The buffer has no room before the frame for the outer headers.
    NoRoom,
    /// The IP header's length disagrees with the frame.
    Truncated,
}

impl Refused {
    /// What the packet is dropped as, when it is not answered instead.
    pub fn reason(self) -> crate::stats::DropReason {
        use crate::stats::DropReason;
        match self {
            Refused::TooBig { .. } => DropReason::TunnelTooBig,
            Refused::NoSource => DropReason::NoTunnelSource,
            Refused::NoRoom => DropReason::NoHeadroom,
            Refused::Truncated => DropReason::Truncated,
        }
    }
}

/// Where and how one packet is to be tunnelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encap {
    pub tunnel: Tunnel,
    /// The endpoint: the outer destination.
    pub dst: IpAddr,
    /// The connection's flow hash (of its client-to-service tuple), which
    /// picks the outer source and GUE port.
    pub hash: u64,
}

/// Wraps the packet in `buf` (link header, then the IP header at `l3`, its
/// transport header `l4` bytes in, carrying `protocol`) for `encap`, in
/// place: the outer headers go into the room before the frame and the link
/// header moves in front of them. `limit` is the longest IP packet the
/// interface sends (its MTU, within the longest frame); `config.mtu`
/// bounds it further. The link header's addresses are the caller's to set.
pub fn encapsulate<B: PacketBuf>(
    buf: &mut B,
    l3: usize,
    l4: usize,
    protocol: u8,
    encap: Encap,
    config: &TunnelConfig,
    limit: usize,
) -> Result<(), Refused> {
    let data = buf.data();
    let Some(inner) = data.get(l3..) else {
        return Err(Refused::Truncated);
    };
    let v6 = encap.dst.is_ipv6();
    let (len, tos, ttl, dont_fragment) = match inner.first().map(|b| b >> 4) {
        Some(4) if inner.len() >= ipv4::HEADER_LEN => {
            let p = ipv4::Packet::new_unchecked(inner);
            let tos = p.dscp() << 2 | p.ecn();
            (usize::from(p.total_len()), tos, p.ttl(), p.dont_frag())
        }
        Some(6) if inner.len() >= ipv6::HEADER_LEN => {
            let p = ipv6::Packet::new_unchecked(inner);
            let len = ipv6::HEADER_LEN + usize::from(p.payload_len());
            (len, p.traffic_class(), p.hop_limit(), true)
        }
        _ => return Err(Refused::Truncated),
    };
    if len > inner.len() || len < l4 {
        return Err(Refused::Truncated);
    }
    let overhead = encap.tunnel.overhead(v6);
    let mut limit = limit;
    if config.mtu != 0 {
        limit = limit.min(usize::from(config.mtu));
    }
    if len + overhead > limit {
        let mtu = limit.saturating_sub(overhead).min(usize::from(u16::MAX)) as u16;
        return Err(Refused::TooBig { mtu, dont_fragment });
    }
    let ends = match (config.source(encap.dst, encap.hash), encap.dst) {
        (Some(IpAddr::V4(src)), IpAddr::V4(dst)) => Ends::V4(src, dst),
        (Some(IpAddr::V6(src)), IpAddr::V6(dst)) => Ends::V6(src, dst),
        _ => return Err(Refused::NoSource),
    };
    // The outer IPv6 UDP checksum needs the inner packet's sum: read it
    // before anything moves.
    let inner_sum = if v6 && encap.tunnel == Tunnel::Gue {
        inner_sum(&inner[..len], l4, protocol)
    } else {
        0
    };
    // The inner source's low 32 bits: the client, which steering keys on.
    let low = if inner[0] >> 4 == 4 { 12 } else { 20 };
    let client = u32::from_be_bytes([inner[low], inner[low + 1], inner[low + 2], inner[low + 3]]);
    let next = match (encap.tunnel, inner[0] >> 4) {
        (Tunnel::Gue, _) => IpProtocol::UDP,
        (_, 4) => IpProtocol::IPIP,
        _ => IpProtocol::IPV6,
    };
    // A short frame's padding is not part of the packet the tunnel carries.
    buf.truncate(l3 + len);
    if !buf.prepend(overhead) {
        return Err(Refused::NoRoom);
    }
    let frame = buf.data_mut();
    frame.copy_within(overhead..overhead + l3, 0);
    let outer = &mut frame[l3..];
    let total = len + overhead;
    let ip_len = write_ip(outer, ends, (tos, ttl, next), total, encap.hash);
    if encap.tunnel == Tunnel::Gue {
        let sport = TunnelConfig::gue_source_port(encap.hash, client, config.workers);
        let udp = &mut outer[ip_len..ip_len + udp::HEADER_LEN];
        write_gue(
            udp,
            ends,
            (sport, config.gue_port),
            total - ip_len,
            inner_sum,
        );
    }
    Ok(())
}

/// The outer header's two addresses, of one family.
#[derive(Debug, Clone, Copy)]
enum Ends {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

/// Writes the outer IP header (`total` bytes in all, carrying `next`, the
/// inner packet's DSCP/ECN `tos` and hop count `ttl`) at the start of
/// `outer`; an IPv6 one's flow label from the flow's `hash`. Returns its
/// length.
fn write_ip(
    outer: &mut [u8],
    ends: Ends,
    (tos, ttl, next): (u8, u8, u8),
    total: usize,
    hash: u64,
) -> usize {
    match ends {
        Ends::V4(src, dst) => {
            let mut p = ipv4::Packet::new_unchecked(&mut outer[..ipv4::HEADER_LEN]);
            p.set_version(4);
            p.set_header_len(ipv4::HEADER_LEN);
            p.set_dscp(tos >> 2);
            p.set_ecn(tos & 3);
            p.set_total_len(total as u16);
            p.set_ident(0);
            p.set_dont_frag(true);
            p.set_more_frags(false);
            p.set_frag_offset(0);
            p.set_ttl(ttl);
            p.set_protocol(next);
            p.set_src_addr(src);
            p.set_dst_addr(dst);
            p.fill_checksum();
            ipv4::HEADER_LEN
        }
        Ends::V6(src, dst) => {
            let mut p = ipv6::Packet::new_unchecked(&mut outer[..ipv6::HEADER_LEN]);
            p.set_version(6);
            p.set_traffic_class(tos);
            p.set_flow_label((hash >> 12) as u32);
            p.set_payload_len((total - ipv6::HEADER_LEN) as u16);
            p.set_next_header(next);
            p.set_hop_limit(ttl);
            p.set_src_addr(src);
            p.set_dst_addr(dst);
            ipv6::HEADER_LEN
        }
    }
}

/// Writes GUE's UDP header (`len` bytes of UDP in all, from and to
/// `ports`); over IPv6 its checksum, from the inner packet's sum.
fn write_gue(udp: &mut [u8], ends: Ends, (sport, dport): (u16, u16), len: usize, inner_sum: u32) {
    let len = len as u16;
    let mut u = udp::Packet::new_unchecked(udp);
    u.set_src_port(sport);
    u.set_dst_port(dport);
    u.set_len(len);
    u.set_checksum(0);
    if let Ends::V6(src, dst) = ends {
        let acc = pseudo_header_v6(src, dst, IpProtocol::UDP, u32::from(len))
            + u32::from(sport)
            + u32::from(dport)
            + u32::from(len)
            + inner_sum;
        let mut c = !fold(acc);
        if c == 0 {
            c = 0xffff;
        }
        u.set_checksum(c);
    }
}

/// Where, in the packet an ICMP error quotes (`q`), the packet limpet
/// tunnelled starts, if the quote is one of limpet's outer packets: IP in
/// IP of one family, or GUE to `gue_port`. A router on the tunnel's path
/// that cannot forward it answers its outer source (limpet, when that is
/// limpet's address), and a router quoting enough (Linux quotes up to 576
/// bytes for IPv4, 1280 for IPv6) shows the inner packet, and with it the
/// connection and the client to tell.
pub fn quoted_tunnel(q: &[u8], gue_port: u16) -> Option<usize> {
    let (version, header, next) = match q.first()? >> 4 {
        4 => (4, usize::from(q[0] & 0x0f) * 4, *q.get(9)?),
        6 => (6, ipv6::HEADER_LEN, *q.get(6)?),
        _ => return None,
    };
    if header < ipv4::HEADER_LEN {
        return None;
    }
    let inner = match next {
        IpProtocol::IPIP if version == 4 => header,
        IpProtocol::IPV6 if version == 6 => header,
        IpProtocol::UDP => {
            let port = q.get(header + 2..header + 4)?;
            if u16::from_be_bytes([port[0], port[1]]) != gue_port {
                return None;
            }
            header + udp::HEADER_LEN
        }
        _ => return None,
    };
    (q.get(inner)? >> 4 == version).then_some(inner)
}

/// The ones'-complement sum of an IPv6 packet (`ip`, its transport header
/// `l4` bytes in), without a pass over its payload where the transport
/// checksum vouches for it: a segment whose checksum is right sums to the
/// complement of its pseudo-header. A wrong inner checksum makes the outer
/// one wrong too, and the endpoint drops the packet either way.
fn inner_sum(ip: &[u8], l4: usize, protocol: u8) -> u32 {
    let covered = match protocol {
        IpProtocol::TCP | IpProtocol::ICMPV6 => true,
        // A zero UDP checksum (not allowed over IPv6, but seen) vouches
        // for nothing, nor does one over a datagram shorter than the
        // packet (bytes after it are not covered).
        IpProtocol::UDP => ip.get(l4 + 4..l4 + 8).is_some_and(|u| {
            u[2..] != [0, 0] && usize::from(u16::from_be_bytes([u[0], u[1]])) == ip.len() - l4
        }),
        _ => false,
    };
    if !covered || ip.len() < l4 || l4 < ipv6::HEADER_LEN {
        return sum(ip);
    }
    let p = ipv6::Packet::new_unchecked(ip);
    let pseudo = pseudo_header_v6(p.src_addr(), p.dst_addr(), protocol, (ip.len() - l4) as u32);
    sum(&ip[..l4]) + u32::from(!fold(pseudo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_vary_in_host_bits_only() {
        let config = TunnelConfig {
            source_v4: Some((Ipv4Addr::new(198, 51, 100, 77), 24)),
            source_v6: Some(("2001:db8:77::1".parse().unwrap(), 64)),
            ..TunnelConfig::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for h in 0..64u64 {
            let hash = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let Some(IpAddr::V4(a)) = config.source(IpAddr::V4(Ipv4Addr::LOCALHOST), hash) else {
                panic!("no v4 source");
            };
            assert_eq!(a.octets()[..3], [198, 51, 100]);
            seen.insert(a);
            let Some(IpAddr::V6(b)) = config.source(IpAddr::V6(Ipv6Addr::LOCALHOST), hash) else {
                panic!("no v6 source");
            };
            assert_eq!(b.segments()[..4], [0x2001, 0xdb8, 0x77, 0]);
            for workers in 1..=7u16 {
                let client = (h as u32).wrapping_mul(2_654_435_761);
                let port = TunnelConfig::gue_source_port(hash, client, workers);
                assert!(port >= 49152);
                assert_eq!(
                    crate::snat::port_owner(port, usize::from(workers)),
                    (client % u32::from(workers)) as usize
                );
            }
        }
        assert!(seen.len() > 32, "only {} sources for 64 flows", seen.len());
        // A /32 is one address.
        let one = TunnelConfig {
            source_v4: Some((Ipv4Addr::new(203, 0, 113, 1), 32)),
            ..TunnelConfig::default()
        };
        assert_eq!(
            one.source(IpAddr::V4(Ipv4Addr::LOCALHOST), u64::MAX),
            Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)))
        );
        assert_eq!(one.source(IpAddr::V6(Ipv6Addr::LOCALHOST), 1), None);
    }

    #[test]
    fn quoted_tunnels_are_recognised() {
        let mut ipip = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 4, 0, 0];
        ipip.extend([203, 0, 113, 1, 198, 19, 0, 2]);
        ipip.extend([0x45, 0, 0, 40]);
        assert_eq!(quoted_tunnel(&ipip, 6080), Some(20));
        // IPv6 inside IPv4 is not limpet's.
        ipip[20] = 0x60;
        assert_eq!(quoted_tunnel(&ipip, 6080), None);
        let mut gue = vec![0x60, 0, 0, 0, 0, 48, 17, 64];
        gue.extend([0; 32]);
        gue.extend([0xc0, 0x01, 0x17, 0xc0, 0, 48, 0, 0]);
        gue.push(0x60);
        assert_eq!(quoted_tunnel(&gue, 6080), Some(48));
        assert_eq!(quoted_tunnel(&gue, 6081), None);
        // Cut anywhere: nothing, never a panic.
        for cut in 0..gue.len() {
            assert_eq!(quoted_tunnel(&gue[..cut], 6080), None);
        }
    }

    #[test]
    fn tunnel_values_round_trip() {
        for t in [Tunnel::None, Tunnel::Ipip, Tunnel::Gue] {
            assert_eq!(Tunnel::from_u8(t.to_u8()), Some(t));
        }
        assert_eq!(Tunnel::from_u8(3), None);
    }
}
