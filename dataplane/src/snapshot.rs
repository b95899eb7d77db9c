//! The compiled service view the control plane hands to workers.
//!
//! A [`Snapshot`] is immutable once built: workers read it without locks and
//! swap to a newer one at a burst boundary. Each service port is compiled
//! (Maglev table, backend index) on the control thread and shared by `Arc`,
//! so a snapshot that changes one service reuses every other one as is.

use crate::affinity::{BackendId, ServicePortId};
use crate::maglev::{MaglevBackend, MaglevError, MaglevTable};
use crate::wire::MacAddr;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

/// `sessionAffinity` of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// Every connection picks its own backend.
    None,
    /// A client's new connections reach the backend it last used while it
    /// stays idle no longer than `timeout` seconds. Clients are grouped by
    /// the first `v4_prefix` / `v6_prefix` bits of their address (32 / 128,
    /// a single address, is Kubernetes' behaviour).
    ClientIp {
        timeout: u32,
        v4_prefix: u8,
        v6_prefix: u8,
        repick: Repick,
    },
}

impl Affinity {
    /// Kubernetes' `ClientIP` with the given timeout, one address per client.
    pub fn client_ip(timeout: u32) -> Self {
        Affinity::ClientIp {
            timeout,
            v4_prefix: 32,
            v6_prefix: 128,
            repick: Repick::ClientIp,
        }
    }
}

/// How a `ClientIP` client without a live entry (new, expired, or whose
/// backend left the usable set) is given a backend; the entry then holds
/// it as usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repick {
    /// Maglev over the (masked) client address: an expired client usually
    /// returns to the same pod, and every limpet node behind ECMP makes
    /// the same choice without sharing state.
    #[default]
    ClientIp,
    /// Maglev over the connection's 5-tuple, as for `sessionAffinity:
    /// None`: after expiry load spreads again (the alternative Kubernetes'
    /// documentation allows). Nodes behind ECMP may then place a client's
    /// first connection differently; its entry holds it from there on
    /// each node.
    Connection,
}

/// How packets reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    /// Rewrite the destination to the backend and translate replies back.
    Nat,
    /// Layer-2 direct server return: rewrite only the destination MAC; the
    /// backend holds the service address and replies to the client itself.
    Dsr,
    /// Rewrite the source as well, to limpet's address and a port of the
    /// worker's own (see [`crate::snat`]), and translate replies back:
    /// backends need no route to clients through limpet. Affinity still
    /// keys on the real client.
    FullNat,
    /// Encapsulated direct server return, IP in IP (see [`crate::encap`]):
    /// the endpoint decapsulates, holds the service address and replies
    /// to the client itself; it may be behind routers.
    Ipip,
    /// The same in UDP (GUE variant 1) to the configured port.
    Gue,
}

impl ForwardMode {
    /// The tunnel a connection of this mode is sent through.
    pub fn tunnel(self) -> crate::encap::Tunnel {
        match self {
            ForwardMode::Ipip => crate::encap::Tunnel::Ipip,
            ForwardMode::Gue => crate::encap::Tunnel::Gue,
            ForwardMode::Nat | ForwardMode::Dsr | ForwardMode::FullNat => {
                crate::encap::Tunnel::None
            }
        }
    }

    /// Whether replies come back through limpet to be translated.
    pub fn translates(self) -> bool {
        matches!(self, ForwardMode::Nat | ForwardMode::FullNat)
    }
}

/// One usable endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub id: BackendId,
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    /// The backend's (or its next hop's) MAC address.
    pub mac: MacAddr,
    /// The port (interface) it is reached through.
    pub iface: u16,
}

impl Backend {
    /// The identity Maglev hashes: the endpoint's address and port, which
    /// every limpet instance sees alike (ids are local to one process).
    fn identity(&self) -> String {
        match self.addr {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        }
    }
}

/// What the control plane asks for: one service port, uncompiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortSpec {
    pub id: ServicePortId,
    /// `namespace/name:port/protocol`, for operators.
    pub name: String,
    /// IP protocol number (TCP 6, UDP 17, SCTP 132).
    pub protocol: u8,
    pub affinity: Affinity,
    pub mode: ForwardMode,
    /// Every address and port that reaches this service port: `ClusterIPs`,
    /// `NodePorts`, load-balancer and external IPs. Affinity is shared by all.
    pub frontends: Vec<(IpAddr, u16)>,
    /// The usable backends (ready, or serving and terminating if none is).
    pub backends: Vec<Backend>,
    /// Maglev table size; `None` picks [`maglev_size_for`].
    pub maglev_size: Option<usize>,
    /// `loadBalancerSourceRanges`: which frontends only some clients may
    /// open connections to. `None`: nothing is restricted.
    pub source_ranges: Option<SourceRanges>,
}

