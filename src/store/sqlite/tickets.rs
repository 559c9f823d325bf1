//! SQLite's SQL for the `tickets` table: insert, claim with a lease, record progress or the final
//! state, and the user commands (list, show, retry, cancel).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row as _, Sqlite, SqliteConnection};

use super::SqliteStore;
use super::deliveries;
use super::results::record_many_on;
use crate::domain::{RowId, RunSample, TicketKind, TicketState};
use crate::store::results::{PollResult, ROWS_PER_STATEMENT, ResultWrite};
use crate::store::tickets::DueClaim;
use crate::store::{Announcement, Finish, Lease, NewTicket, Reschedule, Ticket, at, lease_end, row};

impl SqliteStore {
    /// Inserts a ticket as a user's `INSERT` would.
    pub(in crate::store) async fn insert_ticket(&self, ticket: &NewTicket) -> Result<Ticket, sqlx::Error> {
        let row = sqlx::query(
            "INSERT INTO tickets (ticket_id, kind, namespace, workspace, region, webhook_url, deadline_at, deployment_id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        )
        .bind(&ticket.ticket_id)
        .bind(ticket.kind.as_str())
        .bind(&ticket.namespace)
        .bind(&ticket.workspace)
        .bind(&ticket.region)
        .bind(&ticket.webhook_url)
        .bind(ticket.deadline_at.map(at))
        .bind(&ticket.deployment_id)
        .fetch_one(&self.writer)
        .await?;
        Ok(row::read_ticket_leniently(&row))
    }

    /// The earliest `next_poll_at` of a pending ticket (a lease counts as not due until it lapses).
    pub(in crate::store) async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let next: Option<String> = sqlx::query_scalar(
            "SELECT next_poll_at FROM tickets INDEXED BY tickets_due
             WHERE state = 'pending' ORDER BY next_poll_at LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        // The checks and triggers keep every stored time canonical; a time that still cannot be
        // read (written with the checks switched off) sorts first and counts as due now, so the
        // claim takes the row and rewrites the time instead of the loop waiting for ever.
        Ok(next.map(|next| crate::clock::parse_instant(&next).unwrap_or(DateTime::UNIX_EPOCH)))
    }

    /// See [`Store::recent_run_samples`].
    pub(in crate::store) async fn recent_run_samples(
        &self,
        workspace: &str,
        namespace: &str,
        kind: TicketKind,
        limit: usize,
    ) -> Result<Vec<RunSample>, sqlx::Error> {
        let rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT created_at, finished_at, running_seen_ms FROM tickets INDEXED BY tickets_learned
             WHERE workspace = ?1 AND namespace = ?2 AND kind = ?3 AND state IN ('succeeded', 'failed')
               AND polls > 0
             ORDER BY finished_at DESC LIMIT ?4",
        )
        .bind(workspace)
        .bind(namespace)
        .bind(kind.as_str())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await?;
        // A row whose times cannot be read (written by hand with the checks off) teaches nothing.
        Ok(rows
            .into_iter()
            .filter_map(|(created_at, finished_at, running_seen_ms)| {
                let created_at = crate::clock::parse_instant(&created_at)?;
                let finish_seen = (crate::clock::parse_instant(&finished_at)? - created_at).to_std().ok()?;
                let running_seen = running_seen_ms
                    .and_then(|ms| u64::try_from(ms).ok())
                    .map_or(Duration::ZERO, Duration::from_millis)
                    .min(finish_seen);
                Some(RunSample { running_seen, finish_seen })
            })
            .collect())
    }

