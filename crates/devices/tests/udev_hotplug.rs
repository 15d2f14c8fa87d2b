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
//! They fail, not skip, without them: CI runs them as root.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flashrack_devices::block::GuardCheck;
use flashrack_devices::guard::{evaluate, GuardPolicy, GuardRequest};
use flashrack_devices::hotplug::{
    DeviceAccess, DeviceIdentity, Hotplug, HotplugError, HotplugSource, PluggedDevice, StopSignal,
};
use flashrack_devices::udev::{UdevAccess, UdevSource};
use flashrack_devices::TargetError;
use flashrack_testkit::{require_root, run};
use rustix::ioctl::{IntegerSetter, Opcode};
use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver};

/// Size of a test stick's backing file (sparse).
const STICK_SIZE: u64 = 8 * 1024 * 1024;
/// How long a test waits for an event that must come.
const WAIT: Duration = Duration::from_secs(10);
/// Where the test's udev rules go (runtime rules, gone at reboot).
const RULES_DIR: &str = "/run/udev/rules.d";
/// `LOOP_CTL_ADD` from `<linux/loop.h>`: creates `/dev/loopN` for a given N.
const LOOP_CTL_ADD: Opcode = 0x4C80;
/// `LOOP_CTL_REMOVE` from `<linux/loop.h>`: deletes an unbound `/dev/loopN`.
const LOOP_CTL_REMOVE: Opcode = 0x4C81;

/// Makes sure `systemd-udevd` runs, starting it (once per test process) if not.
///
/// A stopped udevd leaves `/run/udev/control` behind, and libudev takes the file for
/// a running udevd: the process is what counts, and a stale socket is removed
/// before starting a new one. A fresh udevd has processed nothing, so every block
/// device is replayed (`trigger`) and the queue awaited (`settle`).
fn ensure_udevd() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        require_root(&["losetup", "udevadm"]);
        lock_out_other_test_processes();
        if !udevd_running() {
            let _ = fs::remove_file("/run/udev/control");
            let status = Command::new("/lib/systemd/systemd-udevd")
                .arg("--daemon")
                .status()
                .expect("cannot start /lib/systemd/systemd-udevd (install Debian's `udev`)");
            assert!(status.success(), "systemd-udevd --daemon failed: {status}");
            let deadline = Instant::now() + WAIT;
            while !Path::new("/run/udev/control").exists() {
                assert!(Instant::now() < deadline, "systemd-udevd did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            run(
                "udevadm",
                &["trigger", "--action=add", "--subsystem-match=block"],
            );
            settle();
        }
        fs::create_dir_all(RULES_DIR).expect("cannot create the udev rules directory");
    });
}

/// Makes this test process the only one of its kind until it exits: two processes
/// running these tests at once could pick the same loop index one after the
/// other (a device one deleted, the other creates), and a source of the first would
/// see the second's stick.
fn lock_out_other_test_processes() {
    static LOCK: OnceLock<fs::File> = OnceLock::new();
    LOCK.get_or_init(|| {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/flashrack-udev-hotplug-tests.lock")
            .expect("cannot open the lock file");
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .expect("cannot lock the lock file");
        file
    });
}

/// Whether a `systemd-udevd` process exists (what `pgrep -x systemd-udevd` checks).
fn udevd_running() -> bool {
    fs::read_dir("/proc")
        .expect("cannot list /proc")
        .flatten()
        .any(|entry| {
            fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == "systemd-udevd")
        })
}

/// Waits until udevd has processed every queued event. Best effort: other
/// processes may keep udevd busy, and what the tests check is the events.
fn settle() {
    let _ = Command::new("udevadm")
        .args(["settle", "--timeout=5"])
        .output();
}

/// Makes udevd read the rules again. Tests run side by side and udevd answers a
/// burst of requests with `EAGAIN`, so requests are serialized and retried.
fn reload_rules() -> Result<(), String> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = String::new();
    for _ in 0..40 {
        let output = Command::new("udevadm")
            .args(["control", "--reload"])
            .output()
            .map_err(|e| format!("cannot run udevadm: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&output.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("udevadm control --reload keeps failing: {last}"))
}

/// Creates (`LOOP_CTL_ADD`) or deletes (`LOOP_CTL_REMOVE`) loop device `index`.
#[allow(unsafe_code)]
fn loop_control<const OPCODE: Opcode>(index: u32) -> rustix::io::Result<()> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .expect("cannot open /dev/loop-control");
    // SAFETY: both opcodes take the device index as a plain integer argument (no
    // pointer), and the index is a small non-negative number as the kernel expects.
    unsafe { rustix::ioctl::ioctl(&control, IntegerSetter::<OPCODE>::new_usize(index as usize)) }
}

/// The next loop index to try: starts at a per-process spot in 4200..4900 so that
/// test processes running side by side rarely collide (collisions are retried).
fn next_index() -> u32 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        AtomicU32::new(4200 + (std::process::id().wrapping_mul(31) ^ nanos) % 700)
    })
    .fetch_add(1, Ordering::Relaxed)
}

