//! The operator pages' HTTP layer: who may see them (loopback clients only, or anyone with the
//! basic-auth credentials of `http.ui_auth_file`, compared in constant time), the headers every
//! answer carries (a strict CSP, no sniffing, no referrer, no framing, no caching), the query
//! string of each page, and the query budget (at most [`UI_QUERY_SLOTS`] pages query at once,
//! each within [`UI_QUERY_TIMEOUT`]) that keeps the pages from starving polling or `/metrics`.
//! The HTML itself is in `pages.rs`. GET only: there is nothing here that changes anything.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tracing::warn;

use super::pages::{self, Page};
use super::{HttpState, readiness};
use crate::domain::{RowId, TicketKind, TicketState};
use crate::store::{DeliveryFilter, DeliveryState, MAX_PAGE, TicketFilter};

/// How many page requests may query the database at once; others wait up to [`SLOT_WAIT`].
pub const UI_QUERY_SLOTS: usize = 2;

/// Longest a page's queries may take before the page answers 503.
pub const UI_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a page waits for a query slot before it answers 503.
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// Rows per page unless `limit` says otherwise.
const DEFAULT_PAGE: u32 = 50;

/// The shortest auto-refresh interval the overview accepts, in seconds.
pub const MIN_REFRESH_SECS: u64 = 5;

/// The `Content-Security-Policy` of every page: no scripts, no frames, no external anything;
/// only our own stylesheet, and forms that submit to us.
pub const CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// `[http]` settings of the operator pages.
#[derive(Debug, Clone, Default)]
pub struct UiSettings {
    /// Serve `/ui/` at all.
    pub enabled: bool,
    /// Basic-auth credentials; without them only loopback clients get the pages.
    pub auth: Option<BasicAuth>,
    /// Where the credentials came from (shown by `check-config`).
    pub auth_file: Option<PathBuf>,
}

/// One `user:password` pair, kept only as the SHA-256 of `user:password`, so that comparing a
/// client's credentials takes the same time whatever they are and the password is not kept.
#[derive(Clone)]
pub struct BasicAuth {
    user: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth").field("user", &self.user).field("password", &"***").finish()
    }
}

/// Why a `user:password` text cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BasicAuthError {
    /// No colon between the user and the password.
    #[error("expected one line \"user:password\"")]
    NoColon,
    /// Nothing before the colon.
    #[error("the user name is empty")]
    EmptyUser,
    /// Nothing after the colon.
    #[error("the password is empty")]
    EmptyPassword,
    /// A line break: only one pair is read.
    #[error("holds more than one line; expected one line \"user:password\"")]
    SeveralLines,
}

impl BasicAuth {
    /// Reads `user:password` (the user may not contain a colon; the password may).
    pub fn parse(text: &str) -> Result<BasicAuth, BasicAuthError> {
        let text = text.trim();
        if text.contains(['\n', '\r']) {
            return Err(BasicAuthError::SeveralLines);
        }
        let (user, password) = text.split_once(':').ok_or(BasicAuthError::NoColon)?;
        if user.is_empty() {
            return Err(BasicAuthError::EmptyUser);
        }
        if password.is_empty() {
            return Err(BasicAuthError::EmptyPassword);
        }
        Ok(BasicAuth { user: user.to_owned(), digest: Sha256::digest(text.as_bytes()).into() })
    }

    /// Whether an `Authorization` header value carries these credentials.
    pub fn accepts(&self, authorization: &[u8]) -> bool {
        let Some(encoded) = authorization.strip_prefix(b"Basic ").or_else(|| authorization.strip_prefix(b"basic "))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(&decoded).into();
        bool::from(digest.ct_eq(&self.digest))
    }
}

