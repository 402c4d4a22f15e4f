-- One log, one identity (issue 19). The log id is made with the database (here, when
-- audit's schema is created) and never changes. The signing key is bound to it
-- (services/audit/identity.py): audit refuses to start with a key that signed another
-- log, so a fresh database never continues under the key of an earlier one.
CREATE TABLE ledger_log (
    only_row   boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    log_id     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO ledger_log (log_id) VALUES (replace(gen_random_uuid()::text, '-', ''));
