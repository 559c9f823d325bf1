//! Real parts for the integration tests: a SQLite file in a temp dir, the simulated Flink API on
//! 127.0.0.1 as the cloud, and the daemon either in-process (`crate::run`, as `main` calls it),
//! as its parts without their loops ([`Driven`], whose claim steps a test turns itself on a
//! manual clock), or as the real binary. Tests that need the work done drive the steps until
//! nothing is pending; [`eventually`] re-checks a condition only where a test watches a separate
//! process or real time (deadlines, backoff delays, pauses, the running loops themselves).
//! Every wait has a timeout that only catches hangs.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flink_ticketd::claim_loop;
use flink_ticketd::clock::{Clock, ManualClock, SystemClock};
use flink_ticketd::config::{self, Config};
use flink_ticketd::domain::{RowId, TicketState};
use flink_ticketd::flink::{CredentialProvider, Credentials, FlinkClient};
use flink_ticketd::poller::Poller;
use flink_ticketd::service::MAX_HEARTBEAT;
use flink_ticketd::simulator::{Scenario, Simulator, SimulatorSettings};
use flink_ticketd::store::{NewTicket, Store, StoreSettings, Ticket};
use flink_ticketd::webhook::Deliverer;
use sqlx::Connection as _;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const KEY_ID: &str = "LTAI-test-key";
pub const KEY_SECRET: &str = "test-secret-0123456789";

/// Longest any single wait in a test may take before it counts as a hang.
pub const HANG: Duration = Duration::from_secs(30);

/// A temp dir with a database path, and a running simulator.
pub struct TestEnv {
    pub dir: TempDir,
    pub db_path: PathBuf,
    pub sim: Simulator,
    sim_shutdown: CancellationToken,
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.sim_shutdown.cancel();
    }
}

impl TestEnv {
    /// A simulator playing `scenario` (TOML, see config/simulator-example.toml).
    pub async fn new(scenario: &str) -> TestEnv {
        let scenario = Scenario::from_toml_str(scenario).expect("the test scenario parses");
        TestEnv::with_scenario(scenario).await
    }

    pub async fn with_scenario(scenario: Scenario) -> TestEnv {
        TestEnv::with_clock_offset(scenario, 0).await
    }

    /// A simulator whose clock runs `clock_offset_secs` ahead of ours (behind when negative).
    pub async fn with_clock_offset(scenario: Scenario, clock_offset_secs: i64) -> TestEnv {
        let dir = tempfile::tempdir().expect("a temp dir");
        let db_path = dir.path().join("tickets.db");
        let sim_shutdown = CancellationToken::new();
        let sim = Simulator::start(
            "127.0.0.1:0".parse().expect("a socket address"),
            SimulatorSettings {
                credentials: vec![(KEY_ID.to_owned(), KEY_SECRET.to_owned())],
                scenario,
                clock_offset_secs,
            },
            sim_shutdown.clone(),
        )
        .await
        .expect("the simulator starts");
        TestEnv { dir, db_path, sim, sim_shutdown }
    }

    /// Stops the simulated API: its port closes and open connections end, as when the cloud is
    /// unreachable.
    pub fn stop_simulator(&self) {
        self.sim_shutdown.cancel();
    }

    /// The configuration file every test daemon starts from: fast, small schedules.
    pub fn config_text(&self) -> String {
        format!(
            r#"
[database]
path = {db:?}
busy_timeout = "5s"

[flink]
endpoint = {endpoint:?}
access_key_id = {KEY_ID:?}
access_key_secret = {KEY_SECRET:?}
max_requests_per_second = 2000.0
max_in_flight = 16
connect_timeout = "1s"
request_timeout = "2s"

[poll]
initial_interval = "20ms"
max_interval = "100ms"
multiplier = 2.0
deadline = "60s"
lease = "4s"

[shutdown]
grace = "3s"

[http]
listen = ""

[log]
level = "info"
"#,
            db = self.db_path.display().to_string(),
            endpoint = self.sim.base_url(),
        )
    }

