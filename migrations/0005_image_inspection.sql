-- flashrack records, schema version 5: what an image is.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- The image's inspection at import (flashrack-inspect's ImageInfo as JSON:
-- partition table, partitions and their file systems, ISO structure, hybrid or
-- not, volume label, best-guess OS, problems found). NULL for images recorded
-- before inspection existed, until a run records them again.
ALTER TABLE images ADD COLUMN inspection TEXT;
