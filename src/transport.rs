//! Describing HTTP transport failures (connect errors, timeouts, cut bodies) for logs and the
//! database, without the request URL that reqwest's own message includes: a URL may carry a token
//! or user information, and it is noise next to a ticket or delivery that already names its target.

/// `timed out`, `connection failed: <cause>`, `response body failed: <cause>` or
/// `request failed: <cause>`, where the cause is the innermost error in the chain.
pub fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        return "timed out".to_owned();
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "response body failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() { kind.to_owned() } else { format!("{kind}: {detail}") }
}
