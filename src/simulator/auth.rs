//! How the simulator checks a signed request, in the order the real gateway reports problems:
//! the `Authorization` header, the required signed headers, the ACS3 signature (recomputed with
//! our own signer), the date window and nonce reuse, then STS token consistency.
//!
//! Pure apart from the nonce memory, which the caller owns and passes in; no HTTP types leave
//! this module except the received `HeaderMap`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use hyper::HeaderMap;

use crate::flink::{API_VERSION, signing};

/// How far `x-acs-date` may be from the simulator's clock, either way.
pub(crate) const MAX_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// Headers every API request must send and sign, in the order they are checked.
const REQUIRED_SIGNED: [&str; 7] = [
    "host",
    "x-acs-action",
    "x-acs-version",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-content-sha256",
    "workspace",
];

/// A request the gateway refuses, as the error body will say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// HTTP status of the answer.
    pub(crate) http_status: u16,
    /// `Code`.
    pub(crate) code: &'static str,
    /// `Message`.
    pub(crate) message: String,
}

/// What the request to verify consists of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received<'a> {
    /// Upper-case method.
    pub(crate) method: &'a str,
    /// The path exactly as received, still percent-encoded.
    pub(crate) raw_path: &'a str,
    /// The raw query string, if any.
    pub(crate) raw_query: Option<&'a str>,
    /// The received headers.
    pub(crate) headers: &'a HeaderMap,
    /// The body bytes.
    pub(crate) body: &'a [u8],
}

/// Remembers recently used signature nonces in two generations, so memory stays bounded: a
/// nonce is remembered for at least [`MAX_CLOCK_SKEW`] unless more than `capacity` nonces arrive
/// in that time, and a replay outside the date window fails the date check anyway.
#[derive(Debug)]
pub(crate) struct NonceSet {
    current: HashSet<String>,
    previous: HashSet<String>,
    rotated_at: Instant,
    capacity: usize,
}

impl NonceSet {
    /// An empty set holding at most `2 * capacity` nonces.
    pub(crate) fn new(capacity: usize) -> NonceSet {
        NonceSet { current: HashSet::new(), previous: HashSet::new(), rotated_at: Instant::now(), capacity }
    }

    /// Records `nonce`; false if it was seen recently.
    pub(crate) fn insert(&mut self, nonce: &str, now: Instant) -> bool {
        if self.previous.contains(nonce) || self.current.contains(nonce) {
            return false;
        }
        let window = Duration::from_secs(MAX_CLOCK_SKEW.num_seconds().unsigned_abs());
        if self.current.len() >= self.capacity || now.duration_since(self.rotated_at) >= window {
            self.previous = std::mem::take(&mut self.current);
            self.rotated_at = now;
        }
        self.current.insert(nonce.to_owned());
        true
    }
}

