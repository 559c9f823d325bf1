//! What rows can hold: times written by hand, dates that do not exist, values of the wrong type,
//! ids that must never be handed out twice, and the migration that brings an older database to
//! these rules. Rows are written as another program would, through a connection of its own.

use std::time::Duration;

use chrono::Utc;
use flink_ticketd::clock::{format_instant, parse_instant};
use flink_ticketd::domain::{DeployResult, RowId, TicketState, TicketStatus};
use flink_ticketd::store::{Announcement, Finish, Lease, NewDelivery, NewTicket, Store, StoreSettings, Ticket};
use sqlx::Connection as _;

use crate::harness::{TestEnv, new_ticket, quote, stored_text};

const HOUR: Duration = Duration::from_secs(3600);

async fn open(path: &std::path::Path) -> Store {
    Store::open(&StoreSettings { path: path.to_owned(), busy_timeout: Duration::from_secs(5), max_readers: 2 })
        .await
        .expect("the store opens")
}

/// A connection of its own to the database file, as the sqlite3 shell or another program has.
async fn shell(path: &std::path::Path) -> sqlx::SqliteConnection {
    let url = format!("sqlite://{}", path.display());
    let mut connection = sqlx::SqliteConnection::connect(&url).await.expect("a plain connection");
    sqlx::raw_sql("PRAGMA busy_timeout = 5000").execute(&mut connection).await.expect("busy timeout set");
    connection
}

/// Runs `sql` in the shell's way; `Err` carries SQLite's message.
async fn run_sql(path: &std::path::Path, sql: &str) -> Result<(), String> {
    let mut connection = shell(path).await;
    let result = sqlx::raw_sql(sql).execute(&mut connection).await.map(drop).map_err(|error| error.to_string());
    connection.close().await.expect("the connection closes");
    result
}

/// Runs `sql` with the schema's checks switched off, as only a careless program would: the way
/// to put a value into a row that the checks refuse.
async fn run_sql_without_checks(path: &std::path::Path, sql: &str) {
    run_sql(path, &format!("PRAGMA ignore_check_constraints = ON; {sql}")).await.expect("the SQL runs");
}

fn is_canonical(text: &str) -> bool {
    parse_instant(text).is_some_and(|instant| format_instant(instant) == text)
}

/// Claims row `id` and records `finish`, with one delivery to `url` announcing it under the
/// webhook-id the daemon gives it. Returns how many deliveries were written.
async fn finish(store: &Store, id: RowId, finish: &Finish, url: &str) -> Result<Option<usize>, sqlx::Error> {
    let lease = Lease(format!("test#{id}"));
    let now = Utc::now();
    let claimed = store.claim_ticket(&lease, id, now, Duration::from_secs(60), HOUR).await.expect("claim");
    assert!(claimed.is_some(), "row {id} is claimed");
    let url = url.to_owned();
    store
        .record_final(&lease, id, now, finish, move |row: &Ticket| Announcement {
            deliveries: vec![NewDelivery {
                ticket: row.id.0,
                url,
                webhook_id: flink_ticketd::webhook::webhook_id(row),
                event_type: "ticket.succeeded".to_owned(),
                payload: "{}".to_owned(),
            }],
            webhook_note: None,
            handoff: None,
        })
        .await
}

fn succeeded() -> Finish {
    Finish {
        state: TicketState::Succeeded,
        polled: true,
        request_id: Some("req-1".to_owned()),
        answer: Some(
            DeployResult {
                ticket_status: Some(TicketStatus::Finished),
                deployment_id: Some("dep-old".to_owned()),
                success: Some(true),
                message: Some("deployed".to_owned()),
                validation_result: Some("PASS".to_owned()),
                validation_errors: Vec::new(),
            }
            .into(),
        ),
        error: None,
    }
}

