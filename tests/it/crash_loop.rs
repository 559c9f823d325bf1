//! The crash loop: the real binary polls the simulated API and announces outcomes to two local
//! receivers while the test kills it with SIGKILL every 100 to 500 ms and starts it again, and
//! tickets keep arriving through another connection. At the end every ticket must be final
//! with the outcome its script dictates, every outcome must have reached every receiver with a
//! valid signature, no ticket may have been polled after it became final, no `webhook-id` may
//! carry two different outcomes, and no `webhook-id` may arrive more often than once per kill.
//!
//! CI runs the short form. The long form runs by hand with the same test:
//! `CRASH_LOOP_TICKETS=3000 CRASH_LOOP_SECONDS=180 cargo test --release --test it crash_loop -- --nocapture`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flink_ticketd::clock::format_instant;
use hmac::{Hmac, Mac};
use rand::Rng as _;
use sha2::Sha256;

use crate::harness::{Received, TestEnv, WebhookSink, eventually_within, outside_connection};

const SECRET: &str = "whsec_Y3Jhc2gtbG9vcC13ZWJob29rLXNlY3JldC0xMjM0NQ==";

/// One script per ticket-ID prefix; the last step of each repeats forever.
const SCENARIO: &str = r#"
[[tickets]]
prefix = "ok-"
steps = [{ status = "INIT" }, { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "FINISHED", success = true }]

[[tickets]]
prefix = "bad-"
steps = [{ status = "EXECUTING" }, { status = "FINISHED", success = false, message = "validation failed", validation_result = "VALIDATION_RESULT_INVALID_QUERY", errors = [{ line = 3, column = 10, end_line = 3, end_column = 14, message = "Object 'orders' not found" }] }]

[[tickets]]
prefix = "missing-"
steps = [{ not_found = true }]

[[tickets]]
prefix = "throttled-"
steps = [{ error = "Throttling.User", retry_after_ms = 50 }, { error = "Throttling.Api" }, { status = "FINISHED", success = true }]

[[tickets]]
prefix = "flaky-"
steps = [{ error = "ServiceUnavailable" }, { html = true, http_status = 502 }, { drop = true }, { truncated = true }, { status = "FINISHED", success = true }]

[[tickets]]
prefix = "never-"
steps = [{ status = "EXECUTING" }]
"#;

/// (prefix, final state, error_code) each script must end in.
const OUTCOMES: [(&str, &str, Option<&str>); 6] = [
    ("ok-", "succeeded", None),
    ("bad-", "failed", None),
    ("missing-", "failed", Some("TicketNotFound")),
    ("throttled-", "succeeded", None),
    ("flaky-", "succeeded", None),
    ("never-", "expired", None),
];

