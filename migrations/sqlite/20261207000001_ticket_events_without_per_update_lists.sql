-- Two lists leave the path of every ticket update that records events. SQLite tests
-- `x IN ('a', 'b', ...)` against a small table it builds from the list once per run of the
-- program that holds it, and a trigger's program runs once per row it fires for: the kind check
-- of ticket_events (run by the event trigger's insert) and the trigger's final-state test built
-- their tables again for every ticket update that records events. Both now spell the list out as
-- equalities, which SQLite tests in place. The kinds allowed, the events recorded and their order
-- are unchanged.
--
-- A CHECK constraint changes only with its table, so ticket_events is rebuilt with the same
-- columns, rows, ids and index; its AUTOINCREMENT counter carries over, so no id is handed out
-- twice.

DROP TRIGGER tickets_record_events;

CREATE TABLE ticket_events_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket        INTEGER NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    at            TEXT NOT NULL,
    kind          TEXT NOT NULL
                  CONSTRAINT kind_must_be_known
                  CHECK (kind = 'first_poll' OR kind = 'status' OR kind = 'error_start' OR kind = 'error_end'
                         OR kind = 'pause' OR kind = 'lease_lapse' OR kind = 'retry' OR kind = 'cancel'
                         OR kind = 'final'),
    -- The row as the change left it.
    state         TEXT NOT NULL,
    ticket_status TEXT,
    polls         INTEGER NOT NULL,
    error_code    TEXT,
    -- The error message (first 500 characters), the previous status, or the lapsed lease's owner.
    detail        TEXT
);

INSERT INTO ticket_events_new (id, ticket, at, kind, state, ticket_status, polls, error_code, detail)
SELECT id, ticket, at, kind, state, ticket_status, polls, error_code, detail FROM ticket_events ORDER BY id;

-- The counter may be past the largest id left (events removed by the cap or with their ticket).
DELETE FROM sqlite_sequence WHERE name = 'ticket_events_new';
UPDATE sqlite_sequence SET name = 'ticket_events_new' WHERE name = 'ticket_events';

DROP TABLE ticket_events;
ALTER TABLE ticket_events_new RENAME TO ticket_events;
CREATE INDEX ticket_events_by_ticket ON ticket_events (ticket, id);

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
        WHERE OLD.state = 'pending' AND (NEW.state = 'succeeded' OR NEW.state = 'failed' OR NEW.state = 'expired')
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
