//! One-shot flashing of a file the cache has not seen, without waiting for its
//! import: the targets are written while the file is imported.
//!
//! The import runs on a blocking thread and tells an engine
//! [`ImageFeed`] of every chunk it has stored (the image crate's
//! [`ImportObserver`]); the engine's targets follow the feed, never ahead of
//! it, and wait for its end before they read back. When the import ends,
//! [`finish_import`] decides: a successful import whose image may be written
//! raw is recorded as the run's image (the run started under a provisional
//! image row, [`StoreRecords::run_started_provisional`]) and only then ends
//! the feed with the image's sha256, so every verdict comes after the run's
//! image is in the records; a failed one (a digest that does not match what
//! the operator expected, a corrupt or truncated file, a read error) or an
//! image refused for a raw write fails the feed, which fails every attempt as
//! a source failure (recorded `interrupted`, the run stopped as
//! `source_failed`) before any of them can pass, and the import leaves
//! nothing in the cache.
//! A raw file that would not boot written raw is known before its import
//! ends ([`raw_file_refusal`]: the file is the image) and is not followed:
//! its import ends and [`super::flash`] refuses it before a target is opened.
//! A download or a compressed file is judged by its head, the first bytes
//! the import stores ([`FeedObserver::head`]), before the targets start: an
//! El Torito-only ISO fails the feed at once, so no target gets a byte; the
//! run is recorded and stops as `source_failed`, the import is abandoned,
//! and the refusal is in the event log.
//!
//! The targets follow the import when its size is known as it begins: a raw
//! file's, or the size a plain `.xz` stream declares in its index (checked
//! when the import ends); a download (`flash_url`) also when its size is not
//! known before its end (a compressed file, a server that states no length),
//! if every target is a block device: a stick too small then fails as
//! `too_small` when the write passes its end. Where the image must be known
//! whole before the first byte (a sparse run needs its block map, an audit
//! writes nothing), a file's size is not known before the import ends (gzip,
//! zstd, bzip2, zip, an xz file of several streams: file targets are sized
//! by the image, and a stick's size is checked against it before writing),
//! a download of unknown size has a file or a simulated stick among its
//! targets, or the import finds the file already cached, the import ends
//! first and the image is flashed from the cache as before
//! ([`super::flash`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use flashrack_core::{RunId, Sha256Digest, StopReason};
use flashrack_engine::{Fanout, ImageFeed};
use flashrack_image::{
    CachedImage, ImageError, ImportObserver, ImportOptions, ImportOutcome, RawWriteRefusal,
};

use crate::downloads::{
    error_chain, file_name_of, import_url_following, Following, RetryPolicy, UrlImport, UrlProgress,
};
use flashrack_station::{Journal, JournalEvent, RunOptions, RunRefusal, RunStart};
use tokio::sync::{mpsc, oneshot};

use super::{
    engine_options, guard_policy, start_attempts, Ended, Flash, FlashEvent, FlashOutcome,
    FlashRequest, Notice, StopSignal, STATION_ID, STOP_GRACE,
};
use crate::images::open_cache;
use crate::records::StoreRecords;
use crate::targets::{parse_targets, GuardSettings};
use crate::AppError;

/// Hands an import's chunks to the engine's feed, and says when the pass
/// began (with the image's size, if known then).
#[derive(Debug)]
pub(crate) struct FeedObserver {
    feed: Arc<ImageFeed>,
    /// Set (once) with the reason when the import abandons what it told
    /// ([`ImportObserver::abandoned`]): the feed failed then, though the
    /// import may end well; read by whoever waits for the import's end
    /// ([`FeedObserver::abandonment`]). Not read off the feed, which fails
    /// for other reasons too (a stopped flash or run).
    abandoned: Arc<OnceLock<String>>,
    /// Taken by the first `began`; dropped with the observer when the import
    /// ends without a pass (a known file, an early error), which the waiting
    /// side sees as a closed channel.
    began: Mutex<Option<oneshot::Sender<Option<u64>>>>,
    /// The image's first bytes, gathered from the chunks as they are
    /// stored, and where they go once there are
    /// [`flashrack_inspect::HEAD_LEN`] of them ([`FeedObserver::head`]):
    /// enough to refuse an image that would not boot written raw before a
    /// target gets a byte. Dropped (the channel closed) when the import
    /// ends first, or tells a data chunk without its bytes.
    head: Mutex<Option<Head>>,
}

