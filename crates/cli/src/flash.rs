//! `flashrack flash`: one image to many targets, verified, with a summary.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flashrack_core::Sha256Digest;
use flashrack_devices::guard::GuardPolicy;
use flashrack_engine::{flash_all, EngineOptions, SourceImage, VerifyMode};
use tokio::sync::mpsc;

use std::collections::HashMap;

use flashrack_core::{
    EngineEvent, EngineEventKind, FailReason, Failure, Stage, StopReason, Verdict,
};
use flashrack_station::{AttemptStart, Journal, RunOptions, RunStart, VerifyChoice};

use crate::cli::{FlashArgs, VerifyArg};
use crate::records::StoreRecords;

/// One-shot flashes are recorded under this station id.
const STATION_ID: &str = "station-1";
use crate::image_cmd::{open_cache, resolve_image};
use crate::summary::Summary;
use crate::targets::{parse_targets, GuardSettings};

/// Runs the command; the exit status says whether every target passed.
pub async fn run(data_dir: &Path, args: FlashArgs) -> Result<ExitCode> {
    let expected = args
        .sha256
        .as_deref()
        .map(Sha256Digest::parse)
        .transpose()
        .context("--sha256")?;
    let cache = open_cache(data_dir)?;
    let image = resolve_image(&cache, &args.image, expected, args.quiet)?;
    let manifest = image.manifest.clone();

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

    let options = EngineOptions {
        verify: match args.verify {
            VerifyArg::Compare => VerifyMode::Compare,
            VerifyArg::Hash => VerifyMode::Hash,
            VerifyArg::None => VerifyMode::None,
        },
        stall_timeout: Duration::from_secs(args.stall_timeout.max(1)),
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

    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<EngineEvent>();
    let (view_tx, view_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let ids = targets.list.iter().map(|(id, _)| id.clone()).collect();
    let view = tokio::spawn(crate::progress::show(view_rx, ids, args.quiet, started));
    // Stage changes go to the records on their way to the screen.
    let stages = tokio::spawn({
        let records = records.clone();
        let attempts = attempts.clone();
        async move {
            while let Some(event) = events_rx.recv().await {
                if let EngineEventKind::Stage { stage } = event.kind {
                    if let Some(&attempt) = attempts.get(&event.target) {
                        if let Err(error) = records.attempt_stage(attempt, stage).await {
                            tracing::error!(%error, "cannot record a stage");
                        }
                    }
                }
                let _ = view_tx.send(event);
            }
        }
    });
    let outcome = flash_all(&source, targets.list.clone(), options, events_tx).await;
    let _ = stages.await;
    let finish_times = view.await.unwrap_or_default();
    let results = match outcome {
        Ok(results) => results,
        Err(error) => {
            for &attempt in attempts.values() {
                let interrupted = Verdict::Fail(Failure {
                    reason: FailReason::Interrupted,
                    stage: Stage::Writing,
                });
                let _ = records
                    .attempt_finished(attempt, &interrupted, &Default::default())
                    .await;
            }
            let _ = records
                .run_stopped(run_id, StopReason::SourceFailed, Some(&error.to_string()))
                .await;
            return Err(anyhow::Error::new(error).context("the run was aborted"));
        }
    };
    for (id, verdict, figures) in &results {
        if let Some(&attempt) = attempts.get(id) {
            records.attempt_finished(attempt, verdict, figures).await?;
        }
    }
    records
        .run_stopped(run_id, StopReason::Completed, None)
        .await?;
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
    drop(targets);
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
