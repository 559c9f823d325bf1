//! SQL for the `webhook_deliveries` outbox: rows are inserted with the final state of their
//! ticket (see `Store::record_final`), then claimed with a lease, attempted and closed by the
//! webhook loop (`crate::webhook::deliver`), and listed or queued again by the CLI.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::SqliteConnection;

use super::{Lease, Store, at};

/// The state of one delivery. The strings match the `CHECK` constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not yet accepted by the receiver; will be attempted at `next_attempt_at`.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every attempt failed, or the receiver answered 410 Gone.
    Dead,
}

impl DeliveryState {
    /// The string stored in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "dead" => Ok(DeliveryState::Dead),
            other => Err(format!("unknown delivery state {other:?}: expected pending, delivered or dead")),
        }
    }
}

/// A row of `webhook_deliveries`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct Delivery {
    /// Internal row ID (`webhooks resend` takes it).
    pub id: i64,
    /// The `tickets.id` this delivery announces.
    pub ticket: i64,
    /// The receiver.
    pub url: String,
    /// The `webhook-id` header, the same on every attempt.
    pub webhook_id: String,
    /// `ticket.succeeded`, `ticket.failed` or `ticket.expired`.
    pub event_type: String,
    /// The exact JSON body.
    pub payload: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts made so far.
    pub attempts: i64,
    /// When the next attempt is due.
    pub next_attempt_at: String,
    /// HTTP status of the last attempt, if it got one.
    pub last_http_status: Option<i64>,
    /// What went wrong on the last attempt.
    pub last_error: Option<String>,
    /// When a receiver accepted it.
    pub delivered_at: Option<String>,
    /// When the row was written.
    pub created_at: String,
    /// When the row last changed.
    pub updated_at: String,
    /// The claim that holds the row while it is being sent.
    pub lease_owner: Option<String>,
    /// When that claim lapses.
    pub lease_until: Option<String>,
}

impl Delivery {
    /// The state as an enum; `None` only if someone bypassed the `CHECK` constraint.
    pub fn state(&self) -> Option<DeliveryState> {
        self.state.parse().ok()
    }
}

/// What one attempt came to, as recorded on its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptRecord {
    /// The receiver answered 2xx.
    Delivered {
        /// The status it answered.
        http_status: u16,
    },
    /// The attempt failed and another one is due at `next_attempt_at`.
    Retry {
        /// When the next attempt is due.
        next_attempt_at: DateTime<Utc>,
        /// The status of the answer, if there was one.
        http_status: Option<u16>,
        /// What went wrong.
        error: String,
    },
    /// The attempt failed and no other will be made (410 Gone, or the schedule is used up).
    Dead {
        /// The status of the answer, if there was one.
        http_status: Option<u16>,
        /// What went wrong.
        error: String,
    },
}

/// What `webhooks resend` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    /// The delivery is pending again and due now; the row as it is now.
    Queued(Box<Delivery>),
    /// No delivery has this ID.
    NotFound,
    /// An attempt is in flight right now; its outcome decides what happens next.
    InFlight,
}

/// A delivery to create with a ticket's final state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The `tickets.id`.
    pub ticket: i64,
    /// The receiver.
    pub url: String,
    /// The `webhook-id`.
    pub webhook_id: String,
    /// The event type.
    pub event_type: String,
    /// The JSON body.
    pub payload: String,
}

/// What the outbox made of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Inserted {
    /// The row is in the outbox.
    Written,
    /// One of the outbox's constraints refused the row; the text says which and why.
    Refused(String),
}

