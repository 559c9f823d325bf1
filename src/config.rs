//! Configuration: figment layers the built-in `config/flink-ticketd.toml`, the TOML file and
//! `FLINK_TICKETD_*` environment variables into [`RawConfig`]; [`RawConfig::validate`] then turns
//! it into the typed [`Config`] the rest of the daemon sees, reporting every problem at once.
//! Secrets live in [`SecretString`] so they cannot reach logs or `check-config` output.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::flink::credentials::ChainEnvironment;
use crate::flink::{ClientSettings, Credentials, Endpoints};
use crate::poller::PollSettings;
use crate::redact::{redact_text, redact_url};
use crate::store::StoreSettings;

/// The built-in defaults, documented key by key.
pub const DEFAULTS: &str = include_str!("../config/flink-ticketd.toml");

/// Read when no `--config` is given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/flink-ticketd/config.toml";

/// Prefix of the environment variables that override the files.
pub const ENV_PREFIX: &str = "FLINK_TICKETD_";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file that was read, if any.
    pub source_file: Option<PathBuf>,
    /// `[database]`.
    pub database: StoreSettings,
    /// `[flink]`.
    pub flink: FlinkConfig,
    /// `[poll]`.
    pub poll: PollSettings,
    /// `[webhook]`.
    pub webhook: WebhookConfig,
    /// `shutdown.grace`.
    pub shutdown_grace: Duration,
    /// `[retention]`.
    pub retention: RetentionConfig,
    /// `http.listen`; `None` disables the listener.
    pub http_listen: Option<SocketAddr>,
    /// `[log]`.
    pub log: LogConfig,
}

/// `[flink]`: where and how to call the API.
#[derive(Debug, Clone)]
pub struct FlinkConfig {
    /// Endpoint, timeouts, body cap, CA bundle.
    pub client: ClientSettings,
    /// Credentials from the configuration keys, if given there.
    pub credentials: Option<Credentials>,
    /// What the Alibaba Cloud default credential chain looks at when `credentials` is `None`
    /// (its environment variables and the home directory), captured with the configuration.
    pub credential_chain: ChainEnvironment,
    /// Global request rate limit.
    pub max_requests_per_second: f64,
    /// Global concurrency limit.
    pub max_in_flight: usize,
}

/// `[webhook]`: receivers and their schedule.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Receivers of every finished ticket.
    pub urls: Vec<Url>,
    /// Signing keys (already base64-decoded from `whsec_…`); every one signs.
    pub secrets: Vec<SecretBytes>,
    /// Honour the per-ticket `webhook_url` column.
    pub allow_ticket_urls: bool,
    /// Also honour per-ticket URLs to loopback, link-local, private and shared ranges and the
    /// cloud metadata address (see `crate::webhook::private_address`).
    pub allow_private_ticket_urls: bool,
    /// Delays between attempts: attempt `n` (1-based) that fails waits `schedule[n-1]`; after
    /// attempt `schedule.len() + 1` fails, the delivery is dead.
    pub schedule: Vec<Duration>,
    /// Timeout of one attempt (connecting, sending and reading the answer).
    pub timeout: Duration,
    /// How long a claim holds a delivery; longer than `timeout`. After a crash the delivery is
    /// attempted again once this has passed.
    pub lease: Duration,
    /// Attempts in flight at once, over all receivers.
    pub max_in_flight: usize,
}

/// `[retention]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Age after which finished tickets are deleted.
    pub keep: Duration,
    /// When the clean-up job runs (parsed from a cron expression, seconds first, in UTC).
    pub schedule: cron::Schedule,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Default filter directive.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A webhook signing key, redacted in `Debug`.
#[derive(Clone)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// The key bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The configuration as layered, before validation: strings where the typed config has
/// durations, URLs and secrets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    database: RawDatabase,
    flink: RawFlink,
    poll: RawPoll,
    webhook: RawWebhook,
    shutdown: RawShutdown,
    retention: RawRetention,
    http: RawHttp,
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    path: PathBuf,
    busy_timeout: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlink {
    region: String,
    vpc: bool,
    endpoint: String,
    ca_file: String,
    access_key_id: String,
    access_key_secret: SecretString,
    access_key_secret_file: String,
    security_token: SecretString,
    security_token_file: String,
    max_requests_per_second: f64,
    max_in_flight: i64,
    connect_timeout: String,
    request_timeout: String,
    max_response_bytes: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    initial_interval: String,
    max_interval: String,
    multiplier: f64,
    deadline: String,
    lease: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    urls: Vec<String>,
    secret: OneOrMany,
    secret_file: String,
    allow_ticket_urls: bool,
    allow_private_ticket_urls: bool,
    schedule: Vec<String>,
    timeout: String,
    lease: String,
    max_in_flight: i64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(SecretString),
    Many(Vec<SecretString>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep: String,
    schedule: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: String,
    format: String,
}

/// Why the configuration could not be used: every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// Each problem, naming the key.
    pub problems: Vec<String>,
}

