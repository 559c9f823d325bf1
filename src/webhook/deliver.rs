//! The delivery loop over the `webhook_deliveries` outbox: wait until the earliest delivery is
//! due (per the database), claim due deliveries with a lease, send each signed POST under the
//! webhook concurrency limit, and record what [`decide`] makes of the answer.
//!
//! The loop has its own HTTP client (redirects not followed, answers read up to
//! [`MAX_RESPONSE_BYTES`] and discarded), its own concurrency limit and its own task, so a slow or
//! dead receiver never slows polling; each receiver gets at most half of the sending slots, so it
//! does not hold up the others either. Every write after the claim is fenced by the lease, and no
//! transaction is open while a request is in flight. [`decide`] and [`parse_retry_after`] are pure.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER};
use serde::Deserialize;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn};

use super::signing;
use crate::backoff::honour_webhook_retry_after;
use crate::claim_loop;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::redact::redact_url;
use crate::service::Heartbeat;
use crate::store::{AttemptRecord, Delivery, Handoff, Lease, Store, is_connection_lost, retry_when_busy};
use crate::webhook::{WebhookSettings, parse_webhook_url};

/// Longest the loop sleeps before looking for new or newly due deliveries.
pub const WAKE_INTERVAL: Duration = Duration::from_secs(1);

/// At most this much of an answer's body is read (then discarded); the rest is never received.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// At most this many characters of a failed answer's body are kept in `last_error`.
pub const ERROR_BODY_CHARS: usize = 200;

/// Prefix of the lease names the loop writes after the process's own prefix.
pub const LEASE_TAG: &str = "#webhook-";

/// The lease name, after [`LEASE_TAG`], that final states write their deliveries under for this
/// process's loop (its claims are numbered, so never take this name).
pub const HANDOFF_TAG: &str = "written";

/// The handoff (see [`Handoff`]) of the delivery loop of the process whose lease prefix is
/// `owner` (`host:pid:random`), with the configured delivery lease.
pub fn handoff(owner: &str, config: &WebhookSettings) -> Handoff {
    Handoff { lease: Lease(format!("{owner}{LEASE_TAG}{HANDOFF_TAG}")), lease_for: config.lease }
}

/// What one attempt got from the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Accepted {
        /// The status it answered.
        http_status: u16,
    },
    /// 410 Gone: the receiver wants no more attempts.
    Gone,
    /// Anything else, or no answer.
    Failed {
        /// The status of the answer, if there was one.
        http_status: Option<u16>,
        /// What went wrong, for `last_error`.
        error: String,
        /// The answer's `Retry-After`, already turned into a delay.
        retry_after: Option<Duration>,
    },
}

/// Decides what an attempt's outcome means for its delivery. `attempt` is the 1-based number
/// of this attempt (the row's `attempts` after the claim). Attempt `n` that fails waits
/// `schedule[n-1]` (or the receiver's `Retry-After`, see [`honour_webhook_retry_after`]); when
/// `n` exceeds the schedule's length the delivery is dead. Pure.
pub fn decide(attempt: i64, schedule: &[Duration], outcome: &Outcome, now: DateTime<Utc>) -> AttemptRecord {
    match outcome {
        Outcome::Accepted { http_status } => AttemptRecord::Delivered { http_status: *http_status },
        Outcome::Gone => AttemptRecord::Dead {
            http_status: Some(410),
            error: "HTTP 410 Gone: the receiver asked for no more attempts".to_owned(),
        },
        Outcome::Failed { http_status, error, retry_after } => {
            let step = usize::try_from(attempt.max(1) - 1).unwrap_or(usize::MAX);
            match schedule.get(step) {
                Some(scheduled) => {
                    let delay = honour_webhook_retry_after(*scheduled, *retry_after);
                    AttemptRecord::Retry {
                        next_attempt_at: now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
                        http_status: *http_status,
                        error: error.clone(),
                    }
                }
                None => AttemptRecord::Dead { http_status: *http_status, error: error.clone() },
            }
        }
    }
}

/// Reads a `Retry-After` value, either delay-seconds or an HTTP date, as a delay from `now`
/// (a date in the past is no delay). Anything else is ignored.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date: DateTime<Utc> = httpdate::parse_http_date(value).ok()?.into();
    Some((date - now).to_std().unwrap_or(Duration::ZERO))
}

