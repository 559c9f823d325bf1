//! SQLite's SQL for the operator pages: keyset pages of tickets and deliveries (newest first by
//! row ID, `id < older`), and the overview's live leases and dead deliveries. The pages'
//! statements are interrupted by SQLite itself once `QUERY_DEADLINE` has passed.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{QueryBuilder, Sqlite};

use super::SqliteStore;
use crate::store::pages::QUERY_DEADLINE;
use crate::store::{Delivery, DeliveryFilter, Ticket, TicketFilter, at, row};

/// A read connection whose statements SQLite interrupts once [`QUERY_DEADLINE`] has passed (a
/// progress handler), so that a page's query that runs long stops and frees its connection
/// instead of running on after the page gave up. Hand it back with [`release`].
async fn deadline_connection(store: &SqliteStore) -> Result<PoolConnection<Sqlite>, sqlx::Error> {
    let mut connection = store.reader.acquire().await?;
    let deadline = std::time::Instant::now() + QUERY_DEADLINE;
    connection.lock_handle().await?.set_progress_handler(1_000, move || std::time::Instant::now() < deadline);
    Ok(connection)
}

/// Removes the progress handler before the connection goes back to the pool; a connection whose
/// handler cannot be removed is closed, so that it never interrupts anyone else's query.
async fn release(mut connection: PoolConnection<Sqlite>) {
    let removed = match connection.lock_handle().await {
        Ok(mut handle) => {
            handle.remove_progress_handler();
            true
        }
        Err(_) => false,
    };
    if !removed {
        drop(connection.detach());
    }
}

impl SqliteStore {
    /// One page of tickets, newest first; `limit` is already capped.
    pub(in crate::store) async fn page_tickets(
        &self,
        filter: &TicketFilter,
        limit: u32,
    ) -> Result<Vec<Ticket>, sqlx::Error> {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT * FROM tickets WHERE 1 = 1");
        if !filter.states.is_empty() {
            query.push(" AND state IN (");
            let mut states = query.separated(", ");
            for state in &filter.states {
                states.push_bind(state.as_str());
            }
            query.push(")");
        }
        for (column, value) in [
            ("workspace", &filter.workspace),
            ("namespace", &filter.namespace),
            ("ticket_id", &filter.ticket_id),
            ("error_code", &filter.error_code),
        ] {
            if let Some(value) = value {
                query.push(format_args!(" AND {column} = ")).push_bind(value.clone());
            }
        }
        if let Some(kind) = filter.kind {
            query.push(" AND kind = ").push_bind(kind.as_str());
        }
        if filter.dead_webhook {
            // Few deliveries are dead: start from them (their state index), not from the tickets.
            query.push(" AND id IN (SELECT ticket FROM webhook_deliveries WHERE state = 'dead')");
        }
        if let Some(older) = filter.older {
            query.push(" AND id < ").push_bind(older);
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
        let mut connection = deadline_connection(self).await?;
        let rows = query.build().fetch_all(&mut *connection).await;
        release(connection).await;
        Ok(rows?.iter().map(row::read_ticket_leniently).collect())
    }

    /// One page of deliveries, newest first; `limit` is already capped.
    pub(in crate::store) async fn page_deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: u32,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT * FROM webhook_deliveries WHERE 1 = 1");
        if let Some(state) = filter.state {
            query.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(event_type) = &filter.event_type {
            query.push(" AND event_type = ").push_bind(event_type.clone());
        }
        if let Some(min_attempts) = filter.min_attempts {
            query.push(" AND attempts >= ").push_bind(min_attempts);
        }
        if let Some(older) = filter.older {
            query.push(" AND id < ").push_bind(older);
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
        let mut connection = deadline_connection(self).await?;
        let rows = query.build_query_as().fetch_all(&mut *connection).await;
        release(connection).await;
        rows
    }

    /// (lease owner, tickets it holds at `now`), over the pending rows only.
    pub(in crate::store) async fn leases_by_owner(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT lease_owner, count(*) FROM tickets INDEXED BY tickets_due
             WHERE state = 'pending' AND lease_owner IS NOT NULL AND lease_until > ?1
             GROUP BY lease_owner ORDER BY lease_owner",
        )
        .bind(at(now))
        .fetch_all(&self.reader)
        .await
    }

    /// How many deliveries are dead.
    pub(in crate::store) async fn dead_deliveries(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries INDEXED BY webhook_deliveries_by_state WHERE state = 'dead'",
        )
        .fetch_one(&self.reader)
        .await
    }
}
