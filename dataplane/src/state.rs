//! A worker's tables as data, so they outlive the process: what a planned
//! restart hands to the next process and a periodic checkpoint keeps for
//! the next one after a crash (the file around it is the control plane's
//! `checkpoint` module).
//!
//! Every entry is saved with its last refresh in Unix seconds (workers
//! count time on a wall-clock-anchored [`MonotonicClock`]), so timeouts
//! keep running across the gap: an entry idle past its timeout by the time
//! it is restored is left out, the rest expire when they would have.
//! Affinity entries also carry the timeout and client prefix their service
//! port had when saved: the next process may restore them before it has a
//! snapshot, and needs both to file them and to route them to workers.
//!
//! The encoding is explicit (fields one by one, integers little-endian,
//! addresses in network order), never a copy of the in-memory layout, and
//! [`LAYOUT`] names it: its fingerprint goes into the file, so a build that
//! reads the fields differently refuses the file instead of misreading it.
//!
//! Export walks the tables a chunk of slots at a time ([`ExportCursor`]):
//! the worker answers one chunk per burst boundary, so saving a million
//! entries never stalls its packets for long. Entries never move in a
//! table, so a walk in chunks sees every entry that stayed put; what
//! changed during the walk is what a checkpoint may miss.
//!
//! [`MonotonicClock`]: crate::clock::MonotonicClock

use crate::affinity::{
    AffinityEntry, AffinityKey, AffinityTable, Restored, ServicePortId, deadline,
};
use crate::family::Family;
use crate::flow::{Flow, FlowState, FlowTable};
use crate::snapshot::{Affinity, Snapshot};
use crate::wire::MacAddr;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The encoding of saved entries, field by field. Change it together with
/// the encoder and decoder below; its fingerprint then changes and files
/// written in the old encoding are refused.
pub const LAYOUT: &str = "limpet worker state: \
    affinity{service:u32,client:addr,backend:u32,last_seen:u32,timeout:u32,\
    tier:u8(probation=0,protected=1),prefix:u8}; \
    flow{client:addr,service_addr:addr,backend_addr:addr,client_port:u16,service_port:u16,\
    backend_port:u16,protocol:u8,state:u8(syn_sent=0,established=1,closing=2,reset=3),\
    nat:u8,awaiting_proof:u8,backend:u32,backend_mac:[u8;6],client_mac:[u8;6],client_iface:u16,\
    backend_iface:u16,snat:u8,snat_addr:addr,snat_port:u16,tunnel:u8,last_seen:u32}; \
    worker{affinity_v4,affinity_v6,flows_v4,flows_v6: u64 count then entries}; \
    addr: 4 or 16 bytes, network order; integers little-endian; times Unix seconds";

/// The fingerprint of [`LAYOUT`], as the file carries it.
pub fn layout_fingerprint() -> u64 {
    xxhash_rust::xxh3::xxh3_64(LAYOUT.as_bytes())
}

/// One saved affinity entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedAffinity<A> {
    pub entry: AffinityEntry<A>,
    /// Unix seconds of the client's last new connection.
    pub last_seen: u32,
    /// Its service port's `timeoutSeconds` when saved.
    pub timeout: u32,
    /// Whether its client had proved real (the protected tier) or was on
    /// probation.
    pub protected: bool,
    /// The client prefix its service port grouped clients by (32 / 128: one
    /// address).
    pub prefix: u8,
}

/// One saved connection, NAT state and all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedFlow<A> {
    pub flow: Flow<A>,
    /// Unix seconds of its last packet.
    pub last_seen: u32,
}

/// Everything one worker holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerState {
    pub affinity_v4: Vec<SavedAffinity<Ipv4Addr>>,
    pub affinity_v6: Vec<SavedAffinity<Ipv6Addr>>,
    pub flows_v4: Vec<SavedFlow<Ipv4Addr>>,
    pub flows_v6: Vec<SavedFlow<Ipv6Addr>>,
}

/// Why saved state could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("cut short at byte {at}: {wanted} more bytes wanted, {left} left")]
    Short {
        at: usize,
        wanted: usize,
        left: usize,
    },
    #[error("at byte {at}: {what}")]
    Invalid { at: usize, what: String },
}

