//! The endpoint's half of encapsulated DSR, for hosts whose kernel has no
//! tunnel modules (no `ipip`, `ip6_tunnel` or `fou`): recognise an IP-in-IP
//! or GUE (variant 1) packet addressed to one of the endpoint's addresses
//! and find the inner packet, which the `pktgen decap` command hands to the
//! kernel's own stack over a veth pair, so a real server answers it. The
//! kernel's tunnel devices do exactly this where they exist.
//!
//! Written here rather than taken from a crate: what is needed is a few
//! fixed offsets over the same wire views limpet uses, and a tunnel crate
//! would bring the TUN device and its `unsafe` with it.

use std::net::IpAddr;

use limpet_dataplane::wire::{EtherType, IpProtocol, ipv4, ipv6, udp};

/// Where the inner packet of a tunnelled frame lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inner {
    /// Offset of the inner IP header in the frame.
    pub at: usize,
    /// Its length, as its own header gives it.
    pub len: usize,
    /// 4 or 6.
    pub version: u8,
}

/// The inner packet of `frame` (Ethernet, untagged) if it is IP in IP
/// (protocol 4 or 41) or GUE to `gue_port`, addressed to one of `ours`.
pub fn inner(frame: &[u8], ours: &[IpAddr], gue_port: u16) -> Option<Inner> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let outer = frame.get(14..)?;
    let (dst, next, payload_at) = match ethertype {
        EtherType::IPV4 => {
            let p = ipv4::Packet::new_checked(outer).ok()?;
            if p.is_fragment() {
                return None;
            }
            (IpAddr::V4(p.dst_addr()), p.protocol(), p.header_len())
        }
        EtherType::IPV6 => {
            let p = ipv6::Packet::new_checked(outer).ok()?;
            (IpAddr::V6(p.dst_addr()), p.next_header(), ipv6::HEADER_LEN)
        }
        _ => return None,
    };
    if !ours.contains(&dst) {
        return None;
    }
    let at = match next {
        IpProtocol::IPIP | IpProtocol::IPV6 => payload_at,
        IpProtocol::UDP => {
            let u = udp::Packet::new_checked(outer.get(payload_at..)?).ok()?;
            if u.dst_port() != gue_port {
                return None;
            }
            payload_at + udp::HEADER_LEN
        }
        _ => return None,
    };
    let packet = outer.get(at..)?;
    let (version, len) = match packet.first()? >> 4 {
        4 => (
            4,
            usize::from(ipv4::Packet::new_checked(packet).ok()?.total_len()),
        ),
        6 => (
            6,
            ipv6::HEADER_LEN + usize::from(ipv6::Packet::new_checked(packet).ok()?.payload_len()),
        ),
        _ => return None,
    };
    (len <= packet.len()).then_some(Inner {
        at: 14 + at,
        len,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn inner_packet() -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([198, 51, 100, 2], [192, 0, 2, 40], 64)
            .tcp(40000, 80, 1, 1000)
            .write(&mut out, b"hi")
            .unwrap();
        out
    }

    #[test]
    fn ipip_and_gue_to_us_are_unwrapped_others_left() {
        let ours: Vec<IpAddr> = vec!["198.19.0.2".parse().unwrap()];
        let payload = inner_packet();
        let mut ipip = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([203, 0, 113, 1], [198, 19, 0, 2], 64)
            .write(&mut ipip, etherparse::IpNumber(4), &payload)
            .unwrap();
        assert_eq!(
            inner(&ipip, &ours, 6080),
            Some(Inner {
                at: 34,
                len: payload.len(),
                version: 4
            })
        );
        let mut gue = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([203, 0, 113, 1], [198, 19, 0, 2], 64)
            .udp(50000, 6080)
            .write(&mut gue, &payload)
            .unwrap();
        assert_eq!(inner(&gue, &ours, 6080).map(|i| i.at), Some(42));
        assert_eq!(inner(&gue, &ours, 6081), None);
        assert_eq!(inner(&ipip, &["198.19.0.3".parse().unwrap()], 6080), None);
        let mut plain = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([203, 0, 113, 1], [198, 19, 0, 2], 64)
            .tcp(1, 2, 3, 4)
            .write(&mut plain, b"x")
            .unwrap();
        assert_eq!(inner(&plain, &ours, 6080), None);
        // Cut short anywhere: nothing, never a panic.
        for cut in 0..gue.len() {
            let _ = inner(&gue[..cut], &ours, 6080);
        }
    }
}
