//! Starting attempts, watching them, and turning their ends into verdicts.
//!
//! Each attempt runs its blocking pipeline on a dedicated OS thread (never on an
//! async worker). Its supervisor is an async task that waits for the thread's
//! result and, meanwhile, watches its heartbeat (stamped by the thread on the
//! engine's [`Clock`]): a target that makes no progress for the stall timeout
//! fails as `stalled`, its thread is told to stop and left
//! behind (a write stuck in the kernel cannot be cancelled), its link to the event
//! channel is cut ([`EventLink`]), and nothing else waits for it. Targets can be started at any time while the fan-out lives, so a stick
//! plugged in late starts at once.
//!
//! An abandoned thread still holds its stick open (exclusively) until its
//! I/O comes back from the kernel, if ever: every outcome carries the
//! thread's [`Hold`], and a retry of the stick ([`Fanout::start_after`])
//! waits for its release, bounded, instead of finding the stick busy.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flashrack_core::{
    AttemptFigures, EngineEvent, EngineEventKind, FailReason, Failure, TargetId, Verdict,
};
use flashrack_target::Target;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{oneshot, watch};

use crate::attempt::{run_attempt, AttemptContext, AttemptProgress};
use crate::source::SharedSource;
use crate::{Clock, EngineError, EngineOptions, SourceImage};

/// An attempt's link to the fan-out's event channel, which its supervisor cuts
/// when the attempt ends, and in particular when it abandons a stalled thread.
///
/// A thread stuck in the kernel may never return; if it kept a sender of the
/// channel, whoever waits for the channel to close once every verdict is in (a
/// one-shot flash, a test) would wait for it forever. Cut, the link drops what
/// the thread sends from then on: nothing it says after its verdict counts.
pub struct EventLink {
    // A std Mutex: held only for a non-blocking send or to take the sender,
    // never across I/O, so the supervisor (async) never waits on a stuck thread.
    sender: Mutex<Option<UnboundedSender<EngineEvent>>>,
}

impl EventLink {
    /// A link to `sender`.
    pub fn new(sender: UnboundedSender<EngineEvent>) -> Self {
        Self {
            sender: Mutex::new(Some(sender)),
        }
    }

    /// Sends `event` unless the link has been cut (or the receiver is gone);
    /// returns whether it was sent.
    pub fn send(&self, event: EngineEvent) -> bool {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        sender.as_ref().is_some_and(|tx| tx.send(event).is_ok())
    }

    /// Cuts the link: its sender is dropped now, whatever the thread does next.
    pub fn cut(&self) {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// How one attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// The target.
    pub id: TargetId,
    /// Pass or fail; `Err` when the source failed under this attempt.
    pub result: Result<(Verdict, AttemptFigures), EngineError>,
    /// Whether the attempt's thread still holds the stick: released already
    /// unless the attempt was abandoned after a stall (its I/O stuck in the
    /// kernel). A retry of the stick starts after it
    /// ([`Fanout::start_after`]).
    pub hold: Hold,
    /// Bytes of the image its write pass read back from the file of the
    /// import it followed instead of taking them from the feed
    /// ([`AttemptProgress::bytes_reread`]): 0 when it kept up with the
    /// import, and for an image already cached. A figure of the engine's
    /// work, not of the stick: not recorded.
    pub bytes_reread: u64,
}

/// One image being written to any number of targets.
pub struct Fanout {
    source: Arc<SharedSource>,
    options: EngineOptions,
    events: UnboundedSender<EngineEvent>,
}

impl Fanout {
    /// Opens the image and prepares to start attempts. Fails only if the source
    /// cannot be opened.
    pub fn new(
        image: &SourceImage,
        options: EngineOptions,
        events: UnboundedSender<EngineEvent>,
    ) -> Result<Self, EngineError> {
        if let Some(ranges) = &options.sparse {
            if ranges.image_size() != image.manifest.size() {
                return Err(EngineError::SourceOpen {
                    path: image.path.clone(),
                    detail: format!(
                        "the block map describes an image of {} bytes, the image has {}",
                        ranges.image_size(),
                        image.manifest.size()
                    ),
                });
            }
        }
        let source = Arc::new(SharedSource::open(image, options.source_cache_chunks)?);
        Ok(Self {
            source,
            options,
            events,
        })
    }

