//! Steady forwarding through real workers while the configuration changes,
//! with every packet checked against the snapshot that processed it.
//!
//! Each worker (`Worker<MemoryIo>`, the real pipeline) runs on its own
//! thread, which also plays both ends of the wire for it: every `interval`
//! it injects one burst of TCP traffic towards the service ports of the
//! snapshot the worker holds (new connections' SYNs, the backends'
//! SYN-ACKs, the clients' data segments of connections already open),
//! polls, and checks every packet of the burst against the snapshot the
//! poll ran on (`Worker::snapshot` after the poll: a worker swaps only at a
//! burst boundary, at the start of a poll):
//!
//! - **dropped**: any packet the worker dropped, whatever the reason;
//! - **unserved**: a packet not forwarded although the snapshot that
//!   processed it serves its destination (a SYN to a service port that
//!   snapshot no longer has is correctly not served, and counted apart);
//! - **unusable**: a new connection sent to a backend that is not in the
//!   usable set of its service port in that snapshot;
//! - **moved**: a packet of an established connection sent to another
//!   backend than its SYN was (TCP keeps its backend, as with conntrack,
//!   even after the backend or the whole service is gone);
//! - **misrouted reply**: a backend's reply not translated back to the
//!   service address its client connected to.
//!
//! Between bursts the thread keeps polling (an idle poll is where a
//! worker takes a new snapshot), so a published snapshot is adopted as
//! soon as a spinning worker would; each adoption is timed.
#![allow(dead_code)] // each test binary uses a part

pub mod churn;
pub mod control;

use limpet_dataplane::clock::MonotonicClock;
use limpet_dataplane::icmp::IcmpConfig;
use limpet_dataplane::io::{BURST, MemoryIo};
use limpet_dataplane::pipeline::{Action, Worker, WorkerConfig};
use limpet_dataplane::snapshot::Snapshot;
use limpet_dataplane::stats::{DropReason, WorkerStats};
use limpet_pktgen::{ACK, PacketSpec, RST, SYN, TcpFlags, parse_frame};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The shape of each worker's traffic.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// Packets injected per burst (at most [`BURST`]).
    pub burst: usize,
    /// Time between bursts: `burst / interval` packets a second per worker.
    pub interval: Duration,
    /// Connections open at once per worker.
    pub connections: usize,
    /// Data segments each connection sends before it is retired (the last
    /// one resets the connection).
    pub segments: u32,
    /// What a worker thread does between polls while no burst is due:
    /// `None` spins (as `--idle spin`), `Some(d)` sleeps `d`.
    pub idle: Option<Duration>,
    /// First client address (each connection gets the next one, wrapping
    /// after 65,536).
    pub first_client: Ipv4Addr,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            burst: 16,
            interval: Duration::from_millis(1),
            connections: 64,
            segments: 8,
            idle: Some(Duration::from_micros(100)),
            first_client: Ipv4Addr::new(198, 19, 0, 0),
        }
    }
}

/// Counts of checks that failed, by kind (see the module documentation).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Violations {
    pub dropped: u64,
    pub unserved: u64,
    pub unusable: u64,
    pub moved: u64,
    pub misrouted_reply: u64,
}

impl Violations {
    pub fn total(&self) -> u64 {
        self.dropped + self.unserved + self.unusable + self.moved + self.misrouted_reply
    }
}

/// What one worker's thread saw.
#[derive(Debug, Default, Clone)]
pub struct WorkerLog {
    pub injected: u64,
    pub forwarded: u64,
    pub new_connections: u64,
    pub replies: u64,
    pub segments: u64,
    /// SYNs to a service port the processing snapshot no longer had (the
    /// generator aimed at the one before): correctly not served.
    pub absent: u64,
    /// SYNs to a service port the processing snapshot has without a usable
    /// endpoint: dropped (no backend), as kube-proxy rejects them. Through
    /// the API a service and its slice arrive on two watches, in either
    /// order, so a service created slice first can still be seen for a
    /// moment without endpoints (and one deleted service first, with none
    /// left); a manifest file holds both, so that path never shows one.
    pub empty: u64,
    pub violations: Violations,
    /// The first few failures, in words.
    pub details: Vec<String>,
    /// Each generation this worker ran, and when it first had it (right
    /// after the poll that took it).
    pub adopted: Vec<(u64, Instant)>,
    pub stats: WorkerStats,
    pub elapsed: Duration,
}

