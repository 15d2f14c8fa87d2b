//! Crash-safe file writing: temporary files that delete themselves unless
//! persisted, and persisting as fsync + rename + fsync of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::ImageError;

/// Suffix of every temporary file, so that leftovers are easy to recognise.
const TEMP_SUFFIX: &str = ".partial";

/// Makes temporary names unique within this process; the pid and the clock make
/// them unique across processes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file under construction in the cache's `tmp/` directory. Dropping it without
/// [`TempFile::persist`] deletes it, so an error or a panic anywhere during an
/// import leaves nothing behind.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: PathBuf,
    file: File,
    /// Set once the file has been renamed to its final name; from then on it is
    /// not ours to delete.
    persisted: bool,
}

impl TempFile {
    /// Creates `<dir>/<pid>-<nanos>-<counter>.<kind>.partial`, failing rather than
    /// reusing a name that exists.
    pub(crate) fn create_in(dir: &Path, kind: &str) -> Result<Self, ImageError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let counter = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}-{nanos}-{counter}.{kind}{TEMP_SUFFIX}",
            std::process::id()
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| ImageError::CacheIo {
                action: "create",
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            file,
            persisted: false,
        })
    }

    /// Where the temporary file is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, to read it or clone into it.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The open file, to write.
    pub(crate) fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Flushes the data to disk and renames the file to `dest` (in the same file
    /// system), then flushes `dest`'s directory so the new name is durable too.
    pub(crate) fn persist(mut self, dest: &Path) -> Result<(), ImageError> {
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::CacheIo {
                action,
                path,
                source,
            }
        };
        self.file.sync_all().map_err(io_err("flush", &self.path))?;
        fs::rename(&self.path, dest).map_err(io_err("rename into place", dest))?;
        self.persisted = true;
        sync_parent(dest)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            if let Err(error) = fs::remove_file(&self.path) {
                tracing::debug!(path = %self.path.display(), %error, "cannot remove temporary file");
            }
        }
    }
}

/// Flushes the directory holding `path`, making a rename into it durable.
pub(crate) fn sync_parent(path: &Path) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ImageError::CacheIo {
            action: "flush directory",
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `value` as JSON to `dest` through a temporary file in `tmp_dir`, so
/// that readers see either the old content or the new, never a torn write.
pub(crate) fn write_json_atomic<T: Serialize>(
    tmp_dir: &Path,
    dest: &Path,
    value: &T,
) -> Result<(), ImageError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| ImageError::CacheIo {
        action: "serialize",
        path: dest.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let mut temp = TempFile::create_in(tmp_dir, "json")?;
    temp.file_mut()
        .write_all(&json)
        .map_err(|source| ImageError::CacheIo {
            action: "write",
            path: temp.path().to_path_buf(),
            source,
        })?;
    temp.persist(dest)
}

/// Removes temporary files left in `tmp_dir` by processes that no longer run (a
/// crash or power loss during an import). Files of live processes, including
/// this one, are left alone: another import may be writing them right now.
pub(crate) fn remove_stale_temp_files(tmp_dir: &Path) {
    let Ok(entries) = fs::read_dir(tmp_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.ends_with(TEMP_SUFFIX) {
            continue;
        }
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            tracing::debug!(
                file = name,
                "removing temporary file left by a dead process"
            );
            // Best effort: a file we cannot remove now is tried again next time.
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_dropped_temp_file_is_deleted_and_a_persisted_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut temp = TempFile::create_in(dir.path(), "img").unwrap();
            temp.file_mut().write_all(b"abc").unwrap();
            assert_eq!(names(dir.path()).len(), 1);
        }
        assert!(names(dir.path()).is_empty());

        let mut temp = TempFile::create_in(dir.path(), "img").unwrap();
        temp.file_mut().write_all(b"abc").unwrap();
        temp.persist(&dir.path().join("final")).unwrap();
        assert_eq!(names(dir.path()), ["final"]);
        assert_eq!(fs::read(dir.path().join("final")).unwrap(), b"abc");
    }

    #[test]
    fn stale_temp_files_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Pid 0 is never a user process, so this file is a dead process's leftover.
        fs::write(dir.path().join("0-1-1.img.partial"), b"x").unwrap();
        let live = TempFile::create_in(dir.path(), "img").unwrap();
        fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        remove_stale_temp_files(dir.path());
        let left = names(dir.path());
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&"notes.txt".to_string()));
        assert!(live.path().exists());
    }
}
