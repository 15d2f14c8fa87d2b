//! One flashrack per data directory.
//!
//! Two processes writing one data directory corrupt each other's records: a
//! second `flash` takes the first one's running attempts for leftovers of a crash
//! and marks them interrupted; two stations record verdicts over each other. So
//! every command that writes the records or the image cache (`flash`, `serve`,
//! `demo`, `image import`, `image remove`) first takes an exclusive lock on the
//! data directory's `flashrack.lock` (`flock(2)`, held for the life of the
//! process and released by the kernel however it ends), and writes its pid into
//! the file. A second process finds the lock taken and stops before touching
//! anything, naming the holder's pid, or waits for it (`--wait`). Reading the
//! records (`report …`) takes no lock and writes nothing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rustix::fs::{flock, FlockOperation};

/// The lock file in a data directory.
pub const LOCK_FILE: &str = "flashrack.lock";

/// The data directory's lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    /// The locked file; the lock lives as long as this descriptor.
    _file: File,
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (created if missing). When another process
    /// holds it: an error naming that process's pid, or, with `wait`, waits
    /// until it is released.
    pub fn acquire(data_dir: &Path, wait: bool) -> Result<DataDirLock> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let path = data_dir.join(LOCK_FILE);
        // Neither `truncate` nor `create_new`: opening must not change a file
        // another process holds.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = holder(&mut file);
                if !wait {
                    bail!(
                        "the data directory {} is in use by another flashrack ({}); \
                         wait for it to finish, or pass --wait",
                        data_dir.display(),
                        holder
                    );
                }
                eprintln!(
                    "waiting for another flashrack ({holder}) to release {} …",
                    data_dir.display()
                );
                flock(&file, FlockOperation::LockExclusive)
                    .with_context(|| format!("cannot lock {}", path.display()))?;
            }
            Err(errno) => {
                return Err(std::io::Error::from(errno))
                    .with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        write_pid(&mut file).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(DataDirLock { _file: file })
    }
}

/// Who holds the lock, as the holder wrote it: `pid N`.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let pid = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_string(&mut text))
        .ok()
        .and_then(|_| text.trim().parse::<u32>().ok());
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}

/// Replaces the file's contents with this process's pid.
fn write_pid(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    file.flush()
}
