//! The daemon's own HTTP endpoints on `http.listen` (axum): `/healthz` (the process answers),
//! `/readyz` (it can do its job: database reachable, loops making progress, credentials
//! resolved, polling not paused by a rejection or an outage of the API; otherwise 503 with the
//! reasons as JSON) and `/metrics` (Prometheus text format, see `crate::metrics`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::clock::Clock;
use crate::metrics::{Metrics, Snapshot};
use crate::poller::{PauseCause, PauseFlag};
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
    /// Set while polling is globally paused.
    pub paused: Arc<PauseFlag>,
    /// Source of `now` (queue lag).
    pub clock: Arc<dyn Clock>,
    /// Where the credentials came from (resolved at startup).
    pub credentials: String,
}

/// Binds `address`. Failing to bind is a startup error that names the address.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("binding http.listen {address}"))
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: CancellationToken) {
    if let Err(error) = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        error!(error = %error, "the HTTP listener failed; /healthz, /readyz and /metrics are gone");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let database = matches!(tokio::time::timeout(DATABASE_CHECK_TIMEOUT, state.store.ping()).await, Ok(true));
    let verdict = state.liveness.verdict();
    let pause = state.paused.cause();
    let paused = pause.is_some();
    let api_unavailable = is_outage(pause);
    let mut reasons = Vec::new();
    if !database {
        reasons.push("database unreachable".to_owned());
    }
    for stuck in &verdict.stuck {
        reasons.push(format!("{stuck} loop made no progress for {}ms", state.liveness.window().as_millis()));
    }
    if let Some(cause) = pause {
        reasons.push(cause.describe().to_owned());
    }
    let ready = reasons.is_empty();
    let body = json!({
        "ready": ready,
        "reasons": reasons,
        "checks": {
            "database": database,
            "loops": verdict.live(),
            "credentials": state.credentials,
            "polling_paused": paused,
            "api_unavailable": api_unavailable,
        },
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let counts = state.store.count_tickets_by_state().await;
    let next_due = state.store.next_due_at().await;
    let (tickets_by_state, next_due) = match (counts, next_due) {
        (Ok(counts), Ok(next_due)) => (counts, next_due),
        (Err(error), _) | (_, Err(error)) => {
            warn!(error = %error, "reading the database for /metrics failed");
            return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response();
        }
    };
    let now = state.clock.now();
    let queue_lag = next_due.and_then(|due| (now - due).to_std().ok()).unwrap_or(Duration::ZERO);
    let pause = state.paused.cause();
    let snapshot = Snapshot { tickets_by_state, queue_lag, paused: pause.is_some(), api_unavailable: is_outage(pause) };
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.render(&snapshot)).into_response()
}

/// Whether a global pause is an outage of the API rather than a rejection of our requests.
fn is_outage(pause: Option<PauseCause>) -> bool {
    matches!(pause, Some(PauseCause::Unavailable | PauseCause::Unreadable))
}
