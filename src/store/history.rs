//! A ticket's history: its `ticket_events` (written by a trigger whenever the row changes in a
//! way worth showing) and its deliveries' `webhook_attempts` (written with each attempt's
//! outcome). Types and dispatch here; the SQL is in each backend's `history.rs`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Store, dispatch};
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