/// An import's head being gathered (see [`FeedObserver::head`]).
#[derive(Debug)]
struct Head {
    bytes: Vec<u8>,
    to: oneshot::Sender<Vec<u8>>,
}

impl ImportObserver for FeedObserver {
    fn began(&self, raw: &std::fs::File, chunk_size: u32, size: Option<u64>) {
        // The engine reads the chunks through a descriptor of its own.
        match raw.try_clone() {
            Ok(file) => {
                if let Err(error) = self.feed.begin(file, chunk_size, size) {
                    tracing::error!(%error, "the image feed refused the import's start");
                }
            }
            Err(error) => self
                .feed
                .fail(format!("cannot share the file being imported: {error}")),
        }
        let began = self
            .began
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(began) = began {
            let _ = began.send(size);
        }
    }

    fn chunk(&self, len: usize, zero: bool, fingerprint: u128) {
        self.gather(zero.then_some(&[][..]), len);
        self.pushed(self.feed.push(len, zero, fingerprint));
    }

    /// Every target following the feed fails with `reason` (a source
    /// failure), before any verdict; whoever waits for the import's end
    /// finds the reason ([`FeedObserver::abandonment`]).
    fn abandoned(&self, reason: &str) {
        let _ = self.abandoned.set(reason.to_string());
        self.feed.fail(reason);
    }

    /// The targets take the chunks from the feed while it holds them (the
    /// import's own buffers, handed over; or copied once, where the import
    /// lends them), and the import reads a raw file past the page cache.
    fn takes_bytes(&self) -> bool {
        true
    }

    fn chunk_data(&self, data: &[u8], fingerprint: u128) {
        self.gather(Some(data), data.len());
        self.pushed(self.feed.push_data(data, fingerprint));
    }

    /// The import's own buffer, kept by the feed without a copy.
    fn chunk_owned(&self, data: flashrack_image::ChunkData, fingerprint: u128) {
        self.gather(Some(&data), data.len());
        self.pushed(self.feed.push_owned(Box::new(data), fingerprint));
    }
}

impl FeedObserver {
    /// Feeds `feed`; `began` hears when the pass begins, with the image's
    /// size if known then.
    pub(crate) fn new(feed: Arc<ImageFeed>, began: oneshot::Sender<Option<u64>>) -> Self {
        Self {
            feed,
            began: Mutex::new(Some(began)),
            abandoned: Arc::default(),
            head: Mutex::new(None),
        }
    }

    /// The image's first [`flashrack_inspect::HEAD_LEN`] bytes, as the
    /// import stores them, before the feed hears of the chunk that completes
    /// them. The channel closes without them when the import ends first (an
    /// image shorter than that, an import that ends before its pass) or
    /// tells a data chunk without its bytes.
    pub(crate) fn head(&self) -> oneshot::Receiver<Vec<u8>> {
        let (to, head) = oneshot::channel();
        *self.head.lock().unwrap_or_else(PoisonError::into_inner) = Some(Head {
            bytes: Vec::with_capacity(flashrack_inspect::HEAD_LEN),
            to,
        });
        head
    }

    /// Adds a chunk of `len` bytes to the head being gathered: `data` its
    /// bytes (empty for an all-zero chunk), `None` when they are not told.
    fn gather(&self, data: Option<&[u8]>, len: usize) {
        let mut head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(gathering) = head.as_mut() else {
            return;
        };
        let Some(data) = data else {
            *head = None;
            return;
        };
        let want = (flashrack_inspect::HEAD_LEN - gathering.bytes.len()).min(len);
        match data.is_empty() {
            true => gathering.bytes.resize(gathering.bytes.len() + want, 0),
            false => gathering.bytes.extend_from_slice(&data[..want]),
        }
        if gathering.bytes.len() == flashrack_inspect::HEAD_LEN {
            if let Some(done) = head.take() {
                let _ = done.to.send(done.bytes);
            }
        }
    }

