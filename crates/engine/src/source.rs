//! The shared source: a bounded cache of image chunks that all targets read from.
//!
//! Targets that move at about the same pace ask for the same chunks at about the
//! same time; the first asks the file and the others share its bytes (`Arc`). A
//! target that falls behind finds its chunks evicted and maps them again, from the
//! page cache in practice: the disk is read once, and the chunks mapped at once
//! (resident in the process) stay bounded by `(cache chunks + 2 × targets) ×
//! chunk size` whatever the image size (see [`SharedSource`]).
//!
//! A chunk's bytes are the image file's pages in the page cache, mapped
//! read-only ([`MappedChunk`]): writing a chunk to a target and comparing a
//! read-back with it cost no copy of the source, whatever the number of targets.
//! On a file system that cannot map files, and for a file the image cache only
//! references (its owner may cut it short), the chunk is read into a buffer
//! instead.
//!
//! Before anything is verified against a cached chunk, the chunk is checked once
//! against the manifest: its XXH3-128 fingerprint (manifest format 2), or its
//! sha256 when the manifest has no fingerprints (format 1). See
//! [`SharedSource::checked_chunk`] for why a fingerprint is enough there.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use flashrack_core::{ChunkKind, DataRanges, ImageManifest, Sha256Digest};
use flashrack_target::AlignedBuf;
use xxhash_rust::xxh3::xxh3_128;

use crate::feed::{Follower, ImageFeed, WaitError, Waiter};
use crate::mapped::{MapError, MappedChunk};
use crate::{EngineError, SourceImage};

/// A chunk as the source serves it.
#[derive(Clone)]
pub enum Chunk {
    /// All zero: use [`SharedSource::zeros`].
    Zero,
    /// Data, shared between targets.
    Data(Arc<ChunkBytes>),
}

/// The bytes of one data chunk. Derefs to exactly the chunk's bytes.
pub enum ChunkBytes {
    /// The image file's own pages, mapped.
    Mapped(MappedChunk),
    /// A copy, where the file cannot be mapped (or may not be: a referenced
    /// file, an import being followed).
    Read {
        /// Holds the chunk at its start; back to the source's pool when the
        /// last holder drops the chunk.
        buf: PooledBuf,
        /// How many bytes of `buf` are the chunk.
        len: usize,
    },
    /// Bytes an importer handed over as they were ([`ImageFeed::push_owned`]:
    /// its own buffer, starting on a [`HANDED_ALIGN`]-byte boundary, which
    /// goes back to the importer when the last holder drops the chunk).
    Handed(Box<dyn AsRef<[u8]> + Send + Sync>),
}

/// Where bytes handed over to a feed must start for a target to be written
/// from them as they are (direct I/O wants its buffers aligned to the
/// device's logical block; 4096 covers every common one, as
/// [`AlignedBuf`] does). Bytes that do not are copied.
pub const HANDED_ALIGN: usize = 4096;

impl std::fmt::Debug for ChunkBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkBytes::Mapped(_) => write!(f, "ChunkBytes::Mapped({} bytes)", self.len()),
            ChunkBytes::Read { len, .. } => write!(f, "ChunkBytes::Read({len} bytes)"),
            ChunkBytes::Handed(_) => write!(f, "ChunkBytes::Handed({} bytes)", self.len()),
        }
    }
}

impl Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkBytes::Mapped(mapped) => mapped,
            ChunkBytes::Read { buf, len } => &buf[..*len],
            ChunkBytes::Handed(bytes) => (**bytes).as_ref(),
        }
    }
}

/// Free chunk buffers, reused by the next chunk read.
///
/// Why: a buffer of a chunk's size is a fresh `mmap` for the allocator (the
/// `flashrack` binary fixes glibc's mmap threshold at 1 MiB, f9b66cf), which
/// the kernel zero-fills page by page at its first touch and unmaps when it
/// is freed; on this project's VMs, whose freed memory goes back to the host,
/// first touches are slow (bench/README.md). A source that reads its chunks
/// (a followed import, a referenced file) read each into a new buffer, once
/// in the write pass and once more in the read-back.
///
/// Bounded: at most [`POOL_KEEP`] free buffers are kept; a buffer given back
/// to a full pool is freed. The buffers in use are bounded by the source
/// (its cache and what its targets hold), so memory stays bounded whatever
/// the image size.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    /// A std mutex: held only to push or pop, never across I/O.
    free: Mutex<Vec<AlignedBuf>>,
}

/// How many free buffers a [`BufferPool`] keeps: in a steady pass a chunk
/// let go is taken again by the next read at once, so a couple suffice.
const POOL_KEEP: usize = 2;

