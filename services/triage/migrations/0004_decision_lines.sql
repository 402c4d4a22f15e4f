-- The lines of each kept decision: every person whose manager or roles, if they
-- changed, may change its exclusions (its accused, routed and independent people and
-- everyone above them), as the directory stood at decisions.lines_seq. A directory
-- re-check looks up here the people who moved, so its work follows what moved, not how
-- many decisions were ever kept (docs/scale.md). Written in the same transaction as
-- decisions.state. A decision kept before this migration has no lines (lines_seq NULL):
-- the next directory batch re-checks it in full and keeps its lines.
ALTER TABLE decisions ADD COLUMN lines_seq bigint;
CREATE INDEX decisions_lines_seq ON decisions (lines_seq) WHERE state IS NOT NULL;
CREATE TABLE decision_lines (
    person_id   text NOT NULL,
    incident_id text NOT NULL REFERENCES decisions (incident_id),
    PRIMARY KEY (person_id, incident_id)
);
CREATE INDEX decision_lines_incident ON decision_lines (incident_id);
