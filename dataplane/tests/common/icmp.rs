//! ICMP rows of the fixture table: errors about translated connections
//! (both ways, IPv4 and IPv6), errors quoting no connection, echo to
//! service and own addresses, and port unreachables for a service port
//! with no endpoint or a port no service defines. They follow the rows
//! that open the table's connections, whose state they rely on.
//!
//! Inputs and expected outputs are built from scratch: the quoted packets
//! by pktgen, the ICMP around them by etherparse (every checksum computed
//! whole), so a byte-exact match proves limpet's incremental updates of the
//! outer and the quoted headers. [`check_icmp`] checks each ICMP output's
//! checksums once more, outer and inner, with etherparse alone.

use super::fixtures::{
    BE4, BE6, CLIENT4, CLIENT6, Fixture, VIP4, VIP4_EMPTY, VIP4_UDP, VIP6, VIP6_EMPTY, VIP6_UDP,
    dnat, inbound, ip,
};
use super::{CLIENT_MAC, LIMPET_MAC, LIMPET4, LIMPET6, backend_mac};
use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder};
use limpet_dataplane::pipeline::Action;
use limpet_dataplane::stats::DropReason;
use limpet_pktgen::{ACK, PacketSpec, SYN};
use std::net::IpAddr;

/// A router between limpet and the backends, and one on the clients' side.
pub const ROUTER4: &str = "203.0.113.254";
pub const ROUTER6: &str = "2001:db8:be::fe";
pub const CLIENT_ROUTER4: &str = "198.51.100.254";
pub const CLIENT_ROUTER6: &str = "2001:db8:100::fe";

pub const DEST_UNREACHABLE4: u8 = 3;
const TIME_EXCEEDED4: u8 = 11;
const DEST_UNREACHABLE6: u8 = 1;
pub const PACKET_TOO_BIG6: u8 = 2;
const TIME_EXCEEDED6: u8 = 3;
/// The 1280-byte next-hop MTU of a fragmentation needed / packet too big.
pub const MTU_1280: [u8; 4] = [0, 0, 0x05, 0x00];

pub fn v4(s: &str) -> [u8; 4] {
    match ip(s) {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("{s} is not IPv4"),
    }
}

pub fn v6(s: &str) -> [u8; 16] {
    match ip(s) {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("{s} is not IPv6"),
    }
}

/// The IP packet of a frame: past the Ethernet header, without padding.
pub fn ip_packet(frame: &[u8]) -> Vec<u8> {
    let ip = &frame[14..];
    let len = if ip[0] >> 4 == 4 {
        usize::from(u16::from_be_bytes([ip[2], ip[3]]))
    } else {
        40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]))
    };
    ip[..len].to_vec()
}

/// The first `n` bytes of a packet, as an ICMP error quotes it.
pub fn cut(mut packet: Vec<u8>, n: usize) -> Vec<u8> {
    packet.truncate(n);
    packet
}

/// An ICMP (IPv4) message in a frame, from etherparse: an error as Linux
/// sends one (precedence "internetwork control", no DF, id 0).
#[allow(clippy::too_many_arguments)]
pub fn icmp4(
    macs: ([u8; 6], [u8; 6]),
    src: &str,
    dst: &str,
    ttl: u8,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut h = Ipv4Header::new(0, ttl, IpNumber::ICMP, v4(src), v4(dst)).unwrap();
    h.dont_fragment = false;
    h.dscp = etherparse::IpDscp::try_new(0x30).unwrap();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ip(IpHeaders::Ipv4(h, etherparse::Ipv4Extensions::default()))
        .icmpv4_raw(kind, code, rest)
        .write(&mut out, quote)
        .unwrap();
    out
}

/// An `ICMPv6` message in a frame, from etherparse.
#[allow(clippy::too_many_arguments)]
pub fn icmp6(
    macs: ([u8; 6], [u8; 6]),
    src: &str,
    dst: &str,
    hops: u8,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(v6(src), v6(dst), hops)
        .icmpv6_raw(kind, code, rest)
        .write(&mut out, quote)
        .unwrap();
    out
}

