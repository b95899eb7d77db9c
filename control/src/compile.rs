//! Incremental snapshot compilation: only the service ports whose spec
//! changed are compiled (their Maglev tables are the expensive part, built
//! here on the control thread and never on a worker); every other port is
//! shared, by `Arc`, with the previous snapshot, and a change given as a
//! delta ([`SnapshotCompiler::update`]) patches the previous snapshot's
//! lookup maps rather than rebuilding them, so it costs the same whatever
//! the number of service ports.

use limpet_dataplane::affinity::ServicePortId;
use limpet_dataplane::snapshot::{ServicePort, ServicePortSpec, Snapshot, SnapshotError};
use std::sync::Arc;

/// What one compilation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompileStats {
    pub reused: usize,
    pub compiled: usize,
}

/// Compiles snapshots, remembering the last one.
#[derive(Debug, Default)]
pub struct SnapshotCompiler {
    last: Arc<Snapshot>,
}

impl SnapshotCompiler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Generation of the last snapshot compiled (0: none yet).
    pub fn generation(&self) -> u64 {
        self.last.generation()
    }

    /// The last snapshot compiled.
    pub fn last(&self) -> &Arc<Snapshot> {
        &self.last
    }

    /// The compiled port for `spec`; `None` if the last snapshot's is the
    /// same.
    fn port(
        &self,
        spec: ServicePortSpec,
        stats: &mut CompileStats,
    ) -> Result<Option<Arc<ServicePort>>, SnapshotError> {
        match self.last.port_arc(spec.id) {
            Some(old) if old.spec == spec => {
                stats.reused += 1;
                Ok(None)
            }
            _ => {
                stats.compiled += 1;
                Ok(Some(Arc::new(ServicePort::compile(spec)?)))
            }
        }
    }

    /// Compiles the full list `specs` into the next snapshot (ports equal to
    /// the last snapshot's are reused). On error nothing changes.
    pub fn compile(
        &mut self,
        specs: Vec<ServicePortSpec>,
    ) -> Result<(Arc<Snapshot>, CompileStats), SnapshotError> {
        self.compile_on(specs, 1)
    }

    /// [`compile`](Self::compile) with the new ports' Maglev tables built
    /// on up to `threads` threads (scoped: they end before this returns).
    /// For start-up, on cores no worker uses: a whole cluster's tables at
    /// once.
    pub fn compile_on(
        &mut self,
        specs: Vec<ServicePortSpec>,
        threads: usize,
    ) -> Result<(Arc<Snapshot>, CompileStats), SnapshotError> {
        let mut stats = CompileStats::default();
        let mut ports: Vec<Option<Arc<ServicePort>>> = Vec::with_capacity(specs.len());
        let mut fresh: Vec<(usize, ServicePortSpec)> = Vec::new();
        for spec in specs {
            match self.last.port_arc(spec.id) {
                Some(old) if old.spec == spec => {
                    stats.reused += 1;
                    ports.push(Some(Arc::clone(old)));
                }
                _ => {
                    fresh.push((ports.len(), spec));
                    ports.push(None);
                }
            }
        }
        stats.compiled = fresh.len();
        for (i, port) in compile_all(fresh, threads)? {
            ports[i] = Some(port);
        }
        let ports = ports.into_iter().map(|p| p.expect("compiled")).collect();
        let snapshot = Arc::new(Snapshot::new(self.generation() + 1, ports)?);
        self.last = Arc::clone(&snapshot);
        Ok((snapshot, stats))
    }

    /// The next snapshot from the last one and a change: `changed` specs
    /// added or replacing those with their ids, `removed` ids gone. Only
    /// the changed ports are compiled; the rest is shared. On error nothing
    /// changes.
    pub fn update(
        &mut self,
        changed: Vec<ServicePortSpec>,
        removed: &[ServicePortId],
    ) -> Result<(Arc<Snapshot>, CompileStats), SnapshotError> {
        let mut stats = CompileStats::default();
        let mut ports = Vec::with_capacity(changed.len());
        for spec in changed {
            if let Some(p) = self.port(spec, &mut stats)? {
                ports.push(p);
            }
        }
        stats.reused = self
            .last
            .ports()
            .len()
            .saturating_sub(ports.len() + removed.len());
        let snapshot = Arc::new(
            self.last
                .with_changes(self.generation() + 1, ports, removed)?,
        );
        self.last = Arc::clone(&snapshot);
        Ok((snapshot, stats))
    }
}

