//! What makes re-importing instant: the cache remembers which files it has
//! imported and which file digests lead to which images.
//!
//! - `sources/<sha256 of the canonical path>.json`: the identity of the file last
//!   imported from that path (device, inode, size, mtime and ctime in ns) with
//!   its file and raw digests. A file whose identity matches is not read at all.
//!   The ctime is what makes this safe: anyone can put a file's mtime back
//!   (`touch -d`, `utimensat`), but every change of the file's content sets its
//!   ctime to the present, and user space cannot set it back. An identity is
//!   only recorded when the file's ctime lies clearly before the moment the file
//!   was looked at (see [`FileIdentity::is_settled`]), so a change in the same
//!   clock tick as the previous one cannot go unnoticed either.
//! - `aliases/<file size>/<file sha256>.json`: the raw digest a file with that
//!   digest decompresses to. A copy of a known file elsewhere is hashed once and
//!   not decompressed. The size directory tells, without hashing, whether any
//!   known file has the size of the one being imported.
//!
//! Both are hints: an entry is used only if the image it names is present, and an
//! unreadable entry is ignored (the file is then simply imported again).

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashrack_core::Sha256Digest;
use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::fsutil::write_json_atomic;

/// Who a file is, as far as the file system can tell without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileIdentity {
    /// The canonical path (symbolic links resolved).
    pub(crate) path: PathBuf,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime_sec: i64,
    pub(crate) mtime_nsec: i64,
    /// The inode change time: set to the present by every write, truncate,
    /// rename or attribute change, and never settable by user space. An entry
    /// written before this field existed does not parse and is ignored.
    pub(crate) ctime_sec: i64,
    pub(crate) ctime_nsec: i64,
}

/// How long after its last change a file's identity can be trusted on a file
/// system with nanosecond timestamps: the kernel stamps changes with a coarse
/// clock (one scheduler tick, at most 10 ms), so two changes within one tick
/// may carry the same ctime. Well above a tick.
const SETTLE_FINE: Duration = Duration::from_millis(100);

/// The same for a file system that keeps whole seconds (a ctime with no
/// nanoseconds: FAT, ext3 with small inodes, some network file systems).
const SETTLE_COARSE: Duration = Duration::from_secs(3);

impl FileIdentity {
    /// The identity of a regular file; `None` for anything else (a block device
    /// or a pipe has no stable identity worth remembering).
    pub(crate) fn new(canonical: PathBuf, meta: &Metadata) -> Option<Self> {
        meta.is_file().then(|| Self {
            path: canonical,
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime_sec: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        })
    }

    /// Whether the file's last change (its ctime) lies far enough before `seen`
    /// (when the identity was taken) that any later change must carry a later
    /// ctime. Only a settled identity is recorded: otherwise the file could be
    /// rewritten in the same clock tick as its previous change, after it was
    /// read, and keep its identity.
    pub(crate) fn is_settled(&self, seen: SystemTime) -> bool {
        let Some(ctime) = u64::try_from(self.ctime_sec).ok().and_then(|s| {
            UNIX_EPOCH.checked_add(Duration::new(
                s,
                self.ctime_nsec.clamp(0, 999_999_999) as u32,
            ))
        }) else {
            return false;
        };
        let margin = if self.ctime_nsec == 0 {
            SETTLE_COARSE
        } else {
            SETTLE_FINE
        };
        seen.duration_since(ctime).is_ok_and(|age| age > margin)
    }

    /// Whether `meta` still describes the same, unchanged file.
    pub(crate) fn matches(&self, meta: &Metadata) -> bool {
        Self::new(self.path.clone(), meta).as_ref() == Some(self)
    }
}

/// One `sources/` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SourceEntry {
    pub(crate) identity: FileIdentity,
    /// The sha256 of the file as it was given.
    pub(crate) file_sha256: Sha256Digest,
    /// The sha256 of the raw image it holds.
    pub(crate) raw_sha256: Sha256Digest,
}

/// One `aliases/` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AliasEntry {
    /// The sha256 of the raw image the file holds.
    pub(crate) raw_sha256: Sha256Digest,
}

/// The two directories of hints.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    sources: PathBuf,
    aliases: PathBuf,
    tmp: PathBuf,
}

impl Index {
    pub(crate) fn new(sources: PathBuf, aliases: PathBuf, tmp: PathBuf) -> Self {
        Self {
            sources,
            aliases,
            tmp,
        }
    }

    fn source_path(&self, canonical: &Path) -> PathBuf {
        let key = Sha256Digest::of(canonical.as_os_str().as_encoded_bytes());
        self.sources.join(format!("{}.json", key.to_hex()))
    }

    fn alias_dir(&self, size: u64) -> PathBuf {
        self.aliases.join(size.to_string())
    }

    /// The entry recorded for this file, if its identity is unchanged.
    pub(crate) fn source(&self, identity: &FileIdentity) -> Option<SourceEntry> {
        let entry: SourceEntry = read_hint(&self.source_path(&identity.path))?;
        (entry.identity == *identity).then_some(entry)
    }

