//! Runs armed over the API with an image that is not cached yet: a URL or a
//! file on the station (`POST /api/v1/runs` with `download` or `file`; the
//! web side's [`FollowedRuns`]). The sticks follow the import as they do in
//! `flashrack flash FILE|URL` ([`crate::flash`]): the import feeds an engine
//! [`ImageFeed`] chunk by chunk ([`FeedObserver`]), and once its pass has
//! begun the station arms the run over that feed
//! ([`StationHandle::arm_following`]), recorded under a provisional image row
//! until the import ends. The sticks present and those plugged in later are
//! guarded and written as the chunks arrive, and wait for the import's end
//! before they read back.
//!
//! When the import ends, [`FollowService`]'s task tells the station
//! ([`StationHandle::import_ended`]): a good image is first recorded as the
//! run's and only then ends the feed, so no verdict comes before the run
//! names its image; a failed import (a wrong digest, a corrupt archive, a
//! download that cannot be finished, a file changed on the server) or an
//! image refused for a raw run fails the feed, which fails every attempt as
//! a source failure before any verdict of a pass, and stops the run as
//! `source_failed` with the reason; the cache keeps nothing of a failed
//! import. A download or a compressed file whose head (its first 64 KiB)
//! shows an El Torito-only ISO fails the feed before the run is armed, so
//! no stick gets a byte, and its import is abandoned at once. While it
//! runs, the import's bytes go to the run's view
//! (`RunView::import`, at most 4 times a second) and a stop of the run
//! abandons the import (a download's partial file is kept, resumable).
//!
//! An import that fails before its pass begins (a file that is not there or
//! not a regular file, outside the import directories, a server's 404, a
//! checksum list without the file, a signature that does not hold) is the
//! request's error: no run is recorded. An image the cache knows already is
//! armed as any cached image, by the web side.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashrack_core::{ByteSize, RunId};
use flashrack_engine::{ImageFeed, SourceImage};
use flashrack_image::{BmapInput, ImageCache, ImportObserver, ImportOptions, ImportOutcome};
use flashrack_station::{FollowRequest, ImportEnd, RunRefusal, StationHandle};
use flashrack_web::{
    api::{image_error, station_error},
    FollowArm, FollowSource, Followed, FollowedRuns,
};
use futures::future::BoxFuture;
use tokio::sync::{oneshot, watch};

use crate::downloads::{
    block_map_of, error_chain, url_import_of, FollowedImport, Following, StartRefusal,
    UrlImportService, UrlProgress,
};
use crate::flash::{
    head_or_end, import_reason, provisional_digest, raw_file_refusal, CancelOnDrop, FeedObserver,
    HeadOrEnd,
};
use crate::images::bmap_beside;
use crate::AppError;

/// How often the import's progress goes to the run's view.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The web side's [`FollowedRuns`]: imports for runs, on the station's
/// runtime.
pub struct FollowService {
    cache: ImageCache,
    max_size: ByteSize,
    station: StationHandle,
    /// The station's imports from URLs: a run's download is one of them
    /// (listed, recorded, resumable after a crash like any other).
    downloads: Arc<UrlImportService>,
}

impl FollowService {
    /// Imports files into `cache`, images up to `max_size`, for runs of
    /// `station`; downloads through `downloads` (the station's list of
    /// imports from URLs, `GET /api/v1/images/downloads`).
    pub fn new(
        cache: ImageCache,
        max_size: ByteSize,
        station: StationHandle,
        downloads: Arc<UrlImportService>,
    ) -> Self {
        Self {
            cache,
            max_size,
            station,
            downloads,
        }
    }
}

impl FollowedRuns for FollowService {
    fn arm(&self, request: FollowArm) -> BoxFuture<'_, Result<Followed, flashrack_web::AppError>> {
        Box::pin(self.follow(request))
    }
}

/// The import's bytes so far and what they will reach, when known.
type Received = watch::Sender<(u64, Option<u64>)>;

/// Counts the bytes a file's import stores, for the run's view, and hands
/// everything on to the feed's observer.
#[derive(Debug)]
struct Counting {
    inner: FeedObserver,
    received: Received,
}

