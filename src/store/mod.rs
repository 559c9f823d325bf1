//! The only place with SQL. [`Store`] opens the SQLite file (WAL, `busy_timeout`, foreign keys),
//! applies the embedded migrations, and offers one function per query: `tickets.rs` for the
//! ticket queue, `deliveries.rs` for the webhook outbox, `maintenance.rs` for retention,
//! `changes.rs` for noticing commits by other connections ([`ChangeProbe`]).
//!
//! Writes go through a single connection, so the daemon never competes with itself for SQLite's
//! one write lock; multi-statement writes use `BEGIN IMMEDIATE` so they wait for the lock up
//! front instead of failing half-way. Reads use a small separate pool. No transaction is ever
//! held across a network call: callers claim, commit, call, then record in a new transaction.

mod changes;
pub mod deliveries;
pub mod maintenance;
pub mod pages;
pub mod recorder;
mod results;
mod row;
pub mod tickets;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub use changes::ChangeProbe;
pub use deliveries::{AttemptRecord, Delivery, DeliveryState, NewDelivery, Resend};
pub use maintenance::Purged;
pub use pages::{DeliveryFilter, MAX_PAGE, Overview, TicketFilter};
pub use recorder::{Announce, RecordError, Recorder};
pub use tickets::{Announcement, Finish, NewTicket, Reschedule, Ticket};

use crate::clock::format_instant;

/// The embedded migrations under `migrations/`, applied by [`Store::open`] and `migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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

/// Handle to the SQLite database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
    /// (device, inode) of the file as opened, to notice when it is removed or replaced.
    identity: Option<(u64, u64)>,
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

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(settings: &StoreSettings) -> anyhow::Result<Store> {
        let store = Store::open_without_migrating(settings).await?;
        MIGRATOR
            .run(&store.writer)
            .await
            .with_context(|| format!("applying migrations to {}", settings.path.display()))?;
        Ok(store)
    }

    /// Opens the database without touching its schema (for commands that only read).
    pub async fn open_without_migrating(settings: &StoreSettings) -> anyhow::Result<Store> {
        if let Some(parent) = settings.path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating the database directory {}", parent.display()))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .expect("the bare sqlite: URL is valid")
            .filename(&settings.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(settings.busy_timeout)
            .pragma("temp_store", "memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(settings.busy_timeout + Duration::from_secs(30))
            // The writer walks the queue's indexes all day: give it a larger page cache (in KiB).
            .connect_with(options.clone().pragma("cache_size", "-8192"))
            .await
            .with_context(|| format!("opening sqlite database at {}", settings.path.display()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(settings.max_readers.max(1))
            .acquire_timeout(settings.busy_timeout + Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await
            .with_context(|| format!("opening sqlite database at {} for reading", settings.path.display()))?;
        let identity = file_identity(&settings.path);
        Ok(Store { writer, reader, path: settings.path.clone(), identity })
    }

    /// Opens an existing database for reading only (`list`, `show`, `webhooks list`): no file or
    /// directory is created, nothing is written, and a missing file is an error naming the path.
    /// Every query that writes fails on this handle.
    pub async fn open_read_only(settings: &StoreSettings) -> anyhow::Result<Store> {
        if !settings.path.is_file() {
            anyhow::bail!(
                "no database at {} (it is created by `flink-ticketd migrate`, `enqueue` or the daemon)",
                settings.path.display()
            );
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .expect("the bare sqlite: URL is valid")
            .filename(&settings.path)
            .create_if_missing(false)
            .read_only(true)
            .busy_timeout(settings.busy_timeout);
        let reader = SqlitePoolOptions::new()
            .max_connections(settings.max_readers.max(1))
            .acquire_timeout(settings.busy_timeout + Duration::from_secs(30))
            .connect_with(options)
            .await
            .with_context(|| format!("opening sqlite database at {} for reading", settings.path.display()))?;
        let identity = file_identity(&settings.path);
        Ok(Store { writer: reader.clone(), reader, path: settings.path.clone(), identity })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names the file that was opened. `Err` says what happened when it
    /// was removed, or replaced by another file (a restore, a `mv` over it): the connections
    /// still write into the old file, which nobody will ever read, so the daemon must stop.
    pub fn check_file(&self) -> Result<(), FileLost> {
        let Some(opened) = self.identity else { return Ok(()) };
        match std::fs::metadata(&self.path) {
            Ok(metadata) => {
                use std::os::unix::fs::MetadataExt as _;
                if (metadata.dev(), metadata.ino()) == opened {
                    Ok(())
                } else {
                    Err(FileLost::Replaced(self.path.clone()))
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(FileLost::Removed(self.path.clone())),
            // Unreadable metadata (permissions, IO) is not proof of replacement; the queries say
            // what is wrong if anything is.
            Err(_) => Ok(()),
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
        sqlx::query("SELECT 1").execute(&self.reader).await.is_ok()
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await {
            tracing::debug!(error = %error, "wal checkpoint at close failed");
        }
        self.writer.close().await;
    }

    /// Lists applied migrations as (version, description).
    pub async fn applied_migrations(&self) -> Result<Vec<(i64, String)>, sqlx::Error> {
        sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&self.reader)
            .await
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
/// program held SQLite's write lock past `busy_timeout` ("database is locked"). Other errors
/// return at once. An in-process retry of one statement; nothing about it is persisted.
pub async fn retry_when_busy<T, F, Fut>(write: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    use backon::Retryable as _;
    write
        .retry(busy_retry_policy())
        .when(is_busy)
        .notify(|error, delay| {
            tracing::warn!(error = %error, delay_ms = delay.as_millis(), "database busy; retrying the write");
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

/// Closes the writer connection instead of returning it to the pool once a transaction on it
/// failed; the pool opens a fresh one. After some errors (a full disk, an I/O error) SQLite rolls
/// the transaction back by itself, sqlx's own rollback then fails, and the connection would stay
/// marked as inside a transaction for good, refusing every later `BEGIN`.
fn discard_after_failed_transaction(connection: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>) {
    connection.close_on_drop();
}

/// Whether `error` is SQLite's `SQLITE_BUSY` / `SQLITE_LOCKED` (the lock was not free in time).
pub fn is_busy(error: &sqlx::Error) -> bool {
    error.as_database_error().and_then(|error| error.code()).is_some_and(|code| {
        // Primary result codes 5 (BUSY) and 6 (LOCKED), with or without an extended code.
        code.parse::<i32>().is_ok_and(|code| matches!(code & 0xff, 5 | 6))
    })
}

/// (device, inode) of `path`, if it can be read.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|metadata| (metadata.dev(), metadata.ino()))
}

/// `instant` as stored in every `*_at` column.
fn at(instant: DateTime<Utc>) -> String {
    format_instant(instant)
}
