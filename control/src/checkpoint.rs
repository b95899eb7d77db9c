//! The state file: every worker's affinity and connection tables, written
//! when limpet stops on SIGTERM / SIGINT and every `--state-interval`, read
//! when it starts, so a planned restart moves no client and breaks no
//! connection, and a crash loses at most what changed since the last
//! checkpoint.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "LIMPETST" | version u32 | layout fingerprint u64 | length u64
//! written_at u64 (Unix s) | links | service ports (id, name) | backends (id, address, port)
//! workers u32, then each worker's entries (limpet_dataplane::state::LAYOUT)
//! xxh3-64 of every byte before it
//! ```
//!
//! The first 28 bytes never change shape, so any version can say what a
//! file is. A file is refused, with a message that says why, when it is
//! not a state file, is of another version or entry layout, is shorter or
//! longer than it says (torn or truncated), or fails its checksum; limpet
//! then starts with empty tables and serves as usual. Files are written to
//! a temporary name, synced and renamed over the old one, so a crash while
//! writing leaves the previous checkpoint whole.
//!
//! Ids are the process's own (see [`crate::ids`]): the file carries the
//! name of every service port and the address of every backend it knows,
//! and the next process hands the same ids to the same names
//! ([`IdAllocator::seeded`]) before it reads any configuration.

use crate::ids::IdAllocator;
use crate::state::Shared;
use crossbeam_channel::{Receiver, Sender, bounded};
use limpet_dataplane::affinity::{BackendId, ServicePortId};
use limpet_dataplane::command::Command;
use limpet_dataplane::state::{
    DecodeError, ExportCursor, Reader, RestoreCounts, WorkerState, layout_fingerprint,
};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

pub const MAGIC: [u8; 8] = *b"LIMPETST";
/// The file format's version; bump it with any change to the layout above.
pub const VERSION: u32 = 1;
/// magic, version, fingerprint, length.
const HEADER_LEN: usize = 8 + 4 + 8 + 8;
const CHECKSUM_LEN: usize = 8;
/// Table slots a worker walks per export request: 10 to 14 ns a slot of a
/// full table (`cargo bench -p limpet-bench --bench state`), so about a
/// quarter of a millisecond away from its packets per chunk.
pub const EXPORT_CHUNK: usize = 1 << 14;
/// How long a worker may take to answer one request.
const WORKER_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a restart hands over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Unix seconds when it was taken.
    pub written_at: u64,
    /// The interfaces (ports) limpet drove, in order: connections name
    /// them by index.
    pub links: Vec<String>,
    pub services: Vec<(ServicePortId, String)>,
    pub backends: Vec<(BackendId, SocketAddr)>,
    /// Each worker's tables, by worker index.
    pub workers: Vec<WorkerState>,
}

/// Why a state file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{len} bytes, shorter than a header: truncated")]
    TooShort { len: usize },
    #[error("not a limpet state file (starts {found:02x?}, not \"LIMPETST\")")]
    Magic { found: [u8; 8] },
    #[error("format version {found}, this limpet reads version {VERSION}")]
    Version { found: u32 },
    #[error("written with another entry layout (fingerprint {found:016x}, this build {ours:016x})")]
    Layout { found: u64, ours: u64 },
    #[error("torn or truncated: the header says {expected} bytes, the file has {found}")]
    Length { expected: u64, found: usize },
    #[error("checksum mismatch (stored {stored:016x}, computed {computed:016x}): corrupt")]
    Checksum { stored: u64, computed: u64 },
    #[error("malformed content: {0}")]
    Decode(#[from] DecodeError),
}

/// A state file that could not be read, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} refused: {source}")]
    Refused {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn get_str(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let n = usize::from(r.u16()?);
    let bytes = r.bytes(n)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| r.invalid("a name is not UTF-8"))
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let mut octets = [0u8; 16];
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            octets[..4].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            octets = ip.octets();
        }
    }
    out.extend_from_slice(&octets);
    out.extend_from_slice(&a.port().to_le_bytes());
}

fn get_addr(r: &mut Reader<'_>) -> Result<SocketAddr, DecodeError> {
    let family = r.u8()?;
    let b = r.bytes(16)?;
    let port = r.u16()?;
    let ip = match family {
        4 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        other => return Err(r.invalid(format!("address family {other}"))),
    };
    Ok(SocketAddr::new(ip, port))
}

