//! `pktgen send` and `pktgen sink` as two processes over a DPDK
//! `net_memif` pair, without hugepages or PCI: the sink (memif server)
//! receives every frame the sender (memif client) sent, nothing lost (a
//! full memif ring makes the sender wait), each client at one backend.
//! Needs libdpdk-dev (`scripts/dpdk-setup`); run with
//! `cargo test -p limpet-pktgen --features dpdk --test dpdk_memif`.
#![cfg(feature = "dpdk")]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pktgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pktgen"))
}

fn json(path: &PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn send_to_sink_over_memif_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("pktgen-memif-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("memif.sock");
    let (sink_json, send_json) = (dir.join("sink.json"), dir.join("send.json"));
    let count = 200_000u64;

    let mut sink = pktgen()
        .args([
            "sink",
            "--io",
            "dpdk",
            "--iface",
            "net_memif0=be1",
            "--any-mac",
        ])
        .args([
            "--proto",
            "udp",
            "--duration",
            "6",
            "--dpdk-cpu",
            "0",
            "--json",
        ])
        .arg(&sink_json)
        .arg("--vdev")
        .arg(format!(
            "net_memif0,role=server,socket={}",
            socket.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .expect("starting pktgen sink");
    // DPDK's memif listens on an abstract socket (no file): look for it.
    let listening = || {
        std::fs::read_to_string("/proc/net/unix")
            .is_ok_and(|t| t.contains(&format!("@{}", socket.display())))
    };
    let started = Instant::now();
    while !listening() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = sink.kill();
            panic!("the sink never listened on its memif socket");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let send = pktgen()
        .args(["send", "--io", "dpdk", "--iface", "net_memif0"])
        .args(["--dst-mac", "02:11:11:11:11:11", "--vip", "192.0.2.10:80"])
        .args([
            "--proto",
            "udp",
            "--clients",
            "500",
            "--flows-per-client",
            "2",
        ])
        .args([
            "--flat-out",
            "--count",
            &count.to_string(),
            "--dpdk-cpu",
            "0",
        ])
        .arg("--json")
        .arg(&send_json)
        .arg("--vdev")
        .arg(format!(
            "net_memif0,role=client,socket={}",
            socket.display()
        ))
        .stdout(Stdio::null())
        .status()
        .expect("running pktgen send");
    assert!(send.success(), "pktgen send: {send}");
    assert!(sink.wait().unwrap().success(), "pktgen sink failed");

    let sent = json(&send_json);
    let mut got = json(&sink_json);
    // Only the totals matter here; per-client rows would bury them.
    got["client_backends"] = serde_json::Value::Null;
    assert_eq!(sent["sent"], count, "{sent}");
    assert_eq!(sent["send_errors"], 0, "{sent}");
    assert_eq!(got["packets"], count, "{got}");
    assert_eq!(got["clients"], 500, "{got}");
    assert_eq!(got["clients_single_backend"], 500, "{got}");
    let _ = std::fs::remove_dir_all(&dir);
}
