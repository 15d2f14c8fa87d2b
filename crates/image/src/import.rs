//! Importing a file into the cache: recognise it cheaply if it is known,
//! otherwise decompress it once while digesting it, check the expected digest,
//! and move the result into place.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use flashrack_core::{ImageManifest, Sha256Digest};
use flashrack_inspect::bmap::{BmapError, StreamCheck};
use zip::result::ZipError;
use zip::ZipArchive;

use crate::blockmap::{BmapInput, StoredMap};
use crate::cache::{CachedImage, EntryFile, ImageCache, ImportMeta, SourceReference};
use crate::descriptor_scan::{Rewindable, StoredUntilDescriptor};
use crate::detect::{ImageFormat, MAGIC_LEN};
use crate::error::{FileKind, ImageError};
use crate::fsutil::{write_json_atomic, TempFile};
use crate::index::{FileIdentity, SourceEntry};
use crate::input::{
    direct_reader, hash_all, read_full, stream_decoder, InputError, InputReader, ReadAhead,
    ReadOnce, INPUT_BUFFER,
};
use crate::observe::ImportObserver;
use crate::pass::{digest_and_store, ChunkHashing, PassError, RawDigests, Watch};

/// The largest chunk size accepted: the import holds three chunk buffers, and
/// the engine one per target, so chunks must stay a few MiB.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;

/// The largest raw image accepted by default: the target guard's default
/// maximum target size (256 GB). A larger image could never be written to a
/// target the guard accepts.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 256_000_000_000;

/// The free space an import leaves in the cache's file system by default, for
/// the records that live next to the cache.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 64 << 20;

/// How to import a file.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// A digest the user expects: of the file as given, or of the raw image
    /// inside it. If it matches neither, the import fails and nothing is kept.
    pub expected_sha256: Option<Sha256Digest>,
    /// Chunk size of the manifest: a positive multiple of 4096, at most
    /// [`MAX_CHUNK_SIZE`]. An image already in the cache keeps the chunk size it
    /// was imported with.
    pub chunk_size: u32,
    /// The largest raw image accepted, in bytes: the target guard's maximum
    /// target size. A compressed file is decompressed only up to this size (a
    /// small file that expands without end is stopped there), and an image
    /// already cached that is larger is refused too.
    pub max_image_size: u64,
    /// Bytes of the cache's file system the import leaves free. Checked before
    /// the import starts and before each chunk is stored (`statvfs`); an import
    /// that would go below it stops and removes what it wrote.
    pub min_free_space: u64,
    /// `Some`: only files whose real location (symbolic links and `..`
    /// resolved, and checked again on the opened file) is inside one of these
    /// directories may be imported. `None`: any file the caller can read.
    pub allowed_dirs: Option<Vec<PathBuf>>,
    /// Raised to abandon the import (the station shuts down); it stops before
    /// the next chunk and removes what it wrote.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Whether a raw image may stay where it is, referenced by the cache
    /// instead of copied into it, when the file system cannot clone it (a
    /// reflink, tried first for every raw import: a copy that costs nothing
    /// and shares nothing the owner can change). Only for a file that stays
    /// where it is (the operator's own file, not an upload's temporary file),
    /// and only once its last change is settled (see `FileIdentity`); the
    /// cache then checks the file's identity every time the image is looked
    /// up, and the engine checks every chunk's fingerprint before it verifies
    /// against it. Copying a GiB into the cache cost ~5 CPU s here (new
    /// page-cache pages are slow to touch on this VM), hashing it ~1.
    pub reference_raw: bool,
    /// Told of the pass chunk by chunk (see [`ImportObserver`]), so that the
    /// image can be used before the import ends: a one-shot flash writes
    /// targets while its image is imported. [`ImageCache::import`] (a file)
    /// and [`ImageCache::import_stream`] (a download) tell it.
    pub observer: Option<Arc<dyn ImportObserver>>,
    /// A bmap file that comes with the image (given by the operator, or found
    /// beside the file): checked in the import's one pass over the raw bytes
    /// (every range's checksum as its bytes go past, the size at the end).
    /// A map that does not describe the image fails the import
    /// ([`ImageError::BmapRefused`]) and nothing is kept; a map that does is
    /// kept with the image ([`ImportOutcome::map`]). [`ImageCache::import`]
    /// (a file) and [`ImageCache::import_stream`] (a download) both check
    /// it.
    pub bmap: Option<BmapInput>,
    /// The file to import from a zip archive that holds more than one (its
    /// name in the archive, as listed). `None`: the archive must hold
    /// exactly one file. A name the archive does not hold fails the import
    /// with the names it does ([`ImageError::ZipEntryMissing`]); ignored for
    /// anything but a zip archive.
    pub zip_entry: Option<String>,
}

/// Where the raw bytes of a new image end up.
enum Placement {
    /// Decompressed or copied into a temporary file of the cache.
    Copy(TempFile),
    /// A reflink of the raw file in a temporary file of the cache: read from
    /// there (it cannot change under the pass), nothing copied.
    Clone(TempFile),
    /// The raw file itself, referenced in place.
    Reference(FileIdentity),
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            expected_sha256: None,
            chunk_size: ImageManifest::DEFAULT_CHUNK_SIZE,
            max_image_size: DEFAULT_MAX_IMAGE_SIZE,
            min_free_space: DEFAULT_MIN_FREE_SPACE,
            allowed_dirs: None,
            cancel: None,
            reference_raw: false,
            observer: None,
            bmap: None,
            zip_entry: None,
        }
    }
}

