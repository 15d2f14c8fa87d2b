//! One target's pipeline: prepare → probe → write → flush → verify, blocking, on
//! the attempt's own OS thread.
//!
//! Every target failure ends here as a [`Verdict`]; only a source failure comes
//! out as an `Err`, because it is not this target's fault and aborts the fan-out.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashrack_core::{
    AttemptFigures, ByteSize, EngineEvent, EngineEventKind, FailReason, Failure, Sha256Digest,
    Stage, TargetId, Verdict, VerifyMethod,
};
use flashrack_devices::{AlignedBuf, Target, TargetError, TargetWriter};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedSender;

use crate::probe::{probe_capacity, ProbeResult};
use crate::source::{Chunk, SharedSource};
use crate::{EngineError, VerifyMode};

/// What an attempt shares with its supervisor: how far it is, and whether it
/// should stop. Plain atomics: read by the watchdog while the thread writes.
#[derive(Default)]
pub struct AttemptProgress {
    /// Bumped on every completed I/O; a watchdog that sees it unchanged for the
    /// stall timeout declares the target stalled.
    pub heartbeat: AtomicU64,
    /// The current [`Stage`], as `stage_code`.
    stage: AtomicU8,
    /// Bytes done in the current stage.
    pub done: AtomicU64,
    /// Set by the supervisor (removal, stall, operator stop, shutdown); the thread
    /// checks it between I/Os and stops with `Interrupted`.
    pub cancel: AtomicBool,
}

