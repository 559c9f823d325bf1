//! The poll loop: wait until the earliest ticket is due (per the database), claim due tickets
//! with a lease, poll each under the global concurrency and rate limits, and carry out what
//! [`decide`] makes of the answer. The parts:
//!
//! - `decide.rs`: the one pure decision (finish, reschedule, pause, hold, expiry) and its [`Policy`];
//! - `gate.rs`: the pause gates, a state machine that holds tickets back while the API rejects us
//!   (globally, or one workspace) or is in an outage, and lets one probe through at a time;
//! - `follow.rs`: [`Poller::follow`], one ticket to its end for `deploy --wait`;
//! - `clock_step.rs`: due times left behind by a wall-clock step back are made due again;
//! - this file: [`PollSettings`], the poller as a queue of `crate::claim_loop`, and the IO shell
//!   that executes decisions.
//!
//! A poll holds its ticket's lease for as long as it runs: the lease is extended while the poll
//! waits for the rate limit, for credentials or for the client's own retries.

mod clock_step;
mod decide;
mod follow;
mod gate;
mod history;
mod learned;
mod replay;

pub use decide::{Decision, LEARNED_JITTER, MIN_PAUSE_INTERVAL, Placement, Policy, decide, next_running_poll};
pub use follow::Followed;
pub use gate::{
    Gate, Gates, Hold, OUTAGE_THRESHOLD, Observed, PauseCause, PauseEnds, PauseFlag, PauseReport, PauseScope,
    PauseView, Probes, Verdict,
};
pub use history::{MAX_PLACES, RELEARN_AFTER, RELEARN_EVERY};
pub use learned::{Bounds, LearnedPoll, LearnedSchedule, MAX_SAMPLES, MIN_SAMPLES, OUTLIER_FACTOR};
pub use replay::{Replayed, RunTimes, Workload, replay};

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn};

use crate::claim_loop;
use crate::clock::Clock;
use crate::domain::RowId;
use crate::flink::{FlinkClient, FlinkError, Polled, TicketRef};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::service::Heartbeat;
use crate::store::{Announce, ChangeProbe, Finish, Handoff, Lease, RecordError, Recorder, Store, Ticket};
use history::History;

/// Longest the loop sleeps before looking for new rows: the safety net behind
/// [`CHANGE_PROBE_INTERVAL`] for rows inserted by other programs.
pub const WAKE_INTERVAL: Duration = Duration::from_secs(1);

/// How often the waiting poll loop asks the database whether another connection committed (a
/// `PRAGMA data_version`, no table read): a row inserted by another program is looked at within
/// about 100 ms, at the cost of 10 tiny queries per second, and only while the loop is waiting.
pub const CHANGE_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Longest the loop waits to gather free slots before claiming, while polls are in flight.
pub const CLAIM_WINDOW: Duration = Duration::from_millis(1);

/// `[poll]`: the per-ticket schedule, built and validated by the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollSettings {
    /// First wait between polls.
    pub initial_interval: Duration,
    /// Longest wait between polls.
    pub max_interval: Duration,
    /// Growth factor of the wait.
    pub multiplier: f64,
    /// Default time from enqueue to `expired`.
    pub deadline: Duration,
    /// How long a claim holds a ticket.
    pub lease: Duration,
    /// Place polls by the schedule learned from earlier tickets (`poll.adaptive`).
    pub adaptive: bool,
    /// Aimed-at detection lag of the learned schedule, as a fraction of the run time.
    pub target_lag: f64,
}

