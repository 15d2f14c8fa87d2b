//! The simulated rack as a hotplug source: sticks plugged into and pulled out of
//! simulated ports, reported as the same [`Hotplug`] events the udev monitor
//! sends, so that every station feature runs without hardware.
//!
//! [`sim_rack`] returns three parts that share one rack:
//! - [`SimHotplug`], the [`HotplugSource`] (run it on its own thread);
//! - [`SimRackControl`], which plugs and pulls sticks (tests, the demo);
//! - [`SimAccess`], the [`DeviceAccess`]: synthesized guard facts (a USB disk,
//!   never mounted), the stick itself as the target behind the guard, and eject.
//!
//! A stick reset by an attempt through the station ([`DeviceAccess::attempt_target`])
//! behaves as a real one: its cache is dropped, it leaves the system (a removal
//! event) and comes back under a new kernel name in the same port (an add
//! event), and its target waits on the attempt's [`ResetLink`] for the station
//! to recognise it. What it does instead is its port's [`ResetReturn`]
//! ([`SimRackControl::on_reset`]): come back as another stick, never come back,
//! or stay away until the test brings it back or pulls it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashrack_guard::{DiskFacts, GuardCheck, GuardError};
use flashrack_hotplug::{
    DeviceAccess, DeviceIdentity, Hotplug, HotplugError, HotplugSource, PluggedDevice, ResetLink,
    StopSignal,
};
use flashrack_target::{Target, TargetError, TargetGeometry, TargetReader, TargetWriter};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::sim::{SimStick, SimStickSpec};

/// One present simulated stick.
struct Present {
    device: PluggedDevice,
    stick: SimStick,
}

/// The rack's shared state. A `std` mutex: held only to look up or change the map,
/// never across I/O.
#[derive(Default)]
struct Rack {
    present: HashMap<String, Present>,
    next_index: u32,
    /// What a reset does to the stick in a port, by port path (absent:
    /// [`ResetReturn::Same`]).
    reset_plans: HashMap<String, ResetReturn>,
    /// Sticks away from the system after a reset, by port path.
    away: HashMap<String, Present>,
    /// Whether a new stick takes the lowest kernel name no stick in the
    /// system has, as the kernel's `sdX` names are reused
    /// ([`SimRackControl::reuse_kernel_names`]).
    reuse_names: bool,
    /// Media files made so far: each stick's file has a name of its own,
    /// whatever its kernel name.
    media: u32,
}

impl Rack {
    /// A new kernel name: never reused unless the rack was told to
    /// ([`SimRackControl::reuse_kernel_names`]).
    fn next_name(&mut self) -> String {
        if self.reuse_names {
            return (1..)
                .map(|n| format!("sim{n}"))
                .find(|name| !self.present.contains_key(name))
                .expect("a free name");
        }
        self.next_index += 1;
        format!("sim{}", self.next_index)
    }
}

/// Brings the stick away in its reset in the port with `port_path` back under
/// a new kernel name, which it returns.
fn return_away(
    rack: &Mutex<Rack>,
    commands: &UnboundedSender<Command>,
    port_path: &str,
) -> Result<String, SimRackError> {
    let mut rack = rack.lock().unwrap_or_else(|p| p.into_inner());
    let mut present = rack
        .away
        .remove(port_path)
        .ok_or_else(|| SimRackError::NotPresent(port_path.to_string()))?;
    let kernel_name = rack.next_name();
    present.device.kernel_name = kernel_name.clone();
    let device = present.device.clone();
    rack.present.insert(kernel_name.clone(), present);
    let _ = commands.send(Command::Plug(device));
    Ok(kernel_name)
}

/// What a simulated stick does when an attempt resets it through the station.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResetReturn {
    /// It leaves the system and comes back at once under a new kernel name,
    /// as a real stick re-enumerates.
    #[default]
    Same,
    /// Another stick comes back in its place: the same medium under another
    /// serial.
    Different {
        /// The serial it comes back with.
        serial: String,
    },
    /// It leaves and never comes back.
    Never,
    /// It leaves and stays away until the test brings it back
    /// ([`SimRackControl::return_held`]) or pulls it
    /// ([`SimRackControl::pull_held`]).
    Held,
    /// It leaves and comes back by itself after this long, under a new
    /// kernel name (a real stick re-enumerates in about half a second), unless
    /// it was pulled meanwhile ([`SimRackControl::pull_held`]).
    After(Duration),
    /// It leaves the system, and the reset itself does not return (a reset
    /// stuck in the kernel: a real stick pulled while its de-authorization
    /// syncs its cache keeps the sysfs write blocked for a minute) until the
    /// test pulls it ([`SimRackControl::pull_held`]); the target then fails
    /// as removed, never having waited for the station's answer.
    Stuck,
}

