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
//!
//! A [`ResetLink`] is where a target that resets its stick before the read-back
//! (and sees it leave the system) meets the station (which sees it come back as
//! a hotplug event, under another kernel name, in the same port).
#![deny(missing_docs)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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
    /// A stable key for the stick: its serial, else `vendor/model/bytes`
    /// (`?` for a missing or blank vendor or model; two identical serial-less
    /// sticks of one model share a key, as they must: nothing tells them
    /// apart). The key the records keep the stick under, so that the live
    /// view's key finds its history (`/api/v1/devices/<key>/report`).
    pub fn key(&self) -> String {
        let given = |text: &Option<String>| {
            text.as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        };
        match given(&self.serial) {
            Some(serial) => serial,
            None => format!(
                "{}/{}/{}",
                given(&self.vendor).unwrap_or_else(|| "?".into()),
                given(&self.model).unwrap_or_else(|| "?".into()),
                self.capacity
            ),
        }
    }

    /// Whether the stick reports a serial of its own: its [`key`](Self::key)
    /// is then that serial, not the vendor, model and size that a whole
    /// batch of one model shares.
    pub fn has_serial(&self) -> bool {
        self.serial.as_deref().is_some_and(|s| !s.trim().is_empty())
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

    /// A target for an attempt on `device`, as [`target`](Self::target), that
    /// may also be reset before its read-back: the target waits on `link` for
    /// the station to see the stick come back. The default ignores the link
    /// (a target that cannot be reset needs none).
    fn attempt_target(
        &self,
        device: &PluggedDevice,
        guard: GuardCheck,
        link: ResetLink,
    ) -> Arc<dyn Target> {
        let _ = link;
        self.target(device, guard)
    }
}

/// Why a stick's reset did not bring it back, as the station saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetFailure {
    /// It did not come back within the station's timeout.
    Lost {
        /// Seconds waited.
        after_secs: u64,
    },
    /// Another device came back in its port (what differs, in words).
    Changed(String),
    /// The attempt was stopped (operator, shutdown) while it was away.
    Cancelled,
}

/// Where a stick's reset stands ([`ResetLink`]).
#[derive(Debug, Default)]
enum LinkState {
    /// No reset in progress.
    #[default]
    Idle,
    /// The target began a reset; the stick may leave and come back.
    Resetting,
    /// The station saw the stick come back: the device as it is now.
    Returned(PluggedDevice),
    /// The station gave up on it.
    Failed(ResetFailure),
}

/// The meeting point of a stick's reset before its read-back. The target
/// calls [`begin`](Self::begin) before it touches the stick and then
/// [`wait`](Self::wait)s; the station, which sees the stick leave the system
/// and come back as hotplug events, answers with [`returned`](Self::returned)
/// (the same stick is back, under the name it has now) or
/// [`fail`](Self::fail). While [`is_resetting`](Self::is_resetting), the
/// station treats the stick's removal as part of the attempt, not as a pull.
/// Cheap to clone; every clone is the same link.
#[derive(Debug, Clone, Default)]
pub struct ResetLink(Arc<LinkInner>);

#[derive(Debug, Default)]
struct LinkInner {
    /// A `std` mutex: held only to read or change the state, never across a
    /// wait (the condvar releases it) or I/O. The target waits on a blocking
    /// thread; the station answers from its task without blocking.
    state: Mutex<LinkState>,
    changed: Condvar,
}

impl ResetLink {
    /// A link with no reset in progress.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The target: a reset begins (called before the stick is touched, so that
    /// its removal is never taken for a pull).
    pub fn begin(&self) {
        *self.state() = LinkState::Resetting;
    }

    /// The target: the reset is over without the stick having left the
    /// system (a reset the kernel's driver absorbed), so no answer is
    /// awaited.
    pub fn end(&self) {
        *self.state() = LinkState::Idle;
    }

    /// Whether a reset is in progress and not yet answered.
    pub fn is_resetting(&self) -> bool {
        matches!(*self.state(), LinkState::Resetting)
    }

    /// The station: the stick is back, as `device` (its new kernel name and
    /// disk). Ignored unless a reset is in progress.
    pub fn returned(&self, device: PluggedDevice) {
        let mut state = self.state();
        if matches!(*state, LinkState::Resetting) {
            *state = LinkState::Returned(device);
            self.0.changed.notify_all();
        }
    }

    /// The station: the reset failed. Ignored unless a reset is in progress.
    pub fn fail(&self, why: ResetFailure) {
        let mut state = self.state();
        if matches!(*state, LinkState::Resetting) {
            *state = LinkState::Failed(why);
            self.0.changed.notify_all();
        }
    }

    /// The target: waits for the station's answer, and ends the reset. Every
    /// `poll` it asks `gone` whether the stick was pulled meanwhile (a real
    /// stick's USB device disappeared from its port, a simulated one was
    /// pulled): then the answer is [`TargetError::Removed`]. The station
    /// bounds the wait with its timeout ([`ResetFailure::Lost`]).
    pub fn wait(
        &self,
        gone: impl Fn() -> bool,
        poll: Duration,
    ) -> Result<PluggedDevice, TargetError> {
        let mut state = self.state();
        loop {
            match std::mem::take(&mut *state) {
                LinkState::Returned(device) => return Ok(device),
                LinkState::Failed(why) => {
                    return Err(match why {
                        ResetFailure::Lost { after_secs } => {
                            TargetError::LostAfterReset { after_secs }
                        }
                        ResetFailure::Changed(detail) => TargetError::ChangedAfterReset(detail),
                        ResetFailure::Cancelled => TargetError::Cancelled,
                    })
                }
                LinkState::Idle => return Err(TargetError::Cancelled),
                LinkState::Resetting => *state = LinkState::Resetting,
            }
            if gone() {
                *state = LinkState::Idle;
                return Err(TargetError::Removed);
            }
            state = self
                .0
                .changed
                .wait_timeout(state, poll)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
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
