//! `limpet run`: the long-running process. Threads:
//!
//! - one poll-mode worker per `--workers`, each with its own tables and
//!   its own I/O: `AF_PACKET` sockets joined in a fanout group, or (with
//!   the `dpdk` feature, [`crate::dpdk`]) one queue pair per DPDK port, on
//!   its own EAL lcore;
//! - one neighbour thread per interface: answers ARP / neighbour
//!   solicitations for the addresses limpet serves and resolves backends'
//!   MAC addresses, over a [`NeighbourWire`]: a raw socket that only sees
//!   ARP and `ICMPv6` (`AF_PACKET`), or rings to and from the workers
//!   (DPDK, where only the workers see the wire);
//! - the admin API (loopback HTTP);
//! - the control loop (this thread): loads the configuration, watches it
//!   (file notification and SIGHUP), compiles snapshots and publishes them
//!   to every worker over lock-free channels. A configuration that fails to
//!   load or validate is refused: at start-up limpet exits non-zero, on a
//!   reload it keeps serving the previous one and says why.

use crate::announce::{AnnounceError, AnnounceIndex, AnnounceOptions, Announcer};
use crate::backend::{BackendError, Heartbeat, NeighbourWire, WorkerSetup, Workers};
pub use crate::backend::{Idle, Link};
use crate::compile::{CompileStats, SnapshotCompiler};
use crate::config::{ConfigError, ConfigSource};
use crate::debounce::Debounce;
use crate::drain::Drains;
use crate::health::{HealthIndex, HealthServer};
use crate::kube_source::{KubeOptions, KubeSource, KubeUpdate};
use crate::state::PortMetrics;
use crate::state::Shared;
use crate::translate::SpecInfo;
use crossbeam_channel::{Receiver, Sender, bounded, select, tick, unbounded};
use limpet_dataplane::affinity::{BackendId, ServicePortId};
use limpet_dataplane::neighbour::{Handled, InterfaceAddr, NeighbourCounters, Neighbours};
use limpet_dataplane::pipeline::WorkerConfig;
use limpet_dataplane::snapshot::{ServicePortSpec, Snapshot};
use limpet_dataplane::wire::MacAddr;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Where service state comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A manifest file or directory, watched; a load is all or nothing.
    Manifests(ConfigSource),
    /// The Kubernetes API (a kubeconfig, or the in-cluster config).
    Kubernetes(KubeOptions),
}

/// Which packet I/O drives the links.
#[derive(Debug, Clone)]
pub enum IoBackend {
    /// `AF_PACKET` rings on kernel interfaces (`Link::iface` is the
    /// interface name), with limpet's shedding XDP program attached as
    /// asked (`None`: without it).
    AfPacket(Option<limpet_dataplane::io::afxdp::XdpAttach>),
    /// `AF_XDP` sockets on kernel interfaces, behind limpet's steering
    /// XDP program (`Link::iface` is the interface name), attached as asked.
    AfXdp(limpet_dataplane::io::afxdp::XdpAttach),
    /// DPDK ports (`Link::iface` is the port's name: a PCI address or a
    /// virtual device's name), with EAL set up from these options.
    #[cfg(feature = "dpdk")]
    Dpdk(crate::dpdk::DpdkOptions),
}

/// Everything `limpet run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub source: Source,
    pub io: IoBackend,
    /// The interfaces limpet drives, in port order.
    pub links: Vec<Link>,
    pub workers: usize,
    /// CPUs to pin workers to, worker i on `cpus[i]`; empty leaves them
    /// to the scheduler.
    pub cpus: Vec<usize>,
    pub mac: Option<MacAddr>,
    pub admin: SocketAddr,
    /// With it, `/v1` on the admin API answers only requests bearing
    /// `Authorization: Bearer <token>`.
    pub admin_token: Option<Arc<str>>,
    /// A second, read-only listener: `/metrics`, `/healthz`, `/readyz`.
    pub metrics: Option<SocketAddr>,
    pub worker: WorkerConfig,
    pub idle: Idle,
    /// See [`WorkerSetup::link_wait`].
    pub link_wait: std::time::Duration,
    /// Where the tables are saved on a planned stop and checkpointed, and
    /// read back at start; `None`: they start empty every time.
    pub state: Option<crate::checkpoint::StateOptions>,
    /// Announce service addresses through this node's BGP speaker.
    pub announce: Option<AnnounceOptions>,
}

