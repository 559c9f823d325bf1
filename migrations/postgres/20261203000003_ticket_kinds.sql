-- Ticket kinds on PostgreSQL: what the SQLite migration of the same version brings.
--
-- * `kind` says which asynchronous operation a ticket ID belongs to; it defaults to 'deploy', so a
--   plain insert naming only (ticket_id, namespace, workspace) means a deploy ticket as before,
--   and every existing row is one. An unknown kind is refused by the CHECK.
-- * The same ticket ID may be queued once per kind: uniqueness moves to
--   (workspace, namespace, kind, ticket_id).
-- * New nullable columns the daemon fills: `config_errors` (validate: JSON array of
--   {"reason", "message"}), `resource_plan` (the plan text exactly as the API sent it) and
--   `result_json` (the raw `data` of the last answer). `result_json` is `json`, not `jsonb`: like
--   the webhook body, it keeps the text byte for byte (spacing, key order), and `->`/`->>` work
--   on it all the same.
ALTER TABLE tickets ADD COLUMN kind text NOT NULL DEFAULT 'deploy'
    CONSTRAINT kind_must_be_known CHECK (kind IN ('deploy', 'validate', 'resource_plan', 'hot_update'));
ALTER TABLE tickets ADD COLUMN config_errors jsonb
    CONSTRAINT config_errors_must_be_a_json_array CHECK (jsonb_typeof(config_errors) = 'array');
ALTER TABLE tickets ADD COLUMN resource_plan text;
ALTER TABLE tickets ADD COLUMN result_json json;

ALTER TABLE tickets DROP CONSTRAINT tickets_workspace_namespace_ticket_id_key;
ALTER TABLE tickets ADD CONSTRAINT tickets_workspace_namespace_kind_ticket_id_key
    UNIQUE (workspace, namespace, kind, ticket_id);
