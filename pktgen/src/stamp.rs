//! Sequence and transmit-time stamps carried in the L4 payload, for loss and
//! latency measurement by a sink.
//!
//! A stamp is [`STAMP_LEN`] bytes: the sequence number then the timestamp in
//! nanoseconds, both big-endian `u64`. It carries no magic number, so that it
//! fits in a minimum-size IPv4 UDP frame (18 payload bytes); a sink must know
//! that the traffic it reads is stamped.
//!
//! The stamp functions find the payload by parsing the frame (Ethernet, at
//! most one 802.1Q tag, IPv4 with or without options or IPv6 without
//! extension headers, TCP or UDP), so they work on frames that a dataplane
//! has rewritten, not only on frames pktgen built.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::checksum;
use crate::spec::{
    ETH_HEADER_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, IPPROTO_TCP, IPPROTO_UDP,
    IPV6_HEADER_LEN, Proto, TCP_HEADER_LEN, UDP_HEADER_LEN, get16, put16,
};

/// Bytes a stamp occupies in the payload.
pub const STAMP_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub seq: u64,
    pub nanos: u64,
}

/// Why a frame could not be stamped or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StampError {
    /// Not Ethernet / IP / TCP-or-UDP in a form the stamp parser knows, or
    /// truncated.
    Unparseable,
    /// The payload ends before `offset + STAMP_LEN`.
    PayloadTooShort { payload_len: usize, needed: usize },
}

impl fmt::Display for StampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unparseable => {
                f.write_str("frame is not Ethernet/IP/TCP-or-UDP as pktgen writes it")
            }
            Self::PayloadTooShort {
                payload_len,
                needed,
            } => write!(
                f,
                "L4 payload of {payload_len} bytes is too short for a stamp needing {needed}"
            ),
        }
    }
}

impl std::error::Error for StampError {}

struct Located {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4_offset: usize,
    payload_offset: usize,
    ip_end: usize,
}

fn locate(frame: &[u8]) -> Result<Located, StampError> {
    let need = |end: usize| {
        if frame.len() >= end {
            Ok(())
        } else {
            Err(StampError::Unparseable)
        }
    };
    need(ETH_HEADER_LEN)?;
    let mut l3 = ETH_HEADER_LEN;
    let mut ethertype = get16(frame, 12);
    if ethertype == ETHERTYPE_VLAN {
        need(ETH_HEADER_LEN + 4)?;
        ethertype = get16(frame, 16);
        l3 += 4;
    }
    let (src, dst, proto, l4_offset, ip_end) = match ethertype {
        ETHERTYPE_IPV4 => {
            need(l3 + 20)?;
            let ihl = usize::from(frame[l3] & 0x0f) * 4;
            let total = usize::from(get16(frame, l3 + 2));
            if frame[l3] >> 4 != 4 || ihl < 20 || total < ihl {
                return Err(StampError::Unparseable);
            }
            // A fragment's payload is not where its L4 header says.
            if get16(frame, l3 + 6) & 0x3fff != 0 {
                return Err(StampError::Unparseable);
            }
            let src: [u8; 4] = frame[l3 + 12..l3 + 16].try_into().expect("4 bytes");
            let dst: [u8; 4] = frame[l3 + 16..l3 + 20].try_into().expect("4 bytes");
            (
                IpAddr::from(Ipv4Addr::from(src)),
                IpAddr::from(Ipv4Addr::from(dst)),
                frame[l3 + 9],
                l3 + ihl,
                l3 + total,
            )
        }
        ETHERTYPE_IPV6 => {
            need(l3 + IPV6_HEADER_LEN)?;
            if frame[l3] >> 4 != 6 {
                return Err(StampError::Unparseable);
            }
            let src: [u8; 16] = frame[l3 + 8..l3 + 24].try_into().expect("16 bytes");
            let dst: [u8; 16] = frame[l3 + 24..l3 + 40].try_into().expect("16 bytes");
            let l4 = l3 + IPV6_HEADER_LEN;
            (
                IpAddr::from(Ipv6Addr::from(src)),
                IpAddr::from(Ipv6Addr::from(dst)),
                frame[l3 + 6],
                l4,
                l4 + usize::from(get16(frame, l3 + 4)),
            )
        }
        _ => return Err(StampError::Unparseable),
    };
    need(ip_end)?;
    let l4_len = match proto {
        IPPROTO_TCP if ip_end >= l4_offset + TCP_HEADER_LEN => {
            let data_offset = usize::from(frame[l4_offset + 12] >> 4) * 4;
            if data_offset < TCP_HEADER_LEN {
                return Err(StampError::Unparseable);
            }
            data_offset
        }
        IPPROTO_UDP => UDP_HEADER_LEN,
        _ => return Err(StampError::Unparseable),
    };
    if l4_offset + l4_len > ip_end {
        return Err(StampError::Unparseable);
    }
    Ok(Located {
        src,
        dst,
        proto,
        l4_offset,
        payload_offset: l4_offset + l4_len,
        ip_end,
    })
}

