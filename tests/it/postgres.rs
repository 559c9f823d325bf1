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

/// The test database's URL for a login role of its own whose password is `password` (the server
/// checks passwords over TCP; roles belong to the whole server, so this one is named after the
/// database).
async fn with_password(database: &crate::pg::TestDatabase, password: &str) -> String {
    let role = format!("owner_{}", database.name().rsplit('_').next().unwrap_or("x"));
    database.execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'")).await;
    let mut url = url::Url::parse(database.url()).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some(password)).unwrap();
    url.to_string()
}

#[tokio::test]
async fn every_command_and_the_daemon_work_with_database_url_and_never_show_its_password() {
    const PASSWORD: &str = "pw-s3cret-never-shown";
    let Some(database) = crate::pg::database().await else { return };
    let env = TestEnv::new("").await;
    let mut sink = crate::harness::WebhookSink::accepting().await;
    let url = with_password(&database, PASSWORD).await;
    // The environment overrides the file's SQLite path with the built-in one, so that only the
    // URL names a database.
    let vars = [("FLINK_TICKETD_DATABASE__URL", url.as_str()), ("FLINK_TICKETD_DATABASE__PATH", "flink-ticketd.db")];
    let webhook = format!(
        "[webhook]\nurls = [{:?}]\nsecret = \"whsec_aW50ZWdyYXRpb24tdGVzdC1zZWNyZXQtbnVtYmVyLTE=\"\nschedule = [\"50ms\"]\n",
        sink.url
    );
    let config = env.config_file_with(&webhook);
    let cli = |args: &[&str]| {
        let output = env.cli_with(&config, args, &vars);
        assert!(
            !output.stdout.contains(PASSWORD) && !output.stderr.contains(PASSWORD),
            "{args:?} showed the password:\n{}\n{}",
            output.stdout,
            output.stderr
        );
        output
    };

    let checked = cli(&["check-config"]);
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    assert!(checked.stdout.contains("[database]\nurl = \"postgres://"), "{}", checked.stdout);
    assert!(!checked.stdout.contains("path = "), "{}", checked.stdout);
    let migrated = cli(&["migrate"]);
    assert_eq!(migrated.code, Some(0), "{}", migrated.stderr);
    assert_eq!(cli(&["migrate"]).code, Some(0), "migrating again changes nothing");

    let queued = cli(&["enqueue", "--namespace", "ns", "--workspace", "ws", "pg-1", "pg-2"]);
    assert_eq!(queued.code, Some(0), "{}", queued.stderr);
    let duplicate = cli(&["enqueue", "--namespace", "ns", "--workspace", "ws", "pg-1"]);
    assert_eq!(duplicate.code, Some(2));
    assert!(duplicate.stderr.contains("already queued"), "{}", duplicate.stderr);
    let empty = cli(&["enqueue", "--namespace", "ns", "--workspace", "ws", ""]);
    assert_eq!(empty.code, Some(2));
    assert!(empty.stderr.contains("ticket_id_must_be_1_to_128_printable_chars"), "{}", empty.stderr);
    let cancelled = cli(&["cancel", "pg-2"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.stderr);

    let daemon = env.spawn_binary_with(&webhook, &vars);
    let received = sink.next().await;
    assert_eq!(received.json()["data"]["ticket_id"], "pg-1");
    let listed = cli(&["list", "--json"]);
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let states: BTreeSet<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["ticket_id"].as_str().unwrap().to_owned(), row["state"].as_str().unwrap().to_owned()))
        .collect();
    assert!(states.contains(&("pg-2".to_owned(), "cancelled".to_owned())), "{states:?}");
    let shown = eventually("pg-1 shown with its delivered webhook", || async {
        let shown = cli(&["show", "pg-1", "--json"]);
        let shown: serde_json::Value = serde_json::from_str(&shown.stdout).ok()?;
        (shown["webhook_deliveries"][0]["state"] == "delivered").then_some(shown)
    })
    .await;
    assert_eq!(shown["state"], "succeeded");
    assert_eq!(
        shown["webhook_deliveries"][0]["webhook_id"].as_str(),
        received.header("webhook-id").into(),
        "the delivery row names the webhook-id that was sent"
    );
    let deliveries = cli(&["webhooks", "list"]);
    assert_eq!(deliveries.code, Some(0), "{}", deliveries.stderr);
    assert!(deliveries.stdout.contains("delivered"), "{}", deliveries.stdout);
    let id = shown["webhook_deliveries"][0]["id"].to_string();
    let resent = cli(&["webhooks", "resend", &id]);
    assert_eq!(resent.code, Some(0), "{}", resent.stderr);
    let again = sink.next().await;
    assert_eq!(again.header("webhook-id"), received.header("webhook-id"), "a resend keeps the webhook-id");
    let retried = cli(&["retry", "pg-2"]);
    assert_eq!(retried.code, Some(0), "{}", retried.stderr);
    let retried_hook = sink.next().await;
    assert_eq!(retried_hook.json()["data"]["ticket_id"], "pg-2", "the retried ticket was polled again and announced");

    daemon.signal(15);
    let log_path = daemon.log.clone();
    assert_eq!(daemon.wait(), Some(0), "the daemon stops cleanly on SIGTERM");
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(!log.contains(PASSWORD), "the daemon logged the password:\n{log}");

    let mut wrong = url::Url::parse(&url).unwrap();
    wrong.set_path("/no_such_database");
    let wrong = wrong.to_string();
    let failed = env.cli_with(&config, &["list"], &[("FLINK_TICKETD_DATABASE__URL", &wrong), vars[1]]);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert!(failed.stderr.contains("no_such_database"), "{}", failed.stderr);
    assert!(!failed.stderr.contains(PASSWORD), "{}", failed.stderr);
}