    /// Where the reason is kept if the import abandons what it told this
    /// observer (see [`ImportObserver::abandoned`]).
    pub(crate) fn abandonment(&self) -> Arc<OnceLock<String>> {
        self.abandoned.clone()
    }

    /// Logs a chunk the feed refused.
    fn pushed(&self, result: Result<(), flashrack_engine::FeedError>) {
        if let Err(error) = result {
            if matches!(self.feed.ended(), Some(Err(_))) {
                // The flash failed the feed (a refused target, a stop) and
                // abandons the import, which may store a chunk or two more
                // before it sees its cancel flag: nothing is wrong.
                tracing::debug!(%error, "a chunk of an abandoned import");
            } else {
                tracing::error!(%error, "the image feed refused a chunk of the import");
            }
        }
    }
}

/// Sets the import's cancel flag when dropped, unless disarmed: a flash that
/// returns early (a bad target, the records) abandons its import, which then
/// removes what it wrote.
pub(crate) struct CancelOnDrop(pub(crate) Option<Arc<AtomicBool>>);

impl CancelOnDrop {
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = &self.0 {
            cancel.store(true, Ordering::Relaxed);
        }
    }
}

/// Flashes the image in the file `path`, writing the targets while it is
/// imported into the cache (in place where it is raw, see
/// [`crate::images::import_in_place`]); `expected` is checked when the import
/// ends, before any verdict. See the module docs for when the import ends
/// first instead, and [`super::flash`] for everything else.
pub async fn flash_file(
    data_dir: &Path,
    path: &Path,
    expected: Option<Sha256Digest>,
    request: FlashRequest,
    view: mpsc::UnboundedSender<FlashEvent>,
    stops: mpsc::UnboundedReceiver<StopSignal>,
) -> Result<FlashOutcome, AppError> {
    let name = path.display().to_string();
    let import_error = move |source: ImageError| AppError::Import {
        name,
        source: Box::new(source),
    };
    let cache = open_cache(data_dir)?;
    let feed = ImageFeed::new();
    let (began_tx, began_rx) = oneshot::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let abandon = CancelOnDrop(Some(cancel.clone()));
    let follow = !request.sparse && !request.audit;
    if follow {
        // The targets start only after the checks and the records: the
        // import keeps its first chunks for them (see `ImageFeed::reserve`).
        feed.reserve();
    }
    let (observer, abandoned, head) = observe_if_following(&feed, began_tx, follow);
    let options = ImportOptions {
        expected_sha256: expected,
        max_image_size: request.max_size.bytes(),
        reference_raw: true,
        cancel: Some(cancel.clone()),
        observer: observer.map(|o| Arc::new(o) as Arc<dyn ImportObserver>),
        ..ImportOptions::default()
    };
    let import_path = path.to_path_buf();
    let import = tokio::task::spawn_blocking(move || {
        cache.import(&import_path, options).map_err(import_error)
    });
    let importing = Importing {
        import,
        began: began_rx,
        head,
        feed,
        abandoned,
        cancel,
        abandon,
    };
    follow_or_wait(
        data_dir,
        Origin::File(path),
        importing,
        request,
        view,
        stops,
    )
    .await
}

