//! A short run of `limpet-harness` on the testbed: a few thousand packets
//! through limpet (over `AF_PACKET` and over `AF_XDP`) and through
//! kube-proxy's nftables peer. Checks that all deliver and that the report
//! files are written; asserts no speed.
//!
//! Needs root (network namespaces; CI runs as root) and takes the testbed
//! lock, so it may wait while another test binary uses the testbed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn must_be_root() {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "the harness smoke test builds network namespaces and needs root (CI runs as root); run `sudo scripts/test.sh`"
    );
}

/// Builds the binaries the harness drives (limpet and pktgen live in other
/// packages of the workspace, which cargo does not build for this test)
/// next to the harness binary: same target directory, same profile.
fn build_driven_binaries(bin_dir: &Path) {
    let target_dir = bin_dir.parent().expect("the target directory");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "-p",
        "limpet-control",
        "--bin",
        "limpet",
        "-p",
        "limpet-pktgen",
        "--bin",
        "pktgen",
    ])
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    if bin_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "{cmd:?} failed");
}

#[test]
fn limpet_and_the_nftables_peer_deliver_and_the_report_is_written() {
    must_be_root();
    let harness = PathBuf::from(env!("CARGO_BIN_EXE_limpet-harness"));
    let bin_dir = harness
        .parent()
        .expect("the binaries' directory")
        .to_owned();
    build_driven_binaries(&bin_dir);
    let out = std::env::temp_dir().join(format!("limpet-harness-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(&harness)
        .args([
            "--smoke",
            "--no-pipeline",
            "--impl",
            "limpet",
            "--impl",
            "limpet-afxdp",
            "--impl",
            "nftables",
        ])
        .args(["--name", "smoke"])
        .arg("--out")
        .arg(&out)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .expect("running limpet-harness");
    assert!(
        run.status.success(),
        "limpet-harness failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    let text = std::fs::read_to_string(out.join("smoke.json")).expect("smoke.json written");
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    let impls = report["implementations"]
        .as_array()
        .expect("implementations");
    let names: Vec<&str> = impls.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["limpet", "limpet-afxdp", "nftables"]);
    for i in impls {
        let name = i["name"].as_str().unwrap();
        assert!(i["error"].is_null(), "{name}: {}", i["error"]);
        for scenario in ["load", "sticky", "new_connections"] {
            let steps = i[scenario].as_array().expect("steps");
            assert!(!steps.is_empty(), "{name}: no {scenario} steps");
            for s in steps {
                let sent = s["sent"].as_u64().unwrap();
                let delivered = s["delivered"].as_u64().unwrap();
                assert!(sent >= 1_000, "{name} {scenario}: sent only {sent}");
                // Delivery, not speed: most packets reach a backend.
                assert!(
                    delivered * 2 > sent,
                    "{name} {scenario}: {delivered} of {sent} delivered"
                );
            }
        }
    }
    let md = std::fs::read_to_string(out.join("smoke.md")).expect("smoke.md written");
    assert!(
        md.contains("| limpet |") && md.contains("| nftables |"),
        "{md}"
    );
    for plot in ["load", "cpu", "sticky", "latency"] {
        let svg = std::fs::read_to_string(out.join(format!("smoke-{plot}.svg")))
            .unwrap_or_else(|e| panic!("smoke-{plot}.svg: {e}"));
        assert!(svg.contains("<svg"), "smoke-{plot}.svg is not SVG");
    }
    let _ = std::fs::remove_dir_all(&out);
}
