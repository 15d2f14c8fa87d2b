-- flashrack records, schema version 10: the sample of a sampled read-back.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- For an attempt whose read-back was sampled (verify_method 'sampled'): the
-- share of the image's chunks asked for, in percent (above 0, below 100); the
-- seed of the random choice, in decimal (a u64: it may not fit SQLite's signed
-- INTEGER); the chunks read back and compared, and the chunks in the image.
-- All NULL for any other attempt and for every attempt recorded before this
-- schema (a sampled attempt of before reads back as 'sampled', share unknown).
ALTER TABLE attempts ADD COLUMN sample_percent REAL
    CHECK (sample_percent IS NULL OR (sample_percent > 0 AND sample_percent < 100));
ALTER TABLE attempts ADD COLUMN sample_seed TEXT;
ALTER TABLE attempts ADD COLUMN sample_chunks_checked INTEGER
    CHECK (sample_chunks_checked IS NULL OR sample_chunks_checked >= 0);
ALTER TABLE attempts ADD COLUMN sample_chunks_total INTEGER
    CHECK (sample_chunks_total IS NULL OR sample_chunks_total >= 0);
