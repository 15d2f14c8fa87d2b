//! Report export: CSV, JSON and printable HTML, per run and per device.
//!
//! The exports are pure functions of what [`Store::run_report`](crate::Store::run_report)
//! and [`Store::device_report`](crate::Store::device_report) return, so the same
//! records always export to the same bytes.
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
//! One object: `"format": "flashrack-report/2"`, `"kind": "run"` or `"device"`, then
//! `"run"` (fields `run_id`, `station_id`, `image_name`, `image_sha256`, `options`,
//! `started_at`, `stopped_at`, `stop_reason`, `attempts`, `passed`, `failed`,
//! `refused`, `interrupted`, `running`) or `"device"` (fields `device_key`,
//! `serial`, `vendor`, `model`, `capacity_bytes`, `first_seen`, `last_seen` and the
//! same six counts), then `"attempts"`: the records (attempts and refusals).
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
//! attempt; print rules for A4 landscape, no external assets, every value escaped.

use std::fmt::Write as _;

use flashrack_core::ByteSize;
use serde::Serialize;

use crate::{Counts, DeviceReport, ReportRow, RunReport, RunSummary};
use flashrack_core::Bound;

/// The version tag of the JSON export.
pub const FORMAT: &str = "flashrack-report/2";

/// The record fields, in CSV column order.
pub const FIELDS: [&str; 29] = [
    "attempt_id",
    "refusal_id",
    "station_id",
    "run_id",
    "port_label",
    "port_path",
    "device_key",
    "serial",
    "vendor",
    "model",
    "capacity_bytes",
    "image_name",
    "image_sha256",
    "started_at",
    "finished_at",
    "verdict",
    "stage",
    "reason_code",
    "reason_detail",
    "fail_offset",
    "bytes_written",
    "bytes_written_bound",
    "write_secs",
    "write_mb_s",
    "bytes_verified",
    "verify_secs",
    "verify_mb_s",
    "read_back_sha256",
    "verify_method",
];

/// One record as exported. The field names are the format: see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct ExportRow {
    attempt_id: Option<i64>,
    refusal_id: Option<i64>,
    station_id: String,
    run_id: Option<i64>,
    port_label: String,
    port_path: String,
    device_key: String,
    serial: Option<String>,
    vendor: Option<String>,
    model: Option<String>,
    capacity_bytes: u64,
    image_name: Option<String>,
    image_sha256: Option<String>,
    started_at: String,
    finished_at: Option<String>,
    verdict: &'static str,
    stage: Option<&'static str>,
    reason_code: Option<String>,
    reason_detail: Option<String>,
    fail_offset: Option<u64>,
    bytes_written: Option<u64>,
    bytes_written_bound: &'static str,
    write_secs: f64,
    write_mb_s: Option<f64>,
    bytes_verified: u64,
    verify_secs: f64,
    verify_mb_s: Option<f64>,
    read_back_sha256: Option<String>,
    verify_method: Option<&'static str>,
}

/// A CSV cell: text is guarded against formulas, numbers are not.
enum Cell<'a> {
    Text(Option<&'a str>),
    Number(Option<String>),
}

impl ExportRow {
    fn new(row: &ReportRow) -> Self {
        let f = &row.figures;
        Self {
            attempt_id: row.attempt_id.map(|id| id.0),
            refusal_id: row.refusal_id.map(|id| id.0),
            station_id: row.station_id.clone(),
            run_id: row.run_id.map(|id| id.0),
            port_label: row.port_label.clone(),
            port_path: row.port_path.clone(),
            device_key: row.device_key.clone(),
            serial: row.serial.clone(),
            vendor: row.vendor.clone(),
            model: row.model.clone(),
            capacity_bytes: f.capacity.bytes(),
            image_name: row.image_name.clone(),
            image_sha256: row.image_sha256.map(|d| d.to_hex()),
            started_at: format_time(row.started_at),
            finished_at: row.finished_at.map(format_time),
            verdict: row.verdict.as_str(),
            stage: row.stage.map(crate::convert::stage_str),
            reason_code: row.reason_code.clone(),
            reason_detail: row.reason_detail.clone(),
            fail_offset: row.fail_offset,
            bytes_written: (f.bytes_written_bound != Bound::Unknown).then_some(f.bytes_written),
            bytes_written_bound: f.bytes_written_bound.as_str(),
            write_secs: round(f.write_secs, 3),
            write_mb_s: f.write_mb_per_sec().map(|r| round(r, 2)),
            bytes_verified: f.bytes_verified,
            verify_secs: round(f.verify_secs, 3),
            verify_mb_s: f.verify_mb_per_sec().map(|r| round(r, 2)),
            read_back_sha256: f.read_back_sha256.map(|d| d.to_hex()),
            verify_method: f.verify_method.map(crate::convert::verify_method_str),
        }
    }