/// Where to look for things outside the files: the environment, and the directories systemd
/// passes. Tests substitute their own.
pub struct Environment<'a> {
    /// Reads one environment variable.
    pub var: &'a dyn Fn(&str) -> Option<String>,
}

impl Environment<'_> {
    /// The process environment.
    pub fn process() -> Environment<'static> {
        Environment { var: &|name| std::env::var(name).ok() }
    }
}

/// Loads and validates the configuration from the built-in defaults, `file` (or the default path
/// when it exists) and the process environment.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    let env = Environment::process();
    let (figment, source_file) = layered(file)?;
    let raw: RawConfig = figment.extract().map_err(|error| ConfigError {
        problems: error.into_iter().map(|error| describe_figment_error(&error)).collect(),
    })?;
    raw.validate(source_file, &env)
}

/// [`load`], plus everything `check-config` looks at beyond the keys themselves: whether the
/// Alibaba Cloud credential chain finds a usable source (read from files and the environment,
/// never from the network). Every problem is reported at once.
pub fn check(file: Option<&Path>) -> Result<Config, ConfigError> {
    let env = Environment::process();
    let (figment, source_file) = layered(file)?;
    let raw: RawConfig = figment.extract().map_err(|error| ConfigError {
        problems: error.into_iter().map(|error| describe_figment_error(&error)).collect(),
    })?;
    let credential_chain = ChainEnvironment::capture(env.var);
    let credentials_problem = |credentials: Option<&Credentials>| {
        crate::flink::credentials::plan(credentials, &credential_chain)
            .err()
            .map(|problem| format!("credentials: {problem}"))
    };
    let keys_name_credentials = !raw.flink.access_key_id.trim().is_empty()
        || !raw.flink.access_key_secret.expose_secret().trim().is_empty()
        || !raw.flink.access_key_secret_file.trim().is_empty();
    match raw.validate(source_file, &env) {
        Ok(config) => match credentials_problem(config.flink.credentials.as_ref()) {
            None => Ok(config),
            Some(problem) => Err(ConfigError { problems: vec![problem] }),
        },
        Err(mut error) => {
            // When the keys name credentials, their problems (if any) are already reported; the
            // default chain is worth checking only when they name none.
            if !keys_name_credentials {
                error.problems.extend(credentials_problem(None));
            }
            Err(error)
        }
    }
}

/// The figment with every layer, and the file it read.
pub fn layered(file: Option<&Path>) -> Result<(Figment, Option<PathBuf>), ConfigError> {
    let file = match file {
        Some(path) => {
            if !path.is_file() {
                return Err(ConfigError {
                    problems: vec![format!("config file {} does not exist or is not a file", path.display())],
                });
            }
            Some(path.to_path_buf())
        }
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|path| path.is_file()),
    };
    let mut figment = Figment::new().merge(Toml::string(DEFAULTS));
    if let Some(path) = &file {
        // Read it ourselves so that an unreadable file is an error, not silently skipped.
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            problems: vec![format!("cannot read config file {}: {error}", path.display())],
        })?;
        figment = figment.merge(Toml::string(&text));
    }
    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]));
    Ok((figment, file))
}

impl RawConfig {
    /// Checks every key and builds the typed configuration, or lists every problem.
    pub fn validate(self, source_file: Option<PathBuf>, env: &Environment<'_>) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut duration = |key: &str, text: &str| match parse_duration(text) {
            Ok(duration) => duration,
            Err(error) => {
                problems.push(format!("{key}: {error}"));
                Duration::ZERO
            }
        };

        let busy_timeout = duration("database.busy_timeout", &self.database.busy_timeout);
        let connect_timeout = duration("flink.connect_timeout", &self.flink.connect_timeout);
        let request_timeout = duration("flink.request_timeout", &self.flink.request_timeout);
        let initial_interval = duration("poll.initial_interval", &self.poll.initial_interval);
        let max_interval = duration("poll.max_interval", &self.poll.max_interval);
        let deadline = duration("poll.deadline", &self.poll.deadline);
        let lease = duration("poll.lease", &self.poll.lease);
        let webhook_timeout = duration("webhook.timeout", &self.webhook.timeout);
        let webhook_lease = duration("webhook.lease", &self.webhook.lease);
        let shutdown_grace = duration("shutdown.grace", &self.shutdown.grace);
        let keep = duration("retention.keep", &self.retention.keep);
        let schedule: Vec<Duration> = self
            .webhook
            .schedule
            .iter()
            .enumerate()
            .map(|(index, text)| duration(&format!("webhook.schedule[{index}]"), text))
            .collect();

