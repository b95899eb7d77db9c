//! The packet path under criterion: smaller versions of `limpet-bench`'s
//! scenarios (one worker over `MemoryIo`, 100 backends, `ClientIP`, NAT,
//! 64-byte TCP frames fed by copying pristine frames into recycled pool
//! buffers; see the `limpet_bench` library), and micro-benchmarks of the
//! affinity and flow tables through their public APIs.
//!
//! Throughput is per packet (or per key), so criterion's "elem/s" reads as
//! packets per second.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use limpet_bench::{Fam, Frames, feed_all, run_pipeline, worker};
use limpet_dataplane::affinity::{AffinityKey, AffinityTable, Sticky};
use limpet_dataplane::flow::{Flow, FlowKey, FlowState, FlowTable, FlowTimeouts};
use limpet_dataplane::io::BURST;
use limpet_dataplane::wire::MacAddr;
use limpet_dataplane::wire::tcp::flags::{ACK, SYN};
use limpet_pktgen::{ClientSet, FlowSet, NewConnections, Permutation, Vip};
use std::collections::VecDeque;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

const BACKENDS: usize = 100;
/// Keys looked up per iteration of the table benchmarks: one burst.
const BATCH: usize = BURST;

fn short<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    g
}

/// Established flows: `clients` IPv4 clients with one connection each,
/// opened untimed, then their ACKs replayed in random order.
fn steady(c: &mut Criterion, name: &str, clients: usize) {
    let set = FlowSet::new(
        ClientSet::v4(clients).unwrap(),
        1,
        [Vip::tcp(Fam::V4.vip(), limpet_bench::SERVICE_PORT)],
    )
    .unwrap();
    let (mut w, _clock) = worker(Fam::V4, BACKENDS, set.len().max(1024), clients.max(1024));
    let syn = Frames::from_flows(set.shuffled(1), limpet_pktgen::Flow::first_packet);
    assert_eq!(feed_all(&mut w, &syn), set.len() as u64);
    let ack = Frames::from_flows(set.shuffled(2), limpet_pktgen::Flow::packet);
    feed_all(&mut w, &ack);
    let mut cursor = 0;
    let mut g = short(c, "pipeline");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| run_pipeline(&mut w, &ack, &mut cursor, iters as usize * BURST));
    });
    g.finish();
    assert_eq!(w.stats().total_drops(), 0);
}

fn steady_100k(c: &mut Criterion) {
    steady(c, "steady-100k", 100_000);
}

fn hot_1k(c: &mut Criterion) {
    steady(c, "hot-1k", 1_000);
}

/// Every packet the SYN of a new connection from one of 100k known IPv4
/// clients (each opened one connection untimed, so affinity hits). The SYNs
/// come from a ring of a million distinct connections; when it wraps, the
/// clock moves past the SYN timeout and the worker reaps, untimed, so the
/// ring's tuples are new again.
fn new_flows(c: &mut Criterion) {
    const CLIENTS: usize = 100_000;
    const RING: usize = 1 << 20;
    let clients = ClientSet::v4(CLIENTS).unwrap();
    let vip = [Vip::tcp(Fam::V4.vip(), limpet_bench::SERVICE_PORT)];
    let (mut w, clock) = worker(Fam::V4, BACKENDS, RING + CLIENTS, CLIENTS);
    let warm = FlowSet::new(clients, 1, vip)
        .and_then(|s| s.with_first_port(1000))
        .unwrap();
    let warm = Frames::from_flows(warm.iter(), limpet_pktgen::Flow::first_packet);
    assert_eq!(feed_all(&mut w, &warm), CLIENTS as u64);
    drop(warm);
    let conns = NewConnections::new(clients, vip, 3).unwrap();
    let ring = Frames::from_flows(conns.take(RING), limpet_pktgen::Flow::first_packet);
    let syn_timeout = FlowTimeouts::default().tcp_syn;
    let mut cursor = 0;
    let mut g = short(c, "pipeline");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function("new-flows-100k-clients", |b| {
        b.iter_custom(|iters| {
            let mut left = iters as usize * BURST;
            let mut total = Duration::ZERO;
            while left > 0 {
                let n = left.min(ring.len() - cursor);
                total += run_pipeline(&mut w, &ring, &mut cursor, n);
                left -= n;
                if cursor == 0 {
                    // Wrapped: expire the ring's connections, untimed.
                    clock.advance(syn_timeout + 1);
                    w.poll();
                }
            }
            total
        });
    });
    g.finish();
    let s = w.stats();
    assert_eq!(s.total_drops(), 0);
    assert_eq!(s.affinity_misses, CLIENTS as u64);
}