    /// Prepares to write an image while it is imported: the targets follow
    /// `feed` (see [`crate::feed`]). A sparse run's map
    /// ([`EngineOptions::sparse`]) comes with the image (a bmap file known
    /// before the import, which the import checks the image against): its
    /// write passes take every chunk as it is imported and write the mapped
    /// bytes of it; its read-backs compare the mapped bytes once the import
    /// has ended. A map of another size than the one the feed announced is
    /// refused.
    pub fn following(
        feed: Arc<crate::ImageFeed>,
        options: EngineOptions,
        events: UnboundedSender<EngineEvent>,
    ) -> Result<Self, EngineError> {
        if let (Some(ranges), Some(size)) = (&options.sparse, feed.size_hint()) {
            if ranges.image_size() != size {
                return Err(EngineError::SourceFailed {
                    detail: format!(
                        "the block map describes an image of {} bytes, the image being \
                         imported has {size}",
                        ranges.image_size()
                    ),
                });
            }
        }
        let source = Arc::new(SharedSource::following(feed, options.source_cache_chunks));
        Ok(Self {
            source,
            options,
            events,
        })
    }

    /// The shared source (its manifest, for instance).
    pub fn source(&self) -> &Arc<SharedSource> {
        &self.source
    }

    /// Starts writing `target` at once, on its own thread. Must be called within
    /// a tokio runtime (the supervisor is a task).
    pub fn start(&self, id: TargetId, target: Arc<dyn Target>) -> AttemptHandle {
        self.start_after(id, target, None)
    }

