-- History for the operator pages and `show` (the PostgreSQL twin of the SQLite migration of the
-- same version): what happened to each ticket, and every attempt of each webhook delivery. Both
-- go with their ticket (ON DELETE CASCADE), so retention removes them with it.
--
-- `ticket_events` is written by a trigger inside whatever statement changes the row, and only
-- when something changes: the first poll, a new ticket status, the start and end of an error
-- episode, a pause (a rejection that pauses rather than counts as an error, or a ticket held by
-- one), a lapsed lease taken over by another claim, a
-- retry, a cancel, the final state. Each ticket keeps its first event and its latest 199.

CREATE TABLE ticket_events (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket        BIGINT NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    at            timestamptz(3) NOT NULL,
    kind          TEXT NOT NULL
                  CONSTRAINT kind_must_be_known
                  CHECK (kind IN ('first_poll', 'status', 'error_start', 'error_end', 'pause', 'lease_lapse',
                                  'retry', 'cancel', 'final')),
    state         TEXT NOT NULL,
    ticket_status TEXT,
    polls         BIGINT NOT NULL,
    error_code    TEXT,
    detail        TEXT
);

CREATE INDEX ticket_events_by_ticket ON ticket_events (ticket, id);

CREATE FUNCTION tickets_record_events() RETURNS trigger LANGUAGE plpgsql AS $$
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
    RETURN NULL;
END;
$$;

CREATE TRIGGER tickets_record_events AFTER UPDATE ON tickets
    FOR EACH ROW EXECUTE FUNCTION tickets_record_events();

-- The cap: the first event and the latest 199 of each ticket stay.
CREATE FUNCTION ticket_events_cap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM ticket_events
    WHERE ticket = NEW.ticket
      AND id > (SELECT min(id) FROM ticket_events WHERE ticket = NEW.ticket)
      AND id <= (SELECT id FROM ticket_events WHERE ticket = NEW.ticket ORDER BY id DESC LIMIT 1 OFFSET 199);
    RETURN NULL;
END;
$$;

CREATE TRIGGER ticket_events_cap AFTER INSERT ON ticket_events
    FOR EACH ROW EXECUTE FUNCTION ticket_events_cap();

-- One row per attempt, written in the same transaction as the attempt's outcome. No response
-- bodies.
CREATE TABLE webhook_attempts (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery     BIGINT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt      BIGINT NOT NULL CHECK (attempt >= 1),
    at           timestamptz(3) NOT NULL,
    duration_ms  BIGINT NOT NULL CHECK (duration_ms >= 0),
    http_status  BIGINT,
    error        TEXT
);

CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery, id);

CREATE FUNCTION webhook_attempts_cap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhook_attempts
    WHERE delivery = NEW.delivery
      AND id > (SELECT min(id) FROM webhook_attempts WHERE delivery = NEW.delivery)
      AND id <= (SELECT id FROM webhook_attempts WHERE delivery = NEW.delivery ORDER BY id DESC LIMIT 1 OFFSET 99);
    RETURN NULL;
END;
$$;

CREATE TRIGGER webhook_attempts_cap AFTER INSERT ON webhook_attempts
    FOR EACH ROW EXECUTE FUNCTION webhook_attempts_cap();

-- The operator pages list tickets newest first (by id) filtered by workspace or state: these
-- indexes give those pages in index order, without sorting or scanning the table.
CREATE INDEX tickets_by_workspace ON tickets (workspace, id);
CREATE INDEX tickets_by_state ON tickets (state, id);
