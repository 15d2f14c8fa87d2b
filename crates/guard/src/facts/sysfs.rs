//! Reading the sysfs tree of a [`SystemView`]: a device's directory by number or
//! by name, its bus, partitions, holders and the whole disks under a stack.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::SystemView;
use crate::procfs::MountEntry;
use crate::GuardError;

/// How deep [`SysfsTree::whole_disks_under`] follows stacked devices (dm on md on
/// partitions…). Real stacks are a few levels deep; the bound only stops a cycle.
pub(super) const MAX_STACK_DEPTH: usize = 16;

/// Tells the bus from a device's sysfs path relative to the sysfs root
/// (`devices/pci0000:00/…/usb2/2-1/…/block/sdb`). USB comes first: a USB enclosure
/// may hold a disk of any kind.
pub(super) fn bus_of(relative: &Path) -> &'static str {
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
pub(super) struct SysfsTree<'a> {
    /// The canonical sysfs root, so that canonical device directories can be made
    /// relative to it.
    root: PathBuf,
    /// The view it came from.
    view: &'a SystemView,
}

impl<'a> SysfsTree<'a> {
    pub(super) fn new(view: &'a SystemView) -> Result<Self, GuardError> {
        let root = fs::canonicalize(&view.sysfs_root).map_err(|source| GuardError::Io {
            path: view.sysfs_root.clone(),
            source,
        })?;
        Ok(SysfsTree { root, view })
    }

    pub(super) fn relative(&self, dir: &Path) -> PathBuf {
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

    pub(super) fn dir_of_devno(
        &self,
        major: u32,
        minor: u32,
    ) -> Result<Option<PathBuf>, GuardError> {
        self.follow(self.root.join(format!("dev/block/{major}:{minor}")))
    }

    pub(super) fn dir_of_name(&self, name: &str) -> Result<Option<PathBuf>, GuardError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Ok(None);
        }
        self.follow(self.root.join("class/block").join(name))
    }

    /// The loop devices with something attached (their sysfs directory has
    /// `loop/backing_file`), by kernel name, with their directories.
    pub(super) fn attached_loop_devices(&self) -> Result<Vec<(String, PathBuf)>, GuardError> {
        let mut out = Vec::new();
        for name in list_names(&self.root.join("class/block"))? {
            let Some(dir) = self.dir_of_name(&name)? else {
                continue;
            };
            if dir.join("loop/backing_file").exists() {
                out.push((name, dir));
            }
        }
        Ok(out)
    }

    /// The block device behind a mount: by device number, or by source path when the
    /// number is not a block device's (btrfs reports an anonymous `0:N`).
    pub(super) fn resolve_mount(
        &self,
        entry: &MountEntry,
    ) -> Result<Option<(String, PathBuf)>, GuardError> {
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
    pub(super) fn resolve_path(&self, path: &str) -> Result<Option<(String, PathBuf)>, GuardError> {
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
    pub(super) fn whole_disks_under(
        &self,
        dir: &Path,
        depth: usize,
    ) -> Result<BTreeSet<String>, GuardError> {
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
pub(super) fn partitions_of(dir: &Path, disk: &str) -> Result<Vec<(String, PathBuf)>, GuardError> {
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
pub(super) fn list_names(dir: &Path) -> Result<Vec<String>, GuardError> {
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

pub(super) fn read_number(path: &Path) -> Result<u64, GuardError> {
    let text = fs::read_to_string(path).map_err(|source| GuardError::Io {
        path: path.to_owned(),
        source,
    })?;
    text.trim().parse().map_err(|_| GuardError::Malformed {
        what: path.display().to_string(),
        detail: format!("{:?} is not a number", text.trim()),
    })
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
