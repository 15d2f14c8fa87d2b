//! One-shot flashing (`flashrack flash`): one image to many targets, verified,
//! recorded, summed up.
//!
//! Every attempt is recorded before its first byte is written, and its verdict
//! is committed the moment it is known, before the screen shows it (as the
//! station does): a crash or a kill later loses no verdict already given.
//!
//! The command ends as soon as every target has a verdict. A target whose
//! thread is stuck in the kernel gets its `stalled` verdict from the engine's
//! watchdog and is abandoned; nothing waits for its thread.
//!
//! SIGINT and SIGTERM stop the running attempts at their next safe point (between
//! two I/Os), where they end `interrupted`; the run is closed (stop reason
//! `shutdown`), the summary printed, the simulated sticks' files removed, and the
//! command exits 130 (SIGINT) or 143 (SIGTERM). An attempt that reaches no safe
//! point within [`STOP_GRACE`] (or the stall timeout, if shorter) — or at once,
//! on a second signal — is recorded `interrupted` and abandoned.
//!
//! The binary catches the signals and hands them in ([`flash`]'s `stops`), and
//! shows what [`flash`] sends it ([`FlashEvent`]): engine events (a verdict only
//! once it is recorded) and notices; [`flash`] returns the summary.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashrack_core::{
    AttemptFigures, AttemptId, Bound, ByteSize, DataRanges, EngineEvent, EngineEventKind,
    FailReason, Failure, RunId, SamplePercent, Sha256Digest, Stage, StopReason, TargetId, Verdict,
    VerifyMode,
};
use flashrack_engine::{AttemptOutcome, EngineError, EngineOptions, Fanout, SourceImage};
use flashrack_guard::GuardPolicy;
use flashrack_image::CachedImage;
use flashrack_station::{
    AttemptSoFar, AttemptStart, Journal, JournalEvent, RunOptions, RunRefusal, RunStart,
    StageTimeline,
};
use flashrack_target::Target;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::images::open_cache;
use crate::records::{Recovered, StoreRecords};
use crate::summary::Summary;
use crate::targets::{parse_targets, GuardSettings, Targets};
use crate::AppError;

mod streaming;
pub use streaming::{flash_file, flash_url};
pub(crate) use streaming::{
    head_or_end, import_reason, provisional_digest, raw_file_refusal, CancelOnDrop, FeedObserver,
    HeadOrEnd,
};

/// One-shot flashes are recorded under this station id.
const STATION_ID: &str = "station-1";

/// How long a stop (a signal, or a failure of the source) waits for running
/// attempts to reach a safe point before recording them `interrupted` and
/// abandoning them (as `serve` does at shutdown).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What to flash, and how.
#[derive(Debug, Clone)]
pub struct FlashRequest {
    /// Targets as named: block devices, files, `sim:` sticks (see
    /// [`crate::targets`]).
    pub targets: Vec<String>,
    /// How to verify.
    pub verify: VerifyMode,
    /// Buses allowed besides USB (`loop` for loop devices).
    pub allow_buses: Vec<String>,
    /// The guard's largest target.
    pub max_size: ByteSize,
    /// Time without progress before a target fails as stalled.
    pub stall_timeout: Duration,
    /// Whether sticks get the capacity probe (fake-capacity detection).
    pub probe_capacity: bool,
    /// Write the image raw even though inspection says the sticks would not
    /// boot (a non-hybrid installer ISO); recorded in the run's options.
    pub force_raw: bool,
    /// A sparse run: only the image's block map's ranges are written and read
    /// back (the rest of each stick is left as it was, unchecked); recorded in
    /// the run's options. The image must have a map (or one must be
    /// generated from its file systems).
    pub sparse: bool,
    /// Check only this share of each target's chunks (a sampled verify).
    pub sample: Option<SamplePercent>,
    /// An audit: write nothing, read each target back and compare it with the
    /// image (block devices judged by the guard's rules for reading and held
    /// exclusively, files that exist; see [`crate::audit`]).
    pub audit: bool,
    /// How many times a target that failed for a reason that may pass when
    /// written again ([`FailReason::is_retryable`]: a write or flush error,
    /// the probe's, a stall while writing) is written again, each time as an
    /// attempt of its own; never a capacity lie, a read-only stick or a
    /// verify mismatch. 0: no retries.
    pub retries: u32,
}

