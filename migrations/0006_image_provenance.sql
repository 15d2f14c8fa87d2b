-- flashrack records, schema version 6: where an image was downloaded from.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- The provenance of an image downloaded from a URL, as flashrack-core's
-- `Provenance` in JSON: the URL, the server's ETag and Last-Modified, and where
-- the digest it was checked against came from (given by the operator, or a
-- SHA256SUMS list, with the fingerprint of the OpenPGP key that signed it).
-- NULL for an image imported from a file or an upload.
ALTER TABLE images ADD COLUMN provenance TEXT
    CHECK (provenance IS NULL OR json_valid(provenance));
