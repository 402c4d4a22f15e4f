-- Intake's projections. The directory is owned by intake: every change is a
-- directory.* event in the event store (stream "directory:<person id>"), and this
-- table is its current state, updated in the same transaction.
CREATE TABLE people (
    person_id  text PRIMARY KEY,
    name       text,
    email      text,
    unit       text,
    manager_id text,
    roles      text[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX people_roles ON people USING gin (roles);

-- Idempotency-Key: same key and body give the same answer; the scope keeps one
-- caller's keys apart from another's (anonymous callers share the "anonymous" scope).
CREATE TABLE idempotency (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status       integer     NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (scope, key)
);