impl BufferPool {
    /// A buffer of exactly `len` bytes: a free one of that size, else a new
    /// one. Its bytes are whatever it held (the caller overwrites them).
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            free.iter()
                .position(|b| b.len() == len)
                .map(|at| free.swap_remove(at))
        };
        PooledBuf {
            buf: Some(reused.unwrap_or_else(|| AlignedBuf::zeroed(len))),
            pool: Arc::downgrade(self),
        }
    }

    fn give_back(&self, buf: AlignedBuf) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_KEEP {
            free.push(buf);
        }
    }

    /// How many free buffers the pool holds (tests).
    #[cfg(test)]
    fn free_count(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

/// A chunk buffer from a [`BufferPool`], given back to it when dropped (freed
/// if the pool is gone or full).
pub struct PooledBuf {
    /// Always `Some` until dropped.
    buf: Option<AlignedBuf>,
    pool: std::sync::Weak<BufferPool>,
}

impl Deref for PooledBuf {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        self.buf
            .as_ref()
            .expect("a pooled buffer is present until dropped")
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        self.buf
            .as_mut()
            .expect("a pooled buffer is present until dropped")
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let (Some(buf), Some(pool)) = (self.buf.take(), self.pool.upgrade()) {
            pool.give_back(buf);
        }
    }
}

/// One cached chunk: read at most once, checked at most once.
#[derive(Default)]
struct ChunkCell {
    /// The bytes, read by the first target that asks.
    data: OnceLock<Result<Arc<ChunkBytes>, EngineError>>,
    /// Whether the bytes are still what the import digested (fingerprint, or
    /// sha256 for a format-1 manifest), checked by the first target that
    /// verifies against this chunk.
    checked: OnceLock<Result<(), EngineError>>,
    /// Whether the bytes of a followed import's chunk were read from its file
    /// (the feed no longer held them) rather than taken from the feed; set
    /// once, before `data` is.
    from_file: AtomicBool,
}

/// The image file and a bounded, shared cache of its chunks.
///
/// Memory: at most `capacity` chunks in the cache, one zero chunk, and whatever
/// chunks the targets hold outside the cache (an attempt holds at most two: the
/// one it writes and the next, or the one it verifies against). A mapped chunk
/// counts in the process's resident memory while it is mapped, like a buffer.
pub struct SharedSource {
    /// Where the bytes come from.
    origin: Origin,
    /// The image's manifest: known at opening for a cached image, at the end
    /// of the import for one followed through a feed.
    manifest: OnceLock<ImageManifest>,
    /// A chunk of zeros, made when first asked for (a followed image's chunk
    /// size is known only once its import has begun).
    zeros: OnceLock<AlignedBuf>,
    capacity: usize,
    /// Most recently used first. A `std` mutex: it is held only to look up and
    /// reorder a handful of entries, never across I/O (reads happen in the cell's
    /// `OnceLock`, outside the lock).
    cells: Mutex<VecDeque<(u64, Arc<ChunkCell>)>>,
    /// Whether chunks are mapped; cleared at the first sign that this file (or
    /// kernel) cannot map them, after which chunks are read.
    mapping: AtomicBool,
    /// Buffers of chunks read (not mapped), reused.
    pool: Arc<BufferPool>,
}

/// Where a source's bytes come from.
enum Origin {
    /// A complete image file.
    File(File),
    /// An image still being imported: its chunks as the import produces them,
    /// read from the file the feed names.
    Feed(Arc<ImageFeed>),
}

/// Where a chunk lies and how to check it.
struct ChunkInfo {
    offset: u64,
    len: usize,
    zero: bool,
    fingerprint: Option<u128>,
    digest: Option<Sha256Digest>,
}

impl SharedSource {
    /// Opens the image file and checks its size against the manifest.
    pub fn open(image: &SourceImage, capacity: usize) -> Result<Self, EngineError> {
        let open_error = |detail: String| EngineError::SourceOpen {
            path: image.path.clone(),
            detail,
        };
        let file = File::open(&image.path).map_err(|e| open_error(e.to_string()))?;
        let len = file
            .metadata()
            .map_err(|e| open_error(e.to_string()))?
            .len();
        if len != image.manifest.size() {
            return Err(open_error(format!(
                "the file holds {len} bytes but the manifest says {}",
                image.manifest.size()
            )));
        }
        Ok(Self {
            origin: Origin::File(file),
            zeros: OnceLock::new(),
            manifest: OnceLock::from(image.manifest.clone()),
            capacity: capacity.max(1),
            cells: Mutex::new(VecDeque::new()),
            // A file the cache only references may be cut short by its owner
            // at any time: never mapped (see `SourceImage::referenced`).
            mapping: AtomicBool::new(!image.referenced),
            pool: Arc::default(),
        })
    }

