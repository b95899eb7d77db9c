//! The service set the pipeline target runs against: the fixture table's
//! services (dataplane/tests/common/fixtures.rs, same addresses, so its
//! frames seed the corpus) with a few more backends, a restricted
//! load-balancer frontend, and a second snapshot that changes backends and
//! cuts a timeout, which the target swaps in between bursts.

use limpet_dataplane::snapshot::{
    Affinity, Backend, ForwardMode, ServicePortSpec, Snapshot, SourceRanges,
};
use limpet_dataplane::wire::MacAddr;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

pub const LIMPET_MAC: [u8; 6] = [0x02, 0x11, 0x11, 0x11, 0x11, 0x11];
pub const CLIENT_MACS: [[u8; 6]; 2] = [
    [0x02, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc],
    [0x02, 0xcc, 0xcc, 0xcc, 0xcc, 0x02],
];

pub const VIP4: &str = "192.0.2.10";
pub const VIP4_UDP: &str = "192.0.2.11";
pub const VIP4_DSR: &str = "192.0.2.12";
pub const VIP4_EMPTY: &str = "192.0.2.13";
/// A load-balancer address of service 1 that only 198.18.0.0/24 may use.
pub const LB4: &str = "192.0.2.20";
pub const VIP6: &str = "2001:db8::10";
pub const VIP6_UDP: &str = "2001:db8::11";
/// `fullnat` service ports (TCP over IPv4, UDP over IPv6).
pub const VIP4_FULL: &str = "192.0.2.14";
pub const VIP6_FULL: &str = "2001:db8::14";
/// Encapsulated DSR service ports: `ipip` TCP over IPv4, `gue` UDP over
/// IPv6.
pub const VIP4_IPIP: &str = "192.0.2.15";
pub const VIP6_GUE: &str = "2001:db8::15";
/// GUE's port in the worker's tunnel settings.
pub const GUE_PORT: u16 = 6080;
/// The tunnel path's MTU in the worker's settings: small enough that
/// generated frames reach the too-big answer.
pub const TUNNEL_MTU: u16 = 600;
/// limpet's own addresses on the backends' subnets: source-NAT sources.
pub const LIMPET4: &str = "203.0.113.1";
pub const LIMPET6: &str = "2001:db8:be::1";

/// The last of each is on the backends' subnet (and, in snapshot B, a
/// backend itself): under `nat` it is source-translated (hairpin).
pub const CLIENTS4: [&str; 5] = [
    "198.18.0.1",
    "198.18.0.2",
    "198.18.1.1",
    "198.19.0.9",
    "203.0.113.9",
];
pub const CLIENTS6: [&str; 4] = [
    "2001:db8:c1::1",
    "2001:db8:c1::2",
    "2001:db8:c2::1",
    "2001:db8:be::8",
];
/// Client ports the generator uses, few so that replies find connections.
pub const CLIENT_PORTS: [u16; 4] = [40000, 40001, 40002, 40003];
pub const SERVICE_PORT: u16 = 80;
pub const BACKEND_PORTS: [u16; 2] = [9376, 8080];

/// A small prime, so that building a worker's snapshot is cheap.
const MAGLEV_SIZE: usize = 251;

