use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::oracle::check;
use crate::{
    ACK, CLIENT_ISN, CLIENT_PORT_COUNT, ClientSet, FIRST_CLIENT_PORT, Family, Flow, FlowSet, L4,
    NewConnections, Proto, SERVER_ISN, SYN, TrafficError, Vip,
};

fn in_v4_range(a: Ipv4Addr) -> bool {
    a.to_bits() >> 17 == Ipv4Addr::new(198, 18, 0, 0).to_bits() >> 17
}

fn in_v6_doc_range(a: Ipv6Addr) -> bool {
    a.segments()[..2] == [0x2001, 0x0db8]
}

#[test]
fn v4_clients_fill_the_benchmark_range_without_repeats() {
    let set = ClientSet::v4(ClientSet::V4_CAPACITY).unwrap();
    assert_eq!(set.len(), 131_070);
    let mut seen = HashSet::with_capacity(set.len());
    for (i, a) in set.iter().enumerate() {
        let IpAddr::V4(v4) = a else { panic!("{a}") };
        assert!(in_v4_range(v4), "{v4}");
        assert_ne!(v4, Ipv4Addr::new(198, 18, 0, 0), "network address");
        assert_ne!(v4, Ipv4Addr::new(198, 19, 255, 255), "broadcast address");
        assert!(seen.insert(v4), "{v4} twice");
        assert_eq!(set.index_of(a), Some(i));
    }
    assert_eq!(set.client(0), IpAddr::from(Ipv4Addr::new(198, 18, 0, 1)));
    assert_eq!(set.client(255), IpAddr::from(Ipv4Addr::new(198, 18, 1, 0)));
    assert_eq!(
        set.client(131_069),
        IpAddr::from(Ipv4Addr::new(198, 19, 255, 254))
    );
}

#[test]
fn too_many_v4_clients_is_an_error() {
    assert_eq!(
        ClientSet::v4(131_071),
        Err(TrafficError::TooManyClients {
            requested: 131_071,
            capacity: 131_070
        })
    );
    assert!(ClientSet::new(Family::V4, 1 << 20).is_err());
    assert!(ClientSet::new(Family::V6, 1 << 20).is_ok());
}

#[test]
fn v6_clients_are_distinct_and_in_the_documentation_range() {
    let set = ClientSet::v6(200_000);
    let mut seen = HashSet::new();
    for (i, a) in set.iter().enumerate() {
        let IpAddr::V6(v6) = a else { panic!("{a}") };
        assert!(in_v6_doc_range(v6), "{v6}");
        assert_eq!(v6.segments()[..3], [0x2001, 0xdb8, 0xc1]);
        assert!(seen.insert(v6));
        assert_eq!(set.index_of(a), Some(i));
    }
    assert_eq!(set.client(0), "2001:db8:c1::1".parse::<IpAddr>().unwrap());
    // Far past any usable count, still inside the /48.
    let huge = ClientSet::v6(usize::MAX);
    let IpAddr::V6(last) = huge.client(usize::MAX - 1) else {
        panic!()
    };
    assert!(in_v6_doc_range(last));
    assert_eq!(huge.index_of(last.into()), Some(usize::MAX - 1));
}

#[test]
fn index_of_rejects_strangers() {
    let set = ClientSet::v4(10).unwrap();
    for a in ["198.18.0.0", "198.18.0.11", "192.0.2.1", "2001:db8:c1::1"] {
        assert_eq!(set.index_of(a.parse().unwrap()), None, "{a}");
    }
    let set6 = ClientSet::v6(10);
    for a in [
        "2001:db8:c1::",
        "2001:db8:c1::b",
        "2001:db8:c2::1",
        "198.18.0.1",
    ] {
        assert_eq!(set6.index_of(a.parse().unwrap()), None, "{a}");
    }
}

#[test]
#[should_panic(expected = "client 3 out of 0..3")]
fn client_index_out_of_range_panics() {
    let _ = ClientSet::v6(3).client(3);
}

#[test]
fn shuffled_clients_are_a_seeded_permutation() {
    let set = ClientSet::v4(5000).unwrap();
    let a: Vec<IpAddr> = set.shuffled(1).collect();
    assert_eq!(a, set.shuffled(1).collect::<Vec<_>>());
    assert_ne!(a, set.shuffled(2).collect::<Vec<_>>());
    assert_ne!(a, set.iter().collect::<Vec<_>>());
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, set.iter().collect::<Vec<_>>());
}

fn vips_v4() -> Vec<Vip> {
    vec![
        Vip::tcp(Ipv4Addr::new(192, 0, 2, 10), 80),
        Vip::udp(Ipv4Addr::new(192, 0, 2, 10), 53),
        Vip::tcp(Ipv4Addr::new(203, 0, 113, 7), 443),
    ]
}

