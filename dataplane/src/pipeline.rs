//! The run-to-completion worker: one loop per core, top to bottom.
//!
//! ```text
//! poll:  swap snapshot (burst boundary) -> reap expired entries (once a second)
//!        -> rx burst -> parse all, prefetch flow buckets
//!        -> prefetch flow entries; for likely-new connections look the
//!           service up once and prefetch the affinity bucket
//!        -> prefetch those affinity entries
//!        -> prefetch the reply-tuple bucket of the backend a new
//!           connection will get (its live sticky one, or Maglev's pick)
//!        -> decide and rewrite each packet in place -> tx burst / free
//! ```
//!
//! Per packet: a known connection (flow-table hit) goes to its backend, or
//! under `nat` its reply is translated back to the client. A new connection
//! looks its destination up in the snapshot; under `ClientIP` a live
//! affinity entry whose backend is still usable decides (and is refreshed),
//! otherwise Maglev over the masked client address picks and the entry is
//! written; under `None` Maglev over the 5-tuple picks. The connection is
//! then recorded so every later packet of it, and its replies, skip all that.
//! Two exceptions on the known-connection path, both rare: a UDP flow whose
//! backend left the usable set is balanced afresh (kube-proxy clears such
//! conntrack entries), and a connection whose client is still on affinity
//! probation promotes the client's entry at the packet that proves it real
//! (see the affinity module).
//!
//! Nothing here locks, allocates or makes a system call; all buffers and
//! tables are allocated when the worker is built. Packets that cannot be
//! parsed are counted by reason and dropped.

use crate::affinity::{AffinityKey, AffinityTable, Sticky};
use crate::clock::Clock;
use crate::command::{self, Command, WorkerReport};
use crate::encap::{self, Encap, Refused, Tunnel, TunnelConfig};
use crate::family::{Family, from_ip};
use crate::flow::{Direction, Flow, FlowKey, FlowState, FlowTable, FlowTimeouts};
use crate::hash::stable_hash;
use crate::icmp::{self, Icmp, IcmpConfig};
use crate::io::{BURST, PacketBuf, PacketIo};
use crate::nat::{End, IpRewrite, rewrite, rewrite_both};
use crate::snapshot::{Affinity, Backend, ForwardMode, Repick, ServicePort, Snapshot};
use crate::snat::{SnatConfig, Source};
use crate::state::{RestoreReport, TablesMut, TablesRef, WorkerState};
use crate::stats::{DropReason, WorkerStats};
use crate::table::{NO_HINT, TableError};
use crate::wire::tcp::flags::{ACK, RST, SYN};
use crate::wire::{EtherType, IpProtocol, MacAddr, checksum, ethernet, ipv4, ipv6, tcp, udp, vlan};
use crossbeam_channel::{Receiver, Sender};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

/// What the ICMP handlers need from worker `w` (an `icmp::Env`), its
/// fields borrowed one by one so the burst's buffers stay borrowable.
macro_rules! icmp_env {
    ($w:ident, $now:expr) => {
        icmp::Env {
            snapshot: &$w.snapshot,
            flows4: &$w.v4.flows,
            flows6: &$w.v6.flows,
            mac: $w.config.mac,
            now: $now,
            counters: &mut $w.stats.icmp,
            gue_port: $w.config.tunnel.gue_port,
        }
    };
}

/// A worker's fixed settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The MAC address limpet sends from.
    pub mac: MacAddr,
    /// Connections in the IPv4 table (and the IPv6 one unless
    /// `flow_capacity_v6` says otherwise).
    pub flow_capacity: usize,
    /// Sticky clients in the IPv4 table (and the IPv6 one unless
    /// `affinity_capacity_v6` says otherwise).
    pub affinity_capacity: usize,
    /// Connections in the IPv6 table; `None`: `flow_capacity`.
    pub flow_capacity_v6: Option<usize>,
    /// Sticky clients in the IPv6 table; `None`: `affinity_capacity`.
    pub affinity_capacity_v6: Option<usize>,
    pub timeouts: FlowTimeouts,
    /// Echo answers, port unreachables (see [`crate::icmp`]).
    pub icmp: IcmpConfig,
    /// Source NAT: addresses, and the ports this worker owns.
    pub snat: SnatConfig,
    /// Encapsulated DSR: outer sources, GUE's port, the path's MTU.
    pub tunnel: TunnelConfig,
}

impl WorkerConfig {
    /// Flow and affinity table capacities of the family whose addresses
    /// are `len` bytes long.
    fn capacities(&self, len: usize) -> (usize, usize) {
        if len == 16 {
            (
                self.flow_capacity_v6.unwrap_or(self.flow_capacity),
                self.affinity_capacity_v6.unwrap_or(self.affinity_capacity),
            )
        } else {
            (self.flow_capacity, self.affinity_capacity)
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            mac: MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]),
            flow_capacity: 1 << 20,
            affinity_capacity: 1 << 20,
            flow_capacity_v6: None,
            affinity_capacity_v6: None,
            timeouts: FlowTimeouts::default(),
            icmp: IcmpConfig::default(),
            snat: SnatConfig::default(),
            tunnel: TunnelConfig::default(),
        }
    }
}

/// What became of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Rewritten and sent.
    Forward,
    /// Counted and dropped.
    Drop(DropReason),
    /// Not for the fast path: ARP, neighbour discovery, ICMP limpet does
    /// not answer or translate, or a destination no service claims.
    /// Counted and handed to the slow path.
    SlowPath,
}

/// The connection and affinity tables of one address family.
#[derive(Debug)]
struct Tables<A: Family> {
    flows: FlowTable<A>,
    affinity: AffinityTable<A>,
}

impl<A: Family> Tables<A> {
    fn new(config: &WorkerConfig, now: u32) -> Result<Self, TableError> {
        let (flows, affinity) = config.capacities(A::LEN);
        Ok(Self {
            flows: FlowTable::new(flows, config.timeouts, now)?,
            affinity: AffinityTable::new(affinity, now)?,
        })
    }
}

/// A parsed packet's tuple, by family.
#[derive(Debug, Clone, Copy)]
enum Tuple {
    V4(FlowKey<Ipv4Addr>),
    V6(FlowKey<Ipv6Addr>),
}

/// What the parse stage learnt about one packet of the burst.
#[derive(Debug, Clone, Copy)]
struct Meta {
    /// `Some` once the packet's fate is known without the tables.
    early: Option<Action>,
    tuple: Tuple,
    flow_hash: u64,
    /// The flow entry stage 2 guessed from the bucket's signatures
    /// ([`NO_HINT`] if none), checked before it is trusted.
    flow_hint: u32,
    /// Offset of the IP header, and of the transport header within it.
    l3: u16,
    l4: u16,
    tcp_flags: u8,
    /// The packet looks like it opens a connection (TCP SYN, or UDP).
    opens: bool,
    /// For packets that open: whether the destination has been looked up
    /// in the snapshot, and the service port's index if one claims it.
    service_known: bool,
    service: Option<u32>,
    /// ICMP or `ICMPv6` (`l4`: the message), for [`crate::icmp`].
    icmp: bool,
}

