//! A router and a backend behind it, on top of `scripts/testbed`: the
//! shape of backends in another L3 domain. `scripts/testbed down` removes
//! them too, should a test die half-way.
//!
//! - lp-rt: rt0 on the testbed's bridge (203.0.113.254, `2001:db8:be::fe`;
//!   its default route back through limpet), rt1 towards lp-far with the
//!   MTU given;
//! - lp-far: 198.19.0.2 and `2001:db8:f0::2` behind it, the same MTU on its
//!   link, advertising an MSS (1460 / 1440) that its link cannot carry, so
//!   clients start with segments too big for the path.

use super::sh;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ROUTER: &str = "203.0.113.254";
pub const ROUTER6: &str = "2001:db8:be::fe";
pub const FAR: &str = "198.19.0.2";
pub const FAR6: &str = "2001:db8:f0::2";

pub fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

pub fn in_ns(ns: &str, args: &[&str]) -> String {
    sh(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// The router and the far backend, and what runs in them; removed when
/// dropped.
pub struct Behind {
    children: Vec<Child>,
}

impl Behind {
    /// Builds lp-rt and lp-far with `mtu` on the link between them, their
    /// veths' offloads as the kernel sets them (`offloads`) or off (for
    /// DPDK's vdevs, which see neither partial checksums nor super-frames).
    pub fn up(mtu: u16, offloads: bool) -> Self {
        let mtu = mtu.to_string();
        let setup: Vec<Vec<&str>> = [
            "netns add lp-rt",
            "netns add lp-far",
            "-n lp-rt link set lo up",
            "-n lp-far link set lo up",
            "-n lp-sw link add sw-rt type veth peer name rt0 netns lp-rt",
            "-n lp-sw link set sw-rt master br0",
            "-n lp-sw link set sw-rt up",
            "-n lp-rt link add rt1 type veth peer name eth0 netns lp-far",
            "-n lp-rt link set rt0 address 02:00:00:00:04:00",
            "-n lp-rt addr add 203.0.113.254/24 dev rt0",
            "-n lp-rt link set rt0 up",
            "-n lp-rt link set rt1 mtu MTU",
            "-n lp-rt addr add 198.19.0.1/24 dev rt1",
            "-n lp-rt link set rt1 up",
            // Back to the clients through limpet, as the testbed's backends.
            "-n lp-rt route add default via 203.0.113.1",
            "-n lp-rt -6 addr add 2001:db8:be::fe/64 dev rt0 nodad",
            "-n lp-rt -6 addr add 2001:db8:f0::1/64 dev rt1 nodad",
            "-n lp-rt -6 route add default via 2001:db8:be::1",
            "-n lp-far link set eth0 mtu MTU",
            "-n lp-far addr add 198.19.0.2/24 dev eth0",
            "-n lp-far link set eth0 up",
            "-n lp-far route add default via 198.19.0.1 advmss 1460",
            "-n lp-far -6 addr add 2001:db8:f0::2/64 dev eth0 nodad",
            "-n lp-far -6 route add default via 2001:db8:f0::1 advmss 1440",
        ]
        .iter()
        .map(|cmd| {
            cmd.split_whitespace()
                .map(|w| if w == "MTU" { mtu.as_str() } else { w })
                .collect()
        })
        .collect();
        let behind = Behind {
            children: Vec::new(),
        };
        for (i, cmd) in setup.iter().enumerate() {
            ip(cmd);
            if i == 1 {
                for ns in ["lp-rt", "lp-far"] {
                    for kv in [
                        "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0",
                        "net.ipv6.conf.all.accept_ra=0",
                        "net.ipv6.conf.default.accept_ra=0",
                    ] {
                        in_ns(ns, &["sysctl", "-qw", kv]);
                    }
                }
            }
        }
        // Offloads as on the rest of the testbed: left on, the router
        // forwards the endpoint's 64 KiB super-frames to limpet as a host's
        // would.
        if !offloads {
            for (ns, dev) in [
                ("lp-sw", "sw-rt"),
                ("lp-rt", "rt0"),
                ("lp-rt", "rt1"),
                ("lp-far", "eth0"),
            ] {
                ethtool_off(ns, dev);
            }
        }
        for kv in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.rt0.rp_filter=0",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            in_ns("lp-rt", &["sysctl", "-qw", kv]);
        }
        behind
    }

    /// Runs `cmd` in lp-far until dropped, once it listens on TCP `port`.
    pub fn serve(&mut self, cmd: &[&str], port: u16) {
        let child = Command::new("ip")
            .args(["netns", "exec", "lp-far"])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?} in lp-far: {e}"));
        self.children.push(child);
        let ready = Instant::now() + Duration::from_secs(10);
        let filter = format!("sport = :{port}");
        while !in_ns("lp-far", &["ss", "-Hltn", &filter]).contains(&format!(":{port}")) {
            assert!(Instant::now() < ready, "{cmd:?} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `cmd` in lp-far until dropped (SIGTERM first, so it may report).
    pub fn run(&mut self, cmd: &[&str]) -> &mut Child {
        let child = Command::new("ip")
            .args(["netns", "exec", "lp-far"])
            .args(cmd)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?} in lp-far: {e}"));
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }
}

/// Uploads `bytes` from lp-client to `vip:port` (a [`super::COUNT_SERVER`]
/// behind the router; `path` says which way, for the log) and asserts it
/// completed; the upload's report and lp-client's route to `vip` after.
pub fn upload_completes(
    limpet: &super::story::Limpet,
    (vip, port): (&str, u16),
    bytes: usize,
    path: &str,
) -> (serde_json::Value, String) {
    let upload = super::upload(vip, port, bytes);
    eprintln!("upload to {vip} {path}: {upload}");
    let route = in_ns("lp-client", &["ip", "route", "get", vip]);
    eprintln!("client's route to {vip} afterwards: {}", route.trim());
    assert_eq!(
        upload["reply"].as_str(),
        Some(bytes.to_string().as_str()),
        "the upload to {vip} did not complete: {upload}\n{}",
        limpet.log_text()
    );
    (upload, route)
}

/// Transmit checksum and segmentation offloads off on `dev` in `ns`.
pub fn ethtool_off(ns: &str, dev: &str) {
    let off = "tx off sg off tso off gso off gro off";
    let mut args = vec!["ethtool", "-K", dev];
    args.extend(off.split_whitespace());
    in_ns(ns, &args);
}

impl Drop for Behind {
    fn drop(&mut self) {
        for child in &mut self.children {
            super::stop(child);
        }
        for ns in ["lp-far", "lp-rt"] {
            let pids = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