        let state_directory = (env.var)("STATE_DIRECTORY")
            .and_then(|dirs| dirs.split(':').next().map(PathBuf::from))
            .filter(|dir| !dir.as_os_str().is_empty());
        let credentials_directory = (env.var)("CREDENTIALS_DIRECTORY").map(PathBuf::from);

        let database_path = if self.database.path.as_os_str().is_empty() {
            problems.push("database.path: must not be empty".to_owned());
            PathBuf::new()
        } else if self.database.path.is_relative() {
            match &state_directory {
                Some(dir) => dir.join(&self.database.path),
                None => self.database.path.clone(),
            }
        } else {
            self.database.path.clone()
        };

        let endpoint = non_empty(&self.flink.endpoint).and_then(|text| match Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
                if url.path() != "/" || url.query().is_some() {
                    problems.push(format!(
                        "flink.endpoint: {text:?} must be scheme, host and optional port only (no path or query)"
                    ));
                }
                Some(url)
            }
            Ok(_) => {
                problems.push(format!("flink.endpoint: {text:?} must be an http or https URL"));
                None
            }
            Err(error) => {
                problems.push(format!("flink.endpoint: {text:?} is not a URL: {error}"));
                None
            }
        });
        if endpoint.is_none() && !crate::flink::endpoint::is_known_region(&self.flink.region) {
            problems.push(format!(
                "flink.region: unknown region {:?}; known regions: {}",
                self.flink.region,
                crate::flink::endpoint::REGIONS.join(", ")
            ));
        }
        let ca_file = non_empty(&self.flink.ca_file).map(PathBuf::from);
        if let Some(path) = &ca_file {
            match std::fs::read(path) {
                Ok(pem) => {
                    if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |certs| certs.is_empty()) {
                        problems.push(format!("flink.ca_file: {} holds no PEM certificate", path.display()));
                    }
                }
                Err(error) => problems.push(format!("flink.ca_file: cannot read {}: {error}", path.display())),
            }
        }

        let mut secret = |key: &str, inline: &SecretString, file_key: &str, file: &str| -> Option<SecretString> {
            let inline = Some(inline.expose_secret().trim()).filter(|value| !value.is_empty());
            match (inline, non_empty(file)) {
                (Some(_), Some(_)) => {
                    problems.push(format!("{key} and {file_key} are both set; set one"));
                    None
                }
                (Some(value), None) => Some(SecretString::from(value.to_owned())),
                (None, Some(path)) => match read_secret_file(path, credentials_directory.as_deref()) {
                    Ok(value) => Some(value),
                    Err(error) => {
                        problems.push(format!("{file_key}: {error}"));
                        None
                    }
                },
                (None, None) => None,
            }
        };
        let access_key_secret = secret(
            "flink.access_key_secret",
            &self.flink.access_key_secret,
            "flink.access_key_secret_file",
            &self.flink.access_key_secret_file,
        );
        let security_token = secret(
            "flink.security_token",
            &self.flink.security_token,
            "flink.security_token_file",
            &self.flink.security_token_file,
        );
        let webhook_inline: Vec<SecretString> = match self.webhook.secret {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
        .into_iter()
        .filter(|secret| !secret.expose_secret().trim().is_empty())
        .collect();
        let mut webhook_secret_texts: Vec<SecretString> = webhook_inline;
        if let Some(path) = non_empty(&self.webhook.secret_file) {
            if !webhook_secret_texts.is_empty() {
                problems.push("webhook.secret and webhook.secret_file are both set; set one".to_owned());
            }
            match read_secret_file(path, credentials_directory.as_deref()) {
                // A secret file may hold several secrets, one per line, for rotation.
                Ok(text) => webhook_secret_texts.extend(
                    text.expose_secret()
                        .lines()
                        .map(str::trim)
                        .filter(|line| !line.is_empty())
                        .map(|line| SecretString::from(line.to_owned())),
                ),
                Err(error) => problems.push(format!("webhook.secret_file: {error}")),
            }
        }

        let access_key_id = self.flink.access_key_id.trim().to_owned();
        let credentials = match (access_key_id.is_empty(), access_key_secret) {
            (false, Some(access_key_secret)) => Some(Credentials { access_key_id, access_key_secret, security_token }),
            (false, None) => {
                problems.push(
                    "flink.access_key_id is set but neither flink.access_key_secret nor flink.access_key_secret_file is"
                        .to_owned(),
                );
                None
            }
            (true, Some(_)) => {
                problems.push("flink.access_key_secret is set but flink.access_key_id is not".to_owned());
                None
            }
            (true, None) => None,
        };

        if !(self.flink.max_requests_per_second.is_finite()
            && (MIN_REQUESTS_PER_SECOND..=MAX_REQUESTS_PER_SECOND).contains(&self.flink.max_requests_per_second))
        {
            problems.push(format!(
                "flink.max_requests_per_second: must be between {MIN_REQUESTS_PER_SECOND} and \
                 {MAX_REQUESTS_PER_SECOND}, not {}",
                self.flink.max_requests_per_second
            ));
        }
        let max_in_flight = positive(&mut problems, "flink.max_in_flight", self.flink.max_in_flight);
        let max_response_bytes = positive(&mut problems, "flink.max_response_bytes", self.flink.max_response_bytes);
        let webhook_max_in_flight = positive(&mut problems, "webhook.max_in_flight", self.webhook.max_in_flight);
        for (key, value) in [("flink.max_in_flight", max_in_flight), ("webhook.max_in_flight", webhook_max_in_flight)] {
            if value > MAX_IN_FLIGHT {
                problems.push(format!("{key}: must be at most {MAX_IN_FLIGHT}, not {value}"));
            }
        }
        if busy_timeout > MAX_BUSY_TIMEOUT {
            problems.push(format!(
                "database.busy_timeout: must be at most {}, not {}",
                format_duration(MAX_BUSY_TIMEOUT),
                format_duration(busy_timeout)
            ));
        }
        if !(self.poll.multiplier.is_finite() && self.poll.multiplier >= 1.0) {
            problems.push(format!("poll.multiplier: must be at least 1.0, not {}", self.poll.multiplier));
        }
        if initial_interval.is_zero() {
            problems.push("poll.initial_interval: must be more than zero".to_owned());
        }
        if max_interval < initial_interval {
            problems.push("poll.max_interval: must not be shorter than poll.initial_interval".to_owned());
        }
        if deadline.is_zero() {
            problems.push("poll.deadline: must be more than zero".to_owned());
        }
        if lease <= connect_timeout + request_timeout {
            problems.push(format!(
                "poll.lease: must be longer than flink.connect_timeout + flink.request_timeout ({})",
                format_duration(connect_timeout + request_timeout)
            ));
        }
        if request_timeout.is_zero() || connect_timeout.is_zero() {
            problems.push("flink.connect_timeout and flink.request_timeout must be more than zero".to_owned());
        }
        if webhook_timeout.is_zero() {
            problems.push("webhook.timeout: must be more than zero".to_owned());
        }
        if webhook_lease <= webhook_timeout {
            problems.push(format!(
                "webhook.lease: must be longer than webhook.timeout ({})",
                format_duration(webhook_timeout)
            ));
        }

        let urls: Vec<Url> = self
            .webhook
            .urls
            .iter()
            .enumerate()
            .filter_map(|(index, text)| match parse_webhook_url(text) {
                Ok(url) => Some(url),
                Err(error) => {
                    problems.push(format!("webhook.urls[{index}]: {error}"));
                    None
                }
            })
            .collect();
        let secrets: Vec<SecretBytes> = webhook_secret_texts
            .iter()
            .enumerate()
            .filter_map(|(index, secret)| match decode_webhook_secret(secret.expose_secret()) {
                Ok(key) => Some(key),
                Err(error) => {
                    problems.push(format!("webhook.secret[{index}]: {error}"));
                    None
                }
            })
            .collect();
        if secrets.is_empty() && (!urls.is_empty() || self.webhook.allow_ticket_urls) && problems.is_empty() {
            problems.push("webhook.secret: receivers are configured but no signing secret is".to_owned());
        }

        let retention_schedule = match crate::retention::parse_schedule(&self.retention.schedule) {
            Ok(schedule) => schedule,
            Err(error) => {
                problems.push(format!("retention.schedule: {error}"));
                "0 17 3 * * *".parse().expect("a valid fixed cron expression")
            }
        };
        if keep.is_zero() {
            problems.push("retention.keep: must be more than zero".to_owned());
        }
        let http_listen = match non_empty(&self.http.listen) {
            None => None,
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(address) => Some(address),
                Err(_) => {
                    problems.push(format!("http.listen: {text:?} is not an address such as 127.0.0.1:9187"));
                    None
                }
            },
        };
        let format = match self.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                problems.push(format!("log.format: {other:?} is not \"text\" or \"json\""));
                LogFormat::Text
            }
        };
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!("log.level: {:?} is not a valid level or filter: {error}", self.log.level));
        }

        let config = Config {
            source_file,
            database: StoreSettings { path: database_path, busy_timeout, max_readers: 4 },
            flink: FlinkConfig {
                client: ClientSettings {
                    endpoints: Endpoints { override_url: endpoint, region: self.flink.region, vpc: self.flink.vpc },
                    connect_timeout,
                    request_timeout,
                    max_response_bytes,
                    ca_file,
                },
                credentials,
                credential_chain: ChainEnvironment::capture(env.var),
                max_requests_per_second: self.flink.max_requests_per_second,
                max_in_flight,
            },
            poll: PollSettings { initial_interval, max_interval, multiplier: self.poll.multiplier, deadline, lease },
            webhook: WebhookConfig {
                urls,
                secrets,
                allow_ticket_urls: self.webhook.allow_ticket_urls,
                allow_private_ticket_urls: self.webhook.allow_private_ticket_urls,
                schedule,
                timeout: webhook_timeout,
                lease: webhook_lease,
                max_in_flight: webhook_max_in_flight,
            },
            shutdown_grace,
            retention: RetentionConfig { keep, schedule: retention_schedule },
            http_listen,
            log: LogConfig { level: self.log.level, format },
        };
        if problems.is_empty() { Ok(config) } else { Err(ConfigError { problems }) }
    }
}

