//! The persisted delay schedule: capped exponential backoff with full jitter, computed from a
//! count stored in the row, so that a restart neither resets nor skips it. Pure arithmetic; the
//! random draw is an argument so tests can fix it. (In-process retries that persist nothing use
//! the `backon` crate instead.)

use std::time::Duration;

/// Longest server retry-after hint we obey; a larger one is treated as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// An exponential schedule: the ceiling of the n-th delay is `min(max, initial * multiplier^n)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
    /// Growth factor per step, at least 1.
    pub multiplier: f64,
}

impl Schedule {
    /// The ceiling of delay number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(i32::try_from(attempt).unwrap_or(i32::MAX));
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() { self.max } else { Duration::from_secs_f64(secs) }
    }

    /// Delay number `attempt` with full jitter: `jitter` (uniform in `[0, 1)`) scales the
    /// ceiling, and the result is never below half of `initial`, so a ticket is never polled in
    /// a tight loop.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let floor = (self.initial / 2).min(ceiling);
        ceiling.mul_f64(jitter.clamp(0.0, 1.0)).max(floor)
    }
}

/// The delay to use when the server sent a retry-after hint: the hint wins over the schedule,
/// bounded by [`MAX_RETRY_AFTER`].
pub fn honour_retry_after(scheduled: Duration, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(hint) => hint.min(MAX_RETRY_AFTER),
        None => scheduled,
    }
}

/// The delay before the next webhook attempt when the receiver sent `Retry-After`: the hint
/// replaces the scheduled step, bounded above by [`MAX_RETRY_AFTER`] or by the step itself when
/// the schedule already waits longer, and below by a tenth of the step (at least
/// [`MIN_WEBHOOK_RETRY_AFTER`], never more than the step). A receiver may ask for less than the
/// schedule, but `Retry-After: 0` or a date in the past cannot use up the whole schedule in
/// seconds.
pub fn honour_webhook_retry_after(scheduled: Duration, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(hint) => {
            let floor = (scheduled / 10).max(MIN_WEBHOOK_RETRY_AFTER).min(scheduled);
            hint.clamp(floor, MAX_RETRY_AFTER.max(scheduled))
        }
        None => scheduled,
    }
}

/// Least delay a webhook receiver's `Retry-After` can ask for (unless the step itself is shorter).
pub const MIN_WEBHOOK_RETRY_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: Schedule =
        Schedule { initial: Duration::from_secs(2), max: Duration::from_secs(30), multiplier: 2.0 };

    #[test]
    fn ceiling_grows_exponentially_then_caps() {
        let ceilings: Vec<u64> = (0..7).map(|attempt| SCHEDULE.ceiling(attempt).as_secs()).collect();
        assert_eq!(ceilings, vec![2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(SCHEDULE.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_spans_floor_to_ceiling() {
        assert_eq!(SCHEDULE.delay(2, 0.0), Duration::from_secs(1));
        assert_eq!(SCHEDULE.delay(2, 0.5), Duration::from_secs(4));
        assert_eq!(SCHEDULE.delay(2, 1.0), Duration::from_secs(8));
        assert_eq!(SCHEDULE.delay(2, 7.0), Duration::from_secs(8), "jitter above 1 is clamped");
        for step in 0..=100 {
            let delay = SCHEDULE.delay(10, f64::from(step) / 100.0);
            assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(30), "{delay:?}");
        }
    }

    #[test]
    fn the_same_persisted_count_gives_the_same_ceiling_after_a_restart() {
        // A restart reads the count from the row: the schedule has no other state.
        let before = Schedule { ..SCHEDULE };
        let after = Schedule { ..SCHEDULE };
        for attempt in 0..10 {
            assert_eq!(before.delay(attempt, 0.37), after.delay(attempt, 0.37));
        }
    }

    #[test]
    fn multiplier_of_one_gives_a_steady_cadence() {
        let steady = Schedule { multiplier: 1.0, ..SCHEDULE };
        assert_eq!(steady.ceiling(0), steady.ceiling(50));
    }

    #[test]
    fn retry_after_hint_wins_but_is_bounded() {
        assert_eq!(honour_retry_after(Duration::from_secs(4), None), Duration::from_secs(4));
        assert_eq!(
            honour_retry_after(Duration::from_secs(4), Some(Duration::from_millis(500))),
            Duration::from_millis(500)
        );
        assert_eq!(honour_retry_after(Duration::from_secs(4), Some(Duration::from_secs(86_400))), MAX_RETRY_AFTER);
    }

    #[test]
    fn webhook_retry_after_replaces_the_step_up_to_an_hour_or_the_step() {
        let five_minutes = Duration::from_secs(300);
        assert_eq!(honour_webhook_retry_after(five_minutes, None), five_minutes);
        assert_eq!(honour_webhook_retry_after(five_minutes, Some(Duration::from_secs(60))), Duration::from_secs(60));
        assert_eq!(honour_webhook_retry_after(five_minutes, Some(Duration::from_secs(2))), Duration::from_secs(30));
        assert_eq!(honour_webhook_retry_after(five_minutes, Some(Duration::from_secs(86_400))), MAX_RETRY_AFTER);
        assert_eq!(honour_webhook_retry_after(five_minutes, Some(Duration::ZERO)), Duration::from_secs(30));
        let twenty_hours = Duration::from_secs(72_000);
        assert_eq!(honour_webhook_retry_after(twenty_hours, Some(Duration::from_secs(86_400))), twenty_hours);
    }

    #[test]
    fn retry_after_zero_on_every_attempt_still_spreads_the_default_schedule_over_hours() {
        let schedule = [5, 300, 1800, 7200, 18_000, 36_000, 50_400, 72_000, 86_400].map(Duration::from_secs);
        let total: Duration = schedule.iter().map(|step| honour_webhook_retry_after(*step, Some(Duration::ZERO))).sum();
        assert!(total >= Duration::from_secs(7 * 3600), "{total:?}");
        assert_eq!(
            honour_webhook_retry_after(Duration::from_millis(10), Some(Duration::ZERO)),
            Duration::from_millis(10)
        );
    }
}
