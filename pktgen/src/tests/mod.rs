//! Tests that check pktgen's frames against etherparse.

mod forward;
mod frames;
mod oracle;
mod props;
mod send;
mod sink;
mod stamps;
mod traffic;
