//! The station's records in the SQLite store: the [`Journal`] the station writes
//! through and the [`Reports`] the web side reads, over one [`Store`].
//!
//! This is the only place where station, web and store meet, so none of them
//! depends on another.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use flashrack_core::{AttemptFigures, ByteSize, Stage, Verdict};
use flashrack_hotplug::DeviceIdentity;
use flashrack_image::ImageCache;
use flashrack_station::{
    AttemptSoFar, AttemptStart, Journal, JournalError, JournalEvent, RunStart,
};
use flashrack_store::{
    AttemptId, DeviceId, DeviceRow, EventKind, EventRow, ImageRow, ImageSource, PortHistory,
    Records, RefusalRow, RunId, RunningFigures, StopReason, Store, Writes,
};
use flashrack_web::{ReportFormat, Reports};

use crate::reports::{render_device, render_run};
use crate::AppError;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::json;

/// The store, seen as the station's journal and the web's reports.
#[derive(Clone)]
pub struct StoreRecords {
    store: Store,
    /// The image cache, for what the records say of a run's image (its format
    /// and import time).
    images: ImageCache,
    /// What opening found left unfinished by an unclean stop.
    recovered: Recovered,
}

/// What opening the records found left unfinished by an unclean stop (a crash,
/// a power cut, a `kill -9`), and has now closed: attempts marked
/// `interrupted`, runs stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Attempts that were running.
    pub attempts: usize,
    /// Runs that were open.
    pub runs: usize,
}

impl Recovered {
    /// Whether there was anything to recover.
    pub fn any(&self) -> bool {
        self.attempts > 0 || self.runs > 0
    }
}

/// The database file in a data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
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
    /// unfinished (they become `interrupted`; [`Self::recovered`] says how
    /// many).
    pub async fn open(
        data_dir: &Path,
        station_id: &str,
        images: ImageCache,
    ) -> Result<Self, AppError> {
        let path = database_path(data_dir);
        let store = Store::open(&path, station_id)
            .await
            .map_err(|source| AppError::OpenRecords { path, source })?;
        OPENED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(store.clone());
        // The caller holds the data directory's lock (see `crate::lock`): no
        // other flashrack records here, so whatever runs under any station id
        // was left by one that ended (a `flash` killed, then `serve` under
        // the configured id).
        let recovery = store
            .recover_interrupted_of_every_station()
            .await
            .map_err(AppError::Recover)?;
        let recovered = Recovered {
            attempts: recovery.attempts.len(),
            runs: recovery.runs.len(),
        };
        if recovered.any() {
            tracing::warn!(
                attempts = recovered.attempts,
                runs = recovered.runs,
                "records of an unclean stop: unfinished attempts are now interrupted"
            );
        }
        Ok(Self {
            store,
            images,
            recovered,
        })
    }

    /// The store itself.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What opening found left unfinished by an unclean stop.
    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    /// Makes sure the store knows the image (its format, import time, source
    /// file and provenance come from the cache; an image recorded
    /// before the records kept its source gets it now, if the cache still
    /// knows it, and one downloaded since it was recorded gets its
    /// provenance).
    pub async fn record_image(
        &self,
        sha256: flashrack_core::Sha256Digest,
        name: &str,
        size: u64,
    ) -> Result<(), JournalError> {
        // An image recorded before its source, its inspection or its
        // provenance was kept is recorded again, with them.
        let known = self.store.image(sha256).await.map_err(journal_error)?;
        // Reading the cache's manifest is blocking file I/O: off the station's
        // task (this runs inside `Journal::run_started`).
        let images = self.images.clone();
        let cached = tokio::task::spawn_blocking(move || images.get(&sha256).ok().flatten())
            .await
            .map_err(|error| JournalError(error.to_string()))?;
        let source = cached.as_ref().map(|c| ImageSource {
            file_name: c.meta.original_name.clone(),
            sha256: c.meta.input_sha256,
            size: ByteSize(c.meta.input_size),
        });
        let provenance = cached.as_ref().and_then(|c| c.meta.provenance.clone());
        let inspection = cached
            .as_ref()
            .and_then(|c| c.meta.inspection.as_ref())
            .and_then(|i| serde_json::to_string(i).ok());
        if let Some(known) = &known {
            let adds_source = known.source.is_none() && source.is_some();
            let adds_inspection = known.inspection.is_none() && inspection.is_some();
            let adds_provenance = provenance.is_some() && known.provenance != provenance;
            if !adds_source && !adds_inspection && !adds_provenance {
                // Nothing the records lack (or the cache no longer says).
                return Ok(());
            }
        }
        let row = ImageRow {
            sha256,
            source,
            name: name.to_string(),
            size: ByteSize(size),
            format: cached
                .as_ref()
                .map_or("raw", |c| c.meta.format.name())
                .to_string(),
            imported_at: cached
                .as_ref()
                .map_or_else(|| self.store.now(), |c| c.meta.imported_at as i64 * 1000),
            inspection,
            provenance,
        };
        self.store
            .write(|batch| Box::pin(batch.record_image(&row)))
            .await
            .map_err(journal_error)
    }
}

