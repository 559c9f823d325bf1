//! The only module that knows the cloud API: [`FlinkClient`] signs and sends requests to
//! Realtime Compute for Apache Flink (Ververica API 2022-07-18) and classifies what comes back.
//!
//! `signing` holds the ACS3-HMAC-SHA256 algorithm, `wire` the JSON shapes and the error table,
//! `endpoint` the region table, `credentials` the default credential chain. Nothing here touches
//! the database.
//!
//! Beyond one signed request, [`FlinkClient`] retries two kinds of refusal once, at once, with a
//! fresh date and nonce: `InvalidSecurityToken.*` (after refreshing temporary credentials)
//! and `InvalidTimeStamp.*` (after measuring the server's clock from its `Date` header). It signs
//! with the measured clock offset from then on, so a skewed host clock does not stop polling.
//!
//! Proxies: the HTTP client honours `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and
//! their lower-case forms) as reqwest does by default. Connections are kept alive and reused
//! across polls (HTTP/1.1, idle for up to a minute).

pub mod credentials;
pub mod endpoint;
pub mod kinds;
pub mod settings;
pub mod signing;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use rand::RngCore;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};
use url::Url;

use crate::clock::Clock;
use crate::domain::{Answer, TicketKind};

pub use credentials::{CredentialError, CredentialProvider};
pub use endpoint::Endpoints;
pub use kinds::{HotUpdateRequest, ResourcePlanRequest, Submitted, ValidateRequest};
pub use settings::FlinkSettings;

/// The API version every call names in `x-acs-version`.
pub const API_VERSION: &str = "2022-07-18";

/// An access key pair, optionally with an STS security token.
#[derive(Clone)]
pub struct Credentials {
    /// The AccessKey ID (not secret; it appears in the `Authorization` header).
    pub access_key_id: String,
    /// The AccessKey secret.
    pub access_key_secret: SecretString,
    /// The STS token for temporary credentials.
    pub security_token: Option<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"[redacted]")
            .field("security_token", &self.security_token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Fixed credentials with a name; converts into a [`CredentialProvider`] that never refreshes.
#[derive(Debug, Clone)]
pub struct CredentialSource {
    /// Human-readable name of the source, for logs.
    pub name: &'static str,
    /// The credentials themselves.
    pub credentials: Arc<Credentials>,
}

/// The details of an error answer from the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status, when there was an HTTP answer.
    pub http_status: Option<u16>,
    /// `Code` / `code` / `errorCode`.
    pub code: Option<String>,
    /// `Message` / `message` / `errorMessage`, or our description of the failure.
    pub message: Option<String>,
    /// `RequestId` / `requestId`.
    pub request_id: Option<String>,
}

/// How an error answer should be handled; see [`FlinkError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with backoff.
    Transient,
    /// Retry later, slower.
    RateLimited,
    /// Our credentials are expired or unknown.
    Credentials,
    /// Our configuration, signature or clock is wrong.
    Config,
    /// We may not read this workspace.
    AccessDenied,
    /// This ticket cannot be polled (not found, invalid).
    Ticket,
}

/// A failed API call, by what the caller should do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlinkError {
    /// No HTTP answer: connect error, timeout, dropped connection.
    #[error("network error: {0}")]
    Network(String),
    /// A 2xx answer we could not read (not the envelope, or too large): the API said something
    /// we do not understand. Never the ticket's fault: retried like [`FlinkError::Transient`].
    #[error("invalid response: {}", describe(.0))]
    Decode(ApiError),
    /// 5xx, 408, `ServiceUnavailable`, `InternalError`, unknown codes, and error statuses whose
    /// body is not JSON (a proxy's HTML page, an empty or plain-text body): retry with backoff.
    #[error("temporary API error: {}", describe(.0))]
    Transient(ApiError),
    /// 429 or `Throttling*`: retry no sooner than `retry_after`.
    #[error("throttled: {}", describe(.error))]
    RateLimited {
        /// The answer.
        error: ApiError,
        /// The server's hint, if any.
        retry_after: Option<Duration>,
    },
    /// `InvalidSecurityToken.*`, `InvalidAccessKeyId.*`: about us, not the ticket.
    #[error("credentials rejected: {}", describe(.0))]
    Credentials(ApiError),
    /// Signature, clock or request-shape errors: about us, not the ticket.
    #[error("request rejected: {}", describe(.0))]
    Config(ApiError),
    /// `Forbidden*`, `NoPermission`: this workspace is closed to our credentials.
    #[error("access denied: {}", describe(.0))]
    AccessDenied(ApiError),
    /// Not found or invalid: this ticket cannot be polled.
    #[error("ticket rejected: {}", describe(.0))]
    Ticket(ApiError),
}

