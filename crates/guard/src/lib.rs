//! The target guard: whether a block device may be written at all.
//!
//! This crate enforces the safety invariant of `DESIGN.md` ("The target guard"). It
//! is split so that the rules can be tested without hardware:
//!
//! - **rules** (`rules.rs`): [`evaluate`] and [`refusals`] are pure functions of the
//!   facts, the station's [`GuardPolicy`] and the attempt's [`GuardRequest`],
//!   answering with a typed [`Refusal`]. No I/O.
//! - **facts** (`facts.rs`): [`DiskFacts`] says what a block device *is* (whole disk
//!   or partition, bus, size, mounts, swap, holders, whether it carries a mounted
//!   filesystem). It is gathered by [`DiskFacts::inspect`] (a device by name) or
//!   [`DiskFacts::of_opened`] (the device behind an open descriptor) from sysfs
//!   (`facts/sysfs.rs`) and the proc files; [`DiskFacts::inspect_with`] takes a
//!   [`SystemView`] instead, so that tests can point it at a fake sysfs tree and
//!   fake proc files. A disk's [`DiskIdentity`] (device number and `diskseq`, from
//!   sysfs or the `BLKGETDISKSEQ` ioctl) is in `facts/identity.rs`.
//! - **procfs** (`procfs.rs`): the parsers of `/proc/self/mountinfo` and
//!   `/proc/swaps`, over text, so that fake views feed them too.
//!
//! # Rules, in order
//! 1. a whole disk ([`Refusal::NotWholeDisk`]) on an allowed bus
//!    ([`Refusal::BusNotAllowed`]; `usb` by default, anything else only when the policy
//!    names it, e.g. `loop` in tests);
//! 2. its port is mapped, or unmapped ports are allowed ([`Refusal::PortNotMapped`]);
//! 3. neither it nor a partition of it is mounted ([`Refusal::Mounted`]), used as swap
//!    ([`Refusal::Swap`]) or held by a stacked device such as device-mapper or md
//!    ([`Refusal::Held`]);
//! 4. it is not a disk under the root filesystem or any other mounted filesystem,
//!    followed through partitions and dm/md slaves ([`Refusal::SystemDisk`]), nor a
//!    loop device over a file flashrack keeps — a cached image, a raw image the
//!    cache reads in place, its records — as the policy's [`FileKeeper`] says,
//!    nor a device stacked over such a loop device (a partition of it, dm, md;
//!    followed down `slaves/` and partitions' disks) ([`Refusal::ProtectedFile`]:
//!    writing it would corrupt the image). The file is judged by the device and
//!    inode the loop device's own status gives (`LOOP_GET_STATUS64`), not by the
//!    path sysfs shows, which names another file or none when the device was
//!    attached in another mount namespace or through a link since removed;
//! 5. its size is at most the maximum ([`Refusal::TooLarge`]) and at least the image
//!    ([`Refusal::TooSmall`]; a size of zero is [`Refusal::NoMedium`]: a card reader
//!    without a card is not a small stick);
//! 6. a run is armed, or the operator asked for this device ([`Refusal::NotArmed`]).
//!
//! A **loop device over a block device** (a disk, a partition, another loop
//! device) writes that device, so its facts carry that device's facts
//! ([`LoopBacking::below`], found by the loop device's status, followed down
//! every level) and every rule but the run's (1 to 5, no image size) is
//! applied to it as well: a refusal of the device below refuses the loop
//! device as [`Refusal::Below`], naming it, with its code. The other way
//! round, a loop device over a device is one of that device's
//! [`holders`](DiskFacts::holders), which the kernel does not list.
//!
//! Every rule is always checked. [`refusals`] returns every failing one in the order
//! above; [`evaluate`] returns the first of them, which is what an attempt records as
//! its reason. A disk that is mounted directly fails rules 3 *and* 4, so it is
//! reported as [`Refusal::Mounted`]; rule 4 is what catches a disk that is only
//! mounted through a stack (LVM, md).
//!
//! # What the guard cannot see, and who covers it
//! Mounts in other mount namespaces, processes that merely hold the device open and
//! the extra members of a multi-device filesystem (btrfs) are invisible here. The
//! exclusive `O_EXCL` open in `flashrack-hardware`'s `block`, done before the guard judges the
//! opened device, fails with `EBUSY` for all of them, and the opener turns that
//! into [`Refusal::Busy`] (or into the guard's own refusal when it can tell why).
//!
//! # Whose facts: the device that is opened
//! A name (`/dev/sdb`) can lead to another disk from one moment to the next: a
//! stick pulled and another plugged in, a loop device detached and attached to
//! another file. A device is therefore pinned by its [`DiskIdentity`] (device
//! number and the kernel's disk sequence number, `diskseq`, which is new for every
//! disk and every medium) when it is first seen, and the opener
//! (`flashrack-hardware`'s `block::PathTarget`) opens first, reads the identity of what it
//! opened from the descriptor, refuses anything else ([`Refusal::IdentityChanged`])
//! and gathers the facts for the descriptor's device ([`DiskFacts::of_opened`]), not
//! for the name. Kernels before 5.15 have no `diskseq`; there only the device
//! number is compared.
//!
//! Inspection fails closed: when the facts cannot be gathered ([`GuardError`]), the
//! device is not written. Nothing here prints or logs; refusals are values whose
//! `Display` is the sentence that the operator sees and the record keeps.
#![deny(missing_docs)]

mod facts;
mod procfs;
mod rules;
#[cfg(test)]
mod test_support;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use facts::{BackingFile, DiskFacts, DiskIdentity, LoopBacking, MountUse, SystemView};
pub use rules::{
    evaluate, read_refusals, refusals, Accepted, Authorization, FileKeeper, GuardPolicy,
    GuardRequest, ProtectedFiles, Refusal, DEFAULT_MAX_SIZE_BYTES,
};

/// Decides, at the moment a block device is opened for writing, whether it may be
/// written, from the facts of the device behind the opened descriptor (already
/// checked to be the pinned disk). Returns the guard's typed refusal (its code and
/// its sentence travel to the verdict).
pub type GuardCheck = Arc<dyn Fn(&DiskFacts) -> Result<(), Refusal> + Send + Sync>;

/// Why the guard could not decide, or why it refused ([`check_path`]).
///
/// Every inspection failure means "do not write": the guard fails closed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The device was inspected and refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The path is not a block device.
    #[error("{} is not a block device", path.display())]
    NotBlockDevice {
        /// The path given.
        path: PathBuf,
    },
    /// The block device has no entry in sysfs.
    #[error("block device {major}:{minor} ({}) is not in sysfs", path.display())]
    NotInSysfs {
        /// The path given.
        path: PathBuf,
        /// Its major number.
        major: u32,
        /// Its minor number.
        minor: u32,
    },
    /// A file needed for the decision could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file needed for the decision had unexpected contents.
    #[error("cannot understand {what}: {detail}")]
    Malformed {
        /// Which file (and line).
        what: String,
        /// What was wrong.
        detail: String,
    },
}

/// Inspects the block device at `path` on the running system and evaluates it.
///
/// Call it at the moment of opening, right before the exclusive open.
pub fn check_path(
    path: &Path,
    policy: &GuardPolicy,
    request: &GuardRequest,
) -> Result<(DiskFacts, Accepted), GuardError> {
    let facts = DiskFacts::inspect(path)?;
    let accepted = evaluate(&facts, policy, request)?;
    Ok((facts, accepted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_converts_into_a_guard_error_with_the_same_text() {
        let e = GuardError::from(Refusal::NotArmed);
        assert_eq!(e.to_string(), Refusal::NotArmed.to_string());
    }
}