impl Meta {
    const EMPTY: Meta = Meta {
        early: Some(Action::Drop(DropReason::Truncated)),
        tuple: Tuple::V4(FlowKey {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            src_port: 0,
            dst_port: 0,
            protocol: 0,
        }),
        flow_hash: 0,
        flow_hint: NO_HINT,
        l3: 0,
        l4: 0,
        tcp_flags: 0,
        opens: false,
        service_known: false,
        service: None,
        icmp: false,
    };

    fn decided(action: Action) -> Meta {
        Meta {
            early: Some(action),
            ..Meta::EMPTY
        }
    }

    /// An ICMP message at `l4` of the IP header at `l3`: decided in stage 3
    /// (the slow path's unless [`crate::icmp`] answers or translates it).
    fn icmp(l3: usize, l4: usize) -> Meta {
        Meta {
            early: Some(Action::SlowPath),
            l3: l3 as u16,
            l4: l4 as u16,
            icmp: true,
            ..Meta::EMPTY
        }
    }
}

/// A poll-mode worker over one I/O backend.
pub struct Worker<I: PacketIo, C: Clock> {
    io: I,
    clock: C,
    config: WorkerConfig,
    snapshot: Arc<Snapshot>,
    updates: Option<Receiver<Arc<Snapshot>>>,
    /// Old snapshots go back to the control thread to be freed there.
    retired: Option<Sender<Arc<Snapshot>>>,
    commands: Option<Receiver<Command>>,
    v4: Tables<Ipv4Addr>,
    v6: Tables<Ipv6Addr>,
    rx: Vec<I::Buf>,
    tx: Vec<I::Buf>,
    dropped: Vec<I::Buf>,
    slow: Vec<I::Buf>,
    meta: [Meta; BURST],
    actions: [Action; BURST],
    /// The port each packet of the burst arrived on, then leaves by.
    ports: [u16; BURST],
    stats: WorkerStats,
    icmp: Icmp,
    reaped_at: u32,
    /// When the last poll, if it was busy, finished its burst: the start of
    /// the next busy poll's time.
    busy_since: Option<Instant>,
    /// Where re-filing the affinity tables under shortened timeouts has got
    /// to: IPv4 table, then IPv6.
    refile: Option<(bool, usize)>,
    /// The tick of the last snapshot swap: a UDP flow seen since then was
    /// checked against the current snapshot.
    swapped_at: u32,
    /// Taking no packets (`Command::Hold`): a planned stop is saving the
    /// tables.
    held: bool,
    /// [`PacketIo::max_frame`], read once.
    max_frame: usize,
    /// [`PacketIo::checksum_state_unknown`], read once: every TCP/UDP
    /// checksum is checked for being a sender's partial one.
    detect_partial: bool,
    /// [`PacketIo::mtu`], read once.
    mtu: usize,
}

/// Affinity entries re-filed per poll after a timeout cut.
const REFILE_CHUNK: usize = 4096;

impl<I: PacketIo, C: Clock> std::fmt::Debug for Worker<I, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("generation", &self.snapshot.generation())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<I: PacketIo, C: Clock> Worker<I, C> {
    /// Builds a worker, allocating every table and buffer it will use.
    pub fn new(
        io: I,
        clock: C,
        config: WorkerConfig,
        snapshot: Arc<Snapshot>,
    ) -> Result<Self, TableError> {
        let now = clock.now();
        let max_frame = io.max_frame();
        let detect_partial = io.checksum_state_unknown();
        let mtu = io.mtu();
        let mut io = io;
        io.serve_sources(&config.snat.addrs());
        io.serve_own_addrs(&config.icmp.own_addrs);
        // A worker built with services already (tests, restarts) tells
        // its backend their addresses now; swaps tell it of changes.
        if !snapshot.frontend_addrs().is_empty() {
            io.serve_frontends(snapshot.frontend_addrs());
        }
        if !snapshot.endpoint_addrs().is_empty() {
            io.serve_endpoints(snapshot.endpoint_addrs());
        }
        Ok(Self {
            icmp: Icmp::new(config.icmp.clone(), now),
            v4: Tables::new(&config, now)?,
            v6: Tables::new(&config, now)?,
            io,
            clock,
            config,
            snapshot,
            updates: None,
            retired: None,
            commands: None,
            rx: Vec::with_capacity(BURST),
            tx: Vec::with_capacity(BURST),
            dropped: Vec::with_capacity(BURST),
            slow: Vec::with_capacity(BURST),
            meta: [Meta::EMPTY; BURST],
            actions: [Action::SlowPath; BURST],
            ports: [0; BURST],
            stats: WorkerStats::default(),
            reaped_at: now,
            busy_since: None,
            refile: None,
            swapped_at: now,
            held: false,
            max_frame,
            detect_partial,
            mtu,
        })
    }

    /// Subscribes to snapshot updates; old snapshots are sent to `retired`
    /// so the worker never frees a big one itself.
    #[must_use]
    pub fn with_updates(
        mut self,
        updates: Receiver<Arc<Snapshot>>,
        retired: Sender<Arc<Snapshot>>,
    ) -> Self {
        self.updates = Some(updates);
        self.retired = Some(retired);
        self
    }

    /// Takes requests (affinity listing, deletion, counters) from the
    /// control plane, answered at burst boundaries.
    #[must_use]
    pub fn with_commands(mut self, commands: Receiver<Command>) -> Self {
        self.commands = Some(commands);
        self
    }

    pub fn io(&self) -> &I {
        &self.io
    }

    pub fn io_mut(&mut self) -> &mut I {
        &mut self.io
    }

