//! Helpers shared by the store's test suites: a store on a real file in a temporary
//! directory, with a clock the test moves.
#![allow(dead_code)]

use std::path::PathBuf;

use flashrack_core::{
    AttemptFigures, Bound, ByteSize, FailReason, Failure, Sha256Digest, Stage, Verdict,
    VerifyMethod,
};
use flashrack_store::{
    AttemptId, Clock, DeviceId, DeviceRow, ImageRow, ImageSource, ManualClock, Records, RunId,
    Store, Writes,
};
use tempfile::TempDir;

/// 2025-03-01T09:30:00Z.
pub const T0: i64 = 1_740_821_400_000;

/// A store on a fresh file, its directory and its clock.
pub struct TestStore {
    pub store: Store,
    pub clock: ManualClock,
    pub dir: TempDir,
}

impl TestStore {
    pub async fn new(station: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let store = Store::open_with_clock(
            &dir.path().join("flashrack.db"),
            station,
            Clock::Manual(clock.clone()),
        )
        .await
        .unwrap();
        Self { store, clock, dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("flashrack.db")
    }

    /// Records `img` and starts a run of it without options (two commits, as a
    /// station makes them).
    pub async fn run_of(&self, img: &ImageRow) -> RunId {
        self.store
            .write(|b| Box::pin(b.record_image(img)))
            .await
            .unwrap();
        let options = serde_json::json!({});
        self.store
            .write(|b| Box::pin(b.start_run(img.sha256, &img.name, &options)))
            .await
            .unwrap()
    }

    /// Records the stick [`device`] with this serial.
    pub async fn stick(&self, serial: &str) -> DeviceId {
        let row = device(serial);
        self.store
            .write(|b| Box::pin(b.upsert_device(&row)))
            .await
            .unwrap()
    }

    /// Starts an attempt of `device` under `run` in `port` (port path `p`).
    pub async fn start(&self, run: RunId, device: DeviceId, port: &str) -> AttemptId {
        self.store
            .write(|b| Box::pin(b.start_attempt(run, device, port, "p")))
            .await
            .unwrap()
    }

    /// Opens the same file again, as a restarted station would.
    pub async fn reopen(&self, station: &str) -> Store {
        Store::open_with_clock(&self.path(), station, Clock::Manual(self.clock.clone()))
            .await
            .unwrap()
    }
}

pub fn image() -> ImageRow {
    ImageRow {
        sha256: Sha256Digest::of(b"golden image"),
        name: "debian-12.5-amd64.img".to_string(),
        size: ByteSize(629_145_600),
        format: "xz".to_string(),
        imported_at: T0 - 3_600_000,
        source: Some(ImageSource {
            file_name: "debian-12.5-amd64.img.xz".to_string(),
            sha256: Sha256Digest::of(b"golden image, compressed"),
            size: ByteSize(412_316_860),
        }),
        inspection: None,
        provenance: None,
    }
}

pub fn device(serial: &str) -> DeviceRow {
    DeviceRow {
        serial: Some(serial.to_string()),
        vendor: Some("SanDisk".to_string()),
        model: Some("Cruzer Blade".to_string()),
        capacity: ByteSize(16_008_609_792),
    }
}

pub fn pass_figures() -> AttemptFigures {
    AttemptFigures {
        capacity: ByteSize(16_008_609_792),
        bytes_written: 629_145_600,
        write_secs: 40.25,
        bytes_verified: 629_145_600,
        verify_secs: 12.5,
        read_back_sha256: Some(Sha256Digest::of(b"golden image")),
        verify_method: Some(VerifyMethod::Hash),
        bytes_written_bound: Bound::Exact,
        verified_after_reset: false,
        bytes_skipped: 0,
        sample: None,
    }
}

pub fn fail(reason: FailReason, stage: Stage) -> Verdict {
    Verdict::Fail(Failure { reason, stage })
}
