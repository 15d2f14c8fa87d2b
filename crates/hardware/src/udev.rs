//! The real rack: whole disks as udev reports them, and what the station does with
//! them.
//!
//! - [`UdevSource`] is the [`HotplugSource`] of a real station. It opens a udev
//!   monitor for block disks *first*, then enumerates the disks already present
//!   (reporting each as [`Hotplug::Added`], then [`Hotplug::Enumerated`]), then
//!   follows the monitor. Opening the monitor before enumerating means that no
//!   change is lost between the two; the duplicates this can produce are dropped
//!   (see *Event semantics*).
//! - [`UdevAccess`] is the matching [`DeviceAccess`]: guard facts from sysfs with the
//!   port path from udev, a [`PathTarget`] block device behind the guard, and eject.
//!
//! Every udev type is converted here, at the boundary, into an owned
//! [`PluggedDevice`]; nothing of the `udev` crate leaves this module.
//!
//! # Which devices are reported
//! Only whole disks (subsystem `block`, `DEVTYPE=disk`) that have a medium (their
//! `size` is not 0). Partitions are never reported: writing a partitioned image makes
//! the kernel announce `sdb1`, `sdb2` …, and those are not new sticks. Disks whose
//! kernel name starts with one of [`IGNORED_PREFIXES`] are never reported either:
//! RAM disks (`ram*`, `zram*`), stacked devices (`dm-*`, `md*`) and optical drives
//! (`sr*`) are never sticks. Everything else (including the system disk) *is*
//! reported: telling a stick from a system disk is the target guard's job, and an
//! operator who sees the system disk refused learns more than one who does not see
//! it. [`UdevSource::with_filter`] narrows the events further (a station that only
//! allows some buses, a test that only watches its own devices).
//!
//! # Event semantics
//! The source keeps the set of disks it has reported as present, each with the
//! kernel's disk sequence number (sysfs `diskseq`, which the kernel bumps for every
//! new disk and every new medium). For each udev `add` or `change` event of a disk,
//! and for each disk found at start-up, it works out whether the disk is now
//! *present* (a reportable whole disk with a medium that passes the filter) and
//! compares:
//! - absent before, present now: [`Hotplug::Added`]. This covers a stick plugged in,
//!   a card inserted into an empty reader and a loop device getting a backing file
//!   (size 0 → N);
//! - present before, absent now: [`Hotplug::Removed`] (a card taken out, a loop
//!   device detached: size N → 0);
//! - present before and now, with another disk sequence number: a new medium took
//!   the old one's place without passing through size 0, so [`Hotplug::Removed`]
//!   then [`Hotplug::Added`];
//! - present before and now, same medium, something reported changed (size,
//!   read-only flag, udev properties such as the port path): [`Hotplug::Changed`];
//! - present before and now, nothing changed: nothing. udev sends many such events
//!   (it re-probes a disk every time a writer closes it), and the station must not
//!   see a stick twice.
//!
//! An `add` or `change` event whose `DISKSEQ` is not the one sysfs shows when it is
//! handled belongs to a disk that has been replaced by a newer one of the same name
//! (udev's re-probe of a stick, run while the stick's reset took it away): it
//! reports the old disk's removal, if it was present, and nothing else. Its
//! properties are the old disk's, read while it went away (an `ID_PATH` without
//! its SCSI part was seen in the VM suite), and would put the new disk in a port
//! that does not exist; the new disk's own `add` reports it.
//!
//! A udev `remove` event of a present disk is [`Hotplug::Removed`]; of a disk never
//! reported (empty, filtered) it is nothing, and so is one whose `DISKSEQ` is not
//! the present disk's: that disk was replaced by a newer one of the same name,
//! already reported. `bind`/`unbind` events say nothing about the medium and are
//! ignored.
//!
//! The medium's state (`size`, `diskseq`, `ro`, `removable`) is read from sysfs when
//! the event is handled, not taken from the event: an event may be handled after
//! the medium changed again (the `add` of an empty loop device handled after a file
//! was attached to it), and a state read now, compared with the state read for the
//! previous event, never mixes two moments. The udev properties (`ID_PATH`,
//! `ID_SERIAL_SHORT` …) are the event's: the next event brings newer ones, which are
//! reported as [`Hotplug::Changed`] if they differ.
//!
//! # What the source needs
//! A running `systemd-udevd`: the monitor listens to the events udevd has processed
//! (with `ID_PATH`, `ID_SERIAL_SHORT` … filled in), not to the kernel's raw ones.
//! [`UdevSource`] refuses to start when `/run/udev/control` is missing, which is
//! how libudev itself tells that udevd is running (a stale socket left by a killed
//! udevd fools both; `scripts/test` checks the process). Only disks that udevd has
//! initialized are enumerated at start-up; one still being processed is reported
//! when its event arrives.
//!
//! Blocking calls: [`HotplugSource::run`] blocks its thread in `poll(2)` for at most
//! [`UdevSource::POLL_INTERVAL`] at a time, so that a raised [`StopSignal`] ends it
//! promptly. [`UdevAccess::eject`] blocks (flush, sysfs writes, `losetup`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use flashrack_guard::{DiskFacts, DiskIdentity, GuardCheck, GuardError, Refusal};
use flashrack_hotplug::{
    DeviceAccess, DeviceIdentity, Hotplug, HotplugError, HotplugSource, PluggedDevice, ResetLink,
    StopSignal,
};
use flashrack_target::{Target, TargetError};
use rustix::event::{PollFd, PollFlags, Timespec};
use tokio::sync::mpsc::UnboundedSender;

