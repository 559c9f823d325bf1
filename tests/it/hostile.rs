//! Hostile input: property tests for the API response parser, the path encoder, the config
//! loader and the simulator's scenario parser (no panic, whatever the input), the response body
//! cap, oversized headers and a connection dropped before the answer (the request is never sent
//! again) through real sockets, and rows with hostile values inserted by SQL
//! (refused by constraints, or failed with a clear `error_code`, and never a request to any path
//! but the API's own).
//!
//! Case counts follow `PROPTEST_CASES` (256 by default), so CI stays fast and a long run is one
//! environment variable away.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flink_ticketd::config;
use flink_ticketd::domain::TicketState;
use flink_ticketd::flink::wire::{parse_deploy_result, parse_reply};
use flink_ticketd::flink::{FlinkError, path_parameter, signing};
use flink_ticketd::simulator::Scenario;
use proptest::prelude::*;
use serde_json::Value;
use sqlx::Connection as _;

use crate::harness::{TestEnv, eventually, quote};

/// JSON values of every shape, nested a few levels, with the keys the parser looks for mixed in
/// with others.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("success".to_owned()),
        Just("httpCode".to_owned()),
        Just("data".to_owned()),
        Just("requestId".to_owned()),
        Just("Code".to_owned()),
        Just("errorCode".to_owned()),
        Just("message".to_owned()),
        Just("ticketStatus".to_owned()),
        Just("deploymentId".to_owned()),
        Just("artifactValidationDetail".to_owned()),
        Just("errorDetails".to_owned()),
        Just("lineNumber".to_owned()),
        Just("columnNumber".to_owned()),
        Just("validationResult".to_owned()),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        Just(Value::String("\"\"".to_owned())),
        Just(Value::String("true".to_owned())),
        Just(Value::String(" 200 ".to_owned())),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Strings rich in what path handling gets wrong: separators, dots, escapes, multi-byte text.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("%2F".to_owned()),
        Just("%".to_owned()),
        Just("%zz".to_owned()),
        Just("?".to_owned()),
        Just("#".to_owned()),
        Just("\\".to_owned()),
        Just(" ".to_owned()),
        Just("+".to_owned()),
        Just("\u{0}".to_owned()),
        Just("\u{202e}".to_owned()),
        Just("é".to_owned()),
        Just("😀".to_owned()),
        any::<char>().prop_map(String::from),
        "[a-zA-Z0-9_.~-]{1,4}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn the_response_parser_never_panics_on_arbitrary_bytes(
        status in 0u16..1000,
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        if let Ok(reply) = parse_reply(status, None, &body) {
            prop_assert!((200..300).contains(&status), "success only with a 2xx status");
            if let Some(data) = &reply.data {
                parse_deploy_result(data);
            }
        }
    }

    #[test]
    fn the_response_parser_reads_arbitrary_json_without_panicking(
        status in prop_oneof![Just(200u16), Just(400u16), Just(404u16), Just(429u16), Just(503u16), 0u16..1000],
        envelope in json_value(),
        data in json_value(),
    ) {
        let body = serde_json::to_vec(&envelope).expect("a JSON value serialises");
        let outcome = parse_reply(status, Some(Duration::from_millis(5)), &body);
        if let Err(error) = &outcome {
            // Every error has something to record in `error_code`.
            prop_assert!(!error.code().is_empty());
        }
        let mut wrapped = serde_json::json!({"success": true, "requestId": "R", "data": data});
        let reply = parse_reply(200, None, &serde_json::to_vec(&wrapped).expect("serialises"));
        let reply = reply.map_err(|error| TestCaseError::fail(format!("a success envelope was refused: {error}")))?;
        let result = parse_deploy_result(reply.data.as_ref().unwrap_or(&Value::Null));
        // Whatever the data, the validation issues serialise into the column's JSON array.
        prop_assert!(serde_json::to_string(&result.validation_errors).is_ok());
        wrapped["data"] = serde_json::json!({"artifactValidationDetail": {"errorDetails": data}});
        parse_reply(200, None, &serde_json::to_vec(&wrapped).expect("serialises")).map(|reply| {
            reply.data.as_ref().map(parse_deploy_result)
        }).ok();
    }

    #[test]
    fn encoded_path_parameters_decode_back_and_hold_only_unreserved_characters_and_escapes(
        value in prop_oneof![any::<String>(), hostile_text()],
    ) {
        let encoded = signing::encode(&value);
        let decoded = percent_encoding::percent_decode_str(&encoded).decode_utf8();
        prop_assert_eq!(decoded.as_deref(), Ok(value.as_str()));
        prop_assert!(!encoded.contains('/'));
        let bytes = encoded.as_bytes();
        let mut index = 0;
        while index < bytes.len() {
            let byte = bytes[index];
            if byte == b'%' {
                let escape = &encoded[index + 1..(index + 3).min(encoded.len())];
                prop_assert!(
                    escape.len() == 2 && escape.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
                    "a %XX escape with upper-case hex in {:?}", encoded
                );
                index += 3;
            } else {
                prop_assert!(
                    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~'),
                    "{:?} holds the reserved byte {:?}", encoded, char::from(byte)
                );
                index += 1;
            }
        }
        // A parameter is one path segment that URL normalisation cannot resolve away.
        match path_parameter(&value) {
            Ok(segment) => {
                prop_assert_eq!(&segment, &encoded);
                prop_assert!(segment != "." && segment != ".." && !segment.is_empty());
            }
            Err(error) => {
                prop_assert!(value.is_empty() || value == "." || value == "..");
                prop_assert_eq!(error.code(), "InvalidTicket");
            }
        }
    }

    #[test]
    fn the_config_loader_never_panics_and_names_the_key_it_refuses(
        section in prop_oneof![
            Just("database"), Just("flink"), Just("poll"), Just("webhook"), Just("shutdown"),
            Just("retention"), Just("http"), Just("log"), Just("nonsense")
        ],
        key in prop_oneof![
            Just("path"), Just("busy_timeout"), Just("region"), Just("endpoint"), Just("max_in_flight"),
            Just("max_requests_per_second"), Just("connect_timeout"), Just("request_timeout"),
            Just("max_response_bytes"), Just("initial_interval"), Just("max_interval"), Just("multiplier"),
            Just("deadline"), Just("lease"), Just("urls"), Just("secret"), Just("schedule"), Just("timeout"),
            Just("grace"), Just("keep"), Just("listen"), Just("level"), Just("format"), Just("unknown_key")
        ],
        value in config_value(),
    ) {
        let text = format!("[{section}]\n{key} = {value}\n");
        let outcome = load_config_text(&text);
        if let Ok(config) = &outcome {
            // What the daemon derives from an accepted configuration cannot overflow either.
            let policy = flink_ticketd::poller::Policy::from_settings(&config.poll);
            let _ = policy.pause.max + config.poll.lease + config.flink.client.request_timeout;
        }
        if let Err(error) = outcome {
            prop_assert!(!error.problems.is_empty());
            let path = format!("{section}.{key}");
            for problem in &error.problems {
                prop_assert!(
                    problem.contains(&path) || problem.contains(section) || problem.contains(key),
                    "{:?} does not say which key is wrong (set {}) in {:?}", problem, path, text
                );
            }
        }
    }

    #[test]
    fn the_config_loader_never_panics_on_arbitrary_text(text in any::<String>()) {
        drop(load_config_text(&text));
    }

    #[test]
    fn the_scenario_parser_never_panics(text in prop_oneof![any::<String>(), scenario_text()]) {
        if let Ok(scenario) = Scenario::from_toml_str(&text) {
            prop_assert!(!scenario.default.is_empty());
            prop_assert!(scenario.tickets.iter().all(|rule| !rule.steps.is_empty()));
        }
    }
}

