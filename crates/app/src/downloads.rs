//! Importing an image from a URL, with its provenance: the expected digest
//! (given, or looked up in a `SHA256SUMS` list whose OpenPGP signature is
//! checked first), then one streamed pass: the download
//! (`flashrack-download`, resumable from `<data_dir>/downloads/`) feeds the
//! image cache's pass (`ImageCache::import_stream`: decompression, digests,
//! sparse store) on a blocking thread as the bytes arrive. Nothing is
//! downloaded before the signature holds, and nothing enters the cache unless
//! the whole file arrived and its digest (of the file or of the image inside)
//! is the expected one.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes};
use flashrack_core::{ByteSize, DigestSource, Provenance, Sha256Digest, SignatureCheck};
use flashrack_download::{DownloadError, Downloader, Partial};
pub use flashrack_download::{Progress, RetryPolicy};
use flashrack_image::{
    BmapInput, CacheHit, ImageCache, ImageError, ImportObserver, ImportOptions, ImportOutcome,
    StreamSource,
};
use tokio::sync::mpsc;

use crate::AppError;

/// The largest checksum list fetched.
const MAX_SUMS_SIZE: u64 = 4 << 20;

/// The largest signature fetched.
const MAX_SIGNATURE_SIZE: u64 = 256 << 10;

/// The largest bmap file fetched (a map of a badly fragmented image of a few
/// hundred GB is a few MiB).
const MAX_BMAP_SIZE: u64 = 16 << 20;

/// Downloaded pieces in flight between the download and the import: a
/// few MiB (reqwest's pieces are up to a few tens of KiB).
const PIECES_IN_FLIGHT: usize = 64;

/// Where partial downloads live in a data directory.
pub fn downloads_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("downloads")
}

/// What the download's digest is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestCheck {
    /// Nothing: the image is what the server sent.
    None,
    /// A digest the operator gave (of the file or of the image inside).
    Sha256(Sha256Digest),
    /// The digest listed for the file's name in the checksum list at `url`.
    Sums {
        /// The checksum list's URL.
        url: String,
        /// Its detached OpenPGP signature and the keyring to check it with.
        signature: Option<SignatureSpec>,
    },
}

/// A signature to check and the keys to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureSpec {
    /// The signature's URL (`SHA256SUMS.gpg`).
    pub url: String,
    /// The operator's keyring.
    pub keyring: Keyring,
}

/// The public keys the operator trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keyring {
    /// A file on the station (armored or binary, as `gpg --export` writes).
    File(PathBuf),
    /// Armored keys given with the request (the API's).
    Armored(String),
}

impl Keyring {
    /// What to call it in messages.
    fn label(&self) -> PathBuf {
        match self {
            Keyring::File(path) => path.clone(),
            Keyring::Armored(_) => PathBuf::from("(given with the request)"),
        }
    }

    async fn bytes(&self) -> Result<Vec<u8>, AppError> {
        match self {
            Keyring::File(path) => {
                let path = path.clone();
                // A small file, read off the async workers.
                tokio::task::spawn_blocking(move || read_keyring(&path))
                    .await
                    .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
            }
            Keyring::Armored(text) => Ok(text.as_bytes().to_vec()),
        }
    }
}

/// The largest keyring file read (a distribution's archive keyring is a
/// few hundred KiB).
const MAX_KEYRING_SIZE: u64 = 16 << 20;

/// The keyring file at `path`, at most [`MAX_KEYRING_SIZE`] bytes: a larger
/// file, or a device that never ends (`--keyring /dev/zero`), is refused
/// rather than held in memory whole.
fn read_keyring(path: &Path) -> Result<Vec<u8>, AppError> {
    let error = |source| AppError::ReadKeyring {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(error)?
        .take(MAX_KEYRING_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(error)?;
    if bytes.len() as u64 > MAX_KEYRING_SIZE {
        return Err(error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB, more than any keyring",
                MAX_KEYRING_SIZE >> 20
            ),
        )));
    }
    Ok(bytes)
}

/// The keyring file at `path` (armored or binary, as `gpg --export` writes
/// it) as armored text, for a station's API, which takes keys as text
/// (`keyring` in `POST /images/import-url` and a run's `download`): read
/// here and refused here when it holds no OpenPGP public key, before the
/// station is asked anything. A small file, read blocking.
pub fn keyring_text(path: &Path) -> Result<String, AppError> {
    let bytes = read_keyring(path)?;
    flashrack_download::armored_keyring(path, &bytes)
        .map_err(|source| AppError::BadKeyring(Box::new(source)))
}

/// An import from a URL.
#[derive(Debug, Clone)]
pub struct UrlImport {
    /// The image's URL.
    pub url: String,
    /// What its digest is checked against.
    pub check: DigestCheck,
    /// The largest image accepted (the guard's largest target).
    pub max_size: ByteSize,
    /// Where the image's block map is, checked in the import's one pass.
    pub bmap: UrlBmap,
    /// The file to import from a zip archive holding more than one
    /// ([`ImportOptions::zip_entry`]).
    pub zip_entry: Option<String>,
}

impl UrlImport {
    /// An import of `url` up to `max_size`, unchecked, with a block map
    /// looked for beside it, and no zip entry named.
    pub fn new(url: impl Into<String>, max_size: ByteSize) -> Self {
        Self {
            url: url.into(),
            check: DigestCheck::None,
            max_size,
            bmap: UrlBmap::Beside,
            zip_entry: None,
        }
    }
}

/// Where an import from a URL finds the image's block map (bmaptool's XML).
/// Whatever its source, the map is fetched and parsed (its own checksum
/// checked) before the image is downloaded, then checked against the image's
/// raw bytes as they arrive, in the import's one pass: a map that does not
/// describe the image fails the import and nothing is kept; one that does is
/// kept with the image, so no later run reads the image to check it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UrlBmap {
    /// Beside the image on its server, if one is there, as bmaptool looks
    /// for it: `URL.bmap`, then the file name with one extension after
    /// another replaced by `.bmap` (`disk.img.xz` → `disk.img.bmap`,
    /// `disk.bmap`). None there (404, 410, the 403 that object stores
    /// answer for a missing file, or a page that is no bmap at all, as
    /// servers answer 200 for a missing file) is no error: the image gets a
    /// generated map afterwards, if it can have one. The lookup is
    /// optional: a server error or a timeout (tried once more, quickly) is
    /// a warning, and the image is imported without that map, its
    /// provenance saying why ([`flashrack_core::Provenance::bmap_lookup_failed`]).
    #[default]
    Beside,
    /// A bmap file on the station.
    File(PathBuf),
    /// A bmap at its own URL (it must be there).
    Url(String),
    /// No map is looked for (`--no-bmap`, the API's `no_bmap`).
    NotWanted,
}