fn echo4(macs: ([u8; 6], [u8; 6]), src: &str, dst: &str, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(v4(src), v4(dst), 64);
    let b = if reply {
        b.icmpv4_echo_reply(0x1234, 7)
    } else {
        b.icmpv4_echo_request(0x1234, 7)
    };
    let mut out = Vec::new();
    b.write(&mut out, b"limpet ping").unwrap();
    out
}

fn echo6(macs: ([u8; 6], [u8; 6]), src: &str, dst: &str, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv6(v6(src), v6(dst), 64);
    let b = if reply {
        b.icmpv6_echo_reply(0x1234, 7)
    } else {
        b.icmpv6_echo_request(0x1234, 7)
    };
    let mut out = Vec::new();
    b.write(&mut out, b"limpet ping").unwrap();
    out
}

/// limpet's port unreachable answering `frame`, from `from`.
fn reject4(frame: &[u8], from: &str, to: &str, vlan: Option<u16>) -> Vec<u8> {
    let quote = cut(ip_packet_at(frame, vlan), 548);
    let mut h = Ipv4Header::new(0, 64, IpNumber::ICMP, v4(from), v4(to)).unwrap();
    h.dont_fragment = false;
    h.dscp = etherparse::IpDscp::try_new(0x30).unwrap();
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2(LIMPET_MAC, CLIENT_MAC);
    match vlan {
        Some(id) => eth
            .single_vlan(etherparse::VlanId::try_new(id).unwrap())
            .ip(IpHeaders::Ipv4(h, etherparse::Ipv4Extensions::default()))
            .icmpv4_raw(DEST_UNREACHABLE4, 3, [0; 4])
            .write(&mut out, &quote)
            .unwrap(),
        None => eth
            .ip(IpHeaders::Ipv4(h, etherparse::Ipv4Extensions::default()))
            .icmpv4_raw(DEST_UNREACHABLE4, 3, [0; 4])
            .write(&mut out, &quote)
            .unwrap(),
    }
    out
}

fn reject6(frame: &[u8], from: &str, to: &str) -> Vec<u8> {
    let quote = cut(ip_packet(frame), 1232);
    icmp6(
        (LIMPET_MAC, CLIENT_MAC),
        from,
        to,
        64,
        DEST_UNREACHABLE6,
        4,
        [0; 4],
        &quote,
    )
}

fn ip_packet_at(frame: &[u8], vlan: Option<u16>) -> Vec<u8> {
    match vlan {
        Some(_) => {
            let mut untagged = frame[..12].to_vec();
            untagged.extend_from_slice(&frame[16..]);
            ip_packet(&untagged)
        }
        None => ip_packet(frame),
    }
}

