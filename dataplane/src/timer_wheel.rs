//! Hierarchical timer wheel over table entry indices.
//!
//! The shape follows tokio's `runtime/time/wheel`: levels of 64 slots, an
//! occupied bitmap per level, `trailing_zeros` to find the next slot, and
//! entries cascading down a level when their coarse slot comes due. One tick
//! is one second; four levels cover 64^4 s (194 days), far past the longest
//! `timeoutSeconds` Kubernetes allows (86400).
//!
//! Entries are `u32` indices into a table owned elsewhere. Each slot is an
//! intrusive doubly linked list threaded through `next`/`prev`, so
//! scheduling costs eight bytes per entry, and insert and removal are O(1).
//! A table hit never touches the wheel: the owner re-checks an entry's real
//! deadline when its slot fires and reschedules it then (see
//! [`TimerWheel::advance`]), which keeps list surgery off the lookup path.
//!
//! The wheel has [`LANES`] lanes, each a full set of levels over the same
//! clock and links: an owner that must tell two kinds of entry apart when it
//! makes room (the affinity table's probation and protected tiers) files
//! each kind in its own lane and takes the earliest entry of the lane it
//! wants, in O(levels). Each slot also knows its tail, and
//! [`TimerWheel::pop_earliest_in`] takes the tail: within one slot (one
//! second at level 0) the entry filed first goes first, so a flood of
//! inserts sharing a second churns through its own newest entries last
//! instead of evicting each newcomer on the next insert.

const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const LEVELS: usize = 4;
/// Independent sets of levels over the same clock and links.
pub const LANES: usize = 2;
/// Furthest a deadline may lie ahead of the wheel's clock, in ticks.
pub const MAX_SPAN: u64 = (1 << (SLOT_BITS * LEVELS as u32)) - 1;
/// End of the free list, and "no entry".
pub const NIL: u32 = u32::MAX;
/// `prev` of a slot's head and `next` of its tail: the flag and the slot's
/// place, `(lane * LEVELS + level) * 64 + slot`. [`NIL`] has the flag too,
/// so "flag set" is "no entry this way".
const END: u32 = 1 << 31;

#[inline(always)]
fn place(lane: usize, level: usize, slot: usize) -> u32 {
    END | ((lane * LEVELS + level) * SLOTS + slot) as u32
}

/// Lane, level and slot of an [`END`] marker.
#[inline(always)]
fn unplace(marker: u32) -> (usize, usize, usize) {
    let p = (marker & !END) as usize;
    (p / (LEVELS * SLOTS), p / SLOTS % LEVELS, p % SLOTS)
}

#[derive(Clone)]
struct Level {
    occupied: u64,
    head: [u32; SLOTS],
    tail: [u32; SLOTS],
}

impl Level {
    const EMPTY: Self = Self {
        occupied: 0,
        head: [NIL; SLOTS],
        tail: [NIL; SLOTS],
    };
}

/// What the owner says about an entry whose slot fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// The entry is gone (expired or already dead): back to the free list.
    Released,
    /// The entry lives on until this tick; schedule it again.
    Reschedule(u64),
}

/// A hierarchical timer wheel of `u32` entry indices, which also hands out
/// free indices: an entry is either free or scheduled, and both lists
/// thread through the same link array.
#[derive(Clone)]
pub struct TimerWheel {
    levels: [[Level; LEVELS]; LANES],
    /// `next[i]` links entry `i` to the following entry of its slot, or of
    /// the free list; the tail of a slot names its slot.
    next: Box<[u32]>,
    /// `prev[i]` links a scheduled entry back to the previous one, or names
    /// its slot when it is the head.
    prev: Box<[u32]>,
    free_head: u32,
    free: usize,
    /// The wheel's clock: every slot before it has been processed.
    elapsed: u64,
    scheduled: usize,
}

impl std::fmt::Debug for TimerWheel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerWheel")
            .field("elapsed", &self.elapsed)
            .field("scheduled", &self.scheduled)
            .finish_non_exhaustive()
    }
}