#[test]
fn flow_set_order_and_distinct_tuples() {
    let clients = ClientSet::v4(50).unwrap();
    let set = FlowSet::new(clients, 20, vips_v4()).unwrap();
    assert_eq!(set.len(), 50 * 20 * 3);
    assert_eq!(set.clients(), clients);
    assert_eq!((set.vips().len(), set.flows_per_client()), (3, 20));
    let flows: Vec<Flow> = set.iter().collect();
    assert_eq!(flows.len(), set.len());
    let distinct: HashSet<Flow> = flows.iter().copied().collect();
    assert_eq!(distinct.len(), flows.len());
    // Index order: client-major, then VIP, then source port.
    assert_eq!(flows[0].client, SocketAddr::new(clients.client(0), 1024));
    assert_eq!(flows[0].vip, vips_v4()[0].addr);
    assert_eq!(flows[19].client.port(), 1043);
    assert_eq!(flows[20].vip, vips_v4()[1].addr);
    assert_eq!(flows[20].proto, Proto::Udp);
    assert_eq!(flows[20].client.port(), 1024);
    assert_eq!(flows[60].client.ip(), clients.client(1));
    for f in &flows {
        assert!(f.client.port() >= FIRST_CLIENT_PORT);
        let vip = vips_v4().into_iter().find(|v| v.addr == f.vip).unwrap();
        assert_eq!(vip.proto, f.proto);
    }
}

#[test]
fn flow_set_seeded_orders() {
    let vip: Ipv6Addr = "2001:db8::80".parse().unwrap();
    let set = FlowSet::new(
        ClientSet::v6(100),
        7,
        [Vip::tcp(vip, 80), Vip::udp(vip, 53)],
    )
    .unwrap();
    let in_order: Vec<Flow> = set.iter().collect();

    let a: Vec<Flow> = set.shuffled(9).collect();
    assert_eq!(
        a,
        set.shuffled(9).collect::<Vec<_>>(),
        "same seed, same order"
    );
    assert_ne!(a, set.shuffled(10).collect::<Vec<_>>());
    assert_ne!(a, in_order);
    let as_set: HashSet<Flow> = a.iter().copied().collect();
    assert_eq!(as_set, in_order.iter().copied().collect(), "each flow once");
    assert_eq!(a.len(), set.len());

    let s: Vec<Flow> = set.sample(5).take(5000).collect();
    assert_eq!(s, set.sample(5).take(5000).collect::<Vec<_>>());
    assert_ne!(s, set.sample(6).take(5000).collect::<Vec<_>>());
    assert!(s.iter().all(|f| as_set.contains(f)));
    // 5000 draws from 1400 flows leave few untouched (expected about 40).
    let hit: HashSet<Flow> = s.into_iter().collect();
    assert!(hit.len() > 1300, "{}", hit.len());
}

#[test]
fn flow_set_errors_and_edges() {
    let v4 = ClientSet::v4(10).unwrap();
    assert_eq!(FlowSet::new(v4, 1, []), Err(TrafficError::NoVips));
    let v6vip = Vip::tcp("2001:db8::1".parse::<Ipv6Addr>().unwrap(), 80);
    assert_eq!(
        FlowSet::new(v4, 1, [vips_v4()[0], v6vip]),
        Err(TrafficError::FamilyMismatch {
            clients: Family::V4,
            vip: v6vip.addr
        })
    );
    assert!(FlowSet::new(v4, CLIENT_PORT_COUNT, vips_v4()).is_ok());
    assert_eq!(
        FlowSet::new(v4, CLIENT_PORT_COUNT + 1, vips_v4()),
        Err(TrafficError::TooManyFlowsPerClient {
            requested: 64_513,
            max: 64_512
        })
    );
    assert_eq!(
        FlowSet::new(ClientSet::v6(usize::MAX), 2, [v6vip]),
        Err(TrafficError::TooManyFlows)
    );
    let set = FlowSet::new(v4, 100, vips_v4()).unwrap();
    assert_eq!(set.clone().with_first_port(0), Err(TrafficError::ZeroPort));
    assert!(set.clone().with_first_port(65_437).is_err());
    let high = set.with_first_port(65_436).unwrap();
    assert_eq!(high.flow(99).client.port(), 65_535);
    assert_eq!(high.flow(0).client.port(), 65_436);

    let empty = FlowSet::new(ClientSet::v4(0).unwrap(), 3, vips_v4()).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.iter().count(), 0);
    assert_eq!(empty.shuffled(1).count(), 0);
    assert_eq!(empty.sample(1).next(), None);
    let none = FlowSet::new(v4, 0, vips_v4()).unwrap();
    assert!(none.is_empty());
}

#[test]
fn traffic_errors_display() {
    for e in [
        TrafficError::TooManyClients {
            requested: 1,
            capacity: 0,
        },
        TrafficError::NoClients,
        TrafficError::NoVips,
        TrafficError::FamilyMismatch {
            clients: Family::V4,
            vip: "[2001:db8::1]:80".parse().unwrap(),
        },
        TrafficError::TooManyFlowsPerClient {
            requested: 2,
            max: 1,
        },
        TrafficError::TooManyFlows,
        TrafficError::ZeroPort,
    ] {
        assert!(e.to_string().len() > 5, "{e:?}");
    }
}

