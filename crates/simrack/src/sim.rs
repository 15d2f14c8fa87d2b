//! The simulated rack: file-backed virtual sticks with deterministic faults.
//!
//! A [`SimStick`] is a [`Target`] whose "medium" is a sparse backing file. It keeps
//! the contract a real block device keeps (aligned offsets and buffers, nothing
//! past the claimed capacity, one writer at a time, every reader a fresh handle on
//! the file) and can misbehave in the ways real sticks do, as configured by a
//! [`SimStickSpec`]:
//! - **slow**: independent write and read speed limits, paced by sleeping;
//! - **failing**: a write error once N bytes have been written; a bad block
//!   that fails every write covering it, as a whole; a read error once N bytes
//!   have been read back;
//! - **corrupting**: chosen bytes come back flipped on read-back while the medium
//!   holds the right data;
//! - **lying about capacity**: claims more than it stores, wrapping or dropping
//!   writes past its real size ([`FakeMode`]);
//! - **read-only**, **too small** (a small claim);
//! - **removed**: by [`SimStick::remove`] from any thread, or scripted after N bytes
//!   written or read back;
//! - **stalled**: a call stops responding after N bytes until the stick is removed,
//!   [`SimStick::release`]d or dropped;
//! - **hung**: a call never returns after N bytes, whatever happens to the stick
//!   (removal, the last handle dropped), until [`SimStick::release`] or the end of
//!   the process: a `write()` or `read()` stuck in the kernel, which no one can
//!   cancel.
//!
//! Byte counts that trigger faults ("after N bytes") are totals over the stick's life,
//! across every writer (respectively reader) opened on it, so the engine's capacity
//! probe counts too. A call that crosses a threshold first puts the bytes before the
//! threshold on the medium, like a short write of a real device.
//!
//! [`SimCounters`] tell how many bytes really went to and came from the backing file,
//! so tests and benchmarks can check that verification read the medium.
//!
//! [`SimRack`] creates numbered sticks ("S01", "S02", ...) in a directory and cleans
//! up after itself.
//!
//! Concurrency: a stick is shared through cheap clones ([`SimStick`] is an `Arc`);
//! all its handles share one state behind a `Mutex` and one `Condvar`, which pacing
//! sleeps and stalls wait on so that removal wakes them at once. No call ever spins.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use flashrack_target::{Target, TargetError, TargetGeometry, TargetReader, TargetWriter};

/// What a stick that claims more than it stores does with bytes past its real size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeMode {
    /// Writes at `offset >= real_size` land at `offset % real_size`, overwriting
    /// earlier data; reads map the same way (the classic counterfeit stick).
    Wrap,
    /// Writes past `real_size` are accepted and dropped; reads there return zeros.
    Vanish,
}

/// A claimed capacity larger than what the stick really stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeCapacity {
    /// Bytes really stored (the backing file's size).
    pub real_size: u64,
    /// What happens to offsets at or past `real_size`.
    pub mode: FakeMode,
}

/// Configuration of one simulated stick: its identity, its speed and its faults.
///
/// Built with [`SimStickSpec::new`] and the chained setters; every fault is off
/// unless set. Fields are public so that a configuration layer can fill them in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimStickSpec {
    /// Name reported by [`Target::name`]; empty lets [`SimRack`] number the stick.
    pub name: String,
    /// Claimed capacity in bytes, a multiple of `logical_block_size`.
    pub capacity: u64,
    /// Logical block size: a power of two, at least 512.
    pub logical_block_size: u32,
    /// Write speed limit in bytes per second; `None` is unlimited.
    pub write_bytes_per_sec: Option<u64>,
    /// Read speed limit in bytes per second; `None` is unlimited.
    pub read_bytes_per_sec: Option<u64>,
    /// Writes fail with `EIO` once this many bytes have been written.
    pub write_error_after: Option<u64>,
    /// Bad blocks: every write covering the logical block that holds one of
    /// these offsets fails with `EIO` as a whole.
    pub write_fails_at: Vec<u64>,
    /// Reads fail with `EIO` once this many bytes have been read back.
    pub read_error_after: Option<u64>,
    /// Offsets whose byte reads back flipped (`!byte`) while the medium is intact.
    pub corrupt_at: Vec<u64>,
    /// Stores less than it claims.
    pub fake: Option<FakeCapacity>,
    /// Refuses to be opened for writing.
    pub read_only: bool,
    /// Removed once this many bytes have been written.
    pub remove_after_written: Option<u64>,
    /// Removed once this many bytes have been read back.
    pub remove_after_read: Option<u64>,
    /// Stops responding once this many bytes have been written.
    pub stall_after_written: Option<u64>,
    /// Stops responding once this many bytes have been read back.
    pub stall_after_read: Option<u64>,
    /// Never returns (until released) once this many bytes have been written.
    pub hang_after_written: Option<u64>,
    /// Never returns (until released) once this many bytes have been read back.
    pub hang_after_read: Option<u64>,
    /// Opening for writing fails with this OS error (`errno`), classified as a
    /// real open failure would be: `EMFILE` plays a station out of descriptors.
    pub open_error: Option<i32>,
}

