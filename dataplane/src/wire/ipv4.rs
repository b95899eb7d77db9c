//! IPv4 headers (RFC 791), options allowed.
//!
//! The buffer may be longer than the datagram (Ethernet pads short frames
//! to 60 bytes); [`Packet::payload`] stops at `total_len`, so the transport
//! view built on it sees exactly the segment its checksum covers.

use std::net::Ipv4Addr;

use super::checksum;
use super::{Error, Result, get_array, get_u16, set_u16};

mod field {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC_ADDR: usize = 12;
    pub const DST_ADDR: usize = 16;
    pub const OPTIONS: usize = 20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::OPTIONS;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A read/write view of an IPv4 packet.
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

    /// Ensures version 4, `IHL >= 5`, a header that fits the buffer, and
    /// `header_len <= total_len <= buffer length`. The checksum is not
    /// verified here: see [`Packet::verify_checksum`].
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 || self.header_len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if self.header_len() > len {
            return Err(Error::Truncated);
        }
        let total = usize::from(self.total_len());
        if total < self.header_len() {
            return Err(Error::Malformed);
        }
        if total > len {
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
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    #[inline]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    #[inline]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Length of the datagram, header included.
    #[inline]
    pub fn total_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT)
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (get_u16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// True for any piece of a fragmented datagram, first one included:
    /// none of them can be load-balanced on ports alone.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & (FLAG_MF | OFFSET_MASK) != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_array::<4>(self.buffer.as_ref(), field::SRC_ADDR))
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_array::<4>(self.buffer.as_ref(), field::DST_ADDR))
    }

    /// True if the header checksum (options included) is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        let data = self.buffer.as_ref();
        let header_len = self.header_len();
        let sum = match data.first_chunk::<HEADER_LEN>() {
            // No options, as nearly every packet: a fixed-size sum.
            Some(header) if header_len == HEADER_LEN => checksum::sum20(header),
            _ => checksum::sum(&data[..header_len]),
        };
        checksum::fold(sum) == 0xffff
    }

    /// The option bytes, empty for a 20-byte header.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }

    /// The datagram's payload, up to `total_len` (link padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets IHL from a length in bytes (a multiple of 4, 20..=60).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) as u8 & 0x0f);
    }

    #[inline]
    pub fn set_dscp(&mut self, dscp: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (dscp << 2);
    }

    #[inline]
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0xfc) | (ecn & 0x03);
    }

    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_ident(&mut self, ident: u16) {
        set_u16(self.buffer.as_mut(), field::IDENT, ident);
    }

    #[inline]
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flag(FLAG_DF, value);
    }

    #[inline]
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flag(FLAG_MF, value);
    }

    /// Sets the fragment offset from a byte offset (a multiple of 8).
    #[inline]
    pub fn set_frag_offset(&mut self, offset: u16) {
        let data = self.buffer.as_mut();
        let raw = get_u16(data, field::FLG_OFF);
        set_u16(data, field::FLG_OFF, (raw & !OFFSET_MASK) | (offset >> 3));
    }

    #[inline]
    fn set_flag(&mut self, flag: u16, value: bool) {
        let data = self.buffer.as_mut();
        let raw = get_u16(data, field::FLG_OFF);
        let raw = if value { raw | flag } else { raw & !flag };
        set_u16(data, field::FLG_OFF, raw);
    }

    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    #[inline]
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    #[inline]
    pub fn set_checksum(&mut self, checksum: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR..field::SRC_ADDR + 4].copy_from_slice(&addr.octets());
    }

    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR..field::DST_ADDR + 4].copy_from_slice(&addr.octets());
    }

    /// Computes the header checksum from scratch and stores it.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let csum = checksum::checksum(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(csum);
    }

    /// Rewrites the source address, updating the header checksum
    /// incrementally. The transport checksum covers the address too: follow
    /// with `update_checksum_for_addr_change` on the TCP/UDP view.
    #[inline]
    pub fn set_src_addr_update_checksum(&mut self, addr: Ipv4Addr) {
        self.replace_addr(field::SRC_ADDR, addr);
    }

    /// Rewrites the destination address, updating the header checksum
    /// incrementally. The transport checksum covers the address too: follow
    /// with `update_checksum_for_addr_change` on the TCP/UDP view.
    #[inline]
    pub fn set_dst_addr_update_checksum(&mut self, addr: Ipv4Addr) {
        self.replace_addr(field::DST_ADDR, addr);
    }

    #[inline]
    fn replace_addr(&mut self, at: usize, addr: Ipv4Addr) {
        let data = self.buffer.as_mut();
        let new = addr.octets();
        let csum = get_u16(data, field::CHECKSUM);
        let csum = checksum::update_bytes(csum, &data[at..at + 4], &new);
        data[at..at + 4].copy_from_slice(&new);
        set_u16(data, field::CHECKSUM, csum);
    }

    /// Decrements the TTL by one, updating the checksum incrementally
    /// (RFC 1624). A TTL of 0 is left alone: the caller must have dropped
    /// (or answered with Time Exceeded) anything arriving with TTL <= 1.
    #[inline]
    pub fn decrement_ttl_update_checksum(&mut self) {
        let data = self.buffer.as_mut();
        let ttl = data[field::TTL];
        let new_ttl = ttl.saturating_sub(1);
        // TTL is the high byte of the 16-bit word it shares with protocol.
        let proto = data[field::PROTOCOL];
        let old_word = u16::from_be_bytes([ttl, proto]);
        let new_word = u16::from_be_bytes([new_ttl, proto]);
        let csum = checksum::update_u16(get_u16(data, field::CHECKSUM), old_word, new_word);
        data[field::TTL] = new_ttl;
        set_u16(data, field::CHECKSUM, csum);
    }

    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let header_len = self.header_len();
        &mut self.buffer.as_mut()[field::OPTIONS..header_len]
    }

    /// The payload, up to `total_len`.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
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
    use crate::wire::IpProtocol;
    use proptest::prelude::*;

    // IPv4 + UDP DNS query header as seen on the wire, followed by two bytes
    // of Ethernet padding that must not leak into the payload.
    // 192.0.2.1 -> 198.51.100.53, ident 0x1c46, DF, TTL 64, UDP.
    const PACKET: [u8; 32] = [
        0x45, 0x00, 0x00, 0x1e, // ver/ihl, tos, total_len 30
        0x1c, 0x46, 0x40, 0x00, // ident, DF
        0x40, 0x11, 0x32, 0x1f, // ttl 64, udp, checksum
        192, 0, 2, 1, // src
        198, 51, 100, 53, // dst
        0xd4, 0x31, 0x00, 0x35, 0x00, 0x0a, 0x00, 0x00, 0xab, 0xcd, // 10 bytes payload
        0xee, 0xee, // padding
    ];

    #[test]
    fn parse_golden() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!((p.dscp(), p.ecn()), (0, 0));
        assert_eq!(p.total_len(), 30);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), IpProtocol::UDP);
        assert_eq!(p.checksum(), 0x321f);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(198, 51, 100, 53));
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &PACKET[20..30]);
    }

    #[test]
    fn build_golden() {
        let mut buf = [0u8; 32];
        buf[20..].copy_from_slice(&PACKET[20..]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version(4);
        p.set_header_len(20);
        p.set_dscp(0);
        p.set_ecn(0);
        p.set_total_len(30);
        p.set_ident(0x1c46);
        p.set_dont_frag(true);
        p.set_more_frags(false);
        p.set_frag_offset(0);
        p.set_ttl(64);
        p.set_protocol(IpProtocol::UDP);
        p.set_src_addr(Ipv4Addr::new(192, 0, 2, 1));
        p.set_dst_addr(Ipv4Addr::new(198, 51, 100, 53));
        p.fill_checksum();
        assert_eq!(buf, PACKET);
    }

    #[test]
    fn field_setters_roundtrip() {
        let mut buf = PACKET;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.set_dscp(46);
        p.set_ecn(3);
        p.set_more_frags(true);
        p.set_dont_frag(false);
        p.set_frag_offset(1480);
        assert_eq!((p.dscp(), p.ecn()), (46, 3));
        assert!(p.more_frags() && !p.dont_frag());
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.is_fragment());
        p.set_more_frags(false);
        // Last fragment: MF clear but offset set.
        assert!(p.is_fragment());
        p.set_frag_offset(0);
        assert!(!p.is_fragment());
        p.payload_mut()[0] = 0x99;
        assert_eq!(buf[20], 0x99);
    }

    #[test]
    fn options_golden() {
        // IHL 6: one 4-byte Router Alert option (94 04 00 00), IGMP.
        let mut pkt = [
            0x46, 0xc0, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0x01, 0x02, 0x00, 0x00, 192, 0, 2, 1,
            224, 0, 0, 22, 0x94, 0x04, 0x00, 0x00, 0x22, 0x00, 0xfa, 0x02, 0x00, 0x00, 0x00, 0x01,
        ];
        let mut p = Packet::new_checked(&mut pkt[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(p.options_mut().len(), 4);
        assert_eq!(p.payload().len(), 8);
        assert_eq!(p.payload()[0], 0x22);
        assert_eq!(p.dscp(), 48);
        let c = p.checksum();
        // The checksum must cover the options.
        p.options_mut()[0] = 0x95;
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert_ne!(p.checksum(), c);
    }

    #[test]
    fn nat_rewrite_golden() {
        let mut buf = PACKET;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.set_dst_addr_update_checksum(Ipv4Addr::new(203, 0, 113, 9));
        p.set_src_addr_update_checksum(Ipv4Addr::new(198, 18, 0, 1));
        assert!(p.verify_checksum());
        let incremental = p.checksum();
        p.fill_checksum();
        assert_eq!(p.checksum(), incremental);
        assert_eq!(p.dst_addr(), Ipv4Addr::new(203, 0, 113, 9));
        assert_eq!(p.src_addr(), Ipv4Addr::new(198, 18, 0, 1));
    }

    #[test]
    fn decrement_ttl_golden() {
        let mut buf = PACKET;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.decrement_ttl_update_checksum();
        assert_eq!(p.ttl(), 63);
        // 0x321f + 0x0100, RFC 1141's shortcut, as the from-scratch value.
        assert_eq!(p.checksum(), 0x331f);
        assert!(p.verify_checksum());
        p.set_ttl(1);
        p.fill_checksum();
        p.decrement_ttl_update_checksum();
        assert_eq!(p.ttl(), 0);
        assert!(p.verify_checksum());
        let c = p.checksum();
        p.decrement_ttl_update_checksum();
        assert_eq!((p.ttl(), p.checksum()), (0, c));
    }

    #[test]
    fn rejects_bad_headers() {
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&PACKET[..n]), Err(Error::Truncated));
        }
        // total_len (30) beyond the buffer.
        assert_eq!(Packet::new_checked(&PACKET[..29]), Err(Error::Truncated));
        assert!(Packet::new_checked(&PACKET[..30]).is_ok());

        let with = |at: usize, value: u8| {
            let mut b = PACKET;
            b[at] = value;
            Packet::new_checked(b).map(|_| ())
        };
        assert_eq!(with(0, 0x65), Err(Error::Malformed)); // version 6
        assert_eq!(with(0, 0x44), Err(Error::Malformed)); // IHL 4
        assert_eq!(with(0, 0x4f), Err(Error::Truncated)); // IHL 15 > buffer
        assert_eq!(with(3, 19), Err(Error::Malformed)); // total < header
        assert_eq!(with(3, 20), Ok(())); // empty payload is fine
        assert_eq!(with(2, 0x01), Err(Error::Truncated)); // total 286
    }

    /// Turns random bytes into something that often passes `check_len`, so
    /// the accessor calls below are exercised on odd but valid headers.
    fn plausible(mut data: Vec<u8>, ihl: u8, total: u16) -> Vec<u8> {
        if data.len() >= HEADER_LEN {
            data[0] = 0x40 | (ihl & 0x0f);
            let total = total % (data.len() as u16 + 8);
            data[2..4].copy_from_slice(&total.to_be_bytes());
        }
        data
    }

    fn touch_all<T: AsRef<[u8]>>(p: &Packet<T>) {
        let _ = (
            p.version(),
            p.header_len(),
            p.dscp(),
            p.ecn(),
            p.total_len(),
            p.ident(),
            p.dont_frag(),
            p.more_frags(),
            p.frag_offset(),
            p.is_fragment(),
            p.ttl(),
            p.protocol(),
            p.checksum(),
            p.src_addr(),
            p.dst_addr(),
            p.verify_checksum(),
            p.options(),
            p.payload(),
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..100),
            ihl in any::<u8>(),
            total in any::<u16>(),
        ) {
            let mut data = plausible(data, ihl, total);
            if let Ok(mut p) = Packet::new_checked(&mut data[..]) {
                touch_all(&p);
                prop_assert!(p.payload().len() + p.header_len() == usize::from(p.total_len()));
                p.decrement_ttl_update_checksum();
                p.set_dst_addr_update_checksum(Ipv4Addr::new(192, 0, 2, 1));
                p.set_src_addr_update_checksum(Ipv4Addr::new(192, 0, 2, 2));
                let _ = (p.options_mut().len(), p.payload_mut().len());
                p.fill_checksum();
                prop_assert!(p.verify_checksum());
            }
        }

        /// Our parse agrees with etherparse on every header field.
        #[test]
        fn parse_matches_etherparse(
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            ttl in any::<u8>(),
            ident in any::<u16>(),
            df in any::<bool>(),
            mf in any::<bool>(),
            offset in 0u16..0x2000,
            dscp in 0u8..64,
            ecn in 0u8..4,
            opt_words in 0usize..=10,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            pad in 0usize..8,
        ) {
            use etherparse::{IpNumber, Ipv4Header, Ipv4Options};
            let mut h = Ipv4Header::new(payload.len() as u16, ttl, IpNumber(253), src, dst).unwrap();
            h.identification = ident;
            h.dont_fragment = df;
            h.more_fragments = mf;
            h.fragment_offset = offset.try_into().unwrap();
            h.dscp = dscp.try_into().unwrap();
            h.ecn = ecn.try_into().unwrap();
            // NOP options: always valid, any multiple of 4 up to 40 bytes.
            h.options = Ipv4Options::try_from(&[1u8; 40][..opt_words * 4]).unwrap();
            h.total_len = (h.header_len() + payload.len()) as u16;
            h.header_checksum = h.calc_header_checksum();
            let mut bytes = h.to_bytes().to_vec();
            bytes.extend_from_slice(&payload);
            bytes.extend(std::iter::repeat_n(0xee, pad));

            let p = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(p.header_len(), h.header_len());
            prop_assert_eq!(p.total_len(), h.total_len);
            prop_assert_eq!(p.ident(), ident);
            prop_assert_eq!(p.dont_frag(), df);
            prop_assert_eq!(p.more_frags(), mf);
            prop_assert_eq!(p.frag_offset(), offset << 3);
            prop_assert_eq!(p.is_fragment(), mf || offset != 0);
            prop_assert_eq!(p.ttl(), ttl);
            prop_assert_eq!((p.dscp(), p.ecn()), (dscp, ecn));
            prop_assert_eq!(p.protocol(), 253);
            prop_assert_eq!(p.src_addr(), Ipv4Addr::from(src));
            prop_assert_eq!(p.dst_addr(), Ipv4Addr::from(dst));
            prop_assert_eq!(p.options(), h.options.as_slice());
            prop_assert_eq!(p.payload(), &payload[..]);
            prop_assert!(p.verify_checksum());
        }

        /// TTL decrement stays equal to a from-scratch checksum.
        #[test]
        fn decrement_ttl_matches_recompute(
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            ttl in 1u8..=255,
            ident in any::<u16>(),
        ) {
            let mut h = etherparse::Ipv4Header::new(0, ttl, etherparse::IpNumber::TCP, src, dst).unwrap();
            h.identification = ident;
            h.header_checksum = h.calc_header_checksum();
            let mut bytes = h.to_bytes().to_vec();
            let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
            p.decrement_ttl_update_checksum();
            h.time_to_live = ttl - 1;
            prop_assert_eq!(p.checksum(), h.calc_header_checksum());
        }
    }
}