/// The `/ui` routes, behind the access check and the headers.
pub(super) fn routes(state: HttpState) -> Router<HttpState> {
    Router::new()
        .route("/ui", get(|| async { redirect("ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/style.css", get(stylesheet))
        .route("/ui/tickets", get(tickets))
        .route("/ui/tickets/", get(|| async { redirect("../tickets") }))
        .route("/ui/tickets/{id}", get(ticket))
        .route("/ui/deliveries", get(deliveries))
        .route_layer(middleware::from_fn_with_state(state, guard))
}

/// Lets a request through when the client may see the pages, and sets the headers on whatever
/// is answered.
async fn guard(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let peer = Some(peer.ip());
    let mut response = match &state.ui.auth {
        Some(auth) => {
            let given = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
            if given.is_some_and(|value| auth.accepts(value)) {
                next.run(request).await
            } else {
                let mut response = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"flink-ticketd\", charset=\"UTF-8\""),
                );
                response
            }
        }
        None if peer.is_some_and(is_loopback) => next.run(request).await,
        None => {
            (StatusCode::FORBIDDEN, "the operator pages answer only loopback clients unless http.ui_auth_file is set\n")
                .into_response()
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Loopback, also as an IPv4-mapped IPv6 address.
fn is_loopback(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")], pages::STYLESHEET)
        .into_response()
}

async fn overview(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let mut refresh = None;
    for (key, value) in pairs(query.as_deref()) {
        match key.as_str() {
            "refresh" => match value.parse::<u64>() {
                Ok(seconds) => refresh = Some(seconds.clamp(MIN_REFRESH_SECS, 3600)),
                Err(_) => return bad_request("refresh: expected a number of seconds (at least 5)"),
            },
            other => return bad_request(&format!("unknown parameter {other:?}; the overview takes refresh")),
        }
    }
    let now = state.clock.now();
    let queried = budget(&state, async {
        let overview = state.store.overview(now).await?;
        let (ready, reasons) = readiness(&state).await?;
        Ok((overview, ready, reasons))
    })
    .await;
    let (overview, ready, reasons) = match queried {
        Ok(found) => found,
        Err(response) => return response,
    };
    let page = pages::Overview {
        now,
        ready,
        reasons,
        pauses: state.poller.pauses(),
        loops: state.liveness.progress_ages(tokio::time::Instant::now()),
        stall_window: state.liveness.window(),
        configured_rate: state.poller.limiter.configured_rate(),
        current_rate: state.poller.limiter.current_rate(),
        slowed: state.poller.limiter.is_slowed(),
        database: overview,
        retention_keep: state.retention.keep,
        retention_schedule: state.retention.schedule.source().to_owned(),
        retention_last: state.retention.log.last(),
        retention_next: crate::retention::next_run(&state.retention.schedule, now),
        credentials: state.credentials.clone(),
        version: env!("CARGO_PKG_VERSION"),
        started_at: state.started_at,
        refresh,
    };
    html(pages::overview(&page))
}

async fn tickets(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let mut filter = TicketFilter::default();
    let mut limit = DEFAULT_PAGE;
    for (key, value) in pairs(query.as_deref()) {
        if value.is_empty() {
            continue;
        }
        match key.as_str() {
            "state" => match value.parse::<TicketState>() {
                Ok(state) if !filter.states.contains(&state) => filter.states.push(state),
                Ok(_) => {}
                Err(error) => return bad_request(&format!("state: {error}")),
            },
            "kind" => match value.parse::<TicketKind>() {
                Ok(kind) => filter.kind = Some(kind),
                Err(error) => return bad_request(&format!("kind: {error}")),
            },
            "workspace" => filter.workspace = Some(value),
            "namespace" => filter.namespace = Some(value),
            "ticket_id" => filter.ticket_id = Some(value),
            "error_code" => filter.error_code = Some(value),
            "dead_webhook" => match value.as_str() {
                "1" => filter.dead_webhook = true,
                "0" => filter.dead_webhook = false,
                _ => return bad_request("dead_webhook: expected 1 or 0"),
            },
            "older" => match value.parse::<i64>() {
                Ok(older) => filter.older = Some(older),
                Err(_) => return bad_request("older: expected a row id"),
            },
            "limit" => match parse_limit(&value) {
                Some(parsed) => limit = parsed,
                None => return bad_request(&format!("limit: expected 1 to {MAX_PAGE}")),
            },
            other => return bad_request(&format!("unknown filter {other:?}")),
        }
    }
    let now = state.clock.now();
    match budget(&state, state.store.page_tickets(&filter, limit)).await {
        Ok(rows) => html(pages::tickets(&Page { now, limit }, &filter, &rows)),
        Err(response) => response,
    }
}

async fn ticket(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return not_found("ticket pages are named by the row id, a number");
    };
    let now = state.clock.now();
    let found = budget(&state, async {
        let Some(ticket) = state.store.ticket(RowId(id)).await? else { return Ok(None) };
        let deliveries = state.store.deliveries_of_ticket(id).await?;
        let events = state.store.ticket_events(RowId(id)).await?;
        let attempts = state.store.webhook_attempts_of_ticket(RowId(id)).await?;
        Ok(Some(pages::TicketHistory { ticket, deliveries, events, attempts }))
    })
    .await;
    match found {
        Ok(Some(history)) => html(pages::ticket(now, &history)),
        Ok(None) => not_found(&format!("no ticket with row id {id}")),
        Err(response) => response,
    }
}

async fn deliveries(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let mut filter = DeliveryFilter::default();
    let mut limit = DEFAULT_PAGE;
    for (key, value) in pairs(query.as_deref()) {
        if value.is_empty() {
            continue;
        }
        match key.as_str() {
            "state" => match value.parse::<DeliveryState>() {
                Ok(state) => filter.state = Some(state),
                Err(error) => return bad_request(&format!("state: {error}")),
            },
            "event_type" => match value.as_str() {
                "ticket.succeeded" | "ticket.failed" | "ticket.expired" => filter.event_type = Some(value),
                _ => return bad_request("event_type: expected ticket.succeeded, ticket.failed or ticket.expired"),
            },
            "min_attempts" => match value.parse::<i64>() {
                Ok(attempts) if attempts >= 0 => filter.min_attempts = Some(attempts),
                _ => return bad_request("min_attempts: expected a count"),
            },
            "older" => match value.parse::<i64>() {
                Ok(older) => filter.older = Some(older),
                Err(_) => return bad_request("older: expected a delivery id"),
            },
            "limit" => match parse_limit(&value) {
                Some(parsed) => limit = parsed,
                None => return bad_request(&format!("limit: expected 1 to {MAX_PAGE}")),
            },
            other => return bad_request(&format!("unknown filter {other:?}")),
        }
    }
    let now = state.clock.now();
    match budget(&state, state.store.page_deliveries(&filter, limit)).await {
        Ok(rows) => html(pages::deliveries(&Page { now, limit }, &filter, &rows)),
        Err(response) => response,
    }
}

/// Runs a page's queries within the budget: a free slot (waiting at most [`SLOT_WAIT`]) and
/// [`UI_QUERY_TIMEOUT`]. Busy, slow or failing, the page answers 503 and says which.
async fn budget<T>(state: &HttpState, queries: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, Response> {
    let busy = || (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], "the pages are busy; try again\n");
    let Ok(Ok(_slot)) = tokio::time::timeout(SLOT_WAIT, state.ui_slots.acquire()).await else {
        return Err(busy().into_response());
    };
    match tokio::time::timeout(UI_QUERY_TIMEOUT, queries).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(error)) => {
            warn!(error = %error, "a page's database query failed");
            Err((StatusCode::SERVICE_UNAVAILABLE, "reading the database failed\n").into_response())
        }
        Err(_) => {
            warn!(timeout_ms = UI_QUERY_TIMEOUT.as_millis(), "a page's database query took too long");
            Err((StatusCode::SERVICE_UNAVAILABLE, "the query took too long; narrow the filters\n").into_response())
        }
    }
}

/// A page size from 1 to [`MAX_PAGE`].
fn parse_limit(value: &str) -> Option<u32> {
    value.parse::<u32>().ok().filter(|limit| (1..=MAX_PAGE).contains(limit))
}

fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(key, value)| (key.into_owned(), value.trim().to_owned()))
        .collect()
}