impl SimStickSpec {
    /// A healthy, unlimited stick claiming `capacity` bytes with 512-byte blocks.
    pub fn new(name: impl Into<String>, capacity: u64) -> Self {
        Self {
            name: name.into(),
            capacity,
            logical_block_size: 512,
            write_bytes_per_sec: None,
            read_bytes_per_sec: None,
            write_error_after: None,
            write_fails_at: Vec::new(),
            read_error_after: None,
            corrupt_at: Vec::new(),
            fake: None,
            read_only: false,
            remove_after_written: None,
            remove_after_read: None,
            stall_after_written: None,
            stall_after_read: None,
            hang_after_written: None,
            hang_after_read: None,
            open_error: None,
        }
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the logical block size (a power of two, at least 512).
    pub fn block_size(mut self, bytes: u32) -> Self {
        self.logical_block_size = bytes;
        self
    }

    /// Limits writes to `bytes_per_sec` (non-zero).
    pub fn write_speed(mut self, bytes_per_sec: u64) -> Self {
        self.write_bytes_per_sec = Some(bytes_per_sec);
        self
    }

    /// Limits reads to `bytes_per_sec` (non-zero).
    pub fn read_speed(mut self, bytes_per_sec: u64) -> Self {
        self.read_bytes_per_sec = Some(bytes_per_sec);
        self
    }

    /// Makes the write that would take the total written past `bytes` put the bytes
    /// up to the threshold on the medium and fail with `EIO` at the first byte it
    /// did not write (`offset + (bytes - written before)`); every later write fails
    /// with `EIO` at its own offset.
    pub fn write_error_after(mut self, bytes: u64) -> Self {
        self.write_error_after = Some(bytes);
        self
    }

    /// Makes the logical block holding `offset` a bad block: every write that
    /// covers it fails with `EIO` at the write's own offset and puts none of its
    /// bytes on the medium, as a direct-I/O write to a real device fails as a
    /// whole without saying which block failed. Repeatable.
    pub fn write_fails_at(mut self, offset: u64) -> Self {
        self.write_fails_at.push(offset);
        self
    }

    /// Makes the read that would take the total read back past `bytes` return
    /// the bytes up to the threshold and fail with `EIO` at the first byte it did
    /// not read; every later read fails with `EIO` at its own offset.
    pub fn read_error_after(mut self, bytes: u64) -> Self {
        self.read_error_after = Some(bytes);
        self
    }

    /// Makes the byte at `offset` (a claimed offset) read back flipped. Repeatable.
    pub fn corrupt_at(mut self, offset: u64) -> Self {
        self.corrupt_at.push(offset);
        self
    }

    /// Makes the stick store only `real_size` bytes while claiming its capacity.
    pub fn fake_capacity(mut self, real_size: u64, mode: FakeMode) -> Self {
        self.fake = Some(FakeCapacity { real_size, mode });
        self
    }

    /// Makes [`Target::open_writer`] fail with [`TargetError::ReadOnly`].
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Removes the stick when a write would take the total written past `bytes`
    /// (the bytes up to the threshold are written; the call returns `Removed`).
    pub fn remove_after_written(mut self, bytes: u64) -> Self {
        self.remove_after_written = Some(bytes);
        self
    }

    /// Removes the stick when a read would take the total read past `bytes`.
    pub fn remove_after_read(mut self, bytes: u64) -> Self {
        self.remove_after_read = Some(bytes);
        self
    }

    /// Stalls the write that would take the total written past `bytes`, after
    /// writing the bytes up to the threshold, until removal or release.
    pub fn stall_after_written(mut self, bytes: u64) -> Self {
        self.stall_after_written = Some(bytes);
        self
    }

    /// Stalls the read that would take the total read past `bytes`, after reading
    /// the bytes up to the threshold, until removal or release.
    pub fn stall_after_read(mut self, bytes: u64) -> Self {
        self.stall_after_read = Some(bytes);
        self
    }

    /// Hangs the write that would take the total written past `bytes`, after
    /// writing the bytes up to the threshold: the call never returns, even when
    /// the stick is removed or dropped, until [`SimStick::release`] (a write stuck
    /// in the kernel).
    pub fn hang_after_written(mut self, bytes: u64) -> Self {
        self.hang_after_written = Some(bytes);
        self
    }

    /// Hangs the read that would take the total read past `bytes`, after reading
    /// the bytes up to the threshold, until [`SimStick::release`] (a read stuck in
    /// the kernel).
    pub fn hang_after_read(mut self, bytes: u64) -> Self {
        self.hang_after_read = Some(bytes);
        self
    }

    /// Makes opening for writing fail with the OS error `errno`.
    pub fn open_error(mut self, errno: i32) -> Self {
        self.open_error = Some(errno);
        self
    }

    /// Bytes the backing file really holds.
    fn stored_size(&self) -> u64 {
        self.fake.map_or(self.capacity, |fake| fake.real_size)
    }

    fn validate(&self) -> io::Result<()> {
        let invalid = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        let block = u64::from(self.logical_block_size);
        if block < 512 || !block.is_power_of_two() {
            return invalid("logical block size must be a power of two of at least 512");
        }
        if !self.capacity.is_multiple_of(block) {
            return invalid("capacity must be a multiple of the logical block size");
        }
        if self.write_bytes_per_sec == Some(0) || self.read_bytes_per_sec == Some(0) {
            return invalid("speed limits must be non-zero");
        }
        if let Some(fake) = self.fake {
            if fake.real_size == 0 || fake.real_size > self.capacity {
                return invalid("real size must be non-zero and at most the capacity");
            }
        }
        // A bad block lies on the stick (and its end is then a u64).
        if self.write_fails_at.iter().any(|&bad| bad >= self.capacity) {
            return invalid("a bad block must lie within the capacity");
        }
        // A file offset is signed: no file (and no block device) holds more.
        if i64::try_from(self.stored_size()).is_err() {
            return invalid(
                "a simulated stick stores at most 8 EiB (2^63 - 1 bytes, the largest file); \
                 a stick that claims more must store less (a fake capacity)",
            );
        }
        Ok(())
    }
}

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
    /// Bytes really read from the backing file.
    pub medium_bytes_read: u64,
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
struct Inner {
    spec: SimStickSpec,
    name: String,
    path: PathBuf,
    // A std Mutex because every caller is a blocking thread and critical sections
    // are short (no I/O is done while holding it); pacing and stalls wait on
    // `wake` so that `remove` and `release` reach them at once.
    state: Mutex<State>,
    wake: Condvar,
    // Atomics rather than `state` fields: they are bumped after the file I/O,
    // outside the lock, and read by observers without contending with the I/O path.
    medium_written: AtomicU64,
    medium_read: AtomicU64,
}

#[derive(Default)]
struct State {
    removed: bool,
    released: bool,
    writer_open: bool,
    written: u64,
    read: u64,
    write_stall_fired: bool,
    read_stall_fired: bool,
    write_hang_fired: bool,
    read_hang_fired: bool,
    /// Calls currently blocked in a stall or a hang.
    stalled: usize,
    write_pacer: Pacer,
    read_pacer: Pacer,
}

/// Paces one direction of I/O: each call reserves `bytes / rate` of device time
/// after the previous reservation, so pacing is exact over many calls however long
/// the caller takes between them (up to `SLACK` of idle time is made up for).
#[derive(Default)]
struct Pacer {
    next_free: Option<Instant>,
}

impl Pacer {
    /// Idle time the device may make up for, so that the caller's own work between
    /// calls does not slow a stick below its rate.
    const SLACK: Duration = Duration::from_millis(20);

