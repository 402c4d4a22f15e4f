-- Privileged roles (auditor, identity_custodian, admin) need two admins (issue 19): one
-- proposes (directory.role.proposed.v1), a different one approves, and only then is the
-- role assigned (directory.role.assigned.v1). Kept by services/intake/grants.py in the
-- same transaction as those events.
CREATE TABLE role_grants (
    grant_id    text        PRIMARY KEY,
    person_id   text        NOT NULL,
    role        text        NOT NULL,
    proposed_by text        NOT NULL,
    proposed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    approved_by text,
    approved_at timestamptz
);
CREATE UNIQUE INDEX role_grants_pending ON role_grants (person_id, role) WHERE approved_by IS NULL;
