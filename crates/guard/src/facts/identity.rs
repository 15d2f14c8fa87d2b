//! Which disk a device node leads to: device number and the kernel's disk
//! sequence number, by name or from an opened descriptor.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::sysfs::read_number;
use crate::GuardError;

/// Which disk a device node led to: its device number and the kernel's disk
/// sequence number. Two identities are the same medium only when all three agree;
/// a name reused by another disk, or a loop device attached to another file, keeps
/// the number but gets a new `diskseq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiskIdentity {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// The kernel's disk sequence number (`diskseq`, Linux 5.15 and later; `None`
    /// before, where only the device number can be compared).
    pub diskseq: Option<u64>,
}

impl fmt::Display for DiskIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.diskseq {
            Some(seq) => write!(
                f,
                "device {}:{} (disk sequence {seq})",
                self.major, self.minor
            ),
            None => write!(
                f,
                "device {}:{} (no disk sequence number)",
                self.major, self.minor
            ),
        }
    }
}

impl DiskIdentity {
    /// The identity of the block device `path` leads to now (`stat`, then the
    /// `diskseq` of that device number in sysfs).
    pub fn of_path(path: &Path) -> Result<DiskIdentity, GuardError> {
        let (major, minor) = block_devno(fs::metadata(path), path)?;
        Ok(DiskIdentity {
            major,
            minor,
            diskseq: sysfs_diskseq(Path::new("/sys"), major, minor)?,
        })
    }

    /// The identity of the block device behind an open descriptor (`fstat`, then
    /// the `BLKGETDISKSEQ` ioctl on the descriptor itself, or sysfs on a kernel
    /// without the ioctl). `path` is only for messages.
    pub fn of_file(file: &File, path: &Path) -> Result<DiskIdentity, GuardError> {
        let (major, minor) = block_devno(file.metadata(), path)?;
        let diskseq = match ioctl_diskseq(file) {
            Ok(seq) => Some(seq),
            // ENOTTY/EINVAL: a kernel without the ioctl (before 5.15).
            Err(rustix::io::Errno::NOTTY | rustix::io::Errno::INVAL) => {
                sysfs_diskseq(Path::new("/sys"), major, minor)?
            }
            Err(errno) => {
                return Err(GuardError::Io {
                    path: path.to_owned(),
                    source: errno.into(),
                })
            }
        };
        Ok(DiskIdentity {
            major,
            minor,
            diskseq,
        })
    }
}

