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
use flashrack_guard::Refusal;
use flashrack_hotplug::DeviceIdentity;
use serde::{Serialize, Serializer};

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
    /// The guard refused a stick: nothing was written. Recorded as a refusal of
    /// its own (not an attempt), with the guard's reason as its code and its
    /// sentence.
    GuardRefused {
        /// The port label.
        port: String,
        /// The port's physical path (udev `ID_PATH`), when known.
        port_path: Option<String>,
        /// The device key.
        device: String,
        /// The device's record.
        device_id: DeviceId,
        /// The armed run the stick was refused for, if any.
        run_id: Option<RunId>,
        /// The guard's reason; serialized as its code and its message.
        #[serde(serialize_with = "refusal_as_record")]
        refusal: Refusal,
    },
    /// An operator did something.
    OperatorAction {
        /// What.
        action: OperatorAction,
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
    /// A run was asked for and not armed, because inspection says a raw copy
    /// of its image would not boot and the run was not forced. Nothing was
    /// armed or written; the record is what an auditor looks for next to the
    /// runs that were forced (`force_raw` in their options).
    RunRefused(RunRefusal),
}

/// A run refused before it was armed ([`JournalEvent::RunRefused`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRefusal {
    /// The image's sha256; `None` when the image was refused by its head
    /// (the first bytes of a download or of a decoder's output) and its
    /// import abandoned before its digest was known: the record names no
    /// digest rather than the run's provisional one, which is no image's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<Sha256Digest>,
    /// Its name.
    pub image_name: String,
    /// Why a raw copy would not boot, in one sentence.
    pub reason: String,
    /// What the operator was told to do instead.
    pub advice: String,
    /// The options the run was asked with (who asked, the lot, the hub's
    /// order, if any).
    pub options: RunOptions,
}

/// What an operator did, for the event log. A closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAction {
    /// Armed a run.
    Arm,
    /// Stopped the armed run.
    Stop,
    /// Asked for the stick in one port to be written now.
    StartPort,
    /// Asked for every stick that failed in the armed run, still in its port,
    /// to be written again.
    RetryFailed,
}

fn refusal_as_record<S: Serializer>(refusal: &Refusal, serializer: S) -> Result<S::Ok, S::Error> {
    refusal.to_record().serialize(serializer)
}

/// How far a running attempt has got, as the station last heard from the
/// engine: what the records keep so that a crash leaves a true lower bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AttemptSoFar {
    /// The attempt.
    pub attempt_id: AttemptId,
    /// Bytes of the image the target has acknowledged.
    pub bytes_written: u64,
    /// Bytes read back and checked.
    pub bytes_verified: u64,
}

/// Where the station's records go.
#[async_trait]
pub trait Journal: Send + Sync {
    /// A run starts; returns its id.
    async fn run_started(&self, run: &RunStart) -> Result<RunId, JournalError>;
    /// A run starts whose image is still being imported: `run.image_sha256`
    /// is a provisional digest of no image, unique to the run, which names
    /// it until [`run_image_known`](Self::run_image_known) (a run whose
    /// import fails keeps it: its image never existed); `run.image_size` is
    /// the size known so far (0 when it is known only at the import's end).
    /// Returns its id.
    async fn run_started_following(&self, run: &RunStart) -> Result<RunId, JournalError>;
    /// The image of a run started with
    /// [`run_started_following`](Self::run_started_following) is in the
    /// cache: `image` names it (sha256, name, size) in place of
    /// `provisional`. Durable before it returns, and called before any of the
    /// run's verdicts can be given.
    async fn run_image_known(
        &self,
        run_id: RunId,
        provisional: Sha256Digest,
        image: &RunStart,
    ) -> Result<(), JournalError>;
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
    /// The station is alive, and its running attempts have got this far. Called
    /// every few seconds (not per progress tick) and when an attempt has written
    /// the whole image, so that after a crash the records hold a lower bound of
    /// what reached each stick, and the moment the station was last alive.
    async fn heartbeat(&self, running: &[AttemptSoFar]) -> Result<(), JournalError>;
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
    /// The figures recorded with the verdict.
    pub figures: Option<AttemptFigures>,
    /// The last figures a heartbeat recorded while it ran.
    pub so_far: Option<AttemptSoFar>,
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
    /// Runs' stops as recorded: id, reason and note, in the order they came.
    pub stops: Vec<(RunId, StopReason, Option<String>)>,
    /// Device keys by id (id = index + 1).
    pub devices: Vec<String>,
    /// Attempts by id (id = index + 1).
    pub attempts: Vec<MemoryAttempt>,
    /// The event log.
    pub events: Vec<JournalEvent>,
    /// How many heartbeats were recorded.
    pub heartbeats: u64,
}

