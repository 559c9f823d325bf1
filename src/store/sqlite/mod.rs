//! The SQLite backend of [`super::Store`]: one file (WAL, `busy_timeout`, foreign keys), the
//! migrations under `migrations/sqlite/`, and one function per query: `tickets.rs` for the ticket
//! queue, `results.rs` for poll results, `deliveries.rs` for the webhook outbox, `maintenance.rs`
//! for retention, `changes.rs` for noticing commits by other connections.
//!
//! Writes go through a single connection, so the daemon never competes with itself for SQLite's
//! one write lock; multi-statement writes use `BEGIN IMMEDIATE` so they wait for the lock up
//! front instead of failing half-way. Reads use a small separate pool.

pub(super) mod changes;
pub(super) mod checkpoint;
pub(super) mod deliveries;
pub(super) mod history;
pub(super) mod maintenance;
pub(super) mod pages;
pub(super) mod results;
pub(super) mod tickets;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{FileLost, StoreSettings};

/// The embedded SQLite migrations under `migrations/sqlite/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Handle to one SQLite database file. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct SqliteStore {
    pub(super) writer: SqlitePool,
    pub(super) reader: SqlitePool,
    path: PathBuf,
    /// (device, inode) of the file as opened, to notice when it is removed or replaced.
    identity: Option<(u64, u64)>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database and applies pending migrations.
    ///
    /// The read pool is opened only once the schema is final: a connection that read the schema
    /// before a migration added columns prepares `SELECT *` against the old column list, while
    /// SQLite, noticing the change, answers with the new one.
    pub(super) async fn open(settings: &StoreSettings) -> anyhow::Result<SqliteStore> {
        let options = connect_options(settings)?;
        let writer = connect_writer(settings, &options).await?;
        MIGRATOR.run(&writer).await.with_context(|| format!("applying migrations to {}", settings.path.display()))?;
        let reader = connect_reader(settings, options).await?;
        let identity = file_identity(&settings.path);
        Ok(SqliteStore { writer, reader, path: settings.path.clone(), identity })
    }

    /// Opens the database without touching its schema (for commands that only read).
    pub(super) async fn open_without_migrating(settings: &StoreSettings) -> anyhow::Result<SqliteStore> {
        let options = connect_options(settings)?;
        let writer = connect_writer(settings, &options).await?;
        let reader = connect_reader(settings, options).await?;
        let identity = file_identity(&settings.path);
        Ok(SqliteStore { writer, reader, path: settings.path.clone(), identity })
    }

    /// Opens an existing database for reading only: no file or directory is created, nothing is
    /// written, and a missing file is an error naming the path.
    pub(super) async fn open_read_only(settings: &StoreSettings) -> anyhow::Result<SqliteStore> {
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
        Ok(SqliteStore { writer: reader.clone(), reader, path: settings.path.clone(), identity })
    }

    /// The database file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// See [`super::Store::check_file`].
    pub(super) fn check_file(&self) -> Result<(), FileLost> {
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

    /// Starts checkpointing the WAL after the writer's commits, off the writer's path (see
    /// [`checkpoint`]). Its connection never creates the file: one removed under the daemon
    /// stays removed, for `check_file` to notice.
    pub(super) fn checkpointer(&self) -> checkpoint::Checkpointer {
        checkpoint::Checkpointer::start((*self.writer.connect_options()).clone().create_if_missing(false))
    }

    /// Whether the database answers a trivial query.
    pub(super) async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.reader).await.is_ok()
    }

    /// Closes both pools, checkpointing the WAL.
    pub(super) async fn close(&self) {
        self.reader.close().await;
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await {
            tracing::debug!(error = %error, "wal checkpoint at close failed");
        }
        self.writer.close().await;
    }

    /// Lists applied migrations as (version, description).
    pub(super) async fn applied_migrations(&self) -> Result<Vec<(i64, String)>, sqlx::Error> {
        sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&self.reader)
            .await
    }
}

/// Closes the writer connection instead of returning it to the pool once a transaction on it
/// failed; the pool opens a fresh one. After some errors (a full disk, an I/O error) SQLite rolls
/// the transaction back by itself, sqlx's own rollback then fails, and the connection would stay
/// marked as inside a transaction for good, refusing every later `BEGIN`.
pub(super) fn discard_after_failed_transaction(connection: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>) {
    connection.close_on_drop();
}

/// (device, inode) of `path`, if it can be read.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|metadata| (metadata.dev(), metadata.ino()))
}

/// The options of every connection to the file (creating its directory when missing).
fn connect_options(settings: &StoreSettings) -> anyhow::Result<SqliteConnectOptions> {
    if let Some(parent) = settings.path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the database directory {}", parent.display()))?;
    }
    Ok(SqliteConnectOptions::from_str("sqlite:")
        .expect("the bare sqlite: URL is valid")
        .filename(&settings.path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(settings.busy_timeout)
        .pragma("temp_store", "memory"))
}

/// Rows the writer connection's thread hands over before it waits for the caller to take them.
/// One call of the recorder returns a row per result written (at most `MAX_BATCH`) and one per
/// ticket claimed (its free slots and the tickets it claims ahead): with sqlx's default of 50,
/// the thread stopped two or three times in such a call, each time until the recorder's task
/// (queued behind the poll tasks) came to take the rows, and the database waited with it. The
/// buffer grows only as rows come, and the recorder keeps a call's rows anyway.
const WRITER_ROW_BUFFER: usize = 1024;

/// The one writer connection.
async fn connect_writer(settings: &StoreSettings, options: &SqliteConnectOptions) -> anyhow::Result<SqlitePool> {
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(settings.busy_timeout + Duration::from_secs(30))
        // A ping before every use (the pool's default) is a round trip to the connection's
        // thread that a file in this process cannot fail: the recorder and every claim would
        // pay it once per batch.
        .test_before_acquire(false)
        // The writer walks the queue's indexes all day: a larger page cache than the readers'
        // 2 MiB (in KiB), yet small enough that the cache does not dominate the daemon's memory.
        // While the recorder writes, the WAL is copied back by a connection of its own (see
        // `checkpoint`); the writer's own checkpoint is the backstop.
        .connect_with(
            options
                .clone()
                .pragma("cache_size", "-4096")
                .row_buffer_size(WRITER_ROW_BUFFER)
                .pragma("wal_autocheckpoint", checkpoint::WRITER_CHECKPOINT_PAGES.to_string()),
        )
        .await
        .with_context(|| format!("opening sqlite database at {}", settings.path.display()))
}

/// The read pool.
async fn connect_reader(settings: &StoreSettings, options: SqliteConnectOptions) -> anyhow::Result<SqlitePool> {
    SqlitePoolOptions::new()
        .max_connections(settings.max_readers.max(1))
        .acquire_timeout(settings.busy_timeout + Duration::from_secs(30))
        .connect_with(options.read_only(true))
        .await
        .with_context(|| format!("opening sqlite database at {} for reading", settings.path.display()))
}
