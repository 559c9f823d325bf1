//! Turns simulator decisions into HTTP answers in the real service's shapes: the success
//! envelope, gateway and service error bodies, proxy HTML pages, truncated JSON and streamed
//! filler. Also the response body type, which streams large bodies without building them.
//!
//! No state lives here: the caller passes the clock reading and the ticket it is answering for.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{CONTENT_TYPE, DATE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::scenario::{ErrorShape, ErrorStep, StatusStep};
use crate::domain::TicketKind;

/// A response body: either bytes in memory or `remaining` bytes of filler produced on demand.
#[derive(Debug)]
pub(crate) enum SimBody {
    /// The whole body; `None` once sent.
    Full(Option<Bytes>),
    /// Filler still to send.
    Filler {
        /// Bytes not yet sent.
        remaining: u64,
    },
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.get_mut() {
            SimBody::Full(bytes) => bytes.take().map(Frame::data),
            SimBody::Filler { remaining: 0 } => None,
            SimBody::Filler { remaining } => {
                let length = usize::try_from(*remaining).map_or(FILLER.len(), |remaining| remaining.min(FILLER.len()));
                *remaining -= length as u64;
                Some(Frame::data(Bytes::from_static(&FILLER[..length])))
            }
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, SimBody::Full(None) | SimBody::Filler { remaining: 0 })
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |bytes| bytes.len() as u64)),
            SimBody::Filler { remaining } => SizeHint::with_exact(*remaining),
        }
    }
}

/// What every answer needs to know about the moment and the request it answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp<'a> {
    /// The simulator's clock (with its offset), for the `Date` header.
    pub(crate) now: DateTime<Utc>,
    /// This answer's request id.
    pub(crate) request_id: &'a str,
    /// The `Host` the request named, echoed as the gateway's `HostId`.
    pub(crate) host: &'a str,
}

/// A JSON answer with the standard headers.
pub(crate) fn json_response(stamp: &Stamp<'_>, http_status: u16, body: &Value) -> Response<SimBody> {
    let bytes = serde_json::to_vec(body).expect("a JSON value always serialises");
    bytes_response(stamp, http_status, JSON, Bytes::from(bytes))
}

/// Any answer with the standard headers (`Date`, `Content-Type`, `x-acs-request-id`).
pub(crate) fn bytes_response(
    stamp: &Stamp<'_>,
    http_status: u16,
    content_type: &'static str,
    body: Bytes,
) -> Response<SimBody> {
    with_headers(stamp, http_status, content_type, SimBody::Full(Some(body)))
}

/// A success envelope around `data`.
pub(crate) fn success(stamp: &Stamp<'_>, data: Value) -> Response<SimBody> {
    json_response(stamp, 200, &success_envelope(stamp.request_id, data))
}

/// The data of a status step for `ticket_id` polled as `kind`, in that kind's result shape.
pub(crate) fn kind_status_data(kind: TicketKind, step: &StatusStep, ticket_id: &str) -> Value {
    match kind {
        TicketKind::Deploy => status_data(step, ticket_id),
        TicketKind::Validate => validate_data(step),
        TicketKind::ResourcePlan => resource_plan_data(step),
        TicketKind::HotUpdate => hot_update_data(step, ticket_id),
    }
}

/// The data of a status step for `ticket_id`, as `AsyncDraftDeployResult`.
pub(crate) fn status_data(step: &StatusStep, ticket_id: &str) -> Value {
    let mut data = Map::new();
    data.insert("ticketStatus".to_owned(), Value::from(step.status.as_str()));
    let deployment_id = match &step.deployment_id {
        Some(id) => Some(id.clone()),
        None if step.status == "FINISHED" && step.success == Some(true) => Some(derived_deployment_id(ticket_id)),
        None => None,
    };
    if let Some(deployment_id) = deployment_id {
        data.insert("deploymentId".to_owned(), Value::from(deployment_id));
    }
    if let Some(success) = step.success {
        data.insert("success".to_owned(), Value::from(success));
    }
    if let Some(message) = &step.message {
        data.insert("message".to_owned(), Value::from(message.as_str()));
    }
    if step.validation_result.is_some() || !step.errors.is_empty() {
        let mut detail = Map::new();
        if let Some(result) = &step.validation_result {
            detail.insert("validationResult".to_owned(), Value::from(result.as_str()));
        }
        // The API sends one object, not a list: the first error.
        if let Some(details) = first_error(step) {
            detail.insert("errorDetails".to_owned(), details);
        }
        data.insert("artifactValidationDetail".to_owned(), Value::Object(detail));
    }
    Value::Object(data)
}

