-- The raw-ledger read (GET /v1/ledger/entries) serves, with each page of entries, the
-- `ledger_people` rows at their indexes, so a verifier proves this index against the
-- leaves as it proves the ledger's own columns (services/audit/verify.py). Its primary
-- key leads with the person: this index finds a page's rows without scanning them all.
CREATE INDEX ledger_people_at ON ledger_people (idx);
