//! End-to-end tests of the simulator over real HTTP on 127.0.0.1: our own `FlinkClient` (signer,
//! wire parsing and error classes included) talks to a started [`Simulator`], and raw `reqwest`
//! calls cover what the client never sends (missing headers, replayed nonces, the control API).

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use url::Url;

use super::*;
use crate::clock::SystemClock;
use crate::flink::{
    API_VERSION, ClientSettings, CredentialSource, Credentials, DeployRequest, Endpoints, FlinkClient, FlinkError,
    Polled, TicketRef, signing,
};

const KEY_ID: &str = "LTAI-sim-test";
const SECRET: &str = "sim-test-secret";
/// Only catches hangs; nothing waits for it to pass.
const HANG: Duration = Duration::from_secs(20);

/// A started simulator that stops when the test ends.
struct Running {
    simulator: Simulator,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(scenario: Scenario) -> Running {
    start_with_offset(scenario, 0).await
}

async fn start_with_offset(scenario: Scenario, clock_offset_secs: i64) -> Running {
    let shutdown = CancellationToken::new();
    let settings =
        SimulatorSettings { credentials: vec![(KEY_ID.to_owned(), SECRET.to_owned())], scenario, clock_offset_secs };
    let simulator = Simulator::start("127.0.0.1:0".parse().expect("a valid address"), settings, shutdown.clone())
        .await
        .expect("the simulator binds port 0");
    Running { simulator, shutdown }
}

fn client(simulator: &Simulator, key_id: &str, secret: &str, token: Option<&str>) -> FlinkClient {
    let settings = ClientSettings {
        endpoints: Endpoints {
            override_url: Some(Url::parse(&simulator.base_url()).expect("the base URL parses")),
            region: "cn-hangzhou".into(),
            vpc: false,
        },
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(60),
        max_response_bytes: 1024 * 1024,
        ca_file: None,
    };
    let credentials = Credentials {
        access_key_id: key_id.to_owned(),
        access_key_secret: SecretString::from(secret.to_owned()),
        security_token: token.map(|token| SecretString::from(token.to_owned())),
    };
    let source = CredentialSource { name: "test", credentials: Arc::new(credentials) };
    FlinkClient::new(&settings, source, Arc::new(SystemClock)).expect("the client builds")
}

fn default_client(simulator: &Simulator) -> FlinkClient {
    client(simulator, KEY_ID, SECRET, None)
}

fn ticket(ticket_id: &str) -> TicketRef<'_> {
    TicketRef { namespace: "ns", workspace: "ws-1", ticket_id, region: None }
}

async fn poll(flink: &FlinkClient, ticket_id: &str) -> Result<Polled, FlinkError> {
    tokio::time::timeout(HANG, flink.get_deploy_result(ticket(ticket_id))).await.expect("the poll does not hang")
}

fn steps(value: Value) -> Vec<Step> {
    serde_json::from_value(value).expect("valid steps")
}

fn deploy_of(polled: &Polled) -> &crate::domain::DeployResult {
    match &polled.answer.result {
        crate::domain::KindResult::Deploy(result) => result,
        other => panic!("a deploy result, got {other:?}"),
    }
}

fn status_of(polled: &Polled) -> &str {
    polled.answer.result.ticket_status().map_or("", |status| status.as_wire())
}

