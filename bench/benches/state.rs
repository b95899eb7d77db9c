//! What saving and restoring a worker's tables costs (`limpet_dataplane::
//! state`), at a million entries each of IPv4 affinity and connections:
//!
//! - `export_chunk/*`: one `Command::Export` of `EXPORT_CHUNK` slots, the
//!   longest a worker stays away from its packets while a checkpoint runs
//!   (it answers one chunk per burst boundary);
//! - `export_all`: the whole tables in one go, what a single request
//!   would stall the worker for;
//! - `encode`: the file's bytes from the exported entries (control thread);
//! - `restore`: putting them back into empty tables at start.
//!
//! `cargo bench -p limpet-bench --bench state`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use limpet_control::checkpoint::{Checkpoint, EXPORT_CHUNK};
use limpet_dataplane::affinity::{AffinityEntry, AffinityKey, AffinityTable};
use limpet_dataplane::flow::{Flow, FlowState, FlowTable, FlowTimeouts};
use limpet_dataplane::snapshot::{Affinity, Backend, ForwardMode, ServicePortSpec, Snapshot};
use limpet_dataplane::state::{
    ExportCursor, SavedAffinity, SavedFlow, TablesMut, TablesRef, WorkerState,
};
use limpet_dataplane::wire::{IpProtocol, MacAddr};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

const ENTRIES: usize = 1 << 20;
const NOW: u32 = 1_800_000_000;

fn snapshot() -> Snapshot {
    Snapshot::build(
        1,
        vec![ServicePortSpec {
            id: 1,
            name: "bench/svc:80/TCP".into(),
            protocol: IpProtocol::TCP,
            affinity: Affinity::client_ip(10800),
            mode: ForwardMode::Nat,
            frontends: vec![("192.0.2.10".parse().unwrap(), 80)],
            backends: vec![Backend {
                id: 1,
                addr: "203.0.113.11".parse().unwrap(),
                port: 9376,
                weight: 1,
                mac: MacAddr([2, 0, 0, 0, 0, 11]),
                iface: 0,
            }],
            maglev_size: None,
            source_ranges: None,
        }],
    )
    .unwrap()
}

/// A million clients of 198.18.0.0/15 and beyond, each with a sticky
/// entry and one established connection, seen over the last ten minutes.
fn state() -> WorkerState {
    let mut s = WorkerState::default();
    for i in 0..ENTRIES as u32 {
        let client = Ipv4Addr::from_bits(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i);
        let last_seen = NOW - i % 600;
        s.affinity_v4.push(SavedAffinity {
            entry: AffinityEntry {
                key: AffinityKey { service: 1, client },
                backend: 1 + i % 3,
            },
            last_seen,
            timeout: 10800,
            protected: true,
            prefix: 32,
        });
        s.flows_v4.push(SavedFlow {
            flow: Flow {
                client,
                service_addr: Ipv4Addr::new(192, 0, 2, 10),
                backend_addr: Ipv4Addr::new(203, 0, 113, 11),
                client_port: 40000 + (i % 20000) as u16,
                service_port: 80,
                backend_port: 9376,
                protocol: IpProtocol::TCP,
                state: FlowState::Established,
                nat: true,
                awaiting_proof: false,
                backend: 1,
                backend_mac: MacAddr([2, 0, 0, 0, 0, 11]),
                client_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                client_iface: 0,
                backend_iface: 0,
                ..Flow::default()
            },
            last_seen,
        });
    }
    s
}

struct Tables {
    a4: AffinityTable<Ipv4Addr>,
    a6: AffinityTable<Ipv6Addr>,
    f4: FlowTable<Ipv4Addr>,
    f6: FlowTable<Ipv6Addr>,
}

impl Tables {
    fn new() -> Self {
        Self {
            a4: AffinityTable::new(ENTRIES, NOW).unwrap(),
            a6: AffinityTable::new(1024, NOW).unwrap(),
            f4: FlowTable::new(ENTRIES, FlowTimeouts::default(), NOW).unwrap(),
            f6: FlowTable::new(1024, FlowTimeouts::default(), NOW).unwrap(),
        }
    }

    fn view(&self) -> TablesRef<'_> {
        TablesRef {
            affinity_v4: &self.a4,
            affinity_v6: &self.a6,
            flows_v4: &self.f4,
            flows_v6: &self.f6,
        }
    }

    fn restore(&mut self, state: &WorkerState, snap: &Snapshot) {
        let report = TablesMut {
            affinity_v4: &mut self.a4,
            affinity_v6: &mut self.a6,
            flows_v4: &mut self.f4,
            flows_v6: &mut self.f6,
        }
        .restore(state, snap, NOW);
        assert_eq!(report.affinity.inserted, ENTRIES);
        assert_eq!(report.flows.inserted, ENTRIES);
    }
}

fn export_all(view: TablesRef<'_>, snap: &Snapshot, chunk: usize) -> WorkerState {
    let mut out = WorkerState::default();
    let mut at = Some(ExportCursor::default());
    while let Some(from) = at {
        let c = view.export(snap, from, chunk, NOW);
        out.append(c.state);
        at = c.next;
    }
    out
}

fn bench(c: &mut Criterion) {
    let snap = snapshot();
    let saved = state();
    let mut full = Tables::new();
    full.restore(&saved, &snap);
    let view = full.view();

    let mut g = c.benchmark_group("state_export_chunk");
    g.throughput(Throughput::Elements(EXPORT_CHUNK as u64));
    // A chunk of each full table: the first of IPv4 affinity, and one
    // inside the IPv4 connections (after both affinity tables' slots).
    g.bench_function("affinity_v4", |b| {
        b.iter(|| view.export(&snap, ExportCursor::default(), EXPORT_CHUNK, NOW));
    });
    let flows_from = {
        // Walk to where the IPv4 connections begin.
        let mut at = ExportCursor::default();
        loop {
            let c = view.export(&snap, at, EXPORT_CHUNK, NOW);
            let next = c.next.unwrap();
            if !c.state.flows_v4.is_empty() {
                break next;
            }
            at = next;
        }
    };
    g.bench_function("flows_v4", |b| {
        b.iter(|| view.export(&snap, flows_from, EXPORT_CHUNK, NOW));
    });
    g.finish();

    let mut g = c.benchmark_group("state_2M_entries");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(2 * ENTRIES as u64));
    g.bench_function("export_all_in_one_request", |b| {
        b.iter(|| export_all(view, &snap, usize::MAX));
    });
    g.bench_function("export_all_in_chunks", |b| {
        b.iter(|| export_all(view, &snap, EXPORT_CHUNK));
    });
    let exported = export_all(view, &snap, EXPORT_CHUNK);
    assert_eq!(exported.len(), 2 * ENTRIES);
    let cp = Checkpoint {
        written_at: u64::from(NOW),
        links: vec!["lb0".into()],
        services: vec![(1, "bench/svc:80/TCP".into())],
        backends: vec![(1, "203.0.113.11:9376".parse().unwrap())],
        workers: vec![exported],
    };
    g.bench_function("encode", |b| b.iter(|| cp.encode()));
    let bytes = cp.encode();
    eprintln!(
        "state file for 1M affinity + 1M connections: {} bytes",
        bytes.len()
    );
    g.bench_function("decode", |b| {
        b.iter(|| Checkpoint::decode(&bytes).unwrap());
    });
    g.bench_function("restore", |b| {
        b.iter_batched(
            Tables::new,
            |mut t| {
                t.restore(&saved, &snap);
                t
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(state_benches, bench);
criterion_main!(state_benches);
