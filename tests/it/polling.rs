//! The ticket pipeline end to end: rows inserted by plain SQL, polled against the simulated API,
//! recorded in the named columns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use flink_ticketd::clock::{Clock, SystemClock};
use flink_ticketd::daemon;
use flink_ticketd::domain::{TicketState, TicketStatus};
use flink_ticketd::simulator::Step;
use flink_ticketd::store::lease_owner_prefix;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::harness::{KEY_ID, TestEnv, eventually, outside_connection, stored_text};

#[tokio::test]
async fn ticket_inserted_with_plain_sql_succeeds_with_its_deployment_id() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        id = "t-ok"
        steps = [{ status = "INIT" }, { status = "EXECUTING" }, { status = "FINISHED", success = true, deployment_id = "dep-42", message = "deployed" }]
        "#,
    )
    .await;
    let driven = env.driven(|_| {}).await;
    env.insert("t-ok", "default-namespace", "710d6a64d8a1").await;

    driven.settle().await;
    let ticket = env.ticket("t-ok").await;
    assert_eq!(ticket.state, TicketState::Succeeded);
    assert_eq!(ticket.ticket_status.as_ref().map(TicketStatus::as_wire), Some("FINISHED"));
    assert_eq!(ticket.deployment_id.as_deref(), Some("dep-42"));
    assert_eq!(ticket.deploy_success, Some(true));
    assert_eq!(ticket.message.as_deref(), Some("deployed"));
    assert_eq!(ticket.polls, 3);
    assert_eq!(stored_text(&env.db_path, ticket.id, "validation_errors").await.as_deref(), Some("[]"));
    assert!(ticket.request_id.is_some(), "the last request ID is recorded");
    assert!(ticket.finished_at.is_some() && ticket.error_code.is_none());
    assert!(ticket.lease_owner.is_none(), "no lease is left behind");
    assert_eq!(env.sim.polls_of("t-ok"), 3);
    let requests = env.sim.requests();
    assert!(requests.iter().all(|request| request.workspace.as_deref() == Some("710d6a64d8a1")));
    driven.stop().await;
}

#[tokio::test]
async fn rows_inserted_by_the_sqlite3_shell_while_the_daemon_runs_are_polled() {
    let env = TestEnv::new("").await;
    let daemon = env.spawn_daemon(|_| {}).await;
    let output = std::process::Command::new("sqlite3")
        .arg(&env.db_path)
        .arg(".timeout 5000")
        .arg("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('shell-1', 'ns', 'ws');")
        .output()
        .expect("the sqlite3 shell runs (it is part of the supported environment)");
    assert!(output.status.success(), "sqlite3 failed: {}", String::from_utf8_lossy(&output.stderr));

    let ticket = env.wait_final("shell-1").await;
    assert_eq!(ticket.state, TicketState::Succeeded, "default progression INIT, EXECUTING, FINISHED");
    assert!(ticket.deployment_id.is_some());
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn validation_failure_is_failed_with_line_and_column() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        id = "t-bad-sql"
        [[tickets.steps]]
        status = "EXECUTING"
        [[tickets.steps]]
        status = "FINISHED"
        success = false
        message = "validation failed"
        validation_result = "VALIDATION_RESULT_INVALID_QUERY"
        errors = [{ line = 3, column = 10, end_line = 3, end_column = 16, message = "Object 'orders' not found" }]
        "#,
    )
    .await;
    let driven = env.driven(|_| {}).await;
    env.insert("t-bad-sql", "ns", "ws").await;

    driven.settle().await;

    let ticket = env.ticket("t-bad-sql").await;
    assert_eq!(ticket.state, TicketState::Failed);
    assert_eq!(ticket.deploy_success, Some(false));
    assert_eq!(ticket.validation_result.as_deref(), Some("VALIDATION_RESULT_INVALID_QUERY"));
    let stored = stored_text(&env.db_path, ticket.id, "validation_errors").await.expect("issues are stored");
    let errors: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        errors,
        json!([{"line": 3, "column": 10, "end_line": 3, "end_column": 16, "message": "Object 'orders' not found"}]),
        "positions arrive as strings and are stored as integers"
    );
    assert!(ticket.error_code.is_none(), "a rejected draft is an outcome, not an API error");
    driven.stop().await;
}