/// The MAC address test backend `addr` answers to (as in the fixtures).
pub fn backend_mac(addr: IpAddr) -> [u8; 6] {
    let o = match addr {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    [0x02, 0xbb, 0, 0, 0, o]
}

fn backend(addr: &str, port: u16) -> Backend {
    let addr: IpAddr = addr.parse().unwrap();
    let id = match addr {
        IpAddr::V4(a) => u32::from(a.octets()[3]) + u32::from(port),
        IpAddr::V6(a) => 100_000 + u32::from(a.octets()[15]) + u32::from(port),
    };
    Backend {
        id,
        addr,
        port,
        weight: 1,
        mac: MacAddr(backend_mac(addr)),
        iface: 1,
    }
}

fn service(
    id: u32,
    vip: &str,
    protocol: u8,
    affinity: Affinity,
    mode: ForwardMode,
    backends: Vec<Backend>,
) -> ServicePortSpec {
    ServicePortSpec {
        id,
        name: format!("default/svc{id}:80/{protocol}"),
        protocol,
        affinity,
        mode,
        frontends: vec![(vip.parse().unwrap(), SERVICE_PORT)],
        backends,
        maglev_size: Some(MAGLEV_SIZE),
        source_ranges: None,
    }
}

/// Snapshot A's specs (`generation` 1) or snapshot B's (2).
pub fn specs(b: bool) -> Vec<ServicePortSpec> {
    let sticky = Affinity::client_ip(10800);
    let be4 = |a| backend(a, 9376);
    let mut tcp4 = service(
        1,
        VIP4,
        6,
        sticky,
        ForwardMode::Nat,
        if b {
            vec![be4("203.0.113.7"), backend("203.0.113.9", 8080)]
        } else {
            vec![be4("203.0.113.7"), be4("203.0.113.8")]
        },
    );
    tcp4.frontends.push((LB4.parse().unwrap(), SERVICE_PORT));
    tcp4.source_ranges = Some(SourceRanges {
        frontends: vec![LB4.parse().unwrap()],
        allowed: vec![("198.18.0.0".parse().unwrap(), 24)],
    });
    let udp4_affinity = if b {
        Affinity::ClientIp {
            timeout: 30,
            v4_prefix: 24,
            v6_prefix: 64,
            repick: limpet_dataplane::snapshot::Repick::Connection,
        }
    } else {
        Affinity::None
    };
    let tcp6_affinity = if b { Affinity::client_ip(60) } else { sticky };
    vec![
        tcp4,
        service(
            2,
            VIP4_UDP,
            17,
            udp4_affinity,
            ForwardMode::Nat,
            vec![be4("203.0.113.7"), be4("203.0.113.8")],
        ),
        service(
            3,
            VIP4_DSR,
            6,
            sticky,
            ForwardMode::Dsr,
            vec![be4("203.0.113.7"), be4("203.0.113.9")],
        ),
        service(4, VIP4_EMPTY, 6, sticky, ForwardMode::Nat, vec![]),
        service(
            5,
            VIP6,
            6,
            tcp6_affinity,
            ForwardMode::Nat,
            if b {
                vec![backend("2001:db8:be::8", 9376)]
            } else {
                vec![
                    backend("2001:db8:be::7", 9376),
                    backend("2001:db8:be::8", 9376),
                ]
            },
        ),
        service(
            6,
            VIP6_UDP,
            17,
            Affinity::None,
            ForwardMode::Nat,
            vec![backend("2001:db8:be::7", 9376)],
        ),
        service(
            7,
            VIP4_FULL,
            6,
            sticky,
            ForwardMode::FullNat,
            vec![be4("203.0.113.7"), be4("203.0.113.8")],
        ),
        service(
            8,
            VIP6_FULL,
            17,
            Affinity::None,
            ForwardMode::FullNat,
            vec![backend("2001:db8:be::7", 9376)],
        ),
        service(
            9,
            VIP4_IPIP,
            6,
            sticky,
            ForwardMode::Ipip,
            vec![be4("203.0.113.7"), be4("203.0.113.9")],
        ),
        service(
            10,
            VIP6_GUE,
            17,
            Affinity::None,
            ForwardMode::Gue,
            vec![backend("2001:db8:be::7", 9376)],
        ),
    ]
}

/// The worker's tunnel settings: limpet's own addresses as outer sources.
pub fn tunnel_config() -> limpet_dataplane::encap::TunnelConfig {
    limpet_dataplane::encap::TunnelConfig {
        gue_port: GUE_PORT,
        source_v4: Some((LIMPET4.parse().unwrap(), 32)),
        source_v6: Some((LIMPET6.parse().unwrap(), 128)),
        mtu: TUNNEL_MTU,
        workers: 1,
    }
}

/// The worker's source NAT: limpet's addresses on the backends' subnets,
/// and few ports, so that running out of them is reached too.
pub fn snat_config() -> limpet_dataplane::snat::SnatConfig {
    limpet_dataplane::snat::SnatConfig {
        ports: limpet_dataplane::snat::SnatPorts {
            first: 61000,
            last: 61003,
            ..Default::default()
        },
        subnets: vec![
            (LIMPET4.parse().unwrap(), 24),
            (LIMPET6.parse().unwrap(), 64),
        ],
        fullnat: Vec::new(),
    }
}

/// The source a connection from `client` through a service port of
/// `mode` reaches its backend with, if it is translated.
pub fn snat_source(client: IpAddr, mode: ForwardMode) -> Option<IpAddr> {
    let (ours, prefix): (IpAddr, u32) = if client.is_ipv4() {
        (LIMPET4.parse().unwrap(), 24)
    } else {
        (LIMPET6.parse().unwrap(), 64)
    };
    let same_subnet = match (client, ours) {
        (IpAddr::V4(c), IpAddr::V4(o)) => {
            c.to_bits() >> (32 - prefix) == o.to_bits() >> (32 - prefix)
        }
        (IpAddr::V6(c), IpAddr::V6(o)) => {
            c.to_bits() >> (128 - prefix) == o.to_bits() >> (128 - prefix)
        }
        _ => false,
    };
    match mode {
        ForwardMode::FullNat => Some(ours),
        ForwardMode::Nat if same_subnet => Some(ours),
        _ => None,
    }
}

/// The two snapshots, built once per process (Maglev tables are the
/// expensive part of a worker's set-up).
pub fn snapshots() -> &'static [Arc<Snapshot>; 2] {
    static SNAPSHOTS: OnceLock<[Arc<Snapshot>; 2]> = OnceLock::new();
    SNAPSHOTS.get_or_init(|| {
        [
            Arc::new(Snapshot::build(1, specs(false)).unwrap()),
            Arc::new(Snapshot::build(2, specs(true)).unwrap()),
        ]
    })
}

/// Everything the target's properties compare outputs against.
#[derive(Debug, Default)]
pub struct Universe {
    /// Every frontend of either snapshot, with its mode.
    pub frontends: Vec<(SocketAddr, u8, ForwardMode)>,
    /// Every backend of either snapshot, with its service's mode.
    pub backends: Vec<(SocketAddr, ForwardMode)>,
    pub backend_macs: Vec<[u8; 6]>,
}

pub fn universe() -> &'static Universe {
    static UNIVERSE: OnceLock<Universe> = OnceLock::new();
    UNIVERSE.get_or_init(|| {
        let mut u = Universe::default();
        for spec in specs(false).into_iter().chain(specs(true)) {
            for &(a, p) in &spec.frontends {
                u.frontends
                    .push((SocketAddr::new(a, p), spec.protocol, spec.mode));
            }
            for b in &spec.backends {
                u.backends
                    .push((SocketAddr::new(b.addr, b.port), spec.mode));
                u.backend_macs.push(b.mac.0);
            }
        }
        u
    })
}

/// The frontend addresses of one family (and protocol, if given), for the
/// generator.
pub fn frontend_addrs(v6: bool, protocol: Option<u8>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = universe()
        .frontends
        .iter()
        .filter(|(s, p, _)| s.is_ipv6() == v6 && protocol.is_none_or(|want| want == *p))
        .map(|(s, _, _)| s.ip())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The backend addresses and ports of one family, for the generator.
pub fn backend_addrs(v6: bool) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = universe()
        .backends
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| s.is_ipv6() == v6)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
