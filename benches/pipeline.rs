//! Pipeline benchmark, run by hand: `cargo bench --bench pipeline`.
//!
//! 1. Throughput: the simulated API and the real daemon binary (release build) on a fresh
//!    database with 20 000 tickets that finish on their second poll, limits lifted. Reports
//!    polls/s, the daemon's CPU time per poll and its peak RSS.
//! 2. The practical limit: the same 40 000 signed requests driven through a bare loop of our
//!    client at the same concurrency, no database.
//! 3. Idle cost: the daemon with 10 000 pending tickets not yet due; reports its CPU use as a
//!    share of one core.
//!
//! Options via environment: `BENCH_TICKETS` (20000), `BENCH_CONCURRENCY` (64), `BENCH_IDLE_SECS` (10).

#![allow(missing_docs, clippy::print_stdout, reason = "a benchmark binary prints its report")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flink_ticketd::clock::SystemClock;
use flink_ticketd::flink::{ClientSettings, CredentialSource, Credentials, Endpoints, FlinkClient, TicketRef};
use flink_ticketd::simulator::{Scenario, Simulator, SimulatorSettings, Step};
use secrecy::SecretString;
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;

const KEY_ID: &str = "bench-key";
const KEY_SECRET: &str = "bench-secret";

fn main() {
    let tickets: usize = env_number("BENCH_TICKETS", 20_000);
    let concurrency: usize = env_number("BENCH_CONCURRENCY", 64);
    let idle_secs: u64 = env_number("BENCH_IDLE_SECS", 10);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let scenario = Scenario { default: vec![Step::status("EXECUTING"), Step::finished_ok()], tickets: Vec::new() };
        let sim = Simulator::start(
            "127.0.0.1:0".parse().unwrap(),
            SimulatorSettings {
                credentials: vec![(KEY_ID.to_owned(), KEY_SECRET.to_owned())],
                scenario,
                clock_offset_secs: 0,
            },
            shutdown.clone(),
        )
        .await
        .expect("the simulator starts");

        println!("flink-ticketd pipeline benchmark: {tickets} tickets, concurrency {concurrency}, {} cores", cores());
        let daemon = daemon_throughput(&sim, tickets, concurrency).await;
        let bare = bare_loop(&sim, tickets * 2, concurrency).await;
        println!("\nthroughput");
        println!(
            "  daemon:     {:>8.0} polls/s  ({} polls in {:.2} s from first poll to last answer; {:.2} s from process start)",
            daemon.polls_per_sec,
            daemon.polls,
            daemon.polling.as_secs_f64(),
            daemon.elapsed.as_secs_f64()
        );
        println!(
            "  bare loop:  {:>8.0} requests/s  ({} requests in {:.2} s)",
            bare.0,
            tickets * 2,
            bare.1.as_secs_f64()
        );
        println!("  ratio:      {:>8.2} (target >= 0.50)", daemon.polls_per_sec / bare.0);
        println!("  daemon CPU: {:>8.3} ms per poll (target <= 0.2)", daemon.cpu_ms_per_poll);
        println!("  daemon RSS: {:>8.1} MB peak (target < 40)", daemon.peak_rss_mb);

        let idle = idle_cost(&sim, 10_000, Duration::from_secs(idle_secs)).await;
        println!("\nidle with 10000 pending tickets not yet due");
        println!("  daemon CPU: {idle:>8.3} % of one core over {idle_secs} s (target < 0.5)");
        shutdown.cancel();
    });
}

struct Throughput {
    polls: u64,
    /// From spawning the daemon until every ticket was final.
    elapsed: Duration,
    /// From the first poll to the last answer.
    polling: Duration,
    polls_per_sec: f64,
    cpu_ms_per_poll: f64,
    peak_rss_mb: f64,
}