/// Client ranges allowed to reach some of a service port's frontends (the
/// load-balancer ingress addresses; node ports and cluster IPs are exempt,
/// as in kube-proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRanges {
    pub frontends: Vec<IpAddr>,
    /// Allowed client prefixes, as (address, prefix length).
    pub allowed: Vec<(IpAddr, u8)>,
}

impl SourceRanges {
    /// Whether `client` is inside one of the allowed prefixes.
    pub fn allows(&self, client: IpAddr) -> bool {
        self.allowed.iter().any(|&(net, len)| match (net, client) {
            (IpAddr::V4(n), IpAddr::V4(c)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(len.min(32)))
                    .unwrap_or(0);
                n.to_bits() & mask == c.to_bits() & mask
            }
            (IpAddr::V6(n), IpAddr::V6(c)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(len.min(128)))
                    .unwrap_or(0);
                n.to_bits() & mask == c.to_bits() & mask
            }
            _ => false,
        })
    }
}

/// A compiled service port, shared between snapshots while unchanged.
#[derive(Debug)]
pub struct ServicePort {
    pub spec: ServicePortSpec,
    maglev: MaglevTable,
    /// Backend ids sorted, with their index in `spec.backends`.
    by_id: Box<[(BackendId, u16)]>,
}

/// Maglev's table size for `backends` backends: 65537, or the first prime
/// at least 100 times the backend count when that is larger.
pub fn maglev_size_for(backends: usize) -> usize {
    crate::maglev::table_size_for(backends)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("service port {name}: {source}")]
    Maglev {
        name: String,
        #[source]
        source: MaglevError,
    },
    #[error(
        "service port {name}: backend {addr}:{port} is not the same address family as the frontend"
    )]
    FamilyMismatch {
        name: String,
        addr: IpAddr,
        port: u16,
    },
    #[error("frontend {addr}:{port}/{protocol} is claimed by both {first} and {second}")]
    FrontendConflict {
        addr: IpAddr,
        port: u16,
        protocol: u8,
        first: String,
        second: String,
    },
    #[error("service port id {0} appears twice")]
    DuplicateId(ServicePortId),
}

impl ServicePort {
    /// Compiles a service port: builds its Maglev table (the expensive part,
    /// done here on the control thread and never on a worker).
    pub fn compile(spec: ServicePortSpec) -> Result<Self, SnapshotError> {
        let identities: Vec<String> = spec.backends.iter().map(Backend::identity).collect();
        let members: Vec<MaglevBackend<'_>> = identities
            .iter()
            .zip(&spec.backends)
            .map(|(identity, b)| MaglevBackend {
                identity: identity.as_bytes(),
                weight: b.weight,
            })
            .collect();
        let size = spec
            .maglev_size
            .unwrap_or_else(|| maglev_size_for(members.len()));
        let maglev =
            MaglevTable::build(&members, size).map_err(|source| SnapshotError::Maglev {
                name: spec.name.clone(),
                source,
            })?;
        let mut by_id: Vec<(BackendId, u16)> = spec
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id, i as u16))
            .collect();
        by_id.sort_unstable();
        Ok(Self {
            spec,
            maglev,
            by_id: by_id.into_boxed_slice(),
        })
    }

    /// Maglev's pick for a flow or client hash.
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<&Backend> {
        let i = self.maglev.lookup(hash)?;
        self.spec.backends.get(usize::from(i))
    }

    /// The backend with this id, if it is still usable.
    #[inline]
    pub fn usable(&self, id: BackendId) -> Option<&Backend> {
        let pos = self.by_id.binary_search_by_key(&id, |&(b, _)| b).ok()?;
        let (_, i) = self.by_id[pos];
        self.spec.backends.get(usize::from(i))
    }

    pub fn maglev(&self) -> &MaglevTable {
        &self.maglev
    }
}

/// The key a packet's destination is looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frontend {
    addr: IpAddr,
    port: u16,
    protocol: u8,
}