impl ImportOptions {
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// Why an import found its image already in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheHit {
    /// The same file (path, device, inode, size, modification and change
    /// times) was imported before: it was not read at all.
    SameFile,
    /// A file with the same sha256 was imported before: this one was hashed,
    /// not decompressed.
    SameFileDigest,
    /// The file was new, but the raw image it holds was already cached (for
    /// example the same image compressed another way).
    SameImage,
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct ImportOutcome {
    /// The image, now in the cache.
    pub image: CachedImage,
    /// `None` if this import added the image; otherwise how it was recognised.
    pub hit: Option<CacheHit>,
    /// The bmap of [`ImportOptions::bmap`], checked in this import's pass and
    /// kept as the image's map. `None` without one, or when the image was
    /// recognised without a pass (a known file: [`ImageCache::attach_bmap`]
    /// checks the map against the cached image then).
    pub map: Option<StoredMap>,
}

impl ImportOutcome {
    /// Whether the image was in the cache before this import.
    pub fn already_cached(&self) -> bool {
        self.hit.is_some()
    }
}

/// What a full pass over the file yields.
struct Decoded {
    raw: RawDigests,
    file_sha256: Sha256Digest,
    input_size: u64,
    zip_entry: Option<String>,
}

impl ImageCache {
    /// Imports the image in the file at `path` (raw, or compressed with gzip, xz,
    /// zstd, bzip2, or a zip archive holding one file; detected by content).
    ///
    /// A file imported before is recognised by its identity without being read;
    /// a copy of one is recognised after hashing it, without decompressing it.
    /// Otherwise it is decompressed once into a temporary file, digested on the
    /// way, checked against `options.expected_sha256`, and moved into the cache.
    /// On any error nothing is left in the cache.
    pub fn import(
        &self,
        path: impl AsRef<Path>,
        options: ImportOptions,
    ) -> Result<ImportOutcome, ImageError> {
        let path = path.as_ref();
        let chunk_size = options.chunk_size;
        if chunk_size == 0 || !chunk_size.is_multiple_of(4096) || chunk_size > MAX_CHUNK_SIZE {
            return Err(ImageError::InvalidChunkSize { chunk_size });
        }
        let read_error = |source| ImageError::ReadInput {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dirs) = &options.allowed_dirs {
            check_within(path, dirs)?;
        }
        let (mut file, metadata) = open_input(path)?;
        if let Some(dirs) = &options.allowed_dirs {
            check_opened_within(path, &file, dirs)?;
        }
        // When the file was looked at: an identity is recorded only if the
        // file's last change lies clearly before this (see `remember`).
        let seen = SystemTime::now();
        let identity = fs::canonicalize(path)
            .ok()
            .and_then(|canonical| FileIdentity::new(canonical, &metadata));
        let settled = identity.as_ref().is_some_and(|i| i.is_settled(seen));

        // A cached image whose manifest predates chunk fingerprints (format 1)
        // is not taken by a shortcut: the full pass below computes them, and
        // the manifest is upgraded.
        if let Some(identity) = &identity {
            if let Some(source) = self.index.source(identity) {
                if let Some(image) = self
                    .get(&source.raw_sha256)?
                    .filter(|i| i.manifest.has_chunk_fingerprints())
                    .filter(|i| entry_fits(i, &options))
                {
                    tracing::debug!(path = %path.display(), image = %image.sha256().short(), "known file");
                    let image = self.also_named(image, &file_name_of(path));
                    check_size(path, image.size(), &options)?;
                    check_expected(path, &options, source.raw_sha256, source.file_sha256)?;
                    return Ok(ImportOutcome {
                        image,
                        hit: Some(CacheHit::SameFile),
                        map: None,
                    });
                }
            }
        }

        let mut head = [0u8; MAGIC_LEN];
        let head_len = read_full(&mut file, &mut head).map_err(read_error)?;
        if head_len == 0 {
            return Err(ImageError::EmptyInput {
                path: path.to_path_buf(),
            });
        }
        let format = ImageFormat::detect(&head[..head_len]);
        file.seek(SeekFrom::Start(0)).map_err(read_error)?;
        if format == ImageFormat::Raw {
            // The file is the image: its size is known before anything is read.
            check_size(path, metadata.len(), &options)?;
        }

        // Hashing first costs one extra read of the file, so it is done only
        // when a known file has exactly this size.
        if let Some(identity) = &identity {
            if self.index.has_alias_of_size(identity.size) {
                let (hasher, size) = hash_all(&mut file, &|| options.cancelled())
                    .map_err(read_error)?
                    .ok_or_else(|| ImageError::Cancelled {
                        path: path.to_path_buf(),
                    })?;
                let file_sha256 = Sha256Digest::from_hasher(hasher);
                if let Some(raw) = self.index.alias(size, &file_sha256) {
                    if let Some(image) = self
                        .get(&raw)?
                        .filter(|i| i.manifest.has_chunk_fingerprints())
                        .filter(|i| entry_fits(i, &options))
                    {
                        tracing::debug!(path = %path.display(), image = %raw.short(), "known file digest");
                        let image = self.also_named(image, &file_name_of(path));
                        check_size(path, image.size(), &options)?;
                        check_expected(path, &options, raw, file_sha256)?;
                        self.remember(identity, settled, &file, file_sha256, raw, size);
                        return Ok(ImportOutcome {
                            image,
                            hit: Some(CacheHit::SameFileDigest),
                            map: None,
                        });
                    }
                }
                file.seek(SeekFrom::Start(0)).map_err(read_error)?;
            }
        }

        tracing::debug!(path = %path.display(), %format, "importing");
        let mut placement = self.place(format, &file, identity.as_ref(), settled, &options)?;
        // Before anything is written: a copied raw image needs room for its
        // data (at most what the file holds on disk: holes stay holes); any
        // import needs the reserve to be free. While decoding, the watch checks
        // again before each chunk is stored, and stops at the size limit and
        // on cancel.
        let needed = match (&placement, format) {
            (Placement::Copy(_), ImageFormat::Raw) => {
                metadata.len().min(metadata.blocks().saturating_mul(512))
            }
            _ => 0,
        };
        self.check_space(needed, 0, options.min_free_space)?;
        let copying = matches!(placement, Placement::Copy(_));
        let mut watch = |raw_size: u64| -> Result<(), ImageError> {
            if options.cancelled() {
                return Err(ImageError::Cancelled {
                    path: path.to_path_buf(),
                });
            }
            check_size(path, raw_size, &options)?;
            if copying {
                self.check_space(u64::from(chunk_size), raw_size, options.min_free_space)?;
            }
            Ok(())
        };
        let observer = options.observer.as_deref();
        if let Some(observer) = observer {
            // A raw file is its image; a plain xz stream declares its size in
            // its index (a hint the follower checks at the end).
            let size = match format {
                ImageFormat::Raw => Some(metadata.len()),
                ImageFormat::Xz => crate::xz_size::declared_size(&file, metadata.len()),
                _ => None,
            };
            let raw = match &placement {
                Placement::Copy(temp) | Placement::Clone(temp) => temp.file(),
                Placement::Reference(_) => &file,
            };
            observer.began(raw, chunk_size, size);
        }
        // A raw file imported alone is read past the page cache (see
        // `direct_reader`: the least CPU). One a flash follows, whose
        // observer takes each chunk's bytes as it is announced, is read
        // through the page cache's read-ahead and its pages let go behind
        // the reads (`decode`, `input::ReadOnce`: the sticks wait for those
        // reads, and one direct read at a time was the slower here). An
        // observer that reads the chunks from the file itself needs them in
        // the page cache.
        let mut direct = (format == ImageFormat::Raw && observer.is_none())
            .then(|| direct_reader(&file))
            .flatten();
        // Either way the observer's file is the one read past the page cache
        // only when it is referenced in place (a copy or a clone is written
        // through the page cache).
        let takes_bytes = observer.is_some_and(|o| o.takes_bytes());
        if let (Some(observer), true, Placement::Reference(_)) = (
            observer,
            format == ImageFormat::Raw && takes_bytes,
            &placement,
        ) {
            observer.reads_past_page_cache();
        }
        let input = match &mut direct {
            Some(direct) => direct,
            None => &mut file,
        };
        // The bmap's check rides on the pass: the raw bytes go past it once.
        // A raw file's size is the image's, known now: a map of another
        // size is refused for that (its last range's checksum would fail
        // first, and say less), before a byte is read.
        if let (Some(bmap), ImageFormat::Raw) = (&options.bmap, format) {
            let expected = bmap.image_size();
            if metadata.len() != expected {
                return Err(bmap.refused(BmapError::ImageSize {
                    expected,
                    actual: metadata.len(),
                }));
            }
        }
        let mut check = options.bmap.as_ref().map(BmapInput::check);
        let decoded = match &mut placement {
            Placement::Copy(temp) => {
                let out_path = temp.path().to_path_buf();
                decode(
                    path,
                    format,
                    input,
                    Some((temp.file_mut(), &out_path)),
                    chunk_size as usize,
                    &mut watch,
                    observer,
                    check.as_mut(),
                    options.zip_entry.as_deref(),
                )
            }
            Placement::Clone(temp) => {
                let clone = temp.file_mut();
                clone
                    .seek(SeekFrom::Start(0))
                    .map_err(|source| ImageError::CacheIo {
                        action: "read",
                        path: self.tmp.clone(),
                        source,
                    })?;
                decode(
                    path,
                    format,
                    clone,
                    None,
                    chunk_size as usize,
                    &mut watch,
                    observer,
                    check.as_mut(),
                    options.zip_entry.as_deref(),
                )
            }
            Placement::Reference(_) => decode(
                path,
                format,
                input,
                None,
                chunk_size as usize,
                &mut watch,
                observer,
                check.as_mut(),
                options.zip_entry.as_deref(),
            ),
        };
        // A range that failed stopped the pass: that is the import's error.
        let decoded = match (decoded, &check, &options.bmap) {
            (Err(_), Some(check), Some(bmap)) if check.failure().is_some() => {
                let failure = check.failure().cloned().expect("checked just now");
                return Err(bmap.refused(failure));
            }
            (decoded, _, _) => {
                decoded.map_err(|error| self.out_of_space(error, options.min_free_space))?
            }
        };
        if let Placement::Reference(identity) = &placement {
            // The digests describe the file only if nobody changed it while
            // it was read (by its descriptor, and by its name).
            let unchanged = file.metadata().is_ok_and(|m| identity.matches(&m))
                && fs::metadata(&identity.path).is_ok_and(|m| identity.matches(&m));
            if !unchanged {
                return Err(ImageError::ChangedWhileImported {
                    path: path.to_path_buf(),
                });
            }
        }
        // A file written to while it was read (still being downloaded or
        // copied when the import began) gave whatever had arrived: refused
        // however its bytes were kept, as a referenced one is above.
        let still = file.metadata().is_ok_and(|after| {
            after.len() == metadata.len()
                && after.mtime() == metadata.mtime()
                && after.mtime_nsec() == metadata.mtime_nsec()
        });
        if !still {
            return Err(ImageError::ChangedWhileImported {
                path: path.to_path_buf(),
            });
        }
        let raw = decoded.raw.sha256;
        if decoded.raw.size == 0 {
            return Err(ImageError::EmptyImage {
                path: path.to_path_buf(),
                format,
            });
        }
        check_expected(path, &options, raw, decoded.file_sha256)?;
        // The whole image went past the bmap's check: its size, and every
        // range's checksum, before anything is kept.
        let map = match (&check, &options.bmap) {
            (Some(check), Some(bmap)) => {
                check.finish().map_err(|source| bmap.refused(source))?;
                Some(bmap.stored()?)
            }
            _ => None,
        };
        // A zip whose entry was named holds other images too: the file is
        // not recorded as holding this one (its next import reads it).
        let named_entry = format == ImageFormat::Zip && options.zip_entry.is_some();
        let remember = |file: &File| {
            if let (Some(identity), false) = (&identity, named_entry) {
                self.remember(
                    identity,
                    settled,
                    file,
                    decoded.file_sha256,
                    raw,
                    decoded.input_size,
                );
            }
        };
        if let Some(image) = self.get(&raw)? {
            tracing::debug!(path = %path.display(), image = %raw.short(), "image already cached");
            let image = self.add_fingerprints(image, &decoded.raw);
            let image = self.also_named(image, &file_name_of(path));
            if let Some(map) = &map {
                self.keep_map(&raw, map)?;
            }
            remember(&file);
            return Ok(ImportOutcome {
                image,
                hit: Some(CacheHit::SameImage),
                map,
            });
        }

        let manifest = ImageManifest::fingerprinted(
            raw,
            decoded.raw.size,
            chunk_size,
            decoded.raw.chunk_fingerprints,
            decoded.raw.zero,
        )
        .expect("the pass yields one fingerprint and zero flag per chunk of a valid size");
        let meta = ImportMeta {
            original_name: file_name_of(path),
            zip_entry: decoded.zip_entry,
            also_known_as: Vec::new(),
            format,
            input_size: decoded.input_size,
            input_sha256: decoded.file_sha256,
            provenance: None,
            imported_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            // Read from the raw bytes just stored (the same descriptor), or
            // the file referenced.
            inspection: Some(match &mut placement {
                Placement::Copy(temp) | Placement::Clone(temp) => {
                    flashrack_inspect::inspect(&*temp.file_mut())
                }
                Placement::Reference(_) => flashrack_inspect::inspect(&file),
            }),
            reference: match &placement {
                Placement::Reference(identity) => Some(SourceReference(identity.clone())),
                _ => None,
            },
        };
        let image_path = match placement {
            // The image first, the entry last: an entry is never without its image.
            Placement::Copy(temp) | Placement::Clone(temp) => {
                let image_path = self.image_path(&raw);
                temp.persist(&image_path)?;
                image_path
            }
            Placement::Reference(identity) => identity.path,
        };
        let owned = meta.reference.is_none();
        let entry = EntryFile {
            manifest: manifest.clone(),
            import: meta.clone(),
        };
        // The map before the entry, which makes the image part of the cache.
        let kept = match &map {
            Some(map) => self.keep_map(&raw, map),
            None => Ok(()),
        };
        if let Err(error) =
            kept.and_then(|()| write_json_atomic(&self.tmp, &self.entry_path(&raw), &entry))
        {
            // Without its entry the image is not in the cache; do not leave it
            // (a referenced file is not the cache's to remove), nor its map.
            if owned {
                let _ = fs::remove_file(&image_path);
            }
            self.remove_map(&raw);
            return Err(error);
        }
        tracing::debug!(image = %raw.short(), size = manifest.size(), "imported");
        remember(&file);
        Ok(ImportOutcome {
            image: CachedImage {
                manifest,
                path: image_path,
                meta,
            },
            hit: None,
            map,
        })
    }