impl RunOptions {
    /// What the I/O backend is asked to start.
    fn worker_setup(&self) -> WorkerSetup<'_> {
        WorkerSetup {
            links: &self.links,
            workers: self.workers,
            cpus: &self.cpus,
            mac: self.mac,
            worker: &self.worker,
            idle: self.idle,
            link_wait: self.link_wait,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] crate::kube_source::KubeError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("--io names no interface")]
    NoInterface,
    #[error("compiling the service snapshot: {0}")]
    Snapshot(#[from] limpet_dataplane::snapshot::SnapshotError),
    #[error(
        "--admin {0} is not a loopback address: its /v1 API lists client addresses and deletes affinity entries; give --admin-token-file, or serve metrics alone with --metrics"
    )]
    AdminExposed(SocketAddr),
    #[error("listening on {what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--announce: {0}")]
    Announce(#[from] AnnounceError),
    #[error("{0}")]
    Other(String),
}

/// What the neighbour thread is told.
struct L2Update {
    served: Vec<IpAddr>,
    wanted: Vec<IpAddr>,
}

/// What a link's neighbour thread reports: each wanted backend address
/// and its MAC if resolved on that link, and its counters.
struct L2Report {
    link: usize,
    resolved: HashMap<IpAddr, Option<MacAddr>>,
    counters: NeighbourCounters,
}

fn spawn_neighbour_thread(
    link: usize,
    socket: Box<dyn NeighbourWire>,
    mut neighbours: Neighbours,
    updates: Receiver<L2Update>,
    reports: Sender<L2Report>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("limpet-l2-{link}"))
        .spawn(move || {
            let start = Instant::now();
            let mut frame = vec![0u8; 2048];
            let mut out = vec![0u8; 256];
            let mut wanted: Vec<IpAddr> = Vec::new();
            let mut last_report = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let now_ms = start.elapsed().as_millis() as u64;
                let mut changed = false;
                for u in updates.try_iter() {
                    neighbours.set_served(u.served);
                    neighbours.set_wanted(u.wanted.iter().copied(), now_ms);
                    wanted = u.wanted;
                    changed = true;
                }
                neighbours.poll(now_ms, |f| {
                    if let Err(e) = socket.send(f) {
                        warn!("neighbour request not sent: {e}");
                    }
                });
                match socket.recv(&mut frame, Duration::from_millis(50)) {
                    Ok(Some(len)) => match neighbours.handle(&frame[..len], &mut out) {
                        Handled::Reply(n) => {
                            if let Err(e) = socket.send(&out[..n]) {
                                warn!("neighbour reply not sent: {e}");
                            }
                        }
                        Handled::Learned => changed = true,
                        Handled::Ignored => {}
                    },
                    Ok(None) => {}
                    Err(e) => {
                        error!("neighbour socket: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                if changed || last_report.elapsed() > Duration::from_secs(1) {
                    last_report = Instant::now();
                    let resolved = wanted
                        .iter()
                        .map(|ip| (*ip, neighbours.lookup(*ip)))
                        .collect();
                    let _ = reports.try_send(L2Report {
                        link,
                        resolved,
                        counters: neighbours.counters(),
                    });
                }
            }
        })
        .expect("spawning the neighbour thread")
}

/// Where each backend is reached: its MAC and the link (port) it resolved
/// on, the first link that knows it.
fn next_hops(resolved: &[HashMap<IpAddr, Option<MacAddr>>]) -> HashMap<IpAddr, (MacAddr, u16)> {
    let mut hops = HashMap::new();
    for (link, map) in resolved.iter().enumerate() {
        for (ip, mac) in map {
            if let Some(mac) = mac {
                hops.entry(*ip).or_insert((*mac, link as u16));
            }
        }
    }
    hops
}

/// Fills in each backend's MAC and port from the neighbour tables and
/// leaves out backends not resolved yet (nothing can be sent to them); with
/// how many were left out of each spec.
fn with_macs<'a>(
    specs: impl IntoIterator<Item = &'a ServicePortSpec>,
    hops: &HashMap<IpAddr, (MacAddr, u16)>,
) -> Vec<(ServicePortSpec, usize)> {
    specs
        .into_iter()
        .map(|spec| {
            let mut unresolved = 0;
            let mut spec = spec.clone();
            spec.backends.retain_mut(|b| {
                if let Some(&(mac, iface)) = hops.get(&b.addr) {
                    b.mac = mac;
                    b.iface = iface;
                    true
                } else {
                    unresolved += 1;
                    false
                }
            });
            (spec, unresolved)
        })
        .collect()
}