#[tokio::test]
async fn ticket_not_found_is_failed_with_the_error_code() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        id = "t-missing"
        steps = [{ not_found = true }]
        "#,
    )
    .await;
    let driven = env.driven(|_| {}).await;
    env.insert("t-missing", "ns", "ws").await;

    driven.settle().await;

    let ticket = env.ticket("t-missing").await;
    assert_eq!(ticket.state, TicketState::Failed);
    assert_eq!(ticket.error_code.as_deref(), Some("TicketNotFound"));
    assert!(ticket.error_message.as_deref().is_some_and(|message| message.contains("t-missing")));
    assert_eq!(ticket.polls, 1, "a permanent error is not retried");
    driven.stop().await;
}

#[tokio::test]
async fn throttling_5xx_truncated_bodies_and_dropped_connections_are_retried_until_success() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        id = "t-throttled"
        steps = [{ error = "Throttling.User", retry_after_ms = 150 }, { status = "FINISHED", success = true }]
        [[tickets]]
        id = "t-5xx"
        steps = [{ error = "ServiceUnavailable" }, { html = true, http_status = 502 }, { status = "FINISHED", success = true }]
        [[tickets]]
        id = "t-truncated"
        steps = [{ truncated = true }, { status = "FINISHED", success = true }]
        [[tickets]]
        id = "t-dropped"
        steps = [{ drop = true }, { drop = true }, { status = "FINISHED", success = true }]
        [[tickets]]
        id = "t-huge"
        steps = [{ garbage_bytes = 3000000 }, { status = "FINISHED", success = true }]
        "#,
    )
    .await;
    let daemon = env.spawn_daemon(|_| {}).await;
    for id in ["t-throttled", "t-5xx", "t-truncated", "t-dropped", "t-huge"] {
        env.insert(id, "ns", "ws").await;
    }
    for (id, polls) in [("t-throttled", 2), ("t-5xx", 3), ("t-truncated", 2), ("t-dropped", 3), ("t-huge", 2)] {
        let ticket = env.wait_final(id).await;
        assert_eq!(ticket.state, TicketState::Succeeded, "{id}");
        assert_eq!(ticket.polls, polls, "{id}");
        assert!(ticket.error_code.is_none(), "{id}: a later success clears the error");
    }
    // The throttled ticket waited at least the server's hint before its second poll.
    let throttled: Vec<_> =
        env.sim.requests().into_iter().filter(|request| request.ticket_id.as_deref() == Some("t-throttled")).collect();
    let gap = throttled[1].started_at - throttled[0].finished_at;
    assert!(gap >= chrono::Duration::milliseconds(140), "retry-after honoured, waited {gap}");
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn errors_between_polls_are_recorded_on_the_pending_row() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        id = "t-flaky"
        steps = [{ error = "InternalError" }]
        "#,
    )
    .await;
    let store = env.store().await;
    let driven = env.driven(|_| {}).await;
    env.insert("t-flaky", "ns", "ws").await;
    let ticket = driven
        .turn_until(|| async {
            let rows = store.find_tickets("t-flaky", None, None, None).await.unwrap();
            rows.into_iter().find(|ticket| ticket.error_streak >= 2)
        })
        .await;
    assert_eq!(ticket.state, TicketState::Pending);
    assert_eq!(ticket.error_code.as_deref(), Some("InternalError"));
    assert_eq!(ticket.running_streak, 0);
    driven.stop().await;
    store.close().await;
}

