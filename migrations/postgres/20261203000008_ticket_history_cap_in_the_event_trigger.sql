-- The ticket history cap moves from a trigger on ticket_events, run once per event inserted, into
-- the ticket event function, run once per ticket update that records events (the PostgreSQL twin
-- of the SQLite migration of the same version). The events, their order and what stays are
-- unchanged (the first event and the latest 199 of a ticket). Only the event trigger inserts into
-- ticket_events.

DROP TRIGGER ticket_events_cap ON ticket_events;

DROP FUNCTION ticket_events_cap();

CREATE OR REPLACE FUNCTION tickets_record_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ticket_events (ticket, at, kind, state, ticket_status, polls, error_code, detail)
    SELECT NEW.id,
           CASE WHEN NEW.updated_at IS DISTINCT FROM OLD.updated_at THEN NEW.updated_at ELSE clock_timestamp() END,
           change.kind, NEW.state::text, NEW.ticket_status::text, NEW.polls, NEW.error_code, change.detail
    FROM (VALUES
        (1, 'lease_lapse', OLD.lease_owner::text,
         OLD.lease_owner IS NOT NULL AND NEW.lease_owner IS NOT NULL AND NEW.lease_owner <> OLD.lease_owner),
        (2, 'retry', NULL, OLD.state::text <> 'pending' AND NEW.state::text = 'pending'),
        (3, 'first_poll', NULL, OLD.polls = 0 AND NEW.polls > 0),
        (4, 'status', OLD.ticket_status::text,
         NEW.ticket_status IS NOT NULL AND NEW.ticket_status IS DISTINCT FROM OLD.ticket_status),
        (5, 'error_start', left(NEW.error_message, 500), OLD.error_streak = 0 AND NEW.error_streak > 0),
        (6, 'error_end', NULL, OLD.error_streak > 0 AND NEW.error_streak = 0 AND NEW.state = OLD.state),
        (7, 'pause', left(NEW.error_message, 500),
         NEW.state::text = 'pending' AND OLD.state::text = 'pending'
         AND NEW.error_code IS NOT NULL AND NEW.error_code IS DISTINCT FROM OLD.error_code
         AND (NEW.polls = OLD.polls OR NEW.error_streak = 0)),
        (8, 'cancel', NULL, OLD.state::text = 'pending' AND NEW.state::text = 'cancelled'),
        (9, 'final', left(NEW.error_message, 500),
         OLD.state::text = 'pending' AND NEW.state::text IN ('succeeded', 'failed', 'expired'))
    ) AS change (step, kind, detail, happened)
    WHERE change.happened
    ORDER BY change.step;
    -- The history cap of 20261203000007: the ticket's first event and its latest 199 stay.
    IF EXISTS (SELECT 1 FROM ticket_events WHERE ticket = NEW.id ORDER BY id DESC LIMIT 1 OFFSET 200) THEN
        DELETE FROM ticket_events
        WHERE ticket = NEW.id
          AND id > (SELECT min(id) FROM ticket_events WHERE ticket = NEW.id)
          AND id <= (SELECT id FROM ticket_events WHERE ticket = NEW.id ORDER BY id DESC LIMIT 1 OFFSET 199);
    END IF;
    RETURN NULL;
END;
$$;
