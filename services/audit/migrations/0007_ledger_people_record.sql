-- Issue 21: audit looks a person up by their latest whole record (services/audit/
-- ledger.py, person_data). For a person a bulk import's chunk carries, reading it
-- from the entry's leaf meant reading and parsing the leaf of up to 500 people for
-- each person looked up (about 3 ms; a conflict check walks a whole management
-- line). The chunk's record of each person is kept beside the index, written with
-- it from the same leaf in the append's transaction: a copy for lookups, the leaf
-- stays what a proof covers. NULL (rows written before): read from the leaf.
ALTER TABLE ledger_people ADD COLUMN record jsonb;
