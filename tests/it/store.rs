//! The store conformance suite: every case written once and run on both backends, a migrated
//! SQLite file and a fresh PostgreSQL database (claims, leases and fencing, concurrency,
//! constraints, the outbox, retention, the change probe, and the user commands' queries).

use std::time::Duration;

use chrono::{DateTime, Utc};
use flink_ticketd::domain::{DeployResult, RowId, TicketState, TicketStatus};
use flink_ticketd::store::{
    Announcement, Finish, Handoff, Lease, NewDelivery, NewTicket, PostgresSettings, Reschedule, Store, StoreSettings,
    Ticket,
};

use crate::harness::new_ticket;
use crate::pg::TestDatabase;

/// One store under test, on one backend, with a way to run SQL on it as another program would.
pub(crate) struct Fixture {
    pub(crate) store: Store,
    pub(crate) backend: Backend,
}

/// Where a [`Fixture`]'s store lives.
pub(crate) enum Backend {
    /// A SQLite file in a temp dir.
    Sqlite { _dir: tempfile::TempDir, path: std::path::PathBuf },
    /// A fresh database on the test server.
    Postgres(TestDatabase),
}

impl Fixture {
    /// A migrated SQLite file.
    pub(crate) async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store =
            Store::open(&StoreSettings { path: path.clone(), busy_timeout: Duration::from_secs(5), max_readers: 2 })
                .await
                .unwrap();
        Fixture { store, backend: Backend::Sqlite { _dir: dir, path } }
    }

    /// A migrated PostgreSQL database, or `None` (skipped) without a test server.
    pub(crate) async fn postgres() -> Option<Fixture> {
        let database = crate::pg::database().await?;
        let store = Store::open(&postgres_settings(database.url())).await.unwrap();
        Some(Fixture { store, backend: Backend::Postgres(database) })
    }

    /// Runs `sql` on a plain connection of its own, as another program would.
    pub(crate) async fn execute(&self, sql: &str) -> Result<(), String> {
        use sqlx::Connection as _;
        match &self.backend {
            Backend::Sqlite { path, .. } => sqlx_execute(path, sql).await,
            Backend::Postgres(database) => {
                let mut connection = database.connect().await;
                let result = sqlx::raw_sql(sql).execute(&mut connection).await.map(drop).map_err(|e| e.to_string());
                connection.close().await.unwrap();
                result
            }
        }
    }

    /// A time column of row `id` as the database shows it to a person (canonical text).
    pub(crate) async fn stored_text(&self, id: RowId, column: &str) -> Option<String> {
        match &self.backend {
            Backend::Sqlite { path, .. } => crate::harness::stored_text(path, id, column).await,
            Backend::Postgres(database) => {
                use sqlx::Connection as _;
                let mut connection = database.connect().await;
                let text = sqlx::query_scalar(&format!(
                    "SELECT to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') FROM tickets WHERE id = $1"
                ))
                .bind(id.0)
                .fetch_one(&mut connection)
                .await
                .unwrap();
                connection.close().await.unwrap();
                text
            }
        }
    }

    /// SQL for the one-character string with this code.
    pub(crate) fn char_sql(&self, code: u8) -> String {
        match &self.backend {
            Backend::Sqlite { .. } => format!("char({code})"),
            Backend::Postgres(_) => format!("chr({code})"),
        }
    }

    /// Installs a trigger (as another program might) that refuses to end the ticket `ticket_id`.
    pub(crate) async fn refuse_final_state_of(&self, ticket_id: &str) {
        let sql = match &self.backend {
            Backend::Sqlite { .. } => format!(
                "CREATE TRIGGER refuse_bad BEFORE UPDATE OF state ON tickets
                 WHEN NEW.ticket_id = '{ticket_id}' AND NEW.state <> 'pending'
                 BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
            ),
            Backend::Postgres(_) => format!(
                "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION 'refused by a trigger'; END $$;
                 CREATE TRIGGER refuse_bad BEFORE UPDATE OF state ON tickets FOR EACH ROW
                 WHEN (NEW.ticket_id = '{ticket_id}' AND NEW.state <> 'pending') EXECUTE FUNCTION refuse_bad();"
            ),
        };
        self.execute(&sql).await.unwrap();
    }
}

/// Settings for a store on the test database at `url`: a small pool, short timeouts.
pub(crate) fn postgres_settings(url: &str) -> PostgresSettings {
    PostgresSettings {
        url: secrecy::SecretString::from(url.to_owned()),
        max_connections: 10,
        statement_timeout: Duration::from_secs(10),
        listen: true,
    }
}

/// Each conformance case, run once on SQLite and once on PostgreSQL (skipped without a server):
/// `store::<case>::on_sqlite` and `store::<case>::on_postgres`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn on_sqlite() {
                    super::$case(super::Fixture::sqlite().await).await;
                }

                #[tokio::test]
                async fn on_postgres() {
                    if let Some(fixture) = super::Fixture::postgres().await {
                        super::$case(fixture).await;
                    }
                }
            }
        )*
    };
}

on_both_backends!(
    a_claim_takes_due_rows_once_earliest_first,
    a_lapsed_lease_lets_another_claim_take_the_row_and_fences_the_old_owner,
    the_final_state_and_its_deliveries_commit_together,
    a_delivery_the_outbox_refuses_is_dropped_with_a_note_and_the_final_state_commits,
    constraints_refuse_rows_sql_can_judge,
    a_hand_written_deadline_is_stored_in_the_canonical_form,
    retry_cancel_and_release_change_only_what_they_should,
    claim_ticket_takes_only_its_own_row_and_only_when_due_and_unleased,
    a_failing_write_in_a_group_commit_fails_alone,
    the_recorder_answers_each_result_by_row_and_lease_when_a_lapsed_and_a_live_lease_meet_in_one_batch,
    with_no_receiver_configured_the_recorder_announces_the_tickets_naming_their_own_as_the_final_row_says,
    a_receiver_added_while_its_ticket_is_polled_is_announced_when_the_batch_reads_no_final_row_back,
    the_pull_back_after_a_clock_step_makes_unleased_rows_due_and_leaves_leased_ones_alone,
    the_change_probe_wakes_on_a_commit_by_another_connection,
    eight_concurrent_claimers_never_get_the_same_row,
    deliveries_are_claimed_once_per_lease_with_at_most_per_url_in_flight,
    deliveries_handed_to_the_writer_go_to_its_loop_at_once_and_to_any_loop_once_the_handoff_lapses,
    concurrent_retention_rounds_delete_each_row_once,
    the_user_commands_read_what_the_daemon_wrote,
    every_kind_is_its_own_ticket_and_keeps_its_result_columns_byte_for_byte,
    the_history_caps_keep_the_first_row_and_the_latest_ones_at_every_count,
    a_claim_and_batches_of_more_rows_than_the_writer_hands_over_at_once_lose_none,
);