    /// Decides where a new image's raw bytes go: a raw file is cloned into the
    /// cache where the file system can (a reflink), else referenced in place
    /// when the caller allows it and the file is settled, else copied, as a
    /// compressed file is always decompressed into the cache.
    fn place(
        &self,
        format: ImageFormat,
        file: &File,
        identity: Option<&FileIdentity>,
        settled: bool,
        options: &ImportOptions,
    ) -> Result<Placement, ImageError> {
        let temp = TempFile::create_in(&self.tmp, "img")?;
        if format != ImageFormat::Raw {
            return Ok(Placement::Copy(temp));
        }
        match rustix::fs::ioctl_ficlone(temp.file(), file) {
            Ok(()) => {
                tracing::debug!("raw image cloned into the cache (reflink)");
                return Ok(Placement::Clone(temp));
            }
            Err(error) => tracing::debug!(%error, "no reflink into the cache"),
        }
        match identity {
            Some(identity) if options.reference_raw && settled => {
                tracing::debug!(path = %identity.path.display(), "raw image referenced in place");
                Ok(Placement::Reference(identity.clone()))
            }
            Some(identity) if options.reference_raw => {
                // Changed a moment ago (perhaps still being written): a later
                // change could keep its identity, so it is copied.
                tracing::debug!(path = %identity.path.display(), "raw image changed just now: copied, not referenced");
                Ok(Placement::Copy(temp))
            }
            _ => Ok(Placement::Copy(temp)),
        }
    }

