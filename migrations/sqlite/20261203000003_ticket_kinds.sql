-- Ticket kinds: `tickets` rebuilt, keeping every row and its id, and `webhook_deliveries` with it.
--
-- * `kind` says which asynchronous operation a ticket ID belongs to (deploy, validate,
--   resource_plan, hot_update). It defaults to 'deploy', so a plain insert naming only
--   (ticket_id, namespace, workspace) means a deploy ticket as before, and every existing row is
--   one. An unknown kind is refused by a CHECK.
-- * The same ticket ID may be queued once per kind: uniqueness is on
--   (workspace, namespace, kind, ticket_id). SQLite cannot change a table's UNIQUE constraint in
--   place, hence the rebuild.
-- * New nullable columns the daemon fills: `config_errors` (validate: JSON array of
--   {"reason", "message"}), `resource_plan` (the plan text exactly as the API sent it) and
--   `result_json` (the raw `data` of the last answer, every kind).
--
-- The rows were made readable by the previous migration, so they are copied as they are. As
-- there, the deliveries are set aside and `webhook_deliveries` is dropped before `tickets`
-- (dropping a table deletes its rows first, and the delete cascades), then recreated and filled
-- again; indexes and triggers go with their tables and are created again.

CREATE TABLE tickets_with_kinds (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    -- What the user supplies.
    ticket_id         TEXT NOT NULL
                      CONSTRAINT ticket_id_must_be_1_to_128_printable_chars
                      CHECK (typeof(ticket_id) = 'text' AND length(ticket_id) BETWEEN 1 AND 128
                             AND ticket_id NOT IN ('.', '..')
                             AND ticket_id NOT GLOB ('*[' || char(1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,127) || ']*')),
    -- Which asynchronous operation `ticket_id` belongs to; it picks the poll path and parser.
    kind              TEXT NOT NULL DEFAULT 'deploy'
                      CONSTRAINT kind_must_be_known
                      CHECK (kind IN ('deploy', 'validate', 'resource_plan', 'hot_update')),
    namespace         TEXT NOT NULL
                      CONSTRAINT namespace_must_be_1_to_128_printable_chars
                      CHECK (typeof(namespace) = 'text' AND length(namespace) BETWEEN 1 AND 128
                             AND namespace NOT IN ('.', '..')
                             AND namespace NOT GLOB ('*[' || char(1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,127) || ']*')),
    workspace         TEXT NOT NULL
                      CONSTRAINT workspace_must_be_1_to_128_printable_chars
                      CHECK (typeof(workspace) = 'text' AND length(workspace) BETWEEN 1 AND 128
                             AND workspace NOT GLOB ('*[' || char(1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,127) || ']*')),
    -- The regions of the official client: a ticket's region must be one of them even when
    -- `flink.endpoint` sends every request elsewhere.
    region            TEXT
                      CONSTRAINT region_must_be_known
                      CHECK (region IS NULL OR (typeof(region) = 'text'
                             AND region IN ('cn-qingdao', 'cn-shenzhen', 'cn-wulanchabu', 'cn-beijing',
                                        'ap-northeast-1', 'cn-chengdu', 'cn-shanghai', 'cn-hongkong',
                                        'ap-southeast-1', 'ap-southeast-3', 'ap-southeast-5', 'cn-zhangjiakou',
                                        'cn-hangzhou', 'us-west-1', 'us-east-1', 'eu-central-1',
                                        'eu-west-1', 'cn-shanghai-finance-1'))),
    webhook_url       TEXT
                      CONSTRAINT webhook_url_must_be_http_or_https
                      CHECK (webhook_url IS NULL OR (typeof(webhook_url) = 'text' AND length(webhook_url) <= 2048
                             AND (lower(webhook_url) GLOB 'http://?*' OR lower(webhook_url) GLOB 'https://?*'))),
    deadline_at       TEXT
                      CONSTRAINT deadline_at_must_be_a_real_time
                      CHECK (deadline_at IS NULL OR (typeof(deadline_at) = 'text' AND deadline_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
                             AND (substr(deadline_at, 9, 2) BETWEEN '01' AND '28' OR date(julianday(substr(deadline_at, 1, 10))) = substr(deadline_at, 1, 10))
                             AND substr(deadline_at, 12, 2) <> '24' AND julianday(deadline_at) IS NOT NULL)),

    -- What the daemon fills.
    state             TEXT NOT NULL DEFAULT 'pending'
                      CONSTRAINT state_must_be_known
                      CHECK (state IN ('pending', 'succeeded', 'failed', 'expired', 'cancelled')),
    ticket_status     TEXT CONSTRAINT ticket_status_must_be_text CHECK (ticket_status IS NULL OR typeof(ticket_status) = 'text'),
    deployment_id     TEXT CONSTRAINT deployment_id_must_be_text CHECK (deployment_id IS NULL OR typeof(deployment_id) = 'text'),
    deploy_success    INTEGER
                      CONSTRAINT deploy_success_must_be_0_or_1
                      CHECK (deploy_success IS NULL OR (typeof(deploy_success) = 'integer' AND deploy_success IN (0, 1))),
    message           TEXT CONSTRAINT message_must_be_text CHECK (message IS NULL OR typeof(message) = 'text'),
    validation_result TEXT CONSTRAINT validation_result_must_be_text CHECK (validation_result IS NULL OR typeof(validation_result) = 'text'),
    validation_errors TEXT NOT NULL DEFAULT '[]'
                      CONSTRAINT validation_errors_must_be_a_json_array
                      CHECK (typeof(validation_errors) = 'text' AND json_valid(validation_errors)
                             AND json_type(validation_errors) = 'array'),
    config_errors     TEXT
                      CONSTRAINT config_errors_must_be_a_json_array
                      CHECK (config_errors IS NULL OR (typeof(config_errors) = 'text' AND json_valid(config_errors)
                             AND json_type(config_errors) = 'array')),
    resource_plan     TEXT CONSTRAINT resource_plan_must_be_text CHECK (resource_plan IS NULL OR typeof(resource_plan) = 'text'),
    result_json       TEXT
                      CONSTRAINT result_json_must_be_json
                      CHECK (result_json IS NULL OR (typeof(result_json) = 'text' AND json_valid(result_json))),
    error_code        TEXT CONSTRAINT error_code_must_be_text CHECK (error_code IS NULL OR typeof(error_code) = 'text'),
    error_message     TEXT CONSTRAINT error_message_must_be_text CHECK (error_message IS NULL OR typeof(error_message) = 'text'),
    polls             INTEGER NOT NULL DEFAULT 0
                      CONSTRAINT polls_must_be_a_count CHECK (typeof(polls) = 'integer' AND polls >= 0),
    request_id        TEXT CONSTRAINT request_id_must_be_text CHECK (request_id IS NULL OR typeof(request_id) = 'text'),
    webhook_note      TEXT CONSTRAINT webhook_note_must_be_text CHECK (webhook_note IS NULL OR typeof(webhook_note) = 'text'),
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                      CONSTRAINT created_at_must_be_a_real_time
                      CHECK (typeof(created_at) = 'text' AND created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
                             AND (substr(created_at, 9, 2) BETWEEN '01' AND '28' OR date(julianday(substr(created_at, 1, 10))) = substr(created_at, 1, 10))
                             AND substr(created_at, 12, 2) <> '24' AND julianday(created_at) IS NOT NULL),
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                      CONSTRAINT updated_at_must_be_a_real_time
                      CHECK (typeof(updated_at) = 'text' AND updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
                             AND (substr(updated_at, 9, 2) BETWEEN '01' AND '28' OR date(julianday(substr(updated_at, 1, 10))) = substr(updated_at, 1, 10))
                             AND substr(updated_at, 12, 2) <> '24' AND julianday(updated_at) IS NOT NULL),
    next_poll_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                      CONSTRAINT next_poll_at_must_be_a_real_time
                      CHECK (typeof(next_poll_at) = 'text' AND next_poll_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
                             AND (substr(next_poll_at, 9, 2) BETWEEN '01' AND '28' OR date(julianday(substr(next_poll_at, 1, 10))) = substr(next_poll_at, 1, 10))
                             AND substr(next_poll_at, 12, 2) <> '24' AND julianday(next_poll_at) IS NOT NULL),
    finished_at       TEXT
                      CONSTRAINT finished_at_must_be_a_real_time
                      CHECK (finished_at IS NULL OR (typeof(finished_at) = 'text' AND finished_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
                             AND (substr(finished_at, 9, 2) BETWEEN '01' AND '28' OR date(julianday(substr(finished_at, 1, 10))) = substr(finished_at, 1, 10))
                             AND substr(finished_at, 12, 2) <> '24' AND julianday(finished_at) IS NOT NULL)),

    -- Scheduling state. `running_streak` counts consecutive "still running" answers and
    -- `error_streak` consecutive failed calls; the next delay is computed from them, so a restart
    -- neither resets nor skips the backoff. `retries` counts `retry` commands and makes each
    -- finish's webhook-id distinct. While a daemon polls a ticket, `lease_owner` names it and
    -- `next_poll_at` equals `lease_until`, so a killed daemon's tickets come due again on their own.
    running_streak    INTEGER NOT NULL DEFAULT 0
                      CONSTRAINT running_streak_must_be_a_count CHECK (typeof(running_streak) = 'integer' AND running_streak >= 0),
    error_streak      INTEGER NOT NULL DEFAULT 0
                      CONSTRAINT error_streak_must_be_a_count CHECK (typeof(error_streak) = 'integer' AND error_streak >= 0),
    retries           INTEGER NOT NULL DEFAULT 0
                      CONSTRAINT retries_must_be_a_count CHECK (typeof(retries) = 'integer' AND retries >= 0),
    lease_owner       TEXT CONSTRAINT lease_owner_must_be_text CHECK (lease_owner IS NULL OR typeof(lease_owner) = 'text'),
    lease_until       TEXT
                      CONSTRAINT lease_until_must_be_a_real_time
                      CHECK (lease_until IS NULL OR (typeof(lease_until) = 'text' AND lease_until GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
                             AND (substr(lease_until, 9, 2) BETWEEN '01' AND '28' OR date(julianday(substr(lease_until, 1, 10))) = substr(lease_until, 1, 10))
                             AND substr(lease_until, 12, 2) <> '24' AND julianday(lease_until) IS NOT NULL)),

    UNIQUE (workspace, namespace, kind, ticket_id)
);

