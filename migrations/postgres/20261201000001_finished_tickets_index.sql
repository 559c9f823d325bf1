-- On PostgreSQL the first migration already creates the schema this version brings on SQLite;
-- the version exists so that both backends list the same migrations.
SELECT 1;
