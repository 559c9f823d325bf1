//! `flink-ticketd demo`: the whole flow in one process with no account and no setup. It starts
//! the built-in simulated Flink API with five sample tickets that finish in different ways, a
//! local webhook receiver that verifies every signature and prints each event, and the daemon
//! itself ([`crate::run`]) on a temporary database with a fast configuration built here. On a
//! terminal it shows live progress; piped, it prints plain lines. It ends with a summary of the
//! tickets and their deliveries and removes the database.
//!
//! [`simulate`] is `flink-ticketd simulate`: the same simulated API served alone, for trying the
//! daemon and a webhook consumer end to end.

#![expect(clippy::print_stdout, reason = "the demo's output is what it is for")]

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use figment::Figment;
use figment::providers::{Format as _, Toml};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::SystemClock;
use crate::config::{self, Config, Environment, RawConfig};
use crate::domain::{TicketKind, TicketState};
use crate::report::print_rows;
use crate::simulator::{DEMO_CREDENTIALS, Scenario, Simulator, SimulatorSettings};
use crate::store::{Delivery, DeliveryState, NewTicket, Store, Ticket};
use crate::webhook::signing;

/// The demo gives up (and fails) if its tickets are not done by then; they take about 6 s.
pub const DEMO_TIMEOUT: Duration = Duration::from_secs(45);

/// How long the never-finishing ticket is polled before it expires.
pub const DEMO_DEADLINE: &str = "5s";

/// The sample tickets: (kind, ticket ID, what it shows).
pub const DEMO_TICKETS: [(TicketKind, &str, &str); 7] = [
    (TicketKind::Deploy, "demo-deploys", "succeeds after a few polls"),
    (TicketKind::Deploy, "demo-invalid-sql", "fails SQL validation"),
    (TicketKind::Deploy, "demo-throttled", "is throttled, then succeeds"),
    (TicketKind::Deploy, "demo-unknown", "is not found"),
    (TicketKind::Deploy, "demo-never-finishes", "never finishes and expires"),
    (TicketKind::Validate, "demo-validate", "a draft's deep check finds a SQL and a config problem"),
    (TicketKind::ResourcePlan, "demo-resource-plan", "generates a resource plan for a deployment"),
];

/// The deployment the demo's resource plan is for.
const DEMO_DEPLOYMENT: &str = "737d0921-c5ac-47fc-9ba9-07a1e0b40001";

const NAMESPACE: &str = "default-namespace";
const WORKSPACE: &str = "710d6a64d8a1";

/// What the simulated API answers for the sample tickets, poll after poll.
const SCENARIO: &str = r#"
[[tickets]]
id = "demo-deploys"
steps = [
    { status = "INIT" },
    { status = "EXECUTING" },
    { status = "EXECUTING" },
    { status = "FINISHED", success = true, deployment_id = "5d0a3c1e-7b2f-4c8e-9a61-2f0c4b9d7e15" },
]

[[tickets]]
id = "demo-invalid-sql"

[[tickets.steps]]
status = "EXECUTING"

[[tickets.steps]]
status = "FINISHED"
success = false
message = "The SQL is invalid."
validation_result = "VALIDATION_RESULT_INVALID_QUERY"
errors = [{ line = 3, column = 10, end_line = 3, end_column = 15, message = "Object 'orders' not found" }]

[[tickets]]
id = "demo-throttled"
steps = [
    { error = "Throttling.User", retry_after_ms = 800 },
    { status = "EXECUTING" },
    { status = "FINISHED", success = true },
]

[[tickets]]
id = "demo-unknown"
steps = [{ not_found = true }]

[[tickets]]
id = "demo-never-finishes"
steps = [{ status = "EXECUTING" }]

[[tickets]]
kind = "validate"
id = "demo-validate"

[[tickets.steps]]
status = "EXECUTING"

[[tickets.steps]]
status = "FINISHED"
success = false
message = "draft validation failed"
validation_result = "VALIDATION_RESULT_INVALID_QUERY"
errors = [{ line = 2, column = 6, end_line = 2, end_column = 12, message = "Object 'orders' not found" }]
config_errors = [{ reason = "ENGINE_VERSION", message = "engine version vvr-4.0 is not supported" }]

