//! What a simulated stick is: its identity, its speed and its faults.

use std::io;
use std::time::Duration;

#[cfg(doc)]
use flashrack_target::{Target, TargetError};

#[cfg(doc)]
use super::{SimRack, SimStick};

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

/// What a stick's volatile cache does with what is written (see
/// [`SimStickSpec::volatile_cache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Every write reaches the medium at once (through the stick's fake
    /// capacity, if it has one) and is kept in the cache too: a reset loses
    /// nothing the medium took, but until then the cache hides what the medium
    /// did not take (a fake stick's lost bytes read back right).
    WriteThrough,
    /// Writes stay in the cache and reach the medium only when newer writes
    /// push them out; a flush reports success without writing them (a
    /// controller that lies about its flush). A reset loses the cache window:
    /// the last writes never reach the medium.
    LostOnReset,
}

/// A volatile cache inside the stick (its controller's or its bridge's RAM):
/// reads of recently written blocks are answered from it, whatever the medium
/// holds, until a reset (a power cycle) drops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolatileCache {
    /// How many bytes of the latest writes it holds (whole logical blocks; the
    /// oldest are evicted first).
    pub bytes: u64,
    /// What reaches the medium, and when.
    pub mode: CacheMode,
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
    /// One write fails with `EIO` when this many bytes have been written;
    /// later writes succeed (a transient error).
    pub write_error_once_after: Option<u64>,
    /// Bad blocks: every write covering the logical block that holds one of
    /// these offsets fails with `EIO` as a whole.
    pub write_fails_at: Vec<u64>,
    /// Reads fail with `EIO` once this many bytes have been read back.
    pub read_error_after: Option<u64>,
    /// Offsets whose byte reads back flipped (`!byte`) while the medium is intact.
    pub corrupt_at: Vec<u64>,
    /// Stores less than it claims.
    pub fake: Option<FakeCapacity>,
    /// A volatile cache that answers reads of recent writes until a reset.
    pub cache: Option<VolatileCache>,
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
    /// Opening for writing takes this long (a stick slow to start).
    pub open_delay: Option<Duration>,
    /// Opening for writing stalls until the stick is removed or released.
    pub stall_on_open: bool,
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
            write_error_once_after: None,
            write_fails_at: Vec::new(),
            read_error_after: None,
            corrupt_at: Vec::new(),
            fake: None,
            cache: None,
            read_only: false,
            remove_after_written: None,
            remove_after_read: None,
            stall_after_written: None,
            stall_after_read: None,
            hang_after_written: None,
            hang_after_read: None,
            open_error: None,
            open_delay: None,
            stall_on_open: false,
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

    /// Makes the write that would take the total written past `bytes` fail
    /// as [`write_error_after`](Self::write_error_after) does, once: every
    /// later write succeeds, as on a stick whose error was transient (a
    /// loose contact, a hub that dropped a transfer). What a retry is for.
    pub fn write_error_once_after(mut self, bytes: u64) -> Self {
        self.write_error_once_after = Some(bytes);
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

    /// Gives the stick a volatile cache of the last `bytes` written: reads of
    /// blocks still in it are answered from it, and [`SimStick::reset`] drops
    /// it, leaving what the medium really got (see [`CacheMode`]).
    pub fn volatile_cache(mut self, bytes: u64, mode: CacheMode) -> Self {
        self.cache = Some(VolatileCache { bytes, mode });
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

    /// Makes every open for writing take `delay` before it answers (a stick
    /// slow to start: its bridge still settling, a kernel slow to let go of
    /// it), unless the stick is removed meanwhile.
    pub fn open_delay(mut self, delay: Duration) -> Self {
        self.open_delay = Some(delay);
        self
    }

    /// Makes opening for writing stall until the stick is removed or
    /// released ([`SimStick::release`]): a stick stuck in its start-up.
    pub fn stall_on_open(mut self) -> Self {
        self.stall_on_open = true;
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
    pub(super) fn stored_size(&self) -> u64 {
        self.fake.map_or(self.capacity, |fake| fake.real_size)
    }

    pub(super) fn validate(&self) -> io::Result<()> {
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
        if self.cache.is_some_and(|cache| cache.bytes < block) {
            return invalid("a volatile cache must hold at least one logical block");
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
