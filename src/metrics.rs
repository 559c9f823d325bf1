//! The daemon's Prometheus metrics, kept with the `prometheus-client` crate and rendered in the
//! Prometheus text format (0.0.4) by `/metrics`. Every name starts with `flink_ticketd_`.
//!
//! Counters and histograms are updated where things happen (a poll answered, a webhook attempt
//! recorded, a retention run); gauges that describe the database (tickets by state, queue lag)
//! and the pause flag are set from a [`Snapshot`] taken at scrape time. No IO here.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::domain::{TicketState, TicketStatus};
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

/// Label set of the families keyed by an outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
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
}

/// The registry and a handle on every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tickets: Family<StateLabel, Gauge>,
    queue_lag: Gauge<f64, AtomicU64>,
    paused: Gauge,
    api_unavailable: Gauge,
    polls: Family<OutcomeLabel, Counter>,
    api_latency: Histogram,
    rate_limit_wait: Histogram,
    finished: Family<StateLabel, Counter>,
    ticket_polls: Histogram,
    webhooks: Family<OutcomeLabel, Counter>,
    retention_runs: Counter,
    retention_deleted: Counter,
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
        let polls = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "polls",
            "Result requests made, by outcome: the ticket status class answered, or the error class",
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
        let finished = Family::<StateLabel, Counter>::default();
        registry.register("tickets_finished", "Tickets this process brought to a final state", finished.clone());
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
        }
    }

    /// Counts one result request and its duration.
    pub fn observe_poll(&self, outcome: &Result<Polled, FlinkError>, took: Duration) {
        self.polls.get_or_create(&OutcomeLabel { outcome: poll_outcome(outcome) }).inc();
        self.api_latency.observe(took.as_secs_f64());
    }

    /// Records how long a request waited for the rate limiter.
    pub fn observe_rate_limit_wait(&self, waited: Duration) {
        self.rate_limit_wait.observe(waited.as_secs_f64());
    }

    /// Counts a ticket brought to `state` after `polls` result requests in all.
    pub fn observe_finished(&self, state: TicketState, polls: i64) {
        self.finished.get_or_create(&StateLabel { state: state.as_str().to_owned() }).inc();
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

    /// Counts a retention run that deleted `tickets` finished tickets.
    pub fn observe_retention(&self, tickets: u64) {
        self.retention_runs.inc();
        self.retention_deleted.inc_by(tickets);
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
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing into a String cannot fail");
        out
    }
}

/// The `outcome` label of a result request: the ticket status class answered, or the error class.
pub fn poll_outcome(outcome: &Result<Polled, FlinkError>) -> &'static str {
    match outcome {
        Ok(polled) => polled.result.ticket_status.as_ref().and_then(TicketStatus::name).unwrap_or("other_status"),
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
        metrics.observe_poll(&Err(FlinkError::Network("reset".to_owned())), Duration::from_millis(20));
        metrics.observe_finished(TicketState::Succeeded, 3);
        let text = metrics.render(&Snapshot {
            tickets_by_state: vec![("pending".to_owned(), 3)],
            queue_lag: Duration::from_millis(1500),
            paused: true,
            api_unavailable: true,
        });
        for line in [
            "flink_ticketd_tickets{state=\"pending\"} 3",
            "flink_ticketd_tickets{state=\"expired\"} 0",
            "flink_ticketd_queue_lag_seconds 1.5",
            "flink_ticketd_polling_paused 1",
            "flink_ticketd_api_unavailable 1",
            "flink_ticketd_polls_total{outcome=\"network_error\"} 1",
            "flink_ticketd_api_request_duration_seconds_count 1",
            "flink_ticketd_tickets_finished_total{state=\"succeeded\"} 1",
            "flink_ticketd_ticket_polls_sum 3.0",
            "flink_ticketd_ticket_polls_count 1",
        ] {
            assert!(text.lines().any(|rendered| rendered == line), "{line} missing from:\n{text}");
        }
    }
}
