//! What every packet I/O backend gives `limpet run` ([`crate::run`], above
//! it) and what it needs from it: the backends (`crate::afpacket`, and
//! `crate::dpdk` with the `dpdk` feature) build on this module alone, so a
//! new backend is one more file beside them and one arm of
//! `run::IoBackend`.

use crossbeam_channel::{Receiver, Sender, bounded};
use limpet_dataplane::clock::MonotonicClock;
use limpet_dataplane::command::Command;
use limpet_dataplane::io::PacketIo;
use limpet_dataplane::neighbour::InterfaceAddr;
use limpet_dataplane::pipeline::{Worker, WorkerConfig};
use limpet_dataplane::snapshot::Snapshot;
use limpet_dataplane::wire::MacAddr;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::error;

use crate::state::PortMetrics;

/// What a worker does when a poll finds no packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Idle {
    /// Spin: lowest latency, one core per worker at 100% (dedicated cores).
    Spin,
    /// Sleep in poll(2) for up to a millisecond: for shared hosts and tests.
    Wait,
}

/// One interface limpet drives, with the addresses it owns there and the
/// next hop for backends on none of their subnets.
#[derive(Debug, Clone)]
pub struct Link {
    pub iface: String,
    pub addresses: Vec<InterfaceAddr>,
    /// At most one per family.
    pub gateways: Vec<IpAddr>,
}

/// What a backend is asked to start: the part of `limpet run`'s options
/// that concerns the workers and the wire.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSetup<'a> {
    /// The interfaces (ports) to drive, in port order.
    pub links: &'a [Link],
    pub workers: usize,
    /// Worker i on `cpus[i]`; empty leaves them to the scheduler.
    pub cpus: &'a [usize],
    /// The MAC to send from; `None`: the first link's own.
    pub mac: Option<MacAddr>,
    pub worker: &'a WorkerConfig,
    pub idle: Idle,
    /// How long to wait for a link that is down or without carrier at
    /// start (at boot, or in a namespace whose link comes up a moment
    /// later) before giving up.
    pub link_wait: Duration,
}

/// Why a backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("opening interface {iface}: {source}")]
    Io {
        iface: String,
        #[source]
        source: limpet_dataplane::io::afpacket::AfPacketError,
    },
    #[error("AF_XDP on {iface}: {source}")]
    AfXdp {
        iface: String,
        #[source]
        source: limpet_dataplane::io::afxdp::AfXdpError,
    },
    #[cfg(feature = "dpdk")]
    #[error("DPDK: {0}")]
    Dpdk(#[from] limpet_dataplane::io::dpdk::DpdkError),
    #[error("building worker tables: {0}")]
    Tables(#[from] limpet_dataplane::table::TableError),
    #[error("{0}")]
    Other(String),
}

/// How a link's neighbour thread reaches the wire: ARP and `ICMPv6`
/// neighbour frames in, any frame out.
pub trait NeighbourWire: Send + 'static {
    /// Sends one frame.
    fn send(&self, frame: &[u8]) -> Result<(), String>;
    /// Receives one frame into `buf`, waiting up to `timeout`; its length,
    /// or `None` if nothing came.
    fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, String>;
}

/// What the worker loop needs of an I/O backend beyond [`PacketIo`].
pub trait WorkerIo: PacketIo + Send + 'static {
    /// Waits a little for packets (`--idle wait`).
    fn idle_wait(&mut self);
    /// Trouble the backend found since the last call.
    fn health(&mut self) -> Result<(), String>;
}

