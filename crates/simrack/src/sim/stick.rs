//! The stick: a [`Target`] over a backing file, its handles and the state they
//! share.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use flashrack_target::{Target, TargetError, TargetGeometry, TargetReader, TargetWriter};

use super::cache::Cache;
use super::pacing::Pacer;
use super::spec::SimStickSpec;
use super::transfer::{SimReader, SimWriter};

#[cfg(doc)]
use super::spec::FakeMode;

/// A snapshot of a stick's byte counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimCounters {
    /// Bytes accepted by writers (what fault thresholds on writes count).
    pub bytes_written: u64,
    /// Bytes returned to readers (what fault thresholds on reads count).
    pub bytes_read: u64,
    /// Bytes really written to the backing file (less than `bytes_written` when a
    /// [`FakeMode::Vanish`] stick drops them).
    pub medium_bytes_written: u64,
    /// Bytes really read from the backing file (not those the volatile cache
    /// answered).
    pub medium_bytes_read: u64,
    /// How many times the stick was reset.
    pub resets: u64,
}

/// A simulated USB stick backed by a sparse file.
///
/// Cheap to clone: clones share one stick. When the last clone is dropped the stick
/// counts as removed, so calls still blocked in a stall or a pacing sleep return
/// [`TargetError::Removed`] instead of hanging forever (a hang, by design, does not
/// end that way: only [`SimStick::release`] or the end of the process ends it).
#[derive(Clone)]
pub struct SimStick {
    // The handle, not the inner state, is what clones share: its `Drop` marks the
    // stick removed while writers and readers (which hold the inner state) live on.
    handle: Arc<Handle>,
}

struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.remove();
    }
}

/// What every handle on one stick shares.
pub(super) struct Inner {
    pub(super) spec: SimStickSpec,
    pub(super) name: String,
    pub(super) path: PathBuf,
    // A std Mutex because every caller is a blocking thread and critical sections
    // are short (no I/O is done while holding it); pacing and stalls wait on
    // `wake` so that `remove` and `release` reach them at once.
    pub(super) state: Mutex<State>,
    pub(super) wake: Condvar,
    // Atomics rather than `state` fields: they are bumped after the file I/O,
    // outside the lock, and read by observers without contending with the I/O path.
    pub(super) medium_written: AtomicU64,
    pub(super) medium_read: AtomicU64,
    // Its own lock, apart from `state`: a write-back cache writes what it
    // evicts to the medium while it holds it.
    pub(super) cache: Mutex<Cache>,
    pub(super) resets: AtomicU64,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) removed: bool,
    pub(super) released: bool,
    pub(super) writer_open: bool,
    pub(super) written: u64,
    pub(super) read: u64,
    pub(super) write_stall_fired: bool,
    pub(super) read_stall_fired: bool,
    pub(super) write_hang_fired: bool,
    pub(super) read_hang_fired: bool,
    /// Whether the transient write error has fired.
    pub(super) write_error_once_fired: bool,
    /// Calls currently blocked in a stall or a hang.
    pub(super) stalled: usize,
    pub(super) write_pacer: Pacer,
    pub(super) read_pacer: Pacer,
}

impl SimStick {
    /// Creates a stick whose medium is the file at `path`, created or truncated and
    /// sized (sparsely) to the bytes the stick really stores.
    pub fn create(spec: SimStickSpec, path: impl AsRef<Path>) -> io::Result<Self> {
        Self::create_with(spec, path.as_ref(), false)
    }

    pub(super) fn create_with(
        spec: SimStickSpec,
        path: &Path,
        create_new: bool,
    ) -> io::Result<Self> {
        spec.validate()?;
        let mut options = OpenOptions::new();
        options.write(true);
        if create_new {
            options.create_new(true);
        } else {
            options.create(true).truncate(true);
        }
        options.open(path)?.set_len(spec.stored_size())?;
        let name = if spec.name.is_empty() {
            path.file_stem()
                .map_or_else(String::new, |stem| stem.to_string_lossy().into_owned())
        } else {
            spec.name.clone()
        };
        let inner = Inner {
            spec,
            name,
            path: path.to_path_buf(),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            medium_written: AtomicU64::new(0),
            medium_read: AtomicU64::new(0),
            cache: Mutex::new(Cache::default()),
            resets: AtomicU64::new(0),
        };
        Ok(Self {
            handle: Arc::new(Handle {
                inner: Arc::new(inner),
            }),
        })
    }

    pub(super) fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// The configuration the stick was created with.
    pub fn spec(&self) -> &SimStickSpec {
        &self.inner().spec
    }

    /// The backing file.
    pub fn path(&self) -> &Path {
        &self.inner().path
    }

    /// Unplugs the stick: from now on every call returns [`TargetError::Removed`],
    /// and calls blocked in pacing or a stall wake up and return it. Idempotent.
    pub fn remove(&self) {
        self.inner().remove();
    }

