//! The values the store takes and gives back: ids, row types for writing, records
//! and summaries for reading, whichever database is behind it. The report data
//! (runs, devices and their records as reports show them) is
//! `flashrack-report`'s, re-exported here. Timestamps are unix milliseconds (UTC).

use std::fmt;
use std::str::FromStr;

use flashrack_core::{
    AttemptFigures, ByteSize, GuardRefusal, Provenance, Sha256Digest, Stage, Verdict,
};
pub use flashrack_core::{AttemptId, AttemptState, DeviceId, RefusalId, RunId, StopReason};
pub use flashrack_report::{
    Counts, DeviceRecord, DeviceReport, ImageSource, ReportRow, ReportVerdict, Run, RunFacts,
    RunReport, RunSummary,
};
use serde::{Deserialize, Serialize};

use crate::StoreError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// Names an entry of the event log.
    EventId
);

/// Defines a closed set of states stored as text, with `as_str` and parsing.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $column:literal { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stable text stored in the database and shown in reports.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(text: &str) -> Result<Self, StoreError> {
                match text {
                    $($text => Ok($name::$variant),)*
                    _ => Err(StoreError::BadValue { column: $column, value: text.to_string() }),
                }
            }
        }
    };
}

text_enum!(
    /// What an entry of the event log is about.
    EventKind, "events.kind" {
        /// The station opened the store (start-up).
        StationStarted => "station_started",
        /// An image was recorded.
        ImageRecorded => "image_recorded",
        /// A run started.
        RunStarted => "run_started",
        /// A run stopped.
        RunStopped => "run_stopped",
        /// A device appeared in a port.
        DeviceAdded => "device_added",
        /// A device left a port.
        DeviceRemoved => "device_removed",
        /// A port changed state in some other way.
        PortChanged => "port_changed",
        /// The target guard refused a device; the detail holds its reason (and the
        /// refusal's id: the refusal itself is in the refusals table).
        GuardRefused => "guard_refused",
        /// An attempt started.
        AttemptStarted => "attempt_started",
        /// An attempt entered a stage.
        StageChanged => "stage_changed",
        /// An attempt finished with a verdict.
        AttemptFinished => "attempt_finished",
        /// An attempt left running by a crash was marked interrupted.
        AttemptInterrupted => "attempt_interrupted",
        /// The operator did something (armed a run, asked for a device, …); the detail
        /// says what.
        OperatorAction => "operator_action",
        /// A run was asked for and not armed: inspection says its image would
        /// not boot written raw (a non-hybrid installer ISO) and the run was not
        /// forced. The detail holds the image, the reason, the advice given and
        /// the options asked for.
        RunRefused => "run_refused",
    }
);

/// A station id: what every run, attempt and event is tagged with, so that several
/// stations can share one database.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StationId(String);

impl StationId {
    /// The longest id accepted.
    pub const MAX_LEN: usize = 64;