impl Config {
    /// The effective configuration as TOML-like lines, secrets shown only as `[redacted]`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let duration = |value: Duration| format!("{:?}", format_duration(value));
        let redacted = |set: bool| if set { "\"[redacted]\"" } else { "\"\"" };
        let endpoints = &self.flink.client.endpoints;
        let _ = writeln!(
            out,
            "# source: built-in defaults{}, then {ENV_PREFIX}* environment variables",
            self.source_file.as_ref().map(|path| format!(", then {}", path.display())).unwrap_or_default()
        );
        let _ = writeln!(out, "[database]\npath = {:?}", self.database.path.display().to_string());
        let _ = writeln!(out, "busy_timeout = {}", duration(self.database.busy_timeout));
        let _ = writeln!(out, "\n[flink]\nregion = {:?}\nvpc = {}", endpoints.region, endpoints.vpc);
        let _ = writeln!(out, "endpoint = {:?}", endpoints.override_url.as_ref().map(redact_url).unwrap_or_default());
        let _ = writeln!(
            out,
            "ca_file = {:?}",
            self.flink.client.ca_file.as_ref().map(|path| path.display().to_string()).unwrap_or_default()
        );
        let credentials = self.flink.credentials.as_ref();
        let _ = writeln!(
            out,
            "access_key_id = {:?}",
            credentials.map(|credentials| credentials.access_key_id.as_str()).unwrap_or("")
        );
        let _ = writeln!(out, "access_key_secret = {}", redacted(credentials.is_some()));
        let _ = writeln!(
            out,
            "security_token = {}",
            redacted(credentials.is_some_and(|credentials| credentials.security_token.is_some()))
        );
        let _ = writeln!(out, "max_requests_per_second = {}", self.flink.max_requests_per_second);
        let _ = writeln!(out, "max_in_flight = {}", self.flink.max_in_flight);
        let _ = writeln!(out, "connect_timeout = {}", duration(self.flink.client.connect_timeout));
        let _ = writeln!(out, "request_timeout = {}", duration(self.flink.client.request_timeout));
        let _ = writeln!(out, "max_response_bytes = {}", self.flink.client.max_response_bytes);
        let poll = &self.poll;
        let _ = writeln!(out, "\n[poll]\ninitial_interval = {}", duration(poll.initial_interval));
        let _ = writeln!(out, "max_interval = {}\nmultiplier = {}", duration(poll.max_interval), poll.multiplier);
        let _ = writeln!(out, "deadline = {}\nlease = {}", duration(poll.deadline), duration(poll.lease));
        let webhook = &self.webhook;
        let urls: Vec<String> = webhook.urls.iter().map(|url| format!("{:?}", redact_url(url))).collect();
        let _ = writeln!(out, "\n[webhook]\nurls = [{}]", urls.join(", "));
        let _ = writeln!(out, "secret = [{}]", vec!["\"[redacted]\""; webhook.secrets.len()].join(", "));
        let _ = writeln!(out, "allow_ticket_urls = {}", webhook.allow_ticket_urls);
        let _ = writeln!(out, "allow_private_ticket_urls = {}", webhook.allow_private_ticket_urls);
        let schedule: Vec<String> = webhook.schedule.iter().map(|delay| duration(*delay)).collect();
        let _ = writeln!(out, "schedule = [{}]", schedule.join(", "));
        let _ = writeln!(out, "timeout = {}\nlease = {}", duration(webhook.timeout), duration(webhook.lease));
        let _ = writeln!(out, "max_in_flight = {}", webhook.max_in_flight);
        let _ = writeln!(out, "\n[shutdown]\ngrace = {}", duration(self.shutdown_grace));
        let _ = writeln!(
            out,
            "\n[retention]\nkeep = {}\nschedule = {:?}",
            duration(self.retention.keep),
            self.retention.schedule.source()
        );
        let _ = writeln!(
            out,
            "\n[http]\nlisten = {:?}",
            self.http_listen.map(|address| address.to_string()).unwrap_or_default()
        );
        let format = match self.log.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        let _ = writeln!(out, "\n[log]\nlevel = {:?}\nformat = {format:?}", self.log.level);
        out
    }
}