    /// The latest `next_poll_at` of a pending ticket.
    pub(in crate::store) async fn latest_due_at(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let latest: Option<String> = sqlx::query_scalar(
            "SELECT next_poll_at FROM tickets INDEXED BY tickets_due
             WHERE state = 'pending' ORDER BY next_poll_at DESC LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        Ok(latest.as_deref().and_then(crate::clock::parse_instant))
    }

    /// Makes every pending, unleased ticket due at `now` whose `next_poll_at` lies beyond
    /// `horizon`, later than any delay the daemon schedules: such a time was computed before the
    /// wall clock stepped back. Leased rows are never touched: their `next_poll_at` is the lease's
    /// end, and making it due would let a second claim take a ticket whose poll is still running.
    /// Returns how many rows changed.
    pub(in crate::store) async fn pull_back_due_times(
        &self,
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "UPDATE tickets SET next_poll_at = ?1
             WHERE id IN (SELECT id FROM tickets INDEXED BY tickets_due
                          WHERE state = 'pending' AND next_poll_at > ?2)
               AND lease_owner IS NULL",
        )
        .bind(at(now))
        .bind(at(horizon))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    /// Claims up to `limit` due pending tickets in one atomic statement, earliest first (see
    /// [`claim_due_on`]).
    pub(in crate::store) async fn claim_due_tickets(&self, claim: &DueClaim) -> Result<Vec<Ticket>, sqlx::Error> {
        let mut connection = self.writer.acquire().await?;
        claim_due_on(&mut connection, claim).await
    }

    /// Claims one ticket, like [`Store::claim_due_tickets`] but only row `id`: `None` when it is not
    /// pending, not due yet, or held by another lease. Lets a command follow its own ticket while
    /// a daemon on the same database polls the others (or this one, whichever claims first).
    pub(in crate::store) async fn claim_ticket(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        lease_for: Duration,
        default_deadline: Duration,
    ) -> Result<Option<Ticket>, sqlx::Error> {
        let claim = DueClaim { lease: lease.clone(), now, lease_for, limit: 1, default_deadline };
        let mut query = QueryBuilder::<Sqlite>::new("");
        let now_text = push_claim_set(&mut query, &claim);
        query
            .push(" WHERE id = ")
            .push_bind(id.0)
            .push(" AND state = 'pending' AND next_poll_at <= ")
            .push_bind(now_text)
            .push(" RETURNING *");
        let mut connection = self.writer.acquire().await?;
        let row = query.build().fetch_optional(&mut *connection).await?;
        match row {
            Some(row) => readable_claim_on(&mut connection, &row, lease, now).await,
            None => Ok(None),
        }
    }

    /// Moves the lease `lease` holds on row `id` to `now + lease_for` (with `next_poll_at`, as a
    /// claim sets it), for a poll still running. Returns `false` (and writes nothing) when the
    /// lease is no longer ours or the ticket is no longer pending.
    pub(in crate::store) async fn extend_ticket_lease(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        lease_for: Duration,
    ) -> Result<bool, sqlx::Error> {
        let until = lease_end(now, lease_for);
        let updated = sqlx::query(
            "UPDATE tickets SET lease_until = ?1, next_poll_at = ?1
             WHERE id = ?2 AND lease_owner = ?3 AND state = 'pending'",
        )
        .bind(&until)
        .bind(id.0)
        .bind(&lease.0)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Records a poll that did not end the ticket and releases the lease. Returns `false` (and
    /// writes nothing) when the lease is no longer ours or the ticket is no longer pending.
    pub(in crate::store) async fn record_progress(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        update: &Reschedule,
    ) -> Result<bool, sqlx::Error> {
        let mut connection = self.writer.acquire().await?;
        record_progress_on(&mut connection, lease, id, now, update).await
    }

    /// Records the final state and, in the same transaction, its [`Announcement`] (the webhook
    /// deliveries and note) built by `announce` from the final row. Returns the number of
    /// deliveries written, or `None` (and writes nothing) when the lease is no longer ours or the
    /// ticket is no longer pending.
    pub(in crate::store) async fn record_final(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        finish: &Finish,
        announce: impl FnOnce(&Ticket) -> Announcement,
    ) -> Result<Option<usize>, sqlx::Error> {
        let mut connection = self.writer.acquire().await?;
        let written = async {
            let mut transaction = sqlx::Connection::begin_with(&mut *connection, "BEGIN IMMEDIATE").await?;
            let written = record_final_on(&mut transaction, lease, id, now, finish, announce).await?;
            transaction.commit().await?;
            Ok(written)
        }
        .await;
        if written.is_err() {
            super::discard_after_failed_transaction(&mut connection);
        }
        written
    }

    /// Moves every pending, unclaimed ticket of `workspace` due before `until` to `until`.
    /// A ticket whose deadline comes first is moved to its deadline instead, so that it expires
    /// on time.
    pub(in crate::store) async fn postpone_workspace(
        &self,
        workspace: &str,
        until: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        let until = at(until);
        Ok(sqlx::query(
            "UPDATE tickets SET next_poll_at = min(?1, coalesce(deadline_at, ?1))
             WHERE state = 'pending' AND workspace = ?2 AND lease_owner IS NULL
               AND next_poll_at < min(?1, coalesce(deadline_at, ?1))",
        )
        .bind(&until)
        .bind(workspace)
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    /// Releases every lease whose owner starts with `owner_prefix`, making those tickets due now
    /// (graceful shutdown hands unfinished work to the next start at once).
    pub(in crate::store) async fn release_tickets(
        &self,
        owner_prefix: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "UPDATE tickets SET lease_owner = NULL, lease_until = NULL, next_poll_at = ?2
             WHERE state = 'pending' AND substr(lease_owner, 1, length(?1)) = ?1",
        )
        .bind(owner_prefix)
        .bind(at(now))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    /// Tickets, newest first, optionally in one state and of one kind.
    /// A value that cannot be read shows as its text, or as the column's default.
    pub(in crate::store) async fn list_tickets(
        &self,
        state: Option<TicketState>,
        kind: Option<TicketKind>,
        limit: u32,
    ) -> Result<Vec<Ticket>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT * FROM tickets WHERE (?1 IS NULL OR state = ?1) AND (?3 IS NULL OR kind = ?3)
             ORDER BY created_at DESC, id DESC LIMIT ?2",
        )
        .bind(state.map(TicketState::as_str))
        .bind(i64::from(limit))
        .bind(kind.map(TicketKind::as_str))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.iter().map(row::read_ticket_leniently).collect())
    }

    /// Every row with this ticket ID (the same ID may exist in several workspaces/namespaces),
    /// optionally narrowed by workspace and namespace.
    pub(in crate::store) async fn find_tickets(
        &self,
        ticket_id: &str,
        kind: Option<TicketKind>,
        workspace: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<Vec<Ticket>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT * FROM tickets WHERE ticket_id = ?1 AND (?2 IS NULL OR workspace = ?2)
             AND (?3 IS NULL OR namespace = ?3) AND (?4 IS NULL OR kind = ?4) ORDER BY id",
        )
        .bind(ticket_id)
        .bind(workspace)
        .bind(namespace)
        .bind(kind.map(TicketKind::as_str))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.iter().map(row::read_ticket_leniently).collect())
    }

