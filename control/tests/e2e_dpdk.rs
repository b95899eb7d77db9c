//! The end-to-end story of `e2e.rs` (`testbed::story`) with limpet driving
//! the testbed through DPDK (`--io dpdk:...`, no hugepages): over a
//! `net_af_packet` virtual device on lb0 (two workers: software steering
//! by client address between them), and over `net_af_xdp` (one worker: a
//! testbed veth has one queue). Needs root and libdpdk-dev; run with
//! `cargo test -p limpet-control --features dpdk --test e2e_dpdk`
//! (scripts/test.sh does, in its DPDK block).
#![cfg(feature = "dpdk")]

mod testbed;

use testbed::story::{Io, session_affinity};

#[test]
fn session_affinity_end_to_end_over_dpdk_af_packet() {
    session_affinity(Io::DpdkAfPacket);
}

#[test]
fn session_affinity_end_to_end_over_dpdk_af_xdp() {
    session_affinity(Io::DpdkAfXdp);
}
