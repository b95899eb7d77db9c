//! Per-worker counters. Each worker owns its counters outright (plain
//! integers, no atomics on the packet path) and hands out copies.

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Too short for a header it claims, or a length field out of bounds.
    Truncated,
    /// A header field holds a forbidden value (version, IHL, data offset).
    Malformed,
    /// IPv4 header checksum does not verify.
    BadChecksum,
    /// IPv4 or IPv6 fragment: no ports to balance on.
    Fragment,
    /// TTL or hop limit would reach zero.
    TtlExceeded,
    /// An IPv6 extension header limpet does not walk (AH, ESP, or too many).
    Ipv6ExtHeader,
    /// Not IPv4, IPv6 or ARP; or a stacked VLAN tag.
    UnsupportedL2,
    /// A protocol limpet does not balance (e.g. SCTP) towards a service.
    UnsupportedProtocol,
    /// The service port has no usable backend.
    NoBackend,
    /// The connection table refused a new entry.
    FlowTableFull,
    /// A client outside `loadBalancerSourceRanges` opened a connection to a
    /// load-balancer address.
    SourceRange,
    /// An ICMP error quoting a packet of no connection limpet holds.
    IcmpNoConnection,
    /// Longer than the backend can send: a GRO/GSO super-frame the
    /// backend did not cut into segments (the `AF_PACKET` backend cuts
    /// those it can, see [`crate::gso`]; DPDK's vdevs never see one whole).
    Oversized,
    /// A connection to source-translate (`fullnat`, or a client its
    /// endpoint would answer directly) found no free port among those its
    /// worker tried (see [`crate::snat`]).
    SnatPortsExhausted,
    /// A connection to source-translate, with no limpet address of its
    /// family to translate to.
    NoSnatAddress,
    /// A packet to tunnel (`ipip`, `gue`) too big for the tunnel path once
    /// wrapped, that could not be answered with "fragmentation needed" /
    /// "packet too big": IPv4 without DF, or the answer held back by its
    /// rate limit.
    TunnelTooBig,
    /// A packet to tunnel with no tunnel source address of its family.
    NoTunnelSource,
    /// A packet to tunnel whose buffer had no room for the outer headers.
    NoHeadroom,
}

impl DropReason {
    pub const COUNT: usize = 18;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Truncated,
        DropReason::Malformed,
        DropReason::BadChecksum,
        DropReason::Fragment,
        DropReason::TtlExceeded,
        DropReason::Ipv6ExtHeader,
        DropReason::UnsupportedL2,
        DropReason::UnsupportedProtocol,
        DropReason::NoBackend,
        DropReason::FlowTableFull,
        DropReason::SourceRange,
        DropReason::IcmpNoConnection,
        DropReason::Oversized,
        DropReason::SnatPortsExhausted,
        DropReason::NoSnatAddress,
        DropReason::TunnelTooBig,
        DropReason::NoTunnelSource,
        DropReason::NoHeadroom,
    ];

    /// A stable `snake_case` name, for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Malformed => "malformed",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::Fragment => "fragment",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::Ipv6ExtHeader => "ipv6_ext_header",
            DropReason::UnsupportedL2 => "unsupported_l2",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::NoBackend => "no_backend",
            DropReason::FlowTableFull => "flow_table_full",
            DropReason::SourceRange => "source_range",
            DropReason::IcmpNoConnection => "icmp_no_connection",
            DropReason::Oversized => "oversized",
            DropReason::SnatPortsExhausted => "snat_ports_exhausted",
            DropReason::NoSnatAddress => "no_snat_address",
            DropReason::TunnelTooBig => "tunnel_too_big",
            DropReason::NoTunnelSource => "no_tunnel_source",
            DropReason::NoHeadroom => "no_headroom",
        }
    }
}

impl From<crate::wire::Error> for DropReason {
    fn from(e: crate::wire::Error) -> Self {
        match e {
            crate::wire::Error::Truncated => DropReason::Truncated,
            crate::wire::Error::Malformed => DropReason::Malformed,
        }
    }
}

/// A worker's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Polls that received at least one packet.
    pub busy_polls: u64,
    /// Nanoseconds spent in polls that received packets: busy time. A run
    /// of back to back busy polls counts from the end of one burst to the
    /// end of the next (its receive included), one clock read a burst.
    pub busy_ns: u64,
    /// Packets of known connections sent on towards their backend.
    pub flow_hits: u64,
    /// Replies translated back towards their client (`nat`).
    pub replies: u64,
    /// New connections balanced.
    pub new_flows: u64,
    /// New connections sent to a client's live sticky backend.
    pub affinity_hits: u64,
    /// New connections of clients with no entry.
    pub affinity_misses: u64,
    /// Entries found past their timeout and overwritten.
    pub affinity_expired: u64,
    /// Entries whose backend had left the usable set, overwritten.
    pub affinity_stale: u64,
    /// Live affinity entries evicted to make room.
    pub affinity_evictions: u64,
    /// Clients admitted to the affinity table, on probation.
    pub affinity_admissions: u64,
    /// Entries promoted from probation to protected by a connection that
    /// proved its client real.
    pub affinity_promotions: u64,
    /// Of `affinity_evictions`, those taken from probation; the rest were
    /// protected, taken only when probation was empty.
    pub affinity_probation_evictions: u64,
    /// Connections that proved their client after its entry had gone
    /// (pushed out on probation, or expired): nothing to promote.
    pub affinity_proofs_unpromoted: u64,
    /// UDP flows re-balanced because their backend left the usable set.
    pub udp_repicks: u64,
    /// Packets sent to their endpoint encapsulated (`ipip`, `gue`).
    pub tunnelled: u64,
    /// TCP/UDP checksums completed because the sender left them to offload.
    pub checksums_completed: u64,
    /// Live connections evicted to make room.
    pub flow_evictions: u64,
    /// Packets handed to the slow path (ARP, ND, ICMP, no service).
    pub slow_path: u64,
    /// Of those, packets whose destination no service claimed.
    pub no_service: u64,
    pub drops: [u64; DropReason::COUNT],
    /// ICMP errors translated, echo answered, rejects sent.
    pub icmp: crate::icmp::IcmpCounters,
    pub snapshot_swaps: u64,
    pub snapshot_generation: u64,
}

impl WorkerStats {
    #[inline(always)]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Mean busy nanoseconds per received packet.
    pub fn busy_ns_per_packet(&self) -> f64 {
        if self.rx_packets == 0 {
            0.0
        } else {
            self.busy_ns as f64 / self.rx_packets as f64
        }
    }

    /// Mean packets per non-empty burst.
    pub fn packets_per_burst(&self) -> f64 {
        if self.busy_polls == 0 {
            0.0
        } else {
            self.rx_packets as f64 / self.busy_polls as f64
        }
    }
}
