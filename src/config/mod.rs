//! Configuration, read once at the top: figment layers the built-in `config/flink-ticketd.toml`,
//! the TOML file and `FLINK_TICKETD_*` environment variables into [`RawConfig`];
//! [`RawConfig::validate`] then checks each section and builds the settings types of the modules
//! that use them ([`StoreSettings`], [`FlinkSettings`], [`WebhookSettings`], [`RetentionSettings`],
//! [`LogSettings`]), reporting every problem at once. Only the entry points (`main`, `cli`, the
//! daemon's wiring, `demo`) read this module; everything below them gets its own settings.
//! Secrets live in [`SecretString`] so they cannot reach logs or `check-config` output.

mod database;
mod layers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use self::layers::{OneOrMany, RawFlink, RawHttp, RawLog, RawPoll, RawRetention, RawWebhook, describe_figment_error};
pub use self::layers::{RawConfig, layered};
use crate::duration::{format_duration, parse_duration};
use crate::flink::credentials::ChainEnvironment;
use crate::flink::{ClientSettings, Credentials, Endpoints, FlinkSettings};
use crate::http::{BasicAuth, UiSettings};
use crate::poller::PollSettings;
use crate::retention::RetentionSettings;
use crate::store::Database;
#[cfg(test)]
use crate::store::StoreSettings;
use crate::telemetry::{LogFormat, LogSettings};
use crate::webhook::{SecretBytes, WebhookSettings, decode_webhook_secret, parse_webhook_url};

/// The built-in defaults, documented key by key.
pub const DEFAULTS: &str = include_str!("../../config/flink-ticketd.toml");

/// Read when no `--config` is given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/flink-ticketd/config.toml";

/// Prefix of the environment variables that override the files.
pub const ENV_PREFIX: &str = "FLINK_TICKETD_";

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

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file that was read, if any.
    pub source_file: Option<PathBuf>,
    /// `[database]`.
    pub database: Database,
    /// `[flink]`.
    pub flink: FlinkSettings,
    /// `[poll]`.
    pub poll: PollSettings,
    /// `[webhook]`.
    pub webhook: WebhookSettings,
    /// `shutdown.grace`.
    pub shutdown_grace: Duration,
    /// `[retention]`.
    pub retention: RetentionSettings,
    /// `http.listen`; `None` disables the listener.
    pub http_listen: Option<SocketAddr>,
    /// `http.ui`, `http.ui_auth_file`: the operator pages.
    pub ui: UiSettings,
    /// `[log]`.
    pub log: LogSettings,
}

/// Why the configuration could not be used: every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// Each problem, naming the key.
    pub problems: Vec<String>,
}