    /// Upgrades the manifest of a cached image that has no chunk fingerprints
    /// (format 1) with those of a pass over the same image, if that pass used
    /// the same chunks. Best effort: on any failure the image keeps its old
    /// manifest, which the engine still uses (checking cached chunks against
    /// their sha256 instead).
    pub(crate) fn add_fingerprints(&self, image: CachedImage, raw: &RawDigests) -> CachedImage {
        // The pass hashed the same image (its sha256 is the image's name), so
        // with the same chunk size its fingerprints are the cached chunks'.
        let old = &image.manifest;
        let same_chunks = old.sha256() == raw.sha256
            && old.size() == raw.size
            && old.chunk_count() == raw.chunk_fingerprints.len() as u64;
        if old.has_chunk_fingerprints() || !same_chunks {
            return image;
        }
        let Ok(manifest) = old
            .clone()
            .with_chunk_fingerprints(raw.chunk_fingerprints.clone())
        else {
            return image;
        };
        let entry = EntryFile {
            manifest: manifest.clone(),
            import: image.meta.clone(),
        };
        let digest = image.sha256();
        match write_json_atomic(&self.tmp, &self.entry_path(&digest), &entry) {
            Ok(()) => {
                tracing::debug!(image = %digest.short(), "manifest upgraded with chunk fingerprints");
                CachedImage { manifest, ..image }
            }
            Err(error) => {
                tracing::warn!(%error, image = %digest.short(), "cannot upgrade the manifest");
                image
            }
        }
    }

    /// Free space left in the cache's file system, checked against `needed`
    /// more bytes plus the `reserve` that must stay free; `stored` is what the
    /// import has stored so far (0 before it writes).
    pub(crate) fn check_space(
        &self,
        needed: u64,
        stored: u64,
        reserve: u64,
    ) -> Result<(), ImageError> {
        let available = self.available_space()?;
        if available < needed.saturating_add(reserve) {
            return Err(ImageError::CacheFull {
                path: self.root.clone(),
                available,
                reserve,
                // A chunk's worth is no figure the operator can act on.
                needed: (stored == 0 && needed > 0).then_some(needed),
                stored,
            });
        }
        Ok(())
    }

    fn available_space(&self) -> Result<u64, ImageError> {
        let stat = rustix::fs::statvfs(&self.tmp).map_err(|e| ImageError::CacheIo {
            action: "inspect the free space of",
            path: self.tmp.clone(),
            source: e.into(),
        })?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// A write that failed for lack of space (another process filled the file
    /// system between two checks) is the cache being full, not an internal error.
    pub(crate) fn out_of_space(&self, error: ImageError, reserve: u64) -> ImageError {
        match &error {
            ImageError::CacheIo { source, .. }
                if matches!(
                    source.raw_os_error(),
                    Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
                        || code == rustix::io::Errno::DQUOT.raw_os_error()
                ) =>
            {
                ImageError::CacheFull {
                    path: self.root.clone(),
                    available: self.available_space().unwrap_or(0),
                    reserve,
                    needed: None,
                    stored: 0,
                }
            }
            _ => error,
        }
    }

    /// Records how to recognise this file next time. The identity is recorded
    /// only if it is `settled` (the file's last change lies clearly before it
    /// was looked at) and the file did not change while it was read (it may
    /// still have been downloading); failures are logged and otherwise
    /// ignored, since these are only hints.
    fn remember(
        &self,
        identity: &FileIdentity,
        settled: bool,
        file: &File,
        file_sha256: Sha256Digest,
        raw: Sha256Digest,
        size: u64,
    ) {
        if let Err(error) = self.index.record_alias(size, &file_sha256, &raw) {
            tracing::warn!(%error, "cannot record file digest");
        }
        if !file.metadata().is_ok_and(|m| identity.matches(&m)) || identity.size != size {
            tracing::debug!(path = %identity.path.display(), "file changed while read: identity not recorded");
            return;
        }
        if !settled {
            tracing::debug!(path = %identity.path.display(), "file changed just before it was read: identity not recorded");
            return;
        }
        let entry = SourceEntry {
            identity: identity.clone(),
            file_sha256,
            raw_sha256: raw,
        };
        if let Err(error) = self.index.record_source(&entry) {
            tracing::warn!(%error, "cannot record imported file");
        }
    }
}

/// Whether a cached image a shortcut found may answer an import that names
/// a zip entry: only if it was imported as that entry (otherwise the pass
/// reads the archive, and finds the entry or says it is not there).
fn entry_fits(image: &CachedImage, options: &ImportOptions) -> bool {
    options.zip_entry.is_none() || image.meta.zip_entry == options.zip_entry
}

/// Accepts `expected` if it is the digest of the file as given or of its raw image.
pub(crate) fn check_expected(
    path: &Path,
    options: &ImportOptions,
    raw: Sha256Digest,
    file: Sha256Digest,
) -> Result<(), ImageError> {
    match options.expected_sha256 {
        Some(expected) if expected != raw && expected != file => {
            Err(ImageError::ChecksumMismatch {
                path: path.to_path_buf(),
                expected,
                raw,
                file,
            })
        }
        _ => Ok(()),
    }
}

/// Refuses an image larger than the largest target the station may write.
pub(crate) fn check_size(
    path: &Path,
    size: u64,
    options: &ImportOptions,
) -> Result<(), ImageError> {
    if size > options.max_image_size {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            limit: options.max_image_size,
        });
    }
    Ok(())
}

/// Opens the file to import, refusing anything that is not a regular file
/// *before* opening it: opening a FIFO for reading waits for a writer, and
/// opening some devices has effects of its own. The file is opened
/// non-blocking (a FIFO swapped in between cannot hang the open either) and
/// checked again on the descriptor.
fn open_input(path: &Path) -> Result<(File, Metadata), ImageError> {
    let read_error = |source| ImageError::ReadInput {
        path: path.to_path_buf(),
        source,
    };
    let not_regular = |meta: &Metadata| match FileKind::of(meta) {
        Some(kind) => Err(ImageError::NotARegularFile {
            path: path.to_path_buf(),
            kind,
        }),
        None => Ok(()),
    };
    not_regular(&fs::metadata(path).map_err(read_error)?)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)
        .map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    not_regular(&metadata)?;
    // Reads of a regular file never block anyway; the flag only guarded the open.
    rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty())
        .map_err(|e| read_error(e.into()))?;
    Ok((file, metadata))
}

/// `path` with `.` and `..` taken out, without looking at the file system.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The allowed directories as they really are (links resolved); one that does
/// not exist allows nothing.
fn real_dirs(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter()
        .filter_map(|dir| fs::canonicalize(dir).ok())
        .collect()
}

/// Refuses `path` unless it really lies in one of `dirs`: symbolic links and
/// `..` resolved. A path that cannot be resolved is refused the same way when
/// it is outside the directories even as written, so the answer does not tell
/// whether a file outside exists.
fn check_within(path: &Path, dirs: &[PathBuf]) -> Result<(), ImageError> {
    let outside = || ImageError::OutsideImportDirs {
        path: path.to_path_buf(),
    };
    let dirs = real_dirs(dirs);
    match fs::canonicalize(path) {
        Ok(real) if dirs.iter().any(|d| real.starts_with(d)) => Ok(()),
        Ok(_) => Err(outside()),
        Err(source) => {
            let written = lexically_normal(path);
            let lexical_dirs: Vec<PathBuf> = dirs.iter().map(|d| lexically_normal(d)).collect();
            if path.is_absolute() && lexical_dirs.iter().any(|d| written.starts_with(d)) {
                Err(ImageError::ReadInput {
                    path: path.to_path_buf(),
                    source,
                })
            } else {
                Err(outside())
            }
        }
    }
}

