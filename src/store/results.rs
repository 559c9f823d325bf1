//! A poll result as both backends write it: what it records ([`ResultWrite`]), the values it
//! binds and the names of their columns, and how a batch of them is split into statements. The
//! statements themselves are each backend's (`sqlite::results`, `postgres::results`).

use chrono::{DateTime, Utc};
use sqlx::query_builder::Separated;
use sqlx::{Database, Encode, Type};

use crate::domain::RowId;
use crate::store::{Finish, Lease, Reschedule, at, row};

/// One poll result to write with a backend's `record_many_on`.
#[derive(Debug, Clone, Copy)]
pub(in crate::store) struct ResultWrite<'a> {
    pub(in crate::store) lease: &'a Lease,
    pub(in crate::store) id: RowId,
    pub(in crate::store) now: DateTime<Utc>,
    pub(in crate::store) result: PollResult<'a>,
}

/// What a [`ResultWrite`] records.
#[derive(Debug, Clone, Copy)]
pub(in crate::store) enum PollResult<'a> {
    /// The ticket goes on: due time, streaks, and what the call said.
    Progress(&'a Reschedule),
    /// The ticket is done: state and `finished_at` (the caller writes the announcement).
    Final(&'a Finish),
}

/// The values one [`ResultWrite`] binds, in the order of the `v` columns both backends' statements
/// name ([`RESULT_COLUMNS`]): what the result sets, worked out once for SQLite and PostgreSQL alike.
pub(in crate::store) struct ResultValues {
    pub(in crate::store) id: i64,
    pub(in crate::store) lease: String,
    pub(in crate::store) final_state: Option<&'static str>,
    pub(in crate::store) next_poll_at: Option<String>,
    pub(in crate::store) running_streak: Option<i64>,
    pub(in crate::store) error_streak: Option<i64>,
    pub(in crate::store) polled: i64,
    pub(in crate::store) request_id: Option<String>,
    pub(in crate::store) has_answer: bool,
    pub(in crate::store) ticket_status: Option<String>,
    pub(in crate::store) deployment_id: Option<String>,
    pub(in crate::store) deploy_success: Option<bool>,
    pub(in crate::store) message: Option<String>,
    pub(in crate::store) validation_result: Option<String>,
    pub(in crate::store) validation_errors: Option<String>,
    pub(in crate::store) error_code: Option<String>,
    pub(in crate::store) error_message: Option<String>,
    pub(in crate::store) now: String,
    pub(in crate::store) config_errors: Option<String>,
    pub(in crate::store) resource_plan: Option<String>,
    pub(in crate::store) result_json: Option<String>,
    pub(in crate::store) running_seen_ms: Option<i64>,
    pub(in crate::store) schedule_note: Option<String>,
}

/// The names of the `v` columns a result write's rows bind, in [`ResultValues::bind`]'s order.
pub(in crate::store) const RESULT_COLUMNS: &str = "id, lease, final_state, next_poll_at, running_streak, error_streak, \
     polled, request_id, has_answer, ticket_status, deployment_id, deploy_success, message, validation_result, \
     validation_errors, error_code, error_message, now, config_errors, resource_plan, result_json, running_seen_ms, \
     schedule_note";

impl ResultValues {
    /// Binds the values as one row of a `VALUES` list, in the order of [`RESULT_COLUMNS`].
    pub(in crate::store) fn bind<'args, DB>(self, row: &mut Separated<'_, 'args, DB, &'static str>)
    where
        DB: Database,
        i64: Encode<'args, DB> + Type<DB>,
        bool: Encode<'args, DB> + Type<DB>,
        String: Encode<'args, DB> + Type<DB>,
        Option<i64>: Encode<'args, DB> + Type<DB>,
        Option<bool>: Encode<'args, DB> + Type<DB>,
        Option<String>: Encode<'args, DB> + Type<DB>,
        Option<&'static str>: Encode<'args, DB> + Type<DB>,
    {
        row.push_bind(self.id)
            .push_bind(self.lease)
            .push_bind(self.final_state)
            .push_bind(self.next_poll_at)
            .push_bind(self.running_streak)
            .push_bind(self.error_streak)
            .push_bind(self.polled)
            .push_bind(self.request_id)
            .push_bind(self.has_answer)
            .push_bind(self.ticket_status)
            .push_bind(self.deployment_id)
            .push_bind(self.deploy_success)
            .push_bind(self.message)
            .push_bind(self.validation_result)
            .push_bind(self.validation_errors)
            .push_bind(self.error_code)
            .push_bind(self.error_message)
            .push_bind(self.now)
            .push_bind(self.config_errors)
            .push_bind(self.resource_plan)
            .push_bind(self.result_json)
            .push_bind(self.running_seen_ms)
            .push_bind(self.schedule_note);
    }
}

