//! One target's pipeline: prepare → probe → write → flush → verify, blocking, on
//! the attempt's own OS thread.
//!
//! Every target failure ends here as a [`Verdict`]; only a source failure comes
//! out as an `Err`, because it is not this target's fault and aborts the fan-out.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use flashrack_core::{
    AttemptFigures, Bound, ByteSize, ChunkKind, DataRanges, EngineEvent, EngineEventKind,
    FailReason, Failure, GuardRefusal, ImageManifest, ProbeOperation, Sha256Digest, Stage,
    TargetId, Verdict, VerifyMethod, VerifyMode, VerifySample,
};
use flashrack_target::{AlignedBuf, Target, TargetError, TargetReader, TargetWriter};
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::{xxh3_128, Xxh3Default};

use crate::fanout::EventLink;
use crate::feed::{Follower, WaitError, Waiter};
use crate::narrow::{narrow_failed_write, Narrowed};
use crate::probe::{ProbeFailure, ProbeHooks, ProbeOptions, ProbeResult, Prober};
use crate::source::{Chunk, SharedSource};
use crate::{Clock, EngineError};

/// What an attempt shares with its supervisor: how far it is, and whether it
/// should stop. Plain atomics: read by the watchdog while the thread writes.
pub struct AttemptProgress {
    /// The clock heartbeats are stamped with (the watchdog's).
    clock: Clock,
    /// The clock's time when the attempt began; beats are stamped relative to it.
    origin: Instant,
    /// When the attempt last completed an I/O (or changed stage), in nanoseconds
    /// since `origin`: a watchdog that finds it older than the stall timeout
    /// declares the target stalled. Stamped by the thread itself, so the verdict
    /// does not depend on when the watchdog looks.
    last_beat: AtomicU64,
    /// The current [`Stage`], as `stage_code`.
    stage: AtomicU8,
    /// Bytes done in the current stage.
    pub done: AtomicU64,
    /// Set by the supervisor (removal, stall, operator stop, shutdown); the thread
    /// checks it between I/Os and stops with `Interrupted`.
    pub cancel: AtomicBool,
    /// Wakes a supervisor that waits, before the attempt's thread starts, for
    /// the stick's previous attempt to let go of it
    /// ([`request_cancel`](Self::request_cancel) notifies it; the thread
    /// itself polls `cancel`).
    stop: tokio::sync::Notify,
    /// The verdict's reason when the attempt was given up on without its
    /// thread ([`abandon`](Self::abandon)); a `std` mutex, held only to read
    /// or set it.
    abandoned: std::sync::Mutex<Option<FailReason>>,
    /// Wakes the supervisor when the attempt is abandoned.
    abandon_notify: tokio::sync::Notify,
    /// The capacity the target reported, once known.
    capacity: AtomicU64,
    /// Bytes of the image the target has acknowledged (the write pass's
    /// progress; it stays when the attempt moves on to flush and verify).
    written: AtomicU64,
    /// Bytes read back and checked so far.
    verified: AtomicU64,
    /// Bytes of data chunks the write pass took from the file of the import
    /// it followed instead of from the feed ([`bytes_reread`](Self::bytes_reread)).
    reread: AtomicU64,
}

impl AttemptProgress {
    /// The progress of an attempt starting now on `clock`.
    pub fn new(clock: Clock) -> Self {
        Self {
            origin: clock.now(),
            clock,
            last_beat: AtomicU64::new(0),
            stage: AtomicU8::new(0),
            done: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
            abandoned: std::sync::Mutex::new(None),
            abandon_notify: tokio::sync::Notify::new(),
            capacity: AtomicU64::new(0),
            written: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            reread: AtomicU64::new(0),
        }
    }

    /// Bytes of the image the write pass read back from the file of the
    /// import it followed instead of taking them from the import's feed (the
    /// feed no longer held them: the target fell behind, or was stuck
    /// starting); whether this target read them or shared another's read of
    /// them (the disk read them once). 0 for a target that kept up, and for
    /// an image already cached (no import, no feed). So far, for an attempt
    /// still running.
    pub fn bytes_reread(&self) -> u64 {
        self.reread.load(Ordering::Relaxed)
    }

    /// Counts a chunk of `len` bytes the write pass fetched, if its bytes
    /// were read from the followed import's file (`from_file`) rather than
    /// taken from the feed (zeros are never read).
    fn note_fetched(&self, len: usize, chunk: &Chunk, from_file: bool) {
        if from_file && matches!(chunk, Chunk::Data(_)) {
            self.reread.fetch_add(len as u64, Ordering::Relaxed);
        }
    }

