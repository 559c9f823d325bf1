//! Running as a service: systemd notifications and the watchdog (the real binary talking to a
//! datagram socket the test owns), graceful stop and restart, `/healthz`, `/readyz` and
//! `/metrics` (parsed with a Prometheus text parser), retention (what it deletes, and that its
//! calendar survives the process being stopped), and `check-config`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flink_ticketd::clock::SystemClock;
use flink_ticketd::domain::TicketState;
use flink_ticketd::metrics::Metrics;
use flink_ticketd::retention::{self, Retention};
use flink_ticketd::service::{self, Liveness, Notice, Supervisor};
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::harness::{BinaryDaemon, HANG, TestEnv, WebhookSink, eventually, quote};

const SIGTERM: i32 = 15;
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

const WEBHOOK_SECRET: &str = "whsec_aW50ZWdyYXRpb24tdGVzdC1zZWNyZXQtbnVtYmVyLTE=";

/// `slow-` tickets hold their first poll for 4 s, then finish; `quick-` ones finish on the
/// second poll; `broken-` ones fail.
const SCENARIO: &str = r#"
[[tickets]]
prefix = "slow-"
steps = [{ status = "EXECUTING", delay_ms = 4000 }, { status = "FINISHED", success = true }]

[[tickets]]
prefix = "quick-"
steps = [{ status = "EXECUTING" }, { status = "FINISHED", success = true }]

[[tickets]]
prefix = "broken-"
steps = [{ status = "FAILED" }]
"#;

/// A datagram socket in the test's temp dir, standing in for systemd's notification socket;
/// every datagram it receives goes into the returned channel with the instant it arrived.
fn notify_socket(env: &TestEnv) -> (String, mpsc::UnboundedReceiver<(String, Instant)>) {
    let path = env.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("the notify socket binds");
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buffer = vec![0_u8; 4096];
        while let Ok(length) = socket.recv(&mut buffer).await {
            let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
            for line in text.lines() {
                if sender.send((line.to_owned(), Instant::now())).is_err() {
                    return;
                }
            }
        }
    });
    (path.display().to_string(), receiver)
}

