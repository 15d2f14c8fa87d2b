//! The station's records in the SQLite store: the [`Journal`] the station writes
//! through and the [`Reports`] the web side reads, over one [`Store`].
//!
//! This is the only place where station, web and store meet, so none of them
//! depends on another.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use async_trait::async_trait;
use flashrack_core::{AttemptFigures, ByteSize, Stage, Verdict};
use flashrack_hotplug::DeviceIdentity;
use flashrack_image::ImageCache;
use flashrack_report as report;
use flashrack_station::{
    AttemptSoFar, AttemptStart, Journal, JournalError, JournalEvent, RunStart,
};
use flashrack_store::{
    AttemptId, DeviceId, DeviceRow, EventKind, EventRow, ImageRow, Records, RefusalRow, RunId,
    RunningFigures, StopReason, Store, Writes,
};
use flashrack_web::{ReportFormat, Reports};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::json;

/// The store, seen as the station's journal and the web's reports.
#[derive(Clone)]
pub struct StoreRecords {
    store: Store,
    images: ImageCache,
}

/// The database file in a data directory.
pub fn database_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("flashrack.db")
}

/// Every store this process opened for writing, to be closed before it exits.
static OPENED: Mutex<Vec<Store>> = Mutex::new(Vec::new());

/// Checkpoints and closes every store this process opened for writing, so that
/// the records are in the database file itself (a backup that copies only
/// `flashrack.db` has them all) and SQLite removes its write-ahead log. Called
/// once a command is done, whether it succeeded or not.
pub async fn close_all() {
    let stores: Vec<Store> = std::mem::take(&mut *OPENED.lock().unwrap_or_else(|p| p.into_inner()));
    for store in stores {
        store.close().await;
    }
}

impl StoreRecords {
    /// Opens the database in `data_dir` and accounts for attempts a crash left
    /// unfinished (they become `interrupted`).
    pub async fn open(data_dir: &Path, station_id: &str, images: ImageCache) -> Result<Self> {
        let path = database_path(data_dir);
        let store = Store::open(&path, station_id)
            .await
            .with_context(|| format!("cannot open the records in {}", path.display()))?;
        OPENED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(store.clone());
        let recovery = store
            .recover_interrupted()
            .await
            .context("cannot recover unfinished attempts")?;
        if !recovery.attempts.is_empty() || !recovery.runs.is_empty() {
            tracing::warn!(
                attempts = recovery.attempts.len(),
                runs = recovery.runs.len(),
                "records of an unclean stop: unfinished attempts are now interrupted"
            );
            eprintln!(
                "recovered from an unclean stop: {} attempt(s) marked interrupted, {} run(s) stopped",
                recovery.attempts.len(),
                recovery.runs.len()
            );
        }
        Ok(Self { store, images })
    }

    /// The store itself.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Makes sure the store knows the image (its format and import time come
    /// from the cache).
    pub async fn record_image(
        &self,
        sha256: flashrack_core::Sha256Digest,
        name: &str,
        size: u64,
    ) -> Result<(), JournalError> {
        if self
            .store
            .image(sha256)
            .await
            .map_err(journal_error)?
            .is_some()
        {
            return Ok(());
        }
        let cached = self.images.get(&sha256).ok().flatten();
        let row = ImageRow {
            sha256,
            name: name.to_string(),
            size: ByteSize(size),
            format: cached
                .as_ref()
                .map_or("raw", |c| c.meta.format.name())
                .to_string(),
            imported_at: cached
                .as_ref()
                .map_or_else(|| self.store.now(), |c| c.meta.imported_at as i64 * 1000),
        };
        self.store
            .write(|batch| Box::pin(batch.record_image(&row)))
            .await
            .map_err(journal_error)
    }
}

fn journal_error(error: flashrack_store::StoreError) -> JournalError {
    JournalError(error.to_string())
}