impl AttemptProgress {
    /// The stage the attempt is in.
    pub fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Relaxed) {
            0 => Stage::Preparing,
            1 => Stage::Writing,
            2 => Stage::Flushing,
            _ => Stage::Verifying,
        }
    }

    fn set_stage(&self, stage: Stage) {
        let code = match stage {
            Stage::Preparing => 0,
            Stage::Writing => 1,
            Stage::Flushing => 2,
            Stage::Verifying => 3,
        };
        self.stage.store(code, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.beat();
    }

    fn beat(&self) {
        self.heartbeat.fetch_add(1, Ordering::Relaxed);
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
    /// Where stage and progress events go.
    pub events: UnboundedSender<EngineEvent>,
    /// How to verify.
    pub verify: VerifyMode,
    /// Whether to run the capacity probe on media that may lie.
    pub probe_capacity: bool,
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

/// Runs the whole pipeline. `Ok` carries the verdict, pass or fail, with figures;
/// `Err` is a failure of the source.
pub fn run_attempt(ctx: &AttemptContext) -> Result<(Verdict, AttemptFigures), EngineError> {
    let mut figures = AttemptFigures::default();
    match pipeline(ctx, &mut figures) {
        Ok(()) => Ok((Verdict::Pass, figures)),
        Err(Stop::Fail(failure)) => Ok((Verdict::Fail(failure), figures)),
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
        TargetError::Busy(detail) | TargetError::Refused(detail) => FailReason::Refused { detail },
        TargetError::Open(detail) => FailReason::Unavailable { detail },
        TargetError::Io { offset, source } => match stage {
            Stage::Verifying => FailReason::ReadError {
                offset,
                detail: source.to_string(),
            },
            Stage::Flushing => FailReason::FlushError {
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

    /// Records progress; emits an event at most every `progress_interval`.
    fn advance(&mut self, done: u64) -> Result<(), Stop> {
        let progress = &self.ctx.progress;
        progress.done.store(done, Ordering::Relaxed);
        progress.beat();
        if progress.cancel.load(Ordering::Relaxed) {
            return Err(fail(self.stage, FailReason::Interrupted));
        }
        let elapsed = self.last_event.elapsed();
        if elapsed >= self.ctx.progress_interval || done == self.total {
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

fn pipeline(ctx: &AttemptContext, figures: &mut AttemptFigures) -> Result<(), Stop> {
    let manifest = ctx.source.manifest().clone();
    let image_size = manifest.size();

    // Prepare: size, exclusive open (through the guard), capacity probe.
    let _ = Reporter::enter(ctx, Stage::Preparing, 0);
    let geometry = ctx
        .target
        .geometry()
        .map_err(|e| device_failure(Stage::Preparing, e))?;
    figures.capacity = ByteSize(geometry.capacity);
    if geometry.capacity < image_size {
        return Err(fail(
            Stage::Preparing,
            FailReason::TooSmall {
                capacity: ByteSize(geometry.capacity),
                needed: ByteSize(image_size),
            },
        ));
    }
    let block = geometry.logical_block_size.max(1) as usize;
    let mut writer = ctx
        .target
        .open_writer()
        .map_err(|e| device_failure(Stage::Preparing, e))?;
    if ctx.probe_capacity && ctx.target.may_misreport_capacity() {
        let nonce = probe_nonce();
        match probe_capacity(&*ctx.target, &mut *writer, geometry.capacity, nonce) {
            Ok(ProbeResult::Honest) => {}
            Ok(ProbeResult::Lie { offset }) => {
                return Err(fail(
                    Stage::Preparing,
                    FailReason::CapacityLie {
                        claimed: ByteSize(geometry.capacity),
                        first_bad_offset: offset,
                    },
                ))
            }
            Err(e) => return Err(device_failure(Stage::Preparing, e)),
        }
    }
    if ctx.progress.cancel.load(Ordering::Relaxed) {
        return Err(fail(Stage::Preparing, FailReason::Interrupted));
    }

    write_image(ctx, &mut *writer, figures)?;

    // The writer (and with it the exclusive claim on a block device) is kept until
    // the read-back is done, so nobody can mount or write the stick in between.
    match ctx.verify {
        VerifyMode::None => {
            figures.verify_method = Some(VerifyMethod::None);
            Ok(())
        }
        mode => verify_image(ctx, mode, block, figures),
    }
}

fn write_image(
    ctx: &AttemptContext,
    writer: &mut dyn TargetWriter,
    figures: &mut AttemptFigures,
) -> Result<(), Stop> {
    let source = &*ctx.source;
    let manifest = source.manifest();
    let started = Instant::now();
    let mut report = Reporter::enter(ctx, Stage::Writing, manifest.size());
    for index in 0..manifest.chunk_count() {
        let (offset, len) = manifest.chunk_span(index);
        let chunk = source.chunk(index)?;
        let data: &[u8] = match &chunk {
            Chunk::Zero => &source.zeros()[..len],
            Chunk::Data(data) => &data[..len],
        };
        writer
            .write_all_at(offset, data)
            .map_err(|e| device_failure(Stage::Writing, e))?;
        figures.bytes_written = offset + len as u64;
        report.advance(figures.bytes_written)?;
    }
    let _ = Reporter::enter(ctx, Stage::Flushing, 0);
    writer
        .flush()
        .map_err(|e| device_failure(Stage::Flushing, e))?;
    figures.write_secs = started.elapsed().as_secs_f64();
    Ok(())
}

fn verify_image(
    ctx: &AttemptContext,
    mode: VerifyMode,
    block: usize,
    figures: &mut AttemptFigures,
) -> Result<(), Stop> {
    let source = &*ctx.source;
    let manifest = source.manifest();
    let started = Instant::now();
    let mut report = Reporter::enter(ctx, Stage::Verifying, manifest.size());
    let mut reader = ctx
        .target
        .open_reader()
        .map_err(|e| device_failure(Stage::Verifying, e))?;
    let mut buf = AlignedBuf::zeroed(manifest.chunk_size() as usize);
    figures.verify_method = Some(match mode {
        VerifyMode::Hash => VerifyMethod::Hash,
        _ => VerifyMethod::Compare,
    });
    for index in 0..manifest.chunk_count() {
        let (offset, len) = manifest.chunk_span(index);
        // Direct I/O reads whole logical blocks; the bytes past the image in the
        // last block belong to the stick and are not compared.
        let read_len = len.div_ceil(block) * block;
        let n = reader
            .read_at(offset, &mut buf[..read_len])
            .map_err(|e| device_failure(Stage::Verifying, e))?;
        figures.bytes_verified = offset + n.min(len) as u64;
        if n < len {
            return Err(fail(
                Stage::Verifying,
                FailReason::ReadError {
                    offset: offset + n as u64,
                    detail: "the target ended before the image did".into(),
                },
            ));
        }
        let back = &buf[..len];
        let matches = match mode {
            VerifyMode::Hash => Sha256Digest::of(back) == manifest.chunk_digest(index),
            _ => match source.checked_chunk(index)? {
                Chunk::Zero => back == &source.zeros()[..len],
                Chunk::Data(data) => back == &data[..len],
            },
        };
        if !matches {
            let expected = source.checked_chunk(index)?;
            let expected: &[u8] = match &expected {
                Chunk::Zero => &source.zeros()[..len],
                Chunk::Data(data) => &data[..len],
            };
            let first = back
                .iter()
                .zip(expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0) as u64;
            figures.read_back_sha256 =
                read_back_digest_after_mismatch(source, &mut *reader, index, &buf[..len], block)
                    .ok();
            figures.verify_secs = started.elapsed().as_secs_f64();
            return Err(fail(
                Stage::Verifying,
                FailReason::VerifyMismatch {
                    offset: offset + first,
                },
            ));
        }
        report.advance(figures.bytes_verified)?;
    }
    figures.verify_secs = started.elapsed().as_secs_f64();
    // Every byte read back equals the image (compared with chunks proven against
    // their sha256, or hashed chunk by chunk), so the read-back's sha256 is the
    // image's.
    figures.read_back_sha256 = Some(manifest.sha256());
    Ok(())
}

/// The sha256 of what the target holds where the image should be, after a
/// mismatch in chunk `bad`: the chunks before it matched the image, so they are
/// hashed from the source; from `bad` on, what the target returns is hashed.
fn read_back_digest_after_mismatch(
    source: &SharedSource,
    reader: &mut dyn flashrack_devices::TargetReader,
    bad: u64,
    bad_chunk: &[u8],
    block: usize,
) -> Result<Sha256Digest, Stop> {
    let manifest = source.manifest();
    let mut hasher = Sha256::new();
    source.for_each_prefix_chunk(bad, |bytes| hasher.update(bytes))?;
    hasher.update(bad_chunk);
    let mut buf = AlignedBuf::zeroed(manifest.chunk_size() as usize);
    for index in bad + 1..manifest.chunk_count() {
        let (offset, len) = manifest.chunk_span(index);
        let read_len = len.div_ceil(block) * block;
        let n = reader
            .read_at(offset, &mut buf[..read_len])
            .map_err(|e| device_failure(Stage::Verifying, e))?;
        hasher.update(&buf[..n.min(len)]);
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
