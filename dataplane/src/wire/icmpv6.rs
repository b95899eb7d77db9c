//! ICMP for IPv6 (RFC 4443) and the two Neighbor Discovery messages (RFC 4861)
//! limpet needs to own its IPv6 addresses: Neighbor Solicitation and
//! Neighbor Advertisement.
//!
//! Every buffer must be exactly the ICMP message (the IPv6 payload past
//! any extension headers): the checksum, with the IPv6 pseudo-header, covers
//! all of it.
//!
//! [`Packet`] covers any message. [`NeighborSolicit`] and [`NeighborAdvert`]
//! are separate views over the same bytes whose `check_len` also checks the
//! type, the code and the framing of every ND option, so their fixed-offset
//! accessors cannot fail and option lookups need no error path.
//!
//! Answering a solicitation for `target` from `requester` (whose link-layer
//! address came in the NS's source link-layer option): write the 32-byte
//! advertisement over the solicitation's buffer with
//! [`NeighborAdvert::new_unchecked`], then `init`, `set_flags(SOLICITED |
//! OVERRIDE)`, `set_target_addr(target)`, `set_target_ll_addr_option(mac)`,
//! `fill_checksum(target, requester)`, and set the IPv6 payload length to
//! [`NA_WITH_LL_LEN`] and hop limit to 255.

use std::net::Ipv6Addr;

use super::checksum;
use super::{Error, IpProtocol, MacAddr, Result, get_array, get_u16, set_u16};

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQNO: usize = 6;
    pub const DATA: usize = 8;

    pub const ND_FLAGS: usize = 4;
    pub const ND_TARGET: usize = 8;
    pub const ND_OPTIONS: usize = 24;
}

/// Type, code, checksum and the four type-specific bytes every message
/// defined by RFC 4443 and RFC 4861 carries.
pub const HEADER_LEN: usize = field::DATA;

/// An NS or NA without options.
pub const ND_LEN: usize = field::ND_OPTIONS;

/// An NS or NA carrying one Ethernet link-layer address option.
pub const NA_WITH_LL_LEN: usize = ND_LEN + 8;

/// Message types.
pub mod msg_type {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAM_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const ROUTER_SOLICIT: u8 = 133;
    pub const ROUTER_ADVERT: u8 = 134;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
    pub const REDIRECT: u8 = 137;
}

/// ND option types (RFC 4861 section 4.6).
pub mod nd_option {
    pub const SOURCE_LL_ADDR: u8 = 1;
    pub const TARGET_LL_ADDR: u8 = 2;
}

/// Neighbor Advertisement flag bits, as returned by
/// [`NeighborAdvert::flags`].
pub mod na_flags {
    pub const ROUTER: u8 = 0x80;
    pub const SOLICITED: u8 = 0x40;
    pub const OVERRIDE: u8 = 0x20;
}

