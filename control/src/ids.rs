//! Stable identifiers for service ports and backends.
//!
//! The dataplane keys affinity entries by [`ServicePortId`] and remembers the
//! chosen [`BackendId`], so both must survive a reload: the same service port
//! (by name) and the same endpoint (by address and port) get the same id for
//! the life of the process. An id is never handed to a different key, so an
//! affinity entry can never point at an unrelated backend after a change.
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
}
