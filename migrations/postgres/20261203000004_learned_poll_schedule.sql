-- What the learned poll schedule needs from each ticket, and why a ticket is due when it is
-- (the twin of the SQLite migration of the same version; see it for the meaning of each column).
ALTER TABLE tickets ADD COLUMN running_seen_ms BIGINT
    CONSTRAINT running_seen_ms_must_be_a_count CHECK (running_seen_ms IS NULL OR running_seen_ms >= 0);
ALTER TABLE tickets ADD COLUMN schedule_note TEXT;
CREATE INDEX tickets_learned ON tickets (workspace, namespace, kind, finished_at)
    WHERE state IN ('succeeded', 'failed');
