//! Resetting a USB stick before its read-back, and recognising it when it
//! comes back.
//!
//! A stick (or its USB bridge) may answer the read-back of what was just
//! written from a cache of its own, which a reset drops. Two ways to reset the
//! USB device a block device belongs to, chosen by [`ResetMethod`]:
//! - [`ResetMethod::Authorize`]: write `0`, then `1`, to the device's sysfs
//!   `authorized` file. The kernel deconfigures the device (its disk goes
//!   away) and configures it again: the stick comes back as a new disk
//!   (another `sdX`, another `diskseq`) in the same port;
//! - [`ResetMethod::Usbdevfs`]: the `USBDEVFS_RESET` ioctl on its usbfs node
//!   (`/dev/bus/usb/BBB/DDD`): a port reset. `usb-storage` survives it
//!   (pre- and post-reset handlers), so the disk usually stays as it was;
//!   a driver that cannot is unbound and bound again, and the disk comes back
//!   as with `Authorize`.
//!
//! [`UsbStickTarget`] is the block target of an attempt on a USB stick: a
//! [`PathTarget`] pinned to the disk, which its reset replaces by one pinned to
//! the disk that came back. It waits on the attempt's [`ResetLink`] for the
//! station, which sees the stick leave and come back as hotplug events (same
//! port path, serial and capacity), and then checks a marker itself: the first
//! logical block (the capacity probe's marker at offset 0, unique to the
//! attempt, during the probe; the image's first block before the read-back)
//! must read back as it did before the reset. The first block, not the last:
//! a fake stick reset by its capacity probe loses the markers past its real
//! size (the last block's among them), which is a capacity lie to be found by
//! the probe, not another stick; every stick that keeps anything keeps its
//! first block (one that loses even that is taken for another stick, and
//! fails as `changed_after_reset`). A stick whose USB device disappears from
//! its port meanwhile was pulled ([`TargetError::Removed`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashrack_guard::{DiskIdentity, GuardCheck};
use flashrack_hotplug::{PluggedDevice, ResetLink};
use flashrack_target::{
    AlignedBuf, Target, TargetError, TargetGeometry, TargetReader, TargetWriter,
};

use crate::block::PathTarget;

/// How a USB stick is reset before its read-back (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetMethod {
    /// De-authorize and re-authorize the device through sysfs.
    #[default]
    Authorize,
    /// `USBDEVFS_RESET` on the device's usbfs node.
    Usbdevfs,
}

impl ResetMethod {
    /// The name used in the configuration: `authorize` or `usbdevfs`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetMethod::Authorize => "authorize",
            ResetMethod::Usbdevfs => "usbdevfs",
        }
    }
}

impl FromStr for ResetMethod {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "authorize" => Ok(ResetMethod::Authorize),
            "usbdevfs" => Ok(ResetMethod::Usbdevfs),
            other => Err(format!(
                "unknown USB reset method {other:?}: expected \"authorize\" or \"usbdevfs\""
            )),
        }
    }
}

/// The USB device a block device belongs to, as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbDevice {
    /// Its sysfs directory (`/sys/devices/…/usb1/1-1/1-1.3`).
    pub dir: PathBuf,
    /// Its bus number.
    pub busnum: u32,
    /// Its device number on the bus (a new one at every plug).
    pub devnum: u32,
}

