-- flashrack records, schema version 1.
--
-- Append-only: never edit a migration that has shipped; add the next numbered file
-- (and its line in crates/store/src/migrate.rs). Timestamps are unix milliseconds
-- (UTC) in INTEGER columns; byte counts and offsets are INTEGER bytes.
--
-- Images and devices are facts shared by every station (an image is named by its
-- content, a stick can move between stations); runs, attempts and events carry the
-- station that made them, so that several stations can report into one database.

-- The stations that have written to this database.
CREATE TABLE stations (
    id         TEXT    PRIMARY KEY NOT NULL,
    name       TEXT    NOT NULL,
    first_seen INTEGER NOT NULL,
    -- Updated at start-up and by heartbeats: the last moment the station is known
    -- to have been alive.
    last_seen  INTEGER NOT NULL
);

-- Images imported into a cache, named by the sha256 of their raw bytes.
CREATE TABLE images (
    sha256      TEXT    PRIMARY KEY NOT NULL CHECK (length(sha256) = 64),
    name        TEXT    NOT NULL,
    size        INTEGER NOT NULL CHECK (size >= 0),
    -- What the image was imported from: raw, gzip, xz, zstd, bzip2, zip.
    format      TEXT    NOT NULL,
    imported_at INTEGER NOT NULL
);

-- A batch: one image, its options, and every attempt made under it.
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    station_id   TEXT    NOT NULL REFERENCES stations (id),
    image_sha256 TEXT    NOT NULL REFERENCES images (sha256),
    -- The image's name when the run started (images can be renamed by a re-import).
    image_name   TEXT    NOT NULL,
    -- The run's options as a JSON object: verify mode, eject on pass, target count …
    options      TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    stopped_at   INTEGER,
    -- operator | completed | shutdown | interrupted
    stop_reason  TEXT,
    CHECK ((stopped_at IS NULL) = (stop_reason IS NULL))
);
CREATE INDEX runs_by_station ON runs (station_id, started_at);

-- Sticks, identified by `key`: the serial, or vendor/model/size when there is none.
CREATE TABLE devices (
    id         INTEGER PRIMARY KEY,
    key        TEXT    NOT NULL UNIQUE,
    serial     TEXT,
    vendor     TEXT,
    model      TEXT,
    capacity   INTEGER NOT NULL CHECK (capacity >= 0),
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL
);
CREATE INDEX devices_by_serial ON devices (serial);

-- One device in one port under one run. Inserted (state 'running') before the first
-- byte is written; finished with its verdict and figures in one durable commit.
CREATE TABLE attempts (
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
                     CHECK (stage IN ('preparing', 'writing', 'flushing', 'verifying')),
    -- The failure, for failed and interrupted attempts: its stable code, its text for
    -- a person, its offset where it has one, and the whole failure as JSON so that
    -- the verdict reads back exactly as it was recorded.
    reason_code      TEXT,
    reason_detail    TEXT,
    fail_offset      INTEGER,
    failure          TEXT,
    -- The capacity the device reported for this attempt.
    capacity         INTEGER NOT NULL CHECK (capacity >= 0),
    bytes_written    INTEGER NOT NULL DEFAULT 0,
    write_secs       REAL    NOT NULL DEFAULT 0,
    bytes_verified   INTEGER NOT NULL DEFAULT 0,
    verify_secs      REAL    NOT NULL DEFAULT 0,
    read_back_sha256 TEXT,
    -- none | compare | hash
    verify_method    TEXT,
    CHECK ((state = 'running') = (finished_at IS NULL)),
    CHECK ((state IN ('failed', 'interrupted')) = (reason_code IS NOT NULL))
);
CREATE INDEX attempts_by_run ON attempts (run_id, id);
CREATE INDEX attempts_by_device ON attempts (device_id, started_at);
-- Start-up recovery and "what is running now" look only at running attempts.
CREATE INDEX attempts_running ON attempts (station_id) WHERE state = 'running';

-- The append-only event log: ports and devices coming and going, stage changes, guard
-- refusals, operator actions. Never updated, never deleted.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    station_id TEXT    NOT NULL REFERENCES stations (id),
    at         INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    port_label TEXT,
    device_id  INTEGER REFERENCES devices (id),
    run_id     INTEGER REFERENCES runs (id),
    attempt_id INTEGER REFERENCES attempts (id),
    -- A JSON object with what else is worth knowing about the event.
    detail     TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX events_by_station ON events (station_id, at);
CREATE INDEX events_by_attempt ON events (attempt_id) WHERE attempt_id IS NOT NULL;