/// How many times each address is listed: adding or dropping an address
/// (not a count) is a change the neighbour threads must hear of.
#[derive(Debug, Default)]
struct AddressCounts(HashMap<IpAddr, usize>);

impl AddressCounts {
    /// Counts `addrs` in (`add`) or out; whether an address came or went.
    fn count(&mut self, addrs: impl Iterator<Item = IpAddr>, add: bool) -> bool {
        let mut changed = false;
        for a in addrs {
            if add {
                let n = self.0.entry(a).or_insert(0);
                changed |= *n == 0;
                *n += 1;
            } else if let Some(n) = self.0.get_mut(&a) {
                *n -= 1;
                if *n == 0 {
                    self.0.remove(&a);
                    changed = true;
                }
            }
        }
        changed
    }
}

/// The control loop's own state.
struct Control {
    shared: Arc<Shared>,
    publish: Vec<Sender<Arc<Snapshot>>>,
    /// Per link: the neighbour thread, and the addresses limpet owns there.
    l2: Vec<(Sender<L2Update>, Vec<InterfaceAddr>)>,
    /// The service ports served, as the source gave them (no MACs).
    specs: BTreeMap<ServicePortId, ServicePortSpec>,
    /// Frontend addresses (served on every link) and backend addresses (to
    /// resolve) of `specs`.
    vips: AddressCounts,
    wanted: AddressCounts,
    /// Backends left out of each published spec, not resolved yet.
    unresolved: HashMap<ServicePortId, usize>,
    /// Per link: what its neighbour thread resolved.
    resolved: Vec<HashMap<IpAddr, Option<MacAddr>>>,
    compiler: SnapshotCompiler,
    /// The backend's port probe, and when it last ran.
    ports: Option<Box<dyn FnMut() -> Vec<PortMetrics>>>,
    /// The Services' `healthCheckNodePort`s, and their listeners.
    health: HealthIndex,
    health_server: HealthServer,
    /// The addresses each service port announces, and the announcer.
    announce: AnnounceIndex,
    announcer: Option<Announcer>,
    /// The workers' heartbeats, and whether the announcer was last told
    /// this node can serve (`None`: not told yet).
    beats: Vec<Arc<Heartbeat>>,
    told_serving: Option<bool>,
    /// The operator's drains as last published, and how many of their
    /// deadlines had passed then.
    drains: Drains,
    drains_passed: usize,
}

impl Control {
    /// Refreshes the ports' link state and counters for `/metrics`.
    fn probe_ports(&mut self) {
        if let Some(probe) = &mut self.ports {
            let ports = probe();
            self.shared.lock().ports = ports;
        }
    }
}

impl Control {
    /// Tells each link's neighbour thread what to answer for (the service
    /// addresses and its own) and what to resolve (every backend: each
    /// thread keeps those on its subnets or behind its gateway).
    fn update_l2(&self) {
        let wanted: Vec<IpAddr> = self.wanted.0.keys().copied().collect();
        for (tx, addresses) in &self.l2 {
            let served = self
                .vips
                .0
                .keys()
                .copied()
                .chain(addresses.iter().map(|a| a.addr))
                .collect();
            let _ = tx.send(L2Update {
                served,
                wanted: wanted.clone(),
            });
        }
    }

    /// Counts a spec's addresses in or out; whether an address set changed.
    fn count(&mut self, spec: &ServicePortSpec, add: bool) -> bool {
        let vips = self.vips.count(spec.frontends.iter().map(|&(a, _)| a), add);
        let wanted = self.wanted.count(spec.backends.iter().map(|b| b.addr), add);
        vips || wanted
    }

    /// Whether every backend has resolved on some link.
    fn all_resolved(&self) -> bool {
        let hops = next_hops(&self.resolved);
        self.wanted.0.keys().all(|a| hops.contains_key(a))
    }

    /// Takes one link's neighbour report; true if resolutions changed.
    fn take_report(&mut self, r: L2Report) -> bool {
        let Some(slot) = self.resolved.get_mut(r.link) else {
            return false;
        };
        let changed = *slot != r.resolved;
        *slot = r.resolved;
        let mut state = self.shared.lock();
        state.neighbour_counters = r.counters;
        state.neighbours = self
            .resolved
            .iter()
            .flat_map(|m| m.iter().map(|(a, m)| (*a, *m)))
            .collect();
        changed
    }

    /// Compiles and publishes a snapshot of every spec with the current
    /// MACs.
    fn publish(&mut self) -> Result<(), RunError> {
        self.publish_on(1)
    }

