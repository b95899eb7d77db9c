//! The sender's prebuilt frames, in-place patches and pacer.
#![allow(clippy::many_single_char_names)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use super::oracle::check;
use crate::send::{
    FCS_LEN, Generator, Pacer, Plan, PlanError, checksum_adjust, client_addr, set_src_port,
    write_stamp,
};
use crate::{
    ACK, CLIENT_ISN, FIRST_CLIENT_PORT, PacketSpec, Payload, Proto, SERVER_ISN, SYN, SplitMix64,
    parse_frame, read_stamp,
};

pub(super) fn plan(proto: Proto, v6: bool) -> Plan {
    let (first, vips): (IpAddr, Vec<SocketAddr>) = if v6 {
        (
            "2001:db8:c1::1".parse().unwrap(),
            vec!["[2001:db8:5::10]:80".parse().unwrap()],
        )
    } else {
        (
            "198.18.0.1".parse().unwrap(),
            vec![
                "192.0.2.10:80".parse().unwrap(),
                "192.0.2.11:53".parse().unwrap(),
            ],
        )
    };
    Plan {
        proto,
        src_mac: [2, 0, 0, 0, 2, 0],
        dst_mac: [2, 0, 0, 0, 1, 0],
        vips,
        first_client: first,
        clients: 5,
        flows_per_client: 3,
        size: 64,
        new_share: 0.0,
        stamp: false,
        seed: 7,
    }
}

/// The spec a generated frame must match, checked by etherparse.
pub(super) fn expected(p: &Plan, frame: &[u8], open: bool) -> PacketSpec {
    let info = parse_frame(frame).unwrap();
    let s = PacketSpec::between(
        p.proto,
        SocketAddr::new(info.src, info.src_port),
        SocketAddr::new(info.dst, info.dst_port),
    )
    .src_mac(p.src_mac)
    .dst_mac(p.dst_mac);
    let s = match (p.proto, open) {
        (Proto::Tcp, true) => s.flags(SYN).seq(CLIENT_ISN),
        (Proto::Tcp, false) => s.flags(ACK).seq(CLIENT_ISN + 1).ack_number(SERVER_ISN + 1),
        (Proto::Udp, _) => s,
    };
    let payload = frame[info.payload_offset..info.payload_offset + info.payload_len].to_vec();
    let mut s = s.payload(payload);
    s.frame_size = crate::FrameSize::Exact(frame.len());
    s
}

#[test]
fn established_frames_cover_every_flow_round_robin() {
    for (proto, v6) in [
        (Proto::Udp, false),
        (Proto::Tcp, false),
        (Proto::Udp, true),
        (Proto::Tcp, true),
    ] {
        let p = plan(proto, v6);
        let mut g = Generator::new(&p).unwrap();
        let flows = 5 * p.vips.len() * 3;
        assert_eq!(g.flows(), flows);
        for round in 0..2 {
            let mut seen = HashSet::new();
            for _ in 0..flows {
                let f = g.next_frame(0).to_vec();
                check(&expected(&p, &f, false), &f);
                let i = parse_frame(&f).unwrap();
                assert!(
                    seen.insert((i.src, i.src_port, i.dst, i.dst_port)),
                    "round {round}"
                );
                assert!((FIRST_CLIENT_PORT..FIRST_CLIENT_PORT + 3).contains(&i.src_port));
                assert!(p.vips.contains(&SocketAddr::new(i.dst, i.dst_port)));
            }
            assert_eq!(seen.len(), flows);
        }
        assert_eq!(g.new_connections(), 0);
    }
}

#[test]
fn new_connections_use_fresh_ports_and_valid_checksums() {
    for (proto, v6) in [(Proto::Tcp, false), (Proto::Udp, true)] {
        let mut p = plan(proto, v6);
        p.new_share = 1.0;
        p.stamp = true;
        let mut g = Generator::new(&p).unwrap();
        let mut last_port: HashMap<IpAddr, u16> = HashMap::new();
        for n in 0..200u64 {
            let f = g.next_frame(1000 + n).to_vec();
            check(&expected(&p, &f, true), &f);
            let i = parse_frame(&f).unwrap();
            // Each client counts its ports up (per client, whatever the VIP).
            let key = i.src;
            // Ports start at a seeded point and wrap past 65535 back to the
            // first port after the established flows'.
            assert!(i.src_port >= FIRST_CLIENT_PORT + 3);
            if let Some(&q) = last_port.get(&key) {
                let next = if q == u16::MAX {
                    FIRST_CLIENT_PORT + 3
                } else {
                    q + 1
                };
                assert_eq!(i.src_port, next);
            }
            last_port.insert(key, i.src_port);
            let s = read_stamp(&f, 0).unwrap();
            assert_eq!((s.seq, s.nanos), (n, 1000 + n));
        }
        assert_eq!(g.new_connections(), 200);
    }
}

