//! Pipeline benchmark, run by hand: `cargo bench --bench pipeline`.
//!
//! 1. Throughput: the simulated API and the real daemon binary (release build) on a fresh
//!    database with 20 000 tickets that finish on their second poll, limits lifted. Reports
//!    polls/s, the daemon's CPU time per poll and its peak RSS.
//! 2. The practical limit: the same 40 000 signed requests driven through a bare loop of our
//!    client at the same concurrency, no database, before and after each daemon run.
//! 3. Idle cost: the daemon with 10 000 pending tickets not yet due; reports its CPU use as a
//!    share of one core.
//! 4. Wake-up: with those 10 000 tickets waiting, rows inserted by another connection, one at a
//!    time; reports `created_at` to first poll (p50, p99).
//! 5. Adaptive polling: the deploy workload (60 deploys, 4 s to 40 s, median about 12 s; the last
//!    30 measured) replayed in simulated time through the daemon's own `next_running_poll`, with
//!    the fixed backoff and with the learned schedule; reports polls per ticket and detection lag.
//! 6. History: the throughput run again on a database holding 1 000 000 finished tickets, and
//!    the time `flink-ticketd list` takes to print its first page there.
//!
//! The database lives in a temp dir under `BENCH_DIR` (else the system temp dir); the report
//! names its file system, since a disk and a tmpfs give different figures. `BENCH_DAEMON` runs
//! another build of the daemon binary (to compare releases: it migrates its own databases).
//!
//! Options via environment: `BENCH_TICKETS` (20000), `BENCH_CONCURRENCY` (64), `BENCH_ROUNDS` (3:
//! parts 1 and 2 alternate that many times, and the report gives each round and the medians),
//! `BENCH_IDLE_SECS` (30; CPU time is counted in 10 ms ticks), `BENCH_WAKEUPS` (50),
//! `BENCH_HISTORY_ROWS` (1000000; 0 skips part 6), `BENCH_REPLAYS` (20).

#![allow(missing_docs, clippy::print_stdout, reason = "a benchmark binary prints its report")]

mod common;

use common::{
    KEY_ID, KEY_SECRET, cores, cpu_ticks, daemon_binary, env_number, file_system_of, percentile, spawn_daemon,
    start_simulator, stop, ticks_per_second,
};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flink_ticketd::clock::SystemClock;
use flink_ticketd::flink::{ClientSettings, CredentialSource, Credentials, Endpoints, FlinkClient, TicketRef};
use flink_ticketd::poller::{Bounds, Policy, PollSettings, RunTimes, Workload, replay};
use flink_ticketd::simulator::Simulator;
use secrecy::SecretString;
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;

