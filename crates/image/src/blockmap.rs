//! An image's block map, kept beside it in the cache: which byte ranges a
//! sparse run writes and reads back.
//!
//! A map comes from a bmaptool `.bmap` file, checked against the cached image
//! (its own checksum, the image's size and every range's checksum: a map that
//! lies is refused, since a sparse run trusts it to skip bytes), or it is
//! generated from the image's file systems' allocation
//! ([`flashrack_inspect::alloc`]). A bmap file given to an import
//! ([`BmapInput`], `ImportOptions::bmap`) is checked in the import's one
//! pass over the image, and refused before anything is kept; one attached
//! to an image already cached ([`ImageCache::attach_bmap`]) is known true
//! without a read when its claims are those of the bmap kept, else its
//! mapped bytes in data chunks are read once. It is stored as
//! `images/<sha256>.bmap.json` ([`StoredMap`]), written atomically; an image
//! without one is written whole.

use std::fs;
use std::io;

use flashrack_core::{ChunkKind, DataRanges, Sha256Digest};
use flashrack_inspect::alloc::{allocation_map, AllocError};
use flashrack_inspect::bmap::{BlockMap, BmapError, StreamCheck};
use flashrack_inspect::ReadAt;
use serde::{Deserialize, Serialize};

use crate::cache::{CachedImage, ImageCache};
use crate::error::ImageError;
use crate::fsutil::write_json_atomic;

/// The largest bmap file read from the station (as from a URL: a map of a
/// badly fragmented image of a few hundred GB is a few MiB).
const MAX_BMAP_FILE: u64 = 16 << 20;

/// Where a block map came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MapOrigin {
    /// A bmaptool `.bmap` file, checked against the image when it was attached.
    Bmap {
        /// The file's name.
        file: String,
        /// Its format version (`2.0`, `1.4` …).
        version: String,
        /// Whether its ranges carried checksums (all checked), or not (then
        /// only its own checksum and the image's size were).
        range_checksums: bool,
        /// What the map claims of the image's bytes, as one digest
        /// ([`BlockMap::content_digest`]): the same claims given again
        /// (the same file, or one that differs only in comments or layout)
        /// are known true of this image without reading it again. Absent
        /// in maps kept before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claims: Option<String>,
    },
    /// Generated from the file systems' allocation (block bitmaps, FATs).
    Generated {
        /// One line per file system read.
        sources: Vec<String>,
    },
}

/// A block map as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMap {
    /// Where it came from.
    pub origin: MapOrigin,
    /// The ranges that matter, in bytes.
    pub ranges: DataRanges,
}

/// What is shown of an image's block map (`flashrack image show`/`list`,
/// the API's image JSON): where it came from and how much of the image it
/// maps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MapInfo {
    /// In words: "bmap file disk.bmap (format 2.0)" or "generated from ext4 …".
    pub source: String,
    /// Where it came from, as kept.
    pub origin: MapOrigin,
    /// Bytes its ranges cover.
    pub mapped_bytes: u64,
    /// The image's size.
    pub image_size: u64,
    /// `mapped_bytes / image_size` (0 for an empty image).
    pub mapped_share: f64,
    /// How many ranges.
    pub ranges: usize,
}

impl StoredMap {
    /// Where the map came from, in words: "bmap file disk.bmap (format
    /// 2.0)" or "generated from ext4 …".
    pub fn source(&self) -> String {
        match &self.origin {
            MapOrigin::Bmap { file, version, .. } => {
                format!("bmap file {file} (format {version})")
            }
            MapOrigin::Generated { sources } => {
                format!("generated from {}", sources.join("; "))
            }
        }
    }

    /// The share of the image its ranges cover, 0 to 1 (0 for an empty image).
    pub fn mapped_share(&self) -> f64 {
        match self.ranges.image_size() {
            0 => 0.0,
            size => self.ranges.mapped_bytes() as f64 / size as f64,
        }
    }