/// A loop device that udev presents as a USB stick (see the file's docs). Starts
/// empty (unplugged); deleted with its rule on drop.
struct TestStick {
    index: u32,
    name: String,
    dev: PathBuf,
    rules: PathBuf,
    backing: PathBuf,
    /// Holds the backing file; dropped after the device is deleted.
    _dir: tempfile::TempDir,
}

impl TestStick {
    fn new() -> Self {
        ensure_udevd();
        let dir = tempfile::tempdir_in("/var/tmp").expect("temporary directory");
        let backing = dir.path().join("stick.img");
        fs::File::create(&backing)
            .and_then(|f| f.set_len(STICK_SIZE))
            .expect("backing file");
        for _ in 0..50 {
            let index = next_index();
            let name = format!("loop{index}");
            if Path::new("/sys/block").join(&name).exists() {
                continue;
            }
            // The rule goes in before the device exists, so that udev never sees the
            // device without its USB dress.
            let rules = Path::new(RULES_DIR).join(format!(
                "99-flashrack-test-{}-{name}.rules",
                std::process::id()
            ));
            fs::write(
                &rules,
                format!(
                    "SUBSYSTEM==\"block\", KERNEL==\"{name}\", ENV{{ID_BUS}}=\"usb\", \
                     ENV{{ID_PATH}}=\"flashrack-test-port-{index}\", \
                     ENV{{ID_SERIAL_SHORT}}=\"FRTEST{index}\", ENV{{ID_VENDOR}}=\"Flashrack\", \
                     ENV{{ID_MODEL}}=\"Test_Stick\"\n"
                ),
            )
            .expect("cannot write the udev rule");
            reload_rules().unwrap();
            match loop_control::<LOOP_CTL_ADD>(index) {
                Ok(()) => {
                    return TestStick {
                        index,
                        dev: PathBuf::from("/dev").join(&name),
                        name,
                        rules,
                        backing,
                        _dir: dir,
                    }
                }
                Err(rustix::io::Errno::EXIST) => {
                    let _ = fs::remove_file(&rules);
                }
                Err(e) => panic!("LOOP_CTL_ADD {index} failed: {e}"),
            }
        }
        panic!("no free loop index found from 4200");
    }

    /// Plugs the stick in: attaches the backing file (size 0 → N).
    fn plug(&self) {
        self.wait_for_node();
        run(
            "losetup",
            &[self.dev.to_str().unwrap(), self.backing.to_str().unwrap()],
        );
    }

    /// Pulls the stick out: detaches the backing file (size N → 0).
    fn pull(&self) {
        run("losetup", &["-d", self.dev.to_str().unwrap()]);
    }

    /// Deletes the empty device node, a real udev `remove` event.
    fn delete(&self) {
        self.try_delete().expect("LOOP_CTL_REMOVE failed");
    }

