//! The PostgreSQL backend of [`super::Store`]: many daemons on many hosts share one database,
//! with no leader. `tickets.rs` (claims with `FOR UPDATE SKIP LOCKED`, fenced writes, user
//! commands), `results.rs` (poll results, many rows per statement), `deliveries.rs` (the outbox),
//! `maintenance.rs` (retention under an advisory lock), `listen.rs` (`LISTEN` for the insert
//! trigger's notifications), `errors.rs` (what an error means: reconnect, retry, or refusal).
//!
//! sqlx has no TCP keepalive for PostgreSQL, so nothing here may wait on the network unbounded:
//! every call runs under [`PgStore::call_timeout`] on a connection of its own ([`guarded!`]), a
//! connection whose call timed out or failed at the connection level is closed rather than
//! returned to the pool, the pool's acquire timeout is bounded, and each session sets
//! `statement_timeout` and `idle_in_transaction_session_timeout`. A standby is refused at connect.

pub(super) mod deliveries;
pub(super) mod errors;
pub(super) mod history;
pub(super) mod listen;
pub(super) mod maintenance;
pub(super) mod pages;
pub(super) mod results;
pub(super) mod tickets;

use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _};

/// The embedded PostgreSQL migrations under `migrations/postgres/`: the same versions and
/// descriptions as SQLite's.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How to reach a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:port/database?sslmode=…`. Shown only redacted.
    pub url: SecretString,
    /// Most connections this process opens (the listener's included).
    pub max_connections: u32,
    /// The most any one statement may take (the session's `statement_timeout`); each call to the
    /// store is given this plus a margin for the network before its connection is given up.
    pub statement_timeout: Duration,
    /// `LISTEN` for new due tickets. Off (or behind a pooler that drops `LISTEN`), new rows are
    /// found at the safety timer's pace.
    pub listen: bool,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PostgresSettings")
            .field("url", &self.shown_url())
            .field("max_connections", &self.max_connections)
            .field("statement_timeout", &self.statement_timeout)
            .field("listen", &self.listen)
            .finish()
    }
}

impl PostgresSettings {
    /// The URL without its password or query values, for logs, errors and `check-config`.
    pub fn shown_url(&self) -> String {
        crate::redact::redact_text(self.url.expose_secret())
    }
}

/// Consecutive connection-level failures after which the store reports itself unhealthy.
pub(super) const UNHEALTHY_AFTER: u32 = 3;

/// How long calls must have gone well since the last connection-level failure before an
/// episode counts as over. Until then failures are part of it and are not logged again: in a
/// failover, reads may succeed on the demoted server while every write fails, and an outage
/// flaps as connections are retried.
const EPISODE_QUIET: Duration = Duration::from_secs(10);

/// A run of connection-level failures, logged once when it starts and once when it ends.
#[derive(Debug, Default)]
pub(super) struct Episode {
    open: bool,
    last_failure: Option<std::time::Instant>,
}

/// Handle to one PostgreSQL database. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct PgStore {
    pub(super) pool: PgPool,
    shown_url: String,
    pub(super) call_timeout: Duration,
    pub(super) listen: bool,
    /// Connection-level failures in a row (reset by any call that reaches the server).
    pub(super) failures: Arc<AtomicU32>,
    /// The current run of failures, for logging it once.
    episode: Arc<std::sync::Mutex<Episode>>,
}

impl PgStore {
    /// Connects (refusing a standby) and applies pending migrations. Concurrent starts are
    /// serialised by sqlx's advisory lock, so each migration is applied once.
    /// A database already up to date is not touched, so that daemons may run as a role without
    /// DDL rights once an operator ran `migrate`.
    pub(super) async fn open(settings: &PostgresSettings) -> anyhow::Result<PgStore> {
        let store = PgStore::open_without_migrating(settings).await?;
        if !store.up_to_date().await {
            MIGRATOR.run(&store.pool).await.with_context(|| format!("applying migrations to {}", store.shown_url))?;
        }
        Ok(store)
    }

