//! The security pass: no secret or signature in any log line, even at trace; webhook receivers
//! limited to http and https at config time; per-ticket URLs off by default; no redirect, so no
//! `Authorization` header can follow one to another host.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{KEY_SECRET, TestEnv, WebhookSink, eventually, quote};
use flink_ticketd::domain::TicketState;

const WEBHOOK_SECRET: &str = "whsec_c2VjdXJpdHktcGFzcy13ZWJob29rLXNlY3JldC0wMDAx";
const SECURITY_TOKEN: &str = "sts-token-that-must-never-be-logged-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_signature_reaches_the_log_even_at_trace() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        prefix = "ok-"
        steps = [{ status = "EXECUTING" }, { error = "Throttling.User" }, { status = "FINISHED", success = true }]
        [[tickets]]
        prefix = "missing-"
        steps = [{ not_found = true }]
        "#,
    )
    .await;
    let mut sink = WebhookSink::start(|n| crate::harness::Reply::Status(if n == 0 { 503 } else { 204 })).await;
    let webhook = format!(
        "[webhook]\nurls = [{:?}]\nsecret = {WEBHOOK_SECRET:?}\nschedule = [\"50ms\"]\ntimeout = \"1s\"\nlease = \"2s\"\n",
        sink.url
    );
    env.store().await.close().await;
    let daemon = env
        .spawn_binary_with(&webhook, &[("RUST_LOG", "trace"), ("FLINK_TICKETD_FLINK__SECURITY_TOKEN", SECURITY_TOKEN)]);
    env.insert("ok-1", "ns", "ws").await;
    env.insert("missing-1", "ns", "ws").await;
    let mut received = Vec::new();
    while received.len() < 3 {
        received.push(sink.next().await);
    }
    daemon.signal(15);
    let log = daemon.log_text();
    assert_eq!(daemon.wait(), Some(0));
    assert!(log.contains("TRACE"), "the log is at trace level");
    assert!(log.contains("webhook delivered") && log.contains("ticket finished"), "a whole ticket life was logged");

    let key_part = WEBHOOK_SECRET.strip_prefix("whsec_").expect("a whsec_ secret");
    let mut secrets = vec![KEY_SECRET.to_owned(), SECURITY_TOKEN.to_owned(), key_part.to_owned()];
    for request in &received {
        let signature = request.header("webhook-signature");
        secrets.push(signature.strip_prefix("v1,").unwrap_or(signature).to_owned());
    }
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "the log holds a secret or signature: {secret}");
    }
    for marker in ["Signature=", "ACS3-HMAC-SHA256 Credential", "x-acs-security-token: ", "webhook-signature: v1"] {
        assert!(!log.contains(marker), "the log holds an Authorization or signature header ({marker})");
    }
}

#[tokio::test]
async fn webhook_urls_other_than_http_and_https_are_refused_at_config_time() {
    let env = TestEnv::new("").await;
    for url in
        ["ftp://example.com/hook", "file:///etc/passwd", "javascript:alert(1)", "gopher://127.0.0.1:70/", "http://"]
    {
        let webhook =
            format!("[webhook]\nurls = [\"https://ok.example.com/hook\", {url:?}]\nsecret = {WEBHOOK_SECRET:?}\n");
        let config = env.config_file_with(&webhook);
        let checked = env.cli_with(&config, &["check-config"], &[]);
        assert_eq!(checked.code, Some(2), "{url}: {}", checked.stdout);
        assert!(checked.stderr.contains("webhook.urls[1]"), "{url}: {}", checked.stderr);
    }
}

#[tokio::test]
async fn per_ticket_webhook_urls_are_ignored_unless_allowed() {
    let env = TestEnv::new("").await;
    let mut configured = WebhookSink::accepting().await;
    let mut own = WebhookSink::accepting().await;
    let checked = env.cli(&["check-config"]);
    assert!(checked.stdout.contains("allow_ticket_urls = false"), "{}", checked.stdout);
    let webhook = format!("[webhook]\nurls = [{:?}]\nsecret = {WEBHOOK_SECRET:?}\n", configured.url);
    env.store().await.close().await;
    let daemon = env.spawn_binary_with(&webhook, &[]);
    env.execute_sql(&format!(
        "INSERT INTO tickets (ticket_id, namespace, workspace, webhook_url) VALUES ('t-own', 'ns', 'ws', {})",
        quote(&own.url)
    ))
    .await;
    let delivered = configured.next().await;
    assert_eq!(delivered.json()["data"]["ticket_id"], "t-own");
    let ticket = env.wait_final("t-own").await;
    assert_eq!(ticket.webhook_note.as_deref(), Some(flink_ticketd::webhook::TICKET_URL_NOT_ALLOWED));
    let store = env.store().await;
    let deliveries = store.deliveries_of_ticket(ticket.id.0).await.expect("deliveries are read");
    store.close().await;
    assert_eq!(deliveries.len(), 1, "only the configured receiver");
    assert!(own.drain().is_empty(), "the ticket's own URL got nothing");
    drop(daemon);
}

