//! ICMP for IPv4 (RFC 792): enough to answer echo requests addressed to us.
//!
//! The buffer must be exactly the ICMP message (the IPv4 payload): the
//! checksum covers all of it, with no pseudo-header.

use super::checksum;
use super::{Error, Result, get_u16, set_u16};

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQNO: usize = 6;
    pub const DATA: usize = 8;
}

/// Every ICMP message has at least this much: type, code, checksum and
/// four type-specific bytes.
pub const HEADER_LEN: usize = field::DATA;

/// Message types limpet looks at or sends.
pub mod msg_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
}

/// A read/write view of an ICMP (IPv4) message.
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

    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier (meaningful for echo request/reply only).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number (meaningful for echo request/reply only).
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_SEQNO)
    }

    /// The four type-specific header bytes, raw (unused, pointer, MTU...).
    #[inline]
    pub fn rest_of_header(&self) -> [u8; 4] {
        super::get_array(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Everything after the 8-byte header: echo data, or the offending
    /// datagram's header for error messages.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }

    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    #[inline]
    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    #[inline]
    pub fn set_echo_ident(&mut self, value: u16) {
        set_u16(self.buffer.as_mut(), field::ECHO_IDENT, value);
    }

    #[inline]
    pub fn set_echo_seq_no(&mut self, value: u16) {
        set_u16(self.buffer.as_mut(), field::ECHO_SEQNO, value);
    }

    #[inline]
    pub fn set_rest_of_header(&mut self, value: [u8; 4]) {
        self.buffer.as_mut()[field::ECHO_IDENT..field::DATA].copy_from_slice(&value);
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }

    /// Computes the checksum over the whole message and stores it.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(csum);
    }

    /// Turns an echo request into its reply in place: type 8 -> 0, code 0,
    /// checksum updated incrementally so the (possibly large) data is not
    /// re-summed. The caller swaps the IP addresses and Ethernet addresses.
    #[inline]
    pub fn make_echo_reply(&mut self) {
        let data = self.buffer.as_mut();
        let old = u16::from_be_bytes([data[field::TYPE], data[field::CODE]]);
        let new = u16::from_be_bytes([msg_type::ECHO_REPLY, 0]);
        let mut csum = checksum::update_u16(get_u16(data, field::CHECKSUM), old, new);
        data[field::TYPE] = msg_type::ECHO_REPLY;
        data[field::CODE] = 0;
        if csum == 0 {
            // RFC 1624's update gives 0 both for a reply whose words sum
            // to 0xffff (right) and for an all-zero reply (ident 0, seq 0,
            // no data), whose checksum is 0xffff: only then can the words
            // sum to zero, so look in this one case in 65536.
            set_u16(data, field::CHECKSUM, 0);
            if checksum::sum(data) == 0 {
                csum = 0xffff;
            }
        }
        set_u16(data, field::CHECKSUM, csum);
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

    // `ping -p 61 -s 8`: echo request, id 0x1234, seq 1, 8 bytes of 'a'.
    const REQUEST: [u8; 16] = [
        0x08, 0x00, 0x60, 0x45, // type 8, code 0, checksum
        0x12, 0x34, 0x00, 0x01, // id, seq
        b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a',
    ];

    const REPLY: [u8; 16] = [
        0x00, 0x00, 0x68, 0x45, // type 0, code 0, checksum
        0x12, 0x34, 0x00, 0x01, // id, seq
        b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a',
    ];

    #[test]
    fn parse_golden() {
        let p = Packet::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.msg_type(), msg_type::ECHO_REQUEST);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.checksum(), 0x6045);
        assert_eq!(p.echo_ident(), 0x1234);
        assert_eq!(p.echo_seq_no(), 1);
        assert_eq!(p.rest_of_header(), [0x12, 0x34, 0x00, 0x01]);
        assert_eq!(p.data(), b"aaaaaaaa");
        assert!(p.verify_checksum());
    }

    #[test]
    fn echo_reply_golden() {
        let mut buf = REQUEST;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.make_echo_reply();
        assert_eq!(buf, REPLY);
        assert!(Packet::new_checked(&buf[..]).unwrap().verify_checksum());
    }

    /// Found by the wire fuzz target: ident 0, seq 0 and no data make an
    /// all-zero reply, whose checksum is 0xffff, not the 0 RFC 1624's
    /// update gives.
    #[test]
    fn echo_reply_of_an_all_zero_request() {
        let mut buf = [8, 0, 0xf7, 0xff, 0, 0, 0, 0];
        assert!(Packet::new_checked(&buf[..]).unwrap().verify_checksum());
        Packet::new_checked(&mut buf[..]).unwrap().make_echo_reply();
        assert_eq!(buf, [0, 0, 0xff, 0xff, 0, 0, 0, 0]);
        assert!(Packet::new_checked(&buf[..]).unwrap().verify_checksum());
    }

    #[test]
    fn build_golden() {
        let mut buf = [0u8; 16];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(msg_type::ECHO_REQUEST);
        p.set_msg_code(0);
        p.set_rest_of_header([0xff; 4]);
        p.set_echo_ident(0x1234);
        p.set_echo_seq_no(1);
        p.data_mut().fill(b'a');
        p.fill_checksum();
        assert_eq!(buf, REQUEST);
    }

    #[test]
    fn truncated() {
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&REQUEST[..n]), Err(Error::Truncated));
        }
        assert!(
            Packet::new_checked(&REQUEST[..8])
                .unwrap()
                .data()
                .is_empty()
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut data = data;
            if let Ok(mut p) = Packet::new_checked(&mut data[..]) {
                let _ = (
                    p.msg_type(), p.msg_code(), p.checksum(), p.echo_ident(),
                    p.echo_seq_no(), p.rest_of_header(), p.data(), p.verify_checksum(),
                );
                p.fill_checksum();
                p.set_msg_type(msg_type::ECHO_REQUEST);
                p.fill_checksum();
                p.make_echo_reply();
                prop_assert!(p.verify_checksum());
            }
        }

        /// The in-place reply equals etherparse's freshly built one.
        #[test]
        fn echo_reply_matches_etherparse(
            id in any::<u16>(), seq in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let src = [192, 0, 2, 1];
            let dst = [198, 51, 100, 10];
            let build = |reply: bool| {
                let b = etherparse::PacketBuilder::ipv4(src, dst, 64);
                let b = if reply { b.icmpv4_echo_reply(id, seq) } else { b.icmpv4_echo_request(id, seq) };
                let mut out = Vec::new();
                b.write(&mut out, &payload).unwrap();
                out.split_off(20)
            };
            let mut msg = build(false);
            let mut p = Packet::new_checked(&mut msg[..]).unwrap();
            prop_assert!(p.verify_checksum());
            p.make_echo_reply();
            prop_assert_eq!(msg, build(true));
        }
    }
}