/// Checks a request against the accepted keys. `now` is the simulator's clock; `remember_nonce`
/// records the nonce and says whether it was fresh. Returns the access key id that signed it.
pub(crate) fn verify(
    request: &Received<'_>,
    credentials: &HashMap<String, String>,
    now: DateTime<Utc>,
    remember_nonce: impl FnOnce(&str) -> bool,
) -> Result<String, Rejection> {
    let authorization = header(request.headers, "authorization")
        .and_then(signing::parse_authorization)
        .ok_or_else(|| reject(400, "IncompleteSignature", "The request signature does not conform to Aliyun standards: the Authorization header is missing or is not of the ACS3-HMAC-SHA256 form."))?;
    let Some(secret) = credentials.get(&authorization.access_key_id) else {
        return Err(reject(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found."));
    };
    let signed: Vec<String> =
        authorization.signed_headers.iter().map(|name| name.trim().to_ascii_lowercase()).collect();
    let is_signed = |name: &str| signed.iter().any(|signed| signed == name);

    for name in REQUIRED_SIGNED {
        if header(request.headers, name).is_none() {
            return Err(if name == "workspace" {
                reject(
                    400,
                    "MissingWorkspace",
                    "The workspace header is required: send the workspace id in a signed `workspace` header.",
                )
            } else {
                reject(400, "MissingParameter", &format!("The required header {name} is missing."))
            });
        }
        if !is_signed(name) {
            return Err(reject(400, "IncompleteSignature", &format!("The header {name} must be signed.")));
        }
    }
    if let Some(unsigned) =
        request.headers.keys().map(|name| name.as_str()).find(|name| name.starts_with("x-acs-") && !is_signed(name))
    {
        return Err(reject(400, "IncompleteSignature", &format!("The header {unsigned} must be signed.")));
    }
    if header(request.headers, "x-acs-version") != Some(API_VERSION) {
        return Err(reject(
            404,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        ));
    }
    if header(request.headers, "x-acs-content-sha256") != Some(signing::payload_hash(request.body).as_str()) {
        return Err(reject(
            400,
            "IncompleteSignature",
            "The x-acs-content-sha256 header does not match the SHA-256 of the request body.",
        ));
    }

    let query = decode_query(request.raw_query.unwrap_or(""));
    let query_pairs: Vec<(&str, &str)> = query.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    let headers: Vec<(&str, &str)> =
        signed.iter().map(|name| (name.as_str(), header(request.headers, name).unwrap_or(""))).collect();
    let expected = signing::sign(
        &signing::SigningInput {
            method: request.method,
            canonical_uri: request.raw_path,
            query: &query_pairs,
            headers: &headers,
            body: request.body,
        },
        &authorization.access_key_id,
        secret,
    );
    if !signing::signatures_match(&expected.signature, &authorization.signature) {
        return Err(reject(
            400,
            "SignatureDoesNotMatch",
            &format!(
                "Specified signature does not match our calculation. server StringToSign is [{}]",
                expected.string_to_sign
            ),
        ));
    }

    let date = header(request.headers, "x-acs-date").unwrap_or("");
    let Some(date) = parse_date(date) else {
        return Err(reject(
            400,
            "InvalidTimeStamp.Format",
            "Specified time stamp or date value is not well formatted: use YYYY-MM-DDTHH:MM:SSZ in UTC.",
        ));
    };
    if (date - now).abs() > MAX_CLOCK_SKEW {
        return Err(reject(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired."));
    }
    if !remember_nonce(header(request.headers, "x-acs-signature-nonce").unwrap_or("")) {
        return Err(reject(400, "SignatureNonceUsed", "Specified signature nonce was used already."));
    }

    if header(request.headers, "x-acs-security-token").is_some() {
        match header(request.headers, "x-acs-accesskey-id") {
            None => {
                return Err(reject(
                    400,
                    "IncompleteSignature",
                    "A request with x-acs-security-token must also send a signed x-acs-accesskey-id header.",
                ));
            }
            Some(id) if id != authorization.access_key_id => {
                return Err(reject(
                    400,
                    "InvalidSecurityToken.MismatchWithAccessKey",
                    "The security token does not belong to the access key in the Authorization header.",
                ));
            }
            Some(_) => {}
        }
    }
    Ok(authorization.access_key_id)
}

/// A header's value as trimmed text; `None` when absent or not UTF-8.
pub(crate) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|value| std::str::from_utf8(value.as_bytes()).ok()).map(str::trim)
}

fn reject(http_status: u16, code: &'static str, message: &str) -> Rejection {
    Rejection { http_status, code, message: message.to_owned() }
}

fn parse_date(text: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%SZ")
        .map(|naive| naive.and_utc())
        .ok()
        .or_else(|| DateTime::parse_from_rfc3339(text).ok().map(|date| date.with_timezone(&Utc)))
}

fn decode_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(key), decode_component(value))
        })
        .collect()
}