/// Walks `keys` a batch at a time from `*pos`, wrapping.
fn batch<'a, T>(keys: &'a [T], pos: &mut usize) -> &'a [T] {
    if *pos + BATCH > keys.len() {
        *pos = 0;
    }
    let b = &keys[*pos..*pos + BATCH];
    *pos += BATCH;
    b
}

fn affinity_key_v6(i: usize) -> AffinityKey<Ipv6Addr> {
    let IpAddr::V6(client) = ClientSet::v6(i + 1).client(i) else {
        unreachable!()
    };
    AffinityKey { service: 1, client }
}

/// Lookups in an affinity table of a million IPv6 clients: hits in random
/// order one at a time, the same with the burst's buckets and entries
/// prefetched first (as the pipeline does), misses, and inserts into the
/// full table (each evicting the entry closest to expiry).
fn affinity(c: &mut Criterion) {
    const N: usize = 1 << 20;
    const TIMEOUT: u32 = 10_800;
    let mut t = AffinityTable::<Ipv6Addr>::new(N, 0).unwrap();
    for i in 0..N {
        t.insert(
            affinity_key_v6(i),
            (i % BACKENDS) as u32 + 1,
            TIMEOUT,
            0,
            |_| Some(TIMEOUT),
        )
        .unwrap();
    }
    let perm = Permutation::new(N as u64, 7);
    let hits: Vec<_> = perm.iter().map(|i| affinity_key_v6(i as usize)).collect();
    let misses: Vec<_> = (N..N + (1 << 16)).map(affinity_key_v6).collect();
    let now = 1;

    let mut g = short(c, "affinity-v6-1m");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut pos = 0;
    g.bench_function("lookup-hit", |b| {
        b.iter(|| {
            for k in batch(&hits, &mut pos) {
                let s = t.lookup(AffinityTable::hash(k), k, TIMEOUT, now);
                debug_assert!(matches!(s, Sticky::Live { .. }));
                black_box(s);
            }
        });
    });
    g.bench_function("lookup-hit-prefetched", |b| {
        let mut hashes = [0u64; BATCH];
        b.iter(|| {
            let keys = batch(&hits, &mut pos);
            for (h, k) in hashes.iter_mut().zip(keys) {
                *h = AffinityTable::hash(k);
                t.prefetch_bucket(*h);
            }
            for &h in &hashes {
                t.prefetch_entry(h);
            }
            for (&h, k) in hashes.iter().zip(keys) {
                black_box(t.lookup(h, k, TIMEOUT, now));
            }
        });
    });
    let mut mpos = 0;
    g.bench_function("lookup-miss", |b| {
        b.iter(|| {
            for k in batch(&misses, &mut mpos) {
                let s = t.lookup(AffinityTable::hash(k), k, TIMEOUT, now);
                debug_assert_eq!(s, Sticky::Missing);
                black_box(s);
            }
        });
    });
    let mut next = 2 * N;
    g.bench_function("insert-evicting", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let k = affinity_key_v6(next);
                next += 1;
                black_box(t.insert(k, 1, TIMEOUT, now, |_| Some(TIMEOUT)));
            }
        });
    });
    g.finish();
}

fn flow_v4(client: usize, port: u16) -> Flow<Ipv4Addr> {
    let IpAddr::V4(client) = ClientSet::v4(client + 1).unwrap().client(client) else {
        unreachable!()
    };
    Flow {
        client,
        service_addr: Ipv4Addr::new(192, 0, 2, 10),
        backend_addr: Ipv4Addr::new(203, 0, 113, (client.octets()[3] % 100) + 1),
        client_port: port,
        service_port: 80,
        backend_port: 9376,
        protocol: 6,
        state: FlowState::Established,
        nat: true,
        awaiting_proof: false,
        backend: 1,
        backend_mac: MacAddr([0x02, 0xbb, 0, 0, 0, 1]),
        client_mac: MacAddr([0x02, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc]),
        client_iface: 0,
        backend_iface: 0,
        ..Flow::default()
    }
}

