//! A ticket's history: `ticket_events` (one row per change worth showing, written in the same
//! transaction as the change) and `webhook_attempts` (one per attempt, with its status and
//! duration), shown by `show` and the ticket page, capped, and removed with their ticket.

use std::sync::Arc;
use std::time::Duration;

use flink_ticketd::config::Config;
use flink_ticketd::metrics::Metrics;
use flink_ticketd::retention::{self, Retention};
use tokio_util::sync::CancellationToken;

use crate::harness::{Reply, TestEnv, WebhookSink};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const SCENARIO: &str = r#"
[[tickets]]
id = "t-history"
steps = [
    { status = "INIT" },
    { status = "EXECUTING" },
    { error = "ServiceUnavailable", shape = "service" },
    { status = "EXECUTING" },
    { status = "FINISHED", success = true, deployment_id = "dep-1" },
]
"#;

fn webhook_to(url: &str) -> impl FnOnce(&mut Config) + use<> {
    let url = flink_ticketd::webhook::parse_webhook_url(url).expect("a receiver URL");
    move |config: &mut Config| {
        config.webhook.urls = vec![url];
        config.webhook.secrets = vec![flink_ticketd::webhook::decode_webhook_secret(SECRET).expect("a valid secret")];
        config.webhook.schedule = vec![Duration::from_millis(10), Duration::from_millis(10)];
    }
}

fn kinds(events: &[flink_ticketd::store::TicketEvent]) -> Vec<&str> {
    events.iter().map(|event| event.kind.as_str()).collect()
}

#[tokio::test]
async fn each_change_of_a_ticket_is_recorded_once_and_each_webhook_attempt_with_its_status() {
    let env = TestEnv::new(SCENARIO).await;
    let mut sink =
        WebhookSink::start(|attempt| if attempt == 0 { Reply::Status(500) } else { Reply::Status(204) }).await;
    let driven = env.driven(webhook_to(&sink.url)).await;
    env.insert("t-history", "default-namespace", "ws-1").await;
    driven.settle().await;
    sink.next().await;
    sink.next().await;

    let ticket = env.ticket("t-history").await;
    let events = driven.store.ticket_events(ticket.id).await.expect("the events are read");
    assert_eq!(
        kinds(&events),
        ["first_poll", "status", "status", "error_start", "error_end", "status", "final"],
        "{events:#?}"
    );
    assert_eq!(events[1].ticket_status.as_ref().map(ToString::to_string).as_deref(), Some("INIT"));
    assert_eq!(events[3].error_code.as_deref(), Some("ServiceUnavailable"));
    assert_eq!(events.last().map(|event| event.polls), Some(5));
    assert!(events.windows(2).all(|pair| pair[0].at <= pair[1].at), "times never go back");

    let attempts = driven.store.webhook_attempts_of_ticket(ticket.id).await.expect("the attempts are read");
    assert_eq!(attempts.iter().map(|attempt| attempt.attempt).collect::<Vec<_>>(), [1, 2], "{attempts:#?}");
    assert_eq!(attempts.iter().map(|attempt| attempt.http_status).collect::<Vec<_>>(), [Some(500), Some(204)]);
    assert!(attempts[0].error.is_some() && attempts[1].error.is_none());
    assert!(attempts.iter().all(|attempt| attempt.duration_ms >= 0 && attempt.duration_ms < 20_000));
    driven.stop().await;

    let shown = env.cli(&["show", "t-history"]);
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    for expected in ["timeline:", "first_poll", "error_start", "final", "webhook attempts:", "attempt 2", "http=204"] {
        assert!(shown.stdout.contains(expected), "{expected:?} missing from show:\n{}", shown.stdout);
    }
    let json = env.cli(&["show", "t-history", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).expect("show --json prints JSON");
    assert_eq!(value["events"].as_array().map(Vec::len), Some(7));
    assert_eq!(value["webhook_attempts"][1]["http_status"], 204);
}

#[tokio::test]
async fn retry_and_cancel_are_recorded_and_history_goes_with_its_ticket_at_retention() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        id = "t-done"
        steps = [{ status = "FINISHED", success = true }]
        "#,
    )
    .await;
    let mut sink = WebhookSink::accepting().await;
    let driven = env.driven(webhook_to(&sink.url)).await;
    env.insert("t-done", "default-namespace", "ws-1").await;
    env.insert("t-cancel", "default-namespace", "ws-1").await;
    assert_eq!(env.cli(&["cancel", "t-cancel"]).code, Some(0));
    driven.settle().await;
    sink.next().await;
    let done = env.ticket("t-done").await;
    assert_eq!(env.cli(&["retry", "t-done"]).code, Some(0));
    let events = driven.store.ticket_events(done.id).await.unwrap();
    assert_eq!(kinds(&events), ["first_poll", "status", "final", "retry"]);
    let cancelled = env.ticket("t-cancel").await;
    assert_eq!(kinds(&driven.store.ticket_events(cancelled.id).await.unwrap()), ["cancel"]);
    driven.settle().await;
    sink.next().await;

    let store = env.store().await;
    let job = Retention {
        store: store.clone(),
        clock: Arc::clone(&driven.clock) as _,
        keep: Duration::ZERO,
        schedule: retention::parse_schedule("0 17 3 * * *").expect("a schedule"),
        metrics: Arc::new(Metrics::new()),
        log: Arc::default(),
    };
    driven.clock.advance(chrono::Duration::seconds(1));
    let report = job.run_once(&CancellationToken::new()).await.expect("retention runs");
    assert_eq!(report.tickets, 2);
    assert!(store.ticket_events(done.id).await.unwrap().is_empty());
    assert!(store.webhook_attempts_of_ticket(done.id).await.unwrap().is_empty());
    let left = |table: &str| format!("SELECT count(*) FROM {table}");
    for table in ["ticket_events", "webhook_attempts"] {
        let count: i64 = sqlx::query_scalar(&left(table))
            .fetch_one(&crate::harness::outside_connection(&format!("sqlite://{}", env.db_path.display())).await)
            .await
            .unwrap();
        assert_eq!(count, 0, "{table} rows outlived their ticket");
    }
    driven.stop().await;
}

