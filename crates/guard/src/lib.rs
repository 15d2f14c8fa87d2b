//! The target guard: whether a block device may be written at all.
//!
//! This crate enforces the safety invariant of `DESIGN.md` ("The target guard"). It
//! is split in two halves so that the rules can be tested without hardware:
//!
//! - **facts**: [`DiskFacts`] says what a block device *is* (whole disk or partition,
//!   bus, size, mounts, swap, holders, whether it carries a mounted filesystem). It is
//!   gathered by [`DiskFacts::inspect`] from sysfs, `/proc/self/mountinfo` and
//!   `/proc/swaps`; [`DiskFacts::inspect_with`] takes a [`SystemView`] instead, so that
//!   tests can point it at a fake sysfs tree and fake proc files.
//! - **rules**: [`evaluate`] and [`refusals`] are pure functions of the facts, the
//!   station's [`GuardPolicy`] and the attempt's [`GuardRequest`].
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
//!    followed through partitions and dm/md slaves ([`Refusal::SystemDisk`]);
//! 5. its size is at most the maximum ([`Refusal::TooLarge`]) and at least the image
//!    ([`Refusal::TooSmall`]; a size of zero is [`Refusal::NoMedium`]: a card reader
//!    without a card is not a small stick);
//! 6. a run is armed, or the operator asked for this device ([`Refusal::NotArmed`]).
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

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flashrack_core::{GuardRefusal, RefusalCode};

/// Decides, at the moment a block device is opened for writing, whether it may be
/// written, from the facts of the device behind the opened descriptor (already
/// checked to be the pinned disk). Returns the guard's typed refusal (its code and
/// its sentence travel to the verdict).
pub type GuardCheck = Arc<dyn Fn(&DiskFacts) -> Result<(), Refusal> + Send + Sync>;

/// The default size limit: 256 GB (decimal). Bigger is probably a USB hard disk.
pub const DEFAULT_MAX_SIZE_BYTES: u64 = 256_000_000_000;

/// How deep [`SysfsTree::whole_disks_under`] follows stacked devices (dm on md on
/// partitions…). Real stacks are a few levels deep; the bound only stops a cycle.
const MAX_STACK_DEPTH: usize = 16;

/// sysfs reports sizes in 512-byte sectors whatever the device's block size.
const SYSFS_SECTOR: u64 = 512;

/// One mount of the device or of one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountUse {
    /// Kernel name of what is mounted: the disk itself or one of its partitions.
    pub device: String,
    /// Where it is mounted.
    pub mount_point: String,
}

/// What a block device is, as far as the guard is concerned.
///
/// Gathered by [`DiskFacts::inspect`]; the fields are public so that tests and other
/// fact sources (udev, issue 3 fills in [`port_path`](Self::port_path)) can build or
/// complete them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFacts {
    /// The path the device was inspected through (`/dev/sdb`, `/dev/disk/by-path/…`).
    pub dev_path: PathBuf,
    /// The kernel's name for it (`sdb`, `loop3`, `nvme0n1p1`).
    pub kernel_name: String,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// The kernel's disk sequence number (sysfs `diskseq`), new for every disk and
    /// every medium; `None` before Linux 5.15 (and in fake sysfs trees without it).
    pub diskseq: Option<u64>,
    /// Whether this is a partition rather than a whole disk.
    pub is_partition: bool,
    /// For a partition, the kernel name of the disk it belongs to.
    pub parent_disk: Option<String>,
    /// The bus it hangs off: `usb`, `loop`, `virtio`, `nvme`, `ata`, `mmc`, `scsi`,
    /// `virtual` (dm, md, zram…) or `other`; `None` when unknown.
    pub bus: Option<String>,
    /// The stable port path (udev `ID_PATH`) when known. Sysfs inspection leaves it
    /// `None`; the udev side fills it in.
    pub port_path: Option<String>,
    /// Capacity in bytes as the kernel reports it.
    pub size_bytes: u64,
    /// Mounts of the device or of its partitions.
    pub mounted: Vec<MountUse>,
    /// Swap areas on the device, its partitions or a stack on top of them, as listed
    /// in `/proc/swaps`.
    pub swap: Vec<String>,
    /// Devices stacked on it or on its partitions, as `"dm-0 on sdb1"`.
    pub holders: Vec<String>,
    /// Why this is a system disk, when it is one: the disk (or the disk of this
    /// partition) lies under a mounted filesystem, e.g. `"holds / (mounted from vda)"`.
    pub system_disk: Option<String>,
    /// Whether the kernel marks the device read-only. Not a guard rule: writing a
    /// read-only stick ends in a `read-only` verdict, which tells the operator more.
    pub read_only: bool,
}

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
        let meta = fs::metadata(path).map_err(|source| GuardError::Io {
            path: path.to_owned(),
            source,
        })?;
        if !meta.file_type().is_block_device() {
            return Err(GuardError::NotBlockDevice {
                path: path.to_owned(),
            });
        }
        let (major, minor) = (
            rustix::fs::major(meta.rdev()),
            rustix::fs::minor(meta.rdev()),
        );
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
        let meta = file.metadata().map_err(|source| GuardError::Io {
            path: path.to_owned(),
            source,
        })?;
        if !meta.file_type().is_block_device() {
            return Err(GuardError::NotBlockDevice {
                path: path.to_owned(),
            });
        }
        let (major, minor) = (
            rustix::fs::major(meta.rdev()),
            rustix::fs::minor(meta.rdev()),
        );
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

/// Where inspection looks: a sysfs tree and the text of the proc files.
///
/// [`SystemView::live`] is the running system; [`SystemView::fake`] lets tests build a
/// sysfs tree in a temporary directory and hand in their own `mountinfo` and `swaps`.
#[derive(Debug, Clone)]
pub struct SystemView {
    /// Root of the sysfs tree (`/sys`); `dev/block`, `class/block` and `devices` are
    /// looked up under it.
    sysfs_root: PathBuf,
    /// Contents of `/proc/self/mountinfo`.
    mountinfo: String,
    /// Contents of `/proc/swaps`.
    swaps: String,
    /// Whether mount and swap sources given as paths may be looked up on this host
    /// (to follow `/dev/mapper/…` links to `dm-N`). Off for fake views, so that a test
    /// never depends on what the host's `/dev` holds.
    host_paths: bool,
}

impl SystemView {
    /// The running system: `/sys`, `/proc/self/mountinfo` and `/proc/swaps` (read now;
    /// a kernel without swap support has no `/proc/swaps`, which counts as no swap).
    pub fn live() -> Result<Self, GuardError> {
        let read = |path: &str| {
            fs::read_to_string(path).map_err(|source| GuardError::Io {
                path: PathBuf::from(path),
                source,
            })
        };
        let mountinfo = read("/proc/self/mountinfo")?;
        let swaps = match read("/proc/swaps") {
            Err(GuardError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                String::new()
            }
            other => other?,
        };
        Ok(SystemView {
            sysfs_root: PathBuf::from("/sys"),
            mountinfo,
            swaps,
            host_paths: true,
        })
    }

    /// A view of a sysfs tree at `sysfs_root` with the given `mountinfo` and `swaps`
    /// texts. Paths in them are resolved by name through `class/block`, never on the
    /// host.
    pub fn fake(
        sysfs_root: impl Into<PathBuf>,
        mountinfo: impl Into<String>,
        swaps: impl Into<String>,
    ) -> Self {
        SystemView {
            sysfs_root: sysfs_root.into(),
            mountinfo: mountinfo.into(),
            swaps: swaps.into(),
            host_paths: false,
        }
    }
}

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

