//! The cloud's wire format: the response envelope, the deploy result, error bodies and how error
//! codes are classified. Parsing is deliberately lenient (numbers as strings, `null` or `""` for
//! absent, unknown fields ignored) because the service and its documentation disagree on details.

use std::time::Duration;

use serde_json::Value;

use super::{ApiError, ErrorClass, FlinkError};
use crate::domain::{DeployResult, RawJson, TicketStatus, ValidationIssue};

/// The parts of a successful envelope the daemon uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// `requestId` (or `RequestId`), for support tickets and logs.
    pub request_id: Option<String>,
    /// `data`, when present and not `null`.
    pub data: Option<Value>,
    /// `data` exactly as the body held it (spacing, key order, escapes), when present and not
    /// `null`.
    pub raw_data: Option<RawJson>,
}

/// Turns an HTTP answer into a [`Reply`] or a classified [`FlinkError`].
///
/// Success needs all three levels: a 2xx status, `success == true` in the envelope, and an
/// `httpCode` that is absent or 200. `retry_after` is the server's hint from the headers.
pub fn parse_reply(http_status: u16, retry_after: Option<Duration>, body: &[u8]) -> Result<Reply, FlinkError> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok().filter(Value::is_object);
    let Some(mut envelope) = parsed else {
        let error = ApiError {
            http_status: Some(http_status),
            code: None,
            message: Some(describe_unparsable(body)),
            request_id: None,
        };
        // An error status with a body we cannot read comes from a proxy or gateway in the way
        // (HTML, empty, plain text): transient whatever the status. An unreadable 2xx answer is
        // the API itself saying something we do not understand.
        return Err(match http_status {
            429 => FlinkError::RateLimited { error, retry_after },
            200..=299 => FlinkError::Decode(error),
            _ => FlinkError::Transient(error),
        });
    };

    let request_id = text_field(&envelope, &["requestId", "RequestId"]);
    let success = bool_field(&envelope, &["success"]);
    let http_code = integer_field(&envelope, &["httpCode"]);
    let ok_status = (200..300).contains(&http_status);
    if ok_status && success == Some(true) && http_code.is_none_or(|code| code == 200) {
        let data = envelope.as_object_mut().and_then(|fields| fields.remove("data")).filter(|data| !data.is_null());
        let raw_data = data.as_ref().and_then(|_| raw_data(body));
        return Ok(Reply { request_id, data, raw_data });
    }

    let error = ApiError {
        http_status: Some(http_status),
        code: text_field(&envelope, &["Code", "code", "errorCode"]),
        message: text_field(&envelope, &["Message", "message", "errorMessage"]),
        request_id,
    };
    Err(classify(error, retry_after))
}

/// Reads the `data` of GetDeployDeploymentDraftResult. Every field is optional.
pub fn parse_deploy_result(data: &Value) -> DeployResult {
    let detail = data.get("artifactValidationDetail").filter(|v| v.is_object());
    let validation_errors = detail.and_then(|detail| detail.get("errorDetails")).map(parse_issues).unwrap_or_default();
    DeployResult {
        ticket_status: text_field(data, &["ticketStatus"]).map(|word| TicketStatus::from_wire(&word)),
        deployment_id: text_field(data, &["deploymentId"]),
        success: bool_field(data, &["success"]),
        message: text_field(data, &["message"]),
        validation_result: detail.and_then(|detail| text_field(detail, &["validationResult"])),
        validation_errors,
    }
}

impl TicketStatus {
    /// The status a wire word names; a word the API does not document is kept as it came.
    pub fn from_wire(word: &str) -> TicketStatus {
        match word {
            "INIT" => TicketStatus::Init,
            "EXECUTING" => TicketStatus::Executing,
            "FINISHED" => TicketStatus::Finished,
            "FAILED" => TicketStatus::Failed,
            "HOT_UPDATING" => TicketStatus::HotUpdating,
            "HOT_UPDATED" => TicketStatus::HotUpdated,
            other => TicketStatus::Other(other.to_owned()),
        }
    }

    /// The wire word, as the API sends it and as `tickets.ticket_status` stores it.
    pub fn as_wire(&self) -> &str {
        match self {
            TicketStatus::Init => "INIT",
            TicketStatus::Executing => "EXECUTING",
            TicketStatus::Finished => "FINISHED",
            TicketStatus::Failed => "FAILED",
            TicketStatus::HotUpdating => "HOT_UPDATING",
            TicketStatus::HotUpdated => "HOT_UPDATED",
            TicketStatus::Other(word) => word,
        }
    }
}

impl std::fmt::Display for TicketStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_wire())
    }
}

