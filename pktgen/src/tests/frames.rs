//! Every builder path, parsed back and compared with etherparse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::oracle::{check, etherparse_bytes};
use crate::{
    ACK, BuildError, FIN, FrameSize, L4, MIN_FRAME_LEN, PSH, PacketSpec, Payload, Proto, RST,
    SERVER_ISN, SYN, TcpFlags,
};

const V4_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const V4_DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const V6_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, 0, 0, 0, 1);
const V6_DST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

fn base(proto: Proto, v6: bool) -> PacketSpec {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (V6_SRC.into(), V6_DST.into())
    } else {
        (V4_SRC.into(), V4_DST.into())
    };
    match proto {
        Proto::Tcp => PacketSpec::tcp(src, dst, 40_000, 80)
            .flags(PSH | ACK)
            .seq(0xdead_beef)
            .ack_number(0x0102_0304)
            .window(1234),
        Proto::Udp => PacketSpec::udp(src, dst, 40_000, 53),
    }
}

/// Asserts everything the oracle knows about `spec`'s frame, and that
/// `write_into` over a dirty buffer gives the same bytes as `build`.
fn verify(spec: &PacketSpec) -> Vec<u8> {
    let frame = spec.build();
    check(spec, &frame);
    assert_eq!(frame, etherparse_bytes(spec), "byte-for-byte vs etherparse");
    let mut buf = [0xa5u8; 2048];
    let n = spec.write_into(&mut buf).expect("fits");
    assert_eq!(&buf[..n], &frame[..]);
    assert!(buf[n..].iter().all(|&b| b == 0xa5), "wrote past the frame");
    frame
}

#[test]
fn every_builder_path_parses_back() {
    let mut count = 0;
    for proto in [Proto::Tcp, Proto::Udp] {
        for v6 in [false, true] {
            for vlan in [None, Some(0), Some(100), Some(4095)] {
                for size in [
                    FrameSize::Natural,
                    FrameSize::Unpadded,
                    FrameSize::Exact(128),
                    FrameSize::Exact(1514),
                ] {
                    for payload in [
                        Payload::Bytes(vec![]),
                        Payload::Bytes(b"hello".to_vec()),
                        Payload::Len(0),
                        Payload::Len(7),
                        Payload::Len(300),
                    ] {
                        let mut spec = base(proto, v6).ttl(17);
                        spec.vlan = vlan;
                        spec.frame_size = size;
                        spec.payload = payload;
                        if spec.layout().is_err() {
                            // Only 300 bytes in a 128-byte frame should fail.
                            assert_eq!(
                                (spec.payload.len(), spec.frame_size),
                                (300, FrameSize::Exact(128))
                            );
                            continue;
                        }
                        verify(&spec);
                        count += 1;
                    }
                }
            }
        }
    }
    assert!(count > 300, "{count} paths");
}

#[test]
fn minimum_frames_per_family_and_protocol() {
    // Unpadded lengths: Ethernet 14 (+4 VLAN), IPv4 20 / IPv6 40, TCP 20 /
    // UDP 8.
    let cases = [
        (Proto::Tcp, false, None, 54),
        (Proto::Tcp, false, Some(1), 58),
        (Proto::Udp, false, None, 42),
        (Proto::Udp, false, Some(1), 46),
        (Proto::Tcp, true, None, 74),
        (Proto::Tcp, true, Some(1), 78),
        (Proto::Udp, true, None, 62),
        (Proto::Udp, true, Some(1), 66),
    ];
    for (proto, v6, vlan, unpadded) in cases {
        let mut spec = base(proto, v6);
        spec.vlan = vlan;
        assert_eq!(verify(&spec.clone().unpadded()).len(), unpadded);
        assert_eq!(verify(&spec).len(), unpadded.max(MIN_FRAME_LEN));
        if unpadded <= MIN_FRAME_LEN {
            let exact = verify(&spec.clone().frame_len(60));
            assert_eq!(exact.len(), 60);
            assert_eq!(spec.clone().frame_len(60).layout().unwrap().ip_end, 60);
        } else {
            assert_eq!(
                spec.clone().frame_len(60).layout(),
                Err(BuildError::FrameTooSmall {
                    requested: 60,
                    needed: unpadded
                })
            );
        }
        assert_eq!(
            verify(&spec.clone().frame_len(unpadded.max(60))).len(),
            unpadded.max(60)
        );
    }
}