    pub fn stats(&self) -> WorkerStats {
        let mut s = self.stats;
        s.affinity_evictions =
            self.v4.affinity.counters().evictions + self.v6.affinity.counters().evictions;
        s.flow_evictions = self.v4.flows.counters().evictions + self.v6.flows.counters().evictions;
        let (a4, a6) = (self.v4.affinity.counters(), self.v6.affinity.counters());
        s.affinity_admissions = a4.probation_inserts + a6.probation_inserts;
        s.affinity_promotions = a4.promotions + a6.promotions;
        s.affinity_probation_evictions = a4.probation_evictions + a6.probation_evictions;
        s.snapshot_generation = self.snapshot.generation();
        s
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    pub fn affinity_v4(&self) -> &AffinityTable<Ipv4Addr> {
        &self.v4.affinity
    }

    pub fn affinity_v6(&self) -> &AffinityTable<Ipv6Addr> {
        &self.v6.affinity
    }

    pub fn affinity_v4_mut(&mut self) -> &mut AffinityTable<Ipv4Addr> {
        &mut self.v4.affinity
    }

    pub fn affinity_v6_mut(&mut self) -> &mut AffinityTable<Ipv6Addr> {
        &mut self.v6.affinity
    }

    pub fn flows_v4(&self) -> &FlowTable<Ipv4Addr> {
        &self.v4.flows
    }

    pub fn flows_v6(&self) -> &FlowTable<Ipv6Addr> {
        &self.v6.flows
    }

    /// Replaces the snapshot directly (tests, and single-threaded use).
    pub fn set_snapshot(&mut self, snapshot: Arc<Snapshot>) {
        drop(self.swap_snapshot(snapshot));
    }

    /// Installs `newest`, returning the old snapshot. Entries filed on the
    /// wheel under a timeout this snapshot cuts are re-filed over the next
    /// polls, or the wheel would reap them at their old, later deadline.
    fn swap_snapshot(&mut self, newest: Arc<Snapshot>) -> Arc<Snapshot> {
        // Entries restored before the first snapshot were filed under the
        // timeouts they were saved with: file them under today's.
        let restored = self.snapshot.generation() == 0
            && !(self.v4.affinity.is_empty() && self.v6.affinity.is_empty());
        if restored || newest.shortens_affinity_of(&self.snapshot) {
            self.refile = Some((false, 0));
        }
        if !newest.same_frontend_addrs(&self.snapshot) {
            self.io.serve_frontends(newest.frontend_addrs());
        }
        if !newest.same_endpoint_addrs(&self.snapshot) {
            self.io.serve_endpoints(newest.endpoint_addrs());
        }
        self.stats.snapshot_swaps += 1;
        self.swapped_at = self.clock.now();
        std::mem::replace(&mut self.snapshot, newest)
    }

    /// One iteration of the poll loop. Returns how many packets it received.
    pub fn poll(&mut self) -> usize {
        self.take_update();
        let now = self.clock.now();
        if now != self.reaped_at {
            self.reap(now);
        }
        if let Some((v6, start)) = self.refile {
            self.refile_chunk(v6, start, now);
        }
        if self.commands.as_ref().is_some_and(|c| !c.is_empty()) {
            self.serve_commands(now);
        }
        if self.held {
            return 0;
        }
        let n = self.io.rx_burst(&mut self.rx);
        if n == 0 {
            self.busy_since = None;
            return 0;
        }
        // Back to back busy polls read the clock once each: this one's
        // busy time starts where the last one's ended.
        let started = self.busy_since.unwrap_or_else(Instant::now);
        self.process_burst(now);
        let ended = Instant::now();
        self.stats.rx_packets += n as u64;
        self.stats.busy_polls += 1;
        self.stats.busy_ns += ended.saturating_duration_since(started).as_nanos() as u64;
        self.busy_since = Some(ended);
        n
    }

    /// Adopts the newest published snapshot, if any, at a burst boundary.
    fn take_update(&mut self) {
        let Some(updates) = &self.updates else {
            return;
        };
        let Some(newest) = updates.try_iter().last() else {
            return;
        };
        let old = self.swap_snapshot(newest);
        if let Some(retired) = &self.retired {
            // If the control thread is gone or behind, freeing here is the
            // lesser evil than holding every old snapshot.
            let _ = retired.try_send(old);
        }
    }

    /// Answers the control plane's requests at a burst boundary; the
    /// answers allocate, which is why this is not in the packet loop.
    pub fn serve_commands(&mut self, now: u32) {
        let Some(commands) = &self.commands else {
            return;
        };
        for cmd in commands.try_iter() {
            match cmd {
                Command::ListAffinity { filter, reply } => {
                    let mut out = Vec::new();
                    command::list(&self.v4.affinity, &self.snapshot, &filter, now, &mut out);
                    command::list(&self.v6.affinity, &self.snapshot, &filter, now, &mut out);
                    let _ = reply.send(out);
                }
                Command::DeleteAffinity { filter, reply } => {
                    let n = command::delete(&mut self.v4.affinity, &filter)
                        + command::delete(&mut self.v6.affinity, &filter);
                    let _ = reply.send(n);
                }
                Command::Export { from, slots, reply } => {
                    let _ = reply.send(self.tables().export(&self.snapshot, from, slots, now));
                }
                Command::Restore { state, reply } => {
                    // Field by field: `commands` is borrowed.
                    let report = TablesMut {
                        affinity_v4: &mut self.v4.affinity,
                        affinity_v6: &mut self.v6.affinity,
                        flows_v4: &mut self.v4.flows,
                        flows_v6: &mut self.v6.flows,
                    }
                    .restore(&state, &self.snapshot, now);
                    let _ = reply.send(report);
                }
                Command::Hold { reply } => {
                    self.held = true;
                    let _ = reply.send(());
                }
                Command::BackendLoad { backends, reply } => {
                    let mut out = vec![command::BackendLoad::default(); backends.len()];
                    command::backend_load(
                        &self.v4.affinity,
                        &self.v4.flows,
                        &self.snapshot,
                        &backends,
                        now,
                        &mut out,
                    );
                    command::backend_load(
                        &self.v6.affinity,
                        &self.v6.flows,
                        &self.snapshot,
                        &backends,
                        now,
                        &mut out,
                    );
                    let _ = reply.send(out);
                }
                Command::Report { reply } => {
                    let _ = reply.send(WorkerReport {
                        stats: self.stats(),
                        affinity_entries: self.v4.affinity.len() + self.v6.affinity.len(),
                        affinity_capacity: self.v4.affinity.capacity()
                            + self.v6.affinity.capacity(),
                        affinity_capacity_v4: self.v4.affinity.capacity(),
                        affinity_capacity_v6: self.v6.affinity.capacity(),
                        affinity_on_probation: self.v4.affinity.len_on_probation()
                            + self.v6.affinity.len_on_probation(),
                        flow_entries: self.v4.flows.len() + self.v6.flows.len(),
                        flow_capacity: self.v4.flows.capacity() + self.v6.flows.capacity(),
                        io: {
                            let mut io = Vec::new();
                            self.io.counters(&mut io);
                            io
                        },
                    });
                }
            }
        }
    }

    /// The four tables, to save from (see [`crate::state`]).
    pub fn tables(&self) -> TablesRef<'_> {
        TablesRef {
            affinity_v4: &self.v4.affinity,
            affinity_v6: &self.v6.affinity,
            flows_v4: &self.v4.flows,
            flows_v6: &self.v6.flows,
        }
    }

    /// Puts saved entries back at `now`.
    pub fn restore(&mut self, state: &WorkerState, now: u32) -> RestoreReport {
        TablesMut {
            affinity_v4: &mut self.v4.affinity,
            affinity_v6: &mut self.v6.affinity,
            flows_v4: &mut self.v4.flows,
            flows_v6: &mut self.v6.flows,
        }
        .restore(state, &self.snapshot, now)
    }

    fn refile_chunk(&mut self, v6: bool, start: usize, now: u32) {
        let snap = &self.snapshot;
        let timeout_of = |id| snap.affinity_timeout(id);
        let next = if v6 {
            self.v6
                .affinity
                .refile(start, REFILE_CHUNK, now, timeout_of)
        } else {
            self.v4
                .affinity
                .refile(start, REFILE_CHUNK, now, timeout_of)
        };
        self.refile = match (next, v6) {
            (Some(at), _) => Some((v6, at)),
            (None, false) => Some((true, 0)),
            (None, true) => None,
        };
    }

    /// Reaps expired connections and affinity entries.
    fn reap(&mut self, now: u32) {
        self.reaped_at = now;
        let snap = &self.snapshot;
        self.v4.flows.expire(now);
        self.v6.flows.expire(now);
        // Before the first snapshot no service port's timeout is known:
        // entries restored then wait for it rather than be reaped as if
        // their service ports had lost affinity.
        if snap.generation() == 0 {
            return;
        }
        self.v4.affinity.expire(now, |id| snap.affinity_timeout(id));
        self.v6.affinity.expire(now, |id| snap.affinity_timeout(id));
    }