/// The station's standing rules for what may be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardPolicy {
    /// Buses whose disks may be written; `{"usb"}` by default. Name `loop` here to
    /// write loop devices (tests).
    pub allowed_buses: BTreeSet<String>,
    /// Largest device that may be written, in bytes; [`DEFAULT_MAX_SIZE_BYTES`] by
    /// default.
    pub max_size_bytes: u64,
    /// Whether devices in ports missing from [`mapped_ports`](Self::mapped_ports)
    /// (or whose port is unknown) may be written; `false` by default.
    pub allow_unmapped_ports: bool,
    /// Port paths (udev `ID_PATH`) that the configuration maps to labels.
    pub mapped_ports: BTreeSet<String>,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            allowed_buses: BTreeSet::from(["usb".to_owned()]),
            max_size_bytes: DEFAULT_MAX_SIZE_BYTES,
            allow_unmapped_ports: false,
            mapped_ports: BTreeSet::new(),
        }
    }
}

/// What one attempt asks of the guard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardRequest {
    /// Size of the image to be written, in bytes.
    pub image_size: u64,
    /// Whether a run is armed (auto-start).
    pub armed_run: bool,
    /// Whether the operator asked for this very device.
    pub explicit_operator_request: bool,
}

/// Proof that the guard accepted a device, and on whose authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// What allowed the write under rule 6.
    pub authorized_by: Authorization,
}

/// What allowed a write under rule 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// The operator asked for this device (reported even when a run is also armed).
    Operator,
    /// A run is armed and writes every accepted device (auto-start).
    ArmedRun,
}

/// Why the guard refused a device. `Display` is the sentence for the operator and
/// the record; [`code`](Refusal::code) is a stable name for filtering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Rule 1: a partition, not a whole disk.
    #[error("{device} is a partition{}, not a whole disk", disk.as_ref().map(|d| format!(" of {d}")).unwrap_or_default())]
    NotWholeDisk {
        /// Kernel name of the partition.
        device: String,
        /// Kernel name of its disk, when known.
        disk: Option<String>,
    },
    /// Rule 1: on a bus the configuration does not allow.
    #[error("the device is on the {bus} bus, which the configuration does not allow")]
    BusNotAllowed {
        /// The device's bus, `unknown` when it could not be told.
        bus: String,
    },
    /// Rule 2: the port is not mapped and unmapped ports are not allowed.
    #[error("{}", match port {
        Some(port) => format!("port {port} is not mapped in the configuration"),
        None => "the device's port is unknown and the configuration does not allow unmapped ports".to_owned(),
    })]
    PortNotMapped {
        /// The port path, `None` when unknown.
        port: Option<String>,
    },
    /// Rule 3: the device or one of its partitions is mounted.
    #[error("{what} is mounted at {mount_point}")]
    Mounted {
        /// Kernel name of what is mounted.
        what: String,
        /// Where.
        mount_point: String,
    },
    /// Rule 3: the device, a partition or a stack on it is used as swap.
    #[error("{what} is in use as swap")]
    Swap {
        /// The swap area as `/proc/swaps` names it.
        what: String,
    },
    /// Rule 3: other devices (device-mapper, md…) are stacked on it.
    #[error("the device is held by {}", holders.join(", "))]
    Held {
        /// The holders, as `"dm-0 on sdb1"`.
        holders: Vec<String>,
    },
    /// Rule 4: a mounted filesystem lives on this disk.
    #[error("this is a system disk: it {why}")]
    SystemDisk {
        /// Why, e.g. `"holds / (mounted from vda)"`.
        why: String,
    },
    /// Rule 5: bigger than the configured maximum.
    #[error("the device is too large: {} is more than the maximum of {}", bytes(*size), bytes(*max))]
    TooLarge {
        /// The device's size in bytes.
        size: u64,
        /// The configured maximum in bytes.
        max: u64,
    },
    /// Rule 5: smaller than the image.
    #[error("the device is too small: {} is less than the image's {}", bytes(*size), bytes(*needed))]
    TooSmall {
        /// The device's size in bytes.
        size: u64,
        /// The image's size in bytes.
        needed: u64,
    },
    /// Rule 5: the device reports a size of zero: it holds no medium (a card
    /// reader without a card), which is not the same as a small stick.
    #[error("the device holds no medium (it reports a size of 0 bytes)")]
    NoMedium,
    /// Rule 6: no run is armed and the operator did not ask for this device.
    #[error("no run is armed and the operator did not ask for this device")]
    NotArmed,
    /// The device that was opened is not the one that was judged: its name now
    /// leads to another disk (another stick under the same name, a loop device
    /// attached to another file). Produced by the opener, not by [`evaluate`].
    #[error("the device is not the one that was checked: its name now leads to {found}, not {expected} (another disk took its name)")]
    IdentityChanged {
        /// The disk that was checked (pinned when it was first seen).
        expected: DiskIdentity,
        /// The disk behind the name, or behind the opened descriptor.
        found: DiskIdentity,
    },
    /// The exclusive open failed (`EBUSY`): something this guard cannot see holds the
    /// device. Produced by the opener, not by [`evaluate`].
    #[error("the device is busy: {detail}")]
    Busy {
        /// What the opener knows (the OS error).
        detail: String,
    },
    /// The facts the rules need could not be gathered ([`GuardError`] other than a
    /// refusal), so the guard does not write: it fails closed. Produced by callers
    /// that inspect and evaluate in one step, not by [`evaluate`].
    #[error("cannot inspect the device: {detail}")]
    CannotInspect {
        /// Why inspection failed.
        detail: String,
    },
}

impl Refusal {
    /// The kind of refusal, as the stable code records and reports carry.
    pub fn kind(&self) -> RefusalCode {
        match self {
            Refusal::NotWholeDisk { .. } => RefusalCode::NotWholeDisk,
            Refusal::BusNotAllowed { .. } => RefusalCode::BusNotAllowed,
            Refusal::PortNotMapped { .. } => RefusalCode::PortNotMapped,
            Refusal::Mounted { .. } => RefusalCode::Mounted,
            Refusal::Swap { .. } => RefusalCode::Swap,
            Refusal::Held { .. } => RefusalCode::Held,
            Refusal::SystemDisk { .. } => RefusalCode::SystemDisk,
            Refusal::TooLarge { .. } => RefusalCode::TooLarge,
            Refusal::TooSmall { .. } => RefusalCode::TooSmall,
            Refusal::NoMedium => RefusalCode::NoMedium,
            Refusal::NotArmed => RefusalCode::NotArmed,
            Refusal::IdentityChanged { .. } => RefusalCode::IdentityChanged,
            Refusal::Busy { .. } => RefusalCode::Busy,
            Refusal::CannotInspect { .. } => RefusalCode::CannotInspect,
        }
    }

    /// A stable snake_case name for the kind of refusal (`"mounted"`, `"too_large"`…):
    /// [`kind`](Self::kind) as text.
    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The refusal as it travels beyond the guard: its code and its sentence.
    pub fn to_record(&self) -> GuardRefusal {
        GuardRefusal {
            code: self.kind(),
            message: self.to_string(),
        }
    }
}

impl From<Refusal> for GuardRefusal {
    fn from(refusal: Refusal) -> Self {
        refusal.to_record()
    }
}

impl From<GuardError> for Refusal {
    /// A refusal stays itself; any other failure to decide is
    /// [`Refusal::CannotInspect`]: the guard fails closed.
    fn from(error: GuardError) -> Self {
        match error {
            GuardError::Refused(refusal) => refusal,
            other => Refusal::CannotInspect {
                detail: other.to_string(),
            },
        }
    }
}

