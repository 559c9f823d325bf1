-- The ticket event trigger of 20261203000005, cheaper (the PostgreSQL twin of the SQLite
-- migration of the same version): a claim, a lease extension or a poll that changes nothing an
-- event records (most writes) no longer calls the trigger function. The events written are the
-- same as before.

DROP TRIGGER tickets_record_events ON tickets;

CREATE TRIGGER tickets_record_events AFTER UPDATE ON tickets
    FOR EACH ROW
    WHEN ((OLD.lease_owner IS NOT NULL AND NEW.lease_owner IS NOT NULL AND NEW.lease_owner <> OLD.lease_owner)
          OR NEW.state IS DISTINCT FROM OLD.state
          OR (OLD.polls = 0 AND NEW.polls > 0)
          OR (NEW.ticket_status IS NOT NULL AND NEW.ticket_status IS DISTINCT FROM OLD.ticket_status)
          OR (OLD.error_streak = 0) <> (NEW.error_streak = 0)
          OR (NEW.error_code IS NOT NULL AND NEW.error_code IS DISTINCT FROM OLD.error_code))
    EXECUTE FUNCTION tickets_record_events();