    /// Power-cycles the stick (as a USB reset does): its volatile cache, if
    /// it has one, is dropped, and reads come from the medium again. Fails as
    /// removed on a removed stick.
    pub fn reset(&self) -> Result<(), TargetError> {
        self.inner().reset()
    }

    /// Whether the stick has been removed (by [`remove`](Self::remove) or a script).
    pub fn is_removed(&self) -> bool {
        self.inner().lock().removed
    }

    /// Lets stalled and hung calls carry on, and disarms stalls and hangs that
    /// have not fired yet.
    pub fn release(&self) {
        let inner = self.inner();
        inner.lock().released = true;
        inner.wake.notify_all();
    }

    /// Undoes [`release`](Self::release) once no call is stalled or hung: stalls
    /// and hangs that have not fired yet fire at their thresholds again (one that
    /// fired never fires twice). A test that lets a held stick go can so hold it
    /// again further on, with a later threshold.
    ///
    /// # Panics
    /// If a call is still held (it would be held again).
    pub fn rearm(&self) {
        let mut state = self.inner().lock();
        assert_eq!(state.stalled, 0, "a call is still held");
        state.released = false;
    }

    /// How many calls are blocked in a stall or a hang right now.
    pub fn stalled_calls(&self) -> usize {
        self.inner().lock().stalled
    }

    /// Waits up to `timeout` for a call to be blocked in a stall or a hang;
    /// returns whether one is.
    pub fn wait_until_stalled(&self, timeout: Duration) -> bool {
        let inner = self.inner();
        let deadline = Instant::now() + timeout;
        let mut state = inner.lock();
        while state.stalled == 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = inner
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// The stick's byte counters.
    pub fn counters(&self) -> SimCounters {
        let inner = self.inner();
        let state = inner.lock();
        SimCounters {
            bytes_written: state.written,
            bytes_read: state.read,
            medium_bytes_written: inner.medium_written.load(Ordering::Relaxed),
            medium_bytes_read: inner.medium_read.load(Ordering::Relaxed),
            resets: inner.resets.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for SimStick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimStick")
            .field("name", &self.inner().name)
            .field("path", &self.inner().path)
            .finish_non_exhaustive()
    }
}

impl Target for SimStick {
    fn name(&self) -> String {
        self.inner().name.clone()
    }

    fn geometry(&self) -> Result<TargetGeometry, TargetError> {
        self.inner().check_present()?;
        Ok(TargetGeometry {
            capacity: self.spec().capacity,
            logical_block_size: self.spec().logical_block_size,
        })
    }

    fn can_reset(&self) -> bool {
        true
    }

    fn reset(&self) -> Result<(), TargetError> {
        SimStick::reset(self)
    }

    fn open_writer(&self) -> Result<Box<dyn TargetWriter>, TargetError> {
        let inner = self.inner();
        // A slow or stuck start, before anything else (a removal meanwhile
        // ends it as removed).
        if let Some(delay) = inner.spec.open_delay {
            inner.pace(Some(Instant::now() + delay))?;
        }
        if inner.spec.stall_on_open && !inner.lock().released {
            inner.stall()?;
        }
        {
            let mut state = inner.lock();
            if state.removed {
                return Err(TargetError::Removed);
            }
            if inner.spec.read_only {
                return Err(TargetError::ReadOnly);
            }
            // Like O_EXCL on a block device: one writer at a time.
            if state.writer_open {
                return Err(TargetError::Busy("already open for writing".into()));
            }
            state.writer_open = true;
        }
        let opened = match inner.spec.open_error {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => OpenOptions::new().write(true).open(&inner.path),
        };
        match opened {
            Ok(file) => Ok(Box::new(SimWriter {
                inner: Arc::clone(inner),
                file,
            })),
            Err(error) => {
                inner.lock().writer_open = false;
                Err(open_error(&inner.path, error))
            }
        }
    }

    fn open_reader(&self) -> Result<Box<dyn TargetReader>, TargetError> {
        let inner = self.inner();
        inner.check_present()?;
        // A fresh handle on the file every time: nothing of ours is cached.
        let file = File::open(&inner.path).map_err(|error| open_error(&inner.path, error))?;
        Ok(Box::new(SimReader {
            inner: Arc::clone(inner),
            file,
        }))
    }
}

/// Opening the stick's backing file failed: the station's shortage of
/// descriptors or memory is the station's, anything else the stick's.
fn open_error(path: &Path, error: io::Error) -> TargetError {
    if flashrack_target::is_station_resource_error(&error) {
        TargetError::Station(format!("{}: {error}", path.display()))
    } else {
        TargetError::Open(format!("{}: {error}", path.display()))
    }
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn remove(&self) {
        self.lock().removed = true;
        self.wake.notify_all();
    }

    pub(super) fn check_present(&self) -> Result<(), TargetError> {
        if self.lock().removed {
            Err(TargetError::Removed)
        } else {
            Ok(())
        }
    }

    pub(super) fn block(&self) -> u64 {
        u64::from(self.spec.logical_block_size)
    }
}
