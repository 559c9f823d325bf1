//! Logging setup: `tracing` to stderr, plain text without timestamps under journald (which adds
//! its own), with timestamps elsewhere, or JSON lines for log shippers. `RUST_LOG`, when set,
//! overrides the configured level.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
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

impl LogSettings {
    /// The `[log]` section as `check-config` prints it.
    pub fn describe(&self) -> String {
        let format = match self.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        format!("[log]\nlevel = {:?}\nformat = {format:?}\n", self.level)
    }
}

/// Installs the global subscriber. Returns quietly if one is already installed (tests).
pub fn init(level: &str, format: LogFormat) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(level),
    }
    .unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE)
        .with_target(false);
    let result = match (format, under_journald) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).with_current_span(true).try_init(),
        (LogFormat::Text, true) => builder.without_time().with_ansi(false).try_init(),
        (LogFormat::Text, false) => builder.with_ansi(false).try_init(),
    };
    // A second installation (several daemons in one test process) keeps the first subscriber.
    drop(result);
}
