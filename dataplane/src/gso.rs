//! GSO and GRO super-frames cut into the segments a wire would carry.
//!
//! On an ordinary host the kernel hands a packet socket frames far longer
//! than the link's MTU: a local sender's TCP segmentation offload (veths,
//! containers, the host's own traffic) or receive coalescing (GRO) leaves
//! one 64 KiB frame where the wire would carry some forty. Such a frame is
//! no packet limpet can forward: no device on the way segments it again,
//! and its checksum is only a pseudo-header sum. The `AF_PACKET` backend
//! learns the segment size from the frame's virtio-net header and cuts the
//! frame here, before the pipeline sees it, so everything downstream
//! (translation, tunnels, "fragmentation needed", counters) deals in packets
//! as the sender's TCP meant them.
//!
//! A segment is the super-frame's headers (Ethernet with at most one VLAN
//! tag, IPv4 or IPv6 without extension headers, TCP or UDP) followed by the
//! next `segment_size` bytes of its payload, with what Linux's own
//! segmentation writes (`tcp_gso_segment`, `__udp_gso_segment`):
//! - IPv4 total length and header checksum; the identification of segment
//!   `i` is the super-frame's plus `i`; IPv6 payload length.
//! - TCP: sequence number advanced by the bytes before the segment; FIN and
//!   PSH only on the last segment, CWR only on the first; a full checksum.
//! - UDP (`UDP_SEGMENT`): every segment a datagram of its own, with its
//!   length and a full checksum.

use crate::wire::{EtherType, IpProtocol, ipv4, ipv6, tcp, udp};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Which transport a super-frame segments, from its virtio-net header's
/// `gso_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// `VIRTIO_NET_HDR_GSO_TCPV4` / `TCPV6`.
    Tcp,
    /// `VIRTIO_NET_HDR_GSO_UDP_L4`: each segment a datagram.
    Udp,
}

/// Why a super-frame cannot be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("headers truncated or malformed")]
    Malformed,
    /// Not TCP or UDP straight after IPv4 or IPv6 (an extension header, a
    /// tunnel, a stacked VLAN tag), an IPv4 fragment, or a transport that
    /// differs from what the offload said.
    #[error("not a TCP or UDP super-frame limpet can segment")]
    Unsupported,
    /// A segment would not fit the room given.
    #[error("a segment would be longer than a buffer holds")]
    TooLong,
}

/// A super-frame checked and measured, ready to be cut by
/// [`write_segment`](Self::write_segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuperFrame {
    kind: GsoKind,
    v6: bool,
    /// Offsets of the IP and transport headers, and the length of all
    /// headers (what every segment repeats).
    l3: usize,
    l4: usize,
    headers: usize,
    /// Where the payload ends (the IP header's length; a frame may be
    /// padded past it).
    end: usize,
    segment_size: usize,
    segments: usize,
}

const VLAN_TPIDS: [u16; 2] = [EtherType::VLAN, EtherType::QINQ];

impl SuperFrame {
    /// Checks `frame` and plans its cut into segments of `segment_size`
    /// payload bytes, none longer than `room` bytes of frame.
    pub fn parse(
        frame: &[u8],
        kind: GsoKind,
        segment_size: u16,
        room: usize,
    ) -> Result<SuperFrame, Refused> {
        let word = |at: usize| {
            frame
                .get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or(Refused::Malformed)
        };
        let mut l3 = 14;
        let mut ethertype = word(12)?;
        if VLAN_TPIDS.contains(&ethertype) {
            ethertype = word(16)?;
            l3 = 18;
        }
        let (v6, protocol, l4, end) = match ethertype {
            EtherType::IPV4 => {
                let ip = ipv4::Packet::new_checked(frame.get(l3..).ok_or(Refused::Malformed)?)
                    .map_err(|_| Refused::Malformed)?;
                if ip.is_fragment() {
                    return Err(Refused::Unsupported);
                }
                let total = usize::from(ip.total_len());
                (false, ip.protocol(), l3 + ip.header_len(), l3 + total)
            }
            EtherType::IPV6 => {
                let ip = ipv6::Packet::new_checked(frame.get(l3..).ok_or(Refused::Malformed)?)
                    .map_err(|_| Refused::Malformed)?;
                let payload = usize::from(ip.payload_len());
                (
                    true,
                    ip.next_header(),
                    l3 + ipv6::HEADER_LEN,
                    l3 + ipv6::HEADER_LEN + payload,
                )
            }
            _ => return Err(Refused::Unsupported),
        };
        let headers = match (kind, protocol) {
            (GsoKind::Tcp, IpProtocol::TCP) => {
                let offset = frame.get(l4 + 12).ok_or(Refused::Malformed)?;
                let len = usize::from(offset >> 4) * 4;
                if len < tcp::HEADER_LEN {
                    return Err(Refused::Malformed);
                }
                l4 + len
            }
            (GsoKind::Udp, IpProtocol::UDP) => l4 + udp::HEADER_LEN,
            _ => return Err(Refused::Unsupported),
        };
        if end > frame.len() || headers > end {
            return Err(Refused::Malformed);
        }
        let segment_size = usize::from(segment_size);
        if segment_size == 0 {
            return Err(Refused::Malformed);
        }
        let payload = end - headers;
        if headers + segment_size.min(payload) > room {
            return Err(Refused::TooLong);
        }
        Ok(SuperFrame {
            kind,
            v6,
            l3,
            l4,
            headers,
            end,
            segment_size,
            segments: payload.div_ceil(segment_size).max(1),
        })
    }