fn decode_component(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use hyper::header::{HeaderName, HeaderValue};

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").expect("a valid date").with_timezone(&Utc)
    }

    /// Signed headers as our client sends them, plus the Authorization header.
    fn signed_headers(secret: &str, query: &[(&str, &str)], skip: &str) -> HeaderMap {
        let pairs: Vec<(&str, &str)> = [
            ("host", "127.0.0.1:1"),
            ("x-acs-action", "GetDeployDeploymentDraftResult"),
            ("x-acs-version", API_VERSION),
            ("x-acs-date", "2026-03-01T12:05:00Z"),
            ("x-acs-signature-nonce", "0123456789abcdef0123456789abcdef"),
            ("x-acs-content-sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            ("workspace", "ws-1"),
        ]
        .into_iter()
        .filter(|(name, _)| *name != skip)
        .collect();
        let signed = signing::sign(
            &signing::SigningInput { method: "GET", canonical_uri: "/a%2Fb", query, headers: &pairs, body: b"" },
            "AK",
            secret,
        );
        let mut map = HeaderMap::new();
        for (name, value) in pairs.iter().chain([&("authorization", signed.authorization.as_str())]) {
            map.insert(HeaderName::from_static(name), HeaderValue::from_str(value).expect("ASCII"));
        }
        map
    }

    fn check(headers: &HeaderMap, raw_query: Option<&str>) -> Result<String, Rejection> {
        let credentials = HashMap::from([("AK".to_owned(), "secret".to_owned())]);
        let received = Received { method: "GET", raw_path: "/a%2Fb", raw_query, headers, body: b"" };
        verify(&received, &credentials, now(), |_| true)
    }

    #[test]
    fn a_request_signed_by_our_client_is_accepted() {
        assert_eq!(check(&signed_headers("secret", &[], ""), None), Ok("AK".to_owned()));
        let with_query = signed_headers("secret", &[("b", "x y"), ("a", "")], "");
        assert_eq!(check(&with_query, Some("b=x%20y&a=")), Ok("AK".to_owned()));
    }

    #[test]
    fn rejections_use_the_gateway_codes() {
        let wrong_secret = check(&signed_headers("other", &[], ""), None).expect_err("wrong secret");
        assert_eq!(wrong_secret.code, "SignatureDoesNotMatch");
        assert!(wrong_secret.message.contains("server StringToSign is [ACS3-HMAC-SHA256\n"), "{wrong_secret:?}");

        let no_workspace = check(&signed_headers("secret", &[], "workspace"), None).expect_err("no workspace");
        assert_eq!((no_workspace.http_status, no_workspace.code), (400, "MissingWorkspace"));

        let no_nonce = check(&signed_headers("secret", &[], "x-acs-signature-nonce"), None).expect_err("no nonce");
        assert_eq!(no_nonce.code, "MissingParameter");

        let mut unsigned_extra = signed_headers("secret", &[], "");
        unsigned_extra.insert("x-acs-extra", HeaderValue::from_static("1"));
        assert_eq!(check(&unsigned_extra, None).expect_err("unsigned x-acs header").code, "IncompleteSignature");

        let mut bad_auth = signed_headers("secret", &[], "");
        bad_auth.insert("authorization", HeaderValue::from_static("Bearer x"));
        assert_eq!(check(&bad_auth, None).expect_err("not ACS3").code, "IncompleteSignature");
    }

    #[test]
    fn nonces_are_remembered_across_one_rotation() {
        let start = Instant::now();
        let mut nonces = NonceSet::new(2);
        assert!(nonces.insert("a", start));
        assert!(!nonces.insert("a", start));
        assert!(nonces.insert("b", start));
        assert!(nonces.insert("c", start), "rotates: a and b move to the previous generation");
        assert!(!nonces.insert("a", start));
        assert!(nonces.insert("d", start));
        assert!(nonces.insert("e", start), "rotates again: a and b are forgotten");
        assert!(nonces.insert("a", start));
    }
}