    /// Writes [`TestEnv::config_text`] to a file and returns its path.
    pub fn config_file(&self) -> PathBuf {
        self.config_file_with("")
    }

    /// Writes [`TestEnv::config_text`] followed by `extra` (whole TOML tables the base text does
    /// not have, such as `[webhook]`) to a file and returns its path.
    pub fn config_file_with(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, format!("{}\n{extra}", self.config_text())).expect("the config file is written");
        path
    }

    /// The validated configuration, changed by `adjust`.
    pub fn config(&self, adjust: impl FnOnce(&mut Config)) -> Config {
        let mut config = config::load(Some(&self.config_file())).expect("the test config is valid");
        adjust(&mut config);
        config
    }

    /// The daemon's API client with the test key, sending to `endpoint` instead of the simulator.
    pub fn client_for(&self, endpoint: url::Url) -> FlinkClient {
        let mut settings = self.config(|_| {}).flink.client;
        settings.endpoints.override_url = Some(endpoint);
        let credentials = CredentialProvider::fixed(
            "test",
            Credentials {
                access_key_id: KEY_ID.to_owned(),
                access_key_secret: secrecy::SecretString::from(KEY_SECRET.to_owned()),
                security_token: None,
            },
        );
        FlinkClient::new(&settings, credentials, Arc::new(SystemClock)).expect("the client builds")
    }

    /// Opens the database the daemons use (migrated).
    pub async fn store(&self) -> Store {
        Store::open(&StoreSettings { path: self.db_path.clone(), busy_timeout: Duration::from_secs(5), max_readers: 2 })
            .await
            .expect("the store opens")
    }

    /// Runs statements through a connection of its own, as another program would.
    pub async fn execute_sql(&self, sql: &str) {
        let url = format!("sqlite://{}?mode=rwc", self.db_path.display());
        let mut connection = sqlx::SqliteConnection::connect(&url).await.expect("a plain connection");
        sqlx::raw_sql("PRAGMA busy_timeout = 5000").execute(&mut connection).await.expect("busy timeout set");
        sqlx::raw_sql(sql).execute(&mut connection).await.expect("the SQL runs");
        connection.close().await.expect("the connection closes");
    }

    /// Queues a ticket with a plain INSERT naming only the required columns.
    pub async fn insert(&self, ticket_id: &str, namespace: &str, workspace: &str) {
        self.execute_sql(&format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ({}, {}, {})",
            quote(ticket_id),
            quote(namespace),
            quote(workspace)
        ))
        .await;
    }

    /// Starts the daemon in-process with the test config, changed by `adjust`.
    pub async fn spawn_daemon(&self, adjust: impl FnOnce(&mut Config)) -> TestDaemon {
        self.spawn_daemon_with_clock(Arc::new(SystemClock), adjust).await
    }

    /// Starts the daemon in-process on `clock` (a `ManualClock` in tests that move time).
    pub async fn spawn_daemon_with_clock(&self, clock: Arc<dyn Clock>, adjust: impl FnOnce(&mut Config)) -> TestDaemon {
        let config = self.config(adjust);
        // The schema must exist before tests insert rows.
        self.store().await.close().await;
        let shutdown = CancellationToken::new();
        // Detached from any service manager the test process itself may run under.
        let supervisor = flink_ticketd::service::Supervisor::new(None, |_| {});
        let handle = tokio::spawn(flink_ticketd::run_supervised(config, clock, shutdown.clone(), supervisor));
        TestDaemon { shutdown, handle }
    }

    /// Starts the real binary (`run`) with the test config file and extra environment.
    pub fn spawn_binary(&self, env: &[(&str, &str)]) -> BinaryDaemon {
        self.spawn_binary_with("", env)
    }

    /// Starts the real binary with the test config plus `extra` TOML tables (see
    /// [`TestEnv::config_file_with`]).
    pub fn spawn_binary_with(&self, extra: &str, env: &[(&str, &str)]) -> BinaryDaemon {
        let config = self.config_file_with(extra);
        let log = self.dir.path().join(format!("daemon-{}.log", rand_suffix()));
        let log_file = std::fs::File::create(&log).expect("the log file is created");
        let child =
            daemon_command(&config, log_file).envs(env.iter().copied()).spawn().expect("the daemon binary starts");
        BinaryDaemon { child, log }
    }

    /// Runs a CLI command of the real binary against the test config.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with(&self.config_file(), args, &[])
    }

    /// [`TestEnv::cli_with`] off the async runtime, for commands that talk to the simulator (which
    /// runs on the test's runtime and must keep answering while the command waits).
    pub async fn cli_async(&self, config: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let owned = |pairs: &[&str]| pairs.iter().map(|text| (*text).to_owned()).collect::<Vec<String>>();
        let (config, args) = (config.to_path_buf(), owned(args));
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let home = self.dir.path().join("home");
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run_cli(&home, &config, &args, &env)
        })
        .await
        .expect("the command joins")
    }

    /// Runs a CLI command of the real binary with config file `config` and extra environment.
    ///
    /// The credential chain and the HTTP client see only what the test gives them: every
    /// `ALIBABA_CLOUD_*` variable of the chain and every proxy variable is removed, `HOME` is an
    /// empty directory under the test's temp dir, and the ECS metadata service is disabled (so
    /// nothing ever talks to 100.100.100.200), unless `env` sets them.
    pub fn cli_with(&self, config: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        run_cli(&self.dir.path().join("home"), config, args, env)
    }

    /// Every row with this ticket ID.
    pub async fn tickets(&self, ticket_id: &str) -> Vec<Ticket> {
        let store = self.store().await;
        let rows = store.find_tickets(ticket_id, None, None, None).await.expect("tickets are read");
        store.close().await;
        rows
    }

    /// The one row with this ticket ID.
    pub async fn ticket(&self, ticket_id: &str) -> Ticket {
        let mut rows = self.tickets(ticket_id).await;
        assert_eq!(rows.len(), 1, "expected one row for {ticket_id:?}");
        rows.remove(0)
    }

    /// Waits until the ticket is no longer pending and returns it.
    pub async fn wait_final(&self, ticket_id: &str) -> Ticket {
        let store = self.store().await;
        let ticket = eventually(&format!("ticket {ticket_id:?} to finish"), || async {
            let rows = store.find_tickets(ticket_id, None, None, None).await.expect("tickets are read");
            rows.into_iter().find(|ticket| ticket.state != TicketState::Pending)
        })
        .await;
        store.close().await;
        ticket
    }

    /// Waits until every pending ticket is final.
    pub async fn wait_all_final(&self) {
        let store = self.store().await;
        eventually("every ticket to finish", || async {
            let counts = store.count_tickets_by_state().await.expect("counts are read");
            (!counts.iter().any(|(state, count)| state == "pending" && *count > 0)).then_some(())
        })
        .await;
        store.close().await;
    }
}

