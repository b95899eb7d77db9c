//! etherparse as the independent judge of pktgen's frames.

use std::net::IpAddr;

use etherparse::{
    EtherType, IpNumber, LinkExtSlice, LinkSlice, NetSlice, SlicedPacket, TransportSlice,
};

use crate::{FrameSize, L4, MIN_FRAME_LEN, PacketSpec, Payload};

/// The L4 payload `spec` should produce: its payload, then zero padding when
/// the frame size is exact.
pub fn expected_payload(spec: &PacketSpec, payload_len: usize) -> Vec<u8> {
    let mut p = match &spec.payload {
        Payload::Bytes(b) => b.clone(),
        Payload::Len(n) => (0..*n).map(Payload::pattern_byte).collect(),
    };
    p.resize(payload_len, 0);
    p
}

/// The frame length that `spec` must produce, derived from the rules in
/// `FrameSize`'s documentation rather than from `layout()`.
pub fn expected_frame_len(spec: &PacketSpec) -> usize {
    let l2 = if spec.vlan.is_some() { 18 } else { 14 };
    let l3 = if spec.src.is_ipv4() { 20 } else { 40 };
    let l4 = match spec.l4 {
        L4::Tcp(_) => 20,
        L4::Udp(_) => 8,
    };
    let natural = l2 + l3 + l4 + spec.payload.len();
    match spec.frame_size {
        FrameSize::Natural => natural.max(MIN_FRAME_LEN),
        FrameSize::Unpadded => natural,
        FrameSize::Exact(n) => n,
    }
}

/// Parses `frame` with etherparse and asserts that every field matches
/// `spec` and that every checksum verifies. Returns the L4 payload.
pub fn check(spec: &PacketSpec, frame: &[u8]) -> Vec<u8> {
    assert_eq!(frame.len(), expected_frame_len(spec), "frame length");
    let sliced = SlicedPacket::from_ethernet(frame).expect("etherparse slices the frame");
    check_link(spec, &sliced);
    let l3_offset = if spec.vlan.is_some() { 18 } else { 14 };
    let ip_end = l3_offset + check_ip(spec, sliced.net.as_ref().expect("an IP layer"));
    assert!(ip_end <= frame.len());
    assert!(
        frame[ip_end..].iter().all(|&b| b == 0),
        "Ethernet trailer must be zero"
    );
    if ip_end < frame.len() {
        assert_eq!(
            spec.frame_size,
            FrameSize::Natural,
            "only Natural pads a trailer"
        );
        assert_eq!(frame.len(), MIN_FRAME_LEN);
    }
    let payload = check_l4(spec, sliced.transport.as_ref().expect("a transport layer"));

    let layout = spec.layout().expect("a spec that built has a layout");
    assert_eq!(layout.frame_len, frame.len());
    assert_eq!(layout.ip_end, ip_end);
    assert_eq!(layout.payload_len, payload.len());
    assert_eq!(&frame[layout.payload_offset..ip_end], &payload[..]);
    assert_eq!(payload, expected_payload(spec, layout.payload_len));
    payload
}

fn check_link(spec: &PacketSpec, sliced: &SlicedPacket<'_>) {
    let Some(LinkSlice::Ethernet2(eth)) = &sliced.link else {
        panic!("not Ethernet II: {:?}", sliced.link);
    };
    assert_eq!(eth.source(), spec.src_mac);
    assert_eq!(eth.destination(), spec.dst_mac);
    let ip_ethertype = if spec.src.is_ipv4() {
        EtherType::IPV4
    } else {
        EtherType::IPV6
    };
    if let Some(id) = spec.vlan {
        assert_eq!(eth.ether_type(), EtherType::VLAN_TAGGED_FRAME);
        assert_eq!(sliced.link_exts.len(), 1);
        let LinkExtSlice::Vlan(vlan) = &sliced.link_exts[0] else {
            panic!("not a VLAN tag: {:?}", sliced.link_exts[0]);
        };
        assert_eq!(vlan.vlan_identifier().value(), id);
        assert_eq!(vlan.priority_code_point().value(), 0);
        assert!(!vlan.drop_eligible_indicator());
        assert_eq!(vlan.ether_type(), ip_ethertype);
    } else {
        assert_eq!(eth.ether_type(), ip_ethertype);
        assert!(sliced.link_exts.is_empty());
    }
}

/// Returns the IP packet's length as its header states it.
fn check_ip(spec: &PacketSpec, net: &NetSlice<'_>) -> usize {
    let l4_proto = match spec.l4 {
        L4::Tcp(_) => IpNumber::TCP,
        L4::Udp(_) => IpNumber::UDP,
    };
    match net {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            assert_eq!(IpAddr::V4(h.source_addr()), spec.src);
            assert_eq!(IpAddr::V4(h.destination_addr()), spec.dst);
            assert_eq!(h.ihl(), 5);
            assert_eq!(h.ttl(), spec.ttl);
            assert_eq!(h.protocol(), l4_proto);
            assert!(h.dont_fragment());
            assert!(!h.more_fragments());
            assert_eq!(h.fragments_offset().value(), 0);
            assert_eq!(
                h.header_checksum(),
                h.to_header().calc_header_checksum(),
                "IPv4 header checksum"
            );
            usize::from(h.total_len())
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            assert_eq!(IpAddr::V6(h.source_addr()), spec.src);
            assert_eq!(IpAddr::V6(h.destination_addr()), spec.dst);
            assert_eq!(h.hop_limit(), spec.ttl);
            assert_eq!(h.next_header(), l4_proto);
            assert_eq!(h.traffic_class(), 0);
            assert_eq!(h.flow_label().value(), 0);
            assert!(ip.extensions().is_empty());
            40 + usize::from(h.payload_length())
        }
        NetSlice::Arp(arp) => panic!("ARP: {arp:?}"),
    }
}