/// The same check on the opened file, as the kernel names it: a link swapped
/// in after [`check_within`] looked cannot lead outside.
fn check_opened_within(path: &Path, file: &File, dirs: &[PathBuf]) -> Result<(), ImageError> {
    let opened = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let dirs = real_dirs(dirs);
    match opened {
        Ok(real) if dirs.iter().any(|d| real.starts_with(d)) => Ok(()),
        _ => Err(ImageError::OutsideImportDirs {
            path: path.to_path_buf(),
        }),
    }
}

/// Whether `file` was opened with `O_DIRECT`.
fn opened_direct(file: &File) -> bool {
    rustix::fs::fcntl_getfl(file).is_ok_and(|flags| flags.contains(rustix::fs::OFlags::DIRECT))
}

/// Decompresses `file` into `out` in one pass, digesting both; `watch` sees
/// the raw size before each chunk is stored and may stop the pass;
/// `observer` hears of each chunk once stored; `check` (a bmap's) sees every
/// raw byte as it is read, and stops the pass at a range that fails.
#[allow(clippy::too_many_arguments)]
fn decode(
    path: &Path,
    format: ImageFormat,
    file: &mut File,
    out: Option<(&mut File, &Path)>,
    chunk_size: usize,
    watch: Watch<'_>,
    observer: Option<&dyn ImportObserver>,
    mut check: Option<&mut StreamCheck>,
    wanted_entry: Option<&str>,
) -> Result<Decoded, ImageError> {
    let hashing = ChunkHashing::for_input();
    let (out, out_path) = match out {
        Some((file, path)) => (Some(file), Some(path.to_path_buf())),
        None => (None, None),
    };
    let pass_error = |error: PassError| match error {
        PassError::Input(e) => input_error(path, format, e),
        PassError::Output(source) => ImageError::CacheIo {
            action: "write",
            path: out_path.clone().unwrap_or_default(),
            source,
        },
        PassError::Stopped(error) => error,
    };
    match format {
        ImageFormat::Raw => {
            // The file is the image: its digest is the raw digest. Read once
            // through the page cache's read-ahead for an observer that takes
            // the chunks' bytes (see `import`), unless it came opened past
            // the page cache.
            let read_once = observer.is_some_and(|o| o.takes_bytes()) && !opened_direct(file);
            let mut once;
            let reading: &mut dyn Read = if read_once {
                let start = file
                    .stream_position()
                    .map_err(|e| input_error(path, format, e))?;
                once = ReadOnce::at(file, start);
                &mut once
            } else {
                file
            };
            let mut input = InputReader::new(reading, false);
            let mut input = Checked::new(&mut input, check.as_deref_mut());
            let raw = digest_and_store(&mut input, out, chunk_size, hashing, watch, observer)
                .map_err(pass_error)?;
            Ok(Decoded {
                file_sha256: raw.sha256,
                input_size: raw.size,
                raw,
                zip_entry: None,
            })
        }
        // The file read ahead and hashed behind the decoder on two threads
        // ([`ReadAhead`]), the decoder (this one), and the pass's worker,
        // which stores and digests the raw chunks (see `pass`).
        ImageFormat::Gzip | ImageFormat::Xz | ImageFormat::Zstd | ImageFormat::Bzip2 => {
            let file: &File = file;
            thread::scope(|scope| {
                let mut input = ReadAhead::start(scope, file);
                let raw = {
                    let mut decoder = stream_decoder(format, &mut input)
                        .map_err(|e| input_error(path, format, e))?;
                    let mut decoder = Checked::new(&mut *decoder, check.as_deref_mut());
                    digest_and_store(&mut decoder, out, chunk_size, hashing, watch, observer)
                        .map_err(pass_error)?
                };
                let (hasher, input_size) =
                    input.finish().map_err(|e| input_error(path, format, e))?;
                Ok(Decoded {
                    raw,
                    file_sha256: Sha256Digest::from_hasher(hasher),
                    input_size,
                    zip_entry: None,
                })
            })
        }
        ImageFormat::Zip => {
            let mut input = InputReader::new(file, true);
            let (raw, zip_entry) = decode_zip(
                path,
                &mut input,
                wanted_entry,
                &mut |_| {},
                ZipPass {
                    out,
                    chunk_size,
                    hashing,
                    watch,
                    observer,
                    check,
                },
                &pass_error,
            )?;
            let (hasher, input_size) = input.finish().map_err(|e| input_error(path, format, e))?;
            Ok(Decoded {
                raw,
                file_sha256: Sha256Digest::from_hasher(hasher.expect("hashing was asked for")),
                input_size,
                zip_entry: Some(zip_entry),
            })
        }
    }
}

/// Where the bytes of a zip entry go: the pass's output, chunking, watch,
/// observer and bmap check, as [`digest_and_store`] takes them.
pub(crate) struct ZipPass<'a, 'w> {
    pub(crate) out: Option<&'a mut File>,
    pub(crate) chunk_size: usize,
    pub(crate) hashing: ChunkHashing,
    pub(crate) watch: Watch<'w>,
    pub(crate) observer: Option<&'a dyn ImportObserver>,
    pub(crate) check: Option<&'a mut StreamCheck>,
}

impl ZipPass<'_, '_> {
    /// Digests and stores the entry's bytes from `entry`, through the
    /// stream's check when there is one.
    fn digest_and_store(self, entry: &mut dyn Read) -> Result<RawDigests, PassError> {
        let mut checked = Checked::new(entry, self.check);
        digest_and_store(
            &mut checked,
            self.out,
            self.chunk_size,
            self.hashing,
            self.watch,
            self.observer,
        )
    }
}

/// Imports one file of the zip archive `input` (read through its central
/// directory, at its end): the entry named `wanted`, or the only file when
/// none is named. A name that is not there fails with the archive's files,
/// and so does an archive with no file or several when none is named
/// (directories are not files). `before` is told the entry's size as the
/// central directory declares it, before its first byte is decoded (the
/// decoder's CRC-32 and size checks catch a directory that lies). Returns
/// the raw digests and the entry's name.
pub(crate) fn decode_zip<R: Read + Seek>(
    path: &Path,
    input: &mut InputReader<R>,
    wanted: Option<&str>,
    before: &mut dyn FnMut(Option<u64>),
    pass: ZipPass<'_, '_>,
    pass_error: &dyn Fn(PassError) -> ImageError,
) -> Result<(RawDigests, String), ImageError> {
    let mut archive = ZipArchive::new(input).map_err(|e| zip_error(path, e))?;
    let (index, name) = choose_zip_entry(path, &mut archive, wanted)?;
    let mut entry = archive.by_index(index).map_err(|e| zip_error(path, e))?;
    before(Some(entry.size()));
    let raw = pass.digest_and_store(&mut entry).map_err(pass_error)?;
    Ok((raw, name))
}