impl WorkerLog {
    fn fail(&mut self, what: impl FnOnce() -> String) {
        if self.details.len() < 20 {
            self.details.push(what());
        }
    }

    /// When this worker first ran a generation at least `g`.
    pub fn adopted_at(&self, g: u64) -> Option<Instant> {
        self.adopted.iter().find(|(x, _)| *x >= g).map(|(_, t)| *t)
    }
}

/// Workers forwarding on their own threads; see the module documentation.
pub struct Forwarders {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<WorkerLog>>,
    publisher: Publisher,
    generations: Vec<Arc<AtomicU64>>,
    forwarded: Vec<Arc<AtomicU64>>,
}

/// Hands snapshots to every worker, as the control loop does (a bounded
/// channel each; old snapshots come back to be freed here).
#[derive(Clone)]
pub struct Publisher {
    txs: Vec<crossbeam_channel::Sender<Arc<Snapshot>>>,
    retired: crossbeam_channel::Receiver<Arc<Snapshot>>,
}

impl Publisher {
    pub fn publish(&self, snapshot: &Arc<Snapshot>) {
        for tx in &self.txs {
            tx.send_timeout(Arc::clone(snapshot), Duration::from_secs(5))
                .expect("a worker did not take the snapshot");
        }
        self.free_retired();
    }

    fn free_retired(&self) {
        while self.retired.try_recv().is_ok() {}
    }
}

impl Forwarders {
    /// Starts `workers` workers on `first`, each forwarding `traffic`.
    pub fn start(workers: usize, first: &Arc<Snapshot>, traffic: &Traffic) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (retired_tx, retired) = crossbeam_channel::bounded(64);
        let mut out = Self {
            stop: Arc::clone(&stop),
            threads: Vec::new(),
            publisher: Publisher {
                txs: Vec::new(),
                retired,
            },
            generations: Vec::new(),
            forwarded: Vec::new(),
        };
        for w in 0..workers {
            // As run.rs wires its workers.
            let (tx, rx) = crossbeam_channel::bounded(16);
            let worker = Worker::new(
                MemoryIo::new(4 * BURST),
                MonotonicClock::new(),
                WorkerConfig {
                    // Room for every connection open at once many times
                    // over: eviction is not what this harness is about.
                    flow_capacity: 1 << 18,
                    affinity_capacity: 1 << 18,
                    flow_capacity_v6: Some(64),
                    affinity_capacity_v6: Some(64),
                    // The model counts a packet to a service port without a
                    // usable endpoint as dropped (no backend), as limpet
                    // does without rejects; rejects are e2e_icmp's subject.
                    icmp: IcmpConfig {
                        reject_rate: 0,
                        ..IcmpConfig::default()
                    },
                    ..WorkerConfig::default()
                },
                Arc::clone(first),
            )
            .expect("worker tables")
            .with_updates(rx, retired_tx.clone());
            let generation = Arc::new(AtomicU64::new(first.generation()));
            let forwarded = Arc::new(AtomicU64::new(0));
            let mut traffic = traffic.clone();
            // Workers' clients apart.
            traffic.first_client =
                Ipv4Addr::from(u32::from(traffic.first_client) + (w as u32) * 65_536);
            let (stop, g, f) = (
                Arc::clone(&stop),
                Arc::clone(&generation),
                Arc::clone(&forwarded),
            );
            out.threads.push(
                std::thread::Builder::new()
                    .name(format!("live-worker-{w}"))
                    .spawn(move || Generator::new(worker, traffic, g, f).run(&stop))
                    .expect("worker thread"),
            );
            out.publisher.txs.push(tx);
            out.generations.push(generation);
            out.forwarded.push(forwarded);
        }
        out
    }

    /// Hands `snapshot` to every worker.
    pub fn publish(&self, snapshot: &Arc<Snapshot>) {
        self.publisher.publish(snapshot);
    }

    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The generation each worker runs now.
    pub fn generations(&self) -> Vec<u64> {
        self.generations
            .iter()
            .map(|g| g.load(Ordering::Relaxed))
            .collect()
    }

    /// Packets forwarded so far, all workers.
    pub fn forwarded(&self) -> u64 {
        self.forwarded
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until every worker runs generation `g` or later.
    pub fn wait_all(&self, g: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.generations().iter().any(|&x| x < g) {
            assert!(
                Instant::now() < deadline,
                "workers at {:?}, not all at {g} after {within:?}",
                self.generations()
            );
            std::thread::sleep(Duration::from_micros(200));
            self.publisher.free_retired();
        }
    }

    /// Waits until the workers have forwarded `n` more packets.
    pub fn wait_forwarded(&self, n: u64, within: Duration) {
        let target = self.forwarded() + n;
        let deadline = Instant::now() + within;
        while self.forwarded() < target {
            assert!(
                Instant::now() < deadline,
                "workers forwarded {} of {n} packets in {within:?}",
                n + self.forwarded() - target
            );
            std::thread::sleep(Duration::from_millis(5));
            self.publisher.free_retired();
        }
    }

    /// Stops the workers; their logs.
    pub fn stop(self) -> Vec<WorkerLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a worker thread panicked"))
            .collect()
    }
}

