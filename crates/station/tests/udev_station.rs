//! The station over the real udev monitor, with loop devices that udev presents as
//! USB sticks (see `flashrack_testkit::udev_stick`). Needs root and a running
//! systemd-udevd (started if missing); without root the tests are reported as
//! not run (`flashrack_testkit::require_root`), unless
//! `FLASHRACK_REQUIRE_ROOT_TESTS=1` (CI) makes that a failure.
//!
//! A stick cannot be pulled in the middle of a write here: the kernel defers the
//! detach of an open loop device until it is closed. That case runs on the
//! simulated rack (`sim_station.rs`) and in the VM suite with emulated USB sticks.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use flashrack_core::{FailReason, RefusalCode, Verdict};
use flashrack_engine::{EngineOptions, SourceImage};
use flashrack_guard::{DiskFacts, GuardCheck, GuardError, GuardPolicy};
use flashrack_hardware::udev::{UdevAccess, UdevSource};
use flashrack_hotplug::{
    DeviceAccess, Hotplug, HotplugError, HotplugSource, PluggedDevice, StopSignal,
};
use flashrack_station::{
    ArmRequest, MemoryJournal, PortSpec, PortState, RunOptions, Snapshot, Station, StationError,
    StationSettings,
};
use flashrack_target::{Target, TargetError};
use flashrack_testkit::require_root;
use flashrack_testkit::udev_stick::{TestStick, STICK_SIZE};

async fn until(
    handle: &flashrack_station::StationHandle,
    what: &str,
    check: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let mut watch = handle.watch();
    let wait = async {
        loop {
            if check(&watch.borrow_and_update()) {
                return watch.borrow().clone();
            }
            watch.changed().await.unwrap();
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), wait).await {
        Ok(snapshot) => snapshot,
        Err(_) => panic!("timed out waiting for {what}: {:#?}", handle.snapshot()),
    }
}

