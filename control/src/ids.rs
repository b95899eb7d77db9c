//! Stable identifiers for service ports and backends.
//!
//! The dataplane keys affinity entries by [`ServicePortId`] and remembers the
//! chosen [`BackendId`], so both must survive a reload: the same service port
//! (by name) and the same endpoint (by address and port) get the same id for
//! the life of the process. An id is never handed to a different key, so an
//! affinity entry can never point at an unrelated backend after a change.
//! Ids come from the order keys are first seen, so they are not the same in
//! another process: a restart carries them over in the state file
//! ([`IdAllocator::seeded`]), with the entries that name them.
//!
//! Ids start at 1 (0 is the dataplane tables' empty value). Keys are never
//! forgotten: the maps grow with every name and endpoint ever seen, a few
//! dozen bytes each, which is what never reusing an id costs.

use limpet_dataplane::affinity::{BackendId, ServicePortId};
use std::collections::HashMap;
use std::net::IpAddr;

/// Hands out stable ids; keep one for the life of the process and pass it to
/// every [`translate`](crate::translate::translate) call.
#[derive(Debug, Clone)]
pub struct IdAllocator {
    services: HashMap<String, ServicePortId>,
    backends: HashMap<(IpAddr, u16), BackendId>,
    next_service: ServicePortId,
    next_backend: BackendId,
}

impl Default for IdAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl IdAllocator {
    pub fn new() -> Self {
        Self {
            services: HashMap::new(),
            backends: HashMap::new(),
            next_service: 1,
            next_backend: 1,
        }
    }

    /// An allocator that goes on where an earlier process left off: the
    /// same names and endpoints keep the ids that process gave them, so
    /// the affinity and connection entries it saved (which name backends
    /// and service ports by id) mean the same here. New keys get ids above
    /// every one given and above `floor` (the largest an entry names).
    pub fn seeded(
        services: impl IntoIterator<Item = (String, ServicePortId)>,
        backends: impl IntoIterator<Item = ((IpAddr, u16), BackendId)>,
        floor: (ServicePortId, BackendId),
    ) -> Self {
        let services: HashMap<String, ServicePortId> = services.into_iter().collect();
        let backends: HashMap<(IpAddr, u16), BackendId> = backends.into_iter().collect();
        let next_service = services
            .values()
            .copied()
            .chain([floor.0])
            .max()
            .unwrap_or(0);
        let next_backend = backends
            .values()
            .copied()
            .chain([floor.1])
            .max()
            .unwrap_or(0);
        Self {
            services,
            backends,
            next_service: next_service.saturating_add(1),
            next_backend: next_backend.saturating_add(1),
        }
    }

    /// The id of the service port spec called `name` (see
    /// [`translate`](crate::translate) for how names are formed).
    pub fn service_port(&mut self, name: &str) -> ServicePortId {
        if let Some(&id) = self.services.get(name) {
            return id;
        }
        let id = self.next_service;
        self.next_service = self
            .next_service
            .checked_add(1)
            .expect("service port ids exhausted");
        self.services.insert(name.to_owned(), id);
        id
    }

    /// The id of the endpoint `addr:port`.
    pub fn backend(&mut self, addr: IpAddr, port: u16) -> BackendId {
        *self.backends.entry((addr, port)).or_insert_with(|| {
            let id = self.next_backend;
            self.next_backend = self
                .next_backend
                .checked_add(1)
                .expect("backend ids exhausted");
            id
        })
    }

    /// The id already given to `name`, if any.
    pub fn lookup_service_port(&self, name: &str) -> Option<ServicePortId> {
        self.services.get(name).copied()
    }

    /// The id already given to `addr:port`, if any.
    pub fn lookup_backend(&self, addr: IpAddr, port: u16) -> Option<BackendId> {
        self.backends.get(&(addr, port)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_never_reused() {
        let mut ids = IdAllocator::new();
        let a = ids.service_port("default/a:80/TCP");
        let b = ids.service_port("default/b:80/TCP");
        assert_ne!(a, b);
        assert_ne!(a, 0);
        assert_eq!(ids.service_port("default/a:80/TCP"), a);
        let x: IpAddr = "203.0.113.11".parse().unwrap();
        let y: IpAddr = "2001:db8::11".parse().unwrap();
        let bx = ids.backend(x, 9376);
        assert_ne!(bx, ids.backend(x, 9377));
        assert_ne!(bx, ids.backend(y, 9376));
        assert_eq!(ids.backend(x, 9376), bx);
        assert_eq!(ids.lookup_backend(x, 9376), Some(bx));
        assert_eq!(ids.lookup_service_port("default/c:80/TCP"), None);
    }

    #[test]
    fn a_seeded_allocator_keeps_the_old_ids_and_never_reuses_one() {
        let x: IpAddr = "203.0.113.11".parse().unwrap();
        let y: IpAddr = "203.0.113.12".parse().unwrap();
        let mut ids = IdAllocator::seeded(
            [("default/a:80/TCP".to_owned(), 5)],
            [((x, 9376), 9)],
            (6, 20),
        );
        assert_eq!(ids.service_port("default/a:80/TCP"), 5);
        assert_eq!(ids.backend(x, 9376), 9);
        // Above the seeded ids and above what saved entries name.
        assert_eq!(ids.service_port("default/b:80/TCP"), 7);
        assert_eq!(ids.backend(y, 9376), 21);
    }
}
