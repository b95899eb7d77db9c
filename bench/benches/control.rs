//! Control-plane figures at scale, through the real path: a fake Kubernetes
//! API server (the one the control tests use: real HTTP and the API's wire
//! format) -> limpet's `KubeSource` (kube-rs watcher + reflector, paging,
//! coalescing, translation) -> `SnapshotCompiler` -> a worker adopting the
//! snapshot at a burst boundary.
//!
//! The cluster: 10,000 `ClientIP` services and 100,000 ready endpoints in
//! `EndpointSlice`s of at most 100: 100 big services of 250 endpoints (three
//! slices each) and 9,900 of 7 or 8. Cluster IPs are the first addresses of
//! 198.18.0.0/15, endpoints the 100,000 after 198.18.40.0 (RFC 2544's
//! benchmarking range; nothing is sent anywhere).
//!
//! The API server runs in a child process (this binary, re-executed), so
//! the resident memory measured here is limpet's alone.
//!
//! Figures, one JSON line each (not asserted):
//! - `initial_sync`: from starting the source to the first snapshot
//!   compiled (goal <= 1 s), split into list+translate and compile;
//! - `endpoint_change`: one endpoint's readiness flipped on the API server
//!   -> `KubeUpdate::Changed` (the one changed service port) received ->
//!   snapshot derived from the last one -> worker swapped to it; p50/p99
//!   over `CHANGES` changes (goal p99 <= 5 ms);
//! - `memory`: resident set size before and after, and the snapshot's size.
//!
//! `cargo bench -p limpet-bench --bench control`; `LIMPET_BENCH_MAGLEV_MIN`
//! sets `TranslateContext::maglev_min_size` (e.g. 65537 for the classic size),
//! `LIMPET_BENCH_CHANGES` the number of changes.

#[path = "../../control/tests/fake_apiserver/mod.rs"]
mod fake_apiserver;

use fake_apiserver::{FakeApiServer, service, slice};
use limpet_control::compile::SnapshotCompiler;
use limpet_control::kube_source::{KubeOptions, KubeSource, KubeUpdate};
use limpet_control::translate::{DEFAULT_MAGLEV_MIN_SIZE, TranslateContext};
use limpet_dataplane::clock::ManualClock;
use limpet_dataplane::io::MemoryIo;
use limpet_dataplane::pipeline::{Worker, WorkerConfig};
use limpet_dataplane::snapshot::{Backend, Snapshot};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVICES: usize = 10_000;
const BIG_SERVICES: usize = 100;
const BIG_ENDPOINTS: usize = 250;
const ENDPOINTS: usize = 100_000;
const SLICE_MAX: usize = 100;
const NAMESPACE: &str = "bench";
const SERVER_ENV: &str = "LIMPET_BENCH_FAKE_API";

fn base() -> u32 {
    u32::from(Ipv4Addr::new(198, 18, 0, 0))
}

fn cluster_ip(i: usize) -> String {
    Ipv4Addr::from(base() + i as u32).to_string()
}

fn endpoint_ip(j: usize) -> String {
    Ipv4Addr::from(base() + 10_240 + j as u32).to_string()
}

/// Endpoints of service `i`: 250 for the first 100, then 7 or 8.
fn endpoint_counts() -> Vec<usize> {
    let small = SERVICES - BIG_SERVICES;
    let rest = ENDPOINTS - BIG_SERVICES * BIG_ENDPOINTS;
    (0..SERVICES)
        .map(|i| {
            if i < BIG_SERVICES {
                BIG_ENDPOINTS
            } else {
                let k = i - BIG_SERVICES;
                rest / small + usize::from(k < rest % small)
            }
        })
        .collect()
}

/// The slices of the cluster: (name, service, endpoint addresses).
fn slices() -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    let mut next = 0;
    for (i, n) in endpoint_counts().into_iter().enumerate() {
        let addrs: Vec<String> = (next..next + n).map(endpoint_ip).collect();
        next += n;
        for (k, chunk) in addrs.chunks(SLICE_MAX).enumerate() {
            out.push((format!("svc-{i}-{k}"), format!("svc-{i}"), chunk.to_vec()));
        }
    }
    assert_eq!(next, ENDPOINTS);
    out
}

fn slice_object(name: &str, svc: &str, addrs: &[String], not_ready: Option<usize>) -> Value {
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut s = slice(NAMESPACE, name, svc, ("http", 8080), &refs);
    if let Some(k) = not_ready {
        s["endpoints"][k]["conditions"] =
            json!({"ready": false, "serving": true, "terminating": true});
    }
    s
}

