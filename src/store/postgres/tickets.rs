//! PostgreSQL's SQL for the `tickets` table: insert, claim with `FOR UPDATE SKIP LOCKED` and a
//! lease, record progress or the final state, and the user commands. Instants are bound as the
//! canonical text and cast (`$n::timestamptz`); rows are read with their instants as text, so
//! that `store/row.rs` reads them as it reads SQLite's.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;

use super::results::record_many_on;
use super::{PgStore, deliveries, guarded, in_transaction, instant_text};
use crate::domain::{RowId, RunSample, TicketKind, TicketState};
use crate::store::results::{PollResult, ResultWrite};
use crate::store::tickets::DueClaim;
use crate::store::{Announcement, Finish, Lease, NewTicket, Reschedule, Ticket, at, lease_end, row};

/// Every column of `tickets` as `row.rs` reads it, from the table (or CTE) aliased `t`.
pub(super) static TICKET_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    [
        "t.id, t.ticket_id, t.kind, t.namespace, t.workspace, t.region, t.webhook_url",
        concat!(instant_text!("t.deadline_at"), " AS deadline_at"),
        "t.state, t.ticket_status, t.deployment_id, t.deploy_success, t.message, t.validation_result",
        "t.validation_errors::text AS validation_errors, t.error_code, t.error_message, t.polls, t.request_id",
        "t.config_errors::text AS config_errors, t.resource_plan, t.result_json::text AS result_json",
        "t.webhook_note",
        concat!(instant_text!("t.created_at"), " AS created_at"),
        concat!(instant_text!("t.updated_at"), " AS updated_at"),
        concat!(instant_text!("t.next_poll_at"), " AS next_poll_at"),
        concat!(instant_text!("t.finished_at"), " AS finished_at"),
        "t.running_streak, t.error_streak, t.retries, t.lease_owner",
        concat!(instant_text!("t.lease_until"), " AS lease_until"),
        "t.running_seen_ms, t.schedule_note",
    ]
    .join(", ")
});

/// A row read with [`TICKET_COLUMNS`]. The column types and checks make every value readable.
pub(super) fn read(row: &PgRow) -> Result<Ticket, sqlx::Error> {
    row::read_ticket_typed(row)
}

/// `deadline` as an interval in seconds, for `created_at + make_interval(secs => …)`.
fn seconds(deadline: Duration) -> f64 {
    deadline.as_secs_f64()
}