#[tokio::test]
async fn unknown_status_keeps_the_ticket_polling_until_a_final_one() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        id = "t-odd"
        steps = [{ status = "VALIDATING_SOMETHING_NEW" }]
        "#,
    )
    .await;
    let store = env.store().await;
    let driven = env.driven(|_| {}).await;
    env.insert("t-odd", "ns", "ws").await;
    let ticket = driven
        .turn_until(|| async {
            let rows = store.find_tickets("t-odd", None, None, None).await.unwrap();
            rows.into_iter().find(|ticket| ticket.polls >= 4)
        })
        .await;
    assert_eq!(ticket.state, TicketState::Pending);
    assert_eq!(ticket.ticket_status.as_ref().map(TicketStatus::as_wire), Some("VALIDATING_SOMETHING_NEW"));
    assert!(ticket.error_code.is_none(), "an unknown status is not an error");

    env.sim.set_script("t-odd", vec![Step::finished_ok()]);
    driven.settle().await;
    assert_eq!(env.ticket("t-odd").await.state, TicketState::Succeeded);
    driven.stop().await;
    store.close().await;
}

#[tokio::test]
async fn a_ticket_that_never_finishes_expires_at_its_deadline() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        prefix = "t-stuck"
        steps = [{ status = "EXECUTING" }]
        "#,
    )
    .await;
    let daemon = env.spawn_daemon(|config| config.poll.deadline = Duration::from_millis(600)).await;
    // One row relies on poll.deadline, the other names its own deadline in a hand-written form.
    env.insert("t-stuck-default", "ns", "ws").await;
    env.execute_sql(
        "INSERT INTO tickets (ticket_id, namespace, workspace, deadline_at)
         VALUES ('t-stuck-own', 'ns', 'ws', strftime('%Y-%m-%d %H:%M:%f', 'now', '+0.4 seconds'))",
    )
    .await;

    for id in ["t-stuck-default", "t-stuck-own"] {
        let ticket = env.wait_final(id).await;
        assert_eq!(ticket.state, TicketState::Expired, "{id}");
        assert_eq!(ticket.ticket_status.as_ref().map(TicketStatus::as_wire), Some("EXECUTING"));
        let deadline = ticket.deadline().expect("the deadline is stored");
        let finished = ticket.finished_at.unwrap();
        assert!(finished >= deadline, "{id}: expired before its deadline");
        assert!(finished - deadline < chrono::Duration::seconds(2), "{id}: expired long after its deadline");
    }
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn ids_with_reserved_and_non_ascii_characters_round_trip() {
    let env = TestEnv::new("").await;
    let driven = env.driven(|_| {}).await;
    let ticket_id = "tick/et 1+ü:%2F*~";
    let namespace = "ns with space+plus/slash:ü";
    env.insert(ticket_id, namespace, "ws:1").await;

    driven.settle().await;

    let ticket = env.ticket(ticket_id).await;
    assert_eq!(ticket.state, TicketState::Succeeded);
    let requests = env.sim.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(request.ticket_id.as_deref(), Some(ticket_id));
        assert_eq!(request.namespace, namespace);
        assert_eq!(request.answer, request.answer.trim(), "{request:?}");
        assert!(!request.answer.starts_with("rejected"), "the simulator rejected {request:?}");
    }
    driven.stop().await;
}

