-- The console's index of incidents: one row per incident, folded from the ledger by the
-- same `apply` the services use, so the auditor's list pages and filters are keyset
-- queries instead of folds of the whole ledger. Derived data: it can be dropped and
-- rebuilt from the ledger at any time (its cursor is the counter 'console_index').
INSERT INTO counters (name, last) VALUES ('console_index', -1);

CREATE TABLE console_incidents (
    incident_id       text        PRIMARY KEY,
    first_idx         bigint      NOT NULL UNIQUE,   -- keyset order: newest first
    first_recorded_at timestamptz NOT NULL,
    last_idx          bigint      NOT NULL,
    last_recorded_at  timestamptz NOT NULL,
    category          text,
    severity          text,
    status            text        NOT NULL,
    escalation_level  integer     NOT NULL,
    acknowledged_at   timestamptz,
    ack_due_at        timestamptz,                   -- level 1's acknowledgement deadline
    breaches          integer     NOT NULL DEFAULT 0,
    state             jsonb       NOT NULL           -- IncidentState.to_json() without history
);
CREATE INDEX console_incidents_category ON console_incidents (category, first_idx);
CREATE INDEX console_incidents_severity ON console_incidents (severity, first_idx);
CREATE INDEX console_incidents_status ON console_incidents (status, first_idx);
CREATE INDEX console_incidents_breached ON console_incidents (first_idx) WHERE breaches > 0;
CREATE INDEX console_incidents_unacknowledged ON console_incidents (ack_due_at, first_idx)
    WHERE acknowledged_at IS NULL;

GRANT SELECT, INSERT, UPDATE ON console_incidents TO incidents_audit;