/// A count of records at least `min` bytes each, checked against what is
/// left.
fn count32(r: &mut Reader<'_>, min: usize, what: &str) -> Result<usize, DecodeError> {
    let n = r.u32()? as usize;
    if n.saturating_mul(min) > r.remaining() {
        return Err(r.invalid(format!(
            "{n} {what} do not fit the {} bytes left",
            r.remaining()
        )));
    }
    Ok(n)
}

impl Checkpoint {
    /// The whole file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&layout_fingerprint().to_le_bytes());
        // The length, filled in below.
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&self.written_at.to_le_bytes());
        out.extend_from_slice(&(self.links.len() as u32).to_le_bytes());
        for l in &self.links {
            put_str(&mut out, l);
        }
        out.extend_from_slice(&(self.services.len() as u32).to_le_bytes());
        for (id, name) in &self.services {
            out.extend_from_slice(&id.to_le_bytes());
            put_str(&mut out, name);
        }
        out.extend_from_slice(&(self.backends.len() as u32).to_le_bytes());
        for (id, addr) in &self.backends {
            out.extend_from_slice(&id.to_le_bytes());
            put_addr(&mut out, *addr);
        }
        out.extend_from_slice(&(self.workers.len() as u32).to_le_bytes());
        for w in &self.workers {
            w.encode(&mut out);
        }
        let len = (out.len() + CHECKSUM_LEN) as u64;
        out[20..28].copy_from_slice(&len.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads a whole file back, refusing anything but an intact file of
    /// this version and layout.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(FormatError::TooShort { len: bytes.len() });
        }
        let mut r = Reader::new(bytes);
        let mut found = [0u8; 8];
        found.copy_from_slice(r.bytes(8)?);
        if found != MAGIC {
            return Err(FormatError::Magic { found });
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(FormatError::Version { found: version });
        }
        let fingerprint = r.u64()?;
        if fingerprint != layout_fingerprint() {
            return Err(FormatError::Layout {
                found: fingerprint,
                ours: layout_fingerprint(),
            });
        }
        let expected = r.u64()?;
        if expected != bytes.len() as u64 {
            return Err(FormatError::Length {
                expected,
                found: bytes.len(),
            });
        }
        let (content, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        let stored = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
        let computed = xxhash_rust::xxh3::xxh3_64(content);
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        let mut r = Reader::new(content);
        r.bytes(HEADER_LEN)?;
        let written_at = r.u64()?;
        let mut cp = Checkpoint {
            written_at,
            ..Checkpoint::default()
        };
        for _ in 0..count32(&mut r, 2, "interface names")? {
            cp.links.push(get_str(&mut r)?);
        }
        for _ in 0..count32(&mut r, 6, "service ports")? {
            let id = r.u32()?;
            cp.services.push((id, get_str(&mut r)?));
        }
        for _ in 0..count32(&mut r, 23, "backends")? {
            let id = r.u32()?;
            cp.backends.push((id, get_addr(&mut r)?));
        }
        for _ in 0..count32(&mut r, 32, "workers")? {
            cp.workers.push(WorkerState::decode(&mut r)?);
        }
        if r.remaining() != 0 {
            return Err(r
                .invalid(format!("{} bytes after the last worker", r.remaining()))
                .into());
        }
        cp.check_ids()?;
        Ok(cp)
    }

    /// Every id names one key and every key has one id: what
    /// [`IdAllocator`] guarantees, so a file that breaks it is refused.
    fn check_ids(&self) -> Result<(), DecodeError> {
        let bad = |what: String| DecodeError::Invalid { at: 0, what };
        let mut ids = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for (id, name) in &self.services {
            if !ids.insert(*id) || !names.insert(name.as_str()) {
                return Err(bad(format!("service port {id} ({name}) listed twice")));
            }
        }
        let mut ids = std::collections::HashSet::new();
        let mut addrs = std::collections::HashSet::new();
        for (id, addr) in &self.backends {
            if !ids.insert(*id) || !addrs.insert(*addr) {
                return Err(bad(format!("backend {id} ({addr}) listed twice")));
            }
        }
        Ok(())
    }

    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::decode(&bytes).map_err(|source| CheckpointError::Refused {
            path: path.to_owned(),
            source,
        })
    }

    /// An id allocator that gives this file's names their ids again.
    pub fn ids(&self) -> IdAllocator {
        let floor = self
            .workers
            .iter()
            .map(WorkerState::max_ids)
            .fold((0, 0), |(s, b), (s2, b2)| (s.max(s2), b.max(b2)));
        IdAllocator::seeded(
            self.services.iter().map(|(id, name)| (name.clone(), *id)),
            self.backends
                .iter()
                .map(|(id, addr)| ((addr.ip(), addr.port()), *id)),
            floor,
        )
    }

    pub fn affinity_len(&self) -> usize {
        self.workers.iter().map(WorkerState::affinity_len).sum()
    }

    pub fn flows_len(&self) -> usize {
        self.workers.iter().map(WorkerState::flows_len).sum()
    }
}

