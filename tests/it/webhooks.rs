//! Webhooks end to end: the simulated API finishes tickets, the daemon (in-process, or the real
//! binary where a kill is involved) sends them to real receivers on 127.0.0.1, and the tests
//! check what arrived (signatures verified here with hmac/sha2/base64 directly) and what the
//! `webhook_deliveries` table says.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flink_ticketd::config::Config;
use flink_ticketd::domain::TicketState;
use flink_ticketd::store::Delivery;
use flink_ticketd::webhook::{TICKET_URL_NOT_ALLOWED, signing};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::harness::{Driven, Received, Reply, TestEnv, WebhookSink, eventually, quote};

/// Two secrets, as during a rotation: every message carries a signature for each.
const SECRETS: [&str; 2] =
    ["whsec_aW50ZWdyYXRpb24tdGVzdC1zZWNyZXQtbnVtYmVyLTE=", "whsec_aW50ZWdyYXRpb24tdGVzdC1zZWNyZXQtbnVtYmVyLTI="];

/// What the simulated API answers, by ticket ID prefix; each last step repeats forever.
const SCENARIO: &str = r#"
[[tickets]]
prefix = "ok-"
steps = [{ status = "EXECUTING" }, { status = "FINISHED", success = true }]

[[tickets]]
prefix = "bad-sql-"
steps = [{ status = "FINISHED", success = false, validation_result = "VALIDATION_RESULT_INVALID_QUERY", errors = [{ line = 3, column = 10, end_line = 3, end_column = 14, message = "Object 'orders' not found" }] }]

[[tickets]]
prefix = "missing-"
steps = [{ not_found = true }]
"#;

