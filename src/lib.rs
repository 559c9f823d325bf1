//! flink-ticketd watches Alibaba Cloud Realtime Compute for Apache Flink deploy tickets queued in
//! a SQLite table, polls their results with durable backoff, records the outcome and announces it
//! with signed webhooks.
//!
//! [`run`] is the daemon: `main` and the integration tests both start it. [`run_supervised`] is
//! the same with the service manager link given explicitly (tests watch its notices).

pub mod backoff;
pub mod claim_loop;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod domain;
pub mod duration;
pub mod flink;
pub mod http;
pub mod metrics;
pub mod poller;
pub mod ratelimit;
pub mod redact;
pub mod report;
pub mod retention;
pub mod service;
pub mod simulator;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod webhook;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::service::Supervisor;

pub use crate::daemon::run_supervised;

/// Runs the daemon until `shutdown` is cancelled, then lets in-flight work finish within
/// `shutdown.grace`, hands leases of unfinished work back, and closes the database. Talks to
/// systemd when the environment says it runs under it (`NOTIFY_SOCKET`, `WATCHDOG_USEC`).
pub async fn run(config: Config, clock: Arc<dyn Clock>, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_supervised(config, clock, shutdown, Supervisor::from_env()).await
}