impl TimerWheel {
    /// A wheel for entries `0..capacity`, all free, with its clock at `now`.
    /// `capacity` must stay below `u32::MAX`.
    pub fn new(capacity: usize, now: u64) -> Self {
        let next: Box<[u32]> = (1..=capacity as u32)
            .map(|i| if i as usize == capacity { NIL } else { i })
            .collect();
        Self {
            levels: [const { [Level::EMPTY; LEVELS] }; LANES],
            next,
            prev: vec![NIL; capacity].into_boxed_slice(),
            free_head: if capacity == 0 { NIL } else { 0 },
            free: capacity,
            elapsed: now,
            scheduled: 0,
        }
    }

    /// Takes a free entry index, if any. O(1).
    pub fn alloc(&mut self) -> Option<u32> {
        let idx = self.free_head;
        if idx == NIL {
            return None;
        }
        self.free_head = self.next[idx as usize];
        self.next[idx as usize] = NIL;
        self.free -= 1;
        Some(idx)
    }

    /// Returns an index that is neither free nor scheduled to the free list.
    pub fn release(&mut self, idx: u32) {
        self.prev[idx as usize] = NIL;
        self.next[idx as usize] = self.free_head;
        self.free_head = idx;
        self.free += 1;
    }

    /// Free entry indices left.
    pub fn free(&self) -> usize {
        self.free
    }

    /// Bytes the wheel spends per entry it can hold.
    pub const BYTES_PER_ENTRY: usize = 2 * std::mem::size_of::<u32>();

    /// The wheel's clock.
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Entries currently scheduled.
    pub fn len(&self) -> usize {
        self.scheduled
    }

    pub fn is_empty(&self) -> bool {
        self.scheduled == 0
    }

    /// Schedules `idx`, which must be neither free nor scheduled, to fire at
    /// tick `when`. A deadline already past fires on the next
    /// [`advance`](Self::advance); one beyond [`MAX_SPAN`] is clamped and
    /// rescheduled when it fires. O(1).
    pub fn schedule(&mut self, idx: u32, when: u64) {
        self.schedule_in(0, idx, when);
    }

    /// [`schedule`](Self::schedule) in lane `lane`.
    pub fn schedule_in(&mut self, lane: usize, idx: u32, when: u64) {
        let when = when.clamp(self.elapsed, self.elapsed + MAX_SPAN);
        let level = level_for(self.elapsed, when);
        let slot = slot_for(when, level);
        let marker = place(lane, level, slot);
        let lvl = &mut self.levels[lane][level];
        let old = std::mem::replace(&mut lvl.head[slot], idx);
        lvl.occupied |= 1 << slot;
        if old == NIL {
            lvl.tail[slot] = idx;
            self.next[idx as usize] = marker;
        } else {
            self.next[idx as usize] = old;
            self.prev[old as usize] = idx;
        }
        self.prev[idx as usize] = marker;
        self.scheduled += 1;
    }

    /// Takes a scheduled entry off the wheel. O(1).
    pub fn unschedule(&mut self, idx: u32) {
        let (p, n) = (self.prev[idx as usize], self.next[idx as usize]);
        if p & END != 0 {
            let (lane, level, slot) = unplace(p);
            let lvl = &mut self.levels[lane][level];
            if n & END != 0 {
                lvl.head[slot] = NIL;
                lvl.occupied &= !(1 << slot);
            } else {
                lvl.head[slot] = n;
            }
        } else {
            self.next[p as usize] = n;
        }
        if n & END != 0 {
            let (lane, level, slot) = unplace(n);
            self.levels[lane][level].tail[slot] = if p & END != 0 { NIL } else { p };
        } else {
            self.prev[n as usize] = p;
        }
        self.next[idx as usize] = NIL;
        self.prev[idx as usize] = NIL;
        self.scheduled -= 1;
    }

    /// Whether lane `lane` has nothing scheduled.
    pub fn lane_is_empty(&self, lane: usize) -> bool {
        self.levels[lane].iter().all(|l| l.occupied == 0)
    }

    /// The earliest occupied slot of any lane: lane, level, slot and the
    /// tick it comes due.
    fn next_due(&self) -> Option<(usize, usize, usize, u64)> {
        (0..LANES)
            .filter_map(|lane| {
                self.next_due_in(lane)
                    .map(|(level, slot, due)| (lane, level, slot, due))
            })
            .min_by_key(|&(.., due)| due)
    }