#[tokio::test]
async fn a_server_that_accepts_and_never_answers_fails_the_start_within_the_call_timeout_instead_of_hanging() {
    // A listener that accepts connections and then says nothing: a half-open network.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let mut settings = postgres_settings(&format!("postgres://ticketd:secret-pw@{address}/tickets"));
    settings.statement_timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let error = Store::open(&settings).await.expect_err("nothing answers");
    let waited = started.elapsed();
    let text = format!("{error:#}");
    assert!(waited < Duration::from_secs(5), "the start waited {waited:?}");
    assert!(text.contains("timed out") || text.contains("no answer within"), "{text}");
    assert!(!text.contains("secret-pw"), "{text}");
    held.abort();
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that counts the bytes clients send.
async fn counting_proxy(upstream: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buffer = vec![0; 16 * 1024];
                while let Ok(read) = client_read.read(&mut buffer).await {
                    if read == 0 || server_write.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                    counter.fetch_add(read as u64, Ordering::Relaxed);
                }
            });
            tokio::spawn(async move { tokio::io::copy(&mut server_read, &mut client_write).await });
        }
    });
    (address, sent)
}

#[tokio::test]
async fn ten_thousand_pending_tickets_not_yet_due_cost_no_queries_between_the_safety_timers() {
    use std::sync::atomic::Ordering;
    const LONG: Duration = Duration::from_secs(60);
    let Some(database) = crate::pg::database().await else { return };
    Store::open(&postgres_settings(database.url())).await.unwrap().close().await;
    database
        .execute(
            "INSERT INTO tickets (ticket_id, namespace, workspace, next_poll_at)
         SELECT 'idle-' || n, 'ns', 'ws', now() + interval '30 seconds' FROM generate_series(1, 10000) AS n",
        )
        .await;
    let mut url = url::Url::parse(database.url()).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432)).parse().unwrap();
    let (proxy, sent) = counting_proxy(upstream).await;
    url.set_port(Some(proxy.port())).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();

    let env = TestEnv::new("").await;
    let config = env.config(|config| {
        config.database = Database::Postgres(postgres_settings(url.as_str()));
        // Due times up to two minutes ahead are ones the daemon itself could have set (not left
        // behind by a clock step, which the loop would pull back to now).
        config.poll.lease = Duration::from_secs(120);
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let daemon::Connection { store, flink } = daemon::connect(&config, &clock).await.unwrap();
    let (poller, recorder_task) = daemon::poller(&config, store.clone(), flink, clock, lease_owner_prefix("idle"), 4);
    let poller = Arc::new(poller.with_heartbeat(LONG).with_wake_interval(LONG));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let run = tokio::spawn(Arc::clone(&poller).run_until_cancelled(shutdown.clone(), tracker.clone()));

    // The loop looks once at start (its listener, the due time, the clock-step check) ...
    eventually("the loop's first look", || async { (sent.load(Ordering::Relaxed) > 0).then_some(()) }).await;
    // ... then, with nothing due for 30 s and the safety timer at 60 s, sends nothing at all.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = sent.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = sent.load(Ordering::Relaxed) - settled;
    eprintln!("bytes sent to the database in 3 idle seconds with 10 000 pending tickets: {idle}");
    assert_eq!(idle, 0, "the idle loop queried the database");
    assert!(env.sim.requests().is_empty(), "nothing was due");

    shutdown.cancel();
    run.await.unwrap();
    tracker.close();
    tracker.wait().await;
    drop(poller);
    recorder_task.await.unwrap();
    store.close().await;
}

/// Times one claim of one due row (a zero lease leaves it due for the next).
async fn time_claim(store: &Store) -> Duration {
    let now = Utc::now() + chrono::Duration::hours(1);
    let lease = flink_ticketd::store::Lease("latency#1".to_owned());
    let started = std::time::Instant::now();
    let claimed = store.claim_due_tickets(&lease, now, Duration::ZERO, 1, Duration::from_secs(7200)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(claimed.len(), 1);
    took
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::test]
async fn claim_latency_with_a_million_finished_rows_stays_within_one_and_a_half_times_that_with_ten_thousand() {
    const ROUNDS: usize = 400;
    let (Some(small_database), Some(large_database)) = (crate::pg::database().await, crate::pg::database().await)
    else {
        return;
    };
    let mut stores = Vec::new();
    for (database, finished) in [(&small_database, 10_000), (&large_database, 1_000_000)] {
        let store = Store::open(&postgres_settings(database.url())).await.unwrap();
        database
            .execute(&format!(
                "INSERT INTO tickets (ticket_id, namespace, workspace) SELECT 'due-' || n, 'ns', 'ws' FROM generate_series(1, 50) AS n;
                 INSERT INTO tickets (ticket_id, namespace, workspace, state, finished_at, next_poll_at)
                 SELECT 'done-' || n, 'ns', 'ws', 'succeeded', now(), now() FROM generate_series(1, {finished}) AS n;
"
            ))
            .await;
        // Nothing left for autovacuum to do during the measurement.
        database.execute("VACUUM (FREEZE, ANALYZE) tickets").await;
        for _ in 0..50 {
            time_claim(&store).await;
        }
        stores.push(store);
    }
    // Alternating claims on the two databases see the same load on this machine.
    let (mut small, mut large) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for _ in 0..ROUNDS {
        small.push(time_claim(&stores[0]).await);
        large.push(time_claim(&stores[1]).await);
    }
    // Each pair of claims ran back to back: their ratio is what the table size costs.
    let mut ratios: Vec<f64> =
        small.iter().zip(&large).map(|(small, large)| large.as_secs_f64() / small.as_secs_f64()).collect();
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[ratios.len() / 2];
    let (small, large) = (median(small), median(large));
    eprintln!("median claim latency: {small:?} with 10k finished rows, {large:?} with 1M (median ratio {ratio:.2})");
    assert!(ratio <= 1.5, "claims slowed {ratio:.2} times with a million finished rows ({small:?} to {large:?})");
    for store in stores {
        store.close().await;
    }
}

#[tokio::test]
async fn after_an_operator_migrates_a_daemon_role_without_ddl_rights_opens_and_works_the_queue() {
    let Some(database) = crate::pg::database().await else { return };
    Store::open(&postgres_settings(database.url())).await.unwrap().close().await;
    let role = format!("daemon_{}", database.name().rsplit('_').next().unwrap_or("x"));
    database
        .execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} LOGIN PASSWORD 'daemon-password'; END IF; END $$;
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};"
        ))
        .await;
    let mut url = url::Url::parse(database.url()).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("daemon-password")).unwrap();
    let store = Store::open(&postgres_settings(url.as_str())).await.expect("the daemon's role opens the store");
    let queued = store.insert_ticket(&crate::harness::new_ticket("no-ddl")).await.unwrap();
    let lease = flink_ticketd::store::Lease("no-ddl#1".to_owned());
    let claimed = store
        .claim_due_tickets(
            &lease,
            Utc::now() + chrono::Duration::seconds(1),
            Duration::from_secs(60),
            10,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|row| row.id).collect::<Vec<_>>(), [queued.id]);
    let ddl = store.purge_finished_batch(Utc::now(), 10).await;
    assert!(ddl.is_ok(), "retention needs no DDL either: {ddl:?}");
    store.close().await;
    database.execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;
}
