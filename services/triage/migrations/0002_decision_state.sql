-- The incident's decision as it stands (services.domain.triage.TriageDecision.to_json,
-- with the digest of the report version the chain is shown): every later input
-- (amendment, confirmation, recusal, ordered reassignment) is a pure function of it, so
-- exclusions only grow whatever the directory does later. NULL for incidents decided
-- before it existed: their decision is rebuilt from the columns above once, then kept.
ALTER TABLE decisions ADD COLUMN state jsonb;
