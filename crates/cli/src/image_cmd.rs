//! `flashrack image …`: the image cache from the command line.

use std::path::Path;

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flashrack_app::bootable::{build_bootable_with, BuildRequest, BuildStage, Cancel, StageBytes};
use flashrack_app::downloads::{
    import_url, DigestCheck, Keyring, RetryPolicy, SignatureSpec, UrlBmap, UrlImport, UrlProgress,
};
use flashrack_app::images::{
    import_with_map, map_image, open_cache, remove, resolve_image, MapNote,
};
use flashrack_core::{ByteSize, Sha256Digest};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::ImageCommand;

/// Builds the bootable layout of `source` on a blocking thread, saying each
/// stage on stderr ("stage 4 of 5: copying the files in") and how far the
/// copying and hashing stages are by bytes ([`BuildView`]); SIGINT or SIGTERM
/// cancels it: it stops at once and keeps nothing in the cache.
async fn build_cancellable(
    cache: &flashrack_app::images::ImageCache,
    data_dir: &Path,
    source: flashrack_app::images::CachedImage,
    request: BuildRequest,
) -> Result<flashrack_app::bootable::Built> {
    let cancel = std::sync::Arc::new(Cancel::default());
    let mut stops = crate::signals::stops()?;
    let build = tokio::task::spawn_blocking({
        let cache = cache.clone();
        let data_dir = data_dir.to_path_buf();
        let cancel = cancel.clone();
        move || {
            // Both callbacks run on this thread, one at a time.
            let view = std::cell::RefCell::new(BuildView::new());
            let stage = |stage: BuildStage| view.borrow_mut().stage(stage);
            let bytes = |bytes: StageBytes| view.borrow_mut().bytes(bytes);
            let built = build_bootable_with(
                &cache, &data_dir, &source, &request, &stage, &bytes, &cancel,
            );
            view.borrow_mut().finish();
            built
        }
    });
    tokio::pin!(build);
    loop {
        tokio::select! {
            built = &mut build => {
                return match built.context("the build's thread")? {
                    Ok(built) => Ok(built),
                    Err(_) if cancel.is_cancelled() => {
                        bail!("the build was cancelled: nothing of it was kept")
                    }
                    Err(error) => Err(error.into()),
                };
            }
            Some(_) = stops.recv() => {
                errln!("stopping the build …");
                cancel.cancel();
            }
        }
    }
}

