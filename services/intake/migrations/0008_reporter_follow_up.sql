-- Reporters' follow-up (issue 22, docs/reporters.md).
--
-- A named reporter's reports, so she can list them when signed in. `owner` is a keyed
-- pseudonym of her person id (HMAC-SHA256 under intake's pseudonym key, context
-- `my-reports`): the table alone names nobody; whoever holds the key can test a person,
-- as he can with the `reporter` pseudonym of every submission. Written in the
-- transaction that opens the incident; deleted when the incident is erased. Reading a
-- report still checks the report's own sealed `reporter_identity`.
CREATE TABLE reporter_reports (
    owner       text NOT NULL,
    incident_id text NOT NULL UNIQUE,
    PRIMARY KEY (owner, incident_id)
);

-- The triage and escalation events of each incident that say where it stands (decided,
-- level asked, escalated, stalled, cleared, reassigned, a clock breached), kept by the
-- `intake-routing` consumer beside its routing rows, so intake's pages show the same
-- status as audit's (services/domain/status.py). Copies of published events: the
-- decision's chain names handlers, which the reporter's views never show.
CREATE TABLE incident_progress (
    event_id    text        PRIMARY KEY,
    incident_id text        NOT NULL,
    time        timestamptz NOT NULL,
    body        jsonb       NOT NULL
);
CREATE INDEX incident_progress_incident ON incident_progress (incident_id, time);
