//! Manifest-directory figures at cluster scale, through the path a reload
//! takes: files -> `manifest::load_path` (YAML) -> `translate` ->
//! `SnapshotCompiler` (one thread, as a reload compiles on the control
//! thread).
//!
//! The cluster: 10,000 `ClientIP` services and 100,000 ready endpoints, as
//! `kubectl get svc,endpointslices -A -o yaml` prints them (every field the
//! API server fills in; control/tests/export), written as one `kind: List`
//! file and as a directory of 100 such files.
//!
//! Figures, one JSON line each (not asserted; goal: a reload publishes
//! within 1 s):
//! - `cold`: a first load, split into parse, translate and compile
//!   (every Maglev table built);
//! - `reload`: [`ConfigSource::load`] plus compile after one endpoint's
//!   readiness flipped in one file (the rest unchanged), the path a file
//!   change takes in `limpet run`; median and worst of `RUNS`;
//! - `reload` of the same export as one `kubectl get -o json` file, which
//!   `serde_json` reads instead of the YAML parser.
//!
//! `cargo bench -p limpet-bench --bench manifest`; `LIMPET_BENCH_SERVICES`
//! and `LIMPET_BENCH_ENDPOINTS` change the cluster, `LIMPET_BENCH_RUNS` the
//! number of reloads.

#[path = "../../control/tests/export/mod.rs"]
mod export;