/// One connection the generator plays both ends of.
#[derive(Debug, Clone, Copy)]
struct Conn {
    client: Ipv4Addr,
    client_port: u16,
    vip: Ipv4Addr,
    vport: u16,
    /// Set once the SYN was forwarded.
    backend: Option<(IpAddr, u16)>,
    replied: bool,
    sent: u32,
}

/// What a packet of the burst was.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Syn(usize),
    SynAck(usize),
    Data(usize),
}

struct Generator {
    worker: Worker<MemoryIo, MonotonicClock>,
    traffic: Traffic,
    generation: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    conns: Vec<Conn>,
    /// Connections that need their next packet, oldest first.
    due: VecDeque<usize>,
    free: Vec<usize>,
    next_client: u32,
    next_port: u16,
    next_target: usize,
    frame: Vec<u8>,
    log: WorkerLog,
}

impl Generator {
    fn new(
        worker: Worker<MemoryIo, MonotonicClock>,
        traffic: Traffic,
        generation: Arc<AtomicU64>,
        forwarded: Arc<AtomicU64>,
    ) -> Self {
        Self {
            worker,
            traffic,
            generation,
            forwarded,
            conns: Vec::new(),
            due: VecDeque::new(),
            free: Vec::new(),
            next_client: 0,
            next_port: 1024,
            next_target: 0,
            frame: vec![0; 256],
            log: WorkerLog::default(),
        }
    }

