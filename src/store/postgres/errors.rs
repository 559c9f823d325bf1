//! What a PostgreSQL error means for the caller: the connection is gone (close it, retry with
//! backoff, report not ready after a few), the transaction lost a race (run it again), or the
//! database refused the row (permanent). And how an error is shown without the password.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};

/// Whether `error` says the connection (not the statement) failed: class 08 (connection
/// exception), 57P01–57P03 (the server is shutting down or starting), 53300 (too many
/// connections), 25006 (a read-only transaction: the server was demoted by a failover), I/O,
/// TLS, protocol errors and timeouts. Such a connection is closed and the call retried later.
pub(crate) fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300" | "25006")
        }),
        _ => false,
    }
}

/// Whether the transaction should simply run again: 40001 (serialization failure) and 40P01
/// (deadlock detected).
pub(crate) fn is_conflict(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|database| database.code())
        .is_some_and(|code| matches!(code.as_ref(), "40001" | "40P01"))
}

/// The error of a call that got no answer within `timeout`.
pub(super) fn timed_out(timeout: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the database did not answer within {}", crate::duration::format_duration(timeout)),
    ))
}

/// `error` as text with the URL's password (if it appears at all) taken out.
pub(super) fn redacted(error: &sqlx::Error, url: &SecretString) -> String {
    let text = error.to_string();
    let url = url.expose_secret();
    let password = url::Url::parse(url).ok().and_then(|url| url.password().map(str::to_owned));
    let text = text.replace(url, &crate::redact::redact_text(url));
    match password.filter(|password| !password.is_empty()) {
        Some(password) => text.replace(&password, "***"),
        None => text,
    }
}

/// Shows an error in a log line (sqlx's errors never carry the connection URL).
pub(super) struct Shown<'a>(pub(super) &'a sqlx::Error);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_database_error().and_then(|database| database.code()) {
            Some(code) => write!(formatter, "{} (SQLSTATE {code})", self.0),
            None => write!(formatter, "{}", self.0),
        }
    }
}