/// The child process: the API server, loaded, then changes on request.
/// Protocol: it prints its URL; each stdin line `flip N` flips the
/// readiness of one endpoint of slice N and prints `ok`.
fn serve() {
    let server = FakeApiServer::start();
    for i in 0..SERVICES {
        server.apply(service(
            NAMESPACE,
            &format!("svc-{i}"),
            &cluster_ip(i),
            &[("http", 80)],
            Some(10_800),
        ));
    }
    let slices = slices();
    for (name, svc, addrs) in &slices {
        server.apply(slice_object(name, svc, addrs, None));
    }
    let mut flipped = vec![false; slices.len()];
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", server.url()).unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let Some(n) = line.strip_prefix("flip ") else {
            break;
        };
        let n: usize = n.parse().unwrap();
        let (name, svc, addrs) = &slices[n];
        flipped[n] = !flipped[n];
        server.apply(slice_object(name, svc, addrs, flipped[n].then_some(0)));
        writeln!(out, "ok").unwrap();
        out.flush().unwrap();
    }
}

struct Api {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    url: String,
}

impl Api {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(SERVER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fake API server");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut url = String::new();
        stdout.read_line(&mut url).unwrap();
        Self {
            child,
            stdin,
            stdout,
            url: url.trim().to_owned(),
        }
    }

    fn flip(&mut self, slice: usize) {
        writeln!(self.stdin, "flip {slice}").unwrap();
        self.stdin.flush().unwrap();
        let mut ack = String::new();
        self.stdout.read_line(&mut ack).unwrap();
        assert_eq!(ack.trim(), "ok");
    }