/// Least `flink.max_requests_per_second`: one request every 100 seconds. Slower rates would make
/// the limiter's intervals (16 times longer while throttled, times the burst) meaningless.
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.01;

/// Most `flink.max_requests_per_second`.
pub const MAX_REQUESTS_PER_SECOND: f64 = 1_000_000.0;

/// Most `flink.max_in_flight` and `webhook.max_in_flight`: far above what one process can use,
/// far below what a semaphore or a `u32` holds.
pub const MAX_IN_FLIGHT: usize = 100_000;

/// Longest `database.busy_timeout` (SQLite takes it in `i32` milliseconds, about 24 days; a
/// writer waiting longer than an hour is stuck, not busy).
pub const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(3600);

/// The longest duration any key accepts (100 years). Bounding it keeps every sum and multiple
/// the daemon derives from durations (lease checks, backoff caps, deadlines) far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"30d"` and sums such as `"1h30m"`; `"0"` is zero.
/// At most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    if trimmed.is_empty() {
        return Err("empty duration; write e.g. \"30s\"".to_owned());
    }
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration; write e.g. \"500ms\", \"30s\", \"5m\", \"2h\""))?;
        let unit_secs = match unit.trim() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "" => return Err(format!("{text:?} has a number without a unit (ms, s, m, h, d)")),
            other => return Err(format!("{text:?} has an unknown unit {other:?}; use ms, s, m, h or d")),
        };
        let part = Duration::try_from_secs_f64(value * unit_secs)
            .ok()
            .filter(|part| *part <= MAX_DURATION)
            .ok_or_else(|| format!("{text:?} is longer than 100 years (36500d)"))?;
        total = total.saturating_add(part);
        if total > MAX_DURATION {
            return Err(format!("{text:?} is longer than 100 years (36500d)"));
        }
        rest = tail.trim_start();
    }
    Ok(total)
}