    /// How many segments the frame cuts into.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Where the IP header starts.
    pub fn l3(&self) -> usize {
        self.l3
    }

    /// Where the transport header starts.
    pub fn l4(&self) -> usize {
        self.l4
    }

    /// Bytes of headers every segment repeats, Ethernet included.
    pub fn headers(&self) -> usize {
        self.headers
    }

    /// Where the payload ends in the super-frame (padding excluded).
    pub fn end(&self) -> usize {
        self.end
    }

    pub fn is_ipv6(&self) -> bool {
        self.v6
    }

    /// Writes segment `i` of `frame` (the frame [`parse`](Self::parse)
    /// checked) at the start of `out`; returns its length, or 0 (writing
    /// nothing) if `i` is past the last segment or `out` is too short.
    pub fn write_segment(&self, frame: &[u8], i: usize, out: &mut [u8]) -> usize {
        if i >= self.segments || frame.len() < self.end {
            return 0;
        }
        let start = self.headers + i * self.segment_size;
        let stop = (start + self.segment_size).min(self.end);
        let len = self.headers + (stop - start);
        let Some(out) = out.get_mut(..len) else {
            return 0;
        };
        out[..self.headers].copy_from_slice(&frame[..self.headers]);
        out[self.headers..].copy_from_slice(&frame[start..stop]);
        let last = i + 1 == self.segments;
        let ip_len = len - self.l3;
        let l4_len = len - self.l4;
        if self.v6 {
            let mut ip = ipv6::Packet::new_unchecked(&mut out[self.l3..]);
            ip.set_payload_len((ip_len - ipv6::HEADER_LEN) as u16);
        } else {
            let mut ip = ipv4::Packet::new_unchecked(&mut out[self.l3..]);
            ip.set_total_len(ip_len as u16);
            ip.set_ident(ip.ident().wrapping_add(i as u16));
            ip.fill_checksum();
        }
        let (src, dst) = self.addresses(out);
        let segment = &mut out[self.l4..];
        match self.kind {
            GsoKind::Tcp => {
                let mut tcp = tcp::Packet::new_unchecked(segment);
                tcp.set_seq_number(
                    tcp.seq_number()
                        .wrapping_add((i * self.segment_size) as u32),
                );
                let mut flags = tcp.flags();
                if !last {
                    flags &= !(tcp::flags::FIN | tcp::flags::PSH);
                }
                if i > 0 {
                    flags &= !tcp::flags::CWR;
                }
                tcp.set_flags(flags);
                match (src, dst) {
                    (Addrs::V4(s), Addrs::V4(d)) => tcp.fill_checksum_v4(s, d),
                    (Addrs::V6(s), Addrs::V6(d)) => tcp.fill_checksum_v6(s, d),
                    _ => {}
                }
            }
            GsoKind::Udp => {
                let mut udp = udp::Packet::new_unchecked(segment);
                udp.set_len(l4_len as u16);
                match (src, dst) {
                    (Addrs::V4(s), Addrs::V4(d)) => udp.fill_checksum_v4(s, d),
                    (Addrs::V6(s), Addrs::V6(d)) => udp.fill_checksum_v6(s, d),
                    _ => {}
                }
            }
        }
        len
    }