impl std::hash::Hash for Frontend {
    /// Hashed as three machine words with [`crate::hash::table_hash`] and
    /// handed to [`LookupHasher`] as one `u64`: no byte-wise hashing on
    /// the packet path.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (a, b, family) = match self.addr {
            IpAddr::V4(a) => (u64::from(a.to_bits()), 0, 4u64),
            IpAddr::V6(a) => {
                let bits = a.to_bits();
                ((bits >> 64) as u64, bits as u64, 6u64)
            }
        };
        let rest = family << 32 | u64::from(self.port) << 8 | u64::from(self.protocol);
        state.write_u64(crate::hash::table_hash(&[a, b, rest]));
    }
}

/// A `Hasher` for the snapshot's own maps, which the packet path reads:
/// frontends (one lookup per new connection) and service-port ids (one per
/// eviction from a full affinity table, so at every packet of a spoofed
/// flood). `SipHash` would cost more than the rest of either lookup.
#[derive(Default)]
struct LookupHasher(u64);

impl Hasher for LookupHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    /// [`Frontend`] hashes itself into exactly one of these, already mixed.
    #[inline]
    fn write_u64(&mut self, word: u64) {
        self.0 ^= word;
    }

    /// A service-port id, not mixed yet.
    #[inline]
    fn write_u32(&mut self, id: u32) {
        self.0 = crate::hash::table_hash(&[self.0, u64::from(id)]);
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = crate::hash::table_hash(&[self.0, u64::from_le_bytes(word)]);
        }
        self.0 = crate::hash::table_hash(&[self.0]);
    }
}

type FrontendMap = HashMap<Frontend, u32, BuildHasherDefault<LookupHasher>>;
type IdMap = HashMap<ServicePortId, u32, BuildHasherDefault<LookupHasher>>;

/// Set in a service index when the frontend it was found by only admits
/// the clients of the port's [`SourceRanges`].
const RESTRICTED: u32 = 1 << 31;

/// An immutable, compiled view of every service port.
#[derive(Debug, Default)]
pub struct Snapshot {
    generation: u64,
    ports: Vec<Arc<ServicePort>>,
    frontends: FrontendMap,
    by_id: IdMap,
    /// Every frontend address, sorted and deduplicated; shared with the
    /// previous snapshot while unchanged.
    frontend_addrs: Arc<[IpAddr]>,
    /// Every backend address of every port, sorted.
    endpoint_addrs: Arc<[IpAddr]>,
    lineage: Lineage,
}

/// Where a snapshot comes from. Snapshots derived one from another
/// ([`Snapshot::with_changes`]) share a lineage, and each knows the last
/// generation of it that cut an affinity timeout, so a worker tells whether
/// a newer snapshot shortens affinity without comparing every port.
#[derive(Debug, Default, Clone, Copy)]
struct Lineage {
    /// 0: unknown (an empty default snapshot).
    id: u64,
    last_cut: u64,
}

impl Lineage {
    fn fresh() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            last_cut: 0,
        }
    }
}

/// Whether entries under `old`'s affinity expire sooner under `new`'s.
fn cuts_affinity(old: Affinity, new: Option<Affinity>) -> bool {
    let Affinity::ClientIp { timeout: was, .. } = old else {
        return false;
    };
    match new {
        Some(Affinity::ClientIp { timeout, .. }) => timeout < was,
        _ => true,
    }
}

/// A port's frontends as lookup keys.
fn frontend_keys(spec: &ServicePortSpec) -> impl Iterator<Item = Frontend> + '_ {
    spec.frontends.iter().map(|&(addr, port)| Frontend {
        addr,
        port,
        protocol: spec.protocol,
    })
}

/// Refuses a port whose backends are of another family than a frontend.
fn check_families(spec: &ServicePortSpec) -> Result<(), SnapshotError> {
    for &(addr, _) in &spec.frontends {
        if let Some(b) = spec
            .backends
            .iter()
            .find(|b| b.addr.is_ipv4() != addr.is_ipv4())
        {
            return Err(SnapshotError::FamilyMismatch {
                name: spec.name.clone(),
                addr: b.addr,
                port: b.port,
            });
        }
    }
    Ok(())
}

