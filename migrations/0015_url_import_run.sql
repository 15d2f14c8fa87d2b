-- flashrack records, schema version 15: the run a download was for.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- A run armed over the API with a URL (`POST /api/v1/runs` with `download`)
-- downloads its image as one of the station's imports from URLs: `run_id`
-- names that run, once it is armed (a download whose run was never armed,
-- and every plain import, has none). Kept when the download is resumed: it
-- says which run it was started for.
ALTER TABLE url_imports ADD COLUMN run_id INTEGER REFERENCES runs (id);