    fn process_burst(&mut self, now: u32) {
        let n = self.rx.len();
        // Stage 1: parse everything, start loading flow buckets.
        for i in 0..n {
            let frame = self.rx[i].data();
            let meta = if frame.len() <= self.max_frame {
                parse(frame)
            } else {
                Meta::decided(Action::Drop(DropReason::Oversized))
            };
            if meta.early.is_none() {
                if self.rx[i].checksum_partial()
                    || (self.detect_partial && looks_partial(self.rx[i].data(), &meta))
                {
                    complete_checksum(self.rx[i].data_mut(), &meta);
                    self.stats.checksums_completed += 1;
                }
                match meta.tuple {
                    Tuple::V4(_) => self.v4.flows.prefetch_bucket(meta.flow_hash),
                    Tuple::V6(_) => self.v6.flows.prefetch_bucket(meta.flow_hash),
                }
            }
            self.meta[i] = meta;
        }
        // Stage 2: start loading the entries those buckets point at; for
        // packets that look like new connections, look the destination up
        // once (kept for stage 3) and start loading the affinity bucket.
        let mut opening = false;
        for i in 0..n {
            let meta = &mut self.meta[i];
            if meta.early.is_some() {
                continue;
            }
            meta.flow_hint = match meta.tuple {
                Tuple::V4(_) => self.v4.flows.prefetch_entry(meta.flow_hash),
                Tuple::V6(_) => self.v6.flows.prefetch_entry(meta.flow_hash),
            };
            if meta.opens {
                opening = true;
                meta.service_known = true;
                meta.service = match meta.tuple {
                    Tuple::V4(key) => prefetch_affinity(&self.snapshot, &self.v4.affinity, &key),
                    Tuple::V6(key) => prefetch_affinity(&self.snapshot, &self.v6.affinity, &key),
                };
            }
        }
        if opening {
            // Stage 2b: the affinity entries those buckets point at.
            for i in 0..n {
                let meta = &self.meta[i];
                if meta.early.is_some() || !meta.opens {
                    continue;
                }
                let Some(svc) = meta.service.and_then(|s| self.snapshot.port_at(s)) else {
                    continue;
                };
                match meta.tuple {
                    Tuple::V4(key) => prefetch_affinity_entry(svc, &self.v4.affinity, &key),
                    Tuple::V6(key) => prefetch_affinity_entry(svc, &self.v6.affinity, &key),
                }
            }
            // Stage 2c: the backend a new connection will get is known
            // (its client's live sticky one, or Maglev's pick), so is the
            // reply tuple it will be filed under: start loading its bucket.
            for i in 0..n {
                let meta = &self.meta[i];
                if meta.early.is_some() || !meta.opens {
                    continue;
                }
                let Some(svc) = meta.service.and_then(|s| self.snapshot.port_at(s)) else {
                    continue;
                };
                match meta.tuple {
                    Tuple::V4(key) => prefetch_reply(svc, &self.v4, &key, now),
                    Tuple::V6(key) => prefetch_reply(svc, &self.v6, &key, now),
                }
            }
        }
        // Stage 3: decide and rewrite.
        for i in 0..n {
            let meta = self.meta[i];
            let action = if meta.icmp {
                self.icmp_message(i, &meta, now)
            } else if let Some(action) = meta.early {
                action
            } else {
                self.decide(i, &meta, now)
            };
            match action {
                Action::Drop(reason) => self.stats.drop(reason),
                Action::SlowPath => self.stats.slow_path += 1,
                Action::Forward => {}
            }
            self.actions[i] = action;
        }
        // Sort the burst by fate without copying a byte of it.
        for (i, mut buf) in self.rx.drain(..).enumerate() {
            match self.actions[i] {
                Action::Forward => {
                    buf.set_port(self.ports[i]);
                    self.tx.push(buf);
                }
                Action::Drop(_) => self.dropped.push(buf),
                Action::SlowPath => self.slow.push(buf),
            }
        }
        self.stats.tx_packets += self.io.tx_burst(&mut self.tx) as u64;
        self.io.free_burst(&mut self.dropped);
        // The slow path (ARP, ND, ICMP) is served by the I/O layer's
        // control plane: the backend frees these or passes them on.
        self.io.slow_burst(&mut self.slow);
    }

    /// Decides the burst's `i`th packet, a TCP or UDP one, and rewrites it.
    #[inline]
    fn decide(&mut self, i: usize, meta: &Meta, now: u32) -> Action {
        let port = &mut self.ports[i];
        *port = self.rx[i].port();
        let frame = self.rx[i].data_mut();
        let ctx = Ctx {
            snapshot: &self.snapshot,
            mac: self.config.mac,
            snat: &self.config.snat,
            now,
            swapped_at: self.swapped_at,
            stats: &mut self.stats,
        };
        let mut tunnel = None;
        let (action, dst, protocol) = match meta.tuple {
            Tuple::V4(key) => (
                handle(ctx, &mut self.v4, key, meta, frame, port, &mut tunnel),
                key.dst.ip(),
                key.protocol,
            ),
            Tuple::V6(key) => (
                handle(ctx, &mut self.v6, key, meta, frame, port, &mut tunnel),
                key.dst.ip(),
                key.protocol,
            ),
        };
        if action != Action::Forward {
            return self.reject(i, meta, dst, action, now);
        }
        match tunnel {
            None => action,
            Some(t) => self.send_tunnelled(i, meta, protocol, t, now),
        }
    }

    /// The longest outer packet the interface sends, for a frame whose IP
    /// header is at `l3`.
    fn tunnel_limit(&self, l3: usize) -> usize {
        self.mtu.min(self.max_frame.saturating_sub(l3))
    }

    /// Wraps the burst's `i`th packet, already addressed to its endpoint's
    /// next hop, for the tunnel; one too big for it once wrapped is
    /// answered as a router would, so the client's path MTU shrinks.
    fn send_tunnelled(
        &mut self,
        i: usize,
        meta: &Meta,
        protocol: u8,
        t: Tunnelled,
        now: u32,
    ) -> Action {
        let (l3, l4) = (usize::from(meta.l3), usize::from(meta.l4));
        let limit = self.tunnel_limit(l3);
        let buf = &mut self.rx[i];
        let refused =
            match encap::encapsulate(buf, l3, l4, protocol, t.encap, &self.config.tunnel, limit) {
                Ok(()) => {
                    self.stats.tunnelled += 1;
                    return Action::Forward;
                }
                Err(refused) => refused,
            };
        if let Refused::TooBig {
            mtu,
            dont_fragment: true,
        } = refused
        {
            let env = &mut icmp_env!(self, now);
            if self.icmp.too_big(env, buf, l3, mtu, t.client_mac) {
                self.ports[i] = buf.port();
                return Action::Forward;
            }
        }
        Action::Drop(refused.reason())
    }

