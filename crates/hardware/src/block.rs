//! Block devices and regular files as targets.
//!
//! A block device target is pinned to one disk when it is made: its
//! [`DiskIdentity`] (device number and `diskseq`), taken from the hotplug event
//! or read from the name at that moment. Opening it for writing opens first,
//! exclusively (`O_EXCL`, which the kernel refuses while the device or a
//! partition of it is mounted or claimed) and with `O_DIRECT`; then reads the
//! identity of what was opened from the descriptor and refuses it unless it is
//! the pinned disk ([`Refusal::IdentityChanged`]); then gathers the guard's facts
//! for the descriptor's device ([`DiskFacts::of_opened`]) and asks the
//! [`GuardCheck`] given at construction. Only then is anything written: the name
//! is never judged in place of the device. Opening writes nothing (closing a
//! device opened for writing makes udev re-read it, a change event that changes
//! nothing). Reads for verification come through a fresh `O_DIRECT` handle,
//! which must lead to the pinned disk too (else the disk is gone: removed). For a
//! loop device the medium is its backing file, so its page cache is dropped
//! before reading back.
//!
//! A loop device over a block device writes that device, which its own
//! exclusive open does not claim: a mount of the device below, or another
//! process's exclusive open of it, would not stop the write. So once the
//! guard has accepted the opened loop device, every block device below it
//! (the guard's `LoopBacking::below`, every level) is opened exclusively too
//! and held as long as the writer lives; one that is busy refuses the write
//! as [`Refusal::Busy`] of the device below, named, and nothing is written.
//!
//! A regular file target is created if missing and grown to the image size. It is
//! written with `O_DIRECT` where the file system supports it; otherwise (tmpfs)
//! with buffered I/O, and its page cache is dropped after the flush so the
//! read-back comes from the file system's storage.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flashrack_guard::{DiskFacts, DiskIdentity, GuardCheck, Refusal};
use flashrack_target::{
    AlignedBuf, Target, TargetError, TargetGeometry, TargetReader, TargetWriter,
};
use rustix::fs::{Advice, OFlags};

/// A hook run at the start of every open for writing of a block device target,
/// before the device is opened; see [`PathTarget::before_open`].
pub type BeforeOpen = Arc<dyn Fn(&Path) + Send + Sync>;

/// A block device or a regular file given by path.
pub struct PathTarget {
    path: PathBuf,
    kind: PathKind,
}

enum PathKind {
    /// A block device; `guard` runs before every open for writing.
    Block {
        guard: GuardCheck,
        /// The disk this target is for, or why it could not be identified when
        /// the target was made (then nothing is ever opened for writing).
        pin: Result<DiskIdentity, String>,
        /// Runs before every open for writing (tests).
        before_open: Option<BeforeOpen>,
    },
    /// A regular file that is grown to at least `min_size` bytes.
    File { min_size: u64 },
}

impl PathTarget {
    /// A block device target, pinned to the disk `path` leads to now. Every open
    /// for writing checks that it still leads there, then asks `guard`.
    pub fn block_device(path: impl Into<PathBuf>, guard: GuardCheck) -> Self {
        let path = path.into();
        let pin = DiskIdentity::of_path(&path).map_err(|e| e.to_string());
        Self {
            path,
            kind: PathKind::Block {
                guard,
                pin,
                before_open: None,
            },
        }
    }

    /// A block device target pinned to `pin` (the identity the hotplug event
    /// reported): every open for writing refuses any other disk behind `path`,
    /// then asks `guard`.
    pub fn pinned_block_device(
        path: impl Into<PathBuf>,
        pin: DiskIdentity,
        guard: GuardCheck,
    ) -> Self {
        Self {
            path: path.into(),
            kind: PathKind::Block {
                guard,
                pin: Ok(pin),
                before_open: None,
            },
        }
    }

    /// Runs `hook` at the start of every open for writing, before the device is
    /// opened. For tests: a hook that hands the name to another disk (detaches a
    /// loop device and attaches another file) shows that what is written is the
    /// disk that was checked or nothing. No effect on a file target.
    pub fn before_open(mut self, hook: BeforeOpen) -> Self {
        if let PathKind::Block { before_open, .. } = &mut self.kind {
            *before_open = Some(hook);
        }
        self
    }

    /// A regular file target, created if missing and grown to `min_size` bytes
    /// (the image size) when opened for writing.
    pub fn file(path: impl Into<PathBuf>, min_size: u64) -> Self {
        Self {
            path: path.into(),
            kind: PathKind::File { min_size },
        }
    }

    /// Whether `path` names a block device (following symlinks).
    pub fn is_block_device(path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
    }

    /// The path this target writes to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The disk a block device target is pinned to (`None` for a file, or when
    /// the device could not be identified when the target was made).
    pub fn pinned(&self) -> Option<DiskIdentity> {
        match &self.kind {
            PathKind::Block { pin, .. } => pin.as_ref().ok().copied(),
            PathKind::File { .. } => None,
        }
    }

