//! The JSON export (`flashrack-report/2`): one object with the run or the device,
//! its counts, and the records.

use serde::Serialize;

use crate::export::{ExportRow, FORMAT};
use crate::time::format_time;
use crate::{Counts, DeviceReport, LotReport, ReportRow, RunReport, RunSummary};

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

/// The lot summary as exported.
#[derive(Serialize)]
struct ExportLot<'a> {
    lot_id: i64,
    name: &'a str,
    image_name: &'a str,
    image_sha256: String,
    options: &'a serde_json::Value,
    stations: &'a [String],
    created_at: String,
    stopped_at: Option<String>,
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

#[derive(Serialize)]
struct LotSubject<'a> {
    lot: ExportLot<'a>,
    runs: Vec<ExportRun<'a>>,
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

/// A run's report as JSON (see the crate docs for the layout).
pub fn run_json(report: &RunReport) -> String {
    to_json(
        "run",
        RunSubject {
            run: ExportRun::new(&report.run),
        },
        &report.rows,
    )
}

/// A device's report as JSON (see the crate docs for the layout).
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

/// A lot's report as JSON (see the crate docs for the layout).
pub fn lot_json(report: &LotReport) -> String {
    let lot = &report.lot;
    to_json(
        "lot",
        LotSubject {
            lot: ExportLot {
                lot_id: lot.id,
                name: &lot.name,
                image_name: &lot.image_name,
                image_sha256: lot.image_sha256.to_hex(),
                options: &lot.options,
                stations: &lot.stations,
                created_at: format_time(lot.created_at),
                stopped_at: lot.stopped_at.map(format_time),
                counts: report.counts,
            },
            runs: report.runs.iter().map(ExportRun::new).collect(),
        },
        &report.rows,
    )
}
