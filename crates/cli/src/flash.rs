//! `flashrack flash`: one image to many targets, verified, with a summary (see
//! `flashrack_app::flash`). Here: the arguments, the signals, the live view,
//! the summary table or JSON, and the exit status.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use flashrack_app::downloads::{DigestCheck, Keyring, RetryPolicy, SignatureSpec, UrlImport};
use flashrack_app::flash::{FlashOutcome, FlashRequest};
use flashrack_app::images::{bmap_beside, import_with_map, map_image, open_cache, resolve_image};
use flashrack_app::summary::Summary;
use flashrack_core::Sha256Digest;
use tokio::sync::mpsc;

use crate::cli::FlashArgs;

/// Runs the command; the exit status says whether every target passed: 0 all
/// passed, 1 at least one did not (failed, refused by the guard, or
/// interrupted), 130/143 stopped by SIGINT/SIGTERM (an error, exit 2, is
/// returned as `Err`).
///
/// With `audit`, nothing is written (`flashrack verify`): each target is read
/// back and compared with the image.
///
/// With `--json`, stdout is one JSON object whatever happens: the summary
/// (with `error` when the flash failed), or, for a failure before any
/// target's attempt was recorded (a file that cannot be read or decoded, a
/// bad argument), `{"error": "...", "targets": []}`.
pub async fn run(data_dir: &Path, args: FlashArgs, audit: bool) -> Result<ExitCode> {
    let json = args.json;
    let result = run_flash(data_dir, args, audit).await;
    if let (Err(error), true) = (&result, json) {
        if !SUMMARY_PRINTED.load(std::sync::atomic::Ordering::Relaxed) {
            let failure = serde_json::json!({
                "error": format!("{error:#}"),
                "targets": [],
            });
            // Nobody reading stdout changes nothing: the error is on
            // stderr and in the exit status.
            let _ = outln!("{}", serde_json::to_string_pretty(&failure)?);
        }
    }
    result
}

/// Whether a summary was printed (`--json`: its object is stdout's only one).
static SUMMARY_PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn run_flash(data_dir: &Path, args: FlashArgs, audit: bool) -> Result<ExitCode> {
    let expected = args
        .sha256
        .as_deref()
        .map(Sha256Digest::parse)
        .transpose()
        .context("--sha256")?;
    let cache = open_cache(data_dir)?;
    if args.image.starts_with("http://") || args.image.starts_with("https://") {
        return flash_url(data_dir, expected, args, audit).await;
    }
    if args.sha256sums.is_some() {
        anyhow::bail!("--sha256sums is for URLs: for a file, give --sha256");
    }
    if args.no_bmap {
        anyhow::bail!("{}", crate::image_cmd::NO_BMAP_FOR_A_FILE);
    }
    // A file is written while it is imported (the targets follow the import;
    // see `flashrack_app::flash::flash_file`), unless the run needs its block
    // map before the first byte (a map given or beside the file, which the
    // import checks before anything is kept or written; a sparse run) or
    // writes nothing.
    let file = Some(Path::new(&args.image)).filter(|p| p.is_file());
    let with_map = args.bmap.is_some() || file.and_then(bmap_beside).is_some();
    // A zip entry named: a zip's size is not known before its import ends,
    // so it is not followed anyway.
    let followed = !with_map && !args.sparse && !audit && args.zip_entry.is_none();
    if let Some(file) = file.filter(|_| followed) {
        if !args.quiet {
            errln!("importing {} while writing …", args.image);
        }
        let stops = crate::signals::stops()?;
        let request = request(&args, audit);
        let (view_tx, view_rx) = mpsc::unbounded_channel();
        let view = tokio::spawn(crate::progress::show(view_rx, args.quiet));
        let outcome =
            flashrack_app::flash::flash_file(data_dir, file, expected, request, view_tx, stops)
                .await;
        let outcome = with_unfinished(outcome, view.await, &args)?;
        // The file just imported gets its block map (found beside it or
        // generated) for later sparse runs; the run's summary comes first.
        let image = outcome
            .summary
            .image_sha256
            .map_or(Ok(None), |sha256| cache.get(&sha256));
        let status = finish(outcome, &args);
        if let Ok(Some(image)) = image {
            match map_image(&cache, &image, Some(file), None) {
                Ok(note) if !args.quiet => errln!("{}", note.summary()),
                Ok(_) => {}
                Err(error) => errln!("warning: no block map kept: {error}"),
            }
        }
        return status;
    }
    if !args.quiet && Path::new(&args.image).is_file() {
        errln!("importing {} …", args.image);
    }
    // A file is imported with its block map (given or found beside it, and
    // checked in the import's pass, or generated); a cached image gets one
    // given now.
    let (image, note) = match file {
        Some(file) => {
            let (outcome, note) = import_with_map(
                &cache,
                file,
                expected,
                args.max_size,
                args.bmap.as_deref(),
                args.zip_entry.as_deref(),
            )?;
            (outcome.image, Some(note))
        }
        None => {
            if args.zip_entry.is_some() {
                anyhow::bail!(
                    "--zip-entry is for a zip archive (a file or a URL), not a cached image"
                );
            }
            let image = resolve_image(&cache, &args.image, expected, args.max_size)?;
            let note = match args.bmap.as_deref() {
                Some(bmap) => Some(map_image(&cache, &image, None, Some(bmap))?),
                None => None,
            };
            (image, note)
        }
    };
    if let Some(note) = note.filter(|_| !args.quiet) {
        errln!("{}", note.summary());
    }
    // From here on a signal stops the flash in order instead of killing it.
    let stops = crate::signals::stops()?;
    let request = request(&args, audit);
    let (view_tx, view_rx) = mpsc::unbounded_channel();
    let view = tokio::spawn(crate::progress::show(view_rx, args.quiet));
    let outcome = flashrack_app::flash::flash(data_dir, image, request, view_tx, stops).await;
    // Everything shown (and the bars cleared) before the summary or the error.
    finish(with_unfinished(outcome, view.await, &args)?, &args)
}

