//! The `tickets` queue at the store boundary: [`Ticket`] and what writes to it carry, and the
//! methods to insert, claim with a lease, record progress or the final state, and the user
//! commands (list, show, retry, cancel).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::deliveries::NewDelivery;
use super::{Handoff, Lease, Store, dispatch, row};
use crate::domain::{
    Answer, ConfigIssue, RawJson, RowId, TicketKey, TicketKind, TicketState, TicketStatus, ValidationIssue,
};

/// What [`Store::claim_due_tickets`] takes: up to `limit` tickets due at `now`, leased to `lease`
/// for `lease_for`; a row without a deadline gets `created_at + default_deadline`.
#[derive(Debug, Clone)]
pub(super) struct DueClaim {
    pub lease: Lease,
    pub now: DateTime<Utc>,
    pub lease_for: Duration,
    pub limit: u32,
    pub default_deadline: Duration,
}

/// A row of `tickets`, read once at the store's boundary: the state as a [`TicketState`], instants
/// as `DateTime<Utc>`, the validation issues as a list. Only the store produces it (see
/// `store/row.rs` for how each column is read, and what a value that cannot be read becomes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ticket {
    /// Internal row ID.
    pub id: RowId,
    /// The cloud's ticket ID, namespace and workspace.
    #[serde(flatten)]
    pub key: TicketKey,
    /// Which asynchronous operation the ticket ID belongs to.
    pub kind: TicketKind,
    /// Region override for this ticket.
    pub region: Option<String>,
    /// Extra receiver for this ticket (honoured only when configured).
    pub webhook_url: Option<String>,
    /// When the daemon gives up and marks the ticket `expired`.
    #[serde(serialize_with = "row::optional_instant")]
    pub deadline_at: Option<DateTime<Utc>>,
    /// Where the ticket is in its life.
    pub state: TicketState,
    /// The last `ticketStatus` the API returned.
    pub ticket_status: Option<TicketStatus>,
    /// The deployment ID, once known.
    pub deployment_id: Option<String>,
    /// The API's `data.success`, once known.
    pub deploy_success: Option<bool>,
    /// The API's `data.message`.
    pub message: Option<String>,
    /// `artifactValidationDetail.validationResult`.
    pub validation_result: Option<String>,
    /// The validation issues of the last answer.
    pub validation_errors: Vec<ValidationIssue>,
    /// Validate: the draft's metadata and configuration problems.
    pub config_errors: Vec<ConfigIssue>,
    /// Resource plan: the plan text exactly as the API sent it.
    pub resource_plan: Option<String>,
    /// The raw `data` of the last answer, byte for byte.
    pub result_json: Option<RawJson>,
    /// The last API error code, or why the row was refused.
    pub error_code: Option<String>,
    /// The last API error message.
    pub error_message: Option<String>,
    /// Result requests made for this ticket.
    pub polls: i64,
    /// Request ID of the last API answer.
    pub request_id: Option<String>,
    /// Why a per-ticket webhook URL was not used, if it was not.
    pub webhook_note: Option<String>,
    /// When the row was inserted.
    #[serde(serialize_with = "row::instant")]
    pub created_at: DateTime<Utc>,
    /// When the daemon last wrote the row.
    #[serde(serialize_with = "row::instant")]
    pub updated_at: DateTime<Utc>,
    /// When the ticket is next due.
    #[serde(serialize_with = "row::instant")]
    pub next_poll_at: DateTime<Utc>,
    /// When the ticket reached its final state.
    #[serde(serialize_with = "row::optional_instant")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Consecutive "still running" answers.
    pub running_streak: i64,
    /// Consecutive failed calls.
    pub error_streak: i64,
    /// How many times a user put the ticket back with `retry`.
    pub retries: i64,
    /// The claim that holds the row, while it is being polled.
    pub lease_owner: Option<String>,
    /// When that claim lapses.
    #[serde(serialize_with = "row::optional_instant")]
    pub lease_until: Option<DateTime<Utc>>,
    /// Milliseconds from `created_at` to the last poll that saw the ticket still running.
    pub running_seen_ms: Option<i64>,
    /// Why `next_poll_at` is what it is, in words (none once final).
    pub schedule_note: Option<String>,
}

impl Ticket {
    /// The deadline; every claimed row has one.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.deadline_at
    }

    /// Whether the ticket waits to be polled (the daemon is not done with it).
    pub fn is_pending(&self) -> bool {
        self.state == TicketState::Pending
    }
}

/// A ticket to queue (the CLI's `enqueue` and `deploy`).
#[derive(Debug, Clone, Default)]
pub struct NewTicket {
    /// The cloud's ticket ID.
    pub ticket_id: String,
    /// The Flink namespace.
    pub namespace: String,
    /// The workspace ID.
    pub workspace: String,
    /// Region override.
    pub region: Option<String>,
    /// Extra receiver.
    pub webhook_url: Option<String>,
    /// Deadline override.
    pub deadline_at: Option<DateTime<Utc>>,
    /// Which operation the ID belongs to (`deploy` by default, as for a plain insert).
    pub kind: TicketKind,
    /// The deployment the ticket is about, when known at submit (a resource plan's).
    pub deployment_id: Option<String>,
}

