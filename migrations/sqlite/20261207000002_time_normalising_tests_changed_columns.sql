-- The time-normalising trigger of 20261203000006 tests only the time columns an update changed.
-- A time column a row already holds is canonical (every insert and update normalises what it
-- writes), so only a changed value can need rewriting. The daemon's claims and poll results name
-- four time columns and change two or three of them; each test skipped is a 24-character GLOB
-- less per row. What the trigger rewrites, and how, is unchanged.

DROP TRIGGER tickets_normalise_times_on_update;

CREATE TRIGGER tickets_normalise_times_on_update
AFTER UPDATE OF created_at, updated_at, next_poll_at, finished_at, deadline_at, lease_until ON tickets
WHEN (NEW.created_at IS NOT OLD.created_at AND NEW.created_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
   OR (NEW.updated_at IS NOT OLD.updated_at AND NEW.updated_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
   OR (NEW.next_poll_at IS NOT OLD.next_poll_at AND NEW.next_poll_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
   OR (NEW.finished_at IS NOT OLD.finished_at AND NEW.finished_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
   OR (NEW.deadline_at IS NOT OLD.deadline_at AND NEW.deadline_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
   OR (NEW.lease_until IS NOT OLD.lease_until AND NEW.lease_until NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
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