impl PgStore {
    pub(in crate::store) async fn insert_ticket(&self, ticket: &NewTicket) -> Result<Ticket, sqlx::Error> {
        let sql = format!(
            "WITH t AS (INSERT INTO tickets (ticket_id, namespace, workspace, region, webhook_url, deadline_at,
                                         kind, deployment_id)
                        VALUES ($1, $2, $3, $4, $5, $6::timestamptz, $7, $8) RETURNING *)
             SELECT {} FROM t",
            *TICKET_COLUMNS
        );
        let row = guarded!(self, connection => {
            sqlx::query(&sql)
                .bind(&ticket.ticket_id)
                .bind(&ticket.namespace)
                .bind(&ticket.workspace)
                .bind(&ticket.region)
                .bind(&ticket.webhook_url)
                .bind(ticket.deadline_at.map(at))
                .bind(ticket.kind.as_str())
                .bind(&ticket.deployment_id)
                .fetch_one(&mut *connection)
                .await
        })?;
        read(&row)
    }

    pub(in crate::store) async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.due_edge("ASC").await
    }

    pub(in crate::store) async fn recent_run_samples(
        &self,
        workspace: &str,
        namespace: &str,
        kind: TicketKind,
        limit: usize,
    ) -> Result<Vec<RunSample>, sqlx::Error> {
        let rows: Vec<(i64, Option<i64>)> = guarded!(self, connection => {
            sqlx::query_as(
                "SELECT (extract(epoch FROM finished_at - created_at) * 1000)::bigint, running_seen_ms
                 FROM tickets
                 WHERE workspace = $1 AND namespace = $2 AND kind = $3 AND state IN ('succeeded', 'failed')
                   AND polls > 0 AND finished_at IS NOT NULL
                 ORDER BY finished_at DESC LIMIT $4",
            )
            .bind(workspace)
            .bind(namespace)
            .bind(kind.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *connection)
            .await
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(finish_ms, running_seen_ms)| {
                let finish_seen = Duration::from_millis(u64::try_from(finish_ms).ok()?);
                let running_seen = running_seen_ms
                    .and_then(|ms| u64::try_from(ms).ok())
                    .map_or(Duration::ZERO, Duration::from_millis)
                    .min(finish_seen);
                Some(RunSample { running_seen, finish_seen })
            })
            .collect())
    }

    pub(in crate::store) async fn latest_due_at(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.due_edge("DESC").await
    }

    async fn due_edge(&self, order: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let sql = format!(
            "SELECT {} FROM tickets WHERE state = 'pending' ORDER BY next_poll_at {order}, id {order} LIMIT 1",
            instant_text!("next_poll_at")
        );
        let next: Option<String> =
            guarded!(self, connection => sqlx::query_scalar(&sql).fetch_optional(&mut *connection).await)?;
        Ok(next.as_deref().and_then(crate::clock::parse_instant))
    }

    pub(in crate::store) async fn pull_back_due_times(
        &self,
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        guarded!(self, connection => {
            sqlx::query(
                "UPDATE tickets SET next_poll_at = $1::timestamptz
                 WHERE state = 'pending' AND next_poll_at > $2::timestamptz AND lease_owner IS NULL",
            )
            .bind(at(now))
            .bind(at(horizon))
            .execute(&mut *connection)
            .await
            .map(|done| done.rows_affected())
        })
    }

    /// One statement (see [`claim_due_on`]).
    pub(in crate::store) async fn claim_due_tickets(&self, claim: &DueClaim) -> Result<Vec<Ticket>, sqlx::Error> {
        guarded!(self, connection => claim_due_on(connection, claim).await)
    }

    pub(in crate::store) async fn claim_ticket(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        lease_for: Duration,
        default_deadline: Duration,
    ) -> Result<Option<Ticket>, sqlx::Error> {
        let sql = format!(
            "WITH t AS (
                 UPDATE tickets
                 SET {CLAIM_SET}
                 WHERE id = $5 AND state = 'pending' AND next_poll_at <= $3::timestamptz
                 RETURNING *
             )
             SELECT {} FROM t",
            *TICKET_COLUMNS
        );
        let row = guarded!(self, connection => {
            sqlx::query(&sql)
                .bind(&lease.0)
                .bind(lease_end(now, lease_for))
                .bind(at(now))
                .bind(seconds(default_deadline))
                .bind(id.0)
                .fetch_optional(&mut *connection)
                .await
        })?;
        row.as_ref().map(read).transpose()
    }

    pub(in crate::store) async fn extend_ticket_lease(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        lease_for: Duration,
    ) -> Result<bool, sqlx::Error> {
        let updated = guarded!(self, connection => {
            sqlx::query(
                "UPDATE tickets SET lease_until = $1::timestamptz, next_poll_at = $1::timestamptz
                 WHERE id = $2 AND lease_owner = $3 AND state = 'pending'",
            )
            .bind(lease_end(now, lease_for))
            .bind(id.0)
            .bind(&lease.0)
            .execute(&mut *connection)
            .await
        })?;
        Ok(updated.rows_affected() == 1)
    }

    pub(in crate::store) async fn record_progress(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        update: &Reschedule,
    ) -> Result<bool, sqlx::Error> {
        guarded!(self, connection => record_progress_on(connection, lease, id, now, update).await)
    }

    pub(in crate::store) async fn record_final(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        finish: &Finish,
        announce: impl FnOnce(&Ticket) -> Announcement,
    ) -> Result<Option<usize>, sqlx::Error> {
        in_transaction!(self, connection => record_final_on(connection, lease, id, now, finish, announce).await)
    }

    pub(in crate::store) async fn postpone_workspace(
        &self,
        workspace: &str,
        until: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        guarded!(self, connection => {
            sqlx::query(
                "UPDATE tickets SET next_poll_at = LEAST($1::timestamptz, COALESCE(deadline_at, $1::timestamptz))
                 WHERE state = 'pending' AND workspace = $2 AND lease_owner IS NULL
                   AND next_poll_at < LEAST($1::timestamptz, COALESCE(deadline_at, $1::timestamptz))",
            )
            .bind(at(until))
            .bind(workspace)
            .execute(&mut *connection)
            .await
            .map(|done| done.rows_affected())
        })
    }

    pub(in crate::store) async fn release_tickets(
        &self,
        owner_prefix: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        guarded!(self, connection => {
            sqlx::query(
                "UPDATE tickets SET lease_owner = NULL, lease_until = NULL, next_poll_at = $2::timestamptz
                 WHERE state = 'pending' AND starts_with(lease_owner, $1)",
            )
            .bind(owner_prefix)
            .bind(at(now))
            .execute(&mut *connection)
            .await
            .map(|done| done.rows_affected())
        })
    }

    pub(in crate::store) async fn list_tickets(
        &self,
        state: Option<TicketState>,
        kind: Option<TicketKind>,
        limit: u32,
    ) -> Result<Vec<Ticket>, sqlx::Error> {
        let sql = format!(
            "SELECT {} FROM tickets AS t WHERE ($1::text IS NULL OR t.state = $1) AND ($3::text IS NULL OR t.kind = $3)
             ORDER BY t.created_at DESC, t.id DESC LIMIT $2",
            *TICKET_COLUMNS
        );
        let rows = guarded!(self, connection => {
            sqlx::query(&sql)
                .bind(state.map(TicketState::as_str))
                .bind(i64::from(limit))
                .bind(kind.map(TicketKind::as_str))
                .fetch_all(&mut *connection)
                .await
        })?;
        rows.iter().map(read).collect()
    }

    pub(in crate::store) async fn find_tickets(
        &self,
        ticket_id: &str,
        kind: Option<TicketKind>,
        workspace: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<Vec<Ticket>, sqlx::Error> {
        let sql = format!(
            "SELECT {} FROM tickets AS t WHERE t.ticket_id = $1 AND ($2::text IS NULL OR t.workspace = $2)
             AND ($3::text IS NULL OR t.namespace = $3) AND ($4::text IS NULL OR t.kind = $4) ORDER BY t.id",
            *TICKET_COLUMNS
        );
        let rows = guarded!(self, connection => {
            sqlx::query(&sql)
                .bind(ticket_id)
                .bind(workspace)
                .bind(namespace)
                .bind(kind.map(TicketKind::as_str))
                .fetch_all(&mut *connection)
                .await
        })?;
        rows.iter().map(read).collect()
    }

    pub(in crate::store) async fn ticket(&self, id: RowId) -> Result<Option<Ticket>, sqlx::Error> {
        let sql = format!("SELECT {} FROM tickets AS t WHERE t.id = $1", *TICKET_COLUMNS);
        let row = guarded!(self, connection => sqlx::query(&sql).bind(id.0).fetch_optional(&mut *connection).await)?;
        row.as_ref().map(read).transpose()
    }

    pub(in crate::store) async fn retry_ticket(
        &self,
        id: RowId,
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let updated = guarded!(self, connection => {
            sqlx::query(
                "UPDATE tickets SET state = 'pending', retries = retries + 1, next_poll_at = $2::timestamptz,
                     updated_at = $2::timestamptz, deadline_at = $3::timestamptz, finished_at = NULL,
                     running_streak = 0, error_streak = 0, error_code = NULL, error_message = NULL,
                     lease_owner = NULL, lease_until = NULL, ticket_status = NULL,
                     deployment_id = CASE WHEN kind = 'resource_plan' THEN deployment_id END,
                     deploy_success = NULL, message = NULL, validation_result = NULL, validation_errors = '[]',
                     request_id = NULL, webhook_note = NULL, config_errors = NULL, resource_plan = NULL,
                     result_json = NULL, running_seen_ms = NULL,
                     schedule_note = NULL
                 WHERE id = $1 AND state <> 'pending'",
            )
            .bind(id.0)
            .bind(at(now))
            .bind(at(deadline))
            .execute(&mut *connection)
            .await
        })?;
        Ok(updated.rows_affected() == 1)
    }

    pub(in crate::store) async fn cancel_ticket(&self, id: RowId, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        let updated = guarded!(self, connection => {
            sqlx::query(
                "UPDATE tickets SET state = 'cancelled', finished_at = $2::timestamptz, updated_at = $2::timestamptz,
                     lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id.0)
            .bind(at(now))
            .execute(&mut *connection)
            .await
        })?;
        Ok(updated.rows_affected() == 1)
    }

    pub(in crate::store) async fn count_tickets_by_state(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        guarded!(self, connection => {
            sqlx::query_as("SELECT state, count(*) FROM tickets GROUP BY state").fetch_all(&mut *connection).await
        })
    }
}