impl FlinkError {
    /// The details of the answer, when there was one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            FlinkError::Network(_) => None,
            FlinkError::Decode(error)
            | FlinkError::Transient(error)
            | FlinkError::RateLimited { error, .. }
            | FlinkError::Credentials(error)
            | FlinkError::Config(error)
            | FlinkError::AccessDenied(error)
            | FlinkError::Ticket(error) => Some(error),
        }
    }

    /// The code recorded in `tickets.error_code`: the API's code, or one of ours
    /// (`NetworkError`, `InvalidResponse`, `HttpStatus<n>`) when the API gave none.
    pub fn code(&self) -> String {
        match self.api_error() {
            Some(ApiError { code: Some(code), .. }) => code.clone(),
            None => "NetworkError".to_owned(),
            Some(error) => match self {
                FlinkError::Decode(_) => "InvalidResponse".to_owned(),
                _ => match error.http_status {
                    Some(status) => format!("HttpStatus{status}"),
                    None => "UnknownError".to_owned(),
                },
            },
        }
    }

    /// The message recorded in `tickets.error_message`.
    pub fn message(&self) -> String {
        match self {
            FlinkError::Network(message) => message.clone(),
            other => other.api_error().and_then(|error| error.message.clone()).unwrap_or_else(|| other.to_string()),
        }
    }

    /// Whether the API answered this: `false` for network failures and for errors raised here
    /// before any request was sent (an unknown region, a value no header or path can carry, no
    /// credentials). Only an answer says anything about whether the API accepts us.
    pub fn answered(&self) -> bool {
        self.api_error().is_some_and(|error| error.http_status.is_some())
    }

    /// The request ID of the answer, if any.
    pub fn request_id(&self) -> Option<&str> {
        self.api_error().and_then(|error| error.request_id.as_deref())
    }
}

/// Settings for [`FlinkClient`].
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Where requests go.
    pub endpoints: Endpoints,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout, including reading the body.
    pub request_timeout: Duration,
    /// Responses larger than this are refused as [`FlinkError::Decode`].
    pub max_response_bytes: usize,
    /// Extra PEM CA bundle to trust besides the system roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Which ticket to ask about.
#[derive(Debug, Clone, Copy)]
pub struct TicketRef<'a> {
    /// The Flink namespace.
    pub namespace: &'a str,
    /// The workspace ID, sent in the `workspace` header.
    pub workspace: &'a str,
    /// The ID to poll: the ticket ID a submit returned (`jobHotUpdateId` for a hot update).
    pub ticket_id: &'a str,
    /// Region override for this ticket; the configured region otherwise.
    pub region: Option<&'a str>,
}

/// A successful poll.
#[derive(Debug, Clone)]
pub struct Polled {
    /// The API's request ID.
    pub request_id: Option<String>,
    /// What it said about the ticket, read as its kind's result.
    pub answer: Answer,
}

/// A draft deploy request (DeployDeploymentDraftAsync).
#[derive(Debug, Clone)]
pub struct DeployRequest<'a> {
    /// The Flink namespace.
    pub namespace: &'a str,
    /// The workspace ID.
    pub workspace: &'a str,
    /// The draft to deploy.
    pub draft_id: &'a str,
    /// The deployment target (queue) name; the default queue when absent.
    pub target: Option<&'a str>,
    /// Skip the deep validation before deploying.
    pub skip_validate: bool,
    /// Region override.
    pub region: Option<&'a str>,
}

/// How far the server's `Date` may be from our clock before requests are signed with the
/// server's time instead. The API accepts 15 minutes either way; a minute leaves room for the
/// header's one-second resolution and the network delay.
pub const CLOCK_SKEW_THRESHOLD: Duration = Duration::from_secs(60);

/// A signed HTTP client for the Flink API. Cheap to clone; clones share connections, the
/// credential cache and the measured clock offset.
#[derive(Clone)]
pub struct FlinkClient {
    http: reqwest::Client,
    endpoints: Endpoints,
    credentials: CredentialProvider,
    clock: Arc<dyn Clock>,
    max_response_bytes: usize,
    /// Seconds to add to our clock when signing, measured from the server's `Date`.
    clock_offset_secs: Arc<AtomicI64>,
    /// Whether the skew warning was logged (it is logged once per process).
    skew_warned: Arc<AtomicBool>,
}