/// The test daemon's `[webhook]`: these receivers, both secrets, this schedule (milliseconds).
fn webhooks(urls: &[&str], schedule_ms: &[u64]) -> impl FnOnce(&mut Config) + use<> {
    let urls: Vec<url::Url> =
        urls.iter().map(|url| flink_ticketd::webhook::parse_webhook_url(url).expect("a receiver URL")).collect();
    let schedule: Vec<Duration> = schedule_ms.iter().map(|ms| Duration::from_millis(*ms)).collect();
    move |config: &mut Config| {
        config.webhook.urls = urls;
        config.webhook.secrets = SECRETS
            .iter()
            .map(|secret| flink_ticketd::webhook::decode_webhook_secret(secret).expect("a valid secret"))
            .collect();
        config.webhook.schedule = schedule;
        config.webhook.timeout = Duration::from_secs(20);
        config.webhook.lease = Duration::from_secs(30);
        config.webhook.max_in_flight = 8;
        config.shutdown_grace = Duration::from_millis(300);
    }
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` computed here, not by the crate.
fn independent_signature(secret: &str, webhook_id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = BASE64.decode(secret.strip_prefix("whsec_").expect("a whsec_ secret")).expect("base64 key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{webhook_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Checks the Standard Webhooks headers of a request and that every secret's signature is there.
fn assert_signed(request: &Received) {
    assert_eq!(request.method, "POST");
    assert_eq!(request.header("content-type"), "application/json");
    let webhook_id = request.header("webhook-id");
    assert!(!webhook_id.is_empty(), "a webhook-id header");
    let timestamp = request.header("webhook-timestamp");
    let seconds: i64 = timestamp.parse().expect("webhook-timestamp is Unix seconds");
    assert!((chrono::Utc::now().timestamp() - seconds).abs() < 60, "the timestamp is now: {seconds}");
    let signatures: Vec<&str> = request.header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), SECRETS.len(), "one signature per secret: {signatures:?}");
    for secret in SECRETS {
        let expected = independent_signature(secret, webhook_id, timestamp, &request.body);
        assert!(signatures.contains(&expected.as_str()), "no valid signature for a secret in {signatures:?}");
    }
}

/// Every delivery row, oldest first.
async fn deliveries(env: &TestEnv) -> Vec<Delivery> {
    let store = env.store().await;
    let mut rows = store.list_deliveries(None, 1000).await.expect("deliveries are read");
    store.close().await;
    rows.sort_by_key(|delivery| delivery.id);
    rows
}

/// Waits until every delivery is delivered or dead and there are `count` of them.
async fn settled_deliveries(env: &TestEnv, count: usize) -> Vec<Delivery> {
    eventually(&format!("{count} settled deliveries"), || async {
        let rows = deliveries(env).await;
        (rows.len() == count && rows.iter().all(|delivery| delivery.state != "pending")).then_some(rows)
    })
    .await
}

/// Turns the claim steps until nothing is pending, then returns the deliveries, checking that
/// there are `count` of them and that every one is delivered or dead.
async fn settle_deliveries(env: &TestEnv, driven: &Driven, count: usize) -> Vec<Delivery> {
    driven.settle().await;
    let rows = deliveries(env).await;
    assert_eq!(rows.len(), count, "{rows:?}");
    assert!(rows.iter().all(|delivery| delivery.state != "pending"), "{rows:?}");
    rows
}

async fn insert_with_url(env: &TestEnv, ticket_id: &str, url: &str) {
    env.execute_sql(&format!(
        "INSERT INTO tickets (ticket_id, namespace, workspace, webhook_url) VALUES ({}, 'ns', 'ws', {})",
        quote(ticket_id),
        quote(url)
    ))
    .await;
}

#[tokio::test]
async fn every_receiver_gets_one_delivery_per_finished_ticket_signed_with_every_secret() {
    let env = TestEnv::new(SCENARIO).await;
    let mut first = WebhookSink::accepting().await;
    let mut second = WebhookSink::accepting().await;
    let driven = env.driven(webhooks(&[&first.url, &second.url], &[10])).await;
    for ticket_id in ["ok-1", "bad-sql-1", "missing-1"] {
        env.insert(ticket_id, "ns", "ws").await;
    }
    let rows = settle_deliveries(&env, &driven, 6).await;
    assert!(rows.iter().all(|row| row.state == "delivered" && row.attempts == 1), "{rows:#?}");
    assert!(rows.iter().all(|row| row.last_http_status == Some(204) && row.delivered_at.is_some()));

    let mut ids_per_receiver = Vec::new();
    for sink in [&mut first, &mut second] {
        let requests = sink.drain();
        assert_eq!(requests.len(), 3, "one request per finished ticket");
        let mut ids = Vec::new();
        for request in &requests {
            assert_signed(request);
            assert_eq!(request.path, "/hooks/flink");
            let body = request.json();
            let state = body["data"]["state"].as_str().expect("a state").to_owned();
            assert_eq!(body["type"], format!("ticket.{state}"));
            ids.push((body["data"]["ticket_id"].as_str().unwrap().to_owned(), request.header("webhook-id").to_owned()));
        }
        ids.sort();
        ids_per_receiver.push(ids);
    }
    assert_eq!(ids_per_receiver[0], ids_per_receiver[1], "both receivers see the same webhook-id per ticket");
    let states: Vec<&str> = ["missing-1", "bad-sql-1", "ok-1"]
        .iter()
        .map(|ticket| ids_per_receiver[0].iter().find(|(id, _)| id == ticket).map(|(_, hook)| hook.as_str()).unwrap())
        .collect();
    assert!(states[0].ends_with(".failed") && states[1].ends_with(".failed") && states[2].ends_with(".succeeded"));
    driven.stop().await;
}

#[tokio::test]
async fn the_payload_carries_validation_errors_with_line_and_column() {
    let env = TestEnv::new(SCENARIO).await;
    let mut sink = WebhookSink::accepting().await;
    let daemon = env.spawn_daemon(webhooks(&[&sink.url], &[10])).await;
    env.insert("bad-sql-2", "ns", "ws").await;
    let request = sink.next().await;
    assert_signed(&request);
    let body = request.json();
    assert_eq!(body["type"], "ticket.failed");
    let data = &body["data"];
    assert_eq!(data["ticket_status"], "FINISHED");
    assert_eq!(data["deploy_success"], false);
    assert_eq!(data["validation_result"], "VALIDATION_RESULT_INVALID_QUERY");
    let issue = &data["validation_errors"][0];
    assert_eq!((issue["line"].as_i64(), issue["column"].as_i64()), (Some(3), Some(10)));
    assert_eq!((issue["end_line"].as_i64(), issue["end_column"].as_i64()), (Some(3), Some(14)));
    assert_eq!(issue["message"], "Object 'orders' not found");
    for key in ["ticket_id", "namespace", "workspace", "polls", "created_at", "finished_at", "error_code"] {
        assert!(data.get(key).is_some(), "{key} missing from {data}");
    }
    daemon.stop().await.expect("the daemon stops cleanly");
}

#[tokio::test]
async fn a_receiver_failing_its_first_requests_gets_the_event_on_the_next_attempt_with_the_same_webhook_id() {
    let env = TestEnv::new(SCENARIO).await;
    let failures = 2;
    let mut sink =
        WebhookSink::start(move |n| if n < failures { Reply::Status(500) } else { Reply::Status(200) }).await;
    let driven = env.driven(webhooks(&[&sink.url], &[10, 10, 10])).await;
    env.insert("ok-retry", "ns", "ws").await;
    let rows = settle_deliveries(&env, &driven, 1).await;
    let mut requests = Vec::new();
    for _ in 0..=failures {
        requests.push(sink.next().await);
    }
    let ids: Vec<&str> = requests.iter().map(|request| request.header("webhook-id")).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "the same webhook-id on every attempt: {ids:?}");
    requests.iter().for_each(assert_signed);
    assert_eq!(rows[0].state, "delivered");
    assert_eq!(rows[0].attempts, 3);
    assert_eq!(rows[0].last_http_status, Some(200));
    assert_eq!(rows[0].webhook_id, ids[0]);
    driven.stop().await;
}

#[tokio::test]
async fn a_410_makes_the_delivery_dead_at_once() {
    let env = TestEnv::new(SCENARIO).await;
    let mut sink = WebhookSink::start(|_| Reply::Status(410)).await;
    let driven = env.driven(webhooks(&[&sink.url], &[10, 10, 10])).await;
    env.insert("ok-gone", "ns", "ws").await;
    let rows = settle_deliveries(&env, &driven, 1).await;
    assert_eq!(rows[0].state, "dead");
    assert_eq!(rows[0].attempts, 1);
    assert_eq!(rows[0].last_http_status, Some(410));
    assert!(rows[0].last_error.as_deref().unwrap_or_default().contains("410"));
    assert_eq!(sink.drain().len(), 1, "no attempt after the 410");
    driven.stop().await;
}

#[tokio::test]
async fn the_last_failed_attempt_makes_the_delivery_dead() {
    let env = TestEnv::new(SCENARIO).await;
    let mut sink = WebhookSink::start(|_| Reply::Status(503)).await;
    let driven = env.driven(webhooks(&[&sink.url], &[10, 10])).await;
    env.insert("ok-down", "ns", "ws").await;
    let rows = settle_deliveries(&env, &driven, 1).await;
    assert_eq!((rows[0].state.as_str(), rows[0].attempts), ("dead", 3), "two retries after the first attempt");
    assert_eq!(rows[0].last_http_status, Some(503));
    assert_eq!(sink.drain().len(), 3);
    driven.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let env = TestEnv::new(SCENARIO).await;
    let mut sink = WebhookSink::start(|n| match n {
        0 => Reply::WithHeader(503, "retry-after", "1".to_owned()),
        _ => Reply::Status(204),
    })
    .await;
    let daemon = env.spawn_daemon(webhooks(&[&sink.url], &[10, 10])).await;
    env.insert("ok-later", "ns", "ws").await;
    let first = sink.next().await;
    let second = sink.next().await;
    let gap = second.at - first.at;
    assert!(gap >= Duration::from_millis(990), "the retry came {gap:?} after the 503, not after Retry-After: 1");
    assert_eq!(first.header("webhook-id"), second.header("webhook-id"));
    let rows = settled_deliveries(&env, 1).await;
    assert_eq!((rows[0].state.as_str(), rows[0].attempts), ("delivered", 2));
    daemon.stop().await.expect("the daemon stops cleanly");
}

#[tokio::test]
async fn retry_after_zero_or_a_past_date_does_not_bring_the_next_attempt_forward_past_the_floor() {
    let env = TestEnv::new(SCENARIO).await;
    let mut sink = WebhookSink::start(|n| match n {
        0 => Reply::WithHeader(503, "retry-after", "0".to_owned()),
        1 => Reply::WithHeader(503, "retry-after", "Thu, 01 Jan 1970 00:00:00 GMT".to_owned()),
        _ => Reply::Status(204),
    })
    .await;
    let daemon = env.spawn_daemon(webhooks(&[&sink.url], &[400, 400])).await;
    env.insert("ok-eager", "ns", "ws").await;
    let first = sink.next().await;
    let second = sink.next().await;
    let third = sink.next().await;
    for gap in [second.at - first.at, third.at - second.at] {
        assert!(gap >= Duration::from_millis(390), "an attempt came {gap:?} after the last, before its step");
    }
    let rows = settled_deliveries(&env, 1).await;
    assert_eq!((rows[0].state.as_str(), rows[0].attempts), ("delivered", 3));
    daemon.stop().await.expect("the daemon stops cleanly");
}

#[tokio::test]
async fn a_receiver_that_never_answers_delays_neither_polling_nor_other_receivers() {
    let env = TestEnv::new(SCENARIO).await;
    let mut silent = WebhookSink::start(|_| Reply::Hang).await;
    let mut healthy = WebhookSink::accepting().await;
    let daemon = env
        .spawn_daemon(|config| {
            webhooks(&[&silent.url, &healthy.url], &[10])(config);
            // Two sending slots: the silent receiver may hold one, never both.
            config.webhook.max_in_flight = 2;
        })
        .await;
    env.insert("ok-a", "ns", "ws").await;
    let hanging = silent.next().await;
    assert_signed(&hanging);

    // While that request hangs, later tickets are polled, finish, and reach the other receiver.
    for ticket_id in ["ok-b", "missing-c", "bad-sql-d"] {
        env.insert(ticket_id, "ns", "ws").await;
    }
    let mut announced = Vec::new();
    for _ in 0..4 {
        announced.push(healthy.next().await.json()["data"]["ticket_id"].as_str().unwrap().to_owned());
    }
    announced.sort();
    assert_eq!(announced, ["bad-sql-d", "missing-c", "ok-a", "ok-b"]);

    let rows = deliveries(&env).await;
    let silent_rows: Vec<&Delivery> = rows.iter().filter(|row| row.url == silent.url).collect();
    assert_eq!(silent_rows.len(), 4);
    // Rows leased but never attempted are handed to this daemon's loop, not in flight.
    let in_flight: Vec<&&Delivery> =
        silent_rows.iter().filter(|row| row.lease_owner.is_some() && row.attempts > 0).collect();
    assert_eq!(in_flight.len(), 1, "exactly the first attempt is in flight: {silent_rows:#?}");
    assert!(silent_rows.iter().all(|row| row.state == "pending"));
    assert!(silent.drain().is_empty(), "the silent receiver got no second request while one hangs");

    daemon.stop().await.expect("the daemon stops within its grace period");
    let after = deliveries(&env).await;
    assert!(after.iter().all(|row| row.lease_owner.is_none()), "shutdown hands every lease back");
}

#[tokio::test]
async fn deliveries_pending_when_the_daemon_is_killed_go_out_after_restart() {
    let env = TestEnv::new(SCENARIO).await;
    let mut sink = WebhookSink::start(|n| if n == 0 { Reply::Hang } else { Reply::Status(204) }).await;
    let webhook = format!(
        "[webhook]\nurls = [{url:?}]\nsecret = [{one:?}, {two:?}]\nschedule = [\"50ms\"]\ntimeout = \"1s\"\nlease = \"1500ms\"\n",
        url = sink.url,
        one = SECRETS[0],
        two = SECRETS[1],
    );
    // The schema must exist before the ticket is inserted.
    env.store().await.close().await;
    let daemon = env.spawn_binary_with(&webhook, &[]);
    env.insert("ok-crash", "ns", "ws").await;
    let before = sink.next().await;
    daemon.kill();

    let in_flight = deliveries(&env).await;
    assert_eq!(in_flight.len(), 1);
    assert_eq!((in_flight[0].state.as_str(), in_flight[0].attempts), ("pending", 1));
    assert!(in_flight[0].lease_owner.is_some(), "the killed daemon's claim is still on the row");

    let restarted = env.spawn_binary_with(&webhook, &[]);
    let after = sink.next().await;
    assert_signed(&after);
    assert_eq!(after.header("webhook-id"), before.header("webhook-id"));
    assert_eq!(after.body, before.body, "the same body is sent again");
    let rows = settled_deliveries(&env, 1).await;
    assert_eq!((rows[0].state.as_str(), rows[0].attempts), ("delivered", 2), "the schedule went on from the row");
    drop(restarted);
}

#[tokio::test]
async fn per_ticket_urls_are_honoured_only_when_allowed() {
    let mut configured = WebhookSink::accepting().await;
    let mut own = WebhookSink::accepting().await;

    let allowed = TestEnv::new(SCENARIO).await;
    let driven = allowed
        .driven(|config| {
            webhooks(&[&configured.url], &[10])(config);
            config.webhook.allow_ticket_urls = true;
            config.webhook.allow_private_ticket_urls = true;
        })
        .await;
    insert_with_url(&allowed, "ok-own", &own.url).await;
    let rows = settle_deliveries(&allowed, &driven, 2).await;
    assert!(rows.iter().all(|row| row.state == "delivered"));
    assert_eq!(own.next().await.header("webhook-id"), configured.next().await.header("webhook-id"));
    assert_eq!(allowed.ticket("ok-own").await.webhook_note, None);
    driven.stop().await;

    let refused = TestEnv::new(SCENARIO).await;
    let driven = refused.driven(webhooks(&[&configured.url], &[10])).await;
    insert_with_url(&refused, "ok-not-own", &own.url).await;
    let rows = settle_deliveries(&refused, &driven, 1).await;
    assert_eq!(rows[0].url, configured.url);
    assert_eq!(configured.next().await.json()["data"]["ticket_id"], "ok-not-own");
    assert_eq!(refused.ticket("ok-not-own").await.webhook_note.as_deref(), Some(TICKET_URL_NOT_ALLOWED));
    assert!(own.drain().is_empty(), "the ticket's own URL got nothing");
    driven.stop().await;
}

#[tokio::test]
async fn a_ticket_url_too_long_once_percent_encoded_is_noted_and_the_ticket_still_finishes_and_announces() {
    let env = TestEnv::new(SCENARIO).await;
    let mut configured = WebhookSink::accepting().await;
    let mut own = WebhookSink::accepting().await;
    let driven = env
        .driven(|config| {
            webhooks(&[&configured.url], &[10])(config);
            config.webhook.allow_ticket_urls = true;
            config.webhook.allow_private_ticket_urls = true;
        })
        .await;
    // About 330 characters as written (the column's 2048 limit holds), nine times longer for
    // each CJK character once percent-encoded.
    let long = format!("{}/{}", own.url, "部署".repeat(150));
    assert!(long.chars().count() < 2048 && url::Url::parse(&long).unwrap().as_str().len() > 2048);
    insert_with_url(&env, "ok-long-url", &long).await;

    let rows = settle_deliveries(&env, &driven, 1).await;
    let ticket = env.ticket("ok-long-url").await;
    assert_eq!(ticket.state, TicketState::Succeeded);
    let note = ticket.webhook_note.expect("the ticket says why its own URL was not used");
    assert!(note.contains("percent-encoded") && note.contains("2048"), "{note}");
    assert_eq!(configured.next().await.json()["data"]["ticket_id"], "ok-long-url");
    assert_eq!((rows[0].url.as_str(), rows[0].state.as_str()), (configured.url.as_str(), "delivered"));
    assert!(own.drain().is_empty(), "the over-long URL got nothing");
    driven.stop().await;
}

#[tokio::test]
async fn lease_owners_carry_64_random_bits_so_two_hosts_of_one_name_and_pid_never_share_a_prefix() {
    let env = TestEnv::new(SCENARIO).await;
    let mut silent = WebhookSink::start(|_| Reply::Hang).await;
    let daemon = env.spawn_daemon(webhooks(&[&silent.url], &[10])).await;
    env.insert("ok-held", "ns", "ws").await;
    silent.next().await;
    let owner = deliveries(&env).await[0].lease_owner.clone().expect("the attempt in flight holds a lease");
    let (prefix, claim) = owner.split_once('#').expect("prefix#claim");
    assert!(claim.starts_with("webhook-"), "{owner}");
    let random = prefix.rsplit(':').next().unwrap_or_default();
    assert!(random.len() >= 16 && random.chars().all(|c| c.is_ascii_hexdigit()), "{owner}");
    assert_ne!(flink_ticketd::store::lease_owner_prefix("host"), flink_ticketd::store::lease_owner_prefix("host"));
    daemon.stop().await.expect("the daemon stops cleanly");
}

#[tokio::test]
async fn retry_of_a_ticket_that_finishes_again_makes_new_deliveries_with_new_ids() {
    let env = TestEnv::new(SCENARIO).await;
    let mut sink = WebhookSink::accepting().await;
    let driven = env.driven(webhooks(&[&sink.url], &[10])).await;
    env.insert("ok-twice", "ns", "ws").await;
    settle_deliveries(&env, &driven, 1).await;
    let first = sink.next().await;

    let retried = env.cli(&["retry", "ok-twice"]);
    assert_eq!(retried.code, Some(0), "{}", retried.stderr);
    let rows = settle_deliveries(&env, &driven, 2).await;
    let second = sink.next().await;
    assert_ne!(first.header("webhook-id"), second.header("webhook-id"));
    assert_eq!(second.json()["data"]["ticket_id"], "ok-twice");
    assert_ne!(rows[0].webhook_id, rows[1].webhook_id);
    assert!(rows.iter().all(|row| row.state == "delivered" && row.attempts == 1));
    driven.stop().await;
}

#[tokio::test]
async fn redirects_are_not_followed_and_endless_answers_are_not_read_to_the_end() {
    let env = TestEnv::new(SCENARIO).await;
    let mut target = WebhookSink::accepting().await;
    let location = target.url.clone();
    let redirecting = WebhookSink::start(move |_| Reply::WithHeader(302, "location", location.clone())).await;
    let endless_ok = WebhookSink::start(|_| Reply::Endless(200)).await;
    let endless_error = WebhookSink::start(|_| Reply::Endless(500)).await;
    // With a 20 s timeout, reading an endless body to the end would take 40 s per receiver,
    // longer than the test waits.
    let driven = env.driven(webhooks(&[&redirecting.url, &endless_ok.url, &endless_error.url], &[10])).await;
    env.insert("ok-odd", "ns", "ws").await;
    let rows = settle_deliveries(&env, &driven, 3).await;
    let row = |url: &str| rows.iter().find(|row| row.url == url).expect("a row per receiver");

    let redirected = row(&redirecting.url);
    assert_eq!((redirected.state.as_str(), redirected.attempts), ("dead", 2));
    assert_eq!(redirected.last_http_status, Some(302));
    assert!(redirected.last_error.as_deref().unwrap_or_default().contains("redirect not followed"));
    assert!(target.drain().is_empty(), "the redirect target got nothing");

    let accepted = row(&endless_ok.url);
    assert_eq!((accepted.state.as_str(), accepted.attempts), ("delivered", 1));
    let refused = row(&endless_error.url);
    assert_eq!((refused.state.as_str(), refused.last_http_status), ("dead", Some(500)));
    let error = refused.last_error.as_deref().unwrap_or_default();
    assert!(error.starts_with("HTTP 500") && error.contains("xxx") && error.len() < 400, "{error}");
    driven.stop().await;
}

#[tokio::test]
async fn webhooks_list_and_resend_send_a_dead_delivery_again_with_the_same_webhook_id() {
    let env = TestEnv::new(SCENARIO).await;
    let mut sink = WebhookSink::start(|n| if n == 0 { Reply::Status(410) } else { Reply::Status(204) }).await;
    let daemon = env.spawn_daemon(webhooks(&[&sink.url], &[10])).await;
    env.insert("ok-resend", "ns", "ws").await;
    let first = sink.next().await;
    let dead = settled_deliveries(&env, 1).await;
    assert_eq!(dead[0].state, "dead");

    let listed = env.cli(&["webhooks", "list", "--state", "dead", "--json"]);
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let listed: Value = serde_json::from_str(&listed.stdout).expect("webhooks list --json prints JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["webhook_id"], first.header("webhook-id"));
    assert!(listed[0].get("payload").is_none() && listed[0].get("lease_owner").is_none());
    let table = env.cli(&["webhooks", "list"]);
    assert!(table.stdout.starts_with("ID"), "{}", table.stdout);
    assert_eq!(env.cli(&["webhooks", "list", "--state", "lost"]).code, Some(2));

    let id = dead[0].id.to_string();
    let resent = env.cli(&["webhooks", "resend", &id]);
    assert_eq!(resent.code, Some(0), "{}", resent.stderr);
    let again = sink.next().await;
    assert_eq!(again.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(again.body, first.body);
    let rows = eventually("the resent delivery to be delivered", || async {
        let rows = deliveries(&env).await;
        (rows[0].state == "delivered").then_some(rows)
    })
    .await;
    assert_eq!((rows[0].attempts, rows[0].last_http_status), (2, Some(204)));

    let shown = env.cli(&["show", "ok-resend"]);
    assert!(shown.stdout.contains("webhook deliveries:"), "{}", shown.stdout);
    assert!(shown.stdout.contains(first.header("webhook-id")) && shown.stdout.contains("delivered"));
    let missing = env.cli(&["webhooks", "resend", "999999"]);
    assert_eq!(missing.code, Some(2));
    assert!(missing.stderr.contains("no webhook delivery 999999"), "{}", missing.stderr);
    daemon.stop().await.expect("the daemon stops cleanly");
}

#[tokio::test]
async fn claims_give_each_receiver_at_most_its_share_and_resend_leaves_an_attempt_in_flight_alone() {
    let env = TestEnv::new(SCENARIO).await;
    let store = env.store().await;
    env.insert("ok-store", "ns", "ws").await;
    let mut rows = String::new();
    for (index, url) in ["http://a.test/1", "http://a.test/1", "http://a.test/1", "http://b.test/2"].iter().enumerate()
    {
        rows.push_str(&format!(
            "INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload, next_attempt_at)
             SELECT id, '{url}', 'tkt_{index}', 'ticket.succeeded', '{{}}', '2000-01-01T00:00:00.000Z'
             FROM tickets WHERE ticket_id = 'ok-store';\n"
        ));
    }
    env.execute_sql(&rows).await;
    let now = chrono::Utc::now();
    let lease = flink_ticketd::store::Lease("test-host:1:abcd#webhook-1".to_owned());
    let claimed = store.claim_due_deliveries(&lease, now, Duration::from_secs(60), 10, 2).await.expect("a claim");
    let mut urls: Vec<&str> = claimed.iter().map(|row| row.url.as_str()).collect();
    urls.sort_unstable();
    assert_eq!(urls, ["http://a.test/1", "http://a.test/1", "http://b.test/2"], "two per receiver at most");
    assert!(claimed.iter().all(|row| row.attempts == 1 && row.next_attempt_at == row.lease_until.clone().unwrap()));
    let again = store.claim_due_deliveries(&lease, now, Duration::from_secs(60), 10, 2).await.expect("a claim");
    assert!(again.is_empty(), "the third delivery to a.test waits for a slot: {again:?}");

    let in_flight = store.resend_delivery(claimed[0].id, now).await.expect("resend runs");
    assert_eq!(in_flight, flink_ticketd::store::Resend::InFlight);
    assert_eq!(store.resend_delivery(999_999, now).await.expect("resend runs"), flink_ticketd::store::Resend::NotFound);

    assert_eq!(store.release_deliveries("test-host:1:abcd#webhook-", now).await.expect("release runs"), 3);
    let after = store.claim_due_deliveries(&lease, now, Duration::from_secs(60), 10, 2).await.expect("a claim");
    assert_eq!(after.len(), 3, "released deliveries are due at once");
    store.close().await;
}

#[test]
fn the_signer_reproduces_every_standard_webhooks_vector() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/standard-webhooks-vectors.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("reading {path}: {error}"));
    let file: Value = serde_json::from_str(&text).expect("the vectors file is JSON");
    let vectors = file["vectors"].as_array().expect("a vectors array");
    assert!(!vectors.is_empty());
    for vector in vectors {
        let secret = vector["secret"].as_str().unwrap();
        let webhook_id = vector["webhook_id"].as_str().unwrap();
        let timestamp = vector["webhook_timestamp"].as_i64().unwrap();
        let body = vector["body"].as_str().unwrap().as_bytes();
        let expected = vector["expected_signature"].as_str().unwrap();
        let key = flink_ticketd::webhook::decode_webhook_secret(secret).expect("the vector's secret is valid");
        assert_eq!(signing::sign(&[key.expose()], webhook_id, timestamp, body), expected, "{}", vector["note"]);
        assert!(signing::verify(key.expose(), webhook_id, timestamp, body, expected));
        assert_eq!(independent_signature(secret, webhook_id, &timestamp.to_string(), body), expected);
    }
}

#[test]
fn the_demo_finishes_every_ticket_of_every_kind_verifies_every_webhook_and_exits_0() {
    let output = std::process::Command::new(crate::harness::binary())
        .arg("demo")
        .env_remove("RUST_LOG")
        .env_remove("FLINK_TICKETD_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for needle in [
        "demo-deploys",
        "demo-invalid-sql",
        "demo-throttled",
        "demo-unknown",
        "demo-never-finishes",
        "demo-validate",
        "demo-resource-plan",
    ] {
        assert!(stdout.matches(needle).count() >= 3, "{needle} is queued, announced and summarised:\n{stdout}");
    }
    assert_eq!(stdout.matches("signature verified").count(), 7, "{stdout}");
    assert!(stdout.contains("2:6: Object 'orders' not found; ENGINE_VERSION: engine version"), "{stdout}");
    assert!(stdout.contains("resource plan of 141 bytes for deployment 737d0921"), "{stdout}");
    assert!(stdout.contains("3:10: Object 'orders' not found"), "{stdout}");
    assert!(stdout.contains("\ntickets\nTICKET") && stdout.contains("\nwebhook deliveries\nID"), "{stdout}");
    assert_eq!(stdout.matches(" delivered ").count(), 7, "every delivery delivered:\n{stdout}");
    assert!(stdout.contains("expired"), "{stdout}");
    let pages = stdout.lines().find(|line| line.contains("operator pages at http://127.0.0.1:"));
    assert!(pages.is_some_and(|line| line.contains("/ui/")), "the demo prints the overview's address:\n{stdout}");
}
