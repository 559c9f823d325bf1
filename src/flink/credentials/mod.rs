//! Finding the credentials to sign with, in the order of Alibaba Cloud's default chain, and keeping
//! temporary ones fresh.
//!
//! [`plan`] decides where credentials come from without any network access (so `check-config` can
//! say it): the explicit configuration keys, else the first of
//!
//! 1. `ALIBABA_CLOUD_ACCESS_KEY_ID` / `_ACCESS_KEY_SECRET` (+ optional `_SECURITY_TOKEN`);
//! 2. OIDC / RRSA: `ALIBABA_CLOUD_OIDC_TOKEN_FILE`, `_ROLE_ARN`, `_OIDC_PROVIDER_ARN`;
//! 3. the aliyun CLI's `~/.aliyun/config.json` (profile `ALIBABA_CLOUD_PROFILE` or `current`;
//!    skipped when `ALIBABA_CLOUD_CLI_PROFILE_DISABLED=true`);
//! 4. the INI file `ALIBABA_CLOUD_CREDENTIALS_FILE` or `~/.alibabacloud/credentials.ini`
//!    (section `ALIBABA_CLOUD_PROFILE` or `default`);
//! 5. the ECS RAM role from the metadata service (unless `ALIBABA_CLOUD_ECS_METADATA_DISABLED=true`),
//!    then `ALIBABA_CLOUD_CREDENTIALS_URI`: these two are tried in that order at the first fetch,
//!    as the official chain does, and the first that answers is used from then on.
//!
//! A source that is present but unusable (half-set variables, an unsupported profile mode, an
//! unreadable file) is an error rather than skipped, so the daemon never silently signs as
//! someone else. [`CredentialProvider`] hands out the credentials; temporary ones are refreshed
//! by `cache`, fetched by `remote`, and the files are parsed by `files`.

mod cache;
mod files;
mod remote;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::SecretString;
use url::Url;

use super::{CredentialSource, Credentials};
use crate::clock::Clock;

pub use cache::{REFRESH_AHEAD, RETRY_AFTER_FAILURE, refresh_time};
pub use remote::ECS_METADATA_URL;

/// The public STS endpoint used for AssumeRoleWithOIDC when no region is set.
pub const STS_URL: &str = "https://sts.aliyuncs.com";

/// Every environment variable the chain reads (besides `HOME`).
pub const VARIABLES: &[&str] = &[
    "ALIBABA_CLOUD_ACCESS_KEY_ID",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    "ALIBABA_CLOUD_SECURITY_TOKEN",
    "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
    "ALIBABA_CLOUD_ROLE_ARN",
    "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
    "ALIBABA_CLOUD_ROLE_SESSION_NAME",
    "ALIBABA_CLOUD_STS_REGION",
    "ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED",
    "ALIBABA_CLOUD_PROFILE",
    "ALIBABA_CLOUD_CLI_PROFILE_DISABLED",
    "ALIBABA_CLOUD_CREDENTIALS_FILE",
    "ALIBABA_CLOUD_ECS_METADATA",
    "ALIBABA_CLOUD_ECS_METADATA_DISABLED",
    "ALIBABA_CLOUD_IMDSV1_DISABLED",
    "ALIBABA_CLOUD_CREDENTIALS_URI",
];

/// What the chain looks at: a snapshot of its environment variables, the home directory, and
/// (for tests only) other addresses for STS and the ECS metadata service. Captured once, so that
/// tests pass their own instead of changing the process environment.
#[derive(Clone, Default)]
pub struct ChainEnvironment {
    vars: BTreeMap<String, String>,
    /// The home directory holding `.aliyun/config.json` and `.alibabacloud/credentials.ini`.
    pub home: Option<PathBuf>,
    /// Base URL that replaces STS (`https://sts.aliyuncs.com` or the regional host). For tests
    /// only: no configuration key or variable sets it.
    pub sts_endpoint: Option<Url>,
    /// Base URL that replaces the ECS metadata service (`http://100.100.100.200`). For tests
    /// only: no configuration key or variable sets it.
    pub metadata_endpoint: Option<Url>,
}

impl ChainEnvironment {
    /// Reads [`VARIABLES`] and `HOME` through `var`.
    pub fn capture(var: &dyn Fn(&str) -> Option<String>) -> ChainEnvironment {
        let vars = VARIABLES.iter().filter_map(|name| var(name).map(|value| ((*name).to_owned(), value))).collect();
        let home = var("HOME").filter(|home| !home.is_empty()).map(PathBuf::from);
        ChainEnvironment { vars, home, sts_endpoint: None, metadata_endpoint: None }
    }