    /// Records the file's identity and digests (replacing what was recorded for
    /// the same path).
    pub(crate) fn record_source(&self, entry: &SourceEntry) -> Result<(), ImageError> {
        let path = self.source_path(&entry.identity.path);
        write_json_atomic(&self.tmp, &path, entry)
    }

    /// Whether any file of this size has an alias, i.e. whether hashing a file of
    /// this size before decompressing it could save the decompression.
    pub(crate) fn has_alias_of_size(&self, size: u64) -> bool {
        self.alias_dir(size).is_dir()
    }

    /// The raw digest a file of this size and digest holds, if known.
    pub(crate) fn alias(&self, size: u64, file_sha256: &Sha256Digest) -> Option<Sha256Digest> {
        let path = self
            .alias_dir(size)
            .join(format!("{}.json", file_sha256.to_hex()));
        read_hint::<AliasEntry>(&path).map(|a| a.raw_sha256)
    }

    /// Records that a file of this size and digest holds the raw image `raw`.
    pub(crate) fn record_alias(
        &self,
        size: u64,
        file_sha256: &Sha256Digest,
        raw: &Sha256Digest,
    ) -> Result<(), ImageError> {
        let dir = self.alias_dir(size);
        fs::create_dir_all(&dir).map_err(|source| ImageError::CacheIo {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("{}.json", file_sha256.to_hex()));
        write_json_atomic(&self.tmp, &path, &AliasEntry { raw_sha256: *raw })
    }

    /// The raw digests of files whose own sha256 is `file_sha256`, whatever their
    /// size (used to find an image by the digest of the file it came from).
    pub(crate) fn aliases_of_file(&self, file_sha256: &Sha256Digest) -> Vec<Sha256Digest> {
        let name = format!("{}.json", file_sha256.to_hex());
        let mut found = Vec::new();
        for dir in read_dir_paths(&self.aliases) {
            if let Some(alias) = read_hint::<AliasEntry>(&dir.join(&name)) {
                found.push(alias.raw_sha256);
            }
        }
        found
    }

    /// Forgets every source and alias that leads to `raw`.
    pub(crate) fn forget(&self, raw: &Sha256Digest) {
        for path in read_dir_paths(&self.sources) {
            if read_hint::<SourceEntry>(&path).is_some_and(|e| e.raw_sha256 == *raw) {
                remove_hint(&path);
            }
        }
        for dir in read_dir_paths(&self.aliases) {
            for path in read_dir_paths(&dir) {
                if read_hint::<AliasEntry>(&path).is_some_and(|e| e.raw_sha256 == *raw) {
                    remove_hint(&path);
                }
            }
            // Only succeeds when empty, which is what we want.
            let _ = fs::remove_dir(&dir);
        }
    }
}

/// Reads a hint file; a missing or unreadable one is no hint.
fn read_hint<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "ignoring unreadable cache hint");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "ignoring malformed cache hint");
            None
        }
    }
}

fn remove_hint(path: &Path) {
    if let Err(error) = fs::remove_file(path) {
        tracing::debug!(path = %path.display(), %error, "cannot remove cache hint");
    }
}

fn read_dir_paths(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed_at(sec: i64, nsec: i64) -> FileIdentity {
        FileIdentity {
            path: PathBuf::from("/x/disk.img"),
            dev: 1,
            ino: 2,
            size: 3,
            mtime_sec: 0,
            mtime_nsec: 0,
            ctime_sec: sec,
            ctime_nsec: nsec,
        }
    }

    fn at(sec: u64, nsec: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(sec, nsec)
    }

    #[test]
    fn an_identity_is_settled_only_well_after_the_last_change() {
        let file = changed_at(1000, 500_000_000);
        assert!(!file.is_settled(at(1000, 500_000_000)), "changed just now");
        assert!(
            !file.is_settled(at(1000, 550_000_000)),
            "within a few ticks"
        );
        assert!(file.is_settled(at(1000, 700_000_000)));
        assert!(!file.is_settled(at(999, 0)), "a change in the future");
    }

    #[test]
    fn whole_second_timestamps_need_longer_to_settle() {
        let file = changed_at(1000, 0);
        assert!(!file.is_settled(at(1001, 900_000_000)));
        assert!(file.is_settled(at(1003, 100_000_000)));
    }

    #[test]
    fn the_change_time_is_part_of_the_identity() {
        let a = changed_at(1000, 1);
        let b = changed_at(1000, 2);
        assert_ne!(a, b);
        // An entry recorded before the change time was part of it does not
        // parse, so it is never taken for a match.
        let old = r#"{"identity":{"path":"/x","dev":1,"ino":2,"size":3,"mtime_sec":0,"mtime_nsec":0},
            "file_sha256":"0000000000000000000000000000000000000000000000000000000000000000",
            "raw_sha256":"0000000000000000000000000000000000000000000000000000000000000000"}"#;
        assert!(serde_json::from_str::<SourceEntry>(old).is_err());
    }
}