impl serde::Serialize for TicketStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_wire())
    }
}

/// Reads `data.ticketId` of DeployDeploymentDraftAsync.
pub fn parse_submitted_ticket(data: Option<&Value>) -> Option<String> {
    data.and_then(|data| text_field(data, &["ticketId"]))
}

/// Reads a retry-after hint: `x-acs-retry-after` is milliseconds (as the official SDK reads it),
/// `Retry-After` is seconds. Unparsable values are ignored.
pub fn retry_after(acs_retry_after_ms: Option<&str>, retry_after_secs: Option<&str>) -> Option<Duration> {
    let from_ms = acs_retry_after_ms.and_then(|value| value.trim().parse::<u64>().ok()).map(Duration::from_millis);
    let from_secs = retry_after_secs.and_then(|value| value.trim().parse::<u64>().ok()).map(Duration::from_secs);
    from_ms.or(from_secs)
}

/// Classifies an API error as `flink-api.md`'s table says: by its code, falling back to the
/// HTTP status only for codes the table does not name (Alibaba's own tables disagree on
/// statuses). Only an error that names the ticket fails it; every other refusal is about our
/// configuration, credentials or access, and pauses polling instead.
pub fn classify(error: ApiError, retry_after: Option<Duration>) -> FlinkError {
    let class = match error.code.as_deref().and_then(classify_code) {
        Some(class) => class,
        None if names_the_ticket(&error) => ErrorClass::Ticket,
        None => classify_status_only(error.http_status.unwrap_or(0)),
    };
    match class {
        ErrorClass::Transient => FlinkError::Transient(error),
        ErrorClass::RateLimited => FlinkError::RateLimited { error, retry_after },
        ErrorClass::Credentials => FlinkError::Credentials(error),
        ErrorClass::Config => FlinkError::Config(error),
        ErrorClass::AccessDenied => FlinkError::AccessDenied(error),
        ErrorClass::Ticket => FlinkError::Ticket(error),
    }
}

/// The class of a code the table names; `None` for the others.
fn classify_code(code: &str) -> Option<ErrorClass> {
    let class = match code {
        "Throttling" | "Throttling.User" | "Throttling.Api" => ErrorClass::RateLimited,
        code if code.starts_with("Throttling") => ErrorClass::RateLimited,
        "ServiceUnavailable" | "InternalError" => ErrorClass::Transient,
        code if code.starts_with("InvalidSecurityToken") || code.starts_with("InvalidAccessKeyId") => {
            ErrorClass::Credentials
        }
        "SignatureDoesNotMatch" | "IncompleteSignature" | "SignatureNonceUsed" | "InvalidAction.NotFound" => {
            ErrorClass::Config
        }
        code if code.starts_with("InvalidTimeStamp") || code.starts_with("Missing") => ErrorClass::Config,
        // A poll's parameters are the namespace, the ticket and the workspace; an error that does
        // not name the ticket (checked by the caller) is about the request we build.
        code if code.starts_with("InvalidParameter") => ErrorClass::Config,
        "NoPermission" => ErrorClass::AccessDenied,
        code if code.starts_with("Forbidden") => ErrorClass::AccessDenied,
        _ => return None,
    };
    Some(class)
}

/// Whether the error is about the ticket itself: its code or its message names the ticket
/// (`TicketNotFound`, "the ticket ... does not exist").
fn names_the_ticket(error: &ApiError) -> bool {
    let mentions = |text: &str| text.to_ascii_lowercase().contains("ticket");
    error.code.as_deref().is_some_and(mentions) || error.message.as_deref().is_some_and(mentions)
}

/// The class of an answer without a code the table names: 429 is throttling, a 404 that does
/// not name the ticket means the request went to the wrong place (configuration), and anything
/// else is retried.
fn classify_status_only(http_status: u16) -> ErrorClass {
    match http_status {
        429 => ErrorClass::RateLimited,
        404 => ErrorClass::Config,
        _ => ErrorClass::Transient,
    }
}

/// The envelope's `data` as the raw text of the body, never re-serialised.
fn raw_data(body: &[u8]) -> Option<RawJson> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let envelope: Envelope<'_> = serde_json::from_slice(body).ok()?;
    RawJson::new(envelope.data?.get().to_owned()).ok()
}

pub(super) fn parse_issues(value: &Value) -> Vec<ValidationIssue> {
    match value {
        // The API documents one object; accept a list too.
        Value::Array(items) => items.iter().filter_map(parse_issue).collect(),
        other => parse_issue(other).into_iter().collect(),
    }
}