/// Writes `bytes` to `path` so that `path` is, at every moment, the old
/// file or the new one, whole: a temporary file beside it, synced, renamed
/// over it, and the directory synced so the rename survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Where the state goes and how often it is checkpointed.
#[derive(Debug, Clone)]
pub struct StateOptions {
    pub path: PathBuf,
    /// `None`: only on a planned stop.
    pub interval: Option<Duration>,
}

/// The state file at start-up: `None`, said in the log, when there is none
/// or it is refused (limpet then starts with empty tables).
pub fn load_at_start(path: &Path) -> Option<Checkpoint> {
    match Checkpoint::load(path) {
        Ok(cp) => {
            info!(
                path = %path.display(),
                affinity = cp.affinity_len(),
                connections = cp.flows_len(),
                workers = cp.workers.len(),
                age_s = u64::from(limpet_dataplane::clock::unix_now()).saturating_sub(cp.written_at),
                "state file read"
            );
            Some(cp)
        }
        Err(CheckpointError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            info!(path = %path.display(), "no state file yet: starting with empty tables");
            None
        }
        Err(e) => {
            error!("{e}; starting with empty tables");
            None
        }
    }
}

/// Hands a checkpoint's entries to the workers (before the first snapshot,
/// so no client is placed before its entry is back) and remembers its
/// backends for the admin API and the next checkpoint.
pub fn restore(shared: &Shared, cp: Checkpoint, links: &[String]) {
    let started = Instant::now();
    {
        let mut state = shared.lock();
        for (id, addr) in &cp.backends {
            state.backends.entry(*id).or_insert(*addr);
        }
    }
    let same_links = cp.links == links;
    if !same_links {
        warn!(
            saved = ?cp.links,
            now = ?links,
            "state file was written for other interfaces: restoring affinity, not connections"
        );
    }
    let saved_workers = cp.workers.len();
    let states: Vec<WorkerState> = cp
        .workers
        .into_iter()
        .map(|w| if same_links { w } else { w.without_flows() })
        .collect();
    let routed = WorkerState::route(states, shared.workers.len());
    let mut affinity = RestoreCounts::default();
    let mut flows = RestoreCounts::default();
    let mut replies = Vec::new();
    for (tx, state) in shared.workers.iter().zip(routed) {
        let (reply, rx) = bounded(1);
        if tx
            .send_timeout(
                Command::Restore {
                    state: Box::new(state),
                    reply,
                },
                WORKER_TIMEOUT,
            )
            .is_ok()
        {
            replies.push(rx);
        }
    }
    for (i, rx) in replies.iter().enumerate() {
        // A million entries take a while to insert: more than a chunk.
        if let Ok(r) = rx.recv_timeout(Duration::from_mins(1)) {
            affinity.add(&r.affinity);
            flows.add(&r.flows);
        } else {
            error!(worker = i, "worker did not restore its state");
        }
    }
    info!(
        saved_workers,
        workers = shared.workers.len(),
        affinity = affinity.inserted,
        connections = flows.inserted,
        expired_in_gap = affinity.expired + flows.expired,
        evicted = affinity.evicted + flows.evicted,
        duplicate = affinity.duplicate + flows.duplicate,
        refused = affinity.refused + flows.refused,
        restore_ms = started.elapsed().as_millis() as u64,
        "state restored"
    );
}

/// Stops every worker taking packets (they still answer commands), so a
/// final checkpoint is exactly what they held.
pub fn hold(shared: &Shared) {
    let mut replies = Vec::new();
    for tx in &shared.workers {
        let (reply, rx) = bounded(1);
        if tx
            .send_timeout(Command::Hold { reply }, WORKER_TIMEOUT)
            .is_ok()
        {
            replies.push(rx);
        }
    }
    for (i, rx) in replies.iter().enumerate() {
        if rx.recv_timeout(WORKER_TIMEOUT).is_err() {
            warn!(worker = i, "worker did not stop taking packets");
        }
    }
}

/// What one checkpoint took.
#[derive(Debug, Clone, Copy, Default)]
pub struct SaveStats {
    pub affinity: usize,
    pub connections: usize,
    pub bytes: usize,
    /// Collecting the entries from the workers.
    pub export: Duration,
    /// Encoding and writing the file.
    pub write: Duration,
}