    /// [`publish`](Self::publish), building Maglev tables on up to
    /// `threads` threads.
    fn publish_on(&mut self, threads: usize) -> Result<(), RunError> {
        let started = Instant::now();
        let hops = next_hops(&self.resolved);
        let mut specs = Vec::with_capacity(self.specs.len());
        self.unresolved.clear();
        let now = Instant::now();
        for (mut spec, unresolved) in with_macs(self.specs.values(), &hops) {
            self.drains.apply(&mut spec, now);
            if unresolved > 0 {
                self.unresolved.insert(spec.id, unresolved);
            }
            specs.push(spec);
        }
        let (snapshot, stats) = self.compiler.compile_on(specs, threads)?;
        self.send(&snapshot, stats, started);
        Ok(())
    }

    /// Compiles and publishes the last snapshot with the specs `changed`
    /// (ids of `self.specs`) and without those `removed`: what a change
    /// costs does not grow with the number of service ports.
    fn publish_changes(
        &mut self,
        changed: &[ServicePortId],
        removed: &[ServicePortId],
    ) -> Result<(), RunError> {
        let started = Instant::now();
        let hops = next_hops(&self.resolved);
        let mut specs = Vec::with_capacity(changed.len());
        let mut unresolved_now = HashMap::new();
        let now = Instant::now();
        for (mut spec, unresolved) in
            with_macs(changed.iter().filter_map(|id| self.specs.get(id)), &hops)
        {
            self.drains.apply(&mut spec, now);
            unresolved_now.insert(spec.id, unresolved);
            specs.push(spec);
        }
        let (snapshot, stats) = self.compiler.update(specs, removed)?;
        for id in removed {
            self.unresolved.remove(id);
        }
        for (id, n) in unresolved_now {
            if n > 0 {
                self.unresolved.insert(id, n);
            } else {
                self.unresolved.remove(&id);
            }
        }
        self.send(&snapshot, stats, started);
        Ok(())
    }

    /// Hands a compiled snapshot to every worker.
    fn send(&self, snapshot: &Arc<Snapshot>, stats: CompileStats, started: Instant) {
        for (i, tx) in self.publish.iter().enumerate() {
            if tx
                .send_timeout(Arc::clone(snapshot), Duration::from_secs(1))
                .is_err()
            {
                error!(worker = i, "worker did not take the new snapshot");
            }
        }
        if let Some(announcer) = &self.announcer {
            announcer.routes(crate::announce::routes(snapshot, &self.announce));
        }
        let generation = snapshot.generation();
        let unresolved: usize = self.unresolved.values().sum();
        let mut state = self.shared.lock();
        state.snapshot = Arc::clone(snapshot);
        state.ready = true;
        state.unresolved_backends = unresolved;
        info!(
            generation,
            service_ports = self.specs.len(),
            compiled = stats.compiled,
            reused = stats.reused,
            compile_us = started.elapsed().as_micros() as u64,
            unresolved_backends = unresolved,
            "published snapshot"
        );
    }
}

/// Remembers every backend id's address for the admin API.
fn record_backends<'a>(shared: &Shared, specs: impl IntoIterator<Item = &'a ServicePortSpec>) {
    let mut state = shared.lock();
    for b in specs.into_iter().flat_map(|s| &s.backends) {
        state
            .backends
            .insert(b.id as BackendId, SocketAddr::new(b.addr, b.port));
    }
}

/// The admin API's and the metrics' listeners, bound before anything
/// else starts so that a bad or taken address fails at once.
struct Listeners {
    admin: (SocketAddr, std::net::TcpListener),
    metrics: Option<(SocketAddr, std::net::TcpListener)>,
}

impl Listeners {
    fn bind(opts: &RunOptions) -> Result<Self, RunError> {
        if !opts.admin.ip().is_loopback() && opts.admin_token.is_none() {
            return Err(RunError::AdminExposed(opts.admin));
        }
        let bind = |what, addr| {
            std::net::TcpListener::bind(addr)
                .map(|l| (addr, l))
                .map_err(|source| RunError::Listen { what, addr, source })
        };
        Ok(Self {
            admin: bind("--admin", opts.admin)?,
            metrics: opts.metrics.map(|a| bind("--metrics", a)).transpose()?,
        })
    }

