//! The per-worker sticky table: which backend each client of a `ClientIP`
//! service port was sent to, and when it last opened a connection there.
//!
//! Semantics are kube-proxy's (see DESIGN.md): the key is the service port
//! and the client's address under the service's mask, never the source
//! port; the timeout is idle time since the client's last *new connection*,
//! and an entry is honoured at exactly `timeoutSeconds` of idleness and gone
//! one tick later, as `xt_recent --rcheck --seconds` behaves. Expiry is
//! checked at lookup (an expired entry is never honoured) and reaped by the
//! table's timer wheel. The timeout is read from the current snapshot, not
//! stored per entry, so a changed `timeoutSeconds` applies to existing
//! clients the way a rewritten iptables rule does.
//!
//! # Admission: probation, then protection
//!
//! The table is bounded, and a full table must take room from someone. Left
//! to the timer wheel alone (take the entry closest to expiry) a flood of
//! new source addresses, which costs an attacker nothing to spoof, pushes
//! out real clients at the rate it arrives. So entries live in two tiers
//! (segmented LRU's shape, with "proved real" instead of "hit twice" as
//! the way up):
//!
//! - a client seen for the first time enters on **probation**;
//! - it moves to **protected** once a connection of it proves the address
//!   is really there: for TCP the client's ACK after its SYN (the third
//!   packet of the handshake, which a spoofer never sees the SYN-ACK for),
//!   for UDP a second datagram of the flow. The flow table remembers that a
//!   connection still has to prove itself (`Flow::awaiting_proof`), so the
//!   proof costs one extra affinity lookup once per connection at that one
//!   packet, never a lookup per packet;
//! - a full table takes room on probation, earliest first, while probation
//!   holds anything, and from protected entries only when it is empty; each
//!   is counted separately (`probation_evictions`, and the rest of
//!   `evictions`).
//!
//! A one-packet spoofed flood therefore only ever churns probation, however
//! fast it comes, and a client that completed a handshake keeps its backend
//! until it idles past its timeout. The tier is a bit of the entry's stamp
//! and each tier is a lane of the same timer wheel, so the entry stays 16
//! bytes (IPv4) and taking room stays O(1).
//!
//! Why not an admission filter such as `TinyLFU`: a frequency sketch judges
//! by how often a key is seen, which a spoofer controls (send each address
//! twice), costs memory per entry the 32-byte budget has no room for, and
//! refuses new clients exactly when the table is under pressure. A
//! completed handshake is evidence a blind spoofer cannot forge by volume.
//! What it does not stop: a spoofer sending a SYN and then a bare ACK from
//! each address (limpet does not check the ACK number) reaches protection
//! like a real client; that takes two packets per address and a table's
//! worth of distinct addresses per timeout.
//!
//! Tiers change nothing in what a lookup answers: entries of either tier
//! are honoured alike, expire alike and are never honoured for a backend
//! that left the usable set. A client whose probation entry was pushed out
//! before its handshake completed is simply picked by Maglev again on its
//! next connection, as any new client is.

use crate::family::Family;
use crate::hash::table_hash;
use crate::table::{Hit, Room, Table, TableCounters, TableEntry, TableError, Tier};

/// A service port's identity, stable across snapshots.
pub type ServicePortId = u32;
/// A backend's identity, stable across snapshots.
pub type BackendId = u32;

/// The affinity key: service port and masked client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffinityKey<A> {
    pub service: ServicePortId,
    pub client: A,
}

/// One sticky client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffinityEntry<A> {
    pub key: AffinityKey<A>,
    pub backend: BackendId,
}

impl<A: Family> Default for AffinityEntry<A> {
    fn default() -> Self {
        Self {
            key: AffinityKey {
                service: 0,
                client: A::UNSPECIFIED,
            },
            backend: 0,
        }
    }
}

impl<A: Family> TableEntry for AffinityEntry<A> {
    type Key = AffinityKey<A>;
    type Align = ();
    const MAX_WAYS: usize = 1;

    #[inline(always)]
    fn ways(&self) -> u8 {
        1
    }

    #[inline(always)]
    fn key(&self, _way: u8) -> AffinityKey<A> {
        self.key
    }

    #[inline(always)]
    fn hash(key: &AffinityKey<A>) -> u64 {
        let [a, b] = key.client.words();
        table_hash(&[a ^ (u64::from(key.service) << 32), b])
    }
}

/// The first tick at which an entry refreshed at `last_seen` is expired.
#[inline(always)]
pub fn deadline(last_seen: u32, timeout: u32) -> u32 {
    last_seen.saturating_add(timeout).saturating_add(1)
}

