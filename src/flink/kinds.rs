//! What differs between the ticket kinds on the wire (`spec/flink-async-tickets.md`): each
//! kind's poll action and path (with the literal `%3A` where the template has a colon), its
//! submit call, and the parser that reads its `data` into its own type. Parsing is as lenient as
//! deploy's: every field optional, `null` like absent, numbers accepted where strings hold them.

use serde_json::Value;

use super::wire::{bool_field, is_blank, parse_deploy_result, parse_issues, text_field};
use super::{ApiError, FlinkClient, FlinkError, path_parameter};
use crate::domain::{
    Answer, ConfigIssue, HotUpdateResult, KindResult, RawJson, ResourcePlanResult, TicketKind, TicketStatus,
    ValidateResult,
};

/// The `x-acs-action` of a kind's poll.
pub fn poll_action(kind: TicketKind) -> &'static str {
    match kind {
        TicketKind::Deploy => "GetDeployDeploymentDraftResult",
        TicketKind::Validate => "GetValidateDeploymentDraftResult",
        TicketKind::ResourcePlan => "GetGenerateResourcePlanResult",
        TicketKind::HotUpdate => "GetHotUpdateJobResult",
    }
}

/// The path of a kind's poll, each parameter percent-encoded on its own. The resource plan's
/// `%3A` is part of the template and is sent and signed as it is.
pub fn poll_path(kind: TicketKind, namespace: &str, ticket_id: &str) -> Result<String, FlinkError> {
    let namespace = path_parameter(namespace)?;
    let id = path_parameter(ticket_id)?;
    Ok(match kind {
        TicketKind::Deploy => format!("/api/v2/namespaces/{namespace}/deployment-drafts/tickets/{id}/async-deploy"),
        TicketKind::Validate => {
            format!("/api/v2/namespaces/{namespace}/deployment-drafts/tickets/{id}/async-validate")
        }
        TicketKind::ResourcePlan => {
            format!("/api/v2/namespaces/{namespace}/deployments/tickets/{id}/resource-plan%3AasyncGenerate")
        }
        TicketKind::HotUpdate => format!("/api/v2/namespaces/{namespace}/jobs/hot-updates/{id}"),
    })
}

/// The path of ValidateDeploymentDraftAsync.
pub fn validate_path(namespace: &str) -> Result<String, FlinkError> {
    Ok(format!("/api/v2/namespaces/{}/deployment-drafts/async-validate", path_parameter(namespace)?))
}

/// The path of GenerateResourcePlanWithFlinkConfAsync (literal `%3A`).
pub fn resource_plan_path(namespace: &str, deployment_id: &str) -> Result<String, FlinkError> {
    Ok(format!(
        "/api/v2/namespaces/{}/deployments/{}/resource-plan%3AasyncGenerate",
        path_parameter(namespace)?,
        path_parameter(deployment_id)?
    ))
}

/// The path of HotUpdateJob (literal `%3A`).
pub fn hot_update_path(namespace: &str, job_id: &str) -> Result<String, FlinkError> {
    Ok(format!("/api/v2/namespaces/{}/jobs/{}%3AhotUpdate", path_parameter(namespace)?, path_parameter(job_id)?))
}

/// The body of ValidateDeploymentDraftAsync: the bare `DraftValidateParams` object, the target
/// as a plain string.
pub fn validate_body(draft_id: &str, target: Option<&str>) -> Vec<u8> {
    let mut body = serde_json::json!({ "deploymentDraftId": draft_id });
    if let Some(target) = target {
        body["deploymentTargetName"] = Value::from(target);
    }
    serde_json::to_vec(&body).expect("a JSON object of strings serialises")
}

/// The body of GenerateResourcePlanWithFlinkConfAsync: the Flink configuration itself as a JSON
/// object of strings (a key given twice keeps its last value), or no body when there is none.
pub fn resource_plan_body(flink_conf: &[(String, String)]) -> Option<Vec<u8>> {
    (!flink_conf.is_empty()).then(|| {
        let conf: serde_json::Map<String, Value> =
            flink_conf.iter().map(|(key, value)| (key.clone(), Value::from(value.as_str()))).collect();
        serde_json::to_vec(&conf).expect("a JSON object of strings serialises")
    })
}

