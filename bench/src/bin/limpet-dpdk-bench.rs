//! `limpet-dpdk-bench`: limpet's pipeline over real DPDK ports against the
//! plain DPDK io-forward loop over the same ports, in one run, one JSON line
//! per forwarding mode (like `limpet-bench`), a human summary on stderr.
//!
//! Usage: `limpet-dpdk-bench [--workers N] [--mode nat|dsr]... [-- EAL ARGS]`.
//! EAL runs without hugepages or PCI by default (`--huge` to use them), so
//! the binary runs on any Linux host; `scripts/dpdk-bundle` packs it with
//! the DPDK libraries it needs for hosts without DPDK.
//!
//! # The ports and the traffic source
//!
//! Each worker has its own `net_ring` port over two `rte_ring`s (RX, TX) and
//! its own lcore: shared-nothing, as RSS queues on a NIC would be, so `N`
//! workers scale on their own. Its clients are a disjoint share of the
//! client set (client index modulo `N`, as a NIC's RSS would split them);
//! the tables of each worker hold its share.
//!
//! The traffic has to be sustainable at full speed and look like 1,000,000
//! clients. A ring that feeds itself (TX ring = RX ring) needs no generator
//! and works for `dsr`, whose rewrite leaves the packet addressed to the
//! VIP, but the only flows it ever carries are the packets in flight (a
//! few hundred): the tables would sit in cache and the figure would say
//! nothing about 1M clients. Under `nat` it does not work at all (a
//! rewritten packet is addressed to the backend). A generator on another
//! lcore would cost a core per worker and could itself be the bottleneck.
//!
//! So the worker's own lcore plays the NIC, as a DMA engine would: before
//! each poll it takes the mbufs the port sent (its TX ring), writes into
//! each the next of the worker's prebuilt pristine frames (one 60-byte copy,
//! read sequentially from an array of every flow in random order), and
//! puts them on the port's RX ring. `--in-flight` mbufs (default 128)
//! circulate; nothing is allocated or freed in the timed loops. The same
//! refill runs before every loop measured, so it is in every figure alike,
//! and the `wire` loop (refill, then RX ring straight to TX ring, no
//! ethdev) measures it alone: subtract `wire_ns_per_packet` to get the
//! other loops' own cost.
//!
//! # What is measured, in alternating rounds
//!
//! - `floor`: DPDK's plain io-forward loop (`rte_eth_rx_burst`, swap the
//!   MACs, `rte_eth_tx_burst`, as testpmd's macswap mode), on the worker's
//!   own queue ([`DpdkIo::forward_macswap`]).
//! - `io`: the same through limpet's `PacketIo` (`DpdkIo::rx_burst`,
//!   `PacketBuf::data_mut`, `tx_burst`).
//! - `pipeline`: the real `Worker` over the `DpdkIo` (`Worker::poll`):
//!   established TCP flows, `ClientIP` affinity, 100 backends, the flow
//!   table holding every connection.
//! - `wire`: the traffic source alone (see above).
//!
//! Every worker runs the same kind at the same time for `--round-ms`;
//! a round's aggregate is the sum of each worker's packets / its time.
//! Figures are the median round.
//!
//! # Clients
//!
//! 198.18.0.0/15 has 131,070 usable addresses, so `--family v4` (the
//! default: 64-byte frames) uses 131,070 clients with 8 connections each,
//! 1,048,560 flows, as `limpet-bench`'s `steady-1m`; `--family v6` uses
//! 1,000,000 distinct IPv6 clients with one connection each (78-byte
//! frames, the IPv6 TCP minimum).

