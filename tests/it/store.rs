//! The store against a migrated SQLite file: claims, leases and fencing, constraints, and the
//! user commands' queries.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flink_ticketd::domain::{DeployResult, RowId, TicketState, TicketStatus};
use flink_ticketd::store::{
    Announcement, Finish, Lease, NewDelivery, NewTicket, Reschedule, Store, StoreSettings, Ticket,
};

use crate::harness::new_ticket;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Store,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store =
        Store::open(&StoreSettings { path: path.clone(), busy_timeout: Duration::from_secs(5), max_readers: 2 })
            .await
            .unwrap();
    Fixture { _dir: dir, path, store }
}

/// An instant `seconds` after a base ten minutes ahead of the moment this test first asked (each
/// test runs on its own thread), so that rows placed with it are in the near future of the rows the
/// database stamps with its own clock, whatever the date.
fn at(seconds: i64) -> DateTime<Utc> {
    thread_local! {
        static BASE: DateTime<Utc> = {
            let now = Utc::now() + chrono::Duration::minutes(10);
            now - chrono::Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos() % 1_000_000))
        };
    }
    BASE.with(|base| *base + chrono::Duration::seconds(seconds))
}

/// A `ticket.failed` delivery of `row` to each of `urls`.
fn failed_deliveries(row: &Ticket, urls: &[&str]) -> Vec<NewDelivery> {
    urls.iter()
        .map(|url| NewDelivery {
            ticket: row.id.0,
            url: (*url).to_owned(),
            webhook_id: format!("tkt_{}_0.failed", row.id),
            event_type: "ticket.failed".to_owned(),
            payload: "{}".to_owned(),
        })
        .collect()
}

async fn insert_due_at(store: &Store, id: &str, due: DateTime<Utc>) -> RowId {
    let ticket = store.insert_ticket(&new_ticket(id)).await.unwrap();
    let lease = Lease("setup#0".to_owned());
    // Claim at creation time and record a reschedule to place the row exactly.
    let claimed = store
        .claim_due_tickets(&lease, Utc::now(), Duration::from_secs(60), 1000, Duration::from_secs(3600))
        .await
        .unwrap();
    for row in claimed {
        let next = if row.id == ticket.id { due } else { row.next_poll_at };
        let reschedule = Reschedule {
            next_poll_at: next,
            running_streak: 0,
            error_streak: 0,
            polled: false,
            request_id: None,
            answer: None,
            error: None,
            running_seen_ms: None,
            note: String::new(),
        };
        assert!(store.record_progress(&lease, row.id, Utc::now(), &reschedule).await.unwrap());
    }
    ticket.id
}

