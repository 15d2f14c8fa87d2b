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
//! - `labels`: [`labels_html`] (`templates/labels.html`), QR codes drawn as
//!   inline SVG by the `qrcode` crate;
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
//! | `image_sha256` | the sha256 of the raw image (absent without a run, and when the run's image was never imported: see format 11) |
//! | `started_at` | when the attempt started (a refusal: when it was made) |
//! | `finished_at` | when it finished (a refusal: when it was made) |
//! | `verdict` | `pass`, `fail`, `refused` (by the target guard: nothing written, not a failure of the stick), `interrupted` (operator, shutdown, crash or a station error: says nothing about the stick) or `running` |
//! | `verdict_words` | the verdict in the words every report shows: for a pass, what it proved (`pass`, `sampled (5 %)`, `audit pass`, `written, not verified`: a weaker proof is never a plain `pass`); otherwise the verdict |
//! | `stage` | the last stage reached (the failing one for a failure): `preparing`, `writing`, `flushing`, `resetting` (the stick away in a USB reset: the capacity probe's or the one before the read-back; records of schema 11 on, earlier records say `preparing` or `flushing` for it), `verifying`; absent for a refusal before any attempt |
//! | `reason_code` | for `fail` and `interrupted`, the failure's stable code: `too_small`, `no_medium`, `read_only`, `capacity_lie`, `probe_error`, `write_error`, `flush_error`, `read_error`, `verify_mismatch`, `removed`, `lost_after_reset`, `changed_after_reset`, `stalled`, `held_by_stuck_io`, `unavailable`, `interrupted`, `station_error` (the station ran out of descriptors, memory or threads: verdict `interrupted`); for `refused`, the guard's: `not_whole_disk`, `bus_not_allowed`, `port_not_mapped`, `mounted`, `swap`, `held`, `system_disk`, `too_large`, `too_small`, `no_medium`, `not_armed`, `identity_changed`, `busy`, `cannot_inspect`, `protected_file` (a loop device over a cached image or a file of the data directory, or a device stacked over one) (`refused` for a refusal at opening recorded before refusals carried their code) |
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
//! | `verify_method` | how the read-back was checked: `none`, `compare`, `hash`, `fingerprint`, `sampled`, `audit` |
//! | `verified_after_reset` | `true` when the stick was reset (a USB reset, as a power cycle) after its write pass and before its read-back, so that no cache inside the stick could answer the read-back; `false` otherwise (no reset asked, a target that cannot be reset, no read-back, a refusal) |
//! | `bytes_skipped` | bytes of the image a sparse attempt neither wrote nor read back (outside the image's block map: the stick holds there what it held before, unchecked); 0 for a full attempt. The coverage is `bytes_verified` checked, `bytes_skipped` not; a sparse pass has no `read_back_sha256` (it read only the mapped ranges) |
//! | `sample_percent` | for a `sampled` attempt, the share of the image's chunks asked for, in percent; absent otherwise (and for a sampled attempt recorded before schema 10) |
//! | `sample_seed` | for a `sampled` attempt, the seed of the random choice, in decimal (a string in JSON: a u64 does not fit a double) |
//! | `sample_chunks_checked` | for a `sampled` attempt, the chunks read back and compared (the random ones, the first and the last) |
//! | `sample_chunks_total` | for a `sampled` attempt, the chunks in the image |
//! | `operator` | who armed the record's run (the `operator` run option), if given |
//! | `lot` | the run's lot or batch id (the `lot` run option), if given |
//! | `run_options` | the run's options in words (`verify by comparing every byte read back; stop after 40 passes`) |
//! | `run_stop_reason` | why the run stopped (`operator`, `completed`, `shutdown`, `interrupted`, `source_failed`); absent while it runs |
//! | `run_stop_detail` | what the station said of the stop beside its reason: for `source_failed` the source's failure with its causes (a digest that did not match, a file that changed on the server, a server that lied about its length), for `shutdown` the signal, an operator's note; absent when nothing was said |
//! | `image_size_bytes` | the raw image's size in bytes, where recorded |
//! | `image_source_name` | the file the image was imported from (`debian.img.xz`), where recorded (a station's own reports: a fleet hub is not sent it) |
//! | `image_source_sha256` | that file's sha256 as given (the raw image's for a raw import), where recorded |
//!
//! The last eight are the record's run's facts (absent for a refusal while no
//! run was armed), so that a line of a device's history across runs, or a CSV
//! line on its own, says who armed its run and what was written.
//!
//! # JSON
//!
//! One object: `"format": "flashrack-report/12"`, `"flashrack_version"`,
//! `"kind": "run"`, `"device"` or `"lot"`, then `"run"` (fields `run_id`,
//! `station_id`, `operator`, `lot`, `image_name`, `image_sha256`,
//! `image_size_bytes`, `image_source` (`file_name`, `sha256`, `size_bytes`, or
//! `null` where not recorded), `options`, `options_words`, `started_at`,
//! `stopped_at`, `stop_reason`, `stop_reason_words`, `stop_detail`, `attempts`, `passed`,
//! `failed`, `refused`, `interrupted`, `running`, `yield_percent` (passes
//! among passes and failures, one decimal; `null` before either) and
//! `failures_by_reason` (`[{"reason_code", "count"}]`, most frequent first)) or
//! `"device"` (fields `device_key`, `serial`, `vendor`, `model`,
//! `capacity_bytes`, `first_seen`, `last_seen` and the same six counts) or
//! `"lot"` (a fleet hub's arming on several stations: `lot_id`, `name`,
//! `image_name`, `image_sha256`, `options`, `stations`, `created_at`,
//! `stopped_at` and the six counts, followed by `"runs"`: each station's run
//! as a `"run"` object is), then `"attempts"`: the records (attempts and
//! refusals; a lot's span stations, told apart by `station_id`; a run's by
//! port, A2 before A10, each port's in the order they were made).
//! `attempts` counts attempts; `passed + failed + refused + interrupted +
//! running` counts records. A consumer should check `format`; a change to any
//! name or meaning gets a new format version.
//!
//! A run's image's origin, where the records know one, follows `"run"` as
//! `"image_provenance"` (`url`, `etag`, `last_modified`, `digest_source`
//! (`{"kind": "unchecked"|"operator"|"sums", …}`), `captured`); a device's
//! report lists the origins of the images its records name as
//! `"image_origins"` (`[{"sha256", "name", "provenance"}]`), and so does a
//! fleet hub's lot report (the lot's image as each station that ran it
//! recorded it). Both are absent for images imported from a file or uploaded.
//!
//! `stage` may say `resetting` in any format (a new value of an existing
//! field, not a new field: the format number is unchanged by it): a failure
//! of a stick lost in its reset, one that came back different or a reset that
//! failed, recorded by schema 11 on. Likewise `verify_method` may say
//! `fingerprint` in any format: a compare of a target that followed the
//! import of a new file, each chunk read back checked against the import's
//! XXH3-128 fingerprint of it (a plain `pass`, as proven as `compare`).
//!
//! Format 12 (from format 11): the CSV's `image_origin`, after
//! `flashrack_version`: where the line's image came from, in the printed
//! report's words (`Downloaded from: https://… (ETag …); digest …, signed by
//! …`, `Captured: …`, `Origin: …`), from the JSON's `image_provenance` or
//! `image_origins` (a lot's several, joined by ` | `); empty for an image
//! imported from a file or uploaded. The JSON and HTML are unchanged.
//!
//! Format 11 (from format 10): a run that wrote while its image was being
//! imported (it followed a download or a file import, from the CLI's
//! `flash FILE|URL` or the API) and whose import did not end (it failed: a
//! wrong digest, a download that broke; or the station stopped first) has no
//! image digest: `image_sha256` is absent in its records (CSV: empty) and
//! `null` in its `"run"`, and the HTML says why. Format 10 gave a placeholder
//! there, the digest of no image. The records keep that placeholder as the
//! run's provisional image row (format `pending`).
//!
//! Format 10 (from format 9): `run_stop_detail` (after `run_stop_reason`) in
//! every record, and `stop_detail` (after `stop_reason_words`) in a run's
//! `"run"`: why the run stopped in the station's words, so that a run stopped
//! `source_failed` says which failure of its source (before, only the
//! command's output and the event log said it). The HTML gives it after the
//! stop's reason ("Stopped"). Records of schema 14 on keep it; older stops
//! take it from their event log when the records are opened.
//!
//! Format 9 (from format 8): a run's `image` (what the image is) may say
//! `udf_revision` in its `iso` ("2.50": the UDF revision of an optical
//! image's UDF volume, read from its logical volume's domain). The CSV and
//! HTML are unchanged but for the CSV's `report_format`.
//!
//! Format 8 (from format 7): a provenance may have `built`, for an image
//! built from another (a bootable layout of an installer ISO):
//! `{"from_sha256", "from_name", "method", "built_at"}`; its `url` is then
//! `image:<sha256>` and its `digest_source` `unchecked`. The HTML says
//! "Origin" for it instead of "Downloaded from". The CSV is unchanged but for
//! its `report_format`.
//!
//! Format 7 (from format 6): a provenance may have `captured`, for an image
//! captured from a master stick (`flashrack image capture`, or a station's
//! master port): `{"port", "serial", "device", "device_size", "extent"}` —
//! the master port (absent when the device was named on the command line),
//! the stick's serial (absent when it has none), the device node read, its
//! size in bytes, and how much of it was read in words (`up to the end of the
//! last MBR partition`, `up to the end of the last GPT partition`, `the whole
//! device`); its `url` is then the device node and its `digest_source`
//! `unchecked` (the digest is of the bytes read). The CSV is unchanged but
//! for its `report_format`.
//!
//! Format 6 (from format 5): `verdict_words` (after `verdict`) and
//! `sample_percent`, `sample_seed`, `sample_chunks_checked`,
//! `sample_chunks_total` (after `bytes_skipped`); `verify_method` may say
//! `sampled` or `audit`. A sampled pass says `sampled (5 %)` in
//! `verdict_words`, in the printed report's verdict column and on its label,
//! never a plain `pass`; `verdict` keeps the category (`pass`).
//!
//! Format 5 (from format 4): `bytes_skipped` (after `verified_after_reset`): the
//! coverage of a sparse attempt; a sparse run's options say `sparse`
//! (`options_words`: "sparse: only the image's block map written and read
//! back, the rest of each stick not checked"), and the printed report's
//! check column gives the coverage.
//!
//! Format 3 (from format 2): the run's operator, lot, image size and source,
//! options in words, stop reason in words, yield and failures by reason; the
//! flashrack version; the seven run fields of every record (above); a run's
//! records by port rather than in the order they were made; the CSV's
//! `report_format` and `flashrack_version` columns.
//!
//! Format 2 (from format 1): refusals are records (`refusal_id`, verdict
//! `refused` with the guard's code), so `attempt_id`, `run_id`, `image_name`,
//! `image_sha256` and `stage` may be absent; `bytes_written` may be absent and
//! `bytes_written_bound` says how far it can be trusted; the counts gain
//! `refused`, and `failed` no longer counts refusals.
//!
//! # CSV
//!
//! RFC 4180 with `\n` line ends: a header line, then a line per record (a run's
//! by port, a device's oldest first). After the record fields come two columns
//! that say what made the file: `report_format` (`flashrack-report/12`) and
//! `flashrack_version`. The run's totals (counts, yield, failures by reason)
//! are not repeated on every line: they are in the JSON and the printed
//! report, and a spreadsheet gets them from the `verdict` column. A text field
//! that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a `'`
//! prepended, so that a spreadsheet never runs a device's vendor string as a
//! formula (device descriptors are whatever the stick says).
//!
//! # HTML
//!
//! One self-contained page for printing: a summary block, then a table row per
//! record; print rules for A4 landscape, no external assets, every value escaped;
//! a running header and "page N of M" on every printed page, and a signature
//! and approval block (operator, QA) at the end of run, device and lot reports.
//!
//! # Labels
//!
//! [`labels_html`]: a run's label sheet, one label per stick that passed (port,
//! serial, verdict, image name, the first 12 hex digits of its sha256, the
//! date, and a QR code of the record's reference, [`record_reference`]), three
//! columns of 63.5 × 38.1 mm labels on A4.

#![deny(missing_docs)]

mod csv_export;
mod export;
mod html;
mod json_export;
mod labels;
pub mod model;
mod time;

pub use csv_export::{csv, run_csv};
pub use export::{CSV_EXTRA_FIELDS, FIELDS, FORMAT, VERSION};
#[doc(no_inline)]
pub use flashrack_inspect::ImageInfo;
pub use html::{device_html, lot_html, origin_label, run_html};
pub use json_export::{device_json, lot_json, run_json};
pub use labels::{device_labels_html, labels_html, record_reference, LABEL_SHA256_DIGITS};
pub use model::{
    port_order, rows_in_order, Counts, DeviceRecord, DeviceReport, ImageOrigin, ImageSource, Lot,
    LotReport, ReportRow, ReportVerdict, Run, RunFacts, RunReport, RunSummary, LOT_OPTION,
    OPERATOR_OPTION,
};
pub use time::{format_time, format_time_short};