#[tokio::test]
async fn a_deleted_rows_id_is_never_handed_out_again_so_its_webhook_id_is_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.db");
    let store = open(&path).await;
    let first = store.insert_ticket(&new_ticket("first")).await.unwrap();
    assert_eq!(finish(&store, first.id, &succeeded(), "http://127.0.0.1:9/hook").await.unwrap(), Some(1));

    // An operator deletes the newest row in the sqlite3 shell, where foreign keys are off: its
    // delivery row stays.
    run_sql(&path, &format!("PRAGMA foreign_keys = OFF; DELETE FROM tickets WHERE id = {}", first.id)).await.unwrap();
    let second = store.insert_ticket(&new_ticket("second")).await.unwrap();
    assert!(second.id > first.id, "a deleted row's id is not reused ({} after {})", second.id, first.id);
    assert_eq!(finish(&store, second.id, &succeeded(), "http://127.0.0.1:9/hook").await.unwrap(), Some(1));

    let deliveries = store.list_deliveries(None, 10).await.unwrap();
    let ids: std::collections::HashSet<&str> = deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
    assert_eq!((deliveries.len(), ids.len()), (2, 2), "two outcomes, two webhook-ids: {deliveries:?}");
    assert_eq!(store.deliveries_of_ticket(second.id.0).await.unwrap().len(), 1);
    store.close().await;
}

#[tokio::test]
async fn a_webhook_id_comes_from_what_names_the_ticket_not_from_its_row_id_alone() {
    // Two databases hand out row 1 to different tickets, as a sequence can after a failover that
    // lost the newest commits: their outcomes still get different webhook-ids.
    let dir = tempfile::tempdir().unwrap();
    let (one, other) = (open(&dir.path().join("one.db")).await, open(&dir.path().join("other.db")).await);
    let a = one.insert_ticket(&new_ticket("a")).await.unwrap();
    let b = other.insert_ticket(&new_ticket("b")).await.unwrap();
    assert_eq!(a.id, b.id);
    let id = flink_ticketd::webhook::webhook_id;
    assert_ne!(id(&a), id(&b));

    // The same ticket read again (by another daemon, after a restart) keeps its id; a retry or
    // another outcome gets a new one.
    let again = one.ticket(a.id).await.unwrap().unwrap();
    assert_eq!(id(&again), id(&a));
    let digest = id(&a).trim_start_matches("tkt_").split('_').next().unwrap().to_owned();
    assert!(digest.len() == 24 && digest.bytes().all(|b| b.is_ascii_hexdigit()), "{}", id(&a));
    assert_eq!(id(&a), format!("tkt_{digest}_0.pending"));
    assert_eq!(id(&Ticket { retries: 1, state: TicketState::Failed, ..a.clone() }), format!("tkt_{digest}_1.failed"));
    one.close().await;
    other.close().await;
}

#[tokio::test]
async fn a_delivery_whose_webhook_id_is_taken_is_noted_on_the_ticket_not_dropped_silently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taken.db");
    let store = open(&path).await;
    let ticket = store.insert_ticket(&new_ticket("taken")).await.unwrap();
    let taken = flink_ticketd::webhook::webhook_id(&Ticket { state: TicketState::Succeeded, ..ticket.clone() });
    // Another program already wrote a delivery under the webhook-id this outcome will get.
    run_sql(
        &path,
        &format!(
            "INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload)
             VALUES ({id}, 'http://127.0.0.1:9/hook', '{taken}', 'ticket.succeeded', '{{}}')",
            id = ticket.id
        ),
    )
    .await
    .unwrap();

    // The final state commits (it must never be held back by its announcement), the count says
    // that nothing was written, and the ticket says why.
    let written = finish(&store, ticket.id, &succeeded(), "http://127.0.0.1:9/hook").await.unwrap();
    assert_eq!(written, Some(0), "no delivery is counted that was not written");
    let row = store.ticket(ticket.id).await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Succeeded);
    let note = row.webhook_note.unwrap_or_default();
    assert!(note.contains(&taken), "{note}");
    assert!(note.contains("already issued"), "{note}");
    assert_eq!(store.deliveries_of_ticket(ticket.id.0).await.unwrap().len(), 1);
    store.close().await;
}

