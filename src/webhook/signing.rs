//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the
//! base64-decoded part of a `whsec_` secret. Several secrets (during rotation) give several
//! space-separated signatures, as the specification allows. Pure functions.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The `webhook-signature` value for one message, signed with every key in `keys`.
pub fn sign(keys: &[&[u8]], webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter().map(|key| format!("v1,{}", signature(key, webhook_id, timestamp, body))).collect::<Vec<_>>().join(" ")
}

/// Whether any `v1` signature in a `webhook-signature` header matches `key` (what a receiver does).
pub fn verify(key: &[u8], webhook_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let expected = signature(key, webhook_id, timestamp, body);
    header.split_whitespace().filter_map(|part| part.strip_prefix("v1,")).any(|received| {
        received.len() == expected.len()
            && received.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

fn signature(key: &[u8], webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC-SHA256 accepts a key of any length");
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    BASE64.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_signs_and_each_signature_verifies() {
        let header = sign(&[b"key-one-0123456789abcdef", b"key-two-0123456789abcdef"], "msg_1", 1_700_000_000, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|part| part.starts_with("v1,")));
        assert!(verify(b"key-one-0123456789abcdef", "msg_1", 1_700_000_000, b"{}", &header));
        assert!(verify(b"key-two-0123456789abcdef", "msg_1", 1_700_000_000, b"{}", &header));
        assert!(!verify(b"key-three-0123456789abcd", "msg_1", 1_700_000_000, b"{}", &header));
        assert!(!verify(b"key-one-0123456789abcdef", "msg_1", 1_700_000_001, b"{}", &header));
    }
}