/// Collects every worker's tables a chunk at a time.
pub fn collect(shared: &Shared, links: &[String]) -> Result<Checkpoint, String> {
    let (services, backends) = {
        let state = shared.lock();
        let services = state
            .snapshot
            .ports()
            .iter()
            .map(|p| (p.spec.id, p.spec.name.clone()))
            .collect();
        let mut backends: Vec<(BackendId, SocketAddr)> =
            state.backends.iter().map(|(id, a)| (*id, *a)).collect();
        backends.sort_unstable();
        (services, backends)
    };
    let mut workers = Vec::with_capacity(shared.workers.len());
    for (i, tx) in shared.workers.iter().enumerate() {
        workers.push(export_worker(tx).map_err(|e| format!("worker {i}: {e}"))?);
    }
    Ok(Checkpoint {
        written_at: u64::from(limpet_dataplane::clock::unix_now()),
        links: links.to_vec(),
        services,
        backends,
        workers,
    })
}

fn export_worker(tx: &Sender<Command>) -> Result<WorkerState, String> {
    let mut state = WorkerState::default();
    let mut at = Some(ExportCursor::default());
    while let Some(from) = at {
        let (reply, rx) = bounded(1);
        tx.send_timeout(
            Command::Export {
                from,
                slots: EXPORT_CHUNK,
                reply,
            },
            WORKER_TIMEOUT,
        )
        .map_err(|_| "did not take the export request".to_owned())?;
        let chunk = rx
            .recv_timeout(WORKER_TIMEOUT)
            .map_err(|_| "did not answer the export request".to_owned())?;
        state.append(chunk.state);
        at = chunk.next;
    }
    Ok(state)
}