/// The daemon's poller and delivery queue in-process without their loops, on a `ManualClock`
/// that starts at the wall-clock time. Tests drive the claim steps themselves
/// ([`Driven::settle`]) instead of waiting for a running loop.
pub struct Driven {
    pub clock: Arc<ManualClock>,
    pub store: Store,
    pub poller: Arc<Poller>,
    /// `None` when no webhook secret is configured (the daemon sends nothing then either).
    pub deliverer: Option<Arc<Deliverer>>,
    recorder_task: JoinHandle<()>,
}

impl TestEnv {
    /// Builds the daemon's parts from the test config, changed by `adjust`, as `run` does.
    pub async fn driven(&self, adjust: impl FnOnce(&mut Config)) -> Driven {
        let config = self.config(adjust);
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let shared: Arc<dyn Clock> = Arc::clone(&clock) as Arc<dyn Clock>;
        let flink_ticketd::daemon::Parts { store, poller, deliverer, recorder_task, .. } =
            flink_ticketd::daemon::build(&config, shared, MAX_HEARTBEAT).await.expect("the daemon's parts build");
        let deliverer = (!config.webhook.secrets.is_empty()).then_some(deliverer);
        Driven { clock, store, poller, deliverer, recorder_task }
    }
}

impl Driven {
    /// One turn: claims and works off every due ticket, then every due delivery, one claim
    /// step at a time until both are idle; then moves the clock to the next due time. Returns
    /// `false` when nothing is pending (deliveries count only when they can be sent).
    pub async fn turn(&self) -> bool {
        claim_loop::drain(&self.poller).await.expect("tickets are claimed");
        if let Some(deliverer) = &self.deliverer {
            claim_loop::drain(deliverer).await.expect("deliveries are claimed");
        }
        let ticket_due = self.store.next_due_at().await.expect("the next due ticket is read");
        let delivery_due = match &self.deliverer {
            Some(_) => self.store.next_delivery_due_at().await.expect("the next due delivery is read"),
            None => None,
        };
        let Some(due) = ticket_due.into_iter().chain(delivery_due).min() else { return false };
        if due > self.clock.now() {
            self.clock.set(due);
        }
        true
    }