/// Inserts one delivery inside the caller's transaction. A row the outbox refuses is reported as
/// [`Inserted::Refused`], never dropped silently; in particular a (`webhook_id`, `url`) already in
/// the outbox: receivers deduplicate on the webhook-id, so a second outcome is never sent under
/// it. Other errors (the database failing) are returned.
pub(super) async fn insert(
    connection: &mut SqliteConnection,
    delivery: &NewDelivery,
    now: DateTime<Utc>,
) -> Result<Inserted, sqlx::Error> {
    let now = at(now);
    let inserted = sqlx::query(
        "INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?6)",
    )
    .bind(delivery.ticket)
    .bind(&delivery.url)
    .bind(&delivery.webhook_id)
    .bind(&delivery.event_type)
    .bind(&delivery.payload)
    .bind(&now)
    .execute(connection)
    .await;
    let Err(error) = inserted else { return Ok(Inserted::Written) };
    let Some(refusal) = error.as_database_error() else { return Err(error) };
    match refusal.kind() {
        sqlx::error::ErrorKind::UniqueViolation => Ok(Inserted::Refused(format!(
            "webhook-id {} was already issued to this receiver; a second outcome is never sent under it",
            delivery.webhook_id
        ))),
        sqlx::error::ErrorKind::CheckViolation
        | sqlx::error::ErrorKind::NotNullViolation
        | sqlx::error::ErrorKind::ForeignKeyViolation => Ok(Inserted::Refused(refusal.message().to_owned())),
        _ => Err(error),
    }
}

impl Store {
    /// The earliest `next_attempt_at` of a pending delivery (a lease counts as not due until it
    /// lapses, because claiming sets `next_attempt_at = lease_until`).
    pub async fn next_delivery_due_at(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let next: Option<String> = sqlx::query_scalar(
            "SELECT next_attempt_at FROM webhook_deliveries INDEXED BY webhook_deliveries_due
             WHERE state = 'pending' ORDER BY next_attempt_at LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        Ok(next.as_deref().and_then(crate::clock::parse_instant))
    }

    /// The webhook backlog: how many deliveries are pending and when the oldest was written.
    /// One pass over the `(state, created_at)` index.
    pub async fn webhook_backlog(&self) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
        let (count, oldest): (i64, Option<String>) = sqlx::query_as(
            "SELECT count(*), min(created_at) FROM webhook_deliveries INDEXED BY webhook_deliveries_by_state
             WHERE state = 'pending'",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok((count, oldest.as_deref().and_then(crate::clock::parse_instant)))
    }

    /// Claims up to `limit` due pending deliveries in one atomic statement, earliest first, with
    /// at most `per_url` in flight to any one receiver (counting rows other claims hold).
    ///
    /// Each claimed row gets `lease_owner = lease`, `lease_until = next_attempt_at = now +
    /// lease_for` and one more `attempts`: no other claim can take it until the lease lapses, a
    /// killed daemon's rows come due again by themselves, and an attempt that kills the daemon
    /// still counts towards the schedule.
    pub async fn claim_due_deliveries(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        lease_for: Duration,
        limit: u32,
        per_url: u32,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let now_text = at(now);
        let until = at(now + chrono::Duration::from_std(lease_for).unwrap_or(chrono::Duration::MAX));
        // `busy` counts live leases per receiver; `due` ranks each receiver's due rows, so a
        // receiver with `busy` rows in flight gets at most `per_url - busy` more.
        sqlx::query_as(
            "WITH busy AS (
                 SELECT url, count(*) AS in_flight FROM webhook_deliveries
                 WHERE lease_owner IS NOT NULL AND state = 'pending' AND lease_until > ?3
                 GROUP BY url
             ),
             due AS (
                 SELECT id, url, next_attempt_at,
                        row_number() OVER (PARTITION BY url ORDER BY next_attempt_at, id) AS rank
                 FROM webhook_deliveries INDEXED BY webhook_deliveries_due
                 WHERE state = 'pending' AND next_attempt_at <= ?3
             )
             UPDATE webhook_deliveries
             SET lease_owner = ?1, lease_until = ?2, next_attempt_at = ?2, updated_at = ?3,
                 attempts = attempts + 1
             WHERE id IN (SELECT due.id FROM due LEFT JOIN busy ON busy.url = due.url
                          WHERE due.rank + COALESCE(busy.in_flight, 0) <= ?5
                          ORDER BY due.next_attempt_at, due.id LIMIT ?4)
             RETURNING *",
        )
        .bind(&lease.0)
        .bind(&until)
        .bind(&now_text)
        .bind(i64::from(limit))
        .bind(i64::from(per_url))
        .fetch_all(&self.writer)
        .await
    }