/// `AsyncDraftValidateResult`: `draftValidationDetail` with one `sqlErrorDetail` object and a
/// `draftMetaInfoErrorDetails` list.
fn validate_data(step: &StatusStep) -> Value {
    let mut data = Map::new();
    data.insert("ticketStatus".to_owned(), Value::from(step.status.as_str()));
    if let Some(success) = step.success {
        data.insert("success".to_owned(), Value::from(success));
    }
    if let Some(message) = &step.message {
        data.insert("message".to_owned(), Value::from(message.as_str()));
    }
    if step.validation_result.is_some() || !step.errors.is_empty() || !step.config_errors.is_empty() {
        let mut detail = Map::new();
        if let Some(result) = &step.validation_result {
            detail.insert("sqlValidationResult".to_owned(), Value::from(result.as_str()));
        }
        if let Some(details) = first_error(step) {
            detail.insert("sqlErrorDetail".to_owned(), details);
        }
        if !step.config_errors.is_empty() {
            let list = serde_json::to_value(&step.config_errors).expect("config issues serialise");
            detail.insert("draftMetaInfoErrorDetails".to_owned(), list);
        }
        data.insert("draftValidationDetail".to_owned(), Value::Object(detail));
    }
    Value::Object(data)
}

/// `AsyncResourcePlanOperationResult`: no `success`; the plan is a string of JSON text.
fn resource_plan_data(step: &StatusStep) -> Value {
    let mut data = Map::new();
    data.insert("ticketStatus".to_owned(), Value::from(step.status.as_str()));
    if let Some(message) = &step.message {
        data.insert("message".to_owned(), Value::from(message.as_str()));
    }
    let plan = match &step.plan {
        Some(plan) if plan.is_empty() => None,
        Some(plan) => Some(plan.as_str()),
        None if step.status == "FINISHED" => Some(SAMPLE_PLAN),
        None => None,
    };
    if let Some(plan) = plan {
        data.insert("plan".to_owned(), Value::from(plan));
    }
    Value::Object(data)
}

/// `HotUpdateJobResult`: the status in `status.status`, a failure under `status.failure`.
fn hot_update_data(step: &StatusStep, hot_update_id: &str) -> Value {
    let mut status = Map::new();
    status.insert("status".to_owned(), Value::from(step.status.as_str()));
    status.insert("requestId".to_owned(), Value::from(new_request_id()));
    if step.reason.is_some() || (step.status == "FAILED" && step.message.is_some()) {
        let mut failure = Map::new();
        if let Some(reason) = &step.reason {
            failure.insert("reason".to_owned(), Value::from(reason.as_str()));
        }
        if let Some(message) = &step.message {
            failure.insert("message".to_owned(), Value::from(message.as_str()));
        }
        failure.insert("failureSeverity".to_owned(), Value::from("CRITICAL"));
        status.insert("failure".to_owned(), Value::Object(failure));
    }
    json!({
        "jobHotUpdateId": hot_update_id,
        "jobId": derived_deployment_id(&format!("job:{hot_update_id}")),
        "status": Value::Object(status),
        "hotUpdateParams": {"rescaleJobParam": {"jobParallelism": 4}},
        "targetResourceSetting": {"flinkConf": {"parallelism.default": "4"}},
    })
}

/// The plan a `FINISHED` resource-plan step sends when it names none (the docs' example shape).
pub(crate) const SAMPLE_PLAN: &str = r#"{"ssgProfiles":[{"name":"default","cpu":1.0,"heap":"1 gb","offHeap":"32 mb","managed":{},"extended":{}}],"nodes":[],"edges":[],"vertices":{}}"#;