/// A byte count for people: `"67.1 MB (67108864 bytes)"`, decimal units as on the
/// sticks' packaging.
fn bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "TB"),
        (1_000_000_000, "GB"),
        (1_000_000, "MB"),
        (1_000, "kB"),
    ];
    match UNITS.iter().find(|(unit, _)| n >= *unit) {
        Some((unit, name)) => format!("{:.1} {name} ({n} bytes)", n as f64 / *unit as f64),
        None => format!("{n} bytes"),
    }
}

/// Every rule that `facts` fail, in rule order (empty when the device is accepted).
pub fn refusals(facts: &DiskFacts, policy: &GuardPolicy, request: &GuardRequest) -> Vec<Refusal> {
    let mut out = Vec::new();

    // Rule 1. An unknown bus is never allowed, whatever the policy names.
    if facts.is_partition {
        out.push(Refusal::NotWholeDisk {
            device: facts.kernel_name.clone(),
            disk: facts.parent_disk.clone(),
        });
    }
    let bus_allowed = facts
        .bus
        .as_ref()
        .is_some_and(|bus| policy.allowed_buses.contains(bus));
    if !bus_allowed {
        out.push(Refusal::BusNotAllowed {
            bus: facts.bus.clone().unwrap_or_else(|| "unknown".to_owned()),
        });
    }

    // Rule 2.
    let port_mapped = facts
        .port_path
        .as_ref()
        .is_some_and(|port| policy.mapped_ports.contains(port));
    if !port_mapped && !policy.allow_unmapped_ports {
        out.push(Refusal::PortNotMapped {
            port: facts.port_path.clone(),
        });
    }

    // Rule 3.
    out.extend(facts.mounted.iter().map(|m| Refusal::Mounted {
        what: m.device.clone(),
        mount_point: m.mount_point.clone(),
    }));
    out.extend(
        facts
            .swap
            .iter()
            .map(|what| Refusal::Swap { what: what.clone() }),
    );
    if !facts.holders.is_empty() {
        out.push(Refusal::Held {
            holders: facts.holders.clone(),
        });
    }

    // Rule 4.
    if let Some(why) = &facts.system_disk {
        out.push(Refusal::SystemDisk { why: why.clone() });
    }

    // Rule 5.
    if facts.size_bytes > policy.max_size_bytes {
        out.push(Refusal::TooLarge {
            size: facts.size_bytes,
            max: policy.max_size_bytes,
        });
    }
    if facts.size_bytes == 0 {
        out.push(Refusal::NoMedium);
    } else if facts.size_bytes < request.image_size {
        out.push(Refusal::TooSmall {
            size: facts.size_bytes,
            needed: request.image_size,
        });
    }

    // Rule 6.
    if !request.armed_run && !request.explicit_operator_request {
        out.push(Refusal::NotArmed);
    }
    out
}

/// Decides whether the device described by `facts` may be written: accepted, or
/// refused for the first failing rule in rule order (see the module docs).
pub fn evaluate(
    facts: &DiskFacts,
    policy: &GuardPolicy,
    request: &GuardRequest,
) -> Result<Accepted, Refusal> {
    match refusals(facts, policy, request).into_iter().next() {
        Some(refusal) => Err(refusal),
        None => Ok(Accepted {
            authorized_by: if request.explicit_operator_request {
                Authorization::Operator
            } else {
                Authorization::ArmedRun
            },
        }),
    }
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

impl DiskFacts {
    /// The identity of the disk these facts describe.
    pub fn identity(&self) -> DiskIdentity {
        DiskIdentity {
            major: self.major,
            minor: self.minor,
            diskseq: self.diskseq,
        }
    }

    /// Gathers the facts about the block device behind an open descriptor, on the
    /// running system: the device number and disk sequence number come from the
    /// descriptor, everything else from sysfs and `/proc` for that device number.
    /// If sysfs describes another medium than the descriptor's (its `diskseq`
    /// differs), the facts would be another disk's: that is refused as
    /// [`Refusal::IdentityChanged`]. `path` is the name it was opened by, for
    /// messages and [`dev_path`](Self::dev_path).
    pub fn of_opened(file: &File, path: &Path) -> Result<DiskFacts, GuardError> {
        let opened = DiskIdentity::of_file(file, path)?;
        let facts = DiskFacts::from_view(path, opened.major, opened.minor, &SystemView::live()?)?;
        if facts.diskseq.is_some() && facts.diskseq != opened.diskseq {
            return Err(Refusal::IdentityChanged {
                expected: opened,
                found: facts.identity(),
            }
            .into());
        }
        Ok(DiskFacts {
            diskseq: opened.diskseq,
            ..facts
        })
    }

    /// Gathers the facts about the block device at `path` from the running system.
    pub fn inspect(path: &Path) -> Result<DiskFacts, GuardError> {
        DiskFacts::inspect_with(path, &SystemView::live()?)
    }

    /// Gathers the facts about the block device at `path` (which must exist on this
    /// host: its device number is read from it) from `view`.
    pub fn inspect_with(path: &Path, view: &SystemView) -> Result<DiskFacts, GuardError> {
        let meta = fs::metadata(path).map_err(|source| GuardError::Io {
            path: path.to_owned(),
            source,
        })?;
        if !meta.file_type().is_block_device() {
            return Err(GuardError::NotBlockDevice {
                path: path.to_owned(),
            });
        }
        let rdev = meta.rdev();
        DiskFacts::from_view(path, rustix::fs::major(rdev), rustix::fs::minor(rdev), view)
    }

    /// Gathers the facts about block device `major:minor`, known as `dev_path`, from
    /// `view` alone (no device node needed: what tests of fake sysfs trees use).
    pub fn from_view(
        dev_path: &Path,
        major: u32,
        minor: u32,
        view: &SystemView,
    ) -> Result<DiskFacts, GuardError> {
        let sys = SysfsTree::new(view)?;
        let dir = match sys.dir_of_devno(major, minor)? {
            Some(dir) => dir,
            None => {
                return Err(GuardError::NotInSysfs {
                    path: dev_path.to_owned(),
                    major,
                    minor,
                })
            }
        };
        let kernel_name = file_name(&dir);
        let is_partition = dir.join("partition").exists();
        let parent_disk = if is_partition {
            dir.parent().map(file_name)
        } else {
            None
        };
        let bus = Some(bus_of(&sys.relative(&dir)).to_owned());
        let sectors = read_number(&dir.join("size"))?;
        let size_bytes =
            sectors
                .checked_mul(SYSFS_SECTOR)
                .ok_or_else(|| GuardError::Malformed {
                    what: dir.join("size").display().to_string(),
                    detail: format!("{sectors} sectors overflow a byte count"),
                })?;
        let read_only = read_number(&dir.join("ro"))? != 0;
        let diskseq = match read_number(&dir.join("diskseq")) {
            Ok(seq) => Some(seq),
            Err(GuardError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(other) => return Err(other),
        };

        // Rule 3 looks at the device and, for a disk, at its partitions.
        let mut scope = vec![(kernel_name.clone(), dir.clone())];
        if !is_partition {
            scope.extend(partitions_of(&dir, &kernel_name)?);
        }
        let in_scope = |name: &str| scope.iter().any(|(n, _)| n == name);

        let mut holders = Vec::new();
        for (name, d) in &scope {
            for holder in list_names(&d.join("holders"))? {
                holders.push(format!("{holder} on {name}"));
            }
        }

        // Rule 4 asks about the whole disk, also when inspecting a partition of it.
        let whole_disk = parent_disk.clone().unwrap_or_else(|| kernel_name.clone());
        let mut mounted = Vec::new();
        let mut system_reasons: Vec<(bool, String)> = Vec::new();
        for entry in parse_mountinfo(&view.mountinfo)? {
            let Some((name, mdir)) = sys.resolve_mount(&entry)? else {
                continue;
            };
            if in_scope(&name) {
                mounted.push(MountUse {
                    device: name.clone(),
                    mount_point: entry.mount_point.clone(),
                });
            }
            if sys.whole_disks_under(&mdir, 0)?.contains(&whole_disk) {
                system_reasons.push((
                    entry.mount_point == "/",
                    format!("holds {} (mounted from {name})", entry.mount_point),
                ));
            }
        }
        // The root filesystem is the reason people understand best; say it first.
        let system_disk = system_reasons
            .iter()
            .find(|(root, _)| *root)
            .or(system_reasons.first())
            .map(|(_, why)| why.clone());

        let mut swap = Vec::new();
        for entry in parse_swaps(&view.swaps)? {
            // A swap *file* lives on a mounted filesystem, which the mounts cover.
            if entry.kind == "file" {
                continue;
            }
            let Some((name, sdir)) = sys.resolve_path(&entry.filename)? else {
                continue;
            };
            if in_scope(&name) || sys.whole_disks_under(&sdir, 0)?.contains(&whole_disk) {
                swap.push(entry.filename);
            }
        }

        Ok(DiskFacts {
            dev_path: dev_path.to_owned(),
            kernel_name,
            major,
            minor,
            diskseq,
            is_partition,
            parent_disk,
            bus,
            port_path: None,
            size_bytes,
            mounted,
            swap,
            holders,
            system_disk,
            read_only,
        })
    }
}

/// Tells the bus from a device's sysfs path relative to the sysfs root
/// (`devices/pci0000:00/…/usb2/2-1/…/block/sdb`). USB comes first: a USB enclosure
/// may hold a disk of any kind.
fn bus_of(relative: &Path) -> &'static str {
    let path = format!("/{}", relative.display());
    if path.contains("/usb") {
        "usb"
    } else if path.starts_with("/devices/virtual/block/loop") {
        "loop"
    } else if path.contains("/virtio") {
        "virtio"
    } else if path.contains("/nvme") {
        "nvme"
    } else if path.contains("/ata") {
        "ata"
    } else if path.contains("/mmc") {
        "mmc"
    } else if path.starts_with("/devices/virtual/") {
        "virtual"
    } else if path.contains("/host") && path.contains("/target") {
        "scsi"
    } else {
        "other"
    }
}

/// A sysfs tree seen through a [`SystemView`].
struct SysfsTree<'a> {
    /// The canonical sysfs root, so that canonical device directories can be made
    /// relative to it.
    root: PathBuf,
    /// The view it came from.
    view: &'a SystemView,
}