/// Captures a master on a blocking thread; SIGINT or SIGTERM cancels it:
/// it stops at once and keeps nothing in the cache (its partial file is
/// removed), as a build does.
async fn capture_cancellable(
    cache: &flashrack_app::images::ImageCache,
    request: flashrack_app::capture::CaptureRequest,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<flashrack_app::capture::Captured> {
    let mut stops = crate::signals::stops()?;
    let capture = tokio::task::spawn_blocking({
        let cache = cache.clone();
        move || flashrack_app::capture::capture(&cache, &request)
    });
    tokio::pin!(capture);
    loop {
        tokio::select! {
            captured = &mut capture => {
                return match captured.context("the capture's thread")? {
                    Ok(captured) => Ok(captured),
                    Err(_) if cancel.load(std::sync::atomic::Ordering::Relaxed) => {
                        bail!("the capture was cancelled: nothing of it was kept")
                    }
                    Err(error) => Err(error.into()),
                };
            }
            Some(_) = stops.recv() => {
                errln!("stopping the capture …");
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Runs an `image` subcommand.
pub async fn run(data_dir: &Path, command: ImageCommand) -> Result<()> {
    let cache = open_cache(data_dir)?;
    match command {
        ImageCommand::Import {
            file,
            sha256,
            sha256sums,
            signature,
            keyring,
            max_size,
            bmap,
            no_bmap,
            zip_entry,
            json,
        } => {
            let expected = sha256
                .as_deref()
                .map(Sha256Digest::parse)
                .transpose()
                .context("--sha256")?;
            let url = file
                .to_str()
                .filter(|f| f.starts_with("http://") || f.starts_with("https://"));
            let (outcome, map) = match url {
                Some(url) => {
                    let check = match (expected, sha256sums) {
                        (Some(sha256), _) => DigestCheck::Sha256(sha256),
                        (None, Some(sums)) => DigestCheck::Sums {
                            url: sums,
                            signature: signature.zip(keyring).map(|(url, keyring)| SignatureSpec {
                                url,
                                keyring: Keyring::File(keyring),
                            }),
                        },
                        (None, None) => DigestCheck::None,
                    };
                    // A bmap given (a URL or a file on the station), else
                    // one beside the image on its server (unless
                    // --no-bmap), is checked in the import's one pass.
                    let bmap = url_bmap(bmap.as_deref(), no_bmap);
                    let request = UrlImport {
                        url: url.to_string(),
                        check,
                        max_size,
                        bmap,
                        zip_entry,
                    };
                    let mut shown = DownloadView::new(json, checking_words(&request.check));
                    let outcome =
                        import_url(&cache, data_dir, &request, RetryPolicy::default(), |p| {
                            shown.update(&p)
                        })
                        .await;
                    shown.finish();
                    let outcome = outcome?;
                    let map = match &outcome.map {
                        Some(map) => MapNote::Attached(map.clone()),
                        None => map_image(&cache, &outcome.image, None, None)?,
                    };
                    (outcome, map)
                }
                None => {
                    if sha256sums.is_some() {
                        bail!("--sha256sums is for URLs: for a file, give --sha256");
                    }
                    if no_bmap {
                        bail!("{NO_BMAP_FOR_A_FILE}");
                    }
                    // The bmap (given or beside the file) is checked in the
                    // import's pass; one that lies leaves nothing cached.
                    import_with_map(
                        &cache,
                        &file,
                        expected,
                        max_size,
                        bmap.as_deref(),
                        zip_entry.as_deref(),
                    )?
                }
            };
            let image = &outcome.image;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "sha256": image.sha256(),
                        "size": image.size(),
                        "format": image.meta.format.name(),
                        "already_cached": outcome.already_cached(),
                        "path": image.path,
                        "referenced": image.meta.reference.is_some(),
                        "provenance": image.meta.provenance,
                        "block_map": map_json(&map),
                    })
                )?;
            } else {
                errln!(
                    "{} {} ({}, {}, {} in zero chunks)",
                    if outcome.already_cached() {
                        "already cached:"
                    } else {
                        "imported:"
                    },
                    image.meta.original_name,
                    image.meta.format.name(),
                    ByteSize(image.size()),
                    ByteSize(image.manifest.zero_bytes()),
                );
                if let Some(provenance) = &image.meta.provenance {
                    errln!("origin: {provenance}");
                }
                if let Some(reference) = &image.meta.reference {
                    errln!(
                        "kept in place, not copied: {} (changing it takes the image out of the cache)",
                        reference.path().display()
                    );
                }
                errln!("{}", map.summary());
                outln!("{}", image.sha256())?;
            }
        }
        ImageCommand::Capture {
            device,
            name,
            whole,
            allow_buses,
            json,
        } => {
            let mut policy = flashrack_app::capture::read_policy();
            policy
                .allowed_buses
                .extend(allow_buses.iter().map(|b| b.to_ascii_lowercase()));
            let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let asked_name = name.clone();
            let request = flashrack_app::capture::CaptureRequest {
                device,
                name,
                whole,
                policy,
                cancel: Some(cancel.clone()),
                ..Default::default()
            };
            let captured = capture_cancellable(&cache, request, &cancel).await?;
            let image = &captured.outcome.image;
            let smallest = flashrack_app::capture::smallest_stick(data_dir, None).await;
            let fits = smallest.map(|s| image.size() <= s.bytes());
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "sha256": image.sha256(),
                        "size": image.size(),
                        "device_size": captured.device_size,
                        "sector_size": captured.sector_size,
                        "extent": captured.extent.describe(),
                        "already_cached": captured.outcome.already_cached(),
                        "smallest_stick": smallest.map(|s| s.bytes()),
                        "fits_smallest_stick": fits,
                        "provenance": image.meta.provenance,
                        "block_map": map_json(&captured.map),
                    })
                )?;
            } else {
                errln!(
                    "captured {} of {} ({}): {}, {} in zero chunks",
                    ByteSize(image.size()),
                    ByteSize(captured.device_size),
                    captured.extent.describe(),
                    image.meta.original_name,
                    ByteSize(image.manifest.zero_bytes()),
                );
                if captured.outcome.already_cached()
                    && asked_name
                        .as_ref()
                        .is_some_and(|asked| *asked != image.meta.original_name)
                {
                    errln!(
                        "note: the same bytes were cached already, as {}: the image keeps that name, and is known as {} too",
                        image.meta.original_name,
                        asked_name.as_deref().unwrap_or_default()
                    );
                }
                if captured.sector_size != 512 {
                    errln!(
                        "note: the master has {}-byte sectors; a partition table on it counts in them, so sticks with 512-byte sectors (most) will not see its partitions",
                        captured.sector_size
                    );
                }
                match smallest {
                    Some(smallest) if image.size() <= smallest.bytes() => errln!(
                        "it fits the smallest stick the records know ({})",
                        ByteSize(smallest.bytes()).exact()
                    ),
                    Some(smallest) => errln!(
                        "it does NOT fit the smallest stick the records know ({}): {} more than it holds",
                        ByteSize(smallest.bytes()).exact(),
                        ByteSize(image.size() - smallest.bytes())
                    ),
                    None => errln!("no stick in the records yet to compare its size with"),
                }
                errln!("{}", captured.map.summary());
                outln!("{}", image.sha256())?;
            }
        }
        ImageCommand::List { json } => {
            let images = cache.list()?;
            if json {
                let rows: Vec<_> = images
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "sha256": i.sha256(), "size": i.size(),
                            "name": i.meta.original_name, "format": i.meta.format.name(),
                            "also_known_as": i.meta.also_known_as,
                            "imported_at": i.meta.imported_at,
                            "inspection": i.meta.inspection,
                            "raw_write_refusal": i.raw_write_refusal(),
                            "block_map": kept_map_json(&cache.block_map(&i.sha256())),
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                for i in images {
                    let what = i.meta.inspection.as_ref().map(|x| x.summary());
                    let map = match cache.block_map(&i.sha256()) {
                        Ok(Some(map)) => {
                            format!("  [block map {:.1} %]", map.mapped_share() * 100.0)
                        }
                        Ok(None) => String::new(),
                        Err(_) => "  [block map unreadable]".to_string(),
                    };
                    outln!(
                        "{}  {:>10}  {}  {}{}{}",
                        i.sha256(),
                        ByteSize(i.size()).to_string(),
                        i.meta.original_name,
                        what.unwrap_or_default(),
                        map,
                        if i.raw_write_refusal().is_some() {
                            "  [raw run refused]"
                        } else {
                            ""
                        }
                    )?;
                }
            }
        }
        ImageCommand::Show { image, json } => {
            let i = cache.find(&image)?;
            let map = cache.block_map(&i.sha256());
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "sha256": i.sha256(), "size": i.size(),
                        "name": i.meta.original_name, "format": i.meta.format.name(),
                        "also_known_as": i.meta.also_known_as,
                        "imported_at": i.meta.imported_at,
                        "inspection": i.meta.inspection,
                        "raw_write_refusal": i.raw_write_refusal(),
                        "block_map": kept_map_json(&map),
                        "provenance": i.meta.provenance,
                    }))?
                )?;
            } else {
                outln!("{}  {}", i.sha256(), i.meta.original_name)?;
                if !i.meta.also_known_as.is_empty() {
                    outln!("also known as: {}", i.meta.also_known_as.join(", "))?;
                }
                outln!("size: {} ({} bytes)", ByteSize(i.size()), i.size())?;
                if let Some(provenance) = &i.meta.provenance {
                    outln!("origin: {provenance}")?;
                }
                match &i.meta.inspection {
                    Some(info) => {
                        for line in info.details() {
                            outln!("{line}")?;
                        }
                    }
                    None => outln!("not inspected (the image file cannot be read)")?,
                }
                match map {
                    Ok(Some(map)) => outln!(
                        "block map: {}: {} of {} bytes mapped ({:.1} %), {} ranges",
                        map.source(),
                        map.ranges.mapped_bytes(),
                        map.ranges.image_size(),
                        map.mapped_share() * 100.0,
                        map.ranges.ranges().len()
                    )?,
                    Ok(None) => {
                        outln!("block map: none (sparse runs are not possible; written whole)")?
                    }
                    Err(error) => outln!("block map: unreadable ({error})")?,
                }
            }
        }
        ImageCommand::Remove { image } => {
            let removed = remove(&cache, &image)?;
            errln!("removed {removed}");
        }
        ImageCommand::BuildBootable {
            iso,
            name,
            split_above,
            max_size,
            json,
        } => {
            let source = resolve_image(&cache, &iso, None, max_size)?;
            let request = BuildRequest {
                name,
                max_file_size: split_above.bytes(),
                max_image_size: max_size,
            };
            let built = build_cancellable(&cache, data_dir, source.clone(), request).await?;
            let image = &built.image;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "sha256": image.sha256(), "size": image.size(),
                        "name": image.meta.original_name,
                        "built_from": source.sha256(),
                        "reused": built.reused,
                        "split": built.split.iter().map(|(f, n)| serde_json::json!({"file": f, "parts": n})).collect::<Vec<_>>(),
                        "inspection": image.meta.inspection,
                    }))?
                )?;
            } else {
                if built.reused {
                    errln!(
                        "built before from {}: the cached layout",
                        source.meta.original_name
                    );
                } else {
                    for (file, parts) in &built.split {
                        errln!("{file} split into {parts} parts (.swm)");
                    }
                }
                if let Some(info) = &image.meta.inspection {
                    errln!("{}", info.summary());
                }
                outln!("{}", image.sha256())?;
            }
        }
    }
    Ok(())
}

