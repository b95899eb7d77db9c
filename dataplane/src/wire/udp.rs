//! UDP datagrams (RFC 768).
//!
//! The datagram ends at its own `length` field: the checksum and
//! [`Packet::payload`] stop there even if the buffer runs on.
//!
//! Checksum zero is special. Over IPv4 it means "not computed" and must
//! survive NAT as zero; a computed zero is transmitted as `0xffff`. Over
//! IPv6 the checksum is mandatory (RFC 8200 section 8.1), so zero fails
//! verification; the NAT helpers still leave it zero rather than invent a
//! checksum for a datagram the receiver will drop anyway.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::{Error, IpProtocol, Result, get_u16, set_u16};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
    pub const PAYLOAD: usize = 8;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// A read/write view of a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// Zero on the wire means "no checksum", so a computed zero goes out as its
/// other ones-complement representation.
#[inline(always)]
const fn nonzero(csum: u16) -> u16 {
    if csum == 0 { 0xffff } else { csum }
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

    /// Ensures `8 <= length <= buffer length`.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let udp_len = usize::from(self.len());
        if udp_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if udp_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The `length` field: header plus payload.
    // Named after the wire field; a checked datagram is never shorter than
    // its 8-byte header, so an `is_empty` would always be false.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload, up to `length`.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..usize::from(self.len())]
    }

    /// True if the checksum is correct for an IPv4 pseudo-header, or absent
    /// (zero).
    #[inline]
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let len = self.len();
        let pseudo = checksum::pseudo_header_v4(src, dst, IpProtocol::UDP, u32::from(len));
        checksum::fold(pseudo + checksum::sum(self.datagram())) == 0xffff
    }

    /// True if the checksum is correct for an IPv6 pseudo-header. A zero
    /// checksum is invalid over IPv6.
    #[inline]
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        if self.checksum() == 0 {
            return false;
        }
        let len = self.len();
        let pseudo = checksum::pseudo_header_v6(src, dst, IpProtocol::UDP, u32::from(len));
        checksum::fold(pseudo + checksum::sum(self.datagram())) == 0xffff
    }

    /// The checksum this datagram should carry under an IPv4 pseudo-header
    /// (never 0), whatever its checksum field holds now.
    #[inline]
    pub fn compute_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let len = u32::from(self.len());
        let acc =
            checksum::pseudo_header_v4(src, dst, IpProtocol::UDP, len) + self.sum_except_checksum();
        nonzero(!checksum::fold(acc))
    }

    /// The checksum this datagram should carry under an IPv6 pseudo-header
    /// (never 0).
    #[inline]
    pub fn compute_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> u16 {
        let len = u32::from(self.len());
        let acc =
            checksum::pseudo_header_v6(src, dst, IpProtocol::UDP, len) + self.sum_except_checksum();
        nonzero(!checksum::fold(acc))
    }

    #[inline]
    fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.len())]
    }

    #[inline]
    fn sum_except_checksum(&self) -> u32 {
        let data = self.datagram();
        checksum::sum(&data[..field::CHECKSUM]) + checksum::sum(&data[field::PAYLOAD..])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    #[inline]
    pub fn set_len(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_checksum(&mut self, checksum: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    #[inline]
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let csum = self.compute_checksum_v4(src, dst);
        self.set_checksum(csum);
    }

    #[inline]
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        let csum = self.compute_checksum_v6(src, dst);
        self.set_checksum(csum);
    }

    /// NAT: rewrites the source port, updating the checksum incrementally
    /// (a zero checksum stays zero).
    #[inline]
    pub fn set_src_port_update_checksum(&mut self, port: u16) {
        self.replace_u16(field::SRC_PORT, port);
    }

    /// NAT: rewrites the destination port, updating the checksum
    /// incrementally (a zero checksum stays zero).
    #[inline]
    pub fn set_dst_port_update_checksum(&mut self, port: u16) {
        self.replace_u16(field::DST_PORT, port);
    }

    /// NAT: accounts for an IP address rewrite in the pseudo-header. `old`
    /// and `new` are the address octets (4 bytes for IPv4, 16 for IPv6).
    /// A zero checksum stays zero.
    #[inline]
    pub fn update_checksum_for_addr_change(&mut self, old: &[u8], new: &[u8]) {
        let csum = self.checksum();
        if csum != 0 {
            self.set_checksum(nonzero(checksum::update_bytes(csum, old, new)));
        }
    }

    #[inline]
    fn replace_u16(&mut self, at: usize, value: u16) {
        let data = self.buffer.as_mut();
        let csum = get_u16(data, field::CHECKSUM);
        if csum != 0 {
            let csum = nonzero(checksum::update_u16(csum, get_u16(data, at), value));
            set_u16(data, field::CHECKSUM, csum);
        }
        set_u16(data, at, value);
    }

    /// The payload, up to `length`.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
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
    use crate::wire::{ipv4, ipv6};
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
    const BACKEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

    // DNS query 192.0.2.1:54321 -> 198.51.100.53:53 for "a.", type A, plus
    // two bytes beyond `length` that belong to someone else.
    const QUERY: [u8; 29] = [
        0xd4, 0x31, 0x00, 0x35, // ports
        0x00, 0x1b, 0x7b, 0x95, // length 27, checksum
        0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // DNS header
        0x01, b'a', 0x00, 0x00, 0x01, 0x00, 0x01, // question
        0xee, 0xee, // not ours
    ];

    #[test]
    fn parse_golden() {
        let p = Packet::new_checked(&QUERY[..]).unwrap();
        assert_eq!(p.src_port(), 54321);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 27);
        assert_eq!(p.checksum(), 0x7b95);
        assert_eq!(p.payload(), &QUERY[8..27]);
        assert!(p.verify_checksum_v4(CLIENT, VIP));
        assert!(!p.verify_checksum_v4(CLIENT, BACKEND));
        assert_eq!(p.compute_checksum_v4(CLIENT, VIP), 0x7b95);
    }

    #[test]
    fn build_golden() {
        let mut buf = QUERY;
        buf[..8].fill(0);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(54321);
        p.set_dst_port(53);
        p.set_len(27);
        p.fill_checksum_v4(CLIENT, VIP);
        assert_eq!(buf, QUERY);
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.payload_mut()[0] = 0;
        assert_eq!(buf[8], 0);
    }

    #[test]
    fn dnat_golden() {
        let mut buf = QUERY;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.update_checksum_for_addr_change(&VIP.octets(), &BACKEND.octets());
        p.set_dst_port_update_checksum(5353);
        assert_eq!(p.dst_port(), 5353);
        assert!(p.verify_checksum_v4(CLIENT, BACKEND));
        let incremental = p.checksum();
        p.fill_checksum_v4(CLIENT, BACKEND);
        assert_eq!(p.checksum(), incremental);
    }

    #[test]
    fn zero_checksum_stays_zero() {
        let mut buf = QUERY;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.set_checksum(0);
        assert!(p.verify_checksum_v4(CLIENT, VIP));
        assert!(!p.verify_checksum_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST));
        p.update_checksum_for_addr_change(&VIP.octets(), &BACKEND.octets());
        p.set_dst_port_update_checksum(5353);
        p.set_src_port_update_checksum(1);
        assert_eq!(p.checksum(), 0);
        assert_eq!((p.src_port(), p.dst_port()), (1, 5353));
    }

    #[test]
    fn computed_zero_goes_out_as_ffff() {
        let mut buf = QUERY;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        // The port whose substitution drives the true checksum to zero:
        // ~C + ~p + p' must fold to 0xffff, so p' is the ones-complement
        // negation of ~C + ~p.
        let (c, old) = (p.checksum(), p.dst_port());
        let port = !checksum::fold(u32::from(!c) + u32::from(!old));
        p.set_dst_port_update_checksum(port);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum_v4(CLIENT, VIP));
        assert_eq!(p.compute_checksum_v4(CLIENT, VIP), 0xffff);
        // And the same through the address path: move the port back, then
        // find an address word that zeroes it.
        p.set_dst_port_update_checksum(old);
        let c = p.checksum();
        let [h0, h1, l0, l1] = VIP.octets();
        let hi = u16::from_be_bytes([h0, h1]);
        let new_hi = !checksum::fold(u32::from(!c) + u32::from(!hi));
        let [n0, n1] = new_hi.to_be_bytes();
        let new = Ipv4Addr::new(n0, n1, l0, l1);
        p.update_checksum_for_addr_change(&VIP.octets(), &new.octets());
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum_v4(CLIENT, new));
    }

    #[test]
    fn rejects_bad_lengths() {
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&QUERY[..n]), Err(Error::Truncated));
        }
        assert_eq!(Packet::new_checked(&QUERY[..26]), Err(Error::Truncated));
        assert!(Packet::new_checked(&QUERY[..27]).is_ok());
        for bad in 0..8u8 {
            let mut b = QUERY;
            b[5] = bad;
            assert_eq!(Packet::new_checked(&b[..]), Err(Error::Malformed));
        }
        let mut b = QUERY;
        b[5] = 8;
        assert!(Packet::new_checked(&b[..]).unwrap().payload().is_empty());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            mut data in proptest::collection::vec(any::<u8>(), 0..48),
            len in 0u16..56,
        ) {
            if data.len() >= HEADER_LEN {
                data[4..6].copy_from_slice(&len.to_be_bytes());
            }
            if let Ok(mut p) = Packet::new_checked(&mut data[..]) {
                let _ = (
                    p.src_port(), p.dst_port(), p.len(), p.checksum(), p.payload(),
                    p.verify_checksum_v4(CLIENT, VIP),
                    p.verify_checksum_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST),
                );
                p.set_src_port_update_checksum(7);
                p.update_checksum_for_addr_change(&[1; 16], &[2; 16]);
                p.fill_checksum_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
                prop_assert!(p.verify_checksum_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED));
                let _ = p.payload_mut().len();
            }
        }
    }

    enum Ends {
        V4(Ipv4Addr, Ipv4Addr),
        V6(Ipv6Addr, Ipv6Addr),
    }

    /// The datagram etherparse puts on the wire (optionally with the IPv4
    /// checksum switched off), the oracle side of the NAT properties.
    fn build(ends: &Ends, sport: u16, dport: u16, payload: &[u8], no_csum: bool) -> Vec<u8> {
        let b = match *ends {
            Ends::V4(s, d) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            Ends::V6(s, d) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        }
        .udp(sport, dport);
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).unwrap();
        if no_csum {
            // etherparse always computes one; UDP sits right after the
            // 20-byte IPv4 header here.
            out[26..28].fill(0);
        }
        out
    }

    fn etherparse_accepts(bytes: &[u8]) -> bool {
        let sliced = etherparse::SlicedPacket::from_ip(bytes).unwrap();
        let Some(etherparse::TransportSlice::Udp(udp)) = sliced.transport else {
            return false;
        };
        let h = udp.to_header();
        match sliced.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                let ih = ip.header();
                ih.to_header().calc_header_checksum() == ih.header_checksum()
                    && (h.checksum == 0
                        || h.calc_checksum_ipv4_raw(ih.source(), ih.destination(), udp.payload())
                            .unwrap()
                            == h.checksum)
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => {
                let ih = ip.header();
                h.calc_checksum_ipv6_raw(ih.source(), ih.destination(), udp.payload())
                    .unwrap()
                    == h.checksum
            }
            _ => false,
        }
    }

    fn rewrite_v4(bytes: &mut [u8], dst_side: bool, addr: Ipv4Addr, port: u16) {
        let mut ip = ipv4::Packet::new_checked(bytes).unwrap();
        let old = if dst_side {
            ip.dst_addr()
        } else {
            ip.src_addr()
        };
        if dst_side {
            ip.set_dst_addr_update_checksum(addr);
        } else {
            ip.set_src_addr_update_checksum(addr);
        }
        let mut udp = Packet::new_checked(ip.payload_mut()).unwrap();
        udp.update_checksum_for_addr_change(&old.octets(), &addr.octets());
        if dst_side {
            udp.set_dst_port_update_checksum(port);
        } else {
            udp.set_src_port_update_checksum(port);
        }
    }

    fn rewrite_v6(bytes: &mut [u8], dst_side: bool, addr: Ipv6Addr, port: u16) {
        let mut ip = ipv6::Packet::new_checked(bytes).unwrap();
        let (proto, off) = ip.upper_layer().unwrap();
        assert_eq!(proto, IpProtocol::UDP);
        let old = if dst_side {
            ip.dst_addr()
        } else {
            ip.src_addr()
        };
        if dst_side {
            ip.set_dst_addr(addr);
        } else {
            ip.set_src_addr(addr);
        }
        let mut udp = Packet::new_checked(&mut ip.payload_mut()[off..]).unwrap();
        udp.update_checksum_for_addr_change(&old.octets(), &addr.octets());
        if dst_side {
            udp.set_dst_port_update_checksum(port);
        } else {
            udp.set_src_port_update_checksum(port);
        }
    }

    proptest! {
        /// DNAT yields exactly the bytes etherparse builds for the rewritten
        /// datagram, a disabled IPv4 checksum staying disabled.
        #[test]
        fn dnat_v4_matches_etherparse(
            c in any::<u32>(), v in any::<u32>(), b in any::<u32>(),
            sport in any::<u16>(), dport in any::<u16>(), port in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            no_csum in proptest::bool::weighted(0.25),
        ) {
            let (c, v, b) = (Ipv4Addr::from(c), Ipv4Addr::from(v), Ipv4Addr::from(b));
            let mut bytes = build(&Ends::V4(c, v), sport, dport, &payload, no_csum);
            rewrite_v4(&mut bytes, true, b, port);
            let expected = build(&Ends::V4(c, b), sport, port, &payload, no_csum);
            prop_assert_eq!(&bytes, &expected);
            prop_assert!(etherparse_accepts(&bytes));
            let ip = ipv4::Packet::new_checked(&bytes[..]).unwrap();
            let udp = Packet::new_checked(ip.payload()).unwrap();
            prop_assert!(udp.verify_checksum_v4(c, b));
            prop_assert_eq!(udp.checksum() == 0, no_csum);
        }

        #[test]
        fn snat_v4_matches_etherparse(
            c in any::<u32>(), v in any::<u32>(), b in any::<u32>(),
            sport in any::<u16>(), dport in any::<u16>(), port in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            no_csum in proptest::bool::weighted(0.25),
        ) {
            let (c, v, b) = (Ipv4Addr::from(c), Ipv4Addr::from(v), Ipv4Addr::from(b));
            let mut bytes = build(&Ends::V4(b, c), sport, dport, &payload, no_csum);
            rewrite_v4(&mut bytes, false, v, port);
            let expected = build(&Ends::V4(v, c), port, dport, &payload, no_csum);
            prop_assert_eq!(&bytes, &expected);
            prop_assert!(etherparse_accepts(&bytes));
        }

        #[test]
        fn dnat_v6_matches_etherparse(
            c in any::<u128>(), v in any::<u128>(), b in any::<u128>(),
            sport in any::<u16>(), dport in any::<u16>(), port in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (c, v, b) = (Ipv6Addr::from(c), Ipv6Addr::from(v), Ipv6Addr::from(b));
            let mut bytes = build(&Ends::V6(c, v), sport, dport, &payload, false);
            rewrite_v6(&mut bytes, true, b, port);
            let expected = build(&Ends::V6(c, b), sport, port, &payload, false);
            prop_assert_eq!(&bytes, &expected);
            prop_assert!(etherparse_accepts(&bytes));
            let ip = ipv6::Packet::new_checked(&bytes[..]).unwrap();
            prop_assert!(Packet::new_checked(ip.payload()).unwrap().verify_checksum_v6(c, b));
        }

        #[test]
        fn snat_v6_matches_etherparse(
            c in any::<u128>(), v in any::<u128>(), b in any::<u128>(),
            sport in any::<u16>(), dport in any::<u16>(), port in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (c, v, b) = (Ipv6Addr::from(c), Ipv6Addr::from(v), Ipv6Addr::from(b));
            let mut bytes = build(&Ends::V6(b, c), sport, dport, &payload, false);
            rewrite_v6(&mut bytes, false, v, port);
            let expected = build(&Ends::V6(v, c), port, dport, &payload, false);
            prop_assert_eq!(&bytes, &expected);
            prop_assert!(etherparse_accepts(&bytes));
        }

        /// Our checksum equals etherparse's, 0 -> 0xffff mapping included.
        #[test]
        fn compute_matches_etherparse(
            c in any::<u128>(), v in any::<u128>(),
            sport in any::<u16>(), dport in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (c, v) = (Ipv6Addr::from(c), Ipv6Addr::from(v));
            let bytes = build(&Ends::V6(c, v), sport, dport, &payload, false);
            let ip = ipv6::Packet::new_checked(&bytes[..]).unwrap();
            let p = Packet::new_checked(ip.payload()).unwrap();
            let theirs = etherparse::UdpSlice::from_slice(ip.payload()).unwrap();
            prop_assert_eq!((p.src_port(), p.dst_port()), (sport, dport));
            prop_assert_eq!(p.len(), theirs.length());
            prop_assert_eq!(p.payload(), theirs.payload());
            prop_assert_eq!(p.compute_checksum_v6(c, v), theirs.checksum());
            prop_assert!(p.verify_checksum_v6(c, v));
        }
    }
}