#[inline]
fn sum_with_pseudo(data: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> u32 {
    let pseudo = checksum::pseudo_header_v6(src, dst, IpProtocol::ICMPV6, data.len() as u32);
    pseudo + checksum::sum(data)
}

#[inline]
fn verify(data: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> bool {
    checksum::fold(sum_with_pseudo(data, src, dst)) == 0xffff
}

#[inline]
fn fill(data: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) {
    set_u16(data, field::CHECKSUM, 0);
    let csum = !checksum::fold(sum_with_pseudo(data, src, dst));
    set_u16(data, field::CHECKSUM, csum);
}

/// Validates ND option framing: every option has a non-zero length
/// (RFC 4861 says to discard the packet otherwise) and ends inside the
/// buffer. Each iteration consumes at least 8 bytes, which bounds the loop
/// by the buffer length.
fn check_options(mut rest: &[u8]) -> Result<()> {
    while !rest.is_empty() {
        let Some(&units) = rest.get(1) else {
            return Err(Error::Truncated);
        };
        let len = usize::from(units) * 8;
        if len == 0 {
            return Err(Error::Malformed);
        }
        let Some(next) = rest.get(len..) else {
            return Err(Error::Truncated);
        };
        rest = next;
    }
    Ok(())
}

/// The Ethernet address in the first option of type `kind`, if any. Only a
/// one-unit option (the Ethernet form) yields an address.
fn find_ll_option(mut rest: &[u8], kind: u8) -> Option<MacAddr> {
    // Same bound as `check_options`; `get` keeps this panic-free even on
    // an unchecked view.
    while let (Some(&t), Some(&units)) = (rest.first(), rest.get(1)) {
        let len = usize::from(units) * 8;
        if len == 0 {
            return None;
        }
        if t == kind && units == 1 {
            return rest.get(2..8).map(|b| MacAddr(get_array(b, 0)));
        }
        rest = rest.get(len..)?;
    }
    None
}

/// A read/write view of any ICMP (IPv6) message.
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

    /// Everything after the 8-byte header.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }

    #[inline]
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        verify(self.buffer.as_ref(), src, dst)
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
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }

    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        fill(self.buffer.as_mut(), src, dst);
    }

    /// Turns an echo request into its reply in place (type 128 -> 129,
    /// code 0), updating the checksum incrementally. Swapping source and
    /// destination leaves the pseudo-header sum unchanged; answering a
    /// multicast request from a unicast address does not: follow with
    /// [`Packet::update_checksum_for_addr_change`].
    #[inline]
    pub fn make_echo_reply(&mut self) {
        let data = self.buffer.as_mut();
        let old = u16::from_be_bytes([data[field::TYPE], data[field::CODE]]);
        let new = u16::from_be_bytes([msg_type::ECHO_REPLY, 0]);
        let csum = checksum::update_u16(get_u16(data, field::CHECKSUM), old, new);
        data[field::TYPE] = msg_type::ECHO_REPLY;
        data[field::CODE] = 0;
        set_u16(data, field::CHECKSUM, csum);
    }

    /// Accounts for a pseudo-header address rewrite (16-byte octets).
    #[inline]
    pub fn update_checksum_for_addr_change(&mut self, old: &[u8], new: &[u8]) {
        let csum = checksum::update_bytes(self.checksum(), old, new);
        self.set_checksum(csum);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// Fields and checks common to NS and NA, which share a layout up to the
/// options.
macro_rules! nd_view_common {
    ($view:ident, $msg_type:expr) => {
        impl<T: AsRef<[u8]>> $view<T> {
            #[inline]
            pub const fn new_unchecked(buffer: T) -> $view<T> {
                $view { buffer }
            }

            #[inline]
            pub fn new_checked(buffer: T) -> Result<$view<T>> {
                let view = $view::new_unchecked(buffer);
                view.check_len()?;
                Ok(view)
            }

            /// Ensures at least 24 bytes, the right type, code 0 and
            /// well-framed options.
            pub fn check_len(&self) -> Result<()> {
                let data = self.buffer.as_ref();
                if data.len() < ND_LEN {
                    return Err(Error::Truncated);
                }
                if data[field::TYPE] != $msg_type || data[field::CODE] != 0 {
                    return Err(Error::Malformed);
                }
                check_options(&data[field::ND_OPTIONS..])
            }

            #[inline]
            pub fn into_inner(self) -> T {
                self.buffer
            }

            #[inline]
            pub fn checksum(&self) -> u16 {
                get_u16(self.buffer.as_ref(), field::CHECKSUM)
            }

            #[inline]
            pub fn target_addr(&self) -> Ipv6Addr {
                Ipv6Addr::from(get_array::<16>(self.buffer.as_ref(), field::ND_TARGET))
            }

            /// The raw option bytes after the target address.
            #[inline]
            pub fn options(&self) -> &[u8] {
                &self.buffer.as_ref()[field::ND_OPTIONS..]
            }

            #[inline]
            pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
                verify(self.buffer.as_ref(), src, dst)
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $view<T> {
            /// Writes type, code 0 and a zero flags/reserved word, for
            /// building the message from scratch.
            #[inline]
            pub fn init(&mut self) {
                let data = self.buffer.as_mut();
                data[field::TYPE] = $msg_type;
                data[field::CODE] = 0;
                data[field::ND_FLAGS..field::ND_TARGET].fill(0);
            }

            #[inline]
            pub fn set_target_addr(&mut self, addr: Ipv6Addr) {
                self.buffer.as_mut()[field::ND_TARGET..field::ND_OPTIONS]
                    .copy_from_slice(&addr.octets());
            }

            #[inline]
            pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
                fill(self.buffer.as_mut(), src, dst);
            }

            #[inline]
            pub fn options_mut(&mut self) -> &mut [u8] {
                &mut self.buffer.as_mut()[field::ND_OPTIONS..]
            }

            /// Writes a one-unit link-layer address option of type `kind`
            /// as the first option. Needs 8 bytes of option space.
            fn write_ll_option(&mut self, kind: u8, mac: MacAddr) -> Result<()> {
                let Some(opt) = self
                    .buffer
                    .as_mut()
                    .get_mut(field::ND_OPTIONS..NA_WITH_LL_LEN)
                else {
                    return Err(Error::Truncated);
                };
                opt[0] = kind;
                opt[1] = 1;
                opt[2..].copy_from_slice(&mac.0);
                Ok(())
            }
        }

        impl<T: AsRef<[u8]>> AsRef<[u8]> for $view<T> {
            fn as_ref(&self) -> &[u8] {
                self.buffer.as_ref()
            }
        }
    };
}

/// A read/write view of a Neighbor Solicitation (type 135).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicit<T: AsRef<[u8]>> {
    buffer: T,
}

