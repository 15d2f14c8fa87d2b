//! A record as every format exports it: the field names, their order, and how
//! each value is written. CSV, JSON and HTML are all made from [`ExportRow`], so
//! the formats cannot disagree about a value.

use flashrack_core::Bound;
use serde::Serialize;

use crate::time::format_time;
use crate::{Counts, ReportRow, LOT_OPTION, OPERATOR_OPTION};

/// The version tag of every export: the JSON's `format`, the CSV's
/// `report_format` column, the HTML's generator and footer.
pub const FORMAT: &str = "flashrack-report/12";

/// The version of flashrack printed on every report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The columns the CSV adds after [`FIELDS`] on every line: the export's
/// format and the flashrack that made it (the JSON has them once, at the
/// top), and where the line's image came from (the JSON's
/// `image_provenance` or `image_origins`, in the printed report's words).
pub const CSV_EXTRA_FIELDS: [&str; 3] = ["report_format", "flashrack_version", "image_origin"];

/// The record fields, in CSV column order.
pub const FIELDS: [&str; 44] = [
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
    "verdict_words",
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
    "verified_after_reset",
    "bytes_skipped",
    "sample_percent",
    "sample_seed",
    "sample_chunks_checked",
    "sample_chunks_total",
    "operator",
    "lot",
    "run_options",
    "run_stop_reason",
    "run_stop_detail",
    "image_size_bytes",
    "image_source_name",
    "image_source_sha256",
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
    pub(crate) verdict_words: String,
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
    pub(crate) verified_after_reset: bool,
    pub(crate) bytes_skipped: u64,
    pub(crate) sample_percent: Option<f64>,
    /// A string: a u64 seed may not fit a JSON reader's doubles.
    pub(crate) sample_seed: Option<String>,
    pub(crate) sample_chunks_checked: Option<u64>,
    pub(crate) sample_chunks_total: Option<u64>,
    pub(crate) operator: Option<String>,
    pub(crate) lot: Option<String>,
    pub(crate) run_options: Option<String>,
    pub(crate) run_stop_reason: Option<&'static str>,
    pub(crate) run_stop_detail: Option<String>,
    pub(crate) image_size_bytes: Option<u64>,
    pub(crate) image_source_name: Option<String>,
    pub(crate) image_source_sha256: Option<String>,
}

impl ExportRow {
    pub(crate) fn new(row: &ReportRow) -> Self {
        let f = &row.figures;
        let facts = &row.run_facts;
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
            verdict_words: verdict_words(row),
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
            verified_after_reset: f.verified_after_reset,
            bytes_skipped: f.bytes_skipped,
            sample_percent: f.sample.as_ref().map(|s| s.percent),
            sample_seed: f.sample.as_ref().map(|s| s.seed.to_string()),
            sample_chunks_checked: f.sample.as_ref().map(|s| s.chunks_checked),
            sample_chunks_total: f.sample.as_ref().map(|s| s.chunks_total),
            operator: facts.option_text(OPERATOR_OPTION).map(str::to_string),
            lot: facts.option_text(LOT_OPTION).map(str::to_string),
            run_options: facts.options.as_ref().map(options_words),
            run_stop_reason: facts.stop_reason.map(|r| r.code()),
            run_stop_detail: facts.stop_detail.clone(),
            image_size_bytes: facts.image_size.map(|s| s.bytes()),
            image_source_name: facts.image_source.as_ref().map(|s| s.file_name.clone()),
            image_source_sha256: facts.image_source.as_ref().map(|s| s.sha256.to_hex()),
        }
    }
}

/// A record's verdict in the words every report shows: for a pass, what it
/// proved (`pass`, `sampled (5 %)`, `audit pass`, `written, not verified`:
/// a weaker proof is never a plain `pass`); otherwise the verdict (`fail`,
/// `refused`, `interrupted`, `running`).
pub(crate) fn verdict_words(row: &ReportRow) -> String {
    match row.verdict {
        crate::ReportVerdict::Pass => row.figures.pass_words(),
        other => other.as_str().to_string(),
    }
}

/// A float written as JSON writes it (`80.0`, `12.5`), so that the CSV and the
/// JSON export agree.
pub(crate) fn float(value: f64) -> String {
    serde_json::Value::from(value).to_string()
}