/// A signal that stops a flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl StopSignal {
    /// The signal's number (the exit status is 128 plus it, as shells report).
    pub fn number(self) -> u8 {
        match self {
            StopSignal::Interrupt => 2,
            StopSignal::Terminate => 15,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }
}

/// What a flash tells whoever shows it, in order.
#[derive(Debug, Clone)]
pub enum FlashEvent {
    /// The targets, as they will be named, in the order given: sent once,
    /// before anything about them.
    Targets(Vec<TargetId>),
    /// An engine event; a verdict (`Finished`) only once it is recorded.
    Engine(EngineEvent),
    /// Something the operator should know (shown even when progress is not).
    Notice(Notice),
    /// How far the download of the image has got (a flash of a URL): bytes
    /// held and the length declared, after every piece.
    Download(crate::downloads::Progress),
    /// The flash ends with an error after its attempts were recorded (the
    /// image source failed, its import was refused): the verdicts as the
    /// records hold them, sent just before the error is returned, so that
    /// what is shown agrees with the records.
    Unfinished(Box<Summary>),
}

/// What a flash has to say besides progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The records were left by an unclean stop, now accounted for.
    Recovered(Recovered),
    /// A signal: every target stops at its next safe point, within `grace`.
    Stopping {
        /// The signal.
        signal: StopSignal,
        /// How long the targets have.
        grace: Duration,
    },
    /// A second signal: the targets still running are abandoned now.
    NotWaitingLonger(StopSignal),
    /// The grace is over: the targets still running are abandoned.
    GraceOver,
    /// A target failed for a reason that may pass when written again: it is
    /// written again, as a new attempt (its failure is recorded).
    Retrying {
        /// The target.
        target: TargetId,
        /// Why its last attempt failed, in words.
        failure: String,
        /// The attempt about to start (2 for the first retry).
        attempt: u32,
        /// The most attempts it gets (1 + the retries asked for).
        of: u32,
    },
    /// The image written while it was imported is imported: its digest is
    /// known (and was what the operator expected), the targets may read back.
    Imported {
        /// The image's sha256.
        sha256: flashrack_core::Sha256Digest,
        /// Its size.
        size: u64,
    },
}

/// How a flash ended, when it could run.
#[derive(Debug)]
pub struct FlashOutcome {
    /// A row per target, and the counts.
    pub summary: Summary,
    /// The signal that stopped it, if one did.
    pub stopped_by: Option<StopSignal>,
}

