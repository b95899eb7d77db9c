//! Encapsulated DSR through the real pipeline (`ipip`, `gue`): fixture
//! rows whose expected frames are built from scratch, the inner packet by
//! pktgen and every outer header by etherparse (checksums computed whole,
//! the outer IPv6 UDP one over the entire payload), so a byte-exact match
//! proves limpet's encoding, including the IPv6 UDP checksum it derives
//! from the inner transport checksum instead of summing the payload. Then
//! properties: outer sources spread over the prefix and stay put per flow;
//! any inner packet's outer checksums verify.

mod common;

use common::fixtures::{
    BE4, BE6, CLIENT4, CLIENT6, Fixture, fix_ipv4_checksum, inbound, ip, run_rows,
};
use common::icmp::{
    CLIENT_ROUTER4, DEST_UNREACHABLE4, PACKET_TOO_BIG6, ROUTER4, ROUTER6, cut, icmp4, icmp6,
    ip_packet, v4, v6,
};
use common::{CLIENT_MAC, Harness, LIMPET_MAC, LIMPET4, LIMPET6, backend, backend_mac, service};
use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, UdpHeader};
use limpet_dataplane::encap::TunnelConfig;
use limpet_dataplane::flow::FlowKey;
use limpet_dataplane::pipeline::Action;
use limpet_dataplane::snapshot::{Affinity, ForwardMode, ServicePortSpec};
use limpet_dataplane::stats::DropReason;
use limpet_pktgen::{ACK, PacketSpec, SYN};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const IPIP4: &str = "192.0.2.30";
const IPIP6: &str = "2001:db8::30";
const GUE4: &str = "192.0.2.31";
const GUE6: &str = "2001:db8::31";
const GUE_PORT: u16 = 6080;
/// The tunnel path's MTU the fixture worker is told.
const MTU: u16 = 1500;

fn specs() -> Vec<ServicePortSpec> {
    let sticky = Affinity::client_ip(10800);
    vec![
        service(1, IPIP4, 6, sticky, ForwardMode::Ipip, vec![backend(BE4)]),
        service(2, IPIP6, 6, sticky, ForwardMode::Ipip, vec![backend(BE6)]),
        service(
            3,
            GUE4,
            17,
            Affinity::None,
            ForwardMode::Gue,
            vec![backend(BE4)],
        ),
        service(4, GUE6, 6, sticky, ForwardMode::Gue, vec![backend(BE6)]),
        // The other protocol on each address, for the property.
        service(
            5,
            IPIP4,
            17,
            Affinity::None,
            ForwardMode::Ipip,
            vec![backend(BE4)],
        ),
        service(
            6,
            IPIP6,
            17,
            Affinity::None,
            ForwardMode::Ipip,
            vec![backend(BE6)],
        ),
        service(7, GUE4, 6, sticky, ForwardMode::Gue, vec![backend(BE4)]),
        service(
            8,
            GUE6,
            17,
            Affinity::None,
            ForwardMode::Gue,
            vec![backend(BE6)],
        ),
    ]
}

/// limpet's own addresses as the outer sources (one each: the rows know
/// them), GUE on 6080, a 1500-byte tunnel path.
fn tunnel_config() -> TunnelConfig {
    TunnelConfig {
        gue_port: GUE_PORT,
        source_v4: Some((LIMPET4.parse().unwrap(), 32)),
        source_v6: Some((LIMPET6.parse().unwrap(), 128)),
        mtu: MTU,
        workers: 1,
    }
}

fn harness(config: TunnelConfig) -> Harness {
    Harness::with_config(specs(), |c| c.tunnel = config)
}