    /// The process environment.
    pub fn process() -> ChainEnvironment {
        ChainEnvironment::capture(&|name| std::env::var(name).ok())
    }

    /// An environment of exactly these variables (a `HOME` among them sets [`Self::home`]).
    pub fn from_vars<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> ChainEnvironment {
        let all: BTreeMap<String, String> = vars.into_iter().map(|(key, value)| (key.into(), value.into())).collect();
        ChainEnvironment::capture(&|name| all.get(name).cloned())
    }

    /// A variable's value, trimmed; `None` when unset or blank.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(|value| value.trim()).filter(|value| !value.is_empty())
    }

    fn flag(&self, name: &str) -> bool {
        self.var(name).is_some_and(|value| value.eq_ignore_ascii_case("true"))
    }

    fn sts_base(&self) -> Result<Url, CredentialError> {
        if let Some(url) = &self.sts_endpoint {
            return Ok(url.clone());
        }
        let text = match self.var("ALIBABA_CLOUD_STS_REGION") {
            Some(region) => {
                let vpc = if self.flag("ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED") { "-vpc" } else { "" };
                format!("https://sts{vpc}.{region}.aliyuncs.com")
            }
            None => STS_URL.to_owned(),
        };
        Url::parse(&text).map_err(|error| {
            CredentialError::Invalid(format!("ALIBABA_CLOUD_STS_REGION gives an invalid STS address: {error}"))
        })
    }

    fn metadata_base(&self) -> Url {
        self.metadata_endpoint
            .clone()
            .unwrap_or_else(|| Url::parse(ECS_METADATA_URL).expect("the metadata service address is a valid URL"))
    }
}

impl std::fmt::Debug for ChainEnvironment {
    /// Variable names only: values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainEnvironment")
            .field("vars_set", &self.vars.keys().collect::<Vec<_>>())
            .field("home", &self.home)
            .field("sts_endpoint", &self.sts_endpoint.as_ref().map(Url::as_str))
            .field("metadata_endpoint", &self.metadata_endpoint.as_ref().map(Url::as_str))
            .finish()
    }
}

/// Why no credentials could be had. Messages name variables, files and profiles, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// A source is configured wrongly, or none is configured at all: fix the setup.
    #[error("{0}")]
    Invalid(String),
    /// The source did not give credentials (network, refusal, expiry): may work later.
    #[error("{0}")]
    Unavailable(String),
}

/// Where credentials will come from, decided by [`plan`] without network access.
#[derive(Debug, Clone)]
pub struct Plan {
    kind: PlanKind,
    /// What was looked at and passed over before the chosen source, for messages.
    skipped: Vec<String>,
}

#[derive(Debug, Clone)]
enum PlanKind {
    Fixed {
        name: String,
        credentials: Arc<Credentials>,
    },
    /// Tried in order at the first fetch; the first that answers is kept.
    Remote(Vec<RemoteSource>),
}

/// A source of temporary credentials.
#[derive(Debug, Clone)]
enum RemoteSource {
    Oidc(remote::OidcSettings),
    EcsRamRole(remote::EcsSettings),
    Uri(Url),
}

impl RemoteSource {
    fn name(&self) -> String {
        match self {
            RemoteSource::Oidc(settings) => format!(
                "OIDC role {} (AssumeRoleWithOIDC at {}, token file {})",
                settings.role_arn,
                remote::shown_url(&settings.sts),
                settings.token_file.display()
            ),
            RemoteSource::EcsRamRole(settings) => format!(
                "ECS RAM role {} (metadata service {})",
                settings.role.as_deref().map_or_else(|| "of this instance".to_owned(), |role| format!("{role:?}")),
                remote::shown_url(&settings.base)
            ),
            RemoteSource::Uri(uri) => format!("credentials URI {}", remote::shown_url(uri)),
        }
    }
}

impl Plan {
    /// Where credentials will come from, for `check-config` and the startup log.
    pub fn describe(&self) -> String {
        match &self.kind {
            PlanKind::Fixed { name, .. } => name.clone(),
            PlanKind::Remote(sources) => {
                let names: Vec<String> = sources.iter().map(RemoteSource::name).collect();
                if names.len() == 1 {
                    format!("{} (fetched at start, refreshed before expiry)", names[0])
                } else {
                    format!("{} (tried in this order at start; the first that answers is kept)", names.join(", else "))
                }
            }
        }
    }

