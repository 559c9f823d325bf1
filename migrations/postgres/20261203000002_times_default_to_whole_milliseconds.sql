-- A `timestamptz(3)` column rounds `now()` to the nearest millisecond, which may be later than
-- the moment itself: a row inserted "due now" could then be missed by a claim made in the same
-- millisecond. The defaults truncate instead, as SQLite's strftime('%f') does.
ALTER TABLE tickets
    ALTER COLUMN created_at SET DEFAULT date_trunc('milliseconds', now()),
    ALTER COLUMN updated_at SET DEFAULT date_trunc('milliseconds', now()),
    ALTER COLUMN next_poll_at SET DEFAULT date_trunc('milliseconds', now());
ALTER TABLE webhook_deliveries
    ALTER COLUMN next_attempt_at SET DEFAULT date_trunc('milliseconds', now()),
    ALTER COLUMN created_at SET DEFAULT date_trunc('milliseconds', now()),
    ALTER COLUMN updated_at SET DEFAULT date_trunc('milliseconds', now());