/// The URLs bmaptool's convention puts a bmap at, beside the image at `url`:
/// `URL.bmap`, then the last path segment with one extension after another
/// replaced by `.bmap`. The query and fragment are not carried over.
pub fn bmap_urls_beside(url: &str) -> Vec<String> {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    parsed.set_query(None);
    parsed.set_fragment(None);
    let path = parsed.path().to_string();
    let Some((dir, last)) = path.rsplit_once('/') else {
        return Vec::new();
    };
    if last.is_empty() {
        return Vec::new();
    }
    let mut names = vec![format!("{last}.bmap")];
    let mut stem = last;
    while let Some((before, _)) = stem.rsplit_once('.').filter(|(b, _)| !b.is_empty()) {
        stem = before;
        names.push(format!("{stem}.bmap"));
    }
    names
        .into_iter()
        .map(|name| {
            let mut beside = parsed.clone();
            beside.set_path(&format!("{dir}/{name}"));
            beside.to_string()
        })
        .collect()
}

/// What the lookup of an image's block map found.
#[derive(Debug, Default)]
pub(crate) struct BmapLookup {
    /// The map, fetched and parsed; `None` when none is wanted or none
    /// could be had beside the image.
    pub input: Option<BmapInput>,
    /// Why the lookup beside the image failed (the URL and the error), when
    /// it did: it is optional, so the import goes on without that map.
    pub failed: Option<String>,
}

/// How the optional lookup of a block map beside an image is retried: once
/// more at most, soon, and given up sooner than a download (`policy`'s
/// figures where they are smaller): a server answering 5xx for it costs
/// a second or two, not a download's ~31 s of back-off.
fn lookup_policy(policy: &RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        tries: policy.tries.min(2),
        first_backoff: policy.first_backoff.min(Duration::from_secs(1)),
        max_backoff: policy.max_backoff.min(Duration::from_secs(1)),
        stall_timeout: policy.stall_timeout.min(Duration::from_secs(15)),
        connect_timeout: policy.connect_timeout.min(Duration::from_secs(10)),
    }
}

/// Fetches and parses the block map `request` names (see [`UrlBmap`]):
/// none when none is wanted or none is beside the image. A map the
/// operator named must be there; the lookup beside the image is optional:
/// one that meets a server error or a timeout (tried once more, quickly)
/// is a warning naming the URL and the error, and the lookup says why it
/// failed ([`BmapLookup::failed`], kept in the image's provenance).
async fn bmap_for(downloader: &Downloader, request: &UrlImport) -> Result<BmapLookup, AppError> {
    let refused = |path: PathBuf, source: ImageError| AppError::Bmap {
        path,
        source: Box::new(source),
    };
    let fetched = |url: &str, bytes: Vec<u8>| -> Result<BmapInput, AppError> {
        let name = file_name_of(url).unwrap_or_else(|| url.to_string());
        let text = String::from_utf8(bytes).map_err(|_| {
            refused(
                url.into(),
                ImageError::ReadInput {
                    path: url.into(),
                    source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"),
                },
            )
        })?;
        BmapInput::parse(&name, &text).map_err(|e| refused(url.into(), e))
    };
    let found = |input: BmapInput| BmapLookup {
        input: Some(input),
        failed: None,
    };
    match &request.bmap {
        UrlBmap::NotWanted => Ok(BmapLookup::default()),
        UrlBmap::File(path) => {
            // A small file, read off the async workers.
            let read = path.clone();
            tokio::task::spawn_blocking(move || BmapInput::read(&read))
                .await
                .unwrap_or_else(|join| {
                    Err(ImageError::ReadInput {
                        path: path.clone(),
                        source: io::Error::other(join.to_string()),
                    })
                })
                .map(|(input, _text)| found(input))
                .map_err(|e| refused(path.clone(), e))
        }
        UrlBmap::Url(url) => {
            let small = downloader
                .fetch_small(url, "block map", MAX_BMAP_SIZE)
                .await
                .map_err(|e| download_error(url, e))?;
            fetched(url, small.bytes).map(found)
        }
        UrlBmap::Beside => {
            let lookup = Downloader::new(lookup_policy(downloader.policy()))
                .map_err(|e| download_error(&request.url, e))?;
            for url in bmap_urls_beside(&request.url) {
                match lookup.fetch_small(&url, "block map", MAX_BMAP_SIZE).await {
                    // What is not a bmap at all (no `<bmap` element: the
                    // page a server answers for a missing file, a "soft
                    // 404") is no map beside the image; a bmap that is
                    // malformed or lies is refused.
                    Ok(small) if !is_bmap_text(&small.bytes) => {
                        tracing::warn!(url, "not a bmap file beside the image: ignored");
                    }
                    Ok(small) => return fetched(&url, small.bytes).map(found),
                    // The same page sent as `text/html`, refused as a web
                    // page by the downloader: no map there either (the
                    // operator named no map; only a map they name is
                    // refused for being a page).
                    Err(DownloadError::WebPage { .. }) => {
                        tracing::warn!(
                            url,
                            "a web page, not a bmap file, beside the image: ignored"
                        );
                    }
                    Err(DownloadError::NotFound { .. })
                    | Err(DownloadError::Status { status: 403, .. }) => {}
                    // A server error or a timeout: the server cannot say
                    // now whether a map is there, and the image need not
                    // wait for one (nor is the next name likelier to
                    // answer).
                    Err(error) if error.is_transient() => {
                        tracing::warn!(
                            url,
                            %error,
                            "the lookup of a block map beside the image failed: importing the \
                             image without it (give --bmap to name one, or --no-bmap to look \
                             for none)"
                        );
                        return Ok(BmapLookup {
                            input: None,
                            failed: Some(format!("{url}: {error}")),
                        });
                    }
                    Err(error) => return Err(download_error(&url, error)),
                }
            }
            Ok(BmapLookup::default())
        }
    }
}

/// Whether `bytes` could be a bmap file: text with a `<bmap` element.
fn is_bmap_text(bytes: &[u8]) -> bool {
    bytes.windows(5).any(|w| w == b"<bmap")
}