    /// The stage the attempt is in.
    pub fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Relaxed) {
            0 => Stage::Preparing,
            1 => Stage::Writing,
            2 => Stage::Flushing,
            4 => Stage::Resetting,
            _ => Stage::Verifying,
        }
    }

    /// When the attempt last made progress (its start, if it has made none).
    pub fn last_beat(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last_beat.load(Ordering::Relaxed))
    }

    fn set_stage(&self, stage: Stage) {
        let code = match stage {
            Stage::Preparing => 0,
            Stage::Writing => 1,
            Stage::Flushing => 2,
            Stage::Verifying => 3,
            Stage::Resetting => 4,
        };
        self.stage.store(code, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.beat();
    }

    /// Asks the attempt to stop: its thread at its next safe point, its
    /// supervisor at once if it is still waiting for the stick to be released.
    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.stop.notify_waiters();
    }

    /// Ends once [`request_cancel`](Self::request_cancel) has been called.
    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.stop.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a cancel between the two
            // is not missed.
            notified.as_mut().enable();
            if self.cancel.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }

    /// Gives up on the attempt with `reason` (the first reason given
    /// stands): its thread is told to stop, and its supervisor gives the
    /// verdict without it unless it answers within
    /// [`ABANDON_GRACE`](crate::fanout::ABANDON_GRACE) (a thread stuck in the
    /// kernel is abandoned as a stalled one is).
    pub fn abandon(&self, reason: FailReason) {
        {
            let mut abandoned = self.abandoned.lock().unwrap_or_else(|p| p.into_inner());
            if abandoned.is_none() {
                *abandoned = Some(reason);
            }
        }
        // Its thread stops at its next safe point, and a supervisor still
        // waiting for the stick's release before starting it stops waiting.
        self.request_cancel();
        self.abandon_notify.notify_waiters();
    }

    /// Ends with the reason once [`abandon`](Self::abandon) has been called.
    pub(crate) async fn abandoned(&self) -> FailReason {
        loop {
            let notified = self.abandon_notify.notified();
            tokio::pin!(notified);
            // Registered before the reason is read: an abandonment between
            // the two is not missed.
            notified.as_mut().enable();
            if let Some(reason) = self
                .abandoned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return reason;
            }
            notified.await;
        }
    }

    pub(crate) fn beat(&self) {
        let since = self.clock.now().saturating_duration_since(self.origin);
        // 2^64 ns is 584 years: an attempt never gets there.
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.last_beat.fetch_max(nanos, Ordering::Relaxed);
    }

    /// The figures known from the counters, for a verdict given without the
    /// attempt's thread (a stall): the bytes written are a lower bound, as a
    /// write in flight may still land.
    pub fn figures_so_far(&self) -> AttemptFigures {
        AttemptFigures {
            capacity: ByteSize(self.capacity.load(Ordering::Relaxed)),
            bytes_written: self.written.load(Ordering::Relaxed),
            bytes_verified: self.verified.load(Ordering::Relaxed),
            bytes_written_bound: Bound::LowerBound,
            ..AttemptFigures::default()
        }
    }
}

/// Everything one attempt needs.
pub struct AttemptContext {
    /// Which target this is, for events.
    pub id: TargetId,
    /// The target itself.
    pub target: Arc<dyn Target>,
    /// The shared source.
    pub source: Arc<SharedSource>,
    /// Shared with the supervisor.
    pub progress: Arc<AttemptProgress>,
    /// Where stage and progress events go (until the supervisor abandons the
    /// attempt and cuts the link).
    pub events: Arc<EventLink>,
    /// How to verify.
    pub verify: VerifyMode,
    /// Whether to run the capacity probe on media that may lie.
    pub probe_capacity: bool,
    /// How the probe works against a stick's cache and how fast it narrows.
    pub probe: ProbeOptions,
    /// Whether to reset a target that can be reset before reading it back.
    pub reset_before_verify: bool,
    /// A sparse attempt: only these ranges are written and read back
    /// ([`crate::EngineOptions::sparse`]).
    pub sparse: Option<Arc<DataRanges>>,
    /// Check only this share of the chunks, in percent (`None`: every byte).
    pub sample_percent: Option<f64>,
    /// Write nothing: read the target back and compare (an audit).
    pub audit: bool,
    /// Minimum time between progress events.
    pub progress_interval: Duration,
}

/// Why an attempt stopped early.
enum Stop {
    Fail(Failure),
    Source(EngineError),
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Self {
        Stop::Source(e)
    }
}

/// A wait for a followed import that ended without its answer, in `stage`.
fn wait_stop(stage: Stage, error: WaitError) -> Stop {
    match error {
        WaitError::Cancelled => fail(stage, FailReason::Interrupted),
        WaitError::Source(error) => Stop::Source(error),
    }
}

/// Waits until the image is complete (at once, unless the source follows an
/// import: then until the import has ended and its digest is known). Every
/// attempt does this before it reads back or passes: a failed import fails
/// every attempt as a source failure.
fn wait_for_image(ctx: &AttemptContext, stage: Stage) -> Result<(), Stop> {
    let beat = || ctx.progress.beat();
    let waiter = Waiter {
        cancel: &ctx.progress.cancel,
        beat: &beat,
    };
    ctx.source
        .complete(&waiter)
        .map_err(|error| wait_stop(stage, error))
}

/// Runs the whole pipeline. `Ok` carries the verdict, pass or fail, with figures;
/// `Err` is a failure of the source.
///
/// `follower`: the attempt's place among the followers of the import its
/// source follows ([`SharedSource::follow`], taken when the attempt was
/// started, before it opens its stick, passes the guard and probes it, so
/// that the chunks the import produces meanwhile are kept for it within the
/// feed's bounds instead of being read again from the file); it leaves when
/// the write pass ends, or when the attempt ends before it. `None` for a
/// cached image, and for an audit (which writes nothing).
pub fn run_attempt(
    ctx: &AttemptContext,
    follower: Option<Follower>,
) -> Result<(Verdict, AttemptFigures), EngineError> {
    let mut figures = AttemptFigures::default();
    match pipeline(ctx, follower, &mut figures) {
        Ok(()) => Ok((Verdict::Pass, figures)),
        Err(Stop::Fail(failure)) => {
            // A stick that went away may hold more than it acknowledged: a
            // write in flight may have landed.
            if matches!(failure.reason, FailReason::Removed { .. }) {
                figures.bytes_written_bound = Bound::LowerBound;
            }
            Ok((Verdict::Fail(failure), figures))
        }
        Err(Stop::Source(e)) => Err(e),
    }
}

fn fail(stage: Stage, reason: FailReason) -> Stop {
    Stop::Fail(Failure { reason, stage })
}