#[tokio::test]
async fn per_ticket_urls_to_private_addresses_are_refused_unless_private_ones_are_allowed() {
    let env = TestEnv::new("").await;
    let mut configured = WebhookSink::accepting().await;
    let mut own = WebhookSink::accepting().await;
    let webhook = format!(
        "[webhook]\nurls = [{:?}]\nsecret = {WEBHOOK_SECRET:?}\nallow_ticket_urls = true\nschedule = [\"10ms\"]\n",
        configured.url
    );
    env.store().await.close().await;
    let daemon = env.spawn_binary_with(&webhook, &[]);
    let metadata = "http://100.100.100.200/latest/meta-data/";
    for (ticket_id, url) in [("t-loopback", own.url.as_str()), ("t-metadata", metadata)] {
        env.execute_sql(&format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace, webhook_url) VALUES ({}, 'ns', 'ws', {})",
            quote(ticket_id),
            quote(url)
        ))
        .await;
    }
    let mut announced = vec![configured.next().await.json()["data"]["ticket_id"].clone()];
    announced.push(configured.next().await.json()["data"]["ticket_id"].clone());
    announced.sort_by_key(ToString::to_string);
    assert_eq!(announced, ["t-loopback", "t-metadata"]);
    for (ticket_id, why) in [("t-loopback", "a loopback address"), ("t-metadata", "the cloud metadata address")] {
        let ticket = env.wait_final(ticket_id).await;
        let note = ticket.webhook_note.unwrap_or_default();
        assert!(note.contains(why) && note.contains("webhook.allow_private_ticket_urls"), "{ticket_id}: {note}");
        let store = env.store().await;
        let deliveries = store.deliveries_of_ticket(ticket.id.0).await.expect("deliveries are read");
        store.close().await;
        assert_eq!(deliveries.len(), 1, "{ticket_id}: only the configured receiver");
    }
    assert!(own.drain().is_empty(), "the loopback URL got nothing");
    drop(daemon);

    let allowed = TestEnv::new("").await;
    allowed.store().await.close().await;
    let daemon = allowed.spawn_binary_with(&format!("{webhook}allow_private_ticket_urls = true\n"), &[]);
    allowed
        .execute_sql(&format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace, webhook_url) VALUES ('t-own', 'ns', 'ws', {})",
            quote(&own.url)
        ))
        .await;
    assert_eq!(own.next().await.json()["data"]["ticket_id"], "t-own");
    assert_eq!(allowed.wait_final("t-own").await.webhook_note, None);
    drop(daemon);
}

#[tokio::test]
async fn secrets_in_urls_are_redacted_in_check_config_delivery_logs_show_and_list() {
    let env = TestEnv::new("").await;
    let mut sink = WebhookSink::start(|n| crate::harness::Reply::Status(if n == 0 { 503 } else { 204 })).await;
    let secrets = ["userinfopass", "querysecret1", "T0k3nInThePath0123456789", "fragmentsecret"];
    let configured = format!("{}/hooks/T0k3nInThePath0123456789?token=querysecret1&v=1#fragmentsecret", sink.url);
    let configured = configured.replacen("http://", "http://hook:userinfopass@", 1);
    let webhook = format!(
        "[webhook]\nurls = [{configured:?}]\nsecret = {WEBHOOK_SECRET:?}\nschedule = [\"50ms\"]\n\
         allow_ticket_urls = true\nallow_private_ticket_urls = true\n"
    );
    let config = env.config_file_with(&webhook);
    let endpoint = format!("http://api:userinfopass@{}", env.sim.base_url().trim_start_matches("http://"));
    let checked = env.cli_with(&config, &["check-config"], &[("FLINK_TICKETD_FLINK__ENDPOINT", &endpoint)]);
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    assert!(checked.stdout.contains("token=***&v=***") && checked.stdout.contains("http://***@"), "{}", checked.stdout);
    for secret in secrets {
        assert!(!checked.stdout.contains(secret), "check-config shows {secret}:\n{}", checked.stdout);
    }

    env.store().await.close().await;
    let daemon = env.spawn_binary_with(&webhook, &[("RUST_LOG", "debug")]);
    let own = format!("{}/own?key=querysecret1", sink.url);
    env.execute_sql(&format!(
        "INSERT INTO tickets (ticket_id, namespace, workspace, webhook_url) VALUES ('t-1', 'ns', 'ws', {})",
        quote(&own)
    ))
    .await;
    let mut received = Vec::new();
    while received.len() < 3 {
        received.push(sink.next().await);
    }
    assert!(received.iter().any(|request| request.path.contains("T0k3nInThePath")), "the real URL was used");
    let delivered = eventually("both deliveries delivered", || async {
        let listed = env.cli_with(&config, &["webhooks", "list", "--json"], &[]);
        (listed.stdout.matches("\"delivered\"").count() == 2).then_some(listed)
    })
    .await;
    daemon.signal(15);
    let log = daemon.log_text();
    assert_eq!(daemon.wait(), Some(0));
    assert!(log.contains("webhook attempt failed") && log.contains("url="), "delivery spans were logged");
    for (what, text) in [
        ("the log", log),
        ("webhooks list", delivered.stdout),
        ("show", env.cli_with(&config, &["show", "t-1"], &[]).stdout),
        ("show --json", env.cli_with(&config, &["show", "t-1", "--json"], &[]).stdout),
        ("list --json", env.cli_with(&config, &["list", "--json"], &[]).stdout),
    ] {
        assert!(text.contains("***"), "{what} shows the URLs redacted:\n{text}");
        for secret in secrets {
            assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
        }
    }
}