    /// Answers or translates the burst's `i`th packet, an ICMP message.
    fn icmp_message(&mut self, i: usize, meta: &Meta, now: u32) -> Action {
        self.ports[i] = self.rx[i].port();
        let env = &mut icmp_env!(self, now);
        let (l3, l4) = (usize::from(meta.l3), usize::from(meta.l4));
        let mut tunnel = None;
        let action = self.icmp.message(
            env,
            &mut self.rx[i],
            l3,
            l4,
            &mut self.ports[i],
            &mut tunnel,
        );
        let Some(encap) = tunnel.filter(|_| action == Action::Forward) else {
            return action;
        };
        // An error about a reply, for a tunnelled connection's endpoint:
        // wrapped as the connection's packets are (and never answered
        // with another error).
        let protocol = if self.rx[i].data().get(l3).is_some_and(|b| b >> 4 == 4) {
            IpProtocol::ICMP
        } else {
            IpProtocol::ICMPV6
        };
        let limit = self.tunnel_limit(l3);
        match encap::encapsulate(
            &mut self.rx[i],
            l3,
            l4,
            protocol,
            encap,
            &self.config.tunnel,
            limit,
        ) {
            Ok(()) => {
                self.stats.tunnelled += 1;
                Action::Forward
            }
            Err(refused) => Action::Drop(refused.reason()),
        }
    }

    /// No usable endpoint, or no such port: refused as kube-proxy refuses
    /// it (a port unreachable in place of the packet), where the rate
    /// allows; otherwise `action` stands.
    fn reject(&mut self, i: usize, meta: &Meta, dst: IpAddr, action: Action, now: u32) -> Action {
        let env = &mut icmp_env!(self, now);
        let l3 = usize::from(meta.l3);
        self.icmp.reject(env, &mut self.rx[i], l3, dst, action)
    }

    /// Runs `poll` until `stop` says so.
    pub fn run(&mut self, stop: &std::sync::atomic::AtomicBool) {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if self.poll() == 0 {
                std::hint::spin_loop();
            }
        }
    }

    /// The action taken for each packet of the last burst (fixtures).
    pub fn last_actions(&self, n: usize) -> &[Action] {
        &self.actions[..n.min(BURST)]
    }
}

/// Completes the TCP/UDP checksum of a frame its sender left to offload
/// ([`PacketBuf::checksum_partial`]) before anything rewrites it: an
/// incremental update of a pseudo-header sum is no checksum, and a backend
/// receiving one (or DSR's untouched one) drops the packet. Only local
/// senders' frames need it, so it stays off the hot path's code.
#[cold]
#[inline(never)]
fn complete_checksum(frame: &mut [u8], meta: &Meta) {
    let l3 = usize::from(meta.l3);
    let l4 = l3 + usize::from(meta.l4);
    let protocol = match meta.tuple {
        Tuple::V4(key) => key.protocol,
        Tuple::V6(key) => key.protocol,
    };
    let word = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    // The segment ends where the IP header says (a short frame is padded).
    let end = match frame.get(l3).map(|b| b >> 4) {
        Some(4) => word(l3 + 2).map(|total| l3 + total),
        Some(6) => word(l3 + 4).map(|payload| l3 + ipv6::HEADER_LEN + payload),
        _ => None,
    };
    let (field, udp) = match protocol {
        IpProtocol::TCP => (16, false),
        IpProtocol::UDP => (6, true),
        _ => return,
    };
    if let Some(segment) = end.and_then(|end| frame.get_mut(l4..end)) {
        checksum::complete_partial(segment, field, udp);
    }
}

/// Whether a frame's TCP/UDP checksum field holds only its pseudo-header's
/// sum, as a local sender's checksum offload leaves it, for backends that
/// cannot say ([`PacketIo::checksum_state_unknown`]: `AF_XDP` hands over
/// bytes, not the kernel's checksum state). A full checksum that happens
/// to equal that sum (one in 65536) verifies as it is, and is left alone.
#[inline(never)]
fn looks_partial(frame: &[u8], meta: &Meta) -> bool {
    let l3 = usize::from(meta.l3);
    let l4 = l3 + usize::from(meta.l4);
    let word = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let protocol = match meta.tuple {
        Tuple::V4(key) => key.protocol,
        Tuple::V6(key) => key.protocol,
    };
    let field = match protocol {
        IpProtocol::TCP => 16,
        IpProtocol::UDP => 6,
        _ => return false,
    };
    let (pseudo, end) = match frame.get(l3).map(|b| b >> 4) {
        Some(4) => {
            let (Some(total), Some(ip)) = (word(l3 + 2), frame.get(l3 + 12..l3 + 20)) else {
                return false;
            };
            let end = l3 + usize::from(total);
            let src = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            let dst = Ipv4Addr::new(ip[4], ip[5], ip[6], ip[7]);
            let len = end.saturating_sub(l4) as u32;
            (checksum::pseudo_header_v4(src, dst, protocol, len), end)
        }
        Some(6) => {
            let (Some(payload), Some(ip)) = (word(l3 + 4), frame.get(l3 + 8..l3 + 40)) else {
                return false;
            };
            let end = l3 + ipv6::HEADER_LEN + usize::from(payload);
            let mut a = [0u8; 16];
            a.copy_from_slice(&ip[..16]);
            let src = Ipv6Addr::from(a);
            a.copy_from_slice(&ip[16..]);
            let dst = Ipv6Addr::from(a);
            let len = end.saturating_sub(l4) as u32;
            (checksum::pseudo_header_v6(src, dst, protocol, len), end)
        }
        _ => return false,
    };
    if word(l4 + field) != Some(checksum::fold(pseudo)) {
        return false;
    }
    frame
        .get(l4..end)
        .is_some_and(|segment| checksum::fold(pseudo + checksum::sum(segment)) != 0xffff)
}

/// Whether a packet with these flags may open a connection.
#[inline(always)]
fn opens(protocol: u8, tcp_flags: u8) -> bool {
    match protocol {
        IpProtocol::TCP => tcp_flags & (SYN | ACK) == SYN,
        IpProtocol::UDP => true,
        _ => false,
    }
}

/// Looks the packet's destination up and, under `ClientIP`, starts loading
/// the client's affinity bucket. Returns the service port's index.
#[inline]
fn prefetch_affinity<A: Family>(
    snapshot: &Snapshot,
    table: &AffinityTable<A>,
    key: &FlowKey<A>,
) -> Option<u32> {
    let index = snapshot.service_index(key.dst.ip(), key.dst_port, key.protocol)?;
    if let Some(svc) = snapshot.port_at(index)
        && let Affinity::ClientIp {
            v4_prefix,
            v6_prefix,
            ..
        } = svc.spec.affinity
    {
        let akey = affinity_key(svc, key.src, v4_prefix, v6_prefix);
        table.prefetch_bucket(AffinityTable::hash(&akey));
    }
    Some(index)
}

/// Starts loading the affinity entry the client's bucket points at.
#[inline]
fn prefetch_affinity_entry<A: Family>(
    svc: &ServicePort,
    table: &AffinityTable<A>,
    key: &FlowKey<A>,
) {
    if let Affinity::ClientIp {
        v4_prefix,
        v6_prefix,
        ..
    } = svc.spec.affinity
    {
        let akey = affinity_key(svc, key.src, v4_prefix, v6_prefix);
        table.prefetch_entry(AffinityTable::hash(&akey));
    }
}