/// Maps a device error in `stage` to a failure.
fn device_failure(stage: Stage, error: TargetError) -> Stop {
    let reason = match error {
        TargetError::Removed => FailReason::Removed { during: stage },
        TargetError::ReadOnly => FailReason::ReadOnly,
        TargetError::Cancelled => FailReason::Interrupted,
        TargetError::Busy(detail) => {
            let refusal = GuardRefusal::busy(detail);
            FailReason::Refused {
                code: Some(refusal.code),
                detail: refusal.message,
            }
        }
        TargetError::Refused(refusal) => FailReason::Refused {
            code: Some(refusal.code),
            detail: refusal.message,
        },
        TargetError::Open(detail) => FailReason::Unavailable { detail },
        TargetError::LostAfterReset { after_secs } => FailReason::LostAfterReset { after_secs },
        TargetError::ChangedAfterReset(detail) => FailReason::ChangedAfterReset { detail },
        // The station's own shortage is never the stick's verdict.
        TargetError::Station(detail) => FailReason::StationError { detail },
        TargetError::Io { offset, source } => match stage {
            Stage::Verifying => FailReason::ReadError {
                offset,
                detail: source.to_string(),
            },
            // A reset that fails before the read-back: the write pass has
            // not been shown to be durable.
            Stage::Flushing | Stage::Resetting => FailReason::FlushError {
                detail: source.to_string(),
            },
            _ => FailReason::WriteError {
                offset,
                detail: source.to_string(),
            },
        },
    };
    fail(stage, reason)
}

/// Maps a target error during the capacity probe. An I/O error is the probe's
/// own failure, named with what it was doing; a removal, a read-only stick or a
/// stop is what it is in any stage.
fn probe_failure(ProbeFailure { operation, error }: ProbeFailure) -> Stop {
    // The probe's reset (and the open after it) is its own stage: a stick lost
    // in it, one that comes back different or a reset that fails fails there.
    let stage = match operation {
        ProbeOperation::Reset => Stage::Resetting,
        _ => Stage::Preparing,
    };
    let reason = match error {
        TargetError::Io { offset, source } => FailReason::ProbeError {
            operation,
            offset: matches!(operation, ProbeOperation::Write | ProbeOperation::Read)
                .then_some(offset),
            detail: source.to_string(),
        },
        TargetError::Open(detail) => FailReason::ProbeError {
            operation,
            offset: None,
            detail,
        },
        other => return device_failure(stage, other),
    };
    fail(stage, reason)
}

/// Maps a failed write of `data` at `offset` in the write pass. An I/O error is
/// narrowed down to the block that fails (see [`crate::narrow`]): the verdict's
/// offset is that block's, and its detail says which request failed (offset and
/// length) and how the block was found, or why it was not.
fn write_failure(
    ctx: &AttemptContext,
    writer: &mut dyn TargetWriter,
    offset: u64,
    data: &[u8],
    block: usize,
    error: TargetError,
) -> Stop {
    let TargetError::Io {
        offset: failed_at,
        source: original,
    } = error
    else {
        return device_failure(Stage::Writing, error);
    };
    let progress = &ctx.progress;
    let request = format!("{}-byte write at offset {offset}", data.len());
    let narrowed = narrow_failed_write(
        writer,
        offset,
        data,
        failed_at,
        block,
        &progress.cancel,
        || progress.beat(),
    );
    let (offset, detail) = match narrowed {
        Narrowed::Block {
            offset,
            len,
            source,
        } => {
            let mut detail = format!(
                "{source} in the {len}-byte block there, narrowed down from the failed {request}"
            );
            if source.to_string() != original.to_string() {
                detail.push_str(&format!(" (which failed with: {original})"));
            }
            (offset, detail)
        }
        Narrowed::NotRepeated => (
            failed_at,
            format!(
                "{original} in the {request}; written again in smaller pieces it succeeded, \
                 so the failing block is unknown"
            ),
        ),
        Narrowed::Cancelled => (
            failed_at,
            format!("{original} in the {request} (stopped before the failing block was found)"),
        ),
        Narrowed::Target(other) => return device_failure(Stage::Writing, other),
    };
    fail(Stage::Writing, FailReason::WriteError { offset, detail })
}

struct Reporter<'a> {
    ctx: &'a AttemptContext,
    stage: Stage,
    total: u64,
    last_event: Instant,
    last_done: u64,
}

impl<'a> Reporter<'a> {
    fn enter(ctx: &'a AttemptContext, stage: Stage, total: u64) -> Self {
        ctx.progress.set_stage(stage);
        let _ = ctx.events.send(EngineEvent {
            target: ctx.id.clone(),
            kind: EngineEventKind::Stage { stage },
        });
        Self {
            ctx,
            stage,
            total,
            last_event: Instant::now(),
            last_done: 0,
        }
    }

    /// Records progress; emits an event at most every `progress_interval`,
    /// and at once for the stage's first bytes (a target that writes while
    /// its image downloads shows that it has begun, even if it then waits
    /// for the download longer than the interval).
    fn advance(&mut self, done: u64) -> Result<(), Stop> {
        let progress = &self.ctx.progress;
        progress.done.store(done, Ordering::Relaxed);
        match self.stage {
            Stage::Writing => progress.written.store(done, Ordering::Relaxed),
            Stage::Verifying => progress.verified.store(done, Ordering::Relaxed),
            Stage::Preparing | Stage::Flushing | Stage::Resetting => {}
        }
        progress.beat();
        if progress.cancel.load(Ordering::Relaxed) {
            return Err(fail(self.stage, FailReason::Interrupted));
        }
        let elapsed = self.last_event.elapsed();
        let first = self.last_done == 0 && done > 0;
        if first || elapsed >= self.ctx.progress_interval || done == self.total {
            let bytes_per_sec = (done - self.last_done) as f64 / elapsed.as_secs_f64().max(1e-9);
            let _ = self.ctx.events.send(EngineEvent {
                target: self.ctx.id.clone(),
                kind: EngineEventKind::Progress {
                    stage: self.stage,
                    done,
                    total: self.total,
                    bytes_per_sec,
                },
            });
            self.last_event = Instant::now();
            self.last_done = done;
        }
        Ok(())
    }
}