/// Everything the poll loop needs.
pub struct Poller {
    /// The database (claims and look-ups).
    pub store: Store,
    /// Group commit for poll results.
    pub recorder: Recorder,
    /// The API client.
    pub flink: FlinkClient,
    /// Source of `now`.
    pub clock: Arc<dyn Clock>,
    /// `[poll]`.
    pub poll: PollSettings,
    /// The global request rate limit.
    pub limiter: Arc<RateLimiter>,
    /// The global concurrency limit.
    pub max_in_flight: usize,
    /// Prefix of this process's lease names (`host:pid:random`).
    pub owner: String,
    /// Woken when a final state wrote webhook deliveries.
    pub deliveries_written: Arc<Notify>,
    /// Counts loop iterations, waits and finished polls; a stuck loop stops counting.
    pub heartbeat: Heartbeat,
    /// Where polls, latencies and final states are counted.
    pub metrics: Arc<Metrics>,
    /// Set while polling is globally paused.
    pub paused: Arc<PauseFlag>,
    policy: Policy,
    /// Plans the webhook deliveries written with each final state.
    announce: Announce,
    gates: Mutex<Gates>,
    /// When the loop last looked for times left behind by a wall-clock step.
    clock_step_checked: Mutex<Option<tokio::time::Instant>>,
    wake: Notify,
    /// Longest the loop sleeps without looking ([`WAKE_INTERVAL`] unless changed).
    wake_interval: Duration,
    /// Asks the database for outside commits while the loop waits; opened at the first wait.
    change_probe: tokio::sync::Mutex<Option<ChangeProbe>>,
    /// The learned schedules of running tickets, by workspace and namespace.
    history: History,
}

impl Poller {
    /// Assembles a poller; see the field docs.
    #[expect(clippy::too_many_arguments, reason = "a constructor naming each collaborator once")]
    pub fn new(
        store: Store,
        recorder: Recorder,
        flink: FlinkClient,
        clock: Arc<dyn Clock>,
        poll: PollSettings,
        announce: Announce,
        limiter: Arc<RateLimiter>,
        max_in_flight: usize,
        owner: String,
    ) -> Poller {
        Poller {
            store,
            recorder,
            announce,
            flink,
            clock,
            policy: Policy::from_settings(&poll),
            poll,
            limiter,
            max_in_flight: max_in_flight.max(1),
            owner,
            deliveries_written: Arc::new(Notify::new()),
            heartbeat: Heartbeat::default(),
            metrics: Arc::new(Metrics::new()),
            paused: Arc::new(PauseFlag::default()),
            gates: Mutex::new(Gates::default()),
            wake: Notify::new(),
            clock_step_checked: Mutex::new(None),
            wake_interval: WAKE_INTERVAL,
            change_probe: tokio::sync::Mutex::new(None),
            history: History::new(Bounds {
                target_lag: poll.target_lag,
                min_interval: poll.initial_interval / 2,
                max_interval: poll.max_interval,
            }),
        }
    }

    /// Sleeps at most `every` without looking for due tickets, instead of [`WAKE_INTERVAL`]
    /// (tests that must tell the change probe from the safety net).
    #[must_use]
    pub fn with_wake_interval(mut self, every: Duration) -> Poller {
        self.wake_interval = every;
        self
    }

    /// Counts progress at least every `every` while waiting (see `crate::service`).
    #[must_use]
    pub fn with_heartbeat(mut self, every: Duration) -> Poller {
        self.heartbeat = Heartbeat::new(every);
        self
    }