/// Files `ports[i]`'s frontends, refusing one another port holds.
fn claim_frontends(
    frontends: &mut FrontendMap,
    ports: &[Arc<ServicePort>],
    i: usize,
) -> Result<(), SnapshotError> {
    let spec = &ports[i].spec;
    for key in frontend_keys(spec) {
        if let Some(&other) = frontends.get(&key) {
            return Err(SnapshotError::FrontendConflict {
                addr: key.addr,
                port: key.port,
                protocol: key.protocol,
                first: ports[(other & !RESTRICTED) as usize].spec.name.clone(),
                second: spec.name.clone(),
            });
        }
        frontends.insert(key, index_of(spec, key.addr, i));
    }
    Ok(())
}

/// The value `frontends` holds for port `i` at `addr`.
fn index_of(spec: &ServicePortSpec, addr: IpAddr, i: usize) -> u32 {
    let restricted = spec
        .source_ranges
        .as_ref()
        .is_some_and(|r| r.frontends.contains(&addr));
    i as u32 | if restricted { RESTRICTED } else { 0 }
}

/// Every frontend address, sorted and deduplicated.
fn endpoints_of(ports: &[Arc<ServicePort>]) -> Arc<[IpAddr]> {
    let mut addrs: Vec<IpAddr> = ports
        .iter()
        .flat_map(|p| p.spec.backends.iter().map(|b| b.addr))
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs.into()
}

fn addrs_of(frontends: &FrontendMap) -> Arc<[IpAddr]> {
    let mut addrs: Vec<IpAddr> = frontends.keys().map(|f| f.addr).collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs.into()
}

impl Snapshot {
    /// Assembles a snapshot from compiled service ports.
    pub fn new(generation: u64, ports: Vec<Arc<ServicePort>>) -> Result<Self, SnapshotError> {
        let count: usize = ports.iter().map(|p| p.spec.frontends.len()).sum();
        let mut frontends =
            FrontendMap::with_capacity_and_hasher(count, BuildHasherDefault::default());
        let mut by_id = IdMap::with_capacity_and_hasher(ports.len(), BuildHasherDefault::default());
        for (i, port) in ports.iter().enumerate() {
            let spec = &port.spec;
            if by_id.insert(spec.id, i as u32).is_some() {
                return Err(SnapshotError::DuplicateId(spec.id));
            }
            check_families(spec)?;
            claim_frontends(&mut frontends, &ports, i)?;
        }
        let frontend_addrs = addrs_of(&frontends);
        let endpoint_addrs = endpoints_of(&ports);
        Ok(Self {
            generation,
            ports,
            frontends,
            by_id,
            frontend_addrs,
            endpoint_addrs,
            lineage: Lineage::fresh(),
        })
    }

