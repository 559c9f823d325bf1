//! The only place with SQL. [`Store`] is the boundary the rest of the daemon talks to: one method
//! per query, with the same signatures whatever database is behind it. It dispatches to a
//! backend, which holds the SQL: `sqlite/` (one file, the built-in default). The types the
//! methods take and return live here (`tickets.rs`, `deliveries.rs`, `maintenance.rs`), as do
//! [`Recorder`] (group commit of poll results) and [`ChangeProbe`] (noticing commits by other
//! connections).
//!
//! No transaction is ever held across a network call: callers claim, commit, call, then record
//! in a new transaction.

mod changes;
pub mod deliveries;
pub mod history;
pub mod maintenance;
pub mod pages;
pub mod postgres;
pub mod recorder;
mod results;
mod row;
mod session;
mod sqlite;
pub mod tickets;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use changes::ChangeProbe;
pub use deliveries::{AttemptRecord, Delivery, DeliveryState, Handoff, NewDelivery, Resend};
pub use history::{TicketEvent, WebhookAttempt};
pub use maintenance::Purged;
pub use pages::{DeliveryFilter, MAX_PAGE, Overview, TicketFilter};
pub use postgres::{MIGRATOR as POSTGRES_MIGRATOR, PostgresSettings};
pub use recorder::{Announce, RecordError, Recorder};
pub use sqlite::MIGRATOR;
pub use tickets::{Announcement, Finish, NewTicket, Reschedule, Ticket};

use self::postgres::PgStore;
use self::sqlite::SqliteStore;
use crate::clock::format_instant;

/// How often the daemon checks that its database path still names the file it opened.
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How to open the database.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// The SQLite file; created when missing.
    pub path: PathBuf,
    /// How long a statement waits for another writer before failing with "database is locked".
    pub busy_timeout: Duration,
    /// Connections for reads.
    pub max_readers: u32,
}

/// Handle to the database. Cheap to clone. Every query is a method; each runs the SQL of the
/// backend the store was opened on.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

/// The database behind a [`Store`].
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// One SQLite file (`sqlite/`).
    Sqlite(SqliteStore),
    /// A PostgreSQL database shared by any number of daemons (`postgres/`).
    Postgres(PgStore),
}

/// Which database to open: a SQLite file (the default) or a PostgreSQL URL.
#[derive(Debug, Clone)]
pub enum Database {
    /// `database.path`.
    Sqlite(StoreSettings),
    /// `database.url`.
    Postgres(PostgresSettings),
}

impl From<&StoreSettings> for Database {
    fn from(settings: &StoreSettings) -> Database {
        Database::Sqlite(settings.clone())
    }
}

impl From<&PostgresSettings> for Database {
    fn from(settings: &PostgresSettings) -> Database {
        Database::Postgres(settings.clone())
    }
}

impl From<&Database> for Database {
    fn from(settings: &Database) -> Database {
        settings.clone()
    }
}

impl Database {
    /// The database as shown to people: the file's path, or the URL without its password.
    pub fn shown(&self) -> String {
        match self {
            Database::Sqlite(settings) => settings.path.display().to_string(),
            Database::Postgres(settings) => settings.shown_url(),
        }
    }
}

/// Names one process in `lease_owner` (`name:pid:random`, readable in the sqlite3 shell). The
/// random part has 64 bits, so two processes with the same name and pid (two containers, each
/// pid 1) still never share a prefix, and neither fencing nor shutdown's hand-back (which
/// matches on the prefix) ever acts on the other's rows.
pub fn lease_owner_prefix(name: &str) -> String {
    format!("{name}:{}:{:016x}", std::process::id(), rand::random::<u64>())
}

/// Identifies one claim of a batch of rows. Every write to a claimed row names it, so a daemon
/// whose lease lapsed (and whose row another claim took) cannot overwrite the newer owner's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease(pub String);