fn pipeline(
    ctx: &AttemptContext,
    follower: Option<Follower>,
    figures: &mut AttemptFigures,
) -> Result<(), Stop> {
    // A followed import of a compressed file knows its size only at its end:
    // the write pass then fails a target that is too small when a chunk
    // would not fit.
    let image_size = ctx.source.size_hint();

    // Prepare: size, exclusive open (through the guard), capacity probe.
    let _ = Reporter::enter(ctx, Stage::Preparing, 0);
    let geometry = ctx
        .target
        .geometry()
        .map_err(|e| device_failure(Stage::Preparing, e))?;
    figures.capacity = ByteSize(geometry.capacity);
    ctx.progress
        .capacity
        .store(geometry.capacity, Ordering::Relaxed);
    let block = geometry.logical_block_size.max(1) as usize;
    // Direct I/O writes and reads whole logical blocks: the map's ranges are
    // widened to them (a map's blocks are 4 KiB as a rule, so this changes
    // nothing but on a device with larger blocks). A sparse attempt says
    // what it leaves out from here on, whatever ends it (a stick too small,
    // read-only or without a medium as well as one written).
    let ranges = ctx.sparse.as_ref().map(|r| r.aligned_to(block as u64));
    if let Some(ranges) = &ranges {
        figures.bytes_skipped = ranges.skipped_bytes();
    }
    // A card reader without a card (or a stick whose controller lost its
    // flash) reports zero bytes: that is no medium, not a small one.
    if geometry.capacity == 0 {
        return Err(fail(Stage::Preparing, FailReason::NoMedium));
    }
    if let Some(image_size) = image_size.filter(|&size| geometry.capacity < size) {
        return Err(fail(
            Stage::Preparing,
            FailReason::TooSmall {
                capacity: ByteSize(geometry.capacity),
                needed: ByteSize(image_size),
            },
        ));
    }
    let ranges = ranges.as_ref();
    if ctx.audit {
        // Nothing is written: no writer, no probe, no reset. What the stick
        // received before is not known to this attempt. A sparse audit reads
        // back the map's ranges only.
        figures.bytes_written_bound = Bound::Unknown;
        let mode = match ctx.verify {
            VerifyMode::None => VerifyMode::Compare,
            mode => mode,
        };
        wait_for_image(ctx, Stage::Preparing)?;
        // An image followed while it was imported may have been of unknown
        // size when the stick was prepared: judged now it is whole.
        let size = ctx.source.manifest().size();
        if geometry.capacity < size {
            return Err(fail(
                Stage::Preparing,
                FailReason::TooSmall {
                    capacity: ByteSize(geometry.capacity),
                    needed: ByteSize(size),
                },
            ));
        }
        return verify_image(ctx, mode, block, ranges, figures);
    }
    let mut writer = ctx
        .target
        .open_writer()
        .map_err(|e| device_failure(Stage::Preparing, e))?;
    if ctx.probe_capacity && ctx.target.may_misreport_capacity() {
        let beat = || ctx.progress.beat();
        // A reset may take the stick away and bring it back: the station
        // hears of it first, as for the reset before the read-back.
        // The reset is its own stage, entered before the stick goes away and
        // left (back to preparing) once it is open again.
        let announce_reset = || {
            let _ = Reporter::enter(ctx, Stage::Resetting, 0);
            let _ = ctx.events.send(EngineEvent {
                target: ctx.id.clone(),
                kind: EngineEventKind::Resetting,
            });
        };
        let reset_over = || {
            let _ = Reporter::enter(ctx, Stage::Preparing, 0);
        };
        let mut prober = Prober::new(
            &*ctx.target,
            writer,
            block as u64,
            probe_nonce(),
            ctx.probe,
            ProbeHooks {
                cancel: &ctx.progress.cancel,
                beat: &beat,
                announce_reset: &announce_reset,
                reset_over: &reset_over,
            },
        );
        let outcome = prober.run(geometry.capacity);
        match outcome {
            Ok(ProbeResult::Honest) => {}
            Ok(ProbeResult::Lie { real_bytes }) => {
                return Err(fail(
                    Stage::Preparing,
                    FailReason::CapacityLie {
                        claimed: ByteSize(geometry.capacity),
                        first_bad_offset: real_bytes,
                        real_bytes: Some(ByteSize(real_bytes)),
                    },
                ))
            }
            Ok(ProbeResult::LosesFlushed) => {
                return Err(fail(
                    Stage::Preparing,
                    FailReason::FlushError {
                        detail: "the capacity probe's markers, flushed, were gone after a \
                                 reset of the stick, even at offset 0: it loses what it \
                                 acknowledges as written"
                            .into(),
                    },
                ))
            }
            Err(failure) => return Err(probe_failure(failure)),
        }
        writer = prober
            .into_writer()
            .expect("a probe that answered holds its writer");
    }
    if ctx.progress.cancel.load(Ordering::Relaxed) {
        return Err(fail(Stage::Preparing, FailReason::Interrupted));
    }

    write_image(ctx, &mut *writer, block, ranges, follower, figures)?;
    // Nothing is read back, and no verdict given, before the image is known
    // whole: a followed import ends here, with its digest checked.
    wait_for_image(ctx, Stage::Flushing)?;

    // A reset drops whatever the stick keeps in a cache of its own, so that
    // the read-back shows what its medium holds. The writer is closed first
    // (a reset takes the device away from every handle) and the target opened
    // again afterwards, which also claims it again, through the guard for a
    // block device. The reset is its own stage: a stick lost in it, one that
    // comes back different or a reset that fails fails in `resetting` (an I/O
    // error of the reset is a flush error: the write pass has not been shown
    // to be durable).
    let reset = ctx.reset_before_verify && ctx.verify != VerifyMode::None && ctx.target.can_reset();
    if reset {
        drop(writer);
        let _ = Reporter::enter(ctx, Stage::Resetting, 0);
        let _ = ctx.events.send(EngineEvent {
            target: ctx.id.clone(),
            kind: EngineEventKind::Resetting,
        });
        ctx.target
            .reset()
            .map_err(|e| device_failure(Stage::Resetting, e))?;
        writer = ctx
            .target
            .open_writer()
            .map_err(|e| device_failure(Stage::Resetting, e))?;
        ctx.progress.beat();
    }

    // The writer (and with it the exclusive claim on a block device) is kept until
    // the read-back is done, so nobody can mount or write the stick in between.
    match ctx.verify {
        VerifyMode::None => {
            figures.verify_method = Some(VerifyMethod::None);
            Ok(())
        }
        mode => {
            figures.verified_after_reset = reset;
            let verified = verify_image(ctx, mode, block, ranges, figures);
            drop(writer);
            verified
        }
    }
}

