//! Flood-proof affinity admission and UDP re-picks, over the real pipeline
//! (a `Worker` on the in-memory backend, clock moved by hand).
//!
//! Admission (see the affinity module's notes): a client enters the
//! affinity table on probation and is promoted once a connection of it
//! proves real, a TCP client's ACK after its SYN or a UDP flow's second
//! datagram; a full table takes room on probation first. A UDP flow whose
//! backend left the usable set is re-balanced at its next datagram (as
//! kube-proxy's conntrack cleanup does); a TCP connection keeps its backend.

mod common;

use common::{CLIENT_MAC, Harness, LIMPET_MAC, backend, destination, service};
use limpet_dataplane::pipeline::Action;
use limpet_dataplane::snapshot::{Affinity, ForwardMode, ServicePortSpec};
use limpet_pktgen::{ACK, PacketSpec, SYN, TcpFlags};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn vip(self) -> IpAddr {
        match self {
            Fam::V4 => "192.0.2.10".parse().unwrap(),
            Fam::V6 => "2001:db8::10".parse().unwrap(),
        }
    }

    fn backend(self, n: u8) -> limpet_dataplane::snapshot::Backend {
        match self {
            Fam::V4 => backend(&format!("203.0.113.{n}")),
            Fam::V6 => backend(&format!("2001:db8:be::{n:x}")),
        }
    }

    /// Client `n`: from 198.18.0.0/15 or `2001:db8:c1::/48`.
    fn client(self, n: u32) -> IpAddr {
        match self {
            Fam::V4 => IpAddr::V4((0xc612_0000 | (n & 0x1_ffff)).into()),
            Fam::V6 => IpAddr::V6(((0x2001_0db8_00c1u128 << 80) | u128::from(n)).into()),
        }
    }
}

fn spec(fam: Fam, protocol: u8, timeout: u32, backends: &[u8]) -> ServicePortSpec {
    let vip = fam.vip().to_string();
    service(
        1,
        &vip,
        protocol,
        Affinity::client_ip(timeout),
        ForwardMode::Nat,
        backends.iter().map(|&n| fam.backend(n)).collect(),
    )
}

fn tcp(client: IpAddr, sport: u16, vip: IpAddr, flags: TcpFlags) -> Vec<u8> {
    PacketSpec::tcp(client, vip, sport, 80)
        .flags(flags)
        .src_mac(CLIENT_MAC)
        .dst_mac(LIMPET_MAC)
        .build()
}

fn udp(client: IpAddr, sport: u16, vip: IpAddr) -> Vec<u8> {
    PacketSpec::udp(client, vip, sport, 80)
        .payload(b"query".to_vec())
        .src_mac(CLIENT_MAC)
        .dst_mac(LIMPET_MAC)
        .build()
}

fn forward(h: &mut Harness, frame: &[u8]) -> SocketAddr {
    let (action, out) = h.send(frame);
    assert_eq!(action, Action::Forward);
    destination(&out.expect("forwarded but not sent"))
}

/// The backend `client`'s affinity entry names and whether it is on
/// probation, read through the worker's table of the client's family.
fn entry(h: &Harness, client: IpAddr) -> Option<(u32, bool)> {
    use limpet_dataplane::affinity::{AffinityKey, AffinityTable, Sticky};
    match client {
        IpAddr::V4(c) => {
            let t = h.worker.affinity_v4();
            let k = AffinityKey {
                service: 1,
                client: c,
            };
            match t.lookup(AffinityTable::hash(&k), &k, u32::MAX - 1, 0) {
                Sticky::Live { idx, backend } => Some((backend, t.on_probation(idx))),
                _ => None,
            }
        }
        IpAddr::V6(c) => {
            let t = h.worker.affinity_v6();
            let k = AffinityKey {
                service: 1,
                client: c,
            };
            match t.lookup(AffinityTable::hash(&k), &k, u32::MAX - 1, 0) {
                Sticky::Live { idx, backend } => Some((backend, t.on_probation(idx))),
                _ => None,
            }
        }
    }
}

