-- flashrack records, schema version 8: whether an attempt's read-back followed a
-- reset of the stick.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- 1 when the stick was reset (a USB reset, as a power cycle) after its write
-- pass was flushed and before it was read back, so that no cache inside the
-- stick could answer the read-back; 0 otherwise. Attempts recorded before this
-- column existed were never reset: 0 is the truth for them.
ALTER TABLE attempts ADD COLUMN verified_after_reset INTEGER NOT NULL DEFAULT 0
    CHECK (verified_after_reset IN (0, 1));