/// A run's options in words (`verify by comparing every byte read back; eject
/// each stick after it passes; stop after 40 passes`), from the recorded JSON
/// object. Who armed the run and its lot are reported on their own.
pub(crate) fn options_words(options: &serde_json::Value) -> String {
    let mut words = Vec::new();
    if options.get("audit").and_then(|v| v.as_bool()) == Some(true) {
        words.push("audit: nothing written, each stick read back and compared".to_string());
    }
    // A sampled read-back reads its chunks, not every byte: said below.
    let every = if options.get("sample").is_some_and(|v| !v.is_null()) {
        "the sampled chunks"
    } else {
        "every byte"
    };
    match options.get("verify").and_then(|v| v.as_str()) {
        Some("compare") => words.push(format!("verify by comparing {every} read back")),
        Some("hash") => words.push(format!("verify by hashing {every} read back (sha256)")),
        Some("none") => words.push("no verification (written only)".to_string()),
        Some(other) => words.push(format!("verify: {other}")),
        None => {}
    }
    if let Some(share) = options
        .get("sample")
        .and_then(|v| v.as_f64())
        .and_then(|p| flashrack_core::SamplePercent::from_percent(p).ok())
    {
        words.push(format!(
            "sampled: {share} of each stick's chunks (and its first and last), not every byte"
        ));
    }
    if options.get("eject_on_pass").and_then(|v| v.as_bool()) == Some(true) {
        words.push("eject each stick after it passes".to_string());
    }
    match options.get("target_count").and_then(|v| v.as_u64()) {
        Some(n) => words.push(format!("stop after {n} passes")),
        None => words.push("no target count".to_string()),
    }
    if options.get("sparse").and_then(|v| v.as_bool()) == Some(true) {
        let map = options
            .get("sparse_map")
            .and_then(|v| v.as_str())
            .map(|source| format!(" (map: {source})"))
            .unwrap_or_default();
        words.push(format!(
            "sparse: only the image's block map written and read back{map}, the rest of each stick not checked"
        ));
    }
    if options.get("force_raw").and_then(|v| v.as_bool()) == Some(true) {
        words.push("raw run forced by the operator despite the image's inspection".to_string());
    }
    words.join("; ")
}

/// The yield in percent: passes among the sticks that got a verdict about
/// themselves (passed or failed; refused and interrupted ones say nothing
/// about the stick), one decimal; `None` before any stick passed or failed.
pub(crate) fn yield_percent(counts: &Counts) -> Option<f64> {
    let judged = counts.passed + counts.failed;
    (judged > 0).then(|| round(counts.passed as f64 * 100.0 / judged as f64, 1))
}

/// The yield in words.
pub(crate) fn yield_words<'a>(
    counts: &Counts,
    rows: impl IntoIterator<Item = &'a ReportRow>,
) -> String {
    // Passes that proved less than a full read-back say so beside the
    // yield ("6 of them written, not verified"): a run with no read-back
    // read as a 100 % yield of verified sticks.
    let mut weaker: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for row in rows {
        if row.verdict == crate::ReportVerdict::Pass {
            let words = row.figures.pass_words();
            if words != "pass" {
                *weaker.entry(words).or_default() += 1;
            }
        }
    }
    let weaker: String = weaker
        .iter()
        .map(|(words, n)| format!(", {n} of them {words}"))
        .collect();
    match yield_percent(counts) {
        None => "no stick passed or failed yet".to_string(),
        Some(percent) => format!(
            "{percent:.1} % ({} of {} sticks passed{weaker}; refused and interrupted ones not \
             counted)",
            counts.passed,
            counts.passed + counts.failed
        ),
    }
}

/// The failures (verdict `fail`) by reason code, most frequent first, then by
/// code.
pub(crate) fn failures_by_reason<'a>(
    rows: impl IntoIterator<Item = &'a ReportRow>,
) -> Vec<(String, u64)> {
    let mut counts: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for row in rows {
        if row.verdict == crate::ReportVerdict::Fail {
            let reason = row
                .reason_code
                .clone()
                .unwrap_or_else(|| "unknown".to_string());
            *counts.entry(reason).or_default() += 1;
        }
    }
    let mut out: Vec<(String, u64)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
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
            verdict_words: "running".to_string(),
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
            verified_after_reset: false,
            bytes_skipped: 0,
            sample_percent: None,
            sample_seed: None,
            sample_chunks_checked: None,
            sample_chunks_total: None,
            operator: None,
            lot: None,
            run_options: None,
            run_stop_reason: None,
            run_stop_detail: None,
            image_size_bytes: None,
            image_source_name: None,
            image_source_sha256: None,
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

    #[test]
    fn a_sampled_runs_options_never_claim_every_byte() {
        let sampled = options_words(&serde_json::json!({
            "verify": "compare", "sample": 5.0, "sparse": true
        }));
        assert!(!sampled.contains("comparing every byte"), "{sampled}");
        assert!(
            sampled.starts_with("verify by comparing the sampled chunks read back;"),
            "{sampled}"
        );
        assert!(sampled.contains("sparse:"), "{sampled}");
        // Which map a sparse run was written by.
        let mapped = options_words(&serde_json::json!({
            "verify": "compare", "sparse": true,
            "sparse_map": "bmap file disk.img.bmap (format 2.0)"
        }));
        assert!(
            mapped.contains("read back (map: bmap file disk.img.bmap (format 2.0)), the rest"),
            "{mapped}"
        );
        let full = options_words(&serde_json::json!({ "verify": "hash", "sample": null }));
        assert!(
            full.starts_with("verify by hashing every byte read back"),
            "{full}"
        );
    }
}