    fn addresses(&self, out: &[u8]) -> (Addrs, Addrs) {
        if self.v6 {
            let ip = ipv6::Packet::new_unchecked(&out[self.l3..]);
            (Addrs::V6(ip.src_addr()), Addrs::V6(ip.dst_addr()))
        } else {
            let ip = ipv4::Packet::new_unchecked(&out[self.l3..]);
            (Addrs::V4(ip.src_addr()), Addrs::V4(ip.dst_addr()))
        }
    }
}

#[derive(Clone, Copy)]
enum Addrs {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 2, 0];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 1, 0];

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// A TCP super-frame as a sender's TSO leaves it: one header, `n`
    /// payload bytes, the checksum only a pseudo-header sum (here: zero,
    /// which segmentation must overwrite anyway).
    fn tcp_v4(n: usize, flags: u8) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([198, 51, 100, 2], [192, 0, 2, 10], 64)
            .tcp(40000, 80, 1_000_000, 501);
        if flags & tcp::flags::FIN != 0 {
            b = b.fin();
        }
        if flags & tcp::flags::PSH != 0 {
            b = b.psh();
        }
        if flags & tcp::flags::CWR != 0 {
            b = b.cwr();
        }
        let b = b
            .ack(77)
            .options(&[etherparse::TcpOptionElement::Timestamp(1, 2)])
            .unwrap();
        let data = payload(n);
        let mut frame = Vec::with_capacity(b.size(n));
        b.write(&mut frame, &data).unwrap();
        // Big frames overflow IPv4's 16-bit length in the builder only past
        // 65535; ours stay under. Leave the TCP checksum partial-looking.
        let l4 = 14 + 20;
        frame[l4 + 16..l4 + 18].copy_from_slice(&[0x12, 0x34]);
        frame
    }

    fn check_tcp(seg: &[u8]) -> (u32, u8, Vec<u8>, u16) {
        let p = SlicedPacket::from_ethernet(seg).expect("segment parses");
        let (src, dst, ident, total) = match &p.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                let mut fixed = h.to_header();
                let check = fixed.header_checksum;
                fixed.header_checksum = fixed.calc_header_checksum();
                assert_eq!(check, fixed.header_checksum, "IPv4 header checksum");
                (
                    h.source(),
                    h.destination(),
                    h.identification(),
                    h.total_len(),
                )
            }
            other => panic!("not IPv4: {other:?}"),
        };
        assert_eq!(usize::from(total), seg.len() - 14);
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not TCP")
        };
        let want = t
            .to_header()
            .calc_checksum_ipv4_raw(src, dst, t.payload())
            .unwrap();
        assert_eq!(t.checksum(), want, "TCP checksum");
        (
            t.sequence_number(),
            seg[14 + 20 + 13],
            t.payload().to_vec(),
            ident,
        )
    }

    #[test]
    fn a_tcp_super_frame_cuts_into_mss_segments_as_linux_would() {
        let n = 4000;
        let frame = tcp_v4(n, tcp::flags::FIN | tcp::flags::PSH | tcp::flags::CWR);
        let sf = SuperFrame::parse(&frame, GsoKind::Tcp, 1448, 2048).unwrap();
        assert_eq!(sf.segments(), 3);
        let mut out = [0u8; 2048];
        let mut data = Vec::new();
        let ident0 = u16::from_be_bytes([frame[18], frame[19]]);
        for i in 0..3 {
            let len = sf.write_segment(&frame, i, &mut out);
            let want = 14 + 20 + 32 + if i < 2 { 1448 } else { n - 2 * 1448 };
            assert_eq!(len, want, "segment {i}");
            let (seq, flags, bytes, ident) = check_tcp(&out[..len]);
            assert_eq!(seq, 1_000_000 + (i * 1448) as u32);
            assert_eq!(ident, ident0.wrapping_add(i as u16));
            let fin_psh = tcp::flags::FIN | tcp::flags::PSH;
            assert_eq!(flags & fin_psh, if i == 2 { fin_psh } else { 0 }, "{i}");
            assert_eq!(flags & tcp::flags::CWR != 0, i == 0, "{i}");
            assert!(flags & tcp::flags::ACK != 0);
            data.extend(bytes);
        }
        assert_eq!(data, payload(n), "the payload, in order, once");
        assert_eq!(sf.write_segment(&frame, 3, &mut out), 0);
    }

    #[test]
    fn ipv6_tcp_and_udp_segments_carry_their_own_lengths_and_checksums() {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                [0x20, 1, 0xd, 0xb8, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
                64,
            )
            .udp(5000, 53);
        let data = payload(3000);
        let mut frame = Vec::new();
        b.write(&mut frame, &data).unwrap();
        let sf = SuperFrame::parse(&frame, GsoKind::Udp, 1200, 2048).unwrap();
        assert_eq!(sf.segments(), 3);
        let mut out = [0u8; 2048];
        let mut got = Vec::new();
        for i in 0..3 {
            let len = sf.write_segment(&frame, i, &mut out);
            let p = SlicedPacket::from_ethernet(&out[..len]).unwrap();
            let Some(NetSlice::Ipv6(ip)) = &p.net else {
                panic!("not IPv6")
            };
            let (src, dst) = (ip.header().source(), ip.header().destination());
            assert_eq!(usize::from(ip.header().payload_length()), len - 54);
            let Some(TransportSlice::Udp(u)) = &p.transport else {
                panic!("not UDP")
            };
            assert_eq!(usize::from(u.length()), len - 54);
            let want = u
                .to_header()
                .calc_checksum_ipv6_raw(src, dst, u.payload())
                .unwrap();
            assert_eq!(u.checksum(), want, "UDP checksum of segment {i}");
            got.extend_from_slice(u.payload());
        }
        assert_eq!(got, data);
    }

    #[test]
    fn a_vlan_tagged_super_frame_keeps_its_tag_on_every_segment() {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .single_vlan(7.try_into().unwrap())
            .ipv4([198, 51, 100, 2], [192, 0, 2, 10], 64)
            .tcp(40000, 80, 5, 501);
        let data = payload(2000);
        let mut frame = Vec::new();
        b.write(&mut frame, &data).unwrap();
        let sf = SuperFrame::parse(&frame, GsoKind::Tcp, 1000, 2048).unwrap();
        assert_eq!(sf.segments(), 2);
        let mut out = [0u8; 2048];
        for i in 0..2 {
            let len = sf.write_segment(&frame, i, &mut out);
            assert_eq!(len, 18 + 20 + 20 + 1000);
            assert_eq!(out[..18], frame[..18]);
            let p = SlicedPacket::from_ethernet(&out[..len]).unwrap();
            assert!(p.vlan().is_some());
            let Some(TransportSlice::Tcp(t)) = &p.transport else {
                panic!("not TCP")
            };
            assert_eq!(t.sequence_number(), 5 + 1000 * i as u32);
        }
    }

    #[test]
    fn what_cannot_be_cut_is_refused_not_guessed() {
        let frame = tcp_v4(3000, 0);
        // The transport the offload claims must be the frame's.
        assert_eq!(
            SuperFrame::parse(&frame, GsoKind::Udp, 1448, 2048),
            Err(Refused::Unsupported)
        );
        // A segment bigger than a buffer.
        assert_eq!(
            SuperFrame::parse(&frame, GsoKind::Tcp, 1448, 1400),
            Err(Refused::TooLong)
        );
        assert_eq!(
            SuperFrame::parse(&frame, GsoKind::Tcp, 0, 2048),
            Err(Refused::Malformed)
        );
        // Cut short: the IP header claims more than is there.
        assert_eq!(
            SuperFrame::parse(&frame[..2000], GsoKind::Tcp, 1448, 2048),
            Err(Refused::Malformed)
        );
        // An IPv4 fragment.
        let mut frag = frame.clone();
        frag[14 + 6] |= 0x20;
        assert_eq!(
            SuperFrame::parse(&frag, GsoKind::Tcp, 1448, 2048),
            Err(Refused::Unsupported)
        );
        // ARP, and garbage of every length, never panic.
        for len in 0..80 {
            let _ = SuperFrame::parse(&frame[..len], GsoKind::Tcp, 1448, 2048);
        }
    }

    #[test]
    fn a_payload_of_one_segment_or_none_still_gets_a_full_checksum() {
        let frame = tcp_v4(100, 0);
        let sf = SuperFrame::parse(&frame, GsoKind::Tcp, 1448, 2048).unwrap();
        assert_eq!(sf.segments(), 1);
        let mut out = [0u8; 2048];
        let len = sf.write_segment(&frame, 0, &mut out);
        assert_eq!(len, frame.len());
        check_tcp(&out[..len]);
        let empty = tcp_v4(0, 0);
        let sf = SuperFrame::parse(&empty, GsoKind::Tcp, 1448, 2048).unwrap();
        assert_eq!(sf.segments(), 1);
        let len = sf.write_segment(&empty, 0, &mut out);
        check_tcp(&out[..len]);
    }
}