/// Compiles `(position, spec)`s, on up to `threads` scoped threads when
/// there are enough to share.
fn compile_all(
    specs: Vec<(usize, ServicePortSpec)>,
    threads: usize,
) -> Result<Vec<(usize, Arc<ServicePort>)>, SnapshotError> {
    let one = |chunk: Vec<(usize, ServicePortSpec)>| {
        chunk
            .into_iter()
            .map(|(i, s)| Ok((i, Arc::new(ServicePort::compile(s)?))))
            .collect::<Result<Vec<_>, SnapshotError>>()
    };
    let threads = threads.clamp(1, 16);
    if threads == 1 || specs.len() < 256 {
        return one(specs);
    }
    // Interleaved, so big tables spread over the threads.
    let mut chunks: Vec<Vec<(usize, ServicePortSpec)>> = (0..threads).map(|_| Vec::new()).collect();
    for (k, item) in specs.into_iter().enumerate() {
        chunks[k % threads].push(item);
    }
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || one(chunk)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use limpet_dataplane::snapshot::{Affinity, Backend, ForwardMode};
    use limpet_dataplane::wire::MacAddr;
    use std::net::IpAddr;

    fn spec(id: u32, backends: &[u8]) -> ServicePortSpec {
        ServicePortSpec {
            id,
            name: format!("default/svc{id}:80/TCP"),
            protocol: 6,
            affinity: Affinity::client_ip(10800),
            mode: ForwardMode::Nat,
            frontends: vec![(IpAddr::from([192, 0, 2, id as u8]), 80)],
            backends: backends
                .iter()
                .map(|&b| Backend {
                    id: u32::from(b),
                    addr: IpAddr::from([203, 0, 113, b]),
                    port: 9376,
                    weight: 1,
                    mac: MacAddr([2, 0, 0, 0, 0, b]),
                    iface: 0,
                })
                .collect(),
            maglev_size: Some(1009),
            source_ranges: None,
        }
    }

    #[test]
    fn recompiles_only_what_changed() {
        let mut c = SnapshotCompiler::new();
        let (first, stats) = c
            .compile(vec![spec(1, &[1, 2]), spec(2, &[3]), spec(3, &[4])])
            .unwrap();
        assert_eq!(
            stats,
            CompileStats {
                reused: 0,
                compiled: 3
            }
        );
        let (second, stats) = c
            .compile(vec![spec(1, &[1, 2]), spec(2, &[3, 5]), spec(3, &[4])])
            .unwrap();
        assert_eq!(
            stats,
            CompileStats {
                reused: 2,
                compiled: 1
            }
        );
        assert_eq!(second.generation(), 2);
        assert!(Arc::ptr_eq(&first.ports()[0], &second.ports()[0]));
        assert!(!Arc::ptr_eq(&first.ports()[1], &second.ports()[1]));
        assert_eq!(second.by_id(2).unwrap().spec.backends.len(), 2);
        // A removed port leaves the cache; bringing it back compiles it.
        let (_, stats) = c.compile(vec![spec(1, &[1, 2])]).unwrap();
        assert_eq!(
            stats,
            CompileStats {
                reused: 1,
                compiled: 0
            }
        );
        let (_, stats) = c.compile(vec![spec(1, &[1, 2]), spec(3, &[4])]).unwrap();
        assert_eq!(
            stats,
            CompileStats {
                reused: 1,
                compiled: 1
            }
        );
    }

    #[test]
    fn update_compiles_only_the_change() {
        let mut c = SnapshotCompiler::new();
        let (first, _) = c
            .compile(vec![spec(1, &[1, 2]), spec(2, &[3]), spec(3, &[4])])
            .unwrap();
        let (second, stats) = c.update(vec![spec(2, &[3, 5])], &[3]).unwrap();
        assert_eq!(stats.compiled, 1);
        assert_eq!(second.generation(), 2);
        assert_eq!(second.ports().len(), 2);
        assert!(Arc::ptr_eq(
            first.port_arc(1).unwrap(),
            second.port_arc(1).unwrap()
        ));
        assert_eq!(second.by_id(2).unwrap().spec.backends.len(), 2);
        assert!(second.by_id(3).is_none());
        // An unchanged spec given again is not compiled again.
        let (_, stats) = c.update(vec![spec(1, &[1, 2])], &[]).unwrap();
        assert_eq!(stats.compiled, 0);
        // A failed update changes nothing.
        let mut clash = spec(4, &[6]);
        clash.frontends = spec(1, &[]).frontends;
        assert!(c.update(vec![clash], &[]).is_err());
        assert_eq!(c.generation(), 3);
        assert_eq!(c.last().ports().len(), 2);
    }

    #[test]
    fn a_failed_compile_changes_nothing() {
        let mut c = SnapshotCompiler::new();
        c.compile(vec![spec(1, &[1])]).unwrap();
        let mut clash = spec(2, &[2]);
        clash.frontends = spec(1, &[]).frontends;
        assert!(c.compile(vec![spec(1, &[1]), clash]).is_err());
        assert_eq!(c.generation(), 1);
        let (_, stats) = c.compile(vec![spec(1, &[1])]).unwrap();
        assert_eq!(
            stats,
            CompileStats {
                reused: 1,
                compiled: 0
            }
        );
    }
}
