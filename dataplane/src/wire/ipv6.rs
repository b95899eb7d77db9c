//! IPv6 fixed header (RFC 8200) and a bounded extension-header walk.
//!
//! [`Packet::payload`] stops at `payload_len`, ignoring link padding. The
//! payload starts with whatever `next_header` names, possibly a chain of
//! extension headers: [`Packet::upper_layer`] finds the transport header.

use std::net::Ipv6Addr;

use super::{Error, IpProtocol, Result, get_array, get_u16, get_u32, set_u16, set_u32};

mod field {
    pub const VER_TC_FLOW: usize = 0;
    pub const LENGTH: usize = 4;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: usize = 8;
    pub const DST_ADDR: usize = 24;
    pub const PAYLOAD: usize = 40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// Most extension headers [`Packet::upper_layer`] will skip. Real traffic
/// carries at most two or three; a longer chain is an attack on parsers.
pub const MAX_EXT_HEADERS: usize = 8;

/// A read/write view of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Ensures version 6 and `40 + payload_len <= buffer length`.
    ///
    /// Jumbograms (payload length 0 plus a Jumbo Payload option) are read as
    /// an empty payload; they never cross an Ethernet link.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::Malformed);
        }
        if HEADER_LEN + usize::from(self.payload_len()) > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW] >> 4
    }

    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (get_u16(self.buffer.as_ref(), field::VER_TC_FLOW) >> 4) as u8
    }

    #[inline]
    pub fn flow_label(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::VER_TC_FLOW) & 0x000f_ffff
    }

    /// Length of everything after the fixed header, extension headers
    /// included.
    #[inline]
    pub fn payload_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(get_array::<16>(self.buffer.as_ref(), field::SRC_ADDR))
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(get_array::<16>(self.buffer.as_ref(), field::DST_ADDR))
    }

    /// Everything after the fixed header, up to `payload_len`.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &self.buffer.as_ref()[field::PAYLOAD..end]
    }

    /// Walks the extension-header chain to the upper-layer header.
    ///
    /// Skips Hop-by-Hop (only as the first header, as RFC 8200 requires),
    /// Routing and Destination Options headers, and returns the first other
    /// protocol with its offset within [`Packet::payload`]. That protocol is
    /// returned as is, so the caller tells the cases apart by value:
    /// TCP/UDP/ICMPv6 to process, [`IpProtocol::FRAGMENT`] for a fragment
    /// (not reassembled: drop and count), AH, ESP, No Next Header or
    /// anything unknown to pass on or drop.
    ///
    /// Errors: `Truncated` if a header runs past the payload, `Malformed`
    /// for a misplaced Hop-by-Hop header or more than [`MAX_EXT_HEADERS`].
    ///
    /// A Routing header with segments left is skipped like any other, so
    /// the destination address (and the pseudo-header built on it) is this
    /// hop's, not the final one: good enough for a load balancer, which
    /// never sees source-routed traffic to its VIPs in practice.
    pub fn upper_layer(&self) -> Result<(u8, usize)> {
        let payload = self.payload();
        let mut protocol = self.next_header();
        let mut offset = 0usize;
        for _ in 0..MAX_EXT_HEADERS {
            match protocol {
                IpProtocol::HOPOPTS | IpProtocol::ROUTING | IpProtocol::DSTOPTS => {
                    if protocol == IpProtocol::HOPOPTS && offset != 0 {
                        return Err(Error::Malformed);
                    }
                    // Every one of these starts with next header and a
                    // length in 8-octet units, not counting the first 8.
                    let (Some(&next), Some(&units)) =
                        (payload.get(offset), payload.get(offset + 1))
                    else {
                        return Err(Error::Truncated);
                    };
                    let len = (usize::from(units) + 1) * 8;
                    if offset + len > payload.len() {
                        return Err(Error::Truncated);
                    }
                    offset += len;
                    protocol = next;
                }
                _ => return Ok((protocol, offset)),
            }
        }
        match protocol {
            IpProtocol::HOPOPTS | IpProtocol::ROUTING | IpProtocol::DSTOPTS => {
                Err(Error::Malformed)
            }
            _ => Ok((protocol, offset)),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_TC_FLOW];
        *b = (*b & 0x0f) | (version << 4);
    }

    #[inline]
    pub fn set_traffic_class(&mut self, tc: u8) {
        let data = self.buffer.as_mut();
        let raw = get_u16(data, field::VER_TC_FLOW);
        set_u16(
            data,
            field::VER_TC_FLOW,
            (raw & 0xf00f) | (u16::from(tc) << 4),
        );
    }

    /// Sets the flow label; only the low 20 bits of `label` are used.
    #[inline]
    pub fn set_flow_label(&mut self, label: u32) {
        let data = self.buffer.as_mut();
        let raw = get_u32(data, field::VER_TC_FLOW);
        set_u32(
            data,
            field::VER_TC_FLOW,
            (raw & 0xfff0_0000) | (label & 0x000f_ffff),
        );
    }

    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_next_header(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::NXT_HDR] = protocol;
    }

    #[inline]
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    /// Rewrites the source address. IPv6 has no header checksum; the
    /// transport checksum still covers the address: follow with
    /// `update_checksum_for_addr_change` on the TCP/UDP/ICMPv6 view.
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR..field::SRC_ADDR + 16].copy_from_slice(&addr.octets());
    }

    /// Rewrites the destination address; see [`Packet::set_src_addr`] about
    /// the transport checksum.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR..field::DST_ADDR + 16].copy_from_slice(&addr.octets());
    }

    /// Everything after the fixed header, up to `payload_len`.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[field::PAYLOAD..end]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 2001:db8::1 -> 2001:db8::2, TC 0xb8 (EF), flow 0x12345, hop limit 64,
    // a Destination Options header (8 bytes: PadN) then 8 bytes of UDP,
    // then two bytes of link padding.
    const PACKET: [u8; 58] = [
        0x6b, 0x81, 0x23, 0x45, // ver 6, tc 0xb8, flow 0x12345
        0x00, 0x10, 0x3c, 0x40, // payload_len 16, next DSTOPTS, hop 64
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // src
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // dst
        0x11, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, // DSTOPTS -> UDP
        0x30, 0x39, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00, // UDP header
        0xee, 0xee, // padding
    ];

    fn addr(last: u8) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, 0, u16::from(last))
    }

    #[test]
    fn parse_golden() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 16);
        assert_eq!(p.next_header(), IpProtocol::DSTOPTS);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), addr(1));
        assert_eq!(p.dst_addr(), addr(2));
        assert_eq!(p.payload(), &PACKET[40..56]);
        assert_eq!(p.upper_layer(), Ok((IpProtocol::UDP, 8)));
    }

    #[test]
    fn build_golden() {
        let mut buf = [0u8; 58];
        buf[40..].copy_from_slice(&PACKET[40..]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version(6);
        p.set_traffic_class(0xb8);
        p.set_flow_label(0xfff1_2345); // high bits must not clobber TC
        p.set_payload_len(16);
        p.set_next_header(IpProtocol::DSTOPTS);
        p.set_hop_limit(64);
        p.set_src_addr(addr(1));
        p.set_dst_addr(addr(2));
        assert_eq!(buf, PACKET);
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.payload_mut()[8] = 0xff;
        assert_eq!(buf[48], 0xff);
    }

    #[test]
    fn rejects_bad_headers() {
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&PACKET[..n]), Err(Error::Truncated));
        }
        assert_eq!(Packet::new_checked(&PACKET[..55]), Err(Error::Truncated));
        assert!(Packet::new_checked(&PACKET[..56]).is_ok());
        let mut b = PACKET;
        b[0] = 0x4b;
        assert_eq!(Packet::new_checked(&b[..]), Err(Error::Malformed));
    }

    /// Builds a packet whose payload is `chain` and whose first next header
    /// is `first`.
    fn with_chain(first: u8, chain: &[u8]) -> Vec<u8> {
        let mut b = PACKET[..40].to_vec();
        b[6] = first;
        b[4..6].copy_from_slice(&(chain.len() as u16).to_be_bytes());
        b.extend_from_slice(chain);
        b
    }

    #[test]
    fn ext_header_walk() {
        let tcp = [0u8; 20];
        // No extension headers.
        let b = with_chain(IpProtocol::TCP, &tcp);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Ok((IpProtocol::TCP, 0)));

        // HBH (8) -> Routing (24, hdr_ext_len 2) -> DSTOPTS (8) -> TCP.
        let mut chain = vec![IpProtocol::ROUTING, 0, 1, 4, 0, 0, 0, 0];
        chain.extend_from_slice(&[IpProtocol::DSTOPTS, 2, 0, 0]);
        chain.extend_from_slice(&[0; 20]);
        chain.extend_from_slice(&[IpProtocol::TCP, 0, 1, 4, 0, 0, 0, 0]);
        chain.extend_from_slice(&tcp);
        let b = with_chain(IpProtocol::HOPOPTS, &chain);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Ok((IpProtocol::TCP, 40)));

        // Fragment, AH, ESP, No Next Header are reported, not skipped.
        for proto in [
            IpProtocol::FRAGMENT,
            IpProtocol::AH,
            IpProtocol::ESP,
            IpProtocol::NONE,
            253,
        ] {
            let chain = [proto, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            let b = with_chain(IpProtocol::DSTOPTS, &chain);
            let p = Packet::new_checked(&b[..]).unwrap();
            assert_eq!(p.upper_layer(), Ok((proto, 8)));
        }
    }

    #[test]
    fn ext_header_walk_errors() {
        // Hop-by-Hop anywhere but first.
        let chain = [
            IpProtocol::HOPOPTS,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            6,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        let b = with_chain(IpProtocol::DSTOPTS, &chain);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Malformed));

        // Extension header claims more than the payload holds.
        let chain = [IpProtocol::TCP, 1, 0, 0, 0, 0, 0, 0];
        let b = with_chain(IpProtocol::DSTOPTS, &chain);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Truncated));

        // Header cut before its length byte, and an empty payload.
        let b = with_chain(IpProtocol::ROUTING, &[IpProtocol::TCP]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Truncated));
        let b = with_chain(IpProtocol::DSTOPTS, &[]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Truncated));

        // Exactly MAX_EXT_HEADERS is fine, one more is refused.
        let chain_of = |n: usize| {
            let mut c = Vec::new();
            for i in 0..n {
                let next = if i + 1 == n {
                    IpProtocol::UDP
                } else {
                    IpProtocol::DSTOPTS
                };
                c.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
            }
            c
        };
        let b = with_chain(IpProtocol::DSTOPTS, &chain_of(MAX_EXT_HEADERS));
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Ok((IpProtocol::UDP, 8 * MAX_EXT_HEADERS)));
        let b = with_chain(IpProtocol::DSTOPTS, &chain_of(MAX_EXT_HEADERS + 1));
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Malformed));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            mut data in proptest::collection::vec(any::<u8>(), 0..160),
            len in any::<u16>(),
            first in prop::sample::select(vec![0u8, 43, 60, 44, 6]),
        ) {
            if data.len() >= HEADER_LEN {
                data[0] = 0x60 | (data[0] & 0x0f);
                let len = len % (data.len() as u16 - 30);
                data[4..6].copy_from_slice(&len.to_be_bytes());
                data[6] = first;
                // Bias chained next-header bytes toward extension headers.
                for i in (HEADER_LEN..data.len()).step_by(8) {
                    data[i] = [0, 43, 60, 44, 17, data[i]][usize::from(data[i] % 6)];
                    if let Some(l) = data.get_mut(i + 1) {
                        *l %= 3;
                    }
                }
            }
            if let Ok(mut p) = Packet::new_checked(&mut data[..]) {
                let _ = (
                    p.version(), p.traffic_class(), p.flow_label(), p.payload_len(),
                    p.next_header(), p.hop_limit(), p.src_addr(), p.dst_addr(), p.payload(),
                );
                if let Ok((_, off)) = p.upper_layer() {
                    prop_assert!(off <= p.payload().len());
                }
                p.set_hop_limit(1);
                let _ = p.payload_mut().len();
            }
        }

        /// Our parse (chain walk included) agrees with etherparse.
        #[test]
        fn parse_matches_etherparse(
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            hop in any::<u8>(),
            tc in any::<u8>(),
            flow in 0u32..0x10_0000,
            ext_lens in proptest::collection::vec(0u8..4, 0..4),
            payload in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            use etherparse::{IpNumber, Ipv6Header, Ipv6RawExtHeader};
            // A chain of Destination Options headers of random lengths.
            let mut chain = Vec::new();
            for (i, &units) in ext_lens.iter().enumerate() {
                let next = if i + 1 == ext_lens.len() { IpNumber::UDP } else { IpNumber::IPV6_DESTINATION_OPTIONS };
                let body = vec![0u8; usize::from(units) * 8 + 6];
                let ext = Ipv6RawExtHeader::new_raw(next, &body).unwrap();
                chain.extend_from_slice(&ext.to_bytes());
            }
            let first = if ext_lens.is_empty() { IpNumber::UDP } else { IpNumber::IPV6_DESTINATION_OPTIONS };
            let h = Ipv6Header {
                traffic_class: tc,
                flow_label: flow.try_into().unwrap(),
                payload_length: (chain.len() + payload.len()) as u16,
                next_header: first,
                hop_limit: hop,
                source: src,
                destination: dst,
            };
            let mut bytes = h.to_bytes().to_vec();
            bytes.extend_from_slice(&chain);
            bytes.extend_from_slice(&payload);

            let p = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(p.traffic_class(), tc);
            prop_assert_eq!(p.flow_label(), flow);
            prop_assert_eq!(p.payload_len(), h.payload_length);
            prop_assert_eq!(p.next_header(), first.0);
            prop_assert_eq!(p.hop_limit(), hop);
            prop_assert_eq!(p.src_addr(), Ipv6Addr::from(src));
            prop_assert_eq!(p.dst_addr(), Ipv6Addr::from(dst));
            let (proto, off) = p.upper_layer().unwrap();
            prop_assert_eq!((proto, off), (IpProtocol::UDP, chain.len()));

            let sliced = etherparse::Ipv6Slice::from_slice(&bytes).unwrap();
            prop_assert_eq!(sliced.payload().ip_number.0, proto);
            prop_assert_eq!(sliced.payload().payload, &p.payload()[off..]);
        }
    }
}
