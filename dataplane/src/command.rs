//! Requests the control plane makes of a running worker: list, delete and
//! flush affinity entries, read counters, save and restore its tables. A worker owns its tables
//! outright, so instead of locking them it answers these at a burst
//! boundary, off the per-packet path.

use crate::affinity::{AffinityTable, BackendId, ServicePortId};
use crate::family::Family;
use crate::flow::{FlowState, FlowTable};
use crate::snapshot::Snapshot;
use crate::state::{ExportChunk, ExportCursor, RestoreReport, WorkerState};
use crate::stats::WorkerStats;
use crossbeam_channel::Sender;
use std::net::IpAddr;

/// One sticky client as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityRecord {
    pub service: ServicePortId,
    /// The client address, masked as the service's affinity masks it.
    pub client: IpAddr,
    pub backend: BackendId,
    /// Seconds since the client's last new connection.
    pub idle: u32,
    /// Whole seconds the entry is still honoured (it may last up to one
    /// more: the clock ticks in seconds); `None` if its service port no
    /// longer has `ClientIP` affinity (it will be reaped).
    pub expires_in: Option<u32>,
    /// Whether its backend is still usable (an entry that is not is never
    /// honoured and is overwritten on the client's next connection).
    pub backend_usable: bool,
}

/// Which entries a request is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AffinityFilter {
    pub service: Option<ServicePortId>,
    pub client: Option<IpAddr>,
}

impl AffinityFilter {
    fn matches(&self, service: ServicePortId, client: IpAddr) -> bool {
        self.service.is_none_or(|s| s == service) && self.client.is_none_or(|c| c == client)
    }
}

/// A worker's counters and table sizes at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerReport {
    pub stats: WorkerStats,
    pub affinity_entries: usize,
    /// Both families' tables together; see the per-family fields.
    pub affinity_capacity: usize,
    /// Capacity of the IPv4 table: what `--affinity-capacity` says.
    pub affinity_capacity_v4: usize,
    pub affinity_capacity_v6: usize,
    /// Of `affinity_entries`, those on probation.
    pub affinity_on_probation: usize,
    pub flow_entries: usize,
    pub flow_capacity: usize,
    /// The I/O backend's own counters (`PacketIo::counters`).
    pub io: Vec<(&'static str, u64)>,
}

/// How many sticky clients and open connections point at one backend: a
/// drain's progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendLoad {
    /// Live affinity entries naming it (not past their timeout).
    pub pinned_clients: u64,
    /// Connections to it not closing: TCP before its FIN or RST, and UDP
    /// and SCTP flows not timed out.
    pub open_connections: u64,
}

impl BackendLoad {
    pub fn add(&mut self, other: Self) {
        self.pinned_clients += other.pinned_clients;
        self.open_connections += other.open_connections;
    }
}

/// A request to a worker; each carries where to send the answer.
#[derive(Debug)]
pub enum Command {
    ListAffinity {
        filter: AffinityFilter,
        reply: Sender<Vec<AffinityRecord>>,
    },
    /// Removes matching entries; answers how many.
    DeleteAffinity {
        filter: AffinityFilter,
        reply: Sender<usize>,
    },
    Report {
        reply: Sender<WorkerReport>,
    },
    /// Counts, for each of `backends`, what still points at it; answers in
    /// the same order. Walks both tables whole: for an operator's request,
    /// never on a timer.
    BackendLoad {
        backends: Vec<BackendId>,
        reply: Sender<Vec<BackendLoad>>,
    },
    /// Saves up to `slots` table slots' worth of entries from `from` on
    /// (a checkpoint walks the tables a chunk per request, so a worker
    /// never stalls long on one).
    Export {
        from: ExportCursor,
        slots: usize,
        reply: Sender<ExportChunk>,
    },
    /// Puts saved entries back (at start, before the first snapshot).
    Restore {
        state: Box<WorkerState>,
        reply: Sender<RestoreReport>,
    },
    /// Stops taking packets; commands are still answered. A planned stop
    /// holds every worker, then saves their tables: nothing changes them
    /// after they are saved.
    Hold {
        reply: Sender<()>,
    },
}

/// Lists the entries of one family's table that `filter` selects.
pub(crate) fn list<A: Family>(
    table: &AffinityTable<A>,
    snapshot: &Snapshot,
    filter: &AffinityFilter,
    now: u32,
    out: &mut Vec<AffinityRecord>,
) {
    for (entry, last_seen) in table.iter() {
        let client = entry.key.client.ip();
        if !filter.matches(entry.key.service, client) {
            continue;
        }
        let timeout = snapshot.affinity_timeout(entry.key.service);
        let idle = now.saturating_sub(last_seen);
        if timeout.is_some_and(|t| now >= crate::affinity::deadline(last_seen, t)) {
            // Past its timeout but not reaped yet: it is not honoured, so
            // it is not shown.
            continue;
        }
        // The clock ticks in whole seconds, so an entry is honoured through
        // the tick `timeout` after its last hit: at most `timeout` seconds
        // shown right after a hit, as the Service asked.
        let expires_in = timeout.map(|t| last_seen.saturating_add(t).saturating_sub(now));
        let backend_usable = snapshot
            .by_id(entry.key.service)
            .is_some_and(|s| s.usable(entry.backend).is_some());
        out.push(AffinityRecord {
            service: entry.key.service,
            client,
            backend: entry.backend,
            idle,
            expires_in,
            backend_usable,
        });
    }
}

/// Removes the entries of one family's table that `filter` selects.
pub(crate) fn delete<A: Family>(table: &mut AffinityTable<A>, filter: &AffinityFilter) -> usize {
    table.remove_where(|e| filter.matches(e.key.service, e.key.client.ip()))
}

/// Adds what one family's tables hold for each of `backends` to `out`
/// (`out[i]` for `backends[i]`).
pub(crate) fn backend_load<A: Family>(
    affinity: &AffinityTable<A>,
    flows: &FlowTable<A>,
    snapshot: &Snapshot,
    backends: &[BackendId],
    now: u32,
    out: &mut [BackendLoad],
) {
    let slot = |b: BackendId| backends.iter().position(|&x| x == b);
    for (entry, last_seen) in affinity.iter() {
        let Some(i) = slot(entry.backend) else {
            continue;
        };
        let timeout = snapshot.affinity_timeout(entry.key.service);
        if timeout.is_some_and(|t| now >= crate::affinity::deadline(last_seen, t)) {
            continue;
        }
        out[i].pinned_clients += 1;
    }
    for (flow, _) in flows.iter() {
        if let Some(i) = slot(flow.backend)
            && matches!(flow.state, FlowState::SynSent | FlowState::Established)
        {
            out[i].open_connections += 1;
        }
    }
}
