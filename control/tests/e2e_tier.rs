//! A tier of two limpet nodes behind a BGP router, as operators scale an
//! edge load balancer: a router running BIRD with ECMP over an L4 hash,
//! two limpet nodes in one-armed `dsr` each announcing the same service
//! address through its own BIRD, three real TCP backends answering the
//! clients directly, and 1000 clients with 4 connections each.
//!
//! ```text
//!   lp-tcl (198.51.100.2, clients 198.18.0.0/22)
//!     | cl0
//!   lp-trt: BIRD, ECMP (fib_multipath_hash_policy=1), 203.0.113.254
//!     | rt-sw
//!   lp-tsw: bridge br0 -- lp-tn1 (203.0.113.2; limpet 203.0.113.12, BIRD)
//!                      -- lp-tn2 (203.0.113.3; limpet 203.0.113.13, BIRD)
//!                      -- lp-tb1..3 (203.0.113.21-23, VIP on lo, HTTP)
//! ```
//!
//! Each node's BIRD peers with the router over the node's own kernel
//! address on the link limpet drives (the kernel does not forward: limpet
//! has the service traffic). Needs root and BIRD 2 (`scripts/test.sh`
//! installs `bird2`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// A figure for the log: written to stderr itself, past libtest's capture
/// of `println!`, so a passing run in CI prints it too.
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod testbed;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testbed::behind::{in_ns, ip};
use testbed::story::Limpet;
use testbed::{LIMPET, http_from, must_be_root, repo, sh};

const VIP: &str = "192.0.2.100";
/// A second Service, `externalTrafficPolicy: Local`, whose one endpoint is
/// on node 2: only node 2 may announce it.
const LOCAL_VIP: &str = "192.0.2.101";
const ROUTER: &str = "203.0.113.254";
const ROUTER_AS: u32 = 64512;
const NODE_AS: u32 = 64513;
/// BGP hold time on every session: what (d) must beat.
const HOLD_S: u64 = 3;
/// (namespace, kernel address BIRD peers from, limpet's address, MAC)
const NODES: [(&str, &str, &str, &str); 2] = [
    ("lp-tn1", "203.0.113.2", "203.0.113.12", "02:00:00:00:05:01"),
    ("lp-tn2", "203.0.113.3", "203.0.113.13", "02:00:00:00:05:02"),
];
/// (namespace, address, MAC)
const BACKENDS: [(&str, &str, &str); 3] = [
    ("lp-tb1", "203.0.113.21", "02:00:00:00:06:01"),
    ("lp-tb2", "203.0.113.22", "02:00:00:00:06:02"),
    ("lp-tb3", "203.0.113.23", "02:00:00:00:06:03"),
];
const CLIENTS: usize = 1000;
const CONNECTIONS: usize = 4;
const FIRST_CLIENT: &str = "198.18.0.10";

/// The tier's namespaces, BIRDs and HTTP servers; all gone when dropped.
struct Tier {
    _lock: std::fs::File,
    dir: PathBuf,
    birds: BTreeMap<&'static str, Child>,
    servers: Vec<Child>,
}

