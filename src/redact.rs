//! URLs and text shown without what may be a secret, wherever they are printed or logged:
//! `check-config`, the CLI's tables and JSON, delivery spans and notes. Pure functions, no IO.

use url::Url;

/// A URL for display, without what may be a secret: user information becomes `***`, every query
/// value `***` (names are kept), path segments that look like tokens (see [`token_like`]) `***`,
/// and the fragment is dropped. Used wherever a URL is printed or logged.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() || shown.password().is_some() {
        let _ = shown.set_username("***");
        let _ = shown.set_password(None);
    }
    if url.query().is_some() {
        let names: Vec<String> = url.query_pairs().map(|(name, _)| name.into_owned()).collect();
        shown.set_query(None);
        if !names.is_empty() {
            shown.query_pairs_mut().extend_pairs(names.iter().map(|name| (name.as_str(), "***")));
        }
    }
    shown.set_fragment(None);
    if let Some(segments) = url.path_segments() {
        let segments: Vec<&str> = segments.map(|segment| if token_like(segment) { "***" } else { segment }).collect();
        shown.set_path(&segments.join("/"));
    }
    shown.to_string()
}

/// Whether a path segment looks like a secret token (as in Slack's or Discord's webhook URLs):
/// at least 16 characters, letters and digits mixed, or at least 32 of any kind.
pub fn token_like(segment: &str) -> bool {
    let length = segment.chars().count();
    let mixed = segment.chars().any(|c| c.is_ascii_digit()) && segment.chars().any(|c| c.is_ascii_alphabetic());
    length >= 32 || (length >= 16 && mixed)
}

/// [`redact_url`] of a URL given as text; text that is not a URL is shown only up to its first
/// `@`, `?` or `#` (where a secret could start).
pub fn redact_text(text: &str) -> String {
    Url::parse(text.trim()).map(|url| redact_url(&url)).unwrap_or_else(|_| match text.find(['@', '?', '#']) {
        Some(cut) => format!("{}***", &text[..cut]),
        None => text.to_owned(),
    })
}
