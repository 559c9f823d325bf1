//! The vocabulary of the daemon: ticket states, what a poll can tell us, and the SQL validation
//! issues the cloud reports. No IO lives here.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// `ticketStatus`: `INIT`, `EXECUTING`, `FINISHED`, `FAILED` or anything else.
    pub ticket_status: Option<String>,
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
