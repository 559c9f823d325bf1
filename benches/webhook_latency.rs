//! Webhook latency: the time from a ticket's final poll (when the simulated API answered
//! `FINISHED`) to its webhook being accepted by a local receiver, over 1 000 tickets queued at
//! once, with the daemon's default settings except the endpoint, the credentials, the poll
//! intervals and the API rate limit (raised from 10/s so the run takes seconds, which also puts
//! more load on the delivery loop). Run by hand:
//!
//! ```text
//! cargo bench --bench webhook_latency
//! ```
//!
//! Prints the median, p90, p99 and maximum; targets are a median under 20 ms and a p99 under
//! 100 ms. `TICKETS=N` changes the number of tickets.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use figment::Figment;
use figment::providers::{Format as _, Toml};
use flink_ticketd::clock::SystemClock;
use flink_ticketd::config::{self, Config, Environment, RawConfig};
use flink_ticketd::simulator::{Scenario, Simulator, SimulatorSettings};
use flink_ticketd::store::{NewTicket, Store};
use tokio_util::sync::CancellationToken;

const KEY: (&str, &str) = ("bench-key", "bench-secret");
const SECRET: &str = "whsec_YmVuY2htYXJrLXNlY3JldC0wMTIzNDU2Nzg5YWI=";
const SCENARIO: &str = r#"
[[tickets]]
prefix = "bench-"
steps = [{ status = "EXECUTING" }, { status = "FINISHED", success = true }]
"#;

type Arrivals = Arc<Mutex<HashMap<String, DateTime<Utc>>>>;

fn main() -> anyhow::Result<()> {
    let tickets: usize = std::env::var("TICKETS").ok().and_then(|text| text.parse().ok()).unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(measure(tickets))
}

async fn measure(tickets: usize) -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let simulator = Simulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SimulatorSettings {
            credentials: vec![(KEY.0.to_owned(), KEY.1.to_owned())],
            scenario: Scenario::from_toml_str(SCENARIO)?,
            clock_offset_secs: 0,
        },
        shutdown.clone(),
    )
    .await?;
    let arrivals: Arrivals = Arc::default();
    let receiver = start_receiver(Arc::clone(&arrivals), shutdown.clone()).await?;
    let config = bench_config(&directory.path().join("bench.db"), &simulator.base_url(), &receiver)?;
    println!(
        "webhook settings: max_in_flight {}, timeout {:?}, schedule {} steps (defaults)",
        config.webhook.max_in_flight,
        config.webhook.timeout,
        config.webhook.schedule.len()
    );

    let store = Store::open(&config.database).await?;
    for index in 0..tickets {
        let ticket = NewTicket {
            ticket_id: format!("bench-{index:05}"),
            namespace: "ns".to_owned(),
            workspace: "ws".to_owned(),
            ..NewTicket::default()
        };
        store.insert_ticket(&ticket).await?;
    }

    let started = Instant::now();
    let daemon = tokio::spawn(flink_ticketd::run(config, Arc::new(SystemClock), shutdown.child_token()));
    loop {
        let received = arrivals.lock().expect("no code panics holding the arrivals lock").len();
        if received >= tickets {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "only {received} of {tickets} webhooks arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    daemon.await.context("the daemon panicked")??;
    store.close().await;

    let final_polls: HashMap<String, DateTime<Utc>> = simulator
        .requests()
        .into_iter()
        .filter(|request| request.answer == "FINISHED")
        .filter_map(|request| Some((request.ticket_id?, request.finished_at)))
        .collect();
    let arrivals = arrivals.lock().expect("no code panics holding the arrivals lock");
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(ticket_id, arrived)| {
            let finished = final_polls.get(ticket_id)?;
            Some((*arrived - *finished).to_std().unwrap_or(Duration::ZERO))
        })
        .collect();
    anyhow::ensure!(latencies.len() == tickets, "matched {} of {tickets} final polls", latencies.len());
    latencies.sort();
    let at = |quantile: f64| latencies[((latencies.len() - 1) as f64 * quantile).round() as usize];
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    println!("{tickets} tickets polled and announced in {:.2} s", elapsed.as_secs_f64());
    println!(
        "final poll -> webhook accepted: median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(at(1.0))
    );
    println!(
        "targets: median < 20 ms ({}), p99 < 100 ms ({})",
        if at(0.5) < Duration::from_millis(20) { "met" } else { "MISSED" },
        if at(0.99) < Duration::from_millis(100) { "met" } else { "MISSED" }
    );
    Ok(())
}

/// The built-in defaults with only the endpoint, credentials, poll intervals and rate changed.
fn bench_config(database: &std::path::Path, endpoint: &str, receiver: &str) -> anyhow::Result<Config> {
    let overlay = format!(
        r#"
[database]
path = {database:?}

[flink]
endpoint = {endpoint:?}
access_key_id = {key_id:?}
access_key_secret = {key_secret:?}
max_requests_per_second = 500.0

[poll]
initial_interval = "100ms"
max_interval = "500ms"

[webhook]
urls = [{receiver:?}]
secret = {SECRET:?}

[http]
listen = ""

[log]
level = "error"
"#,
        database = database.display().to_string(),
        key_id = KEY.0,
        key_secret = KEY.1,
    );
    let raw: RawConfig =
        Figment::new().merge(Toml::string(config::DEFAULTS)).merge(Toml::string(&overlay)).extract()?;
    Ok(raw.validate(None, &Environment { var: &|_| None })?)
}

async fn start_receiver(arrivals: Arrivals, shutdown: CancellationToken) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let arrivals = Arc::clone(&arrivals);
                async move {
                    let now = Utc::now();
                    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if let Some(ticket_id) = event["data"]["ticket_id"].as_str() {
                        arrivals
                            .lock()
                            .expect("no code panics holding the arrivals lock")
                            .entry(ticket_id.to_owned())
                            .or_insert(now);
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        )
        .into_make_service();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    });
    Ok(format!("http://{address}/hook"))
}
