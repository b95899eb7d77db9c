//! The network-namespace testbed (`scripts/testbed`) as the end-to-end
//! tests drive it: bringing it up and down, HTTP clients from many
//! addresses in lp-client, and what they saw.
#![allow(dead_code)]

pub mod behind;
pub mod story;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const VIP4: &str = "192.0.2.10";
pub const VIP6: &str = "2001:db8:5::10";
pub const LIMPET: &str = env!("CARGO_BIN_EXE_limpet");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn must_be_root() {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        uid, "0",
        "the end-to-end tests build network namespaces and need root (CI runs as root); run `sudo scripts/test.sh`"
    );
}

pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The testbed, torn down when dropped (even when a scenario fails).
///
/// Its namespaces have fixed names, so it holds an exclusive lock on
/// [`TESTBED_LOCK`] while up: test binaries, worktrees and the benchmark
/// harness that share a machine take turns instead of tearing down each
/// other's testbed.
pub struct Testbed {
    _lock: std::fs::File,
}

/// The file every user of the `lp-*` testbed locks (`flock` in scripts).
pub const TESTBED_LOCK: &str = "/run/lock/limpet-testbed.lock";

/// Waits for, and holds until dropped, the lock every user of the `lp-*`
/// namespaces takes.
pub fn lock_testbed() -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(TESTBED_LOCK)
        .unwrap_or_else(|e| panic!("opening {TESTBED_LOCK}: {e}"));
    lock.lock()
        .unwrap_or_else(|e| panic!("locking {TESTBED_LOCK}: {e}"));
    lock
}

impl Testbed {
    pub fn up(backends: usize) -> Self {
        Self::up_with(backends, &[])
    }

    pub fn up_with(backends: usize, extra: &[&str]) -> Self {
        let lock = lock_testbed();
        sh(Command::new(repo().join("scripts/testbed"))
            .args(["up", "--backends", &backends.to_string()])
            .args(extra));
        Testbed { _lock: lock }
    }

    #[allow(clippy::unused_self)] // switching mode needs the testbed up
    pub fn mode(&self, mode: &str) {
        sh(Command::new(repo().join("scripts/testbed")).args(["mode", mode]));
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/testbed"))
            .arg("down")
            .output();
    }
}

/// Stops a limpet started under `ip netns exec`: SIGTERM, then SIGKILL
/// after five seconds.
pub fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// GET on limpet's admin API (127.0.0.1:9901 in lp-lb): status and body;
/// status 0 when nothing answers.
pub fn admin_get(path: &str) -> (u16, String) {
    admin_get_in("lp-lb", path)
}

/// [`admin_get`] in namespace `ns`.
pub fn admin_get_in(ns: &str, path: &str) -> (u16, String) {
    const SCRIPT: &str = r"
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    r = opener.open('http://127.0.0.1:9901' + sys.argv[1], timeout=3)
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
except Exception as e:
    code, body = 0, str(e).encode()
print(code)
sys.stdout.write(body.decode(errors='replace'))
";
    let out = sh(Command::new("ip").args(["netns", "exec", ns, "python3", "-c", SCRIPT, path]));
    let (code, body) = out.split_once('\n').unwrap_or((&out, ""));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Which backend answered each request, per client address.
pub struct Answers {
    pub results: BTreeMap<String, Vec<Option<String>>>,
}

impl Answers {
    pub fn backends_of(&self, client: &str) -> BTreeSet<String> {
        self.results[client].iter().flatten().cloned().collect()
    }

    /// Each client's single backend; fails if a client saw two or a request failed.
    pub fn sticky(&self) -> BTreeMap<String, String> {
        self.results
            .iter()
            .map(|(c, r)| {
                assert!(
                    r.iter().all(Option::is_some),
                    "client {c}: failed requests {r:?}"
                );
                let set = self.backends_of(c);
                assert_eq!(set.len(), 1, "client {c} reached several backends: {r:?}");
                (c.clone(), set.into_iter().next().unwrap())
            })
            .collect()
    }
}

/// `requests` new connections from each of `clients` addresses starting at `first`.
pub fn http(vip: &str, first: &str, clients: usize, requests: usize) -> Answers {
    http_from("lp-client", vip, first, clients, requests)
}

/// [`http`] from namespace `ns` (a backend's, to reach its own Service).
pub fn http_from(ns: &str, vip: &str, first: &str, clients: usize, requests: usize) -> Answers {
    let out = sh(Command::new("ip")
        .args(["netns", "exec", ns, "python3"])
        .arg(repo().join("scripts/testbed-client.py"))
        .args([
            "--vip",
            vip,
            "--first",
            first,
            "--clients",
            &clients.to_string(),
            "--requests",
            &requests.to_string(),
            "--timeout",
            "3",
        ]));
    let v: Value = serde_json::from_str(&out).expect("client JSON");
    let results = v["results"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(c, r)| {
            let r = r
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect();
            (c.clone(), r)
        })
        .collect();
    Answers { results }
}

pub fn clientip_sticks(vip: &str, first: &str, clients: usize) -> BTreeMap<String, String> {
    // One client, 16 requests: one backend.
    let one = http(vip, first, 1, 16);
    one.sticky();
    // Many clients, each sticking to its own.
    let many = http(vip, first, clients, 16);
    let placement = many.sticky();
    let used: BTreeSet<&String> = placement.values().collect();
    assert!(used.len() >= 2, "{clients} clients all landed on {used:?}");
    placement
}

pub fn none_spreads(vip: &str, first: &str) {
    let a = http(vip, first, 1, 16);
    let set = a.backends_of(first);
    assert!(
        set.len() >= 2,
        "None affinity: 16 requests from {first} reached only {set:?}"
    );
}

/// The CPUs this process may run on, one by one (`0-1,5` is 0, 1, 5).
pub fn allowed_cpu_list() -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in allowed_cpus().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
            cpus.extend(a..=b);
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// The CPUs this process may run on, as EAL's cpu set (`0,1,5`).
pub fn allowed_cpus() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map_or_else(|| "0".to_owned(), |l| l.trim().to_owned())
}

