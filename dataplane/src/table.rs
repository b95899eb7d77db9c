//! A bounded hash table whose entries expire: the storage under the
//! affinity and flow tables.
//!
//! Why not `hashbrown::HashTable`: a worker looks up a whole burst at once
//! and wants the memory for every packet in flight before it touches any of
//! them. hashbrown does not expose where a hash lands, so there is nothing to
//! prefetch, and it moves entries when it rehashes, which would break the
//! timer wheel's links. This table is the layout DPDK's `rte_hash` uses for
//! its bulk lookup (30 cycles a key against 78 one at a time): a bucket is
//! one cache line of short signatures and entry indices, entries live in a
//! separate preallocated array and never move. A lookup is two dependent
//! cache lines, bucket then entry, and [`Table::prefetch_bucket`] /
//! [`Table::prefetch_entry`] let a burst overlap them.
//!
//! Buckets overflow into their neighbours (linear probing over buckets) and
//! keep a count of entries that overflowed past them, as folly's F14 does, so
//! a miss stops at the first bucket nobody overflowed and deletion needs no
//! tombstones. The bucket array is sized for a load of at most 0.8, so an
//! insert always finds room and probe chains stay short.
//!
//! Capacity is fixed at construction. When full, an insert makes room by
//! taking the entry the timer wheel would fire first: an expired one if there
//! is one, else the live entry closest to expiry, and that is counted as an
//! eviction. Nothing is ever dropped silently.
//!
//! Entries live in one of two [`Tier`]s, each filed in its own lane of the
//! wheel, so that a full table can take room from the probation tier first
//! and from the protected tier only when probation is empty (see the
//! affinity table for why). The tier is the top bit of the entry's refresh
//! stamp, so it costs no memory; clocks are seconds and stay below 2^31.

use crate::io::{huge_vec, prefetch, prefetch_all};
use crate::timer_wheel::{Fired, TimerWheel};

/// An entry of a [`Table`]. It can answer to two keys: a flow is found by its
/// forward tuple and by the tuple its replies carry.
pub trait TableEntry: Copy + Default {
    type Key: Copy + Eq;
    /// How a stored entry is aligned: `()` packs entries end to end,
    /// [`LineAligned`] gives each its own cache line, so an entry a little
    /// under a line is one memory access instead of often two.
    type Align: Copy + Default;
    /// The most keys one entry may have; sizes the index.
    const MAX_WAYS: usize;
    /// How many keys index this entry: 1, or 2 for the reply tuple too.
    fn ways(&self) -> u8;
    /// The key for `way` (0 or 1).
    fn key(&self, way: u8) -> Self::Key;
    /// The in-process hash of a key.
    fn hash(key: &Self::Key) -> u64;
}

const BUCKET_SLOTS: usize = 10;
const EMPTY: u32 = u32::MAX;
/// What [`Table::prefetch_entry`] returns when it has no guess.
pub const NO_HINT: u32 = EMPTY;
const WAY_BIT: u32 = 1 << 31;
/// `stamp` of a free entry.
const DEAD: u32 = u32::MAX;
/// The stamp bit of an entry on probation.
const PROBATION_BIT: u32 = 1 << 31;
/// Latest tick a stamp holds: a probation stamp must never read as DEAD.
const MAX_TICK: u32 = PROBATION_BIT - 2;
/// How many wheel-earliest entries an insert into a full table will look at
/// before it evicts a live one that has not expired.
const EVICTION_PROBES: usize = 8;
/// Largest capacity: entry indices share their `u32` with the way bit.
pub const MAX_CAPACITY: usize = (WAY_BIT - 1) as usize;

/// One cache line: ten 16-bit signatures, ten entry references and the count
/// of entries that overflowed past this bucket.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Bucket {
    sig: [u16; BUCKET_SLOTS],
    overflow: u32,
    slot: [u32; BUCKET_SLOTS],
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

impl Bucket {
    const EMPTY: Self = Self {
        sig: [0; BUCKET_SLOTS],
        overflow: 0,
        slot: [EMPTY; BUCKET_SLOTS],
    };

    /// Bit `i` set where slot `i` is in use with signature `sig`; computed
    /// without branches, so a scan costs no mispredictions.
    #[inline(always)]
    fn matches(&self, sig: u16) -> u32 {
        let mut m = 0;
        for i in 0..BUCKET_SLOTS {
            m |= (u32::from(self.sig[i] == sig) & u32::from(self.slot[i] != EMPTY)) << i;
        }
        m
    }
}

/// Aligns a stored entry to a cache line; see [`TableEntry::Align`].
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(64))]
pub struct LineAligned;

#[derive(Clone, Copy, Default)]
struct Stored<E: TableEntry> {
    _align: [E::Align; 0],
    entry: E,
    /// Last refresh tick, with [`PROBATION_BIT`] set on probation; [`DEAD`]
    /// when free.
    stamp: u32,
}

/// Where an entry stands when a full table makes room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Kept while any entry on probation is left to take instead.
    Protected,
    /// Taken first.
    Probation,
}