[[tickets]]
kind = "resource_plan"
id = "demo-resource-plan"
steps = [
    { status = "EXECUTING", message = "generating" },
    { status = "FINISHED", plan = '{"ssgProfiles":[{"name":"default","cpu":1.0,"heap":"1 gb","offHeap":"32 mb","managed":{},"extended":{}}],"nodes":[],"edges":[],"vertices":{}}' },
]
"#;

/// Runs the demo. `shutdown` (Ctrl-C) stops it early, which is an error.
pub async fn run(shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::telemetry::init(
        "warn,flink_ticketd::poller=error,flink_ticketd::webhook=error",
        crate::telemetry::LogFormat::Text,
    );
    let started = Instant::now();
    let directory = tempfile::Builder::new()
        .prefix("flink-ticketd-demo-")
        .tempdir()
        .context("creating a temporary directory for the demo database")?;
    let services = shutdown.child_token();
    let _stop_services = services.clone().drop_guard();

    let scenario = Scenario::from_toml_str(SCENARIO).context("parsing the demo scenario")?;
    let credentials = vec![(DEMO_CREDENTIALS.0.to_owned(), DEMO_CREDENTIALS.1.to_owned())];
    let simulator = Simulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SimulatorSettings { credentials, scenario, clock_offset_secs: 0 },
        services.clone(),
    )
    .await?;

    let secret = new_secret();
    let key = crate::webhook::decode_webhook_secret(&secret).map_err(anyhow::Error::msg)?.expose().to_vec();
    let (events, mut received) = mpsc::unbounded_channel();
    let receiver = start_receiver(key, events, services.clone()).await?;

    let database = directory.path().join("demo.db");
    let mut config = demo_config(&database, &simulator.base_url(), &format!("http://{receiver}/webhook"), &secret)?;
    // The operator pages on a free loopback port (looked up just before the daemon binds it).
    config.http_listen = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .and_then(|listener| listener.local_addr())
        .ok();
    let store = Store::open(&config.database).await?;
    for (kind, ticket_id, _) in DEMO_TICKETS {
        let ticket = NewTicket {
            ticket_id: ticket_id.to_owned(),
            namespace: NAMESPACE.to_owned(),
            workspace: WORKSPACE.to_owned(),
            kind,
            deployment_id: (kind == TicketKind::ResourcePlan).then(|| DEMO_DEPLOYMENT.to_owned()),
            ..NewTicket::default()
        };
        store.insert_ticket(&ticket).await.with_context(|| format!("queueing the demo ticket {ticket_id}"))?;
    }

    let screen = Screen::new();
    screen.say(format!("flink-ticketd demo: simulated Flink API on {}", simulator.base_url()));
    screen
        .say(format!("webhook receiver on http://{receiver}/webhook, verifying signatures with a fresh whsec_ secret"));
    screen.say(format!("temporary database {}", database.display()));
    if let Some(address) = config.http_listen {
        screen.say(format!("operator pages at http://{address}/ui/ while the demo runs (metrics at /metrics)"));
    }
    for (kind, ticket_id, what) in DEMO_TICKETS {
        screen.say(format!("  queued {ticket_id:<20} {kind:<14} {what}"));
    }
    screen.say(String::new());

    let daemon_shutdown = services.child_token();
    let daemon = tokio::spawn(crate::run(config, Arc::new(SystemClock), daemon_shutdown.clone()));
    let outcome = watch(&store, &screen, &mut received, &shutdown, started).await;
    daemon_shutdown.cancel();
    let stopped = daemon.await.context("the daemon panicked")?;
    while let Ok(event) = received.try_recv() {
        screen.say(event);
    }
    screen.finish();
    outcome?;
    stopped.context("the daemon failed")?;

    let tickets = demo_tickets(&store).await?;
    let deliveries = store.list_deliveries(None, 100).await.context("reading the webhook deliveries")?;
    store.close().await;
    print_summary(&tickets, &deliveries);
    println!(
        "\ndone in {:.1} s; the temporary database is removed. Run `flink-ticketd --help` for the real daemon.",
        started.elapsed().as_secs_f64()
    );
    drop(directory);
    Ok(())
}

