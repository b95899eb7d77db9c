//! The workers' sense of time: whole seconds, read once per burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Seconds since some fixed start.
pub trait Clock {
    fn now(&self) -> u32;
}

/// Seconds since the Unix epoch, counted on the monotonic clock from the
/// wall-clock time it was made at. Wall-clock anchored so that a
/// `last_seen` saved by one process means the same instant to the next
/// (timeouts keep running across a restart, see `state`); monotonic
/// within a process so a clock step never expires or revives entries.
/// `Instant::now` is a vDSO read, not a system call. `u32` seconds last
/// until 2106.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    start: Instant,
    /// Unix seconds at `start`.
    anchor: u32,
}

/// The wall clock now, in whole Unix seconds (0 before 1970).
pub fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

impl MonotonicClock {
    pub fn new() -> Self {
        Self::since(Instant::now())
    }

    /// A clock sharing `start` with others, so every worker agrees.
    pub fn since(start: Instant) -> Self {
        let anchor = unix_now().saturating_sub(start.elapsed().as_secs() as u32);
        Self { start, anchor }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> u32 {
        self.anchor
            .saturating_add(self.start.elapsed().as_secs() as u32)
    }
}

/// A clock tests and benchmarks move by hand.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU32>);

impl ManualClock {
    pub fn new(start: u32) -> Self {
        Self(Arc::new(AtomicU32::new(start)))
    }

    pub fn set(&self, now: u32) {
        self.0.store(now, Ordering::Relaxed);
    }

    pub fn advance(&self, secs: u32) {
        self.0.fetch_add(secs, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}
