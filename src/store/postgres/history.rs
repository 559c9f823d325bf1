//! PostgreSQL's SQL for a ticket's history: `ticket_events` (written by a trigger) and
//! `webhook_attempts` (written by `record_attempt`).

use super::{PgStore, guarded, instant_text};
use crate::domain::RowId;
use crate::store::history::{StoredAttempt, StoredEvent};
use crate::store::{TicketEvent, WebhookAttempt};

impl PgStore {
    pub(in crate::store) async fn ticket_events(&self, id: RowId) -> Result<Vec<TicketEvent>, sqlx::Error> {
        let rows: Vec<StoredEvent> = guarded!(self, connection => {
            sqlx::query_as(concat!(
                "SELECT ",
                instant_text!("at"),
                " AS at, kind, state, ticket_status, polls, error_code, detail FROM ticket_events
                 WHERE ticket = $1 ORDER BY id"
            ))
            .bind(id.0)
            .fetch_all(&mut *connection)
            .await
        })?;
        Ok(rows.into_iter().map(TicketEvent::from).collect())
    }

    pub(in crate::store) async fn webhook_attempts_of_ticket(
        &self,
        id: RowId,
    ) -> Result<Vec<WebhookAttempt>, sqlx::Error> {
        let rows: Vec<StoredAttempt> = guarded!(self, connection => {
            sqlx::query_as(concat!(
                "SELECT a.delivery, a.attempt, ",
                instant_text!("a.at"),
                " AS at, a.duration_ms, a.http_status, a.error
                 FROM webhook_attempts AS a JOIN webhook_deliveries AS d ON d.id = a.delivery
                 WHERE d.ticket = $1 ORDER BY a.delivery, a.id"
            ))
            .bind(id.0)
            .fetch_all(&mut *connection)
            .await
        })?;
        Ok(rows.into_iter().map(WebhookAttempt::from).collect())
    }
}
