-- A notice taken before its incident's decision reached escalation is held, not sent
-- (SPEC invariant 3: escalation cannot yet tell whether its recipient is excluded):
-- the worker gives back its leases (`attempts` to 0: no adapter ever had it) and sets
-- `next_at` a while ahead. Held therefore means pending, `attempts = 0` (every lease
-- adds one) and `next_at` in the future. Starting the incident's escalation makes
-- its held notices due at once, under the incident's lock, looked up by this index
-- (pending rows only: delivered and failed ones are never looked at again).
CREATE INDEX deliveries_pending_incident ON deliveries (incident_id) WHERE state = 'pending';
