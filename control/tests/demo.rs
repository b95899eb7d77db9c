//! The main job's story, `scripts/demo.sh`, over both host backends: 200
//! clients each stick to one backend for 8 connections, and removing an
//! endpoint moves exactly its own clients. The script checks that itself
//! (it exits non-zero otherwise); this runs it with the test build's
//! `limpet` (`LIMPET_BIN`) and reads its summary lines. Root: network
//! namespaces.

mod testbed;

use std::process::Command;
use testbed::{lock_testbed, must_be_root, repo};

fn demo(io: &str) -> String {
    must_be_root();
    let _lock = lock_testbed();
    let out = Command::new(repo().join("scripts/demo.sh"))
        .args(["--io", io])
        .env("LIMPET_BIN", env!("CARGO_BIN_EXE_limpet"))
        .output()
        .expect("run scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/demo.sh --io {io} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
    for want in [
        format!("limpet run --io {io}:lb0"),
        "clients: 200, sticky (one backend for all their connections): 200, split: 0, failed requests: 0".to_owned(),
        "other clients that moved: 0".to_owned(),
    ] {
        assert!(stdout.contains(&want), "no {want:?} in:\n{stdout}");
    }
    stdout
}

#[test]
fn the_demo_story_over_af_packet() {
    demo("afpacket");
}

#[test]
fn the_demo_story_over_af_xdp() {
    demo("afxdp");
}
