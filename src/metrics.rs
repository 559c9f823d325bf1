//! The daemon's Prometheus metrics, kept with the `prometheus-client` crate and rendered in the
//! Prometheus text format (0.0.4) by `/metrics`. Every name starts with `flink_ticketd_`.
//!
//! Counters and histograms are updated where things happen (a poll answered, a webhook attempt
//! recorded, a retention run); gauges that describe the database (tickets by state, queue lag)
//! and the pause flag are set from a [`Snapshot`] taken at scrape time. No IO here.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::domain::{TicketKind, TicketState, TicketStatus};
use crate::flink::{FlinkError, Polled};
use crate::store::AttemptRecord;

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every ticket state, so that a state with no rows shows 0 rather than disappearing.
pub const TICKET_STATES: [TicketState; 5] =
    [TicketState::Pending, TicketState::Succeeded, TicketState::Failed, TicketState::Expired, TicketState::Cancelled];

/// Label set of the families keyed by a ticket state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// Label set of the per-loop families.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoopLabel {
    r#loop: &'static str,
}

/// Label set of `build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
}

/// Label set of the families keyed by an outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Label set of the ticket families keyed by a kind and an outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindOutcomeLabel {
    kind: &'static str,
    outcome: &'static str,
}

/// Label set of the ticket families keyed by a kind and a state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindStateLabel {
    kind: &'static str,
    state: &'static str,
}

/// What the database and the poller look like at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// (state, count) of `tickets`.
    pub tickets_by_state: Vec<(String, i64)>,
    /// How long the oldest due pending ticket has been waiting to be polled; zero if none.
    pub queue_lag: Duration,
    /// Whether polling is paused globally (the API rejects our requests, or is unavailable).
    pub paused: bool,
    /// Whether that pause is an outage: the API is unreachable, failing or unreadable.
    pub api_unavailable: bool,
    /// Workspaces whose polling is paused (access denied).
    pub workspaces_paused: usize,
    /// Webhook deliveries waiting to be sent (state pending).
    pub webhook_backlog: i64,
    /// Age of the oldest of them (since it was written); zero when there is none.
    pub webhook_backlog_oldest_age: Duration,
    /// (loop name, time since its progress counter last moved).
    pub loop_progress_age: Vec<(&'static str, Duration)>,
    /// The request rate the limiter allows now, in requests per second.
    pub rate_limit: f64,
    /// Whether throttling answers have slowed the limiter below the configured rate.
    pub rate_limit_slowed: bool,
}

