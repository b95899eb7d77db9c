//! Zero-copy views over packet bytes, one module per protocol.
//!
//! Every view is a thin wrapper `View<T: AsRef<[u8]>>` around a borrowed or
//! owned buffer. `new_unchecked` wraps without looking; `new_checked` runs
//! `check_len` once, and after it succeeds no getter, setter or payload
//! accessor of that view can panic: `check_len` validates every length and
//! offset the accessors rely on. Setters of length fields (`set_header_len`,
//! `set_total_len`, ...) can break that guarantee, as building a packet
//! must be able to; re-check after using them on a view you keep reading.
//! Views never allocate and never copy the packet; setters write through to
//! the buffer.
//!
//! Getters live in `impl<T: AsRef<[u8]>>`, setters in
//! `impl<T: AsRef<[u8]> + AsMut<[u8]>>`, so a view over `&[u8]` is read-only
//! by construction.
//!
//! The NAT rewrite the load balancer performs uses RFC 1624 incremental
//! checksum updates ([`checksum::update_u16`], [`checksum::update_bytes`]),
//! wrapped per protocol:
//!
//! - [`ipv4::Packet::set_dst_addr_update_checksum`],
//!   [`ipv4::Packet::set_src_addr_update_checksum`],
//!   [`ipv4::Packet::decrement_ttl_update_checksum`];
//! - [`tcp::Packet::set_dst_port_update_checksum`],
//!   [`tcp::Packet::set_src_port_update_checksum`],
//!   [`tcp::Packet::update_checksum_for_addr_change`] and the same three on
//!   [`udp::Packet`], which keep an IPv4 "no checksum" zero as zero.

use core::fmt;

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vlan;

/// Why a buffer was refused by a view's `check_len`.
///
/// Deliberately coarse: the packet path only counts and drops, so the two
/// cases exist to tell "capture too short" apart from "sender is broken".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The buffer is shorter than the header, or than a length field claims.
    Truncated,
    /// A field holds a value the protocol forbids (wrong version, a length
    /// below the header's own size, a bad option, ...).
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "truncated packet",
            Error::Malformed => "malformed packet",
        })
    }
}

impl std::error::Error for Error {}

/// Result of parsing with a wire view.
pub type Result<T> = core::result::Result<T, Error>;

/// IANA protocol numbers, as carried in IPv4 `protocol` and IPv6
/// `next_header`.
///
/// Plain `u8` constants rather than an enum so they work directly as match
/// patterns on the raw field and unknown values need no conversion.
pub enum IpProtocol {}

impl IpProtocol {
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    /// IPv4 in IP (RFC 2003).
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    /// IPv6 in IP (RFC 2473).
    pub const IPV6: u8 = 41;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NONE: u8 = 59;
    pub const DSTOPTS: u8 = 60;
    pub const SCTP: u8 = 132;
}

/// Ethernet II type field values.
pub enum EtherType {}

impl EtherType {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

/// An IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const UNSPECIFIED: MacAddr = MacAddr([0; 6]);

    pub const fn new(octets: [u8; 6]) -> MacAddr {
        MacAddr(octets)
    }

    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Group bit set: multicast, broadcast included.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub const fn is_broadcast(self) -> bool {
        let b = self.0;
        b[0] == 0xff && b[1] == 0xff && b[2] == 0xff && b[3] == 0xff && b[4] == 0xff && b[5] == 0xff
    }

    pub const fn is_unicast(self) -> bool {
        !self.is_multicast()
    }