/// What an import from a URL is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlProgress {
    /// Fetching and checking the checksum list and its signature.
    Checking,
    /// Downloading (and importing as the bytes arrive).
    Downloading(Progress),
}

/// The name of the file a URL names (the web side's: a followed run's
/// claim is shown under it before the download begins).
pub use flashrack_web::file_name_of;

fn download_error(url: &str, source: DownloadError) -> AppError {
    AppError::Download {
        url: url.to_string(),
        source: Box::new(source),
    }
}

/// The digest to expect and where it came from: the checksum list (and its
/// signature, checked before anything else is downloaded) fetched if asked.
/// Their failures are the import of `url`'s (each names its own URL).
pub async fn digest_source(
    downloader: &Downloader,
    url: &str,
    check: &DigestCheck,
) -> Result<DigestSource, AppError> {
    match check {
        DigestCheck::None => Ok(DigestSource::Unchecked),
        DigestCheck::Sha256(sha256) => Ok(DigestSource::Operator { sha256: *sha256 }),
        DigestCheck::Sums {
            url: sums_url,
            signature,
        } => {
            let sums = downloader
                .fetch_small(sums_url, "checksum list", MAX_SUMS_SIZE)
                .await
                .map_err(|e| download_error(url, e))?;
            let checked = match signature {
                Some(spec) => {
                    let keyring = spec.keyring.bytes().await?;
                    let signature = downloader
                        .fetch_small(&spec.url, "signature", MAX_SIGNATURE_SIZE)
                        .await
                        .map_err(|e| download_error(url, e))?;
                    let signer = flashrack_download::verify_detached(
                        &spec.keyring.label(),
                        &keyring,
                        &spec.url,
                        &signature.bytes,
                        sums_url,
                        &sums.bytes,
                    )
                    .map_err(|e| download_error(url, e))?;
                    Some(SignatureCheck {
                        url: spec.url.clone(),
                        signer_fingerprint: signer.signer_fingerprint,
                        signing_key_fingerprint: signer.signing_key_fingerprint,
                    })
                }
                None => None,
            };
            let file_name = file_name_of(url).ok_or_else(|| {
                download_error(
                    url,
                    DownloadError::BadUrl {
                        url: url.to_string(),
                        reason: "it names no file to look up in the checksum list".into(),
                    },
                )
            })?;
            let text = String::from_utf8_lossy(&sums.bytes);
            let sha256 = flashrack_download::lookup(&text, &file_name, sums_url)
                .map_err(|e| download_error(url, e))?;
            Ok(DigestSource::Sums {
                url: sums_url.clone(),
                file_name,
                sha256,
                signature: checked,
            })
        }
    }
}

/// Imports the image at `request.url` into `cache`: see the
/// [module](self). `progress` is told what happens.
pub async fn import_url(
    cache: &ImageCache,
    data_dir: &Path,
    request: &UrlImport,
    policy: RetryPolicy,
    progress: impl FnMut(UrlProgress) + Send,
) -> Result<ImportOutcome, AppError> {
    import_url_following(
        cache,
        data_dir,
        request,
        policy,
        progress,
        Following::default(),
    )
    .await
}

/// What a flash that writes while it downloads adds to an import from a
/// URL ([`crate::flash::flash_url`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Following {
    /// Told of the import's pass chunk by chunk (the flash's feed), with the
    /// image's size when it is known as the pass begins: a raw file's
    /// length as the server declared it (checked as it arrives), or
    /// `raw_size`.
    pub observer: Option<Arc<dyn ImportObserver>>,
    /// The raw size a compressed file declares, if known beforehand.
    pub raw_size: Option<u64>,
    /// Set when the flash is abandoned: the import and the download stop
    /// (the partial download is kept, resumable).
    pub cancel: Option<Arc<AtomicBool>>,
    /// The request's block map, fetched and parsed already (by a sparse run
    /// that follows the import, which writes by it): the import checks the
    /// image against this one instead of fetching it again.
    pub bmap: Option<BmapInput>,
}

/// The block map `request` names or finds beside its image (see
/// [`UrlBmap`]), fetched and parsed before anything of the image is
/// downloaded: none when none is wanted or none could be had beside the
/// image (with why, if the lookup failed).
pub(crate) async fn block_map_of(request: &UrlImport) -> Result<BmapLookup, AppError> {
    let downloader =
        Downloader::new(RetryPolicy::default()).map_err(|e| download_error(&request.url, e))?;
    bmap_for(&downloader, request).await
}

