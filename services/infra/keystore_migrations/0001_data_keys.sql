-- The key store: one wrapped data key (and digest salt) per incident. The one place of
-- personal data that is not append-only: destroying a row's key is what erases an
-- incident's content everywhere at once (crypto-shredding). Its own schema, so that
-- the services that must open content (intake writes, audit reads) can be granted it
-- and the others (triage, escalation) are not.
CREATE TABLE data_keys (
    incident_id   text        PRIMARY KEY,
    master_key_id text        NOT NULL,      -- which master key wrapped it
    wrapped       bytea,                     -- AES-GCM(master, data key || salt); NULL once destroyed
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    destroyed_at  timestamptz,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);

-- A destroyed key never comes back, for every role (a superuser who switches the
-- trigger off still cannot restore bytes that are gone).
CREATE FUNCTION data_keys_stay_destroyed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'data keys are destroyed (wrapped = NULL), never deleted';
    END IF;
    IF OLD.destroyed_at IS NOT NULL THEN
        RAISE EXCEPTION 'the data key of % was destroyed', OLD.incident_id;
    END IF;
    IF NEW.incident_id <> OLD.incident_id OR NEW.wrapped IS NOT NULL THEN
        RAISE EXCEPTION 'a data key can only be destroyed, not changed';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER data_keys_only_destroyed BEFORE UPDATE OR DELETE ON data_keys
    FOR EACH ROW EXECUTE FUNCTION data_keys_stay_destroyed();

-- Audit opens content for auditors: it may read keys, never write them.
DO $$
BEGIN
    CREATE ROLE incidents_audit NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
GRANT USAGE ON SCHEMA {schema} TO incidents_audit;
GRANT SELECT ON data_keys TO incidents_audit;