/// `flink-ticketd simulate`: serves the simulated API alone on `listen`, playing `scenario`, until
/// `shutdown`. It accepts the configured access key, or [`DEMO_CREDENTIALS`] when none is set, and
/// prints how to point a daemon at it.
pub async fn simulate(
    config: &Config,
    listen: SocketAddr,
    scenario: Scenario,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use secrecy::ExposeSecret as _;

    let credentials = match &config.flink.credentials {
        Some(credentials) => {
            vec![(credentials.access_key_id.clone(), credentials.access_key_secret.expose_secret().to_owned())]
        }
        None => vec![(DEMO_CREDENTIALS.0.to_owned(), DEMO_CREDENTIALS.1.to_owned())],
    };
    let key_id = credentials[0].0.clone();
    let simulator =
        Simulator::start(listen, SimulatorSettings { credentials, scenario, clock_offset_secs: 0 }, shutdown.clone())
            .await
            .with_context(|| format!("starting the simulator on {listen}"))?;
    println!("simulated Flink API listening on {}", simulator.base_url());
    if config.flink.credentials.is_some() {
        println!("accepting requests signed with the configured access key {key_id}");
    } else {
        println!(
            "accepting requests signed with access key {} / secret {} (demo credentials; set \
             flink.access_key_id and flink.access_key_secret to use your own)",
            DEMO_CREDENTIALS.0, DEMO_CREDENTIALS.1
        );
    }
    println!("point the daemon at it with FLINK_TICKETD_FLINK__ENDPOINT={}", simulator.base_url());
    shutdown.cancelled().await;
    Ok(())
}

/// The demo's configuration: the built-in defaults with a fast schedule on top, read through
/// the same validation as a configuration file (and ignoring `FLINK_TICKETD_*` variables).
fn demo_config(database: &std::path::Path, endpoint: &str, receiver: &str, secret: &str) -> anyhow::Result<Config> {
    let overlay = format!(
        r#"
[database]
path = {database:?}

[flink]
endpoint = {endpoint:?}
access_key_id = {key_id:?}
access_key_secret = {key_secret:?}
max_requests_per_second = 100.0
connect_timeout = "1s"
request_timeout = "2s"

[poll]
initial_interval = "250ms"
max_interval = "500ms"
multiplier = 1.5
deadline = {DEMO_DEADLINE:?}
lease = "10s"

[webhook]
urls = [{receiver:?}]
secret = {secret:?}
schedule = ["300ms", "1s", "2s"]
timeout = "2s"
lease = "10s"

[shutdown]
grace = "2s"

[http]
listen = ""
"#,
        database = database.display().to_string(),
        key_id = DEMO_CREDENTIALS.0,
        key_secret = DEMO_CREDENTIALS.1,
    );
    let raw: RawConfig = Figment::new()
        .merge(Toml::string(config::DEFAULTS))
        .merge(Toml::string(&overlay))
        .extract()
        .context("building the demo configuration")?;
    Ok(raw.validate(None, &Environment { var: &|_| None })?)
}

/// A fresh random Standard Webhooks secret.
fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
}

/// Where the demo's lines go: above a live progress bar on a terminal, plain lines otherwise.
struct Screen {
    bar: Option<ProgressBar>,
}

impl Screen {
    fn new() -> Screen {
        let steps = u64::try_from(DEMO_TICKETS.len() * 2).unwrap_or(u64::MAX);
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Screen { bar }
    }

