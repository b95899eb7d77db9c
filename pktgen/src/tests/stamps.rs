use std::net::Ipv4Addr;

use super::oracle::check;
use crate::{ACK, PacketSpec, STAMP_LEN, Stamp, StampError, read_stamp, stamp_payload};

fn specs() -> Vec<PacketSpec> {
    let v4 = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(192, 0, 2, 1));
    let v6: (std::net::Ipv6Addr, std::net::Ipv6Addr) = (
        "2001:db8:c1::1".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    );
    vec![
        // A minimum-size IPv4 UDP frame has exactly 18 payload bytes.
        PacketSpec::udp_v4(v4.0, v4.1, 1000, 2000).frame_len(60),
        PacketSpec::udp_v4(v4.0, v4.1, 1000, 2000)
            .frame_len(60)
            .zero_checksum(true),
        PacketSpec::udp_v6(v6.0, v6.1, 1000, 2000)
            .vlan(3)
            .payload_len(40),
        PacketSpec::tcp_v4(v4.0, v4.1, 1000, 2000)
            .flags(ACK)
            .vlan(5)
            .frame_len(128),
        PacketSpec::tcp_v6(v6.0, v6.1, 1000, 2000)
            .flags(ACK)
            .payload_len(64),
    ]
}

#[test]
fn stamp_round_trips_and_keeps_checksums_valid() {
    for spec in specs() {
        let mut frame = spec.build();
        let payload_len = spec.layout().unwrap().payload_len;
        for offset in [0, payload_len - STAMP_LEN] {
            stamp_payload(&mut frame, offset, 42, 1_700_000_000_123_456_789).unwrap();
            assert_eq!(
                read_stamp(&frame, offset),
                Ok(Stamp {
                    seq: 42,
                    nanos: 1_700_000_000_123_456_789
                })
            );
            // The oracle recomputes the checksums over the new payload; give
            // it a spec whose payload is the stamped one.
            let lay = spec.layout().unwrap();
            let stamped = spec
                .clone()
                .payload(frame[lay.payload_offset..lay.ip_end].to_vec());
            check(&stamped, &frame);
        }
    }
}

#[test]
fn stamp_errors() {
    let spec = PacketSpec::udp_v4(
        Ipv4Addr::new(198, 18, 0, 1),
        Ipv4Addr::new(192, 0, 2, 1),
        1,
        2,
    )
    .payload_len(10);
    let mut frame = spec.build();
    assert_eq!(
        stamp_payload(&mut frame, 0, 1, 1),
        Err(StampError::PayloadTooShort {
            payload_len: 10,
            needed: 16
        })
    );
    assert_eq!(
        read_stamp(&frame, usize::MAX),
        Err(StampError::PayloadTooShort {
            payload_len: 10,
            needed: usize::MAX
        })
    );
    assert_eq!(read_stamp(&frame[..20], 0), Err(StampError::Unparseable));
    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(read_stamp(&arp, 0), Err(StampError::Unparseable));
    let mut icmp = frame.clone();
    icmp[23] = 1;
    assert_eq!(read_stamp(&icmp, 0), Err(StampError::Unparseable));
    let mut fragment = frame;
    fragment[20] |= 0x20; // more fragments
    assert_eq!(read_stamp(&fragment, 0), Err(StampError::Unparseable));
    assert!(StampError::Unparseable.to_string().contains("TCP"));
}
