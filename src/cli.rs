//! The command line: argument parsing (clap) and the user commands that are not the daemon
//! (`enqueue`, `list`, `show`, `retry`, `cancel`, `webhooks`, `check-config`, `migrate`; the
//! submit commands `deploy`, `validate`, `resource-plan` and `hot-update` live in `submit.rs`,
//! `demo` in `crate::demo`). Command output goes to stdout; errors go to stderr as one line, and
//! the exit code says what kind of failure it was.

#![expect(clippy::print_stdout, reason = "command output is this module's job")]

pub mod submit;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock, format_instant};
use crate::config::{self, Config};
use crate::domain::{TicketKind, TicketState, TicketStatus};
use crate::redact::redact_text;
use crate::report::{delivery_when, print_delivery_table, print_rows};
use crate::store::{Delivery, DeliveryState, NewTicket, Resend, Store, Ticket};

/// Watches Alibaba Cloud Flink deploy tickets queued in SQLite and reports their outcome.
#[derive(Debug, Parser)]
#[command(name = "flink-ticketd", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: /etc/flink-ticketd/config.toml when it exists).
    #[arg(long, global = true, env = "FLINK_TICKETD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd runs this).
    Run,
    /// Queue tickets (the same as an INSERT into the tickets table).
    Enqueue {
        /// Flink namespace.
        #[arg(long)]
        namespace: String,
        /// Workspace ID.
        #[arg(long)]
        workspace: String,
        /// Extra webhook receiver for these tickets (used when webhook.allow_ticket_urls is true).
        #[arg(long, value_name = "URL")]
        webhook_url: Option<String>,
        /// Region override for these tickets.
        #[arg(long)]
        region: Option<String>,
        /// Which operation the IDs belong to: deploy, validate, resource_plan or hot_update.
        #[arg(long, default_value = "deploy", value_parser = parse_kind)]
        kind: TicketKind,
        /// Ticket IDs returned by the submit call (the jobHotUpdateId of a hot update).
        #[arg(required = true, value_name = "TICKET_ID")]
        ticket_ids: Vec<String>,
    },
    /// Deploy a draft (DeployDeploymentDraftAsync), queue the ticket it returns and print its ID.
    Deploy {
        /// Flink namespace.
        #[arg(long)]
        namespace: String,
        /// Workspace ID.
        #[arg(long)]
        workspace: String,
        /// The deployment draft to deploy.
        #[arg(long, value_name = "ID")]
        draft_id: String,
        /// Deployment target (queue) name; the workspace's default queue when absent.
        #[arg(long, value_name = "QUEUE")]
        target: Option<String>,
        /// Skip the deep validation before deploying.
        #[arg(long)]
        skip_validate: bool,
        /// Region of the workspace, instead of flink.region.
        #[arg(long)]
        region: Option<String>,
        /// Extra webhook receiver for this ticket (used when webhook.allow_ticket_urls is true).
        #[arg(long, value_name = "URL")]
        webhook_url: Option<String>,
        /// Follow the ticket to its final state: exit 0 when it succeeded, 1 otherwise. Works
        /// with or without a daemon running on the same database.
        #[arg(long)]
        wait: bool,
        /// Print the ticket as JSON (with --wait, the final row).
        #[arg(long)]
        json: bool,
    },
    /// Deep-check a draft (ValidateDeploymentDraftAsync) and queue the ticket it returns. With
    /// --wait, problems are printed to stderr as `line:column: message`, then `reason: message`.
    Validate {
        /// Where the ticket goes and how to follow it.
        #[command(flatten)]
        common: submit::Common,
        /// The deployment draft to check.
        #[arg(long, value_name = "ID")]
        draft_id: String,
        /// Deployment target (queue) to check against.
        #[arg(long, value_name = "QUEUE")]
        target: Option<String>,
    },
    /// Generate a fine-grained resource plan for a deployment (GenerateResourcePlanWithFlinkConfAsync)
    /// and queue the ticket it returns. With --wait, the plan is printed on stdout exactly as the
    /// API sent it.
    ResourcePlan {
        /// Where the ticket goes and how to follow it.
        #[command(flatten)]
        common: submit::Common,
        /// The deployment to plan for.
        #[arg(long, value_name = "ID")]
        deployment_id: String,
        /// A Flink configuration entry to plan with (repeatable), sent as a string.
        #[arg(long = "conf", value_name = "KEY=VALUE", value_parser = submit::parse_conf)]
        conf: Vec<(String, String)>,
    },
    /// Apply a dynamic update to a running job (HotUpdateJob; it takes no parameters) and queue
    /// its jobHotUpdateId.
    HotUpdate {
        /// Where the ticket goes and how to follow it.
        #[command(flatten)]
        common: submit::Common,
        /// The job instance to update.
        #[arg(long, value_name = "ID")]
        job_id: String,
    },
    /// List tickets, newest first.
    List {
        /// Only tickets in this state.
        #[arg(long, value_parser = parse_state)]
        state: Option<TicketState>,
        /// Only tickets of this kind.
        #[arg(long, value_parser = parse_kind)]
        kind: Option<TicketKind>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one ticket with its result, validation errors and webhook deliveries.
    Show {
        /// The ticket ID.
        ticket_id: String,
        /// Narrows an ambiguous ticket ID.
        #[command(flatten)]
        which: Which,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a finished ticket back to pending.
    Retry {
        /// The ticket ID.
        ticket_id: String,
        /// Narrows an ambiguous ticket ID.
        #[command(flatten)]
        which: Which,
    },
    /// Stop polling a pending ticket.
    Cancel {
        /// The ticket ID.
        ticket_id: String,
        /// Narrows an ambiguous ticket ID.
        #[command(flatten)]
        which: Which,
    },
    /// The webhook delivery log, and sending a delivery again.
    Webhooks {
        /// What to do with deliveries.
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// The whole flow on this machine with no cloud account: simulated API, local receiver,
    /// temporary database, five sample tickets; exits when they are done.
    Demo,
    /// Serve the simulated Flink API alone, to try the daemon and a webhook consumer end to end.
    Simulate {
        /// Address to listen on.
        #[arg(long, default_value = DEFAULT_SIMULATOR_LISTEN, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Scenario file (see config/simulator-example.toml); without it every ticket goes INIT,
        /// EXECUTING, FINISHED.
        #[arg(long, value_name = "FILE")]
        scenario: Option<PathBuf>,
    },
    /// Validate and print the effective configuration (secrets redacted).
    CheckConfig,
    /// Apply database migrations and exit.
    Migrate,
}

/// The `webhooks` subcommands.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List webhook deliveries, newest first.
    List {
        /// Only deliveries in this state (pending, delivered, dead).
        #[arg(long, value_parser = parse_delivery_state)]
        state: Option<DeliveryState>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery again now, with the same webhook-id and body (the running daemon sends
    /// it). It keeps its attempt count: a delivery that had used its whole schedule gets one
    /// more attempt, one stopped early by 410 resumes its schedule.
    Resend {
        /// The delivery's ID (the first column of `webhooks list`).
        delivery_id: i64,
    },
}

/// Where `simulate` listens unless told otherwise.
pub const DEFAULT_SIMULATOR_LISTEN: &str = "127.0.0.1:9188";

/// Narrows a ticket ID that exists in several workspaces, namespaces or kinds.
#[derive(Debug, Clone, clap::Args)]
pub struct Which {
    /// Kind of the ticket, when the ID alone is ambiguous.
    #[arg(long, value_parser = parse_kind)]
    pub kind: Option<TicketKind>,
    /// Workspace of the ticket, when the ID alone is ambiguous.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Namespace of the ticket, when the ID alone is ambiguous.
    #[arg(long)]
    pub namespace: Option<String>,
}

/// A failure with the exit code it should give.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or invalid configuration: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Anything else: exit 1.
    #[error(transparent)]
    Runtime(#[from] anyhow::Error),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

impl From<config::ConfigError> for CliError {
    fn from(error: config::ConfigError) -> Self {
        CliError::Usage(error.to_string())
    }
}

/// Runs the parsed command. `shutdown` is cancelled by SIGTERM/SIGINT.
pub async fn execute(cli: Cli, shutdown: CancellationToken) -> Result<(), CliError> {
    if matches!(cli.command, Command::Demo) {
        // The demo builds its own configuration and needs no file or account.
        return crate::demo::run(shutdown).await.map_err(CliError::Runtime);
    }
    let config = if matches!(cli.command, Command::CheckConfig) {
        config::check(cli.config.as_deref())?
    } else {
        config::load(cli.config.as_deref())?
    };
    if !matches!(cli.command, Command::CheckConfig) {
        crate::telemetry::init(&config.log.level, config.log.format);
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.command {
        Command::Run => crate::run(config, clock, shutdown).await.map_err(usage_if_setup_is_wrong)?,
        Command::Demo => unreachable!("handled before the configuration is loaded"),
        Command::Webhooks { command } => webhooks(&config, command, clock.as_ref()).await?,
        Command::CheckConfig => check_config(&config)?,
        Command::Simulate { listen, scenario } => {
            let scenario = match scenario {
                Some(path) => {
                    crate::simulator::Scenario::load(&path).map_err(|error| CliError::Usage(format!("{error:#}")))?
                }
                None => crate::simulator::Scenario::default(),
            };
            crate::demo::simulate(&config, listen, scenario, shutdown).await?;
        }
        Command::Migrate => {
            let store = Store::open(&config.database).await?;
            for (version, description) in store.applied_migrations().await.context("listing migrations")? {
                println!("{version} {description}");
            }
            println!("database {} is up to date", store.location());
            store.close().await;
        }
        Command::Enqueue { namespace, workspace, webhook_url, region, kind, ticket_ids } => {
            if let Some(region) = &region {
                crate::flink::endpoint::check_region(region)
                    .map_err(|error| CliError::Usage(format!("--region: {error}")))?;
            }
            let store = Store::open(&config.database).await?;
            let mut failures = 0;
            let mut database_failed = false;
            for ticket_id in ticket_ids {
                let new = NewTicket {
                    ticket_id: ticket_id.clone(),
                    namespace: namespace.clone(),
                    workspace: workspace.clone(),
                    region: region.clone(),
                    webhook_url: webhook_url.clone(),
                    deadline_at: None,
                    kind,
                    deployment_id: None,
                };
                match store.insert_ticket(&new).await {
                    Ok(ticket) => println!("queued {} (row {}, kind {})", ticket.key.ticket_id, ticket.id, ticket.kind),
                    Err(error) => {
                        failures += 1;
                        database_failed |= !crate::store::is_refusal(&error);
                        eprintln!(
                            "flink-ticketd: ticket {ticket_id:?} refused: {}",
                            crate::store::describe_refusal(&error)
                        );
                    }
                }
            }
            store.close().await;
            if failures > 0 {
                let message = format!("{failures} ticket(s) were not queued");
                // A row the database refused (a constraint) is the user's to fix; the database
                // failing (locked, read-only, full) is a runtime failure.
                return Err(if database_failed {
                    CliError::Runtime(anyhow::anyhow!(message))
                } else {
                    CliError::Usage(message)
                });
            }
        }
        Command::Deploy { namespace, workspace, draft_id, target, skip_validate, region, webhook_url, wait, json } => {
            let common = submit::Common { namespace, workspace, region, webhook_url, wait, json };
            let operation = submit::Operation::Deploy { draft_id, target, skip_validate };
            submit::run(config, clock, common, operation, shutdown).await?;
        }
        Command::Validate { common, draft_id, target } => {
            submit::run(config, clock, common, submit::Operation::Validate { draft_id, target }, shutdown).await?;
        }
        Command::ResourcePlan { common, deployment_id, conf } => {
            let operation = submit::Operation::ResourcePlan { deployment_id, conf };
            submit::run(config, clock, common, operation, shutdown).await?;
        }
        Command::HotUpdate { common, job_id } => {
            submit::run(config, clock, common, submit::Operation::HotUpdate { job_id }, shutdown).await?;
        }
        Command::List { state, kind, limit, json } => {
            let store = Store::open_read_only(&config.database).await?;
            let tickets = store.list_tickets(state, kind, limit).await.context("listing tickets")?;
            if json {
                let rows: Vec<Value> = tickets.iter().map(ticket_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows).context("serialising tickets")?);
            } else {
                print_table(&tickets);
            }
        }
        Command::Show { ticket_id, which, json } => {
            let store = Store::open_read_only(&config.database).await?;
            let ticket = find_one(&store, &ticket_id, &which).await?;
            let deliveries = store.deliveries_of_ticket(ticket.id.0).await.context("reading webhook deliveries")?;
            let events = store.ticket_events(ticket.id).await.context("reading the ticket's events")?;
            let attempts = store.webhook_attempts_of_ticket(ticket.id).await.context("reading webhook attempts")?;
            if json {
                let mut value = ticket_json(&ticket);
                value["webhook_deliveries"] = deliveries.iter().map(delivery_json).collect();
                value["events"] = serde_json::to_value(&events).context("serialising the events")?;
                value["webhook_attempts"] = serde_json::to_value(&attempts).context("serialising the attempts")?;
                println!("{}", serde_json::to_string_pretty(&value).context("serialising the ticket")?);
            } else {
                print_ticket(&ticket, &deliveries);
                crate::report::print_history(&events, &attempts);
            }
        }
        Command::Retry { ticket_id, which } => {
            let store = Store::open(&config.database).await?;
            let ticket = find_one(&store, &ticket_id, &which).await?;
            let now = clock.now();
            let deadline = now + chrono::Duration::from_std(config.poll.deadline).unwrap_or(chrono::Duration::MAX);
            if !store.retry_ticket(ticket.id, now, deadline).await.context("retrying the ticket")? {
                return Err(CliError::Usage(format!("ticket {ticket_id:?} is still pending; nothing to retry")));
            }
            println!("ticket {ticket_id} is pending again");
        }
        Command::Cancel { ticket_id, which } => {
            let store = Store::open(&config.database).await?;
            let ticket = find_one(&store, &ticket_id, &which).await?;
            if !store.cancel_ticket(ticket.id, clock.now()).await.context("cancelling the ticket")? {
                return Err(CliError::Usage(format!(
                    "ticket {ticket_id:?} is already {}; only pending tickets can be cancelled",
                    ticket.state
                )));
            }
            println!("ticket {ticket_id} cancelled");
        }
    }
    Ok(())
}

async fn webhooks(config: &Config, command: WebhooksCommand, clock: &dyn Clock) -> Result<(), CliError> {
    match command {
        WebhooksCommand::List { state, limit, json } => {
            let store = Store::open_read_only(&config.database).await?;
            let deliveries = store.list_deliveries(state, limit).await.context("listing webhook deliveries")?;
            if json {
                let rows: Vec<Value> = deliveries.iter().map(delivery_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows).context("serialising deliveries")?);
            } else {
                print_delivery_table(&deliveries);
            }
        }
        WebhooksCommand::Resend { delivery_id } => {
            let store = Store::open(&config.database).await?;
            let resent = store.resend_delivery(delivery_id, clock.now()).await.context("queueing the delivery")?;
            store.close().await;
            match resent {
                Resend::Queued(delivery) => println!(
                    "delivery {} ({}, webhook-id {}) is due now; the running daemon sends it",
                    delivery.id,
                    redact_text(&delivery.url),
                    delivery.webhook_id
                ),
                Resend::NotFound => {
                    return Err(CliError::Usage(format!(
                        "no webhook delivery {delivery_id} in {}",
                        config.database.shown()
                    )));
                }
                Resend::InFlight => {
                    return Err(CliError::Usage(format!(
                        "webhook delivery {delivery_id} is being sent right now; resend it after this attempt"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn check_config(config: &Config) -> Result<(), CliError> {
    print!("{}", config.describe());
    // Planning reads the credential files but never the network: a machine that is not an ECS
    // instance learns that ECS would be tried, without waiting for the metadata service.
    match crate::flink::credentials::plan(config.flink.credentials.as_ref(), &config.flink.credential_chain) {
        Ok(plan) => {
            println!("\n# credentials: {}", plan.describe());
            for skipped in plan.skipped() {
                println!("#   passed over: {skipped}");
            }
            Ok(())
        }
        Err(problem) => Err(CliError::Usage(format!("invalid configuration:\n  - credentials: {problem}"))),
    }
}

async fn find_one(store: &Store, ticket_id: &str, which: &Which) -> Result<Ticket, CliError> {
    let mut matches = store
        .find_tickets(ticket_id, which.kind, which.workspace.as_deref(), which.namespace.as_deref())
        .await
        .context("looking up the ticket")?;
    match matches.len() {
        0 => Err(CliError::Usage(format!("no ticket {ticket_id:?} in {}", store.location()))),
        1 => Ok(matches.remove(0)),
        _ => {
            let places: Vec<String> = matches
                .iter()
                .map(|ticket| {
                    format!(
                        "--kind {} --workspace {} --namespace {}",
                        ticket.kind, ticket.key.workspace, ticket.key.namespace
                    )
                })
                .collect();
            Err(CliError::Usage(format!(
                "ticket {ticket_id:?} exists in several places; add one of: {}",
                places.join("; ")
            )))
        }
    }
}

/// A credential chain that is set up wrongly (or not at all) is invalid configuration (exit 2);
/// anything else stays a runtime failure (exit 1).
fn usage_if_setup_is_wrong(error: anyhow::Error) -> CliError {
    match error.downcast_ref::<crate::flink::CredentialError>() {
        Some(crate::flink::CredentialError::Invalid(_)) => CliError::Usage(format!("{error:#}")),
        _ => CliError::Runtime(error),
    }
}

fn parse_state(text: &str) -> Result<TicketState, String> {
    text.parse()
}

fn parse_kind(text: &str) -> Result<TicketKind, crate::domain::UnknownKind> {
    text.parse()
}

fn parse_delivery_state(text: &str) -> Result<DeliveryState, String> {
    text.parse()
}

fn ticket_json(ticket: &Ticket) -> Value {
    let mut value = serde_json::to_value(ticket).expect("a ticket row serialises to JSON");
    if let Some(url) = &ticket.webhook_url {
        value["webhook_url"] = Value::String(redact_text(url));
    }
    if let Some(object) = value.as_object_mut() {
        for internal in ["lease_owner", "lease_until", "running_streak", "error_streak"] {
            object.remove(internal);
        }
    }
    value
}

fn delivery_json(delivery: &Delivery) -> Value {
    let mut value = serde_json::to_value(delivery).expect("a delivery row serialises to JSON");
    value["url"] = Value::String(redact_text(&delivery.url));
    if let Some(object) = value.as_object_mut() {
        object.remove("payload");
        object.remove("lease_owner");
        object.remove("lease_until");
    }
    value
}

fn print_table(tickets: &[Ticket]) {
    let rows: Vec<Vec<String>> = tickets
        .iter()
        .map(|ticket| {
            vec![
                ticket.key.ticket_id.clone(),
                ticket.kind.to_string(),
                ticket.key.workspace.clone(),
                ticket.state.to_string(),
                ticket.ticket_status.as_ref().map(ToString::to_string).unwrap_or_default(),
                ticket.polls.to_string(),
                ticket
                    .finished_at
                    .map_or_else(|| format!("next {}", format_instant(ticket.next_poll_at)), format_instant),
                ticket.error_code.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["TICKET_ID", "KIND", "WORKSPACE", "STATE", "STATUS", "POLLS", "FINISHED / NEXT POLL", "ERROR"];
    print_rows(&header, &rows);
}

fn print_ticket(ticket: &Ticket, deliveries: &[Delivery]) {
    let field = |name: &str, value: Option<&str>| {
        if let Some(value) = value.filter(|value| !value.is_empty()) {
            println!("{name:<18} {value}");
        }
    };
    let instant = |instant: Option<DateTime<Utc>>| instant.map(format_instant);
    field("ticket_id", Some(&ticket.key.ticket_id));
    field("kind", Some(ticket.kind.as_str()));
    field("namespace", Some(&ticket.key.namespace));
    field("workspace", Some(&ticket.key.workspace));
    field("region", ticket.region.as_deref());
    field("state", Some(ticket.state.as_str()));
    field("ticket_status", ticket.ticket_status.as_ref().map(TicketStatus::as_wire));
    field("deployment_id", ticket.deployment_id.as_deref());
    field("deploy_success", ticket.deploy_success.map(|success| if success { "true" } else { "false" }));
    field("message", ticket.message.as_deref());
    field("validation_result", ticket.validation_result.as_deref());
    field("error_code", ticket.error_code.as_deref());
    field("error_message", ticket.error_message.as_deref());
    field("polls", Some(&ticket.polls.to_string()));
    field("request_id", ticket.request_id.as_deref());
    field("created_at", instant(Some(ticket.created_at)).as_deref());
    field("updated_at", instant(Some(ticket.updated_at)).as_deref());
    if ticket.is_pending() {
        field("next_poll_at", instant(Some(ticket.next_poll_at)).as_deref());
        let why = match &ticket.lease_owner {
            Some(owner) => Some(format!("being polled now (lease {owner})")),
            None if ticket.polls == 0 => Some("first poll: due as soon as a daemon sees it".to_owned()),
            None => ticket.schedule_note.clone(),
        };
        field("next_poll_why", why.as_deref());
    }
    field("deadline_at", instant(ticket.deadline_at).as_deref());
    field("finished_at", instant(ticket.finished_at).as_deref());
    field("webhook_url", ticket.webhook_url.as_deref().map(redact_text).as_deref());
    field("webhook_note", ticket.webhook_note.as_deref());
    if !ticket.validation_errors.is_empty() {
        println!("validation errors:");
        for issue in &ticket.validation_errors {
            println!("  {issue}");
        }
    }
    if !ticket.config_errors.is_empty() {
        println!("config errors:");
        for issue in &ticket.config_errors {
            println!("  {issue}");
        }
    }
    if let Some(plan) = &ticket.resource_plan {
        println!("resource plan ({} bytes; `show --json` prints it whole):", plan.len());
        let shown: String = plan.chars().take(400).collect();
        println!("  {shown}{}", if shown.len() < plan.len() { "…" } else { "" });
    }
    if !deliveries.is_empty() {
        println!("webhook deliveries:");
        for delivery in deliveries {
            println!(
                "  #{} {} {} {} webhook-id={} attempts={}{}{}",
                delivery.id,
                delivery.event_type,
                delivery.state,
                redact_text(&delivery.url),
                delivery.webhook_id,
                delivery.attempts,
                delivery.last_http_status.map(|status| format!(" http={status}")).unwrap_or_default(),
                Some(delivery_when(delivery))
                    .filter(|when| !when.is_empty())
                    .map(|when| format!(" {when}"))
                    .unwrap_or_default(),
            );
            if let Some(error) = delivery.last_error.as_deref().filter(|_| delivery.state != "delivered") {
                println!("      last error: {error}");
            }
        }
    }
}
