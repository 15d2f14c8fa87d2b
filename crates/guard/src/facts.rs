//! The facts the rules judge, gathered from the running system (sysfs and the proc
//! files) or from a [`SystemView`] that tests build: for a device by name, and for
//! the device behind an opened descriptor.

mod identity;
mod sysfs;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use identity::DiskIdentity;
use identity::{block_devno, LoopStatus};
use sysfs::{
    bus_of, file_name, list_names, partitions_of, read_number, SysfsTree, MAX_STACK_DEPTH,
};

use crate::procfs::{parse_mountinfo, parse_swaps};
use crate::{GuardError, Refusal};

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
    /// Devices stacked on it or on its partitions, as `"dm-0 on sdb1"`: the
    /// kernel's holders (device-mapper, md) and loop devices whose backing is
    /// the device or a partition of it (`"loop5 on loop4"`; the kernel lists
    /// no holder for those, and an exclusive open of the device does not see
    /// them either).
    pub holders: Vec<String>,
    /// Why this is a system disk, when it is one: the disk (or the disk of this
    /// partition) lies under a mounted filesystem, e.g. `"holds / (mounted from vda)"`.
    pub system_disk: Option<String>,
    /// Whether the kernel marks the device read-only. Not a guard rule: writing a
    /// read-only stick ends in a `read-only` verdict, which tells the operator more.
    pub read_only: bool,
    /// The loop devices under this device and the file behind each: the device
    /// itself when it is a loop device, the loop device a partition belongs to,
    /// and every loop device at the bottom of a stack (device-mapper, md) over
    /// it, followed through `slaves/` and partitions' disks. Writing this device
    /// writes those files. Empty for a device with no loop device under it, and
    /// for a loop device with nothing attached.
    pub loop_backings: Vec<LoopBacking>,
}

/// A loop device under the device being judged, and its backing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopBacking {
    /// Kernel name of the loop device (`loop3`): the device itself, or the one
    /// a partition or a stacked device lies on.
    pub loop_device: String,
    /// The file behind it.
    pub file: BackingFile,
    /// When that "file" is itself a block device (`losetup /dev/loop5
    /// /dev/sdb`, over a partition, over another loop device): the facts of
    /// that device, gathered the same way (so followed down again when it is
    /// a loop device over a block device too), with this loop device not
    /// counted among its holders. Writing the loop device writes it, so the
    /// rules judge it as well. `None` for a regular file.
    pub below: Option<Box<DiskFacts>>,
}

/// The file behind a loop device: what writing the device writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingFile {
    /// The path the kernel gives (`loop/backing_file`), without the
    /// `" (deleted)"` it appends for a file that has been unlinked.
    pub path: PathBuf,
    /// Device and inode of the file the loop device writes (in `st_dev`'s
    /// encoding, as [`std::os::unix::fs::MetadataExt::dev`] gives it). Taken
    /// from the loop device itself (`LOOP_GET_STATUS64`: the kernel's own
    /// record of the open file) when [`from_loop_status`](Self::from_loop_status);
    /// otherwise looked up by [`path`](Self::path) now, which names another
    /// file when the loop device was attached in another mount namespace or
    /// chroot (the kernel gives the path as seen from there), and nothing for
    /// a file since unlinked. `None` when neither could be had.
    pub file: Option<(u64, u64)>,
    /// Whether the kernel says the file has been unlinked.
    pub deleted: bool,
    /// Whether [`file`](Self::file) came from the loop device's status rather
    /// than from the path: `false` only when the device node could not be
    /// opened (no node in this `/dev`, no permission) or in a fake view that
    /// gives no status.
    pub from_loop_status: bool,
}

impl BackingFile {
    /// The backing file as the kernel names it in `loop/backing_file`.
    pub fn from_sysfs_text(text: &str) -> Option<BackingFile> {
        let text = text.strip_suffix('\n').unwrap_or(text);
        if text.is_empty() {
            return None;
        }
        let (name, deleted) = match text.strip_suffix(" (deleted)") {
            Some(name) => (name, true),
            None => (text, false),
        };
        let path = PathBuf::from(name);
        let file = if deleted {
            None
        } else {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&path)
                .ok()
                .map(|meta| (meta.dev(), meta.ino()))
        };
        Some(BackingFile {
            path,
            file,
            deleted,
            from_loop_status: false,
        })
    }

    /// The same file, known by the device and inode the loop device's status
    /// gives (in `st_dev`'s encoding), which win over the path's.
    pub fn with_loop_status(self, dev: u64, ino: u64) -> BackingFile {
        BackingFile {
            file: Some((dev, ino)),
            from_loop_status: true,
            ..self
        }
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
    /// Where the device and inode of loop devices' backing files come from.
    loop_status: LoopStatusSource,
}

