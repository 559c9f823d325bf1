//! A simulated Realtime Compute for Apache Flink API on loopback, so that the daemon, the
//! integration tests, the benchmark and the demo run end to end without a cloud account.
//!
//! [`Simulator`] serves the four submit → poll pairs of every ticket kind (deploy, validate,
//! resource plan, hot update) with the real paths (the `%3A` forms exactly as the SDK sends
//! them), headers, signature checks and error shapes of `spec/flink-api.md` and
//! `spec/flink-async-tickets.md`, playing each ticket's script from a [`Scenario`]. A ticket is
//! named by its kind and id: the same id polled on two kinds' paths plays two scripts. It also
//! serves an unsigned control surface under `/_sim/` for tests that run the binary in another
//! process:
//!
//! * `GET /_sim/healthz` → `{"status":"ok"}`;
//! * `GET /_sim/requests` → the request log, a JSON array of [`LoggedRequest`];
//! * `PUT /_sim/credentials` with `[{"access_key_id":…,"access_key_secret":…}]` → 204;
//! * `PUT /_sim/tickets/{ticket_id}[?kind=KIND]` with a JSON array of steps → 204;
//! * `GET /_sim/tickets/{ticket_id}[?kind=KIND]` → `{"ticket_id":…,"polls":n}`.
//!
//! `KIND` defaults to `deploy`.
//!
//! Request verification lives in `auth`, response shapes in `answer`, the script format in
//! [`scenario`]. Per-request work is a signature check and a few short critical sections; no lock
//! is held across an await, so a delayed answer never holds up another request.

mod answer;
mod auth;
pub mod scenario;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::answer::{SimBody, Stamp};
pub use self::scenario::{
    ErrorShape, ErrorStep, Scenario, ScenarioError, Selector, StatusStep, Step, StepConfigIssue, StepIssue, TicketRule,
};
use crate::domain::TicketKind;

/// The access key pair `simulate` and the demo accept when the configuration names none.
pub const DEMO_CREDENTIALS: (&str, &str) = ("flink-ticketd-demo", "flink-ticketd-demo-secret");

/// What a [`Simulator`] accepts and plays.
#[derive(Clone)]
pub struct SimulatorSettings {
    /// access_key_id -> access_key_secret pairs accepted; every request must be signed by one.
    pub credentials: Vec<(String, String)>,
    /// The scripts tickets play.
    pub scenario: Scenario,
    /// Seconds added to the simulator's clock (for clock-skew tests); 0 normally.
    pub clock_offset_secs: i64,
}

/// A running simulated API. Cheap to clone: clones share the same server state.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

/// One API request as the simulator saw and answered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// Arrival number, from 0; the log is in this order.
    pub seq: u64,
    /// The `x-acs-action` header, or `""` when absent.
    pub action: String,
    /// The ticket kind whose path the request named, when it named one.
    #[serde(default)]
    pub kind: Option<TicketKind>,
    /// The request path exactly as received, still percent-encoded.
    #[serde(default)]
    pub path: String,
    /// The decoded namespace path segment, or `""` when the path named none.
    pub namespace: String,
    /// The `workspace` header, when sent.
    pub workspace: Option<String>,
    /// The decoded ticket id of a poll, or the new ticket id of a deploy.
    pub ticket_id: Option<String>,
    /// When the request arrived, on the simulator's clock (with its offset). In JSON, fixed-width
    /// UTC with milliseconds (`2026-11-28T01:23:45.678Z`), like every `*_at` the daemon writes.
    #[serde(with = "instant")]
    pub started_at: DateTime<Utc>,
    /// When the answer was handed over (or the connection dropped), on the simulator's clock.
    #[serde(with = "instant")]
    pub finished_at: DateTime<Utc>,
    /// A short label of the answer: the ticket status (`"INIT"`, `"FINISHED"`, …) for a poll,
    /// `"submitted"` for a deploy, `"throttled"` for `Throttling*` error steps, `"error <Code>"`
    /// for other error steps, `"not found"`, `"http <status>"` for HTML pages, `"text <status>"` for
    /// plain-text answers, `"truncated"`,
    /// `"garbage"`, `"dropped"`, `"signature mismatch"`, `"rejected <Code>"` for every other
    /// gateway check, and `"unknown api"` for paths or actions the API does not have.
    pub answer: String,
    /// The HTTP status sent; `None` when the connection was dropped.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// The `deploymentDraftId` of a deploy or validate request.
    #[serde(default)]
    pub draft_id: Option<String>,
    /// The access key ID whose signature the gateway accepted; `None` when it refused the
    /// request. Tells apart clients that share one simulator under keys of their own.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The deployment id of a resource-plan request or the job id of a hot-update request.
    #[serde(default)]
    pub subject: Option<String>,
    /// The body of a submit, as received (lossy UTF-8); `""` when it had none.
    #[serde(default)]
    pub body: Option<String>,
}

