//! Source NAT: which connections limpet source-translates (`fullnat`, and
//! `nat` clients their endpoint would answer directly, see
//! [`SnatConfig::source`]), to which address, and which source ports a
//! worker may give them.
//!
//! A source-translated connection's replies carry limpet's address and the
//! allocated port, not the client, so steering by client address cannot
//! bring them home. Ports are dealt out instead: worker `k` of `n` owns the
//! ports `p` with `p % n == k`, and a reply to a source-NAT address goes to
//! the worker owning its destination port (the `AF_PACKET` fanout program
//! and [`crate::io::steer`] compute the same). No state is shared between
//! workers and no reply is looked up across them.
//!
//! There is no allocator state either: the connection table is the record
//! of which ports are taken. A new connection tries candidates from a
//! start derived from its own tuple, as Linux's NAT does, and takes the
//! first whose reply tuple (backend, backend port, source address, port) no
//! live connection holds; [`PROBES`] failures in a row count as exhaustion
//! and the connection is refused and counted, never given a port another
//! connection's replies already use.

use crate::family::Family;
use std::net::IpAddr;

/// How many candidate ports a new connection tries before it is refused.
pub const PROBES: u32 = 32;

/// A worker's source-NAT settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnatConfig {
    pub ports: SnatPorts,
    /// limpet's own addresses with their on-link prefixes (`--address`).
    /// Under `nat` a client inside the subnet of the endpoint it is sent
    /// to would be answered by that endpoint directly, past the reverse
    /// translation (a pod reaching its own Service, or a neighbour on the
    /// same subnet): such a client is source-translated to limpet's
    /// address there, as kube-proxy masquerades hairpin traffic. Under
    /// `fullnat` the address on the endpoint's subnet is its source.
    pub subnets: Vec<(IpAddr, u8)>,
    /// `fullnat`'s source addresses (`--snat-address`), by family; where
    /// one is missing, limpet's address on the endpoint's subnet, or its
    /// first address of the family.
    pub fullnat: Vec<IpAddr>,
}

/// What a new connection's source becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<A> {
    /// Left as it is: the endpoint answers through limpet.
    Kept,
    /// Translated to this address (and a port this worker owns).
    Translated(A),
    /// Needs translating but limpet has no address of the family.
    Unavailable,
}

impl SnatConfig {
    /// The source a connection from `client` to `backend` leaves with,
    /// under `fullnat` (`full`) or `nat`.
    #[inline]
    pub fn source<A: Family>(&self, full: bool, client: A, backend: A) -> Source<A> {
        let mut on_link = None;
        let mut first = None;
        for &(addr, prefix) in &self.subnets {
            let Some(ours) = crate::family::from_ip::<A>(addr) else {
                continue;
            };
            first.get_or_insert(ours);
            if backend.masked(prefix) == ours.masked(prefix) {
                on_link = Some((ours, prefix));
                break;
            }
        }
        if !full {
            return match on_link {
                Some((ours, prefix)) if client.masked(prefix) == ours.masked(prefix) => {
                    Source::Translated(ours)
                }
                _ => Source::Kept,
            };
        }
        let given = self
            .fullnat
            .iter()
            .find_map(|&a| crate::family::from_ip::<A>(a));
        match given.or(on_link.map(|(ours, _)| ours)).or(first) {
            Some(source) => Source::Translated(source),
            None => Source::Unavailable,
        }
    }

    /// Every address a source-translated connection's replies may come
    /// back to: where they are steered by port ([`port_owner`]).
    pub fn addrs(&self) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = self
            .subnets
            .iter()
            .map(|&(a, _)| a)
            .chain(self.fullnat.iter().copied())
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        addrs
    }
}

/// The source ports one worker owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatPorts {
    /// The configured range, inclusive (`--snat-ports`).
    pub first: u16,
    pub last: u16,
    /// This worker's index, and how many workers share the range.
    pub worker: u16,
    pub workers: u16,
}

impl Default for SnatPorts {
    /// Linux's unprivileged range's start to the top, one worker.
    fn default() -> Self {
        Self {
            first: 1024,
            last: 65535,
            worker: 0,
            workers: 1,
        }
    }
}

/// The worker (of `workers`) that owns source port `port`.
#[inline]
pub fn port_owner(port: u16, workers: usize) -> usize {
    usize::from(port) % workers.max(1)
}

impl SnatPorts {
    /// The lowest port of the range this worker owns, and how many it
    /// owns (0 if the range is narrower than the worker count).
    #[inline]
    fn owned(self) -> (u32, u32) {
        let n = u32::from(self.workers.max(1));
        let k = u32::from(self.worker) % n;
        let (first, last) = (u32::from(self.first), u32::from(self.last));
        if last < first {
            return (first, 0);
        }
        let lowest = first + (k + n - first % n) % n;
        if lowest > last {
            return (lowest, 0);
        }
        (lowest, (last - lowest) / n + 1)
    }

    /// How many ports this worker owns.
    pub fn len(self) -> u32 {
        self.owned().1
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The candidate ports a connection whose tuple hashes to `hash` tries,
    /// in order: at most [`PROBES`], all owned by this worker.
    #[inline]
    pub fn candidates(self, hash: u64) -> impl Iterator<Item = u16> {
        let (lowest, count) = self.owned();
        let n = u32::from(self.workers.max(1));
        let start = if count == 0 {
            0
        } else {
            (hash % u64::from(count)) as u32
        };
        (0..PROBES.min(count)).map(move |i| {
            let index = (start + i) % count;
            // In range by construction: lowest + (count - 1) * n <= last.
            (lowest + index * n) as u16
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_worker_owns_the_whole_range() {
        let p = SnatPorts::default();
        assert_eq!(p.len(), 65535 - 1024 + 1);
        let c: Vec<u16> = p.candidates(0).collect();
        assert_eq!(c.len(), PROBES as usize);
        assert_eq!(c[0], 1024);
        assert_eq!(c[1], 1025);
        // The last port wraps to the first.
        let c: Vec<u16> = p.candidates(u64::from(p.len() - 1)).take(2).collect();
        assert_eq!(c, [65535, 1024]);
    }

    #[test]
    fn a_range_narrower_than_the_workers_leaves_some_without_ports() {
        let p = SnatPorts {
            // 5001 % 3 = 0, 5002 % 3 = 1: none for worker 2.
            first: 5001,
            last: 5002,
            worker: 2,
            workers: 3,
        };
        assert!(p.is_empty());
        assert_eq!(p.candidates(7).count(), 0);
        let backwards = SnatPorts {
            first: 6000,
            last: 5000,
            ..SnatPorts::default()
        };
        assert!(backwards.is_empty());
    }

    proptest! {
        #[test]
        fn workers_get_disjoint_ports_in_range_that_steer_home(
            first in 0u16..=65535,
            width in 0u16..2000,
            workers in 1u16..=16,
            hash in any::<u64>(),
        ) {
            let last = first.saturating_add(width);
            let mut total = 0;
            for worker in 0..workers {
                let p = SnatPorts { first, last, worker, workers };
                total += p.len();
                for port in p.candidates(hash) {
                    prop_assert!((first..=last).contains(&port));
                    prop_assert_eq!(port_owner(port, usize::from(workers)), usize::from(worker));
                }
                let distinct: std::collections::BTreeSet<u16> = p.candidates(hash).collect();
                prop_assert_eq!(distinct.len(), p.candidates(hash).count());
            }
            prop_assert_eq!(total, u32::from(last - first) + 1);
        }
    }
}