/// What a final state announces: the webhook deliveries to write with it, and a note for the
/// ticket when its own webhook URL was not used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcement {
    /// One per receiver.
    pub deliveries: Vec<NewDelivery>,
    /// Stored in `tickets.webhook_note`.
    pub webhook_note: Option<String>,
    /// The delivery lease the deliveries are written under, for the writing daemon's own
    /// delivery loop; `None` writes them unleased and due at once, for any daemon.
    pub handoff: Option<Handoff>,
}

impl Announcement {
    /// What `webhook_note` says once the announcement is written: its own note, then one line for
    /// each delivery the outbox `refused` (with the reason; each refusal is logged too), or `None`
    /// when there is nothing to say.
    pub(in crate::store) fn note(&self, id: RowId, refused: &[(&NewDelivery, String)]) -> Option<String> {
        let mut notes: Vec<String> = self.webhook_note.iter().cloned().collect();
        for (delivery, reason) in refused {
            let url = crate::redact::redact_text(&delivery.url);
            tracing::error!(row = id.0, url = %url, reason = %reason, "webhook delivery dropped: the outbox refused it");
            notes.push(format!("webhook to {url} dropped: the delivery could not be written ({reason})"));
        }
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

/// The ticket is not final: when to poll next, and what the last call said.
#[derive(Debug, Clone, PartialEq)]
pub struct Reschedule {
    /// When the ticket is next due.
    pub next_poll_at: DateTime<Utc>,
    /// New value of `running_streak`.
    pub running_streak: i64,
    /// New value of `error_streak`.
    pub error_streak: i64,
    /// Whether a request was made (counts towards `polls`).
    pub polled: bool,
    /// Request ID of the answer.
    pub request_id: Option<String>,
    /// What the API said, when it answered successfully; clears the error columns.
    pub answer: Option<Answer>,
    /// (code, message) of a failed call.
    pub error: Option<(String, String)>,
    /// Milliseconds from `created_at` to this poll, when it saw the ticket still running; `None`
    /// keeps the stored value.
    pub running_seen_ms: Option<i64>,
    /// Why `next_poll_at` is what it is, in words (shown by `show`).
    pub note: String,
}

/// The ticket is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// `succeeded`, `failed` or `expired`.
    pub state: TicketState,
    /// Whether a request was made (counts towards `polls`).
    pub polled: bool,
    /// Request ID of the answer.
    pub request_id: Option<String>,
    /// The final answer, if the API gave one.
    pub answer: Option<Answer>,
    /// (code, message) of the error that ended it, if any; otherwise the last error stays.
    pub error: Option<(String, String)>,
}

impl Store {
    /// Inserts a ticket as a user's `INSERT` would.
    pub async fn insert_ticket(&self, ticket: &NewTicket) -> Result<Ticket, sqlx::Error> {
        dispatch!(self, backend => backend.insert_ticket(ticket).await)
    }

    /// The earliest `next_poll_at` of a pending ticket (a lease counts as not due until it lapses).
    pub async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        dispatch!(self, backend => backend.next_due_at().await)
    }

    /// What the most recent finishes of `kind` tickets in `workspace` and `namespace` say about
    /// run times, newest first, at most `limit`: tickets that a poll saw succeed or fail (not
    /// expired, cancelled, or refused without a request). Reads only those rows, however long
    /// the history.
    pub async fn recent_run_samples(
        &self,
        workspace: &str,
        namespace: &str,
        kind: TicketKind,
        limit: usize,
    ) -> Result<Vec<crate::domain::RunSample>, sqlx::Error> {
        dispatch!(self, backend => backend.recent_run_samples(workspace, namespace, kind, limit).await)
    }

    /// The latest `next_poll_at` of a pending ticket.
    pub async fn latest_due_at(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        dispatch!(self, backend => backend.latest_due_at().await)
    }

    /// Makes every pending, unleased ticket due at `now` whose `next_poll_at` lies beyond
    /// `horizon`, later than any delay the daemon schedules: such a time was computed before the
    /// wall clock stepped back. Leased rows are never touched: their `next_poll_at` is the lease's
    /// end, and making it due would let a second claim take a ticket whose poll is still running.
    /// Returns how many rows changed.
    pub async fn pull_back_due_times(&self, now: DateTime<Utc>, horizon: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        dispatch!(self, backend => backend.pull_back_due_times(now, horizon).await)
    }

