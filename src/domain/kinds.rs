//! The asynchronous operations a ticket can belong to ([`TicketKind`]), each kind's result in its
//! own type, and the outcome table of each (`spec/flink-async-tickets.md` §3–§6) as one pure
//! function, [`KindResult::outcome`]. [`Answer`] is what a successful poll hands to the decision
//! and the store: the typed result plus the raw `data` text, kept byte for byte.
//!
//! The wire words and field names are read in `flink/`; nothing here parses JSON except
//! [`RawJson::new`], which only checks that a text is JSON and keeps it as it is.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{DeployResult, TicketStatus, ValidationIssue};

/// Which asynchronous operation a ticket ID belongs to: it picks the poll path, the action and
/// the result parser. The strings match the `CHECK` constraint on `tickets.kind` and are
/// converted here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketKind {
    /// DeployDeploymentDraftAsync / GetDeployDeploymentDraftResult.
    #[default]
    Deploy,
    /// ValidateDeploymentDraftAsync / GetValidateDeploymentDraftResult.
    Validate,
    /// GenerateResourcePlanWithFlinkConfAsync / GetGenerateResourcePlanResult.
    ResourcePlan,
    /// HotUpdateJob / GetHotUpdateJobResult; the ticket ID is the `jobHotUpdateId`.
    HotUpdate,
}

impl TicketKind {
    /// Every kind, in the order they are listed to users.
    pub const ALL: [TicketKind; 4] =
        [TicketKind::Deploy, TicketKind::Validate, TicketKind::ResourcePlan, TicketKind::HotUpdate];

    /// The string stored in SQL, shown to users and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketKind::Deploy => "deploy",
            TicketKind::Validate => "validate",
            TicketKind::ResourcePlan => "resource_plan",
            TicketKind::HotUpdate => "hot_update",
        }
    }
}