    /// The row with this internal ID (read as [`Store::list_tickets`] reads rows).
    pub(in crate::store) async fn ticket(&self, id: RowId) -> Result<Option<Ticket>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM tickets WHERE id = ?").bind(id.0).fetch_optional(&self.reader).await?;
        Ok(row.as_ref().map(row::read_ticket_leniently))
    }

    /// Puts a finished ticket back to `pending`, due now, with a fresh deadline and backoff. The
    /// previous run's answer (status, deployment, validation, error, webhook note) is cleared, so
    /// that nothing announced later carries it. Returns `false` when it is still pending.
    pub(in crate::store) async fn retry_ticket(
        &self,
        id: RowId,
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let now = at(now);
        Ok(sqlx::query(
            "UPDATE tickets SET state = 'pending', retries = retries + 1, next_poll_at = ?2, updated_at = ?2,
                 deadline_at = ?3, finished_at = NULL, running_streak = 0, error_streak = 0,
                 error_code = NULL, error_message = NULL, lease_owner = NULL, lease_until = NULL,
                 ticket_status = NULL, deploy_success = NULL, message = NULL,
                 deployment_id = CASE WHEN kind = 'resource_plan' THEN deployment_id END,
                 validation_result = NULL, validation_errors = '[]', request_id = NULL, webhook_note = NULL,
                 config_errors = NULL, resource_plan = NULL, result_json = NULL, running_seen_ms = NULL,
                 schedule_note = NULL
             WHERE id = ?1 AND state <> 'pending'",
        )
        .bind(id.0)
        .bind(&now)
        .bind(at(deadline))
        .execute(&self.writer)
        .await?
        .rows_affected()
            == 1)
    }

    /// Stops polling a pending ticket. Returns `false` when it is not pending.
    pub(in crate::store) async fn cancel_ticket(&self, id: RowId, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        let now = at(now);
        Ok(sqlx::query(
            "UPDATE tickets SET state = 'cancelled', finished_at = ?2, updated_at = ?2,
                 lease_owner = NULL, lease_until = NULL
             WHERE id = ?1 AND state = 'pending'",
        )
        .bind(id.0)
        .bind(&now)
        .execute(&self.writer)
        .await?
        .rows_affected()
            == 1)
    }

    /// How many tickets are in each state.
    pub(in crate::store) async fn count_tickets_by_state(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT state, count(*) FROM tickets GROUP BY state").fetch_all(&self.reader).await
    }
}

