//! The ordinary TCP story on a testbed whose senders keep transmit
//! checksum offload on (`scripts/testbed up --offloads checksum`), as an
//! ordinary host's veths do: every client's and backend's TCP checksum
//! reaches limpet's `AF_PACKET` ring partial (`TP_STATUS_CSUMNOTREADY`).
//! `nat` and `dsr`, IPv4 and IPv6: every request is answered, every client
//! sticks, and limpet counts the checksums it completed. Needs root (CI is
//! root); without it the test fails, loudly.
//!
//! (TSO, GSO and GRO stay off: limpet does not yet segment super-frames,
//! which it drops and counts, `tx_too_long`.)

mod testbed;

use testbed::story::{Config, Io, Limpet, ep, manifest};
use testbed::{Testbed, VIP4, VIP6, clientip_sticks, must_be_root};

#[test]
fn checksum_offload_left_on_end_to_end() {
    must_be_root();
    let testbed = Testbed::up_with(3, &["--offloads", "checksum"]);
    let config = Config::new("offloads");
    config.write(&manifest(Some(10_800), &[ep(1), ep(2), ep(3)]));

    let limpet = Limpet::start(&config, Io::AfPacket, "nat", 1);
    clientip_sticks(VIP4, "198.18.0.10", 100);
    clientip_sticks(VIP6, "2001:db8:c1::10", 30);
    let completed = limpet.metric("limpet_checksums_completed_total");
    eprintln!("nat: {completed} checksums completed");
    // Each request's client segments and the backend's replies.
    assert!(
        completed >= 1000.0,
        "nat: only {completed} checksums completed for ~2000 connections"
    );
    drop(limpet);

    testbed.mode("dsr");
    let limpet = Limpet::start(&config, Io::AfPacket, "dsr", 1);
    clientip_sticks(VIP4, "198.18.1.10", 100);
    clientip_sticks(VIP6, "2001:db8:c1::100", 30);
    let completed = limpet.metric("limpet_checksums_completed_total");
    eprintln!("dsr: {completed} checksums completed");
    assert!(
        completed >= 1000.0,
        "dsr: only {completed} checksums completed"
    );
}
