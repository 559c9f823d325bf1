//! The submit commands, one per ticket kind: `deploy` (DeployDeploymentDraftAsync), `validate`
//! (ValidateDeploymentDraftAsync), `resource-plan` (GenerateResourcePlanWithFlinkConfAsync) and
//! `hot-update` (HotUpdateJob). Each calls the API, queues the returned ID with its kind and
//! prints it; with `--wait` it follows the ticket to its end (exit 0 succeeded, 1 otherwise),
//! with or without a daemon on the same database.
//!
//! What `--wait` prints, so that CI logs and redirects work:
//! - `deploy` and `validate`: problems on stderr the way compilers print them, `line:column:
//!   message`, then (validate) configuration problems as `reason: message`;
//! - `resource-plan`: the plan on stdout exactly as the API sent it, and nothing else there
//!   (`resource-plan … --wait > plan.json`); the summary goes to stderr;
//! - `--json`: the final row as JSON on stdout instead.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::{CliError, ticket_json, usage_if_setup_is_wrong};
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::{TicketKind, TicketState};
use crate::flink::{DeployRequest, FlinkClient, HotUpdateRequest, ResourcePlanRequest, Submitted, ValidateRequest};
use crate::poller::Followed;
use crate::store::{NewTicket, Ticket};

/// What every submit command takes: where the ticket lives and how to follow it.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Flink namespace.
    #[arg(long)]
    pub namespace: String,
    /// Workspace ID.
    #[arg(long)]
    pub workspace: String,
    /// Region of the workspace, instead of flink.region.
    #[arg(long)]
    pub region: Option<String>,
    /// Extra webhook receiver for this ticket (used when webhook.allow_ticket_urls is true).
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Follow the ticket to its final state: exit 0 when it succeeded, 1 otherwise. Works with
    /// or without a daemon running on the same database.
    #[arg(long)]
    pub wait: bool,
    /// Print the ticket as JSON (with --wait, the final row).
    #[arg(long)]
    pub json: bool,
}

/// The operation to submit, with its own arguments.
#[derive(Debug, Clone)]
pub enum Operation {
    /// DeployDeploymentDraftAsync.
    Deploy {
        /// The draft to deploy.
        draft_id: String,
        /// Deployment target (queue).
        target: Option<String>,
        /// Skip the deep validation.
        skip_validate: bool,
    },
    /// ValidateDeploymentDraftAsync.
    Validate {
        /// The draft to check.
        draft_id: String,
        /// Deployment target (queue) to check against.
        target: Option<String>,
    },
    /// GenerateResourcePlanWithFlinkConfAsync.
    ResourcePlan {
        /// The deployment to plan for.
        deployment_id: String,
        /// Flink configuration entries, in the order given.
        conf: Vec<(String, String)>,
    },
    /// HotUpdateJob.
    HotUpdate {
        /// The job instance to update.
        job_id: String,
    },
}

impl Operation {
    fn kind(&self) -> TicketKind {
        match self {
            Operation::Deploy { .. } => TicketKind::Deploy,
            Operation::Validate { .. } => TicketKind::Validate,
            Operation::ResourcePlan { .. } => TicketKind::ResourcePlan,
            Operation::HotUpdate { .. } => TicketKind::HotUpdate,
        }
    }

    /// What was submitted, for messages: `draft "d-1"`, `deployment "dep-1"`, `job "j-1"`.
    fn subject(&self) -> String {
        match self {
            Operation::Deploy { draft_id, .. } | Operation::Validate { draft_id, .. } => format!("draft {draft_id:?}"),
            Operation::ResourcePlan { deployment_id, .. } => format!("deployment {deployment_id:?}"),
            Operation::HotUpdate { job_id } => format!("job {job_id:?}"),
        }
    }

