-- Two of the tickets table's triggers, cheaper for the daemon's own writes (a claim, a lease
-- extension, a poll result), which are most writes and never need them; what they do is unchanged.
--
-- The ticket event trigger of 20261203000005 gets a WHEN clause: an update that changes nothing an
-- event records no longer runs its body. The body, and so the events written, stay as they were.
--
-- The six per-column time normalising triggers become one: an update naming several time columns
-- (every claim and result names three or four) runs one trigger instead of one per column. A time
-- written in another format by another program (`2026-12-03 10:00`) is still rewritten to the
-- canonical `YYYY-MM-DDTHH:MM:SS.sssZ`, as on insert.

DROP TRIGGER tickets_record_events;

CREATE TRIGGER tickets_record_events AFTER UPDATE ON tickets
WHEN (OLD.lease_owner IS NOT NULL AND NEW.lease_owner IS NOT NULL AND NEW.lease_owner <> OLD.lease_owner)
  OR NEW.state IS NOT OLD.state
  OR (OLD.polls = 0 AND NEW.polls > 0)
  OR (NEW.ticket_status IS NOT NULL AND NEW.ticket_status IS NOT OLD.ticket_status)
  OR (OLD.error_streak = 0) <> (NEW.error_streak = 0)
  OR (NEW.error_code IS NOT NULL AND NEW.error_code IS NOT OLD.error_code)
BEGIN
    INSERT INTO ticket_events (ticket, at, kind, state, ticket_status, polls, error_code, detail)
    SELECT NEW.id,
           CASE WHEN NEW.updated_at IS NOT OLD.updated_at THEN NEW.updated_at
                ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END,
           change.kind, NEW.state, NEW.ticket_status, NEW.polls, NEW.error_code, change.detail
    FROM (
        SELECT 1 AS step, 'lease_lapse' AS kind, OLD.lease_owner AS detail
        WHERE OLD.lease_owner IS NOT NULL AND NEW.lease_owner IS NOT NULL AND NEW.lease_owner <> OLD.lease_owner
        UNION ALL
        SELECT 2, 'retry', NULL WHERE OLD.state <> 'pending' AND NEW.state = 'pending'
        UNION ALL
        SELECT 3, 'first_poll', NULL WHERE OLD.polls = 0 AND NEW.polls > 0
        UNION ALL
        SELECT 4, 'status', OLD.ticket_status
        WHERE NEW.ticket_status IS NOT NULL AND NEW.ticket_status IS NOT OLD.ticket_status
        UNION ALL
        SELECT 5, 'error_start', substr(NEW.error_message, 1, 500)
        WHERE OLD.error_streak = 0 AND NEW.error_streak > 0
        UNION ALL
        SELECT 6, 'error_end', NULL WHERE OLD.error_streak > 0 AND NEW.error_streak = 0 AND NEW.state = OLD.state
        UNION ALL
        SELECT 7, 'pause', substr(NEW.error_message, 1, 500)
        WHERE NEW.state = 'pending' AND OLD.state = 'pending'
          AND NEW.error_code IS NOT NULL AND NEW.error_code IS NOT OLD.error_code
          AND (NEW.polls = OLD.polls OR NEW.error_streak = 0)
        UNION ALL
        SELECT 8, 'cancel', NULL WHERE OLD.state = 'pending' AND NEW.state = 'cancelled'
        UNION ALL
        SELECT 9, 'final', substr(NEW.error_message, 1, 500)
        WHERE OLD.state = 'pending' AND NEW.state IN ('succeeded', 'failed', 'expired')
    ) AS change
    ORDER BY change.step;
END;

DROP TRIGGER tickets_normalise_created_at_on_update;
DROP TRIGGER tickets_normalise_updated_at_on_update;
DROP TRIGGER tickets_normalise_next_poll_at_on_update;
DROP TRIGGER tickets_normalise_finished_at_on_update;
DROP TRIGGER tickets_normalise_deadline_at_on_update;
DROP TRIGGER tickets_normalise_lease_until_on_update;

CREATE TRIGGER tickets_normalise_times_on_update
AFTER UPDATE OF created_at, updated_at, next_poll_at, finished_at, deadline_at, lease_until ON tickets
WHEN NEW.created_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
   OR NEW.updated_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
   OR NEW.next_poll_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
   OR NEW.finished_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
   OR NEW.deadline_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
   OR NEW.lease_until NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    UPDATE tickets SET
        created_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at), NEW.created_at),
        updated_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at), NEW.updated_at),
        next_poll_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.next_poll_at), NEW.next_poll_at),
        finished_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.finished_at), NEW.finished_at),
        deadline_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.deadline_at), NEW.deadline_at),
        lease_until = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.lease_until), NEW.lease_until)
    WHERE id = NEW.id;
END;
