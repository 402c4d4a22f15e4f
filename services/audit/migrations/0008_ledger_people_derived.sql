-- Issue 21, review: `ledger_people` decides who audit takes for an auditor and whose
-- manager a person is (services/audit/ledger.py, person_data and line_data), and the
-- service's role could insert any row into it: a forged row (a record naming no manager,
-- or the auditor role) shadowed the person's real entries, and verify, which reads the
-- leaves, never sees this index. Now the database derives the rows from each valid
-- directory.people.imported.v1 entry as it is appended, and the service's role may only
-- read them: forging one takes the table owner (who can rewrite anything; see
-- docs/security.md, what verify proves).
CREATE FUNCTION ledger_people_from_leaf() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    BEGIN
        -- each person once, with the last record the entry lists for them
        INSERT INTO ledger_people (person_id, idx, record)
        SELECT DISTINCT ON (item.value ->> 'person_id') item.value ->> 'person_id', NEW.idx,
               item.value
        FROM jsonb_array_elements(
                 convert_from(NEW.leaf, 'UTF8')::jsonb #> '{event,data,people}'
             ) WITH ORDINALITY AS item(value, n)
        WHERE item.value ->> 'person_id' IS NOT NULL
        ORDER BY item.value ->> 'person_id', item.n DESC;
    EXCEPTION WHEN others THEN
        -- a leaf jsonb cannot hold (a \u0000 in a name): the people without their
        -- records; a lookup then reads the person from the leaf (ledger.py)
        BEGIN
            INSERT INTO ledger_people (person_id, idx, record)
            SELECT DISTINCT m.id[1], NEW.idx, NULL::jsonb
            FROM regexp_matches(convert_from(NEW.leaf, 'UTF8'), '"person_id":"([^"\\]*)"', 'g')
                 AS m(id);
        EXCEPTION WHEN others THEN
            -- never let the index stop the ledger: the entry stands, its people unindexed
            RAISE WARNING 'ledger entry %: people not indexed (%)', NEW.idx, SQLERRM;
        END;
    END;
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_people_derived AFTER INSERT ON ledger FOR EACH ROW
    WHEN (NEW.valid AND NEW.event_type = 'directory.people.imported.v1')
    EXECUTE FUNCTION ledger_people_from_leaf();

REVOKE INSERT ON ledger_people FROM incidents_audit;