/// The registry and a handle on every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tickets: Family<StateLabel, Gauge>,
    queue_lag: Gauge<f64, AtomicU64>,
    paused: Gauge,
    api_unavailable: Gauge,
    polls: Family<KindOutcomeLabel, Counter>,
    api_latency: Histogram,
    rate_limit_wait: Histogram,
    finished: Family<KindStateLabel, Counter>,
    ticket_polls: Histogram,
    webhooks: Family<OutcomeLabel, Counter>,
    retention_runs: Counter,
    retention_deleted: Counter,
    retention_last_run: Gauge<f64, AtomicU64>,
    start_time: Gauge<f64, AtomicU64>,
    workspaces_paused: Gauge,
    webhook_backlog: Gauge,
    webhook_backlog_oldest_age: Gauge<f64, AtomicU64>,
    loop_progress_age: Family<LoopLabel, Gauge<f64, AtomicU64>>,
    rate_limit: Gauge<f64, AtomicU64>,
    rate_limit_slowed: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered and at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flink_ticketd");
        let tickets = Family::<StateLabel, Gauge>::default();
        registry.register("tickets", "Tickets in the database by state", tickets.clone());
        let queue_lag = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "queue_lag",
            "How long the oldest due pending ticket has waited to be polled (0 when none is due)",
            Unit::Seconds,
            queue_lag.clone(),
        );
        let paused = Gauge::default();
        registry.register(
            "polling_paused",
            "1 while all polling is paused: the API rejects our credentials, signature or clock, or is unavailable",
            paused.clone(),
        );
        let api_unavailable = Gauge::default();
        registry.register(
            "api_unavailable",
            "1 while all polling is paused because the API is unreachable, failing or unreadable (one probe at a time)",
            api_unavailable.clone(),
        );
        let polls = Family::<KindOutcomeLabel, Counter>::default();
        registry.register(
            "polls",
            "Result requests made, by ticket kind and outcome: the ticket status class answered, or the error class",
            polls.clone(),
        );
        let api_latency = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "api_request_duration",
            "Duration of result requests to the Flink API",
            Unit::Seconds,
            api_latency.clone(),
        );
        let rate_limit_wait = Histogram::new(exponential_buckets(0.001, 4.0, 10));
        registry.register_with_unit(
            "rate_limit_wait",
            "Time each request waited for the global rate limit",
            Unit::Seconds,
            rate_limit_wait.clone(),
        );
        let finished = Family::<KindStateLabel, Counter>::default();
        registry.register(
            "tickets_finished",
            "Tickets this process brought to a final state, by ticket kind and state",
            finished.clone(),
        );
        let ticket_polls = Histogram::new([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0]);
        registry.register(
            "ticket_polls",
            "Result requests per ticket this process brought to a final state (sum / count: polls per finished ticket)",
            ticket_polls.clone(),
        );
        let webhooks = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook attempts by outcome (delivered, retry, gone, dead)",
            webhooks.clone(),
        );
        let retention_runs = Counter::default();
        registry.register("retention_runs", "Runs of the retention job", retention_runs.clone());
        let retention_deleted = Counter::default();
        registry.register(
            "retention_deleted_tickets",
            "Finished tickets deleted by the retention job",
            retention_deleted.clone(),
        );
        let retention_last_run = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "retention_last_run_timestamp",
            "Unix time of the retention job's last finished run (0 before the first)",
            Unit::Seconds,
            retention_last_run.clone(),
        );
        let build_info = Family::<BuildLabel, Gauge>::default();
        build_info.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "Always 1; the version of the running binary as a label", build_info);
        let start_time = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "start_time",
            "Unix time at which the daemon started",
            Unit::Seconds,
            start_time.clone(),
        );
        let workspaces_paused = Gauge::default();
        registry.register(
            "workspaces_paused",
            "Workspaces whose polling is paused because access to them is denied",
            workspaces_paused.clone(),
        );
        let webhook_backlog = Gauge::default();
        registry.register("webhook_backlog", "Webhook deliveries waiting to be sent", webhook_backlog.clone());
        let webhook_backlog_oldest_age = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "webhook_backlog_oldest_age",
            "Age of the oldest webhook delivery waiting to be sent (0 when none waits)",
            Unit::Seconds,
            webhook_backlog_oldest_age.clone(),
        );
        let loop_progress_age = Family::<LoopLabel, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "loop_progress_age",
            "Time since each loop (poll, delivery) last counted progress; it counts while waiting too",
            Unit::Seconds,
            loop_progress_age.clone(),
        );
        let rate_limit = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "rate_limit_requests_per_second",
            "Requests per second the global rate limit allows now (lower than configured while slowed)",
            rate_limit.clone(),
        );
        let rate_limit_slowed = Gauge::default();
        registry.register(
            "rate_limit_slowed",
            "1 while throttling answers have slowed the global rate limit",
            rate_limit_slowed.clone(),
        );
        // Every label value known up front starts at zero, so that a dashboard shows 0 rather than
        // nothing and `increase()` in an alert sees the first event.
        for kind in TicketKind::ALL {
            let statuses = match kind {
                TicketKind::HotUpdate => {
                    [TicketStatus::Init, TicketStatus::HotUpdating, TicketStatus::HotUpdated, TicketStatus::Failed]
                }
                _ => [TicketStatus::Init, TicketStatus::Executing, TicketStatus::Finished, TicketStatus::Failed],
            };
            for outcome in statuses.iter().filter_map(TicketStatus::name).chain(POLL_ERROR_OUTCOMES) {
                let _ = polls.get_or_create(&KindOutcomeLabel { kind: kind.as_str(), outcome });
            }
            for state in TICKET_STATES.into_iter().filter(|state| *state != TicketState::Pending) {
                let _ = finished.get_or_create(&KindStateLabel { kind: kind.as_str(), state: state.as_str() });
            }
        }
        for outcome in ["delivered", "retry", "gone", "dead"] {
            let _ = webhooks.get_or_create(&OutcomeLabel { outcome });
        }
        Metrics {
            registry,
            tickets,
            queue_lag,
            paused,
            api_unavailable,
            polls,
            api_latency,
            rate_limit_wait,
            finished,
            ticket_polls,
            webhooks,
            retention_runs,
            retention_deleted,
            retention_last_run,
            start_time,
            workspaces_paused,
            webhook_backlog,
            webhook_backlog_oldest_age,
            loop_progress_age,
            rate_limit,
            rate_limit_slowed,
        }
    }

    /// Counts one result request of a `kind` ticket and its duration.
    pub fn observe_poll(&self, kind: TicketKind, outcome: &Result<Polled, FlinkError>, took: Duration) {
        self.polls.get_or_create(&KindOutcomeLabel { kind: kind.as_str(), outcome: poll_outcome(outcome) }).inc();
        self.api_latency.observe(took.as_secs_f64());
    }

    /// Records how long a request waited for the rate limiter.
    pub fn observe_rate_limit_wait(&self, waited: Duration) {
        self.rate_limit_wait.observe(waited.as_secs_f64());
    }

    /// Counts a `kind` ticket brought to `state` after `polls` result requests in all.
    pub fn observe_finished(&self, kind: TicketKind, state: TicketState, polls: i64) {
        self.finished.get_or_create(&KindStateLabel { kind: kind.as_str(), state: state.as_str() }).inc();
        self.ticket_polls.observe(polls as f64);
    }

    /// Counts one webhook attempt by what was recorded for it.
    pub fn observe_delivery(&self, record: &AttemptRecord) {
        let outcome = match record {
            AttemptRecord::Delivered { .. } => "delivered",
            AttemptRecord::Retry { .. } => "retry",
            AttemptRecord::Dead { http_status: Some(410), .. } => "gone",
            AttemptRecord::Dead { .. } => "dead",
        };
        self.webhooks.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a retention run that finished at `at` and deleted `tickets` finished tickets.
    pub fn observe_retention(&self, tickets: u64, at: DateTime<Utc>) {
        self.retention_runs.inc();
        self.retention_deleted.inc_by(tickets);
        self.retention_last_run.set(unix_seconds(at));
    }

    /// Records when the daemon started.
    pub fn set_start_time(&self, at: DateTime<Utc>) {
        self.start_time.set(unix_seconds(at));
    }

    /// Sets the scrape-time gauges from `snapshot` and renders every metric.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        for state in TICKET_STATES {
            let count = snapshot
                .tickets_by_state
                .iter()
                .find(|(name, _)| name == state.as_str())
                .map_or(0, |(_, count)| *count);
            self.tickets.get_or_create(&StateLabel { state: state.as_str().to_owned() }).set(count);
        }
        self.queue_lag.set(snapshot.queue_lag.as_secs_f64());
        self.paused.set(i64::from(snapshot.paused));
        self.api_unavailable.set(i64::from(snapshot.api_unavailable));
        self.workspaces_paused.set(i64::try_from(snapshot.workspaces_paused).unwrap_or(i64::MAX));
        self.webhook_backlog.set(snapshot.webhook_backlog);
        self.webhook_backlog_oldest_age.set(snapshot.webhook_backlog_oldest_age.as_secs_f64());
        for (name, age) in &snapshot.loop_progress_age {
            self.loop_progress_age.get_or_create(&LoopLabel { r#loop: name }).set(age.as_secs_f64());
        }
        self.rate_limit.set(snapshot.rate_limit);
        self.rate_limit_slowed.set(i64::from(snapshot.rate_limit_slowed));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing into a String cannot fail");
        out
    }
}

