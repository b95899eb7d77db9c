//! Every wire view in `limpet_dataplane::wire` over arbitrary bytes: at
//! offset 0 and at every header offset of the frame the bytes describe
//! (Ethernet, tag, IP, transport), `new_checked`, then every getter, then
//! every setter on a copy. Checked:
//! - after `check_len` passed nothing panics, setters included (length
//!   setters too, followed by a fresh `new_checked`);
//! - each setter reads back through its getter (masked to its field) and
//!   touches no other field; `check_len` still passes after the setters
//!   that change no length;
//! - getters agree with etherparse where both accept the header;
//! - checksums agree with a from-scratch RFC 1071 reference; the
//!   incremental updates (address, port, TTL, echo reply) keep a checksum
//!   exactly as valid as it was; `fill_*` makes it valid.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use limpet_dataplane::wire::{
    MacAddr, arp, checksum, ethernet, icmpv4, icmpv6, ipv4, ipv6, tcp, udp, vlan,
};
use limpet_fuzz::refsum;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Values the setters write, drawn from the input's last bytes.
#[derive(Debug, Default, Arbitrary)]
struct Values {
    mac: [u8; 6],
    u8a: u8,
    u8b: u8,
    u16a: u16,
    u16b: u16,
    u32a: u32,
    u32b: u32,
    v4: [u8; 4],
    v6: [u8; 16],
    flag: bool,
    len: u16,
}

fn values(data: &[u8]) -> Values {
    let tail = &data[data.len().saturating_sub(64)..];
    Values::arbitrary(&mut Unstructured::new(tail)).unwrap_or_default()
}

fn ethernet_view(buf: &[u8], v: &Values) {
    let Ok(f) = ethernet::Frame::new_checked(buf) else {
        assert!(buf.len() < ethernet::HEADER_LEN);
        return;
    };
    let (dst, src, ty) = (f.dst_addr(), f.src_addr(), f.ethertype());
    assert_eq!(f.payload().len(), buf.len() - ethernet::HEADER_LEN);
    let mut copy = buf.to_vec();
    let mut f = ethernet::Frame::new_checked(&mut copy[..]).unwrap();
    f.set_dst_addr(MacAddr(v.mac));
    assert_eq!(
        (f.dst_addr(), f.src_addr(), f.ethertype()),
        (MacAddr(v.mac), src, ty)
    );
    f.set_src_addr(MacAddr(v.mac));
    f.set_ethertype(v.u16a);
    assert_eq!(f.ethertype(), v.u16a);
    f.set_dst_addr(dst);
    f.set_src_addr(MacAddr(v.mac));
    f.swap_addrs();
    assert_eq!((f.dst_addr(), f.src_addr()), (MacAddr(v.mac), dst));
    f.swap_addrs();
    f.set_src_addr(src);
    f.set_ethertype(ty);
    assert_eq!(f.payload_mut().len(), buf.len() - ethernet::HEADER_LEN);
    assert_eq!(
        f.as_ref(),
        buf,
        "setters put back leave the frame as it was"
    );
}

fn vlan_view(buf: &[u8], v: &Values) {
    let Ok(t) = vlan::Packet::new_checked(buf) else {
        return;
    };
    let tci = t.tci();
    assert_eq!(
        tci,
        u16::from(t.pcp()) << 13 | u16::from(t.dei()) << 12 | t.vid()
    );
    let inner = t.inner_ethertype();
    assert_eq!(t.payload().len(), buf.len() - vlan::HEADER_LEN);
    let mut copy = buf.to_vec();
    let mut t = vlan::Packet::new_checked(&mut copy[..]).unwrap();
    t.set_pcp(v.u8a);
    assert_eq!(t.pcp(), v.u8a & 7);
    t.set_dei(v.flag);
    assert_eq!(t.dei(), v.flag);
    t.set_vid(v.u16a);
    assert_eq!(t.vid(), v.u16a & 0x0fff);
    assert_eq!((t.pcp(), t.dei()), (v.u8a & 7, v.flag));
    t.set_inner_ethertype(v.u16b);
    assert_eq!(t.inner_ethertype(), v.u16b);
    t.set_tci(tci);
    t.set_inner_ethertype(inner);
    let _ = t.payload_mut();
    assert_eq!(t.as_ref(), buf);
}