/// Why a `*_file` key's secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file could not be read.
    #[error("cannot read secret file {}: {source}", .path.display())]
    Read {
        /// The file, under `CREDENTIALS_DIRECTORY` when relative.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The file holds only whitespace.
    #[error("secret file {} is empty", .0.display())]
    Empty(PathBuf),
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

impl RawConfig {
    /// Checks every key and builds the typed configuration, or lists every problem. Each section
    /// is checked by its own function below, in the order of the file.
    pub fn validate(self, source_file: Option<PathBuf>, env: &Environment<'_>) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let directories = Directories::from_env(env);
        let database = database::database(&self.database, &directories, &mut problems);
        let flink = flink(self.flink, &directories, env, &mut problems);
        let poll = poll(&self.poll, &flink.client, &mut problems);
        let webhook = webhook(self.webhook, &directories, &mut problems);
        let shutdown_grace = problems.duration("shutdown.grace", &self.shutdown.grace);
        let retention = retention(&self.retention, &mut problems);
        let http_listen = http_listen(&self.http, &mut problems);
        let ui = ui(&self.http, &directories, &mut problems);
        let log = log(self.log, &mut problems);
        let config =
            Config { source_file, database, flink, poll, webhook, shutdown_grace, retention, http_listen, ui, log };
        if problems.0.is_empty() { Ok(config) } else { Err(ConfigError { problems: problems.0 }) }
    }
}

impl Config {
    /// The effective configuration as TOML-like lines, secrets shown only as `[redacted]`. Each
    /// section's settings type renders itself; the sections without one are rendered here.
    pub fn describe(&self) -> String {
        let duration = |value: Duration| format!("{:?}", format_duration(value));
        let poll = &self.poll;
        let sections = [
            database::describe(&self.database),
            self.flink.describe(),
            format!(
                "[poll]\ninitial_interval = {}\nmax_interval = {}\nmultiplier = {}\ndeadline = {}\nlease = {}\nadaptive = {}\ntarget_lag = {}\n",
                duration(poll.initial_interval),
                duration(poll.max_interval),
                poll.multiplier,
                duration(poll.deadline),
                duration(poll.lease),
                poll.adaptive,
                poll.target_lag
            ),
            self.webhook.describe(),
            format!("[shutdown]\ngrace = {}\n", duration(self.shutdown_grace)),
            self.retention.describe(),
            format!(
                "[http]\nlisten = {:?}\nui = {}\nui_auth_file = {:?}\n",
                self.http_listen.map(|address| address.to_string()).unwrap_or_default(),
                self.ui.enabled,
                self.ui.auth_file.as_ref().map(|path| path.display().to_string()).unwrap_or_default()
            ),
            self.log.describe(),
        ];
        format!(
            "# source: built-in defaults{}, then {ENV_PREFIX}* environment variables\n{}",
            self.source_file.as_ref().map(|path| format!(", then {}", path.display())).unwrap_or_default(),
            sections.join("\n")
        )
    }
}

/// Every problem found so far, each naming its key.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The duration `text` of `key`, or zero with a problem noted.
    fn duration(&mut self, key: &str, text: &str) -> Duration {
        parse_duration(text).unwrap_or_else(|error| {
            self.push(format!("{key}: {error}"));
            Duration::ZERO
        })
    }

    /// `value` of `key` as a positive count, or 1 with a problem noted.
    fn positive(&mut self, key: &str, value: i64) -> usize {
        match usize::try_from(value) {
            Ok(value) if value > 0 => value,
            _ => {
                self.push(format!("{key}: must be a positive whole number, not {value}"));
                1
            }
        }
    }

    /// A secret given inline (`key`) or in a file (`file_key`), at most one of them.
    fn secret(
        &mut self,
        (key, inline): (&str, &SecretString),
        (file_key, file): (&str, &str),
        directories: &Directories,
    ) -> Option<SecretString> {
        let inline = Some(inline.expose_secret().trim()).filter(|value| !value.is_empty());
        match (inline, non_empty(file)) {
            (Some(_), Some(_)) => {
                self.push(format!("{key} and {file_key} are both set; set one"));
                None
            }
            (Some(value), None) => Some(SecretString::from(value.to_owned())),
            (None, Some(path)) => match read_secret_file(path, directories.credentials.as_deref()) {
                Ok(value) => Some(value),
                Err(error) => {
                    self.push(format!("{file_key}: {error}"));
                    None
                }
            },
            (None, None) => None,
        }
    }
}

/// The directories systemd passes: `STATE_DIRECTORY` (relative database paths go there) and
/// `CREDENTIALS_DIRECTORY` (relative `*_file` keys are read there).
struct Directories {
    state: Option<PathBuf>,
    credentials: Option<PathBuf>,
}

