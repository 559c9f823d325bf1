//! How a `tickets` row becomes a [`Ticket`]: the one place where stored text (the state, the
//! instants, the `validation_errors` JSON, the status word) is read back into types. Claims read
//! strictly and name the first column that cannot be read; listings read leniently, so that one
//! unreadable value never hides a row.

use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow as _, Row as _};

use super::tickets::Ticket;
use crate::clock::{format_instant, parse_instant};
use crate::domain::{ConfigIssue, RawJson, RowId, TicketKey, TicketState, TicketStatus, ValidationIssue};

/// A column of a claimed row holds a value the daemon cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column} holds a value the daemon cannot read")]
pub(super) struct Unreadable {
    /// The column's name.
    pub(super) column: String,
}

/// Reads a row strictly: `Err` names the first column whose value cannot be read as its type, a
/// state outside the `CHECK` constraint, an instant that is not one, or a value its column's
/// check refuses (see [`read_ticket_from`]). A claimed row always has a deadline (the claim sets
/// it from `created_at` when it was empty), so a missing one blames `created_at`, or the deadline
/// itself when `created_at` is a time (the claim cleared a deadline that was not one).
pub(super) fn read_ticket(row: &SqliteRow) -> Result<Ticket, Unreadable> {
    // SQLite keeps a flag as an integer: a `bool` reads any integer, the check takes 0 and 1.
    match row.try_get::<Option<i64>, _>("deploy_success") {
        Ok(None | Some(0 | 1)) => read_ticket_from(row),
        _ => Err(Unreadable { column: "deploy_success".to_owned() }),
    }
}

/// [`read_ticket`] for a row of any backend whose columns decode as `StoredTicket`'s (text
/// instants, JSON as text). Besides types, it refuses what the table's checks refuse and a result
/// write would keep: SQLite tests a column's check whenever a statement writes the column, even
/// with the value the row already had, so a negative count or JSON that is not JSON would have
/// every write of the row refused, and the row would never finish.
pub(super) fn read_ticket_from<R: sqlx::Row>(row: &R) -> Result<Ticket, Unreadable>
where
    for<'r> StoredTicket: sqlx::FromRow<'r, R>,
{
    let stored = StoredTicket::from_row(row).map_err(|error| Unreadable {
        column: match error {
            sqlx::Error::ColumnDecode { index, .. } => index.trim_matches('"').to_owned(),
            sqlx::Error::ColumnNotFound(column) => column,
            other => other.to_string(),
        },
    })?;
    let unreadable = |column: &str| Unreadable { column: column.to_owned() };
    let deadline_at = match stored.deadline_at.as_deref() {
        // The claim sets a missing deadline from `created_at`, and clears one that is not a time.
        None if parse_instant(&stored.created_at).is_some() => return Err(unreadable("deadline_at")),
        None => return Err(unreadable("created_at")),
        Some(text) => Some(parse_instant(text).ok_or_else(|| unreadable("deadline_at"))?),
    };
    let instant = |text: &str, column: &str| parse_instant(text).ok_or_else(|| unreadable(column));
    let optional = |text: &Option<String>, column: &str| text.as_deref().map(|text| instant(text, column)).transpose();
    let counts = [
        ("polls", Some(stored.polls)),
        ("running_streak", Some(stored.running_streak)),
        ("error_streak", Some(stored.error_streak)),
        ("retries", Some(stored.retries)),
        ("running_seen_ms", stored.running_seen_ms),
    ];
    if let Some((column, _)) = counts.into_iter().find(|(_, count)| count.is_some_and(|count| count < 0)) {
        return Err(unreadable(column));
    }
    if !is_json_array(&stored.validation_errors) {
        return Err(unreadable("validation_errors"));
    }
    if stored.config_errors.as_deref().is_some_and(|text| !is_json_array(text)) {
        return Err(unreadable("config_errors"));
    }
    let has_result_json = stored.result_json.is_some();
    let ticket = Ticket {
        id: RowId(stored.id),
        state: stored.state.parse().map_err(|_| unreadable("state"))?,
        kind: stored.kind.parse().map_err(|_| unreadable("kind"))?,
        deadline_at,
        created_at: instant(&stored.created_at, "created_at")?,
        updated_at: instant(&stored.updated_at, "updated_at")?,
        next_poll_at: instant(&stored.next_poll_at, "next_poll_at")?,
        finished_at: optional(&stored.finished_at, "finished_at")?,
        lease_until: optional(&stored.lease_until, "lease_until")?,
        ..stored.into_ticket_leniently()
    };
    // The lenient read keeps `result_json` only when it is JSON.
    if has_result_json && ticket.result_json.is_none() {
        return Err(unreadable("result_json"));
    }
    Ok(ticket)
}