    /// Accepts 1 to 64 characters without control characters, invisible
    /// formatting characters or surrounding spaces.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let err = |why| StoreError::InvalidStationId {
            got: text.chars().take(80).collect(),
            why,
        };
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        if text.chars().count() > Self::MAX_LEN {
            return Err(err("it is longer than 64 characters"));
        }
        if text.trim() != text {
            return Err(err("it starts or ends with white space"));
        }
        if flashrack_core::has_unprintable(text) {
            return Err(err(
                "it holds control characters or invisible formatting characters (such as U+202E)",
            ));
        }
        Ok(Self(text.to_string()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `format` of a run's provisional image row: the run writes while its
/// image is being imported, and the row's digest is a placeholder (the digest
/// of no image) until the import names the image. A row that keeps it was
/// never imported (the import failed, or the station stopped first).
pub const PENDING_IMAGE_FORMAT: &str = "pending";

/// An image as recorded: written by [`Writes::record_image`](crate::Writes::record_image)
/// and read back as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRow {
    /// The sha256 of the raw image: its name in the cache.
    pub sha256: Sha256Digest,
    /// A name for people (usually the imported file's name).
    pub name: String,
    /// Raw image size.
    pub size: ByteSize,
    /// What it was imported from: `raw`, `gzip`, `xz`, `zstd`, `bzip2`, `zip`;
    /// [`PENDING_IMAGE_FORMAT`] for a run's provisional row while (or after)
    /// the import it followed did not end.
    pub format: String,
    /// When it was first imported.
    pub imported_at: i64,
    /// The file it was imported from (name, sha256 and size as given), where
    /// known; `None` for images recorded before the records kept it.
    pub source: Option<ImageSource>,
    /// What the image is, inspected at import (flashrack-inspect's
    /// `ImageInfo` as JSON text); `None` when unknown. A later write of the
    /// same image without one keeps the one recorded.
    pub inspection: Option<String>,
    /// Where it was downloaded from (`None`: a file or an upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// A device's identity as seen in a port, for
/// [`Writes::upsert_device`](crate::Writes::upsert_device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRow {
    /// The serial (udev `ID_SERIAL_SHORT`), if the stick has one.
    pub serial: Option<String>,
    /// The vendor string.
    pub vendor: Option<String>,
    /// The model string.
    pub model: Option<String>,
    /// The capacity the device reports.
    pub capacity: ByteSize,
}

impl DeviceRow {
    /// The key a device is recorded under: its serial, or `vendor/model/bytes` when
    /// it has none (`?` for a missing vendor or model). Blank strings count as
    /// missing. Sticks without a serial that share vendor, model and size share a
    /// key, and so a history: there is nothing else to tell them apart by.
    pub fn key(&self) -> String {
        match non_blank(&self.serial) {
            Some(serial) => serial.to_string(),
            None => format!(
                "{}/{}/{}",
                non_blank(&self.vendor).unwrap_or("?"),
                non_blank(&self.model).unwrap_or("?"),
                self.capacity.bytes()
            ),
        }
    }
}

pub(crate) fn non_blank(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// An entry for the event log, for [`Writes::record_event`](crate::Writes::record_event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    /// What it is about.
    pub kind: EventKind,
    /// The port, if it concerns one.
    pub port_label: Option<String>,
    /// The device, if it concerns one.
    pub device_id: Option<DeviceId>,
    /// The run, if it concerns one.
    pub run_id: Option<RunId>,
    /// The attempt, if it concerns one.
    pub attempt_id: Option<AttemptId>,
    /// Anything else worth knowing, as a JSON value (an object by convention).
    pub detail: serde_json::Value,
}

impl EventRow {
    /// An event of `kind` with `detail` and no references.
    pub fn new(kind: EventKind, detail: serde_json::Value) -> Self {
        Self {
            kind,
            port_label: None,
            device_id: None,
            run_id: None,
            attempt_id: None,
            detail,
        }
    }
}

/// An entry of the event log as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its id: events are numbered in the order they were recorded.
    pub id: EventId,
    /// The station that recorded it.
    pub station_id: String,
    /// When.
    pub at: i64,
    /// What it says.
    #[serde(flatten)]
    pub row: EventRow,
}

/// A refusal to record, for [`Writes::record_refusal`](crate::Writes::record_refusal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalRow {
    /// The run that was armed, if any.
    pub run_id: Option<RunId>,
    /// The device.
    pub device_id: DeviceId,
    /// The port's label.
    pub port_label: String,
    /// The port's kernel path (udev `ID_PATH`); empty when unknown.
    pub port_path: String,
    /// The guard's reason: its code and its sentence.
    pub refusal: GuardRefusal,
}

/// How far a running attempt has got, for
/// [`Writes::record_progress`](crate::Writes::record_progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningFigures {
    /// The attempt.
    pub attempt: AttemptId,
    /// Bytes of the image the target has acknowledged so far.
    pub bytes_written: u64,
    /// Bytes read back and checked so far.
    pub bytes_verified: u64,
}

