//! What is known about a cached image: its size, its digest, the digest of every
//! fixed-size chunk and which chunks are all zero. Computed once at import.

use serde::{Deserialize, Serialize};

use crate::Sha256Digest;

/// What one chunk of an image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// Every byte is zero; the engine writes it from a shared zero buffer and never
    /// reads it from the cache.
    Zero,
    /// Data with this SHA-256 digest.
    Data(Sha256Digest),
}

/// A manifest that does not describe a consistent image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The chunk size is zero or not a multiple of 4096.
    #[error("chunk size {0} is not a positive multiple of 4096")]
    BadChunkSize(u32),
    /// The number of chunk digests does not match the image size.
    #[error("{got} chunk digests for an image of {size} bytes in chunks of {chunk_size} (expected {expected})")]
    ChunkCount {
        /// Image size in bytes.
        size: u64,
        /// Chunk size in bytes.
        chunk_size: u32,
        /// How many chunks that makes.
        expected: u64,
        /// How many the manifest lists.
        got: u64,
    },
    /// A zero range lies outside the image's chunks or is empty.
    #[error("zero range {start}..{end} is outside 0..{chunks}")]
    BadZeroRange {
        /// First chunk of the range.
        start: u64,
        /// One past the last chunk.
        end: u64,
        /// Number of chunks in the image.
        chunks: u64,
    },
}

/// Everything the engine needs to write and verify an image without hashing it
/// again: the raw digest, the size and per-chunk facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ManifestRecord", into = "ManifestRecord")]
pub struct ImageManifest {
    sha256: Sha256Digest,
    size: u64,
    chunk_size: u32,
    chunk_digests: Vec<Sha256Digest>,
    zero: Vec<bool>,
}

/// The serialized form: zero chunks as ranges, so a mostly empty 64 GiB image
/// does not cost a line per chunk.
#[derive(Serialize, Deserialize)]
struct ManifestRecord {
    format: u32,
    sha256: Sha256Digest,
    size: u64,
    chunk_size: u32,
    chunk_digests: Vec<Sha256Digest>,
    zero_chunk_ranges: Vec<(u64, u64)>,
}

/// The manifest format this build writes and reads.
const MANIFEST_FORMAT: u32 = 1;

impl ImageManifest {
    /// The chunk size images are imported with: large enough for efficient direct
    /// I/O on USB sticks, small enough that a per-target buffer stays a few MiB.
    pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;

    /// Builds a manifest, checking that the parts agree. `zero[i]` says whether
    /// chunk `i` is all zero; a zero chunk's digest is still listed.
    pub fn new(
        sha256: Sha256Digest,
        size: u64,
        chunk_size: u32,
        chunk_digests: Vec<Sha256Digest>,
        zero: Vec<bool>,
    ) -> Result<Self, ManifestError> {
        if chunk_size == 0 || !chunk_size.is_multiple_of(4096) {
            return Err(ManifestError::BadChunkSize(chunk_size));
        }
        let expected = size.div_ceil(u64::from(chunk_size));
        for got in [chunk_digests.len() as u64, zero.len() as u64] {
            if got != expected {
                return Err(ManifestError::ChunkCount {
                    size,
                    chunk_size,
                    expected,
                    got,
                });
            }
        }
        Ok(Self {
            sha256,
            size,
            chunk_size,
            chunk_digests,
            zero,
        })
    }

    /// The SHA-256 of the raw image: its name in the cache.
    pub fn sha256(&self) -> Sha256Digest {
        self.sha256
    }

    /// Raw image size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Number of chunks (the last one may be short).
    pub fn chunk_count(&self) -> u64 {
        self.chunk_digests.len() as u64
    }

    /// Byte range `(offset, length)` of chunk `index`.
    pub fn chunk_span(&self, index: u64) -> (u64, usize) {
        let offset = index * u64::from(self.chunk_size);
        let length = (self.size - offset).min(u64::from(self.chunk_size));
        (offset, length as usize)
    }

