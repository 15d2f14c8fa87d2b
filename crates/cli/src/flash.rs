//! `flashrack flash`: one image to many targets, verified, with a summary.
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

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flashrack_core::{
    AttemptFigures, AttemptId, EngineEvent, EngineEventKind, FailReason, Failure, Sha256Digest,
    Stage, StopReason, TargetId, Verdict,
};
use flashrack_engine::{
    AttemptOutcome, EngineError, EngineOptions, Fanout, SourceImage, VerifyMode,
};
use flashrack_guard::GuardPolicy;
use flashrack_station::{AttemptStart, Journal, RunOptions, RunStart, VerifyChoice};
use flashrack_target::Target;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use crate::cli::{FlashArgs, VerifyArg};
use crate::image_cmd::{open_cache, resolve_image};
use crate::progress::Shown;
use crate::records::StoreRecords;
use crate::summary::Summary;
use crate::targets::{parse_targets, GuardSettings};

/// One-shot flashes are recorded under this station id.
const STATION_ID: &str = "station-1";

/// How long a stop (a signal, or a failure of the source) waits for running
/// attempts to reach a safe point before recording them `interrupted` and
/// abandoning them (as `serve` does at shutdown).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs the command; the exit status says whether every target passed: 0 all
/// passed, 1 at least one failed, 130/143 stopped by SIGINT/SIGTERM (an error,
/// exit 2, is returned as `Err`).
pub async fn run(data_dir: &Path, args: FlashArgs) -> Result<ExitCode> {
    let expected = args
        .sha256
        .as_deref()
        .map(Sha256Digest::parse)
        .transpose()
        .context("--sha256")?;
    let cache = open_cache(data_dir)?;
    let image = resolve_image(&cache, &args.image, expected, args.max_size, args.quiet)?;
    let manifest = image.manifest.clone();
    // From here on a signal stops the flash in order instead of killing it.
    let mut signals = Signals::listen()?;

    let mut policy = GuardPolicy {
        max_size_bytes: args.max_size.bytes(),
        // One-shot flashing names its devices; there is no port map to consult.
        allow_unmapped_ports: true,
        ..GuardPolicy::default()
    };
    policy
        .allowed_buses
        .extend(args.allow_buses.iter().map(|b| b.to_ascii_lowercase()));
    let targets = parse_targets(
        &args.targets,
        manifest.size(),
        data_dir,
        GuardSettings {
            policy,
            image_size: manifest.size(),
        },
    )?;

    let stall_timeout = Duration::from_secs(args.stall_timeout.max(1));
    let options = EngineOptions {
        verify: match args.verify {
            VerifyArg::Compare => VerifyMode::Compare,
            VerifyArg::Hash => VerifyMode::Hash,
            VerifyArg::None => VerifyMode::None,
        },
        stall_timeout,
        probe_capacity: !args.no_probe,
        ..EngineOptions::default()
    };
    let source = SourceImage {
        path: image.path.clone(),
        manifest: manifest.clone(),
    };
    // Every flash is recorded: a run of its own, and each attempt before its
    // first byte is written.
    let records = StoreRecords::open(data_dir, STATION_ID, cache.clone()).await?;
    let run_id = records
        .run_started(&RunStart {
            image_sha256: manifest.sha256(),
            image_name: image.meta.original_name.clone(),
            image_size: manifest.size(),
            options: RunOptions {
                verify: match args.verify {
                    VerifyArg::Compare => VerifyChoice::Compare,
                    VerifyArg::Hash => VerifyChoice::Hash,
                    VerifyArg::None => VerifyChoice::None,
                },
                eject_on_pass: false,
                target_count: None,
            },
        })
        .await?;
    let mut attempts = HashMap::new();
    for ((id, _), (identity, port_path)) in targets.list.iter().zip(&targets.identities) {
        let device_id = records.device_seen(identity).await?;
        let attempt_id = records
            .attempt_started(&AttemptStart {
                run_id,
                device_id,
                port_label: id.0.clone(),
                port_path: port_path.clone(),
            })
            .await?;
        attempts.insert(id.clone(), attempt_id);
    }

    let (events_tx, events_rx) = mpsc::unbounded_channel::<EngineEvent>();
    let (view_tx, view_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let ids = targets.list.iter().map(|(id, _)| id.clone()).collect();
    let view = tokio::spawn(crate::progress::show(view_rx, ids, args.quiet, started));
    let mut flash = Flash {
        records,
        attempts,
        stages: HashMap::new(),
        verdicts: HashMap::new(),
        view: view_tx,
    };
    let ended = match Fanout::new(&source, options, events_tx) {
        Ok(fanout) => {
            let grace = STOP_GRACE.min(stall_timeout);
            flash
                .drive(fanout, &targets.list, events_rx, &mut signals, grace)
                .await?
        }
        Err(error) => Ended::SourceFailed(error),
    };
    // Attempts without a verdict (never started, or abandoned at a safe point
    // they never reached) were interrupted.
    for (id, _) in &targets.list {
        if !flash.verdicts.contains_key(id) {
            let stage = flash.stages.get(id).copied().unwrap_or(Stage::Preparing);
            let interrupted = Verdict::Fail(Failure {
                reason: FailReason::Interrupted,
                stage,
            });
            flash
                .settle(id.clone(), interrupted, AttemptFigures::default())
                .await?;
        }
    }
    let Flash {
        records,
        verdicts,
        view: view_tx,
        ..
    } = flash;
    drop(view_tx);
    let finish_times = view.await.unwrap_or_default();
    let status = match ended {
        Ended::SourceFailed(error) => {
            let _ = records
                .run_stopped(run_id, StopReason::SourceFailed, Some(&error.to_string()))
                .await;
            return Err(anyhow::Error::new(error).context("the run was aborted"));
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
    let mut verdicts = verdicts;
    let results = targets
        .list
        .iter()
        .filter_map(|(id, _)| {
            let (verdict, figures) = verdicts.remove(id)?;
            Some((id.clone(), verdict, figures))
        })
        .collect();
    let summary = Summary::new(
        manifest.sha256(),
        manifest.size(),
        started.elapsed().as_secs_f64(),
        results,
        &finish_times,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    // Removes the simulated sticks' files (a stuck thread may still hold one
    // open; the directory goes anyway).
    drop(targets);
    Ok(match status {
        Some(signal) => ExitCode::from(128 + signal.number()),
        None if summary.failed == 0 && summary.interrupted == 0 => ExitCode::SUCCESS,
        None => ExitCode::from(1),
    })
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

/// A signal that stops a flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopSignal {
    Interrupt,
    Terminate,
}

impl StopSignal {
    /// The signal's number (the exit status is 128 plus it, as shells report).
    fn number(self) -> u8 {
        match self {
            StopSignal::Interrupt => 2,
            StopSignal::Terminate => 15,
        }
    }

    fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }
}

/// SIGINT and SIGTERM, caught.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn listen() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
        })
    }

    /// The next signal.
    async fn next(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.interrupt.recv() => StopSignal::Interrupt,
            _ = self.terminate.recv() => StopSignal::Terminate,
        }
    }
}

