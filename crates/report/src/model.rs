//! What a report holds: a run or a device, its counts, and one row per record
//! (attempts and refusals). A database of records (the station's SQLite, a
//! hub's PostgreSQL) fills these; the exports render them. Timestamps are unix
//! milliseconds (UTC).

use std::fmt;

use flashrack_core::{
    AttemptFigures, AttemptId, ByteSize, DeviceId, Provenance, RefusalId, RunId, Sha256Digest,
    Stage, StopReason,
};
use serde::{Deserialize, Serialize};

/// A run as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Its id.
    pub id: RunId,
    /// The station that ran it.
    pub station_id: String,
    /// The image's sha256.
    pub image_sha256: Sha256Digest,
    /// The image's name when the run started.
    pub image_name: String,
    /// The run's options as recorded when it started (a JSON object: verify
    /// mode, eject on pass, target count …).
    pub options: serde_json::Value,
    /// When it started.
    pub started_at: i64,
    /// When it stopped, if it has.
    pub stopped_at: Option<i64>,
    /// Why it stopped, if it has.
    pub stop_reason: Option<StopReason>,
    /// What the station said of the stop beside its reason, if anything:
    /// for `source_failed` the source's failure with its causes (a digest
    /// that did not match, a file that changed on the server), for
    /// `shutdown` the signal, an operator's note.
    #[serde(default)]
    pub stop_detail: Option<String>,
    /// The raw image's size, where the records know it (`None` in data
    /// recorded without it).
    #[serde(default)]
    pub image_size: Option<ByteSize>,
    /// The file the image was imported from, where the records know it.
    #[serde(default)]
    pub image_source: Option<ImageSource>,
    /// Whether the run's image was imported. `false` for a run that wrote
    /// while its image was being imported (it followed a download or a file
    /// import) whose import has not ended, or never did: it failed, or the
    /// station stopped first. `image_sha256` is then a placeholder, the
    /// digest of no image, and the exports give no image digest at all.
    #[serde(default = "imported")]
    pub image_imported: bool,
}

fn imported() -> bool {
    true
}

impl Run {
    /// The image's sha256, if the run's image was imported (see
    /// [`image_imported`](Self::image_imported)).
    pub fn image_digest(&self) -> Option<Sha256Digest> {
        self.image_imported.then_some(self.image_sha256)
    }

    /// Who armed the run (the `operator` option), if it was given.
    pub fn operator(&self) -> Option<&str> {
        self.options.get(OPERATOR_OPTION).and_then(|v| v.as_str())
    }

    /// The run's lot or batch id (the `lot` option), if it was given.
    pub fn lot(&self) -> Option<&str> {
        self.options.get(LOT_OPTION).and_then(|v| v.as_str())
    }

    /// What a report row of this run knows about it.
    pub fn facts(&self) -> RunFacts {
        RunFacts {
            options: Some(self.options.clone()),
            stop_reason: self.stop_reason,
            stop_detail: self.stop_detail.clone(),
            image_size: self.image_size,
            image_source: self.image_source.clone(),
        }
    }
}

/// The run option naming who armed the run.
pub const OPERATOR_OPTION: &str = "operator";
/// The run option holding the run's lot or batch id.
pub const LOT_OPTION: &str = "lot";

/// Where an image came from: the file that was imported (a compressed file,
/// an archive or the raw image itself), as the image cache recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    /// The imported file's name (its last path component).
    pub file_name: String,
    /// The sha256 of the imported file as given (the raw image's for a raw
    /// import).
    pub sha256: Sha256Digest,
    /// The imported file's size in bytes.
    pub size: ByteSize,
}

/// What a record's run says about it, beyond its name and digest: the facts a
/// row carries so that a device's records (across runs) and a CSV line stand
/// on their own. All absent for a refusal while no run was armed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunFacts {
    /// The run's options as recorded (who armed it and its lot among them).
    pub options: Option<serde_json::Value>,
    /// Why the run stopped, if it has.
    pub stop_reason: Option<StopReason>,
    /// What the station said of the stop, if anything (see [`Run::stop_detail`]).
    #[serde(default)]
    pub stop_detail: Option<String>,
    /// The raw image's size, where known.
    pub image_size: Option<ByteSize>,
    /// The file the image was imported from, where known.
    pub image_source: Option<ImageSource>,
}

impl RunFacts {
    /// A text option of the run (`operator`, `lot`).
    pub fn option_text(&self, key: &str) -> Option<&str> {
        self.options.as_ref()?.get(key)?.as_str()
    }
}

