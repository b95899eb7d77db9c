//! The workers' sense of time: whole seconds, read once per burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Seconds since some fixed start.
pub trait Clock {
    fn now(&self) -> u32;
}

/// Monotonic wall time. `Instant::now` is a vDSO read, not a system call.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    start: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// A clock sharing `start` with others, so every worker agrees.
    pub fn since(start: Instant) -> Self {
        Self { start }
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
        self.start.elapsed().as_secs() as u32
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