/// A server answering every request with a redirect to `location`, remembering whether each
/// request carried an `Authorization` header.
async fn redirecting_server(location: String) -> (String, Arc<Mutex<Vec<bool>>>) {
    let seen: Arc<Mutex<Vec<bool>>> = Arc::default();
    let record = Arc::clone(&seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let address = listener.local_addr().expect("a bound address");
    let router = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
        let record = Arc::clone(&record);
        let location = location.clone();
        async move {
            record.lock().expect("not poisoned").push(headers.contains_key("authorization"));
            (axum::http::StatusCode::FOUND, [(axum::http::header::LOCATION, format!("{location}{}", uri.path()))], "")
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{address}"), seen)
}

#[tokio::test]
async fn a_redirect_from_the_api_is_not_followed_so_the_authorization_header_stays_home() {
    let env = TestEnv::new("").await;
    let (elsewhere, elsewhere_seen) = redirecting_server("http://127.0.0.1:9".to_owned()).await;
    let (api, api_seen) = redirecting_server(elsewhere).await;
    let daemon = env
        .spawn_daemon(|config| {
            config.flink.client.endpoints.override_url = Some(api.parse().expect("a URL"));
            config.poll.deadline = Duration::from_secs(1);
        })
        .await;
    env.insert("t-redirected", "ns", "ws").await;
    let ticket = env.wait_final("t-redirected").await;
    assert_eq!(ticket.state, TicketState::Expired, "an unreadable answer is retried until the deadline");
    assert_eq!(ticket.error_code.as_deref(), Some("HttpStatus302"));
    let api_seen = api_seen.lock().expect("not poisoned").clone();
    assert!(!api_seen.is_empty() && api_seen.iter().all(|signed| *signed), "the API got signed requests");
    assert!(elsewhere_seen.lock().expect("not poisoned").is_empty(), "the other host got no request at all");
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_redirect_from_a_webhook_receiver_is_not_followed() {
    let env = TestEnv::new("").await;
    let (elsewhere, elsewhere_seen) = redirecting_server("http://127.0.0.1:9".to_owned()).await;
    let (receiver, receiver_seen) = redirecting_server(elsewhere).await;
    let webhook = format!(
        "[webhook]\nurls = [{:?}]\nsecret = {WEBHOOK_SECRET:?}\nschedule = [\"20ms\"]\ntimeout = \"1s\"\nlease = \"2s\"\n",
        format!("{receiver}/hook")
    );
    env.store().await.close().await;
    let daemon = env.spawn_binary_with(&webhook, &[]);
    env.insert("t-hooked", "ns", "ws").await;
    let store = env.store().await;
    eventually("the delivery to give up", || async {
        let rows = store.list_deliveries(None, 10).await.expect("deliveries are read");
        rows.first().filter(|row| row.state == "dead").cloned()
    })
    .await;
    store.close().await;
    assert_eq!(receiver_seen.lock().expect("not poisoned").len(), 2, "both attempts went to the receiver");
    assert!(elsewhere_seen.lock().expect("not poisoned").is_empty(), "the other host got nothing");
    drop(daemon);
}
