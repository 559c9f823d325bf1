//! What the simulated Flink API answers: a [`Scenario`] maps ticket ids (exact or by prefix, of
//! every kind or of one) and submitted draft, deployment and job ids to scripts of [`Step`]s,
//! read from a TOML file (see `config/simulator-example.toml`).
//!
//! Each poll of a ticket plays the next step of its script and the last step repeats forever. A
//! status step with `until_ms` is time-based: it is played on every poll until that many
//! milliseconds after the ticket's first poll, then the script moves on (`{ status =
//! "EXECUTING", until_ms = 12000 }` followed by a `FINISHED` step is a deploy that takes 12 s).
//! Parsing and validation live here; turning a step into HTTP bytes lives in `answer.rs`, and no
//! IO happens here apart from [`Scenario::load`] reading the file.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::domain::TicketKind;

/// The whole script of a simulator run.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Steps for tickets that no rule matches. Never empty.
    pub default: Vec<Step>,
    /// Rules tried in order; the first that matches a ticket decides its steps.
    pub tickets: Vec<TicketRule>,
}

/// One `[[tickets]]` table: which tickets it applies to and the steps they play.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketRule {
    /// Which tickets the rule applies to.
    pub selector: Selector,
    /// Only tickets of this kind (`kind = "validate"`); every kind when `None`.
    pub kind: Option<TicketKind>,
    /// The script; never empty.
    pub steps: Vec<Step>,
}

/// How a [`TicketRule`] picks its tickets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The ticket id equals this (`id = "..."`).
    Id(String),
    /// The ticket id starts with this (`prefix = "..."`).
    Prefix(String),
    /// Tickets created by DeployDeploymentDraftAsync for exactly this draft id (`draft = "..."`).
    Draft(String),
    /// Tickets created for a draft id starting with this (`draft_prefix = "..."`).
    DraftPrefix(String),
    /// Resource plans created by GenerateResourcePlanWithFlinkConfAsync for exactly this
    /// deployment id (`deployment = "..."`).
    Deployment(String),
    /// Hot updates created by HotUpdateJob for exactly this job id (`job = "..."`).
    Job(String),
}

/// One answer to one poll. Every variant may wait `delay_ms` milliseconds before answering
/// (without holding anything that other requests need).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawStep", into = "RawStep")]
pub enum Step {
    /// A successful poll reporting a ticket status (`status = "..."`).
    Status(StatusStep),
    /// An error answer (`error = "Code"`).
    Error(ErrorStep),
    /// A 404 service error naming the ticket (`not_found = true`).
    NotFound {
        /// Overrides the default message, which names the ticket.
        message: Option<String>,
        /// Milliseconds to wait before answering.
        delay_ms: u64,
    },
    /// A proxy-style HTML error page (`html = true`).
    Html {
        /// HTTP status, 502 by default.
        http_status: u16,
        /// Milliseconds to wait before answering.
        delay_ms: u64,
    },
    /// A plain-text answer, as a load balancer or proxy sends it (`body = "..."`, possibly empty).
    Text {
        /// The body, sent as `text/plain`.
        text: String,
        /// HTTP status, 503 by default.
        http_status: u16,
        /// Milliseconds to wait before answering.
        delay_ms: u64,
    },
    /// A success envelope cut in the middle, with a matching `Content-Length` (`truncated = true`).
    Truncated {
        /// Milliseconds to wait before answering.
        delay_ms: u64,
    },
    /// The connection is closed without any response (`drop = true`).
    Drop {
        /// Milliseconds to wait before closing.
        delay_ms: u64,
    },
    /// A 200 answer whose body is `bytes` bytes of filler, streamed (`garbage_bytes = N`).
    Garbage {
        /// Body length in bytes.
        bytes: u64,
        /// HTTP status, 200 by default.
        http_status: u16,
        /// Milliseconds to wait before answering.
        delay_ms: u64,
    },
}

