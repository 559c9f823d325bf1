-- The retention job deletes finished tickets oldest first: this index lets it find them without
-- reading the whole table while it holds the write lock. Pending rows are left out (they have no
-- finished_at and are never deleted).
CREATE INDEX tickets_finished ON tickets (finished_at) WHERE state <> 'pending';