/// `at` as Unix seconds with milliseconds.
fn unix_seconds(at: DateTime<Utc>) -> f64 {
    // Milliseconds since 1970 fit an f64 exactly for the next 280 000 years.
    #[expect(clippy::cast_precision_loss, reason = "exact below 2^53 ms")]
    let millis = at.timestamp_millis() as f64;
    millis / 1000.0
}

/// The `outcome` labels of result requests that got no status (see [`poll_outcome`]).
const POLL_ERROR_OUTCOMES: [&str; 9] = [
    "other_status",
    "network_error",
    "invalid_response",
    "transient_error",
    "throttled",
    "credentials_rejected",
    "request_rejected",
    "access_denied",
    "ticket_rejected",
];

/// The `outcome` label of a result request: the ticket status class answered, or the error class.
pub fn poll_outcome(outcome: &Result<Polled, FlinkError>) -> &'static str {
    match outcome {
        Ok(polled) => polled.answer.result.ticket_status().and_then(TicketStatus::name).unwrap_or("other_status"),
        Err(FlinkError::Network(_)) => "network_error",
        Err(FlinkError::Decode(_)) => "invalid_response",
        Err(FlinkError::Transient(_)) => "transient_error",
        Err(FlinkError::RateLimited { .. }) => "throttled",
        Err(FlinkError::Credentials(_)) => "credentials_rejected",
        Err(FlinkError::Config(_)) => "request_rejected",
        Err(FlinkError::AccessDenied(_)) => "access_denied",
        Err(FlinkError::Ticket(_)) => "ticket_rejected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_rendered_with_the_prefix_and_states_default_to_zero() {
        let metrics = Metrics::new();
        metrics.observe_poll(
            TicketKind::Validate,
            &Err(FlinkError::Network("reset".to_owned())),
            Duration::from_millis(20),
        );
        metrics.observe_finished(TicketKind::Validate, TicketState::Succeeded, 3);
        let text = metrics.render(&Snapshot {
            tickets_by_state: vec![("pending".to_owned(), 3)],
            queue_lag: Duration::from_millis(1500),
            paused: true,
            api_unavailable: true,
            workspaces_paused: 2,
            webhook_backlog: 7,
            webhook_backlog_oldest_age: Duration::from_secs(90),
            loop_progress_age: vec![("poll", Duration::from_millis(250))],
            rate_limit: 2.5,
            rate_limit_slowed: true,
        });
        for line in [
            "flink_ticketd_tickets{state=\"pending\"} 3",
            "flink_ticketd_tickets{state=\"expired\"} 0",
            "flink_ticketd_queue_lag_seconds 1.5",
            "flink_ticketd_polling_paused 1",
            "flink_ticketd_api_unavailable 1",
            "flink_ticketd_polls_total{kind=\"validate\",outcome=\"network_error\"} 1",
            "flink_ticketd_api_request_duration_seconds_count 1",
            "flink_ticketd_tickets_finished_total{kind=\"validate\",state=\"succeeded\"} 1",
            "flink_ticketd_workspaces_paused 2",
            "flink_ticketd_webhook_backlog 7",
            "flink_ticketd_webhook_backlog_oldest_age_seconds 90.0",
            "flink_ticketd_loop_progress_age_seconds{loop=\"poll\"} 0.25",
            "flink_ticketd_rate_limit_requests_per_second 2.5",
            "flink_ticketd_rate_limit_slowed 1",
            "flink_ticketd_start_time_seconds 0.0",
            "flink_ticketd_ticket_polls_sum 3.0",
            "flink_ticketd_ticket_polls_count 1",
        ] {
            assert!(text.lines().any(|rendered| rendered == line), "{line} missing from:\n{text}");
        }
    }
}