/// Claims up to `claim.limit` due pending tickets in one atomic statement, earliest first (see
/// [`push_claim`]).
pub(in crate::store) async fn claim_due_on(
    connection: &mut SqliteConnection,
    claim: &DueClaim,
) -> Result<Vec<Ticket>, sqlx::Error> {
    let mut query = QueryBuilder::<Sqlite>::new("");
    push_claim(&mut query, claim);
    let rows = query.build().fetch_all(&mut *connection).await?;
    claimed_tickets(connection, &rows, claim).await
}

/// Appends the claim statement to `query`, with its values: up to `claim.limit` due pending
/// tickets, earliest first, in one atomic statement, returning the claimed rows (what each row
/// gets: [`push_claim_set`]). Its parameters are positional, so that it can follow other
/// statements in one call (see `results::record_and_claim_on`).
pub(in crate::store) fn push_claim(query: &mut QueryBuilder<'_, Sqlite>, claim: &DueClaim) {
    let now = push_claim_set(query, claim);
    query
        .push(
            " WHERE id IN (SELECT id FROM tickets INDEXED BY tickets_due
                          WHERE state = 'pending' AND next_poll_at <= ",
        )
        .push_bind(now)
        .push(" ORDER BY next_poll_at LIMIT ")
        .push_bind(i64::from(claim.limit))
        .push(") RETURNING *");
}

/// SQL that is true when `$column` holds a real time in the stored form, as the column's check
/// demands: the text reads back as itself.
macro_rules! is_real_time {
    ($column:literal) => {
        concat!("strftime('%Y-%m-%dT%H:%M:%fZ', julianday(", $column, ")) IS ", $column)
    };
}

/// Appends `UPDATE tickets SET` and what a claim sets, with its values; returns `claim.now` as
/// stored, for the caller's `WHERE`.
///
/// Each claimed row gets `lease_owner = lease` and `lease_until = next_poll_at = now +
/// lease_for`, so no other claim can take it until the lease lapses, and a killed daemon's rows
/// come due again by themselves. A row without a deadline gets `created_at + default_deadline`,
/// fixed from then on.
///
/// A deadline that is not a real time (only a write with the checks switched off leaves one) is
/// cleared instead of kept: SQLite tests a written column's check even when its value is
/// unchanged, so keeping it would refuse the whole claim, and with it every other due row. The
/// claimed row then has no deadline, and `readable_claim_on` fails it.
fn push_claim_set(query: &mut QueryBuilder<'_, Sqlite>, claim: &DueClaim) -> String {
    let DueClaim { lease, now, lease_for, limit: _, default_deadline } = claim;
    let until = lease_end(*now, *lease_for);
    let now = at(*now);
    query
        .push("UPDATE tickets SET lease_owner = ")
        .push_bind(lease.0.clone())
        .push(", lease_until = ")
        .push_bind(until.clone())
        .push(", next_poll_at = ")
        .push_bind(until)
        .push(", updated_at = ")
        .push_bind(now.clone())
        .push(", deadline_at = CASE WHEN deadline_at IS NULL THEN strftime('%Y-%m-%dT%H:%M:%fZ', created_at, ")
        .push_bind(format!("+{:.3} seconds", default_deadline.as_secs_f64()))
        .push(concat!(") WHEN ", is_real_time!("deadline_at"), " THEN deadline_at END"));
    now
}