impl ImportObserver for Counting {
    fn began(&self, raw: &std::fs::File, chunk_size: u32, size: Option<u64>) {
        self.received.send_modify(|r| r.1 = size);
        self.inner.began(raw, chunk_size, size);
    }

    fn chunk(&self, len: usize, zero: bool, fingerprint: u128) {
        self.inner.chunk(len, zero, fingerprint);
        self.received.send_modify(|r| r.0 += len as u64);
    }

    fn abandoned(&self, reason: &str) {
        self.inner.abandoned(reason);
    }

    fn takes_bytes(&self) -> bool {
        self.inner.takes_bytes()
    }

    fn chunk_data(&self, data: &[u8], fingerprint: u128) {
        self.inner.chunk_data(data, fingerprint);
        self.received.send_modify(|r| r.0 += data.len() as u64);
    }

    fn chunk_owned(&self, data: flashrack_image::ChunkData, fingerprint: u128) {
        let len = data.len() as u64;
        self.inner.chunk_owned(data, fingerprint);
        self.received.send_modify(|r| r.0 += len);
    }

    fn reads_past_page_cache(&self) {
        self.inner.reads_past_page_cache();
    }
}

/// An import's failure before its run was armed, as the API answers it.
fn request_error(error: AppError) -> flashrack_web::AppError {
    match error {
        AppError::Import { source, .. } => image_error(*source),
        other => flashrack_web::AppError::unprocessable(error_chain(&other)),
    }
}

/// The import's result from its task (a panic there is re-raised).
fn joined(
    result: Result<Result<ImportOutcome, AppError>, tokio::task::JoinError>,
) -> Result<ImportOutcome, AppError> {
    result.unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
}

/// How long the import of a run armed over it keeps its first chunks for
/// the run's sticks while the station arms the run. Arming waits for the
/// records (the run, then each attempt's start), and the records may wait
/// out the store's busy timeout (10 s) behind another process's write lock;
/// a flash's own two seconds (`PACE_GIVE_UP`) were passed there under load,
/// and the sticks then read from the file what the import had passed. Only
/// the import waits this long, holding no more than the feed's bound.
const ARMING_PATIENCE: Duration = Duration::from_secs(10);