fn parse_issue(value: &Value) -> Option<ValidationIssue> {
    let object = value.as_object()?;
    let issue = ValidationIssue {
        line: position(object.get("lineNumber")),
        column: position(object.get("columnNumber")),
        end_line: position(object.get("endLineNumber")),
        end_column: position(object.get("endColumnNumber")),
        message: text_field(value, &["message"]),
    };
    let empty = issue.line.is_null()
        && issue.column.is_null()
        && issue.end_line.is_null()
        && issue.end_column.is_null()
        && issue.message.is_none();
    (!empty).then_some(issue)
}

/// A position as a JSON integer when it is numeric, else the trimmed text, else `null`.
pub(super) fn position(value: Option<&Value>) -> Value {
    match value {
        Some(Value::Number(number)) => number.as_i64().map_or_else(|| Value::Number(number.clone()), Value::from),
        Some(Value::String(text)) => {
            let text = text.trim();
            if is_blank(text) {
                Value::Null
            } else {
                text.parse::<i64>().map_or_else(|_| Value::from(text), Value::from)
            }
        }
        _ => Value::Null,
    }
}

/// The first of `names` holding a non-blank string (or a number, rendered as text).
pub(super) fn text_field(value: &Value, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| match value.get(*name)? {
        Value::String(text) if !is_blank(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    })
}

pub(super) fn bool_field(value: &Value, names: &[&str]) -> Option<bool> {
    names.iter().find_map(|name| match value.get(*name)? {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    })
}

pub(super) fn integer_field(value: &Value, names: &[&str]) -> Option<i64> {
    names.iter().find_map(|name| match value.get(*name)? {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    })
}

/// Empty, whitespace, or the documentation's literal two-character `""`.
pub(super) fn is_blank(text: &str) -> bool {
    let text = text.trim();
    text.is_empty() || text == "\"\""
}

