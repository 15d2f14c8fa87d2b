-- flashrack records, schema version 3: the fleet outbox.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- What this station has to ship to its fleet hub: every record it writes, as the
-- whole row after the write (or the event), in the same transaction as the write,
-- numbered in order. A shipper sends unshipped entries oldest first; once the hub
-- has acknowledged them they are marked shipped (and pruned later). Only written
-- once the station has joined a fleet (see fleet_state), so a station without a
-- hub pays nothing.
CREATE TABLE outbox (
    -- The station's sequence: AUTOINCREMENT never reuses a number, even after the
    -- newest entries were pruned, so the hub can key entries by (station, seq).
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    -- The record's kind (image, device, run, attempt, refusal, event) and the
    -- record itself as flashrack-fleet's JSON.
    kind       TEXT    NOT NULL,
    record     TEXT    NOT NULL,
    shipped_at INTEGER
);
CREATE INDEX outbox_unshipped ON outbox (seq) WHERE shipped_at IS NULL;

-- Facts about this database's place in a fleet: 'outbox_since' (when the outbox
-- was enabled, and every earlier record enqueued), the hub it ships to.
CREATE TABLE fleet_state (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
