-- Orders: what the hub wants stations to run. A lot is one arming of an
-- image on several stations; each of them gets an order of the lot. A
-- station has at most one armed order; its orders' version increases with
-- every change, so that a station long-polling for a change knows one when
-- it sees one.

CREATE TABLE lots (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    image_sha256 text NOT NULL,
    image_name text NOT NULL,
    image_size bigint NOT NULL,
    options jsonb NOT NULL,
    stations text[] NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz
);

CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    lot_id bigint NOT NULL REFERENCES lots (id),
    station_id text NOT NULL REFERENCES stations (id),
    armed boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz
);
CREATE UNIQUE INDEX orders_one_armed_per_station ON orders (station_id) WHERE armed;
CREATE INDEX orders_by_station ON orders (station_id, id);
CREATE INDEX orders_by_lot ON orders (lot_id);

ALTER TABLE stations ADD COLUMN orders_version bigint NOT NULL DEFAULT 0;