/// Reads the encoding back, with the offset of each failure.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.at
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Short {
                at: self.at,
                wanted: n,
                left: self.remaining(),
            });
        }
        let out = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// An error at the current offset.
    pub fn invalid(&self, what: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            at: self.at,
            what: what.into(),
        }
    }

    /// A count of `size`-byte records, checked against what is left before
    /// anything is allocated for them.
    pub fn count(&mut self, size: usize, what: &str) -> Result<usize, DecodeError> {
        let n = self.u64()?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.checked_mul(size).is_some_and(|b| b <= self.remaining()));
        fits.ok_or_else(|| {
            self.invalid(format!(
                "{n} {what} of {size} bytes each do not fit the {} bytes left",
                self.remaining()
            ))
        })
    }

    fn addr<A: Family>(&mut self) -> Result<A, DecodeError> {
        let mut octets = [0u8; 16];
        octets[..A::LEN].copy_from_slice(self.bytes(A::LEN)?);
        Ok(A::from_octets16(&octets))
    }
}

fn put_addr<A: Family>(out: &mut Vec<u8>, a: A) {
    out.extend_from_slice(&a.octets16()[..A::LEN]);
}

fn state_code(s: FlowState) -> u8 {
    match s {
        FlowState::SynSent => 0,
        FlowState::Established => 1,
        FlowState::Closing => 2,
        FlowState::Reset => 3,
    }
}

impl<A: Family> SavedAffinity<A> {
    /// Bytes one entry takes.
    pub const SIZE: usize = 4 + A::LEN + 4 + 4 + 4 + 1 + 1;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.entry.key.service.to_le_bytes());
        put_addr(out, self.entry.key.client);
        out.extend_from_slice(&self.entry.backend.to_le_bytes());
        out.extend_from_slice(&self.last_seen.to_le_bytes());
        out.extend_from_slice(&self.timeout.to_le_bytes());
        out.push(u8::from(self.protected));
        out.push(self.prefix);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let service = r.u32()?;
        let client = r.addr::<A>()?;
        let backend = r.u32()?;
        let last_seen = r.u32()?;
        let timeout = r.u32()?;
        let protected = match r.u8()? {
            0 => false,
            1 => true,
            t => return Err(r.invalid(format!("affinity tier {t}"))),
        };
        let prefix = r.u8()?;
        if prefix > A::MAX_PREFIX {
            return Err(r.invalid(format!("client prefix {prefix} over {}", A::MAX_PREFIX)));
        }
        Ok(Self {
            entry: AffinityEntry {
                key: AffinityKey { service, client },
                backend,
            },
            last_seen,
            timeout,
            protected,
            prefix,
        })
    }
}

impl<A: Family> SavedFlow<A> {
    /// Bytes one connection takes.
    pub const SIZE: usize =
        3 * A::LEN + 2 * 3 + 1 + 1 + 1 + 1 + 4 + 6 + 6 + 2 + 2 + 1 + A::LEN + 2 + 1 + 4;

    fn encode(&self, out: &mut Vec<u8>) {
        let f = &self.flow;
        put_addr(out, f.client);
        put_addr(out, f.service_addr);
        put_addr(out, f.backend_addr);
        for port in [f.client_port, f.service_port, f.backend_port] {
            out.extend_from_slice(&port.to_le_bytes());
        }
        out.push(f.protocol);
        out.push(state_code(f.state));
        out.push(u8::from(f.nat));
        out.push(u8::from(f.awaiting_proof));
        out.extend_from_slice(&f.backend.to_le_bytes());
        out.extend_from_slice(&f.backend_mac.0);
        out.extend_from_slice(&f.client_mac.0);
        out.extend_from_slice(&f.client_iface.to_le_bytes());
        out.extend_from_slice(&f.backend_iface.to_le_bytes());
        out.push(u8::from(f.snat));
        put_addr(out, f.snat_addr);
        out.extend_from_slice(&f.snat_port.to_le_bytes());
        out.push(f.tunnel.to_u8());
        out.extend_from_slice(&self.last_seen.to_le_bytes());
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let client = r.addr::<A>()?;
        let service_addr = r.addr::<A>()?;
        let backend_addr = r.addr::<A>()?;
        let client_port = r.u16()?;
        let service_port = r.u16()?;
        let backend_port = r.u16()?;
        let protocol = r.u8()?;
        let state = match r.u8()? {
            0 => FlowState::SynSent,
            1 => FlowState::Established,
            2 => FlowState::Closing,
            3 => FlowState::Reset,
            other => return Err(r.invalid(format!("connection state {other}"))),
        };
        let nat = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(r.invalid(format!("nat flag {other}"))),
        };
        // A connection whose handshake, when it completes, will promote
        // its client out of probation.
        let awaiting_proof = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(r.invalid(format!("awaiting-proof flag {other}"))),
        };
        let backend = r.u32()?;
        let backend_mac = MacAddr(r.array()?);
        let client_mac = MacAddr(r.array()?);
        let client_iface = r.u16()?;
        let backend_iface = r.u16()?;
        let snat = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(r.invalid(format!("snat flag {other}"))),
        };
        let snat_addr = r.addr::<A>()?;
        let snat_port = r.u16()?;
        let t = r.u8()?;
        let tunnel = crate::encap::Tunnel::from_u8(t)
            .ok_or_else(|| r.invalid(format!("tunnel kind {t}")))?;
        let last_seen = r.u32()?;
        Ok(Self {
            flow: Flow {
                client,
                service_addr,
                backend_addr,
                client_port,
                service_port,
                backend_port,
                protocol,
                state,
                nat,
                awaiting_proof,
                backend,
                backend_mac,
                client_mac,
                client_iface,
                backend_iface,
                snat,
                snat_addr,
                snat_port,
                tunnel,
            },
            last_seen,
        })
    }
}