/// [`import_url`], told to `following`'s observer as it goes. A followed
/// import cannot start again (its chunks were told): a file that changed on
/// the server fails it rather than being downloaded again from the start.
pub(crate) async fn import_url_following(
    cache: &ImageCache,
    data_dir: &Path,
    request: &UrlImport,
    policy: RetryPolicy,
    mut progress: impl FnMut(UrlProgress) + Send,
    following: Following,
) -> Result<ImportOutcome, AppError> {
    let url = request.url.as_str();
    let downloader = Downloader::new(policy).map_err(|e| download_error(url, e))?;
    progress(UrlProgress::Checking);
    let source = digest_source(&downloader, url, &request.check).await?;
    // The image the expected digest names is cached already (the same
    // release asked for again): nothing is downloaded. Not for an import a
    // flash follows (it writes the bytes as they arrive), a zip's file (the
    // digest may be the archive's), or a block map given to check against
    // the image (its check rides on the download's pass).
    let may_skip = following.observer.is_none()
        && request.zip_entry.is_none()
        && following.bmap.is_none()
        && !matches!(request.bmap, UrlBmap::Url(_) | UrlBmap::File(_));
    if let (Some(expected), true) = (source.sha256(), may_skip) {
        // A lookup that fails (an entry it cannot read) only means the
        // image is downloaded, as without it.
        let cache_lookup = cache.clone();
        let cached = tokio::task::spawn_blocking(move || cache_lookup.by_digest(&expected)).await;
        if let Ok(Ok(Some(image))) = cached {
            tracing::info!(url, image = %image.sha256().short(), "the image this digest names is cached already: not downloaded");
            // What this import proved of it (its digest from the operator or
            // a signed list) is kept with it, unless it had proved more:
            // the list shows where it came from and who signed it.
            let provenance = Provenance {
                url: url.to_string(),
                etag: None,
                last_modified: None,
                digest_source: source.clone(),
                captured: None,
                built: None,
                bmap_lookup_failed: None,
            };
            let found = cache.clone();
            let image =
                tokio::task::spawn_blocking(move || found.found_with_provenance(image, provenance))
                    .await
                    .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
            return Ok(ImportOutcome {
                image,
                hit: Some(CacheHit::SameImage),
                map: None,
            });
        }
    }
    // The map is fetched and parsed before the image: a malformed one, or
    // one whose own checksum fails, downloads nothing.
    let BmapLookup {
        input: bmap,
        failed: bmap_lookup_failed,
    } = match following.bmap.clone() {
        Some(given) => BmapLookup {
            input: Some(given),
            failed: None,
        },
        None => bmap_for(&downloader, request).await?,
    };
    let partial = Partial::in_dir(&downloads_dir(data_dir), url);
    let followed = following.observer.is_some();
    let options = ImportOptions {
        expected_sha256: source.sha256(),
        max_image_size: request.max_size.bytes(),
        bmap,
        observer: following.observer.clone(),
        cancel: following.cancel.clone(),
        zip_entry: request.zip_entry.clone(),
        ..ImportOptions::default()
    };
    let name = file_name_of(url).unwrap_or_else(|| url.to_string());
    // A file that changed on the server since a partial download began is
    // downloaded again from the start, once (unless the import is followed).
    let mut restarted = followed;
    loop {
        let (tx, rx) = mpsc::channel::<Bytes>(PIECES_IN_FLIGHT);
        let done = Arc::new(OnceLock::new());
        // The length the server declares, as the download last said it:
        // told before the first byte of an answer (or of the bytes held).
        let declared = Arc::new(std::sync::Mutex::new(None));
        let declared_length = Arc::new(OnceLock::new());
        let import = tokio::task::spawn_blocking({
            let cache = cache.clone();
            let source = StreamSource {
                provenance: done.clone(),
                declared_length: declared_length.clone(),
                declared_raw_size: following.raw_size,
                // A zip's central directory (and an entry that cannot be
                // streamed) is read from the partial file once it is whole.
                spooled: Some(partial.data_path().to_path_buf()),
                ..StreamSource::new(url, name.clone())
            };
            let options = options.clone();
            let done = done.clone();
            let declared = declared.clone();
            move || {
                let mut reader = DownloadReader {
                    rx,
                    piece: Bytes::new(),
                    done,
                    declared,
                    declared_length,
                };
                cache.import_stream(&mut reader, source, options)
            }
        });
        let mut told = |p: Progress| {
            *declared.lock().unwrap_or_else(PoisonError::into_inner) = p.total;
            progress(UrlProgress::Downloading(p))
        };
        let download = downloader.download(url, &partial, &tx, &mut told);
        let downloaded = match &following.cancel {
            None => download.await,
            Some(cancel) => {
                tokio::select! {
                    downloaded = download => downloaded,
                    () = cancelled(cancel) => Err(DownloadError::SinkClosed),
                }
            }
        };
        if let Ok(finished) = &downloaded {
            // The end of the stream: the import may keep what it has.
            let _ = done.set(Provenance {
                url: url.to_string(),
                etag: finished.etag.clone(),
                last_modified: finished.last_modified.clone(),
                digest_source: source.clone(),
                captured: None,
                built: None,
                bmap_lookup_failed: bmap_lookup_failed.clone(),
            });
        }
        drop(tx);
        let imported = import.await.map_err(|e| AppError::Import {
            name: url.to_string(),
            source: Box::new(ImageError::ReadInput {
                path: url.into(),
                source: io::Error::other(e.to_string()),
            }),
        })?;
        match (downloaded, imported) {
            (Ok(_), Ok(outcome)) => {
                discard(&partial).await;
                return Ok(outcome);
            }
            (Err(DownloadError::Changed { .. }), _) if !restarted => {
                tracing::warn!(
                    url,
                    "the file changed on the server: downloading it again from the start"
                );
                discard(&partial).await;
                restarted = true;
            }
            // A resume answered from another byte than asked: the server's
            // ranges cannot be trusted, so the bytes held are not resumed;
            // the whole file is asked for again, without a range.
            (Err(DownloadError::BadRange { .. }), _) if !restarted => {
                tracing::warn!(
                    url,
                    "the server answered the resume with the wrong range: downloading it again from the start"
                );
                discard(&partial).await;
                restarted = true;
            }
            // The import's error says why it stopped reading.
            (Err(DownloadError::SinkClosed), Err(error)) | (Ok(_), Err(error)) => {
                if wrong_bytes(&error) {
                    // The bytes held are not the image's: resuming would keep them.
                    discard(&partial).await;
                }
                // A map that lies about the image: the image's bytes are
                // not at fault (the partial download is kept), the map is.
                if let ImageError::BmapRefused { file, .. } = &error {
                    return Err(AppError::Bmap {
                        path: PathBuf::from(file),
                        source: Box::new(error),
                    });
                }
                return Err(AppError::Import {
                    name: url.to_string(),
                    source: Box::new(error),
                });
            }
            (Err(error), _) => {
                // Nothing to resume from: a changed file, a length that lies,
                // ranges that cannot be trusted (a later import would resume
                // and fail the same way).
                if matches!(
                    error,
                    DownloadError::Changed { .. }
                        | DownloadError::WrongLength { .. }
                        | DownloadError::BadRange { .. }
                ) {
                    discard(&partial).await;
                }
                // Followed, the chunks told were the old file's: it cannot
                // start again under the targets (see `Following`).
                if let (DownloadError::Changed { reason, .. }, true) = (&error, followed) {
                    return Err(AppError::SourceChanged {
                        url: url.to_string(),
                        reason: reason.clone(),
                    });
                }
                return Err(download_error(url, error));
            }
        }
    }
}

