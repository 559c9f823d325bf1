//! Outages and pauses end to end: transient failures never fail a ticket, a run of them pauses
//! all polling behind one probe (shown by `/readyz` and `/metrics`), errors about us pause rather
//! than fail, and a poll keeps its lease however long it waits.

use std::sync::Arc;
use std::time::Duration;

use flink_ticketd::clock::{Clock, SystemClock};
use flink_ticketd::config::Config;
use flink_ticketd::domain::{RowId, TicketState};
use flink_ticketd::flink::{CredentialSource, Credentials, FlinkClient};
use flink_ticketd::poller::{Followed, Poller};
use flink_ticketd::simulator::Step;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::harness::{HANG, KEY_ID, KEY_SECRET, TestEnv, WebhookSink, eventually, eventually_within};

const WEBHOOK_SECRET: &str = "whsec_aW50ZWdyYXRpb24tdGVzdC1zZWNyZXQtbnVtYmVyLTE=";

/// Sends every finished ticket to `sink`, signed.
fn webhook_to(sink: &WebhookSink) -> impl FnOnce(&mut Config) + use<> {
    let url = flink_ticketd::webhook::parse_webhook_url(&sink.url).expect("the sink's URL");
    move |config: &mut Config| {
        config.webhook.urls = vec![url];
        config.webhook.secrets =
            vec![flink_ticketd::webhook::decode_webhook_secret(WEBHOOK_SECRET).expect("a valid secret")];
        config.webhook.schedule = vec![Duration::from_millis(20)];
    }
}

