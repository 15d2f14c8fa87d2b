-- flashrack records, schema version 9: the coverage of a sparse attempt.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- Bytes of the image a sparse attempt neither wrote nor read back: outside the
-- image's block map, the stick holds whatever it held before, unchecked. 0 for
-- a full attempt (and every attempt recorded before this column). The bytes
-- proven are bytes_verified; a sparse run says so in runs.options ("sparse").
ALTER TABLE attempts ADD COLUMN bytes_skipped INTEGER NOT NULL DEFAULT 0
    CHECK (bytes_skipped >= 0);
