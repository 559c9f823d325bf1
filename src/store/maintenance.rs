//! Upkeep of the database: deleting old finished tickets in small batches, then letting the
//! database reclaim space and refresh its statistics. Called by `crate::retention`.

use chrono::{DateTime, Utc};

use super::{Store, dispatch};

/// What one batch of [`Store::purge_finished_batch`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Ticket rows.
    pub tickets: u64,
    /// Their webhook deliveries (delivered or dead; never pending).
    pub deliveries: u64,
}

impl Store {
    /// Deletes up to `limit` finished tickets (any state but `pending`) whose `finished_at` is
    /// before `finished_before`, oldest first, with their webhook deliveries, in one short
    /// transaction. A ticket that still has a pending delivery is kept until that delivery is
    /// delivered or dead. Returns what it deleted; fewer than `limit` tickets means nothing more
    /// is due.
    pub async fn purge_finished_batch(
        &self,
        finished_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Purged, sqlx::Error> {
        dispatch!(self, backend => backend.purge_finished_batch(finished_before, limit).await)
    }

    /// On SQLite, moves the WAL back into the database file and truncates it, then lets SQLite
    /// refresh the statistics its planner uses (`PRAGMA optimize`). Pages freed by deletions are
    /// reused by later inserts; the file itself does not shrink.
    pub async fn checkpoint_and_optimize(&self) -> Result<(), sqlx::Error> {
        dispatch!(self, backend => backend.checkpoint_and_optimize().await)
    }
}
