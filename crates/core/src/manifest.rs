//! What is known about a cached image: its size, its digest, the digest of every
//! fixed-size chunk, a cheap fingerprint of every chunk and which chunks are all
//! zero. Computed once at import.
//!
//! Two kinds of per-chunk facts, for two jobs:
//! - the **sha256** of every chunk (formats 1 and 2; what `--verify hash`
//!   checked read-back chunks against). Format 3 (what imports write now)
//!   leaves them out: computing them was a second sha256 pass over the whole
//!   image at every import (0.7 s of CPU per GiB here), and the image's own
//!   sha256 plus the fingerprints below do both jobs (`--verify hash` hashes
//!   the read-back whole and locates a bad chunk by its fingerprint);
//! - an **XXH3-128 fingerprint** of every chunk (formats 2 and 3), which the
//!   engine uses to check that the *cached file* still holds the bytes the
//!   import hashed (bit rot, a bad disk) before it compares read-backs with them.
//!   Non-cryptographic is enough for that job: it guards against accidents to a
//!   file only root can write, not against an attacker. This crate only stores
//!   the fingerprints (as 128-bit numbers, serialized as 32 hex digits); the
//!   image crate computes them and the engine checks them.
//!
//! A format-1 manifest (written before fingerprints existed) still reads; it
//! has no fingerprints, and the engine then checks cached chunks against their
//! sha256 instead. Re-importing such an image upgrades its manifest.

use serde::{Deserialize, Serialize};

use crate::Sha256Digest;

/// What one chunk of an image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// Every byte is zero; the engine writes it from a shared zero buffer and never
    /// reads it from the cache.
    Zero,
    /// Data (its digest and fingerprint are [`ImageManifest::chunk_digest`] and
    /// [`ImageManifest::chunk_fingerprint`]).
    Data,
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
    /// The number of chunk fingerprints does not match the number of chunks.
    #[error("{got} chunk fingerprints for {expected} chunks")]
    FingerprintCount {
        /// How many chunks the image has.
        expected: u64,
        /// How many fingerprints were given.
        got: u64,
    },
    /// A manifest without chunk digests must have chunk fingerprints.
    #[error("a manifest without chunk digests needs chunk fingerprints")]
    NoChunkFacts,
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
    /// The sha256 of every chunk; `None` for format 3 (which has fingerprints).
    chunk_digests: Option<Vec<Sha256Digest>>,
    /// XXH3-128 of every chunk (zero chunks included); `None` for a manifest read
    /// from format 1.
    chunk_fingerprints: Option<Vec<u128>>,
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
    /// Formats 1 and 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunk_digests: Option<Vec<Sha256Digest>>,
    /// Formats 2 and 3: the XXH3-128 of every chunk, as 32 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunk_fingerprints: Option<Vec<HexU128>>,
    zero_chunk_ranges: Vec<(u64, u64)>,
}

/// The manifest format of a manifest with chunk fingerprints: what this build
/// writes for every image it imports.
const MANIFEST_FORMAT: u32 = 2;
/// The format before chunk fingerprints: still read (and written back as such
/// for a manifest without fingerprints, so that it round-trips).
const MANIFEST_FORMAT_V1: u32 = 1;
/// Fingerprints without chunk digests: what this build's imports write (one
/// sha256 pass per import instead of two).
const MANIFEST_FORMAT_V3: u32 = 3;

/// A 128-bit fingerprint in its serialized form: 32 lowercase hex digits, most
/// significant first (XXH3-128's canonical byte order).
#[derive(Clone, Copy)]
struct HexU128(u128);

impl Serialize for HexU128 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:032x}", self.0))
    }
}

