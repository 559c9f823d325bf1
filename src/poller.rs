//! The poll loop: wait until the earliest ticket is due (per the database), claim due tickets
//! with a lease, poll each under the global concurrency and rate limits, and record what
//! [`decide`] makes of the answer. [`decide`] is pure; everything with IO is in [`Poller`].
//!
//! Errors about us rather than the ticket (signature, unknown key, clock) pause all polling
//! through a [`Gate`]; access denied pauses only that workspace. A run of transient failures
//! across tickets (network errors, 5xx, throttling, unreadable answers) is an outage: it pauses
//! all polling through the same gate, a circuit breaker. A paused gate lets one probe request
//! through when its pause ends, and opens again on the first answer that is not a failure of the
//! same kind. No transient failure ever fails a ticket; at worst it expires at its deadline.
//!
//! A poll holds its ticket's lease for as long as it runs: the lease is extended while the poll
//! waits for the rate limit, for credentials or for the client's own retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::backoff::{Schedule, honour_retry_after};
use crate::clock::Clock;
use crate::config::{PollConfig, WebhookConfig};
use crate::domain::{RowId, TicketState, TicketStatus};
use crate::flink::{FlinkClient, FlinkError, Polled, TicketRef};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::service::Heartbeat;
use crate::store::{Announce, Finish, Lease, RecordError, Recorder, Reschedule, Store, Ticket};

/// Longest the loop sleeps before looking for new rows (inserted by other programs).
pub const WAKE_INTERVAL: Duration = Duration::from_secs(1);

/// Longest the loop waits to gather free slots before claiming, while polls are in flight.
pub const CLAIM_WINDOW: Duration = Duration::from_millis(1);

/// Transient failures in a row, across tickets, that make an outage and pause all polling.
pub const OUTAGE_THRESHOLD: u32 = 5;

/// Shortest wait of the pause schedule, however short `poll.initial_interval` is: tickets held
/// while polling is paused are put back for at least this long, so that they are not claimed and
/// put back over and over until the probe answers.
pub const MIN_PAUSE_INTERVAL: Duration = Duration::from_millis(100);

/// The schedules [`decide`] draws delays from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Between polls of a ticket that is still running.
    pub running: Schedule,
    /// Between retries after failed calls.
    pub errors: Schedule,
    /// Between probes while polling is paused.
    pub pause: Schedule,
}

impl Policy {
    /// The schedules derived from `[poll]`: running tickets follow it as configured, failed calls
    /// back off twice as fast up to twice the cap, and pauses grow up to ten times the cap,
    /// starting at no less than [`MIN_PAUSE_INTERVAL`].
    pub fn from_config(poll: &PollConfig) -> Policy {
        let pause_initial = poll.initial_interval.max(MIN_PAUSE_INTERVAL);
        Policy {
            running: Schedule { initial: poll.initial_interval, max: poll.max_interval, multiplier: poll.multiplier },
            errors: Schedule { initial: poll.initial_interval, max: poll.max_interval * 2, multiplier: 2.0 },
            pause: Schedule {
                initial: pause_initial,
                max: (poll.max_interval * 10).max(pause_initial),
                multiplier: 2.0,
            },
        }
    }
}

/// Who an error that pauses polling is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseScope {
    /// Our credentials, signature or clock: every ticket waits.
    Global,
    /// Access to this ticket's workspace: that workspace's tickets wait.
    Workspace,
}

/// Why polling is paused globally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseCause {
    /// The API rejects our credentials, signature, clock or request.
    Rejected,
    /// The API is unreachable or failing: network errors, 5xx, throttling, unreadable error pages.
    Unavailable,
    /// The API answers 2xx with bodies we cannot read: it changed, or something in the way did.
    Unreadable,
}

impl PauseCause {
    /// One sentence for `/readyz`.
    pub fn describe(self) -> &'static str {
        match self {
            PauseCause::Rejected => "polling paused: the API rejects our credentials, signature or clock",
            PauseCause::Unavailable => {
                "polling paused: the API is unavailable (network errors, 5xx or throttling); probing until it answers"
            }
            PauseCause::Unreadable => {
                "polling paused: the API's answers cannot be read (has the API changed?); probing until it answers"
            }
        }
    }

    fn code(self) -> u8 {
        match self {
            PauseCause::Rejected => 1,
            PauseCause::Unavailable => 2,
            PauseCause::Unreadable => 3,
        }
    }

    fn from_code(code: u8) -> Option<PauseCause> {
        match code {
            1 => Some(PauseCause::Rejected),
            2 => Some(PauseCause::Unavailable),
            3 => Some(PauseCause::Unreadable),
            _ => None,
        }
    }
}

/// What to do with a polled ticket.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Record the final state.
    Finish(Finish),
    /// Poll again later.
    Reschedule(Reschedule),
    /// The error is not about this ticket: keep it pending, unchanged but for the error columns,
    /// until the pause of `scope` ends.
    Pause {
        /// Who is paused.
        scope: PauseScope,
        /// (code, message) to show on the ticket.
        error: (String, String),
        /// Request ID of the answer.
        request_id: Option<String>,
    },
}

