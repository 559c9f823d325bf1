//! SQLite's SQL for the `webhook_deliveries` outbox: insert with a final state, claim with a
//! lease, record an attempt, list, resend.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::SqliteStore;
use crate::store::deliveries::Inserted;
use crate::store::{AttemptRecord, Delivery, DeliveryState, Handoff, Lease, NewDelivery, Resend, at, lease_end};

/// Inserts one delivery inside the caller's transaction. A row the outbox refuses is reported as
/// [`Inserted::Refused`], never dropped silently; in particular a (`webhook_id`, `url`) already in
/// the outbox: receivers deduplicate on the webhook-id, so a second outcome is never sent under
/// it. Other errors (the database failing) are returned. With a `handoff` the row is written
/// leased to it (`lease_until = next_attempt_at = now + lease_for`, see [`Handoff`]).
pub(in crate::store) async fn insert(
    connection: &mut SqliteConnection,
    delivery: &NewDelivery,
    now: DateTime<Utc>,
    handoff: Option<&Handoff>,
) -> Result<Inserted, sqlx::Error> {
    let until = handoff.map(|handoff| at(handoff.until(now)));
    let now = at(now);
    let inserted = sqlx::query(
        "INSERT INTO webhook_deliveries
             (ticket, url, webhook_id, event_type, payload, next_attempt_at, created_at, updated_at, lease_owner, lease_until)
         VALUES (?1, ?2, ?3, ?4, ?5, COALESCE(?8, ?6), ?6, ?6, ?7, ?8)",
    )
    .bind(delivery.ticket)
    .bind(&delivery.url)
    .bind(&delivery.webhook_id)
    .bind(&delivery.event_type)
    .bind(&delivery.payload)
    .bind(&now)
    .bind(handoff.map(|handoff| handoff.lease.0.as_str()))
    .bind(&until)
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

impl SqliteStore {
    /// The earliest `next_attempt_at` of a pending delivery (a lease counts as not due until it
    /// lapses, because claiming sets `next_attempt_at = lease_until`); with a handoff and `now`,
    /// `now` when a delivery not yet due is handed to it. Handed rows lie within one lease of
    /// `now`, so that look reads only the index range up to `now + lease_for`.
    pub(in crate::store) async fn next_delivery_due_at(
        &self,
        handoff: Option<(&Handoff, DateTime<Utc>)>,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let next: Option<String> = sqlx::query_scalar(
            "SELECT CASE
                 WHEN first.due > ?2 AND EXISTS (
                     SELECT 1 FROM webhook_deliveries INDEXED BY webhook_deliveries_due
                     WHERE state = 'pending' AND next_attempt_at > ?2 AND next_attempt_at <= ?3 AND lease_owner = ?1
                 ) THEN ?2
                 ELSE first.due
             END
             FROM (SELECT next_attempt_at AS due FROM webhook_deliveries INDEXED BY webhook_deliveries_due
                   WHERE state = 'pending' ORDER BY next_attempt_at LIMIT 1) AS first",
        )
        .bind(handoff.map(|(handoff, _)| handoff.lease.0.as_str()))
        .bind(handoff.map(|(_, now)| at(now)))
        .bind(handoff.map(|(handoff, now)| at(handoff.until(now))))
        .fetch_optional(&self.reader)
        .await?;
        Ok(next.as_deref().and_then(crate::clock::parse_instant))
    }

    /// How many deliveries are pending and when the oldest was written: one pass over the
    /// `(state, created_at)` index.
    pub(in crate::store) async fn webhook_backlog(&self) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
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
    ///
    /// With a `handoff`, rows leased to it are claimed too, whatever their `next_attempt_at`.
    pub(in crate::store) async fn claim_due_deliveries(
        &self,
        lease: &Lease,
        handoff: Option<&Handoff>,
        now: DateTime<Utc>,
        lease_for: Duration,
        limit: u32,
        per_url: u32,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let now_text = at(now);
        let until = lease_end(now, lease_for);
        // Handed rows lie within one lease of now: the index range read stops there.
        let horizon = handoff.map_or_else(|| now_text.clone(), |handoff| at(handoff.until(now)));
        // `busy` counts live leases of attempts in flight per receiver (a handed row not yet
        // claimed has made no attempt); `due` ranks each receiver's due rows, so a receiver with
        // `busy` rows in flight gets at most `per_url - busy` more.
        sqlx::query_as(
            "WITH busy AS (
                 SELECT url, count(*) AS in_flight FROM webhook_deliveries
                 WHERE lease_owner IS NOT NULL AND state = 'pending' AND lease_until > ?3 AND attempts > 0
                 GROUP BY url
             ),
             due AS (
                 SELECT id, url, next_attempt_at,
                        row_number() OVER (PARTITION BY url ORDER BY next_attempt_at, id) AS rank
                 FROM webhook_deliveries INDEXED BY webhook_deliveries_due
                 WHERE state = 'pending' AND next_attempt_at <= ?7 AND (next_attempt_at <= ?3 OR lease_owner = ?6)
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
        .bind(handoff.map(|handoff| handoff.lease.0.as_str()))
        .bind(&horizon)
        .fetch_all(&self.writer)
        .await
    }

    /// Records the outcome of an attempt and releases the lease. Returns `false` (and writes
    /// nothing) when the lease is no longer ours or the delivery is no longer pending.
    pub(in crate::store) async fn record_attempt(
        &self,
        lease: &Lease,
        id: i64,
        now: DateTime<Utc>,
        took: Duration,
        record: &AttemptRecord,
    ) -> Result<bool, sqlx::Error> {
        let started_at = at(now - chrono::Duration::from_std(took).unwrap_or_default());
        let took_ms = i64::try_from(took.as_millis()).unwrap_or(i64::MAX);
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
        let mut transaction = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let attempt: Option<i64> = sqlx::query_scalar(
            "UPDATE webhook_deliveries
             SET state = ?3, next_attempt_at = ?4, last_http_status = ?5, last_error = ?6,
                 delivered_at = COALESCE(?7, delivered_at), updated_at = ?8,
                 lease_owner = NULL, lease_until = NULL
             WHERE id = ?1 AND lease_owner = ?2 AND state = 'pending'
             RETURNING attempts",
        )
        .bind(id)
        .bind(&lease.0)
        .bind(state.as_str())
        .bind(next_attempt_at)
        .bind(http_status.map(i64::from))
        .bind(error)
        .bind(delivered_at)
        .bind(&now)
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(attempt) = attempt else {
            transaction.rollback().await?;
            return Ok(false);
        };
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery, attempt, at, duration_ms, http_status, error)
             VALUES (?1, max(?2, 1), ?3, ?4, ?5, substr(?6, 1, 300))",
        )
        .bind(id)
        .bind(attempt)
        .bind(started_at)
        .bind(took_ms)
        .bind(http_status.map(i64::from))
        .bind(error)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(true)
    }

    /// Releases every delivery lease whose owner starts with `owner_prefix`, making those
    /// deliveries due now (graceful shutdown hands unfinished attempts to the next start at once).
    pub(in crate::store) async fn release_deliveries(
        &self,
        owner_prefix: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
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
    pub(in crate::store) async fn list_deliveries(
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
    pub(in crate::store) async fn delivery(&self, id: i64) -> Result<Option<Delivery>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM webhook_deliveries WHERE id = ?").bind(id).fetch_optional(&self.reader).await
    }

    /// Queues a delivery for one more attempt now, with the same `webhook-id` and body, whatever
    /// its state. The attempt count is kept: a delivery that had used up its schedule gets
    /// exactly one more attempt, one that stopped early (410) resumes its schedule where it
    /// stopped, and a pending one is simply brought forward. An attempt in flight is left alone.
    pub(in crate::store) async fn resend_delivery(&self, id: i64, now: DateTime<Utc>) -> Result<Resend, sqlx::Error> {
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
    pub(in crate::store) async fn deliveries_of_ticket(&self, ticket: i64) -> Result<Vec<Delivery>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM webhook_deliveries WHERE ticket = ? ORDER BY id")
            .bind(ticket)
            .fetch_all(&self.reader)
            .await
    }
}
