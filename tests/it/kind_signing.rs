//! The signer and the path builders against the signature vectors of the validate, resource-plan
//! and hot-update operations (`tests/fixtures/acs3-async-ticket-vectors.json`): the paths the
//! daemon builds are the canonical URIs the vectors sign, `%3A` included, and the signer
//! reproduces every signature.

use flink_ticketd::domain::TicketKind;
use flink_ticketd::flink::kinds;
use flink_ticketd::flink::signing::{SigningInput, sign};
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/acs3-async-ticket-vectors.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("reading {path}: {error}"));
    let file: Value = serde_json::from_str(&text).expect("the vectors file is JSON");
    file["vectors"].as_array().expect("a vectors array").clone()
}

#[test]
fn signer_reproduces_every_vector_of_the_new_operations() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 6, "two vectors for each of validate, resource_plan and hot_update");
    for vector in &vectors {
        let name = vector["name"].as_str().unwrap();
        let headers: Vec<(&str, &str)> = vector["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| (pair[0].as_str().unwrap(), pair[1].as_str().unwrap()))
            .collect();
        let signed = sign(
            &SigningInput {
                method: vector["method"].as_str().unwrap(),
                canonical_uri: vector["canonical_uri"].as_str().unwrap(),
                query: &[],
                headers: &headers,
                body: vector["body"].as_str().unwrap().as_bytes(),
            },
            vector["access_key_id"].as_str().unwrap(),
            vector["access_key_secret"].as_str().unwrap(),
        );
        assert_eq!(signed.signature, vector["expected"]["signature"].as_str().unwrap(), "vector {name}");
        let hash = headers.iter().find(|(name, _)| *name == "x-acs-content-sha256").unwrap().1;
        assert_eq!(signed.payload_hash, hash, "vector {name}: payload hash");
    }
}

#[test]
fn the_daemon_builds_the_paths_actions_and_bodies_the_vectors_sign() {
    for vector in vectors() {
        let name = vector["name"].as_str().unwrap();
        let kind: TicketKind = vector["kind"].as_str().unwrap().parse().unwrap();
        let uri = vector["canonical_uri"].as_str().unwrap();
        let body = vector["body"].as_str().unwrap();
        let action = vector["headers"].as_array().unwrap().iter().find(|pair| pair[0] == "x-acs-action").unwrap()[1]
            .as_str()
            .unwrap()
            .to_owned();
        if let Some(poll) = vector.get("poll") {
            let path = kinds::poll_path(kind, poll["namespace"].as_str().unwrap(), poll["ticket_id"].as_str().unwrap())
                .expect("a poll path");
            assert_eq!(path, uri, "vector {name}");
            assert_eq!(kinds::poll_action(kind), action, "vector {name}");
            assert_eq!(body, "", "a poll has no body");
            continue;
        }
        let submit = &vector["submit"];
        let namespace = submit["namespace"].as_str().unwrap();
        assert_eq!(kinds::submit_action(kind), action, "vector {name}");
        let (path, sent) = match kind {
            TicketKind::Validate => (
                kinds::validate_path(namespace),
                Some(kinds::validate_body(submit["draft_id"].as_str().unwrap(), None)),
            ),
            TicketKind::ResourcePlan => {
                let conf: Vec<(String, String)> = submit["conf"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|pair| (pair[0].as_str().unwrap().to_owned(), pair[1].as_str().unwrap().to_owned()))
                    .collect();
                (
                    kinds::resource_plan_path(namespace, submit["deployment_id"].as_str().unwrap()),
                    kinds::resource_plan_body(&conf),
                )
            }
            TicketKind::HotUpdate => (kinds::hot_update_path(namespace, submit["job_id"].as_str().unwrap()), None),
            TicketKind::Deploy => unreachable!("the file has no deploy vectors"),
        };
        assert_eq!(path.expect("a submit path"), uri, "vector {name}");
        assert_eq!(String::from_utf8(sent.unwrap_or_default()).unwrap(), body, "vector {name}: body");
    }
}
