//! TCP segments (RFC 9293).
//!
//! The buffer must be exactly the segment (the IP payload, from
//! `ipv4::Packet::payload` or the IPv6 payload past its extension headers):
//! the checksum and [`Packet::payload`] run to its end.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::{Error, IpProtocol, Result, get_u16, get_u32, set_u16, set_u32};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ_NUM: usize = 4;
    pub const ACK_NUM: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
    pub const OPTIONS: usize = 20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::OPTIONS;

/// Flag bits of the byte at offset 13, as returned by [`Packet::flags`].
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A read/write view of a TCP segment.
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

    /// Ensures a data offset of at least 5 words that fits the buffer.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if header_len > len {
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

    #[inline]
    pub fn seq_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    #[inline]
    pub fn ack_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes (data offset * 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The eight flag bits; see [`flags`]. (The experimental NS bit is not
    /// included.)
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    #[inline]
    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    #[inline]
    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    #[inline]
    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }

    #[inline]
    pub fn psh(&self) -> bool {
        self.flags() & flags::PSH != 0
    }

    #[inline]
    pub fn ack(&self) -> bool {
        self.flags() & flags::ACK != 0
    }

    #[inline]
    pub fn urg(&self) -> bool {
        self.flags() & flags::URG != 0
    }

    #[inline]
    pub fn ece(&self) -> bool {
        self.flags() & flags::ECE != 0
    }

    #[inline]
    pub fn cwr(&self) -> bool {
        self.flags() & flags::CWR != 0
    }

    #[inline]
    pub fn window_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::WIN_SIZE)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn urgent_at(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::URGENT)
    }

    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// True if the checksum is correct for an IPv4 pseudo-header.
    #[inline]
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let data = self.buffer.as_ref();
        let pseudo = checksum::pseudo_header_v4(src, dst, IpProtocol::TCP, data.len() as u32);
        checksum::fold(pseudo + checksum::sum(data)) == 0xffff
    }

    /// True if the checksum is correct for an IPv6 pseudo-header.
    #[inline]
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let data = self.buffer.as_ref();
        let pseudo = checksum::pseudo_header_v6(src, dst, IpProtocol::TCP, data.len() as u32);
        checksum::fold(pseudo + checksum::sum(data)) == 0xffff
    }

    /// The checksum this segment should carry under an IPv4 pseudo-header,
    /// whatever its checksum field holds now.
    #[inline]
    pub fn compute_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let len = self.buffer.as_ref().len() as u32;
        !checksum::fold(
            checksum::pseudo_header_v4(src, dst, IpProtocol::TCP, len) + self.sum_except_checksum(),
        )
    }

    /// The checksum this segment should carry under an IPv6 pseudo-header.
    #[inline]
    pub fn compute_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> u16 {
        let len = self.buffer.as_ref().len() as u32;
        !checksum::fold(
            checksum::pseudo_header_v6(src, dst, IpProtocol::TCP, len) + self.sum_except_checksum(),
        )
    }

    #[inline]
    fn sum_except_checksum(&self) -> u32 {
        let data = self.buffer.as_ref();
        checksum::sum(&data[..field::CHECKSUM]) + checksum::sum(&data[field::CHECKSUM + 2..])
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
    pub fn set_seq_number(&mut self, seq: u32) {
        set_u32(self.buffer.as_mut(), field::SEQ_NUM, seq);
    }

    #[inline]
    pub fn set_ack_number(&mut self, ack: u32) {
        set_u32(self.buffer.as_mut(), field::ACK_NUM, ack);
    }

    /// Sets the data offset from a header length in bytes (a multiple of 4,
    /// 20..=60). Keeps the low nibble (reserved bits and NS).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::DATA_OFF];
        *b = (*b & 0x0f) | (((len / 4) as u8) << 4);
    }

    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    #[inline]
    pub fn set_window_len(&mut self, window: u16) {
        set_u16(self.buffer.as_mut(), field::WIN_SIZE, window);
    }

    #[inline]
    pub fn set_checksum(&mut self, checksum: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    #[inline]
    pub fn set_urgent_at(&mut self, urgent: u16) {
        set_u16(self.buffer.as_mut(), field::URGENT, urgent);
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

    /// NAT: rewrites the source port, updating the checksum incrementally.
    #[inline]
    pub fn set_src_port_update_checksum(&mut self, port: u16) {
        self.replace_u16(field::SRC_PORT, port);
    }

    /// NAT: rewrites the destination port, updating the checksum
    /// incrementally.
    #[inline]
    pub fn set_dst_port_update_checksum(&mut self, port: u16) {
        self.replace_u16(field::DST_PORT, port);
    }

    /// NAT: accounts for an IP address rewrite in the pseudo-header. `old`
    /// and `new` are the address octets (4 bytes for IPv4, 16 for IPv6);
    /// the address itself is written by the IP view.
    #[inline]
    pub fn update_checksum_for_addr_change(&mut self, old: &[u8], new: &[u8]) {
        let csum = checksum::update_bytes(self.checksum(), old, new);
        self.set_checksum(csum);
    }

    #[inline]
    fn replace_u16(&mut self, at: usize, value: u16) {
        let data = self.buffer.as_mut();
        let csum = checksum::update_u16(get_u16(data, field::CHECKSUM), get_u16(data, at), value);
        set_u16(data, at, value);
        set_u16(data, field::CHECKSUM, csum);
    }

    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let header_len = self.header_len();
        &mut self.buffer.as_mut()[field::OPTIONS..header_len]
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let header_len = self.header_len();
        &mut self.buffer.as_mut()[header_len..]
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
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const BACKEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

    // SYN 192.0.2.1:49152 -> 198.51.100.10:80, seq 0x12345678, MSS 1460,
    // window 64240, checksum for that pseudo-header.
    const SYN: [u8; 24] = [
        0xc0, 0x00, 0x00, 0x50, // ports
        0x12, 0x34, 0x56, 0x78, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0x60, 0x02, 0xfa, 0xf0, // data offset 6, SYN, window
        0x87, 0xf9, 0x00, 0x00, // checksum, urgent
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
    ];

    // The same SYN after DNAT to 203.0.113.7:8080.
    const SYN_DNAT: [u8; 24] = [
        0xc0, 0x00, 0x1f, 0x90, // ports
        0x12, 0x34, 0x56, 0x78, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0x60, 0x02, 0xfa, 0xf0, // data offset 6, SYN, window
        0x56, 0xef, 0x00, 0x00, // checksum, urgent
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
    ];

    #[test]
    fn parse_golden() {
        let p = Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.src_port(), 49152);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq_number(), 0x1234_5678);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.flags(), flags::SYN);
        assert!(p.syn());
        assert!(!(p.fin() || p.rst() || p.psh() || p.ack() || p.urg() || p.ece() || p.cwr()));
        assert_eq!(p.window_len(), 64240);
        assert_eq!(p.checksum(), 0x87f9);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(p.options(), &[0x02, 0x04, 0x05, 0xb4]);
        assert!(p.payload().is_empty());
        assert!(p.verify_checksum_v4(CLIENT, VIP));
        assert!(!p.verify_checksum_v4(CLIENT, BACKEND));
        assert_eq!(p.compute_checksum_v4(CLIENT, VIP), 0x87f9);
    }

    #[test]
    fn build_golden() {
        let mut buf = [0u8; 24];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(49152);
        p.set_dst_port(80);
        p.set_seq_number(0x1234_5678);
        p.set_ack_number(0);
        p.set_header_len(24);
        p.set_flags(flags::SYN);
        p.set_window_len(64240);
        p.set_urgent_at(0);
        p.options_mut().copy_from_slice(&[0x02, 0x04, 0x05, 0xb4]);
        p.fill_checksum_v4(CLIENT, VIP);
        assert_eq!(buf, SYN);
    }

    #[test]
    fn dnat_golden() {
        let mut buf = SYN;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.update_checksum_for_addr_change(&VIP.octets(), &BACKEND.octets());
        p.set_dst_port_update_checksum(8080);
        assert_eq!(buf, SYN_DNAT);
        // And back again (the reply path's SNAT, same arithmetic).
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.update_checksum_for_addr_change(&BACKEND.octets(), &VIP.octets());
        p.set_dst_port_update_checksum(80);
        assert_eq!(buf, SYN);
    }

    #[test]
    fn flags_and_payload() {
        let mut buf = [0u8; 22];
        buf[12] = 0x50;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.set_flags(
            flags::FIN
                | flags::ACK
                | flags::PSH
                | flags::URG
                | flags::RST
                | flags::ECE
                | flags::CWR,
        );
        assert!(p.fin() && p.ack() && p.psh() && p.urg() && p.rst() && p.ece() && p.cwr());
        assert!(!p.syn());
        p.payload_mut().copy_from_slice(b"hi");
        assert_eq!(p.payload(), b"hi");
        assert!(p.options().is_empty());
        p.set_src_port_update_checksum(1);
        assert_eq!(p.src_port(), 1);
    }

    #[test]
    fn rejects_bad_headers() {
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&SYN[..n]), Err(Error::Truncated));
        }
        // Data offset 6 needs 24 bytes.
        assert_eq!(Packet::new_checked(&SYN[..23]), Err(Error::Truncated));
        for off in 0..5u8 {
            let mut b = SYN;
            b[12] = off << 4;
            assert_eq!(Packet::new_checked(&b[..]), Err(Error::Malformed));
        }
        let mut b = SYN;
        b[12] = 0xf0;
        assert_eq!(Packet::new_checked(&b[..]), Err(Error::Truncated));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            mut data in proptest::collection::vec(any::<u8>(), 0..80),
            off in 0u8..16,
        ) {
            if data.len() > 12 {
                data[12] = off << 4;
            }
            if let Ok(mut p) = Packet::new_checked(&mut data[..]) {
                let _ = (
                    p.src_port(), p.dst_port(), p.seq_number(), p.ack_number(),
                    p.header_len(), p.flags(), p.fin(), p.syn(), p.rst(), p.psh(),
                    p.ack(), p.urg(), p.window_len(), p.checksum(), p.urgent_at(),
                    p.options(), p.payload(),
                    p.verify_checksum_v4(CLIENT, VIP),
                    p.verify_checksum_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST),
                );
                p.set_dst_port_update_checksum(1);
                p.update_checksum_for_addr_change(&[1, 2, 3, 4], &[5, 6, 7, 8]);
                p.fill_checksum_v4(CLIENT, VIP);
                prop_assert!(p.verify_checksum_v4(CLIENT, VIP));
                let _ = (p.options_mut().len(), p.payload_mut().len());
            }
        }
    }

    /// A segment as etherparse would put on the wire: the oracle side of
    /// the NAT properties.
    #[derive(Debug, Clone)]
    struct Seg {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: Option<u32>,
        syn: bool,
        fin: bool,
        psh: bool,
        window: u16,
        payload: Vec<u8>,
    }

    fn seg() -> impl Strategy<Value = Seg> {
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            proptest::option::of(any::<u32>()),
            any::<(bool, bool, bool)>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(
                |(sport, dport, seq, ack, (syn, fin, psh), window, payload)| Seg {
                    sport,
                    dport,
                    seq,
                    ack,
                    syn,
                    fin,
                    psh,
                    window,
                    payload,
                },
            )
    }

    fn build(ip: Ends, s: &Seg) -> Vec<u8> {
        let mut b = match ip {
            Ends::V4(src, dst) => PacketBuilder::ipv4(src.octets(), dst.octets(), 64),
            Ends::V6(src, dst) => PacketBuilder::ipv6(src.octets(), dst.octets(), 64),
        }
        .tcp(s.sport, s.dport, s.seq, s.window);
        if let Some(ack) = s.ack {
            b = b.ack(ack);
        }
        if s.syn {
            b = b.syn();
        }
        if s.fin {
            b = b.fin();
        }
        if s.psh {
            b = b.psh();
        }
        let mut out = Vec::with_capacity(b.size(s.payload.len()));
        b.write(&mut out, &s.payload).unwrap();
        out
    }

    #[derive(Clone, Copy)]
    enum Ends {
        V4(Ipv4Addr, Ipv4Addr),
        V6(Ipv6Addr, Ipv6Addr),
    }

    /// Cross-checks a rewritten packet with etherparse's own checksums.
    fn etherparse_accepts(bytes: &[u8]) -> bool {
        let sliced = etherparse::SlicedPacket::from_ip(bytes).unwrap();
        let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else {
            return false;
        };
        match sliced.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                h.to_header().calc_header_checksum() == h.header_checksum()
                    && tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
                        == tcp.checksum()
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                tcp.calc_checksum_ipv6(h.source(), h.destination()).unwrap() == tcp.checksum()
            }
            _ => false,
        }
    }

    /// The load balancer's v4 NAT rewrite of one side of the connection.
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
        let mut tcp = Packet::new_checked(ip.payload_mut()).unwrap();
        tcp.update_checksum_for_addr_change(&old.octets(), &addr.octets());
        if dst_side {
            tcp.set_dst_port_update_checksum(port);
        } else {
            tcp.set_src_port_update_checksum(port);
        }
    }

    fn rewrite_v6(bytes: &mut [u8], dst_side: bool, addr: Ipv6Addr, port: u16) {
        let mut ip = ipv6::Packet::new_checked(bytes).unwrap();
        let (proto, off) = ip.upper_layer().unwrap();
        assert_eq!(proto, IpProtocol::TCP);
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
        let mut tcp = Packet::new_checked(&mut ip.payload_mut()[off..]).unwrap();
        tcp.update_checksum_for_addr_change(&old.octets(), &addr.octets());
        if dst_side {
            tcp.set_dst_port_update_checksum(port);
        } else {
            tcp.set_src_port_update_checksum(port);
        }
    }

    proptest! {
        /// DNAT (client -> VIP becomes client -> backend) yields exactly the
        /// bytes etherparse builds for the rewritten packet.
        #[test]
        fn dnat_v4_matches_etherparse(
            client in any::<u32>(), vip in any::<u32>(), backend in any::<u32>(),
            port in any::<u16>(), s in seg(),
        ) {
            let (c, v, b) = (Ipv4Addr::from(client), Ipv4Addr::from(vip), Ipv4Addr::from(backend));
            let mut bytes = build(Ends::V4(c, v), &s);
            rewrite_v4(&mut bytes, true, b, port);
            let expected = build(Ends::V4(c, b), &Seg { dport: port, ..s });
            prop_assert_eq!(&bytes, &expected);
            prop_assert!(etherparse_accepts(&bytes));
            let ip = ipv4::Packet::new_checked(&bytes[..]).unwrap();
            prop_assert!(ip.verify_checksum());
            prop_assert!(Packet::new_checked(ip.payload()).unwrap().verify_checksum_v4(c, b));
        }

        /// SNAT on the reply path (backend -> client becomes VIP -> client).
        #[test]
        fn snat_v4_matches_etherparse(
            client in any::<u32>(), vip in any::<u32>(), backend in any::<u32>(),
            port in any::<u16>(), s in seg(),
        ) {
            let (c, v, b) = (Ipv4Addr::from(client), Ipv4Addr::from(vip), Ipv4Addr::from(backend));
            let mut bytes = build(Ends::V4(b, c), &s);
            rewrite_v4(&mut bytes, false, v, port);
            let expected = build(Ends::V4(v, c), &Seg { sport: port, ..s });
            prop_assert_eq!(&bytes, &expected);
            prop_assert!(etherparse_accepts(&bytes));
        }

        #[test]
        fn dnat_v6_matches_etherparse(
            client in any::<u128>(), vip in any::<u128>(), backend in any::<u128>(),
            port in any::<u16>(), s in seg(),
        ) {
            let (c, v, b) = (Ipv6Addr::from(client), Ipv6Addr::from(vip), Ipv6Addr::from(backend));
            let mut bytes = build(Ends::V6(c, v), &s);
            rewrite_v6(&mut bytes, true, b, port);
            let expected = build(Ends::V6(c, b), &Seg { dport: port, ..s });
            prop_assert_eq!(&bytes, &expected);
            prop_assert!(etherparse_accepts(&bytes));
            let ip = ipv6::Packet::new_checked(&bytes[..]).unwrap();
            prop_assert!(Packet::new_checked(ip.payload()).unwrap().verify_checksum_v6(c, b));
        }

        #[test]
        fn snat_v6_matches_etherparse(
            client in any::<u128>(), vip in any::<u128>(), backend in any::<u128>(),
            port in any::<u16>(), s in seg(),
        ) {
            let (c, v, b) = (Ipv6Addr::from(client), Ipv6Addr::from(vip), Ipv6Addr::from(backend));
            let mut bytes = build(Ends::V6(b, c), &s);
            rewrite_v6(&mut bytes, false, v, port);
            let expected = build(Ends::V6(v, c), &Seg { sport: port, ..s });
            prop_assert_eq!(&bytes, &expected);
            prop_assert!(etherparse_accepts(&bytes));
        }

        /// Parsing agrees with etherparse, and fill/compute agree with its
        /// checksum.
        #[test]
        fn parse_matches_etherparse(
            c in any::<u32>(), v in any::<u32>(), s in seg(),
        ) {
            let (c, v) = (Ipv4Addr::from(c), Ipv4Addr::from(v));
            let bytes = build(Ends::V4(c, v), &s);
            let ip = ipv4::Packet::new_checked(&bytes[..]).unwrap();
            let p = Packet::new_checked(ip.payload()).unwrap();
            let theirs = etherparse::TcpSlice::from_slice(ip.payload()).unwrap();
            prop_assert_eq!(p.src_port(), theirs.source_port());
            prop_assert_eq!(p.dst_port(), theirs.destination_port());
            prop_assert_eq!(p.seq_number(), theirs.sequence_number());
            prop_assert_eq!(p.ack_number(), theirs.acknowledgment_number());
            prop_assert_eq!(p.header_len(), theirs.header_len());
            prop_assert_eq!((p.syn(), p.fin(), p.psh(), p.ack()), (theirs.syn(), theirs.fin(), theirs.psh(), theirs.ack()));
            prop_assert_eq!(p.window_len(), theirs.window_size());
            prop_assert_eq!(p.payload(), theirs.payload());
            prop_assert_eq!(p.compute_checksum_v4(c, v), theirs.checksum());
            prop_assert!(p.verify_checksum_v4(c, v));
        }
    }
}