impl Tier {
    /// The wheel lane this tier is filed in.
    #[inline(always)]
    fn lane(self) -> usize {
        match self {
            Tier::Protected => 0,
            Tier::Probation => 1,
        }
    }

    #[inline(always)]
    fn of(stamp: u32) -> Tier {
        if stamp & PROBATION_BIT != 0 {
            Tier::Probation
        } else {
            Tier::Protected
        }
    }

    /// The stamp of an entry of this tier refreshed at `now`.
    #[inline(always)]
    fn stamp(self, now: u32) -> u32 {
        let tick = now.min(MAX_TICK);
        match self {
            Tier::Protected => tick,
            Tier::Probation => tick | PROBATION_BIT,
        }
    }
}

/// The refresh tick of a live entry's stamp.
#[inline(always)]
fn tick(stamp: u32) -> u32 {
    stamp & !PROBATION_BIT
}

/// Where a key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub idx: u32,
    pub way: u8,
}

/// What an insert did to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// A free entry was used.
    Free,
    /// An expired entry was reclaimed early.
    Expired,
    /// A live entry was evicted.
    Evicted,
}

/// Table events, for the worker's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableCounters {
    pub inserts: u64,
    pub expirations: u64,
    pub evictions: u64,
    pub removals: u64,
    /// Of `inserts`, those filed on probation.
    pub probation_inserts: u64,
    /// Of `evictions`, those taken from probation.
    pub probation_evictions: u64,
    /// Entries moved from probation to protected.
    pub promotions: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("table capacity must be between 1 and {MAX_CAPACITY}, got {0}")]
    Capacity(usize),
}

/// A bounded, preallocated hash table of expiring entries. See the module
/// documentation for the layout.
pub struct Table<E: TableEntry> {
    buckets: Box<[Bucket]>,
    mask: usize,
    slots: Box<[Stored<E>]>,
    wheel: TimerWheel,
    live: usize,
    /// Of `live`, entries on probation.
    on_probation: usize,
    counters: TableCounters,
}

impl<E: TableEntry> std::fmt::Debug for Table<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("capacity", &self.slots.len())
            .field("live", &self.live)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

#[inline(always)]
fn sig_of(hash: u64) -> u16 {
    (hash >> 48) as u16
}

#[inline(always)]
fn encode(idx: u32, way: u8) -> u32 {
    idx | if way == 0 { 0 } else { WAY_BIT }
}

