//! Retention on PostgreSQL, run by every host with no leader: each batch is one transaction that
//! first takes `pg_try_advisory_xact_lock`; a host that does not get it skips the round, so the
//! deleting transaction never runs on two hosts at once. Rows are picked with `SKIP LOCKED`.

use chrono::{DateTime, Utc};

use super::{PgStore, guarded};
use crate::store::{Purged, at};

/// The advisory lock key of retention ("flink-ticketd retention", folded to 64 bits).
const RETENTION_LOCK: i64 = 0x666c_696e_6b72_6574;

impl PgStore {
    pub(in crate::store) async fn purge_finished_batch(
        &self,
        finished_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Purged, sqlx::Error> {
        guarded!(self, connection => {
            let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(RETENTION_LOCK)
                .fetch_one(&mut *transaction)
                .await?;
            if !locked {
                tracing::debug!("another host is deleting old tickets; skipping this round");
                transaction.rollback().await?;
                return Ok(Purged::default());
            }
            let (tickets, deliveries): (i64, i64) = sqlx::query_as(
                "WITH doomed AS (
                     SELECT id FROM tickets
                     WHERE state <> 'pending' AND finished_at < $1::timestamptz
                       AND NOT EXISTS (SELECT 1 FROM webhook_deliveries
                                       WHERE webhook_deliveries.ticket = tickets.id
                                         AND webhook_deliveries.state = 'pending')
                     ORDER BY finished_at LIMIT $2
                     FOR UPDATE SKIP LOCKED
                 ),
                 gone_deliveries AS (
                     DELETE FROM webhook_deliveries WHERE state <> 'pending' AND ticket IN (SELECT id FROM doomed)
                     RETURNING 1
                 ),
                 gone_tickets AS (
                     DELETE FROM tickets WHERE state <> 'pending' AND id IN (SELECT id FROM doomed) RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM gone_tickets), (SELECT count(*) FROM gone_deliveries)",
            )
            .bind(at(finished_before))
            .bind(i64::from(limit))
            .fetch_one(&mut *transaction)
            .await?;
            transaction.commit().await?;
            Ok(Purged {
                tickets: u64::try_from(tickets).unwrap_or_default(),
                deliveries: u64::try_from(deliveries).unwrap_or_default(),
            })
        })
    }

    /// Nothing to do: autovacuum reclaims space and keeps the planner's statistics fresh.
    pub(in crate::store) async fn checkpoint_and_optimize(&self) -> Result<(), sqlx::Error> {
        Ok(())
    }
}