#[tokio::test]
async fn killing_the_daemon_mid_polling_loses_nothing_and_keeps_the_backoff() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        prefix = "t-long-"
        steps = [
          { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" },
          { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" },
          { status = "FINISHED", success = true },
        ]
        "#,
    )
    .await;
    let ids: Vec<String> = (0..20).map(|n| format!("t-long-{n}")).collect();
    let store = env.store().await;
    for id in &ids {
        env.insert(id, "ns", "ws").await;
    }
    let first = env.spawn_binary(&[("FLINK_TICKETD_POLL__MAX_INTERVAL", "400ms")]);
    // Kill once every ticket has been polled at least three times, mid-schedule.
    eventually("three polls of every ticket", || async {
        ids.iter().all(|id| env.sim.polls_of(id) >= 3).then_some(())
    })
    .await;
    first.kill();

    let before: HashMap<String, (i64, i64)> = store
        .list_tickets(None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|ticket| (ticket.key.ticket_id.clone(), (ticket.running_streak, ticket.polls)))
        .collect();
    for id in &ids {
        let (streak, polls) = before[id];
        if polls < 9 {
            assert!(streak >= 2, "{id}: the persisted backoff count survives the kill ({streak})");
        }
    }

    let second = env.spawn_binary(&[("FLINK_TICKETD_POLL__MAX_INTERVAL", "400ms")]);
    env.wait_all_final().await;
    for id in &ids {
        let ticket = env.ticket(id).await;
        assert_eq!(ticket.state, TicketState::Succeeded, "{id}");
        // Nine answers in all: eight EXECUTING, one FINISHED. Every request the simulator answered
        // was counted, except possibly one in flight at the kill.
        let answered = i64::try_from(env.sim.polls_of(id)).unwrap();
        assert!(ticket.polls == answered || ticket.polls + 1 == answered, "{id}: {} vs {answered}", ticket.polls);
        // The streak counts every EXECUTING answer the daemon saw, across both processes: it
        // continued from the persisted value instead of starting again at zero.
        let lost_in_flight = answered - ticket.polls;
        assert_eq!(ticket.running_streak, 8 - lost_in_flight, "{id}: the backoff continued rather than restarting");
    }
    second.signal(15);
    assert_eq!(second.wait(), Some(0), "SIGTERM exits 0");
    store.close().await;
}