/// How a run's (or a device's) records stand: attempts by verdict, and refusals.
///
/// `passed + failed + refused + interrupted + running` is the number of records
/// (report rows): every attempt, and every refusal made before an attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Attempts (refusals before an attempt are not attempts).
    pub attempts: u64,
    /// Passed.
    pub passed: u64,
    /// Failed: the stick failed (or the station could not reach it). Refusals
    /// are not failures.
    pub failed: u64,
    /// Refused by the target guard, before an attempt or at the moment of
    /// opening: nothing was written.
    pub refused: u64,
    /// Interrupted.
    pub interrupted: u64,
    /// Still running.
    pub running: u64,
}

impl Counts {
    /// Counts a record with `verdict` once more; `attempt`: whether the record
    /// is an attempt (a refusal before an attempt is not).
    pub fn add(&mut self, verdict: ReportVerdict, attempt: bool) {
        if attempt {
            self.attempts += 1;
        }
        match verdict {
            ReportVerdict::Running => self.running += 1,
            ReportVerdict::Pass => self.passed += 1,
            ReportVerdict::Fail => self.failed += 1,
            ReportVerdict::Refused => self.refused += 1,
            ReportVerdict::Interrupted => self.interrupted += 1,
        }
    }

    /// The counts of a report's rows.
    pub fn of(rows: &[ReportRow]) -> Counts {
        let mut counts = Counts::default();
        for row in rows {
            counts.add(row.verdict, row.attempt_id.is_some());
        }
        counts
    }

    /// The number of records: `passed + failed + refused + interrupted +
    /// running`.
    pub fn records(&self) -> u64 {
        self.passed + self.failed + self.refused + self.interrupted + self.running
    }
}

/// A report row's verdict: an attempt's, or `refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportVerdict {
    /// An attempt still running.
    Running,
    /// An attempt that passed.
    Pass,
    /// An attempt that failed.
    Fail,
    /// The target guard refused the stick, before an attempt or at the
    /// moment of opening: nothing was written.
    Refused,
    /// An attempt stopped by the operator, a shutdown or a crash: says
    /// nothing about the stick.
    Interrupted,
}

impl ReportVerdict {
    /// Every value, in declaration order.
    pub const ALL: &'static [ReportVerdict] = &[
        ReportVerdict::Running,
        ReportVerdict::Pass,
        ReportVerdict::Fail,
        ReportVerdict::Refused,
        ReportVerdict::Interrupted,
    ];

    /// The stable text reports show (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            ReportVerdict::Running => "running",
            ReportVerdict::Pass => "pass",
            ReportVerdict::Fail => "fail",
            ReportVerdict::Refused => "refused",
            ReportVerdict::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for ReportVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run and how its records stand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run.
    #[serde(flatten)]
    pub run: Run,
    /// Its records by verdict.
    #[serde(flatten)]
    pub counts: Counts,
}

/// A device as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its id.
    pub id: DeviceId,
    /// Its key: its serial, or `vendor/model/bytes` when it has none.
    pub key: String,
    /// The serial, if it has one.
    pub serial: Option<String>,
    /// The vendor string.
    pub vendor: Option<String>,
    /// The model string.
    pub model: Option<String>,
    /// The capacity it last reported.
    pub capacity: ByteSize,
    /// When it was first seen.
    pub first_seen: i64,
    /// When it was last seen.
    pub last_seen: i64,
}

/// One record as a report shows it: an attempt joined with its device and run,
/// or a refusal made before any attempt (joined with its device and, if one was
/// armed, its run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The attempt; `None` for a refusal before any attempt.
    pub attempt_id: Option<AttemptId>,
    /// The refusal; `None` for an attempt.
    pub refusal_id: Option<RefusalId>,
    /// The station that made it.
    pub station_id: String,
    /// Its run; `None` for a refusal while no run was armed.
    pub run_id: Option<RunId>,
    /// The port's label.
    pub port_label: String,
    /// The port's kernel path.
    pub port_path: String,
    /// The device's key.
    pub device_key: String,
    /// The device's serial.
    pub serial: Option<String>,
    /// The device's vendor.
    pub vendor: Option<String>,
    /// The device's model.
    pub model: Option<String>,
    /// The image's name when the run started (`None` without a run).
    pub image_name: Option<String>,
    /// The image's sha256 (`None` without a run).
    pub image_sha256: Option<Sha256Digest>,
    /// When the attempt started (a refusal: when it was made).
    pub started_at: i64,
    /// When it finished (a refusal: when it was made).
    pub finished_at: Option<i64>,
    /// The verdict.
    pub verdict: ReportVerdict,
    /// The last stage reached; `None` for a refusal before any attempt.
    pub stage: Option<Stage>,
    /// The failure's stable code ([`FailReason::code`](flashrack_core::FailReason::code)),
    /// or for a refusal the guard's ([`RefusalCode`](flashrack_core::RefusalCode); an
    /// attempt refused at opening that was recorded before refusals carried
    /// their code says `refused`).
    pub reason_code: Option<String>,
    /// The failure for a person.
    pub reason_detail: Option<String>,
    /// The byte offset the failure is tied to.
    pub fail_offset: Option<u64>,
    /// Capacity reported, bytes and times, read-back digest and method (a
    /// refusal: the capacity, and nothing written).
    pub figures: AttemptFigures,
    /// What its run says about it (operator, lot, options, image size and
    /// source); empty without a run, and in data recorded before rows had it.
    #[serde(default)]
    pub run_facts: RunFacts,
}

