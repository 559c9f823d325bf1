-- The ticket history cap moves from a trigger on ticket_events, run once per event inserted, into
-- the ticket event trigger, run once per ticket update that records events. The events, their
-- order and what stays are unchanged (the first event and the latest 199 of a ticket); a poll that
-- records two events now starts one trigger program instead of three, which is most of what
-- recording the history cost per poll. Only the event trigger inserts into ticket_events.

DROP TRIGGER ticket_events_cap;

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
    -- The history cap of 20261203000007: the ticket's first event and its latest 199 stay. Until
    -- the row past the cap exists, the range deleted is empty (a few index look-ups).
    DELETE FROM ticket_events
    WHERE ticket = NEW.id
      AND EXISTS (SELECT 1 FROM ticket_events WHERE ticket = NEW.id ORDER BY id DESC LIMIT 1 OFFSET 200)
      AND id > (SELECT min(id) FROM ticket_events WHERE ticket = NEW.id)
      AND id <= (SELECT id FROM ticket_events WHERE ticket = NEW.id ORDER BY id DESC LIMIT 1 OFFSET 199);
END;
