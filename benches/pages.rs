//! Operator pages benchmark, run by hand: `cargo bench --bench pages`.
//!
//! The daemon binary (release build) serves `/ui/` over a database holding `BENCH_PAGE_TICKETS`
//! tickets (default 100 000: every kind, four workspaces, all four states, a webhook delivery for
//! each finished one, a tenth of them dead), inserted with plain SQL. Each page is fetched
//! `BENCH_PAGE_ROUNDS` times (default 20) after one warm-up fetch; the report gives the median
//! and the slowest time from request to the last byte, over loopback. The database lives in a
//! temp dir under `BENCH_DIR` (else the system temp dir), and the report names its file system.

#![allow(missing_docs, clippy::print_stdout, reason = "a benchmark binary prints its report")]

mod common;

use common::{daemon_binary, env_number, file_system_of, spawn_daemon};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection as _;

fn main() {
    let tickets: usize = env_number("BENCH_PAGE_TICKETS", 100_000);
    let rounds: usize = env_number("BENCH_PAGE_ROUNDS", 20);
    let base = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::tempdir_in(&base).expect("a temp dir");
    let db = dir.path().join("pages.db");
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\npath = {db:?}\n[flink]\nendpoint = \"http://127.0.0.1:9\"\naccess_key_id = \"bench\"\n\
             access_key_secret = \"bench-secret\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n",
            db = db.display().to_string()
        ),
    )
    .expect("the config is written");
    let status =
        Command::new(daemon_binary()).arg("--config").arg(&config).arg("migrate").stdout(Stdio::null()).status();
    assert!(status.expect("migrate runs").success(), "migrate failed");

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let started = Instant::now();
        fill(&db, tickets).await;
        println!(
            "operator pages: {tickets} tickets inserted in {:.1} s; database on {}",
            started.elapsed().as_secs_f64(),
            file_system_of(dir.path())
        );
        let mut daemon = spawn_daemon(&config);
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        wait_until_served(&client, &base).await;
        let middle = tickets / 2;
        let pages = [
            "/ui/".to_owned(),
            "/ui/tickets".to_owned(),
            format!("/ui/tickets?limit=50&older={middle}"),
            "/ui/tickets?limit=500".to_owned(),
            "/ui/tickets?state=failed".to_owned(),
            "/ui/tickets?kind=validate&workspace=ws-1".to_owned(),
            format!("/ui/tickets?ticket_id=t-{middle}"),
            "/ui/tickets?error_code=Rare".to_owned(),
            "/ui/tickets?dead_webhook=1".to_owned(),
            format!("/ui/tickets/{middle}"),
            "/ui/deliveries".to_owned(),
            "/ui/deliveries?state=dead".to_owned(),
            "/ui/deliveries?min_attempts=9".to_owned(),
        ];
        println!("{:<48} {:>10} {:>10} {:>9}", "page", "median ms", "max ms", "bytes");
        for page in &pages {
            let url = format!("{base}{page}");
            let (_, bytes, body) = fetch(&client, &url).await;
            if page.contains(&middle.to_string()) && !page.contains("older") {
                assert!(body.contains(&format!("t-{middle}")), "{page} shows the ticket");
            }
            let mut times: Vec<f64> = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                times.push(fetch(&client, &url).await.0.as_secs_f64() * 1000.0);
            }
            times.sort_by(f64::total_cmp);
            println!("{page:<48} {:>10.2} {:>10.2} {bytes:>9}", times[times.len() / 2], times[times.len() - 1]);
        }
        let _ = Command::new("kill").arg("-TERM").arg(daemon.id().to_string()).status();
        let _ = daemon.wait();
    });
}

/// `tickets` rows: a quarter pending (due in four minutes, so nothing is polled while the pages
/// are timed), the rest final, one
/// delivery per final ticket, a tenth of those dead after 9 attempts.
async fn fill(db: &Path, tickets: usize) {
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {tickets})
         INSERT INTO tickets (ticket_id, namespace, workspace, kind, state, polls, created_at, updated_at,
                              next_poll_at, finished_at, error_code, message)
         SELECT 't-' || i, 'ns-' || (i % 3), 'ws-' || (i % 4),
                CASE i % 8 WHEN 1 THEN 'validate' WHEN 2 THEN 'resource_plan' WHEN 3 THEN 'hot_update' ELSE 'deploy' END,
                CASE i % 4 WHEN 0 THEN 'pending' WHEN 1 THEN 'succeeded' WHEN 2 THEN 'failed' ELSE 'expired' END,
                3, at, at,
                CASE i % 4 WHEN 0 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+4 minutes') ELSE at END,
                CASE i % 4 WHEN 0 THEN NULL ELSE at END,
                CASE WHEN i % 4 = 2 THEN CASE WHEN i % 1000 = 2 THEN 'Rare' ELSE 'DeployFailed' END END,
                CASE WHEN i % 4 = 2 THEN 'line 3, column 7: Object ''orders'' not found' END
         FROM (SELECT i, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3 days', '+' || i || ' seconds') AS at FROM n);
         INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload, state, attempts,
                                         next_attempt_at, created_at, updated_at)
         SELECT id, 'https://hooks.example.com/flink', 'tkt_' || id || '_0.' || state, 'ticket.' || state,
                '{{\"type\":\"ticket.' || state || '\"}}',
                CASE WHEN id % 10 = 1 THEN 'dead' ELSE 'delivered' END,
                CASE WHEN id % 10 = 1 THEN 9 ELSE 1 END,
                finished_at, finished_at, finished_at
         FROM tickets WHERE state <> 'pending';"
    );
    sqlx::raw_sql(&sql).execute(&mut connection).await.expect("the rows are inserted");
    sqlx::raw_sql("ANALYZE").execute(&mut connection).await.expect("analyze");
    connection.close().await.unwrap();
}

/// Time to the last byte, the body's size and the body.
async fn fetch(client: &reqwest::Client, url: &str) -> (Duration, usize, String) {
    let started = Instant::now();
    let response = client.get(url).send().await.expect("the page answers");
    assert!(response.status().is_success(), "{url}: {}", response.status());
    let body = response.text().await.expect("the page's body");
    (started.elapsed(), body.len(), body)
}

async fn wait_until_served(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the daemon did not start serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port()
}