fn main() {
    let tickets: usize = env_number("BENCH_TICKETS", 20_000);
    let concurrency: usize = env_number("BENCH_CONCURRENCY", 64);
    let idle_secs: u64 = env_number("BENCH_IDLE_SECS", 30);
    let wakeups: usize = env_number("BENCH_WAKEUPS", 50);
    let history_rows: usize = env_number("BENCH_HISTORY_ROWS", 1_000_000);
    let replays: u64 = env_number("BENCH_REPLAYS", 20);
    let rounds: usize = env_number::<usize>("BENCH_ROUNDS", 3).max(1);
    let base = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let sim = start_simulator(&shutdown).await;

        println!("flink-ticketd pipeline benchmark: {tickets} tickets, concurrency {concurrency}, {} cores", cores());
        println!("  databases under {} ({})", base.display(), file_system_of(&base));
        println!("  daemon binary {}", daemon_binary().display());
        // Daemon and bare loop alternate, a bare loop on either side of each daemon run, so that
        // a slow spell of a shared machine lands on both: a round's reference is the mean of the
        // bare loops around it, and the ratio is the median of each round's own ratio.
        let mut rounds_run = Vec::with_capacity(rounds);
        let mut bare_before = bare_loop(&sim, "bare-r0", tickets * 2, concurrency).await;
        for round in 1..=rounds {
            let daemon = daemon_throughput(&sim, &base, &format!("bench-r{round}"), tickets, concurrency, 0).await;
            let bare_after = bare_loop(&sim, &format!("bare-r{round}"), tickets * 2, concurrency).await;
            rounds_run.push(Round { daemon, bare: (bare_before + bare_after) / 2.0 });
            bare_before = bare_after;
        }
        println!("\nthroughput (the simulator in this process, the daemon in its own; {rounds} rounds, medians)");
        for (round, Round { daemon, bare }) in rounds_run.iter().enumerate() {
            println!(
                "  round {}: daemon {:>6.0} polls/s ({} polls in {:.2} s from first poll to last answer, {:.2} s from start), {:.3} ms CPU/poll, {:.1} MB; bare loop {:>6.0} requests/s (before and after); ratio {:.3}",
                round + 1,
                daemon.polls_per_sec,
                daemon.polls,
                daemon.polling.as_secs_f64(),
                daemon.elapsed.as_secs_f64(),
                daemon.cpu_ms_per_poll,
                daemon.peak_rss_mb,
                bare,
                daemon.polls_per_sec / bare
            );
        }
        let median = |value: &dyn Fn(&Round) -> f64| -> f64 {
            let values: Vec<f64> = rounds_run.iter().map(value).collect();
            percentile(&values, 0.5)
        };
        let daemon_polls = median(&|round| round.daemon.polls_per_sec);
        println!("  daemon:     {daemon_polls:>8.0} polls/s");
        println!("  bare loop:  {:>8.0} requests/s ({} requests a round)", median(&|round| round.bare), tickets * 2);
        println!("  ratio:      {:>8.3} (target >= 0.500)", median(&|round| round.daemon.polls_per_sec / round.bare));
        println!("  daemon CPU: {:>8.3} ms per poll (target <= 0.12)", median(&|round| round.daemon.cpu_ms_per_poll));
        let peak_rss = rounds_run.iter().map(|round| round.daemon.peak_rss_mb).fold(0.0, f64::max);
        println!("  daemon RSS: {peak_rss:>8.1} MB peak, the largest of the rounds (target < 40)");

        let (idle, wake) = idle_and_wakeup(&sim, &base, 10_000, Duration::from_secs(idle_secs), wakeups).await;
        println!("\nidle with 10000 pending tickets not yet due");
        println!("  daemon CPU: {idle:>8.3} % of one core over {idle_secs} s (target < 0.5)");
        println!("wake-up: {} rows inserted by another connection, one every 100-300 ms, 10000 waiting", wake.len());
        println!(
            "  created_at to first poll: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 <= 200)",
            percentile(&wake, 0.5),
            percentile(&wake, 0.99),
            percentile(&wake, 1.0)
        );

        adaptive_replay(replays);

        if history_rows > 0 {
            let loaded = daemon_throughput(&sim, &base, "history-bench", tickets, concurrency, history_rows).await;
            println!("\nwith {history_rows} finished tickets in the table");
            println!(
                "  daemon:     {:>8.0} polls/s, {:.3} ms CPU per poll; empty table {:.0} polls/s: {:.2}x slower (target <= 1.5)",
                loaded.polls_per_sec,
                loaded.cpu_ms_per_poll,
                daemon_polls,
                daemon_polls / loaded.polls_per_sec
            );
            let list = loaded.list_ms.expect("the list was timed");
            println!(
                "  `flink-ticketd list` (first page of 50, whole process): best {:.1} ms, median {:.1} ms (target < 50)",
                list.0, list.1
            );
        }
        shutdown.cancel();
    });
}

