//! One flashrack per data directory.
//!
//! Two processes writing one data directory corrupt each other's records: a
//! second `flash` takes the first one's running attempts for leftovers of a crash
//! and marks them interrupted; two stations record verdicts over each other. So
//! every command that writes the records or the image cache (`flash`, `serve`,
//! `demo`, `image import`, `image remove`) first takes an exclusive lock on the
//! data directory's `flashrack.lock`, held for the life of the process and
//! released by the kernel however it ends, and writes its pid into the file.
//! A second process finds the lock taken and stops before touching anything,
//! naming the holder's pid, or waits for it. Reading the records (`report …`)
//! takes no lock and writes nothing.
//!
//! The lock is two locks on one open file, both the kernel's and both
//! released with it: a `flock(2)` lock, which every flashrack takes (those
//! before the second lock existed too: one of each on a data directory
//! still excludes the other), then an open file description lock
//! (`F_OFD_SETLK`), which [`in_use`] can test without taking it
//! (`F_OFD_GETLK`) from any PID namespace. A `flock` lock can only be seen
//! in `/proc/locks`, which lists no lock held from outside the reader's PID
//! namespace (a flashrack in another container, or on the host, sharing the
//! data directory).
//!
//! The binary takes the lock (before anything else touches the directory);
//! [`Application::build`](crate::Application::build) does not, so that tests
//! can build stations in directories of their own without one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// The lock file in a data directory.
pub const LOCK_FILE: &str = "flashrack.lock";

/// Who holds a data directory's lock, as the holder wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockHolder(pub Option<u32>);

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("pid unknown"),
        }
    }
}

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The lock file could not be opened.
    #[error("cannot open the lock file {}", path.display())]
    Open {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another flashrack holds the lock (and the caller would not wait).
    #[error(
        "the data directory {} is in use by another flashrack ({holder}); \
         wait for it to finish, or pass --wait",
        dir.display()
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// Who holds it.
        holder: LockHolder,
    },
    /// Locking failed otherwise.
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pid could not be written into the lock file.
    #[error("cannot write {}", path.display())]
    WritePid {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Whether to wait for a lock another process holds.
pub enum Wait<'a> {
    /// Stop at once with [`LockError::InUse`].
    No,
    /// Wait for it; `waiting` is told who holds it before the wait begins (the
    /// binary says so on stderr).
    Yes(&'a dyn Fn(LockHolder)),
}

/// The data directory's lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    /// The locked file; the lock lives as long as this descriptor.
    _file: File,
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (created if missing). When another process
    /// holds it: [`LockError::InUse`], or, with [`Wait::Yes`], waits until it is
    /// released.
    pub fn acquire(data_dir: &Path, wait: Wait<'_>) -> Result<DataDirLock, LockError> {
        std::fs::create_dir_all(data_dir).map_err(|source| LockError::CreateDir {
            dir: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(LOCK_FILE);
        // Neither `truncate` nor `create_new`: opening must not change a file
        // another process holds.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        let lock_error = |errno: rustix::io::Errno| LockError::Lock {
            path: path.clone(),
            source: std::io::Error::from(errno),
        };
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = holder(&mut file);
                match wait {
                    Wait::No => {
                        return Err(LockError::InUse {
                            dir: data_dir.to_path_buf(),
                            holder,
                        })
                    }
                    Wait::Yes(waiting) => {
                        waiting(holder);
                        flock(&file, FlockOperation::LockExclusive).map_err(lock_error)?;
                    }
                }
            }
            Err(errno) => return Err(lock_error(errno)),
        }
        // Holding the `flock` lock, no other flashrack holds this one: the
        // kernel drops a holder's open file description lock before its
        // `flock` lock when it closes the file. Taken without waiting all the
        // same, so that whatever else may hold it is named, not waited for.
        match ofd_lock(&file, libc::F_OFD_SETLK, libc::F_WRLCK) {
            Ok(_) => {}
            Err(error) if matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                return Err(LockError::InUse {
                    dir: data_dir.to_path_buf(),
                    holder: holder(&mut file),
                })
            }
            Err(source) => {
                return Err(LockError::Lock {
                    path: path.clone(),
                    source,
                })
            }
        }
        write_pid(&mut file).map_err(|source| LockError::WritePid {
            path: path.clone(),
            source,
        })?;
        Ok(DataDirLock { _file: file })
    }
}

/// Whether a flashrack holds the lock of `data_dir` now, tested without
/// taking it (a reader that took it even for a moment could turn away a
/// flashrack starting then): whether the kernel would refuse a write lock
/// on the lock file's open file description lock (`F_OFD_GETLK`), which
/// answers for a holder in any PID namespace; and, for a flashrack from
/// before that lock existed (its `flock` lock only: an upgraded binary
/// beside a station still running the old one), whether `/proc/locks`
/// lists a `flock` lock on the file (only a holder in this PID namespace or
/// one below it is listed there).
/// `None` when that cannot be told: no lock file (records copied elsewhere,
/// or written by a process that never took the lock, as tests' stations),
/// or a kernel without open file description locks (before Linux 3.15)
/// and no `/proc/locks`.
pub fn in_use(data_dir: &Path) -> Option<bool> {
    // Read-only: a report may read records it cannot write, and testing
    // for a lock needs no write access.
    let file = File::open(data_dir.join(LOCK_FILE)).ok()?;
    let tested = ofd_lock(&file, libc::F_OFD_GETLK, libc::F_WRLCK)
        .ok()
        .map(|kind| kind != libc::F_UNLCK as libc::c_short);
    match (tested, flock_listed(&file)) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (None, None) => None,
        _ => Some(false),
    }
}

