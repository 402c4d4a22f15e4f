-- The incident's correlation id (its first event's id), from the triage decision that
-- started the escalation, so the events a deadline causes (no record in hand) carry it
-- like every other event of the incident.
ALTER TABLE escalation_state ADD COLUMN correlationid text;