    /// Records the outcome of an attempt and releases the lease. Returns `false` (and writes
    /// nothing) when the lease is no longer ours or the delivery is no longer pending.
    pub async fn record_attempt(
        &self,
        lease: &Lease,
        id: i64,
        now: DateTime<Utc>,
        record: &AttemptRecord,
    ) -> Result<bool, sqlx::Error> {
        let now = at(now);
        let (state, next_attempt_at, http_status, error, delivered_at) = match record {
            AttemptRecord::Delivered { http_status } => {
                (DeliveryState::Delivered, now.clone(), Some(*http_status), None, Some(now.clone()))
            }
            AttemptRecord::Retry { next_attempt_at, http_status, error } => {
                (DeliveryState::Pending, at(*next_attempt_at), *http_status, Some(error.as_str()), None)
            }
            AttemptRecord::Dead { http_status, error } => {
                (DeliveryState::Dead, now.clone(), *http_status, Some(error.as_str()), None)
            }
        };
        let updated = sqlx::query(
            "UPDATE webhook_deliveries
             SET state = ?3, next_attempt_at = ?4, last_http_status = ?5, last_error = ?6,
                 delivered_at = COALESCE(?7, delivered_at), updated_at = ?8,
                 lease_owner = NULL, lease_until = NULL
             WHERE id = ?1 AND lease_owner = ?2 AND state = 'pending'",
        )
        .bind(id)
        .bind(&lease.0)
        .bind(state.as_str())
        .bind(next_attempt_at)
        .bind(http_status.map(i64::from))
        .bind(error)
        .bind(delivered_at)
        .bind(&now)
        .execute(&self.writer)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Releases every delivery lease whose owner starts with `owner_prefix`, making those
    /// deliveries due now (graceful shutdown hands unfinished attempts to the next start at once).
    pub async fn release_deliveries(&self, owner_prefix: &str, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL, next_attempt_at = ?2
             WHERE state = 'pending' AND substr(lease_owner, 1, length(?1)) = ?1",
        )
        .bind(owner_prefix)
        .bind(at(now))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    /// Deliveries, newest first, optionally in one state.
    pub async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: u32,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM webhook_deliveries WHERE (?1 IS NULL OR state = ?1)
             ORDER BY created_at DESC, id DESC LIMIT ?2",
        )
        .bind(state.map(DeliveryState::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
    }

    /// The delivery with this ID.
    pub async fn delivery(&self, id: i64) -> Result<Option<Delivery>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM webhook_deliveries WHERE id = ?").bind(id).fetch_optional(&self.reader).await
    }

    /// Queues a delivery for one more attempt now, with the same `webhook-id` and body, whatever
    /// its state. The attempt count is kept: a delivery that had used up its schedule gets
    /// exactly one more attempt, one that stopped early (410) resumes its schedule where it
    /// stopped, and a pending one is simply brought forward. An attempt in flight is left alone.
    pub async fn resend_delivery(&self, id: i64, now: DateTime<Utc>) -> Result<Resend, sqlx::Error> {
        let now = at(now);
        let queued: Option<Delivery> = sqlx::query_as(
            "UPDATE webhook_deliveries
             SET state = 'pending', next_attempt_at = ?2, updated_at = ?2, delivered_at = NULL,
                 lease_owner = NULL, lease_until = NULL
             WHERE id = ?1 AND NOT (state = 'pending' AND lease_owner IS NOT NULL AND lease_until > ?2)
             RETURNING *",
        )
        .bind(id)
        .bind(&now)
        .fetch_optional(&self.writer)
        .await?;
        Ok(match queued {
            Some(delivery) => Resend::Queued(Box::new(delivery)),
            None if self.delivery(id).await?.is_some() => Resend::InFlight,
            None => Resend::NotFound,
        })
    }

    /// The deliveries of one ticket, oldest first.
    pub async fn deliveries_of_ticket(&self, ticket: i64) -> Result<Vec<Delivery>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM webhook_deliveries WHERE ticket = ? ORDER BY id")
            .bind(ticket)
            .fetch_all(&self.reader)
            .await
    }
}