fn describe_unparsable(body: &[u8]) -> String {
    const SHOWN: usize = 120;
    if body.is_empty() {
        return "empty response body".to_owned();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]);
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let ellipsis = if body.len() > SHOWN { "…" } else { "" };
    format!("unparsable response body ({} bytes): {}{ellipsis}", body.len(), text.trim())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reply(status: u16, body: &str) -> Result<Reply, FlinkError> {
        parse_reply(status, None, body.as_bytes())
    }

    #[test]
    fn success_needs_status_envelope_and_http_code() {
        let ok = reply(200, r#"{"requestId":"R1","success":true,"httpCode":200,"data":{"ticketStatus":"INIT"}}"#)
            .expect("a well-formed success");
        assert_eq!(ok.request_id.as_deref(), Some("R1"));
        assert_eq!(ok.data, Some(json!({"ticketStatus": "INIT"})));

        let envelope_false = reply(200, r#"{"requestId":"R2","success":false,"errorCode":"Throttling.User"}"#);
        assert!(matches!(envelope_false, Err(FlinkError::RateLimited { .. })));

        let http_code_500 = reply(200, r#"{"success":true,"httpCode":500}"#);
        assert!(matches!(http_code_500, Err(FlinkError::Transient(_))));
    }

    #[test]
    fn gateway_error_body_is_read_with_capitalised_keys() {
        let error = reply(
            400,
            r#"{"RequestId":"G1","HostId":"h","Code":"SignatureDoesNotMatch","Message":"server StringToSign is [x]"}"#,
        )
        .expect_err("a gateway error");
        let FlinkError::Config(api) = error else { panic!("expected a config error, got {error:?}") };
        assert_eq!(api.code.as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(api.request_id.as_deref(), Some("G1"));
    }

    #[test]
    fn codes_are_classified_as_the_spec_table_says() {
        let cases = [
            ("Throttling.Api", "RateLimited"),
            ("ServiceUnavailable", "Transient"),
            ("InternalError", "Transient"),
            ("InvalidSecurityToken.Expired", "Credentials"),
            ("InvalidAccessKeyId.NotFound", "Credentials"),
            ("SignatureDoesNotMatch", "Config"),
            ("IncompleteSignature", "Config"),
            ("InvalidTimeStamp.Expired", "Config"),
            ("SignatureNonceUsed", "Config"),
            ("MissingWorkspace", "Config"),
            ("InvalidAction.NotFound", "Config"),
            ("Forbidden.RAM", "AccessDenied"),
            ("NoPermission", "AccessDenied"),
            ("InvalidParameter", "Config"),
            ("InvalidParameter.TicketId", "Config"),
            ("TicketNotFound", "Ticket"),
            ("SomethingNew", "Transient"),
        ];
        for (code, expected) in cases {
            let error = classify(
                ApiError { http_status: Some(400), code: Some(code.to_owned()), message: None, request_id: None },
                None,
            );
            assert_eq!(class_name(&error), expected, "code {code}");
        }
    }

    #[test]
    fn only_an_error_naming_the_ticket_fails_it() {
        let error = |http_status, code: Option<&str>, message: Option<&str>| {
            class_name(&classify(
                ApiError {
                    http_status: Some(http_status),
                    code: code.map(str::to_owned),
                    message: message.map(str::to_owned),
                    request_id: None,
                },
                None,
            ))
        };
        assert_eq!(error(404, Some("TicketNotFound"), None), "Ticket");
        assert_eq!(error(400, Some("SomethingNew"), Some("The ticket t-1 does not exist.")), "Ticket");
        assert_eq!(error(400, Some("InvalidParameter"), Some("The ticket id is invalid.")), "Config", "the table wins");
        assert_eq!(error(404, Some("NamespaceNotFound"), Some("namespace ns not found")), "Config");
        assert_eq!(error(404, None, None), "Config", "a 404 that names nothing is a wrong endpoint or path");
        assert_eq!(error(404, Some("Forbidden.RAM"), Some("ticket")), "AccessDenied");
    }

    fn class_name(error: &FlinkError) -> &'static str {
        match error {
            FlinkError::Transient(_) => "Transient",
            FlinkError::RateLimited { .. } => "RateLimited",
            FlinkError::Credentials(_) => "Credentials",
            FlinkError::Config(_) => "Config",
            FlinkError::AccessDenied(_) => "AccessDenied",
            FlinkError::Ticket(_) => "Ticket",
            FlinkError::Decode(_) => "Decode",
            FlinkError::Network(_) => "Network",
        }
    }

    #[test]
    fn unreadable_error_answers_are_transient_and_unreadable_2xx_answers_are_decode_errors() {
        assert!(matches!(reply(200, "<html>bad gateway</html>"), Err(FlinkError::Decode(_))));
        assert!(matches!(reply(200, r#"{"success":tr"#), Err(FlinkError::Decode(_))));
        assert!(matches!(reply(200, "[1,2]"), Err(FlinkError::Decode(_))));
        for (status, body) in
            [(502, "<html>bad gateway</html>"), (503, ""), (504, "Gateway Timeout"), (408, ""), (404, "<html>")]
        {
            assert!(matches!(reply(status, body), Err(FlinkError::Transient(_))), "{status} {body:?}");
        }
        assert!(matches!(reply(429, "slow down"), Err(FlinkError::RateLimited { .. })));
        assert!(matches!(reply(404, r#"{"success":false}"#), Err(FlinkError::Config(_))));
        assert!(matches!(
            reply(404, r#"{"success":false,"errorMessage":"ticket t-1 not found"}"#),
            Err(FlinkError::Ticket(_))
        ));
    }

    #[test]
    fn deploy_result_tolerates_the_documented_oddities() {
        let data = json!({
            "ticketStatus": "FINISHED",
            "deploymentId": "\"\"",
            "success": "false",
            "message": "",
            "unknownField": {"x": 1},
            "artifactValidationDetail": {
                "validationResult": "VALIDATION_RESULT_INVALID_QUERY",
                "errorDetails": {"lineNumber": "3", "columnNumber": 10, "endLineNumber": "x", "message": "Object 'orders' not found"}
            }
        });
        let result = parse_deploy_result(&data);
        assert_eq!(result.ticket_status, Some(TicketStatus::Finished));
        assert_eq!(result.deployment_id, None);
        assert_eq!(result.success, Some(false));
        assert_eq!(result.message, None);
        assert_eq!(result.validation_result.as_deref(), Some("VALIDATION_RESULT_INVALID_QUERY"));
        assert_eq!(result.validation_errors.len(), 1);
        let issue = &result.validation_errors[0];
        assert_eq!(issue.line, json!(3));
        assert_eq!(issue.column, json!(10));
        assert_eq!(issue.end_line, json!("x"));
        assert_eq!(issue.end_column, Value::Null);
        assert_eq!(issue.to_string(), "3:10: Object 'orders' not found");
    }

    #[test]
    fn missing_and_null_fields_mean_absent() {
        assert_eq!(parse_deploy_result(&json!({})), DeployResult::default());
        assert_eq!(
            parse_deploy_result(&json!({"ticketStatus": null, "artifactValidationDetail": null})),
            DeployResult::default()
        );
    }

    #[test]
    fn retry_after_prefers_the_acs_header_in_milliseconds() {
        assert_eq!(retry_after(Some("1500"), Some("9")), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(None, Some("2")), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(Some("soon"), None), None);
    }
}
