-- SCIM filters (services/intake/scim_filter.py) served by indexes instead of a scan of
-- `people` (issue 21): userName, displayName, emails and department/organization compare
-- case-insensitively (RFC 7643 caseExact false), so the indexes are on lower(...);
-- text_pattern_ops serves both `eq` and `sw` (LIKE 'prefix%', whatever the collation).
-- The same lower(person_id) index serves the case-insensitive uniqueness of userName.
CREATE INDEX people_lower_id ON people (lower(person_id) text_pattern_ops);
CREATE INDEX people_lower_name ON people (lower(name) text_pattern_ops);
CREATE INDEX people_lower_email ON people (lower(email) text_pattern_ops);
CREATE INDEX people_lower_unit ON people (lower(unit) text_pattern_ops);
CREATE INDEX people_manager ON people (manager_id);
