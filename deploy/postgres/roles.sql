-- Database roles of a production deployment: one login per service, and the owner
-- that applies the migrations. Run once by a superuser (or the managed service's admin
-- role), connected to the application database, before the migrate job:
--
--   psql -v ON_ERROR_STOP=1 -d incidents \
--        -v migrator_password=... -v intake_password=... -v triage_password=... \
--        -v escalation_password=... -v audit_password=... -f roles.sql
--
-- (deploy/postgres/initdb.sh does this in compose, reading the docker secrets with
-- psql's \set and backquotes so no password appears on a command line.) Running it
-- again is safe: existing roles keep their grants and get the given passwords, which
-- is how passwords are rotated.
--
-- Who may do what:
--   incidents_migrator   owns the four schemas and every table in them (the migrate
--                        job logs in as it). CREATEROLE only because migration
--                        audit/0002 says CREATE ROLE incidents_audit, which PostgreSQL
--                        checks before it notices the role exists. As owner it could
--                        switch the ledger's triggers off, so its password belongs to
--                        the migrate job alone.
--   incidents_intake,    read and write the tables of their own schema, nothing else.
--   incidents_triage,
--   incidents_escalation
--   incidents_audit      the role migration audit/0002 grants: SELECT and INSERT on the
--                        ledger tables, never UPDATE, DELETE or TRUNCATE. In production
--                        audit logs in as it (INCIDENTS_AUDIT_DB_ROLE empty).
--
-- Every service applies its migrations at start-up (services/infra/runtime.py), and
-- services/infra/db.py runs CREATE SCHEMA IF NOT EXISTS and CREATE TABLE IF NOT EXISTS
-- <schema>.schema_migrations each time. PostgreSQL checks the CREATE privilege before
-- it looks whether the object exists, so each login keeps CREATE on the database and
-- on its own schema. With the migrate job run first there is nothing left for them to
-- apply: a service never creates or changes a table in practice.

\set ON_ERROR_STOP on

-- Logins: created if missing, else given the new password.
SELECT format(
    CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name)
         THEN 'ALTER ROLE %I WITH LOGIN PASSWORD %L'
         ELSE 'CREATE ROLE %I WITH LOGIN PASSWORD %L' END,
    r.name, r.password)
FROM (VALUES
    ('incidents_migrator', :'migrator_password'),
    ('incidents_intake', :'intake_password'),
    ('incidents_triage', :'triage_password'),
    ('incidents_escalation', :'escalation_password'),
    ('incidents_audit', :'audit_password')
) AS r (name, password)
\gexec

ALTER ROLE incidents_migrator WITH CREATEROLE;
-- Migration audit/0002 grants incidents_audit to the role running it; that takes ADMIN.
GRANT incidents_audit TO incidents_migrator WITH ADMIN OPTION;

-- The database: only our roles connect; PUBLIC keeps nothing.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database())
\gexec
SELECT format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO incidents_migrator',
              current_database())
\gexec
SELECT format('GRANT CONNECT, CREATE ON DATABASE %I TO %I', current_database(), r)
FROM unnest(ARRAY['incidents_intake', 'incidents_triage', 'incidents_escalation',
                  'incidents_audit']) AS r
\gexec
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- One schema per service (INCIDENTS_DB_SCHEMA_SUFFIX is empty in production), owned by
-- the migrator, so every table the migrations create belongs to it.
CREATE SCHEMA IF NOT EXISTS intake AUTHORIZATION incidents_migrator;
CREATE SCHEMA IF NOT EXISTS triage AUTHORIZATION incidents_migrator;
CREATE SCHEMA IF NOT EXISTS escalation AUTHORIZATION incidents_migrator;
CREATE SCHEMA IF NOT EXISTS audit AUTHORIZATION incidents_migrator;

-- intake, triage, escalation: read and write their own tables (and identity sequences).
GRANT USAGE, CREATE ON SCHEMA intake TO incidents_intake;
ALTER DEFAULT PRIVILEGES FOR ROLE incidents_migrator IN SCHEMA intake
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO incidents_intake;
ALTER DEFAULT PRIVILEGES FOR ROLE incidents_migrator IN SCHEMA intake
    GRANT USAGE, SELECT ON SEQUENCES TO incidents_intake;

GRANT USAGE, CREATE ON SCHEMA triage TO incidents_triage;
ALTER DEFAULT PRIVILEGES FOR ROLE incidents_migrator IN SCHEMA triage
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO incidents_triage;
ALTER DEFAULT PRIVILEGES FOR ROLE incidents_migrator IN SCHEMA triage
    GRANT USAGE, SELECT ON SEQUENCES TO incidents_triage;

GRANT USAGE, CREATE ON SCHEMA escalation TO incidents_escalation;
ALTER DEFAULT PRIVILEGES FOR ROLE incidents_migrator IN SCHEMA escalation
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO incidents_escalation;
ALTER DEFAULT PRIVILEGES FOR ROLE incidents_migrator IN SCHEMA escalation
    GRANT USAGE, SELECT ON SEQUENCES TO incidents_escalation;

-- audit: migration 0002 grants exactly what the ledger allows (SELECT and INSERT on
-- ledger, ledger_nodes and ledger_heads). By default it may only read what the
-- migrator creates in its schema, e.g. schema_migrations, which its start-up checks.
GRANT USAGE, CREATE ON SCHEMA audit TO incidents_audit;
ALTER DEFAULT PRIVILEGES FOR ROLE incidents_migrator IN SCHEMA audit
    GRANT SELECT ON TABLES TO incidents_audit;

-- keys: the key store (services/infra/keystore.py). Intake creates and destroys data
-- keys (UPDATE sets them to NULL; DELETE is refused by a trigger and not granted);
-- audit only reads them (its migration grants SELECT). Triage and escalation get
-- nothing here: they never open report content.
CREATE SCHEMA IF NOT EXISTS keys AUTHORIZATION incidents_migrator;
GRANT USAGE, CREATE ON SCHEMA keys TO incidents_intake, incidents_audit;
ALTER DEFAULT PRIVILEGES FOR ROLE incidents_migrator IN SCHEMA keys
    GRANT SELECT, INSERT, UPDATE ON TABLES TO incidents_intake;
ALTER DEFAULT PRIVILEGES FOR ROLE incidents_migrator IN SCHEMA keys
    GRANT SELECT ON TABLES TO incidents_audit;