/// Flashes the image at a URL, writing the targets while it downloads (and
/// is imported as it arrives, see [`crate::downloads`]): the same as
/// [`flash_file`] for a file, with the download's digest (`--sha256`, or a
/// checksum list and its signature, checked before anything is downloaded)
/// checked when it ends, before any verdict. A download that fails (a 404, a
/// cut that cannot be resumed, a server that lies about the length, a file
/// that changed on the server) fails every target with its reason and
/// leaves nothing in the cache; a cut that can be resumed is resumed within
/// the download, and a partial download left by a failure is resumed by the
/// next import or flash of the URL. The targets follow the download once
/// its pass begins: with its raw size when that is known then (a raw file's
/// length as the server declares it, a zip's file from its local header,
/// or once the archive is downloaded when its file is stored with its sizes
/// after its data), else (a compressed file, a server that declares no
/// length, a zip's deflated file whose sizes follow its data) with the size
/// unknown when every target is a block device; with a file
/// or a simulated stick among them the download ends first and the image is
/// flashed from the cache. A file that changes on the server while it is
/// followed fails every target ([`AppError::SourceChanged`]).
/// `progress` hears of the download.
pub async fn flash_url(
    data_dir: &Path,
    import: UrlImport,
    policy: RetryPolicy,
    request: FlashRequest,
    view: mpsc::UnboundedSender<FlashEvent>,
    stops: mpsc::UnboundedReceiver<StopSignal>,
) -> Result<FlashOutcome, AppError> {
    let cache = open_cache(data_dir)?;
    let feed = ImageFeed::new();
    let (began_tx, began_rx) = oneshot::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let abandon = CancelOnDrop(Some(cancel.clone()));
    let follow = !request.sparse && !request.audit;
    if follow {
        // The targets start only after the checks and the records: the
        // import keeps its first chunks for them (see `ImageFeed::reserve`).
        feed.reserve();
    }
    let (observer, abandoned, head) = observe_if_following(&feed, began_tx, follow);
    let following = Following {
        observer: observer.map(|o| Arc::new(o) as Arc<dyn ImportObserver>),
        raw_size: None,
        cancel: Some(cancel.clone()),
        bmap: None,
    };
    let task = {
        let (data_dir, import, view) = (data_dir.to_path_buf(), import.clone(), view.clone());
        tokio::spawn(async move {
            import_url_following(
                &cache,
                &data_dir,
                &import,
                policy,
                |progress| {
                    if let UrlProgress::Downloading(progress) = progress {
                        let _ = view.send(FlashEvent::Download(progress));
                    }
                },
                following,
            )
            .await
        })
    };
    let importing = Importing {
        import: task,
        began: began_rx,
        head,
        feed,
        abandoned,
        cancel,
        abandon,
    };
    follow_or_wait(
        data_dir,
        Origin::Url(&import.url),
        importing,
        request,
        view,
        stops,
    )
    .await
}

/// Where the image a flash follows comes from.
#[derive(Debug, Clone, Copy)]
enum Origin<'a> {
    /// A file being imported.
    File(&'a Path),
    /// A URL being downloaded and imported.
    Url(&'a str),
}

impl Origin<'_> {
    /// As the operator named it.
    fn label(&self) -> String {
        match self {
            Origin::File(path) => path.display().to_string(),
            Origin::Url(url) => (*url).to_string(),
        }
    }

    /// The image's name in the records.
    fn name(&self) -> String {
        match self {
            Origin::File(path) => path
                .file_name()
                .map(|n| flashrack_core::printable_name(&n.to_string_lossy()))
                .unwrap_or_default(),
            Origin::Url(url) => file_name_of(url).unwrap_or_else(|| (*url).to_string()),
        }
    }
}

/// An import under way that a flash may follow.
struct Importing {
    /// The import (a panic there is re-raised).
    import: tokio::task::JoinHandle<Result<ImportOutcome, AppError>>,
    /// Told when the pass begins, with the image's size if known then;
    /// closed when the import ends without a pass.
    began: oneshot::Receiver<Option<u64>>,
    /// The image's head, once the import has stored it
    /// ([`FeedObserver::head`]).
    head: oneshot::Receiver<Vec<u8>>,
    feed: Arc<ImageFeed>,
    /// The reason, if the import abandons what it told the feed.
    abandoned: Arc<OnceLock<String>>,
    cancel: Arc<AtomicBool>,
    /// Abandons the import if the flash returns early.
    abandon: CancelOnDrop,
}

