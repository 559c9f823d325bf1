//! flink-ticketd watches Alibaba Cloud Realtime Compute for Apache Flink deploy tickets queued in
//! a SQLite table, polls their results with durable backoff, records the outcome and announces it
//! with signed webhooks.
//!
//! [`run`] is the daemon: `main` and the integration tests both start it.

pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod domain;
pub mod flink;
pub mod poller;
pub mod ratelimit;
pub mod simulator;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod webhook;

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::Config;
use crate::flink::FlinkClient;
use crate::poller::Poller;
use crate::ratelimit::RateLimiter;
use crate::store::Store;
use crate::webhook::Deliverer;

/// Runs the daemon until `shutdown` is cancelled, then lets in-flight work finish within
/// `shutdown.grace`, hands leases of unfinished work back, and closes the database.
pub async fn run(config: Config, clock: Arc<dyn Clock>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = Store::open(&config.database).await?;
    let credentials = flink::CredentialProvider::start(
        config.flink.credentials.as_ref(),
        &config.flink.credential_chain,
        config.flink.client.ca_file.as_deref(),
        Arc::clone(&clock),
    )
    .await
    .context("getting Alibaba Cloud credentials")?;
    let source = credentials.name();
    let flink = FlinkClient::new(&config.flink.client, credentials, Arc::clone(&clock))?;
    let limiter = Arc::new(RateLimiter::new(
        config.flink.max_requests_per_second,
        u32::try_from(config.flink.max_in_flight).unwrap_or(u32::MAX),
    ));
    let owner = lease_owner_prefix();
    let (recorder, recorder_task) = store.recorder();
    let webhook = Arc::new(config.webhook.clone());
    let poller = Arc::new(Poller::new(
        store.clone(),
        recorder,
        flink,
        Arc::clone(&clock),
        config.poll,
        Arc::clone(&webhook),
        limiter,
        config.flink.max_in_flight,
        owner.clone(),
    ));
    let deliverer = Arc::new(Deliverer::new(
        store.clone(),
        Arc::clone(&clock),
        Arc::clone(&webhook),
        &owner,
        Arc::clone(&poller.deliveries_written),
    )?);
    info!(
        database = %store.path().display(),
        credentials = %source,
        max_in_flight = config.flink.max_in_flight,
        max_requests_per_second = config.flink.max_requests_per_second,
        lease_owner = %owner,
        webhook_receivers = webhook.urls.len(),
        webhook_max_in_flight = webhook.max_in_flight,
        "daemon started"
    );

    let tracker = TaskTracker::new();
    let poll_loop = tokio::spawn(Arc::clone(&poller).run_until_cancelled(shutdown.child_token(), tracker.clone()));
    // Without a signing secret nothing can be sent; rows written under an earlier configuration
    // wait for one.
    let delivery_loop = if webhook.secrets.is_empty() {
        match store.next_delivery_due_at().await {
            Ok(Some(_)) => warn!("webhook deliveries are pending but no webhook.secret is configured; none are sent"),
            Ok(None) => {}
            Err(error) => warn!(error = %error, "reading pending webhook deliveries failed"),
        }
        None
    } else {
        Some(tokio::spawn(Arc::clone(&deliverer).run_until_cancelled(shutdown.child_token(), tracker.clone())))
    };
    shutdown.cancelled().await;
    info!("shutting down: no new work is claimed");
    poll_loop.await.context("the poll loop panicked")?;
    if let Some(delivery_loop) = delivery_loop {
        delivery_loop.await.context("the webhook delivery loop panicked")?;
    }
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait()).await.is_err() {
        warn!(grace = ?config.shutdown_grace, "in-flight work did not finish within the grace period");
    }
    // The recorder task ends once the poller and every finished poll have dropped their handles.
    drop(poller);
    if tokio::time::timeout(config.shutdown_grace, recorder_task).await.is_err() {
        warn!("poll results still being written at the end of the grace period");
    }
    match store.release_tickets(&format!("{owner}#"), clock.now()).await {
        Ok(0) => {}
        Ok(released) => info!(released, "unfinished tickets handed back for the next start"),
        Err(error) => warn!(error = %error, "handing back unfinished tickets failed; their leases will lapse"),
    }
    match store.release_deliveries(deliverer.lease_prefix(), clock.now()).await {
        Ok(0) => {}
        Ok(released) => info!(released, "unfinished webhook deliveries handed back for the next start"),
        Err(error) => {
            warn!(error = %error, "handing back unfinished webhook deliveries failed; their leases will lapse")
        }
    }
    store.close().await;
    info!("shutdown complete");
    Ok(())
}

/// `host:pid:random`: names this process in `lease_owner`, readable in the sqlite3 shell.
fn lease_owner_prefix() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}:{}:{:04x}", std::process::id(), rand::random::<u16>())
}
