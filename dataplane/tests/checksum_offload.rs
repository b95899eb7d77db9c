//! Frames whose TCP/UDP checksum a local sender left to offload (Linux's
//! `CHECKSUM_PARTIAL`: the field holds only the pseudo-header's folded sum,
//! and an `AF_PACKET` ring flags the frame `TP_STATUS_CSUMNOTREADY`), over
//! the real pipeline on the in-memory backend. Whatever the mode (`nat`
//! forward and reply, `dsr`), family and protocol, limpet sends exactly the
//! bytes it sends for the same packet with its checksum complete, and
//! etherparse verifies them; each completion is counted. On a backend that
//! cannot flag them (`AF_XDP`: `checksum_state_unknown`), the same frames
//! unflagged come out the same, and complete checksums are left alone. A super-frame
//! (GRO/GSO, segmentation offloads on) that reaches the pipeline whole,
//! longer than the backend can send, is dropped and counted, not
//! forwarded (the `AF_PACKET` backend cuts super-frames before the
//! pipeline: `tests/afpacket.rs`).

mod common;

use common::{CLIENT_MAC, Harness, LIMPET_MAC, backend, backend_mac, service};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use limpet_dataplane::io::MemoryIo;
use limpet_dataplane::pipeline::Action;
use limpet_dataplane::snapshot::{Affinity, ForwardMode, ServicePortSpec};
use limpet_dataplane::stats::DropReason;
use limpet_pktgen::{ACK, PSH, PacketSpec, SYN};
use proptest::prelude::*;
use std::net::IpAddr;

const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8::10";
const BE4: &str = "203.0.113.7";
const BE6: &str = "2001:db8:be::7";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn specs(mode: ForwardMode, protocol: u8) -> Vec<ServicePortSpec> {
    let sticky = Affinity::client_ip(10_800);
    vec![
        service(1, VIP4, protocol, sticky, mode, vec![backend(BE4)]),
        service(2, VIP6, protocol, sticky, mode, vec![backend(BE6)]),
    ]
}

/// RFC 1071 the plain way, for the pseudo-header: independent of limpet's
/// own checksum code.
fn ones_sum(data: &[u8]) -> u32 {
    let mut acc: u32 = data
        .chunks(2)
        .map(|w| (u32::from(w[0]) << 8) | u32::from(w.get(1).copied().unwrap_or(0)))
        .sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Where the transport header starts, its checksum field, and the
/// pseudo-header's folded sum, read with etherparse.
fn partial_field(frame: &[u8]) -> (usize, u16) {
    let p = SlicedPacket::from_ethernet(frame).expect("a frame etherparse reads");
    let (pseudo, l4) = match p.net.as_ref().expect("IP") {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            let mut b = Vec::new();
            b.extend_from_slice(&h.source());
            b.extend_from_slice(&h.destination());
            let len = v4.payload().payload.len() as u16;
            b.extend_from_slice(&[0, h.protocol().0]);
            b.extend_from_slice(&len.to_be_bytes());
            (b, v4.payload().payload.as_ptr())
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            let mut b = Vec::new();
            b.extend_from_slice(&h.source());
            b.extend_from_slice(&h.destination());
            let len = v6.payload().payload.len() as u32;
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&[0, 0, 0, h.next_header().0]);
            (b, v6.payload().payload.as_ptr())
        }
        NetSlice::Arp(_) => unreachable!(),
    };
    let l4 = l4 as usize - frame.as_ptr() as usize;
    let field = match p.transport.as_ref().expect("TCP or UDP") {
        TransportSlice::Tcp(_) => l4 + 16,
        TransportSlice::Udp(_) => l4 + 6,
        _ => unreachable!(),
    };
    (field, ones_sum(&pseudo) as u16)
}