fn arp_view(buf: &[u8], v: &Values) {
    let Ok(p) = arp::Packet::new_checked(buf) else {
        return;
    };
    let (sha, spa, tha, tpa) = (
        p.sender_hardware_addr(),
        p.sender_protocol_addr(),
        p.target_hardware_addr(),
        p.target_protocol_addr(),
    );
    let _ = (
        p.hardware_type(),
        p.protocol_type(),
        p.hardware_len(),
        p.protocol_len(),
    );
    let op = p.operation();
    assert_eq!(u16::from(op), u16::from_be_bytes([buf[6], buf[7]]));
    let mut copy = buf.to_vec();
    let mut p = arp::Packet::new_checked(&mut copy[..]).unwrap();
    p.make_reply(MacAddr(v.mac));
    assert_eq!(p.operation(), arp::Operation::Reply);
    assert_eq!(
        (
            p.sender_hardware_addr(),
            p.sender_protocol_addr(),
            p.target_hardware_addr(),
            p.target_protocol_addr()
        ),
        (MacAddr(v.mac), tpa, sha, spa)
    );
    assert!(p.check_len().is_ok());
    p.set_operation(arp::Operation::from(v.u16a));
    assert_eq!(u16::from(p.operation()), v.u16a);
    p.set_sender_hardware_addr(sha);
    p.set_sender_protocol_addr(spa);
    p.set_target_hardware_addr(tha);
    p.set_target_protocol_addr(tpa);
    p.set_operation(op);
    p.fill_eth_ipv4_header();
    assert_eq!(p.as_ref(), buf);
    let _ = tha;
}

fn ipv4_view(buf: &[u8], v: &Values) {
    let Ok(p) = ipv4::Packet::new_checked(buf) else {
        return;
    };
    let header_len = p.header_len();
    assert_eq!(header_len, usize::from(buf[0] & 0x0f) * 4);
    assert!(header_len >= 20 && header_len <= usize::from(p.total_len()));
    assert_eq!(p.options().len(), header_len - 20);
    assert_eq!(p.payload().len(), usize::from(p.total_len()) - header_len);
    let valid = p.verify_checksum();
    assert_eq!(valid, refsum::sum(&buf[..header_len]) == 0xffff);
    if let Ok(e) = etherparse::Ipv4HeaderSlice::from_slice(buf) {
        assert_eq!(p.version(), 4);
        assert_eq!(usize::from(e.ihl()) * 4, header_len);
        assert_eq!(p.total_len(), e.total_len());
        assert_eq!(p.ident(), e.identification());
        assert_eq!(p.dont_frag(), e.dont_fragment());
        assert_eq!(p.more_frags(), e.more_fragments());
        assert_eq!(p.frag_offset(), e.fragments_offset().value() * 8);
        assert_eq!(p.ttl(), e.ttl());
        assert_eq!(p.protocol(), e.protocol().0);
        assert_eq!(p.checksum(), e.header_checksum());
        assert_eq!(p.src_addr(), e.source_addr());
        assert_eq!(p.dst_addr(), e.destination_addr());
        assert_eq!(p.dscp(), e.dcp().value());
        assert_eq!(p.ecn(), e.ecn().value());
        assert_eq!(p.is_fragment(), e.is_fragmenting_payload());
    }
    let (src, dst, ttl) = (p.src_addr(), p.dst_addr(), p.ttl());
    let mut copy = buf.to_vec();
    let mut p = ipv4::Packet::new_checked(&mut copy[..]).unwrap();
    p.set_dst_addr_update_checksum(Ipv4Addr::from(v.v4));
    p.set_src_addr_update_checksum(Ipv4Addr::from(v.v4));
    assert_eq!(
        (p.src_addr(), p.dst_addr()),
        (Ipv4Addr::from(v.v4), Ipv4Addr::from(v.v4))
    );
    assert_eq!(
        p.verify_checksum(),
        valid,
        "address update keeps the checksum's validity"
    );
    p.decrement_ttl_update_checksum();
    assert_eq!(p.ttl(), ttl.saturating_sub(1));
    assert_eq!(
        p.verify_checksum(),
        valid,
        "TTL update keeps the checksum's validity"
    );
    p.set_src_addr(src);
    p.set_dst_addr(dst);
    p.set_ttl(v.u8a);
    p.set_protocol(v.u8b);
    assert_eq!((p.ttl(), p.protocol()), (v.u8a, v.u8b));
    p.set_dscp(v.u8a);
    p.set_ecn(v.u8b);
    assert_eq!((p.dscp(), p.ecn()), (v.u8a & 0x3f, v.u8b & 3));
    p.set_ident(v.u16a);
    assert_eq!(p.ident(), v.u16a);
    p.set_frag_offset(v.u16b);
    p.set_dont_frag(v.flag);
    p.set_more_frags(!v.flag);
    assert_eq!(p.frag_offset(), v.u16b & !7);
    assert_eq!((p.dont_frag(), p.more_frags()), (v.flag, !v.flag));
    p.fill_checksum();
    assert!(p.verify_checksum());
    p.set_checksum(v.u16a);
    assert_eq!(p.checksum(), v.u16a);
    assert_eq!(p.header_len(), header_len);
    assert!(p.check_len().is_ok(), "no length changed");
    let _ = p.options_mut();
    let _ = p.payload_mut();
    // Length fields: anything goes, then a fresh check decides.
    p.set_header_len(usize::from(v.len));
    p.set_total_len(v.u16b);
    p.set_version(v.u8a);
    if let Ok(p) = ipv4::Packet::new_checked(&copy[..]) {
        let _ = (p.payload(), p.options(), p.verify_checksum());
    }
}

