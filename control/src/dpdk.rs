//! `limpet run --io dpdk:PORT[,PORT2]` (cargo feature `dpdk`): EAL from
//! limpet's own flags, one RX/TX queue pair per worker on every port, each
//! worker on its own EAL lcore, neighbour resolution through rings to and
//! from the workers, and the ports' link state and counters for `/metrics`.
//!
//! # Where a connection's packets meet
//!
//! With one worker there is nothing to decide. With several, both
//! directions of a `nat` connection must reach the worker holding its
//! translation, and what they share is the client address (see
//! `limpet_dataplane::io::dpdk`):
//!
//! - two ports (two-armed, the client-facing port listed first) that can
//!   both hash one address alone: RSS over the source address on the
//!   first, over the destination on the second, same key and table;
//! - otherwise (one-armed, or ports without that ability): RSS over the
//!   address pair where the port has it (to spread the work), then
//!   software steering: each worker hands the packets whose client another
//!   worker owns to that worker over a single-producer ring.
//!
//! # Neighbours
//!
//! Only the workers see a DPDK port's traffic, and only they may use its
//! queues, so a link's neighbour thread works through a [`SlowPath`]: the
//! workers pass the ARP / ND frames the pipeline leaves to the slow path
//! up one ring, and worker 0 sends what the neighbour thread queues on the
//! other.

use crate::backend::{BackendError, NeighbourWire, WorkerIo, WorkerSetup, Workers, worker_loop};
use crate::state::PortMetrics;
use limpet_dataplane::io::PacketBuf;
use limpet_dataplane::io::dpdk::{
    DpdkIo, Eal, EalConfig, LinkStatus, Mempool, Port, PortConfig, RssMode, SlowPath, SteeringMesh,
};
use limpet_dataplane::wire::MacAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// What `limpet run` needs beyond [`WorkerSetup`] to drive DPDK ports.
#[derive(Debug, Clone)]
pub struct DpdkOptions {
    pub eal: EalConfig,
    /// Mbufs per pool; `None`: enough for every queue, ring and cache.
    pub mbufs: Option<u32>,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    /// Slots of each ring between two workers (software steering).
    pub steering_ring: u32,
}

impl Default for DpdkOptions {
    fn default() -> Self {
        Self {
            eal: EalConfig::default(),
            mbufs: None,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            steering_ring: 1024,
        }
    }
}

impl DpdkOptions {
    /// Mbufs enough for every descriptor of every queue, the steering
    /// rings, the neighbour rings, the per-lcore caches and the bursts in
    /// flight, as a power of two less one (the size mempools like best).
    fn pool_size(&self, ports: usize, workers: usize) -> u32 {
        let descriptors =
            ports * workers * (usize::from(self.rx_descriptors) + usize::from(self.tx_descriptors));
        let steering = workers * workers.saturating_sub(1) * self.steering_ring as usize;
        let neighbours = ports * 2 * 1024;
        let caches = (workers + 1) * POOL_CACHE as usize;
        let bursts = workers * 4 * limpet_dataplane::io::BURST;
        let n = (descriptors + steering + neighbours + caches + bursts + 1024).next_power_of_two();
        u32::try_from(n - 1).unwrap_or(u32::MAX)
    }
}

/// Per-lcore mbuf cache of each pool.
const POOL_CACHE: u32 = 256;

impl WorkerIo for DpdkIo {
    fn idle_wait(&mut self) {
        // Poll-mode drivers have nothing to wait on: nap instead (`--idle
        // wait` is for shared hosts and tests).
        std::thread::sleep(Duration::from_micros(500));
    }