/// How much lower than the rest of the process the flashing threads run. They
/// mostly sleep in I/O on real sticks; when they do compete for CPU (many fast
/// targets on a small machine), the station's event loop, dashboard and API come
/// first, so the operator's view stays live.
pub const IO_THREAD_NICENESS: i32 = 5;

/// Sets the calling thread's niceness to the process's (its main thread's) plus
/// [`IO_THREAD_NICENESS`] (Linux applies `setpriority` to a single thread when
/// given its thread id). The level is absolute, not relative to the calling
/// thread's: a thread started by a thread that already runs lower (the attempt's
/// helper, which inherits the attempt thread's niceness) ends at the same level,
/// not lower again. Best effort: a failure leaves the priority as it was.
pub fn lower_priority() {
    let process = rustix::process::getpriority_process(Some(rustix::process::getpid()));
    let tid = rustix::thread::gettid();
    if let Ok(base) = process {
        let _ = rustix::process::setpriority_process(Some(tid), base + IO_THREAD_NICENESS);
    }
}

/// Starts `produce` on the attempt's helper thread, handing its items to the
/// attempt's thread over a channel with room for `depth` of them. The helper
/// borrows from the attempt (scoped thread): the scope joins it when the pass
/// ends, after the attempt's side of the channels has been dropped, which stops
/// it at its next hand-over. It runs at the attempt thread's priority.
fn spawn_helper<'scope, T: Send + 'scope>(
    scope: &'scope thread::Scope<'scope, '_>,
    ctx: &AttemptContext,
    stage: Stage,
    depth: usize,
    produce: impl FnOnce(SyncSender<T>) + Send + 'scope,
) -> Result<Receiver<T>, Stop> {
    let (tx, rx) = mpsc::sync_channel(depth);
    thread::Builder::new()
        .name(format!("flash {} io", ctx.id))
        .spawn_scoped(scope, move || {
            lower_priority();
            produce(tx)
        })
        .map_err(|e| {
            fail(
                stage,
                FailReason::StationError {
                    detail: format!("cannot start a thread for the attempt: {e}"),
                },
            )
        })?;
    Ok(rx)
}

/// The write pass. A helper thread fetches the next chunk from the shared
/// source while this thread writes the current one to the target, so the
/// target never waits for the source (mapping the chunk, or the disk). A
/// sparse pass (`ranges`) fetches only the chunks that hold mapped bytes and
/// writes only those bytes.
fn write_image(
    ctx: &AttemptContext,
    writer: &mut dyn TargetWriter,
    block: usize,
    ranges: Option<&DataRanges>,
    follower: Option<Follower>,
    figures: &mut AttemptFigures,
) -> Result<(), Stop> {
    let source = &*ctx.source;
    let cancel = &ctx.progress.cancel;
    let started = Instant::now();
    // Decided once: a source that follows an import stays followed by this
    // pass even if another attempt sees the import end meanwhile.
    let following = source.is_following();
    let total = match ranges {
        Some(ranges) => ranges.mapped_bytes(),
        // A compressed file still being imported: unknown until its end.
        None => source.size_hint().unwrap_or(0),
    };
    let capacity = figures.capacity.0;
    let mut report = Reporter::enter(ctx, Stage::Writing, total);
    let pass = thread::scope(|scope| -> Result<(), Stop> {
        // A rendezvous channel: the helper holds at most the next chunk while
        // this thread writes one, so an attempt holds at most two chunks. It
        // ends the pass with `None` (past the image's last chunk).
        let chunks = spawn_helper(scope, ctx, Stage::Writing, 0, move |tx| {
            if following {
                let beat = || ctx.progress.beat();
                let waiter = Waiter {
                    cancel,
                    beat: &beat,
                };
                // The import keeps pace with this pass while it keeps up;
                // the follower leaves when the helper ends, however the
                // pass ends.
                for index in 0.. {
                    // Waits for the import to produce the chunk; a failed
                    // import or a stop ends the pass.
                    let next = source
                        .next_chunk(index, &waiter, follower.as_ref())
                        .map_err(|error| wait_stop(Stage::Writing, error))
                        .map(|next| {
                            next.map(|(offset, len, chunk, from_file)| {
                                ctx.progress.note_fetched(len, &chunk, from_file);
                                (offset, len, chunk)
                            })
                        });
                    let end = !matches!(next, Ok(Some(_)));
                    if tx.send(next).is_err() || end {
                        return;
                    }
                }
            }
            // The image is whole (its import ended before this pass began):
            // nothing to keep pace with.
            drop(follower);
            let manifest = source.manifest();
            // The chunks this pass writes, and a window of them ahead of the
            // one being fetched that the kernel is asked to read already.
            let mut ahead = chunks_to_write(manifest, ranges);
            for index in ahead.by_ref().take(PREFETCH_CHUNKS) {
                source.prefetch(index, ranges);
            }
            for index in chunks_to_write(manifest, ranges) {
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(next) = ahead.next() {
                    source.prefetch(next, ranges);
                }
                let (offset, len) = manifest.chunk_span(index);
                let chunk = source
                    .chunk_from(index)
                    .map(|(chunk, from_file)| {
                        // An import that ended before this pass began: what
                        // the feed no longer held is read again.
                        ctx.progress.note_fetched(len, &chunk, from_file);
                        Some((offset, len, chunk))
                    })
                    .map_err(Stop::from);
                let failed = chunk.is_err();
                if tx.send(chunk).is_err() || failed {
                    return;
                }
            }
            let _ = tx.send(Ok(None));
        })?;
        loop {
            // The helper stops early only when the attempt is cancelled.
            let Some((offset, len, chunk)) = chunks
                .recv()
                .map_err(|_| fail(Stage::Writing, FailReason::Interrupted))??
            else {
                break;
            };
            // Only a followed import of unknown size gets here with a chunk
            // past the target's end (otherwise preparing refused the target).
            if offset + len as u64 > capacity {
                return Err(fail(
                    Stage::Writing,
                    FailReason::TooSmall {
                        capacity: ByteSize(capacity),
                        needed: ByteSize(offset + len as u64),
                    },
                ));
            }
            let data: &[u8] = match &chunk {
                Chunk::Zero => &source.zeros()[..len],
                Chunk::Data(data) => data,
            };
            match ranges {
                None => {
                    if let Err(error) = writer.write_all_at(offset, data) {
                        return Err(write_failure(ctx, writer, offset, data, block, error));
                    }
                    figures.bytes_written = offset + len as u64;
                }
                Some(ranges) => {
                    for (at, n) in ranges.within(offset, len as u64) {
                        let part = &data[(at - offset) as usize..(at - offset + n) as usize];
                        if let Err(error) = writer.write_all_at(at, part) {
                            return Err(write_failure(ctx, writer, at, part, block, error));
                        }
                        figures.bytes_written += n;
                    }
                }
            }
            drop(chunk);
            report.advance(figures.bytes_written)?;
        }
        Ok(())
    });
    if pass.is_err() {
        // Ended mid-pass (a write error, a stop, the source's failure): the
        // time it wrote for, beside the bytes it wrote (it said 0 s).
        figures.write_secs = started.elapsed().as_secs_f64();
    }
    pass?;
    let _ = Reporter::enter(ctx, Stage::Flushing, 0);
    writer
        .flush()
        .map_err(|e| device_failure(Stage::Flushing, e))?;
    figures.write_secs = started.elapsed().as_secs_f64();
    if source.follows_import() {
        tracing::debug!(
            reread_bytes = ctx.progress.bytes_reread(),
            "write pass of an image imported in the same run"
        );
    }
    Ok(())
}