    /// A source that follows an import through `feed` (see [`crate::feed`]):
    /// chunks are served once the import has produced them, read from the
    /// file it names (never mapped: it may be the operator's own file, or one
    /// still being written), and the manifest is known at the feed's end.
    pub fn following(feed: Arc<ImageFeed>, capacity: usize) -> Self {
        Self {
            origin: Origin::Feed(feed),
            manifest: OnceLock::new(),
            zeros: OnceLock::new(),
            capacity: capacity.max(1),
            cells: Mutex::new(VecDeque::new()),
            mapping: AtomicBool::new(false),
            pool: Arc::default(),
        }
    }

    /// A target that will follow the import (registered when its attempt
    /// starts): the import keeps pace with it, and the feed holds chunks for
    /// it, while it keeps up (see [`ImageFeed::follow`]); `None` for a
    /// source that follows no import.
    pub fn follow(&self) -> Option<Follower> {
        match &self.origin {
            Origin::Feed(feed) => Some(feed.follow()),
            Origin::File(_) => None,
        }
    }

    /// Whether the source was built on an import (a one-shot flash of a file
    /// or a download being imported in the same run), whether or not it has
    /// ended: its chunks were handed over as they were imported and are, once
    /// gone from the feed, in neither memory nor the page cache (the import
    /// reads and stores with `O_DIRECT` where it can).
    pub fn follows_import(&self) -> bool {
        matches!(self.origin, Origin::Feed(_))
    }

    /// Whether the source follows an import that may not have ended yet.
    pub fn is_following(&self) -> bool {
        matches!(self.origin, Origin::Feed(_)) && self.manifest.get().is_none()
    }

    /// The image's size if known now: a cached image's, or the size a followed
    /// import announced (a raw file's); `None` for a compressed file still
    /// being imported.
    pub fn size_hint(&self) -> Option<u64> {
        match (self.manifest.get(), &self.origin) {
            (Some(manifest), _) => Some(manifest.size()),
            (None, Origin::Feed(feed)) => feed.size_hint(),
            (None, Origin::File(_)) => None,
        }
    }

    /// The image's manifest.
    ///
    /// # Panics
    /// For a source that follows an import, before [`complete`](Self::complete)
    /// has answered: the manifest does not exist yet.
    pub fn manifest(&self) -> &ImageManifest {
        self.manifest
            .get()
            .expect("a followed image's manifest is asked for only once its import completed")
    }

    /// Waits until the image is complete: at once for a cached image; for one
    /// followed through a feed, until its import ends (a failed import is a
    /// source failure). After it answers `Ok`, [`manifest`](Self::manifest)
    /// is the image's.
    pub(crate) fn complete(&self, waiter: &Waiter<'_>) -> Result<(), WaitError> {
        if self.manifest.get().is_some() {
            return Ok(());
        }
        let Origin::Feed(feed) = &self.origin else {
            unreachable!("a file source has its manifest from the start");
        };
        let manifest = feed.wait_end(waiter)?;
        let _ = self.manifest.set(manifest);
        Ok(())
    }

    /// For the write pass: where chunk `index` lies, its bytes, and whether
    /// they were read from a followed import's file instead of taken from
    /// its feed (by this pass or by another target's, shared: the feed no
    /// longer held them); waits for the import to produce the chunk if the
    /// source follows one. `None` past the image's end.
    pub(crate) fn next_chunk(
        &self,
        index: u64,
        waiter: &Waiter<'_>,
        follower: Option<&Follower>,
    ) -> Result<Option<(u64, usize, Chunk, bool)>, WaitError> {
        if let Origin::Feed(feed) = &self.origin {
            if feed.wait_chunk(index, waiter, follower)?.is_none() {
                return Ok(None);
            }
        } else if index >= self.manifest().chunk_count() {
            return Ok(None);
        }
        let info = self.info(index)?;
        let (chunk, from_file) = self.get_from(index, false)?;
        Ok(Some((info.offset, info.len, chunk, from_file)))
    }

    /// A chunk-sized buffer of zeros, aligned for direct I/O.
    pub fn zeros(&self) -> &AlignedBuf {
        self.zeros.get_or_init(|| {
            // A zero chunk is served only once it is known, so a feed has begun
            // (and told its chunk size) before anyone asks for zeros.
            let chunk_size = match (self.manifest.get(), &self.origin) {
                (Some(manifest), _) => manifest.chunk_size(),
                (None, Origin::Feed(feed)) => feed.chunk_size().unwrap_or(4096),
                (None, Origin::File(_)) => 4096,
            };
            AlignedBuf::zeroed(chunk_size as usize)
        })
    }

