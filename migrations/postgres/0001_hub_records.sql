-- The fleet hub's database (PostgreSQL): every station's shipped records,
-- keyed by station, and the tokens that let stations and operators in.
--
-- Append-only, like the station's migrations: a change is a new file.
--
-- Times are timestamptz; the stations ship unix milliseconds (UTC), converted
-- exactly by ms_to_ts / ts_to_ms. Sizes, offsets, ids and sequence numbers
-- are bigint. Values the protocol defines as JSON (run options, verdicts,
-- figures, refusals, event details) are jsonb.
--
-- Every shipped row carries `seq`, the station's sequence number of the
-- version stored: an upsert replaces a row only with a higher `seq`, so a
-- replayed or reordered batch never lets an older version overwrite a newer.

CREATE FUNCTION ms_to_ts(ms bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT timestamptz 'epoch' + ms * interval '1 millisecond' $$;

CREATE FUNCTION ts_to_ms(t timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT (extract(epoch FROM t) * 1000)::bigint $$;

-- A station, from its first batch (or its first token).
CREATE TABLE stations (
    id text PRIMARY KEY,
    first_seen timestamptz NOT NULL DEFAULT now(),
    -- The highest sequence number acknowledged to it.
    acked_through bigint NOT NULL DEFAULT 0,
    -- Entries it said it still had to ship, with its last batch.
    backlog bigint NOT NULL DEFAULT 0,
    last_batch_at timestamptz
);

-- Tokens, by the sha256 (hex) of the token: the token itself is shown once
-- when it is made and never stored.
CREATE TABLE tokens (
    sha256 text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    role text NOT NULL CHECK (role IN ('station', 'operator')),
    -- The station's id, or the operator's name.
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX tokens_by_name ON tokens (role, name);

-- Every outbox entry received, by (station, seq): what makes a replay a
-- duplicate rather than a second application.
CREATE TABLE received (
    station_id text NOT NULL REFERENCES stations (id),
    seq bigint NOT NULL CHECK (seq > 0),
    kind text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (station_id, seq)
);

CREATE TABLE station_images (
    station_id text NOT NULL REFERENCES stations (id),
    sha256 text NOT NULL,
    name text NOT NULL,
    size bigint NOT NULL,
    format text NOT NULL,
    imported_at timestamptz NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (station_id, sha256)
);

-- A stick as each station last saw it; one stick (one key) has one history
-- across stations through `attempts.device_key`.
CREATE TABLE devices (
    station_id text NOT NULL REFERENCES stations (id),
    key text NOT NULL,
    serial text,
    vendor text,
    model text,
    capacity bigint NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (station_id, key)
);
CREATE INDEX devices_by_key ON devices (key);

CREATE TABLE runs (
    station_id text NOT NULL REFERENCES stations (id),
    id bigint NOT NULL,
    image_sha256 text NOT NULL,
    image_name text NOT NULL,
    options jsonb NOT NULL,
    -- The hub's order the run was armed under (its options' order_id).
    order_id bigint,
    started_at timestamptz NOT NULL,
    stopped_at timestamptz,
    stop_reason text,
    seq bigint NOT NULL,
    PRIMARY KEY (station_id, id)
);
CREATE INDEX runs_by_order ON runs (order_id) WHERE order_id IS NOT NULL;

CREATE TABLE attempts (
    station_id text NOT NULL REFERENCES stations (id),
    id bigint NOT NULL,
    run_id bigint NOT NULL,
    device_key text NOT NULL,
    port_label text NOT NULL,
    port_path text NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    state text NOT NULL,
    stage text NOT NULL,
    verdict jsonb,
    reason_detail text,
    figures jsonb NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (station_id, id)
);
CREATE INDEX attempts_by_run ON attempts (station_id, run_id);
CREATE INDEX attempts_by_device ON attempts (device_key);

CREATE TABLE refusals (
    station_id text NOT NULL REFERENCES stations (id),
    id bigint NOT NULL,
    at timestamptz NOT NULL,
    run_id bigint,
    device_key text NOT NULL,
    port_label text NOT NULL,
    port_path text NOT NULL,
    capacity bigint NOT NULL,
    refusal jsonb NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (station_id, id)
);
CREATE INDEX refusals_by_run ON refusals (station_id, run_id);
CREATE INDEX refusals_by_device ON refusals (device_key);

-- The stations' event logs: appended once per (station, event id).
CREATE TABLE events (
    station_id text NOT NULL REFERENCES stations (id),
    id bigint NOT NULL,
    seq bigint NOT NULL,
    at timestamptz NOT NULL,
    kind text NOT NULL,
    port_label text,
    device_key text,
    run_id bigint,
    attempt_id bigint,
    detail jsonb NOT NULL,
    PRIMARY KEY (station_id, id)
);
