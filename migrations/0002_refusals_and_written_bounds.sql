-- flashrack records, schema version 2: guard refusals, and how far an attempt's
-- byte count can be trusted.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- A stick the target guard refused when it was inserted (or when a run was armed,
-- or the operator asked for it): nothing was written and no attempt started. A
-- refusal at the moment of opening, after an attempt was recorded, is that
-- attempt's verdict (reason 'refused', the guard's code in its failure) instead.
CREATE TABLE refusals (
    id          INTEGER PRIMARY KEY,
    station_id  TEXT    NOT NULL REFERENCES stations (id),
    at          INTEGER NOT NULL,
    -- The run that was armed, if any.
    run_id      INTEGER REFERENCES runs (id),
    device_id   INTEGER NOT NULL REFERENCES devices (id),
    port_label  TEXT    NOT NULL,
    -- The port's kernel path (udev ID_PATH); empty when unknown.
    port_path   TEXT    NOT NULL,
    -- The capacity the device reported.
    capacity    INTEGER NOT NULL CHECK (capacity >= 0),
    -- The guard's stable reason code (too_large, mounted, port_not_mapped …) and
    -- its sentence for people.
    code        TEXT    NOT NULL,
    message     TEXT    NOT NULL
);
CREATE INDEX refusals_by_run ON refusals (run_id, id);
CREATE INDEX refusals_by_device ON refusals (device_id, at);

-- How far attempts.bytes_written can be trusted: 'exact' (counted by the attempt to
-- its end), 'lower_bound' (more may have reached the stick: it was pulled or
-- stalled, or the figure is the last one recorded before a crash or an abandoned
-- attempt) or 'unknown' (nothing was recorded: the count says nothing).
ALTER TABLE attempts ADD COLUMN bytes_written_bound TEXT NOT NULL DEFAULT 'exact'
    CHECK (bytes_written_bound IN ('exact', 'lower_bound', 'unknown'));

-- What earlier records can say. A running attempt's count and a pulled stick's
-- are lower bounds. Attempts that earlier versions finished without their
-- figures (a stall, an attempt abandoned at shutdown, a crash) recorded 0 bytes
-- although they had reached the write pass: for them the count is unknown.
UPDATE attempts SET bytes_written_bound = 'lower_bound'
    WHERE state = 'running' OR reason_code = 'removed';
UPDATE attempts SET bytes_written_bound = 'unknown'
    WHERE bytes_written = 0 AND stage <> 'preparing'
      AND reason_code IN ('stalled', 'interrupted');