/// On SQLite, what the recorder commits reaches the database file itself a moment later: the WAL
/// is copied back off the writer's path, long before it grows to the writer's own threshold.
#[tokio::test]
async fn on_sqlite_the_recorders_commits_reach_the_database_file_without_the_writer_checkpointing() {
    let fixture = Fixture::sqlite().await;
    let Backend::Sqlite { path, .. } = &fixture.backend else { unreachable!("a SQLite fixture") };
    let store = &fixture.store;
    let id = insert_due_at(store, "copied", at(0)).await;
    let lease = claim_due_as_d1(store).await;
    let (recorder, task) = store.recorder();
    let finish = Finish { state: TicketState::Succeeded, polled: true, request_id: None, answer: None, error: None };
    let nothing_to_announce = flink_ticketd::store::Announce::own_receivers_only(|_: &Ticket| Announcement {
        deliveries: Vec::new(),
        webhook_note: None,
        handoff: None,
    });
    let recorded = recorder.record_final(&lease, &row(store, id).await, at(2), &finish, nothing_to_announce).await;
    assert!(matches!(recorded, Ok(Some(0))), "{recorded:?}");

    // A copy of the database file without its WAL shows what has been copied back so far.
    let copy = path.with_file_name("copy.db");
    let state = crate::harness::eventually("the final state in the database file itself", || async {
        std::fs::copy(path, &copy).ok()?;
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&copy).immutable(true).read_only(true);
        let mut connection = sqlx::ConnectOptions::connect(&options).await.ok()?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM tickets WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&mut connection)
            .await
            .ok()?;
        state.filter(|state| state.as_str() != "pending")
    })
    .await;
    assert_eq!(state, "succeeded");
    drop(recorder);
    task.await.unwrap();
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

/// A poll that found the ticket running: its first running answer, next poll at `at(30)`.
fn running_again() -> Reschedule {
    Reschedule {
        next_poll_at: at(30),
        running_streak: 1,
        error_streak: 0,
        polled: true,
        request_id: None,
        answer: None,
        error: None,
        running_seen_ms: None,
        note: String::new(),
    }
}