    async fn send(&self, flink: &FlinkClient, common: &Common) -> Result<Submitted, crate::flink::FlinkError> {
        let (namespace, workspace, region) = (&*common.namespace, &*common.workspace, common.region.as_deref());
        match self {
            Operation::Deploy { draft_id, target, skip_validate } => {
                let request = DeployRequest {
                    namespace,
                    workspace,
                    draft_id,
                    target: target.as_deref(),
                    skip_validate: *skip_validate,
                    region,
                };
                let (ticket_id, request_id) = flink.deploy_draft(&request).await?;
                Ok(Submitted { ticket_id, request_id })
            }
            Operation::Validate { draft_id, target } => {
                let request = ValidateRequest { namespace, workspace, draft_id, target: target.as_deref(), region };
                flink.validate_draft(&request).await
            }
            Operation::ResourcePlan { deployment_id, conf } => {
                let request = ResourcePlanRequest { namespace, workspace, deployment_id, flink_conf: conf, region };
                flink.generate_resource_plan(&request).await
            }
            Operation::HotUpdate { job_id } => {
                flink.hot_update_job(&HotUpdateRequest { namespace, workspace, job_id, region }).await
            }
        }
    }
}

/// Reads one `--conf KEY=VALUE`: the first `=` splits; the key may not be empty.
pub fn parse_conf(text: &str) -> Result<(String, String), ConfError> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        Some(_) => Err(ConfError::EmptyKey),
        None => Err(ConfError::NoEquals),
    }
}

/// A `--conf` value that is not `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    /// No `=` at all.
    #[error("expected KEY=VALUE, for example taskmanager.numberOfTaskSlots=2")]
    NoEquals,
    /// `=VALUE`.
    #[error("the key before `=` is empty")]
    EmptyKey,
}

/// Submits `operation`, queues its ticket and, with `--wait`, follows it to its end.
pub async fn run(
    config: Config,
    clock: Arc<dyn Clock>,
    common: Common,
    operation: Operation,
    shutdown: CancellationToken,
) -> Result<(), CliError> {
    submit_and_follow(config, clock, &common, &operation, shutdown).await.map_err(|error| match error {
        CliError::Runtime(error) => usage_if_setup_is_wrong(error),
        usage => usage,
    })
}

async fn submit_and_follow(
    config: Config,
    clock: Arc<dyn Clock>,
    common: &Common,
    operation: &Operation,
    shutdown: CancellationToken,
) -> Result<(), CliError> {
    if let Some(region) = &common.region {
        crate::flink::endpoint::check_region(region).map_err(|error| CliError::Usage(format!("--region: {error}")))?;
    }
    let kind = operation.kind();
    let crate::daemon::Connection { store, flink } = crate::daemon::connect(&config, &clock).await?;
    let Submitted { ticket_id, request_id } = operation.send(&flink, common).await.with_context(|| {
        format!("submitting {} ({})", operation.subject(), crate::flink::kinds::submit_action(kind))
    })?;
    let new = NewTicket {
        ticket_id: ticket_id.clone(),
        namespace: common.namespace.clone(),
        workspace: common.workspace.clone(),
        region: common.region.clone(),
        webhook_url: common.webhook_url.clone(),
        deadline_at: None,
        kind,
        deployment_id: match operation {
            Operation::ResourcePlan { deployment_id, .. } => Some(deployment_id.clone()),
            _ => None,
        },
    };
    let ticket = store.insert_ticket(&new).await.map_err(|error| {
        anyhow::anyhow!(
            "{} was submitted as {kind} ticket {ticket_id} (request {}) but queueing it failed: {}; queue it with \
             `flink-ticketd enqueue --kind {kind} --namespace {} --workspace {} {ticket_id}`",
            operation.subject(),
            request_id.as_deref().unwrap_or("?"),
            crate::store::describe_refusal(&error),
            common.namespace,
            common.workspace,
        )
    })?;
    if !common.json || !common.wait {
        if common.json {
            println!("{}", serde_json::to_string_pretty(&ticket_json(&ticket)).context("serialising the ticket")?);
        } else if !common.wait || kind != TicketKind::ResourcePlan {
            println!("{ticket_id}");
        } else {
            // stdout carries the plan alone.
            eprintln!("{ticket_id}");
        }
    }
    if !common.wait {
        store.close().await;
        return Ok(());
    }

    let owner = crate::store::lease_owner_prefix(kind.as_str());
    let (poller, recorder_task) = crate::daemon::poller(&config, store.clone(), flink, clock, owner, 1);
    let followed = poller.follow(ticket.id, &shutdown).await.context("following the ticket");
    // Every result is written before the database closes.
    drop(poller);
    if recorder_task.await.is_err() {
        tracing::warn!("the result writer stopped abnormally");
    }
    store.close().await;
    let row = match followed? {
        Followed::Final(row) => row,
        Followed::Paused(row) => {
            return Err(CliError::Runtime(anyhow::anyhow!(
                "stopped waiting for ticket {ticket_id}: the API refuses our requests ({}: {}); the ticket stays \
                 queued for the daemon",
                row.error_code.as_deref().unwrap_or("?"),
                row.error_message.as_deref().unwrap_or("")
            )));
        }
        Followed::Cancelled(_) => {
            return Err(CliError::Runtime(anyhow::anyhow!(
                "stopped waiting for ticket {ticket_id}; it stays queued for the daemon"
            )));
        }
    };
    report(&row, common.json)
}

