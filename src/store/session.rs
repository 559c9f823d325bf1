//! [`Session`]: one write connection of either backend, with the few operations the recorder's
//! group commit runs inside its transaction. The recorder's batching logic is written once against
//! it; each operation runs the backend's own SQL.

use chrono::{DateTime, Utc};

use super::tickets::DueClaim;
use super::{Announcement, Finish, Lease, Reschedule, Ticket};
use super::{postgres, sqlite};
use crate::domain::RowId;

/// A write connection of one backend, owned by the caller for the length of a transaction.
pub(super) enum Session<'c> {
    /// The SQLite writer connection.
    Sqlite(&'c mut sqlx::SqliteConnection),
    /// A pooled PostgreSQL connection.
    Postgres(&'c mut sqlx::PgConnection),
}

/// The poll results of a batch, for [`Session::begin_and_record`].
pub(super) use super::results::{Commit, PollResult, Recorded, ResultWrite};

impl Session<'_> {
    /// The statement that opens a transaction: `BEGIN IMMEDIATE` on SQLite, so that it waits for
    /// the write lock up front.
    fn opening(&self) -> &'static str {
        match self {
            Session::Sqlite(_) => "BEGIN IMMEDIATE",
            Session::Postgres(_) => "BEGIN",
        }
    }

    /// Opens the transaction ([`Session::opening`]).
    pub(super) async fn begin(&mut self) -> Result<(), sqlx::Error> {
        self.execute(self.opening()).await
    }

    /// Runs one statement without parameters (`COMMIT`, savepoints).
    pub(super) async fn execute(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Session::Sqlite(connection) => sqlx::query(sql).execute(&mut **connection).await.map(drop),
            Session::Postgres(connection) => sqlx::query(sql).execute(&mut **connection).await.map(drop),
        }
    }

    /// Opens the transaction ([`Session::begin`]), writes a batch of poll results (see
    /// `sqlite::results::record_and_claim_on`) and, on SQLite, makes `claim` after them: all in
    /// one call to the connection's thread, with `COMMIT` too when `commit` says so. PostgreSQL
    /// leaves the claim to the caller ([`Recorded::claimed`] is `None`): a failed statement there
    /// would abort the transaction and lose its writes. It leaves the commit to the caller too, as
    /// every statement there is a round trip of its own anyway.
    pub(super) async fn begin_and_record(
        &mut self,
        writes: &[ResultWrite<'_>],
        claim: Option<&DueClaim>,
        commit: Commit,
    ) -> Result<Recorded, sqlx::Error> {
        let opening = self.opening();
        match self {
            Session::Sqlite(connection) => {
                sqlite::results::record_and_claim_on(connection, writes, Some(opening), claim, commit).await
            }
            Session::Postgres(connection) => {
                sqlx::query(opening).execute(&mut **connection).await?;
                let written = postgres::results::record_many_on(connection, writes).await?;
                Ok(Recorded { written, claimed: None, committed: false })
            }
        }
    }

    /// Claims due tickets (see `sqlite::tickets::claim_due_on`), outside a transaction or in one.
    pub(super) async fn claim_due(&mut self, claim: &DueClaim) -> Result<Vec<Ticket>, sqlx::Error> {
        match self {
            Session::Sqlite(connection) => sqlite::tickets::claim_due_on(connection, claim).await,
            Session::Postgres(connection) => postgres::tickets::claim_due_on(connection, claim).await,
        }
    }

    /// The rows with these IDs, as the transaction sees them.
    pub(super) async fn tickets(&mut self, ids: &[RowId]) -> Result<Vec<Ticket>, sqlx::Error> {
        match self {
            Session::Sqlite(connection) => sqlite::tickets::tickets_on(connection, ids).await,
            Session::Postgres(connection) => postgres::tickets::tickets_on(connection, ids).await,
        }
    }

    /// Writes a final state's announcement; see `sqlite::tickets::write_announcement_on`.
    pub(super) async fn write_announcement(
        &mut self,
        id: RowId,
        now: DateTime<Utc>,
        announcement: &Announcement,
    ) -> Result<usize, sqlx::Error> {
        match self {
            Session::Sqlite(connection) => {
                sqlite::tickets::write_announcement_on(connection, id, now, announcement).await
            }
            Session::Postgres(connection) => {
                postgres::tickets::write_announcement_on(connection, id, now, announcement).await
            }
        }
    }

    /// One progress write, fenced by lease and state.
    pub(super) async fn record_progress(
        &mut self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        update: &Reschedule,
    ) -> Result<bool, sqlx::Error> {
        match self {
            Session::Sqlite(connection) => {
                sqlite::tickets::record_progress_on(connection, lease, id, now, update).await
            }
            Session::Postgres(connection) => {
                postgres::tickets::record_progress_on(connection, lease, id, now, update).await
            }
        }
    }

    /// One final write with its announcement, fenced by lease and state.
    pub(super) async fn record_final(
        &mut self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        finish: &Finish,
        announce: impl FnOnce(&Ticket) -> Announcement,
    ) -> Result<Option<usize>, sqlx::Error> {
        match self {
            Session::Sqlite(connection) => {
                sqlite::tickets::record_final_on(connection, lease, id, now, finish, announce).await
            }
            Session::Postgres(connection) => {
                postgres::tickets::record_final_on(connection, lease, id, now, finish, announce).await
            }
        }
    }
}
