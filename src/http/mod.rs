//! The daemon's own HTTP endpoints on `http.listen` (axum): `/healthz` (the process answers),
//! `/readyz` (it can do its job: database reachable, loops making progress, credentials
//! resolved, polling not paused by a rejection or an outage of the API; otherwise 503 with the
//! reasons as JSON) and `/metrics` (Prometheus text format, see `crate::metrics`); and the
//! read-only operator pages under `/ui/` (`ui.rs`: access, headers and the query budget;
//! `pages.rs`: the HTML).

mod pages;
mod ui;

pub use ui::{BasicAuth, BasicAuthError, CSP, MIN_REFRESH_SECS, UI_QUERY_SLOTS, UI_QUERY_TIMEOUT, UiSettings};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::clock::Clock;
use crate::metrics::{Metrics, Snapshot};
use crate::poller::{PauseCause, Poller};
use crate::retention::RunLog;
use crate::service::Liveness;
use crate::store::Store;

/// How long `/readyz` waits for the database before calling it unreachable.
pub const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints look at.
#[derive(Clone)]
pub struct HttpState {
    /// The database (ping, counts, queue lag).
    pub store: Store,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The loops' progress verdict.
    pub liveness: Arc<Liveness>,
    /// The poll loop: its pauses and its rate limiter.
    pub poller: Arc<Poller>,
    /// Source of `now` (queue lag).
    pub clock: Arc<dyn Clock>,
    /// Where the credentials came from (resolved at startup).
    pub credentials: String,
    /// When the daemon started.
    pub started_at: DateTime<Utc>,
    /// The retention job's calendar and its last run.
    pub retention: RetentionView,
    /// `http.ui`, `http.ui_auth_file`.
    pub ui: UiSettings,
    /// The operator pages' query budget: at most [`UI_QUERY_SLOTS`] pages query at once.
    pub ui_slots: Arc<tokio::sync::Semaphore>,
}

/// What the overview shows of the retention job.
#[derive(Clone)]
pub struct RetentionView {
    /// When it runs.
    pub schedule: cron::Schedule,
    /// How old finished tickets get before they are deleted.
    pub keep: Duration,
    /// Its last run.
    pub log: Arc<RunLog>,
}

/// Binds `address`. Failing to bind is a startup error that names the address.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("binding http.listen {address}"))
}

/// The routes: the three endpoints, and `/ui/` unless `http.ui` is off. The pages read the
/// client's address from `ConnectInfo<SocketAddr>`, which [`serve`] provides.
pub fn router(state: HttpState) -> Router {
    let router =
        Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics));
    let router = if state.ui.enabled { router.merge(ui::routes(state.clone())) } else { router };
    router.with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: CancellationToken) {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        error!(error = %error, "the HTTP listener failed; /healthz, /readyz and /metrics are gone");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let (ready, reasons, database) = readiness_checks(&state).await;
    let verdict = state.liveness.verdict();
    let pause = state.poller.paused.cause();
    let body = json!({
        "ready": ready,
        "reasons": reasons,
        "checks": {
            "database": database,
            "loops": verdict.live(),
            "credentials": state.credentials,
            "polling_paused": pause.is_some(),
            "api_unavailable": is_outage(pause),
        },
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

/// Whether the daemon is ready, and every reason it is not (what `/readyz` and the overview say).
pub(crate) async fn readiness(state: &HttpState) -> Result<(bool, Vec<String>), sqlx::Error> {
    let (ready, reasons, _) = readiness_checks(state).await;
    Ok((ready, reasons))
}

async fn readiness_checks(state: &HttpState) -> (bool, Vec<String>, bool) {
    let database = matches!(tokio::time::timeout(DATABASE_CHECK_TIMEOUT, state.store.ping()).await, Ok(true));
    let verdict = state.liveness.verdict();
    let mut reasons = Vec::new();
    if !database {
        reasons.push("database unreachable".to_owned());
    }
    for stuck in &verdict.stuck {
        reasons.push(format!("{stuck} loop made no progress for {}ms", state.liveness.window().as_millis()));
    }
    if let Some(cause) = state.poller.paused.cause() {
        reasons.push(cause.describe().to_owned());
    }
    (reasons.is_empty(), reasons, database)
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let counts = state.store.count_tickets_by_state().await;
    let next_due = state.store.next_due_at().await;
    let backlog = state.store.webhook_backlog().await;
    let (tickets_by_state, next_due, (webhook_backlog, webhook_oldest)) = match (counts, next_due, backlog) {
        (Ok(counts), Ok(next_due), Ok(backlog)) => (counts, next_due, backlog),
        (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
            warn!(error = %error, "reading the database for /metrics failed");
            return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response();
        }
    };
    let now = state.clock.now();
    let age = |since: Option<DateTime<Utc>>| since.and_then(|since| (now - since).to_std().ok()).unwrap_or_default();
    let pause = state.poller.paused.cause();
    let limiter = &state.poller.limiter;
    let snapshot = Snapshot {
        tickets_by_state,
        queue_lag: age(next_due),
        paused: pause.is_some(),
        api_unavailable: is_outage(pause),
        workspaces_paused: state.poller.pauses().workspaces.len(),
        webhook_backlog,
        webhook_backlog_oldest_age: age(webhook_oldest),
        loop_progress_age: state.liveness.progress_ages(tokio::time::Instant::now()),
        rate_limit: limiter.current_rate(),
        rate_limit_slowed: limiter.is_slowed(),
    };
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.render(&snapshot)).into_response()
}

/// Whether a global pause is an outage of the API rather than a rejection of our requests.
fn is_outage(pause: Option<PauseCause>) -> bool {
    matches!(pause, Some(PauseCause::Unavailable | PauseCause::Unreadable))
}
