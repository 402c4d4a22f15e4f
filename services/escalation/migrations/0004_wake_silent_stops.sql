-- Issue 18, never silent: state format 1 stopped a chain that had nobody left (or no
-- repeat interval) with no deadline and no wake-up, and said nothing more. Format 2
-- asks the independent level, repeats, or raises incident.escalation.stalled.v1; its
-- reader gives such a row its deadline back at the instant it stopped (`asked_at`),
-- and this wakes the row then, so the scheduler moves it on under the new rules.
UPDATE escalation_state
   SET wakeup = LEAST(wakeup, (state->>'asked_at')::timestamptz)
 WHERE state->>'format' = '1'
   AND (state->>'current_level')::int > 0
   AND state->'acknowledged' = 'null'::jsonb
   AND state->'due_at' = 'null'::jsonb
   AND state->>'asked_at' IS NOT NULL;