/// How many chunks ahead of the one it fetches the write pass asks the
/// kernel to read (`SharedSource::prefetch`). Why: the pass fetched each
/// chunk only when the previous one was being written, so a cold image was
/// read one chunk at a time, and that read, not the writes, set the write
/// pass's pace: on a loop device the write stage took the same time whether
/// it wrote the whole image or only a sparse map's 63 % (bench/README.md,
/// "Sparse writing"). The window costs page cache, not process memory: 8
/// chunks of 4 MiB.
const PREFETCH_CHUNKS: usize = 8;

/// The chunks a write pass writes: all of them, or those that hold a byte of
/// the sparse ranges.
fn chunks_to_write<'a>(
    manifest: &'a ImageManifest,
    ranges: Option<&'a DataRanges>,
) -> impl Iterator<Item = u64> + 'a {
    (0..manifest.chunk_count()).filter(move |&index| {
        let (offset, len) = manifest.chunk_span(index);
        ranges.is_none_or(|r| r.within(offset, len as u64).next().is_some())
    })
}

/// Read-back buffers per attempt: one being filled from the target while the
/// other is checked.
const READ_BUFFERS: usize = 2;

/// Where one read of the verify pass lies: a piece of chunk `index`.
#[derive(Debug, Clone, Copy)]
struct PieceSpan {
    index: u64,
    chunk_offset: u64,
    chunk_len: usize,
    /// Start of the piece within its chunk.
    at: usize,
    /// Bytes of the image in the piece.
    len: usize,
    /// Whether it is the first piece read of its chunk.
    first: bool,
    /// Whether it is the last piece read of its chunk.
    last: bool,
}

impl PieceSpan {
    fn offset(&self) -> u64 {
        self.chunk_offset + self.at as u64
    }
}

/// The pieces of the read-back, in order: every chunk cut into pieces of
/// `piece` bytes (the last piece of a chunk may be shorter); for a sparse
/// read-back (`ranges`), only the parts of those pieces inside the ranges.
fn piece_spans<'a>(
    manifest: &'a ImageManifest,
    piece: usize,
    ranges: Option<&'a DataRanges>,
) -> impl Iterator<Item = PieceSpan> + Send + 'a {
    (0..manifest.chunk_count()).flat_map(move |index| {
        let (chunk_offset, chunk_len) = manifest.chunk_span(index);
        let span = move |at: usize, len: usize| PieceSpan {
            index,
            chunk_offset,
            chunk_len,
            at,
            len,
            first: false,
            last: false,
        };
        let mut spans: Vec<PieceSpan> = match ranges {
            None => (0..chunk_len.div_ceil(piece))
                .map(|p| span(p * piece, (chunk_len - p * piece).min(piece)))
                .collect(),
            Some(ranges) => (0..chunk_len.div_ceil(piece))
                .flat_map(|p| {
                    let start = chunk_offset + (p * piece) as u64;
                    let len = (chunk_len - p * piece).min(piece) as u64;
                    ranges
                        .within(start, len)
                        .map(|(at, n)| span((at - chunk_offset) as usize, n as usize))
                        .collect::<Vec<_>>()
                })
                .collect(),
        };
        if let Some(first) = spans.first_mut() {
            first.first = true;
        }
        if let Some(last) = spans.last_mut() {
            last.last = true;
        }
        spans
    })
}

/// How much the verify pass reads at once. Comparing needs the source chunk
/// next to the read-back, so the read-back is read in half chunks: the two
/// read-back buffers then take one chunk of memory, and with the source chunk
/// an attempt holds two chunks, as in the write pass. Hashing and checking
/// fingerprints need no source chunk (but the whole chunk read back, to find
/// the first bad byte), so they read `whole_chunks`.
fn piece_size(chunk_size: usize, block: usize, whole_chunks: bool) -> usize {
    let half = chunk_size / 2 / 4096 * 4096;
    if !whole_chunks && half > 0 && half.is_multiple_of(block) {
        half
    } else {
        chunk_size
    }
}

/// One read of the verify pass, as the reader thread hands it over.
struct Piece {
    buf: AlignedBuf,
    /// What `read_at` returned for the piece's span.
    read: Result<usize, TargetError>,
}

