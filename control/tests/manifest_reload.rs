//! The manifest watcher under churn, with real files and the real watcher:
//! a directory rewritten every 50 ms for several seconds is reloaded while
//! the changes keep coming (no more than `debounce::MAX_DELAY` after a
//! change, give or take a loaded machine), and the last change is the one
//! served once it goes quiet.

use crossbeam_channel::{select, tick};
use limpet_control::compile::SnapshotCompiler;
use limpet_control::config::ConfigSource;
use limpet_control::debounce::{Debounce, MAX_DELAY};
use limpet_dataplane::snapshot::ForwardMode;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One service whose endpoint count is `n` (1..=8).
fn manifest(n: usize) -> String {
    let mut eps = String::new();
    for i in 1..=n {
        let _ = writeln!(eps, "- addresses: [203.0.113.{i}]");
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: churn, namespace: default}}\n\
         spec:\n  clusterIP: 192.0.2.10\n  ports: [{{port: 80, protocol: TCP}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: churn-1\n  namespace: default\n  \
         labels: {{kubernetes.io/service-name: churn}}\n\
         addressType: IPv4\nports: [{{name: \"\", port: 8080, protocol: TCP}}]\nendpoints:\n{eps}"
    )
}

/// Writes as deploy tools do: a temporary file renamed over the old one.
fn write_atomically(dir: &Path, text: &str) {
    let tmp = dir.join(".churn.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("churn.yaml")).unwrap();
}

#[test]
fn a_directory_that_never_goes_quiet_is_reloaded_while_it_churns() {
    let dir = tempfile::tempdir().unwrap();
    write_atomically(dir.path(), &manifest(1));
    let mut source = ConfigSource::new(
        dir.path().to_owned(),
        ForwardMode::Nat,
        "node-a".into(),
        vec![],
    );
    let mut compiler = SnapshotCompiler::new();
    compiler.compile(source.load().unwrap()).unwrap();
    let (_watcher, events) = source.watch().unwrap();

    let churning = Arc::new(AtomicBool::new(true));
    let last_written = Arc::new(AtomicUsize::new(1));
    let writer = {
        let (dir, churning, last_written) = (
            dir.path().to_owned(),
            Arc::clone(&churning),
            Arc::clone(&last_written),
        );
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut k = 1;
            while start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
                k = k % 8 + 1;
                write_atomically(&dir, &manifest(k));
                last_written.store(k, Ordering::SeqCst);
            }
            churning.store(false, Ordering::SeqCst);
        })
    };

    // What `limpet run`'s control loop does with the same pieces.
    let mut debounce = Debounce::default();
    let ticker = tick(Duration::from_millis(100));
    let started = Instant::now();
    let mut published = vec![started];
    let mut during_churn = 0;
    let mut quiet_since: Option<Instant> = None;
    loop {
        select! {
            recv(events) -> _ => debounce.event(Instant::now()),
            recv(ticker) -> _ => {}
        }
        if debounce.take_due(Instant::now()) {
            let specs = source.load().unwrap_or_else(|e| panic!("{e}"));
            compiler.compile(specs).unwrap();
            published.push(Instant::now());
            if churning.load(Ordering::SeqCst) {
                during_churn += 1;
            }
        }
        if !churning.load(Ordering::SeqCst) {
            let quiet = *quiet_since.get_or_insert_with(Instant::now);
            if quiet.elapsed() > Duration::from_secs(2) && !debounce.is_pending() {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_mins(1), "never settled");
    }
    writer.join().unwrap();

    assert!(
        during_churn >= 3,
        "{during_churn} reloads in 5 s of changes every 50 ms"
    );
    let worst = published
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        worst <= MAX_DELAY + Duration::from_secs(1),
        "{worst:?} between two reloads while changes kept coming"
    );
    // Once quiet, the last change is what is served.
    let want = last_written.load(Ordering::SeqCst);
    let snapshot = compiler.last();
    assert_eq!(snapshot.generation(), published.len() as u64);
    assert_eq!(snapshot.ports()[0].spec.backends.len(), want);
}
