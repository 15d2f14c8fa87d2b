//! Targets the engine writes to, behind one seam: the [`Target`] trait.
//!
//! The engine never sees `/dev` paths or udev types; it sees a `Target` that can be
//! opened for writing and, separately, opened *fresh* for reading back from the
//! medium. This crate is the seam only: the traits, [`TargetGeometry`],
//! [`TargetError`] and [`AlignedBuf`]. Implementations live elsewhere:
//! - `flashrack-hardware`'s `block::PathTarget`: a block device or a regular
//!   file, with exclusive open and direct I/O on aligned buffers;
//! - `flashrack-simrack`'s `sim::SimStick`: a file-backed virtual stick with
//!   deterministic fault injection (slow, failing, lying about capacity,
//!   read-only, removed, stalled), used by the tests and the demo so that they
//!   exercise the real engine.
//!
//! Blocking calls: every method of a target blocks. Callers run them on dedicated
//! threads, never on async workers.
#![deny(missing_docs)]

pub mod aligned;

use std::io;

use flashrack_core::GuardRefusal;

pub use aligned::AlignedBuf;

/// What a target says about itself when it is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetGeometry {
    /// Reported capacity in bytes (what the stick *claims*).
    pub capacity: u64,
    /// Logical block size: offsets and lengths of direct I/O are multiples of it.
    pub logical_block_size: u32,
}

/// Why a target operation failed. The engine turns each into a verdict.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target is gone (unplugged, `ENODEV`, `ENXIO`, `ENOMEDIUM`).
    #[error("device removed")]
    Removed,
    /// The target refuses writes: `EROFS`, or a block device whose `ro` flag is
    /// set (write-protect switch, `losetup -r`), which the kernel opens for
    /// writing and then answers every write with `EPERM`.
    #[error("device is read-only")]
    ReadOnly,
    /// Someone else holds the device: mounted, used as swap or opened exclusively
    /// by another process (`EBUSY` on an exclusive open).
    #[error("device is busy: {0}")]
    Busy(String),
    /// The attempt was cancelled while a call was in progress.
    #[error("cancelled")]
    Cancelled,
    /// Any other I/O error, with the offset it happened at.
    #[error("{source} (at offset {offset})")]
    Io {
        /// Byte offset of the failed operation.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The target could not be opened or inspected.
    #[error("{0}")]
    Open(String),
    /// The target guard refused the target; nothing was written. The guard's
    /// typed refusal as it travels beyond the guard: its code and its sentence.
    #[error("{0}")]
    Refused(GuardRefusal),
    /// The target was reset and did not come back within the timeout (see
    /// [`Target::reset`]).
    #[error("did not come back within {after_secs} s of its reset")]
    LostAfterReset {
        /// Seconds waited.
        after_secs: u64,
    },
    /// The target was reset and what came back is not the device that was
    /// written (another serial, capacity or marker).
    #[error("came back different after its reset: {0}")]
    ChangedAfterReset(String),
    /// The station, not the target, ran out of something while operating on
    /// it: file descriptors (`EMFILE`, `ENFILE`) or memory (`ENOMEM`). Never
    /// the target's fault, never its verdict.
    #[error("the station is out of resources: {0}")]
    Station(String),
}

/// Whether an OS error says the *station* ran out of something (descriptors,
/// memory), whatever the operation was applied to.
pub fn is_station_resource_error(error: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        error.raw_os_error(),
        Some(code) if code == Errno::MFILE.raw_os_error()
            || code == Errno::NFILE.raw_os_error()
            || code == Errno::NOMEM.raw_os_error()
    )
}

