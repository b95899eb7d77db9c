//! Live updates under steady forwarding, at cluster scale: how long a
//! change takes to reach every worker while the workers forward, and that
//! nothing is dropped or misrouted meanwhile. The same harness as the
//! control tests' `live_updates.rs` (workers on `MemoryIo` on their own
//! threads, every packet checked against the snapshot that processed it),
//! with 10,000 `ClientIP` services of 10 endpoints each (100,000
//! endpoints, one `EndpointSlice` each).
//!
//! Figures, one JSON line each (not asserted):
//! - `live_update_kube`: `LIMPET_BENCH_CHANGES` (1000) changes (endpoints
//!   added and removed, readiness flipped, services created and deleted)
//!   written to the fake API server one after another, each timed until
//!   every worker runs a snapshot that has it (goal p99 <= 5 ms), with the
//!   packets forwarded meanwhile and the checks' counts (all 0 expected);
//! - `live_update_manifests`: the same through a manifest directory of one
//!   file per service (`LIMPET_BENCH_MANIFEST_CHANGES`, 10; each is a full
//!   reload of the directory, as `limpet run` does, without its 200 ms
//!   settle).
//!
//! `cargo bench -p limpet-bench --bench live`; `LIMPET_BENCH_SERVICES`
//! (10000), `LIMPET_BENCH_WORKERS` (2), `LIMPET_BENCH_IDLE_US` (50: what a
//! worker thread sleeps between polls when no burst is due; 0 spins, which
//! needs a core per worker besides the control thread's).

#[path = "../../control/tests/fake_apiserver/mod.rs"]
mod fake_apiserver;
#[path = "../../control/tests/live/mod.rs"]
mod live;