/// Prints a finished ticket the way its kind's `--wait` promises, and turns its state into the
/// command's result.
fn report(row: &Ticket, json: bool) -> Result<(), CliError> {
    let ticket_id = &row.key.ticket_id;
    if json {
        println!("{}", serde_json::to_string_pretty(&ticket_json(row)).context("serialising the ticket")?);
    }
    for issue in &row.validation_errors {
        eprintln!("{issue}");
    }
    for issue in &row.config_errors {
        eprintln!("{issue}");
    }
    if let TicketState::Succeeded = row.state {
        let detail = match row.kind {
            TicketKind::Deploy => {
                format!("deployment {}", row.deployment_id.as_deref().unwrap_or("(no deployment id)"))
            }
            TicketKind::Validate => {
                format!("the draft passed ({})", row.validation_result.as_deref().unwrap_or("no validation result"))
            }
            TicketKind::ResourcePlan => {
                let plan = row.resource_plan.as_deref().unwrap_or_default();
                if !json {
                    print!("{plan}");
                    if !plan.ends_with('\n') {
                        // A terminal gets a line end; a redirect gets the plan's bytes alone.
                        use std::io::IsTerminal as _;
                        if std::io::stdout().is_terminal() {
                            println!();
                        }
                    }
                }
                eprintln!("ticket {ticket_id} succeeded: resource plan of {} bytes", plan.len());
                return Ok(());
            }
            TicketKind::HotUpdate => "the hot update was applied".to_owned(),
        };
        if !json {
            println!("ticket {ticket_id} succeeded: {detail}");
        }
        return Ok(());
    }
    let mut why =
        vec![row.ticket_status.as_ref().map(ToString::to_string), row.validation_result.clone(), row.message.clone()];
    if let Some(code) = &row.error_code {
        why.push(Some(format!("{code}: {}", row.error_message.as_deref().unwrap_or(""))));
    }
    let why: Vec<String> = why.into_iter().flatten().filter(|part| !part.trim().is_empty()).collect();
    Err(CliError::Runtime(anyhow::anyhow!(
        "ticket {ticket_id} {}{}",
        row.state,
        if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_entries_split_at_the_first_equals_sign() {
        assert_eq!(parse_conf("a.b=1"), Ok(("a.b".to_owned(), "1".to_owned())));
        assert_eq!(parse_conf("k=v=w"), Ok(("k".to_owned(), "v=w".to_owned())));
        assert_eq!(parse_conf("k="), Ok(("k".to_owned(), String::new())));
        assert_eq!(parse_conf("=v"), Err(ConfError::EmptyKey));
        assert_eq!(parse_conf("novalue"), Err(ConfError::NoEquals));
    }
}