    /// The tick at which lane `lane`'s earliest occupied slot comes due,
    /// with its place.
    fn next_due_in(&self, lane: usize) -> Option<(usize, usize, u64)> {
        // Lower levels always hold earlier deadlines than higher ones (an
        // entry sits at the level of the highest bit where its deadline
        // differs from the clock), so the first occupied level wins.
        for (level, lvl) in self.levels[lane].iter().enumerate() {
            if lvl.occupied == 0 {
                continue;
            }
            let shift = SLOT_BITS * level as u32;
            let pos = ((self.elapsed >> shift) as usize) & (SLOTS - 1);
            let dist = lvl.occupied.rotate_right(pos as u32).trailing_zeros() as usize;
            let slot = (pos + dist) & (SLOTS - 1);
            let slot_span = 1u64 << shift;
            let level_span = slot_span << SLOT_BITS;
            let level_start = self.elapsed & !(level_span - 1);
            let mut due = level_start + slot as u64 * slot_span;
            if slot < pos {
                due += level_span;
            }
            return Some((level, slot, due.max(self.elapsed)));
        }
        None
    }

    fn take_slot(&mut self, lane: usize, level: usize, slot: usize) -> u32 {
        let lvl = &mut self.levels[lane][level];
        lvl.occupied &= !(1 << slot);
        lvl.tail[slot] = NIL;
        std::mem::replace(&mut lvl.head[slot], NIL)
    }

    /// Moves the clock to `now`, handing every entry whose slot comes due to
    /// `fire`. Entries in coarse slots are handed over too when their slot
    /// comes due: `fire` reports each entry's real deadline and the wheel
    /// files it again at a finer level, in the lane it came from. Returns
    /// how many entries fired.
    pub fn advance(&mut self, now: u64, mut fire: impl FnMut(u32) -> Fired) -> usize {
        let mut fired = 0;
        while let Some((lane, level, slot, due)) = self.next_due() {
            if due > now {
                break;
            }
            self.elapsed = due;
            let mut idx = self.take_slot(lane, level, slot);
            while idx & END == 0 {
                let following = self.next[idx as usize];
                self.scheduled -= 1;
                fired += 1;
                match fire(idx) {
                    Fired::Released => self.release(idx),
                    // A deadline still at or before this slot would loop
                    // forever; the owner reports only future deadlines, and
                    // `schedule` bumps stale ones to the next tick.
                    Fired::Reschedule(when) => self.schedule_in(lane, idx, when.max(due + 1)),
                }
                idx = following;
            }
        }
        self.elapsed = self.elapsed.max(now);
        fired
    }

    /// Unlinks and returns the entry whose slot comes due first, with the
    /// tick that slot ends at (a deadline before it would land in the same
    /// slot again), for owners that must make room before its time. The
    /// caller reuses the entry, schedules it again or releases it. Of the
    /// entries sharing that slot, the one filed there first. O(levels).
    pub fn pop_earliest(&mut self) -> Option<(u32, u64)> {
        let (lane, ..) = self.next_due()?;
        self.pop_earliest_in(lane)
    }

    /// The entries [`pop_earliest_in`](Self::pop_earliest_in) would take
    /// next and after it (if the same slot holds one), left where they are,
    /// the second's links started into the cache: an owner evicting one
    /// entry after another starts loading the victims to come while it
    /// still has this one to finish.
    pub fn peek_earliest_in(&self, lane: usize) -> Option<(u32, Option<u32>)> {
        let (level, slot, _) = self.next_due_in(lane)?;
        let first = self.levels[lane][level].tail[slot];
        let before = *self.prev.get(first as usize)?;
        let second = (before & END == 0).then_some(before);
        if let Some(s) = second
            && let (Some(p), Some(n)) = (self.prev.get(s as usize), self.next.get(s as usize))
        {
            crate::io::prefetch(p);
            crate::io::prefetch(n);
        }
        Some((first, second))
    }

    /// [`pop_earliest`](Self::pop_earliest) among lane `lane`'s entries.
    pub fn pop_earliest_in(&mut self, lane: usize) -> Option<(u32, u64)> {
        let (level, slot, due) = self.next_due_in(lane)?;
        let idx = self.levels[lane][level].tail[slot];
        self.unschedule(idx);
        let slot_span = 1u64 << (SLOT_BITS * level as u32);
        Some((idx, (due & !(slot_span - 1)) + slot_span))
    }
}