#[test]
fn tcp_client_promoted_by_its_ack_not_by_the_syn_ack() {
    for fam in [Fam::V4, Fam::V6] {
        let vip = fam.vip();
        let mut h = Harness::new(vec![spec(fam, 6, 60, &[1, 2, 3])]);
        let c = fam.client(1);
        let be = forward(&mut h, &tcp(c, 4000, vip, SYN));
        assert!(
            entry(&h, c).unwrap().1,
            "{fam:?}: on probation at first sight"
        );
        // The backend's SYN-ACK comes whatever the source: no proof.
        let synack = PacketSpec::tcp(be.ip(), c, be.port(), 4000)
            .flags(SYN | ACK)
            .src_mac(common::backend_mac(be.ip()))
            .dst_mac(LIMPET_MAC)
            .build();
        assert_eq!(h.send(&synack).0, Action::Forward);
        // A retransmitted SYN is no proof either.
        forward(&mut h, &tcp(c, 4000, vip, SYN));
        assert!(entry(&h, c).unwrap().1, "{fam:?}: SYN-ACK or SYN promoted");
        assert_eq!(forward(&mut h, &tcp(c, 4000, vip, ACK)), be);
        assert!(!entry(&h, c).unwrap().1, "{fam:?}: ACK did not promote");
        // Later packets and later connections cost no promotion.
        forward(&mut h, &tcp(c, 4000, vip, ACK));
        assert_eq!(forward(&mut h, &tcp(c, 4001, vip, SYN)), be);
        forward(&mut h, &tcp(c, 4001, vip, ACK));
        let s = h.worker.stats();
        assert_eq!(s.affinity_admissions, 1);
        assert_eq!(s.affinity_promotions, 1);
        assert_eq!(s.affinity_proofs_unpromoted, 0);
    }
}

#[test]
fn udp_client_promoted_by_its_second_datagram() {
    for fam in [Fam::V4, Fam::V6] {
        let vip = fam.vip();
        let mut h = Harness::new(vec![spec(fam, 17, 60, &[1, 2, 3])]);
        let c = fam.client(2);
        let be = forward(&mut h, &udp(c, 5353, vip));
        assert!(entry(&h, c).unwrap().1);
        assert_eq!(forward(&mut h, &udp(c, 5353, vip)), be);
        assert!(!entry(&h, c).unwrap().1);
        assert_eq!(h.worker.stats().affinity_promotions, 1);
    }
}

/// The pipeline-level flood: established clients, then ten tables' worth of
/// one-packet spoofed SYNs a second; every established client keeps its
/// backend for its next connection, and the flood's evictions all come from
/// probation.
#[test]
fn syn_flood_keeps_established_clients() {
    for fam in [Fam::V4, Fam::V6] {
        let vip = fam.vip();
        let cap = 512;
        let mut h = Harness::with_capacity(vec![spec(fam, 6, 60, &[1, 2, 3, 4, 5])], 4096, cap);
        let mut clients = Vec::new();
        for n in 0..400 {
            let c = fam.client(n);
            let be = forward(&mut h, &tcp(c, 6000, vip, SYN));
            forward(&mut h, &tcp(c, 6000, vip, ACK));
            clients.push((c, be));
        }
        // The backend set changes under the flood, so a client that lost
        // its entry would be re-picked by Maglev onto another backend
        // rather than land on the same one by luck.
        let mut spoofed = 1_000_000u32;
        for _ in 0..5 {
            h.tick(1);
            for _ in 0..10 * cap {
                spoofed += 1;
                forward(&mut h, &tcp(fam.client(spoofed), 7000, vip, SYN));
            }
        }
        h.update(vec![spec(fam, 6, 60, &[1, 2, 3, 4, 5, 6, 7, 8, 9])]);
        for (i, (c, be)) in clients.iter().enumerate() {
            assert_eq!(
                forward(&mut h, &tcp(*c, 6001, vip, SYN)),
                *be,
                "{fam:?}: client {i} moved"
            );
        }
        let s = h.worker.stats();
        assert_eq!(s.affinity_promotions, 400);
        assert!(s.affinity_evictions >= 5 * 10 * cap as u64 - cap as u64);
        assert_eq!(s.affinity_evictions, s.affinity_probation_evictions);
    }
}

