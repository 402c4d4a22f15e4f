-- A notice waiting for its incident's decision (pending, no escalation_state: held by
-- migration 0010's rule, or not leased yet) past INCIDENTS_NOTIFY_HELD_ALARM_SECONDS
-- is alarmed once (review D7: a decision escalation dead-lettered leaves nobody told
-- and no deadline running). `alarmed_at` records that it was, so a restart or a second
-- worker never raises its incident again; the pending-rows index (0010) serves the look.
ALTER TABLE deliveries ADD COLUMN alarmed_at timestamptz;
