-- Stored Merkle subtrees (level >= 1; level 0 is ledger.leaf_hash) so proofs for any
-- tree size are served without rehashing the log, and the signed tree heads.
CREATE TABLE ledger_nodes (
    level smallint NOT NULL CHECK (level >= 1 AND level < 64),
    idx   bigint   NOT NULL CHECK (idx >= 0),
    hash  bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE TABLE ledger_heads (
    tree_size  bigint      PRIMARY KEY CHECK (tree_size >= 0),
    root_hash  bytea       NOT NULL CHECK (length(root_hash) = 32),
    signed_at  timestamptz NOT NULL,
    key_id     text        NOT NULL,
    checkpoint text        NOT NULL          -- the C2SP signed note, verbatim
);

CREATE TRIGGER ledger_nodes_no_update BEFORE UPDATE OR DELETE ON ledger_nodes
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_nodes_no_truncate BEFORE TRUNCATE ON ledger_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_heads_no_update BEFORE UPDATE OR DELETE ON ledger_heads
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_heads_no_truncate BEFORE TRUNCATE ON ledger_heads
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- The role the audit service works as: it may read and append, never change or
-- remove ledger rows (privileges), on top of the triggers above (which bind everyone).
DO $$
BEGIN
    CREATE ROLE incidents_audit NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
    EXECUTE format('GRANT incidents_audit TO %I', current_user);
EXCEPTION WHEN duplicate_object OR unique_violation OR invalid_grant_operation THEN NULL;
END $$;
GRANT USAGE ON SCHEMA {schema} TO incidents_audit;
GRANT SELECT, INSERT ON ledger, ledger_nodes, ledger_heads, events, outbox TO incidents_audit;
GRANT SELECT, INSERT, UPDATE ON counters, relay_state TO incidents_audit;
GRANT SELECT, INSERT ON tracking TO incidents_audit;
REVOKE UPDATE, DELETE, TRUNCATE ON ledger, ledger_nodes, ledger_heads FROM incidents_audit;
