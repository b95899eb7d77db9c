//! Source NAT through the real pipeline: `fullnat` service ports, and
//! `nat` clients their endpoint would answer directly (hairpin: a backend
//! reaching its own Service, or a neighbour on the backends' subnet).
//! Fixture rows (IPv4 and IPv6, both directions, ICMP errors both ways)
//! with expected frames built from scratch by pktgen and etherparse, then
//! properties of port allocation over many connections and workers.

mod common;

use common::fixtures::{BE4, BE6, CLIENT4, CLIENT6, Fixture, inbound, ip, run_rows};
use common::icmp::{
    CLIENT_ROUTER6, DEST_UNREACHABLE4, MTU_1280, PACKET_TOO_BIG6, ROUTER4, ROUTER6, cut, icmp4,
    icmp6, ip_packet,
};
use common::{CLIENT_MAC, Harness, LIMPET_MAC, LIMPET4, LIMPET6, backend, backend_mac, service};
use limpet_dataplane::pipeline::Action;
use limpet_dataplane::snapshot::{Affinity, ForwardMode, ServicePortSpec};
use limpet_dataplane::snat::{PROBES, SnatConfig, SnatPorts, port_owner};
use limpet_dataplane::stats::DropReason;
use limpet_pktgen::{ACK, PacketSpec, SYN};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

const FULL4: &str = "192.0.2.20";
const FULL6: &str = "2001:db8::20";
const HAIR4: &str = "192.0.2.21";
const HAIR6: &str = "2001:db8::21";
/// The hairpin service's endpoint, and (IPv4) a neighbour of it on its
/// subnet.
const HAIR_BE4: &str = "203.0.113.8";
const HAIR_BE6: &str = "2001:db8:be::8";
const NEIGHBOUR4: &str = "203.0.113.9";
/// The one source port the fixture worker owns, so the rows know it.
const PORT: u16 = 61000;

fn specs() -> Vec<ServicePortSpec> {
    let sticky = Affinity::client_ip(10800);
    vec![
        service(
            1,
            FULL4,
            6,
            sticky,
            ForwardMode::FullNat,
            vec![backend(BE4)],
        ),
        service(
            2,
            FULL6,
            17,
            Affinity::None,
            ForwardMode::FullNat,
            vec![backend(BE6)],
        ),
        service(
            3,
            HAIR4,
            6,
            sticky,
            ForwardMode::Nat,
            vec![backend(HAIR_BE4)],
        ),
        service(
            4,
            HAIR6,
            6,
            sticky,
            ForwardMode::Nat,
            vec![backend(HAIR_BE6)],
        ),
    ]
}

/// limpet's addresses with their subnets, as `--address` gives them.
fn subnets() -> Vec<(IpAddr, u8)> {
    vec![(ip(LIMPET4), 24), (ip(LIMPET6), 64)]
}

fn harness(ports: SnatPorts) -> Harness {
    Harness::with_config(specs(), |c| {
        c.snat = SnatConfig {
            ports,
            subnets: subnets(),
            fullnat: Vec::new(),
        };
    })
}

fn one_port() -> SnatPorts {
    SnatPorts {
        first: PORT,
        last: PORT,
        ..SnatPorts::default()
    }
}

/// `spec` as limpet sends it to `be:9376` from `src:PORT`.
fn to_backend(spec: PacketSpec, src: &str, be: &str) -> PacketSpec {
    let ttl = spec.ttl - 1;
    spec.src_mac(LIMPET_MAC)
        .dst_mac(backend_mac(ip(be)))
        .src_ip(ip(src))
        .src_port(PORT)
        .dst_ip(ip(be))
        .dst_port(9376)
        .ttl(ttl)
}

/// A backend's packet to limpet's `PORT` as it arrives.
fn from_backend(spec: PacketSpec, be: &str) -> PacketSpec {
    spec.src_mac(backend_mac(ip(be))).dst_mac(LIMPET_MAC)
}

/// `spec` (a backend's reply) as limpet sends it back to `client:cport`
/// from `vip:80`, through `mac`.
fn to_client(spec: PacketSpec, vip: &str, client: &str, cport: u16, mac: [u8; 6]) -> PacketSpec {
    let ttl = spec.ttl - 1;
    spec.src_mac(LIMPET_MAC)
        .dst_mac(mac)
        .src_ip(ip(vip))
        .src_port(80)
        .dst_ip(ip(client))
        .dst_port(cport)
        .ttl(ttl)
}

