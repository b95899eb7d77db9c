//! The end-to-end story on the testbed, written once and run over every
//! I/O backend (`e2e.rs`: `AF_PACKET`; `e2e_dpdk.rs`: DPDK over
//! `net_af_packet` and `net_af_xdp`): the example Service, a configuration
//! directory limpet watches, a running limpet, and the scenarios.

use super::{
    LIMPET, Testbed, VIP4, VIP6, admin_get_in, allowed_cpu_list, allowed_cpus, clientip_sticks,
    http, must_be_root, none_spreads, sh, stop,
};
use serde_json::Value;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One endpoint of the example Service: backend `n` (203.0.113.1n).
#[derive(Clone, Copy)]
pub struct Ep {
    pub n: u8,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

pub fn ep(n: u8) -> Ep {
    Ep {
        n,
        ready: true,
        serving: true,
        terminating: false,
    }
}

/// The example Service and its slices, as `kubectl get -o yaml` prints them.
pub fn manifest(affinity: Option<u32>, eps: &[Ep]) -> String {
    let affinity = match affinity {
        Some(t) => format!(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}\n"
        ),
        None => "  sessionAffinity: None\n".to_string(),
    };
    let endpoints = |v6: bool| -> String {
        let mut out = String::new();
        for e in eps {
            let addr = if v6 {
                format!("2001:db8:be::1{}", e.n)
            } else {
                format!("203.0.113.1{}", e.n)
            };
            let _ = write!(
                out,
                "- addresses:\n  - \"{addr}\"\n  conditions:\n    ready: {}\n    serving: {}\n    terminating: {}\n  nodeName: node-{}\n",
                e.ready, e.serving, e.terminating, e.n
            );
        }
        out
    };
    let slice = |v6: bool| {
        let (name, ty) = if v6 {
            ("hostnames-v6", "IPv6")
        } else {
            ("hostnames-v4", "IPv4")
        };
        let eps = endpoints(v6);
        let eps = if eps.is_empty() {
            "[]\n".to_string()
        } else {
            format!("\n{eps}")
        };
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: hostnames\naddressType: {ty}\nendpoints: {eps}ports:\n- name: \"\"\n  port: 9376\n  protocol: TCP\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: hostnames\n  namespace: default\nspec:\n  type: ClusterIP\n  clusterIP: {VIP4}\n  clusterIPs:\n  - {VIP4}\n  - \"{VIP6}\"\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n  ports:\n  - port: 80\n    protocol: TCP\n    targetPort: 9376\n{affinity}---\n{}---\n{}",
        slice(false),
        slice(true)
    )
}

/// A configuration directory limpet watches.
pub struct Config {
    pub dir: PathBuf,
}

