//! The fleet protocol: what a station sends its hub, and what it gets back.
//!
//! A lab with several duplication stations runs one hub. Each station's SQLite
//! records stay the durable truth of what it did; every record it writes also
//! enters a local outbox, in the same transaction, with a sequence number, and
//! a shipper sends the outbox to the hub in order. This crate is the wire
//! format of that exchange and of the live view and the hub's orders. It does
//! no I/O and knows no database and no HTTP client: the station's store fills
//! the outbox with these values, the hub applies them to PostgreSQL.
//!
//! Layout:
//! - [`FleetRecord`] and its rows ([`ImageRecord`], [`DeviceRecord`],
//!   [`RunRecord`], [`AttemptRecord`], [`RefusalRecord`], [`EventRecord`]):
//!   what the outbox holds;
//! - [`RecordBatch`] / [`BatchAck`]: a shipment and the hub's answer;
//! - [`LiveReport`]: the station's rack as it is now, for the hub's live view;
//! - [`Orders`] / [`RunOrder`]: what the hub wants a station to run.
//!
//! **Shipping rows, not changes.** A record is the whole row as it is after a
//! write (an attempt with its stage, verdict and figures so far), so applying
//! one is an upsert: the hub keeps, for each row, the version with the highest
//! sequence number. A batch replayed after a lost acknowledgement, or batches
//! applied out of order, leave the hub's copy as it would have been; nothing is
//! counted twice. Events are appended once per (station, sequence).
//!
//! Station-local ids ([`RunId`], [`AttemptId`], [`RefusalId`], event ids) are
//! the station's own; the hub keys them by station. Devices are keyed by their
//! [`key`](DeviceRecord::key) (serial, or vendor/model/size) across stations,
//! so a stick written at one station and re-tested at another has one history.
//! Times are unix milliseconds (UTC) from the station's clock.
#![deny(missing_docs)]

use flashrack_core::{
    AttemptFigures, AttemptId, AttemptState, GuardRefusal, Provenance, RefusalId, RunId,
    Sha256Digest, Stage, StopReason, Verdict,
};
use serde::{Deserialize, Serialize};

/// The protocol's version: a hub refuses batches of another major version.
pub const PROTOCOL_VERSION: u32 = 1;

/// The key of a run's options that holds the hub's order id (an integer)
/// when the run was armed under a [`RunOrder`]: the hub reads it to put the
/// run in its order's lot.
pub const ORDER_ID_OPTION: &str = "order_id";

/// Request paths on the hub, under its base URL.
pub mod paths {
    /// `POST` a [`RecordBatch`](super::RecordBatch); answered with a
    /// [`BatchAck`](super::BatchAck).
    pub const RECORDS: &str = "/api/v1/fleet/records";
    /// `POST` a [`LiveReport`](super::LiveReport); answered with the station's
    /// [`Orders`](super::Orders).
    pub const LIVE: &str = "/api/v1/fleet/live";
    /// `GET` the station's [`Orders`](super::Orders); `?after=<version>` waits
    /// (up to `wait` seconds) for a version newer than the one the station has.
    pub const ORDERS: &str = "/api/v1/fleet/orders";
    /// `GET /api/v1/fleet/images/<sha256>`: an image's raw bytes, with HTTP
    /// range requests, for a station to fetch an image it lacks.
    pub const IMAGES: &str = "/api/v1/fleet/images";
}

/// One entry of a station's outbox: a record and its place in the station's
/// sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The station's sequence number: gap-free, increasing, assigned in the
    /// transaction that wrote the record.
    pub seq: u64,
    /// When the record was written, by the station's clock.
    pub at: i64,
    /// The record.
    pub record: FleetRecord,
}

/// A record a station ships: the whole row after a write, or an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FleetRecord {
    /// An image the station recorded.
    Image(ImageRecord),
    /// A device (stick) as the station last saw it.
    Device(DeviceRecord),
    /// A run.
    Run(RunRecord),
    /// An attempt.
    Attempt(AttemptRecord),
    /// A guard refusal made before any attempt.
    Refusal(RefusalRecord),
    /// An entry of the event log.
    Event(EventRecord),
}

impl FleetRecord {
    /// A short name of the record's kind (`image`, `attempt` …), for logs and
    /// counters.
    pub fn kind(&self) -> &'static str {
        match self {
            FleetRecord::Image(_) => "image",
            FleetRecord::Device(_) => "device",
            FleetRecord::Run(_) => "run",
            FleetRecord::Attempt(_) => "attempt",
            FleetRecord::Refusal(_) => "refusal",
            FleetRecord::Event(_) => "event",
        }
    }

    /// The record's identity within its kind: an image's sha256, a device's
    /// key, the station's id of a run, attempt, refusal or event (zero-padded,
    /// so that the keys' text order is the ids' order). A newer version of a
    /// row has the same kind and key.
    pub fn key(&self) -> String {
        match self {
            FleetRecord::Image(r) => r.sha256.to_hex(),
            FleetRecord::Device(r) => r.key.clone(),
            FleetRecord::Run(r) => format!("{:020}", r.id.0),
            FleetRecord::Attempt(r) => format!("{:020}", r.id.0),
            FleetRecord::Refusal(r) => format!("{:020}", r.id.0),
            FleetRecord::Event(r) => format!("{:020}", r.id),
        }
    }
}

