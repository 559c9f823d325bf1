//! PostgreSQL's SQL for the `webhook_deliveries` outbox: insert with a final state, claim with
//! `SKIP LOCKED` and a lease (with at most `per_url` in flight per receiver), record an attempt,
//! list, resend.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{PgStore, guarded, instant_text};
use crate::store::deliveries::Inserted;
use crate::store::{AttemptRecord, Delivery, DeliveryState, Handoff, Lease, NewDelivery, Resend, at, lease_end};

/// Every column of `webhook_deliveries` as [`Delivery`] reads it, from the table aliased `d`.
pub(super) static DELIVERY_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    [
        "d.id, d.ticket, d.url, d.webhook_id, d.event_type, d.payload::text AS payload, d.state, d.attempts",
        concat!(instant_text!("d.next_attempt_at"), " AS next_attempt_at"),
        "d.last_http_status, d.last_error",
        concat!(instant_text!("d.delivered_at"), " AS delivered_at"),
        concat!(instant_text!("d.created_at"), " AS created_at"),
        concat!(instant_text!("d.updated_at"), " AS updated_at"),
        "d.lease_owner",
        concat!(instant_text!("d.lease_until"), " AS lease_until"),
    ]
    .join(", ")
});

/// Inserts one delivery inside the caller's transaction, under a savepoint so that a refused row
/// (see `sqlite::deliveries::insert`) leaves the transaction usable. With a `handoff` the row is
/// written leased to it, as on SQLite.
pub(super) async fn insert(
    connection: &mut PgConnection,
    delivery: &NewDelivery,
    now: DateTime<Utc>,
    handoff: Option<&Handoff>,
) -> Result<Inserted, sqlx::Error> {
    sqlx::query("SAVEPOINT delivery").execute(&mut *connection).await?;
    let inserted = sqlx::query(
        "INSERT INTO webhook_deliveries
             (ticket, url, webhook_id, event_type, payload, next_attempt_at, created_at, updated_at, lease_owner, lease_until)
         VALUES ($1, $2, $3, $4, $5::json, COALESCE($8::timestamptz, $6::timestamptz), $6::timestamptz,
                 $6::timestamptz, $7, $8::timestamptz)",
    )
    .bind(delivery.ticket)
    .bind(&delivery.url)
    .bind(&delivery.webhook_id)
    .bind(&delivery.event_type)
    .bind(&delivery.payload)
    .bind(at(now))
    .bind(handoff.map(|handoff| handoff.lease.0.as_str()))
    .bind(handoff.map(|handoff| at(handoff.until(now))))
    .execute(&mut *connection)
    .await;
    let Err(refusal) = inserted else {
        sqlx::query("RELEASE SAVEPOINT delivery").execute(&mut *connection).await?;
        return Ok(Inserted::Written);
    };
    let reason = match refusal.as_database_error().map(|database| (database.kind(), database.code())) {
        Some((sqlx::error::ErrorKind::UniqueViolation, _)) => format!(
            "webhook-id {} was already issued to this receiver; a second outcome is never sent under it",
            delivery.webhook_id
        ),
        Some((
            sqlx::error::ErrorKind::CheckViolation
            | sqlx::error::ErrorKind::NotNullViolation
            | sqlx::error::ErrorKind::ForeignKeyViolation,
            _,
        )) => refusal.as_database_error().map(|database| database.message().to_owned()).unwrap_or_default(),
        // 22P02: the payload is not JSON.
        Some((_, Some(code))) if code == "22P02" => {
            refusal.as_database_error().map(|database| database.message().to_owned()).unwrap_or_default()
        }
        _ => return Err(refusal),
    };
    sqlx::query("ROLLBACK TO SAVEPOINT delivery").execute(&mut *connection).await?;
    Ok(Inserted::Refused(reason))
}