INSERT INTO tickets_with_kinds (id, ticket_id, namespace, workspace, region, webhook_url, deadline_at, state, ticket_status, deployment_id, deploy_success, message, validation_result, validation_errors, error_code, error_message, polls, request_id, webhook_note, created_at, updated_at, next_poll_at, finished_at, running_streak, error_streak, retries, lease_owner, lease_until)
SELECT id, ticket_id, namespace, workspace, region, webhook_url, deadline_at, state, ticket_status, deployment_id, deploy_success, message, validation_result, validation_errors, error_code, error_message, polls, request_id, webhook_note, created_at, updated_at, next_poll_at, finished_at, running_streak, error_streak, retries, lease_owner, lease_until FROM tickets;

-- Keep the id counter where it was, so that no webhook-id is ever issued twice.
DELETE FROM sqlite_sequence WHERE name = 'tickets_with_kinds';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'tickets_with_kinds', max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'tickets'), 0),
                                 COALESCE((SELECT max(id) FROM tickets), 0),
                                 COALESCE((SELECT max(ticket) FROM webhook_deliveries), 0));

CREATE TABLE webhook_deliveries_kept AS SELECT * FROM webhook_deliveries;
CREATE TABLE webhook_deliveries_sequence_kept AS SELECT seq FROM sqlite_sequence WHERE name = 'webhook_deliveries';
DROP TABLE webhook_deliveries;
DROP TABLE tickets;
ALTER TABLE tickets_with_kinds RENAME TO tickets;

