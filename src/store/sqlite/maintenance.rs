//! Upkeep of the SQLite file: deleting old finished tickets in small batches, then checkpointing
//! the WAL and refreshing the planner's statistics.

use chrono::{DateTime, Utc};

use super::SqliteStore;
use crate::store::{Purged, at, retry_when_busy};

impl SqliteStore {
    /// Deletes up to `limit` finished tickets (any state but `pending`) whose `finished_at` is
    /// before `finished_before`, oldest first, with their webhook deliveries, in one short
    /// `BEGIN IMMEDIATE` transaction. A ticket that still has a pending delivery is kept until
    /// that delivery is delivered or dead. Returns what it deleted; fewer than `limit` tickets
    /// means nothing more is due.
    pub(in crate::store) async fn purge_finished_batch(
        &self,
        finished_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Purged, sqlx::Error> {
        let before = at(finished_before);
        retry_when_busy(|| async {
            let mut transaction = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM tickets INDEXED BY tickets_finished
                 WHERE state <> 'pending' AND finished_at < ?1
                   AND NOT EXISTS (SELECT 1 FROM webhook_deliveries
                                   WHERE webhook_deliveries.ticket = tickets.id AND webhook_deliveries.state = 'pending')
                 ORDER BY finished_at LIMIT ?2",
            )
            .bind(&before)
            .bind(i64::from(limit))
            .fetch_all(&mut *transaction)
            .await?;
            if ids.is_empty() {
                transaction.rollback().await?;
                return Ok(Purged::default());
            }
            let ids = serde_json::to_string(&ids).expect("a list of integers serialises to JSON");
            // The foreign key would cascade; deleting the deliveries first counts them.
            let deliveries = sqlx::query(
                "DELETE FROM webhook_deliveries WHERE state <> 'pending'
                 AND ticket IN (SELECT value FROM json_each(?1))",
            )
            .bind(&ids)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            let tickets = sqlx::query(
                "DELETE FROM tickets WHERE state <> 'pending' AND id IN (SELECT value FROM json_each(?1))",
            )
            .bind(&ids)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            transaction.commit().await?;
            Ok(Purged { tickets, deliveries })
        })
        .await
    }

    /// Moves the WAL back into the database file and truncates it, then lets SQLite refresh the
    /// statistics its planner uses (`PRAGMA optimize`). Pages freed by deletions are reused by
    /// later inserts; the file itself does not shrink.
    pub(in crate::store) async fn checkpoint_and_optimize(&self) -> Result<(), sqlx::Error> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await?;
        sqlx::query("PRAGMA optimize").execute(&self.writer).await?;
        Ok(())
    }
}