impl std::fmt::Debug for SimulatorSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.credentials.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SimulatorSettings")
            .field("access_key_ids", &ids)
            .field("scenario", &self.scenario)
            .field("clock_offset_secs", &self.clock_offset_secs)
            .finish()
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("local_addr", &self.shared.local_addr).finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds `listen` and serves until `shutdown` is cancelled. Returns once bound; the server
    /// runs on spawned tasks. On cancel it stops accepting and closes idle connections.
    pub async fn start(
        listen: SocketAddr,
        settings: SimulatorSettings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Simulator> {
        let listener =
            TcpListener::bind(listen).await.with_context(|| format!("binding the simulated Flink API to {listen}"))?;
        let local_addr = listener.local_addr().context("reading the simulator's bound address")?;
        let shared = Arc::new(Shared {
            local_addr,
            clock_offset: chrono::TimeDelta::seconds(settings.clock_offset_secs),
            credentials: RwLock::new(Arc::new(settings.credentials.into_iter().collect())),
            scenario: settings.scenario,
            tickets: Mutex::new(HashMap::new()),
            nonces: Mutex::new(auth::NonceSet::new(NONCE_CAPACITY)),
            log: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        tracing::info!(%local_addr, rules = shared.scenario.tickets.len(), "simulated flink api listening");
        tokio::spawn(accept_until_cancelled(listener, Arc::clone(&shared), shutdown));
        Ok(Simulator { shared })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// `http://IP:PORT`, to use as the client's endpoint override.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.local_addr)
    }

    /// The request log (API requests only, not `/_sim/` calls), in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.requests()
    }

    /// Replaces the accepted access key pairs; requests signed with a dropped key get
    /// `InvalidAccessKeyId.NotFound` from then on.
    pub fn set_credentials(&self, credentials: Vec<(String, String)>) {
        self.shared.set_credentials(credentials);
    }

    /// Replaces (or adds) one deploy ticket's script; its next poll plays `steps[0]`. An empty
    /// list removes the override, so the scenario's rules apply again.
    pub fn set_script(&self, ticket_id: &str, steps: Vec<Step>) {
        self.shared.set_script(TicketKind::Deploy, ticket_id, steps);
    }

    /// [`Simulator::set_script`] for a ticket of `kind`.
    pub fn set_kind_script(&self, kind: TicketKind, ticket_id: &str, steps: Vec<Step>) {
        self.shared.set_script(kind, ticket_id, steps);
    }

    /// How many polls of deploy ticket `ticket_id` passed the gateway checks so far (scripted
    /// answers of any kind, drops included).
    pub fn polls_of(&self, ticket_id: &str) -> usize {
        self.shared.polls_of(TicketKind::Deploy, ticket_id)
    }

    /// [`Simulator::polls_of`] for a ticket of `kind`.
    pub fn polls_of_kind(&self, kind: TicketKind, ticket_id: &str) -> usize {
        self.shared.polls_of(kind, ticket_id)
    }

    /// How many TCP connections were accepted so far (to check that clients reuse them).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

/// Nonces remembered per generation; two generations are kept.
const NONCE_CAPACITY: usize = 256 * 1024;
/// Larger API request bodies close the connection.
const MAX_API_BODY: usize = 1024 * 1024;
/// Larger control request bodies are refused.
const MAX_CONTROL_BODY: usize = 16 * 1024 * 1024;
const POLL_ACTION: &str = "GetDeployDeploymentDraftResult";
const DEPLOY_ACTION: &str = "DeployDeploymentDraftAsync";

/// The `x-acs-action` of a kind's poll, as the API names it.
fn poll_action(kind: TicketKind) -> &'static str {
    match kind {
        TicketKind::Deploy => POLL_ACTION,
        TicketKind::Validate => "GetValidateDeploymentDraftResult",
        TicketKind::ResourcePlan => "GetGenerateResourcePlanResult",
        TicketKind::HotUpdate => "GetHotUpdateJobResult",
    }
}

/// The `x-acs-action` of a kind's submit, as the API names it.
fn submit_action(kind: TicketKind) -> &'static str {
    match kind {
        TicketKind::Deploy => DEPLOY_ACTION,
        TicketKind::Validate => "ValidateDeploymentDraftAsync",
        TicketKind::ResourcePlan => "GenerateResourcePlanWithFlinkConfAsync",
        TicketKind::HotUpdate => "HotUpdateJob",
    }
}

