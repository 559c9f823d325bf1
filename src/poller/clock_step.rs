//! Repair after a wall-clock step back: due times computed on the clock before the step lie
//! further ahead than any delay the daemon schedules, and are made due now instead of waiting
//! out the size of the step.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::warn;

use super::{Poller, WAKE_INTERVAL, to_chrono};

impl Poller {
    /// How far ahead of now a pending ticket may legitimately be due: the longest pause (which
    /// also caps retry-after hints and error backoff) or a lease, whichever is longer, plus one
    /// running interval of slack.
    pub fn due_horizon(&self) -> Duration {
        self.policy.pause.max.max(self.policy.errors.max).max(self.poll.lease) + self.poll.max_interval
    }

    /// Makes due now every unleased ticket due beyond [`Poller::due_horizon`]. Only a wall-clock step back
    /// leaves such rows (their times were computed on the clock before the step); without this
    /// they would wait out the size of the step. Deadlines stay as they are: a deadline is a
    /// wall-clock time.
    pub(super) async fn pull_back_after_clock_step(&self, now: DateTime<Utc>) {
        // Once per wake interval is enough, and keeps the look-up off the busy path.
        {
            let mut checked = self
                .clock_step_checked
                .lock()
                .expect("the clock-step mutex is never poisoned: no code panics holding it");
            let monotonic = tokio::time::Instant::now();
            if checked.is_some_and(|at| monotonic.duration_since(at) < WAKE_INTERVAL) {
                return;
            }
            *checked = Some(monotonic);
        }
        let horizon = now + to_chrono(self.due_horizon());
        match self.store.latest_due_at().await {
            Ok(Some(latest)) if latest > horizon => {}
            Ok(_) => return,
            Err(error) => {
                warn!(error = %error, "reading the latest due ticket failed");
                return;
            }
        }
        match self.store.pull_back_due_times(now, horizon).await {
            Ok(0) => {}
            Ok(pulled_back) => warn!(
                pulled_back,
                horizon = %crate::clock::format_instant(horizon),
                "tickets were due later than any delay the daemon schedules (the wall clock stepped back); they are due now"
            ),
            Err(error) => warn!(error = %error, "making tickets due after a wall-clock step failed"),
        }
    }
}
