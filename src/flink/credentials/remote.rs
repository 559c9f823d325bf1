//! Temporary credentials fetched over HTTP: AssumeRoleWithOIDC against STS (RRSA), the ECS
//! metadata service (with an IMDSv2 session token), and a credentials URI.
//!
//! Each fetch is one short sequence of requests with its own timeouts; the caching, refresh
//! timing and single-flight logic live in `cache`. Errors describe what failed without URLs that
//! could hold a token, and without any secret.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::super::Credentials;

/// Where the ECS metadata service answers on every ECS instance.
pub const ECS_METADATA_URL: &str = "http://100.100.100.200";

/// TTL asked for the IMDSv2 session token, in seconds (the official SDK's value).
const METADATA_TOKEN_TTL_SECS: &str = "21600";

/// Timeout of each metadata request (connect and read), as in the official SDK: on a machine
/// that is not an ECS instance the address does not answer, and the chain must move on fast.
pub(super) const METADATA_TIMEOUT: Duration = Duration::from_secs(1);

/// Connect timeout of STS and credentials-URI requests (the official SDK's 5 s).
pub(super) const REMOTE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whole-request timeout of STS and credentials-URI requests (the official SDK's 10 s).
pub(super) const REMOTE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to call AssumeRoleWithOIDC.
#[derive(Debug, Clone)]
pub(super) struct OidcSettings {
    /// Base URL of STS (`https://sts.aliyuncs.com` or a regional / VPC host, or a test fake).
    pub(super) sts: Url,
    /// The OIDC token file, re-read on every fetch (the kubelet rotates it).
    pub(super) token_file: PathBuf,
    /// The role to assume.
    pub(super) role_arn: String,
    /// The OIDC provider registered in RAM.
    pub(super) provider_arn: String,
    /// `RoleSessionName`.
    pub(super) session_name: String,
}

/// How to ask the ECS metadata service.
#[derive(Debug, Clone)]
pub(super) struct EcsSettings {
    /// Base URL of the metadata service (`http://100.100.100.200`, or a test fake).
    pub(super) base: Url,
    /// The RAM role name; discovered from the service when absent.
    pub(super) role: Option<String>,
    /// `ALIBABA_CLOUD_IMDSV1_DISABLED=true`: fail instead of falling back to requests without a
    /// session token.
    pub(super) imdsv1_disabled: bool,
}

/// Temporary credentials and when they stop working.
#[derive(Debug, Clone)]
pub(super) struct Fetched {
    /// The credentials (always with a security token).
    pub(super) credentials: Credentials,
    /// `Expiration`.
    pub(super) expires_at: DateTime<Utc>,
}

/// The HTTP clients of credential fetches: one for STS and credential URIs (SDK timeouts, system
/// proxy, extra CA), one for the metadata service (1 s timeouts, never through a proxy).
#[derive(Debug, Clone)]
pub(super) struct Clients {
    pub(super) remote: reqwest::Client,
    pub(super) metadata: reqwest::Client,
}

impl Clients {
    /// Builds both clients; `extra_roots` are trusted besides the system roots.
    pub(super) fn new(extra_roots: &[reqwest::Certificate]) -> Result<Clients, reqwest::Error> {
        let mut remote = reqwest::Client::builder()
            .connect_timeout(REMOTE_CONNECT_TIMEOUT)
            .timeout(REMOTE_REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flink-ticketd/", env!("CARGO_PKG_VERSION")));
        for certificate in extra_roots {
            remote = remote.add_root_certificate(certificate.clone());
        }
        let metadata = reqwest::Client::builder()
            .connect_timeout(METADATA_TIMEOUT)
            .timeout(METADATA_TIMEOUT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flink-ticketd/", env!("CARGO_PKG_VERSION")));
        Ok(Clients { remote: remote.build()?, metadata: metadata.build()? })
    }
}

/// Why a fetch of temporary credentials failed. Messages name the source and never hold a
/// secret or a URL query.
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    /// The OIDC token file could not be read.
    #[error("cannot read the OIDC token file {}: {source}", .path.display())]
    TokenFile { path: PathBuf, source: std::io::Error },
    /// The OIDC token file holds only whitespace.
    #[error("the OIDC token file {} is empty", .0.display())]
    EmptyTokenFile(PathBuf),
    /// A request got no whole answer; `request` says which and how far it got.
    #[error("{request}: {reason}")]
    Transport { request: String, reason: String },
    /// STS answered without credentials.
    #[error(
        "STS refused AssumeRoleWithOIDC: HTTP {status}{}{}{}",
        .code.as_ref().map(|code| format!(" {code}")).unwrap_or_default(),
        .message.as_ref().map(|message| format!(": {message}")).unwrap_or_default(),
        .request_id.as_ref().map(|id| format!(" (request {id})")).unwrap_or_default()
    )]
    StsRefused { status: u16, code: Option<String>, message: Option<String>, request_id: Option<String> },
    /// The metadata service gave no session token.
    #[error("the ECS metadata service refused a session token: HTTP {0}")]
    TokenRefused(u16),
    /// A session token is required (IMDSv1 is disabled) and none was given.
    #[error("{0}; requests without a session token are disabled (ALIBABA_CLOUD_IMDSV1_DISABLED=true)")]
    TokenRequired(Box<FetchError>),
    /// An HTTP status other than success; `path` is the metadata path asked for, if any.
    #[error("{from} answered HTTP {status}{}", .path.as_ref().map(|path| format!(" for /{path}")).unwrap_or_default())]
    Status { from: String, status: u16, path: Option<String> },
    /// The answer (`what` describes it) is not the JSON expected.
    #[error("{0} is not the expected JSON")]
    NotJson(String),
    /// The answer's `Code` is not `Success`.
    #[error("{from} answered Code {code:?}")]
    NotSuccess { from: String, code: String },
    /// The answer lacks the credential fields.
    #[error("{0} answered without AccessKeyId, AccessKeySecret, SecurityToken and Expiration")]
    Incomplete(String),
    /// `Expiration` is not a time.
    #[error("{0} gave an Expiration that is not an RFC 3339 time")]
    Expiration(String),
    /// The key pair is empty.
    #[error("{0} gave an empty AccessKeyId or AccessKeySecret")]
    EmptyKey(String),
    /// The metadata service lists no role.
    #[error("the ECS metadata service lists no RAM role for this instance")]
    NoRole,
    /// The role name would leave the metadata path.
    #[error("{0:?} is not a RAM role name")]
    BadRole(String),
    /// A metadata path did not join the base URL.
    #[error(transparent)]
    Url(#[from] url::ParseError),
}

/// AssumeRoleWithOIDC: an unsigned GET to STS with the token file's current contents.
pub(super) async fn assume_role_with_oidc(
    http: &reqwest::Client,
    settings: &OidcSettings,
    now: DateTime<Utc>,
) -> Result<Fetched, FetchError> {
    let token = tokio::fs::read_to_string(&settings.token_file)
        .await
        .map_err(|source| FetchError::TokenFile { path: settings.token_file.clone(), source })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(FetchError::EmptyTokenFile(settings.token_file.clone()));
    }
    let mut url = settings.sts.clone();
    url.query_pairs_mut()
        .append_pair("Action", "AssumeRoleWithOIDC")
        .append_pair("Format", "JSON")
        .append_pair("Version", "2015-04-01")
        .append_pair("DurationSeconds", "3600")
        .append_pair("RoleArn", &settings.role_arn)
        .append_pair("OIDCProviderArn", &settings.provider_arn)
        .append_pair("OIDCToken", token)
        .append_pair("RoleSessionName", &settings.session_name)
        .append_pair("Timestamp", &now.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    let response = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|error| transport("STS request failed", &error))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|error| transport("STS answer cut short", &error))?;
    let answer: StsAnswer = serde_json::from_slice(&body)
        .map_err(|_| FetchError::NotJson(format!("STS answered HTTP {} with a body that", status.as_u16())))?;
    match answer.credentials {
        Some(credentials) if status.is_success() => temporary(&credentials, "STS"),
        _ => Err(FetchError::StsRefused {
            status: status.as_u16(),
            code: answer.code,
            message: answer.message,
            request_id: answer.request_id,
        }),
    }
}

