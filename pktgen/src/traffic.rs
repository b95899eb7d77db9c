//! Traffic models: many clients, their flows to VIPs, and streams of new
//! connections, all deterministic for a given seed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::rng::{Permutation, SplitMix64};
use crate::spec::{ACK, PacketSpec, Proto, SERVER_ISN, SYN};

/// The benchmarking range (RFC 2544) that clients are drawn from.
pub const CLIENT_NET_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const CLIENT_PREFIX_V4: u8 = 15;
/// A /48 inside the documentation range `2001:db8::/32`, set aside for
/// generated IPv6 clients.
pub const CLIENT_NET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, 0, 0, 0, 0);
pub const CLIENT_PREFIX_V6: u8 = 48;

/// First client source port; ports below 1024 are privileged and never
/// ephemeral.
pub const FIRST_CLIENT_PORT: u16 = 1024;
/// Ports in `FIRST_CLIENT_PORT..=65535`.
pub const CLIENT_PORT_COUNT: usize = 65_536 - FIRST_CLIENT_PORT as usize;

/// Initial sequence number of client-side TCP segments built from a
/// [`Flow`].
pub const CLIENT_ISN: u32 = 0x1000_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

/// Why a traffic model cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrafficError {
    /// More clients than the client range holds without repeating.
    TooManyClients {
        requested: usize,
        capacity: usize,
    },
    /// A model that draws clients was given none.
    NoClients,
    NoVips,
    /// A VIP's address family differs from the clients'.
    FamilyMismatch {
        clients: Family,
        vip: SocketAddr,
    },
    /// Client source ports would run past 65535.
    TooManyFlowsPerClient {
        requested: usize,
        max: usize,
    },
    /// The number of flows overflows `usize`.
    TooManyFlows,
    /// Port 0 is not a valid source port.
    ZeroPort,
}

impl fmt::Display for TrafficError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyClients {
                requested,
                capacity,
            } => write!(
                f,
                "{requested} clients requested but the client range holds {capacity} distinct addresses"
            ),
            Self::NoClients => f.write_str("no clients to draw from"),
            Self::NoVips => f.write_str("no VIPs"),
            Self::FamilyMismatch { clients, vip } => {
                write!(f, "VIP {vip} is not of the clients' family {clients:?}")
            }
            Self::TooManyFlowsPerClient { requested, max } => write!(
                f,
                "{requested} flows per client need more than the {max} source ports available"
            ),
            Self::TooManyFlows => f.write_str("number of flows overflows usize"),
            Self::ZeroPort => f.write_str("source port 0 is not valid"),
        }
    }
}

impl std::error::Error for TrafficError {}

/// `len` distinct client addresses, numbered `0..len`.
///
/// Client `i` is the `i + 1`-th address of its range: IPv4 from
/// 198.18.0.1 upwards within 198.18.0.0/15 (never the all-zeros or all-ones
/// address of the /15, so at most [`V4_CAPACITY`](Self::V4_CAPACITY)
/// clients; more is an error, not a wrap), IPv6 from `2001:db8:c1::1` upwards
/// within `2001:db8:c1::/48`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientSet {
    family: Family,
    len: usize,
}

impl ClientSet {
    /// 2^17 addresses in the /15, less the network and broadcast addresses.
    pub const V4_CAPACITY: usize = (1 << (32 - CLIENT_PREFIX_V4)) - 2;

    pub fn new(family: Family, len: usize) -> Result<Self, TrafficError> {
        match family {
            Family::V4 => Self::v4(len),
            Family::V6 => Ok(Self::v6(len)),
        }
    }

    pub fn v4(len: usize) -> Result<Self, TrafficError> {
        if len > Self::V4_CAPACITY {
            return Err(TrafficError::TooManyClients {
                requested: len,
                capacity: Self::V4_CAPACITY,
            });
        }
        Ok(Self {
            family: Family::V4,
            len,
        })
    }

    /// Infallible: the /48 has 2^80 addresses, more than any `usize`.
    pub const fn v6(len: usize) -> Self {
        Self {
            family: Family::V6,
            len,
        }
    }

    pub const fn family(&self) -> Family {
        self.family
    }