#[tokio::test]
async fn two_daemons_on_one_file_never_poll_a_ticket_at_once() {
    let env = TestEnv::new(
        r#"
        default = [
          { status = "EXECUTING", delay_ms = 15 }, { status = "EXECUTING", delay_ms = 15 },
          { status = "FINISHED", success = true, delay_ms = 15 },
        ]
        "#,
    )
    .await;
    env.store().await.close().await;
    env.execute_sql(&crate::harness::insert_tickets_sql((0..150).map(|n| format!("t-{n}")))).await;
    let one = env.spawn_daemon(|config| config.flink.max_in_flight = 8).await;
    let two = env.spawn_daemon(|config| config.flink.max_in_flight = 8).await;
    env.wait_all_final().await;
    one.stop().await.expect("clean shutdown");
    two.stop().await.expect("clean shutdown");

    let mut by_ticket: HashMap<String, Vec<_>> = HashMap::new();
    for request in env.sim.requests() {
        by_ticket.entry(request.ticket_id.clone().unwrap()).or_default().push(request);
    }
    assert_eq!(by_ticket.len(), 150);
    for (ticket, mut requests) in by_ticket {
        requests.sort_by_key(|request| request.started_at);
        assert_eq!(requests.len(), 3, "{ticket}: each answer was asked for once");
        for pair in requests.windows(2) {
            assert!(
                pair[1].started_at >= pair[0].finished_at,
                "{ticket}: two polls overlapped: {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
    }
}

#[tokio::test]
async fn a_wrong_secret_pauses_polling_instead_of_failing_tickets_and_polling_resumes_when_fixed() {
    let env = TestEnv::new("").await;
    let store = env.store().await;
    for n in 0..10 {
        env.insert(&format!("t-{n}"), "ns", "ws").await;
    }
    // The cloud knows the key under another secret: every signature is wrong.
    env.sim.set_credentials(vec![(KEY_ID.to_owned(), "the-real-secret".to_owned())]);
    let daemon = env.spawn_daemon(|_| {}).await;
    eventually("the signature error to be recorded", || async {
        let rows = store.list_tickets(None, None, 100).await.unwrap();
        rows.iter().any(|ticket| ticket.error_code.as_deref() == Some("SignatureDoesNotMatch")).then_some(())
    })
    .await;
    // Let the pause run for a while: its probes double (20 ms, 40 ms, 80 ms, ...).
    let rejected_before = env.sim.requests().len();
    eventually("a few probes", || async { (env.sim.requests().len() >= rejected_before + 3).then_some(()) }).await;
    let rows = store.list_tickets(None, None, 100).await.unwrap();
    assert!(rows.iter().all(|ticket| ticket.state == TicketState::Pending), "no ticket is failed for our own error");
    let requests = env.sim.requests();
    assert!(requests.iter().all(|request| request.answer == "signature mismatch"), "{requests:?}");
    assert!(
        requests.len() < 40,
        "paused polling sends probes, not a request per ticket per interval ({} requests)",
        requests.len()
    );

    // The secret is fixed (rotated on the cloud side to what the daemon has).
    env.sim.set_credentials(vec![(KEY_ID.to_owned(), crate::harness::KEY_SECRET.to_owned())]);
    env.wait_all_final().await;
    let rows = store.list_tickets(None, None, 100).await.unwrap();
    assert!(rows.iter().all(|ticket| ticket.state == TicketState::Succeeded && ticket.error_code.is_none()));
    daemon.stop().await.expect("clean shutdown");
    store.close().await;
}

#[tokio::test]
async fn access_denied_pauses_only_that_workspace_until_the_deadline() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        prefix = "denied-"
        steps = [{ error = "NoPermission" }]
        "#,
    )
    .await;
    let daemon = env.spawn_daemon(|config| config.poll.deadline = Duration::from_millis(1500)).await;
    for n in 0..3 {
        env.insert(&format!("denied-{n}"), "ns", "closed-ws").await;
        env.insert(&format!("fine-{n}"), "ns", "open-ws").await;
    }
    for n in 0..3 {
        let fine = env.wait_final(&format!("fine-{n}")).await;
        assert_eq!(fine.state, TicketState::Succeeded);
    }
    for n in 0..3 {
        let denied = env.wait_final(&format!("denied-{n}")).await;
        assert_eq!(denied.state, TicketState::Expired, "access denied is not a failure of the ticket");
        assert_eq!(denied.error_code.as_deref(), Some("NoPermission"));
    }
    let denied_requests =
        env.sim.requests().iter().filter(|request| request.workspace.as_deref() == Some("closed-ws")).count();
    assert!(denied_requests < 30, "the closed workspace was probed, not hammered ({denied_requests} requests)");
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_row_another_program_inserts_is_polled_within_the_change_probe_not_the_safety_timer() {
    // Neither the safety timer nor the heartbeat ends the loop's wait during this test: only the
    // change probe (or a poll finishing) can wake it.
    const LONG: Duration = Duration::from_secs(60);
    let env = TestEnv::new("").await;
    let config = env.config(|_| {});
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let daemon::Connection { store, flink } =
        daemon::connect(&config, &clock).await.expect("the store and client open");
    let (poller, recorder_task) =
        daemon::poller(&config, store.clone(), flink, clock, lease_owner_prefix("wake-test"), 4);
    let poller = Arc::new(poller.with_heartbeat(LONG).with_wake_interval(LONG));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let run = tokio::spawn(Arc::clone(&poller).run_until_cancelled(shutdown.clone(), tracker.clone()));

    // A first ticket worked off to its end leaves the loop waiting with nothing due.
    env.insert("wake-1", "ns", "ws").await;
    env.wait_final("wake-1").await;

    let inserted = Utc::now();
    let outside = outside_connection(&format!("sqlite://{}", env.db_path.display())).await;
    sqlx::query("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('wake-2', 'ns', 'ws')")
        .execute(&outside)
        .await
        .expect("the outside insert commits");
    let first_poll = eventually("the outside row's first poll", || async {
        env.sim.requests().into_iter().find(|request| request.ticket_id.as_deref() == Some("wake-2"))
    })
    .await;
    let latency = (first_poll.started_at - inserted).to_std().unwrap_or(Duration::ZERO);
    eprintln!("outside insert to first poll: {latency:?}");
    assert!(latency < Duration::from_millis(500), "the outside row waited {latency:?} for its first poll");

    shutdown.cancel();
    run.await.expect("the loop joins");
    tracker.close();
    tracker.wait().await;
    outside.close().await;
    drop(poller);
    recorder_task.await.expect("the recorder joins");
    store.close().await;
}