/// The level whose slots distinguish `when` from the clock `elapsed`.
fn level_for(elapsed: u64, when: u64) -> usize {
    let masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    let significant = masked.ilog2();
    ((significant / SLOT_BITS) as usize).min(LEVELS - 1)
}

fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (SLOT_BITS * level as u32)) as usize) & (SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A wheel whose entries are all allocated, ready to schedule.
    fn taken(n: usize, now: u64) -> TimerWheel {
        let mut w = TimerWheel::new(n, now);
        for i in 0..n {
            assert_eq!(w.alloc(), Some(i as u32));
        }
        w
    }

    /// Fires everything due by `now`, releasing each entry whose true
    /// deadline has come and rescheduling the rest.
    fn run(wheel: &mut TimerWheel, deadlines: &[u64], now: u64) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        wheel.advance(now, |idx| {
            let d = deadlines[idx as usize];
            if d <= now {
                out.push((idx, d));
                Fired::Released
            } else {
                Fired::Reschedule(d)
            }
        });
        out
    }

    #[test]
    fn fires_at_deadline_across_levels() {
        let deadlines = [5u64, 63, 64, 65, 4095, 4096, 86_400, 300_000];
        let mut w = taken(deadlines.len(), 0);
        for (i, &d) in deadlines.iter().enumerate() {
            w.schedule(i as u32, d);
        }
        let mut seen = Vec::new();
        for t in 0..=300_001u64 {
            // The fire callback must only release entries whose deadline has
            // passed; record the tick at which each one left.
            w.advance(t, |idx| {
                let d = deadlines[idx as usize];
                if d <= t {
                    seen.push((idx, d, t));
                    Fired::Released
                } else {
                    Fired::Reschedule(d)
                }
            });
        }
        assert_eq!(seen.len(), deadlines.len());
        for (_, d, t) in seen {
            assert_eq!(d, t, "entry due at {d} fired at {t}");
        }
        assert!(w.is_empty());
    }

    #[test]
    fn big_jumps_fire_everything_due() {
        let deadlines: Vec<u64> = (0..1000).map(|i| i * 97 % 90_000 + 1).collect();
        let mut w = taken(deadlines.len(), 0);
        for (i, &d) in deadlines.iter().enumerate() {
            w.schedule(i as u32, d);
        }
        let first = run(&mut w, &deadlines, 45_000);
        assert!(first.iter().all(|&(_, d)| d <= 45_000));
        assert_eq!(
            first.len(),
            deadlines.iter().filter(|&&d| d <= 45_000).count()
        );
        let rest = run(&mut w, &deadlines, 90_001);
        assert_eq!(first.len() + rest.len(), 1000);
        assert!(w.is_empty());
    }

    #[test]
    fn lazy_reschedule_moves_entry_later() {
        // An entry refreshed after scheduling reports a later deadline when
        // its slot fires and must fire again exactly then.
        let mut w = taken(1, 0);
        w.schedule(0, 10);
        let mut real = 10u64;
        let mut fired_at = None;
        for t in 0..200 {
            if t == 8 {
                real = 150;
            }
            w.advance(t, |_| {
                if real <= t {
                    fired_at = Some(t);
                    Fired::Released
                } else {
                    Fired::Reschedule(real)
                }
            });
        }
        assert_eq!(fired_at, Some(150));
    }

    #[test]
    fn pop_earliest_takes_soonest() {
        let mut w = TimerWheel::new(4, 100);
        for i in 0..4 {
            assert_eq!(w.alloc(), Some(i));
        }
        assert_eq!(w.alloc(), None);
        w.schedule(0, 5000);
        w.schedule(1, 130);
        w.schedule(2, 101);
        w.schedule(3, 70_000);
        let popped = |w: &mut TimerWheel| w.pop_earliest().map(|(i, _)| i);
        assert_eq!(w.pop_earliest(), Some((2, 102)));
        assert_eq!(popped(&mut w), Some(1));
        assert_eq!(popped(&mut w), Some(0));
        assert_eq!(popped(&mut w), Some(3));
        assert_eq!(popped(&mut w), None);
        w.release(2);
        assert_eq!(w.free(), 1);
        assert_eq!(w.alloc(), Some(2));
    }

    #[test]
    fn unschedule_from_head_middle_and_tail() {
        let mut w = taken(5, 0);
        for i in 0..5 {
            w.schedule(i, 7);
        }
        // List order is 4 3 2 1 0: drop the head, a middle one and the tail.
        w.unschedule(4);
        w.unschedule(2);
        w.unschedule(0);
        assert_eq!(w.len(), 2);
        let mut fired = Vec::new();
        w.advance(7, |i| {
            fired.push(i);
            Fired::Released
        });
        assert_eq!(fired, vec![3, 1]);
        w.schedule(4, 9);
        w.unschedule(4);
        assert!(w.is_empty());
        assert_eq!(w.next_due(), None);
    }

    #[test]
    fn pop_takes_the_first_filed_of_a_slot() {
        let mut w = taken(4, 0);
        for i in 0..4 {
            w.schedule(i, 7);
        }
        let popped = |w: &mut TimerWheel| w.pop_earliest().map(|(i, _)| i);
        assert_eq!(w.peek_earliest_in(0), Some((0, Some(1))));
        assert_eq!(popped(&mut w), Some(0));
        // The tail moves back when it goes, wherever the next pop comes from.
        w.unschedule(1);
        assert_eq!(popped(&mut w), Some(2));
        w.schedule(0, 7);
        assert_eq!(popped(&mut w), Some(3));
        assert_eq!(w.peek_earliest_in(0), Some((0, None)));
        assert_eq!(popped(&mut w), Some(0));
        assert_eq!(w.peek_earliest_in(0), None);
        assert_eq!(popped(&mut w), None);
        assert!(w.is_empty());
    }

    #[test]
    fn lanes_pop_apart_and_fire_together() {
        let mut w = taken(4, 0);
        w.schedule_in(1, 0, 50);
        w.schedule_in(0, 1, 10);
        w.schedule_in(1, 2, 20);
        w.schedule_in(0, 3, 5000);
        assert!(!w.lane_is_empty(1));
        // Lane 1's earliest, though lane 0 holds an earlier one.
        assert_eq!(w.pop_earliest_in(1).map(|(i, _)| i), Some(2));
        assert_eq!(w.pop_earliest().map(|(i, _)| i), Some(1));
        w.schedule_in(1, 2, 20);
        // Advancing fires both lanes in deadline order, and a rescheduled
        // entry stays in its lane.
        let mut order = Vec::new();
        w.advance(60, |i| {
            order.push(i);
            if i == 2 {
                Fired::Reschedule(100)
            } else {
                Fired::Released
            }
        });
        assert_eq!(order, vec![2, 0]);
        assert!(!w.lane_is_empty(1));
        assert_eq!(w.pop_earliest_in(1).map(|(i, _)| i), Some(2));
        assert!(w.lane_is_empty(1));
        assert_eq!(w.pop_earliest_in(0).map(|(i, _)| i), Some(3));
    }

    #[test]
    fn clamps_far_deadlines() {
        let mut w = taken(1, 0);
        w.schedule(0, u64::MAX);
        let mut fired = 0;
        w.advance(MAX_SPAN, |_| {
            fired += 1;
            Fired::Released
        });
        assert_eq!(fired, 1);
    }

    proptest! {
        #[test]
        fn never_early_never_lost(
            start in 0u64..1_000_000,
            offsets in proptest::collection::vec(0u64..200_000, 1..200),
            steps in proptest::collection::vec(1u64..5_000, 1..200),
        ) {
            let deadlines: Vec<u64> = offsets.iter().map(|o| start + o).collect();
            let mut w = taken(deadlines.len(), start);
            for (i, &d) in deadlines.iter().enumerate() {
                w.schedule(i as u32, d);
            }
            let mut now = start;
            let mut done = vec![false; deadlines.len()];
            let mut step = steps.iter().cycle();
            while !w.is_empty() {
                now += step.next().unwrap();
                w.advance(now, |idx| {
                    let d = deadlines[idx as usize];
                    if d <= now {
                        done[idx as usize] = true;
                        Fired::Released
                    } else {
                        Fired::Reschedule(d)
                    }
                });
                // Nothing due by `now` may still be waiting.
                for (i, &d) in deadlines.iter().enumerate() {
                    prop_assert!(d > now || done[i], "entry {} due {} missed at {}", i, d, now);
                }
            }
            prop_assert!(done.iter().all(|&x| x));
        }
    }
}