#[tokio::test]
async fn a_ticket_keeps_its_first_event_and_its_latest_199() {
    let env = TestEnv::new("").await;
    env.store().await.close().await;
    env.insert("t-busy", "default-namespace", "ws-1").await;
    let updates: String = (1..=260)
        .map(|poll| format!("UPDATE tickets SET polls = {poll}, ticket_status = 'S{poll}' WHERE ticket_id = 't-busy';"))
        .collect();
    env.execute_sql(&updates).await;
    let ticket = env.ticket("t-busy").await;
    let events = env.store().await.ticket_events(ticket.id).await.unwrap();
    assert_eq!(events.len(), 200);
    assert_eq!(events[0].kind, "first_poll");
    assert_eq!(events.last().map(|event| event.polls), Some(260));
    assert_eq!(events[1].polls, 62, "the oldest events after the first are the ones dropped");
}

/// Every event of the database: id, ticket, kind, status and detail, oldest first.
async fn events_of(connection: &mut sqlx::SqliteConnection) -> Vec<(i64, i64, String, Option<String>, Option<String>)> {
    sqlx::query_as("SELECT id, ticket, kind, ticket_status, detail FROM ticket_events ORDER BY id")
        .fetch_all(connection)
        .await
        .expect("the events are read")
}

#[tokio::test]
async fn upgrading_keeps_every_event_its_id_and_the_id_counter() {
    use flink_ticketd::store::{Store, StoreSettings};
    use sqlx::Connection as _;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let url = format!("sqlite://{}", path.display());
    // A database with every migration before the one that rebuilds ticket_events, and a history
    // whose newest event was removed, so that the id counter is past the largest id left.
    let before = {
        let mut connection = crate::harness::database_before(&path, 20261207000001).await;
        sqlx::raw_sql(
            "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('a', 'ns', 'ws'), ('b', 'ns', 'ws'), ('c', 'ns', 'ws');
             UPDATE tickets SET polls = 1, ticket_status = 'EXECUTING';
             UPDATE tickets SET polls = 2, ticket_status = 'FINISHED', state = 'succeeded',
                                finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE ticket_id = 'a';
             DELETE FROM ticket_events WHERE id = (SELECT max(id) FROM ticket_events);",
        )
        .execute(&mut connection)
        .await
        .unwrap();
        let before = events_of(&mut connection).await;
        connection.close().await.unwrap();
        before
    };
    assert_eq!(before.len(), 7, "first poll and status of each, status and final of one, less the final: {before:?}");

    let store =
        Store::open(&StoreSettings { path: path.clone(), busy_timeout: Duration::from_secs(5), max_readers: 2 })
            .await
            .expect("the store opens and migrates");
    store.close().await;

    let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
    assert_eq!(events_of(&mut connection).await, before, "every event keeps its id and its values");
    sqlx::raw_sql(
        "UPDATE tickets SET polls = 2, ticket_status = 'FAILED', state = 'failed',
                            finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE ticket_id = 'b';
         UPDATE tickets SET state = 'expired', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE ticket_id = 'c'",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    let after = events_of(&mut connection).await;
    let new: Vec<_> = after[before.len()..].iter().map(|(id, _, kind, _, _)| (*id, kind.as_str())).collect();
    assert_eq!(new, [(9, "status"), (10, "final"), (11, "final")], "new events start above the removed one, in order");
    let unknown = sqlx::raw_sql(
        "INSERT INTO ticket_events (ticket, at, kind, state, polls)
         VALUES (1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'savepoint', 'pending', 0)",
    )
    .execute(&mut connection)
    .await
    .expect_err("an unknown event kind is refused");
    assert!(unknown.to_string().contains("kind_must_be_known"), "{unknown}");
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut connection).await.unwrap();
    assert_eq!(integrity, "ok");
    connection.close().await.unwrap();
}
