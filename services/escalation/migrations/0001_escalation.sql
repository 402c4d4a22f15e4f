-- One row per incident: its escalation state (services.domain.escalation, as JSON)
-- and when it next needs attention. The scheduler takes due rows with
-- FOR UPDATE SKIP LOCKED, so each deadline fires once even with several workers,
-- and the state, the events and the new wake-up time commit together.
CREATE TABLE escalation_state (
    incident_id text        PRIMARY KEY,
    state       jsonb       NOT NULL,
    wakeup      timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX escalation_wakeup ON escalation_state (wakeup) WHERE wakeup IS NOT NULL;

-- Acknowledgements and reassignments that arrive before the triage decision they
-- refer to (different topics carry no order between them); applied at start.
CREATE TABLE early_events (
    incident_id text        NOT NULL,
    seq         bigint      GENERATED ALWAYS AS IDENTITY,
    body        bytea       NOT NULL,
    PRIMARY KEY (incident_id, seq)
);

CREATE FUNCTION escalation_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_wakeup', '');
    RETURN NULL;
END $$;
CREATE TRIGGER escalation_wake AFTER INSERT OR UPDATE OF wakeup ON escalation_state
    FOR EACH STATEMENT EXECUTE FUNCTION escalation_wake();
