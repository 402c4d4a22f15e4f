-- Who each incident is routed to, and who is excluded from it: intake's projection
-- of incident.triage (triaged: exclusions; assigned, reassigned) and
-- incident.escalations (escalated: recipients), kept by the "intake-routing"
-- consumer in the same transaction as its tracking row (services/intake/routing.py).
--
-- One row per (incident, principal). An exclusion is sticky: once excluded_rule is
-- set it is never cleared, and the access rules refuse an excluded principal even
-- when `routed` is true (a routing event that arrived out of order or in error).
CREATE TABLE routing (
    incident_id   text        NOT NULL,
    principal     text        NOT NULL,
    level         integer,                        -- routing level; null if never routed
    routed        boolean     NOT NULL DEFAULT false,
    excluded_rule text,                           -- conflict rule; null if not excluded
    routed_at     timestamptz,                    -- event time it was (last) routed
    excluded_at   timestamptz,                    -- event time it was excluded
    source_event  uuid        NOT NULL,           -- the event of the last change
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (incident_id, principal)
);
-- "My incidents": the incidents currently routed to a principal.
CREATE INDEX routing_routed_principal ON routing (principal, routed_at DESC) WHERE routed;