/// Reads a poll's `data` (absent when the API sent none) as `kind`'s result, keeping `raw`.
pub fn parse_answer(kind: TicketKind, data: Option<&Value>, raw: Option<RawJson>) -> Answer {
    let empty = Value::Null;
    let data = data.unwrap_or(&empty);
    let result = match kind {
        TicketKind::Deploy => KindResult::Deploy(parse_deploy_result(data)),
        TicketKind::Validate => KindResult::Validate(parse_validate_result(data)),
        TicketKind::ResourcePlan => KindResult::ResourcePlan(parse_resource_plan_result(data, raw.as_ref())),
        TicketKind::HotUpdate => KindResult::HotUpdate(parse_hot_update_result(data)),
    };
    Answer { result, raw }
}

/// `AsyncDraftValidateResult`.
pub fn parse_validate_result(data: &Value) -> ValidateResult {
    let detail = data.get("draftValidationDetail").filter(|detail| detail.is_object());
    let field = |name: &str| detail.and_then(|detail| detail.get(name)).filter(|value| !value.is_null());
    let config_errors = match field("draftMetaInfoErrorDetails") {
        Some(Value::Array(items)) => items.iter().filter_map(parse_config_issue).collect(),
        Some(other) => parse_config_issue(other).into_iter().collect(),
        None => Vec::new(),
    };
    ValidateResult {
        ticket_status: status(data, "ticketStatus"),
        success: bool_field(data, &["success"]),
        message: text_field(data, &["message"]),
        validation_result: detail.and_then(|detail| text_field(detail, &["sqlValidationResult"])),
        validation_errors: field("sqlErrorDetail").map(parse_issues).unwrap_or_default(),
        config_errors,
    }
}

/// `AsyncResourcePlanOperationResult`. The plan is kept exactly as sent: the string's text, or,
/// should the API ever send the plan as a JSON object instead, that object's raw text.
pub fn parse_resource_plan_result(data: &Value, raw: Option<&RawJson>) -> ResourcePlanResult {
    let plan = match data.get("plan") {
        Some(Value::String(text)) if !is_blank(text) => Some(text.clone()),
        Some(Value::Object(_) | Value::Array(_)) => raw.and_then(raw_plan),
        _ => None,
    };
    ResourcePlanResult { ticket_status: status(data, "ticketStatus"), message: text_field(data, &["message"]), plan }
}

/// `HotUpdateJobResult`: the status is `status.status`.
pub fn parse_hot_update_result(data: &Value) -> HotUpdateResult {
    let state = data.get("status").filter(|state| state.is_object());
    let failure = state.and_then(|state| state.get("failure")).filter(|failure| failure.is_object());
    let failure_field = |name: &str| failure.and_then(|failure| text_field(failure, &[name]));
    HotUpdateResult {
        ticket_status: state.and_then(|state| status(state, "status")),
        job_id: text_field(data, &["jobId"]),
        failure_reason: failure_field("reason"),
        failure_message: failure_field("message"),
        failure_severity: failure_field("failureSeverity"),
    }
}

/// Reads the id a submit returned: `data.ticketId`, or `data.jobHotUpdateId` for a hot update.
pub fn parse_submitted_id(kind: TicketKind, data: Option<&Value>) -> Option<String> {
    let field = match kind {
        TicketKind::HotUpdate => "jobHotUpdateId",
        _ => "ticketId",
    };
    data.and_then(|data| text_field(data, &[field]))
}

/// A draft validation request (ValidateDeploymentDraftAsync).
#[derive(Debug, Clone)]
pub struct ValidateRequest<'a> {
    /// The Flink namespace.
    pub namespace: &'a str,
    /// The workspace ID.
    pub workspace: &'a str,
    /// The draft to check.
    pub draft_id: &'a str,
    /// The deployment target (queue) to check against, a plain string.
    pub target: Option<&'a str>,
    /// Region override.
    pub region: Option<&'a str>,
}

/// A resource plan request (GenerateResourcePlanWithFlinkConfAsync).
#[derive(Debug, Clone)]
pub struct ResourcePlanRequest<'a> {
    /// The Flink namespace.
    pub namespace: &'a str,
    /// The workspace ID.
    pub workspace: &'a str,
    /// The deployment to plan for.
    pub deployment_id: &'a str,
    /// Flink configuration, sent as a JSON object of strings; no body at all when empty.
    pub flink_conf: &'a [(String, String)],
    /// Region override.
    pub region: Option<&'a str>,
}