/// A worker's poll loop, until `stop`.
pub fn worker_loop<I: WorkerIo>(
    index: usize,
    worker: &mut Worker<I, MonotonicClock>,
    idle: Idle,
    stop: &AtomicBool,
    beat: &Heartbeat,
) {
    let mut last_health = Instant::now();
    let mut last_beat = last_health;
    beat.beat();
    while !stop.load(Ordering::Relaxed) {
        if worker.poll() == 0 {
            match idle {
                Idle::Spin => std::hint::spin_loop(),
                Idle::Wait => worker.io_mut().idle_wait(),
            }
        }
        let now = Instant::now();
        if now.duration_since(last_beat) > Heartbeat::PERIOD {
            last_beat = now;
            beat.beat();
        }
        if now.duration_since(last_health) > Duration::from_secs(1) {
            last_health = now;
            if let Err(e) = worker.io_mut().health() {
                error!(worker = index, "interface trouble: {e}");
            }
        }
    }
}

/// When a worker last went round its poll loop, so that the control loop
/// notices one that stopped (a hung or dead worker drops its clients'
/// packets, and a tier must stop sending them here). Written at most every
/// [`Self::PERIOD`] by its worker, read by the control loop.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds since `epoch` at the last beat.
    at_ms: std::sync::atomic::AtomicU64,
}

impl Heartbeat {
    pub const PERIOD: Duration = Duration::from_millis(100);

    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            at_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat (since creation before the first).
    pub fn age(&self) -> Duration {
        let at = Duration::from_millis(self.at_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(at)
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

/// The running workers of a backend, the channels to them, and the rest
/// of what `run` drives: one neighbour wire per link, the MAC limpet sends
/// from, and the ports' state for `/metrics`.
pub struct Workers {
    /// Each waits for one worker to finish (after `stop`).
    pub joins: Vec<Box<dyn FnOnce() + Send>>,
    pub publish: Vec<Sender<Arc<Snapshot>>>,
    pub commands: Vec<Sender<Command>>,
    /// One per worker, in worker order: pass `beats[i]` to its
    /// [`worker_loop`].
    pub beats: Vec<Arc<Heartbeat>>,
    pub retired: Receiver<Arc<Snapshot>>,
    pub wires: Vec<Box<dyn NeighbourWire>>,
    pub mac: MacAddr,
    /// Reads link state and device counters (off the packet path).
    pub ports: Option<Box<dyn FnMut() -> Vec<PortMetrics>>>,
    /// What must outlive the workers (a DPDK backend's ports, pools and
    /// EAL), dropped after they are joined.
    pub keep: Option<Box<dyn std::any::Any>>,
}

impl Workers {
    /// No workers yet; `worker_channels` adds each one's channels.
    pub fn new(mac: MacAddr) -> (Self, Sender<Arc<Snapshot>>) {
        let (retired_tx, retired) = bounded::<Arc<Snapshot>>(64);
        (
            Self {
                joins: Vec::new(),
                publish: Vec::new(),
                commands: Vec::new(),
                beats: Vec::new(),
                retired,
                wires: Vec::new(),
                mac,
                ports: None,
                keep: None,
            },
            retired_tx,
        )
    }

    /// A worker over `io` on an empty snapshot, wired to the control loop.
    pub fn add<I: WorkerIo>(
        &mut self,
        io: I,
        config: &WorkerConfig,
        retired: &Sender<Arc<Snapshot>>,
    ) -> Result<Worker<I, MonotonicClock>, BackendError> {
        let (snap_tx, snap_rx) = bounded(16);
        let (cmd_tx, cmd_rx) = bounded::<Command>(64);
        let mut config = config.clone();
        config.mac = self.mac;
        // Worker k owns the source ports p % n == k: its index here is
        // the one the steering (fanout order, software steering) gives it.
        config.snat.ports.worker = self.publish.len() as u16;
        let worker = Worker::new(
            io,
            MonotonicClock::new(),
            config,
            Arc::new(Snapshot::default()),
        )?
        .with_updates(snap_rx, retired.clone())
        .with_commands(cmd_rx);
        self.publish.push(snap_tx);
        self.commands.push(cmd_tx);
        self.beats.push(Arc::new(Heartbeat::new()));
        Ok(worker)
    }
}