/// The rows a claim returned, as tickets (see [`readable_claim_on`]).
pub(in crate::store) async fn claimed_tickets(
    connection: &mut SqliteConnection,
    rows: &[SqliteRow],
    claim: &DueClaim,
) -> Result<Vec<Ticket>, sqlx::Error> {
    let mut tickets = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(ticket) = readable_claim_on(connection, row, &claim.lease, claim.now).await? {
            tickets.push(ticket);
        }
    }
    Ok(tickets)
}

/// A row just claimed with `lease`, as a [`Ticket`]; `None` when a value in it cannot be read
/// (the schema's checks refuse such values, so only a write with the checks switched off leaves
/// one). Such a row is failed on the spot with `InvalidTicket` and a message naming the column,
/// its unreadable values replaced, so that it never holds back the rest of its batch and never
/// comes back. It is not announced: its values cannot be trusted.
async fn readable_claim_on(
    connection: &mut SqliteConnection,
    row: &SqliteRow,
    lease: &Lease,
    now: DateTime<Utc>,
) -> Result<Option<Ticket>, sqlx::Error> {
    let column = match row::read_ticket(row) {
        Ok(ticket) => return Ok(Some(ticket)),
        Err(unreadable) => unreadable.column,
    };
    let id: i64 = row.try_get("id")?;
    let message = format!("column {column} holds a value the daemon cannot read");
    let failed = sqlx::query(FAIL_UNREADABLE)
        .bind(id)
        .bind(&lease.0)
        .bind(&message)
        .bind(at(now))
        .execute(&mut *connection)
        .await;
    match failed {
        Ok(_) => tracing::error!(row = id, column, "ticket failed: a value in it cannot be read (InvalidTicket)"),
        // The row keeps its lease and is claimed again once it lapses; the rest of the batch
        // goes on.
        Err(error) => tracing::error!(row = id, column, error = %error, "failing an unreadable ticket failed"),
    }
    Ok(None)
}

/// Ends a claimed row that cannot be read: `failed` / `InvalidTicket` with message `?3` at `?4`,
/// every value that cannot be read replaced by the column's default, so that the row can be read
/// (and listed) from then on.
const FAIL_UNREADABLE: &str = concat!(
    "UPDATE tickets SET
        state = 'failed', error_code = 'InvalidTicket', error_message = ?3,
        finished_at = ?4, updated_at = ?4, next_poll_at = ?4, lease_owner = NULL, lease_until = NULL,
        created_at = CASE WHEN ",
    is_real_time!("created_at"),
    " THEN created_at ELSE ?4 END,
        deadline_at = CASE WHEN ",
    is_real_time!("deadline_at"),
    " THEN deadline_at END,
        ticket_status = CASE WHEN typeof(ticket_status) IN ('text', 'null') THEN ticket_status
                             ELSE CAST(ticket_status AS TEXT) END,
        deployment_id = CASE WHEN typeof(deployment_id) IN ('text', 'null') THEN deployment_id
                             ELSE CAST(deployment_id AS TEXT) END,
        deploy_success = CASE WHEN typeof(deploy_success) = 'integer' AND deploy_success IN (0, 1)
                              THEN deploy_success END,
        message = CASE WHEN typeof(message) IN ('text', 'null') THEN message ELSE CAST(message AS TEXT) END,
        validation_result = CASE WHEN typeof(validation_result) IN ('text', 'null') THEN validation_result
                                 ELSE CAST(validation_result AS TEXT) END,
        validation_errors = CASE WHEN typeof(validation_errors) = 'text' AND json_valid(validation_errors)
                                      AND json_type(validation_errors) = 'array'
                                 THEN validation_errors ELSE '[]' END,
        config_errors = CASE WHEN typeof(config_errors) = 'text' AND json_valid(config_errors)
                                  AND json_type(config_errors) = 'array' THEN config_errors END,
        resource_plan = CASE WHEN typeof(resource_plan) IN ('text', 'null') THEN resource_plan
                             ELSE CAST(resource_plan AS TEXT) END,
        result_json = CASE WHEN typeof(result_json) = 'text' AND json_valid(result_json) THEN result_json END,
        request_id = CASE WHEN typeof(request_id) IN ('text', 'null') THEN request_id
                          ELSE CAST(request_id AS TEXT) END,
        webhook_note = CASE WHEN typeof(webhook_note) IN ('text', 'null') THEN webhook_note
                            ELSE CAST(webhook_note AS TEXT) END,
        polls = CASE WHEN typeof(polls) = 'integer' AND polls >= 0 THEN polls ELSE 0 END,
        running_streak = CASE WHEN typeof(running_streak) = 'integer' AND running_streak >= 0
                              THEN running_streak ELSE 0 END,
        error_streak = CASE WHEN typeof(error_streak) = 'integer' AND error_streak >= 0
                            THEN error_streak ELSE 0 END,
        retries = CASE WHEN typeof(retries) = 'integer' AND retries >= 0 THEN retries ELSE 0 END,
        running_seen_ms = CASE WHEN typeof(running_seen_ms) = 'integer' AND running_seen_ms >= 0
                               THEN running_seen_ms END,
        schedule_note = NULL
    WHERE id = ?1 AND lease_owner = ?2 AND state = 'pending'"
);

