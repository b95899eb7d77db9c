//! Layer 2 that limpet owns: answering ARP and IPv6 neighbour solicitations
//! for the addresses it serves, and resolving its backends' (or next hops')
//! MAC addresses itself, with retries. limpet does not lean on the kernel
//! stack of the interfaces it drives, so this is the whole of its L2.
//!
//! This module is pure logic over frames: the caller feeds it the ARP and
//! ND frames it receives ([`Neighbours::handle`]) and sends what it asks
//! for. In the `AF_PACKET` deployment a control-side thread does that over a
//! filtered raw socket, and republishes the snapshot when a backend's
//! address resolves or changes.

use crate::wire::icmpv6::{NeighborAdvert, NeighborSolicit, na_flags};
use crate::wire::{EtherType, IpProtocol, MacAddr, arp, ethernet, icmpv6, ipv6};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// First retry after this long; doubles up to [`MAX_BACKOFF_MS`].
const FIRST_RETRY_MS: u64 = 500;
const MAX_BACKOFF_MS: u64 = 8_000;
/// A resolved entry is refreshed (re-requested) after this long.
const REFRESH_MS: u64 = 60_000;
/// Requests without an answer before an address counts as unresolved.
const TRIES_BEFORE_UNRESOLVED: u32 = 3;

/// An address limpet owns on the link, with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl InterfaceAddr {
    /// Whether `ip` is on this address's subnet.
    pub fn on_link(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix.min(32)))
                    .unwrap_or(0);
                a.to_bits() & mask == b.to_bits() & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix.min(128)))
                    .unwrap_or(0);
                a.to_bits() & mask == b.to_bits() & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: Option<MacAddr>,
    tries: u32,
    next_request_ms: u64,
}

/// Counters, for the admin API.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NeighbourCounters {
    pub arp_answered: u64,
    pub nd_answered: u64,
    pub requests_sent: u64,
    pub learned: u64,
    /// Wanted addresses that have not answered [`TRIES_BEFORE_UNRESOLVED`]
    /// requests, right now.
    pub unresolved: u64,
    /// Frames ignored: not for us, malformed, or not ARP/ND.
    pub ignored: u64,
}

/// What [`Neighbours::handle`] made of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A reply was written to the output buffer; send it.
    Reply(usize),
    /// A wanted address's MAC was learnt or changed.
    Learned,
    Ignored,
}

/// The neighbour table and responder of one interface.
#[derive(Debug)]
pub struct Neighbours {
    mac: MacAddr,
    addrs: Vec<InterfaceAddr>,
    /// At most one per family.
    gateways: Vec<IpAddr>,
    served: HashSet<IpAddr>,
    wanted: HashMap<IpAddr, Entry>,
    counters: NeighbourCounters,
}

impl Neighbours {
    /// A responder for interface MAC `mac` owning `addrs`, with gateways
    /// (one per family at most) for backends on no subnet of `addrs`.
    pub fn new(mac: MacAddr, addrs: Vec<InterfaceAddr>, gateways: Vec<IpAddr>) -> Self {
        let served = addrs.iter().map(|a| a.addr).collect();
        Self {
            mac,
            addrs,
            gateways,
            served,
            wanted: HashMap::new(),
            counters: NeighbourCounters::default(),
        }
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Sets the service addresses to answer for, besides the interface's
    /// own addresses.
    pub fn set_served(&mut self, vips: impl IntoIterator<Item = IpAddr>) {
        self.served = self.addrs.iter().map(|a| a.addr).chain(vips).collect();
    }

    /// The address whose MAC a packet to `ip` is sent to: `ip` itself if on
    /// a subnet of the interface, else the gateway of its family.
    pub fn next_hop(&self, ip: IpAddr) -> Option<IpAddr> {
        if self.addrs.iter().any(|a| a.on_link(ip)) {
            Some(ip)
        } else {
            self.gateways
                .iter()
                .find(|g| g.is_ipv4() == ip.is_ipv4())
                .copied()
        }
    }

    /// Sets the addresses to resolve (backends' next hops). Entries for
    /// addresses no longer wanted are forgotten; new ones are requested on
    /// the next [`poll`](Self::poll).
    pub fn set_wanted(&mut self, ips: impl IntoIterator<Item = IpAddr>, now_ms: u64) {
        let want: HashSet<IpAddr> = ips.into_iter().filter_map(|ip| self.next_hop(ip)).collect();
        self.wanted.retain(|ip, _| want.contains(ip));
        for ip in want {
            self.wanted.entry(ip).or_insert(Entry {
                mac: None,
                tries: 0,
                next_request_ms: now_ms,
            });
        }
    }

    /// The MAC to send a packet for `ip` to, if resolved.
    pub fn lookup(&self, ip: IpAddr) -> Option<MacAddr> {
        self.wanted.get(&self.next_hop(ip)?)?.mac
    }

    pub fn counters(&self) -> NeighbourCounters {
        let mut c = self.counters;
        c.unresolved = self
            .wanted
            .values()
            .filter(|e| e.mac.is_none() && e.tries >= TRIES_BEFORE_UNRESOLVED)
            .count() as u64;
        c
    }

    /// Every wanted address and its MAC if resolved.
    pub fn entries(&self) -> impl Iterator<Item = (IpAddr, Option<MacAddr>)> + '_ {
        self.wanted.iter().map(|(ip, e)| (*ip, e.mac))
    }

