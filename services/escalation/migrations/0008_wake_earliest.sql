-- The scheduler's NOTIFY names the earliest wake-up a statement saved (Unix seconds),
-- and none is sent for a statement that saved none (a chain acknowledged or stopped).
-- The scheduler then looks again only for a wake-up earlier than the one it sleeps
-- until: most saved states move their wake-up later (a start's first deadline, a
-- step's next), and each such NOTIFY cost it a query. Transition tables take no
-- column list, so the UPDATE trigger fires on every UPDATE of a state (all of them
-- set the wake-up anyway).
DROP TRIGGER escalation_wake ON escalation_state;
CREATE OR REPLACE FUNCTION escalation_wake() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    earliest timestamptz;
BEGIN
    SELECT min(wakeup) INTO earliest FROM saved;
    IF earliest IS NOT NULL THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '_wakeup', extract(epoch FROM earliest)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER escalation_wake_insert AFTER INSERT ON escalation_state
    REFERENCING NEW TABLE AS saved FOR EACH STATEMENT EXECUTE FUNCTION escalation_wake();
CREATE TRIGGER escalation_wake_update AFTER UPDATE ON escalation_state
    REFERENCING NEW TABLE AS saved FOR EACH STATEMENT EXECUTE FUNCTION escalation_wake();