    fn run(mut self, stop: &AtomicBool) -> WorkerLog {
        let started = Instant::now();
        let mut next_burst = started;
        let mut seen = self.worker.snapshot().generation();
        self.log.adopted.push((seen, started));
        let mut sent = Vec::with_capacity(BURST);
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_burst {
                next_burst += self.traffic.interval;
                if next_burst < now {
                    // Fell behind (a loaded machine): no catching up in a rush.
                    next_burst = now + self.traffic.interval;
                }
                self.fill(&mut sent);
                let n = self.worker.poll();
                let g = self.worker.snapshot().generation();
                if g != seen {
                    seen = g;
                    self.log.adopted.push((g, Instant::now()));
                    self.generation.store(g, Ordering::Relaxed);
                }
                assert_eq!(n, sent.len(), "the worker took the whole burst");
                self.check(&sent);
                sent.clear();
            } else {
                self.worker.poll();
                let g = self.worker.snapshot().generation();
                if g != seen {
                    seen = g;
                    self.log.adopted.push((g, Instant::now()));
                    self.generation.store(g, Ordering::Relaxed);
                }
                match self.traffic.idle {
                    Some(d) => std::thread::sleep(d),
                    None => std::hint::spin_loop(),
                }
            }
        }
        self.log.elapsed = started.elapsed();
        self.log.stats = self.worker.stats();
        self.log
    }

    /// The next service port to open a connection to, from the snapshot
    /// the worker holds now (IPv4 TCP frontends).
    fn target(&mut self) -> Option<(Ipv4Addr, u16)> {
        let snapshot = Arc::clone(self.worker.snapshot());
        let ports = snapshot.ports();
        for _ in 0..ports.len() {
            self.next_target = (self.next_target + 1) % ports.len();
            let p = &ports[self.next_target];
            if p.spec.protocol != 6 || p.spec.backends.is_empty() {
                continue;
            }
            if let Some(&(IpAddr::V4(a), port)) = p.spec.frontends.first() {
                return Some((a, port));
            }
        }
        None
    }

    fn inject(&mut self, spec: &PacketSpec) {
        let len = spec.write_into(&mut self.frame).expect("frame");
        let frame = &self.frame[..len];
        assert!(self.worker.io_mut().inject(frame, 0), "buffer pool empty");
        self.log.injected += 1;
    }

    /// Injects one burst: packets of connections due first, then new
    /// connections up to the connection count.
    fn fill(&mut self, sent: &mut Vec<Sent>) {
        while sent.len() < self.traffic.burst {
            let open = self.conns.len() - self.free.len();
            let pick_due = !self.due.is_empty()
                && (open >= self.traffic.connections || !sent.len().is_multiple_of(4));
            if pick_due {
                let i = self.due.pop_front().expect("due");
                let c = self.conns[i];
                let (backend, port) = c.backend.expect("due connections are open");
                if c.replied {
                    // The last segment resets the connection: its flow
                    // entry is then the first to go when the table is full.
                    let last = c.sent + 1 >= self.traffic.segments;
                    let flags = if last { TcpFlags(ACK.0 | RST.0) } else { ACK };
                    let spec = PacketSpec::tcp(c.client, c.vip, c.client_port, c.vport)
                        .flags(flags)
                        .seq(1 + c.sent * 16)
                        .payload_len(if last { 0 } else { 16 });
                    self.inject(&spec);
                    sent.push(Sent::Data(i));
                } else {
                    let spec = PacketSpec::tcp(backend, c.client, port, c.client_port)
                        .flags(TcpFlags(SYN.0 | ACK.0));
                    self.inject(&spec);
                    sent.push(Sent::SynAck(i));
                }
                continue;
            }
            let Some((vip, vport)) = self.target() else {
                break;
            };
            let client =
                Ipv4Addr::from(u32::from(self.traffic.first_client) + (self.next_client % 65_536));
            self.next_client += 1;
            self.next_port = if self.next_port == u16::MAX {
                1024
            } else {
                self.next_port + 1
            };
            let conn = Conn {
                client,
                client_port: self.next_port,
                vip,
                vport,
                backend: None,
                replied: false,
                sent: 0,
            };
            let i = if let Some(i) = self.free.pop() {
                self.conns[i] = conn;
                i
            } else {
                self.conns.push(conn);
                self.conns.len() - 1
            };
            let spec = PacketSpec::tcp(client, vip, conn.client_port, vport).flags(SYN);
            self.inject(&spec);
            sent.push(Sent::Syn(i));
        }
    }

    /// Checks every packet of the last burst against the snapshot that
    /// processed it.
    #[allow(clippy::too_many_lines)] // one match over what was sent
    fn check(&mut self, sent: &[Sent]) {
        let mut actions = [Action::SlowPath; BURST];
        actions[..sent.len()].copy_from_slice(self.worker.last_actions(sent.len()));
        let snapshot = Arc::clone(self.worker.snapshot());
        let generation = snapshot.generation();
        for (k, s) in sent.iter().enumerate() {
            let action = actions[k];
            let out = if action == Action::Forward {
                self.log.forwarded += 1;
                let (_, frame) = self.worker.io_mut().take_sent().expect("a sent frame");
                Some(parse_frame(&frame).expect("forwarded frame parses"))
            } else {
                None
            };
            match *s {
                Sent::Syn(i) => {
                    let c = self.conns[i];
                    let port = snapshot.service(IpAddr::V4(c.vip), c.vport, 6);
                    let Some(out) = out else {
                        self.free.push(i);
                        match (action, port) {
                            (Action::SlowPath, None) => self.log.absent += 1,
                            (Action::Drop(DropReason::NoBackend), Some(p))
                                if p.spec.backends.is_empty() =>
                            {
                                self.log.empty += 1;
                            }
                            (Action::Drop(reason), _) => {
                                self.log.violations.dropped += 1;
                                self.log.fail(|| {
                                    format!(
                                        "gen {generation}: SYN to {}:{} dropped ({reason:?})",
                                        c.vip, c.vport
                                    )
                                });
                            }
                            _ => {
                                self.log.violations.unserved += 1;
                                self.log.fail(|| {
                                    format!("gen {generation}: SYN to {}:{} not served ({action:?}) though the snapshot has it", c.vip, c.vport)
                                });
                            }
                        }
                        continue;
                    };
                    self.log.new_connections += 1;
                    let backend = (out.dst, out.dst_port);
                    let usable = port.is_some_and(|p| {
                        p.spec.backends.iter().any(|b| (b.addr, b.port) == backend)
                    });
                    if !usable {
                        self.log.violations.unusable += 1;
                        self.log.fail(|| {
                            format!(
                                "gen {generation}: new connection to {}:{} sent to {}:{}, not usable there",
                                c.vip, c.vport, backend.0, backend.1
                            )
                        });
                    }
                    self.conns[i].backend = Some(backend);
                    self.due.push_back(i);
                }
                Sent::SynAck(i) => {
                    let c = self.conns[i];
                    self.log.replies += 1;
                    match out {
                        Some(o)
                            if o.src == IpAddr::V4(c.vip)
                                && o.src_port == c.vport
                                && o.dst == IpAddr::V4(c.client) => {}
                        other => {
                            self.record_loss(action, other.is_some(), generation, || {
                                format!(
                                    "reply of {}:{} -> {}:{}",
                                    c.client, c.client_port, c.vip, c.vport
                                )
                            });
                        }
                    }
                    self.conns[i].replied = true;
                    self.due.push_back(i);
                }
                Sent::Data(i) => {
                    let c = self.conns[i];
                    self.log.segments += 1;
                    match out {
                        Some(o) if Some((o.dst, o.dst_port)) == c.backend => {}
                        Some(o) => {
                            self.log.violations.moved += 1;
                            self.log.fail(|| {
                                format!(
                                    "gen {generation}: established {}:{} -> {}:{} moved from {:?} to {}:{}",
                                    c.client, c.client_port, c.vip, c.vport, c.backend, o.dst, o.dst_port
                                )
                            });
                        }
                        None => self.record_loss(action, false, generation, || {
                            format!(
                                "segment of {}:{} -> {}:{}",
                                c.client, c.client_port, c.vip, c.vport
                            )
                        }),
                    }
                    self.conns[i].sent += 1;
                    if self.conns[i].sent >= self.traffic.segments {
                        self.free.push(i);
                    } else {
                        self.due.push_back(i);
                    }
                }
            }
        }
        self.forwarded.store(self.log.forwarded, Ordering::Relaxed);
    }

    /// A packet of an open connection that was not forwarded as it should.
    fn record_loss(
        &mut self,
        action: Action,
        forwarded: bool,
        generation: u64,
        what: impl FnOnce() -> String,
    ) {
        if forwarded {
            self.log.violations.misrouted_reply += 1;
            self.log
                .fail(|| format!("gen {generation}: {} misrouted", what()));
        } else if let Action::Drop(reason) = action {
            self.log.violations.dropped += 1;
            self.log
                .fail(|| format!("gen {generation}: {} dropped ({reason:?})", what()));
        } else {
            self.log.violations.unserved += 1;
            self.log
                .fail(|| format!("gen {generation}: {} not forwarded ({action:?})", what()));
        }
    }
}