    /// Takes one received frame. A request for an address limpet serves is
    /// answered in `out`; an answer (or a request) from a wanted address
    /// teaches its MAC.
    pub fn handle(&mut self, frame: &[u8], out: &mut [u8]) -> Handled {
        let Ok(eth) = ethernet::Frame::new_checked(frame) else {
            self.counters.ignored += 1;
            return Handled::Ignored;
        };
        let handled = match eth.ethertype() {
            EtherType::ARP => self.handle_arp(eth.payload(), out),
            EtherType::IPV6 => self.handle_nd(eth.src_addr(), eth.payload(), out),
            _ => Handled::Ignored,
        };
        if handled == Handled::Ignored {
            self.counters.ignored += 1;
        }
        handled
    }

    fn learn(&mut self, ip: IpAddr, mac: MacAddr) -> bool {
        match self.wanted.get_mut(&ip) {
            Some(e) if e.mac != Some(mac) => {
                e.mac = Some(mac);
                e.tries = 0;
                self.counters.learned += 1;
                true
            }
            _ => false,
        }
    }

    fn handle_arp(&mut self, payload: &[u8], out: &mut [u8]) -> Handled {
        let Ok(req) = arp::Packet::new_checked(payload) else {
            return Handled::Ignored;
        };
        let sender_ip = IpAddr::V4(req.sender_protocol_addr());
        let sender_mac = req.sender_hardware_addr();
        let learned = self.learn(sender_ip, sender_mac);
        let asked = IpAddr::V4(req.target_protocol_addr());
        if req.operation() == arp::Operation::Request && self.served.contains(&asked) {
            let len = ethernet::HEADER_LEN + arp::PACKET_LEN;
            let Some(buf) = out.get_mut(..len) else {
                return Handled::Ignored;
            };
            buf[ethernet::HEADER_LEN..].copy_from_slice(&payload[..arp::PACKET_LEN]);
            let mut eth = ethernet::Frame::new_unchecked(&mut *buf);
            eth.set_dst_addr(sender_mac);
            eth.set_src_addr(self.mac);
            eth.set_ethertype(EtherType::ARP);
            arp::Packet::new_unchecked(&mut buf[ethernet::HEADER_LEN..]).make_reply(self.mac);
            self.counters.arp_answered += 1;
            return Handled::Reply(len);
        }
        if learned {
            Handled::Learned
        } else {
            Handled::Ignored
        }
    }