    /// Reserves time for `bytes` at `rate` and returns when the transfer is done.
    fn reserve(&mut self, bytes: u64, rate: u64, now: Instant) -> Instant {
        let start = match self.next_free {
            // A fresh stick starts with no credit.
            None => now,
            Some(free) => free.max(now.checked_sub(Self::SLACK).unwrap_or(now)),
        };
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate);
        let end = start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.next_free = Some(end);
        end
    }
}

/// A fault that fires at a byte threshold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Remove,
    Stall,
    Hang,
    Error,
}

/// The next piece of a call: how many bytes to transfer, the fault that fires after
/// them (if any), and when pacing lets the piece complete.
struct Step {
    bytes: usize,
    trigger: Option<Trigger>,
    deadline: Option<Instant>,
}

#[derive(Clone, Copy)]
enum Direction {
    Write,
    Read,
}

impl SimStick {
    /// Creates a stick whose medium is the file at `path`, created or truncated and
    /// sized (sparsely) to the bytes the stick really stores.
    pub fn create(spec: SimStickSpec, path: impl AsRef<Path>) -> io::Result<Self> {
        Self::create_with(spec, path.as_ref(), false)
    }

    fn create_with(spec: SimStickSpec, path: &Path, create_new: bool) -> io::Result<Self> {
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
        };
        Ok(Self {
            handle: Arc::new(Handle {
                inner: Arc::new(inner),
            }),
        })
    }

    fn inner(&self) -> &Arc<Inner> {
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

    fn open_writer(&self) -> Result<Box<dyn TargetWriter>, TargetError> {
        let inner = self.inner();
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
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remove(&self) {
        self.lock().removed = true;
        self.wake.notify_all();
    }

    fn check_present(&self) -> Result<(), TargetError> {
        if self.lock().removed {
            Err(TargetError::Removed)
        } else {
            Ok(())
        }
    }

    fn block(&self) -> u64 {
        u64::from(self.spec.logical_block_size)
    }

    /// Whether a write of `len` bytes at `offset` covers a bad block (a short
    /// final write covers the whole block it ends in, as it is padded to it).
    fn covers_bad_block(&self, offset: u64, len: usize) -> bool {
        let block = self.block();
        let end = (offset + len as u64).div_ceil(block) * block;
        self.spec
            .write_fails_at
            .iter()
            .map(|bad| bad / block * block)
            .any(|bad| offset < bad + block && bad < end)
    }

    /// Plans the next piece of a call that still has `remaining` bytes to move.
    fn next_step(&self, direction: Direction, remaining: usize) -> Result<Step, TargetError> {
        let spec = &self.spec;
        let mut state = self.lock();
        if state.removed {
            return Err(TargetError::Removed);
        }
        let state = &mut *state;
        let (done, rate, pacer, candidates) = match direction {
            Direction::Write => (
                state.written,
                spec.write_bytes_per_sec,
                &mut state.write_pacer,
                [
                    (spec.remove_after_written, Trigger::Remove),
                    (
                        spec.stall_after_written
                            .filter(|_| !state.write_stall_fired && !state.released),
                        Trigger::Stall,
                    ),
                    (
                        spec.hang_after_written
                            .filter(|_| !state.write_hang_fired && !state.released),
                        Trigger::Hang,
                    ),
                    (spec.write_error_after, Trigger::Error),
                ],
            ),
            Direction::Read => (
                state.read,
                spec.read_bytes_per_sec,
                &mut state.read_pacer,
                [
                    (spec.remove_after_read, Trigger::Remove),
                    (
                        spec.stall_after_read
                            .filter(|_| !state.read_stall_fired && !state.released),
                        Trigger::Stall,
                    ),
                    (
                        spec.hang_after_read
                            .filter(|_| !state.read_hang_fired && !state.released),
                        Trigger::Hang,
                    ),
                    (spec.read_error_after, Trigger::Error),
                ],
            ),
        };
        // The lowest threshold this call would cross fires first; on a tie the
        // order above decides (removal, then stall, then hang, then error).
        let mut bytes = remaining as u64;
        let mut trigger = None;
        for (threshold, kind) in candidates {
            if let Some(threshold) = threshold {
                let before = threshold.saturating_sub(done);
                if before < remaining as u64 && (trigger.is_none() || before < bytes) {
                    bytes = before;
                    trigger = Some(kind);
                }
            }
        }
        let deadline = match rate {
            Some(rate) if bytes > 0 => Some(pacer.reserve(bytes, rate, Instant::now())),
            _ => None,
        };
        match direction {
            Direction::Write => state.written += bytes,
            Direction::Read => state.read += bytes,
        }
        match (trigger, direction) {
            (Some(Trigger::Stall), Direction::Write) => state.write_stall_fired = true,
            (Some(Trigger::Stall), Direction::Read) => state.read_stall_fired = true,
            (Some(Trigger::Hang), Direction::Write) => state.write_hang_fired = true,
            (Some(Trigger::Hang), Direction::Read) => state.read_hang_fired = true,
            _ => {}
        }
        Ok(Step {
            // `bytes <= remaining`, which is a usize.
            bytes: bytes as usize,
            trigger,
            deadline,
        })
    }

    /// Sleeps until `deadline` unless the stick is removed first.
    fn pace(&self, deadline: Option<Instant>) -> Result<(), TargetError> {
        let Some(deadline) = deadline else {
            return Ok(());
        };
        let mut state = self.lock();
        loop {
            if state.removed {
                return Err(TargetError::Removed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            state = self
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Blocks until the stick is removed (an error) or released.
    fn stall(&self) -> Result<(), TargetError> {
        let mut state = self.lock();
        state.stalled += 1;
        self.wake.notify_all();
        while !state.removed && !state.released {
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.stalled -= 1;
        if state.removed {
            Err(TargetError::Removed)
        } else {
            Ok(())
        }
    }

    /// Blocks until the stick is released, whether or not it is removed (as a
    /// call stuck in the kernel ignores the device going away); then fails as
    /// removed if it was.
    fn hang(&self) -> Result<(), TargetError> {
        let mut state = self.lock();
        state.stalled += 1;
        self.wake.notify_all();
        while !state.released {
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.stalled -= 1;
        if state.removed {
            Err(TargetError::Removed)
        } else {
            Ok(())
        }
    }

    /// Acts on a fault after the bytes before it have been moved; `at` is the
    /// claimed offset of the first byte not moved.
    fn fire(&self, trigger: Trigger, at: u64) -> Result<(), TargetError> {
        match trigger {
            Trigger::Remove => {
                self.remove();
                Err(TargetError::Removed)
            }
            Trigger::Stall => self.stall(),
            Trigger::Hang => self.hang(),
            Trigger::Error => Err(TargetError::Io {
                offset: at,
                source: io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()),
            }),
        }
    }

    /// Splits a claimed range into pieces of the backing file: `(claimed offset,
    /// file offset or None when the bytes vanish, length)`.
    fn map_range(&self, offset: u64, len: usize) -> Vec<(u64, Option<u64>, usize)> {
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let left = len - done;
            let (file_at, span) = match self.spec.fake {
                None => (Some(at), left),
                Some(FakeCapacity {
                    real_size,
                    mode: FakeMode::Wrap,
                }) => {
                    let pos = at % real_size;
                    (Some(pos), clamp(left, real_size - pos))
                }
                Some(FakeCapacity {
                    real_size,
                    mode: FakeMode::Vanish,
                }) => {
                    if at >= real_size {
                        (None, left)
                    } else {
                        (Some(at), clamp(left, real_size - at))
                    }
                }
            };
            pieces.push((at, file_at, span));
            done += span;
        }
        pieces
    }

    fn medium_write(&self, file: &File, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let mut done = 0usize;
        for (at, file_at, len) in self.map_range(offset, data.len()) {
            if let Some(file_at) = file_at {
                file.write_all_at(&data[done..done + len], file_at)
                    .map_err(|error| TargetError::from_io(at, error))?;
                self.medium_written.fetch_add(len as u64, Ordering::Relaxed);
            }
            done += len;
        }
        Ok(())
    }

    fn medium_read(&self, file: &File, offset: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        let mut done = 0usize;
        for (at, file_at, len) in self.map_range(offset, buf.len()) {
            let piece = &mut buf[done..done + len];
            match file_at {
                Some(file_at) => read_full(file, piece, file_at)
                    .map(|got| {
                        self.medium_read.fetch_add(got as u64, Ordering::Relaxed);
                    })
                    .map_err(|error| TargetError::from_io(at, error))?,
                None => piece.fill(0),
            }
            done += len;
        }
        // Flip the corrupted bytes on the way out; the medium stays intact.
        let end = offset + buf.len() as u64;
        for &bad in &self.spec.corrupt_at {
            if (offset..end).contains(&bad) {
                buf[(bad - offset) as usize] ^= 0xff;
            }
        }
        Ok(())
    }

    /// Rejects what `O_DIRECT` on a real device rejects with `EINVAL`: an offset or
    /// a buffer address (and, for reads, a length) not aligned to the block size.
    fn check_alignment(&self, offset: u64, buf: &[u8], check_len: bool) -> Result<(), TargetError> {
        let block = self.block();
        let misaligned = !offset.is_multiple_of(block)
            || (!buf.is_empty() && !(buf.as_ptr() as usize as u64).is_multiple_of(block))
            || (check_len && !(buf.len() as u64).is_multiple_of(block));
        if misaligned {
            Err(TargetError::Io {
                offset,
                source: io::Error::from_raw_os_error(rustix::io::Errno::INVAL.raw_os_error()),
            })
        } else {
            Ok(())
        }
    }
}

/// `min(len, limit)` as a usize.
fn clamp(len: usize, limit: u64) -> usize {
    usize::try_from(limit).map_or(len, |limit| len.min(limit))
}

/// Fills `buf` from the file at `pos`, with zeros past its end; returns how many
/// bytes came from the file.
fn read_full(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(done)
}

/// A writer on a [`SimStick`].
struct SimWriter {
    inner: Arc<Inner>,
    file: File,
}

impl TargetWriter for SimWriter {
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let inner = &*self.inner;
        inner.check_present()?;
        inner.check_alignment(offset, data, false)?;
        if data.is_empty() {
            return Ok(());
        }
        let capacity = inner.spec.capacity;
        if offset >= capacity {
            return Err(no_space(offset));
        }
        if inner.covers_bad_block(offset, data.len()) {
            return Err(TargetError::Io {
                offset,
                source: io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()),
            });
        }
        // Like a block device: what fits is written, the rest is ENOSPC.
        let fits = clamp(data.len(), capacity - offset);
        let mut done = 0usize;
        while done < fits {
            let step = inner.next_step(Direction::Write, fits - done)?;
            let at = offset + done as u64;
            inner.medium_write(&self.file, at, &data[done..done + step.bytes])?;
            inner.pace(step.deadline)?;
            done += step.bytes;
            if let Some(trigger) = step.trigger {
                inner.fire(trigger, offset + done as u64)?;
            }
        }
        if fits < data.len() {
            return Err(no_space(capacity));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TargetError> {
        // The backing file is the medium and the kernel keeps it coherent between
        // handles, so there is nothing to make durable; removal still shows.
        self.inner.check_present()
    }
}

impl Drop for SimWriter {
    fn drop(&mut self) {
        self.inner.lock().writer_open = false;
    }
}

fn no_space(offset: u64) -> TargetError {
    TargetError::Io {
        offset,
        source: io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
    }
}

/// A fresh reader on a [`SimStick`], with its own handle on the backing file.
struct SimReader {
    inner: Arc<Inner>,
    file: File,
}

impl TargetReader for SimReader {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        let inner = &*self.inner;
        inner.check_present()?;
        inner.check_alignment(offset, buf, true)?;
        let capacity = inner.spec.capacity;
        if offset >= capacity {
            return Ok(0);
        }
        let fits = clamp(buf.len(), capacity - offset);
        let mut done = 0usize;
        while done < fits {
            let step = inner.next_step(Direction::Read, fits - done)?;
            let at = offset + done as u64;
            inner.medium_read(&self.file, at, &mut buf[done..done + step.bytes])?;
            inner.pace(step.deadline)?;
            done += step.bytes;
            if let Some(trigger) = step.trigger {
                inner.fire(trigger, offset + done as u64)?;
            }
        }
        Ok(fits)
    }
}

/// A set of simulated sticks in one directory, numbered "S01", "S02", ...
///
/// Dropping the rack removes every stick (waking any stalled call) and deletes the
/// backing files it created, and the directory too if it created it.
#[derive(Debug)]
pub struct SimRack {
    dir: PathBuf,
    created_dir: bool,
    sticks: Vec<SimStick>,
}

impl SimRack {
    /// Creates one stick per spec under `dir` (created if missing). A spec with an
    /// empty name is named after its position ("S01" for the first); the backing
    /// file is `<name>.img` and must not exist yet.
    pub fn create(
        dir: impl AsRef<Path>,
        specs: impl IntoIterator<Item = SimStickSpec>,
    ) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let created_dir = !dir.exists();
        if created_dir {
            fs::create_dir_all(&dir)?;
        }
        // Built in place so that an error part-way cleans up what was created.
        let mut rack = Self {
            dir,
            created_dir,
            sticks: Vec::new(),
        };
        for (index, mut spec) in specs.into_iter().enumerate() {
            if spec.name.is_empty() {
                spec.name = format!("S{:02}", index + 1);
            }
            if spec.name.contains('/') || spec.name.starts_with('.') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("stick name {:?} is not a file name", spec.name),
                ));
            }
            let path = rack.dir.join(format!("{}.img", spec.name));
            rack.sticks.push(SimStick::create_with(spec, &path, true)?);
        }
        Ok(rack)
    }

    /// The directory holding the backing files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sticks, in the order of their specs.
    pub fn sticks(&self) -> &[SimStick] {
        &self.sticks
    }

    /// The stick with this name.
    pub fn stick(&self, name: &str) -> Option<&SimStick> {
        self.sticks.iter().find(|stick| stick.inner().name == name)
    }

    /// How many sticks the rack has.
    pub fn len(&self) -> usize {
        self.sticks.len()
    }

    /// Whether the rack has no sticks.
    pub fn is_empty(&self) -> bool {
        self.sticks.is_empty()
    }
}