/// What a zip entry's local header said of it, as it was streamed
/// ([`stream_zip_entry`]), for the check against the central directory
/// once the archive is whole ([`check_streamed_zip`]).
#[derive(Debug, Clone)]
pub(crate) struct StreamedEntry {
    /// Its name.
    pub(crate) name: String,
    /// Its CRC-32.
    pub(crate) crc32: u32,
    /// Its compressed size.
    pub(crate) compressed_size: u64,
    /// Its size.
    pub(crate) size: u64,
    /// Stored with its sizes after its data: its end was found in the
    /// stream (the first data descriptor that agreed with the data before
    /// it), which data made to look so can put too early
    /// ([`StreamedCheck::EndedEarly`]).
    pub(crate) end_in_data: bool,
}

/// Imports one file of the zip archive arriving on `input` as it arrives,
/// from its local header (the central directory, at the archive's end, is
/// not there yet): the entry named `wanted`, or the first file when none is
/// named (entries before it, and directories, are read past). An entry whose
/// local header gives its sizes is read by the zip reader, which checks its
/// bytes against the CRC-32 and sizes that header declares, and `before` is
/// told its size. An entry whose sizes follow its data (bit 3 of its flags,
/// a data descriptor: what a zip written to a stream has) is read as it
/// arrives too, and `before` is told no size (`None`): deflated, it is
/// inflated, deflate marking its own end; stored, its end is found in the
/// stream (`descriptor_scan`: the first descriptor that agrees with the data
/// before it, followed by a record's signature). Its CRC-32 and sizes are
/// computed as it goes and checked against its data descriptor once its
/// data has ended. [`check_streamed_zip`] then checks the entry, and the
/// choice, against the central directory once the archive is whole (which a
/// false end found in stored data fails). `Ok(None)`: the entry cannot be
/// streamed (sizes after the data of an entry neither stored nor deflated,
/// or encrypted, or such an entry before it, or a record this reader does
/// not know), decided before any of its bytes is decoded, so the caller
/// reads the archive from its end instead. `before` is called before the
/// entry's first byte is decoded. `read_past_in_data` is set once an entry
/// before the chosen one was read past to an end found in its stored data,
/// which may have been false (data that reads as its descriptor): what
/// follows it was then read from the middle of that data, and whatever
/// fails or disagrees after it says nothing of the archive (the caller
/// reads it from its end instead, see [`crate::stream`]).
pub(crate) fn stream_zip_entry<R: Read>(
    path: &Path,
    input: &mut InputReader<R>,
    wanted: Option<&str>,
    before: &mut dyn FnMut(Option<u64>),
    pass: ZipPass<'_, '_>,
    pass_error: &dyn Fn(PassError) -> ImageError,
    read_past_in_data: &mut bool,
) -> Result<Option<(RawDigests, StreamedEntry)>, ImageError> {
    // Buffered, so that a deflate decoder takes from the buffer only the
    // bytes of its stream and leaves the data descriptor after it there;
    // rewindable, so that a stored entry's scan for its descriptor gives
    // back what it read past its end. Bytes buffered past the point where
    // this stops were hashed and counted by `input` as they were read: the
    // caller's `finish_stream` goes on from there.
    let mut input = Rewindable::new(INPUT_BUFFER, input);
    let io_error = |e: io::Error| zip_error(path, ZipError::Io(e));
    loop {
        let Some(header) = LocalHeader::read(&mut input).map_err(io_error)? else {
            // The central directory (no entry to stream before it), or a
            // record not known here: the archive's directory says what is
            // there.
            return Ok(None);
        };
        if header.sizes_follow_data() {
            let Some(name) = header.name() else {
                return Ok(None);
            };
            let is_file = !name.ends_with('/') && !name.ends_with('\\');
            if header.method == METHOD_STORED && !is_file {
                // A directory holds nothing: its descriptor follows its
                // header (`zip` writing to a pipe stores directories so).
                check_descriptor(path, &mut input, &header, &name, (0, 0, 0))?;
                continue;
            }
            if header.method != METHOD_DEFLATE && header.method != METHOD_STORED {
                // Not decoded here: read from the archive's end.
                return Ok(None);
            }
            let chosen = is_file && wanted.is_none_or(|wanted| wanted == name);
            if !chosen {
                // Read past to its end (where deflate marks it, or where
                // its descriptor is found), its descriptor checked.
                let found = {
                    let mut entry = Following::new(&mut input, &header, &name);
                    io::copy(&mut entry, &mut io::sink()).map_err(io_error)?;
                    entry.finish()
                };
                *read_past_in_data |= header.method == METHOD_STORED;
                check_descriptor(path, &mut input, &header, &name, found)?;
                continue;
            }
            before(None);
            let (raw, (crc32, compressed_size, size)) = {
                let mut entry = Following::new(&mut input, &header, &name);
                let raw = pass.digest_and_store(&mut entry).map_err(pass_error)?;
                (raw, entry.finish())
            };
            check_descriptor(
                path,
                &mut input,
                &header,
                &name,
                (crc32, compressed_size, size),
            )?;
            let facts = StreamedEntry {
                name,
                crc32,
                compressed_size,
                size,
                end_in_data: header.method == METHOD_STORED,
            };
            return Ok(Some((raw, facts)));
        }
        // The zip reader reads the header again, from memory, then the
        // entry's data from the stream.
        let mut replay = io::Cursor::new(&header.bytes[..]).chain(&mut input);
        let mut entry = match zip::read::read_zipfile_from_stream(&mut replay) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(None),
            Err(ZipError::UnsupportedArchive(_)) => return Ok(None),
            Err(error) => return Err(zip_error(path, error)),
        };
        let name = entry.name().map_err(|e| zip_error(path, e))?.into_owned();
        let is_file = !name.ends_with('/') && !name.ends_with('\\');
        let chosen = is_file && wanted.is_none_or(|wanted| wanted == name);
        if !chosen {
            // Read past (the reader is positioned after it when dropped).
            io::copy(&mut entry, &mut io::sink()).map_err(io_error)?;
            continue;
        }
        let facts = StreamedEntry {
            name,
            crc32: entry.crc32(),
            compressed_size: entry.compressed_size(),
            size: entry.size(),
            end_in_data: false,
        };
        before(Some(facts.size));
        let raw = pass.digest_and_store(&mut entry).map_err(pass_error)?;
        if raw.size != facts.size {
            return Err(ImageError::Corrupt {
                path: path.to_path_buf(),
                format: ImageFormat::Zip,
                reason: format!(
                    "{} holds {} bytes, its local header says {}",
                    facts.name, raw.size, facts.size
                ),
            });
        }
        return Ok(Some((raw, facts)));
    }
}

/// A local file header's signature.
pub(crate) const LOCAL_HEADER_SIGNATURE: u32 = 0x0403_4b50;
/// A central directory file header's signature.
pub(crate) const CENTRAL_HEADER_SIGNATURE: u32 = 0x0201_4b50;
/// The optional signature of a data descriptor.
pub(crate) const DATA_DESCRIPTOR_SIGNATURE: u32 = 0x0807_4b50;
/// Bit 3 of a local header's flags: the CRC-32 and sizes follow the data.
const FLAG_DATA_DESCRIPTOR: u16 = 1 << 3;
/// Bit 0: the entry is encrypted.
const FLAG_ENCRYPTED: u16 = 1;
/// Compression method 8.
const METHOD_DEFLATE: u16 = 8;
/// Compression method 0: the data as it is.
const METHOD_STORED: u16 = 0;
/// The zip64 extended information extra field's id.
const EXTRA_ZIP64: u16 = 0x0001;

