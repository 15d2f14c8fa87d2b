//! The values the store takes and gives back: ids, row types for writing, records
//! and summaries for reading. Timestamps are unix milliseconds (UTC).

use std::fmt;
use std::str::FromStr;

use flashrack_core::{AttemptFigures, ByteSize, GuardRefusal, Sha256Digest, Stage, Verdict};
pub use flashrack_core::{AttemptId, DeviceId, RunId, StopReason};
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

id_type!(
    /// Names a refusal: a stick the target guard refused before any attempt.
    RefusalId
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
    /// Where an attempt stands.
    AttemptState, "attempts.state" {
        /// Started and not yet finished.
        Running => "running",
        /// Finished with a pass.
        Passed => "passed",
        /// Finished with a failure of the stick (or of the station's access to it).
        Failed => "failed",
        /// Stopped by the operator, a shutdown or a crash: says nothing about the
        /// stick.
        Interrupted => "interrupted",
    }
);

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

    /// Accepts 1 to 64 characters without control characters or surrounding spaces.
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
        if text.chars().any(char::is_control) {
            return Err(err("it holds control characters"));
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

/// An image as recorded: written by [`Store::record_image`](crate::Store::record_image)
/// and read back as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRow {
    /// The sha256 of the raw image: its name in the cache.
    pub sha256: Sha256Digest,
    /// A name for people (usually the imported file's name).
    pub name: String,
    /// Raw image size.
    pub size: ByteSize,
    /// What it was imported from: `raw`, `gzip`, `xz`, `zstd`, `bzip2`, `zip`.
    pub format: String,
    /// When it was first imported.
    pub imported_at: i64,
}

/// A device's identity as seen in a port, for
/// [`Store::upsert_device`](crate::Store::upsert_device).
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

/// A device as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its id.
    pub id: DeviceId,
    /// Its key (see [`DeviceRow::key`]).
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

/// An entry for the event log, for [`Store::record_event`](crate::Store::record_event).
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
    /// The run's options as given to [`Store::start_run`](crate::Store::start_run).
    pub options: serde_json::Value,
    /// When it started.
    pub started_at: i64,
    /// When it stopped, if it has.
    pub stopped_at: Option<i64>,
    /// Why it stopped, if it has.
    pub stop_reason: Option<StopReason>,
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
}

text_enum!(
    /// A report row's verdict: an attempt's, or `refused`.
    ReportVerdict, "verdict" {
        /// An attempt still running.
        Running => "running",
        /// An attempt that passed.
        Pass => "pass",
        /// An attempt that failed.
        Fail => "fail",
        /// The target guard refused the stick, before an attempt or at the
        /// moment of opening: nothing was written.
        Refused => "refused",
        /// An attempt stopped by the operator, a shutdown or a crash: says
        /// nothing about the stick.
        Interrupted => "interrupted",
    }
);

/// A refusal to record, for [`Store::record_refusal`](crate::Store::record_refusal).
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
/// [`Store::record_progress`](crate::Store::record_progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningFigures {
    /// The attempt.
    pub attempt: AttemptId,
    /// Bytes of the image the target has acknowledged so far.
    pub bytes_written: u64,
    /// Bytes read back and checked so far.
    pub bytes_verified: u64,
}

/// A run and how its attempts stand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run.
    #[serde(flatten)]
    pub run: Run,
    /// Its attempts by state.
    #[serde(flatten)]
    pub counts: Counts,
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
}

/// A run's report: the run and a row per record (attempts and refusals), in the
/// order they were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The run and its counts.
    pub run: RunSummary,
    /// One row per record.
    pub rows: Vec<ReportRow>,
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
}

/// What [`Store::recover_interrupted`](crate::Store::recover_interrupted) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// The attempts that were left running and are now interrupted.
    pub attempts: Vec<AttemptId>,
    /// The runs that were left open and are now stopped with reason `interrupted`.
    pub runs: Vec<RunId>,
    /// The time recorded as their end: the last moment the station was known to be
    /// alive before this start-up. `None` when there was nothing to recover.
    pub presumed_crash_at: Option<i64>,
}

/// What [`Store::health`](crate::Store::health) finds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The journal mode: `wal` unless the file system refused it.
    pub journal_mode: String,
    /// The write connection's `synchronous` level: 2 is `FULL`.
    pub synchronous: i64,
    /// Whether the write connection enforces foreign keys.
    pub foreign_keys: bool,
    /// What `PRAGMA integrity_check` says: `ok`, or the problems it found.
    pub integrity: String,
    /// The newest migration applied to the file.
    pub schema_version: i64,
}