impl Config {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("limpet-e2e-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// Replaces the manifest the way `kubectl`-driven tooling would: a new
    /// file renamed over the old one.
    pub fn write(&self, text: &str) {
        let tmp = self.dir.join(".hostnames.yaml.tmp");
        std::fs::File::create(&tmp)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        std::fs::rename(&tmp, self.dir.join("hostnames.yaml")).unwrap();
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How limpet drives the testbed's interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// `--io afpacket:lb0`.
    AfPacket,
    /// `--io afxdp:lb0`: limpet's XDP program on lb0 and `AF_XDP` sockets
    /// (copy mode on a veth). A testbed veth has one queue, so one worker.
    AfXdp,
    /// `--io dpdk:net_af_packet0` over a `net_af_packet` vdev on lb0
    /// (`qpairs` = workers), without hugepages.
    DpdkAfPacket,
    /// `--io dpdk:net_af_xdp0` over a `net_af_xdp` vdev on lb0, without
    /// hugepages. A testbed veth has one queue, so one worker.
    DpdkAfXdp,
}

impl Io {
    /// What `scripts/testbed up` needs for this I/O. `AF_PACKET` takes the
    /// veths' offloads as the kernel leaves them (partial checksums,
    /// super-frames); DPDK's `net_af_packet` and `net_af_xdp` see neither
    /// flag, so their testbed turns the offloads off.
    pub fn testbed_args(self) -> &'static [&'static str] {
        if self.offloads_on() {
            &[]
        } else {
            &["--offloads", "off"]
        }
    }

    /// Whether this I/O takes the veths' offloads as the kernel sets them.
    pub fn offloads_on(self) -> bool {
        matches!(self, Io::AfPacket | Io::AfXdp)
    }

    /// The most workers this I/O can run on the testbed.
    pub fn max_workers(self) -> u16 {
        match self {
            Io::AfPacket | Io::DpdkAfPacket => 64,
            Io::DpdkAfXdp | Io::AfXdp => 1,
        }
    }

    /// How `--address IFACE=...` names interface `index` (`iface`).
    pub fn port(self, index: usize, iface: &str) -> String {
        match self {
            Io::AfPacket | Io::AfXdp => iface.to_owned(),
            Io::DpdkAfPacket => format!("net_af_packet{index}"),
            Io::DpdkAfXdp => format!("net_af_xdp{index}"),
        }
    }

    /// `--io` and what goes with it, for interfaces `ifaces` and `workers`.
    pub fn args(self, ifaces: &[&str], workers: u16) -> Vec<String> {
        let vdev = match self {
            Io::AfPacket | Io::AfXdp => {
                // Each worker pinned, round robin over the CPUs the test may
                // use, as an operator dedicates cores.
                let cpus = allowed_cpu_list();
                let pins: Vec<String> = (0..usize::from(workers))
                    .map(|i| cpus[i % cpus.len()].to_string())
                    .collect();
                let kind = if self == Io::AfXdp {
                    "afxdp"
                } else {
                    "afpacket"
                };
                return vec![
                    "--io".into(),
                    format!("{kind}:{}", ifaces.join(",")),
                    "--cpus".into(),
                    pins.join(","),
                ];
            }
            Io::DpdkAfPacket => "net_af_packet",
            Io::DpdkAfXdp => "net_af_xdp",
        };
        let ports: Vec<String> = (0..ifaces.len()).map(|i| format!("{vdev}{i}")).collect();
        let mut args = vec![
            "--io".into(),
            format!("dpdk:{}", ports.join(",")),
            "--dpdk-no-huge".into(),
            "--dpdk-memory".into(),
            "256".into(),
            // The main lcore and one per worker, on whatever CPUs the test
            // may use.
            "--dpdk-lcores".into(),
            format!("(0-{workers})@({})", allowed_cpus()),
        ];
        for (port, iface) in ports.iter().zip(ifaces) {
            args.push("--vdev".into());
            args.push(match self {
                Io::DpdkAfPacket => format!("{port},iface={iface},qpairs={workers}"),
                _ => format!("{port},iface={iface}"),
            });
        }
        args
    }
}

/// A running `limpet run` in the lp-lb namespace, stopped when dropped.
pub struct Limpet {
    child: Child,
    log: PathBuf,
    /// The namespace it runs in.
    ns: String,
}

impl Limpet {
    pub fn start(config: &Config, io: Io, forward: &str, workers: u16) -> Self {
        Self::start_extra(config, io, forward, workers, &[])
    }

    /// [`start`](Self::start) with more arguments after the usual ones.
    pub fn start_extra(
        config: &Config,
        io: Io,
        forward: &str,
        workers: u16,
        extra: &[&str],
    ) -> Self {
        let workers = workers.min(io.max_workers());
        let mut args = io.args(&["lb0"], workers);
        args.extend(
            [
                "--address",
                "203.0.113.1/24",
                "--address",
                "2001:db8:be::1/64",
                "--forward",
                forward,
                "--workers",
                &workers.to_string(),
            ]
            .map(str::to_owned),
        );
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Self::start_with(config, &args)
    }

    pub fn start_with(config: &Config, args: &[String]) -> Self {
        let log = config.dir.with_extension("log");
        Self::spawn(&[OsStr::new("--config"), config.dir.as_os_str()], args, log)
    }

    /// Starts `limpet run` in lp-lb with its source (`--config DIR` or
    /// `--kubeconfig PATH`) and `args`, logging to `log`, and waits until
    /// its admin API answers and it has published a snapshot.
    pub fn spawn(source: &[&OsStr], args: &[String], log: PathBuf) -> Self {
        Self::spawn_in("lp-lb", source, args, log)
    }