/// A zip entry's local header as it came off the stream, whole (signature,
/// fixed part, name and extra fields), with what decides how it is read.
struct LocalHeader {
    /// Its bytes, for the zip reader to read again.
    bytes: Vec<u8>,
    /// Its general-purpose flags.
    flags: u16,
    /// Its compression method.
    method: u16,
    /// Whether it carries a zip64 extra field: its data descriptor's sizes
    /// are then 8 bytes each.
    zip64: bool,
}

impl LocalHeader {
    /// Reads the next record off `input` if it is a local header; `None`
    /// (its first four bytes read) if it is anything else: the central
    /// directory or its end, or a record not known here.
    fn read(input: &mut impl Read) -> io::Result<Option<Self>> {
        let mut bytes = vec![0u8; 30];
        input.read_exact(&mut bytes[..4])?;
        if u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) != LOCAL_HEADER_SIGNATURE {
            return Ok(None);
        }
        input.read_exact(&mut bytes[4..])?;
        let u16_at = |bytes: &[u8], at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let flags = u16_at(&bytes, 6);
        let method = u16_at(&bytes, 8);
        let name_len = usize::from(u16_at(&bytes, 26));
        let extra_len = usize::from(u16_at(&bytes, 28));
        bytes.resize(30 + name_len + extra_len, 0);
        input.read_exact(&mut bytes[30..])?;
        let mut zip64 = false;
        let mut extra = &bytes[30 + name_len..];
        while extra.len() >= 4 {
            let id = u16_at(extra, 0);
            let len = usize::from(u16_at(extra, 2));
            zip64 |= id == EXTRA_ZIP64;
            extra = extra.get(4 + len..).unwrap_or_default();
        }
        Ok(Some(Self {
            bytes,
            flags,
            method,
            zip64,
        }))
    }

    /// Whether the entry's CRC-32 and sizes follow its data.
    fn sizes_follow_data(&self) -> bool {
        self.flags & FLAG_DATA_DESCRIPTOR != 0
    }

    /// The entry's name as the zip reader reads it (the central directory's
    /// is read the same way, so the two compare), if it is not encrypted.
    /// `None` otherwise, or if the zip reader refuses the header: the entry
    /// is then read from the archive's end.
    fn name(&self) -> Option<String> {
        if self.flags & FLAG_ENCRYPTED != 0 {
            return None;
        }
        // The header alone, with no data after it: only its name is read.
        let mut header = io::Cursor::new(&self.bytes[..]);
        let entry = zip::read::read_zipfile_from_stream_with_compressed_size(&mut header, 0)
            .ok()
            .flatten()?;
        let name = entry.name().ok()?.into_owned();
        Some(name)
    }
}

/// An entry whose sizes follow its data, read as it arrives to its end:
/// inflated to where deflate marks it, or stored up to where its data
/// descriptor is found ([`StoredUntilDescriptor`]). Computes the CRC-32 and
/// sizes of what it yields; what follows the end (the descriptor) is left
/// to be read from the stream.
enum Following<'a, R: Read> {
    /// Method 8.
    Inflated(Inflating<'a, Rewindable<R>>),
    /// Method 0.
    Stored(StoredUntilDescriptor<'a, R>),
}

impl<'a, R: Read> Following<'a, R> {
    /// The data of the entry `header` (deflated or stored) names `name`,
    /// from `input`, positioned after that header.
    fn new(input: &'a mut Rewindable<R>, header: &LocalHeader, name: &'a str) -> Self {
        if header.method == METHOD_DEFLATE {
            Self::Inflated(Inflating::new(input))
        } else {
            Self::Stored(StoredUntilDescriptor::new(input, name, header.zip64))
        }
    }

    /// The CRC-32, compressed size and size of the entry, once read to its
    /// end.
    fn finish(self) -> (u32, u64, u64) {
        match self {
            Self::Inflated(entry) => entry.finish(),
            Self::Stored(entry) => entry.finish(),
        }
    }
}

impl<R: Read> Read for Following<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Inflated(entry) => entry.read(buf),
            Self::Stored(entry) => entry.read(buf),
        }
    }
}

/// A deflated entry whose sizes follow its data, inflated as it arrives:
/// deflate marks its own end, so the decoder stops there and leaves what
/// follows (the data descriptor) in the buffer it reads from. Computes the
/// CRC-32 and size of what it yields.
struct Inflating<'a, B: BufRead> {
    decoder: flate2::bufread::DeflateDecoder<&'a mut B>,
    crc: flate2::Crc,
    size: u64,
    /// The deflate stream has ended: never asked again.
    ended: bool,
}

impl<'a, B: BufRead> Inflating<'a, B> {
    fn new(input: &'a mut B) -> Self {
        Self {
            decoder: flate2::bufread::DeflateDecoder::new(input),
            crc: flate2::Crc::new(),
            size: 0,
            ended: false,
        }
    }

    /// The CRC-32, compressed size and size of the entry, once read to its end.
    fn finish(&self) -> (u32, u64, u64) {
        (self.crc.sum(), self.decoder.total_in(), self.size)
    }
}

impl<B: BufRead> Read for Inflating<'_, B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended || buf.is_empty() {
            return Ok(0);
        }
        let n = self.decoder.read(buf)?;
        self.ended = n == 0;
        self.crc.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Reads the data descriptor that follows an entry's data off `input` and
