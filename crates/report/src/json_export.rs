//! The JSON export (`flashrack-report/12`): one object with the run or the device,
//! its counts, and the records.

use serde::Serialize;

use crate::export::{failures_by_reason, options_words, yield_percent, ExportRow, FORMAT, VERSION};
use crate::time::format_time;
use flashrack_core::Provenance;

use crate::{
    Counts, DeviceReport, ImageOrigin, ImageSource, LotReport, ReportRow, RunReport, RunSummary,
};

/// The file an image was imported from, as exported.
#[derive(Serialize)]
struct ExportSource<'a> {
    file_name: &'a str,
    sha256: String,
    size_bytes: u64,
}

impl<'a> ExportSource<'a> {
    fn new(source: &'a ImageSource) -> Self {
        Self {
            file_name: &source.file_name,
            sha256: source.sha256.to_hex(),
            size_bytes: source.size.bytes(),
        }
    }
}

/// A failure reason and how many sticks failed with it.
#[derive(Serialize)]
struct ExportFailures {
    reason_code: String,
    count: u64,
}

/// The run summary as exported.
#[derive(Serialize)]
struct ExportRun<'a> {
    run_id: i64,
    station_id: &'a str,
    operator: Option<&'a str>,
    lot: Option<&'a str>,
    image_name: &'a str,
    image_sha256: Option<String>,
    image_size_bytes: Option<u64>,
    image_source: Option<ExportSource<'a>>,
    options: &'a serde_json::Value,
    options_words: String,
    started_at: String,
    stopped_at: Option<String>,
    stop_reason: Option<&'static str>,
    stop_reason_words: Option<&'static str>,
    stop_detail: Option<&'a str>,
    #[serde(flatten)]
    counts: Counts,
    yield_percent: Option<f64>,
    failures_by_reason: Vec<ExportFailures>,
}

impl<'a> ExportRun<'a> {
    /// The run, its counts, and the failures by reason of `rows` (its records).
    fn new(summary: &'a RunSummary, rows: &[&ReportRow]) -> Self {
        let run = &summary.run;
        Self {
            run_id: run.id.0,
            station_id: &run.station_id,
            operator: run.operator(),
            lot: run.lot(),
            image_name: &run.image_name,
            image_sha256: run.image_digest().map(|d| d.to_hex()),
            image_size_bytes: run.image_size.map(|s| s.bytes()),
            image_source: run.image_source.as_ref().map(ExportSource::new),
            options: &run.options,
            options_words: options_words(&run.options),
            started_at: format_time(run.started_at),
            stopped_at: run.stopped_at.map(format_time),
            stop_reason: run.stop_reason.map(|r| r.code()),
            stop_reason_words: run.stop_reason.map(|r| r.describe()),
            stop_detail: run.stop_detail.as_deref(),
            counts: summary.counts,
            yield_percent: yield_percent(&summary.counts),
            failures_by_reason: failures_by_reason(rows.iter().copied())
                .into_iter()
                .map(|(reason_code, count)| ExportFailures { reason_code, count })
                .collect(),
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
    flashrack_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    subject: S,
    attempts: Vec<ExportRow>,
}

#[derive(Serialize)]
struct RunSubject<'a> {
    run: ExportRun<'a>,
    /// What the image is (absent when the records do not know).
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a flashrack_inspect::ImageInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_provenance: Option<&'a Provenance>,
}

#[derive(Serialize)]
struct DeviceSubject<'a> {
    device: ExportDevice<'a>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    image_origins: &'a [ImageOrigin],
}

#[derive(Serialize)]
struct LotSubject<'a> {
    lot: ExportLot<'a>,
    runs: Vec<ExportRun<'a>>,
    #[serde(skip_serializing_if = "<[ImageOrigin]>::is_empty")]
    image_origins: &'a [ImageOrigin],
}

fn to_json<'r, S: Serialize>(
    kind: &'static str,
    subject: S,
    rows: impl IntoIterator<Item = &'r ReportRow>,
) -> String {
    let report = JsonReport {
        format: FORMAT,
        flashrack_version: VERSION,
        kind,
        subject,
        attempts: rows.into_iter().map(ExportRow::new).collect(),
    };
    // Serializing plain strings, numbers and JSON values cannot fail.
    let mut out = serde_json::to_string_pretty(&report).expect("report serializes");
    out.push('\n');
    out
}

/// A run's report as JSON (see the crate docs for the layout): its records by
/// port, as the printed report lists them.
pub fn run_json(report: &RunReport) -> String {
    let rows = report.rows_by_port();
    to_json(
        "run",
        RunSubject {
            run: ExportRun::new(&report.run, &rows),
            image: report.image.as_ref(),
            image_provenance: report.image_provenance.as_ref(),
        },
        rows,
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
            image_origins: &report.image_origins,
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
            runs: report
                .runs
                .iter()
                .map(|run| {
                    let mine: Vec<&ReportRow> = report
                        .rows
                        .iter()
                        .filter(|row| {
                            row.station_id == run.run.station_id && row.run_id == Some(run.run.id)
                        })
                        .collect();
                    ExportRun::new(run, &mine)
                })
                .collect(),
            image_origins: &report.image_origins,
        },
        &report.rows,
    )
}
