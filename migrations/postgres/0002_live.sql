-- Live state: each station's latest live report, for the hub's dashboard.
-- One row per station, replaced by every report; `version` increases with
-- each, so that a hub process re-reading a station by id after a missed
-- notification can tell whether it already has what it reads.

CREATE TABLE live (
    station_id text PRIMARY KEY REFERENCES stations (id),
    -- The station's snapshot (ports, run) as its own API serves it.
    snapshot jsonb NOT NULL,
    -- When the station made the report, by its clock.
    sent_at timestamptz NOT NULL,
    -- When the hub took it, by the database's clock: what "silent since"
    -- is measured from.
    received_at timestamptz NOT NULL,
    -- Outbox entries the station had not shipped yet.
    backlog bigint NOT NULL,
    -- The order the station follows and how far it got (OrderProgress).
    order_progress jsonb,
    version bigint NOT NULL
);