    /// The cells in [`FIELDS`] order.
    fn cells(&self) -> [Cell<'_>; FIELDS.len()] {
        let num = Cell::Number;
        let text = Cell::Text;
        [
            num(self.attempt_id.map(|id| id.to_string())),
            num(self.refusal_id.map(|id| id.to_string())),
            Cell::Text(Some(&self.station_id)),
            num(self.run_id.map(|id| id.to_string())),
            Cell::Text(Some(&self.port_label)),
            Cell::Text(Some(&self.port_path)),
            Cell::Text(Some(&self.device_key)),
            text(self.serial.as_deref()),
            text(self.vendor.as_deref()),
            text(self.model.as_deref()),
            num(Some(self.capacity_bytes.to_string())),
            text(self.image_name.as_deref()),
            text(self.image_sha256.as_deref()),
            Cell::Text(Some(&self.started_at)),
            text(self.finished_at.as_deref()),
            Cell::Text(Some(self.verdict)),
            text(self.stage),
            text(self.reason_code.as_deref()),
            text(self.reason_detail.as_deref()),
            num(self.fail_offset.map(|o| o.to_string())),
            num(self.bytes_written.map(|b| b.to_string())),
            Cell::Text(Some(self.bytes_written_bound)),
            num(Some(float(self.write_secs))),
            num(self.write_mb_s.map(float)),
            num(Some(self.bytes_verified.to_string())),
            num(Some(float(self.verify_secs))),
            num(self.verify_mb_s.map(float)),
            text(self.read_back_sha256.as_deref()),
            text(self.verify_method),
        ]
    }
}

/// A float written as JSON writes it (`80.0`, `12.5`), so both exports agree.
fn float(value: f64) -> String {
    serde_json::Value::from(value).to_string()
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds:
/// `2025-03-01T09:30:00.000Z`. Times outside the years 0–9999 are shown as the
/// plain number.
pub fn format_time(ms: i64) -> String {
    match civil(ms) {
        Some((date, time, millis)) => format!("{date}T{time}.{millis:03}Z"),
        None => ms.to_string(),
    }
}

/// Unix milliseconds for a person: `2025-03-01 09:30:00 UTC`.
fn format_time_short(ms: i64) -> String {
    match civil(ms) {
        Some((date, time, _)) => format!("{date} {time} UTC"),
        None => ms.to_string(),
    }
}

/// `(YYYY-MM-DD, HH:MM:SS, milliseconds)` of a unix time in milliseconds.
fn civil(ms: i64) -> Option<(String, String, i64)> {
    let nanos = i128::from(ms) * 1_000_000;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    if !(0..=9999).contains(&at.year()) {
        return None;
    }
    Some((
        format!(
            "{:04}-{:02}-{:02}",
            at.year(),
            u8::from(at.month()),
            at.day()
        ),
        format!("{:02}:{:02}:{:02}", at.hour(), at.minute(), at.second()),
        i64::from(at.millisecond()),
    ))
}

/// The attempts as CSV: a header line of [`FIELDS`], then a line per row.
pub fn csv(rows: &[ReportRow]) -> String {
    let mut out = String::new();
    out.push_str(&FIELDS.join(","));
    out.push('\n');
    for row in rows {
        let export = ExportRow::new(row);
        for (i, cell) in export.cells().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match cell {
                Cell::Text(Some(text)) => push_csv_text(&mut out, text),
                Cell::Number(Some(number)) => out.push_str(number),
                Cell::Text(None) | Cell::Number(None) => {}
            }
        }
        out.push('\n');
    }
    out
}