fn encode_all<T>(out: &mut Vec<u8>, items: &[T], encode: impl Fn(&T, &mut Vec<u8>)) {
    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for item in items {
        encode(item, out);
    }
}

fn decode_all<T>(
    r: &mut Reader<'_>,
    size: usize,
    what: &str,
    decode: impl Fn(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let n = r.count(size, what)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(decode(r)?);
    }
    Ok(out)
}

impl WorkerState {
    /// Entries of every kind.
    pub fn len(&self) -> usize {
        self.affinity_len() + self.flows_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn affinity_len(&self) -> usize {
        self.affinity_v4.len() + self.affinity_v6.len()
    }

    pub fn flows_len(&self) -> usize {
        self.flows_v4.len() + self.flows_v6.len()
    }

    /// Moves `other`'s entries into this one.
    pub fn append(&mut self, mut other: WorkerState) {
        self.affinity_v4.append(&mut other.affinity_v4);
        self.affinity_v6.append(&mut other.affinity_v6);
        self.flows_v4.append(&mut other.flows_v4);
        self.flows_v6.append(&mut other.flows_v6);
    }

    /// Appends the encoding (see [`LAYOUT`]) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(
            32 + self.affinity_v4.len() * SavedAffinity::<Ipv4Addr>::SIZE
                + self.affinity_v6.len() * SavedAffinity::<Ipv6Addr>::SIZE
                + self.flows_v4.len() * SavedFlow::<Ipv4Addr>::SIZE
                + self.flows_v6.len() * SavedFlow::<Ipv6Addr>::SIZE,
        );
        encode_all(out, &self.affinity_v4, SavedAffinity::encode);
        encode_all(out, &self.affinity_v6, SavedAffinity::encode);
        encode_all(out, &self.flows_v4, SavedFlow::encode);
        encode_all(out, &self.flows_v6, SavedFlow::encode);
    }

    /// Reads one worker's state back.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            affinity_v4: decode_all(
                r,
                SavedAffinity::<Ipv4Addr>::SIZE,
                "IPv4 affinity entries",
                SavedAffinity::decode,
            )?,
            affinity_v6: decode_all(
                r,
                SavedAffinity::<Ipv6Addr>::SIZE,
                "IPv6 affinity entries",
                SavedAffinity::decode,
            )?,
            flows_v4: decode_all(
                r,
                SavedFlow::<Ipv4Addr>::SIZE,
                "IPv4 connections",
                SavedFlow::decode,
            )?,
            flows_v6: decode_all(
                r,
                SavedFlow::<Ipv6Addr>::SIZE,
                "IPv6 connections",
                SavedFlow::decode,
            )?,
        })
    }

    /// The service port and backend ids the entries name, for a reader
    /// that must not hand them out again.
    pub fn max_ids(&self) -> (ServicePortId, crate::affinity::BackendId) {
        let services = self
            .affinity_v4
            .iter()
            .map(|a| a.entry.key.service)
            .chain(self.affinity_v6.iter().map(|a| a.entry.key.service));
        let backends = self
            .affinity_v4
            .iter()
            .map(|a| a.entry.backend)
            .chain(self.affinity_v6.iter().map(|a| a.entry.backend))
            .chain(self.flows_v4.iter().map(|f| f.flow.backend))
            .chain(self.flows_v6.iter().map(|f| f.flow.backend));
        (services.max().unwrap_or(0), backends.max().unwrap_or(0))
    }

    /// Drops the connections (kept: affinity), for state saved with other
    /// interfaces, whose port numbers the connections name.
    #[must_use]
    pub fn without_flows(mut self) -> Self {
        self.flows_v4 = Vec::new();
        self.flows_v6 = Vec::new();
        self
    }

    /// Deals the state of `states.len()` workers out to `workers` workers
    /// by the steering that decides which worker sees a client (see
    /// [`client_owner`](crate::io::steer::client_owner)). With as many
    /// workers as before each keeps its own. Otherwise connections and
    /// single-address affinity entries go to their client's owner; an
    /// entry for a whole prefix of clients goes to every worker, since its
    /// clients may land on any of them (Maglev gives all copies the same
    /// answer, so they agree). A source-translated connection is left out
    /// unless its client's owner also owns its source port, which its
    /// replies are steered by (see [`crate::snat`]).
    pub fn route(states: Vec<WorkerState>, workers: usize) -> Vec<WorkerState> {
        let workers = workers.max(1);
        if states.len() == workers {
            return states;
        }
        let mut out = vec![WorkerState::default(); workers];
        let owner = |ip: IpAddr| crate::io::steer::client_owner(ip, workers);
        for s in states {
            for a in s.affinity_v4 {
                route_affinity(&mut out, a, owner, |w| &mut w.affinity_v4);
            }
            for a in s.affinity_v6 {
                route_affinity(&mut out, a, owner, |w| &mut w.affinity_v6);
            }
            for f in s.flows_v4 {
                if let Some(w) = flow_owner(&f.flow, workers) {
                    out[w].flows_v4.push(f);
                }
            }
            for f in s.flows_v6 {
                if let Some(w) = flow_owner(&f.flow, workers) {
                    out[w].flows_v6.push(f);
                }
            }
        }
        out
    }
}