/// Where a [`SystemView`] finds a loop device's status (the device and inode of
/// the file behind it).
#[derive(Debug, Clone)]
enum LoopStatusSource {
    /// `LOOP_GET_STATUS64` on the device node `/dev/<name>`, checked to be
    /// the device sysfs describes.
    Live,
    /// What the test says, by kernel name; a loop device not named has no
    /// status (its file is then looked up by path, and it is taken to be
    /// over no block device: a fake view never looks at the host's `/dev`).
    Fake(BTreeMap<String, LoopStatus>),
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
            loop_status: LoopStatusSource::Live,
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
            loop_status: LoopStatusSource::Fake(BTreeMap::new()),
        }
    }

    /// A fake view in which loop device `loop_name`'s status says its backing
    /// file is device `dev`, inode `ino` (as the kernel keeps it whatever its
    /// path says now). No effect on the live view.
    pub fn with_loop_file(mut self, loop_name: &str, dev: u64, ino: u64) -> Self {
        if let LoopStatusSource::Fake(files) = &mut self.loop_status {
            files.insert(
                loop_name.to_owned(),
                LoopStatus {
                    file: (dev, ino),
                    block_device: None,
                },
            );
        }
        self
    }

    /// A fake view in which loop device `loop_name`'s status says it is
    /// attached to block device `major:minor` (whose node's device and inode
    /// it gives as `(0, 0)`). No effect on the live view.
    pub fn with_loop_over_device(mut self, loop_name: &str, major: u32, minor: u32) -> Self {
        if let LoopStatusSource::Fake(files) = &mut self.loop_status {
            files.insert(
                loop_name.to_owned(),
                LoopStatus {
                    file: (0, 0),
                    block_device: Some((major, minor)),
                },
            );
        }
        self
    }

    /// The block device behind a loop device whose status is `status` (when
    /// it could be read) and whose backing path sysfs gives as `path`, when
    /// its backing is one: from the status, or else (live view only) from
    /// what the path is now.
    fn device_below(&self, status: Option<LoopStatus>, path: &Path) -> Option<(u32, u32)> {
        match status {
            Some(status) => status.block_device,
            None if self.host_paths => {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                let meta = fs::metadata(path).ok()?;
                meta.file_type().is_block_device().then(|| {
                    (
                        rustix::fs::major(meta.rdev()),
                        rustix::fs::minor(meta.rdev()),
                    )
                })
            }
            None => None,
        }
    }

    /// The status of loop device `name` (sysfs directory `dir`): the device
    /// and inode of the file behind it and the block device it is, if any;
    /// `None` when it cannot be read.
    fn loop_file(&self, name: &str, dir: &Path) -> Option<LoopStatus> {
        match &self.loop_status {
            LoopStatusSource::Fake(files) => files.get(name).copied(),
            LoopStatusSource::Live => {
                let (major, minor) = devno_of_dir(dir)?;
                let node = Path::new("/dev").join(name);
                let file = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(&node)
                    .ok()?;
                // The node must be the device sysfs described, not a stale
                // or foreign node under the same name.
                if block_devno(file.metadata(), &node).ok()? != (major, minor) {
                    return None;
                }
                identity::loop_status(&file).ok()
            }
        }
    }
}