/// The state of one flash while its attempts run.
struct Flash {
    records: StoreRecords,
    /// Each target's attempt in the records.
    attempts: HashMap<TargetId, AttemptId>,
    /// The last stage each target entered.
    stages: HashMap<TargetId, Stage>,
    /// Verdicts given (and committed) so far.
    verdicts: HashMap<TargetId, (Verdict, AttemptFigures)>,
    /// To the live view.
    view: mpsc::UnboundedSender<Shown>,
}

impl Flash {
    /// Starts every target and gives each its verdict as it comes, until all
    /// have one, or a stop's grace is over.
    async fn drive(
        &mut self,
        fanout: Fanout,
        targets: &[(TargetId, Arc<dyn Target>)],
        mut events: mpsc::UnboundedReceiver<EngineEvent>,
        signals: &mut Signals,
        grace: Duration,
    ) -> Result<Ended> {
        let mut cancellers = Vec::new();
        let mut pending = FuturesUnordered::new();
        for (id, target) in targets {
            let handle = fanout.start(id.clone(), target.clone());
            cancellers.push(handle.canceller());
            pending.push(handle.finish());
        }
        // The engine's side of the channel now lives only in the attempts,
        // until each ends or is abandoned; nothing below waits for it to close.
        drop(fanout);
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
                    self.on_outcome(outcome).await?
                }
                signal = signals.next() => {
                    if stop_by.is_some() {
                        self.notice(format!("{}: not waiting any longer", signal.name()));
                        break;
                    }
                    self.notice(format!(
                        "{}: stopping every target at its next safe point (up to {} s; \
                         signal again to stop at once)",
                        signal.name(),
                        grace.as_secs()
                    ));
                    Some(Ended::Signal(signal))
                }
                () = deadline => {
                    self.notice("the stop's grace is over: the targets still running are \
                                 recorded as interrupted and abandoned".to_string());
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

    async fn on_event(&mut self, event: EngineEvent) -> Result<()> {
        match event.kind {
            EngineEventKind::Stage { stage } => {
                self.stages.insert(event.target.clone(), stage);
                if let Some(&attempt) = self.attempts.get(&event.target) {
                    if let Err(error) = self.records.attempt_stage(attempt, stage).await {
                        tracing::error!(%error, "cannot record a stage");
                    }
                }
                let _ = self.view.send(Shown::Event(event));
            }
            EngineEventKind::Progress { .. } => {
                let _ = self.view.send(Shown::Event(event));
            }
            // Shown once committed, in `settle`.
            EngineEventKind::Finished { .. } => {}
        }
        Ok(())
    }

    /// Settles one attempt's end; a source failure asks to stop the others.
    async fn on_outcome(&mut self, outcome: AttemptOutcome) -> Result<Option<Ended>> {
        match outcome.result {
            Ok((verdict, figures)) => {
                self.settle(outcome.id, verdict, figures).await?;
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
                self.settle(outcome.id, interrupted, AttemptFigures::default())
                    .await?;
                Ok(Some(Ended::SourceFailed(error)))
            }
        }
    }

    /// Commits a verdict to the records, then shows it.
    async fn settle(
        &mut self,
        id: TargetId,
        verdict: Verdict,
        figures: AttemptFigures,
    ) -> Result<()> {
        if let Some(&attempt) = self.attempts.get(&id) {
            self.records
                .attempt_finished(attempt, &verdict, &figures)
                .await
                .with_context(|| format!("cannot record the verdict of {id}"))?;
        }
        let _ = self.view.send(Shown::Event(EngineEvent {
            target: id.clone(),
            kind: EngineEventKind::Finished {
                verdict: verdict.clone(),
                figures: figures.clone(),
            },
        }));
        self.verdicts.insert(id, (verdict, figures));
        Ok(())
    }

    fn notice(&self, text: String) {
        let _ = self.view.send(Shown::Notice(text));
    }
}