/// Everything the delivery loop needs.
pub struct Deliverer {
    store: Store,
    clock: Arc<dyn Clock>,
    config: Arc<WebhookSettings>,
    http: reqwest::Client,
    owner: String,
    handoff: Handoff,
    deliveries_written: Arc<Notify>,
    /// Counts loop iterations, waits and finished attempts; a stuck loop stops counting.
    pub heartbeat: Heartbeat,
    /// Where attempts are counted.
    pub metrics: Arc<Metrics>,
    wake: Notify,
}

impl Deliverer {
    /// Builds the loop and its HTTP client. `owner` is the process's lease prefix
    /// (`host:pid:random`); `deliveries_written` is notified by the poller after a final state
    /// wrote deliveries.
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        config: Arc<WebhookSettings>,
        owner: &str,
        deliveries_written: Arc<Notify>,
    ) -> anyhow::Result<Deliverer> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flink-ticketd/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the webhook HTTP client")?;
        Ok(Deliverer {
            store,
            clock,
            handoff: handoff(owner, &config),
            config,
            http,
            owner: format!("{owner}{LEASE_TAG}"),
            deliveries_written,
            heartbeat: Heartbeat::default(),
            metrics: Arc::new(Metrics::new()),
            wake: Notify::new(),
        })
    }

    /// Counts progress at least every `every` while waiting (see `crate::service`).
    #[must_use]
    pub fn with_heartbeat(mut self, every: Duration) -> Deliverer {
        self.heartbeat = Heartbeat::new(every);
        self
    }

    /// Counts into `metrics` instead of a registry of its own.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Deliverer {
        self.metrics = metrics;
        self
    }

    /// The lease final states of this process write their deliveries under, so that this loop
    /// sends them at once (see [`Handoff`]).
    pub fn handoff(&self) -> &Handoff {
        &self.handoff
    }

    /// The prefix of every lease this loop writes (its handoff's too), for handing them back at
    /// shutdown.
    pub fn lease_prefix(&self) -> &str {
        &self.owner
    }

    /// Attempts in flight to one receiver at most: half of `webhook.max_in_flight`, at least 1.
    pub fn per_url_limit(&self) -> u32 {
        u32::try_from((self.config.max_in_flight / 2).max(1)).unwrap_or(u32::MAX)
    }

    /// Delivers until `shutdown` is cancelled (the claim loop of `crate::claim_loop`). Attempts
    /// in flight run in `tracker`; the caller waits for them (with a grace period) after this
    /// returns.
    pub async fn run_until_cancelled(self: Arc<Self>, shutdown: CancellationToken, tracker: TaskTracker) {
        claim_loop::run_until_cancelled(self, shutdown, tracker).await;
    }

    /// Sends one claimed delivery and records the outcome.
    async fn deliver(&self, delivery: Delivery, lease: &Lease) {
        let started = tokio::time::Instant::now();
        let outcome = self.send(&delivery).await;
        let took = started.elapsed();
        let now = self.clock.now();
        let record = decide(delivery.attempts, &self.config.schedule, &outcome, now);
        match &record {
            AttemptRecord::Delivered { http_status } => info!(http_status, "webhook delivered"),
            AttemptRecord::Retry { next_attempt_at, http_status, error } => warn!(
                http_status = http_status.map(i64::from),
                error = %error,
                delay_ms = (*next_attempt_at - now).num_milliseconds(),
                "webhook attempt failed, retrying"
            ),
            AttemptRecord::Dead { http_status: Some(410), .. } => {
                warn!(http_status = 410, "receiver answered 410 Gone; delivery stopped")
            }
            AttemptRecord::Dead { http_status, error } => error!(
                http_status = http_status.map(i64::from),
                error = %error,
                attempts = delivery.attempts,
                "webhook delivery gave up after its last attempt"
            ),
        }
        self.metrics.observe_delivery(&record);
        self.heartbeat.beat();
        match retry_when_busy(|| self.store.record_attempt(lease, delivery.id, now, took, &record)).await {
            Ok(true) => {}
            Ok(false) => {
                warn!("lease lost: the delivery changed under us (lease lapsed, or resent); outcome not recorded")
            }
            // A lost connection is logged once per episode by the store.
            Err(error) if is_connection_lost(&error) => debug!(
                error = %error,
                "recording the webhook attempt failed; the delivery is attempted again when its lease lapses"
            ),
            Err(error) => error!(
                error = %error,
                "recording the webhook attempt failed; the delivery is attempted again when its lease lapses"
            ),
        }
    }

    /// One signed POST of a delivery's body.
    async fn send(&self, delivery: &Delivery) -> Outcome {
        let timestamp = self.clock.now().timestamp();
        let keys: Vec<&[u8]> = self.config.secrets.iter().map(|secret| secret.expose()).collect();
        let signature = signing::sign(&keys, &delivery.webhook_id, timestamp, delivery.payload.as_bytes());
        let Ok(webhook_id) = HeaderValue::from_str(&delivery.webhook_id) else {
            return failed(None, "the webhook-id is not a valid header value".to_owned());
        };
        let Ok(mut signature) = HeaderValue::from_str(&signature) else {
            return failed(None, "the signature is not a valid header value".to_owned());
        };
        signature.set_sensitive(true);
        let response = self
            .http
            .post(&delivery.url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", HeaderValue::from(timestamp))
            .header("webhook-signature", signature)
            .body(delivery.payload.clone())
            .send()
            .await;
        let mut response = match response {
            Ok(response) => response,
            Err(error) => return failed(None, crate::transport::describe(&error)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, self.clock.now()));
        let location = response.headers().get(LOCATION).and_then(|value| value.to_str().ok()).map(str::to_owned);
        // Read a little of the body so the connection can be reused and a failure can say what
        // the receiver said; stop at the cap, and never let a body error undo a 2xx.
        let mut body = Vec::new();
        while body.len() < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(MAX_RESPONSE_BYTES - body.len())]),
                Ok(None) | Err(_) => break,
            }
        }
        drop(response);
        if status.is_success() {
            return Outcome::Accepted { http_status: status.as_u16() };
        }
        if status == reqwest::StatusCode::GONE {
            return Outcome::Gone;
        }
        let mut error = format!("HTTP {status}");
        if status.is_redirection() {
            error.push_str(": redirect not followed");
            if let Some(location) = location {
                error.push_str(&format!(" (to {})", shown_url(&location)));
            }
        } else if let Some(said) = body_excerpt(&body) {
            error.push_str(": ");
            error.push_str(&said);
        }
        Outcome::Failed { http_status: Some(status.as_u16()), error, retry_after }
    }
}