/// The worker that sees both directions of `flow` among `workers`, if one
/// does.
fn flow_owner<A: Family>(flow: &Flow<A>, workers: usize) -> Option<usize> {
    let owner = crate::io::steer::client_owner(flow.client.ip(), workers);
    let replies = if flow.snat {
        crate::snat::port_owner(flow.snat_port, workers)
    } else {
        owner
    };
    (owner == replies).then_some(owner)
}

fn route_affinity<A: Family>(
    out: &mut [WorkerState],
    a: SavedAffinity<A>,
    owner: impl Fn(IpAddr) -> usize,
    list: impl Fn(&mut WorkerState) -> &mut Vec<SavedAffinity<A>>,
) {
    if a.prefix >= A::MAX_PREFIX {
        list(&mut out[owner(a.entry.key.client.ip())]).push(a);
    } else {
        for w in out.iter_mut() {
            list(w).push(a);
        }
    }
}

/// Where an export walk has got to: table (IPv4 affinity, IPv6 affinity,
/// IPv4 connections, IPv6 connections) and slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCursor {
    table: u8,
    slot: usize,
}

/// One chunk of an export: the entries found and where the next chunk
/// starts (`None`: the walk is done).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportChunk {
    pub state: WorkerState,
    pub next: Option<ExportCursor>,
}

/// How many entries a restore put back, and what it left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreCounts {
    pub inserted: usize,
    /// Put back in place of a live entry (a smaller table than before).
    pub evicted: usize,
    /// Left out: idle past their timeout by now.
    pub expired: usize,
    /// Left out: the key was already there.
    pub duplicate: usize,
    /// Left out: the table refused them (never expected).
    pub refused: usize,
}

impl RestoreCounts {
    fn count(&mut self, r: Restored) {
        match r {
            Restored::Inserted => self.inserted += 1,
            Restored::Evicted => {
                self.inserted += 1;
                self.evicted += 1;
            }
            Restored::Expired => self.expired += 1,
            Restored::Duplicate => self.duplicate += 1,
            Restored::Refused => self.refused += 1,
        }
    }

    pub fn add(&mut self, o: &RestoreCounts) {
        self.inserted += o.inserted;
        self.evicted += o.evicted;
        self.expired += o.expired;
        self.duplicate += o.duplicate;
        self.refused += o.refused;
    }
}

/// What a restore did, by table kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub affinity: RestoreCounts,
    pub flows: RestoreCounts,
}

/// A worker's four tables, to export from.
#[derive(Debug, Clone, Copy)]
pub struct TablesRef<'a> {
    pub affinity_v4: &'a AffinityTable<Ipv4Addr>,
    pub affinity_v6: &'a AffinityTable<Ipv6Addr>,
    pub flows_v4: &'a FlowTable<Ipv4Addr>,
    pub flows_v6: &'a FlowTable<Ipv6Addr>,
}