impl UsbDevice {
    /// The USB device of the block device `kernel_name` (`sdb`), under the sysfs
    /// tree at `sys_root` (`/sys`; a fake tree in tests): the nearest ancestor
    /// of `<sys_root>/class/block/<name>`'s real directory that has `busnum`
    /// and `devnum` (an interface has neither).
    pub fn of_block(sys_root: &Path, kernel_name: &str) -> Result<Self, String> {
        if kernel_name.is_empty() || kernel_name.contains('/') || kernel_name.starts_with('.') {
            return Err(format!("{kernel_name:?} is not a kernel device name"));
        }
        let link = sys_root.join("class/block").join(kernel_name);
        let real = fs::canonicalize(&link)
            .map_err(|e| format!("cannot resolve {}: {e}", link.display()))?;
        let top = fs::canonicalize(sys_root.join("devices")).unwrap_or_else(|_| sys_root.into());
        let mut dir = real.as_path();
        while let Some(parent) = dir.parent() {
            dir = parent;
            if !dir.starts_with(&top) || dir == top {
                break;
            }
            let busnum = read_number(&dir.join("busnum"));
            let devnum = read_number(&dir.join("devnum"));
            if let (Some(busnum), Some(devnum)) = (busnum, devnum) {
                return Ok(UsbDevice {
                    dir: dir.to_path_buf(),
                    busnum,
                    devnum,
                });
            }
        }
        Err(format!("{kernel_name} is not on a USB device"))
    }

    /// Whether the device is still the one found: its directory is there with
    /// the same device number (a stick pulled and plugged again gets another).
    pub fn is_present(&self) -> bool {
        read_number(&self.dir.join("devnum")) == Some(self.devnum)
            && read_number(&self.dir.join("busnum")) == Some(self.busnum)
    }