async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{address}{path}")).await.expect("the daemon's HTTP server answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// The value of an unlabelled sample in `/metrics`.
async fn metric(address: std::net::SocketAddr, name: &str) -> f64 {
    let (_, text) = http_get(address, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn a_ticket_behind_a_failing_gateway_succeeds_once_the_api_answers_and_no_failed_webhook_is_sent() {
    let html_502s = ["{ html = true, http_status = 502 }"; 14].join(", ");
    // Empty 503s, plain-text 504s, dropped connections and HTML pages, ending in an error page.
    let mixed = "{ body = \"\" }, { body = \"\" }, { body = \"Gateway Timeout\", http_status = 504 }, \
                 { drop = true }, { html = true, http_status = 503 }, { body = \"upstream connect error\", \
                 http_status = 504 }, { drop = true }, { body = \"\" }, { html = true }, { body = \"\" }, \
                 { body = \"\" }, { body = \"Gateway Timeout\", http_status = 504 }, { html = true, http_status = 502 }";
    let env = TestEnv::new(&format!(
        r#"
        [[tickets]]
        id = "t-html"
        steps = [{html_502s}, {{ status = "FINISHED", success = true }}]
        [[tickets]]
        id = "t-mixed"
        steps = [{mixed}, {{ status = "FINISHED", success = true }}]
        "#
    ))
    .await;
    let mut sink = WebhookSink::accepting().await;
    let send_webhooks = webhook_to(&sink);
    let daemon = env
        .spawn_daemon(|config| {
            send_webhooks(config);
            // Probes while paused come at most every 300 ms, so 27 failures take a few seconds.
            config.poll.max_interval = Duration::from_millis(30);
        })
        .await;
    env.insert("t-html", "ns", "ws").await;
    env.insert("t-mixed", "ns", "ws").await;

    for (id, failures) in [("t-html", 14), ("t-mixed", 13)] {
        let ticket = env.wait_final(id).await;
        assert_eq!(ticket.state, TicketState::Succeeded, "{id}: {:?} {:?}", ticket.error_code, ticket.error_message);
        assert!(ticket.deployment_id.is_some(), "{id}");
        assert_eq!(env.sim.polls_of(id), failures + 1, "{id}: every failure was retried, then it finished");
    }
    let mut types: Vec<String> = Vec::new();
    for _ in 0..2 {
        types.push(sink.next().await.json()["type"].as_str().expect("a type").to_owned());
    }
    assert_eq!(types, ["ticket.succeeded", "ticket.succeeded"]);
    daemon.stop().await.expect("clean shutdown");
    assert!(sink.drain().is_empty(), "no other webhook, and no ticket.failed");
}

#[tokio::test]
async fn an_outage_over_many_tickets_costs_a_few_probes_and_readyz_and_the_metrics_show_it() {
    let env = TestEnv::new("default = [{ html = true, http_status = 502 }]").await;
    env.store().await.close().await;
    let ids: Vec<String> = (0..300).map(|n| format!("t-{n}")).collect();
    env.execute_sql(&crate::harness::insert_tickets_sql(ids.iter().cloned())).await;
    let daemon = env.spawn_binary(&[("FLINK_TICKETD_HTTP__LISTEN", "127.0.0.1:0")]);
    let address = daemon.http_address().await;

    let body = eventually("/readyz to report the outage", || async {
        let (status, body) = http_get(address, "/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    let ready: serde_json::Value = serde_json::from_str(&body).expect("/readyz is JSON");
    assert_eq!(ready["checks"]["polling_paused"], true, "{ready}");
    assert_eq!(ready["checks"]["api_unavailable"], true, "{ready}");
    assert!(ready["reasons"][0].as_str().unwrap_or_default().contains("API is unavailable"), "{ready}");
    assert_eq!(metric(address, "flink_ticketd_api_unavailable").await, 1.0);
    assert_eq!(metric(address, "flink_ticketd_polling_paused").await, 1.0);

    // Let the pause run through several probes (20 ms, 40 ms, 80 ms, ... up to 1 s).
    let at_pause = env.sim.requests().len();
    eventually("six probes", || async { (env.sim.requests().len() >= at_pause + 6).then_some(()) }).await;
    let requests = env.sim.requests();
    assert!(
        requests.len() <= 16 + 5 + 6 + 2,
        "the in-flight polls, the failures that opened the circuit and the probes, not a request per ticket: {}",
        requests.len()
    );
    let mut probes: Vec<_> = requests[at_pause..].to_vec();
    probes.sort_by_key(|request| request.started_at);
    for pair in probes.windows(2) {
        assert!(pair[1].started_at >= pair[0].finished_at, "one probe at a time: {pair:?}");
    }
    let store = env.store().await;
    let pending = store.list_tickets(Some(flink_ticketd::domain::TicketState::Pending), None, 1000).await.unwrap();
    assert_eq!(pending.len(), 300, "no ticket is failed for an outage");

    // The API is back: the first good answer resumes polling for everyone.
    for id in &ids {
        env.sim.set_script(id, vec![Step::finished_ok()]);
    }
    eventually_within(HANG * 2, "every ticket to finish", || async {
        let counts = store.count_tickets_by_state().await.expect("counts are read");
        (counts == [("succeeded".to_owned(), 300)]).then_some(())
    })
    .await;
    store.close().await;
    let (status, body) = http_get(address, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(metric(address, "flink_ticketd_api_unavailable").await, 0.0);
    let log = daemon.log_text();
    assert_eq!(log.matches("polling paused: the API is unavailable").count(), 1, "one line per episode:\n{log}");
    assert_eq!(log.matches("polling resumed: the API answers again").count(), 1, "{log}");
}

#[tokio::test]
async fn unreadable_2xx_answers_pause_polling_logged_at_error_and_fail_no_ticket() {
    let truncated = ["{ truncated = true }"; 8].join(", ");
    let env = TestEnv::new(&format!(
        "[[tickets]]\nid = \"t-changed\"\nsteps = [{truncated}, {{ status = \"FINISHED\", success = true }}]"
    ))
    .await;
    env.store().await.close().await;
    let daemon = env.spawn_binary(&[]);
    env.insert("t-changed", "ns", "ws").await;
    let ticket = env.wait_final("t-changed").await;
    assert_eq!(ticket.state, TicketState::Succeeded);
    assert_eq!(env.sim.polls_of("t-changed"), 9);
    let log = daemon.log_text();
    let paused: Vec<&str> =
        log.lines().filter(|line| line.contains("answers with bodies that cannot be read")).collect();
    assert_eq!(paused.len(), 1, "one line per episode:\n{log}");
    assert!(paused[0].contains("ERROR"), "a changed API needs a person: {}", paused[0]);
}

#[tokio::test]
async fn a_poll_waiting_for_the_rate_limit_keeps_its_lease_so_no_ticket_is_polled_twice() {
    let env = TestEnv::new("default = [{ status = \"FINISHED\", success = true }]").await;
    env.store().await.close().await;
    env.execute_sql(
        "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('t-1', 'ns', 'ws'), ('t-2', 'ns', 'ws'),
         ('t-3', 'ns', 'ws'), ('t-4', 'ns', 'ws')",
    )
    .await;
    // One request a second with two in flight: the third and fourth polls wait about 1 s and
    // 2 s for the rate limit, longer than a lease.
    let daemon = env
        .spawn_daemon(|config| {
            config.flink.max_requests_per_second = 1.0;
            config.flink.max_in_flight = 2;
            config.flink.client.connect_timeout = Duration::from_millis(200);
            config.flink.client.request_timeout = Duration::from_millis(400);
            config.poll.lease = Duration::from_millis(700);
        })
        .await;
    env.wait_all_final().await;
    daemon.stop().await.expect("clean shutdown");
    for id in ["t-1", "t-2", "t-3", "t-4"] {
        let ticket = env.ticket(id).await;
        assert_eq!(ticket.state, TicketState::Succeeded, "{id}");
        assert_eq!(env.sim.polls_of(id), 1, "{id}: polled once, by the one holder of its lease");
        assert_eq!(ticket.polls, 1, "{id}");
    }
}

#[tokio::test]
async fn a_workspace_pause_moves_no_ticket_past_its_deadline() {
    let env = TestEnv::new("[[tickets]]\nprefix = \"denied-\"\nsteps = [{ error = \"NoPermission\" }]").await;
    env.store().await.close().await;
    // The first pause lasts 3 s; the second ticket's deadline comes 1 s after the start.
    let daemon = env
        .spawn_daemon(|config| {
            config.poll.initial_interval = Duration::from_secs(3);
            config.poll.max_interval = Duration::from_secs(3);
        })
        .await;
    env.execute_sql(
        "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('denied-first', 'ns', 'closed-ws');
         INSERT INTO tickets (ticket_id, namespace, workspace, next_poll_at, deadline_at)
         VALUES ('denied-later', 'ns', 'closed-ws', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1.5 seconds'),
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 seconds'));",
    )
    .await;
    let later = env.wait_final("denied-later").await;
    assert_eq!(later.state, TicketState::Expired);
    let deadline = later.deadline().expect("a deadline");
    let finished = later.finished_at.unwrap();
    assert!(finished >= deadline, "expired before its deadline");
    assert!(finished - deadline < chrono::Duration::milliseconds(700), "expired {} late", finished - deadline);
    assert_eq!(env.ticket("denied-first").await.state, TicketState::Pending, "the first waits for the pause");
    daemon.stop().await.expect("clean shutdown");
}

/// The poller `deploy --wait` uses, signing with `credentials`.
async fn poller(env: &TestEnv, credentials: Credentials) -> (Poller, tokio::task::JoinHandle<()>) {
    let config = env.config(|config| {
        config.poll.initial_interval = Duration::from_millis(200);
        config.poll.max_interval = Duration::from_millis(200);
    });
    let store = env.store().await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let source = CredentialSource { name: "test", credentials: Arc::new(credentials) };
    let flink = FlinkClient::new(&config.flink.client, source, Arc::clone(&clock)).expect("the client builds");
    let (poller, recorder_task) =
        flink_ticketd::daemon::poller(&config, store, flink, clock, "test:1:00".to_owned(), 1);
    let recorder_task = tokio::spawn(async move {
        let _ = recorder_task.await;
    });
    (poller, recorder_task)
}

fn key(secret: &str, token: Option<&str>) -> Credentials {
    Credentials {
        access_key_id: KEY_ID.to_owned(),
        access_key_secret: SecretString::from(secret.to_owned()),
        security_token: token.map(|token| SecretString::from(token.to_owned())),
    }
}

async fn row_id(env: &TestEnv, ticket_id: &str) -> RowId {
    env.ticket(ticket_id).await.id
}

#[tokio::test]
async fn a_credential_no_header_can_carry_pauses_polling_instead_of_failing_the_ticket() {
    let env = TestEnv::new("").await;
    env.store().await.close().await;
    env.insert("t-waits", "ns", "ws").await;
    let (poller, _recorder) = poller(&env, key(KEY_SECRET, Some("token-with\na-newline"))).await;
    let shutdown = CancellationToken::new();
    let id = row_id(&env, "t-waits").await;
    let followed = tokio::time::timeout(HANG, poller.follow(id, &shutdown)).await.expect("no hang").unwrap();
    let Followed::Paused(row) = followed else { panic!("expected a pause, got {followed:?}") };
    assert_eq!(row.state, TicketState::Pending);
    assert_eq!(row.error_code.as_deref(), Some("CredentialsUnusable"));
    assert!(!row.error_message.unwrap_or_default().contains("a-newline"), "the token is never shown");
    assert!(env.sim.requests().is_empty(), "nothing was sent");
}
