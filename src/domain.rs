//! The vocabulary of the daemon: ticket states, kinds, row ids and keys, what a poll can tell us
//! (the cloud's [`TicketStatus`], whose wire words only `flink/` reads and writes; each kind's
//! typed result and the outcome its table gives), and the issues the cloud reports. No IO lives
//! here.

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod kinds;

pub use kinds::{
    Answer, Columns, ConfigIssue, HotUpdateResult, KindResult, MISSING_PLAN, Outcome, RawJson, ResourcePlanResult,
    TicketKind, UnknownKind, ValidateResult,
};

/// The user-visible state of a ticket row. The strings match the `CHECK` constraint on
/// `tickets.state` and are converted here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketState {
    /// New, or still being polled.
    Pending,
    /// `FINISHED` with `data.success` true.
    Succeeded,
    /// `FINISHED` with `data.success` false, `FAILED`, or a permanent error for this ticket.
    Failed,
    /// The deadline passed without a final status.
    Expired,
    /// Stopped by a user.
    Cancelled,
}

impl TicketState {
    /// Every state, in the order they are usually listed.
    pub const ALL: [TicketState; 5] = [
        TicketState::Pending,
        TicketState::Succeeded,
        TicketState::Failed,
        TicketState::Expired,
        TicketState::Cancelled,
    ];

    /// The string stored in SQL and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Pending => "pending",
            TicketState::Succeeded => "succeeded",
            TicketState::Failed => "failed",
            TicketState::Expired => "expired",
            TicketState::Cancelled => "cancelled",
        }
    }

    /// Whether the daemon is done with a ticket in this state.
    pub fn is_final(self) -> bool {
        self != TicketState::Pending
    }

    /// The webhook event type announcing this state, for the states that send one.
    pub fn event_type(self) -> Option<&'static str> {
        match self {
            TicketState::Succeeded => Some("ticket.succeeded"),
            TicketState::Failed => Some("ticket.failed"),
            TicketState::Expired => Some("ticket.expired"),
            TicketState::Pending | TicketState::Cancelled => None,
        }
    }
}

impl std::fmt::Display for TicketState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TicketState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TicketState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown state {s:?}: expected pending, succeeded, failed, expired or cancelled"))
    }
}

/// The `tickets.id` of a row: the daemon's own handle on a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RowId(pub i64);

impl std::fmt::Display for RowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What one finished ticket says about how long tickets like it run, both measured from its
/// `created_at`: the true run time lies after `running_seen` and at or before `finish_seen`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSample {
    /// The last poll that saw it still running (zero if none did).
    pub running_seen: std::time::Duration,
    /// The poll that saw its final status.
    pub finish_seen: std::time::Duration,
}

impl RunSample {
    /// The estimate of the true run time: the middle of the interval in which it finished.
    pub fn estimate(&self) -> std::time::Duration {
        if self.running_seen.is_zero() || self.running_seen >= self.finish_seen {
            return self.finish_seen;
        }
        (self.running_seen + self.finish_seen) / 2
    }
}

/// What names a ticket in the cloud: the cloud's ticket ID within a workspace and namespace.
/// The same ticket ID may exist in several workspaces or namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct TicketKey {
    /// The cloud's ticket ID.
    pub ticket_id: String,
    /// The Flink namespace.
    pub namespace: String,
    /// The workspace ID.
    pub workspace: String,
}

/// The cloud's `ticketStatus`. Produced only by `flink/`, which also holds its one conversion
/// to and from the wire words; everything else matches on the variants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TicketStatus {
    /// Queued in the cloud.
    Init,
    /// Running.
    Executing,
    /// Done: `success` says how it went.
    Finished,
    /// Done, and failed.
    Failed,
    /// A hot update is being applied (`hot_update` only).
    HotUpdating,
    /// A hot update was applied (`hot_update` only).
    HotUpdated,
    /// A word the API does not document; polled on until the deadline.
    Other(String),
}

impl TicketStatus {
    /// The documented status's name in lowercase (for metric labels); `None` for
    /// [`TicketStatus::Other`].
    pub fn name(&self) -> Option<&'static str> {
        match self {
            TicketStatus::Init => Some("init"),
            TicketStatus::Executing => Some("executing"),
            TicketStatus::Finished => Some("finished"),
            TicketStatus::Failed => Some("failed"),
            TicketStatus::HotUpdating => Some("hot_updating"),
            TicketStatus::HotUpdated => Some("hot_updated"),
            TicketStatus::Other(_) => None,
        }
    }
}

/// One SQL validation problem reported by the cloud, as stored in `validation_errors`.
///
/// Positions are JSON integers when the API gave something numeric (it sends numbers as strings),
/// the original string otherwise, and `null` when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationIssue {
    /// 1-based line where the problem starts.
    pub line: Value,
    /// 1-based column where the problem starts.
    pub column: Value,
    /// Line where the problem ends.
    pub end_line: Value,
    /// Column where the problem ends.
    pub end_column: Value,
    /// What the validator said.
    pub message: Option<String>,
}

impl std::fmt::Display for ValidationIssue {
    /// `line:column: message`, the way compilers print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let position = |value: &Value| match value {
            Value::Null => "?".to_owned(),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        write!(
            f,
            "{}:{}: {}",
            position(&self.line),
            position(&self.column),
            self.message.as_deref().unwrap_or("(no message)")
        )
    }
}

/// What a successful poll said about a deploy ticket (`data` of GetDeployDeploymentDraftResult).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeployResult {
    /// `ticketStatus`.
    pub ticket_status: Option<TicketStatus>,
    /// `deploymentId`, once known.
    pub deployment_id: Option<String>,
    /// `success`: the deployment outcome, not the request outcome.
    pub success: Option<bool>,
    /// `message`.
    pub message: Option<String>,
    /// `artifactValidationDetail.validationResult`.
    pub validation_result: Option<String>,
    /// `artifactValidationDetail.errorDetails`, as a list.
    pub validation_errors: Vec<ValidationIssue>,
}
