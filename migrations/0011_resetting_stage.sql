-- flashrack records, schema version 11: the reset is a stage of its own.
--
-- Append-only, as every migration (see 0001_initial.sql).
--
-- An attempt that resets its stick (the capacity probe's reset, the one before
-- the read-back) is in stage 'resetting' while the stick is away; a stick lost in
-- its reset, one that comes back different or a reset that fails fails there.
-- Earlier versions recorded those under 'preparing' (the probe's) and 'flushing'
-- (the read-back's): those rows are kept as they are.
--
-- SQLite cannot change a CHECK constraint: `attempts` is rebuilt (SQLite's
-- 12-step ALTER TABLE procedure) with every column, constraint and index it has
-- after 0001, 0002, 0008, 0009 and 0010, in the same order. No view or trigger
-- uses it. `events.attempt_id` references it: the store turns foreign keys off on
-- its connection before it migrates (outside the migration's transaction, where
-- the pragma does nothing) and on again after; the check below fails the
-- migration, and rolls it back, if any reference were left dangling.
CREATE TABLE attempts_new (
    id               INTEGER PRIMARY KEY,
    station_id       TEXT    NOT NULL REFERENCES stations (id),
    run_id           INTEGER NOT NULL REFERENCES runs (id),
    device_id        INTEGER NOT NULL REFERENCES devices (id),
    port_label       TEXT    NOT NULL,
    port_path        TEXT    NOT NULL,
    started_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    state            TEXT    NOT NULL DEFAULT 'running'
                     CHECK (state IN ('running', 'passed', 'failed', 'interrupted')),
    -- The last stage reached (the failing stage for a failure).
    stage            TEXT    NOT NULL DEFAULT 'preparing'
                     CHECK (stage IN ('preparing', 'writing', 'flushing', 'resetting',
                                      'verifying')),
    reason_code      TEXT,
    reason_detail    TEXT,
    fail_offset      INTEGER,
    failure          TEXT,
    capacity         INTEGER NOT NULL CHECK (capacity >= 0),
    bytes_written    INTEGER NOT NULL DEFAULT 0,
    write_secs       REAL    NOT NULL DEFAULT 0,
    bytes_verified   INTEGER NOT NULL DEFAULT 0,
    verify_secs      REAL    NOT NULL DEFAULT 0,
    read_back_sha256 TEXT,
    verify_method    TEXT,
    bytes_written_bound TEXT NOT NULL DEFAULT 'exact'
        CHECK (bytes_written_bound IN ('exact', 'lower_bound', 'unknown')),
    verified_after_reset INTEGER NOT NULL DEFAULT 0
        CHECK (verified_after_reset IN (0, 1)),
    bytes_skipped INTEGER NOT NULL DEFAULT 0
        CHECK (bytes_skipped >= 0),
    sample_percent REAL
        CHECK (sample_percent IS NULL OR (sample_percent > 0 AND sample_percent < 100)),
    sample_seed TEXT,
    sample_chunks_checked INTEGER
        CHECK (sample_chunks_checked IS NULL OR sample_chunks_checked >= 0),
    sample_chunks_total INTEGER
        CHECK (sample_chunks_total IS NULL OR sample_chunks_total >= 0),
    CHECK ((state = 'running') = (finished_at IS NULL)),
    CHECK ((state IN ('failed', 'interrupted')) = (reason_code IS NOT NULL))
);

INSERT INTO attempts_new (
    id, station_id, run_id, device_id, port_label, port_path, started_at,
    finished_at, state, stage, reason_code, reason_detail, fail_offset, failure,
    capacity, bytes_written, write_secs, bytes_verified, verify_secs,
    read_back_sha256, verify_method, bytes_written_bound, verified_after_reset,
    bytes_skipped, sample_percent, sample_seed, sample_chunks_checked,
    sample_chunks_total
)
SELECT
    id, station_id, run_id, device_id, port_label, port_path, started_at,
    finished_at, state, stage, reason_code, reason_detail, fail_offset, failure,
    capacity, bytes_written, write_secs, bytes_verified, verify_secs,
    read_back_sha256, verify_method, bytes_written_bound, verified_after_reset,
    bytes_skipped, sample_percent, sample_seed, sample_chunks_checked,
    sample_chunks_total
FROM attempts;

DROP TABLE attempts;
ALTER TABLE attempts_new RENAME TO attempts;

CREATE INDEX attempts_by_run ON attempts (run_id, id);
CREATE INDEX attempts_by_device ON attempts (device_id, started_at);
CREATE INDEX attempts_running ON attempts (station_id) WHERE state = 'running';

-- Step 10 of the procedure: no reference may be left dangling (a CHECK, since a
-- migration cannot raise an error of its own).
CREATE TEMP TABLE migration_0011_foreign_keys (
    violations INTEGER NOT NULL CHECK (violations = 0)
);
INSERT INTO temp.migration_0011_foreign_keys
    SELECT count(*) FROM pragma_foreign_key_check;
DROP TABLE temp.migration_0011_foreign_keys;