    /// [`spawn`](Self::spawn) in namespace `ns`.
    pub fn spawn_in(ns: &str, source: &[&OsStr], args: &[String], log: PathBuf) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, LIMPET, "run"])
            .args(source)
            .args(args)
            .args(["--idle", "wait"]);
        // Test-sized tables unless the caller sized them.
        for flag in ["--flow-capacity", "--affinity-capacity"] {
            if !args.iter().any(|a| a == flag) {
                cmd.args([flag, "65536"]);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting limpet");
        let mut limpet = Limpet {
            child,
            log,
            ns: ns.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = limpet.child.try_wait() {
                panic!(
                    "limpet exited with {status} at start-up:\n{}",
                    limpet.log_text()
                );
            }
            let ready = Command::new("ip")
                .args(["netns", "exec", ns, LIMPET, "affinity", "list", "--json"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ready && limpet.log_text().contains("published snapshot") {
                return limpet;
            }
            assert!(
                Instant::now() < deadline,
                "limpet not ready in 20 s:\n{}",
                limpet.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Ends limpet at once with SIGKILL: a crash, as far as its state
    /// goes.
    pub fn crash(self) {
        // Not through Drop, whose SIGTERM could reach a reused pid.
        let mut me = std::mem::ManuallyDrop::new(self);
        let _ = me.child.kill();
        let _ = me.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until limpet has published a snapshot more than `before`.
    pub fn wait_published(&self, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log_text().matches("published snapshot").count() <= before {
            assert!(
                Instant::now() < deadline,
                "no new snapshot published:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn published(&self) -> usize {
        self.log_text().matches("published snapshot").count()
    }

    /// The sum over every series of the Prometheus metric `name`.
    pub fn metric(&self, name: &str) -> f64 {
        let (code, body) = admin_get_in(&self.ns, "/metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    /// Metric `name` summed over the series with label `label` (such as
    /// `reason="oversized"`), whatever their other labels.
    pub fn metric_with(&self, name: &str, label: &str) -> f64 {
        let (code, body) = admin_get_in(&self.ns, "/metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter(|l| {
                l.split_once('}')
                    .is_some_and(|(labels, _)| labels.contains(label))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    /// The I/O backend's counter `counter` summed over workers
    /// (`limpet_io_total{counter=...}`).
    pub fn io_counter(&self, counter: &str) -> f64 {
        self.metric_with("limpet_io_total", &format!("counter=\"{counter}\""))
    }

    pub fn affinity(&self) -> Vec<Value> {
        let out = sh(Command::new("ip").args([
            "netns", "exec", &self.ns, LIMPET, "affinity", "list", "--json",
        ]));
        serde_json::from_str(&out).expect("affinity list --json")
    }
}

impl Drop for Limpet {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The whole session-affinity story, in order, on one testbed, with
/// limpet driving it through `io`: NAT and DSR, IPv4 and IPv6, switching
/// affinity, endpoints removed / not ready / terminating, an invalid
/// reload, the timeout, two workers, and two-armed.
#[allow(clippy::too_many_lines)] // one story, in order, on one testbed
pub fn session_affinity(io: Io) {
    must_be_root();
    let testbed = Testbed::up_with(4, io.testbed_args());
    let config = Config::new(&format!("main-{io:?}"));
    let three = [ep(1), ep(2), ep(3)];
    config.write(&manifest(Some(10800), &three));

    // --- nat, IPv4 and IPv6 ---
    let limpet = Limpet::start(&config, io, "nat", 1);
    clientip_sticks(VIP4, "198.18.0.10", 200);
    clientip_sticks(VIP6, "2001:db8:c1::10", 50);
    let listed = limpet.affinity();
    assert!(
        listed.len() >= 250,
        "affinity list shows {} entries",
        listed.len()
    );
    assert!(
        listed
            .iter()
            .any(|e| e["client"] == "198.18.0.10" && e["service"] == "default/hostnames:80/TCP"),
        "198.18.0.10 not listed: {listed:?}"
    );
    // Just hit under timeoutSeconds 10800: never more than the Service asked.
    assert!(
        listed.iter().all(|e| e["expires_in_seconds"]
            .as_u64()
            .is_some_and(|s| (10_700..=10_800).contains(&s))),
        "expiry outside the timeout: {listed:?}"
    );

    // --- switching: ClientIP -> None -> ClientIP by rewriting the manifest ---
    let n = limpet.published();
    config.write(&manifest(None, &three));
    limpet.wait_published(n);
    none_spreads(VIP4, "198.18.1.10");
    let n = limpet.published();
    config.write(&manifest(Some(10800), &three));
    limpet.wait_published(n);
    http(VIP4, "198.18.1.20", 20, 16).sticky();
    // Turning affinity off dropped every entry; pin the clients again.
    let before = http(VIP4, "198.18.0.10", 200, 4).sticky();

    // --- endpoint removed: only its clients move ---
    let removed = "lp-be2";
    let n = limpet.published();
    config.write(&manifest(Some(10800), &[ep(1), ep(3)]));
    limpet.wait_published(n);
    let after = http(VIP4, "198.18.0.10", 200, 4).sticky();
    for (client, was) in &before {
        let now = &after[client];
        if was == removed {
            assert_ne!(now, removed, "{client} still on the removed endpoint");
        } else {
            assert_eq!(
                now, was,
                "{client} moved from {was} to {now} though its endpoint stayed"
            );
        }
    }

    // --- endpoint not ready: its clients move, nobody else ---
    let n = limpet.published();
    let not_ready = Ep {
        ready: false,
        ..ep(3)
    };
    config.write(&manifest(Some(10800), &[ep(1), not_ready]));
    limpet.wait_published(n);
    let later = http(VIP4, "198.18.0.10", 200, 2).sticky();
    for (client, was) in &after {
        if was == "lp-be3" {
            assert_eq!(
                later[client], "lp-be1",
                "{client} not moved off the not-ready endpoint"
            );
        } else {
            assert_eq!(
                &later[client], was,
                "{client} moved though its endpoint stayed ready"
            );
        }
    }

    // --- an established connection to a terminating-but-serving endpoint keeps working ---
    let n = limpet.published();
    config.write(&manifest(Some(10800), &three));
    limpet.wait_published(n);
    established_connection_survives(&config, &limpet);

    // --- an invalid reload keeps traffic flowing and affinity intact ---
    let snapshot = http(VIP4, "198.18.0.10", 50, 2).sticky();
    config.write(&manifest(Some(0), &three));
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        limpet.log_text().contains("configuration refused"),
        "invalid reload not refused:\n{}",
        limpet.log_text()
    );
    assert!(
        limpet.log_text().contains("timeoutSeconds"),
        "refusal does not name the field"
    );
    assert_eq!(http(VIP4, "198.18.0.10", 50, 2).sticky(), snapshot);
    drop(limpet);

    // --- timeout ---
    timeout_scenario(&config, io);

    // --- dsr, IPv4 and IPv6 ---
    testbed.mode("dsr");
    config.write(&manifest(Some(10800), &three));
    let limpet = Limpet::start(&config, io, "dsr", 1);
    clientip_sticks(VIP4, "198.18.2.10", 100);
    clientip_sticks(VIP6, "2001:db8:c1::200", 30);
    let n = limpet.published();
    config.write(&manifest(None, &three));
    limpet.wait_published(n);
    none_spreads(VIP4, "198.18.2.200");
    drop(limpet);
    testbed.mode("nat");

    // --- two workers: replies find their translation whichever worker holds it ---
    config.write(&manifest(Some(10800), &three));
    let limpet = Limpet::start(&config, io, "nat", 2);
    clientip_sticks(VIP4, "198.18.3.10", 100);
    clientip_sticks(VIP6, "2001:db8:c1::300", 30);
    drop(limpet);
    drop(testbed);

    // --- two-armed: clients on lb0, backends behind lb1 ---
    let _testbed = Testbed::up_with(3, &[&["--two-armed"], io.testbed_args()].concat());
    let workers = 2.min(io.max_workers());
    let mut args = io.args(&["lb0", "lb1"], workers);
    let lb1 = io.port(1, "lb1");
    args.extend([
        "--address".to_owned(),
        format!("{lb1}=203.0.113.1/24"),
        "--address".to_owned(),
        format!("{lb1}=2001:db8:be::1/64"),
        "--workers".to_owned(),
        workers.to_string(),
    ]);
    let _limpet = Limpet::start_with(&config, &args);
    clientip_sticks(VIP4, "198.18.0.10", 100);
    clientip_sticks(VIP6, "2001:db8:c1::10", 30);
}

/// timeoutSeconds 3: the entry shows, then is gone after 3 s idle; a client
/// pinned to A that Maglev now maps elsewhere (a backend was added while it
/// stayed active) stays on A while active and moves only after the timeout.
fn timeout_scenario(config: &Config, io: Io) {
    let three = [ep(1), ep(2), ep(3)];
    config.write(&manifest(Some(3), &three));
    let limpet = Limpet::start(config, io, "nat", 1);
    let first = "198.18.0.100";
    let pinned = http(VIP4, first, 60, 2).sticky();
    assert!(
        limpet.affinity().iter().any(|e| e["client"] == first),
        "entry for {first} not listed"
    );
    std::thread::sleep(Duration::from_millis(4500));
    assert!(
        !limpet.affinity().iter().any(|e| e["client"] == first),
        "entry for {first} still listed after 4.5 s idle with timeoutSeconds 3"
    );
    // Re-pin, then add a fourth backend while the clients stay active.
    let pinned_again = http(VIP4, first, 60, 1).sticky();
    assert_eq!(
        pinned_again, pinned,
        "Maglev's choice changed with nothing changed"
    );
    let n = limpet.published();
    config.write(&manifest(Some(3), &[ep(1), ep(2), ep(3), ep(4)]));
    limpet.wait_published(n);
    for _ in 0..4 {
        assert_eq!(
            http(VIP4, first, 60, 1).sticky(),
            pinned,
            "an active client moved when a backend was added"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_millis(4500));
    let moved = http(VIP4, first, 60, 1).sticky();
    let changed: Vec<_> = moved.iter().filter(|(c, b)| pinned[*c] != **b).collect();
    assert!(
        !changed.is_empty(),
        "no client followed Maglev after its timeout"
    );
    // Maglev's new choice is mostly the added backend (adding one only
    // takes table entries, up to a small reshuffle among the others).
    assert!(
        changed.iter().any(|(_, now)| now.as_str() == "lp-be4"),
        "no client moved to the added backend: {changed:?}"
    );
    // Once moved, a client sticks to its new backend.
    let settled = http(VIP4, first, 60, 2).sticky();
    assert_eq!(settled, moved, "clients did not stick after moving");
}

/// Opens a connection, marks its endpoint terminating (still serving) and
/// checks the open connection is still answered by that endpoint.
fn established_connection_survives(config: &Config, limpet: &Limpet) {
    // A client script that connects, waits for a signal file, then sends a
    // request on the same connection.
    let flag = config.dir.join("go");
    let script = format!(
        r#"
import socket, os, time, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_IP, 15, 1)
s.bind(("198.18.0.250", 0))
s.settimeout(10)
s.connect(("{VIP4}", 80))
print("connected", flush=True)
while not os.path.exists("{flag}"):
    time.sleep(0.05)
s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b"\r\n\r\n", 1)[-1].decode().strip(), flush=True)
"#,
        flag = flag.display()
    );
    let pinned = http(VIP4, "198.18.0.250", 1, 1).sticky()["198.18.0.250"].clone();
    let n: u8 = pinned.trim_start_matches("lp-be").parse().unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", "lp-client", "python3", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    let eps: Vec<Ep> = [1, 2, 3]
        .into_iter()
        .map(|i| {
            if i == n {
                Ep {
                    n: i,
                    ready: false,
                    serving: true,
                    terminating: true,
                }
            } else {
                ep(i)
            }
        })
        .collect();
    let published = limpet.published();
    config.write(&manifest(Some(10800), &eps));
    limpet.wait_published(published);
    // New connections of the same client go elsewhere now...
    let elsewhere = http(VIP4, "198.18.0.250", 1, 1).sticky()["198.18.0.250"].clone();
    assert_ne!(
        elsewhere, pinned,
        "a new connection still went to the terminating endpoint"
    );
    // ...while the open one still reaches its endpoint.
    std::fs::write(&flag, b"").unwrap();
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut answer).unwrap();
    let _ = child.wait();
    assert_eq!(
        answer.trim(),
        pinned,
        "the established connection lost its terminating endpoint"
    );
}
