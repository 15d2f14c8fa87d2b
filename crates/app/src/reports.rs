//! Reports from the records: the run list, a run's and a device's report in
//! CSV, JSON or printable HTML. The web side gets them through
//! [`StoreRecords`](crate::records::StoreRecords)' `Reports`; `flashrack
//! report` through the functions here, over a store opened read-only.
//!
//! Every report format is rendered in this one module (`render_run`,
//! `render_device`), whoever asks.

use std::path::Path;

use flashrack_core::RunId;
use flashrack_report as report;
use flashrack_store::{DeviceReport, Records, RunReport, RunSummary, Store};
pub use flashrack_web::ReportFormat;

use crate::records::database_path;
use crate::AppError;

/// A rendered report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Its HTTP content type (`text/csv; charset=utf-8`, …).
    pub content_type: &'static str,
    /// The report.
    pub body: String,
}

/// The content type of a format.
fn content_type(format: ReportFormat) -> &'static str {
    match format {
        ReportFormat::Csv => "text/csv; charset=utf-8",
        ReportFormat::Json => "application/json",
        ReportFormat::Html | ReportFormat::Labels => "text/html; charset=utf-8",
    }
}

/// A run's report; `generated_at` (ms since the epoch) is the HTML's date.
pub fn render_run(run: &RunReport, format: ReportFormat, generated_at: i64) -> Rendered {
    Rendered {
        content_type: content_type(format),
        body: match format {
            ReportFormat::Csv => report::run_csv(run),
            ReportFormat::Json => report::run_json(run),
            ReportFormat::Html => report::run_html(run, generated_at),
            ReportFormat::Labels => report::labels_html(run, generated_at),
        },
    }
}

/// A device's report; `generated_at` (ms since the epoch) is the HTML's date.
pub fn render_device(device: &DeviceReport, format: ReportFormat, generated_at: i64) -> Rendered {
    Rendered {
        content_type: content_type(format),
        body: match format {
            ReportFormat::Csv => report::csv(&device.rows, &device.image_origins),
            ReportFormat::Json => report::device_json(device),
            ReportFormat::Html => report::device_html(device, generated_at),
            ReportFormat::Labels => report::device_labels_html(device, generated_at),
        },
    }
}

/// A time of the records (ms since the epoch) as the reports write it
/// (RFC 3339, UTC, milliseconds).
pub fn format_time(ms: i64) -> String {
    report::format_time(ms)
}

/// The records of `data_dir`, read-only: a report never writes (no station
/// row, no file beside the database), and reads a copy on a read-only mount as
/// well. No records at all is [`AppError::NoRecords`].
pub async fn open_read_only(data_dir: &Path, station_id: &str) -> Result<Store, AppError> {
    let path = database_path(data_dir);
    if !path.exists() {
        return Err(AppError::NoRecords {
            dir: data_dir.to_path_buf(),
        });
    }
    Store::open_read_only(&path, station_id)
        .await
        .map_err(|source| AppError::ReadRecords { path, source })
}

/// The station id a report opens the records as: it writes nothing, so any
/// will do; the one asked about, else the default.
fn reader_id(station: Option<&str>) -> &str {
    station.unwrap_or("station-1")
}

/// What a report says of an attempt the records hold as running while no
/// flashrack holds their data directory (see [`cut_short`]).
pub const CUT_SHORT: &str = "interrupted: the flashrack that recorded it is no longer running \
     (a crash, a kill or a power cut); the next flashrack to open these records closes it";

/// Whether the records of `data_dir` may hold attempts cut short: nothing
/// holds the data directory's lock (see [`crate::lock::in_use`]), so an
/// attempt they hold as running is no longer running. A report opens them
/// read-only and cannot close them (the next flashrack to open them for
/// writing does, as `interrupted`); it says so instead of `running`.
pub fn cut_short(data_dir: &Path) -> bool {
    crate::lock::in_use(data_dir) == Some(false)
}

/// A row the records hold as running, as a report shows it when its
/// flashrack is gone: interrupted, saying why.
fn close_row(row: &mut report::ReportRow) {
    if row.verdict == report::ReportVerdict::Running {
        row.verdict = report::ReportVerdict::Interrupted;
        row.reason_code = Some("interrupted".into());
        row.reason_detail = Some(CUT_SHORT.into());
    }
}

/// Counts with the running ones counted as interrupted.
fn close_counts(counts: &mut report::Counts) {
    counts.interrupted += counts.running;
    counts.running = 0;
}

/// Every run in the records, oldest first; with `station`, only its runs.
/// Attempts cut short (see [`cut_short`]) are counted as interrupted.
pub async fn runs(data_dir: &Path, station: Option<&str>) -> Result<Vec<RunSummary>, AppError> {
    let store = open_read_only(data_dir, reader_id(station)).await?;
    let mut runs = store.list_runs().await?;
    if let Some(station) = station {
        runs.retain(|r| r.run.station_id == station);
    }
    if cut_short(data_dir) {
        for run in &mut runs {
            close_counts(&mut run.counts);
        }
    }
    Ok(runs)
}

/// Run `id`'s report; with `station`, a run of another station is an error.
pub async fn run_report(
    data_dir: &Path,
    station: Option<&str>,
    id: RunId,
    format: ReportFormat,
) -> Result<Rendered, AppError> {
    let store = open_read_only(data_dir, reader_id(station)).await?;
    let mut run = store.run_report(id).await?.ok_or(AppError::NoSuchRun(id))?;
    if cut_short(data_dir) {
        run.rows.iter_mut().for_each(close_row);
        close_counts(&mut run.run.counts);
    }
    if let Some(station) = station {
        if run.run.run.station_id != station {
            return Err(AppError::RunOfAnotherStation {
                run: id,
                station: run.run.run.station_id.clone(),
                asked: station.to_string(),
            });
        }
    }
    Ok(render_run(&run, format, store.now()))
}

/// The report of every attempt on the device `key` (its serial or key); with
/// `station`, only that station's records of it (and their counts).
pub async fn device_report(
    data_dir: &Path,
    station: Option<&str>,
    key: &str,
    format: ReportFormat,
) -> Result<Rendered, AppError> {
    let store = open_read_only(data_dir, reader_id(station)).await?;
    let mut device = store
        .device_report(key)
        .await?
        .ok_or_else(|| AppError::NoSuchDevice(key.to_string()))?;
    if cut_short(data_dir) {
        device.rows.iter_mut().for_each(close_row);
        device.counts = report::Counts::of(&device.rows);
    }
    if let Some(station) = station {
        device.rows.retain(|row| row.station_id == station);
        device.counts = report::Counts::of(&device.rows);
    }
    Ok(render_device(&device, format, store.now()))
}
