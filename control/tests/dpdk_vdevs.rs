//! `net_memif` and `virtio_user` as `limpet run --io dpdk:...` ports. Both
//! need a peer in another process (a memif server for a client; a
//! vhost-user backend for `virtio_user`), so each test runs two limpets in
//! a network namespace of its own, joined by the device: limpet A owns
//! 203.0.113.1 and wants the example Service's backends; limpet B owns
//! 203.0.113.11, the first backend's address. A resolving that backend to
//! a MAC address means A's ARP request went down its port through its
//! worker, reached B's worker, came up B's slow path to B's neighbour
//! thread, and B's reply made the same trip back. Needs root and
//! libdpdk-dev; run with `cargo test -p limpet-control --features dpdk
//! --test dpdk_vdevs` (scripts/test.sh does, in its DPDK block).
#![cfg(feature = "dpdk")]

mod testbed;

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testbed::{LIMPET, allowed_cpus, must_be_root, repo, sh, stop};

/// A network namespace of this test's own, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("lpv-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(Command::new("ip").args(["netns", "add", &name]));
        sh(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A limpet in `ns`, stopped when dropped; its stderr goes to `log`.
struct Peer {
    child: Child,
    log: PathBuf,
    ns: String,
    admin: u16,
}

impl Peer {
    fn start(ns: &Netns, name: &str, admin: u16, vdev: &str, address: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{}-{name}.log", ns.0));
        let port = vdev.split(',').next().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0, LIMPET, "run", "--config"])
            .arg(repo().join("control/tests/fixtures/hostnames.yaml"))
            .args(["--io", &format!("dpdk:{port}"), "--vdev", vdev])
            .args(["--dpdk-no-huge", "--dpdk-memory", "256"])
            .args(["--dpdk-lcores", &format!("(0-1)@({})", allowed_cpus())])
            .arg("--dpdk-eal=--no-telemetry")
            .args(["--address", address, "--idle", "wait"])
            .args(["--flow-capacity", "4096", "--affinity-capacity", "4096"])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting limpet");
        let mut peer = Self {
            child,
            log,
            ns: ns.0.clone(),
            admin,
        };
        peer.wait_for("its first snapshot", |p| {
            p.log_text().contains("published snapshot")
        });
        peer
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` from the admin API, from inside the namespace.
    fn get(&self, path: &str) -> String {
        let url = format!("http://127.0.0.1:{}{path}", self.admin);
        let script = format!(
            "import urllib.request; print(urllib.request.urlopen({url:?}, timeout=5).read().decode())"
        );
        sh(Command::new("ip").args(["netns", "exec", &self.ns, "python3", "-c", &script]))
    }

    /// Waits up to 20 s for `done`, failing with the log if limpet exits.
    fn wait_for(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("limpet exited with {status}:\n{}", self.log_text());
            }
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in 20 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The MAC address `ip` resolved to, if it did.
    fn neighbour(&self, ip: &str) -> Option<String> {
        let v: Value = serde_json::from_str(&self.get("/v1/services")).unwrap();
        v["neighbours"]
            .as_array()?
            .iter()
            .find(|n| n["address"] == ip)?["mac"]
            .as_str()
            .map(str::to_owned)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Starts `server` then `client` (vdev strings) and checks the ports come
/// up and ARP crosses them both ways.
fn pair_resolves(tag: &str, server: &str, client: &str) {
    must_be_root();
    let ns = Netns::new(tag);
    // B first: it is the side that creates the socket.
    let mut b = Peer::start(&ns, "b", 9931, server, "203.0.113.11/24");
    let mut a = Peer::start(&ns, "a", 9932, client, "203.0.113.1/24");
    for peer in [&mut a, &mut b] {
        peer.wait_for("link up on /metrics", |p| {
            p.get("/metrics")
                .lines()
                .any(|l| l.starts_with("limpet_port_link_up{") && l.ends_with(" 1"))
        });
    }
    a.wait_for("203.0.113.11 resolved over the device", |p| {
        p.neighbour("203.0.113.11").is_some()
    });
    let metrics = b.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("limpet_neighbour_answers_total") && !l.ends_with(" 0")),
        "B answered no ARP request:\n{metrics}"
    );
}

#[test]
fn memif_server_and_client_come_up_and_carry_arp() {
    // Abstract sockets (memif's default) are per network namespace.
    let socket = format!("/run/limpet-memif-{}.sock", std::process::id());
    pair_resolves(
        "memif",
        &format!("net_memif0,role=server,id=0,socket={socket}"),
        &format!("net_memif0,role=client,id=0,socket={socket}"),
    );
}

#[test]
fn virtio_user_to_a_vhost_user_backend_comes_up_and_carries_arp() {
    let socket = std::env::temp_dir().join(format!("limpet-vhost-{}.sock", std::process::id()));
    let socket = socket.display();
    pair_resolves(
        "vhost",
        &format!("net_vhost0,iface={socket},queues=1"),
        &format!("virtio_user0,path={socket},queues=1,queue_size=1024"),
    );
}
