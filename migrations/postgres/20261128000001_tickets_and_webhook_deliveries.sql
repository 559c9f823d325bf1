-- The queue of deploy tickets and the webhook outbox, on PostgreSQL.
--
-- The same tables, columns, nullability and checks (in meaning) as the SQLite migrations of the
-- same versions reach, created at once: there are no older PostgreSQL databases to carry along.
-- Instants are `timestamptz(3)` (milliseconds, as on SQLite), JSON data is `jsonb`; the webhook
-- body is `json`, which keeps the exact text that is signed and sent.
--
-- Users insert into `tickets` with plain SQL from any client. A time written without a zone is
-- read in the session's time zone: the database's default is set to UTC below (when the role
-- may), so that '2026-12-01 10:00' means 10:00 UTC, as it does on SQLite.

DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET timezone = %L', current_database(), 'UTC');
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'set timezone = ''UTC'' on database % by hand (the migrating role does not own it)', current_database();
END
$$;

CREATE TABLE tickets (
    -- Never reused after a delete (a sequence only moves forward); only the sequence assigns it.
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- What the user supplies.
    ticket_id         text NOT NULL
                      CONSTRAINT ticket_id_must_be_1_to_128_printable_chars
                      CHECK (length(ticket_id) BETWEEN 1 AND 128 AND ticket_id NOT IN ('.', '..')
                             AND ticket_id !~ '[\x01-\x1f\x7f]'),
    namespace         text NOT NULL
                      CONSTRAINT namespace_must_be_1_to_128_printable_chars
                      CHECK (length(namespace) BETWEEN 1 AND 128 AND namespace NOT IN ('.', '..')
                             AND namespace !~ '[\x01-\x1f\x7f]'),
    workspace         text NOT NULL
                      CONSTRAINT workspace_must_be_1_to_128_printable_chars
                      CHECK (length(workspace) BETWEEN 1 AND 128 AND workspace !~ '[\x01-\x1f\x7f]'),
    -- The regions of the official client: a ticket's region must be one of them even when
    -- `flink.endpoint` sends every request elsewhere.
    region            text
                      CONSTRAINT region_must_be_known
                      CHECK (region IN ('cn-qingdao', 'cn-shenzhen', 'cn-wulanchabu', 'cn-beijing',
                                        'ap-northeast-1', 'cn-chengdu', 'cn-shanghai', 'cn-hongkong',
                                        'ap-southeast-1', 'ap-southeast-3', 'ap-southeast-5', 'cn-zhangjiakou',
                                        'cn-hangzhou', 'us-west-1', 'us-east-1', 'eu-central-1',
                                        'eu-west-1', 'cn-shanghai-finance-1')),
    webhook_url       text
                      CONSTRAINT webhook_url_must_be_http_or_https
                      CHECK (length(webhook_url) <= 2048
                             AND (lower(webhook_url) LIKE 'http://_%' OR lower(webhook_url) LIKE 'https://_%')),
    deadline_at       timestamptz(3),

    -- What the daemon fills.
    state             text NOT NULL DEFAULT 'pending'
                      CONSTRAINT state_must_be_known
                      CHECK (state IN ('pending', 'succeeded', 'failed', 'expired', 'cancelled')),
    ticket_status     text,
    deployment_id     text,
    deploy_success    boolean,
    message           text,
    validation_result text,
    validation_errors jsonb NOT NULL DEFAULT '[]'
                      CONSTRAINT validation_errors_must_be_a_json_array
                      CHECK (jsonb_typeof(validation_errors) = 'array'),
    error_code        text,
    error_message     text,
    polls             bigint NOT NULL DEFAULT 0 CONSTRAINT polls_must_be_a_count CHECK (polls >= 0),
    request_id        text,
    webhook_note      text,
    created_at        timestamptz(3) NOT NULL DEFAULT now(),
    updated_at        timestamptz(3) NOT NULL DEFAULT now(),
    next_poll_at      timestamptz(3) NOT NULL DEFAULT now(),
    finished_at       timestamptz(3),

    -- Scheduling state. `running_streak` counts consecutive "still running" answers and
    -- `error_streak` consecutive failed calls; the next delay is computed from them, so a restart
    -- neither resets nor skips the backoff. `retries` counts `retry` commands and makes each
    -- finish's webhook-id distinct. While a daemon polls a ticket, `lease_owner` names its claim
    -- and `next_poll_at` equals `lease_until` (a visibility timeout), so a dead daemon's tickets
    -- come due again on their own, on whichever host claims next.
    running_streak    bigint NOT NULL DEFAULT 0
                      CONSTRAINT running_streak_must_be_a_count CHECK (running_streak >= 0),
    error_streak      bigint NOT NULL DEFAULT 0
                      CONSTRAINT error_streak_must_be_a_count CHECK (error_streak >= 0),
    retries           bigint NOT NULL DEFAULT 0 CONSTRAINT retries_must_be_a_count CHECK (retries >= 0),
    lease_owner       text,
    lease_until       timestamptz(3),

    UNIQUE (workspace, namespace, ticket_id)
);