/// The delivery loop's queue: due deliveries, at most [`Deliverer::per_url_limit`] in flight to
/// any one receiver, each sent by [`Deliverer::deliver`] in its `delivery` span.
impl claim_loop::Queue for Deliverer {
    type Item = Delivery;
    type Error = sqlx::Error;

    const ROWS: &'static str = "webhook deliveries";
    const ROW: &'static str = "webhook delivery";

    fn shape(&self) -> claim_loop::Shape {
        claim_loop::Shape {
            max_in_flight: self.config.max_in_flight,
            batch: 1,
            window: Duration::ZERO,
            wake_interval: WAKE_INTERVAL,
            ahead: 0,
        }
    }

    fn lease_prefix(&self) -> String {
        self.owner.clone()
    }

    fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    fn wake(&self) -> &Notify {
        &self.wake
    }

    fn written(&self) -> Option<&Notify> {
        Some(&self.deliveries_written)
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.store.next_delivery_due_for(&self.handoff, self.clock.now()).await
    }

    async fn claim(&self, lease: &Lease, now: DateTime<Utc>, limit: u32) -> Result<Vec<Delivery>, sqlx::Error> {
        self.store.claim_due_and_handed_deliveries(lease, &self.handoff, now, limit, self.per_url_limit()).await
    }

    fn span(&self, delivery: &Delivery) -> tracing::Span {
        info_span!(
            "delivery",
            delivery_id = delivery.id,
            ticket_id = %ticket_id_of(delivery),
            url = %shown_url(&delivery.url),
            attempt = delivery.attempts,
        )
    }

    async fn process(self: Arc<Self>, delivery: Delivery, lease: Lease, slot: OwnedSemaphorePermit) {
        self.deliver(delivery, &lease).await;
        drop(slot);
    }
}

fn failed(http_status: Option<u16>, error: String) -> Outcome {
    Outcome::Failed { http_status, error, retry_after: None }
}