/// What a claim sets, in both claim statements: `lease_owner = $1` and `lease_until =
/// next_poll_at = $2` (the lease's end), `updated_at = $3` (now), and for a row without a
/// deadline `created_at + $4` seconds, fixed from then on.
const CLAIM_SET: &str = "lease_owner = $1, lease_until = $2::timestamptz, next_poll_at = $2::timestamptz,
                     updated_at = $3::timestamptz,
                     deadline_at = COALESCE(tickets.deadline_at, tickets.created_at + make_interval(secs => $4))";

/// Claims due tickets in one statement: the due rows are locked in queue order, skipping rows
/// another claim holds (`FOR UPDATE SKIP LOCKED`), and leased; concurrent claimers never get the
/// same row.
pub(in crate::store) async fn claim_due_on(
    connection: &mut PgConnection,
    claim: &DueClaim,
) -> Result<Vec<Ticket>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH due AS (
                 SELECT id, next_poll_at AS was_due FROM tickets
                 WHERE state = 'pending' AND next_poll_at <= $3::timestamptz
                 ORDER BY next_poll_at, id LIMIT $5
                 FOR UPDATE SKIP LOCKED
             ),
             claimed AS (
                 UPDATE tickets
                 SET {CLAIM_SET}
                 FROM due WHERE tickets.id = due.id
                 RETURNING tickets.*, due.was_due
             )
             SELECT {} FROM claimed AS t ORDER BY t.was_due, t.id",
            *TICKET_COLUMNS
        )
    });
    let DueClaim { lease, now, lease_for, limit, default_deadline } = claim;
    let rows = sqlx::query(&SQL)
        .bind(&lease.0)
        .bind(lease_end(*now, *lease_for))
        .bind(at(*now))
        .bind(seconds(*default_deadline))
        .bind(i64::from(*limit))
        .fetch_all(&mut *connection)
        .await?;
    rows.iter().map(read).collect()
}

