-- Issue 21: a bulk import records one directory.people.imported.v1 per chunk of
-- people (stream directory-import:<import id>), not one event per person on the
-- person's stream directory:<id>. A person's version (the SCIM ETag, W/"n") counted
-- the events of that stream; it now adds the chunks that changed the person, counted
-- here by the import in the statement that writes the row, so every recorded change
-- still moves the version by one. `created_at` is when the row was first written: the
-- SCIM `meta.created` of a person who has no event of their own stream.
ALTER TABLE people
    ADD COLUMN imports integer NOT NULL DEFAULT 0,
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