    /// The sources passed over before this one, and why.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
}

/// Decides where credentials come from: `explicit` (the configuration keys) wins, then the
/// default chain over `env`. Reads the credential files but never the network.
pub fn plan(explicit: Option<&Credentials>, env: &ChainEnvironment) -> Result<Plan, CredentialError> {
    let mut skipped = Vec::new();
    if let Some(credentials) = explicit {
        return Ok(Plan {
            kind: fixed("configuration (flink.access_key_id)".to_owned(), credentials.clone()),
            skipped,
        });
    }

    match (env.var("ALIBABA_CLOUD_ACCESS_KEY_ID"), env.var("ALIBABA_CLOUD_ACCESS_KEY_SECRET")) {
        (Some(id), Some(secret)) => {
            let security_token =
                env.var("ALIBABA_CLOUD_SECURITY_TOKEN").map(|token| SecretString::from(token.to_owned()));
            let name = if security_token.is_some() {
                "environment (ALIBABA_CLOUD_ACCESS_KEY_ID with ALIBABA_CLOUD_SECURITY_TOKEN)"
            } else {
                "environment (ALIBABA_CLOUD_ACCESS_KEY_ID)"
            };
            let credentials = Credentials {
                access_key_id: id.to_owned(),
                access_key_secret: SecretString::from(secret.to_owned()),
                security_token,
            };
            return Ok(Plan { kind: fixed(name.to_owned(), credentials), skipped });
        }
        (Some(_), None) => {
            return Err(CredentialError::Invalid(
                "ALIBABA_CLOUD_ACCESS_KEY_ID is set but ALIBABA_CLOUD_ACCESS_KEY_SECRET is not".to_owned(),
            ));
        }
        (None, Some(_)) => {
            return Err(CredentialError::Invalid(
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET is set but ALIBABA_CLOUD_ACCESS_KEY_ID is not".to_owned(),
            ));
        }
        (None, None) => skipped.push("ALIBABA_CLOUD_ACCESS_KEY_ID is not set".to_owned()),
    }

    let oidc_names = ["ALIBABA_CLOUD_OIDC_TOKEN_FILE", "ALIBABA_CLOUD_ROLE_ARN", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN"];
    match oidc_names.map(|name| env.var(name)) {
        [Some(token_file), Some(role_arn), Some(provider_arn)] => {
            let settings = remote::OidcSettings {
                sts: env.sts_base()?,
                token_file: PathBuf::from(token_file),
                role_arn: role_arn.to_owned(),
                provider_arn: provider_arn.to_owned(),
                session_name: session_name(env, None),
            };
            return Ok(Plan { kind: PlanKind::Remote(vec![RemoteSource::Oidc(settings)]), skipped });
        }
        [None, None, None] => skipped.push("ALIBABA_CLOUD_OIDC_TOKEN_FILE is not set".to_owned()),
        values => {
            let missing: Vec<&str> =
                oidc_names.iter().zip(values).filter(|(_, value)| value.is_none()).map(|(name, _)| *name).collect();
            return Err(CredentialError::Invalid(format!(
                "OIDC (RRSA) credentials are partly configured: {} not set",
                missing.join(" and ")
            )));
        }
    }

    let profile = env.var("ALIBABA_CLOUD_PROFILE");
    if env.flag("ALIBABA_CLOUD_CLI_PROFILE_DISABLED") {
        skipped.push("~/.aliyun/config.json is disabled (ALIBABA_CLOUD_CLI_PROFILE_DISABLED=true)".to_owned());
    } else if let Some(path) = env.home.as_ref().map(|home| home.join(".aliyun").join("config.json")) {
        match read_optional(&path)? {
            None => skipped.push(format!("{} does not exist", path.display())),
            Some(text) => {
                let found = files::cli_profile(&text, profile)
                    .map_err(|error| CredentialError::Invalid(format!("{}: {error}", path.display())))?;
                match found {
                    Some(found) => {
                        let name =
                            format!("aliyun CLI profile {:?} ({}, mode {})", found.name, path.display(), found.kind);
                        return Ok(Plan { kind: from_profile(name, found.profile, env)?, skipped });
                    }
                    None => {
                        skipped.push(format!("{} has no profile {:?}", path.display(), profile.unwrap_or("current")))
                    }
                }
            }
        }
    }

    let section = profile.unwrap_or("default");
    let ini_path = match env.var("ALIBABA_CLOUD_CREDENTIALS_FILE") {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.exists() {
                return Err(CredentialError::Invalid(format!(
                    "ALIBABA_CLOUD_CREDENTIALS_FILE names {}, which does not exist",
                    path.display()
                )));
            }
            Some(path)
        }
        None => env.home.as_ref().map(|home| home.join(".alibabacloud").join("credentials.ini")),
    };
    if let Some(path) = ini_path {
        match read_optional(&path)? {
            None => skipped.push(format!("{} does not exist", path.display())),
            Some(text) => {
                let found = files::ini_profile(&text, section)
                    .map_err(|error| CredentialError::Invalid(format!("{}: {error}", path.display())))?;
                match found {
                    Some(found) => {
                        let name = format!(
                            "credentials file section [{}] ({}, type {})",
                            found.name,
                            path.display(),
                            found.kind
                        );
                        return Ok(Plan { kind: from_profile(name, found.profile, env)?, skipped });
                    }
                    None => skipped.push(format!("{} has no section [{section}]", path.display())),
                }
            }
        }
    }

    let mut sources = Vec::new();
    if env.flag("ALIBABA_CLOUD_ECS_METADATA_DISABLED") {
        skipped.push("the ECS metadata service is disabled (ALIBABA_CLOUD_ECS_METADATA_DISABLED=true)".to_owned());
    } else {
        sources.push(RemoteSource::EcsRamRole(ecs_settings(env, env.var("ALIBABA_CLOUD_ECS_METADATA"))));
    }
    match env.var("ALIBABA_CLOUD_CREDENTIALS_URI") {
        Some(text) => sources.push(RemoteSource::Uri(parse_uri(text, "ALIBABA_CLOUD_CREDENTIALS_URI")?)),
        None => skipped.push("ALIBABA_CLOUD_CREDENTIALS_URI is not set".to_owned()),
    }
    if sources.is_empty() {
        return Err(CredentialError::Invalid(format!(
            "no credentials found: set flink.access_key_id and flink.access_key_secret (or its _file form), \
             or one of the Alibaba Cloud default chain's sources ({})",
            skipped.join("; ")
        )));
    }
    Ok(Plan { kind: PlanKind::Remote(sources), skipped })
}