/// TOML values of every type, valid and invalid for each key.
fn config_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_owned()),
        Just("\"30s\"".to_owned()),
        Just("\"0\"".to_owned()),
        Just("\"-5s\"".to_owned()),
        Just("\"1e308s\"".to_owned()),
        Just("\"99999999999999999999d\"".to_owned()),
        Just("\"200000000000000d\"".to_owned()),
        Just("\"5000000000000000h\"".to_owned()),
        Just("\"1.5.5s\"".to_owned()),
        Just("\"ftp://example.com/\"".to_owned()),
        Just("\"file:///etc/passwd\"".to_owned()),
        Just("[\"javascript:alert(1)\"]".to_owned()),
        Just("[\"http://\"]".to_owned()),
        Just("\"whsec_\"".to_owned()),
        Just("\"999.999.999.999:99999\"".to_owned()),
        Just("nan".to_owned()),
        Just("inf".to_owned()),
        Just("-inf".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("true".to_owned()),
        Just("{ nested = 1 }".to_owned()),
        Just("[]".to_owned()),
        Just("[1, \"x\"]".to_owned()),
        any::<i64>().prop_map(|number| number.to_string()),
        any::<f64>().prop_filter("a TOML float", |number| number.is_finite()).prop_map(|number| format!("{number:?}")),
        any::<String>().prop_map(|text| format!("{text:?}")),
        (0u64..u64::MAX, prop_oneof![Just("ms"), Just("s"), Just("m"), Just("h"), Just("d")])
            .prop_map(|(number, unit)| format!("\"{number}{unit}\"")),
    ]
}