fn ipv6_view(buf: &[u8], v: &Values) {
    let Ok(p) = ipv6::Packet::new_checked(buf) else {
        return;
    };
    assert_eq!(p.version(), 6);
    assert_eq!(p.payload().len(), usize::from(p.payload_len()));
    if let Ok((_, offset)) = p.upper_layer() {
        assert!(offset <= p.payload().len());
    }
    if let Ok(e) = etherparse::Ipv6HeaderSlice::from_slice(buf) {
        assert_eq!(p.traffic_class(), e.traffic_class());
        assert_eq!(p.flow_label(), e.flow_label().value());
        assert_eq!(p.payload_len(), e.payload_length());
        assert_eq!(p.next_header(), e.next_header().0);
        assert_eq!(p.hop_limit(), e.hop_limit());
        assert_eq!(p.src_addr(), e.source_addr());
        assert_eq!(p.dst_addr(), e.destination_addr());
    }
    let mut copy = buf.to_vec();
    let mut p = ipv6::Packet::new_checked(&mut copy[..]).unwrap();
    let (tc, label) = (p.traffic_class(), p.flow_label());
    p.set_traffic_class(v.u8a);
    assert_eq!(
        (p.traffic_class(), p.flow_label(), p.version()),
        (v.u8a, label, 6)
    );
    p.set_flow_label(v.u32a);
    assert_eq!(
        (p.traffic_class(), p.flow_label()),
        (v.u8a, v.u32a & 0xf_ffff)
    );
    p.set_traffic_class(tc);
    p.set_flow_label(label);
    p.set_next_header(v.u8a);
    p.set_hop_limit(v.u8b);
    p.set_src_addr(Ipv6Addr::from(v.v6));
    p.set_dst_addr(Ipv6Addr::from(v.v6));
    assert_eq!(
        (p.next_header(), p.hop_limit(), p.src_addr(), p.dst_addr()),
        (v.u8a, v.u8b, Ipv6Addr::from(v.v6), Ipv6Addr::from(v.v6))
    );
    assert!(p.check_len().is_ok());
    let _ = p.upper_layer();
    let _ = p.payload_mut();
    p.set_payload_len(v.len);
    p.set_version(v.u8a);
    if let Ok(p) = ipv6::Packet::new_checked(&copy[..]) {
        let _ = (p.payload(), p.upper_layer());
    }
}

