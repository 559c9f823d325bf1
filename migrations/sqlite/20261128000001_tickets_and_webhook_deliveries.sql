-- The queue of deploy tickets and the webhook outbox.
--
-- Users insert into `tickets` with plain SQL from any program, so every default, check and
-- trigger here uses only what SQLite 3.40 has. Instants are fixed-width UTC text with
-- milliseconds ('2026-11-28T01:23:45.678Z'): text order is time order, and they read well in
-- the sqlite3 shell.

CREATE TABLE tickets (
    id                INTEGER PRIMARY KEY,
    -- What the user supplies.
    ticket_id         TEXT NOT NULL
                      CONSTRAINT ticket_id_must_be_1_to_128_printable_chars
                      CHECK (typeof(ticket_id) = 'text' AND length(ticket_id) BETWEEN 1 AND 128
                             AND ticket_id NOT IN ('.', '..')
                             AND ticket_id NOT GLOB ('*[' || char(1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,127) || ']*')),
    namespace         TEXT NOT NULL
                      CONSTRAINT namespace_must_be_1_to_128_printable_chars
                      CHECK (typeof(namespace) = 'text' AND length(namespace) BETWEEN 1 AND 128
                             AND namespace NOT IN ('.', '..')
                             AND namespace NOT GLOB ('*[' || char(1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,127) || ']*')),
    workspace         TEXT NOT NULL
                      CONSTRAINT workspace_must_be_1_to_128_printable_chars
                      CHECK (typeof(workspace) = 'text' AND length(workspace) BETWEEN 1 AND 128
                             AND workspace NOT GLOB ('*[' || char(1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,127) || ']*')),
    region            TEXT
                      CONSTRAINT region_must_be_1_to_64_chars
                      CHECK (region IS NULL OR (typeof(region) = 'text' AND length(region) BETWEEN 1 AND 64)),
    webhook_url       TEXT
                      CONSTRAINT webhook_url_must_be_http_or_https
                      CHECK (webhook_url IS NULL OR (typeof(webhook_url) = 'text' AND length(webhook_url) <= 2048
                             AND (webhook_url GLOB 'http://?*' OR webhook_url GLOB 'https://?*'))),
    deadline_at       TEXT
                      CONSTRAINT deadline_at_must_be_a_time
                      CHECK (deadline_at IS NULL OR (typeof(deadline_at) = 'text'
                             AND strftime('%Y-%m-%dT%H:%M:%fZ', deadline_at) IS NOT NULL)),

    -- What the daemon fills.
    state             TEXT NOT NULL DEFAULT 'pending'
                      CONSTRAINT state_must_be_known
                      CHECK (state IN ('pending', 'succeeded', 'failed', 'expired', 'cancelled')),
    ticket_status     TEXT,
    deployment_id     TEXT,
    deploy_success    INTEGER CHECK (deploy_success IS NULL OR deploy_success IN (0, 1)),
    message           TEXT,
    validation_result TEXT,
    validation_errors TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(validation_errors)),
    error_code        TEXT,
    error_message     TEXT,
    polls             INTEGER NOT NULL DEFAULT 0 CHECK (polls >= 0),
    request_id        TEXT,
    webhook_note      TEXT,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    next_poll_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at       TEXT,

    -- Scheduling state. `running_streak` counts consecutive "still running" answers and
    -- `error_streak` consecutive failed calls; the next delay is computed from them, so a restart
    -- neither resets nor skips the backoff. `retries` counts `retry` commands and makes each
    -- finish's webhook-id distinct. While a daemon polls a ticket, `lease_owner` names it and
    -- `next_poll_at` equals `lease_until`, so a killed daemon's tickets come due again on their own.
    running_streak    INTEGER NOT NULL DEFAULT 0 CHECK (running_streak >= 0),
    error_streak      INTEGER NOT NULL DEFAULT 0 CHECK (error_streak >= 0),
    retries           INTEGER NOT NULL DEFAULT 0 CHECK (retries >= 0),
    lease_owner       TEXT,
    lease_until       TEXT,

    UNIQUE (workspace, namespace, ticket_id)
);

-- The poller asks for the earliest pending row and claims in this order (its queries name this
-- index, so the planner never sorts the whole queue instead).
CREATE INDEX tickets_due ON tickets (next_poll_at) WHERE state = 'pending';
CREATE INDEX tickets_by_created ON tickets (created_at);
CREATE INDEX tickets_by_ticket_id ON tickets (ticket_id);

-- A deadline written by hand ('2026-12-01 10:00', '2026-12-01T10:00:00+08:00') is stored in the
-- canonical form so that it compares correctly with the daemon's instants.
CREATE TRIGGER tickets_normalise_deadline_on_insert
AFTER INSERT ON tickets
WHEN NEW.deadline_at IS NOT NULL
 AND NEW.deadline_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.deadline_at)
BEGIN
    UPDATE tickets SET deadline_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.deadline_at) WHERE id = NEW.id;
END;

CREATE TRIGGER tickets_normalise_deadline_on_update
AFTER UPDATE OF deadline_at ON tickets
WHEN NEW.deadline_at IS NOT NULL
 AND NEW.deadline_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.deadline_at)
BEGIN
    UPDATE tickets SET deadline_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.deadline_at) WHERE id = NEW.id;
END;

-- One row per receiver per finished ticket, written in the same transaction as the final state.
CREATE TABLE webhook_deliveries (
    id                INTEGER PRIMARY KEY,
    ticket            INTEGER NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    url               TEXT NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    -- The same on every attempt of this delivery; receivers deduplicate on it.
    webhook_id        TEXT NOT NULL CHECK (length(webhook_id) BETWEEN 1 AND 256),
    event_type        TEXT NOT NULL CHECK (event_type IN ('ticket.succeeded', 'ticket.failed', 'ticket.expired')),
    -- The exact body that is signed and sent.
    payload           TEXT NOT NULL CHECK (json_valid(payload)),
    state             TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts          INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_http_status  INTEGER,
    last_error        TEXT,
    delivered_at      TEXT,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    lease_owner       TEXT,
    lease_until       TEXT,
    UNIQUE (webhook_id, url)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_ticket ON webhook_deliveries (ticket);
CREATE INDEX webhook_deliveries_by_state ON webhook_deliveries (state, created_at);