    /// Counts into `metrics` instead of a registry of its own.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Poller {
        self.metrics = metrics;
        self
    }

    /// Writes the webhook deliveries of each final state leased to `handoff`, the delivery loop
    /// of this process, which [`Poller::deliveries_written`] wakes to send them at once; other
    /// daemons take them only once that lease lapses. Without it deliveries are written due now
    /// for any delivery loop (a command following its own ticket runs none).
    #[must_use]
    pub fn with_delivery_handoff(mut self, handoff: Handoff) -> Poller {
        self.announce = self.announce.with_handoff(handoff);
        self
    }

    /// Polls until `shutdown` is cancelled (the claim loop of `crate::claim_loop`). In-flight
    /// polls run in `tracker`; the caller waits for them (with a grace period) after this returns.
    pub async fn run_until_cancelled(self: Arc<Self>, shutdown: CancellationToken, tracker: TaskTracker) {
        claim_loop::run_until_cancelled(self, shutdown, tracker).await;
    }

    /// Polls one claimed ticket (unless a paused gate holds it back) and carries out the decision.
    /// `slot` is the ticket's share of `flink.max_in_flight`; it is given back as soon as the API
    /// has answered, so that recording the result never keeps another ticket from being polled.
    async fn handle(&self, ticket: Ticket, lease: &Lease, slot: Option<tokio::sync::OwnedSemaphorePermit>) {
        let now = self.clock.now();
        let admission = self.gates().admit(&ticket.key.workspace, now, self.policy.pause.initial);
        let probes = match admission {
            Ok(probes) => probes,
            Err(hold) => {
                let decision =
                    decide(&ticket, None, &Verdict::Held(hold), now, &self.policy, rand::random::<f64>(), None);
                return self.execute(&ticket, lease, now, decision).await;
            }
        };

        if ticket.polls == 0 {
            info!(
                deadline_at = ticket.deadline_at.map(crate::clock::format_instant).unwrap_or_default(),
                "ticket picked up"
            );
        }
        let poll = async {
            let waited = self.limiter.acquire().await;
            self.metrics.observe_rate_limit_wait(waited);
            if waited > Duration::from_millis(1) {
                debug!(delay_ms = waited.as_millis(), "waited for the rate limit");
            }
            let started = tokio::time::Instant::now();
            let outcome = self
                .flink
                .get_result(
                    ticket.kind,
                    TicketRef {
                        namespace: &ticket.key.namespace,
                        workspace: &ticket.key.workspace,
                        ticket_id: &ticket.key.ticket_id,
                        region: ticket.region.as_deref(),
                    },
                )
                .await;
            (outcome, started.elapsed())
        };
        let (outcome, took) = self.keep_leased(ticket.id, lease, poll).await;
        drop(slot);
        self.metrics.observe_poll(ticket.kind, &outcome, took);
        let now = self.clock.now();
        let observed = {
            let mut gates = self.gates();
            let observed =
                gates.observe(&ticket.key.workspace, outcome.as_ref().map(|_| ()), now, probes, &self.policy.pause);
            self.paused.set(gates.global_cause());
            observed
        };
        if let Some(until) = observed.postpone_workspace_until {
            if let Err(error) = self.store.postpone_workspace(&ticket.key.workspace, until).await {
                warn!(error = %error, "postponing the paused workspace's tickets failed");
            }
        }
        if let Err(FlinkError::RateLimited { .. }) = &outcome {
            self.limiter.slow_down();
        }
        log_outcome(&ticket, &outcome);

        // Only an answer can leave a ticket running; errors and pauses never use the schedule.
        let learned = match &outcome {
            Ok(_) if self.poll.adaptive => {
                self.history.schedule(&self.store, &ticket.key.workspace, &ticket.key.namespace, ticket.kind).await
            }
            _ => None,
        };
        let jitter = rand::random::<f64>();
        let decision =
            decide(&ticket, Some(outcome.as_ref()), &observed.verdict, now, &self.policy, jitter, learned.as_deref());
        self.execute(&ticket, lease, now, decision).await;
    }

    /// Records a decision: the final state with its announcement, or the next poll.
    async fn execute(&self, ticket: &Ticket, lease: &Lease, now: DateTime<Utc>, decision: Decision) {
        let written = match decision {
            Decision::Finish(finish) => self.finish(ticket, lease, now, &finish).await,
            Decision::Reschedule(reschedule) | Decision::Pause { reschedule, .. } | Decision::Hold(reschedule) => {
                self.recorder.record_progress(lease, ticket.id, now, &reschedule).await
            }
        };
        self.heartbeat.beat();
        match written {
            Ok(true) => {}
            Ok(false) => {
                warn!(
                    "lease lost: the ticket changed under us (lease lapsed, cancelled, or given a webhook_url, \
                     which hands it back to be polled again); result not recorded"
                )
            }
            // The recorder logged the failed batch this write was in, once for all its tickets.
            Err(error @ RecordError::Database(_)) => {
                debug!(error = %error, "recording the poll result failed; the ticket will be polled again when its lease lapses")
            }
            Err(error) => {
                error!(error = %error, "recording the poll result failed; the ticket will be polled again when its lease lapses")
            }
        }
    }

    /// The global and per-workspace pauses standing now.
    pub fn pauses(&self) -> PauseReport {
        self.gates().report()
    }

    /// The pause gates, locked.
    fn gates(&self) -> std::sync::MutexGuard<'_, Gates> {
        self.gates.lock().expect("the gates mutex is never poisoned: no code panics holding it")
    }

    /// Runs `work` (one poll) while extending the lease on row `id` every third of a lease, so
    /// that however long the poll takes (rate-limit wait, credential refresh, the client's own
    /// retries) no other claim takes the ticket meanwhile.
    async fn keep_leased<T>(&self, id: RowId, lease: &Lease, work: impl std::future::Future<Output = T>) -> T {
        let every = (self.poll.lease / 3).max(Duration::from_millis(1));
        let renewals = async {
            loop {
                tokio::time::sleep(every).await;
                match self.store.extend_ticket_lease(lease, id, self.clock.now(), self.poll.lease).await {
                    Ok(true) => {}
                    Ok(false) => debug!("the lease was taken back while polling; the result will not be recorded"),
                    Err(error) => warn!(error = %error, "extending the lease of a ticket being polled failed"),
                }
            }
        };
        tokio::pin!(work);
        tokio::pin!(renewals);
        loop {
            tokio::select! {
                biased;
                output = &mut work => return output,
                () = &mut renewals => {}
            }
        }
    }

    async fn finish(
        &self,
        ticket: &Ticket,
        lease: &Lease,
        now: DateTime<Utc>,
        finish: &Finish,
    ) -> Result<bool, RecordError> {
        let written = self.recorder.record_final(lease, ticket, now, finish, self.announce.clone()).await?;
        let Some(deliveries) = written else { return Ok(false) };
        let polls = ticket.polls + i64::from(finish.polled);
        self.metrics.observe_finished(ticket.kind, finish.state, polls);
        if finish.polled {
            self.history.finished(&ticket.key.workspace, &ticket.key.namespace, ticket.kind);
        }
        info!(
            state = %finish.state,
            deployment_id =
                finish.answer.as_ref().and_then(|answer| answer.result.columns().deployment_id).unwrap_or(""),
            polls,
            webhooks = deliveries,
            "ticket finished"
        );
        if deliveries > 0 {
            self.deliveries_written.notify_one();
        }
        Ok(true)
    }
}

