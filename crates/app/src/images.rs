//! The image cache under a data directory: opened, imported into, searched,
//! emptied. Thin over [`flashrack_image`], with the application's errors.

use std::path::{Path, PathBuf};

use flashrack_core::{ByteSize, Sha256Digest};
use flashrack_image::{CachedImage, ImageCache, ImportOptions, ImportOutcome};

use crate::AppError;

/// The cache's directory in a data directory.
pub fn cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cache")
}

/// Opens (creating if needed) the cache under the data directory.
pub fn open_cache(data_dir: &Path) -> Result<ImageCache, AppError> {
    let dir = cache_dir(data_dir);
    ImageCache::open(&dir).map_err(|source| AppError::OpenCache {
        dir,
        source: Box::new(source),
    })
}

/// Imports `file` into the cache: checked against `expected` (of the file as
/// given or of the raw image) and refused when larger than `max_size` (the
/// largest target the guard lets through: it could never be written). A raw
/// image is cloned where the file system can, else copied: for a file that
/// goes away after the import (a fetched order's file).
pub fn import(
    cache: &ImageCache,
    file: &Path,
    expected: Option<Sha256Digest>,
    max_size: ByteSize,
) -> Result<ImportOutcome, AppError> {
    import_with(cache, file, expected, max_size, false)
}

/// [`import`] of the operator's own file, which stays where it is: a raw
/// image the file system cannot clone is referenced in place instead of
/// copied (the cache notices when the file changes; see
/// [`ImportOptions::reference_raw`]).
pub fn import_in_place(
    cache: &ImageCache,
    file: &Path,
    expected: Option<Sha256Digest>,
    max_size: ByteSize,
) -> Result<ImportOutcome, AppError> {
    import_with(cache, file, expected, max_size, true)
}

fn import_with(
    cache: &ImageCache,
    file: &Path,
    expected: Option<Sha256Digest>,
    max_size: ByteSize,
    reference_raw: bool,
) -> Result<ImportOutcome, AppError> {
    cache
        .import(
            file,
            ImportOptions {
                expected_sha256: expected,
                max_image_size: max_size.bytes(),
                reference_raw,
                ..ImportOptions::default()
            },
        )
        .map_err(|source| AppError::Import {
            name: file.display().to_string(),
            source: Box::new(source),
        })
}

/// An image named on the command line: a file to import in place (anything that exists
/// is given to the import, which takes regular files only and says what else
/// it found: a FIFO, a device, a directory), or a cached image by digest,
/// unique prefix or name. An image larger than `max_size` is refused.
pub fn resolve_image(
    cache: &ImageCache,
    name: &str,
    expected: Option<Sha256Digest>,
    max_size: ByteSize,
) -> Result<CachedImage, AppError> {
    let path = Path::new(name);
    if path.exists() {
        return Ok(import_in_place(cache, path, expected, max_size)?.image);
    }
    let image = cache.find(name).map_err(|source| AppError::UnknownImage {
        name: name.to_string(),
        source: Box::new(source),
    })?;
    if let Some(expected) = expected {
        if expected != image.sha256() && expected != image.meta.input_sha256 {
            return Err(AppError::ImageMismatch {
                found: image.sha256(),
                expected,
            });
        }
    }
    Ok(image)
}

/// Removes the cached image `query` names (its sha256 or a unique prefix);
/// returns its digest.
pub fn remove(cache: &ImageCache, query: &str) -> Result<Sha256Digest, AppError> {
    let found = cache.find(query)?;
    cache.remove(&found.sha256())?;
    Ok(found.sha256())
}