#![recursion_limit = "256"]

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use limpet_bench::{Fam, Frames, SERVICE_PORT, START, cpu_model, loadavg, median, worker_config};
use limpet_dataplane::clock::ManualClock;
use limpet_dataplane::io::dpdk::{
    DpdkBuf, DpdkIo, Eal, EalConfig, Mempool, Port, PortConfig, Ring,
};
use limpet_dataplane::io::{BURST, PacketBuf, PacketIo};
use limpet_dataplane::pipeline::Worker;
use limpet_dataplane::snapshot::{ForwardMode, Snapshot};
use limpet_dataplane::stats::WorkerStats;
use limpet_pktgen::{ClientSet, Flow, FlowSet, Vip};
use serde_json::{Value, json};

/// Slots of each ring behind a port (holds one less).
const RING_SLOTS: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Nat,
    Dsr,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
        }
    }

    fn forward(self) -> ForwardMode {
        match self {
            Mode::Nat => ForwardMode::Nat,
            Mode::Dsr => ForwardMode::Dsr,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FamilyArg {
    V4,
    V6,
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "limpet's pipeline vs DPDK's io-forward loop over net_ring ports, N workers"
)]
struct Cli {
    /// Workers, each on its own lcore with its own ring port.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Forwarding mode (repeatable); nat and dsr when absent.
    #[arg(long = "mode", value_enum)]
    modes: Vec<Mode>,
    /// v4: 131,070 clients x 8 flows, 64-byte frames; v6: 1M clients x 1.
    #[arg(long, value_enum, default_value = "v4")]
    family: FamilyArg,
    /// Clients in all (default: see --family).
    #[arg(long)]
    clients: Option<usize>,
    /// Established connections per client (default: see --family).
    #[arg(long)]
    flows_per_client: Option<usize>,
    #[arg(long, default_value_t = 100)]
    backends: usize,
    /// Timed rounds of each loop; figures are the median round.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Length of one round of one loop, in milliseconds.
    #[arg(long, default_value_t = 300)]
    round_ms: u64,
    /// Mbufs circulating per worker (the port's RX "descriptors" in use).
    #[arg(long, default_value_t = 128)]
    in_flight: usize,
    /// CPUs of the worker lcores, in order (default 1, 2, ... modulo the
    /// CPU count).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// CPU of the main lcore (it sleeps while rounds run).
    #[arg(long, default_value_t = 0)]
    main_cpu: usize,
    /// EAL memory, MiB.
    #[arg(long, default_value_t = 256)]
    memory_mb: u32,
    /// Use hugepages (default: --no-huge).
    #[arg(long)]
    huge: bool,
    /// Small sizes, for a CI smoke run.
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value_t = 0x6c69_6d70)]
    seed: u64,
    /// More EAL arguments (after `--`), e.g. `-d lib/librte_mempool_ring.so.23`.
    #[arg(last = true)]
    eal: Vec<String>,
}

/// The loops measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Wire,
    Floor,
    Io,
    Pipeline,
}

const KINDS: [Kind; 4] = [Kind::Pipeline, Kind::Floor, Kind::Io, Kind::Wire];

/// What a scenario asks of every worker.
#[derive(Debug, Clone)]
struct Plan {
    fam: Fam,
    mode: Mode,
    clients: usize,
    flows_per_client: usize,
    backends: usize,
    workers: usize,
    rounds: usize,
    round_ms: u64,
    in_flight: usize,
    seed: u64,
    /// CPUs of the host (read before EAL pins this thread to one).
    host_cpus: usize,
}

/// Start and end of each round, for the main lcore and every worker.
struct Rounds {
    start: Barrier,
    stop: AtomicBool,
    end: Barrier,
}

/// One worker's results.
#[derive(Debug, Default)]
struct LaneReport {
    /// Per kind (index into `KINDS`), per round: packets and seconds.
    rounds: [Vec<(u64, f64)>; 4],
    /// Pipeline counters over the timed rounds.
    stats: WorkerStats,
    flows: usize,
    opened: u64,
    frame_len: usize,
    flow_capacity: usize,
    affinity_capacity: usize,
    setup_s: f64,
    problems: Vec<String>,
}