/// How many tickets the claim loop claims beyond its free slots (see `claim_loop::Shape::ahead`):
/// twice as many as there are slots; fewer when the rate limit would hold a ticket in hand past
/// half its lease. The loop starts its next claim once half of them are gone, so the half still
/// in hand fills every slot once while that claim waits its turn at the database (on SQLite, for
/// the batch being written and then its own). An item in hand starts after at most the polls in
/// flight and the items ahead of it have gone out, at `rate` requests per second.
fn claim_ahead(max_in_flight: usize, rate: f64, lease: Duration) -> usize {
    let startable = rate * lease.as_secs_f64() / 2.0 - max_in_flight as f64;
    if startable < 1.0 { 0 } else { (2 * max_in_flight).min(startable as usize) }
}

fn log_outcome(ticket: &Ticket, outcome: &Result<Polled, FlinkError>) {
    match outcome {
        Ok(polled) => {
            let result = &polled.answer.result;
            let status = result.ticket_status().map(ToString::to_string).unwrap_or_default();
            debug!(ticket_status = status, request_id = polled.request_id.as_deref().unwrap_or(""), "polled");
            if !result.status_is_documented() && ticket.ticket_status.as_ref() != result.ticket_status() {
                warn!(ticket_status = status, "unknown ticket status; polling on until the deadline");
            }
            if let Some(case) = result.undocumented() {
                warn!(ticket_status = status, case, "the API answered a case it does not document");
            }
        }
        Err(error) => warn!(
            error_code = %error.code(),
            request_id = error.request_id().unwrap_or(""),
            error = %error,
            "poll failed"
        ),
    }
}

/// A standard duration as a chrono one, saturating.
fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// The poll loop's queue: due tickets, each polled by [`Poller::handle`] in its `ticket` span.
impl claim_loop::Queue for Poller {
    type Item = Ticket;
    type Error = RecordError;