#[test]
fn new_share_is_honoured() {
    let mut p = plan(Proto::Tcp, false);
    p.new_share = 0.25;
    let mut g = Generator::new(&p).unwrap();
    let mut syn = 0;
    for _ in 0..40_000 {
        let f = g.next_frame(0);
        let i = parse_frame(f).unwrap();
        // TCP flags byte: offset 13 of the header.
        if f[i.payload_offset - 20 + 13] & 0x02 != 0 {
            syn += 1;
        }
    }
    assert_eq!(syn, g.new_connections());
    let share = syn as f64 / 40_000.0;
    assert!((share - 0.25).abs() < 0.01, "{share}");
}

#[test]
fn frame_sizes() {
    let len = |proto, v6, size, stamp| {
        let mut p = plan(proto, v6);
        p.size = size;
        p.stamp = stamp;
        Generator::new(&p).unwrap().frame_len()
    };
    // 64 bytes on the wire = 60 + FCS.
    assert_eq!(len(Proto::Udp, false, 64, true), 64 - FCS_LEN);
    // IPv6 UDP needs 62 bytes of headers; with a stamp 78.
    assert_eq!(len(Proto::Udp, true, 64, false), 62);
    assert_eq!(len(Proto::Udp, true, 64, true), 78);
    assert_eq!(len(Proto::Tcp, false, 64, true), 70);
    assert_eq!(len(Proto::Tcp, true, 1518, true), 1514);
}

#[test]
fn plan_errors() {
    let mut p = plan(Proto::Udp, false);
    p.first_client = "198.19.255.250".parse().unwrap();
    p.clients = 10;
    assert!(matches!(
        Generator::new(&p),
        Err(PlanError::ClientOutOfRange { .. })
    ));
    p.first_client = "10.0.0.1".parse().unwrap();
    p.clients = 1;
    assert!(matches!(
        Generator::new(&p),
        Err(PlanError::ClientOutOfRange { .. })
    ));
    let mut p = plan(Proto::Udp, true);
    p.vips.push("192.0.2.10:80".parse().unwrap());
    assert!(matches!(
        Generator::new(&p),
        Err(PlanError::FamilyMismatch { .. })
    ));
    let mut p = plan(Proto::Udp, false);
    p.new_share = 1.5;
    assert!(matches!(Generator::new(&p), Err(PlanError::BadShare(_))));
    assert_eq!(
        client_addr("198.18.0.1".parse().unwrap(), 131_069),
        Some("198.19.255.254".parse().unwrap())
    );
    assert_eq!(
        client_addr("2001:db8:c1::1".parse().unwrap(), 0xffff),
        Some("2001:db8:c1::1:0".parse().unwrap())
    );
}

#[test]
fn incremental_checksum_matches_full_recompute() {
    let mut rng = SplitMix64::new(3);
    let specs = [
        PacketSpec::udp(
            "198.18.0.9".parse::<IpAddr>().unwrap(),
            "192.0.2.10".parse::<IpAddr>().unwrap(),
            1024,
            80,
        ),
        PacketSpec::tcp(
            "2001:db8:c1::9".parse::<IpAddr>().unwrap(),
            "2001:db8:5::10".parse::<IpAddr>().unwrap(),
            1024,
            80,
        )
        .flags(ACK),
    ];
    for base in specs {
        let base = base.payload_len(100);
        let layout = base.layout().unwrap();
        let mut frame = base.build();
        for _ in 0..500 {
            let port = rng.next_u64() as u16 | 1;
            let (seq, nanos) = (rng.next_u64(), rng.next_u64());
            set_src_port(&mut frame, &layout, base.proto(), port);
            write_stamp(&mut frame, &layout, base.proto(), seq, nanos);
            let mut bytes = (0..100).map(Payload::pattern_byte).collect::<Vec<u8>>();
            bytes[..8].copy_from_slice(&seq.to_be_bytes());
            bytes[8..16].copy_from_slice(&nanos.to_be_bytes());
            let want = base.clone().src_port(port).payload(bytes).build();
            assert_eq!(frame, want);
        }
    }
    // RFC 1624's example: 0xDD2F -> after 0x5555 becomes 0x3285.
    assert_eq!(
        checksum_adjust(0xDD2F, &[0x55, 0x55], &[0x32, 0x85]),
        0x0000
    );
}

#[test]
fn pacer_is_a_token_bucket() {
    let ms = 1_000_000;
    let mut p = Pacer::new(1000.0, 32, 0);
    assert_eq!(p.take(0, 100), 32); // starts full
    assert_eq!(p.take(0, 100), 0);
    assert_eq!(p.wait_ns(), ms);
    assert_eq!(p.take(ms, 100), 1);
    assert_eq!(p.take(ms + ms / 2, 100), 0);
    assert_eq!(p.take(3 * ms, 100), 2);
    // Idle time does not bank more than the bucket.
    assert_eq!(p.take(1000 * ms, 100), 32);
    assert_eq!(p.take(1000 * ms, 100), 0);
    // `want` limits the take; the rest stays.
    assert_eq!(p.take(1010 * ms, 4), 4);
    assert_eq!(p.take(1010 * ms, 100), 6);
}