use crate::block::PathTarget;
use crate::usb_reset::{ResetMethod, UsbStickTarget};

/// Kernel name prefixes of disks that are never sticks and never reported: RAM
/// disks (`ram`, `zram`), device-mapper and md stacks (`dm-`, `md`) and optical
/// drives (`sr`).
pub const IGNORED_PREFIXES: [&str; 5] = ["ram", "zram", "dm-", "md", "sr"];

/// The socket udevd listens on; libudev checks it to tell whether udevd runs.
const UDEV_CONTROL: &str = "/run/udev/control";

/// sysfs reports sizes in 512-byte sectors whatever the device's block size.
const SYSFS_SECTOR: u64 = 512;

/// A predicate on devices: `true` keeps the device in the events.
type DeviceFilter = Box<dyn Fn(&PluggedDevice) -> bool + Send>;

/// The hotplug source of a real station: the udev monitor for whole block disks.
///
/// Run it on a dedicated thread (see [`HotplugSource::run`]). Holds no udev objects
/// until it runs (they are not `Send`), so it can be built on one thread and run on
/// another.
pub struct UdevSource {
    /// Narrows the reported devices; `None` reports every disk (see the module docs).
    filter: Option<DeviceFilter>,
}

impl UdevSource {
    /// How long one `poll(2)` on the monitor waits: the longest a raised
    /// [`StopSignal`] or a closed channel goes unnoticed.
    pub const POLL_INTERVAL: Duration = Duration::from_millis(150);

    /// A source that reports every disk with a medium (see the module docs).
    pub fn new() -> Self {
        UdevSource { filter: None }
    }

    /// A source that reports only the disks `keep` returns `true` for. A present
    /// disk that stops passing the filter (its properties changed) is reported as
    /// removed.
    pub fn with_filter(keep: impl Fn(&PluggedDevice) -> bool + Send + 'static) -> Self {
        UdevSource {
            filter: Some(Box::new(keep)),
        }
    }

    /// The device as the station should see it now, or `None` when it is not a
    /// present, reportable disk.
    fn observe(&self, device: &::udev::Device) -> Option<Seen> {
        let seen = convert(device)?;
        match &self.filter {
            Some(keep) if !keep(&seen.device) => None,
            _ => Some(seen),
        }
    }
}

impl Default for UdevSource {
    fn default() -> Self {
        Self::new()
    }
}