/// Follows the import if its pass begins with the image's size known;
/// otherwise (compressed with no declared size, sparse, an audit, a known
/// file, an early error) flashes the image once imported.
async fn follow_or_wait(
    data_dir: &Path,
    origin: Origin<'_>,
    importing: Importing,
    request: FlashRequest,
    view: mpsc::UnboundedSender<FlashEvent>,
    stops: mpsc::UnboundedReceiver<StopSignal>,
) -> Result<FlashOutcome, AppError> {
    let Importing {
        mut import,
        began,
        head,
        feed,
        abandoned,
        cancel,
        mut abandon,
    } = importing;
    // `None`: the import ended without a pass; `Some(size)`: it began, of
    // `size` bytes if that is known now.
    let began = tokio::select! {
        biased;
        began = began => began.ok(),
        result = &mut import => {
            let outcome = result
                .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
            abandon.disarm();
            return super::flash(data_dir, outcome.image, request, view, stops).await;
        }
    };
    // A raw file is the image itself: what it is (an installer ISO that
    // would not boot written raw) is known before its import ends. Such a
    // file is not followed: the import ends first and the flash of the
    // cached image refuses it before a target is opened, as for an image
    // the cache knew. (A compressed file or a download is judged by its
    // head below.)
    let refused = match (&began, origin) {
        (Some(_), Origin::File(path)) if !request.force_raw => {
            raw_file_refusal(path).await.is_some()
        }
        _ => false,
    };
    // Whether the targets follow the import: of known size, or a download
    // of unknown size (a compressed file, a server that states no length)
    // when every target is a block device (they fail as too small when the
    // write passes their end; a file or a simulated stick is sized by the
    // image, so it waits).
    let size = match began {
        Some(Some(size)) if !refused => Some(Some(size)),
        Some(None) if matches!(origin, Origin::Url(_)) && all_block_devices(&request.targets) => {
            Some(None)
        }
        _ => None,
    };
    let Some(size) = size else {
        // Flashed once imported: nothing to keep for the targets.
        feed.unreserve();
        let outcome = join(import).await?;
        abandon.disarm();
        return super::flash(data_dir, outcome.image, request, view, stops).await;
    };
    // A download or a compressed file is judged by its head, the first
    // bytes the import stores (which the feed keeps for the targets
    // meanwhile): one that would not boot written raw (an El Torito-only
    // ISO) is refused before a target gets a byte, its run stopped as a
    // source failure at once ([`follow_import`]).
    let mut head_refusal = None;
    if !request.force_raw {
        match head_or_end(head, &mut import).await {
            HeadOrEnd::Head(refusal) => head_refusal = refusal,
            HeadOrEnd::Ended(result) => {
                feed.unreserve();
                let outcome = (*result)?;
                abandon.disarm();
                return super::flash(data_dir, outcome.image, request, view, stops).await;
            }
        }
    }
    tracing::debug!(image = %origin.label(), ?size, "writing while importing");
    let outcome = follow_import(
        data_dir,
        origin,
        size,
        feed,
        import,
        request,
        view,
        stops,
        cancel.clone(),
        abandoned,
        head_refusal,
    )
    .await;
    abandon.disarm();
    outcome
}

/// Why the image in the file `path` would not be written raw, read from the
/// file as it is: a raw file's inspection, the one its import will store.
/// `None` for an image that may be written raw, for a compressed file (its
/// image is not known before it is decompressed) and for a file that cannot
/// be read here (its import says why).
pub(crate) async fn raw_file_refusal(path: &Path) -> Option<flashrack_image::RawWriteRefusal> {
    let path = path.to_path_buf();
    // A few reads of descriptors and directories, off the async workers.
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).ok()?;
        flashrack_inspect::inspect(&file).raw_write_refusal()
    })
    .await
    .ok()
    .flatten()
}

/// Whether every target named is a block device (no file, no simulated
/// stick): only those can follow an image of unknown size.
fn all_block_devices(specs: &[String]) -> bool {
    specs.iter().all(|spec| {
        !spec.starts_with("sim:")
            && flashrack_hardware::block::PathTarget::is_block_device(Path::new(spec))
    })
}

