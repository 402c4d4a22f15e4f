-- A decision written by a transaction that a running re-check could not see (committed
-- after the re-check read the decisions), with lines taken on a directory older than
-- the one that re-check checked against, missed that batch's changes. Each decision
-- keeps the transaction that last wrote its lines (written_by), and the mark the oldest
-- transaction still running when each of the last two re-checks read the decisions
-- (horizon, previous_horizon): the next re-check checks those decisions in full.
ALTER TABLE decisions ADD COLUMN written_by xid8;
CREATE INDEX decisions_written_by ON decisions (written_by) WHERE state IS NOT NULL;
ALTER TABLE directory_rechecked ADD COLUMN horizon xid8, ADD COLUMN previous_horizon xid8;