/// What a lookup found for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sticky {
    /// A live entry: its index and backend.
    Live { idx: u32, backend: BackendId },
    /// An entry past its timeout, not to be honoured; overwrite it.
    Expired { idx: u32 },
    /// No entry.
    Missing,
}

/// What became of one entry put back from saved state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// In the table, in a free entry.
    Inserted,
    /// In the table, in place of a live entry evicted for it (a smaller
    /// table than the one it was saved from).
    Evicted,
    /// Left out: idle past its timeout by now.
    Expired,
    /// Left out: its key was already in the table.
    Duplicate,
    /// Left out: the table's invariants did not allow it (never expected).
    Refused,
}

impl Restored {
    pub(crate) fn from_room(room: Option<Room>) -> Self {
        match room {
            Some(Room::Free | Room::Expired) => Restored::Inserted,
            Some(Room::Evicted) => Restored::Evicted,
            None => Restored::Refused,
        }
    }
}

/// The sticky table for one address family.
#[derive(Debug)]
pub struct AffinityTable<A: Family> {
    table: Table<AffinityEntry<A>>,
}

impl<A: Family> AffinityTable<A> {
    pub fn new(capacity: usize, now: u32) -> Result<Self, TableError> {
        Ok(Self {
            table: Table::new(capacity, now)?,
        })
    }

    #[inline(always)]
    pub fn hash(key: &AffinityKey<A>) -> u64 {
        AffinityEntry::<A>::hash(key)
    }

    #[inline(always)]
    pub fn prefetch_bucket(&self, hash: u64) {
        self.table.prefetch_bucket(hash);
    }

    #[inline(always)]
    pub fn prefetch_entry(&self, hash: u64) {
        let _ = self.table.prefetch_entry(hash);
    }

    /// Looks `key` up at `now` for a service whose timeout is `timeout`.
    #[inline]
    pub fn lookup(&self, hash: u64, key: &AffinityKey<A>, timeout: u32, now: u32) -> Sticky {
        match self.table.find(hash, key) {
            None => Sticky::Missing,
            Some(Hit { idx, .. }) => {
                if now >= deadline(self.table.last_seen(idx), timeout) {
                    Sticky::Expired { idx }
                } else {
                    Sticky::Live {
                        idx,
                        backend: self.table.get(idx).backend,
                    }
                }
            }
        }
    }

    /// Refreshes a live entry for a new connection.
    #[inline]
    pub fn refresh(&mut self, idx: u32, now: u32) {
        self.table.touch(idx, now);
    }

    /// Whether the live entry at `idx` is still on probation: its client has
    /// not yet completed a connection.
    #[inline]
    pub fn on_probation(&self, idx: u32) -> bool {
        self.table.tier(idx) == Tier::Probation
    }

    /// A connection of the client `key` proved the client real: its entry,
    /// if live, moves to the protected tier. Its stamp is kept (a proof is
    /// not a new connection). Returns whether an entry on probation moved;
    /// `false` if it was protected already, expired, or pushed out before
    /// the proof came.
    pub fn promote(&mut self, hash: u64, key: &AffinityKey<A>, timeout: u32, now: u32) -> bool {
        match self.lookup(hash, key, timeout, now) {
            Sticky::Live { idx, .. } => {
                let due = deadline(self.table.last_seen(idx), timeout);
                self.table.promote(idx, due)
            }
            Sticky::Expired { .. } | Sticky::Missing => false,
        }
    }

    /// Points an existing entry at a new backend (its old one expired or
    /// left the usable set) and refreshes it.
    #[inline]
    pub fn repoint(&mut self, idx: u32, backend: BackendId, now: u32) {
        self.table.get_mut(idx).backend = backend;
        self.table.touch(idx, now);
    }

    /// Adds a client, on probation. `timeout_of` gives any service port's current timeout
    /// (`None` if it no longer has affinity) so a full table can prefer an
    /// expired entry over evicting a live one.
    #[inline]
    pub fn insert(
        &mut self,
        key: AffinityKey<A>,
        backend: BackendId,
        timeout: u32,
        now: u32,
        timeout_of: impl Fn(ServicePortId) -> Option<u32>,
    ) -> Option<Room> {
        let entry = AffinityEntry { key, backend };
        self.table
            .insert_in(
                Tier::Probation,
                entry,
                now,
                deadline(now, timeout),
                |e, last| timeout_of(e.key.service).map_or(0, |t| deadline(last, t)),
            )
            .map(|(_, room)| room)
    }