/// Decides what a poll's outcome means for `ticket` at `now`. `jitter` is a uniform draw from
/// `[0, 1)`. Pure: the same inputs always give the same decision.
pub fn decide(
    ticket: &Ticket,
    outcome: Result<&Polled, &FlinkError>,
    now: DateTime<Utc>,
    policy: &Policy,
    jitter: f64,
) -> Decision {
    let deadline = ticket.deadline();
    let past_deadline = deadline.is_some_and(|deadline| now >= deadline);
    let not_after_deadline = |at: DateTime<Utc>| deadline.map_or(at, |deadline| at.min(deadline));
    match outcome {
        Ok(polled) => {
            let answer = &polled.result;
            let finish = |state| {
                Decision::Finish(Finish {
                    state,
                    polled: true,
                    request_id: polled.request_id.clone(),
                    answer: Some(answer.clone()),
                    error: None,
                })
            };
            match (&answer.ticket_status, answer.success) {
                (Some(TicketStatus::Finished), Some(true)) => finish(TicketState::Succeeded),
                (Some(TicketStatus::Finished), Some(false)) | (Some(TicketStatus::Failed), _) => {
                    finish(TicketState::Failed)
                }
                // Undocumented: FINISHED without `success`. A deployment ID and no validation
                // issues can only mean it deployed.
                (Some(TicketStatus::Finished), None)
                    if answer.deployment_id.is_some() && answer.validation_errors.is_empty() =>
                {
                    finish(TicketState::Succeeded)
                }
                (Some(TicketStatus::Finished), None) => finish(TicketState::Failed),
                _ if past_deadline => finish(TicketState::Expired),
                _ => {
                    let delay = policy.running.delay(streak(ticket.running_streak), jitter);
                    Decision::Reschedule(Reschedule {
                        next_poll_at: not_after_deadline(now + to_chrono(delay)),
                        running_streak: ticket.running_streak.saturating_add(1),
                        error_streak: 0,
                        polled: true,
                        request_id: polled.request_id.clone(),
                        answer: Some(answer.clone()),
                        error: None,
                    })
                }
            }
        }
        Err(error) => {
            let recorded = (error.code(), error.message());
            let request_id = error.request_id().map(str::to_owned);
            let fail = |state| {
                Decision::Finish(Finish {
                    state,
                    polled: true,
                    request_id: request_id.clone(),
                    answer: None,
                    error: Some(recorded.clone()),
                })
            };
            match error {
                FlinkError::Ticket(_) => fail(TicketState::Failed),
                _ if past_deadline => fail(TicketState::Expired),
                FlinkError::Credentials(_) | FlinkError::Config(_) => {
                    Decision::Pause { scope: PauseScope::Global, error: recorded, request_id }
                }
                FlinkError::AccessDenied(_) => {
                    Decision::Pause { scope: PauseScope::Workspace, error: recorded, request_id }
                }
                // Transient, however long it lasts: never the ticket's failure.
                FlinkError::Network(_)
                | FlinkError::Decode(_)
                | FlinkError::Transient(_)
                | FlinkError::RateLimited { .. } => {
                    let scheduled = policy.errors.delay(streak(ticket.error_streak), jitter);
                    let hint = match error {
                        FlinkError::RateLimited { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    // A hint never pushes a poll past the longest pause: times beyond that are
                    // taken for the product of a wall-clock step back and made due again.
                    let delay = honour_retry_after(scheduled, hint).min(policy.pause.max);
                    Decision::Reschedule(Reschedule {
                        next_poll_at: not_after_deadline(now + to_chrono(delay)),
                        running_streak: ticket.running_streak,
                        error_streak: ticket.error_streak.saturating_add(1),
                        polled: true,
                        request_id,
                        answer: None,
                        error: Some(recorded),
                    })
                }
            }
        }
    }
}

/// A pause switch: closed while the API rejects us, with one probe allowed through each time a
/// pause ends.
#[derive(Debug, Default)]
pub struct Gate {
    paused: Option<PauseState>,
}

#[derive(Debug, Clone)]
struct PauseState {
    /// When the pause began, for the log line that ends it.
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    streak: u32,
    probing: bool,
    /// (code, message) of the rejection, shown on the tickets that wait.
    reason: (String, String),
    /// What the last rejection was.
    cause: PauseCause,
}

/// A ticket must wait for a paused gate.
#[derive(Debug, Clone, PartialEq)]
struct Hold {
    until: DateTime<Utc>,
    reason: (String, String),
}

impl Gate {
    /// Until when and why a ticket must wait, or `None` if it may go.
    fn hold(&self, now: DateTime<Utc>, probe_hold: Duration) -> Option<Hold> {
        let pause = self.paused.as_ref()?;
        let until = if now < pause.until {
            pause.until
        } else if pause.probing {
            now + to_chrono(probe_hold)
        } else {
            return None;
        };
        Some(Hold { until, reason: pause.reason.clone() })
    }

    /// Marks a probe as started if the gate is paused; returns whether this request is the probe.
    fn start_probe(&mut self) -> bool {
        match &mut self.paused {
            Some(pause) => {
                pause.probing = true;
                true
            }
            None => false,
        }
    }

    /// A call went through: opens the gate. Returns the cause and start of the pause it ends.
    fn accepted(&mut self) -> Option<(PauseCause, DateTime<Utc>)> {
        self.paused.take().map(|pause| (pause.cause, pause.since))
    }

    /// A call was rejected for `reason` (code, message) because of `cause`. Returns the pause end
    /// if this starts a new pause (to log it once).
    fn rejected(
        &mut self,
        now: DateTime<Utc>,
        schedule: &Schedule,
        probe: bool,
        reason: (String, String),
        cause: PauseCause,
    ) -> Option<DateTime<Utc>> {
        match &mut self.paused {
            None => {
                let until = now + to_chrono(schedule.ceiling(0));
                self.paused = Some(PauseState { since: now, until, streak: 0, probing: false, reason, cause });
                Some(until)
            }
            Some(pause) if probe => {
                pause.streak = pause.streak.saturating_add(1);
                pause.until = now + to_chrono(schedule.ceiling(pause.streak));
                pause.probing = false;
                pause.reason = reason;
                pause.cause = cause;
                None
            }
            Some(_) => None,
        }
    }

    /// The probe neither confirmed nor refuted the pause (a network error): let another go.
    fn inconclusive(&mut self, probe: bool) {
        if let Some(pause) = &mut self.paused {
            if probe {
                pause.probing = false;
            }
        }
    }

    /// Current pause end, if paused.
    pub fn paused_until(&self) -> Option<DateTime<Utc>> {
        self.paused.as_ref().map(|pause| pause.until)
    }
}

/// The global gate and one per workspace.
#[derive(Debug, Default)]
pub struct Gates {
    global: Gate,
    workspaces: HashMap<String, Gate>,
    /// Transient failures in a row across all tickets; any answer that is not one resets it.
    transient_in_a_row: u32,
}

/// Whether and why polling is globally paused, readable from outside (readiness, metrics).
#[derive(Debug, Default)]
pub struct PauseFlag(std::sync::atomic::AtomicU8);

impl PauseFlag {
    /// Whether every ticket is paused (the API rejects our requests, or is unavailable).
    pub fn is_paused(&self) -> bool {
        self.cause().is_some()
    }

    /// Why every ticket is paused; `None` while polling runs.
    pub fn cause(&self) -> Option<PauseCause> {
        PauseCause::from_code(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, cause: Option<PauseCause>) {
        self.0.store(cause.map_or(0, PauseCause::code), Ordering::Relaxed);
    }
}

/// How [`Poller::follow`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Followed {
    /// The ticket reached a final state (this row).
    Final(Ticket),
    /// Polling is paused globally: the API refuses our credentials, signature or clock. The
    /// ticket stays pending (this row) for a later run.
    Paused(Ticket),
    /// Cancelled before the ticket finished; it stays pending (this row).
    Cancelled(Ticket),
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
    pub poll: PollConfig,
    /// `[webhook]`, to plan deliveries with each final state.
    pub webhook: Arc<WebhookConfig>,
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
    announce: Announce,
    gates: Mutex<Gates>,
    /// When the loop last looked for times left behind by a wall-clock step.
    clock_step_checked: Mutex<Option<tokio::time::Instant>>,
    wake: Notify,
}

impl Poller {
    /// Assembles a poller; see the field docs.
    #[expect(clippy::too_many_arguments, reason = "a constructor naming each collaborator once")]
    pub fn new(
        store: Store,
        recorder: Recorder,
        flink: FlinkClient,
        clock: Arc<dyn Clock>,
        poll: PollConfig,
        webhook: Arc<WebhookConfig>,
        limiter: Arc<RateLimiter>,
        max_in_flight: usize,
        owner: String,
    ) -> Poller {
        let plan_config = Arc::clone(&webhook);
        Poller {
            store,
            recorder,
            announce: Arc::new(move |row: &Ticket| crate::webhook::plan(row, &plan_config)),
            flink,
            clock,
            policy: Policy::from_config(&poll),
            poll,
            webhook,
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
        }
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

    /// Polls until `shutdown` is cancelled. In-flight polls run in `tracker`; the caller waits
    /// for them (with a grace period) after this returns.
    pub async fn run_until_cancelled(self: Arc<Self>, shutdown: CancellationToken, tracker: TaskTracker) {
        let semaphore = Arc::new(Semaphore::new(self.max_in_flight));
        // Claiming for one free slot at a time would cost a read and a write per poll; gathering
        // a quarter of the slots first (for at most CLAIM_WINDOW) makes claims a small share.
        let batch = (self.max_in_flight / 4).max(1);
        let mut claims: u64 = 0;
        let mut more_due = false;
        loop {
            // While every slot is busy (a slow API) the loop is waiting, not stuck: the heartbeat
            // keeps counting progress until a slot frees up.
            let mut permits = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                permit = self.heartbeat.acquire(&semaphore) => permit,
            };
            if permits.num_permits() < batch && semaphore.available_permits() + 1 < self.max_in_flight {
                let window = tokio::time::sleep(CLAIM_WINDOW);
                tokio::pin!(window);
                while permits.num_permits() < batch {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break,
                        permit = semaphore.clone().acquire_owned() => {
                            permits.merge(permit.expect("the semaphore is never closed"));
                        }
                        () = &mut window => break,
                    }
                }
            }
            if let Ok(rest) = semaphore
                .clone()
                .try_acquire_many_owned(u32::try_from(semaphore.available_permits()).unwrap_or(u32::MAX))
            {
                permits.merge(rest);
            }
            if !more_due && !self.wait_until_due(&shutdown).await {
                break;
            }
            if shutdown.is_cancelled() {
                break;
            }
            claims += 1;
            let lease = Lease(format!("{}#{claims}", self.owner));
            let wanted = permits.num_permits();
            let limit = u32::try_from(wanted).unwrap_or(u32::MAX);
            let now = self.clock.now();
            match self.store.claim_due_tickets(&lease, now, self.poll.lease, limit, self.poll.deadline).await {
                Ok(tickets) => {
                    self.heartbeat.beat();
                    // After a full claim there are probably more due rows: claim again without
                    // looking first.
                    more_due = tickets.len() == wanted;
                    for ticket in tickets {
                        let permit = permits.split(1).expect("one permit was gathered per claimed row");
                        let poller = Arc::clone(&self);
                        let lease = lease.clone();
                        let span = info_span!("ticket", ticket_id = %ticket.key.ticket_id, workspace = %ticket.key.workspace, row = ticket.id.0);
                        tracker.spawn(
                            async move {
                                poller.handle(ticket, &lease, Some(permit)).await;
                                poller.wake.notify_one();
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(error) => {
                    more_due = false;
                    error!(error = %error, "claiming due tickets failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = self.heartbeat.sleep(WAKE_INTERVAL) => {}
                    }
                }
            }
        }
    }

    /// Polls ticket row `id` until it is final, claiming each poll with a lease exactly as the loop
    /// does, so that it cooperates with a daemon on the same database: whoever claims a due poll
    /// makes it, and a final state written by either ends the wait.
    pub async fn follow(&self, id: RowId, shutdown: &CancellationToken) -> Result<Followed, sqlx::Error> {
        let mut claims: u64 = 0;
        loop {
            let row = self.store.ticket(id).await?.ok_or(sqlx::Error::RowNotFound)?;
            if !row.is_pending() {
                return Ok(Followed::Final(row));
            }
            if shutdown.is_cancelled() {
                return Ok(Followed::Cancelled(row));
            }
            let now = self.clock.now();
            claims += 1;
            let lease = Lease(format!("{}#follow-{claims}", self.owner));
            if let Some(ticket) = self.store.claim_ticket(&lease, id, now, self.poll.lease, self.poll.deadline).await? {
                let span = info_span!("ticket", ticket_id = %ticket.key.ticket_id, workspace = %ticket.key.workspace, row = ticket.id.0);
                self.handle(ticket, &lease, None).instrument(span).await;
                // An outage is waited out (the ticket's deadline bounds it); a rejection needs a
                // person.
                if self.paused.cause() == Some(PauseCause::Rejected) {
                    let row = self.store.ticket(id).await?.ok_or(sqlx::Error::RowNotFound)?;
                    if row.is_pending() {
                        return Ok(Followed::Paused(row));
                    }
                }
                continue;
            }
            // Not due yet, or another process holds it: look again when it is due, and at least
            // every WAKE_INTERVAL to notice a final state written by someone else.
            let due = row.next_poll_at;
            let wait = (due - now).to_std().unwrap_or(Duration::ZERO).clamp(Duration::from_millis(10), WAKE_INTERVAL);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(Followed::Cancelled(row)),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Waits until a pending ticket is due. Returns `false` when cancelled first.
    async fn wait_until_due(&self, shutdown: &CancellationToken) -> bool {
        loop {
            self.heartbeat.beat();
            let now = self.clock.now();
            self.pull_back_after_clock_step(now).await;
            let wait = match self.store.next_due_at().await {
                Ok(Some(due)) if due <= now => return true,
                Ok(Some(due)) => (due - now).to_std().unwrap_or(Duration::ZERO).min(WAKE_INTERVAL),
                Ok(None) => WAKE_INTERVAL,
                Err(error) => {
                    error!(error = %error, "reading the next due ticket failed");
                    WAKE_INTERVAL
                }
            }
            .min(self.heartbeat.every);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return false,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

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
    async fn pull_back_after_clock_step(&self, now: DateTime<Utc>) {
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

    /// Polls one claimed ticket and records the result.
    /// `slot` is the ticket's share of `flink.max_in_flight`; it is given back as soon as the API
    /// has answered, so that recording the result never keeps another ticket from being polled.
    async fn handle(&self, ticket: Ticket, lease: &Lease, slot: Option<tokio::sync::OwnedSemaphorePermit>) {
        let now = self.clock.now();
        let probe_hold = self.policy.pause.initial;
        let admission = {
            let mut gates = self.gates.lock().expect("the gates mutex is never poisoned: no code panics holding it");
            let hold = gates
                .global
                .hold(now, probe_hold)
                .or_else(|| gates.workspaces.get(&ticket.key.workspace).and_then(|gate| gate.hold(now, probe_hold)));
            match hold {
                Some(hold) => Err(hold),
                None => {
                    let global_probe = gates.global.start_probe();
                    let workspace_probe =
                        gates.workspaces.get_mut(&ticket.key.workspace).is_some_and(Gate::start_probe);
                    Ok((global_probe, workspace_probe))
                }
            }
        };
        let (global_probe, workspace_probe) = match admission {
            Ok(probes) => probes,
            Err(hold) => return self.hold(&ticket, lease, now, hold).await,
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
                .get_deploy_result(TicketRef {
                    namespace: &ticket.key.namespace,
                    workspace: &ticket.key.workspace,
                    ticket_id: &ticket.key.ticket_id,
                    region: ticket.region.as_deref(),
                })
                .await;
            (outcome, started.elapsed())
        };
        let (outcome, took) = self.keep_leased(ticket.id, lease, poll).await;
        drop(slot);
        self.metrics.observe_poll(&outcome, took);
        let now = self.clock.now();
        self.update_gates(&ticket, &outcome, now, global_probe, workspace_probe).await;
        if let Err(FlinkError::RateLimited { .. }) = &outcome {
            self.limiter.slow_down();
        }
        log_outcome(&ticket, &outcome);

        let decision = decide(&ticket, outcome.as_ref(), now, &self.policy, rand::random::<f64>());
        let written = match decision {
            Decision::Finish(finish) => self.finish(&ticket, lease, now, &finish).await,
            Decision::Reschedule(reschedule) => self.recorder.record_progress(lease, ticket.id, now, &reschedule).await,
            Decision::Pause { scope, error, request_id } => {
                let until = {
                    let gates =
                        self.gates.lock().expect("the gates mutex is never poisoned: no code panics holding it");
                    match scope {
                        PauseScope::Global => gates.global.paused_until(),
                        PauseScope::Workspace => {
                            gates.workspaces.get(&ticket.key.workspace).and_then(Gate::paused_until)
                        }
                    }
                }
                .unwrap_or(now + to_chrono(self.policy.pause.initial));
                let deadline = ticket.deadline().unwrap_or(until);
                let reschedule = Reschedule {
                    next_poll_at: until.min(deadline),
                    running_streak: ticket.running_streak,
                    error_streak: ticket.error_streak,
                    polled: true,
                    request_id,
                    answer: None,
                    error: Some(error),
                };
                self.recorder.record_progress(lease, ticket.id, now, &reschedule).await
            }
        };
        self.heartbeat.beat();
        match written {
            Ok(true) => {}
            Ok(false) => warn!("ticket changed under us (lease lapsed, or cancelled); result not recorded"),
            Err(error) => {
                error!(error = %error, "recording the poll result failed; the ticket will be polled again when its lease lapses")
            }
        }
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

    /// Keeps a ticket waiting for a paused gate, or expires it if its deadline passed; either
    /// way the ticket shows why.
    async fn hold(&self, ticket: &Ticket, lease: &Lease, now: DateTime<Utc>, hold: Hold) {
        let Hold { until, reason } = hold;
        let deadline = ticket.deadline();
        let result = if deadline.is_some_and(|deadline| now >= deadline) {
            let finish = Finish {
                state: TicketState::Expired,
                polled: false,
                request_id: None,
                answer: None,
                error: Some(reason),
            };
            self.finish(ticket, lease, now, &finish).await
        } else {
            let reschedule = Reschedule {
                next_poll_at: deadline.map_or(until, |deadline| until.min(deadline)),
                running_streak: ticket.running_streak,
                error_streak: ticket.error_streak,
                polled: false,
                request_id: None,
                answer: None,
                error: Some(reason),
            };
            self.recorder.record_progress(lease, ticket.id, now, &reschedule).await
        };
        if let Err(error) = result {
            error!(error = %error, "recording a paused ticket failed");
        }
    }

    async fn finish(
        &self,
        ticket: &Ticket,
        lease: &Lease,
        now: DateTime<Utc>,
        finish: &Finish,
    ) -> Result<bool, RecordError> {
        let written = self.recorder.record_final(lease, ticket.id, now, finish, Arc::clone(&self.announce)).await?;
        let Some(deliveries) = written else { return Ok(false) };
        self.metrics.observe_finished(finish.state);
        info!(
            state = %finish.state,
            deployment_id = finish.answer.as_ref().and_then(|answer| answer.deployment_id.as_deref()).unwrap_or(""),
            polls = ticket.polls + i64::from(finish.polled),
            webhooks = deliveries,
            "ticket finished"
        );
        if deliveries > 0 {
            self.deliveries_written.notify_one();
        }
        Ok(true)
    }

    async fn update_gates(
        &self,
        ticket: &Ticket,
        outcome: &Result<Polled, FlinkError>,
        now: DateTime<Utc>,
        global_probe: bool,
        workspace_probe: bool,
    ) {
        let postpone_workspace_until = {
            let mut gates = self.gates.lock().expect("the gates mutex is never poisoned: no code panics holding it");
            let probes = Probes { global: global_probe, workspace: workspace_probe };
            let postpone =
                gates.observe(&ticket.key.workspace, outcome.as_ref().map(|_| ()), now, probes, &self.policy.pause);
            self.paused.set(gates.global.paused.as_ref().map(|pause| pause.cause));
            postpone
        };
        if let Some(until) = postpone_workspace_until {
            if let Err(error) = self.store.postpone_workspace(&ticket.key.workspace, until).await {
                warn!(error = %error, "postponing the paused workspace's tickets failed");
            }
        }
    }
}

/// Whether a poll was let through as the probe of the global gate and of its workspace's gate.
#[derive(Debug, Clone, Copy, Default)]
struct Probes {
    global: bool,
    workspace: bool,
}

impl Gates {
    /// Moves the gates on what a poll of a ticket in `workspace` came to. Returns the end of the
    /// workspace's pause when that workspace's tickets are to be postponed.
    fn observe(
        &mut self,
        workspace: &str,
        outcome: Result<(), &FlinkError>,
        now: DateTime<Utc>,
        probes: Probes,
        pause_schedule: &Schedule,
    ) -> Option<DateTime<Utc>> {
        let Probes { global: global_probe, workspace: workspace_probe } = probes;
        let Gates { global, workspaces, transient_in_a_row } = self;
        let mut postpone_workspace_until = None;
        match outcome {
            // Raised here before any request was sent (a region, header value or path we
            // cannot use): it says nothing about whether the API accepts us.
            Err(error @ FlinkError::Ticket(_)) if !error.answered() => {
                global.inconclusive(global_probe);
                if let Some(gate) = workspaces.get_mut(workspace) {
                    gate.inconclusive(workspace_probe);
                }
            }
            Ok(_) | Err(FlinkError::Ticket(_)) => {
                *transient_in_a_row = 0;
                if let Some((cause, since)) = global.accepted() {
                    let paused_ms = (now - since).num_milliseconds().max(0);
                    match cause {
                        PauseCause::Rejected => {
                            info!(paused_ms, "polling resumed: the API accepted our requests again");
                        }
                        PauseCause::Unavailable | PauseCause::Unreadable => {
                            info!(paused_ms, "polling resumed: the API answers again");
                        }
                    }
                }
                if workspaces.get_mut(workspace).is_some_and(|gate| gate.accepted().is_some()) {
                    info!("workspace access restored; its tickets are polled again");
                }
            }
            Err(error @ (FlinkError::Credentials(_) | FlinkError::Config(_))) => {
                if error.answered() {
                    *transient_in_a_row = 0;
                }
                let reason = (error.code(), error.message());
                if let Some(until) = global.rejected(now, pause_schedule, global_probe, reason, PauseCause::Rejected) {
                    error!(
                        error_code = %error.code(),
                        request_id = error.request_id().unwrap_or(""),
                        error = %error,
                        paused_until = %crate::clock::format_instant(until),
                        "polling paused: the API rejects our requests (credentials, signature, clock or request); \
                         no ticket is failed for this, and polling resumes once a request is accepted"
                    );
                }
                if let Some(gate) = workspaces.get_mut(workspace) {
                    gate.inconclusive(workspace_probe);
                }
            }
            Err(error @ FlinkError::AccessDenied(_)) => {
                *transient_in_a_row = 0;
                if let Some((cause, _)) = global.accepted() {
                    info!(?cause, "polling resumed: the API answers again");
                }
                let gate = workspaces.entry(workspace.to_owned()).or_default();
                let reason = (error.code(), error.message());
                if let Some(until) = gate.rejected(now, pause_schedule, workspace_probe, reason, PauseCause::Rejected) {
                    error!(
                        error_code = %error.code(),
                        request_id = error.request_id().unwrap_or(""),
                        error = %error,
                        paused_until = %crate::clock::format_instant(until),
                        "workspace paused: access denied; its tickets wait until access is granted or their deadline"
                    );
                }
                postpone_workspace_until = gate.paused_until();
            }
            Err(
                error @ (FlinkError::Network(_)
                | FlinkError::Transient(_)
                | FlinkError::RateLimited { .. }
                | FlinkError::Decode(_)),
            ) => {
                *transient_in_a_row = transient_in_a_row.saturating_add(1);
                if let Some(gate) = workspaces.get_mut(workspace) {
                    gate.inconclusive(workspace_probe);
                }
                // A failed probe keeps the pause, growing; enough failures in a row start one.
                if global_probe || *transient_in_a_row >= OUTAGE_THRESHOLD {
                    let cause = match error {
                        FlinkError::Decode(_) => PauseCause::Unreadable,
                        _ => PauseCause::Unavailable,
                    };
                    let reason = (error.code(), error.message());
                    if let Some(until) = global.rejected(now, pause_schedule, global_probe, reason, cause) {
                        log_outage(error, cause, *transient_in_a_row, until);
                    }
                }
            }
        }
        postpone_workspace_until
    }
}

fn log_outcome(ticket: &Ticket, outcome: &Result<Polled, FlinkError>) {
    match outcome {
        Ok(polled) => {
            let status = polled.result.ticket_status.as_ref().map(ToString::to_string).unwrap_or_default();
            debug!(ticket_status = status, request_id = polled.request_id.as_deref().unwrap_or(""), "polled");
            let unknown = !matches!(
                polled.result.ticket_status,
                Some(TicketStatus::Init | TicketStatus::Executing | TicketStatus::Finished | TicketStatus::Failed)
            );
            if unknown && ticket.ticket_status != polled.result.ticket_status {
                warn!(ticket_status = status, "unknown ticket status; polling on until the deadline");
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

/// The one line that starts an outage episode: at `error` when the API's 2xx answers cannot be
/// read (a person should look), else at `warn`.
fn log_outage(error: &FlinkError, cause: PauseCause, failures: u32, until: DateTime<Utc>) {
    let paused_until = crate::clock::format_instant(until);
    match cause {
        PauseCause::Unreadable => error!(
            error_code = %error.code(),
            error = %error,
            failures,
            paused_until = %paused_until,
            "polling paused: the API answers with bodies that cannot be read (has the API changed?); \
             one probe at a time until it answers, and no ticket is failed for this"
        ),
        PauseCause::Unavailable | PauseCause::Rejected => warn!(
            error_code = %error.code(),
            error = %error,
            failures,
            paused_until = %paused_until,
            "polling paused: the API is unavailable; one probe at a time until it answers, and no ticket is \
             failed for this"
        ),
    }
}

fn streak(count: i64) -> u32 {
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use serde_json::json;

    use super::*;
    use crate::domain::{DeployResult, TicketKey, ValidationIssue};
    use crate::flink::ApiError;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
    }

    fn policy() -> Policy {
        Policy::from_config(&PollConfig {
            initial_interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(30),
            multiplier: 2.0,
            deadline: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
        })
    }

    #[test]
    fn a_pause_holds_tickets_for_at_least_100ms_however_short_the_initial_interval() {
        let fast = Policy::from_config(&PollConfig {
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(2),
            multiplier: 2.0,
            deadline: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
        });
        assert_eq!(fast.pause.initial, MIN_PAUSE_INTERVAL);
        assert!(fast.pause.max >= MIN_PAUSE_INTERVAL);
        assert_eq!(fast.running.initial, Duration::from_millis(1), "running tickets keep the configured schedule");
        assert_eq!(policy().pause.initial, Duration::from_secs(2), "longer intervals are kept");
    }

    fn ticket(running_streak: i64, error_streak: i64, deadline: DateTime<Utc>) -> Ticket {
        Ticket {
            id: RowId(7),
            key: TicketKey { ticket_id: "t-1".to_owned(), namespace: "ns".to_owned(), workspace: "ws".to_owned() },
            region: None,
            webhook_url: None,
            deadline_at: Some(deadline),
            state: TicketState::Pending,
            ticket_status: None,
            deployment_id: None,
            deploy_success: None,
            message: None,
            validation_result: None,
            validation_errors: Vec::new(),
            error_code: None,
            error_message: None,
            polls: running_streak + error_streak,
            request_id: None,
            webhook_note: None,
            created_at: now() - chrono::Duration::hours(1),
            updated_at: now() - chrono::Duration::hours(1),
            next_poll_at: now(),
            finished_at: None,
            running_streak,
            error_streak,
            retries: 0,
            lease_owner: Some("test#1".to_owned()),
            lease_until: None,
        }
    }

    fn polled(status: &str, success: Option<bool>) -> Polled {
        Polled {
            request_id: Some("R".to_owned()),
            result: DeployResult {
                ticket_status: Some(TicketStatus::from_wire(status)),
                deployment_id: success.filter(|success| *success).map(|_| "dep-1".to_owned()),
                success,
                ..DeployResult::default()
            },
        }
    }

    fn later() -> DateTime<Utc> {
        now() + chrono::Duration::hours(1)
    }

    fn api(code: &str) -> ApiError {
        ApiError {
            http_status: Some(400),
            code: Some(code.to_owned()),
            message: Some("m".to_owned()),
            request_id: Some("Q".to_owned()),
        }
    }

    #[test]
    fn finished_with_success_is_succeeded_and_keeps_the_answer() {
        let decision = decide(&ticket(3, 0, later()), Ok(&polled("FINISHED", Some(true))), now(), &policy(), 0.5);
        let Decision::Finish(finish) = decision else { panic!("expected a finish, got {decision:?}") };
        assert_eq!(finish.state, TicketState::Succeeded);
        assert_eq!(finish.answer.unwrap().deployment_id.as_deref(), Some("dep-1"));
        assert!(finish.polled);
    }

    #[test]
    fn finished_without_success_or_failed_status_is_failed() {
        let mut rejected = polled("FINISHED", Some(false));
        rejected.result.validation_errors.push(ValidationIssue {
            line: json!(3),
            column: json!(10),
            end_line: json!(3),
            end_column: json!(14),
            message: Some("Object 'orders' not found".to_owned()),
        });
        for outcome in [rejected, polled("FAILED", None), polled("FINISHED", None)] {
            let decision = decide(&ticket(0, 0, later()), Ok(&outcome), now(), &policy(), 0.5);
            assert!(
                matches!(&decision, Decision::Finish(Finish { state: TicketState::Failed, .. })),
                "{outcome:?} gave {decision:?}"
            );
        }
    }

    #[test]
    fn still_running_or_unknown_status_reschedules_on_the_running_cadence() {
        for status in ["INIT", "EXECUTING", "SOMETHING_NEW", ""] {
            let decision = decide(&ticket(2, 4, later()), Ok(&polled(status, None)), now(), &policy(), 1.0);
            let Decision::Reschedule(reschedule) = decision else { panic!("{status}: {decision:?}") };
            // Ceiling for streak 2 is 2s * 2^2 = 8s; jitter 1.0 takes all of it.
            assert_eq!(reschedule.next_poll_at, now() + chrono::Duration::seconds(8), "{status}");
            assert_eq!(reschedule.running_streak, 3);
            assert_eq!(reschedule.error_streak, 0, "an answer ends the error streak");
            assert!(reschedule.answer.is_some() && reschedule.error.is_none());
        }
    }

    #[test]
    fn jitter_moves_the_next_poll_within_floor_and_ceiling() {
        let at =
            |jitter| match decide(&ticket(10, 0, later()), Ok(&polled("EXECUTING", None)), now(), &policy(), jitter) {
                Decision::Reschedule(reschedule) => reschedule.next_poll_at - now(),
                other => panic!("{other:?}"),
            };
        assert_eq!(at(0.0), chrono::Duration::seconds(1), "floor is half the initial interval");
        assert_eq!(at(0.5), chrono::Duration::seconds(15));
        assert_eq!(at(0.999_999), chrono::Duration::microseconds(29_999_970));
    }

    #[test]
    fn restart_arithmetic_continues_from_the_persisted_streak() {
        // A daemon that restarts reads running_streak = 5 from the row and continues from there.
        let decision = decide(&ticket(5, 0, later()), Ok(&polled("EXECUTING", None)), now(), &policy(), 1.0);
        let Decision::Reschedule(reschedule) = decision else { panic!("{decision:?}") };
        assert_eq!(reschedule.next_poll_at - now(), chrono::Duration::seconds(30), "capped at max_interval");
        assert_eq!(reschedule.running_streak, 6);
    }

    #[test]
    fn transient_errors_back_off_on_their_own_streak_and_keep_the_running_one() {
        let errors = [
            FlinkError::Network("connection reset".to_owned()),
            FlinkError::Transient(api("ServiceUnavailable")),
            FlinkError::Decode(ApiError::default()),
            FlinkError::RateLimited { error: api("Throttling.User"), retry_after: None },
        ];
        for error in errors {
            let decision = decide(&ticket(4, 1, later()), Err(&error), now(), &policy(), 1.0);
            let Decision::Reschedule(reschedule) = decision else { panic!("{error:?}: {decision:?}") };
            assert_eq!(reschedule.next_poll_at - now(), chrono::Duration::seconds(4), "{error:?}: 2s * 2^1");
            assert_eq!((reschedule.running_streak, reschedule.error_streak), (4, 2));
            assert_eq!(reschedule.error.as_ref().map(|(code, _)| code.clone()), Some(error.code()));
        }
    }

    #[test]
    fn server_retry_after_hint_wins_over_the_schedule() {
        let error =
            FlinkError::RateLimited { error: api("Throttling"), retry_after: Some(Duration::from_millis(1500)) };
        let Decision::Reschedule(reschedule) = decide(&ticket(0, 6, later()), Err(&error), now(), &policy(), 1.0)
        else {
            panic!("expected a reschedule")
        };
        assert_eq!(reschedule.next_poll_at - now(), chrono::Duration::milliseconds(1500));
    }

    #[test]
    fn a_poll_never_goes_past_the_deadline_and_the_deadline_expires_it() {
        let deadline = now() + chrono::Duration::seconds(3);
        let Decision::Reschedule(reschedule) =
            decide(&ticket(10, 0, deadline), Ok(&polled("EXECUTING", None)), now(), &policy(), 1.0)
        else {
            panic!("expected a reschedule")
        };
        assert_eq!(reschedule.next_poll_at, deadline);

        let at_deadline = decide(&ticket(10, 0, deadline), Ok(&polled("EXECUTING", None)), deadline, &policy(), 0.5);
        assert!(matches!(at_deadline, Decision::Finish(Finish { state: TicketState::Expired, .. })));
        let error = FlinkError::Network("down".to_owned());
        let failed_at_deadline = decide(&ticket(10, 3, deadline), Err(&error), deadline, &policy(), 0.5);
        let Decision::Finish(finish) = failed_at_deadline else { panic!("expected expiry") };
        assert_eq!(finish.state, TicketState::Expired);
        assert_eq!(finish.error.unwrap().0, "NetworkError");
        // A final answer at the deadline still counts.
        let finished = decide(&ticket(10, 0, deadline), Ok(&polled("FINISHED", Some(true))), deadline, &policy(), 0.5);
        assert!(matches!(finished, Decision::Finish(Finish { state: TicketState::Succeeded, .. })));
    }

    #[test]
    fn errors_about_us_pause_instead_of_failing_the_ticket() {
        for (error, scope) in [
            (FlinkError::Config(api("SignatureDoesNotMatch")), PauseScope::Global),
            (FlinkError::Credentials(api("InvalidAccessKeyId.NotFound")), PauseScope::Global),
            (FlinkError::Config(api("InvalidTimeStamp.Expired")), PauseScope::Global),
            (FlinkError::AccessDenied(api("NoPermission")), PauseScope::Workspace),
        ] {
            let decision = decide(&ticket(1, 1, later()), Err(&error), now(), &policy(), 0.5);
            assert_eq!(
                decision,
                Decision::Pause { scope, error: (error.code(), error.message()), request_id: Some("Q".to_owned()) }
            );
        }
    }

    #[test]
    fn ticket_errors_fail_it_and_no_run_of_transient_errors_ever_does() {
        let not_found = FlinkError::Ticket(api("TicketNotFound"));
        let Decision::Finish(finish) = decide(&ticket(0, 0, later()), Err(&not_found), now(), &policy(), 0.5) else {
            panic!("expected a finish")
        };
        assert_eq!((finish.state, finish.error.unwrap().0), (TicketState::Failed, "TicketNotFound".to_owned()));

        let html = ApiError { http_status: Some(502), message: Some("<html>".to_owned()), ..ApiError::default() };
        for error in [
            FlinkError::Decode(ApiError { http_status: Some(200), ..ApiError::default() }),
            FlinkError::Transient(html),
            FlinkError::Network("connection reset".to_owned()),
        ] {
            for streak in [9, 10, 13, 1_000] {
                let decision = decide(&ticket(0, streak, later()), Err(&error), now(), &policy(), 0.5);
                assert!(matches!(decision, Decision::Reschedule(_)), "{error:?} after {streak}: {decision:?}");
            }
        }
    }

    #[test]
    fn an_error_that_pauses_expires_a_ticket_past_its_deadline() {
        for error in [FlinkError::Config(api("SignatureDoesNotMatch")), FlinkError::AccessDenied(api("NoPermission"))] {
            let decision = decide(&ticket(1, 1, now()), Err(&error), now(), &policy(), 0.5);
            assert!(matches!(decision, Decision::Finish(Finish { state: TicketState::Expired, .. })), "{decision:?}");
        }
    }

    fn local(message: &str) -> FlinkError {
        FlinkError::Ticket(ApiError {
            code: Some("InvalidTicket".to_owned()),
            message: Some(message.to_owned()),
            ..ApiError::default()
        })
    }

    #[test]
    fn a_poll_refused_before_any_request_is_sent_never_reopens_a_paused_gate() {
        let schedule = policy().pause;
        let mut gates = Gates::default();
        let rejected = FlinkError::Config(api("SignatureDoesNotMatch"));
        gates.observe("ws", Err(&rejected), now(), Probes::default(), &schedule);
        let until = gates.global.paused_until().expect("paused");
        for error in [local("unknown region \"mars-1\""), local("the workspace header value is not valid in HTTP")] {
            assert!(gates.global.start_probe(), "the pause ended: this poll is the probe");
            gates.observe("ws", Err(&error), until, Probes { global: true, workspace: false }, &schedule);
            assert_eq!(gates.global.paused_until(), Some(until), "{error:?} reopened or moved the gate");
            assert!(gates.global.hold(until, Duration::from_secs(2)).is_none(), "another probe may go");
        }
        let answered = FlinkError::Ticket(api("TicketNotFound"));
        gates.observe("ws", Err(&answered), until, Probes { global: true, workspace: false }, &schedule);
        assert_eq!(gates.global.paused_until(), None, "an answer about a ticket is the API accepting us");
    }

    #[test]
    fn a_run_of_transient_failures_across_tickets_opens_the_circuit_and_a_good_answer_closes_it() {
        let schedule = policy().pause;
        let mut gates = Gates::default();
        let outage = FlinkError::Transient(ApiError { http_status: Some(502), ..ApiError::default() });
        let network = FlinkError::Network("connection refused".to_owned());
        for n in 1..OUTAGE_THRESHOLD {
            let error = if n % 2 == 0 { &outage } else { &network };
            gates.observe(&format!("ws-{n}"), Err(error), now(), Probes::default(), &schedule);
            assert_eq!(gates.global.paused_until(), None, "{n} failures are not an outage yet");
        }
        gates.observe("ws", Ok(()), now(), Probes::default(), &schedule);
        for _ in 1..OUTAGE_THRESHOLD {
            gates.observe("ws", Err(&outage), now(), Probes::default(), &schedule);
        }
        assert_eq!(gates.global.paused_until(), None, "a good answer restarted the count");
        gates.observe("ws", Err(&outage), now(), Probes::default(), &schedule);
        let until = gates.global.paused_until().expect("the circuit opened");
        assert_eq!(gates.global.paused.as_ref().map(|pause| pause.cause), Some(PauseCause::Unavailable));

        assert!(gates.global.start_probe());
        let garbage = FlinkError::Decode(ApiError { http_status: Some(200), ..ApiError::default() });
        gates.observe("ws", Err(&garbage), until, Probes { global: true, workspace: false }, &schedule);
        let longer = gates.global.paused_until().expect("still paused");
        assert_eq!(longer - until, chrono::Duration::seconds(4), "a failed probe doubles the pause");
        assert_eq!(gates.global.paused.as_ref().map(|pause| pause.cause), Some(PauseCause::Unreadable));

        assert!(gates.global.start_probe());
        gates.observe("ws", Ok(()), longer, Probes { global: true, workspace: false }, &schedule);
        assert_eq!(gates.global.paused_until(), None, "the first good answer closes the circuit");
    }

    #[test]
    fn a_gate_pauses_lets_one_probe_through_and_opens_on_acceptance() {
        let schedule = policy().pause;
        let hold = Duration::from_secs(2);
        let mut gate = Gate::default();
        let reason = || ("SignatureDoesNotMatch".to_owned(), "m".to_owned());
        let hold_until = |gate: &Gate, at| gate.hold(at, hold).map(|hold| hold.until);
        assert_eq!(hold_until(&gate, now()), None);
        let until = gate.rejected(now(), &schedule, false, reason(), PauseCause::Rejected).expect("a new pause");
        assert_eq!(until, now() + chrono::Duration::seconds(2));
        assert_eq!(
            gate.rejected(now(), &schedule, false, reason(), PauseCause::Rejected),
            None,
            "a second rejection in flight logs nothing"
        );
        assert_eq!(gate.hold(now(), hold), Some(Hold { until, reason: reason() }), "waiting tickets show why");
        assert_eq!(hold_until(&gate, until), None, "the pause ended: a probe may go");
        assert!(gate.start_probe());
        assert_eq!(hold_until(&gate, until), Some(until + chrono::Duration::seconds(2)), "others wait for the probe");
        assert_eq!(gate.rejected(until, &schedule, true, reason(), PauseCause::Rejected), None);
        assert_eq!(gate.paused_until(), Some(until + chrono::Duration::seconds(4)), "the pause doubles");
        assert!(gate.start_probe());
        assert_eq!(gate.accepted(), Some((PauseCause::Rejected, now())));
        assert_eq!(hold_until(&gate, until), None);
        assert_eq!(gate.accepted(), None);
    }
}