    fn say(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    fn progress(&self, done: u64, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(message);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Follows the tickets and deliveries until every ticket is final and every delivery settled,
/// printing each change and each received webhook.
async fn watch(
    store: &Store,
    screen: &Screen,
    received: &mut mpsc::UnboundedReceiver<String>,
    shutdown: &CancellationToken,
    started: Instant,
) -> anyhow::Result<()> {
    let mut seen: HashMap<String, (TicketState, Option<String>)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        // A webhook can arrive before the next look at the tickets: look first, so that a
        // ticket's line comes before the webhook announcing it.
        let event = tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("the demo was interrupted"),
            Some(event) = received.recv() => Some(event),
            _ = tick.tick() => None,
        };
        if started.elapsed() > DEMO_TIMEOUT {
            anyhow::bail!("the demo tickets were not done within {} s", DEMO_TIMEOUT.as_secs());
        }
        let tickets = demo_tickets(store).await?;
        let deliveries = store.list_deliveries(None, 100).await.context("reading the webhook deliveries")?;
        for ticket in &tickets {
            let now = (ticket.state, ticket.error_code.clone());
            if seen.get(&ticket.key.ticket_id) != Some(&now) {
                if let Some(line) = describe_change(ticket) {
                    screen.say(line);
                }
                seen.insert(ticket.key.ticket_id.clone(), now);
            }
        }
        for event in event.into_iter().chain(std::iter::from_fn(|| received.try_recv().ok())) {
            screen.say(event);
        }
        let finished = tickets.iter().filter(|ticket| ticket.state.is_final()).count();
        let settled = deliveries.iter().filter(|delivery| delivery.state() != Some(DeliveryState::Pending)).count();
        let delivered = deliveries.iter().filter(|delivery| delivery.state() == Some(DeliveryState::Delivered)).count();
        screen.progress(
            u64::try_from(finished + settled).unwrap_or(u64::MAX),
            format!("tickets finished {finished}/{} · webhooks delivered {delivered}", tickets.len()),
        );
        if finished == tickets.len() && settled == deliveries.len() {
            return Ok(());
        }
    }
}

/// One line when a ticket's state or error changes.
fn describe_change(ticket: &Ticket) -> Option<String> {
    let id = &ticket.key.ticket_id;
    match (ticket.state, ticket.error_code.as_deref()) {
        (TicketState::Pending, None) => None,
        (TicketState::Pending, Some(code)) => {
            Some(format!("  {id}: the API answered {code}; the daemon backs off and polls again"))
        }
        (state, _) => Some(format!(
            "  {id}: {state} after {} poll{} — {}",
            ticket.polls,
            if ticket.polls == 1 { "" } else { "s" },
            result_of(ticket)
        )),
    }
}

/// The demo's tickets, in the order they were queued.
async fn demo_tickets(store: &Store) -> anyhow::Result<Vec<Ticket>> {
    let mut tickets = store.list_tickets(None, None, 100).await.context("reading the demo tickets")?;
    tickets.sort_by_key(|ticket| ticket.id);
    Ok(tickets)
}

/// The outcome of a ticket in a few words.
fn result_of(ticket: &Ticket) -> String {
    if !ticket.validation_errors.is_empty() || !ticket.config_errors.is_empty() {
        let issues = ticket.validation_errors.iter().map(ToString::to_string);
        return issues.chain(ticket.config_errors.iter().map(ToString::to_string)).collect::<Vec<_>>().join("; ");
    }
    if let Some(plan) = &ticket.resource_plan {
        return format!(
            "resource plan of {} bytes for deployment {}",
            plan.len(),
            ticket.deployment_id.as_deref().unwrap_or("?")
        );
    }
    match (ticket.state, &ticket.deployment_id, &ticket.error_code) {
        (TicketState::Succeeded, Some(deployment), _) => format!("deployment {deployment}"),
        (TicketState::Expired, _, _) => "no final status before the deadline".to_owned(),
        (_, _, Some(code)) => format!("{code}: {}", ticket.error_message.as_deref().unwrap_or_default()),
        _ => ticket.message.clone().unwrap_or_default(),
    }
}

fn print_summary(tickets: &[Ticket], deliveries: &[Delivery]) {
    println!("\ntickets");
    let rows: Vec<Vec<String>> = tickets
        .iter()
        .map(|ticket| {
            vec![
                ticket.key.ticket_id.clone(),
                ticket.kind.to_string(),
                ticket.state.to_string(),
                ticket.ticket_status.as_ref().map(ToString::to_string).unwrap_or_default(),
                ticket.polls.to_string(),
                result_of(ticket),
            ]
        })
        .collect();
    print_rows(&["TICKET", "KIND", "STATE", "STATUS", "POLLS", "RESULT / ERROR"], &rows);

    println!("\nwebhook deliveries");
    let names: HashMap<i64, &str> = tickets.iter().map(|ticket| (ticket.id.0, ticket.key.ticket_id.as_str())).collect();
    let mut deliveries = deliveries.to_vec();
    deliveries.sort_by_key(|delivery| delivery.id);
    let rows: Vec<Vec<String>> = deliveries
        .iter()
        .map(|delivery| {
            vec![
                delivery.id.to_string(),
                names.get(&delivery.ticket).copied().unwrap_or_default().to_owned(),
                delivery.event_type.clone(),
                delivery.state.clone(),
                delivery.attempts.to_string(),
                delivery.last_http_status.map(|status| status.to_string()).unwrap_or_default(),
                delivery.webhook_id.clone(),
            ]
        })
        .collect();
    print_rows(&["ID", "TICKET", "EVENT", "STATE", "ATTEMPTS", "HTTP", "WEBHOOK-ID"], &rows);
}

/// The receiver's state: the key it verifies with, where it reports, what it has seen.
struct Receiver {
    key: Vec<u8>,
    events: mpsc::UnboundedSender<String>,
    attempts: Mutex<HashMap<String, u32>>,
}

/// Serves `POST /webhook` on 127.0.0.1 until `shutdown`; returns the bound address.
async fn start_receiver(
    key: Vec<u8>,
    events: mpsc::UnboundedSender<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("binding the demo webhook receiver")?;
    let address = listener.local_addr().context("reading the receiver's address")?;
    let state = Arc::new(Receiver { key, events, attempts: Mutex::new(HashMap::new()) });
    let app = axum::Router::new().route("/webhook", axum::routing::post(receive)).with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::error!(error = %error, "the demo webhook receiver stopped");
        }
    });
    Ok(address)
}

