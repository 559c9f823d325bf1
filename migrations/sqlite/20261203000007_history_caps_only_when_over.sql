-- The history caps (the first event and the latest 199 of a ticket; the first attempt and the
-- latest 99 of a delivery) run their DELETE only when there is something to delete: more rows than
-- the cap keeps. Until then (every ticket but a few) an insert costs one index look-up instead of
-- two look-ups and a range delete. What stays is unchanged: the DELETE is the one of 20261203000005,
-- and its range is empty unless the row past the cap exists.

DROP TRIGGER ticket_events_cap;

CREATE TRIGGER ticket_events_cap AFTER INSERT ON ticket_events
WHEN EXISTS (SELECT 1 FROM ticket_events WHERE ticket = NEW.ticket ORDER BY id DESC LIMIT 1 OFFSET 200)
BEGIN
    DELETE FROM ticket_events
    WHERE ticket = NEW.ticket
      AND id > (SELECT min(id) FROM ticket_events WHERE ticket = NEW.ticket)
      AND id <= (SELECT id FROM ticket_events WHERE ticket = NEW.ticket ORDER BY id DESC LIMIT 1 OFFSET 199);
END;

DROP TRIGGER webhook_attempts_cap;

CREATE TRIGGER webhook_attempts_cap AFTER INSERT ON webhook_attempts
WHEN EXISTS (SELECT 1 FROM webhook_attempts WHERE delivery = NEW.delivery ORDER BY id DESC LIMIT 1 OFFSET 100)
BEGIN
    DELETE FROM webhook_attempts
    WHERE delivery = NEW.delivery
      AND id > (SELECT min(id) FROM webhook_attempts WHERE delivery = NEW.delivery)
      AND id <= (SELECT id FROM webhook_attempts WHERE delivery = NEW.delivery ORDER BY id DESC LIMIT 1 OFFSET 99);
END;
