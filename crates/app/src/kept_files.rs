//! The files flashrack keeps, as the target guard asks about them: a loop
//! device over one of them is refused ([`Refusal::ProtectedFile`]), because
//! writing it would corrupt an image the cache holds (and the runs written
//! from it) or the records.
//!
//! Kept are: every file under the data directory (the records, the cache's
//! own image files, imports under way), every image file the cache answers
//! for now (its own copy, or the operator's raw file it references in place),
//! and files named for one command (the file a flash imports while it
//! writes). All are compared by device and inode with the file the loop
//! device writes (the guard takes those from the loop device's status), so
//! no spelling of a path, a rename or a link since removed gets past it;
//! files of the data directory are also known by their path, for a loop
//! device whose file is gone. The cache is asked at each question, not
//! remembered: an image imported a moment ago is protected at once.
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
    /// `None` for a data directory without a cache (yet).
    cache: Option<ImageCache>,
    /// Files kept for one command: device, inode, and what they are.
    also: Vec<(u64, u64, String)>,
}

impl KeptFiles {
    /// The files of `data_dir` and of its image `cache`.
    pub fn new(data_dir: &Path, cache: ImageCache) -> Self {
        KeptFiles {
            data_dir: std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()),
            cache: Some(cache),
            also: Vec::new(),
        }
    }

    /// The files of `data_dir` and of its image cache as they are, for a
    /// command that only looks (`flashrack devices`): nothing is created or
    /// cleaned up, and a data directory without a cache keeps only its files.
    pub fn looking_at(data_dir: &Path) -> Result<Self, crate::AppError> {
        let dir = crate::images::cache_dir(data_dir);
        let cache =
            ImageCache::open_existing(&dir).map_err(|source| crate::AppError::OpenCache {
                dir,
                source: Box::new(source),
            })?;
        Ok(KeptFiles {
            data_dir: std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()),
            cache,
            also: Vec::new(),
        })
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
            match self.cache.as_ref().map_or(Ok(Vec::new()), ImageCache::list) {
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
            if holds_inode(&self.data_dir, dev, ino) == Some(true) {
                return Some(self.data_dir_words());
            }
        }
        let path = std::fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone());
        path.starts_with(&self.data_dir)
            .then(|| self.data_dir_words())
    }
}

impl KeptFiles {
    fn data_dir_words(&self) -> String {
        format!(
            "a file of flashrack's data directory {} (its records and image cache)",
            self.data_dir.display()
        )
    }
}

/// The most entries [`holds_inode`] looks at: a data directory holds its
/// records, two files per cached image and a few temporary files.
const MAX_DATA_DIR_ENTRIES: usize = 100_000;

/// Whether the file `dev`/`ino` lies under `dir` (symbolic links not
/// followed); `Some(true)` also when the directory is too large to look
/// through (the guard fails closed), `None` when `dir` cannot be looked at.
/// A file unlinked from it is not found: its path (kept with " (deleted)" by
/// the kernel) still says where it was.
fn holds_inode(dir: &Path, dev: u64, ino: u64) -> Option<bool> {
    let top = std::fs::symlink_metadata(dir).ok()?;
    // Another file system: no file of it is under `dir`.
    if top.dev() != dev {
        return Some(false);
    }
    let mut pending = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_DATA_DIR_ENTRIES {
                return Some(true);
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if (meta.dev(), meta.ino()) == (dev, ino) {
                return Some(true);
            }
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backing file a loop device's status names: `file`'s device and
    /// inode, whatever path the kernel gives.
    fn status_of(file: &Path, path_said: &str) -> BackingFile {
        let meta = std::fs::metadata(file).unwrap();
        BackingFile {
            path: PathBuf::from(path_said),
            file: Some((meta.dev(), meta.ino())),
            deleted: false,
            from_loop_status: true,
        }
    }

    #[test]
    fn looking_at_a_data_directory_creates_nothing_and_keeps_its_files_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("deep/er")).unwrap();
        let records = data.join("deep/er/records.sqlite");
        std::fs::write(&records, b"records").unwrap();
        let outside = dir.path().join("elsewhere.img");
        std::fs::write(&outside, b"not kept").unwrap();

        let kept = KeptFiles::looking_at(&data).unwrap();
        // A file of the data directory, whatever path the kernel says.
        let what = kept.keeps(&status_of(&records, "/k.img")).expect("kept");
        assert!(what.contains("data directory"), "{what}");
        // Another file, even under a path that would be the data directory's
        // (the path is only the kernel's name for it): by inode, not kept.
        let elsewhere = status_of(&outside, outside.to_str().unwrap());
        assert_eq!(kept.keeps(&elsewhere), None);
        // A file unlinked from the data directory is known by its path.
        let gone = BackingFile {
            path: data.join("cache/images/gone.img"),
            file: None,
            deleted: true,
            from_loop_status: false,
        };
        assert!(kept.keeps(&gone).is_some());
        // Nothing was created: no cache appeared in the data directory.
        assert!(!data.join("cache").exists());
        // No data directory at all: nothing kept, nothing created.
        let none = KeptFiles::looking_at(&dir.path().join("absent")).unwrap();
        assert_eq!(none.keeps(&elsewhere), None);
        assert!(!dir.path().join("absent").exists());
    }
}