#[tokio::test]
async fn a_claim_takes_due_rows_once_earliest_first() {
    let fixture = fixture().await;
    let store = &fixture.store;
    insert_due_at(store, "late", at(30)).await;
    insert_due_at(store, "early", at(10)).await;
    insert_due_at(store, "future", at(100)).await;

    assert_eq!(store.next_due_at().await.unwrap(), Some(at(10)));
    let first = Lease("a#1".to_owned());
    let claimed =
        store.claim_due_tickets(&first, at(50), Duration::from_secs(60), 1, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(claimed.iter().map(|t| t.key.ticket_id.as_str()).collect::<Vec<_>>(), vec!["early"]);
    assert_eq!(claimed[0].lease_owner.as_deref(), Some("a#1"));
    assert_eq!(claimed[0].next_poll_at, claimed[0].lease_until.unwrap(), "a claimed row is due when its lease lapses");

    let second = Lease("b#1".to_owned());
    let rest =
        store.claim_due_tickets(&second, at(50), Duration::from_secs(60), 10, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(
        rest.iter().map(|t| t.key.ticket_id.as_str()).collect::<Vec<_>>(),
        vec!["late"],
        "leased and future rows are not taken"
    );
}

#[tokio::test]
async fn a_lapsed_lease_lets_another_claim_take_the_row_and_fences_the_old_owner() {
    let fixture = fixture().await;
    let store = &fixture.store;
    let id = insert_due_at(store, "t", at(0)).await;
    let old = Lease("old#1".to_owned());
    assert_eq!(
        store
            .claim_due_tickets(&old, at(1), Duration::from_secs(10), 10, Duration::from_secs(3600))
            .await
            .unwrap()
            .len(),
        1
    );
    // Nobody else can take it while the lease holds.
    let new = Lease("new#1".to_owned());
    assert!(
        store
            .claim_due_tickets(&new, at(5), Duration::from_secs(10), 10, Duration::from_secs(3600))
            .await
            .unwrap()
            .is_empty()
    );
    // After it lapses, another daemon takes it.
    assert_eq!(
        store
            .claim_due_tickets(&new, at(12), Duration::from_secs(10), 10, Duration::from_secs(3600))
            .await
            .unwrap()
            .len(),
        1
    );

    let stale = Reschedule {
        next_poll_at: at(100),
        running_streak: 9,
        error_streak: 0,
        polled: true,
        request_id: None,
        answer: None,
        error: None,
        running_seen_ms: None,
        note: String::new(),
    };
    assert!(!store.record_progress(&old, id, at(13), &stale).await.unwrap(), "the old owner is fenced off");
    let finish = Finish { state: TicketState::Succeeded, polled: true, request_id: None, answer: None, error: None };
    assert_eq!(store.record_final(&old, id, at(13), &finish, |_| Announcement::default()).await.unwrap(), None);
    assert_eq!(store.record_final(&new, id, at(13), &finish, |_| Announcement::default()).await.unwrap(), Some(0));
    let ticket = store.ticket(id).await.unwrap().unwrap();
    assert_eq!((ticket.state.as_str(), ticket.running_streak, ticket.polls), ("succeeded", 0, 1));
}

#[tokio::test]
async fn the_final_state_and_its_deliveries_commit_together() {
    let fixture = fixture().await;
    let store = &fixture.store;
    let id = insert_due_at(store, "t", at(0)).await;
    let lease = Lease("d#1".to_owned());
    store.claim_due_tickets(&lease, at(1), Duration::from_secs(10), 10, Duration::from_secs(3600)).await.unwrap();
    let finish = Finish {
        state: TicketState::Failed,
        polled: true,
        request_id: Some("R1".to_owned()),
        answer: Some(DeployResult { ticket_status: Some(TicketStatus::Failed), ..DeployResult::default() }),
        error: None,
    };
    let written = store
        .record_final(&lease, id, at(2), &finish, |row| {
            assert_eq!(row.state, TicketState::Failed, "the closure sees the final row");
            let deliveries = failed_deliveries(row, &["http://a.example/hook", "http://b.example/hook"]);
            Announcement { deliveries, webhook_note: Some("note".to_owned()) }
        })
        .await
        .unwrap();
    assert_eq!(written, Some(2));
    assert_eq!(store.ticket(id).await.unwrap().unwrap().webhook_note.as_deref(), Some("note"));
    let deliveries = store.deliveries_of_ticket(id.0).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    assert!(
        deliveries
            .iter()
            .all(|delivery| delivery.state == "pending" && delivery.webhook_id == format!("tkt_{id}_0.failed"))
    );
}

#[tokio::test]
async fn a_delivery_the_outbox_refuses_is_dropped_with_a_note_and_the_final_state_commits() {
    let fixture = fixture().await;
    let store = &fixture.store;
    let id = insert_due_at(store, "t", at(0)).await;
    let lease = Lease("d#1".to_owned());
    store.claim_due_tickets(&lease, at(1), Duration::from_secs(10), 10, Duration::from_secs(3600)).await.unwrap();
    let finish = Finish { state: TicketState::Failed, polled: true, request_id: None, answer: None, error: None };
    let too_long = format!("http://a.example/{}", "x".repeat(3000));
    let written = store
        .record_final(&lease, id, at(2), &finish, |row| {
            let deliveries = failed_deliveries(row, &["http://ok.example/hook", too_long.as_str()]);
            Announcement { deliveries, webhook_note: Some("first note".to_owned()) }
        })
        .await
        .expect("the final state commits");
    assert_eq!(written, Some(1), "only the delivery the outbox took is counted");
    let row = store.ticket(id).await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Failed);
    let note = row.webhook_note.unwrap_or_default();
    assert!(note.starts_with("first note; webhook to http://a.example/*** dropped"), "{note}");
    assert!(note.contains("dropped: the delivery could not be written"), "{note}");
    let deliveries = store.deliveries_of_ticket(id.0).await.unwrap();
    assert_eq!(deliveries.iter().map(|delivery| delivery.url.as_str()).collect::<Vec<_>>(), ["http://ok.example/hook"]);
}

#[tokio::test]
async fn constraints_refuse_rows_sql_can_judge() {
    let fixture = fixture().await;
    let store = &fixture.store;
    let long = "x".repeat(129);
    let cases: Vec<(&str, String)> = vec![
        ("empty ticket id", "('', 'ns', 'ws', NULL, NULL)".to_owned()),
        ("over-long ticket id", format!("('{long}', 'ns', 'ws', NULL, NULL)")),
        ("control character", "('a' || char(10) || 'b', 'ns', 'ws', NULL, NULL)".to_owned()),
        ("dot segment", "('..', 'ns', 'ws', NULL, NULL)".to_owned()),
        ("empty namespace", "('t', '', 'ws', NULL, NULL)".to_owned()),
        ("unparsable deadline", "('t', 'ns', 'ws', 'next tuesday', NULL)".to_owned()),
        ("non-http webhook", "('t', 'ns', 'ws', NULL, 'file:///etc/passwd')".to_owned()),
    ];
    for (what, values) in cases {
        let result = sqlx_execute(
            &fixture.path,
            &format!("INSERT INTO tickets (ticket_id, namespace, workspace, deadline_at, webhook_url) VALUES {values}"),
        )
        .await;
        assert!(result.is_err(), "{what} was accepted");
    }
    let state = sqlx_execute(
        &fixture.path,
        "INSERT INTO tickets (ticket_id, namespace, workspace, state) VALUES ('t', 'ns', 'ws', 'done')",
    )
    .await;
    assert!(state.unwrap_err().contains("state_must_be_known"));

    store.insert_ticket(&new_ticket("dup")).await.unwrap();
    let duplicate = store.insert_ticket(&new_ticket("dup")).await.unwrap_err();
    assert!(duplicate.to_string().contains("UNIQUE"), "{duplicate}");
    let elsewhere = NewTicket { workspace: "other-ws".to_owned(), ..new_ticket("dup") };
    store.insert_ticket(&elsewhere).await.expect("the same ID in another workspace is another ticket");
}

#[tokio::test]
async fn a_hand_written_deadline_is_stored_in_the_canonical_form() {
    let fixture = fixture().await;
    sqlx_execute(
        &fixture.path,
        "INSERT INTO tickets (ticket_id, namespace, workspace, deadline_at) VALUES
           ('a', 'ns', 'ws', '2026-12-01 10:00'),
           ('b', 'ns', 'ws', '2026-12-01T18:00:00+08:00'),
           ('c', 'ns', 'ws', '2026-12-01T10:00:00.5Z')",
    )
    .await
    .unwrap();
    for (id, expected) in
        [("a", "2026-12-01T10:00:00.000Z"), ("b", "2026-12-01T10:00:00.000Z"), ("c", "2026-12-01T10:00:00.500Z")]
    {
        let rows = fixture.store.find_tickets(id, None, None).await.unwrap();
        assert_eq!(
            crate::harness::stored_text(&fixture.path, rows[0].id, "deadline_at").await.as_deref(),
            Some(expected),
            "{id}"
        );
    }
}

#[tokio::test]
async fn retry_cancel_and_release_change_only_what_they_should() {
    let fixture = fixture().await;
    let store = &fixture.store;
    let id = insert_due_at(store, "t", at(0)).await;
    assert!(!store.retry_ticket(id, at(1), at(100)).await.unwrap(), "a pending ticket is not retried");
    assert!(store.cancel_ticket(id, at(1)).await.unwrap());
    assert!(!store.cancel_ticket(id, at(2)).await.unwrap(), "only pending tickets are cancelled");
    assert_eq!(store.ticket(id).await.unwrap().unwrap().state, TicketState::Cancelled);
    assert!(store.retry_ticket(id, at(3), at(100)).await.unwrap());
    let retried = store.ticket(id).await.unwrap().unwrap();
    assert_eq!((retried.state.as_str(), retried.retries), ("pending", 1));
    assert_eq!(retried.deadline().unwrap(), at(100));
    assert_eq!(retried.finished_at, None);

    let lease = Lease("host:1:abcd#7".to_owned());
    let claimed =
        store.claim_due_tickets(&lease, at(4), Duration::from_secs(600), 10, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        store.release_tickets("host:1:abc#", at(5)).await.unwrap(),
        0,
        "another owner's prefix releases nothing"
    );
    assert_eq!(store.release_tickets("host:1:abcd#", at(5)).await.unwrap(), 1);
    assert_eq!(store.next_due_at().await.unwrap(), Some(at(5)), "a released ticket is due at once");
}

async fn sqlx_execute(path: &std::path::Path, sql: &str) -> Result<(), String> {
    use sqlx::Connection as _;
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let result = sqlx::raw_sql(sql).execute(&mut connection).await.map(|_| ()).map_err(|error| error.to_string());
    connection.close().await.unwrap();
    result
}

#[tokio::test]
async fn claim_ticket_takes_only_its_own_row_and_only_when_due_and_unleased() {
    let fixture = fixture().await;
    let store = &fixture.store;
    let mine = insert_due_at(store, "mine", at(10)).await;
    let other = insert_due_at(store, "other", at(0)).await;
    let lease = Lease("deploy#1".to_owned());
    let (lease_for, deadline) = (Duration::from_secs(60), Duration::from_secs(3600));

    assert!(store.claim_ticket(&lease, mine, at(5), lease_for, deadline).await.unwrap().is_none(), "not due yet");
    let claimed = store.claim_ticket(&lease, mine, at(10), lease_for, deadline).await.unwrap().expect("due");
    assert_eq!((claimed.key.ticket_id.as_str(), claimed.lease_owner.as_deref()), ("mine", Some("deploy#1")));
    let held = Lease("daemon#7".to_owned());
    assert!(store.claim_ticket(&held, mine, at(11), lease_for, deadline).await.unwrap().is_none(), "leased");
    assert_eq!(store.ticket(other).await.unwrap().unwrap().lease_owner, None, "other rows are left alone");
}

#[tokio::test]
async fn a_failing_write_in_a_group_commit_fails_alone() {
    let fixture = fixture().await;
    let store = &fixture.store;
    let good = insert_due_at(store, "good", at(0)).await;
    let progress = insert_due_at(store, "progress", at(0)).await;
    let bad = insert_due_at(store, "bad", at(0)).await;
    let lease = Lease("r#1".to_owned());
    assert_eq!(
        store
            .claim_due_tickets(&lease, at(1), Duration::from_secs(60), 10, Duration::from_secs(3600))
            .await
            .unwrap()
            .len(),
        3
    );
    let (recorder, task) = store.recorder();
    let finish = Finish { state: TicketState::Succeeded, polled: true, request_id: None, answer: None, error: None };
    let announce_one = std::sync::Arc::new(|row: &flink_ticketd::store::Ticket| Announcement {
        deliveries: vec![NewDelivery {
            ticket: row.id.0,
            url: "http://a.example/hook".to_owned(),
            webhook_id: format!("tkt_{}_0.succeeded", row.id),
            event_type: "ticket.succeeded".to_owned(),
            payload: "{}".to_owned(),
        }],
        webhook_note: None,
    });
    // Another program's trigger refuses the final state of "bad" (SQLite cannot tell it from a
    // constraint of the table's own).
    let mut outside: sqlx::SqliteConnection =
        sqlx::Connection::connect(&format!("sqlite://{}", fixture.path.display())).await.unwrap();
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_bad BEFORE UPDATE OF state ON tickets
         WHEN NEW.ticket_id = 'bad' AND NEW.state <> 'pending'
         BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END",
    )
    .execute(&mut outside)
    .await
    .unwrap();
    sqlx::Connection::close(outside).await.unwrap();
    let announce_broken = announce_one.clone();
    let reschedule = Reschedule {
        next_poll_at: at(30),
        running_streak: 3,
        error_streak: 0,
        polled: true,
        request_id: Some("R".to_owned()),
        answer: Some(DeployResult { ticket_status: Some(TicketStatus::Executing), ..DeployResult::default() }),
        error: None,
        running_seen_ms: None,
        note: String::new(),
    };
    // Submitted together, the three land in one batch.
    let (good_result, progress_result, bad_result) = tokio::join!(
        recorder.record_final(&lease, good, at(2), &finish, announce_one),
        recorder.record_progress(&lease, progress, at(2), &reschedule),
        recorder.record_final(&lease, bad, at(2), &finish, announce_broken),
    );
    assert!(matches!(good_result, Ok(Some(1))), "{good_result:?}");
    assert!(matches!(progress_result, Ok(true)), "{progress_result:?}");
    assert!(
        matches!(bad_result, Err(flink_ticketd::store::RecordError::Database(_))),
        "the refused write is reported to its caller with the database error: {bad_result:?}"
    );
    drop(recorder);
    task.await.unwrap();

    assert_eq!(store.ticket(good).await.unwrap().unwrap().state, TicketState::Succeeded);
    assert_eq!(store.deliveries_of_ticket(good.0).await.unwrap().len(), 1);
    let progressed = store.ticket(progress).await.unwrap().unwrap();
    assert_eq!(
        (
            progressed.state.as_str(),
            progressed.running_streak,
            progressed.ticket_status.as_ref().map(TicketStatus::as_wire)
        ),
        ("pending", 3, Some("EXECUTING"))
    );
    assert_eq!(progressed.next_poll_at, at(30));
    assert_eq!(
        store.ticket(bad).await.unwrap().unwrap().state,
        TicketState::Pending,
        "the refused write changed nothing"
    );
    assert!(store.deliveries_of_ticket(bad.0).await.unwrap().is_empty(), "nor wrote its deliveries");

    // A stale lease writes nothing, in a batch as alone.
    let stale = recorder_for(store).record_progress(&Lease("other#9".to_owned()), progress, at(3), &reschedule).await;
    assert!(matches!(stale, Ok(false)), "{stale:?}");
}