    /// Deletes the device node, waiting while udev's probe still holds it open.
    fn try_delete(&self) -> rustix::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match loop_control::<LOOP_CTL_REMOVE>(self.index) {
                Err(rustix::io::Errno::BUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// devtmpfs creates the node right after `LOOP_CTL_ADD`; this covers the gap.
    fn wait_for_node(&self) {
        let deadline = Instant::now() + WAIT;
        while !self.dev.exists() {
            assert!(
                Instant::now() < deadline,
                "{} did not appear",
                self.dev.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the source must report for this stick when it is plugged in.
    fn expected(&self) -> PluggedDevice {
        PluggedDevice {
            kernel_name: self.name.clone(),
            dev_path: self.dev.clone(),
            port_path: Some(format!("flashrack-test-port-{}", self.index)),
            bus: Some("usb".to_owned()),
            identity: DeviceIdentity {
                serial: Some(format!("FRTEST{}", self.index)),
                vendor: Some("Flashrack".to_owned()),
                model: Some("Test Stick".to_owned()),
                capacity: STICK_SIZE,
            },
            removable: false,
            read_only: false,
        }
    }

    fn removed(&self) -> Hotplug {
        Hotplug::Removed {
            kernel_name: self.name.clone(),
        }
    }

    /// The kernel's size of the device in 512-byte sectors (0: nothing attached).
    fn sectors(&self) -> u64 {
        fs::read_to_string(Path::new("/sys/block").join(&self.name).join("size"))
            .expect("size in sysfs")
            .trim()
            .parse()
            .expect("a number")
    }
}

impl Drop for TestStick {
    fn drop(&mut self) {
        // Best effort: a failure here must not hide the test's own panic.
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
        let _ = self.try_delete();
        let _ = fs::remove_file(&self.rules);
        let _ = reload_rules();
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

    /// Asserts that no event comes within `wait`.
    fn assert_quiet(&mut self, wait: Duration) {
        if let Some(event) = self.next_within(wait) {
            panic!("unexpected event {event:?}");
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
    let stick = TestStick::new();
    {
        // Once a source has seen it, udevd has processed the attach and its database
        // holds what the enumeration reads.
        let mut first = Watch::only(&[&stick]);
        assert_eq!(first.until_enumerated(), []);
        stick.plug();
        assert_eq!(first.next(), Hotplug::Added(stick.expected()));
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
    assert_eq!(ours, [&stick.expected()]);
}

#[test]
fn a_stick_plugged_in_while_running_is_added_and_pulling_it_removes_it() {
    let stick = TestStick::new();
    let mut watch = Watch::only(&[&stick]);
    // An empty loop device (a reader without a card) is not a stick.
    assert_eq!(watch.until_enumerated(), []);

    stick.plug();
    assert_eq!(watch.next(), Hotplug::Added(stick.expected()));
    stick.pull();
    assert_eq!(watch.next(), stick.removed());

    // The node's own `remove` event concerns a disk no longer present: nothing.
    stick.delete();
    settle();
    watch.assert_quiet(Duration::from_millis(300));
}

#[test]
fn four_sticks_plugged_in_at_once_are_all_added() {
    let sticks: Vec<TestStick> = (0..4).map(|_| TestStick::new()).collect();
    let refs: Vec<&TestStick> = sticks.iter().collect();
    let mut watch = Watch::only(&refs);
    assert_eq!(watch.until_enumerated(), []);

    std::thread::scope(|scope| {
        for stick in &sticks {
            scope.spawn(|| stick.plug());
        }
    });
    let mut seen: Vec<PluggedDevice> = (0..4).map(|_| added(watch.next())).collect();
    seen.sort_by(|a, b| a.kernel_name.cmp(&b.kernel_name));
    let mut expected: Vec<PluggedDevice> = sticks.iter().map(TestStick::expected).collect();
    expected.sort_by(|a, b| a.kernel_name.cmp(&b.kernel_name));
    assert_eq!(seen, expected);
    // Each is reported once, not once per udev event it caused.
    settle();
    watch.assert_quiet(Duration::from_millis(300));
}

#[test]
fn a_reinserted_stick_is_added_again_with_the_same_serial() {
    let stick = TestStick::new();
    let mut watch = Watch::only(&[&stick]);
    assert_eq!(watch.until_enumerated(), []);

    stick.plug();
    let first = added(watch.next());
    stick.pull();
    assert_eq!(watch.next(), stick.removed());
    stick.plug();
    let second = added(watch.next());
    assert_eq!(second.identity.serial, first.identity.serial);
    assert_eq!(second.identity.key(), first.identity.key());
    assert_eq!(second, stick.expected());
}

#[test]
fn raising_the_stop_signal_ends_the_source_within_a_second() {
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
    let stick = TestStick::new();
    let mut watch = Watch::only(&[&stick]);
    assert_eq!(watch.until_enumerated(), []);
    stick.plug();
    let device = added(watch.next());

    let access = UdevAccess::new();
    let facts = access.facts(&device).expect("facts");
    assert_eq!(facts.kernel_name, stick.name);
    assert_eq!(facts.port_path, stick.expected().port_path);
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
    let stick = TestStick::new();
    let mut watch = Watch::only(&[&stick]);
    assert_eq!(watch.until_enumerated(), []);
    stick.plug();
    let device = added(watch.next());

    UdevAccess::new().eject(&device).expect("eject");
    assert_eq!(watch.next(), stick.removed());
    assert_eq!(stick.sectors(), 0, "the loop device is still attached");
}

#[test]
fn ejecting_a_mounted_stick_is_refused_and_leaves_it_attached() {
    require_root(&["mkfs.ext4", "mount", "umount"]);
    let stick = TestStick::new();
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