CREATE TABLE webhook_deliveries (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket            INTEGER NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    url               TEXT NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    -- The same on every attempt of this delivery; receivers deduplicate on it.
    webhook_id        TEXT NOT NULL CHECK (length(webhook_id) BETWEEN 1 AND 256),
    event_type        TEXT NOT NULL CHECK (event_type IN ('ticket.succeeded', 'ticket.failed', 'ticket.expired')),
    -- The exact body that is signed and sent.
    payload           TEXT NOT NULL CHECK (json_valid(payload)),
    state             TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts          INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- The one time here an operator may write by hand (to send a delivery now).
    next_attempt_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                      CONSTRAINT next_attempt_at_must_be_a_real_time
                      CHECK (typeof(next_attempt_at) = 'text' AND next_attempt_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
                             AND (substr(next_attempt_at, 9, 2) BETWEEN '01' AND '28' OR date(julianday(substr(next_attempt_at, 1, 10))) = substr(next_attempt_at, 1, 10))
                             AND substr(next_attempt_at, 12, 2) <> '24' AND julianday(next_attempt_at) IS NOT NULL),
    last_http_status  INTEGER,
    last_error        TEXT,
    delivered_at      TEXT,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    lease_owner       TEXT,
    lease_until       TEXT,
    UNIQUE (webhook_id, url)
);