impl PgStore {
    /// See `sqlite::deliveries`: with a handoff and `now`, `now` when a delivery not yet due is
    /// handed to it.
    pub(in crate::store) async fn next_delivery_due_at(
        &self,
        handoff: Option<(&Handoff, DateTime<Utc>)>,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let sql = format!(
            "SELECT {} FROM (
                 SELECT CASE
                     WHEN first.due > $2::timestamptz AND EXISTS (
                         SELECT 1 FROM webhook_deliveries
                         WHERE state = 'pending' AND next_attempt_at > $2::timestamptz
                           AND next_attempt_at <= $3::timestamptz AND lease_owner = $1
                     ) THEN $2::timestamptz
                     ELSE first.due
                 END AS due
                 FROM (SELECT next_attempt_at AS due FROM webhook_deliveries
                       WHERE state = 'pending' ORDER BY next_attempt_at, id LIMIT 1) AS first
             ) AS next",
            instant_text!("next.due")
        );
        let next: Option<String> = guarded!(self, connection => {
            sqlx::query_scalar(&sql)
                .bind(handoff.map(|(handoff, _)| handoff.lease.0.as_str()))
                .bind(handoff.map(|(_, now)| at(now)))
                .bind(handoff.map(|(handoff, now)| at(handoff.until(now))))
                .fetch_optional(&mut *connection)
                .await
        })?;
        Ok(next.as_deref().and_then(crate::clock::parse_instant))
    }

    /// `busy` counts live leases per receiver, `due` ranks each receiver's due rows; the rows
    /// picked are locked with `SKIP LOCKED`, and the update checks again that each is still due,
    /// so a row another host claimed meanwhile is left out.
    /// With a `handoff`, rows leased to it are claimed too (see `sqlite::deliveries`).
    pub(in crate::store) async fn claim_due_deliveries(
        &self,
        lease: &Lease,
        handoff: Option<&Handoff>,
        now: DateTime<Utc>,
        lease_for: Duration,
        limit: u32,
        per_url: u32,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let until = lease_end(now, lease_for);
        let horizon = at(handoff.map_or(now, |handoff| handoff.until(now)));
        let sql = format!(
            "WITH busy AS (
                 SELECT url, count(*) AS in_flight FROM webhook_deliveries
                 WHERE lease_owner IS NOT NULL AND state = 'pending' AND lease_until > $3::timestamptz
                   AND attempts > 0
                 GROUP BY url
             ),
             due AS (
                 SELECT id, url, next_attempt_at,
                        row_number() OVER (PARTITION BY url ORDER BY next_attempt_at, id) AS rank
                 FROM webhook_deliveries
                 WHERE state = 'pending' AND next_attempt_at <= $7::timestamptz
                   AND (next_attempt_at <= $3::timestamptz OR lease_owner = $6)
             ),
             chosen AS (
                 SELECT due.id FROM due LEFT JOIN busy ON busy.url = due.url
                 WHERE due.rank + COALESCE(busy.in_flight, 0) <= $5
                 ORDER BY due.next_attempt_at, due.id LIMIT $4
             ),
             locked AS (
                 SELECT webhook_deliveries.id FROM webhook_deliveries JOIN chosen USING (id)
                 FOR UPDATE OF webhook_deliveries SKIP LOCKED
             ),
             claimed AS (
                 UPDATE webhook_deliveries
                 SET lease_owner = $1, lease_until = $2::timestamptz, next_attempt_at = $2::timestamptz,
                     updated_at = $3::timestamptz, attempts = attempts + 1
                 FROM locked
                 WHERE webhook_deliveries.id = locked.id AND webhook_deliveries.state = 'pending'
                   AND (webhook_deliveries.next_attempt_at <= $3::timestamptz OR webhook_deliveries.lease_owner = $6)
                 RETURNING webhook_deliveries.*
             )
             SELECT {} FROM claimed AS d ORDER BY d.id",
            *DELIVERY_COLUMNS
        );
        guarded!(self, connection => {
            sqlx::query_as(&sql)
                .bind(&lease.0)
                .bind(&until)
                .bind(at(now))
                .bind(i64::from(limit))
                .bind(i64::from(per_url))
                .bind(handoff.map(|handoff| handoff.lease.0.as_str()))
                .bind(&horizon)
                .fetch_all(&mut *connection)
                .await
        })
    }

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
        // One statement: the outcome and its `webhook_attempts` row commit together.
        let recorded: Option<i64> = guarded!(self, connection => {
            sqlx::query_scalar(
                "WITH d AS (
                     UPDATE webhook_deliveries
                     SET state = $3, next_attempt_at = $4::timestamptz, last_http_status = $5, last_error = $6,
                         delivered_at = COALESCE($7::timestamptz, delivered_at), updated_at = $8::timestamptz,
                         lease_owner = NULL, lease_until = NULL
                     WHERE id = $1 AND lease_owner = $2 AND state = 'pending'
                     RETURNING id, attempts
                 )
                 INSERT INTO webhook_attempts (delivery, attempt, at, duration_ms, http_status, error)
                 SELECT d.id, greatest(d.attempts, 1), $9::timestamptz, $10, $5, left($6, 300) FROM d
                 RETURNING delivery",
            )
            .bind(id)
            .bind(&lease.0)
            .bind(state.as_str())
            .bind(&next_attempt_at)
            .bind(http_status.map(i64::from))
            .bind(error)
            .bind(&delivered_at)
            .bind(&now)
            .bind(&started_at)
            .bind(took_ms)
            .fetch_optional(&mut *connection)
            .await
        })?;
        Ok(recorded.is_some())
    }

    pub(in crate::store) async fn release_deliveries(
        &self,
        owner_prefix: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        guarded!(self, connection => {
            sqlx::query(
                "UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL, next_attempt_at = $2::timestamptz
                 WHERE state = 'pending' AND starts_with(lease_owner, $1)",
            )
            .bind(owner_prefix)
            .bind(at(now))
            .execute(&mut *connection)
            .await
            .map(|done| done.rows_affected())
        })
    }

    pub(in crate::store) async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: u32,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let sql = format!(
            "SELECT {} FROM webhook_deliveries AS d WHERE ($1::text IS NULL OR d.state = $1)
             ORDER BY d.created_at DESC, d.id DESC LIMIT $2",
            *DELIVERY_COLUMNS
        );
        guarded!(self, connection => {
            sqlx::query_as(&sql)
                .bind(state.map(DeliveryState::as_str))
                .bind(i64::from(limit))
                .fetch_all(&mut *connection)
                .await
        })
    }

    pub(in crate::store) async fn delivery(&self, id: i64) -> Result<Option<Delivery>, sqlx::Error> {
        let sql = format!("SELECT {} FROM webhook_deliveries AS d WHERE d.id = $1", *DELIVERY_COLUMNS);
        guarded!(self, connection => sqlx::query_as(&sql).bind(id).fetch_optional(&mut *connection).await)
    }

    pub(in crate::store) async fn resend_delivery(&self, id: i64, now: DateTime<Utc>) -> Result<Resend, sqlx::Error> {
        let sql = format!(
            "WITH d AS (
                 UPDATE webhook_deliveries
                 SET state = 'pending', next_attempt_at = $2::timestamptz, updated_at = $2::timestamptz,
                     delivered_at = NULL, lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 AND NOT (state = 'pending' AND lease_owner IS NOT NULL AND lease_until > $2::timestamptz)
                 RETURNING *
             )
             SELECT {} FROM d",
            *DELIVERY_COLUMNS
        );
        let queued: Option<Delivery> = guarded!(self, connection => sqlx::query_as(&sql).bind(id).bind(at(now)).fetch_optional(&mut *connection).await)?;
        Ok(match queued {
            Some(delivery) => Resend::Queued(Box::new(delivery)),
            None if self.delivery(id).await?.is_some() => Resend::InFlight,
            None => Resend::NotFound,
        })
    }

    pub(in crate::store) async fn deliveries_of_ticket(&self, ticket: i64) -> Result<Vec<Delivery>, sqlx::Error> {
        let sql =
            format!("SELECT {} FROM webhook_deliveries AS d WHERE d.ticket = $1 ORDER BY d.id", *DELIVERY_COLUMNS);
        guarded!(self, connection => sqlx::query_as(&sql).bind(ticket).fetch_all(&mut *connection).await)
    }
}
