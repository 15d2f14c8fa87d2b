//! Helpers shared by the store's test suites: a store on a real file in a temporary
//! directory, with a clock the test moves.
#![allow(dead_code)]

use std::path::PathBuf;

use flashrack_core::{
    AttemptFigures, Bound, ByteSize, FailReason, Failure, Sha256Digest, Stage, Verdict,
    VerifyMethod,
};
use flashrack_store::{Clock, DeviceRow, ImageRow, ManualClock, Store};
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
    }
}

pub fn fail(reason: FailReason, stage: Stage) -> Verdict {
    Verdict::Fail(Failure { reason, stage })
}
