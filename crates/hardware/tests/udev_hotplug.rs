//! The udev hotplug source and access against the real udev, with loop devices this
//! test creates and dresses up as USB sticks.
//!
//! How a test stick is made (see [`TestStick`]):
//! - a loop device node at a high index (4200 and up, so that no `losetup --find`
//!   of another process picks it first) is created through `/dev/loop-control`
//!   (`LOOP_CTL_ADD`), which gives a real udev `add` event of an empty disk;
//! - a rule in `/run/udev/rules.d/` gives that one device the properties a USB
//!   stick has (`ID_BUS=usb`, `ID_PATH`, `ID_SERIAL_SHORT`, `ID_VENDOR`,
//!   `ID_MODEL`); loop devices have none of their own;
//! - *plugging* it attaches a backing file (`losetup`), a `change` event from size
//!   0 to N; *pulling* it detaches the file (size N → 0). The kernel refuses to
//!   delete an attached loop device, so a real `remove` event only ever comes for
//!   an empty one (checked: it yields nothing);
//! - a `Drop` guard detaches it, deletes the node (`LOOP_CTL_REMOVE`) and the rule,
//!   also when a test panics.
//!
//! Other processes attach loop devices too, so every source except the start-up
//! enumeration test is filtered to the test's own devices, and two processes
//! running this file take turns (a lock file in `/run`).
//!
//! Not covered here: partitions. This host's kernel does not create partitions on
//! loop devices, so "a partition appearing after a write is not a new stick" is
//! covered by the unit tests of `udev.rs` (the candidate filter, and the monitor's
//! kernel-side `DEVTYPE=disk` match) and by the VM tests with real USB sticks.
//!
//! These tests need root, `losetup`, `udevadm`, `mkfs.ext4` and `mount`, and a
//! running `systemd-udevd` ([`ensure_udevd`] starts it when it is not running).
//! Without root they are reported as not run (`flashrack_testkit::require_root`),
//! unless `FLASHRACK_REQUIRE_ROOT_TESTS=1` (CI) makes that a failure.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flashrack_guard::{evaluate, DiskIdentity, GuardCheck, GuardPolicy, GuardRequest};
use flashrack_hardware::udev::{UdevAccess, UdevSource};
use flashrack_hotplug::{
    DeviceAccess, DeviceIdentity, Hotplug, HotplugError, HotplugSource, PluggedDevice, StopSignal,
};
use flashrack_target::TargetError;
use flashrack_testkit::udev_stick::{ensure_udevd, settle, TestStick, STICK_SIZE, WAIT};
use flashrack_testkit::{require_root, run};
use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver};

/// What the source must report for this stick when it is plugged in.
fn expected(stick: &TestStick) -> PluggedDevice {
    PluggedDevice {
        kernel_name: stick.name.clone(),
        dev_path: stick.dev.clone(),
        port_path: Some(stick.port_path()),
        bus: Some("usb".to_owned()),
        identity: DeviceIdentity {
            serial: Some(stick.serial()),
            vendor: Some("Flashrack".to_owned()),
            model: Some("Test Stick".to_owned()),
            capacity: STICK_SIZE,
        },
        removable: false,
        read_only: false,
        disk: Some(disk_of(stick)),
    }
}

/// The stick's disk as sysfs says it is now: device number and `diskseq`.
fn disk_of(stick: &TestStick) -> DiskIdentity {
    let sys = std::path::Path::new("/sys/block").join(&stick.name);
    let read = |file: &str| std::fs::read_to_string(sys.join(file)).unwrap();
    let dev = read("dev");
    let (major, minor) = dev.trim().split_once(':').unwrap();
    DiskIdentity {
        major: major.parse().unwrap(),
        minor: minor.parse().unwrap(),
        diskseq: Some(read("diskseq").trim().parse().unwrap()),
    }
}

/// What the source must report when this stick is pulled.
fn removed(stick: &TestStick) -> Hotplug {
    Hotplug::Removed {
        kernel_name: stick.name.clone(),
    }
}

/// A [`UdevSource`] running on its own thread, stopped and joined on drop.
struct Watch {
    events: UnboundedReceiver<Hotplug>,
    stop: StopSignal,
    thread: Option<JoinHandle<Result<(), HotplugError>>>,
}