/// Part 5: the deploy workload replayed in simulated time with both schedules.
fn adaptive_replay(runs: u64) {
    let poll = PollSettings {
        initial_interval: Duration::from_secs(2),
        max_interval: Duration::from_secs(30),
        multiplier: 1.5,
        deadline: Duration::from_secs(3600),
        lease: Duration::from_secs(60),
        adaptive: true,
        target_lag: 0.1,
    };
    let policy = Policy::from_settings(&poll);
    let bounds = Bounds {
        target_lag: poll.target_lag,
        min_interval: poll.initial_interval / 2,
        max_interval: poll.max_interval,
    };
    let mut figures = [(0.0, 0.0, 0.0); 2];
    for seed in 0..runs {
        let workload = Workload::deploys(60, Duration::from_secs(2), &RunTimes::DEPLOYS, seed);
        for (index, adaptive) in [None, Some(&bounds)].into_iter().enumerate() {
            let replayed = replay(&workload, &policy, adaptive, 30, seed + 1_000);
            figures[index].0 += replayed.polls_per_ticket / runs as f64;
            figures[index].1 += replayed.lag_mean / runs as f64;
            figures[index].2 += replayed.lag_p90 / runs as f64;
        }
    }
    println!("\nadaptive polling, default settings (simulated time: {runs} workloads of 60 deploys, one every 2 s,");
    println!("  run times 4 s to 40 s, median about 12 s; the last 30 of each measured; polls placed by");
    println!("  poller::next_running_poll, the function the daemon's decide uses; the first poll counted)");
    for (name, (polls, mean, p90)) in ["fixed backoff", "learned schedule"].iter().zip(figures) {
        println!(
            "  {name:<17} {polls:>5.2} polls/ticket, detection lag mean {:>5.1}%, p90 {:>5.1}% of the run time",
            mean * 100.0,
            p90 * 100.0
        );
    }
    println!("  (goal for the learned schedule: <= 4.5 polls/ticket, lag mean <= 15%, p90 <= 35%)");
}

/// One round of parts 1 and 2: the daemon's run and the bare loop's requests per second.
struct Round {
    daemon: Throughput,
    /// The mean requests per second of the bare loops run before and after the daemon's.
    bare: f64,
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
    /// `flink-ticketd list` on the database afterwards: best and median, in ms (history runs).
    list_ms: Option<(f64, f64)>,
}

/// The throughput run; `label` keeps each run's ticket IDs apart in the simulator's memory.
async fn daemon_throughput(
    sim: &Simulator,
    base: &Path,
    label: &str,
    tickets: usize,
    concurrency: usize,
    history_rows: usize,
) -> Throughput {
    let dir = tempfile::tempdir_in(base).expect("a temp dir");
    let db = dir.path().join("bench.db");
    let prefix = &format!("{label}-");
    let config = write_config(dir.path(), &db, sim, concurrency, Schedule::Fast);
    migrate(&config);
    if history_rows > 0 {
        insert_history(&db, history_rows).await;
    }
    let values: Vec<String> = (0..tickets).map(|n| format!("('{prefix}{n}', 'ns', 'ws')")).collect();
    for chunk in values.chunks(5000) {
        execute(&db, &format!("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES {}", chunk.join(",")))
            .await;
    }
    let mut child = spawn_daemon(&config);
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
    let like = format!("{prefix}%");
    let polls: i64 = sqlx::query_scalar("SELECT sum(polls) FROM tickets WHERE ticket_id LIKE ?")
        .bind(&like)
        .fetch_one(&mut connection)
        .await
        .unwrap();
    let succeeded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tickets WHERE state = 'succeeded' AND ticket_id LIKE ?")
            .bind(&like)
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!(succeeded, i64::try_from(tickets).unwrap(), "every ticket succeeded");
    connection.close().await.unwrap();
    stop(&mut child);
    let list_ms = (history_rows > 0).then(|| time_list(&config));
    let polls = u64::try_from(polls).unwrap();
    // Polling time: from the first poll's arrival to the last poll's answer at the simulator, so
    // that process start-up (runtime, migrations check, pools) is not counted as polling.
    let log = sim.requests();
    let bench_polls =
        log.iter().filter(|request| request.ticket_id.as_deref().is_some_and(|id| id.starts_with(prefix)));
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
        list_ms,
    }
}

/// `rows` finished tickets of the benchmark's workspace and namespace, one every 2 s over the
/// past weeks (distinct `created_at`, as a real history has), inserted 100 000 per transaction.
async fn insert_history(db: &Path, rows: usize) {
    let started = Instant::now();
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let chunk = 100_000;
    for from in (0..rows).step_by(chunk) {
        let to = (from + chunk).min(rows);
        let sql = format!(
            "WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {to})
             INSERT INTO tickets (ticket_id, namespace, workspace, state, polls, created_at, updated_at,
                                  next_poll_at, finished_at, deadline_at, running_seen_ms, ticket_status)
             SELECT 'old-' || i, 'ns', 'ws', 'succeeded', 4, at, done, done, done, done, 11000, 'FINISHED'
             FROM (SELECT i,
                          strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{days} days', '+' || (i * 2) || ' seconds') AS at,
                          strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{days} days', '+' || (i * 2 + 12) || ' seconds') AS done
                   FROM n)",
            days = rows * 2 / 86_400 + 1,
        );
        sqlx::raw_sql(&sql).execute(&mut connection).await.unwrap();
    }
    connection.close().await.unwrap();
    println!("\n({rows} finished tickets inserted in {:.1} s)", started.elapsed().as_secs_f64());
}