/// The flow hash limpet derives the outer source port and flow label from:
/// the connection's client-to-service tuple.
fn flow_hash(inner: &[u8]) -> u64 {
    let p = etherparse::SlicedPacket::from_ip(inner).unwrap();
    let (sport, dport) = match p.transport.unwrap() {
        etherparse::TransportSlice::Tcp(t) => (t.source_port(), t.destination_port()),
        etherparse::TransportSlice::Udp(u) => (u.source_port(), u.destination_port()),
        _ => panic!("not TCP or UDP"),
    };
    match p.net.unwrap() {
        etherparse::NetSlice::Ipv4(h) => FlowKey {
            src: h.header().source_addr(),
            dst: h.header().destination_addr(),
            src_port: sport,
            dst_port: dport,
            protocol: h.header().protocol().0,
        }
        .hash(),
        etherparse::NetSlice::Ipv6(h) => FlowKey {
            src: h.header().source_addr(),
            dst: h.header().destination_addr(),
            src_port: sport,
            dst_port: dport,
            protocol: h.payload().ip_number.0,
        }
        .hash(),
        etherparse::NetSlice::Arp(_) => panic!("not IP"),
    }
}

/// How an inner packet's DSCP/ECN and TTL read, from its IP header.
fn tos_ttl(inner: &[u8]) -> (u8, u8) {
    if inner[0] >> 4 == 4 {
        (inner[1], inner[8])
    } else {
        ((inner[0] << 4) | (inner[1] >> 4), inner[7])
    }
}

/// The frame limpet should send for `inner` to the endpoint `be` through
/// `gue` or IP in IP, its outer headers from etherparse.
fn wrapped(inner: &[u8], be: &str, gue: bool, hash: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&backend_mac(ip(be)));
    out.extend_from_slice(&LIMPET_MAC);
    let (tos, ttl) = tos_ttl(inner);
    // One worker: any port of the dynamic range is its own.
    let sport = 0xc000 | ((hash >> 40) as u16 & 0x3fff);
    match ip(be) {
        IpAddr::V4(_) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let udp_len = if gue { 8 } else { 0 };
            let protocol = if gue { IpNumber::UDP } else { IpNumber(4) };
            let mut h = Ipv4Header::new(
                (inner.len() + udp_len) as u16,
                ttl,
                protocol,
                v4(LIMPET4),
                v4(be),
            )
            .unwrap();
            h.dont_fragment = true;
            h.dscp = etherparse::IpDscp::try_new(tos >> 2).unwrap();
            h.ecn = etherparse::IpEcn::try_new(tos & 3).unwrap();
            h.header_checksum = h.calc_header_checksum();
            h.write(&mut out).unwrap();
            if gue {
                // IPv4: no UDP checksum, as Linux's fou sends by default.
                let u = UdpHeader {
                    source_port: sport,
                    destination_port: GUE_PORT,
                    length: (8 + inner.len()) as u16,
                    checksum: 0,
                };
                u.write(&mut out).unwrap();
            }
        }
        IpAddr::V6(_) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            let h = Ipv6Header {
                traffic_class: tos,
                flow_label: Ipv6FlowLabel::try_new(((hash >> 12) as u32) & 0xf_ffff).unwrap(),
                payload_length: (inner.len() + if gue { 8 } else { 0 }) as u16,
                next_header: if gue { IpNumber::UDP } else { IpNumber(41) },
                hop_limit: ttl,
                source: v6(LIMPET6),
                destination: v6(be),
            };
            h.write(&mut out).unwrap();
            if gue {
                let u = UdpHeader::with_ipv6_checksum(sport, GUE_PORT, &h, inner).unwrap();
                u.write(&mut out).unwrap();
            }
        }
    }
    out.extend_from_slice(inner);
    out
}

/// The same frame with its IPv4 DSCP/ECN byte set (checksum fixed).
fn with_tos4(mut frame: Vec<u8>, tos: u8) -> Vec<u8> {
    frame[14 + 1] = tos;
    fix_ipv4_checksum(&mut frame);
    frame
}

/// The same frame with its IPv6 traffic class set.
fn with_class6(mut frame: Vec<u8>, class: u8) -> Vec<u8> {
    frame[14] = 0x60 | (class >> 4);
    frame[15] = (class << 4) | (frame[15] & 0x0f);
    frame
}