impl ResultWrite<'_> {
    /// The values this write binds (see [`ResultValues`]).
    pub(in crate::store) fn values(&self) -> ResultValues {
        let (final_state, schedule, polled, request_id, answer, error, seen) = match self.result {
            PollResult::Progress(update) => (
                None,
                Some((update.next_poll_at, update.running_streak, update.error_streak)),
                update.polled,
                &update.request_id,
                update.answer.as_ref(),
                &update.error,
                Some((update.running_seen_ms, update.note.as_str())),
            ),
            PollResult::Final(finish) => (
                Some(finish.state.as_str()),
                None,
                finish.polled,
                &finish.request_id,
                finish.answer.as_ref(),
                &finish.error,
                None,
            ),
        };
        let columns = answer.map(|answer| answer.result.columns());
        let (error_code, error_message) = error.clone().unzip();
        ResultValues {
            id: self.id.0,
            lease: self.lease.0.clone(),
            final_state,
            next_poll_at: schedule.map(|(next_poll_at, _, _)| at(next_poll_at)),
            running_streak: schedule.map(|(_, running_streak, _)| running_streak),
            error_streak: schedule.map(|(_, _, error_streak)| error_streak),
            polled: i64::from(polled),
            request_id: request_id.clone(),
            has_answer: answer.is_some(),
            ticket_status: columns.and_then(|columns| columns.ticket_status.map(|status| status.as_wire().to_owned())),
            deployment_id: columns.and_then(|columns| columns.deployment_id.map(str::to_owned)),
            deploy_success: columns.and_then(|columns| columns.deploy_success),
            message: columns.and_then(|columns| columns.message.map(str::to_owned)),
            validation_result: columns.and_then(|columns| columns.validation_result.map(str::to_owned)),
            validation_errors: columns.map(|columns| row::issues_json(columns.validation_errors)),
            error_code,
            error_message,
            now: at(self.now),
            config_errors: columns.and_then(|columns| row::config_issues_json(columns.config_errors)),
            resource_plan: columns.and_then(|columns| columns.resource_plan.map(str::to_owned)),
            result_json: answer.and_then(|answer| answer.raw.as_ref().map(|raw| raw.as_str().to_owned())),
            running_seen_ms: seen.and_then(|(running_seen_ms, _)| running_seen_ms),
            schedule_note: seen.map(|(_, note)| note.to_owned()),
        }
    }
}

/// Who commits a batch of result writes (see `sqlite::results::record_and_claim_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store) enum Commit {
    /// The caller, once it has written the final states' announcements.
    ByCaller,
    /// The call that writes the batch, when none of its final states can have anything to
    /// announce: each is written only to a row that still names no receiver of its own. SQLite
    /// only; PostgreSQL leaves every commit to the caller.
    InCall,
}

/// What a batch of result writes did: each write's [`Written`], in order, the tickets of the
/// claim made in the same call, if one was, and whether the call committed.
#[derive(Debug)]
pub(in crate::store) struct Recorded {
    pub(in crate::store) written: Vec<Option<Written>>,
    /// `None` when no claim was made (none was asked for, or the backend leaves it to the caller).
    pub(in crate::store) claimed: Option<Result<Vec<crate::store::Ticket>, sqlx::Error>>,
    /// The transaction was committed in the call ([`Commit::InCall`] on SQLite).
    pub(in crate::store) committed: bool,
}

/// A result write that found its row under its lease, still pending, and changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store) struct Written {
    /// The row names a receiver of its own (`webhook_url`), as the write left it.
    pub(in crate::store) own_receiver: bool,
}

/// Most rows one multi-row write names (23 bound values each, well below SQLite's limit).
pub(in crate::store) const ROWS_PER_STATEMENT: usize = 256;

/// Splits writes (by index, in order) into groups for one statement each: at most
/// [`ROWS_PER_STATEMENT`], and never two writes to the same row (a lapsed lease's result and the
/// new owner's may meet in one batch), so that the statement's result says which write landed.
pub(in crate::store) fn statement_chunks(writes: &[ResultWrite<'_>]) -> Vec<Vec<usize>> {
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    let mut rows: Vec<std::collections::HashSet<i64>> = Vec::new();
    for (index, write) in writes.iter().enumerate() {
        // The first group from the end that does not hold this row yet, and has room, keeps
        // writes to one row in their order.
        let last_with_row = rows.iter().rposition(|ids| ids.contains(&write.id.0));
        let start = last_with_row.map_or(0, |position| position + 1);
        match (start..chunks.len()).find(|&group| chunks[group].len() < ROWS_PER_STATEMENT) {
            Some(group) => {
                chunks[group].push(index);
                rows[group].insert(write.id.0);
            }
            None => {
                chunks.push(vec![index]);
                rows.push(std::collections::HashSet::from([write.id.0]));
            }
        }
    }
    chunks
}