fn recorder_for(store: &Store) -> flink_ticketd::store::Recorder {
    store.recorder().0
}

#[tokio::test]
async fn the_recorder_answers_each_result_by_row_and_lease_when_a_lapsed_and_a_live_lease_meet_in_one_batch() {
    let fixture = fixture().await;
    let store = &fixture.store;
    let first = insert_due_at(store, "first", at(0)).await;
    let second = insert_due_at(store, "second", at(0)).await;
    let old = Lease("old#1".to_owned());
    let new = Lease("new#1".to_owned());
    let deadline = Duration::from_secs(3600);
    assert_eq!(store.claim_due_tickets(&old, at(1), Duration::from_secs(1), 10, deadline).await.unwrap().len(), 2);
    let taken = store.claim_due_tickets(&new, at(3), Duration::from_secs(60), 10, deadline).await.unwrap();
    assert_eq!(taken.len(), 2, "the old leases lapsed at 2s");
    let (recorder, task) = store.recorder();
    let finish = Finish { state: TicketState::Succeeded, polled: true, request_id: None, answer: None, error: None };
    let announce = std::sync::Arc::new(|row: &flink_ticketd::store::Ticket| Announcement {
        deliveries: vec![NewDelivery {
            ticket: row.id.0,
            url: "http://a.example/hook".to_owned(),
            webhook_id: format!("tkt_{}_0.{}", row.id, row.state),
            event_type: "ticket.succeeded".to_owned(),
            payload: "{}".to_owned(),
        }],
        webhook_note: None,
    });
    let reschedule = Reschedule {
        next_poll_at: at(30),
        running_streak: 1,
        error_streak: 0,
        polled: true,
        request_id: None,
        answer: None,
        error: None,
        running_seen_ms: None,
        note: String::new(),
    };
    // Submitted together on this single-threaded runtime, the four land in one batch: on each
    // row the lapsed lease's result comes first.
    let (old_progress, new_final, old_final, new_progress) = tokio::join!(
        recorder.record_progress(&old, first, at(4), &reschedule),
        recorder.record_final(&new, first, at(4), &finish, announce.clone()),
        recorder.record_final(&old, second, at(4), &finish, announce.clone()),
        recorder.record_progress(&new, second, at(4), &reschedule),
    );
    drop(recorder);
    task.await.unwrap();
    assert!(matches!(old_progress, Ok(false)), "the lapsed lease's progress was not written: {old_progress:?}");
    assert!(matches!(new_final, Ok(Some(1))), "{new_final:?}");
    assert!(matches!(old_final, Ok(None)), "the lapsed lease's final state was not written: {old_final:?}");
    assert!(matches!(new_progress, Ok(true)), "{new_progress:?}");
    assert_eq!(store.ticket(first).await.unwrap().unwrap().state, TicketState::Succeeded);
    let second_row = store.ticket(second).await.unwrap().unwrap();
    assert_eq!((second_row.state.as_str(), second_row.running_streak), ("pending", 1));
    assert!(store.deliveries_of_ticket(second.0).await.unwrap().is_empty(), "no announcement for a pending row");
}

