-- Evidence files (docs/attachments.md): one row per file, its content in sealed chunks
-- (AES-256-GCM under the incident's data key, the chunk's place and its file in the
-- associated data). A file's row and chunks commit with its
-- `incident.attachment.added.v1`, or not at all. The erasure job deletes the chunks
-- when it destroys the key (they would not open anyway).
CREATE TABLE attachments (
    attachment_id text        PRIMARY KEY,
    incident_id   text        NOT NULL,
    size          bigint      NOT NULL CHECK (size > 0),
    chunks        integer     NOT NULL CHECK (chunks > 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attachments_incident ON attachments (incident_id);

CREATE TABLE attachment_chunks (
    attachment_id text    NOT NULL REFERENCES attachments ON DELETE CASCADE
                          DEFERRABLE INITIALLY DEFERRED,  -- the row comes last, with the size
    idx           integer NOT NULL,
    body          bytea   NOT NULL,
    PRIMARY KEY (attachment_id, idx)
);
-- The chunks are ciphertext: compressing them gains nothing.
ALTER TABLE attachment_chunks ALTER COLUMN body SET STORAGE EXTERNAL;