#[tokio::test]
async fn the_migration_keeps_every_row_and_id_and_starts_ids_above_every_id_ever_announced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    // A database as the previous release left it: every migration before this one.
    {
        let mut connection = crate::harness::database_before(&path, 20261203000001).await;
        let shanghai_now = (Utc::now() + chrono::Duration::hours(8)).format("%Y-%m-%dT%H:%M:%S+08:00");
        sqlx::raw_sql(&format!(
            "INSERT INTO tickets (id, ticket_id, namespace, workspace) VALUES (3, 'kept', 'ns', 'ws');
             INSERT INTO tickets (id, ticket_id, namespace, workspace) VALUES (7, 'shell-time', 'ns', 'ws');
             INSERT INTO tickets (id, ticket_id, namespace, workspace) VALUES (8, 'junk-polls', 'ns', 'ws');
             -- The sqlite3 shell of Debian 12 (SQLite 3.40) stores such a date as written; the
             -- library here would have normalised it, so its trigger is set aside for this row.
             DROP TRIGGER tickets_normalise_deadline_on_insert;
             INSERT INTO tickets (id, ticket_id, namespace, workspace, deadline_at)
                 VALUES (9, 'unreal-deadline', 'ns', 'ws', '2026-02-30T00:00:00.000Z');
             INSERT INTO tickets (id, ticket_id, namespace, workspace, state, finished_at)
                 VALUES (12, 'done', 'ns', 'ws', 'succeeded', '{shanghai_now}');
             INSERT INTO tickets (id, ticket_id, namespace, workspace) VALUES (20, 'deleted', 'ns', 'ws');
             UPDATE tickets SET next_poll_at = datetime('now') WHERE id = 7;
             UPDATE tickets SET polls = 'abc' WHERE id = 8;
             INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload)
                 VALUES (12, 'http://127.0.0.1:9/hook', 'tkt_12_0.succeeded', 'ticket.succeeded', '{{}}');
             INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload)
                 VALUES (20, 'http://127.0.0.1:9/hook', 'tkt_20_0.succeeded', 'ticket.succeeded', '{{}}');
             PRAGMA foreign_keys = OFF;
             DELETE FROM tickets WHERE id = 20;"
        ))
        .execute(&mut connection)
        .await
        .expect("the old rows are written");
        connection.close().await.unwrap();
    }

    let store = open(&path).await;
    let rows = store.list_tickets(None, None, 100).await.unwrap();
    let by_id = |id: RowId| rows.iter().find(|row| row.id == id).unwrap_or_else(|| panic!("row {id} kept: {rows:?}"));
    let mut ids: Vec<RowId> = rows.iter().map(|row| row.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [3, 7, 8, 9, 12].map(RowId), "every row keeps its id");
    for row in &rows {
        for column in ["created_at", "updated_at", "next_poll_at"] {
            let time = stored_text(&path, row.id, column).await;
            assert!(time.as_deref().is_some_and(is_canonical), "{time:?} in {row:?}");
        }
    }
    assert_eq!(by_id(RowId(7)).state, TicketState::Pending, "a time in another form is rewritten, not refused");
    let done = by_id(RowId(12));
    assert_eq!(done.state, TicketState::Succeeded);
    assert!(stored_text(&path, done.id, "finished_at").await.as_deref().is_some_and(is_canonical), "{done:?}");
    for (id, column) in [(8, "polls"), (9, "deadline_at")] {
        let row = by_id(RowId(id));
        assert_eq!((row.state.as_str(), row.error_code.as_deref()), ("failed", Some("InvalidTicket")), "{row:?}");
        assert!(row.error_message.as_deref().unwrap_or("").contains(column), "{row:?}");
    }
    assert_eq!(store.deliveries_of_ticket(12).await.unwrap().len(), 1, "deliveries of kept rows are kept");

    // The delivery of the row deleted by hand named id 20: a new row starts above it.
    let new = store.insert_ticket(&new_ticket("new")).await.unwrap();
    assert!(new.id > RowId(20), "new id {}", new.id);
    store.close().await;
}