/// The attempt's side of the reader thread: filled pieces come in order, and
/// their buffers go back to be filled again.
struct PieceFeed<'a> {
    pieces: Receiver<Piece>,
    free: Sender<AlignedBuf>,
    progress: &'a AttemptProgress,
}

impl PieceFeed<'_> {
    /// The next piece. The reader stops before the end only when the attempt
    /// is cancelled or after handing over a read error.
    fn next(&self) -> Result<Piece, Stop> {
        self.pieces
            .recv()
            .map_err(|_| fail(Stage::Verifying, FailReason::Interrupted))
    }

    /// Hands a buffer back to be filled, and counts the piece as progress.
    fn done(&self, buf: AlignedBuf) {
        let _ = self.free.send(buf);
        self.progress.beat();
    }
}

/// The reader thread of the verify pass: reads the pieces in order, each into a
/// free buffer, and hands them over. It stops when the attempt is cancelled,
/// after a read error, or when the attempt stops taking pieces.
fn read_pieces(
    reader: &mut dyn TargetReader,
    spans: impl Iterator<Item = PieceSpan>,
    block: usize,
    cancel: &AtomicBool,
    free: Receiver<AlignedBuf>,
    pieces: SyncSender<Piece>,
) {
    for span in spans {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut buf) = free.recv() else {
            return;
        };
        // Direct I/O reads whole logical blocks; the bytes past the image in
        // the last block belong to the stick and are not compared.
        let read_len = span.len.div_ceil(block) * block;
        let read = reader.read_at(span.offset(), &mut buf[..read_len]);
        let failed = read.is_err();
        if pieces.send(Piece { buf, read }).is_err() || failed {
            return;
        }
    }
}

/// The verify pass. A reader thread reads the target into two buffers in turn
/// while this thread checks the previous piece (double buffering): the target
/// is kept busy while the CPU compares or hashes.
fn verify_image(
    ctx: &AttemptContext,
    mode: VerifyMode,
    block: usize,
    ranges: Option<&DataRanges>,
    figures: &mut AttemptFigures,
) -> Result<(), Stop> {
    let source = &*ctx.source;
    let manifest = source.manifest();
    let started = Instant::now();
    // A chunk's digest covers bytes a sparse read-back does not read: sparse
    // compares.
    let mode = if ranges.is_some() && mode == VerifyMode::Hash {
        VerifyMode::Compare
    } else {
        mode
    };
    // A compare of a target that followed the import checks each chunk read
    // back against its fingerprint instead of the cached bytes: the import
    // read (and stored) the image past the page cache, so a compare would
    // read the whole image from the disk again beside the target, once more
    // per pass (bench/README.md). The proof is the same chain as a compare's,
    // whose cached chunks are themselves checked against those fingerprints.
    // A sampled, audited or sparse read-back, or a manifest without
    // fingerprints, compares as before.
    let by_fingerprint = mode == VerifyMode::Compare
        && source.follows_import()
        && ranges.is_none()
        && ctx.sample_percent.is_none()
        && !ctx.audit
        && manifest.has_chunk_fingerprints();
    let total = ranges.map_or(manifest.size(), DataRanges::mapped_bytes);
    let mut report = Reporter::enter(ctx, Stage::Verifying, total);
    let mut reader = ctx
        .target
        .open_reader()
        .map_err(|e| device_failure(Stage::Verifying, e))?;
    let sample = ctx.sample_percent.map(|percent| {
        let seed = crate::sample::fresh_seed();
        let chosen = crate::sample::choose_chunks(manifest.chunk_count(), percent, seed);
        let facts = VerifySample {
            percent,
            seed,
            chunks_checked: chosen.iter().filter(|&&c| c).count() as u64,
            chunks_total: manifest.chunk_count(),
        };
        (facts, chosen)
    });
    figures.sample = sample.as_ref().map(|(facts, _)| *facts);
    figures.verify_method = Some(match (mode, &sample, ctx.audit) {
        (_, Some(_), _) => VerifyMethod::Sampled,
        (_, None, true) => VerifyMethod::Audit,
        (VerifyMode::Hash, None, false) => VerifyMethod::Hash,
        _ if by_fingerprint => VerifyMethod::Fingerprint,
        _ => VerifyMethod::Compare,
    });
    let chosen: Option<&[bool]> = sample.as_ref().map(|(_, chosen)| chosen.as_slice());
    let whole_chunks = mode == VerifyMode::Hash || by_fingerprint;
    let piece = piece_size(manifest.chunk_size() as usize, block, whole_chunks);
    let spans = move || {
        piece_spans(manifest, piece, ranges)
            .filter(move |s| chosen.is_none_or(|c| c[s.index as usize]))
    };
    if chosen.is_some() {
        report.total = spans().map(|s| s.len as u64).sum();
    }
    let reader = &mut *reader;
    let cancel = &ctx.progress.cancel;
    thread::scope(|scope| -> Result<(), Stop> {
        let (free, free_rx) = mpsc::channel();
        for _ in 0..READ_BUFFERS {
            let _ = free.send(AlignedBuf::zeroed(piece.div_ceil(block) * block));
        }
        let pieces = spawn_helper(scope, ctx, Stage::Verifying, READ_BUFFERS, move |tx| {
            read_pieces(reader, spans(), block, cancel, free_rx, tx)
        })?;
        let feed = PieceFeed {
            pieces,
            free,
            progress: &ctx.progress,
        };
        let mut spans = spans();
        // Bytes read back and checked before the current piece.
        let mut checked: u64 = 0;
        // The source chunk the current chunk is compared with (compare mode).
        let mut expected: Option<Chunk> = None;
        // The current chunk's read-back so far (hash mode): its sha256 where
        // the manifest has chunk digests (formats 1 and 2), else its XXH3-128
        // fingerprint, and the whole read-back's sha256 (format 3).
        let mut hasher = Sha256::new();
        let mut chunk_xxh3 = Xxh3Default::new();
        let mut whole =
            (mode == VerifyMode::Hash && !manifest.has_chunk_digests()).then(Sha256::new);
        while let Some(span) = spans.next() {
            let Piece { buf, read } = feed.next()?;
            let n = read.map_err(|e| device_failure(Stage::Verifying, e))?;
            figures.bytes_verified = checked + n.min(span.len) as u64;
            if n < span.len {
                return Err(fail(
                    Stage::Verifying,
                    FailReason::ReadError {
                        offset: span.offset() + n as u64,
                        detail: "the target ended before the image did".into(),
                    },
                ));
            }
            let back = &buf[..span.len];
            let matches = match mode {
                // Whole chunks: each piece is its chunk, all of it.
                _ if by_fingerprint => match manifest.chunk_kind(span.index) {
                    ChunkKind::Zero => is_zero(back),
                    ChunkKind::Data => {
                        Some(xxh3_128(back)) == manifest.chunk_fingerprint(span.index)
                    }
                },
                VerifyMode::Hash => match (&mut whole, manifest.chunk_digest(span.index)) {
                    (None, Some(digest)) => {
                        hasher.update(back);
                        !span.last
                            || Sha256Digest::from_hasher(std::mem::take(&mut hasher)) == digest
                    }
                    (whole, _) => {
                        if let Some(whole) = whole {
                            whole.update(back);
                        }
                        chunk_xxh3.update(back);
                        !span.last || {
                            let got = chunk_xxh3.digest128();
                            chunk_xxh3.reset();
                            Some(got) == manifest.chunk_fingerprint(span.index)
                        }
                    }
                },
                _ => {
                    if span.first {
                        expected = Some(source.checked_chunk(span.index)?);
                    }
                    match expected
                        .as_ref()
                        .expect("fetched at the chunk's first piece")
                    {
                        Chunk::Zero => is_zero(back),
                        Chunk::Data(data) => back == &data[span.at..span.at + span.len],
                    }
                }
            };
            if !matches {
                let chunk = match expected.take() {
                    Some(chunk) => chunk,
                    None => source.checked_chunk(span.index)?,
                };
                let image: &[u8] = match &chunk {
                    Chunk::Zero => &source.zeros()[..span.chunk_len],
                    Chunk::Data(data) => data,
                };
                // Hash mode reads whole chunks, so the bad byte is in this piece.
                let first = back
                    .iter()
                    .zip(&image[span.at..])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0) as u64;
                // A sparse or sampled read-back does not read the whole
                // image: there is no digest of the stick's image-size bytes
                // to give.
                if ranges.is_none() && sample.is_none() {
                    figures.read_back_sha256 = read_back_digest_after_mismatch(
                        source,
                        &feed,
                        &mut spans,
                        span,
                        &image[..span.at],
                        buf,
                    )
                    .ok();
                }
                figures.verify_secs = started.elapsed().as_secs_f64();
                return Err(fail(
                    Stage::Verifying,
                    FailReason::VerifyMismatch {
                        offset: span.offset() + first,
                    },
                ));
            }
            feed.done(buf);
            checked += span.len as u64;
            if span.last {
                expected = None;
                report.advance(checked)?;
            }
        }
        if let Some(whole) = whole {
            // Every chunk matched its fingerprint; the sha256 of the whole
            // read-back is the proof. Different only if XXH3-128 collided,
            // which no fault of a stick does; then the bad byte is not known
            // and the mismatch is named at the image's start.
            let digest = Sha256Digest::from_hasher(whole);
            if digest != manifest.sha256() {
                figures.read_back_sha256 = Some(digest);
                figures.verify_secs = started.elapsed().as_secs_f64();
                return Err(fail(
                    Stage::Verifying,
                    FailReason::VerifyMismatch { offset: 0 },
                ));
            }
        }
        Ok(())
    })?;
    figures.verify_secs = started.elapsed().as_secs_f64();
    // Every byte read back equals the image (compared with chunks proven against
    // their import-time fingerprint or sha256, or hashed chunk by chunk), so the
    // read-back's sha256 is the image's. A sparse read-back proves the mapped
    // ranges only, a sampled one the chunks it drew: neither claims a digest of
    // the whole.
    if ranges.is_none() && sample.is_none() {
        figures.read_back_sha256 = Some(manifest.sha256());
    }
    Ok(())
}