/// The first [`ERROR_BODY_CHARS`] characters of a body on one line, if it has any text.
fn body_excerpt(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut excerpt: String = line.chars().take(ERROR_BODY_CHARS).collect();
    if excerpt.is_empty() {
        return None;
    }
    if line.chars().count() > ERROR_BODY_CHARS {
        excerpt.push('…');
    }
    Some(excerpt)
}

/// The URL without user information, for logs.
fn shown_url(url: &str) -> String {
    parse_webhook_url(url).map(|url| redact_url(&url)).unwrap_or_else(|_| "[unparsable URL]".to_owned())
}

/// `data.ticket_id` of the body, for the log span.
fn ticket_id_of(delivery: &Delivery) -> String {
    #[derive(Deserialize)]
    struct Body {
        data: Data,
    }
    #[derive(Deserialize)]
    struct Data {
        ticket_id: String,
    }
    serde_json::from_str::<Body>(&delivery.payload).map(|body| body.data.ticket_id).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
    }

    fn schedule() -> Vec<Duration> {
        vec![Duration::from_secs(5), Duration::from_secs(300), Duration::from_secs(1800)]
    }

    fn failure(retry_after: Option<Duration>) -> Outcome {
        Outcome::Failed { http_status: Some(503), error: "HTTP 503".to_owned(), retry_after }
    }

    #[test]
    fn a_2xx_is_delivered_whatever_the_attempt() {
        for attempt in [1, 4, 99] {
            assert_eq!(
                decide(attempt, &schedule(), &Outcome::Accepted { http_status: 204 }, now()),
                AttemptRecord::Delivered { http_status: 204 }
            );
        }
    }

    #[test]
    fn attempt_n_that_fails_waits_the_nth_step_and_the_last_one_is_dead() {
        for (attempt, wait) in [(1, 5), (2, 300), (3, 1800)] {
            let AttemptRecord::Retry { next_attempt_at, http_status, .. } =
                decide(attempt, &schedule(), &failure(None), now())
            else {
                panic!("attempt {attempt} should be retried")
            };
            assert_eq!(next_attempt_at - now(), chrono::Duration::seconds(wait));
            assert_eq!(http_status, Some(503));
        }
        assert!(matches!(decide(4, &schedule(), &failure(None), now()), AttemptRecord::Dead { .. }));
        assert!(matches!(decide(1, &[], &failure(None), now()), AttemptRecord::Dead { .. }), "no schedule: one try");
    }

    #[test]
    fn gone_is_dead_at_once() {
        assert_eq!(
            decide(1, &schedule(), &Outcome::Gone, now()),
            AttemptRecord::Dead {
                http_status: Some(410),
                error: "HTTP 410 Gone: the receiver asked for no more attempts".to_owned()
            }
        );
    }

    #[test]
    fn retry_after_replaces_the_step_within_the_cap() {
        let at = |hint| match decide(1, &schedule(), &failure(Some(hint)), now()) {
            AttemptRecord::Retry { next_attempt_at, .. } => next_attempt_at - now(),
            other => panic!("{other:?}"),
        };
        assert_eq!(at(Duration::from_secs(1)), chrono::Duration::seconds(1));
        assert_eq!(at(Duration::from_secs(120)), chrono::Duration::seconds(120));
        assert_eq!(at(Duration::from_secs(10 * 86_400)), chrono::Duration::hours(1));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("120", now()), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now()), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sat, 28 Nov 2026 12:00:30 GMT", now()), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sat, 28 Nov 2026 11:00:00 GMT", now()), Some(Duration::ZERO), "past date");
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("-5", now()), None);
        assert_eq!(parse_retry_after("", now()), None);
    }

    #[test]
    fn a_failed_answer_keeps_one_short_line_of_its_body() {
        assert_eq!(body_excerpt(b"  down\r\nfor maintenance \x07"), Some("down for maintenance".to_owned()));
        assert_eq!(body_excerpt(b""), None);
        let long = "x".repeat(1000);
        let excerpt = body_excerpt(long.as_bytes()).expect("text");
        assert_eq!(excerpt.chars().count(), ERROR_BODY_CHARS + 1);
    }

    #[test]
    fn urls_are_shown_without_user_information() {
        assert_eq!(shown_url("https://user:pw@hooks.example.com/x"), "https://***@hooks.example.com/x");
        assert_eq!(shown_url("http://127.0.0.1:9/hook"), "http://127.0.0.1:9/hook");
    }
}