impl<'a> SysfsTree<'a> {
    fn new(view: &'a SystemView) -> Result<Self, GuardError> {
        let root = fs::canonicalize(&view.sysfs_root).map_err(|source| GuardError::Io {
            path: view.sysfs_root.clone(),
            source,
        })?;
        Ok(SysfsTree { root, view })
    }

    fn relative(&self, dir: &Path) -> PathBuf {
        dir.strip_prefix(&self.root).unwrap_or(dir).to_owned()
    }

    /// The canonical directory of a sysfs link, `None` when the link does not exist.
    fn follow(&self, link: PathBuf) -> Result<Option<PathBuf>, GuardError> {
        match fs::canonicalize(&link) {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(GuardError::Io { path: link, source }),
        }
    }

    fn dir_of_devno(&self, major: u32, minor: u32) -> Result<Option<PathBuf>, GuardError> {
        self.follow(self.root.join(format!("dev/block/{major}:{minor}")))
    }

    fn dir_of_name(&self, name: &str) -> Result<Option<PathBuf>, GuardError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Ok(None);
        }
        self.follow(self.root.join("class/block").join(name))
    }

    /// The block device behind a mount: by device number, or by source path when the
    /// number is not a block device's (btrfs reports an anonymous `0:N`).
    fn resolve_mount(&self, entry: &MountEntry) -> Result<Option<(String, PathBuf)>, GuardError> {
        if entry.major != 0 {
            if let Some(dir) = self.dir_of_devno(entry.major, entry.minor)? {
                return Ok(Some((file_name(&dir), dir)));
            }
        }
        if entry.source.starts_with('/') {
            return self.resolve_path(&entry.source);
        }
        Ok(None)
    }

    /// The block device a path such as `/dev/sdb2` or `/dev/mapper/vg-root` names.
    /// On the live system a block device node is followed by its device number;
    /// otherwise the last component is looked up in `class/block`.
    fn resolve_path(&self, path: &str) -> Result<Option<(String, PathBuf)>, GuardError> {
        if self.view.host_paths {
            if let Ok(meta) = fs::metadata(path) {
                if meta.file_type().is_block_device() {
                    let rdev = meta.rdev();
                    if let Some(dir) =
                        self.dir_of_devno(rustix::fs::major(rdev), rustix::fs::minor(rdev))?
                    {
                        return Ok(Some((file_name(&dir), dir)));
                    }
                }
            }
        }
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(self.dir_of_name(&name)?.map(|dir| (name, dir)))
    }

    /// The kernel names of the whole disks under the device at `dir`: its disk if it
    /// is a partition, the disks under its slaves if it is stacked (dm, md), itself
    /// otherwise.
    fn whole_disks_under(&self, dir: &Path, depth: usize) -> Result<BTreeSet<String>, GuardError> {
        let mut out = BTreeSet::new();
        if depth > MAX_STACK_DEPTH {
            return Ok(out);
        }
        if dir.join("partition").exists() {
            if let Some(parent) = dir.parent() {
                out.extend(self.whole_disks_under(parent, depth + 1)?);
            }
            return Ok(out);
        }
        let slaves = list_names(&dir.join("slaves"))?;
        if slaves.is_empty() {
            out.insert(file_name(dir));
        }
        for slave in slaves {
            if let Some(slave_dir) = self.dir_of_name(&slave)? {
                out.extend(self.whole_disks_under(&slave_dir, depth + 1)?);
            }
        }
        Ok(out)
    }
}

