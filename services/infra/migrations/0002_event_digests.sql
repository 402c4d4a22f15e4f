-- The digest of each event a service's consumers accepted, by event id: a second
-- record with the same id and other content is a replay, refused (docs/event-signing.md).
CREATE TABLE event_digests (
    event_id    text        PRIMARY KEY,
    digest      bytea       NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