#[test]
fn flow_packets_and_replies() {
    let set = FlowSet::new(ClientSet::v4(3).unwrap(), 2, vips_v4()).unwrap();
    let backend: SocketAddr = "198.51.100.20:8080".parse().unwrap();
    for f in set.iter() {
        let first = f.first_packet();
        let pkt = f.packet();
        let back = f.reply_from(backend);
        let vip_reply = f.reply();
        for spec in [&first, &pkt, &back, &vip_reply] {
            check(spec, &spec.build());
            assert_eq!(spec.proto(), f.proto);
        }
        assert_eq!((first.src_socket(), first.dst_socket()), (f.client, f.vip));
        assert_eq!((pkt.src_socket(), pkt.dst_socket()), (f.client, f.vip));
        assert_eq!((back.src_socket(), back.dst_socket()), (backend, f.client));
        assert_eq!(
            (vip_reply.src_socket(), vip_reply.dst_socket()),
            (f.vip, f.client)
        );
        if let (L4::Tcp(s), L4::Tcp(p), L4::Tcp(r)) = (first.l4, pkt.l4, back.l4) {
            assert_eq!((s.flags, s.seq), (SYN, CLIENT_ISN));
            assert_eq!(
                (p.flags, p.seq, p.ack),
                (ACK, CLIENT_ISN + 1, SERVER_ISN + 1)
            );
            assert_eq!(
                (r.flags, r.seq, r.ack),
                (ACK, SERVER_ISN + 1, CLIENT_ISN + 1)
            );
        }
        let L4::Tcp(sa) = first.reply_from(backend).l4 else {
            assert_eq!(f.proto, Proto::Udp);
            continue;
        };
        assert_eq!(
            (sa.flags, sa.seq, sa.ack),
            (SYN | ACK, SERVER_ISN, CLIENT_ISN + 1)
        );
    }
}

#[test]
fn new_connections_are_fresh_and_deterministic() {
    let clients = ClientSet::v4(1000).unwrap();
    let vips = vips_v4();
    let a: Vec<Flow> = NewConnections::new(clients, vips.clone(), 3)
        .unwrap()
        .take(20_000)
        .collect();
    let b: Vec<Flow> = NewConnections::new(clients, vips.clone(), 3)
        .unwrap()
        .take(20_000)
        .collect();
    assert_eq!(a, b);
    let c: Vec<Flow> = NewConnections::new(clients, vips.clone(), 4)
        .unwrap()
        .take(20_000)
        .collect();
    assert_ne!(a, c);
    // Far fewer than 64512 connections per client, so no (client, port)
    // repeats at all, whatever the VIP.
    let endpoints: HashSet<SocketAddr> = a.iter().map(|f| f.client).collect();
    assert_eq!(endpoints.len(), a.len());
    assert!(a.iter().all(|f| clients.index_of(f.client.ip()).is_some()));
    // Uniform-ish: most clients and every VIP get drawn.
    let hit: HashSet<IpAddr> = a.iter().map(|f| f.client.ip()).collect();
    assert!(hit.len() > 990, "{}", hit.len());
    for v in &vips {
        let n = a
            .iter()
            .filter(|f| f.vip == v.addr && f.proto == v.proto)
            .count();
        assert!(n > 6000, "{v:?}: {n}");
    }
    let syn = a[0].first_packet();
    check(&syn, &syn.build());
}

#[test]
fn new_connections_cycle_ports_per_client() {
    let one = ClientSet::v4(1).unwrap();
    let vip = Vip::tcp(Ipv4Addr::new(192, 0, 2, 1), 80);
    let ports: Vec<u16> = NewConnections::new(one, [vip], 0)
        .unwrap()
        .take(CLIENT_PORT_COUNT + 2)
        .map(|f| f.client.port())
        .collect();
    assert_eq!(ports[0], 1024);
    assert_eq!(ports[CLIENT_PORT_COUNT - 1], 65_535);
    assert_eq!(ports[CLIENT_PORT_COUNT], 1024, "wraps to the first port");
    assert_eq!(ports[CLIENT_PORT_COUNT + 1], 1025);
    let distinct: HashSet<u16> = ports[..CLIENT_PORT_COUNT].iter().copied().collect();
    assert_eq!(distinct.len(), CLIENT_PORT_COUNT);
}

#[test]
fn new_connections_errors() {
    let vip = Vip::udp(Ipv4Addr::new(192, 0, 2, 1), 53);
    assert_eq!(
        NewConnections::new(ClientSet::v4(0).unwrap(), [vip], 0).err(),
        Some(TrafficError::NoClients)
    );
    assert_eq!(
        NewConnections::new(ClientSet::v6(5), [vip], 0).err(),
        Some(TrafficError::FamilyMismatch {
            clients: Family::V6,
            vip: vip.addr
        })
    );
    assert_eq!(
        NewConnections::new(ClientSet::v6(5), Vec::new(), 0).err(),
        Some(TrafficError::NoVips)
    );
}
