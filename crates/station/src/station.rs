//! The station's event loop and the handle that commands it.
//!
//! One task owns all station state (ports, present devices, the run, running
//! attempts) and reacts to four inputs: hotplug events, operator commands, engine
//! events (stage changes, progress) and finished attempts. Nothing else mutates
//! state, so there are no locks around it; readers get a [`Snapshot`] through a
//! `watch` channel and changes through a `broadcast` channel.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flashrack_core::{
    AttemptFigures, AttemptId, Bound, ByteSize, DataRanges, DeviceId, EngineEvent, EngineEventKind,
    FailReason, Failure, GuardRefusal, RunId, SamplePercent, Sha256Digest, Stage, StopReason,
    TargetId, Verdict,
};
use flashrack_engine::{
    AttemptOutcome, Canceller, EngineError, EngineOptions, Fanout, Hold, ImageFeed, SourceImage,
};
use flashrack_guard::{evaluate, DiskFacts, GuardCheck, GuardPolicy, GuardRequest, Refusal};
use flashrack_hotplug::{
    DeviceAccess, DeviceIdentity, Hotplug, HotplugSource, PluggedDevice, ResetFailure, ResetLink,
    StopSignal,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::journal::{
    AttemptSoFar, AttemptStart, Journal, JournalError, JournalEvent, OperatorAction, RunRefusal,
    RunStart,
};
use crate::model::{
    ArmingState, ArmingView, DeviceView, PortState, PortView, Progress, RunImport, RunImportState,
    RunOptions, RunView, Snapshot, StageTimeline, StationEvent, VerdictRun,
};
use crate::recorder::{Recorder, PORT_LANES, STATION_LANE};

/// A mapped port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// What operators call it ("A1").
    pub label: String,
    /// Its stable physical path (udev `ID_PATH`).
    pub path: String,
    /// Where it sits in the rack's grid (row, column), for the dashboard.
    pub position: Option<(u32, u32)>,
    /// A master port: a stick in it is never written (no run starts it, not
    /// even on the operator's request); it is offered for capture
    /// ([`StationHandle::master_stick`]).
    pub master: bool,
}

/// Everything the station is configured with.
#[derive(Debug, Clone)]
pub struct StationSettings {
    /// Records carry it (several stations may share one database).
    pub station_id: String,
    /// The port map, in display order.
    pub ports: Vec<PortSpec>,
    /// The guard's policy; its `mapped_ports` are filled from `ports`.
    pub policy: GuardPolicy,
    /// Engine knobs (the verify mode comes from each run).
    pub engine: EngineOptions,
    /// How long shutdown waits for running attempts to stop at a safe point.
    /// This and `removal_grace` are measured on the engine's clock
    /// (`engine.clock`), as the stall timeout is: one clock for the station.
    pub shutdown_grace: Duration,
    /// How long an I/O failure waits for a removal before it becomes the verdict:
    /// a pulled stick's in-flight I/O fails with EIO before udev reports the
    /// removal, and such a stick failed because it was pulled, not because it
    /// is bad.
    pub removal_grace: Duration,
    /// How often the station tells its records it is alive, with how far each
    /// running attempt has got (a few seconds: after a crash, the records hold
    /// what reached each stick up to then, and when the station was last alive).
    pub heartbeat: Duration,
}

/// An image to arm a run with.
#[derive(Debug, Clone)]
pub struct ArmRequest {
    /// The cached image.
    pub image: SourceImage,
    /// Its name for people.
    pub image_name: String,
    /// Run options.
    pub options: RunOptions,
    /// The image's block map's ranges for a sparse run (`options.sparse`),
    /// which each stick gets written and read back; `None` for a full run.
    pub sparse: Option<Arc<DataRanges>>,
}

/// An image still being imported to arm a run with
/// ([`StationHandle::arm_following`]): the run's attempts follow the import
/// (the engine's [`ImageFeed`], which the caller's import feeds) and wait
/// for its end before they read back; the caller tells the station how the
/// import ended ([`StationHandle::import_ended`]), and only then may an
/// attempt pass.
#[derive(Debug, Clone)]
pub struct FollowRequest {
    /// The import's chunks as they are stored. The caller reserves it
    /// ([`ImageFeed::reserve_for`]) before the import begins, so that the
    /// run's sticks find its first chunks held; the station lets the
    /// reservation go once no stick of the run is on its way to an attempt.
    pub feed: Arc<ImageFeed>,
    /// The image's size when known as its import began (a raw file, a
    /// server's declared length), which the guard judges sticks by; `None`:
    /// known only at its end (a stick too small then fails as `too_small`
    /// when the write passes its end).
    pub size: Option<u64>,
    /// A digest of no image, unique to the run, that names it in the
    /// records until the import ends.
    pub provisional: Sha256Digest,
    /// Where the image comes from (a URL, a file), as the operator named it.
    pub source: String,
    /// What the import's progress counts up to, when known.
    pub total: Option<u64>,
    /// The image's name for people until it is known (the file's name).
    pub image_name: String,
    /// Run options. An audit's attempts write nothing and read their
    /// sticks back once the import has ended.
    pub options: RunOptions,
    /// A sparse run's ranges (`options.sparse`): from a bmap file known
    /// before the import (which checks the image against it); `None` for a
    /// full run.
    pub sparse: Option<Arc<DataRanges>>,
}

/// How a followed import ended ([`StationHandle::import_ended`]).
#[derive(Debug, Clone)]
pub enum ImportEnd {
    /// The image is in the cache.
    Imported {
        /// The cached image (the attempts started from now on read it).
        image: SourceImage,
        /// Its name for people.
        name: String,
    },
    /// The import failed, or its image may not be written: every attempt
    /// fails as a source failure and the run stops as `source_failed` with
    /// this reason.
    Failed(String),
}

/// Why a station command failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StationError {
    /// A run is already armed; stop it first.
    #[error("a run is already armed (run {0}); stop it first")]
    AlreadyArmed(RunId),
    /// No run is armed.
    #[error("no run is armed")]
    NotArmed,
    /// No port has that label.
    #[error("no port is labelled {0:?}")]
    UnknownPort(String),
    /// The port cannot start now.
    #[error("port {label} cannot start: it is {state}")]
    PortNotReady {
        /// The port.
        label: String,
        /// Its state.
        state: PortState,
    },
    /// A run is being armed: the records are taking its start.
    #[error("a run is being armed (the records are taking its start)")]
    Arming,
    /// The run is being stopped: the records are taking its end.
    #[error("run {0} is being stopped (the records are taking its end)")]
    Stopping(RunId),
    /// A record could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The image cannot be read.
    #[error(transparent)]
    Source(#[from] EngineError),
    /// The station has stopped.
    #[error("the station has stopped")]
    Stopped,
    /// The port is a master port: its stick is never written.
    #[error("port {0} is a master port: its stick is never written (capture it instead)")]
    MasterPort(String),
    /// A capture asked for a port that is not a master port.
    #[error("port {0} is not a master port: only a stick in a master port (master = true in the configuration) is captured")]
    NotMaster(String),
    /// No port is configured as a master port.
    #[error("this station has no master port (mark one with master = true in its [[port]] table)")]
    NoMasterPort,
    /// The master port holds no stick.
    #[error("there is no stick in master port {0}")]
    NoStick(String),
    /// The operator stopped the run while it was being armed (its claim
    /// held, its image not started yet): nothing was armed.
    #[error("the run was stopped by the operator while it was being armed: nothing was armed")]
    ArmStopped,
}

/// The stick in a master port, for a capture.
#[derive(Debug, Clone)]
pub struct MasterStick {
    /// The port's label.
    pub label: String,
    /// The stick, as hotplug reported it (its device node and the disk
    /// identity the capture must find behind it).
    pub device: PluggedDevice,
}

/// The right to arm the station's next run, held by a caller who has
/// something to do first ([`StationHandle::claim_arm`]): a followed run's
/// import, until its first chunk. While it is held the snapshot shows the
/// run being armed ([`ArmingState::Claimed`]), another arm or claim is
/// refused ([`StationError::Arming`]), a port's start and a retry wait, as
/// while a run's start is being recorded, and an operator's stop stops the
/// arming at once ([`ArmClaim::stop_asked`]). It is handed in
/// with the arm ([`ArmClaim::arm`], [`ArmClaim::arm_following`]), which
/// no other arm can then be ahead of; dropped instead (the caller gave up:
/// its client left, its import failed), it is released and the station is
/// free again.
pub struct ArmClaim {
    /// Which claim ([`Claim::id`]).
    id: u64,
    /// The station's commands, for the arm it is handed in with.
    commands: mpsc::Sender<Command>,
    /// Where a claim dropped without arming says so: unbounded, so that
    /// `drop` never waits nor fails while the station runs.
    released: mpsc::UnboundedSender<u64>,
    /// Set once the station has taken it with its arm: nothing to release.
    handed: bool,
    /// Becomes `true` when the operator stops the run before it is armed
    /// ([`ArmClaim::stop_asked`]).
    stop: watch::Receiver<bool>,
}

impl std::fmt::Debug for ArmClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClaim").field("id", &self.id).finish()
    }
}

impl ArmClaim {
    /// Arms the run it was claimed for with a cached image (the import
    /// found the image in the cache): as [`StationHandle::arm`], but no
    /// other arm can come first.
    pub async fn arm(self, request: ArmRequest) -> Result<RunView, StationError> {
        let commands = self.commands.clone();
        ask(&commands, |tx| {
            Command::Arm(Box::new(request), Some(self), tx)
        })
        .await
    }

    /// Arms the run it was claimed for over its import: as
    /// [`StationHandle::arm_following`], but no other arm can come first.
    pub async fn arm_following(self, request: FollowRequest) -> Result<RunView, StationError> {
        let commands = self.commands.clone();
        ask(&commands, |tx| {
            Command::ArmFollowing(Box::new(request), Some(self), tx)
        })
        .await
    }

    /// The station has taken it with its arm: `drop` releases nothing.
    fn taken(mut self) {
        self.handed = true;
    }

    /// Turns `true` when the operator stops the run while the caller still
    /// readies it (its import has not begun): the caller gives up (drops
    /// the claim, abandons what it started), and its arm, if it comes all
    /// the same, is refused ([`StationError::ArmStopped`]). The operator's
    /// stop is answered at once.
    pub fn stop_asked(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }
}

impl Drop for ArmClaim {
    fn drop(&mut self) {
        if !self.handed {
            // The station may have stopped: then nothing waits for it.
            let _ = self.released.send(self.id);
        }
    }
}

/// Sends the command `make` builds and waits for its answer.
async fn ask<T>(
    commands: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<Result<T, StationError>>) -> Command,
) -> Result<T, StationError> {
    let (tx, rx) = oneshot::channel();
    commands
        .send(make(tx))
        .await
        .map_err(|_| StationError::Stopped)?;
    rx.await.map_err(|_| StationError::Stopped)?
}

enum Command {
    /// An arm, with the claim it was granted (if any).
    Arm(
        Box<ArmRequest>,
        Option<ArmClaim>,
        oneshot::Sender<Result<RunView, StationError>>,
    ),
    /// A claim to arm ([`StationHandle::claim_arm`]): what it is for, as
    /// the snapshot shows it.
    Claim(ArmingView, oneshot::Sender<Result<ArmClaim, StationError>>),
    Stop(String, oneshot::Sender<Result<(), StationError>>),
    StartPort(String, oneshot::Sender<Result<(), StationError>>),
    RunRefused(Box<RunRefusal>, oneshot::Sender<Result<(), StationError>>),
    RetryFailed(oneshot::Sender<Result<Vec<String>, StationError>>),
    MasterStick(
        Option<String>,
        oneshot::Sender<Result<MasterStick, StationError>>,
    ),
    Capture {
        label: String,
        device_key: String,
        progress: Option<Progress>,
    },
    ArmFollowing(
        Box<FollowRequest>,
        Option<ArmClaim>,
        oneshot::Sender<Result<RunView, StationError>>,
    ),
    ImportProgress {
        run_id: RunId,
        done: u64,
        total: Option<u64>,
    },
    ImportEnded(
        RunId,
        Box<ImportEnd>,
        oneshot::Sender<Result<(), StationError>>,
    ),
}

/// Commands a running station and watches it. Cheap to clone.
#[derive(Clone)]
pub struct StationHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<StationEvent>,
    snapshot: watch::Receiver<Snapshot>,
    /// Why the station is being shut down, when its caller says it
    /// ([`note_shutdown`](Self::note_shutdown)).
    shutdown_note: Arc<std::sync::OnceLock<String>>,
}

impl StationHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StationError>>) -> Command,
    ) -> Result<T, StationError> {
        ask(&self.commands, make).await
    }

    /// Arms a run: every accepted stick present or inserted from now on is written.
    /// Answers once the records hold the run's start (the station goes on
    /// meanwhile, showing [`Snapshot::arming`]; another arm is refused with
    /// [`StationError::Arming`], a stop waits for the record and stops the
    /// run then) and its present sticks were
    /// guarded; with the records' error if they refuse it (nothing is
    /// armed then). Refused with [`StationError::Arming`] too while a claim
    /// to arm is held ([`claim_arm`](Self::claim_arm)).
    pub async fn arm(&self, request: ArmRequest) -> Result<RunView, StationError> {
        self.ask(|tx| Command::Arm(Box::new(request), None, tx))
            .await
    }

    /// Claims the right to arm the next run ([`ArmClaim`]) for a run of
    /// `image_name` from `source` whose image must be readied first (a
    /// followed run's import, until its first chunk): refused as an arm
    /// would be now ([`StationError::AlreadyArmed`], [`StationError::Arming`]
    /// also while another claim is held or an arm waits for a run's stop to
    /// be recorded); granted while a run is being stopped (its arm is armed
    /// once the stop is recorded, as an arm's). So a caller learns whether
    /// its run can be armed before it downloads or imports anything, and
    /// nothing comes in between.
    pub async fn claim_arm(
        &self,
        image_name: &str,
        source: &str,
    ) -> Result<ArmClaim, StationError> {
        let view = ArmingView {
            state: ArmingState::Claimed,
            image_sha256: None,
            image_name: image_name.to_string(),
            source: Some(source.to_string()),
        };
        self.ask(|tx| Command::Claim(view, tx)).await
    }

    /// Arms a run whose image is still being imported: as
    /// [`arm`](Self::arm), the sticks following the import (see
    /// [`FollowRequest`]). The run is recorded under the request's
    /// provisional digest until [`import_ended`](Self::import_ended) names
    /// the image. A sparse run or an audit is refused: both need the whole
    /// image first.
    pub async fn arm_following(&self, request: FollowRequest) -> Result<RunView, StationError> {
        self.ask(|tx| Command::ArmFollowing(Box::new(request), None, tx))
            .await
    }

    /// The import run `run_id` follows has received `done` bytes (of
    /// `total`, when known): shown in the run's view
    /// ([`RunView::import`]) on the event stream. Ignored for another run.
    /// The caller throttles it (a few a second).
    pub async fn import_progress(&self, run_id: RunId, done: u64, total: Option<u64>) {
        let _ = self
            .commands
            .send(Command::ImportProgress {
                run_id,
                done,
                total,
            })
            .await;
    }

    /// The import run `run_id` follows has ended. Imported: the image is
    /// recorded as the run's (durably), the run's view names it, attempts
    /// started from now on read the cached image, and only then does the
    /// import's feed end, so that every verdict comes after the run names its
    /// image. Failed: the feed fails (every attempt following it fails as a
    /// source failure, before any verdict of a pass) and the run, if still
    /// armed, stops as `source_failed` with the reason. Answers once done;
    /// an error if the image could not be recorded: that ends the run as a
    /// failed import does (the feed fails, the run stops as `source_failed`
    /// with "the image could not be recorded: ..."), and the error comes
    /// once its stop is recorded.
    pub async fn import_ended(&self, run_id: RunId, end: ImportEnd) -> Result<(), StationError> {
        self.ask(|tx| Command::ImportEnded(run_id, Box::new(end), tx))
            .await
    }

    /// Stops the armed run as the operator's decision (`note`: their words, for
    /// the records); running attempts stop at a safe point as interrupted.
    /// Nothing more is written under it at once; it is shown ended, and
    /// this answers, once the records hold its end (meanwhile it shows
    /// [`RunView::recording`]; another stop is refused with
    /// [`StationError::Stopping`], an arm waits for the record and is armed
    /// then). Refused by the records, it is stopped
    /// all the same and this answers their error. While a run's start is
    /// being recorded it waits for that run and stops it
    /// ([`StationError::NotArmed`] if it is not armed after all). While a
    /// run is only claimed ([`claim_arm`](Self::claim_arm): its caller
    /// readies the image, a download that has sent nothing yet) the
    /// arming is stopped at once: the caller is told
    /// ([`ArmClaim::stop_asked`]) and its arm refused.
    pub async fn stop_run(&self, note: &str) -> Result<(), StationError> {
        self.ask(|tx| Command::Stop(note.to_string(), tx)).await
    }

    /// Says why the station is about to be shut down (`SIGTERM`): a run it
    /// stops then keeps it as its stop's detail. The first note stands.
    pub fn note_shutdown(&self, why: impl Into<String>) {
        let _ = self.shutdown_note.set(why.into());
    }

    /// Writes the stick in `label` now, as the operator's explicit request (also a
    /// stick that already passed or failed in this run). While a run is
    /// being armed (the records taking its start) it waits for their answer
    /// and is for that run ([`StationError::NotArmed`] if they refuse it);
    /// while the run is being stopped it is refused
    /// ([`StationError::Stopping`]): nothing more starts under it.
    pub async fn start_port(&self, label: &str) -> Result<(), StationError> {
        self.ask(|tx| Command::StartPort(label.to_string(), tx))
            .await
    }

    /// Records that a run was asked for and refused before it was armed
    /// (inspection says its image would not boot written raw, and the run was
    /// not forced): nothing is armed, the event log keeps the refusal. The
    /// caller decides; the station writes it down in order with its other
    /// records.
    pub async fn record_run_refused(&self, refusal: RunRefusal) -> Result<(), StationError> {
        self.ask(|tx| Command::RunRefused(Box::new(refusal), tx))
            .await
    }

    /// Writes again, as the operator's explicit request, every stick still in
    /// its port whose attempt in the armed run failed for a reason that may
    /// pass ([`FailReason::is_retryable`]: never a capacity lie or a read-only
    /// stick). Answers the labels of the ports started, once their sticks are.
    /// While a run is being armed or stopped, as
    /// [`start_port`](Self::start_port).
    pub async fn retry_failed(&self) -> Result<Vec<String>, StationError> {
        self.ask(Command::RetryFailed).await
    }

    /// The stick in master port `label`, or in the first master port that
    /// holds one when `label` is `None`: what a capture reads. Refused when
    /// the port is unknown, not a master port, or empty.
    pub async fn master_stick(&self, label: Option<&str>) -> Result<MasterStick, StationError> {
        self.ask(|tx| Command::MasterStick(label.map(str::to_string), tx))
            .await
    }

    /// A capture of the master stick in `label` (the stick whose identity
    /// key is `device_key`) has read `progress` so far: the port shows
    /// `capturing` with it, on the event stream like any port change; `None`
    /// once the capture has ended, done or failed (the port shows `master`
    /// again). Ignored for a port that is no master port or holds another
    /// stick (the master was pulled, or replaced).
    pub async fn capture_progress(
        &self,
        label: &str,
        device_key: &str,
        progress: Option<Progress>,
    ) {
        let _ = self
            .commands
            .send(Command::Capture {
                label: label.to_string(),
                device_key: device_key.to_string(),
                progress,
            })
            .await;
    }

    /// The station as it is now.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// A receiver of snapshots, for waiting on changes.
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StationEvent> {
        self.events.subscribe()
    }
}

