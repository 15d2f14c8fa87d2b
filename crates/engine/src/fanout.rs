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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flashrack_core::{
    AttemptFigures, EngineEvent, EngineEventKind, FailReason, Failure, TargetId, Verdict,
};
use flashrack_target::Target;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

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
    /// `feed` (see [`crate::feed`]). A sparse run needs the image's block map,
    /// which a followed image does not have yet: refused.
    pub fn following(
        feed: Arc<crate::ImageFeed>,
        options: EngineOptions,
        events: UnboundedSender<EngineEvent>,
    ) -> Result<Self, EngineError> {
        if options.sparse.is_some() {
            return Err(EngineError::SourceFailed {
                detail: "a sparse run needs the image's block map, which an image still \
                         being imported does not have"
                    .into(),
            });
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
        let progress = Arc::new(AttemptProgress::new(self.options.clock.clone()));
        let link = Arc::new(EventLink::new(self.events.clone()));
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
        let (result_tx, result_rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("flash {id}"))
            .spawn(move || {
                crate::attempt::lower_priority();
                let _span = tracing::info_span!("attempt", target = %ctx.id).entered();
                let result = run_attempt(&ctx);
                let _ = result_tx.send(result);
            });
        let supervisor = tokio::spawn(supervise(
            id.clone(),
            progress.clone(),
            result_rx,
            spawned.is_ok(),
            self.options.stall_timeout,
            self.options.clock.clone(),
            link,
            self.events.clone(),
        ));
        AttemptHandle {
            id,
            progress,
            supervisor,
        }
    }
}

/// A running attempt.
pub struct AttemptHandle {
    id: TargetId,
    progress: Arc<AttemptProgress>,
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
        self.progress.cancel.store(true, Ordering::Relaxed);
    }

    /// A handle that can cancel the attempt after [`finish`](Self::finish) has
    /// taken this one.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.progress.clone())
    }

    /// Waits for the verdict.
    pub async fn finish(self) -> AttemptOutcome {
        let id = self.id.clone();
        self.supervisor
            .await
            .unwrap_or_else(|join_error| AttemptOutcome {
                id,
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
        self.0.cancel.store(true, Ordering::Relaxed);
    }
}

/// Waits for the attempt's result; gives the `stalled` verdict instead when the
/// thread's last heartbeat is `stall_timeout` old on `clock`. The watchdog wakes
/// at the deadline the last beat it saw sets, not on a polling interval: the
/// verdict comes exactly `stall_timeout` after the last progress, and with a
/// manual clock exactly when a test moves the clock past it. When a beat came
/// while it slept, the next sleep is made before the one that ended is dropped,
/// so that a manual clock always lists the watchdog's sleep.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    id: TargetId,
    progress: Arc<AttemptProgress>,
    mut result_rx: oneshot::Receiver<Result<(Verdict, AttemptFigures), EngineError>>,
    thread_started: bool,
    stall_timeout: Duration,
    clock: Clock,
    link: Arc<EventLink>,
    events: UnboundedSender<EngineEvent>,
) -> AttemptOutcome {
    let mut watchdog = clock.sleep_until(progress.last_beat() + stall_timeout);
    let result = loop {
        if !thread_started {
            break Ok((
                Verdict::Fail(Failure {
                    reason: FailReason::StationError {
                        detail: "could not start a thread for the attempt".into(),
                    },
                    stage: flashrack_core::Stage::Preparing,
                }),
                AttemptFigures::default(),
            ));
        }
        tokio::select! {
            result = &mut result_rx => {
                break result.unwrap_or_else(|_| Ok((
                    Verdict::Fail(Failure {
                        reason: FailReason::Unavailable { detail: "the attempt's thread died".into() },
                        stage: progress.stage(),
                    }),
                    AttemptFigures::default(),
                )));
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
                break Ok((
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
    };
    // Ended or abandoned: the thread's events stop here (a stalled thread may
    // never return, and must not hold the channel open), before the verdict.
    link.cut();
    if let Ok((verdict, figures)) = &result {
        let _ = events.send(EngineEvent {
            target: id.clone(),
            kind: EngineEventKind::Finished {
                verdict: verdict.clone(),
                figures: figures.clone(),
            },
        });
    }
    AttemptOutcome { id, result }
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
                        progress.cancel.store(true, Ordering::Relaxed);
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
