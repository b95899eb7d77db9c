//! Real TCP through limpet on the network-namespace testbed
//! (`scripts/testbed`): three backends answering their own name on port
//! 9376, a Service on 192.0.2.10 / `2001:db8:5::10` port 80, and HTTP clients
//! from many addresses. Modelled on the Kubernetes e2e session-affinity
//! tests. Needs root (CI is root); without it the test fails, loudly.
//!
//! The testbed's namespaces are global, so every scenario runs in one test
//! function, in order, on one testbed (`testbed::story`, shared with the
//! DPDK run in `e2e_dpdk.rs`).

mod testbed;

use std::process::Command;
use testbed::LIMPET;
use testbed::story::{Config, Io, ep, manifest, session_affinity};

#[test]
fn session_affinity_end_to_end() {
    session_affinity(Io::AfPacket);
}

#[test]
fn invalid_manifest_at_start_up_exits_non_zero_naming_the_field() {
    let config = Config::new("invalid");
    config.write(&manifest(Some(86401), &[ep(1)]));
    // The configuration is checked before any interface is touched.
    let out = Command::new(LIMPET)
        .args(["run", "--config"])
        .arg(&config.dir)
        .args(["--io", "afpacket:lp-does-not-exist"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "limpet accepted timeoutSeconds 86401"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hostnames.yaml"), "no file named: {err}");
    assert!(err.contains("hostnames"), "no object named: {err}");
    assert!(
        err.contains("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
        "no field named: {err}"
    );
}