/// For a NAT connection under `ClientIP`, starts loading the bucket its
/// reply tuple will go in: the backend is the client's live sticky one if
/// usable, else Maglev's pick (a new client, or a flood of them).
#[inline]
fn prefetch_reply<A: Family>(svc: &ServicePort, tables: &Tables<A>, key: &FlowKey<A>, now: u32) {
    let Affinity::ClientIp {
        timeout,
        v4_prefix,
        v6_prefix,
        ..
    } = svc.spec.affinity
    else {
        return;
    };
    // `dsr` files no reply tuple; `fullnat`'s holds a port not chosen yet.
    if svc.spec.mode != ForwardMode::Nat {
        return;
    }
    let akey = affinity_key(svc, key.src, v4_prefix, v6_prefix);
    let sticky = match tables
        .affinity
        .lookup(AffinityTable::hash(&akey), &akey, timeout, now)
    {
        Sticky::Live { backend, .. } => svc.usable(backend),
        Sticky::Expired { .. } | Sticky::Missing => None,
    };
    let Some(b) = sticky.or_else(|| svc.pick(stable_hash(&akey.client.octets16()[..A::LEN])))
    else {
        return;
    };
    let Some(addr) = from_ip::<A>(b.addr) else {
        return;
    };
    let reply = FlowKey {
        src: addr,
        dst: key.src,
        src_port: b.port,
        dst_port: key.src_port,
        protocol: key.protocol,
    };
    tables.flows.prefetch_bucket(reply.hash());
}

#[inline(always)]
fn affinity_key<A: Family>(
    svc: &ServicePort,
    client: A,
    v4_prefix: u8,
    v6_prefix: u8,
) -> AffinityKey<A> {
    let prefix = if A::LEN == 4 { v4_prefix } else { v6_prefix };
    AffinityKey {
        service: svc.spec.id,
        client: client.masked(prefix),
    }
}

/// Parses a frame down to its transport ports.
#[inline]
fn parse(frame: &[u8]) -> Meta {
    let eth = match ethernet::Frame::new_checked(frame) {
        Ok(eth) => eth,
        Err(e) => return Meta::decided(Action::Drop(e.into())),
    };
    let (ethertype, l3) = match eth.ethertype() {
        EtherType::VLAN => match vlan::Packet::new_checked(eth.payload()) {
            Ok(tag) => (
                tag.inner_ethertype(),
                ethernet::HEADER_LEN + vlan::HEADER_LEN,
            ),
            Err(e) => return Meta::decided(Action::Drop(e.into())),
        },
        other => (other, ethernet::HEADER_LEN),
    };
    let ip = &frame[l3..];
    match ethertype {
        EtherType::IPV4 => parse_v4(ip, l3),
        EtherType::IPV6 => parse_v6(ip, l3),
        EtherType::ARP => Meta::decided(Action::SlowPath),
        _ => Meta::decided(Action::Drop(DropReason::UnsupportedL2)),
    }
}

#[inline]
fn parse_v4(ip: &[u8], l3: usize) -> Meta {
    let p = match ipv4::Packet::new_checked(ip) {
        Ok(p) => p,
        Err(e) => return Meta::decided(Action::Drop(e.into())),
    };
    // No service is multicast or broadcast: such a packet is the host's
    // (IGMP, mDNS, DHCP; often TTL 1), not a forwarding failure.
    if p.dst_addr().is_multicast() || p.dst_addr().is_broadcast() {
        return Meta::decided(Action::SlowPath);
    }
    if !p.verify_checksum() {
        return Meta::decided(Action::Drop(DropReason::BadChecksum));
    }
    if p.is_fragment() {
        return Meta::decided(Action::Drop(DropReason::Fragment));
    }
    if p.protocol() == IpProtocol::ICMP {
        // Echo to limpet is answered whatever the TTL; errors it forwards
        // are checked there.
        return Meta::icmp(l3, p.header_len());
    }
    if p.ttl() <= 1 {
        return Meta::decided(Action::Drop(DropReason::TtlExceeded));
    }
    let protocol = p.protocol();
    let l4 = p.header_len();
    let Some((src_port, dst_port, tcp_flags)) = ports(protocol, p.payload()) else {
        return Meta::decided(match protocol {
            IpProtocol::TCP | IpProtocol::UDP => Action::Drop(DropReason::Truncated),
            _ => Action::SlowPath,
        });
    };
    let key = FlowKey {
        src: p.src_addr(),
        dst: p.dst_addr(),
        src_port,
        dst_port,
        protocol,
    };
    Meta {
        early: None,
        tuple: Tuple::V4(key),
        flow_hash: key.hash(),
        flow_hint: NO_HINT,
        l3: l3 as u16,
        l4: l4 as u16,
        tcp_flags,
        opens: opens(protocol, tcp_flags),
        service_known: false,
        service: None,
        icmp: false,
    }
}

#[inline]
fn parse_v6(ip: &[u8], l3: usize) -> Meta {
    let p = match ipv6::Packet::new_checked(ip) {
        Ok(p) => p,
        Err(e) => return Meta::decided(Action::Drop(e.into())),
    };
    // The host's (MLD, ND to solicited-node groups; hop limit 1), as in
    // `parse_v4`. ND is the slow path's in any case.
    if p.dst_addr().is_multicast() {
        return Meta::decided(Action::SlowPath);
    }
    if p.hop_limit() <= 1 {
        return Meta::decided(Action::Drop(DropReason::TtlExceeded));
    }
    let (protocol, offset) = match p.upper_layer() {
        Ok(found) => found,
        Err(e) => return Meta::decided(Action::Drop(e.into())),
    };
    match protocol {
        IpProtocol::FRAGMENT => return Meta::decided(Action::Drop(DropReason::Fragment)),
        IpProtocol::TCP | IpProtocol::UDP => {}
        IpProtocol::AH
        | IpProtocol::ESP
        | IpProtocol::HOPOPTS
        | IpProtocol::ROUTING
        | IpProtocol::DSTOPTS => {
            return Meta::decided(Action::Drop(DropReason::Ipv6ExtHeader));
        }
        IpProtocol::ICMPV6 => return Meta::icmp(l3, ipv6::HEADER_LEN + offset),
        // Anything else: slow path.
        _ => return Meta::decided(Action::SlowPath),
    }
    let Some((src_port, dst_port, tcp_flags)) =
        p.payload().get(offset..).and_then(|l4| ports(protocol, l4))
    else {
        return Meta::decided(Action::Drop(DropReason::Truncated));
    };
    let key = FlowKey {
        src: p.src_addr(),
        dst: p.dst_addr(),
        src_port,
        dst_port,
        protocol,
    };
    Meta {
        early: None,
        tuple: Tuple::V6(key),
        flow_hash: key.hash(),
        flow_hint: NO_HINT,
        l3: l3 as u16,
        l4: (ipv6::HEADER_LEN + offset) as u16,
        tcp_flags,
        opens: opens(protocol, tcp_flags),
        service_known: false,
        service: None,
        icmp: false,
    }
}

/// Ports and TCP flags of a TCP or UDP header; `None` for other protocols
/// or a header that does not check.
#[inline(always)]
fn ports(protocol: u8, l4: &[u8]) -> Option<(u16, u16, u8)> {
    match protocol {
        IpProtocol::TCP => {
            let t = tcp::Packet::new_checked(l4).ok()?;
            Some((t.src_port(), t.dst_port(), t.flags()))
        }
        IpProtocol::UDP => {
            let u = udp::Packet::new_checked(l4).ok()?;
            Some((u.src_port(), u.dst_port(), 0))
        }
        _ => None,
    }
}

