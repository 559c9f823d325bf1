//! The PostgreSQL side of the harness: a fresh, empty database of its own per test on the
//! throwaway server `.ci/postgres` starts (`FLINK_TICKETD_TEST_POSTGRES_URL`, a superuser URL),
//! dropped when the test is done. Without that variable [`database`] prints one skip line and
//! returns `None`, except under `CI=true`, where a PostgreSQL test that cannot run fails: CI can
//! never pass on SQLite alone.
//!
//! The fault tools live in the submodules: `proxy` (a TCP proxy that forwards, cuts or
//! blackholes connections, or cuts one right after its COMMIT), `cluster` (clusters of a test's
//! own, for real failovers) and `fleet` (daemon binaries on PostgreSQL with the simulator); the
//! multi-daemon tests are in `multi` and the network fault tests in `network`.

#![allow(dead_code, unreachable_pub)]

pub(crate) mod cluster;
pub(crate) mod fleet;
mod multi;
mod network;
pub(crate) mod proxy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection as _;

use crate::harness::TestEnv;

/// The variable holding the server's superuser URL.
pub(crate) const URL_VARIABLE: &str = "FLINK_TICKETD_TEST_POSTGRES_URL";

/// A database of its own on the test server: created empty under a unique name, dropped
/// (connections and all) when this value is dropped.
pub(crate) struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

/// A fresh, empty database for one test, or `None` (after one skip line on stderr) when no
/// server is configured. Panics when no server is configured under `CI=true`, or when the
/// configured server cannot create the database.
pub(crate) async fn database() -> Option<TestDatabase> {
    let Some(admin_url) = admin_url() else {
        assert!(
            !under_ci(),
            "{URL_VARIABLE} is not set but CI=true: the PostgreSQL tests must run in CI \
             (run the tests under `bash .ci/postgres cargo test --locked`)"
        );
        eprintln!(
            "skipped: {URL_VARIABLE} is not set (run `bash .ci/postgres cargo test --locked` to include PostgreSQL)"
        );
        return None;
    };
    Some(TestDatabase::create(&admin_url).await)
}

impl TestDatabase {
    /// A superuser URL of this test's own database.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The server's superuser URL (its `postgres` database), for what spans databases:
    /// `pg_stat_activity`, creating roles, dropping connections.
    pub(crate) fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The database's name (as `current_database()` gives it).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A plain connection to this database, as another program (`psql`) has.
    pub(crate) async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url).await.expect("a connection to the test database")
    }

    /// Runs `sql` (one or more statements) on a connection of its own.
    pub(crate) async fn execute(&self, sql: &str) {
        let mut connection = self.connect().await;
        sqlx::raw_sql(sql).execute(&mut connection).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
        connection.close().await.expect("the connection closes");
    }

    async fn create(admin_url: &str) -> TestDatabase {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or_default();
        let name = format!("ticketd_test_{}_{}_{nanos:09}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to the test server ({URL_VARIABLE}): {error}"));
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|error| panic!("cannot create test database {name}: {error}"));
        admin.close().await.expect("the admin connection closes");
        let mut url = url::Url::parse(admin_url).expect("the test server URL parses");
        url.set_path(&format!("/{name}"));
        TestDatabase { name, url: url.to_string(), admin_url: admin_url.to_owned() }
    }
}

impl Drop for TestDatabase {
    /// Best effort: `DROP DATABASE … WITH (FORCE)` ends whatever connections a daemon left. Runs
    /// on a thread and runtime of its own, since the test's runtime may be shutting down.
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                let dropped = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
                dropped.ok()
            })
        });
        let _ = dropper.join();
    }
}

/// The server's superuser URL, when one is configured.
pub(crate) fn admin_url() -> Option<String> {
    std::env::var(URL_VARIABLE).ok().filter(|url| !url.trim().is_empty())
}

/// The server's address (host and port of its URL), for a proxy in front of it.
pub(crate) fn server_address(database: &TestDatabase) -> SocketAddr {
    let url = url::Url::parse(database.url()).expect("the test server URL parses");
    let host = url.host_str().expect("the test server URL names a host");
    let port = url.port().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .expect("the test server's host resolves")
        .next()
        .expect("the test server's host has an address")
}

/// Whether the tests run in CI, where a PostgreSQL test may not skip.
pub(crate) fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value.eq_ignore_ascii_case("true") || value == "1")
}

#[tokio::test]
async fn each_test_database_is_fresh_empty_isolated_and_dropped_afterwards() {
    let Some(first) = database().await else { return };
    let second = database().await.expect("a second database on the same server");
    assert_ne!(first.name(), second.name());

    let mut connection = first.connect().await;
    let (current, tables): (String, i64) = sqlx::query_as(
        "SELECT current_database()::text, \
         (SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public')",
    )
    .fetch_one(&mut connection)
    .await
    .expect("the database answers");
    assert_eq!((current.as_str(), tables), (first.name(), 0), "a fresh database has no tables");
    sqlx::raw_sql("CREATE TABLE tickets (id bigint PRIMARY KEY); INSERT INTO tickets VALUES (1)")
        .execute(&mut connection)
        .await
        .expect("the test owns its database");

    let mut other = second.connect().await;
    let seen: Option<String> = sqlx::query_scalar("SELECT to_regclass('public.tickets')::text")
        .fetch_one(&mut other)
        .await
        .expect("the other database answers");
    assert_eq!(seen, None, "a table of one test's database is not visible in another's");
    other.close().await.expect("the connection closes");

    // Dropping the value drops the database, even with a connection still open on it.
    let (name, admin_url) = (first.name().to_owned(), first.admin_url().to_owned());
    drop(first);
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("the admin connection");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .expect("pg_database is read");
    assert_eq!(left, 0, "the database is dropped with its value");
    assert!(connection.ping().await.is_err(), "the connection left open was ended by the drop");
}

#[tokio::test]
async fn the_test_suites_variables_are_not_read_as_configuration_but_other_unknown_ones_are_refused() {
    let env = TestEnv::new("").await;
    let reserved = [(URL_VARIABLE, "postgres://someone:hunter2@127.0.0.1:1/none"), ("FLINK_TICKETD_TEST_X__Y", "1")];
    let checked = env.cli_with(&env.config_file(), &["check-config"], &reserved);
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    assert!(!checked.stdout.contains("hunter2") && !checked.stderr.contains("hunter2"));

    let unknown = env.cli_with(&env.config_file(), &["check-config"], &[("FLINK_TICKETD_TESTS", "1")]);
    assert_eq!(unknown.code, Some(2), "{}", unknown.stdout);
    assert!(unknown.stderr.contains("tests"), "{}", unknown.stderr);
}
