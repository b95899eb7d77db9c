//! Maglev table build and lookup.
//!
//! The build figure to beat is the paper's 1.8 ms for 1000 backends at
//! M = 65537 (NSDI 2016, §5.3); lookup is on the packet path.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use limpet_dataplane::maglev::{DEFAULT_TABLE_SIZE, MaglevBackend, MaglevTable};

fn identities(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("198.18.{}.{}:9376/TCP", i / 256, i % 256).into_bytes())
        .collect()
}

fn backends(ids: &[Vec<u8>]) -> Vec<MaglevBackend<'_>> {
    ids.iter()
        .map(|id| MaglevBackend {
            identity: id,
            weight: 1,
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev-build");
    for n in [100, 1000] {
        let ids = identities(n);
        let b = backends(&ids);
        group.bench_function(format!("N={n}/M={DEFAULT_TABLE_SIZE}"), |bench| {
            bench.iter(|| MaglevTable::build(black_box(&b), DEFAULT_TABLE_SIZE).unwrap());
        });
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    const HASHES: usize = 4096;
    let ids = identities(1000);
    let table = MaglevTable::build(&backends(&ids), DEFAULT_TABLE_SIZE).unwrap();
    // Pseudo-random hashes (splitmix64) spread over the whole table, so the
    // lookups touch different cache lines as real flows do.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let hashes: Vec<u64> = (0..HASHES)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect();
    let mut group = c.benchmark_group("maglev-lookup");
    group.throughput(Throughput::Elements(HASHES as u64));
    group.bench_function("N=1000/random-hash", |bench| {
        bench.iter(|| {
            let mut acc = 0u32;
            for &h in black_box(&hashes) {
                acc = acc.wrapping_add(u32::from(table.lookup(h).unwrap_or(0)));
            }
            acc
        });
    });
    group.finish();
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