impl Tier {
    fn up() -> Self {
        let lock = testbed::lock_testbed();
        // Whatever an interrupted run left.
        let _ = Command::new(repo().join("scripts/testbed"))
            .arg("down")
            .output();
        let dir = std::env::temp_dir().join(format!("limpet-tier-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut tier = Tier {
            _lock: lock,
            dir,
            birds: BTreeMap::new(),
            servers: Vec::new(),
        };
        tier.build_links();
        tier.build_router();
        tier.start_router();
        for (ns, addr, _, _) in NODES {
            tier.start_node_bird(ns, addr);
        }
        for (ns, _, _) in BACKENDS {
            let child = Command::new("ip")
                .args(["netns", "exec", ns, "python3"])
                .arg(repo().join("scripts/testbed-http-server.py"))
                .args([ns, "--port", "80"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            tier.servers.push(child);
        }
        tier
    }

    /// Every namespace, and the segment of the router, nodes and backends.
    #[allow(clippy::unused_self)] // builds what `self` tears down
    fn build_links(&self) {
        for ns in ["lp-tsw", "lp-trt", "lp-tcl"]
            .into_iter()
            .chain(NODES.iter().map(|n| n.0))
            .chain(BACKENDS.iter().map(|b| b.0))
        {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", "lp-tsw", "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", "lp-tsw", "link", "set", "br0", "up"]);
        let port = |ns: &str, dev: &str, mac: &str, addr: &str| {
            let sw = format!("sw-{}", &ns[3..]);
            ip(&[
                "-n", "lp-tsw", "link", "add", &sw, "type", "veth", "peer", "name", dev, "netns",
                ns,
            ]);
            ip(&["-n", "lp-tsw", "link", "set", &sw, "master", "br0"]);
            ip(&["-n", "lp-tsw", "link", "set", &sw, "up"]);
            ip(&["-n", ns, "link", "set", dev, "address", mac]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            // The checksum offloads stay on, as the field has them.
        };
        port("lp-trt", "rt-sw", "02:00:00:00:04:01", ROUTER);
        for (ns, addr, _, mac) in NODES {
            port(ns, "eth0", mac, addr);
            sysctl(
                ns,
                &["net.ipv4.ip_forward=0", "net.ipv6.conf.all.disable_ipv6=1"],
            );
        }
        for (ns, addr, mac) in BACKENDS {
            port(ns, "eth0", mac, addr);
            for vip in [VIP, LOCAL_VIP] {
                ip(&["-n", ns, "addr", "add", &format!("{vip}/32"), "dev", "lo"]);
            }
            ip(&["-n", ns, "route", "add", "default", "via", ROUTER]);
            // The service address is the backend's own, but only limpet
            // answers for it on the wire.
            sysctl(
                ns,
                &[
                    "net.ipv4.conf.all.arp_ignore=1",
                    "net.ipv4.conf.all.arp_announce=2",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.eth0.rp_filter=0",
                ],
            );
        }
    }

    /// The router's side: its link to the clients, forwarding with ECMP,
    /// and a counter of the replies the backends send it directly.
    fn build_router(&self) {
        ip(&[
            "-n", "lp-trt", "link", "add", "rt-cl", "type", "veth", "peer", "name", "cl0", "netns",
            "lp-tcl",
        ]);
        ip(&[
            "-n",
            "lp-trt",
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "rt-cl",
        ]);
        ip(&["-n", "lp-trt", "link", "set", "rt-cl", "up"]);
        ip(&[
            "-n",
            "lp-trt",
            "route",
            "add",
            "198.18.0.0/22",
            "via",
            "198.51.100.2",
        ]);
        sysctl(
            "lp-trt",
            &[
                "net.ipv4.ip_forward=1",
                // ECMP over the 5-tuple: a client's connections spread over
                // both nodes, the case limpet's shared Maglev choice is for.
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv4.conf.all.rp_filter=0",
            ],
        );
        ip(&[
            "-n",
            "lp-tcl",
            "addr",
            "add",
            "198.51.100.2/24",
            "dev",
            "cl0",
        ]);
        ip(&["-n", "lp-tcl", "link", "set", "cl0", "up"]);
        ip(&[
            "-n",
            "lp-tcl",
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
        ]);
        ip(&[
            "-n",
            "lp-tcl",
            "route",
            "add",
            "local",
            "198.18.0.0/22",
            "dev",
            "lo",
        ]);
        // Replies that come straight from a backend, not through a node.
        let macs: Vec<&str> = BACKENDS.iter().map(|b| b.2).collect();
        let rules = self.dir.join("router.nft");
        std::fs::write(
            &rules,
            format!(
                "table inet tier {{\n  chain replies {{\n    type filter hook forward priority 0;\n    \
                 iifname \"rt-sw\" ether saddr {{ {} }} ip saddr {VIP} tcp sport 80 counter\n  }}\n}}\n",
                macs.join(", ")
            ),
        )
        .unwrap();
        in_ns("lp-trt", &["nft", "-f", &rules.display().to_string()]);
    }

    fn start_router(&mut self) {
        let mut conf = format!(
            "router id {ROUTER};\nprotocol device {{ scan time 1; }}\n\
             protocol kernel {{ ipv4 {{ export all; }}; merge paths on; }}\n"
        );
        for (i, (_, addr, _, _)) in NODES.iter().enumerate() {
            let _ = writeln!(
                conf,
                "protocol bgp node{i} {{ local {ROUTER} as {ROUTER_AS}; neighbor {addr} as {NODE_AS}; \
                 hold time {HOLD_S}; connect retry time 1; error wait time 1, 2; \
                 ipv4 {{ import all; export none; }}; }}"
            );
        }
        let child = self.bird("lp-trt", &conf);
        self.birds.insert("lp-trt", child);
    }

    fn node_dir(&self, ns: &str) -> PathBuf {
        self.dir.join(ns)
    }

    /// A node's BIRD: limpet's fragment included (a glob, so BIRD starts
    /// before limpet ever wrote it), and only limpet's routes exported.
    fn node_bird_conf(&self, ns: &str, addr: &str) -> String {
        let dir = self.node_dir(ns);
        format!(
            "router id {addr};\nprotocol device {{ scan time 1; }}\n\
             include \"{}/limpet*.conf\";\n\
             protocol bgp uplink {{ local {addr} as {NODE_AS}; neighbor {ROUTER} as {ROUTER_AS}; \
             hold time {HOLD_S}; connect retry time 1; error wait time 1, 2; \
             ipv4 {{ import none; export where proto = \"limpet4\"; }}; }}\n",
            dir.display()
        )
    }

    fn start_node_bird(&mut self, ns: &'static str, addr: &str) {
        std::fs::create_dir_all(self.node_dir(ns)).unwrap();
        let conf = self.node_bird_conf(ns, addr);
        let child = self.bird(ns, &conf);
        self.birds.insert(ns, child);
    }

    fn socket(&self, ns: &str) -> PathBuf {
        self.dir.join(format!("{ns}.ctl"))
    }

    /// BIRD in the foreground in `ns`, with `conf`.
    fn bird(&self, ns: &str, conf: &str) -> Child {
        let path = self.dir.join(format!("{ns}.conf"));
        std::fs::write(&path, conf).unwrap();
        let socket = self.socket(ns);
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "bird", "-f", "-c"])
            .arg(&path)
            .arg("-s")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("{ns}.bird.log"))).unwrap())
            .spawn()
            .expect("starting bird (apt-get install bird2)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "bird in {ns} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn stop_bird(&mut self, ns: &str) {
        if let Some(mut child) = self.birds.remove(ns) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket(ns));
    }

    /// limpet on node `i`, announcing through its BIRD.
    fn start_limpet(&self, i: usize, manifest: &Path) -> Limpet {
        let (ns, _, addr, _) = NODES[i];
        let dir = self.node_dir(ns);
        let args: Vec<String> = [
            "--io",
            "afpacket:eth0",
            "--address",
            &format!("{addr}/24"),
            "--forward",
            "dsr",
            "--workers",
            "1",
            "--node-name",
            &format!("node-{}", i + 1),
            "--announce",
            "bird",
            "--bird-fragment",
            &dir.join("limpet.conf").display().to_string(),
            "--birdc-socket",
            &self.socket(ns).display().to_string(),
            "--announce-link",
            "limpet0",
            // A restart brings its entries back, as the DaemonSet's does.
            "--state-file",
            &dir.join("limpet.state").display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        Limpet::spawn_in(
            ns,
            &[std::ffi::OsStr::new("--config"), manifest.as_os_str()],
            &args,
            self.dir.join(format!("{ns}-limpet-{}.log", now_ms())),
        )
    }

    /// The router's next hops for a service address.
    #[allow(clippy::unused_self)] // asks the tier's router
    fn next_hops(&self, addr: &str) -> BTreeSet<String> {
        let out = in_ns("lp-trt", &["ip", "-4", "route", "show", addr]);
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_owned())
            .collect()
    }

    /// Waits until the router's next hops for [`VIP`] are `want`; how long
    /// it took.
    fn wait_next_hops(&self, want: &[&str], within: Duration) -> Duration {
        self.wait_route(VIP, want, within)
    }

    /// Waits until the router's next hops for `addr` are `want`.
    fn wait_route(&self, addr: &str, want: &[&str], within: Duration) -> Duration {
        let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
        let start = Instant::now();
        loop {
            let now = self.next_hops(addr);
            if now == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "router's next hops for {addr}: {now:?}, wanted {want:?} within {within:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let _ = writeln!(
                    out,
                    "--- {}\n{}",
                    p.display(),
                    std::fs::read_to_string(&p).unwrap_or_default()
                );
            }
        }
        out
    }

    /// The backends each client reached over `CONNECTIONS` new
    /// connections; panics if a connection failed.
    #[allow(clippy::unused_self)] // from the tier's clients
    fn clients(&self, what: &str) -> Visits {
        let answers = http_from("lp-tcl", VIP, FIRST_CLIENT, CLIENTS, CONNECTIONS);
        let mut visits = BTreeMap::new();
        for (client, results) in answers.results {
            assert!(
                results.iter().all(Option::is_some),
                "{what}: client {client} had a connection fail: {results:?}"
            );
            visits.insert(client, results.into_iter().flatten().collect());
        }
        let visits = Visits(visits);
        report!(
            "tier {what}: {} of {CLIENTS} clients on one backend over {CONNECTIONS} connections ({:.1} %)",
            visits.single().len(),
            visits.single().len() as f64 * 100.0 / CLIENTS as f64
        );
        visits
    }
}