    /// The digest of chunk `index`.
    pub fn chunk_digest(&self, index: u64) -> Sha256Digest {
        self.chunk_digests[index as usize]
    }

    /// Whether chunk `index` is all zero, and its digest otherwise.
    pub fn chunk_kind(&self, index: u64) -> ChunkKind {
        if self.zero[index as usize] {
            ChunkKind::Zero
        } else {
            ChunkKind::Data(self.chunk_digests[index as usize])
        }
    }

    /// Bytes in all-zero chunks.
    pub fn zero_bytes(&self) -> u64 {
        (0..self.chunk_count())
            .filter(|&i| self.zero[i as usize])
            .map(|i| self.chunk_span(i).1 as u64)
            .sum()
    }
}

impl From<ImageManifest> for ManifestRecord {
    fn from(m: ImageManifest) -> Self {
        let mut ranges = Vec::new();
        let mut start = None;
        for (i, &is_zero) in m.zero.iter().enumerate() {
            match (is_zero, start) {
                (true, None) => start = Some(i as u64),
                (false, Some(s)) => {
                    ranges.push((s, i as u64));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            ranges.push((s, m.zero.len() as u64));
        }
        ManifestRecord {
            format: MANIFEST_FORMAT,
            sha256: m.sha256,
            size: m.size,
            chunk_size: m.chunk_size,
            chunk_digests: m.chunk_digests,
            zero_chunk_ranges: ranges,
        }
    }
}

impl TryFrom<ManifestRecord> for ImageManifest {
    type Error = String;
    fn try_from(r: ManifestRecord) -> Result<Self, Self::Error> {
        if r.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} is not supported (this build reads {MANIFEST_FORMAT})",
                r.format
            ));
        }
        let chunks = r.chunk_digests.len() as u64;
        let mut zero = vec![false; r.chunk_digests.len()];
        for (start, end) in r.zero_chunk_ranges {
            if start >= end || end > chunks {
                return Err(ManifestError::BadZeroRange { start, end, chunks }.to_string());
            }
            zero[start as usize..end as usize].fill(true);
        }
        Self::new(r.sha256, r.size, r.chunk_size, r.chunk_digests, zero).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageManifest {
        let d = Sha256Digest::of(b"x");
        ImageManifest::new(
            d,
            3 * 4096 + 10,
            4096,
            vec![d; 4],
            vec![true, false, true, true],
        )
        .unwrap()
    }

    #[test]
    fn last_chunk_is_short_and_spans_cover_the_image() {
        let m = sample();
        assert_eq!(m.chunk_span(0), (0, 4096));
        assert_eq!(m.chunk_span(3), (3 * 4096, 10));
        assert_eq!(m.zero_bytes(), 4096 + 4096 + 10);
        assert_eq!(m.chunk_kind(0), ChunkKind::Zero);
        assert!(matches!(m.chunk_kind(1), ChunkKind::Data(_)));
    }

    #[test]
    fn serializes_zero_chunks_as_ranges_and_round_trips() {
        let m = sample();
        let json = serde_json::to_string(&m).unwrap();
        assert!(
            json.contains("\"zero_chunk_ranges\":[[0,1],[2,4]]"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ImageManifest>(&json).unwrap(), m);
    }

    #[test]
    fn inconsistent_manifests_are_rejected() {
        let d = Sha256Digest::of(b"x");
        assert!(ImageManifest::new(d, 10, 1000, vec![d], vec![false]).is_err());
        assert!(ImageManifest::new(d, 8192, 4096, vec![d], vec![false]).is_err());
        let json = serde_json::to_string(&sample())
            .unwrap()
            .replace("[2,4]", "[2,9]");
        assert!(serde_json::from_str::<ImageManifest>(&json).is_err());
        let json = serde_json::to_string(&sample())
            .unwrap()
            .replace("\"format\":1", "\"format\":7");
        assert!(serde_json::from_str::<ImageManifest>(&json)
            .unwrap_err()
            .to_string()
            .contains("format 7"));
    }
}
