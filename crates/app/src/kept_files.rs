//! The files flashrack keeps, as the target guard asks about them: a loop
//! device over one of them is refused ([`Refusal::ProtectedFile`]), because
//! writing it would corrupt an image the cache holds (and the runs written
//! from it) or the records.
//!
//! Kept are: every file under the data directory (the records, the cache's
//! own image files, imports under way), every image file the cache answers
//! for now (its own copy, or the operator's raw file it references in place,
//! compared by device and inode, so no spelling of the path gets past it), and
//! files named for one command (the file a flash imports while it writes).
//! The cache is asked at each question, not remembered: an image imported a
//! moment ago is protected at once.
//!
//! [`Refusal::ProtectedFile`]: flashrack_guard::Refusal::ProtectedFile

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flashrack_guard::{BackingFile, FileKeeper, ProtectedFiles};
use flashrack_image::{CachedImage, ImageCache};

/// The data directory, its image cache and a command's own files, as a
/// [`FileKeeper`].
pub struct KeptFiles {
    /// The data directory with symbolic links resolved (the kernel names a
    /// loop device's backing file by its resolved path).
    data_dir: PathBuf,
    /// Asked at every question: images come and go while the station runs.
    cache: ImageCache,
    /// Files kept for one command: device, inode, and what they are.
    also: Vec<(u64, u64, String)>,
}

impl KeptFiles {
    /// The files of `data_dir` and of its image `cache`.
    pub fn new(data_dir: &Path, cache: ImageCache) -> Self {
        KeptFiles {
            data_dir: std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()),
            cache,
            also: Vec::new(),
        }
    }

    /// Keeps `file` too (compared by device and inode), described as `what`.
    /// A file that cannot be looked at now adds nothing.
    pub fn also(mut self, file: &Path, what: impl Into<String>) -> Self {
        if let Ok(meta) = std::fs::metadata(file) {
            self.also.push((meta.dev(), meta.ino(), what.into()));
        }
        self
    }

    /// The guard policy's part: these files protected.
    pub fn protected(self) -> ProtectedFiles {
        ProtectedFiles::new(Arc::new(self))
    }
}

/// How a cached image is named in a refusal.
fn describe(image: &CachedImage) -> String {
    let name = &image.meta.original_name;
    match image.meta.reference {
        Some(_) => format!(
            "the image {} ({name}) that the cache reads in place",
            image.sha256().short()
        ),
        None => format!(
            "the cache's file of image {} ({name})",
            image.sha256().short()
        ),
    }
}

impl FileKeeper for KeptFiles {
    fn keeps(&self, file: &BackingFile) -> Option<String> {
        if let Some((dev, ino)) = file.file {
            if let Some((_, _, what)) = self.also.iter().find(|(d, i, _)| (*d, *i) == (dev, ino)) {
                return Some(what.clone());
            }
            match self.cache.list() {
                Ok(images) => {
                    let same = |image: &&CachedImage| {
                        std::fs::metadata(&image.path)
                            .is_ok_and(|meta| (meta.dev(), meta.ino()) == (dev, ino))
                    };
                    if let Some(image) = images.iter().find(same) {
                        return Some(describe(image));
                    }
                }
                // The guard fails closed: a file that cannot be ruled out
                // is kept.
                Err(error) => {
                    return Some(format!(
                        "which cannot be ruled out as a cached image (the cache cannot be listed: {error})"
                    ))
                }
            }
        }
        let path = std::fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone());
        path.starts_with(&self.data_dir).then(|| {
            format!(
                "a file of flashrack's data directory {} (its records and image cache)",
                self.data_dir.display()
            )
        })
    }
}
