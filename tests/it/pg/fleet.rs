//! Daemon binaries on one PostgreSQL database, as on several hosts: each runs `run` with a
//! config file of its own (`database.url` pointing at the server or at a proxy in front of it),
//! its own HTTP port for `/readyz`, and its own access key, which the simulator's request log
//! records, so a test can tell which daemon polled which ticket and when.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flink_ticketd::simulator::LoggedRequest;
use sqlx::Connection as _;

use crate::harness::{BinaryDaemon, HANG, KEY_SECRET, TestEnv, eventually, eventually_within};
use crate::pg::TestDatabase;

/// `database.max_connections` of every test daemon.
pub(crate) const MAX_CONNECTIONS: i64 = 10;

/// The simulator, the temp dir and the database the daemons share.
pub(crate) struct Fleet {
    pub env: TestEnv,
    /// Where the test reads and writes the database directly (it moves with a failover).
    url: std::sync::Mutex<String>,
}

/// One ticket row, as the tests read it back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Row {
    pub ticket_id: String,
    pub state: String,
    pub deploy_success: Option<bool>,
    pub polls: i64,
    pub lease_owner: Option<String>,
}

/// One outbox row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Delivery {
    pub ticket_id: String,
    pub url: String,
    pub webhook_id: String,
    pub event_type: String,
    pub state: String,
}

impl Fleet {
    /// A simulator playing `scenario` that accepts the keys of daemons `0..daemons`, next to the
    /// database at `url`.
    pub(crate) async fn new(url: &str, scenario: &str, daemons: usize) -> Fleet {
        let env = TestEnv::new(scenario).await;
        env.sim.set_credentials((0..daemons).map(|index| (key(index), KEY_SECRET.to_owned())).collect());
        Fleet { env, url: std::sync::Mutex::new(url.to_owned()) }
    }

    /// Reads and writes go to `url` from now on (after a failover).
    pub(crate) fn move_to(&self, url: &str) {
        url.clone_into(&mut self.url.lock().expect("not poisoned"));
    }

    /// A plain connection, as another program has.
    pub(crate) async fn connect(&self) -> sqlx::PgConnection {
        let url = self.url.lock().expect("not poisoned").clone();
        sqlx::PgConnection::connect(&url).await.expect("a connection to the database")
    }

    /// Runs `sql` on a connection of its own.
    pub(crate) async fn execute(&self, sql: &str) {
        let mut connection = self.connect().await;
        sqlx::raw_sql(sql).execute(&mut connection).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
        connection.close().await.expect("the connection closes");
    }

    /// Starts daemon `index` on `url` (this fleet's database, directly or through a proxy), with
    /// `extra` TOML tables and environment overrides. Its HTTP listener is on a free port.
    pub(crate) fn spawn(&self, index: usize, url: &str, extra: &str, vars: &[(&str, &str)]) -> BinaryDaemon {
        let config = self.env.dir.path().join(format!("daemon-{index}.toml"));
        std::fs::write(&config, format!("{}\n{extra}", config_text(&self.env, url, index))).expect("config written");
        let log = self.env.dir.path().join(format!("daemon-{index}-{}.log", unique()));
        let log_file = std::fs::File::create(&log).expect("the log file is created");
        let child = crate::harness::daemon_command(&config, log_file)
            .env("FLINK_TICKETD_HTTP__LISTEN", "127.0.0.1:0")
            // Short enough for leases of a few seconds (a lease must outlast one request).
            .env("FLINK_TICKETD_FLINK__CONNECT_TIMEOUT", "300ms")
            .env("FLINK_TICKETD_FLINK__REQUEST_TIMEOUT", "1s")
            .envs(vars.iter().copied())
            .spawn()
            .expect("the daemon binary starts");
        BinaryDaemon { child, log }
    }

