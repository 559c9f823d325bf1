//! What only the PostgreSQL backend has: migration parity with SQLite, concurrent starts, the
//! insert trigger and `LISTEN` waking the poller, every command against `database.url` with the
//! password never shown, timeouts against a server that never answers, and the idle cost. The
//! store's behaviour itself is the conformance suite of `store.rs`, run on both backends.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use flink_ticketd::clock::{Clock, SystemClock};
use flink_ticketd::daemon;
use flink_ticketd::store::{Database, MIGRATOR, POSTGRES_MIGRATOR, Store, StoreSettings, lease_owner_prefix};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::harness::{TestEnv, eventually};
use crate::store::postgres_settings;

/// (table, column, nullable) of every table a migrated database has, but the database's own.
type Shape = BTreeSet<(String, String, bool)>;

async fn sqlite_shape() -> Shape {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parity.db");
    let settings = StoreSettings { path: path.clone(), busy_timeout: Duration::from_secs(5), max_readers: 1 };
    Store::open(&settings).await.unwrap().close().await;
    let pool = crate::harness::outside_connection(&format!("sqlite://{}", path.display())).await;
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT m.name, p.name, p.\"notnull\" OR p.pk > 0 FROM sqlite_master AS m, pragma_table_info(m.name) AS p
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    // A primary key column is never null (SQLite fills an INTEGER PRIMARY KEY written as NULL).
    rows.into_iter().map(|(table, column, not_null)| (table, column, not_null == 0)).collect()
}

async fn postgres_shape(url: &str) -> Shape {
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, is_nullable::text FROM information_schema.columns
         WHERE table_schema = current_schema()",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    connection.close().await.unwrap();
    rows.into_iter().map(|(table, column, nullable)| (table, column, nullable == "YES")).collect()
}

#[tokio::test]
async fn both_backends_list_the_same_migrations_and_reach_the_same_tables_columns_and_nullability() {
    let versions = |migrator: &sqlx::migrate::Migrator| {
        migrator.iter().map(|migration| (migration.version, migration.description.to_string())).collect::<Vec<_>>()
    };
    assert_eq!(
        versions(&POSTGRES_MIGRATOR),
        versions(&MIGRATOR),
        "every SQLite migration needs its PostgreSQL twin (same version and description) under migrations/postgres/"
    );
    let Some(database) = crate::pg::database().await else { return };
    Store::open(&postgres_settings(database.url())).await.unwrap().close().await;
    let (sqlite, postgres) = (sqlite_shape().await, postgres_shape(database.url()).await);
    let only_sqlite: Vec<_> = sqlite.difference(&postgres).collect();
    let only_postgres: Vec<_> = postgres.difference(&sqlite).collect();
    assert!(
        only_sqlite.is_empty() && only_postgres.is_empty(),
        "(table, column, nullable) only on SQLite: {only_sqlite:?}; only on PostgreSQL: {only_postgres:?}"
    );
    assert!(sqlite.iter().any(|(table, column, _)| table == "tickets" && column == "next_poll_at"));
}

#[tokio::test]
async fn two_daemons_starting_at_once_on_an_empty_database_both_come_up_and_apply_each_migration_once() {
    let Some(database) = crate::pg::database().await else { return };
    let settings = postgres_settings(database.url());
    let (first, second) = tokio::join!(Store::open(&settings), Store::open(&settings));
    let (first, second) = (first.expect("the first start"), second.expect("the second start"));
    let applied = first.applied_migrations().await.unwrap();
    assert_eq!(applied.len(), POSTGRES_MIGRATOR.iter().count(), "each migration once: {applied:?}");
    let versions: BTreeSet<i64> = applied.iter().map(|(version, _)| *version).collect();
    assert_eq!(versions.len(), applied.len());
    assert!(second.ping().await);
    first.close().await;
    second.close().await;
}

/// Runs `psql` against `url` with one command; panics when it fails.
fn psql(url: &str, sql: &str) {
    let output = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql runs (the PostgreSQL client is installed with the server)");
    assert!(output.status.success(), "psql failed: {}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test]
async fn a_psql_insert_naming_only_the_required_columns_is_polled_within_a_second_with_a_sixty_second_safety_timer() {
    const LONG: Duration = Duration::from_secs(60);
    let Some(database) = crate::pg::database().await else { return };
    let env = TestEnv::new("").await;
    let config = env.config(|config| config.database = Database::Postgres(postgres_settings(database.url())));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let daemon::Connection { store, flink } =
        daemon::connect(&config, &clock).await.expect("the store and client open");
    let (poller, recorder_task) =
        daemon::poller(&config, store.clone(), flink, clock, lease_owner_prefix("listen-test"), 4);
    let poller = Arc::new(poller.with_heartbeat(LONG).with_wake_interval(LONG));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let run = tokio::spawn(Arc::clone(&poller).run_until_cancelled(shutdown.clone(), tracker.clone()));
    let finished = |ticket_id: &'static str| {
        let store = store.clone();
        async move {
            eventually("the ticket's final state", || async {
                let rows = store.find_tickets(ticket_id, None, None, None).await.ok()?;
                rows.into_iter().find(|row| !row.is_pending())
            })
            .await
        }
    };

    // A first ticket worked off to its end leaves the loop waiting with nothing due.
    psql(database.url(), "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('listen-1', 'ns', 'ws')");
    finished("listen-1").await;

    let inserted = Utc::now();
    psql(database.url(), "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('listen-2', 'ns', 'ws')");
    let first_poll = eventually("the psql row's first poll", || async {
        env.sim.requests().into_iter().find(|request| request.ticket_id.as_deref() == Some("listen-2"))
    })
    .await;
    let latency = (first_poll.started_at - inserted).to_std().unwrap_or(Duration::ZERO);
    eprintln!("psql insert to first poll: {latency:?}");
    assert!(latency < Duration::from_secs(1), "the psql row waited {latency:?} for its first poll");
    finished("listen-2").await;

    shutdown.cancel();
    run.await.expect("the loop joins");
    tracker.close();
    tracker.wait().await;
    drop(poller);
    recorder_task.await.expect("the recorder joins");
    store.close().await;
}