use fake_apiserver::FakeApiServer;
use limpet_control::compile::SnapshotCompiler;
use limpet_control::config::ConfigSource;
use limpet_control::kube_source::{KubeOptions, KubeSource, KubeUpdate};
use limpet_control::translate::TranslateContext;
use limpet_dataplane::snapshot::{ForwardMode, Snapshot};
use live::churn::{self, Change, Cluster};
use live::control::{self, Applied};
use live::{Forwarders, Traffic, WorkerLog};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENDPOINTS_PER_SERVICE: usize = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn traffic() -> Traffic {
    let idle = env_usize("LIMPET_BENCH_IDLE_US", 50);
    Traffic {
        burst: 32,
        interval: Duration::from_micros(500),
        connections: 256,
        segments: 8,
        idle: (idle > 0).then(|| Duration::from_micros(idle as u64)),
        ..Traffic::default()
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn summary(v: &mut [f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": control::percentile(v, 50),
        "p90": control::percentile(v, 90),
        "p99": control::percentile(v, 99),
        "max": control::percentile(v, 100),
    })
}

/// The figure of one run: latencies to every worker, by kind and overall.
fn report(
    figure: &str,
    path: &str,
    services: usize,
    applied: &[Applied],
    logs: &[WorkerLog],
    forwarding: Duration,
) {
    let visible = control::visible_ms(applied, logs);
    let never = visible.iter().filter(|v| v.is_none()).count();
    let mut all: Vec<f64> = visible.iter().flatten().copied().collect();
    let mut by_kind: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (a, v) in applied.iter().zip(&visible) {
        if let Some(v) = v {
            by_kind.entry(format!("{:?}", a.kind)).or_default().push(*v);
        }
    }
    let by_kind: BTreeMap<String, Value> = by_kind
        .into_iter()
        .map(|(k, mut v)| (k, json!({"n": v.len(), "ms": summary(&mut v)})))
        .collect();
    let t = live::total(logs);
    println!(
        "{}",
        json!({
            "figure": figure,
            "services": services,
            "endpoints": services * ENDPOINTS_PER_SERVICE,
            "workers": logs.len(),
            "changes": applied.len(),
            "to_every_worker_ms": summary(&mut all),
            "by_kind": by_kind,
            "never_reached_every_worker": never,
            "goal_p99_ms": 5,
            "packets_injected": t.injected,
            "packets_forwarded": t.forwarded,
            "forwarded_pps": t.forwarded as f64 / t.elapsed.as_secs_f64(),
            "changes_s": forwarding.as_secs_f64(),
            "new_connections": t.new_connections,
            "replies": t.replies,
            "segments": t.segments,
            "syns_to_ports_already_gone": t.absent,
            "dropped": t.violations.dropped + t.stats.drops.iter().sum::<u64>(),
            "unserved": t.violations.unserved,
            "new_connection_to_unusable_backend": t.violations.unusable,
            "established_moved": t.violations.moved,
            "replies_misrouted": t.violations.misrouted_reply,
            "first_failures": t.details.iter().take(5).collect::<Vec<_>>(),
            "loadavg": loadavg(),
            "path": path,
        })
    );
}

fn kube(services: usize, changes: usize, workers: usize) {
    let server = FakeApiServer::start();
    let mut cluster = Cluster::new(services, ENDPOINTS_PER_SERVICE, 0x1eaf);
    churn::load_api(&server, &cluster);
    let dir = std::env::temp_dir().join(format!("limpet-bench-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = Arc::new(
        KubeSource::spawn(KubeOptions::new(
            Some(server.write_kubeconfig(&dir)),
            TranslateContext::default(),
        ))
        .expect("kube source"),
    );
    let Ok(KubeUpdate::Synced(t)) = source.updates.recv_timeout(Duration::from_mins(2)) else {
        panic!("no first state: {:?}", source.last_error());
    };
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut compiler = SnapshotCompiler::new();
    let (first, _) = compiler.compile_on(t.specs, threads).expect("compile");
    assert!(cluster.reflected_in(&first));
    let fw = Forwarders::start(workers, &first, &traffic());
    fw.wait_forwarded(10_000, Duration::from_mins(1));
    let ctl = control::kube(Arc::clone(&source), compiler, fw.publisher());
    let started = Instant::now();
    let applied = control::drive(
        changes,
        &mut cluster,
        &ctl.published,
        Duration::from_millis(2),
        |c: &Change| {
            churn::apply_api(&server, c);
        },
    );
    let last = applied.last().expect("changes").generation;
    fw.wait_all(last, Duration::from_secs(10));
    let forwarding = started.elapsed();
    let compiler = ctl.stop();
    assert!(cluster.reflected_in(compiler.last()));
    let logs = fw.stop();
    report(
        "live_update_kube",
        "write on the fake API server (in process, HTTP watch) -> KubeSource (kube-rs watcher, leading-edge coalescing, per-service translation) -> SnapshotCompiler::update -> bounded channel per worker -> Worker::poll on MemoryIo (forwarding TCP all along)",
        services,
        &applied,
        &logs,
        forwarding,
    );
    drop(source);
    let _ = std::fs::remove_dir_all(dir);
}

fn manifests(services: usize, changes: usize, workers: usize) {
    let dir = std::env::temp_dir().join(format!(
        "limpet-bench-live-manifests-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cluster = Cluster::new(services, ENDPOINTS_PER_SERVICE, 0x3a1f);
    churn::load_dir(&dir, &cluster);
    let mut source = ConfigSource::new(dir.clone(), ForwardMode::Nat, "bench".into(), Vec::new());
    let mut compiler = SnapshotCompiler::new();
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let (first, _): (Arc<Snapshot>, _) = compiler
        .compile_on(source.load().expect("the manifests load"), threads)
        .expect("compile");
    assert!(cluster.reflected_in(&first));
    let fw = Forwarders::start(workers, &first, &traffic());
    fw.wait_forwarded(10_000, Duration::from_mins(1));
    let ctl = control::manifests(source, compiler, fw.publisher());
    let started = Instant::now();
    let applied = control::drive(
        changes,
        &mut cluster,
        &ctl.published,
        Duration::from_millis(2),
        |c: &Change| {
            churn::apply_dir(&dir, c);
        },
    );
    let last = applied.last().expect("changes").generation;
    fw.wait_all(last, Duration::from_secs(10));
    let forwarding = started.elapsed();
    let refused = ctl.stop();
    assert!(refused.is_empty(), "{refused:?}");
    let logs = fw.stop();
    report(
        "live_update_manifests",
        "manifest file renamed into the watched directory -> notify -> ConfigSource::load of the whole directory -> SnapshotCompiler::compile (unchanged ports reused) -> bounded channel per worker -> Worker::poll on MemoryIo (no 200 ms settle: limpet run adds it)",
        services,
        &applied,
        &logs,
        forwarding,
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let services = env_usize("LIMPET_BENCH_SERVICES", 10_000);
    let changes = env_usize("LIMPET_BENCH_CHANGES", 1000);
    let workers = env_usize("LIMPET_BENCH_WORKERS", 2);
    if changes > 0 {
        kube(services, changes, workers);
    }
    let manifest_changes = env_usize("LIMPET_BENCH_MANIFEST_CHANGES", 10);
    if manifest_changes > 0 {
        manifests(services, manifest_changes, workers);
    }
}
