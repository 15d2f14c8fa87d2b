//! A record as every format exports it: the field names, their order, and how
//! each value is written. CSV, JSON and HTML are all made from [`ExportRow`], so
//! the formats cannot disagree about a value.

use flashrack_core::Bound;
use serde::Serialize;

use crate::time::format_time;
use crate::ReportRow;

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

/// One record as exported. The field names are the format: see the crate docs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ExportRow {
    pub(crate) attempt_id: Option<i64>,
    pub(crate) refusal_id: Option<i64>,
    pub(crate) station_id: String,
    pub(crate) run_id: Option<i64>,
    pub(crate) port_label: String,
    pub(crate) port_path: String,
    pub(crate) device_key: String,
    pub(crate) serial: Option<String>,
    pub(crate) vendor: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) capacity_bytes: u64,
    pub(crate) image_name: Option<String>,
    pub(crate) image_sha256: Option<String>,
    pub(crate) started_at: String,
    pub(crate) finished_at: Option<String>,
    pub(crate) verdict: &'static str,
    pub(crate) stage: Option<&'static str>,
    pub(crate) reason_code: Option<String>,
    pub(crate) reason_detail: Option<String>,
    pub(crate) fail_offset: Option<u64>,
    pub(crate) bytes_written: Option<u64>,
    pub(crate) bytes_written_bound: &'static str,
    pub(crate) write_secs: f64,
    pub(crate) write_mb_s: Option<f64>,
    pub(crate) bytes_verified: u64,
    pub(crate) verify_secs: f64,
    pub(crate) verify_mb_s: Option<f64>,
    pub(crate) read_back_sha256: Option<String>,
    pub(crate) verify_method: Option<&'static str>,
}

impl ExportRow {
    pub(crate) fn new(row: &ReportRow) -> Self {
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
            stage: row.stage.map(|s| s.as_str()),
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
            verify_method: f.verify_method.map(|m| m.as_str()),
        }
    }
}

/// A float written as JSON writes it (`80.0`, `12.5`), so that the CSV and the
/// JSON export agree.
pub(crate) fn float(value: f64) -> String {
    serde_json::Value::from(value).to_string()
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

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