    fn handle_nd(&mut self, src_mac: MacAddr, payload: &[u8], out: &mut [u8]) -> Handled {
        let Ok(ip) = ipv6::Packet::new_checked(payload) else {
            return Handled::Ignored;
        };
        // ND is only valid from the link itself (RFC 4861 7.1).
        if ip.next_header() != IpProtocol::ICMPV6 || ip.hop_limit() != 255 {
            return Handled::Ignored;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let body = ip.payload();
        if let Ok(ns) = NeighborSolicit::new_checked(body) {
            if !ns.verify_checksum(src, dst) {
                return Handled::Ignored;
            }
            let target = ns.target_addr();
            let solicitor_mac = ns.source_ll_addr().unwrap_or(src_mac);
            let learned = !src.is_unspecified() && self.learn(IpAddr::V6(src), solicitor_mac);
            if self.served.contains(&IpAddr::V6(target)) {
                // DAD probes come from :: and are answered to all-nodes.
                let (reply_dst, dst_mac) = if src.is_unspecified() {
                    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
                    (all_nodes, MacAddr::from_ipv6_multicast(all_nodes))
                } else {
                    (src, solicitor_mac)
                };
                let flags = if src.is_unspecified() {
                    na_flags::OVERRIDE
                } else {
                    na_flags::SOLICITED | na_flags::OVERRIDE
                };
                let len = write_nd(
                    out,
                    self.mac,
                    dst_mac,
                    target,
                    reply_dst,
                    target,
                    Nd::Advert(flags),
                );
                self.counters.nd_answered += 1;
                return len.map_or(Handled::Ignored, Handled::Reply);
            }
            return if learned {
                Handled::Learned
            } else {
                Handled::Ignored
            };
        }
        if let Ok(na) = NeighborAdvert::new_checked(body) {
            if !na.verify_checksum(src, dst) {
                return Handled::Ignored;
            }
            let mac = na.target_ll_addr().unwrap_or(src_mac);
            if self.learn(IpAddr::V6(na.target_addr()), mac) {
                return Handled::Learned;
            }
        }
        Handled::Ignored
    }

    /// Sends requests for wanted addresses that are unresolved or due a
    /// refresh, backing off on silence. Returns how many were sent.
    pub fn poll(&mut self, now_ms: u64, mut send: impl FnMut(&[u8])) -> usize {
        let mut buf = [0u8; 128];
        let mut sent = 0;
        let ours: Vec<InterfaceAddr> = self.addrs.clone();
        for (ip, entry) in &mut self.wanted {
            if entry.next_request_ms > now_ms {
                continue;
            }
            let Some(source) = ours
                .iter()
                .find(|a| a.on_link(*ip))
                .or_else(|| ours.iter().find(|a| a.addr.is_ipv4() == ip.is_ipv4()))
            else {
                continue;
            };
            let len = match (*ip, source.addr) {
                (IpAddr::V4(target), IpAddr::V4(from)) => {
                    write_arp_request(&mut buf, self.mac, from, target)
                }
                (IpAddr::V6(target), IpAddr::V6(from)) => {
                    let group = solicited_node(target);
                    write_nd(
                        &mut buf,
                        self.mac,
                        MacAddr::from_ipv6_multicast(group),
                        from,
                        group,
                        target,
                        Nd::Solicit,
                    )
                }
                _ => None,
            };
            let Some(len) = len else { continue };
            send(&buf[..len]);
            sent += 1;
            entry.tries = entry.tries.saturating_add(1);
            entry.next_request_ms = now_ms
                + if entry.mac.is_some() {
                    REFRESH_MS
                } else {
                    (FIRST_RETRY_MS << entry.tries.min(8)).min(MAX_BACKOFF_MS)
                };
        }
        self.counters.requests_sent += sent as u64;
        sent
    }
}

fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

fn write_arp_request(
    buf: &mut [u8],
    mac: MacAddr,
    from: Ipv4Addr,
    target: Ipv4Addr,
) -> Option<usize> {
    // Padded to the Ethernet minimum.
    let len = 60;
    let frame = buf.get_mut(..len)?;
    frame.fill(0);
    let mut eth = ethernet::Frame::new_unchecked(&mut *frame);
    eth.set_dst_addr(MacAddr::BROADCAST);
    eth.set_src_addr(mac);
    eth.set_ethertype(EtherType::ARP);
    let mut a = arp::Packet::new_unchecked(&mut frame[ethernet::HEADER_LEN..]);
    a.fill_eth_ipv4_header();
    a.set_operation(arp::Operation::Request);
    a.set_sender_hardware_addr(mac);
    a.set_sender_protocol_addr(from);
    a.set_target_hardware_addr(MacAddr::UNSPECIFIED);
    a.set_target_protocol_addr(target);
    Some(len)
}

#[derive(Clone, Copy)]
enum Nd {
    Solicit,
    Advert(u8),
}

/// Writes an Ethernet + IPv6 + NS/NA frame carrying one link-layer option.
fn write_nd(
    buf: &mut [u8],
    mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    kind: Nd,
) -> Option<usize> {
    let l3 = ethernet::HEADER_LEN;
    let l4 = l3 + ipv6::HEADER_LEN;
    let len = l4 + icmpv6::NA_WITH_LL_LEN;
    let frame = buf.get_mut(..len)?;
    frame.fill(0);
    let mut eth = ethernet::Frame::new_unchecked(&mut *frame);
    eth.set_dst_addr(dst_mac);
    eth.set_src_addr(mac);
    eth.set_ethertype(EtherType::IPV6);
    let mut ip = ipv6::Packet::new_unchecked(&mut frame[l3..]);
    ip.set_version(6);
    ip.set_payload_len(icmpv6::NA_WITH_LL_LEN as u16);
    ip.set_next_header(IpProtocol::ICMPV6);
    ip.set_hop_limit(255);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    let body = &mut frame[l4..];
    match kind {
        Nd::Solicit => {
            let mut ns = NeighborSolicit::new_unchecked(body);
            ns.init();
            ns.set_target_addr(target);
            ns.set_source_ll_addr_option(mac).ok()?;
            ns.fill_checksum(src, dst);
        }
        Nd::Advert(flags) => {
            let mut na = NeighborAdvert::new_unchecked(body);
            na.init();
            na.set_flags(flags);
            na.set_target_addr(target);
            na.set_target_ll_addr_option(mac).ok()?;
            na.fill_checksum(src, dst);
        }
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket};

    const US: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
    const PEER: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x11]);

    fn neighbours() -> Neighbours {
        let mut n = Neighbours::new(
            US,
            vec![
                InterfaceAddr {
                    addr: "203.0.113.1".parse().unwrap(),
                    prefix: 24,
                },
                InterfaceAddr {
                    addr: "2001:db8:be::1".parse().unwrap(),
                    prefix: 64,
                },
            ],
            Vec::new(),
        );
        n.set_served([
            "192.0.2.10".parse().unwrap(),
            "2001:db8:5::10".parse().unwrap(),
        ]);
        n
    }

    #[test]
    fn resolves_backend_over_arp_and_answers_for_vip() {
        let mut n = neighbours();
        let be: IpAddr = "203.0.113.11".parse().unwrap();
        n.set_wanted([be, "198.51.100.7".parse().unwrap()], 0);
        let mut requests = Vec::new();
        assert_eq!(
            n.poll(0, |f| requests.push(f.to_vec())),
            1,
            "off-link without gateway is skipped"
        );
        let req = &requests[0];
        let p = SlicedPacket::from_ethernet(req).unwrap();
        let Some(NetSlice::Arp(a)) = p.net else {
            panic!("not ARP")
        };
        assert_eq!(a.target_protocol_addr(), &[203, 0, 113, 11]);
        assert_eq!(a.sender_protocol_addr(), &[203, 0, 113, 1]);
        // The backend answers: the request turned into its reply.
        let mut reply = req.clone();
        {
            let mut eth = ethernet::Frame::new_unchecked(&mut reply[..]);
            eth.set_src_addr(PEER);
            eth.set_dst_addr(US);
        }
        {
            let mut a = arp::Packet::new_unchecked(&mut reply[14..]);
            a.make_reply(PEER);
        }
        let mut out = [0u8; 128];
        assert_eq!(n.handle(&reply, &mut out), Handled::Learned);
        assert_eq!(n.lookup(be), Some(PEER));
        // A client asks for the VIP: answered with our MAC.
        let mut ask = requests[0].clone();
        {
            let mut a = arp::Packet::new_unchecked(&mut ask[14..]);
            a.set_sender_hardware_addr(PEER);
            a.set_sender_protocol_addr("198.51.100.2".parse().unwrap());
            a.set_target_protocol_addr("192.0.2.10".parse().unwrap());
        }
        let Handled::Reply(len) = n.handle(&ask, &mut out) else {
            panic!("not answered")
        };
        let a = arp::Packet::new_checked(&out[14..len]).unwrap();
        assert_eq!(a.operation(), arp::Operation::Reply);
        assert_eq!(a.sender_hardware_addr(), US);
        assert_eq!(
            a.sender_protocol_addr(),
            "192.0.2.10".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(a.target_hardware_addr(), PEER);
        // Not ours: ignored.
        {
            let mut a = arp::Packet::new_unchecked(&mut ask[14..]);
            a.set_target_protocol_addr("192.0.2.99".parse().unwrap());
        }
        assert_eq!(n.handle(&ask, &mut out), Handled::Ignored);
    }

    #[test]
    fn retries_back_off_and_count_unresolved() {
        let mut n = neighbours();
        n.set_wanted(["203.0.113.12".parse().unwrap()], 0);
        let mut sent_at = Vec::new();
        for t in (0..20_000).step_by(100) {
            if n.poll(t, |_| {}) > 0 {
                sent_at.push(t);
            }
        }
        assert!(sent_at.len() >= 4 && sent_at.len() <= 8, "{sent_at:?}");
        assert!(sent_at.windows(2).all(|w| w[1] - w[0] >= FIRST_RETRY_MS));
        assert_eq!(n.counters().unresolved, 1);
    }

    #[test]
    fn answers_neighbour_solicitation_and_learns_advert() {
        let mut n = neighbours();
        let be: Ipv6Addr = "2001:db8:be::11".parse().unwrap();
        n.set_wanted([IpAddr::V6(be)], 0);
        let mut sent = Vec::new();
        n.poll(0, |f| sent.push(f.to_vec()));
        let ns = &sent[0];
        let p = SlicedPacket::from_ethernet(ns).unwrap();
        let Some(NetSlice::Ipv6(v6)) = p.net else {
            panic!()
        };
        assert_eq!(v6.header().destination_addr(), solicited_node(be));
        // A peer solicits the VIP: we advertise it.
        let vip: Ipv6Addr = "2001:db8:5::10".parse().unwrap();
        let client: Ipv6Addr = "2001:db8:be::99".parse().unwrap();
        let mut frame = [0u8; 128];
        let len = write_nd(
            &mut frame,
            PEER,
            US,
            client,
            solicited_node(vip),
            vip,
            Nd::Solicit,
        )
        .unwrap();
        let mut out = [0u8; 128];
        let Handled::Reply(rlen) = n.handle(&frame[..len], &mut out) else {
            panic!("NS not answered")
        };
        let ip = ipv6::Packet::new_checked(&out[14..rlen]).unwrap();
        assert_eq!(ip.dst_addr(), client);
        let na = NeighborAdvert::new_checked(ip.payload()).unwrap();
        assert!(na.verify_checksum(ip.src_addr(), ip.dst_addr()));
        assert_eq!(na.target_addr(), vip);
        assert_eq!(na.target_ll_addr(), Some(US));
        // The backend advertises itself: learnt.
        let len = write_nd(
            &mut frame,
            PEER,
            US,
            be,
            "2001:db8:be::1".parse().unwrap(),
            be,
            Nd::Advert(na_flags::SOLICITED),
        )
        .unwrap();
        assert_eq!(n.handle(&frame[..len], &mut out), Handled::Learned);
        assert_eq!(n.lookup(IpAddr::V6(be)), Some(PEER));
    }

    #[test]
    fn off_link_backends_resolve_through_the_gateway() {
        let mut n = Neighbours::new(
            US,
            vec![InterfaceAddr {
                addr: "203.0.113.1".parse().unwrap(),
                prefix: 24,
            }],
            vec![
                "203.0.113.254".parse().unwrap(),
                "2001:db8:be::fe".parse().unwrap(),
            ],
        );
        assert_eq!(
            n.next_hop("2001:db8:f0::2".parse().unwrap()),
            Some("2001:db8:be::fe".parse().unwrap())
        );
        assert_eq!(
            n.next_hop("198.51.100.50".parse().unwrap()),
            Some("203.0.113.254".parse().unwrap())
        );
        n.set_wanted(["198.51.100.50".parse().unwrap()], 0);
        assert_eq!(n.entries().count(), 1);
        assert_eq!(
            n.entries().next().unwrap().0,
            "203.0.113.254".parse::<IpAddr>().unwrap()
        );
    }
}
