//! The sending side of the traffic generator: prebuilt frames, patched in
//! place per packet (source port of a new connection, payload stamp) with
//! incremental checksum updates, and a token-bucket pacer.
//!
//! Nothing here allocates per packet: [`Generator::next_frame`] picks a
//! prebuilt frame, patches it where it lies and returns it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::rng::{Permutation, SplitMix64};
use crate::spec::{BuildError, FrameSize, Layout, PacketSpec, Proto, get16, put16};
use crate::stamp::STAMP_LEN;
use crate::traffic::{
    CLIENT_ISN, CLIENT_NET_V4, CLIENT_NET_V6, CLIENT_PREFIX_V4, FIRST_CLIENT_PORT,
};
use crate::{ACK, SERVER_ISN, SYN};

/// Ethernet frame check sequence, which the NIC appends: `--size` counts it,
/// as frame sizes in RFC 2544 do ("64-byte frames").
pub const FCS_LEN: usize = 4;

/// Most bytes of prebuilt frames a plan may ask for.
pub const MAX_POOL_BYTES: usize = 1 << 30;

/// What to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub proto: Proto,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vips: Vec<SocketAddr>,
    pub first_client: IpAddr,
    pub clients: usize,
    pub flows_per_client: usize,
    /// Wanted frame size on the wire, FCS included; the frame is made larger
    /// if headers (and the stamp) need more.
    pub size: usize,
    /// Share of packets that open a new connection, `0.0..=1.0`.
    pub new_share: f64,
    pub stamp: bool,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PlanError {
    NoVips,
    NoClients,
    NoFlows,
    FamilyMismatch {
        client: IpAddr,
        vip: SocketAddr,
    },
    /// Clients must lie in 198.18.0.0/15 or `2001:db8::/32`.
    ClientOutOfRange {
        last: IpAddr,
    },
    TooManyFlowsPerClient {
        requested: usize,
        max: usize,
    },
    BadShare(f64),
    TooManyFrames {
        bytes: u128,
    },
    Build(BuildError),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVips => f.write_str("no VIPs"),
            Self::NoClients => f.write_str("no clients"),
            Self::NoFlows => f.write_str("flows per client must be at least 1"),
            Self::FamilyMismatch { client, vip } => {
                write!(f, "client {client} and VIP {vip} are different IP versions")
            }
            Self::ClientOutOfRange { last } => write!(
                f,
                "clients must lie in 198.18.0.0/15 or 2001:db8::/32 (last client would be {last})"
            ),
            Self::TooManyFlowsPerClient { requested, max } => write!(
                f,
                "{requested} flows per client leave no source ports for new connections (at most {max})"
            ),
            Self::BadShare(x) => write!(f, "new-connection share {x} is not in 0..=1"),
            Self::TooManyFrames { bytes } => write!(
                f,
                "prebuilt frames would take {bytes} bytes, over {MAX_POOL_BYTES}; use fewer clients or flows"
            ),
            Self::Build(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PlanError {}

impl From<BuildError> for PlanError {
    fn from(e: BuildError) -> Self {
        Self::Build(e)
    }
}

/// The address of client `i` counting from `first`, if it stays in the
/// project's client ranges (198.18.0.0/15 or `2001:db8::/32`).
pub fn client_addr(first: IpAddr, i: usize) -> Option<IpAddr> {
    match first {
        IpAddr::V4(a) => {
            let v = a.to_bits().checked_add(u32::try_from(i).ok()?)?;
            let net = CLIENT_NET_V4.to_bits();
            let mask = u32::MAX << (32 - CLIENT_PREFIX_V4);
            (v & mask == net && a.to_bits() & mask == net).then(|| Ipv4Addr::from(v).into())
        }
        IpAddr::V6(a) => {
            let v = a.to_bits().checked_add(i as u128)?;
            let net = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0).to_bits();
            let mask = u128::MAX << 96;
            (v & mask == net && a.to_bits() & mask == net).then(|| Ipv6Addr::from(v).into())
        }
    }
}

/// The default first client of a family: the first of pktgen's client
/// ranges (198.18.0.1, `2001:db8:c1::1`).
pub fn default_first_client(v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::from(CLIENT_NET_V6.to_bits() + 1).into()
    } else {
        Ipv4Addr::from(CLIENT_NET_V4.to_bits() + 1).into()
    }
}