/// Flashes `image` to the targets of `request`, recording everything under
/// the data directory's records, until every target has a verdict or a
/// signal from `stops` ends it. Progress and notices go to `view`. A failure
/// of the image source is an error (every attempt is stopped and recorded
/// first); a failed target is a row of the summary.
pub async fn flash(
    data_dir: &Path,
    image: CachedImage,
    request: FlashRequest,
    view: mpsc::UnboundedSender<FlashEvent>,
    mut stops: mpsc::UnboundedReceiver<StopSignal>,
) -> Result<FlashOutcome, AppError> {
    // An audit writes nothing: an image that would not boot written raw may
    // still be compared with sticks written otherwise.
    let writes = !request.audit;
    if let Some(refusal) = image
        .raw_write_refusal()
        .filter(|_| writes && !request.force_raw)
    {
        // Refused before anything is opened for writing, and recorded like
        // a refusal at the station: the event log says what was not done.
        let records = StoreRecords::open(data_dir, STATION_ID, open_cache(data_dir)?).await?;
        records
            .event(&JournalEvent::RunRefused(RunRefusal {
                image_sha256: Some(image.manifest.sha256()),
                image_name: image.meta.original_name.clone(),
                reason: refusal.reason.clone(),
                advice: refusal.advice.clone(),
                options: RunOptions {
                    verify: request.verify,
                    ..RunOptions::default()
                },
            }))
            .await?;
        return Err(AppError::RawWriteRefused {
            name: image.meta.original_name.clone(),
            refusal,
        });
    }
    let (sparse, sparse_map) = match request.sparse {
        true => {
            let map = crate::images::sparse_map(&open_cache(data_dir)?, &image)?;
            (Some(Arc::new(map.ranges.clone())), Some(map.source()))
        }
        false => (None, None),
    };
    let manifest = image.manifest.clone();
    let policy = guard_policy(&request, data_dir, None)?;
    // A raw image referenced in place is read from the operator's file for
    // the whole run: that file is never a target.
    if let Some(reference) = &image.meta.reference {
        crate::targets::refuse_the_image_file(reference.path(), &request.targets)?;
    }
    // An audit's block devices are judged for reading and held until it ends.
    let _claims = if request.audit {
        let specs = request.targets.clone();
        let policy = policy.clone();
        match tokio::task::spawn_blocking(move || crate::audit::claim(&specs, &policy)).await {
            Ok(claims) => Some(claims?),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    } else {
        None
    };
    let targets = parse_targets(
        &request.targets,
        manifest.size(),
        data_dir,
        GuardSettings {
            policy,
            image_size: manifest.size(),
            audit: request.audit,
        },
    )?;

    let options = engine_options(&request, sparse);
    let stall_timeout = options.stall_timeout;
    let source = SourceImage {
        path: image.path.clone(),
        manifest: manifest.clone(),
        referenced: image.meta.reference.is_some(),
    };
    // Every flash is recorded: a run of its own, and each attempt before its
    // first byte is written.
    let records = StoreRecords::open(data_dir, STATION_ID, open_cache(data_dir)?).await?;
    if records.recovered().any() {
        let _ = view.send(FlashEvent::Notice(Notice::Recovered(records.recovered())));
    }
    let run_id = records
        .run_started(&RunStart {
            image_sha256: manifest.sha256(),
            image_name: image.meta.original_name.clone(),
            image_size: manifest.size(),
            options: RunOptions {
                verify: request.verify,
                eject_on_pass: false,
                target_count: None,
                force_raw: request.force_raw,
                sparse: request.sparse,
                sparse_map,
                sample: request.sample,
                audit: request.audit,
                retries: request.retries,
                ..RunOptions::default()
            },
        })
        .await?;
    let started = start_attempts(&records, run_id, &targets).await?;

    let _ = view.send(FlashEvent::Targets(
        targets.list.iter().map(|(id, _)| id.clone()).collect(),
    ));
    let (events_tx, events_rx) = mpsc::unbounded_channel::<EngineEvent>();
    let mut flash = Flash::new(
        records,
        &targets,
        started,
        // An audit writes nothing: nothing to write again.
        if request.audit { 0 } else { request.retries },
        view,
    );
    let ended = match Fanout::new(&source, options, events_tx) {
        Ok(fanout) => {
            let grace = STOP_GRACE.min(stall_timeout);
            flash
                .drive(fanout, &targets.list, events_rx, &mut stops, grace)
                .await?
        }
        Err(error) => Ended::SourceFailed(error),
    };
    flash.settle_unfinished(&targets.list).await?;
    let records = flash.records.clone();
    let stopped_by = match ended {
        Ended::SourceFailed(error) => {
            let _ = records
                .run_stopped(run_id, StopReason::SourceFailed, Some(&error.to_string()))
                .await;
            flash.unfinished(&targets.list, Some(manifest.sha256()), manifest.size());
            return Err(AppError::SourceFailed(error));
        }
        Ended::Signal(signal) => {
            records
                .run_stopped(run_id, StopReason::Shutdown, Some(signal.name()))
                .await?;
            Some(signal)
        }
        Ended::Completed => {
            records
                .run_stopped(run_id, StopReason::Completed, None)
                .await?;
            None
        }
    };
    let summary = flash.into_summary(&targets.list, Some(manifest.sha256()), manifest.size());
    // Removes the simulated sticks' files (a stuck thread may still hold one
    // open; the directory goes anyway).
    drop(targets);
    Ok(FlashOutcome {
        summary,
        stopped_by,
    })
}

/// The guard's policy for a one-shot flash's targets: a loop device over a
/// file of the data directory, over a cached image or over `importing` (the
/// file a flash imports while it writes) is refused.
fn guard_policy(
    request: &FlashRequest,
    data_dir: &Path,
    importing: Option<&Path>,
) -> Result<GuardPolicy, AppError> {
    let mut kept = crate::kept_files::KeptFiles::new(data_dir, open_cache(data_dir)?);
    if let Some(file) = importing {
        kept = kept.also(file, "the image file this flash is importing");
    }
    let mut policy = GuardPolicy {
        max_size_bytes: request.max_size.bytes(),
        // One-shot flashing names its devices; there is no port map to consult.
        allow_unmapped_ports: true,
        protected_files: kept.protected(),
        ..GuardPolicy::default()
    };
    policy
        .allowed_buses
        .extend(request.allow_buses.iter().map(|b| b.to_ascii_lowercase()));
    Ok(policy)
}

/// The engine's options for a one-shot flash.
fn engine_options(request: &FlashRequest, sparse: Option<Arc<DataRanges>>) -> EngineOptions {
    EngineOptions {
        verify: request.verify,
        stall_timeout: request.stall_timeout.max(Duration::from_secs(1)),
        // A retry of a target whose attempt stalled waits as long for the
        // stuck I/O to let go of it as a stall is waited for.
        release_timeout: request.stall_timeout.max(Duration::from_secs(1)),
        probe_capacity: request.probe_capacity && !request.audit,
        // One-shot targets are reset in place (no station sees them leave):
        // the probe defeats their caches.
        probe: flashrack_engine::probe::ProbeOptions {
            defeat_cache: true,
            ..Default::default()
        },
        sample_percent: request.sample.map(SamplePercent::percent),
        audit: request.audit,
        sparse,
        ..EngineOptions::default()
    }
}

/// Each target's attempt and how it was started (for a retry).
type Started = (
    HashMap<TargetId, AttemptId>,
    HashMap<TargetId, AttemptStart>,
);

/// Records every target's attempt as started (before its first byte).
async fn start_attempts(
    records: &StoreRecords,
    run_id: RunId,
    targets: &Targets,
) -> Result<Started, AppError> {
    let mut attempts = HashMap::new();
    let mut starts = HashMap::new();
    for ((id, _), (identity, port_path)) in targets.list.iter().zip(&targets.identities) {
        let device_id = records.device_seen(identity).await?;
        let start = AttemptStart {
            run_id,
            device_id,
            port_label: id.0.clone(),
            port_path: port_path.clone(),
        };
        let attempt_id = records.attempt_started(&start).await?;
        attempts.insert(id.clone(), attempt_id);
        starts.insert(id.clone(), start);
    }
    Ok((attempts, starts))
}

/// How the fan-out ended.
enum Ended {
    /// Every target has its verdict.
    Completed,
    /// Stopped by a signal.
    Signal(StopSignal),
    /// The image source failed (every other attempt was stopped).
    SourceFailed(EngineError),
}

/// The state of one flash while its attempts run.
struct Flash {
    records: StoreRecords,
    /// Each target's attempt in the records (its latest, after a retry).
    attempts: HashMap<TargetId, AttemptId>,
    /// What each target's attempts are recorded with (a retry's too).
    starts: HashMap<TargetId, AttemptStart>,
    /// How many times a target may be written again after a retryable
    /// failure.
    retries: u32,
    /// Attempts made per target beyond its first (retries so far).
    attempts_made: HashMap<TargetId, u32>,
    /// The last stage each target entered.
    stages: HashMap<TargetId, Stage>,
    /// The bytes each target's write pass had acknowledged, as its progress
    /// last said (an attempt without its own figures is given these).
    written: HashMap<TargetId, u64>,
    /// The bytes each target's read-back had checked, as its progress last
    /// said.
    verified: HashMap<TargetId, u64>,
    /// The attempts' progress, for the records: a task writes the latest at
    /// most every [`PROGRESS_EVERY`], so that a flash killed outright (no
    /// signal handler runs) leaves each attempt's bytes as a lower bound.
    /// `None` once the attempts are settled.
    progress: Option<ProgressWriter>,
    /// When each target's write pass and read-back ran, for an attempt
    /// without figures of its own.
    timelines: HashMap<TargetId, StageTimeline>,
    /// Each target's capacity as recorded at its start.
    capacities: HashMap<TargetId, ByteSize>,
    /// Verdicts given (and committed) so far.
    verdicts: HashMap<TargetId, (Verdict, AttemptFigures)>,
    /// When each verdict was given, in seconds after `started`.
    finished_after: HashMap<TargetId, f64>,
    /// When the fan-out started.
    started: Instant,
    /// To the live view.
    view: mpsc::UnboundedSender<FlashEvent>,
}

/// How often a flash's progress is written to the records, at most.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A task that writes the attempts' progress it is sent to the records: the
/// latest of it (a newer value replaces one not written yet), at most every
/// [`PROGRESS_EVERY`]. The records keep only the highest counts of a running
/// attempt, so a write that comes late changes nothing once a verdict is
/// recorded.
struct ProgressWriter {
    latest: tokio::sync::watch::Sender<Vec<AttemptSoFar>>,
    /// Dropped to end the task (between two writes, at once).
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressWriter {
    fn start(records: StoreRecords) -> Self {
        let (latest, mut rx) = tokio::sync::watch::channel(Vec::new());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => return,
                    changed = rx.changed() => if changed.is_err() { return },
                }
                let running = rx.borrow_and_update().clone();
                if let Err(error) = records.heartbeat(&running).await {
                    tracing::warn!(%error, "cannot record the attempts' progress");
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(PROGRESS_EVERY) => {}
                }
            }
        });
        ProgressWriter { latest, stop, task }
    }

    /// Ends the task, once a write it is making is done (the records are
    /// then the flash's alone to write).
    async fn finish(self) {
        drop(self.stop);
        drop(self.latest);
        let _ = self.task.await;
    }
}