/// One worker's port, its rings and the traffic source over them.
struct Lane {
    worker: Worker<DpdkIo, ManualClock>,
    rx: Arc<Ring>,
    tx: Arc<Ring>,
    scratch: Vec<DpdkBuf>,
    burst: Vec<DpdkBuf>,
}

impl Lane {
    /// The NIC's part: takes up to `max` mbufs the port sent, writes the
    /// next frames into them and puts them on the port's RX ring.
    #[inline]
    fn refill(&mut self, frames: &Frames, cursor: &mut usize, max: usize) -> usize {
        self.tx.pop_burst(&mut self.scratch, max);
        for buf in &mut self.scratch {
            let frame = frames.get(*cursor);
            let data = buf.data_mut();
            if data.len() == frame.len() {
                data.copy_from_slice(frame);
            }
            *cursor += 1;
            if *cursor == frames.len() {
                *cursor = 0;
            }
        }
        let n = self.scratch.len();
        // The ring has room for every mbuf in flight (checked at start).
        self.rx.push_burst(&mut self.scratch);
        n
    }

    /// One step of loop `kind`; returns the packets it moved.
    #[inline]
    fn step(&mut self, kind: Kind, frames: &Frames, cursor: &mut usize) -> usize {
        self.refill(frames, cursor, BURST);
        match kind {
            Kind::Wire => {
                let n = self.rx.pop_burst(&mut self.burst, BURST);
                self.tx.push_burst(&mut self.burst);
                n
            }
            Kind::Floor => self.worker.io_mut().forward_macswap(),
            Kind::Io => {
                let io = self.worker.io_mut();
                let n = io.rx_burst(&mut self.burst);
                for p in &mut self.burst {
                    let d = p.data_mut();
                    let (dst, src) = d.split_at_mut(6);
                    dst.swap_with_slice(&mut src[..6]);
                }
                io.tx_burst(&mut self.burst);
                n
            }
            Kind::Pipeline => self.worker.poll(),
        }
    }

    /// Sends `frames` through the pipeline exactly once, untimed; returns
    /// packets sent on.
    fn pass(&mut self, frames: &Frames) -> Result<u64, String> {
        let before = self.worker.stats().tx_packets;
        let (mut fed, mut done, mut cursor, mut idle) = (0, 0, 0, 0u32);
        while done < frames.len() {
            if fed < frames.len() {
                fed += self.refill(frames, &mut cursor, frames.len() - fed);
            }
            let n = self.worker.poll();
            done += n;
            idle = if n == 0 { idle + 1 } else { 0 };
            if idle > 1_000_000 {
                return Err(format!(
                    "set-up stalled after {done} of {} packets (mbufs lost?)",
                    frames.len()
                ));
            }
        }
        Ok(self.worker.stats().tx_packets - before)
    }

    /// Returns every mbuf on the rings to the pool.
    fn drain(&mut self) {
        for ring in [&self.rx, &self.tx] {
            while ring.pop_burst(&mut self.scratch, BURST) > 0 {
                self.scratch.clear();
            }
        }
    }
}

/// Everything a worker lcore needs, moved to it.
struct LaneInput {
    index: usize,
    plan: Plan,
    port: Arc<Port>,
    rx: Arc<Ring>,
    tx: Arc<Ring>,
    pool: Arc<Mempool>,
    rounds: Arc<Rounds>,
}

fn snapshot(plan: &Plan) -> Arc<Snapshot> {
    let mut spec = limpet_bench::service(plan.fam, plan.backends);
    spec.mode = plan.mode.forward();
    Arc::new(Snapshot::build(1, vec![spec]).expect("snapshot"))
}