/// The addresses a transport checksum is taken over.
#[derive(Clone, Copy)]
enum Pseudo {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl Pseudo {
    fn sum(self, protocol: u8, len: usize) -> u16 {
        match self {
            Pseudo::V4(s, d) => refsum::pseudo_v4(s.octets(), d.octets(), protocol, len),
            Pseudo::V6(s, d) => refsum::pseudo_v6(s.octets(), d.octets(), protocol, len),
        }
    }

    fn octets(self) -> (Vec<u8>, Vec<u8>) {
        match self {
            Pseudo::V4(s, d) => (s.octets().to_vec(), d.octets().to_vec()),
            Pseudo::V6(s, d) => (s.octets().to_vec(), d.octets().to_vec()),
        }
    }

    /// The same family, `src` replaced by the value's address.
    fn with_src(self, v: &Values) -> Pseudo {
        match self {
            Pseudo::V4(_, d) => Pseudo::V4(Ipv4Addr::from(v.v4), d),
            Pseudo::V6(_, d) => Pseudo::V6(Ipv6Addr::from(v.v6), d),
        }
    }
}

fn tcp_view(buf: &[u8], v: &Values, pseudo: Pseudo) {
    let Ok(t) = tcp::Packet::new_checked(buf) else {
        return;
    };
    let header_len = t.header_len();
    assert_eq!(header_len, usize::from(buf[12] >> 4) * 4);
    assert_eq!(t.options().len(), header_len - 20);
    assert_eq!(t.payload().len(), buf.len() - header_len);
    let flags = t.flags();
    assert_eq!(
        [
            t.fin(),
            t.syn(),
            t.rst(),
            t.psh(),
            t.ack(),
            t.urg(),
            t.ece(),
            t.cwr()
        ],
        std::array::from_fn(|i| flags & (1 << i) != 0)
    );
    if let Ok(e) = etherparse::TcpHeaderSlice::from_slice(buf) {
        assert_eq!(
            (t.src_port(), t.dst_port()),
            (e.source_port(), e.destination_port())
        );
        assert_eq!(
            (t.seq_number(), t.ack_number()),
            (e.sequence_number(), e.acknowledgment_number())
        );
        assert_eq!(header_len, usize::from(e.data_offset()) * 4);
        assert_eq!(
            (t.syn(), t.ack(), t.fin(), t.rst()),
            (e.syn(), e.ack(), e.fin(), e.rst())
        );
        assert_eq!(
            (t.window_len(), t.checksum(), t.urgent_at()),
            (e.window_size(), e.checksum(), e.urgent_pointer())
        );
    }
    let ps = pseudo.sum(6, buf.len());
    let valid = refsum::verifies(ps, buf);
    let verify = |t: &tcp::Packet<&mut [u8]>, p: Pseudo| match p {
        Pseudo::V4(s, d) => t.verify_checksum_v4(s, d),
        Pseudo::V6(s, d) => t.verify_checksum_v6(s, d),
    };
    let mut copy = buf.to_vec();
    let mut t = tcp::Packet::new_checked(&mut copy[..]).unwrap();
    assert_eq!(
        verify(&t, pseudo),
        valid,
        "verify agrees with the reference"
    );
    let mut zeroed = buf.to_vec();
    zeroed[16..18].fill(0);
    let expect = refsum::field_value(ps, &zeroed);
    let computed = match pseudo {
        Pseudo::V4(s, d) => t.compute_checksum_v4(s, d),
        Pseudo::V6(s, d) => t.compute_checksum_v6(s, d),
    };
    assert_eq!(computed, expect, "compute agrees with the reference");
    t.set_src_port_update_checksum(v.u16a);
    t.set_dst_port_update_checksum(v.u16b);
    assert_eq!((t.src_port(), t.dst_port()), (v.u16a, v.u16b));
    assert_eq!(verify(&t, pseudo), valid, "port updates keep validity");
    let moved = pseudo.with_src(v);
    let (old, _) = pseudo.octets();
    let (new, _) = moved.octets();
    t.update_checksum_for_addr_change(&old, &new);
    assert_eq!(verify(&t, moved), valid, "address update keeps validity");
    match moved {
        Pseudo::V4(s, d) => t.fill_checksum_v4(s, d),
        Pseudo::V6(s, d) => t.fill_checksum_v6(s, d),
    }
    assert!(verify(&t, moved));
    t.set_seq_number(v.u32a);
    t.set_ack_number(v.u32b);
    t.set_flags(v.u8a);
    t.set_window_len(v.u16a);
    t.set_urgent_at(v.u16b);
    t.set_checksum(v.u16a);
    assert_eq!(
        (
            t.seq_number(),
            t.ack_number(),
            t.flags(),
            t.window_len(),
            t.urgent_at(),
            t.checksum()
        ),
        (v.u32a, v.u32b, v.u8a, v.u16a, v.u16b, v.u16a)
    );
    assert_eq!(t.header_len(), header_len);
    assert!(t.check_len().is_ok());
    let _ = t.options_mut();
    let _ = t.payload_mut();
    t.set_header_len(usize::from(v.len));
    if let Ok(t) = tcp::Packet::new_checked(&copy[..]) {
        let _ = (t.options(), t.payload());
    }
}

fn udp_view(buf: &[u8], v: &Values, pseudo: Pseudo) {
    let Ok(u) = udp::Packet::new_checked(buf) else {
        return;
    };
    let len = usize::from(u.len());
    assert!(len >= 8 && len <= buf.len());
    assert_eq!(u.payload().len(), len - 8);
    if let Ok(e) = etherparse::UdpHeaderSlice::from_slice(buf) {
        assert_eq!(
            (u.src_port(), u.dst_port()),
            (e.source_port(), e.destination_port())
        );
        assert_eq!((u.len(), u.checksum()), (e.length(), e.checksum()));
    }
    let datagram = &buf[..len];
    let ps = pseudo.sum(17, len);
    let zero = u.checksum() == 0;
    let valid = match pseudo {
        Pseudo::V4(..) => zero || refsum::verifies(ps, datagram),
        Pseudo::V6(..) => !zero && refsum::verifies(ps, datagram),
    };
    let verify = |u: &udp::Packet<&mut [u8]>, p: Pseudo| match p {
        Pseudo::V4(s, d) => u.verify_checksum_v4(s, d),
        Pseudo::V6(s, d) => u.verify_checksum_v6(s, d),
    };
    let mut copy = buf.to_vec();
    let mut u = udp::Packet::new_checked(&mut copy[..]).unwrap();
    assert_eq!(
        verify(&u, pseudo),
        valid,
        "verify agrees with the reference"
    );
    let mut zeroed = datagram.to_vec();
    zeroed[6..8].fill(0);
    let mut expect = refsum::field_value(ps, &zeroed);
    if expect == 0 {
        expect = 0xffff;
    }
    let computed = match pseudo {
        Pseudo::V4(s, d) => u.compute_checksum_v4(s, d),
        Pseudo::V6(s, d) => u.compute_checksum_v6(s, d),
    };
    assert_eq!(computed, expect, "compute agrees with the reference");
    u.set_src_port_update_checksum(v.u16a);
    u.set_dst_port_update_checksum(v.u16b);
    assert_eq!((u.src_port(), u.dst_port()), (v.u16a, v.u16b));
    let moved = pseudo.with_src(v);
    let (old, _) = pseudo.octets();
    let (new, _) = moved.octets();
    u.update_checksum_for_addr_change(&old, &new);
    assert_eq!(
        u.checksum() == 0,
        zero,
        "a zero checksum stays zero, no other becomes zero"
    );
    assert_eq!(verify(&u, moved), valid, "updates keep validity");
    match moved {
        Pseudo::V4(s, d) => u.fill_checksum_v4(s, d),
        Pseudo::V6(s, d) => u.fill_checksum_v6(s, d),
    }
    assert!(verify(&u, moved) && u.checksum() != 0);
    u.set_checksum(v.u16a);
    assert_eq!(u.checksum(), v.u16a);
    assert!(u.check_len().is_ok());
    let _ = u.payload_mut();
    u.set_len(v.len);
    if let Ok(u) = udp::Packet::new_checked(&copy[..]) {
        let _ = u.payload();
    }
}

fn icmpv4_view(buf: &[u8], v: &Values) {
    let Ok(p) = icmpv4::Packet::new_checked(buf) else {
        return;
    };
    let valid = p.verify_checksum();
    assert_eq!(valid, refsum::sum(buf) == 0xffff);
    let _ = (
        p.msg_type(),
        p.msg_code(),
        p.checksum(),
        p.echo_ident(),
        p.echo_seq_no(),
    );
    assert_eq!(p.rest_of_header()[..], buf[4..8]);
    assert_eq!(p.data().len(), buf.len() - 8);
    let mut copy = buf.to_vec();
    let mut p = icmpv4::Packet::new_checked(&mut copy[..]).unwrap();
    p.make_echo_reply();
    assert_eq!((p.msg_type(), p.msg_code()), (0, 0));
    if buf[4..].iter().all(|&b| b == 0) {
        // An all-zero reply has one right checksum, 0xffff. (From a bad
        // request's 0 it may come out right too: to the update 0 and
        // 0xffff are the same number.)
        if valid {
            assert_eq!(p.checksum(), 0xffff, "all-zero echo reply");
        }
    } else {
        assert_eq!(p.verify_checksum(), valid, "echo reply keeps validity");
    }
    p.set_msg_type(v.u8a);
    p.set_msg_code(v.u8b);
    p.set_echo_ident(v.u16a);
    p.set_echo_seq_no(v.u16b);
    assert_eq!(
        (p.msg_type(), p.msg_code(), p.echo_ident(), p.echo_seq_no()),
        (v.u8a, v.u8b, v.u16a, v.u16b)
    );
    p.set_rest_of_header(v.v4);
    assert_eq!(p.rest_of_header(), v.v4);
    let _ = p.data_mut();
    p.fill_checksum();
    assert!(p.verify_checksum());
    p.set_checksum(v.u16a);
    assert_eq!(p.checksum(), v.u16a);
}

fn icmpv6_view(buf: &[u8], v: &Values, src: Ipv6Addr, dst: Ipv6Addr) {
    if let Ok(p) = icmpv6::Packet::new_checked(buf) {
        let ps = refsum::pseudo_v6(src.octets(), dst.octets(), 58, buf.len());
        let valid = p.verify_checksum(src, dst);
        assert_eq!(valid, refsum::verifies(ps, buf));
        let _ = (
            p.msg_type(),
            p.msg_code(),
            p.checksum(),
            p.echo_ident(),
            p.echo_seq_no(),
        );
        assert_eq!(p.data().len(), buf.len() - 8);
        let mut copy = buf.to_vec();
        let mut p = icmpv6::Packet::new_checked(&mut copy[..]).unwrap();
        p.make_echo_reply();
        assert_eq!((p.msg_type(), p.msg_code()), (129, 0));
        assert_eq!(p.verify_checksum(src, dst), valid);
        let new = Ipv6Addr::from(v.v6);
        p.update_checksum_for_addr_change(&src.octets(), &new.octets());
        assert_eq!(
            p.verify_checksum(new, dst),
            valid,
            "address update keeps validity"
        );
        p.set_msg_type(v.u8a);
        p.set_msg_code(v.u8b);
        p.set_echo_ident(v.u16a);
        p.set_echo_seq_no(v.u16b);
        assert_eq!(
            (p.msg_type(), p.msg_code(), p.echo_ident(), p.echo_seq_no()),
            (v.u8a, v.u8b, v.u16a, v.u16b)
        );
        let _ = p.data_mut();
        p.fill_checksum(src, dst);
        assert!(p.verify_checksum(src, dst));
        p.set_checksum(v.u16a);
        assert_eq!(p.checksum(), v.u16a);
    }
    if let Ok(ns) = icmpv6::NeighborSolicit::new_checked(buf) {
        let _ = (
            ns.checksum(),
            ns.target_addr(),
            ns.source_ll_addr(),
            ns.verify_checksum(src, dst),
        );
        assert_eq!(ns.options().len(), buf.len() - icmpv6::ND_LEN);
        let mut copy = buf.to_vec();
        let mut ns = icmpv6::NeighborSolicit::new_checked(&mut copy[..]).unwrap();
        ns.set_target_addr(Ipv6Addr::from(v.v6));
        assert_eq!(ns.target_addr(), Ipv6Addr::from(v.v6));
        let room = buf.len() >= icmpv6::NA_WITH_LL_LEN;
        assert_eq!(ns.set_source_ll_addr_option(MacAddr(v.mac)).is_ok(), room);
        if room {
            assert_eq!(ns.source_ll_addr(), Some(MacAddr(v.mac)));
        }
        ns.fill_checksum(src, dst);
        assert!(ns.verify_checksum(src, dst));
        let _ = ns.options_mut();
        ns.init();
        let _ = icmpv6::NeighborSolicit::new_checked(&copy[..]).map(|n| n.source_ll_addr());
    }
    if let Ok(na) = icmpv6::NeighborAdvert::new_checked(buf) {
        let _ = (
            na.checksum(),
            na.target_addr(),
            na.target_ll_addr(),
            na.verify_checksum(src, dst),
        );
        let f = na.flags();
        assert_eq!(
            (na.router_flag(), na.solicited_flag(), na.override_flag()),
            (f & 0x80 != 0, f & 0x40 != 0, f & 0x20 != 0)
        );
        let mut copy = buf.to_vec();
        let mut na = icmpv6::NeighborAdvert::new_checked(&mut copy[..]).unwrap();
        na.set_flags(v.u8a);
        assert_eq!(na.flags(), v.u8a & 0xe0);
        let room = buf.len() >= icmpv6::NA_WITH_LL_LEN;
        assert_eq!(na.set_target_ll_addr_option(MacAddr(v.mac)).is_ok(), room);
        if room {
            assert_eq!(na.target_ll_addr(), Some(MacAddr(v.mac)));
        }
        na.fill_checksum(src, dst);
        assert!(na.verify_checksum(src, dst));
        let _ = na.options_mut();
        na.init();
        let _ = icmpv6::NeighborAdvert::new_checked(&copy[..]).map(|n| n.target_ll_addr());
    }
}

fn checksum_module(buf: &[u8], v: &Values) {
    assert_eq!(checksum::sum(buf), u32::from(refsum::sum(buf)));
    assert_eq!(checksum::checksum(buf), !refsum::sum(buf));
    if let Some(h) = buf.first_chunk::<20>() {
        assert_eq!(checksum::sum20(h), checksum::sum(h));
    }
    assert_eq!(checksum::fold(v.u32a), refsum::fold(u64::from(v.u32a)));
    let (s4, d4) = (Ipv4Addr::from(v.v4), Ipv4Addr::from(v.u32a));
    assert_eq!(
        checksum::pseudo_header_v4(s4, d4, v.u8a, u32::from(v.u16a)),
        u32::from(refsum::pseudo_v4(
            s4.octets(),
            d4.octets(),
            v.u8a,
            usize::from(v.u16a)
        ))
    );
    let (s6, d6) = (Ipv6Addr::from(v.v6), Ipv6Addr::from(u128::from(v.u32b)));
    assert_eq!(
        checksum::pseudo_header_v6(s6, d6, v.u8a, v.u32a),
        u32::from(refsum::pseudo_v6(
            s6.octets(),
            d6.octets(),
            v.u8a,
            v.u32a as usize
        ))
    );
    // Incremental updates against recomputation: replace one word, then a
    // 4- and a 16-byte field, at even offsets of the data.
    let even = buf.len() & !1;
    if even >= 2 {
        let data = &buf[..even];
        let c = !refsum::sum(data);
        let at = (usize::from(v.u16a) % (even / 2)) * 2;
        let old = u16::from_be_bytes([data[at], data[at + 1]]);
        let mut changed = data.to_vec();
        changed[at..at + 2].copy_from_slice(&v.u16b.to_be_bytes());
        let updated = checksum::update_u16(c, old, v.u16b);
        assert!(refsum::same(updated, !refsum::sum(&changed)), "update_u16");
        for field in [4usize, 16] {
            if even >= field {
                let at = (usize::from(v.u16b) % ((even - field) / 2 + 1)) * 2;
                let mut changed = data.to_vec();
                changed[at..at + field].copy_from_slice(&v.v6[..field]);
                let updated = checksum::update_bytes(c, &data[at..at + field], &v.v6[..field]);
                assert!(
                    refsum::same(updated, !refsum::sum(&changed)),
                    "update_bytes"
                );
            }
        }
    }
}

/// The header offsets the bytes describe, with what each is, walking
/// Ethernet, one or two tags, then IP and transport.
fn walk(data: &[u8], v: &Values) {
    let Ok(eth) = ethernet::Frame::new_checked(data) else {
        return;
    };
    let mut ty = eth.ethertype();
    let mut l3 = ethernet::HEADER_LEN;
    for _ in 0..2 {
        if ty != 0x8100 && ty != 0x88a8 {
            break;
        }
        let Ok(tag) = vlan::Packet::new_checked(&data[l3..]) else {
            return;
        };
        vlan_view(&data[l3..], v);
        ty = tag.inner_ethertype();
        l3 += vlan::HEADER_LEN;
    }
    let ip = &data[l3..];
    match ty {
        0x0806 => arp_view(ip, v),
        0x0800 => {
            ipv4_view(ip, v);
            let Ok(p) = ipv4::Packet::new_checked(ip) else {
                return;
            };
            let pseudo = Pseudo::V4(p.src_addr(), p.dst_addr());
            let l4 = p.payload();
            match p.protocol() {
                6 => tcp_view(l4, v, pseudo),
                17 => udp_view(l4, v, pseudo),
                1 => icmpv4_view(l4, v),
                _ => {}
            }
        }
        0x86dd => {
            ipv6_view(ip, v);
            let Ok(p) = ipv6::Packet::new_checked(ip) else {
                return;
            };
            let Ok((protocol, offset)) = p.upper_layer() else {
                return;
            };
            let (src, dst) = (p.src_addr(), p.dst_addr());
            let l4 = &p.payload()[offset..];
            match protocol {
                6 => tcp_view(l4, v, Pseudo::V6(src, dst)),
                17 => udp_view(l4, v, Pseudo::V6(src, dst)),
                58 => icmpv6_view(l4, v, src, dst),
                _ => {}
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let v = values(data);
    // Every view over the bytes as they are, wherever they came from.
    ethernet_view(data, &v);
    vlan_view(data, &v);
    arp_view(data, &v);
    ipv4_view(data, &v);
    ipv6_view(data, &v);
    let a4 = Ipv4Addr::from(v.v4);
    let a6 = Ipv6Addr::from(v.v6);
    tcp_view(data, &v, Pseudo::V4(a4, a4));
    tcp_view(data, &v, Pseudo::V6(a6, a6));
    udp_view(data, &v, Pseudo::V4(a4, a4));
    udp_view(data, &v, Pseudo::V6(a6, a6));
    icmpv4_view(data, &v);
    icmpv6_view(data, &v, a6, a6);
    checksum_module(data, &v);
    // And at the offsets the frame's own headers give.
    walk(data, &v);
});