struct Shared {
    local_addr: SocketAddr,
    clock_offset: chrono::TimeDelta,
    scenario: Scenario,
    /// Read on every request; replaced whole on rotation so readers only clone an `Arc`.
    credentials: RwLock<Arc<HashMap<String, String>>>,
    tickets: Mutex<HashMap<(TicketKind, String), TicketScript>>,
    nonces: Mutex<auth::NonceSet>,
    log: Mutex<Vec<LoggedRequest>>,
    seq: AtomicU64,
    connections: AtomicU64,
}

/// Where one ticket is in its script.
struct TicketScript {
    steps: Arc<[Step]>,
    /// Index of the next step; the last step repeats.
    position: usize,
    /// Every poll that reached the script.
    polls: usize,
    /// When the first poll reached it: time-based steps count from here.
    first_poll: Option<std::time::Instant>,
}

/// The connection is closed without an answer (a `drop` step, or a request body that failed).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the simulator")
    }
}

impl std::error::Error for Dropped {}

/// Which API operation a path names.
enum Route {
    Poll { kind: TicketKind, namespace: String, ticket_id: String },
    Submit { kind: TicketKind, namespace: String, subject: Option<String> },
    Unknown { namespace: String },
}

impl Shared {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    fn requests(&self) -> Vec<LoggedRequest> {
        let mut log = lock(&self.log).clone();
        // Entries are appended when answered; arrival order is `seq` order.
        log.sort_unstable_by_key(|entry| entry.seq);
        log
    }

    fn set_credentials(&self, credentials: Vec<(String, String)>) {
        let map: HashMap<String, String> = credentials.into_iter().collect();
        tracing::info!(keys = map.len(), "simulator credentials replaced");
        *self.credentials.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(map);
    }

    fn set_script(&self, kind: TicketKind, ticket_id: &str, steps: Vec<Step>) {
        let mut tickets = lock(&self.tickets);
        let key = (kind, ticket_id.to_owned());
        if steps.is_empty() {
            if let Some(script) = tickets.get_mut(&key) {
                script.steps = Arc::from(self.scenario.steps_for_kind_ticket(kind, ticket_id));
                script.position = 0;
            }
            return;
        }
        let script = tickets.entry(key).or_insert_with(|| TicketScript {
            steps: Arc::from(Vec::new()),
            position: 0,
            polls: 0,
            first_poll: None,
        });
        script.steps = Arc::from(steps);
        script.position = 0;
        script.first_poll = None;
    }

    fn polls_of(&self, kind: TicketKind, ticket_id: &str) -> usize {
        lock(&self.tickets).get(&(kind, ticket_id.to_owned())).map_or(0, |script| script.polls)
    }

    /// Takes the next step of a ticket's script, resolving the script on its first poll. A
    /// time-based step stays until its time after the first poll has passed, then is skipped.
    fn next_step(&self, kind: TicketKind, ticket_id: &str) -> Step {
        let mut tickets = lock(&self.tickets);
        let script = tickets.entry((kind, ticket_id.to_owned())).or_insert_with(|| TicketScript {
            steps: Arc::from(self.scenario.steps_for_kind_ticket(kind, ticket_id)),
            position: 0,
            polls: 0,
            first_poll: None,
        });
        script.polls += 1;
        let since_first = script.first_poll.get_or_insert_with(std::time::Instant::now).elapsed();
        let last = script.steps.len().saturating_sub(1);
        loop {
            let index = script.position.min(last);
            let Some(step) = script.steps.get(index) else { return Step::status("INIT") };
            match step.until_ms() {
                Some(until) if since_first < std::time::Duration::from_millis(until) => return step.clone(),
                // Over: the script moves on (a time-based last step simply repeats).
                Some(_) if index < last => script.position = index + 1,
                _ => {
                    script.position = script.position.saturating_add(1);
                    return step.clone();
                }
            }
        }
    }