/// Returns once `cancel` is set (looked at every 100 ms: a stopped flash
/// need not wait for the server's next byte).
async fn cancelled(cancel: &AtomicBool) {
    while !cancel.load(Ordering::Relaxed) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Errors that say the bytes downloaded are not the image's.
fn wrong_bytes(error: &ImageError) -> bool {
    matches!(
        error,
        ImageError::ChecksumMismatch { .. }
            | ImageError::Corrupt { .. }
            | ImageError::Unsupported { .. }
            | ImageError::EmptyImage { .. }
            | ImageError::EmptyInput { .. }
            | ImageError::TooLarge { .. }
    )
}

async fn discard(partial: &Partial) {
    if let Err(error) = partial.discard().await {
        tracing::warn!(%error, "cannot remove a partial download");
    }
}

/// The download as a reader for the import's blocking pass. The stream
/// ends (`Ok(0)`) only when the download finished (`done` set before the
/// channel closed); a channel closed without it is an error, so a download
/// that failed can never leave a truncated image in the cache.
struct DownloadReader {
    rx: mpsc::Receiver<Bytes>,
    piece: Bytes,
    done: Arc<OnceLock<Provenance>>,
    /// The length the download last declared (updated by its progress).
    declared: Arc<std::sync::Mutex<Option<u64>>>,
    /// The stream's declared length for the import: set from `declared`
    /// when the first piece arrives (the download tells the length before
    /// it sends an answer's first byte).
    declared_length: Arc<OnceLock<u64>>,
}

impl Read for DownloadReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.piece.is_empty() {
            match self.rx.blocking_recv() {
                Some(piece) => {
                    if self.declared_length.get().is_none() {
                        let declared =
                            *self.declared.lock().unwrap_or_else(PoisonError::into_inner);
                        if let Some(length) = declared {
                            let _ = self.declared_length.set(length);
                        }
                    }
                    self.piece = piece
                }
                None if self.done.get().is_some() => return Ok(0),
                None => return Err(io::Error::other("the download stopped before the end")),
            }
        }
        let n = buf.len().min(self.piece.len());
        buf[..n].copy_from_slice(&self.piece[..n]);
        self.piece.advance(n);
        Ok(n)
    }
}

fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// The import an API request asks for (`POST /images/import-url`, and a
/// run's `download`), images up to `max_size`; a request that cannot be
/// followed gets the reason.
pub fn url_import_of(
    body: flashrack_web::UrlImportRequest,
    max_size: ByteSize,
) -> Result<UrlImport, String> {
    if !is_http(&body.url) {
        return Err("url must be an http or https URL".into());
    }
    let check = match (body.sha256, body.sha256sums) {
        (Some(_), Some(_)) => return Err("give sha256 or sha256sums, not both".into()),
        // A signature given beside a digest would be checked by nobody.
        (Some(_), None) if body.signature.is_some() || body.keyring.is_some() => {
            return Err(
                "a signature is checked on a sha256sums list, not with sha256: give sha256sums with signature and keyring, or sha256 alone"
                    .into(),
            )
        }
        (Some(hex), None) => {
            DigestCheck::Sha256(Sha256Digest::parse(&hex).map_err(|e| format!("sha256: {e}"))?)
        }
        (None, Some(sums)) if !is_http(&sums) => {
            return Err("sha256sums must be an http or https URL".into())
        }
        (None, Some(_)) if body.signature.as_deref().is_some_and(|s| !is_http(s)) => {
            return Err("signature must be an http or https URL".into())
        }
        (None, Some(sums)) => DigestCheck::Sums {
            url: sums,
            signature: match (body.signature, body.keyring) {
                (Some(url), Some(keys)) => Some(SignatureSpec {
                    url,
                    keyring: Keyring::Armored(keys),
                }),
                (None, None) => None,
                _ => return Err("a signature needs a keyring, and a keyring a signature".into()),
            },
        },
        (None, None) if body.signature.is_some() || body.keyring.is_some() => {
            return Err("a signature is checked on a sha256sums list: give sha256sums".into())
        }
        (None, None) => DigestCheck::None,
    };
    let bmap = match (body.bmap, body.no_bmap) {
        (Some(_), true) => return Err("give bmap or no_bmap, not both".into()),
        (None, true) => UrlBmap::NotWanted,
        (None, false) => UrlBmap::Beside,
        (Some(url), false) if url.starts_with("http://") || url.starts_with("https://") => {
            UrlBmap::Url(url)
        }
        (Some(_), false) => return Err("bmap must be an http or https URL".into()),
    };
    if body.zip_entry.as_deref().is_some_and(|e| e.is_empty()) {
        return Err("zip_entry must name a file in the archive".into());
    }
    Ok(UrlImport {
        url: body.url,
        check,
        max_size,
        bmap,
        zip_entry: body.zip_entry,
    })
}

/// The station's URL imports for the web side (`flashrack_web::UrlImports`):
/// each runs as a task on the station's runtime, its progress kept in memory
/// for `GET /api/v1/images/downloads` and, for a station with records
/// ([`UrlImportService::persisted`]), in the records (table `url_imports`):
/// the request, the state, the bytes held (every few seconds), the error and
/// the image. At start-up an import left running is shown `interrupted`,
/// with the bytes its partial download holds, and resuming it
/// (`POST /api/v1/images/downloads/{id}/resume`) continues from there.
pub struct UrlImportService {
    cache: ImageCache,
    data_dir: PathBuf,
    max_size: ByteSize,
    runtime: tokio::runtime::Handle,
    /// Every import started, oldest first. A `std` mutex: held only to copy
    /// or update a view, never across an await.
    views: Arc<std::sync::Mutex<Vec<ImportView>>>,
    /// Where the list is kept across restarts; `None`: in memory only.
    store: Option<flashrack_store::Store>,
}

/// How often a running import's bytes are written to the records.
const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// One import as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
struct ImportView {
    id: u64,
    url: String,
    state: &'static str,
    held: u64,
    total: Option<u64>,
    resumed_from: u64,
    rate_bytes_per_sec: Option<u64>,
    eta_secs: Option<u64>,
    error: Option<String>,
    /// While a download waits to try again after a failed try (a cut, a
    /// stall, a server error), why and which try comes next: shown until
    /// bytes arrive again. `error` is only the import's final failure.
    retrying: Option<RetryView>,
    image: Option<Sha256Digest>,
    provenance: Option<Provenance>,
    /// What is checked before the image is downloaded: `signed_list` (a
    /// checksum list and its signature), `list`, or `none` (an expected
    /// digest given, or nothing to check first).
    checks_first: &'static str,
    /// The run it is (or was) the download of: a run armed with its URL
    /// (`POST /api/v1/runs` with `download`), once armed.
    run_id: Option<flashrack_core::RunId>,
    #[serde(skip)]
    started: Option<std::time::Instant>,
    /// The request as given (a resume repeats it).
    #[serde(skip)]
    request: flashrack_web::UrlImportRequest,
}