    /// Starts writing `target` once `previous` (the hold of the stick's last
    /// attempt, from its [`AttemptOutcome`]) is released: at once when it is
    /// (an attempt that ended by itself let go before its outcome was given),
    /// else when that attempt's thread, abandoned after a stall, comes back
    /// from the kernel. Not released within
    /// [`EngineOptions::release_timeout`], the attempt ends without opening
    /// the stick, as `held_by_stuck_io`: opened now, it would only find the
    /// stick busy. A cancel ends the wait at once (`interrupted`). The stall
    /// watchdog starts with the thread.
    pub fn start_after(
        &self,
        id: TargetId,
        target: Arc<dyn Target>,
        previous: Option<Hold>,
    ) -> AttemptHandle {
        let progress = Arc::new(AttemptProgress::new(self.options.clock.clone()));
        let link = Arc::new(EventLink::new(self.events.clone()));
        // Registered here, on the caller's thread, not on the attempt's: the
        // targets a caller starts one after the other are all among the
        // import's followers before the import can pass their first chunks
        // (see `ImageFeed::follow`). An audit writes nothing.
        let follower = if self.options.audit {
            None
        } else {
            self.source.follow()
        };
        let ctx = AttemptContext {
            id: id.clone(),
            target,
            source: self.source.clone(),
            progress: progress.clone(),
            events: link.clone(),
            verify: self.options.verify,
            probe_capacity: self.options.probe_capacity,
            probe: self.options.probe,
            sample_percent: self.options.sample_percent,
            audit: self.options.audit,
            reset_before_verify: self.options.reset_before_verify,
            sparse: self.options.sparse.clone(),
            progress_interval: self.options.progress_interval,
        };
        let (hold_tx, hold_rx) = watch::channel(false);
        let (result_tx, result_rx) = oneshot::channel();
        // Run on the attempt's own thread. Its hold is released when the
        // pipeline has returned and dropped every handle of the stick, before
        // the result is sent; also when the thread is never started (the
        // closure is dropped) or panics (unwinding drops it).
        let release = Release(hold_tx);
        let body = move || {
            crate::attempt::lower_priority();
            let result = {
                let _span = tracing::info_span!("attempt", target = %ctx.id).entered();
                run_attempt(&ctx, follower)
            };
            drop(ctx);
            drop(release);
            let _ = result_tx.send(result);
        };
        let hold = Hold(hold_rx);
        let supervisor = tokio::spawn(supervise(
            Supervised {
                id: id.clone(),
                progress: progress.clone(),
                previous,
                release_timeout: self.options.release_timeout,
                stall_timeout: self.options.stall_timeout,
                clock: self.options.clock.clone(),
                link,
                events: self.events.clone(),
                hold: hold.clone(),
            },
            body,
            result_rx,
        ));
        AttemptHandle {
            id,
            progress,
            hold,
            supervisor,
        }
    }
}

/// Whether an attempt's thread still holds its stick (the exclusive handles
/// it opened). Released when the thread's pipeline has returned; an attempt
/// abandoned after a stall keeps holding it for as long as its I/O is stuck
/// in the kernel, which a retry of the same stick must wait out
/// ([`Fanout::start_after`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hold(watch::Receiver<bool>);

impl Hold {
    /// Whether the thread has let go of the stick.
    pub fn is_released(&self) -> bool {
        // A sender gone is a thread (or its closure, never run) gone.
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Ends when the thread has let go of the stick (at once if it has).
    pub async fn released(&mut self) {
        // An error means the sender is gone, which happens only once the
        // thread's closure is dropped: released as well.
        let _ = self.0.wait_for(|released| *released).await;
    }
}

/// Released on drop: the thread's side of its [`Hold`].
struct Release(watch::Sender<bool>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// A running attempt.
pub struct AttemptHandle {
    id: TargetId,
    progress: Arc<AttemptProgress>,
    /// The thread's hold on the stick, for an outcome the supervisor could
    /// not give.
    hold: Hold,
    supervisor: tokio::task::JoinHandle<AttemptOutcome>,
}

impl AttemptHandle {
    /// The target.
    pub fn id(&self) -> &TargetId {
        &self.id
    }

    /// Asks the attempt to stop at the next safe point (between two I/Os); it
    /// then ends as `interrupted`, or `removed` if its target is gone.
    pub fn cancel(&self) {
        self.progress.request_cancel();
    }

    /// A handle that can cancel the attempt after [`finish`](Self::finish) has
    /// taken this one.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.progress.clone())
    }

    /// Waits for the verdict.
    pub async fn finish(self) -> AttemptOutcome {
        let id = self.id.clone();
        let hold = self.hold.clone();
        self.supervisor
            .await
            .unwrap_or_else(|join_error| AttemptOutcome {
                id,
                hold,
                bytes_reread: self.progress.bytes_reread(),
                result: Ok((
                    Verdict::Fail(Failure {
                        reason: FailReason::Unavailable {
                            detail: format!("the attempt's supervisor failed: {join_error}"),
                        },
                        stage: flashrack_core::Stage::Preparing,
                    }),
                    AttemptFigures::default(),
                )),
            })
    }
}

/// Cancels one attempt; cheap to clone.
#[derive(Clone)]
pub struct Canceller(Arc<AttemptProgress>);

impl Canceller {
    /// Asks the attempt to stop at the next safe point.
    pub fn cancel(&self) {
        self.0.request_cancel();
    }