/// Hands out credentials to sign with: fixed ones, or temporary ones refreshed ahead of expiry
/// by a single fetch shared by every caller. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct CredentialProvider {
    inner: Arc<Inner>,
}

enum Inner {
    Fixed { name: String, credentials: Arc<Credentials> },
    Refreshing(cache::Cache),
}

impl CredentialProvider {
    /// Always these credentials.
    pub fn fixed(name: impl Into<String>, credentials: Credentials) -> CredentialProvider {
        CredentialProvider { inner: Arc::new(Inner::Fixed { name: name.into(), credentials: Arc::new(credentials) }) }
    }

    /// The provider for `plan`. Fetches nothing yet. `ca_file` is trusted besides the system roots
    /// by the STS and credentials-URI requests; `clock` times the refreshes.
    pub fn new(
        plan: Plan,
        ca_file: Option<&Path>,
        clock: Arc<dyn Clock>,
    ) -> Result<CredentialProvider, CredentialError> {
        let inner = match plan.kind {
            PlanKind::Fixed { name, credentials } => Inner::Fixed { name, credentials },
            PlanKind::Remote(sources) => {
                let roots = match ca_file {
                    Some(path) => {
                        super::read_ca_bundle(path).map_err(|error| CredentialError::Invalid(format!("{error:#}")))?
                    }
                    None => Vec::new(),
                };
                let clients = remote::Clients::new(&roots).map_err(|error| {
                    CredentialError::Invalid(format!("cannot build the credentials HTTP client: {error}"))
                })?;
                Inner::Refreshing(cache::Cache::new(sources, clients, clock))
            }
        };
        Ok(CredentialProvider { inner: Arc::new(inner) })
    }