#[tokio::test]
async fn hand_written_poll_times_are_stored_canonically_and_never_stop_or_spin_the_loop() {
    let env = TestEnv::new("").await;
    let daemon = env.spawn_daemon(|_| {}).await;
    // What an operator types in the sqlite3 shell to make a ticket due now; each insert and its
    // update commit together, so the daemon only ever sees the written time.
    let shanghai_now = (Utc::now() + chrono::Duration::hours(8)).format("%Y-%m-%dT%H:%M:%S%.3f+08:00").to_string();
    for (ticket_id, time) in [("t-shell", "datetime('now')".to_owned()), ("t-offset", quote(&shanghai_now))] {
        run_sql(
            &env.db_path,
            &format!(
                "BEGIN IMMEDIATE;
                 INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('{ticket_id}', 'ns', 'ws');
                 UPDATE tickets SET next_poll_at = {time} WHERE ticket_id = '{ticket_id}';
                 COMMIT;"
            ),
        )
        .await
        .expect("the operator's update runs");
    }
    env.insert("t-later", "ns", "ws").await;

    for ticket_id in ["t-shell", "t-offset", "t-later"] {
        let row = env.wait_final(ticket_id).await;
        assert_eq!(row.state, TicketState::Succeeded, "{row:?}");
        for column in ["created_at", "updated_at", "next_poll_at"] {
            let time = stored_text(&env.db_path, row.id, column).await;
            assert!(time.as_deref().is_some_and(is_canonical), "{time:?} in {row:?}");
        }
    }
    let refused = run_sql(
        &env.db_path,
        "BEGIN IMMEDIATE;
         INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('t-empty', 'ns', 'ws');
         UPDATE tickets SET next_poll_at = '' WHERE ticket_id = 't-empty';
         COMMIT;",
    )
    .await
    .expect_err("an empty time is refused");
    assert!(refused.contains("next_poll_at_must_be_a_real_time"), "{refused}");
    assert!(env.tickets("t-empty").await.is_empty(), "the refused insert rolled back with its update");

    // Written with the checks switched off, an empty time sorts first: it counts as due now, and
    // the row is polled and its time rewritten.
    run_sql_without_checks(
        &env.db_path,
        "BEGIN IMMEDIATE;
         INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('t-blank', 'ns', 'ws');
         UPDATE tickets SET next_poll_at = '' WHERE ticket_id = 't-blank';
         COMMIT;",
    )
    .await;
    let row = env.wait_final("t-blank").await;
    assert_eq!(row.state, TicketState::Succeeded, "{row:?}");
    assert!(stored_text(&env.db_path, row.id, "next_poll_at").await.as_deref().is_some_and(is_canonical), "{row:?}");
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn dates_that_do_not_exist_are_refused_and_real_ones_in_any_form_are_normalised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dates.db");
    let store = open(&path).await;
    for (n, unreal) in
        ["2026-04-31", "2026-02-30", "2026-04-30T24:00", "2026-13-01", "2026-00-10", "2026-12-03T10:61", ""]
            .iter()
            .enumerate()
    {
        let insert = format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace, deadline_at) VALUES ('u{n}', 'ns', 'ws', {})",
            quote(unreal)
        );
        let error = run_sql(&path, &insert).await.expect_err(&format!("{unreal:?} is refused"));
        assert!(error.contains("deadline_at_must_be_a_real_time"), "{unreal:?}: {error}");
    }
    run_sql(&path, "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('r', 'ns', 'ws')")
        .await
        .expect("a plain insert runs");
    for column in ["next_poll_at", "created_at", "updated_at", "finished_at", "lease_until"] {
        let error =
            run_sql(&path, &format!("UPDATE tickets SET {column} = '2026-02-29T10:00:00Z' WHERE ticket_id = 'r'"))
                .await
                .expect_err(&format!("{column} refuses a day that does not exist"));
        assert!(error.contains(&format!("{column}_must_be_a_real_time")), "{error}");
    }
    // A time written by hand in another form is stored canonically, column by column, and the
    // other times of the row stay as they were.
    let id = store.find_tickets("r", None, None, None).await.unwrap().remove(0).id;
    let stored = |column: &'static str| {
        let path = path.clone();
        async move { stored_text(&path, id, column).await }
    };
    let times = ["created_at", "updated_at", "next_poll_at", "finished_at", "deadline_at", "lease_until"];
    for (n, column) in times.iter().enumerate() {
        let mut others = Vec::new();
        for other in times.iter().filter(|other| *other != column) {
            others.push((*other, stored(other).await));
        }
        run_sql(&path, &format!("UPDATE tickets SET {column} = '2026-12-31 23:{n:02}' WHERE id = {}", id.0))
            .await
            .unwrap_or_else(|error| panic!("{column} takes a real time: {error}"));
        let expected = format!("2026-12-31T23:{n:02}:00.000Z");
        assert_eq!(stored(column).await, Some(expected), "{column} is stored canonically");
        for (other, value) in others {
            assert_eq!(stored(other).await, value, "updating {column} leaves {other} as it was");
        }
    }

    for (n, (written, stored)) in [
        ("2028-02-29", "2028-02-29T00:00:00.000Z"),
        ("2026-12-31 23:59", "2026-12-31T23:59:00.000Z"),
        ("2026-12-01T10:00:00+08:00", "2026-12-01T02:00:00.000Z"),
        ("2026-12-31T20:30:00.5-04:00", "2027-01-01T00:30:00.500Z"),
    ]
    .iter()
    .enumerate()
    {
        run_sql(
            &path,
            &format!(
                "INSERT INTO tickets (ticket_id, namespace, workspace, deadline_at) VALUES ('ok{n}', 'ns', 'ws', {})",
                quote(written)
            ),
        )
        .await
        .unwrap_or_else(|error| panic!("{written:?} is accepted: {error}"));
        let row = store.find_tickets(&format!("ok{n}"), None, None, None).await.unwrap().remove(0);
        assert_eq!(stored_text(&path, row.id, "deadline_at").await.as_deref(), Some(*stored), "{written:?}");
        assert!(row.deadline().is_some(), "a stored deadline is always readable");
    }
    store.close().await;
}