    fn credentials(&self) -> Arc<HashMap<String, String>> {
        Arc::clone(&self.credentials.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn record(&self, entry: LoggedRequest) {
        tracing::debug!(
            seq = entry.seq,
            action = %entry.action,
            ticket_id = entry.ticket_id.as_deref().unwrap_or(""),
            http_status = entry.http_status,
            answer = %entry.answer,
            "simulator answered"
        );
        lock(&self.log).push(entry);
    }
}

async fn accept_until_cancelled(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                stream
            }
            Err(error) => {
                // Usually out of file descriptors: pause instead of spinning.
                tracing::warn!(error = %error, "simulator accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(error = %error, "could not set TCP_NODELAY");
        }
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&shared), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(error = %error, "simulator connection closed");
            }
        });
    }
    tracing::info!("simulated flink api stopped");
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<SimBody>, Dropped> {
    if request.uri().path().starts_with("/_sim/") {
        return Ok(control(&shared, request).await);
    }
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let started_at = shared.now();
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_API_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::debug!(seq, error = %error, "simulator could not read a request body");
            return Err(Dropped);
        }
    };
    let route = route(parts.uri.path());
    let header = |name| auth::header(&parts.headers, name).map(str::to_owned);
    let (kind, namespace, ticket_id) = match &route {
        Route::Poll { kind, namespace, ticket_id } => (Some(*kind), namespace.clone(), Some(ticket_id.clone())),
        Route::Submit { kind, namespace, .. } => (Some(*kind), namespace.clone(), None),
        Route::Unknown { namespace } => (None, namespace.clone(), None),
    };
    let mut entry = LoggedRequest {
        seq,
        action: header("x-acs-action").unwrap_or_default(),
        kind,
        path: parts.uri.path().to_owned(),
        namespace,
        workspace: header("workspace"),
        ticket_id,
        started_at,
        finished_at: started_at,
        answer: String::new(),
        http_status: None,
        draft_id: None,
        access_key_id: None,
        subject: None,
        body: None,
    };
    let request_id = answer::new_request_id();
    let host = header("host").unwrap_or_default();
    let outcome = api(&shared, &parts, &body, route, &request_id, &host, &mut entry).await;
    entry.finished_at = shared.now();
    entry.http_status = outcome.as_ref().ok().map(|response| response.status().as_u16());
    shared.record(entry);
    outcome
}

/// Checks and answers one API request, filling in the log entry's label (and ids).
async fn api(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    body: &Bytes,
    route: Route,
    request_id: &str,
    host: &str,
    entry: &mut LoggedRequest,
) -> Result<Response<SimBody>, Dropped> {
    let stamp = |shared: &Shared| Stamp { now: shared.now(), request_id, host };
    if let Route::Unknown { .. } = route {
        entry.answer = "unknown api".to_owned();
        return Ok(not_found_api(&stamp(shared)));
    }
    let received = auth::Received {
        method: parts.method.as_str(),
        raw_path: parts.uri.path(),
        raw_query: parts.uri.query(),
        headers: &parts.headers,
        body,
    };
    let credentials = shared.credentials();
    let verified =
        auth::verify(&received, &credentials, shared.now(), |nonce| lock(&shared.nonces).insert(nonce, Instant::now()));
    match verified {
        Ok(access_key_id) => entry.access_key_id = Some(access_key_id),
        Err(rejection) => {
            entry.answer = if rejection.code == "SignatureDoesNotMatch" {
                "signature mismatch".to_owned()
            } else {
                format!("rejected {}", rejection.code)
            };
            return Ok(answer::gateway_error(
                &stamp(shared),
                rejection.http_status,
                rejection.code,
                &rejection.message,
            ));
        }
    }

    match route {
        Route::Poll { kind, namespace, ticket_id }
            if parts.method == Method::GET && entry.action == poll_action(kind) =>
        {
            let step = shared.next_step(kind, &ticket_id);
            let delay = step.delay_ms();
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            Ok(play(&stamp(shared), kind, &step, &namespace, &ticket_id, entry)?)
        }
        Route::Submit { kind, subject, .. } if parts.method == Method::POST && entry.action == submit_action(kind) => {
            entry.body = Some(String::from_utf8_lossy(body).into_owned());
            entry.subject.clone_from(&subject);
            Ok(match kind {
                TicketKind::Deploy => deploy(shared, &stamp(shared), body, entry),
                _ => submit(shared, &stamp(shared), kind, subject.as_deref().unwrap_or(""), body, entry),
            })
        }
        _ => {
            entry.answer = "unknown api".to_owned();
            Ok(not_found_api(&stamp(shared)))
        }
    }
}