/// A bootable build's progress on stderr: each stage as a line ("stage 4 of
/// 5: copying the files in"), then, within the copying and hashing stages,
/// the bytes done as the API's `stage_bytes` and the dashboard give them: a
/// bar on a terminal; otherwise a line at the stage's start, at each further
/// tenth and at its end ("copying the files in: 2.10 MB of 6.29 MB (33%)",
/// the dashboard's words: whole percent, rounded down).
struct BuildView {
    bar: Option<ProgressBar>,
    /// Plain lines (stderr is not a terminal).
    lines: bool,
    /// The tenth of the stage last said in a line (`None`: nothing said yet
    /// of this stage's bytes).
    last_tenth: Option<u64>,
}

impl BuildView {
    fn new() -> Self {
        Self {
            bar: None,
            lines: !std::io::stderr().is_terminal(),
            last_tenth: None,
        }
    }

    fn stage(&mut self, stage: BuildStage) {
        self.finish();
        self.last_tenth = None;
        errln!(
            "stage {} of {}: {stage}",
            stage.number(),
            BuildStage::ALL.len()
        );
    }

    fn bytes(&mut self, bytes: StageBytes) {
        let StageBytes { stage, done, total } = bytes;
        if self.lines {
            // An empty stage is done from its start.
            let tenth = done
                .saturating_mul(10)
                .checked_div(total)
                .unwrap_or(10)
                .min(10);
            if self.last_tenth.is_some_and(|last| tenth <= last) {
                return;
            }
            self.last_tenth = Some(tenth);
            let percent = done
                .saturating_mul(100)
                .checked_div(total)
                .unwrap_or(100)
                .min(100);
            errln!(
                "{stage}: {} of {} ({percent}%)",
                ByteSize(done),
                ByteSize(total)
            );
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {done_of_total} {percent}%")
                    .expect("a valid template")
                    .with_key(
                        "done_of_total",
                        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(
                                w,
                                "{} of {}",
                                ByteSize(state.pos()),
                                ByteSize(state.len().unwrap_or(0))
                            );
                        },
                    )
                    .progress_chars("=> "),
            );
            bar.set_message(stage.to_string());
            bar
        });
        bar.set_length(total);
        bar.set_position(done);
    }

    /// Leaves the last stage's bar drawn where it ended.
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