/// One progress write on a given connection (the caller owns any transaction).
pub(in crate::store) async fn record_progress_on(
    connection: &mut PgConnection,
    lease: &Lease,
    id: RowId,
    now: DateTime<Utc>,
    update: &Reschedule,
) -> Result<bool, sqlx::Error> {
    let write = ResultWrite { lease, id, now, result: PollResult::Progress(update) };
    Ok(record_many_on(connection, &[write]).await?[0].is_some())
}

/// The rows with these IDs, as the caller's transaction sees them.
pub(in crate::store) async fn tickets_on(
    connection: &mut PgConnection,
    ids: &[RowId],
) -> Result<Vec<Ticket>, sqlx::Error> {
    let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
    let sql = format!("SELECT {} FROM tickets AS t WHERE t.id = ANY($1)", *TICKET_COLUMNS);
    let rows = sqlx::query(&sql).bind(&ids).fetch_all(&mut *connection).await?;
    rows.iter().map(read).collect()
}

/// Writes a final state's announcement (see `sqlite::tickets::write_announcement_on`). Each
/// delivery is inserted under a savepoint: on PostgreSQL a refused statement would otherwise
/// abort the whole transaction.
pub(in crate::store) async fn write_announcement_on(
    connection: &mut PgConnection,
    id: RowId,
    now: DateTime<Utc>,
    announcement: &Announcement,
) -> Result<usize, sqlx::Error> {
    let mut refused = Vec::new();
    let mut written = 0;
    for delivery in &announcement.deliveries {
        match deliveries::insert(&mut *connection, delivery, now, announcement.handoff.as_ref()).await? {
            crate::store::deliveries::Inserted::Written => written += 1,
            crate::store::deliveries::Inserted::Refused(reason) => refused.push((delivery, reason)),
        }
    }
    if let Some(note) = announcement.note(id, &refused) {
        sqlx::query("UPDATE tickets SET webhook_note = $1 WHERE id = $2")
            .bind(note)
            .bind(id.0)
            .execute(&mut *connection)
            .await?;
    }
    Ok(written)
}

/// One final write and its announcement, inside the caller's transaction.
pub(in crate::store) async fn record_final_on(
    connection: &mut PgConnection,
    lease: &Lease,
    id: RowId,
    now: DateTime<Utc>,
    finish: &Finish,
    announce: impl FnOnce(&Ticket) -> Announcement,
) -> Result<Option<usize>, sqlx::Error> {
    let write = ResultWrite { lease, id, now, result: PollResult::Final(finish) };
    if record_many_on(connection, &[write]).await?[0].is_none() {
        return Ok(None);
    }
    let Some(ticket) = tickets_on(connection, &[id]).await?.pop() else {
        return Ok(None);
    };
    write_announcement_on(connection, id, now, &announce(&ticket)).await.map(Some)
}