    /// Opens the block device for writing: exclusively and with direct I/O, then
    /// refuses it unless the descriptor leads to `pin` and `guard` accepts the
    /// descriptor's device (see the module docs).
    fn open_block_writer(
        &self,
        guard: &GuardCheck,
        pin: &Result<DiskIdentity, String>,
        before_open: Option<&BeforeOpen>,
    ) -> Result<Box<dyn TargetWriter>, TargetError> {
        if let Some(hook) = before_open {
            hook(&self.path);
        }
        let pin = *pin.as_ref().map_err(|why| {
            TargetError::Refused(
                Refusal::CannotInspect {
                    detail: format!("the device could not be identified when it was named: {why}"),
                }
                .into(),
            )
        })?;
        // Judged before the open as well as after it: a disk the guard refuses
        // (the root disk, a mounted one) is never even opened for writing, and
        // its refusal is what the operator reads, not whatever the kernel says
        // to an open it would refuse anyway (EPERM for a mounted disk on
        // kernels that protect them, EBUSY for an exclusive holder).
        self.judge_by_name(guard, pin)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((OFlags::DIRECT | OFlags::EXCL).bits() as i32)
            .open(&self.path)
            .map_err(|e| {
                let read_only = is_permission_error(&e)
                    && std::fs::metadata(&self.path).is_ok_and(|meta| is_read_only(meta.rdev()));
                match open_error(&self.path, e, true) {
                    _ if read_only => TargetError::ReadOnly,
                    TargetError::Busy(detail) => self.explain_busy(guard, pin, detail),
                    other => other,
                }
            })?;
        let facts = DiskFacts::of_opened(&file, &self.path).map_err(guard_failure)?;
        if facts.identity() != pin {
            return Err(TargetError::Refused(
                Refusal::IdentityChanged {
                    expected: pin,
                    found: facts.identity(),
                }
                .into(),
            ));
        }
        guard(&facts).map_err(|why| TargetError::Refused(why.into()))?;
        // What a loop device over a block device really writes is held for
        // the write: nothing mounts or claims it meanwhile.
        let mut claims = Vec::new();
        claim_below(&facts, &mut claims).map_err(|failure| match failure {
            ClaimFailure::Refused(why) => TargetError::Refused(why.into()),
            ClaimFailure::Station(why) => TargetError::Station(why),
        })?;
        // The kernel opens a read-only device for writing and refuses only the
        // writes (`EPERM`): ask the opened device itself, so that not a byte
        // (not even the capacity probe's) is tried.
        let rdev = file_rdev(&file, &self.path)?;
        if is_read_only(rdev) {
            return Err(TargetError::ReadOnly);
        }
        let geometry = block_geometry(&self.path, rdev)?;
        // The file the loop device writes, by the kernel's own record of it
        // (the path alone may name another file: see `WriteBehind::of`).
        let backing = facts
            .loop_backings
            .iter()
            .find(|b| b.loop_device == facts.kernel_name && b.below.is_none())
            .filter(|b| b.file.from_loop_status)
            .and_then(|b| b.file.file);
        Ok(Box::new(PathWriter {
            behind: backing.and_then(|file| WriteBehind::of(rdev, file)),
            file,
            block_size: geometry.logical_block_size as usize,
            direct: true,
            file_len: None,
            device: Some(rdev),
            _claims: claims,
        }))
    }

    /// The guard's judgment of the disk the name leads to now, before it is
    /// opened: a refusal (or another disk behind the name) stops here. Facts
    /// that cannot be gathered by name are no verdict yet: the open and the
    /// judgment of the opened descriptor decide.
    fn judge_by_name(&self, guard: &GuardCheck, pin: DiskIdentity) -> Result<(), TargetError> {
        let Ok(facts) = DiskFacts::inspect(&self.path) else {
            return Ok(());
        };
        if facts.identity() != pin {
            return Err(TargetError::Refused(
                Refusal::IdentityChanged {
                    expected: pin,
                    found: facts.identity(),
                }
                .into(),
            ));
        }
        guard(&facts).map_err(|why| TargetError::Refused(why.into()))
    }

    /// Why an exclusive open failed with `EBUSY`, as precisely as can be told
    /// without opening: the guard's refusal of the device the name leads to
    /// (mounted at …, used as swap …) when it is still the pinned disk, else the
    /// opener's `detail`. Nothing is opened for writing either way.
    fn explain_busy(&self, guard: &GuardCheck, pin: DiskIdentity, detail: String) -> TargetError {
        match DiskFacts::inspect(&self.path) {
            Ok(facts) if facts.identity() != pin => TargetError::Refused(
                Refusal::IdentityChanged {
                    expected: pin,
                    found: facts.identity(),
                }
                .into(),
            ),
            Ok(facts) => match guard(&facts) {
                Err(why) => TargetError::Refused(why.into()),
                Ok(()) => TargetError::Busy(detail),
            },
            Err(_) => TargetError::Busy(detail),
        }
    }
}

