-- SCIM provisioning (issue 21, docs/directory-sync.md). The person record itself is the
-- `people` row and its directory.person.upserted.v1 events; what only SCIM knows is
-- kept beside it: the HR system's externalId of a person and the User as it last sent
-- it (attributes the directory does not use come back as they were sent), and the
-- Groups created (a role nobody holds yet is still a Group).
CREATE TABLE scim_users (
    person_id   text PRIMARY KEY REFERENCES people (person_id) ON DELETE CASCADE,
    external_id text UNIQUE,
    attributes  jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE scim_groups (
    name       text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
