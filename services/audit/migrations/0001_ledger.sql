-- The audit ledger: every Kafka record audit consumed, once, in one total order.
-- `idx` is gap-free from 0 (the Merkle leaf index); `leaf` is the canonical leaf
-- bytes (see services/audit/ledger.py) and `leaf_hash` = SHA-256(0x00 || leaf).
INSERT INTO counters (name, last) VALUES ('ledger', -1);

CREATE TABLE ledger (
    idx         bigint      PRIMARY KEY CHECK (idx >= 0),
    recorded_at timestamptz NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    record_key  text        NOT NULL UNIQUE,   -- (topic, event id), or coordinates+digest for raw input
    event_id    uuid,
    incident_id text,
    event_type  text,
    trace_id    text,
    valid       boolean     NOT NULL,
    leaf        bytea       NOT NULL,
    leaf_hash   bytea       NOT NULL CHECK (length(leaf_hash) = 32)
);
CREATE INDEX ledger_incident ON ledger (incident_id, idx) WHERE incident_id IS NOT NULL;
CREATE INDEX ledger_recorded_at ON ledger (recorded_at);

-- Append-only, for everyone: UPDATE, DELETE and TRUNCATE raise unless a superuser
-- disables this trigger (which the verifier then catches by the hashes).
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit ledger is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER ledger_no_update BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
