//! The image cache under a data directory: opened, imported into, searched,
//! emptied. Thin over [`flashrack_image`], with the application's errors.

use std::path::{Path, PathBuf};

use flashrack_core::{ByteSize, Sha256Digest};
use flashrack_image::{BmapCheck, BmapInput, ImportOptions, ImportOutcome};

use crate::AppError;

pub use flashrack_image::{CachedImage, ImageCache, ImageError, MapInfo, MapOrigin, StoredMap};

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
    import_with(cache, file, expected, max_size, false, None)
}

/// [`import`] of a file flashrack made (a built layout), stopped when
/// `cancel` is set (nothing is kept), telling `observer` each chunk its
/// pass stores (a build's hashing stage counts them for its progress).
pub fn import_observed(
    cache: &ImageCache,
    file: &Path,
    max_size: ByteSize,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    observer: std::sync::Arc<dyn flashrack_image::ImportObserver>,
) -> Result<ImportOutcome, AppError> {
    cache
        .import(
            file,
            ImportOptions {
                max_image_size: max_size.bytes(),
                cancel: Some(cancel),
                observer: Some(observer),
                ..ImportOptions::default()
            },
        )
        .map_err(|source| AppError::Import {
            name: file.display().to_string(),
            source: Box::new(source),
        })
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
    import_with(cache, file, expected, max_size, true, None)
}

fn import_with(
    cache: &ImageCache,
    file: &Path,
    expected: Option<Sha256Digest>,
    max_size: ByteSize,
    reference_raw: bool,
    zip_entry: Option<&str>,
) -> Result<ImportOutcome, AppError> {
    cache
        .import(
            file,
            ImportOptions {
                expected_sha256: expected,
                max_image_size: max_size.bytes(),
                reference_raw,
                zip_entry: zip_entry.map(str::to_string),
                ..ImportOptions::default()
            },
        )
        .map_err(|source| AppError::Import {
            name: file.display().to_string(),
            source: Box::new(source),
        })
}