    fn serve(self, shared: &Arc<Shared>, token: Option<Arc<str>>) -> Result<(), RunError> {
        let (addr, listener) = self.admin;
        let guarded = if token.is_some() {
            " (/v1 needs the token)"
        } else {
            ""
        };
        spawn_listener(
            "limpet-admin",
            listener,
            crate::admin::router(Arc::clone(shared), token),
        )?;
        info!("admin API on http://{addr}{guarded}");
        if let Some((addr, listener)) = self.metrics {
            spawn_listener(
                "limpet-metrics",
                listener,
                crate::admin::metrics_router(Arc::clone(shared)),
            )?;
            info!("metrics and health on http://{addr} (read-only)");
        }
        Ok(())
    }
}

fn spawn_listener(
    name: &str,
    listener: std::net::TcpListener,
    router: axum::Router,
) -> Result<(), RunError> {
    let label = name.to_owned();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(e) = crate::admin::serve(listener, router) {
                error!("{label} listener stopped: {e}");
            }
        })
        .map_err(|e| RunError::Other(e.to_string()))?;
    Ok(())
}

/// The running source of service state.
enum Live {
    Manifests(ConfigSource),
    Kubernetes(KubeSource),
}

/// Service ports, and what each was made from (`info[i]` for `specs[i]`).
type Loaded = (Vec<ServicePortSpec>, Vec<SpecInfo>);

/// The configuration's first state (manifests) or its source's start
/// (Kubernetes), each with what it was made from.
fn start_source(
    source: &Source,
    ids: Option<crate::ids::IdAllocator>,
) -> Result<(Live, Option<Loaded>), RunError> {
    // A manifest configuration that does not load is fatal at start-up.
    // The Kubernetes source starts empty and publishes nothing until both
    // initial lists are complete, as kube-proxy waits for sync.
    Ok(match source {
        Source::Manifests(manifests) => {
            let mut source = manifests.clone();
            if let Some(ids) = ids {
                source = source.with_ids(ids);
            }
            let loaded = source.load_with_info()?;
            info!(service_ports = loaded.0.len(), "configuration loaded");
            (Live::Manifests(source), Some(loaded))
        }
        Source::Kubernetes(kube) => (
            Live::Kubernetes(KubeSource::spawn_with_ids(
                kube.clone(),
                ids.unwrap_or_default(),
            )?),
            None,
        ),
    })
}

/// Runs limpet until SIGINT or SIGTERM.
pub fn run(opts: &RunOptions) -> Result<(), RunError> {
    if opts.links.is_empty() {
        return Err(RunError::NoInterface);
    }
    let listeners = Listeners::bind(opts)?;
    // The last process's tables, and the ids its entries name: read
    // before the configuration, so the same names get the same ids.
    let saved = opts
        .state
        .as_ref()
        .and_then(|s| crate::checkpoint::load_at_start(&s.path));
    let ids = saved.as_ref().map(crate::checkpoint::Checkpoint::ids);
    let (mut live, specs) = start_source(&opts.source, ids)?;

    let stop = Arc::new(AtomicBool::new(false));
    let setup = opts.worker_setup();
    let workers = match &opts.io {
        IoBackend::AfPacket(shed) => crate::afpacket::start(&setup, *shed, &stop)?,
        IoBackend::AfXdp(how) => crate::afxdp::start(&setup, *how, &stop)?,
        #[cfg(feature = "dpdk")]
        IoBackend::Dpdk(dpdk) => crate::dpdk::start(&setup, dpdk, &stop)?,
    };
    let Workers {
        joins,
        publish,
        commands,
        beats,
        retired,
        wires,
        mac,
        ports,
        keep,
    } = workers;
    let mut handles = Vec::new();

    let shared = Arc::new(Shared::new(commands));
    let (report_tx, report_rx) = bounded(64);
    let mut l2 = Vec::with_capacity(opts.links.len());
    for (i, (link, raw)) in opts.links.iter().zip(wires).enumerate() {
        let (tx, rx) = unbounded();
        let neighbours = Neighbours::new(mac, link.addresses.clone(), link.gateways.clone());
        handles.push(spawn_neighbour_thread(
            i,
            raw,
            neighbours,
            rx,
            report_tx.clone(),
            Arc::clone(&stop),
        ));
        l2.push((tx, link.addresses.clone()));
    }
    listeners.serve(&shared, opts.admin_token.clone())?;

    let mut control = Control {
        shared: Arc::clone(&shared),
        publish,
        ports,
        resolved: vec![HashMap::new(); l2.len()],
        l2,
        specs: BTreeMap::new(),
        vips: AddressCounts::default(),
        wanted: AddressCounts::default(),
        unresolved: HashMap::new(),
        compiler: SnapshotCompiler::new(),
        health: HealthIndex::default(),
        health_server: HealthServer::start(Arc::clone(&shared))
            .map_err(|e| RunError::Other(format!("starting the health check server: {e}")))?,
        announce: AnnounceIndex::default(),
        announcer: (opts.announce.as_ref())
            .map(|a| Announcer::start(a, Arc::clone(&shared)))
            .transpose()?,
        beats,
        told_serving: None,
        drains: Drains::default(),
        drains_passed: 0,
    };
    // Restored before the first snapshot, so no client is placed anew
    // before its entry is back.
    let links = opts.links.iter().map(|l| l.iface.clone()).collect();
    let keeper = opts
        .state
        .as_ref()
        .map(|state| crate::checkpoint::Keeper::start(&shared, links, state, saved))
        .transpose()
        .map_err(|e| RunError::Other(format!("starting the checkpoint thread: {e}")))?;
    if let Some((specs, info)) = specs {
        control.adopt(specs, &info);
        control.first_publish(&report_rx)?;
    }

    let result = control_loop(&mut control, &mut live, &report_rx, &retired);
    info!("stopping");
    if let Some(mut announcer) = control.announcer.take() {
        // Withdrawn while still forwarding: flows the routers send here
        // before they have moved are served, not dropped.
        announcer.withdraw_all();
        std::thread::sleep(crate::announce::WITHDRAW_GRACE);
    }
    if let Some(keeper) = keeper {
        keeper.stop();
    }
    stop.store(true, Ordering::Relaxed);
    for join in joins {
        join();
    }
    for h in handles {
        let _ = h.join();
    }
    // The workers and neighbour threads are gone: ports, pools and EAL
    // may go now.
    drop(control);
    drop(keep);
    result
}

