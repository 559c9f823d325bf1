//! `[database]`: a SQLite file (`path`, the default) or a PostgreSQL URL (`url` / `url_file`),
//! with the pool size, statement timeout and `listen` switch of the latter.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::ExposeSecret as _;

use super::layers::RawDatabase;
use super::{Directories, MAX_BUSY_TIMEOUT, Problems};
use crate::duration::format_duration;
use crate::store::{Database, PostgresSettings, StoreSettings};

/// `database.path`'s built-in value: setting `url` with any other path is a contradiction.
const DEFAULT_PATH: &str = "flink-ticketd.db";

/// Longest `database.statement_timeout`.
const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3600);

/// `[database]`: the file (under the state directory when relative) and the busy timeout, or
/// the PostgreSQL URL and its settings.
pub(super) fn database(raw: &RawDatabase, directories: &Directories, problems: &mut Problems) -> Database {
    let url = problems.secret(("database.url", &raw.url), ("database.url_file", &raw.url_file), directories);
    match url {
        Some(url) => Database::Postgres(postgres(raw, url, problems)),
        None => Database::Sqlite(sqlite(raw, directories, problems)),
    }
}

fn sqlite(raw: &RawDatabase, directories: &Directories, problems: &mut Problems) -> StoreSettings {
    let busy_timeout = problems.duration("database.busy_timeout", &raw.busy_timeout);
    let path = if raw.path.as_os_str().is_empty() {
        problems.push("database.path: must not be empty");
        PathBuf::new()
    } else if raw.path.is_relative() {
        match &directories.state {
            Some(dir) => dir.join(&raw.path),
            None => raw.path.clone(),
        }
    } else {
        raw.path.clone()
    };
    if busy_timeout > MAX_BUSY_TIMEOUT {
        problems.push(format!(
            "database.busy_timeout: must be at most {}, not {}",
            format_duration(MAX_BUSY_TIMEOUT),
            format_duration(busy_timeout)
        ));
    }
    StoreSettings { path, busy_timeout, max_readers: 4 }
}

fn postgres(raw: &RawDatabase, url: secrecy::SecretString, problems: &mut Problems) -> PostgresSettings {
    let shown = crate::redact::redact_text(url.expose_secret());
    if raw.path != std::path::Path::new(DEFAULT_PATH) {
        problems.push("database.path and database.url are both set; set one (path for SQLite, url for PostgreSQL)");
    }
    match url::Url::parse(url.expose_secret()) {
        Ok(parsed) if matches!(parsed.scheme(), "postgres" | "postgresql") => {}
        Ok(parsed) => problems.push(format!(
            "database.url: {shown} must start with postgres:// or postgresql://, not {}://",
            parsed.scheme()
        )),
        Err(error) => problems.push(format!("database.url: {shown} is not a URL: {error}")),
    }
    let statement_timeout = problems.duration("database.statement_timeout", &raw.statement_timeout);
    if statement_timeout.is_zero() || statement_timeout > MAX_STATEMENT_TIMEOUT {
        problems.push(format!(
            "database.statement_timeout: must be more than 0 and at most {}, not {}",
            format_duration(MAX_STATEMENT_TIMEOUT),
            format_duration(statement_timeout)
        ));
    }
    let max_connections = problems.positive("database.max_connections", raw.max_connections);
    if max_connections < 2 {
        problems.push("database.max_connections: must be at least 2 (one listens, the others query)");
    }
    PostgresSettings {
        url,
        max_connections: u32::try_from(max_connections).unwrap_or(u32::MAX),
        statement_timeout,
        listen: raw.listen,
    }
}

/// The `[database]` section as `check-config` prints it (the URL without its password).
pub(super) fn describe(database: &Database) -> String {
    let duration = |value: Duration| format!("{:?}", format_duration(value));
    match database {
        Database::Sqlite(settings) => format!(
            "[database]\npath = {:?}\nbusy_timeout = {}\n",
            settings.path.display().to_string(),
            duration(settings.busy_timeout)
        ),
        Database::Postgres(settings) => format!(
            "[database]\nurl = {:?}\nmax_connections = {}\nstatement_timeout = {}\nlisten = {}\n",
            settings.shown_url(),
            settings.max_connections,
            duration(settings.statement_timeout),
            settings.listen
        ),
    }
}