    /// The next snapshot: this one with `changed` ports added or put in
    /// place of those with their ids, and the `removed` ids gone. Every
    /// other port is shared as it is; the lookup maps are copied and
    /// patched rather than rebuilt (a copy of plain entries, not a
    /// rehash). On error (a frontend conflict, mixed families, an id
    /// twice in `changed`) nothing is built. `generation` must be greater
    /// than this snapshot's.
    pub fn with_changes(
        &self,
        generation: u64,
        changed: Vec<Arc<ServicePort>>,
        removed: &[ServicePortId],
    ) -> Result<Self, SnapshotError> {
        let mut ports = self.ports.clone();
        let mut frontends = self.frontends.clone();
        let mut by_id = self.by_id.clone();
        let mut addrs_changed = false;
        let mut cut = false;
        let mut changed_ids = std::collections::HashSet::with_capacity(changed.len());
        for port in &changed {
            check_families(&port.spec)?;
            if !changed_ids.insert(port.spec.id) {
                return Err(SnapshotError::DuplicateId(port.spec.id));
            }
        }
        // Every replaced or removed port's frontends go first, so a
        // frontend moving between ports is no conflict.
        let mut holes = Vec::new();
        for &id in removed {
            if changed_ids.contains(&id) {
                continue;
            }
            if let Some(&i) = by_id.get(&id) {
                let old = &ports[i as usize].spec;
                addrs_changed |= !old.frontends.is_empty();
                cut |= cuts_affinity(old.affinity, None);
                for key in frontend_keys(old) {
                    frontends.remove(&key);
                }
                holes.push(i as usize);
            }
        }
        for port in &changed {
            if let Some(&i) = by_id.get(&port.spec.id) {
                let old = &ports[i as usize].spec;
                cut |= cuts_affinity(old.affinity, Some(port.spec.affinity));
                addrs_changed |= old.frontends.len() != port.spec.frontends.len()
                    || old
                        .frontends
                        .iter()
                        .zip(&port.spec.frontends)
                        .any(|(a, b)| a.0 != b.0);
                for key in frontend_keys(old) {
                    frontends.remove(&key);
                }
            } else {
                addrs_changed |= !port.spec.frontends.is_empty();
            }
        }
        for port in changed {
            let i = if let Some(&i) = by_id.get(&port.spec.id) {
                ports[i as usize] = port;
                i as usize
            } else {
                by_id.insert(port.spec.id, ports.len() as u32);
                ports.push(port);
                ports.len() - 1
            };
            claim_frontends(&mut frontends, &ports, i)?;
        }
        // Fill each hole with the last port, highest hole first (so the
        // last port is never itself a hole), and re-point its entries.
        holes.sort_unstable();
        holes.dedup();
        for &i in holes.iter().rev() {
            let gone = ports.swap_remove(i);
            by_id.remove(&gone.spec.id);
            if let Some(moved) = ports.get(i) {
                by_id.insert(moved.spec.id, i as u32);
                for key in frontend_keys(&moved.spec) {
                    frontends.insert(key, index_of(&moved.spec, key.addr, i));
                }
            }
        }
        let frontend_addrs = if addrs_changed {
            addrs_of(&frontends)
        } else {
            Arc::clone(&self.frontend_addrs)
        };
        let mut lineage = if self.lineage.id == 0 {
            Lineage::fresh()
        } else {
            self.lineage
        };
        if cut {
            lineage.last_cut = generation;
        }
        let endpoint_addrs = endpoints_of(&ports);
        let endpoint_addrs = if *endpoint_addrs == *self.endpoint_addrs {
            Arc::clone(&self.endpoint_addrs)
        } else {
            endpoint_addrs
        };
        Ok(Self {
            generation,
            ports,
            frontends,
            by_id,
            frontend_addrs,
            endpoint_addrs,
            lineage,
        })
    }

    /// The compiled port with this id, shared.
    pub fn port_arc(&self, id: ServicePortId) -> Option<&Arc<ServicePort>> {
        let i = *self.by_id.get(&id)?;
        self.ports.get(i as usize)
    }

    /// Compiles every spec and assembles a snapshot (tests, benchmarks and
    /// full rebuilds; the control plane compiles incrementally).
    pub fn build(generation: u64, specs: Vec<ServicePortSpec>) -> Result<Self, SnapshotError> {
        let ports = specs
            .into_iter()
            .map(|s| ServicePort::compile(s).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(generation, ports)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The service port reached at `addr:port` over `protocol`.
    #[inline]
    pub fn service(&self, addr: IpAddr, port: u16, protocol: u8) -> Option<&ServicePort> {
        self.port_at(self.service_index(addr, port, protocol)?)
    }

    /// Where in [`ports`](Self::ports) the service port reached at
    /// `addr:port` over `protocol` is: lets the packet path look a
    /// destination up once per burst and keep the answer.
    #[inline]
    pub fn service_index(&self, addr: IpAddr, port: u16, protocol: u8) -> Option<u32> {
        self.frontends
            .get(&Frontend {
                addr,
                port,
                protocol,
            })
            .copied()
    }

    /// The service port at `index` of [`ports`](Self::ports).
    #[inline(always)]
    pub fn port_at(&self, index: u32) -> Option<&ServicePort> {
        self.ports
            .get((index & !RESTRICTED) as usize)
            .map(AsRef::as_ref)
    }

    /// Whether a client may open a connection to the frontend a
    /// [`service_index`](Self::service_index) answer came from.
    #[inline]
    pub fn admits(&self, index: u32, client: IpAddr) -> bool {
        index & RESTRICTED == 0
            || self
                .port_at(index)
                .and_then(|p| p.spec.source_ranges.as_ref())
                .is_some_and(|r| r.allows(client))
    }

    /// The service port with this id.
    pub fn by_id(&self, id: ServicePortId) -> Option<&ServicePort> {
        let i = *self.by_id.get(&id)?;
        self.ports.get(i as usize).map(AsRef::as_ref)
    }

    /// The current `ClientIP` timeout of a service port, if it has one.
    #[inline]
    pub fn affinity_timeout(&self, id: ServicePortId) -> Option<u32> {
        match self.by_id(id)?.spec.affinity {
            Affinity::ClientIp { timeout, .. } => Some(timeout),
            Affinity::None => None,
        }
    }

    /// Whether some service port's affinity entries expire sooner under
    /// this snapshot than under `older`: a cut `timeoutSeconds`, or
    /// `ClientIP` turned off (conservatively: also when a cut between the
    /// two was undone since). Free for a snapshot derived from `older`
    /// through [`with_changes`](Self::with_changes); otherwise one lookup
    /// per service port.
    pub fn shortens_affinity_of(&self, older: &Snapshot) -> bool {
        if self.lineage.id != 0
            && self.lineage.id == older.lineage.id
            && self.generation > older.generation
        {
            return self.lineage.last_cut > older.generation;
        }
        older.ports.iter().any(|p| {
            let Affinity::ClientIp { timeout: was, .. } = p.spec.affinity else {
                return false;
            };
            self.affinity_timeout(p.spec.id).is_none_or(|now| now < was)
        })
    }

    /// Every address a service is reached at, sorted.
    pub fn frontend_addrs(&self) -> &[IpAddr] {
        &self.frontend_addrs
    }

    /// Every address a service port balances to, sorted.
    pub fn endpoint_addrs(&self) -> &[IpAddr] {
        &self.endpoint_addrs
    }

    /// Whether both snapshots balance to the same addresses.
    pub fn same_endpoint_addrs(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.endpoint_addrs, &other.endpoint_addrs)
            || self.endpoint_addrs == other.endpoint_addrs
    }

    /// Whether both snapshots are reached at the same addresses (free when
    /// one was derived from the other without changing them).
    pub fn same_frontend_addrs(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.frontend_addrs, &other.frontend_addrs)
            || self.frontend_addrs == other.frontend_addrs
    }