impl ImportView {
    fn new(id: u64, request: flashrack_web::UrlImportRequest) -> Self {
        let checks_first = match (&request.sha256sums, &request.signature) {
            (Some(_), Some(_)) => "signed_list",
            (Some(_), None) => "list",
            (None, _) => "none",
        };
        Self {
            id,
            checks_first,
            url: request.url.clone(),
            state: "checking",
            held: 0,
            total: None,
            resumed_from: 0,
            rate_bytes_per_sec: None,
            eta_secs: None,
            error: None,
            retrying: None,
            image: None,
            provenance: None,
            run_id: None,
            started: None,
            request,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, "checking" | "downloading")
    }
}

impl UrlImportService {
    /// Imports into `cache`, partial downloads under `data_dir`, images up
    /// to `max_size`; tasks run on the current tokio runtime. The list is
    /// kept in memory only.
    pub fn new(cache: ImageCache, data_dir: PathBuf, max_size: ByteSize) -> Self {
        Self {
            cache,
            data_dir,
            max_size,
            runtime: tokio::runtime::Handle::current(),
            views: Arc::default(),
            store: None,
        }
    }

    /// As [`new`](Self::new), with the list kept in `store`: the imports
    /// kept there are listed, those left running by a stop or a crash as
    /// `interrupted`, with the bytes their partial download holds.
    pub async fn persisted(
        cache: ImageCache,
        data_dir: PathBuf,
        max_size: ByteSize,
        store: flashrack_store::Store,
    ) -> Result<Self, AppError> {
        let interrupted = store.interrupt_url_imports().await?;
        if interrupted > 0 {
            tracing::info!(
                interrupted,
                "imports from URLs left running are interrupted: resumable"
            );
        }
        let mut views = Vec::new();
        for row in store.url_imports().await? {
            let request = match serde_json::from_str(&row.request) {
                Ok(request) => request,
                Err(error) => {
                    tracing::warn!(id = row.id, %error, "an import from a URL whose request cannot be read: not listed");
                    continue;
                }
            };
            let mut view = ImportView::new(u64::try_from(row.id).unwrap_or(0), request);
            view.state = row.state.as_str();
            view.total = row.total;
            view.error = row.error;
            view.image = row
                .image_sha256
                .as_deref()
                .and_then(|hex| Sha256Digest::parse(hex).ok());
            view.held = row.held;
            view.run_id = row.run_id.map(flashrack_core::RunId);
            if !matches!(row.state, flashrack_store::UrlImportState::Done) {
                // The partial download says what is held, not the last write.
                let partial = Partial::in_dir(&downloads_dir(&data_dir), &view.url);
                view.held = std::fs::metadata(partial.data_path()).map_or(0, |m| m.len());
            }
            if let Some(sha) = view.image {
                view.provenance = cache
                    .get(&sha)
                    .ok()
                    .flatten()
                    .and_then(|i| i.meta.provenance);
            }
            views.push(view);
        }
        Ok(Self {
            views: Arc::new(std::sync::Mutex::new(views)),
            store: Some(store),
            ..Self::new(cache, data_dir, max_size)
        })
    }

    fn request_of(&self, body: flashrack_web::UrlImportRequest) -> Result<UrlImport, String> {
        url_import_of(body, self.max_size)
    }

    /// Adds a view of a new import of `body` to the list (`checking`), unless
    /// its URL is being imported already (two downloads must never share a
    /// partial file): the request to launch and the view.
    fn register(
        &self,
        body: &flashrack_web::UrlImportRequest,
    ) -> Result<(UrlImport, ImportView), StartRefusal> {
        let request = self.request_of(body.clone()).map_err(StartRefusal::Bad)?;
        let mut views = self.views.lock().expect("no panic while held");
        if views.iter().any(|v| v.url == request.url && v.running()) {
            return Err(StartRefusal::Running(format!(
                "{} is being imported already",
                request.url
            )));
        }
        let id = views.iter().map(|v| v.id).max().unwrap_or(0) + 1;
        let view = ImportView::new(id, body.clone());
        views.push(view.clone());
        Ok((request, view))
    }

    /// Starts the import of `body` for a run that follows it
    /// ([`crate::follow::FollowService`]): listed, recorded and resumable
    /// after a crash as any import of the list, its chunks told to
    /// `followed`'s observer as they are imported. Its outcome is the
    /// returned task's: the run's end waits for it, and maps the image
    /// itself once the sticks are let go (an import of the list maps it
    /// before it is shown done).
    /// Its id in the list comes with the request and the task.
    pub(crate) fn start_followed(
        &self,
        body: flashrack_web::UrlImportRequest,
        followed: FollowedImport,
    ) -> Result<(u64, UrlImport, ImportTask), StartRefusal> {
        let (request, view) = self.register(&body)?;
        let task = self.launch(view.id, request.clone(), body, Some(followed));
        Ok((view.id, request, task))
    }

    /// Import `id` of the list is the download of run `run` (armed over its
    /// URL): listed with it (`run_id`), and recorded with it.
    pub(crate) async fn followed_by(&self, id: u64, run: flashrack_core::RunId) {
        {
            let mut views = self.views.lock().expect("no panic while held");
            if let Some(view) = views.iter_mut().find(|v| v.id == id) {
                view.run_id = Some(run);
            }
        }
        if let Some(store) = &self.store {
            let row = i64::try_from(id).unwrap_or(i64::MAX);
            if let Err(error) = store.url_import_for_run(row, run.0).await {
                tracing::warn!(%error, id, %run, "cannot record the run a download is for");
            }
        }
    }

