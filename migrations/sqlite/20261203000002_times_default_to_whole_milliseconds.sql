-- SQLite's strftime('%f') already truncates to whole milliseconds; the version exists so that
-- both backends list the same migrations (PostgreSQL's defaults change here).
SELECT 1;
