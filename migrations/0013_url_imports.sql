-- flashrack records, schema version 13: the station's imports from URLs.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- One row per import from a URL the station's API was asked for
-- (`POST /api/v1/images/import-url`), kept so that the list of downloads
-- outlives a restart: an import left `checking` or `downloading` by a stop
-- or a crash is `interrupted` at the next start, and resuming it continues
-- from its partial file (`<data dir>/downloads/`). `request` is the request
-- as the operator gave it (JSON: url, sha256 or sha256sums, signature,
-- keyring), so that a resume checks what the first try checked. `held` is
-- the bytes held when last written (every few seconds; the partial file
-- says more after a crash), `total` the length the server declared, `error`
-- why it failed, `image_sha256` the image it became.
CREATE TABLE url_imports (
    id INTEGER PRIMARY KEY,
    station_id TEXT NOT NULL REFERENCES stations (id),
    url TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('checking', 'downloading', 'done', 'failed', 'interrupted')),
    held INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    total INTEGER CHECK (total IS NULL OR total >= 0),
    error TEXT,
    image_sha256 TEXT,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
