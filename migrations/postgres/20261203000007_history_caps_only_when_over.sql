-- The history caps (the first event and the latest 199 of a ticket; the first attempt and the
-- latest 99 of a delivery) run their DELETE only when there is something to delete: more rows than
-- the cap keeps. Until then (every ticket but a few) an insert costs one index look-up instead of
-- two look-ups and a range delete. What stays is unchanged: the DELETE is the one of 20261203000005,
-- and its range is empty unless the row past the cap exists.

CREATE OR REPLACE FUNCTION ticket_events_cap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ticket_events WHERE ticket = NEW.ticket ORDER BY id DESC LIMIT 1 OFFSET 200) THEN
        DELETE FROM ticket_events
        WHERE ticket = NEW.ticket
          AND id > (SELECT min(id) FROM ticket_events WHERE ticket = NEW.ticket)
          AND id <= (SELECT id FROM ticket_events WHERE ticket = NEW.ticket ORDER BY id DESC LIMIT 1 OFFSET 199);
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION webhook_attempts_cap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhook_attempts WHERE delivery = NEW.delivery ORDER BY id DESC LIMIT 1 OFFSET 100) THEN
        DELETE FROM webhook_attempts
        WHERE delivery = NEW.delivery
          AND id > (SELECT min(id) FROM webhook_attempts WHERE delivery = NEW.delivery)
          AND id <= (SELECT id FROM webhook_attempts WHERE delivery = NEW.delivery ORDER BY id DESC LIMIT 1 OFFSET 99);
    END IF;
    RETURN NULL;
END;
$$;
