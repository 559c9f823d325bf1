//! The retention job: on the calendar of `retention.schedule` (a cron expression, seconds first,
//! evaluated in UTC) it deletes finished tickets older than `retention.keep` with their webhook
//! deliveries, [`BATCH`] tickets per short transaction, then checkpoints the WAL.
//!
//! The schedule is a plain tokio loop over the `cron` crate's parser rather than a job scheduler:
//! after every wake-up it compares the wall clock with the next fire time, and it never sleeps
//! longer than [`RECHECK`], so a process that was stopped (SIGSTOP, a suspended VM) or whose
//! clock jumped runs the job once as soon as it is back and then keeps to the calendar. Runs that
//! were missed meanwhile are not replayed one by one: one run catches up with all of them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{Purged, Store};

/// Tickets deleted per transaction: small enough that the write lock is held for milliseconds.
pub const BATCH: u32 = 500;

/// Longest the loop sleeps before looking at the wall clock again.
pub const RECHECK: Duration = Duration::from_secs(30);

/// `[retention]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Age after which finished tickets are deleted.
    pub keep: Duration,
    /// When the clean-up job runs (parsed from a cron expression, seconds first, in UTC).
    pub schedule: cron::Schedule,
}

impl RetentionSettings {
    /// The `[retention]` section as `check-config` prints it.
    pub fn describe(&self) -> String {
        format!(
            "[retention]\nkeep = {:?}\nschedule = {:?}\n",
            crate::duration::format_duration(self.keep),
            self.schedule.source()
        )
    }
}

/// Why a `retention.schedule` expression cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not six or seven fields.
    #[error("{expression:?} has {fields} fields; write six, seconds first (for example \"0 17 3 * * *\")")]
    Fields {
        /// The expression as written.
        expression: String,
        /// How many fields it has.
        fields: usize,
    },
    /// The `cron` parser refused it.
    #[error("{expression:?} is not a cron expression: {reason}")]
    Invalid {
        /// The expression as written.
        expression: String,
        /// What the parser said.
        reason: String,
    },
}

/// Everything the job needs.
pub struct Retention {
    /// The database.
    pub store: Store,
    /// Source of `now` (for the calendar and the age cut-off).
    pub clock: Arc<dyn Clock>,
    /// Finished tickets older than this are deleted.
    pub keep: Duration,
    /// When the job runs.
    pub schedule: cron::Schedule,
    /// Where runs are counted.
    pub metrics: Arc<Metrics>,
    /// The last run, for the operator pages.
    pub log: Arc<RunLog>,
}

/// The retention job's last run, readable by the operator pages.
#[derive(Debug, Default)]
pub struct RunLog(std::sync::Mutex<Option<LastRun>>);

/// How the last run went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    /// When it ended.
    pub at: DateTime<Utc>,
    /// Tickets it deleted, or `None` when it failed.
    pub deleted: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

impl RunLog {
    /// The last run, if there was one since the start.
    pub fn last(&self) -> Option<LastRun> {
        self.0.lock().expect("the run log mutex is never poisoned: no code panics holding it").clone()
    }

    fn record(&self, run: LastRun) {
        *self.0.lock().expect("the run log mutex is never poisoned: no code panics holding it") = Some(run);
    }
}

/// What one run deleted in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Ticket rows deleted.
    pub tickets: u64,
    /// Webhook delivery rows deleted with them.
    pub deliveries: u64,
    /// Transactions used.
    pub batches: u64,
}

impl Retention {
    /// Runs the job on its calendar until `shutdown` is cancelled. A run in progress finishes its
    /// current batch first.
    pub async fn run_until_cancelled(self, shutdown: CancellationToken) {
        loop {
            let Some(next) = next_run(&self.schedule, self.clock.now()) else {
                warn!(schedule = %self.schedule, "retention.schedule has no future run; the retention job stops");
                return;
            };
            loop {
                let now = self.clock.now();
                if now >= next {
                    break;
                }
                let wait = (next - now).to_std().unwrap_or(Duration::ZERO).min(RECHECK);
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            match self.run_once(&shutdown).await {
                Ok(report) => {
                    self.metrics.observe_retention(report.tickets, self.clock.now());
                    self.log.record(LastRun { at: self.clock.now(), deleted: Some(report.tickets), error: None });
                    info!(
                        deleted_tickets = report.tickets,
                        deleted_deliveries = report.deliveries,
                        batches = report.batches,
                        "retention run finished"
                    );
                }
                Err(error) => {
                    self.log.record(LastRun { at: self.clock.now(), deleted: None, error: Some(error.to_string()) });
                    error!(error = %error, "retention run failed; it is tried again at the next scheduled time")
                }
            }
        }
    }

    /// Deletes every finished ticket older than `keep` (batch by batch, yielding the write lock
    /// between batches), then checkpoints the WAL. Stops between batches when `shutdown` is
    /// cancelled.
    pub async fn run_once(&self, shutdown: &CancellationToken) -> Result<RunReport, sqlx::Error> {
        let cutoff = self.clock.now() - chrono::Duration::from_std(self.keep).unwrap_or(chrono::Duration::MAX);
        let mut report = RunReport::default();
        loop {
            let Purged { tickets, deliveries } = self.store.purge_finished_batch(cutoff, BATCH).await?;
            report.tickets += tickets;
            report.deliveries += deliveries;
            report.batches += 1;
            if tickets < u64::from(BATCH) || shutdown.is_cancelled() {
                break;
            }
            // Let the poller's and the delivery loop's writes in between batches.
            tokio::task::yield_now().await;
        }
        if let Err(error) = self.store.checkpoint_and_optimize().await {
            warn!(error = %error, "checkpointing the database after retention failed");
        }
        Ok(report)
    }
}

/// The first time strictly after `now` that `schedule` names, if any. Pure.
pub fn next_run(schedule: &cron::Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.after(&now).next()
}

/// Parses a `retention.schedule` expression: six fields (seconds first) or seven (with years).
pub fn parse_schedule(expression: &str) -> Result<cron::Schedule, ScheduleError> {
    let fields = expression.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(ScheduleError::Fields { expression: expression.to_owned(), fields });
    }
    expression
        .parse::<cron::Schedule>()
        .map_err(|error| ScheduleError::Invalid { expression: expression.to_owned(), reason: error.to_string() })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    #[test]
    fn the_next_run_follows_the_calendar_from_any_instant() {
        let schedule = parse_schedule("0 17 3 * * *").unwrap();
        let before = Utc.with_ymd_and_hms(2026, 11, 28, 1, 0, 0).unwrap();
        assert_eq!(next_run(&schedule, before), Some(Utc.with_ymd_and_hms(2026, 11, 28, 3, 17, 0).unwrap()));
        // Long after a missed run (the process was stopped), the next one is simply the next.
        let after_stall = Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap();
        assert_eq!(next_run(&schedule, after_stall), Some(Utc.with_ymd_and_hms(2026, 12, 1, 3, 17, 0).unwrap()));
    }

    #[test]
    fn expressions_must_have_seconds_and_valid_fields() {
        assert!(parse_schedule("* * * * * *").is_ok());
        assert!(parse_schedule("0 0 4 * * Sun 2030").is_ok());
        assert!(parse_schedule("17 3 * * *").unwrap_err().to_string().contains("5 fields"));
        assert!(parse_schedule("0 61 3 * * *").unwrap_err().to_string().contains("not a cron expression"));
        assert!(parse_schedule("daily").is_err());
    }
}
