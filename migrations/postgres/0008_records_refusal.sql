-- Why the hub last refused a batch of a station's records (a 409: another
-- instance is live under the station id, or the batch holds another entry
-- under a sequence number the station already shipped, as after a station
-- was restored from a backup), and when; cleared by the next batch it takes.
-- The dashboard and `/api/v1/stations` show it (`records_refused`), instead
-- of a station only "behind" whose records never arrive.
--
-- Append-only, as every migration (see 0001_hub_records.sql).
ALTER TABLE stations
    ADD COLUMN records_refused text,
    ADD COLUMN records_refused_at timestamptz;
