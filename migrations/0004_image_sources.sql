-- flashrack records, schema version 4: where an image came from.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- The file an image was imported from, as the image cache recorded it: its name
-- (last path component), its sha256 and its size as given (a compressed file or
-- an archive; the raw image itself for a raw import). Reports print them beside
-- the raw image's name, size and sha256. NULL for images recorded before this
-- version, and where the cache no longer knew the import.
ALTER TABLE images ADD COLUMN source_name TEXT;
ALTER TABLE images ADD COLUMN source_sha256 TEXT
    CHECK (source_sha256 IS NULL OR length(source_sha256) = 64);
ALTER TABLE images ADD COLUMN source_size INTEGER
    CHECK (source_size IS NULL OR source_size >= 0);
