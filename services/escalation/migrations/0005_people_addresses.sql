-- Issue 21, everyone reads the current directory: the e-mail address of each person as
-- the latest directory.person.upserted.v1 on directory.changes gave it (NULL: none),
-- instead of the directory file read once at start. `at` is that event's time, so a
-- record delivered again or late never puts back an older address.
CREATE TABLE IF NOT EXISTS people_addresses (
    person_id text PRIMARY KEY,
    email text,
    at timestamptz NOT NULL
);