/// A download's progress on stderr: a bar with bytes, rate and time left on a
/// terminal, a line every tenth otherwise; nothing with `--json`.
struct DownloadView {
    bar: Option<ProgressBar>,
    /// Plain lines (stderr is not a terminal).
    lines: bool,
    /// Nothing at all (`--json`).
    quiet: bool,
    last_tenth: u64,
    said_resume: bool,
    /// What the checking before the download is said to do: `None` when
    /// there is no checksum list to fetch (nothing is said then).
    checking: Option<&'static str>,
}

/// Why `--no-bmap` is refused for a file or a cached image: it says to look
/// for no map on a URL's server, and a file's own map beside it
/// (`FILE.bmap`) costs no lookup (move it away to import without it).
pub(crate) const NO_BMAP_FOR_A_FILE: &str = "--no-bmap is for a URL (it skips the lookup of a block map beside the image on its server); a file's map is the FILE.bmap beside it, if any";

/// The block map of a URL's import: the one given (an http(s) URL, else a
/// file on the station), none with `--no-bmap` (clap refuses both), else
/// one looked for beside the image on its server.
pub(crate) fn url_bmap(given: Option<&Path>, no_bmap: bool) -> UrlBmap {
    match given.map(|b| (b, b.to_str())) {
        Some((_, Some(b))) if b.starts_with("http://") || b.starts_with("https://") => {
            UrlBmap::Url(b.to_string())
        }
        Some((path, _)) => UrlBmap::File(path.to_path_buf()),
        None if no_bmap => UrlBmap::NotWanted,
        None => UrlBmap::Beside,
    }
}