fn push_csv_text(out: &mut String, text: &str) {
    let guarded;
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        guarded = format!("'{text}");
        guarded.as_str()
    } else {
        text
    };
    let needs_quotes =
        text.contains([',', '"', '\n', '\r']) || text.starts_with(' ') || text.ends_with(' ');
    if needs_quotes {
        out.push('"');
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(text);
    }
}

/// The run summary as exported.
#[derive(Serialize)]
struct ExportRun<'a> {
    run_id: i64,
    station_id: &'a str,
    image_name: &'a str,
    image_sha256: String,
    options: &'a serde_json::Value,
    started_at: String,
    stopped_at: Option<String>,
    stop_reason: Option<&'static str>,
    #[serde(flatten)]
    counts: Counts,
}

impl<'a> ExportRun<'a> {
    fn new(summary: &'a RunSummary) -> Self {
        let run = &summary.run;
        Self {
            run_id: run.id.0,
            station_id: &run.station_id,
            image_name: &run.image_name,
            image_sha256: run.image_sha256.to_hex(),
            options: &run.options,
            started_at: format_time(run.started_at),
            stopped_at: run.stopped_at.map(format_time),
            stop_reason: run.stop_reason.map(|r| r.code()),
            counts: summary.counts,
        }
    }
}

/// The device summary as exported.
#[derive(Serialize)]
struct ExportDevice<'a> {
    device_key: &'a str,
    serial: Option<&'a str>,
    vendor: Option<&'a str>,
    model: Option<&'a str>,
    capacity_bytes: u64,
    first_seen: String,
    last_seen: String,
    #[serde(flatten)]
    counts: Counts,
}

#[derive(Serialize)]
struct JsonReport<S> {
    format: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    subject: S,
    attempts: Vec<ExportRow>,
}

#[derive(Serialize)]
struct RunSubject<'a> {
    run: ExportRun<'a>,
}

#[derive(Serialize)]
struct DeviceSubject<'a> {
    device: ExportDevice<'a>,
}

fn to_json<S: Serialize>(kind: &'static str, subject: S, rows: &[ReportRow]) -> String {
    let report = JsonReport {
        format: FORMAT,
        kind,
        subject,
        attempts: rows.iter().map(ExportRow::new).collect(),
    };
    // Serializing plain strings, numbers and JSON values cannot fail.
    let mut out = serde_json::to_string_pretty(&report).expect("report serializes");
    out.push('\n');
    out
}

/// A run's report as JSON (see the module docs for the layout).
pub fn run_json(report: &RunReport) -> String {
    to_json(
        "run",
        RunSubject {
            run: ExportRun::new(&report.run),
        },
        &report.rows,
    )
}