impl Drop for SimRack {
    fn drop(&mut self) {
        // Cleanup is best effort: a file already gone is not worth a panic in drop.
        for stick in &self.sticks {
            stick.remove();
            let _ = fs::remove_file(stick.path());
        }
        if self.created_dir {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashrack_target::AlignedBuf;
    use std::thread;

    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;

    /// A deterministic, position-dependent pattern, so that misplaced bytes show.
    fn pattern(offset: u64, len: usize) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(len);
        for (i, byte) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = (at as u8) ^ ((at >> 9) as u8) ^ 0x5a;
        }
        buf
    }

    fn stick(dir: &tempfile::TempDir, spec: SimStickSpec) -> SimStick {
        SimStick::create(spec, dir.path().join("stick.img")).unwrap()
    }

    fn read(stick: &SimStick, offset: u64, len: usize) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(len);
        let got = stick
            .open_reader()
            .unwrap()
            .read_at(offset, &mut buf)
            .unwrap();
        assert_eq!(got, len);
        buf
    }

    fn errno(error: &TargetError) -> (u64, i32) {
        match error {
            TargetError::Io { offset, source } => (*offset, source.raw_os_error().unwrap()),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    fn eio() -> i32 {
        rustix::io::Errno::IO.raw_os_error()
    }

    #[test]
    fn what_is_written_and_flushed_reads_back_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let stick = stick(&dir, SimStickSpec::new("demo", 4 * MIB as u64));
        assert_eq!(stick.name(), "demo");
        assert_eq!(
            stick.geometry().unwrap(),
            TargetGeometry {
                capacity: 4 * MIB as u64,
                logical_block_size: 512
            }
        );
        let mut writer = stick.open_writer().unwrap();
        for chunk in 0..3u64 {
            let offset = chunk * 256 * KIB as u64;
            writer
                .write_all_at(offset, &pattern(offset, 256 * KIB))
                .unwrap();
        }
        // A short final write, as at the end of an image.
        writer
            .write_all_at(768 * KIB as u64, &pattern(768 * KIB as u64, 1000))
            .unwrap();
        writer.flush().unwrap();
        drop(writer);

        let back = read(&stick, 0, 768 * KIB + 1024);
        assert_eq!(&back[..768 * KIB + 1000], &pattern(0, 768 * KIB + 1000)[..]);
        assert!(back[768 * KIB + 1000..].iter().all(|&b| b == 0));
        let on_disk = fs::read(stick.path()).unwrap();
        assert_eq!(on_disk.len(), 4 * MIB);
        assert_eq!(&on_disk[..768 * KIB + 1000], &back[..768 * KIB + 1000]);
        assert_eq!(
            stick.counters(),
            SimCounters {
                bytes_written: 768 * KIB as u64 + 1000,
                bytes_read: 768 * KIB as u64 + 1024,
                medium_bytes_written: 768 * KIB as u64 + 1000,
                medium_bytes_read: 768 * KIB as u64 + 1024,
            }
        );
    }

    #[test]
    fn the_device_contract_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let stick = stick(&dir, SimStickSpec::new("s", 64 * KIB as u64));
        let mut writer = stick.open_writer().unwrap();
        assert!(matches!(stick.open_writer(), Err(TargetError::Busy(_))));
        let nospc = rustix::io::Errno::NOSPC.raw_os_error();
        let inval = rustix::io::Errno::INVAL.raw_os_error();
        let err = writer
            .write_all_at(64 * KIB as u64, &pattern(0, 512))
            .unwrap_err();
        assert_eq!(errno(&err), (64 * KIB as u64, nospc));
        // Straddling the end: what fits is written, then ENOSPC at the end.
        let err = writer
            .write_all_at(60 * KIB as u64, &pattern(0, 8 * KIB))
            .unwrap_err();
        assert_eq!(errno(&err), (64 * KIB as u64, nospc));
        assert_eq!(stick.counters().medium_bytes_written, 4 * KIB as u64);
        let err = writer.write_all_at(100, &pattern(0, 512)).unwrap_err();
        assert_eq!(errno(&err), (100, inval));
        let unaligned = pattern(0, 2048);
        let err = writer.write_all_at(0, &unaligned[1..513]).unwrap_err();
        assert_eq!(errno(&err).1, inval);
        drop(writer);
        assert!(stick.open_writer().is_ok());

        let mut reader = stick.open_reader().unwrap();
        let mut buf = AlignedBuf::zeroed(8 * KIB);
        assert_eq!(reader.read_at(60 * KIB as u64, &mut buf).unwrap(), 4 * KIB);
        assert_eq!(reader.read_at(64 * KIB as u64, &mut buf).unwrap(), 0);
        let err = reader.read_at(0, &mut buf[..1000]).unwrap_err();
        assert_eq!(errno(&err), (0, inval));
    }

    #[test]
    fn a_write_error_hits_at_the_threshold_and_on_every_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let stick = stick(
            &dir,
            SimStickSpec::new("s", MIB as u64).write_error_after(6144),
        );
        let mut writer = stick.open_writer().unwrap();
        writer.write_all_at(0, &pattern(0, 4096)).unwrap();
        let err = writer.write_all_at(4096, &pattern(4096, 4096)).unwrap_err();
        assert_eq!(errno(&err), (6144, eio()));
        let err = writer.write_all_at(8192, &pattern(8192, 4096)).unwrap_err();
        assert_eq!(errno(&err), (8192, eio()));
        assert_eq!(stick.counters().bytes_written, 6144);
        let back = read(&stick, 0, 8192);
        assert_eq!(&back[..6144], &pattern(0, 6144)[..]);
        assert!(back[6144..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_bad_block_fails_every_write_covering_it_as_a_whole() {
        let dir = tempfile::tempdir().unwrap();
        let stick = stick(
            &dir,
            SimStickSpec::new("s", MIB as u64)
                .block_size(4096)
                .write_fails_at(3 * 4096 + 100),
        );
        let mut writer = stick.open_writer().unwrap();
        // A write covering the bad block fails at its own offset, writes nothing.
        let err = writer.write_all_at(0, &pattern(0, 8 * 4096)).unwrap_err();
        assert_eq!(errno(&err), (0, eio()));
        assert_eq!(stick.counters().medium_bytes_written, 0);
        // Around it, writes succeed, also later ones.
        writer.write_all_at(0, &pattern(0, 3 * 4096)).unwrap();
        writer
            .write_all_at(4 * 4096, &pattern(4 * 4096, 4096))
            .unwrap();
        let err = writer
            .write_all_at(3 * 4096, &pattern(3 * 4096, 4096))
            .unwrap_err();
        assert_eq!(errno(&err), (3 * 4096, eio()));
        // A short final write ending inside the bad block covers it.
        let err = writer
            .write_all_at(2 * 4096, &pattern(2 * 4096, 4096 + 10))
            .unwrap_err();
        assert_eq!(errno(&err), (2 * 4096, eio()));
    }

    #[test]
    fn a_read_error_hits_at_the_threshold_and_on_every_later_read() {
        let dir = tempfile::tempdir().unwrap();
        let stick = stick(
            &dir,
            SimStickSpec::new("s", MIB as u64).read_error_after(6144),
        );
        let mut reader = stick.open_reader().unwrap();
        let mut buf = AlignedBuf::zeroed(4096);
        assert_eq!(reader.read_at(0, &mut buf).unwrap(), 4096);
        let err = reader.read_at(4096, &mut buf).unwrap_err();
        assert_eq!(errno(&err), (6144, eio()));
        let err = reader.read_at(8192, &mut buf).unwrap_err();
        assert_eq!(errno(&err), (8192, eio()));
    }

    #[test]
    fn corrupted_bytes_read_back_flipped_while_the_medium_is_intact() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SimStickSpec::new("s", MIB as u64)
            .corrupt_at(5000)
            .corrupt_at(70_000);
        let stick = stick(&dir, spec);
        let image = pattern(0, 64 * KIB);
        let mut writer = stick.open_writer().unwrap();
        writer.write_all_at(0, &image).unwrap();
        writer.flush().unwrap();
        let back = read(&stick, 0, 64 * KIB);
        let first = back.iter().zip(image.iter()).position(|(a, b)| a != b);
        assert_eq!(first, Some(5000));
        assert_eq!(back[5000], !image[5000]);
        assert_eq!(back[5001..], image[5001..]);
        assert_eq!(fs::read(stick.path()).unwrap()[..64 * KIB], image[..]);
    }

    #[test]
    fn a_wrapping_fake_stick_overwrites_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let real = 64 * KIB as u64;
        let stick = stick(
            &dir,
            SimStickSpec::new("s", MIB as u64).fake_capacity(real, FakeMode::Wrap),
        );
        assert_eq!(stick.geometry().unwrap().capacity, MIB as u64);
        assert_eq!(fs::metadata(stick.path()).unwrap().len(), real);
        let mut writer = stick.open_writer().unwrap();
        writer.write_all_at(0, &pattern(0, 4096)).unwrap();
        writer
            .write_all_at(3 * real, &pattern(3 * real, 4096))
            .unwrap();
        // Straddles the real size: the tail wraps to the start.
        writer
            .write_all_at(real - 2048, &pattern(real - 2048, 4096))
            .unwrap();
        writer.flush().unwrap();
        let at_start = read(&stick, 0, 4096);
        assert_eq!(&at_start[..2048], &pattern(real, 2048)[..]);
        assert_eq!(&at_start[2048..], &pattern(3 * real + 2048, 2048)[..]);
        // Reading a claimed offset past the real size shows the wrapped data.
        assert_eq!(&read(&stick, 3 * real, 4096)[..], &at_start[..]);
    }

    #[test]
    fn a_vanishing_fake_stick_drops_writes_past_its_real_size() {
        let dir = tempfile::tempdir().unwrap();
        let real = 64 * KIB as u64;
        let stick = stick(
            &dir,
            SimStickSpec::new("s", MIB as u64).fake_capacity(real, FakeMode::Vanish),
        );
        let mut writer = stick.open_writer().unwrap();
        writer.write_all_at(0, &pattern(0, 4096)).unwrap();
        writer
            .write_all_at(2 * real, &pattern(2 * real, 4096))
            .unwrap();
        writer.flush().unwrap();
        assert_eq!(&read(&stick, 0, 4096)[..], &pattern(0, 4096)[..]);
        assert!(read(&stick, 2 * real, 4096).iter().all(|&b| b == 0));
        let counters = stick.counters();
        assert_eq!(counters.bytes_written, 8192);
        assert_eq!(counters.medium_bytes_written, 4096);
        assert_eq!(counters.medium_bytes_read, 4096);
    }

    #[test]
    fn a_read_only_stick_refuses_writers_but_reads() {
        let dir = tempfile::tempdir().unwrap();
        let stick = stick(&dir, SimStickSpec::new("s", MIB as u64).read_only());
        assert!(matches!(stick.open_writer(), Err(TargetError::ReadOnly)));
        assert!(read(&stick, 0, 4096).iter().all(|&b| b == 0));
    }

    #[test]
    fn removal_from_another_thread_wakes_a_paced_write() {
        let dir = tempfile::tempdir().unwrap();
        // 4 MiB at 1 kB/s would take 70 minutes.
        let stick = stick(
            &dir,
            SimStickSpec::new("s", 8 * MIB as u64).write_speed(1_000),
        );
        let mut writer = stick.open_writer().unwrap();
        let (done, result) = std::sync::mpsc::channel();
        thread::spawn(move || done.send(writer.write_all_at(0, &pattern(0, 4 * MIB))));
        // Wait (for the state, polling it) until the bytes are on the medium
        // and the write waits for its pace.
        let deadline = Instant::now() + Duration::from_secs(30);
        while stick.counters().medium_bytes_written < 4 * MIB as u64 {
            assert!(Instant::now() < deadline, "the write never began");
            thread::sleep(Duration::from_millis(1));
        }
        stick.remove();
        // Woken at once: the bound is a bound on a hang, 70 minutes short of
        // the pace.
        let result = result.recv_timeout(Duration::from_secs(30));
        assert!(
            matches!(result, Ok(Err(TargetError::Removed))),
            "{result:?}"
        );
        assert!(stick.is_removed());
        assert!(matches!(stick.geometry(), Err(TargetError::Removed)));
        assert!(matches!(stick.open_writer(), Err(TargetError::Removed)));
        assert!(matches!(stick.open_reader(), Err(TargetError::Removed)));
    }

    #[test]
    fn scripted_removal_after_bytes_written_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SimStickSpec::new("w", MIB as u64).remove_after_written(10_240);
        let stick = SimStick::create(spec, dir.path().join("w.img")).unwrap();
        let mut writer = stick.open_writer().unwrap();
        writer.write_all_at(0, &pattern(0, 8192)).unwrap();
        assert!(matches!(
            writer.write_all_at(8192, &pattern(8192, 8192)),
            Err(TargetError::Removed)
        ));
        assert!(matches!(writer.flush(), Err(TargetError::Removed)));
        assert_eq!(stick.counters().medium_bytes_written, 10_240);

        let spec = SimStickSpec::new("r", MIB as u64).remove_after_read(8192);
        let stick = SimStick::create(spec, dir.path().join("r.img")).unwrap();
        let mut reader = stick.open_reader().unwrap();
        let mut buf = AlignedBuf::zeroed(8192);
        assert_eq!(reader.read_at(0, &mut buf).unwrap(), 8192);
        assert!(matches!(
            reader.read_at(8192, &mut buf),
            Err(TargetError::Removed)
        ));
        assert!(matches!(stick.open_reader(), Err(TargetError::Removed)));
    }

    #[test]
    fn a_stalled_write_blocks_until_released_then_completes() {
        let dir = tempfile::tempdir().unwrap();
        let stick = stick(
            &dir,
            SimStickSpec::new("s", MIB as u64).stall_after_written(4096),
        );
        let mut writer = stick.open_writer().unwrap();
        let worker = thread::spawn(move || writer.write_all_at(0, &pattern(0, 16 * KIB)));
        assert!(stick.wait_until_stalled(Duration::from_secs(5)));
        // Held: a stalled call leaves the stall only when released or removed.
        assert!(!worker.is_finished());
        assert_eq!(stick.counters().medium_bytes_written, 4096);
        stick.release();
        worker.join().unwrap().unwrap();
        assert_eq!(stick.stalled_calls(), 0);
        assert_eq!(&read(&stick, 0, 16 * KIB)[..], &pattern(0, 16 * KIB)[..]);
    }

    #[test]
    fn a_rearmed_stick_is_held_again_at_a_later_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let stick = stick(
            &dir,
            SimStickSpec::new("s", MIB as u64)
                .stall_after_written(4096)
                .hang_after_written(12 * KIB as u64),
        );
        let mut writer = stick.open_writer().unwrap();
        let worker = thread::spawn(move || {
            writer.write_all_at(0, &pattern(0, 8 * KIB)).unwrap();
            writer
        });
        assert!(stick.wait_until_stalled(Duration::from_secs(5)));
        assert_eq!(stick.counters().medium_bytes_written, 4096);
        stick.release();
        let mut writer = worker.join().unwrap();
        // Released, the hang would not fire; rearmed, it does.
        stick.rearm();
        let worker =
            thread::spawn(move || writer.write_all_at(8 * KIB as u64, &pattern(0, 8 * KIB)));
        assert!(stick.wait_until_stalled(Duration::from_secs(5)));
        assert_eq!(stick.counters().medium_bytes_written, 12 * KIB as u64);
        stick.release();
        worker.join().unwrap().unwrap();
        assert_eq!(stick.counters().medium_bytes_written, 16 * KIB as u64);
    }

    #[test]
    fn a_stalled_read_ends_with_removal_or_with_the_stick_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SimStickSpec::new("s", MIB as u64).stall_after_read(0);
        let stick = SimStick::create(spec.clone(), dir.path().join("a.img")).unwrap();
        let mut reader = stick.open_reader().unwrap();
        let worker = thread::spawn(move || reader.read_at(0, &mut AlignedBuf::zeroed(4096)));
        assert!(stick.wait_until_stalled(Duration::from_secs(5)));
        stick.remove();
        assert!(matches!(worker.join().unwrap(), Err(TargetError::Removed)));

        let stick = SimStick::create(spec, dir.path().join("b.img")).unwrap();
        let mut reader = stick.open_reader().unwrap();
        let worker = thread::spawn(move || reader.read_at(0, &mut AlignedBuf::zeroed(4096)));
        assert!(stick.wait_until_stalled(Duration::from_secs(5)));
        drop(stick);
        assert!(matches!(worker.join().unwrap(), Err(TargetError::Removed)));
    }

    #[test]
    fn a_hung_write_ignores_removal_and_the_stick_dropped_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let stick = stick(
            &dir,
            SimStickSpec::new("s", MIB as u64).hang_after_written(4096),
        );
        let mut writer = stick.open_writer().unwrap();
        let worker = thread::spawn(move || writer.write_all_at(0, &pattern(0, 16 * KIB)));
        assert!(stick.wait_until_stalled(Duration::from_secs(5)));
        let keep = stick.clone();
        stick.remove();
        drop(stick);
        // Removal would have woken a stall at once; a hang stays put. (No
        // later event can prove that the woken call went back to waiting:
        // this short pause only gives a regression the time to show. It cannot
        // fail a correct stick, however loaded the machine.)
        thread::sleep(Duration::from_millis(50));
        assert!(!worker.is_finished());
        assert_eq!(keep.stalled_calls(), 1);
        keep.release();
        assert!(matches!(worker.join().unwrap(), Err(TargetError::Removed)));
        assert_eq!(keep.stalled_calls(), 0);
    }

    #[test]
    fn a_hung_read_returns_only_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let stick = stick(&dir, SimStickSpec::new("s", MIB as u64).hang_after_read(0));
        let mut reader = stick.open_reader().unwrap();
        let worker = thread::spawn(move || reader.read_at(0, &mut AlignedBuf::zeroed(4096)));
        assert!(stick.wait_until_stalled(Duration::from_secs(5)));
        assert!(!worker.is_finished());
        stick.release();
        assert_eq!(worker.join().unwrap().unwrap(), 4096);
        // Released: later reads are not hung again.
        assert_eq!(read(&stick, 0, 4096).len(), 4096);
    }

    #[test]
    fn pacing_holds_writes_and_reads_to_their_own_speeds() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SimStickSpec::new("s", 4 * MIB as u64)
            .write_speed(20_000_000)
            .read_speed(40_000_000);
        let stick = stick(&dir, spec);
        let mut writer = stick.open_writer().unwrap();
        let chunk = pattern(0, 512 * KIB);
        let started = Instant::now();
        for i in 0..4u64 {
            writer.write_all_at(i * 512 * KIB as u64, &chunk).unwrap();
        }
        // 2 MiB at 20 MB/s is 104.9 ms.
        assert!(started.elapsed() >= Duration::from_millis(104));

        let mut reader = stick.open_reader().unwrap();
        let mut buf = AlignedBuf::zeroed(512 * KIB);
        let started = Instant::now();
        for i in 0..4u64 {
            reader.read_at(i * 512 * KIB as u64, &mut buf).unwrap();
        }
        // 2 MiB at 40 MB/s is 52.4 ms.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(52), "{elapsed:?}");
    }

    #[test]
    fn invalid_specs_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.img");
        for spec in [
            SimStickSpec::new("s", 1000),
            SimStickSpec::new("s", 4096).block_size(1000),
            SimStickSpec::new("s", 4096).write_speed(0),
            SimStickSpec::new("s", 4096).fake_capacity(8192, FakeMode::Wrap),
            // No file holds 2^63 bytes or more.
            SimStickSpec::new("s", 1 << 63),
            // A bad block past the end (whose end would not fit a u64).
            SimStickSpec::new("s", 4096).write_fails_at(u64::MAX),
        ] {
            let err = SimStick::create(spec, &path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        // A stick may claim any capacity as long as it stores what a file holds.
        let huge = (u64::MAX / 512) * 512;
        let liar = SimStick::create(
            SimStickSpec::new("s", huge).fake_capacity(MIB as u64, FakeMode::Wrap),
            &path,
        )
        .unwrap();
        assert_eq!(liar.geometry().unwrap().capacity, huge);
    }

    #[test]
    fn a_rack_numbers_its_sticks_and_cleans_up() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("rack");
        let rack = SimRack::create(
            &dir,
            [
                SimStickSpec::new("", MIB as u64),
                SimStickSpec::new("", MIB as u64).read_only(),
                SimStickSpec::new("", 512 * KIB as u64),
            ],
        )
        .unwrap();
        let names: Vec<String> = rack.sticks().iter().map(|s| s.name()).collect();
        assert_eq!(names, ["S01", "S02", "S03"]);
        assert!(dir.join("S02.img").exists());
        assert!(matches!(
            rack.stick("S02").unwrap().open_writer(),
            Err(TargetError::ReadOnly)
        ));
        let kept = rack.stick("S01").unwrap().clone();
        // A second rack must not clobber the first one's files.
        assert!(SimRack::create(&dir, [SimStickSpec::new("", MIB as u64)]).is_err());
        assert!(dir.join("S01.img").exists());
        drop(rack);
        assert!(!dir.exists());
        assert!(kept.is_removed());
    }
}