impl<'de> Deserialize<'de> for HexU128 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(serde::de::Error::custom(format!(
                "chunk fingerprint {text:?} is not 32 hex digits"
            )));
        }
        u128::from_str_radix(&text, 16)
            .map(HexU128)
            .map_err(serde::de::Error::custom)
    }
}

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
        check_shape(size, chunk_size, [chunk_digests.len(), zero.len()])?;
        Ok(Self {
            sha256,
            size,
            chunk_size,
            chunk_digests: Some(chunk_digests),
            chunk_fingerprints: None,
            zero,
        })
    }

    /// Builds a manifest of format 3: the image's digest, the XXH3-128
    /// fingerprint of every chunk and the zero map, without per-chunk sha256s
    /// (what an import computes in its one sha256 pass).
    pub fn fingerprinted(
        sha256: Sha256Digest,
        size: u64,
        chunk_size: u32,
        chunk_fingerprints: Vec<u128>,
        zero: Vec<bool>,
    ) -> Result<Self, ManifestError> {
        check_shape(size, chunk_size, [chunk_fingerprints.len(), zero.len()])?;
        Ok(Self {
            sha256,
            size,
            chunk_size,
            chunk_digests: None,
            chunk_fingerprints: Some(chunk_fingerprints),
            zero,
        })
    }

    /// Adds the XXH3-128 fingerprint of every chunk (zero chunks included), in
    /// chunk order. The caller computes them over the same bytes as the chunk
    /// digests; the manifest then serializes as format 2.
    pub fn with_chunk_fingerprints(
        mut self,
        fingerprints: Vec<u128>,
    ) -> Result<Self, ManifestError> {
        let got = fingerprints.len() as u64;
        if got != self.chunk_count() {
            return Err(ManifestError::FingerprintCount {
                expected: self.chunk_count(),
                got,
            });
        }
        self.chunk_fingerprints = Some(fingerprints);
        Ok(self)
    }

    /// The XXH3-128 fingerprint of chunk `index`, if the manifest has them (a
    /// manifest read from format 1 has none).
    pub fn chunk_fingerprint(&self, index: u64) -> Option<u128> {
        self.chunk_fingerprints
            .as_ref()
            .map(|fingerprints| fingerprints[index as usize])
    }

    /// Whether the manifest has a fingerprint for every chunk (formats 2 and 3).
    pub fn has_chunk_fingerprints(&self) -> bool {
        self.chunk_fingerprints.is_some()
    }

    /// Whether the manifest has the sha256 of every chunk (formats 1 and 2).
    pub fn has_chunk_digests(&self) -> bool {
        self.chunk_digests.is_some()
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
        self.zero.len() as u64
    }

    /// Byte range `(offset, length)` of chunk `index`.
    pub fn chunk_span(&self, index: u64) -> (u64, usize) {
        let offset = index * u64::from(self.chunk_size);
        let length = (self.size - offset).min(u64::from(self.chunk_size));
        (offset, length as usize)
    }

    /// The sha256 of chunk `index`, if the manifest has chunk digests
    /// (formats 1 and 2).
    pub fn chunk_digest(&self, index: u64) -> Option<Sha256Digest> {
        self.chunk_digests
            .as_ref()
            .map(|digests| digests[index as usize])
    }

    /// Whether chunk `index` is all zero.
    pub fn chunk_kind(&self, index: u64) -> ChunkKind {
        if self.zero[index as usize] {
            ChunkKind::Zero
        } else {
            ChunkKind::Data
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
            format: match (&m.chunk_digests, &m.chunk_fingerprints) {
                (None, _) => MANIFEST_FORMAT_V3,
                (Some(_), Some(_)) => MANIFEST_FORMAT,
                (Some(_), None) => MANIFEST_FORMAT_V1,
            },
            sha256: m.sha256,
            size: m.size,
            chunk_size: m.chunk_size,
            chunk_digests: m.chunk_digests,
            chunk_fingerprints: m
                .chunk_fingerprints
                .map(|f| f.into_iter().map(HexU128).collect()),
            zero_chunk_ranges: ranges,
        }
    }
}

impl TryFrom<ManifestRecord> for ImageManifest {
    type Error = String;
    fn try_from(r: ManifestRecord) -> Result<Self, Self::Error> {
        match (r.format, &r.chunk_digests, &r.chunk_fingerprints) {
            (MANIFEST_FORMAT, Some(_), Some(_))
            | (MANIFEST_FORMAT_V1, Some(_), None)
            | (MANIFEST_FORMAT_V3, None, Some(_)) => {}
            (MANIFEST_FORMAT | MANIFEST_FORMAT_V3, _, None) => {
                return Err(format!(
                    "manifest format {} without chunk fingerprints",
                    r.format
                ))
            }
            (MANIFEST_FORMAT_V1, _, Some(_)) => {
                return Err(format!(
                    "manifest format {MANIFEST_FORMAT_V1} with chunk fingerprints"
                ))
            }
            (MANIFEST_FORMAT | MANIFEST_FORMAT_V1, None, _) => {
                return Err(format!(
                    "manifest format {} without chunk digests",
                    r.format
                ))
            }
            (MANIFEST_FORMAT_V3, Some(_), _) => {
                return Err(format!(
                    "manifest format {MANIFEST_FORMAT_V3} with chunk digests"
                ))
            }
            (format, _, _) => {
                return Err(format!(
                    "manifest format {format} is not supported (this build reads \
                     {MANIFEST_FORMAT_V1} to {MANIFEST_FORMAT_V3})"
                ))
            }
        }
        let chunks = r.size.div_ceil(u64::from(r.chunk_size.max(1)));
        let mut zero = vec![false; chunks as usize];
        for (start, end) in r.zero_chunk_ranges {
            if start >= end || end > chunks {
                return Err(ManifestError::BadZeroRange { start, end, chunks }.to_string());
            }
            zero[start as usize..end as usize].fill(true);
        }
        let fingerprints = r
            .chunk_fingerprints
            .map(|f| f.into_iter().map(|h| h.0).collect::<Vec<u128>>());
        let manifest = match (r.chunk_digests, fingerprints) {
            (Some(digests), None) => Self::new(r.sha256, r.size, r.chunk_size, digests, zero),
            (Some(digests), Some(fingerprints)) => {
                Self::new(r.sha256, r.size, r.chunk_size, digests, zero)
                    .and_then(|m| m.with_chunk_fingerprints(fingerprints))
            }
            (None, Some(fingerprints)) => {
                Self::fingerprinted(r.sha256, r.size, r.chunk_size, fingerprints, zero)
            }
            (None, None) => Err(ManifestError::NoChunkFacts),
        };
        manifest.map_err(|e| e.to_string())
    }
}

