//! Answering ARP requests for addresses a sink stands in for: limpet
//! resolves its backends' MAC addresses itself, so a sink that plays the
//! backends on a DPDK port (where no kernel answers for it) must answer
//! for them. IPv4 only.

use std::net::Ipv4Addr;

/// Bytes of an ARP reply frame as sent: 42 of Ethernet + ARP, zero padded
/// to the 60-byte minimum (FCS excluded).
pub const ARP_FRAME_LEN: usize = 60;

/// An IPv4 prefix, e.g. `203.0.113.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Prefix {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        ip.to_bits() & mask == self.addr.to_bits() & mask
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 prefix (a.b.c.d/len)");
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        Ok(Self { addr, len })
    }
}

/// If `frame` is an ARP request for an address in one of `prefixes`,
/// writes into `out` the reply that says `mac` holds it and returns true.
pub fn reply_to(
    frame: &[u8],
    mac: [u8; 6],
    prefixes: &[Prefix],
    out: &mut [u8; ARP_FRAME_LEN],
) -> bool {
    // Ethernet + ARP for IPv4 over Ethernet: 42 bytes; no VLAN tag.
    if frame.len() < 42 || frame[12..14] != [0x08, 0x06] {
        return false;
    }
    let arp = &frame[14..42];
    // htype 1, ptype IPv4, hlen 6, plen 4, operation 1 (request).
    if arp[..8] != [0, 1, 0x08, 0x00, 6, 4, 0, 1] {
        return false;
    }
    let target = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
    if !prefixes.iter().any(|p| p.contains(target)) {
        return false;
    }
    out.fill(0);
    out[..6].copy_from_slice(&arp[8..14]); // to the asker
    out[6..12].copy_from_slice(&mac);
    out[12..14].copy_from_slice(&[0x08, 0x06]);
    out[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    out[22..28].copy_from_slice(&mac); // sender: us, the target address
    out[28..32].copy_from_slice(&arp[24..28]);
    out[32..38].copy_from_slice(&arp[8..14]); // target: the asker
    out[38..42].copy_from_slice(&arp[14..18]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 203, 0, 113, 1]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f.resize(60, 0);
        f
    }

    #[test]
    fn answers_requests_for_its_prefixes_only() {
        let prefixes = ["203.0.113.8/29".parse::<Prefix>().unwrap()];
        let mac = [2, 0xbb, 0, 0, 0, 9];
        let mut out = [0u8; ARP_FRAME_LEN];
        assert!(reply_to(
            &request([203, 0, 113, 11]),
            mac,
            &prefixes,
            &mut out
        ));
        let mut want = vec![2, 0, 0, 0, 0, 1];
        want.extend_from_slice(&mac);
        want.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
        want.extend_from_slice(&mac);
        want.extend_from_slice(&[203, 0, 113, 11, 2, 0, 0, 0, 0, 1, 203, 0, 113, 1]);
        want.resize(60, 0);
        assert_eq!(out.to_vec(), want);
        assert!(!reply_to(
            &request([203, 0, 113, 16]),
            mac,
            &prefixes,
            &mut out
        ));
        let mut reply = request([203, 0, 113, 11]);
        reply[21] = 2; // a reply is not answered
        assert!(!reply_to(&reply, mac, &prefixes, &mut out));
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!(
            "0.0.0.0/0"
                .parse::<Prefix>()
                .unwrap()
                .contains(Ipv4Addr::new(1, 2, 3, 4))
        );
    }
}
