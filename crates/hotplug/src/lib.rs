//! Hotplug: sticks appearing and disappearing, as owned domain events.
//!
//! A [`HotplugSource`] (the real udev monitor, or the simulated rack) runs on its
//! own thread and sends [`Hotplug`] events: first every disk already present, then
//! [`Hotplug::Enumerated`], then changes as they happen. Foreign types (udev
//! devices, sysfs paths) are converted at this boundary into plain values that
//! tests can build with ordinary constructors.
//!
//! A [`DeviceAccess`] turns a plugged device into what the station needs: the facts
//! the target guard judges, a [`Target`] to write, and a way to eject it.
#![deny(missing_docs)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use flashrack_guard::{DiskFacts, DiskIdentity, GuardCheck, GuardError};
use flashrack_target::{Target, TargetError};
use tokio::sync::mpsc::UnboundedSender;

/// Who a stick is, as the system reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceIdentity {
    /// Serial number (udev `ID_SERIAL_SHORT`), if the stick reports one.
    pub serial: Option<String>,
    /// Vendor (udev `ID_VENDOR`).
    pub vendor: Option<String>,
    /// Model (udev `ID_MODEL`).
    pub model: Option<String>,
    /// Reported capacity in bytes.
    pub capacity: u64,
}

impl DeviceIdentity {
    /// A stable key for the stick: its serial, else vendor, model and size (two
    /// identical serial-less sticks of one model share a key, as they must: nothing
    /// tells them apart).
    pub fn key(&self) -> String {
        match &self.serial {
            Some(serial) if !serial.trim().is_empty() => serial.trim().to_string(),
            _ => format!(
                "{}:{}:{}",
                self.vendor.as_deref().unwrap_or("unknown"),
                self.model.as_deref().unwrap_or("unknown"),
                self.capacity
            ),
        }
    }
}

/// A whole disk that is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluggedDevice {
    /// The kernel's name for it (`sdb`, `loop3`) or the simulated rack's (`sim-A1`);
    /// unique among present devices, reused after removal.
    pub kernel_name: String,
    /// The device node (`/dev/sdb`); for a simulated stick, its backing file.
    pub dev_path: PathBuf,
    /// The stable physical port path (udev `ID_PATH`), which the port map turns
    /// into a label.
    pub port_path: Option<String>,
    /// The bus (udev `ID_BUS`: `usb`, `ata`, …; `loop` for loop devices).
    pub bus: Option<String>,
    /// Serial, vendor, model, capacity.
    pub identity: DeviceIdentity,
    /// Whether the kernel calls it removable.
    pub removable: bool,
    /// Whether the kernel reports it read-only.
    pub read_only: bool,
    /// Which disk this is: device number and the kernel's disk sequence number,
    /// read when the event was handled. Every check and every open of the device
    /// must find this disk behind its name, or refuse it (another disk took the
    /// name). `None` for a simulated stick, which has no kernel device.
    pub disk: Option<DiskIdentity>,
}

/// Something that happened on the rack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hotplug {
    /// A disk appeared (or was present at start-up).
    Added(PluggedDevice),
    /// A present disk changed (size, media, read-only flag).
    Changed(PluggedDevice),
    /// A disk went away.
    Removed {
        /// Its kernel name.
        kernel_name: String,
    },
    /// Every disk present at start-up has been reported.
    Enumerated,
}

/// Tells a running source to stop. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    /// A signal not yet raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the source to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether stop was asked.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A source of hotplug events.
pub trait HotplugSource: Send + 'static {
    /// Runs until `stop` is raised or `events` is closed, on the calling thread
    /// (the caller gives it a dedicated one). Sends every present disk, then
    /// [`Hotplug::Enumerated`], then changes. Returns an error only if the source
    /// cannot run at all.
    fn run(
        self: Box<Self>,
        events: UnboundedSender<Hotplug>,
        stop: StopSignal,
    ) -> Result<(), HotplugError>;
}

/// What the station does with a plugged device.
pub trait DeviceAccess: Send + Sync {
    /// The facts the target guard judges, gathered now; refused
    /// ([`Refusal::IdentityChanged`](flashrack_guard::Refusal::IdentityChanged)) when
    /// the device's name no longer leads to [`PluggedDevice::disk`].
    fn facts(&self, device: &PluggedDevice) -> Result<DiskFacts, GuardError>;

    /// A target for writing `device` (pinned to [`PluggedDevice::disk`]); `guard`
    /// runs again at the moment it is opened, on the facts of the device opened.
    fn target(&self, device: &PluggedDevice, guard: GuardCheck) -> Arc<dyn Target>;

    /// Asks the system to let go of the device so it can be pulled safely.
    fn eject(&self, device: &PluggedDevice) -> Result<(), TargetError>;
}

/// A hotplug source that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The udev monitor could not be set up.
    #[error("cannot watch udev: {0}")]
    Udev(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}