/// A journal that keeps everything in memory: for tests, and for a station run
/// without a database (nothing survives the process).
#[derive(Debug, Default)]
pub struct MemoryJournal {
    records: Mutex<MemoryRecords>,
    /// Set while the journal refuses to record attempts' starts and verdicts
    /// ([`MemoryJournal::refuse_writes`]).
    refusing: std::sync::atomic::AtomicBool,
    /// Set while the journal refuses only followed runs' images
    /// ([`MemoryJournal::refuse_run_images`]).
    refusing_images: std::sync::atomic::AtomicBool,
    /// The port whose attempts' verdicts are held, while they are
    /// ([`MemoryJournal::hold_verdicts_at`]). A `std` mutex: never held
    /// across an await.
    holding: Mutex<Option<String>>,
    /// Wakes the verdicts held when they are let go.
    released: tokio::sync::Notify,
    /// How many verdict writes are held now.
    held: std::sync::atomic::AtomicUsize,
    /// The port whose attempts' starts are held, while they are
    /// ([`MemoryJournal::hold_starts_at`]).
    holding_starts: Mutex<Option<String>>,
    /// How many start writes are held now.
    starts_held: std::sync::atomic::AtomicUsize,
    /// Set while runs' starts and stops are held
    /// ([`MemoryJournal::hold_runs`]).
    holding_runs: std::sync::atomic::AtomicBool,
    /// How many run writes are held now.
    runs_held: std::sync::atomic::AtomicUsize,
}

