-- Master-key rotation: a live data key may be re-wrapped under another master key
-- (its `wrapped` and `master_key_id` change together). Destroying stays final, and
-- nothing else about a row may change.
CREATE OR REPLACE FUNCTION data_keys_stay_destroyed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'data keys are destroyed (wrapped = NULL), never deleted';
    END IF;
    IF OLD.destroyed_at IS NOT NULL THEN
        RAISE EXCEPTION 'the data key of % was destroyed', OLD.incident_id;
    END IF;
    IF NEW.incident_id <> OLD.incident_id OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'a data key can only be destroyed or re-wrapped';
    END IF;
    IF NEW.wrapped IS NOT NULL AND NEW.master_key_id = OLD.master_key_id THEN
        RAISE EXCEPTION 'a data key is re-wrapped only under another master key';
    END IF;
    RETURN NEW;
END $$;
