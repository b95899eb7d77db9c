//! Software steering by client address: which worker owns a packet's
//! connection when the device cannot be told (no RSS over one address).
//!
//! Under `nat` a connection's two directions share neither the address
//! pair (`client -> vip` one way, `backend -> client` the other) nor a
//! port. What they share is the *client* address, so that is what picks
//! the worker: if the destination is a frontend (a service address) the
//! client is the source; otherwise the packet is a reply and the client is
//! the destination. The owner is the low 32 bits of the client address
//! (the last word for IPv6) modulo the number of workers: exactly what the
//! `AF_PACKET` backend's cBPF fanout program computes (see
//! `afpacket::fanout_client_program`), so both backends put a client on
//! the same worker index. Anything else (ARP, unknown ethertypes) has no
//! owner and stays where it arrived.
//!
//! A source-translated connection's replies are addressed to limpet's
//! source address (a *source*), not the client: their key is the
//! destination port, which the owning worker chose among its own (see
//! [`crate::snat::port_owner`]).
//!
//! Safe code over frame bytes; the DPDK backend uses it to hand packets to
//! their owner over single-producer rings.

use std::net::IpAddr;

/// The worker (of `workers`) that sees `client`'s packets: what
/// [`ClientSteering::owner`] and the fanout program compute from a frame,
/// from the address alone (saved state is dealt to workers by it).
#[inline]
pub fn client_owner(client: IpAddr, workers: usize) -> usize {
    let low = match client {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            let o = a.octets();
            u32::from_be_bytes([o[12], o[13], o[14], o[15]])
        }
    };
    low as usize % workers.max(1)
}

/// `addrs` by family as numbers, sorted and deduplicated for a binary
/// search on the packet path.
fn sorted_words(addrs: &[IpAddr]) -> (Vec<u32>, Vec<u128>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for a in addrs {
        match a {
            IpAddr::V4(a) => v4.push(u32::from(*a)),
            IpAddr::V6(a) => v6.push(u128::from(*a)),
        }
    }
    v4.sort_unstable();
    v4.dedup();
    v6.sort_unstable();
    v6.dedup();
    (v4, v6)
}

/// The frontends (service addresses) of the current snapshot, sorted for
/// a binary search on the packet path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSteering {
    v4: Vec<u32>,
    v6: Vec<u128>,
    sources4: Vec<u32>,
    sources6: Vec<u128>,
}

impl ClientSteering {
    /// Steering for `frontends`. Allocates: call at a snapshot swap.
    pub fn new(frontends: &[IpAddr]) -> Self {
        let mut s = Self::default();
        s.set_frontends(frontends);
        s
    }

    /// Replaces the frontends. Allocates: call at a snapshot swap.
    pub fn set_frontends(&mut self, frontends: &[IpAddr]) {
        (self.v4, self.v6) = sorted_words(frontends);
    }

    /// Replaces the source-NAT addresses. Allocates: call at start.
    pub fn set_sources(&mut self, sources: &[IpAddr]) {
        (self.sources4, self.sources6) = sorted_words(sources);
    }

