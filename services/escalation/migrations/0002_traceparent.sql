-- The trace of the triage decision that started the incident's escalation, so a
-- deadline fired by the scheduler (hours later, with no record in hand) continues the
-- report's one trace instead of starting a trace of its own.
ALTER TABLE escalation_state ADD COLUMN traceparent text;