#[test]
fn natural_padding_is_a_trailer_outside_the_ip_packet() {
    let spec = base(Proto::Udp, false).payload(vec![1, 2]);
    let lay = spec.layout().unwrap();
    assert_eq!(lay.ip_end, 44);
    assert_eq!(lay.frame_len, 60);
    assert_eq!(lay.payload_len, 2);
    let frame = verify(&spec);
    assert_eq!(
        u16::from_be_bytes([frame[16], frame[17]]),
        30,
        "IPv4 total length"
    );
}

#[test]
fn exact_padding_is_inside_the_payload() {
    let spec = base(Proto::Udp, false).payload(vec![1, 2]).frame_len(64);
    let lay = spec.layout().unwrap();
    assert_eq!((lay.ip_end, lay.frame_len, lay.payload_len), (64, 64, 22));
    let frame = verify(&spec);
    assert_eq!(
        u16::from_be_bytes([frame[16], frame[17]]),
        50,
        "IPv4 total length"
    );
    assert_eq!(u16::from_be_bytes([frame[38], frame[39]]), 30, "UDP length");
    assert_eq!(&frame[42..44], &[1, 2]);
}

#[test]
fn frame_length_errors() {
    let spec = base(Proto::Tcp, false);
    assert_eq!(
        spec.clone().frame_len(59).layout(),
        Err(BuildError::BelowMinimumFrame { requested: 59 })
    );
    assert_eq!(
        spec.clone().payload_len(10).frame_len(60).layout(),
        Err(BuildError::FrameTooSmall {
            requested: 60,
            needed: 64
        })
    );
    assert!(spec.clone().frame_len(0).try_build().is_err());
}

#[test]
fn ip_length_limits() {
    // IPv4 total length counts the 20-byte header; UDP adds 8.
    let v4 = base(Proto::Udp, false);
    verify_big(&v4.clone().payload_len(65_535 - 28));
    assert_eq!(
        v4.clone().payload_len(65_535 - 27).layout(),
        Err(BuildError::TooLarge { ip_len: 65_536 })
    );
    // IPv6 payload length excludes the fixed header.
    let v6 = base(Proto::Udp, true);
    verify_big(&v6.clone().payload_len(65_535 - 8));
    assert_eq!(
        v6.clone().payload_len(65_535 - 7).layout(),
        Err(BuildError::TooLarge { ip_len: 65_536 })
    );
    let tcp6 = base(Proto::Tcp, true);
    assert!(tcp6.clone().frame_len(65_535 + 14 + 40).try_build().is_ok());
    assert!(
        tcp6.clone()
            .frame_len(65_536 + 14 + 40)
            .try_build()
            .is_err()
    );
    assert!(matches!(
        v4.payload_len(usize::MAX).layout(),
        Err(BuildError::TooLarge { .. })
    ));
}

fn verify_big(spec: &PacketSpec) {
    let frame = spec.build();
    check(spec, &frame);
    assert_eq!(frame, etherparse_bytes(spec));
}

#[test]
fn invalid_specs_are_errors() {
    let mixed = PacketSpec::tcp(V4_SRC, V6_DST, 1, 2);
    assert_eq!(
        mixed.layout(),
        Err(BuildError::MixedFamilies {
            src: V4_SRC.into(),
            dst: V6_DST.into()
        })
    );
    assert_eq!(
        base(Proto::Tcp, false).vlan(4096).try_build(),
        Err(BuildError::InvalidVlanId(4096))
    );
    let spec = base(Proto::Tcp, false);
    let mut small = [0u8; 59];
    assert_eq!(
        spec.write_into(&mut small),
        Err(BuildError::BufferTooSmall {
            needed: 60,
            available: 59
        })
    );
    // Display is for humans; make sure every variant says something.
    for e in [
        BuildError::InvalidVlanId(5000),
        BuildError::BelowMinimumFrame { requested: 1 },
        BuildError::FrameTooSmall {
            requested: 60,
            needed: 70,
        },
        BuildError::TooLarge { ip_len: 70_000 },
        BuildError::BufferTooSmall {
            needed: 60,
            available: 0,
        },
        mixed.layout().unwrap_err(),
    ] {
        assert!(e.to_string().len() > 10, "{e:?}");
    }
}

