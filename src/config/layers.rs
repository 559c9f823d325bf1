//! The layers of the configuration, read but not yet checked: the built-in defaults, the TOML
//! file and `FLINK_TICKETD_*` environment variables, merged by figment into [`RawConfig`], whose
//! fields are the keys as written (strings where the settings have durations, URLs and secrets).
//! Checking them is the job of the parent module.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfigError, DEFAULT_CONFIG_PATH, DEFAULTS, ENV_PREFIX};

/// The configuration as layered, before validation: strings where the typed config has
/// durations, URLs and secrets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub(super) database: RawDatabase,
    pub(super) flink: RawFlink,
    pub(super) poll: RawPoll,
    pub(super) webhook: RawWebhook,
    pub(super) shutdown: RawShutdown,
    pub(super) retention: RawRetention,
    pub(super) http: RawHttp,
    pub(super) log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) path: PathBuf,
    pub(super) busy_timeout: String,
    pub(super) url: SecretString,
    pub(super) url_file: String,
    pub(super) max_connections: i64,
    pub(super) statement_timeout: String,
    pub(super) listen: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlink {
    pub(super) region: String,
    pub(super) vpc: bool,
    pub(super) endpoint: String,
    pub(super) ca_file: String,
    pub(super) access_key_id: String,
    pub(super) access_key_secret: SecretString,
    pub(super) access_key_secret_file: String,
    pub(super) security_token: SecretString,
    pub(super) security_token_file: String,
    pub(super) max_requests_per_second: f64,
    pub(super) max_in_flight: i64,
    pub(super) connect_timeout: String,
    pub(super) request_timeout: String,
    pub(super) max_response_bytes: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPoll {
    pub(super) initial_interval: String,
    pub(super) max_interval: String,
    pub(super) multiplier: f64,
    pub(super) deadline: String,
    pub(super) lease: String,
    pub(super) adaptive: bool,
    pub(super) target_lag: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) urls: Vec<String>,
    pub(super) secret: OneOrMany,
    pub(super) secret_file: String,
    pub(super) allow_ticket_urls: bool,
    pub(super) allow_private_ticket_urls: bool,
    pub(super) schedule: Vec<String>,
    pub(super) timeout: String,
    pub(super) lease: String,
    pub(super) max_in_flight: i64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(SecretString),
    Many(Vec<SecretString>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    pub(super) grace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) keep: String,
    pub(super) schedule: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: String,
    pub(super) ui: bool,
    pub(super) ui_auth_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: String,
    pub(super) format: String,
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
    // `FLINK_TICKETD_CONFIG` names the file; `FLINK_TICKETD_TEST_*` belong to the test suite
    // (the PostgreSQL server it runs against), which also starts daemons in that environment.
    let env = Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]).filter(|key| !key.starts_with("test_"));
    figment = figment.merge(env);
    Ok((figment, file))
}

/// A figment error as one problem line: the key, what is wrong, and where the value came from.
pub(super) fn describe_figment_error(error: &figment::Error) -> String {
    let key = if error.path.is_empty() { String::new() } else { format!("{}: ", error.path.join(".")) };
    let origin = error.metadata.as_ref().map(|metadata| format!(" (from {})", metadata.name)).unwrap_or_default();
    format!("{key}{}{origin}", error.kind)
}
