-- Anonymous reporters' receipts. Nothing identifying: no address, no user agent, no
-- client header, no time of submission beyond what the incident's events say. The
-- secret itself is never stored, only its argon2id hash (PHC string).
CREATE TABLE receipts (
    receipt     text PRIMARY KEY,          -- canonical form, e.g. 7K3QZ-M0XRT-4HB9C-PWD2E
    incident_id text NOT NULL UNIQUE,
    secret_hash text NOT NULL              -- $argon2id$v=19$m=...,t=...,p=...$salt$hash
);

-- Attempts to open a receipt, per receipt (every instance of intake shares them), in
-- fixed windows: an attempt is counted before the secret is checked and the count is
-- cleared by a success, so N wrong secrets in a window lock that receipt until the
-- window ends. Keyed by the SHA-256 of the receipt as typed (canonical when it is
-- well-formed), so receipts that do not exist are limited exactly like real ones and
-- the answer never tells them apart. Never keyed by anything about the client.
CREATE TABLE receipt_attempts (
    receipt_digest text        PRIMARY KEY,
    window_start   timestamptz NOT NULL,
    attempts       integer     NOT NULL
);
CREATE INDEX receipt_attempts_window_start ON receipt_attempts (window_start);
