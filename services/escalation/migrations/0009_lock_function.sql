-- One round trip for what starting a batch's escalations did in two: take the
-- incidents' advisory locks in the order given, then read which of them have a state.
-- The read is a statement of its own inside the function (a VOLATILE function takes
-- a fresh snapshot for each statement), so it sees the state another transaction
-- inserted under the lock and committed while this one waited; one statement doing
-- both would read with a snapshot taken before the wait.
CREATE FUNCTION escalation_lock(incidents text[]) RETURNS SETOF text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('escalation:' || i, 0))
       FROM unnest(incidents) WITH ORDINALITY AS r (i, n) ORDER BY n;
    RETURN QUERY SELECT s.incident_id FROM escalation_state s
                  WHERE s.incident_id = ANY(incidents);
END $$;