INSERT INTO webhook_deliveries SELECT * FROM webhook_deliveries_kept ORDER BY id;
-- Delivery ids are shown to operators (`webhooks resend ID`): keep their counter too.
UPDATE sqlite_sequence SET seq = max(seq, COALESCE((SELECT max(seq) FROM webhook_deliveries_sequence_kept), 0))
WHERE name = 'webhook_deliveries';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'webhook_deliveries', seq FROM webhook_deliveries_sequence_kept
WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'webhook_deliveries');
DROP TABLE webhook_deliveries_kept;
DROP TABLE webhook_deliveries_sequence_kept;

-- The poller asks for the earliest pending row and claims in this order (its queries name this
-- index, so the planner never sorts the whole queue instead).
CREATE INDEX tickets_due ON tickets (next_poll_at) WHERE state = 'pending';
CREATE INDEX tickets_by_created ON tickets (created_at);
CREATE INDEX tickets_by_ticket_id ON tickets (ticket_id);
-- The retention job deletes finished tickets oldest first.
CREATE INDEX tickets_finished ON tickets (finished_at) WHERE state <> 'pending';

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_ticket ON webhook_deliveries (ticket);
CREATE INDEX webhook_deliveries_by_state ON webhook_deliveries (state, created_at);
-- Deliveries being sent right now (a live lease), per receiver: the webhook loop counts them on
-- every claim so that one slow receiver cannot take every sending slot.
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (url, lease_until) WHERE lease_owner IS NOT NULL;

-- A time written by hand ('2026-12-01 10:00', '2026-12-01T10:00:00+08:00') is stored in the
-- canonical form, so that it compares correctly with the daemon's instants. The checks above have
-- already refused what is not a real time; the daemon's own writes are canonical and skip the
-- rewrite.
CREATE TRIGGER tickets_normalise_times_on_insert
AFTER INSERT ON tickets
WHEN NEW.created_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
   OR NEW.updated_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
   OR NEW.next_poll_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
   OR NEW.finished_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
   OR NEW.deadline_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
   OR NEW.lease_until NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
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

-- One trigger per column on update: the daemon's writes change a few of them on every poll, and
-- only the triggers of the columns a statement sets run.
CREATE TRIGGER tickets_normalise_created_at_on_update
AFTER UPDATE OF created_at ON tickets
WHEN NEW.created_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    UPDATE tickets SET created_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at), NEW.created_at) WHERE id = NEW.id;
END;

CREATE TRIGGER tickets_normalise_updated_at_on_update
AFTER UPDATE OF updated_at ON tickets
WHEN NEW.updated_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    UPDATE tickets SET updated_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at), NEW.updated_at) WHERE id = NEW.id;
END;

CREATE TRIGGER tickets_normalise_next_poll_at_on_update
AFTER UPDATE OF next_poll_at ON tickets
WHEN NEW.next_poll_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    UPDATE tickets SET next_poll_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.next_poll_at), NEW.next_poll_at) WHERE id = NEW.id;
END;

CREATE TRIGGER tickets_normalise_finished_at_on_update
AFTER UPDATE OF finished_at ON tickets
WHEN NEW.finished_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    UPDATE tickets SET finished_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.finished_at), NEW.finished_at) WHERE id = NEW.id;
END;

CREATE TRIGGER tickets_normalise_deadline_at_on_update
AFTER UPDATE OF deadline_at ON tickets
WHEN NEW.deadline_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    UPDATE tickets SET deadline_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.deadline_at), NEW.deadline_at) WHERE id = NEW.id;
END;

CREATE TRIGGER tickets_normalise_lease_until_on_update
AFTER UPDATE OF lease_until ON tickets
WHEN NEW.lease_until NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    UPDATE tickets SET lease_until = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.lease_until), NEW.lease_until) WHERE id = NEW.id;
END;

CREATE TRIGGER webhook_deliveries_normalise_times_on_insert
AFTER INSERT ON webhook_deliveries
WHEN NEW.next_attempt_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    UPDATE webhook_deliveries SET
        next_attempt_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.next_attempt_at), NEW.next_attempt_at)
    WHERE id = NEW.id;
END;

CREATE TRIGGER webhook_deliveries_normalise_times_on_update
AFTER UPDATE OF next_attempt_at ON webhook_deliveries
WHEN NEW.next_attempt_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    UPDATE webhook_deliveries SET
        next_attempt_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.next_attempt_at), NEW.next_attempt_at)
    WHERE id = NEW.id;
END;