/// An attempt as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Its id.
    pub id: AttemptId,
    /// The station that made it.
    pub station_id: String,
    /// Its run.
    pub run_id: RunId,
    /// Its device.
    pub device_id: DeviceId,
    /// The port's label.
    pub port_label: String,
    /// The port's kernel path (udev `ID_PATH`).
    pub port_path: String,
    /// When it started.
    pub started_at: i64,
    /// When it finished, if it has.
    pub finished_at: Option<i64>,
    /// Where it stands.
    pub state: AttemptState,
    /// The last stage it reached (the failing stage for a failure).
    pub stage: Stage,
    /// The verdict, once finished. Interrupted attempts read back as a failure with
    /// reason `interrupted`.
    pub verdict: Option<Verdict>,
    /// Its figures (zero while running).
    pub figures: AttemptFigures,
}

/// What [`Records::recover_interrupted`](crate::Records::recover_interrupted) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// The attempts that were left running and are now interrupted.
    pub attempts: Vec<AttemptId>,
    /// The runs that were left open and are now stopped with reason `interrupted`.
    pub runs: Vec<RunId>,
    /// The time recorded as their end: the last moment the station that left
    /// them was known to be alive before this start-up (the latest of those
    /// when work of more than one station id was left). `None` when there was
    /// nothing to recover.
    pub presumed_crash_at: Option<i64>,
}

/// A device with how its attempts stand, for a list of devices
/// ([`Records::device_summaries`](crate::Records::device_summaries)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// The device.
    #[serde(flatten)]
    pub device: DeviceRecord,
    /// How many attempts were made on it, across runs and stations.
    pub attempts: u64,
    /// Its latest attempt's verdict (`None` before any attempt).
    pub last_verdict: Option<ReportVerdict>,
    /// That attempt's reason code, for a failure.
    pub last_reason_code: Option<String>,
    /// The port of that attempt.
    pub last_port: Option<String>,
    /// When that attempt started.
    pub last_at: Option<i64>,
}

/// A port's latest verdicts, and whether they point at the port rather than
/// at the sticks ([`PortHistory::of`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortHistory {
    /// The port's label.
    pub port_label: String,
    /// Its latest finished attempts, newest first.
    pub verdicts: Vec<ReportRow>,
    /// Whether the port is suspect: its latest [`PortHistory::SUSPECT_AFTER`]
    /// verdicts about sticks (passes and failures; refusals and interruptions
    /// say nothing about a stick and are skipped) are all failures, of at
    /// least two different sticks. One bad stick failing again is the stick;
    /// different sticks failing one after the other in the same port, with no
    /// pass between, is the port, its cable or its hub.
    pub check_port: bool,
}

impl PortHistory {
    /// How many failures in a row, of different sticks, make a port suspect.
    pub const SUSPECT_AFTER: usize = 3;

    /// Groups rows (any order) by port, newest first within a port, keeping at
    /// most `per_port` rows a port; ports in label order.
    pub fn of(rows: Vec<ReportRow>, per_port: usize) -> Vec<PortHistory> {
        let mut ports: std::collections::BTreeMap<String, Vec<ReportRow>> = Default::default();
        for row in rows {
            ports.entry(row.port_label.clone()).or_default().push(row);
        }
        ports
            .into_iter()
            .map(|(port_label, mut verdicts)| {
                verdicts.sort_by(|a, b| {
                    (b.started_at, b.attempt_id.map(|id| id.0))
                        .cmp(&(a.started_at, a.attempt_id.map(|id| id.0)))
                });
                let check_port = Self::suspect(&verdicts);
                verdicts.truncate(per_port);
                PortHistory {
                    port_label,
                    verdicts,
                    check_port,
                }
            })
            .collect()
    }

    /// The rule of [`PortHistory::check_port`], on rows newest first.
    fn suspect(newest_first: &[ReportRow]) -> bool {
        let latest: Vec<&ReportRow> = newest_first
            .iter()
            .filter(|row| matches!(row.verdict, ReportVerdict::Pass | ReportVerdict::Fail))
            .take(Self::SUSPECT_AFTER)
            .collect();
        let sticks: std::collections::BTreeSet<&str> =
            latest.iter().map(|row| row.device_key.as_str()).collect();
        latest.len() == Self::SUSPECT_AFTER
            && latest.iter().all(|row| row.verdict == ReportVerdict::Fail)
            && sticks.len() >= 2
    }
}
