//! The daemon's wiring, in one place. [`build`] puts the parts together (store, credentials,
//! Flink client, rate limiter, result recorder, poller, webhook deliverer, metrics) and
//! [`run_supervised`] serves them until shutdown. `deploy --wait` and the tests use the same
//! pieces: [`connect`] opens the store and the client, [`poller`] builds the poller and its
//! recorder around them. This module and the other entry points are the only readers of
//! `config`; every part below gets its own settings.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::Config;
use crate::flink::{CredentialProvider, FlinkClient};
use crate::http;
use crate::metrics::Metrics;
use crate::poller::Poller;
use crate::ratelimit::RateLimiter;
use crate::retention::{Retention, RunLog};
use crate::service::{self, Liveness, Notice, Supervisor};
use crate::store::{self, Store};
use crate::webhook::{self, Deliverer};

/// The database and the cloud client, opened from the configuration.
pub struct Connection {
    /// The migrated database.
    pub store: Store,
    /// The signed client, with the credentials the chain found.
    pub flink: FlinkClient,
}

/// Everything the daemon runs, built by [`build`].
pub struct Parts {
    /// The database.
    pub store: Store,
    /// The name of the credential source in use, for logs and `/readyz`.
    pub credentials: String,
    /// This process's lease prefix (`host:pid:random`).
    pub owner: String,
    /// The poll loop.
    pub poller: Arc<Poller>,
    /// The webhook delivery loop.
    pub deliverer: Arc<Deliverer>,
    /// The registry both loops and the retention job count into.
    pub metrics: Arc<Metrics>,
    /// The result recorder; it ends once the poller and every finished poll dropped their
    /// handles, after its last batch is written.
    pub recorder_task: JoinHandle<()>,
}

/// Opens the database (first: work that cannot be recorded should not start), then starts the
/// credential chain (failing when no source is usable) and builds the client.
pub async fn connect(config: &Config, clock: &Arc<dyn Clock>) -> anyhow::Result<Connection> {
    let store = Store::open(&config.database).await?;
    let credentials = CredentialProvider::for_settings(&config.flink, Arc::clone(clock))
        .await
        .context("getting Alibaba Cloud credentials")?;
    let flink = FlinkClient::new(&config.flink.client, credentials, Arc::clone(clock))?;
    Ok(Connection { store, flink })
}

/// A poller over `store` and `flink` with the configured schedule, rate limit and webhooks,
/// leasing as `owner` and running at most `max_in_flight` polls at once; and its recorder task.
pub fn poller(
    config: &Config,
    store: Store,
    flink: FlinkClient,
    clock: Arc<dyn Clock>,
    owner: String,
    max_in_flight: usize,
) -> (Poller, JoinHandle<()>) {
    let limiter = Arc::new(RateLimiter::new(
        config.flink.max_requests_per_second,
        u32::try_from(config.flink.max_in_flight).unwrap_or(u32::MAX),
    ));
    let (recorder, recorder_task) = store.recorder();
    let poller = Poller::new(
        store,
        recorder,
        flink,
        clock,
        config.poll,
        webhook::announcer(&config.webhook),
        limiter,
        max_in_flight,
        owner,
    );
    (poller, recorder_task)
}

/// Builds the daemon's parts; both loops count progress at least every `heartbeat`.
pub async fn build(config: &Config, clock: Arc<dyn Clock>, heartbeat: Duration) -> anyhow::Result<Parts> {
    let Connection { store, flink } = connect(config, &clock).await?;
    let credentials = flink.credential_source();
    let owner = lease_owner_prefix();
    let metrics = Arc::new(Metrics::new());
    let (poller, recorder_task) =
        poller(config, store.clone(), flink, Arc::clone(&clock), owner.clone(), config.flink.max_in_flight);
    let mut poller = poller.with_heartbeat(heartbeat).with_metrics(Arc::clone(&metrics));
    // With a signing secret this process's delivery loop runs: the deliveries its final states
    // write are leased to that loop, which sends them at once.
    if !config.webhook.secrets.is_empty() {
        poller = poller.with_delivery_handoff(webhook::deliver::handoff(&owner, &config.webhook));
    }
    let poller = Arc::new(poller);
    let deliverer = Arc::new(
        Deliverer::new(
            store.clone(),
            clock,
            Arc::new(config.webhook.clone()),
            &owner,
            Arc::clone(&poller.deliveries_written),
        )?
        .with_heartbeat(heartbeat)
        .with_metrics(Arc::clone(&metrics)),
    );
    Ok(Parts { store, credentials, owner, poller, deliverer, metrics, recorder_task })
}