#[tokio::test]
async fn the_pull_back_after_a_clock_step_makes_unleased_rows_due_and_leaves_leased_ones_alone() {
    let fixture = fixture().await;
    let store = &fixture.store;
    let far = insert_due_at(store, "far", at(100_000)).await;
    let held = insert_due_at(store, "held", at(0)).await;
    let lease = Lease("poller#1".to_owned());
    let claimed = store
        .claim_due_tickets(&lease, at(1), Duration::from_secs(100_000), 10, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|row| row.id).collect::<Vec<_>>(), [held]);
    let held_before = store.ticket(held).await.unwrap().unwrap();

    assert_eq!(store.pull_back_due_times(at(2), at(50)).await.unwrap(), 1);
    assert_eq!(store.ticket(far).await.unwrap().unwrap().next_poll_at, at(2));
    let held_after = store.ticket(held).await.unwrap().unwrap();
    assert_eq!(
        (held_after.next_poll_at, held_after.lease_owner, held_after.lease_until),
        (held_before.next_poll_at, held_before.lease_owner, held_before.lease_until),
        "the row whose poll is running keeps its lease and due time"
    );
    let other = Lease("other#1".to_owned());
    let again = store.claim_due_tickets(&other, at(3), Duration::from_secs(60), 10, Duration::from_secs(3600)).await;
    let again: Vec<RowId> = again.unwrap().iter().map(|row| row.id).collect();
    assert_eq!(again, [far], "no second claim of the held row");
}

#[tokio::test]
async fn the_change_probe_reports_commits_by_other_connections_and_nothing_else() {
    let fixture = fixture().await;
    let mut probe = fixture.store.change_probe().await.unwrap();
    assert!(!probe.changed().await.unwrap(), "nothing committed since the probe opened");

    let outside = crate::harness::outside_connection(&format!("sqlite://{}", fixture.path.display())).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets").fetch_one(&outside).await.unwrap();
    assert_eq!(count, 0);
    assert!(!probe.changed().await.unwrap(), "a read by another connection is no change");

    sqlx::query("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('probed', 'ns', 'ws')")
        .execute(&outside)
        .await
        .unwrap();
    assert!(probe.changed().await.unwrap(), "another connection committed");
    assert!(!probe.changed().await.unwrap(), "a change is reported once");

    fixture.store.insert_ticket(&new_ticket("own-writer")).await.unwrap();
    assert!(probe.changed().await.unwrap(), "the store's own writer is another connection too");

    probe.close().await.unwrap();
    outside.close().await;
    fixture.store.close().await;
}