/// The device number of a block device from its `stat` (`metadata`), or why
/// there is none: the `stat` failed, or `path` is not a block device.
pub(super) fn block_devno(
    metadata: io::Result<fs::Metadata>,
    path: &Path,
) -> Result<(u32, u32), GuardError> {
    let meta = metadata.map_err(|source| GuardError::Io {
        path: path.to_owned(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(GuardError::NotBlockDevice {
            path: path.to_owned(),
        });
    }
    Ok((
        rustix::fs::major(meta.rdev()),
        rustix::fs::minor(meta.rdev()),
    ))
}

/// `BLKGETDISKSEQ` (`<linux/fs.h>`: `_IOR(0x12, 128, __u64)`): the disk sequence
/// number of the disk behind a block device descriptor.
#[allow(unsafe_code)]
fn ioctl_diskseq(file: &File) -> rustix::io::Result<u64> {
    const BLKGETDISKSEQ: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<u64>(0x12, 128);
    // SAFETY: BLKGETDISKSEQ takes a pointer to one u64 that the kernel fills in,
    // which is exactly what `Getter<_, u64>` passes and reads back; the descriptor
    // is a valid open file for the duration of the call.
    unsafe { rustix::ioctl::ioctl(file, rustix::ioctl::Getter::<BLKGETDISKSEQ, u64>::new()) }
}

/// The `diskseq` of block device `major:minor` in the sysfs tree at `root`;
/// `None` when the kernel has none (before 5.15).
fn sysfs_diskseq(root: &Path, major: u32, minor: u32) -> Result<Option<u64>, GuardError> {
    let path = root.join(format!("dev/block/{major}:{minor}/diskseq"));
    match read_number(&path) {
        Ok(seq) => Ok(Some(seq)),
        Err(GuardError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(other) => Err(other),
    }
}

/// The part of `struct loop_info64` (`<linux/loop.h>`) the guard reads: the
/// device and inode of the backing file and the device it is, when it is a
/// block device; the rest (offsets, flags, names, 208 bytes) is kept only so
/// that the kernel has the whole struct to fill.
#[repr(C)]
struct LoopInfo64 {
    /// `lo_device`: the backing file's device, in the kernel's "huge" encoding.
    lo_device: u64,
    /// `lo_inode`: the backing file's inode number.
    lo_inode: u64,
    /// `lo_rdevice`: the backing file's own device number (its `st_rdev`),
    /// in the same encoding: the block device behind the loop device when the
    /// backing is one, zero for a regular file.
    lo_rdevice: u64,
    /// `lo_offset` … `lo_init`.
    _rest: [u8; 208],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);

/// What a loop device's status says of what it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoopStatus {
    /// Device and inode of the backing file (for a block device: of its
    /// node), in `st_dev`'s encoding.
    pub(crate) file: (u64, u64),
    /// The backing block device's number, when the backing is a block device
    /// (`losetup /dev/loop1 /dev/sdb`, a partition, another loop device);
    /// `None` for a regular file.
    pub(crate) block_device: Option<(u32, u32)>,
}

/// The status of the loop device open as `file` (`LOOP_GET_STATUS64`): the
/// device and inode of the file behind it, the device in `st_dev`'s encoding
/// so that it compares with [`MetadataExt::dev`], and the block device it is
/// when it is one. The kernel keeps them for the open file itself, whatever
/// its path has become since (renamed, unlinked, attached in another mount
/// namespace). `ENXIO` for a loop device with nothing attached.
#[allow(unsafe_code)]
pub(super) fn loop_status(file: &File) -> rustix::io::Result<LoopStatus> {
    /// `LOOP_GET_STATUS64`: a plain number, not an `_IOR` encoding.
    const LOOP_GET_STATUS64: rustix::ioctl::Opcode = 0x4C05;
    // SAFETY: LOOP_GET_STATUS64 takes a pointer to a `struct loop_info64`
    // (232 bytes, 8-aligned) that the kernel fills in; `LoopInfo64` has that
    // size and alignment, and `Getter` passes a pointer to one and reads it
    // back. The descriptor is a valid open file for the duration of the call.
    let info = unsafe {
        rustix::ioctl::ioctl(
            file,
            rustix::ioctl::Getter::<LOOP_GET_STATUS64, LoopInfo64>::new(),
        )
    }?;
    let block_device = (info.lo_rdevice != 0).then(|| {
        let rdev = huge_to_st_dev(info.lo_rdevice);
        (rustix::fs::major(rdev), rustix::fs::minor(rdev))
    });
    Ok(LoopStatus {
        file: (huge_to_st_dev(info.lo_device), info.lo_inode),
        block_device,
    })
}

/// A device number in the kernel's "huge" encoding (`new_encode_dev`: minor's
/// low byte, then 12 bits of major, then the rest of minor) in `st_dev`'s.
fn huge_to_st_dev(dev: u64) -> u64 {
    let major = ((dev & 0xf_ff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xf_ff00)) as u32;
    rustix::fs::makedev(major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_encoded_device_number_becomes_st_devs() {
        // 8:1 (sda1), 259:3 (nvme0n1p3), 253:300 (a minor past one byte).
        for (major, minor) in [(8u32, 1u32), (259, 3), (253, 300), (0, 45)] {
            let huge = u64::from(minor & 0xff)
                | (u64::from(major) << 8)
                | (u64::from(minor & !0xff) << 12);
            let st_dev = huge_to_st_dev(huge);
            assert_eq!(
                (rustix::fs::major(st_dev), rustix::fs::minor(st_dev)),
                (major, minor)
            );
        }
    }
}