/// The partitions of the disk at `dir`: subdirectories named after the disk
/// (`sdb1`, `nvme0n1p2`, `loop0p1`).
fn partitions_of(dir: &Path, disk: &str) -> Result<Vec<(String, PathBuf)>, GuardError> {
    let io_err = |source| GuardError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // file_type() does not follow symlinks: sysfs links (`device`, `bdi`) are not
        // partitions even when they point at directories.
        if name.starts_with(disk) && entry.file_type().map_err(io_err)?.is_dir() {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The entry names of a sysfs directory such as `holders/`, sorted; none when it
/// does not exist.
fn list_names(dir: &Path) -> Result<Vec<String>, GuardError> {
    let io_err = |source| GuardError::Io {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(
            entry
                .map_err(io_err)?
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    Ok(names)
}

fn read_number(path: &Path) -> Result<u64, GuardError> {
    let text = fs::read_to_string(path).map_err(|source| GuardError::Io {
        path: path.to_owned(),
        source,
    })?;
    text.trim().parse().map_err(|_| GuardError::Malformed {
        what: path.display().to_string(),
        detail: format!("{:?} is not a number", text.trim()),
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One line of `/proc/self/mountinfo`, the parts the guard needs.
#[derive(Debug)]
struct MountEntry {
    major: u32,
    minor: u32,
    mount_point: String,
    source: String,
}

/// Parses `mountinfo`. A line that cannot be understood is an error, not skipped: a
/// mount the guard overlooks could be the one that matters.
fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>, GuardError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |detail: &str| GuardError::Malformed {
            what: format!("mountinfo line {}", index + 1),
            detail: detail.to_owned(),
        };
        let fields: Vec<&str> = line.split(' ').collect();
        let (major, minor) = fields
            .get(2)
            .and_then(|f| f.split_once(':'))
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| malformed("no major:minor in the third field"))?;
        let mount_point = fields
            .get(4)
            .map(|f| unescape(f))
            .ok_or_else(|| malformed("no mount point"))?;
        // Optional fields end with a lone "-", then file system type and source.
        let dash = fields
            .iter()
            .skip(6)
            .position(|f| *f == "-")
            .map(|p| p + 6)
            .ok_or_else(|| malformed("no \"-\" separator"))?;
        let source = fields
            .get(dash + 2)
            .map(|f| unescape(f))
            .ok_or_else(|| malformed("no mount source"))?;
        out.push(MountEntry {
            major,
            minor,
            mount_point,
            source,
        });
    }
    Ok(out)
}

/// One line of `/proc/swaps`.
#[derive(Debug)]
struct SwapEntry {
    filename: String,
    /// `partition` for a block device, `file` for a swap file.
    kind: String,
}

fn parse_swaps(text: &str) -> Result<Vec<SwapEntry>, GuardError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() || (index == 0 && line.starts_with("Filename")) {
            continue;
        }
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some(filename), Some(kind)) => out.push(SwapEntry {
                filename: unescape(filename),
                kind: kind.to_owned(),
            }),
            _ => {
                return Err(GuardError::Malformed {
                    what: format!("swaps line {}", index + 1),
                    detail: "expected a file name and a type".to_owned(),
                })
            }
        }
    }
    Ok(out)
}