#[tokio::test]
async fn values_of_the_wrong_type_are_refused_in_every_column_the_daemon_fills() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("types.db");
    let store = open(&path).await;
    store.insert_ticket(&new_ticket("typed")).await.unwrap();
    // A TEXT column stores a number as its text and an INTEGER column stores '1' as 1: what is
    // left to refuse is what cannot be read as the column's type.
    for (column, value) in [
        ("polls", "'abc'"),
        ("polls", "1.5"),
        ("running_streak", "'one'"),
        ("error_streak", "x'01'"),
        ("retries", "'-'"),
        ("deploy_success", "'yes'"),
        ("deploy_success", "2"),
        ("ticket_status", "x'31'"),
        ("deployment_id", "x'00'"),
        ("message", "x'31'"),
        ("validation_result", "x'31'"),
        ("validation_errors", "'{}'"),
        ("error_code", "x'31'"),
        ("error_message", "x'31'"),
        ("request_id", "x'31'"),
        ("webhook_note", "x'31'"),
        ("lease_owner", "x'31'"),
        ("next_poll_at", "1"),
        ("validation_errors", "x'5b5d'"),
    ] {
        let result = run_sql(&path, &format!("UPDATE tickets SET {column} = {value} WHERE ticket_id = 'typed'")).await;
        let error = result.expect_err(&format!("{column} = {value} is refused"));
        assert!(error.contains("constraint failed") && error.contains(column), "{column} = {value}: {error}");
    }
    let row = store.find_tickets("typed", None, None, None).await.unwrap().remove(0);
    assert_eq!((row.polls, row.state.as_str()), (0, "pending"));
    store.close().await;
}

#[tokio::test]
async fn a_row_with_an_unreadable_value_fails_alone_and_is_still_listed() {
    let env = TestEnv::new("").await;
    env.store().await.close().await;
    for ticket_id in ["t-1", "t-bad", "t-2", "t-3"] {
        env.insert(ticket_id, "ns", "ws").await;
    }
    run_sql_without_checks(&env.db_path, "UPDATE tickets SET polls = 'abc' WHERE ticket_id = 't-bad'").await;
    let driven = env.driven(|_| {}).await;
    driven.settle().await;

    for ticket_id in ["t-1", "t-2", "t-3"] {
        assert_eq!(env.ticket(ticket_id).await.state, TicketState::Succeeded, "{ticket_id} is not held back");
    }
    let bad = env.ticket("t-bad").await;
    assert_eq!((bad.state.as_str(), bad.error_code.as_deref()), ("failed", Some("InvalidTicket")), "{bad:?}");
    assert!(bad.error_message.as_deref().unwrap_or("").contains("polls"), "{bad:?}");
    assert_eq!(env.sim.polls_of("t-bad"), 0, "an unreadable row is never polled");
    driven.stop().await;

    // A finished row holding such a value is still listed and shown.
    run_sql_without_checks(&env.db_path, "UPDATE tickets SET running_streak = 'x' WHERE ticket_id = 't-1'").await;
    let listed = env.cli(&["list", "--json"]);
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).expect("list --json prints JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(4), "{rows}");
    let shown = env.cli(&["show", "t-1"]);
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    assert!(shown.stdout.contains("t-1"), "{}", shown.stdout);
}