/// Takes a checkpoint and writes it to `path`; a limpet that has not
/// published a snapshot yet writes nothing (it would only lose the last
/// good file's affinity, whose timeouts it cannot know).
pub fn save(shared: &Shared, links: &[String], path: &Path) -> Result<Option<SaveStats>, String> {
    if !shared.lock().ready {
        return Ok(None);
    }
    let started = Instant::now();
    let cp = collect(shared, links)?;
    let export = started.elapsed();
    let bytes = cp.encode();
    write_atomic(path, &bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(Some(SaveStats {
        affinity: cp.affinity_len(),
        connections: cp.flows_len(),
        bytes: bytes.len(),
        export,
        write: started.elapsed().saturating_sub(export),
    }))
}

/// The state file for one run of limpet: restores it at start,
/// checkpoints it every interval, and saves it on a planned stop.
#[derive(Debug)]
pub struct Keeper {
    shared: Arc<Shared>,
    links: Vec<String>,
    path: PathBuf,
    periodic: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Keeper {
    /// Hands `saved` (the file as read at start, if it was good) to the
    /// workers and starts checkpointing. Call before the first snapshot.
    pub fn start(
        shared: &Arc<Shared>,
        links: Vec<String>,
        options: &StateOptions,
        saved: Option<Checkpoint>,
    ) -> std::io::Result<Self> {
        if let Some(saved) = saved {
            restore(shared, saved, &links);
        }
        let periodic = match options.interval {
            Some(every) => {
                let (tx, rx) = bounded(0);
                let thread = spawn_periodic(
                    Arc::clone(shared),
                    links.clone(),
                    options.path.clone(),
                    every,
                    rx,
                )?;
                Some((tx, thread))
            }
            None => None,
        };
        Ok(Self {
            shared: Arc::clone(shared),
            links,
            path: options.path.clone(),
            periodic,
        })
    }

    /// A planned stop's hand-over: the workers stop taking packets, then
    /// their tables go to the state file, so what is saved is all they
    /// held. The workers are still running (held) when this returns.
    pub fn stop(self) {
        if let Some((tx, thread)) = self.periodic {
            drop(tx);
            let _ = thread.join();
        }
        let started = Instant::now();
        hold(&self.shared);
        match save(&self.shared, &self.links, &self.path) {
            Ok(Some(s)) => info!(
                path = %self.path.display(),
                affinity = s.affinity,
                connections = s.connections,
                bytes = s.bytes,
                export_ms = s.export.as_millis() as u64,
                write_ms = s.write.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "state saved"
            ),
            Ok(None) => warn!(
                path = %self.path.display(),
                "no snapshot was ever published: state file left as it was"
            ),
            Err(e) => error!("state not saved: {e}"),
        }
    }
}

/// Checkpoints every `interval` until `stop` closes or sends.
pub fn spawn_periodic(
    shared: Arc<Shared>,
    links: Vec<String>,
    path: PathBuf,
    interval: Duration,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("limpet-checkpoint".into())
        .spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stop.recv_timeout(interval)
            {
                match save(&shared, &links, &path) {
                    Ok(Some(s)) => tracing::debug!(
                        affinity = s.affinity,
                        connections = s.connections,
                        bytes = s.bytes,
                        export_ms = s.export.as_millis() as u64,
                        write_ms = s.write.as_millis() as u64,
                        "checkpoint written"
                    ),
                    Ok(None) => {}
                    Err(e) => error!("checkpoint not written: {e}"),
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use limpet_dataplane::affinity::{AffinityEntry, AffinityKey};
    use limpet_dataplane::state::SavedAffinity;

    fn sample() -> Checkpoint {
        let mut w = WorkerState::default();
        w.affinity_v4.push(SavedAffinity {
            entry: AffinityEntry {
                key: AffinityKey {
                    service: 3,
                    client: Ipv4Addr::new(198, 18, 0, 10),
                },
                backend: 12,
            },
            last_seen: 1_800_000_000,
            timeout: 10800,
            protected: true,
            prefix: 32,
        });
        Checkpoint {
            written_at: 1_800_000_005,
            links: vec!["lb0".into()],
            services: vec![(3, "default/hostnames:80/TCP".into())],
            backends: vec![
                (12, "203.0.113.11:9376".parse().unwrap()),
                (13, "[2001:db8:be::11]:9376".parse().unwrap()),
            ],
            workers: vec![w, WorkerState::default()],
        }
    }

    #[test]
    fn round_trip() {
        let cp = sample();
        assert_eq!(Checkpoint::decode(&cp.encode()).unwrap(), cp);
        let empty = Checkpoint::default();
        assert_eq!(Checkpoint::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn any_corrupt_byte_is_refused() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            let err = Checkpoint::decode(&bad).expect_err("a flipped byte was accepted");
            // Each header field has its own message; past it, the checksum
            // catches everything.
            let want = match i {
                0..8 => "not a limpet state file",
                8..12 => "format version",
                12..20 => "entry layout",
                20..28 => "torn or truncated",
                _ => "checksum mismatch",
            };
            assert!(err.to_string().contains(want), "byte {i}: {err}");
        }
    }

    #[test]
    fn truncated_and_torn_files_are_refused() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            let err = Checkpoint::decode(&bytes[..cut]).expect_err("a cut file was accepted");
            let s = err.to_string();
            assert!(
                s.contains("truncated"),
                "cut at {cut} of {}: {s}",
                bytes.len()
            );
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"junk");
        assert!(
            Checkpoint::decode(&longer)
                .unwrap_err()
                .to_string()
                .contains("the header says")
        );
    }

    #[test]
    fn other_versions_layouts_and_magics_are_refused() {
        let bytes = sample().encode();
        let mut v2 = bytes.clone();
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        let err = Checkpoint::decode(&v2).unwrap_err().to_string();
        assert!(
            err.contains("format version 2, this limpet reads version 1"),
            "{err}"
        );
        let mut layout = bytes.clone();
        layout[12..20].copy_from_slice(&0xdead_beef_u64.to_le_bytes());
        let err = Checkpoint::decode(&layout).unwrap_err().to_string();
        assert!(err.contains("another entry layout"), "{err}");
        let mut magic = bytes;
        magic[..8].copy_from_slice(b"NOTLIMPT");
        let err = Checkpoint::decode(&magic).unwrap_err().to_string();
        assert!(err.contains("not a limpet state file"), "{err}");
    }

    #[test]
    fn a_refusal_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, b"LIMPETST").unwrap();
        let err = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("refused"), "{err}");
        assert!(load_at_start(&path).is_none());
        assert!(load_at_start(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let mut cp = sample();
        cp.backends.push((12, "203.0.113.99:1".parse().unwrap()));
        let err = Checkpoint::decode(&cp.encode()).unwrap_err().to_string();
        assert!(err.contains("backend 12"), "{err}");
    }

    #[test]
    fn atomic_write_replaces_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, &sample().encode()).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), sample());
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state")]);
    }

    #[test]
    fn ids_carry_over() {
        let mut ids = sample().ids();
        assert_eq!(ids.service_port("default/hostnames:80/TCP"), 3);
        assert_eq!(ids.backend("203.0.113.11".parse().unwrap(), 9376), 12);
        assert_eq!(ids.backend("203.0.113.12".parse().unwrap(), 9376), 14);
    }
}