impl HotplugSource for UdevSource {
    fn run(
        self: Box<Self>,
        events: UnboundedSender<Hotplug>,
        stop: StopSignal,
    ) -> Result<(), HotplugError> {
        if !Path::new(UDEV_CONTROL).exists() {
            return Err(HotplugError::Udev(format!(
                "systemd-udevd is not running ({UDEV_CONTROL} is missing)"
            )));
        }
        let udev_error = |what: &str, e: io::Error| HotplugError::Udev(format!("{what}: {e}"));

        // The monitor first, so that nothing happening during the enumeration is lost.
        // The devtype match runs in the kernel (a socket filter): partitions never
        // even wake this thread.
        let socket = ::udev::MonitorBuilder::new()
            .and_then(|m| m.match_subsystem_devtype("block", "disk"))
            .and_then(|m| m.listen())
            .map_err(|e| udev_error("cannot open the udev monitor", e))?;

        let mut present = Present::default();
        let send_all = |batch: Vec<Hotplug>| batch.into_iter().all(|e| events.send(e).is_ok());

        let mut enumerator =
            ::udev::Enumerator::new().map_err(|e| udev_error("cannot enumerate disks", e))?;
        enumerator
            .match_subsystem("block")
            .and_then(|()| enumerator.match_property("DEVTYPE", "disk"))
            .and_then(|()| enumerator.match_is_initialized())
            .map_err(|e| udev_error("cannot enumerate disks", e))?;
        let mut found: Vec<(String, Option<Seen>)> = enumerator
            .scan_devices()
            .map_err(|e| udev_error("cannot enumerate disks", e))?
            .map(|device| (sysname(&device), self.observe(&device)))
            .collect();
        // Sorted so that a rack is reported in a stable order (sda, sdb, …).
        found.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, now) in found {
            if !send_all(present.update(&name, now)) {
                return Ok(());
            }
        }
        if events.send(Hotplug::Enumerated).is_err() {
            return Ok(());
        }
        tracing::debug!(disks = present.len(), "udev enumeration done");