    /// Turns until nothing is pending. Panics after [`HANG`].
    pub async fn settle(&self) {
        tokio::time::timeout(HANG, async { while self.turn().await {} })
            .await
            .expect("every ticket and delivery settles in time");
    }

    /// Turns until `check` yields a value. Panics after [`HANG`].
    pub async fn turn_until<T, F, Fut>(&self, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        tokio::time::timeout(HANG, async {
            loop {
                if let Some(value) = check().await {
                    return value;
                }
                self.turn().await;
            }
        })
        .await
        .expect("the condition holds in time")
    }

    /// Drops the parts and waits for the recorder to write what it was given.
    pub async fn stop(self) {
        let Driven { store, poller, deliverer, recorder_task, .. } = self;
        drop(deliverer);
        drop(poller);
        tokio::time::timeout(HANG, recorder_task)
            .await
            .expect("the recorder stops in time")
            .expect("the recorder task joins");
        store.close().await;
    }
}

/// The in-process daemon.
pub struct TestDaemon {
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl TestDaemon {
    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(HANG, self.handle).await.expect("the daemon stops in time").expect("the daemon task joins")
    }
}

/// The real binary running `run`.
pub struct BinaryDaemon {
    pub child: Child,
    pub log: PathBuf,
}

impl BinaryDaemon {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pids fit in i32")
    }

    /// SIGKILL, like a crash or an OOM kill.
    pub fn kill(mut self) {
        self.child.kill().expect("the daemon is killed");
        self.child.wait().expect("the killed daemon is reaped");
    }

    /// Sends a signal by number (15 = SIGTERM).
    pub fn signal(&self, signal: i32) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait(mut self) -> Option<i32> {
        self.child.wait().expect("the daemon is reaped").code()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address of its HTTP listener, from the startup line of its log (`http=ADDR`); waits
    /// for that line.
    pub async fn http_address(&self) -> std::net::SocketAddr {
        eventually("the daemon to log its HTTP address", || async {
            self.log_text()
                .lines()
                .filter(|line| line.contains("daemon started"))
                .find_map(|line| line.split_whitespace().find_map(|field| field.strip_prefix("http=")))
                .and_then(|address| address.parse().ok())
        })
        .await
    }
}

impl Drop for BinaryDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Re-checks `check` every few milliseconds until it yields a value; panics after [`HANG`]. For
/// a separate process or real time only: in-process work is driven with [`Driven`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(HANG, what, check).await
}

/// [`eventually`] with a longer limit, for waits whose length grows with the work (a long
/// crash loop, a large queue).
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One connection of another program to the database at `url` (`sqlite://…`), waiting up to 5 s
/// for the write lock, as a well-behaved writer does. A pool of one, so that spawned tasks can
/// use it.
pub async fn outside_connection(url: &str) -> sqlx::SqlitePool {
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("a sqlite URL");
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.busy_timeout(Duration::from_secs(5)))
        .await
        .expect("an outside connection")
}