/// Verifies and prints one webhook. The first attempt of the first event is refused with 503,
/// to show that the daemon retries with the same `webhook-id`.
async fn receive(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    let (webhook_id, timestamp, signature) =
        (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let Ok(timestamp) = timestamp.parse::<i64>() else {
        let _ = receiver.events.send("  ✗ receiver: a webhook without a valid webhook-timestamp, refused".to_owned());
        return StatusCode::BAD_REQUEST;
    };
    let fresh = (chrono::Utc::now().timestamp() - timestamp).abs() <= 300;
    if !fresh || !signing::verify(&receiver.key, &webhook_id, timestamp, &body, &signature) {
        let _ = receiver.events.send(format!("  ✗ receiver: {webhook_id}: signature did not verify, refused"));
        return StatusCode::UNAUTHORIZED;
    }
    let (attempt, total) = {
        let mut attempts =
            receiver.attempts.lock().expect("the receiver mutex is never poisoned: no code panics holding it");
        let total: u32 = attempts.values().sum();
        let attempt = attempts.entry(webhook_id.clone()).or_insert(0);
        *attempt += 1;
        (*attempt, total)
    };
    if total == 0 {
        let _ = receiver
            .events
            .send(format!("  ✗ receiver: answered 503 to {webhook_id} on purpose; the daemon will send it again"));
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let _ = receiver.events.send(describe_event(&webhook_id, attempt, &body));
    StatusCode::NO_CONTENT
}

/// A received event, readably.
fn describe_event(webhook_id: &str, attempt: u32, body: &[u8]) -> String {
    let Ok(event) = serde_json::from_slice::<Value>(body) else {
        return format!("  ✓ webhook {webhook_id}: signature verified, but the body is not JSON");
    };
    let data = &event["data"];
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let mut line = format!(
        "  ✓ webhook {} for {} {} (signature verified, webhook-id {webhook_id}, attempt {attempt})",
        text(&event["type"]),
        text(&data["kind"]),
        text(&data["ticket_id"]),
    );
    if let Some(plan) = data["resource_plan"].as_str() {
        line.push_str(&format!("\n      resource_plan ({} bytes, as the API sent it)", plan.len()));
    }
    if let Some(deployment) = data["deployment_id"].as_str() {
        line.push_str(&format!("\n      deployment_id {deployment}"));
    }
    if let Some(issues) = data["validation_errors"].as_array() {
        for issue in issues {
            line.push_str(&format!(
                "\n      validation error at line {} column {}: {}",
                issue["line"],
                issue["column"],
                text(&issue["message"])
            ));
        }
    }
    if let Some(issues) = data["config_errors"].as_array() {
        for issue in issues {
            line.push_str(&format!("\n      config error {}: {}", text(&issue["reason"]), text(&issue["message"])));
        }
    }
    if let Some(code) = data["error_code"].as_str() {
        line.push_str(&format!("\n      {code}: {}", text(&data["error_message"])));
    }
    line
}