impl MemoryJournal {
    /// Makes the journal refuse (`true`) or take again (`false`) the start and
    /// the verdict of attempts and the start, image and stop of runs, as records
    /// another process holds locked, or on a full disk, do: what the station
    /// shows when its records fail.
    pub fn refuse_writes(&self, refuse: bool) {
        self.refusing
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes the journal refuse (`true`) or take again (`false`) only the
    /// image a followed run's import names ([`Journal::run_image_known`]),
    /// everything else going through: the run whose image the records
    /// refuse, with its stop still recorded.
    pub fn refuse_run_images(&self, refuse: bool) {
        self.refusing_images
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes the journal slow: the verdict of every attempt in port `label`
    /// waits, neither refused nor taken, until
    /// [`release_verdicts`](Self::release_verdicts), as a write waits on
    /// records another process holds locked. Other writes go through.
    pub fn hold_verdicts_at(&self, label: &str) {
        *self.holding.lock().unwrap_or_else(|p| p.into_inner()) = Some(label.to_string());
    }

    /// Lets the verdicts held by [`hold_verdicts_at`](Self::hold_verdicts_at)
    /// go through (in the order they came).
    pub fn release_verdicts(&self) {
        *self.holding.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.released.notify_waiters();
    }

    /// How many verdict writes are held now.
    pub fn verdicts_held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Makes the journal slow for starts: the start of every attempt in
    /// port `label` waits, neither refused nor taken, until
    /// [`release_starts`](Self::release_starts).
    pub fn hold_starts_at(&self, label: &str) {
        *self
            .holding_starts
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(label.to_string());
    }

    /// Lets the starts held by [`hold_starts_at`](Self::hold_starts_at) go
    /// through.
    pub fn release_starts(&self) {
        *self
            .holding_starts
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.released.notify_waiters();
    }

    /// How many start writes are held now.
    pub fn starts_held(&self) -> usize {
        self.starts_held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Makes the journal slow for runs: the start of every run (also one
    /// that follows its import), the image a followed run's import names
    /// and the stop of every run wait, neither
    /// refused nor taken, until [`release_runs`](Self::release_runs), as
    /// they wait on records another process holds locked.
    pub fn hold_runs(&self) {
        self.holding_runs
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets the run writes held by [`hold_runs`](Self::hold_runs) go
    /// through.
    pub fn release_runs(&self) {
        self.holding_runs
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.released.notify_waiters();
    }

    /// How many run writes are held now.
    pub fn runs_held(&self) -> usize {
        self.runs_held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits while runs' writes are held.
    async fn hold_run(&self) {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Listening before looking: a release in between is not missed.
            notified.as_mut().enable();
            if !self.holding_runs.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            self.runs_held
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            notified.await;
            self.runs_held
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Waits while the verdicts of the attempts in port `label` are held.
    async fn hold(&self, label: &str) {
        Self::wait_while(&self.released, &self.holding, &self.held, label).await;
    }

    /// Waits while `holding` names port `label`, counted in `count`.
    async fn wait_while(
        released: &tokio::sync::Notify,
        holding: &Mutex<Option<String>>,
        count: &std::sync::atomic::AtomicUsize,
        label: &str,
    ) {
        loop {
            let notified = released.notified();
            tokio::pin!(notified);
            // Listening before looking: a release in between is not missed.
            notified.as_mut().enable();
            let held = holding.lock().unwrap_or_else(|p| p.into_inner()).as_deref() == Some(label);
            if !held {
                return;
            }
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            notified.await;
            count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn refused(&self) -> Result<(), JournalError> {
        if self.refusing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(JournalError("the records are locked".into()));
        }
        Ok(())
    }

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
        self.hold_run().await;
        self.refused()?;
        let mut r = self.lock();
        let id = RunId(r.runs.len() as i64 + 1);
        r.runs.push((id, run.image_name.clone(), None));
        Ok(id)
    }

    async fn run_started_following(&self, run: &RunStart) -> Result<RunId, JournalError> {
        self.run_started(run).await
    }

    async fn run_image_known(
        &self,
        run_id: RunId,
        _provisional: Sha256Digest,
        image: &RunStart,
    ) -> Result<(), JournalError> {
        self.hold_run().await;
        self.refused()?;
        if self
            .refusing_images
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(JournalError("the records refuse the run's image".into()));
        }
        let mut r = self.lock();
        if let Some(run) = r.runs.iter_mut().find(|(id, ..)| *id == run_id) {
            run.1 = image.image_name.clone();
        }
        Ok(())
    }

    async fn run_stopped(
        &self,
        run_id: RunId,
        reason: StopReason,
        note: Option<&str>,
    ) -> Result<(), JournalError> {
        self.hold_run().await;
        self.refused()?;
        let mut r = self.lock();
        r.stops.push((run_id, reason, note.map(str::to_string)));
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
        Self::wait_while(
            &self.released,
            &self.holding_starts,
            &self.starts_held,
            &attempt.port_label,
        )
        .await;
        self.refused()?;
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
            figures: None,
            so_far: None,
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
        figures: &AttemptFigures,
    ) -> Result<(), JournalError> {
        let port = self
            .lock()
            .attempts
            .iter()
            .find(|a| a.id == attempt_id)
            .map(|a| a.start.port_label.clone());
        if let Some(port) = port {
            self.hold(&port).await;
        }
        self.refused()?;
        let mut r = self.lock();
        match r.attempts.iter_mut().find(|a| a.id == attempt_id) {
            Some(a) if a.verdict.is_none() => {
                a.verdict = Some(verdict.clone());
                a.figures = Some(figures.clone());
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

    async fn heartbeat(&self, running: &[AttemptSoFar]) -> Result<(), JournalError> {
        let mut r = self.lock();
        r.heartbeats += 1;
        for so_far in running {
            // Like the store: only a running attempt takes figures.
            if let Some(a) = r
                .attempts
                .iter_mut()
                .find(|a| a.id == so_far.attempt_id && a.verdict.is_none())
            {
                a.so_far = Some(*so_far);
            }
        }
        Ok(())
    }
}