fn row(description: &'static str, input: Vec<u8>, be: &str, gue: bool) -> Fixture {
    let inner = ip_packet(&input);
    let hash = flow_hash(&inner);
    Fixture {
        description,
        output: Some(wrapped(&inner, be, gue, hash)),
        input,
        action: Action::Forward,
    }
}

#[allow(clippy::too_many_lines)] // one table, read top to bottom
fn fixtures() -> Vec<Fixture> {
    let syn4 = inbound(PacketSpec::tcp(ip(CLIENT4), ip(IPIP4), 41000, 80).flags(SYN)).build();
    // Expedited forwarding with ECT(0): both carried to the outer header.
    let syn4 = with_tos4(syn4, 0xb8 | 0x02);
    let data4 = inbound(
        PacketSpec::tcp(ip(CLIENT4), ip(IPIP4), 41000, 80)
            .flags(ACK)
            .seq(1)
            .payload(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    )
    .build();
    // 1500 bytes of IP: fits the path alone, not once wrapped.
    let full4 = inbound(
        PacketSpec::tcp(ip(CLIENT4), ip(IPIP4), 41000, 80)
            .flags(ACK)
            .seq(19)
            .payload_len(1460),
    )
    .build();
    let fits4 = inbound(
        PacketSpec::tcp(ip(CLIENT4), ip(IPIP4), 41000, 80)
            .flags(ACK)
            .seq(19)
            .payload_len(1440),
    )
    .build();
    let mut no_df4 = full4.clone();
    no_df4[14 + 6] = 0;
    fix_ipv4_checksum(&mut no_df4);
    let frag_needed = icmp4(
        (LIMPET_MAC, CLIENT_MAC),
        IPIP4,
        CLIENT4,
        64,
        DEST_UNREACHABLE4,
        4,
        [0, 0, 0x05, 0xc8], // 1480: 1500 less the outer 20
        &cut(ip_packet(&full4), 548),
    );

    let syn6 = inbound(PacketSpec::tcp(ip(CLIENT6), ip(IPIP6), 41001, 80).flags(SYN)).build();
    let syn6 = with_class6(syn6, 0x28);
    let full6 = inbound(
        PacketSpec::tcp(ip(CLIENT6), ip(IPIP6), 41001, 80)
            .flags(ACK)
            .seq(1)
            .payload_len(1440),
    )
    .build();
    let too_big6 = icmp6(
        (LIMPET_MAC, CLIENT_MAC),
        IPIP6,
        CLIENT6,
        64,
        PACKET_TOO_BIG6,
        0,
        [0, 0, 0x05, 0xb4], // 1460: 1500 less the outer 40
        &cut(ip_packet(&full6), 1232),
    );

    let udp4 = inbound(
        PacketSpec::udp(ip(CLIENT4), ip(GUE4), 41002, 80).payload(b"hello through gue".to_vec()),
    )
    .build();
    let syn6_gue = inbound(PacketSpec::tcp(ip(CLIENT6), ip(GUE6), 41003, 80).flags(SYN)).build();
    // An odd-length payload: the derived UDP checksum must pad as a full
    // sum would.
    let data6_gue = inbound(
        PacketSpec::tcp(ip(CLIENT6), ip(GUE6), 41003, 80)
            .flags(ACK)
            .seq(1)
            .payload_len(333),
    )
    .build();
    // 1500 less GUE's 48 bytes is 1452: a 1453-byte packet is refused.
    let big6_gue = inbound(
        PacketSpec::tcp(ip(CLIENT6), ip(GUE6), 41003, 80)
            .flags(ACK)
            .seq(334)
            .payload_len(1453 - 60),
    )
    .build();
    let too_big6_gue = icmp6(
        (LIMPET_MAC, CLIENT_MAC),
        GUE6,
        CLIENT6,
        64,
        PACKET_TOO_BIG6,
        0,
        [0, 0, 0x05, 0xac], // 1452
        &cut(ip_packet(&big6_gue), 1232),
    );

    // The endpoint's reply (VIP -> client, sent by the endpoint itself)
    // met a smaller link on the client's side: the router's error is
    // addressed to the service address, so it reaches limpet, which
    // passes it to the connection's endpoint, wrapped like the connection.
    let reply4 = PacketSpec::tcp(ip(IPIP4), ip(CLIENT4), 80, 41000)
        .flags(ACK)
        .seq(1)
        .payload_len(1400)
        .build();
    let error4 = icmp4(
        (backend_mac(ip(CLIENT_ROUTER4)), LIMPET_MAC),
        CLIENT_ROUTER4,
        IPIP4,
        63,
        DEST_UNREACHABLE4,
        4,
        [0, 0, 0x05, 0x00],
        &cut(ip_packet(&reply4), 548),
    );
    // A router on the tunnel's path (behind limpet, a 1400-byte link)
    // cannot forward an outer packet and tells its source, limpet: the
    // client hears it from the service address, with 1400 less the
    // tunnel's overhead, quoting its own packet.
    let outer_fits4 = ip_packet(&wrapped(&ip_packet(&fits4), BE4, false, 0));
    let path4 = icmp4(
        (backend_mac(ip(ROUTER4)), LIMPET_MAC),
        ROUTER4,
        LIMPET4,
        64,
        DEST_UNREACHABLE4,
        4,
        [0, 0, 0x05, 0x78], // 1400
        &cut(outer_fits4.clone(), 548),
    );
    let path4_out = icmp4(
        (LIMPET_MAC, CLIENT_MAC),
        IPIP4,
        CLIENT4,
        64,
        DEST_UNREACHABLE4,
        4,
        [0, 0, 0x05, 0x64], // 1380
        &cut(ip_packet(&fits4), 548 - 20),
    );
    // The same about a connection limpet does not hold: dropped.
    let mut stranger = outer_fits4;
    stranger[20 + 20..20 + 22].copy_from_slice(&41999u16.to_be_bytes());
    let stranger4 = icmp4(
        (backend_mac(ip(ROUTER4)), LIMPET_MAC),
        ROUTER4,
        LIMPET4,
        64,
        DEST_UNREACHABLE4,
        4,
        [0, 0, 0x05, 0x78],
        &cut(stranger, 548),
    );
    let data6_hash = flow_hash(&ip_packet(&data6_gue));
    let outer6 = ip_packet(&wrapped(&ip_packet(&data6_gue), BE6, true, data6_hash));
    let path6 = icmp6(
        (backend_mac(ip(ROUTER6)), LIMPET_MAC),
        ROUTER6,
        LIMPET6,
        64,
        PACKET_TOO_BIG6,
        0,
        [0, 0, 0x05, 0x78], // 1400
        &cut(outer6, 1232),
    );
    let path6_out = icmp6(
        (LIMPET_MAC, CLIENT_MAC),
        GUE6,
        CLIENT6,
        64,
        PACKET_TOO_BIG6,
        0,
        [0, 0, 0x05, 0x48], // 1352: less GUE's 48
        &ip_packet(&data6_gue),
    );
    let error4_inner = ip_packet(&error4);
    let syn_hash = flow_hash(&ip_packet(&syn4));
    let error4_out = wrapped(&error4_inner, BE4, false, syn_hash);

    vec![
        row(
            "ipip v4: SYN wrapped to the endpoint, DSCP/ECN and TTL carried, padding left out",
            syn4,
            BE4,
            false,
        ),
        row(
            "ipip v4: the connection's data the same way",
            data4,
            BE4,
            false,
        ),
        row(
            "ipip v4: 1480 bytes of IP fit a 1500-byte path once wrapped",
            fits4.clone(),
            BE4,
            false,
        ),
        Fixture {
            description: "ipip v4: a router's fragmentation needed (1400) about an outer packet: to the client, 1380, quoting its packet",
            input: path4,
            action: Action::Forward,
            output: Some(path4_out),
        },
        Fixture {
            description: "ipip v4: the same quoting a connection limpet does not hold: dropped",
            input: stranger4,
            action: Action::Drop(DropReason::IcmpNoConnection),
            output: None,
        },
        Fixture {
            description: "ipip v4: 1500 bytes of IP, DF: fragmentation needed (1480) to the client, from the service",
            input: full4,
            action: Action::Forward,
            output: Some(frag_needed),
        },
        Fixture {
            description: "ipip v4: too big without DF: dropped, counted",
            input: no_df4,
            action: Action::Drop(DropReason::TunnelTooBig),
            output: None,
        },
        Fixture {
            description: "ipip v4: a router's error about the endpoint's reply goes to the endpoint, wrapped",
            input: error4,
            action: Action::Forward,
            output: Some(error4_out),
        },
        row(
            "ipip v6: SYN wrapped in IPv6 (next header 41), traffic class and hop limit carried",
            syn6,
            BE6,
            false,
        ),
        Fixture {
            description: "ipip v6: too big once wrapped: packet too big (1460) to the client",
            input: full6,
            action: Action::Forward,
            output: Some(too_big6),
        },
        row(
            "gue v4: UDP in UDP to 6080, zero outer checksum",
            udp4,
            BE4,
            true,
        ),
        row(
            "gue v6: SYN in UDP, outer checksum over the whole payload",
            syn6_gue,
            BE6,
            true,
        ),
        row(
            "gue v6: odd-length data, outer checksum still exact",
            data6_gue.clone(),
            BE6,
            true,
        ),
        Fixture {
            description: "gue v6: a router's packet too big (1400) about an outer packet: to the client, 1352",
            input: path6,
            action: Action::Forward,
            output: Some(path6_out),
        },
        Fixture {
            description: "gue v6: too big once wrapped (48 bytes): packet too big (1452)",
            input: big6_gue,
            action: Action::Forward,
            output: Some(too_big6_gue),
        },
    ]
}

#[test]
fn fixture_table() {
    let mut h = harness(tunnel_config());
    run_rows(fixtures(), |f| h.send(&f.input));
    let stats = h.worker.stats();
    assert_eq!(stats.icmp.too_big, 3);
    assert_eq!(stats.tunnelled, 8);
    assert_eq!(stats.dropped(DropReason::TunnelTooBig), 1);
}

#[test]
fn a_family_without_a_tunnel_source_is_refused_and_counted() {
    let mut h = harness(TunnelConfig {
        source_v6: None,
        ..tunnel_config()
    });
    let syn6 = inbound(PacketSpec::tcp(ip(CLIENT6), ip(IPIP6), 41010, 80).flags(SYN)).build();
    assert_eq!(
        h.send(&syn6),
        (Action::Drop(DropReason::NoTunnelSource), None)
    );
    let syn4 = inbound(PacketSpec::tcp(ip(CLIENT4), ip(IPIP4), 41010, 80).flags(SYN)).build();
    assert_eq!(h.send(&syn4).0, Action::Forward);
}

#[test]
fn too_big_answers_are_rate_limited() {
    let mut h = Harness::with_config(specs(), |c| {
        c.tunnel = tunnel_config();
        c.icmp.reject_rate = 2;
    });
    let syn = inbound(PacketSpec::tcp(ip(CLIENT4), ip(IPIP4), 41020, 80).flags(SYN)).build();
    assert_eq!(h.send(&syn).0, Action::Forward);
    let big = inbound(
        PacketSpec::tcp(ip(CLIENT4), ip(IPIP4), 41020, 80)
            .flags(ACK)
            .payload_len(1460),
    )
    .build();
    let actions: Vec<Action> = (0..4).map(|_| h.send(&big).0).collect();
    assert_eq!(
        actions,
        [
            Action::Forward,
            Action::Forward,
            Action::Drop(DropReason::TunnelTooBig),
            Action::Drop(DropReason::TunnelTooBig)
        ]
    );
}

/// The outer source of one frame limpet sent.
fn outer_source(frame: &[u8]) -> IpAddr {
    let ip = &frame[14..];
    if ip[0] >> 4 == 4 {
        IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap())
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap())
    }
}