/// A device's report as JSON (see the module docs for the layout).
pub fn device_json(report: &DeviceReport) -> String {
    let d = &report.device;
    to_json(
        "device",
        DeviceSubject {
            device: ExportDevice {
                device_key: &d.key,
                serial: d.serial.as_deref(),
                vendor: d.vendor.as_deref(),
                model: d.model.as_deref(),
                capacity_bytes: d.capacity.bytes(),
                first_seen: format_time(d.first_seen),
                last_seen: format_time(d.last_seen),
                counts: report.counts,
            },
        },
        &report.rows,
    )
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
@page { size: A4 landscape; margin: 12mm; }
* { box-sizing: border-box; }
body { font: 10pt/1.35 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #111;
       margin: 0 auto; padding: 16px; max-width: 1500px; }
h1 { font-size: 15pt; margin: 0 0 8px; }
.summary { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0 0 12px;
           break-inside: avoid; page-break-inside: avoid; }
.summary dt { font-weight: bold; }
.summary dd { margin: 0; }
table { border-collapse: collapse; width: 100%; font-size: 8pt; }
thead { display: table-header-group; }
tr { break-inside: avoid; page-break-inside: avoid; }
th, td { border: 1px solid #888; padding: 2px 4px; text-align: left; vertical-align: top; }
th { background: #e8e8e8; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.mono { font-family: "DejaVu Sans Mono", monospace; font-size: 7pt; word-break: break-all; }
tr.pass td.verdict { background: #d9f2d9; }
tr.fail td.verdict { background: #f8d0d0; font-weight: bold; }
tr.interrupted td.verdict, tr.running td.verdict { background: #fdf0c8; }
tr.refused td.verdict { background: #e0e4f0; }
footer { margin-top: 10px; font-size: 8pt; color: #555; }
@media print {
  body { padding: 0; max-width: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"#;

fn page(title: &str, summary: &str, table: &str, generated_at: i64) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"generator\" content=\"flashrack ({FORMAT})\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>{title}</h1>\n{summary}{table}\
         <footer>Generated by flashrack at {generated} ({FORMAT}).</footer>\n</body>\n</html>\n",
        title = html_escape(title),
        generated = format_time_short(generated_at),
    )
}

fn summary_block(items: &[(&str, String)], counts: &Counts) -> String {
    let mut out = String::from("<dl class=\"summary\">\n");
    for (term, value) in items {
        let _ = writeln!(out, "<dt>{}</dt><dd>{}</dd>", html_escape(term), value);
    }
    let records =
        counts.passed + counts.failed + counts.refused + counts.interrupted + counts.running;
    let _ = writeln!(
        out,
        "<dt>Records</dt><dd><b>{}</b> passed · <b>{}</b> failed · <b>{}</b> refused \
         (nothing written) · <b>{}</b> interrupted · <b>{}</b> running · <b>{records}</b> \
         in all ({} attempts)</dd>",
        counts.passed,
        counts.failed,
        counts.refused,
        counts.interrupted,
        counts.running,
        counts.attempts
    );
    out.push_str("</dl>\n");
    out
}

fn opt(value: Option<&str>) -> String {
    value.map(html_escape).unwrap_or_default()
}

fn attempts_table(rows: &[ReportRow], with_run: bool) -> String {
    let mut out = String::from("<table>\n<thead><tr>");
    let mut headers = vec!["#"];
    if with_run {
        headers.extend(["Run", "Image"]);
    }
    headers.extend([
        "Port",
        "Serial",
        "Vendor",
        "Model",
        "Capacity",
        "Started",
        "Finished",
        "Written",
        "Write MB/s",
        "Verify MB/s",
        "Read-back sha256",
        "Verdict",
        "Reason",
        "Offset",
    ]);
    for h in headers {
        let _ = write!(out, "<th>{}</th>", html_escape(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        let e = ExportRow::new(row);
        // A refusal before any attempt has no attempt number: it shows its own.
        let number = match (e.attempt_id, e.refusal_id) {
            (Some(id), _) => id.to_string(),
            (None, Some(id)) => format!("refusal {id}"),
            (None, None) => String::new(),
        };
        let _ = write!(
            out,
            "<tr class=\"{}\"><td class=\"num\">{}</td>",
            e.verdict, number
        );
        if with_run {
            let _ = write!(
                out,
                "<td class=\"num\">{}</td><td>{}</td>",
                e.run_id.map(|id| id.to_string()).unwrap_or_default(),
                opt(e.image_name.as_deref())
            );
        }
        let rate = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "<td>{port}</td><td>{serial}</td><td>{vendor}</td><td>{model}</td>\
             <td class=\"num\">{capacity}</td><td>{started}</td><td>{finished}</td>\
             <td class=\"num\">{written}</td><td class=\"num\">{write_rate}</td>\
             <td class=\"num\">{verify_rate}</td><td class=\"mono\">{sha}</td>\
             <td class=\"verdict\">{verdict}</td><td>{reason}</td><td class=\"num\">{offset}</td></tr>",
            port = html_escape(&e.port_label),
            serial = opt(e.serial.as_deref()),
            vendor = opt(e.vendor.as_deref()),
            model = opt(e.model.as_deref()),
            capacity = html_escape(&ByteSize(e.capacity_bytes).to_string()),
            started = html_escape(&format_time_short(row.started_at)),
            finished = row
                .finished_at
                .map(|t| html_escape(&format_time_short(t)))
                .unwrap_or_default(),
            written = html_escape(&match (e.bytes_written, row.figures.bytes_written_bound) {
                (Some(bytes), Bound::LowerBound) => format!("≥ {}", ByteSize(bytes)),
                (Some(bytes), _) => ByteSize(bytes).to_string(),
                (None, _) => "unknown".to_string(),
            }),
            write_rate = rate(e.write_mb_s),
            verify_rate = rate(e.verify_mb_s),
            sha = opt(e.read_back_sha256.as_deref()),
            verdict = e.verdict,
            reason = opt(e.reason_detail.as_deref()),
            offset = e.fail_offset.map(|o| o.to_string()).unwrap_or_default(),
        );
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// A run's report as one printable, self-contained HTML page, stamped as generated
/// at `generated_at` (unix milliseconds).
pub fn run_html(report: &RunReport, generated_at: i64) -> String {
    let run = &report.run.run;
    let options = serde_json::to_string(&run.options).unwrap_or_default();
    let items = [
        ("Station", html_escape(&run.station_id)),
        ("Image", html_escape(&run.image_name)),
        (
            "Image sha256",
            format!("<span class=\"mono\">{}</span>", run.image_sha256),
        ),
        (
            "Options",
            format!("<span class=\"mono\">{}</span>", html_escape(&options)),
        ),
        ("Started", html_escape(&format_time_short(run.started_at))),
        (
            "Stopped",
            match (run.stopped_at, run.stop_reason) {
                (Some(at), Some(reason)) => {
                    html_escape(&format!("{} ({reason})", format_time_short(at)))
                }
                _ => "still open".to_string(),
            },
        ),
    ];
    page(
        &format!("flashrack run {}: {}", run.id, run.image_name),
        &summary_block(&items, &report.run.counts),
        &attempts_table(&report.rows, false),
        generated_at,
    )
}

/// A device's report as one printable, self-contained HTML page, stamped as
/// generated at `generated_at` (unix milliseconds).
pub fn device_html(report: &DeviceReport, generated_at: i64) -> String {
    let d = &report.device;
    let items = [
        ("Device", html_escape(&d.key)),
        ("Serial", opt(d.serial.as_deref())),
        ("Vendor", opt(d.vendor.as_deref())),
        ("Model", opt(d.model.as_deref())),
        ("Capacity", html_escape(&d.capacity.to_string())),
        ("First seen", html_escape(&format_time_short(d.first_seen))),
        ("Last seen", html_escape(&format_time_short(d.last_seen))),
    ];
    page(
        &format!("flashrack device {}", d.key),
        &summary_block(&items, &report.counts),
        &attempts_table(&report.rows, true),
        generated_at,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_740_821_400_123), "2025-03-01T09:30:00.123Z");
        assert_eq!(
            format_time_short(1_740_821_400_123),
            "2025-03-01 09:30:00 UTC"
        );
        assert_eq!(format_time(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn csv_quotes_separators_and_defuses_formulas() {
        let mut out = String::new();
        push_csv_text(&mut out, "Kingston, \"DT\"");
        assert_eq!(out, "\"Kingston, \"\"DT\"\"\"");
        let mut out = String::new();
        push_csv_text(&mut out, "=HYPERLINK(\"x\")");
        assert_eq!(out, "\"'=HYPERLINK(\"\"x\"\")\"");
        let mut out = String::new();
        push_csv_text(&mut out, "plain");
        assert_eq!(out, "plain");
    }

    #[test]
    fn html_escape_covers_markup_and_quotes() {
        assert_eq!(
            html_escape("<a href='x'>\"&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_json_keys_are_the_csv_columns() {
        let row = ExportRow {
            attempt_id: Some(1),
            refusal_id: None,
            station_id: String::new(),
            run_id: Some(1),
            port_label: String::new(),
            port_path: String::new(),
            device_key: String::new(),
            serial: None,
            vendor: None,
            model: None,
            capacity_bytes: 0,
            image_name: None,
            image_sha256: None,
            started_at: String::new(),
            finished_at: None,
            verdict: "running",
            stage: Some("preparing"),
            reason_code: None,
            reason_detail: None,
            fail_offset: None,
            bytes_written: Some(0),
            bytes_written_bound: "lower_bound",
            write_secs: 0.0,
            write_mb_s: None,
            bytes_verified: 0,
            verify_secs: 0.0,
            verify_mb_s: None,
            read_back_sha256: None,
            verify_method: None,
        };
        let json = serde_json::to_value(&row).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields = FIELDS.to_vec();
        keys.sort_unstable();
        fields.sort_unstable();
        assert_eq!(keys, fields);
    }
}