    /// Inserts `count` tickets named `{prefix}{n:06}` (n from `first`) with a plain INSERT naming
    /// only the required columns, as users do.
    pub(crate) async fn insert(&self, prefix: &str, first: usize, count: usize) {
        self.execute(&format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace) \
                 SELECT '{prefix}' || lpad(n::text, 6, '0'), 'ns', 'ws' FROM generate_series({first}, {}) AS n",
            first + count - 1
        ))
        .await;
    }

    /// Every ticket row.
    pub(crate) async fn rows(&self) -> Vec<Row> {
        let mut connection = self.connect().await;
        let rows = sqlx::query_as(
            "SELECT ticket_id, state, deploy_success, polls::bigint AS polls, lease_owner \
             FROM tickets ORDER BY ticket_id",
        )
        .fetch_all(&mut connection)
        .await
        .expect("the tickets are read");
        connection.close().await.expect("the connection closes");
        rows
    }

    /// Every outbox row, with its ticket's ID.
    pub(crate) async fn deliveries(&self) -> Vec<Delivery> {
        let mut connection = self.connect().await;
        let rows = sqlx::query_as(
            "SELECT t.ticket_id, d.url, d.webhook_id, d.event_type, d.state \
             FROM webhook_deliveries d JOIN tickets t ON t.id = d.ticket ORDER BY t.ticket_id, d.url",
        )
        .fetch_all(&mut connection)
        .await
        .expect("the deliveries are read");
        connection.close().await.expect("the connection closes");
        rows
    }

    /// How many tickets are in each state.
    pub(crate) async fn counts(&self) -> HashMap<String, i64> {
        let mut connection = self.connect().await;
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT state, count(*) FROM tickets GROUP BY state")
            .fetch_all(&mut connection)
            .await
            .expect("the counts are read");
        connection.close().await.expect("the connection closes");
        rows.into_iter().collect()
    }

    /// Waits (up to `limit`) until no ticket is pending and `deliveries` outbox rows are delivered.
    pub(crate) async fn wait_settled(&self, limit: Duration, deliveries: i64) {
        eventually_within(limit, "every ticket final and every webhook delivered", || async {
            let mut connection = self.connect().await;
            let (pending, delivered): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM tickets WHERE state = 'pending'), \
                        (SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered')",
            )
            .fetch_one(&mut connection)
            .await
            .expect("the counts are read");
            connection.close().await.expect("the connection closes");
            (pending == 0 && delivered == deliveries).then_some(())
        })
        .await;
    }

    /// The simulator's polls of each ticket, in arrival order.
    pub(crate) fn polls_by_ticket(&self) -> HashMap<String, Vec<LoggedRequest>> {
        let mut polls: HashMap<String, Vec<LoggedRequest>> = HashMap::new();
        for request in self.env.sim.requests() {
            if let Some(ticket_id) = request.ticket_id.clone() {
                polls.entry(ticket_id).or_default().push(request);
            }
        }
        polls
    }
}

/// The access key daemon `index` signs with.
pub(crate) fn key(index: usize) -> String {
    format!("LTAI-daemon-{index}")
}

/// Waits for the daemon's HTTP address (logged once it is up, after the migrations), then for
/// `/readyz` to say ready.
pub(crate) async fn wait_ready(daemon: &BinaryDaemon) -> SocketAddr {
    let started = std::time::Instant::now();
    loop {
        let address = daemon
            .log_text()
            .lines()
            .filter(|line| line.contains("daemon started"))
            .find_map(|line| line.split_whitespace().find_map(|field| field.strip_prefix("http=")))
            .and_then(|address| address.parse::<SocketAddr>().ok());
        if let Some(address) = address {
            if readyz(address).await == Some(200) {
                return address;
            }
        }
        assert!(started.elapsed() < HANG, "the daemon did not become ready; its log:\n{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status of `/readyz`; `None` when it does not answer within 5 s (a hung daemon; its
/// database check gives up after 2 s).
pub(crate) async fn readyz(address: SocketAddr) -> Option<u16> {
    get(address, "/readyz").await
}

/// The status of `/healthz`; `None` when it does not answer within 5 s.
pub(crate) async fn healthz(address: SocketAddr) -> Option<u16> {
    get(address, "/healthz").await
}

/// Lines of the daemon's log containing `text`.
pub(crate) fn log_lines(daemon: &BinaryDaemon, text: &str) -> Vec<String> {
    daemon.log_text().lines().filter(|line| line.contains(text)).map(str::to_owned).collect()
}

/// Waits until the daemon's log contains `text`.
pub(crate) async fn wait_log(daemon: &BinaryDaemon, text: &str) {
    eventually(&format!("the daemon to log {text:?}"), || async { daemon.log_text().contains(text).then_some(()) })
        .await;
}

/// Whether the process is still running (neither exited nor killed).
pub(crate) fn alive(daemon: &mut BinaryDaemon) -> bool {
    matches!(daemon.child.try_wait(), Ok(None))
}

/// Sessions on `database` by state, from `pg_stat_activity` (client backends only).
pub(crate) async fn sessions(database: &TestDatabase) -> HashMap<String, i64> {
    let mut admin = sqlx::PgConnection::connect(database.admin_url()).await.expect("the admin connection");
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(state, ''), count(*) FROM pg_stat_activity \
         WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1",
    )
    .bind(database.name())
    .fetch_all(&mut admin)
    .await
    .expect("pg_stat_activity is read");
    admin.close().await.expect("the connection closes");
    rows.into_iter().collect()
}

/// The test config with `[database]` on `url` and the access key of daemon `index`.
fn config_text(env: &TestEnv, url: &str, index: usize) -> String {
    let text = env.config_text();
    let path_line = text.lines().find(|line| line.starts_with("path = ")).expect("the test config sets path");
    let database = format!("url = {url:?}\nmax_connections = {MAX_CONNECTIONS}\nstatement_timeout = \"2s\"");
    let key_line = format!("access_key_id = {:?}", crate::harness::KEY_ID);
    text.replacen(path_line, &database, 1).replacen(&key_line, &format!("access_key_id = {:?}", key(index)), 1)
}

async fn get(address: SocketAddr, path: &str) -> Option<u16> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("a client");
    let response = tokio::time::timeout(HANG, client.get(format!("http://{address}{path}")).send()).await.ok()?;
    Some(response.ok()?.status().as_u16())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A time the server gave as microseconds since the epoch (`extract(epoch FROM …) * 1e6`).
pub(crate) fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).expect("a time in range")
}