/// A hot update request (HotUpdateJob): it has no body.
#[derive(Debug, Clone)]
pub struct HotUpdateRequest<'a> {
    /// The Flink namespace.
    pub namespace: &'a str,
    /// The workspace ID.
    pub workspace: &'a str,
    /// The job instance to update.
    pub job_id: &'a str,
    /// Region override.
    pub region: Option<&'a str>,
}

/// What a submit returned: the id to poll and the API's request ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The ticket ID (`jobHotUpdateId` for a hot update).
    pub ticket_id: String,
    /// The request ID of the answer.
    pub request_id: Option<String>,
}

impl FlinkClient {
    /// ValidateDeploymentDraftAsync: starts a deep check of a draft.
    pub async fn validate_draft(&self, request: &ValidateRequest<'_>) -> Result<Submitted, FlinkError> {
        let body = validate_body(request.draft_id, request.target);
        let path = validate_path(request.namespace)?;
        self.submit(TicketKind::Validate, request.region, &path, request.workspace, Some(body)).await
    }

    /// GenerateResourcePlanWithFlinkConfAsync: starts a resource plan for a deployment.
    pub async fn generate_resource_plan(&self, request: &ResourcePlanRequest<'_>) -> Result<Submitted, FlinkError> {
        let body = resource_plan_body(request.flink_conf);
        let path = resource_plan_path(request.namespace, request.deployment_id)?;
        self.submit(TicketKind::ResourcePlan, request.region, &path, request.workspace, body).await
    }

    /// HotUpdateJob: starts a dynamic update of a running job; sent with no body.
    pub async fn hot_update_job(&self, request: &HotUpdateRequest<'_>) -> Result<Submitted, FlinkError> {
        let path = hot_update_path(request.namespace, request.job_id)?;
        self.submit(TicketKind::HotUpdate, request.region, &path, request.workspace, None).await
    }

    async fn submit(
        &self,
        kind: TicketKind,
        region: Option<&str>,
        path: &str,
        workspace: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Submitted, FlinkError> {
        let reply = self.call(region, "POST", path, submit_action(kind), workspace, body).await?;
        match parse_submitted_id(kind, reply.data.as_ref()) {
            Some(ticket_id) => Ok(Submitted { ticket_id, request_id: reply.request_id }),
            None => Err(FlinkError::Decode(ApiError {
                http_status: Some(200),
                code: None,
                message: Some(format!(
                    "the answer has no data.{}",
                    if kind == TicketKind::HotUpdate { "jobHotUpdateId" } else { "ticketId" }
                )),
                request_id: reply.request_id,
            })),
        }
    }
}

/// The `x-acs-action` of a kind's submit.
pub fn submit_action(kind: TicketKind) -> &'static str {
    match kind {
        TicketKind::Deploy => "DeployDeploymentDraftAsync",
        TicketKind::Validate => "ValidateDeploymentDraftAsync",
        TicketKind::ResourcePlan => "GenerateResourcePlanWithFlinkConfAsync",
        TicketKind::HotUpdate => "HotUpdateJob",
    }
}

fn status(value: &Value, name: &str) -> Option<TicketStatus> {
    text_field(value, &[name]).map(|word| TicketStatus::from_wire(&word))
}

fn parse_config_issue(value: &Value) -> Option<ConfigIssue> {
    value.as_object()?;
    let issue = ConfigIssue { reason: text_field(value, &["reason"]), message: text_field(value, &["message"]) };
    (issue.reason.is_some() || issue.message.is_some()).then_some(issue)
}