impl TargetError {
    /// Classifies an OS error from an operation at `offset`.
    pub fn from_io(offset: u64, error: io::Error) -> Self {
        if is_station_resource_error(&error) {
            return TargetError::Station(error.to_string());
        }
        match error.raw_os_error() {
            Some(code)
                if code == rustix::io::Errno::NODEV.raw_os_error()
                    || code == rustix::io::Errno::NXIO.raw_os_error()
                    || code == rustix::io::Errno::NOMEDIUM.raw_os_error() =>
            {
                TargetError::Removed
            }
            Some(code) if code == rustix::io::Errno::ROFS.raw_os_error() => TargetError::ReadOnly,
            _ => TargetError::Io {
                offset,
                source: error,
            },
        }
    }
}

/// A place an image can be written to and read back from.
///
/// `Send + Sync` so one target can be shared between the thread that writes it
/// and the supervisor that watches it.
pub trait Target: Send + Sync {
    /// A name for people and logs (a device path, a file path, a stick's label).
    fn name(&self) -> String;

    /// Capacity and block size, without opening for writing.
    fn geometry(&self) -> Result<TargetGeometry, TargetError>;

    /// Whether the target is a medium that may misreport its capacity (a stick,
    /// real or simulated), so that the engine should probe it before writing. A
    /// regular file cannot lie, and probing it would scribble over its tail.
    fn may_misreport_capacity(&self) -> bool {
        true
    }

    /// Whether the target may hold recent writes in a cache of its own (a
    /// stick's controller or its USB bridge) that could answer a read-back
    /// in place of its medium. The capacity probe pushes its markers out of
    /// such a cache with a filler when it cannot [`reset`](Self::reset) the
    /// target. A target with no such cache (a loop device, whose medium is
    /// its backing file and whose reader drops that file's page cache; a
    /// regular file) says `false`, and the probe writes no filler there.
    /// When in doubt, `true` (the default): a filler costs a few MiB written,
    /// a cache that answers costs a missed lie.
    fn may_cache_writes(&self) -> bool {
        true
    }

    /// Whether [`reset`](Self::reset) is implemented: a simulated stick's is,
    /// and a USB block device's when the station gave it a way to see it come
    /// back; files and other block devices cannot be reset.
    fn can_reset(&self) -> bool {
        false
    }

    /// Makes the target forget everything it may hold in a cache of its own
    /// (its controller's or its USB bridge's RAM), as a power cycle does, so
    /// that the next read-back shows what its medium really holds. The engine
    /// calls it with no writer open, after the write pass is flushed, and opens
    /// the target afresh afterwards. A reset may take the device away from the
    /// system and bring it back under another name: `reset` returns once the
    /// same device is back (and the target leads to it), with
    /// [`TargetError::LostAfterReset`] when it does not come back,
    /// [`TargetError::ChangedAfterReset`] when another device comes back in its
    /// place, and [`TargetError::Removed`] when it was pulled meanwhile. Only
    /// called when [`can_reset`](Self::can_reset) says so; the default refuses.
    fn reset(&self) -> Result<(), TargetError> {
        Err(TargetError::Open(format!(
            "{} cannot be reset",
            self.name()
        )))
    }

    /// Opens the target for writing, exclusively where the target supports it.
    fn open_writer(&self) -> Result<Box<dyn TargetWriter>, TargetError>;

    /// Opens a *fresh* handle for reading back from the medium: direct I/O or an
    /// equivalent that no cache of this process or the kernel can answer.
    fn open_reader(&self) -> Result<Box<dyn TargetReader>, TargetError>;
}

/// A handle that writes to a target. Offsets and lengths are multiples of the
/// logical block size and buffers are [`AlignedBuf`]-aligned, except that the
/// final write of an image may be shorter (implementations pad it as needed).
pub trait TargetWriter: Send {
    /// Writes all of `data` at `offset`.
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError>;

    /// Makes everything written durable on the medium.
    fn flush(&mut self) -> Result<(), TargetError>;
}

/// A handle that reads a target back from the medium.
pub trait TargetReader: Send {
    /// Fills `buf` from `offset`; `buf.len()` is a multiple of the logical block
    /// size and `buf` is aligned. Returns how many bytes were read (fewer only at
    /// the end of the target).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, TargetError>;
}
