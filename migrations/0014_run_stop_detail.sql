-- flashrack records, schema version 14: why a run stopped, in words.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- What the station said of a run's stop beside its reason code: for
-- `source_failed` the source's failure with its causes (a digest that did not
-- match, a file that changed on the server, a server that lied about the
-- length); for `shutdown` the signal; an operator's note. NULL where nothing
-- was said. The run's reports give it (`stop_detail`, `run_stop_detail`).
ALTER TABLE runs ADD COLUMN stop_detail TEXT;

-- Runs stopped before this version said it only in their event log.
UPDATE runs SET stop_detail = (
    SELECT json_extract(e.detail, '$.note') FROM events e
    WHERE e.run_id = runs.id AND e.kind = 'operator_action'
      AND json_extract(e.detail, '$.action') = 'run_stopped'
      AND json_extract(e.detail, '$.note') IS NOT NULL
    ORDER BY e.id DESC LIMIT 1
) WHERE stop_reason IS NOT NULL;