    pub const fn len(&self) -> usize {
        self.len
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of client `i`. Panics if `i >= len`.
    pub fn client(&self, i: usize) -> IpAddr {
        assert!(i < self.len, "client {i} out of 0..{}", self.len);
        match self.family {
            // V4_CAPACITY bounds i, so the sum stays inside the /15.
            Family::V4 => Ipv4Addr::from(CLIENT_NET_V4.to_bits() + 1 + i as u32).into(),
            Family::V6 => Ipv6Addr::from(CLIENT_NET_V6.to_bits() + 1 + i as u128).into(),
        }
    }

    /// The `i` for which `client(i) == addr`, if any.
    pub fn index_of(&self, addr: IpAddr) -> Option<usize> {
        let offset = match (self.family, addr) {
            (Family::V4, IpAddr::V4(a)) => {
                u128::from(a.to_bits().checked_sub(CLIENT_NET_V4.to_bits())?)
            }
            (Family::V6, IpAddr::V6(a)) => a.to_bits().checked_sub(CLIENT_NET_V6.to_bits())?,
            _ => return None,
        };
        let i = usize::try_from(offset.checked_sub(1)?).ok()?;
        (i < self.len).then_some(i)
    }

    /// All clients, in index order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = IpAddr> + '_ {
        (0..self.len).map(|i| self.client(i))
    }

    /// All clients once each, in an order fixed by `seed`.
    pub fn shuffled(&self, seed: u64) -> impl ExactSizeIterator<Item = IpAddr> + '_ {
        let perm = Permutation::new(self.len as u64, seed);
        (0..self.len).map(move |i| self.client(perm.get(i as u64) as usize))
    }
}

/// A load-balanced service address: where clients send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vip {
    pub addr: SocketAddr,
    pub proto: Proto,
}

impl Vip {
    pub fn tcp(ip: impl Into<IpAddr>, port: u16) -> Self {
        Self {
            addr: SocketAddr::new(ip.into(), port),
            proto: Proto::Tcp,
        }
    }

    pub fn udp(ip: impl Into<IpAddr>, port: u16) -> Self {
        Self {
            addr: SocketAddr::new(ip.into(), port),
            proto: Proto::Udp,
        }
    }
}

/// One client-to-VIP 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub proto: Proto,
}

impl Flow {
    /// The packet that opens the flow: a SYN with sequence number
    /// [`CLIENT_ISN`], or for UDP an empty datagram.
    pub fn first_packet(&self) -> PacketSpec {
        let p = PacketSpec::between(self.proto, self.client, self.vip);
        match self.proto {
            Proto::Tcp => p.flags(SYN).seq(CLIENT_ISN),
            Proto::Udp => p,
        }
    }

    /// A packet of the established flow: a bare ACK continuing the handshake
    /// that [`first_packet`](Self::first_packet) began, or for UDP an empty
    /// datagram. Add payload with [`PacketSpec::payload`].
    pub fn packet(&self) -> PacketSpec {
        let p = PacketSpec::between(self.proto, self.client, self.vip);
        match self.proto {
            Proto::Tcp => p
                .flags(ACK)
                .seq(CLIENT_ISN.wrapping_add(1))
                .ack_number(SERVER_ISN.wrapping_add(1)),
            Proto::Udp => p,
        }
    }

    /// The backend's answer to [`packet`](Self::packet) when the dataplane
    /// NATs the VIP to `backend`: from `backend` to the client's address and
    /// port (the dataplane rewrites its source back to the VIP).
    pub fn reply_from(&self, backend: SocketAddr) -> PacketSpec {
        self.packet().reply_from(backend)
    }

    /// The answer to [`packet`](Self::packet) as the client must receive it:
    /// from the VIP.
    pub fn reply(&self) -> PacketSpec {
        self.packet().reply()
    }
}

fn check_vips(clients: ClientSet, vips: &[Vip]) -> Result<(), TrafficError> {
    if vips.is_empty() {
        return Err(TrafficError::NoVips);
    }
    match vips
        .iter()
        .find(|v| Family::of(v.addr.ip()) != clients.family())
    {
        Some(v) => Err(TrafficError::FamilyMismatch {
            clients: clients.family(),
            vip: v.addr,
        }),
        None => Ok(()),
    }
}

/// Every client holding `flows_per_client` flows to every VIP.
///
/// Flow `i` is, with `V` VIPs and `M` flows per client, from client
/// `i / (V * M)` to VIP `(i / M) % V` with source port
/// `first_port + i % M`. A client thus uses the same source ports towards
/// each VIP, as a stack allocating ports per destination would; the 5-tuples
/// are all distinct.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSet {
    clients: ClientSet,
    flows_per_client: usize,
    vips: Vec<Vip>,
    first_port: u16,
    len: usize,
}