/// How long a `never-` ticket may run before it expires.
const NEVER_DEADLINE: &str = "+3 seconds";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_survive_a_daemon_killed_every_few_hundred_milliseconds() {
    let tickets = setting("CRASH_LOOP_TICKETS", 300);
    let kill_phase = Duration::from_secs(setting("CRASH_LOOP_SECONDS", 10));
    let env = TestEnv::new(SCENARIO).await;
    let mut receivers = [WebhookSink::accepting().await, WebhookSink::accepting().await];
    let schedule = ["\"100ms\""; 12].join(", ");
    let webhook = format!(
        "[webhook]\nurls = [{:?}, {:?}]\nsecret = {SECRET:?}\nschedule = [{schedule}]\ntimeout = \"500ms\"\nlease = \"1s\"\nmax_in_flight = 8\n",
        receivers[0].url, receivers[1].url,
    );
    // A short lease brings a killed daemon's tickets and deliveries back within a second.
    let overrides = [
        ("FLINK_TICKETD_FLINK__CONNECT_TIMEOUT", "200ms"),
        ("FLINK_TICKETD_FLINK__REQUEST_TIMEOUT", "500ms"),
        ("FLINK_TICKETD_POLL__LEASE", "1s"),
        ("FLINK_TICKETD_SHUTDOWN__GRACE", "1s"),
    ];
    env.store().await.close().await;
    let started = Instant::now();

    // Tickets arrive over the first 60% of the kill phase, so kills land in every stage of a
    // ticket's life: queued, claimed, polled, final, delivering.
    let feeder = {
        let url = format!("sqlite://{}?mode=rwc", env.db_path.display());
        let feed_for = kill_phase.mul_f64(0.6);
        tokio::spawn(async move {
            let connection = outside_connection(&url).await;
            let batches = 50u64;
            for batch in 0..batches {
                let mut sql = String::new();
                for index in (batch * tickets / batches)..((batch + 1) * tickets / batches) {
                    let (prefix, ..) = OUTCOMES[usize::try_from(index).expect("small") % OUTCOMES.len()];
                    let deadline = if prefix == "never-" {
                        format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '{NEVER_DEADLINE}')")
                    } else {
                        "NULL".to_owned()
                    };
                    sql.push_str(&format!(
                        "INSERT INTO tickets (ticket_id, namespace, workspace, deadline_at) VALUES ('{prefix}{index:06}', 'ns', 'ws', {deadline});\n"
                    ));
                }
                sqlx::raw_sql(&sql).execute(&connection).await.expect("the feeder inserts");
                tokio::time::sleep(feed_for / u32::try_from(batches).expect("small")).await;
            }
            connection.close().await;
        })
    };

    let mut daemon = env.spawn_binary_with(&webhook, &overrides);
    let mut logs = Vec::new();
    let mut kills = 0u64;
    while started.elapsed() < kill_phase {
        // Pacing, not synchronisation: the kill lands wherever the daemon happens to be.
        let pause = rand::rng().random_range(100..=500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        logs.push(daemon.log.clone());
        daemon.kill();
        kills += 1;
        daemon = env.spawn_binary_with(&webhook, &overrides);
    }
    feeder.await.expect("the feeder finishes");

    // The last daemon runs undisturbed until everything is final and delivered.
    let store = env.store().await;
    let expected_deliveries = tickets * 2;
    eventually_within(Duration::from_secs(120), "every ticket final and every delivery delivered", || async {
        let counts = store.count_tickets_by_state().await.expect("counts are read");
        let finals: i64 = counts.iter().filter(|(state, _)| state != "pending").map(|(_, count)| count).sum();
        let delivered = store.list_deliveries(Some(flink_ticketd::store::DeliveryState::Delivered), 1_000_000).await;
        let delivered = delivered.expect("deliveries are read").len();
        (finals == i64::try_from(tickets).expect("small")
            && delivered == usize::try_from(expected_deliveries).expect("small"))
        .then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    daemon.signal(15);
    logs.push(daemon.log.clone());
    assert_eq!(daemon.wait(), Some(0), "the last daemon stops cleanly");

    let rows = store.list_tickets(None, None, 1_000_000).await.expect("tickets are read");
    let deliveries = store.list_deliveries(None, 1_000_000).await.expect("deliveries are read");
    store.close().await;
    let received: Vec<Vec<Received>> = receivers.iter_mut().map(WebhookSink::drain).collect();

    // Every ticket final with the outcome its script dictates.
    assert_eq!(rows.len(), usize::try_from(tickets).expect("small"));
    let mut by_ticket = HashMap::new();
    for row in &rows {
        let (_, state, error_code) =
            OUTCOMES.iter().find(|(prefix, ..)| row.key.ticket_id.starts_with(prefix)).expect("a known prefix");
        assert_eq!(row.state.as_str(), *state, "{}: {:?}", row.key.ticket_id, row.error_message);
        if let Some(code) = error_code {
            assert_eq!(row.error_code.as_deref(), Some(*code), "{}", row.key.ticket_id);
        }
        if row.key.ticket_id.starts_with("bad-") {
            assert_eq!(row.deploy_success, Some(false));
            assert!(
                row.validation_errors.iter().any(|issue| issue.message.as_deref().unwrap_or("").contains("orders")),
                "{:?}",
                row.validation_errors
            );
        }
        if *state == "succeeded" {
            assert!(row.deployment_id.is_some(), "{}", row.key.ticket_id);
        }
        assert!(row.lease_owner.is_none(), "{} keeps a lease", row.key.ticket_id);
        by_ticket.insert(row.key.ticket_id.clone(), row);
    }
    assert!(deliveries.iter().all(|delivery| delivery.state == "delivered"));
    assert_eq!(deliveries.len(), usize::try_from(expected_deliveries).expect("small"), "one per ticket and receiver");

    // No ticket polled after it became final (both clocks are written with milliseconds).
    let requests = env.sim.requests();
    for request in &requests {
        let Some(ticket_id) = &request.ticket_id else { continue };
        let row = by_ticket.get(ticket_id).expect("requests only for queued tickets");
        let finished_at = format_instant(row.finished_at.expect("final rows have finished_at"));
        assert!(
            format_instant(request.started_at) <= finished_at,
            "{ticket_id} was polled at {} after it finished at {finished_at}",
            format_instant(request.started_at)
        );
    }

    // Every outcome reached every receiver, signed; one outcome per webhook-id; duplicates
    // bounded by the number of kills.
    let mut duplicates = 0u64;
    let mut most_copies = 0u64;
    let mut outcome_of_id: HashMap<String, (String, String)> = HashMap::new();
    for (receiver, requests) in received.iter().enumerate() {
        let mut copies: HashMap<&str, u64> = HashMap::new();
        let mut announced = HashSet::new();
        for request in requests {
            let webhook_id = request.header("webhook-id");
            assert_valid_signature(request);
            let body = request.json();
            let ticket_id = body["data"]["ticket_id"].as_str().expect("a ticket_id").to_owned();
            let state = body["data"]["state"].as_str().expect("a state").to_owned();
            assert_eq!(body["type"], format!("ticket.{state}"));
            let first =
                outcome_of_id.entry(webhook_id.to_owned()).or_insert_with(|| (ticket_id.clone(), state.clone()));
            assert_eq!(first, &(ticket_id.clone(), state.clone()), "webhook-id {webhook_id} carried two outcomes");
            *copies.entry(webhook_id).or_default() += 1;
            announced.insert(ticket_id);
        }
        for row in &rows {
            assert!(announced.contains(&row.key.ticket_id), "receiver {receiver} never heard of {}", row.key.ticket_id);
        }
        for (webhook_id, count) in copies {
            assert!(count <= kills + 1, "{webhook_id} arrived {count} times with {kills} kills");
            duplicates += count - 1;
            most_copies = most_copies.max(count);
        }
    }
    for (ticket_id, state) in outcome_of_id.values() {
        assert_eq!(
            by_ticket[ticket_id].state.as_str(),
            state,
            "a receiver was told an outcome the ticket does not have"
        );
    }
    let ids_per_ticket = outcome_of_id.values().map(|(ticket_id, _)| ticket_id).collect::<HashSet<_>>().len();
    assert_eq!(ids_per_ticket, outcome_of_id.len(), "each ticket is announced under one webhook-id");

    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(!text.contains("panicked"), "a daemon panicked: {}", log.display());
    }
    eprintln!(
        "crash loop: {tickets} tickets, {kills} kills in {:.1}s, settled after {:.1}s, {} polls, 0 lost, \
         {duplicates} duplicate webhook deliveries (at most {most_copies} copies of one webhook-id)",
        kill_phase.as_secs_f64(),
        elapsed.as_secs_f64(),
        requests.len(),
    );
}

/// Checks the Standard Webhooks signature with an HMAC computed here, not by the crate.
fn assert_valid_signature(request: &Received) {
    let key = BASE64.decode(SECRET.strip_prefix("whsec_").expect("a whsec_ secret")).expect("base64 key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{}.{}.", request.header("webhook-id"), request.header("webhook-timestamp")).as_bytes());
    mac.update(&request.body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    assert_eq!(request.header("webhook-signature"), expected);
}