impl<E: TableEntry> Table<E> {
    /// A table holding at most `capacity` entries, with its clock at `now`.
    /// All memory is allocated here.
    pub fn new(capacity: usize, now: u32) -> Result<Self, TableError> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(TableError::Capacity(capacity));
        }
        // Eight keys a ten-slot bucket keeps the load at or below 0.8.
        let buckets = (capacity * E::MAX_WAYS).div_ceil(8).next_power_of_two();
        Ok(Self {
            buckets: huge_vec(Bucket::EMPTY, buckets).into_boxed_slice(),
            mask: buckets - 1,
            slots: huge_vec(
                Stored {
                    _align: [],
                    entry: E::default(),
                    stamp: DEAD,
                },
                capacity,
            )
            .into_boxed_slice(),
            wheel: TimerWheel::new(capacity, u64::from(now)),
            live: 0,
            on_probation: 0,
            counters: TableCounters::default(),
        })
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Live entries on probation.
    pub fn len_on_probation(&self) -> usize {
        self.on_probation
    }

    pub fn counters(&self) -> TableCounters {
        self.counters
    }

    /// Bytes of memory per entry of capacity: entry, wheel link and index.
    pub fn bytes_per_entry(&self) -> f64 {
        let entry = std::mem::size_of::<Stored<E>>() + TimerWheel::BYTES_PER_ENTRY;
        let index = self.buckets.len() * std::mem::size_of::<Bucket>();
        entry as f64 + index as f64 / self.slots.len() as f64
    }

    #[inline(always)]
    fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask
    }

    /// Starts loading the bucket a key with this hash lives in.
    #[inline(always)]
    pub fn prefetch_bucket(&self, hash: u64) {
        if let Some(b) = self.buckets.get(self.home(hash)) {
            prefetch(b);
        }
    }

    /// Starts loading the entry the key most likely is, judged by signature
    /// alone. Call after [`prefetch_bucket`](Self::prefetch_bucket) has had
    /// time to land. Returns that guess, for
    /// [`find_hinted`](Self::find_hinted), or [`NO_HINT`].
    #[inline(always)]
    pub fn prefetch_entry(&self, hash: u64) -> u32 {
        let sig = sig_of(hash);
        let Some(b) = self.buckets.get(self.home(hash)) else {
            return NO_HINT;
        };
        for i in 0..BUCKET_SLOTS {
            if b.sig[i] == sig && b.slot[i] != EMPTY {
                if let Some(s) = self.slots.get((b.slot[i] & !WAY_BIT) as usize) {
                    prefetch_all(s);
                    return b.slot[i];
                }
                return NO_HINT;
            }
        }
        NO_HINT
    }

    /// [`find`](Self::find), trying first the guess
    /// [`prefetch_entry`](Self::prefetch_entry) returned for this key. The
    /// guess need not still hold: the table may have changed since. It is
    /// taken only if it names a live entry with this key, which, keys
    /// being unique among live entries, is then the one `find` would find.
    #[inline]
    pub fn find_hinted(&self, hash: u64, hint: u32, key: &E::Key) -> Option<Hit> {
        if hint != NO_HINT {
            let idx = hint & !WAY_BIT;
            let way = u8::from(hint & WAY_BIT != 0);
            if let Some(s) = self.slots.get(idx as usize)
                && s.stamp != DEAD
                && way < s.entry.ways()
                && s.entry.key(way) == *key
            {
                return Some(Hit { idx, way });
            }
        }
        self.find(hash, key)
    }

    /// Finds `key`, whose hash is `hash`.
    #[inline]
    pub fn find(&self, hash: u64, key: &E::Key) -> Option<Hit> {
        let sig = sig_of(hash);
        let mut b = self.home(hash);
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            let mut m = bucket.matches(sig);
            while m != 0 {
                let slot = bucket.slot[m.trailing_zeros() as usize];
                m &= m - 1;
                let idx = slot & !WAY_BIT;
                let way = u8::from(slot & WAY_BIT != 0);
                if self.slots[idx as usize].entry.key(way) == *key {
                    return Some(Hit { idx, way });
                }
            }
            if bucket.overflow == 0 {
                return None;
            }
            b = (b + 1) & self.mask;
        }
        None
    }

    /// The entry at `idx`.
    #[inline]
    pub fn get(&self, idx: u32) -> &E {
        &self.slots[idx as usize].entry
    }

    /// The entry at `idx`, to update its value. Its keys must not change.
    #[inline]
    pub fn get_mut(&mut self, idx: u32) -> &mut E {
        &mut self.slots[idx as usize].entry
    }

    /// When the entry at `idx` was last refreshed.
    #[inline]
    pub fn last_seen(&self, idx: u32) -> u32 {
        tick(self.slots[idx as usize].stamp)
    }

    /// The tier of the live entry at `idx`.
    #[inline]
    pub fn tier(&self, idx: u32) -> Tier {
        Tier::of(self.slots[idx as usize].stamp)
    }

    /// Moves the live entry at `idx` from probation to protected, filed
    /// under `deadline`. Returns whether it was on probation.
    pub fn promote(&mut self, idx: u32, deadline: u32) -> bool {
        let s = &mut self.slots[idx as usize];
        if s.stamp == DEAD || Tier::of(s.stamp) != Tier::Probation {
            return false;
        }
        s.stamp &= !PROBATION_BIT;
        self.wheel.unschedule(idx);
        self.wheel
            .schedule_in(Tier::Protected.lane(), idx, u64::from(deadline));
        self.on_probation -= 1;
        self.counters.promotions += 1;
        true
    }

    /// Refreshes the entry at `idx`. The wheel is not touched: the entry's
    /// slot reschedules it when it fires.
    #[inline]
    pub fn touch(&mut self, idx: u32, now: u32) {
        let s = &mut self.slots[idx as usize];
        // Store only on change: most packets of a busy entry arrive within
        // the tick it was last refreshed in, and a line left clean is not
        // written back to memory when it is evicted.
        if s.stamp != DEAD && tick(s.stamp) != now {
            s.stamp = Tier::of(s.stamp).stamp(now);
        }
    }

    /// Inserts `entry`, whose keys must not be present, refreshed at `now`
    /// and due to expire at `deadline`. `expiry` gives any entry's deadline
    /// from its value and last refresh; a full table uses it to prefer an
    /// expired entry over evicting a live one. Returns the new entry's index
    /// and how room was made; `None` only if the table's invariants were
    /// broken, which the caller counts rather than trusts. The entry is
    /// protected; see [`insert_in`](Self::insert_in).
    pub fn insert(
        &mut self,
        entry: E,
        now: u32,
        deadline: u32,
        expiry: impl Fn(&E, u32) -> u32,
    ) -> Option<(u32, Room)> {
        self.insert_in(Tier::Protected, entry, now, deadline, expiry)
    }

    /// [`insert`](Self::insert) into `tier`. A full table makes room on
    /// probation while anything is there, and among protected entries
    /// only when nothing is.
    pub fn insert_in(
        &mut self,
        tier: Tier,
        entry: E,
        now: u32,
        deadline: u32,
        expiry: impl Fn(&E, u32) -> u32,
    ) -> Option<(u32, Room)> {
        self.insert_seen(tier, entry, now, now, deadline, expiry)
    }

    /// [`insert_in`](Self::insert_in) an entry last refreshed at
    /// `last_seen` (at or before `now`), as state carried over a restart
    /// is: its timeout keeps running from then, in the tier it had.
    pub fn insert_seen(
        &mut self,
        tier: Tier,
        entry: E,
        last_seen: u32,
        now: u32,
        deadline: u32,
        expiry: impl Fn(&E, u32) -> u32,
    ) -> Option<(u32, Room)> {
        let last_seen = last_seen.min(now);
        let (idx, room) = match self.wheel.alloc() {
            Some(idx) => (idx, Room::Free),
            None => self.make_room(now, &expiry)?,
        };
        self.slots[idx as usize] = Stored {
            _align: [],
            entry,
            stamp: tier.stamp(last_seen),
        };
        for way in 0..entry.ways() {
            let hash = E::hash(&entry.key(way));
            if !self.index_insert(hash, encode(idx, way)) {
                for undo in 0..way {
                    self.index_remove(E::hash(&entry.key(undo)), encode(idx, undo));
                }
                self.slots[idx as usize].stamp = DEAD;
                self.wheel.release(idx);
                return None;
            }
        }
        self.wheel
            .schedule_in(tier.lane(), idx, u64::from(deadline));
        self.live += 1;
        self.counters.inserts += 1;
        if tier == Tier::Probation {
            self.on_probation += 1;
            self.counters.probation_inserts += 1;
        }
        Some((idx, room))
    }

    /// Takes the entry the wheel fires first, of probation's lane if it
    /// holds any, else of protected's, and reuses it. When no entry is free
    /// every entry is live and on the wheel, so this finds one.
    fn make_room(&mut self, now: u32, expiry: &impl Fn(&E, u32) -> u32) -> Option<(u32, Room)> {
        let tier = if self.wheel.lane_is_empty(Tier::Probation.lane()) {
            Tier::Protected
        } else {
            Tier::Probation
        };
        for probe in 1..=EVICTION_PROBES {
            let (idx, slot_end) = self.wheel.pop_earliest_in(tier.lane())?;
            let s = self.slots[idx as usize];
            let due = expiry(&s.entry, tick(s.stamp));
            if due <= now {
                self.unindex(idx);
                self.counters.expirations += 1;
                return Some((idx, Room::Expired));
            }
            // Due within the slot it came from: nothing is due sooner.
            if probe == EVICTION_PROBES || u64::from(due) < slot_end {
                self.unindex(idx);
                self.counters.evictions += 1;
                if tier == Tier::Probation {
                    self.counters.probation_evictions += 1;
                }
                self.prefetch_victims(tier);
                return Some((idx, Room::Evicted));
            }
            // Refreshed since it was scheduled: file it where it belongs and
            // look at the next one.
            self.wheel.schedule_in(tier.lane(), idx, u64::from(due));
        }
        None
    }

    /// A table that evicted once is likely to again at its next insert (a
    /// flood does it at every one), and an eviction is a chain of dependent
    /// misses: the victim's entry, its key's bucket, its wheel links. So
    /// start loading the next two victims' now, one step apart: the next
    /// one's buckets (its entry was started one eviction ago), the one
    /// after's entry and links.
    fn prefetch_victims(&self, tier: Tier) {
        let Some((next, after)) = self.wheel.peek_earliest_in(tier.lane()) else {
            return;
        };
        let entry = &self.slots[next as usize].entry;
        for way in 0..entry.ways() {
            self.prefetch_bucket(E::hash(&entry.key(way)));
        }
        if let Some(after) = after {
            prefetch(&self.slots[after as usize]);
        }
    }

    /// Removes the entry at `idx`, if live, and frees it.
    pub fn remove(&mut self, idx: u32) {
        if self.slots[idx as usize].stamp == DEAD {
            return;
        }
        self.unindex(idx);
        self.slots[idx as usize].stamp = DEAD;
        self.wheel.unschedule(idx);
        self.wheel.release(idx);
        self.counters.removals += 1;
    }

    /// Drops `idx` from the index and the live counts.
    fn unindex(&mut self, idx: u32) {
        let Stored { entry, stamp, .. } = self.slots[idx as usize];
        for way in 0..entry.ways() {
            let hash = E::hash(&entry.key(way));
            self.index_remove(hash, encode(idx, way));
        }
        self.live -= 1;
        if Tier::of(stamp) == Tier::Probation {
            self.on_probation -= 1;
        }
    }

    /// Moves the clock to `now` and releases every entry whose deadline, as
    /// `expiry` computes it from the entry and its last refresh, has come.
    /// Returns how many expired.
    pub fn advance(&mut self, now: u32, expiry: impl Fn(&E, u32) -> u32) -> usize {
        let Self {
            buckets,
            mask,
            slots,
            wheel,
            live,
            on_probation,
            counters,
        } = self;
        let mut expired = 0;
        wheel.advance(u64::from(now), |idx| {
            let s = &mut slots[idx as usize];
            let due = expiry(&s.entry, tick(s.stamp));
            if due > now {
                return Fired::Reschedule(u64::from(due));
            }
            if Tier::of(s.stamp) == Tier::Probation {
                *on_probation -= 1;
            }
            s.stamp = DEAD;
            let entry = s.entry;
            for way in 0..entry.ways() {
                let hash = E::hash(&entry.key(way));
                index_remove(buckets, *mask, hash, encode(idx, way));
            }
            *live -= 1;
            expired += 1;
            Fired::Released
        });
        counters.expirations += expired as u64;
        expired
    }

    /// Files every live entry in `start..start + count` under the deadline
    /// `expiry` gives it now, releasing those already due. An owner calls
    /// this, a chunk at a time, after something shortened deadlines without
    /// touching the entries (a Service's `timeoutSeconds` cut): the wheel
    /// only ever moves entries later by itself. Returns where the next
    /// chunk starts, or `None` past the end.
    pub fn refile(
        &mut self,
        start: usize,
        count: usize,
        now: u32,
        expiry: impl Fn(&E, u32) -> u32,
    ) -> Option<usize> {
        let end = start.saturating_add(count).min(self.slots.len());
        for idx in start..end {
            let s = self.slots[idx];
            if s.stamp == DEAD {
                continue;
            }
            let idx = idx as u32;
            let due = expiry(&s.entry, tick(s.stamp));
            self.wheel.unschedule(idx);
            if due <= now {
                self.unindex(idx);
                self.slots[idx as usize].stamp = DEAD;
                self.wheel.release(idx);
                self.counters.expirations += 1;
            } else {
                self.wheel
                    .schedule_in(Tier::of(s.stamp).lane(), idx, u64::from(due));
            }
        }
        (end < self.slots.len()).then_some(end)
    }

    /// Live entries with their index and last refresh.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &E, u32)> + '_ {
        self.iter_slots(0, self.slots.len())
    }

    /// Live entries among slots `start..start + count`, with their index
    /// and last refresh: a table walked a chunk at a time (entries never
    /// move, so a walk in chunks sees every entry that stayed put).
    pub fn iter_slots(
        &self,
        start: usize,
        count: usize,
    ) -> impl Iterator<Item = (u32, &E, u32)> + '_ {
        let end = start.saturating_add(count).min(self.slots.len());
        let start = start.min(end);
        self.slots[start..end]
            .iter()
            .enumerate()
            .filter(|(_, s)| s.stamp != DEAD)
            .map(move |(i, s)| ((start + i) as u32, &s.entry, tick(s.stamp)))
    }

    /// Whether any key of `entry` is in the table.
    pub fn contains_any_key(&self, entry: &E) -> bool {
        (0..entry.ways()).any(|way| {
            let key = entry.key(way);
            self.find(E::hash(&key), &key).is_some()
        })
    }

    /// Files `slot` under `hash`. The load bound guarantees room; `false`
    /// (with the index unchanged) if that were ever not so.
    fn index_insert(&mut self, hash: u64, slot: u32) -> bool {
        let sig = sig_of(hash);
        let home = self.home(hash);
        let mut b = home;
        for _ in 0..self.buckets.len() {
            let bucket = &mut self.buckets[b];
            if let Some(i) = bucket.slot.iter().position(|&s| s == EMPTY) {
                bucket.sig[i] = sig;
                bucket.slot[i] = slot;
                // Count the entry as overflowing past every bucket it skipped.
                let mut o = home;
                while o != b {
                    self.buckets[o].overflow += 1;
                    o = (o + 1) & self.mask;
                }
                return true;
            }
            b = (b + 1) & self.mask;
        }
        false
    }

    fn index_remove(&mut self, hash: u64, slot: u32) {
        index_remove(&mut self.buckets, self.mask, hash, slot);
    }
}