impl FlinkClient {
    /// Builds the client and its connection pool. `credentials` is a [`CredentialProvider`] or
    /// a fixed [`CredentialSource`].
    pub fn new(
        settings: &ClientSettings,
        credentials: impl Into<CredentialProvider>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<FlinkClient> {
        use anyhow::Context as _;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            // The poller retries on its own schedule. reqwest's default policy retries only HTTP/2
            // and HTTP/3 refusals, which this HTTP/1.1 client never meets, yet copies every
            // request in case it has to send it again.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .user_agent(concat!("flink-ticketd/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_file {
            for certificate in read_ca_bundle(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(FlinkClient {
            http: builder.build().context("building the HTTP client")?,
            endpoints: settings.endpoints.clone(),
            credentials: credentials.into(),
            clock,
            max_response_bytes: settings.max_response_bytes,
            clock_offset_secs: Arc::new(AtomicI64::new(0)),
            skew_warned: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The name of the credential source in use.
    pub fn credential_source(&self) -> String {
        self.credentials.name()
    }

    /// Seconds added to our clock when signing: the server's clock minus ours, once they
    /// differed by more than [`CLOCK_SKEW_THRESHOLD`]; 0 otherwise.
    pub fn clock_offset_secs(&self) -> i64 {
        self.clock_offset_secs.load(Ordering::Relaxed)
    }

    /// GetDeployDeploymentDraftResult for one ticket.
    pub async fn get_deploy_result(&self, ticket: TicketRef<'_>) -> Result<Polled, FlinkError> {
        self.get_result(TicketKind::Deploy, ticket).await
    }

    /// The result of one ticket of `kind`, from that kind's poll path and action.
    pub async fn get_result(&self, kind: TicketKind, ticket: TicketRef<'_>) -> Result<Polled, FlinkError> {
        let path = kinds::poll_path(kind, ticket.namespace, ticket.ticket_id)?;
        let reply = self.call(ticket.region, "GET", &path, kinds::poll_action(kind), ticket.workspace, None).await?;
        let answer = kinds::parse_answer(kind, reply.data.as_ref(), reply.raw_data);
        Ok(Polled { request_id: reply.request_id, answer })
    }

    /// DeployDeploymentDraftAsync: starts a deploy and returns its ticket ID.
    pub async fn deploy_draft(&self, request: &DeployRequest<'_>) -> Result<(String, Option<String>), FlinkError> {
        let path = format!("/api/v2/namespaces/{}/deployment-drafts/async-deploy", path_parameter(request.namespace)?);
        let mut body = serde_json::json!({
            "deploymentDraftId": request.draft_id,
            "skipValidate": request.skip_validate,
        });
        if let Some(target) = request.target {
            body["deploymentTarget"] = serde_json::json!({"mode": "PER_JOB", "name": target});
        }
        let body = serde_json::to_vec(&body).expect("a JSON object of strings serialises");
        let reply = self
            .call(request.region, "POST", &path, "DeployDeploymentDraftAsync", request.workspace, Some(body))
            .await?;
        match wire::parse_submitted_ticket(reply.data.as_ref()) {
            Some(ticket_id) => Ok((ticket_id, reply.request_id)),
            None => Err(FlinkError::Decode(ApiError {
                http_status: Some(200),
                code: None,
                message: Some("the answer has no data.ticketId".to_owned()),
                request_id: reply.request_id,
            })),
        }
    }

    /// Sends one API call, retrying once at once after a refused security token (with refreshed
    /// credentials) and once after a refused timestamp (with the server's clock).
    async fn call(
        &self,
        region: Option<&str>,
        method: &str,
        path: &str,
        action: &str,
        workspace: &str,
        body: Option<Vec<u8>>,
    ) -> Result<wire::Reply, FlinkError> {
        let base = self.endpoints.base_url(region).map_err(|error| {
            FlinkError::Ticket(ApiError {
                code: Some("InvalidTicket".to_owned()),
                message: Some(error.to_string()),
                ..ApiError::default()
            })
        })?;
        let url = request_url(&base, path)?;
        let body = body.unwrap_or_default();
        let request = Request { url: &url, method, path, action, workspace, body: &body };
        let mut credentials = self.credentials.credentials().await.map_err(|error| credentials_unavailable(&error))?;
        let mut token_retried = false;
        let mut clock_retried = false;
        loop {
            let offset_used = self.clock_offset_secs();
            let outcome = self.send_once(&request, &credentials, offset_used).await;
            match &outcome {
                Err(FlinkError::Credentials(error))
                    if !token_retried && self.credentials.refreshes() && is_token_refusal(error) =>
                {
                    token_retried = true;
                    match self.credentials.refresh_after_rejection(&credentials).await {
                        Ok(fresh) => {
                            warn!(
                                error_code = error.code.as_deref().unwrap_or(""),
                                "security token refused; retrying with refreshed credentials"
                            );
                            credentials = fresh;
                        }
                        Err(refresh_error) => {
                            warn!(error = %refresh_error, "security token refused and the credentials could not be refreshed");
                            return outcome;
                        }
                    }
                }
                Err(FlinkError::Config(error))
                    if !clock_retried
                        && error.code.as_deref().is_some_and(|code| code.starts_with("InvalidTimeStamp"))
                        && self.clock_offset_secs() != offset_used =>
                {
                    clock_retried = true;
                }
                _ => return outcome,
            }
        }
    }

    /// One signed request with a fresh date and nonce.
    async fn send_once(
        &self,
        request: &Request<'_>,
        credentials: &Credentials,
        offset_secs: i64,
    ) -> Result<wire::Reply, FlinkError> {
        let url = request.url;
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let body = request.body;
        let date = (self.clock.now() + chrono::Duration::seconds(offset_secs))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let nonce = new_nonce();
        let payload_hash = signing::payload_hash(body);
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", &host),
            ("x-acs-action", request.action),
            ("x-acs-version", API_VERSION),
            ("x-acs-date", &date),
            ("x-acs-signature-nonce", &nonce),
            ("x-acs-content-sha256", &payload_hash),
            ("workspace", request.workspace),
            ("accept", "application/json"),
        ];
        if !body.is_empty() {
            headers.push(("content-type", "application/json; charset=utf-8"));
        }
        let token = credentials.security_token.as_ref().map(|token| token.expose_secret().to_owned());
        if let Some(token) = &token {
            headers.push(("x-acs-accesskey-id", &credentials.access_key_id));
            headers.push(("x-acs-security-token", token));
        }
        let signed = signing::sign(
            &signing::SigningInput {
                method: request.method,
                canonical_uri: request.path,
                query: &[],
                headers: &headers,
                body,
            },
            &credentials.access_key_id,
            credentials.access_key_secret.expose_secret(),
        );
        let mut header_map = HeaderMap::with_capacity(headers.len() + 1);
        for (name, value) in headers.iter().chain([&("authorization", signed.authorization.as_str())]) {
            let mut value = HeaderValue::from_str(value).map_err(|_| unsendable_header(name))?;
            if matches!(*name, "authorization" | "x-acs-security-token") {
                value.set_sensitive(true);
            }
            header_map.insert(HeaderName::from_static(name), value);
        }
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).expect("GET and POST are valid methods");
        let response = self
            .http
            .request(method, url.clone())
            .headers(header_map)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|error| FlinkError::Network(crate::transport::describe(&error)))?;
        let status = response.status().as_u16();
        self.observe_server_date(header_text(response.headers(), "date"));
        let retry_after = wire::retry_after(
            header_text(response.headers(), "x-acs-retry-after"),
            header_text(response.headers(), "retry-after"),
        );
        let body = read_capped(response, self.max_response_bytes).await?;
        wire::parse_reply(status, retry_after, &body)
    }

    /// Compares the server's `Date` with our clock and keeps the offset to sign with.
    fn observe_server_date(&self, date: Option<&str>) {
        let Some(server) = date.and_then(|date| chrono::DateTime::parse_from_rfc2822(date).ok()) else {
            return;
        };
        let measured = (server.with_timezone(&chrono::Utc) - self.clock.now()).num_seconds();
        let threshold = i64::try_from(CLOCK_SKEW_THRESHOLD.as_secs()).unwrap_or(i64::MAX);
        let offset = if measured.abs() > threshold { measured } else { 0 };
        let previous = self.clock_offset_secs.swap(offset, Ordering::Relaxed);
        if offset != 0 && previous == 0 {
            if !self.skew_warned.swap(true, Ordering::Relaxed) {
                warn!(
                    offset_secs = offset,
                    "the API's clock differs from ours; signing requests with the API's time (fix this host's clock, e.g. NTP)"
                );
            }
        } else if offset == 0 && previous != 0 {
            info!("the API's clock agrees with ours again; signing with our own time");
        }
    }
}

/// One API request, as sent on every attempt.
struct Request<'a> {
    url: &'a Url,
    method: &'a str,
    path: &'a str,
    action: &'a str,
    workspace: &'a str,
    body: &'a [u8],
}

/// Reads a PEM bundle of extra CA certificates to trust besides the system roots.
pub fn read_ca_bundle(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    use anyhow::Context as _;
    let pem = std::fs::read(path).with_context(|| format!("reading CA bundle {}", path.display()))?;
    reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("parsing CA bundle {}", path.display()))
}