#[test]
#[should_panic(expected = "invalid PacketSpec")]
fn build_panics_on_invalid_spec() {
    let _ = PacketSpec::udp(V4_SRC, V6_DST, 1, 2).build();
}

#[test]
#[should_panic(expected = "flags() on a UDP PacketSpec")]
fn tcp_setters_reject_udp() {
    let _ = base(Proto::Udp, false).flags(SYN);
}

#[test]
#[should_panic(expected = "zero_checksum() on a TCP PacketSpec")]
fn zero_checksum_rejects_tcp() {
    let _ = base(Proto::Tcp, false).zero_checksum(true);
}

#[test]
fn udp_zero_checksum_both_families() {
    for v6 in [false, true] {
        let spec = base(Proto::Udp, v6)
            .payload(b"abc".to_vec())
            .zero_checksum(true);
        let frame = verify(&spec);
        let at = spec.layout().unwrap().l4_offset + 6;
        assert_eq!(&frame[at..at + 2], &[0, 0]);
    }
}

/// A payload whose UDP checksum computes to zero, which must go on the wire
/// as 0xFFFF. Found by putting the complement of the checksum of an
/// all-zero payload into the first payload word: that makes the sum 0xFFFF.
#[test]
fn udp_computed_zero_is_sent_as_ffff() {
    for v6 in [false, true] {
        let zeros = base(Proto::Udp, v6).payload(vec![0; 4]);
        let at = zeros.layout().unwrap().l4_offset + 6;
        let frame = zeros.build();
        let c = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let mut payload = c.to_be_bytes().to_vec();
        payload.extend([0, 0]);
        let spec = base(Proto::Udp, v6).payload(payload);
        let frame = verify(&spec);
        assert_eq!(&frame[at..at + 2], &[0xff, 0xff], "v6={v6}");
    }
}

#[test]
fn tcp_computed_zero_stays_zero() {
    let zeros = base(Proto::Tcp, false).payload(vec![0; 4]);
    let at = zeros.layout().unwrap().l4_offset + 16;
    let frame = zeros.build();
    let c = u16::from_be_bytes([frame[at], frame[at + 1]]);
    let mut payload = c.to_be_bytes().to_vec();
    payload.extend([0, 0]);
    let frame = verify(&base(Proto::Tcp, false).payload(payload));
    assert_eq!(&frame[at..at + 2], &[0, 0]);
}

#[test]
fn all_flag_combinations() {
    for bits in 0..0x40u8 {
        let spec = base(Proto::Tcp, bits & 1 == 0).flags(TcpFlags(bits));
        verify(&spec);
    }
}

#[test]
fn flags_debug_reads_as_names() {
    assert_eq!(format!("{:?}", SYN | ACK), "SYN|ACK");
    assert_eq!(format!("{:?}", TcpFlags::NONE), "NONE");
    assert_eq!(format!("{:?}", FIN | RST | PSH), "FIN|RST|PSH");
    assert_eq!(format!("{:?}", TcpFlags(0x42)), "SYN|0x40");
    let mut f = SYN;
    f |= ACK;
    assert!(f.contains(SYN) && f.contains(ACK) && !f.contains(FIN));
    assert_eq!(f.bits(), 0x12);
}

#[test]
fn readme_example() {
    let frame = PacketSpec::tcp_v4(V4_SRC, V4_DST, 40_000, 80)
        .flags(SYN)
        .build();
    assert_eq!(frame.len(), 60);
    let spec = PacketSpec::udp_v6(V6_SRC, V6_DST, 5000, 53)
        .vlan(7)
        .frame_len(128);
    assert_eq!(verify(&spec).len(), 128);
    verify(&PacketSpec::tcp_v6(V6_SRC, V6_DST, 1, 2).flags(SYN));
    verify(&PacketSpec::udp_v4(V4_SRC, V4_DST, 1, 2));
}