/// With probation empty a full table takes a protected entry, counted as
/// such.
#[test]
fn protected_clients_go_only_when_probation_is_empty() {
    let fam = Fam::V4;
    let vip = fam.vip();
    let mut h = Harness::with_capacity(vec![spec(fam, 6, 60, &[1, 2])], 64, 4);
    for n in 0..4 {
        let c = fam.client(n);
        forward(&mut h, &tcp(c, 6000, vip, SYN));
        forward(&mut h, &tcp(c, 6000, vip, ACK));
    }
    forward(&mut h, &tcp(fam.client(10), 6000, vip, SYN));
    let s = h.worker.stats();
    assert_eq!(s.affinity_evictions, 1);
    assert_eq!(s.affinity_probation_evictions, 0);
    // The newcomer is on probation now: the next one takes its place.
    forward(&mut h, &tcp(fam.client(11), 6000, vip, SYN));
    let s = h.worker.stats();
    assert_eq!(
        (s.affinity_evictions, s.affinity_probation_evictions),
        (2, 1)
    );
    assert!(entry(&h, fam.client(10)).is_none());
    // A connection that proves a client after its entry went promotes
    // nothing, and says so.
    forward(&mut h, &tcp(fam.client(10), 6000, vip, ACK));
    assert_eq!(h.worker.stats().affinity_proofs_unpromoted, 1);
}

#[test]
fn udp_stream_repicked_when_its_backend_leaves_tcp_kept() {
    for fam in [Fam::V4, Fam::V6] {
        let vip = fam.vip();
        let all = [1u8, 2, 3];
        let mut udp_spec = spec(fam, 17, 10800, &all);
        udp_spec.id = 2;
        udp_spec.name = "default/svc2:80/UDP".into();
        let specs = |backends: &[u8]| {
            let mut u = spec(fam, 17, 10800, backends);
            u.id = 2;
            u.name = "default/svc2:80/UDP".into();
            vec![spec(fam, 6, 10800, backends), u]
        };
        let mut h = Harness::new(specs(&all));
        let c = fam.client(3);
        let tcp_be = forward(&mut h, &tcp(c, 4000, vip, SYN));
        forward(&mut h, &tcp(c, 4000, vip, ACK));
        let udp_be = forward(&mut h, &udp(c, 5353, vip));
        // Each loses its backend; another backend stays.
        let left = |be: SocketAddr| {
            all.iter()
                .copied()
                .find(|&n| fam.backend(n).addr == be.ip())
                .unwrap()
        };
        let keep: Vec<u8> = all
            .iter()
            .copied()
            .filter(|&n| n != left(tcp_be) && n != left(udp_be))
            .collect();
        h.tick(1);
        h.update(specs(&keep));
        let moved = forward(&mut h, &udp(c, 5353, vip));
        assert_ne!(moved, udp_be, "{fam:?}: UDP stream kept a removed backend");
        assert!(keep.iter().any(|&n| fam.backend(n).addr == moved.ip()));
        // It stays on its new backend, checked once.
        h.tick(1);
        assert_eq!(forward(&mut h, &udp(c, 5353, vip)), moved);
        assert_eq!(
            forward(&mut h, &tcp(c, 4000, vip, ACK)),
            tcp_be,
            "{fam:?}: TCP moved"
        );
        let s = h.worker.stats();
        assert_eq!(s.udp_repicks, 1);
        assert_eq!(s.affinity_stale, 1, "the UDP client's entry re-pointed");
        // A stream whose backend stays is not touched by a swap.
        h.update(specs(&keep));
        assert_eq!(forward(&mut h, &udp(c, 5353, vip)), moved);
        assert_eq!(h.worker.stats().udp_repicks, 1);
    }
}