/// The ECS RAM role's credentials from the metadata service, with an IMDSv2 session token when
/// the service gives one.
pub(super) async fn ecs_ram_role(http: &reqwest::Client, settings: &EcsSettings) -> Result<Fetched, FetchError> {
    let token = match metadata_token(http, &settings.base).await {
        Ok(token) => Some(token),
        Err(error) if settings.imdsv1_disabled => {
            return Err(FetchError::TokenRequired(Box::new(error)));
        }
        Err(error) => {
            tracing::debug!(error = %error, "no metadata session token; asking without one");
            None
        }
    };
    let role = match &settings.role {
        Some(role) => role.clone(),
        None => {
            let listed =
                metadata_get(http, &settings.base, "latest/meta-data/ram/security-credentials/", token.as_ref())
                    .await?;
            listed.lines().map(str::trim).find(|line| !line.is_empty()).map(str::to_owned).ok_or(FetchError::NoRole)?
        }
    };
    if role.contains('/') || role == "." || role == ".." {
        return Err(FetchError::BadRole(role));
    }
    let body = metadata_get(
        http,
        &settings.base,
        &format!("latest/meta-data/ram/security-credentials/{role}"),
        token.as_ref(),
    )
    .await?;
    let answer: CredentialsAnswer = serde_json::from_str(&body)
        .map_err(|_| FetchError::NotJson(format!("the ECS metadata service's answer for role {role:?}")))?;
    answer.into_fetched(&format!("the ECS metadata service (role {role:?})"))
}

