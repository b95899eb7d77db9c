//! Random specs: whatever pktgen accepts, etherparse must parse with every
//! field and checksum intact, byte for byte as its own builder writes it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::oracle::{check, etherparse_bytes, expected_frame_len};
use crate::{
    BuildError, FrameSize, L4, MIN_FRAME_LEN, PacketSpec, Payload, Permutation, TcpFlags, TcpSpec,
    UdpSpec, read_stamp, stamp_payload,
};

fn addrs() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    // Any bit pattern checks the checksum arithmetic; tests only ever build
    // these frames in memory, never send them.
    prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(a, b)| (Ipv4Addr::from(a).into(), Ipv4Addr::from(b).into())),
        (any::<u128>(), any::<u128>())
            .prop_map(|(a, b)| (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into())),
    ]
}

fn l4() -> impl Strategy<Value = L4> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            0..0x40u8,
            any::<u32>(),
            any::<u32>(),
            any::<u16>()
        )
            .prop_map(|(s, d, f, seq, ack, w)| L4::Tcp(TcpSpec {
                src_port: s,
                dst_port: d,
                flags: TcpFlags(f),
                seq,
                ack,
                window: w,
            })),
        (any::<u16>(), any::<u16>(), any::<bool>()).prop_map(|(s, d, z)| L4::Udp(UdpSpec {
            src_port: s,
            dst_port: d,
            zero_checksum: z,
        })),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Payload::Bytes),
        (0..2000usize).prop_map(Payload::Len),
    ]
}

fn frame_size() -> impl Strategy<Value = FrameSize> {
    prop_oneof![
        Just(FrameSize::Natural),
        Just(FrameSize::Unpadded),
        (0..2100usize).prop_map(FrameSize::Exact),
    ]
}

prop_compose! {
    fn spec()(
        src_mac in any::<[u8; 6]>(),
        dst_mac in any::<[u8; 6]>(),
        vlan in prop::option::of(0..=0x0fffu16),
        (src, dst) in addrs(),
        ttl in any::<u8>(),
        l4 in l4(),
        payload in payload(),
        frame_size in frame_size(),
    ) -> PacketSpec {
        PacketSpec { src_mac, dst_mac, vlan, src, dst, ttl, l4, payload, frame_size }
    }
}

proptest! {
    #[test]
    fn random_specs_parse_and_verify(spec in spec()) {
        match spec.try_build() {
            Ok(frame) => {
                check(&spec, &frame);
                prop_assert_eq!(&frame, &etherparse_bytes(&spec));
                let mut buf = vec![0x5a; frame.len() + 7];
                prop_assert_eq!(spec.write_into(&mut buf), Ok(frame.len()));
                prop_assert_eq!(&buf[..frame.len()], &frame[..]);
            }
            // Only an exact size that cannot be met may fail.
            Err(e) => {
                let FrameSize::Exact(n) = spec.frame_size else {
                    return Err(TestCaseError::fail(format!("{e:?} for {spec:?}")));
                };
                let unpadded = expected_frame_len(&PacketSpec {
                    frame_size: FrameSize::Unpadded,
                    ..spec.clone()
                });
                if n < MIN_FRAME_LEN {
                    prop_assert_eq!(e, BuildError::BelowMinimumFrame { requested: n });
                } else {
                    prop_assert_eq!(e, BuildError::FrameTooSmall { requested: n, needed: unpadded });
                }
            }
        }
    }

    #[test]
    fn reply_of_any_spec_builds(spec in spec()) {
        if spec.layout().is_ok() {
            let r = spec.reply();
            let frame = r.build();
            check(&r, &frame);
            prop_assert_eq!(r.src_socket(), spec.dst_socket());
            prop_assert_eq!(r.dst_socket(), spec.src_socket());
        }
    }

    #[test]
    fn stamps_round_trip(spec in spec(), seq in any::<u64>(), nanos in any::<u64>(), at in 0..64usize) {
        let Ok(mut frame) = spec.try_build() else { return Ok(()) };
        let lay = spec.layout().unwrap();
        let res = stamp_payload(&mut frame, at, seq, nanos);
        if at + 16 > lay.payload_len {
            prop_assert!(res.is_err());
            return Ok(());
        }
        prop_assert!(res.is_ok());
        let stamp = read_stamp(&frame, at).unwrap();
        prop_assert_eq!((stamp.seq, stamp.nanos), (seq, nanos));
        let stamped = PacketSpec {
            payload: Payload::Bytes(
                frame[lay.payload_offset..lay.ip_end].to_vec(),
            ),
            ..spec
        };
        check(&stamped, &frame);
    }

    #[test]
    fn permutations_are_bijections(len in 0..3000u64, seed in any::<u64>()) {
        let p = Permutation::new(len, seed);
        let mut seen = vec![false; len as usize];
        for x in p.iter() {
            prop_assert!(!seen[x as usize]);
            seen[x as usize] = true;
        }
        prop_assert!(seen.into_iter().all(|s| s));
    }
}