impl Plan {
    /// Checks what [`Generator::new`] needs.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.vips.is_empty() {
            return Err(PlanError::NoVips);
        }
        if self.clients == 0 {
            return Err(PlanError::NoClients);
        }
        if self.flows_per_client == 0 {
            return Err(PlanError::NoFlows);
        }
        if !(0.0..=1.0).contains(&self.new_share) {
            return Err(PlanError::BadShare(self.new_share));
        }
        let v6 = self.first_client.is_ipv6();
        if let Some(v) = self.vips.iter().find(|v| v.is_ipv6() != v6) {
            return Err(PlanError::FamilyMismatch {
                client: self.first_client,
                vip: *v,
            });
        }
        client_addr(self.first_client, self.clients - 1).ok_or_else(|| {
            PlanError::ClientOutOfRange {
                last: match self.first_client {
                    IpAddr::V4(a) => {
                        Ipv4Addr::from(a.to_bits().wrapping_add(self.clients as u32 - 1)).into()
                    }
                    IpAddr::V6(a) => {
                        Ipv6Addr::from(a.to_bits().wrapping_add(self.clients as u128 - 1)).into()
                    }
                },
            }
        })?;
        // Leave at least one port for new connections when they are wanted.
        let max_flows = 65_535 - usize::from(FIRST_CLIENT_PORT);
        if self.flows_per_client > max_flows {
            return Err(PlanError::TooManyFlowsPerClient {
                requested: self.flows_per_client,
                max: max_flows,
            });
        }

        Ok(())
    }
}

/// Frames of one length, back to back in one buffer.
#[derive(Clone, Debug)]
pub struct FramePool {
    buf: Vec<u8>,
    frame_len: usize,
}

impl FramePool {
    fn with_capacity(frame_len: usize, n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(frame_len * n),
            frame_len,
        }
    }

    fn push(&mut self, spec: &PacketSpec) -> Result<(), BuildError> {
        let at = self.buf.len();
        self.buf.resize(at + self.frame_len, 0);
        let n = spec.write_into(&mut self.buf[at..])?;
        debug_assert_eq!(n, self.frame_len);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.buf.len() / self.frame_len
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn frame(&self, i: usize) -> &[u8] {
        &self.buf[i * self.frame_len..(i + 1) * self.frame_len]
    }

    pub fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.buf[i * self.frame_len..(i + 1) * self.frame_len]
    }
}