/// Whether `/proc/locks` lists a `flock` lock on `file`; `None` without
/// `/proc/locks`.
fn flock_listed(file: &File) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    // "1: FLOCK  ADVISORY  WRITE 6688 fe:00:5775412 0 EOF" (the device's
    // major and minor in hex, the inode in decimal).
    let wanted = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(meta.dev()),
        rustix::fs::minor(meta.dev()),
        meta.ino()
    );
    Some(locks.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.any(|w| w == "FLOCK") && line.split_whitespace().any(|w| w == wanted)
    }))
}

/// `fcntl(file, command, …)` with an open file description lock of `kind`
/// over the whole file (`F_OFD_SETLK` to take it without waiting,
/// `F_OFD_GETLK` to test it): the lock's type after the call, which for
/// `F_OFD_GETLK` is `F_UNLCK` when nothing would conflict. Unlike a POSIX
/// record lock, this one belongs to the open file (as a `flock` lock does):
/// closing another descriptor of the file in the same process, as
/// [`in_use`] does, does not release it.
#[allow(unsafe_code)]
fn ofd_lock(
    file: &File,
    command: libc::c_int,
    kind: libc::c_int,
) -> std::io::Result<libc::c_short> {
    use std::os::fd::AsRawFd;
    // SAFETY: `flock` is a plain C struct of integers, for which all zeroes
    // is a valid value (and `l_pid` must be 0 for an OFD lock).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // `l_start` and `l_len` 0: the whole file, however long it grows.
    // SAFETY: the descriptor is open for the call (borrowed from `file`),
    // and `lock` is a valid `flock` that outlives it, the only memory an
    // `F_OFD_SETLK` or `F_OFD_GETLK` call reads or writes.
    let result = unsafe { libc::fcntl(file.as_raw_fd(), command, &mut lock) };
    if result == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lock.l_type)
}

/// Who holds the lock, as the holder wrote it: its pid.
fn holder(file: &mut File) -> LockHolder {
    let mut text = String::new();
    LockHolder(
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text))
            .ok()
            .and_then(|_| text.trim().parse::<u32>().ok()),
    )
}

/// Replaces the file's contents with this process's pid.
fn write_pid(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_data_directory_names_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let first = DataDirLock::acquire(&data_dir, Wait::No).unwrap();
        // `flock` locks belong to an open file: a second open in this process
        // is refused like another process would be.
        let error = DataDirLock::acquire(&data_dir, Wait::No).unwrap_err();
        match &error {
            LockError::InUse { holder, .. } => {
                assert_eq!(*holder, LockHolder(Some(std::process::id())))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            error.to_string().contains(&format!(
                "is in use by another flashrack (pid {})",
                std::process::id()
            )),
            "{error}"
        );
        drop(first);
        DataDirLock::acquire(&data_dir, Wait::No).unwrap();
    }

    #[test]
    fn in_use_is_told_while_the_lock_is_held_and_takes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        assert_eq!(in_use(&data_dir), None, "no lock file: cannot be told");
        let lock = DataDirLock::acquire(&data_dir, Wait::No).unwrap();
        assert_eq!(in_use(&data_dir), Some(true));
        // The test closed its own descriptor of the file: the lock is held
        // all the same (it belongs to the holder's open file).
        assert_eq!(in_use(&data_dir), Some(true));
        assert!(matches!(
            DataDirLock::acquire(&data_dir, Wait::No),
            Err(LockError::InUse { .. })
        ));
        drop(lock);
        assert_eq!(in_use(&data_dir), Some(false));
        // Testing took nothing: a flashrack starts after it.
        let _again = DataDirLock::acquire(&data_dir, Wait::No).unwrap();
        assert_eq!(in_use(&data_dir), Some(true));
    }

    /// Each of the two locks alone is told: the open file description lock
    /// (what answers across PID namespaces, and which `/proc/locks` does not
    /// list as a `flock` lock), and the `flock` lock of a flashrack from
    /// before it (which also still keeps a new one out).
    #[test]
    fn in_use_tells_either_lock_alone() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(data_dir.join(LOCK_FILE))
                .unwrap()
        };
        let ofd = open();
        ofd_lock(&ofd, libc::F_OFD_SETLK, libc::F_WRLCK).unwrap();
        assert_eq!(in_use(&data_dir), Some(true), "an OFD lock alone");
        drop(ofd);
        assert_eq!(in_use(&data_dir), Some(false));

        let older = open();
        flock(&older, FlockOperation::NonBlockingLockExclusive).unwrap();
        assert_eq!(in_use(&data_dir), Some(true), "a flock lock alone");
        assert!(matches!(
            DataDirLock::acquire(&data_dir, Wait::No),
            Err(LockError::InUse { .. })
        ));
        drop(older);
        assert_eq!(in_use(&data_dir), Some(false));
    }
}