impl Flash {
    /// A flash whose attempts (`attempts`, recorded with `starts`) have
    /// started in the records; its fan-out starts now.
    fn new(
        records: StoreRecords,
        targets: &Targets,
        (attempts, starts): Started,
        retries: u32,
        view: mpsc::UnboundedSender<FlashEvent>,
    ) -> Self {
        let capacities = targets
            .list
            .iter()
            .zip(&targets.identities)
            .map(|((id, _), (identity, _))| (id.clone(), ByteSize(identity.capacity)))
            .collect();
        let progress = Some(ProgressWriter::start(records.clone()));
        Flash {
            records,
            attempts,
            starts,
            retries,
            attempts_made: HashMap::new(),
            stages: HashMap::new(),
            written: HashMap::new(),
            verified: HashMap::new(),
            progress,
            timelines: HashMap::new(),
            capacities,
            verdicts: HashMap::new(),
            finished_after: HashMap::new(),
            started: Instant::now(),
            view,
        }
    }

    /// The run's summary of the image `sha256` (`size` bytes; `None`: never
    /// known, the flash stopped before its import ended): the verdicts given,
    /// in the targets' order.
    fn into_summary(
        mut self,
        targets: &[(TargetId, Arc<dyn Target>)],
        sha256: Option<Sha256Digest>,
        size: u64,
    ) -> Summary {
        let results = targets
            .iter()
            .filter_map(|(id, _)| {
                let (verdict, figures) = self.verdicts.remove(id)?;
                Some((id.clone(), verdict, figures))
            })
            .collect();
        Summary::new(
            sha256,
            size,
            self.started.elapsed().as_secs_f64(),
            results,
            &self.finished_after,
            &self.attempts_made,
        )
    }

