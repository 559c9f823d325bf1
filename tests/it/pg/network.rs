//! Daemon binaries whose PostgreSQL traffic goes through the fault proxy: a half-open
//! partition longer than the lease, a connection cut right after `COMMIT` is sent, a real
//! failover to a promoted standby, a listener that was down while rows arrived; and a standby,
//! refused at connect until it is promoted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::Connection as _;

use super::cluster::{self, Cluster};
use super::fleet::{Fleet, MAX_CONNECTIONS, alive, from_micros, healthz, key, log_lines, readyz, sessions, wait_ready};
use super::proxy::Proxy;
use super::{database, server_address};
use crate::harness::{HANG, WebhookSink, eventually};

const SECRET: &str = "whsec_bmV0d29yay1mYXVsdC13ZWJob29rLXNlY3JldC0xMjM0NTY=";

/// `[webhook]` for the given receivers, with quick retries.
fn webhook(sinks: &[&WebhookSink]) -> String {
    let urls: Vec<String> = sinks.iter().map(|sink| format!("{:?}", sink.url)).collect();
    format!(
        "[webhook]\nurls = [{}]\nsecret = {SECRET:?}\nschedule = [\"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\"]\n\
         timeout = \"1s\"\nlease = \"2s\"\nmax_in_flight = 8\n",
        urls.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_longer_than_the_lease_neither_hangs_nor_stops_a_daemon_and_it_recovers_cleanly() {
    let Some(database) = database().await else { return };
    const LEASE: Duration = Duration::from_secs(2);
    let scenario = r#"
[[tickets]]
prefix = "p-"
steps = [{ status = "EXECUTING", delay_ms = 10 }, { status = "EXECUTING", delay_ms = 10 }, { status = "FINISHED", success = true }]
"#;
    let fleet = Fleet::new(database.url(), scenario, 2).await;
    let proxy = Proxy::start(server_address(&database)).await;
    let vars = [("FLINK_TICKETD_POLL__LEASE", "2s")];
    let mut cut_off = fleet.spawn(0, &proxy.url_for(database.url()), "", &vars);
    let address = wait_ready(&cut_off).await;
    fleet.insert("p-", 1, 60).await;
    eventually("the daemon behind the proxy to be at work", || async {
        let polled = fleet.env.sim.requests().iter().filter(|request| request.access_key_id == Some(key(0))).count();
        (polled >= 5).then_some(())
    })
    .await;
    // The other daemon starts once the first has tickets in hand: started together, either may
    // claim all 60 at once, and the first would then have nothing to be cut off from.
    let other = fleet.spawn(1, database.url(), "", &vars);
    wait_ready(&other).await;

    proxy.blackhole();
    let partitioned = Instant::now();
    eventually("/readyz to say not ready", || async { (readyz(address).await == Some(503)).then_some(()) }).await;
    assert_eq!(healthz(address).await, Some(200), "the cut-off daemon still answers: it does not hang");
    // The other daemon finishes everything, the cut-off daemon's leased tickets once they lapse.
    fleet.wait_settled(Duration::from_secs(60), 0).await;
    // The scenario is a partition longer than the lease; this is its length, not a synchronisation.
    eventually("the partition to outlast the lease", || async { (partitioned.elapsed() > LEASE * 2).then_some(()) })
        .await;
    assert!(alive(&mut cut_off), "a partition is not a reason to exit");
    assert_eq!(readyz(address).await, Some(503), "still not ready while cut off");

    proxy.forward();
    eventually("/readyz to say ready again", || async { (readyz(address).await == Some(200)).then_some(()) }).await;
    other.signal(15);
    assert_eq!(other.wait(), Some(0));
    fleet.insert("q-", 1, 10).await;
    fleet.wait_settled(Duration::from_secs(60), 0).await;
    let recovered: HashSet<String> = fleet
        .env
        .sim
        .requests()
        .into_iter()
        .filter(|request| request.ticket_id.as_deref().is_some_and(|id| id.starts_with("q-")))
        .filter_map(|request| request.access_key_id)
        .collect();
    assert_eq!(recovered, HashSet::from([key(0)]), "the recovered daemon does the new work");
    assert!(fleet.rows().await.iter().all(|row| row.state == "succeeded"));

    // Nothing was left behind: no session holds a transaction open, and the daemon's pool is
    // within its size (database.max_connections) on the server and at the proxy.
    let started = Instant::now();
    let left = loop {
        let sessions = sessions(&database).await;
        let open_transactions = sessions.keys().filter(|state| state.starts_with("idle in transaction")).count();
        let total: i64 = sessions.values().sum();
        let through_proxy = i64::try_from(proxy.open()).expect("small");
        if open_transactions == 0 && total <= MAX_CONNECTIONS && through_proxy <= MAX_CONNECTIONS {
            break sessions;
        }
        assert!(
            started.elapsed() < HANG,
            "sessions left after the partition: {sessions:?}, {through_proxy} connections through the proxy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("after the partition: sessions {left:?}, proxy connections {}", proxy.open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_yields_one_outcome_and_one_set_of_deliveries() {
    let Some(database) = database().await else { return };
    let scenario = r#"
[[tickets]]
prefix = "uc-"
steps = [{ status = "FINISHED", success = true }]
"#;
    let fleet = Fleet::new(database.url(), scenario, 1).await;
    let proxy = Proxy::start(server_address(&database)).await;
    let mut sinks = [WebhookSink::accepting().await, WebhookSink::accepting().await];
    let daemon = fleet.spawn(0, &proxy.url_for(database.url()), &webhook(&[&sinks[0], &sinks[1]]), &[]);
    wait_ready(&daemon).await;
    // The transaction that writes the outcome writes its deliveries too.
    proxy.cut_after_commit_of("webhook_deliveries");
    fleet.execute("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('uc-1', 'ns', 'ws')").await;
    fleet.wait_settled(Duration::from_secs(60), 2).await;

    assert_eq!(proxy.commits_cut(), 1, "the outcome's COMMIT was cut before its answer arrived");
    let rows = fleet.rows().await;
    assert_eq!((rows[0].state.as_str(), rows[0].deploy_success), ("succeeded", Some(true)));
    let outbox = fleet.deliveries().await;
    assert_eq!(outbox.len(), 2, "one delivery per receiver, not two sets: {outbox:?}");
    assert_eq!(outbox[0].webhook_id, outbox[1].webhook_id, "one webhook-id for the outcome");
    for sink in &mut sinks {
        let received = sink.drain();
        assert!(!received.is_empty(), "every receiver heard the outcome");
        assert!(received.iter().all(|request| request.header("webhook-id") == outbox[0].webhook_id));
    }
    assert!(log_lines(&daemon, "panicked").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_follow_a_failover_to_a_promoted_standby_by_themselves_and_finish_every_ticket() {
    let Some(tools) = cluster::tools() else { return };
    const TICKETS: usize = 200;
    let scenario = r#"
[[tickets]]
prefix = "f-"
steps = [{ status = "EXECUTING", delay_ms = 20 }, { status = "EXECUTING", delay_ms = 20 }, { status = "EXECUTING", delay_ms = 20 }, { status = "FINISHED", success = true }]
"#;
    let primary = Cluster::primary(&tools).await;
    primary.execute("postgres", "CREATE DATABASE ticketd").await;
    let proxy = Proxy::start(primary.address()).await;
    let url = proxy.url_for(&primary.url("ticketd"));
    let fleet = Fleet::new(&primary.url("ticketd"), scenario, 2).await;
    let mut sink = WebhookSink::accepting().await;
    let vars = [("FLINK_TICKETD_POLL__LEASE", "2s")];
    let mut daemons =
        [fleet.spawn(0, &url, &webhook(&[&sink]), &vars), fleet.spawn(1, &url, &webhook(&[&sink]), &vars)];
    for daemon in &daemons {
        wait_ready(daemon).await;
    }
    let standby = primary.standby().await;
    fleet.insert("f-", 1, TICKETS).await;
    eventually("some tickets to finish before the failover", || async {
        (fleet.counts().await.get("succeeded").copied().unwrap_or(0) >= 40).then_some(())
    })
    .await;

    // The old primary turns read-only first, as a demoted primary does: open sessions answer
    // 25006 to every write. Then the standby is promoted, the old primary stopped, and the
    // address the daemons use moved to the new primary.
    primary.execute("postgres", "ALTER SYSTEM SET default_transaction_read_only = on").await;
    primary.execute("postgres", "SELECT pg_reload_conf()").await;
    let logged_before: Vec<usize> = daemons.iter().map(|daemon| daemon.log_text().lines().count()).collect();
    standby.promote().await;
    primary.stop().await;
    proxy.repoint(standby.address());
    proxy.cut();
    fleet.move_to(&standby.url("ticketd"));
    let failed_over = Utc::now();
    fleet.wait_settled(Duration::from_secs(120), i64::try_from(TICKETS).expect("small")).await;
    // New rows after the failover are noticed too (the daemons listen again).
    fleet.insert("g-", 1, 20).await;
    fleet.wait_settled(Duration::from_secs(60), i64::try_from(TICKETS + 20).expect("small")).await;

    let rows = fleet.rows().await;
    assert_eq!(rows.len(), TICKETS + 20);
    assert!(rows.iter().all(|row| row.state == "succeeded"), "every ticket finished");
    let outbox = fleet.deliveries().await;
    let ids: HashSet<&str> = outbox.iter().map(|delivery| delivery.webhook_id.as_str()).collect();
    assert_eq!((outbox.len(), ids.len()), (rows.len(), rows.len()), "one delivery and one webhook-id per outcome");
    let heard: HashSet<String> = sink
        .drain()
        .iter()
        .map(|request| request.json()["data"]["ticket_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(heard.len(), rows.len(), "every outcome announced");
    let after: Vec<DateTime<Utc>> = fleet
        .env
        .sim
        .requests()
        .into_iter()
        .filter(|request| request.started_at > failed_over)
        .map(|request| request.started_at)
        .collect();
    assert!(!after.is_empty(), "polling went on after the failover");

    // The episode is logged a few times per daemon (lost, then what failed first in each loop),
    // not once per query.
    for (index, daemon) in daemons.iter_mut().enumerate() {
        assert!(alive(daemon), "daemon {index} exited");
        let text = daemon.log_text();
        let episode: Vec<&str> = text
            .lines()
            .skip(logged_before[index])
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            // A fenced write is about one ticket whose lease lapsed meanwhile, not the database.
            .filter(|line| !line.contains("lease lost"))
            .collect();
        eprintln!("daemon {index}: {} warnings and errors during the failover:\n{}", episode.len(), episode.join("\n"));
        let lost = episode.iter().filter(|line| line.contains("database connection lost")).count();
        // Once for the demoted server and, on a slow machine, once more for the stopped one.
        assert!(lost <= 2, "daemon {index} reported the lost connection {lost} times:\n{}", episode.join("\n"));
        assert!(
            episode.len() <= 8,
            "daemon {index} logged the failover {} times:\n{}",
            episode.len(),
            episode.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_inserted_while_the_listener_is_down_are_claimed_within_a_safety_interval_of_the_reconnect() {
    let Some(database) = database().await else { return };
    // The poll loop's safety timer (flink_ticketd::poller::WAKE_INTERVAL).
    let safety = flink_ticketd::poller::WAKE_INTERVAL;
    let fleet = Fleet::new(database.url(), "", 1).await;
    let proxy = Proxy::start(server_address(&database)).await;
    let daemon = fleet.spawn(0, &proxy.url_for(database.url()), "", &[]);
    wait_ready(&daemon).await;

    // Every connection of the daemon goes, the listener's included, and new ones hang.
    proxy.blackhole();
    proxy.cut();
    fleet.insert("l-", 1, 20).await;
    let healed = Utc::now();
    proxy.forward();
    fleet.wait_settled(Duration::from_secs(60), 0).await;

    // The reconnect: when the listening session that is up now started.
    let mut admin = sqlx::PgConnection::connect(database.admin_url()).await.expect("the admin connection");
    let reconnected: Option<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM max(backend_start)) * 1e6)::bigint FROM pg_stat_activity \
         WHERE datname = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(database.name())
    .fetch_one(&mut admin)
    .await
    .expect("pg_stat_activity is read");
    admin.close().await.expect("the connection closes");
    let reference = reconnected.map(from_micros).map_or(healed, |at| at.max(healed));
    // Slack for a loaded machine, well under what waiting for another safety interval adds.
    let bound = reference + chrono::TimeDelta::from_std(safety).expect("small") + chrono::TimeDelta::milliseconds(900);
    let polls = fleet.polls_by_ticket();
    for n in 1..=20 {
        let ticket_id = format!("l-{n:06}");
        let first = polls[&ticket_id].first().expect("polled").started_at;
        assert!(first <= bound, "{ticket_id} was first polled at {first}, reconnect at {reference}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_refused_at_connect_and_taken_once_promoted() {
    let Some(tools) = cluster::tools() else { return };
    let primary = Cluster::primary(&tools).await;
    primary.execute("postgres", "CREATE DATABASE ticketd").await;
    let settings = crate::store::postgres_settings;
    flink_ticketd::store::Store::open(&settings(&primary.url("ticketd")))
        .await
        .expect("the primary opens")
        .close()
        .await;
    let standby = primary.standby().await;

    let Err(refused) = flink_ticketd::store::Store::open(&settings(&standby.url("ticketd"))).await else {
        panic!("a standby in recovery is refused");
    };
    let message = format!("{refused:#}");
    assert!(message.contains("standby") && message.contains("primary"), "{message}");

    primary.stop().await;
    standby.promote().await;
    let store =
        flink_ticketd::store::Store::open(&settings(&standby.url("ticketd"))).await.expect("promoted, it opens");
    store.insert_ticket(&crate::harness::new_ticket("after-promotion")).await.expect("it takes writes");
    store.close().await;
    standby.stop().await;
}