/// [`import_in_place`] of the operator's file with its block map: the bmap
/// file `bmap`, else one found beside the file ([`bmap_beside`]), is parsed
/// before the image is read (a malformed map, or one whose own checksum
/// fails, stops here) and checked in the import's one pass over the image
/// (every range's checksum, the size): a map that does not describe the
/// image fails the import ([`AppError::Bmap`]) and nothing is cached.
/// Without a bmap file the image keeps the map it has or gets one generated
/// ([`map_image`]). A file the cache knows is not read again: a bmap file
/// is then checked against the cached image ([`ImageCache::attach_bmap`]).
/// `zip_entry` names the file to import from a zip archive holding more than
/// one ([`ImportOptions::zip_entry`]).
pub fn import_with_map(
    cache: &ImageCache,
    file: &Path,
    expected: Option<Sha256Digest>,
    max_size: ByteSize,
    bmap: Option<&Path>,
    zip_entry: Option<&str>,
) -> Result<(ImportOutcome, MapNote), AppError> {
    let Some(bmap_path) = bmap.map(Path::to_path_buf).or_else(|| bmap_beside(file)) else {
        let outcome = import_with(cache, file, expected, max_size, true, zip_entry)?;
        let note = map_image(cache, &outcome.image, None, None)?;
        return Ok((outcome, note));
    };
    let refused = |source: ImageError| AppError::Bmap {
        path: bmap_path.clone(),
        source: Box::new(source),
    };
    let (input, text) = BmapInput::read(&bmap_path).map_err(refused)?;
    let name = input.file.clone();
    let outcome = cache
        .import(
            file,
            ImportOptions {
                expected_sha256: expected,
                max_image_size: max_size.bytes(),
                reference_raw: true,
                bmap: Some(input),
                zip_entry: zip_entry.map(str::to_string),
                ..ImportOptions::default()
            },
        )
        .map_err(|source| match source {
            ImageError::BmapRefused { .. } => refused(source),
            source => AppError::Import {
                name: file.display().to_string(),
                source: Box::new(source),
            },
        })?;
    let note = match &outcome.map {
        Some(map) => MapNote::Attached(map.clone()),
        None => attached_note(
            cache
                .attach_bmap_counted(&outcome.image, &name, &text)
                .map_err(refused)?,
        ),
    };
    Ok((outcome, note))
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
    // A symbolic link that leads nowhere (dangling, or a loop): the file
    // was meant, and why it cannot be opened is the answer, not the cache's.
    if path.symlink_metadata().is_ok() {
        if let Err(source) = std::fs::metadata(path) {
            return Err(AppError::Import {
                name: name.to_string(),
                source: Box::new(flashrack_image::ImageError::ReadInput {
                    path: path.to_path_buf(),
                    source,
                }),
            });
        }
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

/// What became of an image's block map at its import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapNote {
    /// The bmap file given or found beside the image was checked and kept.
    Attached(StoredMap),
    /// The bmap file given makes the claims of the bmap already kept for
    /// this image, checked against it then: kept without reading the image.
    Known(StoredMap),
    /// A bmap file found beside the image does not describe it: refused (the
    /// image has no map unless it had one before).
    Refused {
        /// The bmap file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// The image already had a map, which it keeps.
    Kept(StoredMap),
    /// Generated from the image's file systems' allocation.
    Generated(StoredMap),
    /// None could be generated: the image can only be written whole.
    None {
        /// Why.
        reason: String,
    },
}

impl MapNote {
    /// One line for people.
    pub fn summary(&self) -> String {
        match self {
            MapNote::Attached(map) | MapNote::Kept(map) | MapNote::Generated(map) => {
                format!("block map: {}", map_words(map))
            }
            MapNote::Known(map) => format!(
                "block map: {} (checked against this image before: not read again)",
                map_words(map)
            ),
            MapNote::Refused { file, reason } => format!(
                "block map {} refused: {reason}; sparse runs need a map that matches the image",
                file.display()
            ),
            MapNote::None { reason } => {
                format!("no block map ({reason}); sparse runs are not possible")
            }
        }
    }
}

/// A map in words with its sizes: "generated from ext4 …: 40.1 MB of 64 MB
/// mapped (62.6 %)".
pub fn map_words(map: &StoredMap) -> String {
    let what = match &map.origin {
        MapOrigin::Bmap { file, version, .. } => {
            format!("bmap {version} ({file})")
        }
        MapOrigin::Generated { sources, .. } => {
            format!("generated from {}", sources.join("; "))
        }
    };
    let size = map.ranges.image_size().max(1);
    format!(
        "{what}: {} of {} mapped ({:.1} %)",
        ByteSize(map.ranges.mapped_bytes()),
        ByteSize(map.ranges.image_size()),
        map.ranges.mapped_bytes() as f64 * 100.0 / size as f64
    )
}

/// The bmap file bmaptool's conventions put beside an image file:
/// `IMAGE.bmap`, or `.bmap` after the name with one extension after another
/// taken off (`disk.img.xz` → `disk.img.xz.bmap`, `disk.img.bmap`,
/// `disk.bmap`), the first that is a regular file. One of those names that
/// is something else (a FIFO, a device, a directory) is not read (a FIFO
/// would hold the import until someone writes to it) and is warned of.
pub fn bmap_beside(file: &Path) -> Option<PathBuf> {
    let mut stem = file.to_path_buf();
    loop {
        let mut name = stem.clone().into_os_string();
        name.push(".bmap");
        let candidate = PathBuf::from(name);
        match std::fs::metadata(&candidate) {
            Ok(meta) if meta.is_file() => return Some(candidate),
            Ok(_) => tracing::warn!(
                bmap = %candidate.display(),
                "a bmap beside the image that is not a regular file: not read"
            ),
            Err(_) => {}
        }
        stem.extension()?;
        stem = stem.with_extension("");
    }
}

/// Gives an imported image its block map: the bmap file `bmap` (refused
/// with an error if it does not describe the image), else one found beside
/// `file` (refused with a note), else the map it has, else one generated from
/// its file systems' allocation.
pub fn map_image(
    cache: &ImageCache,
    image: &CachedImage,
    file: Option<&Path>,
    bmap: Option<&Path>,
) -> Result<MapNote, AppError> {
    let attach = |path: &Path| -> Result<MapNote, ImageError> {
        let (name, text) = BmapInput::read_text(path)?;
        cache
            .attach_bmap_counted(image, &name, &text)
            .map(attached_note)
    };
    if let Some(path) = bmap {
        return attach(path).map_err(|source| AppError::Bmap {
            path: path.to_path_buf(),
            source: Box::new(source),
        });
    }
    if let Some(path) = file.and_then(bmap_beside) {
        return Ok(match attach(&path) {
            Ok(note) => note,
            Err(error) => MapNote::Refused {
                file: path,
                reason: error.to_string(),
            },
        });
    }
    if let Some(map) = cache.block_map(&image.sha256())? {
        return Ok(MapNote::Kept(map));
    }
    match cache.generate_map(image) {
        Ok(map) => Ok(MapNote::Generated(map)),
        Err(ImageError::NoBlockMap { reason }) => Ok(MapNote::None {
            reason: reason.to_string(),
        }),
        Err(error) => Err(error.into()),
    }
}

/// What became of a bmap attached to a cached image.
fn attached_note((map, check): (StoredMap, BmapCheck)) -> MapNote {
    match check {
        BmapCheck::Known => MapNote::Known(map),
        BmapCheck::Read { .. } => MapNote::Attached(map),
    }
}

/// The map a sparse run of `image` writes by: the one kept, or one generated
/// now (an image imported before maps existed); none is an error that says
/// why.
pub fn sparse_map(cache: &ImageCache, image: &CachedImage) -> Result<StoredMap, AppError> {
    if let Some(map) = cache.block_map(&image.sha256())? {
        return Ok(map);
    }
    cache.generate_map(image).map_err(|error| match error {
        ImageError::NoBlockMap { reason } => AppError::NoBlockMap {
            name: image.meta.original_name.clone(),
            reason: reason.to_string(),
        },
        other => other.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::{bmap_beside, open_cache, resolve_image};

    #[test]
    fn a_link_that_leads_nowhere_says_why_it_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open_cache(&dir.path().join("data")).unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let dangling = dir.path().join("dangling.img");
        std::os::unix::fs::symlink(dir.path().join("gone.img"), &dangling).unwrap();
        for (link, why) in [(&a, "symbolic links"), (&dangling, "No such file")] {
            let error = resolve_image(
                &cache,
                link.to_str().unwrap(),
                None,
                flashrack_core::ByteSize(1 << 40),
            )
            .unwrap_err();
            let words = crate::downloads::error_chain(&error);
            assert!(words.starts_with("cannot import"), "{words}");
            assert!(words.contains(why), "{words}");
        }
    }

    #[test]
    fn the_bmap_beside_a_compressed_image_is_found_by_every_name_bmaptool_uses() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img.xz");
        std::fs::write(&image, b"xz").unwrap();
        assert_eq!(bmap_beside(&image), None);
        // Each name, alone, is found; with several, the most specific.
        for name in ["disk.bmap", "disk.img.bmap", "disk.img.xz.bmap"] {
            std::fs::write(dir.path().join(name), b"<bmap").unwrap();
            assert_eq!(bmap_beside(&image), Some(dir.path().join(name)), "{name}");
        }
        for name in ["disk.img.xz.bmap", "disk.img.bmap"] {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        assert_eq!(bmap_beside(&image), Some(dir.path().join("disk.bmap")));
        // A FIFO under the most specific name is not read (it would hold
        // the import): the next name is used.
        let fifo = dir.path().join("disk.img.xz.bmap");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(bmap_beside(&image), Some(dir.path().join("disk.bmap")));
        // A raw image: IMAGE.bmap, then the stem's.
        let raw = dir.path().join("disk.img");
        assert_eq!(bmap_beside(&raw), Some(dir.path().join("disk.bmap")));
        std::fs::write(dir.path().join("disk.img.bmap"), b"<bmap").unwrap();
        assert_eq!(bmap_beside(&raw), Some(dir.path().join("disk.img.bmap")));
    }
}