    /// [`CredentialProvider::start`] with the `[flink]` settings' explicit keys, captured
    /// environment and CA bundle.
    pub async fn for_settings(
        flink: &super::FlinkSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<CredentialProvider, CredentialError> {
        CredentialProvider::start(
            flink.credentials.as_ref(),
            &flink.credential_chain,
            flink.client.ca_file.as_deref(),
            clock,
        )
        .await
    }

    /// Plans, builds and fetches once, so that a daemon without usable credentials fails at
    /// start with an error naming what it tried.
    pub async fn start(
        explicit: Option<&Credentials>,
        env: &ChainEnvironment,
        ca_file: Option<&Path>,
        clock: Arc<dyn Clock>,
    ) -> Result<CredentialProvider, CredentialError> {
        let plan = plan(explicit, env)?;
        let skipped = plan.skipped().to_vec();
        let provider = CredentialProvider::new(plan, ca_file, clock)?;
        match provider.credentials().await {
            Ok(_) => Ok(provider),
            Err(error) if skipped.is_empty() => Err(error),
            Err(error) => {
                Err(CredentialError::Unavailable(format!("{error} (also looked at: {})", skipped.join("; "))))
            }
        }
    }

    /// The source in use, for logs and `check-config`.
    pub fn name(&self) -> String {
        match &*self.inner {
            Inner::Fixed { name, .. } => name.clone(),
            Inner::Refreshing(cache) => cache.name(),
        }
    }

    /// Whether these are temporary credentials that can be fetched again.
    pub fn refreshes(&self) -> bool {
        matches!(&*self.inner, Inner::Refreshing(_))
    }

    /// Credentials valid now. Fails with [`CredentialError::Unavailable`] once temporary
    /// credentials have expired and could not be refreshed.
    pub async fn credentials(&self) -> Result<Arc<Credentials>, CredentialError> {
        match &*self.inner {
            Inner::Fixed { credentials, .. } => Ok(Arc::clone(credentials)),
            Inner::Refreshing(cache) => cache.get().await,
        }
    }

    /// The API refused `rejected` as an invalid security token: fetch new credentials (once, however
    /// many requests were refused with the same ones) and return them to retry with.
    pub async fn refresh_after_rejection(
        &self,
        rejected: &Arc<Credentials>,
    ) -> Result<Arc<Credentials>, CredentialError> {
        match &*self.inner {
            Inner::Fixed { name, .. } => Err(CredentialError::Invalid(format!("{name} cannot be refreshed"))),
            Inner::Refreshing(cache) => cache.refresh_after_rejection(rejected).await,
        }
    }
}

impl std::fmt::Debug for CredentialProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialProvider").field("source", &self.name()).finish_non_exhaustive()
    }
}

impl From<CredentialSource> for CredentialProvider {
    fn from(source: CredentialSource) -> CredentialProvider {
        CredentialProvider {
            inner: Arc::new(Inner::Fixed { name: source.name.to_owned(), credentials: source.credentials }),
        }
    }
}

fn fixed(name: String, credentials: Credentials) -> PlanKind {
    PlanKind::Fixed { name, credentials: Arc::new(credentials) }
}

fn from_profile(name: String, profile: files::Profile, env: &ChainEnvironment) -> Result<PlanKind, CredentialError> {
    Ok(match profile {
        files::Profile::Static(credentials) => fixed(name, credentials),
        files::Profile::EcsRamRole { role } => {
            PlanKind::Remote(vec![RemoteSource::EcsRamRole(ecs_settings(env, role.as_deref()))])
        }
        files::Profile::Oidc { token_file, role_arn, provider_arn, session_name: profile_session } => {
            PlanKind::Remote(vec![RemoteSource::Oidc(remote::OidcSettings {
                sts: env.sts_base()?,
                token_file,
                role_arn,
                provider_arn,
                session_name: session_name(env, profile_session),
            })])
        }
        files::Profile::Uri(text) => PlanKind::Remote(vec![RemoteSource::Uri(parse_uri(&text, &name)?)]),
    })
}

fn ecs_settings(env: &ChainEnvironment, role: Option<&str>) -> remote::EcsSettings {
    remote::EcsSettings {
        base: env.metadata_base(),
        role: role.map(str::to_owned),
        imdsv1_disabled: env.flag("ALIBABA_CLOUD_IMDSV1_DISABLED"),
    }
}

fn session_name(env: &ChainEnvironment, from_profile: Option<String>) -> String {
    from_profile
        .or_else(|| env.var("ALIBABA_CLOUD_ROLE_SESSION_NAME").map(str::to_owned))
        .unwrap_or_else(|| "flink-ticketd".to_owned())
}

fn parse_uri(text: &str, what: &str) -> Result<Url, CredentialError> {
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(url),
        _ => Err(CredentialError::Invalid(format!("{what}: the credentials URI is not an http or https URL"))),
    }
}

/// The file's text, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, CredentialError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(CredentialError::Invalid(format!("cannot read {}: {error}", path.display()))),
    }
}
