-- The event store, outbox and consumer tracking every service schema has.
-- Applied with search_path set to the service's schema.

-- Gap-free positions in commit order: an append takes the counter row's lock and
-- holds it until commit, so position N+1 is only handed out after N committed (or
-- rolled back, which also rolls the counter back). A sequence would leave gaps and
-- hand out numbers out of commit order.
CREATE TABLE counters (
    name text PRIMARY KEY,
    last bigint NOT NULL
);
INSERT INTO counters (name, last) VALUES ('events', 0), ('outbox', 0);

CREATE TABLE events (
    stream_id   text        NOT NULL,
    version     integer     NOT NULL CHECK (version >= 1),
    position    bigint      NOT NULL UNIQUE,
    event_id    uuid        NOT NULL UNIQUE,
    type        text        NOT NULL,
    time        timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    body        bytea       NOT NULL,          -- the exact CloudEvent bytes published
    PRIMARY KEY (stream_id, version)           -- optimistic concurrency per stream
);

-- Rows to publish, in the same transaction as the events they carry.
CREATE TABLE outbox (
    position   bigint      PRIMARY KEY,
    event_id   uuid        NOT NULL,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX outbox_created_at ON outbox (created_at);

-- How far each relay has published (the cursor moves back when the broker lost data).
CREATE TABLE relay_state (
    name        text PRIMARY KEY,
    published   bigint      NOT NULL DEFAULT 0,
    resets      integer     NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A consumer's "processed" marks, committed with its effects: re-delivery is a no-op.
CREATE TABLE tracking (
    consumer     text        NOT NULL,
    event_key    text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (consumer, event_key)
);

-- Wake the relay as soon as an outbox row commits.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