/// Runs `$body` with `$backend` bound to whichever backend the store has: every public method of
/// [`Store`] is one line of SQL-free dispatch.
macro_rules! dispatch {
    ($store:expr, $backend:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite($backend) => $body,
            $crate::store::Backend::Postgres($backend) => $body,
        }
    };
}
pub(crate) use dispatch;

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(settings: impl Into<Database>) -> anyhow::Result<Store> {
        let backend = match settings.into() {
            Database::Sqlite(settings) => Backend::Sqlite(SqliteStore::open(&settings).await?),
            Database::Postgres(settings) => Backend::Postgres(PgStore::open(&settings).await?),
        };
        Ok(Store { backend })
    }

    /// Opens the database without touching its schema (for commands that only read).
    pub async fn open_without_migrating(settings: impl Into<Database>) -> anyhow::Result<Store> {
        let backend = match settings.into() {
            Database::Sqlite(settings) => Backend::Sqlite(SqliteStore::open_without_migrating(&settings).await?),
            Database::Postgres(settings) => Backend::Postgres(PgStore::open_without_migrating(&settings).await?),
        };
        Ok(Store { backend })
    }

    /// Opens an existing database for reading (`list`, `show`, `webhooks list`). On SQLite no
    /// file or directory is created, nothing is written, a missing file is an error naming the
    /// path, and every query that writes fails on this handle; on PostgreSQL the schema is left
    /// alone.
    pub async fn open_read_only(settings: impl Into<Database>) -> anyhow::Result<Store> {
        let backend = match settings.into() {
            Database::Sqlite(settings) => Backend::Sqlite(SqliteStore::open_read_only(&settings).await?),
            Database::Postgres(settings) => Backend::Postgres(PgStore::open_without_migrating(&settings).await?),
        };
        Ok(Store { backend })
    }

    /// The database file, on SQLite.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(backend) => Some(backend.path()),
            Backend::Postgres(_) => None,
        }
    }

    /// The database as shown in logs: the file's path, or the URL without its password.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sqlite(backend) => backend.path().display().to_string(),
            Backend::Postgres(backend) => backend.shown_url().to_owned(),
        }
    }

    /// Whether the store reaches its database: on PostgreSQL, false after a few connection-level
    /// failures in a row (until a call gets through again); SQLite is always reachable.
    pub fn healthy(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => true,
            Backend::Postgres(backend) => backend.healthy(),
        }
    }

    /// Whether the path still names the file that was opened. `Err` says what happened when it
    /// was removed, or replaced by another file (a restore, a `mv` over it): the connections
    /// still write into the old file, which nobody will ever read, so the daemon must stop.
    pub fn check_file(&self) -> Result<(), FileLost> {
        match &self.backend {
            Backend::Sqlite(backend) => backend.check_file(),
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Resolves once [`Store::check_file`] fails, checking every `interval`, with what happened.
    pub async fn file_lost(&self, interval: Duration) -> FileLost {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(lost) = self.check_file() {
                return lost;
            }
        }
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        dispatch!(self, backend => backend.ping().await)
    }

    /// Closes the connections (on SQLite, checkpointing the WAL first).
    pub async fn close(&self) {
        dispatch!(self, backend => backend.close().await)
    }

    /// Lists applied migrations as (version, description).
    pub async fn applied_migrations(&self) -> Result<Vec<(i64, String)>, sqlx::Error> {
        dispatch!(self, backend => backend.applied_migrations().await)
    }
}

/// Whether the database refused the row itself (a constraint), as opposed to failing.
pub fn is_refusal(error: &sqlx::Error) -> bool {
    use sqlx::error::ErrorKind;
    error.as_database_error().is_some_and(|db| {
        matches!(
            db.kind(),
            ErrorKind::CheckViolation
                | ErrorKind::UniqueViolation
                | ErrorKind::NotNullViolation
                | ErrorKind::ForeignKeyViolation
        )
    })
}