    /// Whether every embedded migration is applied, with the same checksum.
    async fn up_to_date(&self) -> bool {
        let applied = async {
            let applied: Vec<(i64, Vec<u8>)> = guarded!(self, connection => {
                sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
                    .fetch_all(&mut *connection)
                    .await
            })?;
            Ok::<_, sqlx::Error>(applied)
        };
        let Ok(applied) = applied.await else { return false };
        MIGRATOR.iter().all(|migration| {
            applied
                .iter()
                .any(|(version, checksum)| *version == migration.version && checksum[..] == migration.checksum[..])
        })
    }

    /// Connects without touching the schema.
    pub(super) async fn open_without_migrating(settings: &PostgresSettings) -> anyhow::Result<PgStore> {
        let shown_url = settings.shown_url();
        let options = PgConnectOptions::from_str(settings.url.expose_secret())
            .map_err(|error| anyhow::anyhow!("{}", errors::redacted(&error, &settings.url)))
            .with_context(|| format!("reading database.url {shown_url}"))?
            .application_name("flink-ticketd");
        let statement_timeout = settings.statement_timeout.max(Duration::from_millis(1));
        // Longer than the server's own limit (by as much again, at most 5 s), so that a slow
        // statement fails there (and the connection stays usable) and only a silent network
        // trips this one.
        let call_timeout = statement_timeout + statement_timeout.min(Duration::from_secs(5));
        let session = format!(
            "SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}; SET timezone = 'UTC'",
            ms = statement_timeout.as_millis()
        );
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .min_connections(0)
            .acquire_timeout(call_timeout)
            .idle_timeout(Duration::from_secs(300))
            .after_connect(move |connection, _| {
                let session = session.clone();
                Box::pin(async move {
                    connection.execute(session.as_str()).await?;
                    refuse_standby(connection).await
                })
            })
            .connect_lazy_with(options.clone());
        let store = PgStore {
            pool,
            shown_url: shown_url.clone(),
            call_timeout,
            listen: settings.listen,
            failures: Arc::new(AtomicU32::new(0)),
            episode: Arc::default(),
        };
        // Connect once now, on a connection of its own, so that a wrong URL, password or a standby
        // fails at start with what is wrong: the pool retries a connection its check refused
        // until the acquire timeout and reports only that.
        let first = async {
            let mut connection = sqlx::PgConnection::connect_with(&options).await?;
            let checked = refuse_standby(&mut connection).await;
            let _ = connection.close().await;
            checked
        };
        tokio::time::timeout(call_timeout, first)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {}", crate::duration::format_duration(call_timeout)))
            .and_then(|checked| checked.map_err(|error| anyhow::anyhow!("{}", errors::redacted(&error, &settings.url))))
            .with_context(|| format!("connecting to postgresql database {shown_url}"))?;
        Ok(store)
    }

    /// The database, as shown in logs (no password).
    pub(super) fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Whether the database answers a trivial query.
    pub(super) async fn ping(&self) -> bool {
        let answered = async {
            let one: i32 =
                guarded!(self, connection => sqlx::query_scalar("SELECT 1").fetch_one(&mut *connection).await)?;
            Ok::<_, sqlx::Error>(one)
        };
        answered.await.is_ok()
    }

    /// Whether recent calls reached the server (fewer than [`UNHEALTHY_AFTER`] connection-level
    /// failures in a row).
    pub(super) fn healthy(&self) -> bool {
        self.failures.load(Ordering::Relaxed) < UNHEALTHY_AFTER
    }

    /// Closes the pool.
    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