/// `flink-ticketd list` run five times: (best, median) wall time in ms, process start included.
fn time_list(config: &Path) -> (f64, f64) {
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let output = Command::new(daemon_binary()).arg("--config").arg(config).arg("list").output().unwrap();
            assert!(output.status.success(), "list failed: {}", String::from_utf8_lossy(&output.stderr));
            assert!(output.stdout.len() > 100, "list printed a page");
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[0], times[2])
}

/// The bare loop's requests per second; `label` keeps each run's ticket IDs apart in the
/// simulator's memory.
async fn bare_loop(sim: &Simulator, label: &str, requests: usize, concurrency: usize) -> f64 {
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
            let label = label.to_owned();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        break;
                    }
                    let ticket_id = format!("{label}-{}", n / 2);
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
    requests as f64 / started.elapsed().as_secs_f64()
}

/// Part 3 and 4: CPU use of the daemon waiting with `tickets` pending tickets not yet due, as a
/// share of one core over `window`; then `wakeups` rows inserted by another connection, one at
/// a time, each with its `created_at` to first poll in ms.
async fn idle_and_wakeup(
    sim: &Simulator,
    base: &Path,
    tickets: usize,
    window: Duration,
    wakeups: usize,
) -> (f64, Vec<f64>) {
    let dir = tempfile::tempdir_in(base).expect("a temp dir");
    let db = dir.path().join("idle.db");
    let config = write_config(dir.path(), &db, sim, 16, Schedule::Default);
    migrate(&config);
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
    let mut child = spawn_daemon(&config);
    let pid = child.id();
    // Let start-up (migrations, connection pools) finish before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid) - before;
    let idle = used as f64 / ticks_per_second() / window.as_secs_f64() * 100.0;

    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let mut created = Vec::with_capacity(wakeups);
    for n in 0..wakeups {
        // Spaced 100 to 300 ms apart, so each insert finds the loop waiting.
        tokio::time::sleep(Duration::from_millis(100 + rand::random::<u64>() % 200)).await;
        let ticket_id = format!("wake-{n}");
        let created_at: String = sqlx::query_scalar(
            "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES (?, 'ns', 'ws') RETURNING created_at",
        )
        .bind(&ticket_id)
        .fetch_one(&mut connection)
        .await
        .unwrap();
        let asked = Instant::now();
        while sim.polls_of(&ticket_id) == 0 {
            assert!(asked.elapsed() < Duration::from_secs(10), "{ticket_id} was never polled");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        created.push((ticket_id, flink_ticketd::clock::parse_instant(&created_at).expect("a stored instant")));
    }
    connection.close().await.unwrap();
    stop(&mut child);
    let log = sim.requests();
    let latencies = created
        .iter()
        .map(|(ticket_id, created_at)| {
            let first = log
                .iter()
                .filter(|request| request.ticket_id.as_deref() == Some(ticket_id))
                .map(|request| request.started_at)
                .min()
                .expect("polled");
            (first - *created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0
        })
        .collect();
    (idle, latencies)
}

/// The poll schedule the daemon runs with.
#[derive(Clone, Copy)]
enum Schedule {
    /// Millisecond intervals: the second poll follows the first at once.
    Fast,
    /// The built-in defaults (2 s to 30 s).
    Default,
}

/// Writes the daemon's configuration for `db` next to it.
fn write_config(dir: &Path, db: &Path, sim: &Simulator, concurrency: usize, schedule: Schedule) -> PathBuf {
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
    config
}

/// Creates the database with the daemon's own `migrate`, so that any build can be measured.
fn migrate(config: &Path) {
    let status = Command::new(daemon_binary())
        .arg("--config")
        .arg(config)
        .arg("migrate")
        .stdout(Stdio::null())
        .status()
        .expect("migrate runs");
    assert!(status.success(), "migrate failed");
}

async fn execute(db: &Path, sql: &str) {
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
    connection.close().await.unwrap();
}

fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