/// Builds the worker's frames and tables and opens its flows.
fn set_up(input: &LaneInput) -> Result<(Lane, Frames, LaneReport), String> {
    let started = Instant::now();
    let plan = &input.plan;
    let clients = match plan.fam {
        Fam::V4 => ClientSet::v4(plan.clients).map_err(|e| e.to_string())?,
        Fam::V6 => ClientSet::v6(plan.clients),
    };
    let vip = [Vip::tcp(plan.fam.vip(), SERVICE_PORT)];
    let set = FlowSet::new(clients, plan.flows_per_client, vip).map_err(|e| e.to_string())?;
    let (w, n) = (input.index, plan.workers);
    let mine = |f: &Flow| clients.index_of(f.client.ip()).is_some_and(|i| i % n == w);
    let syn = Frames::from_flows(set.shuffled(plan.seed ^ 1).filter(mine), Flow::first_packet);
    let ack = Frames::from_flows(set.shuffled(plan.seed ^ 2).filter(mine), Flow::packet);
    let flows = ack.len();
    let my_clients = (0..clients.len()).filter(|i| i % n == w).count();
    let config = worker_config(plan.fam, flows.max(1024), my_clients.max(1024));
    let io = DpdkIo::new(&[Arc::clone(&input.port)], 0).map_err(|e| e.to_string())?;
    let worker = Worker::new(io, ManualClock::new(START), config, snapshot(plan))
        .map_err(|e| e.to_string())?;
    let mut lane = Lane {
        worker,
        rx: Arc::clone(&input.rx),
        tx: Arc::clone(&input.tx),
        scratch: Vec::with_capacity(BURST),
        burst: Vec::with_capacity(BURST),
    };
    // The mbufs that will circulate start out as if the port had sent them.
    let frame_len = u16::try_from(ack.frame_len()).map_err(|e| e.to_string())?;
    let mut filled = 0;
    while filled < plan.in_flight {
        let want = (plan.in_flight - filled).min(BURST);
        if input.pool.alloc_burst(&mut lane.scratch, want, frame_len) != want {
            return Err("mbuf pool exhausted".to_owned());
        }
        filled += want;
        lane.tx.push_burst(&mut lane.scratch);
    }
    let opened = lane.pass(&syn)?;
    drop(syn);
    // One untimed pass moves every flow to established.
    lane.pass(&ack)?;
    let (flow_capacity, affinity_capacity) = match plan.fam {
        Fam::V4 => (
            lane.worker.flows_v4().capacity(),
            lane.worker.affinity_v4().capacity(),
        ),
        Fam::V6 => (
            lane.worker.flows_v6().capacity(),
            lane.worker.affinity_v6().capacity(),
        ),
    };
    let report = LaneReport {
        flows,
        opened,
        frame_len: ack.frame_len(),
        flow_capacity,
        affinity_capacity,
        setup_s: started.elapsed().as_secs_f64(),
        ..LaneReport::default()
    };
    Ok((lane, ack, report))
}

/// A worker lcore: set up, then every round of every kind in step with the
/// main lcore.
fn run_lane(input: &LaneInput) -> LaneReport {
    let rounds = &input.rounds;
    let mut state = set_up(input);
    let mut cursor = 0;
    let mut before = WorkerStats::default();
    if let Ok((lane, _, _)) = &state {
        before = lane.worker.stats();
    }
    for _ in 0..input.plan.rounds {
        for (k, &kind) in KINDS.iter().enumerate() {
            rounds.start.wait();
            if let Ok((lane, frames, report)) = &mut state {
                let t0 = Instant::now();
                let mut packets = 0u64;
                while !rounds.stop.load(Ordering::Relaxed) {
                    packets += lane.step(kind, frames, &mut cursor) as u64;
                }
                report.rounds[k].push((packets, t0.elapsed().as_secs_f64()));
            }
            rounds.end.wait();
        }
    }
    match state {
        Ok((mut lane, _, mut report)) => {
            report.stats = delta(&before, &lane.worker.stats());
            let timed: u64 = report.rounds[0].iter().map(|r| r.0).sum();
            report.problems = problems(&report, timed);
            lane.drain();
            report
        }
        Err(e) => LaneReport {
            problems: vec![e],
            ..LaneReport::default()
        },
    }
}

