//! Property tests of ICMP error translation over the real pipeline: for
//! any client, protocol, family, segment size and quote length, an error
//! about a packet limpet sent to the backend reaches the client quoting
//! exactly the packet the client sent (checksums as computed from scratch),
//! and an error about a reply reaches the backend quoting exactly the reply
//! it sent. Expected frames are built independently: packets by pktgen,
//! ICMP around them by etherparse.

mod common;

use common::icmp::{check_icmp, ip_packet};
use common::{CLIENT_MAC, Harness, LIMPET_MAC, backend, backend_mac, service};
use limpet_dataplane::pipeline::Action;
use limpet_dataplane::snapshot::{Affinity, ForwardMode};
use limpet_pktgen::{ACK, PacketSpec, SYN};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ROUTER_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 1];

struct Case {
    v6: bool,
    udp: bool,
    client: IpAddr,
    vip: IpAddr,
    be: IpAddr,
    router: IpAddr,
    port: u16,
}

fn case(v6: bool, udp: bool, host: u16, port: u16) -> Case {
    let [hi, lo] = host.to_be_bytes();
    if v6 {
        Case {
            v6,
            udp,
            client: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, 0, 0, 0, host)),
            vip: "2001:db8::10".parse().unwrap(),
            be: "2001:db8:be::7".parse().unwrap(),
            router: "2001:db8:be::fe".parse().unwrap(),
            port,
        }
    } else {
        Case {
            v6,
            udp,
            client: IpAddr::V4(Ipv4Addr::new(198, 18, hi, lo)),
            vip: "192.0.2.10".parse().unwrap(),
            be: "203.0.113.7".parse().unwrap(),
            router: "203.0.113.254".parse().unwrap(),
            port,
        }
    }
}

fn packet(c: &Case, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> PacketSpec {
    if c.udp {
        PacketSpec::udp(src, dst, sport, dport)
    } else {
        PacketSpec::tcp(src, dst, sport, dport).flags(ACK)
    }
}

/// An ICMP error of `kind`/`code`/`rest` from `src` to `dst` quoting `quote`.
fn error(
    c: &Case,
    macs: ([u8; 6], [u8; 6]),
    src: IpAddr,
    dst: IpAddr,
    (kind, code, rest): (u8, u8, [u8; 4]),
    ttl: u8,
    quote: &[u8],
) -> Vec<u8> {
    let eth = etherparse::PacketBuilder::ethernet2(macs.0, macs.1);
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), ttl)
            .icmpv4_raw(kind, code, rest)
            .write(&mut out, quote)
            .unwrap(),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), ttl)
            .icmpv6_raw(kind, code, rest)
            .write(&mut out, quote)
            .unwrap(),
        _ => unreachable!("{}", c.v6),
    }
    out
}

fn run(c: &Case, payload: usize, cut: usize, ttl: u8) -> Result<(), TestCaseError> {
    let proto = if c.udp { 17 } else { 6 };
    let vip = c.vip.to_string();
    let mut h = Harness::new(vec![service(
        1,
        &vip,
        proto,
        Affinity::client_ip(10800),
        ForwardMode::Nat,
        vec![backend(&c.be.to_string())],
    )]);
    let bmac = backend_mac(c.be);
    // Open the connection, then a segment of `payload` bytes.
    let open = if c.udp {
        PacketSpec::udp(c.client, c.vip, c.port, 80)
    } else {
        PacketSpec::tcp(c.client, c.vip, c.port, 80).flags(SYN)
    };
    let open = open.src_mac(CLIENT_MAC).dst_mac(LIMPET_MAC);
    prop_assert_eq!(h.send(&open.build()).0, Action::Forward);
    let data = packet(c, c.client, c.vip, c.port, 80)
        .payload_len(payload)
        .src_mac(CLIENT_MAC)
        .dst_mac(LIMPET_MAC);
    let (action, sent) = h.send(&data.build());
    prop_assert_eq!(action, Action::Forward);
    let sent = ip_packet(&sent.unwrap());
    let limit = if c.v6 { 1232 } else { 548 };
    let n = cut.clamp(if c.v6 { 48 } else { 28 }, limit).min(sent.len());
    let too_big = if c.v6 {
        (2, 0, [0, 0, 0x05, 0x00])
    } else {
        (3, 4, [0, 0, 0x05, 0x00])
    };
    // From the router behind limpet to the client, about the segment.
    let input = error(
        c,
        (ROUTER_MAC, LIMPET_MAC),
        c.router,
        c.client,
        too_big,
        ttl,
        &sent[..n],
    );
    let (action, out) = h.send(&input);
    prop_assert_eq!(action, Action::Forward);
    let as_sent = ip_packet(&data.clone().ttl(data.ttl - 1).build());
    let expected = error(
        c,
        (LIMPET_MAC, CLIENT_MAC),
        c.vip,
        c.client,
        too_big,
        ttl - 1,
        &half_checksum_kept(c, &as_sent[..n], &sent[..n]),
    );
    let out = out.unwrap();
    prop_assert_eq!(&out, &expected);
    prop_assert!(check_icmp(&out));

    // From the client's side to the service address, about a reply.
    let reply = packet(c, c.be, c.client, 9376, c.port).payload_len(payload / 2);
    let translated = ip_packet(&reply.clone().src_ip(c.vip).src_port(80).build());
    let n = cut
        .clamp(if c.v6 { 48 } else { 28 }, limit)
        .min(translated.len());
    let exceeded = if c.v6 {
        (3, 0, [0; 4])
    } else {
        (11, 0, [0; 4])
    };
    let input = error(
        c,
        (CLIENT_MAC, LIMPET_MAC),
        c.client,
        c.vip,
        exceeded,
        ttl,
        &translated[..n],
    );
    let (action, out) = h.send(&input);
    prop_assert_eq!(action, Action::Forward);
    let from_backend = ip_packet(&reply.build());
    let expected = error(
        c,
        (LIMPET_MAC, bmac),
        c.client,
        c.be,
        exceeded,
        ttl - 1,
        &half_checksum_kept(c, &from_backend[..n], &translated[..n]),
    );
    let out = out.unwrap();
    prop_assert_eq!(&out, &expected);
    prop_assert!(check_icmp(&out));
    let s = h.worker.stats();
    prop_assert_eq!((s.icmp.errors_to_client, s.icmp.errors_to_backend), (1, 1));
    Ok(())
}

/// `quote` (the packet as its sender saw it), except that a quote cut in
/// the middle of the TCP checksum keeps the half it has as `received` had
/// it: with the other half unknown it cannot be updated (Linux's NAT
/// leaves a checksum it does not hold whole alone too).
fn half_checksum_kept(c: &Case, quote: &[u8], received: &[u8]) -> Vec<u8> {
    let mut q = quote.to_vec();
    let l4 = if c.v6 { 40 } else { 20 };
    if !c.udp && q.len() == l4 + 17 {
        q[l4 + 16] = received[l4 + 16];
    }
    q
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn errors_follow_their_connection_both_ways(
        v6 in any::<bool>(),
        udp in any::<bool>(),
        host in 1u16..0xffff,
        port in 1024u16..,
        payload in 0usize..1400,
        cut in 0usize..1500,
        ttl in 2u8..=255,
    ) {
        run(&case(v6, udp, host, port), payload, cut, ttl)?;
    }
}
