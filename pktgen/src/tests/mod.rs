//! Tests that check pktgen's frames against etherparse.

mod frames;
mod oracle;
mod props;
mod stamps;
mod traffic;
