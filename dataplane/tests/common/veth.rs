//! A throwaway network namespace holding a veth pair, for the backends'
//! tests (`afpacket.rs`, `afxdp.rs`). Needs root (`CAP_NET_ADMIN` and
//! `CAP_NET_RAW`): without it the tests fail with a message saying so,
//! rather than being skipped.
//!
//! Each [`Net`] is namespace `lpt<pid>x<n>` with a veth pair `lpa..`/`lpb..`
//! (IPv6 off, no addresses, so the kernel sends nothing on them); a test
//! runs its body on a thread that entered the namespace, and the namespace
//! is deleted on drop, panics included. The backend opens end `a`, the
//! peer plays on end `b`.
#![allow(unsafe_code)] // setns() and geteuid() in the harness only.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];

pub fn require_root() {
    // SAFETY: geteuid() takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the backends' tests need root (network namespaces, veth, raw and XDP sockets); \
         run them as root (CI does). They are deliberately not skipped."
    );
}

pub fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace with a veth pair, both ends up; removed on drop.
pub struct Net {
    pub ns: String,
    pub a: String,
    pub b: String,
}

impl Net {
    pub fn new() -> Net {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        require_root();
        let id = format!(
            "{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            ns: format!("lpt{id}"),
            a: format!("lpa{id}"),
            b: format!("lpb{id}"),
        };
        run_ip(&["netns", "add", &net.ns]);
        run_ip(&[
            "netns",
            "exec",
            &net.ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        run_ip(&[
            "-n", &net.ns, "link", "add", &net.a, "type", "veth", "peer", "name", &net.b,
        ]);
        run_ip(&[
            "-n",
            &net.ns,
            "link",
            "set",
            &net.b,
            "address",
            &mac_str(PEER_MAC),
        ]);
        run_ip(&[
            "-n",
            &net.ns,
            "link",
            "set",
            &net.a,
            "address",
            &mac_str(LB_MAC),
        ]);
        net.link(&net.a, "up");
        net.link(&net.b, "up");
        net.wait_oper_up(&net.a);
        net.wait_oper_up(&net.b);
        net
    }

    /// Waits for the kernel's link watcher to mark `dev` operationally up
    /// (what `IFF_RUNNING` reports), which lags `ip link set up` a little.
    pub fn wait_oper_up(&self, dev: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = Command::new("ip")
                .args(["-n", &self.ns, "-o", "link", "show", dev])
                .output()
                .expect("run `ip`");
            if String::from_utf8_lossy(&out.stdout).contains("state UP") {
                return;
            }
            assert!(Instant::now() < deadline, "{dev} did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn link(&self, dev: &str, state: &str) {
        run_ip(&["-n", &self.ns, "link", "set", dev, state]);
    }

    /// Runs `f` on a thread inside the namespace. Sockets it opens stay in
    /// the namespace wherever they are used later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open namespace file");
                // SAFETY: `file` is an open namespace descriptor; setns only
                // changes this thread's network namespace.
                let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
