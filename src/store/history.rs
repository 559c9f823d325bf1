//! A ticket's history: its `ticket_events` (written by a trigger whenever the row changes in a
//! way worth showing) and its deliveries' `webhook_attempts` (written with each attempt's
//! outcome). Types and dispatch here; the SQL is in each backend's `history.rs`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Store, dispatch};
use crate::clock::parse_instant;
use crate::domain::{RowId, TicketState, TicketStatus};

/// One change of a ticket, as the row looked after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TicketEvent {
    /// When it happened.
    #[serde(serialize_with = "super::row::instant")]
    pub at: DateTime<Utc>,
    /// `first_poll`, `status`, `error_start`, `error_end`, `pause`, `lease_lapse`, `retry`,
    /// `cancel` or `final`.
    pub kind: String,
    /// The state after the change.
    pub state: TicketState,
    /// The ticket status after the change.
    pub ticket_status: Option<TicketStatus>,
    /// Result requests made so far.
    pub polls: i64,
    /// The error code after the change.
    pub error_code: Option<String>,
    /// The error message, the previous status, or the lapsed lease's owner.
    pub detail: Option<String>,
}

/// One attempt of a webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookAttempt {
    /// The delivery's ID.
    pub delivery: i64,
    /// 1 for the delivery's first attempt.
    pub attempt: i64,
    /// When the request started.
    #[serde(serialize_with = "super::row::instant")]
    pub at: DateTime<Utc>,
    /// How long it took, in milliseconds.
    pub duration_ms: i64,
    /// The receiver's HTTP status, if it answered.
    pub http_status: Option<i64>,
    /// What went wrong, shortened.
    pub error: Option<String>,
}

/// A `ticket_events` row as both backends read it (times as canonical text).
#[derive(sqlx::FromRow)]
pub(super) struct StoredEvent {
    at: String,
    kind: String,
    state: String,
    ticket_status: Option<String>,
    polls: i64,
    error_code: Option<String>,
    detail: Option<String>,
}

/// A `webhook_attempts` row as both backends read it (times as canonical text).
#[derive(sqlx::FromRow)]
pub(super) struct StoredAttempt {
    delivery: i64,
    attempt: i64,
    at: String,
    duration_ms: i64,
    http_status: Option<i64>,
    error: Option<String>,
}

impl From<StoredEvent> for TicketEvent {
    /// A value another program wrote that cannot be read shows as the epoch or `failed`, as
    /// listings read rows.
    fn from(row: StoredEvent) -> TicketEvent {
        TicketEvent {
            at: parse_instant(&row.at).unwrap_or_default(),
            kind: row.kind,
            state: row.state.parse().unwrap_or(TicketState::Failed),
            ticket_status: row.ticket_status.as_deref().map(TicketStatus::from_wire),
            polls: row.polls,
            error_code: row.error_code,
            detail: row.detail,
        }
    }
}

impl From<StoredAttempt> for WebhookAttempt {
    fn from(row: StoredAttempt) -> WebhookAttempt {
        WebhookAttempt {
            delivery: row.delivery,
            attempt: row.attempt,
            at: parse_instant(&row.at).unwrap_or_default(),
            duration_ms: row.duration_ms,
            http_status: row.http_status,
            error: row.error,
        }
    }
}

impl Store {
    /// The ticket's events, oldest first.
    pub async fn ticket_events(&self, id: RowId) -> Result<Vec<TicketEvent>, sqlx::Error> {
        dispatch!(self, backend => backend.ticket_events(id).await)
    }

    /// The attempts of every delivery of the ticket, by delivery then attempt.
    pub async fn webhook_attempts_of_ticket(&self, id: RowId) -> Result<Vec<WebhookAttempt>, sqlx::Error> {
        dispatch!(self, backend => backend.webhook_attempts_of_ticket(id).await)
    }
}
