-- How far the decisions were checked again against later directory changes (the last
-- directory_log seq whose changes recheck() has looked at): the re-check of a directory
-- batch commits with this row, so one lost to a stop between the batch's commit and its
-- re-check is done with the next batch. Decisions made before this migration start from
-- the directory as it is now (no re-check of the past).
CREATE TABLE directory_rechecked (
    one bigint PRIMARY KEY DEFAULT 1 CHECK (one = 1),
    seq bigint NOT NULL
);
INSERT INTO directory_rechecked (seq) SELECT coalesce(max(seq), 0) FROM directory_log;