impl TablesRef<'_> {
    fn capacity(&self, table: u8) -> usize {
        match table {
            0 => self.affinity_v4.capacity(),
            1 => self.affinity_v6.capacity(),
            2 => self.flows_v4.capacity(),
            _ => self.flows_v6.capacity(),
        }
    }

    /// Saves the live entries of up to `slots` table slots from `from`
    /// on. Affinity entries of service ports `snapshot` no longer gives
    /// `ClientIP` are not saved (they are never honoured again), nor is
    /// anything already past its timeout at `now`.
    pub fn export(
        &self,
        snapshot: &Snapshot,
        from: ExportCursor,
        slots: usize,
        now: u32,
    ) -> ExportChunk {
        let mut out = WorkerState::default();
        let mut at = from;
        let mut left = slots.max(1);
        while at.table < 4 && left > 0 {
            let cap = self.capacity(at.table);
            let n = left.min(cap.saturating_sub(at.slot));
            match at.table {
                0 => export_affinity(
                    self.affinity_v4,
                    snapshot,
                    at.slot,
                    n,
                    now,
                    &mut out.affinity_v4,
                ),
                1 => export_affinity(
                    self.affinity_v6,
                    snapshot,
                    at.slot,
                    n,
                    now,
                    &mut out.affinity_v6,
                ),
                2 => export_flows(self.flows_v4, at.slot, n, now, &mut out.flows_v4),
                _ => export_flows(self.flows_v6, at.slot, n, now, &mut out.flows_v6),
            }
            at.slot += n;
            left -= n;
            if at.slot >= cap {
                at = ExportCursor {
                    table: at.table + 1,
                    slot: 0,
                };
            }
        }
        ExportChunk {
            state: out,
            next: (at.table < 4).then_some(at),
        }
    }
}

fn export_affinity<A: Family>(
    table: &AffinityTable<A>,
    snapshot: &Snapshot,
    start: usize,
    count: usize,
    now: u32,
    out: &mut Vec<SavedAffinity<A>>,
) {
    for (entry, last_seen, protected) in table.iter_slots(start, count) {
        let Some(svc) = snapshot.by_id(entry.key.service) else {
            continue;
        };
        let Affinity::ClientIp {
            timeout,
            v4_prefix,
            v6_prefix,
            ..
        } = svc.spec.affinity
        else {
            continue;
        };
        if deadline(last_seen, timeout) <= now {
            continue;
        }
        out.push(SavedAffinity {
            entry: *entry,
            last_seen,
            timeout,
            protected,
            prefix: if A::LEN == 4 { v4_prefix } else { v6_prefix },
        });
    }
}

fn export_flows<A: Family>(
    table: &FlowTable<A>,
    start: usize,
    count: usize,
    now: u32,
    out: &mut Vec<SavedFlow<A>>,
) {
    let timeouts = table.timeouts();
    for (flow, last_seen) in table.iter_slots(start, count) {
        if timeouts.deadline(flow, last_seen) > now {
            out.push(SavedFlow {
                flow: *flow,
                last_seen,
            });
        }
    }
}

/// A worker's four tables, to restore into.
#[derive(Debug)]
pub struct TablesMut<'a> {
    pub affinity_v4: &'a mut AffinityTable<Ipv4Addr>,
    pub affinity_v6: &'a mut AffinityTable<Ipv6Addr>,
    pub flows_v4: &'a mut FlowTable<Ipv4Addr>,
    pub flows_v6: &'a mut FlowTable<Ipv6Addr>,
}