    /// The low 32 bits of the frame's client address (the destination
    /// port of a reply to a source-NAT address), or `None` for a
    /// frame that is not IPv4 or IPv6 (one 802.1Q / 802.1ad tag skipped),
    /// or too short to say.
    #[inline]
    pub fn client_key(&self, frame: &[u8]) -> Option<u32> {
        let mut l3 = 14;
        let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
            l3 = 18;
        }
        match ethertype {
            0x0800 => {
                let ip = frame.get(l3 + 12..l3 + 20)?;
                let src = u32::from_be_bytes([ip[0], ip[1], ip[2], ip[3]]);
                let dst = u32::from_be_bytes([ip[4], ip[5], ip[6], ip[7]]);
                if self.v4.binary_search(&dst).is_ok() {
                    return Some(src);
                }
                if self.sources4.binary_search(&dst).is_ok() {
                    let l4 = l3 + 4 * usize::from(*frame.get(l3)? & 0xf);
                    // An ICMP error: the source port of the packet quoted,
                    // or quoting IP in IP, the inner source (the client).
                    let at = if *frame.get(l3 + 9)? == 1 {
                        let quote = l4 + 8;
                        let inner = quote + 4 * usize::from(*frame.get(quote)? & 0xf);
                        if *frame.get(quote + 9)? == 4 {
                            let a = frame.get(inner + 12..inner + 16)?;
                            return Some(u32::from_be_bytes([a[0], a[1], a[2], a[3]]));
                        }
                        inner
                    } else {
                        l4 + 2
                    };
                    let port = frame.get(at..at + 2)?;
                    return Some(u32::from(u16::from_be_bytes([port[0], port[1]])));
                }
                Some(dst)
            }
            0x86dd => {
                let ip = frame.get(l3 + 8..l3 + 40)?;
                let mut dst = [0u8; 16];
                dst.copy_from_slice(&ip[16..32]);
                let dst = u128::from_be_bytes(dst);
                if self.sources6.binary_search(&dst).is_ok() {
                    let icmp = *frame.get(l3 + 6)? == 58;
                    if icmp && *frame.get(l3 + 40 + 8 + 6)? == 41 {
                        let a = frame.get(l3 + 108..l3 + 112)?;
                        return Some(u32::from_be_bytes([a[0], a[1], a[2], a[3]]));
                    }
                    let at = if icmp { 88 } else { 42 };
                    let port = frame.get(l3 + at..l3 + at + 2)?;
                    return Some(u32::from(u16::from_be_bytes([port[0], port[1]])));
                }
                let low = if self.v6.binary_search(&dst).is_ok() {
                    &ip[12..16]
                } else {
                    &ip[28..32]
                };
                Some(u32::from_be_bytes([low[0], low[1], low[2], low[3]]))
            }
            _ => None,
        }
    }

    /// The worker (of `workers`) owning the frame's connection, or `None`
    /// if it has no client (see [`ClientSteering::client_key`]).
    #[inline]
    pub fn owner(&self, frame: &[u8], workers: usize) -> Option<usize> {
        let key = self.client_key(frame)?;
        Some(key as usize % workers.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::afpacket::bpf::{fanout_client_program, interp};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4_frame(src: Ipv4Addr, dst: Ipv4Addr, vlan: bool) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        f.extend_from_slice(&ip);
        f
    }

    /// A TCP segment between two ports, in a frame (IPv4 IHL 6, with an
    /// option, so the port is found past it).
    fn tcp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut f = v4_frame(s, d, false);
                f[14] = 0x46;
                f.extend_from_slice(&[1, 1, 1, 0]);
                f
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => v6_frame(s, d),
            _ => unreachable!(),
        };
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0; 16]);
        f
    }

    /// An ICMP error from `from` to `to` quoting the IP packet of `frame`.
    fn icmp_error(from: IpAddr, to: IpAddr, frame: &[u8]) -> Vec<u8> {
        let mut f = match (from, to) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut f = v4_frame(s, d, false);
                f[14 + 9] = 1;
                f.extend_from_slice(&[3, 4, 0, 0, 0, 0, 5, 0]);
                f
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut f = v6_frame(s, d);
                f[14 + 6] = 58;
                f.extend_from_slice(&[2, 0, 0, 0, 0, 0, 5, 0]);
                f
            }
            _ => unreachable!(),
        };
        f.extend_from_slice(&frame[14..]);
        f
    }

    /// Steering over `vips` with limpet's source addresses (`203.0.113.1`,
    /// `2001:db8:be::1`), the fanout program built for the same, and those
    /// sources.
    fn steering_with_sources(
        vips: [IpAddr; 2],
    ) -> (ClientSteering, Vec<libc::sock_filter>, [IpAddr; 2]) {
        let sources: [IpAddr; 2] = [
            "203.0.113.1".parse().unwrap(),
            "2001:db8:be::1".parse().unwrap(),
        ];
        let mut steer = ClientSteering::new(&vips);
        steer.set_sources(&sources);
        let prog = fanout_client_program(&vips, &sources).unwrap();
        (steer, prog, sources)
    }

    #[test]
    fn a_source_translated_connection_has_one_owner_as_the_fanout_program_says() {
        use crate::snat::SnatPorts;
        let vip4: IpAddr = "192.0.2.10".parse().unwrap();
        let vip6: IpAddr = "2001:db8:5::10".parse().unwrap();
        let (steer, prog, [src4, src6]) = steering_with_sources([vip4, vip6]);
        for workers in 1..=5u16 {
            for c in 0..40u8 {
                for (client, vip, src, backend) in [
                    (
                        IpAddr::V4(Ipv4Addr::new(198, 18, 2, c)),
                        vip4,
                        src4,
                        "203.0.113.11".parse().unwrap(),
                    ),
                    (
                        format!("2001:db8:c1::{c:x}").parse().unwrap(),
                        vip6,
                        src6,
                        "2001:db8:be::11".parse().unwrap(),
                    ),
                ] {
                    let fwd = tcp_frame(client, vip, 40000, 80);
                    let owner = steer.owner(&fwd, usize::from(workers)).unwrap();
                    let ports = SnatPorts {
                        worker: owner as u16,
                        workers,
                        ..SnatPorts::default()
                    };
                    for port in ports.candidates(u64::from(c)) {
                        let reply = tcp_frame(backend, src, 9376, port);
                        // A router's error about a packet limpet sent the
                        // backend from `src:port`.
                        let error = icmp_error(backend, src, &tcp_frame(src, backend, port, 9376));
                        for frame in [reply, error] {
                            assert_eq!(steer.owner(&frame, usize::from(workers)), Some(owner));
                            assert_eq!(steer.client_key(&frame), interp::run(&prog, &frame));
                        }
                    }
                    assert_eq!(steer.client_key(&fwd), interp::run(&prog, &fwd));
                }
            }
        }
    }

    /// `frame`'s IP packet inside an outer header from `src` to `dst`:
    /// IP in IP, or (with `gue`) UDP from `sport` to 6080.
    fn wrapped(src: IpAddr, dst: IpAddr, frame: &[u8], gue: Option<u16>) -> Vec<u8> {
        let mut f = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut f = v4_frame(s, d, false);
                f[14 + 9] = if gue.is_some() { 17 } else { 4 };
                f
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut f = v6_frame(s, d);
                f[14 + 6] = if gue.is_some() { 17 } else { 41 };
                f
            }
            _ => unreachable!(),
        };
        if let Some(sport) = gue {
            f.extend_from_slice(&sport.to_be_bytes());
            f.extend_from_slice(&[0x17, 0xc0, 0, 0, 0, 0]);
        }
        f.extend_from_slice(&frame[14..]);
        f
    }

    #[test]
    fn a_router_error_about_a_tunnelled_packet_reaches_its_connection_as_the_fanout_program_says() {
        use crate::encap::TunnelConfig;
        let vip4: IpAddr = "192.0.2.40".parse().unwrap();
        let vip6: IpAddr = "2001:db8:5::40".parse().unwrap();
        let (steer, prog, [src4, src6]) = steering_with_sources([vip4, vip6]);
        for workers in 1..=5u16 {
            for c in 0..40u8 {
                for (client, vip, src, far, router) in [
                    (
                        IpAddr::V4(Ipv4Addr::new(198, 18, 2, c)),
                        vip4,
                        src4,
                        "198.19.0.2".parse().unwrap(),
                        "203.0.113.254".parse().unwrap(),
                    ),
                    (
                        format!("2001:db8:c1::{c:x}").parse().unwrap(),
                        vip6,
                        src6,
                        "2001:db8:f0::2".parse().unwrap(),
                        "2001:db8:be::fe".parse().unwrap(),
                    ),
                ] {
                    let fwd = tcp_frame(client, vip, 40000, 80);
                    let owner = steer.owner(&fwd, usize::from(workers)).unwrap();
                    // What the GUE source port is picked from: the low 32
                    // bits of the client.
                    let low = match client {
                        IpAddr::V4(a) => u32::from(a),
                        IpAddr::V6(a) => a.to_bits() as u32,
                    };
                    let sport = TunnelConfig::gue_source_port(u64::from(c) << 40, low, workers);
                    for gue in [None, Some(sport)] {
                        let outer = wrapped(src, far, &fwd, gue);
                        let error = icmp_error(router, src, &outer);
                        assert_eq!(
                            steer.owner(&error, usize::from(workers)),
                            Some(owner),
                            "{client} via {gue:?}, {workers} workers"
                        );
                        assert_eq!(steer.client_key(&error), interp::run(&prog, &error));
                    }
                }
            }
        }
    }

    fn v6_frame(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x86, 0xdd]);
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(&dst.octets());
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn both_directions_of_a_nat_connection_have_one_owner_as_the_fanout_program_says() {
        let vip4 = Ipv4Addr::new(192, 0, 2, 10);
        let vip6: Ipv6Addr = "2001:db8:5::10".parse().unwrap();
        let frontends = [IpAddr::V4(vip4), IpAddr::V6(vip6)];
        let steer = ClientSteering::new(&frontends);
        let prog = fanout_client_program(&frontends, &[]).unwrap();
        let backend = Ipv4Addr::new(203, 0, 113, 11);
        let back6: Ipv6Addr = "2001:db8:be::11".parse().unwrap();
        for c in 0..=255u8 {
            let client = Ipv4Addr::new(198, 18, 1, c);
            for vlan in [false, true] {
                let fwd = v4_frame(client, vip4, vlan);
                let reply = v4_frame(backend, client, vlan);
                assert_eq!(steer.client_key(&fwd), Some(u32::from(client)));
                assert_eq!(steer.client_key(&reply), Some(u32::from(client)));
                assert_eq!(steer.client_key(&fwd), interp::run(&prog, &fwd));
                for workers in 1..=4 {
                    assert_eq!(steer.owner(&fwd, workers), steer.owner(&reply, workers));
                }
            }
            let client6: Ipv6Addr = format!("2001:db8:c1::{c:x}").parse().unwrap();
            let fwd = v6_frame(client6, vip6);
            let reply = v6_frame(back6, client6);
            assert_eq!(steer.client_key(&fwd), steer.client_key(&reply));
            assert_eq!(steer.client_key(&fwd), interp::run(&prog, &fwd));
        }
        for c in [
            IpAddr::V4(Ipv4Addr::new(198, 18, 7, 9)),
            "2001:db8:c1::1:abcd".parse().unwrap(),
        ] {
            let frame = match c {
                IpAddr::V4(a) => v4_frame(a, vip4, false),
                IpAddr::V6(a) => v6_frame(a, vip6),
            };
            for workers in 1..=5 {
                assert_eq!(steer.owner(&frame, workers), Some(client_owner(c, workers)));
            }
        }
        // Not IP, or cut short: no owner.
        assert_eq!(steer.owner(&[0u8; 10], 2), None);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(steer.owner(&arp, 2), None);
        assert_eq!(
            steer.client_key(&v4_frame(backend, vip4, false)[..30]),
            None
        );
    }
}
