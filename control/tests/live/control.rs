//! The control side of a live run: a source's updates compiled and
//! published to the workers as `limpet run`'s control loop does
//! (`SnapshotCompiler::update` for a Kubernetes delta, a full compile with
//! unchanged ports reused for a manifest reload), and a driver applying
//! changes one after another, timing each until every worker runs a
//! snapshot that has it.

use super::churn::{Change, Cluster, Kind};
use super::{Publisher, WorkerLog};
use limpet_control::compile::SnapshotCompiler;
use limpet_control::config::ConfigSource;
use limpet_control::kube_source::{KubeSource, KubeUpdate};
use limpet_dataplane::snapshot::Snapshot;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A control thread, stopped when dropped.
pub struct Control<T> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<T>>,
    /// Every snapshot published, in order.
    pub published: crossbeam_channel::Receiver<Arc<Snapshot>>,
}

impl<T> Control<T> {
    /// Stops the thread; what it owned.
    pub fn stop(mut self) -> T {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the control thread panicked")
    }
}

impl<T> Drop for Control<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Publishes every [`KubeUpdate::Changed`] of `source` (already synced,
/// its first state compiled by `compiler`).
pub fn kube(
    source: Arc<KubeSource>,
    mut compiler: SnapshotCompiler,
    publisher: Publisher,
) -> Control<SnapshotCompiler> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, published) = crossbeam_channel::unbounded();
    let thread_stop = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("live-control".into())
        .spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                let Ok(update) = source.updates.recv_timeout(Duration::from_millis(20)) else {
                    continue;
                };
                let (snapshot, _) = match update {
                    KubeUpdate::Synced(t) => compiler.compile(t.specs),
                    KubeUpdate::Changed(d) => compiler.update(d.specs, &d.removed),
                }
                .expect("compile");
                publisher.publish(&snapshot);
                let _ = tx.send(snapshot);
            }
            compiler
        })
        .expect("control thread");
    Control {
        stop,
        thread: Some(thread),
        published,
    }
}

/// Reloads `source`'s directory on every change notification (those that
/// have already arrived taken together) and publishes the result; the
/// thread returns the errors of loads it refused.
pub fn manifests(
    mut source: ConfigSource,
    mut compiler: SnapshotCompiler,
    publisher: Publisher,
) -> Control<Vec<String>> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, published) = crossbeam_channel::unbounded();
    let thread_stop = Arc::clone(&stop);
    let (watcher, events) = source.watch().expect("watch the manifest directory");
    let thread = std::thread::Builder::new()
        .name("live-control".into())
        .spawn(move || {
            let _watcher = watcher;
            let mut refused = Vec::new();
            while !thread_stop.load(Ordering::Relaxed) {
                if events.recv_timeout(Duration::from_millis(20)).is_err() {
                    continue;
                }
                while events.try_recv().is_ok() {}
                // As `limpet run` does, a refused load keeps the last
                // snapshot serving; here it is also counted, as every
                // write is atomic and none should be refused.
                let specs = match source.load() {
                    Ok(specs) => specs,
                    Err(e) => {
                        refused.push(e.to_string());
                        continue;
                    }
                };
                let (snapshot, _) = compiler.compile(specs).expect("compile");
                publisher.publish(&snapshot);
                let _ = tx.send(snapshot);
            }
            refused
        })
        .expect("control thread");
    Control {
        stop,
        thread: Some(thread),
        published,
    }
}

/// One change, applied and followed to the snapshot that has it.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub kind: Kind,
    pub at: Instant,
    /// The first generation that has it.
    pub generation: u64,
}

/// Applies `n` changes of `cluster` one after another with `apply`, each
/// once the last is in a published snapshot, `gap` apart.
pub fn drive(
    n: usize,
    cluster: &mut Cluster,
    published: &crossbeam_channel::Receiver<Arc<Snapshot>>,
    gap: Duration,
    mut apply: impl FnMut(&Change),
) -> Vec<Applied> {
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        while published.try_recv().is_ok() {}
        let change = cluster.next_change();
        let at = Instant::now();
        apply(&change);
        let deadline = at + Duration::from_secs(20);
        let generation = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let snapshot = published
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("change {k} ({change:?}) not published in 20 s"));
            if change.reflected_in(&snapshot) {
                break snapshot.generation();
            }
        };
        out.push(Applied {
            kind: change.kind,
            at,
            generation,
        });
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    out
}

/// Each change's time until every worker ran a snapshot that has it, in
/// milliseconds; `None` where a worker never did.
pub fn visible_ms(applied: &[Applied], logs: &[WorkerLog]) -> Vec<Option<f64>> {
    applied
        .iter()
        .map(|a| {
            logs.iter()
                .map(|l| l.adopted_at(a.generation))
                .try_fold(a.at, |latest, t| t.map(|t| latest.max(t)))
                .map(|t| (t - a.at).as_secs_f64() * 1e3)
        })
        .collect()
}

/// The `pct`th percentile of `v` (nearest rank, rounded down).
pub fn percentile(v: &mut [f64], pct: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) * pct / 100]
}
