-- Issue 21: a bulk import records one directory.people.imported.v1 per chunk of up to
-- 500 people, one ledger entry. Its row cannot name one person in `incident_id` (where a
-- person's directory.person.upserted.v1 is found), so this index says which people
-- each such entry carries; it is written in the transaction that appends the entry
-- (services/audit/ledger.py). Derived from the leaves, outside what the hashes cover:
-- the leaves say the same, and a verifier reads them.
CREATE TABLE ledger_people (
    person_id text   NOT NULL,
    idx       bigint NOT NULL,
    PRIMARY KEY (person_id, idx)
);
GRANT SELECT, INSERT ON ledger_people TO incidents_audit;

-- Append-only like the ledger: no privilege to change it, and the ledger's trigger.
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_people FROM incidents_audit;
CREATE TRIGGER ledger_people_no_update BEFORE UPDATE OR DELETE ON ledger_people FOR EACH ROW
    EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_people_no_truncate BEFORE TRUNCATE ON ledger_people FOR EACH STATEMENT
    EXECUTE FUNCTION ledger_append_only();
