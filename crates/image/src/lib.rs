//! The content-addressed image cache: importing disk images once, and finding
//! them again by digest, prefix or name.
//!
//! An import detects the file's format by its magic bytes (gzip, xz, zstd,
//! bzip2, a zip holding one file or naming the one to import, or else a raw
//! `.img`/`.iso`), decompresses it
//! once, and in the same pass computes the sha256 of the raw image, the XXH3-128
//! fingerprint of every fixed-size chunk, and which chunks are all zero (the
//! [`ImageManifest`]), and the sha256 of the file as given. An expected digest
//! may be either one. A corrupt, truncated or mismatching input leaves nothing
//! behind. A raw image is cloned into the cache where the file system can
//! (reflink), else, when the caller allows it, referenced in place
//! ([`ImportOptions::reference_raw`], [`SourceReference`]) instead of copied.
//!
//! # On-disk layout
//! ```text
//! <dir>/images/<sha256>.img    the raw image, sparse: all-zero chunks are holes
//! <dir>/images/<sha256>.json   {"manifest": ImageManifest, "import": ImportMeta}
//!                              (no .img when ImportMeta::reference names the
//!                              file the image is referenced in)
//! <dir>/images/<sha256>.bmap.json
//!                              its block map, if it has one (StoredMap): from a
//!                              checked bmaptool file, or generated from its file
//!                              systems' allocation
//! <dir>/sources/<sha256 of canonical path>.json
//!                              identity (dev, inode, size, mtime and ctime ns) of
//!                              the file last imported from that path, with its
//!                              digests
//! <dir>/aliases/<file size>/<file sha256>.json
//!                              the raw digest a file with that digest holds
//! <dir>/tmp/                   files being written, renamed into place when done
//! ```
//! Only regular files are imported: a FIFO, a device or a socket is refused
//! before it is opened (a pipe would hang the import, `/dev/zero` would never
//! end). A raw image larger than [`ImportOptions::max_image_size`] (the
//! largest target the guard lets through) is refused, a compressed one as soon
//! as it decompresses past it; the cache's free space is checked before and
//! during the import ([`ImportOptions::min_free_space`]). An import may be
//! limited to files inside given directories ([`ImportOptions::allowed_dirs`],
//! for imports a remote client asks for) and cancelled
//! ([`ImportOptions::cancel`]).
//!
//! `<sha256>` is the lower-case hex digest of the raw image. An image is present
//! when its `.json` exists and its `.img` has the size the manifest says. Files
//! are written to `tmp/`, flushed and renamed, the `.img` before the `.json`, so
//! a crash never leaves an entry without its image; temporary files left by a
//! crashed import are removed by the next [`ImageCache::open`]. `sources/` and
//! `aliases/` are hints that make re-imports instant; they are checked against
//! the images and may be deleted at any time.
//!
//! # Code map
//! - [`cache`]: [`ImageCache`] (open, get, find, list, remove), [`CachedImage`];
//! - [`import`]: [`ImageCache::import`], [`ImportOptions`], [`ImportOutcome`];
//! - [`blockmap`]: an image's block map ([`StoredMap`]): a bmaptool file
//!   checked against the image ([`ImageCache::attach_bmap`]) or generated from
//!   its file systems ([`ImageCache::generate_map`]), for sparse runs;
//! - [`stream`]: [`ImageCache::import_stream`], the same pass fed by a
//!   stream (a download) instead of a file, with the image's provenance;
//! - [`detect`]: [`ImageFormat`] and magic-byte detection;
//! - [`error`]: [`ImageError`], the one error type;
//! - private: `pass` (the single pass: sparse store, whole and chunk digests,
//!   chunk hashing on a second thread), `input` (hashing the file as it is read,
//!   decoders), `index` (sources and aliases), `fsutil` (temp files, atomic
//!   writes), `descriptor_scan` (a stored zip entry whose sizes follow its
//!   data, its end found in the stream).
//!
//! **API boundary**: this crate does file I/O in the cache directory and on the
//! imported file only; it knows nothing of devices, the engine or HTTP.
//! Importing is blocking: call it from a blocking thread.
#![deny(missing_docs)]

pub mod blockmap;
pub mod cache;
pub mod detect;
pub mod error;
pub mod import;
pub mod observe;
pub mod stream;
mod xz_size;

mod descriptor_scan;
mod fsutil;
mod index;
mod input;
mod pass;

pub use blockmap::{BmapCheck, BmapInput, MapInfo, MapOrigin, StoredMap};
pub use cache::{
    CachedImage, ImageCache, ImportMeta, SourceReference, MAX_OTHER_NAMES, MIN_PREFIX,
};
pub use detect::ImageFormat;
pub use error::{FileKind, ImageError};
pub use import::{
    CacheHit, ImportOptions, ImportOutcome, DEFAULT_MAX_IMAGE_SIZE, DEFAULT_MIN_FREE_SPACE,
    MAX_CHUNK_SIZE,
};
pub use observe::{ChunkData, ImportObserver};
pub use stream::StreamSource;

#[doc(no_inline)]
pub use flashrack_core::{ImageManifest, Sha256Digest};
#[doc(no_inline)]
pub use flashrack_inspect::{ImageInfo, RawWriteRefusal};