/// A successful poll answer, shaped for the kind polled: `AsyncDraftDeployResult`,
/// `AsyncDraftValidateResult`, `AsyncResourcePlanOperationResult` or `HotUpdateJobResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusStep {
    /// `data.ticketStatus` (`status.status` for a hot update): `INIT`, `EXECUTING`, `FINISHED`,
    /// `FAILED`, `HOT_UPDATING`, `HOT_UPDATED`, or anything else.
    pub status: String,
    /// `data.success`, the deployment outcome; omitted when `None`.
    pub success: Option<bool>,
    /// `data.deploymentId`. A `FINISHED` success without one gets an id derived from the ticket id.
    pub deployment_id: Option<String>,
    /// `data.message`.
    pub message: Option<String>,
    /// `data.artifactValidationDetail.validationResult`.
    pub validation_result: Option<String>,
    /// Validation errors; the first becomes `data.artifactValidationDetail.errorDetails`.
    pub errors: Vec<StepIssue>,
    /// Send positions as JSON strings (`"3"`), as the real API does; numbers otherwise.
    pub numbers_as_strings: bool,
    /// Validate: `draftValidationDetail.draftMetaInfoErrorDetails`.
    pub config_errors: Vec<StepConfigIssue>,
    /// Resource plan: `data.plan`, sent verbatim. A `FINISHED` step without one sends a sample
    /// plan; `plan = ""` sends none.
    pub plan: Option<String>,
    /// Hot update: `status.failure.reason` (with `message` as `status.failure.message`).
    pub reason: Option<String>,
    /// Played on every poll until this many milliseconds after the ticket's first poll; `None`
    /// plays it once.
    pub until_ms: Option<u64>,
    /// Milliseconds to wait before answering.
    pub delay_ms: u64,
}

/// One `draftMetaInfoErrorDetails` entry of a validate step.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfigIssue {
    /// `reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorStep {
    /// The error code (`Throttling.User`, `ServiceUnavailable`, ...).
    pub code: String,
    /// HTTP status; by default derived from the code (see [`default_status_for`]).
    pub http_status: u16,
    /// The error message; a stock message for the code by default.
    pub message: Option<String>,
    /// Sent as `x-acs-retry-after` (milliseconds) when set.
    pub retry_after_ms: Option<u64>,
    /// Which error body to send.
    pub shape: ErrorShape,
    /// Milliseconds to wait before answering.
    pub delay_ms: u64,
}

/// The two error body shapes of the real service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorShape {
    /// `{"RequestId","HostId","Code","Message","Recommend"}`.
    #[default]
    Gateway,
    /// `{"requestId","success":false,"httpCode","errorCode","errorMessage"}`.
    Service,
}

/// One validation error of a status step; positions are line and column numbers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepIssue {
    /// `lineNumber`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<i64>,
    /// `columnNumber`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<i64>,
    /// `endLineNumber`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_line: Option<i64>,
    /// `endColumnNumber`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_column: Option<i64>,
    /// `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A scenario that cannot be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// The text is not TOML, or its top level has unknown or mistyped keys.
    #[error("invalid scenario: {0}")]
    Toml(String),
    /// A `default` list or `[[tickets]]` rule is wrong; `location` names it (and the step index).
    #[error("invalid scenario: {location}: {message}")]
    Invalid {
        /// For example `tickets[2] (id = "t-ok") steps[1]`.
        location: String,
        /// What is wrong.
        message: String,
    },
}

impl Default for Scenario {
    /// No rules; every ticket plays INIT, EXECUTING, FINISHED with success.
    fn default() -> Scenario {
        Scenario { default: default_progression(), tickets: Vec::new() }
    }
}

impl Scenario {
    /// Parses and validates a scenario file's text.
    pub fn from_toml_str(text: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = toml::from_str(text).map_err(|error| ScenarioError::Toml(error.to_string()))?;
        let default = match raw.default {
            None => default_progression(),
            Some(steps) => parse_steps(steps, "default")?,
        };
        let mut tickets = Vec::with_capacity(raw.tickets.len());
        for (index, rule) in raw.tickets.into_iter().enumerate() {
            tickets.push(parse_rule(index, rule)?);
        }
        Ok(Scenario { default, tickets })
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading simulator scenario {}", path.display()))?;
        Scenario::from_toml_str(&text).with_context(|| format!("parsing simulator scenario {}", path.display()))
    }