    /// What is shown of it ([`MapInfo`]).
    pub fn info(&self) -> MapInfo {
        MapInfo {
            source: self.source(),
            origin: self.origin.clone(),
            mapped_bytes: self.ranges.mapped_bytes(),
            image_size: self.ranges.image_size(),
            mapped_share: self.mapped_share(),
            ranges: self.ranges.ranges().len(),
        }
    }

    /// One line for people: "bmap 2.0 (image.bmap): 40.1 MB of 64 MB mapped".
    pub fn summary(&self) -> String {
        let what = match &self.origin {
            MapOrigin::Bmap { file, version, .. } => format!("bmap {version} ({file})"),
            MapOrigin::Generated { sources } => {
                format!("generated from {}", sources.join("; "))
            }
        };
        format!(
            "{what}: {} of {} bytes mapped",
            self.ranges.mapped_bytes(),
            self.ranges.image_size()
        )
    }
}

/// How a bmap attached to a cached image was found true of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BmapCheck {
    /// Its claims are those of the bmap already kept for the image, checked
    /// then: nothing was read.
    Known,
    /// The image's mapped ranges were read once, except the parts in zero
    /// chunks: `bytes` of the cached file were read.
    Read {
        /// Bytes of the cached image read.
        bytes: u64,
    },
}

/// A bmap file for an import to check in its pass over the image
/// (`ImportOptions::bmap`): parsed, its own checksum checked, before the
/// import reads a byte of the image.
#[derive(Debug, Clone)]
pub struct BmapInput {
    /// The file's name, as the map's origin says it.
    pub file: String,
    /// The map.
    pub map: BlockMap,
}

impl BmapInput {
    /// Parses the bmap file `text` named `file`: a file that is not a map
    /// (malformed XML, counts that disagree with its `BlockSize` and
    /// `ImageSize`, ranges past its own end, overlapping ranges) or whose own
    /// checksum fails is refused here.
    pub fn parse(file: &str, text: &str) -> Result<Self, ImageError> {
        let map = BlockMap::parse(text).map_err(|source| ImageError::BmapRefused {
            file: file.to_string(),
            source,
        })?;
        Ok(Self {
            file: file.to_string(),
            map,
        })
    }

    /// Reads and parses the bmap file at `path` ([`BmapInput::parse`],
    /// named by its file name); answers the map and the file's text (which
    /// [`ImageCache::attach_bmap`](crate::ImageCache::attach_bmap) takes for
    /// an image already cached). A file that cannot be read or is not UTF-8
    /// text is [`ImageError::ReadInput`].
    pub fn read(path: &std::path::Path) -> Result<(Self, String), ImageError> {
        let (name, text) = Self::read_text(path)?;
        Ok((Self::parse(&name, &text)?, text))
    }

    /// Reads the bmap file at `path` without parsing it: its file name (as
    /// [`BmapInput::parse`] names it) and its text. A file that cannot be
    /// read or is not UTF-8 text is [`ImageError::ReadInput`].
    pub fn read_text(path: &std::path::Path) -> Result<(String, String), ImageError> {
        use std::io::Read;
        let error = |source| ImageError::ReadInput {
            path: path.to_path_buf(),
            source,
        };
        // At most MAX_BMAP_FILE bytes are read: a huge file, or a device
        // that never ends (`--bmap /dev/zero`), is refused, not held in
        // memory.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(error)?
            .take(MAX_BMAP_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(error)?;
        if bytes.len() as u64 > MAX_BMAP_FILE {
            return Err(error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "larger than {} MiB, more than any block map",
                    MAX_BMAP_FILE >> 20
                ),
            )));
        }
        let text = String::from_utf8(bytes).map_err(|_| {
            error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            ))
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok((name, text))
    }

    /// The check an import's pass feeds.
    pub(crate) fn check(&self) -> StreamCheck {
        StreamCheck::new(self.map.clone())
    }

    /// The byte ranges the map says hold data, of an image of the map's
    /// size: what a sparse run writes and reads back. Known before the image
    /// is read, so that a run may follow the image's import; the import
    /// checks the image against the map (`ImportOptions::bmap`).
    pub fn ranges(&self) -> Result<DataRanges, ImageError> {
        stored_bmap(&self.file, &self.map).map(|stored| stored.ranges)
    }

    /// The map as the cache keeps it, once the image was checked against it.
    pub(crate) fn stored(&self) -> Result<StoredMap, ImageError> {
        stored_bmap(&self.file, &self.map)
    }

    /// The refusal of this map for `source`.
    pub(crate) fn refused(&self, source: BmapError) -> ImageError {
        ImageError::BmapRefused {
            file: self.file.clone(),
            source,
        }
    }
}