fn index_remove(buckets: &mut [Bucket], mask: usize, hash: u64, slot: u32) {
    let home = hash as usize & mask;
    let mut b = home;
    for _ in 0..buckets.len() {
        let bucket = &mut buckets[b];
        if let Some(i) = bucket.slot.iter().position(|&s| s == slot) {
            bucket.slot[i] = EMPTY;
            // Every bucket passed over on the way here counted this entry
            // as overflowing past it.
            let mut o = home;
            while o != b {
                buckets[o].overflow -= 1;
                o = (o + 1) & mask;
            }
            return;
        }
        if bucket.overflow == 0 {
            return;
        }
        b = (b + 1) & mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::table_hash;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A two-way entry: found by `a` and, when `twin` is set, by `b`.
    #[derive(Clone, Copy, Default, Debug, PartialEq)]
    struct Pair {
        a: u64,
        b: u64,
        twin: bool,
        ttl: u32,
    }

    impl TableEntry for Pair {
        type Key = u64;
        type Align = ();
        const MAX_WAYS: usize = 2;
        fn ways(&self) -> u8 {
            if self.twin { 2 } else { 1 }
        }
        fn key(&self, way: u8) -> u64 {
            if way == 0 { self.a } else { self.b }
        }
        fn hash(key: &u64) -> u64 {
            table_hash(&[*key])
        }
    }

    fn expiry(e: &Pair, last: u32) -> u32 {
        last + e.ttl
    }

    fn pair(a: u64, ttl: u32) -> Pair {
        Pair {
            a,
            b: a | 1 << 63,
            twin: true,
            ttl,
        }
    }

    fn find(t: &Table<Pair>, k: u64) -> Option<Hit> {
        t.find(Pair::hash(&k), &k)
    }

    #[test]
    fn finds_both_ways_and_removes() {
        let mut t = Table::<Pair>::new(100, 0).unwrap();
        let (idx, room) = t.insert(pair(7, 10), 0, 10, expiry).unwrap();
        assert_eq!(room, Room::Free);
        assert_eq!(find(&t, 7), Some(Hit { idx, way: 0 }));
        assert_eq!(find(&t, 7 | 1 << 63), Some(Hit { idx, way: 1 }));
        assert_eq!(find(&t, 8), None);
        t.remove(idx);
        assert_eq!(find(&t, 7), None);
        assert_eq!(find(&t, 7 | 1 << 63), None);
        assert_eq!(t.len(), 0);
        assert_eq!(t.counters().removals, 1);
    }

    #[test]
    fn stale_hints_fall_back_to_find() {
        let mut t = Table::<Pair>::new(4, 0).unwrap();
        let (idx, _) = t.insert(pair(7, 10), 0, 10, expiry).unwrap();
        let h = Pair::hash(&7);
        let hint = t.prefetch_entry(h);
        assert_eq!(t.find_hinted(h, hint, &7), Some(Hit { idx, way: 0 }));
        assert_eq!(t.find_hinted(h, NO_HINT, &7), Some(Hit { idx, way: 0 }));
        // A hint at another key's entry, or at the reply way of a one-way
        // entry, is not taken.
        let single = Pair {
            twin: false,
            ..pair(9, 10)
        };
        let (other, _) = t.insert(single, 0, 10, expiry).unwrap();
        assert_eq!(t.find_hinted(h, other, &7), Some(Hit { idx, way: 0 }));
        let reply = single.b;
        assert_eq!(
            t.find_hinted(Pair::hash(&reply), other | WAY_BIT, &reply),
            None
        );
        // A removed entry, and its slot reused for another key.
        t.remove(idx);
        assert_eq!(t.find_hinted(h, hint, &7), None);
        let (reused, _) = t.insert(pair(8, 10), 0, 10, expiry).unwrap();
        assert_eq!(reused, idx);
        assert_eq!(t.find_hinted(h, hint, &7), None);
        assert_eq!(
            t.find_hinted(Pair::hash(&8), hint, &8),
            Some(Hit { idx, way: 0 })
        );
    }

    #[test]
    fn expires_lazily_rescheduled() {
        let mut t = Table::<Pair>::new(10, 0).unwrap();
        let (idx, _) = t.insert(pair(1, 5), 0, 5, expiry).unwrap();
        t.touch(idx, 4); // now due at 9, still filed at 5
        assert_eq!(t.advance(8, expiry), 0);
        assert!(find(&t, 1).is_some());
        assert_eq!(t.advance(9, expiry), 1);
        assert!(find(&t, 1).is_none());
        assert_eq!(t.counters().expirations, 1);
    }

    #[test]
    fn full_table_prefers_expired_then_evicts_and_counts() {
        let mut t = Table::<Pair>::new(4, 0).unwrap();
        for k in 0..4 {
            t.insert(pair(k, 100), 0, 100, expiry).unwrap();
        }
        // Nothing has expired: the fifth insert evicts a live entry.
        let (_, room) = t.insert(pair(4, 100), 1, 101, expiry).unwrap();
        assert_eq!(room, Room::Evicted);
        assert_eq!(t.len(), 4);
        assert_eq!(t.counters().evictions, 1);
        // A removed entry is free again at once: no eviction needed.
        let hit = find(&t, 2).unwrap();
        t.remove(hit.idx);
        let (_, room) = t.insert(pair(5, 100), 2, 102, expiry).unwrap();
        assert_eq!(room, Room::Free);
        assert_eq!(t.counters().evictions, 1);
    }

    #[test]
    fn full_table_spares_refreshed_entries() {
        let mut t = Table::<Pair>::new(3, 0).unwrap();
        let (a, _) = t.insert(pair(10, 50), 0, 50, expiry).unwrap();
        t.insert(pair(11, 50), 1, 51, expiry).unwrap();
        t.insert(pair(12, 50), 2, 52, expiry).unwrap();
        // `a` is filed earliest but was refreshed: `11` goes instead.
        t.touch(a, 40);
        t.insert(pair(13, 50), 41, 91, expiry).unwrap();
        assert!(find(&t, 10).is_some());
        assert!(find(&t, 11).is_none());
    }

    #[test]
    fn full_table_takes_probation_first() {
        let mut t = Table::<Pair>::new(4, 0).unwrap();
        // Protected entries filed earliest: without tiers they would go first.
        let (a, _) = t.insert(pair(0, 10), 0, 10, expiry).unwrap();
        t.insert(pair(1, 10), 0, 10, expiry).unwrap();
        for k in 2..4 {
            t.insert_in(Tier::Probation, pair(k, 100), 5, 105, expiry)
                .unwrap();
        }
        assert_eq!(t.len_on_probation(), 2);
        for k in 4..20 {
            let (idx, room) = t
                .insert_in(Tier::Probation, pair(k, 100), 6, 106, expiry)
                .unwrap();
            assert_eq!(room, Room::Evicted);
            assert_eq!(t.tier(idx), Tier::Probation);
        }
        assert!(find(&t, 0).is_some() && find(&t, 1).is_some());
        let c = t.counters();
        assert_eq!((c.evictions, c.probation_evictions), (16, 16));
        assert_eq!((c.inserts, c.probation_inserts), (20, 18));
        // Promoted, an entry is spared like the others; once probation is
        // empty a protected entry goes, the earliest.
        let promoted = find(&t, 19).unwrap().idx;
        assert!(t.promote(promoted, 106));
        assert!(!t.promote(promoted, 106), "promoted once");
        assert_eq!(t.tier(promoted), Tier::Protected);
        t.insert(pair(20, 100), 6, 106, expiry).unwrap();
        assert!(find(&t, 19).is_some());
        assert_eq!(t.len_on_probation(), 0);
        t.insert(pair(21, 100), 7, 107, expiry).unwrap();
        assert!(find(&t, 0).is_none() || find(&t, 1).is_none());
        assert!(find(&t, 19).is_some() && find(&t, 20).is_some());
        let c = t.counters();
        assert_eq!(
            (c.evictions, c.probation_evictions, c.promotions),
            (18, 17, 1)
        );
        assert_eq!(t.tier(a), Tier::Protected);
    }

    #[test]
    fn tiers_survive_touch_expiry_and_refile() {
        let mut t = Table::<Pair>::new(8, 0).unwrap();
        let (p, _) = t
            .insert_in(Tier::Probation, pair(1, 10), 0, 10, expiry)
            .unwrap();
        t.touch(p, 5);
        assert_eq!((t.tier(p), t.last_seen(p)), (Tier::Probation, 5));
        // Re-filed on its lane, then expired from it: the count follows.
        assert_eq!(t.refile(0, 8, 6, expiry), None);
        assert_eq!(t.len_on_probation(), 1);
        assert_eq!(t.advance(15, expiry), 1);
        assert_eq!(t.len_on_probation(), 0);
        let (q, _) = t
            .insert_in(Tier::Probation, pair(2, 10), 15, 25, expiry)
            .unwrap();
        t.remove(q);
        assert_eq!(t.len_on_probation(), 0);
        assert!(t.is_empty());
    }

    #[test]
    fn refile_brings_shortened_deadlines_forward() {
        let mut t = Table::<Pair>::new(8, 0).unwrap();
        for k in 0..4 {
            t.insert(pair(k, 1000), 0, 1000, expiry).unwrap();
        }
        // Deadlines cut to 10 s for even keys: the wheel still has them at
        // 1000 until refiled.
        let short = |e: &Pair, last: u32| last + if e.a.is_multiple_of(2) { 10 } else { e.ttl };
        assert_eq!(t.advance(20, short), 0);
        let mut cursor = Some(0);
        while let Some(start) = cursor {
            cursor = t.refile(start, 3, 20, short);
        }
        assert_eq!(t.len(), 2, "expired entries released by the refile");
        assert_eq!(t.counters().expirations, 2);
        assert!(find(&t, 1).is_some() && find(&t, 3).is_some());
        let mut t = Table::<Pair>::new(8, 0).unwrap();
        t.insert(pair(4, 1000), 0, 1000, expiry).unwrap();
        assert_eq!(t.refile(0, 8, 5, short), None);
        assert_eq!(t.advance(9, short), 0);
        assert_eq!(t.advance(10, short), 1, "fires at its new deadline");
    }

    #[test]
    fn memory_per_entry_is_bounded() {
        let t = Table::<Pair>::new(1 << 20, 0).unwrap();
        // 32-byte entry and stamp, 8 bytes of links, 16 of index (two ways).
        assert!(t.bytes_per_entry() <= 56.0, "{}", t.bytes_per_entry());
    }

    #[test]
    fn rejects_bad_capacity() {
        assert_eq!(
            Table::<Pair>::new(0, 0).err(),
            Some(TableError::Capacity(0))
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16),
        Remove(u16),
        Touch(u16),
        Tick(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u16>().prop_map(|k| Op::Insert(k % 512)),
            2 => any::<u16>().prop_map(|k| Op::Remove(k % 512)),
            2 => any::<u16>().prop_map(|k| Op::Touch(k % 512)),
            1 => any::<u8>().prop_map(|d| Op::Tick(d % 20)),
        ]
    }

    #[derive(Debug, Clone)]
    enum TierOp {
        /// A new key on probation (the flood, or a client's first sight).
        Admit(u16),
        Promote(u16),
        Touch(u16),
        Tick(u8),
    }

    fn tier_op() -> impl Strategy<Value = TierOp> {
        prop_oneof![
            6 => any::<u16>().prop_map(|k| TierOp::Admit(k % 1024)),
            2 => any::<u16>().prop_map(|k| TierOp::Promote(k % 1024)),
            1 => any::<u16>().prop_map(|k| TierOp::Touch(k % 1024)),
            1 => any::<u8>().prop_map(|d| TierOp::Tick(d % 8)),
        ]
    }

    proptest! {
        /// Whatever mix of admissions, promotions, refreshes and time: a
        /// protected entry leaves only by expiry or when probation was
        /// empty at the insert that took it; every promotion and eviction
        /// is counted by tier; the tier counts match the entries.
        #[test]
        fn probation_shields_protected(
            ops in proptest::collection::vec(tier_op(), 1..1500),
            cap in 1usize..200,
        ) {
            let ttl = 20;
            let mut t = Table::<Pair>::new(cap, 0).unwrap();
            // key -> (last_seen, protected)
            let mut model: HashMap<u64, (u32, bool)> = HashMap::new();
            let mut now = 0u32;
            let mut promotions = 0u64;
            let mut protected_evictions = 0u64;
            for op in ops {
                match op {
                    TierOp::Admit(k) => {
                        let k = u64::from(k);
                        if find(&t, k).is_some() {
                            continue;
                        }
                        let probation_before = t.len_on_probation();
                        let before = t.counters();
                        t.insert_in(Tier::Probation, pair(k, ttl), now, now + ttl, expiry).unwrap();
                        let after = t.counters();
                        let gone: Vec<u64> = model.keys().copied().filter(|k| find(&t, *k).is_none()).collect();
                        prop_assert!(gone.len() <= 1);
                        for g in gone {
                            let (_, protected) = model.remove(&g).unwrap();
                            if protected {
                                prop_assert_eq!(probation_before, 0, "protected {} evicted past probation", g);
                                protected_evictions += 1;
                            }
                            prop_assert_eq!(after.evictions + after.expirations, before.evictions + before.expirations + 1);
                        }
                        model.insert(k, (now, false));
                    }
                    TierOp::Promote(k) => {
                        let k = u64::from(k);
                        if let Some(h) = find(&t, k) {
                            let was = model[&k];
                            prop_assert_eq!(t.promote(h.idx, was.0 + ttl), !was.1);
                            if !was.1 {
                                promotions += 1;
                            }
                            model.insert(k, (was.0, true));
                        }
                    }
                    TierOp::Touch(k) => {
                        let k = u64::from(k);
                        if let Some(h) = find(&t, k) {
                            t.touch(h.idx, now);
                            model.get_mut(&k).unwrap().0 = now;
                        }
                    }
                    TierOp::Tick(d) => {
                        now += u32::from(d);
                        t.advance(now, expiry);
                        model.retain(|_, (last, _)| *last + ttl > now);
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                prop_assert_eq!(t.len_on_probation(), model.values().filter(|v| !v.1).count());
                for (&k, &(last, protected)) in &model {
                    let h = find(&t, k);
                    prop_assert!(h.is_some(), "lost key {}", k);
                    let idx = h.unwrap().idx;
                    prop_assert_eq!(t.last_seen(idx), last);
                    prop_assert_eq!(t.tier(idx) == Tier::Protected, protected);
                }
                let c = t.counters();
                prop_assert_eq!(c.promotions, promotions);
                prop_assert_eq!(c.evictions - c.probation_evictions, protected_evictions);
            }
        }
    }

    proptest! {
        /// The table agrees with a model map, never exceeds capacity, and
        /// accounts for every entry that leaves.
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 1..2000), cap in 1usize..300) {
            let ttl = 30;
            let mut t = Table::<Pair>::new(cap, 0).unwrap();
            let mut model: HashMap<u64, u32> = HashMap::new(); // key -> last_seen
            let mut now = 0u32;
            for op in ops {
                match op {
                    Op::Insert(k) => {
                        let k = u64::from(k);
                        if find(&t, k).is_none() {
                            let full = model.len() == cap;
                            let before = t.counters();
                            t.insert(pair(k, ttl), now, now + ttl, expiry).unwrap();
                            model.insert(k, now);
                            if full {
                                let after = t.counters();
                                prop_assert_eq!(
                                    after.evictions + after.expirations,
                                    before.evictions + before.expirations + 1
                                );
                                // Drop whatever the table dropped.
                                model.retain(|k, _| find(&t, *k).is_some());
                            }
                        }
                    }
                    Op::Remove(k) => {
                        let k = u64::from(k);
                        if let Some(h) = find(&t, k) {
                            t.remove(h.idx);
                            model.remove(&k);
                        }
                    }
                    Op::Touch(k) => {
                        let k = u64::from(k);
                        if let Some(h) = find(&t, k) {
                            t.touch(h.idx, now);
                            model.insert(k, now);
                        }
                    }
                    Op::Tick(d) => {
                        now += u32::from(d);
                        t.advance(now, expiry);
                        model.retain(|_, last| *last + ttl > now);
                    }
                }
                prop_assert!(t.len() <= cap);
                prop_assert_eq!(t.len(), model.len());
                for (&k, &last) in &model {
                    let h = find(&t, k);
                    prop_assert!(h.is_some(), "lost key {}", k);
                    let h = h.unwrap();
                    prop_assert_eq!(t.last_seen(h.idx), last);
                    prop_assert_eq!(find(&t, k | 1 << 63).map(|h| h.idx), Some(h.idx));
                }
            }
        }
    }
}