impl Control {
    /// Takes a new set of service ports as the configuration (`info[i]`
    /// describing `specs[i]`).
    fn adopt(&mut self, specs: Vec<ServicePortSpec>, info: &[SpecInfo]) {
        self.health.replace(&specs, info);
        self.health_server.update(self.health.checks());
        self.announce.replace(&specs, info);
        self.vips = AddressCounts::default();
        self.wanted = AddressCounts::default();
        for spec in &specs {
            self.count(spec, true);
        }
        record_backends(&self.shared, &specs);
        self.specs = specs.into_iter().map(|s| (s.id, s)).collect();
        self.update_l2();
        self.loaded();
    }

    /// Tells the announcer whether this node can serve: a snapshot is
    /// published and every worker is polling.
    fn check_serving(&mut self) {
        if self.announcer.is_none() {
            return;
        }
        let why_not = crate::announce::why_not_serving(
            self.compiler.generation() > 0,
            self.drains.node(Instant::now()),
            &self.beats,
            crate::announce::WORKER_STALL,
        );
        let serving = why_not.is_none();
        if self.told_serving != Some(serving) {
            if let Some(announcer) = &self.announcer {
                announcer.serving(why_not);
            }
            self.told_serving = Some(serving);
        }
    }

    /// Republishes when the operator started or ended a drain, or a
    /// drain's deadline passed.
    fn check_drains(&mut self) {
        let now = Instant::now();
        let changed = {
            let state = self.shared.lock();
            if state.drains.generation() == self.drains.generation() {
                None
            } else {
                Some(state.drains.clone())
            }
        };
        let passed = changed.as_ref().unwrap_or(&self.drains).passed(now);
        if changed.is_none() && passed == self.drains_passed {
            return;
        }
        if let Some(drains) = changed {
            self.drains = drains;
        }
        self.drains_passed = passed;
        info!(
            drains = self.drains.iter().count(),
            deadlines_passed = passed,
            "drains changed: republishing"
        );
        if self.compiler.generation() > 0
            && let Err(e) = self.publish()
        {
            error!("snapshot not published: {e}");
        }
    }

    fn loaded(&self) {
        let mut state = self.shared.lock();
        state.reload.loads_ok += 1;
        state.reload.last_error = None;
    }

