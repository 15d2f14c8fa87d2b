//! flashrack's reports: what a run's or a device's report holds ([`RunReport`],
//! [`DeviceReport`], a [`ReportRow`] per record) and its exports: CSV, JSON and
//! printable HTML.
//!
//! A database of records fills the report data (the station's SQLite store,
//! `flashrack-store`; a fleet hub's PostgreSQL later) and this crate renders
//! it. It does no I/O and knows no SQL: the exports are pure functions of the
//! report data, so the same records always export to the same bytes, whichever
//! database they came from.
//!
//! # Layout
//! - [`model`]: the report data ([`RunReport`], [`DeviceReport`], [`ReportRow`],
//!   [`Counts`] …) and [`rows_in_order`], which merges attempts and refusals;
//! - `export`: a record as every format writes it, [`FIELDS`] and [`FORMAT`];
//! - `csv_export`: [`csv()`], through the `csv` crate, with the formula guard;
//! - `json_export`: [`run_json`] and [`device_json`], through `serde_json`;
//! - `html`: [`run_html`] and [`device_html`], from the askama template
//!   `templates/report.html`, every value escaped by the template engine;
//! - `time`: [`format_time`] (RFC 3339, UTC, milliseconds), through `time`.
//!
//! # Record fields
//!
//! Every format has one record per attempt **and one per refusal**: a stick the
//! target guard refused before any attempt is a row with verdict `refused` among
//! the attempts, in the order they were made (an attempt the guard refused at
//! the moment of opening is a `refused` row too). The CSV header holds these
//! names in this order, JSON objects hold these keys. Times are RFC 3339 in UTC
//! with milliseconds (`2025-03-01T09:30:00.000Z`); an absent value is an empty
//! CSV field and `null` in JSON.
//!
//! | field | meaning |
//! |---|---|
//! | `attempt_id` | the attempt's number; absent for a refusal before any attempt |
//! | `refusal_id` | the refusal's number, for a refusal before any attempt; else absent |
//! | `station_id` | the station that made it |
//! | `run_id` | its run; absent for a refusal while no run was armed |
//! | `port_label` | the port, as labelled on the rack (`A1`) |
//! | `port_path` | the port's kernel path (udev `ID_PATH`) |
//! | `device_key` | the device's key: its serial, or `vendor/model/bytes` |
//! | `serial` | the device's serial |
//! | `vendor` | the device's vendor |
//! | `model` | the device's model |
//! | `capacity_bytes` | the capacity the device reported, in bytes |
//! | `image_name` | the image's name when the run started (absent without a run) |
//! | `image_sha256` | the sha256 of the raw image (absent without a run) |
//! | `started_at` | when the attempt started (a refusal: when it was made) |
//! | `finished_at` | when it finished (a refusal: when it was made) |
//! | `verdict` | `pass`, `fail`, `refused` (by the target guard: nothing written, not a failure of the stick), `interrupted` (operator, shutdown, crash or a station error: says nothing about the stick) or `running` |
//! | `stage` | the last stage reached (the failing one for a failure): `preparing`, `writing`, `flushing`, `verifying`; absent for a refusal before any attempt |
//! | `reason_code` | for `fail` and `interrupted`, the failure's stable code: `too_small`, `no_medium`, `read_only`, `capacity_lie`, `probe_error`, `write_error`, `flush_error`, `read_error`, `verify_mismatch`, `removed`, `stalled`, `unavailable`, `interrupted`, `station_error` (the station ran out of descriptors, memory or threads: verdict `interrupted`); for `refused`, the guard's: `not_whole_disk`, `bus_not_allowed`, `port_not_mapped`, `mounted`, `swap`, `held`, `system_disk`, `too_large`, `too_small`, `no_medium`, `not_armed`, `identity_changed`, `busy`, `cannot_inspect` (`refused` for a refusal at opening recorded before refusals carried their code) |
//! | `reason_detail` | the failure or refusal in words |
//! | `fail_offset` | the byte offset the failure is tied to |
//! | `bytes_written` | bytes of the image the stick acknowledged; absent when unknown |
//! | `bytes_written_bound` | how far `bytes_written` can be trusted: `exact`; `lower_bound` (more may be on the stick: it was pulled or stalled, the attempt was abandoned, or the figure is the last one recorded before a crash; a running attempt's figure too); `unknown` (nothing was recorded) |
//! | `write_secs` | seconds spent writing, flush included (3 decimals) |
//! | `write_mb_s` | write speed in MB/s, 10^6 bytes a second (2 decimals) |
//! | `bytes_verified` | bytes read back from the medium |
//! | `verify_secs` | seconds spent reading back (3 decimals) |
//! | `verify_mb_s` | read-back speed in MB/s (2 decimals) |
//! | `read_back_sha256` | the sha256 of what was read back: the image's on a pass; on a `verify_mismatch`, of the stick's first image-size bytes, absent when they could not all be read |
//! | `verify_method` | how the read-back was checked: `none`, `compare`, `hash` |
//!
//! # JSON
//!
//! One object: `"format": "flashrack-report/2"`, `"kind": "run"`, `"device"` or
//! `"lot"`, then `"run"` (fields `run_id`, `station_id`, `image_name`,
//! `image_sha256`, `options`, `started_at`, `stopped_at`, `stop_reason`,
//! `attempts`, `passed`, `failed`, `refused`, `interrupted`, `running`) or
//! `"device"` (fields `device_key`, `serial`, `vendor`, `model`,
//! `capacity_bytes`, `first_seen`, `last_seen` and the same six counts) or
//! `"lot"` (a fleet hub's arming on several stations: `lot_id`, `name`,
//! `image_name`, `image_sha256`, `options`, `stations`, `created_at`,
//! `stopped_at` and the six counts, followed by `"runs"`: each station's run
//! as a `"run"` object is), then `"attempts"`: the records (attempts and
//! refusals; a lot's span stations, told apart by `station_id`).
//! `attempts` counts attempts; `passed + failed + refused + interrupted +
//! running` counts records. A consumer should check `format`; a change to any
//! name or meaning gets a new format version.
//!
//! Format 2 (from format 1): refusals are records (`refusal_id`, verdict
//! `refused` with the guard's code), so `attempt_id`, `run_id`, `image_name`,
//! `image_sha256` and `stage` may be absent; `bytes_written` may be absent and
//! `bytes_written_bound` says how far it can be trusted; the counts gain
//! `refused`, and `failed` no longer counts refusals.
//!
//! # CSV
//!
//! RFC 4180 with `\n` line ends: a header line, then a line per attempt. A text field
//! that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a `'`
//! prepended, so that a spreadsheet never runs a device's vendor string as a
//! formula (device descriptors are whatever the stick says).
//!
//! # HTML
//!
//! One self-contained page for printing: a summary block, then a table row per
//! record; print rules for A4 landscape, no external assets, every value escaped.

#![deny(missing_docs)]

mod csv_export;
mod export;
mod html;
mod json_export;
pub mod model;
mod time;

pub use csv_export::csv;
pub use export::{FIELDS, FORMAT};
pub use html::{device_html, lot_html, run_html};
pub use json_export::{device_json, lot_json, run_json};
pub use model::{
    rows_in_order, Counts, DeviceRecord, DeviceReport, Lot, LotReport, ReportRow, ReportVerdict,
    Run, RunReport, RunSummary,
};
pub use time::{format_time, format_time_short};