/// The device number of an open block device.
fn file_rdev(file: &File, path: &Path) -> Result<u64, TargetError> {
    Ok(file
        .metadata()
        .map_err(|e| open_error(path, e, true))?
        .rdev())
}

/// The sysfs directory of the block device with device number `rdev`.
fn sysfs_dir(rdev: u64) -> PathBuf {
    PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        rustix::fs::major(rdev),
        rustix::fs::minor(rdev)
    ))
}

fn read_sysfs_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A sysfs number that must be there: a failure to read it is the station's
/// when it is out of descriptors or memory, else the device's.
fn require_sysfs_u64(path: &Path, device: &Path, what: &str) -> Result<u64, TargetError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            TargetError::Open(format!("cannot read the {what} of {}", device.display()))
        }),
        Err(error) if flashrack_target::is_station_resource_error(&error) => {
            Err(TargetError::Station(format!(
                "reading the {what} of {}: {error}",
                device.display()
            )))
        }
        Err(_) => Err(TargetError::Open(format!(
            "cannot read the {what} of {}",
            device.display()
        ))),
    }
}

/// Whether the block device `major:minor` is a loop device (its sysfs
/// directory has `loop/`, as `LoopBacking::of` reads it).
fn is_loop_device(major: u32, minor: u32) -> bool {
    Path::new(&format!("/sys/dev/block/{major}:{minor}/loop")).is_dir()
}

/// Whether the kernel marks the block device `rdev` read-only: its sysfs `ro`
/// flag, set by a write-protect switch (the SCSI layer reads it from the
/// stick), `losetup -r` or `blockdev --setro`.
fn is_read_only(rdev: u64) -> bool {
    read_sysfs_u64(&sysfs_dir(rdev).join("ro")) == Some(1)
}

/// Whether an error is the kernel refusing a write for lack of permission
/// (`EPERM`, `EACCES`). A read-only block device answers a write with `EPERM`;
/// whether that is what happened is told by the device's `ro` flag, not by the
/// error, which other causes share (a device cgroup, a security module).
fn is_permission_error(error: &io::Error) -> bool {
    error.raw_os_error().is_some_and(|code| {
        code == rustix::io::Errno::PERM.raw_os_error()
            || code == rustix::io::Errno::ACCESS.raw_os_error()
    })
}

/// The device number of the block device at `path`.
fn path_rdev(path: &Path) -> Result<u64, TargetError> {
    let meta = std::fs::metadata(path).map_err(|e| open_error(path, e, true))?;
    if !meta.file_type().is_block_device() {
        return Err(TargetError::Open(format!(
            "{} is not a block device",
            path.display()
        )));
    }
    Ok(meta.rdev())
}

/// Capacity and logical block size of block device `rdev` (known as `path`),
/// from sysfs.
fn block_geometry(path: &Path, rdev: u64) -> Result<TargetGeometry, TargetError> {
    sysfs_geometry(&sysfs_dir(rdev), path)
}

/// Capacity and logical block size of the device `path` from its sysfs
/// directory `dir`. What the device reports is checked, never wrapped: a size
/// whose byte count overflows, or a block size that is not a power of two from
/// 512 to 64 KiB, is an error naming the device.
fn sysfs_geometry(dir: &Path, path: &Path) -> Result<TargetGeometry, TargetError> {
    let sectors = require_sysfs_u64(&dir.join("size"), path, "size")?;
    // sysfs counts 512-byte sectors whatever the logical block size.
    let capacity = sectors.checked_mul(512).ok_or_else(|| {
        TargetError::Open(format!(
            "{} reports an impossible size: {sectors} sectors of 512 bytes overflow a byte count",
            path.display()
        ))
    })?;
    // A partition has no queue directory of its own; its disk's applies.
    let reported = read_sysfs_u64(&dir.join("queue/logical_block_size"))
        .or_else(|| read_sysfs_u64(&dir.join("../queue/logical_block_size")))
        .unwrap_or(512);
    let logical_block_size = u32::try_from(reported)
        .ok()
        .filter(|b| b.is_power_of_two() && (512..=65536).contains(b))
        .ok_or_else(|| {
            TargetError::Open(format!(
                "{} reports an impossible logical block size: {reported}",
                path.display()
            ))
        })?;
    Ok(TargetGeometry {
        capacity,
        logical_block_size,
    })
}

/// Why the devices below a loop device could not be claimed.
enum ClaimFailure {
    /// The guard's refusal, naming the device below.
    Refused(Refusal),
    /// The station is out of descriptors or memory: its error, not the stick's.
    Station(String),
}

