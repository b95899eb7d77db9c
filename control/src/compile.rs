//! Incremental snapshot compilation: a change to one Service or slice
//! recompiles only the service ports whose spec changed (their Maglev
//! tables are the expensive part, built here on the control thread and
//! never on a worker); every other port is shared, by `Arc`, with the
//! previous snapshot.

use limpet_dataplane::affinity::ServicePortId;
use limpet_dataplane::snapshot::{ServicePort, ServicePortSpec, Snapshot, SnapshotError};
use std::collections::HashMap;
use std::sync::Arc;

/// What one compilation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompileStats {
    pub reused: usize,
    pub compiled: usize,
}

/// Compiles snapshots, remembering the last one's service ports.
#[derive(Debug, Default)]
pub struct SnapshotCompiler {
    cache: HashMap<ServicePortId, Arc<ServicePort>>,
    generation: u64,
}

impl SnapshotCompiler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Generation of the last snapshot compiled.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Compiles `specs` into the next snapshot. On error nothing changes:
    /// the previous snapshot and cache stay as they were.
    pub fn compile(
        &mut self,
        specs: Vec<ServicePortSpec>,
    ) -> Result<(Snapshot, CompileStats), SnapshotError> {
        let mut stats = CompileStats::default();
        // The cache is updated in place once the snapshot is built: ports
        // compiled now are staged, and entries no longer listed are dropped.
        let mut fresh = Vec::new();
        let mut ports = Vec::with_capacity(specs.len());
        for spec in specs {
            let port = match self.cache.get(&spec.id) {
                Some(old) if old.spec == spec => {
                    stats.reused += 1;
                    Arc::clone(old)
                }
                _ => {
                    stats.compiled += 1;
                    let port = Arc::new(ServicePort::compile(spec)?);
                    fresh.push(Arc::clone(&port));
                    port
                }
            };
            ports.push(port);
        }
        let snapshot = Snapshot::new(self.generation + 1, ports)?;
        self.generation += 1;
        for port in fresh {
            self.cache.insert(port.spec.id, port);
        }
        if self.cache.len() != snapshot.ports().len() {
            self.cache.retain(|id, _| snapshot.by_id(*id).is_some());
        }
        Ok((snapshot, stats))
    }
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