impl Watch {
    fn start(source: UdevSource) -> Self {
        ensure_udevd();
        let (tx, events) = mpsc::unbounded_channel();
        let stop = StopSignal::new();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || Box::new(source).run(tx, stop))
        };
        Watch {
            events,
            stop,
            thread: Some(thread),
        }
    }

    /// A source that reports only these sticks.
    fn only(sticks: &[&TestStick]) -> Self {
        let names: BTreeSet<String> = sticks.iter().map(|s| s.name.clone()).collect();
        Watch::start(UdevSource::with_filter(move |device| {
            names.contains(&device.kernel_name)
        }))
    }

    /// The next event, within [`WAIT`].
    fn next(&mut self) -> Hotplug {
        self.next_within(WAIT)
            .unwrap_or_else(|| panic!("no hotplug event within {WAIT:?}"))
    }

    fn next_within(&mut self, wait: Duration) -> Option<Hotplug> {
        let deadline = Instant::now() + wait;
        loop {
            match self.events.try_recv() {
                Ok(event) => return Some(event),
                Err(TryRecvError::Empty) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    let result = self.thread.take().map(|t| t.join());
                    panic!("the source stopped: {result:?}");
                }
            }
        }
    }

    /// Every event up to [`Hotplug::Enumerated`] (not included).
    fn until_enumerated(&mut self) -> Vec<Hotplug> {
        let mut out = Vec::new();
        loop {
            match self.next() {
                Hotplug::Enumerated => return out,
                event => out.push(event),
            }
        }
    }

    /// Asserts that nothing more comes for what happened so far, without
    /// waiting for time to pass: once udev has finished every queued event
    /// (`settle`), it has handed them to the monitor; then `marker` (a stick
    /// this watch reports, unused until now) is plugged, and its addition must
    /// be the very next event. The monitor's socket keeps the order, and the
    /// source reads it in order: any event still due would come first.
    fn assert_quiet(&mut self, marker: &TestStick) {
        settle();
        marker.plug();
        match self.next() {
            Hotplug::Added(device) if device == expected(marker) => {}
            event => panic!("unexpected event {event:?}"),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn added(event: Hotplug) -> PluggedDevice {
    match event {
        Hotplug::Added(device) => device,
        other => panic!("expected Added, got {other:?}"),
    }
}

#[test]
fn a_stick_present_at_start_up_is_reported_before_enumerated_with_its_udev_identity() {
    if !require_root(&["losetup", "udevadm"]) {
        return;
    }
    let stick = TestStick::create();
    {
        // Once a source has seen it, udevd has processed the attach and its database
        // holds what the enumeration reads.
        let mut first = Watch::only(&[&stick]);
        assert_eq!(first.until_enumerated(), []);
        stick.plug();
        assert_eq!(first.next(), Hotplug::Added(expected(&stick)));
    }
    // Unfiltered: whatever else this host has is reported too, and must be sane.
    let mut watch = Watch::start(UdevSource::new());
    let before = watch.until_enumerated();
    let ours: Vec<&PluggedDevice> = before
        .iter()
        .map(|event| match event {
            Hotplug::Added(device) => device,
            other => panic!("only Added may come before Enumerated, got {other:?}"),
        })
        .inspect(|device| {
            assert!(device.identity.capacity > 0, "{device:?}");
            for never in ["ram", "zram", "dm-", "md", "sr"] {
                assert!(!device.kernel_name.starts_with(never), "{device:?}");
            }
        })
        .filter(|device| device.kernel_name == stick.name)
        .collect();
    assert_eq!(ours, [&expected(&stick)]);
}

#[test]
fn a_stick_plugged_in_while_running_is_added_and_pulling_it_removes_it() {
    if !require_root(&["losetup", "udevadm"]) {
        return;
    }
    let stick = TestStick::create();
    let marker = TestStick::create();
    let mut watch = Watch::only(&[&stick, &marker]);
    // An empty loop device (a reader without a card) is not a stick.
    assert_eq!(watch.until_enumerated(), []);

    stick.plug();
    assert_eq!(watch.next(), Hotplug::Added(expected(&stick)));
    stick.pull();
    assert_eq!(watch.next(), removed(&stick));

    // The node's own `remove` event concerns a disk no longer present: nothing.
    stick.delete();
    watch.assert_quiet(&marker);
}

#[test]
fn four_sticks_plugged_in_at_once_are_all_added() {
    if !require_root(&["losetup", "udevadm"]) {
        return;
    }
    let sticks: Vec<TestStick> = (0..4).map(|_| TestStick::create()).collect();
    let marker = TestStick::create();
    let mut refs: Vec<&TestStick> = sticks.iter().collect();
    refs.push(&marker);
    let mut watch = Watch::only(&refs);
    assert_eq!(watch.until_enumerated(), []);

    std::thread::scope(|scope| {
        for stick in &sticks {
            scope.spawn(|| stick.plug());
        }
    });
    let mut seen: Vec<PluggedDevice> = (0..4).map(|_| added(watch.next())).collect();
    seen.sort_by(|a, b| a.kernel_name.cmp(&b.kernel_name));
    let mut expected: Vec<PluggedDevice> = sticks.iter().map(expected).collect();
    expected.sort_by(|a, b| a.kernel_name.cmp(&b.kernel_name));
    assert_eq!(seen, expected);
    // Each is reported once, not once per udev event it caused.
    watch.assert_quiet(&marker);
}

#[test]
fn a_reinserted_stick_is_added_again_with_the_same_serial() {
    if !require_root(&["losetup", "udevadm"]) {
        return;
    }
    let stick = TestStick::create();
    let mut watch = Watch::only(&[&stick]);
    assert_eq!(watch.until_enumerated(), []);

    stick.plug();
    let first = added(watch.next());
    stick.pull();
    assert_eq!(watch.next(), removed(&stick));
    stick.plug();
    let second = added(watch.next());
    assert_eq!(second.identity.serial, first.identity.serial);
    assert_ne!(second.disk, first.disk, "a new medium is another disk");
    assert_eq!(second.identity.key(), first.identity.key());
    assert_eq!(second, expected(&stick));
}

#[test]
fn raising_the_stop_signal_ends_the_source_within_a_second() {
    if !require_root(&["losetup", "udevadm"]) {
        return;
    }
    let mut watch = Watch::only(&[]);
    assert_eq!(watch.until_enumerated(), []);
    let started = Instant::now();
    watch.stop.stop();
    let result = watch.thread.take().unwrap().join().expect("no panic");
    let took = started.elapsed();
    assert!(result.is_ok(), "{result:?}");
    assert!(took < Duration::from_secs(1), "stopping took {took:?}");
}

#[test]
fn the_facts_carry_the_udev_port_path_and_the_guard_accepts_the_stick() {
    if !require_root(&["losetup", "udevadm"]) {
        return;
    }
    let stick = TestStick::create();
    let mut watch = Watch::only(&[&stick]);
    assert_eq!(watch.until_enumerated(), []);
    stick.plug();
    let device = added(watch.next());

    let access = UdevAccess::new();
    let facts = access.facts(&device).expect("facts");
    assert_eq!(facts.kernel_name, stick.name);
    assert_eq!(facts.port_path, expected(&stick).port_path);
    // sysfs knows it for the loop device it is, whatever udev's rule says.
    assert_eq!(facts.bus.as_deref(), Some("loop"));
    assert_eq!(facts.size_bytes, STICK_SIZE);

    let policy = GuardPolicy {
        allowed_buses: BTreeSet::from(["loop".to_owned(), "usb".to_owned()]),
        mapped_ports: BTreeSet::from([facts.port_path.clone().unwrap()]),
        ..GuardPolicy::default()
    };
    let request = GuardRequest {
        image_size: 1024 * 1024,
        armed_run: true,
        explicit_operator_request: false,
    };
    assert!(evaluate(&facts, &policy, &request).is_ok());
    // A port the configuration does not map is refused.
    let unmapped = GuardPolicy {
        mapped_ports: BTreeSet::new(),
        ..policy
    };
    assert_eq!(
        evaluate(&facts, &unmapped, &request).unwrap_err().code(),
        "port_not_mapped"
    );

    let guard: GuardCheck = Arc::new(|_| Ok(()));
    let target = access.target(&device, guard);
    assert_eq!(target.geometry().expect("geometry").capacity, STICK_SIZE);
}

#[test]
fn ejecting_a_loop_stick_detaches_it_and_it_is_removed() {
    if !require_root(&["losetup", "udevadm"]) {
        return;
    }
    let stick = TestStick::create();
    let mut watch = Watch::only(&[&stick]);
    assert_eq!(watch.until_enumerated(), []);
    stick.plug();
    let device = added(watch.next());

    UdevAccess::new().eject(&device).expect("eject");
    assert_eq!(watch.next(), removed(&stick));
    assert_eq!(stick.sectors(), 0, "the loop device is still attached");
}

#[test]
fn ejecting_a_mounted_stick_is_refused_and_leaves_it_attached() {
    if !require_root(&["losetup", "udevadm", "mkfs.ext4", "mount", "umount"]) {
        return;
    }
    let stick = TestStick::create();
    let mut watch = Watch::only(&[&stick]);
    assert_eq!(watch.until_enumerated(), []);
    stick.plug();
    let device = added(watch.next());
    run("mkfs.ext4", &["-q", "-F", stick.dev.to_str().unwrap()]);
    let mount_point = tempfile::tempdir().expect("mount point");
    run(
        "mount",
        &[
            stick.dev.to_str().unwrap(),
            mount_point.path().to_str().unwrap(),
        ],
    );
    /// Unmounts on drop, also when an assertion fails.
    struct Mounted<'a>(&'a Path);
    impl Drop for Mounted<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).output();
        }
    }
    let _mounted = Mounted(mount_point.path());

    let err = UdevAccess::new().eject(&device).unwrap_err();
    assert!(matches!(err, TargetError::Busy(_)), "{err}");
    assert_eq!(stick.sectors() * 512, STICK_SIZE);
}