/// Scenario-shaped TOML with every step kind and hostile values.
fn scenario_text() -> impl Strategy<Value = String> {
    let step = prop_oneof![
        Just("{ status = \"INIT\" }".to_owned()),
        Just("{ status = \"FINISHED\", success = true, delay_ms = 18446744073709551615 }".to_owned()),
        Just("{ error = \"Throttling\", retry_after_ms = 18446744073709551615 }".to_owned()),
        Just("{ error = \"\", http_status = 0 }".to_owned()),
        Just("{ error = \"X\", http_status = 99999 }".to_owned()),
        Just("{ html = true, http_status = 1 }".to_owned()),
        Just("{ garbage_bytes = 18446744073709551615 }".to_owned()),
        Just("{ garbage_bytes = -1 }".to_owned()),
        Just("{ not_found = false }".to_owned()),
        Just("{ drop = true, status = \"INIT\" }".to_owned()),
        Just("{ truncated = true, errors = [{ line = -1 }] }".to_owned()),
        Just("{}".to_owned()),
        Just("1".to_owned()),
        any::<String>().prop_map(|text| format!("{{ status = {text:?} }}")),
    ];
    let selector = prop_oneof![Just("id"), Just("prefix"), Just("draft"), Just("draft_prefix"), Just("bogus")];
    (selector, any::<String>(), prop::collection::vec(step, 0..6), prop::option::of(Just("default = []"))).prop_map(
        |(selector, value, steps, default)| {
            format!("{}\n[[tickets]]\n{selector} = {value:?}\nsteps = [{}]\n", default.unwrap_or(""), steps.join(", "))
        },
    )
}

/// Runs the real loader (`config::load`) on `text` as the config file.
fn load_config_text(text: &str) -> Result<config::Config, config::ConfigError> {
    let mut file = tempfile::NamedTempFile::new().expect("a temp file");
    file.write_all(text.as_bytes()).expect("the config text is written");
    config::load(Some(file.path()))
}

#[test]
fn deeply_nested_and_invalid_utf8_answers_are_decode_errors() {
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_data =
        format!(r#"{{"success":true,"data":{{"artifactValidationDetail":{{"errorDetails":{deep_array}}}}}}}"#);
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(50_000), "}".repeat(50_000));
    for body in [deep_array.as_bytes(), deep_data.as_bytes(), deep_object.as_bytes()] {
        assert!(matches!(parse_reply(200, None, body), Err(FlinkError::Decode(_))), "nesting past the recursion limit");
    }
    let invalid_utf8 = b"{\"success\":true,\"requestId\":\"\xff\xfe\",\"data\":{\"ticketStatus\":\"FINISHED\"}}";
    let Err(FlinkError::Decode(error)) = parse_reply(200, None, invalid_utf8) else {
        panic!("invalid UTF-8 is not a readable answer")
    };
    assert!(error.message.unwrap_or_default().contains("unparsable response body"));
}

/// A raw HTTP server on 127.0.0.1. For each request it reads up to the end of the head, counts
/// the request, writes `response` (whatever bytes the test wants; none leaves the request
/// unanswered) and closes the connection. Returns its URL and the count; a request is counted
/// before its connection closes.
async fn raw_http_server(response: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let address = listener.local_addr().expect("a bound address");
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (response, counted) = (response.clone(), Arc::clone(&counted));
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (format!("http://{address}"), requests)
}