    /// Puts back an entry saved by an earlier process, last refreshed at
    /// `last_seen` under a service port whose timeout was then `timeout`,
    /// in the tier it had (a restart must not put proven clients back on
    /// probation, where a flood would take them first). An entry whose
    /// timeout ran out meanwhile, or whose key is already here, is left
    /// out; a full table makes room as an insert does.
    pub fn restore(
        &mut self,
        entry: AffinityEntry<A>,
        protected: bool,
        last_seen: u32,
        timeout: u32,
        now: u32,
        timeout_of: impl Fn(ServicePortId) -> Option<u32>,
    ) -> Restored {
        let due = deadline(last_seen, timeout);
        if due <= now {
            return Restored::Expired;
        }
        if self.table.contains_any_key(&entry) {
            return Restored::Duplicate;
        }
        let inserted =
            self.table
                .insert_seen(tier_of(protected), entry, last_seen, now, due, |e, last| {
                    timeout_of(e.key.service).map_or(0, |t| deadline(last, t))
                });
        Restored::from_room(inserted.map(|(_, room)| room))
    }

    /// Reaps every entry idle past its service port's timeout at `now`;
    /// entries of service ports that lost affinity go when their wheel slot
    /// next fires (lookups never consult them meanwhile).
    pub fn expire(&mut self, now: u32, timeout_of: impl Fn(ServicePortId) -> Option<u32>) -> usize {
        self.table.advance(now, |e, last| {
            timeout_of(e.key.service).map_or(0, |t| deadline(last, t))
        })
    }

    /// Re-files a chunk of entries under their current timeouts after a
    /// snapshot shortened some (see [`Table::refile`]). Returns where the
    /// next chunk starts, or `None` when done.
    pub fn refile(
        &mut self,
        start: usize,
        count: usize,
        now: u32,
        timeout_of: impl Fn(ServicePortId) -> Option<u32>,
    ) -> Option<usize> {
        self.table.refile(start, count, now, |e, last| {
            timeout_of(e.key.service).map_or(0, |t| deadline(last, t))
        })
    }

    /// Removes every entry `pred` selects; returns how many.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&AffinityEntry<A>) -> bool) -> usize {
        let doomed: Vec<u32> = self
            .table
            .iter()
            .filter(|(_, e, _)| pred(e))
            .map(|(i, _, _)| i)
            .collect();
        for &i in &doomed {
            self.table.remove(i);
        }
        doomed.len()
    }

    /// Live entries with their last refresh.
    pub fn iter(&self) -> impl Iterator<Item = (&AffinityEntry<A>, u32)> + '_ {
        self.table.iter().map(|(_, e, last)| (e, last))
    }

    /// Live entries among slots `start..start + count` (see
    /// [`Table::iter_slots`]), with their last refresh and whether they are
    /// protected.
    pub fn iter_slots(
        &self,
        start: usize,
        count: usize,
    ) -> impl Iterator<Item = (&AffinityEntry<A>, u32, bool)> + '_ {
        self.table
            .iter_slots(start, count)
            .map(|(i, e, last)| (e, last, self.table.tier(i) == Tier::Protected))
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Live entries still on probation.
    pub fn len_on_probation(&self) -> usize {
        self.table.len_on_probation()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    pub fn counters(&self) -> TableCounters {
        self.table.counters()
    }

    pub fn bytes_per_entry(&self) -> f64 {
        self.table.bytes_per_entry()
    }
}