/// Sums the workers' logs.
pub fn total(logs: &[WorkerLog]) -> WorkerLog {
    let mut t = WorkerLog::default();
    for l in logs {
        t.injected += l.injected;
        t.forwarded += l.forwarded;
        t.new_connections += l.new_connections;
        t.replies += l.replies;
        t.segments += l.segments;
        t.absent += l.absent;
        t.empty += l.empty;
        t.violations.dropped += l.violations.dropped;
        t.violations.unserved += l.violations.unserved;
        t.violations.unusable += l.violations.unusable;
        t.violations.moved += l.violations.moved;
        t.violations.misrouted_reply += l.violations.misrouted_reply;
        t.details.extend(l.details.iter().cloned());
        t.elapsed = t.elapsed.max(l.elapsed);
        for (a, b) in t.stats.drops.iter_mut().zip(l.stats.drops) {
            *a += b;
        }
    }
    t
}

/// Asserts that nothing went wrong in any worker and that the traffic
/// proved something (connections opened, replies and segments sent).
pub fn assert_clean(logs: &[WorkerLog]) {
    let t = total(logs);
    assert_eq!(
        t.violations,
        Violations::default(),
        "{} failed checks; first: {:#?}",
        t.violations.total(),
        t.details
    );
    let mut drops = t.stats.drops;
    let no_backend = std::mem::take(&mut drops[DropReason::NoBackend as usize]);
    assert_eq!(
        (no_backend, drops.iter().sum::<u64>()),
        (t.empty, 0),
        "worker drop counters: {:?}",
        t.stats.drops
    );
    assert_eq!(
        t.injected,
        t.forwarded + t.absent + t.empty,
        "every packet is forwarded, or aimed at a service port already gone or without endpoints"
    );
    assert!(
        t.new_connections > 100 && t.segments > 100 && t.replies > 100,
        "too little traffic to prove anything: {t:?}"
    );
}
