//! ARP for IPv4 over Ethernet (RFC 826), the only kind limpet answers.
//!
//! `check_len` refuses any other hardware/protocol combination, so the
//! fixed-size address accessors are always in bounds on a checked view.

use std::net::Ipv4Addr;

use super::{Error, EtherType, MacAddr, Result, get_array, get_u16, set_u16};

mod field {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: usize = 8;
    pub const SPA: usize = 14;
    pub const THA: usize = 18;
    pub const TPA: usize = 24;
    pub const END: usize = 28;
}

/// Length of an Ethernet/IPv4 ARP packet. Anything after it is padding.
pub const PACKET_LEN: usize = field::END;

/// ARP hardware type for Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;

/// ARP operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Request,
    Reply,
    Other(u16),
}

impl From<u16> for Operation {
    #[inline]
    fn from(value: u16) -> Operation {
        match value {
            1 => Operation::Request,
            2 => Operation::Reply,
            other => Operation::Other(other),
        }
    }
}

impl From<Operation> for u16 {
    #[inline]
    fn from(op: Operation) -> u16 {
        match op {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Other(other) => other,
        }
    }
}

/// A read/write view of an Ethernet/IPv4 ARP packet.
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

    /// Ensures the buffer holds a whole packet and that it is
    /// Ethernet/IPv4 (htype 1, ptype 0x0800, hlen 6, plen 4).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < PACKET_LEN {
            return Err(Error::Truncated);
        }
        if get_u16(data, field::HTYPE) != HTYPE_ETHERNET
            || get_u16(data, field::PTYPE) != EtherType::IPV4
            || data[field::HLEN] != 6
            || data[field::PLEN] != 4
        {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn hardware_type(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::HTYPE)
    }

    #[inline]
    pub fn protocol_type(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::PTYPE)
    }

    #[inline]
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    #[inline]
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    #[inline]
    pub fn operation(&self) -> Operation {
        Operation::from(get_u16(self.buffer.as_ref(), field::OPER))
    }

    #[inline]
    pub fn sender_hardware_addr(&self) -> MacAddr {
        MacAddr(get_array(self.buffer.as_ref(), field::SHA))
    }

    #[inline]
    pub fn sender_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_array::<4>(self.buffer.as_ref(), field::SPA))
    }

    #[inline]
    pub fn target_hardware_addr(&self) -> MacAddr {
        MacAddr(get_array(self.buffer.as_ref(), field::THA))
    }

    #[inline]
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_array::<4>(self.buffer.as_ref(), field::TPA))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the fixed Ethernet/IPv4 header fields (htype, ptype, hlen,
    /// plen), the part `check_len` insists on, when building from scratch.
    #[inline]
    pub fn fill_eth_ipv4_header(&mut self) {
        let data = self.buffer.as_mut();
        set_u16(data, field::HTYPE, HTYPE_ETHERNET);
        set_u16(data, field::PTYPE, EtherType::IPV4);
        data[field::HLEN] = 6;
        data[field::PLEN] = 4;
    }

    #[inline]
    pub fn set_operation(&mut self, op: Operation) {
        set_u16(self.buffer.as_mut(), field::OPER, op.into());
    }

    #[inline]
    pub fn set_sender_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SHA..field::SHA + 6].copy_from_slice(&addr.0);
    }

    #[inline]
    pub fn set_sender_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA..field::SPA + 4].copy_from_slice(&addr.octets());
    }

    #[inline]
    pub fn set_target_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::THA..field::THA + 6].copy_from_slice(&addr.0);
    }

    #[inline]
    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA..field::TPA + 4].copy_from_slice(&addr.octets());
    }

    /// Turns a request into its reply in place: the requester becomes the
    /// target, and we (`our_mac`, owning the address that was asked for)
    /// become the sender. The caller decides whether to answer (the target
    /// address is one we serve) and rewrites the Ethernet header.
    #[inline]
    pub fn make_reply(&mut self, our_mac: MacAddr) {
        let asked = self.target_protocol_addr();
        let requester_mac = self.sender_hardware_addr();
        let requester_ip = self.sender_protocol_addr();
        self.set_operation(Operation::Reply);
        self.set_target_hardware_addr(requester_mac);
        self.set_target_protocol_addr(requester_ip);
        self.set_sender_hardware_addr(our_mac);
        self.set_sender_protocol_addr(asked);
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

    const ASKER: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const US: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);

    // "who-has 192.0.2.10 tell 192.0.2.1", padded to the Ethernet minimum
    // the way NICs deliver it.
    const REQUEST: [u8; 46] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // eth/ipv4, request
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 192, 0, 2, 1, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 192, 0, 2, 10, // target
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // padding
    ];

    // "192.0.2.10 is-at 02:00:00:00:00:01"
    const REPLY: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, // eth/ipv4, reply
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 192, 0, 2, 10, // sender
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 192, 0, 2, 1, // target
    ];

    #[test]
    fn parse_golden() {
        let p = Packet::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), 0x0800);
        assert_eq!((p.hardware_len(), p.protocol_len()), (6, 4));
        assert_eq!(p.operation(), Operation::Request);
        assert_eq!(p.sender_hardware_addr(), ASKER);
        assert_eq!(p.sender_protocol_addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(p.target_hardware_addr(), MacAddr::UNSPECIFIED);
        assert_eq!(p.target_protocol_addr(), Ipv4Addr::new(192, 0, 2, 10));
    }

    #[test]
    fn request_to_reply() {
        let mut buf = REQUEST;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.make_reply(US);
        assert_eq!(buf[..28], REPLY);
        assert!(buf[28..].iter().all(|&b| b == 0));
    }

    #[test]
    fn build_golden() {
        let mut buf = [0xaau8; 28];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_eth_ipv4_header();
        p.set_operation(Operation::Reply);
        p.set_sender_hardware_addr(US);
        p.set_sender_protocol_addr(Ipv4Addr::new(192, 0, 2, 10));
        p.set_target_hardware_addr(ASKER);
        p.set_target_protocol_addr(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(buf, REPLY);
        assert!(Packet::new_checked(&buf[..]).is_ok());
    }

    #[test]
    fn operation_roundtrip() {
        for v in [1u16, 2, 3, 0, 0xffff] {
            assert_eq!(u16::from(Operation::from(v)), v);
        }
    }

    #[test]
    fn rejects_bad_packets() {
        for n in 0..PACKET_LEN {
            assert_eq!(Packet::new_checked(&REQUEST[..n]), Err(Error::Truncated));
        }
        // htype, ptype, hlen, plen each wrong in turn.
        for (at, bad) in [(1, 6u8), (2, 0x86), (4, 16), (5, 16)] {
            let mut buf = REQUEST;
            buf[at] = bad;
            assert_eq!(Packet::new_checked(&buf[..]), Err(Error::Malformed));
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            mut data in proptest::collection::vec(any::<u8>(), 0..40),
            fix_header in any::<bool>(),
        ) {
            if fix_header && data.len() >= 6 {
                data[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
            }
            if let Ok(p) = Packet::new_checked(&data[..]) {
                let _ = (
                    p.operation(),
                    p.sender_hardware_addr(),
                    p.sender_protocol_addr(),
                    p.target_hardware_addr(),
                    p.target_protocol_addr(),
                );
            }
        }
    }
}
