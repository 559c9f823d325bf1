//! `deploy --wait` support: [`Poller::follow`] polls one ticket until it is final, claiming each
//! poll with a lease exactly as the loop does, so that it cooperates with a daemon on the same
//! database.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span};

use super::{PauseCause, Poller, WAKE_INTERVAL};
use crate::domain::RowId;
use crate::store::{Lease, Ticket};

/// How [`Poller::follow`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Followed {
    /// The ticket reached a final state (this row).
    Final(Ticket),
    /// Polling is paused globally: the API refuses our credentials, signature or clock. The
    /// ticket stays pending (this row) for a later run.
    Paused(Ticket),
    /// Cancelled before the ticket finished; it stays pending (this row).
    Cancelled(Ticket),
}

impl Poller {
    /// Polls ticket row `id` until it is final, claiming each poll with a lease exactly as the loop
    /// does, so that it cooperates with a daemon on the same database: whoever claims a due poll
    /// makes it, and a final state written by either ends the wait.
    pub async fn follow(&self, id: RowId, shutdown: &CancellationToken) -> Result<Followed, sqlx::Error> {
        let mut claims: u64 = 0;
        loop {
            let row = self.store.ticket(id).await?.ok_or(sqlx::Error::RowNotFound)?;
            if !row.is_pending() {
                return Ok(Followed::Final(row));
            }
            if shutdown.is_cancelled() {
                return Ok(Followed::Cancelled(row));
            }
            let now = self.clock.now();
            claims += 1;
            let lease = Lease(format!("{}#follow-{claims}", self.owner));
            if let Some(ticket) = self.store.claim_ticket(&lease, id, now, self.poll.lease, self.poll.deadline).await? {
                let span = info_span!(
                    "ticket",
                    ticket_id = %ticket.key.ticket_id,
                    kind = %ticket.kind,
                    workspace = %ticket.key.workspace,
                    row = ticket.id.0
                );
                self.handle(ticket, &lease, None).instrument(span).await;
                // An outage is waited out (the ticket's deadline bounds it); a rejection needs a
                // person.
                if self.paused.cause() == Some(PauseCause::Rejected) {
                    let row = self.store.ticket(id).await?.ok_or(sqlx::Error::RowNotFound)?;
                    if row.is_pending() {
                        return Ok(Followed::Paused(row));
                    }
                }
                continue;
            }
            // Not due yet, or another process holds it: look again when it is due, and at least
            // every WAKE_INTERVAL to notice a final state written by someone else.
            let due = row.next_poll_at;
            let wait = (due - now).to_std().unwrap_or(Duration::ZERO).clamp(Duration::from_millis(10), WAKE_INTERVAL);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(Followed::Cancelled(row)),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