/// Answers a poll with one scripted step.
fn play(
    stamp: &Stamp<'_>,
    kind: TicketKind,
    step: &Step,
    namespace: &str,
    ticket_id: &str,
    entry: &mut LoggedRequest,
) -> Result<Response<SimBody>, Dropped> {
    let response = match step {
        Step::Status(status) => {
            entry.answer.clone_from(&status.status);
            answer::success(stamp, answer::kind_status_data(kind, status, ticket_id))
        }
        Step::Error(error) => {
            entry.answer = if error.code.starts_with("Throttling") {
                "throttled".to_owned()
            } else {
                format!("error {}", error.code)
            };
            answer::scripted_error(stamp, error)
        }
        Step::NotFound { message, .. } => {
            entry.answer = "not found".to_owned();
            let message = message
                .clone()
                .unwrap_or_else(|| format!("The ticket {ticket_id} does not exist in namespace {namespace}."));
            answer::service_error(stamp, 404, "TicketNotFound", &message)
        }
        Step::Html { http_status, .. } => {
            entry.answer = format!("http {http_status}");
            answer::html_page(stamp, *http_status)
        }
        Step::Text { text, http_status, .. } => {
            entry.answer = format!("text {http_status}");
            answer::bytes_response(stamp, *http_status, "text/plain", Bytes::from(text.clone()))
        }
        Step::Truncated { .. } => {
            entry.answer = "truncated".to_owned();
            let mut status = StatusStep::from_status("EXECUTING");
            status.message = Some("The deployment is being started.".to_owned());
            answer::truncated(stamp, answer::status_data(&status, ticket_id))
        }
        Step::Drop { .. } => {
            entry.answer = "dropped".to_owned();
            return Err(Dropped);
        }
        Step::Garbage { bytes, http_status, .. } => {
            entry.answer = "garbage".to_owned();
            answer::filler(stamp, *http_status, *bytes)
        }
    };
    Ok(response)
}

/// DeployDeploymentDraftAsync: validates the body and creates a ticket.
fn deploy(shared: &Shared, stamp: &Stamp<'_>, body: &[u8], entry: &mut LoggedRequest) -> Response<SimBody> {
    let request: Option<Value> = serde_json::from_slice(body).ok().filter(Value::is_object);
    let invalid = |entry: &mut LoggedRequest, message: &str| {
        entry.answer = "error InvalidParameter".to_owned();
        answer::service_error(stamp, 400, "InvalidParameter", message)
    };
    let Some(request) = request else {
        return invalid(entry, "The request body must be a JSON object.");
    };
    let Some(draft_id) = request.get("deploymentDraftId").and_then(Value::as_str).filter(|id| !id.is_empty()) else {
        return invalid(entry, "deploymentDraftId is mandatory for this action.");
    };
    entry.draft_id = Some(draft_id.to_owned());
    if let Some(target) = request.get("deploymentTarget").filter(|target| !target.is_null()) {
        if target.get("mode").and_then(Value::as_str) != Some("PER_JOB") {
            return invalid(entry, "deploymentTarget.mode must be PER_JOB.");
        }
        if !target.get("name").is_some_and(Value::is_string) {
            return invalid(entry, "deploymentTarget.name must be a string.");
        }
    }
    if request.get("skipValidate").is_some_and(|skip| !skip.is_boolean() && !skip.is_null()) {
        return invalid(entry, "skipValidate must be a boolean.");
    }
    let ticket_id = answer::new_ticket_id();
    if let Some(steps) = shared.scenario.steps_for_draft(draft_id) {
        lock(&shared.tickets).insert(
            (TicketKind::Deploy, ticket_id.clone()),
            TicketScript { steps: Arc::from(steps), position: 0, polls: 0, first_poll: None },
        );
    }
    entry.answer = "submitted".to_owned();
    entry.ticket_id = Some(ticket_id.clone());
    answer::success(stamp, json!({ "ticketId": ticket_id }))
}

