//! Katran-style fixtures: a table of {description, input frame, expected
//! action, expected output frame} that every backend's tests run against
//! the real pipeline, in order (state carries over, so a reply fixture
//! follows its connection's SYN). Expected frames are written by pktgen
//! from scratch, full checksums included, so a byte-exact match also proves
//! the incremental updates.

use super::{CLIENT_MAC, LIMPET_MAC, backend, backend_mac, service};
use limpet_dataplane::pipeline::Action;
use limpet_dataplane::snapshot::{Affinity, ForwardMode, ServicePortSpec};
use limpet_dataplane::stats::DropReason;
use limpet_pktgen::{ACK, PacketSpec, SYN};

pub struct Fixture {
    pub description: &'static str,
    pub input: Vec<u8>,
    pub action: Action,
    pub output: Option<Vec<u8>>,
}

pub const VIP4: &str = "192.0.2.10";
pub const VIP4_UDP: &str = "192.0.2.11";
pub const VIP4_DSR: &str = "192.0.2.12";
pub const VIP4_EMPTY: &str = "192.0.2.13";
pub const VIP6: &str = "2001:db8::10";
pub const VIP6_UDP: &str = "2001:db8::11";
pub const VIP6_EMPTY: &str = "2001:db8::13";
pub const BE4: &str = "203.0.113.7";
pub const BE6: &str = "2001:db8:be::7";
pub const CLIENT4: &str = "198.18.0.1";
pub const CLIENT6: &str = "2001:db8:c1::1";

/// The service ports the fixture table runs against.
pub fn specs() -> Vec<ServicePortSpec> {
    let sticky = Affinity::client_ip(10800);
    vec![
        service(1, VIP4, 6, sticky, ForwardMode::Nat, vec![backend(BE4)]),
        service(
            2,
            VIP4_UDP,
            17,
            Affinity::None,
            ForwardMode::Nat,
            vec![backend(BE4)],
        ),
        service(3, VIP4_DSR, 6, sticky, ForwardMode::Dsr, vec![backend(BE4)]),
        service(4, VIP4_EMPTY, 6, sticky, ForwardMode::Nat, vec![]),
        service(5, VIP6, 6, sticky, ForwardMode::Nat, vec![backend(BE6)]),
        service(
            6,
            VIP6_UDP,
            17,
            Affinity::None,
            ForwardMode::Nat,
            vec![backend(BE6)],
        ),
        service(7, VIP6_EMPTY, 6, sticky, ForwardMode::Nat, vec![]),
    ]
}

pub fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// A client's frame to `vip:80` as it arrives at limpet.
pub fn inbound(spec: PacketSpec) -> PacketSpec {
    spec.src_mac(CLIENT_MAC).dst_mac(LIMPET_MAC)
}

/// The same frame after DNAT to `be:9376`, sent from limpet to the backend.
pub fn dnat(spec: PacketSpec, be: &str) -> PacketSpec {
    let ttl = spec.ttl - 1;
    spec.src_mac(LIMPET_MAC)
        .dst_mac(backend_mac(ip(be)))
        .dst_ip(ip(be))
        .dst_port(9376)
        .ttl(ttl)
}