/// Whether `text` is a JSON array, as the checks on the issue columns demand.
fn is_json_array(text: &str) -> bool {
    serde_json::from_str::<Vec<IgnoredAny>>(text).is_ok()
}

/// Reads a row of a backend whose column types already guarantee readable values (PostgreSQL):
/// strictly when it can, leniently otherwise (a row never claimed has no deadline yet). Only a
/// column that does not decode at all is an error.
pub(super) fn read_ticket_typed<R: sqlx::Row>(row: &R) -> Result<Ticket, sqlx::Error>
where
    for<'r> StoredTicket: sqlx::FromRow<'r, R>,
{
    match read_ticket_from(row) {
        Ok(ticket) => Ok(ticket),
        Err(_) => Ok(StoredTicket::from_row(row)?.into_ticket_leniently()),
    }
}

/// Reads a row for showing it: a value that cannot be read as its column's type shows as its
/// text, or as the type's default; an unreadable instant as the Unix epoch (or absent), an
/// unreadable state as `failed` (such a row is never claimed), unreadable issues as none.
pub(super) fn read_ticket_leniently(row: &SqliteRow) -> Ticket {
    if let Ok(stored) = StoredTicket::from_row(row) {
        return stored.into_ticket_leniently();
    }
    StoredTicket {
        id: number(row, "id"),
        ticket_id: text(row, "ticket_id"),
        kind: text(row, "kind"),
        namespace: text(row, "namespace"),
        workspace: text(row, "workspace"),
        region: optional_text(row, "region"),
        webhook_url: optional_text(row, "webhook_url"),
        deadline_at: optional_text(row, "deadline_at"),
        state: text(row, "state"),
        ticket_status: optional_text(row, "ticket_status"),
        deployment_id: optional_text(row, "deployment_id"),
        deploy_success: row.try_get("deploy_success").unwrap_or_default(),
        message: optional_text(row, "message"),
        validation_result: optional_text(row, "validation_result"),
        validation_errors: row.try_get("validation_errors").unwrap_or_else(|_| "[]".to_owned()),
        config_errors: optional_text(row, "config_errors"),
        resource_plan: optional_text(row, "resource_plan"),
        result_json: optional_text(row, "result_json"),
        error_code: optional_text(row, "error_code"),
        error_message: optional_text(row, "error_message"),
        polls: number(row, "polls"),
        request_id: optional_text(row, "request_id"),
        webhook_note: optional_text(row, "webhook_note"),
        created_at: text(row, "created_at"),
        updated_at: text(row, "updated_at"),
        next_poll_at: text(row, "next_poll_at"),
        finished_at: optional_text(row, "finished_at"),
        running_streak: number(row, "running_streak"),
        error_streak: number(row, "error_streak"),
        retries: number(row, "retries"),
        lease_owner: optional_text(row, "lease_owner"),
        lease_until: optional_text(row, "lease_until"),
        running_seen_ms: row.try_get("running_seen_ms").unwrap_or_default(),
        schedule_note: optional_text(row, "schedule_note"),
    }
    .into_ticket_leniently()
}

/// The JSON text stored in `validation_errors` for these issues.
pub(super) fn issues_json(issues: &[ValidationIssue]) -> String {
    serde_json::to_string(issues).expect("validation issues serialise to JSON")
}

/// The JSON text stored in `config_errors` for these issues (`NULL` when there are none).
pub(super) fn config_issues_json(issues: &[ConfigIssue]) -> Option<String> {
    (!issues.is_empty()).then(|| serde_json::to_string(issues).expect("config issues serialise to JSON"))
}

