//! The floor forwarder: MAC rewrite, one backend per client, bad frames
//! dropped and counted.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use limpet_dataplane::io::MemoryIo;

use crate::PacketSpec;
use crate::forward::{Forwarder, pick};

const LB: [u8; 6] = [2, 0, 0, 0, 1, 0];
const BACKENDS: [[u8; 6]; 3] = [[2, 0, 0, 0, 3, 1], [2, 0, 0, 0, 3, 2], [2, 0, 0, 0, 3, 3]];

fn frame(src: IpAddr, sport: u16) -> Vec<u8> {
    let dst: IpAddr = if src.is_ipv4() {
        Ipv4Addr::new(192, 0, 2, 10).into()
    } else {
        Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 0x10).into()
    };
    PacketSpec::udp(src, dst, sport, 80).build()
}

#[test]
fn every_client_keeps_one_backend_and_clients_spread() {
    let mut io = MemoryIo::new(64);
    let mut fwd = Forwarder::new(LB, BACKENDS.to_vec());
    let mut seen: BTreeMap<IpAddr, [u8; 6]> = BTreeMap::new();
    let mut per_backend = [0u32; 3];
    for i in 0..300u32 {
        let client: IpAddr = if i % 2 == 0 {
            Ipv4Addr::from(0xc612_0001 + i / 2).into()
        } else {
            Ipv6Addr::from(0x2001_0db8_00c1_0000_0000_0000_0000_0001 + u128::from(i / 2)).into()
        };
        for sport in [40_000, 40_001] {
            let sent = frame(client, sport);
            assert!(io.inject(&sent, 0));
            assert_eq!(fwd.poll(&mut io), 1);
            let (_, out) = io.take_sent().expect("forwarded");
            assert_eq!(&out[6..12], &LB, "source MAC is the forwarder's");
            assert_eq!(&out[12..], &sent[12..], "nothing past the MACs changes");
            let dst: [u8; 6] = out[..6].try_into().unwrap();
            assert_eq!(*seen.entry(client).or_insert(dst), dst, "{client} moved");
        }
        per_backend[pick(&BACKENDS, &frame(client, 1)).unwrap()] += 1;
    }
    assert!(per_backend.iter().all(|&n| n > 60), "{per_backend:?}");
    assert_eq!(fwd.stats.rx_packets, 600);
    assert_eq!(fwd.stats.tx_packets, 600);
    assert_eq!(fwd.stats.busy_polls, 600);
    assert!((fwd.stats.packets_per_burst() - 1.0).abs() < f64::EPSILON);
}

#[test]
fn frames_that_are_not_ip_are_dropped_and_counted() {
    let mut io = MemoryIo::new(8);
    let mut fwd = Forwarder::new(LB, BACKENDS.to_vec());
    let mut arp = frame(Ipv4Addr::new(198, 18, 0, 1).into(), 1);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert!(io.inject(&arp, 0));
    assert!(io.inject(&arp[..20], 0));
    assert!(io.inject(&frame(Ipv4Addr::new(198, 18, 0, 1).into(), 1), 0));
    assert_eq!(fwd.poll(&mut io), 3);
    assert_eq!(fwd.stats.dropped, 2);
    assert_eq!(fwd.stats.tx_packets, 1);
    assert_eq!(io.freed, 2);
    assert!(io.take_sent().is_some());
    assert!(io.take_sent().is_none());
}