fn state(snapshot: &Snapshot, label: &str) -> PortState {
    snapshot
        .ports
        .iter()
        .find(|p| p.label == label)
        .unwrap()
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_station_writes_sticks_that_real_udev_announces_and_does_not_rewrite_a_passed_one() {
    if !require_root(&["losetup", "udevadm"]) {
        return;
    }
    let sticks: Vec<TestStick> = (0..3).map(|_| TestStick::create()).collect();
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes((STICK_SIZE / 2) as usize + 4096, 21, 1 << 18);
    let (path, manifest) = flashrack_testkit::image_from_bytes(dir.path(), &bytes, 1 << 20);
    let image = SourceImage::cached(path, manifest);

    let names: BTreeSet<String> = sticks.iter().map(|s| s.name.clone()).collect();
    let source = UdevSource::with_filter(move |d| names.contains(&d.kernel_name));
    let mut policy = GuardPolicy::default();
    // Loop devices dressed as USB sticks: sysfs still says "loop".
    policy.allowed_buses.insert("loop".into());
    let labels = ["T1", "T2", "T3"];
    let settings = StationSettings {
        station_id: "udev-test".into(),
        ports: sticks
            .iter()
            .zip(labels)
            .map(|(s, label)| PortSpec {
                label: label.into(),
                path: s.port_path(),
                position: None,
                master: false,
            })
            .collect(),
        policy,
        engine: EngineOptions::default(),
        shutdown_grace: Duration::from_secs(5),
        removal_grace: Duration::from_millis(300),
        heartbeat: Duration::from_secs(2),
    };
    let journal = Arc::new(MemoryJournal::default());
    let (station, handle) = Station::new(settings, Arc::new(UdevAccess::new()), journal.clone());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();

    // A stick present before the station starts is found by the enumeration.
    sticks[0].plug();
    let task = tokio::spawn(station.run_until_stopped(Box::new(source), async {
        let _ = stop_rx.await;
    }));
    let snap = until(&handle, "T1 detected at start-up", |s| {
        state(s, "T1") == PortState::Detected
    })
    .await;
    let device = snap.ports[0].device.clone().unwrap();
    assert_eq!(device.serial.as_deref(), Some(sticks[0].serial().as_str()));
    assert_eq!(device.vendor.as_deref(), Some("Flashrack"));

    // Armed: the present stick is written; two plugged at once are written too.
    handle
        .arm(ArmRequest {
            image: image.clone(),
            image_name: "udev-test.img".into(),
            options: RunOptions::default(),
            sparse: None,
        })
        .await
        .unwrap();
    sticks[1].plug();
    sticks[2].plug();
    until(&handle, "all three passed", |s| {
        labels.iter().all(|l| state(s, l) == PortState::Passed)
    })
    .await;
    for stick in &sticks {
        let medium = std::fs::read(&stick.backing).unwrap();
        assert_eq!(
            &medium[..bytes.len()],
            &bytes[..],
            "{} holds the image",
            stick.name
        );
    }

    // Pulled, the port empties; a stick with its serial put in (here blanked
    // meanwhile, as another stick of a batch sharing serials would be) is
    // neither written nor shown as passed: the port names the earlier pass,
    // and the operator decides.
    let earlier = snap_attempt(&handle, "T1");
    sticks[0].pull();
    until(&handle, "T1 empty", |s| state(s, "T1") == PortState::Empty).await;
    std::fs::write(&sticks[0].backing, vec![0u8; STICK_SIZE as usize]).unwrap();
    sticks[0].plug();
    let snap = until(&handle, "T1 named with the earlier pass", |s| {
        s.ports[0].passed_before.is_some()
    })
    .await;
    assert_eq!(snap.ports[0].state, PortState::Detected);
    assert_eq!(
        snap.ports[0].verdict, None,
        "no pass shown for a blank stick"
    );
    assert_eq!(snap.ports[0].passed_before, earlier);
    // An attempt would have been recorded when the stick was handled; a
    // command's answer comes after the events the station had already taken.
    assert!(matches!(
        handle.start_port("no such port").await,
        Err(StationError::UnknownPort(_))
    ));
    assert!(
        std::fs::read(&sticks[0].backing)
            .unwrap()
            .iter()
            .all(|&b| b == 0),
        "a stick with the serial of a pass in this run is not written unless asked"
    );
    let records = journal.records();
    assert_eq!(records.attempts.len(), 3);
    assert!(records
        .attempts
        .iter()
        .all(|a| a.verdict == Some(Verdict::Pass)));

    let _ = stop.send(());
    task.await.unwrap();
}

/// Holds the hotplug events of a real udev source back while closed, as a busy
/// udevd or a loaded station would: the station then opens a target before it
/// hears that its stick went away.
#[derive(Clone, Default)]
struct Gate(Arc<GateState>);

#[derive(Default)]
struct GateState {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn close(&self) {
        *self.0.closed.lock().unwrap() = true;
    }

    fn open(&self) {
        *self.0.closed.lock().unwrap() = false;
        self.0.opened.notify_all();
    }

    /// Waits until the gate is open (`true`) or `stop` is raised (`false`: a
    /// station stopping, also after a failed test, never waits for the gate).
    fn wait_open(&self, stop: &StopSignal) -> bool {
        let mut closed = self.0.closed.lock().unwrap();
        while *closed {
            if stop.is_stopped() {
                return false;
            }
            let wait = Duration::from_millis(50);
            closed = self.0.opened.wait_timeout(closed, wait).unwrap().0;
        }
        true
    }
}

/// A udev source whose events pass through a [`Gate`].
struct GatedSource {
    inner: UdevSource,
    gate: Gate,
}

impl HotplugSource for GatedSource {
    fn run(
        self: Box<Self>,
        events: tokio::sync::mpsc::UnboundedSender<Hotplug>,
        stop: StopSignal,
    ) -> Result<(), HotplugError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (gate, forward_stop) = (self.gate.clone(), stop.clone());
        let forward = std::thread::spawn(move || {
            while let Some(event) = rx.blocking_recv() {
                if !gate.wait_open(&forward_stop) || events.send(event).is_err() {
                    return;
                }
            }
        });
        let result = Box::new(self.inner).run(tx, stop);
        let _ = forward.join();
        result
    }
}

/// The real udev access, except that making the first target runs `swap` first:
/// what happens to a stick between the moment the station checked it and the
/// moment its target is opened.
struct SwapBeforeOpen {
    inner: UdevAccess,
    swap: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl DeviceAccess for SwapBeforeOpen {
    fn facts(&self, device: &PluggedDevice) -> Result<DiskFacts, GuardError> {
        self.inner.facts(device)
    }

    fn target(&self, device: &PluggedDevice, guard: GuardCheck) -> Arc<dyn Target> {
        if let Some(swap) = self.swap.lock().unwrap().take() {
            swap();
        }
        self.inner.target(device, guard)
    }

    fn eject(&self, device: &PluggedDevice) -> Result<(), TargetError> {
        self.inner.eject(device)
    }
}

/// A stick checked and accepted in a mapped port is pulled, and another stick,
/// in a port the configuration does not map, gets its kernel name before the
/// target is opened (and before the station hears of it). The open finds another
/// disk behind the name and refuses it, naming the identity change; the new stick
/// is then seen in its own, unmapped port and refused there. Neither is written.
/// Judging the name at the open (with the old stick's port) would write the new
/// stick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stick_whose_name_went_to_another_disk_before_the_open_is_not_written() {
    if !require_root(&["losetup", "udevadm"]) {
        return;
    }
    let stick = Arc::new(TestStick::create());
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(1 << 20, 22, 1 << 18);
    let (path, manifest) = flashrack_testkit::image_from_bytes(dir.path(), &bytes, 1 << 20);
    let image = SourceImage::cached(path, manifest);
    let other = dir.path().join("another-stick.img");
    std::fs::File::create(&other)
        .and_then(|f| f.set_len(STICK_SIZE))
        .unwrap();

