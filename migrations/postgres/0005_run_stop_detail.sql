-- The hub's records, schema version 5: why a run stopped, in words, as the
-- station recorded it (its `runs.stop_detail`, SQLite migration 0014): for
-- `source_failed` the source's failure with its causes (a digest that did not
-- match, a file that changed on the server), for `shutdown` the signal, an
-- operator's note. NULL where nothing was said, and for runs shipped by a
-- station older than its migration 0014 (or shipped before this version:
-- they get it when the station ships the run again). Lot reports give it
-- (`runs[].stop_detail`, and beside each stopped run in the printable page).
--
-- Append-only, as every migration (see 0001_hub_records.sql).

ALTER TABLE runs ADD COLUMN stop_detail text;