/// A run's report: the run and a row per record (attempts and refusals), in the
/// order they were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The run and its counts.
    pub run: RunSummary,
    /// Where the run's image was downloaded from (`None`: a file or an
    /// upload, or records that do not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_provenance: Option<Provenance>,
    /// One row per record.
    pub rows: Vec<ReportRow>,
    /// What the run's image is, as inspected at import (partition table,
    /// file systems, ISO structure, OS), when the records know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<flashrack_inspect::ImageInfo>,
}

/// Where an image named by a report's rows came from: downloaded, or
/// captured from a master stick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageOrigin {
    /// The image's sha256.
    pub sha256: Sha256Digest,
    /// Its name in the records.
    pub name: String,
    /// Where it came from.
    pub provenance: Provenance,
}

/// A device's report: the device and a row per record (attempts and refusals),
/// across runs and stations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// The device.
    pub device: DeviceRecord,
    /// Its records by verdict.
    pub counts: Counts,
    /// One row per record, oldest first.
    pub rows: Vec<ReportRow>,
    /// Where the images its rows name were downloaded from (those that were),
    /// by first use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_origins: Vec<ImageOrigin>,
}

/// A lot: one arming of an image on several stations of a fleet, by its hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lot {
    /// Its id at the hub.
    pub id: i64,
    /// Its name (given by the operator, or made up by the hub).
    pub name: String,
    /// The image's sha256.
    pub image_sha256: Sha256Digest,
    /// The image's name when the lot was armed.
    pub image_name: String,
    /// The options every station's run was armed with (a JSON object).
    pub options: serde_json::Value,
    /// The stations it was armed on, in the order given.
    pub stations: Vec<String>,
    /// When it was armed.
    pub created_at: i64,
    /// When it was stopped, if it was.
    pub stopped_at: Option<i64>,
}

/// A lot's report: the lot, its runs at every station, and a row per record
/// of those runs (attempts and refusals), across stations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LotReport {
    /// The lot.
    pub lot: Lot,
    /// Its records by verdict, all stations together.
    pub counts: Counts,
    /// The runs armed under it, by station then start.
    pub runs: Vec<RunSummary>,
    /// One row per record: by station, then in the order they were made.
    pub rows: Vec<ReportRow>,
    /// Where the lot's image came from (downloaded or captured), as the
    /// stations that ran it recorded it; one entry per distinct provenance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_origins: Vec<ImageOrigin>,
}

/// The order reports list ports in: rows by letter, then by number (A2
/// before A10), then other labels by name.
pub fn port_order(label: &str) -> (u32, u32, String) {
    let mut chars = label.chars();
    if let Some(letter) = chars.next().filter(char::is_ascii_uppercase) {
        if let Ok(number) = chars.as_str().parse::<u32>() {
            return (u32::from(letter), number, String::new());
        }
    }
    (u32::MAX, u32::MAX, label.to_string())
}

impl RunReport {
    /// The rows by port ([`port_order`]: A1, A2 … A10, B1), each port's
    /// records in the order they were made: how every export of a run lists
    /// them.
    pub fn rows_by_port(&self) -> Vec<&ReportRow> {
        let mut rows: Vec<&ReportRow> = self.rows.iter().collect();
        // A stable sort keeps each port's records in the order they were made.
        rows.sort_by_key(|row| port_order(&row.port_label));
        rows
    }
}

/// Attempts and refusals in one list, in the order they were made. Each list
/// must be in that order already (by `started_at`); on the same millisecond an
/// attempt comes first.
pub fn rows_in_order(attempts: Vec<ReportRow>, refusals: Vec<ReportRow>) -> Vec<ReportRow> {
    let mut rows = Vec::with_capacity(attempts.len() + refusals.len());
    let mut refusals = refusals.into_iter().peekable();
    for attempt in attempts {
        while let Some(refusal) = refusals.next_if(|r| r.started_at < attempt.started_at) {
            rows.push(refusal);
        }
        rows.push(attempt);
    }
    rows.extend(refusals);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_listed_in_row_then_number_order() {
        let mut labels = vec!["B1", "A10", "front", "A2"];
        labels.sort_by_key(|l| port_order(l));
        assert_eq!(labels, ["A2", "A10", "B1", "front"]);
    }
}