#[test]
fn payload_pattern_and_accessors() {
    let spec = base(Proto::Udp, false).payload_len(600);
    let frame = verify(&spec);
    let off = spec.layout().unwrap().payload_offset;
    assert_eq!(frame[off], 0);
    assert_eq!(frame[off + 255], 255);
    assert_eq!(frame[off + 256], 0);
    assert_eq!(frame[off + 599], 87);
    assert_eq!(Payload::Len(3).len(), 3);
    assert!(Payload::Bytes(vec![]).is_empty());
    assert_eq!(spec.proto(), Proto::Udp);
    assert_eq!(spec.src_socket(), SocketAddr::new(V4_SRC.into(), 40_000));
    assert_eq!(spec.dst_socket(), SocketAddr::new(V4_DST.into(), 53));
    let moved = spec.src_port(1).dst_port(2).src_ip(V4_DST).dst_ip(V4_SRC);
    assert_eq!(moved.src_socket(), SocketAddr::new(V4_DST.into(), 1));
    assert_eq!(moved.dst_socket(), SocketAddr::new(V4_SRC.into(), 2));
    let macs = moved
        .src_mac([2, 1, 1, 1, 1, 1])
        .dst_mac([2, 2, 2, 2, 2, 2]);
    verify(&macs);
}

#[test]
fn between_uses_sockets_and_protocol() {
    let a = SocketAddr::new(V6_SRC.into(), 1111);
    let b = SocketAddr::new(V6_DST.into(), 2222);
    let t = PacketSpec::between(Proto::Tcp, a, b);
    assert_eq!(
        (t.proto(), t.src_socket(), t.dst_socket()),
        (Proto::Tcp, a, b)
    );
    let u = PacketSpec::between(Proto::Udp, a, b);
    assert_eq!(u.proto(), Proto::Udp);
    verify(&t);
    verify(&u);
}

#[test]
fn reply_to_syn_is_syn_ack() {
    let syn = base(Proto::Tcp, false)
        .flags(SYN)
        .seq(100)
        .vlan(9)
        .frame_len(64);
    let r = syn.reply();
    assert_eq!(r.src_socket(), syn.dst_socket());
    assert_eq!(r.dst_socket(), syn.src_socket());
    assert_eq!((r.src_mac, r.dst_mac), (syn.dst_mac, syn.src_mac));
    assert_eq!((r.vlan, r.frame_size), (Some(9), FrameSize::Exact(64)));
    let L4::Tcp(t) = r.l4 else { panic!() };
    // The SYN's exact-size padding is payload (64 - 58 header bytes), so the
    // SYN consumed 1 + 6.
    assert_eq!((t.flags, t.seq, t.ack), (SYN | ACK, SERVER_ISN, 107));
    verify(&r);
}

#[test]
fn reply_to_data_acks_it() {
    let data = base(Proto::Tcp, true)
        .flags(PSH | ACK)
        .seq(u32::MAX - 1)
        .ack_number(7)
        .payload_len(5);
    let L4::Tcp(t) = data.reply().l4 else {
        panic!()
    };
    assert_eq!((t.flags, t.seq, t.ack), (ACK, 7, 3), "ack wraps mod 2^32");
    let fin = base(Proto::Tcp, false)
        .flags(FIN | ACK)
        .seq(10)
        .ack_number(20);
    let L4::Tcp(t) = fin.reply().l4 else { panic!() };
    assert_eq!((t.flags, t.seq, t.ack), (ACK, 20, 11));
}

#[test]
fn reply_from_backend() {
    let backend: SocketAddr = "[2001:db8::b1]:8080".parse().unwrap();
    let fwd = base(Proto::Udp, true)
        .payload(b"q".to_vec())
        .zero_checksum(true);
    let r = fwd.reply_from(backend);
    assert_eq!(r.src_socket(), backend);
    assert_eq!(r.dst_socket(), fwd.src_socket());
    assert!(r.payload.is_empty());
    assert!(matches!(r.l4, L4::Udp(u) if u.zero_checksum));
    verify(&r);
}
