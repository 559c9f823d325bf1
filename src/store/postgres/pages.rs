//! PostgreSQL's SQL for the operator pages: keyset pages of tickets and deliveries (newest first
//! by id, `id < older`), and the overview's live leases and dead deliveries. Each runs under the
//! store's call timeout on its own connection, like every other call.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};

use super::deliveries::DELIVERY_COLUMNS;
use super::tickets::{TICKET_COLUMNS, read};
use super::{PgStore, guarded};
use crate::store::{Delivery, DeliveryFilter, Ticket, TicketFilter, at};

impl PgStore {
    pub(in crate::store) async fn page_tickets(
        &self,
        filter: &TicketFilter,
        limit: u32,
    ) -> Result<Vec<Ticket>, sqlx::Error> {
        let mut query =
            QueryBuilder::<Postgres>::new(format!("SELECT {} FROM tickets AS t WHERE true", *TICKET_COLUMNS));
        if !filter.states.is_empty() {
            query
                .push(" AND t.state = ANY(")
                .push_bind(filter.states.iter().map(|state| state.as_str()).collect::<Vec<_>>())
                .push(")");
        }
        for (column, value) in [
            ("t.workspace", &filter.workspace),
            ("t.namespace", &filter.namespace),
            ("t.ticket_id", &filter.ticket_id),
            ("t.error_code", &filter.error_code),
        ] {
            if let Some(value) = value {
                query.push(format_args!(" AND {column} = ")).push_bind(value.clone());
            }
        }
        if let Some(kind) = filter.kind {
            query.push(" AND t.kind = ").push_bind(kind.as_str());
        }
        if filter.dead_webhook {
            query.push(" AND t.id IN (SELECT ticket FROM webhook_deliveries WHERE state = 'dead')");
        }
        if let Some(older) = filter.older {
            query.push(" AND t.id < ").push_bind(older);
        }
        query.push(" ORDER BY t.id DESC LIMIT ").push_bind(i64::from(limit));
        let rows = guarded!(self, connection => query.build().fetch_all(&mut *connection).await)?;
        rows.iter().map(read).collect()
    }

    pub(in crate::store) async fn page_deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: u32,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {} FROM webhook_deliveries AS d WHERE true",
            *DELIVERY_COLUMNS
        ));
        if let Some(state) = filter.state {
            query.push(" AND d.state = ").push_bind(state.as_str());
        }
        if let Some(event_type) = &filter.event_type {
            query.push(" AND d.event_type = ").push_bind(event_type.clone());
        }
        if let Some(min_attempts) = filter.min_attempts {
            query.push(" AND d.attempts >= ").push_bind(min_attempts);
        }
        if let Some(older) = filter.older {
            query.push(" AND d.id < ").push_bind(older);
        }
        query.push(" ORDER BY d.id DESC LIMIT ").push_bind(i64::from(limit));
        guarded!(self, connection => query.build_query_as().fetch_all(&mut *connection).await)
    }

    pub(in crate::store) async fn leases_by_owner(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        guarded!(self, connection => {
            sqlx::query_as(
                "SELECT lease_owner, count(*) FROM tickets
                 WHERE state = 'pending' AND lease_owner IS NOT NULL AND lease_until > $1::timestamptz
                 GROUP BY lease_owner ORDER BY lease_owner",
            )
            .bind(at(now))
            .fetch_all(&mut *connection)
            .await
        })
    }

    pub(in crate::store) async fn dead_deliveries(&self) -> Result<i64, sqlx::Error> {
        guarded!(self, connection => {
            sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE state = 'dead'")
                .fetch_one(&mut *connection)
                .await
        })
    }

    pub(in crate::store) async fn webhook_backlog(&self) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
        let (count, oldest): (i64, Option<String>) = guarded!(self, connection => {
            sqlx::query_as(concat!(
                "SELECT count(*), ",
                super::instant_text!("min(created_at)"),
                " FROM webhook_deliveries WHERE state = 'pending'"
            ))
            .fetch_one(&mut *connection)
            .await
        })?;
        Ok((count, oldest.as_deref().and_then(crate::clock::parse_instant)))
    }
}
