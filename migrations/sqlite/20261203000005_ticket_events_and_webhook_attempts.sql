-- History for the operator pages and `show`: what happened to each ticket, and every attempt of
-- each webhook delivery. Both go with their ticket (ON DELETE CASCADE), so retention removes them
-- in the same transaction that deletes the ticket.
--
-- `ticket_events` is written by a trigger inside whatever statement changes the row (the
-- recorder's group commit, a claim, `retry`, `cancel`, or another program's UPDATE), and only when
-- something changes: the first poll, a new ticket status, the start and end of an error episode,
-- a pause (a rejection that pauses rather than counts as an error, or a ticket held by one), a
-- lapsed lease taken over by another claim, a retry, a cancel, the final state. Each ticket keeps
-- its first event and its latest 199.

CREATE TABLE ticket_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket        INTEGER NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    at            TEXT NOT NULL,
    kind          TEXT NOT NULL
                  CONSTRAINT kind_must_be_known
                  CHECK (kind IN ('first_poll', 'status', 'error_start', 'error_end', 'pause', 'lease_lapse',
                                  'retry', 'cancel', 'final')),
    -- The row as the change left it.
    state         TEXT NOT NULL,
    ticket_status TEXT,
    polls         INTEGER NOT NULL,
    error_code    TEXT,
    -- The error message (first 500 characters), the previous status, or the lapsed lease's owner.
    detail        TEXT
);

CREATE INDEX ticket_events_by_ticket ON ticket_events (ticket, id);

CREATE TRIGGER tickets_record_events AFTER UPDATE ON tickets
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

-- The cap: the first event and the latest 199 of each ticket stay.
CREATE TRIGGER ticket_events_cap AFTER INSERT ON ticket_events
BEGIN
    DELETE FROM ticket_events
    WHERE ticket = NEW.ticket
      AND id > (SELECT min(id) FROM ticket_events WHERE ticket = NEW.ticket)
      AND id <= (SELECT id FROM ticket_events WHERE ticket = NEW.ticket ORDER BY id DESC LIMIT 1 OFFSET 199);
END;

-- One row per attempt, written in the same transaction as the attempt's outcome. No response
-- bodies: the status and a short error are enough to see what a receiver did.
CREATE TABLE webhook_attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery     INTEGER NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    -- 1 for the first attempt of the delivery.
    attempt      INTEGER NOT NULL CHECK (attempt >= 1),
    -- When the request started.
    at           TEXT NOT NULL,
    duration_ms  INTEGER NOT NULL CHECK (duration_ms >= 0),
    http_status  INTEGER,
    -- At most 300 characters.
    error        TEXT
);

CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery, id);

-- The cap: a delivery resent by hand over and over keeps its first attempt and its latest 99.
CREATE TRIGGER webhook_attempts_cap AFTER INSERT ON webhook_attempts
BEGIN
    DELETE FROM webhook_attempts
    WHERE delivery = NEW.delivery
      AND id > (SELECT min(id) FROM webhook_attempts WHERE delivery = NEW.delivery)
      AND id <= (SELECT id FROM webhook_attempts WHERE delivery = NEW.delivery ORDER BY id DESC LIMIT 1 OFFSET 99);
END;

-- The operator pages list tickets newest first (by id) filtered by workspace or state: these
-- indexes give those pages in index order, without sorting or scanning the table.
CREATE INDEX tickets_by_workspace ON tickets (workspace, id);
CREATE INDEX tickets_by_state ON tickets (state, id);