/// Headers as `FlinkClient::call` builds them, signed with our key, minus `omit`, plus `extra`
/// (which are signed too).
fn signed_headers(
    simulator: &Simulator,
    method: &str,
    path: &str,
    action: &str,
    omit: &[&str],
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let host = simulator.local_addr().to_string();
    let date = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let nonce = format!("{:032x}", rand::random::<u128>());
    let payload_hash = signing::payload_hash(b"");
    let mut headers: Vec<(&str, &str)> = vec![
        ("host", &host),
        ("x-acs-action", action),
        ("x-acs-version", API_VERSION),
        ("x-acs-date", &date),
        ("x-acs-signature-nonce", &nonce),
        ("x-acs-content-sha256", &payload_hash),
        ("workspace", "ws-1"),
    ];
    headers.retain(|(name, _)| !omit.contains(name));
    headers.extend_from_slice(extra);
    let signed = signing::sign(
        &signing::SigningInput { method, canonical_uri: path, query: &[], headers: &headers, body: b"" },
        KEY_ID,
        SECRET,
    );
    headers
        .iter()
        .chain([&("authorization", signed.authorization.as_str())])
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

/// Sends a request as given and returns the status, headers and JSON body (`null` if not JSON).
async fn send(
    simulator: &Simulator,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let http = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid method");
    let mut request = http.request(method, format!("{}{path}", simulator.base_url())).body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = tokio::time::timeout(HANG, request.send()).await.expect("no hang").expect("an HTTP answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("a complete body");
    (status, headers, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

const POLL_PATH: &str = "/api/v2/namespaces/ns/deployment-drafts/tickets/t-raw/async-deploy";

#[tokio::test]
async fn unscripted_tickets_go_init_executing_finished_and_stay_finished() {
    let running = start(Scenario::default()).await;
    let flink = default_client(&running.simulator);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let polled = poll(&flink, "t-any").await.expect("a successful poll");
        assert!(polled.request_id.is_some());
        statuses.push(status_of(&polled).to_owned());
        if statuses.len() >= 3 {
            assert_eq!(deploy_of(&polled).success, Some(true));
            assert_eq!(deploy_of(&polled).deployment_id, Some(answer::derived_deployment_id("t-any")));
        }
    }
    assert_eq!(statuses, ["INIT", "EXECUTING", "FINISHED", "FINISHED"]);
    assert_eq!(running.simulator.polls_of("t-any"), 4);
    assert_eq!(running.simulator.polls_of("t-never-polled"), 0);
}

#[tokio::test]
async fn a_validation_failure_reaches_the_client_as_issues() {
    let scenario = Scenario::from_toml_str(
        r#"
        [[tickets]]
        id = "t-bad"

        [[tickets.steps]]
        status = "FINISHED"
        success = false
        message = "invalid SQL"
        validation_result = "VALIDATION_RESULT_INVALID_QUERY"
        errors = [{ line = 3, column = 10, end_line = 3, end_column = 14, message = "Object 'orders' not found" }]
        "#,
    )
    .expect("a valid scenario");
    let running = start(scenario).await;
    let polled = poll(&default_client(&running.simulator), "t-bad").await.expect("a successful poll");
    let result = deploy_of(&polled);
    assert_eq!(result.success, Some(false));
    assert_eq!(result.deployment_id, None);
    assert_eq!(result.message.as_deref(), Some("invalid SQL"));
    assert_eq!(result.validation_result.as_deref(), Some("VALIDATION_RESULT_INVALID_QUERY"));
    assert_eq!(result.validation_errors.len(), 1);
    let issue = &result.validation_errors[0];
    assert_eq!((issue.line.clone(), issue.column.clone()), (json!(3), json!(10)));
    assert_eq!((issue.end_line.clone(), issue.end_column.clone()), (json!(3), json!(14)));
    assert_eq!(issue.message.as_deref(), Some("Object 'orders' not found"));
}

#[tokio::test]
async fn throttling_is_rate_limited_with_the_retry_after_hint() {
    let running = start(Scenario::default()).await;
    running.simulator.set_script(
        "t-busy",
        steps(json!([{"error": "Throttling.User", "retry_after_ms": 500}, {"status": "EXECUTING"}])),
    );
    let flink = default_client(&running.simulator);
    let error = poll(&flink, "t-busy").await.expect_err("throttled");
    let FlinkError::RateLimited { error, retry_after } = error else { panic!("expected RateLimited, got {error:?}") };
    assert_eq!(retry_after, Some(Duration::from_millis(500)));
    assert_eq!(error.code.as_deref(), Some("Throttling.User"));
    assert_eq!(error.http_status, Some(429));
    assert!(error.request_id.is_some());
    assert_eq!(status_of(&poll(&flink, "t-busy").await.expect("then answered")), "EXECUTING");
    let answers: Vec<String> = running.simulator.requests().into_iter().map(|entry| entry.answer).collect();
    assert_eq!(answers, ["throttled", "EXECUTING"]);
}

#[tokio::test]
async fn a_dropped_connection_is_a_network_error() {
    let running = start(Scenario::default()).await;
    running.simulator.set_script("t-drop", steps(json!([{"drop": true}, {"status": "INIT"}])));
    let flink = default_client(&running.simulator);
    let error = poll(&flink, "t-drop").await.expect_err("dropped");
    assert!(matches!(error, FlinkError::Network(_)), "{error:?}");
    assert_eq!(status_of(&poll(&flink, "t-drop").await.expect("a new connection works")), "INIT");
    let log = running.simulator.requests();
    assert_eq!((log[0].answer.as_str(), log[0].http_status), ("dropped", None));
}

#[tokio::test]
async fn truncated_and_oversized_2xx_answers_are_decode_errors_and_error_pages_are_transient() {
    let running = start(Scenario::default()).await;
    running.simulator.set_script(
        "t-junk",
        steps(json!([
            {"truncated": true}, {"html": true}, {"garbage_bytes": 5_000_000}, {"body": ""},
            {"body": "Gateway Timeout", "http_status": 504}, {"status": "EXECUTING"}
        ])),
    );
    let flink = default_client(&running.simulator);
    let truncated = poll(&flink, "t-junk").await.expect_err("truncated");
    assert!(matches!(&truncated, FlinkError::Decode(api) if api.http_status == Some(200)), "{truncated:?}");
    let html = poll(&flink, "t-junk").await.expect_err("html");
    assert!(matches!(&html, FlinkError::Transient(api) if api.http_status == Some(502)), "{html:?}");
    assert!(html.message().contains("Bad Gateway"), "{html:?}");
    let huge = poll(&flink, "t-junk").await.expect_err("too large");
    assert!(matches!(&huge, FlinkError::Decode(_)) && huge.message().contains("larger than"), "{huge:?}");
    let empty = poll(&flink, "t-junk").await.expect_err("empty 503");
    assert!(matches!(&empty, FlinkError::Transient(api) if api.http_status == Some(503)), "{empty:?}");
    let text = poll(&flink, "t-junk").await.expect_err("plain-text 504");
    assert!(matches!(&text, FlinkError::Transient(api) if api.http_status == Some(504)), "{text:?}");
    assert!(text.message().contains("Gateway Timeout"), "{text:?}");
    assert_eq!(status_of(&poll(&flink, "t-junk").await.expect("then a real answer")), "EXECUTING");
    let answers: Vec<String> = running.simulator.requests().into_iter().map(|entry| entry.answer).collect();
    assert_eq!(answers, ["truncated", "http 502", "garbage", "text 503", "text 504", "EXECUTING"]);
}

#[tokio::test]
async fn a_wrong_secret_is_a_config_error_quoting_the_server_string_to_sign() {
    let running = start(Scenario::default()).await;
    let error = poll(&client(&running.simulator, KEY_ID, "not-the-secret", None), "t-1").await.expect_err("refused");
    let FlinkError::Config(api) = &error else { panic!("expected Config, got {error:?}") };
    assert_eq!(api.code.as_deref(), Some("SignatureDoesNotMatch"));
    assert_eq!(api.http_status, Some(400));
    let message = api.message.as_deref().unwrap_or("");
    assert!(
        message.starts_with(
            "Specified signature does not match our calculation. server StringToSign is [ACS3-HMAC-SHA256\n"
        ),
        "{message}"
    );
    assert_eq!(running.simulator.requests()[0].answer, "signature mismatch");
    assert_eq!(running.simulator.polls_of("t-1"), 0, "a refused request plays no step");
}

#[tokio::test]
async fn a_request_without_the_workspace_header_is_refused() {
    let running = start(Scenario::default()).await;
    let headers = signed_headers(&running.simulator, "GET", POLL_PATH, POLL_ACTION, &["workspace"], &[]);
    let (status, response_headers, body) = send(&running.simulator, "GET", POLL_PATH, &headers, Vec::new()).await;
    assert_eq!(status, 400);
    assert_eq!(body["Code"], "MissingWorkspace");
    assert!(body["Message"].as_str().unwrap_or("").contains("workspace header is required"), "{body}");
    assert!(body["RequestId"].is_string() && body["HostId"].is_string() && body["Recommend"].is_string());
    assert!(response_headers.contains_key("date"));
    assert_eq!(response_headers["content-type"], "application/json;charset=utf-8");
    let entry = &running.simulator.requests()[0];
    assert_eq!((entry.answer.as_str(), entry.workspace.as_deref()), ("rejected MissingWorkspace", None));
}

#[tokio::test]
async fn awkward_ticket_ids_and_namespaces_round_trip() {
    let running = start(Scenario::default()).await;
    let ticket_id = "a/b c+d:e-ü-日本";
    let namespace = "team/a b";
    running.simulator.set_script(ticket_id, vec![Step::finished_ok()]);
    let flink = default_client(&running.simulator);
    let reference = TicketRef { namespace, workspace: "ws-1", ticket_id, region: None };
    let polled = tokio::time::timeout(HANG, flink.get_deploy_result(reference)).await.expect("no hang");
    assert_eq!(status_of(&polled.expect("the odd id is accepted")), "FINISHED");
    let entry = &running.simulator.requests()[0];
    assert_eq!(entry.ticket_id.as_deref(), Some(ticket_id));
    assert_eq!(entry.namespace, namespace);
    assert_eq!(running.simulator.polls_of(ticket_id), 1);
}

#[tokio::test]
async fn rotated_credentials_take_effect_at_once() {
    let running = start(Scenario::default()).await;
    let old = default_client(&running.simulator);
    poll(&old, "t-1").await.expect("the first key works");
    running.simulator.set_credentials(vec![("LTAI-new".to_owned(), "new-secret".to_owned())]);
    let error = poll(&old, "t-1").await.expect_err("the old key is gone");
    assert!(
        matches!(&error, FlinkError::Credentials(api) if api.code.as_deref() == Some("InvalidAccessKeyId.NotFound"))
    );
    let new = client(&running.simulator, "LTAI-new", "new-secret", None);
    assert_eq!(status_of(&poll(&new, "t-1").await.expect("the new key works")), "EXECUTING");
    let keys: Vec<Option<String>> = running.simulator.requests().into_iter().map(|entry| entry.access_key_id).collect();
    assert_eq!(keys, [Some(KEY_ID.to_owned()), None, Some("LTAI-new".to_owned())], "the log names the accepted key");
}

#[tokio::test]
async fn the_request_log_records_arrival_and_answer() {
    let running = start(Scenario::default()).await;
    running.simulator.set_script("t-log", vec![Step::status("INIT").with_delay_ms(50)]);
    poll(&default_client(&running.simulator), "t-log").await.expect("answered");
    let log = running.simulator.requests();
    assert_eq!(log.len(), 1);
    let entry = &log[0];
    assert_eq!(entry.seq, 0);
    assert_eq!(entry.action, POLL_ACTION);
    assert_eq!(entry.namespace, "ns");
    assert_eq!(entry.workspace.as_deref(), Some("ws-1"));
    assert_eq!(entry.ticket_id.as_deref(), Some("t-log"));
    assert_eq!((entry.answer.as_str(), entry.http_status), ("INIT", Some(200)));
    assert!(entry.finished_at - entry.started_at >= chrono::TimeDelta::milliseconds(50), "{entry:?}");
    let round_trip: LoggedRequest =
        serde_json::from_str(&serde_json::to_string(entry).expect("serialises")).expect("parses back");
    assert_eq!(round_trip.finished_at.timestamp_millis(), entry.finished_at.timestamp_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_does_not_hold_up_other_requests() {
    let running = start(Scenario::default()).await;
    running.simulator.set_script("t-slow", vec![Step::status("INIT").with_delay_ms(60_000)]);
    running.simulator.set_script("t-fast", vec![Step::status("EXECUTING")]);
    let flink = default_client(&running.simulator);
    let slow = tokio::spawn({
        let flink = flink.clone();
        async move { flink.get_deploy_result(ticket("t-slow")).await.map(|_| ()) }
    });
    // The slow poll is in flight once it has taken its step.
    tokio::time::timeout(HANG, async {
        while running.simulator.polls_of("t-slow") == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the slow poll arrives");
    assert_eq!(status_of(&poll(&flink, "t-fast").await.expect("answered meanwhile")), "EXECUTING");
    assert!(!slow.is_finished());
    slow.abort();
}

#[tokio::test]
async fn a_deployed_draft_gets_a_ticket_playing_its_draft_rule() {
    let scenario = Scenario::default().with_draft("draft-bad", vec![Step::status("FAILED")]);
    let running = start(scenario).await;
    let flink = default_client(&running.simulator);
    let request = DeployRequest {
        namespace: "ns",
        workspace: "ws-1",
        draft_id: "draft-bad",
        target: Some("default-queue"),
        skip_validate: false,
        region: None,
    };
    let (ticket_id, request_id) = flink.deploy_draft(&request).await.expect("deployed");
    assert_eq!(ticket_id.len(), 36);
    assert!(request_id.is_some());
    assert_eq!(status_of(&poll(&flink, &ticket_id).await.expect("polled")), "FAILED");

    let other = DeployRequest { draft_id: "draft-other", target: None, skip_validate: true, ..request };
    let (other_ticket, _) = flink.deploy_draft(&other).await.expect("deployed");
    assert_ne!(other_ticket, ticket_id);
    assert_eq!(status_of(&poll(&flink, &other_ticket).await.expect("polled")), "INIT");

    let log = running.simulator.requests();
    assert_eq!(log[0].action, DEPLOY_ACTION);
    assert_eq!(log[0].answer, "submitted");
    assert_eq!(log[0].draft_id.as_deref(), Some("draft-bad"));
    assert_eq!(log[0].ticket_id.as_deref(), Some(ticket_id.as_str()));
}

#[tokio::test]
async fn a_replayed_nonce_is_refused() {
    let running = start(Scenario::default()).await;
    let headers = signed_headers(&running.simulator, "GET", POLL_PATH, POLL_ACTION, &[], &[]);
    let (first, _, body) = send(&running.simulator, "GET", POLL_PATH, &headers, Vec::new()).await;
    assert_eq!((first, body["data"]["ticketStatus"].as_str()), (200, Some("INIT")));
    let (second, _, body) = send(&running.simulator, "GET", POLL_PATH, &headers, Vec::new()).await;
    assert_eq!((second, body["Code"].as_str()), (400, Some("SignatureNonceUsed")));
}

#[tokio::test]
async fn a_skewed_clock_is_refused_once_and_the_client_retries_with_the_date_header_time() {
    let running = start_with_offset(Scenario::default(), 3600).await;
    let flink = default_client(&running.simulator);
    let polled = poll(&flink, "t-1").await.expect("the retry with the server's time is accepted");
    assert_eq!(status_of(&polled), "INIT");
    let answers: Vec<String> = running.simulator.requests().into_iter().map(|request| request.answer).collect();
    assert_eq!(answers, ["rejected InvalidTimeStamp.Expired", "INIT"]);
    assert!((3590..=3610).contains(&flink.clock_offset_secs()), "offset {}", flink.clock_offset_secs());
    let (_, headers, _) = send(&running.simulator, "GET", "/nowhere", &[], Vec::new()).await;
    let date = headers["date"].to_str().expect("ASCII");
    let date = chrono::DateTime::parse_from_rfc2822(date).expect("an HTTP date").with_timezone(&Utc);
    let ahead = date - Utc::now();
    assert!((3500..=3700).contains(&ahead.num_seconds()), "date header {date} is {ahead} ahead");
}

#[tokio::test]
async fn sts_requests_need_a_matching_signed_access_key_header() {
    let running = start(Scenario::default()).await;
    let sts = client(&running.simulator, KEY_ID, SECRET, Some("token-value"));
    assert_eq!(status_of(&poll(&sts, "t-1").await.expect("a consistent STS request")), "INIT");
    let headers = signed_headers(
        &running.simulator,
        "GET",
        POLL_PATH,
        POLL_ACTION,
        &[],
        &[("x-acs-security-token", "token"), ("x-acs-accesskey-id", "someone-else")],
    );
    let (status, _, body) = send(&running.simulator, "GET", POLL_PATH, &headers, Vec::new()).await;
    assert_eq!((status, body["Code"].as_str()), (400, Some("InvalidSecurityToken.MismatchWithAccessKey")));
}

#[tokio::test]
async fn unknown_paths_and_actions_are_invalid_actions() {
    let running = start(Scenario::default()).await;
    let (status, _, body) = send(&running.simulator, "GET", "/api/v2/namespaces/ns/deployments", &[], Vec::new()).await;
    assert_eq!((status, body["Code"].as_str()), (404, Some("InvalidAction.NotFound")));
    let headers = signed_headers(&running.simulator, "GET", POLL_PATH, "ListDeployments", &[], &[]);
    let (status, _, body) = send(&running.simulator, "GET", POLL_PATH, &headers, Vec::new()).await;
    assert_eq!((status, body["Code"].as_str()), (404, Some("InvalidAction.NotFound")));
    let answers: Vec<String> = running.simulator.requests().into_iter().map(|entry| entry.answer).collect();
    assert_eq!(answers, ["unknown api", "unknown api"]);
}

#[tokio::test]
async fn not_found_steps_are_ticket_errors_naming_the_ticket() {
    let running = start(Scenario::default()).await;
    running.simulator.set_script("t-gone", steps(json!([{"not_found": true}])));
    let error = poll(&default_client(&running.simulator), "t-gone").await.expect_err("not found");
    let FlinkError::Ticket(api) = &error else { panic!("expected Ticket, got {error:?}") };
    assert_eq!((api.http_status, api.code.as_deref()), (Some(404), Some("TicketNotFound")));
    assert!(api.message.as_deref().unwrap_or("").contains("t-gone"));
}

#[tokio::test]
async fn the_control_api_drives_a_simulator_from_outside() {
    let running = start(Scenario::default()).await;
    let simulator = &running.simulator;
    let (status, _, body) = send(simulator, "GET", "/_sim/healthz", &[], Vec::new()).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));

    let script = br#"[{"status":"FAILED","message":"JobManager failed"}]"#.to_vec();
    let (status, _, _) = send(simulator, "PUT", "/_sim/tickets/ctl%2F1", &[], script).await;
    assert_eq!(status, 204);
    let flink = default_client(simulator);
    let polled = poll(&flink, "ctl/1").await.expect("polled");
    assert_eq!((status_of(&polled), deploy_of(&polled).message.as_deref()), ("FAILED", Some("JobManager failed")));
    let (_, _, body) = send(simulator, "GET", "/_sim/tickets/ctl%2F1", &[], Vec::new()).await;
    assert_eq!(body, json!({"ticket_id": "ctl/1", "polls": 1}));

    let (status, _, body) = send(simulator, "PUT", "/_sim/tickets/x", &[], br#"[{"stauts":"INIT"}]"#.to_vec()).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap_or("").contains("stauts"), "{body}");

    let (_, _, body) = send(simulator, "GET", "/_sim/requests", &[], Vec::new()).await;
    let log: Vec<LoggedRequest> = serde_json::from_value(body).expect("the log parses");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].ticket_id.as_deref(), Some("ctl/1"));

    let keys = br#"[{"access_key_id":"LTAI-other","access_key_secret":"s"}]"#.to_vec();
    let (status, _, _) = send(simulator, "PUT", "/_sim/credentials", &[], keys).await;
    assert_eq!(status, 204);
    let error = poll(&flink, "ctl/1").await.expect_err("the old key was replaced");
    assert!(matches!(error, FlinkError::Credentials(_)), "{error:?}");
    assert_eq!(status_of(&poll(&client(simulator, "LTAI-other", "s", None), "ctl/1").await.expect("ok")), "FAILED");
}

#[tokio::test]
async fn a_time_based_step_answers_until_its_time_after_the_first_poll_then_the_script_moves_on() {
    let scenario = Scenario::from_toml_str(
        r#"
        [[tickets]]
        prefix = "timed-"
        steps = [{ status = "INIT" }, { status = "EXECUTING", until_ms = 400 }, { status = "FINISHED", success = true }]
        "#,
    )
    .expect("a time-based scenario parses");
    assert_eq!(scenario.tickets[0].steps[1], Step::status_until("EXECUTING", 400));
    let running = start(scenario).await;
    let flink = default_client(&running.simulator);
    let first = std::time::Instant::now();
    let mut statuses = vec![status_of(&poll(&flink, "timed-1").await.unwrap()).to_owned()];
    let finished_after = loop {
        // Polls paced at 25 ms: the step changes by the simulator's clock, not by the count.
        tokio::time::sleep(Duration::from_millis(25)).await;
        let asked = std::time::Instant::now();
        let status = status_of(&poll(&flink, "timed-1").await.unwrap()).to_owned();
        statuses.push(status.clone());
        if status == "FINISHED" {
            break asked.duration_since(first);
        }
        assert!(first.elapsed() < Duration::from_secs(10), "never finished: {statuses:?}");
    };
    assert_eq!(statuses[0], "INIT");
    assert!(statuses.len() > 5, "EXECUTING for 400 ms at a poll every 25 ms: {statuses:?}");
    assert!(statuses[1..statuses.len() - 1].iter().all(|status| status == "EXECUTING"), "{statuses:?}");
    assert!(finished_after >= Duration::from_millis(390), "finished {finished_after:?} after the first poll");
    assert_eq!(status_of(&poll(&flink, "timed-1").await.unwrap()), "FINISHED", "and stays finished");
    // Another ticket's clock starts at its own first poll.
    assert_eq!(status_of(&poll(&flink, "timed-2").await.unwrap()), "INIT");
    assert_eq!(status_of(&poll(&flink, "timed-2").await.unwrap()), "EXECUTING");
}

#[test]
fn until_ms_belongs_to_status_steps_only() {
    let error = Scenario::from_toml_str(r#"default = [{ error = "Throttling", until_ms = 5 }]"#).unwrap_err();
    assert!(error.to_string().contains("`until_ms` does not apply to a `error` step"), "{error}");
    let round_trip: Step = toml::Value::try_from(Step::status_until("EXECUTING", 9)).unwrap().try_into().unwrap();
    assert_eq!(round_trip, Step::status_until("EXECUTING", 9));
}

mod kinds {
    use super::*;
    use crate::domain::{KindResult, Outcome, TicketKind};
    use crate::flink::{HotUpdateRequest, ResourcePlanRequest, ValidateRequest};

    async fn poll_kind(flink: &FlinkClient, kind: TicketKind, ticket_id: &str) -> Polled {
        tokio::time::timeout(HANG, flink.get_result(kind, ticket(ticket_id)))
            .await
            .expect("the poll does not hang")
            .expect("a successful poll")
    }

    #[tokio::test]
    async fn every_kind_is_submitted_and_polled_on_its_own_signed_path() {
        let plan = "{ \"ssgProfiles\" : [ {\"name\":\"默认 ä\", \"cpu\":1.0} ],\n  \"nodes\":[] }";
        let scenario = Scenario::default()
            .with_submit(TicketKind::Validate, "draft-1", vec![Step::status("EXECUTING"), Step::finished_ok()])
            .with_submit(TicketKind::ResourcePlan, "dep-1", {
                let mut step = StatusStep::from_status("FINISHED");
                step.plan = Some(plan.to_owned());
                vec![Step::Status(step)]
            });
        let running = start(scenario).await;
        let flink = default_client(&running.simulator);
        let validate = flink
            .validate_draft(&ValidateRequest {
                namespace: "ns",
                workspace: "ws-1",
                draft_id: "draft-1",
                target: Some("queue-a"),
                region: None,
            })
            .await
            .expect("validate submitted");
        let conf = vec![("taskmanager.numberOfTaskSlots".to_owned(), "2".to_owned())];
        let resource_plan = flink
            .generate_resource_plan(&ResourcePlanRequest {
                namespace: "ns",
                workspace: "ws-1",
                deployment_id: "dep-1",
                flink_conf: &conf,
                region: None,
            })
            .await
            .expect("resource plan submitted");
        let hot_update = flink
            .hot_update_job(&HotUpdateRequest { namespace: "ns", workspace: "ws-1", job_id: "job-1", region: None })
            .await
            .expect("hot update submitted");

        assert_eq!(status_of(&poll_kind(&flink, TicketKind::Validate, &validate.ticket_id).await), "EXECUTING");
        let passed = poll_kind(&flink, TicketKind::Validate, &validate.ticket_id).await;
        assert_eq!(passed.answer.result.outcome(), Outcome::Succeeded);
        let planned = poll_kind(&flink, TicketKind::ResourcePlan, &resource_plan.ticket_id).await;
        let KindResult::ResourcePlan(result) = &planned.answer.result else { panic!("a resource plan") };
        assert_eq!(result.plan.as_deref(), Some(plan), "the plan arrives byte for byte");
        let mut hot_statuses = Vec::new();
        for _ in 0..3 {
            hot_statuses
                .push(status_of(&poll_kind(&flink, TicketKind::HotUpdate, &hot_update.ticket_id).await).to_owned());
        }
        assert_eq!(hot_statuses, ["INIT", "HOT_UPDATING", "HOT_UPDATED"]);

        let log = running.simulator.requests();
        assert!(log.iter().all(|entry| entry.http_status == Some(200)), "every signature checked out: {log:#?}");
        let submits: Vec<(&str, &str, &str)> = log
            .iter()
            .filter(|entry| entry.answer == "submitted")
            .map(|entry| (entry.action.as_str(), entry.path.as_str(), entry.body.as_deref().unwrap_or("?")))
            .collect();
        assert_eq!(
            submits,
            [
                (
                    "ValidateDeploymentDraftAsync",
                    "/api/v2/namespaces/ns/deployment-drafts/async-validate",
                    r#"{"deploymentDraftId":"draft-1","deploymentTargetName":"queue-a"}"#
                ),
                (
                    "GenerateResourcePlanWithFlinkConfAsync",
                    "/api/v2/namespaces/ns/deployments/dep-1/resource-plan%3AasyncGenerate",
                    r#"{"taskmanager.numberOfTaskSlots":"2"}"#
                ),
                ("HotUpdateJob", "/api/v2/namespaces/ns/jobs/job-1%3AhotUpdate", ""),
            ]
        );
        let plan_poll =
            log.iter().find(|entry| entry.kind == Some(TicketKind::ResourcePlan) && entry.answer == "FINISHED");
        assert_eq!(
            plan_poll.expect("the plan poll is logged").path,
            format!(
                "/api/v2/namespaces/ns/deployments/tickets/{}/resource-plan%3AasyncGenerate",
                resource_plan.ticket_id
            )
        );
    }

    #[tokio::test]
    async fn the_same_id_on_two_kinds_plays_two_scripts() {
        let scenario = Scenario::default()
            .with_kind_ticket(
                TicketKind::Validate,
                "t-1",
                vec![Step::Status({
                    let mut step = StatusStep::from_status("FAILED");
                    step.message = Some("validator crashed".to_owned());
                    step
                })],
            )
            .with_kind_ticket(TicketKind::Deploy, "t-1", vec![Step::finished_ok()]);
        let running = start(scenario).await;
        let flink = default_client(&running.simulator);
        let validate = poll_kind(&flink, TicketKind::Validate, "t-1").await;
        let deploy = poll_kind(&flink, TicketKind::Deploy, "t-1").await;
        assert_eq!(validate.answer.result.outcome(), Outcome::Failed { error: None });
        assert_eq!(validate.answer.result.columns().message, Some("validator crashed"));
        assert_eq!(deploy.answer.result.outcome(), Outcome::Succeeded);
        assert_eq!(running.simulator.polls_of_kind(TicketKind::Validate, "t-1"), 1);
        assert_eq!(running.simulator.polls_of("t-1"), 1);
    }

    #[tokio::test]
    async fn a_raw_colon_in_place_of_percent_3a_is_not_the_api() {
        let running = start(Scenario::default()).await;
        for path in ["/api/v2/namespaces/ns/jobs/job-1:hotUpdate", "/api/v2/namespaces/ns/jobs/job-1%3ahotUpdate"] {
            let headers = signed_headers(&running.simulator, "POST", path, "HotUpdateJob", &[], &[]);
            let (status, _, body) = send(&running.simulator, "POST", path, &headers, Vec::new()).await;
            assert_eq!((status, body["Code"].as_str()), (404, Some("InvalidAction.NotFound")), "{path}");
        }
    }

    #[tokio::test]
    async fn submits_with_the_wrong_body_are_refused() {
        let running = start(Scenario::default()).await;
        let cases = [
            ("/api/v2/namespaces/ns/jobs/job-1%3AhotUpdate", "HotUpdateJob", r#"{"x":"1"}"#),
            ("/api/v2/namespaces/ns/deployment-drafts/async-validate", "ValidateDeploymentDraftAsync", "{}"),
            (
                "/api/v2/namespaces/ns/deployment-drafts/async-validate",
                "ValidateDeploymentDraftAsync",
                r#"{"deploymentDraftId":"d","deploymentTarget":{"mode":"PER_JOB","name":"q"}}"#,
            ),
            (
                "/api/v2/namespaces/ns/deployments/dep-1/resource-plan%3AasyncGenerate",
                "GenerateResourcePlanWithFlinkConfAsync",
                "[1]",
            ),
        ];
        for (path, action, body) in cases {
            let hash = signing::payload_hash(body.as_bytes());
            let host = running.simulator.local_addr().to_string();
            let date = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            let nonce = format!("{:032x}", rand::random::<u128>());
            let headers: Vec<(&str, &str)> = vec![
                ("host", &host),
                ("x-acs-action", action),
                ("x-acs-version", API_VERSION),
                ("x-acs-date", &date),
                ("x-acs-signature-nonce", &nonce),
                ("x-acs-content-sha256", &hash),
                ("workspace", "ws-1"),
                ("content-type", "application/json; charset=utf-8"),
            ];
            let signed = signing::sign(
                &signing::SigningInput {
                    method: "POST",
                    canonical_uri: path,
                    query: &[],
                    headers: &headers,
                    body: body.as_bytes(),
                },
                KEY_ID,
                SECRET,
            );
            let owned: Vec<(String, String)> = headers
                .iter()
                .chain([&("authorization", signed.authorization.as_str())])
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect();
            let (status, _, answer) = send(&running.simulator, "POST", path, &owned, body.as_bytes().to_vec()).await;
            assert_eq!(
                (status, answer["errorCode"].as_str()),
                (400, Some("InvalidParameter")),
                "{action} {body}: {answer}"
            );
        }
    }
}