    /// Adds a rule for one exact ticket id (after the existing rules).
    #[must_use]
    pub fn with_ticket(mut self, ticket_id: &str, steps: Vec<Step>) -> Scenario {
        self.tickets.push(TicketRule { selector: Selector::Id(ticket_id.to_owned()), kind: None, steps });
        self
    }

    /// Adds a rule for every ticket id starting with `prefix` (after the existing rules).
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str, steps: Vec<Step>) -> Scenario {
        self.tickets.push(TicketRule { selector: Selector::Prefix(prefix.to_owned()), kind: None, steps });
        self
    }

    /// Adds a rule for tickets created from exactly this draft id (after the existing rules).
    #[must_use]
    pub fn with_draft(mut self, draft_id: &str, steps: Vec<Step>) -> Scenario {
        self.tickets.push(TicketRule { selector: Selector::Draft(draft_id.to_owned()), kind: None, steps });
        self
    }

    /// Adds a rule for one exact ticket id polled as `kind` (after the existing rules).
    #[must_use]
    pub fn with_kind_ticket(mut self, kind: TicketKind, ticket_id: &str, steps: Vec<Step>) -> Scenario {
        self.tickets.push(TicketRule { selector: Selector::Id(ticket_id.to_owned()), kind: Some(kind), steps });
        self
    }

    /// Adds a rule for the ticket a submit of `kind` creates for `subject`: a draft id (deploy,
    /// validate), a deployment id (resource plan) or a job id (hot update).
    #[must_use]
    pub fn with_submit(mut self, kind: TicketKind, subject: &str, steps: Vec<Step>) -> Scenario {
        let selector = match kind {
            TicketKind::Deploy | TicketKind::Validate => Selector::Draft(subject.to_owned()),
            TicketKind::ResourcePlan => Selector::Deployment(subject.to_owned()),
            TicketKind::HotUpdate => Selector::Job(subject.to_owned()),
        };
        self.tickets.push(TicketRule { selector, kind: Some(kind), steps });
        self
    }

    /// The steps of the first rule matching a polled deploy ticket id; `default` when none does.
    pub fn steps_for_ticket(&self, ticket_id: &str) -> &[Step] {
        self.steps_for_kind_ticket(TicketKind::Deploy, ticket_id)
    }

    /// The steps of the first rule matching a ticket id polled as `kind`; the kind's default
    /// when none does.
    pub fn steps_for_kind_ticket(&self, kind: TicketKind, ticket_id: &str) -> &[Step] {
        self.tickets
            .iter()
            .filter(|rule| rule.kind.is_none_or(|only| only == kind))
            .find(|rule| match &rule.selector {
                Selector::Id(id) => id == ticket_id,
                Selector::Prefix(prefix) => ticket_id.starts_with(prefix.as_str()),
                _ => false,
            })
            .map_or_else(|| self.default_for(kind), |rule| &rule.steps)
    }

    /// The steps of the first draft rule matching a deployed draft id, if any.
    pub fn steps_for_draft(&self, draft_id: &str) -> Option<&[Step]> {
        self.steps_for_submit(TicketKind::Deploy, draft_id)
    }

    /// The steps of the first rule matching what a submit of `kind` named (see
    /// [`Scenario::with_submit`]), if any.
    pub fn steps_for_submit(&self, kind: TicketKind, subject: &str) -> Option<&[Step]> {
        self.tickets
            .iter()
            .filter(|rule| rule.kind.is_none_or(|only| only == kind))
            .find(|rule| match (&rule.selector, kind) {
                (Selector::Draft(id), TicketKind::Deploy | TicketKind::Validate) => id == subject,
                (Selector::DraftPrefix(prefix), TicketKind::Deploy | TicketKind::Validate) => {
                    subject.starts_with(prefix.as_str())
                }
                (Selector::Deployment(id), TicketKind::ResourcePlan) | (Selector::Job(id), TicketKind::HotUpdate) => {
                    id == subject
                }
                _ => false,
            })
            .map(|rule| rule.steps.as_slice())
    }

    /// The steps of tickets no rule matches: `default`, except that hot updates go INIT,
    /// HOT_UPDATING, HOT_UPDATED while `default` is the built-in progression.
    fn default_for(&self, kind: TicketKind) -> &[Step] {
        static HOT_UPDATE: std::sync::LazyLock<Vec<Step>> = std::sync::LazyLock::new(|| {
            vec![Step::status("INIT"), Step::status("HOT_UPDATING"), Step::status("HOT_UPDATED")]
        });
        if kind == TicketKind::HotUpdate && self.default == default_progression() {
            return &HOT_UPDATE;
        }
        &self.default
    }
}