#[allow(clippy::too_many_lines)] // one table, read top to bottom
pub fn fixtures() -> Vec<Fixture> {
    let tcp4 = inbound(PacketSpec::tcp(ip(CLIENT4), ip(VIP4), 40000, 80).flags(SYN));
    let udp4 =
        inbound(PacketSpec::udp(ip(CLIENT4), ip(VIP4_UDP), 40001, 80).payload(b"hello".to_vec()));
    let tcp6 = inbound(PacketSpec::tcp(ip(CLIENT6), ip(VIP6), 40002, 80).flags(SYN));
    let udp6 =
        inbound(PacketSpec::udp(ip(CLIENT6), ip(VIP6_UDP), 40003, 80).payload(b"hello".to_vec()));
    // Replies from the backend, as they reach limpet (its gateway).
    let reply4 = PacketSpec::tcp(ip(BE4), ip(CLIENT4), 9376, 40000)
        .flags(SYN | ACK)
        .src_mac(backend_mac(ip(BE4)))
        .dst_mac(LIMPET_MAC);
    let reply6 = PacketSpec::udp(ip(BE6), ip(CLIENT6), 9376, 40003)
        .payload(b"world".to_vec())
        .src_mac(backend_mac(ip(BE6)))
        .dst_mac(LIMPET_MAC);
    let snat = |spec: PacketSpec, vip: &str| {
        let ttl = spec.ttl - 1;
        spec.src_mac(LIMPET_MAC)
            .dst_mac(CLIENT_MAC)
            .src_ip(ip(vip))
            .src_port(80)
            .ttl(ttl)
    };
    let dsr = inbound(PacketSpec::tcp(ip(CLIENT4), ip(VIP4_DSR), 40004, 80).flags(SYN));
    let vlan = inbound(
        PacketSpec::tcp(ip(CLIENT4), ip(VIP4), 40005, 80)
            .flags(SYN)
            .vlan(100),
    );
    let zero_udp = inbound(
        PacketSpec::udp(ip(CLIENT4), ip(VIP4_UDP), 40006, 80)
            .payload(b"no checksum".to_vec())
            .zero_checksum(true),
    );

    let mut truncated = tcp4.clone().src_port(40100).unpadded().build();
    truncated.truncate(14 + 20 + 10); // half a TCP header
    let mut bad_ihl = tcp4.clone().src_port(40101).build();
    bad_ihl[14] = 0x44; // IHL 4: shorter than the fixed header
    let mut fragment = tcp4.clone().src_port(40102).build();
    fragment[14 + 6] = 0x20; // MF set, DF clear
    fix_ipv4_checksum(&mut fragment);
    let mut bad_checksum = tcp4.clone().src_port(40103).build();
    bad_checksum[14 + 10] ^= 0xff;
    let mut v6_fragment = tcp6.clone().src_port(40104).unpadded().build();
    insert_v6_fragment_header(&mut v6_fragment);
    // The host's own multicast control traffic, TTL / hop limit 1: an
    // IGMP report to 224.0.0.22, and an MLD report to ff02::16 behind its
    // hop-by-hop header (the bytes after the fixed header are not read).
    let mut igmp = inbound(PacketSpec::udp(ip(CLIENT4), ip("224.0.0.22"), 0, 0))
        .ttl(1)
        .build();
    igmp[14 + 9] = 2;
    fix_ipv4_checksum(&mut igmp);
    let mut mld = inbound(PacketSpec::udp(ip(CLIENT6), ip("ff02::16"), 0, 0))
        .ttl(1)
        .build();
    mld[14 + 6] = 0;
    let mut arp = vec![0u8; 60];
    arp[..6].copy_from_slice(&[0xff; 6]);
    arp[6..12].copy_from_slice(&CLIENT_MAC);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);

    let mut table = vec![
        Fixture {
            description: "DNAT IPv4 TCP SYN to the only backend",
            input: tcp4.build(),
            action: Action::Forward,
            output: Some(dnat(tcp4.clone(), BE4).build()),
        },
        Fixture {
            description: "reverse NAT of the IPv4 TCP reply, back to the client's hop",
            input: reply4.build(),
            action: Action::Forward,
            output: Some(snat(reply4.clone(), VIP4).build()),
        },
        Fixture {
            description: "DNAT IPv4 UDP",
            input: udp4.build(),
            action: Action::Forward,
            output: Some(dnat(udp4.clone(), BE4).build()),
        },
        Fixture {
            description: "DNAT IPv6 TCP SYN",
            input: tcp6.build(),
            action: Action::Forward,
            output: Some(dnat(tcp6.clone(), BE6).build()),
        },
        Fixture {
            description: "DNAT IPv6 UDP",
            input: udp6.build(),
            action: Action::Forward,
            output: Some(dnat(udp6.clone(), BE6).build()),
        },
        Fixture {
            description: "reverse NAT of the IPv6 UDP reply",
            input: reply6.build(),
            action: Action::Forward,
            output: Some(snat(reply6.clone(), VIP6_UDP).build()),
        },
        Fixture {
            description: "dsr rewrites only the destination MAC",
            input: dsr.build(),
            action: Action::Forward,
            output: Some(
                dsr.clone()
                    .src_mac(LIMPET_MAC)
                    .dst_mac(backend_mac(ip(BE4)))
                    .build(),
            ),
        },
        Fixture {
            description: "802.1Q-tagged frame keeps its tag and is translated",
            input: vlan.build(),
            action: Action::Forward,
            output: Some(dnat(vlan.clone(), BE4).build()),
        },
        Fixture {
            description: "UDP with a zero (absent) checksum keeps it zero",
            input: zero_udp.build(),
            action: Action::Forward,
            output: Some(dnat(zero_udp.clone(), BE4).build()),
        },
        Fixture {
            description: "unknown VIP goes to the slow path, nothing sent",
            input: inbound(PacketSpec::tcp(ip(CLIENT4), ip("192.0.2.99"), 40007, 80).flags(SYN))
                .build(),
            action: Action::SlowPath,
            output: None,
        },
        Fixture {
            description: "truncated TCP header",
            input: truncated,
            action: Action::Drop(DropReason::Truncated),
            output: None,
        },
        Fixture {
            description: "IPv4 IHL below 5",
            input: bad_ihl,
            action: Action::Drop(DropReason::Malformed),
            output: None,
        },
        Fixture {
            description: "IPv4 fragment",
            input: fragment,
            action: Action::Drop(DropReason::Fragment),
            output: None,
        },
        Fixture {
            description: "IPv4 header checksum wrong",
            input: bad_checksum,
            action: Action::Drop(DropReason::BadChecksum),
            output: None,
        },
        Fixture {
            description: "TTL 1 cannot be forwarded",
            input: tcp4.clone().src_port(40105).ttl(1).build(),
            action: Action::Drop(DropReason::TtlExceeded),
            output: None,
        },
        Fixture {
            description: "IPv6 hop limit 1 cannot be forwarded",
            input: tcp6.clone().src_port(40106).ttl(1).build(),
            action: Action::Drop(DropReason::TtlExceeded),
            output: None,
        },
        Fixture {
            description: "the host's IGMP report (TTL 1, multicast) is not a forwarding failure",
            input: igmp,
            action: Action::SlowPath,
            output: None,
        },
        Fixture {
            description: "the host's MLD report (hop limit 1, multicast) is not a forwarding failure",
            input: mld,
            action: Action::SlowPath,
            output: None,
        },
        Fixture {
            description: "IPv6 fragment header",
            input: v6_fragment,
            action: Action::Drop(DropReason::Fragment),
            output: None,
        },
        Fixture {
            description: "ARP request goes to the slow path",
            input: arp,
            action: Action::SlowPath,
            output: None,
        },
        Fixture {
            description: "runt frame shorter than an Ethernet header",
            input: vec![0u8; 10],
            action: Action::Drop(DropReason::Truncated),
            output: None,
        },
        Fixture {
            description: "unknown ethertype",
            input: {
                let mut f = tcp4.clone().src_port(40107).build();
                f[12..14].copy_from_slice(&[0x88, 0xb5]);
                f
            },
            action: Action::Drop(DropReason::UnsupportedL2),
            output: None,
        },
    ];
    // ICMP: errors about the connections above, echo, rejects (a known
    // VIP's unknown port, a service port without endpoints).
    table.extend(super::icmp::fixtures());
    table
}

pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ip = &mut frame[14..34];
    ip[10] = 0;
    ip[11] = 0;
    let mut sum = 0u32;
    for pair in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
}

/// Turns an IPv6 TCP frame into a first fragment: a Fragment header
/// (next header TCP, offset 0, M set) between the fixed header and TCP.
pub fn insert_v6_fragment_header(frame: &mut Vec<u8>) {
    let at = 14 + 40;
    let next = frame[14 + 6];
    frame[14 + 6] = 44;
    let len = u16::from_be_bytes([frame[14 + 4], frame[14 + 5]]) + 8;
    frame[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
    let header = [next, 0, 0, 1, 0, 0, 0, 42];
    frame.splice(at..at, header);
}

/// Runs the whole table through `send`, which hands one frame to the
/// pipeline and returns what it did and what it sent. Panics listing every
/// fixture that did not come out as expected.
pub fn run_table(send: impl FnMut(&Fixture) -> (Action, Option<Vec<u8>>)) {
    run_rows(fixtures(), send);
}

/// [`run_table`] over another table.
pub fn run_rows(rows: Vec<Fixture>, mut send: impl FnMut(&Fixture) -> (Action, Option<Vec<u8>>)) {
    let mut failures = Vec::new();
    for f in rows {
        let (action, output) = send(&f);
        if action != f.action {
            failures.push(format!(
                "{}: action {action:?}, expected {:?}",
                f.description, f.action
            ));
            continue;
        }
        if output != f.output {
            failures.push(format!(
                "{}: output differs\n  got      {:02x?}\n  expected {:02x?}",
                f.description, output, f.output
            ));
        } else if let Some(out) = &output {
            // Independently of the expected bytes: etherparse's checksums.
            super::icmp::check_icmp(out);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
