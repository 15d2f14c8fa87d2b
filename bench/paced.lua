-- wrk script for bench/station.py: paced GETs and a machine-readable summary.
--
-- Every connection waits WRK_DELAY_MS between its requests, so that
-- connections x (1000 / WRK_DELAY_MS) is the offered rate (the bench picks the
-- delay for 200 requests/s). done() prints one JSON line with the latency
-- percentiles in microseconds, the request count and the errors: answers other
-- than 2xx, timeouts, and socket errors (connect/read/write).

local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "40")

function delay()
  return delay_ms
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "status_errors": %d, "timeouts": %d, "socket_errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, "duration_us": %d}\n',
    summary.requests, errors.status, errors.timeout,
    errors.connect + errors.read + errors.write, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, summary.duration))
end