/// Whether every byte is zero (block by block, so that it vectorizes and a data
/// block stops it early).
fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// The sha256 of the target's first image-size bytes, after a mismatch in the
/// piece `bad`: the chunks before it and the pieces of its chunk before it
/// (`matched`) equal the image, so they are hashed from the source; from the bad
/// piece on, what the target returns is hashed (the reader thread carries on to
/// the end of the image). `None` (an `Err`) when they cannot all be hashed: a
/// read fails, the target ends before the image does, or the attempt is
/// cancelled on the way.
fn read_back_digest_after_mismatch(
    source: &SharedSource,
    feed: &PieceFeed<'_>,
    spans: &mut dyn Iterator<Item = PieceSpan>,
    bad: PieceSpan,
    matched: &[u8],
    bad_piece: AlignedBuf,
) -> Result<Sha256Digest, Stop> {
    let mut hasher = Sha256::new();
    source.for_each_prefix_chunk(bad.index, |bytes| {
        hasher.update(bytes);
        feed.progress.beat();
    })?;
    hasher.update(matched);
    hasher.update(&bad_piece[..bad.len]);
    feed.done(bad_piece);
    for span in spans {
        let Piece { buf, read } = feed.next()?;
        let n = read.map_err(|e| device_failure(Stage::Verifying, e))?;
        if n < span.len {
            // A digest of fewer bytes would pass for the stick's content.
            return Err(fail(
                Stage::Verifying,
                FailReason::ReadError {
                    offset: span.offset() + n as u64,
                    detail: "the target ended before the image did".into(),
                },
            ));
        }
        hasher.update(&buf[..span.len]);
        feed.done(buf);
    }
    Ok(Sha256Digest::from_hasher(hasher))
}

/// A value unique to this attempt, so that markers from an earlier probe of the
/// same stick are never mistaken for this one's.
fn probe_nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    time ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9)
}