#[async_trait]
impl Journal for StoreRecords {
    async fn run_started(&self, run: &RunStart) -> Result<RunId, JournalError> {
        self.record_image(run.image_sha256, &run.image_name, run.image_size)
            .await?;
        let options =
            serde_json::to_value(&run.options).map_err(|e| JournalError(e.to_string()))?;
        let id = self
            .store
            .write(|batch| Box::pin(batch.start_run(run.image_sha256, &run.image_name, &options)))
            .await
            .map_err(journal_error)?;
        Ok(id)
    }

    async fn run_stopped(
        &self,
        run_id: RunId,
        reason: StopReason,
        note: Option<&str>,
    ) -> Result<(), JournalError> {
        self.store
            .write(|batch| Box::pin(batch.stop_run(run_id, reason)))
            .await
            .map_err(journal_error)?;
        let mut row = EventRow::new(
            EventKind::OperatorAction,
            json!({ "action": "run_stopped", "reason": reason, "note": note }),
        );
        row.run_id = Some(run_id);
        self.store
            .write(|batch| Box::pin(batch.record_event(&row)))
            .await
            .map_err(journal_error)?;
        Ok(())
    }

    async fn device_seen(&self, identity: &DeviceIdentity) -> Result<DeviceId, JournalError> {
        let row = DeviceRow {
            serial: identity.serial.clone(),
            vendor: identity.vendor.clone(),
            model: identity.model.clone(),
            capacity: ByteSize(identity.capacity),
        };
        let id = self
            .store
            .write(|batch| Box::pin(batch.upsert_device(&row)))
            .await
            .map_err(journal_error)?;
        Ok(id)
    }

    async fn attempt_started(&self, attempt: &AttemptStart) -> Result<AttemptId, JournalError> {
        self.store
            .write(|batch| {
                Box::pin(batch.start_attempt(
                    attempt.run_id,
                    attempt.device_id,
                    &attempt.port_label,
                    attempt.port_path.as_deref().unwrap_or(""),
                ))
            })
            .await
            .map_err(journal_error)
    }

    async fn attempt_stage(&self, attempt_id: AttemptId, stage: Stage) -> Result<(), JournalError> {
        self.store
            .write(|batch| Box::pin(batch.attempt_stage(attempt_id, stage)))
            .await
            .map_err(journal_error)
    }

    async fn attempt_finished(
        &self,
        attempt_id: AttemptId,
        verdict: &Verdict,
        figures: &AttemptFigures,
    ) -> Result<(), JournalError> {
        self.store
            .write(|batch| Box::pin(batch.finish_attempt(attempt_id, verdict, figures)))
            .await
            .map_err(journal_error)
    }

    async fn event(&self, event: &JournalEvent) -> Result<(), JournalError> {
        let (kind, port) = match event {
            JournalEvent::DeviceAdded { port, .. } => (EventKind::DeviceAdded, Some(port)),
            JournalEvent::DeviceRemoved { port, .. } => (EventKind::DeviceRemoved, Some(port)),
            // A refusal is a record of its own (it logs its event with it).
            JournalEvent::GuardRefused {
                port,
                port_path,
                device_id,
                run_id,
                refusal,
                ..
            } => {
                let row = RefusalRow {
                    run_id: *run_id,
                    device_id: *device_id,
                    port_label: port.clone(),
                    port_path: port_path.clone().unwrap_or_default(),
                    refusal: refusal.to_record(),
                };
                self.store
                    .write(|batch| Box::pin(batch.record_refusal(&row)))
                    .await
                    .map_err(journal_error)?;
                return Ok(());
            }
            JournalEvent::OperatorAction { .. } => (EventKind::OperatorAction, None),
            JournalEvent::Ejected { port, .. } => (EventKind::PortChanged, Some(port)),
        };
        let mut row = EventRow::new(kind, serde_json::to_value(event).unwrap_or_default());
        row.port_label = port.cloned();
        self.store
            .write(|batch| Box::pin(batch.record_event(&row)))
            .await
            .map_err(journal_error)?;
        Ok(())
    }

    async fn heartbeat(&self, running: &[AttemptSoFar]) -> Result<(), JournalError> {
        let running: Vec<RunningFigures> = running
            .iter()
            .map(|so_far| RunningFigures {
                attempt: so_far.attempt_id,
                bytes_written: so_far.bytes_written,
                bytes_verified: so_far.bytes_verified,
            })
            .collect();
        self.store
            .write(|batch| Box::pin(batch.record_progress(&running)))
            .await
            .map_err(journal_error)
    }
}