    /// The Ethernet group address an IPv6 multicast address maps to
    /// (RFC 2464 section 7): `33:33` plus its low 32 bits. Needed to address
    /// Neighbor Solicitations to a solicited-node group.
    pub const fn from_ipv6_multicast(addr: std::net::Ipv6Addr) -> MacAddr {
        let o = addr.octets();
        MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> MacAddr {
        MacAddr(octets)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// Byte helpers shared by the views. Callers index with constant ranges that
// `check_len` has already proven in bounds, so the slice indexing inside
// cannot fail on a checked view.

#[inline(always)]
fn get_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

#[inline(always)]
fn set_u16(data: &mut [u8], at: usize, value: u16) {
    let [a, b] = value.to_be_bytes();
    data[at] = a;
    data[at + 1] = b;
}

#[inline(always)]
fn get_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

#[inline(always)]
fn set_u32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

#[inline(always)]
fn get_array<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&data[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display() {
        assert_eq!(Error::Truncated.to_string(), "truncated packet");
        assert_eq!(Error::Malformed.to_string(), "malformed packet");
        let e: &dyn std::error::Error = &Error::Malformed;
        assert!(e.source().is_none());
    }

    #[test]
    fn mac_display_and_kinds() {
        let m = MacAddr([0x02, 0x00, 0x5e, 0x10, 0xab, 0x0f]);
        assert_eq!(m.to_string(), "02:00:5e:10:ab:0f");
        assert_eq!(format!("{m:?}"), "02:00:5e:10:ab:0f");
        assert!(m.is_unicast());
        assert!(!m.is_multicast());
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]).is_broadcast());
        let sn: std::net::Ipv6Addr = "ff02::1:ff00:1234".parse().unwrap();
        assert_eq!(
            MacAddr::from_ipv6_multicast(sn),
            MacAddr([0x33, 0x33, 0xff, 0x00, 0x12, 0x34])
        );
    }

    /// The pipeline's parse-and-DNAT sequence over a whole tagged frame with
    /// Ethernet padding, checked against etherparse's build of the result.
    #[test]
    fn frame_chain_dnat() {
        use std::net::Ipv4Addr;
        let build = |dst: [u8; 4], dport: u16| {
            let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .single_vlan(etherparse::VlanId::try_new(100).unwrap())
                .ipv4([192, 0, 2, 1], dst, 64)
                .udp(40000, dport);
            let mut out = Vec::new();
            b.write(&mut out, b"hi").unwrap();
            // Pad to the 60-byte Ethernet minimum as a NIC delivers it.
            out.resize(60, 0);
            out
        };
        let mut frame = build([198, 51, 100, 10], 53);
        let backend = Ipv4Addr::new(203, 0, 113, 7);

        let mut eth = ethernet::Frame::new_checked(&mut frame[..]).unwrap();
        assert_eq!(eth.ethertype(), EtherType::VLAN);
        let mut tag = vlan::Packet::new_checked(eth.payload_mut()).unwrap();
        assert_eq!((tag.vid(), tag.inner_ethertype()), (100, EtherType::IPV4));
        let mut ip = ipv4::Packet::new_checked(tag.payload_mut()).unwrap();
        assert!(ip.verify_checksum() && !ip.is_fragment());
        assert_eq!(ip.protocol(), IpProtocol::UDP);
        let old = ip.dst_addr();
        ip.set_dst_addr_update_checksum(backend);
        ip.decrement_ttl_update_checksum();
        let mut udp = udp::Packet::new_checked(ip.payload_mut()).unwrap();
        assert_eq!(udp.payload(), b"hi");
        udp.update_checksum_for_addr_change(&old.octets(), &backend.octets());
        udp.set_dst_port_update_checksum(5353);

        let mut expected = build(backend.octets(), 5353);
        expected[18 + 8] = 63; // TTL, past Ethernet (14) + tag (4)
        let mut ip = ipv4::Packet::new_checked(&mut expected[18..]).unwrap();
        ip.fill_checksum();
        assert_eq!(frame, expected);
    }

    #[test]
    fn byte_helpers() {
        let mut b = [0u8; 8];
        set_u16(&mut b, 1, 0xabcd);
        set_u32(&mut b, 3, 0x0102_0304);
        assert_eq!(b, [0, 0xab, 0xcd, 1, 2, 3, 4, 0]);
        assert_eq!(get_u16(&b, 1), 0xabcd);
        assert_eq!(get_u32(&b, 3), 0x0102_0304);
        assert_eq!(get_array::<3>(&b, 2), [0xcd, 1, 2]);
    }
}
