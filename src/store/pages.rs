//! The operator pages' queries (the SQL is in each backend's `pages.rs`): tickets and deliveries filtered and paged newest first by keyset
//! (`id < older`, never an `OFFSET` and never a `COUNT(*)` per page), and the overview's few
//! aggregates. Every page is capped at [`MAX_PAGE`] rows, and every query here runs on the read
//! pool, so that the pages never hold the writer the loops need.

use chrono::{DateTime, Utc};

use super::deliveries::{Delivery, DeliveryState};
use super::{Store, dispatch};
use crate::domain::{TicketKind, TicketState};
use crate::store::Ticket;

/// The most rows one page may ask for.
pub const MAX_PAGE: u32 = 500;

/// The longest one page's statement may run on SQLite before SQLite interrupts it (on
/// PostgreSQL, `database.statement_timeout` and the store's call timeout bound it).
pub const QUERY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(4);

/// What the tickets page filters on. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketFilter {
    /// Any of these states (none: every state).
    pub states: Vec<TicketState>,
    /// Only this kind.
    pub kind: Option<TicketKind>,
    /// Exact workspace.
    pub workspace: Option<String>,
    /// Exact namespace.
    pub namespace: Option<String>,
    /// Exact ticket ID.
    pub ticket_id: Option<String>,
    /// Exact last error code.
    pub error_code: Option<String>,
    /// Only tickets with at least one dead webhook delivery.
    pub dead_webhook: bool,
    /// Only rows older than this row ID (the `older` link of the previous page).
    pub older: Option<i64>,
}

/// What the deliveries page filters on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Only this state.
    pub state: Option<DeliveryState>,
    /// Only this event type (`ticket.succeeded`, ...).
    pub event_type: Option<String>,
    /// Only deliveries with at least this many attempts.
    pub min_attempts: Option<i64>,
    /// Only rows older than this delivery ID.
    pub older: Option<i64>,
}

/// The overview's view of the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overview {
    /// (state, count) of `tickets`; a state another program wrote that is not one is left out.
    pub tickets_by_state: Vec<(TicketState, i64)>,
    /// The earliest due time of an unleased pending ticket.
    pub next_due_at: Option<DateTime<Utc>>,
    /// (lease owner, tickets it holds now).
    pub leases: Vec<(String, i64)>,
    /// Pending webhook deliveries.
    pub webhook_backlog: i64,
    /// When the oldest of them was written.
    pub webhook_oldest: Option<DateTime<Utc>>,
    /// Dead webhook deliveries.
    pub webhook_dead: i64,
}

impl Store {
    /// One page of tickets matching `filter`, newest (highest row ID) first, at most `limit`
    /// (capped at [`MAX_PAGE`]) rows.
    pub async fn page_tickets(&self, filter: &TicketFilter, limit: u32) -> Result<Vec<Ticket>, sqlx::Error> {
        dispatch!(self, backend => backend.page_tickets(filter, limit.clamp(1, MAX_PAGE)).await)
    }

    /// One page of deliveries matching `filter`, newest first, at most `limit` (capped) rows.
    pub async fn page_deliveries(&self, filter: &DeliveryFilter, limit: u32) -> Result<Vec<Delivery>, sqlx::Error> {
        dispatch!(self, backend => backend.page_deliveries(filter, limit.clamp(1, MAX_PAGE)).await)
    }

    /// The overview's aggregates: tickets by state, the earliest due time, the live leases by
    /// owner at `now`, and the webhook backlog.
    pub async fn overview(&self, now: DateTime<Utc>) -> Result<Overview, sqlx::Error> {
        let tickets_by_state = self
            .count_tickets_by_state()
            .await?
            .into_iter()
            .filter_map(|(state, count)| state.parse().ok().map(|state| (state, count)))
            .collect();
        let next_due_at = self.next_due_at().await?;
        let leases = dispatch!(self, backend => backend.leases_by_owner(now).await)?;
        let (webhook_backlog, webhook_oldest) = self.webhook_backlog().await?;
        let webhook_dead = dispatch!(self, backend => backend.dead_deliveries().await)?;
        Ok(Overview { tickets_by_state, next_due_at, leases, webhook_backlog, webhook_oldest, webhook_dead })
    }
}
