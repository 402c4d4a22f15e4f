-- People are chosen, not typed (issue 18). Intake resolves a free-text name in a report
-- to a person without scanning the directory, and the people search finds a person by
-- the start of any word of a name. Both tables below are kept by
-- services/intake/directory.py in the same transaction as the `people` row (and the
-- directory.person.upserted.v1 event); the normal form is services.domain.names.normalise.
ALTER TABLE people ADD COLUMN alternative_names text[] NOT NULL DEFAULT '{}';

-- One row per name of a person: the display name (`primary`) and each alternative name
-- (another script, a former name). Resolution looks all the normal forms of a report
-- up in one statement (`norm = ANY(...)`).
CREATE TABLE person_names (
    person_id text NOT NULL REFERENCES people (person_id) ON DELETE CASCADE,
    kind      text NOT NULL CHECK (kind IN ('primary', 'alternative')),
    name      text NOT NULL,                  -- as the directory spells it (exact matches)
    norm      text NOT NULL,                  -- normalise(name)
    PRIMARY KEY (person_id, kind, name)
);
CREATE INDEX person_names_norm ON person_names (norm);

-- The words of each normal form, for the people search (prefix of any word). "C"
-- collation: a LIKE 'prefix%' uses the btree index, and the order is by code point.
CREATE TABLE person_name_words (
    person_id text NOT NULL REFERENCES people (person_id) ON DELETE CASCADE,
    word      text COLLATE "C" NOT NULL,
    PRIMARY KEY (word, person_id)
);
CREATE INDEX person_name_words_person ON person_name_words (person_id);