/// A constraint failure in words a user can act on (what [`is_refusal`] accepts; other errors
/// as they are).
pub fn describe_refusal(error: &sqlx::Error) -> String {
    let message = error.as_database_error().map(|db| db.message().to_owned()).unwrap_or_else(|| error.to_string());
    let constraint = error.as_database_error().and_then(|db| db.constraint().map(str::to_owned));
    if let Some(constraint) = constraint {
        // PostgreSQL names the constraint.
        return match error.as_database_error().map(|db| db.kind()) {
            Some(sqlx::error::ErrorKind::UniqueViolation) => {
                "already queued (the same workspace, namespace and ticket ID)".to_owned()
            }
            _ => format!("violates {constraint}"),
        };
    }
    if message.contains("UNIQUE constraint failed") {
        "already queued (the same workspace, namespace and ticket ID)".to_owned()
    } else if let Some(rule) = message.strip_prefix("CHECK constraint failed: ") {
        format!("violates {rule}")
    } else {
        message
    }
}

/// What happened to the database file while it was open (see [`Store::check_file`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileLost {
    /// The path names a different file now.
    #[error("the database file {} was replaced by another file", .0.display())]
    Replaced(PathBuf),
    /// Nothing is at the path any more.
    #[error("the database file {} was removed", .0.display())]
    Removed(PathBuf),
}

/// Runs a write again, a few times with jittered backoff, when it failed only because another
/// program held SQLite's write lock past `busy_timeout` ("database is locked"), or for any other
/// reason [`is_retryable`] names (a PostgreSQL conflict or lost connection). Other errors return
/// at once. An in-process retry of one statement; nothing about it is persisted.
pub async fn retry_when_busy<T, F, Fut>(write: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    use backon::Retryable as _;
    write
        .retry(busy_retry_policy())
        .when(is_retryable)
        .notify(|error, delay| {
            // A lost connection is logged once per episode by the backend, not once per write.
            if postgres::errors::is_connection_error(error) {
                tracing::debug!(error = %error, delay_ms = delay.as_millis(), "database unreachable; retrying the write");
            } else {
                tracing::warn!(error = %error, delay_ms = delay.as_millis(), "database busy; retrying the write");
            }
        })
        .await
}

/// The backoff of [`retry_when_busy`] and of the recorder's batches: 50 ms doubling to 2 s,
/// jittered, four retries.
fn busy_retry_policy() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(4)
        .with_jitter()
}

/// Whether a write that failed with `error` should simply run again: SQLite's lock was not free
/// in time ([`is_busy`]), PostgreSQL aborted the transaction in a conflict (40001, 40P01), or the
/// connection failed (the call may or may not have committed; every write here is fenced, so a
/// second run of one that did changes nothing).
pub fn is_retryable(error: &sqlx::Error) -> bool {
    is_busy(error) || postgres::errors::is_conflict(error) || postgres::errors::is_connection_error(error)
}

/// Whether `error` says the connection to the database failed (on PostgreSQL: class 08, 25006
/// from a demoted server, I/O, timeouts). The backend logs each run of these once, so a caller
/// that meets one need not log it again at a level a human reads.
pub fn is_connection_lost(error: &sqlx::Error) -> bool {
    postgres::errors::is_connection_error(error)
}

/// Whether `error` is SQLite's `SQLITE_BUSY` / `SQLITE_LOCKED` (the lock was not free in time).
pub fn is_busy(error: &sqlx::Error) -> bool {
    let sqlite =
        error.as_database_error().is_some_and(|error| error.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some());
    sqlite
        && error.as_database_error().and_then(|error| error.code()).is_some_and(|code| {
            // Primary result codes 5 (BUSY) and 6 (LOCKED), with or without an extended code.
            code.parse::<i32>().is_ok_and(|code| matches!(code & 0xff, 5 | 6))
        })
}

/// `instant` as stored in every `*_at` column.
fn at(instant: DateTime<Utc>) -> String {
    format_instant(instant)
}

/// The end of a lease taken at `now` for `lease_for`, as stored.
fn lease_end(now: DateTime<Utc>, lease_for: Duration) -> String {
    at(now + chrono::Duration::from_std(lease_for).unwrap_or(chrono::Duration::MAX))
}