/// An image as a station recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The sha256 of its raw bytes: its name everywhere.
    pub sha256: Sha256Digest,
    /// Its name at the station.
    pub name: String,
    /// Raw size in bytes.
    pub size: u64,
    /// What it was imported from (`raw`, `gzip`, `xz` …); `pending` for a
    /// run's provisional image (a flash that writes while it imports, before
    /// the import has named the image).
    pub format: String,
    /// When the station imported it.
    pub imported_at: i64,
    /// Where it came from, when the station knows: a download's URL,
    /// validators, digest source and signer, or the master stick it was
    /// captured from. Absent for a file or an upload (and from stations older
    /// than this field: a hub reads a record without it as `None`).
    /// Boxed: most images have none, and the record enum stays small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Box<Provenance>>,
    /// The station removed the row: a run's provisional image, once the
    /// import named the real image and the run was moved onto it. The record
    /// is the row's last version (a tombstone): the hub keeps it marked as
    /// removed and never lists it among the station's images.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

/// A stick as a station last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its key: the serial, or vendor/model/size when it has none. The same
    /// stick has the same key at every station.
    pub key: String,
    /// Serial number.
    pub serial: Option<String>,
    /// Vendor.
    pub vendor: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Reported capacity in bytes.
    pub capacity: u64,
    /// First seen at this station.
    pub first_seen: i64,
    /// Last seen at this station.
    pub last_seen: i64,
}

/// A run, as it stands after the write that shipped it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The station's run id.
    pub id: RunId,
    /// The image's sha256.
    pub image_sha256: Sha256Digest,
    /// The image's name when the run started.
    pub image_name: String,
    /// The run's options (a JSON object: verify mode, eject on pass, target
    /// count, and the hub's order id under [`ORDER_ID_OPTION`] when the hub
    /// armed it).
    pub options: serde_json::Value,
    /// When it started.
    pub started_at: i64,
    /// When it stopped, if it has.
    pub stopped_at: Option<i64>,
    /// Why it stopped, if it has.
    pub stop_reason: Option<StopReason>,
    /// What the station said of the stop beside its reason (the source's
    /// failure with its causes, the signal, the operator's note), if
    /// anything. Absent from a station that does not record it (an older
    /// one), and ignored by a hub that does not store it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_detail: Option<String>,
}

/// An attempt, as it stands after the write that shipped it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The station's attempt id.
    pub id: AttemptId,
    /// Its run.
    pub run_id: RunId,
    /// The device's key.
    pub device_key: String,
    /// The port's label.
    pub port_label: String,
    /// The port's kernel path (empty when unknown).
    pub port_path: String,
    /// When it started.
    pub started_at: i64,
    /// When it finished, if it has.
    pub finished_at: Option<i64>,
    /// Where it stands.
    pub state: AttemptState,
    /// The last stage reached.
    pub stage: Stage,
    /// The verdict, once finished.
    pub verdict: Option<Verdict>,
    /// The failure in words as the station recorded them (which may say more
    /// than the verdict's reason: an attempt a crash interrupted names the
    /// stage it was in), so that the hub's reports read as the station's do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_detail: Option<String>,
    /// Its figures so far.
    pub figures: AttemptFigures,
}

/// A guard refusal made before any attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalRecord {
    /// The station's refusal id.
    pub id: RefusalId,
    /// When.
    pub at: i64,
    /// The run armed then, if any.
    pub run_id: Option<RunId>,
    /// The device's key.
    pub device_key: String,
    /// The port's label.
    pub port_label: String,
    /// The port's kernel path (empty when unknown).
    pub port_path: String,
    /// The capacity the device reported.
    pub capacity: u64,
    /// The guard's code and sentence.
    pub refusal: GuardRefusal,
}

/// An entry of a station's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The station's event id.
    pub id: i64,
    /// When.
    pub at: i64,
    /// What kind of event (`device_added`, `attempt_finished` …).
    pub kind: String,
    /// The port it concerns.
    pub port_label: Option<String>,
    /// The device it concerns, by key.
    pub device_key: Option<String>,
    /// The run it concerns.
    pub run_id: Option<RunId>,
    /// The attempt it concerns.
    pub attempt_id: Option<AttemptId>,
    /// What else is worth knowing (a JSON object).
    pub detail: serde_json::Value,
}