/// Builds the parts and runs them until `shutdown` is cancelled, then lets in-flight work finish
/// within `shutdown.grace`, hands leases of unfinished work back, and closes the database. Talks
/// to `supervisor`: `READY` once the database is migrated and the HTTP listener is bound,
/// `WATCHDOG` keep-alives while the loops make progress, `STOPPING` when `shutdown` is cancelled.
pub async fn run_supervised(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    supervisor: Supervisor,
) -> anyhow::Result<()> {
    let Parts { store, credentials: source, owner, poller, deliverer, metrics, recorder_task } =
        build(&config, Arc::clone(&clock), supervisor.heartbeat()).await?;
    let webhook = &config.webhook;
    let started_at = clock.now();
    metrics.set_start_time(started_at);
    // Bound before READY, so that a scrape right after start finds the port open; a port that
    // cannot be had stops the start.
    let listener = match config.http_listen {
        Some(address) => Some(http::bind(address).await?),
        None => None,
    };
    let http_address = listener.as_ref().and_then(|listener| listener.local_addr().ok());
    info!(
        database = %store.location(),
        credentials = %source,
        max_in_flight = config.flink.max_in_flight,
        max_requests_per_second = config.flink.max_requests_per_second,
        lease_owner = %owner,
        webhook_receivers = webhook.urls.len(),
        webhook_max_in_flight = webhook.max_in_flight,
        http = %http_address.map(|address| address.to_string()).unwrap_or_else(|| "off".to_owned()),
        watchdog_ms = supervisor.watchdog.map(|watchdog| watchdog.as_millis()),
        retention_schedule = %config.retention.schedule.source(),
        "daemon started"
    );

    let liveness = Arc::new(Liveness::new(supervisor.stall_window()));
    liveness.watch("poll", Arc::clone(&poller.heartbeat.progress));
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
        liveness.watch("delivery", Arc::clone(&deliverer.heartbeat.progress));
        Some(tokio::spawn(Arc::clone(&deliverer).run_until_cancelled(shutdown.child_token(), tracker.clone())))
    };
    let retention_log = Arc::new(RunLog::default());
    let retention = Retention {
        store: store.clone(),
        clock: Arc::clone(&clock),
        keep: config.retention.keep,
        schedule: config.retention.schedule.clone(),
        metrics: Arc::clone(&metrics),
        log: Arc::clone(&retention_log),
    };
    let retention_task = tokio::spawn(retention.run_until_cancelled(shutdown.child_token()));
    let http_task = listener.map(|listener| {
        let state = http::HttpState {
            store: store.clone(),
            metrics: Arc::clone(&metrics),
            liveness: Arc::clone(&liveness),
            poller: Arc::clone(&poller),
            clock: Arc::clone(&clock),
            credentials: source.clone(),
            started_at,
            retention: http::RetentionView {
                schedule: config.retention.schedule.clone(),
                keep: config.retention.keep,
                log: Arc::clone(&retention_log),
            },
            ui: config.ui.clone(),
            ui_slots: Arc::new(tokio::sync::Semaphore::new(http::UI_QUERY_SLOTS)),
        };
        tokio::spawn(http::serve(listener, state, shutdown.child_token()))
    });
    supervisor.notify(Notice::Ready);
    let keep_alive = tokio::spawn(service::keep_alive(liveness, supervisor.clone(), shutdown.child_token()));

    // The database file is checked while the daemon runs: once it is removed or replaced, every
    // write would go to a file nobody reads, so the daemon stops with an error (and systemd
    // starts it again on the file that is there now).
    let database_lost = tokio::select! {
        () = shutdown.cancelled() => None,
        lost = store.file_lost(store::FILE_CHECK_INTERVAL) => {
            shutdown.cancel();
            Some(lost)
        }
    };
    supervisor.notify(Notice::Stopping);
    // One deadline for everything that may wait, so that the whole stop takes about
    // shutdown.grace however many steps still have work.
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    info!("shutting down: no new work is claimed");
    keep_alive.await.context("the watchdog task panicked")?;
    if let Some(http_task) = http_task {
        http_task.await.context("the HTTP listener panicked")?;
    }
    poll_loop.await.context("the poll loop panicked")?;
    if let Some(delivery_loop) = delivery_loop {
        delivery_loop.await.context("the webhook delivery loop panicked")?;
    }
    retention_task.await.context("the retention job panicked")?;
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
        warn!(grace = ?config.shutdown_grace, "in-flight work did not finish within the grace period");
    }
    // The recorder task ends once the poller and every finished poll have dropped their handles.
    drop(poller);
    // Results already handed to the recorder get a moment to commit even when the grace period
    // is spent.
    let recorder_deadline = deadline.max(tokio::time::Instant::now() + RECORDER_FLUSH);
    if tokio::time::timeout_at(recorder_deadline, recorder_task).await.is_err() {
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
    if let Some(lost) = database_lost {
        anyhow::bail!("{lost} while the daemon was running; stopped so that it is opened again");
    }
    info!("shutdown complete");
    Ok(())
}

/// Least time the recorder gets at shutdown to commit results it already holds.
const RECORDER_FLUSH: Duration = Duration::from_millis(250);

/// `host:pid:random`: names this process in `lease_owner` (see [`store::lease_owner_prefix`]).
fn lease_owner_prefix() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    store::lease_owner_prefix(&host)
}