impl Reports for StoreRecords {
    fn runs(&self) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        async move {
            let runs = self.store.list_runs().await.map_err(|e| e.to_string())?;
            serde_json::to_value(runs).map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn run_report(
        &self,
        run_id: RunId,
        format: ReportFormat,
    ) -> BoxFuture<'_, Result<Option<(String, String)>, String>> {
        async move {
            let Some(run) = self
                .store
                .run_report(run_id)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            Ok(Some(match format {
                ReportFormat::Csv => ("text/csv; charset=utf-8".into(), report::csv(&run.rows)),
                ReportFormat::Json => ("application/json".into(), report::run_json(&run)),
                ReportFormat::Html => (
                    "text/html; charset=utf-8".into(),
                    report::run_html(&run, self.store.now()),
                ),
            }))
        }
        .boxed()
    }

    fn device_report(
        &self,
        key: &str,
        format: ReportFormat,
    ) -> BoxFuture<'_, Result<Option<(String, String)>, String>> {
        let key = key.to_string();
        async move {
            let Some(device) = self
                .store
                .device_report(&key)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            Ok(Some(match format {
                ReportFormat::Csv => ("text/csv; charset=utf-8".into(), report::csv(&device.rows)),
                ReportFormat::Json => ("application/json".into(), report::device_json(&device)),
                ReportFormat::Html => (
                    "text/html; charset=utf-8".into(),
                    report::device_html(&device, self.store.now()),
                ),
            }))
        }
        .boxed()
    }

    fn devices(&self) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        async move {
            let devices = self.store.devices(1000).await.map_err(|e| e.to_string())?;
            serde_json::to_value(devices).map_err(|e| e.to_string())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashrack_core::{RefusalCode, Sha256Digest};
    use flashrack_guard::Refusal;
    use flashrack_station::model::RunOptions;

    #[tokio::test]
    async fn a_stick_refused_three_times_is_in_its_device_report_three_times() {
        let dir = tempfile::tempdir().unwrap();
        let images = ImageCache::open(dir.path().join("cache")).unwrap();
        let records = StoreRecords::open(dir.path(), "rack-1", images)
            .await
            .unwrap();
        let run = records
            .run_started(&RunStart {
                image_sha256: Sha256Digest::of(b"image"),
                image_name: "image.img".into(),
                image_size: 1 << 20,
                options: RunOptions::default(),
            })
            .await
            .unwrap();
        let identity = DeviceIdentity {
            serial: Some("HUGE-1".into()),
            vendor: Some("Seagate".into()),
            model: Some("Expansion".into()),
            capacity: 2_000_000_000_000,
        };
        let device_id = records.device_seen(&identity).await.unwrap();
        for _ in 0..3 {
            records
                .event(&JournalEvent::GuardRefused {
                    port: "A1".into(),
                    port_path: Some("pci-0000:00:14.0-usb-0:1:1.0".into()),
                    device: identity.key(),
                    device_id,
                    run_id: Some(run),
                    refusal: Refusal::TooLarge {
                        size: identity.capacity,
                        max: 256_000_000_000,
                    },
                })
                .await
                .unwrap();
        }
        let report = records
            .store()
            .device_report("HUGE-1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.rows.len(), 3);
        assert_eq!(report.counts.refused, 3);
        assert!(report.rows.iter().all(|r| r.reason_code.as_deref()
            == Some(RefusalCode::TooLarge.as_str())
            && r.run_id == Some(run)
            && r.port_label == "A1"));
        let html = report::device_html(&report, 0);
        assert!(html.contains("<b>3</b> refused"), "{html}");
        assert!(html.contains("<b>3</b> in all"), "{html}");
        let run_report = records.store().run_report(run).await.unwrap().unwrap();
        assert_eq!(run_report.run.counts.refused, 3);
        assert_eq!(run_report.run.counts.failed, 0);
    }
}