impl Step {
    /// A plain status step (`INIT`, `EXECUTING`, ...) with no outcome fields.
    pub fn status(status: &str) -> Step {
        Step::Status(StatusStep::from_status(status))
    }

    /// `status` on every poll until `until_ms` milliseconds after the ticket's first poll.
    pub fn status_until(status: &str, until_ms: u64) -> Step {
        let mut step = StatusStep::from_status(status);
        step.until_ms = Some(until_ms);
        Step::Status(step)
    }

    /// How long a time-based step lasts, counted from the ticket's first poll.
    pub fn until_ms(&self) -> Option<u64> {
        match self {
            Step::Status(StatusStep { until_ms, .. }) => *until_ms,
            _ => None,
        }
    }

    /// `FINISHED` with `success: true`; the deployment id is derived from the ticket id.
    pub fn finished_ok() -> Step {
        let mut step = StatusStep::from_status("FINISHED");
        step.success = Some(true);
        Step::Status(step)
    }

    /// An error step with the code's default status and message, in the gateway shape.
    pub fn error(code: &str) -> Step {
        Step::Error(ErrorStep {
            code: code.to_owned(),
            http_status: default_status_for(code),
            message: None,
            retry_after_ms: None,
            shape: ErrorShape::Gateway,
            delay_ms: 0,
        })
    }

    /// This step, answered after waiting `delay_ms` milliseconds.
    #[must_use]
    pub fn with_delay_ms(mut self, delay: u64) -> Step {
        match &mut self {
            Step::Status(StatusStep { delay_ms, .. })
            | Step::Error(ErrorStep { delay_ms, .. })
            | Step::NotFound { delay_ms, .. }
            | Step::Html { delay_ms, .. }
            | Step::Text { delay_ms, .. }
            | Step::Truncated { delay_ms }
            | Step::Drop { delay_ms }
            | Step::Garbage { delay_ms, .. } => *delay_ms = delay,
        }
        self
    }

    /// Milliseconds to wait before answering.
    pub fn delay_ms(&self) -> u64 {
        match self {
            Step::Status(StatusStep { delay_ms, .. })
            | Step::Error(ErrorStep { delay_ms, .. })
            | Step::NotFound { delay_ms, .. }
            | Step::Html { delay_ms, .. }
            | Step::Text { delay_ms, .. }
            | Step::Truncated { delay_ms }
            | Step::Drop { delay_ms }
            | Step::Garbage { delay_ms, .. } => *delay_ms,
        }
    }
}

impl StatusStep {
    /// A status with every optional field absent.
    pub fn from_status(status: &str) -> StatusStep {
        StatusStep {
            status: status.to_owned(),
            success: None,
            deployment_id: None,
            message: None,
            validation_result: None,
            errors: Vec::new(),
            numbers_as_strings: true,
            config_errors: Vec::new(),
            plan: None,
            reason: None,
            until_ms: None,
            delay_ms: 0,
        }
    }
}

/// The HTTP status an error code gets when the step does not give one: `Throttling*` 429,
/// `ServiceUnavailable` 503, `InternalError` 500, `*NotFound` 404, `Forbidden*`/`NoPermission`
/// 403, anything else 400.
pub fn default_status_for(code: &str) -> u16 {
    match code {
        code if code.starts_with("Throttling") => 429,
        "ServiceUnavailable" => 503,
        "InternalError" => 500,
        "NoPermission" => 403,
        code if code.starts_with("Forbidden") => 403,
        code if code.ends_with("NotFound") => 404,
        _ => 400,
    }
}