/// A checked bmap as the cache keeps it.
fn stored_bmap(file: &str, map: &BlockMap) -> Result<StoredMap, ImageError> {
    let ranges = DataRanges::new(map.image_size, map.byte_ranges()).map_err(|e| {
        ImageError::BmapRefused {
            file: file.to_string(),
            source: BmapError::Malformed(format!("its ranges in bytes: {e}")),
        }
    })?;
    Ok(StoredMap {
        origin: MapOrigin::Bmap {
            file: file.to_string(),
            version: map.version.clone(),
            range_checksums: map.checksum.is_some()
                && map.ranges.iter().all(|r| r.checksum.is_some()),
            claims: Some(map.content_digest()),
        },
        ranges,
    })
}

impl ImageCache {
    fn map_path(&self, digest: &Sha256Digest) -> std::path::PathBuf {
        self.image_path(digest).with_extension("bmap.json")
    }

    /// The block map kept for an image, if any.
    pub fn block_map(&self, digest: &Sha256Digest) -> Result<Option<StoredMap>, ImageError> {
        let path = self.map_path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ImageError::CacheIo {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let map: StoredMap = serde_json::from_slice(&bytes).map_err(|e| ImageError::BadEntry {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if map.ranges.image_size() != digest_size(self, digest)? {
            return Err(ImageError::BadEntry {
                path,
                reason: "the block map is of an image of another size".into(),
            });
        }
        Ok(Some(map))
    }

    /// Parses the bmap file `text` (named `file`), checks it against the
    /// cached `image` (its own checksum, the image's size, every range's
    /// checksum), and keeps it as the image's map, replacing any other. A map
    /// that fails is refused and nothing changes.
    ///
    /// What the cache knows spares reads: a map whose claims
    /// ([`BlockMap::content_digest`]) are those of the bmap already kept for
    /// the image was checked then, and is not checked again (no byte is
    /// read); otherwise only the mapped ranges are read, once, and of them
    /// only the parts in the image's data chunks (a zero chunk's bytes are
    /// known from the manifest). The cached image's chunk fingerprints
    /// (XXH3) cannot prove a range's sha256, so a new map costs that one
    /// read; it is then kept, so later runs do not read again.
    pub fn attach_bmap(
        &self,
        image: &CachedImage,
        file: &str,
        text: &str,
    ) -> Result<StoredMap, ImageError> {
        Ok(self.attach_bmap_counted(image, file, text)?.0)
    }

    /// [`attach_bmap`](Self::attach_bmap), saying how the map was found
    /// true of the image ([`BmapCheck`]).
    pub fn attach_bmap_counted(
        &self,
        image: &CachedImage,
        file: &str,
        text: &str,
    ) -> Result<(StoredMap, BmapCheck), ImageError> {
        let refused = |source: BmapError| ImageError::BmapRefused {
            file: file.to_string(),
            source,
        };
        let map = BlockMap::parse(text).map_err(refused)?;
        let stored = stored_bmap(file, &map)?;
        if map.image_size != image.size() {
            return Err(refused(BmapError::ImageSize {
                expected: map.image_size,
                actual: image.size(),
            }));
        }
        let claims = map.content_digest();
        let known = self.block_map(&image.sha256())?.is_some_and(|kept| {
            matches!(&kept.origin, MapOrigin::Bmap { claims: Some(c), .. } if *c == claims)
                && kept.ranges == stored.ranges
        });
        if known {
            // Keep the name the operator used this time; the claims are
            // the ones checked before.
            self.keep_map(&image.sha256(), &stored)?;
            return Ok((stored, BmapCheck::Known));
        }
        let raw = fs::File::open(&image.path).map_err(|source| ImageError::CacheIo {
            action: "open",
            path: image.path.clone(),
            source,
        })?;
        let reader = KnownZeros::new(&raw, image);
        map.check_image(&reader).map_err(refused)?;
        self.keep_map(&image.sha256(), &stored)?;
        Ok((
            stored,
            BmapCheck::Read {
                bytes: reader.bytes_read.get(),
            },
        ))
    }

    /// Generates the image's map from its file systems' allocation and keeps
    /// it. An image whose file systems cannot be read (none that flashrack
    /// reads, an ISO, a damaged one) has none: [`ImageError::NoBlockMap`]
    /// says why, and the image can still be written whole.
    pub fn generate_map(&self, image: &CachedImage) -> Result<StoredMap, ImageError> {
        let raw = fs::File::open(&image.path).map_err(|source| ImageError::CacheIo {
            action: "open",
            path: image.path.clone(),
            source,
        })?;
        let info = match &image.meta.inspection {
            Some(info) => info.clone(),
            None => flashrack_inspect::inspect(&raw),
        };
        let no_map = |reason: AllocError| ImageError::NoBlockMap { reason };
        let alloc = allocation_map(&raw, &info).map_err(no_map)?;
        let ranges = DataRanges::new(image.size(), alloc.ranges)
            .expect("an allocation map's ranges are sorted, disjoint and inside the image");
        let stored = StoredMap {
            origin: MapOrigin::Generated {
                sources: alloc.sources,
            },
            ranges,
        };
        self.keep_map(&image.sha256(), &stored)?;
        Ok(stored)
    }

    pub(crate) fn keep_map(
        &self,
        digest: &Sha256Digest,
        map: &StoredMap,
    ) -> Result<(), ImageError> {
        write_json_atomic(&self.tmp, &self.map_path(digest), map)
    }

    /// Forgets an image's block map (when the image is removed).
    pub(crate) fn remove_map(&self, digest: &Sha256Digest) {
        let _ = fs::remove_file(self.map_path(digest));
    }
}

/// A cached image read for a bmap's check: the bytes of its zero chunks
/// (known from the manifest) are served as zeros without a read, the rest
/// read from the file; counts the bytes read.
struct KnownZeros<'a> {
    file: &'a fs::File,
    image: &'a CachedImage,
    bytes_read: std::cell::Cell<u64>,
}

impl<'a> KnownZeros<'a> {
    fn new(file: &'a fs::File, image: &'a CachedImage) -> Self {
        Self {
            file,
            image,
            bytes_read: std::cell::Cell::new(0),
        }
    }
}

impl ReadAt for KnownZeros<'_> {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let manifest = &self.image.manifest;
        let end = (offset + buf.len() as u64).min(manifest.size());
        let mut at = offset;
        while at < end {
            let index = at / u64::from(manifest.chunk_size());
            let (chunk_start, chunk_len) = manifest.chunk_span(index);
            let piece_end = (chunk_start + chunk_len as u64).min(end);
            let piece = &mut buf[(at - offset) as usize..(piece_end - offset) as usize];
            if manifest.chunk_kind(index) == ChunkKind::Zero {
                piece.fill(0);
            } else {
                let n = self.file.read_at(at, piece)?;
                self.bytes_read.set(self.bytes_read.get() + n as u64);
                if n < piece.len() {
                    return Ok((at - offset) as usize + n);
                }
            }
            at = piece_end;
        }
        Ok((end.max(offset) - offset) as usize)
    }
}

fn digest_size(cache: &ImageCache, digest: &Sha256Digest) -> Result<u64, ImageError> {
    cache
        .get(digest)?
        .map(|i| i.size())
        .ok_or_else(|| ImageError::NotFound {
            query: digest.to_hex(),
            suggestions: Vec::new(),
        })
}