/// Claims every block device below the loop devices under `facts`
/// (`LoopBacking::below`, every level) exclusively, into `claims`; a device
/// that is busy (mounted, or held exclusively by a process the guard cannot
/// see, as in another mount namespace) or whose node is not that device is
/// refused as the guard words a refusal of a device below.
fn claim_below(facts: &DiskFacts, claims: &mut Vec<File>) -> Result<(), ClaimFailure> {
    for backing in &facts.loop_backings {
        let Some(below) = backing.below.as_deref() else {
            continue;
        };
        let wrap = |failure: ClaimFailure| match failure {
            ClaimFailure::Refused(reason) => ClaimFailure::Refused(Refusal::Below {
                device: facts.kernel_name.clone(),
                via: (backing.loop_device != facts.kernel_name)
                    .then(|| backing.loop_device.clone()),
                below: below.kernel_name.clone(),
                reason: Box::new(reason),
            }),
            station => station,
        };
        claims.push(claim(below).map_err(wrap)?);
        claim_below(below, claims).map_err(wrap)?;
    }
    Ok(())
}

/// Opens the device `facts` describe exclusively and read-only through its
/// node in `/dev`, checked to be that device.
fn claim(facts: &DiskFacts) -> Result<File, ClaimFailure> {
    let node = Path::new("/dev").join(&facts.kernel_name);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::EXCL | OFlags::NONBLOCK).bits() as i32)
        .open(&node)
        .map_err(|error| {
            if flashrack_target::is_station_resource_error(&error) {
                ClaimFailure::Station(format!("{}: {error}", node.display()))
            } else if error.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                ClaimFailure::Refused(Refusal::Busy {
                    detail: format!(
                        "{} is mounted or opened exclusively by another process",
                        facts.kernel_name
                    ),
                })
            } else {
                ClaimFailure::Refused(Refusal::CannotInspect {
                    detail: format!("cannot claim {}: {error}", node.display()),
                })
            }
        })?;
    let same = file.metadata().is_ok_and(|meta| {
        meta.file_type().is_block_device()
            && meta.rdev() == rustix::fs::makedev(facts.major, facts.minor)
    });
    if !same {
        return Err(ClaimFailure::Refused(Refusal::CannotInspect {
            detail: format!(
                "{} is not device {}:{}",
                node.display(),
                facts.major,
                facts.minor
            ),
        }));
    }
    Ok(file)
}

/// The guard could not gather its facts: refused (it fails closed), unless the
/// reason is the station's own shortage of descriptors or memory, which is
/// the station's error and not a refusal of the stick (still nothing written).
fn guard_failure(error: flashrack_guard::GuardError) -> TargetError {
    match &error {
        flashrack_guard::GuardError::Io { source, .. }
            if flashrack_target::is_station_resource_error(source) =>
        {
            TargetError::Station(error.to_string())
        }
        _ => TargetError::Refused(Refusal::from(error).into()),
    }
}

/// Maps an error from opening `path` to a target error. A device node that is
/// gone (`device`) means the stick was pulled; a file target that cannot be
/// found (its directory is missing) was never there, and is unavailable with
/// the operating system's error. A permission error is unavailable too: it is
/// the station's problem, not the stick's (a read-only device is told by its
/// `ro` flag, see [`is_read_only`]).
fn open_error(path: &Path, error: io::Error, device: bool) -> TargetError {
    if flashrack_target::is_station_resource_error(&error) {
        return TargetError::Station(format!("{}: {error}", path.display()));
    }
    match error.kind() {
        io::ErrorKind::NotFound if device => TargetError::Removed,
        _ if error.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
            TargetError::Busy(format!(
                "{} is in use (mounted, swap, or opened exclusively by another process)",
                path.display()
            ))
        }
        _ => match TargetError::from_io(0, error) {
            TargetError::Io { source, .. } => {
                TargetError::Open(format!("{}: {source}", path.display()))
            }
            other => other,
        },
    }
}

/// The kernel's own file systems, by `statfs` magic: their "regular" files
/// are the running system's controls and views (`/proc/sysrq-trigger`,
/// `/proc/sys/…`, `/sys/power/state`), never a medium.
const KERNEL_FILE_SYSTEMS: [(u64, &str); 11] = [
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x6265_6570, "configfs"),
    (0xde5e_81e4, "efivarfs"),
    (0xcafe_4a11, "bpf"),
    (0x6165_676c, "pstore"),
];