fn html(markup: maud::Markup) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        pages::problem(message, "").into_string(),
    )
        .into_response()
}

/// A missing ticket (its page is one level below `/ui/`).
fn not_found(message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        pages::problem(message, "../").into_string(),
    )
        .into_response()
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, to)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_accepts_exactly_its_own_pair() {
        let auth = BasicAuth::parse("ops:s3cret:with-colon\n").expect("a pair");
        let header = |pair: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
        assert!(auth.accepts(header("ops:s3cret:with-colon").as_bytes()));
        for wrong in ["ops:s3cret", "ops:s3cret:with-colon ", "op:s3cret:with-colon", ""] {
            assert!(!auth.accepts(header(wrong).as_bytes()), "{wrong:?} accepted");
        }
        assert!(!auth.accepts(b"Bearer abc"));
        assert!(!auth.accepts(b"Basic not-base64!"));
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn basic_auth_files_that_cannot_be_used_say_why() {
        assert_eq!(BasicAuth::parse("no-colon").unwrap_err(), BasicAuthError::NoColon);
        assert_eq!(BasicAuth::parse(":pw").unwrap_err(), BasicAuthError::EmptyUser);
        assert_eq!(BasicAuth::parse("ops:").unwrap_err(), BasicAuthError::EmptyPassword);
        assert_eq!(BasicAuth::parse("a:b\nc:d").unwrap_err(), BasicAuthError::SeveralLines);
    }

    #[test]
    fn loopback_includes_ipv4_mapped_addresses() {
        for (address, loopback) in [("127.0.0.1", true), ("127.8.9.1", true), ("::1", true), ("::ffff:127.0.0.1", true)]
            .into_iter()
            .chain([("10.0.0.1", false), ("::ffff:10.0.0.1", false), ("203.0.113.9", false)])
        {
            assert_eq!(is_loopback(address.parse().unwrap()), loopback, "{address}");
        }
    }
}