/// Serialises an instant as it is stored (`2026-11-28T01:23:45.678Z`).
pub(super) fn instant<S: serde::Serializer>(instant: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_instant(*instant))
}

/// Serialises an optional instant as it is stored, or `null`.
pub(super) fn optional_instant<S: serde::Serializer>(
    instant: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match instant {
        Some(instant) => serializer.serialize_str(&format_instant(*instant)),
        None => serializer.serialize_none(),
    }
}

/// Every column of `tickets` as stored.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct StoredTicket {
    id: i64,
    ticket_id: String,
    kind: String,
    namespace: String,
    workspace: String,
    region: Option<String>,
    webhook_url: Option<String>,
    deadline_at: Option<String>,
    state: String,
    ticket_status: Option<String>,
    deployment_id: Option<String>,
    deploy_success: Option<bool>,
    message: Option<String>,
    validation_result: Option<String>,
    validation_errors: String,
    config_errors: Option<String>,
    resource_plan: Option<String>,
    result_json: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    polls: i64,
    request_id: Option<String>,
    webhook_note: Option<String>,
    created_at: String,
    updated_at: String,
    next_poll_at: String,
    finished_at: Option<String>,
    running_streak: i64,
    error_streak: i64,
    retries: i64,
    lease_owner: Option<String>,
    lease_until: Option<String>,
    running_seen_ms: Option<i64>,
    schedule_note: Option<String>,
}

impl StoredTicket {
    fn into_ticket_leniently(self) -> Ticket {
        let instant = |text: &str| parse_instant(text).unwrap_or(DateTime::UNIX_EPOCH);
        let optional = |text: Option<String>| text.as_deref().and_then(parse_instant);
        Ticket {
            id: RowId(self.id),
            key: TicketKey { ticket_id: self.ticket_id, namespace: self.namespace, workspace: self.workspace },
            kind: self.kind.parse().unwrap_or_default(),
            region: self.region,
            webhook_url: self.webhook_url,
            deadline_at: optional(self.deadline_at),
            state: self.state.parse().unwrap_or(TicketState::Failed),
            ticket_status: self.ticket_status.as_deref().map(TicketStatus::from_wire),
            deployment_id: self.deployment_id,
            deploy_success: self.deploy_success,
            message: self.message,
            validation_result: self.validation_result,
            validation_errors: serde_json::from_str(&self.validation_errors).unwrap_or_default(),
            config_errors: self
                .config_errors
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or_default(),
            resource_plan: self.resource_plan,
            result_json: self.result_json.and_then(|text| RawJson::new(text).ok()),
            error_code: self.error_code,
            error_message: self.error_message,
            polls: self.polls,
            request_id: self.request_id,
            webhook_note: self.webhook_note,
            created_at: instant(&self.created_at),
            updated_at: instant(&self.updated_at),
            next_poll_at: instant(&self.next_poll_at),
            finished_at: optional(self.finished_at),
            running_streak: self.running_streak,
            error_streak: self.error_streak,
            retries: self.retries,
            lease_owner: self.lease_owner,
            lease_until: optional(self.lease_until),
            running_seen_ms: self.running_seen_ms,
            schedule_note: self.schedule_note,
        }
    }
}

/// An integer column, or 0 when its value is not an integer.
fn number(row: &SqliteRow, column: &str) -> i64 {
    row.try_get(column).unwrap_or_default()
}

/// A text column, or the text of whatever value it holds.
fn text(row: &SqliteRow, column: &str) -> String {
    optional_text(row, column).unwrap_or_default()
}

/// A nullable text column, or the text of whatever value it holds.
fn optional_text(row: &SqliteRow, column: &str) -> Option<String> {
    if let Ok(value) = row.try_get::<Option<String>, _>(column) {
        return value;
    }
    if let Ok(value) = row.try_get::<i64, _>(column) {
        return Some(value.to_string());
    }
    if let Ok(value) = row.try_get::<f64, _>(column) {
        return Some(value.to_string());
    }
    row.try_get::<Vec<u8>, _>(column).ok().map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}