/// The import's result from its task (a panic there is re-raised).
async fn join(
    import: tokio::task::JoinHandle<Result<ImportOutcome, AppError>>,
) -> Result<ImportOutcome, AppError> {
    match import.await {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// The flash of an image of `size` bytes (`None`: known at the import's
/// end; every target is a block device) whose import is under way.
#[allow(clippy::too_many_arguments)]
async fn follow_import(
    data_dir: &Path,
    origin: Origin<'_>,
    size: Option<u64>,
    feed: Arc<ImageFeed>,
    import: tokio::task::JoinHandle<Result<ImportOutcome, AppError>>,
    request: FlashRequest,
    view: mpsc::UnboundedSender<FlashEvent>,
    mut stops: mpsc::UnboundedReceiver<StopSignal>,
    cancel: Arc<AtomicBool>,
    abandoned: Arc<OnceLock<String>>,
    head_refusal: Option<RawWriteRefusal>,
) -> Result<FlashOutcome, AppError> {
    // An early return abandons the import, and fails the feed (nobody
    // follows it yet).
    let mut abandon = CancelOnDrop(Some(cancel.clone()));
    // Refused by its head: the feed fails before any target follows it, so
    // not a byte is written; the run is recorded, each target's attempt
    // fails as a source failure, the import is abandoned, and
    // [`finish_import`] records the refusal.
    if let Some(refusal) = &head_refusal {
        feed.fail(would_not_boot(refusal));
    }
    // A file being imported is read for the whole run: never a target (a
    // download goes to the cache's temporary file, in the data directory,
    // which the guard protects anyway).
    let importing_file = match origin {
        Origin::File(path) => Some(path),
        Origin::Url(_) => None,
    };
    let policy = guard_policy(&request, data_dir, importing_file)
        .inspect_err(|_| feed.fail("the flash was refused"))?;
    if let Some(path) = importing_file {
        crate::targets::refuse_the_image_file(path, &request.targets)
            .inspect_err(|_| feed.fail("the flash was refused"))?;
    }
    // Of unknown size, the guard's rule 5 cannot judge a stick by it: the
    // engine fails a stick too small when the write passes its end.
    let known = size.unwrap_or(0);
    let targets = parse_targets(
        &request.targets,
        known,
        data_dir,
        GuardSettings {
            policy,
            image_size: known,
            audit: false,
        },
    )
    .inspect_err(|_| feed.fail("the flash was refused"))?;
    let options = engine_options(&request, None);
    let stall_timeout = options.stall_timeout;
    let name = origin.name();
    let run_options = RunOptions {
        verify: request.verify,
        eject_on_pass: false,
        target_count: None,
        force_raw: request.force_raw,
        sample: request.sample,
        retries: request.retries,
        ..RunOptions::default()
    };
    let records = StoreRecords::open(data_dir, STATION_ID, open_cache(data_dir)?).await?;
    if records.recovered().any() {
        let _ = view.send(FlashEvent::Notice(Notice::Recovered(records.recovered())));
    }
    // The run's image is not known before the import ends: a provisional
    // row, unique to this run, names it until then.
    let provisional = provisional_digest(&origin.label());
    let run_id = records
        .run_started_provisional(
            provisional,
            &RunStart {
                image_sha256: provisional,
                image_name: name.clone(),
                image_size: known,
                options: run_options.clone(),
            },
        )
        .await?;
    let started = start_attempts(&records, run_id, &targets).await?;
    let _ = view.send(FlashEvent::Targets(
        targets.list.iter().map(|(id, _)| id.clone()).collect(),
    ));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut flash = Flash::new(
        records.clone(),
        &targets,
        started,
        request.retries,
        view.clone(),
    );
    let fanout =
        Fanout::following(feed.clone(), options, events_tx).map_err(AppError::SourceFailed)?;
    // From here on the import ends the feed, whatever becomes of the flash.
    abandon.disarm();
    let finisher = tokio::spawn(finish_import(
        import,
        feed.clone(),
        abandoned.clone(),
        records.clone(),
        RunImage {
            run_id,
            provisional,
            name: name.clone(),
            label: origin.label(),
            force_raw: request.force_raw,
            options: run_options,
            head_refusal,
        },
        view.clone(),
    ));
    let grace = STOP_GRACE.min(stall_timeout);
    let ended = flash
        .drive(fanout, &targets.list, events_rx, &mut stops, grace)
        .await;
    // A stop (or a failure) abandons the import too; but not the failure
    // of every target the import itself caused by abandoning what it told
    // them: it reads the downloaded archive again, and its image is kept
    // for the next flash.
    let caused_by_import = matches!(ended, Ok(Ended::SourceFailed(_))) && abandoned.get().is_some();
    if !matches!(ended, Ok(Ended::Completed)) && !caused_by_import {
        cancel.store(true, Ordering::Relaxed);
    }
    let imported = match finisher.await {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    };
    let ended = ended?;
    flash.settle_unfinished(&targets.list).await?;
    let stopped_by = match (ended, imported) {
        (Ended::Signal(signal), imported) => {
            records
                .run_stopped(run_id, StopReason::Shutdown, Some(signal.name()))
                .await?;
            (Some(signal), imported.ok())
        }
        (_, Err(error)) => {
            // The note says why, with the causes (the digest expected, the
            // server's lie), not only what was imported; a refusal as the
            // targets were failed with it.
            let note = match &error {
                AppError::RawWriteRefused { refusal, .. } => would_not_boot(refusal),
                _ => error_chain(&error),
            };
            let _ = records
                .run_stopped(run_id, StopReason::SourceFailed, Some(&note))
                .await;
            flash.unfinished(&targets.list, None, known);
            return Err(error);
        }
        (Ended::SourceFailed(error), Ok(image)) => {
            let _ = records
                .run_stopped(run_id, StopReason::SourceFailed, Some(&error.to_string()))
                .await;
            flash.unfinished(&targets.list, Some(image.sha256()), image.size());
            return Err(AppError::SourceFailed(error));
        }
        (Ended::Completed, Ok(image)) => {
            records
                .run_stopped(run_id, StopReason::Completed, None)
                .await?;
            (None, Some(image))
        }
    };
    let (stopped_by, image) = stopped_by;
    // Stopped before the import ended: the image was never known.
    let (sha256, size) = match &image {
        Some(image) => (Some(image.sha256()), image.size()),
        None => (None, known),
    };
    let summary = flash.into_summary(&targets.list, sha256, size);
    drop(targets);
    Ok(FlashOutcome {
        summary,
        stopped_by,
    })
}

/// What [`finish_import`] needs to record the run's image or its refusal.
struct RunImage {
    run_id: RunId,
    provisional: Sha256Digest,
    name: String,
    /// The file or URL, as the operator named it.
    label: String,
    force_raw: bool,
    options: RunOptions,
    /// Why the image was refused by its head, before any target got a byte
    /// (the feed failed with it; the import is abandoned).
    head_refusal: Option<RawWriteRefusal>,
}

/// The observer of an import the targets follow (`None` when nothing
/// follows it: a sparse run, an audit), where it keeps what it abandoned,
/// and the receiver of its head (closed at once when nothing follows).
fn observe_if_following(
    feed: &Arc<ImageFeed>,
    began: oneshot::Sender<Option<u64>>,
    follow: bool,
) -> (
    Option<FeedObserver>,
    Arc<OnceLock<String>>,
    oneshot::Receiver<Vec<u8>>,
) {
    let observer = follow.then(|| FeedObserver::new(feed.clone(), began));
    let abandoned = observer
        .as_ref()
        .map_or_else(Arc::default, FeedObserver::abandonment);
    let head = match &observer {
        Some(observer) => observer.head(),
        None => oneshot::channel().1,
    };
    (observer, abandoned, head)
}

/// What came first of an import that targets follow: its head, or its end.
pub(crate) enum HeadOrEnd {
    /// The head was judged: the refusal of an image that would not boot
    /// written raw (an El Torito-only ISO), else `None` (also when no head
    /// was told: the observer gone with a failed import, whose end says why).
    Head(Option<RawWriteRefusal>),
    /// The import ended before its head was told (an image that short): the
    /// cached image's inspection decides.
    Ended(Box<Result<ImportOutcome, AppError>>),
}

/// Waits for the head of an import ([`FeedObserver::head`]) or its end,
/// whichever comes first, and judges the head
/// ([`flashrack_inspect::head_raw_write_refusal`]). The import is polled,
/// not consumed: after a head it goes on.
pub(crate) async fn head_or_end(
    head: oneshot::Receiver<Vec<u8>>,
    import: &mut tokio::task::JoinHandle<Result<ImportOutcome, AppError>>,
) -> HeadOrEnd {
    tokio::select! {
        biased;
        head = head => HeadOrEnd::Head(
            head.ok()
                .and_then(|head| flashrack_inspect::head_raw_write_refusal(&head)),
        ),
        result = import => HeadOrEnd::Ended(Box::new(
            result.unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic())),
        )),
    }
}