/// The progression of tickets no rule matches: INIT, EXECUTING, FINISHED with success.
fn default_progression() -> Vec<Step> {
    vec![Step::status("INIT"), Step::status("EXECUTING"), Step::finished_ok()]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    default: Option<Vec<toml::Value>>,
    #[serde(default)]
    tickets: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    kind: Option<String>,
    id: Option<String>,
    prefix: Option<String>,
    draft: Option<String>,
    draft_prefix: Option<String>,
    deployment: Option<String>,
    job: Option<String>,
    steps: Option<Vec<toml::Value>>,
}

fn parse_rule(index: usize, rule: RawRule) -> Result<TicketRule, ScenarioError> {
    let selectors: Vec<(&str, Selector)> = [
        rule.id.map(|value| ("id", Selector::Id(value))),
        rule.prefix.map(|value| ("prefix", Selector::Prefix(value))),
        rule.draft.map(|value| ("draft", Selector::Draft(value))),
        rule.draft_prefix.map(|value| ("draft_prefix", Selector::DraftPrefix(value))),
        rule.deployment.map(|value| ("deployment", Selector::Deployment(value))),
        rule.job.map(|value| ("job", Selector::Job(value))),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut location = format!("tickets[{index}]");
    let mut selectors = selectors.into_iter();
    let selector = match (selectors.next(), selectors.next()) {
        (Some((key, selector)), None) => {
            let value = match &selector {
                Selector::Id(value)
                | Selector::Prefix(value)
                | Selector::Draft(value)
                | Selector::DraftPrefix(value)
                | Selector::Deployment(value)
                | Selector::Job(value) => value.clone(),
            };
            location = format!("{location} ({key} = {value:?})");
            selector
        }
        (None, _) => {
            return Err(invalid(&location, "needs one of id, prefix, draft, draft_prefix, deployment or job"));
        }
        (Some((first, _)), Some((second, _))) => {
            return Err(invalid(&location, &format!("has both {first} and {second}; give exactly one")));
        }
    };
    let kind = match rule.kind.as_deref().map(str::parse::<TicketKind>).transpose() {
        Ok(kind) => kind,
        Err(error) => return Err(invalid(&location, &error.to_string())),
    };
    let Some(steps) = rule.steps else {
        return Err(invalid(&location, "has no steps"));
    };
    Ok(TicketRule { selector, kind, steps: parse_steps(steps, &location)? })
}

fn parse_steps(values: Vec<toml::Value>, location: &str) -> Result<Vec<Step>, ScenarioError> {
    if values.is_empty() {
        return Err(invalid(location, "the step list is empty"));
    }
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            value.try_into::<Step>().map_err(|error| invalid(&format!("{location} steps[{index}]"), &error.to_string()))
        })
        .collect()
}

fn invalid(location: &str, message: &str) -> ScenarioError {
    ScenarioError::Invalid { location: location.to_owned(), message: message.trim().to_owned() }
}

/// The flat table a step is written as; [`Step`] (de)serialises through it so that unknown keys
/// are refused by name and mixed-up keys get a message saying which key does not belong.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deployment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    validation_result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<StepIssue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    numbers_as_strings: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_errors: Option<Vec<StepConfigIssue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shape: Option<ErrorShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_found: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    html: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    truncated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    drop: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    garbage_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
}

impl RawStep {
    /// The keys that are set, besides `delay_ms`, in declaration order.
    fn keys_set(&self) -> Vec<&'static str> {
        let keys = [
            ("status", self.status.is_some()),
            ("success", self.success.is_some()),
            ("deployment_id", self.deployment_id.is_some()),
            ("message", self.message.is_some()),
            ("validation_result", self.validation_result.is_some()),
            ("errors", self.errors.is_some()),
            ("numbers_as_strings", self.numbers_as_strings.is_some()),
            ("config_errors", self.config_errors.is_some()),
            ("plan", self.plan.is_some()),
            ("reason", self.reason.is_some()),
            ("until_ms", self.until_ms.is_some()),
            ("error", self.error.is_some()),
            ("http_status", self.http_status.is_some()),
            ("retry_after_ms", self.retry_after_ms.is_some()),
            ("shape", self.shape.is_some()),
            ("not_found", self.not_found.is_some()),
            ("html", self.html.is_some()),
            ("body", self.body.is_some()),
            ("truncated", self.truncated.is_some()),
            ("drop", self.drop.is_some()),
            ("garbage_bytes", self.garbage_bytes.is_some()),
        ];
        keys.into_iter().filter(|(_, set)| *set).map(|(key, _)| key).collect()
    }
}