#[tokio::test]
async fn bodies_past_the_cap_are_not_read_and_never_fail_the_ticket() {
    // The simulator streams 1 GiB per answer; reading one to the end would take longer than the
    // request timeout, so only the cap explains the recorded message.
    let env = TestEnv::new(
        r#"
        [[tickets]]
        id = "t-huge"
        steps = [{ garbage_bytes = 1073741824 }]
        "#,
    )
    .await;
    let daemon = env.spawn_daemon(|config| config.poll.deadline = Duration::from_secs(2)).await;
    env.insert("t-huge", "ns", "ws").await;
    let ticket = env.wait_final("t-huge").await;
    assert_eq!(ticket.state, TicketState::Expired, "an answer we cannot read is not the ticket's failure");
    assert_eq!(ticket.error_code.as_deref(), Some("InvalidResponse"));
    assert!(
        ticket.error_message.as_deref().unwrap_or_default().contains("response body larger than 1048576 bytes"),
        "{:?}",
        ticket.error_message
    );
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn giant_and_countless_response_headers_are_network_errors_that_expire_the_ticket() {
    let giant = format!("HTTP/1.1 200 OK\r\nx-giant: {}\r\ncontent-length: 2\r\n\r\n{{}}", "a".repeat(2 << 20));
    let countless: String = (0..5000).map(|n| format!("x-h{n}: v\r\n")).collect();
    let countless = format!("HTTP/1.1 200 OK\r\n{countless}content-length: 2\r\n\r\n{{}}");
    for response in [giant, countless] {
        let env = TestEnv::new("").await;
        let (endpoint, _) = raw_http_server(response.into_bytes()).await;
        let daemon = env
            .spawn_daemon(|config| {
                config.flink.client.endpoints.override_url = Some(endpoint.parse().expect("a URL"));
            })
            .await;
        env.execute_sql(
            "INSERT INTO tickets (ticket_id, namespace, workspace, deadline_at)
             VALUES ('t-headers', 'ns', 'ws', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 second'))",
        )
        .await;
        let ticket = env.wait_final("t-headers").await;
        assert_eq!(ticket.state, TicketState::Expired);
        assert_eq!(ticket.error_code.as_deref(), Some("NetworkError"), "{:?}", ticket.error_message);
        assert!(ticket.polls >= 1);
        daemon.stop().await.expect("clean shutdown");
    }
}

#[tokio::test]
async fn a_connection_dropped_before_the_answer_is_one_network_error_and_the_request_is_sent_once() {
    // A deploy sent twice would deploy twice: neither the client nor the HTTP stack may send a
    // request again on its own. The server counts each request before it drops the connection,
    // so the count is final by the time the client sees the drop.
    use flink_ticketd::flink::{DeployRequest, TicketRef};

    let (endpoint, requests) = raw_http_server(Vec::new()).await;
    let env = TestEnv::new("").await;
    let client = env.client_for(endpoint.parse().expect("a URL"));

    let ticket = TicketRef { namespace: "ns", workspace: "ws", ticket_id: "t-dropped", region: None };
    let polled = client.get_deploy_result(ticket).await.expect_err("no answer came");
    assert!(matches!(polled, FlinkError::Network(_)), "{polled}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "the poll was sent once");

    let deploy = DeployRequest {
        namespace: "ns",
        workspace: "ws",
        draft_id: "d-1",
        target: None,
        skip_validate: false,
        region: None,
    };
    let deployed = client.deploy_draft(&deploy).await.expect_err("no answer came");
    assert!(matches!(deployed, FlinkError::Network(_)), "{deployed}");
    assert_eq!(requests.load(Ordering::SeqCst), 2, "the deploy was sent once");
}

#[tokio::test]
async fn hostile_rows_are_refused_or_failed_and_never_reach_another_path() {
    // The real API answers "not found" for ticket IDs it never issued.
    let env = TestEnv::new("default = [{ not_found = true }]").await;
    let daemon = env.spawn_daemon(|_| {}).await;
    let long = "x".repeat(10 * 1024);
    let url = format!("sqlite://{}?mode=rwc", env.db_path.display());
    let mut connection = sqlx::SqliteConnection::connect(&url).await.expect("a plain connection");
    // (ticket_id, namespace, workspace, region) as SQL expressions.
    let rows: Vec<[String; 4]> = vec![
        [quote("ctl\u{1}char"), quote("ns"), quote("ws"), "NULL".into()],
        [quote("line\nbreak"), quote("ns"), quote("ws"), "NULL".into()],
        [quote("del\u{7f}"), quote("ns"), quote("ws"), "NULL".into()],
        [quote("ok"), quote("ns\ttab"), quote("ws"), "NULL".into()],
        [quote("ok"), quote("ns"), quote("ws\r\nx-injected: 1"), "NULL".into()],
        [quote(&long), quote("ns"), quote("ws"), "NULL".into()],
        [quote("ok"), quote(&long), quote("ws"), "NULL".into()],
        [quote("ok"), quote("ns"), quote(&long), "NULL".into()],
        [quote("ok-long-region"), quote("ns"), quote("ws"), quote(&long)],
        [quote(".."), quote("ns"), quote("ws"), "NULL".into()],
        [quote("."), quote("ns"), quote("ws"), "NULL".into()],
        [quote("ok-dots"), quote(".."), quote("ws"), "NULL".into()],
        [quote(""), quote("ns"), quote("ws"), "NULL".into()],
        ["NULL".into(), quote("ns"), quote("ws"), "NULL".into()],
        ["x'00'".into(), quote("ns"), quote("ws"), "NULL".into()],
        // Accepted by SQL: the daemon must encode them, and the API says what it thinks. A number
        // becomes text in a TEXT column.
        ["42".into(), quote("ns"), quote("ws"), "NULL".into()],
        [quote("../../../etc/passwd"), quote("ns"), quote("ws"), "NULL".into()],
        [quote("a%2Fb%2e%2e"), quote("ns"), quote("ws"), "NULL".into()],
        [quote("'; DROP TABLE tickets; --"), quote("ns"), quote("ws"), "NULL".into()],
        [quote("\" OR 1=1 --"), quote("../admin"), quote("ws"), "NULL".into()],
        [quote("q?x=1#frag"), quote("ns/../../x"), quote("ws"), "NULL".into()],
        [quote("nul") + " || char(0) || 'after'", quote("ns"), quote("ws"), "NULL".into()],
        [quote("\u{202e}gnp.exe 😀 é"), quote("ns"), quote("ws"), "NULL".into()],
        [quote("%00%ff%"), quote("%2F"), quote("ws"), "NULL".into()],
        // A workspace outside ASCII goes out as the header's raw bytes.
        [quote("odd-workspace"), quote("ns"), quote("wé"), "NULL".into()],
        // A region that is no region.
        [quote("bad-region"), quote("ns"), quote("ws"), quote("../../evil")],
        // Accepted by SQL, unusable by the daemon: a workspace that is no HTTP header value.
        [quote("bad-workspace-nul"), quote("ns"), quote("w") + " || char(0)", "NULL".into()],
    ];
    let mut accepted = 0;
    for [ticket_id, namespace, workspace, region] in &rows {
        let sql = format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace, region) VALUES ({ticket_id}, {namespace}, {workspace}, {region})"
        );
        match sqlx::raw_sql(&sql).execute(&mut connection).await {
            Ok(_) => accepted += 1,
            Err(error) => {
                let message = error.to_string();
                assert!(
                    message.contains("constraint failed") || message.contains("NOT NULL"),
                    "refused for the wrong reason: {message}"
                );
            }
        }
    }
    assert_eq!(accepted, 11, "the rows SQL can judge are refused, the others accepted");
    connection.close().await.expect("the connection closes");

    env.wait_all_final().await;
    let store = env.store().await;
    let tickets = store.list_tickets(None, None, 100).await.expect("tickets are read");
    assert_eq!(tickets.len(), accepted, "the table survived every value");
    for ticket in &tickets {
        assert_eq!(ticket.state, TicketState::Failed, "{ticket:?}");
        let code = ticket.error_code.as_deref().unwrap_or_default();
        let expected = if ticket.key.ticket_id.starts_with("bad-") { "InvalidTicket" } else { "TicketNotFound" };
        assert_eq!(code, expected, "{:?}: {:?}", ticket.key.ticket_id, ticket.error_message);
    }
    store.close().await;

    let requests = env.sim.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        let ticket_id = request.ticket_id.as_deref().unwrap_or_default();
        let owner = tickets
            .iter()
            .find(|ticket| ticket.key.ticket_id == ticket_id && ticket.key.namespace == request.namespace);
        let Some(owner) = owner else { panic!("a request for no row: {request:?}") };
        let expected = format!(
            "/api/v2/namespaces/{}/deployment-drafts/tickets/{}/async-deploy",
            signing::encode(&owner.key.namespace),
            signing::encode(&owner.key.ticket_id)
        );
        assert_eq!(request.path, expected);
        assert_eq!(request.answer, "not found", "{request:?}");
        if owner.key.workspace.is_ascii() {
            assert_eq!(request.workspace.as_deref(), Some(owner.key.workspace.as_str()));
        }
    }
    let polled: std::collections::HashSet<&str> =
        requests.iter().filter_map(|request| request.ticket_id.as_deref()).collect();
    assert_eq!(polled.len(), accepted - 1, "every usable row was polled, the unusable one never");
    eventually("the daemon to stay up", || async { (!daemon.handle.is_finished()).then_some(()) }).await;
    daemon.stop().await.expect("clean shutdown");
}