#[test]
fn a_loop_device_over_a_mounted_stick_in_a_mapped_port_is_refused_as_mounted_not_as_unmapped() {
    if !require_root(&["losetup", "udevadm", "mkfs.ext4", "mount", "umount"]) {
        return;
    }
    let stick = TestStick::create();
    stick.plug();
    settle();
    run("mkfs.ext4", &["-q", "-F", stick.dev.to_str().unwrap()]);
    let mountpoint = tempfile::tempdir().unwrap();
    run(
        "mount",
        &[
            stick.dev.to_str().unwrap(),
            mountpoint.path().to_str().unwrap(),
        ],
    );
    // Unmounted and detached whatever the assertions say.
    struct Undo(String, std::path::PathBuf);
    impl Drop for Undo {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
            let _ = Command::new("umount").arg(&self.1).status();
        }
    }
    let over = run(
        "losetup",
        &["--find", "--show", stick.dev.to_str().unwrap()],
    )
    .trim()
    .to_string();
    let _undo = Undo(over.clone(), mountpoint.path().to_path_buf());
    settle();
    let kernel_name = over.trim_start_matches("/dev/").to_string();
    let device = PluggedDevice {
        kernel_name: kernel_name.clone(),
        dev_path: over.clone().into(),
        port_path: Some("flashrack-test-port-above".to_owned()),
        bus: Some("loop".to_owned()),
        identity: DeviceIdentity::default(),
        removable: false,
        read_only: false,
        disk: None,
    };
    let facts = UdevAccess::new().facts(&device).expect("facts");
    let below = facts
        .loop_backings
        .iter()
        .find_map(|b| b.below.as_deref())
        .expect("the stick below");
    // Its port is udev's, as for the stick itself.
    assert_eq!(below.port_path, Some(stick.port_path()));
    let policy = GuardPolicy {
        allowed_buses: BTreeSet::from(["loop".to_owned(), "usb".to_owned()]),
        mapped_ports: BTreeSet::from(["flashrack-test-port-above".to_owned(), stick.port_path()]),
        ..GuardPolicy::default()
    };
    let request = GuardRequest {
        image_size: 1024 * 1024,
        armed_run: true,
        explicit_operator_request: false,
    };
    let refusal = evaluate(&facts, &policy, &request).unwrap_err();
    // The true reason first: the stick below is mounted (it was "the device's
    // port is unknown", of a stick in a mapped port).
    let words = refusal.to_string();
    assert!(words.contains("mounted"), "{words}");
    assert!(!words.contains("port is unknown"), "{words}");
}
