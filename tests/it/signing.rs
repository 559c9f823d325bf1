//! The ACS3-HMAC-SHA256 signer against every vector the official SDK computed
//! (a copy of the published file in `tests/fixtures/acs3-signature-vectors.json`).

use flink_ticketd::flink::signing::{SigningInput, sign};
use serde_json::Value;

#[test]
fn signer_reproduces_every_official_sdk_vector() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/acs3-signature-vectors.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("reading {path}: {error}"));
    let file: Value = serde_json::from_str(&text).expect("the vectors file is JSON");
    let vectors = file["vectors"].as_array().expect("a vectors array");
    assert!(vectors.len() >= 8, "the file holds the published vectors");
    for vector in vectors {
        let name = vector["name"].as_str().unwrap();
        let headers: Vec<(String, String)> = vector["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| (pair[0].as_str().unwrap().to_owned(), pair[1].as_str().unwrap().to_owned()))
            .collect();
        let header_refs: Vec<(&str, &str)> =
            headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        let query: Vec<(String, String)> = vector["query"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_owned()))
            .collect();
        let query_refs: Vec<(&str, &str)> = query.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
        let signed = sign(
            &SigningInput {
                method: vector["method"].as_str().unwrap(),
                canonical_uri: vector["canonical_uri"].as_str().unwrap(),
                query: &query_refs,
                headers: &header_refs,
                body: vector["body"].as_str().unwrap().as_bytes(),
            },
            vector["access_key_id"].as_str().unwrap(),
            vector["access_key_secret"].as_str().unwrap(),
        );
        let expected = &vector["expected"];
        let check = |field: &str, got: &str| {
            assert_eq!(got, expected[field].as_str().unwrap(), "vector {name}: {field}");
        };
        check("payload_hash", &signed.payload_hash);
        check("canonical_query_string", &signed.canonical_query_string);
        check("canonical_headers", &signed.canonical_headers);
        check("signed_headers", &signed.signed_headers);
        check("canonical_request", &signed.canonical_request);
        check("hashed_canonical_request", &signed.hashed_canonical_request);
        check("string_to_sign", &signed.string_to_sign);
        check("signature", &signed.signature);
        check("authorization", &signed.authorization);
        if let Some(documented) = vector.get("documented") {
            assert_eq!(signed.signature, documented["signature"].as_str().unwrap(), "vector {name}: published value");
        }
    }
}