/// `flash URL TARGETS…`: the targets are written while the image downloads
/// (see `flashrack_app::flash::flash_url`); the image then gets a block map
/// as `image import URL` gives it (the one checked in the pass, kept, else
/// a generated one).
async fn flash_url(
    data_dir: &Path,
    expected: Option<Sha256Digest>,
    args: FlashArgs,
    audit: bool,
) -> Result<ExitCode> {
    let check =
        match (expected, args.sha256sums.clone()) {
            (Some(sha256), _) => DigestCheck::Sha256(sha256),
            (None, Some(sums)) => DigestCheck::Sums {
                url: sums,
                signature: args.signature.clone().zip(args.keyring.clone()).map(
                    |(url, keyring)| SignatureSpec {
                        url,
                        keyring: Keyring::File(keyring),
                    },
                ),
            },
            (None, None) => DigestCheck::None,
        };
    // A bmap given (a file on the station or a URL), else one beside the
    // image on its server (unless --no-bmap), is checked in the import's one pass, as `image
    // import URL` does: a map that lies fails the import, so every target.
    let bmap = crate::image_cmd::url_bmap(args.bmap.as_deref(), args.no_bmap);
    let import = UrlImport {
        url: args.image.clone(),
        check,
        max_size: args.max_size,
        bmap,
        zip_entry: args.zip_entry.clone(),
    };
    if !args.quiet {
        errln!("downloading {} while writing …", args.image);
    }
    let stops = crate::signals::stops()?;
    let request = request(&args, audit);
    let (view_tx, view_rx) = mpsc::unbounded_channel();
    let view = tokio::spawn(crate::progress::show(view_rx, args.quiet));
    let outcome = flashrack_app::flash::flash_url(
        data_dir,
        import,
        RetryPolicy::default(),
        request,
        view_tx,
        stops,
    )
    .await;
    let outcome = with_unfinished(outcome, view.await, &args)?;
    let cache = open_cache(data_dir)?;
    let image = outcome
        .summary
        .image_sha256
        .map_or(Ok(None), |sha256| cache.get(&sha256));
    let status = finish(outcome, &args);
    if let Ok(Some(image)) = image {
        match map_image(&cache, &image, None, None) {
            Ok(note) if !args.quiet => errln!("{}", note.summary()),
            Ok(_) => {}
            Err(error) => errln!("warning: no block map kept: {error}"),
        }
    }
    status
}

/// The flash the arguments ask for.
fn request(args: &FlashArgs, audit: bool) -> FlashRequest {
    FlashRequest {
        targets: args.targets.clone(),
        verify: args.verify,
        allow_buses: args.allow_buses.clone(),
        max_size: args.max_size,
        stall_timeout: Duration::from_secs(args.stall_timeout),
        probe_capacity: !args.no_probe,
        force_raw: args.force_raw,
        sparse: args.sparse,
        sample: args.sample,
        audit,
        retries: args.retries,
    }
}

/// The flash's outcome; when it ended with an error after its attempts
/// were recorded, the summary the view was given (`unfinished`) is printed
/// first, as `finish` prints one (the JSON with the `error`), so that what
/// the command prints agrees with the records, and the error is returned.
fn with_unfinished(
    outcome: Result<FlashOutcome, flashrack_app::AppError>,
    unfinished: Result<Option<Box<Summary>>, tokio::task::JoinError>,
    args: &FlashArgs,
) -> Result<FlashOutcome> {
    let error = match outcome {
        Ok(outcome) => return Ok(outcome),
        Err(error) => error,
    };
    if let Ok(Some(summary)) = unfinished {
        let words = flashrack_app::downloads::error_chain(&error);
        print_summary(&summary, Some(&words), args)?;
    }
    Err(error.into())
}

/// Prints `summary` on stdout, as JSON (with `error` when the flash failed)
/// or as the table. A summary nobody reads (`| head -3`) changes nothing of
/// what happened: the exit status still says it.
fn print_summary(summary: &Summary, error: Option<&str>, args: &FlashArgs) -> Result<()> {
    SUMMARY_PRINTED.store(true, std::sync::atomic::Ordering::Relaxed);
    let printed = if args.json {
        let mut json = serde_json::to_value(summary)?;
        if let Some(error) = error {
            json["error"] = error.into();
        }
        outln!("{}", serde_json::to_string_pretty(&json)?)
    } else {
        out!("{}", crate::summary::table(summary))
    };
    match printed {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Prints the summary; the exit status says whether every target passed.
fn finish(outcome: FlashOutcome, args: &FlashArgs) -> Result<ExitCode> {
    let FlashOutcome {
        summary,
        stopped_by,
    } = outcome;
    print_summary(&summary, None, args)?;
    Ok(match stopped_by {
        Some(signal) => ExitCode::from(128 + signal.number()),
        // Every target passed; a refusal or an interruption is no pass.
        None if summary.passed == summary.targets.len() => ExitCode::SUCCESS,
        None => ExitCode::from(1),
    })
}