/// Renders a duration in the config syntax, exactly (`"1h30m"`, `"1500ms"`).
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    if millis % 1000 != 0 {
        return format!("{millis}ms");
    }
    let mut secs = millis / 1000;
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            let _ = write!(out, "{}{unit}", secs / size);
            secs %= size;
        }
    }
    out
}

/// Longest receiver URL, in characters, as stored in `webhook_deliveries.url` (its `CHECK`) and
/// sent: the normalised, percent-encoded form, which may be several times longer than the text
/// a user wrote.
pub const MAX_WEBHOOK_URL_CHARS: usize = 2048;

/// Checks a receiver URL: http or https, with a host, at most [`MAX_WEBHOOK_URL_CHARS`] once
/// normalised (percent-encoded, IDNA host).
pub fn parse_webhook_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|error| format!("{:?} is not a URL: {error}", redact_text(text)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{:?} must use http or https", redact_text(text)));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{:?} has no host", redact_text(text)));
    }
    let normalised = url.as_str().chars().count();
    if normalised > MAX_WEBHOOK_URL_CHARS {
        return Err(format!(
            "the URL is {normalised} characters once percent-encoded; at most {MAX_WEBHOOK_URL_CHARS} are allowed"
        ));
    }
    Ok(url)
}

/// Decodes a Standard Webhooks secret: `whsec_` followed by base64 of 24 to 64 bytes.
pub fn decode_webhook_secret(text: &str) -> Result<SecretBytes, String> {
    use base64::Engine as _;
    let Some(encoded) = text.trim().strip_prefix("whsec_") else {
        return Err("must start with \"whsec_\" followed by base64".to_owned());
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "the part after \"whsec_\" is not valid base64".to_owned())?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!("decodes to {} bytes; Standard Webhooks secrets have 24 to 64", key.len()));
    }
    Ok(SecretBytes(key))
}