    /// Whether the device is gone, or goes within `grace`: asked after a
    /// reset failed. A stick pulled while it resets makes the reset's write
    /// fail (`ENODEV`: no longer attached) a moment before the kernel has
    /// torn its directory down, so a look at once can still find it there.
    pub fn gone_within(&self, grace: Duration) -> bool {
        let deadline = std::time::Instant::now() + grace;
        loop {
            if !self.is_present() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its usbfs node, `/dev/bus/usb/BBB/DDD` under `dev_root` (`/dev`).
    pub fn usbfs_node(&self, dev_root: &Path) -> PathBuf {
        dev_root.join(format!("bus/usb/{:03}/{:03}", self.busnum, self.devnum))
    }

    /// Whether this process may reset it with `method` (writes `authorized`,
    /// or opens the usbfs node for writing): a station without the right
    /// reads its sticks back without a reset, and says so.
    pub fn may_reset(&self, method: ResetMethod, dev_root: &Path) -> bool {
        let path = match method {
            ResetMethod::Authorize => self.dir.join("authorized"),
            ResetMethod::Usbdevfs => self.usbfs_node(dev_root),
        };
        rustix::fs::access(&path, rustix::fs::Access::WRITE_OK).is_ok()
    }

    /// Resets the device with `method`. Returns once the kernel has done it:
    /// with [`ResetMethod::Authorize`] the disk has gone and is being
    /// configured again.
    pub fn reset(&self, method: ResetMethod, dev_root: &Path) -> io::Result<()> {
        match method {
            ResetMethod::Authorize => {
                let authorized = self.dir.join("authorized");
                fs::write(&authorized, "0")?;
                fs::write(&authorized, "1")
            }
            ResetMethod::Usbdevfs => {
                let node = fs::OpenOptions::new()
                    .write(true)
                    .open(self.usbfs_node(dev_root))?;
                usbdevfs_reset(&node).map_err(io::Error::from)
            }
        }
    }
}

/// `USBDEVFS_RESET` (`<linux/usbdevice_fs.h>`: `_IO('U', 20)`): resets the USB
/// device whose usbfs node `file` is.
#[allow(unsafe_code)]
fn usbdevfs_reset(file: &fs::File) -> rustix::io::Result<()> {
    const USBDEVFS_RESET: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(b'U', 20);
    // SAFETY: USBDEVFS_RESET takes no argument (`_IO`), which is what `NoArg`
    // passes, and the opcode is the kernel's; the descriptor is a valid open
    // file for the duration of the call.
    unsafe { rustix::ioctl::ioctl(file, rustix::ioctl::NoArg::<USBDEVFS_RESET>::new()) }
}

fn read_number(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// How often a target waiting for its stick to come back looks whether the
/// stick's USB device is still in its port.
const GONE_POLL: Duration = Duration::from_millis(50);

/// The block target of an attempt on a USB stick, which can reset the stick
/// before its read-back (see the module docs).
pub struct UsbStickTarget {
    /// The stick as the system shows it now and its pinned block target;
    /// replaced when the stick comes back from a reset. A `std` mutex: held
    /// only to read or replace them, never across I/O.
    current: Mutex<(PluggedDevice, Arc<PathTarget>)>,
    /// The guard every open for writing runs (the station's, for this port).
    guard: GuardCheck,
    /// Where the station answers when the stick is back.
    link: ResetLink,
    method: ResetMethod,
    /// The stick's USB device, found when the target was made; `None` when it
    /// could not be (then it is not reset).
    usb: Option<UsbDevice>,
    /// `/sys` and `/dev` (other trees in tests).
    sys_root: PathBuf,
    dev_root: PathBuf,
}

impl UsbStickTarget {
    /// The target of an attempt on `device`, reset with `method` through the
    /// real `/sys` and `/dev`.
    pub fn new(
        device: &PluggedDevice,
        guard: GuardCheck,
        link: ResetLink,
        method: ResetMethod,
    ) -> Self {
        Self::with_roots(device, guard, link, method, "/sys".into(), "/dev".into())
    }

    /// As [`new`](Self::new), with other sysfs and `/dev` trees.
    pub fn with_roots(
        device: &PluggedDevice,
        guard: GuardCheck,
        link: ResetLink,
        method: ResetMethod,
        sys_root: PathBuf,
        dev_root: PathBuf,
    ) -> Self {
        let usb = match UsbDevice::of_block(&sys_root, &device.kernel_name) {
            Ok(usb) => Some(usb),
            Err(why) => {
                tracing::info!(device = %device.kernel_name, %why, "no USB device to reset");
                None
            }
        };
        Self {
            current: Mutex::new((device.clone(), Arc::new(pinned(device, guard.clone())))),
            guard,
            link,
            method,
            usb,
            sys_root,
            dev_root,
        }
    }

    /// The stick's USB device, if it was found.
    pub fn usb_device(&self) -> Option<&UsbDevice> {
        self.usb.as_ref()
    }

    fn current(&self) -> (PluggedDevice, Arc<PathTarget>) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The stick as the system shows it now (after a reset, under its new
    /// name).
    pub fn device(&self) -> PluggedDevice {
        self.current().0
    }
}

/// A block target pinned to the disk `device` reports.
fn pinned(device: &PluggedDevice, guard: GuardCheck) -> PathTarget {
    match device.disk {
        Some(pin) => PathTarget::pinned_block_device(device.dev_path.clone(), pin, guard),
        None => PathTarget::block_device(device.dev_path.clone(), guard),
    }
}

/// The first logical block of `target` as it reads from the medium now (see
/// the module docs for why the first).
fn read_marker(target: &dyn Target) -> Result<(u64, Vec<u8>), TargetError> {
    let geometry = target.geometry()?;
    let block = u64::from(geometry.logical_block_size);
    if geometry.capacity < block {
        return Err(TargetError::Open(format!(
            "{} is smaller than one block",
            target.name()
        )));
    }
    let offset = 0;
    let mut reader = target.open_reader()?;
    let mut buf = AlignedBuf::zeroed(block as usize);
    let mut done = 0;
    while done < buf.len() {
        let n = reader.read_at(offset + done as u64, &mut buf[done..])?;
        if n == 0 {
            return Err(TargetError::Io {
                offset: offset + done as u64,
                source: io::Error::from(io::ErrorKind::UnexpectedEof),
            });
        }
        done += n;
    }
    Ok((offset, buf.to_vec()))
}

/// How long a failed reset waits for its stick to leave before calling the
/// failure the stick's own (see [`UsbDevice::gone_within`]): the kernel
/// removes a pulled device's directory within milliseconds; the station's
/// removal grace is of the same order.
const PULLED_DURING_RESET_GRACE: Duration = Duration::from_secs(2);

impl Target for UsbStickTarget {
    fn name(&self) -> String {
        self.current().1.name()
    }

    fn geometry(&self) -> Result<TargetGeometry, TargetError> {
        self.current().1.geometry()
    }

    fn can_reset(&self) -> bool {
        self.usb
            .as_ref()
            .is_some_and(|usb| usb.may_reset(self.method, &self.dev_root))
    }

    fn reset(&self) -> Result<(), TargetError> {
        let Some(usb) = self.usb.clone() else {
            return Err(TargetError::Open(format!(
                "{} is not on a USB device: it cannot be reset",
                self.name()
            )));
        };
        let (device, target) = self.current();
        let (offset, marker) = read_marker(&*target)?;
        // Before the stick is touched: its removal is part of the attempt.
        self.link.begin();
        if let Err(error) = usb.reset(self.method, &self.dev_root) {
            self.link.end();
            if usb.gone_within(PULLED_DURING_RESET_GRACE) {
                return Err(TargetError::Removed);
            }
            return Err(TargetError::Open(format!(
                "cannot reset {} ({}, {}): {error}",
                device.kernel_name,
                usb.dir.display(),
                self.method.as_str()
            )));
        }
        // A reset the driver absorbed leaves the same disk behind the same
        // name: nothing left the system, nothing comes back.
        let same_disk = device
            .disk
            .is_some_and(|pin| DiskIdentity::of_path(&device.dev_path).ok() == Some(pin));
        let back = if same_disk && self.method == ResetMethod::Usbdevfs {
            self.link.end();
            device.clone()
        } else {
            let watched = usb.clone();
            self.link.wait(move || !watched.is_present(), GONE_POLL)?
        };
        // The station matched port, serial and capacity; the marker is the
        // medium's own word that this is the stick that was written.
        let Some(_) = back.disk else {
            return Err(TargetError::ChangedAfterReset(format!(
                "{} came back without a disk identity",
                back.kernel_name
            )));
        };
        let returned = UsbDevice::of_block(&self.sys_root, &back.kernel_name)
            .map_err(TargetError::ChangedAfterReset)?;
        if returned.dir != usb.dir {
            return Err(TargetError::ChangedAfterReset(format!(
                "{} is on another USB device ({} instead of {})",
                back.kernel_name,
                returned.dir.display(),
                usb.dir.display()
            )));
        }
        let new = Arc::new(pinned(&back, self.guard.clone()));
        let (at, now) = read_marker(&*new)?;
        if at != offset || now != marker {
            return Err(TargetError::ChangedAfterReset(format!(
                "the block at offset {offset} of {} is not what it held before the reset",
                back.kernel_name
            )));
        }
        tracing::info!(before = %device.kernel_name, after = %back.kernel_name, method = self.method.as_str(), "back from its reset");
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = (back, new);
        Ok(())
    }

    fn open_writer(&self) -> Result<Box<dyn TargetWriter>, TargetError> {
        self.current().1.open_writer()
    }

    fn open_reader(&self) -> Result<Box<dyn TargetReader>, TargetError> {
        self.current().1.open_reader()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs tree with one USB stick (`sdb`) behind hub port 1-1.3.
    fn fake_sysfs(root: &Path) -> PathBuf {
        let usb = root.join("devices/pci0000:00/0000:00:04.0/usb1/1-1/1-1.3");
        let block = usb.join("1-1.3:1.0/host2/target2:0:0/2:0:0:0/block/sdb");
        fs::create_dir_all(&block).unwrap();
        fs::write(usb.join("busnum"), "1\n").unwrap();
        fs::write(usb.join("devnum"), "7\n").unwrap();
        fs::write(usb.join("authorized"), "1\n").unwrap();
        // The hub above has numbers too: the nearest ancestor must win.
        fs::write(
            root.join("devices/pci0000:00/0000:00:04.0/usb1/1-1/busnum"),
            "1\n",
        )
        .unwrap();
        fs::write(
            root.join("devices/pci0000:00/0000:00:04.0/usb1/1-1/devnum"),
            "2\n",
        )
        .unwrap();
        fs::create_dir_all(root.join("class/block")).unwrap();
        std::os::unix::fs::symlink(&block, root.join("class/block/sdb")).unwrap();
        // A disk that is not on USB.
        let vda = root.join("devices/pci0000:00/0000:00:05.0/virtio1/block/vda");
        fs::create_dir_all(&vda).unwrap();
        std::os::unix::fs::symlink(&vda, root.join("class/block/vda")).unwrap();
        usb
    }

    #[test]
    fn a_sticks_usb_device_is_its_nearest_ancestor_with_bus_and_device_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let usb = fake_sysfs(dir.path());
        let found = UsbDevice::of_block(dir.path(), "sdb").unwrap();
        assert_eq!(found.dir, fs::canonicalize(&usb).unwrap());
        assert_eq!((found.busnum, found.devnum), (1, 7));
        assert_eq!(
            found.usbfs_node(Path::new("/dev")),
            Path::new("/dev/bus/usb/001/007")
        );
        assert!(found.is_present());
        // Pulled and plugged again: another device number.
        fs::write(usb.join("devnum"), "9\n").unwrap();
        assert!(!found.is_present());
        fs::remove_dir_all(&usb).unwrap();
        assert!(!found.is_present());
    }

    #[test]
    fn a_reset_that_fails_as_its_stick_is_pulled_is_a_removal_once_the_device_goes() {
        let dir = tempfile::tempdir().unwrap();
        let usb = fake_sysfs(dir.path());
        let found = UsbDevice::of_block(dir.path(), "sdb").unwrap();
        // Still there and staying: not gone, after the grace.
        let began = std::time::Instant::now();
        assert!(!found.gone_within(Duration::from_millis(100)));
        assert!(began.elapsed() >= Duration::from_millis(100));
        // Torn down a moment after the failure: gone within the grace.
        let leaving = usb.clone();
        let pull = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            fs::remove_dir_all(&leaving).unwrap();
        });
        assert!(found.gone_within(Duration::from_secs(10)));
        pull.join().unwrap();
        // Gone already: answered at once.
        let began = std::time::Instant::now();
        assert!(found.gone_within(Duration::from_secs(10)));
        assert!(began.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_disk_off_usb_and_a_bad_name_have_no_usb_device() {
        let dir = tempfile::tempdir().unwrap();
        fake_sysfs(dir.path());
        let vda = UsbDevice::of_block(dir.path(), "vda").unwrap_err();
        assert!(vda.contains("not on a USB device"), "{vda}");
        assert!(UsbDevice::of_block(dir.path(), "sdz").is_err());
        let bad = UsbDevice::of_block(dir.path(), "../sdb").unwrap_err();
        assert!(bad.contains("not a kernel device name"), "{bad}");
    }

    #[test]
    fn the_authorize_reset_writes_zero_then_one() {
        let dir = tempfile::tempdir().unwrap();
        let usb = fake_sysfs(dir.path());
        let found = UsbDevice::of_block(dir.path(), "sdb").unwrap();
        assert!(found.may_reset(ResetMethod::Authorize, Path::new("/nonexistent")));
        // Without the usbfs node, the ioctl's way is not open.
        assert!(!found.may_reset(ResetMethod::Usbdevfs, dir.path()));
        fs::write(usb.join("authorized"), "").unwrap();
        found
            .reset(ResetMethod::Authorize, Path::new("/nonexistent"))
            .unwrap();
        assert_eq!(fs::read_to_string(usb.join("authorized")).unwrap(), "1");
        let error = found.reset(ResetMethod::Usbdevfs, dir.path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn reset_methods_parse_from_their_names_and_nothing_else() {
        for method in [ResetMethod::Authorize, ResetMethod::Usbdevfs] {
            assert_eq!(method.as_str().parse::<ResetMethod>().unwrap(), method);
        }
        let error = "power-cycle".parse::<ResetMethod>().unwrap_err();
        assert!(error.contains("power-cycle"), "{error}");
    }
}