    /// Where chunk `index` lies and what it must be: from the manifest, or
    /// from the feed for a chunk of an import still running.
    fn info(&self, index: u64) -> Result<ChunkInfo, EngineError> {
        if let Some(manifest) = self.manifest.get() {
            let (offset, len) = manifest.chunk_span(index);
            return Ok(ChunkInfo {
                offset,
                len,
                zero: manifest.chunk_kind(index) == ChunkKind::Zero,
                fingerprint: manifest.chunk_fingerprint(index),
                digest: manifest.chunk_digest(index),
            });
        }
        let Origin::Feed(feed) = &self.origin else {
            unreachable!("a file source has its manifest from the start");
        };
        let span = feed.span(index).ok_or_else(|| EngineError::SourceFailed {
            detail: format!("chunk {index} was asked for before the import produced it"),
        })?;
        Ok(ChunkInfo {
            offset: span.offset,
            len: span.len,
            zero: span.zero,
            fingerprint: Some(span.fingerprint),
            digest: None,
        })
    }

    /// Asks the kernel to start reading chunk `index` of a complete image
    /// file into the page cache, without waiting: the parts inside `ranges`
    /// for a sparse pass, the whole chunk otherwise; nothing for a zero
    /// chunk, or for a source that follows an import (its chunks arrive as
    /// the import makes them). The write pass asks for a few chunks ahead
    /// of the one it fetches (see `attempt::PREFETCH_CHUNKS`), so that a
    /// cold image is read from the disk with several reads in flight
    /// instead of one chunk at a time behind the writes. Best effort: an
    /// error only loses the head start.
    pub fn prefetch(&self, index: u64, ranges: Option<&DataRanges>) {
        let (Origin::File(file), Some(manifest)) = (&self.origin, self.manifest.get()) else {
            return;
        };
        if index >= manifest.chunk_count() || manifest.chunk_kind(index) == ChunkKind::Zero {
            return;
        }
        let (offset, len) = manifest.chunk_span(index);
        let advise = |at: u64, n: u64| {
            if let Some(n) = std::num::NonZeroU64::new(n) {
                let _ = rustix::fs::fadvise(file, at, Some(n), rustix::fs::Advice::WillNeed);
            }
        };
        match ranges {
            None => advise(offset, len as u64),
            Some(ranges) => {
                for (at, n) in ranges.within(offset, len as u64) {
                    advise(at, n);
                }
            }
        }
    }

    /// Chunk `index` for writing: not checked (the read-back will be compared
    /// with checked chunks, so a bad source cannot pass).
    pub fn chunk(&self, index: u64) -> Result<Chunk, EngineError> {
        self.get(index, false)
    }

    /// As [`chunk`](Self::chunk), and whether its bytes were read from a
    /// followed import's file instead of taken from the feed.
    pub(crate) fn chunk_from(&self, index: u64) -> Result<(Chunk, bool), EngineError> {
        self.get_from(index, false)
    }

    /// Chunk `index` for verification: its bytes are proven to be the ones the
    /// import digested (checked once per cached copy, not once per target).
    ///
    /// The check is the chunk's XXH3-128 fingerprint from the manifest, or its
    /// sha256 for a manifest without fingerprints (format 1). A
    /// non-cryptographic fingerprint is enough here: it guards against the
    /// cached file changing since the import (bit rot, a bad disk), not against
    /// an attacker, who would need root to write the cache and could then
    /// rewrite the manifest too. The import computed the image's sha256, every
    /// chunk's sha256 and every chunk's fingerprint over exactly the same bytes,
    /// so a read-back byte-equal to fingerprint-checked chunks has the image's
    /// sha256.
    pub fn checked_chunk(&self, index: u64) -> Result<Chunk, EngineError> {
        self.get(index, true)
    }

    fn get(&self, index: u64, check: bool) -> Result<Chunk, EngineError> {
        self.get_from(index, check).map(|(chunk, _)| chunk)
    }

    /// As [`get`](Self::get), and whether the bytes were read from a followed
    /// import's file instead of taken from its feed.
    fn get_from(&self, index: u64, check: bool) -> Result<(Chunk, bool), EngineError> {
        let info = self.info(index)?;
        if info.zero {
            return Ok((Chunk::Zero, false));
        }
        let cell = self.cell(index);
        let data = cell
            .data
            .get_or_init(|| self.read(index, &info, &cell.from_file))
            .clone()?;
        let from_file = cell.from_file.load(Ordering::Relaxed);
        if check {
            cell.checked
                .get_or_init(|| {
                    // A manifest has fingerprints (formats 2 and 3) or chunk
                    // digests (format 1), never neither.
                    let intact = match (info.fingerprint, info.digest) {
                        (Some(fingerprint), _) => xxh3_128(&data) == fingerprint,
                        (None, Some(digest)) => Sha256Digest::of(&data) == digest,
                        (None, None) => false,
                    };
                    if intact {
                        Ok(())
                    } else {
                        Err(EngineError::SourceCorrupt {
                            offset: info.offset,
                        })
                    }
                })
                .clone()?;
        }
        Ok((Chunk::Data(data), from_file))
    }

