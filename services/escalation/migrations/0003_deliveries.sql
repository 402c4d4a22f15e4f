-- Notices waiting to be delivered, or delivered: the durable delivery queue.
-- The activity consumer only inserts a row (with its tracking row, in one
-- transaction); a worker leases due rows (`next_at` moves forward by the lease, so a
-- worker that dies mid-delivery is replaced when the lease runs out), delivers
-- outside any transaction and records the outcome. `body` is the incident.notified.v1
-- event: principal, channel, level and report digest, never report content.
CREATE TABLE deliveries (
    event_id    text        PRIMARY KEY,
    incident_id text        NOT NULL,
    body        bytea       NOT NULL,
    traceparent text,
    state       text        NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts    integer     NOT NULL DEFAULT 0,
    next_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    done_at     timestamptz
);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 'pending';
