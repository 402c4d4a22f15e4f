-- A decision's lines now also hold each accused or named id the directory did not know
-- when it was kept (state's unresolved_accused / unresolved_named, but sealed names):
-- his joining the directory then finds the decision, and the re-check resolves him. A
-- decision kept with lines before this migration and holding such an id is checked in
-- full by the next re-check (lines_seq NULL, as migration 0004 left the older ones),
-- which takes its lines again.
UPDATE decisions SET lines_seq = NULL
WHERE state IS NOT NULL AND lines_seq IS NOT NULL AND EXISTS (
    SELECT FROM jsonb_array_elements_text(
        coalesce(state #> '{decision,unresolved_accused}', '[]'::jsonb)
        || coalesce(state #> '{decision,unresolved_named}', '[]'::jsonb)
    ) AS entry (value)
    WHERE entry.value NOT LIKE 'enc:v1:%'
);