enum Command {
    Plug(PluggedDevice),
    Pull(String),
}

/// Creates a simulated rack whose sticks' media live in `dir`.
pub fn sim_rack(dir: impl Into<PathBuf>) -> (SimHotplug, SimRackControl, SimAccess) {
    let rack = Arc::new(Mutex::new(Rack::default()));
    let (tx, rx) = mpsc::unbounded_channel();
    let tx_for_access = tx.clone();
    (
        SimHotplug { commands: rx },
        SimRackControl {
            rack: rack.clone(),
            commands: tx,
            dir: dir.into(),
        },
        SimAccess {
            rack,
            commands: tx_for_access,
        },
    )
}

/// The hotplug source of a simulated rack.
pub struct SimHotplug {
    commands: UnboundedReceiver<Command>,
}

impl HotplugSource for SimHotplug {
    fn run(
        mut self: Box<Self>,
        events: UnboundedSender<Hotplug>,
        stop: StopSignal,
    ) -> Result<(), HotplugError> {
        // A new rack is empty: enumeration is immediate.
        if events.send(Hotplug::Enumerated).is_err() {
            return Ok(());
        }
        while !stop.is_stopped() {
            match self.commands.try_recv() {
                Ok(Command::Plug(device)) => {
                    if events.send(Hotplug::Added(device)).is_err() {
                        return Ok(());
                    }
                }
                Ok(Command::Pull(kernel_name)) => {
                    if events.send(Hotplug::Removed { kernel_name }).is_err() {
                        return Ok(());
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    // Nobody can plug anything any more; wait for stop.
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }
}

/// Plugs and pulls simulated sticks. Cheap to clone.
#[derive(Clone)]
pub struct SimRackControl {
    rack: Arc<Mutex<Rack>>,
    commands: UnboundedSender<Command>,
    dir: PathBuf,
}

/// Why a simulated stick could not be plugged.
#[derive(Debug, thiserror::Error)]
pub enum SimRackError {
    /// Something is already plugged into that port.
    #[error("port {0} is occupied")]
    PortOccupied(String),
    /// The stick's medium could not be created.
    #[error("cannot create the simulated stick: {0}")]
    Create(#[from] std::io::Error),
    /// No stick with that kernel name is present.
    #[error("no simulated stick {0} is plugged in")]
    NotPresent(String),
}

impl SimRackControl {
    /// Plugs a stick built from `spec` into the port with `port_path`, with the
    /// given serial (vendor "Flashrack", model "Sim Stick"). Returns its kernel name.
    pub fn plug(
        &self,
        port_path: &str,
        serial: &str,
        spec: SimStickSpec,
    ) -> Result<String, SimRackError> {
        let mut rack = self.rack.lock().unwrap_or_else(|p| p.into_inner());
        if rack
            .present
            .values()
            .any(|p| p.device.port_path.as_deref() == Some(port_path))
        {
            return Err(SimRackError::PortOccupied(port_path.to_string()));
        }
        if rack.away.contains_key(port_path) {
            return Err(SimRackError::PortOccupied(port_path.to_string()));
        }
        let kernel_name = rack.next_name();
        std::fs::create_dir_all(&self.dir)?;
        rack.media += 1;
        let backing = self.dir.join(format!("stick{}.img", rack.media));
        let read_only = spec.read_only;
        let capacity = spec.capacity;
        let stick = SimStick::create(spec.name(kernel_name.clone()), &backing)?;
        let device = PluggedDevice {
            kernel_name: kernel_name.clone(),
            dev_path: backing,
            port_path: Some(port_path.to_string()),
            bus: Some("usb".into()),
            identity: DeviceIdentity {
                serial: Some(serial.to_string()),
                vendor: Some("Flashrack".into()),
                model: Some("Sim Stick".into()),
                capacity,
            },
            removable: true,
            read_only,
            disk: None,
        };
        rack.present.insert(
            kernel_name.clone(),
            Present {
                device: device.clone(),
                stick,
            },
        );
        let _ = self.commands.send(Command::Plug(device));
        Ok(kernel_name)
    }

    /// Pulls the stick out: its in-flight I/O fails as removed, its medium is
    /// deleted, and the source reports it gone.
    pub fn pull(&self, kernel_name: &str) -> Result<(), SimRackError> {
        let present = self
            .rack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .present
            .remove(kernel_name)
            .ok_or_else(|| SimRackError::NotPresent(kernel_name.to_string()))?;
        present.stick.remove();
        let _ = std::fs::remove_file(&present.device.dev_path);
        let _ = self.commands.send(Command::Pull(kernel_name.to_string()));
        Ok(())
    }

    /// Sets what a reset through the station does to the stick in the port
    /// with `port_path` (from the next reset on; the default is
    /// [`ResetReturn::Same`]).
    pub fn on_reset(&self, port_path: &str, plan: ResetReturn) {
        self.rack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset_plans
            .insert(port_path.to_string(), plan);
    }

    /// From now on a new stick (plugged, or back from a reset) takes the
    /// lowest kernel name no stick in the system has, as a real kernel gives
    /// a new disk the first free `sdX`: a name may then be that of a stick
    /// that left the system while something of it was still held.
    pub fn reuse_kernel_names(&self) {
        self.rack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reuse_names = true;
    }

    /// Whether the stick of the port with `port_path` is away from the system
    /// in a reset.
    pub fn is_away(&self, port_path: &str) -> bool {
        self.rack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .away
            .contains_key(port_path)
    }

    /// Brings a stick held away in its reset ([`ResetReturn::Held`]) back under
    /// a new kernel name, which it returns.
    pub fn return_held(&self, port_path: &str) -> Result<String, SimRackError> {
        return_away(&self.rack, &self.commands, port_path)
    }

    /// Pulls a stick that is away in its reset out of its port: it never comes
    /// back, and its target's wait ends as a removal.
    pub fn pull_held(&self, port_path: &str) -> Result<(), SimRackError> {
        let present = self
            .rack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .away
            .remove(port_path)
            .ok_or_else(|| SimRackError::NotPresent(port_path.to_string()))?;
        present.stick.remove();
        let _ = std::fs::remove_file(&present.device.dev_path);
        Ok(())
    }

    /// The stick in the port with `port_path`, if any: its kernel name and handle.
    pub fn stick_at(&self, port_path: &str) -> Option<(String, SimStick)> {
        let rack = self.rack.lock().unwrap_or_else(|p| p.into_inner());
        rack.present
            .values()
            .find(|p| p.device.port_path.as_deref() == Some(port_path))
            .map(|p| (p.device.kernel_name.clone(), p.stick.clone()))
    }

    /// Pulls every stick (used at shutdown and by tests), those away in a
    /// reset too.
    pub fn pull_all(&self) {
        let away: Vec<String> = self
            .rack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .away
            .keys()
            .cloned()
            .collect();
        for port in away {
            let _ = self.pull_held(&port);
        }
        let names: Vec<String> = self
            .rack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .present
            .keys()
            .cloned()
            .collect();
        for name in names {
            let _ = self.pull(&name);
        }
    }
}

/// The [`DeviceAccess`] of a simulated rack.
#[derive(Clone)]
pub struct SimAccess {
    rack: Arc<Mutex<Rack>>,
    /// To report an ejected stick gone from the system, as the kernel does.
    commands: UnboundedSender<Command>,
}

impl SimAccess {
    /// A simulated stick is a whole USB disk that nothing mounts.
    fn stick_facts(device: &PluggedDevice) -> DiskFacts {
        DiskFacts {
            dev_path: device.dev_path.clone(),
            kernel_name: device.kernel_name.clone(),
            major: 0,
            minor: 0,
            diskseq: None,
            is_partition: false,
            parent_disk: None,
            bus: device.bus.clone(),
            port_path: device.port_path.clone(),
            size_bytes: device.identity.capacity,
            mounted: Vec::new(),
            swap: Vec::new(),
            holders: Vec::new(),
            system_disk: None,
            read_only: device.read_only,
            loop_backings: Vec::new(),
        }
    }

    fn guarded(
        &self,
        device: &PluggedDevice,
        guard: GuardCheck,
        link: Option<ResetLink>,
    ) -> Arc<dyn Target> {
        let stick = self.stick(device);
        let inner: Arc<dyn Target> = match &stick {
            Some(stick) => Arc::new(stick.clone()),
            None => Arc::new(Gone(device.kernel_name.clone())),
        };
        let reset = match (link, stick) {
            (Some(link), Some(stick)) => Some(ReenumeratingReset {
                link,
                stick,
                rack: self.rack.clone(),
                commands: self.commands.clone(),
            }),
            _ => None,
        };
        Arc::new(GuardedTarget {
            inner,
            guard,
            device: Mutex::new(device.clone()),
            reset,
        })
    }

    fn stick(&self, device: &PluggedDevice) -> Option<SimStick> {
        self.rack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .present
            .get(&device.kernel_name)
            .map(|p| p.stick.clone())
    }
}

impl DeviceAccess for SimAccess {
    fn facts(&self, device: &PluggedDevice) -> Result<DiskFacts, GuardError> {
        Ok(SimAccess::stick_facts(device))
    }

    fn target(&self, device: &PluggedDevice, guard: GuardCheck) -> Arc<dyn Target> {
        self.guarded(device, guard, None)
    }

    fn attempt_target(
        &self,
        device: &PluggedDevice,
        guard: GuardCheck,
        link: ResetLink,
    ) -> Arc<dyn Target> {
        self.guarded(device, guard, Some(link))
    }

    fn eject(&self, device: &PluggedDevice) -> Result<(), TargetError> {
        // Ejecting a simulated stick is what the kernel does to a real one: it
        // goes away from the system (the "operator" still has to pull it).
        match self.stick(device) {
            Some(stick) => {
                // The system lets go of it (a removal event) while it stays in
                // its port until the operator pulls it.
                stick.remove();
                let _ = self
                    .commands
                    .send(Command::Pull(device.kernel_name.clone()));
                Ok(())
            }
            None => Err(TargetError::Removed),
        }
    }
}

/// A target that runs the guard before every open for writing, for targets that
/// do not do so themselves. A simulated stick is bound to its target when the
/// target is made (and keeps that stick when its kernel name is reused), so the
/// facts judged are those of the stick that will be written; after a reset,
/// those of the stick as it came back.
pub struct GuardedTarget {
    inner: Arc<dyn Target>,
    guard: GuardCheck,
    /// The stick as the system shows it now (a reset gives it a new kernel
    /// name). A `std` mutex: held only to read or replace it.
    device: Mutex<PluggedDevice>,
    /// How the stick is reset through the station, for an attempt's target.
    reset: Option<ReenumeratingReset>,
}

/// A simulated stick's reset as a real stick's looks to the station: it leaves
/// the system and comes back under a new name (or as its port's
/// [`ResetReturn`] says), and the target waits on the attempt's link for the
/// station to recognise it.
struct ReenumeratingReset {
    link: ResetLink,
    stick: SimStick,
    rack: Arc<Mutex<Rack>>,
    commands: UnboundedSender<Command>,
}

impl ReenumeratingReset {
    /// Resets the stick (its cache is dropped), takes it out of the system and
    /// brings it back as planned; returns the stick as it came back.
    fn reset(&self, device: &PluggedDevice) -> Result<PluggedDevice, TargetError> {
        // Before the stick leaves: its removal is part of the attempt.
        self.link.begin();
        if let Err(error) = self.stick.reset() {
            self.link.end();
            return Err(error);
        }
        let port = device.port_path.clone().unwrap_or_default();
        let plan_is_stuck = {
            let mut rack = self.rack.lock().unwrap_or_else(|p| p.into_inner());
            let plan = rack.reset_plans.get(&port).cloned().unwrap_or_default();
            let stuck = plan == ResetReturn::Stuck;
            let Some(mut present) = rack.present.remove(&device.kernel_name) else {
                self.link.end();
                return Err(TargetError::Removed);
            };
            let _ = self
                .commands
                .send(Command::Pull(device.kernel_name.clone()));
            match plan {
                ResetReturn::Same | ResetReturn::Different { .. } => {
                    let kernel_name = rack.next_name();
                    present.device.kernel_name = kernel_name.clone();
                    if let ResetReturn::Different { serial } = plan {
                        present.device.identity.serial = Some(serial);
                    }
                    let back = present.device.clone();
                    rack.present.insert(kernel_name, present);
                    let _ = self.commands.send(Command::Plug(back));
                }
                ResetReturn::Never | ResetReturn::Held | ResetReturn::Stuck => {
                    rack.away.insert(port, present);
                }
                ResetReturn::After(delay) => {
                    rack.away.insert(port.clone(), present);
                    let (rack, commands) = (self.rack.clone(), self.commands.clone());
                    // Its own thread, as the stick's return is the system's
                    // doing, not the waiting target's; a stick pulled
                    // meanwhile is no longer away and does not come back.
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        let _ = return_away(&rack, &commands, &port);
                    });
                }
            }
            stuck
        };
        if plan_is_stuck {
            while !self.stick.is_removed() {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.link.end();
            return Err(TargetError::Removed);
        }
        let stick = self.stick.clone();
        self.link
            .wait(move || stick.is_removed(), Duration::from_millis(5))
    }
}

impl GuardedTarget {
    fn device(&self) -> PluggedDevice {
        self.device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Target for GuardedTarget {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn geometry(&self) -> Result<TargetGeometry, TargetError> {
        self.inner.geometry()
    }
    fn may_misreport_capacity(&self) -> bool {
        self.inner.may_misreport_capacity()
    }
    fn can_reset(&self) -> bool {
        self.reset.is_some() && self.inner.can_reset()
    }
    fn reset(&self) -> Result<(), TargetError> {
        match &self.reset {
            Some(reset) => {
                let back = reset.reset(&self.device())?;
                *self.device.lock().unwrap_or_else(|p| p.into_inner()) = back;
                Ok(())
            }
            None => self.inner.reset(),
        }
    }
    fn open_writer(&self) -> Result<Box<dyn TargetWriter>, TargetError> {
        (self.guard)(&SimAccess::stick_facts(&self.device()))
            .map_err(|why| TargetError::Refused(why.into()))?;
        self.inner.open_writer()
    }
    fn open_reader(&self) -> Result<Box<dyn TargetReader>, TargetError> {
        self.inner.open_reader()
    }
}

/// A stick that was pulled before its target was made.
struct Gone(String);

impl Target for Gone {
    fn name(&self) -> String {
        self.0.clone()
    }
    fn geometry(&self) -> Result<TargetGeometry, TargetError> {
        Err(TargetError::Removed)
    }
    fn open_writer(&self) -> Result<Box<dyn TargetWriter>, TargetError> {
        Err(TargetError::Removed)
    }
    fn open_reader(&self) -> Result<Box<dyn TargetReader>, TargetError> {
        Err(TargetError::Removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugging_and_pulling_are_reported_as_hotplug_events() {
        let dir = tempfile::tempdir().unwrap();
        let (source, control, access) = sim_rack(dir.path());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stop = StopSignal::new();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || Box::new(source).run(tx, stop)
        });
        assert_eq!(rx.blocking_recv(), Some(Hotplug::Enumerated));
        let name = control
            .plug("sim-port-1", "SER1", SimStickSpec::new("", 1 << 20))
            .unwrap();
        let Some(Hotplug::Added(device)) = rx.blocking_recv() else {
            panic!("expected an add")
        };
        assert_eq!(device.kernel_name, name);
        assert_eq!(device.identity.serial.as_deref(), Some("SER1"));
        assert!(matches!(
            control.plug("sim-port-1", "SER2", SimStickSpec::new("", 1 << 20)),
            Err(SimRackError::PortOccupied(_))
        ));
        let facts = access.facts(&device).unwrap();
        assert_eq!(facts.bus.as_deref(), Some("usb"));
        let refuse: GuardCheck = Arc::new(|_| Err(flashrack_guard::Refusal::NotArmed));
        assert!(matches!(
            access.target(&device, refuse).open_writer(),
            Err(TargetError::Refused(_))
        ));
        control.pull(&name).unwrap();
        assert_eq!(
            rx.blocking_recv(),
            Some(Hotplug::Removed { kernel_name: name })
        );
        stop.stop();
        thread.join().unwrap().unwrap();
    }
}