/// Per client, the backends its connections reached.
struct Visits(BTreeMap<String, BTreeSet<String>>);

impl Visits {
    /// Clients whose every connection reached one backend, with it.
    fn single(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter(|(_, b)| b.len() == 1)
            .map(|(c, b)| (c.clone(), b.first().unwrap().clone()))
            .collect()
    }

    /// Asserts the share of clients on one backend is at least 99.9 %.
    fn assert_sticky(&self, what: &str) -> BTreeMap<String, String> {
        let single = self.single();
        assert!(
            single.len() * 1000 >= CLIENTS * 999,
            "{what}: only {} of {CLIENTS} clients stayed on one backend",
            single.len()
        );
        single
    }

    /// Clients of `before` that reached anything other than their backend.
    fn moved_from(&self, before: &BTreeMap<String, String>) -> BTreeSet<String> {
        before
            .iter()
            .filter(|(c, b)| {
                self.0
                    .get(*c)
                    .is_none_or(|now| now.len() != 1 || now.first() != Some(*b))
            })
            .map(|(c, _)| c.clone())
            .collect()
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.birds) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(repo().join("scripts/testbed"))
            .arg("down")
            .output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn sysctl(ns: &str, settings: &[&str]) {
    for kv in settings {
        sh(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-qw", kv]));
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The Service (`type: LoadBalancer`, `ClientIP`) and its three endpoints,
/// `ready[i]` saying whether endpoint `i` is ready.
fn manifest(ready: [bool; 3]) -> String {
    let mut endpoints = String::new();
    for ((ns, addr, _), ready) in BACKENDS.into_iter().zip(ready) {
        let _ = write!(
            endpoints,
            "- addresses: [\"{addr}\"]\n  conditions:\n    ready: {ready}\n    serving: {ready}\n  targetRef:\n    kind: Pod\n    name: {ns}\n"
        );
    }
    format!(
        r"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: LoadBalancer
  clusterIP: 198.51.100.80
  clusterIPs: [198.51.100.80]
  ipFamilies: [IPv4]
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 600
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 80
    nodePort: 30080
status:
  loadBalancer:
    ingress:
    - ip: {VIP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
endpoints:
{endpoints}ports:
- name: http
  port: 80
  protocol: TCP
"
    )
}

/// The `externalTrafficPolicy: Local` Service, its one endpoint (lp-tb1) on
/// node 2.
fn local_manifest() -> String {
    format!(
        r"apiVersion: v1
kind: Service
metadata:
  name: local
  namespace: default
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32001
  clusterIP: 198.51.100.81
  clusterIPs: [198.51.100.81]
  ipFamilies: [IPv4]
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 80
    nodePort: 30081
status:
  loadBalancer:
    ingress:
    - ip: {LOCAL_VIP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: local-1
  namespace: default
  labels:
    kubernetes.io/service-name: local
addressType: IPv4
endpoints:
- addresses: [{}]
  conditions:
    ready: true
  nodeName: node-2
ports:
- name: http
  port: 80
  protocol: TCP
",
        BACKENDS[0].1
    )
}

/// A manifest directory per node.
fn write_manifest(dir: &Path, ready: [bool; 3]) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(".web.yaml.tmp");
    std::fs::write(&tmp, manifest(ready)).unwrap();
    std::fs::rename(&tmp, dir.join("web.yaml")).unwrap();
}

/// A node's affinity entries: client -> backend name.
fn entries(limpet: &Limpet) -> BTreeMap<String, String> {
    limpet
        .affinity()
        .iter()
        .map(|e| {
            let backend = e["backend"].as_str().unwrap();
            let ip = backend.split(':').next().unwrap();
            let name = BACKENDS
                .iter()
                .find(|b| b.1 == ip)
                .unwrap_or_else(|| panic!("unknown backend {backend}"))
                .0;
            (e["client"].as_str().unwrap().to_owned(), name.to_owned())
        })
        .collect()
}

fn status(ns: &str) -> serde_json::Value {
    let out = sh(Command::new("ip").args(["netns", "exec", ns, LIMPET, "status", "--json"]));
    serde_json::from_str(&out).expect("limpet status --json")
}

fn router_replies_from_backends() -> u64 {
    let out = in_ns("lp-trt", &["nft", "list", "table", "inet", "tier"]);
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// (a) to (e) of the tier's story, in order, on one topology.
#[test]
#[allow(clippy::too_many_lines)] // one story, in order
fn a_tier_behind_bgp_ecmp_keeps_clients_through_node_loss_and_return() {
    must_be_root();
    let mut tier = Tier::up();
    let manifests: Vec<PathBuf> = NODES
        .iter()
        .map(|(ns, ..)| tier.node_dir(ns).join("manifests"))
        .collect();
    // Two endpoints ready at first; the third comes later.
    for m in &manifests {
        write_manifest(m, [true, true, false]);
        std::fs::write(m.join("local.yaml"), local_manifest()).unwrap();
    }
    let node_addrs: Vec<&str> = NODES.iter().map(|n| n.1).collect();
    let n1 = tier.start_limpet(0, &manifests[0]);
    let n2 = tier.start_limpet(1, &manifests[1]);
    let up = tier.wait_next_hops(&node_addrs, Duration::from_secs(30));
    report!(
        "tier: both nodes' routes at the router {:.1} s after start",
        up.as_secs_f64()
    );
    let s = status("lp-tn1");
    let routes = &s["announce"]["routes"];
    assert_eq!(routes[0]["address"], VIP, "{s:#}");
    assert_eq!(routes[0]["announced"], true, "{s:#}");
    assert_eq!(s["announce"]["link_up"], true, "{s:#}");
    // externalTrafficPolicy: Local: only the node with a local endpoint
    // announces the address; the other says why not.
    tier.wait_route(LOCAL_VIP, &[NODES[1].1], Duration::from_secs(10));
    let local = |ns: &str| {
        let s = status(ns);
        s["announce"]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["address"] == LOCAL_VIP)
            .cloned()
            .unwrap_or_else(|| panic!("{LOCAL_VIP} not in {s:#}"))
    };
    let (on_1, on_2) = (local("lp-tn1"), local("lp-tn2"));
    assert_eq!(on_1["announced"], false, "{on_1}");
    assert_eq!(on_2["announced"], true, "{on_2}");
    report!(
        "tier: {LOCAL_VIP} (externalTrafficPolicy: Local) announced by node 2 only; node 1: {}",
        on_1["reason"]
    );
    let reached = http_from("lp-tcl", LOCAL_VIP, "198.18.3.10", 20, 1).sticky();
    assert!(
        reached.values().all(|b| b == BACKENDS[0].0),
        "{LOCAL_VIP} reached {reached:?}"
    );

    // (a) Both nodes up: each client's 4 connections land on both nodes by
    // ECMP, and every node picks the same backend.
    let first = tier.clients("(a) both nodes up").assert_sticky("(a)");
    let on = |l: &Limpet| l.affinity().len();
    let (c1, c2) = (on(&n1), on(&n2));
    report!("tier (a): clients seen by node 1: {c1}, by node 2: {c2} (of {CLIENTS})");
    assert!(
        c1 > CLIENTS / 2 && c2 > CLIENTS / 2,
        "ECMP did not spread clients' connections over both nodes: {c1} and {c2}"
    );
    // (e) dsr: the backends answer the clients themselves, through the
    // router, never back through a node.
    let direct = router_replies_from_backends();
    report!("tier (e): {direct} reply packets reached the router straight from the backends");
    assert!(
        direct >= (CLIENTS * CONNECTIONS) as u64,
        "only {direct} replies came straight from the backends"
    );

    // The third endpoint becomes ready on both nodes: Maglev's pick
    // changes for about a third of the clients, their entries keep them.
    let (e1, e2) = (entries(&n1), entries(&n2));
    for (m, l) in manifests.iter().zip([&n1, &n2]) {
        let before = l.published();
        write_manifest(m, [true, true, true]);
        l.wait_published(before);
    }
    let added = tier.clients("endpoint added");
    // A client both nodes had placed keeps its backend everywhere; one
    // that only one node knew is placed by Maglev on the other, which now
    // picks differently for about a third of them: those split. No state
    // is shared between the nodes, so this is the tier's one divergence.
    let known_to_both: BTreeSet<&String> = e1.keys().filter(|c| e2.contains_key(*c)).collect();
    let split: BTreeSet<String> = added.moved_from(&first);
    report!(
        "tier, endpoint added: {} clients split over two backends, all among the {} \
         clients only one node had seen ({} known to both kept theirs)",
        split.len(),
        CLIENTS - known_to_both.len(),
        known_to_both.len()
    );
    assert!(
        split.iter().all(|c| !known_to_both.contains(c)),
        "clients both nodes knew moved when an endpoint came"
    );

    // A node with no usable endpoint for the address withdraws it while it
    // keeps running; back when they are ready again.
    let before = n1.published();
    write_manifest(&manifests[0], [false, false, false]);
    n1.wait_published(before);
    tier.wait_next_hops(&[NODES[1].1], Duration::from_secs(10));
    let s = status("lp-tn1");
    let route = &s["announce"]["routes"][0];
    assert_eq!(route["announced"], false, "{s:#}");
    assert!(route["reason"].as_str().unwrap().contains("no"), "{s:#}");
    assert_eq!(s["announce"]["link_up"], true, "{s:#}");
    write_manifest(&manifests[0], [true, true, true]);
    tier.wait_next_hops(&node_addrs, Duration::from_secs(10));

    // Draining node 1: every route withdrawn while it keeps forwarding;
    // cancelled, announced again.
    let drain = |args: &[&str]| {
        sh(Command::new("ip")
            .args(["netns", "exec", "lp-tn1", LIMPET, "drain"])
            .args(args))
    };
    drain(&["node", "--deadline", "60s"]);
    let drained = tier.wait_next_hops(&[NODES[1].1], Duration::from_secs(10));
    report!(
        "tier: node 1 drained (limpet drain node): route withdrawn {} ms later",
        drained.as_millis()
    );
    let s = status("lp-tn1");
    assert_eq!(s["announce"]["link_up"], false, "{s:#}");
    assert!(
        s["announce"]["withdrawn_because"]
            .as_str()
            .unwrap()
            .contains("draining"),
        "{s:#}"
    );
    drain(&["node", "--cancel"]);
    tier.wait_next_hops(&node_addrs, Duration::from_secs(10));

    // (b) A planned stop of node 1: its route goes first, its clients move
    // to node 2, which keeps each client it has an entry for on that
    // backend (the same one node 1 has, unless the client split above) and
    // places the others by Maglev: those whose backend is no longer
    // Maglev's pick move, the counted share.
    let before_loss = tier.clients("(b) before node 1 stops").single();
    let on_2 = entries(&n2);
    let stopping = std::thread::spawn(move || drop(n1));
    let withdrawn = tier.wait_next_hops(&[NODES[1].1], Duration::from_secs(10));
    stopping.join().unwrap();
    report!(
        "tier (b): node 1 stopped (SIGTERM): its route withdrawn at the router {} ms later",
        withdrawn.as_millis()
    );
    let after_loss = tier.clients("(b) node 1 stopped");
    let after_loss_single = after_loss.assert_sticky("(b)");
    let moved_loss = after_loss.moved_from(&before_loss);
    let unknown_to_2 = before_loss
        .keys()
        .filter(|c| !on_2.contains_key(*c))
        .count();
    report!(
        "tier (b): {} of {} clients changed backend on node 1's loss, each one node 2 held on \
         another backend than node 1 (a client split above) or had no entry for ({} had none)",
        moved_loss.len(),
        before_loss.len(),
        unknown_to_2
    );
    assert_eq!(on(&n2), CLIENTS, "node 2 must serve every client now");
    for (client, backend) in &on_2 {
        assert_eq!(
            after_loss_single.get(client),
            Some(backend),
            "node 2 did not keep {client} on its entry's backend"
        );
    }
    assert!(
        moved_loss
            .iter()
            .all(|c| on_2.get(c).is_none_or(|b| Some(b) != before_loss.get(c))),
        "clients moved whose entry node 2 honoured"
    );

    // (c) Node 1 returns with its saved entries: ECMP sends clients back.
    // A client whose entries on the two nodes agree stays put; one whose
    // entries differ (it moved in (b)) meets its old backend again on the
    // connections ECMP sends to node 1.
    let n1 = tier.start_limpet(0, &manifests[0]);
    let back = tier.wait_next_hops(&node_addrs, Duration::from_secs(30));
    report!(
        "tier (c): node 1 back at the router {} ms after its start",
        back.as_millis()
    );
    let (r1, r2) = (entries(&n1), entries(&n2));
    let after_return = tier.clients("(c) node 1 back");
    let moved_return = after_return.moved_from(&after_loss_single);
    let disagreeing: BTreeSet<String> = r1
        .iter()
        .filter(|(c, b)| r2.get(*c).is_some_and(|b2| b2 != *b))
        .map(|(c, _)| c.clone())
        .collect();
    report!(
        "tier (c): {} of {CLIENTS} clients moved on node 1's return, all among the {} whose \
         restored entry on node 1 differs from node 2's; node 1 restored {} entries",
        moved_return.len(),
        disagreeing.len(),
        r1.len()
    );
    assert!(
        r1.len() > CLIENTS / 2,
        "node 1 restored {} entries",
        r1.len()
    );
    assert!(
        moved_return.is_subset(&disagreeing),
        "node 1's return moved {:?}",
        moved_return.difference(&disagreeing).collect::<Vec<_>>()
    );

    // (d) SIGKILL: limpet does nothing, its liveness link goes with its
    // process and BIRD withdraws the route.
    n1.crash();
    let gone = tier.wait_next_hops(&[NODES[1].1], Duration::from_secs(HOLD_S));
    report!(
        "tier (d): node 1's limpet killed (SIGKILL): route withdrawn at the router {} ms later (hold time {HOLD_S} s)",
        gone.as_millis()
    );

    // The speaker dies: limpet keeps running and says so; BIRD back, the
    // route is back.
    tier.stop_bird("lp-tn2");
    tier.wait_next_hops(&[], Duration::from_secs(HOLD_S + 2));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status("lp-tn2");
        if s["announce"]["speaker_ok"] == false {
            assert!(s["announce"]["last_error"].as_str().is_some(), "{s:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "speaker's death not noticed: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let conf = tier.node_bird_conf("lp-tn2", NODES[1].1);
    let child = tier.bird("lp-tn2", &conf);
    tier.birds.insert("lp-tn2", child);
    let again = tier.wait_next_hops(&[NODES[1].1], Duration::from_secs(30));
    report!(
        "tier: node 2's BIRD restarted: route back at the router {} ms later",
        again.as_millis()
    );
    assert!(
        n2.metric("limpet_announce_link_up") > 0.5,
        "limpet kept serving through its speaker's restart"
    );
    drop(n2);
}
