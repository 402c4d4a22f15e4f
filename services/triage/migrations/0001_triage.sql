-- Triage's own records. The directory is event-sourced: every directory.* event
-- consumed is kept in order (shared by all triage workers, whichever partition they
-- read), so a decision can be explained with the directory as it was (directory_seq).
CREATE TABLE directory_log (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    body        bytea       NOT NULL
);

-- Every policy version triage has run with, verbatim: an incident keeps its version.
CREATE TABLE policies (
    version   text        PRIMARY KEY,
    body      jsonb       NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The report and the inputs of each decision, to re-run exclusions on amendments.
CREATE TABLE decisions (
    incident_id    text        PRIMARY KEY,
    report         jsonb       NOT NULL,
    reporter       text,
    policy_version text        NOT NULL REFERENCES policies (version),
    directory_seq  bigint      NOT NULL,
    decided_at     timestamptz NOT NULL,
    amendments     jsonb       NOT NULL DEFAULT '[]'
);