/// A port as the station tracks it.
struct Port {
    view: PortView,
    /// Kernel name of the stick in it.
    kernel_name: Option<String>,
    /// While the port is `waiting`: its place in the queue (sticks start in the
    /// order they began to wait).
    waiting_since: Option<u64>,
    /// The guard's inspection of the stick in this port, while it runs on a
    /// blocking thread (see [`Inspection`]); `None` when none is awaited. A
    /// newer request for the port, a removal or a new stick replace or clear
    /// it, and an answer that no longer matches it is dropped.
    inspecting: Option<Inspection>,
    /// While the records take the start of an attempt on the stick in this
    /// port (see [`Starting`]); `None` otherwise.
    starting: Option<Starting>,
}

/// An attempt whose start the records are taking: nothing is written to the
/// stick until they hold it ([`Recorded::Started`] begins it). The port shows
/// `preparing` meanwhile ([`PortView::recording`]), and the attempt counts
/// as active (a target count is not overshot meanwhile).
struct Starting {
    /// Numbers starts (station-wide): the answer names the one it is for.
    token: u64,
    /// The run it is for: a run stopped meanwhile starts nothing.
    run_id: RunId,
    /// The guard request it was judged under (checked again at opening).
    request: GuardRequest,
    /// The stick it is for.
    kernel_name: String,
    /// Set when the stick was pulled meanwhile: once recorded, the attempt
    /// ends as `removed` while preparing (nothing was written).
    removed: bool,
}

/// An attempt that has ended and whose verdict the records are taking: the
/// port shows it only once they hold it ([`Recorded::Finished`]).
struct Finishing {
    run_id: RunId,
    verdict_run: VerdictRun,
    attempt_id: AttemptId,
    /// Its port (renumbered like a slot's; `usize::MAX` once its unmapped
    /// port entry is gone).
    port: usize,
    kernel_name: String,
    device_key: String,
    /// Who its stick is (a pass is kept with it: see [`PassedAttempt`]).
    identity: DeviceIdentity,
    /// Gone in its reset and not back.
    away: bool,
    /// Its stick was pulled while it ran.
    removed: bool,
    /// The stage it ended in.
    stage: Stage,
    verdict: Verdict,
    figures: AttemptFigures,
    /// The image source's failure, which stops the run once the verdict is
    /// recorded.
    source_error: Option<EngineError>,
    /// Bytes its write pass read again from a followed import's file
    /// ([`AttemptOutcome::bytes_reread`]), added to the run's view once
    /// the verdict is shown.
    bytes_reread: u64,
}

/// A start waiting to be recorded with the others the same guard answers
/// applied ([`Station::record_starts`]).
struct QueuedStart {
    token: u64,
    kernel_name: String,
    /// The stick's record, if the records took it already.
    device_id: Option<DeviceId>,
    identity: DeviceIdentity,
    start: AttemptStart,
}

/// The records' answer to one start ([`Recorded::Started`]).
struct StartAnswer {
    /// Which start ([`Starting::token`]).
    token: u64,
    /// Its stick.
    kernel_name: String,
    /// The stick's record and the attempt's, or why not.
    result: Result<(DeviceId, AttemptId), JournalError>,
}

/// An answer of the records' writers ([`crate::recorder`]), back in the loop.
enum Recorded {
    /// A stick's device record: kept for its attempts.
    DeviceSeen {
        kernel_name: String,
        /// Its identity's key: a stick under the same name since is
        /// another one.
        key: String,
        result: Result<DeviceId, JournalError>,
    },
    /// Attempts' starts are recorded (or refused), in the order they were
    /// asked: see [`Starting`]. Each names its start ([`Starting::token`])
    /// and its stick.
    Started(Vec<StartAnswer>),
    /// An attempt's verdict is recorded (or refused): see [`Finishing`].
    Finished {
        attempt_id: AttemptId,
        result: Result<(), JournalError>,
    },
    /// A run's start is recorded (its id), or refused: see [`Arming`].
    /// The operator's action of arming it is written right after it.
    RunStarted(Result<RunId, JournalError>),
    /// A run's stop is recorded (or refused): see [`Stopping`].
    RunStopped {
        run_id: RunId,
        result: Result<(), JournalError>,
    },
    /// A followed run's image is recorded as its own (or refused): see
    /// [`Naming`].
    ImageKnown {
        run_id: RunId,
        result: Result<(), JournalError>,
    },
    /// An operator's action is written (or refused, which is only logged):
    /// the replies waiting for it may go ([`DeferredReply::action`]).
    ActionLogged(u64),
    /// A retry of refused records ended: what the records refused again.
    Retried {
        attempts: Vec<(AttemptId, Verdict, AttemptFigures)>,
        stops: Vec<(RunId, StopReason, Option<String>)>,
    },
}

/// A request to start the stick in a port, waiting for the guard's answer.
///
/// Gathering the guard's facts reads sysfs and `/proc/self/mountinfo` (and a
/// real device's files can take their time to answer): it runs on a thread of
/// its own, never on the station's task, so one slow inspection holds up no
/// command, no verdict, no progress and no other hotplug event: only the
/// starts asked after it, which keep their order. The answer comes back as an [`Inspected`] message on the station's loop, where the
/// rest of the start (refusal, waiting, recording, the engine) happens in
/// order with everything else.
struct Inspection {
    /// Numbers requests in the order they were made (station-wide). Answers
    /// are applied in this order, so that sticks start, wait or are refused
    /// in the order they asked, as when the guard answered at once (attempts
    /// are recorded in arrival order; under a target count, the first come
    /// are the first written).
    token: u64,
    /// The run the start is for: an answer for a run that has been stopped
    /// (or replaced) since starts nothing.
    run_id: RunId,
    /// The guard request it was judged under (explicit operator request or
    /// not, the run's image size).
    request: GuardRequest,
    /// The guard's answer, once in (kept here until its turn comes).
    answer: Option<Result<(), Refusal>>,
}

/// A command's reply that waits for the guard's answers to the requests made
/// up to it: arming a run replies once the sticks present were guarded and
/// started (or refused), starting a port once its stick was; as when the
/// guard answered at once. Only the reply waits; the station goes on.
struct DeferredReply {
    /// The last inspection asked before the reply ([`Inspection::token`]).
    after: u64,
    /// The operator's action the reply reports, until the records hold it
    /// ([`Station::actions_in_flight`]): the operator hears back once the
    /// records say what they did.
    action: Option<u64>,
    reply: Reply,
}

/// A run whose start the records are taking ([`Station::arming`]): nothing
/// is shown armed and no stick is started under it until they hold it
/// ([`Recorded::RunStarted`] arms it); the snapshot says it is being armed
/// meanwhile ([`ArmingView`]), another arm is refused
/// ([`StationError::Arming`]), and a stop, a port's start and a retry
/// wait for the records' answer ([`Station::held_commands`]). If the
/// records refuse it, it is dropped and the caller hears why: the screen
/// never showed it armed.
struct Arming {
    /// What the snapshot shows meanwhile.
    view: ArmingView,
    /// What was recorded.
    start: RunStart,
    /// The run's engine, made before the record (opening the image may
    /// fail, and then nothing is recorded).
    fanout: Fanout,
    followed: Option<Followed>,
    import: Option<Box<RunImport>>,
    /// The caller's, answered once the run is armed and its present sticks
    /// guarded (as [`Reply::Arm`]), or with the records' error.
    reply: oneshot::Sender<Result<RunView, StationError>>,
}

/// The right to arm the next run, held for a caller ([`ArmClaim`],
/// [`Station::claim`]).
struct Claim {
    /// Numbers claims ([`Station::claim_seq`]): a release names the one it
    /// is for.
    id: u64,
    /// Tells its caller that the operator stopped the run.
    stop: watch::Sender<bool>,
    /// What the snapshot shows meanwhile ([`ArmingState::Claimed`], then
    /// [`ArmingState::WaitingForStop`] once its arm waits for a stop).
    view: ArmingView,
}

/// A run's stop that the records are taking ([`ActiveRun::stopping`]):
/// its attempts were told to stop at once and nothing more starts under
/// it, but it is shown ended (`armed` false) only once the records hold its
/// end ([`Recorded::RunStopped`]); [`RunView::recording`] says so meanwhile.
struct Stopping {
    reason: StopReason,
    note: Option<String>,
    /// The callers who asked for this stop (the operator's stop, the end of
    /// a followed import), answered once the records hold it or refused it.
    replies: Vec<oneshot::Sender<Result<(), StationError>>>,
}

/// A followed run's image, which the records are taking as the run's
/// ([`ActiveRun::naming`]): the import's feed ends, and the run's view
/// names the image, only once they hold it ([`Recorded::ImageKnown`]), so
/// that no verdict comes before the run names its image.
struct Naming {
    followed: Followed,
    image: SourceImage,
    name: String,
    /// The importer's, answered then.
    reply: oneshot::Sender<Result<(), StationError>>,
}

/// A reply held back ([`DeferredReply`]).
enum Reply {
    /// To `arm`: the run's view once its present sticks are started.
    Arm(Box<RunView>, oneshot::Sender<Result<RunView, StationError>>),
    /// To `start_port`.
    StartPort(oneshot::Sender<Result<(), StationError>>),
    /// To `retry_failed`: the ports started again.
    RetryFailed(
        Vec<String>,
        oneshot::Sender<Result<Vec<String>, StationError>>,
    ),
}

/// The guard's answer for a port, from its blocking thread.
struct Inspected {
    /// The stick it is about (the port is found through it: an unmapped port's
    /// index may have moved meanwhile).
    kernel_name: String,
    /// Which request it answers ([`Inspection::token`]).
    token: u64,
    /// Accepted, or why not.
    answer: Result<(), Refusal>,
}

/// A stick that is present.
struct Present {
    device: PluggedDevice,
    /// Its record; `None` while the records could not take it (asked again
    /// before any attempt, which needs it).
    device_id: Option<DeviceId>,
    port: usize,
}

/// The import a run follows (see [`FollowRequest`]).
struct Followed {
    feed: Arc<ImageFeed>,
    provisional: Sha256Digest,
    /// The engine's options of the run, for the cached image's fan-out once
    /// the import ends.
    engine: EngineOptions,
}

/// The attempt in which a stick passed in the armed run: what its port names
/// when a stick that may be it is put in ([`ActiveRun::pass_it_may_repeat`]).
#[derive(Debug, Clone)]
struct PassedAttempt {
    attempt_id: AttemptId,
    /// The stick that passed: one with its serial but another vendor, model
    /// or size is another stick.
    identity: DeviceIdentity,
}

/// The armed (or last) run.
struct ActiveRun {
    view: RunView,
    fanout: Option<Fanout>,
    /// The import it follows, until that ends (`None`: a cached image).
    followed: Option<Followed>,
    image_size: u64,
    /// The sticks that passed in this run, by key: a stick that may be one of
    /// them put in again is not written unless the operator asks, when the
    /// key can tell one stick from another (see
    /// [`ActiveRun::pass_it_may_repeat`]).
    passed: HashMap<String, PassedAttempt>,
    /// Serials seen on two sticks present at once in this run: they do not
    /// tell sticks apart (cheap sticks often share one), so a stick with
    /// one is written even if a stick with it passed.
    shared_serials: HashSet<String>,
    /// Automatic retries made in this run, by stick key (at most the run's
    /// `retries` each).
    retries_made: HashMap<String, u32>,
    /// Its stop, while the records take it (see [`Stopping`]).
    stopping: Option<Stopping>,
    /// Its image, while the records take it as the run's (see [`Naming`]).
    naming: Option<Naming>,
}

impl ActiveRun {
    /// Whether sticks are written under it: armed, and not stopping.
    fn live(&self) -> bool {
        self.view.armed && self.stopping.is_none()
    }

    /// The import it follows, also while its image is being recorded.
    fn feed(&self) -> Option<&Arc<ImageFeed>> {
        self.followed
            .as_ref()
            .or(self.naming.as_ref().map(|n| &n.followed))
            .map(|f| &f.feed)
    }

    /// The pass in this run of a stick the arriving one may be, put in
    /// again: a stick with a serial of its own, the same vendor, model and
    /// size, and a serial no other stick present at the same time has shown.
    /// Only "may be": another stick of the batch may show the same serial,
    /// so the station neither writes it nor shows it as passed until the
    /// operator asks ([`PortView::passed_before`]). A stick without a
    /// serial is never taken for one that passed: its key (vendor, model and
    /// size) is shared by every stick of its batch.
    fn pass_it_may_repeat(&self, identity: &DeviceIdentity) -> Option<&PassedAttempt> {
        let key = identity.key();
        if !identity.has_serial() || self.shared_serials.contains(&key) {
            return None;
        }
        self.passed
            .get(&key)
            .filter(|pass| pass.identity == *identity)
    }

    /// Whether the passes so far plus the attempts in flight reach the target
    /// count: another stick started now could only overshoot it.
    fn target_covered(&self) -> bool {
        self.view
            .options
            .target_count
            .is_some_and(|target| self.view.passed + self.view.active >= target)
    }
}

/// A running attempt.
struct Slot {
    run_id: RunId,
    /// The run and image the verdict will be about.
    verdict_run: VerdictRun,
    attempt_id: AttemptId,
    port: usize,
    kernel_name: String,
    device_key: String,
    /// Who the stick is (serial, capacity): a stick coming back from its
    /// reset must be this one.
    identity: DeviceIdentity,
    canceller: Canceller,
    /// Where the attempt's target waits for its stick to come back from a
    /// reset before the read-back; the station answers it.
    reset: ResetLink,
    /// Set while the stick is away from the system during its reset (removed,
    /// not yet back): its removal was part of the attempt.
    away: bool,
    /// The timer that gives up on a stick that does not come back from its
    /// reset ([`EngineOptions::reset_timeout`]); aborted (and its sleep
    /// dropped) when the stick is back or the attempt ends.
    reset_timer: Option<AbortOnDrop>,
    /// Resets announced by the attempt: a timer's message names the one it
    /// was armed for, and is ignored once another began.
    resets: u64,
    /// Set when the station gave up on the stick's return: its removal, if
    /// the station has not handled it yet, is still part of the reset.
    gave_up: bool,
    stage: Stage,
    /// Set when the stick was pulled while the attempt ran.
    removed_during: Option<Stage>,
    /// Bytes of the image the stick has acknowledged, from the engine's write
    /// progress (the whole image once the write pass is over).
    written: u64,
    /// Bytes read back and checked, from the engine's verify progress.
    verified: u64,
    /// When its write pass began and ended, and when its read-back began
    /// (from the stages it entered): the times of an attempt whose thread's
    /// own figures are lost.
    timeline: StageTimeline,
    /// The records' lane of its port: its stages and verdict follow its
    /// start there.
    lane: usize,
}

impl Slot {
    /// Stops the attempt at its next safe point; a target waiting for its
    /// stick to come back from a reset stops waiting.
    fn cancel(&self) {
        self.canceller.cancel();
        self.reset.fail(ResetFailure::Cancelled);
    }

    /// How far the attempt has got, for a heartbeat.
    fn so_far(&self) -> AttemptSoFar {
        AttemptSoFar {
            attempt_id: self.attempt_id,
            bytes_written: self.written,
            bytes_verified: self.verified,
        }
    }