    /// Runs import `id` (its view is in the list, `checking`) in the
    /// background: recorded as started first, its bytes every
    /// [`PERSIST_EVERY`], its end last. The task's result is the import's.
    fn launch(
        &self,
        id: u64,
        request: UrlImport,
        body: flashrack_web::UrlImportRequest,
        followed: Option<FollowedImport>,
    ) -> ImportTask {
        let views = self.views.clone();
        let (cache, data_dir, store) = (
            self.cache.clone(),
            self.data_dir.clone(),
            self.store.clone(),
        );
        let (following, mut told) = match followed {
            Some(f) => (f.following, Some(f.told)),
            None => (Following::default(), None),
        };
        self.runtime.spawn(async move {
            let update = |f: &mut dyn FnMut(&mut ImportView)| {
                let mut views = views.lock().expect("no panic while held");
                if let Some(view) = views.iter_mut().find(|v| v.id == id) {
                    f(view);
                }
            };
            let row = i64::try_from(id).unwrap_or(i64::MAX);
            // Recorded before a byte is downloaded; progress through one
            // writer, in order, at most every few seconds.
            if let Some(store) = &store {
                let json = serde_json::to_string(&body).unwrap_or_default();
                if let Err(error) = store.url_import_started(row, &request.url, &json).await {
                    tracing::warn!(%error, url = %request.url, "cannot record an import from a URL");
                }
            }
            let (persist_tx, mut persist_rx) = mpsc::unbounded_channel::<Progress>();
            let writer = store.clone().map(|store| {
                let url = request.url.clone();
                tokio::spawn(async move {
                    while let Some(p) = persist_rx.recv().await {
                        let state = flashrack_store::UrlImportState::Downloading;
                        if let Err(error) = store.url_import_progress(row, state, p.held, p.total).await {
                            tracing::warn!(%error, url, "cannot record an import's progress");
                        }
                    }
                })
            });
            // When the bytes were last written, and the total written then:
            // a total the download learns (the answer's declared length,
            // told before its first byte) is written at once, so that an
            // import cut by a crash is listed with it.
            let mut persisted: Option<(std::time::Instant, Option<u64>)> = None;
            let followed = following.observer.is_some();
            let cancel = following.cancel.clone();
            let result = import_url_following(&cache, &data_dir, &request, RetryPolicy::default(), |p| {
                if let UrlProgress::Downloading(progress) = &p {
                    let due = persisted.is_none_or(|(at, total)| {
                        at.elapsed() >= PERSIST_EVERY || total != progress.total
                    });
                    if due {
                        persisted = Some((std::time::Instant::now(), progress.total));
                        let _ = persist_tx.send(progress.clone());
                    }
                }
                if let Some(told) = told.as_mut() {
                    told(&p);
                }
                update(&mut |view| view.follow(&p))
            }, following)
            .await;
            if let (Ok(outcome), false) = (&result, followed) {
                // As `image import` does: a block map from the image's file
                // systems, where flashrack reads them (one it cannot map is
                // still imported, and written whole).
                let (cache, image) = (cache.clone(), outcome.image.clone());
                let mapped = tokio::task::spawn_blocking(move || {
                    crate::images::map_image(&cache, &image, None, None)
                })
                .await;
                match mapped {
                    Ok(Ok(note)) => tracing::info!(url = %request.url, "{}", note.summary()),
                    Ok(Err(error)) => tracing::warn!(url = %request.url, %error, "no block map"),
                    Err(error) => tracing::warn!(url = %request.url, %error, "no block map"),
                }
            }
            // Why it failed, as the list says it: a followed import its run
            // let go of says so (its partial download is kept).
            let abandoned = cancel.is_some_and(|c| c.load(Ordering::Relaxed));
            let failure = result.as_ref().err().map(|error| {
                if abandoned {
                    format!(
                        "abandoned: the run that followed it stopped before the download ended \
                         (its partial download is kept: resume it) ({})",
                        error_chain(error)
                    )
                } else {
                    error_chain(error)
                }
            });
            drop(persist_tx);
            if let (Some(writer), Some(store)) = (writer, &store) {
                let _ = writer.await;
                let (state, image) = match &result {
                    Ok(outcome) => (
                        flashrack_store::UrlImportState::Done,
                        Some(outcome.image.sha256().to_hex()),
                    ),
                    Err(_) => (flashrack_store::UrlImportState::Failed, None),
                };
                let held = views
                    .lock()
                    .expect("no panic while held")
                    .iter()
                    .find(|v| v.id == id)
                    .map(|v| (v.held, v.total));
                if let Some((held, total)) = held {
                    let _ = store.url_import_progress(row, state, held, total).await;
                }
                if let Err(error) = store.url_import_ended(row, state, failure.clone(), image).await {
                    tracing::warn!(%error, url = %request.url, "cannot record how an import from a URL ended");
                }
            }
            update(&mut |view| match &result {
                Ok(outcome) => {
                    view.retrying = None;
                    view.state = "done";
                    view.image = Some(outcome.image.sha256());
                    view.provenance = outcome.image.meta.provenance.clone();
                    view.eta_secs = None;
                }
                Err(_) => {
                    view.state = "failed";
                    view.retrying = None;
                    view.error = failure.clone();
                }
            });
            result
        })
    }
}

/// The task of an import of the list; its result is the import's.
pub(crate) type ImportTask = tokio::task::JoinHandle<Result<ImportOutcome, AppError>>;

/// What a run that follows an import of the list adds to it.
pub(crate) struct FollowedImport {
    /// The run's feed (observer) and its cancel flag.
    pub following: Following,
    /// Told of the import's progress too (the run's view of its bytes).
    pub told: Box<dyn FnMut(&UrlProgress) + Send>,
}

/// Why an import was not started.
#[derive(Debug)]
pub(crate) enum StartRefusal {
    /// The request cannot be followed: the reason.
    Bad(String),
    /// Its URL is being imported already.
    Running(String),
}

impl flashrack_web::UrlImports for UrlImportService {
    fn start(
        &self,
        body: flashrack_web::UrlImportRequest,
    ) -> Result<serde_json::Value, flashrack_web::StartError> {
        let (request, view) = self.register(&body).map_err(|refusal| match refusal {
            StartRefusal::Bad(reason) => flashrack_web::StartError::Bad(reason),
            StartRefusal::Running(reason) => flashrack_web::StartError::Running(reason),
        })?;
        // Runs on by itself: its end is in the list and the records.
        drop(self.launch(view.id, request, body, None));
        serde_json::to_value(&view).map_err(|e| flashrack_web::StartError::Bad(e.to_string()))
    }

    fn list(&self) -> serde_json::Value {
        let views = self.views.lock().expect("no panic while held");
        serde_json::to_value(views.iter().rev().collect::<Vec<_>>()).unwrap_or_default()
    }