/// Claims every row due at `at(1)` (up to 10) under the lease `d#1`, and returns the lease.
async fn claim_due_as_d1(store: &Store) -> Lease {
    let lease = Lease("d#1".to_owned());
    store.claim_due_tickets(&lease, at(1), Duration::from_secs(10), 10, Duration::from_secs(3600)).await.unwrap();
    lease
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

async fn a_claim_takes_due_rows_once_earliest_first(fixture: Fixture) {
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

async fn a_lapsed_lease_lets_another_claim_take_the_row_and_fences_the_old_owner(fixture: Fixture) {
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

    let stale = Reschedule { next_poll_at: at(100), running_streak: 9, ..running_again() };
    assert!(!store.record_progress(&old, id, at(13), &stale).await.unwrap(), "the old owner is fenced off");
    let finish = Finish { state: TicketState::Succeeded, polled: true, request_id: None, answer: None, error: None };
    assert_eq!(store.record_final(&old, id, at(13), &finish, |_| Announcement::default()).await.unwrap(), None);
    assert_eq!(store.record_final(&new, id, at(13), &finish, |_| Announcement::default()).await.unwrap(), Some(0));
    let ticket = row(store, id).await;
    assert_eq!((ticket.state.as_str(), ticket.running_streak, ticket.polls), ("succeeded", 0, 1));
}

async fn the_final_state_and_its_deliveries_commit_together(fixture: Fixture) {
    let store = &fixture.store;
    let id = insert_due_at(store, "t", at(0)).await;
    let lease = claim_due_as_d1(store).await;
    let finish = Finish {
        state: TicketState::Failed,
        polled: true,
        request_id: Some("R1".to_owned()),
        answer: Some(DeployResult { ticket_status: Some(TicketStatus::Failed), ..DeployResult::default() }.into()),
        error: None,
    };
    let written = store
        .record_final(&lease, id, at(2), &finish, |row| {
            assert_eq!(row.state, TicketState::Failed, "the closure sees the final row");
            let deliveries = failed_deliveries(row, &["http://a.example/hook", "http://b.example/hook"]);
            Announcement { deliveries, webhook_note: Some("note".to_owned()), handoff: None }
        })
        .await
        .unwrap();
    assert_eq!(written, Some(2));
    assert_eq!(row(store, id).await.webhook_note.as_deref(), Some("note"));
    let deliveries = store.deliveries_of_ticket(id.0).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    assert!(
        deliveries
            .iter()
            .all(|delivery| delivery.state == "pending" && delivery.webhook_id == format!("tkt_{id}_0.failed"))
    );
}

async fn a_delivery_the_outbox_refuses_is_dropped_with_a_note_and_the_final_state_commits(fixture: Fixture) {
    let store = &fixture.store;
    let id = insert_due_at(store, "t", at(0)).await;
    let lease = claim_due_as_d1(store).await;
    let finish = Finish { state: TicketState::Failed, polled: true, request_id: None, answer: None, error: None };
    let too_long = format!("http://a.example/{}", "x".repeat(3000));
    let written = store
        .record_final(&lease, id, at(2), &finish, |row| {
            let deliveries = failed_deliveries(row, &["http://ok.example/hook", too_long.as_str()]);
            Announcement { deliveries, webhook_note: Some("first note".to_owned()), handoff: None }
        })
        .await
        .expect("the final state commits");
    assert_eq!(written, Some(1), "only the delivery the outbox took is counted");
    let failed = row(store, id).await;
    assert_eq!(failed.state, TicketState::Failed);
    let note = failed.webhook_note.unwrap_or_default();
    assert!(note.starts_with("first note; webhook to http://a.example/*** dropped"), "{note}");
    assert!(note.contains("dropped: the delivery could not be written"), "{note}");
    let deliveries = store.deliveries_of_ticket(id.0).await.unwrap();
    assert_eq!(deliveries.iter().map(|delivery| delivery.url.as_str()).collect::<Vec<_>>(), ["http://ok.example/hook"]);
}

async fn constraints_refuse_rows_sql_can_judge(fixture: Fixture) {
    let store = &fixture.store;
    let long = "x".repeat(129);
    let cases: Vec<(&str, String)> = vec![
        ("empty ticket id", "('', 'ns', 'ws', NULL, NULL)".to_owned()),
        ("over-long ticket id", format!("('{long}', 'ns', 'ws', NULL, NULL)")),
        ("control character", format!("('a' || {} || 'b', 'ns', 'ws', NULL, NULL)", fixture.char_sql(10))),
        ("dot segment", "('..', 'ns', 'ws', NULL, NULL)".to_owned()),
        ("empty namespace", "('t', '', 'ws', NULL, NULL)".to_owned()),
        ("unparsable deadline", "('t', 'ns', 'ws', 'next tuesday', NULL)".to_owned()),
        ("non-http webhook", "('t', 'ns', 'ws', NULL, 'file:///etc/passwd')".to_owned()),
    ];
    for (what, values) in cases {
        let result = fixture
            .execute(&format!(
                "INSERT INTO tickets (ticket_id, namespace, workspace, deadline_at, webhook_url) VALUES {values}"
            ))
            .await;
        assert!(result.is_err(), "{what} was accepted");
    }
    let state = fixture
        .execute("INSERT INTO tickets (ticket_id, namespace, workspace, state) VALUES ('t', 'ns', 'ws', 'done')")
        .await;
    assert!(state.unwrap_err().contains("state_must_be_known"));
    for (what, sql) in [
        (
            "unknown region",
            "INSERT INTO tickets (ticket_id, namespace, workspace, region) VALUES ('t', 'ns', 'ws', 'mars-1')",
        ),
        (
            "validation_errors not an array",
            "INSERT INTO tickets (ticket_id, namespace, workspace, validation_errors) VALUES ('t', 'ns', 'ws', '{}')",
        ),
        (
            "validation_errors not JSON",
            "INSERT INTO tickets (ticket_id, namespace, workspace, validation_errors) VALUES ('t', 'ns', 'ws', 'not json')",
        ),
        ("negative polls", "INSERT INTO tickets (ticket_id, namespace, workspace, polls) VALUES ('t', 'ns', 'ws', -1)"),
        (
            "a date that does not exist",
            "INSERT INTO tickets (ticket_id, namespace, workspace, deadline_at) VALUES ('t', 'ns', 'ws', '2026-02-30T10:00:00Z')",
        ),
        (
            "an empty time",
            "INSERT INTO tickets (ticket_id, namespace, workspace, next_poll_at) VALUES ('t', 'ns', 'ws', '')",
        ),
    ] {
        assert!(fixture.execute(sql).await.is_err(), "{what} was accepted");
    }
    assert!(store.list_tickets(None, None, 100).await.unwrap().is_empty(), "a refused statement leaves nothing behind");
    let json = store.insert_ticket(&new_ticket("json")).await.unwrap();
    let body = fixture
        .execute(&format!(
            "INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload)
             VALUES ({}, 'http://a.example/hook', 'w', 'ticket.failed', 'not json')",
            json.id
        ))
        .await;
    assert!(body.is_err(), "a webhook body that is not JSON was accepted");
    assert!(store.deliveries_of_ticket(json.id.0).await.unwrap().is_empty());

    store.insert_ticket(&new_ticket("dup")).await.unwrap();
    let duplicate = store.insert_ticket(&new_ticket("dup")).await.unwrap_err();
    assert!(flink_ticketd::store::is_refusal(&duplicate), "{duplicate}");
    assert_eq!(
        flink_ticketd::store::describe_refusal(&duplicate),
        "already queued (the same workspace, namespace and ticket ID)"
    );
    let elsewhere = NewTicket { workspace: "other-ws".to_owned(), ..new_ticket("dup") };
    store.insert_ticket(&elsewhere).await.expect("the same ID in another workspace is another ticket");
}

async fn a_hand_written_deadline_is_stored_in_the_canonical_form(fixture: Fixture) {
    fixture
        .execute(
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
        let rows = fixture.store.find_tickets(id, None, None, None).await.unwrap();
        assert_eq!(fixture.stored_text(rows[0].id, "deadline_at").await.as_deref(), Some(expected), "{id}");
    }
}

async fn retry_cancel_and_release_change_only_what_they_should(fixture: Fixture) {
    let store = &fixture.store;
    let id = insert_due_at(store, "t", at(0)).await;
    assert!(!store.retry_ticket(id, at(1), at(100)).await.unwrap(), "a pending ticket is not retried");
    assert!(store.cancel_ticket(id, at(1)).await.unwrap());
    assert!(!store.cancel_ticket(id, at(2)).await.unwrap(), "only pending tickets are cancelled");
    assert_eq!(row(store, id).await.state, TicketState::Cancelled);
    assert!(store.retry_ticket(id, at(3), at(100)).await.unwrap());
    let retried = row(store, id).await;
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

async fn claim_ticket_takes_only_its_own_row_and_only_when_due_and_unleased(fixture: Fixture) {
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
    assert_eq!(row(store, other).await.lease_owner, None, "other rows are left alone");
}

async fn a_failing_write_in_a_group_commit_fails_alone(fixture: Fixture) {
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
    let announce_one =
        flink_ticketd::store::Announce::every_ticket(|row: &flink_ticketd::store::Ticket| Announcement {
            deliveries: vec![NewDelivery {
                ticket: row.id.0,
                url: "http://a.example/hook".to_owned(),
                webhook_id: format!("tkt_{}_0.succeeded", row.id),
                event_type: "ticket.succeeded".to_owned(),
                payload: "{}".to_owned(),
            }],
            webhook_note: None,
            handoff: None,
        });
    // Another program's trigger refuses the final state of "bad" (the store cannot tell it from
    // a constraint of the table's own).
    fixture.refuse_final_state_of("bad").await;
    let announce_broken = announce_one.clone();
    let reschedule = Reschedule {
        next_poll_at: at(30),
        running_streak: 3,
        error_streak: 0,
        polled: true,
        request_id: Some("R".to_owned()),
        answer: Some(DeployResult { ticket_status: Some(TicketStatus::Executing), ..DeployResult::default() }.into()),
        error: None,
        running_seen_ms: None,
        note: String::new(),
    };
    let (good_row, bad_row) = (row(store, good).await, row(store, bad).await);
    // Submitted together, the three land in one batch.
    let (good_result, progress_result, bad_result) = tokio::join!(
        recorder.record_final(&lease, &good_row, at(2), &finish, announce_one),
        recorder.record_progress(&lease, progress, at(2), &reschedule),
        recorder.record_final(&lease, &bad_row, at(2), &finish, announce_broken),
    );
    assert!(matches!(good_result, Ok(Some(1))), "{good_result:?}");
    assert!(matches!(progress_result, Ok(true)), "{progress_result:?}");
    assert!(
        matches!(bad_result, Err(flink_ticketd::store::RecordError::Database(_))),
        "the refused write is reported to its caller with the database error: {bad_result:?}"
    );
    drop(recorder);
    task.await.unwrap();

    assert_eq!(row(store, good).await.state, TicketState::Succeeded);
    assert_eq!(store.deliveries_of_ticket(good.0).await.unwrap().len(), 1);
    let progressed = row(store, progress).await;
    assert_eq!(
        (
            progressed.state.as_str(),
            progressed.running_streak,
            progressed.ticket_status.as_ref().map(TicketStatus::as_wire)
        ),
        ("pending", 3, Some("EXECUTING"))
    );
    assert_eq!(progressed.next_poll_at, at(30));
    assert_eq!(row(store, bad).await.state, TicketState::Pending, "the refused write changed nothing");
    assert!(store.deliveries_of_ticket(bad.0).await.unwrap().is_empty(), "nor wrote its deliveries");

    // A stale lease writes nothing, in a batch as alone.
    let stale = recorder_for(store).record_progress(&Lease("other#9".to_owned()), progress, at(3), &reschedule).await;
    assert!(matches!(stale, Ok(false)), "{stale:?}");
}

/// SQLite's writer hands at most 1024 rows over before it waits for them to be taken. One call of
/// the recorder here writes 100 results and claims 1500 rows, 1600 rows in all: every result is
/// answered, and every claimed row arrives.
async fn a_claim_and_batches_of_more_rows_than_the_writer_hands_over_at_once_lose_none(fixture: Fixture) {
    const WRITES: usize = 100;
    const CLAIMED: usize = 1500;
    let store = &fixture.store;
    fixture
        .execute(&crate::harness::insert_tickets_sql((0..WRITES + CLAIMED).map(|n| format!("many-{n}"))))
        .await
        .unwrap();
    let deadline = Duration::from_secs(3600);
    let first = Lease("many#1".to_owned());
    let limit = |rows: usize| u32::try_from(rows).expect("a small count");
    let polled =
        store.claim_due_tickets(&first, at(0), Duration::from_secs(600), limit(WRITES), deadline).await.unwrap();
    assert_eq!(polled.len(), WRITES);
    let (recorder, task) = store.recorder();
    let second = Lease("many#2".to_owned());
    let reschedule = running_again();
    // Submitted together on this single-threaded runtime, the results and the claim land in one
    // batch: on SQLite, one call returns a row per result, then the claimed rows.
    let results = polled.iter().map(|ticket| recorder.record_progress(&first, ticket.id, at(1), &reschedule));
    let (written, claimed) = tokio::join!(
        futures_util::future::join_all(results),
        recorder.claim_due_tickets(&second, at(0), Duration::from_secs(600), limit(WRITES + CLAIMED), deadline),
    );
    drop(recorder);
    task.await.unwrap();
    assert!(written.iter().all(|write| matches!(write, Ok(true))), "every result is written: {written:?}");
    let claimed = claimed.unwrap();
    let ids: std::collections::BTreeSet<RowId> = claimed.iter().map(|ticket| ticket.id).collect();
    assert_eq!((claimed.len(), ids.len()), (CLAIMED, CLAIMED), "every other row is claimed, once");
    assert!(polled.iter().all(|ticket| !ids.contains(&ticket.id)), "the rows just rescheduled are not due");
    assert!(
        store
            .claim_due_tickets(&second, at(2), Duration::from_secs(60), limit(WRITES + CLAIMED), deadline)
            .await
            .unwrap()
            .is_empty(),
        "no row is left behind"
    );
}

/// Row `id` as it is now: for the recorder, the row as it was claimed.
async fn row(store: &Store, id: RowId) -> Ticket {
    store.ticket(id).await.unwrap().unwrap()
}

fn recorder_for(store: &Store) -> flink_ticketd::store::Recorder {
    store.recorder().0
}

async fn the_recorder_answers_each_result_by_row_and_lease_when_a_lapsed_and_a_live_lease_meet_in_one_batch(
    fixture: Fixture,
) {
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
    let announce = flink_ticketd::store::Announce::every_ticket(|row: &flink_ticketd::store::Ticket| Announcement {
        deliveries: vec![NewDelivery {
            ticket: row.id.0,
            url: "http://a.example/hook".to_owned(),
            webhook_id: format!("tkt_{}_0.{}", row.id, row.state),
            event_type: "ticket.succeeded".to_owned(),
            payload: "{}".to_owned(),
        }],
        webhook_note: None,
        handoff: None,
    });
    let reschedule = running_again();
    let (first_claimed, second_claimed) = (row(store, first).await, row(store, second).await);
    // Submitted together on this single-threaded runtime, the four land in one batch: on each
    // row the lapsed lease's result comes first.
    let (old_progress, new_final, old_final, new_progress) = tokio::join!(
        recorder.record_progress(&old, first, at(4), &reschedule),
        recorder.record_final(&new, &first_claimed, at(4), &finish, announce.clone()),
        recorder.record_final(&old, &second_claimed, at(4), &finish, announce.clone()),
        recorder.record_progress(&new, second, at(4), &reschedule),
    );
    drop(recorder);
    task.await.unwrap();
    assert!(matches!(old_progress, Ok(false)), "the lapsed lease's progress was not written: {old_progress:?}");
    assert!(matches!(new_final, Ok(Some(1))), "{new_final:?}");
    assert!(matches!(old_final, Ok(None)), "the lapsed lease's final state was not written: {old_final:?}");
    assert!(matches!(new_progress, Ok(true)), "{new_progress:?}");
    assert_eq!(row(store, first).await.state, TicketState::Succeeded);
    let second_row = row(store, second).await;
    assert_eq!((second_row.state.as_str(), second_row.running_streak), ("pending", 1));
    assert!(store.deliveries_of_ticket(second.0).await.unwrap().is_empty(), "no announcement for a pending row");
}

async fn with_no_receiver_configured_the_recorder_announces_the_tickets_naming_their_own_as_the_final_row_says(
    fixture: Fixture,
) {
    let store = &fixture.store;
    let plain = insert_due_at(store, "plain", at(0)).await;
    let named = insert_due_at(store, "named", at(0)).await;
    let late = insert_due_at(store, "late", at(0)).await;
    let running = insert_due_at(store, "running", at(0)).await;
    fixture
        .execute("UPDATE tickets SET webhook_url = 'http://a.example/named' WHERE ticket_id = 'named'")
        .await
        .unwrap();
    let lease = claim_due_as_d1(store).await;
    let (recorder, task) = store.recorder();
    // The plan sees only rows naming a receiver, and names it in the delivery.
    let planned = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&planned);
    let announce = flink_ticketd::store::Announce::own_receivers_only(move |row: &Ticket| {
        seen.lock().unwrap().push(row.key.ticket_id.clone());
        Announcement { deliveries: own_receiver_deliveries(row), webhook_note: None, handoff: None }
    });
    let finish = Finish { state: TicketState::Succeeded, polled: true, request_id: None, answer: None, error: None };
    let reschedule = running_again();
    let claimed = [row(store, plain).await, row(store, named).await, row(store, late).await];
    // "late" gets its receiver while its poll runs: in a batch that reads final rows back
    // anyway ("named" has a receiver), the final row, not the claimed one, decides.
    fixture.execute("UPDATE tickets SET webhook_url = 'http://a.example/late' WHERE ticket_id = 'late'").await.unwrap();
    let (plain_result, named_result, late_result, running_result) = tokio::join!(
        recorder.record_final(&lease, &claimed[0], at(2), &finish, announce.clone()),
        recorder.record_final(&lease, &claimed[1], at(2), &finish, announce.clone()),
        recorder.record_final(&lease, &claimed[2], at(2), &finish, announce.clone()),
        recorder.record_progress(&lease, running, at(2), &reschedule),
    );
    drop(recorder);
    task.await.unwrap();
    assert!(matches!(plain_result, Ok(Some(0))), "{plain_result:?}");
    assert!(matches!(named_result, Ok(Some(1))), "{named_result:?}");
    assert!(matches!(late_result, Ok(Some(1))), "{late_result:?}");
    assert!(matches!(running_result, Ok(true)), "{running_result:?}");
    let mut planned = planned.lock().unwrap().clone();
    planned.sort();
    assert_eq!(planned, ["late", "named"], "the plan ran for the rows naming a receiver only");
    for (id, state, urls) in [
        (plain, TicketState::Succeeded, vec![]),
        (named, TicketState::Succeeded, vec!["http://a.example/named"]),
        (late, TicketState::Succeeded, vec!["http://a.example/late"]),
        (running, TicketState::Pending, vec![]),
    ] {
        assert_eq!(row(store, id).await.state, state);
        let deliveries = store.deliveries_of_ticket(id.0).await.unwrap();
        assert_eq!(deliveries.iter().map(|delivery| delivery.url.as_str()).collect::<Vec<_>>(), urls);
    }
}

/// One delivery to the ticket's own receiver, if it names one.
fn own_receiver_deliveries(row: &Ticket) -> Vec<NewDelivery> {
    row.webhook_url
        .iter()
        .map(|url| NewDelivery {
            ticket: row.id.0,
            url: url.clone(),
            webhook_id: format!("tkt_{}_0.succeeded", row.id),
            event_type: "ticket.succeeded".to_owned(),
            payload: "{}".to_owned(),
        })
        .collect()
}

async fn a_receiver_added_while_its_ticket_is_polled_is_announced_when_the_batch_reads_no_final_row_back(
    fixture: Fixture,
) {
    let store = &fixture.store;
    let plain = insert_due_at(store, "plain", at(0)).await;
    let late = insert_due_at(store, "late", at(0)).await;
    let lease = claim_due_as_d1(store).await;
    let claimed = [row(store, plain).await, row(store, late).await];
    let (recorder, task) = store.recorder();
    let announce = flink_ticketd::store::Announce::own_receivers_only(|row: &Ticket| Announcement {
        deliveries: own_receiver_deliveries(row),
        webhook_note: None,
        handoff: None,
    });
    let finish = Finish { state: TicketState::Succeeded, polled: true, request_id: None, answer: None, error: None };
    // Neither row named a receiver when claimed; "late" gets one while its poll runs.
    fixture.execute("UPDATE tickets SET webhook_url = 'http://a.example/late' WHERE ticket_id = 'late'").await.unwrap();
    let (plain_result, late_result) = tokio::join!(
        recorder.record_final(&lease, &claimed[0], at(2), &finish, announce.clone()),
        recorder.record_final(&lease, &claimed[1], at(2), &finish, announce.clone()),
    );
    assert!(matches!(plain_result, Ok(Some(0))), "{plain_result:?}");
    assert_eq!(row(store, plain).await.state, TicketState::Succeeded);
    let late_result = match &fixture.backend {
        // SQLite commits such a batch in the call that writes it, without reading final rows
        // back: the final state of a row that gained a receiver is kept out, and the ticket is
        // handed back to be polled again at once.
        Backend::Sqlite { .. } => {
            assert!(matches!(late_result, Ok(None)), "{late_result:?}");
            let handed_back = row(store, late).await;
            assert_eq!((handed_back.state, handed_back.lease_owner), (TicketState::Pending, None));
            assert!(store.deliveries_of_ticket(late.0).await.unwrap().is_empty());
            let again = Lease("d#2".to_owned());
            let reclaimed = store
                .claim_due_tickets(&again, at(3), Duration::from_secs(10), 10, Duration::from_secs(3600))
                .await
                .unwrap();
            assert_eq!(reclaimed.iter().map(|ticket| ticket.id).collect::<Vec<_>>(), [late]);
            recorder.record_final(&again, &reclaimed[0], at(4), &finish, announce).await
        }
        // PostgreSQL reads the final rows back inside every batch.
        Backend::Postgres(_) => late_result,
    };
    assert!(matches!(late_result, Ok(Some(1))), "{late_result:?}");
    drop(recorder);
    task.await.unwrap();
    assert_eq!(row(store, late).await.state, TicketState::Succeeded);
    let deliveries = store.deliveries_of_ticket(late.0).await.unwrap();
    assert_eq!(deliveries.iter().map(|delivery| delivery.url.as_str()).collect::<Vec<_>>(), ["http://a.example/late"]);
}

/// On SQLite a claim made in the same call as a batch that commits there, and refused, leaves
/// the batch committed and the writer free for the next one.
#[tokio::test]
async fn on_sqlite_a_refused_claim_in_a_batchs_call_leaves_its_writes_committed() {
    let fixture = Fixture::sqlite().await;
    let store = &fixture.store;
    let done = insert_due_at(store, "done", at(0)).await;
    let lease = claim_due_as_d1(store).await;
    let next = insert_due_at(store, "next", at(0)).await;
    fixture
        .execute(
            "CREATE TRIGGER refuse_claims BEFORE UPDATE OF lease_owner ON tickets
             WHEN NEW.lease_owner = 'refused#1' BEGIN SELECT RAISE(ABORT, 'claims refused'); END",
        )
        .await
        .unwrap();
    let (recorder, task) = store.recorder();
    let finish = Finish { state: TicketState::Succeeded, polled: true, request_id: None, answer: None, error: None };
    let announce = flink_ticketd::store::Announce::own_receivers_only(|_: &Ticket| Announcement::default());
    let refused = Lease("refused#1".to_owned());
    let deadline = Duration::from_secs(3600);
    let claimed = row(store, done).await;
    // Submitted together on this single-threaded runtime, the two land in one batch.
    let (final_result, claim_result) = tokio::join!(
        recorder.record_final(&lease, &claimed, at(2), &finish, announce),
        recorder.claim_due_tickets(&refused, at(2), Duration::from_secs(10), 10, deadline),
    );
    assert!(matches!(final_result, Ok(Some(0))), "{final_result:?}");
    let error = claim_result.expect_err("the trigger refuses the claim").to_string();
    assert!(error.contains("claims refused"), "{error}");
    // Another connection sees the final state: the batch committed.
    assert_eq!(row(store, done).await.state, TicketState::Succeeded);
    // The writer takes the next batch.
    let taken = recorder
        .claim_due_tickets(&Lease("d#2".to_owned()), at(3), Duration::from_secs(10), 10, deadline)
        .await
        .unwrap();
    assert_eq!(taken.iter().map(|ticket| ticket.id).collect::<Vec<_>>(), [next]);
    drop(recorder);
    task.await.unwrap();
}

async fn the_pull_back_after_a_clock_step_makes_unleased_rows_due_and_leaves_leased_ones_alone(fixture: Fixture) {
    let store = &fixture.store;
    let far = insert_due_at(store, "far", at(100_000)).await;
    let held = insert_due_at(store, "held", at(0)).await;
    let lease = Lease("poller#1".to_owned());
    let claimed = store
        .claim_due_tickets(&lease, at(1), Duration::from_secs(100_000), 10, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|row| row.id).collect::<Vec<_>>(), [held]);
    let held_before = row(store, held).await;

    assert_eq!(store.pull_back_due_times(at(2), at(50)).await.unwrap(), 1);
    assert_eq!(row(store, far).await.next_poll_at, at(2));
    let held_after = row(store, held).await;
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

async fn the_change_probe_wakes_on_a_commit_by_another_connection(fixture: Fixture) {
    const WAIT: Duration = Duration::from_millis(50);
    let mut probe = fixture.store.change_probe().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), probe.next_change(WAIT)).await.is_err(),
        "nothing committed since the probe opened"
    );
    fixture.execute("SELECT count(*) FROM tickets").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), probe.next_change(WAIT)).await.is_err(),
        "a read by another connection is no change"
    );
    fixture
        .execute("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('probed', 'ns', 'ws')")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), probe.next_change(WAIT))
        .await
        .expect("another connection's insert is noticed")
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), probe.next_change(WAIT)).await.is_err(),
        "a change is reported once"
    );
    fixture.store.insert_ticket(&new_ticket("own-writer")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), probe.next_change(WAIT))
        .await
        .expect("the store's own insert is noticed too")
        .unwrap();
    probe.close().await.unwrap();
    fixture.store.close().await;
}

