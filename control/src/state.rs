//! What the control plane knows, shared between the control loop and the
//! admin API. Never touched by a worker: workers get snapshots over
//! channels and answer commands at burst boundaries.

use crossbeam_channel::Sender;
use limpet_dataplane::affinity::BackendId;
use limpet_dataplane::command::Command;
use limpet_dataplane::neighbour::NeighbourCounters;
use limpet_dataplane::snapshot::Snapshot;
use limpet_dataplane::wire::MacAddr;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

/// Counters of configuration loads.
#[derive(Debug, Default, Clone)]
pub struct ReloadStatus {
    pub loads_ok: u64,
    pub loads_failed: u64,
    /// Why the last refused load was refused (cleared by a good one).
    pub last_error: Option<String>,
}

/// One port's state as its driver reports it (DPDK ports), for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMetrics {
    pub name: String,
    pub link_up: bool,
    pub speed_mbps: u32,
    /// The driver's extended counters (`rte_eth_xstats`), by name.
    pub xstats: Vec<(String, u64)>,
}

/// The control plane's view, behind one mutex (off the packet path).
#[derive(Debug)]
pub struct ControlState {
    /// The snapshot last published to the workers.
    pub snapshot: Arc<Snapshot>,
    /// Whether a snapshot from a complete configuration has been published.
    pub ready: bool,
    /// Whether the source is in touch (the Kubernetes API answers); always
    /// true for manifests.
    pub source_connected: bool,
    pub reload: ReloadStatus,
    /// Every backend id ever handed out, with its address, so affinity
    /// entries pointing at departed backends still read well.
    pub backends: HashMap<BackendId, SocketAddr>,
    pub neighbours: Vec<(IpAddr, Option<MacAddr>)>,
    pub neighbour_counters: NeighbourCounters,
    /// Backends left out of the snapshot because their MAC is unknown.
    pub unresolved_backends: usize,
    /// The ports' link state and device counters, refreshed every second
    /// (empty for backends without them).
    pub ports: Vec<PortMetrics>,
    /// What is announced to the tier's routers, and why (`--announce`).
    pub announce: Option<crate::announce::AnnounceStatus>,
    /// The operator's drains (`limpet drain`); the control loop publishes
    /// their effect.
    pub drains: crate::drain::Drains,
}

impl Default for ControlState {
    fn default() -> Self {
        Self {
            snapshot: Arc::default(),
            ready: false,
            source_connected: true,
            reload: ReloadStatus::default(),
            backends: HashMap::new(),
            neighbours: Vec::new(),
            neighbour_counters: NeighbourCounters::default(),
            unresolved_backends: 0,
            ports: Vec::new(),
            announce: None,
            drains: crate::drain::Drains::default(),
        }
    }
}

/// State shared by the control loop and the admin API.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<ControlState>,
    /// One command channel per worker.
    pub workers: Vec<Sender<Command>>,
}

impl Shared {
    pub fn new(workers: Vec<Sender<Command>>) -> Self {
        Self {
            state: Mutex::new(ControlState::default()),
            workers,
        }
    }

    /// The state; a panic elsewhere while holding it does not make it
    /// unreadable (the data is plain counters and an `Arc`).
    pub fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