impl TablesMut<'_> {
    /// Puts `state` back at `now`. Timeouts are the current snapshot's
    /// where it has the service port, else the saved ones (a process
    /// restores before its first snapshot), so a full table still prefers
    /// what has really expired when it makes room.
    pub fn restore(&mut self, state: &WorkerState, snapshot: &Snapshot, now: u32) -> RestoreReport {
        let saved: HashMap<ServicePortId, u32> = state
            .affinity_v4
            .iter()
            .map(|a| (a.entry.key.service, a.timeout))
            .chain(
                state
                    .affinity_v6
                    .iter()
                    .map(|a| (a.entry.key.service, a.timeout)),
            )
            .collect();
        let timeout_of = |id| {
            snapshot
                .affinity_timeout(id)
                .or_else(|| saved.get(&id).copied())
        };
        let mut report = RestoreReport::default();
        for a in &state.affinity_v4 {
            report.affinity.count(self.affinity_v4.restore(
                a.entry,
                a.protected,
                a.last_seen,
                a.timeout,
                now,
                timeout_of,
            ));
        }
        for a in &state.affinity_v6 {
            report.affinity.count(self.affinity_v6.restore(
                a.entry,
                a.protected,
                a.last_seen,
                a.timeout,
                now,
                timeout_of,
            ));
        }
        for f in &state.flows_v4 {
            report
                .flows
                .count(self.flows_v4.restore(f.flow, f.last_seen, now));
        }
        for f in &state.flows_v6 {
            report
                .flows
                .count(self.flows_v6.restore(f.flow, f.last_seen, now));
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowTimeouts;
    use crate::snapshot::{Backend, ForwardMode, ServicePortSpec};
    use crate::wire::IpProtocol;

    fn snapshot(timeout: u32) -> Snapshot {
        Snapshot::build(
            1,
            vec![ServicePortSpec {
                id: 7,
                name: "default/hostnames:80/TCP".into(),
                protocol: IpProtocol::TCP,
                affinity: Affinity::client_ip(timeout),
                mode: ForwardMode::Nat,
                frontends: vec![("192.0.2.10".parse().unwrap(), 80)],
                backends: vec![Backend {
                    id: 3,
                    addr: "203.0.113.11".parse().unwrap(),
                    port: 9376,
                    weight: 1,
                    mac: MacAddr([2, 0, 0, 0, 0, 11]),
                    iface: 0,
                }],
                maglev_size: None,
                source_ranges: None,
            }],
        )
        .unwrap()
    }

    fn flow4(client: u8, port: u16) -> Flow<Ipv4Addr> {
        Flow {
            client: Ipv4Addr::new(198, 18, 0, client),
            service_addr: Ipv4Addr::new(192, 0, 2, 10),
            backend_addr: Ipv4Addr::new(203, 0, 113, 11),
            client_port: port,
            service_port: 80,
            backend_port: 9376,
            protocol: IpProtocol::TCP,
            state: FlowState::Established,
            nat: true,
            awaiting_proof: false,
            backend: 3,
            backend_mac: MacAddr([2, 0, 0, 0, 0, 11]),
            client_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            client_iface: 0,
            backend_iface: 1,
            snat: false,
            snat_addr: Ipv4Addr::UNSPECIFIED,
            snat_port: 0,
            tunnel: crate::encap::Tunnel::None,
        }
    }

    fn sample() -> WorkerState {
        let v6: Ipv6Addr = "2001:db8:c1::10".parse().unwrap();
        WorkerState {
            affinity_v4: vec![SavedAffinity {
                entry: AffinityEntry {
                    key: AffinityKey {
                        service: 7,
                        client: Ipv4Addr::new(198, 18, 0, 10),
                    },
                    backend: 3,
                },
                last_seen: 1_700_000_000,
                timeout: 10800,
                protected: true,
                prefix: 32,
            }],
            affinity_v6: vec![SavedAffinity {
                entry: AffinityEntry {
                    key: AffinityKey {
                        service: 7,
                        client: v6,
                    },
                    backend: 4,
                },
                last_seen: 1_700_000_001,
                timeout: 60,
                protected: false,
                prefix: 64,
            }],
            flows_v4: vec![
                SavedFlow {
                    flow: flow4(10, 40000),
                    last_seen: 1_700_000_002,
                },
                SavedFlow {
                    flow: Flow {
                        snat: true,
                        snat_addr: Ipv4Addr::new(203, 0, 113, 1),
                        snat_port: 61003,
                        ..flow4(11, 40001)
                    },
                    last_seen: 1_700_000_003,
                },
                SavedFlow {
                    flow: Flow {
                        nat: false,
                        tunnel: crate::encap::Tunnel::Gue,
                        ..flow4(12, 40002)
                    },
                    last_seen: 1_700_000_004,
                },
            ],
            flows_v6: vec![SavedFlow {
                flow: Flow {
                    client: v6,
                    service_addr: "2001:db8:5::10".parse().unwrap(),
                    backend_addr: "2001:db8:be::11".parse().unwrap(),
                    client_port: 1,
                    service_port: 80,
                    backend_port: 9376,
                    protocol: IpProtocol::UDP,
                    state: FlowState::Closing,
                    nat: false,
                    awaiting_proof: true,
                    backend: 5,
                    backend_mac: MacAddr([2, 0, 0, 0, 0, 12]),
                    client_mac: MacAddr([2, 0, 0, 0, 0, 2]),
                    client_iface: 3,
                    backend_iface: 4,
                    ..Flow::default()
                },
                last_seen: 1_700_000_003,
            }],
        }
    }

    #[test]
    fn encoding_round_trips_and_sizes_are_exact() {
        let s = sample();
        let mut buf = Vec::new();
        s.encode(&mut buf);
        assert_eq!(
            buf.len(),
            4 * 8
                + SavedAffinity::<Ipv4Addr>::SIZE
                + SavedAffinity::<Ipv6Addr>::SIZE
                + 3 * SavedFlow::<Ipv4Addr>::SIZE
                + SavedFlow::<Ipv6Addr>::SIZE
        );
        let mut r = Reader::new(&buf);
        assert_eq!(WorkerState::decode(&mut r).unwrap(), s);
        assert_eq!(r.remaining(), 0);
        // Cut anywhere: an error, never a panic or a short read taken as
        // whole.
        for cut in 0..buf.len() {
            assert!(WorkerState::decode(&mut Reader::new(&buf[..cut])).is_err());
        }
    }

    #[test]
    fn absurd_counts_and_values_are_refused_before_allocating() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&u64::MAX.to_le_bytes());
        let err = WorkerState::decode(&mut Reader::new(&buf)).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        let mut buf = Vec::new();
        sample().encode(&mut buf);
        // The IPv4 entry's prefix byte.
        buf[8 + SavedAffinity::<Ipv4Addr>::SIZE - 1] = 33;
        let err = WorkerState::decode(&mut Reader::new(&buf)).unwrap_err();
        assert!(err.to_string().contains("prefix 33"), "{err}");
        let mut buf = Vec::new();
        sample().encode(&mut buf);
        // The IPv4 entry's tier byte.
        buf[8 + SavedAffinity::<Ipv4Addr>::SIZE - 2] = 2;
        let err = WorkerState::decode(&mut Reader::new(&buf)).unwrap_err();
        assert!(err.to_string().contains("tier 2"), "{err}");
    }

    #[test]
    #[allow(clippy::too_many_lines)] // one table through export and restore, in order
    fn export_in_chunks_then_restore_keeps_entries_and_running_timeouts() {
        let snap = snapshot(100);
        let to = FlowTimeouts::default();
        let t0 = 1_700_000_000;
        let mut a4 = AffinityTable::<Ipv4Addr>::new(64, t0).unwrap();
        let a6 = AffinityTable::<Ipv6Addr>::new(64, t0).unwrap();
        let mut f4 = FlowTable::<Ipv4Addr>::new(64, to, t0).unwrap();
        let f6 = FlowTable::<Ipv6Addr>::new(64, to, t0).unwrap();
        for c in 0..20u8 {
            let key = AffinityKey {
                service: 7,
                client: Ipv4Addr::new(198, 18, 0, c),
            };
            // Client c last connected c seconds after t0.
            a4.insert(key, 3, 100, t0 + u32::from(c), |_| Some(100))
                .unwrap();
            // Even clients completed a connection: protected.
            if c % 2 == 0 {
                assert!(a4.promote(AffinityTable::hash(&key), &key, 100, t0 + u32::from(c)));
            }
            f4.insert(
                flow4(c, 40000),
                crate::wire::tcp::flags::ACK,
                t0 + u32::from(c),
            )
            .unwrap();
        }
        // An entry of a service port the snapshot does not have.
        a4.insert(
            AffinityKey {
                service: 99,
                client: Ipv4Addr::new(198, 18, 1, 1),
            },
            3,
            100,
            t0,
            |_| Some(100),
        )
        .unwrap();
        let tables = TablesRef {
            affinity_v4: &a4,
            affinity_v6: &a6,
            flows_v4: &f4,
            flows_v6: &f6,
        };
        let now = t0 + 20;
        let mut state = WorkerState::default();
        let mut at = Some(ExportCursor::default());
        let mut chunks = 0;
        while let Some(from) = at {
            let chunk = tables.export(&snap, from, 7, now);
            state.append(chunk.state);
            at = chunk.next;
            chunks += 1;
        }
        assert_eq!(chunks, (64 * 4usize).div_ceil(7));
        assert_eq!(state.affinity_v4.len(), 20, "service 99 is not saved");
        assert_eq!(state.flows_v4.len(), 20);
        assert!(
            state
                .affinity_v4
                .iter()
                .all(|a| a.timeout == 100 && a.prefix == 32)
        );
        assert!(
            state
                .affinity_v4
                .iter()
                .all(|a| a.protected == (a.entry.key.client.octets()[3] % 2 == 0))
        );

        // Restored 85 s later, at t0 + 105: clients 0..=4 (last connected
        // at t0 + c) are idle past their 100 s by then.
        let later = now + 85;
        let mut b4 = AffinityTable::<Ipv4Addr>::new(64, later).unwrap();
        let mut b6 = AffinityTable::<Ipv6Addr>::new(64, later).unwrap();
        let mut g4 = FlowTable::<Ipv4Addr>::new(64, to, later).unwrap();
        let mut g6 = FlowTable::<Ipv6Addr>::new(64, to, later).unwrap();
        let mut into = TablesMut {
            affinity_v4: &mut b4,
            affinity_v6: &mut b6,
            flows_v4: &mut g4,
            flows_v6: &mut g6,
        };
        let report = into.restore(&state, &Snapshot::default(), later);
        // deadline(last, 100) = last + 101 <= t0 + 105 for last <= t0 + 4.
        assert_eq!(report.affinity.expired, 5);
        assert_eq!(report.affinity.inserted, 15);
        assert_eq!(report.flows.inserted, 20);
        // Restored entries keep their own last refresh: the timeout runs on.
        let k = AffinityKey {
            service: 7,
            client: Ipv4Addr::new(198, 18, 0, 5),
        };
        let h = AffinityTable::hash(&k);
        assert!(matches!(
            b4.lookup(h, &k, 100, t0 + 5 + 100),
            crate::affinity::Sticky::Live { backend: 3, .. }
        ));
        assert!(matches!(
            b4.lookup(h, &k, 100, t0 + 5 + 101),
            crate::affinity::Sticky::Expired { .. }
        ));
        // Each comes back in the tier it left: a restart does not put
        // proven clients back where a flood takes them first.
        for c in 5..20u8 {
            let k = AffinityKey {
                service: 7,
                client: Ipv4Addr::new(198, 18, 0, c),
            };
            let crate::affinity::Sticky::Live { idx, .. } =
                b4.lookup(AffinityTable::hash(&k), &k, 100, later)
            else {
                panic!("client {c} restored");
            };
            assert_eq!(b4.on_probation(idx), c % 2 == 1, "client {c}");
        }
        // ... and the wheel reaps them then, even before a snapshot names
        // their service port's timeout again.
        assert_eq!(b4.expire(t0 + 5 + 101, |_| Some(100)), 1);
        // A second restore of the same state adds nothing.
        let mut into = TablesMut {
            affinity_v4: &mut b4,
            affinity_v6: &mut b6,
            flows_v4: &mut g4,
            flows_v6: &mut g6,
        };
        let again = into.restore(&state, &snap, later);
        assert_eq!(again.flows.duplicate, 20);
        // The connection answers both ways with its NAT state.
        let f = flow4(10, 40000);
        let (idx, _) = g4
            .lookup(f.reply_key().hash(), &f.reply_key(), later)
            .unwrap();
        assert_eq!(*g4.get(idx), f);
    }

    #[test]
    fn routing_follows_the_client_steering() {
        let one = sample();
        // Same worker count: untouched.
        assert_eq!(WorkerState::route(vec![one.clone()], 1), vec![one.clone()]);
        let routed = WorkerState::route(vec![one.clone()], 4);
        assert_eq!(routed.len(), 4);
        // 198.18.0.10: low word ends in 10, 10 % 4 = 2.
        assert_eq!(routed[2].affinity_v4, one.affinity_v4);
        assert_eq!(routed[2].flows_v4, one.flows_v4[..1]);
        // The source-translated one goes where its client (11 % 4 = 3) and
        // its replies (port 61003 % 4 = 3) both go.
        assert!(one.flows_v4[1].flow.snat);
        assert_eq!(routed[3].flows_v4, one.flows_v4[1..2]);
        // The tunnelled one, like any DSR connection, goes with its client
        // (12 % 4 = 0).
        assert_eq!(routed[0].flows_v4, one.flows_v4[2..]);
        // The /64 IPv6 entry is on every worker.
        assert!(routed.iter().all(|w| w.affinity_v6 == one.affinity_v6));
        let total: usize = routed.iter().map(WorkerState::flows_len).sum();
        assert_eq!(total, one.flows_len());
        // With 5 workers no worker sees both its directions (11 % 5 = 1,
        // 61003 % 5 = 3): left out.
        let routed = WorkerState::route(vec![one.clone()], 5);
        let total: usize = routed.iter().map(WorkerState::flows_len).sum();
        assert_eq!(total, one.flows_len() - 1);
    }
}
