-- The decision deadline (SPEC invariants 1 and 8): every report intake accepts is
-- decided by triage within INCIDENTS_DECISION_WITHIN, or intake raises
-- incident.decision.overdue.v1 for it, once (services/intake/deadlines.py).
--
-- One row per report, written in the transaction that records the report; the
-- "intake-routing" consumer sets decided_at from triage's first incident.triaged.v1,
-- and the watcher sets overdue_at when it raised the event (in the transaction that
-- appends it). No content: the incident id and times only.
CREATE TABLE decision_clocks (
    incident_id  text        PRIMARY KEY,
    submitted_at timestamptz NOT NULL,           -- the report's event time
    decided_at   timestamptz,                    -- triage's first decision (event time)
    overdue_at   timestamptz                     -- when the overdue event was raised
);
-- Only undecided reports are indexed (a handful in a healthy system): the watcher's
-- due rows, its next wake-up and the gauge of reports overdue now each read this index.
CREATE INDEX decision_clocks_undecided ON decision_clocks (submitted_at)
    WHERE decided_at IS NULL;

-- Reports accepted before this migration: decided when triage's decision was kept
-- (incident_progress), or someone was routed to it, or it was closed; a report with
-- none of these was never decided and is raised at the watcher's first round.
INSERT INTO decision_clocks (incident_id, submitted_at, decided_at)
SELECT e.stream_id,
       e.time,
       coalesce(
           (SELECT min(p.time) FROM incident_progress p
             WHERE p.incident_id = e.stream_id AND p.body->>'type' = 'incident.triaged.v1'),
           (SELECT min(r.routed_at) FROM routing r
             WHERE r.incident_id = e.stream_id AND r.routed_at IS NOT NULL),
           (SELECT coalesce(t.closed_at, t.erased_at) FROM retention t
             WHERE t.incident_id = e.stream_id)
       )
FROM events e
WHERE e.version = 1 AND e.type = 'incident.report.submitted.v1'
ON CONFLICT (incident_id) DO NOTHING;