#[allow(clippy::too_many_lines)] // one table, read top to bottom
pub fn fixtures() -> Vec<Fixture> {
    let router4_mac = backend_mac(ip(ROUTER4));
    let router6_mac = backend_mac(ip(ROUTER6));
    let to_client = (LIMPET_MAC, CLIENT_MAC);
    // A full-sized segment of the table's first connection (198.18.0.1:40000
    // -> 192.0.2.10:80, at 203.0.113.7:9376), as the client sent it and as
    // limpet sent it on: what a 1280-byte link behind limpet cannot carry.
    let big4 = inbound(
        PacketSpec::tcp(ip(CLIENT4), ip(VIP4), 40000, 80)
            .flags(ACK)
            .seq(1)
            .payload_len(1400),
    );
    let big4_sent = ip_packet(&dnat(big4.clone(), BE4).build());
    let big4_client = ip_packet(&big4.clone().ttl(63).build());
    let big6 = inbound(
        PacketSpec::tcp(ip(CLIENT6), ip(VIP6), 40002, 80)
            .flags(ACK)
            .seq(1)
            .payload_len(1400),
    );
    let big6_sent = ip_packet(&dnat(big6.clone(), BE6).build());
    let big6_client = ip_packet(&big6.clone().ttl(63).build());
    // UDP of the table's IPv4 UDP connection, as it reached the backend.
    let udp4 =
        inbound(PacketSpec::udp(ip(CLIENT4), ip(VIP4_UDP), 40001, 80).payload(b"hello".to_vec()));
    let udp4_sent = ip_packet(&dnat(udp4.clone(), BE4).build());
    let udp4_client = ip_packet(&udp4.clone().ttl(63).build());
    // Replies as limpet translated them for the client (TTL run out on the
    // client's side), and as the backend sent them.
    let reply4 = PacketSpec::tcp(ip(BE4), ip(CLIENT4), 9376, 40000)
        .flags(SYN | ACK)
        .ttl(1);
    let reply4_translated = ip_packet(&reply4.clone().src_ip(ip(VIP4)).src_port(80).build());
    let reply4_backend = ip_packet(&reply4.build());
    let reply6 = PacketSpec::udp(ip(BE6), ip(CLIENT6), 9376, 40003)
        .payload(b"world".to_vec())
        .ttl(1);
    let reply6_translated = ip_packet(&reply6.clone().src_ip(ip(VIP6_UDP)).src_port(80).build());
    let reply6_backend = ip_packet(&reply6.build());
    // A connection limpet never saw.
    let stranger4 = ip_packet(
        &dnat(
            inbound(PacketSpec::tcp(ip(CLIENT4), ip(VIP4), 45000, 80).flags(SYN)),
            BE4,
        )
        .build(),
    );
    let stranger6 = ip_packet(
        &dnat(
            inbound(PacketSpec::tcp(ip(CLIENT6), ip(VIP6), 45000, 80).flags(SYN)),
            BE6,
        )
        .build(),
    );
    let syn_empty4 =
        inbound(PacketSpec::tcp(ip(CLIENT4), ip(VIP4_EMPTY), 40009, 80).flags(SYN)).build();
    let syn_port4 = inbound(PacketSpec::tcp(ip(CLIENT4), ip(VIP4), 40008, 81).flags(SYN)).build();
    let udp_port4 =
        inbound(PacketSpec::udp(ip(CLIENT4), ip(VIP4), 40010, 81).payload_len(1000)).build();
    let syn_tagged4 = inbound(
        PacketSpec::tcp(ip(CLIENT4), ip(VIP4), 40011, 82)
            .flags(SYN)
            .vlan(100),
    )
    .build();
    let syn_empty6 =
        inbound(PacketSpec::tcp(ip(CLIENT6), ip(VIP6_EMPTY), 40012, 80).flags(SYN)).build();
    let udp_port6 =
        inbound(PacketSpec::udp(ip(CLIENT6), ip(VIP6), 40013, 81).payload_len(1300)).build();

    vec![
        Fixture {
            description: "IPv4 fragmentation needed from a router behind limpet: to the client, \
                          quoting its own packet, MTU kept",
            input: icmp4(
                (router4_mac, LIMPET_MAC),
                ROUTER4,
                CLIENT4,
                64,
                DEST_UNREACHABLE4,
                4,
                MTU_1280,
                &cut(big4_sent, 548),
            ),
            action: Action::Forward,
            output: Some(icmp4(
                to_client,
                VIP4,
                CLIENT4,
                63,
                DEST_UNREACHABLE4,
                4,
                MTU_1280,
                &cut(big4_client, 548),
            )),
        },
        Fixture {
            description: "IPv4 port unreachable from the backend itself about UDP: to the client",
            input: icmp4(
                (backend_mac(ip(BE4)), LIMPET_MAC),
                BE4,
                CLIENT4,
                64,
                DEST_UNREACHABLE4,
                3,
                [0; 4],
                &udp4_sent,
            ),
            action: Action::Forward,
            output: Some(icmp4(
                to_client,
                VIP4_UDP,
                CLIENT4,
                63,
                DEST_UNREACHABLE4,
                3,
                [0; 4],
                &udp4_client,
            )),
        },
        Fixture {
            description: "IPv4 time exceeded on the client's side about a reply: to the backend",
            input: icmp4(
                (CLIENT_MAC, LIMPET_MAC),
                CLIENT_ROUTER4,
                VIP4,
                64,
                TIME_EXCEEDED4,
                0,
                [0; 4],
                &reply4_translated,
            ),
            action: Action::Forward,
            output: Some(icmp4(
                (LIMPET_MAC, backend_mac(ip(BE4))),
                CLIENT_ROUTER4,
                BE4,
                63,
                TIME_EXCEEDED4,
                0,
                [0; 4],
                &reply4_backend,
            )),
        },
        Fixture {
            description: "IPv6 packet too big from a router behind limpet: to the client, MTU kept",
            input: icmp6(
                (router6_mac, LIMPET_MAC),
                ROUTER6,
                CLIENT6,
                64,
                PACKET_TOO_BIG6,
                0,
                MTU_1280,
                &cut(big6_sent, 1232),
            ),
            action: Action::Forward,
            output: Some(icmp6(
                to_client,
                VIP6,
                CLIENT6,
                63,
                PACKET_TOO_BIG6,
                0,
                MTU_1280,
                &cut(big6_client, 1232),
            )),
        },
        Fixture {
            description: "IPv6 time exceeded on the client's side about a UDP reply: to the backend",
            input: icmp6(
                (CLIENT_MAC, LIMPET_MAC),
                CLIENT_ROUTER6,
                VIP6_UDP,
                64,
                TIME_EXCEEDED6,
                0,
                [0; 4],
                &reply6_translated,
            ),
            action: Action::Forward,
            output: Some(icmp6(
                (LIMPET_MAC, backend_mac(ip(BE6))),
                CLIENT_ROUTER6,
                BE6,
                63,
                TIME_EXCEEDED6,
                0,
                [0; 4],
                &reply6_backend,
            )),
        },
        Fixture {
            description: "IPv4 error quoting no known connection is dropped",
            input: icmp4(
                (router4_mac, LIMPET_MAC),
                ROUTER4,
                CLIENT4,
                64,
                DEST_UNREACHABLE4,
                4,
                MTU_1280,
                &stranger4,
            ),
            action: Action::Drop(DropReason::IcmpNoConnection),
            output: None,
        },
        Fixture {
            description: "IPv6 error quoting no known connection is dropped",
            input: icmp6(
                (router6_mac, LIMPET_MAC),
                ROUTER6,
                CLIENT6,
                64,
                PACKET_TOO_BIG6,
                0,
                MTU_1280,
                &stranger6,
            ),
            action: Action::Drop(DropReason::IcmpNoConnection),
            output: None,
        },
        Fixture {
            description: "IPv4 echo to a service address is answered",
            input: echo4((CLIENT_MAC, LIMPET_MAC), CLIENT4, VIP4, false),
            action: Action::Forward,
            output: Some(echo4(to_client, VIP4, CLIENT4, true)),
        },
        Fixture {
            description: "IPv4 echo to limpet's own address is answered",
            input: echo4((CLIENT_MAC, LIMPET_MAC), CLIENT4, LIMPET4, false),
            action: Action::Forward,
            output: Some(echo4(to_client, LIMPET4, CLIENT4, true)),
        },
        Fixture {
            description: "IPv6 echo to a service address is answered",
            input: echo6((CLIENT_MAC, LIMPET_MAC), CLIENT6, VIP6, false),
            action: Action::Forward,
            output: Some(echo6(to_client, VIP6, CLIENT6, true)),
        },
        Fixture {
            description: "IPv6 echo to limpet's own address is answered",
            input: echo6((CLIENT_MAC, LIMPET_MAC), CLIENT6, LIMPET6, false),
            action: Action::Forward,
            output: Some(echo6(to_client, LIMPET6, CLIENT6, true)),
        },
        Fixture {
            description: "echo to an address limpet does not hold: slow path",
            input: echo4((CLIENT_MAC, LIMPET_MAC), CLIENT4, "192.0.2.99", false),
            action: Action::SlowPath,
            output: None,
        },
        Fixture {
            description: "IPv4 TCP to a service port without endpoints: port unreachable",
            output: Some(reject4(&syn_empty4, VIP4_EMPTY, CLIENT4, None)),
            input: syn_empty4,
            action: Action::Forward,
        },
        Fixture {
            description: "IPv4 TCP to a port the service address does not define: port unreachable",
            output: Some(reject4(&syn_port4, VIP4, CLIENT4, None)),
            input: syn_port4,
            action: Action::Forward,
        },
        Fixture {
            description: "IPv4 UDP to an undefined port: port unreachable quoting 548 bytes of it",
            output: Some(reject4(&udp_port4, VIP4, CLIENT4, None)),
            input: udp_port4,
            action: Action::Forward,
        },
        Fixture {
            description: "802.1Q-tagged SYN to an undefined port: the port unreachable keeps the tag",
            output: Some(reject4(&syn_tagged4, VIP4, CLIENT4, Some(100))),
            input: syn_tagged4,
            action: Action::Forward,
        },
        Fixture {
            description: "IPv6 TCP to a service port without endpoints: port unreachable",
            output: Some(reject6(&syn_empty6, VIP6_EMPTY, CLIENT6)),
            input: syn_empty6,
            action: Action::Forward,
        },
        Fixture {
            description: "IPv6 UDP to an undefined port: port unreachable quoting 1232 bytes of it",
            output: Some(reject6(&udp_port6, VIP6, CLIENT6)),
            input: udp_port6,
            action: Action::Forward,
        },
    ]
}