/// ValidateDeploymentDraftAsync, GenerateResourcePlanWithFlinkConfAsync and HotUpdateJob: checks
/// the body each takes (a `DraftValidateParams` object; a Flink configuration object or nothing;
/// nothing at all) and creates a ticket of `kind`. `subject` is the path's deployment or job id.
fn submit(
    shared: &Shared,
    stamp: &Stamp<'_>,
    kind: TicketKind,
    subject: &str,
    body: &[u8],
    entry: &mut LoggedRequest,
) -> Response<SimBody> {
    let invalid = |entry: &mut LoggedRequest, message: &str| {
        entry.answer = "error InvalidParameter".to_owned();
        answer::service_error(stamp, 400, "InvalidParameter", message)
    };
    let object: Option<Value> = serde_json::from_slice(body).ok().filter(Value::is_object);
    let script_for = match kind {
        TicketKind::Validate => {
            let Some(request) = object else {
                return invalid(entry, "The request body must be a JSON object.");
            };
            let Some(draft_id) = request.get("deploymentDraftId").and_then(Value::as_str).filter(|id| !id.is_empty())
            else {
                return invalid(entry, "deploymentDraftId is mandatory for this action.");
            };
            entry.draft_id = Some(draft_id.to_owned());
            if request.get("deploymentTargetName").is_some_and(|target| !target.is_string() && !target.is_null()) {
                return invalid(entry, "deploymentTargetName must be a string.");
            }
            if request.get("deploymentTarget").is_some() {
                return invalid(entry, "deploymentTarget is not a parameter of this action; use deploymentTargetName.");
            }
            draft_id.to_owned()
        }
        TicketKind::ResourcePlan => {
            if !body.is_empty() && object.is_none() {
                return invalid(entry, "The Flink configuration must be a JSON object.");
            }
            subject.to_owned()
        }
        TicketKind::HotUpdate | TicketKind::Deploy => {
            if !body.is_empty() {
                return invalid(entry, "This action takes no request body.");
            }
            subject.to_owned()
        }
    };
    let ticket_id = answer::new_ticket_id();
    let steps = shared.scenario.steps_for_submit(kind, &script_for);
    if let Some(steps) = steps {
        lock(&shared.tickets).insert(
            (kind, ticket_id.clone()),
            TicketScript { steps: Arc::from(steps), position: 0, polls: 0, first_poll: None },
        );
    }
    entry.answer = "submitted".to_owned();
    entry.ticket_id = Some(ticket_id.clone());
    let data = match kind {
        TicketKind::HotUpdate => {
            // The submit already reports the first status; polls play the script from its start.
            answer::kind_status_data(kind, &StatusStep::from_status("INIT"), &ticket_id)
        }
        _ => json!({ "ticketId": ticket_id }),
    };
    answer::success(stamp, data)
}

fn not_found_api(stamp: &Stamp<'_>) -> Response<SimBody> {
    answer::gateway_error(
        stamp,
        404,
        "InvalidAction.NotFound",
        "Specified api is not found, please check your url and method.",
    )
}

/// The unsigned `/_sim/` control surface.
async fn control(shared: &Shared, request: Request<Incoming>) -> Response<SimBody> {
    let request_id = answer::new_request_id();
    let stamp = Stamp { now: shared.now(), request_id: &request_id, host: "" };
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let kind = match control_kind(parts.uri.query()) {
        Ok(kind) => kind,
        Err(error) => return control_error(&stamp, 400, &error.to_string()),
    };
    let body = match Limited::new(body, MAX_CONTROL_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return control_error(&stamp, 400, &format!("reading the body: {error}")),
    };
    let ticket = path.strip_prefix("/_sim/tickets/").map(decode_segment);
    match (&parts.method, path.as_str(), ticket) {
        (&Method::GET, "/_sim/healthz", _) => answer::json_response(&stamp, 200, &json!({"status": "ok"})),
        (&Method::GET, "/_sim/requests", _) => {
            let log = serde_json::to_value(shared.requests()).expect("the request log always serialises");
            answer::json_response(&stamp, 200, &log)
        }
        (&Method::PUT, "/_sim/credentials", _) => match serde_json::from_slice::<Vec<ControlCredential>>(&body) {
            Ok(credentials) => {
                shared.set_credentials(
                    credentials.into_iter().map(|pair| (pair.access_key_id, pair.access_key_secret)).collect(),
                );
                no_content(&stamp)
            }
            Err(error) => {
                control_error(&stamp, 400, &format!("expected [{{access_key_id, access_key_secret}}]: {error}"))
            }
        },
        (&Method::PUT, _, Some(Some(ticket_id))) => match serde_json::from_slice::<Vec<Step>>(&body) {
            Ok(steps) => {
                tracing::info!(ticket_id = %ticket_id, steps = steps.len(), "simulator script replaced");
                shared.set_script(kind, &ticket_id, steps);
                no_content(&stamp)
            }
            Err(error) => control_error(&stamp, 400, &format!("expected a JSON array of steps: {error}")),
        },
        (&Method::GET, _, Some(Some(ticket_id))) => {
            let polls = shared.polls_of(kind, &ticket_id);
            answer::json_response(&stamp, 200, &json!({"ticket_id": ticket_id, "polls": polls}))
        }
        _ => control_error(&stamp, 404, &format!("no control endpoint {} {path}", parts.method)),
    }
}