/// Checks a manifest's shape: a chunk size that is a positive multiple of
/// 4096, and one entry per chunk in each per-chunk list (`counts`).
fn check_shape(size: u64, chunk_size: u32, counts: [usize; 2]) -> Result<(), ManifestError> {
    if chunk_size == 0 || !chunk_size.is_multiple_of(4096) {
        return Err(ManifestError::BadChunkSize(chunk_size));
    }
    let expected = size.div_ceil(u64::from(chunk_size));
    for got in counts.map(|n| n as u64) {
        if got != expected {
            return Err(ManifestError::ChunkCount {
                size,
                chunk_size,
                expected,
                got,
            });
        }
    }
    Ok(())
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
        assert_eq!(m.chunk_kind(1), ChunkKind::Data);
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

    fn fingerprinted() -> ImageManifest {
        sample()
            .with_chunk_fingerprints(vec![
                0,
                1,
                u128::MAX,
                0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            ])
            .unwrap()
    }

    #[test]
    fn fingerprints_serialize_as_format_2_with_32_hex_digits_and_round_trip() {
        let m = fingerprinted();
        assert!(m.has_chunk_fingerprints());
        assert_eq!(m.chunk_fingerprint(2), Some(u128::MAX));
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"format\":2"), "{json}");
        assert!(
            json.contains(&format!(
                "\"chunk_fingerprints\":[\"{}\",\"{}\",\"{}\",\"{}\"]",
                "0".repeat(32),
                format_args!("{}1", "0".repeat(31)),
                "f".repeat(32),
                "0123456789abcdef0011223344556677"
            )),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ImageManifest>(&json).unwrap(), m);
    }

    #[test]
    fn a_format_1_manifest_still_reads_without_fingerprints() {
        let m = sample();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"format\":1"), "{json}");
        assert!(!json.contains("chunk_fingerprints"), "{json}");
        let read: ImageManifest = serde_json::from_str(&json).unwrap();
        assert!(!read.has_chunk_fingerprints());
        assert_eq!(read.chunk_fingerprint(0), None);
        assert_eq!(read, m);
    }

    #[test]
    fn fingerprints_must_match_the_format_and_the_chunks() {
        assert!(matches!(
            sample().with_chunk_fingerprints(vec![1, 2, 3]),
            Err(ManifestError::FingerprintCount {
                expected: 4,
                got: 3
            })
        ));
        let v2 = serde_json::to_string(&fingerprinted()).unwrap();
        // Format 2 needs fingerprints, format 1 has none.
        let without = serde_json::to_string(&sample())
            .unwrap()
            .replace("\"format\":1", "\"format\":2");
        assert!(serde_json::from_str::<ImageManifest>(&without).is_err());
        let v1_with = v2.replace("\"format\":2", "\"format\":1");
        assert!(serde_json::from_str::<ImageManifest>(&v1_with).is_err());
        // Not 32 hex digits, or one fingerprint short.
        let short = v2.replace(&"f".repeat(32), &"f".repeat(31));
        assert!(serde_json::from_str::<ImageManifest>(&short).is_err());
        let not_hex = v2.replace(&"f".repeat(32), &"g".repeat(32));
        assert!(serde_json::from_str::<ImageManifest>(&not_hex).is_err());
        let missing = v2.replace(&format!(",\"{}\"", "f".repeat(32)), "");
        assert!(serde_json::from_str::<ImageManifest>(&missing).is_err());
    }

    #[test]
    fn a_format_3_manifest_has_fingerprints_and_no_chunk_digests_and_round_trips() {
        let d = Sha256Digest::of(b"x");
        let m = ImageManifest::fingerprinted(
            d,
            3 * 4096 + 10,
            4096,
            vec![7, 8, 9, 10],
            vec![true, false, true, true],
        )
        .unwrap();
        assert!(!m.has_chunk_digests());
        assert_eq!(m.chunk_digest(1), None);
        assert_eq!(m.chunk_fingerprint(1), Some(8));
        assert_eq!(m.chunk_count(), 4);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"format\":3"), "{json}");
        assert!(!json.contains("chunk_digests"), "{json}");
        assert_eq!(serde_json::from_str::<ImageManifest>(&json).unwrap(), m);
        // Format 3 needs fingerprints and has no chunk digests; the counts agree.
        let without = json.replace(",\"chunk_fingerprints\":[", ",\"x\":[");
        assert!(serde_json::from_str::<ImageManifest>(&without).is_err());
        let with_digests = serde_json::to_string(&fingerprinted())
            .unwrap()
            .replace("\"format\":2", "\"format\":3");
        assert!(serde_json::from_str::<ImageManifest>(&with_digests).is_err());
        assert!(ImageManifest::fingerprinted(d, 8192, 4096, vec![1], vec![false, false]).is_err());
    }
}