/// Checks an ICMP frame's checksums with etherparse alone: the outer IPv4
/// header, the ICMP (with the IPv6 pseudo-header for `ICMPv6`), the quoted
/// IPv4 header, and the quoted TCP or UDP checksum where the quote holds
/// the whole segment. Returns whether the frame was ICMP at all.
pub fn check_icmp(frame: &[u8]) -> bool {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).expect("output parses");
    let quote = match (&p.net, &p.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
            let h = ip.header();
            assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
            assert_eq!(
                icmp.icmp_type().calc_checksum(icmp.payload()),
                icmp.checksum()
            );
            icmp.payload()
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
            let h = ip.header();
            assert_eq!(
                icmp.icmp_type()
                    .calc_checksum(h.source(), h.destination(), icmp.payload())
                    .unwrap(),
                icmp.checksum()
            );
            icmp.payload()
        }
        _ => return false,
    };
    if quote.is_empty() || quote.len() < 28 {
        return true; // echo data
    }
    match quote[0] >> 4 {
        4 => {
            let Ok(h) = etherparse::Ipv4HeaderSlice::from_slice(quote) else {
                return true; // echo data that is not a packet
            };
            assert_eq!(
                h.to_header().calc_header_checksum(),
                h.header_checksum(),
                "quoted IPv4 header checksum"
            );
            let whole = usize::from(h.total_len()) <= quote.len();
            let l4 = &quote[h.slice().len()..usize::from(h.total_len()).min(quote.len())];
            if whole {
                check_l4(
                    h.protocol(),
                    l4,
                    |t| {
                        t.calc_checksum_ipv4_raw(
                            h.source(),
                            h.destination(),
                            &l4[t.slice().len()..],
                        )
                    },
                    |u, payload| u.calc_checksum_ipv4_raw(h.source(), h.destination(), payload),
                );
            }
        }
        6 => {
            let Ok(h) = etherparse::Ipv6HeaderSlice::from_slice(quote) else {
                return true;
            };
            let end = 40 + usize::from(h.payload_length());
            if end <= quote.len() {
                let l4 = &quote[40..end];
                check_l4(
                    h.next_header(),
                    l4,
                    |t| {
                        t.calc_checksum_ipv6_raw(
                            h.source(),
                            h.destination(),
                            &l4[t.slice().len()..],
                        )
                    },
                    |u, payload| u.calc_checksum_ipv6_raw(h.source(), h.destination(), payload),
                );
            }
        }
        _ => {}
    }
    true
}

fn check_l4(
    protocol: IpNumber,
    l4: &[u8],
    tcp: impl Fn(
        &etherparse::TcpHeaderSlice<'_>,
    ) -> Result<u16, etherparse::err::ValueTooBigError<usize>>,
    udp: impl Fn(&etherparse::UdpHeader, &[u8]) -> Result<u16, etherparse::err::ValueTooBigError<usize>>,
) {
    match protocol {
        IpNumber::TCP => {
            let t = etherparse::TcpHeaderSlice::from_slice(l4).unwrap();
            assert_eq!(tcp(&t).unwrap(), t.checksum(), "quoted TCP checksum");
        }
        IpNumber::UDP => {
            let u = etherparse::UdpHeaderSlice::from_slice(l4).unwrap();
            if u.checksum() != 0 {
                assert_eq!(
                    udp(&u.to_header(), &l4[8..]).unwrap(),
                    u.checksum(),
                    "quoted UDP checksum"
                );
            }
        }
        _ => {}
    }
}
