//! SQLite's SQL for a ticket's history: `ticket_events` and `webhook_attempts` (both written in
//! the transactions that change their rows: events by a trigger, attempts by `record_attempt`).

use super::SqliteStore;
use crate::domain::RowId;
use crate::store::history::{StoredAttempt, StoredEvent};
use crate::store::{TicketEvent, WebhookAttempt};

impl SqliteStore {
    /// The ticket's events, oldest first. A value another program wrote that cannot be read
    /// shows as the epoch or `failed`, as listings read rows.
    pub(in crate::store) async fn ticket_events(&self, id: RowId) -> Result<Vec<TicketEvent>, sqlx::Error> {
        let rows: Vec<StoredEvent> = sqlx::query_as(
            "SELECT at, kind, state, ticket_status, polls, error_code, detail FROM ticket_events
             WHERE ticket = ?1 ORDER BY id",
        )
        .bind(id.0)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(TicketEvent::from).collect())
    }

    /// The attempts of the ticket's deliveries, by delivery then attempt.
    pub(in crate::store) async fn webhook_attempts_of_ticket(
        &self,
        id: RowId,
    ) -> Result<Vec<WebhookAttempt>, sqlx::Error> {
        let rows: Vec<StoredAttempt> = sqlx::query_as(
            "SELECT a.delivery, a.attempt, a.at, a.duration_ms, a.http_status, a.error
             FROM webhook_attempts AS a JOIN webhook_deliveries AS d ON d.id = a.delivery
             WHERE d.ticket = ?1 ORDER BY a.delivery, a.id",
        )
        .bind(id.0)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(WebhookAttempt::from).collect())
    }
}