/// Whether a credentials-class refusal says the security token (temporary credentials) is bad,
/// which new temporary credentials can fix.
fn is_token_refusal(error: &ApiError) -> bool {
    error
        .code
        .as_deref()
        .is_some_and(|code| code.starts_with("InvalidSecurityToken") || code.starts_with("InvalidAccessKeyId"))
}

/// No credentials to sign with: a credentials-class error, which pauses polling globally.
fn credentials_unavailable(error: &CredentialError) -> FlinkError {
    FlinkError::Credentials(ApiError {
        http_status: None,
        code: Some("CredentialsUnavailable".to_owned()),
        message: Some(error.to_string()),
        request_id: None,
    })
}

/// A header value HTTP cannot carry. The credential headers (the AccessKey ID is in
/// `authorization` too) are about us: a credentials error, which pauses polling instead of failing
/// tickets. The others carry the ticket's own values (its workspace). The value is never shown.
fn unsendable_header(name: &str) -> FlinkError {
    let message = format!("the {name} header value is not valid in HTTP");
    if matches!(name, "authorization" | "x-acs-accesskey-id" | "x-acs-security-token") {
        FlinkError::Credentials(ApiError {
            code: Some("CredentialsUnusable".to_owned()),
            message: Some(format!("{message}: the credentials hold characters a header cannot carry")),
            ..ApiError::default()
        })
    } else {
        FlinkError::Ticket(ApiError {
            code: Some("InvalidTicket".to_owned()),
            message: Some(message),
            ..ApiError::default()
        })
    }
}