/// A shipment of a station's outbox: consecutive entries, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordBatch {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol: u32,
    /// The sending station (must be the station its token belongs to).
    pub station_id: String,
    /// The entries, in sequence order.
    pub entries: Vec<OutboxEntry>,
    /// How many entries the station still has to ship after this batch.
    pub backlog: u64,
    /// The sending instance of the station ([`LiveReport::instance`]): while
    /// another instance of the station id holds its live view, the hub
    /// refuses the batch, so that a copy of a station's data directory
    /// started beside it never writes its records into the station's
    /// history. `None` from a station older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The hub's answer to a [`RecordBatch`]: everything up to `acked_through` is
/// durably in the hub's database (the station may mark it shipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    /// The highest sequence number of the batch, now stored.
    pub acked_through: u64,
    /// Entries applied by this batch.
    pub applied: u64,
    /// Entries the hub had already (a replay): not applied again.
    pub duplicates: u64,
}

/// A station's rack as it is now, for the hub's live view. Sent when it
/// changes (at most a few times a second) and every few seconds regardless,
/// so that the hub can tell a quiet station from a silent one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveReport {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol: u32,
    /// The sending station.
    pub station_id: String,
    /// Which station reports under `station_id`: an id the station makes
    /// once for its data directory and keeps (see the station's
    /// `fleet::instance_id`). The hub's live view of a station is one
    /// instance's: while one reports, a second instance of the id (another
    /// station configured with it) is refused with a 409, as its records
    /// are. A restarted station keeps its instance. Absent from a station
    /// older than this field: the hub cannot tell two such stations apart,
    /// and one that names its instance replaces one that does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// When the station made the report, by its clock.
    pub sent_at: i64,
    /// The station's snapshot (ports, run), as its own API serves it.
    pub snapshot: serde_json::Value,
    /// Outbox entries not yet shipped.
    pub backlog: u64,
    /// The order the station is following, and how far it got.
    pub order: Option<OrderProgress>,
}

/// How a station stands with the hub's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderProgress {
    /// The order.
    pub order_id: i64,
    /// What the station is doing about it.
    pub state: OrderState,
    /// Words for the operator (the error, how far a fetch got).
    pub detail: Option<String>,
}

/// What a station is doing about an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Fetching the image from the hub.
    Fetching,
    /// Not followed yet, and not failed: a run the station's operator armed
    /// is in the way (an order never stops or replaces it). The station
    /// follows the order once that run stops; the detail says which run.
    Waiting,
    /// The run is armed under the order.
    Armed,
    /// The run under the order stopped (reached its target, stopped at the
    /// station or by the hub).
    Stopped,
    /// The order cannot be followed (the image does not verify, the station
    /// refuses the options …); see the detail.
    Failed,
}

/// What the hub wants a station to do, versioned so that a station can wait
/// for a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Orders {
    /// Increases with every change of the station's orders.
    pub version: i64,
    /// The run the station should have armed, if any.
    pub run: Option<RunOrder>,
}

/// A run the hub wants armed at a station.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOrder {
    /// The order's id at the hub (one per station and arming).
    pub order_id: i64,
    /// The lot it belongs to: one arming on several stations.
    pub lot: String,
    /// The image, by content.
    pub image_sha256: Sha256Digest,
    /// Its name at the hub.
    pub image_name: String,
    /// Its raw size.
    pub image_size: u64,
    /// The run's options (verify mode, eject on pass, target count).
    pub options: serde_json::Value,
    /// `true` while the hub wants the run armed; `false` once it asked for a
    /// stop (the station stops a run it armed under this order).
    pub armed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashrack_core::{FailReason, Failure};

    #[test]
    fn a_record_serializes_with_its_kind_and_reads_back() {
        let record = FleetRecord::Attempt(AttemptRecord {
            id: AttemptId(7),
            run_id: RunId(2),
            device_key: "SER1".into(),
            port_label: "A1".into(),
            port_path: "pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0".into(),
            started_at: 1_000,
            finished_at: Some(2_000),
            state: AttemptState::Failed,
            stage: Stage::Verifying,
            verdict: Some(Verdict::Fail(Failure {
                reason: FailReason::VerifyMismatch { offset: 4096 },
                stage: Stage::Verifying,
            })),
            reason_detail: Some("verify mismatch at byte 4096".into()),
            figures: AttemptFigures::default(),
        });
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["type"], "attempt");
        assert_eq!(json["state"], "failed");
        assert_eq!(json["verdict"]["reason"], "verify_mismatch");
        assert_eq!(serde_json::from_value::<FleetRecord>(json).unwrap(), record);
        assert_eq!(record.kind(), "attempt");
    }

    #[test]
    fn an_unknown_record_type_is_an_error_not_a_guess() {
        let json = serde_json::json!({ "type": "bogus", "id": 1 });
        assert!(serde_json::from_value::<FleetRecord>(json).is_err());
    }
}
