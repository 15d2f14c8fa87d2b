-- flashrack records, schema version 12: bootable builds.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- Every bootable stick layout this station was asked to build from an
-- installer ISO (POST /api/v1/images/{sha256}/bootable), kept across
-- restarts: a build under way when the station stopped is found 'building'
-- at the next start and becomes 'interrupted' then. Never shipped to the hub
-- (the built image's provenance is, with the image).
CREATE TABLE bootable_builds (
    id            INTEGER PRIMARY KEY NOT NULL,
    -- The ISO built from: its raw sha256 (hex) and its name.
    source_sha256 TEXT    NOT NULL,
    source_name   TEXT    NOT NULL,
    -- The name the built image is kept under.
    name          TEXT    NOT NULL,
    state         TEXT    NOT NULL
        CHECK (state IN ('building', 'built', 'failed', 'cancelled', 'interrupted')),
    -- The stage reached (the last one for an ended build); NULL before the first.
    stage         TEXT
        CHECK (stage IS NULL OR stage IN
            ('extracting', 'splitting', 'partitioning', 'copying_files', 'hashing')),
    -- Unix milliseconds.
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    -- For 'built': the layout in the cache, its size, whether it was built
    -- before (taken from the cache), and the files split (JSON array of
    -- {"file", "parts"}).
    image_sha256  TEXT,
    size          INTEGER CHECK (size IS NULL OR size >= 0),
    reused        INTEGER CHECK (reused IS NULL OR reused IN (0, 1)),
    split         TEXT,
    -- For 'failed', 'cancelled' and 'interrupted': why, in words.
    detail        TEXT,
    CHECK ((state = 'building') = (finished_at IS NULL)),
    CHECK ((state = 'built') = (image_sha256 IS NOT NULL))
);
