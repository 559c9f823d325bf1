//! Adaptive polling through the daemon's own parts: schedules learned from finished rows in a
//! real SQLite file, placed polls, the stored reason `show` prints, and a restart that plans the
//! same polls from the same rows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flink_ticketd::clock::format_instant;
use flink_ticketd::domain::TicketKind;
use flink_ticketd::poller::{Bounds, LEARNED_JITTER, LearnedSchedule, MAX_SAMPLES};
use flink_ticketd::simulator::{Scenario, Step};
use flink_ticketd::store::{Store, Ticket};

use crate::harness::{Driven, TestEnv};

/// `count` tickets of `workspace`/`namespace` that finished between 10 s and 14 s after their
/// enqueue an hour ago, each seen running half a second before.
fn finished_history(workspace: &str, namespace: &str, count: usize) -> String {
    let start = Utc::now() - chrono::Duration::hours(1);
    (0..count)
        .map(|index| {
            let created = start + chrono::Duration::seconds(i64::try_from(index).unwrap() * 20);
            let run_ms = 10_000 + i64::try_from(index * 4000 / count.max(1)).unwrap();
            format!(
                "INSERT INTO tickets (ticket_id, namespace, workspace, state, polls, created_at, finished_at, running_seen_ms)
                 VALUES ('done-{index}', '{namespace}', '{workspace}', 'succeeded', 4, '{}', '{}', {});",
                format_instant(created),
                format_instant(created + chrono::Duration::milliseconds(run_ms)),
                run_ms - 500,
            )
        })
        .collect()
}

/// The built-in `[poll]` defaults (the test config polls every few milliseconds).
fn default_schedule(config: &mut flink_ticketd::config::Config) {
    config.poll.initial_interval = Duration::from_secs(2);
    config.poll.max_interval = Duration::from_secs(30);
    config.poll.multiplier = 1.5;
    config.poll.deadline = Duration::from_secs(3600);
}

fn default_bounds() -> Bounds {
    Bounds { target_lag: 0.1, min_interval: Duration::from_secs(1), max_interval: Duration::from_secs(30) }
}

async fn learned(store: &Store, workspace: &str, namespace: &str) -> LearnedSchedule {
    let samples = store
        .recent_run_samples(workspace, namespace, TicketKind::Deploy, MAX_SAMPLES)
        .await
        .expect("samples are read");
    LearnedSchedule::learn(&samples, &default_bounds()).expect("enough history")
}

/// Turns until the ticket has been polled `polls` times and its result recorded.
async fn polled(driven: &Driven, env: &TestEnv, ticket_id: &str, polls: i64) -> Ticket {
    driven
        .turn_until(|| async {
            let ticket = env.ticket(ticket_id).await;
            (ticket.polls >= polls && ticket.lease_owner.is_none()).then_some(ticket)
        })
        .await
}

fn after_created(ticket: &Ticket, at: DateTime<Utc>) -> Duration {
    (at - ticket.created_at).to_std().expect("after the enqueue")
}

#[tokio::test]
async fn a_running_ticket_is_polled_where_earlier_tickets_of_its_namespace_finished_and_a_restart_keeps_the_plan() {
    let running = vec![Step::status("EXECUTING"), Step::status("EXECUTING"), Step::finished_ok()];
    let env = TestEnv::with_scenario(Scenario::default().with_prefix("new-", running)).await;
    let driven = env.driven(default_schedule).await;
    env.execute_sql(&finished_history("ws", "ns", 30)).await;
    env.insert("new-1", "ns", "ws").await;

    let first = polled(&driven, &env, "new-1", 1).await;
    let schedule = learned(&driven.store, "ws", "ns").await;
    let planned = schedule.planned();
    let wait = after_created(&first, first.next_poll_at);
    let jitter = planned[1].mul_f64(LEARNED_JITTER) + Duration::from_millis(2);
    assert!(wait >= planned[1] && wait <= planned[1] + jitter, "{wait:?} vs {planned:?}");
    assert!(planned[1] > Duration::from_secs(5), "nothing finished early, so nothing is asked early: {planned:?}");
    let note = first.schedule_note.clone().unwrap_or_default();
    assert!(note.starts_with("learned schedule: poll 2 of "), "{note}");
    assert!(note.contains("30 finished tickets"), "{note}");
    let seen = first.running_seen_ms.expect("the running answer is remembered");
    assert!(seen < 1000, "seen running {seen} ms after the enqueue");

    // A restart: new parts on the same file learn the same schedule from the same rows, and the
    // ticket's next poll follows it.
    driven.stop().await;
    let restarted = env.driven(default_schedule).await;
    assert_eq!(learned(&restarted.store, "ws", "ns").await, schedule);
    let second = polled(&restarted, &env, "new-1", 2).await;
    let wait = after_created(&second, second.next_poll_at);
    assert!(wait >= planned[2] && wait <= planned[2] + jitter, "{wait:?} vs {planned:?}");
    assert!(second.schedule_note.unwrap_or_default().starts_with("learned schedule: poll 3 of "));

    let shown = env.cli(&["show", "new-1"]);
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    let why = shown.stdout.lines().find(|line| line.starts_with("next_poll_why")).unwrap_or_default();
    assert!(why.contains("learned schedule: poll 3 of"), "{}", shown.stdout);

    restarted.settle().await;
    let done = env.ticket("new-1").await;
    assert_eq!((done.polls, done.schedule_note), (3, None), "the note goes with the final state");
    let samples = restarted.store.recent_run_samples("ws", "ns", TicketKind::Deploy, MAX_SAMPLES).await.unwrap();
    assert_eq!(samples.len(), 31, "the finished ticket joins the history");
    restarted.stop().await;
}

#[tokio::test]
async fn without_history_elsewhere_or_with_adaptive_off_the_backoff_places_the_polls() {
    let running = vec![Step::status("EXECUTING"), Step::finished_ok()];
    let env = TestEnv::with_scenario(Scenario::default().with_prefix("t-", running)).await;
    let driven = env.driven(default_schedule).await;
    env.execute_sql(&finished_history("ws", "ns", 30)).await;
    // Four finished tickets are not enough; another namespace's history does not count.
    env.execute_sql(&finished_history("ws", "few", 4).replace("done-", "few-")).await;
    env.insert("t-few", "few", "ws").await;
    env.insert("t-other", "other", "ws").await;
    for ticket_id in ["t-few", "t-other"] {
        let ticket = polled(&driven, &env, ticket_id, 1).await;
        let note = ticket.schedule_note.clone().unwrap_or_default();
        assert!(note.contains("fewer than 5 finished tickets"), "{ticket_id}: {note}");
        let wait = after_created(&ticket, ticket.next_poll_at);
        assert!(
            wait <= Duration::from_secs(2) + Duration::from_millis(50),
            "{ticket_id}: the backoff's first step: {wait:?}"
        );
    }
    driven.stop().await;

    let off = env
        .driven(|config| {
            default_schedule(config);
            config.poll.adaptive = false;
        })
        .await;
    env.insert("t-off", "ns", "ws").await;
    let ticket = polled(&off, &env, "t-off", 1).await;
    assert!(ticket.schedule_note.clone().unwrap_or_default().contains("poll.adaptive is off"));
    assert!(after_created(&ticket, ticket.next_poll_at) <= Duration::from_secs(2) + Duration::from_millis(50));
    off.stop().await;
}