    fn resume(&self, id: u64) -> Result<serde_json::Value, flashrack_web::ResumeError> {
        use flashrack_web::ResumeError;
        let (view, request) = {
            let mut views = self.views.lock().expect("no panic while held");
            let Some(found) = views.iter().find(|v| v.id == id) else {
                return Err(ResumeError::NotFound(format!(
                    "no import {id} on this station"
                )));
            };
            match found.state {
                "interrupted" | "failed" => {}
                "done" => {
                    return Err(ResumeError::Conflict(format!(
                        "import {id} is done: its image is cached"
                    )))
                }
                _ => return Err(ResumeError::Conflict(format!("import {id} is running"))),
            }
            let url = found.url.clone();
            if views.iter().any(|v| v.url == url && v.running()) {
                return Err(ResumeError::Conflict(format!(
                    "{url} is being imported already"
                )));
            }
            let view = views.iter_mut().find(|v| v.id == id).expect("found above");
            let request = self
                .request_of(view.request.clone())
                .map_err(ResumeError::Conflict)?;
            view.state = "checking";
            view.error = None;
            view.started = None;
            view.rate_bytes_per_sec = None;
            view.eta_secs = None;
            (view.clone(), request)
        };
        drop(self.launch(id, request, view.request.clone(), None));
        serde_json::to_value(&view).map_err(|e| ResumeError::Conflict(e.to_string()))
    }
}

impl ImportView {
    /// Takes in the import's progress: bytes, and the rate and time left
    /// since the first byte of this run.
    fn follow(&mut self, progress: &UrlProgress) {
        let UrlProgress::Downloading(p) = progress else {
            self.state = "checking";
            return;
        };
        self.state = "downloading";
        match &p.retrying {
            Some(retry) => {
                self.retrying = Some(RetryView {
                    next_try: retry.next_try,
                    tries: retry.tries,
                    wait_secs: retry.wait.as_secs_f64(),
                    error: retry.error.clone(),
                    held: p.held,
                })
            }
            // Bytes arrive again: the retry worked.
            None if self.retrying.as_ref().is_some_and(|r| p.held > r.held) => {
                self.retrying = None;
            }
            None => {}
        }
        self.held = p.held;
        self.total = p.total;
        self.resumed_from = p.resumed_from;
        let started = *self.started.get_or_insert_with(std::time::Instant::now);
        let secs = started.elapsed().as_secs_f64();
        let moved = p.held.saturating_sub(p.resumed_from);
        if secs >= 0.5 && moved > 0 {
            let rate = moved as f64 / secs;
            self.rate_bytes_per_sec = Some(rate as u64);
            self.eta_secs = p
                .total
                .map(|total| (total.saturating_sub(p.held) as f64 / rate).ceil() as u64);
        }
    }
}

/// A download waiting to try again, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
struct RetryView {
    /// The try that comes next (2 for the first retry).
    next_try: u32,
    /// The tries made in all before the import fails.
    tries: u32,
    /// The wait before that try.
    wait_secs: f64,
    /// Why the last try failed.
    error: String,
    /// The bytes held when it failed: later bytes end the retry's view.
    #[serde(skip)]
    held: u64,
}

/// An error with its causes, as the operator reads it.
pub fn error_chain(error: &AppError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let words = cause.to_string();
        // A cause that begins with what the message ends with ("cannot
        // import URL" and "URL: the server answered 503") names it once.
        let last = text.rsplit(' ').next().unwrap_or_default();
        let words = match words.strip_prefix(last).and_then(|w| w.strip_prefix(": ")) {
            Some(rest) if !last.is_empty() => rest.to_string(),
            _ => words,
        };
        // A message whose words end with its cause's (an image error that
        // prints its I/O error) says it already: once is enough.
        if !text.ends_with(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_the_url_once() {
        let error = download_error(
            "http://h/os.img",
            DownloadError::Status {
                url: "http://h/os.img".into(),
                status: 503,
            },
        );
        let words = error_chain(&error);
        assert_eq!(words.matches("http://h/os.img").count(), 1, "{words}");
        assert!(
            words.starts_with("cannot import http://h/os.img: "),
            "{words}"
        );
        // A list's failure still names the list after the image.
        let error = download_error(
            "http://h/os.img",
            DownloadError::Status {
                url: "http://h/SHA256SUMS".into(),
                status: 404,
            },
        );
        let words = error_chain(&error);
        assert!(
            words.starts_with("cannot import http://h/os.img: http://h/SHA256SUMS"),
            "{words}"
        );
    }

    /// A signature is checked on a checksum list; given beside a digest
    /// (`sha256`), or a keyring alone, it would be checked by nobody, so the
    /// request is refused. Before, `{"url", "sha256", "signature",
    /// "keyring"}` was imported (and a run armed with it) with the signature
    /// never fetched, even a bad one.
    #[test]
    fn a_signature_or_keyring_without_a_checksum_list_is_refused() {
        let digest = "ab".repeat(32);
        let request =
            |sha256: bool, signature: bool, keyring: bool| flashrack_web::UrlImportRequest {
                url: "https://example.org/os.img".into(),
                sha256: sha256.then(|| digest.clone()),
                sha256sums: None,
                signature: signature.then(|| "https://example.org/SHA256SUMS.gpg".into()),
                keyring: keyring.then(|| "-----BEGIN PGP PUBLIC KEY BLOCK-----".into()),
                bmap: None,
                no_bmap: true,
                zip_entry: None,
            };
        for (sha256, signature, keyring, says) in [
            (true, true, true, "not with sha256"),
            (true, true, false, "not with sha256"),
            (true, false, true, "not with sha256"),
            (false, false, true, "give sha256sums"),
            (false, true, false, "give sha256sums"),
        ] {
            let error = url_import_of(request(sha256, signature, keyring), ByteSize(1 << 30))
                .map(|_| ())
                .unwrap_err();
            assert!(
                error.contains(says),
                "{sha256} {signature} {keyring}: {error}"
            );
        }
        assert!(url_import_of(request(true, false, false), ByteSize(1 << 30)).is_ok());
    }

    #[test]
    fn a_keyring_larger_than_any_or_without_an_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("huge.gpg");
        std::fs::write(&huge, vec![0x99u8; (16 << 20) + 1]).unwrap();
        for path in [huge.as_path(), Path::new("/dev/zero")] {
            let error = keyring_text(path).unwrap_err();
            assert!(
                matches!(error, AppError::ReadKeyring { .. })
                    && error_chain(&error).contains("larger than 16 MiB"),
                "{}: {}",
                path.display(),
                error_chain(&error)
            );
        }
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let error = AppError::Import {
            name: "http://example.invalid/os.img".into(),
            source: Box::new(ImageError::ReadInput {
                path: "http://example.invalid/os.img".into(),
                source: io::Error::other("the download stopped before the end"),
            }),
        };
        assert_eq!(
            error_chain(&error),
            "cannot import http://example.invalid/os.img: cannot read \
             http://example.invalid/os.img: the download stopped before the end"
        );
    }
}