fn problems(r: &LaneReport, timed: u64) -> Vec<String> {
    let s = &r.stats;
    let mut out = Vec::new();
    if s.tx_packets != timed {
        out.push(format!("sent {} of {timed}", s.tx_packets));
    }
    if s.total_drops() != 0 {
        out.push(format!("{} drops", s.total_drops()));
    }
    if s.flow_hits != timed {
        out.push(format!("{} flow hits of {timed}", s.flow_hits));
    }
    if s.flow_evictions + s.affinity_evictions != 0 {
        out.push("evictions in tables sized for the working set".to_owned());
    }
    if r.opened != r.flows as u64 {
        out.push(format!("set-up opened {} of {} flows", r.opened, r.flows));
    }
    out
}

/// Counter deltas (every field of `WorkerStats` is a counter but the
/// snapshot generation).
fn delta(a: &WorkerStats, b: &WorkerStats) -> WorkerStats {
    let mut d = *b;
    d.rx_packets -= a.rx_packets;
    d.tx_packets -= a.tx_packets;
    d.busy_polls -= a.busy_polls;
    d.busy_ns -= a.busy_ns;
    d.flow_hits -= a.flow_hits;
    d.replies -= a.replies;
    d.new_flows -= a.new_flows;
    d.affinity_hits -= a.affinity_hits;
    d.affinity_misses -= a.affinity_misses;
    d.affinity_expired -= a.affinity_expired;
    d.affinity_stale -= a.affinity_stale;
    d.affinity_evictions -= a.affinity_evictions;
    d.flow_evictions -= a.flow_evictions;
    d.slow_path -= a.slow_path;
    d.no_service -= a.no_service;
    for (x, y) in d.drops.iter_mut().zip(a.drops) {
        *x -= y;
    }
    d
}

/// The EAL settings: no hugepages or PCI unless asked, the main lcore on
/// `main_cpu`, worker lcore `i` on `cpus[i - 1]`, then the user's own.
fn eal_config(cli: &Cli, cpus: &[usize]) -> EalConfig {
    let mut lcores = format!("0@{}", cli.main_cpu);
    for (i, c) in cpus.iter().enumerate() {
        let _ = write!(lcores, ",{}@{c}", i + 1);
    }
    let mut extra = vec![format!("--lcores={lcores}"), "--no-telemetry".to_owned()];
    extra.extend(cli.eal.iter().cloned());
    EalConfig {
        cores: None,
        memory_mb: Some(cli.memory_mb),
        no_huge: !cli.huge,
        no_pci: true,
        no_shconf: !cli.huge,
        file_prefix: cli.huge.then(|| "limpet-dpdk-bench".to_owned()),
        log_level: Some("warning".to_owned()),
        extra,
        ..EalConfig::default()
    }
}

/// A worker's port and rings, made on the main lcore (ethdev set-up is not
/// thread-safe) and kept across scenarios.
struct LanePorts {
    port: Arc<Port>,
    rx: Arc<Ring>,
    tx: Arc<Ring>,
}