#[tokio::test]
async fn a_row_holding_a_value_its_check_refuses_fails_at_claim_instead_of_never_finishing() {
    // Each value breaks its column's check (written with the checks switched off). SQLite tests a
    // written column's check even when its value is unchanged. A result write keeps the answer
    // columns and counts when the API answers no result, so such a row would be polled again and
    // again and never finish, not even expire; a claim keeps the deadline, so a deadline that is
    // not a time would have every claim refused, and no other ticket polled.
    let bad = [
        ("t-deadline", "deadline_at = 'garbage'", "deadline_at"),
        ("t-issues", "validation_errors = 'not json'", "validation_errors"),
        ("t-config", "config_errors = '{}'", "config_errors"),
        ("t-result", "result_json = '{\"ticketStatus\":'", "result_json"),
        ("t-flag", "deploy_success = 5", "deploy_success"),
        ("t-polls", "polls = -1", "polls"),
        ("t-streak", "running_streak = -2", "running_streak"),
        ("t-seen", "running_seen_ms = -5", "running_seen_ms"),
    ];
    let scenario: String = bad
        .iter()
        .map(|(ticket_id, _, _)| format!("[[tickets]]\nid = \"{ticket_id}\"\nsteps = [{{ not_found = true }}]\n"))
        .collect();
    let env = TestEnv::new(&scenario).await;
    env.store().await.close().await;
    env.insert("t-good", "ns", "ws").await;
    for (ticket_id, set, _) in bad {
        env.insert(ticket_id, "ns", "ws").await;
        run_sql_without_checks(&env.db_path, &format!("UPDATE tickets SET {set} WHERE ticket_id = '{ticket_id}'"))
            .await;
    }
    let driven = env.driven(|_| {}).await;
    driven.settle().await;

    assert_eq!(env.ticket("t-good").await.state, TicketState::Succeeded, "the others are not held back");
    for (ticket_id, _, column) in bad {
        let row = env.ticket(ticket_id).await;
        assert_eq!((row.state.as_str(), row.error_code.as_deref()), ("failed", Some("InvalidTicket")), "{row:?}");
        assert!(row.error_message.as_deref().unwrap_or("").contains(column), "{ticket_id}: {row:?}");
        assert_eq!(env.sim.polls_of(ticket_id), 0, "{ticket_id} is never polled");
    }
    driven.stop().await;
    // The failed rows hold nothing their checks refuse any more (SQLite's check covers CHECK
    // constraints), so a later write of them, such as `retry`, is not refused.
    let mut connection = shell(&env.db_path).await;
    let checked: Vec<String> = sqlx::query_scalar("PRAGMA quick_check").fetch_all(&mut connection).await.unwrap();
    connection.close().await.expect("the connection closes");
    assert_eq!(checked, ["ok"]);
    let listed = env.cli(&["list", "--json"]);
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).expect("list --json prints JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(bad.len() + 1), "{rows}");
}

#[tokio::test]
async fn an_unknown_region_is_refused_at_insert_and_the_webhook_url_scheme_ignores_case() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("region.db");
    let store = open(&path).await;
    for region in ["mars-1", "CN-HANGZHOU", "cn-hangzhou "] {
        let error = run_sql(
            &path,
            &format!(
                "INSERT INTO tickets (ticket_id, namespace, workspace, region) VALUES ('r', 'ns', 'ws', {})",
                quote(region)
            ),
        )
        .await
        .expect_err(&format!("{region:?} is refused"));
        assert!(error.contains("region_must_be_known"), "{error}");
    }
    for (n, region) in ["cn-hangzhou", "eu-west-1", "cn-shanghai-finance-1"].iter().enumerate() {
        let ticket = NewTicket { region: Some((*region).to_owned()), ..new_ticket(&format!("k{n}")) };
        store.insert_ticket(&ticket).await.unwrap_or_else(|error| panic!("{region} is accepted: {error}"));
    }
    for (n, url) in ["HTTPS://example.com/hook", "Http://example.com/hook"].iter().enumerate() {
        let ticket = NewTicket { webhook_url: Some((*url).to_owned()), ..new_ticket(&format!("u{n}")) };
        store.insert_ticket(&ticket).await.unwrap_or_else(|error| panic!("{url} is accepted: {error}"));
    }
    let error = run_sql(
        &path,
        "INSERT INTO tickets (ticket_id, namespace, workspace, webhook_url) VALUES ('f', 'ns', 'ws', 'FTP://example.com')",
    )
    .await
    .expect_err("another scheme is refused");
    assert!(error.contains("webhook_url_must_be_http_or_https"), "{error}");
    store.close().await;
}