/// Undoes the kernel's octal escapes in proc files (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    // ---- rules, on hand-made facts ----

    fn healthy() -> DiskFacts {
        DiskFacts {
            dev_path: PathBuf::from("/dev/sdb"),
            kernel_name: "sdb".to_owned(),
            major: 8,
            minor: 16,
            diskseq: Some(9),
            is_partition: false,
            parent_disk: None,
            bus: Some("usb".to_owned()),
            port_path: Some("pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0".to_owned()),
            size_bytes: 16_000_000_000,
            mounted: vec![],
            swap: vec![],
            holders: vec![],
            system_disk: None,
            read_only: false,
        }
    }

    fn policy() -> GuardPolicy {
        GuardPolicy {
            mapped_ports: BTreeSet::from([healthy().port_path.unwrap()]),
            ..GuardPolicy::default()
        }
    }

    fn armed(image_size: u64) -> GuardRequest {
        GuardRequest {
            image_size,
            armed_run: true,
            explicit_operator_request: false,
        }
    }

    fn refused(facts: &DiskFacts, policy: &GuardPolicy, request: &GuardRequest) -> Refusal {
        evaluate(facts, policy, request).expect_err("should be refused")
    }

    #[test]
    fn a_healthy_usb_disk_in_a_mapped_port_is_accepted_under_an_armed_run() {
        let accepted = evaluate(&healthy(), &policy(), &armed(1_000_000)).unwrap();
        assert_eq!(accepted.authorized_by, Authorization::ArmedRun);
    }

    #[test]
    fn an_explicit_operator_request_authorizes_without_an_armed_run() {
        let request = GuardRequest {
            image_size: 1,
            armed_run: false,
            explicit_operator_request: true,
        };
        let accepted = evaluate(&healthy(), &policy(), &request).unwrap();
        assert_eq!(accepted.authorized_by, Authorization::Operator);
    }

    #[test]
    fn default_policy_allows_only_usb_mapped_ports_and_256_gb() {
        let p = GuardPolicy::default();
        assert_eq!(p.allowed_buses, BTreeSet::from(["usb".to_owned()]));
        assert_eq!(p.max_size_bytes, 256_000_000_000);
        assert!(!p.allow_unmapped_ports);
        assert!(p.mapped_ports.is_empty());
    }

    #[test]
    fn a_partition_is_refused() {
        let facts = DiskFacts {
            kernel_name: "sdb1".to_owned(),
            is_partition: true,
            parent_disk: Some("sdb".to_owned()),
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r,
            Refusal::NotWholeDisk {
                device: "sdb1".to_owned(),
                disk: Some("sdb".to_owned())
            }
        );
        assert_eq!(
            r.to_string(),
            "sdb1 is a partition of sdb, not a whole disk"
        );
    }

    #[test]
    fn a_disk_on_a_bus_that_is_not_allowed_is_refused() {
        for bus in ["ata", "nvme", "virtio", "scsi", "other"] {
            let facts = DiskFacts {
                bus: Some(bus.to_owned()),
                ..healthy()
            };
            assert_eq!(
                refused(&facts, &policy(), &armed(1)),
                Refusal::BusNotAllowed {
                    bus: bus.to_owned()
                }
            );
        }
    }

    #[test]
    fn an_unknown_bus_is_refused_even_if_the_policy_names_unknown() {
        let facts = DiskFacts {
            bus: None,
            ..healthy()
        };
        let mut p = policy();
        p.allowed_buses.insert("unknown".to_owned());
        assert_eq!(
            refused(&facts, &p, &armed(1)),
            Refusal::BusNotAllowed {
                bus: "unknown".to_owned()
            }
        );
    }

    #[test]
    fn a_loop_device_is_allowed_only_when_the_policy_names_loop() {
        let facts = DiskFacts {
            bus: Some("loop".to_owned()),
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r.to_string(),
            "the device is on the loop bus, which the configuration does not allow"
        );
        let mut p = policy();
        p.allowed_buses.insert("loop".to_owned());
        assert!(evaluate(&facts, &p, &armed(1)).is_ok());
    }

    #[test]
    fn a_refusal_travels_as_its_code_and_its_sentence() {
        let r = Refusal::TooLarge {
            size: 512_000_000_000,
            max: 256_000_000_000,
        };
        let record = r.to_record();
        assert_eq!(record.code, RefusalCode::TooLarge);
        assert_eq!(record.code.as_str(), r.code());
        assert_eq!(record.message, r.to_string());
        // Failing to inspect is a refusal too: the guard fails closed.
        let error = GuardError::NotBlockDevice {
            path: PathBuf::from("/dev/null"),
        };
        let r = Refusal::from(error);
        assert_eq!(r.kind(), RefusalCode::CannotInspect);
        assert_eq!(
            r.to_string(),
            "cannot inspect the device: /dev/null is not a block device"
        );
        let r = Refusal::from(GuardError::Refused(Refusal::NotArmed));
        assert_eq!(r, Refusal::NotArmed);
    }

    #[test]
    fn an_unmapped_port_is_refused_unless_unmapped_ports_are_allowed() {
        let facts = DiskFacts {
            port_path: Some("pci-0000:00:14.0-usb-0:9:1.0".to_owned()),
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r.to_string(),
            "port pci-0000:00:14.0-usb-0:9:1.0 is not mapped in the configuration"
        );
        let p = GuardPolicy {
            allow_unmapped_ports: true,
            ..policy()
        };
        assert!(evaluate(&facts, &p, &armed(1)).is_ok());
    }

    #[test]
    fn an_unknown_port_is_refused_unless_unmapped_ports_are_allowed() {
        let facts = DiskFacts {
            port_path: None,
            ..healthy()
        };
        assert_eq!(
            refused(&facts, &policy(), &armed(1)),
            Refusal::PortNotMapped { port: None }
        );
        let p = GuardPolicy {
            allow_unmapped_ports: true,
            ..policy()
        };
        assert!(evaluate(&facts, &p, &armed(1)).is_ok());
    }

    #[test]
    fn a_disk_with_a_mounted_partition_is_refused() {
        let facts = DiskFacts {
            mounted: vec![MountUse {
                device: "sdb1".to_owned(),
                mount_point: "/media/stick".to_owned(),
            }],
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(r.code(), "mounted");
        assert_eq!(r.to_string(), "sdb1 is mounted at /media/stick");
    }

    #[test]
    fn a_disk_used_as_swap_is_refused() {
        let facts = DiskFacts {
            swap: vec!["/dev/sdb2".to_owned()],
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(r.to_string(), "/dev/sdb2 is in use as swap");
    }

    #[test]
    fn a_disk_with_holders_is_refused() {
        let facts = DiskFacts {
            holders: vec!["dm-0 on sdb1".to_owned(), "md127 on sdb2".to_owned()],
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r.to_string(),
            "the device is held by dm-0 on sdb1, md127 on sdb2"
        );
    }

    #[test]
    fn a_system_disk_is_refused() {
        let facts = DiskFacts {
            system_disk: Some("holds / (mounted from dm-0)".to_owned()),
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r.to_string(),
            "this is a system disk: it holds / (mounted from dm-0)"
        );
    }

    #[test]
    fn a_disk_over_the_maximum_is_refused_and_one_at_the_maximum_is_not() {
        let facts = DiskFacts {
            size_bytes: 256_000_000_001,
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r,
            Refusal::TooLarge {
                size: 256_000_000_001,
                max: DEFAULT_MAX_SIZE_BYTES
            }
        );
        assert_eq!(
            r.to_string(),
            "the device is too large: 256.0 GB (256000000001 bytes) is more than the \
             maximum of 256.0 GB (256000000000 bytes)"
        );
        let at_max = DiskFacts {
            size_bytes: DEFAULT_MAX_SIZE_BYTES,
            ..healthy()
        };
        assert!(evaluate(&at_max, &policy(), &armed(1)).is_ok());
    }

    #[test]
    fn a_disk_smaller_than_the_image_is_refused_and_one_of_its_size_is_not() {
        let facts = DiskFacts {
            size_bytes: 999,
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1_000));
        assert_eq!(
            r.to_string(),
            "the device is too small: 999 bytes is less than the image's 1.0 kB (1000 bytes)"
        );
        assert!(evaluate(&facts, &policy(), &armed(999)).is_ok());
    }

    #[test]
    fn a_disk_of_size_zero_is_refused_as_holding_no_medium_not_as_too_small() {
        let facts = DiskFacts {
            size_bytes: 0,
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1_000));
        assert_eq!(r, Refusal::NoMedium);
        assert_eq!(r.code(), "no_medium");
        assert_eq!(
            r.to_string(),
            "the device holds no medium (it reports a size of 0 bytes)"
        );
        // Also with an empty image: no medium is never a place to write.
        assert_eq!(refused(&facts, &policy(), &armed(0)), Refusal::NoMedium);
    }

    #[test]
    fn without_an_armed_run_or_an_explicit_request_nothing_is_written() {
        let request = GuardRequest {
            image_size: 1,
            armed_run: false,
            explicit_operator_request: false,
        };
        let r = refused(&healthy(), &policy(), &request);
        assert_eq!(r, Refusal::NotArmed);
        assert_eq!(
            r.to_string(),
            "no run is armed and the operator did not ask for this device"
        );
    }

    #[test]
    fn evaluate_reports_the_first_failing_rule_and_refusals_lists_all_in_order() {
        let facts = DiskFacts {
            is_partition: true,
            bus: Some("ata".to_owned()),
            port_path: None,
            mounted: vec![MountUse {
                device: "sdb".to_owned(),
                mount_point: "/".to_owned(),
            }],
            swap: vec!["/dev/sdb".to_owned()],
            holders: vec!["dm-0 on sdb".to_owned()],
            system_disk: Some("holds /".to_owned()),
            size_bytes: 300_000_000_000,
            ..healthy()
        };
        let request = GuardRequest {
            image_size: 400_000_000_000,
            armed_run: false,
            explicit_operator_request: false,
        };
        let codes: Vec<_> = refusals(&facts, &policy(), &request)
            .iter()
            .map(Refusal::code)
            .collect();
        assert_eq!(
            codes,
            [
                "not_whole_disk",
                "bus_not_allowed",
                "port_not_mapped",
                "mounted",
                "swap",
                "held",
                "system_disk",
                "too_large",
                "too_small",
                "not_armed"
            ]
        );
        assert_eq!(
            refused(&facts, &policy(), &request).code(),
            "not_whole_disk"
        );
    }

    #[test]
    fn every_refusal_reads_as_a_lowercase_sentence_without_a_final_period() {
        let all = [
            Refusal::NotWholeDisk {
                device: "sdb1".into(),
                disk: None,
            },
            Refusal::BusNotAllowed { bus: "ata".into() },
            Refusal::PortNotMapped { port: None },
            Refusal::PortNotMapped {
                port: Some("x".into()),
            },
            Refusal::Mounted {
                what: "sdb1".into(),
                mount_point: "/mnt".into(),
            },
            Refusal::Swap {
                what: "/dev/sdb2".into(),
            },
            Refusal::Held {
                holders: vec!["dm-0 on sdb".into()],
            },
            Refusal::SystemDisk {
                why: "holds /".into(),
            },
            Refusal::TooLarge { size: 2, max: 1 },
            Refusal::TooSmall { size: 1, needed: 2 },
            Refusal::NotArmed,
            Refusal::Busy {
                detail: "device or resource busy".into(),
            },
            Refusal::IdentityChanged {
                expected: healthy().identity(),
                found: DiskIdentity {
                    diskseq: None,
                    ..healthy().identity()
                },
            },
        ];
        for r in all {
            let text = r.to_string();
            let first = text.chars().next().unwrap();
            assert!(!first.is_uppercase(), "{text:?}");
            assert!(!text.ends_with('.'), "{text:?}");
        }
    }

    #[test]
    fn a_busy_target_met_by_the_engine_is_refused_as_the_guard_refuses_it() {
        let detail = "device or resource busy";
        assert_eq!(
            GuardRefusal::from(Refusal::Busy {
                detail: detail.into()
            }),
            GuardRefusal::busy(detail)
        );
    }

    #[test]
    fn an_identity_change_names_both_disks_and_has_its_own_code() {
        let expected = healthy().identity();
        let found = DiskIdentity {
            diskseq: Some(10),
            ..expected
        };
        assert_ne!(
            expected, found,
            "a new disk sequence number is another disk"
        );
        let r = Refusal::IdentityChanged { expected, found };
        assert_eq!(r.code(), "identity_changed");
        assert_eq!(
            r.to_string(),
            "the device is not the one that was checked: its name now leads to device 8:16 \
             (disk sequence 10), not device 8:16 (disk sequence 9) (another disk took its name)"
        );
    }

    #[test]
    fn the_disk_sequence_number_is_read_from_sysfs_when_there_is_one() {
        let sys = FakeSys::new();
        let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
        assert_eq!(sys.facts((8, 16), "", "").diskseq, None);
        fs::write(disk.join("diskseq"), "42\n").unwrap();
        let facts = sys.facts((8, 16), "", "");
        assert_eq!(
            facts.identity(),
            DiskIdentity {
                major: 8,
                minor: 16,
                diskseq: Some(42)
            }
        );
    }

    #[test]
    fn a_refusal_converts_into_a_guard_error_with_the_same_text() {
        let e = GuardError::from(Refusal::NotArmed);
        assert_eq!(e.to_string(), Refusal::NotArmed.to_string());
    }

    // ---- fact gathering, on fake sysfs trees ----

    const USB_PARENT: &str =
        "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block";
    const SATA_PARENT: &str =
        "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block";

    /// A sysfs tree in a temporary directory: device directories under `devices/`,
    /// linked from `dev/block/MAJ:MIN` and `class/block/NAME` as in the real one.
    struct FakeSys {
        dir: tempfile::TempDir,
    }

    impl FakeSys {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("dev/block")).unwrap();
            fs::create_dir_all(dir.path().join("class/block")).unwrap();
            FakeSys { dir }
        }

        fn node(&self, dir: &Path, name: &str, devno: (u32, u32), sectors: u64) {
            fs::create_dir_all(dir.join("holders")).unwrap();
            fs::write(dir.join("dev"), format!("{}:{}\n", devno.0, devno.1)).unwrap();
            fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(dir.join("ro"), "0\n").unwrap();
            let root = self.dir.path();
            symlink(dir, root.join(format!("dev/block/{}:{}", devno.0, devno.1))).unwrap();
            symlink(dir, root.join("class/block").join(name)).unwrap();
        }

        /// A whole disk under `parent` (relative to the sysfs root).
        fn disk(&self, parent: &str, name: &str, devno: (u32, u32), sectors: u64) -> PathBuf {
            let dir = self.dir.path().join(parent).join(name);
            fs::create_dir_all(dir.join("slaves")).unwrap();
            // Links that real disks carry and that must not pass for partitions.
            symlink(self.dir.path(), dir.join("subsystem")).unwrap();
            fs::create_dir_all(dir.join("queue")).unwrap();
            self.node(&dir, name, devno, sectors);
            dir
        }

        fn partition(&self, disk: &Path, name: &str, devno: (u32, u32), sectors: u64) -> PathBuf {
            let dir = disk.join(name);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("partition"), "1\n").unwrap();
            self.node(&dir, name, devno, sectors);
            dir
        }

        /// Stacks `upper` (a dm or md disk) on `lower`.
        fn stack(&self, upper: &Path, lower: &Path) {
            let lower_name = file_name(lower);
            let upper_name = file_name(upper);
            symlink(lower, upper.join("slaves").join(&lower_name)).unwrap();
            symlink(upper, lower.join("holders").join(&upper_name)).unwrap();
        }

        fn facts(&self, devno: (u32, u32), mountinfo: &str, swaps: &str) -> DiskFacts {
            let view = SystemView::fake(self.dir.path(), mountinfo, swaps);
            DiskFacts::from_view(Path::new("/dev/x"), devno.0, devno.1, &view).unwrap()
        }
    }

    fn mountinfo(lines: &[(&str, &str, &str)]) -> String {
        lines
            .iter()
            .enumerate()
            .map(|(i, (devno, mount_point, source))| {
                format!(
                    "{} 1 {devno} / {mount_point} rw,relatime shared:1 - fs {source} rw\n",
                    20 + i
                )
            })
            .collect()
    }

    const NO_SWAP: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";

    #[test]
    fn a_usb_disk_is_seen_as_a_whole_usb_disk_with_its_size() {
        let sys = FakeSys::new();
        let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 31_250_000);
        sys.partition(&disk, "sdb1", (8, 17), 1000);
        let facts = sys.facts((8, 16), "", NO_SWAP);
        assert_eq!(facts.kernel_name, "sdb");
        assert_eq!((facts.major, facts.minor), (8, 16));
        assert!(!facts.is_partition);
        assert_eq!(facts.bus.as_deref(), Some("usb"));
        assert_eq!(facts.size_bytes, 16_000_000_000);
        assert_eq!(facts.port_path, None);
        assert!(facts.mounted.is_empty() && facts.swap.is_empty() && facts.holders.is_empty());
        assert_eq!(facts.system_disk, None);
        assert!(!facts.read_only);
        let p = GuardPolicy {
            allow_unmapped_ports: true,
            ..GuardPolicy::default()
        };
        assert!(evaluate(&facts, &p, &armed(1_000_000)).is_ok());
    }

    #[test]
    fn buses_are_told_from_the_sysfs_path() {
        let sys = FakeSys::new();
        sys.disk(SATA_PARENT, "sda", (8, 0), 100);
        sys.disk("devices/virtual/block", "loop3", (7, 3), 100);
        sys.disk(
            "devices/pci0000:00/0000:00:02.0/virtio1/block",
            "vda",
            (254, 0),
            100,
        );
        sys.disk(
            "devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0",
            "nvme0n1",
            (259, 0),
            100,
        );
        sys.disk("devices/virtual/block", "dm-0", (253, 0), 100);
        sys.disk(
            "devices/platform/soc/mmc_host/mmc0/mmc0:0001/block",
            "mmcblk0",
            (179, 0),
            100,
        );
        sys.disk(
            "devices/pci0000:00/0000:00:10.0/host2/target2:0:0/2:0:0:0/block",
            "sdc",
            (8, 32),
            100,
        );
        for (devno, bus) in [
            ((8, 0), "ata"),
            ((7, 3), "loop"),
            ((254, 0), "virtio"),
            ((259, 0), "nvme"),
            ((253, 0), "virtual"),
            ((179, 0), "mmc"),
            ((8, 32), "scsi"),
        ] {
            assert_eq!(
                sys.facts(devno, "", "").bus.as_deref(),
                Some(bus),
                "{devno:?}"
            );
        }
    }

    #[test]
    fn a_partition_is_seen_as_one_and_refused() {
        let sys = FakeSys::new();
        let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
        sys.partition(&disk, "sdb1", (8, 17), 900);
        let facts = sys.facts((8, 17), "", "");
        assert!(facts.is_partition);
        assert_eq!(facts.parent_disk.as_deref(), Some("sdb"));
        assert_eq!(facts.bus.as_deref(), Some("usb"));
        assert_eq!(
            refused(&facts, &GuardPolicy::default(), &armed(1)),
            Refusal::NotWholeDisk {
                device: "sdb1".to_owned(),
                disk: Some("sdb".to_owned())
            }
        );
    }

    #[test]
    fn a_read_only_disk_is_reported() {
        let sys = FakeSys::new();
        let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
        fs::write(disk.join("ro"), "1\n").unwrap();
        assert!(sys.facts((8, 16), "", "").read_only);
    }

    #[test]
    fn a_mounted_partition_of_the_disk_is_found_and_refused() {
        let sys = FakeSys::new();
        let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
        sys.partition(&disk, "sdb1", (8, 17), 400);
        sys.partition(&disk, "sdb2", (8, 18), 400);
        let mi = mountinfo(&[
            ("254:0", "/", "/dev/vda"),
            ("8:18", "/media/my\\040stick", "/dev/sdb2"),
        ]);
        let facts = sys.facts((8, 16), &mi, NO_SWAP);
        assert_eq!(
            facts.mounted,
            [MountUse {
                device: "sdb2".to_owned(),
                mount_point: "/media/my stick".to_owned()
            }]
        );
        let p = GuardPolicy {
            allow_unmapped_ports: true,
            ..GuardPolicy::default()
        };
        assert_eq!(
            refused(&facts, &p, &armed(1)).to_string(),
            "sdb2 is mounted at /media/my stick"
        );
    }

    #[test]
    fn a_mount_with_an_anonymous_device_number_is_matched_by_its_source() {
        // btrfs shows 0:N in mountinfo; the source names the device.
        let sys = FakeSys::new();
        let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
        sys.partition(&disk, "sdb1", (8, 17), 400);
        let mi = mountinfo(&[("0:33", "/data", "/dev/sdb1"), ("0:21", "/proc", "proc")]);
        let facts = sys.facts((8, 16), &mi, "");
        assert_eq!(facts.mounted.len(), 1);
        assert_eq!(facts.mounted[0].device, "sdb1");
        assert_eq!(
            facts.system_disk.as_deref(),
            Some("holds /data (mounted from sdb1)")
        );
    }

    #[test]
    fn a_swap_partition_of_the_disk_is_found_and_refused() {
        let sys = FakeSys::new();
        let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
        sys.partition(&disk, "sdb2", (8, 18), 400);
        let swaps = format!(
            "{NO_SWAP}/swapfile                               file\t\t1048572\t\t0\t\t-2\n\
             /dev/sdb2                               partition\t1048572\t\t0\t\t-3\n"
        );
        let facts = sys.facts((8, 16), "", &swaps);
        assert_eq!(facts.swap, ["/dev/sdb2"]);
        let p = GuardPolicy {
            allow_unmapped_ports: true,
            ..GuardPolicy::default()
        };
        assert_eq!(refused(&facts, &p, &armed(1)).code(), "swap");
    }

    #[test]
    fn swap_on_a_stack_over_the_disk_counts_as_swap_on_the_disk() {
        let sys = FakeSys::new();
        let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
        let part = sys.partition(&disk, "sdb1", (8, 17), 400);
        let dm = sys.disk("devices/virtual/block", "dm-1", (253, 1), 400);
        sys.stack(&dm, &part);
        let swaps = format!("{NO_SWAP}/dev/dm-1 partition 1048572 0 -2\n");
        let facts = sys.facts((8, 16), "", &swaps);
        assert_eq!(facts.swap, ["/dev/dm-1"]);
        assert_eq!(facts.holders, ["dm-1 on sdb1"]);
    }

    #[test]
    fn holders_of_the_disk_or_its_partitions_are_found_and_refused() {
        let sys = FakeSys::new();
        let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
        let part = sys.partition(&disk, "sdb1", (8, 17), 400);
        let md = sys.disk("devices/virtual/block", "md127", (9, 127), 400);
        sys.stack(&md, &disk);
        let dm = sys.disk("devices/virtual/block", "dm-0", (253, 0), 400);
        sys.stack(&dm, &part);
        let facts = sys.facts((8, 16), "", "");
        assert_eq!(facts.holders, ["md127 on sdb", "dm-0 on sdb1"]);
        let p = GuardPolicy {
            allow_unmapped_ports: true,
            ..GuardPolicy::default()
        };
        assert_eq!(
            refused(&facts, &p, &armed(1)).to_string(),
            "the device is held by md127 on sdb, dm-0 on sdb1"
        );
    }

    #[test]
    fn a_disk_under_the_root_filesystem_through_lvm_is_a_system_disk() {
        // / on dm-0 (LVM) on sda2: sda is not mounted itself, but it is the system disk.
        let sys = FakeSys::new();
        let sda = sys.disk(USB_PARENT, "sda", (8, 0), 1000);
        let sda1 = sys.partition(&sda, "sda1", (8, 1), 100);
        let sda2 = sys.partition(&sda, "sda2", (8, 2), 800);
        let dm = sys.disk("devices/virtual/block", "dm-0", (253, 0), 800);
        sys.stack(&dm, &sda2);
        let _ = sda1;
        let mi = mountinfo(&[
            ("8:1", "/boot", "/dev/sda1"),
            ("253:0", "/", "/dev/mapper/vg-root"),
        ]);
        let facts = sys.facts((8, 0), &mi, "");
        assert_eq!(
            facts.system_disk.as_deref(),
            Some("holds / (mounted from dm-0)")
        );
        // Even with nothing else against it, rule 4 refuses it.
        let bare = DiskFacts {
            mounted: vec![],
            holders: vec![],
            ..facts
        };
        let p = GuardPolicy {
            allow_unmapped_ports: true,
            ..GuardPolicy::default()
        };
        assert_eq!(
            refused(&bare, &p, &armed(1)).to_string(),
            "this is a system disk: it holds / (mounted from dm-0)"
        );
    }

    #[test]
    fn a_disk_under_an_md_array_mounted_anywhere_is_a_system_disk() {
        let sys = FakeSys::new();
        let sdc = sys.disk(SATA_PARENT, "sdc", (8, 32), 1000);
        let sdd = sys.disk(USB_PARENT, "sdd", (8, 48), 1000);
        let md = sys.disk("devices/virtual/block", "md0", (9, 0), 1000);
        sys.stack(&md, &sdc);
        sys.stack(&md, &sdd);
        let mi = mountinfo(&[("9:0", "/srv", "/dev/md0")]);
        for devno in [(8, 32), (8, 48)] {
            let facts = sys.facts(devno, &mi, "");
            assert_eq!(
                facts.system_disk.as_deref(),
                Some("holds /srv (mounted from md0)")
            );
            assert!(facts.mounted.is_empty());
        }
    }

    #[test]
    fn an_unrelated_mount_does_not_touch_the_disk() {
        let sys = FakeSys::new();
        sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
        sys.disk(
            "devices/pci0000:00/0000:00:02.0/virtio1/block",
            "vda",
            (254, 0),
            1000,
        );
        let mi = mountinfo(&[("254:0", "/", "/dev/vda"), ("0:21", "/proc", "proc")]);
        let facts = sys.facts((8, 16), &mi, NO_SWAP);
        assert!(facts.mounted.is_empty());
        assert_eq!(facts.system_disk, None);
        let root = sys.facts((254, 0), &mi, NO_SWAP);
        assert_eq!(
            root.system_disk.as_deref(),
            Some("holds / (mounted from vda)")
        );
    }

    #[test]
    fn a_device_missing_from_sysfs_is_an_error() {
        let sys = FakeSys::new();
        let view = SystemView::fake(sys.dir.path(), "", "");
        let err = DiskFacts::from_view(Path::new("/dev/x"), 8, 99, &view).unwrap_err();
        assert!(matches!(
            err,
            GuardError::NotInSysfs {
                major: 8,
                minor: 99,
                ..
            }
        ));
    }

    #[test]
    fn a_malformed_mountinfo_is_an_error_not_an_empty_list() {
        let sys = FakeSys::new();
        sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
        let view = SystemView::fake(sys.dir.path(), "garbage line\n", "");
        let err = DiskFacts::from_view(Path::new("/dev/x"), 8, 16, &view).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot understand mountinfo line 1: no major:minor in the third field"
        );
    }

    #[test]
    fn a_regular_file_is_not_a_block_device() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let view = SystemView::fake("/nonexistent", "", "");
        let err = DiskFacts::inspect_with(file.path(), &view).unwrap_err();
        assert!(matches!(err, GuardError::NotBlockDevice { .. }), "{err}");
    }

    #[test]
    fn proc_escapes_are_undone() {
        assert_eq!(unescape("/mnt/a\\040b\\134c"), "/mnt/a b\\c");
        assert_eq!(unescape("/plain\\"), "/plain\\");
    }
}
