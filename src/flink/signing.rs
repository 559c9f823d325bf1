//! ACS3-HMAC-SHA256 request signing, as Alibaba Cloud's V3 signature method defines it.
//!
//! Pure functions only: the client in `flink/mod.rs` builds the headers, this module turns them
//! into the canonical request and the `Authorization` value. The simulator uses the same code to
//! verify what it receives. No IO, no clock: the caller supplies the date and nonce headers.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The algorithm name that starts the string to sign and the `Authorization` header.
pub const ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// Everything that goes into one signature.
#[derive(Debug, Clone, Copy)]
pub struct SigningInput<'a> {
    /// HTTP method in upper case (`GET`, `POST`).
    pub method: &'a str,
    /// The request path exactly as sent, already percent-encoded (see [`encode`]).
    pub canonical_uri: &'a str,
    /// Decoded query parameters; the canonical form encodes and sorts them.
    pub query: &'a [(&'a str, &'a str)],
    /// Every header to sign as (name, value); names in any case, values are trimmed.
    pub headers: &'a [(&'a str, &'a str)],
    /// The exact request body bytes (empty for a GET).
    pub body: &'a [u8],
}

/// The intermediate strings and the final signature, kept for tests and debugging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// Lowercase hex SHA-256 of the body.
    pub payload_hash: String,
    /// `k=v&k=v`, encoded and sorted.
    pub canonical_query_string: String,
    /// `name:value\n` for every signed header, sorted by name.
    pub canonical_headers: String,
    /// Signed header names joined by `;`.
    pub signed_headers: String,
    /// The full canonical request.
    pub canonical_request: String,
    /// Lowercase hex SHA-256 of the canonical request.
    pub hashed_canonical_request: String,
    /// `ACS3-HMAC-SHA256\n<hashed canonical request>`.
    pub string_to_sign: String,
    /// Lowercase hex HMAC-SHA256 of the string to sign.
    pub signature: String,
    /// The complete `Authorization` header value.
    pub authorization: String,
}

/// The parts of a received `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key ID after `Credential=`.
    pub access_key_id: String,
    /// The header names after `SignedHeaders=`, in the order given.
    pub signed_headers: Vec<String>,
    /// The hex signature after `Signature=`.
    pub signature: String,
}

/// Signs a request with the given access key pair.
pub fn sign(input: &SigningInput<'_>, access_key_id: &str, access_key_secret: &str) -> Signed {
    let payload_hash = payload_hash(input.body);
    let canonical_query_string = canonical_query(input.query);

    let mut headers: Vec<(String, &str)> =
        input.headers.iter().map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim())).collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut canonical_headers =
        String::with_capacity(headers.iter().map(|(name, value)| name.len() + value.len() + 2).sum());
    let mut signed_headers = String::with_capacity(headers.iter().map(|(name, _)| name.len() + 1).sum());
    for (name, value) in &headers {
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(value);
        canonical_headers.push('\n');
        if !signed_headers.is_empty() {
            signed_headers.push(';');
        }
        signed_headers.push_str(name);
    }

    let canonical_request = [
        input.method,
        input.canonical_uri,
        &canonical_query_string,
        &canonical_headers,
        &signed_headers,
        &payload_hash,
    ]
    .join("\n");
    let hashed_canonical_request = hex::encode(Sha256::digest(canonical_request.as_bytes()));
    let string_to_sign = format!("{ALGORITHM}\n{hashed_canonical_request}");
    let signature = hex::encode(hmac_sha256(access_key_secret.as_bytes(), string_to_sign.as_bytes()));
    let authorization =
        format!("{ALGORITHM} Credential={access_key_id},SignedHeaders={signed_headers},Signature={signature}");
    Signed {
        payload_hash,
        canonical_query_string,
        canonical_headers,
        signed_headers,
        canonical_request,
        hashed_canonical_request,
        string_to_sign,
        signature,
        authorization,
    }
}

/// Lowercase hex SHA-256 of `body`; `e3b0c442…b855` for an empty body.
pub fn payload_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Percent-encodes one path parameter or query component: UTF-8 bytes, `A-Z a-z 0-9 - _ . ~`
/// kept, everything else `%XX` in upper-case hex (so `/` becomes `%2F` and space `%20`).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(byte & 0x0f)]));
        }
    }
    out
}

/// Parses an `Authorization` header value of the ACS3 form; `None` if it is not one.
pub fn parse_authorization(value: &str) -> Option<Authorization> {
    let rest = value.strip_prefix(ALGORITHM)?.trim_start();
    let mut access_key_id = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (key, value) = part.trim().split_once('=')?;
        match key {
            "Credential" => access_key_id = Some(value.to_owned()),
            "SignedHeaders" => signed_headers = Some(value.split(';').map(str::to_owned).collect()),
            "Signature" => signature = Some(value.to_owned()),
            _ => return None,
        }
    }
    Some(Authorization { access_key_id: access_key_id?, signed_headers: signed_headers?, signature: signature? })
}

/// Compares two signatures in time that depends only on their length.
pub fn signatures_match(expected: &str, received: &str) -> bool {
    expected.len() == received.len()
        && expected.bytes().zip(received.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query.iter().map(|(key, value)| (encode(key), encode(value))).collect();
    pairs.sort();
    pairs.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join("&")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC-SHA256 accepts a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_encode_every_reserved_byte() {
        assert_eq!(encode("a/b c+d:e*f~g"), "a%2Fb%20c%2Bd%3Ae%2Af~g");
        assert_eq!(encode("ü"), "%C3%BC");
        assert_eq!(encode("AZaz09-_.~"), "AZaz09-_.~");
    }

    #[test]
    fn empty_body_hashes_to_the_well_known_value() {
        assert_eq!(payload_hash(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn authorization_round_trips_through_the_parser() {
        let signed = sign(
            &SigningInput {
                method: "GET",
                canonical_uri: "/",
                query: &[],
                headers: &[("Host", "example.com"), ("x-acs-date", "2026-01-01T00:00:00Z")],
                body: b"",
            },
            "AKID",
            "secret",
        );
        let parsed = parse_authorization(&signed.authorization).expect("our own header parses");
        assert_eq!(parsed.access_key_id, "AKID");
        assert_eq!(parsed.signed_headers, vec!["host", "x-acs-date"]);
        assert!(signatures_match(&signed.signature, &parsed.signature));
        assert!(!signatures_match(&signed.signature, "00"));
    }
}
