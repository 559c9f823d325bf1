//! How poll results are written on PostgreSQL: many rows in one `UPDATE … FROM (VALUES …)`,
//! fenced by lease and state, column by column what `sqlite/results.rs` does.

use std::collections::HashMap;

use sqlx::{PgConnection, Postgres, QueryBuilder};

use crate::store::results::{RESULT_COLUMNS, ROWS_PER_STATEMENT, ResultWrite, Written, statement_chunks};

/// Poll results, one statement per [`ROWS_PER_STATEMENT`] rows, fenced by lease and state.
/// Returns, for each write in order, whether it was written. The caller owns the transaction.
pub(in crate::store) async fn record_many_on(
    connection: &mut PgConnection,
    writes: &[ResultWrite<'_>],
) -> Result<Vec<Option<Written>>, sqlx::Error> {
    let mut written = vec![None; writes.len()];
    for chunk in statement_chunks(writes) {
        debug_assert!(chunk.len() <= ROWS_PER_STATEMENT);
        let chunk_writes: Vec<ResultWrite<'_>> = chunk.iter().map(|&index| writes[index]).collect();
        let mut query = QueryBuilder::<Postgres>::new(
            "UPDATE tickets SET
                lease_owner = NULL, lease_until = NULL,
                state = COALESCE(v.final_state, tickets.state),
                finished_at = CASE WHEN v.final_state IS NOT NULL THEN v.now::timestamptz ELSE tickets.finished_at END,
                next_poll_at = COALESCE(v.next_poll_at::timestamptz, tickets.next_poll_at),
                running_streak = COALESCE(v.running_streak, tickets.running_streak),
                error_streak = COALESCE(v.error_streak, tickets.error_streak),
                running_seen_ms = COALESCE(v.running_seen_ms, tickets.running_seen_ms),
                schedule_note = v.schedule_note,
                updated_at = v.now::timestamptz,
                polls = tickets.polls + v.polled,
                request_id = COALESCE(v.request_id, tickets.request_id),
                ticket_status = CASE WHEN v.has_answer THEN v.ticket_status ELSE tickets.ticket_status END,
                deployment_id = CASE WHEN v.has_answer THEN COALESCE(v.deployment_id, tickets.deployment_id)
                                     ELSE tickets.deployment_id END,
                deploy_success = CASE WHEN v.has_answer THEN v.deploy_success ELSE tickets.deploy_success END,
                message = CASE WHEN v.has_answer THEN v.message ELSE tickets.message END,
                validation_result = CASE WHEN v.has_answer THEN v.validation_result ELSE tickets.validation_result END,
                validation_errors = CASE WHEN v.has_answer THEN v.validation_errors::jsonb ELSE tickets.validation_errors END,
                config_errors = CASE WHEN v.has_answer THEN v.config_errors::jsonb ELSE tickets.config_errors END,
                resource_plan = CASE WHEN v.has_answer THEN COALESCE(v.resource_plan, tickets.resource_plan)
                                     ELSE tickets.resource_plan END,
                result_json = CASE WHEN v.has_answer THEN v.result_json::json ELSE tickets.result_json END,
                error_code = CASE WHEN v.error_code IS NOT NULL THEN v.error_code
                                  WHEN v.has_answer THEN NULL ELSE tickets.error_code END,
                error_message = CASE WHEN v.error_code IS NOT NULL THEN v.error_message
                                     WHEN v.has_answer THEN NULL ELSE tickets.error_message END
            FROM (",
        );
        query.push_values(&chunk_writes, |mut row, write| {
            write.values().bind(&mut row);
        });
        query.push(format!(") AS v ({RESULT_COLUMNS})"));
        query.push(
            "
            WHERE tickets.id = v.id AND tickets.state = 'pending' AND tickets.lease_owner = v.lease
            RETURNING tickets.id, tickets.webhook_url IS NOT NULL",
        );
        let rows: HashMap<i64, bool> = query.build_query_as().fetch_all(&mut *connection).await?.into_iter().collect();
        for index in chunk {
            written[index] = rows.get(&writes[index].id.0).map(|&own_receiver| Written { own_receiver });
        }
    }
    Ok(written)
}