fn read_secret_file(path: &str, credentials_directory: Option<&Path>) -> Result<SecretString, String> {
    let path = Path::new(path);
    let path = match credentials_directory {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|error| format!("cannot read secret file {}: {error}", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(SecretString::from(text.to_owned()))
}

fn non_empty(text: &str) -> Option<&str> {
    Some(text.trim()).filter(|text| !text.is_empty())
}

fn positive(problems: &mut Vec<String>, key: &str, value: i64) -> usize {
    match usize::try_from(value) {
        Ok(value) if value > 0 => value,
        _ => {
            problems.push(format!("{key}: must be a positive whole number, not {value}"));
            1
        }
    }
}

fn describe_figment_error(error: &figment::Error) -> String {
    let key = if error.path.is_empty() { String::new() } else { format!("{}: ", error.path.join(".")) };
    let origin = error.metadata.as_ref().map(|metadata| format!(" (from {})", metadata.name)).unwrap_or_default();
    format!("{key}{}{origin}", error.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(toml: &str, vars: &'static [(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let var = move |name: &str| vars.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned());
        let env = Environment { var: &var };
        let raw: RawConfig =
            Figment::new().merge(Toml::string(DEFAULTS)).merge(Toml::string(toml)).extract().map_err(|error| {
                ConfigError { problems: error.into_iter().map(|error| describe_figment_error(&error)).collect() }
            })?;
        raw.validate(None, &env)
    }

    #[test]
    fn built_in_defaults_are_valid() {
        let config = validate("", &[]).expect("defaults validate");
        assert_eq!(config.poll.initial_interval, Duration::from_secs(2));
        assert_eq!(config.webhook.schedule.len(), 9);
        assert_eq!(config.http_listen, Some("127.0.0.1:9187".parse().unwrap()));
    }

    #[test]
    fn durations_beyond_a_century_are_refused_so_derived_times_cannot_overflow() {
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        for text in ["36501d", "200000000000000d", "1e30s", "36500d1ms", "18446744073709551615s"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        let error =
            validate("[flink]\nconnect_timeout = \"150000000000000d\"\nrequest_timeout = \"150000000000000d\"\n", &[])
                .expect_err("refused");
        assert!(error.problems.iter().any(|problem| problem.starts_with("flink.connect_timeout")), "{error}");
    }

    #[test]
    fn durations_parse_in_every_unit_and_sum() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("30").unwrap_err().contains("without a unit"));
        assert!(parse_duration("3 weeks").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let error = validate(
            r#"
            [poll]
            initial_interval = "soon"
            multiplier = 0.5
            [webhook]
            urls = ["ftp://example.com/hook", "not a url"]
            secret = "sekrit"
            [http]
            listen = "everywhere"
            [retention]
            schedule = "daily"
            "#,
            &[],
        )
        .unwrap_err();
        let text = error.to_string();
        for needle in [
            "poll.initial_interval",
            "poll.multiplier",
            "webhook.urls[0]",
            "webhook.urls[1]",
            "webhook.secret[0]",
            "http.listen",
            "retention.schedule",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("sekrit"), "a secret leaked into:\n{text}");
    }

    #[test]
    fn a_receiver_url_is_measured_once_percent_encoded() {
        let raw = format!("https://hooks.example.com/{}", "部署".repeat(150));
        assert!(raw.chars().count() < MAX_WEBHOOK_URL_CHARS);
        let error = validate(
            &format!("[webhook]\nurls = [{raw:?}]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"),
            &[],
        )
        .expect_err("refused");
        assert!(
            error.to_string().contains("webhook.urls[0]: the URL is 2726 characters once percent-encoded"),
            "{error}"
        );
        let fits = format!("https://hooks.example.com/{}", "部".repeat(200));
        assert!(parse_webhook_url(&fits).is_ok());
    }

    #[test]
    fn values_that_would_break_the_daemon_are_refused_with_the_key_and_the_limit() {
        let cases = [
            ("[database]\nbusy_timeout = \"30d\"\n", "database.busy_timeout: must be at most 1h"),
            ("[flink]\nmax_requests_per_second = 1e-300\n", "flink.max_requests_per_second: must be between 0.01"),
            ("[flink]\nmax_requests_per_second = 1e300\n", "flink.max_requests_per_second: must be between"),
            ("[flink]\nmax_in_flight = 9223372036854775807\n", "flink.max_in_flight: must be at most 100000"),
            ("[webhook]\nmax_in_flight = 9223372036854775807\n", "webhook.max_in_flight: must be at most 100000"),
        ];
        for (toml, expected) in cases {
            let error = validate(toml, &[]).expect_err(toml);
            assert!(error.to_string().contains(expected), "{toml}: {error}");
        }
    }

    #[tokio::test]
    async fn the_most_extreme_values_validation_accepts_run_without_panicking() {
        let config = validate(
            "[database]\nbusy_timeout = \"1h\"\n[flink]\nmax_requests_per_second = 0.01\nmax_in_flight = 100000\n\
             [webhook]\nmax_in_flight = 100000\n",
            &[],
        )
        .expect("the bounds themselves are valid");
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings { path: dir.path().join("t.db"), ..config.database.clone() };
        crate::store::Store::open(&settings).await.expect("the store opens").close().await;
        let _ = tokio::sync::Semaphore::new(config.flink.max_in_flight.max(config.webhook.max_in_flight));
        let limiter = crate::ratelimit::RateLimiter::new(
            config.flink.max_requests_per_second,
            u32::try_from(config.flink.max_in_flight).unwrap(),
        );
        for _ in 0..4 {
            limiter.slow_down();
            limiter.acquire().await;
        }
        assert!(limiter.current_rate() > 0.0);
    }

    #[test]
    fn urls_are_shown_without_user_information_query_values_fragments_or_path_tokens() {
        let shown = |text: &str| redact_url(&Url::parse(text).unwrap());
        assert_eq!(shown("https://user:pw@hooks.example.com/x"), "https://***@hooks.example.com/x");
        assert_eq!(shown("https://h.example/x?token=abc&v=1#frag"), "https://h.example/x?token=***&v=***");
        assert_eq!(
            shown("https://hooks.slack.com/services/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"),
            "https://hooks.slack.com/services/T0000AAAA/B0000BBBB/***"
        );
        assert_eq!(
            shown("https://discord.com/api/webhooks/123/aB3dE6gH9jK2mN5pQ8"),
            "https://discord.com/api/webhooks/123/***"
        );
        assert_eq!(shown("http://127.0.0.1:9/hook/flink-events"), "http://127.0.0.1:9/hook/flink-events");
        assert_eq!(redact_text("not a url user:pw@host?x=1"), "not a url user:pw***");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = validate("[poll]\nintial_interval = \"2s\"\n", &[]).unwrap_err();
        assert!(error.to_string().contains("intial_interval"), "{error}");
    }

    #[test]
    fn secrets_come_from_files_under_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ak"), "file-secret\n").unwrap();
        let dir_text: &'static str = Box::leak(dir.path().display().to_string().into_boxed_str());
        let vars: &'static [(&'static str, &'static str)] = Box::leak(Box::new([("CREDENTIALS_DIRECTORY", dir_text)]));
        let config =
            validate("[flink]\naccess_key_id = \"AKID\"\naccess_key_secret_file = \"ak\"\n", vars).expect("valid");
        let credentials = config.flink.credentials.expect("credentials from the file");
        assert_eq!(credentials.access_key_secret.expose_secret(), "file-secret");
        assert!(!format!("{credentials:?}").contains("file-secret"));
        assert!(!config_description_contains("file-secret", vars));
    }

    fn config_description_contains(needle: &str, vars: &'static [(&'static str, &'static str)]) -> bool {
        let config =
            validate("[flink]\naccess_key_id = \"AKID\"\naccess_key_secret_file = \"ak\"\n", vars).expect("valid");
        config.describe().contains(needle) || format!("{config:?}").contains(needle)
    }

    #[test]
    fn relative_database_path_goes_under_the_state_directory() {
        let config = validate("", &[("STATE_DIRECTORY", "/var/lib/flink-ticketd")]).unwrap();
        assert_eq!(config.database.path, Path::new("/var/lib/flink-ticketd/flink-ticketd.db"));
    }

    #[test]
    fn webhook_secret_may_be_a_list_and_must_be_whsec() {
        let config = validate(
            r#"
            [webhook]
            urls = ["https://hooks.example.com/flink"]
            secret = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(config.webhook.secrets.len(), 2);
        assert!(decode_webhook_secret("whsec_!!!").is_err());
        assert!(decode_webhook_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
    }
}
