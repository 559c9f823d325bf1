//! How poll results are written on SQLite: many rows in one statement, fenced by lease and state,
//! the one place that says which column a result sets. The recorder's batches and the one-row
//! writes of `tickets.rs` both go through [`record_many_on`].

use futures_util::TryStreamExt as _;
use sqlx::{Either, Executor as _, QueryBuilder, Row as _, Sqlite, SqliteConnection};

use super::tickets;
use crate::store::at;
use crate::store::results::{Commit, PollResult, RESULT_COLUMNS, Recorded, ResultWrite, Written, statement_chunks};
use crate::store::tickets::DueClaim;

/// Poll results, one statement per [`ROWS_PER_STATEMENT`] rows (the one place that says how a
/// result is written; the one-row writes call it too), fenced by lease and state. Returns, for
/// each write in order, whether it was written: a result counts as written only when its own
/// (row, lease) matched, never because another write to the same row did. A final state's
/// announcement is the caller's to write (see `tickets::write_announcement_on`). The caller owns
/// the transaction; with an `opening` statement the writes open it, the statement sent in the same
/// call to the connection's thread (SQLite runs several statements in one call).
///
/// [`ROWS_PER_STATEMENT`]: crate::store::results::ROWS_PER_STATEMENT
pub(in crate::store) async fn record_many_on(
    connection: &mut SqliteConnection,
    writes: &[ResultWrite<'_>],
    opening: Option<&str>,
) -> Result<Vec<Option<Written>>, sqlx::Error> {
    Ok(record_and_claim_on(connection, writes, opening, None, Commit::ByCaller).await?.written)
}

/// [`record_many_on`], then `claim` (see `tickets::push_claim`) in the same call as the last
/// statement, inside the caller's transaction. A claim that fails leaves the writes in place: its
/// error is [`Recorded::claimed`]'s, and the transaction goes on.
///
/// With [`Commit::InCall`], `COMMIT` follows in the same call, and each final state is written
/// only to a row that still names no receiver of its own (`webhook_url`), so that no final row
/// needs reading back for an announcement. A final state kept out that way hands its ticket back
/// (see [`hand_back_kept_out`]) to be polled again at once, and announced from its new final row.
pub(in crate::store) async fn record_and_claim_on(
    connection: &mut SqliteConnection,
    writes: &[ResultWrite<'_>],
    opening: Option<&str>,
    claim: Option<&DueClaim>,
    commit: Commit,
) -> Result<Recorded, sqlx::Error> {
    let in_call = commit == Commit::InCall;
    let mut written = vec![None; writes.len()];
    let chunks = statement_chunks(writes);
    if chunks.is_empty() {
        if let Some(opening) = opening {
            sqlx::query(opening).execute(&mut *connection).await?;
        }
        let claimed = match claim {
            Some(claim) => Some(tickets::claim_due_on(connection, claim).await),
            None => None,
        };
        if in_call {
            sqlx::query("COMMIT").execute(&mut *connection).await?;
        }
        return Ok(Recorded { written, claimed, committed: in_call });
    }
    let last = chunks.len() - 1;
    let columns = RESULT_COLUMNS.split(',').count();
    let mut claimed = None;
    for (number, chunk) in chunks.into_iter().enumerate() {
        let chunk_writes: Vec<ResultWrite<'_>> = chunk.iter().map(|&index| writes[index]).collect();
        let chunk_ids: Vec<(i64, usize)> = chunk.iter().map(|&index| (writes[index].id.0, index)).collect();
        let chunk = chunk_writes.as_slice();
        let mut sql = match opening {
            Some(opening) if number == 0 => format!("{opening}; "),
            _ => String::new(),
        };
        sql.push_str(&format!("WITH v ({RESULT_COLUMNS}) AS ("));
        let mut query = QueryBuilder::<Sqlite>::new(sql);
        query.push_values(chunk, |mut row, write| {
            write.values().bind(&mut row);
        });
        // The statement's text names its row count, and the connection keeps every text it
        // prepares (a few hundred kB of program each at the larger sizes): rows of NULLs, which
        // match no ticket, round the count up to a power of two, so that a handful of texts
        // serve every batch.
        for _ in chunk.len()..chunk.len().next_power_of_two() {
            query.push(", (");
            let mut row = query.separated(", ");
            for _ in 0..columns {
                row.push_bind(None::<i64>);
            }
            query.push(")");
        }
        // Column by column what the one-row writes do: an answer replaces the answer columns
        // and clears the error, an error replaces the error columns, neither keeps them; a final
        // state sets `state` and `finished_at` and clears the schedule note, a reschedule the due
        // time, the streaks and the note (and when the ticket was last seen running).
        query.push(
            ")
            UPDATE tickets SET
                lease_owner = NULL, lease_until = NULL,
                state = COALESCE(v.final_state, tickets.state),
                finished_at = CASE WHEN v.final_state IS NOT NULL THEN v.now ELSE tickets.finished_at END,
                next_poll_at = COALESCE(v.next_poll_at, tickets.next_poll_at),
                running_streak = COALESCE(v.running_streak, tickets.running_streak),
                error_streak = COALESCE(v.error_streak, tickets.error_streak),
                running_seen_ms = COALESCE(v.running_seen_ms, tickets.running_seen_ms),
                schedule_note = v.schedule_note,
                updated_at = v.now,
                polls = tickets.polls + v.polled,
                request_id = COALESCE(v.request_id, tickets.request_id),
                ticket_status = CASE WHEN v.has_answer THEN v.ticket_status ELSE tickets.ticket_status END,
                deployment_id = CASE WHEN v.has_answer THEN COALESCE(v.deployment_id, tickets.deployment_id)
                                     ELSE tickets.deployment_id END,
                deploy_success = CASE WHEN v.has_answer THEN v.deploy_success ELSE tickets.deploy_success END,
                message = CASE WHEN v.has_answer THEN v.message ELSE tickets.message END,
                validation_result = CASE WHEN v.has_answer THEN v.validation_result ELSE tickets.validation_result END,
                validation_errors = CASE WHEN v.has_answer THEN v.validation_errors ELSE tickets.validation_errors END,
                config_errors = CASE WHEN v.has_answer THEN v.config_errors ELSE tickets.config_errors END,
                resource_plan = CASE WHEN v.has_answer THEN COALESCE(v.resource_plan, tickets.resource_plan)
                                     ELSE tickets.resource_plan END,
                result_json = CASE WHEN v.has_answer THEN v.result_json ELSE tickets.result_json END,
                error_code = CASE WHEN v.error_code IS NOT NULL THEN v.error_code
                                  WHEN v.has_answer THEN NULL ELSE tickets.error_code END,
                error_message = CASE WHEN v.error_code IS NOT NULL THEN v.error_message
                                     WHEN v.has_answer THEN NULL ELSE tickets.error_message END
            FROM v
            WHERE tickets.id = v.id AND tickets.state = 'pending' AND tickets.lease_owner = v.lease",
        );
        if in_call {
            query.push(" AND (v.final_state IS NULL OR tickets.webhook_url IS NULL)");
        }
        query.push(" RETURNING tickets.id, tickets.webhook_url IS NOT NULL");
        let claim = claim.filter(|_| number == last);
        if let Some(claim) = claim {
            query.push("; ");
            tickets::push_claim(&mut query, claim);
        }
        if in_call && number == last {
            query.push("; COMMIT");
        }
        // Each statement ends with a `Left`: the writes' rows come before the statements ahead
        // of the claim have ended, the claim's after. An error after the claim's `Left` is the
        // `COMMIT`'s, and fails the call.
        let ahead_of_claim = if number == 0 && opening.is_some() { 2 } else { 1 };
        let mut ended = 0;
        let mut updated = std::collections::HashMap::new();
        let mut claim_rows = Vec::new();
        let mut claim_failed = None;
        {
            let mut results = connection.fetch_many(query.build());
            loop {
                match results.try_next().await {
                    Ok(Some(Either::Left(_))) => ended += 1,
                    Ok(Some(Either::Right(row))) if ended < ahead_of_claim => {
                        updated.insert(row.try_get::<i64, _>(0)?, row.try_get::<bool, _>(1)?);
                    }
                    Ok(Some(Either::Right(row))) => claim_rows.push(row),
                    Ok(None) => break,
                    Err(error) if claim.is_some() && ended == ahead_of_claim => {
                        claim_failed = Some(error);
                        break;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        // RETURNING names rows, not writes; within one statement each row has one write (see
        // `statement_chunks`), so a returned row identifies its write.
        for (id, index) in chunk_ids {
            written[index] = updated.get(&id).map(|&own_receiver| Written { own_receiver });
        }
        if let Some(claim) = claim {
            // A failed statement ends the call: the `COMMIT` after the claim did not run.
            if in_call && claim_failed.is_some() {
                sqlx::query("COMMIT").execute(&mut *connection).await?;
            }
            claimed = Some(match claim_failed {
                Some(error) => Err(error),
                None => tickets::claimed_tickets(connection, &claim_rows, claim).await,
            });
        }
    }
    if in_call {
        hand_back_kept_out(connection, writes, &written).await;
    }
    Ok(Recorded { written, claimed, committed: in_call })
}

/// Hands back each ticket whose final state [`Commit::InCall`] kept out because its row gained a
/// receiver since it was claimed: the lease is cleared and the ticket due at the write's time, so
/// that it is polled again at once rather than when its lease lapses. A final state not written
/// because its lease had lapsed matches nothing here: the row's lease is another's by then. The
/// batch is committed already, so a failure here only leaves the ticket to come back when its
/// lease lapses.
async fn hand_back_kept_out(
    connection: &mut SqliteConnection,
    writes: &[ResultWrite<'_>],
    written: &[Option<Written>],
) {
    let unwritten_finals = writes
        .iter()
        .zip(written)
        .filter(|(write, written)| matches!(write.result, PollResult::Final(_)) && written.is_none());
    for (write, _) in unwritten_finals {
        let handed_back = sqlx::query(
            "UPDATE tickets SET lease_owner = NULL, lease_until = NULL, next_poll_at = ?3
             WHERE id = ?1 AND state = 'pending' AND lease_owner = ?2 AND webhook_url IS NOT NULL",
        )
        .bind(write.id.0)
        .bind(&write.lease.0)
        .bind(at(write.now))
        .execute(&mut *connection)
        .await;
        match handed_back {
            Ok(done) if done.rows_affected() > 0 => tracing::info!(
                id = write.id.0,
                "the ticket was given a webhook_url while it was polled; handed back to be polled again and announced"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(
                error = %error,
                id = write.id.0,
                "handing back a ticket given a webhook_url while it was polled failed; it is polled again when its \
                 lease lapses"
            ),
        }
    }
}