/// The step's first validation error as the API's one `ValidationErrorDetails` object.
fn first_error(step: &StatusStep) -> Option<Value> {
    let issue = step.errors.first()?;
    let position = |value: Option<i64>| match value {
        Some(number) if step.numbers_as_strings => Value::from(number.to_string()),
        Some(number) => Value::from(number),
        None => Value::Null,
    };
    let mut details = Map::new();
    for (key, value) in [
        ("lineNumber", issue.line),
        ("columnNumber", issue.column),
        ("endLineNumber", issue.end_line),
        ("endColumnNumber", issue.end_column),
    ] {
        if value.is_some() {
            details.insert(key.to_owned(), position(value));
        }
    }
    if let Some(message) = &issue.message {
        details.insert("message".to_owned(), Value::from(message.as_str()));
    }
    Some(Value::Object(details))
}

/// An error step's answer in its shape, with `x-acs-retry-after` when it has a hint.
pub(crate) fn scripted_error(stamp: &Stamp<'_>, step: &ErrorStep) -> Response<SimBody> {
    let message = step.message.clone().unwrap_or_else(|| stock_message(&step.code));
    let mut response = match step.shape {
        ErrorShape::Gateway => gateway_error(stamp, step.http_status, &step.code, &message),
        ErrorShape::Service => service_error(stamp, step.http_status, &step.code, &message),
    };
    if let Some(retry_after_ms) = step.retry_after_ms {
        response.headers_mut().insert("x-acs-retry-after", HeaderValue::from(retry_after_ms));
    }
    response
}

/// `{"RequestId","HostId","Code","Message","Recommend"}`.
pub(crate) fn gateway_error(stamp: &Stamp<'_>, http_status: u16, code: &str, message: &str) -> Response<SimBody> {
    let body = json!({
        "RequestId": stamp.request_id,
        "HostId": stamp.host,
        "Code": code,
        "Message": message,
        "Recommend": format!(
            "https://api.aliyun.com/troubleshoot?q={code}&product=ververica&requestId={}",
            stamp.request_id
        ),
    });
    json_response(stamp, http_status, &body)
}

/// `{"requestId","success":false,"httpCode","errorCode","errorMessage"}`.
pub(crate) fn service_error(stamp: &Stamp<'_>, http_status: u16, code: &str, message: &str) -> Response<SimBody> {
    let body = json!({
        "requestId": stamp.request_id,
        "success": false,
        "httpCode": http_status,
        "errorCode": code,
        "errorMessage": message,
    });
    json_response(stamp, http_status, &body)
}

/// A proxy's HTML error page.
pub(crate) fn html_page(stamp: &Stamp<'_>, http_status: u16) -> Response<SimBody> {
    let reason = StatusCode::from_u16(http_status).ok().and_then(|status| status.canonical_reason()).unwrap_or("Error");
    let page = format!(
        "<html>\r\n<head><title>{http_status} {reason}</title></head>\r\n<body>\r\n<center><h1>{http_status} \
         {reason}</h1></center>\r\n<hr><center>Tengine</center>\r\n</body>\r\n</html>\r\n"
    );
    bytes_response(stamp, http_status, "text/html", Bytes::from(page))
}

/// A success envelope for `data`, cut in the middle; `Content-Length` matches what is sent.
pub(crate) fn truncated(stamp: &Stamp<'_>, data: Value) -> Response<SimBody> {
    let mut bytes = serde_json::to_vec(&success_envelope(stamp.request_id, data)).expect("JSON always serialises");
    bytes.truncate(bytes.len() / 2);
    bytes_response(stamp, 200, JSON, Bytes::from(bytes))
}

/// `bytes` bytes of filler, streamed, claiming to be JSON.
pub(crate) fn filler(stamp: &Stamp<'_>, http_status: u16, bytes: u64) -> Response<SimBody> {
    with_headers(stamp, http_status, JSON, SimBody::Filler { remaining: bytes })
}

