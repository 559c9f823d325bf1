//! What the webhook side is configured with: [`WebhookSettings`] (receivers, signing keys,
//! schedule, limits), the signing keys themselves ([`SecretBytes`], decoded by
//! [`decode_webhook_secret`]) and the receiver URL check ([`parse_webhook_url`]). `config` builds
//! these from the `[webhook]` keys; nothing here reads files or the environment.

use std::fmt::Write as _;
use std::time::Duration;

use url::Url;

use crate::duration::format_duration;
use crate::redact::{redact_text, redact_url};

/// Longest receiver URL, in characters, as stored in `webhook_deliveries.url` (its `CHECK`) and
/// sent: the normalised, percent-encoded form, which may be several times longer than the text
/// a user wrote.
pub const MAX_WEBHOOK_URL_CHARS: usize = 2048;

/// `[webhook]`: receivers and their schedule.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Receivers of every finished ticket.
    pub urls: Vec<Url>,
    /// Signing keys (already base64-decoded from `whsec_…`); every one signs.
    pub secrets: Vec<SecretBytes>,
    /// Honour the per-ticket `webhook_url` column.
    pub allow_ticket_urls: bool,
    /// Also honour per-ticket URLs to loopback, link-local, private and shared ranges and the
    /// cloud metadata address (see [`crate::webhook::private_address`]).
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

impl WebhookSettings {
    /// The `[webhook]` section as `check-config` prints it: URLs redacted, secrets counted but
    /// never shown.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let duration = |value: Duration| format!("{:?}", format_duration(value));
        let urls: Vec<String> = self.urls.iter().map(|url| format!("{:?}", redact_url(url))).collect();
        let _ = writeln!(out, "[webhook]\nurls = [{}]", urls.join(", "));
        let _ = writeln!(out, "secret = [{}]", vec!["\"[redacted]\""; self.secrets.len()].join(", "));
        let _ = writeln!(out, "allow_ticket_urls = {}", self.allow_ticket_urls);
        let _ = writeln!(out, "allow_private_ticket_urls = {}", self.allow_private_ticket_urls);
        let schedule: Vec<String> = self.schedule.iter().map(|delay| duration(*delay)).collect();
        let _ = writeln!(out, "schedule = [{}]", schedule.join(", "));
        let _ = writeln!(out, "timeout = {}\nlease = {}", duration(self.timeout), duration(self.lease));
        let _ = writeln!(out, "max_in_flight = {}", self.max_in_flight);
        out
    }
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

/// Why a text is not a receiver URL. Messages show the text with credentials redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookUrlError {
    /// It does not parse as a URL.
    #[error("{shown:?} is not a URL: {source}")]
    NotAUrl {
        /// The text, redacted.
        shown: String,
        /// What the parser said.
        source: url::ParseError,
    },
    /// The scheme is neither http nor https.
    #[error("{0:?} must use http or https")]
    Scheme(String),
    /// There is no host.
    #[error("{0:?} has no host")]
    NoHost(String),
    /// The normalised form is longer than [`MAX_WEBHOOK_URL_CHARS`].
    #[error("the URL is {0} characters once percent-encoded; at most {MAX_WEBHOOK_URL_CHARS} are allowed")]
    TooLong(usize),
}

/// Why a text is not a Standard Webhooks secret (the secret itself is never shown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No `whsec_` prefix.
    #[error("must start with \"whsec_\" followed by base64")]
    Prefix,
    /// The rest is not base64.
    #[error("the part after \"whsec_\" is not valid base64")]
    Base64,
    /// The key is shorter than 24 or longer than 64 bytes.
    #[error("decodes to {0} bytes; Standard Webhooks secrets have 24 to 64")]
    Length(usize),
}

/// Checks a receiver URL: http or https, with a host, at most [`MAX_WEBHOOK_URL_CHARS`] once
/// normalised (percent-encoded, IDNA host).
pub fn parse_webhook_url(text: &str) -> Result<Url, WebhookUrlError> {
    let url =
        Url::parse(text.trim()).map_err(|source| WebhookUrlError::NotAUrl { shown: redact_text(text), source })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(WebhookUrlError::Scheme(redact_text(text)));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(WebhookUrlError::NoHost(redact_text(text)));
    }
    let normalised = url.as_str().chars().count();
    if normalised > MAX_WEBHOOK_URL_CHARS {
        return Err(WebhookUrlError::TooLong(normalised));
    }
    Ok(url)
}

/// Decodes a Standard Webhooks secret: `whsec_` followed by base64 of 24 to 64 bytes.
pub fn decode_webhook_secret(text: &str) -> Result<SecretBytes, SecretError> {
    use base64::Engine as _;
    let Some(encoded) = text.trim().strip_prefix("whsec_") else {
        return Err(SecretError::Prefix);
    };
    let key = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
    if !(24..=64).contains(&key.len()) {
        return Err(SecretError::Length(key.len()));
    }
    Ok(SecretBytes(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_url_is_measured_once_percent_encoded() {
        let fits = format!("https://hooks.example.com/{}", "部".repeat(200));
        assert!(parse_webhook_url(&fits).is_ok());
        let long = format!("https://hooks.example.com/{}", "部署".repeat(150));
        assert_eq!(parse_webhook_url(&long).unwrap_err(), WebhookUrlError::TooLong(2726));
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_24_to_64_bytes() {
        assert!(decode_webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert_eq!(decode_webhook_secret("whsec_!!!").unwrap_err(), SecretError::Base64);
        assert_eq!(decode_webhook_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(), SecretError::Prefix);
    }
}
