-- What the learned poll schedule needs from each ticket, and why a ticket is due when it is.
--
-- * `running_seen_ms`: milliseconds from `created_at` to the last poll that saw the ticket still
--   running. With `finished_at` it brackets the true run time of a finished ticket: the schedule
--   learns from the middle of that interval. NULL until a poll saw it running.
-- * `schedule_note`: why `next_poll_at` is what it is (the learned schedule, the fixed backoff,
--   an error's retry, a pause, the deadline), in words; `show` prints it. NULL once final.
-- * `tickets_learned`: the most recent finishes of one workspace, namespace and kind, read when
--   a schedule is learned, without reading the rest of the table however long its history.
ALTER TABLE tickets ADD COLUMN running_seen_ms INTEGER
    CONSTRAINT running_seen_ms_must_be_a_count
    CHECK (running_seen_ms IS NULL OR (typeof(running_seen_ms) = 'integer' AND running_seen_ms >= 0));
ALTER TABLE tickets ADD COLUMN schedule_note TEXT
    CONSTRAINT schedule_note_must_be_text
    CHECK (schedule_note IS NULL OR typeof(schedule_note) = 'text');
CREATE INDEX tickets_learned ON tickets (workspace, namespace, kind, finished_at)
    WHERE state IN ('succeeded', 'failed');