fn tier_of(protected: bool) -> Tier {
    if protected {
        Tier::Protected
    } else {
        Tier::Probation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn key4(service: u32, last: u8) -> AffinityKey<Ipv4Addr> {
        AffinityKey {
            service,
            client: Ipv4Addr::new(198, 18, 0, last),
        }
    }

    #[test]
    fn honoured_until_timeout_then_gone() {
        let mut t = AffinityTable::<Ipv4Addr>::new(16, 0).unwrap();
        let k = key4(1, 1);
        let h = AffinityTable::hash(&k);
        t.insert(k, 42, 3, 10, |_| Some(3)).unwrap();
        assert!(matches!(
            t.lookup(h, &k, 3, 13),
            Sticky::Live { backend: 42, .. }
        ));
        assert!(matches!(t.lookup(h, &k, 3, 14), Sticky::Expired { .. }));
        assert_eq!(t.expire(14, |_| Some(3)), 1);
        assert_eq!(t.lookup(h, &k, 3, 14), Sticky::Missing);
    }

    #[test]
    fn keyed_by_service_port_and_client() {
        let mut t = AffinityTable::<Ipv4Addr>::new(16, 0).unwrap();
        t.insert(key4(1, 1), 7, 100, 0, |_| Some(100)).unwrap();
        let other_service = key4(2, 1);
        let other_client = key4(1, 2);
        for k in [other_service, other_client] {
            assert_eq!(
                t.lookup(AffinityTable::hash(&k), &k, 100, 1),
                Sticky::Missing
            );
        }
    }

    #[test]
    fn entries_meet_the_memory_goal() {
        // The goal is 32 bytes an entry including the wheel: the IPv4 table
        // meets it at a million entries; IPv6 pays for its 16-byte address.
        let v4 = AffinityTable::<Ipv4Addr>::new(1 << 20, 0).unwrap();
        assert!(v4.bytes_per_entry() <= 32.0, "{}", v4.bytes_per_entry());
        let v6 = AffinityTable::<Ipv6Addr>::new(1 << 20, 0).unwrap();
        assert!(v6.bytes_per_entry() <= 44.0, "{}", v6.bytes_per_entry());
    }

    #[test]
    fn promotion_keeps_stamp_and_backend() {
        let mut t = AffinityTable::<Ipv4Addr>::new(16, 0).unwrap();
        let k = key4(1, 1);
        let h = AffinityTable::hash(&k);
        t.insert(k, 42, 30, 10, |_| Some(30)).unwrap();
        let Sticky::Live { idx, .. } = t.lookup(h, &k, 30, 10) else {
            panic!("no entry")
        };
        assert!(t.on_probation(idx));
        assert!(t.promote(h, &k, 30, 12));
        assert!(!t.on_probation(idx));
        assert!(!t.promote(h, &k, 30, 13), "already protected");
        assert_eq!(
            t.iter().next().map(|(e, last)| (e.backend, last)),
            Some((42, 10))
        );
        assert_eq!(t.counters().promotions, 1);
        // Honoured until the same moment as before, then gone.
        assert!(matches!(t.lookup(h, &k, 30, 40), Sticky::Live { .. }));
        assert_eq!(t.expire(41, |_| Some(30)), 1);
        // Missing or expired entries are not promoted.
        assert!(!t.promote(h, &k, 30, 41));
        t.insert(k, 42, 30, 50, |_| Some(30)).unwrap();
        assert!(!t.promote(h, &k, 30, 81));
        assert_eq!(t.counters().promotions, 1);
    }

    #[test]
    fn spoofed_flood_never_evicts_a_protected_client() {
        let cap = 1000;
        let mut t = AffinityTable::<Ipv4Addr>::new(cap, 0).unwrap();
        let real: Vec<_> = (0..600u32)
            .map(|i| AffinityKey {
                service: 1,
                client: Ipv4Addr::from(0xc612_0000 | i),
            })
            .collect();
        for (i, k) in real.iter().enumerate() {
            t.insert(*k, i as u32, 60, 0, |_| Some(60)).unwrap();
            assert!(t.promote(AffinityTable::hash(k), k, 60, 0));
        }
        // Ten tables' worth of one-packet sources a second for 30 s.
        for now in 1..=30u32 {
            for j in 0..10 * cap as u32 {
                let k = AffinityKey {
                    service: 1,
                    client: Ipv4Addr::from(0xc613_0000u32.wrapping_add(now * 65_536 + j)),
                };
                let h = AffinityTable::hash(&k);
                if t.lookup(h, &k, 60, now) == Sticky::Missing {
                    t.insert(k, 7, 60, now, |_| Some(60)).unwrap();
                }
            }
            t.expire(now, |_| Some(60));
        }
        for (i, k) in real.iter().enumerate() {
            let got = t.lookup(AffinityTable::hash(k), k, 60, 30);
            assert!(
                matches!(got, Sticky::Live { backend, .. } if backend == i as u32),
                "client {i}: {got:?}"
            );
        }
        let c = t.counters();
        assert_eq!(c.evictions, c.probation_evictions);
        assert!(c.probation_evictions > 250_000, "{c:?}");
        assert_eq!(t.len(), cap);
        assert_eq!(t.len_on_probation(), cap - real.len());
    }

    #[test]
    fn lost_affinity_reaps_at_once() {
        let mut t = AffinityTable::<Ipv4Addr>::new(16, 0).unwrap();
        t.insert(key4(1, 1), 7, 100, 0, |_| Some(100)).unwrap();
        // Service 1 dropped ClientIP: its entries go at the next reap that
        // reaches their slot (entries are filed by their old deadline).
        assert_eq!(t.expire(101, |_| None), 1);
        assert!(t.is_empty());
    }
}