/// Returns the L4 payload.
fn check_l4(spec: &PacketSpec, transport: &TransportSlice<'_>) -> Vec<u8> {
    match (transport, spec.l4) {
        (TransportSlice::Tcp(tcp), L4::Tcp(want)) => {
            assert_eq!(tcp.source_port(), want.src_port);
            assert_eq!(tcp.destination_port(), want.dst_port);
            assert_eq!(tcp.sequence_number(), want.seq);
            assert_eq!(tcp.acknowledgment_number(), want.ack);
            assert_eq!(tcp.data_offset(), 5);
            assert_eq!(tcp.window_size(), want.window);
            assert_eq!(tcp.urgent_pointer(), 0);
            let flags = want.flags;
            assert_eq!(tcp.fin(), flags.contains(crate::FIN));
            assert_eq!(tcp.syn(), flags.contains(crate::SYN));
            assert_eq!(tcp.rst(), flags.contains(crate::RST));
            assert_eq!(tcp.psh(), flags.contains(crate::PSH));
            assert_eq!(tcp.ack(), flags.contains(crate::ACK));
            assert_eq!(tcp.urg(), flags.contains(crate::TcpFlags::URG));
            assert!(!tcp.ece() && !tcp.cwr() && !tcp.ns());
            let csum = match (spec.src, spec.dst) {
                (IpAddr::V4(a), IpAddr::V4(b)) => tcp.calc_checksum_ipv4(a.octets(), b.octets()),
                (IpAddr::V6(a), IpAddr::V6(b)) => tcp.calc_checksum_ipv6(a.octets(), b.octets()),
                _ => unreachable!(),
            }
            .expect("length fits");
            assert_eq!(tcp.checksum(), csum, "TCP checksum");
            tcp.payload().to_vec()
        }
        (TransportSlice::Udp(udp), L4::Udp(want)) => {
            assert_eq!(udp.source_port(), want.src_port);
            assert_eq!(udp.destination_port(), want.dst_port);
            assert_eq!(usize::from(udp.length()), udp.slice().len(), "UDP length");
            let header = udp.to_header();
            let csum = match (spec.src, spec.dst) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    header.calc_checksum_ipv4_raw(a.octets(), b.octets(), udp.payload())
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    header.calc_checksum_ipv6_raw(a.octets(), b.octets(), udp.payload())
                }
                _ => unreachable!(),
            }
            .expect("length fits");
            if want.zero_checksum {
                assert_eq!(udp.checksum(), 0, "UDP checksum disabled");
            } else {
                assert_eq!(udp.checksum(), csum, "UDP checksum");
                assert_ne!(udp.checksum(), 0);
            }
            udp.payload().to_vec()
        }
        (other, l4) => panic!("transport {other:?} does not match spec {l4:?}"),
    }
}

/// The same frame serialised by etherparse's `PacketBuilder`, for a
/// byte-for-byte comparison.
pub fn etherparse_bytes(spec: &PacketSpec) -> Vec<u8> {
    use etherparse::{PacketBuilder, TcpHeader, VlanId};

    let layout = spec.layout().expect("valid spec");
    let payload = expected_payload(spec, layout.payload_len);
    let eth = PacketBuilder::ethernet2(spec.src_mac, spec.dst_mac);
    let ip = match (spec.vlan, spec.src, spec.dst) {
        (Some(id), IpAddr::V4(s), IpAddr::V4(d)) => eth
            .single_vlan(VlanId::try_new(id).expect("valid VLAN id"))
            .ipv4(s.octets(), d.octets(), spec.ttl),
        (Some(id), IpAddr::V6(s), IpAddr::V6(d)) => eth
            .single_vlan(VlanId::try_new(id).expect("valid VLAN id"))
            .ipv6(s.octets(), d.octets(), spec.ttl),
        (None, IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), spec.ttl),
        (None, IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), spec.ttl),
        _ => unreachable!("valid spec"),
    };
    let mut out = Vec::new();
    match spec.l4 {
        L4::Tcp(t) => {
            let mut h = TcpHeader::new(t.src_port, t.dst_port, t.seq, t.window);
            h.acknowledgment_number = t.ack;
            h.fin = t.flags.contains(crate::FIN);
            h.syn = t.flags.contains(crate::SYN);
            h.rst = t.flags.contains(crate::RST);
            h.psh = t.flags.contains(crate::PSH);
            h.ack = t.flags.contains(crate::ACK);
            h.urg = t.flags.contains(crate::TcpFlags::URG);
            ip.tcp_header(h).write(&mut out, &payload).expect("writes");
        }
        L4::Udp(u) => {
            ip.udp(u.src_port, u.dst_port)
                .write(&mut out, &payload)
                .expect("writes");
            if u.zero_checksum {
                out[layout.l4_offset + 6..layout.l4_offset + 8].fill(0);
            }
        }
    }
    out.resize(layout.frame_len, 0);
    out
}