#[allow(clippy::too_many_lines)] // one table, read top to bottom
fn rows() -> Vec<Fixture> {
    let syn4 = inbound(PacketSpec::tcp(ip(CLIENT4), ip(FULL4), 40000, 80).flags(SYN));
    let reply4 = from_backend(
        PacketSpec::tcp(ip(BE4), ip(LIMPET4), 9376, PORT).flags(SYN | ACK),
        BE4,
    );
    let udp6 =
        inbound(PacketSpec::udp(ip(CLIENT6), ip(FULL6), 40001, 80).payload(b"hello".to_vec()));
    let reply6 = from_backend(
        PacketSpec::udp(ip(BE6), ip(LIMPET6), 9376, PORT).payload(b"world".to_vec()),
        BE6,
    );
    let second4 = inbound(PacketSpec::tcp(ip("198.18.0.2"), ip(FULL4), 40002, 80).flags(SYN));
    let far4 = inbound(PacketSpec::tcp(ip("198.18.0.3"), ip(HAIR4), 40003, 80).flags(SYN));
    // A neighbour of the endpoint on its subnet, and the endpoint itself,
    // each reaching the Service: both arrive from the backends' side.
    let neighbour4 = from_backend(
        PacketSpec::tcp(ip(NEIGHBOUR4), ip(HAIR4), 40004, 80).flags(SYN),
        NEIGHBOUR4,
    );
    let neighbour_reply4 = from_backend(
        PacketSpec::tcp(ip(HAIR_BE4), ip(LIMPET4), 9376, PORT).flags(SYN | ACK),
        HAIR_BE4,
    );
    let itself6 = from_backend(
        PacketSpec::tcp(ip(HAIR_BE6), ip(HAIR6), 40005, 80).flags(SYN),
        HAIR_BE6,
    );
    let itself_reply6 = from_backend(
        PacketSpec::tcp(ip(HAIR_BE6), ip(LIMPET6), 9376, PORT).flags(SYN | ACK),
        HAIR_BE6,
    );

    // A full-sized segment of the first connection, as the client sent it
    // and as limpet sent it on: what a 1280-byte link behind limpet cannot
    // carry. The router there says so to limpet's source address.
    let big4 = inbound(
        PacketSpec::tcp(ip(CLIENT4), ip(FULL4), 40000, 80)
            .flags(ACK)
            .seq(1)
            .payload_len(1400),
    );
    let big4_sent = to_backend(big4.clone(), LIMPET4, BE4);
    let router4 = backend_mac(ip(ROUTER4));
    let too_big4 = icmp4(
        (router4, LIMPET_MAC),
        ROUTER4,
        LIMPET4,
        64,
        DEST_UNREACHABLE4,
        4,
        MTU_1280,
        &cut(ip_packet(&big4_sent.build()), 28),
    );
    let too_big4_out = icmp4(
        (LIMPET_MAC, CLIENT_MAC),
        FULL4,
        CLIENT4,
        63,
        DEST_UNREACHABLE4,
        4,
        MTU_1280,
        // The quote keeps the hop count limpet gave it.
        &cut(ip_packet(&big4.clone().ttl(big4.ttl - 1).build()), 28),
    );
    // A router on the clients' side cannot deliver the backend's UDP reply
    // (as limpet sent it): the backend learns it about its own datagram.
    let reply6_sent = to_client(reply6.clone(), FULL6, CLIENT6, 40001, CLIENT_MAC);
    let client_router6 = backend_mac(ip(CLIENT_ROUTER6));
    let unreachable6 = icmp6(
        (client_router6, LIMPET_MAC),
        CLIENT_ROUTER6,
        FULL6,
        64,
        1,
        3,
        [0; 4],
        &ip_packet(&reply6_sent.build()),
    );
    let unreachable6_out = icmp6(
        (LIMPET_MAC, backend_mac(ip(BE6))),
        LIMPET6,
        BE6,
        63,
        1,
        3,
        [0; 4],
        &ip_packet(&reply6.clone().ttl(reply6.ttl - 1).build()),
    );
    // The IPv6 twin of the first: a packet too big about the UDP datagram
    // limpet sent the backend.
    let udp6_sent = to_backend(udp6.clone(), LIMPET6, BE6);
    let router6 = backend_mac(ip(ROUTER6));
    let too_big6 = icmp6(
        (router6, LIMPET_MAC),
        ROUTER6,
        LIMPET6,
        64,
        PACKET_TOO_BIG6,
        0,
        MTU_1280,
        &ip_packet(&udp6_sent.build()),
    );
    let too_big6_out = icmp6(
        (LIMPET_MAC, CLIENT_MAC),
        FULL6,
        CLIENT6,
        63,
        PACKET_TOO_BIG6,
        0,
        MTU_1280,
        &ip_packet(&udp6.clone().ttl(udp6.ttl - 1).build()),
    );

    vec![
        Fixture {
            description: "fullnat IPv4 TCP SYN: source becomes limpet's address on the backend's subnet and a port of the worker's",
            input: syn4.build(),
            action: Action::Forward,
            output: Some(to_backend(syn4.clone(), LIMPET4, BE4).build()),
        },
        Fixture {
            description: "fullnat IPv4 reply to limpet's port goes back to the client from the service address",
            input: reply4.build(),
            action: Action::Forward,
            output: Some(to_client(reply4.clone(), FULL4, CLIENT4, 40000, CLIENT_MAC).build()),
        },
        Fixture {
            description: "fullnat IPv6 UDP",
            input: udp6.build(),
            action: Action::Forward,
            output: Some(to_backend(udp6.clone(), LIMPET6, BE6).build()),
        },
        Fixture {
            description: "fullnat IPv6 UDP reply",
            input: reply6.build(),
            action: Action::Forward,
            output: Some(reply6_sent.build()),
        },
        Fixture {
            description: "fullnat: the only port already carries this backend's replies, so a second client is refused and counted",
            input: second4.build(),
            action: Action::Drop(DropReason::SnatPortsExhausted),
            output: None,
        },
        Fixture {
            description: "fragmentation needed from a router behind limpet, about a fullnat packet: translated outside and inside, to the client",
            input: too_big4,
            action: Action::Forward,
            output: Some(too_big4_out),
        },
        Fixture {
            description: "packet too big about a fullnat IPv6 datagram: to the client",
            input: too_big6,
            action: Action::Forward,
            output: Some(too_big6_out),
        },
        Fixture {
            description: "unreachable about a fullnat reply, from the clients' side: to the backend, about its own datagram, from limpet's source address",
            input: unreachable6,
            action: Action::Forward,
            output: Some(unreachable6_out),
        },
        Fixture {
            description: "nat: a client off the backends' subnet keeps its own address",
            input: far4.build(),
            action: Action::Forward,
            output: Some({
                let ttl = far4.ttl - 1;
                far4.clone()
                    .src_mac(LIMPET_MAC)
                    .dst_mac(backend_mac(ip(HAIR_BE4)))
                    .dst_ip(ip(HAIR_BE4))
                    .dst_port(9376)
                    .ttl(ttl)
                    .build()
            }),
        },
        Fixture {
            description: "nat: a neighbour of the endpoint on its subnet is source-translated, or the endpoint would answer it directly",
            input: neighbour4.build(),
            action: Action::Forward,
            output: Some(to_backend(neighbour4.clone(), LIMPET4, HAIR_BE4).build()),
        },
        Fixture {
            description: "nat hairpin: the endpoint's reply comes back to limpet and goes to the neighbour from the service address",
            input: neighbour_reply4.build(),
            action: Action::Forward,
            output: Some(
                to_client(
                    neighbour_reply4.clone(),
                    HAIR4,
                    NEIGHBOUR4,
                    40004,
                    backend_mac(ip(NEIGHBOUR4)),
                )
                .build(),
            ),
        },
        Fixture {
            description: "nat hairpin IPv6: the endpoint reaching its own Service is source-translated",
            input: itself6.build(),
            action: Action::Forward,
            output: Some(to_backend(itself6.clone(), LIMPET6, HAIR_BE6).build()),
        },
        Fixture {
            description: "nat hairpin IPv6: and its reply to itself comes back through limpet",
            input: itself_reply6.build(),
            action: Action::Forward,
            output: Some(
                to_client(
                    itself_reply6.clone(),
                    HAIR6,
                    HAIR_BE6,
                    40005,
                    backend_mac(ip(HAIR_BE6)),
                )
                .build(),
            ),
        },
    ]
}