/// Adds `old -> new` (equal, even lengths) to the ones'-complement checksum
/// `csum` (RFC 1624, eqn. 3): `HC' = ~(~HC + ~m + m')`.
pub fn checksum_adjust(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    debug_assert_eq!(old.len() % 2, 0);
    let mut sum = u64::from(!csum);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        sum += u64::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u64::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Replaces `frame[at..at + new.len()]` (inside the L4 segment, at an even
/// offset from its start) and updates the L4 checksum incrementally.
fn patch_l4(frame: &mut [u8], layout: &Layout, proto: Proto, at: usize, new: &[u8]) {
    let csum_at = layout.l4_offset + if proto == Proto::Tcp { 16 } else { 6 };
    let old_csum = get16(frame, csum_at);
    let mut c = checksum_adjust(old_csum, &frame[at..at + new.len()], new);
    if proto == Proto::Udp && c == 0 {
        // A computed UDP checksum of 0 is sent as all ones (RFC 768).
        c = 0xffff;
    }
    frame[at..at + new.len()].copy_from_slice(new);
    put16(frame, csum_at, c);
}

/// Sets the source port of a built frame, fixing its checksum.
pub fn set_src_port(frame: &mut [u8], layout: &Layout, proto: Proto, port: u16) {
    patch_l4(frame, layout, proto, layout.l4_offset, &port.to_be_bytes());
}

/// Writes a stamp at the start of the L4 payload, fixing the checksum
/// incrementally (cheaper than [`stamp_payload`](crate::stamp_payload) for
/// large frames; same bytes).
pub fn write_stamp(frame: &mut [u8], layout: &Layout, proto: Proto, seq: u64, nanos: u64) {
    let mut s = [0u8; STAMP_LEN];
    s[..8].copy_from_slice(&seq.to_be_bytes());
    s[8..].copy_from_slice(&nanos.to_be_bytes());
    patch_l4(frame, layout, proto, layout.payload_offset, &s);
}

/// Builds frames for a [`Plan`] and hands them out one per packet.
#[derive(Debug)]
pub struct Generator {
    proto: Proto,
    layout: Layout,
    stamp: bool,
    /// Established flows, in a shuffled order; sent round robin.
    established: FramePool,
    next_established: usize,
    /// One connection-opening template per (client, VIP); its source port
    /// is rewritten per use.
    openers: FramePool,
    vips: usize,
    /// Per client: next source port for a new connection.
    next_port: Vec<u16>,
    first_new_port: u16,
    new_threshold: u64,
    rng: SplitMix64,
    seq: u64,
    new_connections: u64,
}

impl Generator {
    pub fn new(plan: &Plan) -> Result<Self, PlanError> {
        plan.validate()?;
        let spec_for = |client: IpAddr, port: u16, vip: SocketAddr, open: bool| {
            let p = PacketSpec::between(plan.proto, SocketAddr::new(client, port), vip)
                .src_mac(plan.src_mac)
                .dst_mac(plan.dst_mac);
            match (plan.proto, open) {
                (Proto::Tcp, true) => p.flags(SYN).seq(CLIENT_ISN),
                (Proto::Tcp, false) => p
                    .flags(ACK)
                    .seq(CLIENT_ISN.wrapping_add(1))
                    .ack_number(SERVER_ISN.wrapping_add(1)),
                (Proto::Udp, _) => p,
            }
        };
        // Frame length: the wanted size, or what headers and stamp need.
        let probe = spec_for(plan.first_client, FIRST_CLIENT_PORT, plan.vips[0], false)
            .payload_len(if plan.stamp { STAMP_LEN } else { 0 });
        let natural = probe.layout()?.frame_len;
        let frame_len = plan.size.saturating_sub(FCS_LEN).max(natural);
        let layout = probe.clone().frame_len(frame_len).layout()?;

        let flows = plan.clients as u128 * plan.vips.len() as u128 * plan.flows_per_client as u128;
        let openers = plan.clients as u128 * plan.vips.len() as u128;
        let bytes = (flows + openers) * frame_len as u128;
        if bytes > MAX_POOL_BYTES as u128 {
            return Err(PlanError::TooManyFrames { bytes });
        }
        let flows = flows as usize;
        let per_client = plan.vips.len() * plan.flows_per_client;
        let mut established = FramePool::with_capacity(frame_len, flows);
        let perm = Permutation::new(flows as u64, plan.seed);
        for k in 0..flows {
            let i = perm.get(k as u64) as usize;
            let client = client_addr(plan.first_client, i / per_client).expect("checked");
            let vip = plan.vips[(i % per_client) / plan.flows_per_client];
            let port = FIRST_CLIENT_PORT + (i % plan.flows_per_client) as u16;
            let mut s = spec_for(client, port, vip, false);
            s.frame_size = FrameSize::Exact(frame_len);
            established.push(&s)?;
        }
        let mut opener_pool = FramePool::with_capacity(frame_len, openers as usize);
        let first_new_port = FIRST_CLIENT_PORT + plan.flows_per_client as u16;
        for c in 0..plan.clients {
            let client = client_addr(plan.first_client, c).expect("checked");
            for &vip in &plan.vips {
                let mut s = spec_for(client, first_new_port, vip, true);
                s.frame_size = FrameSize::Exact(frame_len);
                opener_pool.push(&s)?;
            }
        }
        // Each client's new-connection ports start at a point fixed by the
        // seed, so runs with different seeds open different 5-tuples (a
        // dataplane's flow table remembers the last run's).
        let mut port_rng = SplitMix64::new(plan.seed ^ 0x706f_7274);
        let span = 65_536 - u64::from(first_new_port);
        let next_port = (0..plan.clients)
            .map(|_| first_new_port + port_rng.below(span) as u16)
            .collect();
        // In 0..=1 (validated), so the product is non-negative.
        #[allow(clippy::cast_sign_loss)]
        let new_threshold = if plan.new_share >= 1.0 {
            u64::MAX
        } else {
            (plan.new_share * 18_446_744_073_709_551_616.0) as u64
        };
        Ok(Self {
            proto: plan.proto,
            layout,
            stamp: plan.stamp,
            established,
            next_established: 0,
            openers: opener_pool,
            vips: plan.vips.len(),
            next_port,
            first_new_port,
            new_threshold,
            rng: SplitMix64::new(plan.seed ^ 0x6e65_775f_636f_6e6e),
            seq: 0,
            new_connections: 0,
        })
    }

    /// Bytes per frame (FCS excluded).
    pub fn frame_len(&self) -> usize {
        self.layout.frame_len
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Established flows (prebuilt frames).
    pub fn flows(&self) -> usize {
        self.established.len()
    }

    /// Frames handed out so far that opened a new connection.
    pub fn new_connections(&self) -> u64 {
        self.new_connections
    }

    /// Frames handed out so far.
    pub fn handed_out(&self) -> u64 {
        self.seq
    }

    /// The next frame to send, stamped with `now_ns` if the plan stamps.
    #[inline]
    pub fn next_frame(&mut self, now_ns: u64) -> &[u8] {
        let new = self.new_threshold > 0 && self.rng.next_u64() < self.new_threshold;
        let (pool, i) = if new {
            let c = self.rng.below(self.next_port.len() as u64) as usize;
            let v = if self.vips > 1 {
                self.rng.below(self.vips as u64) as usize
            } else {
                0
            };
            let port = self.next_port[c];
            self.next_port[c] = if port == u16::MAX {
                self.first_new_port
            } else {
                port + 1
            };
            self.new_connections += 1;
            let i = c * self.vips + v;
            set_src_port(self.openers.frame_mut(i), &self.layout, self.proto, port);
            (&mut self.openers, i)
        } else {
            let i = self.next_established;
            self.next_established = if i + 1 == self.established.len() {
                0
            } else {
                i + 1
            };
            (&mut self.established, i)
        };
        let seq = self.seq;
        self.seq += 1;
        if self.stamp {
            write_stamp(pool.frame_mut(i), &self.layout, self.proto, seq, now_ns);
        }
        pool.frame(i)
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Clone, Debug)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ns: u64,
}

impl Pacer {
    /// Starts full at time `now_ns` (any monotonic nanosecond clock).
    pub fn new(rate_pps: f64, burst: u32, now_ns: u64) -> Self {
        Self {
            rate: rate_pps,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last_ns: now_ns,
        }
    }

    /// Takes up to `want` whole tokens at `now_ns`; returns how many.
    #[allow(clippy::cast_sign_loss)] // tokens are never negative
    pub fn take(&mut self, now_ns: u64, want: u32) -> u32 {
        let dt = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + dt as f64 * self.rate / 1e9).min(self.burst);
        let n = (self.tokens.floor() as u32).min(want);
        self.tokens -= f64::from(n);
        n
    }

    /// Nanoseconds until one token is available (0 if one is).
    #[allow(clippy::cast_sign_loss)] // tokens < 1 here, rate > 0
    pub fn wait_ns(&self) -> u64 {
        if self.tokens >= 1.0 {
            0
        } else {
            ((1.0 - self.tokens) * 1e9 / self.rate).ceil() as u64
        }
    }
}

/// The JSON document `pktgen send` writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendReport {
    pub iface: String,
    pub proto: String,
    pub clients: usize,
    pub flows: usize,
    pub vips: Vec<SocketAddr>,
    /// Frame length handed to the interface (FCS excluded).
    pub frame_len: usize,
    pub target_pps: Option<f64>,
    pub elapsed_s: f64,
    /// Frames the interface took.
    pub sent: u64,
    /// Frames it refused (full queue, error).
    pub send_errors: u64,
    pub new_connections: u64,
    pub pps: f64,
    /// Payload-level bit rate: frame bytes, FCS excluded.
    pub bits_per_s: f64,
    pub first_tx_ns: Option<u64>,
    pub last_tx_ns: Option<u64>,
}

impl SendReport {
    pub fn table(&self) -> String {
        format!(
            "sent {} frames of {} bytes ({} {} clients, {} flows, {} new connections) in {:.3} s: {:.0} pps, {:.1} Mbit/s; {} send errors{}\n",
            self.sent,
            self.frame_len,
            self.clients,
            self.proto,
            self.flows,
            self.new_connections,
            self.elapsed_s,
            self.pps,
            self.bits_per_s / 1e6,
            self.send_errors,
            self.target_pps
                .map_or_else(String::new, |r| format!(" (target {r:.0} pps)")),
        )
    }
}
