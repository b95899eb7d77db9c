//! When to reload a watched manifest directory.
//!
//! Editors and deploy tools write a file in several steps (truncate, write,
//! rename), each a file event: reloading on the first would read a
//! half-written file. So a reload waits until events have stopped for
//! [`Debounce::settle`]. Settling alone starves a directory that never goes
//! quiet (a controller rewriting endpoints every 50 ms would never be
//! reloaded: measured, gaps of 76 s), so a reload is also due
//! [`Debounce::max_delay`] after the first event it would cover, however
//! busy the directory still is.
//!
//! Time is passed in, so the rule is tested without sleeping.

use std::time::{Duration, Instant};

/// How long events must have stopped before a reload.
pub const SETTLE: Duration = Duration::from_millis(200);
/// The longest a change waits for its reload while events keep coming.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// Pending changes and when they are due; see the module docs.
#[derive(Debug, Clone)]
pub struct Debounce {
    settle: Duration,
    max_delay: Duration,
    /// (first, last) event since the last reload.
    pending: Option<(Instant, Instant)>,
}

impl Default for Debounce {
    fn default() -> Self {
        Self::new(SETTLE, MAX_DELAY)
    }
}

impl Debounce {
    /// `max_delay` below `settle` is raised to it: a reload is never due
    /// before its first event has settled.
    pub fn new(settle: Duration, max_delay: Duration) -> Self {
        Self {
            settle,
            max_delay: max_delay.max(settle),
            pending: None,
        }
    }

    pub fn settle(&self) -> Duration {
        self.settle
    }

    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Records a file event seen at `now`.
    pub fn event(&mut self, now: Instant) {
        self.pending = Some(match self.pending {
            Some((first, last)) => (first, last.max(now)),
            None => (now, now),
        });
    }

    /// Whether a change is waiting for a reload.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// When the pending changes are due: `settle` after the last event, or
    /// `max_delay` after the first, whichever is sooner.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .map(|(first, last)| (last + self.settle).min(first + self.max_delay))
    }

    /// Whether a reload is due at `now`; if so, the pending changes are
    /// taken (the caller reloads, and events from now on wait for the next).
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.deadline().is_some_and(|d| now >= d) {
            self.pending = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_quiet_change_settles_first() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        assert!(!d.take_due(t0));
        d.event(t0);
        assert!(!d.take_due(t0 + 199 * MS));
        d.event(t0 + 150 * MS);
        // Settle restarts from the last event...
        assert!(!d.take_due(t0 + 349 * MS));
        assert!(d.take_due(t0 + 350 * MS));
        // ...and taking it clears it.
        assert!(!d.is_pending());
        assert!(!d.take_due(t0 + 2000 * MS));
    }

    #[test]
    fn endless_churn_is_reloaded_within_max_delay() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        let mut reloads = Vec::new();
        let mut first_pending: Option<Instant> = None;
        let mut worst = Duration::ZERO;
        // An event every 50 ms for 10 s, polled every 10 ms (the control
        // loop polls every 100 ms or sooner).
        for step in 0..1000u32 {
            let now = t0 + step * 10 * MS;
            if step % 5 == 0 {
                d.event(now);
                first_pending.get_or_insert(now);
            }
            if d.take_due(now) {
                reloads.push(now);
                worst = worst.max(now - first_pending.take().unwrap());
            }
        }
        assert!(worst <= MAX_DELAY, "a change waited {worst:?}");
        assert!(reloads.len() >= 8, "{} reloads in 10 s", reloads.len());
        // Never more often than max_delay either: the churn is batched.
        for pair in reloads.windows(2) {
            assert!(pair[1] - pair[0] >= 950 * MS, "{reloads:?}");
        }
    }

    #[test]
    fn deadline_is_the_sooner_of_the_two() {
        let t0 = Instant::now();
        let mut d = Debounce::new(200 * MS, 1000 * MS);
        assert_eq!(d.deadline(), None);
        d.event(t0);
        assert_eq!(d.deadline(), Some(t0 + 200 * MS));
        d.event(t0 + 900 * MS);
        assert_eq!(d.deadline(), Some(t0 + 1000 * MS));
        // An event stamped out of order does not move the last one back.
        d.event(t0 + 100 * MS);
        assert_eq!(d.deadline(), Some(t0 + 1000 * MS));
    }

    #[test]
    fn max_delay_is_at_least_settle() {
        let d = Debounce::new(200 * MS, 50 * MS);
        assert_eq!(d.max_delay(), 200 * MS);
    }
}
