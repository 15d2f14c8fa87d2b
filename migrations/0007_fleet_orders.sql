-- flashrack records, schema version 7: what this station did about its hub's
-- orders.
--
-- Append-only, as every migration (see 0001_initial.sql).

-- The hub's orders this station followed, kept so that a restart does not undo
-- a decision: an order whose run was stopped here (by the station's operator,
-- its target count, a failed source) is not armed again, an order that cannot
-- be followed is not tried again, and an order whose run ended only because the
-- station did (a shutdown, a crash) is armed again, once. Written by the order
-- follower; never shipped (the hub knows its orders, and hears the station's
-- progress in its live reports).
CREATE TABLE fleet_orders (
    -- The hub's order id.
    order_id   INTEGER PRIMARY KEY NOT NULL,
    -- 'armed': run_id is the order's latest run here; 'stopped': that run was
    -- stopped here and the order is done with; 'failed': the order cannot be
    -- followed (detail says why).
    state      TEXT    NOT NULL CHECK (state IN ('armed', 'stopped', 'failed')),
    run_id     INTEGER REFERENCES runs (id),
    detail     TEXT,
    updated_at INTEGER NOT NULL
);
