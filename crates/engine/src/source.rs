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

use flashrack_core::{ChunkKind, ImageManifest, Sha256Digest};
use flashrack_target::AlignedBuf;
use xxhash_rust::xxh3::xxh3_128;

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
    /// A copy, where the file cannot be mapped.
    Read {
        /// Holds the chunk at its start.
        buf: AlignedBuf,
        /// How many bytes of `buf` are the chunk.
        len: usize,
    },
}

impl Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkBytes::Mapped(mapped) => mapped,
            ChunkBytes::Read { buf, len } => &buf[..*len],
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
}

/// The image file and a bounded, shared cache of its chunks.
///
/// Memory: at most `capacity` chunks in the cache, one zero chunk, and whatever
/// chunks the targets hold outside the cache (an attempt holds at most two: the
/// one it writes and the next, or the one it verifies against). A mapped chunk
/// counts in the process's resident memory while it is mapped, like a buffer.
pub struct SharedSource {
    file: File,
    manifest: ImageManifest,
    zeros: AlignedBuf,
    capacity: usize,
    /// Most recently used first. A `std` mutex: it is held only to look up and
    /// reorder a handful of entries, never across I/O (reads happen in the cell's
    /// `OnceLock`, outside the lock).
    cells: Mutex<VecDeque<(u64, Arc<ChunkCell>)>>,
    /// Whether chunks are mapped; cleared at the first sign that this file (or
    /// kernel) cannot map them, after which chunks are read.
    mapping: AtomicBool,
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
        let chunk_size = image.manifest.chunk_size() as usize;
        Ok(Self {
            file,
            zeros: AlignedBuf::zeroed(chunk_size),
            manifest: image.manifest.clone(),
            capacity: capacity.max(1),
            cells: Mutex::new(VecDeque::new()),
            // A file the cache only references may be cut short by its owner
            // at any time: never mapped (see `SourceImage::referenced`).
            mapping: AtomicBool::new(!image.referenced),
        })
    }

    /// The image's manifest.
    pub fn manifest(&self) -> &ImageManifest {
        &self.manifest
    }

    /// A chunk-sized buffer of zeros, aligned for direct I/O.
    pub fn zeros(&self) -> &AlignedBuf {
        &self.zeros
    }

    /// Chunk `index` for writing: not checked (the read-back will be compared
    /// with checked chunks, so a bad source cannot pass).
    pub fn chunk(&self, index: u64) -> Result<Chunk, EngineError> {
        self.get(index, false)
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
        if self.manifest.chunk_kind(index) == ChunkKind::Zero {
            return Ok(Chunk::Zero);
        }
        let cell = self.cell(index);
        let data = cell.data.get_or_init(|| self.read(index)).clone()?;
        if check {
            cell.checked
                .get_or_init(|| {
                    // A manifest has fingerprints (formats 2 and 3) or chunk
                    // digests (format 1), never neither.
                    let intact = match (
                        self.manifest.chunk_fingerprint(index),
                        self.manifest.chunk_digest(index),
                    ) {
                        (Some(fingerprint), _) => xxh3_128(&data) == fingerprint,
                        (None, Some(digest)) => Sha256Digest::of(&data) == digest,
                        (None, None) => false,
                    };
                    if intact {
                        Ok(())
                    } else {
                        let (offset, _) = self.manifest.chunk_span(index);
                        Err(EngineError::SourceCorrupt { offset })
                    }
                })
                .clone()?;
        }
        Ok(Chunk::Data(data))
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

    /// Maps chunk `index` (reads it where the file cannot be mapped).
    fn read(&self, index: u64) -> Result<Arc<ChunkBytes>, EngineError> {
        let (offset, len) = self.manifest.chunk_span(index);
        let read_error = |detail: String| EngineError::SourceRead { offset, detail };
        if self.mapping.load(Ordering::Relaxed) {
            match MappedChunk::map(&self.file, offset, len) {
                Ok(mapped) => return Ok(Arc::new(ChunkBytes::Mapped(mapped))),
                Err(MapError::Unreadable(e)) => return Err(read_error(e.to_string())),
                Err(MapError::Unsupported(e)) => {
                    tracing::debug!(error = %e, "the image cannot be mapped; reading chunks instead");
                    self.mapping.store(false, Ordering::Relaxed);
                }
            }
        }
        let mut buf = AlignedBuf::zeroed(len);
        self.file
            .read_exact_at(&mut buf[..len], offset)
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
            let (_, len) = self.manifest.chunk_span(index);
            match self.checked_chunk(index)? {
                Chunk::Zero => sink(&self.zeros[..len]),
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
}