/// pktgen, built into the same target directory as the limpet under test.
pub fn pktgen() -> PathBuf {
    let bin_dir = Path::new(LIMPET).parent().expect("limpet's directory");
    let target_dir = bin_dir.parent().expect("target directory");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "limpet-pktgen", "--bin", "pktgen"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(repo());
    if bin_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "{cmd:?} failed");
    bin_dir.join("pktgen")
}

/// A server (run with `python3 -c`, its port the one argument) answering
/// each connection, once the client has shut its side, with the number of
/// bytes it received. Dual-stack on `[::]`.
pub const COUNT_SERVER: &str = r#"
import socket, sys, threading
def serve(c):
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    c.sendall(str(n).encode())
    c.close()
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// In lp-client: an upload of `argv[3]` bytes to `argv[1]:argv[2]` (a
/// [`COUNT_SERVER`]), what came back, and the client's MSS before and
/// after (TCP with DF, as Linux sends it).
const UPLOAD: &str = r#"
import json, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
mss_before = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
t = time.time()
out = {"mss_before": mss_before}
try:
    s.sendall(b"x" * int(sys.argv[3]))
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        b = s.recv(100)
        if not b:
            break
        reply += b
    out["reply"] = reply.decode()
except OSError as e:
    out["error"] = repr(e)
out["secs"] = time.time() - t
out["mss_after"] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
print(json.dumps(out))
"#;

/// Uploads `bytes` from lp-client's own address to `vip:port` (see
/// [`UPLOAD`]); the script's JSON report.
pub fn upload(vip: &str, port: u16, bytes: usize) -> Value {
    let out = sh(Command::new("ip").args([
        "netns",
        "exec",
        "lp-client",
        "python3",
        "-c",
        UPLOAD,
        vip,
        &port.to_string(),
        &bytes.to_string(),
    ]));
    serde_json::from_str(&out).expect("upload JSON")
}

/// Long-lived TCP connections to `vip:80` from lp-client, one from each
/// source address, each sending its request a header line a second (the
/// backends drop a silent connection after 10 s, and the connection
/// carries packets all along) until [`finish`](Self::finish) ends the
/// requests.
pub struct HeldConnections {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    go: PathBuf,
}

impl HeldConnections {
    /// Opens the connections; returns once all are established. `go` is
    /// the file whose creation ends the requests.
    pub fn open(sources: &[String], vip: &str, go: PathBuf) -> Self {
        use std::io::BufRead;
        let _ = std::fs::remove_file(&go);
        let script = format!(
            r#"
import socket, os, time
conns = []
for src in {sources:?}:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
    s.bind((src, 0))
    s.settimeout(10)
    s.connect(("{vip}", 80))
    conns.append(s)
for s in conns:
    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n")
print("connected", flush=True)
broken = set()
while not os.path.exists("{go}"):
    for i, s in enumerate(conns):
        try:
            s.sendall(b"X-Tick: 1\r\n")
        except Exception as e:
            broken.add(i)
    time.sleep(1)
for i, s in enumerate(conns):
    try:
        if i in broken:
            raise RuntimeError("a header line could not be sent")
        s.sendall(b"\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        print(data.split(b"\r\n\r\n", 1)[-1].decode().strip() or "ERROR empty", flush=True)
    except Exception as e:
        print("ERROR %s" % e, flush=True)
"#,
            go = go.display()
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", "lp-client", "python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the long-lived clients");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "connected",
            "long-lived clients did not connect"
        );
        Self { child, out, go }
    }

    /// Ends every request: each connection's answer, in the order of the
    /// sources (the backend's name, or `ERROR ...`).
    pub fn finish(mut self) -> Vec<String> {
        use std::io::BufRead;
        std::fs::write(&self.go, b"").unwrap();
        let answers: Vec<String> = (&mut self.out).lines().map_while(Result::ok).collect();
        let _ = self.child.wait();
        answers
    }
}
