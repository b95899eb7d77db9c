//! IEEE 802.1Q tags.
//!
//! The view starts right after the tag's TPID, i.e. on the payload of an
//! Ethernet frame whose ethertype is [`EtherType::VLAN`](super::EtherType)
//! or [`EtherType::QINQ`](super::EtherType): two bytes of tag control
//! information, then the ethertype of what the tag encapsulates. A Q-in-Q
//! frame is two such views nested (the outer tag's inner ethertype is the
//! inner tag's TPID).

use super::{Error, Result, get_u16, set_u16};

mod field {
    pub const TCI: usize = 0;
    pub const ETHERTYPE: usize = 2;
    pub const PAYLOAD: usize = 4;
}

/// Length of the part of a tag this view covers (TCI + inner ethertype).
pub const HEADER_LEN: usize = field::PAYLOAD;

const PCP_SHIFT: u16 = 13;
const DEI_MASK: u16 = 0x1000;
const VID_MASK: u16 = 0x0fff;

/// A read/write view of an 802.1Q tag and what follows it.
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

    /// The whole tag control information word.
    #[inline]
    pub fn tci(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::TCI)
    }

    /// Priority code point (802.1p class, 0..=7).
    #[inline]
    pub fn pcp(&self) -> u8 {
        (self.tci() >> PCP_SHIFT) as u8
    }

    /// Drop eligible indicator.
    #[inline]
    pub fn dei(&self) -> bool {
        self.tci() & DEI_MASK != 0
    }

    /// VLAN identifier (0 = priority tag only, 4095 reserved).
    #[inline]
    pub fn vid(&self) -> u16 {
        self.tci() & VID_MASK
    }

    /// Ethertype of the encapsulated frame.
    #[inline]
    pub fn inner_ethertype(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_tci(&mut self, tci: u16) {
        set_u16(self.buffer.as_mut(), field::TCI, tci);
    }

    /// Sets the priority; only the low three bits of `pcp` are used.
    #[inline]
    pub fn set_pcp(&mut self, pcp: u8) {
        let tci = (self.tci() & !(0x7 << PCP_SHIFT)) | (u16::from(pcp & 0x7) << PCP_SHIFT);
        self.set_tci(tci);
    }

    #[inline]
    pub fn set_dei(&mut self, dei: bool) {
        let tci = (self.tci() & !DEI_MASK) | if dei { DEI_MASK } else { 0 };
        self.set_tci(tci);
    }

    /// Sets the VLAN id; only the low twelve bits of `vid` are used.
    #[inline]
    pub fn set_vid(&mut self, vid: u16) {
        let tci = (self.tci() & !VID_MASK) | (vid & VID_MASK);
        self.set_tci(tci);
    }

    #[inline]
    pub fn set_inner_ethertype(&mut self, ethertype: u16) {
        set_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
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
    use crate::wire::{EtherType, ethernet};
    use proptest::prelude::*;

    // 802.1Q frame: PCP 5, DEI 1, VID 100 (0xb064), carrying IPv4.
    const FRAME: [u8; 20] = [
        0x02, 0, 0, 0, 0, 0x02, // dst
        0x02, 0, 0, 0, 0, 0x01, // src
        0x81, 0x00, // TPID
        0xb0, 0x64, // TCI
        0x08, 0x00, // inner ethertype
        0x45, 0x00, // start of IPv4
    ];

    #[test]
    fn parse_golden() {
        let eth = ethernet::Frame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(eth.ethertype(), EtherType::VLAN);
        let tag = Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(tag.tci(), 0xb064);
        assert_eq!(tag.pcp(), 5);
        assert!(tag.dei());
        assert_eq!(tag.vid(), 100);
        assert_eq!(tag.inner_ethertype(), EtherType::IPV4);
        assert_eq!(tag.payload(), &[0x45, 0x00]);
    }

    #[test]
    fn build_golden() {
        let mut buf = [0u8; 6];
        let mut tag = Packet::new_checked(&mut buf[..]).unwrap();
        tag.set_vid(0xf064); // high bits must not leak into PCP/DEI
        tag.set_pcp(0xfd); // only 0b101 survives
        tag.set_dei(true);
        tag.set_inner_ethertype(EtherType::IPV4);
        tag.payload_mut().copy_from_slice(&[0x45, 0x00]);
        assert_eq!(buf, FRAME[14..]);

        let mut tag = Packet::new_unchecked(&mut buf[..]);
        tag.set_dei(false);
        tag.set_pcp(0);
        assert_eq!(tag.tci(), 100);
        tag.set_tci(0xffff);
        assert_eq!((tag.pcp(), tag.dei(), tag.vid()), (7, true, 0xfff));
    }

    #[test]
    fn qinq_nesting() {
        // Outer S-tag (vid 10) carrying a C-tag (vid 20) carrying IPv6.
        let payload = [0x00, 0x0a, 0x81, 0x00, 0x00, 0x14, 0x86, 0xdd];
        let outer = Packet::new_checked(&payload[..]).unwrap();
        assert_eq!(
            (outer.vid(), outer.inner_ethertype()),
            (10, EtherType::VLAN)
        );
        let inner = Packet::new_checked(outer.payload()).unwrap();
        assert_eq!(
            (inner.vid(), inner.inner_ethertype()),
            (20, EtherType::IPV6)
        );
        assert!(inner.payload().is_empty());
    }

    #[test]
    fn truncated() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&FRAME[14..14 + n]),
                Err(Error::Truncated)
            );
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(t) = Packet::new_checked(&data[..]) {
                let _ = (t.tci(), t.pcp(), t.dei(), t.vid(), t.inner_ethertype(), t.payload());
            }
        }
    }
}