impl FollowService {
    async fn follow(&self, request: FollowArm) -> Result<Followed, flashrack_web::AppError> {
        // The station's claim to arm the run, taken by the web side before
        // this began: held while the import reaches its first chunk, handed
        // in with the arm; dropped on any error (or with this future, when
        // the client leaves), which frees the station.
        let claim = request.claim;
        let feed = ImageFeed::new();
        // The run's sticks start only once the station has armed it (its
        // records, the guard's checks): the import keeps its first chunks for
        // them (see `ImageFeed::reserve_for`), up to `ARMING_PATIENCE`; the
        // station lets the reservation go if the run has no stick to start.
        // An audit's sticks write nothing and never follow: nothing to keep
        // for them.
        if !request.options.audit {
            feed.reserve_for(ARMING_PATIENCE);
        }
        let (began_tx, began) = oneshot::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        // Until the run is armed, a request dropped (the client left) or an
        // error abandons the import.
        let mut abandon = CancelOnDrop(Some(cancel.clone()));
        let (received, received_rx) = watch::channel((0u64, None));
        let observer = FeedObserver::new(feed.clone(), began_tx);
        let abandoned = observer.abandonment();
        let head = observer.head();
        // The list's id of the run's download (a file's import is not listed).
        let mut listed = None;
        // A sparse run's ranges, from the bmap that comes with the image,
        // and where the map came from, in words.
        let mut sparse = None;
        let mut sparse_map = None;
        // The URL or file, and the image's name until it is known, as the
        // claim shows them.
        let (label, name) = request.source.describe();
        // A station file, looked at as it is once its import began (so
        // inside the import directories).
        let station_file = match &request.source {
            FollowSource::File { path, .. } => Some(path.clone()),
            FollowSource::Download(_) => None,
        };
        let mut import = match request.source {
            FollowSource::Download(body) => {
                let bmap = match request.options.sparse {
                    true => {
                        let input = self.url_block_map(&body).await?;
                        sparse = Some(Arc::new(input.ranges().map_err(image_error)?));
                        sparse_map = Some(input.source());
                        Some(input)
                    }
                    false => None,
                };
                let following = Following {
                    observer: Some(Arc::new(observer) as Arc<dyn ImportObserver>),
                    raw_size: None,
                    cancel: Some(cancel.clone()),
                    bmap,
                };
                let told = Box::new(move |progress: &UrlProgress| {
                    if let UrlProgress::Downloading(p) = progress {
                        received.send_replace((p.held, p.total));
                    }
                });
                let (id, _, task) = self
                    .downloads
                    .start_followed(body, FollowedImport { following, told })
                    .map_err(|refusal| match refusal {
                        StartRefusal::Bad(message) => flashrack_web::AppError::bad_request(message),
                        StartRefusal::Running(message) => {
                            flashrack_web::AppError::conflict(message)
                        }
                    })?;
                listed = Some(id);
                task
            }
            FollowSource::File {
                path,
                expected,
                allowed_dirs,
            } => {
                let bmap = match request.options.sparse {
                    true => file_block_map(&path, &allowed_dirs).await?,
                    false => None,
                };
                if let Some(input) = &bmap {
                    sparse = Some(Arc::new(input.ranges().map_err(image_error)?));
                    sparse_map = Some(input.source());
                }
                let options = ImportOptions {
                    bmap,
                    expected_sha256: expected,
                    max_image_size: self.max_size.bytes(),
                    // The station's own file stays where it is: a raw image
                    // is referenced in place as `flash FILE` and `image
                    // import FILE` do (cloned where the file system can; a
                    // file changed a moment ago is copied), not copied.
                    reference_raw: true,
                    allowed_dirs: Some(allowed_dirs),
                    cancel: Some(cancel.clone()),
                    observer: Some(Arc::new(Counting {
                        inner: observer,
                        received,
                    }) as Arc<dyn ImportObserver>),
                    ..ImportOptions::default()
                };
                let cache = self.cache.clone();
                let task = tokio::task::spawn_blocking(move || {
                    cache
                        .import(&path, options)
                        .map_err(|source| AppError::Import {
                            name: path.display().to_string(),
                            source: Box::new(source),
                        })
                });
                task
            }
        };
        // `Some(size)`: the pass began (of `size` bytes if known then);
        // `None`: the import ended without one (the cache knew the image).
        // The operator may stop the run meanwhile (the station answers the
        // stop at once and tells this to give up: a stalled or failing
        // server may take minutes to send a first byte, or never will).
        let mut stop_asked = claim.stop_asked();
        let stopped = async {
            // A station gone (the sender dropped) is no stop.
            if stop_asked.wait_for(|asked| *asked).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let began = tokio::select! {
            biased;
            () = stopped => {
                // Dropping `abandon` cancels the import (a download keeps
                // its partial file, to be resumed from the list).
                return Err(flashrack_web::AppError::conflict(
                    flashrack_station::StationError::ArmStopped.to_string(),
                ));
            }
            began = began => began.ok(),
            result = &mut import => {
                let outcome = joined(result).map_err(request_error)?;
                abandon.disarm();
                return Ok(Followed::Cached(Box::new(outcome.image), claim));
            }
        };
        let Some(size) = began else {
            let outcome = joined(import.await).map_err(request_error)?;
            abandon.disarm();
            return Ok(Followed::Cached(Box::new(outcome.image), claim));
        };
        // A raw station file is the image itself: one that would not boot
        // written raw is known now, before a stick is written. Its import
        // ends, and the arm refuses it as it refuses any cached image (422,
        // in the event log); a download or a compressed file is judged by its
        // head below.
        if let Some(path) = &station_file {
            let forced = request.options.force_raw || request.options.audit;
            if !forced && raw_file_refusal(path).await.is_some() {
                feed.unreserve();
                let outcome = joined(import.await).map_err(request_error)?;
                abandon.disarm();
                return Ok(Followed::Cached(Box::new(outcome.image), claim));
            }
        }
        let provisional = provisional_digest(&label);
        let options = flashrack_station::RunOptions {
            sparse_map,
            ..request.options
        };
        // An audit writes nothing: an image that would not boot written raw
        // may still be compared with sticks written otherwise.
        let force_raw = options.force_raw || options.audit;
        // A download or a compressed file is judged by its head, the first
        // bytes the import stores (kept for the sticks meanwhile): one that
        // would not boot written raw (an El Torito-only ISO) fails the feed
        // before the run is armed, so that no stick gets a byte; the run's
        // sticks fail as source failures, and `finish` abandons the import,
        // records the refusal and stops the run.
        let mut head_refusal = None;
        if !force_raw {
            match head_or_end(head, &mut import).await {
                HeadOrEnd::Head(refusal) => head_refusal = refusal,
                HeadOrEnd::Ended(result) => {
                    // Armed as a cached image, whose inspection decides.
                    feed.unreserve();
                    let outcome = (*result).map_err(request_error)?;
                    abandon.disarm();
                    return Ok(Followed::Cached(Box::new(outcome.image), claim));
                }
            }
        }
        if let Some(refusal) = &head_refusal {
            feed.fail(would_not_boot(refusal));
        }
        let total = received_rx.borrow().1;
        // Once its arm is sent the run is the station's, whoever waits for
        // the answer (a run's start may wait for the records): the arm and
        // what follows it run on a task of their own, which a client
        // leaving (this future dropped) does not stop, as it stops no
        // plain arm. (Abandoned there, the import left its run armed and
        // shown importing for good.)
        let (station, cache, downloads) = (
            self.station.clone(),
            self.cache.clone(),
            self.downloads.clone(),
        );
        let arming = tokio::spawn(async move {
            let armed = claim
                .arm_following(FollowRequest {
                    feed: feed.clone(),
                    size,
                    provisional,
                    source: label.clone(),
                    total,
                    image_name: name,
                    options: options.clone(),
                    sparse,
                })
                .await;
            let run = match armed {
                Ok(run) => run,
                Err(error) => {
                    // Dropping `abandon` cancels the import, which keeps
                    // nothing.
                    feed.fail("the run was not armed");
                    return Err(error);
                }
            };
            abandon.disarm();
            if let Some(id) = listed {
                downloads.followed_by(id, run.id).await;
            }
            tokio::spawn(finish(
                Finishing {
                    station,
                    cache,
                    run_id: run.id,
                    label,
                    force_raw,
                    options,
                    cancel,
                    received: received_rx,
                    abandoned,
                    name: run.image_name.clone(),
                    head_refusal,
                },
                import,
            ));
            Ok(run)
        });
        let run = arming
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
            .map_err(station_error)?;
        Ok(Followed::Armed(Box::new(run)))
    }
}

impl FollowService {
    /// A sparse run's block map for a download: the request's `bmap`, or
    /// one beside the image on its server, fetched and parsed before
    /// anything of the image is downloaded. None there is the request's
    /// 422: without a map known beforehand a sparse run cannot follow.
    async fn url_block_map(
        &self,
        body: &flashrack_web::UrlImportRequest,
    ) -> Result<BmapInput, flashrack_web::AppError> {
        let request = url_import_of(body.clone(), self.max_size)
            .map_err(flashrack_web::AppError::bad_request)?;
        let lookup = block_map_of(&request).await.map_err(request_error)?;
        match lookup.input {
            Some(input) => Ok(input),
            None => Err(flashrack_web::AppError::unprocessable(format!(
                "a sparse run of {} needs its block map before the download{}: give \"bmap\" \
                 with the download or put one beside the image on its server (bmaptool's \
                 names), or import the image first (a map is generated from its file \
                 systems where flashrack reads them), then arm it by its sha256",
                request.url,
                lookup
                    .failed
                    .map(|why| format!(" (the lookup beside it failed: {why})"))
                    .unwrap_or_default()
            ))),
        }
    }
}

/// A sparse run's block map for the station file `path`: the bmap file
/// beside it (bmaptool's names, [`bmap_beside`]), parsed before the image is
/// read; the import checks the image against it. A file outside
/// `allowed_dirs` (or not there) is not looked beside: the import refuses
/// it with its own reason. No map beside it is the request's 422.
async fn file_block_map(
    path: &std::path::Path,
    allowed_dirs: &[std::path::PathBuf],
) -> Result<Option<BmapInput>, flashrack_web::AppError> {
    let (file, allowed) = (path.to_path_buf(), allowed_dirs.to_vec());
    // `Ok(None)`: not looked beside (the import refuses the file);
    // `Ok(Some(None))`: no map beside it.
    let found = tokio::task::spawn_blocking(move || -> Result<_, AppError> {
        let Ok(real) = file.canonicalize() else {
            return Ok(None);
        };
        let inside = allowed
            .iter()
            .filter_map(|dir| dir.canonicalize().ok())
            .any(|dir| real.starts_with(dir));
        if !inside {
            return Ok(None);
        }
        let Some(bmap) = bmap_beside(&file) else {
            return Ok(Some(None));
        };
        BmapInput::read(&bmap)
            .map(|(input, _)| Some(Some(input)))
            .map_err(|source| AppError::Bmap {
                path: bmap,
                source: Box::new(source),
            })
    })
    .await
    .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
    .map_err(request_error)?;
    match found {
        None => Ok(None),
        Some(Some(input)) => Ok(Some(input)),
        Some(None) => Err(flashrack_web::AppError::unprocessable(format!(
            "a sparse run of {} needs its block map before the import: put one beside it \
             ({}.bmap, or the name with its extensions replaced by .bmap), or import the \
             image first (a map is generated from its file systems where flashrack reads \
             them), then arm it by its sha256",
            path.display(),
            path.display()
        ))),
    }
}

/// What [`finish`] needs besides the import.
struct Finishing {
    station: StationHandle,
    cache: ImageCache,
    run_id: RunId,
    /// The URL or file, as the operator named it.
    label: String,
    force_raw: bool,
    options: flashrack_station::RunOptions,
    cancel: Arc<AtomicBool>,
    received: watch::Receiver<(u64, Option<u64>)>,
    /// The reason, if the import abandoned what it told the run's sticks
    /// (they failed with it), though the import itself ends well.
    abandoned: Arc<std::sync::OnceLock<String>>,
    /// The run's image name until the import names the image.
    name: String,
    /// Why the image was refused by its head (the feed failed with it
    /// before the run was armed): the import is abandoned at once, and the
    /// refusal is the import's end.
    head_refusal: Option<flashrack_image::RawWriteRefusal>,
}

/// What the sticks of an image refused for a raw run are failed with, and
/// the run's import error.
fn would_not_boot(refusal: &flashrack_image::RawWriteRefusal) -> String {
    format!(
        "the image would not boot written raw: {} (\"force_raw\": true)",
        refusal.reason
    )
}

/// Follows the import of run `f.run_id` to its end: its progress to the
/// run's view, a stop of the run (or of the station) to the import's cancel
/// flag, and its end to the station (see the module docs).
async fn finish(
    f: Finishing,
    mut import: tokio::task::JoinHandle<Result<ImportOutcome, AppError>>,
) {
    if let Some(refusal) = f.head_refusal.clone() {
        // Nothing of it is written: the import is not waited for (a
        // download's partial file is kept, resumable by an import of the
        // URL), nor held against the station's next run.
        f.cancel.store(true, Ordering::Relaxed);
        // The image's digest if its import ended first (it is in the
        // cache), else none: the provisional digest is no image's.
        let image_sha256 = joined(import.await)
            .ok()
            .map(|outcome| outcome.image.sha256());
        let refused = RunRefusal {
            image_sha256,
            image_name: f.name.clone(),
            reason: refusal.reason.clone(),
            advice: refusal.advice.clone(),
            options: f.options.clone(),
        };
        if let Err(error) = f.station.record_run_refused(refused).await {
            tracing::error!(%error, "cannot record a refused run");
        }
        let (done, total) = *f.received.borrow();
        f.station.import_progress(f.run_id, done, total).await;
        let end = ImportEnd::Failed(would_not_boot(&refusal));
        if let Err(error) = f.station.import_ended(f.run_id, end).await {
            tracing::warn!(%error, run = %f.run_id, "the followed import's end");
        }
        return;
    }
    let mut runs = f.station.watch();
    let mut watching = true;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let result = loop {
        tokio::select! {
            result = &mut import => break joined(result),
            _ = tick.tick() => {
                let (done, total) = *f.received.borrow();
                f.station.import_progress(f.run_id, done, total).await;
            }
            changed = runs.changed(), if watching => {
                let still_armed = changed.is_ok()
                    && runs
                        .borrow()
                        .run
                        .as_ref()
                        .is_some_and(|r| r.id == f.run_id && r.armed);
                if !still_armed {
                    // Stopped (or the station is): nobody follows the
                    // import any more. Unless it abandoned what it told
                    // the sticks (which stopped the run: they failed with
                    // the reason, set before the feed failed): then it
                    // reads the downloaded archive again, and its image
                    // is for the next run.
                    if f.abandoned.get().is_none() {
                        f.cancel.store(true, Ordering::Relaxed);
                    }
                    watching = false;
                }
            }
        }
    };
    let (done, total) = *f.received.borrow();
    f.station.import_progress(f.run_id, done, total).await;
    let end = match result {
        // Abandoned by this task: the run (or the station) stopped first.
        Err(_) if f.cancel.load(Ordering::Relaxed) => ImportEnd::Failed(format!(
            "the import of {} was abandoned: its run stopped before it ended (a download's \
             partial file is kept, and an import of the URL resumes it)",
            f.label
        )),
        Err(error) => ImportEnd::Failed(format!(
            "the import of {} failed: {}",
            f.label,
            import_reason(&error)
        )),
        // The sticks that followed it failed with the reason; the run stops
        // as a failed import's does, and the image is in the cache for the
        // next.
        Ok(outcome) if f.abandoned.get().is_some() => ImportEnd::Failed(format!(
            "the sticks followed {} as it arrived, but {}: the image is now in the cache ({}): \
             arm a run of it to write it whole",
            f.label,
            f.abandoned.get().cloned().unwrap_or_default(),
            outcome.image.sha256()
        )),
        Ok(outcome) => {
            let image = outcome.image;
            match image.raw_write_refusal().filter(|_| !f.force_raw) {
                Some(refusal) => {
                    let reason = would_not_boot(&refusal);
                    let refused = RunRefusal {
                        image_sha256: Some(image.sha256()),
                        image_name: image.meta.original_name.clone(),
                        reason: refusal.reason,
                        advice: refusal.advice,
                        options: f.options.clone(),
                    };
                    if let Err(error) = f.station.record_run_refused(refused).await {
                        tracing::error!(%error, "cannot record a refused run");
                    }
                    ImportEnd::Failed(reason)
                }
                None => {
                    let end = ImportEnd::Imported {
                        image: SourceImage {
                            path: image.path.clone(),
                            manifest: image.manifest.clone(),
                            referenced: image.meta.reference.is_some(),
                        },
                        name: image.meta.original_name.clone(),
                    };
                    if let Err(error) = f.station.import_ended(f.run_id, end).await {
                        tracing::warn!(%error, run = %f.run_id, "the followed import's end");
                    }
                    // As an import over the API does: a block map from the
                    // image's file systems where flashrack reads them, after
                    // the sticks were let go on.
                    keep_map(&f.cache, image).await;
                    return;
                }
            }
        }
    };
    if let Err(error) = f.station.import_ended(f.run_id, end).await {
        tracing::warn!(%error, run = %f.run_id, "the followed import's end");
    }
}

/// Generates and keeps `image`'s block map, if flashrack reads its file
/// systems (one it cannot map is written whole).
async fn keep_map(cache: &ImageCache, image: flashrack_image::CachedImage) {
    let cache = cache.clone();
    let name = image.meta.original_name.clone();
    match tokio::task::spawn_blocking(move || crate::images::map_image(&cache, &image, None, None))
        .await
    {
        Ok(Ok(note)) => tracing::info!(image = %name, "{}", note.summary()),
        Ok(Err(error)) => tracing::debug!(image = %name, %error, "no block map"),
        Err(error) => tracing::warn!(image = %name, %error, "no block map"),
    }
}