    /// The figures the station knows without the attempt's thread: a lower
    /// bound of what reached the stick (progress is reported now and then, and
    /// a write in flight may still land).
    fn figures_so_far(&self) -> AttemptFigures {
        let (write_secs, verify_secs) = self.timeline.secs(std::time::Instant::now());
        AttemptFigures {
            capacity: ByteSize(self.identity.capacity),
            bytes_written: self.written,
            bytes_verified: self.verified,
            bytes_written_bound: Bound::LowerBound,
            write_secs,
            verify_secs,
            ..AttemptFigures::default()
        }
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What differs between the stick that was reset and what came back in its
/// port, in words; `None` when it is the same stick (same serial, same
/// capacity). Vendor and model strings are not compared: some bridges report
/// them differently after a reset, while a serial and a capacity are the
/// stick's own.
fn identity_difference(before: &DeviceIdentity, after: &DeviceIdentity) -> Option<String> {
    let mut differences = Vec::new();
    if before.serial != after.serial {
        differences.push(format!(
            "serial {} became {}",
            before.serial.as_deref().unwrap_or("(none)"),
            after.serial.as_deref().unwrap_or("(none)")
        ));
    }
    if before.capacity != after.capacity {
        differences.push(format!(
            "capacity {} bytes became {} bytes",
            before.capacity, after.capacity
        ));
    }
    (!differences.is_empty()).then(|| differences.join(", "))
}

struct Done {
    target: TargetId,
    outcome: AttemptOutcome,
}

/// The station. Build it with [`Station::new`], then run
/// [`Station::run_until_stopped`] on a task.
pub struct Station {
    /// Why it is being shut down, if its caller said it
    /// ([`StationHandle::note_shutdown`]).
    shutdown_note: Arc<std::sync::OnceLock<String>>,
    settings: StationSettings,
    access: Arc<dyn DeviceAccess>,
    /// The records' writers: every journal write goes through them, in
    /// order per port, and the loop never waits on one: what it needs of
    /// an answer (an attempt's or a run's id, a verdict or a stop taken)
    /// comes back as a [`Recorded`] message, and a caller's reply waits
    /// for it, not the loop.
    recorder: Recorder,
    /// Answers of the records' writers ([`Recorded`]): at most one per write
    /// queued, and the queues are bounded.
    recorded_tx: mpsc::UnboundedSender<Recorded>,
    recorded_rx: mpsc::UnboundedReceiver<Recorded>,
    /// Attempts whose verdict the records are taking, by attempt.
    finishing: HashMap<AttemptId, Finishing>,
    /// Numbers attempt starts ([`Starting::token`]).
    start_seq: u64,
    /// Starts whose record has not answered yet.
    starts_in_flight: usize,
    /// Starts the guard's answers being applied have made, recorded
    /// together once they all are ([`Station::record_starts`]).
    queued_starts: Vec<QueuedStart>,
    /// Set while a retry of refused records is queued (one at a time).
    retrying: bool,
    /// A run whose start the records are taking (see [`Arming`]).
    arming: Option<Arming>,
    /// The right to arm the next run, while a caller holds it (see
    /// [`ArmClaim`]); never beside `arming` (its own arm hands it in).
    claim: Option<Claim>,
    /// The last claim the operator stopped before its arm: an arm that
    /// comes with it all the same is refused.
    stopped_claim: Option<u64>,
    /// Numbers claims ([`Claim::id`]).
    claim_seq: u64,
    /// The station's commands, for the claims it grants (weak: the loop's
    /// commands end when the last handle goes).
    claim_commands: mpsc::WeakSender<Command>,
    /// Claims dropped without their arm ([`ArmClaim`]'s `drop`).
    claims_released_tx: mpsc::UnboundedSender<u64>,
    claims_released_rx: mpsc::UnboundedReceiver<u64>,
    /// Commands waiting for the records' answer to a run's start or stop,
    /// or for a claim's run (see [`Station::on_command`]), in the order
    /// they came.
    held_commands: Vec<Command>,
    /// Numbers operators' actions written ([`DeferredReply::action`]).
    action_seq: u64,
    /// Operators' actions the records have not answered yet.
    actions_in_flight: HashSet<u64>,
    /// Set once the station is shutting down: nothing more is started.
    stopping: bool,
    ports: Vec<Port>,
    present: HashMap<String, Present>,
    run: Option<ActiveRun>,
    slots: HashMap<TargetId, Slot>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<StationEvent>,
    snapshot: watch::Sender<Snapshot>,
    engine_tx: mpsc::UnboundedSender<EngineEvent>,
    engine_rx: mpsc::UnboundedReceiver<EngineEvent>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Tells the loop that a waiting verdict's removal grace is over.
    grace_tx: mpsc::UnboundedSender<TargetId>,
    grace_rx: mpsc::UnboundedReceiver<TargetId>,
    /// Tells the loop that a reset's timeout is over (the attempt, and which
    /// of its resets).
    reset_over_tx: mpsc::UnboundedSender<(TargetId, u64)>,
    reset_over_rx: mpsc::UnboundedReceiver<(TargetId, u64)>,
    /// Numbers the waits of `waiting` ports, for their queue order.
    wait_seq: u64,
    /// The guard's answers from their blocking threads (see [`Inspection`]).
    inspected_tx: mpsc::UnboundedSender<Inspected>,
    inspected_rx: mpsc::UnboundedReceiver<Inspected>,
    /// Numbers guard inspections ([`Inspection::token`]).
    inspection_seq: u64,
    /// Replies waiting for guard answers ([`DeferredReply`]), in order.
    deferred: Vec<DeferredReply>,
    /// Verdicts of I/O failures waiting (at most `removal_grace`) for a removal
    /// that would explain them; settled by the removal or by the timer.
    pending: HashMap<TargetId, Done>,
    /// Sticks still held by their last attempt's thread, by kernel name: an
    /// attempt abandoned after a stall whose I/O is stuck in the kernel keeps
    /// the stick open (exclusively). The stick's next attempt (a retry, "write
    /// again") waits for it to let go ([`Fanout::start_after`]) instead of
    /// finding the stick busy. Forgotten when the stick leaves.
    held: HashMap<String, Hold>,
    /// Station errors of attempts whose verdict the records could not take,
    /// shown on their ports and not yet recorded: written at each heartbeat
    /// until the records take them, so the records come to say what the
    /// screen says.
    unrecorded: Vec<(AttemptId, Verdict, AttemptFigures)>,
    /// Runs stopped (shown stopped, nothing more written under them) whose
    /// stop the records refused: written at each heartbeat until they take it.
    unrecorded_stops: Vec<(RunId, StopReason, Option<String>)>,
}

impl Station {
    /// A station over `access` (how to inspect, write and eject sticks), recording
    /// into `journal`.
    pub fn new(
        mut settings: StationSettings,
        access: Arc<dyn DeviceAccess>,
        journal: Arc<dyn Journal>,
    ) -> (Self, StationHandle) {
        settings
            .policy
            .mapped_ports
            .extend(settings.ports.iter().map(|p| p.path.clone()));
        let ports: Vec<Port> = settings
            .ports
            .iter()
            .map(|p| Port {
                view: PortView {
                    master: p.master,
                    ..PortView::empty(p.label.clone(), Some(p.path.clone()), true, p.position)
                },
                kernel_name: None,
                waiting_since: None,
                inspecting: None,
                starting: None,
            })
            .collect();
        let snapshot = Snapshot {
            station_id: settings.station_id.clone(),
            ports: ports.iter().map(|p| p.view.clone()).collect(),
            run: None,
            arming: None,
        };
        let (commands_tx, commands) = mpsc::channel(32);
        let (events, _) = broadcast::channel(1024);
        let (snapshot_tx, snapshot_rx) = watch::channel(snapshot);
        let (engine_tx, engine_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (grace_tx, grace_rx) = mpsc::unbounded_channel();
        let (reset_over_tx, reset_over_rx) = mpsc::unbounded_channel();
        let (inspected_tx, inspected_rx) = mpsc::unbounded_channel();
        let (recorded_tx, recorded_rx) = mpsc::unbounded_channel();
        let (claims_released_tx, claims_released_rx) = mpsc::unbounded_channel();
        let claim_commands = commands_tx.downgrade();
        let shutdown_note = Arc::new(std::sync::OnceLock::new());
        let handle = StationHandle {
            commands: commands_tx,
            events: events.clone(),
            snapshot: snapshot_rx,
            shutdown_note: Arc::clone(&shutdown_note),
        };
        let station = Self {
            shutdown_note,
            settings,
            access,
            recorder: Recorder::new(journal),
            recorded_tx,
            recorded_rx,
            finishing: HashMap::new(),
            start_seq: 0,
            starts_in_flight: 0,
            queued_starts: Vec::new(),
            retrying: false,
            arming: None,
            claim: None,
            stopped_claim: None,
            claim_seq: 0,
            claim_commands,
            claims_released_tx,
            claims_released_rx,
            held_commands: Vec::new(),
            action_seq: 0,
            actions_in_flight: HashSet::new(),
            stopping: false,
            ports,
            present: HashMap::new(),
            run: None,
            slots: HashMap::new(),
            commands,
            events,
            snapshot: snapshot_tx,
            engine_tx,
            engine_rx,
            done_tx,
            done_rx,
            grace_tx,
            grace_rx,
            reset_over_tx,
            reset_over_rx,
            wait_seq: 0,
            inspected_tx,
            inspected_rx,
            inspection_seq: 0,
            deferred: Vec::new(),
            pending: HashMap::new(),
            held: HashMap::new(),
            unrecorded: Vec::new(),
            unrecorded_stops: Vec::new(),
        };
        (station, handle)
    }

    /// Runs the station until `shutdown` completes: watches `source` on a
    /// dedicated thread and reacts to everything. At shutdown, running attempts
    /// are stopped at a safe point and recorded as interrupted, the run is
    /// stopped, and the hotplug thread is joined.
    pub async fn run_until_stopped(
        mut self,
        source: Box<dyn HotplugSource>,
        shutdown: impl Future<Output = ()>,
    ) {
        let (hotplug_tx, mut hotplug_rx) = mpsc::unbounded_channel();
        let stop = StopSignal::new();
        let watcher = std::thread::Builder::new().name("hotplug".into()).spawn({
            let stop = stop.clone();
            move || {
                if let Err(error) = source.run(hotplug_tx, stop) {
                    tracing::error!(%error, "the hotplug source stopped");
                }
            }
        });
        tokio::pin!(shutdown);
        self.recorder.start();
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = heartbeat.tick() => self.on_heartbeat().await,
                Some(event) = hotplug_rx.recv() => self.on_hotplug(event).await,
                Some(command) = self.commands.recv() => self.on_command(command).await,
                Some(event) = self.engine_rx.recv() => self.on_engine_event(event).await,
                Some(done) = self.done_rx.recv() => self.on_done(done).await,
                Some(target) = self.grace_rx.recv() => self.on_grace_over(target).await,
                Some((target, reset)) = self.reset_over_rx.recv() => self.on_reset_over(target, reset),
                Some(inspected) = self.inspected_rx.recv() => self.on_inspected(inspected).await,
                Some(recorded) = self.recorded_rx.recv() => self.on_recorded(recorded).await,
                Some(claim) = self.claims_released_rx.recv() => self.on_claim_released(claim).await,
            }
        }
        self.shut_down().await;
        stop.stop();
        if let Ok(watcher) = watcher {
            let _ = tokio::task::spawn_blocking(move || watcher.join()).await;
        }
    }

    async fn shut_down(&mut self) {
        // Nothing more starts: a start the records answer from now on ends
        // as interrupted, before anything is written.
        self.stopping = true;
        for slot in self.slots.values() {
            slot.cancel();
        }
        let clock = self.settings.engine.clock.clone();
        let deadline = clock.now() + self.settings.shutdown_grace;
        while !self.slots.is_empty() {
            tokio::select! {
                _ = clock.sleep_until(deadline) => break,
                Some(event) = self.engine_rx.recv() => self.on_engine_event(event).await,
                Some(done) = self.done_rx.recv() => self.on_done(done).await,
                Some(target) = self.grace_rx.recv() => self.on_grace_over(target).await,
                Some(recorded) = self.recorded_rx.recv() => self.on_recorded(recorded).await,
            }
        }
        // Attempts stuck in the kernel past the grace period: recorded as
        // interrupted now (their threads are abandoned), with what the station
        // knows reached the stick.
        let stuck: Vec<TargetId> = self.slots.keys().cloned().collect();
        for target in stuck {
            if let Some(slot) = self.slots.remove(&target) {
                let verdict = Verdict::Fail(Failure {
                    reason: FailReason::Interrupted,
                    stage: slot.stage,
                });
                let figures = slot.figures_so_far();
                self.finish(slot, verdict, figures, None, 0).await;
            }
        }
        // The records answer every start and verdict queued, and a run's
        // start, stop or image being recorded: the screen and the run's
        // counts then say what they hold. (A run whose start they take now
        // is armed, with no stick started, and stopped below.)
        while self.starts_in_flight > 0 || !self.finishing.is_empty() || self.runs_recording() {
            match self.recorded_rx.recv().await {
                Some(recorded) => self.on_recorded(recorded).await,
                None => break,
            }
        }
        if self.run.as_ref().is_some_and(ActiveRun::live) {
            let note = self.shutdown_note.get().cloned();
            self.stop(StopReason::Shutdown, note, None).await;
            while self.runs_recording() {
                match self.recorded_rx.recv().await {
                    Some(recorded) => self.on_recorded(recorded).await,
                    None => break,
                }
            }
        }
        self.recorder.close().await;
        while let Ok(recorded) = self.recorded_rx.try_recv() {
            self.on_recorded(recorded).await;
        }
        // A last try for what the records refused (the shutdown's own stop
        // among them): what is still refused is left to the next start, which
        // records attempts left running and runs left open as interrupted.
        // The writers are done: written here, in order, directly.
        let (attempts, stops) = record_refused(
            &*self.recorder.journal(),
            std::mem::take(&mut self.unrecorded),
            std::mem::take(&mut self.unrecorded_stops),
        )
        .await;
        self.unrecorded = attempts;
        self.unrecorded_stops = stops;
        self.publish_snapshot();
    }

    /// Handles the commands that waited for a run's start or stop to be
    /// recorded (or for a claim's run), in the order they came (one may wait again: an arm behind
    /// the stop of the run just armed). At shutdown they are dropped: their
    /// callers hear that the station has stopped.
    async fn handle_held_commands(&mut self) {
        let held = std::mem::take(&mut self.held_commands);
        if self.stopping {
            return;
        }
        for command in held {
            Box::pin(self.on_command(command)).await;
        }
    }

    /// Whether the records are taking a run's start, its stop or its
    /// image.
    fn runs_recording(&self) -> bool {
        self.arming.is_some()
            || self
                .run
                .as_ref()
                .is_some_and(|r| r.stopping.is_some() || r.naming.is_some())
    }

    // ----- hotplug ---------------------------------------------------------

    async fn on_hotplug(&mut self, event: Hotplug) {
        // An attempt's events sent before what it did to its stick (the
        // reset that takes it out of the system) are handled before what the
        // system then says of the stick: the two channels are polled in no
        // particular order, and a removal handled first showed the port
        // `resetting`, then the stage still queued (`preparing`), then
        // `resetting` again. Seen under load in the probe's reset.
        while let Ok(event) = self.engine_rx.try_recv() {
            self.on_engine_event(event).await;
        }
        // Likewise the attempts' ends already queued (each after its own
        // queued events, in `on_done`): a removal handled before the end of an
        // attempt that had already ended took the stick for one pulled
        // mid-attempt: a real failure (a mismatch, a fake) was recorded as
        // `removed`, a pass kept its port with no stick instead of clearing
        // it, and the removal was logged before the verdict.
        while let Ok(done) = self.done_rx.try_recv() {
            self.on_done(done).await;
        }
        match event {
            Hotplug::Added(device) => self.on_added(device).await,
            Hotplug::Changed(device) => {
                if let Some(present) = self.present.get_mut(&device.kernel_name) {
                    let port = present.port;
                    present.device = device.clone();
                    self.ports[port].view.device = Some(DeviceView::from(&device));
                    self.publish_port(port);
                } else {
                    self.on_added(device).await;
                }
            }
            Hotplug::Removed { kernel_name } => self.on_removed(&kernel_name).await,
            Hotplug::Enumerated => tracing::info!("hotplug enumeration done"),
        }
    }

    async fn on_added(&mut self, device: PluggedDevice) {
        if let Some(target) = self.away_at(&device) {
            self.on_reset_return(target, device).await;
            return;
        }
        if self.present.contains_key(&device.kernel_name) {
            self.on_removed(&device.kernel_name.clone()).await;
        }
        let port = match self.port_for(&device) {
            Some(port) => port,
            None => return,
        };
        // Its record comes back later ([`Recorded::DeviceSeen`]); an attempt
        // asked before records it with its start.
        self.record_device(port, &device).await;
        let device_id = None;
        let key = device.identity.key();
        let identity = device.identity.clone();
        let label = self.ports[port].view.label.clone();
        self.log(JournalEvent::DeviceAdded {
            port: label.clone(),
            device: key.clone(),
        })
        .await;
        let slot = &mut self.ports[port];
        slot.view.clear();
        slot.waiting_since = None;
        slot.inspecting = None;
        // A start still being recorded for the last stick here ends as
        // removed when it is (see `on_started`).
        slot.starting = None;
        slot.view.state = PortState::Detected;
        slot.view.device = Some(DeviceView::from(&device));
        slot.kernel_name = Some(device.kernel_name.clone());
        self.present.insert(
            device.kernel_name.clone(),
            Present {
                device,
                device_id,
                port,
            },
        );
        // A guard answer the port's last stick was waiting for is not awaited
        // any more: later ones may go.
        self.apply_inspections().await;
        if self.ports[port].view.master {
            // Never written: shown as the master, offered for capture.
            self.ports[port].view.state = PortState::Master;
            tracing::info!(port = %label, device = %key, "a stick in a master port: never written");
            self.publish_port(port);
            return;
        }
        // A serial on another stick present now is shared: it tells no
        // stick apart for the rest of the run.
        let shared_now = self
            .present
            .values()
            .any(|p| p.port != port && p.device.identity.key() == key);
        if let Some(run) = self.run.as_mut().filter(|r| r.live() && shared_now) {
            run.shared_serials.insert(key.clone());
        }
        if let Some(run) = self.run.as_mut().filter(|r| r.live()) {
            if let Some(earlier) = run.pass_it_may_repeat(&identity) {
                // Not shown as passed: this insertion proved nothing (it may
                // be another stick with the serial, blank or too small).
                let attempt = earlier.attempt_id;
                let view = &mut self.ports[port].view;
                view.state = PortState::Detected;
                view.passed_before = Some(attempt);
                self.publish_port(port);
                tracing::info!(port = %label, device = %key, %attempt, "a stick with the serial of a pass in this run: not written unless the operator asks");
                return;
            }
            // Its serial with another vendor, model or size: another stick,
            // and a serial that tells no stick apart for the rest of the run.
            if identity.has_serial() && run.passed.contains_key(&key) {
                run.shared_serials.insert(key.clone());
            }
            self.try_start(port, false).await;
        }
        self.publish_port(port);
    }

    /// The attempt whose stick is away in its reset in the port `device`
    /// arrived in (matched by port path).
    fn away_at(&self, device: &PluggedDevice) -> Option<TargetId> {
        let path = device.port_path.as_deref()?;
        self.slots
            .iter()
            .find(|(_, s)| {
                s.away
                    && s.port != usize::MAX
                    && self.ports[s.port].view.port_path.as_deref() == Some(path)
            })
            .map(|(target, _)| target.clone())
    }

    /// A stick arrived in the port of an attempt whose stick is away in its
    /// reset. The same stick (serial and capacity; its target checks its
    /// marker) is handed to the waiting target under its new name, and the
    /// attempt goes on: no new insertion, no second attempt. Another stick
    /// fails the attempt (`changed_after_reset`) and is never read back as
    /// if it were the one written; it stays in the port, not started. One
    /// that comes back after the station gave up on it is not started either.
    async fn on_reset_return(&mut self, target: TargetId, device: PluggedDevice) {
        let Some(slot) = self.slots.get_mut(&target) else {
            return;
        };
        slot.away = false;
        let port = slot.port;
        let label = self.ports[port].view.label.clone();
        let difference = identity_difference(&slot.identity, &device.identity);
        let same = difference.is_none() && slot.reset.is_resetting();
        match difference {
            None if same => {
                slot.reset_timer = None;
                slot.kernel_name = device.kernel_name.clone();
                slot.reset.returned(device.clone());
                tracing::info!(port = %label, kernel_name = %device.kernel_name, "back from its reset");
            }
            None => {
                tracing::warn!(port = %label, kernel_name = %device.kernel_name, "back after the station gave up on it; not started");
            }
            Some(detail) => {
                tracing::warn!(port = %label, kernel_name = %device.kernel_name, %detail, "another stick came back from the reset");
                slot.reset.fail(ResetFailure::Changed(detail));
            }
        }
        self.record_device(port, &device).await;
        let device_id = None;
        if !same {
            self.log(JournalEvent::DeviceAdded {
                port: label,
                device: device.identity.key(),
            })
            .await;
        }
        self.ports[port].kernel_name = Some(device.kernel_name.clone());
        self.ports[port].view.device = Some(DeviceView::from(&device));
        self.present.insert(
            device.kernel_name.clone(),
            Present {
                device,
                device_id,
                port,
            },
        );
        self.publish_port(port);
    }

    /// The port a device sits in: its mapped port, or a new unmapped entry when
    /// its bus is one the station may write (so the operator sees it and can map
    /// it). Other disks (the system's own) are ignored.
    fn port_for(&mut self, device: &PluggedDevice) -> Option<usize> {
        if let Some(path) = &device.port_path {
            if let Some(index) = self
                .ports
                .iter()
                .position(|p| p.view.mapped && p.view.port_path.as_deref() == Some(path))
            {
                return Some(index);
            }
        }
        let bus_allowed = device
            .bus
            .as_ref()
            .is_some_and(|b| self.settings.policy.allowed_buses.contains(b));
        if !bus_allowed {
            return None;
        }
        self.ports.push(Port {
            view: PortView::empty(
                format!("?{}", device.kernel_name),
                device.port_path.clone(),
                false,
                None,
            ),
            kernel_name: None,
            waiting_since: None,
            inspecting: None,
            starting: None,
        });
        Some(self.ports.len() - 1)
    }

    async fn on_removed(&mut self, kernel_name: &str) {
        // A stick that leaves the system while its attempt resets it was not
        // pulled: it is expected back in the same port. Also when the station
        // gave up on it before it handled the removal: its verdict is
        // `lost_after_reset`, not `removed`.
        let resetting = self.slots.values_mut().find(|s| {
            s.kernel_name == kernel_name && !s.away && (s.reset.is_resetting() || s.gave_up)
        });
        if let Some(slot) = resetting {
            slot.away = true;
            let port = slot.port;
            self.present.remove(kernel_name);
            if port != usize::MAX {
                self.ports[port].kernel_name = None;
                self.ports[port].view.state = PortState::Resetting;
                self.ports[port].view.progress = None;
                tracing::info!(port = %self.ports[port].view.label, %kernel_name, "left the system during its reset");
                self.publish_port(port);
            }
            return;
        }
        // Pulled: whatever I/O of its was stuck ends, and a stick that comes
        // under this name next is another disk.
        self.held.remove(kernel_name);
        let Some(present) = self.present.remove(kernel_name) else {
            return;
        };
        let port = present.port;
        let mut explained = Vec::new();
        for (target, slot) in self.slots.iter_mut() {
            if slot.kernel_name == kernel_name && slot.removed_during.is_none() {
                slot.removed_during = Some(slot.stage);
                slot.cancel();
                explained.push(target.clone());
            }
        }
        let label = self.ports[port].view.label.clone();
        self.log(JournalEvent::DeviceRemoved {
            port: label.clone(),
            device: present.device.identity.key(),
        })
        .await;
        if self.ports[port].view.mapped {
            let view = &self.ports[port].view;
            // An ejected stick leaves the system but is still in its port: keep
            // showing "passed, ejected: pull it" until another stick arrives.
            let ejected = view.ejected && view.state == PortState::Passed;
            // A stick pulled during its attempt: the port goes on to show the
            // verdict (`removed`, once recorded) until another stick arrives,
            // never `empty` as if nothing had happened. The engine may have
            // seen the removal first and given that verdict already (or,
            // for a stick away in its reset, given up on it before the
            // station saw it leave).
            let lost = |verdict: Option<&Verdict>| {
                matches!(
                    verdict.and_then(Verdict::failure),
                    Some(Failure {
                        reason: FailReason::Removed { .. } | FailReason::LostAfterReset { .. },
                        ..
                    })
                )
            };
            // Its attempt's start, or a verdict of its loss, still being
            // recorded counts as mid-attempt too.
            let starting = self.ports[port]
                .starting
                .as_ref()
                .is_some_and(|s| s.kernel_name == kernel_name);
            let finishing_lost = view
                .attempt_id
                .and_then(|id| self.finishing.get(&id))
                .is_some_and(|f| lost(Some(&f.verdict)));
            let mid_attempt =
                !explained.is_empty() || starting || finishing_lost || lost(view.verdict.as_ref());
            if mid_attempt && !ejected {
                let view = &mut self.ports[port].view;
                view.device = None;
                view.progress = None;
                if let Some(starting) = self.ports[port].starting.as_mut() {
                    starting.removed = true;
                }
            } else if !ejected {
                self.ports[port].view.clear();
                self.ports[port].starting = None;
            }
            self.ports[port].kernel_name = None;
            self.ports[port].waiting_since = None;
            // Its guard answer, if one is still coming, is about a stick that
            // is gone: dropped when it arrives.
            self.ports[port].inspecting = None;
            self.publish_port(port);
            // Failures that were waiting for a removal get their verdict now.
            for target in explained {
                if let Some(waiting) = self.pending.remove(&target) {
                    Box::pin(self.settle(waiting)).await;
                }
            }
        } else {
            for target in explained {
                if let Some(waiting) = self.pending.remove(&target) {
                    Box::pin(self.settle(waiting)).await;
                }
            }
            self.remove_unmapped_port(port);
            let _ = self.events.send(StationEvent::PortGone { label });
            self.publish_snapshot();
        }
        // A guard answer that waited for this stick's turn may go now.
        self.apply_inspections().await;
    }

    /// Removes an unmapped port entry, renumbering what points past it.
    fn remove_unmapped_port(&mut self, port: usize) {
        self.ports.remove(port);
        for present in self.present.values_mut() {
            if present.port > port {
                present.port -= 1;
            }
        }
        for slot in self.slots.values_mut() {
            if slot.port > port {
                slot.port -= 1;
            } else if slot.port == port {
                slot.port = usize::MAX;
            }
        }
        for finishing in self.finishing.values_mut() {
            if finishing.port > port {
                finishing.port -= 1;
            } else if finishing.port == port {
                finishing.port = usize::MAX;
            }
        }
    }

    /// The records' lane of `port`'s writes: mapped ports share the lanes
    /// round-robin by their place in the map (which never changes); an
    /// unmapped port's entry moves, so its lane comes from its label.
    fn lane(&self, port: usize) -> usize {
        let index = match self.ports.get(port) {
            Some(p) if p.view.mapped => port,
            Some(p) => p
                .view
                .label
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)),
            None => 0,
        };
        1 + index % PORT_LANES
    }

    /// Records the stick `device` in `port` (in the port's lane); its id
    /// comes back as [`Recorded::DeviceSeen`].
    async fn record_device(&self, port: usize, device: &PluggedDevice) {
        let journal = self.recorder.journal();
        let identity = device.identity.clone();
        let kernel_name = device.kernel_name.clone();
        let answers = self.recorded_tx.clone();
        self.recorder
            .push(self.lane(port), async move {
                let result = journal.device_seen(&identity).await;
                let _ = answers.send(Recorded::DeviceSeen {
                    kernel_name,
                    key: identity.key(),
                    result,
                });
            })
            .await;
    }

    // ----- commands ----------------------------------------------------------

    async fn on_command(&mut self, command: Command) {
        // Claims dropped before this command was sent are let go first: a
        // caller that heard its follow refused (its claim dropped before
        // the answer) and asks again finds the station free, whichever of
        // the loop's inputs it would have taken first.
        while let Ok(id) = self.claims_released_rx.try_recv() {
            self.on_claim_released(id).await;
        }
        // A stop that comes while the records take a run's start, or an arm
        // while they take its stop, waits for their answer and is handled
        // then, in the order they came: as when the loop awaited those
        // records, only without standing the station still. (A second arm
        // while one is being armed is refused, never queued.) So does an
        // operator's command for the run's sticks (start a port, retry the
        // failed) while a run is being armed, or while commands wait ahead
        // of it: it is for the run they will arm (or the error the records
        // give then). One that comes while a run is being stopped, with
        // nothing waiting, is refused (`StationError::Stopping`): no stick
        // starts under a run that is ending. A port that is unknown or a
        // master port is answered at once, whatever the run. While a claim
        // to arm is held (`ArmClaim`) the station is as while a run is
        // being armed: the claim's own arm is the only one taken (and
        // waits for a stop's record as any arm), and a stop, a port's
        // start and a retry wait for the run it arms.
        // A stop while a run is only claimed (its caller readies the image:
        // a followed download waits for its first bytes, which a stalled
        // or failing server may never send) stops the arming itself, at
        // once: the caller is told to give up, and its arm is refused if
        // it comes all the same. (Waiting for that run would hold the
        // operator's stop for as long as the server takes.)
        let only_claimed = self.arming.is_none()
            && self
                .claim
                .as_ref()
                .is_some_and(|c| c.view.state == ArmingState::Claimed);
        if let (Command::Stop(..), true) = (&command, only_claimed) {
            let Command::Stop(note, reply) = command else {
                unreachable!("matched just above")
            };
            let claim = self.claim.take().expect("checked just above");
            let _ = claim.stop.send(true);
            self.stopped_claim = Some(claim.id);
            tracing::info!(image = %claim.view.image_name, "the run being armed was stopped by the operator");
            self.log_action(OperatorAction::Stop, note).await;
            // Answered once the snapshot no longer shows the run being
            // armed (and what waited for it has heard).
            self.claim_ended().await;
            let _ = reply.send(Ok(()));
            return;
        }
        let claimed = self.claim.is_some();
        let waits = match &command {
            Command::Stop(..) => self.arming.is_some() || claimed,
            Command::Arm(_, claim, _) | Command::ArmFollowing(_, claim, _) => {
                (!claimed || self.holds(claim.as_ref()))
                    && self.run.as_ref().is_some_and(|r| r.stopping.is_some())
            }
            Command::StartPort(label, _) => {
                self.writable_port(label).is_ok()
                    && (self.arming.is_some() || claimed || !self.held_commands.is_empty())
            }
            Command::RetryFailed(_) => {
                self.arming.is_some() || claimed || !self.held_commands.is_empty()
            }
            _ => false,
        };
        if waits {
            // The claim's own arm, waiting for the last run's stop to be
            // recorded: its caller has readied the image (a followed run's
            // import has begun), so the snapshot no longer says it is
            // claimed but what it waits for.
            if let Command::Arm(_, claim, _) | Command::ArmFollowing(_, claim, _) = &command {
                if self.holds(claim.as_ref()) {
                    let image_sha256 = match &command {
                        Command::Arm(request, ..) => Some(request.image.manifest.sha256()),
                        Command::ArmFollowing(request, ..) => Some(request.provisional),
                        _ => None,
                    };
                    if let Some(held) = self.claim.as_mut() {
                        held.view.state = ArmingState::WaitingForStop;
                        held.view.image_sha256 = image_sha256;
                    }
                    self.publish_arming();
                }
            }
            self.held_commands.push(command);
            return;
        }
        // The arm of a claim the operator stopped: refused.
        if let Command::Arm(_, Some(claim), _) | Command::ArmFollowing(_, Some(claim), _) = &command
        {
            if self.stopped_claim == Some(claim.id) {
                let (claim, reply) = match command {
                    Command::Arm(_, claim, reply) | Command::ArmFollowing(_, claim, reply) => {
                        (claim, reply)
                    }
                    _ => unreachable!("matched just above"),
                };
                if let Some(claim) = claim {
                    claim.taken();
                }
                let _ = reply.send(Err(StationError::ArmStopped));
                return;
            }
        }
        match command {
            Command::Arm(request, claim, reply) => {
                let handed = self.hand_in(claim);
                match self.arm(*request).await {
                    Ok((start, fanout)) => {
                        self.record_run_start(start, fanout, None, None, reply)
                            .await
                    }
                    Err(error) => {
                        // The snapshot no longer shows the claim once its
                        // caller hears.
                        if handed {
                            self.claim_ended().await;
                        }
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::Claim(view, reply) => match self.may_claim() {
                Ok(()) => {
                    // The caller holds a handle: its commands are open
                    // (if not, it hears that the station has stopped).
                    let Some(commands) = self.claim_commands.upgrade() else {
                        return;
                    };
                    self.claim_seq += 1;
                    let id = self.claim_seq;
                    let (stop, stop_rx) = watch::channel(false);
                    self.claim = Some(Claim { id, stop, view });
                    self.publish_arming();
                    // A caller gone before the answer drops the claim,
                    // which releases it.
                    let _ = reply.send(Ok(ArmClaim {
                        id,
                        commands,
                        released: self.claims_released_tx.clone(),
                        handed: false,
                        stop: stop_rx,
                    }));
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Command::Stop(note, reply) => {
                let stoppable = match self.run.as_ref() {
                    Some(run) if run.stopping.is_some() => Err(StationError::Stopping(run.view.id)),
                    Some(run) if run.view.armed => Ok(()),
                    _ => Err(StationError::NotArmed),
                };
                if let Err(error) = stoppable {
                    let _ = reply.send(Err(error));
                    return;
                }
                // The sticks stop being written at once; the run is shown
                // ended, and the operator answered, once the records hold
                // its end (written after their action, in the same lane).
                for slot in self.slots.values() {
                    slot.cancel();
                }
                self.log_action(OperatorAction::Stop, note.clone()).await;
                // No note is no detail: the reason says "operator" already.
                let detail = (!note.trim().is_empty()).then_some(note);
                self.stop(StopReason::Operator, detail, Some(reply)).await;
            }
            Command::StartPort(label, reply) => match self.start_port(&label).await {
                Ok(action) => self.defer(Reply::StartPort(reply), Some(action)),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Command::RunRefused(refusal, reply) => {
                // Answered by the writer once written, in order with the
                // station's other records; the loop goes on meanwhile.
                let event = JournalEvent::RunRefused(*refusal);
                let journal = self.recorder.journal();
                self.recorder
                    .push(STATION_LANE, async move {
                        let recorded = journal.event(&event).await;
                        let _ = reply.send(recorded.map_err(StationError::from));
                    })
                    .await;
            }
            Command::RetryFailed(reply) => match self.retry_failed().await {
                Ok((labels, action)) => self.defer(Reply::RetryFailed(labels, reply), Some(action)),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Command::MasterStick(label, reply) => {
                let _ = reply.send(self.master_stick(label.as_deref()));
            }
            Command::Capture {
                label,
                device_key,
                progress,
            } => self.capture_progress(&label, &device_key, progress),
            Command::ArmFollowing(request, claim, reply) => {
                let handed = self.hand_in(claim);
                match self.arm_following(*request) {
                    Ok((start, fanout, followed, import)) => {
                        self.record_run_start(start, fanout, Some(followed), Some(import), reply)
                            .await
                    }
                    Err(error) => {
                        // The snapshot no longer shows the claim once its
                        // caller hears.
                        if handed {
                            self.claim_ended().await;
                        }
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::ImportProgress {
                run_id,
                done,
                total,
            } => {
                let Some(run) = self.run.as_mut().filter(|r| r.view.id == run_id) else {
                    return;
                };
                let Some(import) = run.view.import.as_mut() else {
                    return;
                };
                if import.state == RunImportState::Importing
                    && (import.done, import.total) != (done, total)
                {
                    import.done = done;
                    import.total = total;
                    self.publish_run();
                }
            }
            Command::ImportEnded(run_id, end, reply) => {
                self.import_ended(run_id, *end, reply).await
            }
        }
    }

    /// See [`StationHandle::capture_progress`].
    fn capture_progress(&mut self, label: &str, device_key: &str, progress: Option<Progress>) {
        let Some(port) = self.ports.iter().position(|p| p.view.label == label) else {
            return;
        };
        let same_stick = self
            .stick_in(port)
            .is_some_and(|(_, device, _)| device.identity.key() == device_key);
        if !self.ports[port].view.master || !same_stick {
            return;
        }
        let view = &mut self.ports[port].view;
        match progress {
            Some(progress) => {
                view.state = PortState::Capturing;
                view.progress = Some(progress);
            }
            None if view.state == PortState::Capturing => {
                view.state = PortState::Master;
                view.progress = None;
            }
            None => return,
        }
        self.publish_port(port);
    }

    fn master_stick(&self, label: Option<&str>) -> Result<MasterStick, StationError> {
        let port = match label {
            Some(label) => {
                let port = self
                    .ports
                    .iter()
                    .position(|p| p.view.label == label)
                    .ok_or_else(|| StationError::UnknownPort(label.to_string()))?;
                if !self.ports[port].view.master {
                    return Err(StationError::NotMaster(label.to_string()));
                }
                port
            }
            None => {
                let masters: Vec<usize> = (0..self.ports.len())
                    .filter(|&p| self.ports[p].view.master)
                    .collect();
                let first = *masters.first().ok_or(StationError::NoMasterPort)?;
                masters
                    .into_iter()
                    .find(|&p| self.ports[p].kernel_name.is_some())
                    .unwrap_or(first)
            }
        };
        let label = self.ports[port].view.label.clone();
        match self.stick_in(port) {
            Some((_, device, _)) => Ok(MasterStick { label, device }),
            None => Err(StationError::NoStick(label)),
        }
    }

    /// Whether `claim` is the claim the station holds for its caller.
    fn holds(&self, claim: Option<&ArmClaim>) -> bool {
        claim.is_some_and(|c| self.claim.as_ref().is_some_and(|held| held.id == c.id))
    }

    /// Takes the claim an arm comes with: if it is the one the station
    /// holds, it is spent (nothing else was armed since it was granted, and
    /// the arm is judged as any). Answers whether it was. One the station
    /// does not hold (none should come: a claim not yet dropped is the one
    /// it holds) is let go without a release, its arm judged as any.
    fn hand_in(&mut self, claim: Option<ArmClaim>) -> bool {
        let Some(claim) = claim else {
            return false;
        };
        let held = self.holds(Some(&claim));
        claim.taken();
        if held {
            self.claim = None;
        }
        held
    }

    /// A claim ended without a run being armed (its arm failed before the
    /// records were asked, or its caller dropped it): the snapshot no
    /// longer shows it, and the commands that waited for its run are
    /// handled now (a stop hears that no run is armed).
    async fn claim_ended(&mut self) {
        self.publish_arming();
        Box::pin(self.handle_held_commands()).await;
    }

    /// A claim was dropped by its caller without its arm ([`ArmClaim`]).
    async fn on_claim_released(&mut self, id: u64) {
        if self.claim.as_ref().is_some_and(|c| c.id == id) {
            self.claim = None;
            self.claim_ended().await;
        }
    }

    /// Whether a claim to arm may be granted now: as an arm
    /// ([`Self::may_arm`]), except that a run being stopped is no
    /// obstacle (its arm waits for the stop's record, as an arm does),
    /// unless an arm already waits for it: that one is armed first.
    fn may_claim(&self) -> Result<(), StationError> {
        let arm_waits = self
            .held_commands
            .iter()
            .any(|c| matches!(c, Command::Arm(..) | Command::ArmFollowing(..)));
        if arm_waits {
            return Err(StationError::Arming);
        }
        match self.may_arm() {
            Err(StationError::Stopping(_)) => Ok(()),
            other => other,
        }
    }

    /// Whether a run may be armed now: none is armed, being armed (or
    /// claimed) or being stopped.
    fn may_arm(&self) -> Result<(), StationError> {
        if self.arming.is_some() || self.claim.is_some() {
            return Err(StationError::Arming);
        }
        match self.run.as_ref() {
            Some(run) if run.stopping.is_some() => Err(StationError::Stopping(run.view.id)),
            Some(run) if run.view.armed => Err(StationError::AlreadyArmed(run.view.id)),
            _ => Ok(()),
        }
    }

    /// See [`StationHandle::arm`]: the run's start and its engine, once the
    /// image is open; recorded by [`Self::record_run_start`].
    async fn arm(&mut self, request: ArmRequest) -> Result<(RunStart, Fanout), StationError> {
        self.may_arm()?;
        let mut engine = self.engine_options(&request.options);
        if request.options.sparse != request.sparse.is_some() {
            return Err(StationError::Source(EngineError::SourceOpen {
                path: request.image.path.clone(),
                detail: "a sparse run needs the image's block map, and only a sparse run takes one"
                    .into(),
            }));
        }
        engine.sparse = request.sparse.clone();
        // Opening the image file is the engine's blocking work: off this task.
        let fanout = {
            let image = request.image.clone();
            let events = self.engine_tx.clone();
            match tokio::task::spawn_blocking(move || Fanout::new(&image, engine, events)).await {
                Ok(fanout) => fanout?,
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            }
        };
        let manifest = &request.image.manifest;
        let start = RunStart {
            image_sha256: manifest.sha256(),
            image_name: request.image_name.clone(),
            image_size: manifest.size(),
            options: request.options.clone(),
        };
        Ok((start, fanout))
    }

    /// The engine's options for a run with `options`.
    fn engine_options(&self, options: &RunOptions) -> EngineOptions {
        let mut engine = self.settings.engine.clone();
        engine.verify = options.verify;
        engine.sample_percent = options.sample.map(SamplePercent::percent);
        engine.audit = options.audit;
        engine
    }

    /// See [`StationHandle::arm_following`]: the run's start, its engine,
    /// the import it follows and its view; recorded by
    /// [`Self::record_run_start`].
    #[allow(clippy::type_complexity)]
    fn arm_following(
        &mut self,
        request: FollowRequest,
    ) -> Result<(RunStart, Fanout, Followed, Box<RunImport>), StationError> {
        self.may_arm()?;
        if request.options.sparse != request.sparse.is_some() {
            return Err(StationError::Source(EngineError::SourceFailed {
                detail: "a sparse run needs the image's block map, and only a sparse run takes one"
                    .into(),
            }));
        }
        let mut engine = self.engine_options(&request.options);
        engine.sparse = request.sparse.clone();
        // A compressed image's size is known at its end; its map says it now.
        let size = request
            .size
            .or_else(|| request.sparse.as_ref().map(|r| r.image_size()));
        let fanout =
            Fanout::following(request.feed.clone(), engine.clone(), self.engine_tx.clone())?;
        let start = RunStart {
            image_sha256: request.provisional,
            image_name: request.image_name.clone(),
            image_size: size.unwrap_or(0),
            options: request.options.clone(),
        };
        let import = RunImport {
            source: request.source.clone(),
            state: RunImportState::Importing,
            done: 0,
            total: request.total,
            reread_bytes: 0,
            error: None,
        };
        let followed = Followed {
            feed: request.feed,
            provisional: request.provisional,
            engine,
        };
        Ok((start, fanout, followed, Box::new(import)))
    }

    /// Hands the run's start to the records (with the operator's action
    /// of arming it, right after it) and goes on: the run is armed, and
    /// `reply` answered, once they hold it ([`Self::on_run_started`]). The
    /// snapshot says a run is being armed meanwhile ([`Arming`]).
    async fn record_run_start(
        &mut self,
        start: RunStart,
        fanout: Fanout,
        followed: Option<Followed>,
        import: Option<Box<RunImport>>,
        reply: oneshot::Sender<Result<RunView, StationError>>,
    ) {
        let following = followed.is_some();
        let source = import.as_ref().map(|i| i.source.clone());
        let view = ArmingView {
            state: ArmingState::Recording,
            image_sha256: Some(start.image_sha256),
            image_name: start.image_name.clone(),
            source: source.clone(),
        };
        let record = start.clone();
        let journal = self.recorder.journal();
        let answers = self.recorded_tx.clone();
        self.arming = Some(Arming {
            view,
            start,
            fanout,
            followed,
            import,
            reply,
        });
        self.publish_arming();
        self.recorder
            .push(STATION_LANE, async move {
                let result = if following {
                    journal.run_started_following(&record).await
                } else {
                    journal.run_started(&record).await
                };
                if let Ok(id) = result {
                    let event = JournalEvent::OperatorAction {
                        action: OperatorAction::Arm,
                        detail: arm_detail(id, &record, source.as_deref()),
                    };
                    if let Err(error) = journal.event(&event).await {
                        tracing::error!(%error, "cannot record an operator's action");
                    }
                }
                let _ = answers.send(Recorded::RunStarted(result));
            })
            .await;
    }

    /// The records answered the start of the run being armed: it is armed
    /// (its reply waits for its present sticks' guard answers, as
    /// [`Reply::Arm`]), or it is dropped and its caller hears why.
    async fn on_run_started(&mut self, result: Result<RunId, JournalError>) {
        let Some(arming) = self.arming.take() else {
            return;
        };
        match result {
            Ok(id) => {
                let view = self
                    .armed(
                        id,
                        arming.start,
                        arming.fanout,
                        arming.followed,
                        arming.import,
                    )
                    .await;
                self.publish_arming();
                self.defer(Reply::Arm(Box::new(view), arming.reply), None);
            }
            Err(error) => {
                tracing::error!(%error, image = %arming.view.image_name, "cannot record a run's start; not armed");
                self.publish_arming();
                let _ = arming.reply.send(Err(error.into()));
            }
        }
    }

    /// Run `id` (recorded as `start`) is armed: shown, and the sticks
    /// present are started (none once the station is stopping).
    async fn armed(
        &mut self,
        id: RunId,
        start: RunStart,
        fanout: Fanout,
        followed: Option<Followed>,
        import: Option<Box<RunImport>>,
    ) -> RunView {
        let view = RunView {
            id,
            image_sha256: start.image_sha256,
            image_name: start.image_name,
            image_size: start.image_size,
            remaining: start.options.target_count,
            options: start.options,
            armed: true,
            passed: 0,
            failed: 0,
            interrupted: 0,
            refused: 0,
            active: 0,
            bytes_written: 0,
            stop_reason: None,
            import,
            recording: false,
        };
        self.run = Some(ActiveRun {
            view: view.clone(),
            fanout: Some(fanout),
            followed,
            image_size: start.image_size,
            passed: HashMap::new(),
            shared_serials: HashSet::new(),
            retries_made: HashMap::new(),
            stopping: None,
            naming: None,
        });
        self.publish_run();
        // Sticks already present are written too: those that were only
        // detected or refused, and those with a verdict of an earlier run (a
        // pass of another run says nothing about this run's image). An ejected
        // stick cannot be, even while the system's removal event for it is
        // still on its way: it keeps showing its pass until it is pulled.
        let candidates: Vec<usize> = (0..self.ports.len())
            .filter(|&p| {
                !self.stopping
                    && self.ports[p].kernel_name.is_some()
                    && !self.ports[p].view.ejected
                    && matches!(
                        self.ports[p].view.state,
                        PortState::Detected
                            | PortState::Refused
                            | PortState::Passed
                            | PortState::Failed
                    )
            })
            .collect();
        for port in candidates {
            self.try_start(port, false).await;
            self.publish_port(port);
        }
        self.release_feed_when_started();
        self.run.as_ref().map_or(view, |r| r.view.clone())
    }

    /// A followed run lets go of its import's reservation
    /// ([`ImageFeed::reserve_for`], taken by the caller before the import
    /// began, held until let go) once no stick of the run is on its way to an
    /// attempt: none waits for the guard's answer or for the records to take
    /// its start. Then every stick that was present when it was armed has
    /// registered with the feed (an attempt registers when it starts) or
    /// was refused, and the import need wait for nobody else. Until then the
    /// sticks that started wait at the first chunks with the import, so
    /// that a stick whose start comes later (its guard answer or its start's
    /// record later than another's) still finds them held instead of reading
    /// again from the file what the import passed. With none to start (none
    /// present, or each refused), the import goes on at once.
    fn release_feed_when_started(&self) {
        let Some(run) = self.run.as_ref() else {
            return;
        };
        let Some(feed) = run.feed() else {
            return;
        };
        let id = run.view.id;
        let inspecting = self
            .ports
            .iter()
            .any(|p| p.inspecting.as_ref().is_some_and(|i| i.run_id == id));
        // A start being recorded is on its way to an attempt too.
        let starting = self
            .ports
            .iter()
            .any(|p| p.starting.as_ref().is_some_and(|s| s.run_id == id));
        if !inspecting && !starting {
            feed.unreserve();
        }
    }

    /// See [`StationHandle::import_ended`]. Imported: the image is handed
    /// to the records as the run's and the loop goes on; the rest (the
    /// run's view names it, the feed ends, `reply`) waits for their answer
    /// ([`Self::on_image_known`]). Failed: the run stops, `reply` once its
    /// stop is recorded.
    async fn import_ended(
        &mut self,
        run_id: RunId,
        end: ImportEnd,
        reply: oneshot::Sender<Result<(), StationError>>,
    ) {
        let Some(run) = self.run.as_mut().filter(|r| r.view.id == run_id) else {
            let _ = reply.send(Err(StationError::NotArmed));
            return;
        };
        let Some(followed) = run.followed.take() else {
            let _ = reply.send(Err(StationError::NotArmed));
            return;
        };
        if !run.live() {
            // Stopped (or stopping) before its import ended: the feed has
            // failed already and nobody follows it; the view says how the
            // import ended.
            if let Some(import) = run.view.import.as_mut() {
                match &end {
                    ImportEnd::Failed(reason) => {
                        import.state = RunImportState::Failed;
                        import.error = Some(reason.clone());
                    }
                    ImportEnd::Imported { .. } => import.state = RunImportState::Done,
                }
            }
            self.publish_run();
            let _ = reply.send(Ok(()));
            return;
        }
        match end {
            ImportEnd::Failed(reason) => {
                followed.feed.fail(reason.clone());
                if let Some(import) = run.view.import.as_mut() {
                    import.state = RunImportState::Failed;
                    import.error = Some(reason.clone());
                }
                // The attempts see the failed feed and end as source
                // failures; the run stops with the import's reason.
                for slot in self.slots.values() {
                    slot.cancel();
                }
                self.stop(StopReason::SourceFailed, Some(reason), Some(reply))
                    .await;
            }
            ImportEnd::Imported { image, name } => {
                let manifest = image.manifest.clone();
                let known = RunStart {
                    image_sha256: manifest.sha256(),
                    image_name: name.clone(),
                    image_size: manifest.size(),
                    options: run.view.options.clone(),
                };
                // Recorded before the feed ends: no verdict comes before the
                // run names its image. Shown meanwhile: imported, not yet
                // recorded.
                if let Some(import) = run.view.import.as_mut() {
                    import.state = RunImportState::Recording;
                }
                let provisional = followed.provisional;
                run.naming = Some(Naming {
                    followed,
                    image,
                    name,
                    reply,
                });
                let journal = self.recorder.journal();
                let answers = self.recorded_tx.clone();
                self.recorder
                    .push(STATION_LANE, async move {
                        let result = journal.run_image_known(run_id, provisional, &known).await;
                        let _ = answers.send(Recorded::ImageKnown { run_id, result });
                    })
                    .await;
                self.publish_run();
            }
        }
    }

    /// The records answered whether they hold a followed run's image as
    /// the run's ([`Naming`]): if they do, the run's view names it, sticks
    /// started from now on read the cached image and the import's feed
    /// ends; if not, the run ends as a failed import ends it (its feed
    /// fails, every attempt following it fails as a source failure, and it
    /// stops as `source_failed` with the records' refusal). The importer
    /// hears which.
    async fn on_image_known(&mut self, run_id: RunId, result: Result<(), JournalError>) {
        let Some(run) = self.run.as_mut().filter(|r| r.view.id == run_id) else {
            return;
        };
        let Some(Naming {
            followed,
            image,
            name,
            reply,
        }) = run.naming.take()
        else {
            return;
        };
        if let Err(error) = result {
            let reason = format!("the image could not be recorded: {error}");
            followed.feed.fail(reason.clone());
            // Shown as it is: the import's image is not the run's in the
            // records, and its sticks fail as source failures.
            if let Some(import) = run.view.import.as_mut() {
                import.state = RunImportState::Failed;
                import.error = Some(reason.clone());
            }
            if !run.live() {
                // Stopped meanwhile: its end is recorded already.
                self.publish_run();
                let _ = reply.send(Err(error.into()));
                return;
            }
            // Ended as a failed import ends its run (see `import_ended`):
            // the station's failure, not the sticks'. The attempts see the
            // failed feed and end as source failures; the run stops as
            // `source_failed` with the records' refusal as its reason. The
            // importer hears the refusal once the stop is recorded.
            for slot in self.slots.values() {
                slot.cancel();
            }
            let (stopped_tx, stopped) = oneshot::channel();
            self.stop(StopReason::SourceFailed, Some(reason), Some(stopped_tx))
                .await;
            let refused = StationError::from(error);
            tokio::spawn(async move {
                let _ = stopped.await;
                let _ = reply.send(Err(refused));
            });
            return;
        }
        if !run.live() {
            // Stopped meanwhile (its feed failed then): the records name
            // the image all the same.
            if let Some(import) = run.view.import.as_mut() {
                import.state = RunImportState::Done;
            }
            self.publish_run();
            let _ = reply.send(Ok(()));
            return;
        }
        let manifest = image.manifest.clone();
        // Sticks started from now on read the cached image (compared with
        // it like any run's); those under way keep following the feed,
        // whose file is the same bytes.
        let cached = {
            let events = self.engine_tx.clone();
            let engine = followed.engine.clone();
            let image = image.clone();
            tokio::task::spawn_blocking(move || Fanout::new(&image, engine, events)).await
        };
        let Some(run) = self.run.as_mut().filter(|r| r.view.id == run_id) else {
            let _ = reply.send(Err(StationError::NotArmed));
            return;
        };
        match cached {
            Ok(Ok(fanout)) if run.fanout.is_some() => run.fanout = Some(fanout),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "the cached image cannot be opened; later sticks follow the import's file")
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
        run.view.image_sha256 = manifest.sha256();
        run.view.image_name = name;
        run.view.image_size = manifest.size();
        run.image_size = manifest.size();
        if let Some(import) = run.view.import.as_mut() {
            import.state = RunImportState::Done;
        }
        // The slots under way give their verdicts about the image now named.
        let verdict_run = VerdictRun::of(&run.view);
        for slot in self.slots.values_mut().filter(|s| s.run_id == run_id) {
            slot.verdict_run = verdict_run.clone();
        }
        self.publish_run();
        let ended = followed.feed.finish(manifest.sha256()).map_err(|error| {
            StationError::Source(EngineError::SourceFailed {
                detail: error.to_string(),
            })
        });
        let _ = reply.send(ended);
    }

    /// Stops the run: nothing more starts under it at once (its followed
    /// import's feed fails, guard answers still out are dropped, waiting
    /// sticks go back to detected), and its stop is handed to the records;
    /// it is shown ended, and `reply` answered, once they hold it
    /// ([`Self::on_run_stopped`]). The caller has told its attempts to stop
    /// when it should (an operator's stop, a source failure).
    async fn stop(
        &mut self,
        reason: StopReason,
        note: Option<String>,
        reply: Option<oneshot::Sender<Result<(), StationError>>>,
    ) {
        let Some(run) = self.run.as_mut().filter(|r| r.live()) else {
            if let Some(reply) = reply {
                let _ = reply.send(Err(StationError::NotArmed));
            }
            return;
        };
        run.stopping = Some(Stopping {
            reason,
            note: note.clone(),
            replies: reply.into_iter().collect(),
        });
        run.view.recording = true;
        run.fanout = None;
        // Nothing passes on an import the run no longer follows: its
        // attempts stop as source failures, and its importer sees the run
        // stopped and abandons the import (the view says `importing` until
        // the importer says how it ended).
        if let Some(feed) = run.feed() {
            feed.fail(format!(
                "run {} was stopped: {}",
                run.view.id,
                reason.describe()
            ));
        }
        let id = run.view.id;
        // Nothing waits for a run that is over, nor starts under it: guard
        // answers still out are dropped when they come.
        for port in &mut self.ports {
            port.inspecting = None;
        }
        self.release_replies();
        for port in 0..self.ports.len() {
            if self.ports[port].view.state == PortState::Waiting {
                self.ports[port].view.state = PortState::Detected;
                self.ports[port].waiting_since = None;
                self.publish_port(port);
            }
        }
        self.publish_run();
        let journal = self.recorder.journal();
        let answers = self.recorded_tx.clone();
        self.recorder
            .push(STATION_LANE, async move {
                let result = journal.run_stopped(id, reason, note.as_deref()).await;
                let _ = answers.send(Recorded::RunStopped { run_id: id, result });
            })
            .await;
    }

    /// The records answered a run's stop ([`Stopping`]): it is shown
    /// ended. Refused, it is shown ended all the same (nothing more is
    /// written under it) with [`RunView::recording`] still set, its stop
    /// written again at each heartbeat until they take it; its callers hear
    /// of the failure.
    fn on_run_stopped(&mut self, run_id: RunId, result: Result<(), JournalError>) {
        let Some(run) = self.run.as_mut().filter(|r| r.view.id == run_id) else {
            return;
        };
        let Some(stopping) = run.stopping.take() else {
            return;
        };
        run.view.armed = false;
        run.view.stop_reason = Some(stopping.reason);
        let result = match result {
            Ok(()) => {
                run.view.recording = false;
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, %run_id, "cannot record a run's stop; retrying at each heartbeat");
                self.unrecorded_stops
                    .push((run_id, stopping.reason, stopping.note));
                Err(StationError::from(error))
            }
        };
        self.publish_run();
        for reply in stopping.replies {
            let _ = reply.send(result.clone());
        }
    }

    /// See [`StationHandle::start_port`]: the operator's action (its
    /// number, [`Self::log_action`]) once the stick is asked about.
    async fn start_port(&mut self, label: &str) -> Result<u64, StationError> {
        let port = self.writable_port(label)?;
        self.live_run()?;
        let state = self.ports[port].view.state;
        if state == PortState::Empty || state.is_busy() {
            return Err(StationError::PortNotReady {
                label: label.to_string(),
                state,
            });
        }
        let action = self
            .log_action(OperatorAction::StartPort, label.to_string())
            .await;
        self.try_start(port, true).await;
        self.publish_port(port);
        Ok(action)
    }

    /// The port labelled `label`, if its stick may be written on request:
    /// known, and not a master port.
    fn writable_port(&self, label: &str) -> Result<usize, StationError> {
        let port = self
            .ports
            .iter()
            .position(|p| p.view.label == label)
            .ok_or_else(|| StationError::UnknownPort(label.to_string()))?;
        if self.ports[port].view.master {
            return Err(StationError::MasterPort(label.to_string()));
        }
        Ok(port)
    }

    /// Whether an operator's command may start sticks under the current
    /// run: it is armed and not being stopped (a run whose stop is being
    /// recorded says so: it is ending, nothing more starts under it).
    fn live_run(&self) -> Result<(), StationError> {
        match self.run.as_ref() {
            Some(run) if run.stopping.is_some() => Err(StationError::Stopping(run.view.id)),
            Some(run) if run.live() => Ok(()),
            _ => Err(StationError::NotArmed),
        }
    }

    /// The ports whose stick is still in them and failed in the armed run
    /// for a reason that may pass.
    fn retryable_ports(&self) -> Vec<usize> {
        let Some(run) = self.run.as_ref().filter(|r| r.live()) else {
            return Vec::new();
        };
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, p)| p.view.state == PortState::Failed && p.kernel_name.is_some())
            .filter(|(_, p)| {
                p.view
                    .verdict_run
                    .as_ref()
                    .is_some_and(|v| v.run_id == run.view.id)
            })
            .filter(|(_, p)| {
                p.view
                    .verdict
                    .as_ref()
                    .and_then(Verdict::failure)
                    .is_some_and(|f| f.reason.is_retryable())
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// See [`StationHandle::retry_failed`]: the ports started again and
    /// the operator's action ([`Self::log_action`]).
    async fn retry_failed(&mut self) -> Result<(Vec<String>, u64), StationError> {
        self.live_run()?;
        let ports = self.retryable_ports();
        let labels: Vec<String> = ports
            .iter()
            .map(|&p| self.ports[p].view.label.clone())
            .collect();
        let action = self
            .log_action(OperatorAction::RetryFailed, labels.join(" "))
            .await;
        for port in ports {
            self.try_start(port, true).await;
            self.publish_port(port);
        }
        Ok((labels, action))
    }

    // ----- attempts ----------------------------------------------------------

    /// The stick present in `port`: its kernel name, what hotplug said of it,
    /// and its record.
    fn stick_in(&self, port: usize) -> Option<(String, PluggedDevice, Option<DeviceId>)> {
        let kernel_name = self.ports[port].kernel_name.clone()?;
        let present = self.present.get(&kernel_name)?;
        Some((kernel_name, present.device.clone(), present.device_id))
    }

    /// Asks the guard about the stick in `port` under the armed run, on a
    /// blocking thread; its answer starts the stick, makes it wait or refuses
    /// it ([`Self::finish_start`]). `explicit`: the operator asked for this port
    /// (guard rule 6).
    async fn try_start(&mut self, port: usize, explicit: bool) {
        // A master port's stick is never written, whoever asks.
        if self.ports[port].view.master {
            return;
        }
        let Some((_, device, _)) = self.stick_in(port) else {
            return;
        };
        let Some(run) = self.run.as_ref().filter(|r| r.live()) else {
            return;
        };
        let run_id = run.view.id;
        let request = GuardRequest {
            image_size: run.image_size,
            armed_run: true,
            explicit_operator_request: explicit,
        };
        // An inspection for this run is on its way already: its answer will
        // do, unless the operator now asks explicitly and it was not asked so.
        if let Some(awaited) = &self.ports[port].inspecting {
            if awaited.run_id == run_id && (awaited.request.explicit_operator_request || !explicit)
            {
                return;
            }
        }
        self.inspection_seq += 1;
        let token = self.inspection_seq;
        self.ports[port].inspecting = Some(Inspection {
            token,
            run_id,
            request,
            answer: None,
        });
        // Blocking: sysfs and the proc files (see `Inspection`), on a thread
        // of its own rather than tokio's blocking pool: an inspection stuck in
        // the kernel is abandoned like a stuck attempt thread, and nothing
        // (not the runtime's shutdown) waits for it.
        let access = self.access.clone();
        let policy = self.settings.policy.clone();
        let answers = self.inspected_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("guard-inspect".into())
            .spawn(move || {
                let answer = guard_device(&*access, &device, &policy, &request);
                let _ = answers.send(Inspected {
                    kernel_name: device.kernel_name,
                    token,
                    answer,
                });
            });
        if let Err(error) = spawned {
            // The station's own shortage, not the stick's: nothing is recorded
            // against it; it stays detected (the operator may ask again).
            tracing::error!(%error, port = %self.ports[port].view.label, "cannot start the guard's inspection; not writing the stick");
            self.ports[port].inspecting = None;
        }
        // A request this one replaced may have held answers back.
        self.apply_inspections().await;
    }

    /// The guard answered about a stick: kept on its port, if the port still
    /// waits for this answer (the stick may have been pulled, replaced or asked
    /// about again meanwhile), then applied when its turn comes.
    async fn on_inspected(&mut self, inspected: Inspected) {
        let Some(port) = self.present.get(&inspected.kernel_name).map(|p| p.port) else {
            return;
        };
        match self.ports.get_mut(port).and_then(|p| p.inspecting.as_mut()) {
            Some(awaited) if awaited.token == inspected.token => {
                awaited.answer = Some(inspected.answer);
            }
            _ => return,
        }
        self.apply_inspections().await;
    }

    /// Applies the guard's answers that are in, in the order they were asked:
    /// an answer still out holds back the later ones (not the station: only
    /// their starts, and the replies that wait for them).
    async fn apply_inspections(&mut self) {
        while let Some((_, port, answered)) = self.oldest_inspection() {
            if !answered {
                break;
            }
            let Some(inspection) = self.ports[port].inspecting.take() else {
                break;
            };
            self.finish_start(port, inspection).await;
            self.publish_port(port);
        }
        self.record_starts().await;
        self.release_feed_when_started();
        self.release_replies();
    }

    /// The inspection asked first among those awaited: its token, its port,
    /// and whether its answer is in.
    fn oldest_inspection(&self) -> Option<(u64, usize, bool)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(port, p)| {
                p.inspecting
                    .as_ref()
                    .map(|i| (i.token, port, i.answer.is_some()))
            })
            .min()
    }

    /// Holds `reply` back until the guard answered every request made so
    /// far and the records hold the operator's `action`, if any.
    fn defer(&mut self, reply: Reply, action: Option<u64>) {
        self.deferred.push(DeferredReply {
            after: self.inspection_seq,
            action,
            reply,
        });
        self.release_replies();
    }

    /// Sends the held replies whose guard answers have all been applied (or
    /// are no longer awaited).
    fn release_replies(&mut self) {
        let oldest = self
            .oldest_inspection()
            .map_or(u64::MAX, |(token, _, _)| token);
        let in_flight = &self.actions_in_flight;
        let (ready, waiting) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|d| {
                d.after < oldest && d.action.is_none_or(|action| !in_flight.contains(&action))
            });
        self.deferred = waiting;
        for deferred in ready {
            match deferred.reply {
                Reply::Arm(view, reply) => {
                    // The run as it is now, with its sticks started, if it is
                    // still the one armed.
                    let view = self
                        .run
                        .as_ref()
                        .filter(|r| r.view.id == view.id)
                        .map_or(*view, |r| r.view.clone());
                    let _ = reply.send(Ok(view));
                }
                Reply::StartPort(reply) => {
                    let _ = reply.send(Ok(()));
                }
                Reply::RetryFailed(labels, reply) => {
                    let _ = reply.send(Ok(labels));
                }
            }
        }
    }

    /// Starts the stick in `port`, makes it wait for the target count, or
    /// records its refusal, by the guard's answer in `inspection`; nothing when
    /// the run it was asked for is no longer armed.
    async fn finish_start(&mut self, port: usize, inspection: Inspection) {
        let Some((kernel_name, device, device_id)) = self.stick_in(port) else {
            return;
        };
        let Some(run) = self
            .run
            .as_ref()
            .filter(|r| r.live() && r.view.id == inspection.run_id)
        else {
            return;
        };
        let run_id = run.view.id;
        let request = inspection.request;
        let Some(answer) = inspection.answer else {
            return;
        };
        let label = self.ports[port].view.label.clone();
        let key = device.identity.key();
        if let Err(refusal) = answer {
            tracing::warn!(port = %label, device = %key, code = %refusal.kind(), %refusal, "refused by the target guard");
            self.ports[port].waiting_since = None;
            let view = &mut self.ports[port].view;
            view.state = PortState::Refused;
            view.refusal = Some(refusal.to_record());
            if let Some(run) = self.run.as_mut() {
                run.view.refused += 1;
            }
            let write = self.record_refusal(device_id, run_id, &label, &device, refusal);
            self.recorder.push(self.lane(port), write).await;
            self.publish_run();
            return;
        }
        // With a target count, passes plus attempts in flight may already be
        // enough: then the stick waits for one of them to fail.
        if self.run.as_ref().is_some_and(ActiveRun::target_covered) {
            let port_state = &mut self.ports[port];
            if port_state.waiting_since.is_none() {
                self.wait_seq += 1;
                port_state.waiting_since = Some(self.wait_seq);
            }
            port_state.view.state = PortState::Waiting;
            port_state.view.refusal = None;
            tracing::info!(port = %label, device = %key, "waiting: the target count is nearly reached");
            return;
        }
        self.ports[port].waiting_since = None;
        // Recorded before the first byte is written: the stick starts once
        // the records hold its attempt (`on_started`); the port shows
        // `preparing` meanwhile, and the attempt counts as active.
        self.start_seq += 1;
        let token = self.start_seq;
        self.ports[port].starting = Some(Starting {
            token,
            run_id,
            request,
            kernel_name: kernel_name.clone(),
            removed: false,
        });
        let view = &mut self.ports[port].view;
        view.state = PortState::Preparing;
        view.recording = true;
        view.verdict = None;
        view.verdict_run = None;
        view.figures = None;
        view.refusal = None;
        view.progress = None;
        view.ejected = false;
        view.attempt_id = None;
        view.passed_before = None;
        if let Some(run) = self.run.as_mut() {
            run.view.active += 1;
        }
        self.starts_in_flight += 1;
        self.queued_starts.push(QueuedStart {
            token,
            kernel_name,
            device_id,
            identity: device.identity.clone(),
            start: AttemptStart {
                run_id,
                device_id: device_id.unwrap_or(DeviceId(0)),
                port_label: label,
                port_path: device.port_path.clone(),
            },
        });
        self.publish_run();
    }

    /// Records the starts the guard's answers just applied
    /// ([`Station::queued_starts`]) as one write, in the order they were
    /// applied, and answers them together ([`Recorded::Started`]): the
    /// sticks started together begin together, as when each start was
    /// awaited in turn (a followed import's reservation is for them all,
    /// and lets go when the first one begins).
    async fn record_starts(&mut self) {
        if self.queued_starts.is_empty() {
            return;
        }
        let starts = std::mem::take(&mut self.queued_starts);
        let journal = self.recorder.journal();
        let answers = self.recorded_tx.clone();
        // On the station's lane, not the ports': starts are recorded in the
        // order the guard's answers were applied (arrival order, see
        // `Inspection`), whatever port they are for. An attempt's stages and
        // verdict, in its port's lane, can only come after its start.
        self.recorder
            .push(STATION_LANE, async move {
                let mut recorded = Vec::with_capacity(starts.len());
                for queued in starts {
                    let result = async {
                        // A stick the records could not take when it
                        // arrived is recorded first.
                        let device_id = match queued.device_id {
                            Some(id) => id,
                            None => journal.device_seen(&queued.identity).await?,
                        };
                        let attempt_id = journal
                            .attempt_started(&AttemptStart {
                                device_id,
                                ..queued.start
                            })
                            .await?;
                        Ok((device_id, attempt_id))
                    }
                    .await;
                    recorded.push(StartAnswer {
                        token: queued.token,
                        kernel_name: queued.kernel_name,
                        result,
                    });
                }
                let _ = answers.send(Recorded::Started(recorded));
            })
            .await;
    }

    /// The records answered the start of an attempt ([`Starting`]): the
    /// attempt begins, or, when the stick left, the run stopped or the
    /// station is stopping meanwhile, it ends before anything was written;
    /// a start the records refused writes nothing and says so.
    async fn on_started(
        &mut self,
        token: u64,
        kernel_name: String,
        result: Result<(DeviceId, AttemptId), JournalError>,
    ) {
        self.starts_in_flight = self.starts_in_flight.saturating_sub(1);
        let port = self
            .ports
            .iter()
            .position(|p| p.starting.as_ref().is_some_and(|s| s.token == token));
        let starting = port.and_then(|p| self.ports[p].starting.take());
        if let Some(port) = port {
            self.ports[port].view.recording = false;
        }
        let (device_id, attempt_id) = match result {
            Ok(ids) => ids,
            Err(error) => {
                if let Some(run) = self.run.as_mut() {
                    run.view.active = run.view.active.saturating_sub(1);
                }
                let Some(port) = port else {
                    tracing::error!(%error, %kernel_name, "cannot record an attempt; nothing was written");
                    self.publish_run();
                    return;
                };
                let label = self.ports[port].view.label.clone();
                tracing::error!(%error, port = %label, "cannot record the attempt; not writing");
                let verdict_run = self.run.as_ref().map(|r| VerdictRun::of(&r.view));
                let view = &mut self.ports[port].view;
                view.state = PortState::Failed;
                // The station's trouble, not the stick's: nothing was written.
                view.verdict = Some(Verdict::Fail(Failure {
                    reason: FailReason::StationError {
                        detail: format!(
                            "the attempt could not be recorded, so nothing was written: {error}"
                        ),
                    },
                    stage: Stage::Preparing,
                }));
                view.verdict_run = verdict_run;
                self.publish_port(port);
                self.publish_run();
                return;
            }
        };
        // Still to be written: the stick is in its port, the run it was
        // asked for still armed, the station not stopping.
        let live = starting.as_ref().is_some_and(|s| !s.removed);
        if live {
            // The same stick (another one in the port would have cleared
            // the start): its record is known now.
            if let Some(present) = self.present.get_mut(&kernel_name) {
                present.device_id.get_or_insert(device_id);
            }
        }
        let run_id = starting.as_ref().map(|s| s.run_id);
        let go = live
            && !self.stopping
            && self
                .run
                .as_ref()
                .is_some_and(|r| r.live() && Some(r.view.id) == run_id);
        let (Some(port), Some(starting), true) = (port, starting, go) else {
            // Nothing was written: pulled meanwhile, it was removed while
            // preparing; else it was interrupted.
            let removed = !live;
            let verdict = Verdict::Fail(Failure {
                reason: if removed {
                    FailReason::Removed {
                        during: Stage::Preparing,
                    }
                } else {
                    FailReason::Interrupted
                },
                stage: Stage::Preparing,
            });
            // Under the run it was asked for (the one armed, or the last).
            let Some(current) = self.run.as_ref() else {
                return;
            };
            let run_id = run_id.unwrap_or(current.view.id);
            let verdict_run = VerdictRun::of(&current.view);
            let port = port.unwrap_or(usize::MAX);
            if port != usize::MAX {
                self.ports[port].view.attempt_id = Some(attempt_id);
            }
            let device_key = present_key(&self.present, &kernel_name);
            self.finish_with(
                Finishing {
                    run_id,
                    verdict_run,
                    attempt_id,
                    port,
                    kernel_name,
                    device_key,
                    // Refused: never a pass, whoever it was.
                    identity: DeviceIdentity::default(),
                    away: false,
                    removed,
                    stage: Stage::Preparing,
                    verdict,
                    figures: AttemptFigures {
                        bytes_written_bound: Bound::Exact,
                        ..AttemptFigures::default()
                    },
                    source_error: None,
                    bytes_reread: 0,
                },
                if port == usize::MAX {
                    0
                } else {
                    self.lane(port)
                },
            )
            .await;
            return;
        };
        let Some((_, device, _)) = self.stick_in(port) else {
            return;
        };
        let label = self.ports[port].view.label.clone();
        let key = device.identity.key();
        let guard = open_time_guard(
            device.clone(),
            self.settings.policy.clone(),
            starting.request,
        );
        let reset = ResetLink::new();
        let target = self.access.attempt_target(&device, guard, reset.clone());
        let target_id = TargetId::new(format!("{label}#{attempt_id}"));
        let lane = self.lane(port);
        let Some(run) = self.run.as_ref() else {
            return;
        };
        let verdict_run = VerdictRun::of(&run.view);
        let Some(fanout) = run.fanout.as_ref() else {
            return;
        };
        // A stick its stalled attempt still holds: the new attempt waits for
        // it to let go (bounded), never opens it blindly.
        self.held.retain(|_, hold| !hold.is_released());
        let previous = self.held.get(&kernel_name).cloned();
        let handle = fanout.start_after(target_id.clone(), target, previous);
        let canceller = handle.canceller();
        let done_tx = self.done_tx.clone();
        tokio::spawn({
            let target = target_id.clone();
            async move {
                let outcome = handle.finish().await;
                let _ = done_tx.send(Done { target, outcome });
            }
        });
        self.slots.insert(
            target_id,
            Slot {
                run_id: starting.run_id,
                verdict_run,
                attempt_id,
                port,
                kernel_name,
                device_key: key,
                identity: device.identity.clone(),
                canceller,
                reset,
                away: false,
                reset_timer: None,
                resets: 0,
                gave_up: false,
                stage: Stage::Preparing,
                removed_during: None,
                written: 0,
                verified: 0,
                timeline: StageTimeline::default(),
                lane,
            },
        );
        let view = &mut self.ports[port].view;
        view.state = PortState::Preparing;
        view.attempt_id = Some(attempt_id);
        self.publish_port(port);
    }

    /// The write that records that the guard refused the stick `device` in
    /// the port `label` (under `run_id`), recording the stick first if the
    /// records could not take it when it arrived.
    fn record_refusal(
        &self,
        device_id: Option<DeviceId>,
        run_id: RunId,
        label: &str,
        device: &PluggedDevice,
        refusal: Refusal,
    ) -> impl Future<Output = ()> + Send + 'static {
        let journal = self.recorder.journal();
        let identity = device.identity.clone();
        let mut event = JournalEvent::GuardRefused {
            port: label.to_string(),
            port_path: device.port_path.clone(),
            device: device.identity.key(),
            device_id: device_id.unwrap_or(DeviceId(0)),
            run_id: Some(run_id),
            refusal,
        };
        let label = label.to_string();
        async move {
            if device_id.is_none() {
                match journal.device_seen(&identity).await {
                    Ok(id) => {
                        if let JournalEvent::GuardRefused { device_id, .. } = &mut event {
                            *device_id = id;
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, port = %label, "cannot record a refusal");
                        return;
                    }
                }
            }
            if let Err(error) = journal.event(&event).await {
                tracing::error!(%error, port = %label, "cannot record a refusal");
            }
        }
    }

    async fn on_engine_event(&mut self, event: EngineEvent) {
        let Some(slot) = self.slots.get_mut(&event.target) else {
            return;
        };
        let port = slot.port;
        let attempt_id = slot.attempt_id;
        let live = slot.removed_during.is_none() && port != usize::MAX;
        match event.kind {
            EngineEventKind::Stage { stage } => {
                slot.stage = stage;
                slot.timeline.enter(stage, std::time::Instant::now());
                let so_far = slot.so_far();
                let lane = slot.lane;
                let journal = self.recorder.journal();
                self.recorder
                    .push(lane, async move {
                        if let Err(error) = journal.attempt_stage(attempt_id, stage).await {
                            tracing::error!(%error, "cannot record a stage change");
                        }
                    })
                    .await;
                // The whole image has been written: worth recording now rather
                // than at the next heartbeat.
                if stage == Stage::Flushing {
                    self.recorder.heartbeat(&[so_far]);
                }
                if live {
                    let view = &mut self.ports[port].view;
                    view.state = PortState::for_stage(stage);
                    view.progress = None;
                    self.publish_port(port);
                }
            }
            EngineEventKind::Progress {
                stage,
                done,
                total,
                bytes_per_sec,
            } => {
                match stage {
                    Stage::Writing => slot.written = slot.written.max(done),
                    Stage::Verifying => slot.verified = slot.verified.max(done),
                    Stage::Preparing | Stage::Flushing | Stage::Resetting => {}
                }
                if live {
                    self.ports[port].view.progress = Some(Progress {
                        done,
                        total,
                        bytes_per_sec,
                    });
                    self.publish_port(port);
                }
            }
            EngineEventKind::Resetting => {
                // The target waits for its stick to come back; the station
                // gives up on it after the reset timeout, on its clock, in
                // its loop (`on_reset_over`).
                slot.resets += 1;
                let reset = (event.target.clone(), slot.resets);
                let reset_over_tx = self.reset_over_tx.clone();
                let clock = &self.settings.engine.clock;
                // Made here, not in the task: armed (and listed on a manual
                // clock) as soon as the reset is announced.
                let sleep = clock.sleep_until(clock.now() + self.settings.engine.reset_timeout);
                let task = tokio::spawn(async move {
                    sleep.await;
                    let _ = reset_over_tx.send(reset);
                });
                slot.reset_timer = Some(AbortOnDrop(task.abort_handle()));
                if live {
                    let view = &mut self.ports[port].view;
                    view.state = PortState::Resetting;
                    view.progress = None;
                    self.publish_port(port);
                }
            }
            // Verdicts arrive through `on_done`, with source failures too.
            EngineEventKind::Finished { .. } => {}
        }
    }

    async fn on_done(&mut self, done: Done) {
        // The attempt's thread sent its events before it ended, but the two
        // channels are polled in no particular order: the events still queued
        // are handled first, so that its stages are recorded and shown, in
        // order, before its verdict (the verdict takes its slot away, and an
        // event for a slot that is gone is dropped). Seen in the VM suite's
        // burst: the fastest sticks' flushing and verifying stages were
        // missing from the records.
        while let Ok(event) = self.engine_rx.try_recv() {
            self.on_engine_event(event).await;
        }
        // An I/O error may be the first sign of a pulled stick: give udev's
        // removal event a moment to arrive before deciding. The verdict waits
        // in `pending`; a removal settles it at once, else the timer does.
        if self.may_be_a_removal(&done) {
            let grace_tx = self.grace_tx.clone();
            let clock = &self.settings.engine.clock;
            // Made here, not in the task: the grace is armed (and a manual
            // clock lists it) as soon as the verdict waits.
            let grace = clock.sleep_until(clock.now() + self.settings.removal_grace);
            let target = done.target.clone();
            self.pending.insert(target.clone(), done);
            tokio::spawn(async move {
                grace.await;
                let _ = grace_tx.send(target);
            });
            return;
        }
        self.settle(done).await;
    }

    /// The timeout of an attempt's `reset` (the how-many-th it announced) is
    /// over: the station gives up on the stick (`lost_after_reset`), unless
    /// it came back or another reset began meanwhile. Given up here, in the
    /// loop, and not by the timer's task: a removal of the stick the station
    /// has not handled yet (udev's event late, a loaded machine) is then still
    /// known as part of the reset ([`Slot::gave_up`]), never taken for a pull
    /// that would make the verdict `removed`.
    fn on_reset_over(&mut self, target: TargetId, reset: u64) {
        let Some(slot) = self.slots.get_mut(&target) else {
            return;
        };
        if slot.resets != reset || slot.reset_timer.is_none() || !slot.reset.is_resetting() {
            return;
        }
        slot.reset_timer = None;
        slot.gave_up = true;
        let after_secs = self.settings.engine.reset_timeout.as_secs();
        tracing::warn!(kernel_name = %slot.kernel_name, after_secs, "not back from its reset; given up");
        slot.reset.fail(ResetFailure::Lost { after_secs });
        // The verdict follows now even if the attempt's thread never reads the
        // answer: a reset stuck in the kernel (seen in the VM suite: a stick
        // pulled while its de-authorization synced its cache kept the sysfs
        // write blocked past the stall timeout) would otherwise leave the
        // port showing `resetting` after the station gave up.
        slot.canceller
            .abandon(FailReason::LostAfterReset { after_secs });
    }

    /// The grace of a waiting verdict is over: settle it, unless a removal
    /// already did.
    async fn on_grace_over(&mut self, target: TargetId) {
        if let Some(waiting) = self.pending.remove(&target) {
            self.settle(waiting).await;
        }
    }

    /// Queues a write of what the records refused before and the screen
    /// already shows ([`Station::unrecorded`] station errors,
    /// [`Station::unrecorded_stops`] run stops); what they refuse again
    /// comes back ([`Recorded::Retried`]) for the next try. One retry at a
    /// time.
    async fn retry_unrecorded(&mut self) {
        if self.retrying || (self.unrecorded.is_empty() && self.unrecorded_stops.is_empty()) {
            return;
        }
        self.retrying = true;
        let attempts = std::mem::take(&mut self.unrecorded);
        let stops = std::mem::take(&mut self.unrecorded_stops);
        let journal = self.recorder.journal();
        let answers = self.recorded_tx.clone();
        self.recorder
            .push(STATION_LANE, async move {
                let (attempts, stops) = record_refused(&*journal, attempts, stops).await;
                let _ = answers.send(Recorded::Retried { attempts, stops });
            })
            .await;
    }

    /// Tells the records the station is alive and how far each running attempt
    /// has got (coalesced with a heartbeat not written yet), and tries again
    /// what they refused.
    async fn on_heartbeat(&mut self) {
        self.retry_unrecorded().await;
        let running: Vec<AttemptSoFar> = self.slots.values().map(Slot::so_far).collect();
        self.recorder.heartbeat(&running);
    }

    /// An answer of the records' writers.
    async fn on_recorded(&mut self, recorded: Recorded) {
        match recorded {
            Recorded::DeviceSeen {
                kernel_name,
                key,
                result,
            } => match result {
                Ok(id) => {
                    if let Some(present) = self
                        .present
                        .get_mut(&kernel_name)
                        .filter(|p| p.device.identity.key() == key)
                    {
                        present.device_id.get_or_insert(id);
                    }
                }
                Err(error) => tracing::error!(%error, %kernel_name, "cannot record a device"),
            },
            Recorded::Started(starts) => {
                for answer in starts {
                    self.on_started(answer.token, answer.kernel_name, answer.result)
                        .await;
                }
                // The last start recorded (or one that ended before its
                // attempt began) may leave the run with no stick on its way.
                self.release_feed_when_started();
            }
            Recorded::Finished { attempt_id, result } => self.on_finished(attempt_id, result).await,
            Recorded::RunStarted(result) => {
                self.on_run_started(result).await;
                self.handle_held_commands().await;
            }
            Recorded::RunStopped { run_id, result } => {
                self.on_run_stopped(run_id, result);
                self.handle_held_commands().await;
            }
            Recorded::ImageKnown { run_id, result } => self.on_image_known(run_id, result).await,
            Recorded::ActionLogged(action) => {
                self.actions_in_flight.remove(&action);
                self.release_replies();
            }
            Recorded::Retried { attempts, stops } => {
                self.retrying = false;
                // Refused again: kept (before any refused since) for the
                // next heartbeat.
                self.unrecorded.splice(0..0, attempts);
                self.unrecorded_stops.splice(0..0, stops);
                // A stopped run whose stop the records now hold is no
                // longer shown waiting for them.
                let unrecorded = &self.unrecorded_stops;
                if let Some(run) = self.run.as_mut().filter(|r| {
                    !r.view.armed
                        && r.view.recording
                        && !unrecorded.iter().any(|(id, ..)| *id == r.view.id)
                }) {
                    run.view.recording = false;
                    self.publish_run();
                }
            }
        }
    }

    /// Gives an attempt its verdict: recorded, counted, shown.
    async fn settle(&mut self, done: Done) {
        let Some(slot) = self.slots.remove(&done.target) else {
            return;
        };
        // Abandoned after a stall or a give-up, its I/O stuck in the kernel:
        // the stick's next attempt waits for it to let go. Not when its disk
        // has left the system (pulled, or away in a reset that never came
        // back): the kernel gives its name to the next disk that arrives,
        // which is another stick, and a stuck handle on the disk that left
        // holds nothing of it.
        if !done.outcome.hold.is_released() && !slot.away && slot.removed_during.is_none() {
            self.held
                .insert(slot.kernel_name.clone(), done.outcome.hold.clone());
        }
        let (verdict, mut figures, source_error) = match done.outcome.result {
            Ok((verdict, figures)) => (verdict, figures, None),
            // The thread's own figures are lost with the source error: what the
            // station heard of its progress is what is known.
            Err(error) => (
                Verdict::Fail(Failure {
                    reason: FailReason::Interrupted,
                    stage: slot.stage,
                }),
                slot.figures_so_far(),
                Some(error),
            ),
        };
        // A stick pulled mid-attempt failed because it was removed, whatever
        // error the kernel gave for the I/O it interrupted.
        let verdict = match (slot.removed_during, verdict) {
            (Some(during), Verdict::Fail(_)) => {
                // A write in flight when it went may have landed: what the
                // stick acknowledged is a lower bound of what it holds.
                figures.bytes_written = figures.bytes_written.max(slot.written);
                if figures.bytes_written_bound == Bound::Exact {
                    figures.bytes_written_bound = Bound::LowerBound;
                }
                Verdict::Fail(Failure {
                    reason: FailReason::Removed { during },
                    stage: during,
                })
            }
            (_, verdict) => verdict,
        };
        self.finish(
            slot,
            verdict,
            figures,
            source_error,
            done.outcome.bytes_reread,
        )
        .await;
    }

    /// Queues the verdict of the attempt in `slot` for the records (in its
    /// port's lane, after its start and stages); the port shows its stage,
    /// `recording`, until they answer ([`Self::on_finished`]).
    async fn finish(
        &mut self,
        slot: Slot,
        verdict: Verdict,
        figures: AttemptFigures,
        source_error: Option<EngineError>,
        bytes_reread: u64,
    ) {
        let lane = slot.lane;
        self.finish_with(
            Finishing {
                run_id: slot.run_id,
                verdict_run: slot.verdict_run,
                attempt_id: slot.attempt_id,
                port: slot.port,
                kernel_name: slot.kernel_name,
                device_key: slot.device_key,
                identity: slot.identity,
                away: slot.away,
                removed: slot.removed_during.is_some(),
                stage: slot.stage,
                verdict,
                figures,
                source_error,
                bytes_reread,
            },
            lane,
        )
        .await;
    }

    /// Queues `finishing`'s verdict in `lane`; see [`Self::finish`].
    async fn finish_with(&mut self, finishing: Finishing, lane: usize) {
        let attempt_id = finishing.attempt_id;
        let port = finishing.port;
        if port != usize::MAX && self.ports[port].view.attempt_id == Some(attempt_id) {
            let view = &mut self.ports[port].view;
            view.progress = None;
            view.recording = true;
            self.publish_port(port);
        }
        let journal = self.recorder.journal();
        let answers = self.recorded_tx.clone();
        let verdict = finishing.verdict.clone();
        let figures = finishing.figures.clone();
        self.finishing.insert(attempt_id, finishing);
        self.recorder
            .push(lane, async move {
                let result = journal
                    .attempt_finished(attempt_id, &verdict, &figures)
                    .await;
                let _ = answers.send(Recorded::Finished { attempt_id, result });
            })
            .await;
    }

    /// The records answered an attempt's verdict: it is shown and counted
    /// now. Committed before the port shows it: a verdict the records could
    /// not take (the database locked by another process past its busy
    /// timeout, its disk full) is not shown as the stick's: the port, the
    /// run's counts and, once a write goes through, the records all say the
    /// station failed. It is retried at each heartbeat
    /// ([`Station::unrecorded`]); a station stopped before that leaves the
    /// attempt running in the records, which the next start records as
    /// interrupted: still not a verdict of the stick.
    async fn on_finished(&mut self, attempt_id: AttemptId, result: Result<(), JournalError>) {
        let Some(slot) = self.finishing.remove(&attempt_id) else {
            return;
        };
        let verdict = slot.verdict;
        let figures = slot.figures;
        let source_error = slot.source_error;
        let verdict = match result {
            Ok(()) => verdict,
            Err(error) => {
                tracing::error!(%error, attempt_id = %slot.attempt_id, %verdict, "cannot record a verdict; the port shows a station error instead");
                let stage = verdict.failure().map_or(slot.stage, |f| f.stage);
                let not_recorded = Verdict::Fail(Failure {
                    reason: FailReason::StationError {
                        detail: format!(
                            "its verdict ({verdict}) could not be recorded, so it does not stand: {error}"
                        ),
                    },
                    stage,
                });
                self.unrecorded
                    .push((slot.attempt_id, not_recorded.clone(), figures.clone()));
                not_recorded
            }
        };
        // Refused by the guard at the moment of opening: a refusal, not a
        // failed write.
        let refusal = match &verdict {
            Verdict::Fail(Failure {
                reason: FailReason::Refused { code, detail },
                ..
            }) => Some(code.map(|code| GuardRefusal {
                code,
                message: detail.clone(),
            })),
            _ => None,
        };
        let passed = verdict.is_pass();
        // Whether writing it again may pass (the run's automatic retries).
        let retryable = verdict.failure().is_some_and(|f| f.reason.is_retryable());
        // Interrupted, or the station's own shortage (descriptors, memory):
        // says nothing about the stick, counted apart from failures.
        let interrupted = matches!(
            verdict.failure(),
            Some(Failure { reason, .. }) if reason.is_station_side()
        );
        let mut target_reached = false;
        if let Some(run) = self.run.as_mut().filter(|r| r.view.id == slot.run_id) {
            run.view.active = run.view.active.saturating_sub(1);
            run.view.bytes_written += figures.bytes_written;
            if let Some(import) = run.view.import.as_mut() {
                import.reread_bytes += slot.bytes_reread;
            }
            if passed {
                run.view.passed += 1;
                run.passed.insert(
                    slot.device_key.clone(),
                    PassedAttempt {
                        attempt_id: slot.attempt_id,
                        identity: slot.identity.clone(),
                    },
                );
            } else if interrupted {
                // Says nothing about the stick; the records count it apart.
                run.view.interrupted += 1;
            } else if refusal.is_some() {
                // Refused at the moment of opening: nothing was written.
                run.view.refused += 1;
            } else {
                run.view.failed += 1;
            }
            if let Some(target) = run.view.options.target_count {
                run.view.remaining = Some(target.saturating_sub(run.view.passed));
                target_reached = run.live() && run.view.passed >= target;
            }
        }
        // The port shows this attempt until another stick arrives (which
        // clears it), also when its stick was pulled.
        let shown_here = slot.port != usize::MAX
            && self.ports[slot.port].view.attempt_id == Some(slot.attempt_id);
        let still_here = shown_here
            && !slot.removed
            && self.ports[slot.port].kernel_name.as_deref() == Some(slot.kernel_name.as_str());
        if shown_here {
            let view = &mut self.ports[slot.port].view;
            view.state = match (passed, &refusal) {
                (true, _) => PortState::Passed,
                (false, Some(_)) => PortState::Refused,
                (false, None) => PortState::Failed,
            };
            view.refusal = refusal.flatten();
            if slot.away {
                // Gone in its reset and not back: no stick in the port.
                view.device = None;
            }
            view.verdict = Some(verdict);
            view.verdict_run = Some(slot.verdict_run.clone());
            view.figures = Some(figures);
            view.progress = None;
            view.recording = false;
            self.publish_port(slot.port);
        }
        if still_here {
            let eject = passed
                && self
                    .run
                    .as_ref()
                    .is_some_and(|r| r.view.id == slot.run_id && r.view.options.eject_on_pass);
            if eject {
                self.eject(slot.port, &slot.kernel_name).await;
            }
        }
        self.publish_run();
        if let Some(error) = source_error {
            tracing::error!(%error, "the image source failed; stopping the run");
            if self.run.as_ref().is_some_and(ActiveRun::live) {
                for slot in self.slots.values() {
                    slot.cancel();
                }
                self.stop(StopReason::SourceFailed, Some(error.to_string()), None)
                    .await;
            }
        } else if target_reached {
            self.stop(StopReason::TargetReached, None, None).await;
        } else if !passed {
            // The run's automatic retries: the same stick, still in its port,
            // written again as an attempt of its own.
            let retry = still_here
                && retryable
                && self
                    .run
                    .as_mut()
                    .filter(|r| r.live() && r.view.id == slot.run_id)
                    .is_some_and(|run| {
                        let made = run.retries_made.entry(slot.device_key.clone()).or_default();
                        let allowed = *made < run.view.options.retries;
                        if allowed {
                            *made += 1;
                        }
                        allowed
                    });
            if retry {
                tracing::info!(port = %self.ports[slot.port].view.label, device = %slot.device_key, "retrying after a failure that may pass");
                self.try_start(slot.port, false).await;
                self.publish_port(slot.port);
            }
            // A failure leaves room under the target count.
            self.start_waiting().await;
        }
    }

    /// Starts waiting sticks, in the order they began to wait, while the armed
    /// run's target count leaves room (each start re-checks it).
    async fn start_waiting(&mut self) {
        let mut queue: Vec<(u64, usize)> = self
            .ports
            .iter()
            .enumerate()
            .filter(|(_, p)| p.view.state == PortState::Waiting)
            .filter_map(|(i, p)| p.waiting_since.map(|since| (since, i)))
            .collect();
        queue.sort_unstable();
        for (_, port) in queue {
            if self
                .run
                .as_ref()
                .is_none_or(|r| !r.live() || r.target_covered())
            {
                break;
            }
            self.try_start(port, false).await;
            self.publish_port(port);
        }
    }

    /// Whether `done` is an I/O failure of a stick that has not (yet) been
    /// reported removed.
    fn may_be_a_removal(&self, done: &Done) -> bool {
        let Some(slot) = self.slots.get(&done.target) else {
            return false;
        };
        let io_failure = matches!(
            &done.outcome.result,
            Ok((
                Verdict::Fail(Failure {
                    reason: FailReason::WriteError { .. }
                        | FailReason::ProbeError { .. }
                        | FailReason::ReadError { .. }
                        | FailReason::FlushError { .. }
                        | FailReason::Unavailable { .. }
                        | FailReason::Stalled { .. },
                    ..
                }),
                _
            ))
        );
        io_failure && slot.removed_during.is_none() && !self.settings.removal_grace.is_zero()
    }

    async fn eject(&mut self, port: usize, kernel_name: &str) {
        let Some(present) = self.present.get(kernel_name) else {
            return;
        };
        let device = present.device.clone();
        let access = self.access.clone();
        let result = tokio::task::spawn_blocking(move || access.eject(&device)).await;
        let label = self.ports[port].view.label.clone();
        match result {
            Ok(Ok(())) => {
                self.ports[port].view.ejected = true;
                self.log(JournalEvent::Ejected {
                    port: label,
                    device: present_key(&self.present, kernel_name),
                })
                .await;
                self.publish_port(port);
            }
            Ok(Err(error)) => tracing::warn!(%error, port = %label, "eject failed"),
            Err(error) => tracing::warn!(%error, port = %label, "eject task failed"),
        }
    }

    // ----- publishing --------------------------------------------------------

    /// Appends an operator's `action` to the event log, in the station's
    /// lane (before the writes it leads to: a run's stop, a stick's start),
    /// and answers its number: a reply held for it
    /// ([`DeferredReply::action`]) goes once the records hold it. The
    /// loop does not wait for it.
    async fn log_action(&mut self, action: OperatorAction, detail: String) -> u64 {
        self.action_seq += 1;
        let token = self.action_seq;
        self.actions_in_flight.insert(token);
        let journal = self.recorder.journal();
        let answers = self.recorded_tx.clone();
        self.recorder
            .push(STATION_LANE, async move {
                let event = JournalEvent::OperatorAction { action, detail };
                if let Err(error) = journal.event(&event).await {
                    tracing::error!(%error, "cannot record an operator's action");
                }
                let _ = answers.send(Recorded::ActionLogged(token));
            })
            .await;
        token
    }

    /// Appends `event` to the event log, in the lane of the port it is
    /// about (the station's own lane for the others), beside the screen.
    /// (An operator's action goes through [`Self::log_action`].)
    async fn log(&self, event: JournalEvent) {
        let lane = match &event {
            JournalEvent::DeviceAdded { port, .. }
            | JournalEvent::DeviceRemoved { port, .. }
            | JournalEvent::Ejected { port, .. }
            | JournalEvent::GuardRefused { port, .. } => self
                .ports
                .iter()
                .position(|p| p.view.label == *port)
                .map_or(STATION_LANE, |p| self.lane(p)),
            JournalEvent::OperatorAction { .. } | JournalEvent::RunRefused(_) => STATION_LANE,
        };
        let journal = self.recorder.journal();
        self.recorder
            .push(lane, async move {
                if let Err(error) = journal.event(&event).await {
                    tracing::error!(%error, "cannot record an event");
                }
            })
            .await;
    }

    // The snapshot is updated before the event is sent: whoever receives an
    // event and then reads the snapshot sees at least that change.

    fn publish_port(&mut self, port: usize) {
        self.publish_snapshot();
        let _ = self.events.send(StationEvent::Port {
            port: Box::new(self.ports[port].view.clone()),
        });
    }

    fn publish_run(&mut self) {
        self.publish_snapshot();
        let _ = self.events.send(StationEvent::Run {
            run: self.run.as_ref().map(|r| r.view.clone()),
        });
    }

    fn publish_arming(&mut self) {
        self.publish_snapshot();
        let _ = self.events.send(StationEvent::Arming {
            arming: self.arming_view(),
        });
    }

    /// The run being armed, as the snapshot shows it: its start being
    /// recorded, or claimed.
    fn arming_view(&self) -> Option<ArmingView> {
        self.arming
            .as_ref()
            .map(|a| a.view.clone())
            .or_else(|| self.claim.as_ref().map(|c| c.view.clone()))
    }

    fn publish_snapshot(&mut self) {
        let snapshot = Snapshot {
            station_id: self.settings.station_id.clone(),
            ports: self.ports.iter().map(|p| p.view.clone()).collect(),
            run: self.run.as_ref().map(|r| r.view.clone()),
            arming: self.arming_view(),
        };
        self.snapshot.send_replace(snapshot);
    }
}

/// The operator's action of arming run `id` (recorded as `start`), in
/// words: its image, the import it follows (from `source`), a forced raw
/// write.
fn arm_detail(id: RunId, start: &RunStart, source: Option<&str>) -> String {
    let mut detail = match source {
        Some(source) => format!(
            "run {id}: {}, following its import from {source}",
            start.image_name
        ),
        None => format!("run {id}: {} ({})", start.image_name, start.image_sha256),
    };
    if start.options.force_raw {
        detail.push_str(", raw write forced");
    }
    detail
}

/// Writes the station errors and run stops the records refused before;
/// returns what they refuse again.
async fn record_refused(
    journal: &dyn Journal,
    attempts: Vec<(AttemptId, Verdict, AttemptFigures)>,
    stops: Vec<(RunId, StopReason, Option<String>)>,
) -> (
    Vec<(AttemptId, Verdict, AttemptFigures)>,
    Vec<(RunId, StopReason, Option<String>)>,
) {
    let mut still = Vec::new();
    for (attempt_id, verdict, figures) in attempts {
        match journal
            .attempt_finished(attempt_id, &verdict, &figures)
            .await
        {
            Ok(()) => {
                tracing::info!(%attempt_id, "recorded the station error of an attempt whose verdict could not be recorded")
            }
            Err(error) => {
                tracing::warn!(%error, %attempt_id, "still cannot record an attempt's station error");
                still.push((attempt_id, verdict, figures));
            }
        }
    }
    let mut still_stops = Vec::new();
    for (run_id, reason, note) in stops {
        match journal.run_stopped(run_id, reason, note.as_deref()).await {
            Ok(()) => {
                tracing::info!(%run_id, "recorded a run's stop that could not be recorded before")
            }
            Err(error) => {
                tracing::warn!(%error, %run_id, "still cannot record a run's stop");
                still_stops.push((run_id, reason, note));
            }
        }
    }
    (still, still_stops)
}

fn present_key(present: &HashMap<String, Present>, kernel_name: &str) -> String {
    present
        .get(kernel_name)
        .map(|p| p.device.identity.key())
        .unwrap_or_default()
}

/// The guard's verdict on `device` now: its facts gathered fresh, judged by the
/// rules. A refusal comes back typed (its code and its sentence travel to the
/// port, the journal and the records); facts that cannot be gathered are a
/// refusal too ([`Refusal::CannotInspect`]): the guard fails closed.
fn guard_device(
    access: &dyn DeviceAccess,
    device: &PluggedDevice,
    policy: &GuardPolicy,
    request: &GuardRequest,
) -> Result<(), Refusal> {
    // Another disk behind the name is a refusal (identity changed); a failure
    // to inspect is one too: the guard fails closed.
    let facts = access.facts(device).map_err(Refusal::from)?;
    judge(facts, device, policy, request)
}

/// Judges `facts` of `device` by the rules. The port path comes from hotplug
/// (udev), not from sysfs: it is the port of the disk that was plugged, which
/// the facts were checked to describe.
fn judge(
    mut facts: DiskFacts,
    device: &PluggedDevice,
    policy: &GuardPolicy,
    request: &GuardRequest,
) -> Result<(), Refusal> {
    if facts.port_path.is_none() {
        facts.port_path = device.port_path.clone();
    }
    evaluate(&facts, policy, request).map(|_| ())
}

/// The guard again, at the moment the target is opened for writing: on the facts
/// of the device behind the opened descriptor, which the target has checked to be
/// the disk that was plugged ([`PluggedDevice::disk`]).
fn open_time_guard(
    device: PluggedDevice,
    policy: GuardPolicy,
    request: GuardRequest,
) -> GuardCheck {
    Arc::new(move |facts: &DiskFacts| judge(facts.clone(), &device, &policy, &request))
}