/// What the targets of an image refused for a raw run are failed with.
fn would_not_boot(refusal: &RawWriteRefusal) -> String {
    format!("the image would not boot written raw: {}", refusal.reason)
}

/// Waits for the import to end and ends the feed: with the image's sha256
/// once the image is recorded as the run's (so that no verdict comes before
/// it), or with the reason it failed or may not be written raw.
async fn finish_import(
    import: tokio::task::JoinHandle<Result<ImportOutcome, AppError>>,
    feed: Arc<ImageFeed>,
    abandoned: Arc<OnceLock<String>>,
    records: StoreRecords,
    run: RunImage,
    view: mpsc::UnboundedSender<FlashEvent>,
) -> Result<CachedImage, AppError> {
    let outcome = match import.await {
        Ok(result) => result,
        Err(join) => {
            feed.fail("the import's thread failed");
            std::panic::resume_unwind(join.into_panic());
        }
    };
    if let Some(refusal) = run.head_refusal {
        // Abandoned (its error is its cancellation), or ended first: the
        // refusal is the outcome, recorded as a cached image's is, under
        // the name the run has; the digest is the image's if the import
        // ended (then it is in the cache), else none: the run's provisional
        // digest is no image's.
        let image_sha256 = outcome.as_ref().ok().map(|outcome| outcome.image.sha256());
        records
            .event(&JournalEvent::RunRefused(RunRefusal {
                image_sha256,
                image_name: run.name.clone(),
                reason: refusal.reason.clone(),
                advice: refusal.advice.clone(),
                options: run.options,
            }))
            .await?;
        return Err(AppError::RawWriteRefused {
            name: run.name,
            refusal,
        });
    }
    let image = match outcome {
        Ok(outcome) => outcome.image,
        Err(error) => {
            feed.fail(format!(
                "the import of {} failed: {}",
                run.label,
                import_reason(&error)
            ));
            return Err(error);
        }
    };
    // The targets were failed with the reason when the import abandoned
    // what it had told them: the image is in the cache, not on them.
    if let Some(reason) = abandoned.get() {
        return Err(AppError::FollowAbandoned {
            name: run.label.clone(),
            reason: reason.clone(),
            sha256: image.sha256(),
        });
    }
    if let Some(refusal) = image.raw_write_refusal().filter(|_| !run.force_raw) {
        feed.fail(format!(
            "the image would not boot written raw: {}",
            refusal.reason
        ));
        records
            .event(&JournalEvent::RunRefused(RunRefusal {
                image_sha256: Some(image.sha256()),
                image_name: image.meta.original_name.clone(),
                reason: refusal.reason.clone(),
                advice: refusal.advice.clone(),
                options: run.options,
            }))
            .await?;
        return Err(AppError::RawWriteRefused {
            name: image.meta.original_name.clone(),
            refusal,
        });
    }
    if let Err(error) = records
        .run_image_known(
            run.run_id,
            run.provisional,
            image.sha256(),
            &run.name,
            image.size(),
        )
        .await
    {
        feed.fail(format!("the image could not be recorded: {error}"));
        return Err(error.into());
    }
    if let Err(error) = feed.finish(image.sha256()) {
        return Err(AppError::SourceFailed(
            flashrack_engine::EngineError::SourceFailed {
                detail: error.to_string(),
            },
        ));
    }
    let _ = view.send(FlashEvent::Notice(Notice::Imported {
        sha256: image.sha256(),
        size: image.size(),
    }));
    Ok(image)
}

/// Why an import failed, in the operator's words: the causes of `error`
/// (whose own words only repeat what was imported).
pub(crate) fn import_reason(error: &AppError) -> String {
    match std::error::Error::source(error) {
        Some(_) if matches!(error, AppError::Import { .. } | AppError::Download { .. }) => {
            let chain = error_chain(error);
            let own = error.to_string();
            chain
                .strip_prefix(&format!("{own}: "))
                .map(str::to_string)
                .unwrap_or(chain)
        }
        _ => error_chain(error),
    }
}

/// A digest of no image, unique to one run: the provisional image row's key
/// until the import names the image.
pub(crate) fn provisional_digest(label: &str) -> Sha256Digest {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Sha256Digest::of(
        format!(
            "flashrack provisional image: {} {} {nanos}",
            label,
            std::process::id()
        )
        .as_bytes(),
    )
}