    /// Gives up on the attempt: its verdict is a failure for `reason`, in the
    /// stage it is in, given by its supervisor without waiting for its thread
    /// longer than [`ABANDON_GRACE`]. For a wait the caller bounds itself (the
    /// station's reset timeout), so that a thread stuck in the kernel (a
    /// reset whose stick was pulled while the kernel synced its cache) does
    /// not hold the verdict until the stall timeout. A thread that answers
    /// within the grace gives its own verdict; an abandoned one keeps its
    /// [`Hold`] on the stick until it comes back.
    pub fn abandon(&self, reason: FailReason) {
        self.0.abandon(reason);
    }
}

/// How long an abandoned attempt's thread ([`Canceller::abandon`]) is given,
/// on the engine's clock, to answer with its own verdict before it is given
/// without it.
pub const ABANDON_GRACE: Duration = Duration::from_secs(2);

/// What a supervisor watches, and where it reports.
struct Supervised {
    id: TargetId,
    progress: Arc<AttemptProgress>,
    /// The stick's previous attempt's hold, waited for before the thread
    /// starts.
    previous: Option<Hold>,
    release_timeout: Duration,
    stall_timeout: Duration,
    clock: Clock,
    link: Arc<EventLink>,
    events: UnboundedSender<EngineEvent>,
    /// This attempt's own hold, handed on with its outcome.
    hold: Hold,
}

/// A verdict the supervisor gives without the attempt's figures.
fn failed(reason: FailReason, stage: flashrack_core::Stage) -> (Verdict, AttemptFigures) {
    (
        Verdict::Fail(Failure { reason, stage }),
        AttemptFigures::default(),
    )
}

/// Waits until the stick's previous attempt has let go of it (at most the
/// release timeout, on the clock); `Err` carries the verdict when it has not,
/// or when the attempt was cancelled meanwhile.
async fn wait_for_release(sup: &Supervised) -> Result<(), (Verdict, AttemptFigures)> {
    let Some(mut previous) = sup.previous.clone() else {
        return Ok(());
    };
    if previous.is_released() {
        return Ok(());
    }
    let since = sup.clock.now();
    tracing::info!(target = %sup.id, timeout_secs = sup.release_timeout.as_secs(),
        "waiting for the stalled attempt's stuck I/O to let go of the stick");
    let timeout = sup.clock.sleep_until(since + sup.release_timeout);
    tokio::select! {
        () = previous.released() => Ok(()),
        () = sup.progress.cancelled() => Err(failed(
            FailReason::Interrupted,
            flashrack_core::Stage::Preparing,
        )),
        _ = timeout => {
            if previous.is_released() {
                return Ok(());
            }
            let waited_secs = sup.clock.now().saturating_duration_since(since).as_secs();
            tracing::warn!(target = %sup.id, waited_secs,
                "still held by I/O stuck in the kernel; not opened");
            Err(failed(
                FailReason::HeldByStuckIo { waited_secs },
                flashrack_core::Stage::Preparing,
            ))
        }
    }
}

/// Starts the attempt's thread (`body`) once the stick is free, waits for its
/// result, and gives the `stalled` verdict instead when the thread's last
/// heartbeat is `stall_timeout` old on `clock`. The watchdog wakes at the
/// deadline the last beat it saw sets, not on a polling interval: the verdict
/// comes exactly `stall_timeout` after the last progress, and with a manual
/// clock exactly when a test moves the clock past it. When a beat came while
/// it slept, the next sleep is made before the one that ended is dropped, so
/// that a manual clock always lists the watchdog's sleep.
async fn supervise(
    sup: Supervised,
    body: impl FnOnce() + Send + 'static,
    mut result_rx: oneshot::Receiver<Result<(Verdict, AttemptFigures), EngineError>>,
) -> AttemptOutcome {
    let Supervised {
        id,
        progress,
        stall_timeout,
        clock,
        ..
    } = &sup;
    let result = match wait_for_release(&sup).await {
        Err(verdict) => {
            // Never started: the body (and the target in it) is dropped
            // without the stick being opened.
            drop(body);
            Ok(verdict)
        }
        Ok(()) => {
            // The watchdog counts from the thread's start, not from a wait
            // for the previous attempt.
            progress.beat();
            let spawned = std::thread::Builder::new()
                .name(format!("flash {id}"))
                .spawn(body);
            if spawned.is_err() {
                Ok(failed(
                    FailReason::StationError {
                        detail: "could not start a thread for the attempt".into(),
                    },
                    flashrack_core::Stage::Preparing,
                ))
            } else {
                watch_thread(id, progress, &mut result_rx, *stall_timeout, clock).await
            }
        }
    };
    // Ended or abandoned: the thread's events stop here (a stalled thread may
    // never return, and must not hold the channel open), before the verdict.
    sup.link.cut();
    if let Ok((verdict, figures)) = &result {
        let _ = sup.events.send(EngineEvent {
            target: id.clone(),
            kind: EngineEventKind::Finished {
                verdict: verdict.clone(),
                figures: figures.clone(),
            },
        });
    }
    AttemptOutcome {
        id: sup.id.clone(),
        result,
        hold: sup.hold.clone(),
        bytes_reread: sup.progress.bytes_reread(),
    }
}

/// The thread's result, or the `stalled` verdict when it makes no progress
/// for `stall_timeout`.
async fn watch_thread(
    id: &TargetId,
    progress: &AttemptProgress,
    result_rx: &mut oneshot::Receiver<Result<(Verdict, AttemptFigures), EngineError>>,
    stall_timeout: Duration,
    clock: &Clock,
) -> Result<(Verdict, AttemptFigures), EngineError> {
    let answered = |result: Result<_, oneshot::error::RecvError>| {
        result.unwrap_or_else(|_| {
            Ok(failed(
                FailReason::Unavailable {
                    detail: "the attempt's thread died".into(),
                },
                progress.stage(),
            ))
        })
    };
    let mut watchdog = clock.sleep_until(progress.last_beat() + stall_timeout);
    loop {
        tokio::select! {
            result = &mut *result_rx => return answered(result),
            reason = progress.abandoned() => {
                // A thread waiting where the giving up reaches it (a reset's
                // link) answers at once, with its own figures; one stuck in
                // the kernel is left behind after the grace.
                let grace = clock.sleep_until(clock.now() + ABANDON_GRACE);
                tokio::select! {
                    biased;
                    result = &mut *result_rx => return answered(result),
                    _ = grace => {}
                }
                let stage = progress.stage();
                tracing::warn!(target = %id, %stage, reason = reason.code(),
                    "given up on; its thread is left behind");
                return Ok((
                    Verdict::Fail(Failure { reason, stage }),
                    progress.figures_so_far(),
                ));
            }
            _ = &mut watchdog => {
                let deadline = progress.last_beat() + stall_timeout;
                if clock.now() < deadline {
                    // It beat while the watchdog slept: wait from that beat.
                    watchdog = clock.sleep_until(deadline);
                    continue;
                }
                // The thread may be stuck in the kernel; tell it to stop if it
                // ever comes back, and give the verdict now.
                progress.cancel.store(true, Ordering::Relaxed);
                let stage = progress.stage();
                tracing::warn!(target = %id, %stage, "target stalled");
                return Ok((
                    Verdict::Fail(Failure {
                        reason: FailReason::Stalled {
                            during: stage,
                            offset: progress.done.load(Ordering::Relaxed),
                            after_secs: stall_timeout.as_secs(),
                        },
                        stage,
                    }),
                    progress.figures_so_far(),
                ));
            }
        }
    }
}

/// Writes `image` to every target concurrently, each at its own pace, and waits
/// for all verdicts. Returns them in the order of `targets`. Fails only when the
/// source fails, after stopping every other attempt.
pub async fn flash_all(
    image: &SourceImage,
    targets: Vec<(TargetId, Arc<dyn Target>)>,
    options: EngineOptions,
    events: UnboundedSender<EngineEvent>,
) -> Result<Vec<(TargetId, Verdict, AttemptFigures)>, EngineError> {
    let fanout = Fanout::new(image, options, events)?;
    let handles: Vec<AttemptHandle> = targets
        .into_iter()
        .map(|(id, target)| fanout.start(id, target))
        .collect();
    let cancels: Vec<Arc<AttemptProgress>> = handles.iter().map(|h| h.progress.clone()).collect();
    // Unordered, so that a source failure under any target stops the others at
    // once rather than after the targets before it have finished.
    let mut pending: futures::stream::FuturesUnordered<_> = handles
        .into_iter()
        .enumerate()
        .map(|(position, handle)| async move { (position, handle.finish().await) })
        .collect();
    let mut results = Vec::new();
    let mut source_error = None;
    use futures::StreamExt;
    while let Some((position, outcome)) = pending.next().await {
        match outcome.result {
            Ok((verdict, figures)) => results.push((position, outcome.id, verdict, figures)),
            Err(error) => {
                if source_error.is_none() {
                    tracing::error!(%error, "source failed; stopping every attempt");
                    for progress in &cancels {
                        progress.request_cancel();
                    }
                    source_error = Some(error);
                }
            }
        }
    }
    match source_error {
        Some(error) => Err(error),
        None => {
            results.sort_by_key(|(position, ..)| *position);
            Ok(results
                .into_iter()
                .map(|(_, id, verdict, figures)| (id, verdict, figures))
                .collect())
        }
    }
}