/// Refuses a file target on one of the kernel's own file systems (for one
/// not created yet, its directory's): a write there as root is an action on
/// the running system, whatever the image holds. Checked before the file is
/// sized and again before it is opened; nothing is written.
fn refuse_kernel_file(path: &Path) -> Result<(), TargetError> {
    let existing = if path.exists() {
        path
    } else {
        match path.parent() {
            Some(dir) => dir,
            None => return Ok(()),
        }
    };
    let Ok(stat) = rustix::fs::statfs(existing) else {
        // Nothing to judge by: the open says what is wrong.
        return Ok(());
    };
    match KERNEL_FILE_SYSTEMS
        .iter()
        .find(|(magic, _)| *magic == stat.f_type as u64)
    {
        Some((_, name)) => Err(TargetError::Open(format!(
            "{} is a file of the kernel's {name} file system, not a medium: refusing to write it",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// File systems without `O_DIRECT` answer `EINVAL` at open.
fn is_direct_io_unsupported(error: &io::Error) -> bool {
    error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// The logical block size used for regular files: a page covers the direct-I/O
/// alignment of every common file system.
const FILE_BLOCK_SIZE: u32 = 4096;

impl Target for PathTarget {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn geometry(&self) -> Result<TargetGeometry, TargetError> {
        match &self.kind {
            PathKind::Block { .. } => block_geometry(&self.path, path_rdev(&self.path)?),
            PathKind::File { min_size } => {
                let len = match std::fs::metadata(&self.path) {
                    Ok(meta) if meta.is_file() => {
                        refuse_kernel_file(&self.path)?;
                        meta.len()
                    }
                    Ok(_) => {
                        return Err(TargetError::Open(format!(
                            "{} is neither a regular file nor a block device",
                            self.path.display()
                        )))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                    Err(e) => return Err(open_error(&self.path, e, false)),
                };
                Ok(TargetGeometry {
                    capacity: len.max(*min_size),
                    logical_block_size: FILE_BLOCK_SIZE,
                })
            }
        }
    }

    fn may_misreport_capacity(&self) -> bool {
        matches!(self.kind, PathKind::Block { .. })
    }

    /// A loop device has no cache of its own: its medium is its backing
    /// file, whose page cache its reader drops before reading back (and
    /// behind itself as it reads). Every other block device may be a stick
    /// with a cache in its controller or bridge; a file has none.
    fn may_cache_writes(&self) -> bool {
        match &self.kind {
            PathKind::Block { pin: Ok(pin), .. } => !is_loop_device(pin.major, pin.minor),
            PathKind::Block { pin: Err(_), .. } => true,
            PathKind::File { .. } => false,
        }
    }

    fn open_writer(&self) -> Result<Box<dyn TargetWriter>, TargetError> {
        match &self.kind {
            PathKind::Block {
                guard,
                pin,
                before_open,
            } => self.open_block_writer(guard, pin, before_open.as_ref()),
            PathKind::File { min_size } => {
                refuse_kernel_file(&self.path)?;
                let open = |flags: OFlags| {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .custom_flags(flags.bits() as i32)
                        .open(&self.path)
                };
                let (file, direct) = match open(OFlags::DIRECT) {
                    Ok(file) => (file, true),
                    Err(e) if is_direct_io_unsupported(&e) => (
                        open(OFlags::empty()).map_err(|e| open_error(&self.path, e, false))?,
                        false,
                    ),
                    Err(e) => return Err(open_error(&self.path, e, false)),
                };
                let len = file
                    .metadata()
                    .map_err(|e| open_error(&self.path, e, false))?
                    .len();
                if len < *min_size {
                    file.set_len(*min_size)
                        .map_err(|e| TargetError::from_io(len, e))?;
                }
                Ok(Box::new(PathWriter {
                    behind: None,
                    file,
                    block_size: FILE_BLOCK_SIZE as usize,
                    direct,
                    file_len: Some(len.max(*min_size)),
                    device: None,
                    _claims: Vec::new(),
                }))
            }
        }
    }

    fn open_reader(&self) -> Result<Box<dyn TargetReader>, TargetError> {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(OFlags::DIRECT.bits() as i32)
            .open(&self.path);
        let device = matches!(self.kind, PathKind::Block { .. });
        let file = match direct {
            Ok(file) => file,
            Err(e) if is_direct_io_unsupported(&e) => {
                File::open(&self.path).map_err(|e| open_error(&self.path, e, device))?
            }
            Err(e) => return Err(open_error(&self.path, e, device)),
        };
        if let PathKind::Block { pin, .. } = &self.kind {
            // The read-back proves what the pinned disk holds, or nothing: a name
            // that now leads to another disk means the written one is gone.
            let pin = pin.as_ref().map_err(|why| TargetError::Open(why.clone()))?;
            let opened = DiskIdentity::of_file(&file, &self.path)
                .map_err(|e| TargetError::Open(format!("cannot identify the device: {e}")))?;
            if opened != *pin {
                return Err(TargetError::Removed);
            }
        }
        // Nothing this process or the kernel cached may answer the read-back: drop
        // the device's (or file's) clean cached pages, and for a loop device those
        // of its backing file, which is the loop device's real medium.
        let _ = rustix::fs::fadvise(&file, 0, None, Advice::DontNeed);
        let backing = match self.kind {
            PathKind::Block { .. } => LoopBacking::of(&file),
            _ => None,
        };
        Ok(Box::new(PathReader { file, backing }))
    }
}

/// A loop device's backing file: the loop device's real medium, whose page
/// cache stands between a read of the loop device and the storage.
struct LoopBacking {
    file: File,
    /// Where the loop device starts in the backing file.
    offset: u64,
    /// The read-back has consumed (and dropped from the cache) the device's
    /// bytes before this.
    dropped_until: u64,
}

/// Cached pages of the backing file behind the read-back are dropped in steps
/// of this much.
const DROP_BEHIND_STEP: u64 = 8 << 20;

impl LoopBacking {
    /// For a loop device: its backing file, flushed and with its whole page
    /// cache dropped, so that reads through the loop device come from the
    /// backing file's storage. `None` for other devices.
    fn of(device: &File) -> Option<Self> {
        let meta = device.metadata().ok()?;
        let dir = sysfs_dir(meta.rdev()).join("loop");
        let path = std::fs::read_to_string(dir.join("backing_file")).ok()?;
        let offset = read_sysfs_u64(&dir.join("offset")).unwrap_or(0);
        let file = File::open(path.trim()).ok()?;
        let _ = file.sync_data();
        let _ = rustix::fs::fadvise(&file, 0, None, Advice::DontNeed);
        Some(Self {
            file,
            offset,
            dropped_until: 0,
        })
    }

    /// The read-back has consumed the device up to `end`: drops the backing
    /// file's pages before it. They were read from the storage for this
    /// read-back and are of no further use; dropping them as it goes keeps the
    /// read-back from filling the page cache (a verify of many sticks would
    /// otherwise evict the image), and the next reads reuse the freed pages
    /// instead of allocating new ones — on a VM that returns freed memory to
    /// its host, first touches of new memory made a read-back several times
    /// slower (bench/README.md).
    fn drop_behind(&mut self, end: u64) {
        if end < self.dropped_until + DROP_BEHIND_STEP {
            return;
        }
        let len = std::num::NonZeroU64::new(end - self.dropped_until);
        let _ = rustix::fs::fadvise(
            &self.file,
            self.offset + self.dropped_until,
            len,
            Advice::DontNeed,
        );
        self.dropped_until = end;
    }
}

/// A buffered loop device's backing file, written back behind the writes.
///
/// Why: a write to a loop device without direct I/O (`losetup`'s default)
/// is a copy into its backing file's page cache, which the kernel writes to
/// the disk only once a tenth of the memory is dirty (gigabytes here) or at
/// the flush before the read-back: the whole image went to the disk in that
/// one flush, after the last write (0.37 s of a 2.4 s cold flash of a GiB
/// at N = 1, bench/README.md). Asking for the writeback of each stretch as
/// soon as it is written lets the disk work while the writes go on. The
/// advice is `POSIX_FADV_DONTNEED` over the stretches written: the kernel
/// starts writing back their dirty pages (it does not wait for them) and
/// drops those already clean, which the read-back would drop anyway (it
/// reads the medium, never the page cache). Nothing is proven differently:
/// the flush before the read-back still waits for every byte.
struct WriteBehind {
    file: File,
    /// Where the loop device starts in the backing file.
    offset: u64,
    marks: WriteBehindMarks,
}

/// Stretches of this much are written back behind the writes.
const WRITE_BEHIND_STEP: u64 = 16 << 20;

impl WriteBehind {
    /// For a loop device (`rdev`) over a file without direct I/O, whose
    /// status names the file `(device, inode)`: that file. `None` for a loop
    /// device with direct I/O (its writes reach the backing file's storage
    /// as they are made) or when the file at the path the kernel gives is
    /// not that one (a loop device attached in another mount namespace names
    /// its file as seen from there) or cannot be opened: nothing is then
    /// written behind, and the flush still writes everything.
    fn of(rdev: u64, (device, inode): (u64, u64)) -> Option<Self> {
        let dir = sysfs_dir(rdev).join("loop");
        if read_sysfs_u64(&dir.join("dio")) != Some(0) {
            return None;
        }
        let path = std::fs::read_to_string(dir.join("backing_file")).ok()?;
        let file = File::open(path.trim()).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.file_type().is_file() || (meta.dev(), meta.ino()) != (device, inode) {
            return None;
        }
        Some(Self {
            file,
            offset: read_sysfs_u64(&dir.join("offset")).unwrap_or(0),
            marks: WriteBehindMarks::default(),
        })
    }

    /// `[offset, end)` of the device was written.
    fn wrote(&mut self, offset: u64, end: u64) {
        let Some((from, to)) = self.marks.wrote(offset, end) else {
            return;
        };
        let _ = rustix::fs::fadvise(
            &self.file,
            self.offset + from,
            std::num::NonZeroU64::new(to - from),
            Advice::DontNeed,
        );
    }
}

/// Which stretch of a device to write back after a write (see
/// [`WriteBehind`]): the one handed to writeback last is `[older, mark)`.
#[derive(Debug, Default, Clone, Copy)]
struct WriteBehindMarks {
    older: u64,
    mark: u64,
}

impl WriteBehindMarks {
    /// `[offset, end)` was written: the stretch of the device to advise, if
    /// a step's worth was written since the last one. It covers the stretch
    /// handed to writeback last (written back since: its clean pages go) and
    /// the new one (its writeback starts).
    fn wrote(&mut self, offset: u64, end: u64) -> Option<(u64, u64)> {
        if offset < self.mark {
            // A jump back (the capacity probe's markers, then the image from
            // its start): follow the writes from here.
            (self.older, self.mark) = (offset, offset);
        }
        if end < self.mark + WRITE_BEHIND_STEP {
            return None;
        }
        let stretch = (self.older, end);
        (self.older, self.mark) = (self.mark, end);
        Some(stretch)
    }
}

struct PathWriter {
    /// For a buffered loop device: its backing file, written back behind the
    /// writes.
    behind: Option<WriteBehind>,
    file: File,
    /// Direct-I/O offsets and lengths are multiples of this.
    block_size: usize,
    /// Whether `file` was opened with `O_DIRECT`.
    direct: bool,
    /// For regular files: the length to restore after a padded final write.
    file_len: Option<u64>,
    /// For block devices: the device number, whose `ro` flag tells a write
    /// refused for being read-only from other permission errors.
    device: Option<u64>,
    /// For a loop device over a block device: that device (and any below
    /// it), opened exclusively and only held, never read or written: while
    /// this writer lives nothing can mount or claim what it really writes.
    _claims: Vec<File>,
}

impl PathWriter {
    /// Writes a final piece whose length is not a multiple of the block size: the
    /// aligned head directly, the partial last block by read-modify-write so the
    /// device's bytes after the image are kept.
    fn write_unaligned_tail(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let head = data.len() / self.block_size * self.block_size;
        if head > 0 {
            self.pwrite_all(offset, &data[..head])?;
        }
        let tail = &data[head..];
        let tail_offset = offset + head as u64;
        let mut block = AlignedBuf::zeroed(self.block_size);
        // A short read at the end of a file leaves zeros, as the file would read.
        let _ = self.file.read_at(&mut block, tail_offset);
        block[..tail.len()].copy_from_slice(tail);
        self.pwrite_all(tail_offset, &block)?;
        if let Some(len) = self.file_len {
            // The padded block may have grown the file beyond what it should be.
            let end = tail_offset + tail.len() as u64;
            self.file
                .set_len(len.max(end))
                .map_err(|e| TargetError::from_io(end, e))?;
        }
        Ok(())
    }

    /// Writes all of `data` at `offset`.
    fn pwrite_all(&self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let mut done = 0;
        while done < data.len() {
            match self.file.write_at(&data[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(TargetError::from_io(
                        offset + done as u64,
                        io::Error::new(io::ErrorKind::WriteZero, "no space left on the target"),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.write_error(offset + done as u64, e)),
            }
        }
        Ok(())
    }

    /// Classifies a failed write at `offset`. A block device that refuses it
    /// (`EPERM`, as the kernel answers a write to a read-only device) and
    /// whose `ro` flag is set is read-only, not a write error.
    fn write_error(&self, offset: u64, error: io::Error) -> TargetError {
        match self.device {
            Some(rdev) if is_permission_error(&error) && is_read_only(rdev) => {
                TargetError::ReadOnly
            }
            _ => TargetError::from_io(offset, error),
        }
    }
}

impl TargetWriter for PathWriter {
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        if self.direct && !data.len().is_multiple_of(self.block_size) {
            self.write_unaligned_tail(offset, data)?;
        } else {
            self.pwrite_all(offset, data)?;
        }
        if let Some(behind) = &mut self.behind {
            behind.wrote(offset, offset + data.len() as u64);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TargetError> {
        // A failed flush has no meaningful offset; the engine reports it as a
        // flush error, not a write error at an offset.
        self.file
            .sync_all()
            .map_err(|e| TargetError::from_io(0, e))?;
        if !self.direct {
            // Buffered writes: drop the now clean pages so the read-back cannot
            // be answered from the page cache.
            let _ = rustix::fs::fadvise(&self.file, 0, None, Advice::DontNeed);
        }
        Ok(())
    }
}

struct PathReader {
    file: File,
    /// For a loop device.
    backing: Option<LoopBacking>,
}

impl TargetReader for PathReader {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TargetError::from_io(offset + done as u64, e)),
            }
        }
        if let Some(backing) = &mut self.backing {
            backing.drop_behind(offset + done as u64);
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffered_loop_device_is_written_back_a_stretch_behind_its_writes() {
        const MIB: u64 = 1 << 20;
        const STEP: u64 = WRITE_BEHIND_STEP;
        let mut marks = WriteBehindMarks::default();
        let mut advised = Vec::new();
        // The capacity probe's markers far out, then the image from its
        // start in 4 MiB writes.
        for at in [900 * MIB, 300 * MIB] {
            advised.extend(marks.wrote(at, at + 4096));
        }
        for at in (0..4 * STEP).step_by(4 << 20) {
            advised.extend(marks.wrote(at, at + (4 << 20)));
        }
        assert_eq!(
            advised,
            vec![
                // The first marker is past a step from the start.
                (0, 900 * MIB + 4096),
                // Then the image: each step, the stretch before and the new one.
                (0, STEP),
                (0, 2 * STEP),
                (STEP, 3 * STEP),
                (2 * STEP, 4 * STEP),
            ]
        );
        // A short last write still counts where it ends.
        assert_eq!(
            marks.wrote(4 * STEP, 5 * STEP + 100),
            Some((3 * STEP, 5 * STEP + 100))
        );
    }

    #[test]
    fn a_buffered_loop_device_is_written_back_only_to_the_file_its_status_names() {
        if !flashrack_testkit::require_root(&["losetup"]) {
            return;
        }
        let device = flashrack_testkit::LoopDevice::new(32 << 20);
        let rdev = std::fs::metadata(device.path()).unwrap().rdev();
        let file = std::fs::metadata(device.backing()).unwrap();
        assert!(WriteBehind::of(rdev, (file.dev(), file.ino())).is_some());
        // A path that leads to another file than the one the loop device
        // writes (attached in another mount namespace) is left alone.
        assert!(WriteBehind::of(rdev, (file.dev(), file.ino() + 1)).is_none());
        // So is any device that is not a loop device.
        let not_loop = std::fs::metadata("/dev/null").unwrap().rdev();
        assert!(WriteBehind::of(not_loop, (file.dev(), file.ino())).is_none());
    }

    #[test]
    fn a_reported_size_that_overflows_a_byte_count_is_an_error_not_a_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        std::fs::create_dir(sys.join("queue")).unwrap();
        let geometry = |sectors: u64, block: u64| {
            std::fs::write(sys.join("size"), format!("{sectors}\n")).unwrap();
            std::fs::write(sys.join("queue/logical_block_size"), format!("{block}\n")).unwrap();
            sysfs_geometry(sys, Path::new("/dev/sdz"))
        };
        let largest = u64::MAX / 512;
        assert_eq!(geometry(largest, 4096).unwrap().capacity, largest * 512);
        // One more sector: 2^64 bytes would wrap to 0 (or to a small size).
        for sectors in [largest + 1, 1 << 55, u64::MAX] {
            match geometry(sectors, 512) {
                Err(TargetError::Open(detail)) => {
                    assert!(detail.contains("/dev/sdz") && detail.contains("impossible size"))
                }
                other => panic!("{sectors} sectors: {other:?}"),
            }
        }
        // A block size that does not fit (or is no block size) is refused too,
        // not truncated to 0.
        for block in [1 << 32, 0, 1000, 1 << 20] {
            assert!(
                matches!(geometry(2048, block), Err(TargetError::Open(_))),
                "{block}"
            );
        }
        assert_eq!(geometry(2048, 512).unwrap().logical_block_size, 512);
    }

    #[test]
    fn a_file_target_is_created_grown_and_keeps_an_unaligned_tail_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target.img");
        let size = 3 * 4096 + 100;
        let target = PathTarget::file(&path, size);
        assert_eq!(target.geometry().unwrap().capacity, size);
        assert!(!target.may_misreport_capacity());

        let mut data = AlignedBuf::zeroed(4 * 4096);
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        let mut writer = target.open_writer().unwrap();
        writer.write_all_at(0, &data[..size as usize]).unwrap();
        writer.flush().unwrap();
        drop(writer);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);

        let mut reader = target.open_reader().unwrap();
        let mut back = AlignedBuf::zeroed(4 * 4096);
        let n = reader.read_at(0, &mut back).unwrap();
        assert_eq!(n, size as usize);
        assert_eq!(&back[..n], &data[..n]);
    }

    #[test]
    fn a_larger_file_keeps_its_length_and_bytes_after_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.img");
        std::fs::write(&path, vec![0xAAu8; 8 * 4096]).unwrap();
        let target = PathTarget::file(&path, 4096 + 1);
        let mut writer = target.open_writer().unwrap();
        let data = AlignedBuf::zeroed(2 * 4096);
        writer.write_all_at(0, &data[..4097]).unwrap();
        writer.flush().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 8 * 4096);
        assert!(bytes[..4097].iter().all(|&b| b == 0));
        assert!(bytes[4097..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn a_block_device_that_could_not_be_identified_when_named_is_never_opened() {
        let guard: GuardCheck = Arc::new(|_| Ok(()));
        let target = PathTarget::block_device("/dev/null-does-not-exist", guard);
        assert_eq!(target.pinned(), None);
        match target.open_writer() {
            Err(TargetError::Refused(why)) => {
                assert_eq!(why.code, flashrack_core::RefusalCode::CannotInspect);
                assert!(why.to_string().contains("could not be identified"), "{why}")
            }
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
    }

    #[test]
    fn a_file_target_in_a_missing_directory_is_unavailable_with_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("target.img");
        let target = PathTarget::file(&path, 4096);
        match target.open_writer() {
            Err(TargetError::Open(why)) => {
                assert!(why.contains("no-such-dir"), "{why}");
                assert!(why.contains("No such file or directory"), "{why}");
            }
            Err(other) => panic!("expected an open error, got {other:?}"),
            Ok(_) => panic!("a file in a missing directory was opened"),
        }
        assert!(!path.exists());
    }

    #[test]
    fn a_directory_is_not_a_file_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = PathTarget::file(dir.path(), 10);
        assert!(matches!(target.geometry(), Err(TargetError::Open(_))));
    }
}