use export::Export;
use limpet_control::compile::SnapshotCompiler;
use limpet_control::config::ConfigSource;
use limpet_control::ids::IdAllocator;
use limpet_control::manifest::load_path;
use limpet_control::translate::TranslateContext;
use limpet_dataplane::snapshot::ForwardMode;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn main() {
    let services = env_usize("LIMPET_BENCH_SERVICES", 10_000);
    let endpoints = env_usize("LIMPET_BENCH_ENDPOINTS", 100_000);
    let runs = env_usize("LIMPET_BENCH_RUNS", 5);
    let mut cluster = Export::uniform(services, endpoints / services);
    for (files, layout) in [(1, "one kind: List file"), (100, "100 kind: List files")] {
        let dir = std::env::temp_dir().join(format!(
            "limpet-bench-manifest-{}-{files}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        cluster.not_ready.clear();
        cluster.write_dir(&dir, files);
        let bytes = dir_bytes(&dir);

        // Cold: every piece on its own.
        let t0 = Instant::now();
        let manifests = match load_path(&dir) {
            Ok(m) => m,
            Err(e) => {
                println!(
                    "{}",
                    json!({"figure": "cold", "layout": layout, "services": services,
                           "endpoints": cluster.endpoints(), "refused": e.to_string()})
                );
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
        };
        let parsed = t0.elapsed();
        let t1 = Instant::now();
        let t = manifests.translate(&TranslateContext::default(), &mut IdAllocator::new());
        let translated = t1.elapsed();
        assert!(t.errors.is_empty(), "{:?}", t.errors.first());
        let backends: usize = t.specs.iter().map(|s| s.backends.len()).sum();
        assert_eq!((t.specs.len(), backends), (services, cluster.endpoints()));
        let t2 = Instant::now();
        let (snapshot, _) = SnapshotCompiler::new().compile(t.specs).unwrap();
        let compiled = t2.elapsed();
        println!(
            "{}",
            json!({
                "figure": "cold", "layout": layout, "services": services,
                "endpoints": cluster.endpoints(), "bytes": bytes,
                "parse_ms": ms(parsed), "translate_ms": ms(translated),
                "compile_ms": ms(compiled), "total_ms": ms(t0.elapsed()),
                "service_ports": snapshot.ports().len(),
            })
        );
        drop((manifests, snapshot));

        // Reloads as `limpet run` does them.
        let mut source = ConfigSource::new(dir.clone(), ForwardMode::Nat, "node-a".into(), vec![]);
        let mut compiler = SnapshotCompiler::new();
        compiler.compile(source.load().unwrap()).unwrap();
        let mut times = Vec::with_capacity(runs);
        let mut compiled_ports = 0;
        for r in 0..runs {
            // Flip one endpoint of service r * 7919 and rewrite its file.
            let svc = (r * 7919) % services;
            let per = endpoints / services;
            cluster.not_ready = vec![svc * per];
            let range_of = |f: usize| services * f / files..services * (f + 1) / files;
            let f = (0..files).find(|&f| range_of(f).contains(&svc)).unwrap();
            let range = range_of(f);
            std::fs::write(
                dir.join(format!("export-{f:03}.yaml")),
                cluster.list_of(range),
            )
            .unwrap();
            let t0 = Instant::now();
            let specs = source.load().unwrap();
            let (_, stats) = compiler.compile(specs).unwrap();
            times.push(t0.elapsed());
            compiled_ports += stats.compiled;
        }
        times.sort();
        println!(
            "{}",
            json!({
                "figure": "reload", "layout": layout, "services": services,
                "endpoints": cluster.endpoints(), "runs": runs,
                "p50_ms": ms(times[times.len() / 2]), "max_ms": ms(times[times.len() - 1]),
                "compiled_per_reload": compiled_ports as f64 / runs as f64,
                "goal_ms": 1000,
                "path": "ConfigSource::load (read, parse, translate) -> SnapshotCompiler::compile (1 thread)",
            })
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    json_export(&mut cluster, services, runs);
}

/// The same cluster as one `kubectl get -o json` file: its reload, one
/// endpoint's readiness flipped each run as above.
fn json_export(cluster: &mut Export, services: usize, runs: usize) {
    cluster.not_ready.clear();
    let m = limpet_control::manifest::load_str(&cluster.list(), None).unwrap();
    let mut items: Vec<serde_json::Value> = m
        .services
        .iter()
        .map(|s| serde_json::to_value(&s.object).unwrap())
        .collect();
    let slice_at: std::collections::HashMap<String, usize> = m
        .slices
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let labels = s.object.metadata.labels.as_ref().unwrap();
            (labels["kubernetes.io/service-name"].clone(), services + i)
        })
        .collect();
    items.extend(
        m.slices
            .iter()
            .map(|s| serde_json::to_value(&s.object).unwrap()),
    );
    let names: Vec<String> = m
        .services
        .iter()
        .map(|s| s.object.metadata.name.clone().unwrap())
        .collect();
    drop(m);
    let mut list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let dir =
        std::env::temp_dir().join(format!("limpet-bench-manifest-{}-json", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("export.json");
    std::fs::write(&file, serde_json::to_string_pretty(&list).unwrap()).unwrap();
    let bytes = dir_bytes(&dir);
    let mut source = ConfigSource::new(dir.clone(), ForwardMode::Nat, "node-a".into(), vec![]);
    let mut compiler = SnapshotCompiler::new();
    let t0 = Instant::now();
    compiler.compile(source.load().unwrap()).unwrap();
    let cold = t0.elapsed();
    let mut times = Vec::with_capacity(runs);
    let mut flipped: Option<usize> = None;
    for r in 0..runs {
        let ready = |list: &mut serde_json::Value, at: usize, ready: bool| {
            list["items"][at]["endpoints"][0]["conditions"]["ready"] = json!(ready);
        };
        if let Some(at) = flipped {
            ready(&mut list, at, true);
        }
        let at = slice_at[&names[(r * 7919) % services]];
        ready(&mut list, at, false);
        flipped = Some(at);
        std::fs::write(&file, serde_json::to_string_pretty(&list).unwrap()).unwrap();
        let t0 = Instant::now();
        let specs = source.load().unwrap();
        compiler.compile(specs).unwrap();
        times.push(t0.elapsed());
    }
    times.sort();
    println!(
        "{}",
        json!({
            "figure": "reload", "layout": "one kubectl -o json List file", "services": services,
            "endpoints": cluster.endpoints(), "bytes": bytes, "runs": runs,
            "cold_ms": ms(cold),
            "p50_ms": ms(times[times.len() / 2]), "max_ms": ms(times[times.len() - 1]),
            "goal_ms": 1000,
            "path": "ConfigSource::load (read, serde_json, translate) -> SnapshotCompiler::compile (1 thread)",
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
}