impl FlowSet {
    /// Source ports start at [`FIRST_CLIENT_PORT`], so `flows_per_client`
    /// may be up to [`CLIENT_PORT_COUNT`].
    pub fn new(
        clients: ClientSet,
        flows_per_client: usize,
        vips: impl Into<Vec<Vip>>,
    ) -> Result<Self, TrafficError> {
        let vips = vips.into();
        check_vips(clients, &vips)?;
        let set = Self {
            clients,
            flows_per_client,
            len: clients
                .len()
                .checked_mul(vips.len())
                .and_then(|n| n.checked_mul(flows_per_client))
                .ok_or(TrafficError::TooManyFlows)?,
            vips,
            first_port: FIRST_CLIENT_PORT,
        };
        set.check_ports()?;
        Ok(set)
    }

    /// Starts source ports at `port` instead of [`FIRST_CLIENT_PORT`].
    pub fn with_first_port(mut self, port: u16) -> Result<Self, TrafficError> {
        if port == 0 {
            return Err(TrafficError::ZeroPort);
        }
        self.first_port = port;
        self.check_ports()?;
        Ok(self)
    }

    fn check_ports(&self) -> Result<(), TrafficError> {
        let max = 65_536 - usize::from(self.first_port);
        if self.flows_per_client > max {
            return Err(TrafficError::TooManyFlowsPerClient {
                requested: self.flows_per_client,
                max,
            });
        }
        Ok(())
    }

    pub const fn clients(&self) -> ClientSet {
        self.clients
    }

    pub fn vips(&self) -> &[Vip] {
        &self.vips
    }

    pub const fn flows_per_client(&self) -> usize {
        self.flows_per_client
    }

    pub const fn len(&self) -> usize {
        self.len
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flow `i` (see the type's documentation). Panics if `i >= len`.
    pub fn flow(&self, i: usize) -> Flow {
        assert!(i < self.len, "flow {i} out of 0..{}", self.len);
        let m = self.flows_per_client;
        let per_client = m * self.vips.len();
        let vip = self.vips[(i % per_client) / m];
        let port = self.first_port + (i % m) as u16;
        Flow {
            client: SocketAddr::new(self.clients.client(i / per_client), port),
            vip: vip.addr,
            proto: vip.proto,
        }
    }

    /// All flows in index order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Flow> + '_ {
        (0..self.len).map(|i| self.flow(i))
    }

    /// All flows once each, in an order fixed by `seed`.
    pub fn shuffled(&self, seed: u64) -> impl ExactSizeIterator<Item = Flow> + '_ {
        let perm = Permutation::new(self.len as u64, seed);
        (0..self.len).map(move |i| self.flow(perm.get(i as u64) as usize))
    }

    /// An endless stream of flows drawn uniformly with replacement, fixed by
    /// `seed`: steady-state traffic over established flows. Empty if the set
    /// is.
    pub fn sample(&self, seed: u64) -> impl Iterator<Item = Flow> + '_ {
        let mut rng = SplitMix64::new(seed);
        std::iter::from_fn(move || {
            (!self.is_empty()).then(|| self.flow(rng.below(self.len as u64) as usize))
        })
    }
}

/// An endless stream of new connections: each item is a fresh flow from a
/// client drawn uniformly (by seed) to a VIP drawn uniformly; its
/// [`Flow::first_packet`] is the SYN.
///
/// Each client cycles through its own source ports
/// `FIRST_CLIENT_PORT..=65535`, as an ephemeral port allocator does, so a
/// client's 5-tuple to a VIP repeats only after [`CLIENT_PORT_COUNT`] of its
/// connections. That per-client counter costs 2 bytes per client, allocated
/// up front.
#[derive(Clone, Debug)]
pub struct NewConnections {
    clients: ClientSet,
    vips: Vec<Vip>,
    rng: SplitMix64,
    next_port: Vec<u16>,
}

impl NewConnections {
    pub fn new(
        clients: ClientSet,
        vips: impl Into<Vec<Vip>>,
        seed: u64,
    ) -> Result<Self, TrafficError> {
        let vips = vips.into();
        if clients.is_empty() {
            return Err(TrafficError::NoClients);
        }
        check_vips(clients, &vips)?;
        Ok(Self {
            clients,
            vips,
            rng: SplitMix64::new(seed),
            next_port: vec![FIRST_CLIENT_PORT; clients.len()],
        })
    }
}

impl Iterator for NewConnections {
    type Item = Flow;

    fn next(&mut self) -> Option<Flow> {
        let c = self.rng.below(self.clients.len() as u64) as usize;
        let vip = self.vips[self.rng.below(self.vips.len() as u64) as usize];
        let port = self.next_port[c];
        self.next_port[c] = port.checked_add(1).unwrap_or(FIRST_CLIENT_PORT);
        Some(Flow {
            client: SocketAddr::new(self.clients.client(c), port),
            vip: vip.addr,
            proto: vip.proto,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}
