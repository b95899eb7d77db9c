//! The super-frame cutter (`limpet_dataplane::gso`) over arbitrary frames.
//! Input: byte 0 picks the transport (bit 0: TCP or UDP) and the room a
//! segment may take (`64 + 16 * (byte >> 1)` bytes), bytes 1-2 the segment
//! size (little-endian), the rest is the frame. Where `parse` accepts the
//! frame, checked:
//! - every segment fits the room, repeats the headers, and carries exactly
//!   `segment_size` payload bytes (the last one: what is left);
//! - the payloads, in order, are the super-frame's payload, once;
//! - the IP length fields say the segment's own length, and the IPv4
//!   header and TCP/UDP checksums verify against the reference RFC 1071
//!   sum (`limpet_fuzz::refsum`), pseudo-header included;
//! - nothing panics, and a segment past the last writes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use limpet_dataplane::gso::{GsoKind, SuperFrame};
use limpet_fuzz::refsum;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let Some((size, frame)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let kind = if ctl & 1 == 0 {
        GsoKind::Tcp
    } else {
        GsoKind::Udp
    };
    let size = u16::from_le_bytes(*size);
    let room = 64 + 16 * usize::from(ctl >> 1);
    let Ok(sf) = SuperFrame::parse(frame, kind, size, room) else {
        return;
    };
    let (l3, l4, headers) = (sf.l3(), sf.l4(), sf.headers());
    let mut out = vec![0u8; room + 64];
    let mut payload = Vec::new();
    for i in 0..sf.segments() {
        let len = sf.write_segment(frame, i, &mut out);
        assert!(
            len >= headers && len <= room,
            "segment {i}: {len} bytes, room {room}"
        );
        let carried = len - headers;
        if i + 1 < sf.segments() {
            assert_eq!(carried, usize::from(size), "segment {i}");
        } else {
            assert!(carried <= usize::from(size));
        }
        let seg = &out[..len];
        assert_eq!(seg[..l3], frame[..l3], "the link header is repeated");
        let word = |at: usize| usize::from(u16::from_be_bytes([seg[at], seg[at + 1]]));
        let l4_len = len - l4;
        let pseudo = if sf.is_ipv6() {
            assert_eq!(word(l3 + 4), len - l3 - 40, "IPv6 payload length");
            let src: [u8; 16] = seg[l3 + 8..l3 + 24].try_into().unwrap();
            let dst: [u8; 16] = seg[l3 + 24..l3 + 40].try_into().unwrap();
            refsum::pseudo_v6(src, dst, seg[l3 + 6], l4_len)
        } else {
            assert_eq!(word(l3 + 2), len - l3, "IPv4 total length");
            assert_eq!(refsum::sum(&seg[l3..l4]), 0xffff, "IPv4 header checksum");
            let src: [u8; 4] = seg[l3 + 12..l3 + 16].try_into().unwrap();
            let dst: [u8; 4] = seg[l3 + 16..l3 + 20].try_into().unwrap();
            refsum::pseudo_v4(src, dst, seg[l3 + 9], l4_len)
        };
        if kind == GsoKind::Udp {
            assert_eq!(word(l4 + 4), l4_len, "UDP length");
        }
        assert!(
            refsum::verifies(pseudo, &seg[l4..]),
            "transport checksum of segment {i}"
        );
        payload.extend_from_slice(&seg[headers..]);
    }
    assert_eq!(
        payload,
        frame[headers..sf.end()],
        "the payload, in order, once"
    );
    assert_eq!(sf.write_segment(frame, sf.segments(), &mut out), 0);
});
