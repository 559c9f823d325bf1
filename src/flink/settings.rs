//! What the cloud side is configured with: [`FlinkSettings`], the `[flink]` section as the client,
//! the credential chain and the rate limiter use it. `config` builds it; nothing here reads files.

use std::fmt::Write as _;
use std::time::Duration;

use crate::duration::format_duration;
use crate::flink::credentials::ChainEnvironment;
use crate::flink::{ClientSettings, Credentials};
use crate::redact::redact_url;

/// `[flink]`: where and how to call the API.
#[derive(Debug, Clone)]
pub struct FlinkSettings {
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

impl FlinkSettings {
    /// The `[flink]` section as `check-config` prints it: the endpoint redacted, secrets shown
    /// only as `[redacted]` (or empty when unset).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let duration = |value: Duration| format!("{:?}", format_duration(value));
        let redacted = |set: bool| if set { "\"[redacted]\"" } else { "\"\"" };
        let endpoints = &self.client.endpoints;
        let _ = writeln!(out, "[flink]\nregion = {:?}\nvpc = {}", endpoints.region, endpoints.vpc);
        let _ = writeln!(out, "endpoint = {:?}", endpoints.override_url.as_ref().map(redact_url).unwrap_or_default());
        let _ = writeln!(
            out,
            "ca_file = {:?}",
            self.client.ca_file.as_ref().map(|path| path.display().to_string()).unwrap_or_default()
        );
        let credentials = self.credentials.as_ref();
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
        let _ = writeln!(out, "max_requests_per_second = {}", self.max_requests_per_second);
        let _ = writeln!(out, "max_in_flight = {}", self.max_in_flight);
        let _ = writeln!(out, "connect_timeout = {}", duration(self.client.connect_timeout));
        let _ = writeln!(out, "request_timeout = {}", duration(self.client.request_timeout));
        let _ = writeln!(out, "max_response_bytes = {}", self.client.max_response_bytes);
        out
    }
}