    fn kubeconfig(&self) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("limpet-bench-{}.kubeconfig", std::process::id()));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What a snapshot holds, in bytes (tables, backends, frontends, names; not
/// the allocator's overhead or the frontend map).
fn snapshot_bytes(s: &Snapshot) -> (usize, usize) {
    let mut maglev = 0;
    let mut rest = 0;
    for p in s.ports() {
        maglev += p.maglev().entries().len() * 2;
        rest += std::mem::size_of_val(&**p)
            + p.spec.backends.len() * (std::mem::size_of::<Backend>() + 4)
            + p.spec.frontends.len() * 20
            + p.spec.name.len();
    }
    (maglev, rest)
}

/// The `pct`th percentile of sorted values (nearest rank, rounded down).
fn percentile(sorted: &[f64], pct: usize) -> f64 {
    sorted[(sorted.len() - 1) * pct / 100]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn recv(source: &KubeSource) -> KubeUpdate {
    source
        .updates
        .recv_timeout(Duration::from_mins(1))
        .expect("an update from the Kubernetes source")
}

fn main() {
    if std::env::var_os(SERVER_ENV).is_some() {
        serve();
        return;
    }
    let maglev_min = env_usize("LIMPET_BENCH_MAGLEV_MIN", DEFAULT_MAGLEV_MIN_SIZE);
    let changes = env_usize("LIMPET_BENCH_CHANGES", 200);
    let slice_count = slices().len();

    let load = Instant::now();
    let api = Api::start();
    let load_s = load.elapsed().as_secs_f64();
    let kubeconfig = api.kubeconfig();
    let (rss_before, _) = rss_kib();

    // (a) initial sync -> first snapshot.
    let ctx = TranslateContext {
        maglev_min_size: maglev_min,
        ..TranslateContext::default()
    };
    let start = Instant::now();
    let opts = KubeOptions::new(Some(kubeconfig.clone()), ctx);
    let source = KubeSource::spawn(opts.clone()).expect("kube source");
    let first = recv(&source);
    let synced = start.elapsed();
    let KubeUpdate::Synced(t) = first else {
        panic!("the first update is not Synced");
    };
    let (specs_n, backends_n) = (
        t.specs.len(),
        t.specs.iter().map(|s| s.backends.len()).sum::<usize>(),
    );
    assert_eq!(
        (specs_n, backends_n, t.errors.len()),
        (SERVICES, ENDPOINTS, 0)
    );
    let mut compiler = SnapshotCompiler::new();
    let compile_start = Instant::now();
    // At start-up limpet builds the tables on the cores no worker spins on;
    // this benchmark's worker is polled by this thread.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let (snapshot, _) = compiler.compile_on(t.specs, threads).expect("compile");
    let compiled = compile_start.elapsed();
    let total = start.elapsed();
    println!(
        "{}",
        json!({
            "figure": "initial_sync",
            "services": SERVICES, "endpoints": ENDPOINTS, "endpoint_slices": slice_count,
            "service_ports": specs_n, "maglev_min_size": maglev_min,
            "list_translate_ms": ms(synced), "compile_ms": ms(compiled), "compile_threads": threads,
            "total_ms": ms(total),
            "goal_ms": 1000,
            "api_server_load_s": load_s,
            "path": "fake API server (child process, HTTP) -> KubeSource (kube-rs watcher, pages of 500) -> translate -> SnapshotCompiler::compile_on (scoped threads)",
        })
    );

    // (c) memory, with the source's stores and the first snapshot live.
    let (rss_after, hwm) = rss_kib();
    let (maglev_bytes, other_bytes) = snapshot_bytes(&snapshot);
    let table_sizes: BTreeMap<usize, usize> =
        snapshot.ports().iter().fold(BTreeMap::new(), |mut m, p| {
            *m.entry(p.maglev().size()).or_insert(0) += 1;
            m
        });
    println!(
        "{}",
        json!({
            "figure": "memory",
            "rss_before_kib": rss_before, "rss_after_sync_kib": rss_after,
            "rss_delta_mib": (rss_after.saturating_sub(rss_before)) as f64 / 1024.0,
            "rss_peak_kib": hwm,
            "snapshot_maglev_mib": maglev_bytes as f64 / (1024.0 * 1024.0),
            "snapshot_other_mib": other_bytes as f64 / (1024.0 * 1024.0),
            "maglev_sizes": table_sizes.iter().map(|(k, v)| format!("{k}x{v}")).collect::<Vec<_>>(),
            "classic_65537_maglev_mib": (snapshot.ports().len() * 65537 * 2) as f64 / (1024.0 * 1024.0),
            "note": "RSS of limpet's side only (the API server is another process): kube stores, the last translation, the compiler cache and one snapshot",
        })
    );

    // What each change costs the source today, apart from the wire: a deep
    // copy of both stores and a translation of everything.
    translate_cost(maglev_min);

    // (b) one endpoint change -> snapshot on a worker.
    let mut bench = ChangeBench::new(api, snapshot, changes, slice_count);
    bench.measure(&source, &mut compiler);
    drop(source);
    let _ = std::fs::remove_file(kubeconfig);
}

/// Endpoint changes, each followed to a worker's snapshot.
struct ChangeBench {
    api: Api,
    worker: Worker<MemoryIo, ManualClock>,
    snap_tx: crossbeam_channel::Sender<Arc<Snapshot>>,
    retired_rx: crossbeam_channel::Receiver<Arc<Snapshot>>,
    changes: usize,
    slice_count: usize,
}

impl ChangeBench {
    fn new(api: Api, snapshot: Arc<Snapshot>, changes: usize, slice_count: usize) -> Self {
        let (snap_tx, snap_rx) = crossbeam_channel::bounded::<Arc<Snapshot>>(16);
        let (retired_tx, retired_rx) = crossbeam_channel::bounded::<Arc<Snapshot>>(64);
        let worker = Worker::new(
            MemoryIo::new(64),
            ManualClock::new(1000),
            WorkerConfig {
                flow_capacity: 1024,
                affinity_capacity: 1024,
                flow_capacity_v6: Some(1024),
                affinity_capacity_v6: Some(1024),
                ..WorkerConfig::default()
            },
            snapshot,
        )
        .expect("worker")
        .with_updates(snap_rx, retired_tx);
        Self {
            api,
            worker,
            snap_tx,
            retired_rx,
            changes,
            slice_count,
        }
    }

    fn measure(&mut self, source: &KubeSource, compiler: &mut SnapshotCompiler) {
        let changes = self.changes;
        let mut to_update = Vec::with_capacity(changes);
        let mut to_compiled = Vec::with_capacity(changes);
        let mut to_worker = Vec::with_capacity(changes);
        let mut compile_only = Vec::with_capacity(changes);
        for c in 0..changes {
            // Spread over small and big services.
            let n = (c * 7919) % self.slice_count;
            let t0 = Instant::now();
            self.api.flip(n);
            let update = recv(source);
            let t1 = Instant::now();
            let KubeUpdate::Changed(delta) = update else {
                panic!("not a change: {update:?}");
            };
            assert_eq!(delta.specs.len(), 1, "one service port changed");
            let (snap, stats) = compiler
                .update(delta.specs, &delta.removed)
                .expect("compile");
            assert_eq!(stats.compiled, 1, "one service port changed");
            let t2 = Instant::now();
            let generation = snap.generation();
            self.snap_tx.send(snap).unwrap();
            self.worker.poll();
            assert_eq!(self.worker.snapshot().generation(), generation);
            let t3 = Instant::now();
            while self.retired_rx.try_recv().is_ok() {}
            to_update.push(ms(t1 - t0));
            to_compiled.push(ms(t2 - t0));
            to_worker.push(ms(t3 - t0));
            compile_only.push(ms(t2 - t1));
        }
        for v in [
            &mut to_update,
            &mut to_compiled,
            &mut to_worker,
            &mut compile_only,
        ] {
            v.sort_by(f64::total_cmp);
        }
        let pp = |v: &[f64]| json!({"p50": percentile(v, 50), "p90": percentile(v, 90), "p99": percentile(v, 99), "max": v[v.len() - 1]});
        println!(
            "{}",
            json!({
                "figure": "endpoint_change", "changes": changes,
                "to_kube_update_ms": pp(&to_update),
                "to_snapshot_compiled_ms": pp(&to_compiled),
                "to_worker_swapped_ms": pp(&to_worker),
                "compile_only_ms": pp(&compile_only),
                "goal_p99_ms": 5,
                "path": "flip one endpoint's ready on the fake API server (ack over a pipe) -> watch event -> KubeSource (leading-edge, re-translate the changed service, delta of its changed service ports) -> SnapshotCompiler::update (1 port compiled, the last snapshot's maps patched) -> crossbeam channel -> Worker::poll on MemoryIo",
            })
        );
    }
}

/// The source's work per change, measured alone: cloning every object out
/// of the stores (`KubeSource` does, for each translation) and translating
/// the whole cluster.
fn translate_cost(maglev_min: usize) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use limpet_control::ids::IdAllocator;
    use limpet_control::manifest::Sourced;
    use limpet_control::translate::translate;

    let services: Vec<Arc<Service>> = (0..SERVICES)
        .map(|i| {
            let v = service(
                NAMESPACE,
                &format!("svc-{i}"),
                &cluster_ip(i),
                &[("http", 80)],
                Some(10_800),
            );
            Arc::new(serde_json::from_value(v).unwrap())
        })
        .collect();
    let slices: Vec<Arc<EndpointSlice>> = slices()
        .iter()
        .map(|(name, svc, addrs)| {
            Arc::new(serde_json::from_value(slice_object(name, svc, addrs, None)).unwrap())
        })
        .collect();
    let ctx = TranslateContext {
        maglev_min_size: maglev_min,
        ..TranslateContext::default()
    };
    let mut ids = IdAllocator::new();
    let mut clone_ms = Vec::new();
    let mut translate_ms = Vec::new();
    let mut compare_ms = Vec::new();
    let mut last = None;
    for _ in 0..10 {
        let t0 = Instant::now();
        let svc: Vec<Sourced<Service>> = services
            .iter()
            .map(|o| Sourced::unfiled((**o).clone()))
            .collect();
        let sl: Vec<Sourced<EndpointSlice>> = slices
            .iter()
            .map(|o| Sourced::unfiled((**o).clone()))
            .collect();
        let t1 = Instant::now();
        let t = translate(&svc, &sl, &ctx, &mut ids);
        let t2 = Instant::now();
        let same = last.as_ref() == Some(&t);
        let kept = t.clone();
        let t3 = Instant::now();
        assert!(same || last.is_none());
        last = Some(kept);
        clone_ms.push(ms(t1 - t0));
        translate_ms.push(ms(t2 - t1));
        compare_ms.push(ms(t3 - t2));
    }
    for v in [&mut clone_ms, &mut translate_ms, &mut compare_ms] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "{}",
        json!({
            "figure": "source_work_per_change", "runs": 10,
            "clone_stores_ms_p50": percentile(&clone_ms, 50),
            "translate_all_ms_p50": percentile(&translate_ms, 50),
            "compare_and_keep_ms_p50": percentile(&compare_ms, 50),
            "note": "what KubeSource did for every coalesced change before per-service caching (translate() of the whole cluster, kept as the manifest path's cost): unfiled() deep-copies every object of both stores, translate() redoes the whole cluster, the result is compared to and cloned into the last one",
        })
    );
}