    pub fn ports(&self) -> &[Arc<ServicePort>] {
        &self.ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn backend(id: u32, last: u8) -> Backend {
        Backend {
            id,
            addr: IpAddr::from([203, 0, 113, last]),
            port: 9376,
            weight: 1,
            mac: MacAddr([0x02, 0, 0, 0, 0, last]),
            iface: 0,
        }
    }

    fn spec(id: u32, vip: [u8; 4], backends: Vec<Backend>) -> ServicePortSpec {
        ServicePortSpec {
            id,
            name: format!("default/svc{id}:80/TCP"),
            protocol: 6,
            affinity: Affinity::client_ip(10800),
            mode: ForwardMode::Nat,
            frontends: vec![(IpAddr::from(vip), 80)],
            backends,
            maglev_size: Some(251),
            source_ranges: None,
        }
    }

    #[test]
    fn looks_up_by_frontend_and_id() {
        let snap = Snapshot::build(
            7,
            vec![
                spec(1, [192, 0, 2, 1], vec![backend(10, 1), backend(11, 2)]),
                spec(2, [192, 0, 2, 2], vec![backend(12, 3)]),
            ],
        )
        .unwrap();
        assert_eq!(snap.generation(), 7);
        let svc = snap.service(IpAddr::from([192, 0, 2, 1]), 80, 6).unwrap();
        assert_eq!(svc.spec.id, 1);
        assert!(snap.service(IpAddr::from([192, 0, 2, 1]), 81, 6).is_none());
        assert!(snap.service(IpAddr::from([192, 0, 2, 1]), 80, 17).is_none());
        assert_eq!(snap.affinity_timeout(2), Some(10800));
        assert_eq!(svc.usable(11).map(|b| b.id), Some(11));
        assert!(svc.usable(12).is_none());
        // Maglev only ever picks a usable backend.
        for h in 0..1000u64 {
            let b = svc.pick(h.wrapping_mul(0x9e37_79b9_7f4a_7c15)).unwrap();
            assert!(svc.usable(b.id).is_some());
        }
    }

    #[test]
    fn rejects_conflicts_and_mixed_families() {
        let a = spec(1, [192, 0, 2, 1], vec![backend(10, 1)]);
        let mut b = spec(2, [192, 0, 2, 1], vec![backend(11, 2)]);
        assert!(matches!(
            Snapshot::build(1, vec![a.clone(), b.clone()]),
            Err(SnapshotError::FrontendConflict { .. })
        ));
        b.frontends = vec![("2001:db8::1".parse().unwrap(), 80)];
        assert!(matches!(
            Snapshot::build(1, vec![a.clone(), b]),
            Err(SnapshotError::FamilyMismatch { .. })
        ));
        assert_eq!(
            Snapshot::build(1, vec![a.clone(), a]).err(),
            Some(SnapshotError::DuplicateId(1))
        );
    }

    /// A snapshot answers like one built from scratch with the same ports.
    fn assert_same_view(got: &Snapshot, want: &Snapshot) {
        assert_eq!(got.ports().len(), want.ports().len());
        assert_eq!(got.frontend_addrs(), want.frontend_addrs());
        for p in want.ports() {
            let id = p.spec.id;
            assert_eq!(got.by_id(id).map(|g| &g.spec), Some(&p.spec));
            for &(addr, port) in &p.spec.frontends {
                let i = got.service_index(addr, port, 6).unwrap();
                assert_eq!(got.port_at(i).unwrap().spec.id, id);
                assert_eq!(
                    i & RESTRICTED,
                    want.service_index(addr, port, 6).unwrap() & RESTRICTED
                );
            }
        }
        assert_eq!(got.frontends.len(), want.frontends.len());
    }

    #[test]
    fn with_changes_patches_the_previous_snapshot() {
        let specs: Vec<ServicePortSpec> = (1..=5u8)
            .map(|i| spec(u32::from(i), [192, 0, 2, i], vec![backend(u32::from(i), i)]))
            .collect();
        let first = Snapshot::build(1, specs.clone()).unwrap();
        // 2 changes backends and gains a frontend; 1 and 5 (the first and
        // the last) go; 6 comes with 1's frontend.
        let mut two = spec(2, [192, 0, 2, 2], vec![backend(7, 7), backend(8, 8)]);
        two.frontends.push((IpAddr::from([192, 0, 2, 20]), 80));
        two.source_ranges = Some(SourceRanges {
            frontends: vec![IpAddr::from([192, 0, 2, 20])],
            allowed: vec![(IpAddr::from([198, 18, 0, 0]), 15)],
        });
        let six = spec(6, [192, 0, 2, 1], vec![backend(9, 9)]);
        let changed: Vec<Arc<ServicePort>> = [two.clone(), six.clone()]
            .into_iter()
            .map(|s| Arc::new(ServicePort::compile(s).unwrap()))
            .collect();
        let second = first.with_changes(2, changed, &[1, 5]).unwrap();
        assert_eq!(second.generation(), 2);
        let want = Snapshot::build(
            2,
            vec![two, specs[2].clone(), specs[3].clone(), six.clone()],
        )
        .unwrap();
        assert_same_view(&second, &want);
        assert!(second.by_id(1).is_none() && second.by_id(5).is_none());
        // Unchanged ports are shared.
        assert!(Arc::ptr_eq(
            first.port_arc(3).unwrap(),
            second.port_arc(3).unwrap()
        ));
        // A conflicting change builds nothing.
        let clash = Arc::new(ServicePort::compile(spec(7, [192, 0, 2, 1], vec![])).unwrap());
        assert!(matches!(
            second.with_changes(3, vec![clash], &[]),
            Err(SnapshotError::FrontendConflict { .. })
        ));
        // Shortening affinity is known from the lineage, as a full
        // comparison would say.
        let mut cut = specs[2].clone();
        cut.affinity = Affinity::client_ip(60);
        let third = second
            .with_changes(3, vec![Arc::new(ServicePort::compile(cut).unwrap())], &[])
            .unwrap();
        assert!(third.shortens_affinity_of(&second) && third.shortens_affinity_of(&first));
        // Ports with `ClientIP` removed count as cuts.
        assert!(second.shortens_affinity_of(&first));
        assert!(third.same_frontend_addrs(&second));
        let fourth = third.with_changes(4, Vec::new(), &[]).unwrap();
        assert!(!fourth.shortens_affinity_of(&third));
        assert!(fourth.shortens_affinity_of(&second));
        // Removing everything leaves an empty view.
        let empty = second.with_changes(3, Vec::new(), &[2, 3, 4, 6]).unwrap();
        assert!(empty.ports().is_empty() && empty.frontend_addrs().is_empty());
    }

    #[test]
    fn empty_service_picks_nothing() {
        let snap = Snapshot::build(1, vec![spec(1, [192, 0, 2, 1], vec![])]).unwrap();
        let svc = snap.service(IpAddr::from([192, 0, 2, 1]), 80, 6).unwrap();
        assert!(svc.pick(12345).is_none());
    }
}