#[test]
fn snat_fixture_table() {
    let mut h = harness(one_port());
    run_rows(rows(), |f| h.send(&f.input));
    let s = h.worker.stats();
    assert_eq!(s.dropped(DropReason::SnatPortsExhausted), 1);
    assert_eq!((s.icmp.errors_to_client, s.icmp.errors_to_backend), (2, 1));
    // The client's affinity entry is its own, not limpet's address.
    let clients: BTreeSet<IpAddr> = h
        .worker
        .affinity_v4()
        .iter()
        .map(|(e, _)| IpAddr::V4(e.key.client))
        .collect();
    assert!(clients.contains(&ip(CLIENT4)), "{clients:?}");
    assert!(!clients.contains(&ip(LIMPET4)), "{clients:?}");
}

/// Under `fullnat` with no address of the family, a connection is refused
/// and counted rather than sent with a source the backend cannot answer.
#[test]
fn fullnat_without_an_address_of_the_family_is_refused() {
    let mut h = Harness::with_config(specs(), |c| {
        c.snat.subnets = vec![(ip(LIMPET4), 24)];
    });
    let udp6 = inbound(PacketSpec::udp(ip(CLIENT6), ip(FULL6), 1, 80)).build();
    assert_eq!(
        h.send(&udp6),
        (Action::Drop(DropReason::NoSnatAddress), None)
    );
    // `--snat-address` names the source outright.
    let mut h = Harness::with_config(specs(), |c| {
        c.snat.fullnat = vec![ip("2001:db8:5a::1")];
    });
    let (action, out) = h.send(&udp6);
    assert_eq!(action, Action::Forward);
    let out = out.unwrap();
    let p = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
    let Some(etherparse::NetSlice::Ipv6(v6)) = p.net else {
        panic!("not IPv6")
    };
    assert_eq!(IpAddr::V6(v6.header().source_addr()), ip("2001:db8:5a::1"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Many clients through `fullnat` on one worker of several: every
    /// connection gets a port that worker owns and no two share a reply
    /// tuple; once the worker's ports run out, connections are refused and
    /// counted, never given a taken port; and every reply finds its way
    /// back to its own client.
    #[test]
    fn ports_are_owned_unique_and_exhaustion_is_counted(
        worker in 0u16..4,
        workers in 1u16..=4,
        width in 8u16..64,
        clients in 1usize..80,
    ) {
        let worker = worker % workers;
        let ports = SnatPorts { first: 20000, last: 20000 + width - 1, worker, workers };
        let owned = ports.len() as usize;
        let mut h = harness(ports);
        let mut given = Vec::new();
        let mut refused = 0;
        for c in 0..clients {
            let client = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 1, c as u8));
            let syn = inbound(PacketSpec::tcp(client, ip(FULL4), 1000 + c as u16, 80).flags(SYN)).build();
            match h.send(&syn) {
                (Action::Forward, Some(out)) => given.push((client, 1000 + c as u16, common::source(&out))),
                (Action::Drop(DropReason::SnatPortsExhausted), None) => refused += 1,
                other => prop_assert!(false, "unexpected {other:?}"),
            }
        }
        let distinct: BTreeSet<SocketAddr> = given.iter().map(|g| g.2).collect();
        prop_assert_eq!(distinct.len(), given.len());
        for (_, _, src) in &given {
            prop_assert_eq!(src.ip(), ip(LIMPET4));
            prop_assert_eq!(port_owner(src.port(), usize::from(workers)), usize::from(worker));
        }
        // The probe window may give up a little before the last port, but
        // never while fewer connections than it holds are placed.
        prop_assert!(given.len() <= owned);
        prop_assert!(given.len() >= owned.min(clients).min(PROBES as usize), "{} of {owned}", given.len());
        prop_assert_eq!(h.worker.stats().dropped(DropReason::SnatPortsExhausted), refused);
        for (client, cport, src) in given {
            let reply = from_backend(
                PacketSpec::tcp(ip(BE4), src.ip(), 9376, src.port()).flags(SYN | ACK),
                BE4,
            ).build();
            let (action, out) = h.send(&reply);
            prop_assert_eq!(action, Action::Forward);
            let out = out.unwrap();
            prop_assert_eq!(common::destination(&out), SocketAddr::new(client, cport));
        }
    }
}