async fn eight_concurrent_claimers_never_get_the_same_row(fixture: Fixture) {
    const ROWS: usize = 800;
    let values: Vec<String> = (0..ROWS).map(|index| format!("('c{index}', 'ns', 'ws')")).collect();
    fixture
        .execute(&format!("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES {}", values.join(", ")))
        .await
        .unwrap();
    let now = Utc::now() + chrono::Duration::seconds(1);
    let claimers = (0..8).map(|claimer| {
        let store = fixture.store.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            for round in 0.. {
                let lease = Lease(format!("claimer-{claimer}#{round}"));
                let claimed = store
                    .claim_due_tickets(&lease, now, Duration::from_secs(600), 7, Duration::from_secs(3600))
                    .await
                    .expect("the claim runs");
                if claimed.is_empty() {
                    break;
                }
                assert!(claimed.iter().all(|row| row.lease_owner.as_deref() == Some(lease.0.as_str())));
                mine.extend(claimed.into_iter().map(|row| row.id));
            }
            mine
        })
    });
    let mut all: Vec<RowId> = Vec::new();
    for claimer in claimers.collect::<Vec<_>>() {
        all.extend(claimer.await.unwrap());
    }
    let distinct: std::collections::HashSet<RowId> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "{} rows were handed out twice", all.len() - distinct.len());
    assert_eq!(distinct.len(), ROWS, "every due row was claimed");
}

