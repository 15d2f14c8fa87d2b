//! `flashrack flash`: one image to many targets, verified, with a summary.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flashrack_core::Sha256Digest;
use flashrack_devices::guard::GuardPolicy;
use flashrack_engine::{flash_all, EngineOptions, SourceImage, VerifyMode};
use tokio::sync::mpsc;

use crate::cli::{FlashArgs, VerifyArg};
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
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let ids = targets.list.iter().map(|(id, _)| id.clone()).collect();
    let view = tokio::spawn(crate::progress::show(events_rx, ids, args.quiet, started));
    let outcome = flash_all(&source, targets.list.clone(), options, events_tx).await;
    let finish_times = view.await.unwrap_or_default();
    let results = outcome.context("the run was aborted")?;
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