/// A NAT flow table of about a million IPv4 connections (131,070 clients
/// x 8 ports, each answering to two keys): lookups as for affinity, and
/// remove+insert churn through a 64k-connection window.
fn flows(c: &mut Criterion) {
    const CLIENTS: usize = ClientSet::V4_CAPACITY;
    const PORTS: usize = 8;
    const N: usize = CLIENTS * PORTS;
    const WINDOW: usize = 1 << 16;
    let now = 1;
    let mut t = FlowTable::<Ipv4Addr>::new(N + WINDOW, FlowTimeouts::default(), 0).unwrap();
    for i in 0..N {
        let f = flow_v4(i % CLIENTS, 1024 + (i / CLIENTS) as u16);
        t.insert(f, ACK, 0).unwrap();
    }
    let perm = Permutation::new(N as u64, 9);
    let hits: Vec<FlowKey<Ipv4Addr>> = perm
        .iter()
        .map(|i| flow_v4(i as usize % CLIENTS, 1024 + (i as usize / CLIENTS) as u16).forward_key())
        .collect();
    let misses: Vec<FlowKey<Ipv4Addr>> = (0..1usize << 16)
        .map(|i| flow_v4(i % CLIENTS, 60_000 + (i / CLIENTS) as u16).forward_key())
        .collect();

    let mut g = short(c, "flow-v4-1m-nat");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut pos = 0;
    g.bench_function("lookup-hit", |b| {
        b.iter(|| {
            for k in batch(&hits, &mut pos) {
                let r = t.lookup(k.hash(), k, now);
                debug_assert!(r.is_some());
                black_box(r);
            }
        });
    });
    g.bench_function("lookup-hit-prefetched", |b| {
        let mut hashes = [0u64; BATCH];
        b.iter(|| {
            let keys = batch(&hits, &mut pos);
            for (h, k) in hashes.iter_mut().zip(keys) {
                *h = k.hash();
                t.prefetch_bucket(*h);
            }
            for &h in &hashes {
                t.prefetch_entry(h);
            }
            for (&h, k) in hashes.iter().zip(keys) {
                black_box(t.lookup(h, k, now));
            }
        });
    });
    // The same burst, software-pipelined: the bucket of key j + 2D and the
    // entry of key j + D are requested while key j is looked up, so each
    // load has D keys' work to arrive in (the pipeline's stages instead
    // read bucket 0 and entry 0 right after requesting the whole burst).
    g.bench_function("lookup-hit-rolling-d8", |b| {
        const D: usize = 8;
        let mut hashes = [0u64; BATCH];
        b.iter(|| {
            let keys = batch(&hits, &mut pos);
            for (h, k) in hashes.iter_mut().zip(keys) {
                *h = k.hash();
            }
            for j in 0..BATCH + 2 * D {
                if j < BATCH {
                    t.prefetch_bucket(hashes[j]);
                }
                if (D..BATCH + D).contains(&j) {
                    t.prefetch_entry(hashes[j - D]);
                }
                if j >= 2 * D {
                    black_box(t.lookup(hashes[j - 2 * D], &keys[j - 2 * D], now));
                }
            }
        });
    });
    let mut mpos = 0;
    g.bench_function("lookup-miss", |b| {
        b.iter(|| {
            for k in batch(&misses, &mut mpos) {
                let r = t.lookup(k.hash(), k, now);
                debug_assert!(r.is_none());
                black_box(r);
            }
        });
    });
    // Churn: remove the connection inserted 64k ago, insert a new one.
    let mut live: VecDeque<u32> = VecDeque::with_capacity(WINDOW + 1);
    let mut next = 0usize;
    let churn_key = |n: usize| {
        let n = n % (CLIENTS * 32);
        flow_v4(n % CLIENTS, 20_000 + (n / CLIENTS) as u16)
    };
    for _ in 0..WINDOW {
        let (idx, _) = t.insert(churn_key(next), SYN, now).unwrap();
        live.push_back(idx);
        next += 1;
    }
    g.bench_function("remove+insert", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                t.remove(live.pop_front().unwrap());
                let (idx, _) = t.insert(churn_key(next), SYN, now).unwrap();
                next += 1;
                live.push_back(idx);
            }
        });
    });
    g.finish();
    assert_eq!(t.counters().evictions, 0);
}

criterion_group!(packet_path, hot_1k, steady_100k, new_flows);
criterion_group!(tables, affinity, flows);
criterion_main!(packet_path, tables);
