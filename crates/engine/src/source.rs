//! The shared source: a bounded cache of image chunks that all targets read from.
//!
//! Targets that move at about the same pace ask for the same chunks at about the
//! same time; the first asks the file and the others share its buffer (`Arc`). A
//! target that falls behind finds its chunks evicted and reads them again, from the
//! page cache in practice: the disk is read once, and memory stays bounded by
//! `(cache chunks + targets) × chunk size` whatever the image size.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};

use flashrack_core::{ChunkKind, ImageManifest, Sha256Digest};
use flashrack_devices::AlignedBuf;

use crate::{EngineError, SourceImage};

/// A chunk as the source serves it.
#[derive(Clone)]
pub enum Chunk {
    /// All zero: use [`SharedSource::zeros`].
    Zero,
    /// Data, shared between targets.
    Data(Arc<AlignedBuf>),
}

/// One cached chunk: read at most once, checked at most once.
#[derive(Default)]
struct ChunkCell {
    /// The bytes, read by the first target that asks.
    data: OnceLock<Result<Arc<AlignedBuf>, EngineError>>,
    /// Whether the bytes match the manifest's sha256, checked by the first target
    /// that verifies against this chunk.
    checked: OnceLock<Result<(), EngineError>>,
}

/// The image file and a bounded, shared cache of its chunks.
pub struct SharedSource {
    file: File,
    manifest: ImageManifest,
    zeros: AlignedBuf,
    capacity: usize,
    /// Most recently used first. A `std` mutex: it is held only to look up and
    /// reorder a handful of entries, never across I/O (reads happen in the cell's
    /// `OnceLock`, outside the lock).
    cells: Mutex<VecDeque<(u64, Arc<ChunkCell>)>>,
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
            file,
            zeros: AlignedBuf::zeroed(image.manifest.chunk_size() as usize),
            manifest: image.manifest.clone(),
            capacity: capacity.max(1),
            cells: Mutex::new(VecDeque::new()),
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

    /// Chunk `index` for writing: not checked against its sha256 (the read-back
    /// will be compared with checked chunks, so a bad source cannot pass).
    pub fn chunk(&self, index: u64) -> Result<Chunk, EngineError> {
        self.get(index, false)
    }

    /// Chunk `index` for verification: its bytes are proven to match the
    /// manifest's sha256 (checked once per cached copy).
    pub fn checked_chunk(&self, index: u64) -> Result<Chunk, EngineError> {
        self.get(index, true)
    }

    fn get(&self, index: u64, check: bool) -> Result<Chunk, EngineError> {
        let digest = match self.manifest.chunk_kind(index) {
            ChunkKind::Zero => return Ok(Chunk::Zero),
            ChunkKind::Data(digest) => digest,
        };
        let cell = self.cell(index);
        let data = cell.data.get_or_init(|| self.read(index)).clone()?;
        if check {
            cell.checked
                .get_or_init(|| {
                    let (offset, len) = self.manifest.chunk_span(index);
                    if Sha256Digest::of(&data[..len]) == digest {
                        Ok(())
                    } else {
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

    fn read(&self, index: u64) -> Result<Arc<AlignedBuf>, EngineError> {
        let (offset, len) = self.manifest.chunk_span(index);
        let mut buf = AlignedBuf::zeroed(self.manifest.chunk_size() as usize);
        self.file
            .read_exact_at(&mut buf[..len], offset)
            .map_err(|e| EngineError::SourceRead {
                offset,
                detail: e.to_string(),
            })?;
        Ok(Arc::new(buf))
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
                Chunk::Data(data) => sink(&data[..len]),
            }
        }
        Ok(())
    }
}