-- The claim query walks this index in order and stops after its batch (`FOR UPDATE SKIP LOCKED`),
-- so neither finished rows nor the size of the table slow it down.
CREATE INDEX tickets_due ON tickets (next_poll_at, id) WHERE state = 'pending';
CREATE INDEX tickets_by_created ON tickets (created_at);
CREATE INDEX tickets_by_ticket_id ON tickets (ticket_id);
-- The retention job deletes finished tickets oldest first.
CREATE INDEX tickets_finished ON tickets (finished_at) WHERE state <> 'pending';

-- One row per receiver per finished ticket, written in the same transaction as the final state.
CREATE TABLE webhook_deliveries (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket            bigint NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    url               text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    -- The same on every attempt of this delivery; receivers deduplicate on it.
    webhook_id        text NOT NULL CHECK (length(webhook_id) BETWEEN 1 AND 256),
    event_type        text NOT NULL CHECK (event_type IN ('ticket.succeeded', 'ticket.failed', 'ticket.expired')),
    -- The exact body that is signed and sent (`json` keeps the text as written).
    payload           json NOT NULL,
    state             text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts          bigint NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- The one time here an operator may write by hand (to send a delivery now).
    next_attempt_at   timestamptz(3) NOT NULL DEFAULT now(),
    last_http_status  bigint,
    last_error        text,
    delivered_at      timestamptz(3),
    created_at        timestamptz(3) NOT NULL DEFAULT now(),
    updated_at        timestamptz(3) NOT NULL DEFAULT now(),
    lease_owner       text,
    lease_until       timestamptz(3),
    UNIQUE (webhook_id, url)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_ticket ON webhook_deliveries (ticket);
CREATE INDEX webhook_deliveries_by_state ON webhook_deliveries (state, created_at);
-- Deliveries being sent right now (a live lease), per receiver: the webhook loop counts them on
-- every claim so that one slow receiver cannot take every sending slot.
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (url, lease_until) WHERE lease_owner IS NOT NULL;

-- Wakes every listening daemon at once when a ticket becomes due without a lease: a user's
-- INSERT (from any client), `retry`, a lease handed back at shutdown. The daemon's own writes
-- (claims, rescheduling into the future) do not match the condition and stay silent. "Due" allows
-- a second's margin: stored times are rounded to milliseconds, and the daemons' clocks may run a
-- little ahead of the server's. Notifications are sent at commit, once per transaction and
-- channel.
CREATE FUNCTION flink_ticketd_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('flink_ticketd_tickets', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER tickets_notify_on_insert
AFTER INSERT ON tickets
FOR EACH ROW WHEN (NEW.state = 'pending' AND NEW.lease_owner IS NULL AND NEW.next_poll_at <= now() + interval '1 second')
EXECUTE FUNCTION flink_ticketd_notify_due();

CREATE TRIGGER tickets_notify_on_update
AFTER UPDATE OF state, next_poll_at, lease_owner ON tickets
FOR EACH ROW WHEN (NEW.state = 'pending' AND NEW.lease_owner IS NULL AND NEW.next_poll_at <= now() + interval '1 second')
EXECUTE FUNCTION flink_ticketd_notify_due();
