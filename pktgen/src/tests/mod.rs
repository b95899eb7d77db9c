//! Tests that check pktgen's frames against etherparse.

#[cfg(feature = "dpdk")]
mod dpdk;
mod forward;
mod frames;
mod oracle;
mod props;
mod send;
mod sink;
mod stamps;
mod traffic;
