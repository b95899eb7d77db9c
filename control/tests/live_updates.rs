//! Zero-drop live updates: two workers (the real pipeline, `MemoryIo`)
//! forward TCP at a steady rate while 1000 changes (endpoints added and
//! removed, readiness flipped, whole services created and deleted) reach
//! them through the Kubernetes path (fake API server -> `KubeSource` ->
//! `SnapshotCompiler::update`) and through the manifest path (a watched
//! directory -> `ConfigSource` -> `SnapshotCompiler::compile`). Every
//! packet is checked against the snapshot the worker processed it with
//! (see `live/mod.rs`): nothing dropped, no new connection sent to a backend
//! that snapshot does not have as usable, no established connection moved,
//! every reply translated back; and every change reaches every worker.
//!
//! How long a change takes to reach every worker is measured, not asserted
//! here: `cargo bench -p limpet-bench --bench live` has the figures at
//! 10,000 services. `LIMPET_LIVE_CHANGES` sets the number of changes.

mod fake_apiserver;
mod live;

use fake_apiserver::FakeApiServer;
use limpet_control::compile::SnapshotCompiler;
use limpet_control::config::ConfigSource;
use limpet_control::kube_source::{BackoffOptions, KubeOptions, KubeSource, KubeUpdate};
use limpet_control::translate::TranslateContext;
use limpet_dataplane::snapshot::ForwardMode;
use live::churn::{self, Cluster, Kind};
use live::control::{self, Applied};
use live::{Forwarders, Traffic, WorkerLog};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const WORKERS: usize = 2;
const STABLE_SERVICES: usize = 24;

fn changes() -> usize {
    std::env::var("LIMPET_LIVE_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// What every live run must show, whichever path the changes took.
fn check(path: &str, applied: &[Applied], logs: &[WorkerLog]) {
    live::assert_clean(logs);
    let mut kinds: BTreeMap<Kind, usize> = BTreeMap::new();
    for a in applied {
        *kinds.entry(a.kind).or_default() += 1;
    }
    for kind in [
        Kind::Add,
        Kind::Remove,
        Kind::Flip,
        Kind::Create,
        Kind::Delete,
    ] {
        assert!(
            kinds.get(&kind).copied().unwrap_or(0) >= applied.len() / 100,
            "too few {kind:?} changes: {kinds:?}"
        );
    }
    let visible = control::visible_ms(applied, logs);
    let missing = visible.iter().filter(|v| v.is_none()).count();
    assert_eq!(missing, 0, "{missing} changes never reached every worker");
    let mut ms: Vec<f64> = visible.into_iter().flatten().collect();
    let t = live::total(logs);
    // For the log only: timing figures come from the benchmark.
    println!(
        "{path}: {} changes {kinds:?}; {} packets forwarded ({} new connections, {} replies, {} segments), {} SYNs to service ports already gone, {} to service ports without endpoints yet or any more; change -> every worker p50 {:.2} ms, p99 {:.2} ms (debug build)",
        applied.len(),
        t.forwarded,
        t.new_connections,
        t.replies,
        t.segments,
        t.absent,
        t.empty,
        control::percentile(&mut ms, 50),
        control::percentile(&mut ms, 99),
    );
}

#[test]
fn kubernetes_changes_under_steady_forwarding_drop_and_misroute_nothing() {
    let server = FakeApiServer::start();
    let mut cluster = Cluster::new(STABLE_SERVICES, 3, 0x11fe);
    churn::load_api(&server, &cluster);
    let dir = tempfile::tempdir().unwrap();
    let opts = KubeOptions {
        backoff: BackoffOptions {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            ..BackoffOptions::default()
        },
        ..KubeOptions::new(
            Some(server.write_kubeconfig(dir.path())),
            TranslateContext::default(),
        )
    };
    let source = Arc::new(KubeSource::spawn(opts).expect("kube source"));
    let Ok(KubeUpdate::Synced(t)) = source.updates.recv_timeout(Duration::from_secs(20)) else {
        panic!("no first state: {:?}", source.last_error());
    };
    let mut compiler = SnapshotCompiler::new();
    let (first, _) = compiler.compile(t.specs).expect("compile");
    assert!(cluster.reflected_in(&first));

    let workers = Forwarders::start(WORKERS, &first, &Traffic::default());
    workers.wait_forwarded(2000, Duration::from_secs(30));
    let ctl = control::kube(Arc::clone(&source), compiler, workers.publisher());
    let applied = control::drive(
        changes(),
        &mut cluster,
        &ctl.published,
        Duration::from_millis(1),
        |c| churn::apply_api(&server, c),
    );
    let last = applied.last().expect("changes").generation;
    workers.wait_all(last, Duration::from_secs(10));
    workers.wait_forwarded(2000, Duration::from_secs(30));
    let compiler = ctl.stop();
    assert!(
        cluster.reflected_in(compiler.last()),
        "the last snapshot is not the cluster's state"
    );
    let logs = workers.stop();
    check("kubernetes", &applied, &logs);
}

#[test]
fn manifest_changes_under_steady_forwarding_drop_and_misroute_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(STABLE_SERVICES, 3, 0x3a1f);
    churn::load_dir(dir.path(), &cluster);
    let mut source = ConfigSource::new(
        dir.path().to_owned(),
        ForwardMode::Nat,
        "live-node".into(),
        Vec::new(),
    );
    let mut compiler = SnapshotCompiler::new();
    let (first, _) = compiler
        .compile(source.load().expect("the manifests load"))
        .expect("compile");
    assert!(cluster.reflected_in(&first));

    let workers = Forwarders::start(WORKERS, &first, &Traffic::default());
    workers.wait_forwarded(2000, Duration::from_secs(30));
    let ctl = control::manifests(source, compiler, workers.publisher());
    let path = dir.path().to_owned();
    let applied = control::drive(
        changes(),
        &mut cluster,
        &ctl.published,
        Duration::from_millis(1),
        |c| churn::apply_dir(&path, c),
    );
    let last = applied.last().expect("changes").generation;
    workers.wait_all(last, Duration::from_secs(10));
    workers.wait_forwarded(2000, Duration::from_secs(30));
    let refused = ctl.stop();
    assert!(refused.is_empty(), "loads refused: {refused:#?}");
    let logs = workers.stop();
    check("manifests", &applied, &logs);
    // One file holds a service and its slice: no snapshot has one alone.
    assert_eq!(live::total(&logs).empty, 0, "a service without endpoints");
}