impl StoreRecords {
    /// Starts a run whose image is still being imported (a one-shot flash that
    /// writes while it imports): the run refers to a provisional image row
    /// (`provisional`: a digest of no image, made by the caller, unique to
    /// this run; the file's name; its size if known, else 0; format
    /// `pending`) until [`run_image_known`](Self::run_image_known) names the
    /// image. A run whose import failed keeps the provisional row: its image
    /// never existed.
    pub async fn run_started_provisional(
        &self,
        provisional: flashrack_core::Sha256Digest,
        run: &RunStart,
    ) -> Result<RunId, JournalError> {
        let row = ImageRow {
            sha256: provisional,
            source: None,
            name: run.image_name.clone(),
            size: ByteSize(run.image_size),
            format: flashrack_store::PENDING_IMAGE_FORMAT.into(),
            imported_at: self.store.now(),
            inspection: None,
            provenance: None,
        };
        let options =
            serde_json::to_value(&run.options).map_err(|e| JournalError(e.to_string()))?;
        self.store
            .write(|batch| {
                Box::pin(async move {
                    batch.record_image(&row).await?;
                    batch
                        .start_run(provisional, &run.image_name, &options)
                        .await
                })
            })
            .await
            .map_err(journal_error)
    }

    /// The image of a run started with
    /// [`run_started_provisional`](Self::run_started_provisional) is known (its
    /// import succeeded and is in the cache): recorded, and set as the run's
    /// image, before any of the run's verdicts.
    pub async fn run_image_known(
        &self,
        run: RunId,
        provisional: flashrack_core::Sha256Digest,
        sha256: flashrack_core::Sha256Digest,
        name: &str,
        size: u64,
    ) -> Result<(), JournalError> {
        self.record_image(sha256, name, size).await?;
        self.store
            .write(|batch| Box::pin(batch.set_run_image(run, sha256, name, provisional)))
            .await
            .map_err(journal_error)
    }
}

fn journal_error(error: flashrack_store::StoreError) -> JournalError {
    JournalError(error.to_string())
}

#[async_trait]
impl Journal for StoreRecords {
    async fn run_started_following(&self, run: &RunStart) -> Result<RunId, JournalError> {
        self.run_started_provisional(run.image_sha256, run).await
    }

    async fn run_image_known(
        &self,
        run_id: RunId,
        provisional: flashrack_core::Sha256Digest,
        image: &RunStart,
    ) -> Result<(), JournalError> {
        StoreRecords::run_image_known(
            self,
            run_id,
            provisional,
            image.image_sha256,
            &image.image_name,
            image.image_size,
        )
        .await
    }

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
            .write(|batch| Box::pin(batch.stop_run(run_id, reason, note)))
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
            JournalEvent::RunRefused(_) => (EventKind::RunRefused, None),
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
            let mut json = serde_json::to_value(runs).map_err(|e| e.to_string())?;
            // A run whose image was never imported (its import failed, was
            // refused or stopped) names no image, as its reports say: its
            // digest is a placeholder, the digest of no image.
            for run in json.as_array_mut().into_iter().flatten() {
                if run["image_imported"] == serde_json::Value::Bool(false) {
                    run["image_sha256"] = serde_json::Value::Null;
                }
            }
            Ok(json)
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
            let rendered = render_run(&run, format, self.store.now());
            Ok(Some((rendered.content_type.into(), rendered.body)))
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
            let rendered = render_device(&device, format, self.store.now());
            Ok(Some((rendered.content_type.into(), rendered.body)))
        }
        .boxed()
    }

    fn port_history(&self, per_port: u32) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        async move {
            // Enough rows to judge a port, however few it shows.
            let rows = self
                .store
                .port_history(per_port.max(PortHistory::SUSPECT_AFTER as u32))
                .await
                .map_err(|e| e.to_string())?;
            serde_json::to_value(PortHistory::of(rows, per_port as usize))
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn devices(&self) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        async move {
            let devices = self
                .store
                .device_summaries(1000)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::to_value(devices).map_err(|e| e.to_string())
        }
        .boxed()
    }
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