/// `frame` as its sender hands it over with checksum offload on.
fn partial(frame: &[u8]) -> Vec<u8> {
    let (field, pseudo) = partial_field(frame);
    let mut f = frame.to_vec();
    f[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
    f
}

fn checksum_valid(frame: &[u8]) -> bool {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let (src, dst): (Vec<u8>, Vec<u8>) = match p.net.as_ref().unwrap() {
        NetSlice::Ipv4(v4) => (
            v4.header().source().to_vec(),
            v4.header().destination().to_vec(),
        ),
        NetSlice::Ipv6(v6) => (
            v6.header().source().to_vec(),
            v6.header().destination().to_vec(),
        ),
        NetSlice::Arp(_) => unreachable!(),
    };
    match p.transport.as_ref().unwrap() {
        TransportSlice::Tcp(t) => {
            let want = if src.len() == 4 {
                t.calc_checksum_ipv4(src[..].try_into().unwrap(), dst[..].try_into().unwrap())
            } else {
                t.calc_checksum_ipv6(src[..].try_into().unwrap(), dst[..].try_into().unwrap())
            };
            want.ok() == Some(t.checksum())
        }
        TransportSlice::Udp(u) => {
            let h = u.to_header();
            let want = if src.len() == 4 {
                h.calc_checksum_ipv4_raw(
                    src[..].try_into().unwrap(),
                    dst[..].try_into().unwrap(),
                    u.payload(),
                )
            } else {
                h.calc_checksum_ipv6_raw(
                    src[..].try_into().unwrap(),
                    dst[..].try_into().unwrap(),
                    u.payload(),
                )
            };
            want.ok() == Some(u.checksum())
        }
        _ => false,
    }
}

/// Sends `frame` (flagged partial or not) and returns what went out.
fn through(h: &mut Harness, frame: &[u8], flagged: bool) -> Vec<u8> {
    let io = h.worker.io_mut();
    let injected = if flagged {
        io.inject_partial(frame, 0)
    } else {
        io.inject(frame, 0)
    };
    assert!(injected);
    h.worker.poll();
    let actions = h.worker.last_actions(1).to_vec();
    assert_eq!(actions, [Action::Forward]);
    h.worker.io_mut().take_sent().expect("forwarded").1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn partial_checksums_are_completed_before_forwarding(
        v6 in any::<bool>(),
        tcp in any::<bool>(),
        dsr in any::<bool>(),
        sport in 1024u16..=65_000,
        payload in proptest::collection::vec(any::<u8>(), 0..1200),
        reply_payload in proptest::collection::vec(any::<u8>(), 0..1200),
    ) {
        let (client, vip, be) = if v6 {
            (ip("2001:db8:c1::9"), ip(VIP6), ip(BE6))
        } else {
            (ip("198.18.0.9"), ip(VIP4), ip(BE4))
        };
        let mode = if dsr { ForwardMode::Dsr } else { ForwardMode::Nat };
        let protocol = if tcp { 6 } else { 17 };
        let first = if tcp {
            PacketSpec::tcp(client, vip, sport, 80).flags(SYN).payload(payload.clone())
        } else {
            PacketSpec::udp(client, vip, sport, 80).payload(payload.clone())
        }
        .src_mac(CLIENT_MAC)
        .dst_mac(LIMPET_MAC)
        .build();
        let reply = if tcp {
            PacketSpec::tcp(be, client, 9376, sport).flags(PSH | ACK).payload(reply_payload)
        } else {
            PacketSpec::udp(be, client, 9376, sport).payload(reply_payload)
        }
        .src_mac(backend_mac(be))
        .dst_mac(LIMPET_MAC)
        .build();

        // The same packets, checksums complete, on a worker of their own.
        let mut complete = Harness::new(specs(mode, protocol));
        let want_first = through(&mut complete, &first, false);
        prop_assert!(checksum_valid(&want_first));

        let mut offloaded = Harness::new(specs(mode, protocol));
        let got_first = through(&mut offloaded, &partial(&first), true);
        prop_assert_eq!(&got_first, &want_first, "first packet");
        prop_assert_eq!(offloaded.worker.stats().checksums_completed, 1);
        prop_assert_eq!(complete.worker.stats().checksums_completed, 0);

        // A backend that cannot say which frames are partial: the
        // pipeline finds them by their checksum field.
        let unknown = || {
            let mut io = MemoryIo::new(256);
            io.checksum_state_unknown = true;
            Harness::with_io(specs(mode, protocol), io, |_| {})
        };
        let mut detecting = unknown();
        let found_first = through(&mut detecting, &partial(&first), false);
        prop_assert_eq!(&found_first, &want_first, "first packet, unflagged");
        prop_assert_eq!(detecting.worker.stats().checksums_completed, 1);
        // Complete checksums are left as they are.
        let mut checking = unknown();
        prop_assert_eq!(&through(&mut checking, &first, false), &want_first);
        prop_assert_eq!(checking.worker.stats().checksums_completed, 0);

        if !dsr {
            // A reply from a backend on this host, offloaded too.
            let want_reply = through(&mut complete, &reply, false);
            prop_assert!(checksum_valid(&want_reply));
            let got_reply = through(&mut offloaded, &partial(&reply), true);
            prop_assert_eq!(&got_reply, &want_reply, "reply");
            prop_assert_eq!(offloaded.worker.stats().checksums_completed, 2);
            let found_reply = through(&mut detecting, &partial(&reply), false);
            prop_assert_eq!(&found_reply, &want_reply, "reply, unflagged");
            prop_assert_eq!(detecting.worker.stats().checksums_completed, 2);
        }
    }
}

/// A frame that only claims to be partial with a transport header cut
/// short is not touched past its end, and is dropped as truncated.
#[test]
fn a_short_partial_frame_is_dropped_not_completed() {
    let mut h = Harness::new(specs(ForwardMode::Nat, 6));
    let mut f = PacketSpec::tcp(ip("198.18.0.9"), ip(VIP4), 4000, 80)
        .flags(SYN)
        .src_mac(CLIENT_MAC)
        .dst_mac(LIMPET_MAC)
        .unpadded()
        .build();
    f.truncate(14 + 20 + 10);
    assert!(h.worker.io_mut().inject_partial(&f, 0));
    h.worker.poll();
    assert_eq!(
        h.worker.last_actions(1),
        [Action::Drop(DropReason::Truncated)]
    );
    assert_eq!(h.worker.stats().checksums_completed, 0);
}

/// A frame longer than the backend's `max_frame` (a GRO super-frame) is
/// dropped as `oversized`; one that fits is forwarded.
#[test]
fn a_super_frame_is_dropped_and_counted() {
    let mut io = MemoryIo::new(64);
    io.max_frame = 1514;
    let mut h = Harness::with_io(specs(ForwardMode::Nat, 6), io, |_| {});
    let frame = |sport: u16, len: usize| {
        PacketSpec::tcp(ip("198.18.0.9"), ip(VIP4), sport, 80)
            .flags(ACK)
            .payload(vec![7; len])
            .src_mac(CLIENT_MAC)
            .dst_mac(LIMPET_MAC)
            .build()
    };
    let syn = PacketSpec::tcp(ip("198.18.0.9"), ip(VIP4), 4000, 80)
        .flags(SYN)
        .src_mac(CLIENT_MAC)
        .dst_mac(LIMPET_MAC)
        .build();
    assert_eq!(h.send(&syn).0, Action::Forward);
    let fits = frame(4000, 1514 - 54);
    assert_eq!(fits.len(), 1514);
    assert_eq!(h.send(&fits).0, Action::Forward);
    // Two segments merged, within what the in-memory buffer holds.
    let merged = frame(4000, 1800 - 54);
    let (action, out) = h.send(&merged);
    assert_eq!(action, Action::Drop(DropReason::Oversized));
    assert!(out.is_none());
    assert_eq!(h.worker.stats().dropped(DropReason::Oversized), 1);
}