    fn cell(&self, index: u64) -> Arc<ChunkCell> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = cells.iter().position(|(i, _)| *i == index) {
            let entry = cells.remove(pos).expect("position is in range");
            let cell = entry.1.clone();
            cells.push_front(entry);
            return cell;
        }
        let cell = Arc::new(ChunkCell::default());
        cells.push_front((index, cell.clone()));
        cells.truncate(self.capacity);
        cell
    }

    /// Maps chunk `index` at `info` (reads it where the file cannot be
    /// mapped; from a feed: the bytes it holds, else its file, and then
    /// sets `from_file`).
    fn read(
        &self,
        index: u64,
        info: &ChunkInfo,
        from_file: &AtomicBool,
    ) -> Result<Arc<ChunkBytes>, EngineError> {
        let (offset, len) = (info.offset, info.len);
        let read_error = |detail: String| EngineError::SourceRead { offset, detail };
        let fed;
        let file = match &self.origin {
            Origin::File(file) => file,
            Origin::Feed(feed) => {
                // Handed over by the import and still held: no read at all.
                if let Some(held) = feed.held(index) {
                    return Ok(held);
                }
                fed = feed
                    .file()
                    .ok_or_else(|| read_error("the import has not begun".into()))?;
                from_file.store(true, Ordering::Relaxed);
                // Not held (a target further behind, a read-back): read
                // through the page cache, so that the chunk comes from the
                // disk once and is shared by every target that needs it,
                // however far apart they run (DESIGN: the source is read
                // from disk once, never once per target per pass).
                &*fed
            }
        };
        if self.mapping.load(Ordering::Relaxed) {
            match MappedChunk::map(file, offset, len) {
                Ok(mapped) => return Ok(Arc::new(ChunkBytes::Mapped(mapped))),
                Err(MapError::Unreadable(e)) => return Err(read_error(e.to_string())),
                Err(MapError::Unsupported(e)) => {
                    tracing::debug!(error = %e, "the image cannot be mapped; reading chunks instead");
                    self.mapping.store(false, Ordering::Relaxed);
                }
            }
        }
        let mut buf = self.pool.take(len);
        file.read_exact_at(&mut buf[..len], offset)
            .map_err(|e| read_error(e.to_string()))?;
        Ok(Arc::new(ChunkBytes::Read { buf, len }))
    }

    /// Bytes `[0, end)` of the image, fed to `sink` chunk by chunk; used to hash the
    /// part of a target that matched before a mismatch.
    pub fn for_each_prefix_chunk(
        &self,
        end_chunk: u64,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), EngineError> {
        for index in 0..end_chunk {
            let (_, len) = self.manifest().chunk_span(index);
            match self.checked_chunk(index)? {
                Chunk::Zero => sink(&self.zeros()[..len]),
                Chunk::Data(data) => sink(&data),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 8192;

    /// Three data chunks, a zero chunk and a short data chunk, with the manifest
    /// the import would write (fingerprints or not).
    fn image(dir: &std::path::Path, fingerprints: bool) -> (SourceImage, Vec<u8>) {
        let bytes: Vec<u8> = (0..4 * CHUNK + 100)
            .map(|i| {
                if (3 * CHUNK..4 * CHUNK).contains(&i) {
                    0
                } else {
                    (i % 251) as u8 + 1
                }
            })
            .collect();
        let path = dir.join("image.raw");
        std::fs::write(&path, &bytes).unwrap();
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
        let mut manifest = ImageManifest::new(
            Sha256Digest::of(&bytes),
            bytes.len() as u64,
            CHUNK as u32,
            chunks.iter().map(|c| Sha256Digest::of(c)).collect(),
            chunks.iter().map(|c| c.iter().all(|&b| b == 0)).collect(),
        )
        .unwrap();
        if fingerprints {
            manifest = manifest
                .with_chunk_fingerprints(chunks.iter().map(|c| xxh3_128(c)).collect())
                .unwrap();
        }
        (SourceImage::cached(path, manifest), bytes)
    }

    fn data(chunk: Chunk) -> Arc<ChunkBytes> {
        match chunk {
            Chunk::Data(data) => data,
            Chunk::Zero => panic!("a data chunk was expected"),
        }
    }

    #[test]
    fn chunks_are_the_image_bytes_mapped_in_place_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let (image, bytes) = image(dir.path(), true);
        let source = SharedSource::open(&image, 2).unwrap();
        let first = data(source.checked_chunk(0).unwrap());
        assert!(matches!(*first, ChunkBytes::Mapped(_)));
        assert_eq!(&first[..], &bytes[..CHUNK]);
        // A second request while the chunk is cached shares the same bytes.
        let again = data(source.chunk(0).unwrap());
        assert!(Arc::ptr_eq(&first, &again));
        // The short last chunk exposes exactly its bytes.
        let short = data(source.checked_chunk(4).unwrap());
        assert_eq!(short.len(), 100);
        assert_eq!(&short[..], &bytes[4 * CHUNK..]);
        assert!(matches!(source.chunk(3).unwrap(), Chunk::Zero));
    }

    #[test]
    fn a_file_the_cache_only_references_is_read_never_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut image, bytes) = image(dir.path(), true);
        image.referenced = true;
        let source = SharedSource::open(&image, 2).unwrap();
        let first = data(source.checked_chunk(0).unwrap());
        assert!(matches!(*first, ChunkBytes::Read { .. }));
        assert_eq!(&first[..], &bytes[..CHUNK]);
        // Changed by its owner after the import: the fingerprint catches it.
        let mut changed = bytes.clone();
        changed[CHUNK + 5] ^= 1;
        std::fs::write(&image.path, &changed).unwrap();
        assert!(matches!(
            source.checked_chunk(1),
            Err(EngineError::SourceCorrupt { offset }) if offset == CHUNK as u64
        ));
    }

    #[test]
    fn chunks_read_into_buffers_reuse_them_and_the_pool_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.raw");
        let chunks = 16;
        let bytes: Vec<u8> = (0..chunks * CHUNK).map(|i| (i % 241) as u8 + 1).collect();
        std::fs::write(&path, &bytes).unwrap();
        let manifest = ImageManifest::fingerprinted(
            Sha256Digest::of(&bytes),
            bytes.len() as u64,
            CHUNK as u32,
            bytes.chunks(CHUNK).map(xxh3_128).collect(),
            vec![false; chunks],
        )
        .unwrap();
        let image = SourceImage {
            path,
            manifest,
            referenced: true,
        };
        // A cache of one chunk: each new chunk evicts the one before.
        let source = SharedSource::open(&image, 1).unwrap();
        let first = data(source.checked_chunk(0).unwrap());
        let at = first.as_ptr();
        drop(first);
        // Chunk 0, evicted and held by nobody, gave its buffer back: chunk 1
        // is read into it, not into a new one.
        let second = data(source.checked_chunk(1).unwrap());
        assert_eq!(second.as_ptr(), at, "chunk 1 reuses chunk 0's buffer");
        assert_eq!(&second[..], &bytes[CHUNK..2 * CHUNK]);
        drop(second);
        // Ten chunks held at once (as targets far apart would), then let go:
        // the pool keeps only a few of their buffers.
        let held: Vec<_> = (2..12)
            .map(|i| data(source.checked_chunk(i).unwrap()))
            .collect();
        for (i, chunk) in held.iter().enumerate() {
            let i = i + 2;
            assert_eq!(&chunk[..], &bytes[i * CHUNK..(i + 1) * CHUNK], "chunk {i}");
        }
        drop(held);
        assert_eq!(source.pool.free_count(), POOL_KEEP);
        // Reused buffers hold the new chunk's bytes, whatever they held.
        for i in (0..chunks).rev() {
            let chunk = data(source.checked_chunk(i as u64).unwrap());
            assert_eq!(&chunk[..], &bytes[i * CHUNK..(i + 1) * CHUNK], "chunk {i}");
        }
        assert!(source.pool.free_count() <= POOL_KEEP);
    }

    #[test]
    fn where_mapping_is_unsupported_chunks_are_read_with_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (image, bytes) = image(dir.path(), true);
        let source = SharedSource::open(&image, 2).unwrap();
        // As after a first mapping failed with "unsupported".
        source.mapping.store(false, Ordering::Relaxed);
        let first = data(source.checked_chunk(0).unwrap());
        assert!(matches!(*first, ChunkBytes::Read { .. }));
        assert_eq!(&first[..], &bytes[..CHUNK]);
        let short = data(source.checked_chunk(4).unwrap());
        assert_eq!(&short[..], &bytes[4 * CHUNK..]);
    }

    #[test]
    fn an_evicted_chunk_is_mapped_again_with_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (image, bytes) = image(dir.path(), true);
        // A cache of one chunk: every new chunk evicts the previous one.
        let source = SharedSource::open(&image, 1).unwrap();
        let first = data(source.checked_chunk(0).unwrap());
        let _second = data(source.checked_chunk(1).unwrap());
        let again = data(source.checked_chunk(0).unwrap());
        assert!(!Arc::ptr_eq(&first, &again), "chunk 0 was evicted");
        assert_eq!(&again[..], &bytes[..CHUNK]);
    }

    #[test]
    fn a_cache_file_cut_short_after_opening_is_a_source_error() {
        let dir = tempfile::tempdir().unwrap();
        let (image, _) = image(dir.path(), true);
        let source = SharedSource::open(&image, 1).unwrap();
        // The cache file loses its last two chunks after the run opened it.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image.path)
            .unwrap();
        file.set_len(3 * CHUNK as u64).unwrap();
        assert!(data(source.chunk(2).unwrap()).len() == CHUNK);
        match source.chunk(4) {
            Err(EngineError::SourceRead { offset, .. }) => assert_eq!(offset, 4 * CHUNK as u64),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a chunk past the end of the file was served"),
        }
    }

    fn damage(image: &SourceImage, at: usize) {
        let mut bytes = std::fs::read(&image.path).unwrap();
        bytes[at] ^= 0x40;
        std::fs::write(&image.path, bytes).unwrap();
    }

    #[test]
    fn a_changed_cache_file_fails_the_fingerprint_check_but_not_the_write_path() {
        let dir = tempfile::tempdir().unwrap();
        let (image, _) = image(dir.path(), true);
        damage(&image, CHUNK + 77);
        let source = SharedSource::open(&image, 8).unwrap();
        assert!(source.checked_chunk(0).is_ok());
        assert!(source.chunk(1).is_ok(), "writing does not check");
        assert!(matches!(
            source.checked_chunk(1),
            Err(EngineError::SourceCorrupt { offset }) if offset == CHUNK as u64
        ));
        // Checked once per cached copy: the verdict is remembered.
        assert!(source.checked_chunk(1).is_err());
    }

    #[test]
    fn without_fingerprints_the_check_falls_back_to_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let (image, bytes) = image(dir.path(), false);
        assert!(!image.manifest.has_chunk_fingerprints());
        let source = SharedSource::open(&image, 8).unwrap();
        assert_eq!(
            &data(source.checked_chunk(4).unwrap())[..],
            &bytes[4 * CHUNK..]
        );
        damage(&image, 2 * CHUNK + 5);
        let source = SharedSource::open(&image, 8).unwrap();
        assert!(matches!(
            source.checked_chunk(2),
            Err(EngineError::SourceCorrupt { offset }) if offset == 2 * CHUNK as u64
        ));
    }

    #[test]
    fn a_wrong_fingerprint_in_the_manifest_is_a_corrupt_source() {
        let dir = tempfile::tempdir().unwrap();
        let (mut image, _) = image(dir.path(), true);
        let mut fingerprints: Vec<u128> = (0..image.manifest.chunk_count())
            .map(|i| image.manifest.chunk_fingerprint(i).unwrap())
            .collect();
        fingerprints[0] ^= 1;
        image.manifest = image
            .manifest
            .clone()
            .with_chunk_fingerprints(fingerprints)
            .unwrap();
        let source = SharedSource::open(&image, 8).unwrap();
        assert!(matches!(
            source.checked_chunk(0),
            Err(EngineError::SourceCorrupt { offset: 0 })
        ));
    }
    #[test]
    fn a_followed_import_serves_the_bytes_it_was_handed_and_shares_one_read_of_the_rest() {
        use crate::feed::{ImageFeed, Waiter, HELD_CHUNKS};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("importing.raw");
        let chunks = HELD_CHUNKS + 4;
        let bytes: Vec<u8> = (0..chunks * CHUNK + 100)
            .map(|i| (i % 249) as u8 + 1)
            .collect();
        // The file holds other bytes where the first chunk lies: what the
        // import handed over is what a target gets while the feed holds it.
        let mut in_file = bytes.clone();
        in_file[..CHUNK].fill(0xAB);
        std::fs::write(&path, &in_file).unwrap();
        let feed = ImageFeed::new();
        feed.begin(
            File::open(&path).unwrap(),
            CHUNK as u32,
            Some(bytes.len() as u64),
        )
        .unwrap();
        let source = SharedSource::following(feed.clone(), 2);
        let cancel = AtomicBool::new(false);
        let waiter = Waiter {
            cancel: &cancel,
            beat: &|| {},
        };
        for chunk in bytes.chunks(CHUNK) {
            feed.push_data(chunk, xxh3_128(chunk)).unwrap();
        }
        let Ok(Some((_, _, Chunk::Data(first), true))) = source.next_chunk(0, &waiter, None) else {
            panic!("chunk 0 was fed, and let go: read from the file");
        };
        assert!(
            first.iter().all(|&b| b == 0xAB),
            "chunk 0 came from the file, not from the feed"
        );
        drop(first);
        let last = chunks as u64;
        let Ok(Some((_, len, Chunk::Data(held), false))) = source.next_chunk(last, &waiter, None)
        else {
            panic!("the last chunk was fed, and is held");
        };
        assert_eq!(len, 100);
        assert_eq!(&held[..], &bytes[chunks * CHUNK..]);
        // Chunk 1 is no longer held: read from the file once, and a second
        // target behind gets the same bytes, not a read of its own.
        let Ok(Some((_, _, Chunk::Data(read), true))) = source.next_chunk(1, &waiter, None) else {
            panic!("chunk 1 was fed, and read from the file");
        };
        assert_eq!(&read[..], &bytes[CHUNK..2 * CHUNK]);
        // Shared, but still bytes the feed no longer held.
        let Ok(Some((_, _, Chunk::Data(again), true))) = source.next_chunk(1, &waiter, None) else {
            panic!("chunk 1 was fed, and read from the file");
        };
        assert!(Arc::ptr_eq(&read, &again), "one read of chunk 1, shared");
        drop((held, read, again));
        feed.finish(Sha256Digest::of(&bytes)).unwrap();
        assert!(source.complete(&waiter).is_ok());
        // The read-back's check: chunk 0 from the file is not what the
        // import digested.
        assert!(matches!(
            source.checked_chunk(0),
            Err(EngineError::SourceCorrupt { offset: 0 })
        ));
        let last = source.checked_chunk(chunks as u64).unwrap();
        assert!(matches!(last, Chunk::Data(ref d) if d[..] == bytes[chunks * CHUNK..]));
    }

    #[test]
    fn a_followed_import_is_read_never_mapped_and_keeps_at_most_its_capacity() {
        use crate::feed::{ImageFeed, Waiter};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("importing.raw");
        let bytes: Vec<u8> = (0..64 * CHUNK).map(|i| (i % 253) as u8 + 1).collect();
        std::fs::write(&path, &bytes).unwrap();
        let feed = ImageFeed::new();
        feed.begin(
            File::open(&path).unwrap(),
            CHUNK as u32,
            Some(bytes.len() as u64),
        )
        .unwrap();
        let source = SharedSource::following(feed.clone(), 3);
        assert!(source.is_following());
        let cancel = AtomicBool::new(false);
        let waiter = Waiter {
            cancel: &cancel,
            beat: &|| {},
        };
        for (index, chunk) in bytes.chunks(CHUNK).enumerate() {
            feed.push(chunk.len(), false, xxh3_128(chunk)).unwrap();
            let Ok(Some((offset, len, Chunk::Data(data), true))) =
                source.next_chunk(index as u64, &waiter, None)
            else {
                panic!("chunk {index} was fed");
            };
            assert_eq!((offset, len), ((index * CHUNK) as u64, CHUNK));
            assert!(matches!(*data, ChunkBytes::Read { .. }));
            assert_eq!(&data[..], chunk);
            let cached = source.cells.lock().unwrap().len();
            assert!(cached <= 3, "{cached} chunks cached");
        }
        // A chunk whose bytes changed since the import announced it.
        let mut changed = bytes.clone();
        changed[5] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        feed.finish(Sha256Digest::of(&bytes)).unwrap();
        assert!(matches!(source.next_chunk(64, &waiter, None), Ok(None)));
        assert!(source.complete(&waiter).is_ok());
        assert!(!source.is_following());
        assert_eq!(source.manifest().size(), bytes.len() as u64);
        assert!(matches!(
            source.checked_chunk(0),
            Err(EngineError::SourceCorrupt { offset: 0 })
        ));
    }

    #[test]
    fn a_prefetch_reads_the_chunk_or_its_mapped_parts_into_the_page_cache_and_skips_zeros() {
        // On a disk (not tmpfs, whose pages are always resident).
        let dir = tempfile::tempdir().unwrap();
        let (image, _) = image(dir.path(), true);
        let evict = || {
            let file = File::open(&image.path).unwrap();
            file.sync_all().unwrap();
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            assert_eq!(flashrack_testkit::page_cache_bytes(&image.path), 0);
        };
        // Waits (bounded) until `bytes` of the image are in the page cache.
        let resident = |bytes: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let now = flashrack_testkit::page_cache_bytes(&image.path);
                if now >= bytes || std::time::Instant::now() > deadline {
                    return now;
                }
                std::thread::yield_now();
            }
        };
        let source = SharedSource::open(&image, 2).unwrap();

        evict();
        // A zero chunk is never read; a data chunk is, whole.
        source.prefetch(3, None);
        source.prefetch(1, None);
        assert_eq!(resident(CHUNK as u64), CHUNK as u64);

        // A sparse pass: only the mapped part of chunk 2 (its second page).
        evict();
        let ranges =
            DataRanges::new(image.manifest.size(), vec![(2 * CHUNK as u64 + 4096, 4096)]).unwrap();
        source.prefetch(3, Some(&ranges));
        source.prefetch(2, Some(&ranges));
        assert_eq!(resident(4096), 4096);
    }
}