    let gate = Gate::default();
    let name = stick.name.clone();
    let source = GatedSource {
        inner: UdevSource::with_filter(move |d| d.kernel_name == name),
        gate: gate.clone(),
    };
    let swap = {
        let (gate, stick, other) = (gate.clone(), stick.clone(), other.clone());
        move || {
            gate.close();
            stick.replace_with(
                &other,
                &format!("flashrack-test-other-port-{}", stick.index),
                &format!("FROTHER{}", stick.index),
            );
        }
    };
    let mut policy = GuardPolicy::default();
    policy.allowed_buses.insert("loop".into());
    let settings = StationSettings {
        station_id: "udev-swap-test".into(),
        ports: vec![PortSpec {
            label: "T1".into(),
            path: stick.port_path(),
            position: None,
            master: false,
        }],
        policy,
        engine: EngineOptions::default(),
        shutdown_grace: Duration::from_secs(5),
        removal_grace: Duration::from_millis(300),
        heartbeat: Duration::from_secs(2),
    };
    let access = SwapBeforeOpen {
        inner: UdevAccess::new(),
        swap: Mutex::new(Some(Box::new(swap))),
    };
    let journal = Arc::new(MemoryJournal::default());
    let (station, handle) = Station::new(settings, Arc::new(access), journal.clone());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(station.run_until_stopped(Box::new(source), async {
        let _ = stop_rx.await;
    }));
    stick.plug();
    until(&handle, "T1 detected", |s| {
        state(s, "T1") == PortState::Detected
    })
    .await;
    handle
        .arm(ArmRequest {
            image,
            image_name: "swap-test.img".into(),
            options: RunOptions::default(),
            sparse: None,
        })
        .await
        .unwrap();

    // The open refuses the disk that now carries the name: the port shows a
    // refusal (nothing was written), with the attempt's verdict.
    let snap = until(&handle, "T1's attempt refused", |s| {
        state(s, "T1") == PortState::Refused
    })
    .await;
    let port = snap.ports.iter().find(|p| p.label == "T1").unwrap();
    match port.verdict.as_ref().and_then(Verdict::failure) {
        Some(failure) => match &failure.reason {
            FailReason::Refused { code, detail } => {
                assert_eq!(*code, Some(RefusalCode::IdentityChanged));
                assert!(
                    detail.contains("not the one that was checked"),
                    "the refusal names the identity change: {detail}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        },
        None => panic!("expected a failure, got {:?}", port.verdict),
    }
    let records = journal.records();
    assert_eq!(records.attempts.len(), 1);
    assert_eq!(records.attempts[0].verdict, port.verdict);

    // The station hears of the swap: the new stick sits in a port of its own,
    // which is not mapped, and is refused there.
    gate.open();
    let unmapped = format!("?{}", stick.name);
    let snap = until(&handle, "the new stick refused in its unmapped port", |s| {
        s.ports
            .iter()
            .any(|p| p.label == unmapped && p.state == PortState::Refused)
    })
    .await;
    let refusal = snap
        .ports
        .iter()
        .find(|p| p.label == unmapped)
        .and_then(|p| p.refusal.clone())
        .unwrap();
    assert_eq!(refusal.code, RefusalCode::PortNotMapped);
    assert!(refusal.message.contains("not mapped"), "{refusal}");
    assert_eq!(journal.records().attempts.len(), 1, "no second attempt");
    for medium in [&other, &stick.backing] {
        let bytes = std::fs::read(medium).unwrap();
        assert!(
            bytes.iter().all(|&b| b == 0),
            "{} was written",
            medium.display()
        );
    }

    let _ = stop.send(());
    task.await.unwrap();
}

/// The attempt the port labelled `label` shows now.
fn snap_attempt(
    handle: &flashrack_station::StationHandle,
    label: &str,
) -> Option<flashrack_core::AttemptId> {
    handle
        .snapshot()
        .ports
        .iter()
        .find(|p| p.label == label)
        .and_then(|p| p.attempt_id)
}