async fn daemon_throughput(sim: &Simulator, tickets: usize, concurrency: usize) -> Throughput {
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = dir.path().join("bench.db");
    migrate(&db).await;
    let values: Vec<String> = (0..tickets).map(|n| format!("('bench-{n}', 'ns', 'ws')")).collect();
    for chunk in values.chunks(5000) {
        execute(&db, &format!("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES {}", chunk.join(",")))
            .await;
    }
    let mut child = spawn_daemon(dir.path(), &db, sim, concurrency, Schedule::Fast);
    let pid = child.id();
    let started = Instant::now();
    let cpu_before = cpu_ticks(pid);
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    loop {
        // One step of the daemon's own due index: cheap enough not to compete with the daemon.
        let pending: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tickets INDEXED BY tickets_due WHERE state = 'pending')")
                .fetch_one(&mut connection)
                .await
                .unwrap();
        if !pending {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the daemon did not finish in 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_ticks(pid) - cpu_before;
    let peak_rss_mb = peak_rss_kb(pid) as f64 / 1024.0;
    let polls: i64 = sqlx::query_scalar("SELECT sum(polls) FROM tickets").fetch_one(&mut connection).await.unwrap();
    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets WHERE state = 'succeeded'")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(succeeded, i64::try_from(tickets).unwrap(), "every ticket succeeded");
    connection.close().await.unwrap();
    stop(&mut child);
    let polls = u64::try_from(polls).unwrap();
    // Polling time: from the first poll's arrival to the last poll's answer at the simulator, so
    // that process start-up (runtime, migrations check, pools) is not counted as polling.
    let log = sim.requests();
    let bench_polls =
        log.iter().filter(|request| request.ticket_id.as_deref().is_some_and(|id| id.starts_with("bench-")));
    let first = bench_polls.clone().map(|request| request.started_at).min().expect("the daemon polled");
    let last = bench_polls.map(|request| request.finished_at).max().expect("the daemon polled");
    let polling = (last - first).to_std().unwrap_or(elapsed);
    Throughput {
        polls,
        elapsed,
        polling,
        polls_per_sec: polls as f64 / polling.as_secs_f64(),
        cpu_ms_per_poll: cpu as f64 * 1000.0 / ticks_per_second() / polls as f64,
        peak_rss_mb,
    }
}

async fn bare_loop(sim: &Simulator, requests: usize, concurrency: usize) -> (f64, Duration) {
    let client = FlinkClient::new(
        &ClientSettings {
            endpoints: Endpoints {
                override_url: Some(sim.base_url().parse().unwrap()),
                region: "cn-hangzhou".to_owned(),
                vpc: false,
            },
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 1 << 20,
            ca_file: None,
        },
        CredentialSource {
            name: "bench",
            credentials: Arc::new(Credentials {
                access_key_id: KEY_ID.to_owned(),
                access_key_secret: SecretString::from(KEY_SECRET.to_owned()),
                security_token: None,
            }),
        },
        Arc::new(SystemClock),
    )
    .expect("a client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        break;
                    }
                    let ticket_id = format!("bare-{}", n / 2);
                    let polled = client
                        .get_deploy_result(TicketRef {
                            namespace: "ns",
                            workspace: "ws",
                            ticket_id: &ticket_id,
                            region: None,
                        })
                        .await;
                    assert!(polled.is_ok(), "bare request failed: {polled:?}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed();
    (requests as f64 / elapsed.as_secs_f64(), elapsed)
}

async fn idle_cost(sim: &Simulator, tickets: usize, window: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = dir.path().join("idle.db");
    migrate(&db).await;
    let values: Vec<String> = (0..tickets)
        // Due in four minutes: backing off, as the daemon itself schedules them.
        .map(|n| {
            format!(
                "('idle-{n}', 'ns', 'ws', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+4 minutes'), '2099-01-01T00:00:00.000Z')"
            )
        })
        .collect();
    for chunk in values.chunks(5000) {
        execute(
            &db,
            &format!(
                "INSERT INTO tickets (ticket_id, namespace, workspace, next_poll_at, deadline_at) VALUES {}",
                chunk.join(",")
            ),
        )
        .await;
    }
    let mut child = spawn_daemon(dir.path(), &db, sim, 16, Schedule::Default);
    let pid = child.id();
    // Let start-up (migrations, connection pools) finish before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid) - before;
    stop(&mut child);
    used as f64 / ticks_per_second() / window.as_secs_f64() * 100.0
}

/// The poll schedule the daemon runs with.
#[derive(Clone, Copy)]
enum Schedule {
    /// Millisecond intervals: the second poll follows the first at once.
    Fast,
    /// The built-in defaults (2 s to 30 s).
    Default,
}

fn spawn_daemon(dir: &Path, db: &Path, sim: &Simulator, concurrency: usize, schedule: Schedule) -> Child {
    let config = dir.join("config.toml");
    let poll = match schedule {
        Schedule::Fast => "initial_interval = \"2ms\"\nmax_interval = \"10ms\"\n",
        Schedule::Default => "",
    };
    std::fs::write(
        &config,
        format!(
            r#"
[database]
path = {db:?}
[flink]
endpoint = {endpoint:?}
access_key_id = {KEY_ID:?}
access_key_secret = {KEY_SECRET:?}
max_requests_per_second = 1000000.0
max_in_flight = {concurrency}
[poll]
{poll}deadline = "1h"
[http]
listen = ""
[log]
level = "warn"
"#,
            db = db.display().to_string(),
            endpoint = sim.base_url(),
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_flink-ticketd"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the daemon starts")
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
}

async fn migrate(db: &Path) {
    let store = flink_ticketd::store::Store::open(&flink_ticketd::store::StoreSettings {
        path: db.to_path_buf(),
        busy_timeout: Duration::from_secs(5),
        max_readers: 1,
    })
    .await
    .expect("the database opens");
    store.close().await;
}

async fn execute(db: &Path, sql: &str) {
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
    connection.close().await.unwrap();
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |index: usize| fields.get(index).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn ticks_per_second() -> f64 {
    // The kernel's USER_HZ, 100 on every Linux architecture this daemon targets.
    100.0
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}
