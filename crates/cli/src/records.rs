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
use flashrack_devices::hotplug::DeviceIdentity;
use flashrack_image::ImageCache;
use flashrack_station::{AttemptStart, Journal, JournalError, JournalEvent, RunStart};
use flashrack_store::report;
use flashrack_store::{
    AttemptId, DeviceId, DeviceRow, EventKind, EventRow, ImageRow, RunId, StopReason, Store,
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

    /// Records that the station is alive, for dating a crash; every few seconds.
    pub async fn heartbeat_forever(self) {
        loop {
            if let Err(error) = self.store.heartbeat().await {
                tracing::warn!(%error, "cannot record a heartbeat");
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
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
        self.store.record_image(&row).await.map_err(journal_error)
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
            .start_run(run.image_sha256, &run.image_name, &options)
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
            .stop_run(run_id, reason)
            .await
            .map_err(journal_error)?;
        let mut row = EventRow::new(
            EventKind::OperatorAction,
            json!({ "action": "run_stopped", "reason": reason, "note": note }),
        );
        row.run_id = Some(run_id);
        self.store.record_event(&row).await.map_err(journal_error)?;
        Ok(())
    }

    async fn device_seen(&self, identity: &DeviceIdentity) -> Result<DeviceId, JournalError> {
        let id = self
            .store
            .upsert_device(&DeviceRow {
                serial: identity.serial.clone(),
                vendor: identity.vendor.clone(),
                model: identity.model.clone(),
                capacity: ByteSize(identity.capacity),
            })
            .await
            .map_err(journal_error)?;
        Ok(id)
    }

    async fn attempt_started(&self, attempt: &AttemptStart) -> Result<AttemptId, JournalError> {
        self.store
            .start_attempt(
                attempt.run_id,
                attempt.device_id,
                &attempt.port_label,
                attempt.port_path.as_deref().unwrap_or(""),
            )
            .await
            .map_err(journal_error)
    }

    async fn attempt_stage(&self, attempt_id: AttemptId, stage: Stage) -> Result<(), JournalError> {
        self.store
            .attempt_stage(attempt_id, stage)
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
            .finish_attempt(attempt_id, verdict, figures)
            .await
            .map_err(journal_error)
    }

    async fn event(&self, event: &JournalEvent) -> Result<(), JournalError> {
        let (kind, port) = match event {
            JournalEvent::DeviceAdded { port, .. } => (EventKind::DeviceAdded, Some(port)),
            JournalEvent::DeviceRemoved { port, .. } => (EventKind::DeviceRemoved, Some(port)),
            JournalEvent::GuardRefused { port, .. } => (EventKind::GuardRefused, Some(port)),
            JournalEvent::OperatorAction { .. } => (EventKind::OperatorAction, None),
            JournalEvent::Ejected { port, .. } => (EventKind::PortChanged, Some(port)),
        };
        let mut row = EventRow::new(kind, serde_json::to_value(event).unwrap_or_default());
        row.port_label = port.cloned();
        self.store.record_event(&row).await.map_err(journal_error)?;
        Ok(())
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
