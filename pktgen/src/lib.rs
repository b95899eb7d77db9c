//! Packet synthesis for limpet's tests and benchmarks.
//!
//! pktgen writes every byte itself rather than using limpet's wire module,
//! so tests of that module that use pktgen check it against an independent
//! implementation instead of against itself. pktgen's own tests use
//! etherparse as the oracle.
//!
//! - [`PacketSpec`] describes one Ethernet frame (optional 802.1Q tag,
//!   IPv4/IPv6, TCP/UDP, payload, frame length) and writes it, either into a
//!   caller's buffer without allocating ([`PacketSpec::write_into`]) or into
//!   a new `Vec` ([`PacketSpec::build`]).
//! - [`ClientSet`], [`FlowSet`] and [`NewConnections`] model traffic from
//!   many clients to VIPs, deterministically for a given seed.
//! - [`stamp_payload`] and [`read_stamp`] carry a sequence number and
//!   transmit time in the payload for loss and latency measurement.
//!
//! Addresses follow the project rule: clients come from the benchmarking
//! range 198.18.0.0/15 or from `2001:db8::/32`.

pub mod arp;
mod checksum;
pub mod decap;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod forward;
mod rng;
pub mod send;
pub mod sink;
mod spec;
mod stamp;
mod traffic;

#[cfg(test)]
mod tests;

pub use rng::{Permutation, SplitMix64};
pub use spec::{
    ACK, BuildError, DEFAULT_DST_MAC, DEFAULT_SRC_MAC, DEFAULT_TTL, DEFAULT_WINDOW, ETH_HEADER_LEN,
    FIN, FrameSize, IPV4_HEADER_LEN, IPV6_HEADER_LEN, L4, Layout, MAX_VLAN_ID, MIN_FRAME_LEN, PSH,
    PacketSpec, Payload, Proto, RST, SERVER_ISN, SYN, TCP_HEADER_LEN, TcpFlags, TcpSpec,
    UDP_HEADER_LEN, UdpSpec, VLAN_TAG_LEN,
};
pub use stamp::{FrameInfo, STAMP_LEN, Stamp, StampError, parse_frame, read_stamp, stamp_payload};
pub use traffic::{
    CLIENT_ISN, CLIENT_NET_V4, CLIENT_NET_V6, CLIENT_PORT_COUNT, CLIENT_PREFIX_V4,
    CLIENT_PREFIX_V6, ClientSet, FIRST_CLIENT_PORT, Family, Flow, FlowSet, NewConnections,
    TrafficError, Vip,
};