fn stamp_range(loc: &Located, offset: usize) -> Result<std::ops::Range<usize>, StampError> {
    let payload_len = loc.ip_end - loc.payload_offset;
    let needed = offset.saturating_add(STAMP_LEN);
    if needed > payload_len {
        return Err(StampError::PayloadTooShort {
            payload_len,
            needed,
        });
    }
    let start = loc.payload_offset + offset;
    Ok(start..start + STAMP_LEN)
}

/// Writes a stamp `offset` bytes into the L4 payload and recomputes the L4
/// checksum (a UDP checksum of 0, meaning "none", stays 0).
///
/// Recomputing rather than patching incrementally keeps this obviously
/// correct; at the frame sizes a latency probe uses the cost is a few dozen
/// additions. A deliberately wrong checksum in the frame is thereby fixed.
pub fn stamp_payload(
    frame: &mut [u8],
    offset: usize,
    seq: u64,
    nanos: u64,
) -> Result<(), StampError> {
    let loc = locate(frame)?;
    let range = stamp_range(&loc, offset)?;
    frame[range.start..range.start + 8].copy_from_slice(&seq.to_be_bytes());
    frame[range.start + 8..range.end].copy_from_slice(&nanos.to_be_bytes());

    let seg = &mut frame[loc.l4_offset..loc.ip_end];
    let at = if loc.proto == IPPROTO_TCP { 16 } else { 6 };
    let udp = loc.proto == IPPROTO_UDP;
    if udp && get16(seg, at) == 0 {
        return Ok(());
    }
    put16(seg, at, 0);
    let c = checksum::l4(loc.src, loc.dst, loc.proto, seg, udp);
    put16(seg, at, c);
    Ok(())
}

/// Where a TCP or UDP frame comes from and goes to, as the stamp parser
/// finds it (same accepted forms: at most one 802.1Q tag, IPv4 with options
/// but not fragmented, IPv6 without extension headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    pub src_port: u16,
    pub dst_port: u16,
    /// Offset of the L4 payload from the start of the frame.
    pub payload_offset: usize,
    /// L4 payload length, as the IP length says (Ethernet trailer excluded).
    pub payload_len: usize,
}

/// Parses the addressing of a TCP or UDP frame.
pub fn parse_frame(frame: &[u8]) -> Result<FrameInfo, StampError> {
    let loc = locate(frame)?;
    Ok(FrameInfo {
        src: loc.src,
        dst: loc.dst,
        proto: if loc.proto == IPPROTO_TCP {
            Proto::Tcp
        } else {
            Proto::Udp
        },
        src_port: get16(frame, loc.l4_offset),
        dst_port: get16(frame, loc.l4_offset + 2),
        payload_offset: loc.payload_offset,
        payload_len: loc.ip_end - loc.payload_offset,
    })
}

/// Reads the stamp `offset` bytes into the L4 payload.
pub fn read_stamp(frame: &[u8], offset: usize) -> Result<Stamp, StampError> {
    let loc = locate(frame)?;
    let r = stamp_range(&loc, offset)?;
    let word = |at: usize| u64::from_be_bytes(frame[at..at + 8].try_into().expect("8 bytes"));
    Ok(Stamp {
        seq: word(r.start),
        nanos: word(r.start + 8),
    })
}