/// What an import's checking before its download does, in words (see
/// [`DownloadView::checking`]).
fn checking_words(check: &DigestCheck) -> Option<&'static str> {
    match check {
        DigestCheck::Sums {
            signature: Some(_), ..
        } => Some("checking the checksum list and its signature"),
        DigestCheck::Sums {
            signature: None, ..
        } => Some("fetching the checksum list"),
        DigestCheck::None | DigestCheck::Sha256(_) => None,
    }
}

impl DownloadView {
    fn new(json: bool, checking: Option<&'static str>) -> Self {
        Self {
            bar: None,
            lines: !std::io::stderr().is_terminal(),
            quiet: json,
            last_tenth: 0,
            said_resume: false,
            checking,
        }
    }

    fn update(&mut self, progress: &UrlProgress) {
        if self.quiet {
            return;
        }
        let UrlProgress::Downloading(p) = progress else {
            if let Some(words) = self.checking {
                errln!("{words}");
            }
            return;
        };
        if p.resumed_from > 0 && !self.said_resume {
            self.said_resume = true;
            errln!(
                "resuming a partial download at {}",
                ByteSize(p.resumed_from)
            );
        }
        if self.lines {
            if let Some(total) = p.total.filter(|t| *t > 0) {
                let tenth = p.held.saturating_mul(10) / total;
                if tenth > self.last_tenth {
                    self.last_tenth = tenth;
                    errln!("downloaded {} of {}", ByteSize(p.held), ByteSize(total));
                }
            }
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(p.total, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message("downloading");
            // A resumed download starts where it stopped: its rate and time
            // left count from there.
            bar.set_position(p.held);
            bar.reset_eta();
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        if let Some(total) = p.total {
            bar.set_length(total);
        }
        bar.set_position(p.held);
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// An image's kept block map as `image show`/`list --json` give it: its
/// source, mapped bytes and share ([`flashrack_app::images::MapInfo`]), null
/// when it has none, `{"error": …}` when it cannot be read.
fn kept_map_json(
    map: &Result<Option<flashrack_app::images::StoredMap>, flashrack_app::images::ImageError>,
) -> serde_json::Value {
    match map {
        Ok(Some(map)) => serde_json::json!(map.info()),
        Ok(None) => serde_json::Value::Null,
        Err(error) => serde_json::json!({"error": error.to_string()}),
    }
}

/// An import's block map as JSON: what became of it, and its coverage.
fn map_json(note: &MapNote) -> serde_json::Value {
    let map = |status: &str, map: &flashrack_app::images::StoredMap| {
        serde_json::json!({
            "status": status,
            "origin": map.origin,
            "mapped_bytes": map.ranges.mapped_bytes(),
            "image_size": map.ranges.image_size(),
            "ranges": map.ranges.ranges().len(),
        })
    };
    match note {
        MapNote::Attached(m) => map("attached", m),
        MapNote::Known(m) => map("known", m),
        MapNote::Kept(m) => map("kept", m),
        MapNote::Generated(m) => map("generated", m),
        MapNote::Refused { file, reason } => {
            serde_json::json!({"status": "refused", "file": file, "reason": reason})
        }
        MapNote::None { reason } => serde_json::json!({"status": "none", "reason": reason}),
    }
}