/// Runs the binary with a hermetic credential and proxy environment; see [`TestEnv::cli_with`].
fn run_cli(home: &Path, config: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    std::fs::create_dir_all(home).expect("the home dir is created");
    let mut command = Command::new(binary());
    command.arg("--config").arg(config).args(args).env_remove("RUST_LOG");
    let proxies =
        ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"];
    for name in flink_ticketd::flink::credentials::VARIABLES.iter().chain(&proxies) {
        command.env_remove(name);
    }
    let output = command
        .env("HOME", home)
        .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    CliOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `run` of the real binary with `config`, its log into `log`, and none of the service manager's
/// or the caller's logging variables (so a test's daemon neither notifies nor logs elsewhere).
pub fn daemon_command(config: &Path, log: std::fs::File) -> Command {
    let mut command = Command::new(binary());
    command
        .arg("--config")
        .arg(config)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    command
}

/// The daemon binary Cargo built for these tests.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flink-ticketd"))
}

/// The text `column` of ticket row `id` holds, as the sqlite3 shell shows it (`None` for NULL).
pub async fn stored_text(path: &Path, id: RowId, column: &str) -> Option<String> {
    let url = format!("sqlite://{}", path.display());
    let mut connection = sqlx::SqliteConnection::connect(&url).await.expect("a plain connection");
    let text = sqlx::query_scalar(&format!("SELECT CAST({column} AS TEXT) FROM tickets WHERE id = ?"))
        .bind(id.0)
        .fetch_one(&mut connection)
        .await
        .expect("the row is read");
    connection.close().await.expect("the connection closes");
    text
}