const KINDS: &str = "status, error, not_found, html, body, truncated, drop or garbage_bytes";

/// Why a step of a scenario is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// No kind key is set.
    #[error("a step needs one of {KINDS}")]
    NoKind,
    /// Several kind keys are set (named, joined with "and").
    #[error("a step has exactly one of {KINDS}, this one has {0}")]
    ManyKinds(String),
    /// A key that does not belong to the step's kind.
    #[error("`{key}` does not apply to a `{kind}` step (allowed: {allowed})")]
    Stray {
        /// The stray key.
        key: &'static str,
        /// The step's kind.
        kind: &'static str,
        /// The keys that do apply, comma-separated.
        allowed: String,
    },
    /// A kind flag written as `false`.
    #[error("`{0} = false` is not a step; leave the step out")]
    FalseFlag(&'static str),
    /// An HTTP status outside 100..=599.
    #[error("http_status {0} is not 100..=599")]
    HttpStatus(u16),
    /// An `error` step without a code.
    #[error("`error` needs a code, for example \"Throttling.User\"")]
    NoErrorCode,
}

impl TryFrom<RawStep> for Step {
    type Error = StepError;

    fn try_from(raw: RawStep) -> Result<Step, StepError> {
        let kinds: Vec<&str> = [
            ("status", raw.status.is_some()),
            ("error", raw.error.is_some()),
            ("not_found", raw.not_found.is_some()),
            ("html", raw.html.is_some()),
            ("body", raw.body.is_some()),
            ("truncated", raw.truncated.is_some()),
            ("drop", raw.drop.is_some()),
            ("garbage_bytes", raw.garbage_bytes.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| key)
        .collect();
        let kind = match kinds.as_slice() {
            [kind] => *kind,
            [] => return Err(StepError::NoKind),
            many => return Err(StepError::ManyKinds(many.join(" and "))),
        };
        let allowed: &[&str] = match kind {
            "status" => &[
                "status",
                "success",
                "deployment_id",
                "message",
                "validation_result",
                "errors",
                "numbers_as_strings",
                "config_errors",
                "plan",
                "reason",
                "until_ms",
            ],
            "error" => &["error", "http_status", "message", "retry_after_ms", "shape"],
            "not_found" => &["not_found", "message"],
            "html" => &["html", "http_status"],
            "body" => &["body", "http_status"],
            "garbage_bytes" => &["garbage_bytes", "http_status"],
            _ => &[kind],
        };
        if let Some(stray) = raw.keys_set().into_iter().find(|key| !allowed.contains(key)) {
            return Err(StepError::Stray { key: stray, kind, allowed: allowed.join(", ") });
        }
        let delay_ms = raw.delay_ms.unwrap_or(0);
        let flag = |value: Option<bool>| {
            if value == Some(false) { Err(StepError::FalseFlag(kind)) } else { Ok(()) }
        };
        let http_status = |default: u16| {
            let status = raw.http_status.unwrap_or(default);
            if (100..=599).contains(&status) { Ok(status) } else { Err(StepError::HttpStatus(status)) }
        };
        let step = match kind {
            "status" => Step::Status(StatusStep {
                status: raw.status.unwrap_or_default(),
                success: raw.success,
                deployment_id: raw.deployment_id,
                message: raw.message,
                validation_result: raw.validation_result,
                errors: raw.errors.unwrap_or_default(),
                numbers_as_strings: raw.numbers_as_strings.unwrap_or(true),
                config_errors: raw.config_errors.unwrap_or_default(),
                plan: raw.plan,
                reason: raw.reason,
                until_ms: raw.until_ms,
                delay_ms,
            }),
            "error" => {
                let code = raw.error.clone().unwrap_or_default();
                if code.trim().is_empty() {
                    return Err(StepError::NoErrorCode);
                }
                Step::Error(ErrorStep {
                    http_status: http_status(default_status_for(&code))?,
                    code,
                    message: raw.message,
                    retry_after_ms: raw.retry_after_ms,
                    shape: raw.shape.unwrap_or_default(),
                    delay_ms,
                })
            }
            "not_found" => {
                flag(raw.not_found)?;
                Step::NotFound { message: raw.message, delay_ms }
            }
            "html" => {
                flag(raw.html)?;
                Step::Html { http_status: http_status(502)?, delay_ms }
            }
            "body" => {
                Step::Text { text: raw.body.clone().unwrap_or_default(), http_status: http_status(503)?, delay_ms }
            }
            "truncated" => {
                flag(raw.truncated)?;
                Step::Truncated { delay_ms }
            }
            "drop" => {
                flag(raw.drop)?;
                Step::Drop { delay_ms }
            }
            _ => Step::Garbage { bytes: raw.garbage_bytes.unwrap_or(0), http_status: http_status(200)?, delay_ms },
        };
        Ok(step)
    }
}

impl From<Step> for RawStep {
    fn from(step: Step) -> RawStep {
        let delay_ms = (step.delay_ms() > 0).then_some(step.delay_ms());
        let mut raw = RawStep { delay_ms, ..RawStep::default() };
        match step {
            Step::Status(status) => {
                raw.status = Some(status.status);
                raw.success = status.success;
                raw.deployment_id = status.deployment_id;
                raw.message = status.message;
                raw.validation_result = status.validation_result;
                raw.errors = (!status.errors.is_empty()).then_some(status.errors);
                raw.numbers_as_strings = (!status.numbers_as_strings).then_some(false);
                raw.config_errors = (!status.config_errors.is_empty()).then_some(status.config_errors);
                raw.plan = status.plan;
                raw.reason = status.reason;
                raw.until_ms = status.until_ms;
            }
            Step::Error(error) => {
                raw.http_status = (error.http_status != default_status_for(&error.code)).then_some(error.http_status);
                raw.error = Some(error.code);
                raw.message = error.message;
                raw.retry_after_ms = error.retry_after_ms;
                raw.shape = (error.shape != ErrorShape::Gateway).then_some(error.shape);
            }
            Step::NotFound { message, .. } => {
                raw.not_found = Some(true);
                raw.message = message;
            }
            Step::Html { http_status, .. } => {
                raw.html = Some(true);
                raw.http_status = (http_status != 502).then_some(http_status);
            }
            Step::Text { text, http_status, .. } => {
                raw.body = Some(text);
                raw.http_status = (http_status != 503).then_some(http_status);
            }
            Step::Truncated { .. } => raw.truncated = Some(true),
            Step::Drop { .. } => raw.drop = Some(true),
            Step::Garbage { bytes, http_status, .. } => {
                raw.garbage_bytes = Some(bytes);
                raw.http_status = (http_status != 200).then_some(http_status);
            }
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../config/simulator-example.toml");
        let scenario = Scenario::from_toml_str(text).expect("the documented example is valid");
        assert!(!scenario.tickets.is_empty());
        assert_eq!(scenario.steps_for_ticket("t-ok")[0], Step::status("INIT"));
    }

    #[test]
    fn rules_pick_steps_in_file_order() {
        let scenario = Scenario::from_toml_str(
            r#"
            default = [{ status = "EXECUTING" }]

            [[tickets]]
            id = "fail-special"
            steps = [{ status = "FAILED", message = "boom" }]

            [[tickets]]
            prefix = "fail-"
            steps = [
                { error = "Throttling.User", retry_after_ms = 500, delay_ms = 20 },
                { status = "FINISHED", success = false, errors = [{ line = 3, message = "not found" }] },
            ]

            [[tickets]]
            draft_prefix = "draft-slow"
            steps = [
                { drop = true }, { garbage_bytes = 10, http_status = 500 }, { html = true }, { truncated = true },
                { not_found = true }, { error = "InternalError", shape = "service" },
                { body = "" }, { body = "Gateway Timeout", http_status = 504 },
            ]
            "#,
        )
        .expect("a valid scenario");
        assert_eq!(scenario.default, vec![Step::status("EXECUTING")]);
        assert!(matches!(&scenario.steps_for_ticket("fail-special")[0], Step::Status(s) if s.status == "FAILED"));
        let throttled = &scenario.steps_for_ticket("fail-1")[0];
        assert_eq!(
            throttled,
            &Step::Error(ErrorStep {
                code: "Throttling.User".to_owned(),
                http_status: 429,
                message: None,
                retry_after_ms: Some(500),
                shape: ErrorShape::Gateway,
                delay_ms: 20,
            })
        );
        assert_eq!(scenario.steps_for_ticket("other"), scenario.default.as_slice());
        let draft_steps = scenario.steps_for_draft("draft-slow-7").expect("a draft rule matches");
        assert_eq!(draft_steps[0], Step::Drop { delay_ms: 0 });
        assert_eq!(draft_steps[1], Step::Garbage { bytes: 10, http_status: 500, delay_ms: 0 });
        assert_eq!(draft_steps[2], Step::Html { http_status: 502, delay_ms: 0 });
        assert_eq!(draft_steps[6], Step::Text { text: String::new(), http_status: 503, delay_ms: 0 });
        assert_eq!(draft_steps[7], Step::Text { text: "Gateway Timeout".to_owned(), http_status: 504, delay_ms: 0 });
        assert!(scenario.steps_for_draft("draft-other").is_none());
    }

    #[test]
    fn an_empty_file_is_the_default_scenario() {
        assert_eq!(Scenario::from_toml_str("").expect("empty is valid"), Scenario::default());
    }

    #[test]
    fn unknown_keys_are_refused_by_name_and_place() {
        let top = Scenario::from_toml_str("defualt = []").expect_err("unknown top-level key");
        assert!(top.to_string().contains("defualt"), "{top}");

        let rule = Scenario::from_toml_str("[[tickets]]\nid = \"a\"\nstep = []\n").expect_err("unknown rule key");
        assert!(rule.to_string().contains("step"), "{rule}");

        let step = Scenario::from_toml_str(
            "[[tickets]]\nid = \"t-1\"\nsteps = [{ status = \"INIT\" }, { status = \"FINISHED\", sucess = true }]\n",
        )
        .expect_err("unknown step key");
        let text = step.to_string();
        assert!(text.contains("tickets[0] (id = \"t-1\") steps[1]"), "{text}");
        assert!(text.contains("sucess"), "{text}");
    }

    #[test]
    fn mixed_up_steps_are_explained() {
        let cases = [
            ("[{ status = \"INIT\", error = \"X\" }]", "status and error"),
            ("[{ delay_ms = 5 }]", "a step needs one of"),
            ("[{ error = \"X\", success = true }]", "`success` does not apply to a `error` step"),
            ("[{ drop = false }]", "`drop = false` is not a step"),
            ("[{ html = true, http_status = 1000 }]", "http_status 1000"),
            ("[]", "the step list is empty"),
        ];
        for (steps, expected) in cases {
            let error = Scenario::from_toml_str(&format!("default = {steps}")).expect_err(steps);
            assert!(error.to_string().contains(expected), "{steps}: {error}");
            assert!(error.to_string().contains("default"), "{steps}: {error}");
        }
        let no_selector = Scenario::from_toml_str("[[tickets]]\nsteps = [{ drop = true }]").expect_err("no selector");
        assert!(no_selector.to_string().contains("tickets[0]: needs one of id"), "{no_selector}");
        let two = Scenario::from_toml_str("[[tickets]]\nid = \"a\"\nprefix = \"b\"\nsteps = [{ drop = true }]")
            .expect_err("two selectors");
        assert!(two.to_string().contains("has both id and prefix"), "{two}");
    }

    #[test]
    fn steps_round_trip_through_json() {
        let steps = vec![
            Step::finished_ok().with_delay_ms(7),
            Step::error("Throttling.User"),
            Step::Garbage { bytes: 3, http_status: 200, delay_ms: 0 },
        ];
        let json = serde_json::to_string(&steps).expect("steps serialise");
        assert_eq!(
            json,
            r#"[{"status":"FINISHED","success":true,"delay_ms":7},{"error":"Throttling.User"},{"garbage_bytes":3}]"#
        );
        let back: Vec<Step> = serde_json::from_str(&json).expect("and parse back");
        assert_eq!(back, steps);
    }
}