    /// Claims up to `limit` due pending tickets in one atomic statement, earliest first.
    ///
    /// Each claimed row gets `lease_owner = lease` and `lease_until = next_poll_at = now +
    /// lease_for`, so no other claim can take it until the lease lapses, and a killed daemon's rows
    /// come due again by themselves. A row without a deadline gets `created_at + default_deadline`,
    /// fixed from then on.
    pub async fn claim_due_tickets(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        lease_for: Duration,
        limit: u32,
        default_deadline: Duration,
    ) -> Result<Vec<Ticket>, sqlx::Error> {
        let claim = DueClaim { lease: lease.clone(), now, lease_for, limit, default_deadline };
        dispatch!(self, backend => backend.claim_due_tickets(&claim).await)
    }

    /// Claims one ticket, like [`Store::claim_due_tickets`] but only row `id`: `None` when it is not
    /// pending, not due yet, or held by another lease. Lets a command follow its own ticket while
    /// a daemon on the same database polls the others (or this one, whichever claims first).
    pub async fn claim_ticket(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        lease_for: Duration,
        default_deadline: Duration,
    ) -> Result<Option<Ticket>, sqlx::Error> {
        dispatch!(self, backend => backend.claim_ticket(lease, id, now, lease_for, default_deadline).await)
    }

    /// Moves the lease `lease` holds on row `id` to `now + lease_for` (with `next_poll_at`, as a
    /// claim sets it), for a poll still running. Returns `false` (and writes nothing) when the
    /// lease is no longer ours or the ticket is no longer pending.
    pub async fn extend_ticket_lease(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        lease_for: Duration,
    ) -> Result<bool, sqlx::Error> {
        dispatch!(self, backend => backend.extend_ticket_lease(lease, id, now, lease_for).await)
    }

    /// Records a poll that did not end the ticket and releases the lease. Returns `false` (and
    /// writes nothing) when the lease is no longer ours or the ticket is no longer pending.
    pub async fn record_progress(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        update: &Reschedule,
    ) -> Result<bool, sqlx::Error> {
        dispatch!(self, backend => backend.record_progress(lease, id, now, update).await)
    }

    /// Records the final state and, in the same transaction, its [`Announcement`] (the webhook
    /// deliveries and note) built by `announce` from the final row. Returns the number of
    /// deliveries written, or `None` (and writes nothing) when the lease is no longer ours or the
    /// ticket is no longer pending.
    pub async fn record_final(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        finish: &Finish,
        announce: impl FnOnce(&Ticket) -> Announcement,
    ) -> Result<Option<usize>, sqlx::Error> {
        dispatch!(self, backend => backend.record_final(lease, id, now, finish, announce).await)
    }

    /// Moves every pending, unclaimed ticket of `workspace` due before `until` to `until`.
    /// A ticket whose deadline comes first is moved to its deadline instead, so that it expires
    /// on time.
    pub async fn postpone_workspace(&self, workspace: &str, until: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        dispatch!(self, backend => backend.postpone_workspace(workspace, until).await)
    }

    /// Releases every lease whose owner starts with `owner_prefix`, making those tickets due now
    /// (graceful shutdown hands unfinished work to the next start at once).
    pub async fn release_tickets(&self, owner_prefix: &str, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        dispatch!(self, backend => backend.release_tickets(owner_prefix, now).await)
    }

    /// Tickets, newest first, optionally in one state.
    /// A value that cannot be read shows as its text, or as the column's default.
    pub async fn list_tickets(
        &self,
        state: Option<TicketState>,
        kind: Option<TicketKind>,
        limit: u32,
    ) -> Result<Vec<Ticket>, sqlx::Error> {
        dispatch!(self, backend => backend.list_tickets(state, kind, limit).await)
    }

    /// Every row with this ticket ID (the same ID may exist in several workspaces/namespaces,
    /// and under several kinds), optionally narrowed by kind, workspace and namespace.
    pub async fn find_tickets(
        &self,
        ticket_id: &str,
        kind: Option<TicketKind>,
        workspace: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<Vec<Ticket>, sqlx::Error> {
        dispatch!(self, backend => backend.find_tickets(ticket_id, kind, workspace, namespace).await)
    }

    /// The row with this internal ID (read as [`Store::list_tickets`] reads rows).
    pub async fn ticket(&self, id: RowId) -> Result<Option<Ticket>, sqlx::Error> {
        dispatch!(self, backend => backend.ticket(id).await)
    }

    /// Puts a finished ticket back to `pending`, due now, with a fresh deadline and backoff. The
    /// previous run's answer (status, deployment, validation, plan, raw result, error, webhook note)
    /// is cleared, so that nothing announced later carries it; a resource plan keeps the deployment
    /// it was submitted for. Returns `false` when it is still pending.
    pub async fn retry_ticket(
        &self,
        id: RowId,
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        dispatch!(self, backend => backend.retry_ticket(id, now, deadline).await)
    }

    /// Stops polling a pending ticket. Returns `false` when it is not pending.
    pub async fn cancel_ticket(&self, id: RowId, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        dispatch!(self, backend => backend.cancel_ticket(id, now).await)
    }

    /// How many tickets are in each state.
    pub async fn count_tickets_by_state(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        dispatch!(self, backend => backend.count_tickets_by_state().await)
    }
}