async fn deliveries_are_claimed_once_per_lease_with_at_most_per_url_in_flight(fixture: Fixture) {
    let store = &fixture.store;
    let id = insert_due_at(store, "t", at(0)).await;
    let lease = claim_due_as_d1(store).await;
    let finish = Finish { state: TicketState::Failed, polled: true, request_id: None, answer: None, error: None };
    let urls = ["http://a.example/1", "http://a.example/2", "http://b.example/1"];
    let written = store
        .record_final(&lease, id, at(2), &finish, |row| Announcement {
            deliveries: urls
                .iter()
                .enumerate()
                .map(|(index, url)| NewDelivery {
                    ticket: row.id.0,
                    url: (*url).to_owned(),
                    webhook_id: format!("tkt_{}_0.failed.{index}", row.id),
                    event_type: "ticket.failed".to_owned(),
                    payload: r#"{"b": 1, "a": [2]}"#.to_owned(),
                })
                .collect(),
            webhook_note: None,
            handoff: None,
        })
        .await
        .unwrap();
    assert_eq!(written, Some(3));
    let now = at(10);
    let first = Lease("w#1".to_owned());
    let claimed = store.claim_due_deliveries(&first, now, Duration::from_secs(60), 10, 1).await.unwrap();
    assert_eq!(claimed.len(), 3, "one per receiver URL: {claimed:?}");
    assert!(claimed.iter().all(|delivery| delivery.attempts == 1 && delivery.lease_owner.as_deref() == Some("w#1")));
    assert_eq!(claimed[0].payload, r#"{"b": 1, "a": [2]}"#, "the body is kept exactly as written");
    let second = Lease("w#2".to_owned());
    assert!(store.claim_due_deliveries(&second, now, Duration::from_secs(60), 10, 5).await.unwrap().is_empty());
    let record = flink_ticketd::store::AttemptRecord::Delivered { http_status: 200 };
    assert!(
        !store.record_attempt(&second, claimed[0].id, now, Duration::from_millis(5), &record).await.unwrap(),
        "fenced by the lease"
    );
    assert!(store.record_attempt(&first, claimed[0].id, now, Duration::from_millis(5), &record).await.unwrap());
    let attempts = store.webhook_attempts_of_ticket(id).await.unwrap();
    let seen: Vec<_> = attempts.iter().map(|a| (a.delivery, a.attempt, a.http_status, a.duration_ms)).collect();
    assert_eq!(
        seen,
        [(claimed[0].id, 1, Some(200), 5)],
        "one attempt recorded with its outcome, none for the fenced one"
    );
    assert_eq!(attempts[0].at, now - chrono::Duration::milliseconds(5), "the attempt's start");
    let events: Vec<String> = store.ticket_events(id).await.unwrap().into_iter().map(|event| event.kind).collect();
    assert_eq!(events, ["first_poll", "final"], "the trigger wrote the changes of the final state");
    let delivered = store.delivery(claimed[0].id).await.unwrap().unwrap();
    assert_eq!((delivered.state.as_str(), delivered.last_http_status), ("delivered", Some(200)));
    assert!(matches!(store.resend_delivery(claimed[1].id, now).await.unwrap(), flink_ticketd::store::Resend::InFlight));
    assert!(matches!(
        store.resend_delivery(claimed[0].id, now).await.unwrap(),
        flink_ticketd::store::Resend::Queued(_)
    ));
    assert_eq!(store.release_deliveries("w#", now).await.unwrap(), 2);
    assert_eq!(store.list_deliveries(Some(flink_ticketd::store::DeliveryState::Pending), 10).await.unwrap().len(), 3);
}

async fn deliveries_handed_to_the_writer_go_to_its_loop_at_once_and_to_any_loop_once_the_handoff_lapses(
    fixture: Fixture,
) {
    let store = &fixture.store;
    let (sent, orphaned) = (insert_due_at(store, "sent", at(0)).await, insert_due_at(store, "orphaned", at(0)).await);
    let lease = claim_due_as_d1(store).await;
    let handoff = Handoff { lease: Lease("d#webhook-written".to_owned()), lease_for: Duration::from_secs(60) };
    let finish = Finish { state: TicketState::Failed, polled: true, request_id: None, answer: None, error: None };
    let finish_handed = |id: RowId, now: DateTime<Utc>| {
        store.record_final(&lease, id, now, &finish, |row| Announcement {
            deliveries: failed_deliveries(row, &["http://a.example/hook"]),
            webhook_note: None,
            handoff: Some(handoff.clone()),
        })
    };
    assert_eq!(finish_handed(sent, at(2)).await.unwrap(), Some(1));

    // Every other loop sees the delivery due only when the handoff lapses; the writer's own
    // loop sees it due now and takes it.
    assert_eq!(store.next_delivery_due_at().await.unwrap(), Some(at(62)));
    let elsewhere = Lease("e#webhook-1".to_owned());
    assert!(store.claim_due_deliveries(&elsewhere, at(3), Duration::from_secs(60), 10, 1).await.unwrap().is_empty());
    assert_eq!(store.next_delivery_due_for(&handoff, at(3)).await.unwrap(), Some(at(3)));
    let own = Lease("d#webhook-1".to_owned());
    let claimed = store.claim_due_and_handed_deliveries(&own, &handoff, at(3), 10, 1).await.unwrap();
    assert_eq!(claimed.iter().map(|delivery| delivery.ticket).collect::<Vec<_>>(), [sent.0]);
    assert_eq!((claimed[0].attempts, claimed[0].lease_owner.as_deref()), (1, Some("d#webhook-1")));
    let delivered = flink_ticketd::store::AttemptRecord::Delivered { http_status: 200 };
    assert!(store.record_attempt(&own, claimed[0].id, at(3), Duration::from_millis(5), &delivered).await.unwrap());

    // The writer dies right after its next final state commits: once the handoff lapses another
    // daemon sends that delivery, under the webhook-id it was written with.
    assert_eq!(finish_handed(orphaned, at(4)).await.unwrap(), Some(1));
    let written = store.deliveries_of_ticket(orphaned.0).await.unwrap();
    assert!(store.claim_due_deliveries(&elsewhere, at(63), Duration::from_secs(60), 10, 1).await.unwrap().is_empty());
    let taken_over = store.claim_due_deliveries(&elsewhere, at(64), Duration::from_secs(60), 10, 1).await.unwrap();
    assert_eq!(taken_over.len(), 1);
    assert_eq!(taken_over[0].webhook_id, written[0].webhook_id);
    assert_eq!(taken_over[0].lease_owner.as_deref(), Some("e#webhook-1"));
}

async fn concurrent_retention_rounds_delete_each_row_once(fixture: Fixture) {
    const ROWS: u64 = 300;
    let values: Vec<String> = (0..ROWS).map(|index| format!("('r{index}', 'ns', 'ws')")).collect();
    fixture
        .execute(&format!("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES {}", values.join(", ")))
        .await
        .unwrap();
    let lease = Lease("r#1".to_owned());
    let now = Utc::now() + chrono::Duration::seconds(1);
    let claimed = fixture
        .store
        .claim_due_tickets(&lease, now, Duration::from_secs(60), 1000, Duration::from_secs(3600))
        .await
        .unwrap();
    let finish = Finish { state: TicketState::Succeeded, polled: true, request_id: None, answer: None, error: None };
    for row in &claimed {
        fixture.store.record_final(&lease, row.id, now, &finish, |_| Announcement::default()).await.unwrap();
    }
    let before = now + chrono::Duration::seconds(1);
    let hosts = (0..3).map(|_| {
        let store = fixture.store.clone();
        tokio::spawn(async move {
            let mut deleted = 0;
            // Rounds until this host finds nothing (or is told another host is deleting).
            loop {
                let purged = store.purge_finished_batch(before, 20).await.expect("the batch runs");
                deleted += purged.tickets;
                if purged.tickets < 20 {
                    break deleted;
                }
            }
        })
    });
    let mut total = 0;
    for host in hosts.collect::<Vec<_>>() {
        total += host.await.unwrap();
    }
    while total < ROWS {
        // A host that skipped a round (another held the lock) leaves the rest to the next round.
        let purged = fixture.store.purge_finished_batch(before, 20).await.unwrap();
        assert!(purged.tickets > 0, "rows are left that nobody deletes");
        total += purged.tickets;
    }
    assert_eq!(total, ROWS, "each row deleted once");
    assert!(fixture.store.list_tickets(None, None, 10).await.unwrap().is_empty());
}

async fn the_user_commands_read_what_the_daemon_wrote(fixture: Fixture) {
    let store = &fixture.store;
    let id = insert_due_at(store, "shown", at(0)).await;
    let lease = Lease("u#1".to_owned());
    store.claim_due_tickets(&lease, at(1), Duration::from_secs(60), 10, Duration::from_secs(3600)).await.unwrap();
    let answer = DeployResult {
        ticket_status: Some(TicketStatus::Finished),
        success: Some(false),
        deployment_id: Some("dep-1".to_owned()),
        message: Some("bad sql".to_owned()),
        validation_result: Some("FAIL".to_owned()),
        validation_errors: vec![flink_ticketd::domain::ValidationIssue {
            line: serde_json::json!(3),
            column: serde_json::json!(7),
            end_line: serde_json::Value::Null,
            end_column: serde_json::Value::Null,
            message: Some("syntax error".to_owned()),
        }],
    };
    let finish = Finish {
        state: TicketState::Failed,
        polled: true,
        request_id: Some("R9".to_owned()),
        answer: Some(answer.clone().into()),
        error: None,
    };
    assert_eq!(store.record_final(&lease, id, at(2), &finish, |_| Announcement::default()).await.unwrap(), Some(0));
    let row = store.find_tickets("shown", None, Some("ws"), Some("ns")).await.unwrap().pop().unwrap();
    assert_eq!(row.state, TicketState::Failed);
    assert_eq!(row.deploy_success, Some(false));
    assert_eq!(row.deployment_id.as_deref(), Some("dep-1"));
    assert_eq!(row.validation_errors, answer.validation_errors);
    assert_eq!((row.polls, row.request_id.as_deref()), (1, Some("R9")));
    assert_eq!(row.finished_at, Some(at(2)));
    assert_eq!(row.deadline(), Some(row.created_at + chrono::Duration::seconds(3600)));
    assert_eq!(store.list_tickets(Some(TicketState::Failed), None, 10).await.unwrap().len(), 1);
    assert!(store.list_tickets(Some(TicketState::Pending), None, 10).await.unwrap().is_empty());
    assert_eq!(store.count_tickets_by_state().await.unwrap(), vec![("failed".to_owned(), 1)]);
    assert!(store.find_tickets("shown", None, Some("other"), None).await.unwrap().is_empty());
    assert_eq!(store.applied_migrations().await.unwrap().len(), flink_ticketd::store::MIGRATOR.iter().count());
}

async fn every_kind_is_its_own_ticket_and_keeps_its_result_columns_byte_for_byte(fixture: Fixture) {
    use flink_ticketd::domain::{
        Answer, ConfigIssue, KindResult, RawJson, ResourcePlanResult, TicketKind, ValidateResult,
    };
    let store = &fixture.store;
    fixture
        .execute(
            "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('same', 'ns', 'ws');
             INSERT INTO tickets (ticket_id, namespace, workspace, kind) VALUES ('same', 'ns', 'ws', 'validate')",
        )
        .await
        .expect("one ID under two kinds is two tickets");
    let unknown = fixture
        .execute("INSERT INTO tickets (ticket_id, namespace, workspace, kind) VALUES ('x', 'ns', 'ws', 'savepoint')")
        .await
        .expect_err("an unknown kind is refused");
    assert!(unknown.contains("kind_must_be_known"), "{unknown}");
    let twice = fixture
        .execute("INSERT INTO tickets (ticket_id, namespace, workspace, kind) VALUES ('same', 'ns', 'ws', 'validate')")
        .await
        .expect_err("the same kind and ID twice is refused");
    assert!(twice.to_lowercase().contains("unique") || twice.contains("duplicate"), "{twice}");
    let both = store.find_tickets("same", None, None, None).await.unwrap();
    let kinds: Vec<TicketKind> = both.iter().map(|ticket| ticket.kind).collect();
    assert_eq!(kinds, [TicketKind::Deploy, TicketKind::Validate], "a plain insert means deploy");
    assert_eq!(store.find_tickets("same", Some(TicketKind::Validate), None, None).await.unwrap().len(), 1);
    assert_eq!(store.list_tickets(None, Some(TicketKind::Deploy), 10).await.unwrap().len(), 1);

    let plan = "{ \"ssgProfiles\" :[ {\"name\":\"默认-ä\",\"cpu\":1.0} ],\n\t\"nodes\":[] }";
    let raw = format!("{{ \"ticketStatus\" : \"FINISHED\",\"plan\":{} }}", serde_json::to_string(plan).unwrap());
    let planned = store
        .insert_ticket(&NewTicket {
            kind: TicketKind::ResourcePlan,
            deployment_id: Some("dep-1".to_owned()),
            ..new_ticket("plan")
        })
        .await
        .unwrap();
    let validated = both.iter().find(|ticket| ticket.kind == TicketKind::Validate).unwrap().id;
    let lease = Lease("k#1".to_owned());
    let claimed =
        store.claim_due_tickets(&lease, at(600), Duration::from_secs(10), 10, Duration::from_secs(3600)).await;
    assert_eq!(claimed.unwrap().len(), 3);
    let finish = |result: KindResult, raw: &str| Finish {
        state: TicketState::Succeeded,
        polled: true,
        request_id: None,
        answer: Some(Answer { result, raw: Some(RawJson::new(raw.to_owned()).unwrap()) }),
        error: None,
    };
    let plan_result = KindResult::ResourcePlan(ResourcePlanResult {
        ticket_status: Some(TicketStatus::Finished),
        message: None,
        plan: Some(plan.to_owned()),
    });
    store
        .record_final(&lease, planned.id, at(601), &finish(plan_result, &raw), |_| Announcement::default())
        .await
        .unwrap();
    let config_errors =
        vec![ConfigIssue { reason: Some("ENGINE_VERSION".to_owned()), message: Some("old".to_owned()) }];
    let validate_result = KindResult::Validate(ValidateResult {
        ticket_status: Some(TicketStatus::Finished),
        success: Some(false),
        config_errors: config_errors.clone(),
        ..ValidateResult::default()
    });
    store
        .record_final(&lease, validated, at(601), &finish(validate_result, "{\"success\":false}"), |_| {
            Announcement::default()
        })
        .await
        .unwrap();

    let planned = row(store, planned.id).await;
    assert_eq!(planned.resource_plan.as_deref(), Some(plan), "the plan is kept byte for byte");
    assert_eq!(planned.result_json.as_ref().map(RawJson::as_str), Some(raw.as_str()), "so is the raw data");
    assert_eq!(planned.deployment_id.as_deref(), Some("dep-1"), "the deployment known at submit stays");
    let validated = row(store, validated).await;
    assert_eq!((validated.config_errors, validated.deploy_success), (config_errors, Some(false)));

    assert!(store.retry_ticket(planned.id, at(602), at(4000)).await.unwrap());
    let retried = row(store, planned.id).await;
    assert_eq!((retried.resource_plan, retried.result_json), (None, None), "retry clears the last answer");
    assert_eq!(retried.deployment_id.as_deref(), Some("dep-1"), "but not the deployment the plan is for");
}

/// The caps of `ticket_events` (the first and the latest 199) and `webhook_attempts` (the first and
/// the latest 99) delete nothing up to the cap, and from one row past it keep exactly the first
/// and the latest: rows written one statement at a time, as the daemon's writes write them (an
/// event by the ticket update that records it, an attempt by its own insert).
async fn the_history_caps_keep_the_first_row_and_the_latest_ones_at_every_count(fixture: Fixture) {
    let store = &fixture.store;
    let id = insert_due_at(store, "t", at(0)).await;
    let lease = claim_due_as_d1(store).await;
    let finish = Finish { state: TicketState::Failed, polled: true, request_id: None, answer: None, error: None };
    store
        .record_final(&lease, id, at(2), &finish, |row| Announcement {
            deliveries: failed_deliveries(row, &["http://a.example/hook"]),
            webhook_note: None,
            handoff: None,
        })
        .await
        .unwrap();
    let delivery = store.deliveries_of_ticket(id.0).await.unwrap()[0].id;
    let time = flink_ticketd::clock::format_instant(at(3));
    // One INSERT statement per attempt numbered `from..=to`, as the delivery loop inserts them.
    let rows = |table: &str, values: &dyn Fn(i64) -> String, from: i64, to: i64| -> String {
        (from..=to).map(|n| format!("INSERT INTO {table} VALUES ({});", values(n))).collect()
    };
    // An event per update: a new status, recorded with the update's poll count.
    let events = |from: i64, to: i64| -> String {
        (from..=to)
            .map(|n| format!("UPDATE tickets SET polls = {n}, ticket_status = 'S{n}' WHERE id = {id};"))
            .collect()
    };
    let attempts = |from, to| {
        let values = |n| format!("{delivery}, {n}, '{time}', 1");
        rows("webhook_attempts (delivery, attempt, at, duration_ms)", &values, from, to)
    };
    // The events the final state wrote come first; numbered rows follow.
    let written = store.ticket_events(id).await.unwrap();
    let first_kind = written[0].kind.clone();
    let written = written.len();
    let to_cap = i64::try_from(200 - written).unwrap();
    fixture.execute(&events(1, to_cap)).await.unwrap();
    fixture.execute(&attempts(1, 100)).await.unwrap();
    let kept = store.ticket_events(id).await.unwrap();
    assert_eq!(kept.len(), 200, "nothing is deleted up to the cap");
    let tried = store.webhook_attempts_of_ticket(id).await.unwrap();
    assert_eq!(tried.len(), 100, "nothing is deleted up to the cap");

    fixture.execute(&events(to_cap + 1, to_cap + 1)).await.unwrap();
    fixture.execute(&attempts(101, 101)).await.unwrap();
    let kept = store.ticket_events(id).await.unwrap();
    assert_eq!(kept.len(), 200);
    assert_eq!(kept[0].kind, first_kind, "the first event stays");
    assert_eq!(kept.last().map(|event| event.polls), Some(to_cap + 1));
    let tried: Vec<i64> = store.webhook_attempts_of_ticket(id).await.unwrap().iter().map(|a| a.attempt).collect();
    assert_eq!(tried, [1].into_iter().chain(3..=101).collect::<Vec<_>>(), "the first and the latest 99");

    fixture.execute(&events(to_cap + 2, to_cap + 60)).await.unwrap();
    fixture.execute(&attempts(102, 160)).await.unwrap();
    let kept = store.ticket_events(id).await.unwrap();
    assert_eq!(kept.len(), 200);
    assert_eq!(kept[0].kind, first_kind);
    let numbered: Vec<i64> = kept[1..].iter().map(|event| event.polls).collect();
    assert_eq!(numbered, (to_cap - 138..=to_cap + 60).collect::<Vec<_>>(), "the latest 199 after the first");
    let tried: Vec<i64> = store.webhook_attempts_of_ticket(id).await.unwrap().iter().map(|a| a.attempt).collect();
    assert_eq!(tried, [1].into_iter().chain(62..=160).collect::<Vec<_>>());
}
