//! SQL for the `webhook_deliveries` outbox: rows are inserted with the final state of their
//! ticket (see `Store::record_final`), then claimed, attempted and closed by the webhook loop.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::SqliteConnection;

use super::{Store, at};

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

/// Inserts one delivery inside the caller's transaction; a second insert of the same
/// (`webhook_id`, `url`) is ignored, so one outcome never gets two IDs.
pub(super) async fn insert(
    connection: &mut SqliteConnection,
    delivery: &NewDelivery,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let now = at(now);
    sqlx::query(
        "INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?6)
         ON CONFLICT (webhook_id, url) DO NOTHING",
    )
    .bind(delivery.ticket)
    .bind(&delivery.url)
    .bind(&delivery.webhook_id)
    .bind(&delivery.event_type)
    .bind(&delivery.payload)
    .bind(&now)
    .execute(connection)
    .await?;
    Ok(())
}

impl Store {
    /// The deliveries of one ticket, oldest first.
    pub async fn deliveries_of_ticket(&self, ticket: i64) -> Result<Vec<Delivery>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM webhook_deliveries WHERE ticket = ? ORDER BY id")
            .bind(ticket)
            .fetch_all(&self.reader)
            .await
    }
}