    fn health(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// A link's neighbour thread's way to the wire (see the module docs).
struct DpdkWire {
    path: Arc<SlowPath>,
    pool: Arc<Mempool>,
    /// The link's port index (the pipeline's port number).
    port: u16,
}

impl NeighbourWire for DpdkWire {
    fn send(&self, frame: &[u8]) -> Result<(), String> {
        let mut buf = self
            .pool
            .mbuf_from(frame)
            .ok_or("no mbuf for a neighbour frame (pool exhausted)")?;
        buf.set_port(self.port);
        self.path
            .to_wire
            .push(buf)
            .map_err(|_| "the ring to the wire is full (worker 0 not polling?)".to_owned())
    }

    fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.path.to_control.pop() {
                let data = frame.data();
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                return Ok(Some(n));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Each port's RSS mode, and whether software steering is needed.
fn choose_rss(
    eal: &Eal,
    ids: &[u16],
    workers: usize,
) -> Result<(Vec<RssMode>, bool), BackendError> {
    if workers == 1 {
        return Ok((vec![RssMode::Pair; ids.len()], false));
    }
    if let [client, backend] = ids
        && eal.supports_rss(*client, RssMode::ClientIsSource)?
        && eal.supports_rss(*backend, RssMode::ClientIsDestination)?
    {
        info!(
            "RSS on the client address: source on the first port, destination on the second \
             (list the client-facing port first)"
        );
        return Ok((
            vec![RssMode::ClientIsSource, RssMode::ClientIsDestination],
            false,
        ));
    }
    let mut modes = Vec::with_capacity(ids.len());
    for &id in ids {
        modes.push(if eal.supports_rss(id, RssMode::Pair)? {
            RssMode::Pair
        } else {
            RssMode::Off
        });
    }
    info!(
        ?modes,
        "software steering by client address between workers (no RSS on the client address alone)"
    );
    Ok((modes, true))
}

/// Everything that must outlive the workers, dropped in field order once
/// they are joined: ports before pools and rings, EAL last.
struct Held {
    _ports: Vec<Arc<Port>>,
    _paths: Vec<Arc<SlowPath>>,
    _mesh: Option<Arc<SteeringMesh>>,
    _pools: Vec<Arc<Mempool>>,
    _eal: Eal,
}

/// Starts EAL, the ports and one worker per lcore.
pub fn start(
    opts: &WorkerSetup<'_>,
    dpdk: &DpdkOptions,
    stop: &Arc<AtomicBool>,
) -> Result<Workers, BackendError> {
    let eal = Eal::init(&dpdk.eal)?;
    info!(args = ?eal.args(), "EAL up");
    let lcores = eal.worker_lcores();
    if lcores.len() < opts.workers {
        return Err(BackendError::Other(format!(
            "--workers {} needs as many worker lcores, EAL has {} besides the main one \
             (give more with --dpdk-cores or --dpdk-lcores)",
            opts.workers,
            lcores.len()
        )));
    }
    let mut ids = Vec::with_capacity(opts.links.len());
    for link in opts.links {
        ids.push(eal.port_by_name(&link.iface).map_err(|e| {
            BackendError::Other(format!(
                "{e}; EAL has {} ports (a PCI device must be bound to a DPDK driver and allowed \
                 with --pci, a virtual device created with --vdev)",
                eal.port_count()
            ))
        })?);
    }
    let (modes, steer) = choose_rss(&eal, &ids, opts.workers)?;
    let mbufs = dpdk
        .mbufs
        .unwrap_or_else(|| dpdk.pool_size(ids.len(), opts.workers));
    let pools = eal.pools_per_socket(mbufs, POOL_CACHE)?;
    let queues = u16::try_from(opts.workers)
        .map_err(|_| BackendError::Other("too many workers".to_owned()))?;
    let mut ports = Vec::with_capacity(ids.len());
    for (&id, &rss) in ids.iter().zip(&modes) {
        let config = PortConfig {
            queues,
            rx_descriptors: dpdk.rx_descriptors,
            tx_descriptors: dpdk.tx_descriptors,
            rss,
            promiscuous: true,
        };
        let port = Port::start(&eal, id, &config, &pools)?;
        let link = port.link()?;
        info!(
            port = port.name(),
            id,
            queues,
            ?rss,
            link_up = link.up,
            speed_mbps = link.speed_mbps,
            "port started"
        );
        ports.push(Arc::new(port));
    }
    let mac = match opts.mac {
        Some(mac) => mac,
        None => MacAddr(ports[0].mac()?),
    };
    let mut paths = Vec::with_capacity(ports.len());
    for i in 0..ports.len() {
        paths.push(Arc::new(SlowPath::new(&eal, &format!("limpet_l2_{i}"))?));
    }
    let mesh = if steer {
        Some(Arc::new(SteeringMesh::new(
            &eal,
            "limpet_steer",
            opts.workers,
            dpdk.steering_ring,
        )?))
    } else {
        None
    };

    let mut workers = launch_workers(
        opts,
        &eal,
        &lcores,
        &ports,
        &paths,
        mesh.as_ref(),
        mac,
        stop,
    )?;
    workers.wires = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            Box::new(DpdkWire {
                path: Arc::clone(path),
                pool: Arc::clone(&pools[0]),
                port: i as u16,
            }) as Box<dyn NeighbourWire>
        })
        .collect();
    workers.ports = Some(port_probe(ports.clone()));
    workers.keep = Some(Box::new(Held {
        _ports: ports,
        _paths: paths,
        _mesh: mesh,
        _pools: pools,
        _eal: eal,
    }));
    Ok(workers)
}

/// One worker per lcore, each with queue `i` of every port.
#[allow(clippy::too_many_arguments)]
fn launch_workers(
    opts: &WorkerSetup<'_>,
    eal: &Eal,
    lcores: &[u32],
    ports: &[Arc<Port>],
    paths: &[Arc<SlowPath>],
    mesh: Option<&Arc<SteeringMesh>>,
    mac: MacAddr,
    stop: &Arc<AtomicBool>,
) -> Result<Workers, BackendError> {
    let (mut workers, retired) = Workers::new(mac);
    let mut built = Vec::with_capacity(opts.workers);
    for i in 0..opts.workers {
        let mut io = DpdkIo::new(ports, i as u16)?.with_slow_path(paths.to_vec(), i == 0);
        if let Some(mesh) = mesh {
            io = io.with_steering(Arc::clone(mesh), i)?;
        }
        built.push(workers.add(io, opts.worker, &retired)?);
    }
    for (i, mut worker) in built.into_iter().enumerate() {
        let lcore = lcores[i];
        let (stop_here, idle) = (Arc::clone(stop), opts.idle);
        let beat = Arc::clone(&workers.beats[i]);
        if let Err(e) = eal.launch(lcore, move || {
            worker_loop(i, &mut worker, idle, &stop_here, &beat);
        }) {
            // Stop the workers already running before EAL goes.
            stop.store(true, Ordering::Relaxed);
            for join in workers.joins.drain(..) {
                join();
            }
            return Err(e.into());
        }
        info!(worker = i, lcore, "worker running on its lcore");
        let eal = eal.clone();
        workers.joins.push(Box::new(move || {
            if let Err(e) = eal.wait(lcore) {
                error!(worker = i, lcore, "worker ended badly: {e}");
            }
        }));
    }

    Ok(workers)
}

/// Reads every port's link state and extended counters.
fn port_probe(ports: Vec<Arc<Port>>) -> Box<dyn FnMut() -> Vec<PortMetrics>> {
    Box::new(move || {
        ports
            .iter()
            .map(|p| {
                let link = p.link().unwrap_or_else(|e| {
                    warn!(port = p.name(), "link state: {e}");
                    LinkStatus {
                        up: false,
                        speed_mbps: 0,
                        full_duplex: false,
                    }
                });
                PortMetrics {
                    name: p.name().to_owned(),
                    link_up: link.up,
                    speed_mbps: link.speed_mbps,
                    xstats: p.xstats().unwrap_or_default(),
                }
            })
            .collect()
    })
}
