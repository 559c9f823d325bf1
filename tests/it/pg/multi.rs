//! Several daemon binaries on one PostgreSQL database, as on several hosts with no leader: they
//! share the work without polling a ticket twice, take over a killed daemon's tickets once its
//! lease lapses, fence a daemon that was paused past its lease, and share retention without two
//! of them deleting at once. Who polled what, and when, comes from the simulator's request log
//! (each daemon signs with a key of its own).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;

use super::database;
use super::fleet::{Fleet, alive, key, wait_log, wait_ready};
use crate::harness::{WebhookSink, eventually, eventually_within};

const SECRET: &str = "whsec_bXVsdGktZGFlbW9uLXdlYmhvb2stc2VjcmV0LTEyMzQ1Ng==";

/// `[webhook]` for one receiver, with quick retries and a short delivery lease.
fn webhook(sink: &WebhookSink) -> String {
    format!(
        "[webhook]\nurls = [{:?}]\nsecret = {SECRET:?}\nschedule = [\"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\"]\n\
         timeout = \"1s\"\nlease = \"2s\"\nmax_in_flight = 8\n",
        sink.url
    )
}

/// Each outcome reached the receiver at least once, always under the one `webhook-id` its
/// outbox row holds, and announces the ticket's final state.
fn assert_announced_once_each(
    fleet_rows: &[super::fleet::Row],
    outbox: &[super::fleet::Delivery],
    sink: &mut WebhookSink,
) {
    assert_eq!(outbox.len(), fleet_rows.len(), "one outbox row per outcome (one receiver)");
    let id_of: HashMap<&str, &str> =
        outbox.iter().map(|delivery| (delivery.ticket_id.as_str(), delivery.webhook_id.as_str())).collect();
    assert_eq!(id_of.len(), fleet_rows.len(), "one webhook-id per ticket");
    let state_of: HashMap<&str, &str> =
        fleet_rows.iter().map(|row| (row.ticket_id.as_str(), row.state.as_str())).collect();
    let mut heard = HashSet::new();
    for request in sink.drain() {
        let body = request.json();
        let ticket_id = body["data"]["ticket_id"].as_str().expect("a ticket_id").to_owned();
        assert_eq!(request.header("webhook-id"), id_of[ticket_id.as_str()], "{ticket_id} under another webhook-id");
        assert_eq!(body["data"]["state"].as_str(), Some(state_of[ticket_id.as_str()]), "{ticket_id}");
        heard.insert(ticket_id);
    }
    assert_eq!(heard.len(), fleet_rows.len(), "every outcome reached the receiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_share_a_thousand_tickets_without_polling_one_twice() {
    let Some(database) = database().await else { return };
    const TICKETS: usize = 1000;
    let scenario = r#"
[[tickets]]
prefix = "t-"
steps = [{ status = "EXECUTING", delay_ms = 5 }, { status = "EXECUTING", delay_ms = 5 }, { status = "FINISHED", success = true, delay_ms = 5 }]
"#;
    let fleet = Fleet::new(database.url(), scenario, 3).await;
    let mut sink = WebhookSink::accepting().await;
    // A lease long enough that no record is late on a loaded machine: any ticket polled more
    // often than its script has steps was then held by two daemons at once.
    let vars = [("FLINK_TICKETD_POLL__LEASE", "10s"), ("FLINK_TICKETD_DATABASE__STATEMENT_TIMEOUT", "5s")];
    let first = fleet.spawn(0, database.url(), &webhook(&sink), &vars);
    wait_ready(&first).await;
    let others = [
        fleet.spawn(1, database.url(), &webhook(&sink), &vars),
        fleet.spawn(2, database.url(), &webhook(&sink), &vars),
    ];
    for daemon in &others {
        wait_ready(daemon).await;
    }
    fleet.insert("t-", 1, TICKETS).await;
    fleet.wait_settled(Duration::from_secs(150), i64::try_from(TICKETS).expect("small")).await;

    let rows = fleet.rows().await;
    assert_eq!(rows.len(), TICKETS);
    let polls = fleet.polls_by_ticket();
    let mut by_daemon: HashMap<String, usize> = HashMap::new();
    for row in &rows {
        assert_eq!((row.state.as_str(), row.deploy_success), ("succeeded", Some(true)), "{row:?}");
        let requests = &polls[&row.ticket_id];
        // A ticket handed to two daemons at once is polled more often than its script has steps.
        let shown: Vec<String> = requests
            .iter()
            .map(|request| {
                format!(
                    "{:?} {} {}..{}",
                    request.access_key_id,
                    request.answer,
                    flink_ticketd::clock::format_instant(request.started_at),
                    flink_ticketd::clock::format_instant(request.finished_at)
                )
            })
            .collect();
        assert_eq!(requests.len(), 3, "{} was polled {} times: {shown:#?}", row.ticket_id, requests.len());
        assert_eq!(row.polls, 3, "{}: every poll recorded once", row.ticket_id);
        for pair in requests.windows(2) {
            assert!(
                pair[0].finished_at <= pair[1].started_at,
                "{} was polled by {:?} and {:?} at the same time",
                row.ticket_id,
                pair[0].access_key_id,
                pair[1].access_key_id
            );
        }
        for request in requests {
            *by_daemon.entry(request.access_key_id.clone().expect("signed")).or_default() += 1;
        }
    }
    for index in 0..3 {
        assert!(by_daemon.get(&key(index)).copied().unwrap_or(0) > 0, "daemon {index} polled nothing: {by_daemon:?}");
    }
    let outbox = fleet.deliveries().await;
    assert!(outbox.iter().all(|delivery| delivery.state == "delivered" && delivery.event_type == "ticket.succeeded"));
    assert_announced_once_each(&rows, &outbox, &mut sink);
    eprintln!("three daemons, {TICKETS} tickets: polls per daemon {by_daemon:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_of_a_daemon_killed_mid_run_are_taken_over_within_a_lease_and_none_is_lost() {
    let Some(database) = database().await else { return };
    const TICKETS: usize = 300;
    const LEASE: Duration = Duration::from_secs(2);
    // poll.max_interval of the test config.
    const POLL_INTERVAL: Duration = Duration::from_millis(100);
    let scenario = r#"
[[tickets]]
prefix = "k-"
steps = [{ status = "EXECUTING", delay_ms = 20 }, { status = "EXECUTING", delay_ms = 20 }, { status = "EXECUTING", delay_ms = 20 }, { status = "EXECUTING", delay_ms = 20 }, { status = "FINISHED", success = true, delay_ms = 20 }]
"#;
    let fleet = Fleet::new(database.url(), scenario, 3).await;
    let mut sink = WebhookSink::accepting().await;
    let vars = [("FLINK_TICKETD_POLL__LEASE", "2s")];
    let victim = fleet.spawn(0, database.url(), &webhook(&sink), &vars);
    wait_ready(&victim).await;
    let survivors = [
        fleet.spawn(1, database.url(), &webhook(&sink), &vars),
        fleet.spawn(2, database.url(), &webhook(&sink), &vars),
    ];
    for daemon in &survivors {
        wait_ready(daemon).await;
    }
    fleet.insert("k-", 1, TICKETS).await;

    // Mid-run: once the victim has polled a good share, while plenty is still in flight.
    eventually("the daemon to be killed to have polled 100 times", || async {
        let polled = fleet.env.sim.requests().iter().filter(|request| request.access_key_id == Some(key(0))).count();
        (polled >= 100).then_some(())
    })
    .await;
    victim.kill();
    let killed_at = Utc::now();
    fleet.wait_settled(Duration::from_secs(120), i64::try_from(TICKETS).expect("small")).await;

    let rows = fleet.rows().await;
    assert_eq!(rows.len(), TICKETS, "no ticket lost");
    assert!(rows.iter().all(|row| row.state == "succeeded"), "every ticket finished, none stuck");
    let polls = fleet.polls_by_ticket();
    let bound = LEASE + POLL_INTERVAL;
    // Generous for a loaded machine (the whole suite runs at once on two cores), yet far below
    // what a stuck ticket would take.
    let slack = chrono::TimeDelta::milliseconds(2500);
    let mut taken_over = 0;
    let mut longest = chrono::TimeDelta::zero();
    for row in &rows {
        let requests = &polls[&row.ticket_id];
        let before: Vec<_> = requests.iter().filter(|request| request.started_at <= killed_at).collect();
        let Some(last) = before.last() else { continue };
        if last.access_key_id != Some(key(0)) || last.answer == "FINISHED" {
            continue;
        }
        let next = requests
            .iter()
            .find(|request| request.started_at > killed_at)
            .unwrap_or_else(|| panic!("{} was never polled after the kill", row.ticket_id));
        assert_ne!(next.access_key_id, Some(key(0)), "a killed daemon polls nothing");
        let waited = next.started_at - killed_at;
        assert!(
            waited <= chrono::TimeDelta::from_std(bound).expect("small") + slack,
            "{} was taken over {waited} after the kill (lease {LEASE:?} + poll interval {POLL_INTERVAL:?})",
            row.ticket_id
        );
        longest = longest.max(waited);
        taken_over += 1;
    }
    assert!(taken_over > 0, "the kill landed while the victim held tickets");
    let outbox = fleet.deliveries().await;
    assert_announced_once_each(&rows, &outbox, &mut sink);
    eprintln!(
        "kill -9 of one of three daemons: {taken_over} of its tickets taken over, the last {} ms after the kill, 0 lost",
        longest.num_milliseconds()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_paused_past_its_lease_writes_nothing_when_it_resumes() {
    let Some(database) = database().await else { return };
    // The paused daemon's poll is answered (late) with a failure; the other's with success.
    let scenario = r#"
[[tickets]]
prefix = "fenced"
steps = [{ status = "FINISHED", success = false, message = "answer to the paused daemon", delay_ms = 1500 }, { status = "FINISHED", success = true, message = "answer to the live daemon" }]
"#;
    let fleet = Fleet::new(database.url(), scenario, 2).await;
    let mut sink = WebhookSink::accepting().await;
    let vars = [("FLINK_TICKETD_POLL__LEASE", "3s"), ("FLINK_TICKETD_FLINK__REQUEST_TIMEOUT", "2s")];
    let mut paused = fleet.spawn(0, database.url(), &webhook(&sink), &vars);
    wait_ready(&paused).await;
    fleet.execute("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('fenced', 'ns', 'ws')").await;
    eventually("the first daemon's poll to reach the API", || async {
        (fleet.env.sim.polls_of("fenced") == 1).then_some(())
    })
    .await;
    paused.signal(19); // SIGSTOP, mid-poll, holding the lease.

    let live = fleet.spawn(1, database.url(), &webhook(&sink), &vars);
    wait_ready(&live).await;
    eventually("the other daemon to record its result", || async {
        let rows = fleet.rows().await;
        (rows[0].state == "succeeded").then_some(())
    })
    .await;
    paused.signal(18); // SIGCONT: its poll returns and it tries to record the stale answer.
    wait_log(&paused, "lease lost").await;
    assert!(alive(&mut paused), "a fenced write is not a reason to exit");

    let rows = fleet.rows().await;
    assert_eq!(
        (rows[0].state.as_str(), rows[0].deploy_success),
        ("succeeded", Some(true)),
        "the live daemon's result holds"
    );
    let mut connection = fleet.connect().await;
    let message: Option<String> = sqlx::query_scalar("SELECT message FROM tickets WHERE ticket_id = 'fenced'")
        .fetch_one(&mut connection)
        .await
        .expect("read");
    assert_eq!(message.as_deref(), Some("answer to the live daemon"));
    let keys: Vec<_> = fleet.env.sim.requests().into_iter().map(|request| request.access_key_id).collect();
    assert_eq!(keys, [Some(key(0)), Some(key(1))], "one poll each: the paused daemon's, then the live one's");
    fleet.wait_settled(Duration::from_secs(30), 1).await;
    let outbox = fleet.deliveries().await;
    assert_eq!(outbox.len(), 1, "only the live daemon's outcome is announced: {outbox:?}");
    assert_eq!(outbox[0].event_type, "ticket.succeeded");
    assert_announced_once_each(&rows, &outbox, &mut sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_three_hosts_deletes_each_row_once_and_never_on_two_at_once() {
    let Some(database) = database().await else { return };
    const OLD: usize = 6000;
    let fleet = Fleet::new(database.url(), "", 3).await;
    let retention = "[retention]\nkeep = \"1h\"\nschedule = \"* * * * * *\"\n";
    let first = fleet.spawn(0, database.url(), retention, &[]);
    wait_ready(&first).await;
    let others = [fleet.spawn(1, database.url(), retention, &[]), fleet.spawn(2, database.url(), retention, &[])];
    for daemon in &others {
        wait_ready(daemon).await;
    }
    // Every deletion leaves a line: which transaction, on which session, when.
    fleet
        .execute(
            "CREATE TABLE deletions (ticket_id text NOT NULL, backend int NOT NULL, xid xid8 NOT NULL, at timestamptz NOT NULL); \
             CREATE FUNCTION note_deletion() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               INSERT INTO deletions VALUES (OLD.ticket_id, pg_backend_pid(), pg_current_xact_id(), clock_timestamp()); \
               RETURN OLD; END $$; \
             CREATE TRIGGER note_deletion AFTER DELETE ON tickets FOR EACH ROW EXECUTE FUNCTION note_deletion();",
        )
        .await;
    fleet
        .execute(&format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace, state, ticket_status, finished_at) \
             SELECT 'old-' || n, 'ns', 'ws', 'succeeded', 'FINISHED', now() - interval '30 days' FROM generate_series(1, {OLD}) AS n; \
             INSERT INTO tickets (ticket_id, namespace, workspace, state, ticket_status, finished_at) \
             SELECT 'recent-' || n, 'ns', 'ws', 'succeeded', 'FINISHED', now() - interval '1 minute' FROM generate_series(1, 10) AS n;"
        ))
        .await;
    // All three tick every second from here on: each round, whoever gets the lock deletes.
    eventually_within(Duration::from_secs(90), "retention to delete every old row", || async {
        let counts = fleet.counts().await;
        (counts.get("succeeded").copied() == Some(10)).then_some(())
    })
    .await;

    let mut connection = fleet.connect().await;
    let (deleted, distinct): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT ticket_id) FROM deletions")
        .fetch_one(&mut connection)
        .await
        .expect("read");
    assert_eq!(
        (deleted, distinct),
        (i64::try_from(OLD).expect("small"), i64::try_from(OLD).expect("small")),
        "each row deleted once"
    );
    let recent: i64 = sqlx::query_scalar("SELECT count(*) FROM deletions WHERE ticket_id LIKE 'recent-%'")
        .fetch_one(&mut connection)
        .await
        .expect("read");
    assert_eq!(recent, 0, "rows younger than retention.keep stay");
    // Each deleting transaction's span, by its first deletion; no span may start before the
    // previous one ended.
    let spans: Vec<(String, i32, i64, i64)> = sqlx::query_as(
        "SELECT xid::text, min(backend), (extract(epoch FROM min(at)) * 1e6)::bigint, \
         (extract(epoch FROM max(at)) * 1e6)::bigint FROM deletions GROUP BY xid ORDER BY min(at)",
    )
    .fetch_all(&mut connection)
    .await
    .expect("read");
    for pair in spans.windows(2) {
        assert!(
            pair[0].3 < pair[1].2,
            "deleting transactions {} (session {}) and {} (session {}) overlapped",
            pair[0].0,
            pair[0].1,
            pair[1].0,
            pair[1].1
        );
    }
    let sessions: HashSet<i32> = spans.iter().map(|span| span.1).collect();
    eprintln!("retention on three hosts: {OLD} rows in {} transactions from {} sessions", spans.len(), sessions.len());
}