/// GET a credentials URI (`ALIBABA_CLOUD_CREDENTIALS_URI`); the answer has the metadata
/// service's shape.
pub(super) async fn credentials_uri(http: &reqwest::Client, uri: &Url) -> Result<Fetched, FetchError> {
    let shown = shown_url(uri);
    let response = http
        .get(uri.clone())
        .send()
        .await
        .map_err(|error| transport(&format!("the credentials URI {shown} failed"), &error))?;
    let status = response.status();
    let body =
        response.bytes().await.map_err(|error| transport(&format!("the credentials URI {shown} cut short"), &error))?;
    if !status.is_success() {
        return Err(FetchError::Status {
            from: format!("the credentials URI {shown}"),
            status: status.as_u16(),
            path: None,
        });
    }
    let answer: CredentialsAnswer = serde_json::from_slice(&body)
        .map_err(|_| FetchError::NotJson(format!("the credentials URI {shown} answered with a body that")))?;
    answer.into_fetched(&format!("the credentials URI {shown}"))
}

/// A URL as shown in messages: scheme, host, port and path; never the query, which may hold a
/// token.
pub(super) fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

#[derive(Deserialize)]
struct StsAnswer {
    #[serde(rename = "RequestId", default)]
    request_id: Option<String>,
    #[serde(rename = "Code", default)]
    code: Option<String>,
    #[serde(rename = "Message", default)]
    message: Option<String>,
    #[serde(rename = "Credentials", default)]
    credentials: Option<TemporaryCredentials>,
}

#[derive(Deserialize)]
struct TemporaryCredentials {
    #[serde(rename = "AccessKeyId")]
    access_key_id: String,
    #[serde(rename = "AccessKeySecret")]
    access_key_secret: String,
    #[serde(rename = "SecurityToken")]
    security_token: String,
    #[serde(rename = "Expiration")]
    expiration: String,
}

/// The metadata service's (and a credentials URI's) answer.
#[derive(Deserialize)]
struct CredentialsAnswer {
    #[serde(rename = "Code", default)]
    code: Option<String>,
    #[serde(flatten)]
    credentials: Option<TemporaryCredentials>,
}

impl CredentialsAnswer {
    fn into_fetched(self, from: &str) -> Result<Fetched, FetchError> {
        if let Some(code) = self.code.as_deref().filter(|code| *code != "Success") {
            return Err(FetchError::NotSuccess { from: from.to_owned(), code: code.to_owned() });
        }
        match self.credentials {
            Some(credentials) => temporary(&credentials, from),
            None => Err(FetchError::Incomplete(from.to_owned())),
        }
    }
}

fn temporary(credentials: &TemporaryCredentials, from: &str) -> Result<Fetched, FetchError> {
    let expires_at = crate::clock::parse_instant(credentials.expiration.trim())
        .ok_or_else(|| FetchError::Expiration(from.to_owned()))?;
    // Values read from a file or a web answer often end in a newline; a header cannot carry one
    // and a signature made with one is refused, so every part is trimmed.
    let secret = credentials.access_key_secret.trim();
    let token = credentials.security_token.trim();
    if credentials.access_key_id.trim().is_empty() || secret.is_empty() {
        return Err(FetchError::EmptyKey(from.to_owned()));
    }
    Ok(Fetched {
        credentials: Credentials {
            access_key_id: credentials.access_key_id.trim().to_owned(),
            access_key_secret: SecretString::from(secret.to_owned()),
            security_token: Some(SecretString::from(token.to_owned())),
        },
        expires_at,
    })
}

/// PUT `/latest/api/token`: the IMDSv2 session token.
async fn metadata_token(http: &reqwest::Client, base: &Url) -> Result<SecretString, FetchError> {
    let url = base.join("latest/api/token")?;
    let response = http
        .put(url)
        .header("X-aliyun-ecs-metadata-token-ttl-seconds", METADATA_TOKEN_TTL_SECS)
        .send()
        .await
        .map_err(|error| transport("the ECS metadata service did not give a session token", &error))?;
    if !response.status().is_success() {
        return Err(FetchError::TokenRefused(response.status().as_u16()));
    }
    let token =
        response.text().await.map_err(|error| transport("the ECS metadata session token was cut short", &error))?;
    Ok(SecretString::from(token.trim().to_owned()))
}

async fn metadata_get(
    http: &reqwest::Client,
    base: &Url,
    path: &str,
    token: Option<&SecretString>,
) -> Result<String, FetchError> {
    use secrecy::ExposeSecret as _;
    let url = base.join(path)?;
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.header("X-aliyun-ecs-metadata-token", token.expose_secret());
    }
    let response = request
        .send()
        .await
        .map_err(|error| transport("the ECS metadata service did not answer (is this an ECS instance?)", &error))?;
    let status = response.status();
    let text =
        response.text().await.map_err(|error| transport("the ECS metadata service's answer was cut short", &error))?;
    if !status.is_success() {
        return Err(FetchError::Status {
            from: "the ECS metadata service".to_owned(),
            status: status.as_u16(),
            path: Some(path.to_owned()),
        });
    }
    Ok(text)
}

/// A request that got no whole answer, described without its URL.
fn transport(request: &str, error: &reqwest::Error) -> FetchError {
    FetchError::Transport { request: request.to_owned(), reason: crate::transport::describe(error) }
}