fn lane_ports(eal: &Eal, pool: &Arc<Mempool>, i: usize) -> Result<LanePorts, String> {
    let rx = Ring::new(eal, &format!("bench{i}_rx"), RING_SLOTS).map_err(|e| e.to_string())?;
    let tx = Ring::new(eal, &format!("bench{i}_tx"), RING_SLOTS).map_err(|e| e.to_string())?;
    let id = eal
        .port_from_rings(&format!("bench_ring{i}"), &[&rx], &[&tx])
        .map_err(|e| e.to_string())?;
    let port = Port::start(eal, id, &PortConfig::default(), &[Arc::clone(pool)])
        .map_err(|e| e.to_string())?;
    Ok(LanePorts {
        port: Arc::new(port),
        rx: Arc::new(rx),
        tx: Arc::new(tx),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Per round, the sum over workers of packets / seconds, in Mpps.
fn aggregate(reports: &[LaneReport], k: usize) -> Vec<f64> {
    let rounds = reports.iter().map(|r| r.rounds[k].len()).min().unwrap_or(0);
    (0..rounds)
        .map(|i| {
            reports
                .iter()
                .map(|r| {
                    let (p, s) = r.rounds[k][i];
                    p as f64 / s / 1e6
                })
                .sum()
        })
        .collect()
}

fn scenario(cli: &Cli, plan: &Plan, eal: &Eal, pool: &Arc<Mempool>, lanes: &[LanePorts]) -> Value {
    let lcores = eal.worker_lcores();
    let rounds = Arc::new(Rounds {
        start: Barrier::new(plan.workers + 1),
        stop: AtomicBool::new(false),
        end: Barrier::new(plan.workers + 1),
    });
    let (done_tx, done_rx) = mpsc::channel();
    for (i, lane) in lanes.iter().enumerate() {
        let input = LaneInput {
            index: i,
            plan: plan.clone(),
            port: Arc::clone(&lane.port),
            rx: Arc::clone(&lane.rx),
            tx: Arc::clone(&lane.tx),
            pool: Arc::clone(pool),
            rounds: Arc::clone(&rounds),
        };
        let done = done_tx.clone();
        eal.launch(lcores[i], move || {
            let report = run_lane(&input);
            let _ = done.send((i, report));
        })
        .expect("launching a worker lcore");
    }
    for _ in 0..plan.rounds {
        for _ in KINDS {
            rounds.stop.store(false, Ordering::Relaxed);
            rounds.start.wait();
            std::thread::sleep(Duration::from_millis(plan.round_ms));
            rounds.stop.store(true, Ordering::Relaxed);
            rounds.end.wait();
        }
    }
    for &l in &lcores[..plan.workers] {
        if let Err(e) = eal.wait(l) {
            eprintln!("limpet-dpdk-bench: {e}");
        }
    }
    drop(done_tx);
    let mut reports: Vec<(usize, LaneReport)> = done_rx.iter().collect();
    reports.sort_by_key(|(i, _)| *i);
    let reports: Vec<LaneReport> = reports.into_iter().map(|(_, r)| r).collect();
    report_json(cli, plan, eal, &reports)
}

#[allow(clippy::too_many_lines, reason = "one JSON document, field by field")]
fn report_json(cli: &Cli, plan: &Plan, eal: &Eal, reports: &[LaneReport]) -> Value {
    let per_kind: Vec<Vec<f64>> = (0..KINDS.len()).map(|k| aggregate(reports, k)).collect();
    let mpps = |kind: Kind| {
        let k = KINDS.iter().position(|&x| x == kind).unwrap_or(0);
        median(&per_kind[k])
    };
    let rounds_of = |kind: Kind| {
        let k = KINDS.iter().position(|&x| x == kind).unwrap_or(0);
        per_kind[k].iter().map(|&x| round3(x)).collect::<Vec<_>>()
    };
    let (pipeline, floor, io, wire) = (
        mpps(Kind::Pipeline),
        mpps(Kind::Floor),
        mpps(Kind::Io),
        mpps(Kind::Wire),
    );
    let n = plan.workers as f64;
    // ns per packet on one worker (aggregate Mpps shared by N workers).
    let ns = |m: f64| round3(1000.0 * n / m);
    let mut stats = WorkerStats::default();
    for r in reports {
        stats = sum(&stats, &r.stats);
    }
    let problems: Vec<String> = reports
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.problems.iter().map(move |p| format!("worker {i}: {p}")))
        .collect();
    let per_worker_mpps: Vec<f64> = reports
        .iter()
        .map(|r| {
            let v: Vec<f64> = r.rounds[0]
                .iter()
                .map(|&(p, s)| p as f64 / s / 1e6)
                .collect();
            round3(median(&v))
        })
        .collect();
    let flows: usize = reports.iter().map(|r| r.flows).sum();
    let frame_len = reports.first().map_or(0, |r| r.frame_len);
    let ratio = pipeline / floor;
    let name = format!(
        "dpdk-steady-1m{}-{}",
        if plan.fam == Fam::V6 { "-v6" } else { "" },
        plan.mode.name()
    );
    json!({
        "scenario": name,
        "workers": plan.workers,
        "mpps": round3(pipeline),
        "floor_mpps": round3(floor),
        "ratio_to_floor": round3(ratio),
        "goal_ratio_to_floor": 0.5,
        "meets_goal": ratio >= 0.5,
        "io_mpps": round3(io),
        "wire_mpps": round3(wire),
        "ns_per_packet": ns(pipeline),
        "floor_ns_per_packet": ns(floor),
        "io_ns_per_packet": ns(io),
        "wire_ns_per_packet": ns(wire),
        "pipeline_net_ns_per_packet": round3(ns(pipeline) - ns(wire)),
        "floor_net_ns_per_packet": round3(ns(floor) - ns(wire)),
        "mpps_per_worker": per_worker_mpps,
        "mpps_rounds": rounds_of(Kind::Pipeline),
        "floor_mpps_rounds": rounds_of(Kind::Floor),
        "io_mpps_rounds": rounds_of(Kind::Io),
        "wire_mpps_rounds": rounds_of(Kind::Wire),
        "rounds": plan.rounds,
        "round_ms": plan.round_ms,
        "mode": plan.mode.name(),
        "affinity": "ClientIP",
        "family": plan.fam.name(),
        "clients": plan.clients,
        "flows_per_client": plan.flows_per_client,
        "flows": flows,
        "backends": plan.backends,
        "frame_len": frame_len,
        "wire_frame_len": frame_len + 4,
        "in_flight_per_worker": plan.in_flight,
        "flow_capacity_per_worker": reports.first().map(|r| r.flow_capacity),
        "affinity_capacity_per_worker": reports.first().map(|r| r.affinity_capacity),
        "setup_s": reports.iter().map(|r| round3(r.setup_s)).collect::<Vec<_>>(),
        "stats": {
            "rx_packets": stats.rx_packets,
            "tx_packets": stats.tx_packets,
            "flow_hits": stats.flow_hits,
            "new_flows": stats.new_flows,
            "drops": stats.total_drops(),
            "flow_evictions": stats.flow_evictions,
            "affinity_evictions": stats.affinity_evictions,
            "busy_ns_per_packet": round3(stats.busy_ns_per_packet()),
            "packets_per_burst": round3(stats.packets_per_burst()),
        },
        "ok": problems.is_empty(),
        "problems": problems,
        "eal_args": eal.args(),
        "cpu": cpu_model(),
        "cpus": plan.host_cpus,
        "loadavg_1m": loadavg(),
        "quick": cli.quick,
        "ports": "one net_ring port (RX ring, TX ring) per worker, one queue each",
        "method": "per worker lcore, before each step the TX ring's mbufs get the next pristine \
                   frame (one copy) and go onto the RX ring (in_flight mbufs circulate, none \
                   allocated); steps: floor = rte_eth_rx_burst + MAC swap + rte_eth_tx_burst; \
                   io = the same through DpdkIo's PacketIo; pipeline = Worker::poll; wire = the \
                   refill alone (RX ring to TX ring, no ethdev). Kinds alternate each round, all \
                   workers at once; mpps = median round of the sum over workers; *_net_ns = \
                   minus the wire's cost",
        "clock": "ManualClock, stopped: nothing expires during the run",
    })
}

fn sum(a: &WorkerStats, b: &WorkerStats) -> WorkerStats {
    let mut s = *a;
    s.rx_packets += b.rx_packets;
    s.tx_packets += b.tx_packets;
    s.busy_polls += b.busy_polls;
    s.busy_ns += b.busy_ns;
    s.flow_hits += b.flow_hits;
    s.replies += b.replies;
    s.new_flows += b.new_flows;
    s.affinity_hits += b.affinity_hits;
    s.affinity_misses += b.affinity_misses;
    s.affinity_evictions += b.affinity_evictions;
    s.flow_evictions += b.flow_evictions;
    s.slow_path += b.slow_path;
    s.no_service += b.no_service;
    for (x, y) in s.drops.iter_mut().zip(b.drops) {
        *x += y;
    }
    s
}

fn run(cli: &Cli) -> Result<(), String> {
    if cli.workers == 0 {
        return Err("--workers must be at least 1".to_owned());
    }
    if cli.in_flight == 0 || cli.in_flight >= RING_SLOTS as usize {
        return Err(format!(
            "--in-flight must be in 1..{RING_SLOTS} (the rings' size)"
        ));
    }
    let ncpu = std::thread::available_parallelism().map_or(1, usize::from);
    let cpus: Vec<usize> = if cli.cpus.is_empty() {
        (1..=cli.workers).map(|i| i % ncpu).collect()
    } else if cli.cpus.len() == cli.workers {
        cli.cpus.clone()
    } else {
        return Err(format!(
            "--cpus names {} CPUs for {} workers",
            cli.cpus.len(),
            cli.workers
        ));
    };
    let fam = match cli.family {
        FamilyArg::V4 => Fam::V4,
        FamilyArg::V6 => Fam::V6,
    };
    let (clients, per) = match (fam, cli.quick) {
        (Fam::V4, false) => (ClientSet::V4_CAPACITY, 8),
        (Fam::V6, false) => (1_000_000, 1),
        (_, true) => (2_000, 2),
    };
    let modes = if cli.modes.is_empty() {
        vec![Mode::Nat, Mode::Dsr]
    } else {
        cli.modes.clone()
    };
    let eal = Eal::init(&eal_config(cli, &cpus)).map_err(|e| e.to_string())?;
    if eal.worker_lcores().len() < cli.workers {
        return Err(format!(
            "EAL has {} worker lcores for {} workers",
            eal.worker_lcores().len(),
            cli.workers
        ));
    }
    let mbufs = (cli.workers * (cli.in_flight + 2 * BURST) + 1024) as u32;
    let pool = Arc::new(
        Mempool::new(&eal, "bench_mbufs", mbufs, 0, -1)
            .map_err(|e| format!("{e} (is librte_mempool_ring loaded? see -d)"))?,
    );
    let lanes = (0..cli.workers)
        .map(|i| lane_ports(&eal, &pool, i))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "limpet-dpdk-bench: {} worker(s) on CPUs {cpus:?}, net_ring ports, {} backends, ClientIP; cpu: {}",
        cli.workers,
        cli.backends,
        cpu_model()
    );
    for mode in modes {
        let plan = Plan {
            fam,
            mode,
            clients: cli.clients.unwrap_or(clients),
            flows_per_client: cli.flows_per_client.unwrap_or(per),
            backends: cli.backends,
            workers: cli.workers,
            rounds: if cli.quick { 3 } else { cli.rounds.max(1) },
            round_ms: if cli.quick { 50 } else { cli.round_ms.max(1) },
            in_flight: cli.in_flight,
            seed: cli.seed,
            host_cpus: ncpu,
        };
        let v = scenario(cli, &plan, &eal, &pool, &lanes);
        eprintln!(
            "{}: {} worker(s): pipeline {} Mpps, floor {} Mpps (ratio {}), io {} Mpps, wire {} Mpps{}",
            v["scenario"].as_str().unwrap_or("?"),
            plan.workers,
            v["mpps"],
            v["floor_mpps"],
            v["ratio_to_floor"],
            v["io_mpps"],
            v["wire_mpps"],
            if v["ok"] == json!(true) {
                String::new()
            } else {
                format!("; PROBLEMS: {}", v["problems"])
            }
        );
        println!("{v}");
    }
    // Ports close before the rings they use and the pool they draw on.
    for lane in lanes {
        drop(lane.port);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limpet-dpdk-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
