-- Retention and legal holds, kept by intake (which owns the keys' lifecycle): one row
-- per incident, written in the same transaction as the events that change it (the
-- report, its closing, a hold placed or released, the erasure). The erasure job reads
-- it to find closed incidents whose retention has passed and that no hold keeps.
CREATE TABLE retention (
    incident_id text        PRIMARY KEY,
    category    text        NOT NULL,
    closed_at   timestamptz,                 -- when it was closed (null while open)
    held        boolean     NOT NULL DEFAULT false,
    erased_at   timestamptz
);
CREATE INDEX retention_due ON retention (closed_at) WHERE erased_at IS NULL AND NOT held;
