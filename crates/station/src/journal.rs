//! The station's records seam: what must be written down, and when.
//!
//! The station awaits the journal at the moments DESIGN.md fixes: an attempt is
//! recorded as started before its first byte is written, and its verdict is
//! committed before the port shows it. The store crate implements [`Journal`]
//! over SQLite (wired in the binary); [`MemoryJournal`] keeps records in memory for
//! tests and for running without a database.

use std::sync::Mutex;

use async_trait::async_trait;
use flashrack_core::{
    AttemptFigures, AttemptId, DeviceId, RunId, Sha256Digest, Stage, StopReason, Verdict,
};
use flashrack_devices::hotplug::DeviceIdentity;
use serde::Serialize;

use crate::model::RunOptions;

/// A record could not be written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot record: {0}")]
pub struct JournalError(pub String);

/// A run being started.
#[derive(Debug, Clone, Serialize)]
pub struct RunStart {
    /// The image's sha256.
    pub image_sha256: Sha256Digest,
    /// Its name.
    pub image_name: String,
    /// Its size.
    pub image_size: u64,
    /// The options.
    pub options: RunOptions,
}

/// An attempt about to write.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptStart {
    /// The run.
    pub run_id: RunId,
    /// The device's record.
    pub device_id: DeviceId,
    /// The port label.
    pub port_label: String,
    /// The port path.
    pub port_path: Option<String>,
}

/// Something for the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JournalEvent {
    /// A stick appeared in a port.
    DeviceAdded {
        /// The port label.
        port: String,
        /// The device key.
        device: String,
    },
    /// A stick left a port.
    DeviceRemoved {
        /// The port label.
        port: String,
        /// The device key.
        device: String,
    },
    /// The guard refused a stick.
    GuardRefused {
        /// The port label.
        port: String,
        /// The device key.
        device: String,
        /// The guard's reason.
        reason: String,
    },
    /// An operator did something.
    OperatorAction {
        /// What ("arm", "stop", "start_port").
        action: String,
        /// Details for people.
        detail: String,
    },
    /// A passed stick was ejected.
    Ejected {
        /// The port label.
        port: String,
        /// The device key.
        device: String,
    },
}

/// Where the station's records go.
#[async_trait]
pub trait Journal: Send + Sync {
    /// A run starts; returns its id.
    async fn run_started(&self, run: &RunStart) -> Result<RunId, JournalError>;
    /// A run stopped, for `reason`; `note` says more for people (the
    /// operator's words, the source's error), if there is more to say.
    async fn run_stopped(
        &self,
        run_id: RunId,
        reason: StopReason,
        note: Option<&str>,
    ) -> Result<(), JournalError>;
    /// A stick was seen; returns its device id (the same for the same key).
    async fn device_seen(&self, identity: &DeviceIdentity) -> Result<DeviceId, JournalError>;
    /// An attempt is about to write; returns its id. Durable before it returns.
    async fn attempt_started(&self, attempt: &AttemptStart) -> Result<AttemptId, JournalError>;
    /// An attempt entered a stage.
    async fn attempt_stage(&self, attempt_id: AttemptId, stage: Stage) -> Result<(), JournalError>;
    /// An attempt ended. Durable before it returns.
    async fn attempt_finished(
        &self,
        attempt_id: AttemptId,
        verdict: &Verdict,
        figures: &AttemptFigures,
    ) -> Result<(), JournalError>;
    /// Appends to the event log.
    async fn event(&self, event: &JournalEvent) -> Result<(), JournalError>;
}

/// One attempt as [`MemoryJournal`] keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryAttempt {
    /// Its id.
    pub id: AttemptId,
    /// What was recorded at its start.
    pub start: AttemptStartRecord,
    /// Stages entered.
    pub stages: Vec<Stage>,
    /// The verdict, once finished.
    pub verdict: Option<Verdict>,
}

/// The start of an attempt as [`MemoryJournal`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptStartRecord {
    /// The run.
    pub run_id: RunId,
    /// The device.
    pub device_id: DeviceId,
    /// The port label.
    pub port_label: String,
}

/// Everything [`MemoryJournal`] has recorded.
#[derive(Debug, Default, Clone)]
pub struct MemoryRecords {
    /// Runs: id, image name, stop reason.
    pub runs: Vec<(RunId, String, Option<StopReason>)>,
    /// Device keys by id (id = index + 1).
    pub devices: Vec<String>,
    /// Attempts by id (id = index + 1).
    pub attempts: Vec<MemoryAttempt>,
    /// The event log.
    pub events: Vec<JournalEvent>,
}

/// A journal that keeps everything in memory: for tests, and for a station run
/// without a database (nothing survives the process).
#[derive(Debug, Default)]
pub struct MemoryJournal {
    records: Mutex<MemoryRecords>,
}

impl MemoryJournal {
    /// A copy of everything recorded so far.
    pub fn records(&self) -> MemoryRecords {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryRecords> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn run_started(&self, run: &RunStart) -> Result<RunId, JournalError> {
        let mut r = self.lock();
        let id = RunId(r.runs.len() as i64 + 1);
        r.runs.push((id, run.image_name.clone(), None));
        Ok(id)
    }

    async fn run_stopped(
        &self,
        run_id: RunId,
        reason: StopReason,
        _note: Option<&str>,
    ) -> Result<(), JournalError> {
        let mut r = self.lock();
        if let Some(run) = r.runs.iter_mut().find(|(id, ..)| *id == run_id) {
            run.2 = Some(reason);
        }
        Ok(())
    }

    async fn device_seen(&self, identity: &DeviceIdentity) -> Result<DeviceId, JournalError> {
        let mut r = self.lock();
        let key = identity.key();
        if let Some(pos) = r.devices.iter().position(|k| *k == key) {
            return Ok(DeviceId(pos as i64 + 1));
        }
        r.devices.push(key);
        Ok(DeviceId(r.devices.len() as i64))
    }

    async fn attempt_started(&self, attempt: &AttemptStart) -> Result<AttemptId, JournalError> {
        let mut r = self.lock();
        let id = AttemptId(r.attempts.len() as i64 + 1);
        r.attempts.push(MemoryAttempt {
            id,
            start: AttemptStartRecord {
                run_id: attempt.run_id,
                device_id: attempt.device_id,
                port_label: attempt.port_label.clone(),
            },
            stages: Vec::new(),
            verdict: None,
        });
        Ok(id)
    }

    async fn attempt_stage(&self, attempt_id: AttemptId, stage: Stage) -> Result<(), JournalError> {
        let mut r = self.lock();
        if let Some(a) = r.attempts.iter_mut().find(|a| a.id == attempt_id) {
            a.stages.push(stage);
        }
        Ok(())
    }

    async fn attempt_finished(
        &self,
        attempt_id: AttemptId,
        verdict: &Verdict,
        _figures: &AttemptFigures,
    ) -> Result<(), JournalError> {
        let mut r = self.lock();
        match r.attempts.iter_mut().find(|a| a.id == attempt_id) {
            Some(a) if a.verdict.is_none() => {
                a.verdict = Some(verdict.clone());
                Ok(())
            }
            Some(_) => Err(JournalError(format!("attempt {attempt_id} finished twice"))),
            None => Err(JournalError(format!("no attempt {attempt_id}"))),
        }
    }

    async fn event(&self, event: &JournalEvent) -> Result<(), JournalError> {
        self.lock().events.push(event.clone());
        Ok(())
    }
}