/// The backing file of the loop device whose sysfs directory is `loop_dir`,
/// as sysfs names it; `None` for a device that is no loop device or has
/// nothing attached.
fn read_backing_path(loop_dir: &Path) -> Result<Option<BackingFile>, GuardError> {
    match fs::read_to_string(loop_dir.join("loop/backing_file")) {
        Ok(text) => Ok(BackingFile::from_sysfs_text(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(GuardError::Io {
            path: loop_dir.join("loop/backing_file"),
            source,
        }),
    }
}

/// The device number sysfs gives for the device directory `dir` (its `dev`
/// file, `"7:3"`).
fn devno_of_dir(dir: &Path) -> Option<(u32, u32)> {
    let text = fs::read_to_string(dir.join("dev")).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
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
        // The file behind an opened loop device is read from the very
        // descriptor that will be written through, and so is the block
        // device under it, if it is over one: when that is not the one the
        // facts were gathered for, they are gathered again for it.
        let mut facts = facts;
        let view = SystemView::live()?;
        let name = facts.kernel_name.clone();
        for backing in &mut facts.loop_backings {
            if backing.loop_device != name {
                continue;
            }
            if let Ok(status) = identity::loop_status(file) {
                backing.file = backing
                    .file
                    .clone()
                    .with_loop_status(status.file.0, status.file.1);
                let gathered = backing.below.as_ref().map(|b| (b.major, b.minor));
                if status.block_device != gathered {
                    backing.below = match status.block_device {
                        Some((major, minor)) => Some(Box::new(DiskFacts::below_loop(
                            &name, major, minor, &view, 1,
                        )?)),
                        None => None,
                    };
                }
            }
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
        let (major, minor) = block_devno(fs::metadata(path), path)?;
        DiskFacts::from_view(path, major, minor, view)
    }

    /// Gathers the facts about block device `major:minor`, known as `dev_path`, from
    /// `view` alone (no device node needed: what tests of fake sysfs trees use).
    pub fn from_view(
        dev_path: &Path,
        major: u32,
        minor: u32,
        view: &SystemView,
    ) -> Result<DiskFacts, GuardError> {
        DiskFacts::gather(dev_path, major, minor, view, 0, None)
    }

    /// The facts of block device `major:minor`, the backing of loop device
    /// `loop_name` at stacking depth `depth`: that loop device is not one of
    /// its holders (it is what is being judged).
    fn below_loop(
        loop_name: &str,
        major: u32,
        minor: u32,
        view: &SystemView,
        depth: usize,
    ) -> Result<DiskFacts, GuardError> {
        if depth > MAX_STACK_DEPTH {
            return Err(GuardError::Malformed {
                what: format!("the loop devices under {loop_name}"),
                detail: format!("stacked deeper than {MAX_STACK_DEPTH} levels"),
            });
        }
        let sys = SysfsTree::new(view)?;
        let name = match sys.dir_of_devno(major, minor)? {
            Some(dir) => file_name(&dir),
            None => format!("{major}:{minor}"),
        };
        let dev_path = Path::new("/dev").join(name);
        DiskFacts::gather(&dev_path, major, minor, view, depth, Some(loop_name))
    }

    /// [`from_view`](Self::from_view) at stacking depth `depth` (how many
    /// loop devices over block devices lie above it), not counting loop
    /// device `not_holder` among the holders.
    fn gather(
        dev_path: &Path,
        major: u32,
        minor: u32,
        view: &SystemView,
        depth: usize,
        not_holder: Option<&str>,
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
        // Loop devices over the device or a partition of it: the kernel
        // links no holder for them, and writing the device under a loop
        // device whose file system is mounted corrupts it as surely.
        let mut scope_devnos = Vec::new();
        for (name, d) in &scope {
            if let Some(devno) = devno_of_dir(d) {
                scope_devnos.push((devno, name.clone()));
            }
        }
        for (loop_name, loop_dir) in sys.attached_loop_devices()? {
            if Some(loop_name.as_str()) == not_holder {
                continue;
            }
            let path = read_backing_path(&loop_dir)?;
            let Some(path) = path else { continue };
            let status = view.loop_file(&loop_name, &loop_dir);
            let Some(below) = view.device_below(status, &path.path) else {
                continue;
            };
            if let Some((_, on)) = scope_devnos.iter().find(|(devno, _)| *devno == below) {
                holders.push(format!("{loop_name} on {on}"));
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

        // What a write to this device writes in the end: the backing files of
        // the loop devices under it (itself, its partition's disk, the bottom
        // of a dm or md stack), each known by the device and inode the loop
        // device's status gives.
        let mut loop_backings = Vec::new();
        for name in sys.whole_disks_under(&dir, 0)? {
            let Some(loop_dir) = sys.dir_of_name(&name)? else {
                continue;
            };
            let Some(mut file) = read_backing_path(&loop_dir)? else {
                continue;
            };
            let status = view.loop_file(&name, &loop_dir);
            if let Some(status) = status {
                file = file.with_loop_status(status.file.0, status.file.1);
            }
            // Over a block device: what that device is, followed down.
            let below = match view.device_below(status, &file.path) {
                Some((major, minor)) => Some(Box::new(DiskFacts::below_loop(
                    &name,
                    major,
                    minor,
                    view,
                    depth + 1,
                )?)),
                None => None,
            };
            loop_backings.push(LoopBacking {
                loop_device: name,
                file,
                below,
            });
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
            loop_backings,
        })
    }
}
