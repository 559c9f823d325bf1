//! PostgreSQL fleet benchmark, run by hand next to a throwaway server:
//! `bash .ci/postgres cargo bench --bench postgres_fleet`.
//!
//! For 1, 2 and 3 daemon binaries (release build) sharing one fresh database on the server in
//! `FLINK_TICKETD_TEST_POSTGRES_URL`, against the simulated API started here:
//! 1. Throughput: `BENCH_TICKETS` tickets (default 6000) that finish on their second poll,
//!    inserted at once with plain SQL; reports polls/s until every one is final, and the
//!    daemons' CPU time per poll (user + system, all daemons together).
//! 2. Wake-up: `BENCH_WAKEUPS` rows (default 50) inserted one at a time by another connection
//!    while the daemons are idle, each after the previous was polled; reports insert to first
//!    poll, p50 and p99 (the clock is read just before the INSERT is sent).
//!
//! The PostgreSQL server shares the machine, so its CPU is in neither figure; run it on a quiet
//! machine, since the daemons, the server and the simulator compete for the same cores.

#![allow(missing_docs, clippy::print_stdout, reason = "a benchmark binary prints its report")]

mod common;

use common::{KEY_ID, KEY_SECRET, cores, cpu_ticks, env_number, percentile, start_simulator};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use flink_ticketd::simulator::Simulator;
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;

fn main() {
    let Some(admin_url) = std::env::var("FLINK_TICKETD_TEST_POSTGRES_URL").ok().filter(|url| !url.is_empty()) else {
        eprintln!(
            "FLINK_TICKETD_TEST_POSTGRES_URL is not set: run `bash .ci/postgres cargo bench --bench postgres_fleet`"
        );
        std::process::exit(2);
    };
    let tickets: usize = env_number("BENCH_TICKETS", 6000);
    let wakeups: usize = env_number("BENCH_WAKEUPS", 50);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let sim = start_simulator(&shutdown).await;
        let dir = tempfile::tempdir().expect("a temp dir");
        println!("postgres fleet benchmark: {tickets} tickets per run, {wakeups} wake-ups, {} cores", cores());
        for daemons in 1..=3 {
            run(&admin_url, &sim, dir.path(), daemons, tickets, wakeups).await;
        }
        shutdown.cancel();
    });
}

async fn run(admin_url: &str, sim: &Simulator, dir: &Path, daemons: usize, tickets: usize, wakeups: usize) {
    let name = format!("ticketd_bench_{}_{daemons}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(admin_url).await.expect("the admin connection");
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\"")).execute(&mut admin).await.expect("a fresh database");
    let mut url = url::Url::parse(admin_url).expect("a URL");
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let config = write_config(dir, &url, sim);

    let mut children: Vec<Child> = vec![spawn(&config, dir, 0)];
    let mut connection = connect_when_migrated(&url).await;
    children.extend((1..daemons).map(|index| spawn(&config, dir, index)));
    // Every daemon is up once each has its listener connected.
    let listening =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'";
    wait_until(&mut connection, listening, Duration::from_secs(60), |listeners| {
        listeners >= i64::try_from(daemons).expect("small")
    })
    .await;

    // 1. Throughput.
    let polls_before = sim.requests().len();
    let cpu_before: u64 = children.iter().map(|child| cpu_ticks(child.id())).sum();
    let started = Instant::now();
    sqlx::raw_sql(&format!(
        "INSERT INTO tickets (ticket_id, namespace, workspace) \
         SELECT 'bench-{daemons}-' || n, 'ns', 'ws' FROM generate_series(1, {tickets}) AS n"
    ))
    .execute(&mut connection)
    .await
    .expect("the tickets are queued");
    let pending = "SELECT count(*) FROM tickets WHERE state = 'pending'";
    wait_until(&mut connection, pending, Duration::from_secs(600), |pending| pending == 0).await;
    let elapsed = started.elapsed().as_secs_f64();
    let polls = sim.requests().len() - polls_before;
    let cpu_after: u64 = children.iter().map(|child| cpu_ticks(child.id())).sum();
    let cpu_seconds = (cpu_after - cpu_before) as f64 / 100.0;

    // 2. Wake-up: one row at a time, each after the previous was polled.
    let mut latencies = Vec::new();
    for index in 0..wakeups {
        let ticket_id = format!("wake-{daemons}-{index}");
        let inserted = Utc::now();
        sqlx::query("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ($1, 'ns', 'ws')")
            .bind(&ticket_id)
            .execute(&mut connection)
            .await
            .expect("the row is inserted");
        let waiting = Instant::now();
        let first = loop {
            let first = sim
                .requests()
                .iter()
                .rev()
                .find(|request| request.ticket_id.as_deref() == Some(ticket_id.as_str()))
                .map(|request| request.started_at);
            if let Some(first) = first {
                break first;
            }
            assert!(waiting.elapsed() < Duration::from_secs(30), "{ticket_id} was never polled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        latencies.push((first - inserted).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    println!(
        "{daemons} daemon(s): {polls} polls in {elapsed:.2} s = {:.0} polls/s; daemon CPU {:.1} µs per poll; \
         insert -> first poll p50 {:.1} ms, p99 {:.1} ms",
        polls as f64 / elapsed,
        cpu_seconds * 1e6 / polls.max(1) as f64,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );

    for mut child in children {
        let _ = Command::new("kill").arg("-15").arg(child.id().to_string()).status();
        let _ = child.wait();
    }
    connection.close().await.expect("the connection closes");
    sqlx::raw_sql(&format!("DROP DATABASE \"{name}\" WITH (FORCE)")).execute(&mut admin).await.expect("dropped");
    admin.close().await.expect("the admin connection closes");
}

fn write_config(dir: &Path, url: &str, sim: &Simulator) -> PathBuf {
    let config = dir.join("postgres-fleet.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[database]
url = {url:?}
max_connections = 10
[flink]
endpoint = {endpoint:?}
access_key_id = {KEY_ID:?}
access_key_secret = {KEY_SECRET:?}
max_requests_per_second = 100000.0
max_in_flight = 64
[poll]
initial_interval = "2ms"
max_interval = "10ms"
adaptive = false
lease = "30s"
[http]
listen = ""
[log]
level = "warn"
"#,
            endpoint = sim.base_url(),
        ),
    )
    .expect("the config is written");
    config
}

fn spawn(config: &Path, dir: &Path, index: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("daemon-{index}.log"))).expect("a log file");
    Command::new(env!("CARGO_BIN_EXE_flink-ticketd"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the daemon starts")
}

/// A connection once the first daemon has created the schema.
async fn connect_when_migrated(url: &str) -> sqlx::PgConnection {
    let mut connection = sqlx::PgConnection::connect(url).await.expect("a connection");
    let migrated = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'tickets'";
    wait_until(&mut connection, migrated, Duration::from_secs(60), |tables| tables == 1).await;
    connection
}

/// Runs `count` (one bigint) every millisecond until `done` holds; panics after `limit`.
async fn wait_until(connection: &mut sqlx::PgConnection, count: &str, limit: Duration, done: impl Fn(i64) -> bool) {
    let started = Instant::now();
    loop {
        let value: i64 = sqlx::query_scalar(count).fetch_one(&mut *connection).await.expect("the count is read");
        if done(value) {
            return;
        }
        assert!(started.elapsed() < limit, "the benchmark stalled waiting on: {count}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