/// The `kind` query parameter of a control request; deploy when absent.
fn control_kind(query: Option<&str>) -> Result<TicketKind, crate::domain::UnknownKind> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("kind="))
        .map(|value| percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned());
    value.map_or(Ok(TicketKind::Deploy), |value| value.parse())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlCredential {
    access_key_id: String,
    access_key_secret: String,
}

fn no_content(stamp: &Stamp<'_>) -> Response<SimBody> {
    answer::bytes_response(stamp, 204, "application/json;charset=utf-8", Bytes::new())
}

fn control_error(stamp: &Stamp<'_>, http_status: u16, message: &str) -> Response<SimBody> {
    answer::json_response(stamp, http_status, &json!({"error": message}))
}

/// Matches the raw (still percent-encoded) path against the API's operations. The colon of the
/// `%3A` templates must arrive as the SDK sends it, upper-case `%3A`.
fn route(raw_path: &str) -> Route {
    let segments: Vec<&str> = raw_path.strip_prefix('/').unwrap_or(raw_path).split('/').collect();
    let ["api", "v2", "namespaces", raw_namespace, rest @ ..] = segments.as_slice() else {
        return Route::Unknown { namespace: String::new() };
    };
    let Some(namespace) = decode_segment(raw_namespace) else {
        return Route::Unknown { namespace: String::new() };
    };
    let poll = |kind, raw_id: &str| match decode_segment(raw_id) {
        Some(ticket_id) => Route::Poll { kind, namespace: namespace.clone(), ticket_id },
        None => Route::Unknown { namespace: namespace.clone() },
    };
    let submit = |kind, raw_subject: Option<&str>| match raw_subject.map(decode_segment) {
        Some(None) => Route::Unknown { namespace: namespace.clone() },
        subject => Route::Submit { kind, namespace: namespace.clone(), subject: subject.flatten() },
    };
    match rest {
        ["deployment-drafts", "tickets", ticket, "async-deploy"] => poll(TicketKind::Deploy, ticket),
        ["deployment-drafts", "tickets", ticket, "async-validate"] => poll(TicketKind::Validate, ticket),
        ["deployments", "tickets", ticket, "resource-plan%3AasyncGenerate"] => poll(TicketKind::ResourcePlan, ticket),
        ["jobs", "hot-updates", id] => poll(TicketKind::HotUpdate, id),
        ["deployment-drafts", "async-deploy"] => submit(TicketKind::Deploy, None),
        ["deployment-drafts", "async-validate"] => submit(TicketKind::Validate, None),
        ["deployments", deployment, "resource-plan%3AasyncGenerate"] => {
            submit(TicketKind::ResourcePlan, Some(deployment))
        }
        ["jobs", job] => match job.strip_suffix("%3AhotUpdate") {
            Some(job) => submit(TicketKind::HotUpdate, Some(job)),
            None => Route::Unknown { namespace: namespace.clone() },
        },
        _ => Route::Unknown { namespace: namespace.clone() },
    }
}

/// Percent-decodes one path segment; `None` when empty or not UTF-8.
fn decode_segment(raw: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8().ok()?;
    (!decoded.is_empty()).then(|| decoded.into_owned())
}

/// Serde for instants in the daemon's text form, since chrono is built without its serde feature.
mod instant {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(instant: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&crate::clock::format_instant(*instant))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        crate::clock::parse_instant(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 instant")))
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent
/// (a single insert, push or counter update), so a panic elsewhere cannot leave it half-written.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