#[tokio::test]
async fn retry_clears_the_previous_answer_so_a_later_expiry_does_not_carry_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("retry.db");
    let store = open(&path).await;
    let ticket = store.insert_ticket(&new_ticket("again")).await.unwrap();
    finish(&store, ticket.id, &succeeded(), "http://127.0.0.1:9/hook").await.unwrap();

    let now = Utc::now();
    assert!(store.retry_ticket(ticket.id, now, now + chrono::Duration::hours(1)).await.unwrap());
    let retried = store.ticket(ticket.id).await.unwrap().unwrap();
    assert_eq!(
        (
            retried.ticket_status.as_ref().map(TicketStatus::as_wire),
            retried.deployment_id.as_deref(),
            retried.deploy_success,
            retried.message.as_deref(),
            retried.validation_result.as_deref(),
            stored_text(&path, retried.id, "validation_errors").await.as_deref(),
            retried.request_id.as_deref(),
        ),
        (None, None, None, None, None, Some("[]"), None),
        "{retried:?}"
    );

    // The retried run expires without an answer: its announcement names no deployment.
    let expired = Finish {
        state: TicketState::Expired,
        polled: false,
        request_id: None,
        answer: None,
        error: Some(("DeadlineExceeded".to_owned(), "the deadline passed".to_owned())),
    };
    finish(&store, ticket.id, &expired, "http://127.0.0.1:9/hook").await.unwrap();
    let row = store.ticket(ticket.id).await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Expired);
    let payload: serde_json::Value =
        serde_json::from_str(&flink_ticketd::webhook::payload(&row, "ticket.expired")).unwrap();
    assert_eq!(payload["data"]["deployment_id"], serde_json::Value::Null, "{payload}");
    assert_eq!(payload["data"]["deploy_success"], serde_json::Value::Null, "{payload}");
    assert_eq!(payload["data"]["ticket_status"], serde_json::Value::Null, "{payload}");
    store.close().await;
}

/// Runs `sql` in the real sqlite3 shell (the SQLite users insert with, whose date functions are
/// older than the library's); `Err` carries its stderr.
fn sqlite3_shell(path: &std::path::Path, sql: &str) -> Result<(), String> {
    let output = std::process::Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(path)
        .arg(sql)
        .output()
        .expect("sqlite3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() && stderr.is_empty() { Ok(()) } else { Err(stderr) }
}

#[tokio::test]
async fn the_sqlite3_shell_refuses_unreal_dates_and_its_hand_written_times_are_stored_canonically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shell.db");
    let store = open(&path).await;
    for (n, unreal) in ["2026-04-31", "2026-02-30", "2026-04-30T24:00", "2026-02-29 10:00", ""].iter().enumerate() {
        let insert = format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace, deadline_at) VALUES ('u{n}', 'ns', 'ws', {})",
            quote(unreal)
        );
        let error = sqlite3_shell(&path, &insert).expect_err(&format!("{unreal:?} is refused"));
        assert!(error.contains("deadline_at_must_be_a_real_time"), "{unreal:?}: {error}");
    }
    let shanghai_now = (Utc::now() + chrono::Duration::hours(8)).format("%Y-%m-%dT%H:%M:%S+08:00").to_string();
    sqlite3_shell(
        &path,
        &format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('t', 'ns', 'ws');
             UPDATE tickets SET next_poll_at = datetime('now'), deadline_at = {} WHERE ticket_id = 't';",
            quote(&shanghai_now)
        ),
    )
    .expect("the operator's update runs");
    let row = store.find_tickets("t", None, None, None).await.unwrap().remove(0);
    assert!(stored_text(&path, row.id, "next_poll_at").await.as_deref().is_some_and(is_canonical), "{row:?}");
    let deadline = row.deadline().expect("the deadline is readable");
    assert!((deadline - Utc::now()).num_minutes().abs() < 5, "{row:?}");
    let error =
        sqlite3_shell(&path, "UPDATE tickets SET next_poll_at = '' WHERE ticket_id = 't'").expect_err("refused");
    assert!(error.contains("next_poll_at_must_be_a_real_time"), "{error}");
    store.close().await;
}