    /// Sends the view the summary of a flash that ends with an error after
    /// its attempts were recorded ([`FlashEvent::Unfinished`]).
    fn unfinished(
        self,
        targets: &[(TargetId, Arc<dyn Target>)],
        sha256: Option<Sha256Digest>,
        size: u64,
    ) {
        let view = self.view.clone();
        let summary = self.into_summary(targets, sha256, size);
        let _ = view.send(FlashEvent::Unfinished(Box::new(summary)));
    }

    /// Commits a verdict to the records (to the target's latest attempt, if
    /// it has one).
    async fn record_verdict(
        &self,
        id: &TargetId,
        verdict: &Verdict,
        figures: &AttemptFigures,
    ) -> Result<(), AppError> {
        if let Some(&attempt) = self.attempts.get(id) {
            self.records
                .attempt_finished(attempt, verdict, figures)
                .await
                .map_err(|source| AppError::RecordVerdict {
                    target: id.to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Starts every target and gives each its verdict as it comes, until all
    /// have one, or a stop's grace is over.
    async fn drive(
        &mut self,
        fanout: Fanout,
        targets: &[(TargetId, Arc<dyn Target>)],
        mut events: mpsc::UnboundedReceiver<EngineEvent>,
        stops: &mut mpsc::UnboundedReceiver<StopSignal>,
        grace: Duration,
    ) -> Result<Ended, AppError> {
        let mut cancellers = Vec::new();
        let mut pending = FuturesUnordered::new();
        for (id, target) in targets {
            let handle = fanout.start(id.clone(), target.clone());
            cancellers.push(handle.canceller());
            pending.push(handle.finish());
        }
        // The fan-out is kept for retries (a target written again starts
        // there); nothing below waits for its channel to close, and it is
        // dropped when every target has its last verdict.
        let mut ended = Ended::Completed;
        let mut stop_by: Option<tokio::time::Instant> = None;
        while !pending.is_empty() {
            let deadline = async move {
                match stop_by {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let stop = tokio::select! {
                Some(event) = events.recv() => {
                    self.on_event(event).await?;
                    None
                }
                Some(outcome) = pending.next() => {
                    // What the attempt said before its end is in the channel
                    // already: its stages are recorded before its verdict.
                    while let Ok(event) = events.try_recv() {
                        self.on_event(event).await?;
                    }
                    let id = outcome.id.clone();
                    // Whether the attempt's thread still holds the stick (a
                    // stall, its I/O stuck in the kernel): a retry waits for it.
                    let hold = outcome.hold.clone();
                    // Retries only while nothing asked the flash to stop.
                    let may_retry = stop_by.is_none() && matches!(ended, Ended::Completed);
                    let stop = self.on_outcome(outcome, may_retry).await?;
                    if stop.is_none() && may_retry && !self.verdicts.contains_key(&id) {
                        // Written again: an attempt of its own, already recorded.
                        if let Some((_, target)) = targets.iter().find(|(t, _)| *t == id) {
                            let handle = fanout.start_after(id, target.clone(), Some(hold));
                            cancellers.push(handle.canceller());
                            pending.push(handle.finish());
                        }
                    }
                    stop
                }
                Some(signal) = stops.recv() => {
                    if stop_by.is_some() {
                        self.notice(Notice::NotWaitingLonger(signal));
                        break;
                    }
                    self.notice(Notice::Stopping { signal, grace });
                    Some(Ended::Signal(signal))
                }
                () = deadline => {
                    self.notice(Notice::GraceOver);
                    break;
                }
            };
            if let Some(stop) = stop {
                for canceller in &cancellers {
                    canceller.cancel();
                }
                stop_by.get_or_insert_with(|| tokio::time::Instant::now() + grace);
                // A source failure outranks a signal: the run was aborted.
                if !matches!(ended, Ended::SourceFailed(_)) {
                    ended = stop;
                }
            }
        }
        Ok(ended)
    }

    async fn on_event(&mut self, event: EngineEvent) -> Result<(), AppError> {
        match event.kind {
            EngineEventKind::Stage { stage } => {
                self.stages.insert(event.target.clone(), stage);
                self.timelines
                    .entry(event.target.clone())
                    .or_default()
                    .enter(stage, Instant::now());
                if let Some(&attempt) = self.attempts.get(&event.target) {
                    if let Err(error) = self.records.attempt_stage(attempt, stage).await {
                        tracing::error!(%error, "cannot record a stage");
                    }
                }
                let _ = self.view.send(FlashEvent::Engine(event));
            }
            EngineEventKind::Progress {
                stage: stage @ (Stage::Writing | Stage::Verifying),
                done,
                ..
            } => {
                let counted = match stage {
                    Stage::Writing => &mut self.written,
                    _ => &mut self.verified,
                };
                let count = counted.entry(event.target.clone()).or_default();
                *count = (*count).max(done);
                if let Some(writer) = &self.progress {
                    writer.latest.send_replace(self.so_far());
                }
                let _ = self.view.send(FlashEvent::Engine(event));
            }
            EngineEventKind::Progress { .. } | EngineEventKind::Resetting => {
                let _ = self.view.send(FlashEvent::Engine(event));
            }
            // Shown once committed, in `settle`.
            EngineEventKind::Finished { .. } => {}
        }
        Ok(())
    }

    /// Settles one attempt's end; a source failure asks to stop the others.
    /// With `may_retry`, a failure that may pass when written again (and
    /// retries left for its target) is recorded, and a new attempt of the
    /// target recorded as started: it has no verdict yet, and the caller
    /// starts it.
    async fn on_outcome(
        &mut self,
        outcome: AttemptOutcome,
        may_retry: bool,
    ) -> Result<Option<Ended>, AppError> {
        match outcome.result {
            Ok((verdict, figures)) => {
                let made = self.attempts_made.get(&outcome.id).copied().unwrap_or(0);
                let retry = may_retry
                    && made < self.retries
                    && verdict.failure().is_some_and(|f| f.reason.is_retryable());
                if retry {
                    self.retry(outcome.id, verdict, figures, made + 1).await?;
                } else {
                    self.settle(outcome.id, verdict, figures).await?;
                }
                Ok(None)
            }
            Err(error) => {
                tracing::error!(%error, "source failed; stopping every attempt");
                let stage = self
                    .stages
                    .get(&outcome.id)
                    .copied()
                    .unwrap_or(Stage::Preparing);
                let interrupted = Verdict::Fail(Failure {
                    reason: FailReason::Interrupted,
                    stage,
                });
                let figures = self.figures_so_far(&outcome.id);
                self.settle(outcome.id, interrupted, figures).await?;
                Ok(Some(Ended::SourceFailed(error)))
            }
        }
    }

    /// Commits a retryable failure to the records, records the target's next
    /// attempt as started (its `retry`-th retry) and says so.
    async fn retry(
        &mut self,
        id: TargetId,
        verdict: Verdict,
        figures: AttemptFigures,
        retry: u32,
    ) -> Result<(), AppError> {
        self.record_verdict(&id, &verdict, &figures).await?;
        if let Some(start) = self.starts.get(&id) {
            let attempt = self.records.attempt_started(start).await?;
            self.attempts.insert(id.clone(), attempt);
        }
        self.attempts_made.insert(id.clone(), retry);
        // The new attempt starts with nothing of its own written.
        self.stages.remove(&id);
        self.written.remove(&id);
        self.verified.remove(&id);
        self.timelines.remove(&id);
        tracing::info!(device = %id, %verdict, retry, "writing it again after a failure that may pass");
        self.notice(Notice::Retrying {
            target: id,
            failure: verdict
                .failure()
                .map(|f| format!("failed while {}: {}", f.stage, f.reason))
                .unwrap_or_default(),
            attempt: retry + 1,
            of: self.retries + 1,
        });
        Ok(())
    }

    /// Commits a verdict to the records, then shows it.
    async fn settle(
        &mut self,
        id: TargetId,
        verdict: Verdict,
        figures: AttemptFigures,
    ) -> Result<(), AppError> {
        self.record_verdict(&id, &verdict, &figures).await?;
        self.finished_after
            .insert(id.clone(), self.started.elapsed().as_secs_f64());
        let _ = self.view.send(FlashEvent::Engine(EngineEvent {
            target: id.clone(),
            kind: EngineEventKind::Finished {
                verdict: verdict.clone(),
                figures: figures.clone(),
            },
        }));
        self.verdicts.insert(id, (verdict, figures));
        Ok(())
    }

    /// Attempts without a verdict (never started, or abandoned at a safe
    /// point they never reached) were interrupted. The progress writer ends
    /// first: the verdicts are the last word.
    async fn settle_unfinished(
        &mut self,
        targets: &[(TargetId, Arc<dyn Target>)],
    ) -> Result<(), AppError> {
        if let Some(writer) = self.progress.take() {
            writer.finish().await;
        }
        for (id, _) in targets {
            if !self.verdicts.contains_key(id) {
                let stage = self.stages.get(id).copied().unwrap_or(Stage::Preparing);
                let interrupted = Verdict::Fail(Failure {
                    reason: FailReason::Interrupted,
                    stage,
                });
                let figures = self.figures_so_far(id);
                self.settle(id.clone(), interrupted, figures).await?;
            }
        }
        Ok(())
    }

    /// The figures of an attempt that ends without its own (abandoned at a
    /// stop, or its source failed): its capacity, and the bytes its progress
    /// last said were written, a lower bound once its write pass began (a
    /// write in flight may still land; its thread may go on until it reaches
    /// a safe point), and the times its write pass and read-back took
    /// (until now for the one under way). Nothing of the image is written
    /// while it prepares.
    fn figures_so_far(&self, id: &TargetId) -> AttemptFigures {
        let (write_secs, verify_secs) = self
            .timelines
            .get(id)
            .map_or((0.0, 0.0), |timeline| timeline.secs(Instant::now()));
        let began_writing = self
            .stages
            .get(id)
            .is_some_and(|stage| *stage != Stage::Preparing);
        AttemptFigures {
            capacity: self.capacities.get(id).copied().unwrap_or_default(),
            bytes_written: self.written.get(id).copied().unwrap_or(0),
            bytes_verified: self.verified.get(id).copied().unwrap_or(0),
            bytes_written_bound: if began_writing {
                Bound::LowerBound
            } else {
                Bound::Exact
            },
            write_secs,
            verify_secs,
            ..AttemptFigures::default()
        }
    }

    /// How far each attempt without a verdict has got.
    fn so_far(&self) -> Vec<AttemptSoFar> {
        self.attempts
            .iter()
            .filter(|(id, _)| !self.verdicts.contains_key(*id))
            .map(|(id, &attempt_id)| AttemptSoFar {
                attempt_id,
                bytes_written: self.written.get(id).copied().unwrap_or(0),
                bytes_verified: self.verified.get(id).copied().unwrap_or(0),
            })
            .collect()
    }

    fn notice(&self, notice: Notice) {
        let _ = self.view.send(FlashEvent::Notice(notice));
    }
}