    const ROWS: &'static str = "tickets";
    const ROW: &'static str = "ticket";

    fn shape(&self) -> claim_loop::Shape {
        // Claiming for one free slot at a time would cost a read and a write per poll; gathering
        // a quarter of the slots first (for at most CLAIM_WINDOW) makes claims a small share.
        claim_loop::Shape {
            max_in_flight: self.max_in_flight,
            batch: (self.max_in_flight / 4).max(1),
            window: CLAIM_WINDOW,
            wake_interval: self.wake_interval,
            ahead: claim_ahead(self.max_in_flight, self.limiter.configured_rate(), self.poll.lease),
        }
    }

    fn lease_prefix(&self) -> String {
        format!("{}#", self.owner)
    }

    fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    fn wake(&self) -> &Notify {
        &self.wake
    }

    /// Waits for another connection's commit: on SQLite the probe asks `PRAGMA data_version`
    /// every [`CHANGE_PROBE_INTERVAL`], on PostgreSQL it waits for a notification. A probe opened
    /// anew (at the first wait, or after a failure) counts as a change, since it has no baseline
    /// from before the last look; failures close it and the next wait tries again, with
    /// [`WAKE_INTERVAL`] as the safety net meanwhile.
    async fn outside_change(&self) {
        let mut probe = self.change_probe.lock().await;
        loop {
            let Some(open) = probe.as_mut() else {
                tokio::time::sleep(CHANGE_PROBE_INTERVAL).await;
                match self.store.change_probe().await {
                    Ok(opened) => {
                        *probe = Some(opened);
                        return;
                    }
                    Err(error) => {
                        debug!(error = %error, "opening the change probe failed");
                        continue;
                    }
                }
            };
            match open.next_change(CHANGE_PROBE_INTERVAL).await {
                Ok(()) => return,
                Err(error) => {
                    debug!(error = %error, "asking the database for outside changes failed");
                    *probe = None;
                }
            }
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn before_looking(&self, now: DateTime<Utc>) {
        self.pull_back_after_clock_step(now).await;
    }

    async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>, RecordError> {
        Ok(self.store.next_due_at().await?)
    }

    async fn claim(&self, lease: &Lease, now: DateTime<Utc>, limit: u32) -> Result<Vec<Ticket>, RecordError> {
        self.recorder.claim_due_tickets(lease, now, self.poll.lease, limit, self.poll.deadline).await
    }

    fn span(&self, ticket: &Ticket) -> tracing::Span {
        info_span!(
            "ticket",
            ticket_id = %ticket.key.ticket_id,
            kind = %ticket.kind,
            workspace = %ticket.key.workspace,
            row = ticket.id.0
        )
    }

    async fn process(self: Arc<Self>, ticket: Ticket, lease: Lease, slot: tokio::sync::OwnedSemaphorePermit) {
        // Boxed: a poll's future is several KiB, and a small task is cheaper to spawn and move.
        Box::pin(Poller::handle(&self, ticket, &lease, Some(slot))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_claimed_ahead_only_while_the_rate_limit_starts_them_within_half_a_lease() {
        let minute = Duration::from_secs(60);
        // The defaults: 16 slots at 10 requests per second start 300 polls in half a lease.
        assert_eq!(claim_ahead(16, 10.0, minute), 32);
        // Room for part of twice the slots: what the rate starts in time; more room: twice.
        assert_eq!(claim_ahead(16, 1.5, minute), 29);
        assert_eq!(claim_ahead(16, 2.0, minute), 32);
        // A rate with room for the slots and a few more: only those few.
        assert_eq!(claim_ahead(16, 1.0, minute), 14);
        // No room past the polls in flight: nothing is held.
        assert_eq!(claim_ahead(64, 1.0, minute), 0);
        assert_eq!(claim_ahead(30, 1.0, minute), 0);
        // An unlimited rate: twice as many as there are slots.
        assert_eq!(claim_ahead(64, 1_000_000.0, minute), 128);
    }
}
