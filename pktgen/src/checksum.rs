//! The Internet checksum (RFC 1071) and the TCP/UDP pseudo-headers.

use std::net::IpAddr;

/// Running ones'-complement sum, kept wide so carries are folded once at the
/// end instead of after every word.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sum(u64);

impl Sum {
    /// Adds `data` as big-endian 16-bit words. An odd trailing byte is padded
    /// with zero, as RFC 1071 requires; callers only ever pass an odd slice
    /// last, so the padding never shifts a later word.
    pub(crate) fn add(mut self, data: &[u8]) -> Self {
        let mut words = data.chunks_exact(2);
        for w in &mut words {
            self.0 += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            self.0 += u64::from(*last) << 8;
        }
        self
    }

    pub(crate) fn add_u16(mut self, v: u16) -> Self {
        self.0 += u64::from(v);
        self
    }

    pub(crate) fn add_u32(self, v: u32) -> Self {
        self.add_u16((v >> 16) as u16).add_u16(v as u16)
    }

    /// Folds the carries and complements: the value to store in a header.
    pub(crate) fn finish(self) -> u16 {
        let mut s = self.0;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
}

/// Sum of the pseudo-header that TCP and UDP checksums cover (RFC 793 /
/// RFC 768 for IPv4, RFC 8200 section 8.1 for IPv6). `l4_len` is the length
/// of the L4 header plus payload.
pub(crate) fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize) -> Sum {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Sum::default()
            .add(&s.octets())
            .add(&d.octets())
            .add_u16(u16::from(proto))
            .add_u16(l4_len as u16),
        (s, d) => Sum::default()
            .add(&ip_octets16(s))
            .add(&ip_octets16(d))
            .add_u32(l4_len as u32)
            .add_u16(u16::from(proto)),
    }
}

fn ip_octets16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Checksum of a whole L4 segment (its checksum field must be zero).
///
/// UDP reserves a transmitted zero for "no checksum", so for UDP a computed
/// zero is sent as its ones'-complement twin 0xFFFF (RFC 768). TCP has no
/// such rule and gets the computed value as is, as real stacks send it.
pub(crate) fn l4(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8], udp: bool) -> u16 {
    let c = pseudo_header(src, dst, proto, segment.len())
        .add(segment)
        .finish();
    if udp && c == 0 { 0xffff } else { c }
}

#[cfg(test)]
mod tests {
    use super::Sum;

    #[test]
    fn rfc1071_example() {
        // The worked example from RFC 1071 section 3: the folded sum is
        // 0xddf2, so the checksum is its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Sum::default().add(&data).finish(), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(
            Sum::default().add(&[0x12, 0x34, 0x56]).finish(),
            Sum::default().add(&[0x12, 0x34, 0x56, 0x00]).finish()
        );
    }

    #[test]
    fn data_plus_checksum_verifies_to_zero() {
        let data = [0x45u8, 0x00, 0x00, 0x1c, 0xab, 0xcd, 0x40, 0x00, 0x40, 0x11];
        let c = Sum::default().add(&data).finish();
        assert_eq!(Sum::default().add(&data).add_u16(c).finish(), 0);
    }
}