    /// Takes a change to the service ports and publishes it; the neighbour
    /// threads hear of addresses that came or went after the workers have
    /// the snapshot.
    fn adopt_changes(
        &mut self,
        changed: Vec<ServicePortSpec>,
        info: &[SpecInfo],
        removed: &[ServicePortId],
    ) {
        self.health.apply(&changed, info, removed);
        self.health_server.update(self.health.checks());
        self.announce.apply(&changed, info, removed);
        let mut l2_changed = false;
        for id in removed {
            if let Some(old) = self.specs.remove(id) {
                l2_changed |= self.count(&old, false);
            }
        }
        record_backends(&self.shared, &changed);
        let ids: Vec<ServicePortId> = changed.iter().map(|s| s.id).collect();
        for spec in changed {
            l2_changed |= self.count(&spec, true);
            if let Some(old) = self.specs.insert(spec.id, spec) {
                l2_changed |= self.count(&old, false);
            }
        }
        self.loaded();
        // The first snapshot, or after a failed change: everything again.
        let published = if self.compiler.generation() == 0 {
            self.publish()
        } else {
            self.publish_changes(&ids, removed).or_else(|e| {
                warn!("change not applied ({e}); compiling every service port");
                self.publish()
            })
        };
        if let Err(e) = published {
            error!("snapshot not published: {e}");
        }
        if l2_changed {
            self.update_l2();
        }
    }

    /// Publishes the first snapshot, after giving backends a moment to
    /// resolve so it has them.
    fn first_publish(&mut self, reports: &Receiver<L2Report>) -> Result<(), RunError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !self.all_resolved() {
            if let Ok(r) = reports.recv_timeout(Duration::from_millis(100)) {
                self.take_report(r);
            }
        }
        // Every table at once: on the cores no worker spins on, if any.
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        self.publish_on(cores.saturating_sub(self.publish.len()).max(1))
    }

    /// Serves what the Kubernetes API says: invalid objects are logged and
    /// left out, the rest is published (a watcher cannot refuse the
    /// cluster's state as a whole, unlike a manifest reload).
    fn kube_update(&mut self, update: KubeUpdate, reports: &Receiver<L2Report>) {
        let errors = match &update {
            KubeUpdate::Synced(t) => t.errors.clone(),
            KubeUpdate::Changed(d) => d.errors.clone(),
        };
        for e in &errors {
            warn!("refused: {e}");
        }
        match update {
            KubeUpdate::Synced(t) => {
                self.adopt(t.specs, &t.info);
                info!("Kubernetes API: initial lists complete");
                if let Err(e) = self.first_publish(reports) {
                    error!("snapshot not published: {e}");
                }
            }
            KubeUpdate::Changed(d) => self.adopt_changes(d.specs, &d.info, &d.removed),
        }
        // After adopting, which counts a load as good.
        let mut state = self.shared.lock();
        state.reload.last_error = errors.first().map(ToString::to_string);
        if !errors.is_empty() {
            state.reload.loads_failed += 1;
        }
    }
}

/// Reacts to configuration changes, signals and neighbour resolution
/// until asked to stop.
fn control_loop(
    control: &mut Control,
    live: &mut Live,
    reports: &Receiver<L2Report>,
    retired: &Receiver<Arc<Snapshot>>,
) -> Result<(), RunError> {
    let (_watcher, reload) = match live {
        Live::Manifests(source) => {
            let (w, r) = source.watch()?;
            (Some(w), r)
        }
        Live::Kubernetes(_) => (None, crossbeam_channel::never()),
    };
    let kube_updates = match live {
        Live::Kubernetes(k) => k.updates.clone(),
        Live::Manifests(_) => crossbeam_channel::never(),
    };
    let signals = signal_channel()?;
    let mut pending_reload = Debounce::default();
    let ticker = tick(Duration::from_millis(100));
    let mut probed = Instant::now();
    control.probe_ports();
    loop {
        select! {
            recv(reload) -> _ => pending_reload.event(Instant::now()),
            recv(kube_updates) -> u => if let Ok(u) = u {
                control.kube_update(u, reports);
            },
            recv(signals) -> sig => match sig {
                Ok(Signal::Reload) => {
                    if let Live::Manifests(source) = live {
                        info!("SIGHUP: reloading configuration");
                        // Reload at once: no editor is mid-write.
                        reload_config(control, source);
                    }
                }
                Ok(Signal::Stop) | Err(_) => return Ok(()),
            },
            recv(reports) -> r => if let Ok(r) = r
                && control.take_report(r)
                && control.compiler.generation() > 0
                && let Err(e) = control.publish()
            {
                error!("snapshot not published: {e}");
            },
            recv(retired) -> old => drop(old),
            recv(ticker) -> _ => {}
        }
        if probed.elapsed() >= Duration::from_secs(1) {
            probed = Instant::now();
            control.probe_ports();
        }
        control.check_drains();
        control.check_serving();
        if let Live::Kubernetes(k) = live {
            // Not ready while the API server is out of reach or a relist
            // after 410 Gone is pending: the workers keep serving the last
            // snapshot, but this node's view is stale.
            control.shared.lock().source_connected = k.ready();
        }
        // Settled, or pending for too long (crate::debounce).
        if let Live::Manifests(source) = live
            && pending_reload.take_due(Instant::now())
        {
            reload_config(control, source);
        }
    }
}

