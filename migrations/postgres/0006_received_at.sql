-- When each received entry was written, by its station's clock
-- (`OutboxEntry::at`). With the entry's kind, it tells a replay of an entry
-- (the same kind and time: a duplicate, changing nothing) from another
-- entry under the same (station, seq): a second station using the same
-- station_id, or a station whose records were started afresh. Such a batch
-- is refused (409), not counted as duplicates, which would have dropped its
-- records silently (the station marks acknowledged entries shipped).
-- NULL for entries received before this column: their kind alone is
-- compared.
ALTER TABLE received ADD COLUMN at bigint;