#[test]
fn outer_sources_spread_over_the_prefix_and_stay_put_per_flow() {
    let mut h = harness(TunnelConfig {
        source_v4: Some((Ipv4Addr::new(198, 18, 128, 0), 20)),
        source_v6: Some(("2001:db8:7e::".parse().unwrap(), 64)),
        ..tunnel_config()
    });
    for vip in [IPIP4, GUE6] {
        let mut sources = std::collections::BTreeSet::new();
        for n in 0..200u16 {
            let client = if vip.contains(':') {
                IpAddr::V6(Ipv6Addr::from(0x2001_0db8_00c1_u128 << 80 | u128::from(n)))
            } else {
                IpAddr::V4(Ipv4Addr::from(0xc612_0000 | u32::from(n)))
            };
            let syn = inbound(PacketSpec::tcp(client, ip(vip), 42000, 80).flags(SYN)).build();
            let ack = inbound(PacketSpec::tcp(client, ip(vip), 42000, 80).flags(ACK)).build();
            let (a, first) = h.send(&syn);
            assert_eq!(a, Action::Forward);
            let (_, second) = h.send(&ack);
            let (first, second) = (
                outer_source(&first.unwrap()),
                outer_source(&second.unwrap()),
            );
            assert_eq!(first, second, "one flow, two outer sources");
            match first {
                IpAddr::V4(a) => assert_eq!(a.to_bits() >> 12, 0xc612_8000 >> 12, "{a}"),
                IpAddr::V6(a) => assert_eq!(a.segments()[..4], [0x2001, 0xdb8, 0x7e, 0], "{a}"),
            }
            sources.insert(first);
        }
        assert!(
            sources.len() > 150,
            "{vip}: 200 flows, {} outer sources",
            sources.len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the inner packet (family, protocol, size, traffic class),
    /// the wrapped frame's outer headers check with etherparse and carry
    /// the inner packet unchanged.
    #[test]
    fn wrapped_packets_verify(
        v6 in any::<bool>(),
        gue in any::<bool>(),
        udp in any::<bool>(),
        sport in 1024u16..,
        len in 0usize..1380,
        tos in any::<u8>(),
    ) {
        let vip = match (v6, gue) {
            (false, false) => IPIP4,
            (true, false) => IPIP6,
            (false, true) => GUE4,
            (true, true) => GUE6,
        };
        let client = if v6 { CLIENT6 } else { CLIENT4 };
        let spec = if udp {
            PacketSpec::udp(ip(client), ip(vip), sport, 80)
        } else {
            PacketSpec::tcp(ip(client), ip(vip), sport, 80).flags(SYN)
        };
        let frame = inbound(spec.payload_len(len)).build();
        let frame = if v6 { with_class6(frame, tos) } else { with_tos4(frame, tos) };
        let mut h = harness(tunnel_config());
        let (action, out) = h.send(&frame);
        prop_assert_eq!(action, Action::Forward);
        let out = out.unwrap();
        let inner = ip_packet(&frame);
        let p = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
        let payload: &[u8] = match p.net.unwrap() {
            etherparse::NetSlice::Ipv4(o) => {
                let h = o.header();
                prop_assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
                prop_assert_eq!(out[14 + 1], tos);
                o.payload().payload
            }
            etherparse::NetSlice::Ipv6(o) => {
                let h = o.header();
                prop_assert_eq!(h.traffic_class(), tos);
                o.payload().payload
            }
            etherparse::NetSlice::Arp(_) => panic!("not IP"),
        };
        if gue {
            let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
                panic!("no outer UDP");
            };
            prop_assert_eq!(u.destination_port(), GUE_PORT);
            if v6 {
                let ip6 = etherparse::Ipv6HeaderSlice::from_slice(&out[14..]).unwrap().to_header();
                let want = UdpHeader::with_ipv6_checksum(u.source_port(), GUE_PORT, &ip6, u.payload()).unwrap();
                prop_assert_eq!(u.checksum(), want.checksum);
            } else {
                prop_assert_eq!(u.checksum(), 0);
            }
            prop_assert_eq!(u.payload(), &inner[..]);
        } else {
            prop_assert_eq!(payload, &inner[..]);
        }
    }
}