/// checks it against what the data was (`found`: CRC-32, compressed size,
/// size): a descriptor that is missing or disagrees is a corrupt archive.
/// Its sizes are 8 bytes each when the local header had a zip64 field or a
/// size needs them (as Java's `ZipOutputStream` writes them), else 4; its
/// signature is optional.
fn check_descriptor(
    path: &Path,
    input: &mut impl Read,
    header: &LocalHeader,
    name: &str,
    found: (u32, u64, u64),
) -> Result<(), ImageError> {
    let corrupt = |reason: String| ImageError::Corrupt {
        path: path.to_path_buf(),
        format: ImageFormat::Zip,
        reason,
    };
    let (crc32, compressed_size, size) = found;
    let wide = header.zip64 || compressed_size > u64::from(u32::MAX) || size > u64::from(u32::MAX);
    let read = |input: &mut dyn Read, len: usize| -> Result<u64, ImageError> {
        let mut bytes = [0u8; 8];
        match input.read_exact(&mut bytes[..len]) {
            Ok(()) => Ok(u64::from_le_bytes(bytes)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(corrupt(format!(
                "truncated: {name} has no data descriptor after its data"
            ))),
            Err(e) => Err(zip_error(path, ZipError::Io(e))),
        }
    };
    let mut listed_crc = read(input, 4)?;
    if listed_crc == u64::from(DATA_DESCRIPTOR_SIGNATURE) {
        listed_crc = read(input, 4)?;
    }
    let width = if wide { 8 } else { 4 };
    let listed_compressed = read(input, width)?;
    let listed_size = read(input, width)?;
    if (listed_crc, listed_compressed, listed_size) != (u64::from(crc32), compressed_size, size) {
        return Err(corrupt(format!(
            "{name}'s data descriptor says CRC-32 {listed_crc:08x}, {listed_compressed} bytes \
             compressed, {listed_size} bytes, but its data is CRC-32 {crc32:08x}, \
             {compressed_size} bytes compressed, {size} bytes"
        )));
    }
    Ok(())
}

/// The archive's entry to import: the one named `wanted`, or its only file
/// (directories do not count), with its index; otherwise the error that says
/// which files it holds.
fn choose_zip_entry<R: Read + Seek>(
    path: &Path,
    archive: &mut ZipArchive<R>,
    wanted: Option<&str>,
) -> Result<(usize, String), ImageError> {
    let mut files: Vec<(usize, String)> = Vec::new();
    for index in 0..archive.len() {
        let name = archive
            .name_for_index(index)
            .expect("every index below the archive's length has a name")
            .map_err(|e| zip_error(path, e))?;
        if !name.ends_with('/') && !name.ends_with('\\') {
            files.push((index, name.into_owned()));
        }
    }
    let chosen = match wanted {
        Some(wanted) => files.iter().find(|(_, name)| name == wanted),
        None => match files.as_slice() {
            [only] => Some(only),
            _ => None,
        },
    };
    chosen.cloned().ok_or_else(|| {
        let files = files.into_iter().map(|(_, name)| name).collect();
        match wanted {
            Some(entry) => ImageError::ZipEntryMissing {
                path: path.to_path_buf(),
                entry: entry.to_string(),
                files,
            },
            None => ImageError::ZipFileCount {
                path: path.to_path_buf(),
                files,
            },
        }
    })
}

/// What the central directory says of an entry imported as it arrived
/// ([`check_streamed_zip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamedCheck {
    /// It lists the entry as it was streamed.
    Agrees,
    /// It lists the entry (the one streamed, by its name) as stored, with
    /// `listed` bytes, more than were streamed up to the end found in its
    /// data ([`StreamedEntry::end_in_data`]): that end was data that reads
    /// as a data descriptor agreeing with the bytes before it. What was
    /// streamed is the entry's first bytes, not the entry; the stream could
    /// not tell where it ends, and its archive must be read from its
    /// central directory, as a file's is.
    EndedEarly {
        /// The entry's size as the directory lists it.
        listed: u64,
    },
}

/// Checks an entry imported as it arrived ([`stream_zip_entry`]) against
/// the archive's central directory, now that the archive (`archive`, read
/// from its file) is whole: the entry the directory chooses (the one named
/// `wanted`, or the only file) must be the one streamed, with the same
/// CRC-32 and sizes ([`StreamedCheck::Agrees`]), or the same stored entry,
/// longer than the end found in its data made it
/// ([`StreamedCheck::EndedEarly`]). Otherwise the import fails as it would
/// have before a byte was imported (a name missing, several files and none
/// named) or as a corrupt archive (a directory that disagrees with the
/// local header).
pub(crate) fn check_streamed_zip<R: Read + Seek>(
    path: &Path,
    archive: R,
    wanted: Option<&str>,
    streamed: &StreamedEntry,
) -> Result<StreamedCheck, ImageError> {
    let mut archive = ZipArchive::new(archive).map_err(|e| zip_error(path, e))?;
    let (index, name) = choose_zip_entry(path, &mut archive, wanted)?;
    let entry = archive
        .by_index_raw(index)
        .map_err(|e| zip_error(path, e))?;
    let listed = (entry.crc32(), entry.compressed_size(), entry.size());
    let local = (streamed.crc32, streamed.compressed_size, streamed.size);
    if name == streamed.name && listed == local {
        return Ok(StreamedCheck::Agrees);
    }
    let stored = entry.compression() == zip::CompressionMethod::Stored;
    if name == streamed.name
        && streamed.end_in_data
        && stored
        && listed.1 == listed.2
        && listed.2 > streamed.size
    {
        return Ok(StreamedCheck::EndedEarly { listed: listed.2 });
    }
    Err(ImageError::Corrupt {
        path: path.to_path_buf(),
        format: ImageFormat::Zip,
        reason: format!(
            "its central directory lists {name} (CRC-32 {:08x}, {} bytes compressed, {} \
             bytes), but the entry read as it arrived was {} (CRC-32 {:08x}, {} bytes \
             compressed, {} bytes)",
            listed.0, listed.1, listed.2, streamed.name, local.0, local.1, local.2
        ),
    })
}

/// The raw bytes on their way into the pass, shown to a bmap's check: a
/// range that fails is a read error (the pass stops there), which the import
/// then reports as the map's refusal.
pub(crate) struct Checked<'a> {
    inner: &'a mut dyn Read,
    check: Option<&'a mut StreamCheck>,
}

impl<'a> Checked<'a> {
    pub(crate) fn new(inner: &'a mut dyn Read, check: Option<&'a mut StreamCheck>) -> Self {
        Self { inner, check }
    }
}

impl Read for Checked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(check) = self.check.as_deref_mut() {
            check
                .update(&buf[..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        Ok(n)
    }
}

/// An error reading through a decoder: the file's fault or the data's.
pub(crate) fn input_error(path: &Path, format: ImageFormat, error: io::Error) -> ImageError {
    match InputError::classify(error) {
        InputError::Read(source) => ImageError::ReadInput {
            path: path.to_path_buf(),
            source,
        },
        InputError::Corrupt(reason) => ImageError::Corrupt {
            path: path.to_path_buf(),
            format,
            reason: match format {
                // A damaged header, or bytes after the last member that
                // are not another (which `gzip -d` ignores with a warning;
                // refused here, where what was downloaded or copied is not
                // known to be whole): the decoder says the same of both.
                ImageFormat::Gzip if reason == "invalid gzip header" => format!(
                    "{reason} (a damaged file, or data after the end of its last member \
                     that is not another member)"
                ),
                _ => reason,
            },
        },
    }
}

fn zip_error(path: &Path, error: ZipError) -> ImageError {
    let unsupported = |reason: String| ImageError::Unsupported {
        path: path.to_path_buf(),
        format: ImageFormat::Zip,
        reason,
    };
    let corrupt = |reason: String| ImageError::Corrupt {
        path: path.to_path_buf(),
        format: ImageFormat::Zip,
        reason,
    };
    match error {
        ZipError::Io(e) => input_error(path, ImageFormat::Zip, e),
        ZipError::UnsupportedArchive(reason) => unsupported(lowercase_first(reason)),
        ZipError::InvalidPassword => unsupported("the entry is encrypted".to_string()),
        // The end record is the last thing in an archive, so a cut-off archive
        // fails here; say so rather than "could not find EOCD".
        ZipError::InvalidArchive(reason) if reason.contains("EOCD") => corrupt(format!(
            "truncated or damaged: no end of central directory record ({})",
            lowercase_first(&reason)
        )),
        ZipError::InvalidArchive(reason) => corrupt(lowercase_first(&reason)),
        other => corrupt(other.to_string()),
    }
}

/// Decoder messages start with a capital now and then; ours never do.
pub(crate) fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The name an image imported from `path` is known by: the file's name, a
/// control character in it made U+FFFD.
fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| flashrack_core::printable_name(&n.to_string_lossy()))
        .unwrap_or_default()
}