nd_view_common!(NeighborSolicit, msg_type::NEIGHBOR_SOLICIT);

impl<T: AsRef<[u8]>> NeighborSolicit<T> {
    /// The solicitor's link-layer address, absent in DAD probes (sent from
    /// the unspecified address).
    #[inline]
    pub fn source_ll_addr(&self) -> Option<MacAddr> {
        find_ll_option(self.options(), nd_option::SOURCE_LL_ADDR)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NeighborSolicit<T> {
    /// Writes a source link-layer address option at the start of the
    /// options (the buffer must hold [`NA_WITH_LL_LEN`] bytes).
    #[inline]
    pub fn set_source_ll_addr_option(&mut self, mac: MacAddr) -> Result<()> {
        self.write_ll_option(nd_option::SOURCE_LL_ADDR, mac)
    }
}

/// A read/write view of a Neighbor Advertisement (type 136).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborAdvert<T: AsRef<[u8]>> {
    buffer: T,
}

nd_view_common!(NeighborAdvert, msg_type::NEIGHBOR_ADVERT);

impl<T: AsRef<[u8]>> NeighborAdvert<T> {
    /// The R/S/O flag bits; see [`na_flags`].
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::ND_FLAGS]
            & (na_flags::ROUTER | na_flags::SOLICITED | na_flags::OVERRIDE)
    }

    #[inline]
    pub fn router_flag(&self) -> bool {
        self.flags() & na_flags::ROUTER != 0
    }

    #[inline]
    pub fn solicited_flag(&self) -> bool {
        self.flags() & na_flags::SOLICITED != 0
    }

    #[inline]
    pub fn override_flag(&self) -> bool {
        self.flags() & na_flags::OVERRIDE != 0
    }

    #[inline]
    pub fn target_ll_addr(&self) -> Option<MacAddr> {
        find_ll_option(self.options(), nd_option::TARGET_LL_ADDR)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NeighborAdvert<T> {
    /// Sets the R/S/O bits from a mask of [`na_flags`]; the reserved bits
    /// are cleared.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::ND_FLAGS] =
            flags & (na_flags::ROUTER | na_flags::SOLICITED | na_flags::OVERRIDE);
    }

    /// Writes a target link-layer address option at the start of the
    /// options (the buffer must hold [`NA_WITH_LL_LEN`] bytes).
    #[inline]
    pub fn set_target_ll_addr_option(&mut self, mac: MacAddr) -> Result<()> {
        self.write_ll_option(nd_option::TARGET_LL_ADDR, mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REQUESTER_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const OUR_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);

    fn requester() -> Ipv6Addr {
        "2001:db8::1".parse().unwrap()
    }
    fn target() -> Ipv6Addr {
        "2001:db8::2".parse().unwrap()
    }
    fn solicited_node() -> Ipv6Addr {
        "ff02::1:ff00:2".parse().unwrap()
    }

    // NS from 2001:db8::1 to ff02::1:ff00:2 for 2001:db8::2 with SLLA.
    const NS: [u8; 32] = [
        0x87, 0x00, 0x97, 0x6b, // type 135, code 0, checksum
        0x00, 0x00, 0x00, 0x00, // reserved
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // target
        0x01, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // SLLA
    ];

    // Solicited NA from 2001:db8::2 to 2001:db8::1, S|O, with TLLA.
    const NA: [u8; 32] = [
        0x88, 0x00, 0x8a, 0x72, // type 136, code 0, checksum
        0x60, 0x00, 0x00, 0x00, // S, O
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // target
        0x02, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // TLLA
    ];

    // ping6 echo request id 0x0a0b seq 7, 4 bytes of data, 2001:db8::1 -> ::2.
    const ECHO: [u8; 12] = [
        0x80, 0x00, 0x7c, 0x94, 0x0a, 0x0b, 0x00, 0x07, 0xde, 0xad, 0xbe, 0xef,
    ];

    #[test]
    fn parse_ns_golden() {
        let p = Packet::new_checked(&NS[..]).unwrap();
        assert_eq!(p.msg_type(), msg_type::NEIGHBOR_SOLICIT);
        assert_eq!(p.msg_code(), 0);
        assert!(p.verify_checksum(requester(), solicited_node()));
        let ns = NeighborSolicit::new_checked(&NS[..]).unwrap();
        assert_eq!(ns.checksum(), 0x976b);
        assert_eq!(ns.target_addr(), target());
        assert_eq!(ns.source_ll_addr(), Some(REQUESTER_MAC));
        assert_eq!(ns.options().len(), 8);
        assert!(ns.verify_checksum(requester(), solicited_node()));
        assert!(!ns.verify_checksum(requester(), target()));
        assert_eq!(NeighborAdvert::new_checked(&NS[..]), Err(Error::Malformed));
    }

    #[test]
    fn parse_na_golden() {
        let na = NeighborAdvert::new_checked(&NA[..]).unwrap();
        assert_eq!(na.flags(), na_flags::SOLICITED | na_flags::OVERRIDE);
        assert!(!na.router_flag() && na.solicited_flag() && na.override_flag());
        assert_eq!(na.target_addr(), target());
        assert_eq!(na.target_ll_addr(), Some(OUR_MAC));
        assert!(na.verify_checksum(target(), requester()));
    }

    #[test]
    fn answer_ns_in_place() {
        let mut buf = NS;
        let ns = NeighborSolicit::new_checked(&buf[..]).unwrap();
        let (asked, their_mac) = (ns.target_addr(), ns.source_ll_addr());
        assert_eq!(their_mac, Some(REQUESTER_MAC));

        let mut na = NeighborAdvert::new_unchecked(&mut buf[..]);
        na.init();
        na.set_flags(na_flags::SOLICITED | na_flags::OVERRIDE);
        na.set_target_addr(asked);
        na.set_target_ll_addr_option(OUR_MAC).unwrap();
        na.fill_checksum(asked, requester());
        assert_eq!(buf, NA);
    }

    #[test]
    fn build_ns_golden() {
        let mut buf = [0xffu8; 32];
        let mut ns = NeighborSolicit::new_unchecked(&mut buf[..]);
        ns.init();
        ns.set_target_addr(target());
        ns.set_source_ll_addr_option(REQUESTER_MAC).unwrap();
        ns.options_mut()[0] = nd_option::SOURCE_LL_ADDR;
        ns.fill_checksum(requester(), solicited_node());
        assert_eq!(buf, NS);
        // No room for the option in a bare 24-byte message.
        let mut short = [0u8; 24];
        let mut ns = NeighborSolicit::new_unchecked(&mut short[..]);
        assert_eq!(ns.set_source_ll_addr_option(OUR_MAC), Err(Error::Truncated));
    }

    #[test]
    fn nd_option_framing() {
        let with_opts = |opts: &[u8]| {
            let mut b = NS[..24].to_vec();
            b.extend_from_slice(opts);
            b
        };
        // No options (DAD probe): valid, no address.
        let b = with_opts(&[]);
        assert_eq!(
            NeighborSolicit::new_checked(&b[..])
                .unwrap()
                .source_ll_addr(),
            None
        );
        // Zero-length option: must be discarded.
        let b = with_opts(&[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(NeighborSolicit::new_checked(&b[..]), Err(Error::Malformed));
        // Option runs past the end, and a lone trailing byte.
        let b = with_opts(&[1, 2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(NeighborSolicit::new_checked(&b[..]), Err(Error::Truncated));
        let b = with_opts(&[1]);
        assert_eq!(NeighborSolicit::new_checked(&b[..]), Err(Error::Truncated));
        // Unknown option (nonce, 14) first, then SLLA: found past it.
        let b = with_opts(&[
            14, 1, 1, 2, 3, 4, 5, 6, 1, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56,
        ]);
        let ns = NeighborSolicit::new_checked(&b[..]).unwrap();
        assert_eq!(ns.source_ll_addr(), Some(REQUESTER_MAC));
        // A two-unit "link-layer" option is not Ethernet: ignored.
        let b = with_opts(&[1, 2, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            NeighborSolicit::new_checked(&b[..])
                .unwrap()
                .source_ll_addr(),
            None
        );
        // Target option in an NS is not a source option.
        let b = with_opts(&[2, 1, 1, 2, 3, 4, 5, 6]);
        assert_eq!(
            NeighborSolicit::new_checked(&b[..])
                .unwrap()
                .source_ll_addr(),
            None
        );
    }

    #[test]
    fn nd_rejects() {
        for n in 0..ND_LEN {
            assert_eq!(
                NeighborSolicit::new_checked(&NS[..n]),
                Err(Error::Truncated)
            );
            assert_eq!(NeighborAdvert::new_checked(&NA[..n]), Err(Error::Truncated));
        }
        let mut b = NS;
        b[1] = 1;
        assert_eq!(NeighborSolicit::new_checked(&b[..]), Err(Error::Malformed));
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&NS[..n]), Err(Error::Truncated));
        }
    }

    #[test]
    fn echo_golden() {
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut buf = ECHO;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        assert_eq!(p.msg_type(), msg_type::ECHO_REQUEST);
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x0a0b, 7));
        assert_eq!(p.data(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(p.verify_checksum(requester(), dst));
        p.make_echo_reply();
        assert_eq!(p.msg_type(), msg_type::ECHO_REPLY);
        assert!(p.verify_checksum(dst, requester()));
        let c = p.checksum();
        p.fill_checksum(dst, requester());
        assert_eq!(p.checksum(), c);

        // Request to all-nodes answered from our unicast address.
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        let mut buf = ECHO;
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum(requester(), all_nodes);
        p.make_echo_reply();
        p.update_checksum_for_addr_change(&all_nodes.octets(), &dst.octets());
        assert!(p.verify_checksum(dst, requester()));
    }

    #[test]
    fn build_echo_golden() {
        let mut buf = [0u8; 12];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(msg_type::ECHO_REQUEST);
        p.set_msg_code(0);
        p.set_echo_ident(0x0a0b);
        p.set_echo_seq_no(7);
        p.data_mut().copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        p.fill_checksum(requester(), "2001:db8::2".parse().unwrap());
        assert_eq!(buf, ECHO);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            mut data in proptest::collection::vec(any::<u8>(), 0..72),
            kind in prop::sample::select(vec![135u8, 136, 128]),
            units in proptest::collection::vec(0u8..3, 6),
        ) {
            if data.len() >= 2 {
                data[0] = kind;
                data[1] = 0;
            }
            // Plant plausible option lengths every 8 bytes past the target.
            for (i, u) in (ND_LEN + 1..data.len()).step_by(8).zip(units) {
                data[i] = u;
            }
            let (a, b) = (Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
            if let Ok(p) = Packet::new_checked(&data[..]) {
                let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.echo_ident(),
                         p.echo_seq_no(), p.data(), p.verify_checksum(a, b));
            }
            if let Ok(ns) = NeighborSolicit::new_checked(&data[..]) {
                let _ = (ns.checksum(), ns.target_addr(), ns.options(), ns.source_ll_addr(),
                         ns.verify_checksum(a, b));
            }
            if let Ok(na) = NeighborAdvert::new_checked(&data[..]) {
                let _ = (na.flags(), na.router_flag(), na.solicited_flag(), na.override_flag(),
                         na.target_addr(), na.target_ll_addr());
            }
            let mut copy = data.clone();
            if let Ok(mut na) = NeighborAdvert::new_checked(&mut copy[..]) {
                na.set_flags(0xff);
                let _ = na.set_target_ll_addr_option(OUR_MAC);
                na.fill_checksum(a, b);
                prop_assert!(na.verify_checksum(a, b));
            }
        }

        #[test]
        fn find_ll_option_never_panics(opts in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = find_ll_option(&opts, 1);
            let _ = check_options(&opts);
        }

        /// An NA built with our setters equals etherparse's, and etherparse
        /// accepts our checksum.
        #[test]
        fn na_matches_etherparse(
            src in any::<u128>(), dst in any::<u128>(), tgt in any::<u128>(),
            mac in any::<[u8; 6]>(),
            router in any::<bool>(), solicited in any::<bool>(), over in any::<bool>(),
        ) {
            use etherparse::{Icmpv6Type, PacketBuilder, icmpv6::NeighborAdvertisementHeader};
            let (src, dst, tgt) = (Ipv6Addr::from(src), Ipv6Addr::from(dst), Ipv6Addr::from(tgt));
            let header = NeighborAdvertisementHeader { router, solicited, r#override: over };
            let mut payload = tgt.octets().to_vec();
            payload.extend_from_slice(&[2, 1]);
            payload.extend_from_slice(&mac);
            let b = PacketBuilder::ipv6(src.octets(), dst.octets(), 255)
                .icmpv6(Icmpv6Type::NeighborAdvertisement(header));
            let mut theirs = Vec::new();
            b.write(&mut theirs, &payload).unwrap();
            let theirs = theirs.split_off(40);

            let mut ours = [0u8; NA_WITH_LL_LEN];
            let mut na = NeighborAdvert::new_unchecked(&mut ours[..]);
            na.init();
            let flags = header.to_bytes()[0];
            na.set_flags(flags);
            na.set_target_addr(tgt);
            na.set_target_ll_addr_option(MacAddr(mac)).unwrap();
            na.fill_checksum(src, dst);
            prop_assert_eq!(&ours[..], &theirs[..]);

            let na = NeighborAdvert::new_checked(&ours[..]).unwrap();
            prop_assert_eq!((na.router_flag(), na.solicited_flag(), na.override_flag()), (router, solicited, over));
            prop_assert_eq!(na.target_ll_addr(), Some(MacAddr(mac)));
            let slice = etherparse::Icmpv6Slice::from_slice(&ours).unwrap();
            prop_assert!(slice.is_checksum_valid(src.octets(), dst.octets()));
        }

        #[test]
        fn echo_reply_matches_etherparse(
            src in any::<u128>(), dst in any::<u128>(),
            id in any::<u16>(), seq in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (s, d) = (Ipv6Addr::from(src).octets(), Ipv6Addr::from(dst).octets());
            let build = |reply: bool| {
                let b = etherparse::PacketBuilder::ipv6(s, d, 64);
                let b = if reply { b.icmpv6_echo_reply(id, seq) } else { b.icmpv6_echo_request(id, seq) };
                let mut out = Vec::new();
                b.write(&mut out, &payload).unwrap();
                out.split_off(40)
            };
            let mut msg = build(false);
            let mut p = Packet::new_checked(&mut msg[..]).unwrap();
            prop_assert!(p.verify_checksum(Ipv6Addr::from(s), Ipv6Addr::from(d)));
            p.make_echo_reply();
            prop_assert_eq!(msg, build(true));
        }
    }
}
