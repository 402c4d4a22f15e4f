-- Witness cosignatures of signed heads (C2SP tlog-cosignature lines), append-only like
-- the heads. The largest size a witness cosigned is where the next submission to it
-- starts its consistency proof.
CREATE TABLE ledger_cosignatures (
    tree_size   bigint      NOT NULL REFERENCES ledger_heads (tree_size),
    witness     text        NOT NULL,          -- the witness's verifier key string
    signature   text        NOT NULL,          -- the signature line, verbatim
    cosigned_at timestamptz NOT NULL,          -- the cosignature's own timestamp
    PRIMARY KEY (tree_size, witness)
);
CREATE INDEX ledger_cosignatures_witness ON ledger_cosignatures (witness, tree_size);

CREATE TRIGGER ledger_cosignatures_no_update BEFORE UPDATE OR DELETE ON ledger_cosignatures
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_cosignatures_no_truncate BEFORE TRUNCATE ON ledger_cosignatures
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

GRANT SELECT, INSERT ON ledger_cosignatures TO incidents_audit;
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_cosignatures FROM incidents_audit;

-- A reporter's receipt proof looks its submission up by event id.
CREATE INDEX ledger_event_id ON ledger (event_id) WHERE event_id IS NOT NULL;