impl Directories {
    fn from_env(env: &Environment<'_>) -> Directories {
        let state = (env.var)("STATE_DIRECTORY")
            .and_then(|dirs| dirs.split(':').next().map(PathBuf::from))
            .filter(|dir| !dir.as_os_str().is_empty());
        let credentials = (env.var)("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Directories { state, credentials }
    }
}

/// `[flink]`: endpoint or region, CA bundle, credentials from the keys, limits and timeouts.
fn flink(raw: RawFlink, directories: &Directories, env: &Environment<'_>, problems: &mut Problems) -> FlinkSettings {
    let connect_timeout = problems.duration("flink.connect_timeout", &raw.connect_timeout);
    let request_timeout = problems.duration("flink.request_timeout", &raw.request_timeout);
    let endpoint = flink_endpoint(&raw.endpoint, problems);
    if endpoint.is_none() && !crate::flink::endpoint::is_known_region(&raw.region) {
        problems.push(format!(
            "flink.region: unknown region {:?}; known regions: {}",
            raw.region,
            crate::flink::endpoint::REGIONS.join(", ")
        ));
    }
    let ca_file = non_empty(&raw.ca_file).map(PathBuf::from);
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
    let credentials = flink_credentials(&raw, directories, problems);
    if !(raw.max_requests_per_second.is_finite()
        && (MIN_REQUESTS_PER_SECOND..=MAX_REQUESTS_PER_SECOND).contains(&raw.max_requests_per_second))
    {
        problems.push(format!(
            "flink.max_requests_per_second: must be between {MIN_REQUESTS_PER_SECOND} and \
             {MAX_REQUESTS_PER_SECOND}, not {}",
            raw.max_requests_per_second
        ));
    }
    let max_in_flight = in_flight(problems, "flink.max_in_flight", raw.max_in_flight);
    let max_response_bytes = problems.positive("flink.max_response_bytes", raw.max_response_bytes);
    if request_timeout.is_zero() || connect_timeout.is_zero() {
        problems.push("flink.connect_timeout and flink.request_timeout must be more than zero");
    }
    FlinkSettings {
        client: ClientSettings {
            endpoints: Endpoints { override_url: endpoint, region: raw.region, vpc: raw.vpc },
            connect_timeout,
            request_timeout,
            max_response_bytes,
            ca_file,
        },
        credentials,
        credential_chain: ChainEnvironment::capture(env.var),
        max_requests_per_second: raw.max_requests_per_second,
        max_in_flight,
    }
}

/// `flink.endpoint`: empty, or scheme, host and optional port.
fn flink_endpoint(text: &str, problems: &mut Problems) -> Option<Url> {
    let text = non_empty(text)?;
    match Url::parse(text) {
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
    }
}

/// `flink.access_key_*` and `flink.security_token*`: both halves of a key pair, or neither.
fn flink_credentials(raw: &RawFlink, directories: &Directories, problems: &mut Problems) -> Option<Credentials> {
    let access_key_secret = problems.secret(
        ("flink.access_key_secret", &raw.access_key_secret),
        ("flink.access_key_secret_file", &raw.access_key_secret_file),
        directories,
    );
    let security_token = problems.secret(
        ("flink.security_token", &raw.security_token),
        ("flink.security_token_file", &raw.security_token_file),
        directories,
    );
    let access_key_id = raw.access_key_id.trim().to_owned();
    match (access_key_id.is_empty(), access_key_secret) {
        (false, Some(access_key_secret)) => Some(Credentials { access_key_id, access_key_secret, security_token }),
        (false, None) => {
            problems.push(
                "flink.access_key_id is set but neither flink.access_key_secret nor flink.access_key_secret_file is",
            );
            None
        }
        (true, Some(_)) => {
            problems.push("flink.access_key_secret is set but flink.access_key_id is not");
            None
        }
        (true, None) => None,
    }
}

/// `[poll]`: the schedule, and a lease longer than one request can take.
fn poll(raw: &RawPoll, client: &ClientSettings, problems: &mut Problems) -> PollSettings {
    let initial_interval = problems.duration("poll.initial_interval", &raw.initial_interval);
    let max_interval = problems.duration("poll.max_interval", &raw.max_interval);
    let deadline = problems.duration("poll.deadline", &raw.deadline);
    let lease = problems.duration("poll.lease", &raw.lease);
    if !(raw.multiplier.is_finite() && raw.multiplier >= 1.0) {
        problems.push(format!("poll.multiplier: must be at least 1.0, not {}", raw.multiplier));
    }
    if initial_interval.is_zero() {
        problems.push("poll.initial_interval: must be more than zero");
    }
    if max_interval < initial_interval {
        problems.push("poll.max_interval: must not be shorter than poll.initial_interval");
    }
    if deadline.is_zero() {
        problems.push("poll.deadline: must be more than zero");
    }
    let request = client.connect_timeout + client.request_timeout;
    if lease <= request {
        problems.push(format!(
            "poll.lease: must be longer than flink.connect_timeout + flink.request_timeout ({})",
            format_duration(request)
        ));
    }
    if !(raw.target_lag.is_finite() && (0.01..=1.0).contains(&raw.target_lag)) {
        problems.push(format!("poll.target_lag: must be between 0.01 and 1.0, not {}", raw.target_lag));
    }
    PollSettings {
        initial_interval,
        max_interval,
        multiplier: raw.multiplier,
        deadline,
        lease,
        adaptive: raw.adaptive,
        target_lag: raw.target_lag,
    }
}

/// `[webhook]`: receivers, signing secrets (inline or from a file), schedule and limits.
fn webhook(raw: RawWebhook, directories: &Directories, problems: &mut Problems) -> WebhookSettings {
    let timeout = problems.duration("webhook.timeout", &raw.timeout);
    let lease = problems.duration("webhook.lease", &raw.lease);
    let schedule: Vec<Duration> = raw
        .schedule
        .iter()
        .enumerate()
        .map(|(index, text)| problems.duration(&format!("webhook.schedule[{index}]"), text))
        .collect();
    let max_in_flight = in_flight(problems, "webhook.max_in_flight", raw.max_in_flight);
    if timeout.is_zero() {
        problems.push("webhook.timeout: must be more than zero");
    }
    if lease <= timeout {
        problems.push(format!("webhook.lease: must be longer than webhook.timeout ({})", format_duration(timeout)));
    }
    let urls: Vec<Url> = raw
        .urls
        .iter()
        .enumerate()
        .filter_map(|(index, text)| {
            parse_webhook_url(text).map_err(|error| problems.push(format!("webhook.urls[{index}]: {error}"))).ok()
        })
        .collect();
    let secrets: Vec<SecretBytes> = webhook_secret_texts(raw.secret, &raw.secret_file, directories, problems)
        .iter()
        .enumerate()
        .filter_map(|(index, secret)| {
            decode_webhook_secret(secret.expose_secret())
                .map_err(|error| problems.push(format!("webhook.secret[{index}]: {error}")))
                .ok()
        })
        .collect();
    // Only worth saying when nothing else is wrong: a secret that failed to decode is reported
    // above.
    if secrets.is_empty() && (!urls.is_empty() || raw.allow_ticket_urls) && problems.is_empty() {
        problems.push("webhook.secret: receivers are configured but no signing secret is");
    }
    WebhookSettings {
        urls,
        secrets,
        allow_ticket_urls: raw.allow_ticket_urls,
        allow_private_ticket_urls: raw.allow_private_ticket_urls,
        schedule,
        timeout,
        lease,
        max_in_flight,
    }
}

/// `webhook.secret` (one or a list) or `webhook.secret_file` (one secret a line, for rotation).
fn webhook_secret_texts(
    inline: OneOrMany,
    file: &str,
    directories: &Directories,
    problems: &mut Problems,
) -> Vec<SecretString> {
    let mut texts: Vec<SecretString> = match inline {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    }
    .into_iter()
    .filter(|secret| !secret.expose_secret().trim().is_empty())
    .collect();
    if let Some(path) = non_empty(file) {
        if !texts.is_empty() {
            problems.push("webhook.secret and webhook.secret_file are both set; set one");
        }
        match read_secret_file(path, directories.credentials.as_deref()) {
            Ok(text) => texts.extend(
                text.expose_secret()
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .map(|line| SecretString::from(line.to_owned())),
            ),
            Err(error) => problems.push(format!("webhook.secret_file: {error}")),
        }
    }
    texts
}

/// `[retention]`: how long finished tickets stay, and when the clean-up runs.
fn retention(raw: &RawRetention, problems: &mut Problems) -> RetentionSettings {
    let keep = problems.duration("retention.keep", &raw.keep);
    let schedule = crate::retention::parse_schedule(&raw.schedule).unwrap_or_else(|error| {
        problems.push(format!("retention.schedule: {error}"));
        "0 17 3 * * *".parse().expect("a valid fixed cron expression")
    });
    if keep.is_zero() {
        problems.push("retention.keep: must be more than zero");
    }
    RetentionSettings { keep, schedule }
}

/// `http.listen`: an address, or empty for no listener.
fn http_listen(raw: &RawHttp, problems: &mut Problems) -> Option<SocketAddr> {
    let text = non_empty(&raw.listen)?;
    text.parse::<SocketAddr>()
        .map_err(|_| problems.push(format!("http.listen: {text:?} is not an address such as 127.0.0.1:9187")))
        .ok()
}

/// `http.ui` and `http.ui_auth_file`: a `user:password` file read now, so that a missing or
/// malformed file stops the start (the password is never echoed).
fn ui(raw: &RawHttp, directories: &Directories, problems: &mut Problems) -> UiSettings {
    let Some(file) = non_empty(&raw.ui_auth_file) else {
        return UiSettings { enabled: raw.ui, auth: None, auth_file: None };
    };
    let auth = match read_secret_file(file, directories.credentials.as_deref()) {
        Ok(text) => BasicAuth::parse(text.expose_secret())
            .map_err(|reason| problems.push(format!("http.ui_auth_file: {file}: {reason}")))
            .ok(),
        Err(error) => {
            problems.push(format!("http.ui_auth_file: {error}"));
            None
        }
    };
    UiSettings { enabled: raw.ui, auth, auth_file: Some(PathBuf::from(file)) }
}

/// `[log]`: a filter `tracing` accepts, and text or JSON.
fn log(raw: RawLog, problems: &mut Problems) -> LogSettings {
    let format = match raw.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            problems.push(format!("log.format: {other:?} is not \"text\" or \"json\""));
            LogFormat::Text
        }
    };
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(&raw.level) {
        problems.push(format!("log.level: {:?} is not a valid level or filter: {error}", raw.level));
    }
    LogSettings { level: raw.level, format }
}