/// The deployment id a `FINISHED` success gets when its step names none: a UUID-shaped hash of
/// the ticket id, so the same ticket always reports the same deployment.
pub(crate) fn derived_deployment_id(ticket_id: &str) -> String {
    let digest = Sha256::digest(ticket_id.as_bytes());
    uuid_shape(&hex::encode(&digest[..16]))
}

/// A fresh request id in Alibaba's upper-case UUID form.
pub(crate) fn new_request_id() -> String {
    uuid_shape(&format!("{:032X}", rand::random::<u128>()))
}

/// A fresh ticket id in lower-case UUID form.
pub(crate) fn new_ticket_id() -> String {
    uuid_shape(&format!("{:032x}", rand::random::<u128>()))
}

/// The stock message of a code, for error steps that give none.
fn stock_message(code: &str) -> String {
    match code {
        "Throttling.User" => "Request was denied due to user flow control.".to_owned(),
        "Throttling.Api" => "Request was denied due to api flow control.".to_owned(),
        code if code.starts_with("Throttling") => "Request was denied due to request throttling.".to_owned(),
        "ServiceUnavailable" => "The request has failed due to a temporary failure of the server.".to_owned(),
        "InternalError" => "The request processing has failed due to some unknown error.".to_owned(),
        code => format!("Simulated error {code}."),
    }
}

const JSON: &str = "application/json;charset=utf-8";

/// Filler for huge bodies; sliced, never copied.
static FILLER: [u8; 64 * 1024] = [b'x'; 64 * 1024];

fn success_envelope(request_id: &str, data: Value) -> Value {
    let mut envelope = Map::with_capacity(4);
    envelope.insert("requestId".to_owned(), Value::from(request_id));
    envelope.insert("success".to_owned(), Value::Bool(true));
    envelope.insert("httpCode".to_owned(), Value::from(200));
    envelope.insert("data".to_owned(), data);
    Value::Object(envelope)
}

fn with_headers(stamp: &Stamp<'_>, http_status: u16, content_type: &'static str, body: SimBody) -> Response<SimBody> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    let date = stamp.now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(date) = HeaderValue::from_str(&date) {
        headers.insert(DATE, date);
    }
    if let Ok(request_id) = HeaderValue::from_str(stamp.request_id) {
        headers.insert("x-acs-request-id", request_id);
    }
    response
}

fn uuid_shape(hex32: &str) -> String {
    format!("{}-{}-{}-{}-{}", &hex32[0..8], &hex32[8..12], &hex32[12..16], &hex32[16..20], &hex32[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::scenario::StepIssue;

    #[test]
    fn a_validation_failure_sends_one_error_object_with_string_positions() {
        let mut step = StatusStep::from_status("FINISHED");
        step.success = Some(false);
        step.validation_result = Some("VALIDATION_RESULT_INVALID_QUERY".to_owned());
        step.errors = vec![
            StepIssue { line: Some(3), column: Some(10), message: Some("bad".to_owned()), ..StepIssue::default() },
            StepIssue { line: Some(9), ..StepIssue::default() },
        ];
        assert_eq!(
            status_data(&step, "t"),
            json!({
                "ticketStatus": "FINISHED",
                "success": false,
                "artifactValidationDetail": {
                    "validationResult": "VALIDATION_RESULT_INVALID_QUERY",
                    "errorDetails": {"lineNumber": "3", "columnNumber": "10", "message": "bad"}
                }
            })
        );
        step.numbers_as_strings = false;
        assert_eq!(status_data(&step, "t")["artifactValidationDetail"]["errorDetails"]["lineNumber"], json!(3));
    }

    #[test]
    fn a_finished_success_gets_a_stable_deployment_id() {
        let mut step = StatusStep::from_status("FINISHED");
        step.success = Some(true);
        let first = status_data(&step, "ticket-1");
        assert_eq!(first["deploymentId"], json!(derived_deployment_id("ticket-1")));
        assert_eq!(first, status_data(&step, "ticket-1"));
        assert_ne!(first, status_data(&step, "ticket-2"));
        assert_eq!(derived_deployment_id("x").len(), 36);
    }
}