impl std::fmt::Display for TicketKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind name that is not one of [`TicketKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {0:?}: expected deploy, validate, resource_plan or hot_update")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for TicketKind {
    type Err = UnknownKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        TicketKind::ALL.into_iter().find(|kind| kind.as_str() == text).ok_or_else(|| UnknownKind(text.to_owned()))
    }
}

/// One problem in a draft's metadata or configuration reported by a validate ticket
/// (`draftMetaInfoErrorDetails`), as stored in `config_errors`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfigIssue {
    /// `reason`, a short code such as `ENGINE_VERSION`.
    pub reason: Option<String>,
    /// `message`.
    pub message: Option<String>,
}

impl std::fmt::Display for ConfigIssue {
    /// `reason: message`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.reason.as_deref().unwrap_or("(no reason)"),
            self.message.as_deref().unwrap_or("(no message)")
        )
    }
}

/// JSON text kept exactly as it came (spacing, key order, escapes): the raw `data` of an answer.
/// Serialises as the JSON it holds, not as a string.
#[derive(Debug, Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Keeps `text` if it is one JSON value (surrounding whitespace aside).
    pub fn new(text: String) -> Result<RawJson, serde_json::Error> {
        RawValue::from_string(text).map(RawJson)
    }

    /// The text, byte for byte.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// What a poll of a `validate` ticket said (`AsyncDraftValidateResult`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidateResult {
    /// `ticketStatus`.
    pub ticket_status: Option<TicketStatus>,
    /// `success`: whether the draft passed, not the request outcome.
    pub success: Option<bool>,
    /// `message`.
    pub message: Option<String>,
    /// `draftValidationDetail.sqlValidationResult`, exactly as received.
    pub validation_result: Option<String>,
    /// `draftValidationDetail.sqlErrorDetail` (one object), as a list.
    pub validation_errors: Vec<ValidationIssue>,
    /// `draftValidationDetail.draftMetaInfoErrorDetails`.
    pub config_errors: Vec<ConfigIssue>,
}

/// What a poll of a `resource_plan` ticket said (`AsyncResourcePlanOperationResult`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourcePlanResult {
    /// `ticketStatus`.
    pub ticket_status: Option<TicketStatus>,
    /// `message`.
    pub message: Option<String>,
    /// `plan`: the plan's JSON text exactly as the API sent it; `None` when absent or empty.
    pub plan: Option<String>,
}

/// What a poll of a `hot_update` ticket said (`HotUpdateJobResult`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HotUpdateResult {
    /// `status.status`.
    pub ticket_status: Option<TicketStatus>,
    /// `jobId`, the job instance updated.
    pub job_id: Option<String>,
    /// `status.failure.reason`.
    pub failure_reason: Option<String>,
    /// `status.failure.message`.
    pub failure_message: Option<String>,
    /// `status.failure.failureSeverity`.
    pub failure_severity: Option<String>,
}

/// A poll result of any kind, each in its own type.
#[derive(Debug, Clone, PartialEq)]
pub enum KindResult {
    /// GetDeployDeploymentDraftResult.
    Deploy(DeployResult),
    /// GetValidateDeploymentDraftResult.
    Validate(ValidateResult),
    /// GetGenerateResourcePlanResult.
    ResourcePlan(ResourcePlanResult),
    /// GetHotUpdateJobResult.
    HotUpdate(HotUpdateResult),
}

/// What a result means for its ticket, by the kind's outcome table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not final (including unknown or missing statuses): poll on until the deadline.
    Running,
    /// Final and successful.
    Succeeded,
    /// Final and failed; `error` is a (code, message) to record besides the answer's columns.
    Failed {
        /// For example (`MissingPlan`, …) or a hot update's failure reason and message.
        error: Option<(String, String)>,
    },
}

/// The `error_code` of a resource plan that finished without a plan.
pub const MISSING_PLAN: &str = "MissingPlan";

/// The values an answer gives the `tickets` columns; `None` / empty where the kind has none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Columns<'a> {
    /// `ticket_status`.
    pub ticket_status: Option<&'a TicketStatus>,
    /// `deployment_id`.
    pub deployment_id: Option<&'a str>,
    /// `deploy_success` (deploy and validate: the API's `data.success`).
    pub deploy_success: Option<bool>,
    /// `message`.
    pub message: Option<&'a str>,
    /// `validation_result`.
    pub validation_result: Option<&'a str>,
    /// `validation_errors`.
    pub validation_errors: &'a [ValidationIssue],
    /// `config_errors`.
    pub config_errors: &'a [ConfigIssue],
    /// `resource_plan`, verbatim.
    pub resource_plan: Option<&'a str>,
}

impl KindResult {
    /// The kind this result belongs to.
    pub fn kind(&self) -> TicketKind {
        match self {
            KindResult::Deploy(_) => TicketKind::Deploy,
            KindResult::Validate(_) => TicketKind::Validate,
            KindResult::ResourcePlan(_) => TicketKind::ResourcePlan,
            KindResult::HotUpdate(_) => TicketKind::HotUpdate,
        }
    }

    /// The status field of the kind (`ticketStatus`, or `status.status` for hot updates).
    pub fn ticket_status(&self) -> Option<&TicketStatus> {
        self.columns().ticket_status
    }

    /// Whether the status is one the kind documents (anything else is logged and polled on).
    pub fn status_is_documented(&self) -> bool {
        use TicketStatus::{Executing, Failed, Finished, HotUpdated, HotUpdating, Init};
        match (self, self.ticket_status()) {
            (KindResult::HotUpdate(_), Some(Init | HotUpdating | HotUpdated | Failed)) => true,
            (KindResult::HotUpdate(_), _) => false,
            (_, Some(Init | Executing | Finished | Failed)) => true,
            _ => false,
        }
    }

    /// The kind's outcome table applied to this result.
    pub fn outcome(&self) -> Outcome {
        use TicketStatus::{Failed, Finished, HotUpdated};
        let failed = Outcome::Failed { error: None };
        match self {
            KindResult::Deploy(result) => match (&result.ticket_status, result.success) {
                (Some(Finished), Some(true)) => Outcome::Succeeded,
                (Some(Finished), Some(false)) | (Some(Failed), _) => failed,
                // Undocumented: FINISHED without `success`. A deployment ID and no validation
                // issues can only mean it deployed.
                (Some(Finished), None) if result.deployment_id.is_some() && result.validation_errors.is_empty() => {
                    Outcome::Succeeded
                }
                (Some(Finished), None) => failed,
                _ => Outcome::Running,
            },
            KindResult::Validate(result) => match (&result.ticket_status, result.success) {
                (Some(Finished), Some(true)) => Outcome::Succeeded,
                (Some(Finished), Some(false)) | (Some(Failed), _) => failed,
                // Undocumented: FINISHED without `success` passes only with nothing to complain about.
                (Some(Finished), None) if result.validation_errors.is_empty() && result.config_errors.is_empty() => {
                    Outcome::Succeeded
                }
                (Some(Finished), None) => failed,
                _ => Outcome::Running,
            },
            KindResult::ResourcePlan(result) => match (&result.ticket_status, &result.plan) {
                (Some(Finished), Some(_)) => Outcome::Succeeded,
                // Undocumented: FINISHED without a plan.
                (Some(Finished), None) => Outcome::Failed {
                    error: Some((MISSING_PLAN.to_owned(), "the ticket finished without a plan".to_owned())),
                },
                (Some(Failed), _) => failed,
                _ => Outcome::Running,
            },
            KindResult::HotUpdate(result) => match &result.ticket_status {
                Some(HotUpdated) => Outcome::Succeeded,
                Some(Failed) => Outcome::Failed {
                    error: result.failure_reason.clone().map(|reason| {
                        (reason, result.failure_message.clone().unwrap_or_else(|| "hot update failed".to_owned()))
                    }),
                },
                _ => Outcome::Running,
            },
        }
    }

    /// A note when the result is a case the API does not document (for the log), else `None`.
    pub fn undocumented(&self) -> Option<&'static str> {
        match self {
            KindResult::Deploy(DeployResult { ticket_status: Some(TicketStatus::Finished), success: None, .. }) => {
                Some("FINISHED without success")
            }
            KindResult::Validate(ValidateResult {
                ticket_status: Some(TicketStatus::Finished), success: None, ..
            }) => Some("FINISHED without success"),
            KindResult::ResourcePlan(ResourcePlanResult {
                ticket_status: Some(TicketStatus::Finished),
                plan: None,
                ..
            }) => Some("FINISHED without a plan"),
            // The plan is kept as sent either way; a plan that is not JSON is worth a look.
            KindResult::ResourcePlan(ResourcePlanResult { plan: Some(plan), .. })
                if serde_json::from_str::<serde::de::IgnoredAny>(plan).is_err() =>
            {
                Some("a plan that is not JSON text")
            }
            _ => None,
        }
    }

    /// The column values this result records.
    pub fn columns(&self) -> Columns<'_> {
        let none = Columns {
            ticket_status: None,
            deployment_id: None,
            deploy_success: None,
            message: None,
            validation_result: None,
            validation_errors: &[],
            config_errors: &[],
            resource_plan: None,
        };
        match self {
            KindResult::Deploy(result) => Columns {
                ticket_status: result.ticket_status.as_ref(),
                deployment_id: result.deployment_id.as_deref(),
                deploy_success: result.success,
                message: result.message.as_deref(),
                validation_result: result.validation_result.as_deref(),
                validation_errors: &result.validation_errors,
                ..none
            },
            KindResult::Validate(result) => Columns {
                ticket_status: result.ticket_status.as_ref(),
                deploy_success: result.success,
                message: result.message.as_deref(),
                validation_result: result.validation_result.as_deref(),
                validation_errors: &result.validation_errors,
                config_errors: &result.config_errors,
                ..none
            },
            KindResult::ResourcePlan(result) => Columns {
                ticket_status: result.ticket_status.as_ref(),
                message: result.message.as_deref(),
                resource_plan: result.plan.as_deref(),
                ..none
            },
            KindResult::HotUpdate(result) => Columns {
                ticket_status: result.ticket_status.as_ref(),
                // The failure's message, falling back to its reason.
                message: result.failure_message.as_deref().or(result.failure_reason.as_deref()),
                ..none
            },
        }
    }
}

/// A successful poll's answer: the typed result and the raw `data` it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The kind's typed result.
    pub result: KindResult,
    /// `data` exactly as the API sent it; `None` when it sent none (or `null`).
    pub raw: Option<RawJson>,
}

impl From<DeployResult> for Answer {
    /// A deploy answer without raw text (tests and callers that build results by hand).
    fn from(result: DeployResult) -> Answer {
        Answer { result: KindResult::Deploy(result), raw: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(status: &str, success: Option<bool>, errors: bool) -> KindResult {
        KindResult::Validate(ValidateResult {
            ticket_status: Some(status_word(status)),
            success,
            config_errors: if errors { vec![ConfigIssue::default()] } else { Vec::new() },
            ..ValidateResult::default()
        })
    }

    fn status_word(word: &str) -> TicketStatus {
        match word {
            "init" => TicketStatus::Init,
            "finished" => TicketStatus::Finished,
            "failed" => TicketStatus::Failed,
            "hot_updating" => TicketStatus::HotUpdating,
            "hot_updated" => TicketStatus::HotUpdated,
            other => TicketStatus::Other(other.to_owned()),
        }
    }

    #[test]
    fn kinds_round_trip_through_their_names_and_unknown_names_are_refused() {
        for kind in TicketKind::ALL {
            assert_eq!(kind.as_str().parse::<TicketKind>(), Ok(kind));
        }
        let error = "savepoint".parse::<TicketKind>().expect_err("not a kind");
        assert!(error.to_string().contains("resource_plan"), "{error}");
    }

    #[test]
    fn validate_outcomes_follow_the_table_including_finished_without_success() {
        assert_eq!(validate("finished", Some(true), false).outcome(), Outcome::Succeeded);
        assert_eq!(validate("finished", Some(false), false).outcome(), Outcome::Failed { error: None });
        assert_eq!(validate("failed", None, false).outcome(), Outcome::Failed { error: None });
        assert_eq!(validate("finished", None, false).outcome(), Outcome::Succeeded);
        assert_eq!(validate("finished", None, true).outcome(), Outcome::Failed { error: None });
        assert_eq!(validate("", None, false).outcome(), Outcome::Running);
        assert_eq!(validate("init", None, false).outcome(), Outcome::Running);
        assert!(validate("finished", None, false).undocumented().is_some());
    }

    #[test]
    fn a_resource_plan_needs_its_plan_to_succeed() {
        let plan = |status: &str, plan: Option<&str>| {
            KindResult::ResourcePlan(ResourcePlanResult {
                ticket_status: Some(status_word(status)),
                plan: plan.map(str::to_owned),
                message: None,
            })
        };
        assert_eq!(plan("finished", Some("{}")).outcome(), Outcome::Succeeded);
        let Outcome::Failed { error: Some((code, _)) } = plan("finished", None).outcome() else {
            panic!("a plan-less FINISHED fails")
        };
        assert_eq!(code, MISSING_PLAN);
        assert_eq!(plan("failed", None).outcome(), Outcome::Failed { error: None });
        assert_eq!(plan("executing", None).outcome(), Outcome::Running);
        assert_eq!(plan("finished", Some("{not json")).outcome(), Outcome::Succeeded, "kept as sent");
        assert!(plan("finished", Some("{not json")).undocumented().is_some(), "and logged");
        assert_eq!(plan("finished", Some("{ }")).undocumented(), None);
    }

    #[test]
    fn a_hot_update_reads_its_status_and_reports_the_failure_message_or_reason() {
        let update = |status: &str, reason: Option<&str>, message: Option<&str>| {
            KindResult::HotUpdate(HotUpdateResult {
                ticket_status: Some(status_word(status)),
                failure_reason: reason.map(str::to_owned),
                failure_message: message.map(str::to_owned),
                ..HotUpdateResult::default()
            })
        };
        assert_eq!(update("hot_updating", None, None).outcome(), Outcome::Running);
        assert_eq!(update("init", None, None).outcome(), Outcome::Running);
        assert_eq!(update("finished", None, None).outcome(), Outcome::Running, "not a hot update word");
        assert_eq!(update("hot_updated", None, None).outcome(), Outcome::Succeeded);
        let failed = update("failed", Some("RescaleFailed"), Some("not enough resources"));
        assert_eq!(failed.columns().message, Some("not enough resources"));
        assert_eq!(
            failed.outcome(),
            Outcome::Failed { error: Some(("RescaleFailed".to_owned(), "not enough resources".to_owned())) }
        );
        assert_eq!(update("failed", Some("RescaleFailed"), None).columns().message, Some("RescaleFailed"));
        assert!(!update("finished", None, None).status_is_documented());
        assert!(update("hot_updating", None, None).status_is_documented());
    }

    #[test]
    fn raw_json_keeps_its_text_and_serialises_as_json() {
        let text = "{ \"b\" :1,\"a\":\"\\u00e9é\" }";
        let raw = RawJson::new(text.to_owned()).expect("JSON");
        assert_eq!(raw.as_str(), text);
        assert_eq!(serde_json::to_string(&raw).expect("serialises"), text);
        assert!(RawJson::new("{".to_owned()).is_err());
    }
}
