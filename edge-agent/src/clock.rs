//! The time the agent gives its readings: the phone's clock, corrected by the cloud's.
//!
//! The cloud refuses readings more than `MAX_CLOCK_AHEAD` (5 minutes) after its own clock, so a
//! phone whose clock runs fast would have every batch dead-lettered. Acks to `ReadingBatchV3`
//! carry the cloud's clock ([`ecs_protocol::TimedAck`]); from each ack that answers a batch this
//! run sent (a forged one names nothing in flight and is never asked), the agent estimates how
//! far its clock is off and, when that is more than [`TOLERANCE_MS`], stamps new readings with
//! the corrected time from then on. The correction is kept in the buffer file, so a restart
//! stamps its first readings right too.
//!
//! A reading's time is fixed when it is buffered: a correction changes only the readings after
//! it, never one already stored (that would change what a resend carries; see `buffer`). A
//! correction that moves the clock back makes the next reading start a new batch.
//!
//! The estimate is the cloud's clock when it published the ack minus the phone's when it arrived,
//! so it is low by the ack's one-way trip (milliseconds to a second): far below the tolerance,
//! which is there so that a clock that is right is never touched.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Offsets within this of the one applied are not corrected.
pub const TOLERANCE_MS: i64 = 2_000;
/// Larger estimates are not believed: a year.
pub const MAX_CORRECTION_MS: i64 = 366 * 24 * 3600 * 1000;

/// The phone's clock plus the correction learned from the cloud. Cheap to clone; clones share
/// the correction.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// A clock corrected by `offset_ms` (what the buffer file kept).
    pub fn with_offset(offset_ms: i64) -> Clock {
        Clock {
            offset_ms: Arc::new(AtomicI64::new(
                offset_ms.clamp(-MAX_CORRECTION_MS, MAX_CORRECTION_MS),
            )),
        }
    }

    /// Now, in Unix milliseconds, corrected.
    pub fn now_ms(&self) -> i64 {
        phone_ms().saturating_add(self.offset_ms())
    }

    /// The correction applied now, in milliseconds (positive: the phone's clock is slow).
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// The cloud said `server_time_ms` in an ack that arrived at the phone's `phone_ms`
    /// (uncorrected). Returns the new correction when it changed it.
    pub fn observe(&self, server_time_ms: i64, phone_ms: i64) -> Option<i64> {
        let estimate = server_time_ms.checked_sub(phone_ms)?;
        if estimate.abs() > MAX_CORRECTION_MS {
            return None;
        }
        let current = self.offset_ms();
        if (estimate - current).abs() <= TOLERANCE_MS {
            return None;
        }
        // A clock within tolerance of the cloud's is left alone entirely.
        let next = if estimate.abs() <= TOLERANCE_MS {
            0
        } else {
            estimate
        };
        if next == current {
            return None;
        }
        self.offset_ms.store(next, Ordering::Relaxed);
        Some(next)
    }
}

/// The phone's own clock, in Unix milliseconds.
pub fn phone_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_right_clock_is_left_alone_and_a_wrong_one_is_corrected_once() {
        let clock = Clock::default();
        assert_eq!(clock.observe(10_000, 9_000), None, "a second's trip");
        assert_eq!(
            clock.observe(10_000, 11_500),
            None,
            "fast, within tolerance"
        );
        // Ten minutes fast.
        assert_eq!(clock.observe(1_000_000, 1_600_000), Some(-600_000));
        assert_eq!(clock.offset_ms(), -600_000);
        assert_eq!(clock.observe(2_000_000, 2_600_050), None, "same again");
        // Then set right (by the phone's owner): the correction goes away.
        assert_eq!(clock.observe(3_000_000, 3_000_100), Some(0));
        assert_eq!(clock.offset_ms(), 0);
    }

    #[test]
    fn absurd_estimates_are_not_believed() {
        let clock = Clock::default();
        assert_eq!(clock.observe(i64::MAX, 0), None);
        assert_eq!(clock.observe(i64::MIN, 1), None);
        assert_eq!(clock.observe(MAX_CORRECTION_MS + 10, 0), None);
        assert_eq!(clock.offset_ms(), 0);
        assert_eq!(Clock::with_offset(i64::MAX).offset_ms(), MAX_CORRECTION_MS);
    }

    #[test]
    fn now_is_the_phone_clock_plus_the_correction() {
        let clock = Clock::with_offset(-60_000);
        let (before, now, after) = (phone_ms(), clock.now_ms(), phone_ms());
        assert!((before - 60_000..=after - 60_000).contains(&now));
    }
}