        let interval = Timespec::try_from(Self::POLL_INTERVAL).expect("a short interval");
        while !stop.is_stopped() && !events.is_closed() {
            let mut fds = [PollFd::new(&socket, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&interval)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(udev_error("cannot wait for udev events", e.into())),
            }
            // The socket is non-blocking: the iterator ends when it is drained.
            for event in socket.iter() {
                let name = sysname(&event);
                let reported = match event.event_type() {
                    ::udev::EventType::Remove => {
                        present.update_removed(&name, event_diskseq(&event))
                    }
                    ::udev::EventType::Add | ::udev::EventType::Change => {
                        let now = self.observe(&event);
                        present.update_seen(&name, event_diskseq(&event), now)
                    }
                    _ => continue,
                };
                if !send_all(reported) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The whole disks present now, as [`UdevSource`] reports them at start-up
/// (partitions, empty media and [`IGNORED_PREFIXES`] left out), in kernel name
/// order: what `flashrack devices` lists.
pub fn present_disks() -> Result<Vec<PluggedDevice>, HotplugError> {
    if !Path::new(UDEV_CONTROL).exists() {
        return Err(HotplugError::Udev(format!(
            "systemd-udevd is not running ({UDEV_CONTROL} is missing)"
        )));
    }
    let udev_error = |e: io::Error| HotplugError::Udev(format!("cannot enumerate disks: {e}"));
    // Disks udev has not processed yet are listed too, with what the kernel
    // knows of them (the station waits for udev; a list should not hide a disk).
    let mut enumerator = ::udev::Enumerator::new().map_err(udev_error)?;
    enumerator
        .match_subsystem("block")
        .and_then(|()| enumerator.match_property("DEVTYPE", "disk"))
        .map_err(udev_error)?;
    let mut disks: Vec<PluggedDevice> = enumerator
        .scan_devices()
        .map_err(udev_error)?
        .filter_map(|device| convert(&device))
        .map(|seen| seen.device)
        .collect();
    disks.sort_by(|a, b| a.kernel_name.cmp(&b.kernel_name));
    Ok(disks)
}

/// A disk as last reported, with the medium it had.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// The kernel's disk sequence number (read from sysfs with the size), when known:
    /// a new one means a new medium.
    diskseq: Option<u64>,
    /// What was reported.
    device: PluggedDevice,
}

/// The disks reported as present, by kernel name. Only the source's thread uses it.
#[derive(Debug, Default)]
struct Present(HashMap<String, Seen>);

impl Present {
    fn len(&self) -> usize {
        self.0.len()
    }

    /// Records a udev `add` or `change` event of disk `name`, whose disk
    /// sequence number was `event_diskseq` (the event's `DISKSEQ`, when it has
    /// one), as sysfs shows the disk now (`now`).
    ///
    /// An event of a disk that has been replaced by a newer one of the same
    /// name by the time it is handled (its `DISKSEQ` is not the one sysfs shows
    /// now) reports the old disk's removal only: its properties are the old
    /// disk's, which udev read while that disk went away (udev's re-probe
    /// after a writer closed it, as a stick is reset, with an `ID_PATH` that
    /// can lack its SCSI part), and are not the new disk's. The new disk is
    /// reported by its own `add`, which follows with its own properties.
    fn update_seen(
        &mut self,
        name: &str,
        event_diskseq: Option<u64>,
        now: Option<Seen>,
    ) -> Vec<Hotplug> {
        match (event_diskseq, now.as_ref().and_then(|seen| seen.diskseq)) {
            (Some(event), Some(live)) if event != live => {
                tracing::debug!(
                    disk = name,
                    event,
                    live,
                    "event of a disk already replaced: its removal only"
                );
                self.update_removed(name, Some(event))
            }
            _ => self.update(name, now),
        }
    }

    /// Records a udev `remove` event of disk `name`, whose disk sequence number
    /// was `diskseq` (the event's `DISKSEQ`, when it has one). The removal of a
    /// disk already replaced in the record by a newer one of the same name is
    /// nothing: the new disk was reported by then (see
    /// [`update_seen`](Self::update_seen): an `add` or `change` of the old disk
    /// handled after the new one appeared reported the old one removed, and
    /// the new one's `add` reported it).
    fn update_removed(&mut self, name: &str, diskseq: Option<u64>) -> Vec<Hotplug> {
        let stale = matches!(
            (self.0.get(name).and_then(|seen| seen.diskseq), diskseq),
            (Some(present), Some(removed)) if present != removed
        );
        if stale {
            tracing::debug!(disk = name, ?diskseq, "removal of a disk already replaced");
            return vec![];
        }
        self.update(name, None)
    }

    /// Records that disk `name` is now `now` (`None`: absent) and returns the events
    /// that tell the station so (see *Event semantics* in the module docs).
    fn update(&mut self, name: &str, now: Option<Seen>) -> Vec<Hotplug> {
        let removed = || Hotplug::Removed {
            kernel_name: name.to_owned(),
        };
        match (self.0.remove(name), now) {
            (None, None) => vec![],
            (Some(_), None) => vec![removed()],
            (None, Some(now)) => {
                let event = Hotplug::Added(now.device.clone());
                self.0.insert(name.to_owned(), now);
                vec![event]
            }
            (Some(before), Some(now)) => {
                let new_medium = matches!(
                    (before.diskseq, now.diskseq),
                    (Some(a), Some(b)) if a != b
                );
                let events = if new_medium {
                    vec![removed(), Hotplug::Added(now.device.clone())]
                } else if before.device != now.device {
                    vec![Hotplug::Changed(now.device.clone())]
                } else {
                    vec![]
                };
                self.0.insert(name.to_owned(), now);
                events
            }
        }
    }
}

/// Gives each device below a loop device in `facts` (a loop device over a
/// block device, followed down) the port path udev knows for it: sysfs does
/// not know it, and without it the guard judged the device below as in an
/// unknown port, which named the wrong reason first (a stick in a mapped
/// port, mounted, refused as "the device's port is unknown").
fn fill_ports_below(facts: &mut DiskFacts) {
    for backing in &mut facts.loop_backings {
        if let Some(below) = backing.below.as_deref_mut() {
            if below.port_path.is_none() {
                below.port_path = udev_port_path(&below.kernel_name);
            }
            fill_ports_below(below);
        }
    }
}

/// The port path (`ID_PATH`) udev's database holds for block device
/// `kernel_name`, if any.
fn udev_port_path(kernel_name: &str) -> Option<String> {
    let device = ::udev::Device::from_subsystem_sysname("block".into(), kernel_name.into()).ok()?;
    device
        .property_value("ID_PATH")
        .map(|v| v.to_string_lossy().trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether a block device of this `devtype` named `name` can be a stick at all.
fn is_candidate(devtype: Option<&str>, name: &str) -> bool {
    devtype == Some("disk")
        && !name.is_empty()
        && !IGNORED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The kernel name of a udev device.
/// The disk sequence number a udev event carries (`DISKSEQ`, Linux 5.15 and
/// later), if any.
fn event_diskseq(device: &::udev::Device) -> Option<u64> {
    device
        .property_value("DISKSEQ")
        .and_then(|value| value.to_str())
        .and_then(|value| value.trim().parse().ok())
}

fn sysname(device: &::udev::Device) -> String {
    device.sysname().to_string_lossy().into_owned()
}

/// Converts a udev device into what the station sees, or `None` when it is not a
/// reportable disk with a medium.
fn convert(device: &::udev::Device) -> Option<Seen> {
    let name = sysname(device);
    if device.subsystem() != Some(OsStr::new("block"))
        || !is_candidate(device.devtype().and_then(OsStr::to_str), &name)
    {
        return None;
    }
    let property = |key: &str| {
        device
            .property_value(key)
            .map(|v| v.to_string_lossy().trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let attribute = |key: &str| {
        device
            .attribute_value(key)
            .map(|v| v.to_string_lossy().trim().to_owned())
    };
    let sectors: u64 = attribute("size")?.parse().ok()?;
    if sectors == 0 {
        return None;
    }
    let text = |enc: &str, plain: &str| {
        property(enc)
            .map(|v| decode_udev_string(&v))
            .or_else(|| property(plain).map(|v| v.replace('_', " ")))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let bus = property("ID_BUS").or_else(|| name.starts_with("loop").then(|| "loop".to_owned()));
    let device_out = PluggedDevice {
        dev_path: device
            .devnode()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/dev").join(&name)),
        port_path: property("ID_PATH"),
        bus,
        identity: DeviceIdentity {
            serial: property("ID_SERIAL_SHORT"),
            vendor: text("ID_VENDOR_ENC", "ID_VENDOR"),
            model: text("ID_MODEL_ENC", "ID_MODEL"),
            capacity: sectors.saturating_mul(SYSFS_SECTOR),
        },
        removable: attribute("removable").as_deref() == Some("1"),
        read_only: attribute("ro").as_deref() == Some("1"),
        kernel_name: name,
        disk: None,
    };
    // Live, like `size` (see the module docs): the event's `DISKSEQ` property may be
    // older than the size read above. Kernels before 5.16 have no `diskseq`: a new
    // medium is then only told by the size dropping to 0 in between.
    let diskseq = attribute("diskseq").and_then(|v| v.parse().ok());
    let devnum = device.devnum()?;
    let device_out = PluggedDevice {
        disk: Some(DiskIdentity {
            major: rustix::fs::major(devnum),
            minor: rustix::fs::minor(devnum),
            diskseq,
        }),
        ..device_out
    };
    Some(Seen {
        diskseq,
        device: device_out,
    })
}

/// Undoes udev's string encoding (`ID_VENDOR_ENC`, `ID_MODEL_ENC`): every byte
/// outside a safe set is written as `\xNN`.
fn decode_udev_string(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 2..i + 4)
            .filter(|_| bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x'))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(byte) => {
                out.push(byte);
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

/// The [`DeviceAccess`] of a real station: devices reported by [`UdevSource`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UdevAccess {
    /// How an attempt's USB stick is reset before its read-back.
    reset_method: ResetMethod,
}

impl UdevAccess {
    /// The access of a real station (USB sticks reset through sysfs
    /// `authorized`, when the engine asks for a reset).
    pub fn new() -> Self {
        UdevAccess::default()
    }

    /// The access of a real station that resets USB sticks with `method`.
    pub fn with_reset_method(method: ResetMethod) -> Self {
        UdevAccess {
            reset_method: method,
        }
    }
}

impl DeviceAccess for UdevAccess {
    /// [`DiskFacts::inspect`] of the device node, with the port path udev reported
    /// (sysfs does not know it); refused when the node leads to another disk than
    /// the one reported.
    fn facts(&self, device: &PluggedDevice) -> Result<DiskFacts, GuardError> {
        let mut facts = DiskFacts::inspect(&device.dev_path)?;
        if let Some(expected) = device.disk {
            if facts.identity() != expected {
                return Err(Refusal::IdentityChanged {
                    expected,
                    found: facts.identity(),
                }
                .into());
            }
        }
        facts.port_path = device.port_path.clone();
        fill_ports_below(&mut facts);
        Ok(facts)
    }

    /// A block device target pinned to the reported disk (to the disk the node
    /// leads to now for a device reported without one).
    fn target(&self, device: &PluggedDevice, guard: GuardCheck) -> Arc<dyn Target> {
        Arc::new(match device.disk {
            Some(pin) => PathTarget::pinned_block_device(device.dev_path.clone(), pin, guard),
            None => PathTarget::block_device(device.dev_path.clone(), guard),
        })
    }

    /// For a USB stick, a [`UsbStickTarget`]: a pinned block target that can
    /// reset the stick before its read-back and waits on `link` for the
    /// station to see it come back. Other disks get [`target`](Self::target).
    fn attempt_target(
        &self,
        device: &PluggedDevice,
        guard: GuardCheck,
        link: ResetLink,
    ) -> Arc<dyn Target> {
        if device.bus.as_deref() == Some("usb") && device.disk.is_some() {
            Arc::new(UsbStickTarget::new(device, guard, link, self.reset_method))
        } else {
            self.target(device, guard)
        }
    }

    /// Flushes the device, then asks the kernel to let go of it:
    ///
    /// 1. refuses (nothing is done) a device that is mounted, used as swap, held by a
    ///    stack ([`TargetError::Busy`]) or that holds a mounted filesystem
    ///    ([`TargetError::Refused`]): ejecting the system disk must be impossible;
    /// 2. `fsync(2)` on a fresh handle: the kernel writes back the device's dirty
    ///    buffers and sends the disk a cache flush;
    /// 3. a SCSI-backed disk (every USB stick: `usb-storage` and `uas` are SCSI) is
    ///    deleted by writing `1` to `/sys/block/<name>/device/delete`, which stops
    ///    and detaches it as a safe-removal would (the USB port itself stays
    ///    powered and authorized: re-plugging the stick brings it back);
    /// 4. a loop device is detached (`losetup -d`, `LOOP_CLR_FD`): that is what
    ///    "eject" means for the loop devices of tests. The device node stays; its
    ///    size drops to 0, which [`UdevSource`] reports as [`Hotplug::Removed`].
    ///
    /// A device that is already gone is [`TargetError::Removed`]; a disk that is
    /// neither SCSI nor loop (NVMe, MMC) cannot be ejected by software, and that,
    /// like any other failure, is [`TargetError::Open`] with the reason.
    fn eject(&self, device: &PluggedDevice) -> Result<(), TargetError> {
        let name = &device.kernel_name;
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(TargetError::Open(format!(
                "cannot eject {name:?}: not a kernel device name"
            )));
        }
        let gone = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => TargetError::Removed,
            _ => TargetError::from_io(0, e),
        };
        let facts = DiskFacts::inspect(&device.dev_path).map_err(|e| match e {
            GuardError::Io { source, .. } => gone(source),
            other => TargetError::Open(format!("cannot eject {name}: {other}")),
        })?;
        refuse_busy(&facts)?;

        let file = File::open(&device.dev_path).map_err(gone)?;
        if !file.metadata().map_err(gone)?.file_type().is_block_device() {
            return Err(TargetError::Open(format!(
                "cannot eject {name}: {} is not a block device",
                device.dev_path.display()
            )));
        }
        file.sync_all().map_err(gone)?;
        drop(file);

        if name.starts_with("loop") {
            return detach_loop(name, &device.dev_path);
        }
        let delete = Path::new("/sys/block").join(name).join("device/delete");
        if !delete.exists() {
            return Err(TargetError::Open(format!(
                "cannot eject {name}: it is not a SCSI disk ({} is missing); it was flushed \
                 and can be pulled once it is idle",
                delete.display()
            )));
        }
        fs::write(&delete, "1").map_err(|e| {
            TargetError::Open(format!(
                "cannot eject {name}: writing {}: {e}",
                delete.display()
            ))
        })
    }
}

/// Refuses to eject a device that something else uses (guard rules 3 and 4).
fn refuse_busy(facts: &DiskFacts) -> Result<(), TargetError> {
    if let Some(mount) = facts.mounted.first() {
        return Err(TargetError::Busy(format!(
            "{} is mounted at {}",
            mount.device, mount.mount_point
        )));
    }
    if let Some(swap) = facts.swap.first() {
        return Err(TargetError::Busy(format!("{swap} is in use as swap")));
    }
    if !facts.holders.is_empty() {
        return Err(TargetError::Busy(format!(
            "held by {}",
            facts.holders.join(", ")
        )));
    }
    if let Some(why) = &facts.system_disk {
        return Err(TargetError::Refused(
            Refusal::SystemDisk {
                why: format!("{why}; it is not ejected"),
            }
            .into(),
        ));
    }
    Ok(())
}

/// Detaches loop device `name` at `path` with `losetup -d`.
fn detach_loop(name: &str, path: &Path) -> Result<(), TargetError> {
    let output = Command::new("losetup")
        .arg("-d")
        .arg(path)
        .output()
        .map_err(|e| TargetError::Open(format!("cannot eject {name}: cannot run losetup: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(TargetError::Open(format!(
            "cannot eject {name}: losetup -d failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stick(name: &str, serial: &str, capacity: u64) -> PluggedDevice {
        PluggedDevice {
            kernel_name: name.to_owned(),
            dev_path: PathBuf::from("/dev").join(name),
            port_path: Some("pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0".to_owned()),
            bus: Some("usb".to_owned()),
            identity: DeviceIdentity {
                serial: Some(serial.to_owned()),
                vendor: Some("Vendor".to_owned()),
                model: Some("Model".to_owned()),
                capacity,
            },
            removable: true,
            read_only: false,
            disk: Some(DiskIdentity {
                major: 8,
                minor: 16,
                diskseq: Some(7),
            }),
        }
    }

    fn seen(diskseq: u64, device: &PluggedDevice) -> Option<Seen> {
        Some(Seen {
            diskseq: Some(diskseq),
            device: device.clone(),
        })
    }

    #[test]
    fn a_disk_appearing_is_added_and_disappearing_is_removed() {
        let mut present = Present::default();
        let a = stick("sdb", "A", 1000);
        assert_eq!(present.update("sdb", seen(7, &a)), [Hotplug::Added(a)]);
        assert_eq!(
            present.update("sdb", None),
            [Hotplug::Removed {
                kernel_name: "sdb".to_owned()
            }]
        );
        assert_eq!(present.update("sdb", None), []);
    }

    #[test]
    fn a_repeated_event_with_nothing_new_is_dropped() {
        let mut present = Present::default();
        let a = stick("sdb", "A", 1000);
        present.update("sdb", seen(7, &a));
        assert_eq!(present.update("sdb", seen(7, &a)), []);
    }

    #[test]
    fn a_property_change_on_the_same_medium_is_changed() {
        let mut present = Present::default();
        let a = stick("sdb", "A", 1000);
        present.update("sdb", seen(7, &a));
        let read_only = PluggedDevice {
            read_only: true,
            ..a
        };
        assert_eq!(
            present.update("sdb", seen(7, &read_only)),
            [Hotplug::Changed(read_only)]
        );
    }

    #[test]
    fn a_new_medium_without_an_empty_step_is_removed_then_added() {
        let mut present = Present::default();
        present.update("mmcblk0", seen(7, &stick("mmcblk0", "A", 1000)));
        let b = stick("mmcblk0", "B", 2000);
        assert_eq!(
            present.update("mmcblk0", seen(8, &b)),
            [
                Hotplug::Removed {
                    kernel_name: "mmcblk0".to_owned()
                },
                Hotplug::Added(b)
            ]
        );
    }

    #[test]
    fn an_event_of_a_disk_already_replaced_reports_its_removal_only() {
        // A stick reset: udev's re-probe of the old sdb (diskseq 7), run while
        // that disk went away, is handled once the new sdb (8) is in sysfs. Its
        // properties are the old disk's, half read: its ID_PATH lacks the SCSI
        // part. It reports the old disk's removal, never a disk in another port.
        let mut present = Present::default();
        let a = stick("sdb", "A", 1000);
        present.update("sdb", seen(7, &a));
        let half_read = PluggedDevice {
            port_path: Some("pci-0000:00:14.0-usb-0:1:1.0".to_owned()),
            ..a.clone()
        };
        let removed = [Hotplug::Removed {
            kernel_name: "sdb".to_owned(),
        }];
        assert_eq!(
            present.update_seen("sdb", Some(7), seen(8, &half_read)),
            removed
        );
        // The kernel's remove of the old disk is nothing more.
        assert_eq!(present.update_removed("sdb", Some(7)), []);
        assert_eq!(present.update_seen("sdb", Some(7), seen(8, &half_read)), []);
        // The new disk's own add reports it, with its own properties.
        assert_eq!(
            present.update_seen("sdb", Some(8), seen(8, &a)),
            [Hotplug::Added(a.clone())]
        );
        assert_eq!(present.update_seen("sdb", Some(8), seen(8, &a)), []);
        // An event without DISKSEQ (kernels before 5.15) is taken as it is.
        assert_eq!(present.update_seen("sdb", None, seen(8, &a)), []);
    }

    #[test]
    fn the_removal_of_a_disk_already_replaced_is_nothing() {
        // A stick reset, with the old disk's events handled once the new sdb
        // (diskseq 8) is there: an event without DISKSEQ reads the new disk's
        // state and reports the swap; the kernel's remove of the old disk (7)
        // is nothing then.
        let mut present = Present::default();
        let a = stick("sdb", "A", 1000);
        present.update("sdb", seen(7, &a));
        assert_eq!(
            present.update_seen("sdb", None, seen(8, &a)),
            [
                Hotplug::Removed {
                    kernel_name: "sdb".to_owned()
                },
                Hotplug::Added(a.clone())
            ]
        );
        assert_eq!(present.update_removed("sdb", Some(7)), []);
        assert_eq!(present.update("sdb", seen(8, &a)), []);
        // The new disk's own removal, or one without DISKSEQ, is a removal.
        let removed = [Hotplug::Removed {
            kernel_name: "sdb".to_owned(),
        }];
        assert_eq!(present.update_removed("sdb", Some(8)), removed);
        present.update("sdb", seen(9, &a));
        assert_eq!(present.update_removed("sdb", None), removed);
        assert_eq!(present.update_removed("sdb", Some(9)), []);
    }

    #[test]
    fn partitions_and_never_sticks_are_not_candidates() {
        assert!(is_candidate(Some("disk"), "sdb"));
        assert!(is_candidate(Some("disk"), "loop3"));
        assert!(is_candidate(Some("disk"), "mmcblk0"));
        assert!(!is_candidate(Some("partition"), "sdb1"));
        assert!(!is_candidate(None, "sdb"));
        for name in ["ram0", "zram0", "dm-0", "md127", "sr0"] {
            assert!(!is_candidate(Some("disk"), name), "{name}");
        }
    }

    #[test]
    fn udev_encoded_strings_are_decoded() {
        assert_eq!(decode_udev_string("SanDisk\\x20"), "SanDisk ");
        assert_eq!(
            decode_udev_string("Cruzer\\x20Blade\\x20\\x20"),
            "Cruzer Blade  "
        );
        assert_eq!(decode_udev_string("K\\xc3\\xb6nig"), "König");
        assert_eq!(decode_udev_string("bad\\x2"), "bad\\x2");
        assert_eq!(decode_udev_string("\\xZZ"), "\\xZZ");
    }
}