/// What `handle` needs from the worker besides the family's tables.
struct Ctx<'a> {
    snapshot: &'a Snapshot,
    mac: MacAddr,
    snat: &'a SnatConfig,
    now: u32,
    /// See [`Worker::swapped_at`].
    swapped_at: u32,
    stats: &'a mut WorkerStats,
}

/// A forwarded packet that still has to be wrapped for its tunnel.
#[derive(Debug, Clone, Copy)]
struct Tunnelled {
    encap: Encap,
    /// Where a "too big" answer goes: the hop the client's packets come
    /// from (the frame's own source address is limpet's by then).
    client_mac: MacAddr,
}

impl Tunnelled {
    /// For a packet of `flow` whose parse found flow hash `hash`; `None`
    /// unless the connection is tunnelled.
    #[inline(always)]
    fn of<A: Family>(flow: &Flow<A>, hash: u64) -> Option<Tunnelled> {
        (flow.tunnel != Tunnel::None).then(|| Tunnelled {
            encap: Encap {
                tunnel: flow.tunnel,
                dst: flow.backend_addr.ip(),
                hash,
            },
            client_mac: flow.client_mac,
        })
    }
}

/// Decides one parsed packet and rewrites it in place. `port` holds the
/// port the packet arrived on, and is set to the port it is to leave by.
/// A packet of a tunnelled connection is addressed to its endpoint's next
/// hop and described in `tunnel`, for the caller to wrap.
#[inline]
fn handle<A: IpRewrite>(
    ctx: Ctx<'_>,
    tables: &mut Tables<A>,
    key: FlowKey<A>,
    meta: &Meta,
    frame: &mut [u8],
    port: &mut u16,
    tunnel: &mut Option<Tunnelled>,
) -> Action {
    let Ctx {
        snapshot,
        mac,
        snat,
        now,
        swapped_at,
        stats,
    } = ctx;
    if let Some((idx, dir)) = tables
        .flows
        .lookup_hinted(meta.flow_hash, meta.flow_hint, &key, now)
    {
        let flow = *tables.flows.get(idx);
        let reopened = dir == Direction::Forward
            && meta.tcp_flags & (SYN | ACK) == SYN
            && matches!(flow.state, FlowState::Closing | FlowState::Reset);
        // kube-proxy deletes the conntrack entries of a removed UDP
        // endpoint, so a stream that never idles is re-balanced at once;
        // TCP connections keep their backend until they end. Only a flow
        // not seen since the last snapshot swap can have lost its backend,
        // so a steady stream pays one comparison.
        let repick = dir == Direction::Forward
            && flow.protocol == IpProtocol::UDP
            && tables.flows.last_seen(idx) <= swapped_at
            && !backend_still_usable(snapshot, meta, &flow);
        if !reopened && !repick {
            tables.flows.seen(idx, dir, meta.tcp_flags, now);
            if flow.awaiting_proof
                && dir == Direction::Forward
                && proves(flow.protocol, meta.tcp_flags)
            {
                confirm(snapshot, tables, idx, &flow, meta, now, stats);
            }
            match dir {
                Direction::Forward => stats.flow_hits += 1,
                Direction::Reply => stats.replies += 1,
            }
            *port = send(frame, meta, &flow, dir, mac);
            *tunnel = Tunnelled::of(&flow, meta.flow_hash);
            return Action::Forward;
        }
        // A SYN reusing the tuple of a closed connection is a new
        // connection, as conntrack sees it: it is balanced afresh; so is a
        // UDP flow whose backend left.
        if repick {
            stats.udp_repicks += 1;
        }
        tables.flows.remove(idx);
    }

    let index = if meta.service_known {
        meta.service
    } else {
        snapshot.service_index(key.dst.ip(), key.dst_port, key.protocol)
    };
    let Some(svc) = index.and_then(|i| snapshot.port_at(i)) else {
        stats.no_service += 1;
        return Action::SlowPath;
    };
    if !index.is_some_and(|i| snapshot.admits(i, key.src.ip())) {
        return Action::Drop(DropReason::SourceRange);
    }
    let picked = match svc.spec.affinity {
        Affinity::None => svc.pick(tuple_hash(&key)).map(|b| (b, false)),
        Affinity::ClientIp {
            timeout,
            v4_prefix,
            v6_prefix,
            repick,
        } => sticky_backend(
            snapshot,
            svc,
            &mut tables.affinity,
            affinity_key(svc, key.src, v4_prefix, v6_prefix),
            (repick == Repick::Connection).then(|| tuple_hash(&key)),
            timeout,
            now,
            stats,
        ),
    };
    let Some((backend, awaiting_proof)) = picked else {
        return Action::Drop(DropReason::NoBackend);
    };
    // Snapshots refuse mixed families: only a broken one fails here.
    let Some(backend_addr) = from_ip::<A>(backend.addr) else {
        return Action::Drop(DropReason::NoBackend);
    };
    let opened = Opened {
        key: &key,
        svc,
        backend,
        backend_addr,
        awaiting_proof,
        port: *port,
    };
    let mut flow = open(opened, frame);
    if flow.nat
        && let Err(reason) = source_nat(snat, &tables.flows, &mut flow, &key, svc.spec.mode)
    {
        return Action::Drop(reason);
    }
    if tables.flows.insert(flow, meta.tcp_flags, now).is_none() {
        return Action::Drop(DropReason::FlowTableFull);
    }
    stats.new_flows += 1;
    *port = send(frame, meta, &flow, Direction::Forward, mac);
    *tunnel = Tunnelled::of(&flow, meta.flow_hash);
    Action::Forward
}

/// A new connection's placement, for [`open`].
#[derive(Clone, Copy)]
struct Opened<'a, A> {
    key: &'a FlowKey<A>,
    svc: &'a ServicePort,
    backend: &'a Backend,
    backend_addr: A,
    awaiting_proof: bool,
    /// The port (interface) it arrived on.
    port: u16,
}

/// The connection entry for a new connection, its source as it came.
#[inline(always)]
fn open<A: IpRewrite>(o: Opened<'_, A>, frame: &[u8]) -> Flow<A> {
    let Opened {
        key,
        svc,
        backend,
        backend_addr,
        awaiting_proof,
        port,
    } = o;
    Flow {
        client: key.src,
        service_addr: key.dst,
        backend_addr,
        client_port: key.src_port,
        service_port: key.dst_port,
        backend_port: backend.port,
        protocol: key.protocol,
        state: FlowState::SynSent,
        nat: svc.spec.mode.translates(),
        awaiting_proof,
        backend: backend.id,
        backend_mac: backend.mac,
        client_mac: ethernet::Frame::new_unchecked(frame).src_addr(),
        client_iface: port,
        backend_iface: backend.iface,
        snat: false,
        snat_addr: A::UNSPECIFIED,
        snat_port: 0,
        tunnel: svc.spec.mode.tunnel(),
    }
}