/// Encodes one path parameter, refusing the dot segments that URL normalisation would resolve
/// into another path.
pub fn path_parameter(value: &str) -> Result<String, FlinkError> {
    if value.is_empty() || value == "." || value == ".." {
        return Err(FlinkError::Ticket(ApiError {
            code: Some("InvalidTicket".to_owned()),
            message: Some(format!("{value:?} cannot be used as a path parameter")),
            ..ApiError::default()
        }));
    }
    Ok(signing::encode(value))
}

/// A fresh 32-hex-digit nonce from the thread's CSPRNG.
fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn request_url(base: &Url, path: &str) -> Result<Url, FlinkError> {
    let mut url = base.clone();
    url.set_path(path);
    // The signature covers the path exactly as sent, so the URL must not have re-encoded it.
    if url.path() != path {
        return Err(FlinkError::Ticket(ApiError {
            code: Some("InvalidTicket".to_owned()),
            message: Some("the request path would be changed by URL normalisation".to_owned()),
            ..ApiError::default()
        }));
    }
    Ok(url)
}

async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, FlinkError> {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    let error = ApiError {
                        http_status: Some(status),
                        code: None,
                        message: Some(format!("response body larger than {cap} bytes")),
                        request_id: None,
                    };
                    // Only a 2xx answer is the API's own; an oversized error page is a proxy's.
                    return Err(if (200..300).contains(&status) {
                        FlinkError::Decode(error)
                    } else {
                        FlinkError::Transient(error)
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => {
                return Err(FlinkError::Network(format!(
                    "response body cut short (HTTP {status}): {}",
                    crate::transport::describe(&error)
                )));
            }
        }
    }
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn describe(error: &ApiError) -> String {
    let mut text = String::new();
    if let Some(code) = &error.code {
        text.push_str(code);
    } else if let Some(status) = error.http_status {
        text.push_str(&format!("HTTP {status}"));
    }
    if let Some(message) = &error.message {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(message);
    }
    if let Some(request_id) = &error.request_id {
        text.push_str(&format!(" (request {request_id})"));
    }
    text
}