/// A count of attempts in flight: from 1 to [`MAX_IN_FLIGHT`].
fn in_flight(problems: &mut Problems, key: &str, value: i64) -> usize {
    let count = problems.positive(key, value);
    if count > MAX_IN_FLIGHT {
        problems.push(format!("{key}: must be at most {MAX_IN_FLIGHT}, not {count}"));
    }
    count
}

fn read_secret_file(path: &str, credentials_directory: Option<&Path>) -> Result<SecretString, SecretFileError> {
    let path = Path::new(path);
    let path = match credentials_directory {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) => return Err(SecretFileError::Read { path, source }),
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(SecretFileError::Empty(path));
    }
    Ok(SecretString::from(text.to_owned()))
}

fn non_empty(text: &str) -> Option<&str> {
    Some(text.trim()).filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format, Toml};

    use super::*;
    use crate::duration::MAX_DURATION;
    use crate::redact::{redact_text, redact_url};
    use crate::webhook::MAX_WEBHOOK_URL_CHARS;

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
        let crate::store::Database::Sqlite(database) = &config.database else { panic!("the default is SQLite") };
        let settings = StoreSettings { path: dir.path().join("t.db"), ..database.clone() };
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
        let crate::store::Database::Sqlite(database) = &config.database else { panic!("the default is SQLite") };
        assert_eq!(database.path, Path::new("/var/lib/flink-ticketd/flink-ticketd.db"));
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