/// A new SQLite database at `path` as an earlier release left it: every migration before
/// `version` applied, foreign keys on. Returns the connection, for the rows that release wrote.
pub async fn database_before(path: &Path, version: i64) -> sqlx::SqliteConnection {
    let earlier = sqlx::migrate::Migrator {
        migrations: flink_ticketd::store::MIGRATOR
            .iter()
            .filter(|migration| migration.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    std::fs::File::create(path).expect("the database file is created");
    let mut connection =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.expect("a plain connection");
    sqlx::raw_sql("PRAGMA foreign_keys = ON").execute(&mut connection).await.expect("foreign keys on");
    earlier.run(&mut connection).await.expect("the earlier migrations apply");
    connection
}

/// One plain `INSERT` queuing a deploy ticket in namespace `ns`, workspace `ws` for each ID, as a
/// user's script would.
pub fn insert_tickets_sql(ticket_ids: impl IntoIterator<Item = String>) -> String {
    let values: Vec<String> = ticket_ids.into_iter().map(|id| format!("({}, 'ns', 'ws')", quote(&id))).collect();
    format!("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES {}", values.join(", "))
}

/// A SQL string literal.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A ticket `id` in namespace `ns`, workspace `ws`, with nothing else set.
pub fn new_ticket(id: &str) -> NewTicket {
    NewTicket {
        ticket_id: id.to_owned(),
        namespace: "ns".to_owned(),
        workspace: "ws".to_owned(),
        ..NewTicket::default()
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One request a [`FakeHttp`] saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target as received: a path, or an absolute URI when sent to a proxy.
    pub uri: String,
    pub query: std::collections::HashMap<String, String>,
    pub headers: axum::http::HeaderMap,
}

type Respond = Box<dyn FnMut(&Seen) -> (u16, String) + Send>;

#[derive(Clone)]
struct FakeState {
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    respond: Arc<std::sync::Mutex<Respond>>,
}

async fn fake_answer(
    axum::extract::State(state): axum::extract::State<FakeState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> (axum::http::StatusCode, String) {
    let query = uri
        .query()
        .map(|query| url::form_urlencoded::parse(query.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let request = Seen { method: method.to_string(), uri: uri.to_string(), query, headers };
    state.seen.lock().expect("not poisoned").push(request.clone());
    let (status, body) = (state.respond.lock().expect("not poisoned"))(&request);
    (axum::http::StatusCode::from_u16(status).expect("a valid status"), body)
}

/// A loopback HTTP server answering every request with a function of it: a fake STS, metadata
/// service, credentials URI or proxy.
pub struct FakeHttp {
    pub base_url: String,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    respond: Arc<std::sync::Mutex<Respond>>,
    shutdown: CancellationToken,
}

impl FakeHttp {
    pub async fn start(respond: impl FnMut(&Seen) -> (u16, String) + Send + 'static) -> FakeHttp {
        let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
        let respond: Arc<std::sync::Mutex<Respond>> = Arc::new(std::sync::Mutex::new(Box::new(respond)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let base_url = format!("http://{}/", listener.local_addr().expect("a bound address"));
        let state = FakeState { seen: Arc::clone(&seen), respond: Arc::clone(&respond) };
        let router = axum::Router::new().fallback(fake_answer).with_state(state);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        FakeHttp { base_url, seen, respond, shutdown }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("not poisoned").len()
    }

    /// Answers differently from now on.
    pub fn set(&self, respond: impl FnMut(&Seen) -> (u16, String) + Send + 'static) {
        *self.respond.lock().expect("not poisoned") = Box::new(respond);
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// How a [`WebhookSink`] answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status, empty body.
    Status(u16),
    /// This status with one extra header.
    WithHeader(u16, &'static str, String),
    /// This status with a body that never ends.
    Endless(u16),
    /// Never answer (the connection stays open until the test ends).
    Hang,
}

/// One request a [`WebhookSink`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: axum::http::HeaderMap,
    pub body: bytes::Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the webhook body is JSON")
    }
}

type Responder = dyn Fn(usize) -> Reply + Send + Sync;

/// A webhook receiver on 127.0.0.1: records every request (before answering) into a channel and
/// answers its n-th request (from 0) as `reply(n)` says.
pub struct WebhookSink {
    pub url: String,
    received: tokio::sync::mpsc::UnboundedReceiver<Received>,
    shutdown: CancellationToken,
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct SinkState {
    reply: Box<Responder>,
    count: std::sync::atomic::AtomicUsize,
    sender: tokio::sync::mpsc::UnboundedSender<Received>,
}

impl WebhookSink {
    /// A receiver that accepts everything with 204.
    pub async fn accepting() -> WebhookSink {
        WebhookSink::start(|_| Reply::Status(204)).await
    }

    pub async fn start(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> WebhookSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("the sink binds");
        let address = listener.local_addr().expect("the sink's address");
        let (sender, received) = tokio::sync::mpsc::unbounded_channel();
        let state = Arc::new(SinkState { reply: Box::new(reply), count: Default::default(), sender });
        let app = axum::Router::new().fallback(sink_handler).with_state(state);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = axum::serve(listener, app) => {}
                () = stop.cancelled() => {}
            }
        });
        WebhookSink { url: format!("http://{address}/hooks/flink"), received, shutdown }
    }

    /// The next request; panics after [`HANG`].
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(HANG, self.received.recv())
            .await
            .expect("the sink got a request in time")
            .expect("the sink is running")
    }

    /// Every request received so far and not yet taken.
    pub fn drain(&mut self) -> Vec<Received> {
        std::iter::from_fn(|| self.received.try_recv().ok()).collect()
    }
}

async fn sink_handler(
    axum::extract::State(state): axum::extract::State<Arc<SinkState>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let index = state.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _ = state.sender.send(Received {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    let status = |code: u16| axum::http::StatusCode::from_u16(code).expect("a valid status");
    match (state.reply)(index) {
        Reply::Status(code) => status(code).into_response(),
        Reply::WithHeader(code, name, value) => (status(code), [(name, value)]).into_response(),
        Reply::Endless(code) => (status(code), axum::body::Body::new(Endless)).into_response(),
        Reply::Hang => std::future::pending().await,
    }
}

/// A response body that never ends.
struct Endless;

impl hyper::body::Body for Endless {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        static CHUNK: [u8; 16 * 1024] = [b'x'; 16 * 1024];
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(&CHUNK)))))
    }
}