/// Gives a new `nat` or `fullnat` connection its source translation, if
/// it needs one: under `fullnat` always, under `nat` when its endpoint
/// would answer the client directly. The port is the first candidate this
/// worker owns whose reply tuple no entry holds (live, or idle and not
/// reaped yet).
#[inline]
fn source_nat<A: IpRewrite>(
    config: &SnatConfig,
    flows: &FlowTable<A>,
    flow: &mut Flow<A>,
    key: &FlowKey<A>,
    mode: ForwardMode,
) -> Result<(), DropReason> {
    if mode != ForwardMode::FullNat && config.subnets.is_empty() {
        return Ok(());
    }
    let addr = match config.source(mode == ForwardMode::FullNat, key.src, flow.backend_addr) {
        Source::Kept => return Ok(()),
        Source::Translated(addr) => addr,
        Source::Unavailable => return Err(DropReason::NoSnatAddress),
    };
    flow.snat = true;
    flow.snat_addr = addr;
    for port in config.ports.candidates(key.hash()) {
        flow.snat_port = port;
        if !flows.holds(&flow.reply_key()) {
            return Ok(());
        }
    }
    Err(DropReason::SnatPortsExhausted)
}

/// `ClientIP`: the client's live sticky backend if it is still usable
/// (refreshed), else Maglev's pick over the masked client address (or over
/// `connection`, the 5-tuple's hash, under [`Repick::Connection`]), written
/// to the client's entry. Also says whether the client's entry is on
/// probation, so the connection knows to prove it.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the hot path's state, passed apart
fn sticky_backend<'s, A: Family>(
    snapshot: &Snapshot,
    svc: &'s ServicePort,
    table: &mut AffinityTable<A>,
    akey: AffinityKey<A>,
    connection: Option<u64>,
    timeout: u32,
    now: u32,
    stats: &mut WorkerStats,
) -> Option<(&'s Backend, bool)> {
    let ahash = AffinityTable::hash(&akey);
    let picked =
        || svc.pick(connection.unwrap_or_else(|| stable_hash(&akey.client.octets16()[..A::LEN])));
    match table.lookup(ahash, &akey, timeout, now) {
        Sticky::Live { idx, backend } => {
            if let Some(b) = svc.usable(backend) {
                stats.affinity_hits += 1;
                table.refresh(idx, now);
                Some((b, table.on_probation(idx)))
            } else {
                // Its backend left the usable set: never honoured,
                // never refreshed; the client is picked afresh.
                stats.affinity_stale += 1;
                let b = picked()?;
                table.repoint(idx, b.id, now);
                Some((b, table.on_probation(idx)))
            }
        }
        Sticky::Expired { idx } => {
            stats.affinity_expired += 1;
            let b = picked()?;
            table.repoint(idx, b.id, now);
            Some((b, table.on_probation(idx)))
        }
        Sticky::Missing => {
            stats.affinity_misses += 1;
            let b = picked()?;
            let admitted = table
                .insert(akey, b.id, timeout, now, |id| snapshot.affinity_timeout(id))
                .is_some();
            Some((b, admitted))
        }
    }
}

/// Whether a client packet of a connection awaiting proof proves its client
/// real: for TCP the handshake's final ACK (or anything after it: ACK set,
/// neither SYN nor RST), for UDP any datagram after the first.
#[inline(always)]
fn proves(protocol: u8, tcp_flags: u8) -> bool {
    match protocol {
        IpProtocol::TCP => tcp_flags & (SYN | ACK | RST) == ACK,
        IpProtocol::UDP => true,
        _ => false,
    }
}

/// A connection proved its client real: promote the client's affinity
/// entry. Once per connection, so kept off the hot path's code.
#[cold]
#[inline(never)]
fn confirm<A: Family>(
    snapshot: &Snapshot,
    tables: &mut Tables<A>,
    idx: u32,
    flow: &Flow<A>,
    meta: &Meta,
    now: u32,
    stats: &mut WorkerStats,
) {
    tables.flows.proved(idx);
    let Some(svc) = flow_service(snapshot, meta, flow) else {
        return;
    };
    let Affinity::ClientIp {
        timeout,
        v4_prefix,
        v6_prefix,
        ..
    } = svc.spec.affinity
    else {
        return;
    };
    let akey = affinity_key(svc, flow.client, v4_prefix, v6_prefix);
    if !tables
        .affinity
        .promote(AffinityTable::hash(&akey), &akey, timeout, now)
    {
        stats.affinity_proofs_unpromoted += 1;
    }
}

/// The service port a connection belongs to under the current snapshot,
/// from the parse stage's lookup where it made one.
#[inline]
fn flow_service<'s, A: Family>(
    snapshot: &'s Snapshot,
    meta: &Meta,
    flow: &Flow<A>,
) -> Option<&'s ServicePort> {
    let index = if meta.service_known {
        meta.service
    } else {
        snapshot.service_index(flow.service_addr.ip(), flow.service_port, flow.protocol)
    };
    index.and_then(|i| snapshot.port_at(i))
}

/// Whether a connection's backend is still in its service's usable set.
#[cold]
#[inline(never)]
fn backend_still_usable<A: Family>(snapshot: &Snapshot, meta: &Meta, flow: &Flow<A>) -> bool {
    flow_service(snapshot, meta, flow).is_some_and(|svc| svc.usable(flow.backend).is_some())
}

/// The 5-tuple hash `None` affinity balances on; stable across instances.
#[inline(always)]
fn tuple_hash<A: Family>(key: &FlowKey<A>) -> u64 {
    let mut bytes = [0u8; 37];
    bytes[..16].copy_from_slice(&key.src.octets16());
    bytes[16..32].copy_from_slice(&key.dst.octets16());
    bytes[32..34].copy_from_slice(&key.src_port.to_be_bytes());
    bytes[34..36].copy_from_slice(&key.dst_port.to_be_bytes());
    bytes[36] = key.protocol;
    stable_hash(&bytes)
}

/// Rewrites a packet of `flow` travelling `dir`, points it at its next hop
/// and returns the port it leaves by.
#[inline(always)]
fn send<A: IpRewrite>(
    frame: &mut [u8],
    meta: &Meta,
    flow: &Flow<A>,
    dir: Direction,
    mac: MacAddr,
) -> u16 {
    let mut eth = ethernet::Frame::new_unchecked(&mut *frame);
    eth.set_src_addr(mac);
    let port = match dir {
        Direction::Forward => {
            eth.set_dst_addr(flow.backend_mac);
            flow.backend_iface
        }
        Direction::Reply => {
            eth.set_dst_addr(flow.client_mac);
            flow.client_iface
        }
    };
    if !flow.nat {
        // dsr: the backend holds the service address; only L2 changes.
        return port;
    }
    let Some(ip) = frame.get_mut(usize::from(meta.l3)..) else {
        return port;
    };
    let l4 = usize::from(meta.l4);
    if flow.snat {
        let (src, dst) = match dir {
            Direction::Forward => (
                (flow.snat_addr, flow.snat_port),
                (flow.backend_addr, flow.backend_port),
            ),
            Direction::Reply => (
                (flow.service_addr, flow.service_port),
                (flow.client, flow.client_port),
            ),
        };
        rewrite_both(ip, l4, flow.protocol, src, dst);
        return port;
    }
    match dir {
        Direction::Forward => rewrite(
            ip,
            l4,
            flow.protocol,
            End::Destination,
            flow.backend_addr,
            flow.backend_port,
        ),
        Direction::Reply => rewrite(
            ip,
            l4,
            flow.protocol,
            End::Source,
            flow.service_addr,
            flow.service_port,
        ),
    }
    port
}