    /// Lists applied migrations as (version, description).
    pub(super) async fn applied_migrations(&self) -> Result<Vec<(i64, String)>, sqlx::Error> {
        guarded!(self, connection => {
            sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&mut *connection)
                .await
        })
    }

    /// A pooled connection, acquired within the call timeout, that is closed on drop unless
    /// [`Checkout::settle`] saw its call end well.
    pub(super) async fn checkout(&self) -> Result<Checkout, sqlx::Error> {
        match tokio::time::timeout(self.call_timeout, self.pool.acquire()).await {
            Ok(Ok(connection)) => Ok(Checkout { connection: Some(connection), keep: false, store: self.clone() }),
            Ok(Err(error)) => {
                self.note(&error);
                Err(error)
            }
            Err(_) => {
                let error = errors::timed_out(self.call_timeout);
                self.note(&error);
                Err(error)
            }
        }
    }

    /// Counts connection-level failures in a row, logging the first of an episode once.
    fn note(&self, error: &sqlx::Error) {
        if errors::is_connection_error(error) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let mut episode = self.episode.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            episode.last_failure = Some(std::time::Instant::now());
            if episode.open {
                tracing::debug!(error = %errors::Shown(error), "database connection failed again; reconnecting");
            } else {
                episode.open = true;
                tracing::warn!(database = %self.shown_url, error = %errors::Shown(error), "database connection lost; reconnecting");
            }
        } else {
            self.recovered();
        }
    }

    /// A call reached the server: the failure count starts over, and an episode that has been
    /// quiet for [`EPISODE_QUIET`] is over.
    fn recovered(&self) {
        self.failures.store(0, Ordering::Relaxed);
        let mut episode = self.episode.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if episode.open && episode.last_failure.is_none_or(|at| at.elapsed() >= EPISODE_QUIET) {
            episode.open = false;
            tracing::info!(database = %self.shown_url, "database connection restored");
        }
    }
}

/// Refuses a server in recovery: a standby takes no writes, and a daemon connected to one would
/// fail every claim.
async fn refuse_standby(connection: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut *connection).await?;
    if standby {
        return Err(sqlx::Error::Configuration(
            "the server is a standby in recovery (read-only); connect to the primary".into(),
        ));
    }
    Ok(())
}

/// One connection taken for one call. Dropped without a good [`Checkout::settle`] (a timeout, a
/// connection error, the caller cancelled), the connection is closed instead of returned: it may
/// be mid-statement, inside a transaction, or on a half-open socket that the pool's ping on
/// release would wait on for ever.
pub(super) struct Checkout {
    connection: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    keep: bool,
    store: PgStore,
}

impl Checkout {
    /// Closes the connection when dropped, whatever [`Checkout::settle`] sees (it may be left
    /// inside a failed transaction).
    pub(super) fn discard(&mut self) {
        if let Some(connection) = self.connection.as_mut() {
            connection.close_on_drop();
        }
    }

    /// The connection.
    pub(super) fn connection(&mut self) -> &mut sqlx::PgConnection {
        self.connection.as_mut().expect("the connection is taken only on drop")
    }

    /// The result of the call made on this connection: keeps the connection when the server
    /// answered (even with an error such as a refused row), and turns a timeout into an I/O error.
    pub(super) fn settle<T>(
        mut self,
        result: Result<Result<T, sqlx::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, sqlx::Error> {
        let result = result.unwrap_or_else(|_| Err(errors::timed_out(self.store.call_timeout)));
        match &result {
            Ok(_) => {
                self.keep = true;
                self.store.recovered();
            }
            Err(error) => {
                self.keep = !errors::is_connection_error(error);
                self.store.note(error);
            }
        }
        result
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.as_mut() {
            if !self.keep {
                connection.close_on_drop();
            }
        }
    }
}

/// Runs `$body` (an expression using `$connection: &mut PgConnection`) on a connection of its
/// own, under the store's call timeout, closing the connection when the call did not end well.
macro_rules! guarded {
    ($store:expr, $connection:ident => $body:expr) => {{
        let store: &$crate::store::postgres::PgStore = &$store;
        let mut checkout = store.checkout().await?;
        let result = {
            let $connection: &mut sqlx::PgConnection = checkout.connection();
            tokio::time::timeout(store.call_timeout, async { $body }).await
        };
        checkout.settle(result)
    }};
}
pub(super) use guarded;

/// Runs `$body` inside a transaction (`$connection` is the transaction's connection), committing
/// when it returns `Ok`.
macro_rules! in_transaction {
    ($store:expr, $connection:ident => $body:expr) => {{
        $crate::store::postgres::guarded!($store, connection => {
            let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
            let value = {
                let $connection: &mut sqlx::PgConnection = &mut transaction;
                $body
            }?;
            transaction.commit().await?;
            Ok(value)
        })
    }};
}
pub(super) use in_transaction;

/// `column` (a `timestamptz`) as the canonical text of every instant
/// (`2026-11-28T01:23:45.678Z`), whatever the session's time zone.
macro_rules! instant_text {
    ($column:literal) => {
        concat!("to_char(", $column, " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    };
}
pub(super) use instant_text;