/// The next notification, skipping keep-alives unless `wanted` is one.
async fn next_notice(receiver: &mut mpsc::UnboundedReceiver<(String, Instant)>, wanted: &str) -> Instant {
    tokio::time::timeout(HANG, async {
        loop {
            let (line, at) = receiver.recv().await.expect("the notify socket is open");
            if line == wanted {
                return at;
            }
            assert!(line == "WATCHDOG=1" || line == "READY=1", "unexpected notification {line:?}");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {wanted} in time"))
}

async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{address}{path}")).await.expect("the daemon answers HTTP");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// The samples of `/metrics`, by metric name and sorted labels.
async fn scrape(address: std::net::SocketAddr) -> HashMap<String, f64> {
    let (status, text) = get(address, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|sample| {
            let mut labels: Vec<String> = sample.labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
            labels.sort();
            let value = match sample.value {
                prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Untyped(value) => value,
                prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |bucket| bucket.count),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            (format!("{}{{{}}}", sample.metric, labels.join(",")), value)
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples.get(key).unwrap_or_else(|| panic!("{key} missing from {:#?}", sorted(samples)))
}

fn sorted(samples: &HashMap<String, f64>) -> Vec<(&String, &f64)> {
    let mut all: Vec<_> = samples.iter().collect();
    all.sort_by(|left, right| left.0.cmp(right.0));
    all
}

/// Marks a ticket finished `days_ago` days ago, as the daemon would have.
async fn finish_ticket(env: &TestEnv, ticket_id: &str, state: &str, days_ago: u32) {
    env.execute_sql(&format!(
        "UPDATE tickets SET state = {state}, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{days_ago} days')
         WHERE ticket_id = {id}",
        state = quote(state),
        id = quote(ticket_id),
    ))
    .await;
}

/// Adds a webhook delivery in `state` for a ticket.
async fn add_delivery(env: &TestEnv, ticket_id: &str, state: &str) {
    env.execute_sql(&format!(
        "INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload, state)
         SELECT id, 'http://127.0.0.1:9/hook', 'msg_' || id || '_' || {state}, 'ticket.succeeded', '{{}}', {state}
         FROM tickets WHERE ticket_id = {id}",
        state = quote(state),
        id = quote(ticket_id),
    ))
    .await;
}

async fn ticket_ids(env: &TestEnv) -> Vec<String> {
    let store = env.store().await;
    let mut ids: Vec<String> = store
        .list_tickets(None, None, 10_000)
        .await
        .expect("tickets are read")
        .into_iter()
        .map(|row| row.key.ticket_id)
        .collect();
    store.close().await;
    ids.sort();
    ids
}

#[tokio::test]
async fn systemd_sees_ready_keep_alives_and_stopping_and_a_restart_polls_the_interrupted_tickets_at_once() {
    let env = TestEnv::new(SCENARIO).await;
    let (socket, mut notices) = notify_socket(&env);
    env.store().await.close().await;
    for ticket_id in ["slow-1", "slow-2"] {
        env.insert(ticket_id, "ns", "ws").await;
    }
    let grace = Duration::from_secs(1);
    let settings = [
        ("FLINK_TICKETD_HTTP__LISTEN", "127.0.0.1:0"),
        ("FLINK_TICKETD_SHUTDOWN__GRACE", "1s"),
        // Far longer than the test: the restart must not be waiting for leases to lapse.
        ("FLINK_TICKETD_POLL__LEASE", "120s"),
        ("FLINK_TICKETD_FLINK__REQUEST_TIMEOUT", "10s"),
        ("FLINK_TICKETD_FLINK__MAX_IN_FLIGHT", "2"),
    ];
    let mut env_vars = settings.to_vec();
    env_vars.extend([("NOTIFY_SOCKET", socket.as_str()), ("WATCHDOG_USEC", "400000")]);
    let daemon = env.spawn_binary(&env_vars);

    next_notice(&mut notices, "READY=1").await;
    let address = daemon.http_address().await;
    tokio::net::TcpStream::connect(address).await.expect("the HTTP port accepts connections once READY=1 is sent");
    assert_eq!(get(address, "/healthz").await.0, 200);

    // Both slots are busy with polls the API holds for 4 s, far past the 400 ms watchdog: the
    // loops are waiting, not stuck, so keep-alives go on.
    let store = env.store().await;
    eventually("both slow tickets to be in flight", || async {
        let rows = store.list_tickets(None, None, 10).await.expect("tickets are read");
        rows.iter().all(|row| row.lease_owner.is_some()).then_some(())
    })
    .await;
    let first = next_notice(&mut notices, "WATCHDOG=1").await;
    let mut keep_alives = 1;
    while keep_alives < 6 {
        next_notice(&mut notices, "WATCHDOG=1").await;
        keep_alives += 1;
    }
    assert!(first.elapsed() < Duration::from_millis(3000), "keep-alives came too slowly: {:?}", first.elapsed());
    let rows = store.list_tickets(None, None, 10).await.expect("tickets are read");
    assert!(rows.iter().all(|row| row.lease_owner.is_some() && row.polls == 0), "still in flight: {rows:#?}");

    let stop_sent = Instant::now();
    daemon.signal(SIGTERM);
    next_notice(&mut notices, "STOPPING=1").await;
    let log_path = daemon.log.clone();
    let code = tokio::task::spawn_blocking(move || daemon.wait()).await.expect("the wait joins");
    let took = stop_sent.elapsed();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(code, Some(0), "{log}");
    assert!(took < grace + Duration::from_millis(1500), "stopping took {took:?}\n{log}");
    assert!(log.contains("unfinished tickets handed back"), "{log}");

    let rows = store.list_tickets(None, None, 10).await.expect("tickets are read");
    assert!(rows.iter().all(|row| row.state == TicketState::Pending && row.lease_owner.is_none()), "{rows:#?}");

    let restarted_at = Instant::now();
    let restarted = env.spawn_binary(&settings);
    for ticket_id in ["slow-1", "slow-2"] {
        let row = env.wait_final(ticket_id).await;
        assert_eq!(row.state, TicketState::Succeeded);
    }
    assert!(
        restarted_at.elapsed() < Duration::from_secs(15),
        "the restart waited {:?}: it should not wait for the 120 s leases",
        restarted_at.elapsed()
    );
    store.close().await;
    drop(restarted);
}

#[tokio::test]
async fn keep_alives_stop_while_a_loop_makes_no_progress_and_resume_when_it_moves_again() {
    let liveness = Arc::new(Liveness::new(Duration::from_millis(100)));
    let poll = Arc::new(AtomicU64::new(0));
    let delivery = Arc::new(AtomicU64::new(0));
    liveness.watch("poll", Arc::clone(&poll));
    liveness.watch("delivery", Arc::clone(&delivery));
    let (sender, mut notices) = mpsc::unbounded_channel();
    let supervisor = Supervisor::new(Some(Duration::from_millis(200)), move |notice| {
        let _ = sender.send(notice);
    });
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(service::keep_alive(Arc::clone(&liveness), supervisor, shutdown.clone()));

    // Both loops turn: keep-alives flow.
    let delivery_turns = CancellationToken::new();
    let turning = |counter: Arc<AtomicU64>, stop: CancellationToken| {
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let poll_turns = CancellationToken::new();
    turning(Arc::clone(&poll), poll_turns.clone());
    turning(Arc::clone(&delivery), delivery_turns.clone());
    for _ in 0..3 {
        assert_eq!(tokio::time::timeout(HANG, notices.recv()).await.unwrap(), Some(Notice::Watchdog));
    }

    // The delivery loop freezes: once the verdict says so, no keep-alive is sent.
    delivery_turns.cancel();
    eventually("the frozen loop to be reported", || async {
        (liveness.verdict().stuck == vec!["delivery"]).then_some(())
    })
    .await;
    while notices.try_recv().is_ok() {}
    let silence = tokio::time::timeout(Duration::from_millis(400), notices.recv()).await;
    assert!(silence.is_err(), "a keep-alive was sent while a loop was frozen: {silence:?}");

    // It turns again: keep-alives resume.
    turning(Arc::clone(&delivery), CancellationToken::new());
    assert_eq!(tokio::time::timeout(HANG, notices.recv()).await.unwrap(), Some(Notice::Watchdog));
    shutdown.cancel();
    poll_turns.cancel();
    watcher.await.expect("the watcher stops");
}

#[tokio::test]
async fn a_slow_api_with_every_slot_busy_keeps_the_keep_alives_going_in_a_running_daemon() {
    let env = TestEnv::new(SCENARIO).await;
    let (sender, mut notices) = mpsc::unbounded_channel();
    let supervisor = Supervisor::new(Some(Duration::from_millis(400)), move |notice| {
        let _ = sender.send((notice, Instant::now()));
    });
    let mut config = env.config(|config| {
        config.flink.max_in_flight = 1;
        config.shutdown_grace = Duration::from_millis(200);
    });
    config.poll.lease = Duration::from_secs(30);
    config.flink.client.request_timeout = Duration::from_secs(10);
    env.store().await.close().await;
    let shutdown = CancellationToken::new();
    let daemon =
        tokio::spawn(flink_ticketd::run_supervised(config, Arc::new(SystemClock), shutdown.clone(), supervisor));
    assert_eq!(
        tokio::time::timeout(HANG, notices.recv()).await.unwrap().map(|(notice, _)| notice),
        Some(Notice::Ready)
    );
    // One slot; two tickets whose first poll takes 4 s: one in flight, one waiting for the slot.
    env.insert("slow-a", "ns", "ws").await;
    env.insert("slow-b", "ns", "ws").await;
    let store = env.store().await;
    eventually("a slow ticket to be in flight", || async {
        let rows = store.list_tickets(None, None, 10).await.expect("tickets are read");
        rows.iter().any(|row| row.lease_owner.is_some()).then_some(())
    })
    .await;
    while notices.try_recv().is_ok() {}
    let watched = Instant::now();
    let mut keep_alives = 0;
    while watched.elapsed() < Duration::from_millis(1200) {
        if let Ok(Some((Notice::Watchdog, _))) = tokio::time::timeout(Duration::from_millis(300), notices.recv()).await
        {
            keep_alives += 1;
        }
    }
    let rows = store.list_tickets(None, None, 10).await.expect("tickets are read");
    assert!(rows.iter().all(|row| row.polls == 0), "the first polls were still in flight: {rows:#?}");
    // A keep-alive is due every 50 ms; even a loaded machine sends several in 1.2 s.
    assert!(keep_alives >= 5, "only {keep_alives} keep-alives while the API was slow");
    shutdown.cancel();
    tokio::time::timeout(HANG, daemon).await.expect("the daemon stops").expect("joins").expect("run returns Ok");
    store.close().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_as_tickets_finish() {
    let env = TestEnv::new(SCENARIO).await;
    let mut sink = WebhookSink::accepting().await;
    let webhook = format!("[webhook]\nurls = [{:?}]\nsecret = {WEBHOOK_SECRET:?}\nschedule = [\"10ms\"]\n", sink.url);
    env.store().await.close().await;
    let daemon = env.spawn_binary_with(
        &webhook,
        &[
            ("FLINK_TICKETD_HTTP__LISTEN", "127.0.0.1:0"),
            ("FLINK_TICKETD_FLINK__MAX_IN_FLIGHT", "1"),
            ("FLINK_TICKETD_FLINK__REQUEST_TIMEOUT", "10s"),
            ("FLINK_TICKETD_POLL__LEASE", "30s"),
        ],
    );
    let address = daemon.http_address().await;

    let (status, body) = get(address, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("/readyz is JSON");
    assert_eq!(ready["ready"], true, "{ready}");

    let before = scrape(address).await;
    assert_eq!(sample(&before, "flink_ticketd_tickets{state=succeeded}"), 0.0);
    assert_eq!(sample(&before, "flink_ticketd_tickets{state=pending}"), 0.0);
    assert_eq!(sample(&before, "flink_ticketd_queue_lag_seconds{}"), 0.0);
    assert_eq!(sample(&before, "flink_ticketd_polling_paused{}"), 0.0);
    assert_eq!(sample(&before, "flink_ticketd_api_request_duration_seconds_count{}"), 0.0);

    // The only slot is busy with a slow poll; a ticket due 10 s ago waits behind it: queue lag.
    env.insert("slow-m", "ns", "ws").await;
    let store = env.store().await;
    eventually("the slow ticket to be in flight", || async {
        let rows = store.list_tickets(None, None, 10).await.expect("tickets are read");
        rows.iter().any(|row| row.lease_owner.is_some()).then_some(())
    })
    .await;
    env.execute_sql(
        "INSERT INTO tickets (ticket_id, namespace, workspace, next_poll_at)
         VALUES ('quick-m', 'ns', 'ws', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-10 seconds'))",
    )
    .await;
    let waiting = scrape(address).await;
    assert!(sample(&waiting, "flink_ticketd_queue_lag_seconds{}") >= 10.0, "{:#?}", sorted(&waiting));
    assert_eq!(sample(&waiting, "flink_ticketd_tickets{state=pending}"), 2.0);

    env.insert("broken-m", "ns", "ws").await;
    env.wait_all_final().await;
    for _ in 0..3 {
        sink.next().await;
    }
    let after = eventually("three delivered webhooks to be counted", || async {
        let samples = scrape(address).await;
        (samples.get("flink_ticketd_webhook_deliveries_total{outcome=delivered}") == Some(&3.0)).then_some(samples)
    })
    .await;
    assert_eq!(sample(&after, "flink_ticketd_tickets{state=succeeded}"), 2.0);
    assert_eq!(sample(&after, "flink_ticketd_tickets{state=failed}"), 1.0);
    assert_eq!(sample(&after, "flink_ticketd_tickets{state=pending}"), 0.0);
    assert_eq!(sample(&after, "flink_ticketd_tickets_finished_total{kind=deploy,state=succeeded}"), 2.0);
    assert_eq!(sample(&after, "flink_ticketd_polls_total{kind=deploy,outcome=executing}"), 2.0);
    assert_eq!(sample(&after, "flink_ticketd_polls_total{kind=deploy,outcome=finished}"), 2.0);
    assert_eq!(sample(&after, "flink_ticketd_polls_total{kind=deploy,outcome=failed}"), 1.0);
    assert_eq!(sample(&after, "flink_ticketd_api_request_duration_seconds_count{}"), 5.0);
    assert!(sample(&after, "flink_ticketd_api_request_duration_seconds_sum{}") >= 4.0, "the slow poll took 4 s");
    assert_eq!(sample(&after, "flink_ticketd_rate_limit_wait_seconds_count{}"), 5.0);
    assert_eq!(sample(&after, "flink_ticketd_queue_lag_seconds{}"), 0.0);
    assert_eq!(sample(&after, "flink_ticketd_polling_paused{}"), 0.0);
    store.close().await;
    drop(daemon);
}

#[tokio::test]
async fn readyz_is_503_with_the_reason_while_the_api_rejects_our_credentials() {
    let env = TestEnv::new(SCENARIO).await;
    env.store().await.close().await;
    let daemon = env.spawn_binary(&[
        ("FLINK_TICKETD_HTTP__LISTEN", "127.0.0.1:0"),
        ("FLINK_TICKETD_FLINK__ACCESS_KEY_SECRET", "not-the-secret"),
    ]);
    let address = daemon.http_address().await;
    env.insert("quick-r", "ns", "ws").await;
    let body = eventually("/readyz to turn 503", || async {
        let (status, body) = get(address, "/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    let ready: serde_json::Value = serde_json::from_str(&body).expect("/readyz is JSON");
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["checks"]["polling_paused"], true);
    assert_eq!(ready["checks"]["database"], true);
    assert!(ready["reasons"][0].as_str().unwrap().contains("polling paused"), "{ready}");
    assert!(!body.contains("not-the-secret"));
    assert_eq!(sample(&scrape(address).await, "flink_ticketd_polling_paused{}"), 1.0);
    assert_eq!(get(address, "/healthz").await.0, 200, "alive, though not ready");
}

#[tokio::test]
async fn a_taken_http_port_stops_the_start_with_a_message_naming_it() {
    let env = TestEnv::new(SCENARIO).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = taken.local_addr().expect("its address").to_string();
    let daemon = env.spawn_binary(&[("FLINK_TICKETD_HTTP__LISTEN", address.as_str())]);
    let log_path = daemon.log.clone();
    let code = tokio::task::spawn_blocking(move || daemon.wait()).await.expect("the wait joins");
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(&format!("binding http.listen {address}")), "{log}");
}

#[tokio::test]
async fn retention_deletes_old_finished_tickets_with_their_deliveries_and_nothing_else() {
    let env = TestEnv::new(SCENARIO).await;
    let store = env.store().await;
    for ticket_id in ["old-done", "old-cancelled", "old-waiting-webhook", "recent-done", "old-pending"] {
        env.insert(ticket_id, "ns", "ws").await;
    }
    finish_ticket(&env, "old-done", "succeeded", 40).await;
    add_delivery(&env, "old-done", "delivered").await;
    add_delivery(&env, "old-done", "dead").await;
    finish_ticket(&env, "old-cancelled", "cancelled", 40).await;
    finish_ticket(&env, "old-waiting-webhook", "failed", 40).await;
    add_delivery(&env, "old-waiting-webhook", "pending").await;
    add_delivery(&env, "old-waiting-webhook", "delivered").await;
    finish_ticket(&env, "recent-done", "succeeded", 1).await;
    add_delivery(&env, "recent-done", "delivered").await;
    env.execute_sql("UPDATE tickets SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-40 days') WHERE ticket_id = 'old-pending'").await;
    // More old finished tickets than one batch holds.
    env.execute_sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1200)
         INSERT INTO tickets (ticket_id, namespace, workspace, state, finished_at)
         SELECT 'bulk-' || i, 'ns', 'ws', 'succeeded', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-31 days') FROM n",
    )
    .await;

    let job = Retention {
        store: store.clone(),
        clock: Arc::new(SystemClock),
        keep: Duration::from_secs(30 * 86_400),
        schedule: retention::parse_schedule("0 17 3 * * *").expect("a schedule"),
        metrics: Arc::new(Metrics::new()),
        log: Arc::default(),
    };
    let report = job.run_once(&CancellationToken::new()).await.expect("retention runs");
    assert_eq!(report.tickets, 1202, "{report:?}");
    assert_eq!(report.deliveries, 2, "{report:?}");
    assert_eq!(report.batches, 3, "500 tickets per transaction: {report:?}");
    assert_eq!(ticket_ids(&env).await, ["old-pending", "old-waiting-webhook", "recent-done"]);
    let deliveries = store.list_deliveries(None, 100).await.expect("deliveries are read");
    let mut states: Vec<&str> = deliveries.iter().map(|delivery| delivery.state.as_str()).collect();
    states.sort_unstable();
    assert_eq!(states, ["delivered", "delivered", "pending"], "{deliveries:#?}");

    // Once its last delivery is settled, the old ticket goes too.
    env.execute_sql("UPDATE webhook_deliveries SET state = 'dead' WHERE state = 'pending'").await;
    let report = job.run_once(&CancellationToken::new()).await.expect("retention runs");
    assert_eq!((report.tickets, report.deliveries), (1, 2));
    assert_eq!(ticket_ids(&env).await, ["old-pending", "recent-done"]);
    store.close().await;
}

#[tokio::test]
async fn the_retention_job_keeps_firing_after_the_process_was_stopped_for_a_while() {
    let env = TestEnv::new(SCENARIO).await;
    env.store().await.close().await;
    let daemon = env
        .spawn_binary(&[("FLINK_TICKETD_RETENTION__SCHEDULE", "* * * * * *"), ("FLINK_TICKETD_RETENTION__KEEP", "1h")]);
    let deleted = |ticket_id: &'static str| {
        let env = &env;
        async move {
            env.insert(ticket_id, "ns", "ws").await;
            finish_ticket(env, ticket_id, "succeeded", 2).await;
            eventually(&format!("{ticket_id} to be deleted by retention"), || async {
                env.tickets(ticket_id).await.is_empty().then_some(())
            })
            .await;
        }
    };
    deleted("before-stall").await;

    daemon.signal(SIGSTOP);
    // The stall itself: the process stays stopped across several scheduled runs.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    daemon.signal(SIGCONT);

    deleted("after-stall-1").await;
    deleted("after-stall-2").await;
    deleted("after-stall-3").await;
    // A run logs its end after its deletions commit: wait for the line rather than race it.
    eventually("four retention runs to be logged", || async {
        (daemon_log_count(&daemon, "retention run finished") >= 4).then_some(())
    })
    .await;
}

fn daemon_log_count(daemon: &BinaryDaemon, needle: &str) -> usize {
    daemon.log_text().lines().filter(|line| line.contains(needle)).count()
}

#[tokio::test]
async fn check_config_reports_every_problem_at_once_and_never_a_secret() {
    let env = TestEnv::new(SCENARIO).await;
    let config = env.dir.path().join("broken.toml");
    std::fs::write(
        &config,
        r#"
[flink]
endpoint = "ftp://flink.example.com"
ca_file = "/nonexistent/ca.pem"

[webhook]
urls = ["https://hooks.example.com/flink", "not a url"]
secret = "whsec_c2VjcmV0LXNlY3JldA=="

[retention]
schedule = "0 61 3 * * *"
keep = "2 weeks"
"#,
    )
    .expect("the config is written");
    let output = env.cli_with(&config, &["check-config"], &[]);
    assert_eq!(output.code, Some(2), "{}\n{}", output.stdout, output.stderr);
    for problem in [
        "flink.endpoint",
        "flink.ca_file: cannot read /nonexistent/ca.pem",
        "webhook.urls[1]",
        "webhook.secret[0]: decodes to 13 bytes",
        "retention.schedule: \"0 61 3 * * *\" is not a cron expression",
        "retention.keep",
        "credentials:",
    ] {
        assert!(output.stderr.contains(problem), "{problem:?} missing from:\n{}", output.stderr);
    }
    assert!(!output.stderr.contains("c2VjcmV0LXNlY3JldA") && !output.stdout.contains("c2VjcmV0LXNlY3JldA"));

    let secret_file = env.dir.path().join("missing-secret");
    let config = env.dir.path().join("missing-file.toml");
    std::fs::write(&config, format!("[flink]\naccess_key_id = \"AKID\"\naccess_key_secret_file = {secret_file:?}\n"))
        .expect("the config is written");
    let output = env.cli_with(&config, &["check-config"], &[]);
    assert_eq!(output.code, Some(2));
    assert!(output.stderr.contains("flink.access_key_secret_file: cannot read secret file"), "{}", output.stderr);
}