/// The raw text of `data.plan` when it is not a string.
fn raw_plan(raw: &RawJson) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        plan: Option<&'a serde_json::value::RawValue>,
    }
    let data: Data<'_> = serde_json::from_str(raw.as_str()).ok()?;
    data.plan.map(|plan| plan.get().to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::{Outcome, ValidationIssue};

    #[test]
    fn poll_paths_keep_the_literal_percent_3a_and_encode_each_parameter() {
        let path = |kind| poll_path(kind, "default-namespace", "t 1/x").expect("a path");
        assert_eq!(
            path(TicketKind::Validate),
            "/api/v2/namespaces/default-namespace/deployment-drafts/tickets/t%201%2Fx/async-validate"
        );
        assert_eq!(
            path(TicketKind::ResourcePlan),
            "/api/v2/namespaces/default-namespace/deployments/tickets/t%201%2Fx/resource-plan%3AasyncGenerate"
        );
        assert_eq!(path(TicketKind::HotUpdate), "/api/v2/namespaces/default-namespace/jobs/hot-updates/t%201%2Fx");
        assert_eq!(hot_update_path("ns", "j:1").expect("a path"), "/api/v2/namespaces/ns/jobs/j%3A1%3AhotUpdate");
        assert!(poll_path(TicketKind::HotUpdate, "ns", "..").is_err());
    }

    #[test]
    fn the_spec_validate_example_reads_into_positions_and_config_errors() {
        let data = json!({
            "ticketStatus": "FINISHED", "success": false, "message": "draft validation failed",
            "draftValidationDetail": {
                "sqlValidationResult": "VALIDATION_RESULT_INVALID_QUERY",
                "sqlErrorDetail": {"lineNumber": "3", "columnNumber": "8", "endLineNumber": "3",
                                   "endColumnNumber": "14", "message": "Object 'orders' not found"},
                "draftMetaInfoErrorDetails": [{"reason": "ENGINE_VERSION", "message": "engine version not supported"}]
            }
        });
        let result = parse_validate_result(&data);
        assert_eq!(result.success, Some(false));
        assert_eq!(result.validation_result.as_deref(), Some("VALIDATION_RESULT_INVALID_QUERY"));
        assert_eq!(
            result.validation_errors,
            vec![ValidationIssue {
                line: json!(3),
                column: json!(8),
                end_line: json!(3),
                end_column: json!(14),
                message: Some("Object 'orders' not found".to_owned()),
            }]
        );
        assert_eq!(result.config_errors[0].to_string(), "ENGINE_VERSION: engine version not supported");
        assert_eq!(KindResult::Validate(result).outcome(), Outcome::Failed { error: None });
        assert_eq!(
            parse_validate_result(&json!({"ticketStatus": "", "draftValidationDetail": null})).ticket_status,
            None
        );
    }

    #[test]
    fn a_plan_is_kept_exactly_as_sent() {
        let plan = "{ \"ssgProfiles\" : [ {\"name\":\"默认\",  \"cpu\":1.0}],\n\"nodes\":[] }";
        let body = serde_json::to_string(&json!({"ticketStatus": "FINISHED", "plan": plan})).expect("JSON");
        let data: Value = serde_json::from_str(&body).expect("JSON");
        let raw = RawJson::new(body).expect("JSON");
        let answer = parse_answer(TicketKind::ResourcePlan, Some(&data), Some(raw));
        let KindResult::ResourcePlan(result) = &answer.result else { panic!("a resource plan") };
        assert_eq!(result.plan.as_deref(), Some(plan));

        let object = r#"{"ticketStatus":"FINISHED","plan":{ "b":1 ,"a":[ ] }}"#;
        let data: Value = serde_json::from_str(object).expect("JSON");
        let raw = RawJson::new(object.to_owned()).expect("JSON");
        assert_eq!(parse_resource_plan_result(&data, Some(&raw)).plan.as_deref(), Some(r#"{ "b":1 ,"a":[ ] }"#));
        assert_eq!(parse_resource_plan_result(&json!({"ticketStatus": "FINISHED", "plan": ""}), None).plan, None);
    }

    #[test]
    fn a_hot_update_reads_status_status_and_its_failure() {
        let data = json!({
            "jobHotUpdateId": "123hashd0001", "jobId": "5af678c0",
            "status": {"status": "FAILED", "requestId": "X",
                       "failure": {"reason": "RescaleFailed", "message": "not enough resources", "failureSeverity": "CRITICAL"}},
            "hotUpdateParams": {"rescaleJobParam": {"jobParallelism": 4}}
        });
        let result = parse_hot_update_result(&data);
        assert_eq!(result.ticket_status, Some(TicketStatus::Failed));
        assert_eq!(result.job_id.as_deref(), Some("5af678c0"));
        assert_eq!(result.failure_severity.as_deref(), Some("CRITICAL"));
        assert_eq!(parse_submitted_id(TicketKind::HotUpdate, Some(&data)).as_deref(), Some("123hashd0001"));
        assert_eq!(parse_hot_update_result(&json!({"status": "HOT_UPDATED"})).ticket_status, None);
    }
}