/// [`Store::record_progress`] on a given connection (the caller owns any transaction).
pub(in crate::store) async fn record_progress_on(
    connection: &mut SqliteConnection,
    lease: &Lease,
    id: RowId,
    now: DateTime<Utc>,
    update: &Reschedule,
) -> Result<bool, sqlx::Error> {
    let write = ResultWrite { lease, id, now, result: PollResult::Progress(update) };
    Ok(record_many_on(connection, &[write], None).await?[0].is_some())
}

/// The rows with these IDs, as the caller's transaction sees them.
pub(in crate::store) async fn tickets_on(
    connection: &mut SqliteConnection,
    ids: &[RowId],
) -> Result<Vec<Ticket>, sqlx::Error> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT * FROM tickets WHERE id IN (");
        let mut list = query.separated(", ");
        for id in chunk {
            list.push_bind(id.0);
        }
        query.push(")");
        rows.extend(query.build().fetch_all(&mut *connection).await?.iter().map(row::read_ticket_leniently));
    }
    Ok(rows)
}

/// Writes a final state's [`Announcement`] for its just-written row: the webhook deliveries and
/// the note. Returns how many deliveries were written. A delivery the outbox refuses (one of its
/// constraints) is left out and the note says so, so that the final state always commits; any
/// other error is returned.
pub(in crate::store) async fn write_announcement_on(
    connection: &mut SqliteConnection,
    id: RowId,
    now: DateTime<Utc>,
    announcement: &Announcement,
) -> Result<usize, sqlx::Error> {
    let mut refused = Vec::new();
    let mut written = 0;
    for delivery in &announcement.deliveries {
        // A refused statement rolls back alone; the transaction goes on.
        match deliveries::insert(&mut *connection, delivery, now, announcement.handoff.as_ref()).await? {
            crate::store::deliveries::Inserted::Written => written += 1,
            crate::store::deliveries::Inserted::Refused(reason) => refused.push((delivery, reason)),
        }
    }
    if let Some(note) = announcement.note(id, &refused) {
        sqlx::query("UPDATE tickets SET webhook_note = ? WHERE id = ?")
            .bind(note)
            .bind(id.0)
            .execute(&mut *connection)
            .await?;
    }
    Ok(written)
}

/// [`Store::record_final`] inside the caller's transaction.
pub(in crate::store) async fn record_final_on(
    connection: &mut SqliteConnection,
    lease: &Lease,
    id: RowId,
    now: DateTime<Utc>,
    finish: &Finish,
    announce: impl FnOnce(&Ticket) -> Announcement,
) -> Result<Option<usize>, sqlx::Error> {
    let write = ResultWrite { lease, id, now, result: PollResult::Final(finish) };
    if record_many_on(connection, &[write], None).await?[0].is_none() {
        return Ok(None);
    }
    let Some(ticket) = tickets_on(connection, &[id]).await?.pop() else {
        return Ok(None);
    };
    write_announcement_on(connection, id, now, &announce(&ticket)).await.map(Some)
}