/// Loads the configuration again; a refused one leaves the running one.
fn reload_config(control: &mut Control, source: &mut ConfigSource) {
    match source.load_with_info() {
        Ok((specs, info)) => {
            control.adopt(specs, &info);
            if let Err(e) = control.publish() {
                error!("snapshot not published: {e}");
            }
        }
        Err(e) => {
            error!("configuration refused, still serving the previous one: {e}");
            let mut state = control.shared.lock();
            state.reload.loads_failed += 1;
            state.reload.last_error = Some(e.to_string());
        }
    }
}

enum Signal {
    Reload,
    Stop,
}

/// SIGHUP, SIGINT and SIGTERM as channel messages.
fn signal_channel() -> Result<Receiver<Signal>, RunError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])
        .map_err(|e| RunError::Other(format!("signals: {e}")))?;
    let (tx, rx) = unbounded();
    std::thread::Builder::new()
        .name("limpet-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let msg = if sig == SIGHUP {
                    Signal::Reload
                } else {
                    Signal::Stop
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| RunError::Other(e.to_string()))?;
    Ok(rx)
}

/// The kind of backend `--io` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    AfPacket,
    AfXdp,
    Dpdk,
}

/// Parses `--io afpacket:IFACE[,IFACE2]`, `--io afxdp:IFACE[,IFACE2]` or
/// `--io dpdk:PORT[,PORT2]`
/// (a port is a PCI address such as `0000:3b:00.0` or a virtual device's
/// name such as `net_af_packet0`).
pub fn parse_io(spec: &str) -> Result<(IoKind, Vec<String>), String> {
    let (kind, list) = if let Some(list) = spec.strip_prefix("afpacket:") {
        (IoKind::AfPacket, list)
    } else if let Some(list) = spec.strip_prefix("afxdp:") {
        (IoKind::AfXdp, list)
    } else if let Some(list) = spec.strip_prefix("dpdk:") {
        (IoKind::Dpdk, list)
    } else {
        return Err(format!(
            "unknown I/O backend in {spec:?}: expected afpacket:IFACE[,IFACE2], afxdp:IFACE[,IFACE2] or dpdk:PORT[,PORT2]"
        ));
    };
    let names: Vec<String> = list
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err(match kind {
            IoKind::AfPacket => "afpacket: needs at least one interface name".into(),
            IoKind::AfXdp => "afxdp: needs at least one interface name".into(),
            IoKind::Dpdk => "dpdk: needs at least one port (PCI address or vdev name)".into(),
        });
    }
    Ok((kind, names))
}

/// Parses an `ADDRESS/PREFIX` given to `--address`.
pub fn parse_interface_addr(s: &str) -> Result<InterfaceAddr, String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected ADDRESS/PREFIX, e.g. 203.0.113.1/24"))?;
    let addr: IpAddr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let prefix: u8 = prefix.parse().map_err(|e| format!("{s:?}: prefix: {e}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("{s:?}: prefix longer than {max}"));
    }
    Ok(InterfaceAddr { addr, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_names_its_backend_and_ports() {
        assert_eq!(
            parse_io("afpacket:lb0,lb1").unwrap(),
            (IoKind::AfPacket, vec!["lb0".to_owned(), "lb1".to_owned()])
        );
        // PCI addresses keep their colons; virtual devices are plain names.
        assert_eq!(
            parse_io("dpdk:0000:3b:00.0,net_ring0").unwrap(),
            (
                IoKind::Dpdk,
                vec!["0000:3b:00.0".to_owned(), "net_ring0".to_owned()]
            )
        );
        assert!(
            parse_io("dpdk:")
                .unwrap_err()
                .contains("PCI address or vdev")
        );
        assert_eq!(
            parse_io("afxdp:eth1").unwrap(),
            (IoKind::AfXdp, vec!["eth1".to_owned()])
        );
        assert!(parse_io("afxdp:").unwrap_err().contains("interface name"));
        assert!(parse_io("xdp:lb0").unwrap_err().contains("dpdk:PORT"));
    }
}
